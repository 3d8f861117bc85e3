"""Deformable convolution (DCN v1, and v2 with a mask) as one torch op.

The op is registered with torch.library, so torch.compile and torch.export see a single node:

    cnngraph::deform_conv2d(Tensor input, Tensor offset, Tensor weight, Tensor? bias,
                            Tensor? mask, int[2] stride, int[2] padding, int[2] dilation) -> Tensor

Semantics are torchvision.ops.deform_conv2d's (= ONNX DeformConv's with symmetric pads): input
(N, C, H, W), weight (M, C/groups, kH, kW), offset (N, 2·og·kH·kW, oH, oW) with channel
g·2·kH·kW + 2k the row (y) and + 2k + 1 the column (x) offset of kernel tap k = i·kW + j in offset
group g, mask (N, og·kH·kW, oH, oW), bias (M). Groups and offset groups (og) follow from the
shapes. Samples are bilinear; neighbours outside the image count as zero.

How it runs (the same code on every device): the batch is cut into chunks whose im2col buffer
(C·kH·kW·oH·oW elements per image) fits IM2COL_BUDGET_BYTES. Per chunk, the four bilinear corners
of every sample are gathered from a zero-bordered, channels-last copy of the input (one
index_select per corner, rows of contiguous channels), weighted and summed into the im2col
matrix, which one (batched, per group) matmul turns into the output. The backward pass is
written out: the same gathers, a scatter-add for the input gradient, and the derivative of the
bilinear weights for the offsets. float16/bfloat16 inputs are computed in float32.
"""
from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Upper bound on one im2col-sized buffer (bytes); the batch is chunked to stay within it
#: (one image at least). The forward pass holds two such buffers at once, the backward pass
#: three. Kept modest on purpose: buffers this size are recycled by the allocator and stay
#: cache-friendlier, which measured faster on CPU than one buffer for the whole batch.
IM2COL_BUDGET_BYTES = 32 * 2**20

Pair = int | Sequence[int]


def _pair(value: Pair, name: str, minimum: int) -> tuple[int, int]:
    pair = (value, value) if isinstance(value, int) else tuple(int(v) for v in value)
    if len(pair) != 2 or min(pair) < minimum:
        raise ValueError(f"deform_conv2d: {name} must be an int or a pair of ints >= {minimum}, "
                         f"got {value!r}")
    return pair


def _shape(t: Tensor) -> tuple[int, ...]:
    return tuple(t.shape)


