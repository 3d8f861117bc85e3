"""Caffe -> cnngraph: a deploy prototxt (protobuf text) and optionally its trained .caffemodel
(binary protobuf) become a spec and a state_dict.

Both files are read by the protobuf library against the schema in `importers.caffe_schema`
(Caffe's own field numbers and defaults). The net is taken as Caffe runs it for testing (phase
TEST: layers whose include/exclude rules leave them out of TEST are dropped). Blob names become
layer names (in-place layers, top = bottom, simply rebind the blob); a BatchNorm followed by its
Scale becomes one batch_norm. The conversions that are not one-to-one, and why:

- Pooling rounds up (Caffe's default round_mode CEIL, with its clip of a last window that would
  start in the padding): ceil_mode, whose output-size rule is the same; the sizes are checked
  against Caffe's formula. AVE divides by the window clipped to the padded input, which is
  PyTorch's (and ONNX's) count_include_pad=true.
- WITHIN_CHANNEL LRN: lrn region within_channel with k = 1 (Caffe's formula has no k).
- BatchNorm's statistics are its blobs divided by the third (the moving-average factor; 0 gives 0).
- Scale alone (no BatchNorm before it) is a depthwise 1x1 conv2d (per-channel weight and bias).
- InnerProduct on a map is a flatten then a linear (Caffe flattens C, H, W in that order too).
- Eltwise SUM with coefficients is weighted_add, MAX is max, PROD is mul.

Preprocessing: Caffe feeds BGR pixels in 0..255 minus a mean, times a scale
(`transform_param`). The spec records `meta.channel_order: BGR` for 3-channel inputs and
`meta.normalize` equivalent to the transform_param on pixels in [0, 1] (what cnngraph's runtime
feeds): mean/255 and std 1/(255*scale). What the files do not say (a missing transform_param,
the image of a mean_file, the cropping) is logged as a warning; docs/import.md lists it.
"""
from __future__ import annotations

import logging
import math
import re
from pathlib import Path
from typing import Any

import numpy as np
from google.protobuf import text_format

from cnngraph import limits
from cnngraph.errors import InputError, SpecError, one_line

from . import caffe_schema as schema

log = logging.getLogger("cnngraph.import")

MAX_PROTOTXT_BYTES = limits.MAX_CAFFE_PROTOTXT
MAX_CAFFEMODEL_BYTES = limits.MAX_CAFFE_MODEL
MAX_TEXT_DEPTH = 32  # nesting of messages in a prototxt (Caffe's go 4 deep)

SUPPORTED = ("Input", "Convolution", "Deconvolution", "Pooling", "InnerProduct", "ReLU", "Sigmoid",
             "TanH", "LRN", "BatchNorm", "Scale", "Eltwise", "Concat", "Dropout", "Softmax",
             "Flatten", "Split", "Silence")
DATA_LAYERS = {"Data", "ImageData", "HDF5Data", "MemoryData", "WindowData", "DummyData",
               "AnnotatedData", "Python", "VideoData"}
LOSS_LAYERS = {"SoftmaxWithLoss", "Accuracy", "EuclideanLoss", "HingeLoss", "SigmoidCrossEntropyLoss",
               "InfogainLoss", "MultinomialLogisticLoss", "ContrastiveLoss"}
_V1_FIX = ("it is in Caffe's old V1 format (`layers` with enum types): upgrade it with Caffe's "
           "tools, `upgrade_net_proto_text OLD.prototxt NEW.prototxt` (and "
           "`upgrade_net_proto_binary OLD.caffemodel NEW.caffemodel` for its weights), then "
           "import the upgraded files")
_TEST = 1  # caffe.Phase.TEST


def from_caffe(prototxt_path: str | Path, caffemodel_path: str | Path | None = None, *,
               seed: int = 0) -> tuple[dict, dict]:
    """(spec, state_dict) of a Caffe net. Without a caffemodel (or for prototxt layers the
    caffemodel lacks, which Caffe would fill from their fillers), the weights are a seeded
    fresh initialisation of the built network."""
    net = read_prototxt(prototxt_path)
    converted = _Converter(net, Path(prototxt_path)).run()
    state = _state(converted, caffemodel_path, seed)
    return converted.spec, state


def caffe_spec(prototxt_path: str | Path) -> dict:
    """The spec alone (no weights, no torch)."""
    return _Converter(read_prototxt(prototxt_path), Path(prototxt_path)).run().spec


# --- reading --------------------------------------------------------------------------------
def _read_bytes(path: Path, limit: int, what: str) -> bytes:
    try:
        size = path.stat().st_size
        if size > limit:
            raise InputError(f"{path}: {size:,} bytes, more than the {limit:,} a {what} may "
                             "hold: is it the right file?")
        with open(path, "rb") as f:
            data = f.read(limit + 1)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise InputError(f"{path}: is a directory; give the {what} file") from None
    except OSError as exc:
        raise InputError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    if len(data) > limit:
        raise InputError(f"{path}: more than the {limit:,} bytes a {what} may hold")
    return data


