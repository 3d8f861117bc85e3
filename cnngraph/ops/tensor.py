"""Structural ops: the graph input, identity, dropout, stochastic depth, flatten, element-wise
add/mul (broadcasting), concat and upsample -- plus the shape helpers the other op families share (shape formatting, rank checks)."""
from __future__ import annotations

import math

import numpy as np

from .. import limits
from ..graph import BATCH, Node, Shape
from ..limits import describe
from . import register
from .base import REQUIRED, Attr, Call, Op, ShapeError


# --- helpers shared by the op families -------------------------------------------------------
def fmt(shape: Shape) -> str:
    """A shape as messages print it: (N,64,56,56)."""
    return "(" + ",".join(str(d) for d in shape) + ")"


def need_map(op: str, shape: Shape) -> tuple[int, int, int]:
    """(C, H, W) of a feature-map input; a ShapeError for anything else."""
    if len(shape) != 4:
        raise ShapeError(f"{op} needs a (N, C, H, W) feature map, got {fmt(shape)}: "
                         "it cannot follow a flatten or linear layer")
    return shape[1], shape[2], shape[3]


def need_positive(node: Node, *names: str) -> None:
    """Sizes that must be >= 1 (kernel, stride, dilation, out, groups ...)."""
    for name in names:
        value = node.attrs[name]
        if value is None:
            continue
        values = value if isinstance(value, tuple) else (value,)
        if any(v < 1 for v in values):
            raise ShapeError(f"{name} must be at least 1, got {_plain(value)}")


def _plain(value) -> str:
    if isinstance(value, tuple):
        return str(value[0]) if len(set(value)) == 1 else "x".join(str(v) for v in value)
    return str(value)


def numel(shape: Shape) -> int:
    """Elements of one sample (the batch excluded)."""
    return math.prod(shape[1:])


# --- ops --------------------------------------------------------------------------------------
@register
class Input(Op):
    """The network input: (N, C, H, W) for images or (N, F) for vectors; the batch is symbolic.
    The builder turns it into an argument of `forward`, named after the node."""

    name = "input"
    attrs = {"shape": Attr(REQUIRED, "[C, H, W] or [F], without the batch", "any")}
    min_inputs = max_inputs = 0

    def infer(self, node, ins):
        shape = node.attrs["shape"]
        if (not isinstance(shape, (list, tuple)) or len(shape) not in (1, 3)
                or any(isinstance(d, bool) or not isinstance(d, int) or d < 1 for d in shape)):
            raise ShapeError(f"input shape must be [C, H, W] or [F] of positive integers, "
                             f"got {describe(shape)}")
        return (BATCH, *shape)


@register
class Identity(Op):
    """Passes its input through unchanged (a named tap point; costs nothing)."""

    name = "identity"

    def infer(self, node, ins):
        return ins[0]

    def torch(self, node, ins):
        from torch import nn

        return nn.Identity()

    def onnx(self, ctx, node, inputs):
        return inputs[0]  # a name, not a node


@register
class Dropout(Op):
    """Zeroes each element with probability p in training and rescales by 1/(1-p); identity in
    inference (removed by the dropout-removal pass)."""

    name = "dropout"
    attrs = {"p": Attr(0.5, "probability of zeroing an element, in [0, 1)", "float", min=0,
                       max=1)}

    def infer(self, node, ins):
        if not 0.0 <= node.attrs["p"] < 1.0:
            raise ShapeError(f"dropout p must be in [0, 1), got {node.attrs['p']}")
        return ins[0]

    def torch(self, node, ins):
        from torch import nn

        return nn.Dropout(node.attrs["p"])

    def onnx(self, ctx, node, inputs):
        return inputs[0]  # inference: the identity (the passes remove the node anyway)


