"""Normalisation: batch norm (weight 1, bias 0 at start, as torchvision), local response
normalisation (AlexNet's across-channels LRN and Caffe's within-channel variant, from
`custom_ops`), ConvNeXt's layer norm over channels and its per-channel layer scale."""
from __future__ import annotations

import numpy as np

from .. import limits
from . import register
from .base import Attr, Op, ShapeError
from .tensor import fmt, need_map, need_positive


@register
class BatchNorm(Op):
    """Batch normalisation over the channels of a (N, C, H, W) map or the features of a (N, F)
    vector: a learned scale and shift per channel (2*C parameters; running statistics are
    buffers, not parameters)."""

    name = "batch_norm"
    attrs = {
        "eps": Attr(1e-5, "added to the variance", "float", positive=True),
        "momentum": Attr(0.1, "running-statistics update rate", "float", min=0, max=1),
    }

    def infer(self, node, ins):
        (shape,) = ins
        if len(shape) not in (2, 4):
            raise ShapeError(f"batch_norm needs a (N, C, H, W) or (N, F) input, got {fmt(shape)}")
        return shape

    def params(self, node, ins):
        return 2 * ins[0][1]

    def torch(self, node, ins):
        from torch import nn

        kind = nn.BatchNorm2d if len(ins[0]) == 4 else nn.BatchNorm1d
        return kind(ins[0][1], eps=node.attrs["eps"], momentum=node.attrs["momentum"])

    def onnx(self, ctx, node, inputs):
        """A batch norm not folded into a convolution (e.g. DenseNet's BN-ReLU-conv order)."""
        keys = ("weight", "bias", "running_mean", "running_var")
        return ctx.op("BatchNormalization", inputs[0], *(ctx.weight(node, k) for k in keys),
                      epsilon=node.attrs["eps"])


@register
class LRN(Op):
    """Local response normalisation. across_channels (AlexNet, Caffe, PyTorch, ONNX):
    y = x / (k + alpha/n * sum of x^2 over n neighbouring channels)^beta. within_channel (Caffe):
    y = x / (k + alpha/n^2 * sum of x^2 over an n x n window, zero-padded)^beta, n odd (Caffe: k=1).
    Its receptive field: within_channel grows it by the n x n window."""

    name = "lrn"
    attrs = {
        "size": Attr(5, "window: channels (across) or n x n pixels (within, odd)", "int", min=1,
                     max=limits.MAX_SIZE),
        "alpha": Attr(1e-4, "scale of the sum of squares (divided by the window size)", "float",
                      positive=True),
        "beta": Attr(0.75, "exponent", "float", positive=True),
        "k": Attr(1.0, "additive constant (Caffe's within_channel: 1)", "float", positive=True),
        "region": Attr("across_channels", "where the window lies", "str",
                       ("across_channels", "within_channel")),
    }

    def infer(self, node, ins):
        need_positive(node, "size")
        (shape,) = ins
        if len(shape) != 4:
            raise ShapeError(f"lrn needs a (N, C, H, W) feature map, got {fmt(shape)}")
        if node.attrs["region"] == "within_channel" and node.attrs["size"] % 2 == 0:
            n = node.attrs["size"]
            raise ShapeError(f"within_channel lrn needs an odd size (a window centred on each "
                             f"pixel), got {n}; use size {n - 1} or {n + 1}")
        return shape

    def window(self, node, ins):
        if node.attrs["region"] == "within_channel":
            n = node.attrs["size"]
            return ((n, 1), (n, 1))
        return None

    def torch(self, node, ins):
        from custom_ops import LocalResponseNorm

        a = node.attrs
        return LocalResponseNorm(a["size"], a["alpha"], a["beta"], a["k"], a["region"])

    def onnx(self, ctx, node, inputs):
        """across_channels: the standard LRN, same formula and parameters (odd sizes: ONNX
        centres an even window one channel away from PyTorch's); within_channel: the custom
        cnngraph.LRNWithinChannel, k as its bias (Caffe's is 1)."""
        a = node.attrs
        if a["region"] == "within_channel":
            return ctx.custom("LRNWithinChannel", inputs[0], kernel_shape=[a["size"]] * 2,
                              alpha=a["alpha"], beta=a["beta"], bias=a["k"])
        if a["size"] % 2 == 0:
            ctx.unsupported(node, "an even across-channel LRN size (ONNX LRN centres the window "
                            "one channel away from PyTorch's); use an odd size")
        return ctx.op("LRN", inputs[0], size=a["size"], alpha=a["alpha"], beta=a["beta"],
                      bias=a["k"])


