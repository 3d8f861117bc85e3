"""Batch augmentation on normalised (N, C, H, W) tensors, drawn from an explicit generator
so that a resumed run draws the same crops and flips."""
from __future__ import annotations

import torch
import torch.nn.functional as F

AUGMENTATIONS = ("crop", "flip")


def random_crop(x: torch.Tensor, pad: int, generator: torch.Generator) -> torch.Tensor:
    """Zero-pad by `pad` on every side, then cut a random H×W window per sample."""
    n, c, h, w = x.shape
    padded = F.pad(x, (pad, pad, pad, pad))
    top = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    left = torch.randint(0, 2 * pad + 1, (n,), generator=generator)
    rows = (top[:, None] + torch.arange(h))[:, None, :, None]
    cols = (left[:, None] + torch.arange(w))[:, None, None, :]
    return padded[torch.arange(n)[:, None, None, None], torch.arange(c)[None, :, None, None],
                  rows, cols]


def random_flip(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Mirror a random half of the samples left-right."""
    flip = torch.rand(x.shape[0], generator=generator) < 0.5
    return torch.where(flip[:, None, None, None], x.flip(-1), x)


def augment(x: torch.Tensor, names: tuple[str, ...] | list[str],
            generator: torch.Generator) -> torch.Tensor:
    if "crop" in names:
        x = random_crop(x, max(1, x.shape[-1] // 8), generator)
    if "flip" in names:
        x = random_flip(x, generator)
    return x
