"""Pooling: max and average (padding, ceil mode, overlapping windows), global and adaptive
average, and LeNet-5's trainable subsampling."""
from __future__ import annotations

import math

import numpy as np

from ..graph import Node
from . import register
from .base import REQUIRED, Attr, Call, Op, ShapeError
from .conv import effective, sliding_output
from .tensor import need_map, need_positive

_KERNEL = Attr(REQUIRED, "window: k or [kh, kw]", "ints", min=1)
_STRIDE = Attr(None, "stride: s or [sh, sw]; unset: the kernel (non-overlapping)", "ints",
               min=1)
_PADDING = Attr(0, "implicit padding on each side (at most half the kernel): p or [ph, pw]",
                "ints")
_CEIL = Attr(False, "round the output size up (Caffe); the last window must still start "
             "inside the input or the left padding", "bool")


def _stride(node: Node) -> tuple[int, int]:
    return node.attrs["stride"] or node.attrs["kernel"]


def _pool_infer(op: str, node: Node, shape, dilation=(1, 1)):
    need_positive(node, "kernel", "stride", *(["dilation"] if "dilation" in node.attrs else []))
    c, h, w = need_map(op, shape)
    ph, pw = node.attrs["padding"]
    kh, kw = node.attrs["kernel"]
    if ph > kh // 2 or pw > kw // 2:
        raise ShapeError(f"{op} padding {ph}x{pw} is more than half the kernel {kh}x{kw}: "
                         "lower the padding (a window would see only padding)")
    oh, ow = sliding_output(op, node, (h, w), (ph, pw, ph, pw), dilation,
                            node.attrs["ceil_mode"])
    return (shape[0], c, oh, ow)


def _pool_window(node: Node, dilation=(1, 1)):
    k, s = node.attrs["kernel"], _stride(node)
    return tuple((effective(k[i], dilation[i]), s[i]) for i in range(2))


@register
class MaxPool2d(Op):
    """Max pooling; overlapping when the stride is smaller than the kernel (AlexNet's 3/2)."""

    name = "max_pool2d"
    attrs = {"kernel": _KERNEL, "stride": _STRIDE, "padding": _PADDING,
             "dilation": Attr(1, "dilation: d or [dh, dw]", "ints", min=1), "ceil_mode": _CEIL}

    def infer(self, node, ins):
        return _pool_infer("max_pool2d", node, ins[0], node.attrs["dilation"])

    def window(self, node, ins):
        return _pool_window(node, node.attrs["dilation"])

    def torch(self, node, ins):
        a = node.attrs
        from torch.nn import functional as F

        return Call(F.max_pool2d, {"kernel_size": a["kernel"], "stride": _stride(node),
                                   "padding": a["padding"], "dilation": a["dilation"],
                                   "ceil_mode": a["ceil_mode"]})

    def onnx(self, ctx, node, inputs):
        a = node.attrs
        return ctx.op("MaxPool", inputs[0], kernel_shape=list(a["kernel"]),
                      strides=list(_stride(node)), pads=list(a["padding"]) * 2,
                      dilations=list(a["dilation"]), ceil_mode=int(a["ceil_mode"]))


@register
class AvgPool2d(Op):
    """Average pooling; `count_include_pad` decides whether padded zeros count in the mean."""

    name = "avg_pool2d"
    attrs = {"kernel": _KERNEL, "stride": _STRIDE, "padding": _PADDING, "ceil_mode": _CEIL,
             "count_include_pad": Attr(True, "average over the padded zeros too", "bool")}

    def infer(self, node, ins):
        return _pool_infer("avg_pool2d", node, ins[0])

    def window(self, node, ins):
        return _pool_window(node)

    def torch(self, node, ins):
        a = node.attrs
        from torch.nn import functional as F

        return Call(F.avg_pool2d, {"kernel_size": a["kernel"], "stride": _stride(node),
                                   "padding": a["padding"], "ceil_mode": a["ceil_mode"],
                                   "count_include_pad": a["count_include_pad"]})

    def onnx(self, ctx, node, inputs):
        a = node.attrs
        return ctx.op("AveragePool", inputs[0], kernel_shape=list(a["kernel"]),
                      strides=list(_stride(node)), pads=list(a["padding"]) * 2,
                      ceil_mode=int(a["ceil_mode"]),
                      count_include_pad=int(a["count_include_pad"]))


@register
class GlobalAvgPool2d(Op):
    """Mean over the whole map: (N, C, H, W) -> (N, C, 1, 1)."""

    name = "global_avg_pool2d"

    def infer(self, node, ins):
        c, _, _ = need_map("global_avg_pool2d", ins[0])
        return (ins[0][0], c, 1, 1)

    def window(self, node, ins):
        return "global"

    def torch(self, node, ins):
        from torch.nn import functional as F

        return Call(F.adaptive_avg_pool2d, {"output_size": (1, 1)})

    def onnx(self, ctx, node, inputs):
        return ctx.op("GlobalAveragePool", inputs[0])


