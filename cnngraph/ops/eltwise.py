"""Element-wise ops beyond add and mul: the maximum and the weighted sum, Caffe's Eltwise MAX and
Eltwise SUM with coefficients (what the Caffe importer maps them to)."""
from __future__ import annotations

import math

import numpy as np

from .. import limits
from ..limits import describe
from . import register
from .base import Attr, Call, Op, ShapeError
from .tensor import fmt


def _equal_shapes(op: str, ins) -> tuple:
    for shape in ins[1:]:
        if shape != ins[0]:
            raise ShapeError(f"{op} needs equal shapes, got {fmt(ins[0])} and {fmt(shape)}: "
                             "make the channels and spatial sizes agree")
    return ins[0]


def maximum(*xs):
    """Element-wise maximum of equal-shaped tensors."""
    out = xs[0]
    for x in xs[1:]:
        out = out.maximum(x)
    return out


def weighted_add(*xs, coeffs):
    """sum of coeffs[i] * xs[i]."""
    out = xs[0] * coeffs[0]
    for x, c in zip(xs[1:], coeffs[1:]):
        out = out + x * c
    return out


@register
class Max(Op):
    """Element-wise maximum of two or more tensors of the same shape (Caffe's Eltwise MAX)."""

    name = "max"
    min_inputs, max_inputs = 2, None

    def infer(self, node, ins):
        return _equal_shapes("max", ins)

    def torch(self, node, ins):
        return Call(maximum, {})

    def onnx(self, ctx, node, inputs):
        return ctx.op("Max", *inputs)


@register
class WeightedAdd(Op):
    """sum of coeffs[i] * input[i] over two or more tensors of the same shape (Caffe's Eltwise
    SUM with coefficients, e.g. [1, -1] for a difference); the coefficients are fixed."""

    name = "weighted_add"
    attrs = {"coeffs": Attr([1.0, 1.0], "one fixed coefficient per input, finite numbers",
                            "any")}
    min_inputs, max_inputs = 2, None

    def infer(self, node, ins):
        coeffs = node.attrs["coeffs"]
        if (not isinstance(coeffs, (list, tuple)) or len(coeffs) != len(ins) or not all(
                isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c)
                and abs(c) <= limits.MAX_FLOAT for c in coeffs)):
            raise ShapeError(f"weighted_add coeffs must be {len(ins)} finite numbers, one per "
                             f"input, got {describe(coeffs)}")
        return _equal_shapes("weighted_add", ins)

    def torch(self, node, ins):
        return Call(weighted_add, {"coeffs": tuple(float(c) for c in node.attrs["coeffs"])})

    def onnx(self, ctx, node, inputs):
        out = None
        for x, c in zip(inputs, node.attrs["coeffs"]):
            term = x if c == 1 else ctx.op("Mul", x, ctx.const(np.array(c, np.float32), "coeff"))
            out = term if out is None else ctx.op("Add", out, term)
        return out
