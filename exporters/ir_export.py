"""IR + weights -> ONNX, one lowering per op (no tracing).

The inference graph comes from the IR passes (dead layers and auxiliary heads dropped, dropout
removed, batch norm folded into the convolution before it); each remaining node is lowered by
its op's `onnx(ctx, node, inputs)` method into the builder (exporters/builder.py); the
`cnngraph` function bodies are attached; metadata records the spec and the preprocessing.
"""
from __future__ import annotations

import json
import os
from typing import Mapping

import numpy as np
import onnx
import onnx.inliner
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

from cnngraph import passes
from cnngraph.errors import ExportError
from cnngraph.graph import BATCH, Graph
from cnngraph.ops import REGISTRY

from .builder import OnnxContext
from .custom_domain import attach_functions, DEFORM_BODIES
from .opset import default_opset, ir_version_for
from .writer import save_model

IGNORED_KEYS = ("num_batches_tracked",)  # BatchNorm's step counter: not a weight
OLDEST_OPSET = 13  # Split with sizes as an input, per-axis Softmax; custom ops need 15-19


def export_onnx(graph: Graph | str | os.PathLike | dict,
                module_or_state_dict: torch.nn.Module | Mapping, path: str | os.PathLike, *,
                opset: int | None = None, dynamic_batch: bool = True, batch_size: int = 1,
                fp16: bool = False, keep_aux: bool = False, deform_body: str = "native",
                ) -> onnx.ModelProto:
    """Write `graph` with the given weights to `path` as ONNX and return the model.

    `graph` is a cnngraph Graph, or anything `cnngraph.load` takes (zoo name, spec path or
    dict). The weights are `cnngraph.build(graph)`'s state_dict (or that module). `dynamic_batch`
    False fixes the batch to `batch_size`. `fp16` stores weights and computes in float16 (inputs
    and outputs stay float32). `keep_aux` keeps training-only outputs (auxiliary heads).
    """
    if deform_body not in DEFORM_BODIES:
        raise ExportError(f"deform_body must be one of {', '.join(DEFORM_BODIES)}, got {deform_body!r}")
    given_graph = isinstance(graph, Graph)
    if not given_graph:
        graph = _load_graph(graph)
    opset = opset or default_opset()
    if not OLDEST_OPSET <= opset <= default_opset():
        raise ExportError(f"opset {opset} is outside what this exporter writes and the installed "
                          f"onnxruntime {ort.__version__} runs ({OLDEST_OPSET}..{default_opset()})")
    state = state_arrays(module_or_state_dict)
    if not (given_graph and isinstance(module_or_state_dict, torch.nn.Module)):
        check_weights(graph, state)  # a module built from the Graph given fits by construction
    model = to_onnx(graph, state, opset=opset, batch=BATCH if dynamic_batch else batch_size,
                    keep_aux=keep_aux, deform_body=deform_body)
    if fp16:
        model = to_float16(model)
    save_model(model, path)
    return model


def _load_graph(source) -> Graph:
    if not isinstance(source, (str, os.PathLike, dict)):
        raise TypeError(f"export_onnx needs a cnngraph Graph (cnngraph.load(...)), a zoo name, "
                        f"a spec path or a spec dict; got {type(source).__name__}")
    import cnngraph

    return cnngraph.load(source)


def state_arrays(weights: torch.nn.Module | Mapping) -> dict[str, np.ndarray]:
    """float32 NumPy copies of a state_dict (or a module's), BatchNorm counters left out;
    integer or boolean tensors are refused (a weight silently cast from them is not a weight)."""
    if isinstance(weights, torch.nn.Module):
        weights = weights.state_dict()
    out, not_float = {}, []
    for key, value in weights.items():
        if key.endswith(IGNORED_KEYS):
            continue
        array = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
        if not np.issubdtype(array.dtype, np.floating):
            not_float.append(f"{key} ({array.dtype})")
        out[key] = array.astype(np.float32, copy=False)
    if not_float:
        raise ExportError("the weights hold non-floating tensors: " + ", ".join(not_float)
                          + "; weights must be float16/32/64 (are these the right weights?)")
    return out


def expected_weights(graph: Graph, module: torch.nn.Module | None = None) -> dict[str, tuple]:
    """{key: shape} of `cnngraph.build(graph)`'s state_dict: of `module` when one was built
    already, else of a module on the meta device (no memory, no initialisation)."""
    if module is None:
        import cnngraph

        with torch.device("meta"):
            module = cnngraph.build(graph)
    return {k: tuple(v.shape) for k, v in module.state_dict().items() if not k.endswith(IGNORED_KEYS)}


def check_weights(graph: Graph, state: Mapping[str, np.ndarray],
                  built: torch.nn.Module | None = None) -> None:
    """One ExportError listing every missing, unexpected and mis-shaped key (`built`: a module
    freshly built from `graph`, to read the expected keys from)."""
    expected = expected_weights(graph, built)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = [f"{k} {tuple(state[k].shape)} (expected {expected[k]})"
             for k in sorted(set(expected) & set(state)) if tuple(state[k].shape) != expected[k]]
    if missing or extra or wrong:
        parts = [f"{label}: {', '.join(keys)}" for label, keys in
                 (("missing", missing), ("unexpected", extra), ("mis-shaped", wrong)) if keys]
        raise ExportError(f"the weights do not match the spec '{graph.name}' -- "
                          + "; ".join(parts) + ". Use weights trained from this spec, or none for a "
                          "random initialisation (the command line: leave out --weights; "
                          "Python: export the module cnngraph.build(graph) makes)")


