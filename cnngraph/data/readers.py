"""Readers for the dataset formats on disk. Each returns a `Dataset` with images as
(N, C, H, W) arrays (uint8 as stored, or float) and int64 labels; fitting the images to a
spec's input is `dataset.fit`'s job. Nothing here runs code from a file: CIFAR's pickles go
through an unpickler that only builds dicts, lists, bytes and numpy arrays."""
from __future__ import annotations

import gzip
import math
import pickle
import zipfile
import zlib
from pathlib import Path

import numpy as np
from ..errors import DataError
from ..files import MAX_DATA_BYTES, read_image
from .dataset import Dataset, split

# --- MNIST / Fashion-MNIST IDX ------------------------------------------------------------
_IDX_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def _open_bytes(path: Path) -> bytes:
    """The file's bytes, gunzipped when it is gzip, and at most MAX_DATA_BYTES of them (a small
    .gz can inflate to any size)."""
    try:
        with open(path, "rb") as f:
            gzipped = f.read(2) == b"\x1f\x8b"
            f.seek(0)
            data = (gzip.GzipFile(fileobj=f) if gzipped else f).read(MAX_DATA_BYTES + 1)
    except (OSError, EOFError, zlib.error) as exc:  # BadGzipFile is an OSError
        raise DataError(f"{path}: cannot read ({exc})") from None
    if len(data) > MAX_DATA_BYTES:
        raise DataError(f"{path}: holds more than {MAX_DATA_BYTES:,} bytes"
                        f"{' once decompressed' if gzipped else ''}, more than cnngraph reads "
                        "into memory")
    return data


def read_idx(path: Path) -> np.ndarray:
    """One IDX file (raw or gzip): magic 0 0 TYPE NDIM, NDIM big-endian int32 sizes, data.
    Every size is checked against the bytes that are really there before anything is made."""
    data = _open_bytes(path)
    if len(data) < 4 or data[:2] != b"\0\0":
        raise DataError(f"{path}: not an IDX file (bad magic number: it must start with two "
                        "zero bytes)")
    if data[2] not in _IDX_TYPES:
        known = ", ".join(f"0x{code:02X}" for code in _IDX_TYPES)
        raise DataError(f"{path}: IDX data type code 0x{data[2]:02X} is unknown (known: {known})")
    ndim, header = data[3], 4 + 4 * data[3]
    if len(data) < header:
        raise DataError(f"{path}: IDX header cut short: {ndim} dimensions need {header} bytes, "
                        f"the file has {len(data)}")
    dims = np.frombuffer(data, ">i4", ndim, 4).tolist()
    if any(d < 0 for d in dims):
        raise DataError(f"{path}: IDX dimensions {dims} include a negative size")
    dtype = np.dtype(_IDX_TYPES[data[2]])
    count = math.prod(dims)  # a Python int: 65536**4 does not wrap around
    promised, present = count * dtype.itemsize, len(data) - header
    if promised != present:
        raise DataError(f"{path}: IDX header promises dimensions {dims} ({promised:,} bytes of "
                        f"data), the file has {present:,} (" + ("truncated?" if promised > present
                                                                else "trailing bytes") + ")")
    array = np.frombuffer(data, dtype, count, header).reshape(dims)
    return array.astype(dtype.newbyteorder("="))


def _idx_pair(images: Path) -> tuple[np.ndarray, np.ndarray]:
    name = images.name.removesuffix(".gz")
    stem = name.replace("images-idx3", "labels-idx1").replace("images.idx3", "labels.idx1")
    labels = next((images.with_name(n) for n in (stem, stem + ".gz")
                   if images.with_name(n).exists()), None)
    if labels is None:
        raise DataError(f"{images}: no labels file {stem} or {stem}.gz next to it")
    x, y = read_idx(images), read_idx(labels)
    if x.ndim != 3 or y.ndim != 1 or len(x) != len(y):
        raise DataError(f"{images}: expected images (N, H, W) and labels (N,), got "
                        f"{x.shape} and {y.shape}")
    if not len(y):
        raise DataError(f"{images}: holds no samples")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{labels}: holds {y.dtype} values; labels must be integer class indices")
    return _pixels(x, images)[:, None], y.astype(np.int64)


MAX_CLASSES = 1 << 20


def _pixels(x: np.ndarray, where: object) -> np.ndarray:
    """Images as stored, if they are numbers a network can take: integers or finite floats."""
    if x.dtype == np.bool_ or not (np.issubdtype(x.dtype, np.integer)
                                   or np.issubdtype(x.dtype, np.floating)):
        raise DataError(f"{where}: images of dtype {x.dtype}; they must be integers (uint8 "
                        "pixels) or floats")
    if np.issubdtype(x.dtype, np.floating) and not np.isfinite(x).all():
        raise DataError(f"{where}: images hold NaN or inf values")
    return x


