"""Static int8 quantization of an exported model with onnxruntime's quantization tools, and the
accuracy gate that decides whether the result ships.

    float model --(batch norms that cannot fold -> 1x1 depthwise Conv)--> quant_pre_process
      --(calibrate on real samples, preprocessed as inference preprocesses them)--> quantize_static
      (QDQ, int8 per-channel weights, uint8 activations; `cnngraph` domain nodes left in float)
      --> top-1 of float and int8 on held-out labelled samples --> kept, or refused (exit 1)

A batch norm whose input is not a convolution (densenet's after every concat) cannot fold into
one, and onnxruntime's quantizer has no int8 BatchNormalization: it stays in float between a
DequantizeLinear and a QuantizeLinear, and onnxruntime's NHWC int8 kernels then need layout
transposes around it. The same per-channel affine map written as a 1x1 depthwise Conv
(weight gamma / sqrt(var + eps), bias beta - mean * weight) quantizes like any convolution, and
the ReLU after it fuses into that QLinearConv. See docs/int8.md.
"""
from __future__ import annotations

import functools
import json
import logging
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .errors import DataError, InputError

log = logging.getLogger("cnngraph.quantize")

METHODS = ("minmax", "entropy", "percentile")
CUSTOM_DOMAIN = "cnngraph"            # exported custom ops: kept in float (their bodies are functions)
META_KEY = "cnngraph.quantization"    # how the model was calibrated, and the gate's figures
CALIBRATION_BATCH = 16
EVAL_BATCH = 64
MAX_SAMPLES = 10_000                  # calibration or evaluation samples one run may ask for
EVAL_SAMPLES = 10_000                 # the gate scores at most this many (a seeded subset)
QUANT_OPS = {"QuantizeLinear", "DequantizeLinear", "QLinearConv", "QLinearMatMul", "ConvInteger",
             "MatMulInteger", "DynamicQuantizeLinear"}


@dataclass
class Gate:
    """Top-1 of the float and the int8 model on the same held-out samples (fractions)."""
    data: str
    samples: int
    float_top1: float
    int8_top1: float
    max_drop: float                   # points (percent)

    @property
    def drop(self) -> float:
        """The loss in percentage points (negative: int8 scored higher)."""
        return 100 * (self.float_top1 - self.int8_top1)

    @property
    def passed(self) -> bool:
        return self.drop <= self.max_drop + 1e-9


def is_quantized(model) -> bool:
    """Whether an ONNX model holds quantized arithmetic (QDQ pairs or QLinear/Integer ops)."""
    return any(node.op_type in QUANT_OPS for node in model.graph.node) or \
        any(p.key == META_KEY for p in model.metadata_props)


def batch_norms_as_conv(model) -> int:
    """Rewrite, in place, every 4-D BatchNormalization whose statistics are initializers as the
    same per-channel affine map in a 1x1 depthwise Conv (see the module docstring); returns how
    many. Computed in float64, rounded once to float32: the float model's outputs stay equal to
    the batch norm's to rounding."""
    from onnx import helper, numpy_helper

    init = {t.name: t for t in model.graph.initializer}
    shapes = {v.name: len(v.type.tensor_type.shape.dim) for v in
              [*model.graph.value_info, *model.graph.input, *model.graph.output]}
    nodes, count = [], 0
    for node in model.graph.node:
        if (node.op_type != "BatchNormalization" or node.domain not in ("", "ai.onnx")
                or len(node.output) != 1 or not all(i in init for i in node.input[1:5])
                or shapes.get(node.input[0], 4) != 4):
            nodes.append(node)
            continue
        gamma, beta, mean, var = (numpy_helper.to_array(init[i]).astype(np.float64)
                                  for i in node.input[1:5])
        eps = next((a.f for a in node.attribute if a.name == "epsilon"), 1e-5)
        scale = gamma / np.sqrt(var + eps)
        weight = numpy_helper.from_array(scale.reshape(-1, 1, 1, 1).astype(np.float32),
                                         f"{node.name or node.output[0]}.affine_weight")
        bias = numpy_helper.from_array((beta - mean * scale).astype(np.float32),
                                       f"{node.name or node.output[0]}.affine_bias")
        model.graph.initializer.extend([weight, bias])
        nodes.append(helper.make_node("Conv", [node.input[0], weight.name, bias.name],
                                      list(node.output), name=node.name, group=len(scale),
                                      kernel_shape=[1, 1]))
        count += 1
    if count:
        used = {i for n in nodes for i in n.input}
        kept = [t for t in model.graph.initializer if t.name in used or t.name not in init]
        del model.graph.node[:]
        model.graph.node.extend(nodes)
        del model.graph.initializer[:]
        model.graph.initializer.extend(kept)
    return count


# -- data -------------------------------------------------------------------------------------