@register
class StochasticDepth(Op):
    """torchvision.ops.StochasticDepth: in training, drops the whole residual branch of a sample
    ("row") or of the batch ("batch") with probability p and scales survivors by 1/(1-p); the
    identity in inference (removed by the same pass as dropout)."""

    name = "stochastic_depth"
    attrs = {
        "p": Attr(0.0, "probability of dropping the branch, in [0, 1]", "float", min=0, max=1),
        "mode": Attr("row", "row: one draw per sample; batch: one draw for the batch", "str",
                     ("row", "batch")),
    }

    def infer(self, node, ins):
        return ins[0]

    def torch(self, node, ins):
        from .modules import StochasticDepth as Module

        return Module(node.attrs["p"], node.attrs["mode"])

    def onnx(self, ctx, node, inputs):
        return inputs[0]  # inference: the identity (the passes remove the node anyway)


@register
class Flatten(Op):
    """Flattens every dimension from `start_dim` on into one: (N, C, H, W) -> (N, C*H*W).
    Over a spatial map its receptive field is the whole input."""

    name = "flatten"
    attrs = {"start_dim": Attr(1, "first dimension to flatten (1 = everything but the batch)",
                               "int", min=1, max=3)}

    def infer(self, node, ins):
        (shape,) = ins
        start = node.attrs["start_dim"]
        if not 1 <= start < len(shape):
            raise ShapeError(f"flatten start_dim {start} is outside 1..{len(shape) - 1} "
                             f"for the input {fmt(shape)}")
        return (*shape[:start], math.prod(shape[start:]))

    def window(self, node, ins):
        return "global" if len(ins[0]) == 4 else None

    def torch(self, node, ins):
        import torch

        return Call(torch.flatten, {"start_dim": node.attrs["start_dim"]})

    def onnx(self, ctx, node, inputs):
        start = node.attrs["start_dim"]
        if start == 1:
            return ctx.op("Flatten", inputs[0], axis=1)
        return ctx.op("Reshape", inputs[0], ctx.ints([0] * start + [-1]))


def broadcast(op: str, ins: list[Shape]) -> Shape:
    """The shape NumPy's (and ONNX's) broadcasting gives `ins`: each dimension equal or 1.
    Every tensor here has the batch first, so the ranks must agree (a shorter shape, aligned
    at the right as NumPy does, would put its batch against a channel or row)."""
    out = ins[0]
    for shape in ins[1:]:
        if len(shape) != len(out):
            raise ShapeError(f"{op} needs inputs of the same rank, got {fmt(out)} and "
                             f"{fmt(shape)}: each has the batch first; flatten both, or keep "
                             "both (N, C, H, W) (a per-channel factor is (N, C, 1, 1))")
        for axis, (x, y) in enumerate(zip(out, shape)):
            if x != y and 1 not in (x, y):
                raise ShapeError(
                    f"{op} needs shapes that broadcast, got {fmt(out)} and {fmt(shape)} "
                    f"(dimension {axis}: {x} against {y}): make each dimension equal or 1 "
                    "(e.g. a 1x1 projection with the right stride on one branch, or a "
                    "global pooling for a per-channel factor)")
        out = tuple(y if x == 1 else x for x, y in zip(out, shape))
    return out


class _Elementwise(Op):
    """Two or more tensors folded pairwise by `fn` (ONNX: `onnx_op`) with NumPy broadcasting:
    squeeze-and-excitation multiplies an (N, C, 1, 1) gate into an (N, C, H, W) map."""

    min_inputs, max_inputs = 2, None
    fn: str  # the name of the function in modules.py
    onnx_op: str

    def infer(self, node, ins):
        return broadcast(self.name, ins)

    def torch(self, node, ins):
        from . import modules

        return Call(getattr(modules, self.fn), {})

    def onnx(self, ctx, node, inputs):
        out = inputs[0]
        for x in inputs[1:]:
            out = ctx.op(self.onnx_op, out, x)
        return out


@register
class Add(_Elementwise):
    """Element-wise sum of two or more tensors that broadcast (residual connections)."""

    name = "add"
    fn = "add"
    onnx_op = "Add"


@register
class Mul(_Elementwise):
    """Element-wise product of two or more tensors that broadcast (gating, excitation)."""

    name = "mul"
    fn = "mul"
    onnx_op = "Mul"


