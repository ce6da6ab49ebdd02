"""`python -m runtime.serve --artifact ART [--host 127.0.0.1 --port 8000 --workers N]`

An HTTP server (Starlette on uvicorn) in front of one early-exit model per worker process:

    POST /v1/classify   {"texts": [...]} or {"pairs": [[a, b], ...]}, optional "policy", "timeout_ms"
    GET  /healthz       the process is up          GET /readyz   the model is loaded
    GET  /metrics       Prometheus text            GET /openapi.json
Rows of concurrent requests are batched by runtime/scheduler.py (at layer boundaries by default).
Limits answer 413 (body, texts per request), 429 + Retry-After (queue), 504 (deadline), 400
(malformed JSON, wrong types, bad text or policy); one bad request never stops the worker. On
SIGTERM / Ctrl-C the server stops accepting, answers what is in flight, then exits.
Needs the `serve` extra: pip install 'berxit-rt[serve]'.
"""
from __future__ import annotations

import asyncio
import gc
import json
import logging
import math
import os
import signal
import socket
import sys
import threading
import time
from dataclasses import asdict, dataclass

from .backends import BACKENDS
from .cli import fail, nonneg_float, nonneg_int, parser, positive_float, positive_int
from .policies import PolicyError
from .scheduler import BATCHING, MODES, QueueFull, Scheduler, SchedulerConfig, SchedulerError
from .serve_api import ApiError, openapi, parse_classify, parse_json, results_json
from .serve_metrics import Metrics
from .tokenize import InputError

log = logging.getLogger("runtime.serve")
INSTALL_HINT = "the server needs Starlette and uvicorn: pip install 'berxit-rt[serve]'"
CONFIG_ENV = "BERXIT_SERVE_CONFIG"  # how worker processes receive the configuration


@dataclass(frozen=True)
class ServeConfig:
    artifact: str
    backend: str = "cpu"
    threads: int | None = None  # intra-op threads of this process's model (None: cores / workers)
    thread_pool: str = "shared"  # onnxruntime pools: one per process (fastest per call) or per session
    mode: str = "early-exit"
    batching: str = "layer"
    max_batch_rows: int = 32
    max_queue_rows: int = 512
    max_passes: int = 2
    batch_wait_ms: float = 0.0
    mix_lengths: bool = False
    isolate_rows: bool | None = None  # None: for int8-dynamic artifacts only (static int8 batches like fp32)
    max_body_bytes: int = 1 << 20
    max_texts: int = 32
    timeout_ms: float = 10_000.0
    shutdown_timeout_s: float = 30.0

    def __post_init__(self):
        if self.max_texts > self.max_batch_rows:
            raise ValueError(f"max_texts ({self.max_texts}) must not exceed max_batch_rows ({self.max_batch_rows}): "
                             f"a request's rows run in one batch")
        if self.max_texts > self.max_queue_rows:
            raise ValueError(f"max_texts ({self.max_texts}) must not exceed max_queue_rows ({self.max_queue_rows})")
        self.scheduler_config()  # its own checks

    def scheduler_config(self, precision: str = "fp32", int8: dict | None = None) -> SchedulerConfig:
        return SchedulerConfig(batching=self.batching, mode=self.mode, max_batch_rows=self.max_batch_rows,
                               max_queue_rows=self.max_queue_rows, max_passes=self.max_passes,
                               batch_wait_ms=self.batch_wait_ms, mix_lengths=self.mix_lengths,
                               isolate_rows=isolate_rows(precision, self.isolate_rows, int8))


def isolate_rows(precision: str, setting: bool | None, int8: dict | None = None) -> bool:
    """Whether rows must run alone: dynamically quantized (int8) graphs scale activations over
    the whole batch, so a row's answer would depend on its company. Statically quantized graphs
    (manifest optimization.int8.method 'onnxruntime quantize_static') have constant scales and
    batch like fp32. An int8 artifact that does not say how it was quantized is isolated."""
    if setting is not None:
        return setting
    if precision != "int8":
        return False
    method = (int8 or {}).get("method") if isinstance(int8, dict) else None
    return method != "onnxruntime quantize_static"


