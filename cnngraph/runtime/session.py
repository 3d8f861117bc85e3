"""onnxruntime sessions built the one way this project runs models: the provider chosen (CUDA
when it really starts, else CPU with the reason logged), tuned options for each provider, the
graph optimised at the highest level, and the optimised model cached beside the model."""
from __future__ import annotations

import functools
import hashlib
import logging
import os
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import onnxruntime as ort

from ..errors import CnnGraphError, InputError

log = logging.getLogger("cnngraph.runtime")

CPU = "CPUExecutionProvider"
CUDA = "CUDAExecutionProvider"


class PlacementError(CnnGraphError):
    """A model (or part of one) that cannot run on the device the user asked for."""


@dataclass(frozen=True)
class CudaOptions:
    """CUDA execution provider settings. The defaults suit CNN inference at fixed shapes:
    cuDNN benchmarks every convolution algorithm once (EXHAUSTIVE) with the largest workspace;
    NHWC kernels (tensor cores) for fp16, where they are faster; TF32 on, as PyTorch does
    for convolutions."""
    conv_algo_search: str = "EXHAUSTIVE"   # EXHAUSTIVE | HEURISTIC | DEFAULT
    prefer_nhwc: bool | None = None        # None: on for fp16 models, off for fp32
    max_workspace: bool = True
    tf32: bool = True

    def nhwc(self, fp16: bool) -> bool:
        return fp16 if self.prefer_nhwc is None else self.prefer_nhwc

    def provider_options(self, device_id: int, fp16: bool, cuda_graph: bool) -> dict[str, str]:
        return {
            "device_id": str(device_id),
            "cudnn_conv_algo_search": self.conv_algo_search,
            "cudnn_conv_use_max_workspace": "1" if self.max_workspace else "0",
            "prefer_nhwc": "1" if self.nhwc(fp16) else "0",
            "use_tf32": "1" if self.tf32 else "0",
            "enable_cuda_graph": "1" if cuda_graph else "0",
            "do_copy_in_default_stream": "1",
        }


@functools.cache
def cuda_status() -> tuple[bool, str]:
    """(usable, reason). onnxruntime-gpu lists the CUDA provider even where it cannot start (no
    GPU, no CUDA/cuDNN libraries) and then silently runs on the CPU, so the only proof is a
    session that reports the CUDA provider as in use."""
    if CUDA not in ort.get_available_providers():
        return False, "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)"
    if not gpu_present():
        return False, "no CUDA GPU found"
    import torch  # a CUDA build of torch loads the CUDA/cuDNN libraries onnxruntime-gpu needs
    if torch.version.cuda and not torch.cuda.is_available():
        return False, "no CUDA device is visible (torch.cuda.is_available() is False)"
    from onnx import TensorProto, helper
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "probe",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    probe = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=9)
    ort.set_default_logger_severity(4)   # the failed library load is expected here, not news
    try:
        session = ort.InferenceSession(probe.SerializeToString(), providers=[CUDA])
        started = CUDA in session.get_providers()
    except Exception:  # noqa: BLE001 - any failure means "no CUDA"
        started = False
    finally:
        ort.set_default_logger_severity(2)
    if not started:
        return False, ("a GPU is present but onnxruntime could not start its CUDA provider "
                       "(CUDA 13 / cuDNN 9 libraries missing?)")
    return True, "CUDA provider available"


def gpu_present() -> bool:
    """An NVIDIA GPU on this machine: torch sees one, or the driver made its device files."""
    import torch
    return torch.cuda.is_available() or any(Path("/dev").glob("nvidia[0-9]*"))


def physical_cores() -> int:
    """Physical cores this process may use: hyper-threads share one core's FMA units, so more
    threads than cores only adds contention for convolution kernels."""
    cpus = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else range(os.cpu_count() or 1)
    cores = set()
    for cpu in cpus:
        siblings = Path(f"/sys/devices/system/cpu/cpu{cpu}/topology/thread_siblings_list")
        try:
            cores.add(siblings.read_text().strip())
        except OSError:
            cores.add(str(cpu))
    return max(1, len(cores))


def resolve_device(device: str | None) -> str:
    """'auto' | 'cpu' | 'cuda' | None -> the provider to use. None is auto as a default no
    one asked for: it falls back to the CPU silently, where an explicit 'auto' logs one line
    saying why (a machine without a GPU would otherwise print it on every run)."""
    if device is None:
        ok, _ = cuda_status()
        return CUDA if ok else CPU
    if device not in ("auto", "cpu", "cuda"):
        raise InputError(f"device must be auto, cpu or cuda, not {device!r}")
    if device == "cpu":
        return CPU
    ok, reason = cuda_status()
    if ok:
        return CUDA
    if device == "cuda":
        raise PlacementError(f"device cuda asked for, but {reason}; use device cpu (--device cpu)")
    log.warning("running on the CPU: %s", reason)
    return CPU


OPTIMIZATION = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
                "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED,
                "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
                "off": ort.GraphOptimizationLevel.ORT_DISABLE_ALL}