def dataset_source(source: str) -> tuple[str, float]:
    """(dataset source, validation fraction) of DATA: a training run directory stands for the
    data it was trained on (its config.json), anything else is a dataset source itself."""
    path = Path(source)
    if path.is_dir() and (path / "config.json").is_file() and (path / "info.json").is_file():
        from .train.rundir import read_json
        config = read_json(path / "config.json", {"data": str})
        fraction = config.get("val_fraction", 0.1)
        return config["data"], fraction if isinstance(fraction, float) else 0.1
    return source, 0.1


def labelled_inputs(source: str, meta, num_classes: int | None, split: str, limit: int | None,
                    seed: int = 0) -> tuple[np.ndarray, np.ndarray, str]:
    """(inputs, labels, name): samples of DATA's `split` ("train" or "val") as the model takes
    them: brought to its input shape by training's rule (cnngraph/data/dataset.py) and
    normalised by the model's own metadata, as `cnngraph infer` does (runtime/inputs.py). With
    `limit`, a seeded random subset of that many (all classes, not the first ones)."""
    import torch

    from .data import to_input
    from .files import MAX_DATA_BYTES
    from .runtime.inputs import normalize

    if meta.input_shape is None:
        raise InputError("the model has no cnngraph.input_shape metadata, so its input size for "
                         "the dataset is unknown; export it with `cnngraph export`")
    shape = tuple(meta.input_shape)
    name, fraction = dataset_source(source)
    dataset = _loaded(name, shape, fraction)
    x, y = (dataset.x_train, dataset.y_train) if split == "train" else (dataset.x_val, dataset.y_val)
    if len(y) == 0:
        raise DataError(f"{source}: its {split} split is empty")
    if num_classes is not None and (y.min() < 0 or y.max() >= num_classes):
        raise DataError(f"{source}: labels run from {y.min()} to {y.max()} but the model has "
                        f"{num_classes} classes; give the data it was trained on")
    if x.shape[1] not in (shape[0], 1):
        raise DataError(f"{source}: images have {x.shape[1]} channels but the model takes "
                        f"{shape[0]}; give the data it was trained on")
    if limit is not None and limit < len(y):
        pick = np.sort(np.random.default_rng(seed).permutation(len(y))[:limit])
        x, y = x[pick], y[pick]
    need = len(y) * int(np.prod(shape)) * 4
    if need > MAX_DATA_BYTES:
        raise DataError(f"{source}: {len(y):,} samples of {shape} take {need / 2**30:.1f} GiB as "
                        "float32; ask for fewer (--samples, --eval-samples)")
    inputs = np.empty((len(y), *shape), np.float32)
    for i in range(0, len(y), 256):   # chunk by chunk: a resize holds a float copy of each
        pixels = to_input(torch.from_numpy(np.ascontiguousarray(x[i:i + 256])).float(), shape)
        if x.dtype == np.uint8:   # as an image file would arrive: whole pixel values
            pixels = pixels.round().clamp(0, 255).to(torch.uint8)
        inputs[i:i + 256] = normalize(pixels.numpy(), meta)
    label = f"{source} ({split} split)" if name == source else f"{source}: {name} ({split} split)"
    return inputs, y.astype(np.int64), label


@functools.lru_cache(maxsize=1)
def _loaded(name: str, shape: tuple, fraction: float):
    """The dataset, read once for calibration and the gate alike (the glyphs take seconds)."""
    from .data import load_data
    return load_data(name, shape, fraction)


def top1(session, x: np.ndarray, y: np.ndarray) -> float:
    """Fraction of samples whose first output's arg-max is the label."""
    name = session.get_inputs()[0].name
    first = session.get_outputs()[0].name
    hits = 0
    for i in range(0, len(y), EVAL_BATCH):
        scores = session.run([first], {name: x[i:i + EVAL_BATCH]})[0]
        hits += int((scores.reshape(len(scores), -1).argmax(1) == y[i:i + EVAL_BATCH]).sum())
    return hits / len(y)


def cpu_session(model: Path | bytes):
    """An onnxruntime CPU session as the runtime builds one (all optimisations, physical cores)."""
    from .runtime.session import CPU, create_session, session_options
    return create_session(model, session_options(CPU), [CPU])


# -- quantization -----------------------------------------------------------------------------

@dataclass
class Settings:
    method: str = "minmax"
    samples: int = 256
    per_channel: bool = True

    def check(self) -> None:
        if self.method not in METHODS:
            raise InputError(f"--method must be one of {', '.join(METHODS)}, not {self.method!r}")
        if not 1 <= self.samples <= MAX_SAMPLES:
            raise InputError(f"--samples must be from 1 to {MAX_SAMPLES:,}, got {self.samples}")