class Service:
    """One model, its scheduler and metrics: what a server process or a Ray replica runs.
    The model loads in a thread (`start`); /readyz answers 200 once it has."""

    def __init__(self, cfg: ServeConfig):
        self.cfg = cfg
        self.metrics = Metrics()
        self.model = self.scheduler = None
        self.ready = self.closing = False
        self.load_error: str | None = None
        self.info: dict = {"pid": os.getpid()}  # shown by /healthz (a Ray replica adds its name)
        self._policies: dict[str, object] = {}
        self.metrics.gauges = {
            "berxit_queue_rows": ("Rows waiting for their first batch.", lambda: self.scheduler.queued_rows if self.scheduler else 0),
            "berxit_open_rows": ("Rows accepted and not yet answered.", lambda: self.scheduler.open_rows if self.scheduler else 0),
            "berxit_model_ready": ("1 once the model is loaded.", lambda: float(self.ready)),
        }

    def start(self, wait: bool = False) -> None:
        t = threading.Thread(target=self._load, name="berxit-load", daemon=True)
        t.start()
        if wait:
            t.join()

    def _load(self) -> None:
        from .model import EarlyExitModel
        try:
            # The server owns its process: by default one shared onnxruntime pool for all graphs.
            m = EarlyExitModel(self.cfg.artifact, backend=self.cfg.backend, threads=self.cfg.threads,
                               thread_pool=self.cfg.thread_pool, load_monolithic=self.cfg.mode == "monolithic")
            if self.cfg.mode == "monolithic" and not m.backend.has_monolithic:
                raise ValueError("this artifact has no monolithic graph; export it again without --no-monolithic")
            self.model = m
            self.metrics.set_layers(m.num_layers)
            self.scheduler = Scheduler(m.chain, self.cfg.scheduler_config(m.manifest.precision, m.manifest.optimization.get("int8")),
                                       on_run=self.metrics.batch_run)
            # What loading left behind (the model, tokenizer, web framework: tens of thousands of
            # objects) lives as long as the process: moved out of the collector's view, so a full
            # collection under load scans only what requests allocate, not all of it each time.
            gc.collect()
            gc.freeze()
            self.ready = True
            log.info("model %s loaded (%s, %s batching, %s threads)", self.cfg.artifact, self.cfg.mode,
                     self.cfg.batching, m.backend.threads if hasattr(m.backend, "threads") else "?")
        except Exception as e:  # noqa: BLE001 - reported by /healthz and /readyz
            self.load_error = f"{type(e).__name__}: {e}"
            log.error("cannot load the model: %s", self.load_error)

    def close(self) -> None:
        self.closing = True
        if self.scheduler is not None:
            self.scheduler.close(self.cfg.shutdown_timeout_s)
        if self.model is not None:
            self.model.close()

    def _policy(self, spec: dict | None):
        if spec is None:
            return self.model.policy()
        if self.cfg.mode == "monolithic":
            raise ApiError("bad_policy", "this server runs the monolithic graph (no early exit): it takes no policy")
        key = json.dumps(spec, sort_keys=True)
        pol = self._policies.get(key)
        if pol is None:
            try:
                pol = self.model.policy(spec["name"], threshold=spec.get("threshold"), exit_layer=spec.get("exit_layer"),
                                        patience=spec.get("patience"), per_layer=spec.get("per_layer"))
            except PolicyError as e:
                raise ApiError("bad_policy", str(e)) from None
            if len(self._policies) >= 256:
                self._policies.clear()
            self._policies[key] = pol
        return pol

    async def classify(self, body: bytes) -> dict:
        """The answer to one POST /v1/classify body; ApiError for every refusal."""
        if self.closing:
            raise ApiError("shutting_down", "the server is shutting down; retry on another instance")
        if not self.ready:
            raise ApiError("not_ready", "the model is still loading" if self.load_error is None
                           else f"the model could not be loaded ({self.load_error})")
        m = self.model
        req = parse_classify(parse_json(body), m.task.text_pair, self.cfg.max_texts)
        policy = self._policy(req.policy)
        try:
            enc = m.encode(req.texts_a, req.texts_b)
        except InputError as e:
            raise ApiError("bad_input", str(e)) from None
        timeout = min(req.timeout_ms or self.cfg.timeout_ms, self.cfg.timeout_ms) / 1e3
        try:
            fut = self.scheduler.submit(enc, policy, time.monotonic() + timeout)
        except QueueFull as e:
            raise ApiError("queue_full", str(e), retry_after_s=e.retry_after_s) from None
        except SchedulerError as e:
            raise ApiError(e.kind, str(e)) from None
        try:
            # The scheduler enforces the deadline; this bound only guards against a stuck model.
            res = await asyncio.wait_for(asyncio.wrap_future(fut), timeout + 5.0)
        except asyncio.TimeoutError:
            raise ApiError("deadline_exceeded", f"not answered within {timeout * 1e3:.0f} ms") from None
        except SchedulerError as e:
            raise ApiError(e.kind if e.kind in ("deadline_exceeded", "shutting_down") else "internal", str(e)) from None
        rows = results_json(res, enc.truncated, m.task.kind, m.task.labels)
        self.metrics.answered_rows(res.exit_layer, sum(e is not None for e in res.error))
        return {"results": rows, "policy": "monolithic" if self.cfg.mode == "monolithic" else policy.describe(),
                "model": {"task": m.task.name, "num_layers": m.num_layers, "mode": self.cfg.mode,
                          "batching": self.cfg.batching}}