@register
class LayerNorm(Op):
    """Layer normalisation over the channels of each pixel of a (N, C, H, W) map, or over the
    features of a (N, F) vector: (x - mean) / sqrt(var + eps) * weight + bias, the statistics
    over C alone (ConvNeXt's LayerNorm2d, and its blocks' permute + LayerNorm(C) + permute on
    NCHW), with a learnt scale and shift per channel (2*C parameters). The same in training and
    inference."""

    name = "layer_norm"
    attrs = {"eps": Attr(1e-6, "added to the variance (ConvNeXt: 1e-6)", "float",
                         positive=True)}

    def infer(self, node, ins):
        (shape,) = ins
        if len(shape) not in (2, 4):
            raise ShapeError(f"layer_norm needs a (N, C, H, W) or (N, F) input, got {fmt(shape)}")
        return shape

    def params(self, node, ins):
        return 2 * ins[0][1]

    def torch(self, node, ins):
        from torch import nn

        from .modules import LayerNorm2d

        kind = LayerNorm2d if len(ins[0]) == 4 else nn.LayerNorm
        return kind(ins[0][1], eps=node.attrs["eps"])

    def onnx(self, ctx, node, inputs):
        """opset 17+: LayerNormalization over the last axis, on a map between two Transposes
        to and from (N, H, W, C); before 17, the formula in ReduceMean, Sub, Mul, Sqrt, Div."""
        eps = node.attrs["eps"]
        rank = len(ctx.in_shapes(node)[0])
        weight, bias = ctx.weight(node, "weight"), ctx.weight(node, "bias")
        x = inputs[0]
        if ctx.opset >= 17:
            if rank == 4:
                x = ctx.op("Transpose", x, perm=[0, 2, 3, 1])
            y = ctx.op("LayerNormalization", x, weight, bias, axis=-1, epsilon=eps)
            return ctx.op("Transpose", y, perm=[0, 3, 1, 2]) if rank == 4 else y
        centred = ctx.op("Sub", x, ctx.op("ReduceMean", x, axes=[1]))
        var = ctx.op("ReduceMean", ctx.op("Mul", centred, centred), axes=[1])
        std = ctx.op("Sqrt", ctx.op("Add", var, ctx.const(np.array(eps, np.float32), "eps")))
        shape = [-1, 1, 1] if rank == 4 else [-1]
        scale = ctx.const(ctx.array(node, "weight").reshape(shape), "weight")
        shift = ctx.const(ctx.array(node, "bias").reshape(shape), "bias")
        return ctx.op("Add", ctx.op("Mul", ctx.op("Div", centred, std), scale), shift)


@register
class LayerScale(Op):
    """y = x * gamma, one learnt factor per channel of a (N, C, H, W) map (ConvNeXt's layer
    scale on each residual branch; C parameters, stored (C, 1, 1) as torchvision does),
    starting at `value`."""

    name = "layer_scale"
    attrs = {"value": Attr(1e-6, "the starting value of every factor (ConvNeXt: 1e-6)",
                           "float")}

    def infer(self, node, ins):
        need_map("layer_scale", ins[0])
        return ins[0]

    def params(self, node, ins):
        return ins[0][1]

    def torch(self, node, ins):
        from .modules import LayerScale as Module

        return Module(ins[0][1], node.attrs["value"])

    def onnx(self, ctx, node, inputs):
        return ctx.op("Mul", inputs[0], ctx.weight(node, "weight"))
