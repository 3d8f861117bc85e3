"""The `cnngraph` ONNX domain, version 1: two custom ops, their schemas and function bodies.

- `cnngraph.DeformConv(X, W, offset, [B], [mask])` -- deformable convolution v1 (no mask) and v2
  (mask); inputs, attributes (strides, pads, dilations, group, offset_group) and semantics are
  those of the standard `DeformConv` (opset 19).
- `cnngraph.LRNWithinChannel(X)` -- Caffe's WITHIN_CHANNEL LRN, attributes kernel_shape
  (size, size), size odd, alpha, beta, bias (default 1, Caffe's value):
  `y = x / (bias + alpha/size^2 * sum_{size x size window, zero padded} x^2) ^ beta`.

The schemas are registered with onnx (so the checker and shape inference know the nodes); the
bodies are FunctionProtos written with onnxscript and attached to each model, so a stock
onnxruntime runs the file (it inlines model-local functions before placing nodes on an EP).
A function body's opset must equal the model's, so bodies are generated per opset.

Two deformable bodies: "native" (the standard DeformConv) and "legacy" (GridSample + MatMul,
opset-16 ops, for runtimes without DeformConv). The legacy body needs B and mask present:
`complete_deform_inputs` adds zeros / ones for nodes without them.
"""
from __future__ import annotations

from typing import Optional, Sequence

import onnx
from onnx import helper
from onnx.defs import OpSchema
from onnxscript import FLOAT, script
from onnxscript import opset19 as op
from onnxscript.values import Opset

DOMAIN = "cnngraph"
VERSION = 1
MIN_OPSET = 19  # every body: DeformConv
DEFORM_BODIES = ("native", "legacy")
#: The oldest opset each body is written in: DeformConv (19) for the native deformable body,
#: GridSample (16) for the legacy one, CastLike (15) for the LRN.
BODY_OPSETS = {("DeformConv", "native"): 19, ("DeformConv", "legacy"): 16,
               ("LRNWithinChannel", "native"): 15, ("LRNWithinChannel", "legacy"): 15}

_cg = Opset(DOMAIN, VERSION)
_FLOAT_TYPES = ["tensor(float16)", "tensor(float)", "tensor(double)", "tensor(bfloat16)"]


# --- schemas -----------------------------------------------------------------------------------
def _same_as_input(ctx) -> None:
    ctx.set_output_type(0, ctx.get_input_type(0))


def _deform_conv_shape(ctx) -> None:
    """(N, M, oH, oW): N from X, M from W, the output grid from the offset tensor."""
    x, w, off = (ctx.get_input_type(i).tensor_type for i in range(3))
    out = onnx.TypeProto()
    out.tensor_type.elem_type = x.elem_type
    if x.HasField("shape") and w.HasField("shape") and off.HasField("shape"):
        dims = [x.shape.dim[0], w.shape.dim[0], off.shape.dim[2], off.shape.dim[3]]
        out.tensor_type.shape.dim.extend(dims)
    ctx.set_output_type(0, out)


def _param(name: str, doc: str, optional: bool = False) -> OpSchema.FormalParameter:
    option = OpSchema.FormalParameterOption.Optional if optional else OpSchema.FormalParameterOption.Single
    return OpSchema.FormalParameter(name, "T", doc, param_option=option)


def _attr(name: str, kind: OpSchema.AttrType, doc: str, required: bool = False) -> OpSchema.Attribute:
    return OpSchema.Attribute(name, kind, doc, required=required)


