"""ONNX -> cnngraph spec: `from_onnx(path) -> (spec, state_dict)`.

The model is read bounded (cnngraph/files.py's read_onnx; external weights only from its own
folder), brought to a standard form by library tooling -- onnx's version converter (opset 13 at
least), its inliner (model-local functions, except the `cnngraph` domain's, which map to ops),
its shape inference, and onnxscript's constant folding -- and then read node by node: each node
becomes one layer of a flat spec (a few patterns become one layer: MatMul + Add is a linear
layer, a DeformConv's offset convolution is part of it, the Erf form of GELU is a gelu), its
constant inputs become the layer's weights.
The spec is loaded at the end and every layer's shape is compared with the one ONNX infers, so
a node whose semantics the mapping got wrong is an error, not a silently different network.
"""
from __future__ import annotations

import json
import logging
import math
import re
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import numpy as np

from cnngraph import limits
from cnngraph.errors import CnnGraphError, InputError
from cnngraph.files import read_onnx

MAX_MODEL_BYTES = 2**31 - 1  # protobuf's own limit on one message: larger files need external data
MAX_EXTERNAL_BYTES = 1 << 32  # weights stored beside the model: 4 GiB
MAX_FOLD = 1 << 27  # elements of a tensor constant folding may read or make (512 MiB of float32)
MAX_FOLD_TOTAL = 1 << 28  # elements of all the tensors it makes together (1 GiB of float32)
ANALYSIS_BATCH = 97  # the batch size a dynamic batch stands at while the model is read (a prime
#                     no layer size is likely to equal, so a batch-derived number stays telling)
OLDEST_OPSET = 13  # older models are converted first (Upsample -> Resize, per-axis Softmax, ...)
CNNGRAPH_DOMAIN = "cnngraph"
#: op type -> the method that looks for a pattern starting there (before the nodes are read)
PATTERNS = {"Pad": "_pad_into_conv", "Erf": "_gelu", "Sigmoid": "_silu",
            "LayerNormalization": "_layer_norm_nchw", "Transpose": "_channel_shuffle",
            "Add": "_weighted_add"}
#: ops whose later inputs say how (a shape, scales, a ratio), not what: only the first is data
DATA_INPUTS = {"Reshape": 1, "Resize": 1, "Upsample": 1, "Dropout": 1, "Clip": 1, "Pad": 1,
               "Expand": 1, "Tile": 1, "Split": 1, "Squeeze": 1, "Unsqueeze": 1}
OFFSETS = ("; cnngraph's deform_conv2d computes its offsets (and mask) with its own convolution "
           "of the same input, kernel, stride, padding and dilation")


def from_onnx(path: str | Path) -> tuple[dict, dict]:
    """(spec, state_dict) of the ONNX model at `path`: the spec's layers are the model's nodes
    (names from the node names), its weights those of `cnngraph.build(cnngraph.load(spec))`."""
    path = Path(path)
    if path.is_file() and path.stat().st_size > MAX_MODEL_BYTES:
        raise InputError(f"{path}: larger than the 2 GiB one ONNX file can hold (a model this "
                         "size keeps its weights in a data file beside it); not an ONNX model")
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

    external = [t for t in proto.graph.initializer if t.data_location == TensorProto.EXTERNAL]
    if external:
        _load_external(proto, external, path)
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


def _load_external(proto, tensors, path: Path) -> None:
    """Weights stored beside the model (torch.onnx.export(dynamo=True) writes MODEL.onnx.data):
    read when each names a plain file in the model's folder and all hold at most
    MAX_EXTERNAL_BYTES together (onnx's reader then checks each offset and length)."""
    from onnx.external_data_helper import ExternalDataInfo, load_external_data_for_model

    total = 0
    for tensor in tensors:
        try:
            info = ExternalDataInfo(tensor)
        except ValueError:
            info = None
        location = getattr(info, "location", "")
        if info is None or not location or Path(location).name != location or location in (".", ".."):
            raise InputError(f"{path}: weight '{tensor.name}' is stored in {location!r}, not in a "
                             "file beside the model; cnngraph reads external data only from the "
                             "model's own folder")
        if not (path.parent / location).is_file():
            raise InputError(f"{path}: weight '{tensor.name}' is stored in {location}, which is "
                             f"missing from {path.parent}; copy it beside the model")
        total += info.length if info.length is not None else (path.parent / location).stat().st_size
        if total > MAX_EXTERNAL_BYTES:
            raise InputError(f"{path}: its external weights hold more than "
                             f"{MAX_EXTERNAL_BYTES >> 30} GiB; cnngraph imports smaller models")
    try:
        load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # noqa: BLE001 - a truncated or damaged data file
        raise InputError(f"{path}: cannot read its external weights ({' '.join(str(exc).split())[:200]});"
                         " the data file is damaged or belongs to another model") from None


