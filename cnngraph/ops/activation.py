"""Element-wise activations (relu, relu6, clip, leaky relu, sigmoid, hard sigmoid, hard swish,
silu, tanh) and softmax: stateless, lowered to a torch function call."""
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


@register
class ReLU6(_Pointwise):
    """min(max(x, 0), 6): MobileNet v2's activation (ONNX: Clip to [0, 6])."""

    name = "relu6"
    fn = "torch.nn.functional.relu6"

    def onnx(self, ctx, node, inputs):
        return _clip(ctx, inputs[0], 0.0, 6.0)


@register
class Clip(_Pointwise):
    """min(max(x, min), max): relu6 with other bounds."""

    name = "clip"
    attrs = {"min": Attr(0.0, "lower bound", "float"),
             "max": Attr(6.0, "upper bound, >= min", "float")}
    fn = "torch.clamp"

    def infer(self, node, ins):
        if node.attrs["min"] > node.attrs["max"]:
            raise ShapeError(f"clip min {node.attrs['min']} is above max {node.attrs['max']}: "
                             "give min <= max")
        return ins[0]

    def onnx(self, ctx, node, inputs):
        return _clip(ctx, inputs[0], node.attrs["min"], node.attrs["max"])


def _clip(ctx, x, low: float, high: float):
    """ONNX Clip with its bounds as float32 scalar initializers (an fp16 export converts them
    with the weights)."""
    import numpy as np

    return ctx.op("Clip", x, ctx.const(np.array(low, np.float32), "min"),
                  ctx.const(np.array(high, np.float32), "max"))


@register
class HardSigmoid(_Pointwise):
    """relu6(x + 3) / 6: MobileNet v3's cheap sigmoid (ONNX: HardSigmoid, alpha 1/6, beta 1/2)."""

    name = "hardsigmoid"
    fn = "torch.nn.functional.hardsigmoid"

    def onnx(self, ctx, node, inputs):
        return ctx.op("HardSigmoid", inputs[0], alpha=1.0 / 6.0, beta=0.5)


@register
class HardSwish(_Pointwise):
    """x * relu6(x + 3) / 6: MobileNet v3's cheap swish (ONNX: HardSwish, opset 14)."""

    name = "hardswish"
    fn = "torch.nn.functional.hardswish"
    onnx_op = "HardSwish"


@register
class SiLU(_Pointwise):
    """x * sigmoid(x), the swish of EfficientNet (ONNX: Mul of x and Sigmoid(x))."""

    name = "silu"
    fn = "torch.nn.functional.silu"

    def onnx(self, ctx, node, inputs):
        return ctx.op("Mul", inputs[0], ctx.op("Sigmoid", inputs[0]))
