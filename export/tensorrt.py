"""TensorRT engines for an artifact's graphs: one engine per graph (embeddings, each layer with its
exit head), with optimization profiles over batch and sequence length.

    python -m export.build --checkpoint CKPT --out ART --tensorrt [--precision fp16]
        [--trt-max-batch 32] [--trt-opt-batch 1] [--trt-opt-seq 128]

TensorRT's ONNX parser reads standard ONNX operators only, so the engines are built from an
unfused export of the same graphs (onnxruntime's fused Attention/SkipLayerNormalization are
contrib operators): those graphs are kept in ART/tensorrt/ beside the engines, so a host with
another GPU or TensorRT version can rebuild its engines from them. Engines are specific to the
GPU model and TensorRT version that built them; the manifest records both, and the runtime's
`tensorrt` backend refuses engines built elsewhere.

Follows TensorRT 10's Python API (Builder -> network from OnnxParser -> BuilderConfig with memory
pool limit, FP16 flag and an optimization profile -> build_serialized_network). Not run in this
project yet: no machine here has TensorRT (see README). The profile and manifest logic below is
tested without it.
"""
from __future__ import annotations

import hashlib
from dataclasses import asdict, dataclass
from pathlib import Path

ENGINE_DIR = "tensorrt"
INSTALL_HINT = ("TensorRT 10 and a CUDA GPU: `pip install 'berxit-rt[tensorrt]'` (the tensorrt and cuda-python "
                "wheels) on a machine with an NVIDIA driver; or export without --tensorrt and run the ONNX graphs")


class TensorRTUnavailable(RuntimeError):
    """TensorRT (or a GPU) is missing; the message says what to install."""


@dataclass(frozen=True)
class Profile:
    """One optimization profile: the batch and sequence ranges every engine accepts."""

    min_batch: int = 1
    opt_batch: int = 1
    max_batch: int = 32
    min_seq: int = 1
    opt_seq: int = 128
    max_seq: int = 128

    def __post_init__(self):
        for lo, mid, hi, what in ((self.min_batch, self.opt_batch, self.max_batch, "batch"),
                                  (self.min_seq, self.opt_seq, self.max_seq, "sequence")):
            if not 1 <= lo <= mid <= hi:
                raise ValueError(f"TensorRT profile: need 1 <= min <= opt <= max {what}, got {lo}, {mid}, {hi}")

    def shapes(self, inputs: list[str], hidden_size: int) -> dict[str, tuple[tuple[int, ...], ...]]:
        """input name -> (min, opt, max) shape, for a graph with these inputs."""
        out = {}
        for name in inputs:
            dims = [(self.min_batch, self.min_seq), (self.opt_batch, self.opt_seq), (self.max_batch, self.max_seq)]
            if name == "hidden_states":
                out[name] = tuple((b, s, hidden_size) for b, s in dims)
            elif name in ("input_ids", "token_type_ids", "attention_mask"):
                out[name] = tuple((b, s) for b, s in dims)
            else:
                raise ValueError(f"no TensorRT profile rule for graph input '{name}'")
        return out


def profile_for(max_seq_len: int, max_batch: int = 32, opt_batch: int = 1, opt_seq: int = 128) -> Profile:
    """The profile an artifact gets: sequences up to its max_seq_len, `opt_seq` clipped to it."""
    return Profile(1, min(opt_batch, max_batch), max_batch, 1, min(opt_seq, max_seq_len), max_seq_len)


def require_tensorrt():
    """Import TensorRT and check for a GPU, or raise TensorRTUnavailable saying what is missing."""
    try:
        import tensorrt as trt
    except ImportError:
        raise TensorRTUnavailable(f"--tensorrt needs the tensorrt package, which is not installed. Install "
                                  f"{INSTALL_HINT}.") from None
    try:
        trt.Builder(trt.Logger(trt.Logger.ERROR)).create_builder_config()
    except Exception as e:  # noqa: BLE001 - TensorRT raises its own types when no GPU/driver is usable
        raise TensorRTUnavailable(f"TensorRT {trt.__version__} is installed but cannot build here ({e}); "
                                  f"it needs an NVIDIA GPU and driver.") from None
    return trt


def _gpu_name() -> str:
    try:
        from cuda.bindings import runtime as cudart  # cuda-python >= 12.6
    except ImportError:  # pragma: no cover - older cuda-python
        from cuda import cudart
    err, props = cudart.cudaGetDeviceProperties(0)
    name = props.name.decode() if isinstance(props.name, bytes) else str(props.name)
    return f"{name.strip(chr(0))} (sm_{props.major}{props.minor})"


def build_engine(trt, onnx_path: Path, engine_path: Path, shapes: dict, fp16: bool,
                 workspace_bytes: int = 4 << 30) -> None:
    """Parse one ONNX graph and write its serialized engine."""
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)  # explicit batch is the only mode in TensorRT 10
    parser = trt.OnnxParser(network, logger)
    if not parser.parse_from_file(str(onnx_path)):  # from the file: external weights, if any, resolve next to it
        errs = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise RuntimeError(f"TensorRT cannot parse {onnx_path.name}: {errs}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_bytes)
    if fp16:
        config.set_flag(trt.BuilderFlag.FP16)
    profile = builder.create_optimization_profile()
    for name, (lo, opt, hi) in shapes.items():
        profile.set_shape(name, lo, opt, hi)
    config.add_optimization_profile(profile)
    plan = builder.build_serialized_network(network, config)
    if plan is None:
        raise RuntimeError(f"TensorRT failed to build an engine for {onnx_path.name} (see its log above)")
    engine_path.write_bytes(bytes(plan))


def build_engines(onnx_dir: Path, graphs: dict[str, dict], out_dir: Path, hidden_size: int, profile: Profile,
                  precision: str) -> dict:
    """Engines for every graph in `graphs` (role -> {"file", "inputs"}) read from `onnx_dir`, written
    to `out_dir`; returns the manifest's `tensorrt` record (engine files relative to the artifact)."""
    if precision not in ("fp32", "fp16"):
        raise ValueError(f"TensorRT precision must be fp32 or fp16, not '{precision}'")
    trt = require_tensorrt()
    out_dir.mkdir(parents=True, exist_ok=True)
    engines = {}
    for role, g in graphs.items():
        path = out_dir / f"{role}.plan"
        build_engine(trt, onnx_dir / g["file"], path, profile.shapes(g["inputs"], hidden_size), precision == "fp16")
        engines[role] = {"file": f"{ENGINE_DIR}/{path.name}", "onnx": f"{ENGINE_DIR}/{Path(g['file']).name}",
                         "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}
    return engine_record(trt.__version__, _gpu_name(), precision, profile, engines)


def engine_record(trt_version: str, gpu: str, precision: str, profile: Profile, engines: dict) -> dict:
    """What the manifest says about the engines (the runtime checks version and GPU against it)."""
    return {"tensorrt_version": trt_version, "gpu": gpu, "precision": precision,
            "profile": asdict(profile), "engines": engines}
