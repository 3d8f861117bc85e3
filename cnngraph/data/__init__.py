"""Datasets: the embedded glyphs and readers for MNIST IDX, CIFAR batches, image folders and
.npz files, all loaded into memory and brought to a spec's input by one documented rule."""
from __future__ import annotations

import re
from pathlib import Path

from ..errors import DataError
from .dataset import Dataset, channel_stats, check, fit, split, to_input
from .glyphs import VARIANTS as GLYPH_VARIANTS, make_glyphs
from .readers import read_cifar, read_image_folder, read_mnist, read_npz

GLYPHS_TRAIN, GLYPHS_VAL = 20_000, 2_000
GLYPHS_MAX = 1_000_000          # samples a recorded glyphs name may ask for (32x32 float32: 4 GiB)
# The name glyphs() gives a non-default set (as `cnngraph demo` records it in a run's
# config.json), read back so that the run's data can be named again (export --int8 of a run).
GLYPHS_NAME = re.compile(r"(\w+)\(train=(\d{1,7}), val=(\d{1,7}), seed=(\d{1,10})\)")
FORMATS = ("glyphs, glyphs16 (embedded), a .npz file, an MNIST IDX folder or images file, "
           "a CIFAR-10/100 python folder, an image folder (one subfolder per class)")


def glyphs(variant: str = "glyphs", train: int = GLYPHS_TRAIN, val: int = GLYPHS_VAL,
           seed: int = 0) -> Dataset:
    """The embedded dataset: `train` + `val` distinct glyph samples from one seed."""
    x, y, classes = make_glyphs(train + val, seed, variant)
    default = (train, val, seed) == (GLYPHS_TRAIN, GLYPHS_VAL, 0)
    name = variant if default else f"{variant}(train={train}, val={val}, seed={seed})"
    return Dataset(x[:train], y[:train], x[train:], y[train:], classes, name)


def load_data(source: str | Path, input_shape: tuple[int, int, int],
              val_fraction: float = 0.1) -> Dataset:
    """Read `source` (a glyph variant name or a path; the format is recognised from the
    files) as it is stored; `input_shape` only steers image-folder decoding."""
    if str(source) in GLYPH_VARIANTS:
        return glyphs(str(source))
    named = GLYPHS_NAME.fullmatch(str(source))
    if named and named[1] in GLYPH_VARIANTS:
        train, val, seed = (int(v) for v in named.groups()[1:])
        if not 1 <= train + val <= GLYPHS_MAX or seed >= 2 ** 32:
            raise DataError(f"dataset '{source}': at most {GLYPHS_MAX:,} samples "
                            "and a seed below 2**32")
        return glyphs(named[1], train, val, seed)
    path = Path(source)
    if not path.exists():
        raise DataError(f"dataset '{source}' not found: give one of {FORMATS}")
    if path.is_file():
        if path.suffix == ".npz":
            return read_npz(path, val_fraction)
        if "idx3" in path.name:
            return read_mnist(path, val_fraction)
        raise DataError(f"{path}: unknown dataset format; give one of {FORMATS}")
    names = {p.name for p in path.iterdir()}
    if any(n.startswith(("train-images-idx3", "train-images.idx3")) for n in names):
        return read_mnist(path, val_fraction)
    if "data_batch_1" in names or {"train", "test", "meta"} <= names and (path / "meta").is_file():
        return read_cifar(path)
    if any(p.is_dir() for p in path.iterdir()):
        return read_image_folder(path, input_shape[0], input_shape[1:], val_fraction)
    raise DataError(f"{path}: unknown dataset format; give one of {FORMATS}")


__all__ = ["Dataset", "DataError", "load_data", "glyphs", "make_glyphs", "check", "fit",
           "to_input", "split",
           "channel_stats", "read_mnist", "read_cifar", "read_npz", "read_image_folder"]
