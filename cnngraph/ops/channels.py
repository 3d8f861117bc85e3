"""Channel rearrangements of ShuffleNet v2: a split taking one of equal parts of the channels
(its `x.chunk(2, dim=1)`) and the channel shuffle that mixes the groups of a grouped design.
Both are stateless and free (no parameters, no MACs, pointwise for the receptive field)."""
from __future__ import annotations

from . import register
from .base import REQUIRED, Attr, Call, Op, ShapeError
from .tensor import need_map


@register
class ChannelSplit(Op):
    """Part `index` of the channels cut into `parts` equal parts: (N, C, H, W) ->
    (N, C/parts, H, W), channels index*C/parts to (index+1)*C/parts - 1. Two layers with
    indices 0 and 1 over the same input are torch's `x.chunk(2, dim=1)`."""

    name = "channel_split"
    attrs = {
        "parts": Attr(2, "how many equal parts the channels are cut into", "int", min=1),
        "index": Attr(REQUIRED, "which part (0-based)", "int", min=0),
    }

    def infer(self, node, ins):
        c, h, w = need_map("channel_split", ins[0])
        parts, index = node.attrs["parts"], node.attrs["index"]
        if c % parts:
            raise ShapeError(f"channel_split parts {parts} does not divide the {c} input "
                             f"channels: use a divisor of {c}")
        if index >= parts:
            raise ShapeError(f"channel_split index {index} is outside 0..{parts - 1} (parts "
                             f"{parts}): use an index below {parts}")
        return (ins[0][0], c // parts, h, w)

    def torch(self, node, ins):
        import torch

        size = ins[0][1] // node.attrs["parts"]
        return Call(torch.narrow, {"dim": 1, "start": node.attrs["index"] * size,
                                   "length": size})

    def onnx(self, ctx, node, inputs):
        size = ctx.in_shapes(node)[0][1] // node.attrs["parts"]
        start = node.attrs["index"] * size
        return ctx.op("Slice", inputs[0], ctx.ints([start], "starts"),
                      ctx.ints([start + size], "ends"), ctx.ints([1], "axes"))


@register
class ChannelShuffle(Op):
    """ShuffleNet's channel shuffle: the C channels seen as a (groups, C/groups) matrix,
    transposed, read back row by row; output channel j*groups + g is input channel
    g*C/groups + j. Same shape out."""

    name = "channel_shuffle"
    attrs = {"groups": Attr(REQUIRED, "groups to interleave (must divide the channels)", "int",
                            min=1)}

    def infer(self, node, ins):
        c, _, _ = need_map("channel_shuffle", ins[0])
        groups = node.attrs["groups"]
        if groups < 1 or c % groups:
            raise ShapeError(f"channel_shuffle groups {groups} does not divide the {c} input "
                             f"channels: use a divisor of {c}")
        return ins[0]

    def torch(self, node, ins):
        from .modules import channel_shuffle

        return Call(channel_shuffle, {"groups": node.attrs["groups"]})

    def onnx(self, ctx, node, inputs):
        """Reshape to (N, g, C/g, H, W), swap the two channel axes, reshape back (0 in a
        Reshape shape keeps that dimension: the batch stays symbolic)."""
        _, c, h, w = ctx.in_shapes(node)[0]
        g = node.attrs["groups"]
        x = ctx.op("Reshape", inputs[0], ctx.ints([0, g, c // g, h, w]))
        x = ctx.op("Transpose", x, perm=[0, 2, 1, 3, 4])
        return ctx.op("Reshape", x, ctx.ints([0, c, h, w]))