def _schemas() -> list[OpSchema]:
    ints, int_, float_ = OpSchema.AttrType.INTS, OpSchema.AttrType.INT, OpSchema.AttrType.FLOAT
    deform = OpSchema(
        "DeformConv", DOMAIN, VERSION,
        "Deformable convolution (DCN v1; v2 with mask); the semantics of the standard DeformConv.",
        inputs=[_param("X", "input (N, C, H, W)"), _param("W", "weight (M, C/group, kH, kW)"),
                _param("offset", "offsets (N, offset_group*2*kH*kW, oH, oW), (dy, dx) pairs"),
                _param("B", "bias (M)", optional=True),
                _param("mask", "modulation (N, offset_group*kH*kW, oH, oW)", optional=True)],
        outputs=[_param("Y", "output (N, M, oH, oW)")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attr("strides", ints, "stride (h, w), default 1"),
                    _attr("pads", ints, "padding (top, left, bottom, right), default 0"),
                    _attr("dilations", ints, "dilation (h, w), default 1"),
                    _attr("group", int_, "weight groups, default 1"),
                    _attr("offset_group", int_, "offset groups, default 1")])
    deform.set_type_and_shape_inference_function(_deform_conv_shape)
    lrn = OpSchema(
        "LRNWithinChannel", DOMAIN, VERSION,
        "Caffe WITHIN_CHANNEL LRN: x / (bias + alpha/size^2 * sum of x^2 over a zero-padded "
        "size x size window of the same channel)^beta; kernel_shape = (size, size), size odd.",
        inputs=[_param("X", "input (N, C, H, W)")],
        outputs=[_param("Y", "output, shape of X")],
        type_constraints=[("T", _FLOAT_TYPES, "float tensors")],
        attributes=[_attr("kernel_shape", ints, "window (size, size), size odd", required=True),
                    _attr("alpha", float_, "scale", required=True),
                    _attr("beta", float_, "exponent", required=True),
                    OpSchema.Attribute("bias", helper.make_attribute("bias", 1.0),
                                       "additive constant (Caffe: 1)")])
    lrn.set_type_and_shape_inference_function(_same_as_input)
    return [deform, lrn]


def register_schemas() -> None:
    """Make the `cnngraph` ops known to onnx's checker and shape inference (idempotent)."""
    for schema in _schemas():
        if not onnx.defs.has(schema.name, schema.domain):
            onnx.defs.register_schema(schema)


register_schemas()


# --- function bodies ---------------------------------------------------------------------------
@script(_cg, default_opset=op)
def DeformConv(X: FLOAT, W: FLOAT, offset: FLOAT, B: Optional[FLOAT], mask: Optional[FLOAT],
               strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
               dilations: Sequence[int] = (1, 1), group: int = 1, offset_group: int = 1) -> FLOAT:
    """The standard op (opset 19+): runtimes with a native kernel run exactly that."""
    return op.DeformConv(X, W, offset, B, mask, strides=strides, pads=pads, dilations=dilations,
                         group=group, offset_group=offset_group)


