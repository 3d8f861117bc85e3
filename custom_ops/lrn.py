"""Local response normalization across and within channels as one torch op:

    cnngraph::local_response_norm(Tensor x, int size, float alpha, float beta, float k,
                                  str region) -> Tensor

For x of shape (N, C, H, W) and S the sum of x² over a window around each element,
`y = x / (k + alpha/W · S)^beta` where W is the window's element count:
  - region="across_channels": `size` channels, W = size (Caffe ACROSS_CHANNELS, PyTorch, ONNX);
    an even size uses PyTorch's window [c - size/2, c + size/2 - 1] (ONNX's is one channel later);
  - region="within_channel": a size×size spatial window in the same channel, zero padded,
    W = size² (Caffe WITHIN_CHANNEL, which has k = 1); size must be odd.
Channels or pixels past the edges count as zeros. float16/bfloat16 are computed in float32.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

REGIONS = ("across_channels", "within_channel")


def _check(x: Tensor, size: int, region: str) -> None:
    if region not in REGIONS:
        raise ValueError(f"local_response_norm: region must be one of {REGIONS}, got {region!r}")
    if x.dim() != 4:
        raise ValueError(f"local_response_norm: x must be 4-D (N, C, H, W), got shape "
                         f"{tuple(x.shape)}")
    if size < 1:
        raise ValueError(f"local_response_norm: size must be >= 1, got {size}")
    if region == "within_channel" and size % 2 == 0:
        raise ValueError(f"local_response_norm: within_channel needs an odd size (a size×size "
                         f"window centred on each pixel), got size={size} for x of shape "
                         f"{tuple(x.shape)}; use size {size - 1} or {size + 1}")


def _window_mean(t: Tensor, size: int, region: str, transposed: bool = False) -> Tensor:
    """Mean of t over each element's window, zeros past the edges. `transposed` gives the
    window mirrored around its centre (the adjoint, used by the backward pass)."""
    if region == "within_channel":
        return F.avg_pool2d(t, size, stride=1, padding=size // 2, count_include_pad=True)
    before, after = size // 2, (size - 1) // 2
    if transposed:
        before, after = after, before
    padded = F.pad(t, (0, 0, 0, 0, before, after)).unsqueeze(1)
    return F.avg_pool3d(padded, (size, 1, 1), stride=1).squeeze(1)


def _compute_dtype(x: Tensor) -> torch.dtype:
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _scale(x: Tensor, size: int, alpha: float, k: float, region: str) -> Tensor:
    return _window_mean(x * x, size, region).mul_(alpha).add_(k)


@torch.library.custom_op(
    "cnngraph::local_response_norm", mutates_args=(),
    schema="(Tensor x, int size, float alpha, float beta, float k, str region) -> Tensor")
def _lrn_op(x, size, alpha, beta, k, region):
    _check(x, size, region)
    xc = x.to(_compute_dtype(x))
    return (xc * _scale(xc, size, alpha, k, region).pow_(-beta)).to(x.dtype)


@_lrn_op.register_fake
def _(x, size, alpha, beta, k, region):
    _check(x, size, region)
    return torch.empty_like(x)


def _setup_context(ctx, inputs, output):
    x, size, alpha, beta, k, region = inputs
    ctx.save_for_backward(x)
    ctx.params = (size, alpha, beta, k, region)


def _autograd(ctx, grad):
    """dy_i/dx_j = δ_ij s_i^-β − 2β·alpha/W · x_i x_j s_i^(-β-1) for j in i's window, so the
    gradient is grad·s^-β − 2β·alpha·x·mean over the mirrored window of (grad·x·s^(-β-1))."""
    (x,) = ctx.saved_tensors
    size, alpha, beta, k, region = ctx.params
    xc, g = x.to(_compute_dtype(x)), grad.to(_compute_dtype(x))
    s = _scale(xc, size, alpha, k, region)
    s_beta = s.pow(-beta)
    t = g * xc * s_beta / s
    back = _window_mean(t, size, region, transposed=True)
    return (g * s_beta - 2 * beta * alpha * xc * back).to(x.dtype), None, None, None, None, None


_lrn_op.register_autograd(_autograd, setup_context=_setup_context)


def local_response_norm(x: Tensor, size: int, alpha: float = 1e-4, beta: float = 0.75,
                        k: float = 1.0, region: str = "across_channels") -> Tensor:
    """Local response normalization of a (N, C, H, W) tensor (see the module docstring)."""
    _check(x, size, region)
    return torch.ops.cnngraph.local_response_norm(x, int(size), float(alpha), float(beta),
                                                  float(k), region)


class LocalResponseNorm(nn.Module):
    """nn.Module form of `local_response_norm` (no parameters)."""

    def __init__(self, size: int, alpha: float = 1e-4, beta: float = 0.75, k: float = 1.0,
                 region: str = "across_channels"):
        super().__init__()
        if region not in REGIONS:
            raise ValueError(f"LocalResponseNorm: region must be one of {REGIONS}, got {region!r}")
        if size < 1 or (region == "within_channel" and size % 2 == 0):
            raise ValueError(f"LocalResponseNorm: size must be >= 1 (odd for within_channel), "
                             f"got {size}")
        self.size, self.alpha, self.beta, self.k, self.region = size, alpha, beta, k, region

    def forward(self, x: Tensor) -> Tensor:
        return local_response_norm(x, self.size, self.alpha, self.beta, self.k, self.region)

    def extra_repr(self) -> str:
        return (f"{self.size}, alpha={self.alpha}, beta={self.beta}, k={self.k}, "
                f"region={self.region!r}")


def lrn_params_from_tensorflow(depth_radius: int, bias: float, alpha: float,
                               beta: float) -> dict:
    """Keyword arguments for `local_response_norm` that reproduce tf.nn.lrn (on the NCHW
    transpose of TF's NHWC input): TF sums 2r+1 channels and does not divide alpha by them."""
    size = 2 * depth_radius + 1
    return {"size": size, "alpha": alpha * size, "beta": beta, "k": bias,
            "region": "across_channels"}
