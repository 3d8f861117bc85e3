"""Convolutions: conv2d (with "same" padding and LeNet-5's connection table), conv_transpose2d,
deform_conv2d (DCN v1/v2, the kernel from `custom_ops`) and gated_conv2d.

Initialisation follows torchvision's ReLU nets (VGG, ResNet): weights kaiming-normal with
fan_out, biases zero. A deformable layer's offset/mask convolution starts at zero, so it
begins as a plain convolution (DCN papers). The torch modules are in `modules.py`, imported
only when a network is built."""
from __future__ import annotations

import math

import numpy as np

from ..graph import Node, Shape
from . import register
from .base import REQUIRED, Attr, Op, ShapeError
from .tensor import need_map, need_positive, numel


# --- shape rules ------------------------------------------------------------------------------
def effective(kernel: int, dilation: int) -> int:
    """The span of a dilated kernel: d(k-1)+1."""
    return dilation * (kernel - 1) + 1


def resolve_padding(node: Node, size: tuple[int, int]) -> tuple[int, int, int, int]:
    """(top, left, bottom, right). "same" is TensorFlow's: output ceil(in/stride), the odd pixel
    of padding at the bottom/right."""
    padding = node.attrs["padding"]
    if padding != "same":
        return padding if len(padding) == 4 else (*padding, *padding)
    pads = []
    for n, k, s, d in zip(size, node.attrs["kernel"], node.attrs["stride"], node.attrs["dilation"]):
        pads.append(max((math.ceil(n / s) - 1) * s + effective(k, d) - n, 0))
    (ph, pw) = pads
    return (ph // 2, pw // 2, ph - ph // 2, pw - pw // 2)


def window_size(n: int, k: int, s: int, before: int, after: int, d: int = 1,
                ceil_mode: bool = False) -> int:
    """Output length of a sliding window: floor((n + pads - d(k-1) - 1)/s) + 1; in ceil mode
    rounded up, but (PyTorch's rule) the last window must start inside the input or the left
    padding."""
    span = n + before + after - effective(k, d)
    out = (-(-span // s) if ceil_mode else span // s) + 1
    if ceil_mode and (out - 1) * s >= n + before:
        out -= 1
    return out


def sliding_output(op: str, node: Node, hw: tuple[int, int], pads: tuple[int, int, int, int],
                   dilation=(1, 1), ceil_mode: bool = False) -> tuple[int, int]:
    """(oh, ow) of a convolution or pooling window; a ShapeError if the kernel does not fit."""
    kernel, stride = node.attrs["kernel"], node.attrs["stride"] or node.attrs["kernel"]
    top, left, bottom, right = pads
    padded = (hw[0] + top + bottom, hw[1] + left + right)
    spans = [effective(k, d) for k, d in zip(kernel, dilation)]
    if spans[0] > padded[0] or spans[1] > padded[1]:
        what = "x".join(map(str, kernel)) if kernel[0] != kernel[1] else str(kernel[0])
        if tuple(dilation) != (1, 1):
            what += f" (dilated: {spans[0]}x{spans[1]})"
        raise ShapeError(f"{op} kernel {what} is larger than the padded input "
                         f"{padded[0]}x{padded[1]}: lower the kernel or add padding")
    return (window_size(hw[0], kernel[0], stride[0], top, bottom, dilation[0], ceil_mode),
            window_size(hw[1], kernel[1], stride[1], left, right, dilation[1], ceil_mode))


def check_groups(groups: int, channels: int, what: str) -> None:
    if channels % groups:
        raise ShapeError(f"groups {groups} does not divide {channels} {what} channels: "
                         f"use a divisor of {channels}")


def conv_window(node: Node):
    k, d, s = node.attrs["kernel"], node.attrs["dilation"], node.attrs["stride"]
    return tuple((effective(k[i], d[i]), s[i]) for i in range(2))


# --- ops --------------------------------------------------------------------------------------
_CONV_ATTRS = {
    "out": Attr(REQUIRED, "output channels", "int", min=1),
    "kernel": Attr(REQUIRED, "kernel size: k or [kh, kw]", "ints", min=1),
    "stride": Attr(1, "stride: s or [sh, sw]", "ints", min=1),
    "padding": Attr(0, 'zero padding: p, [ph, pw], [top, left, bottom, right] or "same" '
                    "(TensorFlow's: output ceil(in/stride), the odd pixel at the bottom/right)",
                    "padding"),
    "dilation": Attr(1, "dilation: d or [dh, dw]", "ints", min=1),
    "groups": Attr(1, "channel groups (must divide the input and output channels)", "int",
                   min=1),
    "bias": Attr(True, "learn a bias per output channel", "bool"),
}


def conv_infer(op: str, node: Node, shape: Shape) -> Shape:
    """Output shape of a plain (dense or grouped) convolution, with every check."""
    need_positive(node, "out", "kernel", "stride", "dilation", "groups")
    c, h, w = need_map(op, shape)
    check_groups(node.attrs["groups"], c, "input")
    check_groups(node.attrs["groups"], node.attrs["out"], "output")
    pads = resolve_padding(node, (h, w))
    oh, ow = sliding_output(op, node, (h, w), pads, node.attrs["dilation"])
    return (shape[0], node.attrs["out"], oh, ow)


def conv_params(node: Node, c: int) -> int:
    a = node.attrs
    kh, kw = a["kernel"]
    return a["out"] * (c // a["groups"]) * kh * kw + (a["out"] if a["bias"] else 0)


def conv_macs(node: Node, c: int, out: Shape) -> int:
    kh, kw = node.attrs["kernel"]
    return numel(out) * (c // node.attrs["groups"]) * kh * kw


@register
class Conv2d(Op):
    """2-D convolution. With `table`, a sparse connection table as in LeNet-5's C3: output
    channel o is connected to the input channels table[o] only (needs groups 1)."""

    name = "conv2d"
    attrs = {**_CONV_ATTRS,
             "table": Attr(None, "one list of input channels per output channel (LeNet-5 C3)",
                           "table")}

    def infer(self, node, ins):
        out = conv_infer("conv2d", node, ins[0])
        table = node.attrs["table"]
        if table is not None:
            c = ins[0][1]
            if node.attrs["groups"] != 1:
                raise ShapeError(f"a connection table needs groups 1, got groups "
                                 f"{node.attrs['groups']}: the table already says which inputs "
                                 "each output sees")
            if len(table) != node.attrs["out"]:
                raise ShapeError(f"the connection table has {len(table)} entries but out is "
                                 f"{node.attrs['out']}: give one entry per output channel")
            for o, row in enumerate(table):
                if max(row) >= c:
                    raise ShapeError(f"table entry {o} names input channel {max(row)} but the "
                                     f"input has {c} channels (0..{c - 1})")
                if len(set(row)) != len(row):
                    raise ShapeError(f"table entry {o} lists an input channel twice: {list(row)}")
        return out

    def params(self, node, ins):
        table = node.attrs["table"]
        if table is None:
            return conv_params(node, ins[0][1])
        kh, kw = node.attrs["kernel"]
        return _connections(table) * kh * kw + (len(table) if node.attrs["bias"] else 0)

    def macs(self, node, ins, out):
        table = node.attrs["table"]
        if table is None:
            return conv_macs(node, ins[0][1], out)
        kh, kw = node.attrs["kernel"]
        return _connections(table) * kh * kw * out[2] * out[3]

    def window(self, node, ins):
        return conv_window(node)

    def torch(self, node, ins):
        from .modules import TableConv2d, make_conv2d

        c, h, w = ins[0][1:]
        pads = resolve_padding(node, (h, w))
        a = node.attrs
        if a["table"] is None:
            return make_conv2d(c, node, pads)
        return TableConv2d(c, a["table"], a["kernel"], a["stride"], pads, a["dilation"],
                           a["bias"])

    def onnx(self, ctx, node, inputs):
        """A Conv; a connection table becomes the dense weight with zeros where no
        connection is (the same numbers as TableConv2d.dense_weight)."""
        c, h, w = ctx.in_shapes(node)[0][1:]
        pads = resolve_padding(node, (h, w))
        table = node.attrs["table"]
        if table is None:
            return ctx.conv(node, inputs[0], pads)
        kh, kw = node.attrs["kernel"]
        dense = np.zeros((len(table) * c, kh, kw), np.float32)
        dense[[o * c + i for o, row in enumerate(table) for i in row]] = ctx.array(node, "weight")
        return ctx.conv(node, inputs[0], pads, weight=dense.reshape(len(table), c, kh, kw))


def _connections(table) -> int:
    return sum(len(row) for row in table)


@register
class ConvTranspose2d(Op):
    """Transposed ("fractionally strided") convolution for learned upsampling:
    output (in-1)s - 2p + d(k-1) + output_padding + 1."""

    name = "conv_transpose2d"
    attrs = {
        "out": _CONV_ATTRS["out"],
        "kernel": _CONV_ATTRS["kernel"],
        "stride": _CONV_ATTRS["stride"],
        "padding": Attr(0, "padding removed from each side of the output: p or [ph, pw]", "ints"),
        "output_padding": Attr(0, "extra rows/columns at the bottom/right of the output "
                               "(smaller than the stride or the dilation)", "ints"),
        "dilation": _CONV_ATTRS["dilation"],
        "groups": _CONV_ATTRS["groups"],
        "bias": _CONV_ATTRS["bias"],
    }

    def infer(self, node, ins):
        need_positive(node, "out", "kernel", "stride", "dilation", "groups")
        c, h, w = need_map("conv_transpose2d", ins[0])
        a = node.attrs
        check_groups(a["groups"], c, "input")
        check_groups(a["groups"], a["out"], "output")
        size = []
        for n, k, s, p, op, d in zip((h, w), a["kernel"], a["stride"], a["padding"],
                                     a["output_padding"], a["dilation"]):
            if op >= max(s, d):
                raise ShapeError(f"output_padding {op} must be smaller than the stride {s} or "
                                 f"the dilation {d}")
            size.append((n - 1) * s - 2 * p + effective(k, d) + op)
        if min(size) < 1:
            raise ShapeError(f"padding {_pair(a['padding'])} leaves an empty {size[0]}x{size[1]} "
                             "output: lower the padding")
        return (ins[0][0], a["out"], *size)

    def params(self, node, ins):
        a = node.attrs
        kh, kw = a["kernel"]
        return ins[0][1] * (a["out"] // a["groups"]) * kh * kw + (a["out"] if a["bias"] else 0)

    def macs(self, node, ins, out):
        a = node.attrs
        kh, kw = a["kernel"]
        return numel(ins[0]) * (a["out"] // a["groups"]) * kh * kw

    def window(self, node, ins):
        # The jump divides by s first, then the kernel adds (k-1)*jump/s: expressed in the
        # (kernel, stride) form as a kernel of (k-1)/s + 1 with a stride of 1/s.
        k, d, s = node.attrs["kernel"], node.attrs["dilation"], node.attrs["stride"]
        return tuple(((effective(k[i], d[i]) - 1) / s[i] + 1, 1 / s[i]) for i in range(2))

    def torch(self, node, ins):
        from torch import nn

        from .modules import init_conv

        a = node.attrs
        return init_conv(nn.ConvTranspose2d(
            ins[0][1], a["out"], a["kernel"], a["stride"], a["padding"], a["output_padding"],
            a["groups"], a["bias"], a["dilation"]))

    def onnx(self, ctx, node, inputs):
        a = node.attrs
        bias = ctx.weight(node, "bias") if ctx.has(node, "bias") else None
        (ph, pw) = a["padding"]
        return ctx.op("ConvTranspose", inputs[0], ctx.weight(node, "weight"), bias,
                      strides=list(a["stride"]), pads=[ph, pw, ph, pw],
                      output_padding=list(a["output_padding"]), dilations=list(a["dilation"]),
                      group=a["groups"])


def _pair(value: tuple[int, int]) -> str:
    return str(value[0]) if value[0] == value[1] else f"{value[0]}x{value[1]}"


@register
class DeformConv2d(Op):
    """Deformable convolution (DCN v1; v2 with `modulated`): each kernel tap samples at a
    learned offset, bilinearly. The layer owns its offset (and mask) convolution -- same kernel,
    stride, padding and dilation, zero-initialised -- whose parameters count with the layer's."""

    name = "deform_conv2d"
    attrs = {
        **{k: _CONV_ATTRS[k] for k in ("out", "kernel", "stride")},
        "padding": Attr(0, "zero padding: p or [ph, pw]", "ints"),
        "dilation": _CONV_ATTRS["dilation"],
        "groups": _CONV_ATTRS["groups"],
        "offset_groups": Attr(1, "groups of input channels sharing one offset field", "int",
                              min=1),
        "bias": _CONV_ATTRS["bias"],
        "modulated": Attr(False, "DCN v2: also learn a sigmoid mask per tap", "bool"),
    }

    def infer(self, node, ins):
        need_positive(node, "offset_groups")
        out = conv_infer("deform_conv2d", node, ins[0])
        c = ins[0][1]
        if c % node.attrs["offset_groups"]:
            raise ShapeError(f"offset_groups {node.attrs['offset_groups']} does not divide {c} "
                             f"input channels: use a divisor of {c}")
        return out

    def _offset_channels(self, node: Node) -> int:
        kh, kw = node.attrs["kernel"]
        return node.attrs["offset_groups"] * (3 if node.attrs["modulated"] else 2) * kh * kw

    def params(self, node, ins):
        kh, kw = node.attrs["kernel"]
        c = ins[0][1]
        offset = self._offset_channels(node) * (c * kh * kw + 1)
        return conv_params(node, c) + offset

    def macs(self, node, ins, out):
        kh, kw = node.attrs["kernel"]
        c = ins[0][1]
        offset = self._offset_channels(node) * out[2] * out[3] * c * kh * kw
        return conv_macs(node, c, out) + offset

    def window(self, node, ins):
        return conv_window(node)

    def torch(self, node, ins):
        from custom_ops import DeformConv2d as Deform

        from .modules import init_conv

        a = node.attrs
        layer = Deform(ins[0][1], a["out"], a["kernel"], stride=a["stride"],
                       padding=a["padding"], dilation=a["dilation"], groups=a["groups"],
                       offset_groups=a["offset_groups"], bias=a["bias"],
                       modulated=a["modulated"])
        return init_conv(layer)

    def onnx(self, ctx, node, inputs):
        """The offset (and mask logit) convolution as a Conv, then a cnngraph.DeformConv node
        (the standard DeformConv's inputs and attributes; v2 gets sigmoid(mask logits))."""
        a = node.attrs
        (ph, pw) = a["padding"]
        pads = (ph, pw, ph, pw)
        offsets = ctx.conv(node, inputs[0], pads, prefix="offset_conv.", group=1)
        mask = None
        if a["modulated"]:
            kh, kw = a["kernel"]
            taps = a["offset_groups"] * kh * kw
            offsets, logits = ctx.op("Split", offsets, ctx.ints([2 * taps, taps]), axis=1,
                                     outputs=2)
            mask = ctx.op("Sigmoid", logits)
        bias = ctx.weight(node, "bias") if ctx.has(node, "bias") else None
        return ctx.custom("DeformConv", inputs[0], ctx.weight(node, "weight"), offsets, bias, mask,
                          strides=list(a["stride"]), pads=list(pads),
                          dilations=list(a["dilation"]), group=a["groups"],
                          offset_group=a["offset_groups"])


@register
class GatedConv2d(Op):
    """Gated convolution, the gated linear unit: conv(x) * sigmoid(gate(x)), two convolutions
    with the same attributes (twice a conv2d's parameters and MACs)."""

    name = "gated_conv2d"
    attrs = dict(_CONV_ATTRS)

    def infer(self, node, ins):
        return conv_infer("gated_conv2d", node, ins[0])

    def params(self, node, ins):
        return 2 * conv_params(node, ins[0][1])

    def macs(self, node, ins, out):
        return 2 * conv_macs(node, ins[0][1], out)

    def window(self, node, ins):
        return conv_window(node)

    def torch(self, node, ins):
        from .modules import GatedConv, make_conv2d

        c, h, w = ins[0][1:]
        pads = resolve_padding(node, (h, w))
        return GatedConv(make_conv2d(c, node, pads), make_conv2d(c, node, pads))

    def onnx(self, ctx, node, inputs):
        pads = resolve_padding(node, ctx.in_shapes(node)[0][2:])
        value = ctx.conv(node, inputs[0], pads, prefix="conv.")
        gate = ctx.op("Sigmoid", ctx.conv(node, inputs[0], pads, prefix="gate."))
        return ctx.op("Mul", value, gate)