def _class_names(top: int, where: object) -> list[str]:
    """"0", "1", ... up to the largest label; a label past MAX_CLASSES is damage, not a class."""
    if top >= MAX_CLASSES:
        raise DataError(f"{where}: label {top} is past the {MAX_CLASSES:,} classes cnngraph "
                        "handles; are these the labels?")
    return [str(c) for c in range(top + 1)]


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem.replace("-idx", ".idx")):  # both spellings are in circulation
        for candidate in (folder / name, folder / (name + ".gz")):
            if candidate.exists():
                return candidate
    return None


def read_mnist(path: Path, val_fraction: float) -> Dataset:
    """A folder with train-images-idx3-ubyte[.gz] and friends (t10k-* is the validation set),
    or the path of one images file (its labels file is found by name; the validation set is
    then a seeded split)."""
    if path.is_file():
        x, y = _idx_pair(path)
        return split(x, y, val_fraction, _class_names(int(y.max()), path), str(path))
    train = _find(path, "train-images-idx3-ubyte")
    if train is None:
        raise DataError(f"{path}: no train-images-idx3-ubyte[.gz] in it")
    x, y = _idx_pair(train)
    test = _find(path, "t10k-images-idx3-ubyte")
    classes = _class_names(int(y.max()), path)
    if test is None:
        return split(x, y, val_fraction, classes, str(path))
    x_val, y_val = _idx_pair(test)
    return Dataset(x, y, x_val, y_val, classes, str(path))


# --- CIFAR-10 / CIFAR-100 python batches --------------------------------------------------
_EMPTY = np.zeros(1)
_SAFE_GLOBALS = {
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): __import__("codecs").encode,
    # numpy's array reconstructors, under their numpy 1 and numpy 2 module names
    **{(mod, "_reconstruct"): _EMPTY.__reduce__()[0]
       for mod in ("numpy.core.multiarray", "numpy._core.multiarray")},
    **{(mod, "_frombuffer"): _EMPTY.__reduce_ex__(5)[0]
       for mod in ("numpy.core.numeric", "numpy._core.numeric")},
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Builds containers, bytes and numpy arrays; refuses any other global (no code runs)."""

    def find_class(self, module: str, name: str):
        try:
            return _SAFE_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}") from None


def read_cifar_batch(path: Path) -> dict[str, object]:
    """One CIFAR python batch as a dict with str keys (the originals are Python 2 pickles)."""
    try:
        with open(path, "rb") as f:
            batch = _DataOnlyUnpickler(f, encoding="bytes").load()
    except Exception as exc:  # noqa: BLE001 - a damaged pickle raises many kinds, all "unreadable"
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: not a readable CIFAR batch ({reason})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{path}: not a CIFAR batch (expected a dict)")
    return {k.decode() if isinstance(k, bytes) else k: v for k, v in batch.items()}


def _cifar_arrays(path: Path) -> tuple[np.ndarray, np.ndarray]:
    batch = read_cifar_batch(path)
    labels = batch.get("labels", batch.get("fine_labels"))
    if "data" not in batch or labels is None:
        raise DataError(f"{path}: CIFAR batch without 'data' and 'labels'/'fine_labels'")
    try:
        data, labels = np.asarray(batch["data"]), np.asarray(labels)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{path}: CIFAR data or labels are not arrays ({exc})") from None
    if (data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3 * 32 * 32
            or labels.shape != (len(data),) or not np.issubdtype(labels.dtype, np.integer)):
        raise DataError(f"{path}: CIFAR data must be uint8 (N, 3072) with N integer labels, got "
                        f"{data.dtype} {data.shape} and {labels.dtype} {labels.shape}")
    if not len(data):
        raise DataError(f"{path}: holds no samples")
    return data.reshape(-1, 3, 32, 32), labels.astype(np.int64)


def read_cifar(path: Path) -> Dataset:
    """cifar-10-batches-py (data_batch_1..5, test_batch, batches.meta) or cifar-100-python
    (train, test, meta; the 100 fine labels)."""
    if (path / "data_batch_1").exists():
        train_files = sorted(path.glob("data_batch_*"))
        test_file, meta_file, names_key = path / "test_batch", path / "batches.meta", "label_names"
    else:
        train_files = [path / "train"]
        test_file, meta_file, names_key = path / "test", path / "meta", "fine_label_names"
    parts = [_cifar_arrays(f) for f in train_files]
    x, y = np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])
    if not test_file.exists():
        raise DataError(f"{path}: CIFAR folder without its test batch {test_file.name}")
    x_val, y_val = _cifar_arrays(test_file)
    classes = _class_names(int(max(y.max(), y_val.max())), path)
    if meta_file.exists():
        names = read_cifar_batch(meta_file).get(names_key)
        if isinstance(names, list) and names:
            classes = [n.decode() if isinstance(n, bytes) else str(n) for n in names]
    return Dataset(x, y, x_val, y_val, classes, str(path))


# --- image folder -------------------------------------------------------------------------
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp"}


def _class_dirs(folder: Path) -> list[Path]:
    return sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith("."))


def _read_images(folder: Path, classes: list[str], mode: str,
                 size: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    images, labels = [], []
    for label, name in enumerate(classes):
        for file in sorted((folder / name).iterdir()):
            if file.suffix.lower() not in IMAGE_SUFFIXES:
                continue
            images.append(read_image(file, mode, size, DataError)[0])  # infer's reader too
            labels.append(label)
    if not images:
        raise DataError(f"{folder}: no PNG/JPEG images in its class subfolders")
    x = np.stack(images)
    x = x[:, None] if x.ndim == 3 else x.transpose(0, 3, 1, 2)
    return x, np.asarray(labels, dtype=np.int64)


def read_image_folder(path: Path, channels: int, size: tuple[int, int],
                      val_fraction: float) -> Dataset:
    """One subfolder per class (sorted names are the classes), or train/ and val/ (or test/)
    folders that each hold them. Pillow converts every image to the spec's mode ("L" for one
    channel, "RGB" for three) and resizes it (bilinear) to the spec's H x W as it is read."""
    if channels not in (1, 3):
        raise DataError(f"{path}: image folders feed 1- or 3-channel inputs, the spec has "
                        f"{channels} channels")
    mode = "L" if channels == 1 else "RGB"
    val_dir = next((path / n for n in ("val", "test") if (path / n).is_dir()), None)
    if (path / "train").is_dir() and val_dir is not None:
        classes = [d.name for d in _class_dirs(path / "train")]
        x, y = _read_images(path / "train", classes, mode, size)
        x_val, y_val = _read_images(val_dir, classes, mode, size)
        return Dataset(x, y, x_val, y_val, classes, str(path))
    classes = [d.name for d in _class_dirs(path)]
    x, y = _read_images(path, classes, mode, size)
    return split(x, y, val_fraction, classes, str(path))


