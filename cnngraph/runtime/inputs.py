"""What a model expects, read from the metadata the exporter stores in it, and the loading of
user files (images, .npy, .npz) into batches that fit it.

Image rule (the same as training's image-folder reader, cnngraph/data/readers.py): Pillow
decodes the file, converts it to "L" (1 channel) or "RGB" (3 channels), resizes it bilinearly to
H x W when its size differs, scales the pixels to [0, 1] and normalises them with the model's
`cnngraph.normalize` mean and std. Arrays: uint8 arrays are pixels and get the same scaling and
normalisation; float arrays are taken as pixels already in [0, 1] and get the same
normalisation (training's rule, cnngraph/data/dataset.py: uint8 / 255, float as given, then
(x - mean) / std), so a uint8 image and the same image as float32 / 255 predict the same.
Both are (C, H, W) or (N, C, H, W). A model whose `cnngraph.channel_order` is BGR (Caffe's nets)
gets an image's channels reversed after decoding; arrays are taken in the model's order.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..files import MAX_DATA_BYTES

log = logging.getLogger("cnngraph.runtime")
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


@dataclass(frozen=True)
class ModelMeta:
    """The `cnngraph.*` metadata of an exported model (all optional for foreign models).
    `input_shape`, `mean` and `std` describe a single-input model's input; `inputs` holds one
    ModelMeta per input (name -> its shape, mean and std), which `for_input` picks."""
    input_shape: tuple[int, ...] | None = None      # C, H, W
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    classes: tuple[str, ...] | None = None
    spec: dict | None = None
    version: str | None = None
    extra: dict = field(default_factory=dict)
    inputs: dict[str, ModelMeta] = field(default_factory=dict)
    channel_order: str = "RGB"  # of 3-channel images: BGR for Caffe's nets (images load as RGB)

    @classmethod
    def from_props(cls, props: dict[str, str], where: str = "model") -> ModelMeta:
        def load(key: str):
            if key not in props:
                return None
            try:
                return json.loads(props[key])
            except json.JSONDecodeError:
                raise InputError(f"{where}: metadata {key} is not JSON: {props[key][:80]!r}") from None
        layout = props.get("cnngraph.input_layout", "NCHW")
        if layout != "NCHW":
            raise InputError(f"{where}: input layout {layout} is not supported (NCHW only)")
        shape, norm, classes = load("cnngraph.input_shape"), load("cnngraph.normalize"), load("cnngraph.classes")
        order = props.get("cnngraph.channel_order", "RGB")
        if order not in ("RGB", "BGR"):
            raise InputError(f"{where}: metadata cnngraph.channel_order is {order[:20]!r}, "
                             "not RGB or BGR")
        norm = norm or {}
        inputs = _inputs_meta(load("cnngraph.inputs"), where)
        if len(inputs) == 1 and shape is None:  # a model that records only cnngraph.inputs
            (only,) = inputs.values()
            shape, norm = only.input_shape, {"mean": only.mean, "std": only.std}
        return cls(input_shape=tuple(shape) if shape else None,
                   mean=tuple(norm["mean"]) if norm.get("mean") else None,
                   std=tuple(norm["std"]) if norm.get("std") else None,
                   classes=tuple(classes) if classes else None,
                   spec=load("cnngraph.spec"), version=props.get("cnngraph.version"),
                   extra={k: v for k, v in props.items() if not k.startswith("cnngraph.")},
                   inputs=inputs, channel_order=order)

    def for_input(self, name: str) -> ModelMeta:
        """The metadata of input `name`: its own entry of `cnngraph.inputs`, or for a model
        exported before that key (single input) this one."""
        if not self.inputs:
            return self
        return replace(self.inputs.get(name, ModelMeta()), classes=self.classes, spec=self.spec,
                       version=self.version, extra=self.extra, inputs=self.inputs,
                       channel_order=self.channel_order)


def _inputs_meta(entries, where: str) -> dict[str, ModelMeta]:
    """`cnngraph.inputs` ([{name, shape, mean?, std?}, ...]) as name -> ModelMeta."""
    if entries is None:
        return {}

    def numbers(value, ints: bool) -> bool:
        kinds = int if ints else (int, float)
        return isinstance(value, list) and all(
            isinstance(v, kinds) and not isinstance(v, bool) for v in value)

    out = {}
    for entry in entries if isinstance(entries, list) else [entries]:
        if not (isinstance(entry, dict) and isinstance(entry.get("name"), str)
                and numbers(entry.get("shape"), True)
                and all(numbers(entry.get(k, []), False) for k in ("mean", "std"))):
            raise InputError(f"{where}: metadata cnngraph.inputs is malformed (want a list of "
                             f"{{name, shape, mean, std}}): {str(entries)[:80]!r}")
        out[entry["name"]] = ModelMeta(input_shape=tuple(entry["shape"]),
                                       mean=tuple(entry["mean"]) if entry.get("mean") else None,
                                       std=tuple(entry["std"]) if entry.get("std") else None)
    return out


def normalize(pixels: np.ndarray, meta: ModelMeta) -> np.ndarray:
    """Pixels (N, C, H, W), uint8 or floats already in [0, 1] -> float32 in [0, 1], then
    (x - mean) / std per channel."""
    x = pixels.astype(np.float32) / (255.0 if pixels.dtype == np.uint8 else 1.0)
    channels = x.shape[1]
    for name, values in (("mean", meta.mean), ("std", meta.std)):
        if values is not None and len(values) not in (1, channels):
            raise InputError(f"model metadata normalize.{name} has {len(values)} values for "
                             f"{channels} channels")
    if meta.mean is not None:
        x -= np.asarray(meta.mean, np.float32).reshape(1, -1, 1, 1)
    if meta.std is not None:
        x /= np.asarray(meta.std, np.float32).reshape(1, -1, 1, 1)
    return x


def load_image(path: Path, shape: tuple[int, int, int], channel_order: str = "RGB") -> np.ndarray:
    """One image file -> uint8 (C, H, W) following the image rule above (the shared reader,
    cnngraph.files.read_image), its 3 channels in `channel_order` (BGR: reversed, for Caffe's
    nets); each conversion beyond a lossless decode is logged as a note."""
    from ..files import read_image
    channels, height, width = shape
    modes = {1: "L", 3: "RGB", 4: "RGBA"}
    if channels not in modes:
        raise InputError(f"{path}: images can feed 1-, 3- or 4-channel inputs; the model takes "
                         f"{channels} channels (pass a .npy instead)")
    pixels, notes = read_image(path, modes[channels], (height, width))
    for note in notes:
        log.warning("note: %s: %s", path, note)
    if pixels.ndim == 2:
        return pixels[None]
    chw = pixels.transpose(2, 0, 1)
    if channel_order == "BGR" and channels == 3:
        log.warning("note: %s: RGB -> BGR (the model's channel order)", path)
        return chw[::-1].copy()
    return chw


def _check_polarity(path: Path, pixels: np.ndarray, meta: ModelMeta) -> None:
    """Warn about an image whose brightness is the mirror of the training images' (the model's
    normalize mean): a dark digit on a light background fed to a model trained on MNIST's
    light-on-dark digits is confidently misread. Only warned: the image is fed as it is."""
    if not meta.mean:
        return
    trained, seen = float(np.mean(meta.mean)), float(pixels.mean()) / 255
    if abs(seen - trained) > 0.4 and abs(1 - seen - trained) < 0.2:
        log.warning("warning: %s: mean brightness %.2f, where the model's training images "
                    "average %.2f: inverted (dark on light where it learned light on dark, or "
                    "the reverse)? invert it if so (PIL.ImageOps.invert)", path, seen, trained)


def _as_batch(array: np.ndarray, where: str, expected: tuple[int, ...] | None) -> np.ndarray:
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        hint = ("; add the channel axis: a[None] for one sample, a[:, None] for a batch"
                if array.ndim == 2 and expected is not None and expected[0] == 1 else "")
        raise InputError(f"{where}: expected an array of shape (C, H, W) or (N, C, H, W), got "
                         f"shape {array.shape}{hint}")
    if len(array) == 0:
        raise InputError(f"{where}: holds no samples (shape {array.shape})")
    if expected is not None and tuple(array.shape[1:]) != tuple(expected):
        channels_last = (*array.shape[1:][2:], *array.shape[1:][:2])
        hint = ("; it looks channels-last (H, W, C): transpose it with "
                "a.transpose(0, 3, 1, 2) (or a.transpose(2, 0, 1) for one sample)"
                if channels_last == tuple(expected) else "")
        raise InputError(f"{where}: each sample has shape {tuple(array.shape[1:])}, the model "
                         f"expects {tuple(expected)} (C, H, W){hint}")
    return array


def _array_input(array: np.ndarray, where: str, meta: ModelMeta,
                 expected: tuple[int, ...] | None) -> np.ndarray:
    if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
        raise InputError(f"{where}: dtype {array.dtype} is neither uint8 pixels nor floats")
    batch = _as_batch(array, where, expected)
    if array.dtype == np.uint8:  # said as the image notes are: what was done to the values
        log.warning("note: %s: uint8 pixels, divided by 255", where)
    elif array.dtype != np.float32:
        log.warning("note: %s: %s -> float32", where, array.dtype)
    if array.dtype != np.uint8:
        finite = np.isfinite(batch)
        if not finite.all():
            bad = np.flatnonzero(~finite.reshape(len(batch), -1).all(axis=1)).tolist()
            log.warning("warning: %s: %d NaN or inf value(s), in sample(s) %s%s", where,
                        int((~finite).sum()), bad[:10], " ..." if len(bad) > 10 else "")
        if finite.any():
            low, high = float(batch[finite].min()), float(batch[finite].max())
            if low < -0.01 or high > 1.01:
                log.warning("warning: %s: float values span [%.3g, %.3g]; float arrays are read "
                            "as pixels in [0, 1] and normalised with the model's mean/std, so "
                            "pass raw pixels (uint8, or floats / 255), not normalised ones",
                            where, low, high)
    return normalize(batch, meta)


def load_inputs(paths: list[Path], meta: ModelMeta, input_name: str,
                expected: tuple[int, ...] | None) -> tuple[np.ndarray, list[str]]:
    """Files -> one float32 batch (N, C, H, W) for the model's single input, and a label per
    sample (the file name, with an index for files that hold several samples)."""
    batches, labels = [], []
    for path in paths:
        path = Path(path)
        if path.is_dir():
            raise InputError(f"{path}: is a directory; pass the image or array files in it")
        if not path.is_file():
            raise InputError(f"{path}: no such file")
        suffix = path.suffix.lower()
        if suffix in IMAGE_SUFFIXES:
            if expected is None:
                raise InputError(f"{path}: the model has no cnngraph.input_shape metadata, so "
                                 f"images cannot be resized for it; pass a .npy")
            pixels = load_image(path, tuple(expected), meta.channel_order)
            _check_polarity(path, pixels, meta)
            batch = normalize(pixels[None], meta)
        elif suffix in (".npy", ".npz"):
            batch = _array_input(_read_array(path, input_name), str(path), meta, expected)
        else:
            raise InputError(f"{path}: unsupported input file (use an image, .npy or .npz)")
        batches.append(batch)
        labels += [path.name] if len(batch) == 1 else [f"{path.name}[{i}]" for i in range(len(batch))]
    if not batches:
        raise InputError("no input files given")
    return np.concatenate(batches), labels


def _read_numpy(path: Path, pick) -> np.ndarray | dict[str, np.ndarray]:
    """A .npy's array, or the arrays of an .npz that `pick(names in it)` chooses (it raises
    its own InputError to refuse them). Never unpickles; a member bigger than MAX_DATA_BYTES
    unpacked is refused before it is read (a deflated .npz inflates to any size); any damage
    is one InputError line."""
    with open(path, "rb") as f:
        magic = f.read(6)
    if magic != b"\x93NUMPY" and magic[:4] != b"PK\x03\x04":  # numpy would call it a pickle
        raise InputError(f"{path}: not a NumPy file (no .npy or .npz header); save arrays "
                         "with np.save or np.savez")
    try:
        data = np.load(path, allow_pickle=False)
        if isinstance(data, np.ndarray):
            return data
        with data:
            names = pick(data.files)
            for name in names:
                member = name if name in data.zip.namelist() else f"{name}.npy"
                size = data.zip.getinfo(member).file_size
                if size > MAX_DATA_BYTES:
                    raise InputError(f"{path}: array '{name}' holds {size:,} bytes unpacked, "
                                     f"more than the {MAX_DATA_BYTES:,} cnngraph reads into memory")
            return {name: data[name] for name in names}
    except InputError:
        raise
    except ValueError as exc:
        if "Object arrays" not in str(exc):
            raise InputError(f"{path}: cannot read it as a NumPy file ({_first_line(exc)})") from None
        raise InputError(f"{path}: holds an object array, which is never loaded (it could run "
                         "code); save a numeric array (uint8 or float)") from None
    except Exception as exc:  # noqa: BLE001 - numpy and zipfile raise OSError, ValueError
        # (object arrays: never unpickled), BadZipFile, EOFError, zlib.error on damaged files
        raise InputError(f"{path}: cannot read it as a NumPy file ({_first_line(exc)})") from None


def _read_array(path: Path, input_name: str) -> np.ndarray:
    """A .npy array, or from a .npz the array named like the model input, else `x`, else the
    only array it holds."""
    def pick(files: list[str]) -> list[str]:
        key = next((k for k in (input_name, "x") if k in files), files[0] if len(files) == 1 else None)
        if key is None:
            raise InputError(f"{path}: holds arrays {files}; name the input array "
                             f"'{input_name}' or 'x'")
        return [key]
    data = _read_numpy(path, pick)
    return data if isinstance(data, np.ndarray) else next(iter(data.values()))


def load_named_inputs(paths: list[Path], meta: ModelMeta, expected: dict[str, tuple[int, ...] | None]
                      ) -> tuple[dict[str, np.ndarray], list[str]]:
    """Files -> one float32 batch per input of a model with several inputs (`expected`: input
    name -> (C, H, W), or None where unknown), and a label per sample. Each file is an .npz
    holding one array per input name, each (C, H, W) or (N, C, H, W) with the same N; every
    array follows the array rule above with its own input's mean and std."""
    names = list(expected)
    wanted = ", ".join(f"{n} {expected[n] or '(C, H, W)'}" for n in names)
    how = f"np.savez(path, {', '.join(f'{n}=...' for n in names)})"
    batches: dict[str, list[np.ndarray]] = {n: [] for n in names}
    labels: list[str] = []
    for path in map(Path, paths):
        problem = ("is a directory" if path.is_dir() else "no such file" if not path.is_file()
                   else None if path.suffix.lower() == ".npz" else "is not an .npz")
        if problem:
            raise InputError(f"{path}: {problem}; this model takes {len(names)} inputs ({wanted}): "
                             f"give .npz files holding one array per input name ({how})")
        arrays = _read_named(path, names, wanted)
        counts = set()
        for name in names:
            batch = _array_input(arrays[name], f"{path}[{name}]", meta.for_input(name), expected[name])
            batches[name].append(batch)
            counts.add(len(batch))
        if len(counts) != 1:
            sizes = ", ".join(f"{n} {len(batches[n][-1])}" for n in names)
            raise InputError(f"{path}: its arrays hold different numbers of samples ({sizes}); "
                             "give every input the same batch N")
        (count,) = counts
        labels += [path.name] if count == 1 else [f"{path.name}[{i}]" for i in range(count)]
    if not labels:
        raise InputError("no input files given")
    return {n: np.concatenate(b) for n, b in batches.items()}, labels


def _read_named(path: Path, names: list[str], wanted: str) -> dict[str, np.ndarray]:
    """The arrays `names` of an .npz, exactly those (one InputError naming the missing and
    extra ones otherwise)."""
    def pick(files: list[str]) -> list[str]:
        missing = [n for n in names if n not in files]
        extra = [n for n in files if n not in names]
        if missing or extra:
            said = "; ".join(f"{label} {', '.join(keys)}" for label, keys in
                             (("missing", missing), ("unexpected", extra)) if keys)
            raise InputError(f"{path}: holds arrays {', '.join(files) or 'none'} ({said}); "
                             f"the model takes one array per input: {wanted}")
        return names
    data = _read_numpy(path, pick)
    if isinstance(data, np.ndarray):
        raise InputError(f"{path}: holds one unnamed array (a .npy); this model takes {wanted}: "
                         "save one array per input name with np.savez")
    return data


def _first_line(exc: Exception) -> str:
    return str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