def _fix_batch(proto) -> None:
    """A symbolic batch becomes ANALYSIS_BATCH while the model is read, so that the shape
    arithmetic exporters write for a dynamic batch (Shape -> Gather -> Concat -> Reshape, as in
    x.view(x.size(0), -1)) folds to constants; only inputs whose other dimensions are fixed
    (the others are refused later, by their own names). The spec's batch stays symbolic."""
    initializers = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        dims = value.type.tensor_type.shape.dim
        if value.name in initializers or len(dims) < 2 or dims[0].HasField("dim_value"):
            continue
        if all(d.HasField("dim_value") for d in dims[1:]):
            dims[0].dim_value = ANALYSIS_BATCH


@contextmanager
def _quiet():
    """The tools' log messages (onnx-ir warns about each oddity of a damaged model) held back:
    what is wrong reaches the user as one error line, or not at all."""
    loggers = [logging.getLogger(name) for name in ("onnx_ir", "onnxscript")]
    levels = [logger.level for logger in loggers]
    for logger in loggers:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        for logger, level in zip(loggers, levels):
            logger.setLevel(level)


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
            with _quiet():
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
    _fix_batch(proto)
    keep = [(f.domain, f.name) for f in proto.functions if f.domain == CNNGRAPH_DOMAIN]
    proto = step("inlining its functions", lambda: onnx.inliner.inline_selected_functions(
        proto, keep, exclude=True))
    proto = step("shape inference", lambda: onnx.shape_inference.infer_shapes(
        proto, check_type=False, strict_mode=False, data_prop=True))
    model = step("reading", lambda: ir.serde.deserialize_model(proto))

    left = [MAX_FOLD_TOTAL]

    def within_budget(node):
        """False once the folded tensors would pass MAX_FOLD_TOTAL elements together (a file
        of many foldable nodes must not make memory run out); True for a DequantizeLinear of
        constants (a weight stored as int8); None: onnxscript's own rules."""
        if any(v is not None and v.const_value is None for v in node.inputs):
            return None  # not foldable anyway
        made = sum(math.prod(d if isinstance(d, int) else 1 for d in out.shape)
                   for out in node.outputs if out.shape is not None)
        read = sum(v.const_value.size for v in node.inputs if v is not None)
        left[0] -= max(made, read)
        if left[0] < 0:
            return False
        # onnxscript keeps DequantizeLinear; of constants it is a weight stored as int8
        return True if node.op_type == "DequantizeLinear" and not _domain(node) else None

    def fold():
        fold_constants_ir(model, onnx_shape_inference=True, input_size_limit=MAX_FOLD,
                          output_size_limit=MAX_FOLD, should_fold=within_budget)
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
    name = _text(node.name or "")
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
        self.shapes: dict[str, tuple] = {}  # ONNX value -> shape worked out where ONNX has none
        self.onnx_shape: dict[str, tuple] = {}  # spec layer -> the shape ONNX infers (no batch)
        self.source: dict[str, Any] = {}  # spec layer -> the ONNX node it came from
        self.done: set[int] = set()  # id() of nodes already taken by a pattern
        self.padded: dict[int, tuple] = {}  # id(Conv) -> (its Pad's input, [t, l, b, r])
        self.patterns: dict[int, Callable] = {}  # id(last node of a pattern) -> emits its layer
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
        live = self._live()
        self.done.update(id(node) for node in self.graph if id(node) not in live)
        for node in self.graph:  # parts of patterns that come before the node they feed
            if id(node) in self.done:
                continue
            if node.op_type == "DeformConv" and _domain(node) in ("", CNNGRAPH_DOMAIN):
                self._guarded(node, self._offset_conv, node)
            elif not _domain(node) and node.op_type in PATTERNS:
                self._guarded(node, getattr(self, PATTERNS[node.op_type]), node)
        for node in self.graph:
            if id(node) in self.done:
                continue
            self.node = node
            if id(node) in self.patterns:  # the last node of a pattern: its layer
                self._guarded(node, self.patterns.pop(id(node)))
                continue
            method = HANDLERS.get((_domain(node), node.op_type))
            if method is None:
                self.refuse(f"has no cnngraph equivalent; supported: {supported()}")
            self._guarded(node, getattr(self, method), node)
        self.node = None
        spec["layers"] = self.layers
        spec["outputs"] = self._outputs()
        meta = self._meta()
        if meta:
            spec["meta"] = meta
        self._check(spec)
        state = {k: torch.from_numpy(np.array(v, dtype=np.float32)) for k, v in self.state.items()}
        return spec, state

    def _guarded(self, node, fn: Callable, *args) -> None:
        """fn(*args); an attribute or input of a type or size ONNX does not allow (a damaged or
        hand-made file: a missing axis, a string where a number goes, a weight whose bytes do
        not fill its shape) is one error naming the node."""
        try:
            fn(*args)
        except CnnGraphError:
            raise
        except (TypeError, ValueError, KeyError, IndexError, AttributeError, OverflowError) as exc:
            text = " ".join(str(exc).split())[:200]
            self.refuse(f"has attributes or inputs that are not valid ONNX ({type(exc).__name__}: "
                        f"{text}); the file is damaged or was written by a faulty tool", node)

    def _live(self) -> set[int]:
        """id() of the nodes the outputs' tensors flow through. Nodes that only compute a
        Reshape's target shape or a Resize's scales (Shape, Gather, Concat of sizes, ...) are
        left out: the handlers read those inputs from shape inference."""
        live, stack = set(), [v.producer() for v in self.graph.outputs]
        while stack:
            node = stack.pop()
            if node is None or id(node) in live:
                continue
            live.add(id(node))
            inputs = list(node.inputs)[:DATA_INPUTS.get(node.op_type, len(node.inputs))]
            stack.extend(v.producer() for v in inputs if v is not None)
        return live

    def refuse(self, why: str, node=None):
        node = node or self.node
        domain = _domain(node) + "." if _domain(node) else ""
        raise InputError(f"{self.path}: node '{_text(node.name)}' ({domain}{_text(node.op_type)}) {why}")

    def _spec_name(self) -> str:
        """The graph's name when cnngraph wrote the model (the spec's name), else the file's
        (exporters name every graph alike: main_graph, torch_jit)."""
        name = self.graph.name if self.proto.producer_name == "cnngraph" else self.path.stem
        name = (name or "").strip()
        return name[:limits.MAX_NAME] if name and name.isprintable() else "imported"

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
                shown = "unknown" if dims is None else "[" + ", ".join(map(str, ("N", *dims[1:]))) + "]"
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
            if props.get("cnngraph.channel_order") in ("RGB", "BGR"):
                meta["channel_order"] = props["cnngraph.channel_order"]
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
        value `output` (default: the node's first; "" for none); returns its name. `inputs` are
        ONNX values or names of layers made here."""
        node = node or self.node
        output = node.outputs[0] if output is None else output
        name = self.names.take(_node_name(node))
        layer = {"name": name, "op": op, "inputs": [self.ref(v) for v in inputs], **attrs}
        self.layers.append(layer)
        for key, array in (weights or {}).items():
            self.state[f"{name}.{key}"] = array
        if output != "":  # "": a layer inside a pattern, with no ONNX value of its own
            self.value[output.name] = name
        self.onnx_shape[name] = _static(output) if output != "" else None
        self.source[name] = node
        return name

    def alias(self, value, output=None) -> None:
        """The node's output is `value` itself (Identity, inference-mode Dropout, ...)."""
        self.value[(output or self.node.outputs[0]).name] = self.ref(value)

    def ref(self, value) -> str:
        if isinstance(value, str):  # a layer made here
            return value
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
        if isinstance(value, bytes):  # a string attribute; a damaged one is not UTF-8
            return _text(value)
        return tuple(value) if isinstance(value, (list, tuple)) else value

    def computed(self, node=None) -> list:
        """The node's inputs that are not constants."""
        return [v for v in (node or self.node).inputs if v is not None and v.const_value is None]

    def in_shape(self, index: int = 0, node=None) -> tuple:
        """The static shape of the node's input (batch included, maybe symbolic), or an error."""
        node = node or self.node
        value = node.inputs[index] if index < len(node.inputs) else None
        dims = _dims(value) if value is not None else None
        if dims is None or any(not isinstance(d, int) for d in dims[1:]):
            dims = self.shapes.get(value.name) if value is not None else None
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

    def _pad_into_conv(self, pad) -> None:
        """A zero Pad of H and W whose only reader is a Conv becomes part of that Conv's
        padding (what exporters write for asymmetric or "same" padding)."""
        conv = self.only_consumer(pad.outputs[0])
        if (conv is None or conv.op_type != "Conv" or _domain(conv) or conv.inputs[0] is not pad.outputs[0]
                or _text(self.attr("mode", "constant", pad)) != "constant"
                or any(v is not None and v.const_value is None for v in pad.inputs[1:])):
            return
        pads = self.const(1, "pads", node=pad).reshape(-1).tolist()
        value = self.const(2, "value", node=pad, optional=True)
        axes = self.const(3, "axes", node=pad, optional=True)
        if (value is not None and value.size and float(value.reshape(-1)[0]) != 0.0) or axes is not None \
                or len(pads) != 8 or any(pads[i] for i in (0, 1, 4, 5)) or min(pads) < 0:
            return
        self.padded[id(conv)] = (pad.inputs[0], [pads[2], pads[3], pads[6], pads[7]])
        self.done.add(id(pad))

    @handles("Conv")
    def conv(self, node):
        x, before = self.padded.get(id(node), (node.inputs[0], [0, 0, 0, 0]))
        shape = self.in_shape()
        weight = self.const(1, "weight")
        bias = self.const(2, "bias", optional=True)
        kernel, strides, dilations, pads = self._conv_geometry(node, weight, shape)
        pads = [a + b for a, b in zip(pads, before)]
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
        producer, modulated = self._offset_conv(node)
        o_weight = self.const(1, "weight", node=producer)
        o_bias = self.const(2, "bias", node=producer, optional=True)
        geometry = self._conv_geometry(producer, o_weight, shape)
        if geometry != (kernel, strides, dilations, pads) or self.attr("group", 1, producer) != 1:
            self.refuse("takes offsets from a convolution of another kernel, stride, padding, "
                        "dilation or groups" + OFFSETS)
        if pads[:2] != pads[2:]:
            self.refuse(f"has asymmetric pads {pads}; cnngraph's deform_conv2d pads both sides "
                        "alike")
        taps = offset_group * kernel[0] * kernel[1]
        if o_weight.shape[0] != (3 if modulated else 2) * taps:
            self.refuse(f"takes {o_weight.shape[0]} offset channels from its convolution, not "
                        f"the {(3 if modulated else 2) * taps} its kernel and offset groups need"
                        + OFFSETS)
        weights = {"weight": weight, "offset_conv.weight": o_weight,
                   "offset_conv.bias": (o_bias.reshape(-1) if o_bias is not None
                                        else np.zeros(o_weight.shape[0], np.float32))}
        if bias is not None:
            weights["bias"] = bias.reshape(-1)
        self.emit("deform_conv2d", [x], weights=weights, out=int(weight.shape[0]),
                  kernel=kernel, stride=strides, padding=pads[:2], dilation=dilations,
                  groups=group, offset_groups=offset_group, bias=bias is not None,
                  modulated=modulated)

    def _offset_conv(self, node):
        """(the Conv computing a DeformConv's offsets, whether a mask comes with them), its
        nodes marked as taken; or one error. Called before the nodes are read (they come first
        in the graph) and again when the DeformConv is."""
        x, offsets = node.inputs[0], node.inputs[2] if len(node.inputs) > 2 else None
        mask = node.inputs[4] if len(node.inputs) > 4 else None
        parts = []  # the nodes of the pattern; float Casts between them (a float16 model's) too
        offsets = _uncast(offsets, parts)
        producer = offsets.producer() if offsets is not None else None
        if mask is not None:
            mask = _uncast(mask, parts)
            sigmoid, split = mask.producer(), producer
            if (sigmoid is None or sigmoid.op_type != "Sigmoid" or split is None
                    or split.op_type != "Split" or len(split.outputs) != 2
                    or _uncast(sigmoid.inputs[0], parts) is not split.outputs[1]
                    or offsets is not split.outputs[0]
                    or (self.attr("axis", 0, node=split) % 4) != 1):
                self.refuse("takes a mask that is not the Sigmoid of the second part of its "
                            "offset convolution's channels" + OFFSETS, node)
            parts += [sigmoid, split]
            producer = _uncast(split.inputs[0], parts).producer()
        if (producer is None or producer.op_type != "Conv" or _domain(producer)
                or _uncast(producer.inputs[0], []) is not _uncast(x, [])):
            self.refuse("takes offsets that are not a convolution of its own input" + OFFSETS,
                        node)
        parts.append(producer)
        for part in parts:
            for out in part.outputs:
                if out in self.graph.outputs or any(
                        c is not node and c not in parts for c in out.consumers()):
                    self.refuse(f"shares its offset convolution's output '{out.name}' with "
                                "other nodes" + OFFSETS, node)
        self.done.update(id(p) for p in parts)
        return producer, mask is not None

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
        bounds = []
        for index, what in ((1, "min"), (2, "max")):
            array = self.const(index, what, optional=True)
            if array is None:
                bounds.append(self.attr(what))  # opset < 11 keeps them as attributes
            elif array.size != 1:
                self.refuse(f"clips to a {what} of {array.size} values; cnngraph's bounds are numbers")
            else:
                bounds.append(float(array.reshape(-1)[0]))
        low, high = bounds
        if low == 0 and (high is None or high == math.inf):
            return self.emit("relu", [node.inputs[0]])
        if low == 0 and high == 6 and "relu6" in REGISTRY_NAMES():
            return self.emit("relu6", [node.inputs[0]])
        if "clip" in REGISTRY_NAMES():
            low = -limits.MAX_FLOAT if low is None else max(low, -limits.MAX_FLOAT)
            high = limits.MAX_FLOAT if high is None else min(high, limits.MAX_FLOAT)
            return self.emit("clip", [node.inputs[0]], min=low, max=high)
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

    @handles("GlobalMaxPool")
    def global_max_pool(self, node):
        """The maximum over the whole (fixed-size) map: a max_pool2d of its size."""
        shape = self.in_shape()
        if len(shape) != 4:
            self.refuse("is not a 2-D pool")
        self.emit("max_pool2d", [node.inputs[0]], kernel=list(shape[2:]))

    @handles("ReduceMean")
    def reduce_mean(self, node):
        """The mean over H and W (how dynamo writes adaptive_avg_pool2d(x, 1) and x.mean((2, 3))):
        global_avg_pool2d, then flatten when the dimensions are not kept."""
        if len(self.in_shape()) != 4:
            self.refuse("does not average a (N, C, H, W) map")
        axes = self.attr("axes")
        if axes is None and len(node.inputs) > 1 and node.inputs[1] is not None:
            axes = self.const(1, "axes").reshape(-1).tolist()
        if sorted(a % 4 for a in axes or ()) != [2, 3]:
            self.refuse(f"averages over axes {axes}; cnngraph maps the mean over H and W "
                        "(global average pooling)")
        if self.attr("keepdims", 1):
            return self.emit("global_avg_pool2d", [node.inputs[0]])
        pooled = self.emit("global_avg_pool2d", [node.inputs[0]], output="")
        self.emit("flatten", [pooled])

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
        self.shapes[node.outputs[0].name] = (shape[0], *target)
        for start in range(1, len(shape) - 1):
            if target == list(shape[1:start]) + [math.prod(shape[start:])]:
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
        dims = _dims(node.outputs[0])  # shape inference's, the batch symbol kept
        if dims is not None and len(dims) > 1 and dims[0] == shape[0]:
            known = [d for d in dims[1:] if isinstance(d, int)]
            if len(known) == len(dims) - 1:
                return list(dims[1:])
            if len(known) == len(dims) - 2 and math.prod(shape[1:]) % max(math.prod(known), 1) == 0:
                rest = math.prod(shape[1:]) // max(math.prod(known), 1)  # the one unknown
                return [d if isinstance(d, int) else rest for d in dims[1:]]
        self.refuse("reshapes to a shape that keeps no batch dimension first, or that shape "
                    "inference could not work out")

    @handles("Identity")
    def identity(self, node):
        self.alias(node.inputs[0])

    @handles("Cast")
    def cast(self, node):
        """Between float types (a float16 model's input and output casts): nothing, as a spec
        computes in the precision it is built and run in."""
        import onnx_ir as ir

        to = ir.DataType(self.attr("to"))
        if to not in (ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.BFLOAT16):
            self.refuse(f"casts to {to.name}; cnngraph's layers compute on float tensors")
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
    def _bias_add(self, node, x, constant) -> bool:
        """Add(conv or linear output, constant per channel) read by nothing else: the constant
        joins the layer's bias (what converters write for a bias kept apart)."""
        layer_name = self.value.get(x.name)
        layer = next((l for l in reversed(self.layers) if l["name"] == layer_name), None)
        if (layer is None or layer["op"] not in ("conv2d", "linear") or self.only_consumer(x) is not node):
            return False
        out = layer["out"]
        array = constant.const_value.numpy().astype(np.float32)
        rank = len(self.in_shape(list(node.inputs).index(x)))
        per_channel = (1, out) + (1,) * (rank - 2)  # what broadcasts along the channels only
        if array.ndim > rank or (1,) * (rank - array.ndim) + array.shape != per_channel:
            return False
        key = f"{layer_name}.bias"
        self.state[key] = self.state.get(key, np.zeros(out, np.float32)) + array.reshape(-1)
        layer["bias"] = True
        self.value[node.outputs[0].name] = layer_name
        self.onnx_shape[layer_name] = _static(node.outputs[0])
        return True

    @handles("Add", "Mul", "Sum")
    def elementwise(self, node):
        inputs = list(node.inputs)
        consts = [v for v in inputs if v.const_value is not None]
        if node.op_type == "Add" and len(inputs) == 2 and len(consts) == 1:
            computed = next(v for v in inputs if v is not consts[0])
            if self._bias_add(node, computed, consts[0]):
                return
        if node.op_type == "Mul" and len(inputs) == 2 and len(consts) == 1 and \
                "layer_scale" in REGISTRY_NAMES():
            computed = next(v for v in inputs if v is not consts[0])
            shape = self.in_shape(inputs.index(computed))
            array = self.const(inputs.index(consts[0]), "factor")
            if len(shape) == 4 and array.ndim <= 4 and \
                    (1,) * (4 - array.ndim) + array.shape == (1, shape[1], 1, 1):
                return self.emit("layer_scale", [computed],
                                 weights={"weight": array.reshape(shape[1], 1, 1)})
        if consts:
            self.refuse(f"{'adds' if node.op_type != 'Mul' else 'multiplies by'} the constant "
                        f"'{consts[0].name}'; cnngraph maps {node.op_type} of computed tensors"
                        + (", a per-channel bias after a conv or linear layer, and a per-channel "
                           "factor (layer_scale)" if node.op_type != "Sum" else ""))
        if len(inputs) == 1:
            return self.alias(inputs[0])
        ranks = {len(self.in_shape(i)) for i in range(len(inputs))}
        if len(ranks) != 1:
            self.refuse("broadcasts tensors of different ranks; cnngraph's add and mul broadcast "
                        "tensors of one rank (each with the batch first)")
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
            axes = self.attr("axes") or range(4 - sizes.size, 4)
            if sizes.size != len(axes) or any(not isinstance(shape[a % 4], int) for a in axes):
                self.refuse("resizes the batch to a fixed size")
            scales = sizes.reshape(-1).astype(np.float64) / np.array([shape[a % 4] for a in axes])
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


    # --- patterns: several nodes, one layer -----------------------------------------------------
    def _claim(self, last, emit: Callable, *inner) -> None:
        """`inner` nodes become part of the layer `emit` makes when `last` is read; each
        inner node's outputs must be read only inside the pattern."""
        members = {id(n) for n in (last, *inner)}
        for node in inner:
            for out in node.outputs:
                if out in self.graph.outputs or any(id(c) not in members for c in out.consumers()):
                    return
        self.done.update(id(n) for n in inner)
        self.patterns[id(last)] = emit

    def _scalar(self, value, expected: float) -> bool:
        tensor = value.const_value if value is not None else None
        return tensor is not None and tensor.numpy().size == 1 and \
            abs(float(tensor.numpy().reshape(-1)[0]) - expected) <= 1e-6 * max(1.0, abs(expected))

    def _gelu(self, erf) -> None:
        """x * 0.5 * (1 + erf(x / sqrt 2)) in the orders exporters write it: Div(x, sqrt 2) or
        Mul(x, 1/sqrt 2) -> Erf -> Add 1 -> Mul by x then by 0.5, or by Mul(x, 0.5)."""
        scaled = erf.inputs[0].producer()
        if scaled is None or not (
                (scaled.op_type == "Div" and self._scalar(scaled.inputs[1], math.sqrt(2)))
                or (scaled.op_type == "Mul" and any(self._scalar(v, 1 / math.sqrt(2))
                                                    for v in scaled.inputs))):
            return
        x = next(v for v in scaled.inputs if v.const_value is None)
        add = self.only_consumer(erf.outputs[0])
        if add is None or add.op_type != "Add" or not any(self._scalar(v, 1.0) for v in add.inputs):
            return
        mul = self.only_consumer(add.outputs[0])
        if mul is None or mul.op_type != "Mul":
            return
        other = next((v for v in mul.inputs if v is not add.outputs[0]), None)
        half = other.producer() if other is not None else None
        if other is x:  # x * (1 + erf) then * 0.5
            last = self.only_consumer(mul.outputs[0])
            if last is None or last.op_type != "Mul" or not any(self._scalar(v, 0.5) for v in last.inputs):
                return
            parts = (scaled, erf, add, mul)
        elif (half is not None and half.op_type == "Mul" and x in half.inputs
              and any(self._scalar(v, 0.5) for v in half.inputs)):
            last, parts = mul, (scaled, erf, add, half)
        else:
            return
        self._claim(last, lambda: self.emit("gelu", [x], node=last, approximate="none"), *parts)

    def _weighted_add(self, add) -> None:
        """Add of terms some of which are Mul(x, scalar constant): weighted_add with those
        coefficients (Caffe's Eltwise SUM with coeff, as cnngraph exports it)."""
        if "weighted_add" not in REGISTRY_NAMES() or len(add.inputs) != 2:
            return
        terms, coeffs, muls = [], [], []
        for value in add.inputs:
            mul = value.producer() if value is not None else None
            consts = [v for v in (mul.inputs if mul is not None else ())
                      if v is not None and v.const_value is not None]
            if (mul is not None and mul.op_type == "Mul" and not _domain(mul) and len(mul.inputs) == 2
                    and len(consts) == 1 and consts[0].const_value.size == 1
                    and mul.inputs[0] is not mul.inputs[1]):
                terms.append(next(v for v in mul.inputs if v is not consts[0]))
                coeffs.append(float(consts[0].const_value.numpy().reshape(-1)[0]))
                muls.append(mul)
            else:
                terms.append(value)
                coeffs.append(1.0)
        if muls and all(v is not None and v.const_value is None for v in terms):
            self._claim(add, lambda: self.emit("weighted_add", terms, node=add, coeffs=coeffs),
                        *muls)

    def _silu(self, sigmoid) -> None:
        """x * sigmoid(x) (SiLU, swish): Mul of a tensor and its own Sigmoid."""
        if "silu" not in REGISTRY_NAMES():
            return
        x = sigmoid.inputs[0]
        mul = self.only_consumer(sigmoid.outputs[0])
        if mul is not None and mul.op_type == "Mul" and x in mul.inputs and len(mul.inputs) == 2:
            self._claim(mul, lambda: self.emit("silu", [x], node=mul), sigmoid)

    def _layer_norm_nchw(self, norm) -> None:
        """Transpose to (N, H, W, C) -> LayerNormalization over C -> Transpose back: layer_norm
        on the map (cnngraph's own lowering, and ConvNeXt's permute + LayerNorm + permute)."""
        before = norm.inputs[0].producer()
        after = self.only_consumer(norm.outputs[0])
        if (before is None or before.op_type != "Transpose" or after is None
                or after.op_type != "Transpose" or self.attr("perm", None, before) != (0, 2, 3, 1)
                or self.attr("perm", None, after) != (0, 3, 1, 2)
                or self.attr("axis", -1, norm) not in (-1, 3)):
            return
        self._claim(after, lambda: self._emit_layer_norm(norm, before.inputs[0], after), before,
                    norm)

    def _emit_layer_norm(self, node, x, last) -> None:
        channels = self.in_shape(0, node)[-1]
        scale = self.const(1, "scale", node).reshape(-1)
        bias = self.const(2, "bias", node, optional=True)
        bias = np.zeros(channels, np.float32) if bias is None else bias.reshape(-1)
        if scale.size != channels or bias.size != channels:
            self.refuse(f"scales by {scale.size} values over {channels} channels", node)
        self.emit("layer_norm", [x], output=last.outputs[0], node=node,
                  weights={"weight": scale, "bias": bias},
                  eps=float(self.attr("epsilon", 1e-5, node)))

    @handles("LayerNormalization")
    def layer_norm(self, node):
        """Over the last axis of an (N, F) input (a map: see _layer_norm_nchw)."""
        self.single_output()
        if len(self.in_shape()) != 2 or self.attr("axis", -1) not in (-1, 1):
            self.refuse("normalises a map over other axes than its channels; cnngraph's "
                        "layer_norm normalises (N, F) features, or a map's channels written "
                        "as Transpose -> LayerNormalization -> Transpose")
        self._emit_layer_norm(node, node.inputs[0], node)

    def _channel_shuffle(self, transpose) -> None:
        """Reshape (N, C, H, W) -> (N, g, C/g, H, W), swap the two channel axes, Reshape back:
        channel_shuffle with g groups."""
        if self.attr("perm", None, transpose) != (0, 2, 1, 3, 4):
            return
        first = transpose.inputs[0].producer()
        last = self.only_consumer(transpose.outputs[0])
        if first is None or first.op_type != "Reshape" or last is None or last.op_type != "Reshape":
            return
        dims_in, dims_mid = _dims(first.inputs[0]), _dims(first.outputs[0])
        if (dims_in is None or dims_mid is None or len(dims_in) != 4 or len(dims_mid) != 5
                or dims_mid[3:] != dims_in[2:] or _dims(last.outputs[0]) != dims_in
                or not isinstance(dims_mid[1], int)):
            return
        groups = dims_mid[1]
        self._claim(last, lambda: self.emit("channel_shuffle", [first.inputs[0]], node=last,
                                            groups=groups), first, transpose)

    # --- ops the IR gained: activations, channels, elementwise ---------------------------------
    @handles("HardSwish")
    def hardswish(self, node):
        self.emit("hardswish", [node.inputs[0]])

    @handles("HardSigmoid")
    def hardsigmoid(self, node):
        alpha, beta = float(self.attr("alpha", 0.2)), float(self.attr("beta", 0.5))
        if abs(alpha - 1 / 6) > 1e-6 or abs(beta - 0.5) > 1e-6:
            self.refuse(f"has alpha {alpha:g}, beta {beta:g}; cnngraph's hardsigmoid is "
                        "relu6(x + 3) / 6 (alpha 1/6, beta 1/2)")
        self.emit("hardsigmoid", [node.inputs[0]])

    @handles("Gelu")
    def gelu(self, node):
        self.emit("gelu", [node.inputs[0]], approximate=_text(self.attr("approximate", "none")))

    @handles("Max")
    def maximum(self, node):
        if any(v.const_value is not None for v in node.inputs):
            self.refuse("takes the maximum with a constant; cnngraph's max compares computed "
                        "tensors (a bound: Clip)")
        if len(node.inputs) == 1:
            return self.alias(node.inputs[0])
        self.emit("max", list(node.inputs))

    @handles("Split")
    def split(self, node):
        """Equal parts of the channels: one channel_split layer per output."""
        shape = self.in_shape()
        axis = self.attr("axis", 0)
        parts = len(node.outputs)
        sizes = self.const(1, "split sizes", optional=True)
        sizes = list(self.attr("split", ())) if sizes is None else sizes.reshape(-1).tolist()
        if axis % len(shape) != 1 or shape[1] % parts or (sizes and len(set(sizes)) != 1):
            self.refuse(f"splits axis {axis} into {sizes or parts} parts; cnngraph's "
                        "channel_split cuts the channels into equal parts")
        for index, out in enumerate(node.outputs):
            if list(out.consumers()) or out in self.graph.outputs:
                self.emit("channel_split", [node.inputs[0]], output=out, parts=parts, index=index)

    @handles("Slice")
    def slice(self, node):
        """A slice of the channels that is one of their equal parts: channel_split."""
        shape = self.in_shape()
        starts, ends = (self.const(i, what).reshape(-1).tolist() for i, what in ((1, "starts"), (2, "ends")))
        axes = self.const(3, "axes", optional=True)
        steps = self.const(4, "steps", optional=True)
        axes = list(range(len(starts))) if axes is None else axes.reshape(-1).tolist()
        c = shape[1]
        start, end = (max(0, min(v + c if v < 0 else v, c)) for v in (starts[0], ends[0]))
        size = end - start
        if (len(axes) != 1 or axes[0] % len(shape) != 1 or (steps is not None and steps.reshape(-1).tolist() != [1])
                or size < 1 or c % size or start % size):
            self.refuse("is not a slice of the channels into equal parts; cnngraph maps those "
                        "(channel_split)")
        if size == c:
            return self.alias(node.inputs[0])
        self.emit("channel_split", [node.inputs[0]], parts=c // size, index=start // size)

    # --- small facts -------------------------------------------------------------------------------
def REGISTRY_NAMES() -> set:  # noqa: N802 - the ops this cnngraph has (helpers add some)
    from cnngraph.ops import REGISTRY

    return set(REGISTRY)


def _uncast(value, casts: list):
    """`value` before the Casts between float types that made it (appended to `casts`)."""
    while value is not None:
        cast = value.producer()
        if cast is None or cast.op_type != "Cast" or _domain(cast) or cast.attributes.get("to") is None \
                or cast.attributes["to"].value not in (1, 10, 11, 16):  # float, float16, double, bfloat16
            return value
        casts.append(cast)
        value = cast.inputs[0]
    return value


def _domain(node) -> str:
    return "" if node.domain in ("", "ai.onnx") else node.domain


def _text(value) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


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
