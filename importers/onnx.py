"""ONNX -> cnngraph spec: `from_onnx(path) -> (spec, state_dict)`.

The model is read bounded (cnngraph/files.py's read_onnx, no external data), brought to a
standard form by library tooling -- onnx's version converter (opset 13 at least), its inliner
(model-local functions, except the `cnngraph` domain's, which map to ops), its shape
inference, and onnxscript's constant folding -- and then read node by node: each node becomes
one layer of a flat spec (a few patterns become one layer: MatMul + Add is a linear layer, a
DeformConv's offset convolution is part of it), its constant inputs become the layer's weights.
The spec is loaded at the end and every layer's shape is compared with the one ONNX infers, so
a node whose semantics the mapping got wrong is an error, not a silently different network.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnngraph import limits
from cnngraph.errors import CnnGraphError, InputError
from cnngraph.files import read_onnx

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit on one message: larger files need external data
MAX_FOLD = 1 << 27  # elements of a tensor constant folding may read or make (512 MiB of float32)
OLDEST_OPSET = 13  # older models are converted first (Upsample -> Resize, per-axis Softmax, ...)
CNNGRAPH_DOMAIN = "cnngraph"


def from_onnx(path: str | Path) -> tuple[dict, dict]:
    """(spec, state_dict) of the ONNX model at `path`: the spec's layers are the model's nodes
    (names from the node names), its weights those of `cnngraph.build(cnngraph.load(spec))`."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_MODEL_BYTES:
        raise InputError(f"{path}: larger than the 2 GiB one ONNX file can hold; a model this "
                           "size keeps its weights as external data, which cnngraph does not read")
    proto = read_onnx(path)
    _check_bounds(proto, path)
    model = _prepare(proto, path)
    return _Importer(model, proto, path).run()


# --- reading and normalising -------------------------------------------------------------------
def _check_bounds(proto, path: Path) -> None:
    """Refuse, before any tool runs on it, what cnngraph does not read (external data) and a
    graph whose inlined functions would pass the layer limit (a function calling itself, or a
    chain of functions each calling the next many times)."""
    from onnx import TensorProto

    if any(t.data_location == TensorProto.EXTERNAL for t in proto.graph.initializer):
        raise InputError(f"{path}: its weights are stored as external data, which cnngraph does "
                           "not read; save the model with them inside (onnx.save_model(model, path,"
                           " save_as_external_data=False))")
    local = {(f.domain, f.name): f for f in proto.functions if f.domain != CNNGRAPH_DOMAIN}
    sizes: dict[tuple[str, str], int] = {}

    def size(nodes, stack: tuple) -> int:
        total = 0
        for node in nodes:
            key = (node.domain, node.op_type)
            if key not in local:
                total += 1
            elif key in stack:
                raise InputError(f"{path}: function {key[0]}.{key[1]} calls itself; such a "
                                   "model cannot be inlined")
            else:
                if key not in sizes:
                    sizes[key] = size(local[key].node, stack + (key,))
                total += sizes[key]
            if total > limits.MAX_LAYERS:
                raise InputError(f"{path}: more than {limits.MAX_LAYERS:,} nodes once its "
                                   "functions are inlined; cnngraph specs hold at most that "
                                   "many layers")
        return total

    size(proto.graph.node, ())


def _prepare(proto, path: Path):
    """The model in onnx-ir form, converted to opset >= 13, its non-cnngraph functions inlined,
    shapes inferred and constants folded (every constant an initializer)."""
    import onnx
    import onnx.inliner
    import onnx_ir as ir
    import onnx_ir.passes.common as common
    from onnxscript.optimizer import fold_constants_ir

    from exporters.custom_domain import register_schemas

    register_schemas()  # so that shape inference knows the cnngraph nodes

    def step(what: str, fn: Callable):
        try:
            return fn()
        except CnnGraphError:
            raise
        except Exception as exc:  # noqa: BLE001 - the tools' errors are many; one line each
            text = " ".join(str(exc).split())[:300] or type(exc).__name__
            raise InputError(f"{path}: {what} failed ({text}); the model is damaged or "
                               "uses ONNX beyond what cnngraph imports") from None

    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise InputError(f"{path}: the model imports no standard ONNX opset")
    if opset < OLDEST_OPSET:
        proto = step(f"converting opset {opset} to {OLDEST_OPSET}",
                     lambda: onnx.version_converter.convert_version(proto, OLDEST_OPSET))
    keep = [(f.domain, f.name) for f in proto.functions if f.domain == CNNGRAPH_DOMAIN]
    proto = step("inlining its functions", lambda: onnx.inliner.inline_selected_functions(
        proto, keep, exclude=True))
    proto = step("shape inference", lambda: onnx.shape_inference.infer_shapes(
        proto, check_type=False, strict_mode=False, data_prop=True))
    model = step("reading", lambda: ir.serde.deserialize_model(proto))

    def fold():
        fold_constants_ir(model, onnx_shape_inference=True, input_size_limit=MAX_FOLD,
                          output_size_limit=MAX_FOLD)
        common.RemoveUnusedNodesPass()(model)
        common.LiftConstantsToInitializersPass(lift_all_constants=True, size_limit=0)(model)

    step("constant folding", fold)
    return model


