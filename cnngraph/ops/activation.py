"""Element-wise activations and softmax: stateless, lowered to a torch function call."""
from __future__ import annotations

import importlib

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
