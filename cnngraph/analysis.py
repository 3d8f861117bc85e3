"""Checking and analysing flat nodes before any tensor exists: ops, attributes (defaults filled
in, values normalised), input counts, cycles; then, in topological order, each node's output
shape with the symbolic batch "N", its parameters, MACs, receptive field and jump.

Every problem is a SpecError naming the file:line of the layer, its full path and the fix.
"""
from __future__ import annotations

import heapq
import math

from . import limits, ops
from .errors import SpecError
from .expand import suggest
from .graph import Graph, Node
from .limits import describe
from .ops import REQUIRED, ShapeError


def error(node: Node, message: str) -> SpecError:
    """A SpecError located at `node` (its `where` is "file:line", "file" or "line N")."""
    file, line = None, None
    if node.where:
        head, _, tail = node.where.rpartition(":")
        if tail.isdigit() and head:
            file, line = head, int(tail)
        elif node.where.startswith("line "):
            line = int(node.where[5:])
        else:
            file = node.where
    return SpecError(message, file=file, line=line, path=None if node.op == "input" else node.name)


def check_node(node: Node, exprs: dict[str, str] | None = None) -> None:
    """The op exists, its attributes are known, complete and valid (stored normalised, with the
    defaults filled in), and it has an allowed number of inputs. `exprs`: the `$...` text of the
    attributes written as expressions, named in messages."""
    if not isinstance(node.op, str) or node.op not in ops.REGISTRY:
        raise error(node, f"unknown op {describe(node.op)}{suggest(str(node.op), ops.REGISTRY)}: "
                          "`cnngraph ops` lists the ops")
    op = ops.REGISTRY[node.op]
    for key in node.attrs:
        if key not in op.attrs:
            known = ", ".join(op.attrs) or "none"
            raise error(node, f"unknown attribute '{key}' for {node.op}"
                              f"{suggest(str(key), op.attrs)}; its attributes: {known}")
    attrs = {}
    for key, attr in op.attrs.items():
        if key not in node.attrs:
            if attr.default is REQUIRED:
                raise error(node, f"{node.op} needs attribute '{key}' ({attr.doc}): "
                                  f"add `{key}: ...`")
            attrs[key] = attr.normalize(attr.default)
            continue
        try:
            attrs[key] = attr.normalize(node.attrs[key])
        except ValueError as exc:
            raise error(node, f"attribute '{key}' of {node.op}: {exc}"
                              f"{_hint(node.attrs[key], (exprs or {}).get(key), attr)}") from None
    node.attrs = attrs
    n = len(node.inputs)
    if n < op.min_inputs or (op.max_inputs is not None and n > op.max_inputs):
        wanted = (str(op.min_inputs) if op.max_inputs == op.min_inputs else
                  f"at least {op.min_inputs}" if op.max_inputs is None else
                  f"{op.min_inputs} to {op.max_inputs}")
        raise error(node, f"{node.op} takes {wanted} input(s), got {n} "
                          f"({', '.join(node.inputs) or 'none'}): fix `inputs`")


def _hint(value, expr: str | None, attr) -> str:
    """Where a bad value came from, and the usual fix for a fraction an expression's `/`
    made where an integer is needed (not for a float written as one, nor a float attribute)."""
    where = f" (from '{expr}')" if expr else ""
    if expr and attr.kind != "float" and isinstance(value, float) and not value.is_integer():
        return f"{where}: use // for integer division, or int(...)"
    return where


def topological(nodes: list[Node]) -> list[Node]:
    """The nodes in an order where every node follows its inputs, as close to the spec's order
    as possible; a cycle is an error naming its layers."""
    index = {node.name: i for i, node in enumerate(nodes)}
    waiting = {node.name: len(set(node.inputs)) for node in nodes}
    users: dict[str, list[str]] = {node.name: [] for node in nodes}
    for node in nodes:
        for src in set(node.inputs):
            users[src].append(node.name)
    ready = [index[name] for name, count in waiting.items() if count == 0]
    heapq.heapify(ready)
    order = []
    while ready:
        node = nodes[heapq.heappop(ready)]
        order.append(node)
        for user in users[node.name]:
            waiting[user] -= 1
            if waiting[user] == 0:
                heapq.heappush(ready, index[user])
    if len(order) < len(nodes):
        stuck = {name for name, count in waiting.items() if count}
        cycle = _cycle(stuck, {n.name: n for n in nodes})
        first = next(n for n in nodes if n.name == cycle[0])
        shown = cycle + cycle[:1] if len(cycle) <= 12 else cycle[:10] + [
            f"... ({len(cycle)} layers)", cycle[0]]
        raise error(first, f"cycle: {' -> '.join(shown)}: a layer cannot depend on "
                           "its own output; fix the `inputs` of one of them")
    return order