@script(_cg, default_opset=op)
def DeformConvLegacy(X: FLOAT, W: FLOAT, offset: FLOAT, B: FLOAT, mask: FLOAT,
                     strides: Sequence[int] = (1, 1), pads: Sequence[int] = (0, 0, 0, 0),
                     dilations: Sequence[int] = (1, 1), group: int = 1,
                     offset_group: int = 1) -> FLOAT:
    """Bilinear sampling with GridSample (zeros outside, as DCN), then a grouped MatMul.

    Everything attribute-dependent is a runtime tensor (functions cannot compute with
    attributes); a runtime constant-folds it once. Sample point of output (oy, ox), kernel tap
    (i, j): y = oy*stride_h - pad_top + i*dil_h + dy, x likewise; GridSample (align_corners=0)
    wants (2*y + 1)/H - 1.
    """
    stride = op.Constant(value_ints=strides)
    pad = op.Constant(value_ints=pads)
    dilation = op.Constant(value_ints=dilations)
    one = op.Constant(value_ints=[1])
    minus_one = op.Constant(value_ints=[-1])
    groups = op.Reshape(op.Constant(value_int=group), one)
    offset_groups = op.Reshape(op.Constant(value_int=offset_group), one)
    n = op.Shape(offset, start=0, end=1)
    channels = op.Shape(X, start=1, end=2)
    height = op.Shape(X, start=2, end=3)
    width = op.Shape(X, start=3, end=4)
    kh = op.Shape(W, start=2, end=3)
    kw = op.Shape(W, start=3, end=4)
    oh = op.Shape(offset, start=2, end=3)
    ow = op.Shape(offset, start=3, end=4)
    taps = op.Mul(kh, kw)

    # integer base positions: rows (kh, 1, oh, 1), columns (1, kw, 1, ow)
    tap_i = op.Mul(op.Range(0, op.Squeeze(kh), 1), op.Gather(dilation, 0))
    tap_j = op.Mul(op.Range(0, op.Squeeze(kw), 1), op.Gather(dilation, 1))
    out_y = op.Sub(op.Mul(op.Range(0, op.Squeeze(oh), 1), op.Gather(stride, 0)), op.Gather(pad, 0))
    out_x = op.Sub(op.Mul(op.Range(0, op.Squeeze(ow), 1), op.Gather(stride, 1)), op.Gather(pad, 1))
    base_y = op.Add(op.Reshape(tap_i, op.Constant(value_ints=[-1, 1, 1, 1])),
                    op.Reshape(out_y, op.Constant(value_ints=[1, 1, -1, 1])))
    base_x = op.Add(op.Reshape(tap_j, op.Constant(value_ints=[1, -1, 1, 1])),
                    op.Reshape(out_x, op.Constant(value_ints=[1, 1, 1, -1])))

    # offsets as (N, G, kh, kw, 2, oh, ow): channel g*2*K + 2*k + (0: dy, 1: dx)
    split = op.Reshape(offset, op.Concat(n, offset_groups, kh, kw, op.Constant(value_ints=[2]),
                                         oh, ow, axis=0))
    y = op.Add(op.Gather(split, 0, axis=4), op.CastLike(base_y, X))
    x = op.Add(op.Gather(split, 1, axis=4), op.CastLike(base_x, X))
    two = op.CastLike(2, X)
    unit = op.CastLike(1, X)
    grid_y = op.Sub(op.Div(op.Add(op.Mul(y, two), unit), op.CastLike(height, X)), unit)
    grid_x = op.Sub(op.Div(op.Add(op.Mul(x, two), unit), op.CastLike(width, X)), unit)
    grid = op.Concat(op.Unsqueeze(grid_x, -1), op.Unsqueeze(grid_y, -1), axis=-1)
    grid = op.Reshape(grid, op.Concat(minus_one, op.Mul(taps, oh), ow,
                                      op.Constant(value_ints=[2]), axis=0))

    # sample each offset group's channels: (N*G, C/G, K*oh, ow), modulated by the mask
    planes = op.Reshape(X, op.Concat(minus_one, op.Div(channels, offset_groups), height, width,
                                     axis=0))
    sampled = op.GridSample(planes, grid)
    sampled = op.Mul(sampled, op.Reshape(mask, op.Concat(minus_one, one, op.Mul(taps, oh), ow,
                                                         axis=0)))

    # columns (N, group, C/group*K, oh*ow) times weights (group, M/group, C/group*K)
    depth = op.Mul(op.Div(channels, groups), taps)
    columns = op.Reshape(sampled, op.Concat(n, groups, depth, minus_one, axis=0))
    weights = op.Reshape(W, op.Concat(groups, minus_one, depth, axis=0))
    out = op.MatMul(weights, columns)
    out = op.Reshape(out, op.Concat(n, minus_one, oh, ow, axis=0))
    return op.Add(out, op.Reshape(B, op.Concat(minus_one, one, one, axis=0)))


@script(_cg, default_opset=op)
def LRNWithinChannel(X: FLOAT, kernel_shape: Sequence[int], alpha: float, beta: float,
                     bias: float = 1.0) -> FLOAT:
    """x / exp(beta * log d), d = bias + alpha * AveragePool(x^2) over the zero-padded window.

    AveragePool with count_include_pad divides by size^2 at the borders too, which is Caffe's
    alpha/size^2 with zero padding; SAME_UPPER pads (size-1)/2 on each side of an odd window.
    The window is the node's kernel_shape attribute because a function body cannot build one
    from an int. exp(beta * log d) is about 10x faster than Pow on onnxruntime's CPU provider.
    """
    sums = op.AveragePool(op.Mul(X, X), kernel_shape=kernel_shape, auto_pad="SAME_UPPER",
                          count_include_pad=1)
    scale = op.CastLike(op.Constant(value_float=alpha), X)
    shift = op.CastLike(op.Constant(value_float=bias), X)
    power = op.CastLike(op.Constant(value_float=beta), X)  # each constant cast at once, so
    denom = op.Add(op.Mul(sums, scale), shift)                # a float16 conversion types it
    return op.Div(X, op.Exp(op.Mul(op.Log(denom), power)))