class _RecordingParser(text_format._Parser):  # noqa: SLF001 - the parser behind Parse()
    """protobuf's text parser, skipping the fields the schema does not declare (other layers'
    parameters, forks' extensions) and noting each one, so that a misspelt field of a message
    the schema declares complete is reported instead of ignored."""

    def __init__(self):
        super().__init__(allow_unknown_field=True, max_recursion_depth=MAX_TEXT_DEPTH)
        self.skipped: list[tuple[str, str, int | None]] = []

    def _SkipFieldContents(self, tokenizer, field_name, immediate_message_type):  # noqa: N802
        line = getattr(tokenizer, "_line", None)
        self.skipped.append((immediate_message_type, field_name,
                             None if line is None else line + 1))
        return super()._SkipFieldContents(tokenizer, field_name, immediate_message_type)


def read_prototxt(path: str | Path):
    """The NetParameter of a prototxt, checked: UTF-8 text, Caffe's text format, no misspelt
    field in the parameters cnngraph reads, not the V1 format."""
    path = Path(path)
    data = _read_bytes(path, MAX_PROTOTXT_BYTES, "prototxt")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InputError(f"{path}: not a text file (byte {exc.start} is not UTF-8); a "
                         "prototxt is protobuf text (a .caffemodel goes to --weights)") from None
    net = schema.NetParameter()
    parser = _RecordingParser()
    try:
        parser.ParseLines(text.split("\n"), net)
    except text_format.ParseError as exc:
        raise InputError(one_line(f"{path}:{exc.GetLine() or '?'}: not Caffe's prototxt text "
                                  f"format: {_reason(exc)}")) from None
    except RecursionError:
        raise InputError(f"{path}: messages nested more than {MAX_TEXT_DEPTH} deep") from None
    if len(net.layers):
        raise InputError(f"{path}: {_V1_FIX}")
    for message, name, line in parser.skipped:
        short = message.rpartition(".")[2]
        if short in schema.COMPLETE:
            known = ", ".join(f[0] for f in schema.MESSAGES[short][0])
            raise InputError(one_line(f"{path}:{line or '?'}: {short} has no field '{name}' "
                                      f"in Caffe's caffe.proto (its fields: {known}): fix the "
                                      "spelling, or remove it"))
    return net


def _reason(exc: Exception) -> str:
    text = str(exc)
    return re.sub(r"^\d+:\d+ : ", "", text)


def read_caffemodel(path: str | Path):
    """The NetParameter of a binary .caffemodel, or one InputError."""
    from google.protobuf.message import DecodeError

    path = Path(path)
    data = _read_bytes(path, MAX_CAFFEMODEL_BYTES, "caffemodel")
    net = schema.NetParameter()
    try:
        net.ParseFromString(data)
    except (DecodeError, RecursionError, ValueError) as exc:
        raise InputError(f"{path}: damaged or not a .caffemodel (binary protobuf NetParameter): "
                         f"{_reason(exc) or type(exc).__name__}") from None
    if len(net.layers):
        raise InputError(f"{path}: {_V1_FIX}")
    if not any(len(layer.blobs) for layer in net.layer):
        raise InputError(f"{path}: holds no trained blobs (is it a .caffemodel? a prototxt "
                         "is the first argument)")
    return net


# --- conversion -----------------------------------------------------------------------------
class _Caffe(InputError):
    """An InputError located at a Caffe layer."""


