"""The fully connected layer. Initialised as torchvision's VGG and AlexNet classifiers:
weights normal(0, 0.01), biases zero."""
from __future__ import annotations

from . import register
from .base import REQUIRED, Attr, Op, ShapeError
from .tensor import fmt, need_positive


@register
class Linear(Op):
    """y = x W^T + b over a (N, F) input: (N, F) -> (N, out)."""

    name = "linear"
    attrs = {
        "out": Attr(REQUIRED, "output features", "int", min=1),
        "bias": Attr(True, "learn a bias per output feature", "bool"),
    }

    def infer(self, node, ins):
        need_positive(node, "out")
        (shape,) = ins
        if len(shape) != 2:
            raise ShapeError(f"linear needs a (N, F) input, got {fmt(shape)}: add a flatten "
                             "layer (or a global pool and a flatten) before it")
        return (shape[0], node.attrs["out"])

    def params(self, node, ins):
        out = node.attrs["out"]
        return ins[0][1] * out + (out if node.attrs["bias"] else 0)

    def macs(self, node, ins, out):
        return ins[0][1] * node.attrs["out"]

    def torch(self, node, ins):
        from torch import nn

        layer = nn.Linear(ins[0][1], node.attrs["out"], bias=node.attrs["bias"])
        nn.init.normal_(layer.weight, 0.0, 0.01)
        if layer.bias is not None:
            nn.init.zeros_(layer.bias)
        return layer

    def onnx(self, ctx, node, inputs):
        bias = ctx.weight(node, "bias") if ctx.has(node, "bias") else None
        return ctx.op("Gemm", inputs[0], ctx.weight(node, "weight"), bias, transB=1)
