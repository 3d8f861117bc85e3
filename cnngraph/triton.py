"""A Triton Inference Server model repository for an exported model:

    REPO/NAME/config.pbtxt     the model configuration (Triton's ModelConfig, protobuf text format)
    REPO/NAME/labels.txt       the class names, one a line (label_filename of the class output)
    REPO/NAME/1/model.onnx     the model (version 1), run by Triton's onnxruntime backend

The configuration is built as Triton's own `inference.ModelConfig` message, from the protobuf
module the `tritonclient` package ships (tritonclient/grpc/model_config_pb2.py), loaded on its
own so that grpc need not be installed: `pip install 'cnngraph[triton]'` (or `pip install
tritonclient --no-deps`). The onnxruntime settings are those cnngraph/runtime/session.py uses,
written as the onnxruntime backend's parameters; see docs/int8.md, "Serving with Triton".
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import ExportError, InputError

LABELS = "labels.txt"
MAX_BATCH = 4096
ONNX_TO_TRITON = {1: "TYPE_FP32", 10: "TYPE_FP16", 11: "TYPE_FP64", 16: "TYPE_BF16",
                  2: "TYPE_UINT8", 3: "TYPE_INT8", 5: "TYPE_INT16", 6: "TYPE_INT32",
                  7: "TYPE_INT64", 9: "TYPE_BOOL"}


def model_config_pb2():
    """Triton's model-configuration protobuf module, without importing tritonclient.grpc (its
    package __init__ needs grpc, which the messages do not)."""
    spec = importlib.util.find_spec("tritonclient")
    path = None
    if spec is not None and spec.submodule_search_locations:
        path = Path(list(spec.submodule_search_locations)[0]) / "grpc" / "model_config_pb2.py"
    if path is None or not path.is_file():
        raise ExportError("--triton needs Triton's model-configuration schema from the "
                          "tritonclient package: pip install 'cnngraph[triton]' (or "
                          "pip install tritonclient --no-deps)")
    module_spec = importlib.util.spec_from_file_location("cnngraph._triton_model_config_pb2", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except Exception as exc:  # noqa: BLE001 - protobuf's runtime/gencode version check, mostly
        raise ExportError(f"{path}: Triton's model-configuration module does not load with this "
                          f"protobuf ({type(exc).__name__}: {str(exc).splitlines()[0][:160]}); "
                          "install a tritonclient release that matches it") from None
    return module


def _dims(value_info) -> list:
    return [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
            for d in value_info.type.tensor_type.shape.dim]


def model_config(model, name: str, *, max_batch_size: int = 64, gpu: bool = False,
                 instances: int = 1, labels: bool = False):
    """The ModelConfig message for an ONNX ModelProto: every input and output with its type
    and dims (without the batch dimension when the batch is dynamic: Triton then batches, up to
    `max_batch_size`, with dynamic batching; a fixed-batch model gets max_batch_size 0 and its
    full shape), `instances` instances on the GPU or the CPU, and the runtime's onnxruntime
    options."""
    pb = model_config_pb2()
    if not 1 <= max_batch_size <= MAX_BATCH:
        raise InputError(f"--triton-max-batch must be from 1 to {MAX_BATCH}, got {max_batch_size}")
    if not 1 <= instances <= 64:
        raise InputError(f"--triton-instances must be from 1 to 64, got {instances}")
    weights = {t.name for t in model.graph.initializer}
    ins = [i for i in model.graph.input if i.name not in weights]
    dynamic = all(_dims(v)[:1] == [-1] for v in [*ins, *model.graph.output])
    config = pb.ModelConfig(name=name, backend="onnxruntime", default_model_filename="model.onnx",
                            max_batch_size=max_batch_size if dynamic else 0)
    for values, field in ((ins, config.input), (model.graph.output, config.output)):
        for v in values:
            elem = v.type.tensor_type.elem_type
            if elem not in ONNX_TO_TRITON:
                raise ExportError(f"{v.name}: ONNX element type {elem} has no Triton data type")
            dims = _dims(v)
            entry = field.add(name=v.name, data_type=pb.DataType.Value(ONNX_TO_TRITON[elem]),
                              dims=dims[1:] if dynamic else dims)
            if labels and field is config.output and v is model.graph.output[0]:
                entry.label_filename = LABELS
    if dynamic:
        preferred = [b for b in (8, 16, 32, 64) if b <= max_batch_size]
        config.dynamic_batching.preferred_batch_size.extend(preferred or [max_batch_size])
        config.dynamic_batching.max_queue_delay_microseconds = 100
    kind = pb.ModelInstanceGroup.Kind.Value("KIND_GPU" if gpu else "KIND_CPU")
    config.instance_group.add(kind=kind, count=instances)
    # onnxruntime as cnngraph/runtime/session.py runs it: every graph optimisation (the
    # backend's level 0 is ORT_ENABLE_ALL), sequential execution, one inter-op thread, memory
    # pattern and arena on; intra-op threads 0 = onnxruntime's default, one per physical core
    # of the serving machine, which is what session.py picks (physical_cores)
    config.optimization.graph.level = 0
    config.optimization.graph.SetInParent()
    params = {"execution_mode": "0", "inter_op_thread_count": "1", "intra_op_thread_count": "0",
              "enable_mem_pattern": "1", "enable_mem_arena": "1"}
    if gpu:  # the CUDA provider options of session.CudaOptions
        from .runtime.session import CudaOptions
        cuda = CudaOptions()
        params.update({"cudnn_conv_algo_search": {"EXHAUSTIVE": "0", "HEURISTIC": "1",
                                                  "DEFAULT": "2"}[cuda.conv_algo_search],
                       "cudnn_conv_use_max_workspace": "1" if cuda.max_workspace else "0",
                       "do_copy_in_default_stream": "1"})
    for key, value in params.items():
        config.parameters[key].string_value = value
    return config


def write_repository(model_path: Path, repo: Path, name: str, *, classes=None,
                     max_batch_size: int = 64, gpu: bool = False, instances: int = 1) -> Path:
    """Write REPO/NAME (see the module docstring) for the ONNX file `model_path`; returns the
    config path. Each file is written atomically; other models in REPO are left alone."""
    from google.protobuf import text_format

    from .files import atomic_write, read_onnx

    if not name or not all(c.isalnum() or c in "-_." for c in name) or name.startswith("."):
        raise InputError(f"--triton-name {name!r}: a model name is letters, digits, '-', '_' "
                         "and '.', not starting with '.'")
    if repo.exists() and not repo.is_dir():
        raise InputError(f"--triton {repo}: is a file; give a folder (made if missing)")
    model = read_onnx(model_path)
    labels = bool(classes) and len(model.graph.output[0].type.tensor_type.shape.dim) == 2
    config = model_config(model, name, max_batch_size=max_batch_size, gpu=gpu,
                          instances=instances, labels=labels)
    folder = repo / name
    (folder / "1").mkdir(parents=True, exist_ok=True)
    atomic_write(folder / "1" / "model.onnx", Path(model_path).read_bytes())
    if labels:
        atomic_write(folder / LABELS, "".join(" ".join(str(c).split()) + "\n" for c in classes).encode())
    atomic_write(folder / "config.pbtxt", text_format.MessageToString(config).encode())
    return folder / "config.pbtxt"
