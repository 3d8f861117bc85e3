"""The torch side of the ops: the nn.Module subclasses and functions that `Op.torch` lowers
layers to. Kept apart so that the front end (load, check, show) never imports torch."""
from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ..graph import Node


def init_conv(conv: nn.Module) -> nn.Module:
    """torchvision's ReLU-net convolution init: kaiming-normal (fan_out), zero bias."""
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return conv


class PaddedConv2d(nn.Conv2d):
    """An nn.Conv2d behind an explicit zero pad (for "same" or asymmetric padding); its
    parameters are still `weight` and `bias`."""

    def __init__(self, *args, pads: tuple[int, int, int, int], **kwargs):
        super().__init__(*args, **kwargs)
        top, left, bottom, right = pads
        self.pads = (left, right, top, bottom)  # F.pad's order: last dim first

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(F.pad(x, self.pads))


def make_conv2d(c: int, node: Node, pads: tuple[int, int, int, int]) -> nn.Conv2d:
    a = node.attrs
    common = dict(kernel_size=a["kernel"], stride=a["stride"], dilation=a["dilation"],
                  groups=a["groups"], bias=a["bias"])
    top, left, bottom, right = pads
    if (top, left) == (bottom, right):
        return init_conv(nn.Conv2d(c, a["out"], padding=(top, left), **common))
    return init_conv(PaddedConv2d(c, a["out"], pads=pads, **common))


class TableConv2d(nn.Module):
    """A convolution in which output channel o sees only the input channels table[o] (LeNet-5's
    C3). `weight` holds just the connected kernels, one (kh, kw) per connection, so the module's
    parameter count is the layer's; `dense_weight()` scatters them into the (out, in, kh, kw)
    weight of the equivalent dense convolution (zeros where there is no connection)."""

    def __init__(self, in_channels: int, table: tuple[tuple[int, ...], ...],
                 kernel: tuple[int, int], stride, pads, dilation, bias: bool):
        super().__init__()
        self.in_channels, self.out_channels, self.kernel_size = in_channels, len(table), kernel
        self.stride, self.dilation = stride, dilation
        top, left, bottom, right = pads
        self.pads = (left, right, top, bottom)
        flat = [o * in_channels + i for o, row in enumerate(table) for i in row]
        self.register_buffer("index", torch.tensor(flat), persistent=False)
        self.weight = nn.Parameter(torch.empty(len(flat), *kernel))
        self.bias = nn.Parameter(torch.zeros(len(table))) if bias else None
        fan_out = self.out_channels * kernel[0] * kernel[1]
        nn.init.normal_(self.weight, 0.0, math.sqrt(2.0 / fan_out))

    def dense_weight(self) -> torch.Tensor:
        kh, kw = self.kernel_size
        dense = self.weight.new_zeros(self.out_channels * self.in_channels, kh, kw)
        dense = dense.index_copy(0, self.index, self.weight)
        return dense.view(self.out_channels, self.in_channels, kh, kw)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(F.pad(x, self.pads), self.dense_weight(), self.bias, self.stride, 0,
                        self.dilation)

    def extra_repr(self) -> str:
        return (f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, "
                f"connections={self.weight.shape[0]}")


class GatedConv(nn.Module):
    """y = conv(x) * sigmoid(gate(x)): the gated linear unit over two parallel convolutions."""

    def __init__(self, conv: nn.Conv2d, gate: nn.Conv2d):
        super().__init__()
        self.conv, self.gate = conv, gate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x) * torch.sigmoid(self.gate(x))


class Subsample(nn.Module):
    """LeNet-5's subsampling: y[c] = weight[c] * (sum of a kernel window of x[c]) + bias[c].
    Starts as plain average pooling (weight 1/(kh*kw), bias 0)."""

    def __init__(self, channels: int, kernel: tuple[int, int], stride: tuple[int, int]):
        super().__init__()
        self.kernel, self.stride = kernel, stride
        self.weight = nn.Parameter(torch.full((channels,), 1.0 / math.prod(kernel)))
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        window_sum = F.avg_pool2d(x, self.kernel, self.stride) * math.prod(self.kernel)
        return window_sum * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)



class StochasticDepth(nn.Module):
    """Training: x times a Bernoulli(1 - p) draw per sample ("row") or per batch ("batch"),
    divided by 1 - p when that is positive; drawn as torchvision.ops.stochastic_depth draws
    (`bernoulli_` on an (N, 1, ..., 1) or (1, ..., 1) tensor), so seeded runs agree with it.
    Inference: the identity."""

    def __init__(self, p: float, mode: str):
        super().__init__()
        self.p, self.mode = p, mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        survival = 1.0 - self.p
        size = [x.shape[0] if self.mode == "row" else 1] + [1] * (x.ndim - 1)
        noise = torch.empty(size, dtype=x.dtype, device=x.device).bernoulli_(survival)
        if survival > 0.0:
            noise.div_(survival)
        return x * noise

    def extra_repr(self) -> str:
        return f"p={self.p}, mode={self.mode}"


# --- element-wise functions of add, mul and concat -------------------------------------------
def add(*xs: torch.Tensor) -> torch.Tensor:
    """Sum of tensors that broadcast."""
    out = xs[0]
    for x in xs[1:]:
        out = out + x
    return out


def mul(*xs: torch.Tensor) -> torch.Tensor:
    """Element-wise product of tensors that broadcast."""
    out = xs[0]
    for x in xs[1:]:
        out = out * x
    return out


def concat(*xs: torch.Tensor, dim: int) -> torch.Tensor:
    return torch.cat(xs, dim)


# --- functions of the channel, normalisation and scaling ops ---------------------------------
def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
    """ShuffleNet's shuffle: channels as a (groups, C/groups) matrix, transposed."""
    n, c, h, w = x.shape
    return x.reshape(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class LayerNorm2d(nn.LayerNorm):
    """Layer normalisation over the channels of each pixel of a (N, C, H, W) map (ConvNeXt's
    LayerNorm2d, and its blocks' permute + LayerNorm + permute): an nn.LayerNorm(C) applied in
    (N, H, W, C) order; `weight` and `bias` are (C,)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), self.normalized_shape, self.weight, self.bias,
                         self.eps)
        return x.permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """y = x * weight, one learnt factor per channel (ConvNeXt's layer scale); `weight` is
    (C, 1, 1) as torchvision stores it, and starts at `value`."""

    def __init__(self, channels: int, value: float):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels, 1, 1), value))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight
