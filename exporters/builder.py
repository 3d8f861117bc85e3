"""The builder an op's `onnx(ctx, node, inputs)` lowering writes into.

A lowering gets the ONNX value names of its node's inputs, emits nodes with `ctx.op(...)`,
reads its weights with `ctx.weight` / `ctx.array` (or makes new constants with `ctx.const`) and
returns the name of the value its node produces. Names stay traceable: a node's values and
ONNX nodes are named after the IR node ("layer2.0.conv1/Conv").
"""
from __future__ import annotations

import numpy as np
import onnx
from onnx import helper

from cnngraph.errors import ExportError
from cnngraph.graph import Graph, Node

from .custom_domain import DOMAIN, min_opset


class OnnxContext:
    """Collects nodes and initializers for one export; `opset` is the model's opset,
    `deform_body` the body the cnngraph.DeformConv nodes will get."""

    def __init__(self, graph: Graph, state: dict[str, np.ndarray], opset: int,
                 deform_body: str = "native"):
        self.graph, self.state, self.opset = graph, state, opset
        self.deform_body = deform_body
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: dict[str, np.ndarray] = {}  # turned into protos once, in place
        self.node: Node | None = None  # the IR node being lowered
        self._count = 0

    # --- values ----------------------------------------------------------------------------
    def _name(self, what: str) -> str:
        self._count += 1
        return f"{self.node.name}/{what}_{self._count}" if self.node else f"{what}_{self._count}"

    def op(self, op_type: str, *inputs: str | None, domain: str = "", outputs: int = 1,
           **attrs) -> str | list[str]:
        """Emit one node; None inputs are omitted optional inputs. Returns its output name(s)."""
        name = self._name(op_type)
        names = [name] if outputs == 1 else [f"{name}:{i}" for i in range(outputs)]
        node = helper.make_node(op_type, [i or "" for i in inputs], names, name=name,
                                domain=domain, **{k: v for k, v in attrs.items() if v is not None})
        while node.input and not node.input[-1]:
            node.input.pop()
        self.nodes.append(node)
        return names[0] if outputs == 1 else names

    def custom(self, op_type: str, *inputs: str | None, **attrs) -> str:
        """A node of the `cnngraph` domain (its function body is attached at the end); refused
        when the model's opset is older than that body needs."""
        need = min_opset(op_type, self.deform_body)
        if self.opset < need:
            legacy = min_opset(op_type, "legacy")
            also = (f", or with --deform-body legacy (deform_body='legacy', opset {legacy} or later)"
                    if legacy < need else "")
            raise ExportError(f"layer '{self.node.name}' ({self.node.op}): the cnngraph.{op_type} "
                              f"function body needs ONNX opset {need} or newer; export with "
                              f"--opset {need} or later{also}")
        return self.op(op_type, *inputs, domain=DOMAIN, **attrs)

    def const(self, array: np.ndarray, what: str = "const") -> str:
        name = self._name(what)
        self.initializers[name] = np.ascontiguousarray(array)
        return name

    def ints(self, values, what: str = "shape") -> str:
        return self.const(np.asarray(values, dtype=np.int64), what)

    def fill_initializers(self, graph: onnx.GraphProto) -> None:
        """Write the initializers straight into `graph` (one copy of each weight: at VGG size,
        every extra proto copy costs a second)."""
        for name, array in self.initializers.items():
            tensor = graph.initializer.add()
            tensor.name = name
            tensor.data_type = helper.np_dtype_to_tensor_dtype(array.dtype)
            tensor.dims.extend(array.shape)
            tensor.raw_data = array.tobytes()

    # --- weights ---------------------------------------------------------------------------
    def array(self, node: Node, key: str) -> np.ndarray:
        """The weight `<node>.<key>` as a float32 array (checked present before lowering)."""
        return self.state[f"{node.name}.{key}"]

    def has(self, node: Node, key: str) -> bool:
        return f"{node.name}.{key}" in self.state

    def weight(self, node: Node, key: str, array: np.ndarray | None = None) -> str:
        """The initializer named `<node>.<key>` holding the weight (or `array`, a transformed
        copy of it), for ops that use a parameter as it is stored."""
        name = f"{node.name}.{key}"
        if name not in self.initializers:
            self.initializers[name] = np.ascontiguousarray(self.state[name] if array is None else array)
        return name

    def conv(self, node: Node, x: str, pads, prefix: str = "", weight: np.ndarray | None = None,
             **overrides) -> str:
        """A Conv with the layer's stride/dilation/groups and the weights `<node>.<prefix>weight`
        (or `weight`, a transformed copy) and `<node>.<prefix>bias` when there is one (batch
        norm folding may have added it)."""
        a = node.attrs
        w = self.weight(node, prefix + "weight", weight)
        b = self.weight(node, prefix + "bias") if self.has(node, prefix + "bias") else None
        attrs = dict(strides=list(a["stride"]), pads=list(pads), dilations=list(a["dilation"]),
                     group=a.get("groups", 1))
        attrs.update(overrides)
        return self.op("Conv", x, w, b, **attrs)

    # --- facts -----------------------------------------------------------------------------
    def in_shapes(self, node: Node) -> list[tuple]:
        return [self.graph[i].shape for i in node.inputs]

    def unsupported(self, node: Node, what: str) -> None:
        raise ExportError(f"layer '{node.name}' ({node.op}): ONNX cannot express {what}")