def _cycle(stuck: set[str], nodes: dict[str, Node]) -> list[str]:
    """One cycle among the nodes that never became ready, in data-flow order, starting at its
    layer written first (walk inputs until a name repeats)."""
    order = {name: i for i, name in enumerate(nodes)}.__getitem__  # written position
    path: list[str] = []
    seen: set[str] = set()
    name = min(stuck, key=order)
    while name not in seen:
        path.append(name)
        seen.add(name)
        name = next(src for src in nodes[name].inputs if src in stuck)
    cycle = path[path.index(name):][::-1]
    start = cycle.index(min(cycle, key=order))
    return cycle[start:] + cycle[:start]


def annotate(graph: Graph) -> Graph:
    """Fills `shape` and `stats` (params, macs, receptive_field, jump) of every node, in order."""
    for node in graph:
        op = ops.REGISTRY[node.op]
        ins = [graph[src].shape for src in node.inputs]
        try:
            node.shape = _bounded(tuple(op.infer(node, ins)))
            params, macs = op.params(node, ins), op.macs(node, ins, node.shape)
            if params > limits.MAX_NUMEL:
                raise ShapeError(f"{params:,} parameters, more than a layer may have "
                                 f"({limits.MAX_NUMEL:,}): lower the sizes")
            window = op.window(node, ins)
        except ShapeError as exc:
            shapes = ", ".join(f"{src} {_fmt(graph[src].shape)}" for src in node.inputs)
            raise error(node, f"{exc}" + (f" [inputs: {shapes}]" if shapes else "")) from None
        field, jump = _receptive_field([graph[src].stats for src in node.inputs], window, ins)
        node.stats = {"params": params, "macs": macs, "receptive_field": field, "jump": jump}
    return graph


def _bounded(shape: tuple) -> tuple:
    """`shape` if each size is at most MAX_DIM and one sample at most MAX_NUMEL elements."""
    if any(d > limits.MAX_DIM for d in shape[1:]) or math.prod(shape[1:]) > limits.MAX_NUMEL:
        raise ShapeError(f"output {_fmt(shape)} is too large (limits: {limits.MAX_DIM:,} per "
                         f"dimension, {limits.MAX_NUMEL:,} elements per sample): lower the "
                         "sizes")
    return shape


def _receptive_field(inputs: list[dict], window, ins) -> tuple[tuple, tuple]:
    """(field, jump) of a node: the largest of its inputs', grown by its window: an effective
    kernel k with stride s adds (k-1)*jump to the field and multiplies the jump by s; "global"
    spreads the field over the whole input map. Both saturate at MAX_FIELD (a hundred strided
    layers would otherwise make numbers too large for a float)."""
    if not inputs:
        return (1, 1), (1, 1)
    if window is None and len(inputs) == 1:  # pointwise: passes through (the common case)
        return inputs[0]["receptive_field"], inputs[0]["jump"]
    field = [max(s["receptive_field"][i] for s in inputs) for i in range(2)]
    jump = [max(s["jump"][i] for s in inputs) for i in range(2)]
    if window == "global":
        if len(ins[0]) == 4:
            field = [field[i] + (ins[0][2 + i] - 1) * jump[i] for i in range(2)]
    elif window is not None:
        for i, (k, s) in enumerate(window):
            field[i] += (k - 1) * jump[i]
            jump[i] *= s
    return tuple(map(_number, field)), tuple(map(_number, jump))


def _number(x):
    """Integral floats as ints (a transposed convolution's 1/s jumps are exact in binary only
    for powers of two, hence the rounding), at most MAX_FIELD."""
    x = min(x, limits.MAX_FIELD)
    return int(round(x)) if abs(x - round(x)) < 1e-9 else x


def _fmt(shape) -> str:
    return "(" + ",".join(map(str, shape)) + ")" if shape is not None else "?"


def analyse(graph: Graph, exprs: dict[str, dict[str, str]] | None = None) -> Graph:
    """Checks every node, orders them topologically and annotates them (in place); `exprs`
    (node -> attribute -> `$...` text) makes messages name the expressions."""
    for node in graph:
        check_node(node, (exprs or {}).get(node.name))
    graph.nodes = {node.name: node for node in topological(list(graph))}
    return annotate(graph)