def quantize_model(model, src: Path, calibration: np.ndarray, settings: Settings, data: str,
                   workdir: Path, source: str | None = None, affine: bool = True):
    """The int8 ModelProto of the float `model` (read from `src` by files.read_onnx, and
    rewritten in place), calibrated on `calibration` (inputs as the model takes them), with its
    metadata (the float model's, plus META_KEY). `affine` False leaves unfoldable batch norms as
    they are (bench/bench_int8.py measures the fix)."""
    import onnx
    import onnxruntime as ort
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat,
                                          QuantType, quantize_static)
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if is_quantized(model):
        raise InputError(f"{src}: already quantized; quantize the float model it came from")
    inputs = [i for i in model.graph.input if i.name not in {t.name for t in model.graph.initializer}]
    if len(inputs) != 1:
        raise InputError(f"{src}: has {len(inputs)} inputs; calibration data holds one image per "
                         "sample, so only single-input models are quantized")
    affine = batch_norms_as_conv(model) if affine else 0
    rewritten, pre, out = workdir / "float.onnx", workdir / "pre.onnx", workdir / "int8.onnx"
    onnx.save(model, str(rewritten))
    # no onnxruntime optimisation here: it would inline the cnngraph-domain functions, whose
    # nodes must stay whole (and float); our export has already folded what folds
    quant_pre_process(str(rewritten), str(pre), skip_optimization=True, skip_symbolic_shape=True)
    custom = [n.name for n in model.graph.node if n.domain == CUSTOM_DOMAIN]
    name = inputs[0].name

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.batches = iter(range(0, len(calibration), CALIBRATION_BATCH))

        def get_next(self):
            i = next(self.batches, None)
            return None if i is None else {name: calibration[i:i + CALIBRATION_BATCH]}

    method = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
              "percentile": CalibrationMethod.Percentile}[settings.method]
    quantize_static(str(pre), str(out), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=settings.per_channel, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, calibrate_method=method,
                    nodes_to_exclude=custom,
                    extra_options={"CalibTensorRangeSymmetric": False})
    result = onnx.load(str(out))
    record = {"format": "QDQ", "weights": "int8, per channel" if settings.per_channel else
              "int8, per tensor", "activations": "uint8", "method": settings.method,
              "samples": int(len(calibration)), "data": data, "source": source,
              "float_nodes": custom, "batch_norms_as_conv": affine,
              "onnxruntime": ort.__version__}
    set_meta(result, {META_KEY: json.dumps(record)})
    return result


def set_meta(model, entries: dict[str, str]) -> None:
    props = {p.key: p.value for p in model.metadata_props}
    props.update(entries)
    del model.metadata_props[:]
    for key, value in props.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def quantize_file(src: Path, dst: Path, *, calibrate: str, data: str | None = None,
                  settings: Settings | None = None, max_drop: float = 1.0,
                  eval_samples: int | None = None, say: Callable[[str], None] = print) -> Gate:
    """Quantize `src` into `dst`, calibrated on `calibrate`'s training split, gated on the
    validation split of `data` (default: `calibrate`'s; all of it up to EVAL_SAMPLES, else a
    seeded subset of `eval_samples`). A passing model is written to `dst`;
    a refused one to `dst` + ".rejected" (for inspection, never picked up as a model). Returns
    the gate; the caller decides the exit status."""
    from .files import atomic_write, read_onnx
    from .runtime.inputs import ModelMeta

    settings = settings or Settings()
    settings.check()
    if max_drop < 0 or not np.isfinite(max_drop) or max_drop > 100:
        raise InputError(f"--max-drop must be from 0 to 100 points, got {max_drop}")
    if eval_samples is not None and not 1 <= eval_samples <= MAX_SAMPLES:
        raise InputError(f"--eval-samples must be from 1 to {MAX_SAMPLES:,}, got {eval_samples}")
    header = read_onnx(src)
    meta = ModelMeta.from_props({p.key: p.value for p in header.metadata_props}, str(src))
    out_dims = header.graph.output[0].type.tensor_type.shape.dim
    classes = out_dims[-1].dim_value if len(out_dims) == 2 and out_dims[-1].dim_value else None
    x_cal, _, cal_name = labelled_inputs(calibrate, meta, classes, "train", settings.samples)
    x_val, y_val, val_name = labelled_inputs(data or calibrate, meta, classes, "val",
                                             eval_samples or EVAL_SAMPLES)
    say(f"calibrating on {len(x_cal)} samples of {cal_name}, method {settings.method}")
    with tempfile.TemporaryDirectory(prefix="cnngraph-int8-") as folder:
        model = quantize_model(header, Path(src), x_cal, settings, cal_name, Path(folder),
                               calibrate)
        blob = model.SerializeToString()
        gate = Gate(val_name, len(y_val), top1(cpu_session(Path(src)), x_val, y_val),
                    top1(cpu_session(blob), x_val, y_val), max_drop)
    record = json.loads(next(p.value for p in model.metadata_props if p.key == META_KEY))
    record["gate"] = {k: v for k, v in asdict(gate).items()}
    set_meta(model, {META_KEY: json.dumps(record)})
    target = dst if gate.passed else dst.with_name(dst.name + ".rejected")
    atomic_write(target, model.SerializeToString())   # an earlier model at dst stays as it was
    return gate