def to_onnx(graph: Graph, state: dict[str, np.ndarray], *, opset: int, batch: int | str,
            keep_aux: bool = False, deform_body: str = "native") -> onnx.ModelProto:
    graph, state = passes.inference_graph(graph, state, keep_aux=keep_aux)
    ctx = OnnxContext(graph, state, opset, deform_body)
    values: dict[str, str] = {}
    graph_inputs = []
    for node in graph:
        if node.op == "input":
            values[node.name] = node.name
            graph_inputs.append(helper.make_tensor_value_info(
                node.name, TensorProto.FLOAT, [batch, *node.shape[1:]]))
            continue
        ctx.node = node
        values[node.name] = REGISTRY[node.op].onnx(ctx, node, [values[i] for i in node.inputs])
    ctx.node = None

    outputs = graph.outputs  # the passes kept the inference ones (all with keep_aux)
    renames = {}
    for out in outputs:
        value = values[out.node]
        if value in renames or any(i.name == value for i in graph_inputs):
            ctx.nodes.append(helper.make_node("Identity", [value], [out.name], name=out.name))
        else:
            renames[value] = out.name
    for node in ctx.nodes:
        node.output[:] = [renames.get(v, v) for v in node.output]
        node.input[:] = [renames.get(v, v) for v in node.input]
    graph_outputs = [helper.make_tensor_value_info(o.name, TensorProto.FLOAT,
                                                   [batch, *graph[o.node].shape[1:]])
                     for o in outputs]

    onnx_graph = helper.make_graph(ctx.nodes, graph.name, graph_inputs, graph_outputs)
    imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(onnx_graph, opset_imports=imports, ir_version=ir_version_for(opset),
                              producer_name="cnngraph", producer_version=_version())
    ctx.fill_initializers(model.graph)
    helper.set_model_props(model, metadata(graph))
    return attach_functions(model, deform_body)


def metadata(graph: Graph) -> dict[str, str]:
    """The `cnngraph.*` keys the runtime reads (docs/export.md lists them): `cnngraph.inputs`
    describes every input; a single-input model also keeps the older `input_shape` and
    `normalize` keys, which runtimes before `cnngraph.inputs` read."""
    inputs = []
    for name, shape in graph.input_shapes.items():
        entry = {"name": name, "shape": list(shape)}
        norm = graph.normalization(name)
        if norm:
            entry.update(mean=list(norm["mean"]), std=list(norm["std"]))
        inputs.append(entry)
    props = {"cnngraph.spec": json.dumps(graph.spec, default=list),
             "cnngraph.version": _version(),
             "cnngraph.input_layout": "NCHW",
             "cnngraph.inputs": json.dumps(inputs)}
    if len(inputs) == 1:
        (only,) = inputs
        props["cnngraph.input_shape"] = json.dumps(only["shape"])
        if "mean" in only:
            props["cnngraph.normalize"] = json.dumps({"mean": only["mean"], "std": only["std"]})
    if graph.meta.get("channel_order"):  # e.g. BGR for Caffe's nets; images come in RGB
        props["cnngraph.channel_order"] = graph.meta["channel_order"]
    if graph.meta.get("classes"):
        props["cnngraph.classes"] = json.dumps(list(graph.meta["classes"]))
    return props


def _version() -> str:
    import cnngraph

    return cnngraph.__version__


def to_float16(model: onnx.ModelProto, inline: bool = False) -> onnx.ModelProto:
    """float16 weights and compute, float32 inputs and outputs. The cnngraph nodes stay float32
    behind casts (onnxruntime's CPU DeformConv is float32 only), or with `inline` their bodies
    are inlined first and compute in float16 too (for the CUDA provider's tensor cores)."""
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16

    if inline:
        model = onnx.inliner.inline_local_functions(model)
    block = list(DEFAULT_OP_BLOCK_LIST) + ([] if inline else ["DeformConv", "LRNWithinChannel"])
    model = convert_float_to_float16(model, keep_io_types=True, op_block_list=block)
    sort_nodes(model.graph)  # the converter appends the input casts at the end
    # it also declares the float attributes of (inlined) Constant nodes float16 without
    # converting them; their CastLike does that at run time, so drop the wrong declarations
    floats = {n.output[0] for n in model.graph.node if n.op_type == "Constant"
              and n.attribute[0].name in ("value_float", "value_floats")}
    _replace(model.graph.value_info, [v for v in model.graph.value_info if v.name not in floats])
    return model


def sort_nodes(graph: onnx.GraphProto) -> None:
    """Put `graph`'s nodes in an order where each comes after the producers of its inputs (the
    checker requires it), keeping the given order otherwise."""
    ready = {i.name for i in graph.input} | {t.name for t in graph.initializer} | {""}
    ordered, waiting = [], list(graph.node)
    while waiting:  # a pass per level of out-of-order nodes: two for appended casts
        still = []
        for node in waiting:
            if all(i in ready for i in node.input):
                ordered.append(node)
                ready.update(node.output)
            else:
                still.append(node)
        if len(still) == len(waiting):
            raise ExportError(f"graph {graph.name}: nodes {[n.name for n in still[:5]]} wait "
                              "on values nothing produces")
        waiting = still
    _replace(graph.node, ordered)


def _replace(field, items: list) -> None:
    """Make the repeated proto `field` hold copies of `items` (taken from it: they are copied
    before the field lets go of them)."""
    copies = [type(item)() for item in items]
    for copy, item in zip(copies, items):
        copy.CopyFrom(item)
    del field[:]
    field.extend(copies)
