"""Graph passes for inference: plain functions that take a Graph and return a new one (the input
is never modified). Surgery keeps the topological order and rewires consumers and outputs, and
the result is re-annotated (shapes, params, MACs, receptive fields).

`inference_graph` composes them the way an exporter wants: dead layers (auxiliary heads) gone,
dropout gone, batch norm folded into the convolution before it.
"""
from __future__ import annotations

from typing import Any

from .analysis import annotate
from .errors import ExportError
from .graph import Graph, Output

FOLDABLE = ("conv2d", "conv_transpose2d", "linear")  # ops a following batch norm folds into


def _keep(graph: Graph, outputs: list[Output]) -> Graph:
    live = graph.ancestors([o.node for o in outputs])
    result = graph.copy()
    result.nodes = {n.name: n for n in result if n.name in live or n.op == "input"}
    result.outputs = [o for o in result.outputs if o.name in {k.name for k in outputs}]
    return result


def eliminate_dead_layers(graph: Graph, training: bool = False) -> Graph:
    """Only the layers the outputs active in this mode depend on (inputs always stay); the
    inactive outputs go too (in inference: the auxiliary heads)."""
    return _keep(graph, graph.active_outputs(training))


def _bypass(graph: Graph, name: str, replacement: str) -> None:
    """Removes node `name`, its consumers and outputs reading `replacement` instead (in place)."""
    del graph.nodes[name]
    for node in graph:
        node.inputs = [replacement if src == name else src for src in node.inputs]
    for output in graph.outputs:
        if output.node == name:
            output.node = replacement


TRAINING_ONLY = ("dropout", "stochastic_depth")  # the identity at inference


def remove_dropout(graph: Graph) -> Graph:
    """Every dropout and stochastic depth removed (the identity at inference), its consumers
    reading its input."""
    result = graph.copy()
    for node in list(result):
        if node.op in TRAINING_ONLY:
            _bypass(result, node.name, node.inputs[0])
    return annotate(result)


def fold_batch_norm(graph: Graph, state_dict: dict[str, Any]) -> tuple[Graph, dict[str, Any]]:
    """Each batch norm whose input is a conv2d, conv_transpose2d or linear layer used by nothing
    else (and not itself an output) is folded into that layer's weights:
    s = gamma / sqrt(running_var + eps), W' = W * s (per output channel),
    b' = (b - running_mean) * s + beta; a layer without bias gains one. Works on torch tensors
    and numpy arrays alike. Returns the new graph and a new state dict (inputs untouched)."""
    result, state = graph.copy(), dict(state_dict)
    users = result.users()
    outputs = {o.node for o in result.outputs}
    for bn in list(result):
        if bn.op != "batch_norm":
            continue
        layer = result[bn.inputs[0]]
        if layer.op not in FOLDABLE or users[layer.name] != [bn.name] or layer.name in outputs:
            continue
        gamma, beta, mean, var = (_weight(state, bn.name, key) for key in
                                  ("weight", "bias", "running_mean", "running_var"))
        scale = gamma / (var + bn.attrs["eps"]) ** 0.5
        weight = _weight(state, layer.name, "weight")
        bias = _weight(state, layer.name, "bias") if layer.attrs["bias"] else mean * 0
        state[f"{layer.name}.weight"] = _scale_outputs(layer, weight, scale)
        state[f"{layer.name}.bias"] = (bias - mean) * scale + beta
        for key in [k for k in state if k.startswith(bn.name + ".")]:
            del state[key]
        layer.attrs["bias"] = True
        _bypass(result, bn.name, layer.name)
        users = result.users()
    return annotate(result), state


def _weight(state: dict[str, Any], layer: str, key: str):
    try:
        return state[f"{layer}.{key}"]
    except KeyError:
        raise ExportError(f"the weights have no '{layer}.{key}': use the weights of a model "
                          "built from this spec") from None


def _scale_outputs(layer, weight, scale):
    """`weight` with output channel o multiplied by scale[o], in the layer's weight layout."""
    if layer.op == "conv_transpose2d":  # (in, out/groups, kh, kw)
        groups = layer.attrs["groups"]
        cin, cout_g = weight.shape[0], weight.shape[1]
        grouped = weight.reshape(groups, cin // groups, cout_g, *weight.shape[2:])
        return (grouped * scale.reshape(groups, 1, cout_g, 1, 1)).reshape(weight.shape)
    if layer.attrs.get("table") is not None:  # one (kh, kw) kernel per connection, by output
        rows = [o for o, inputs in enumerate(layer.attrs["table"]) for _ in inputs]
        return weight * scale[rows].reshape(-1, 1, 1)
    return weight * scale.reshape(-1, *[1] * (weight.ndim - 1))


def inference_graph(graph: Graph, state_dict: dict[str, Any] | None = None,
                    keep_aux: bool = False) -> tuple[Graph, dict[str, Any] | None]:
    """The graph (and weights) to export: dead layers removed (with the training-only outputs,
    unless `keep_aux`), dropout removed, and, given weights, batch norm folded."""
    graph = _keep(graph, graph.outputs if keep_aux else graph.active_outputs(False))
    graph = remove_dropout(graph)
    if state_dict is None:
        return graph, None
    return fold_batch_norm(graph, state_dict)
