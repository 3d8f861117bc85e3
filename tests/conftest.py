"""Shared test data."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest


@pytest.fixture(scope="session")
def bright_thirds(tmp_path_factory) -> Path:
    """tiny.npz: 240 8x8 uint8 images, 3 classes = which third of the image is bright, so a
    3-epoch run of a tiny net learns it and two runs can be compared bit for bit."""
    path = tmp_path_factory.mktemp("data") / "tiny.npz"
    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    x = rng.integers(0, 60, (240, 8, 8))
    for i, label in enumerate(y):
        x[i, :, 3 * label:3 * label + 2] += 150
    np.savez(path, x=x.astype(np.uint8), y=y)
    return path
