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
(C·kH·kW·oH·oW elements per image) fits IM2COL_BUDGET_BYTES. Bilinear sampling is linear in the
input, so per chunk it is one sparse matrix S (four bilinear weights per sample, see _Sampler)
applied to a zero-bordered, channels-last copy of the input: one sparse matmul builds the im2col
matrix, a row per output position (gathers and weighted sum fused), and one dense GEMM per conv
group turns it into the output (oneDNN's on CPU, see _linear).
The backward pass is written out: S^T (built by sorting S's entries) scatters the im2col
gradient into the input gradient, a sampled matmul gives the gradient of every entry of S, and
the derivative of the bilinear weights turns those into offset and mask gradients.
float16/bfloat16 inputs are computed in float32.
"""
from __future__ import annotations

import functools
import math
import threading
import warnings
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

#: Upper bound on the im2col buffer of one batch chunk (bytes); the batch is chunked to stay
#: within it (one image at least). The forward holds one such buffer (kept per CPU thread
#: between calls, see _workspace), the backward that one and d(im2col) of the same size, plus
#: the chunk's sampling matrix (at most as large). 32 MiB (four 64-channel 56×56 images)
#: measured faster than 8 MiB, and as fast as 16 MiB, on 1 and 2 threads; past 32 MiB glibc
#: maps every buffer afresh (64 MiB: 1.7× slower).
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


def _compute_dtype(t: Tensor) -> torch.dtype:
    return torch.float32 if t.dtype in (torch.float16, torch.bfloat16) else t.dtype


class _Plan:
    """Shapes of one call. The channels are cut into B blocks of `unit` channels, the largest
    run inside one conv group and one offset group: conv group g owns blocks
    [g·per_group, (g+1)·per_group), and block b samples with offset group
    b // per_offset_group."""

    def __init__(self, input: Tensor, offset: Tensor, weight: Tensor, oh: int, ow: int):
        _, c, self.h, self.w = input.shape
        self.m, cg, kh, kw = weight.shape
        self.groups, self.taps, self.kernel = c // cg, kh * kw, (kh, kw)
        self.og = offset.shape[1] // (2 * self.taps)
        self.unit = math.gcd(cg, c // self.og)
        self.blocks, self.per_group = c // self.unit, cg // self.unit
        self.per_offset_group = c // self.og // self.unit
        self.depth = cg * self.taps  # im2col columns per conv group
        self.oh, self.ow = oh, ow
        self.plane = (self.h + 2) * (self.w + 2)
        self.dtype = _compute_dtype(input)

    def chunk_size(self, n: int) -> int:
        """Images per chunk: the chunk's im2col matrix, and its sampling matrix, each fit
        IM2COL_BUDGET_BYTES (one image at least)."""
        item = torch.finfo(self.dtype).bits // 8
        samples = self.blocks * self.oh * self.ow * self.taps
        cols = samples * self.unit * item
        entries = samples * 4 * (2 * 8 + item)  # column index, sort order, value
        return max(1, min(n, IM2COL_BUDGET_BYTES // max(cols, entries)))

    def weight_matrix(self, weight: Tensor) -> Tensor:
        """(M, C/g, kH, kW) -> (g, M/g, depth): each conv group's outputs against its im2col
        columns, in the im2col column order (block, tap, channel of the block)."""
        w = weight.reshape(self.groups, self.m // self.groups, self.per_group, self.unit,
                           self.taps)
        return w.transpose(3, 4).reshape(self.groups, self.m // self.groups, self.depth)


def _source(x: Tensor, unit: int) -> Tensor:
    """(n, C, H, W) -> (n·B·(H+2)·(W+2), unit): per image and channel block, the pixels of the
    zero-bordered input as rows of `unit` channels (out-of-image samples read the border)."""
    n, c, h, w = x.shape
    rows = x.new_empty(n, c // unit, h + 2, w + 2, unit)
    for border in (rows[:, :, 0], rows[:, :, -1], rows[:, :, :, 0], rows[:, :, :, -1]):
        border.zero_()
    rows[:, :, 1:-1, 1:-1] = x.view(n, c // unit, unit, h, w).permute(0, 1, 3, 4, 2)
    return rows.view(-1, unit)


def _unsource(rows: Tensor, n: int, c: int, h: int, w: int) -> Tensor:
    """Inverse layout of _source, border dropped."""
    unit = rows.shape[1]
    padded = rows.view(n, c // unit, (h + 2) * (w + 2), unit).transpose(2, 3)
    return padded.reshape(n, c, h + 2, w + 2)[:, :, 1:-1, 1:-1]


@functools.lru_cache(maxsize=32)
def _base_grid(oh: int, ow: int, kernel: tuple[int, int], stride: tuple[int, int],
               padding: tuple[int, int], dilation: tuple[int, int], device: torch.device,
               dtype: torch.dtype) -> tuple[Tensor, Tensor]:
    """The undeformed sampling positions (row, column), each (oH·oW, kH·kW): computed once per
    geometry (never written to: the sampler adds the offsets into new tensors)."""
    (kh, kw), taps = kernel, kernel[0] * kernel[1]
    with torch.inference_mode(False):  # cached: usable in and out of inference mode
        tap_y = torch.arange(kh, device=device, dtype=dtype).repeat_interleave(kw) * dilation[0]
        tap_x = torch.arange(kw, device=device, dtype=dtype).repeat(kh) * dilation[1]
        out_y = torch.arange(oh, device=device, dtype=dtype) * stride[0] - padding[0]
        out_x = torch.arange(ow, device=device, dtype=dtype) * stride[1] - padding[1]
        base_y = (out_y[:, None, None] + tap_y).expand(oh, ow, taps).reshape(oh * ow, taps)
        base_x = (out_x[None, :, None] + tap_x).expand(oh, ow, taps).reshape(oh * ow, taps)
    return base_y, base_x


@functools.lru_cache(maxsize=32)
def _row_starts(entries: int, device: torch.device, dtype: torch.dtype) -> Tensor:
    """CSR row starts of S: four entries a row."""
    with torch.inference_mode(False):
        return torch.arange(0, entries + 1, 4, device=device, dtype=dtype)


class _Sampler:
    """The bilinear sampling of one batch chunk as a sparse matrix S.

    Row (image, p, b, k) of S holds the four bilinear weights (times the mask) of tap k at
    output position p, in the columns of the four corner pixels of that image and block in the
    source. So S @ source is the im2col matrix, (n·L, B·taps·unit) with one row per output
    position, in one sparse matmul (the gathers and the weighted sum fused), and
    S^T @ d(im2col) is the scatter-add of the input gradient."""

    def __init__(self, offset: Tensor, mask: Tensor | None, plan: _Plan, stride, padding,
                 dilation):
        n, _, oh, ow = offset.shape
        h, w, taps, og = plan.h, plan.w, plan.taps, plan.og
        length, dev, dt = oh * ow, offset.device, offset.dtype
        base_y, base_x = _base_grid(oh, ow, plan.kernel, tuple(stride), tuple(padding),
                                    tuple(dilation), dev, dt)
        # Everything below is laid out ([corner dims,] n, L, og, taps), the order of S's rows.
        off = offset.view(n, og, taps, 2, length).permute(3, 0, 4, 1, 2)
        # Clamped so far-away samples stay in index range and land on the zero border.
        y = (off[0] + base_y[:, None]).clamp_(-2, h + 1)
        x = (off[1] + base_x[:, None]).clamp_(-2, w + 1)
        y0, x0 = y.floor(), x.floor()
        ly, lx = y - y0, x - x0
        # Bilinear weights per axis, first dim (floor, floor + 1); a corner's is their product.
        # (Corner dims lead while computing: a broadcast over a tiny last dim is slow on CPU.)
        self.wy, self.wx = torch.stack((1 - ly, ly)), torch.stack((1 - lx, lx))
        self.mask = None if mask is None else mask.view(n, og, taps, length).permute(0, 3, 1, 2)
        # int32 indices sort and multiply faster; int64 only for chunks too large for them.
        entries = n * plan.blocks * length * taps * 4
        index = torch.int32 if max(entries, n * plan.blocks * plan.plane) < 2**31 else torch.int64
        # Source pixel rows/columns of the corners (the zero border is row/column -1 and H/W).
        rows = (torch.stack((y0, y0 + 1)).to(index).clamp_(-1, h) + 1) * (w + 2)
        columns = torch.stack((x0, x0 + 1)).to(index).clamp_(-1, w) + 1
        # Entries (n, L, og, taps, corner), corners (dy, dx) = (0, 0), (0, 1), (1, 0), (1, 1),
        # written straight into place (the corner dim last is the order of S's entries).
        wx = self.wx if self.mask is None else self.wx * self.mask
        pixel = torch.empty((*rows.shape[1:], 4), device=dev, dtype=index)
        weight = torch.empty((*rows.shape[1:], 4), device=dev, dtype=dt)
        for corner, (dy, dx) in enumerate(((0, 0), (0, 1), (1, 0), (1, 1))):
            torch.add(rows[dy], columns[dx], out=pixel[..., corner])
            torch.mul(self.wy[dy], wx[dx], out=weight[..., corner])
        if plan.per_offset_group > 1:  # blocks of one offset group share its entries
            which = torch.arange(plan.blocks, device=dev) // plan.per_offset_group
            pixel, weight = pixel[:, :, which], weight[:, :, which]
        # The source rows of (image, block) start at (image·B + block)·plane.
        pixel += torch.arange(0, n * plan.blocks * plan.plane, plan.plane, device=dev,
                              dtype=index).view(n, 1, -1, 1, 1)
        self.columns, self.values = pixel.view(-1), weight.view(-1)
        self.size = (self.columns.numel() // 4, n * plan.blocks * plan.plane)
        self.crow = _row_starts(entries, dev, index)

    def matrix(self) -> Tensor:
        return _csr(self.crow, self.columns, self.values, self.size)

    def transposed(self) -> Tensor:
        """S^T as CSR, built by sorting the entries by column."""
        columns, order = torch.sort(self.columns)
        counts = torch.bincount(columns, minlength=self.size[1])
        crow = torch.cat((counts.new_zeros(1), counts.cumsum(0))).to(columns.dtype)
        rows = order.to(columns.dtype).bitwise_right_shift_(2)  # four entries per row
        return _csr(crow, rows, self.values[order], self.size[::-1])


def _csr(crow: Tensor, columns: Tensor, values: Tensor, size: tuple[int, int]) -> Tensor:
    """A sparse CSR matrix, without torch's warning that CSR tensors are "in beta" (the few CSR
    ops used here, matmul and sampled matmul, are checked by the tests)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Sparse CSR tensor support is in beta")
        return torch.sparse_csr_tensor(crow, columns, values, size, check_invariants=False)


def _sparse_mm(sparse: Tensor, dense: Tensor, out: Tensor) -> None:
    """out = sparse @ dense, as addmm with beta=0 (out's old contents, NaN included, are
    ignored): on CPU this skips the zero fill that torch.mm(..., out=out) does first."""
    torch.addmm(out, sparse, dense, beta=0, out=out)


_kept = threading.local()


def _workspace(like: Tensor, numel: int, dtype: torch.dtype) -> Tensor:
    """An uninitialised buffer of `numel` elements for the im2col matrix of a chunk.

    On CPU each thread keeps its largest one (at most IM2COL_BUDGET_BYTES) for the next call:
    torch's CPU allocator is glibc malloc, which hands buffers this large back to the kernel
    when they are freed, so a fresh one page-faults its way in on every call (measured here:
    forward+backward at N=8, C=64, 56×56 took 70 ms instead of 55 on 2 threads). CUDA's
    caching allocator already reuses memory."""
    size = numel * torch.finfo(dtype).bits // 8
    if like.device.type != "cpu" or size > IM2COL_BUDGET_BYTES:
        return like.new_empty(numel, dtype=dtype)
    _keep_freed_memory()
    kept = getattr(_kept, "buffer", None)
    if kept is None or kept.dtype != dtype or kept.numel() < numel:
        _kept.buffer = None  # the old one goes before the larger one comes
        with torch.inference_mode(False):  # else a later call outside it may not write to it
            kept = _kept.buffer = like.new_empty(numel, dtype=dtype)
    return kept[:numel]


@functools.cache
def _keep_freed_memory() -> None:
    """Allocate and free one block just under 32 MiB, once per process.

    glibc's malloc returns freed memory at the top of its heap to the kernel once more than
    M_TRIM_THRESHOLD is free there; that threshold starts at 128 KiB and follows twice the
    largest mmap-ed block freed so far, up to 64 MiB (mallopt(3), "dynamic mmap threshold").
    This op's per-chunk temporaries (d(im2col), the sampling matrix, ...) come to ~2x the im2col
    buffer, so at a 32 MiB budget each chunk gave its memory back and the next one faulted it
    in again (~15,000 page faults per forward+backward at N=8, C=64, 56x56; d(im2col)'s GEMM
    ran 3x slower). One freed block at the cap sets the threshold to 64 MiB at once: what glibc
    would do by itself after any such free. Elsewhere (other allocators) it is one alloc/free."""
    block = torch.empty((32 * 2**20 - 2**16) // 4, dtype=torch.float32)
    del block


def _linear(a: Tensor, w: Tensor, bias: Tensor | None = None) -> Tensor:
    """a @ w.T (+ bias) for 2-D, possibly strided, a and w.

    On CPU in float32 this is oneDNN's matmul (the kernel torch.compile's CPU backend uses for
    linear layers): on this project's 2-core AMD test machine it runs these shapes at 170-230
    GFLOP/s per core against 80-90 for torch.matmul's MKL sgemm. Only for a `w` that is dense
    (or its transpose is): a column slice of the im2col matrix as `w` (the weight gradient of a
    grouped convolution) takes oneDNN's reference path, 500x slower. Elsewhere, F.linear."""
    if (_ONEDNN_LINEAR and a.device.type == "cpu" and a.dtype == w.dtype == torch.float32
            and 1 in a.stride() and (w.is_contiguous() or w.t().is_contiguous())):
        return torch.ops.mkldnn._linear_pointwise(a, w, bias, "none", [], "")
    return F.linear(a, w, bias)


_ONEDNN_LINEAR = torch.backends.mkldnn.is_available() and hasattr(torch.ops.mkldnn,
                                                                   "_linear_pointwise")


def _forward(input: Tensor, offset: Tensor, weight: Tensor, bias: Tensor | None,
             mask: Tensor | None, stride, padding, dilation) -> Tensor:
    groups, _, oh, ow = _check(input, offset, weight, bias, mask, stride, padding, dilation)
    plan = _Plan(input, offset, weight, oh, ow)
    n, c, dtype, m, length = input.shape[0], input.shape[1], plan.dtype, plan.m, oh * ow
    depth, mg = plan.depth, m // groups
    weights = plan.weight_matrix(weight.to(dtype))
    biases = None if bias is None else bias.to(dtype).view(groups, mg)
    out = input.new_empty((n, m, length), dtype=dtype)
    step = plan.chunk_size(n)
    space = _workspace(input, step * length * plan.taps * c, dtype)  # im2col, per chunk
    for b in range(0, n, step):
        e = min(n, b + step)
        sampler = _Sampler(offset[b:e].to(dtype), None if mask is None else mask[b:e].to(dtype),
                           plan, stride, padding, dilation)
        cols = space[:(e - b) * length * plan.taps * c].view(-1, plan.unit)
        _sparse_mm(sampler.matrix(), _source(input[b:e].to(dtype), plan.unit), cols)
        cols = cols.view((e - b) * length, groups * depth)  # a row per (image, position)
        for g in range(groups):
            y = _linear(cols[:, g * depth:(g + 1) * depth], weights[g],
                        None if biases is None else biases[g])
            out[b:e, g * mg:(g + 1) * mg] = y.view(e - b, length, mg).transpose(1, 2)
    return out.view(n, m, oh, ow).to(input.dtype)


def _backward(grad: Tensor, input: Tensor, offset: Tensor, weight: Tensor, mask: Tensor | None,
              stride, padding, dilation, needs: Sequence[bool]):
    """Gradients for (input, offset, weight, mask); None where not needed.

    With S the sampling matrix (see _Sampler), im2col = S @ source and out = im2col @ W, so
    d(im2col) = dout @ W^T; the input gradient is S^T @ d(im2col), the weight gradient
    im2col^T @ dout, and the gradient of each entry of S is <d(im2col) row, source row>, a
    sampled matmul, which the chain rule through the bilinear weights (and the mask) turns into
    the offset and mask gradients."""
    need_input, need_offset, need_weight, need_mask = needs
    n, c, h, w = input.shape
    oh, ow = grad.shape[2:]
    plan = _Plan(input, offset, weight, oh, ow)
    dtype, groups, length, depth = plan.dtype, plan.groups, oh * ow, plan.depth
    mg = plan.m // groups
    weights = plan.weight_matrix(weight.to(dtype))
    g_input = torch.empty_like(input, dtype=dtype) if need_input else None
    g_offset = torch.empty_like(offset, dtype=dtype) if need_offset else None
    g_mask = torch.empty_like(mask, dtype=dtype) if need_mask else None
    g_weights = torch.zeros_like(weights) if need_weight else None
    step = plan.chunk_size(n)
    space = _workspace(input, step * length * depth * groups, dtype)  # im2col, per chunk
    for b in range(0, n, step):
        e = min(n, b + step)
        k, rows = e - b, (e - b) * length
        src = _source(input[b:e].to(dtype), plan.unit)
        sampler = _Sampler(offset[b:e].to(dtype), None if mask is None else mask[b:e].to(dtype),
                           plan, stride, padding, dilation)
        # dout as a row per (image, position), (rows, M), and transposed, (M, rows): plain
        # copies (also of the expanded gradient of a .sum(), a stride-0 view)
        g_out = grad[b:e].to(dtype).reshape(k, plan.m, length)
        g_out, g_out_t = (g_out.transpose(1, 2).contiguous().view(rows, -1),
                          g_out.transpose(0, 1).contiguous().view(plan.m, rows)
                          if need_weight else None)
        if need_input or need_offset or need_mask:
            if groups == 1:
                g_cols = _linear(g_out, weights[0].t())
            else:
                g_cols = space[:rows * groups * depth].view(rows, groups * depth)
                for g in range(groups):
                    g_cols[:, g * depth:(g + 1) * depth] = _linear(
                        g_out[:, g * mg:(g + 1) * mg], weights[g].t())
            g_cols = g_cols.view(-1, plan.unit)  # the rows of S
            if need_input:
                g_input[b:e] = _unsource(sampler.transposed() @ g_cols, k, c, h, w)
            if need_offset or need_mask:
                d_entry = torch.sparse.sampled_addmm(sampler.matrix(), g_cols, src.t(), beta=0)
                _offset_mask_grads(d_entry.values(), sampler, plan, k, mask is not None,
                                   g_offset[b:e] if need_offset else None,
                                   g_mask[b:e] if need_mask else None)
            del g_cols
        if need_weight:
            cols = space[:rows * groups * depth]
            _sparse_mm(sampler.matrix(), src, cols.view(-1, plan.unit))
            cols = cols.view(rows, groups * depth)
            for g in range(groups):
                g_weights[g] += _linear(g_out_t[g * mg:(g + 1) * mg],
                                        cols[:, g * depth:(g + 1) * depth].t())
    g_weight = None
    if need_weight:
        g_weight = g_weights.view(groups, mg, plan.per_group, plan.taps, plan.unit)
        g_weight = g_weight.transpose(3, 4).reshape(weight.shape).to(weight.dtype)
    return (None if g_input is None else g_input.to(input.dtype),
            None if g_offset is None else g_offset.to(offset.dtype),
            g_weight,
            None if g_mask is None else g_mask.to(mask.dtype))


def _offset_mask_grads(d_entry: Tensor, sampler: _Sampler, plan: _Plan, k: int, masked: bool,
                       g_offset: Tensor | None, g_mask: Tensor | None) -> None:
    """Offset and mask gradients of one chunk (written into g_offset, g_mask) from the
    gradients of the sampling matrix entries (n, L, B, taps, 4): an entry is
    wy[dy]·wx[dx]·mask, with wy = (1 - ly, ly) and ly = y - floor(y), so d/dy moves through
    wy only, as (-1, +1)."""
    # Blocks of one offset group add up; corner dims first: (dy, dx, n, L, og, taps).
    length = plan.oh * plan.ow
    d = d_entry.view(k, length, plan.og, plan.per_offset_group, plan.taps, 2, 2)
    d = d.squeeze(3) if plan.per_offset_group == 1 else d.sum(3)
    d = d.permute(4, 5, 0, 1, 2, 3).contiguous()
    wy, wx = sampler.wy, sampler.wx
    along_x = (d * wx).sum(1)  # (dy, ...): sum over dx of d·wx[dx]
    if g_mask is not None:  # (n, L, og, taps) -> (n, og, taps, L)
        g_m = (along_x * wy).sum(0)
        g_mask.copy_(g_m.permute(0, 2, 3, 1).reshape(g_mask.shape))
    if g_offset is not None:  # (2, n, L, og, taps) -> (n, og, taps, 2, L)
        along_y = (d * wy[:, None]).sum(0)  # (dx, ...): sum over dy of d·wy[dy]
        g_yx = torch.stack((along_x[1] - along_x[0], along_y[1] - along_y[0]))
        if masked:
            g_yx *= sampler.mask
        g_offset.copy_(g_yx.permute(1, 3, 4, 0, 2).reshape(g_offset.shape))


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