# --- names -------------------------------------------------------------------------------------
def _identifier(text: str, fallback: str) -> str:
    """`text` as a spec name: runs of other characters become one '_', no leading digit or
    '_', at most limits.MAX_NAME characters; `fallback` when nothing is left."""
    name = re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")
    if not name or name[0].isdigit():
        name = f"{fallback}_{name}" if name else fallback
    return name[:limits.MAX_NAME - 8]  # room for a _N suffix


def _node_name(node) -> str:
    """A readable base name for a node: the exporter's path without its trailing op part
    ('layer1.0.conv1/Conv_4' -> 'layer1_0_conv1', '/layer1/layer1.0/conv1/Conv' ->
    'layer1_layer1_0_conv1'), else the op type."""
    name = node.name or ""
    parts = [p for p in name.split("/") if p]
    if len(parts) > 1 and parts[-1].split("_")[0] in (node.op_type, node.op_type + "s"):
        parts = parts[:-1]
    return _identifier("_".join(parts), node.op_type.lower())


class _Names:
    """Unique spec names; also avoids torch.nn.Module's own attributes (the builder refuses
    them)."""

    def __init__(self):
        import torch

        self.used = set(dir(torch.nn.Module)) | {"graph", "code"}

    def take(self, base: str) -> str:
        name, n = base, 1
        while name in self.used:
            n += 1
            name = f"{base}_{n}"
        self.used.add(name)
        return name


# --- the importer ------------------------------------------------------------------------------
HANDLERS: dict[tuple[str, str], str] = {}  # (domain, op_type) -> method name


def handles(*ops: str, domain: str = ""):
    def mark(method):
        for op in ops:
            HANDLERS[(domain, op)] = method.__name__
        return method
    return mark


def supported() -> str:
    """The op types that map, for messages and docs."""
    return ", ".join(sorted(f"{d}.{o}" if d else o for d, o in HANDLERS))