def build_app(service: Service, manage: bool = True):
    """The Starlette app over `service`. With `manage`, the app's lifespan loads the model and
    closes it on shutdown (a Ray replica manages its service itself)."""
    try:
        from starlette.applications import Starlette
        from starlette.exceptions import HTTPException
        from starlette.responses import JSONResponse, PlainTextResponse
        from starlette.routing import Route
    except ImportError:
        raise ImportError(INSTALL_HINT) from None
    from contextlib import asynccontextmanager

    def error(e: ApiError) -> JSONResponse:
        headers = {"Retry-After": str(max(1, math.ceil(e.retry_after_s)))} if e.retry_after_s is not None else None
        return JSONResponse(e.body(), status_code=e.status, headers=headers)

    async def read_body(request) -> bytes:
        limit = service.cfg.max_body_bytes
        too_big = ApiError("body_too_large", f"the body is larger than this server's limit of {limit} bytes")
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            raise too_big
        chunks, n = [], 0
        async for chunk in request.stream():
            n += len(chunk)
            if n > limit:
                raise too_big
            chunks.append(chunk)
        return b"".join(chunks)

    async def classify(request):
        t0 = time.perf_counter()
        try:
            resp = JSONResponse(await service.classify(await read_body(request)))
            kind = None
        except ApiError as e:
            resp, kind = error(e), e.kind
        except Exception as e:  # noqa: BLE001 - one bad request never takes the worker down
            log.exception("request failed")
            resp, kind = error(ApiError("internal", f"{type(e).__name__}: {e}")), "internal"
        service.metrics.request(resp.status_code, time.perf_counter() - t0, kind)
        return resp

    async def healthz(request):
        if service.load_error is not None:
            return JSONResponse({"status": "failed", "error": service.load_error}, status_code=500)
        return JSONResponse({"status": "ok", **service.info})

    async def readyz(request):
        if service.ready and not service.closing:
            return JSONResponse({"status": "ready", **service.info})
        why = "shutting_down" if service.closing else "not_ready"
        return error(ApiError(why, service.load_error or ("shutting down" if service.closing else "the model is loading")))

    async def metrics(request):
        return PlainTextResponse(service.metrics.text(), media_type="text/plain; version=0.0.4")

    async def openapi_doc(request):
        m = service.model
        task = m.task if m is not None else None
        return JSONResponse(openapi(task.name if task else "loading", bool(task and task.text_pair),
                                    tuple(task.labels) if task else (), service.cfg.max_texts, _version()))

    async def http_error(request, exc: HTTPException):
        kind = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "bad_request")
        return error(ApiError(kind, f"{request.method} {request.url.path}: {exc.detail}"))

    @asynccontextmanager
    async def lifespan(app):
        if manage:
            service.start()
        try:
            yield
        finally:
            if manage:
                await asyncio.get_running_loop().run_in_executor(None, service.close)

    routes = [Route("/v1/classify", classify, methods=["POST"]), Route("/healthz", healthz, methods=["GET"]),
              Route("/readyz", readyz, methods=["GET"]), Route("/metrics", metrics, methods=["GET"]),
              Route("/openapi.json", openapi_doc, methods=["GET"])]
    return Starlette(routes=routes, exception_handlers={HTTPException: http_error}, lifespan=lifespan)


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("berxit-rt")
    except Exception:  # noqa: BLE001 - not installed: a source checkout
        return "0+source"