class _Converter:
    """Walks the TEST-phase layers in order, keeping which spec layer currently holds each blob."""

    def __init__(self, net, path: Path):
        self.net, self.path = net, path
        self.layers: list[dict] = []
        self.inputs: dict[str, list[int]] = {}
        self.shapes: dict[str, tuple] = {}      # spec layer or input -> shape ("N", ...)
        self.blobs: dict[str, str] = {}         # Caffe blob -> spec layer (or input) holding it
        self.used: dict[str, int] = {}          # spec layer -> layers reading it
        self.names: set[str] = set()
        self.order: dict[str, None] = {}        # blobs in the order they were first made
        self.weights: dict[str, tuple] = {}     # Caffe layer -> (type, spec name, blob shapes)
        self.folded: set[str] = set()           # batch_norm spec layers a Scale was folded into
        self.bn_of: dict[str, str] = {}         # batch_norm spec layer -> its BatchNorm Caffe layer
        self.transform = None                   # (TransformationParameter, input names)
        self.init: dict[str, dict] = {}         # spec layer -> meta.init rules from its fillers
        self.layer = None                       # the Caffe layer being converted
        self.spec: dict = {}

    # messages
    def fail(self, message: str) -> _Caffe:
        layer = self.layer
        where = f"layer '{layer.name}' ({layer.type}): " if layer is not None else ""
        return _Caffe(one_line(f"{self.path}: {where}{message}"))

    def run(self) -> _Converter:
        state = self.net.state
        self._net_inputs()
        if len(self.net.layer) > limits.MAX_LAYERS:
            raise InputError(f"{self.path}: {len(self.net.layer):,} layers, more than the "
                             f"{limits.MAX_LAYERS:,} a spec may hold")
        included = [layer for layer in self.net.layer if self._included(layer, state)]
        self.read_later = _later_reads(included)
        for index, layer in enumerate(included):
            self.layer = layer
            handler = getattr(self, f"_{layer.type}", None)
            if layer.type in DATA_LAYERS:
                raise self.fail("a data layer reads a training database; import the deploy "
                                "prototxt, whose input is an Input layer (or input/input_shape)"
                                ", and copy this layer's transform_param into it")
            if layer.type in LOSS_LAYERS:
                continue  # training objectives and metrics: not part of the network
            if handler is None or layer.type not in SUPPORTED:
                raise self.fail(f"cnngraph cannot import this layer type; it imports "
                                f"{', '.join(SUPPORTED)} (and drops the loss and accuracy "
                                "layers)")
            if layer.HasField("transform_param") and self.transform is None:
                self.transform = (layer.transform_param, list(layer.top[:1]))  # the data top
            handler(layer, self._bottoms(layer), index)
        self.layer = None
        if not self.inputs:
            raise self.fail("the net has no input: give an Input layer or the net-level "
                            "`input` with `input_shape` (or `input_dim`)")
        self.spec = self._spec()
        return self

    def _included(self, layer, state) -> bool:
        """Caffe's rule for phase TEST (with the file's level and stages)."""
        if len(layer.include) and len(layer.exclude):
            raise InputError(one_line(f"{self.path}: layer '{layer.name}': give include or "
                                      "exclude rules, not both (Caffe refuses both)"))

        def meets(rule) -> bool:
            stages = set(state.stage)
            return ((not rule.HasField("phase") or rule.phase == _TEST)
                    and (not rule.HasField("min_level") or state.level >= rule.min_level)
                    and (not rule.HasField("max_level") or state.level <= rule.max_level)
                    and all(s in stages for s in rule.stage)
                    and not any(s in stages for s in rule.not_stage))
        if len(layer.include):
            return any(meets(rule) for rule in layer.include)
        return not any(meets(rule) for rule in layer.exclude)

    # naming and bookkeeping
    def _name(self, raw: str) -> str:
        """A spec name for Caffe name `raw`: `[A-Za-z_][A-Za-z0-9_]*`, unique."""
        base = re.sub(r"[^A-Za-z0-9_]", "_", raw)[:limits.MAX_NAME - 6] or "layer"
        if base[0].isdigit():
            base = "l_" + base
        name, n = base, 2
        while name in self.names:
            name, n = f"{base}_{n}", n + 1
        self.names.add(name)
        return name

    def _bottoms(self, layer) -> list[str]:
        out = []
        for blob in layer.bottom:
            if blob not in self.blobs:
                raise self.fail(f"its bottom '{blob}' is made by no layer before it (nor is it "
                                "an input): check the spelling, the layer order and the "
                                "include/exclude phase rules")
            out.append(self.blobs[blob])
        return out

    def _produce(self, layer, spec_name: str, index: int = 0) -> None:
        if len(layer.top) <= index:
            raise self.fail("it has no top blob: name its output with `top`")
        blob = layer.top[index]
        self.order.setdefault(blob)
        self.blobs[blob] = spec_name

    def _add(self, op: str, ins: list[str], attrs: dict, name: str | None = None) -> str:
        """Appends a spec layer, after inferring its shape with the op's own rule."""
        from cnngraph.graph import Node
        from cnngraph.ops import REGISTRY, REQUIRED, ShapeError

        rules = REGISTRY[op]
        name = name or self._name(self.layer.name)
        try:
            full = {k: a.normalize(attrs.get(k, a.default)) for k, a in rules.attrs.items()}
            shape = rules.infer(Node(name, op, list(ins), full), [self.shapes[i] for i in ins])
        except (ShapeError, ValueError) as exc:
            raise self.fail(f"as {op}: {exc}") from None
        entry = {"name": name, "op": op, "inputs": list(ins)}
        for key, value in attrs.items():  # written only where they differ from the defaults
            default = rules.attrs[key].default
            if default is REQUIRED or default is None or full[key] != rules.attrs[key].normalize(default):
                pair = (rules.attrs[key].kind in ("ints", "padding") and isinstance(value, list)
                        and len(value) == 2 and value[0] == value[1])
                entry[key] = value[0] if pair else value
        self.layers.append(entry)
        self.shapes[name] = shape
        for i in ins:
            self.used[i] = self.used.get(i, 0) + 1
        return name

    def _shape_of(self, name: str) -> tuple:
        return self.shapes[name]

    def _need(self, count: int, ins: list[str], at_least: bool = False) -> None:
        if len(ins) < count or (not at_least and len(ins) > count):
            raise self.fail(f"takes {'at least ' if at_least else ''}{count} bottom(s), got "
                            f"{len(ins)}")

    def _params(self, kind: str, spec_name: str, shapes: list[tuple], **extra) -> None:
        self.weights[self.layer.name] = (kind, spec_name, [tuple(s) for s in shapes], extra)

    # inputs
    def _net_inputs(self) -> None:
        net = self.net
        names = list(net.input)
        if not names:
            if len(net.input_shape) or len(net.input_dim):
                raise InputError(f"{self.path}: input_shape/input_dim without `input` names")
            return
        if len(net.input_shape):
            if len(net.input_shape) != len(names):
                raise InputError(f"{self.path}: {len(names)} input(s) but {len(net.input_shape)} "
                                 "input_shape(s): give one per input")
            dims = [list(s.dim) for s in net.input_shape]
        elif len(net.input_dim):
            if len(net.input_dim) != 4 * len(names):
                raise InputError(f"{self.path}: input_dim gives {len(net.input_dim)} numbers for "
                                 f"{len(names)} input(s): give 4 (N, C, H, W) per input")
            flat = list(net.input_dim)
            dims = [flat[4 * i:4 * i + 4] for i in range(len(names))]
        else:
            raise InputError(f"{self.path}: `input` without a shape: add input_shape {{ dim: 1 "
                             "dim: 3 dim: 224 dim: 224 }} (or four input_dim)")
        for name, shape in zip(names, dims):
            self._input(name, shape)

    def _input(self, blob: str, dims: list[int]) -> None:
        where = f"{self.path}: input '{blob}'"
        if len(dims) not in (2, 4) or any(d < 1 or d > limits.MAX_DIM for d in dims):
            raise InputError(f"{where}: shape {dims} is not (N, C, H, W) or (N, F) of positive "
                             "sizes")
        name = self._name(blob)
        self.inputs[name] = [int(d) for d in dims[1:]]
        self.shapes[name] = ("N", *self.inputs[name])
        self.order.setdefault(blob)
        self.blobs[blob] = name

    def _Input(self, layer, ins, index) -> None:  # noqa: N802 - Caffe's type names
        shapes = [list(s.dim) for s in layer.input_param.shape]
        if len(shapes) not in (1, len(layer.top)):
            raise self.fail(f"{len(layer.top)} tops but {len(shapes)} shapes: give one shape, "
                            "or one per top")
        for i, blob in enumerate(layer.top):
            self._input(blob, shapes[min(i, len(shapes) - 1)])

    # convolutions
    def _pair(self, p, base: str, default: int | None) -> tuple[int, int]:
        """(h, w) of a Caffe size: `base` (one value, or h and w) or `base_h`/`base_w`."""
        short = base.split("_")[0]
        h, w = f"{short}_h", f"{short}_w"
        fields = p.DESCRIPTOR.fields_by_name
        field = fields[base]
        values = (list(getattr(p, base)) if field.is_repeated
                  else [getattr(p, base)] if p.HasField(base) else [])
        if h in fields and (p.HasField(h) or p.HasField(w)):
            if values:
                raise self.fail(f"give {base} or {h}/{w}, not both")
            if short != "pad" and not (p.HasField(h) and p.HasField(w)):
                raise self.fail(f"give both {h} and {w}")
            return getattr(p, h), getattr(p, w)
        if not values:
            if default is None:
                raise self.fail(f"needs {base} (or {h} and {w})")
            return default, default
        if len(values) > 2:
            raise self.fail(f"{base} has {len(values)} values: cnngraph imports 2-D layers only")
        return (values[0], values[0]) if len(values) == 1 else (values[0], values[1])

    def _conv_attrs(self, ins) -> dict:
        p = self.layer.convolution_param
        self._need(1, ins)
        if p.axis != 1:
            raise self.fail(f"axis {p.axis}: cnngraph convolves NCHW maps (axis 1) only")
        if not p.HasField("num_output") or p.num_output < 1:
            raise self.fail("needs num_output >= 1")
        if len(self._shape_of(ins[0])) != 4:
            raise self.fail(f"needs a (N, C, H, W) input, got {self._shape_of(ins[0])}")
        return {"out": p.num_output, "kernel": list(self._pair(p, "kernel_size", None)),
                "stride": list(self._pair(p, "stride", 1)),
                "padding": list(self._pair(p, "pad", 0)),
                "dilation": list(self._pair(p, "dilation", 1)), "groups": p.group,
                "bias": p.bias_term}

    def _Convolution(self, layer, ins, index) -> None:  # noqa: N802
        a = self._conv_attrs(ins)
        name = self._add("conv2d", ins, a)
        c = self._shape_of(ins[0])[1]
        self._conv_weights(name, (a["out"], c // a["groups"], *a["kernel"]), a)
        self._produce(layer, name)

    def _Deconvolution(self, layer, ins, index) -> None:  # noqa: N802
        a = self._conv_attrs(ins)
        name = self._add("conv_transpose2d", ins, a)
        c = self._shape_of(ins[0])[1]
        self._conv_weights(name, (c, a["out"] // a["groups"], *a["kernel"]), a)
        self._produce(layer, name)

    def _conv_weights(self, name, weight, a) -> None:
        self._params("conv", name, [weight] + ([(a["out"],)] if a["bias"] else []))
        self._fillers(name, weight, self.layer.convolution_param)

    def _fillers(self, name: str, weight: tuple, p, defaults: dict | None = None) -> None:
        """meta.init rules for the layer's own weight_filler/bias_filler (Caffe's fillers, so
        a fresh network starts as Caffe would start it): constant, gaussian (mean 0), uniform
        (symmetric), xavier and msra (their std or bound computed from the blob's fans, as
        Caffe does: fan_in = count/num, fan_out = count/channels). Others keep the op's."""
        rules = dict(defaults or {})
        for param, field in (("weight", "weight_filler"), ("bias", "bias_filler")):
            if field in p.DESCRIPTOR.fields_by_name and p.HasField(field):
                rule = _filler_rule(getattr(p, field), weight)
                if rule is not None:
                    rules[param] = rule
        if rules:
            self.init[name] = rules

    def _InnerProduct(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.inner_product_param
        self._need(1, ins)
        shape = self._shape_of(ins[0])
        axis = p.axis + len(shape) if p.axis < 0 else p.axis
        if axis != 1:
            raise self.fail(f"axis {p.axis}: cnngraph's linear layer keeps the batch axis only "
                            "(axis 1)")
        if not p.HasField("num_output") or p.num_output < 1:
            raise self.fail("needs num_output >= 1")
        src = ins[0]
        if len(shape) > 2:
            src = self._add("flatten", ins, {}, name=self._name(layer.name + "_flatten"))
        name = self._add("linear", [src], {"out": p.num_output, "bias": p.bias_term})
        features = self._shape_of(src)[1]
        weight = (features, p.num_output) if p.transpose else (p.num_output, features)
        self._params("linear", name, [weight] + ([(p.num_output,)] if p.bias_term else []),
                     transpose=p.transpose)
        self._fillers(name, weight, p)
        self._produce(layer, name)

    # pooling and normalisation
    def _Pooling(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.pooling_param
        self._need(1, ins)
        shape = self._shape_of(ins[0])
        if len(shape) != 4:
            raise self.fail(f"needs a (N, C, H, W) input, got {shape}")
        if p.pool == 2:
            raise self.fail("STOCHASTIC pooling is not supported (MAX and AVE are)")
        h, w = shape[2], shape[3]
        if p.global_pooling:
            if p.HasField("kernel_size") or p.HasField("kernel_h"):
                raise self.fail("global_pooling takes no kernel size (Caffe refuses it too)")
            if p.pool == 1:
                name = self._add("global_avg_pool2d", ins, {})
            else:
                name = self._add("max_pool2d", ins, {"kernel": [h, w]})
            return self._produce(layer, name)
        kernel = self._pair(p, "kernel_size", None)
        stride = self._pair(p, "stride", 1)
        pad = self._pair(p, "pad", 0)
        if any(q > k // 2 for q, k in zip(pad, kernel)):
            raise self.fail(f"pad {pad[0]}x{pad[1]} is more than half the {kernel[0]}x"
                            f"{kernel[1]} window: Caffe allows it, PyTorch's and ONNX's pooling "
                            "do not (not importable as it is)")
        ceil = p.round_mode == 0
        caffe = tuple(_caffe_pooled(n, k, s, q, ceil)
                      for n, k, s, q in zip((h, w), kernel, stride, pad))
        op = "avg_pool2d" if p.pool == 1 else "max_pool2d"
        attrs = {"kernel": list(kernel), "stride": list(stride), "padding": list(pad),
                 "ceil_mode": ceil}
        if op == "avg_pool2d":
            attrs["count_include_pad"] = True  # Caffe divides by the window within the padding
        name = self._add(op, ins, attrs)
        if self._shape_of(name)[2:] != caffe:
            raise self.fail(f"Caffe pools the {h}x{w} input to {caffe[0]}x{caffe[1]}, PyTorch's "
                            f"and ONNX's rule gives {self._shape_of(name)[2]}x"
                            f"{self._shape_of(name)[3]} (a stride larger than the window "
                            "without padding): not importable as it is")
        self._produce(layer, name)

    def _LRN(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.lrn_param
        self._need(1, ins)
        if p.local_size % 2 == 0:
            raise self.fail(f"local_size {p.local_size} is even; Caffe's LRN needs an odd size")
        within = p.norm_region == 1
        if within and p.HasField("k") and p.k != 1:
            log.warning("warning: %s: layer '%s': k %g is ignored: Caffe's WITHIN_CHANNEL LRN "
                        "adds 1", self.path, layer.name, p.k)
        name = self._add("lrn", ins, {
            "size": p.local_size, "alpha": _f32(p.alpha), "beta": _f32(p.beta),
            "k": 1.0 if within else _f32(p.k),
            "region": "within_channel" if within else "across_channels"})
        self._produce(layer, name)

    def _BatchNorm(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.batch_norm_param
        self._need(1, ins)
        momentum = min(1.0, max(0.0, 1.0 - _f32(p.moving_average_fraction)))
        name = self._add("batch_norm", ins, {"eps": _f32(p.eps), "momentum": round(momentum, 6)})
        c = self._shape_of(ins[0])[1]
        self._params("batch_norm", name, [(c,), (c,), (1,)])
        self.bn_of[name] = layer.name
        self._produce(layer, name)

    def _Scale(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.scale_param
        if len(ins) != 1:
            raise self.fail("a Scale by a second bottom is not supported (a learned Scale, one "
                            "bottom, is)")
        shape = self._shape_of(ins[0])
        axis = p.axis + len(shape) if p.axis < 0 else p.axis
        if axis != 1 or p.num_axes != 1:
            raise self.fail(f"axis {p.axis}, num_axes {p.num_axes}: only a per-channel Scale "
                            "(axis 1, num_axes 1) is supported")
        c = shape[1]
        shapes = [(c,)] + ([(c,)] if p.bias_term else [])
        src = ins[0]
        bottom = layer.bottom[0]
        if (src in self.bn_of and src not in self.folded and self.used.get(src, 0) == 0
                and len(layer.top) and (layer.top[0] == bottom or not self.read_later[index][bottom])):
            self.folded.add(src)  # BatchNorm + Scale = one batch_norm
            self._params("scale", src, shapes, bias=p.bias_term)
            return self._produce(layer, src)
        if len(shape) != 4:
            raise self.fail("a Scale that follows no BatchNorm needs a (N, C, H, W) input (it "
                            "becomes a depthwise 1x1 convolution)")
        name = self._add("conv2d", ins, {"out": c, "kernel": 1, "groups": c,
                                         "bias": p.bias_term})
        self._params("depthwise", name, shapes, bias=p.bias_term)
        weight = _filler_rule(p.filler, (c, 1)) if p.HasField("filler") else 1.0
        bias = _filler_rule(p.bias_filler, (c, 1)) if p.HasField("bias_filler") else 0.0
        self.init[name] = {"weight": 1.0 if weight is None else weight,  # Caffe: 1 and 0
                           **({"bias": 0.0 if bias is None else bias} if p.bias_term else {})}
        self._produce(layer, name)

    # element-wise and structure
    def _pointwise(self, layer, ins, op: str, attrs: dict | None = None) -> None:
        self._need(1, ins)
        self._produce(layer, self._add(op, ins, attrs or {}))

    def _ReLU(self, layer, ins, index) -> None:  # noqa: N802
        slope = _f32(layer.relu_param.negative_slope)
        if slope:
            return self._pointwise(layer, ins, "leaky_relu", {"negative_slope": slope})
        self._pointwise(layer, ins, "relu")

    def _Sigmoid(self, layer, ins, index) -> None:  # noqa: N802
        self._pointwise(layer, ins, "sigmoid")

    def _TanH(self, layer, ins, index) -> None:  # noqa: N802
        self._pointwise(layer, ins, "tanh")

    def _Dropout(self, layer, ins, index) -> None:  # noqa: N802
        self._pointwise(layer, ins, "dropout", {"p": _f32(layer.dropout_param.dropout_ratio)})

    def _axis(self, ins, axis: int) -> int:
        rank = len(self._shape_of(ins[0]))
        return axis + rank if axis < 0 else axis

    def _Softmax(self, layer, ins, index) -> None:  # noqa: N802
        self._need(1, ins)
        self._pointwise(layer, ins, "softmax", {"axis": self._axis(ins, layer.softmax_param.axis)})

    def _Flatten(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.flatten_param
        self._need(1, ins)
        rank = len(self._shape_of(ins[0]))
        if self._axis(ins, p.end_axis) != rank - 1:
            raise self.fail(f"end_axis {p.end_axis}: only flattening to the last axis is supported")
        self._pointwise(layer, ins, "flatten", {"start_dim": self._axis(ins, p.axis)})

    def _Concat(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.concat_param
        self._need(1, ins, at_least=True)
        axis = p.axis if p.HasField("axis") or not p.HasField("concat_dim") else p.concat_dim
        if len(ins) == 1:  # Caffe passes a single bottom through
            return self._produce(layer, ins[0])
        self._produce(layer, self._add("concat", ins, {"axis": self._axis(ins, axis)}))

    def _Eltwise(self, layer, ins, index) -> None:  # noqa: N802
        p = layer.eltwise_param
        self._need(2, ins, at_least=True)
        coeffs = [_f32(c) for c in p.coeff]
        if p.operation == 1:  # SUM
            if coeffs and len(coeffs) != len(ins):
                raise self.fail(f"{len(coeffs)} coeff for {len(ins)} bottoms: give one per bottom")
            if coeffs and any(c != 1 for c in coeffs):
                return self._produce(layer, self._add("weighted_add", ins, {"coeffs": coeffs}))
            return self._produce(layer, self._add("add", ins, {}))
        if coeffs:
            raise self.fail("coeff is for the SUM operation only (Caffe refuses it too)")
        self._produce(layer, self._add("mul" if p.operation == 0 else "max", ins, {}))

    def _Split(self, layer, ins, index) -> None:  # noqa: N802
        self._need(1, ins)
        for i in range(len(layer.top)):
            self._produce(layer, ins[0], i)

    def _Silence(self, layer, ins, index) -> None:  # noqa: N802
        for i in ins:
            self.used[i] = self.used.get(i, 0) + 1

    # the spec
    def _spec(self) -> dict:
        inputs = self.inputs
        spec: dict[str, Any] = {"name": self._net_name()}
        if len(inputs) == 1 and "input" in inputs:
            spec["input"] = inputs["input"]
        else:
            spec["inputs"] = dict(inputs)
        meta = {**self._meta(), **self._meta_init()}
        if meta:
            spec["meta"] = meta
        first_input = next(iter(inputs))
        previous = first_input
        layers = []
        for entry in self.layers:
            entry = dict(entry)
            if entry["inputs"] == [previous]:
                del entry["inputs"]  # a chain: the previous layer (or the first input)
            layers.append(entry)
            previous = entry["name"]
        if not layers:
            raise InputError(f"{self.path}: the net has no layers to import")
        spec["layers"] = layers
        outputs, seen = [], set()
        for blob in self.order:
            holder = self.blobs[blob]
            if holder in inputs or self.used.get(holder) or holder in seen:
                continue
            seen.add(holder)
            outputs.append(holder)
        if not outputs:
            raise InputError(f"{self.path}: no layer output is left unused, so the net has no "
                             "output")
        spec["outputs"] = outputs
        try:
            import cnngraph

            cnngraph.load(spec)
        except SpecError as exc:
            raise InputError(one_line(f"{self.path}: the converted net does not check: "
                                      f"{exc}")) from None
        return spec

    def _net_name(self) -> str:
        name = self.net.name or self.path.stem
        return "".join(c for c in name if c.isprintable())[:limits.MAX_NAME] or "caffe_net"

    def _meta(self) -> dict:
        """Channel order and normalisation of the image inputs (3 channels; a 1-channel input
        gets the normalisation only)."""
        transform, tops = self.transform or (None, [])
        held = {holder: blob for blob, holder in reversed(list(self.blobs.items()))}
        images = [n for n, s in self.inputs.items() if len(s) == 3
                  and (s[0] in (1, 3) or held.get(n, n) in tops)]
        if not images:
            return {}
        norms = {}
        for name in images:
            channels = self.inputs[name][0]
            mean, scale = [0.0], 1.0
            blob = held.get(name, name)
            if transform is not None and blob in tops:
                values = [_f32(v) for v in transform.mean_value]
                if values and len(values) not in (1, channels):
                    raise InputError(f"{self.path}: transform_param has {len(values)} "
                                     f"mean_value for the {channels} channels of '{blob}'")
                mean, scale = values or [0.0], _f32(transform.scale)
                if scale <= 0:
                    raise InputError(f"{self.path}: transform_param scale {scale} must be > 0")
                if transform.mean_file:
                    log.warning("warning: %s: mean_file %s is an image of per-pixel means, which "
                                "cnngraph does not read: set meta.normalize.mean to its "
                                "per-channel means (over 255)", self.path, transform.mean_file)
                if transform.crop_size:
                    log.warning("note: %s: Caffe crops %d x %d from a larger image; cnngraph's "
                                "runtime resizes the whole image instead", self.path,
                                transform.crop_size, transform.crop_size)
            else:
                log.warning("warning: %s: no transform_param for input '%s': the spec feeds it "
                            "pixels in 0..255 (Caffe's range) with no mean subtracted; set "
                            "meta.normalize to what the net was trained with (its "
                            "train_val.prototxt's transform_param)", self.path, blob)
            norms[name] = {"mean": [_round(m / 255) for m in mean],
                           "std": [_round(1 / (255 * scale))]}
        meta: dict[str, Any] = {}
        if len(self.inputs) == 1:
            meta["normalize"] = norms[images[0]]
        else:
            meta["normalize"] = norms
        if any(self.inputs[n][0] == 3 for n in images):
            meta["channel_order"] = "BGR"
        return meta

    def _meta_init(self) -> dict:
        return {"init": {"layers": dict(self.init)}} if self.init else {}


def _filler_rule(filler, weight: tuple):
    """The meta.init rule of a Caffe FillerParameter for a blob of shape `weight`, or None."""
    count = math.prod(weight)
    fan_in, fan_out = count / weight[0], count / weight[1] if len(weight) > 1 else count
    fan = {0: fan_in, 1: fan_out, 2: (fan_in + fan_out) / 2}.get(filler.variance_norm, fan_in)
    kind = filler.type
    if kind == "constant":
        value = _f32(filler.value)
    elif kind == "gaussian" and filler.mean == 0 and filler.sparse < 0 and filler.std > 0:
        return {"normal": _f32(filler.std)}
    elif kind == "uniform" and filler.min == -filler.max and filler.max > 0:
        return {"uniform": _f32(filler.max)}
    elif kind == "xavier" and fan > 0:
        return {"uniform": _round(math.sqrt(3 / fan))}
    elif kind == "msra" and fan > 0:
        return {"normal": _round(math.sqrt(2 / fan))}
    else:
        return None
    return value if abs(value) <= 1e6 else None


def _caffe_pooled(n: int, k: int, s: int, pad: int, ceil: bool) -> int:
    """Caffe's pooled size: rounded up (CEIL) or down, and with padding one less when the last
    window would start in the padding."""
    span = n + 2 * pad - k
    out = (-(-span // s) if ceil else span // s) + 1
    if pad and (out - 1) * s >= n + pad:
        out -= 1
    return out


def _later_reads(layers) -> list[dict[str, bool]]:
    """For each layer, whether each of its bottoms is read again by a later layer before one
    rewrites it (one backward pass)."""
    pending: dict[str, bool] = {}  # blob -> read by the layers after this point, before a write
    out = []
    for layer in reversed(layers):
        out.append({blob: pending.get(blob, False) for blob in layer.bottom})
        for blob in layer.top:
            pending[blob] = False
        for blob in layer.bottom:
            pending[blob] = True
    return out[::-1]


def _f32(value: float) -> float:
    """A float32 field as the number written in the file (1e-05, not 9.99999974e-06)."""
    return float(str(np.float32(value)))


def _round(value: float) -> float:
    return float(f"{value:.9g}")


# --- weights --------------------------------------------------------------------------------
def _state(converted: _Converter, caffemodel_path, seed: int) -> dict:
    """The caffemodel's blobs as the built network's state_dict; what they do not give (all of
    it without a caffemodel) from a seeded fresh initialisation, built only when needed."""
    import torch

    import cnngraph

    graph = cnngraph.load(converted.spec)
    with torch.device("meta"):
        expected = cnngraph.build(graph).state_dict()
    state = {k: torch.zeros((), dtype=torch.long) for k in expected
             if k.endswith("num_batches_tracked")}
    if caffemodel_path is not None:
        state.update(_trained(converted, Path(caffemodel_path)))
    if set(expected) - set(state):
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            fresh = cnngraph.build(graph).state_dict()
        state = {k: state[k] if k in state else fresh[k].detach().clone() for k in expected}
    return {k: state[k] for k in expected}


def _trained(converted: _Converter, path: Path) -> dict:
    """state_dict entries from the caffemodel's blobs, by layer name as Caffe matches them."""
    import torch

    trained = {}
    for layer in read_caffemodel(path).layer:
        if len(layer.blobs) and layer.name not in trained:
            trained[layer.name] = layer
    state, missing = {}, []
    for caffe_name, (kind, name, shapes, extra) in converted.weights.items():
        layer = trained.get(caffe_name)
        if layer is None:
            missing.append(caffe_name)
            continue
        blobs = _blobs(path, layer, shapes)
        for key, value in _convert(kind, blobs, extra).items():
            state[f"{name}.{key}"] = torch.from_numpy(np.ascontiguousarray(value))
    if missing:
        log.warning("warning: %s: no blobs for layer(s) %s: they keep a fresh initialisation "
                    "(as Caffe would fill them)", path, ", ".join(missing[:10])
                    + (f" and {len(missing) - 10} more" if len(missing) > 10 else ""))
    return state


def _blobs(path: Path, layer, shapes: list[tuple]) -> list[np.ndarray]:
    """The layer's blobs as float32 arrays of the prototxt's shapes, each checked."""
    where = f"{path}: layer '{layer.name}' ({layer.type or 'blobs'})"
    if len(layer.blobs) != len(shapes):
        raise InputError(f"{where}: {len(layer.blobs)} blob(s), the prototxt's layer has "
                         f"{len(shapes)} (check bias_term and the layer type)")
    out = []
    for i, (blob, want) in enumerate(zip(layer.blobs, shapes)):
        got = (tuple(blob.shape.dim) if blob.HasField("shape")
               else tuple(d for d in (blob.num, blob.channels, blob.height, blob.width)))
        if any(d < 0 for d in got) or math.prod(got) > limits.MAX_NUMEL:
            raise InputError(f"{where}: blob {i} declares shape {got}")
        if _squeezed(got) != _squeezed(want):
            raise InputError(f"{where}: blob {i} has shape {got}, the prototxt's layer needs "
                             f"{want}: the caffemodel was trained for another prototxt (check "
                             "num_output, kernel_size, group and the input size)")
        values = blob.data if len(blob.data) else blob.double_data
        if len(values) != math.prod(want):
            raise InputError(f"{where}: blob {i} holds {len(values):,} numbers for its shape "
                             f"{got} ({math.prod(want):,}): the file is damaged")
        array = np.asarray(values, dtype=np.float32).reshape(want)
        if not np.isfinite(array).all():
            raise InputError(f"{where}: blob {i} holds NaN or infinite values")
        out.append(array)
    return out


def _squeezed(shape: tuple) -> tuple:
    return tuple(d for d in shape if d != 1)


def _convert(kind: str, blobs: list[np.ndarray], extra: dict) -> dict[str, np.ndarray]:
    """Caffe blobs -> state_dict entries of the spec layer."""
    if kind == "conv":
        return dict(zip(("weight", "bias"), blobs))
    if kind == "linear":
        weight = blobs[0].T if extra["transpose"] else blobs[0]
        return dict(zip(("weight", "bias"), [weight, *blobs[1:]]))
    if kind == "batch_norm":
        mean, var, factor = blobs
        scale = 0.0 if factor[0] == 0 else 1.0 / factor[0]
        return {"running_mean": mean * scale, "running_var": var * scale,  # weight, bias:
                "weight": np.ones_like(mean), "bias": np.zeros_like(mean)}  # a Scale's, if one
    gamma = blobs[0]
    beta = blobs[1] if extra["bias"] else None
    if kind == "scale":  # folded into the batch_norm before it
        return {"weight": gamma, "bias": beta if beta is not None else np.zeros_like(gamma)}
    out = {"weight": gamma.reshape(-1, 1, 1, 1)}  # depthwise
    if beta is not None:
        out["bias"] = beta
    return out