def _check(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
           mask: Tensor | None, stride, padding, dilation) -> tuple[int, int, int, int]:
    """Validate shapes; return (groups, offset_groups, oH, oW). Nothing is broadcast."""
    for name, t in (("input", input), ("offset", offset), ("weight", weight)) + (
            (("mask", mask),) if mask is not None else ()):
        if t.dim() != 4:
            raise ValueError(f"deform_conv2d: {name} must be 4-D, got shape {_shape(t)}")
    n, c, h, w = input.shape
    m, cg, kh, kw = weight.shape
    if cg == 0 or c % cg or m % (c // cg):
        raise ValueError(f"deform_conv2d: weight (M, C/groups, kH, kW) = {_shape(weight)} needs "
                         f"input channels C={c} divisible by {cg} and M={m} by the groups")
    groups = c // cg
    (sh, sw), (ph, pw), (dh, dw) = stride, padding, dilation
    oh = (h + 2 * ph - dh * (kh - 1) - 1) // sh + 1
    ow = (w + 2 * pw - dw * (kw - 1) - 1) // sw + 1
    if oh <= 0 or ow <= 0:
        raise ValueError(f"deform_conv2d: input {_shape(input)} is smaller than the dilated kernel "
                         f"{(kh, kw)} (padding {padding}, dilation {dilation})")
    taps = kh * kw
    oc = offset.shape[1]
    if oc == 0 or oc % (2 * taps) or c % (oc // (2 * taps)):
        raise ValueError(f"deform_conv2d: offset must have shape (N={n}, 2*offset_groups*kH*kW = "
                         f"2*og*{taps}, oH={oh}, oW={ow}) with og dividing C={c}, "
                         f"got {_shape(offset)}")
    og = oc // (2 * taps)
    if _shape(offset) != (n, 2 * og * taps, oh, ow):
        raise ValueError(f"deform_conv2d: offset must have shape {(n, 2 * og * taps, oh, ow)}, "
                         f"got {_shape(offset)}")
    if mask is not None and _shape(mask) != (n, og * taps, oh, ow):
        raise ValueError(f"deform_conv2d: mask must have shape {(n, og * taps, oh, ow)} "
                         f"(N, offset_groups*kH*kW, oH, oW), got {_shape(mask)}")
    if bias is not None and _shape(bias) != (m,):
        raise ValueError(f"deform_conv2d: bias must have shape {(m,)}, got {_shape(bias)}")
    return groups, og, oh, ow


class _Sampler:
    """The bilinear sampling of one batch chunk, laid out (n, oH·oW, og, taps) like the im2col
    rows: per corner, the rows to gather from the zero-bordered channels-last input, and the
    bilinear weights."""

    def __init__(self, offset: Tensor, mask: Tensor | None, size: tuple[int, int],
                 kernel: tuple[int, int], stride, padding, dilation, chunks: int):
        n, _, oh, ow = offset.shape
        (h, w), (kh, kw) = size, kernel
        taps, og, length = kh * kw, offset.shape[1] // (2 * kh * kw), oh * ow
        dev, dt = offset.device, offset.dtype
        tap_y = torch.arange(kh, device=dev, dtype=dt).repeat_interleave(kw) * dilation[0]
        tap_x = torch.arange(kw, device=dev, dtype=dt).repeat(kh) * dilation[1]
        out_y = torch.arange(oh, device=dev, dtype=dt) * stride[0] - padding[0]
        out_x = torch.arange(ow, device=dev, dtype=dt) * stride[1] - padding[1]
        base_y = (out_y[:, None, None] + tap_y).expand(oh, ow, taps).reshape(length, 1, taps)
        base_x = (out_x[None, :, None] + tap_x).expand(oh, ow, taps).reshape(length, 1, taps)
        off = offset.view(n, og, taps, 2, length).permute(0, 4, 1, 2, 3).contiguous()
        # Clamped so far-away samples stay in int64 range and land on the zero border.
        y = (off[..., 0] + base_y).clamp_(-2, h + 1)
        x = (off[..., 1] + base_x).clamp_(-2, w + 1)
        y0, x0 = y.floor(), x.floor()
        self.ly, self.lx = y - y0, x - x0
        self.mask = (None if mask is None else
                     mask.view(n, og, taps, length).permute(0, 3, 1, 2).contiguous())
        y0, x0 = y0.long(), x0.long()
        # Gathered rows are ordered (n, L, og, chunks per og, taps), each `unit` channels.
        plane = (h + 2) * (w + 2)
        start = (torch.arange(n, device=dev)[:, None] * chunks
                 + torch.arange(chunks, device=dev)[None, :]) * plane
        start = start.view(n, 1, og, chunks // og, 1)
        self.corners = []
        for dy in (0, 1):
            for dx in (0, 1):
                pos = ((y0 + dy).clamp_(-1, h) + 1) * (w + 2) + (x0 + dx).clamp_(-1, w) + 1
                self.corners.append((dy, dx, (pos.unsqueeze(3) + start).view(-1)))

    def bilinear(self, dy: int, dx: int) -> Tensor:
        """The corner's bilinear weight, (n, L, og, taps)."""
        wy = self.ly if dy else 1 - self.ly
        wx = self.lx if dx else 1 - self.lx
        return wy * wx

    def weight(self, dy: int, dx: int) -> Tensor:
        """Bilinear weight times mask, broadcastable to a gather's (n, L, og, per, taps, unit)."""
        w = self.bilinear(dy, dx)
        if self.mask is not None:
            w *= self.mask
        return w[:, :, :, None, :, None]


def _layout(c: int, groups: int, og: int) -> int:
    """Channels per gathered row: the largest run that stays inside one group and one offset
    group, so each conv group's columns form one contiguous block."""
    return math.gcd(c // groups, c // og)


def _source(x: Tensor, unit: int) -> Tensor:
    """(n, C, H, W) -> rows (n·C/unit·(H+2)·(W+2), unit): zero border, channels innermost."""
    n, c, h, w = x.shape
    padded = F.pad(x, (1, 1, 1, 1))
    return padded.view(n, c // unit, unit, (h + 2) * (w + 2)).transpose(2, 3).reshape(-1, unit)


def _unsource(rows: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    unit = rows.shape[1]
    padded = rows.view(n, c // unit, (h + 2) * (w + 2), unit).transpose(2, 3)
    return padded.reshape(n, c, h + 2, w + 2)[:, :, 1:-1, 1:-1]


def _weight_rows(weight: Tensor, groups: int, unit: int) -> Tensor:
    """(M, C/g, kH, kW) -> (g, M/g, D) in the column order of the im2col matrix."""
    m, cg, kh, kw = weight.shape
    w = weight.reshape(groups, m // groups, cg // unit, unit, kh * kw).transpose(3, 4)
    return w.reshape(groups, m // groups, cg * kh * kw)


def _chunk_size(n: int, c: int, taps: int, length: int, itemsize: int) -> int:
    return max(1, min(n, IM2COL_BUDGET_BYTES // max(1, c * taps * length * itemsize)))


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _Workspace:
    """Im2col-sized buffers allocated once per call and reused by every corner and chunk:
    fresh large allocations cost more in page faults than the gathers themselves."""

    def __init__(self, like: Tensor, count: int, numel: int):
        self._buffers = like.new_empty((count, numel))

    def get(self, i: int, shape: tuple[int, ...]) -> Tensor:
        return self._buffers[i, :math.prod(shape)].view(shape)


def _gather(src: Tensor, rows: Tensor, out: Tensor) -> Tensor:
    """The rows of `src` into `out` (any shape holding len(rows) rows)."""
    torch.index_select(src, 0, rows, out=out.view(-1, src.shape[1]))
    return out


def _gather_columns(src: Tensor, sampler: _Sampler, cols: Tensor, scratch: Tensor) -> Tensor:
    """The im2col matrix of one chunk into `cols`: Σ over corners of weight × gathered rows."""
    for i, (dy, dx, rows) in enumerate(sampler.corners):
        if i == 0:
            torch.mul(_gather(src, rows, scratch), sampler.weight(dy, dx), out=cols)
        else:
            cols.addcmul_(_gather(src, rows, scratch), sampler.weight(dy, dx))
    return cols


def _forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
             mask: Tensor | None, stride, padding, dilation) -> Tensor:
    groups, og, oh, ow = _check(input, offset, weight, bias, mask, stride, padding, dilation)
    dtype = _compute_dtype(input)
    n, c, h, w = input.shape
    m, _, kh, kw = weight.shape
    unit = _layout(c, groups, og)
    length, taps = oh * ow, kh * kw
    wr = _weight_rows(weight.to(dtype), groups, unit).transpose(1, 2)  # (g, D, M/g)
    out = input.new_empty((n, m, oh, ow))
    step = _chunk_size(n, c, taps, length, torch.finfo(dtype).bits // 8)
    space = _Workspace(wr, 2, step * length * c * taps)
    for b in range(0, n, step):
        e = min(n, b + step)
        src = _source(input[b:e].to(dtype), unit)
        sampler = _Sampler(offset[b:e].to(dtype), None if mask is None else mask[b:e].to(dtype),
                           (h, w), (kh, kw), stride, padding, dilation, c // unit)
        shape = (e - b, length, og, c // unit // og, taps, unit)
        cols = _gather_columns(src, sampler, space.get(0, shape), space.get(1, shape))
        cols = cols.view((e - b) * length, groups, -1)
        if groups == 1:
            res = torch.mm(cols[:, 0], wr[0])
        else:
            res = torch.bmm(cols.transpose(0, 1), wr).transpose(0, 1).reshape(-1, m)
        if bias is not None:
            res += bias.to(dtype)
        out[b:e] = res.view(e - b, oh, ow, m).permute(0, 3, 1, 2)
    return out


def _backward(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
              stride, padding, dilation, needs: Sequence[bool]):
    """Gradients for (input, offset, weight, mask); None where not needed."""
    need_input, need_offset, need_weight, need_mask = needs
    dtype = _compute_dtype(input)
    n, c, h, w = input.shape
    m, _, kh, kw = weight.shape
    groups, og = c // weight.shape[1], offset.shape[1] // (2 * kh * kw)
    oh, ow = grad.shape[2:]
    unit = _layout(c, groups, og)
    length, taps, chunks = oh * ow, kh * kw, c // unit
    wr = _weight_rows(weight.to(dtype), groups, unit)  # (g, M/g, D)
    g_input = torch.zeros_like(input, dtype=dtype) if need_input else None
    g_offset = torch.empty_like(offset, dtype=dtype) if need_offset else None
    g_mask = torch.empty_like(mask, dtype=dtype) if need_mask else None
    g_weight = torch.zeros_like(wr) if need_weight else None
    step = _chunk_size(n, c, taps, length, torch.finfo(dtype).bits // 8)
    space = _Workspace(wr, 3, step * length * c * taps)
    for b in range(0, n, step):
        e = min(n, b + step)
        k = e - b
        shape = (k, length, og, chunks // og, taps, unit)
        src = _source(input[b:e].to(dtype), unit)
        sampler = _Sampler(offset[b:e].to(dtype), None if mask is None else mask[b:e].to(dtype),
                           (h, w), (kh, kw), stride, padding, dilation, chunks)
        g_out = grad[b:e].to(dtype).permute(0, 2, 3, 1).reshape(k * length, groups, m // groups)
        need_sampled = need_offset or need_mask
        if need_input or need_sampled:
            g_cols = space.get(2, shape)
            torch.bmm(g_out.transpose(0, 1), wr,
                      out=g_cols.view(k * length, groups, -1).transpose(0, 1))
        g_src = torch.zeros_like(src) if need_input else None
        cols, scratch = space.get(0, shape), space.get(1, shape)
        g_y = g_x = g_m = 0
        for i, (dy, dx, rows) in enumerate(sampler.corners):
            weight_c = sampler.weight(dy, dx)
            if need_weight or need_sampled:
                corner = _gather(src, rows, scratch)
                if need_weight and i == 0:
                    torch.mul(corner, weight_c, out=cols)
                elif need_weight:
                    cols.addcmul_(corner, weight_c)
            if need_sampled:
                # Σ over the offset group's channels of grad × corner value: (k, L, og, taps).
                dot = corner.mul_(g_cols).sum((3, 5))
                if need_mask:
                    g_m = g_m + dot * sampler.bilinear(dy, dx)
                if need_offset:
                    ly, lx = sampler.ly, sampler.lx
                    g_y = g_y + dot * ((lx if dx else 1 - lx) * (1 if dy else -1))
                    g_x = g_x + dot * ((ly if dy else 1 - ly) * (1 if dx else -1))
            if need_input:
                torch.mul(g_cols, weight_c, out=scratch)
                g_src.index_add_(0, rows, scratch.view(-1, unit))
        if need_weight:
            g_weight.baddbmm_(g_out.permute(1, 2, 0),
                              cols.view(k * length, groups, -1).transpose(0, 1))
        if need_input:
            g_input[b:e] = _unsource(g_src, k, c, h, w)
        if need_offset:
            if mask is not None:
                g_y, g_x = g_y * sampler.mask, g_x * sampler.mask
            g_offset[b:e] = torch.stack((g_y, g_x), -1).permute(0, 2, 3, 4, 1).reshape(
                k, -1, oh, ow)
        if need_mask:
            g_mask[b:e] = g_m.permute(0, 2, 3, 1).reshape(k, -1, oh, ow)
    if need_weight:
        g_weight = g_weight.view(groups, m // groups, c // groups // unit, taps, unit)
        g_weight = g_weight.transpose(3, 4).reshape(weight.shape).to(weight.dtype)
    return (None if g_input is None else g_input.to(input.dtype),
            None if g_offset is None else g_offset.to(offset.dtype),
            g_weight,
            None if g_mask is None else g_mask.to(mask.dtype))


@torch.library.custom_op(
    "cnngraph::deform_conv2d", mutates_args=(),
    schema="(Tensor input, Tensor offset, Tensor weight, Tensor? bias, Tensor? mask, "
           "int[2] stride, int[2] padding, int[2] dilation) -> Tensor")
def _deform_conv2d_op(input, offset, weight, bias, mask, stride, padding, dilation):
    return _forward(input, offset, weight, bias, mask, stride, padding, dilation)


@_deform_conv2d_op.register_fake
def _(input, offset, weight, bias, mask, stride, padding, dilation):
    _, _, oh, ow = _check(input, offset, weight, bias, mask, stride, padding, dilation)
    return input.new_empty((input.shape[0], weight.shape[0], oh, ow))


def _setup_context(ctx, inputs, output):
    input, offset, weight, bias, mask, stride, padding, dilation = inputs
    ctx.save_for_backward(input, offset, weight, mask)
    ctx.geometry = (stride, padding, dilation)
    ctx.has_bias = bias is not None


def _autograd(ctx, grad):
    input, offset, weight, mask = ctx.saved_tensors
    need = ctx.needs_input_grad
    g_input, g_offset, g_weight, g_mask = _backward(
        grad, input, offset, weight, mask, *ctx.geometry,
        needs=(need[0], need[1], need[2], mask is not None and need[4]))
    g_bias = grad.sum((0, 2, 3)) if ctx.has_bias and need[3] else None
    return g_input, g_offset, g_weight, g_bias, g_mask, None, None, None


_deform_conv2d_op.register_autograd(_autograd, setup_context=_setup_context)


def deform_conv2d(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None = None,
                  stride: Pair = 1, padding: Pair = 0, dilation: Pair = 1,
                  mask: Tensor | None = None) -> Tensor:
    """Deformable convolution with torchvision.ops.deform_conv2d's signature and semantics
    (a mask makes it DCN v2). Raises ValueError naming expected and actual shapes."""
    stride, padding, dilation = (_pair(stride, "stride", 1), _pair(padding, "padding", 0),
                                 _pair(dilation, "dilation", 1))
    _check(input, offset, weight, bias, mask, stride, padding, dilation)
    return torch.ops.cnngraph.deform_conv2d(input, offset, weight, bias, mask, list(stride),
                                            list(padding), list(dilation))


class DeformConv2d(nn.Module):
    """A deformable convolution that predicts its own offsets (and, when `modulated`, its mask).

    `offset_conv` is an nn.Conv2d over the same input with the main convolution's kernel, stride,
    padding and dilation, zero-initialised (training starts as a plain convolution). Its output
    channels are split as follows (the ONNX exporter reproduces this with Slice + Sigmoid):
      - channels [0, 2·og·kH·kW): the offsets, in deform_conv2d's order;
      - modulated only, channels [2·og·kH·kW, 3·og·kH·kW): mask logits, mask = sigmoid(logits).
    `weight` (M, C/groups, kH, kW) and `bias` (M) are initialised like nn.Conv2d's.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: Pair, stride: Pair = 1,
                 padding: Pair = 0, dilation: Pair = 1, groups: int = 1, offset_groups: int = 1,
                 bias: bool = True, modulated: bool = False):
        super().__init__()
        if groups < 1 or in_channels % groups or out_channels % groups:
            raise ValueError(f"DeformConv2d: in_channels={in_channels} and out_channels="
                             f"{out_channels} must be divisible by groups={groups}")
        if offset_groups < 1 or in_channels % offset_groups:
            raise ValueError(f"DeformConv2d: in_channels={in_channels} must be divisible by "
                             f"offset_groups={offset_groups}")
        kh, kw = _pair(kernel_size, "kernel_size", 1)
        self.stride = _pair(stride, "stride", 1)
        self.padding = _pair(padding, "padding", 0)
        self.dilation = _pair(dilation, "dilation", 1)
        self.modulated = modulated
        self.offset_channels = 2 * offset_groups * kh * kw
        self.weight = nn.Parameter(torch.empty(out_channels, in_channels // groups, kh, kw))
        self.bias = nn.Parameter(torch.empty(out_channels)) if bias else None
        predicted = self.offset_channels * 3 // 2 if modulated else self.offset_channels
        self.offset_conv = nn.Conv2d(in_channels, predicted, (kh, kw), self.stride, self.padding,
                                     self.dilation)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))
        if self.bias is not None:
            bound = 1 / math.sqrt(self.weight[0].numel())
            nn.init.uniform_(self.bias, -bound, bound)
        nn.init.zeros_(self.offset_conv.weight)
        nn.init.zeros_(self.offset_conv.bias)

    def forward(self, x: Tensor) -> Tensor:
        predicted = self.offset_conv(x)
        offset, mask = predicted[:, :self.offset_channels], None
        if self.modulated:
            mask = torch.sigmoid(predicted[:, self.offset_channels:])
        return deform_conv2d(x, offset, self.weight, self.bias, self.stride, self.padding,
                             self.dilation, mask)

    def extra_repr(self) -> str:
        m, cg, kh, kw = self.weight.shape
        return (f"in_channels={self.offset_conv.in_channels}, out_channels={m}, "
                f"kernel_size={(kh, kw)}, stride={self.stride}, padding={self.padding}, "
                f"dilation={self.dilation}, modulated={self.modulated}")