def app_from_env():
    """uvicorn factory for worker processes (--workers > 1): the configuration comes in CONFIG_ENV."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s: %(message)s")
    return build_app(Service(ServeConfig(**json.loads(os.environ[CONFIG_ENV]))))


def parse_args(argv: list[str] | None = None):
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
    p = parser("python -m runtime.serve", "Serve an early-exit artifact over HTTP, batching rows of concurrent "
               "requests at layer boundaries.")
    p.add_argument("--artifact", required=True, help="artifact folder written by `python -m export.build`")
    p.add_argument("--host", default="127.0.0.1", help="address to listen on (0.0.0.0 exposes it to the network)")
    p.add_argument("--port", type=nonneg_int, default=8000, help="TCP port (0: any free port, printed at start)")
    p.add_argument("--workers", type=positive_int, default=1,
                   help="worker processes, each with its own copy of the model and its own scheduler; the cores "
                        "are split between them (--threads defaults to cores / workers)")
    p.add_argument("--threads", type=positive_int, default=None,
                   help=f"intra-op threads per worker (none given: cores / workers, at least 1; this machine "
                        f"has {cores} cores)")
    p.add_argument("--thread-pool", default="shared", choices=["shared", "per-session"],
                   help="shared: one onnxruntime pool for the process (its threads spin between calls: fastest "
                        "per call, but the spinning takes CPU from the HTTP side); per-session: pools with "
                        "spinning off")
    p.add_argument("--backend", default="cpu", choices=list(BACKENDS), help="execution backend (cpu is the measured one)")
    p.add_argument("--mode", default="early-exit", choices=list(MODES),
                   help="early-exit: the per-layer chain; monolithic: the artifact's single graph (the baseline)")
    p.add_argument("--batching", default=None, choices=list(BATCHING),
                   help="layer: rows of many requests batched per layer (continuous); request: whole requests "
                        "batched; none: one request at a time (default: layer, request for monolithic)")
    p.add_argument("--max-batch-rows", type=positive_int, default=32, help="rows in one graph call")
    p.add_argument("--max-queue-rows", type=positive_int, default=512,
                   help="rows accepted and not answered; beyond it requests get 429 with Retry-After")
    p.add_argument("--max-passes", type=nonneg_int, default=2,
                   help="layer batching: times a group of rows may be passed over by newer rows before it runs")
    p.add_argument("--batch-wait-ms", type=nonneg_float, default=0.0,
                   help="request batching: wait up to this long for a batch to fill")
    p.add_argument("--mix-lengths", action="store_true",
                   help="let rows of different token lengths share a graph call (padded): bigger batches, but a "
                        "row's scores may then differ in the last float bit with the company it keeps")
    p.add_argument("--isolate-rows", default="auto", choices=["auto", "on", "off"],
                   help="run every row in graph calls of its own; auto: for int8-dynamic artifacts, whose dynamic "
                        "quantization scales activations over the whole batch (static int8 batches like fp32)")
    p.add_argument("--max-body-bytes", type=positive_int, default=1 << 20, help="larger bodies get 413")
    p.add_argument("--max-texts", type=positive_int, default=32,
                   help="texts (or pairs) per request; more get 413 (at most --max-batch-rows)")
    p.add_argument("--timeout-ms", type=positive_float, default=10_000.0,
                   help="deadline per request (a request may ask for a shorter one); past it: 504")
    p.add_argument("--shutdown-timeout-s", type=positive_float, default=30.0,
                   help="on SIGTERM, how long to keep answering requests in flight")
    p.add_argument("--log-level", default="warning", choices=["debug", "info", "warning", "error"])
    a = p.parse_args(argv)
    if a.batching is None:
        a.batching = "request" if a.mode == "monolithic" else "layer"
    if a.threads is None:
        a.threads = max(1, cores // a.workers)
    return a


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(), format="%(levelname)s: %(message)s")
    try:
        import starlette  # noqa: F401
        import uvicorn
    except ImportError:
        return fail(INSTALL_HINT)
    from .fsutil import ArtifactError
    from .manifest import load_manifest
    try:
        load_manifest(args.artifact)  # a wrong path fails here, at once, not in a worker
        cfg = ServeConfig(args.artifact, backend=args.backend, threads=args.threads, thread_pool=args.thread_pool,
                          mode=args.mode,
                          batching=args.batching, max_batch_rows=args.max_batch_rows,
                          max_queue_rows=args.max_queue_rows, max_passes=args.max_passes,
                          batch_wait_ms=args.batch_wait_ms, mix_lengths=args.mix_lengths,
                          isolate_rows={"auto": None, "on": True, "off": False}[args.isolate_rows],
                          max_body_bytes=args.max_body_bytes, max_texts=args.max_texts, timeout_ms=args.timeout_ms,
                          shutdown_timeout_s=args.shutdown_timeout_s)
    except (ArtifactError, ValueError) as e:
        return fail(e)
    fam = socket.AF_INET6 if ":" in args.host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((args.host, args.port))
    except OSError as e:
        return fail(f"cannot listen on {args.host}:{args.port} ({e.strerror}); pick another --port")
    host, port = sock.getsockname()[:2]
    common = dict(log_level=args.log_level, timeout_graceful_shutdown=int(math.ceil(args.shutdown_timeout_s)),
                  access_log=False, server_header=False)
    workers = f" ({args.workers} workers, {args.threads} threads each)" if args.workers > 1 else ""
    print(f"listening on http://{host}:{port}{workers}", file=sys.stderr, flush=True)
    # uvicorn drains on SIGTERM / SIGINT, then raises the signal again under the handler found at
    # start: make that one a clean exit (status 0 = shut down as asked, everything answered).
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: sys.exit(0))
    if args.workers > 1:  # uvicorn's supervisor starts the workers on this socket, each loads its model
        os.environ[CONFIG_ENV] = json.dumps(asdict(cfg))
        uvicorn.run("runtime.serve:app_from_env", factory=True, fd=sock.fileno(), workers=args.workers, **common)
        return 0
    uvicorn.Server(uvicorn.Config(build_app(Service(cfg)), **common)).run(sockets=[sock])
    return 0


if __name__ == "__main__":
    sys.exit(main())