class _Importer:
    def __init__(self, model, proto, path: Path):
        self.model, self.graph, self.path = model, model.graph, path
        self.proto = proto  # the file as read: its metadata
        self.names = _Names()
        self.layers: list[dict] = []
        self.state: dict[str, np.ndarray] = {}
        self.value: dict[str, str] = {}  # ONNX value name -> spec layer or input name
        self.onnx_shape: dict[str, tuple] = {}  # spec layer -> the shape ONNX infers (no batch)
        self.source: dict[str, Any] = {}  # spec layer -> the ONNX node it came from
        self.done: set[int] = set()  # id() of nodes already taken by a pattern
        self.node = None

    # --- driving -------------------------------------------------------------------------------
    def run(self) -> tuple[dict, dict]:
        import torch

        spec: dict[str, Any] = {"name": self._spec_name(),
                                "doc": f"imported from {self.path.name}"}
        spec.update(self._inputs())
        if len(self.graph) > limits.MAX_LAYERS:
            raise InputError(f"{self.path}: {len(self.graph):,} nodes, more than the "
                               f"{limits.MAX_LAYERS:,} layers a spec holds")
        for node in self.graph:
            if id(node) in self.done:
                continue
            self.node = node
            method = HANDLERS.get((_domain(node), node.op_type))
            if method is None:
                self.refuse(f"has no cnngraph equivalent; supported: {supported()}")
            getattr(self, method)(node)
        self.node = None
        spec["layers"] = self.layers
        spec["outputs"] = self._outputs()
        meta = self._meta()
        if meta:
            spec["meta"] = meta
        self._check(spec)
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in self.state.items()}
        return spec, state

    def refuse(self, why: str, node=None):
        node = node or self.node
        raise InputError(f"{self.path}: node '{node.name}' ({_domain(node) + '.' if _domain(node) else ''}"
                           f"{node.op_type}) {why}")

    def _spec_name(self) -> str:
        name = (self.graph.name or "").strip()
        if not name or not name.isprintable():
            name = self.path.stem
        return name[:limits.MAX_NAME] if name.isprintable() and name else "imported"

    def _inputs(self) -> dict:
        shapes = {}
        for value in self.graph.inputs:
            if value.const_value is not None:  # an initializer listed as an input (IR < 4)
                continue
            dims = _dims(value)
            dtype = getattr(value.type, "dtype", None)
            if dtype is not None and dtype.name not in ("FLOAT", "FLOAT16", "DOUBLE", "BFLOAT16"):
                raise InputError(f"{self.path}: input '{value.name}' holds {dtype.name} values; "
                                 "cnngraph networks take float tensors")
            if dims is None or len(dims) not in (2, 4) or any(
                    not isinstance(d, int) or d < 1 for d in dims[1:]):
                shown = "unknown" if dims is None else "[" + ", ".join(map(str, dims)) + "]"
                raise InputError(
                    f"{self.path}: input '{value.name}' has the shape {shown}; a spec needs "
                    "(N, C, H, W) or (N, F) with every dimension but the batch fixed: export the "
                    "model with a fixed input size (dynamic axes on the batch only), or fix it "
                    "with python -m onnxruntime.tools.make_dynamic_shape_fixed")
            shapes[value.name] = list(dims[1:])
        if not shapes:
            raise InputError(f"{self.path}: the model has no input")
        if len(shapes) == 1:
            (name, shape), = shapes.items()
            self.names.used.add("input")
            self.value[name] = "input"
            return {"input": shape}
        named = {}
        for name, shape in shapes.items():
            spec_name = self.names.take(_identifier(name, "input"))
            self.value[name] = spec_name
            named[spec_name] = shape
        return {"inputs": named}

    def _outputs(self) -> list:
        outputs, taken = [], set()
        for value in self.graph.outputs:
            if value.name not in self.value:
                raise InputError(f"{self.path}: output '{value.name}' is a constant; cnngraph "
                                   "networks compute their outputs from their inputs")
            source = self.value[value.name]
            if source not in self.source:
                raise InputError(f"{self.path}: output '{value.name}' is an input of the model "
                                   "itself; a spec's outputs come from layers")
            name, n = _identifier(value.name, "output"), 1
            base = name
            while name in taken:
                n += 1
                name = f"{base}_{n}"
            taken.add(name)
            outputs.append({"name": name, "from": source})
        return outputs

    def _meta(self) -> dict:
        """The preprocessing and class names a cnngraph export recorded (docs/export.md);
        other producers' metadata says nothing cnngraph can use."""
        props = {p.key: p.value for p in self.proto.metadata_props}
        meta: dict[str, Any] = {}
        try:
            if "cnngraph.normalize" in props and "input" in self.value.values():
                norm = json.loads(props["cnngraph.normalize"])
                meta["normalize"] = {"mean": list(norm["mean"]), "std": list(norm["std"])}
            if "cnngraph.classes" in props:
                meta["classes"] = [str(c) for c in json.loads(props["cnngraph.classes"])]
        except (ValueError, TypeError, KeyError):
            return {}
        return meta

    def _check(self, spec: dict) -> None:
        """Load the spec (every limit and shape rule applies), then compare each layer's shape
        with the one ONNX inferred for the node it came from."""
        import cnngraph
        from cnngraph.errors import SpecError

        try:
            graph = cnngraph.load(spec)
        except SpecError as exc:
            if "meta" not in spec:
                raise InputError(f"{self.path}: the imported spec does not load: {exc}") from None
            del spec["meta"]  # metadata that does not fit the network: left out
            return self._check(spec)
        for name, expected in self.onnx_shape.items():
            got = tuple(graph[name].shape[1:])
            if expected is not None and got != expected:
                self.refuse(f"gives {_fmt(expected)} in the model, but the cnngraph layer '{name}' "
                            f"computes {_fmt(got)}: this node's attributes have no exact cnngraph "
                            "equivalent", node=self.source[name])

    # --- helpers for the handlers --------------------------------------------------------------
    def emit(self, op: str, inputs: list, output=None, node=None, weights=None, **attrs) -> str:
        """Add a layer made from `node` (default: the node being read) whose output is the ONNX
        value `output` (default: the node's first); returns its name."""
        node = node or self.node
        output = output or node.outputs[0]
        name = self.names.take(_node_name(node))
        layer = {"name": name, "op": op, "inputs": [self.ref(v) for v in inputs], **attrs}
        self.layers.append(layer)
        for key, array in (weights or {}).items():
            self.state[f"{name}.{key}"] = array
        self.value[output.name] = name
        self.onnx_shape[name] = _static(output)
        self.source[name] = node
        return name

    def alias(self, value, output=None) -> None:
        """The node's output is `value` itself (Identity, inference-mode Dropout, ...)."""
        self.value[(output or self.node.outputs[0]).name] = self.ref(value)

    def ref(self, value) -> str:
        if value is None:
            self.refuse("lacks an input it needs")
        if value.name not in self.value:
            if value.const_value is not None:
                self.refuse(f"takes the constant '{value.name}' where cnngraph needs a computed "
                            "tensor (a layer's input)")
            self.refuse(f"reads '{value.name}', which no supported node computes")
        return self.value[value.name]

    def const(self, index: int, what: str, node=None, optional: bool = False):
        """The constant input `index` of the node as a float32 (or int64) array, or one error:
        a weight computed at run time is not something a spec can hold."""
        node = node or self.node
        value = node.inputs[index] if index < len(node.inputs) else None
        if value is None:
            if optional:
                return None
            self.refuse(f"lacks its {what} (input {index})", node)
        tensor = value.const_value
        if tensor is None:
            self.refuse(f"computes its {what} ('{value.name}') at run time, even after constant "
                        "folding; cnngraph imports weights stored in the file (initializers)", node)
        array = tensor.numpy()
        if array.dtype.kind == "f":
            if not np.isfinite(array).all():
                self.refuse(f"has NaN or inf in its {what} ('{value.name}')", node)
            return array.astype(np.float32)
        if array.dtype.kind in "iub":
            return array.astype(np.int64)
        self.refuse(f"has a {array.dtype} {what}; cnngraph reads float and integer constants", node)

    def attr(self, name: str, default=None, node=None):
        attribute = (node or self.node).attributes.get(name)
        if attribute is None:
            return default
        value = attribute.value
        return tuple(value) if isinstance(value, (list, tuple)) else value

    def computed(self, node=None) -> list:
        """The node's inputs that are not constants."""
        return [v for v in (node or self.node).inputs if v is not None and v.const_value is None]

    def in_shape(self, index: int = 0, node=None) -> tuple:
        """The static shape of the node's input (batch included, maybe symbolic), or an error."""
        node = node or self.node
        dims = _dims(node.inputs[index]) if index < len(node.inputs) and node.inputs[index] else None
        if dims is None or any(not isinstance(d, int) for d in dims[1:]):
            self.refuse("reads a tensor whose shape shape inference could not work out; give the "
                        "model fixed input sizes", node)
        return dims

    def only_consumer(self, value):
        """The one node reading `value` when exactly one does and `value` is no graph output."""
        users = list(value.consumers())
        if len(users) == 1 and value not in self.graph.outputs:
            return users[0]
        return None

    def single_output(self, node=None) -> None:
        node = node or self.node
        for extra in node.outputs[1:]:
            if extra.name and (list(extra.consumers()) or extra in self.graph.outputs):
                self.refuse(f"uses its output '{extra.name}', which cnngraph has no layer for "
                            "(only the first output maps)", node)

    # --- convolutions --------------------------------------------------------------------------
    def _pads(self, node, kernel, strides, dilations, shape) -> list[int]:
        """[top, left, bottom, right] from `pads` or `auto_pad` (resolved on the known input
        size, as ONNX defines it)."""
        auto = self.attr("auto_pad", "NOTSET", node)
        auto = auto.decode() if isinstance(auto, bytes) else auto
        if auto in ("NOTSET", ""):
            pads = list(self.attr("pads", (0, 0, 0, 0), node))
            if len(pads) != 4 or min(pads) < 0:
                self.refuse(f"has pads {pads}; cnngraph reads 2-D convolutions and pools with "
                            "non-negative pads", node)
            return pads
        if auto == "VALID":
            return [0, 0, 0, 0]
        if auto not in ("SAME_UPPER", "SAME_LOWER"):
            self.refuse(f"has auto_pad {auto!r}", node)
        before, after = [], []
        for n, k, s, d in zip(shape[2:], kernel, strides, dilations):
            total = max((math.ceil(n / s) - 1) * s + d * (k - 1) + 1 - n, 0)
            small, large = total // 2, total - total // 2
            before.append(small if auto == "SAME_UPPER" else large)
            after.append(large if auto == "SAME_UPPER" else small)
        return before + after

    def _conv_geometry(self, node, weight: np.ndarray, shape: tuple):
        if weight.ndim != 4 or len(shape) != 4:
            self.refuse("is not a 2-D convolution; cnngraph's convolutions are 2-D "
                        "(N, C, H, W)", node)
        kernel = list(self.attr("kernel_shape", weight.shape[2:], node))
        if tuple(kernel) != tuple(weight.shape[2:]):
            self.refuse(f"has kernel_shape {kernel} but a {list(weight.shape[2:])} weight", node)
        strides = list(self.attr("strides", (1, 1), node))
        dilations = list(self.attr("dilations", (1, 1), node))
        pads = self._pads(node, kernel, strides, dilations, shape)
        return kernel, strides, dilations, pads

    @handles("Conv")
    def conv(self, node):
        x = node.inputs[0]
        shape = self.in_shape()
        weight = self.const(1, "weight")
        bias = self.const(2, "bias", optional=True)
        kernel, strides, dilations, pads = self._conv_geometry(node, weight, shape)
        group = self.attr("group", 1)
        weights = {"weight": weight}
        if bias is not None:
            weights["bias"] = bias.reshape(-1)
        padding = pads[0] if len(set(pads)) == 1 else pads
        self.emit("conv2d", [x], weights=weights, out=int(weight.shape[0]), kernel=kernel,
                  stride=strides, padding=padding, dilation=dilations, groups=group,
                  bias=bias is not None)

    @handles("ConvTranspose")
    def conv_transpose(self, node):
        shape = self.in_shape()
        weight = self.const(1, "weight")
        bias = self.const(2, "bias", optional=True)
        group = self.attr("group", 1)
        if weight.ndim != 4 or len(shape) != 4:
            self.refuse("is not a 2-D transposed convolution")
        kernel = list(self.attr("kernel_shape", weight.shape[2:]))
        strides = list(self.attr("strides", (1, 1)))
        dilations = list(self.attr("dilations", (1, 1)))
        output_padding = list(self.attr("output_padding", (0, 0)))
        out = _static(node.outputs[0])
        auto = self.attr("auto_pad", "NOTSET")
        if self.attr("output_shape") is not None or auto not in ("NOTSET", "", "VALID"):
            if out is None:
                self.refuse("sets its output size (output_shape or auto_pad) and shape inference "
                            "could not work it out")
            # the padding the output size implies, the odd one at the end (ONNX's rule)
            pads_begin, pads_end = [], []
            for i in range(2):
                total = (strides[i] * (shape[2 + i] - 1) + output_padding[i]
                         + dilations[i] * (kernel[i] - 1) + 1 - out[1 + i])
                if total < 0:
                    output_padding[i] -= total
                    total = 0
                lower = auto == "SAME_LOWER"
                pads_begin.append(total - total // 2 if lower else total // 2)
                pads_end.append(total // 2 if lower else total - total // 2)
            pads = pads_begin + pads_end
        else:
            pads = list(self.attr("pads", (0, 0, 0, 0))) if auto != "VALID" else [0, 0, 0, 0]
        # PyTorch pads both sides alike and adds output_padding at the end: fewer padding at
        # the end is the same as that much more output_padding
        padding = pads[:2]
        extra = [output_padding[i] + pads[i] - pads[2 + i] for i in range(2)]
        if min(extra) < 0 or any(e >= max(s, d) for e, s, d in zip(extra, strides, dilations)):
            self.refuse(f"has pads {pads} with output_padding {output_padding}; cnngraph's "
                        "conv_transpose2d pads both sides alike (output_padding below the stride "
                        "or dilation may shorten the end)")
        weights = {"weight": weight}
        if bias is not None:
            weights["bias"] = bias.reshape(-1)
        self.emit("conv_transpose2d", [node.inputs[0]], weights=weights,
                  out=int(weight.shape[1]) * group, kernel=kernel, stride=strides,
                  padding=padding, output_padding=extra, dilation=dilations, groups=group,
                  bias=bias is not None)

    @handles("DeformConv")
    @handles("DeformConv", domain=CNNGRAPH_DOMAIN)
    def deform_conv(self, node):
        """cnngraph's deform_conv2d owns its offset (and mask) convolution: the offsets must be
        a Conv of the same input with the same geometry (v2: split into offsets and mask logits,
        the mask their Sigmoid), as cnngraph and the DCN papers write it."""
        x = node.inputs[0]
        shape = self.in_shape()
        weight = self.const(1, "weight")
        bias = self.const(3, "bias", optional=True)
        kernel, strides, dilations, pads = self._conv_geometry(node, weight, shape)
        group, offset_group = self.attr("group", 1), self.attr("offset_group", 1)
        mask = node.inputs[4] if len(node.inputs) > 4 else None
        taps = offset_group * kernel[0] * kernel[1]
        explain = ("; cnngraph's deform_conv2d computes its offsets (and mask) with its own "
                   "convolution of the same input, kernel, stride, padding and dilation")
        offsets = node.inputs[2]
        producer = offsets.producer() if offsets is not None else None
        split = None
        if mask is not None:
            sigmoid = mask.producer()
            split = producer
            if (sigmoid is None or sigmoid.op_type != "Sigmoid" or split is None
                    or split.op_type != "Split" or sigmoid.inputs[0] is not split.outputs[1]
                    or offsets is not split.outputs[0]):
                self.refuse("takes a mask that is not the Sigmoid of the second part of its "
                            "offset convolution" + explain)
            sizes = self.const(1, "split sizes", node=split, optional=True)
            if sizes is None:
                sizes = np.array(self.attr("split", (), node=split))
            if list(sizes) != [2 * taps, taps] or (self.attr("axis", 0, node=split) % 4) != 1:
                self.refuse("takes offsets and mask split other than [offsets, mask] on the "
                            "channels" + explain)
            producer = split.inputs[0].producer()
            self.done.update({id(sigmoid), id(split)})
        if (producer is None or producer.op_type != "Conv" or _domain(producer)
                or producer.inputs[0] is not x):
            self.refuse("takes offsets that are not a convolution of its own input" + explain)
        o_weight = self.const(1, "weight", node=producer)
        o_bias = self.const(2, "bias", node=producer, optional=True)
        geometry = self._conv_geometry(producer, o_weight, shape)
        if geometry != (kernel, strides, dilations, pads) or self.attr("group", 1, producer) != 1:
            self.refuse("takes offsets from a convolution of another kernel, stride, padding, "
                        "dilation or groups" + explain)
        if pads[:2] != pads[2:]:
            self.refuse(f"has asymmetric pads {pads}; cnngraph's deform_conv2d pads both sides "
                        "alike")
        for used in (producer, split):
            if used is not None and any(
                    [c for c in out.consumers() if c is not node and id(c) not in self.done]
                    or out in self.graph.outputs for out in used.outputs[:1]):
                self.refuse(f"shares its offset convolution '{producer.name}' with other nodes"
                            + explain)
        self.done.add(id(producer))
        weights = {"weight": weight, "offset_conv.weight": o_weight,
                   "offset_conv.bias": (o_bias.reshape(-1) if o_bias is not None
                                        else np.zeros(o_weight.shape[0], np.float32))}
        if bias is not None:
            weights["bias"] = bias.reshape(-1)
        self.emit("deform_conv2d", [x], weights=weights, out=int(weight.shape[0]),
                  kernel=kernel, stride=strides, padding=pads[:2], dilation=dilations,
                  groups=group, offset_groups=offset_group, bias=bias is not None,
                  modulated=mask is not None)

    # --- normalisation -------------------------------------------------------------------------
    @handles("BatchNormalization")
    def batch_norm(self, node):
        if self.attr("training_mode", 0):
            self.refuse("is in training mode; export the model in inference mode (model.eval())")
        self.single_output()
        weights = {key: self.const(i, key).reshape(-1) for i, key in
                   enumerate(("weight", "bias", "running_mean", "running_var"), start=1)}
        if (weights["running_var"] < 0).any():
            self.refuse("has a negative running variance")
        self.emit("batch_norm", [node.inputs[0]], weights=weights,
                  eps=float(self.attr("epsilon", 1e-5)),
                  momentum=round(1.0 - float(self.attr("momentum", 0.9)), 7))

    @handles("LRN")
    def lrn(self, node):
        size = self.attr("size")
        if not size or size % 2 == 0:
            self.refuse(f"has size {size}; cnngraph imports odd LRN sizes (ONNX centres an even "
                        "window one channel away from PyTorch's)")
        self.emit("lrn", [node.inputs[0]], size=size, alpha=float(self.attr("alpha", 1e-4)),
                  beta=float(self.attr("beta", 0.75)), k=float(self.attr("bias", 1.0)))

    @handles("LRNWithinChannel", domain=CNNGRAPH_DOMAIN)
    def lrn_within(self, node):
        kernel = self.attr("kernel_shape", (5, 5))
        if len(set(kernel)) != 1:
            self.refuse(f"has a {kernel} window; cnngraph's within-channel LRN is square")
        self.emit("lrn", [node.inputs[0]], size=kernel[0], region="within_channel",
                  alpha=float(self.attr("alpha", 1e-4)), beta=float(self.attr("beta", 0.75)),
                  k=float(self.attr("bias", 1.0)))

    # --- activations ---------------------------------------------------------------------------
    @handles("Relu", "Sigmoid", "Tanh")
    def pointwise(self, node):
        self.emit(node.op_type.lower(), [node.inputs[0]])

    @handles("LeakyRelu")
    def leaky_relu(self, node):
        self.emit("leaky_relu", [node.inputs[0]], negative_slope=float(self.attr("alpha", 0.01)))

    @handles("Clip")
    def clip(self, node):
        low = self.const(1, "min", optional=True)
        high = self.const(2, "max", optional=True)
        low = None if low is None else float(low.reshape(-1)[0]) if low.size == 1 else "?"
        high = None if high is None else float(high.reshape(-1)[0]) if high.size == 1 else "?"
        if low == 0 and (high is None or high == math.inf):
            return self.emit("relu", [node.inputs[0]])
        self.refuse(f"clips to [{low}, {high}]; cnngraph maps Clip(0, inf) (relu)")

    @handles("Softmax")
    def softmax(self, node):
        rank = len(self.in_shape())
        axis = self.attr("axis", -1)
        axis = axis + rank if axis < 0 else axis
        if not 1 <= axis < rank:
            self.refuse(f"normalises over axis {axis} (the batch); cnngraph's softmax runs over "
                        "a dimension after the batch")
        self.emit("softmax", [node.inputs[0]], axis=axis)

    # --- pooling -------------------------------------------------------------------------------
    def _pool(self, node, op: str, **extra):
        shape = self.in_shape()
        if len(shape) != 4:
            self.refuse("is not a 2-D pool")
        self.single_output()
        kernel = list(self.attr("kernel_shape", ()))
        strides = list(self.attr("strides", (1, 1)))
        dilations = list(self.attr("dilations", (1, 1)))
        pads = self._pads(node, kernel, strides, dilations, shape)
        if pads[:2] != pads[2:]:
            self.refuse(f"has asymmetric pads {pads}; cnngraph's pools pad both sides alike")
        if any(2 * p > k for p, k in zip(pads, kernel)):
            self.refuse(f"pads {pads[:2]} more than half its kernel {kernel}")
        attrs = dict(kernel=kernel, stride=strides, padding=pads[:2],
                     ceil_mode=bool(self.attr("ceil_mode", 0)), **extra)
        if dilations != [1, 1]:
            if op != "max_pool2d":
                self.refuse("has dilations; cnngraph's avg_pool2d has none")
            attrs["dilation"] = dilations
        self.emit(op, [node.inputs[0]], **attrs)

    @handles("MaxPool")
    def max_pool(self, node):
        self._pool(node, "max_pool2d")

    @handles("AveragePool")
    def avg_pool(self, node):
        self._pool(node, "avg_pool2d", count_include_pad=bool(self.attr("count_include_pad", 0)))

    @handles("GlobalAveragePool")
    def global_avg_pool(self, node):
        if len(self.in_shape()) != 4:
            self.refuse("is not a 2-D pool")
        self.emit("global_avg_pool2d", [node.inputs[0]])

    # --- dense layers --------------------------------------------------------------------------
    @handles("Gemm")
    def gemm(self, node):
        if self.attr("transA", 0):
            self.refuse("transposes its input (transA); cnngraph's linear takes (N, F)")
        if len(self.in_shape()) != 2:
            self.refuse("takes a tensor that is not (N, F)")
        weight = self.const(1, "weight") * float(self.attr("alpha", 1.0))
        weight = weight if self.attr("transB", 0) else weight.T
        bias = self.const(2, "bias", optional=True)
        if bias is not None:
            bias = self._bias(bias * float(self.attr("beta", 1.0)), weight.shape[0])
        self._linear(node, weight, bias)

    def _bias(self, array: np.ndarray, out: int):
        """A bias broadcast over (N, out): shape (), (1,), (out,) or (1, out) -> (out,)."""
        if array.ndim > 2 or (array.ndim == 2 and array.shape[0] != 1) or array.size not in (1, out):
            self.refuse(f"adds a {list(array.shape)} constant, not a bias over {out} features")
        return np.broadcast_to(array.reshape(-1), (out,)).copy()

    def _linear(self, node, weight, bias, output=None):
        weights = {"weight": weight}
        if bias is not None:
            weights["bias"] = bias
        self.emit("linear", [node.inputs[0]], output=output, weights=weights,
                  out=int(weight.shape[0]), bias=bias is not None)

    @handles("MatMul")
    def matmul(self, node):
        shape = self.in_shape()
        if node.inputs[1].const_value is None:
            self.refuse("multiplies two computed tensors; cnngraph maps MatMul by a constant "
                        "weight (a linear layer)")
        if len(shape) == 4 and self._adaptive_pool(node):
            return
        if len(shape) != 2:
            self.refuse("multiplies a tensor that is not (N, F); cnngraph maps MatMul(x, W) on "
                        "(N, F) to a linear layer")
        weight = self.const(1, "weight")
        if weight.ndim != 2:
            self.refuse(f"multiplies by a {list(weight.shape)} weight, not a matrix")
        weight = weight.T  # (out, in), as linear stores it
        add = self.only_consumer(node.outputs[0])
        if add is not None and add.op_type == "Add" and not _domain(add):
            other = [v for v in add.inputs if v is not node.outputs[0]]
            if len(other) == 1 and other[0].const_value is not None:
                bias = self._bias(self.const(add.inputs.index(other[0]), "bias", node=add),
                                  weight.shape[0])
                self.done.add(id(add))
                return self._linear(node, weight, bias, output=add.outputs[0])
        self._linear(node, weight, None)

    def _adaptive_pool(self, node) -> bool:
        """cnngraph's own lowering of an uneven adaptive_avg_pool2d: rows @ (x @ cols), the
        averaging matrices of PyTorch's bins."""
        from cnngraph.ops.pool import AdaptiveAvgPool2d

        (_, _, h, w) = self.in_shape()
        cols = self.const(1, "matrix")
        outer = self.only_consumer(node.outputs[0])
        if cols.ndim != 2 or outer is None or outer.op_type != "MatMul" or \
                outer.inputs[1] is not node.outputs[0] or outer.inputs[0].const_value is None:
            return False
        rows = self.const(0, "matrix", node=outer)
        if rows.ndim != 2 or cols.shape[0] != w or rows.shape[1] != h:
            return False
        oh, ow = rows.shape[0], cols.shape[1]
        if not (np.allclose(rows, AdaptiveAvgPool2d._bin_matrix(h, oh), atol=1e-6)
                and np.allclose(cols.T, AdaptiveAvgPool2d._bin_matrix(w, ow), atol=1e-6)):
            return False
        self.done.add(id(outer))
        self.emit("adaptive_avg_pool2d", [node.inputs[0]], output=outer.outputs[0],
                  size=[oh, ow])
        return True

    # --- shapes --------------------------------------------------------------------------------
    @handles("Flatten")
    def flatten(self, node):
        rank = len(self.in_shape())
        axis = self.attr("axis", 1)
        axis = axis + rank if axis < 0 else axis
        if axis != 1:
            self.refuse(f"flattens from axis {axis}; cnngraph's flatten keeps the batch "
                        "(axis 1)")
        if rank == 2:
            return self.alias(node.inputs[0])
        self.emit("flatten", [node.inputs[0]])

    @handles("Reshape")
    def reshape(self, node):
        """A reshape that keeps the batch and merges the trailing dimensions: flatten (what
        exporters write for x.view(N, -1)); one that changes nothing: nothing."""
        shape = self.in_shape()
        target = self._reshape_target(node, shape)
        if target == list(shape[1:]):
            return self.alias(node.inputs[0])
        for start in range(1, len(shape)):
            if target == list(shape[1:start]) + [math.prod(shape[start:])] and start < len(shape) - 1:
                return self.emit("flatten", [node.inputs[0]], start_dim=start)
        self.refuse(f"reshapes {_fmt(tuple(shape[1:]))} to {_fmt(tuple(target))} per sample; "
                    "cnngraph maps a reshape that merges trailing dimensions (a flatten)")

    def _reshape_target(self, node, shape) -> list:
        """The per-sample shape the reshape gives, from its constant shape input, else from
        shape inference; the batch must stay the first dimension."""
        value = node.inputs[1]
        if value is not None and value.const_value is not None:
            wanted = [int(v) for v in self.const(1, "shape").reshape(-1)]
            out = [shape[i] if v == 0 and not self.attr("allowzero", 0) else v
                   for i, v in enumerate(wanted)]
            if out.count(-1) == 1:
                rest = math.prod(v for v in out[1:] if v != -1)
                if out[0] == -1:  # -1 in the batch place: fine when the rest is one sample
                    if rest == math.prod(shape[1:]):
                        return out[1:]
                elif rest and math.prod(shape[1:]) % rest == 0:
                    out[out.index(-1)] = math.prod(shape[1:]) // rest
            if out[0] is shape[0] or out[0] == shape[0] and -1 not in out:
                return out[1:]
        dims = _dims(node.outputs[0])
        if dims is not None and all(isinstance(d, int) for d in dims[1:]) and (
                not isinstance(dims[0], int) or dims[0] == shape[0]):
            return list(dims[1:])
        self.refuse("reshapes to a shape that keeps no batch dimension first, or that shape "
                    "inference could not work out")

    @handles("Identity")
    def identity(self, node):
        self.alias(node.inputs[0])

    @handles("Dropout")
    def dropout(self, node):
        self.single_output()
        ratio = self.const(1, "ratio", optional=True)
        p = float(ratio.reshape(-1)[0]) if ratio is not None else float(self.attr("ratio", 0.5))
        self.emit("dropout", [node.inputs[0]], p=p)

    @handles("Concat")
    def concat(self, node):
        rank = len(self.in_shape())
        axis = self.attr("axis")
        axis = axis + rank if axis < 0 else axis
        if axis < 1:
            self.refuse("concatenates along the batch")
        inputs = list(node.inputs)
        if any(v.const_value is not None for v in inputs):
            self.refuse("concatenates a constant; cnngraph's concat joins computed tensors")
        if len(inputs) == 1:
            return self.alias(inputs[0])
        self.emit("concat", inputs, axis=axis)

    # --- elementwise ---------------------------------------------------------------------------
    @handles("Add", "Mul", "Sum")
    def elementwise(self, node):
        inputs = list(node.inputs)
        consts = [v for v in inputs if v.const_value is not None]
        if consts:
            self.refuse(f"{'adds' if node.op_type != 'Mul' else 'multiplies by'} the constant "
                        f"'{consts[0].name}'; cnngraph maps {node.op_type} of computed tensors "
                        "of equal shapes")
        if len(inputs) == 1:
            return self.alias(inputs[0])
        shapes = {tuple(self.in_shape(i)[1:]) for i in range(len(inputs))}
        if len(shapes) != 1:
            self.refuse(f"broadcasts shapes {' and '.join(_fmt(s) for s in shapes)}; cnngraph "
                        "maps it for tensors of equal shapes")
        self.emit("mul" if node.op_type == "Mul" else "add", inputs)

    # --- resizing ------------------------------------------------------------------------------
    @handles("Resize")
    def resize(self, node):
        shape = self.in_shape()
        if len(shape) != 4:
            self.refuse("does not resize a (N, C, H, W) map")
        scales = self.const(2, "scales", optional=True)
        if scales is None or scales.size == 0:
            sizes = self.const(3, "sizes", optional=True)
            if sizes is None:
                self.refuse("has neither scales nor sizes")
            scales = sizes.astype(np.float64) / np.array(shape[-len(sizes):], np.float64)
        axes = self.attr("axes")
        full = [1.0] * 4
        for axis, scale in zip(axes or range(4 - len(scales), 4), scales.reshape(-1)):
            full[axis % 4] = float(scale)
        if full[:2] != [1.0, 1.0]:
            self.refuse("resizes the batch or the channels")
        sh, sw = full[2:]
        mode = _text(self.attr("mode", "nearest"))
        transform = _text(self.attr("coordinate_transformation_mode", "half_pixel"))
        nearest = _text(self.attr("nearest_mode", "round_prefer_floor"))
        if self.attr("antialias", 0):
            self.refuse("antialiases; cnngraph's upsample does not")
        integer = sh == int(sh) and sw == int(sw)
        scale = [sh, sw] if sh != sw else sh
        if mode == "nearest" and (
                (transform == "asymmetric" and nearest == "floor")
                or (transform in ("half_pixel", "pytorch_half_pixel") and integer
                    and nearest.startswith("round"))):
            return self.emit("upsample", [node.inputs[0]], scale=scale, mode="nearest")
        if mode == "linear" and transform in ("half_pixel", "pytorch_half_pixel", "align_corners"):
            return self.emit("upsample", [node.inputs[0]], scale=scale, mode="bilinear",
                             align_corners=transform == "align_corners")
        self.refuse(f"resizes with mode {mode}, {transform} coordinates and {nearest} rounding; "
                    "cnngraph maps nearest (asymmetric + floor, or half-pixel at integer scales) "
                    "and linear (half_pixel or align_corners)")


# --- small facts -------------------------------------------------------------------------------
def _domain(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _text(value) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _dims(value) -> tuple | None:
    """The value's dims (ints, or strings for symbolic ones), or None when unknown."""
    shape = value.shape if value is not None else None
    if shape is None:
        return None
    return tuple(d if isinstance(d, int) else str(d) for d in shape)


def _static(value) -> tuple | None:
    """The per-sample shape ONNX inferred for `value` when fully known, else None."""
    dims = _dims(value)
    if dims is None or not dims or any(not isinstance(d, int) for d in dims[1:]):
        return None
    return tuple(dims[1:])


def _fmt(shape: tuple) -> str:
    return "(N, " + ", ".join(map(str, shape)) + ")"
