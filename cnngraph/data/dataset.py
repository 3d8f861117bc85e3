"""A dataset in memory, and the rule that brings it to a spec's input.

The rule (stated in docs/training.md), applied batch by batch while training:
- channels: equal → kept; 1 → C by replication; anything else is an error (convert first);
- size: equal → kept; smaller by at most `PAD_LIMIT` pixels in both H and W → zero-padded,
  centred (MNIST's 28×28 into LeNet's 32×32, as LeCun did); otherwise bilinear resize
  (antialiased when shrinking) to H×W;
- values: uint8 pixels are divided by 255; float data is taken as given (expected in [0, 1]);
- normalisation: per-channel mean and std of the training set after the two steps above.
"""
from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import DataError

PAD_LIMIT = 8
SPLIT_SEED = 0  # the validation split does not move with the training seed


@dataclass
class Dataset:
    """Images (N, C, H, W), uint8 or float32, and int64 labels; `source` names it in messages."""

    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    classes: list[str]
    source: str

    @property
    def pixel_scale(self) -> float:
        """What one stored unit is worth: 1/255 for uint8 images, 1 for float."""
        return 1 / 255 if self.x_train.dtype == np.uint8 else 1.0


def split(x: np.ndarray, y: np.ndarray, val_fraction: float, classes: list[str],
          source: str) -> Dataset:
    """A seeded (SPLIT_SEED) random split of `val_fraction` of the samples for validation."""
    if len(x) < 2:
        raise DataError(f"{source}: needs at least 2 samples, has {len(x)}")
    order = np.random.default_rng(SPLIT_SEED).permutation(len(x))
    n_val = min(len(x) - 1, max(1, round(len(x) * val_fraction)))
    val, train = order[:n_val], order[n_val:]
    return Dataset(x[train], y[train], x[val], y[val], classes, source)


def check(dataset: Dataset, input_shape: tuple[int, int, int], num_classes: int) -> Dataset:
    """The dataset if it can feed the spec (labels in range, channels that fit), with class
    names for every output; else a DataError naming the fix. Pixels are left as stored."""
    source = dataset.source
    for y in (dataset.y_train, dataset.y_val):
        if len(y) and y.min() < 0:
            raise DataError(f"{source}: labels must be class indices ≥ 0, found {y.min()}; "
                            "number the classes 0, 1, 2, …")
        if len(y) and y.max() >= num_classes:
            raise DataError(f"{source}: labels run from {y.min()} to {y.max()} but the spec has "
                            f"{num_classes} classes; choose a spec with at least {y.max() + 1} "
                            "outputs")
    if len(dataset.y_train) == 0 or len(dataset.y_val) == 0:
        raise DataError(f"{source}: empty training or validation set")
    c, channels = input_shape[0], dataset.x_train.shape[1]
    if channels not in (c, 1):
        raise DataError(f"{source}: images have {channels} channels but the spec's input has "
                        f"{c}; convert them to {c}-channel images (only 1-channel images are "
                        "replicated to C channels automatically)")
    classes = list(dataset.classes) + [str(i) for i in range(len(dataset.classes), num_classes)]
    return replace(dataset, classes=classes[:num_classes])


def to_input(x: torch.Tensor, input_shape: tuple[int, int, int]) -> torch.Tensor:
    """A float batch (N, C, h, w) brought to (N, *input_shape) by the rule above (channels
    already checked). The trainer applies it batch by batch, so the data stays small."""
    c, h, w = input_shape
    if x.shape[1] != c:
        x = x.expand(-1, c, -1, -1)
    xh, xw = x.shape[2:]
    if (xh, xw) == (h, w):
        return x
    if xh <= h and xw <= w and h - xh <= PAD_LIMIT and w - xw <= PAD_LIMIT:
        top, left = (h - xh) // 2, (w - xw) // 2
        return F.pad(x, (left, w - xw - left, top, h - xh - top))
    return F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False,
                         antialias=xh > h or xw > w)


def _fit_images(x: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    out = []
    for chunk in np.array_split(x, max(1, len(x) // 1024)):
        t = to_input(torch.from_numpy(np.ascontiguousarray(chunk)).float(), shape)
        if x.dtype == np.uint8:
            t = t.round().clamp(0, 255).to(torch.uint8)
        out.append(t.numpy())
    return np.concatenate(out)


def fit(dataset: Dataset, input_shape: tuple[int, int, int], num_classes: int) -> Dataset:
    """The dataset checked and its images brought to `input_shape` (C, H, W) as arrays."""
    dataset = check(dataset, input_shape, num_classes)
    dtype = np.uint8 if dataset.x_train.dtype == np.uint8 else np.float32
    return replace(dataset, x_train=_fit_images(dataset.x_train.astype(dtype), input_shape),
                   x_val=_fit_images(dataset.x_val.astype(dtype), input_shape))


def channel_stats(x: np.ndarray, scale: float,
                  input_shape: tuple[int, int, int]) -> tuple[list[float], list[float]]:
    """Per-channel mean and std of the images `x * scale` brought to `input_shape`, in float64,
    chunk by chunk."""
    total = np.zeros(input_shape[0])
    squares = np.zeros(input_shape[0])
    for chunk in np.array_split(x, max(1, len(x) // 1024)):
        c = to_input(torch.from_numpy(np.ascontiguousarray(chunk)).float(), input_shape)
        c = c.double().numpy() * scale
        total += c.sum(axis=(0, 2, 3))
        squares += (c * c).sum(axis=(0, 2, 3))
    count = len(x) * input_shape[1] * input_shape[2]
    mean = total / count
    std = np.sqrt(np.maximum(squares / count - mean * mean, 0.0))
    return mean.tolist(), [s if s > 1e-6 else 1.0 for s in std.tolist()]