# --- .npz ---------------------------------------------------------------------------------
def _nchw(x: np.ndarray, path: Path, key: str) -> np.ndarray:
    """(N,H,W) -> (N,1,H,W); (N,H,W,C) when the last dim is 1, 3 or 4 and dim 1 is not."""
    x = _pixels(x, f"{path}: '{key}'")
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        channels_last = x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4)
        return x.transpose(0, 3, 1, 2) if channels_last else x
    raise DataError(f"{path}: '{key}' must be (N,H,W), (N,H,W,C) or (N,C,H,W), got {x.shape}")


def _labels(y: np.ndarray, n: int, path: Path, key: str) -> np.ndarray:
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{path}: '{key}' must hold {n} labels (shape ({n},)), got {y.shape}")
    if not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: '{key}' holds {y.dtype} values; labels must be integers "
                        f"(class indices): save them with {key}.astype(int)")
    return y.astype(np.int64)


def read_npz(path: Path, val_fraction: float) -> Dataset:
    """Arrays x, y and optionally x_val, y_val and classes (a list of names)."""
    if not zipfile.is_zipfile(path):
        raise DataError(f"{path}: not an .npz archive (write one with numpy.savez(path, x=..., "
                        "y=...))")
    try:
        with np.load(path, allow_pickle=False) as f:
            unpacked = sum(info.file_size for info in f.zip.infolist())
            if unpacked > MAX_DATA_BYTES:  # a small compressed .npz can inflate to any size
                raise DataError(f"{path}: holds {unpacked:,} bytes once unpacked, more than the "
                                f"{MAX_DATA_BYTES:,} cnngraph reads into memory")
            arrays = {k: f[k] for k in f.files}
    except DataError:
        raise
    except Exception as exc:  # noqa: BLE001 - OSError, ValueError (object arrays: never
        # unpickled), BadZipFile, EOFError, zlib.error: all a damaged or foreign file
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DataError(f"{path}: cannot read .npz ({reason})") from None
    if "x" not in arrays or "y" not in arrays:
        raise DataError(f"{path}: a .npz dataset needs arrays 'x' and 'y' (has "
                        f"{', '.join(arrays) or 'none'})")
    x = _nchw(arrays["x"], path, "x")
    y = _labels(arrays["y"], len(x), path, "y")
    top = int(y.max()) if len(y) else 0
    if "x_val" in arrays:
        x_val = _nchw(arrays["x_val"], path, "x_val")
        y_val = _labels(arrays.get("y_val", np.zeros(0)), len(x_val), path, "y_val")
        top = max(top, int(y_val.max()) if len(y_val) else 0)
    classes = ([str(c) for c in np.ravel(arrays["classes"]).tolist()] if "classes" in arrays
               else _class_names(top, path))
    if "x_val" in arrays:
        return Dataset(x, y, x_val, y_val, classes, str(path))
    return split(x, y, val_fraction, classes, str(path))
