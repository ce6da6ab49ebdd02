"""Scale-out on Ray Serve: the same server (runtime/serve.py: app, Service, scheduler) as a Ray
Serve deployment of N replicas behind Ray's HTTP proxy. Each replica is one Ray actor process
with its own model and scheduler; the proxy spreads requests over them and the Serve controller
replaces a replica that dies.

On one machine (starts a local Ray instance):
    python -m runtime.serve_ray --artifact ART --replicas 2 --threads 1 --port 8000
On a Ray cluster (the artifact folder at the same path on every node, e.g. a shared volume):
    ray start --head --port 6379                    # head node
    ray start --address HEAD:6379                   # each worker node
    python -m runtime.serve_ray --address auto --artifact /shared/art/sst2 --replicas 8 --host 0.0.0.0
or with Ray's own CLI and an app builder:
    serve run runtime.serve_ray:build artifact=/shared/art/sst2 replicas=8 threads=1
Needs the `ray` extra: pip install 'berxit-rt[ray]'.
"""
from __future__ import annotations

import logging
import os
import signal
import sys
import threading
from dataclasses import asdict, fields

from .cli import fail, nonneg_int, parser, positive_float, positive_int
from .serve import INSTALL_HINT, Service, ServeConfig, build_app

INSTALL_RAY = "Ray Serve is needed: pip install 'berxit-rt[ray]'"
APP_NAME = "berxit"
log = logging.getLogger("runtime.serve_ray")


LOOPBACK_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # "0": Ray's processes address each other over loopback


def _ray(local: bool = False):
    if "ray" not in sys.modules:
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")  # no usage reports sent anywhere
        if local:  # a Ray of this machine only: no traffic off loopback
            os.environ.setdefault(LOOPBACK_ENV, "0")
    try:
        import ray
        from ray import serve
    except ImportError:
        raise ImportError(INSTALL_RAY) from None
    return ray, serve


def deployment(cfg: ServeConfig, replicas: int = 1, max_ongoing_requests: int = 256):
    """A bound Ray Serve application: `replicas` copies of the server, each with
    `cfg.threads` intra-op threads (and as many Ray CPUs)."""
    ray, serve = _ray()
    try:
        import starlette  # noqa: F401
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    threads = cfg.threads or 1

    @serve.deployment(name="BerxitReplica", num_replicas=replicas, max_ongoing_requests=max_ongoing_requests,
                      ray_actor_options={"num_cpus": threads}, health_check_period_s=2, health_check_timeout_s=10,
                      graceful_shutdown_timeout_s=cfg.shutdown_timeout_s)
    @serve.ingress()
    class BerxitReplica:
        def __init__(self, config: dict):
            self.service = Service(ServeConfig(**config))
            self.service.info = {"pid": os.getpid(), "replica": serve.get_replica_context().replica_tag}
            self.service.start(wait=True)
            if self.service.load_error:
                raise RuntimeError(f"cannot load the model: {self.service.load_error}")

        def __serve_build_asgi_app__(self):
            return build_app(self.service, manage=False)

        def check_health(self):  # Serve restarts a replica whose check raises
            if self.service.load_error or (self.service.scheduler and not self.service.scheduler.alive):
                raise RuntimeError("replica unhealthy")

        def __del__(self):
            self.service.close()

    return BerxitReplica.bind({**asdict(cfg), "threads": threads})


def build(args: dict):
    """App builder for `serve run runtime.serve_ray:build artifact=ART replicas=N threads=T ...`:
    every ServeConfig field may be given (as text)."""
    kinds = {f.name: f.type for f in fields(ServeConfig)}
    cfg: dict = {}
    for k, v in args.items():
        if k in ("replicas",):
            continue
        if k not in kinds:
            raise ValueError(f"unknown argument {k!r}; use replicas or a ServeConfig field: {', '.join(kinds)}")
        t = str(kinds[k])
        cfg[k] = (v.lower() in ("1", "true", "yes") if "bool" in t else int(v) if "int" in t
                  else float(v) if "float" in t else v)
    return deployment(ServeConfig(**cfg), replicas=int(args.get("replicas", 1)))


def run(cfg: ServeConfig, replicas: int, host: str, port: int, address: str | None = None,
        num_cpus: int | None = None):
    """Start (or join) Ray, deploy, and return once every replica is up."""
    ray, serve = _ray(local=address is None)
    if not ray.is_initialized():
        if address:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        else:
            # a local instance talks over loopback only
            ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=False, _node_ip_address="127.0.0.1")
    serve.start(http_options={"host": host, "port": port}, detached=False)
    serve.run(deployment(cfg, replicas), name=APP_NAME, route_prefix="/")


def main(argv: list[str] | None = None) -> int:
    p = parser("python -m runtime.serve_ray", "Serve an early-exit artifact on Ray Serve: N replicas behind "
               "Ray's HTTP proxy, each with its own model and layer-boundary scheduler.")
    p.add_argument("--artifact", required=True, help="artifact folder (same path on every node of a cluster)")
    p.add_argument("--replicas", type=positive_int, default=1, help="server replicas (Ray actors)")
    p.add_argument("--threads", type=positive_int, default=1, help="intra-op threads (and Ray CPUs) per replica")
    p.add_argument("--host", default="127.0.0.1", help="address of Ray's HTTP proxy (0.0.0.0 exposes it)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="port of Ray's HTTP proxy")
    p.add_argument("--address", default=None, help="Ray cluster to join ('auto' for the local `ray start` one); "
                   "default: start a Ray instance in this process")
    p.add_argument("--num-cpus", type=positive_int, default=None, help="CPUs of the Ray instance started here")
    p.add_argument("--batching", default="layer", choices=["layer", "request", "none"])
    p.add_argument("--mode", default="early-exit", choices=["early-exit", "monolithic"])
    p.add_argument("--max-queue-rows", type=positive_int, default=512)
    p.add_argument("--timeout-ms", type=positive_float, default=10_000.0)
    a = p.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s")
    try:
        _ray(local=a.address is None)
    except ImportError as e:
        return fail(e)
    from .fsutil import ArtifactError
    from .manifest import load_manifest
    try:
        load_manifest(a.artifact)
        batching = "request" if a.mode == "monolithic" and a.batching == "layer" else a.batching
        cfg = ServeConfig(os.path.abspath(a.artifact), threads=a.threads, batching=batching, mode=a.mode,
                          max_queue_rows=a.max_queue_rows, timeout_ms=a.timeout_ms)
        run(cfg, a.replicas, a.host, a.port, a.address, a.num_cpus)
    except (ArtifactError, ValueError, ImportError) as e:
        return fail(e)
    print(f"listening on http://{a.host}:{a.port} (Ray Serve, {a.replicas} replicas)", file=sys.stderr, flush=True)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    _, serve = _ray()
    serve.shutdown()
    return 0


if __name__ == "__main__":
    sys.exit(main())
