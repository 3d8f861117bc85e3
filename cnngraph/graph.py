"""The IR core: a Graph of named Nodes in topological order (an explicit DAG, as in Caffe).

Everything downstream reads this and nothing else: shape inference fills `Node.shape` and
`Node.stats`, passes are plain functions Graph -> Graph, the builder lowers it to torch, the
exporter to ONNX. Shapes carry the batch as the symbol "N": (N, C, H, W) or (N, F).
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any, Iterator

from .errors import InputError

Shape = tuple  # ("N", C, H, W) or ("N", F): dim 0 is the symbolic batch
BATCH = "N"


@dataclass
class Node:
    """One layer: `name` is its full path (e.g. "layer2.0.conv1"); `inputs` name producer nodes."""

    name: str
    op: str
    inputs: list[str] = field(default_factory=list)
    attrs: dict[str, Any] = field(default_factory=dict)  # complete: defaults filled in
    shape: Shape | None = None  # output shape, after inference
    stats: dict[str, Any] = field(default_factory=dict)  # params, macs, receptive_field, jump
    where: str | None = None  # "file:line" of the spec entry that made it, for messages


@dataclass
class Output:
    """A graph output: `node` produces it; `phase` is "both", "train" or "inference"."""

    name: str
    node: str
    phase: str = "both"
    loss_weight: float = 1.0

    def active(self, training: bool) -> bool:
        return self.phase == "both" or self.phase == ("train" if training else "inference")


@dataclass
class Graph:
    """A compiled network. `spec` is the source spec (a plain dict) it was compiled from."""

    name: str
    nodes: dict[str, Node]  # in topological order
    outputs: list[Output]
    spec: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)  # classes, normalize, source file, variant
    source: str | None = None  # the file (or zoo name) it came from, for messages

    # --- structure -------------------------------------------------------------------------
    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes.values())

    def __getitem__(self, name: str) -> Node:
        return self.nodes[name]

    def __len__(self) -> int:
        return len(self.nodes)

    @property
    def inputs(self) -> list[Node]:
        return [n for n in self if n.op == "input"]

    @property
    def input_shapes(self) -> dict[str, tuple[int, ...]]:
        """Every input's shape without the batch, by name, in the spec's order."""
        return {n.name: tuple(n.shape[1:]) for n in self.inputs}

    @property
    def input_shape(self) -> tuple[int, ...]:
        """The only input's shape without the batch, e.g. (3, 224, 224); an InputError naming
        the inputs for a network with several (use `input_shapes` there)."""
        shapes = self.input_shapes
        if len(shapes) != 1:
            listed = ", ".join(f"{k} {list(v)}" for k, v in shapes.items())
            raise InputError(f"'{self.name}' has {len(shapes)} inputs ({listed}); this needs a "
                             "single-input network")
        return next(iter(shapes.values()))

    def normalization(self, name: str) -> dict[str, list[float]] | None:
        """The `meta.normalize` {mean, std} of input `name`, or None. `meta.normalize` is
        {mean, std} (for a single input) or {input name: {mean, std}} (docs/SPEC.md)."""
        norm = self.meta.get("normalize")
        if not norm:
            return None
        if set(norm) == {"mean", "std"} and not any(isinstance(v, dict) for v in norm.values()):
            return norm if len(self.inputs) == 1 else None
        return norm.get(name)

    def active_outputs(self, training: bool) -> list[Output]:
        return [o for o in self.outputs if o.active(training)]

    @property
    def num_classes(self) -> int | None:
        """Width of the main (first inference) output, when it is a (N, F) vector."""
        main = self.active_outputs(False)[0]
        shape = self.nodes[main.node].shape
        return shape[1] if shape is not None and len(shape) == 2 else None

    def users(self) -> dict[str, list[str]]:
        """Consumer names of every node."""
        out: dict[str, list[str]] = {n: [] for n in self.nodes}
        for node in self:
            for src in node.inputs:
                out[src].append(node.name)
        return out

    def copy(self) -> "Graph":
        return copy.deepcopy(self)

    # --- totals ----------------------------------------------------------------------------
    @property
    def params(self) -> int:
        return sum(n.stats.get("params", 0) for n in self)

    @property
    def macs(self) -> int:
        return sum(n.stats.get("macs", 0) for n in self)

    def params_for(self, training: bool) -> int:
        """Parameters of the layers an active output depends on (e.g. without aux heads)."""
        live = self.ancestors([o.node for o in self.active_outputs(training)])
        return sum(self.nodes[n].stats.get("params", 0) for n in live)

    def macs_for(self, training: bool) -> int:
        """Multiply-accumulates per sample of the layers an active output depends on."""
        live = self.ancestors([o.node for o in self.active_outputs(training)])
        return sum(self.nodes[n].stats.get("macs", 0) for n in live)

    def ancestors(self, names: list[str]) -> set[str]:
        seen: set[str] = set()
        stack = list(names)
        while stack:
            name = stack.pop()
            if name not in seen:
                seen.add(name)
                stack.extend(self.nodes[name].inputs)
        return seen
