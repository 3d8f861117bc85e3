"""Element-wise activations and softmax: stateless, lowered to a torch function call."""
from __future__ import annotations

import importlib
import math

import numpy as np

from . import register
from .base import Attr, Call, Op, ShapeError


class _Pointwise(Op):
    """Same shape out as in, no parameters, receptive field unchanged."""

    fn = ""  # the torch function, "module.name" (imported when a network is built)
    onnx_op = None  # the ONNX op of the same meaning

    def infer(self, node, ins):
        return ins[0]

    def torch(self, node, ins):
        module, _, name = self.fn.rpartition(".")
        return Call(getattr(importlib.import_module(module), name), dict(node.attrs))

    def onnx(self, ctx, node, inputs):
        return ctx.op(type(self).onnx_op, *inputs)


@register
class ReLU(_Pointwise):
    """max(x, 0)."""

    name = "relu"
    fn = "torch.relu"
    onnx_op = "Relu"


@register
class LeakyReLU(_Pointwise):
    """x for x >= 0, negative_slope * x below."""

    name = "leaky_relu"
    attrs = {"negative_slope": Attr(0.01, "slope for negative inputs", "float")}
    fn = "torch.nn.functional.leaky_relu"

    def onnx(self, ctx, node, inputs):
        return ctx.op("LeakyRelu", *inputs, alpha=node.attrs["negative_slope"])


@register
class Sigmoid(_Pointwise):
    """1 / (1 + exp(-x))."""

    name = "sigmoid"
    fn = "torch.sigmoid"
    onnx_op = "Sigmoid"


@register
class Tanh(_Pointwise):
    """The hyperbolic tangent (LeNet-5's squashing function, unscaled)."""

    name = "tanh"
    fn = "torch.tanh"
    onnx_op = "Tanh"


@register
class GELU(_Pointwise):
    """x * Phi(x), Phi the standard normal CDF (exact: 0.5 * x * (1 + erf(x / sqrt 2))), or
    with approximate "tanh" 0.5 * x * (1 + tanh(sqrt(2 / pi) * (x + 0.044715 * x^3)))."""

    name = "gelu"
    attrs = {"approximate": Attr("none", "none: the exact erf form; tanh: its tanh "
                                 "approximation", "str", ("none", "tanh"))}
    fn = "torch.nn.functional.gelu"

    def onnx(self, ctx, node, inputs):
        """opset 20+: Gelu; before, the formula in Erf (or Tanh), Mul and Add."""
        approximate = node.attrs["approximate"]
        if ctx.opset >= 20:
            return ctx.op("Gelu", *inputs, approximate=approximate)
        x = inputs[0]

        def c(value):
            return ctx.const(np.array(value, np.float32), "c")

        if approximate == "tanh":
            cube = ctx.op("Mul", ctx.op("Mul", x, x), x)
            inner = ctx.op("Add", x, ctx.op("Mul", cube, c(0.044715)))
            core = ctx.op("Tanh", ctx.op("Mul", inner, c(math.sqrt(2 / math.pi))))
        else:
            core = ctx.op("Erf", ctx.op("Mul", x, c(1 / math.sqrt(2))))
        return ctx.op("Mul", ctx.op("Mul", x, c(0.5)), ctx.op("Add", core, c(1.0)))


@register
class Softmax(_Pointwise):
    """exp(x) normalised to sum 1 along `axis` (1 = channels / classes)."""

    name = "softmax"
    attrs = {"axis": Attr(1, "dimension to normalise over", "int", min=1, max=3)}

    def infer(self, node, ins):
        axis, rank = node.attrs["axis"], len(ins[0])
        if not 1 <= axis < rank:
            raise ShapeError(f"softmax axis {axis} is outside 1..{rank - 1} for the input "
                             f"of rank {rank} (axis 0 is the batch)")
        return ins[0]

    def torch(self, node, ins):
        from torch.nn import functional as F

        return Call(F.softmax, {"dim": node.attrs["axis"]})

    def onnx(self, ctx, node, inputs):
        return ctx.op("Softmax", *inputs, axis=node.attrs["axis"])