@register
class Concat(Op):
    """Concatenation along `axis` (1 = channels, as in Inception and DenseNet); every other
    dimension must agree."""

    name = "concat"
    attrs = {"axis": Attr(1, "dimension to concatenate along (1 = channels)", "int", min=1,
                          max=3)}
    min_inputs, max_inputs = 2, None

    def infer(self, node, ins):
        first, rank = ins[0], len(ins[0])
        axis = node.attrs["axis"]
        if not 1 <= axis < rank:
            raise ShapeError(f"concat axis {axis} is outside 1..{rank - 1} for inputs of rank "
                             f"{rank} (axis 0 is the batch)")
        for shape in ins[1:]:
            if len(shape) != rank or any(a != b for i, (a, b) in enumerate(zip(first, shape))
                                         if i != axis):
                raise ShapeError(f"concat along axis {axis} needs equal sizes in the other "
                                 f"dimensions, got {fmt(first)} and {fmt(shape)}: make the "
                                 "branches' spatial sizes agree (stride, padding, pooling)")
        return (*first[:axis], sum(s[axis] for s in ins), *first[axis + 1:])

    def torch(self, node, ins):
        from .modules import concat

        return Call(concat, {"dim": node.attrs["axis"]})

    def onnx(self, ctx, node, inputs):
        return ctx.op("Concat", *inputs, axis=node.attrs["axis"])


def upsample_scale(node: Node) -> tuple[float, float]:
    """(sh, sw) from the `scale` attribute: a number or [sh, sw]."""
    scale = node.attrs["scale"]
    values = scale if isinstance(scale, (list, tuple)) else (scale, scale)
    if (len(values) != 2 or any(isinstance(v, bool) or not isinstance(v, (int, float))
                                or not 0 < v <= limits.MAX_SIZE for v in values)):
        raise ShapeError(f"upsample scale must be a number in (0, {limits.MAX_SIZE:,}] or "
                         f"[sh, sw], got {describe(scale)}")
    return values[0], values[1]


@register
class Upsample(Op):
    """Resizes a feature map by `scale` (output size floor(H*sh) x floor(W*sw)), nearest or
    bilinear: "resize then convolve" as an alternative to transposed convolution."""

    name = "upsample"
    attrs = {
        "scale": Attr(2, "scale factor: a number, or [sh, sw]", "any"),
        "mode": Attr("nearest", "interpolation", "str", ("nearest", "bilinear")),
        "align_corners": Attr(False, "bilinear only: align the corner pixels' centres", "bool"),
    }

    def infer(self, node, ins):
        c, h, w = need_map("upsample", ins[0])
        sh, sw = upsample_scale(node)
        oh, ow = math.floor(h * sh), math.floor(w * sw)
        if oh < 1 or ow < 1:
            raise ShapeError(f"upsample scale {sh}x{sw} turns the {h}x{w} input into {oh}x{ow}: "
                             "use a larger scale")
        return (ins[0][0], c, oh, ow)

    def window(self, node, ins):
        sh, sw = upsample_scale(node)
        return ((1, 1 / sh), (1, 1 / sw))

    def torch(self, node, ins):
        from torch.nn import functional as F

        mode = node.attrs["mode"]
        return Call(F.interpolate, {
            "scale_factor": upsample_scale(node), "mode": mode,
            "align_corners": node.attrs["align_corners"] if mode == "bilinear" else None})

    def onnx(self, ctx, node, inputs):
        """Resize with the same scale and sampling as F.interpolate(scale_factor=...): nearest
        takes floor(dst / scale); bilinear maps (dst + 0.5) / scale - 0.5 (half_pixel), or
        the corners onto each other (align_corners)."""
        sh, sw = upsample_scale(node)
        scales = ctx.const(np.array([1, 1, sh, sw], np.float32), "scales")
        if node.attrs["mode"] == "nearest":
            return ctx.op("Resize", inputs[0], None, scales, mode="nearest",
                          coordinate_transformation_mode="asymmetric", nearest_mode="floor")
        transform = "align_corners" if node.attrs["align_corners"] else "half_pixel"
        return ctx.op("Resize", inputs[0], None, scales, mode="linear",
                      coordinate_transformation_mode=transform)