def min_opset(op_type: str, deform_body: str = "native") -> int:
    """The oldest opset the body of `op_type` can be written in."""
    return BODY_OPSETS[op_type, deform_body]


def functions(opset: int, deform_body: str = "native",
              names: Sequence[str] = ("DeformConv", "LRNWithinChannel")) -> list[onnx.FunctionProto]:
    """The FunctionProtos of the domain's ops `names`, their default-domain import set to `opset`.

    The bodies use ops whose semantics did not change between their oldest opset and the newest
    one, so only the import is rewritten (the checker wants it equal to the model's). The
    value_info onnxscript derives from the FLOAT annotations is dropped: the bodies serve every
    float type and rank-4 tensors, not the rank-0 floats it declares.
    """
    if deform_body not in DEFORM_BODIES:
        raise ValueError(f"deform_body must be one of {', '.join(DEFORM_BODIES)}, got {deform_body!r}")
    for name in names:
        if opset < min_opset(name, deform_body):
            raise ValueError(f"the cnngraph.{name} body needs opset {min_opset(name, deform_body)} "
                             f"or newer, got {opset}")
    deform = (DeformConv if deform_body == "native" else DeformConvLegacy).to_function_proto()
    deform.name = "DeformConv"
    out = []
    for proto in (deform, LRNWithinChannel.to_function_proto()):
        if proto.name not in names:
            continue
        del proto.opset_import[:]
        del proto.value_info[:]
        proto.opset_import.extend([helper.make_opsetid("", opset)])
        out.append(proto)
    return out


def used_ops(model: onnx.ModelProto) -> set[str]:
    return {n.op_type for n in model.graph.node if n.domain == DOMAIN}


def attach_functions(model: onnx.ModelProto, deform_body: str = "native") -> onnx.ModelProto:
    """Attach the bodies of the cnngraph ops the graph uses (in place), import the domain,
    and for the legacy deformable body give every DeformConv node explicit B and mask."""
    opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    used = used_ops(model)
    if not used:
        return model
    if deform_body == "legacy" and "DeformConv" in used:
        complete_deform_inputs(model)
    kept = [f for f in model.functions if f.domain != DOMAIN]
    del model.functions[:]
    model.functions.extend(kept + functions(opset, deform_body, sorted(used)))
    if not any(o.domain == DOMAIN for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid(DOMAIN, VERSION))
    return model


def complete_deform_inputs(model: onnx.ModelProto) -> None:
    """Give each cnngraph.DeformConv node without B a zero bias and without mask a ones mask,
    computed in the graph from W's and offset's shapes (a runtime folds them once)."""
    graph = model.graph
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.domain == DOMAIN and node.op_type == "DeformConv":
            inputs = list(node.input) + [""] * (5 - len(node.input))
            x, w, offset = inputs[:3]
            stem = (node.name or node.output[0]) + "/legacy"
            if not inputs[3]:
                inputs[3] = stem + "_bias"
                nodes += [helper.make_node("Shape", [w], [stem + "_m"], start=0, end=1),
                          helper.make_node("ConstantOfShape", [stem + "_m"], [stem + "_zeros"]),
                          helper.make_node("CastLike", [stem + "_zeros", x], [inputs[3]])]
            if not inputs[4]:
                inputs[4] = stem + "_mask"
                halve = helper.make_tensor(stem + "_halve", onnx.TensorProto.INT64, [4], [1, 2, 1, 1])
                nodes += [helper.make_node("Constant", [], [stem + "_halve"], value=halve),
                          helper.make_node("Shape", [offset], [stem + "_os"]),
                          helper.make_node("Div", [stem + "_os", stem + "_halve"], [stem + "_ms"]),
                          helper.make_node("ConstantOfShape", [stem + "_ms"], [stem + "_ones"],
                                           value=helper.make_tensor("", 1, [1], [1.0])),
                          helper.make_node("CastLike", [stem + "_ones", x], [inputs[4]])]
            del node.input[:]
            node.input.extend(inputs)
        nodes.append(node)
    del graph.node[:]
    graph.node.extend(nodes)