MAX_BIN_MATRIX = 1 << 24  # numbers in one averaging matrix of an uneven adaptive pool (64 MiB)


def adaptive_bins(n: int, out: int) -> tuple[int, float]:
    """(widest bin, mean stride) of PyTorch's adaptive pooling of n cells into out bins: bin i
    covers [floor(i*n/out), ceil((i+1)*n/out))."""
    widest = -(-(n + out - math.gcd(n, out)) // out)  # bin i starts at (i*n mod out)/out of a cell
    return widest, n / out


@register
class AdaptiveAvgPool2d(Op):
    """Average pooling to a fixed output size (torchvision's AlexNet/VGG 7x7, aux heads 4x4).
    Receptive field: the widest bin, with the mean stride n/size as the jump (exact when the
    size divides the input; global for size 1)."""

    name = "adaptive_avg_pool2d"
    attrs = {"size": Attr(REQUIRED, "output size: s or [sh, sw]", "ints", min=1)}

    def infer(self, node, ins):
        need_positive(node, "size")
        c, _, _ = need_map("adaptive_avg_pool2d", ins[0])
        return (ins[0][0], c, *node.attrs["size"])

    def window(self, node, ins):
        return tuple(adaptive_bins(n, s) for n, s in zip(ins[0][2:], node.attrs["size"]))

    def torch(self, node, ins):
        from torch.nn import functional as F

        return Call(F.adaptive_avg_pool2d, {"output_size": node.attrs["size"]})

    def onnx(self, ctx, node, inputs):
        """An AveragePool when the size divides the input (nothing when equal); otherwise
        PyTorch's uneven bins as two constant averaging matrices: P_h @ x @ P_w^T."""
        (h, w), (oh, ow) = ctx.in_shapes(node)[0][2:], node.attrs["size"]
        if (h, w) == (oh, ow):
            return inputs[0]
        if h % oh == 0 and w % ow == 0:
            kernel = [h // oh, w // ow]
            return ctx.op("AveragePool", inputs[0], kernel_shape=kernel, strides=kernel)
        if max(h * oh, w * ow) > MAX_BIN_MATRIX:
            ctx.unsupported(node, f"uneven bins from {h}x{w} to {oh}x{ow} in constants of at most "
                            f"{MAX_BIN_MATRIX:,} numbers (they would need {max(h * oh, w * ow):,})"
                            ": pick a size that divides the input")
        rows = ctx.const(self._bin_matrix(h, oh), "rows")
        cols = ctx.const(self._bin_matrix(w, ow).T.copy(), "cols")
        return ctx.op("MatMul", rows, ctx.op("MatMul", inputs[0], cols))

    @staticmethod
    def _bin_matrix(n: int, out: int) -> np.ndarray:
        """(out, n): row i averages PyTorch's adaptive bin i, [floor(i*n/out), ceil((i+1)*n/out))."""
        matrix = np.zeros((out, n), np.float32)
        for i in range(out):
            start, end = i * n // out, -(-(i + 1) * n // out)
            matrix[i, start:end] = 1.0 / (end - start)
        return matrix


@register
class Subsample2d(Op):
    """LeNet-5's trainable subsampling (S2, S4): the sum of each window times a learned
    coefficient per map, plus a bias per map (2*C parameters)."""

    name = "subsample2d"
    attrs = {"kernel": Attr(2, "window: k or [kh, kw]", "ints", min=1), "stride": _STRIDE}

    def infer(self, node, ins):
        need_positive(node, "kernel", "stride")
        c, h, w = need_map("subsample2d", ins[0])
        oh, ow = sliding_output("subsample2d", node, (h, w), (0, 0, 0, 0))
        return (ins[0][0], c, oh, ow)

    def params(self, node, ins):
        return 2 * ins[0][1]

    def window(self, node, ins):
        return _pool_window(node)

    def torch(self, node, ins):
        from .modules import Subsample

        return Subsample(ins[0][1], node.attrs["kernel"], _stride(node))

    def onnx(self, ctx, node, inputs):
        """A depthwise Conv whose kernel holds weight[c] everywhere: weight * window sum + bias."""
        kh, kw = node.attrs["kernel"]
        coeff = ctx.array(node, "weight")
        kernel = np.broadcast_to(coeff[:, None, None, None], (len(coeff), 1, kh, kw))
        return ctx.op("Conv", inputs[0], ctx.weight(node, "weight", kernel.astype(np.float32)),
                      ctx.weight(node, "bias"), kernel_shape=[kh, kw],
                      strides=list(_stride(node)), group=len(coeff))