def session_options(provider: str, *, threads: int | None = None, strict: bool = False,
                    profile_dir: str | None = None, optimization: str = "all") -> ort.SessionOptions:
    """Options for one session. CPU: intra-op threads = physical cores, sequential execution
    (a CNN is a chain; a second pool only competes for the same cores), memory pattern and arena
    on. `optimization` below "all" is for inspection (placement of unfused nodes). Strict: no
    node may fall back to the CPU provider (session creation fails instead)."""
    so = ort.SessionOptions()
    if optimization not in OPTIMIZATION:
        raise InputError(f"optimization must be one of {', '.join(OPTIMIZATION)}, not {optimization!r}")
    so.graph_optimization_level = OPTIMIZATION[optimization]
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.enable_mem_pattern = True
    so.enable_cpu_mem_arena = True
    so.intra_op_num_threads = threads or (physical_cores() if provider == CPU else 1)
    so.inter_op_num_threads = 1
    so.log_severity_level = 3
    if strict and provider != CPU:
        so.add_session_config_entry("session.disable_cpu_ep_fallback", "1")
    if profile_dir:
        so.enable_profiling = True
        so.profile_file_prefix = os.path.join(profile_dir, "ort_profile")
    return so


def providers_for(provider: str, *, device_id: int = 0, cuda: CudaOptions | None = None,
                  fp16: bool = False, cuda_graph: bool = False, strict: bool = False) -> list:
    """The provider list: CUDA (tuned) then CPU for what CUDA cannot run; CUDA alone in strict
    mode, since onnxruntime refuses a CPU provider added explicitly next to the no-fallback rule."""
    if provider == CPU:
        return [CPU]
    options = (cuda or CudaOptions()).provider_options(device_id, fp16, cuda_graph)
    return [(CUDA, options)] if strict else [(CUDA, options), CPU]


def digest(path: Path) -> str:
    """Content digest of the model and its external-data file (torch's `<model>.data`), if any."""
    h = hashlib.sha256()
    for part in (path, path.with_name(path.name + ".data")):
        if part.is_file():
            with open(part, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    h.update(block)
    return h.hexdigest()[:16]


def cache_path(model_path: Path, tag: str) -> Path:
    """`model.onnx` -> `model.<tag>-ort<version>-<content digest>.opt.onnx` beside it: the
    optimised graph depends on the provider (fused and layout-changed kernels), the onnxruntime
    version that wrote it, and the exact model it came from."""
    return model_path.with_name(
        f"{model_path.stem}.{tag}-ort{ort.__version__}-{digest(model_path)}.opt.onnx")


def create_session(model: Path | bytes, so: ort.SessionOptions, providers: list, *,
                   cache_tag: str | None = None) -> ort.InferenceSession:
    """A session on `model`; with `cache_tag` (and a model file), the optimised model is saved
    beside it on first use (atomically) and loaded from there afterwards. A cache that no longer
    loads is removed and rebuilt; a folder that cannot be written just goes without a cache."""
    if cache_tag is None or isinstance(model, bytes):
        return _session(model, so, providers)
    cached = cache_path(model, cache_tag)
    if cached.exists():
        try:
            return _session(cached, so, providers)
        except CnnGraphError:
            log.warning("removing optimised model cache %s: it no longer loads", cached)
            cached.unlink(missing_ok=True)
    for stale in model.parent.glob(f"{model.stem}.{cache_tag}-ort*.opt.onnx"):
        stale.unlink(missing_ok=True)
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{cached.name}.", dir=model.parent)
        os.close(fd)
    except OSError as exc:
        log.info("no optimised model cache (%s): %s", model.parent, exc)
        return _session(model, so, providers)
    so.optimized_model_filepath = tmp
    try:
        session = _session(model, so, providers)
        if os.path.getsize(tmp) > 0:
            os.replace(tmp, cached)
    except CnnGraphError:   # e.g. a provider whose compiled nodes cannot be saved
        so.optimized_model_filepath = ""
        session = _session(model, so, providers)
    finally:
        so.optimized_model_filepath = ""
        Path(tmp).unlink(missing_ok=True)
    return session


def _session(model: Path | bytes, so: ort.SessionOptions, providers: list) -> ort.InferenceSession:
    source = model if isinstance(model, bytes) else str(model)
    try:
        return ort.InferenceSession(source, so, providers=providers)
    except Exception as exc:  # onnxruntime raises its own Fail/InvalidGraph/NoSuchFile types
        message = ort_reason(str(exc)) or type(exc).__name__
        if "fallback to CPU EP has been explicitly disabled" in str(exc):
            raise PlacementError("strict placement: some nodes of this model have no CUDA kernel "
                                 "and would run on the CPU; run `cnngraph verify --placement cuda` "
                                 "without strict mode to list them") from None
        where = "model" if isinstance(model, bytes) else str(model)
        raise InputError(f"{where}: onnxruntime cannot load it: {message}") from None


_ORT_PREFIX = re.compile(r"^\[ONNXRuntimeError\] : \d+ : \w+ : (Load model from .*? failed:)?")
_SOURCE = re.compile(r"\S+\.(?:cc|cpp|cu|h):\d+ ")  # onnxruntime's source file and line


def ort_reason(text: str) -> str:
    """onnxruntime's reason for refusing a model, without its status prefix, the path (the
    caller names the file), the C++ source location and the function signature after it
    (~300 characters that tell a user nothing)."""
    lines = text.strip().splitlines()
    text = _ORT_PREFIX.sub("", lines[-1] if lines else "").strip()
    location = _SOURCE.search(text)
    if location:
        rest = text[location.end():]
        signature = re.match(r"[\w:~<>]+\(", rest)
        if signature:
            depth = 0
            for i, char in enumerate(rest):
                depth += (char == "(") - (char == ")")
                if depth == 0 and char == ")":
                    rest = rest[i + 1:]
                    break
        text = (text[:location.start()] + rest.removeprefix(" const")).strip()
    return text
