"""Files a user hands to a command or gets from one.

Writing: every write goes to a temporary file beside the target and is renamed into place
(os.replace), so a kill or a full disk leaves the old version or the new one, never half of one;
the errors of the place written to (full disk, read-only, no permission) become one line naming
the path and the fix.

Reading: one reader each for models, weights and images, so that every command says the same
one line about the same damaged file: `read_onnx` (infer, verify, bench), `read_weights`
(export, verify, bench, a run's best weights), `read_image` (infer). Nothing read runs code:
ONNX is protobuf, weights are safetensors or torch files loaded with weights_only."""
from __future__ import annotations

import errno
import os
import pickle
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import CnnGraphError, ExportError, InputError

FIXES = {
    errno.ENOSPC: "free some space there (nothing written before was lost) and run again",
    errno.EDQUOT: "free some of your quota there (nothing written before was lost) and run again",
    errno.EROFS: "the file system is read-only; choose a writable place",
    errno.EACCES: "no permission to write there; choose a writable place or fix its permissions",
    errno.EPERM: "no permission to write there; choose a writable place or fix its permissions",
    errno.ENOENT: "its folder is missing and cannot be made there; choose another place",
    errno.ENOTDIR: "a part of the path is a file, not a folder; choose another place",
}


class WriteError(CnnGraphError):
    """A place that cannot take the file (disk full, read-only, no permission)."""


@contextmanager
def writing(path: str | os.PathLike):
    """Turns the OSErrors a user can fix (FIXES) into one WriteError naming `path`."""
    try:
        yield
    except WriteError:
        raise
    except OSError as exc:
        if exc.errno not in FIXES:
            raise
        raise WriteError(f"cannot write {path}: {os.strerror(exc.errno)}; "
                         f"{FIXES[exc.errno]}") from None


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files 0600


def atomic_write(path: str | os.PathLike, data: bytes) -> None:
    """`data` into `path`: temporary file in the same folder, fsync, os.replace."""
    path = Path(path)
    with writing(path):
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        try:
            os.fchmod(fd, _FILE_MODE)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise


def check_output(path: Path, option: str, example: str) -> None:
    """Refuse, before any work, an output path whose folder is missing (it is not made: a
    typo would silently become a new folder tree), is a file, or that is itself a folder;
    `example` names a file to suggest inside a folder."""
    if path.is_dir():
        raise InputError(f"{option} {path}: is a folder; give a file name such as "
                         f"{path / example}")
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"{option} {path}: {blocker} is a file, not a folder")
    if not path.parent.is_dir():
        raise InputError(f"{option} {path}: folder {path.parent} does not exist; create it "
                         "first or choose another place")


NOT_ONNX = "not an ONNX model file (write one with `cnngraph export`)"
WEIGHT_FORMATS = ("cnngraph reads .safetensors files and torch.save'd state_dicts "
                  "(torch.save(model.state_dict(), path))")


def read_onnx(path: str | Path):
    """The model's graph and metadata (external weights stay on disk), or one InputError for
    a missing file or bytes that are not an ONNX model."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    try:
        model = onnx.load_model(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - protobuf's DecodeError and friends: not a ModelProto
        model = None
    if model is None or not model.graph.output:  # an empty file parses as an empty ModelProto
        raise InputError(f"{path}: {NOT_ONNX}")
    return model


def _format(path: Path) -> str | None:
    """"safetensors" (by suffix, or an 8-byte header length and then the JSON header's '{'),
    "torch" (a zip archive, or a legacy pickle's protocol byte), or None: neither."""
    with open(path, "rb") as f:
        head = f.read(9)
    if path.suffix.lower() == ".safetensors" or head[8:] == b"{":
        return "safetensors"
    return "torch" if head[:4] == b"PK\x03\x04" or head[:1] == b"\x80" else None


PICKLED = ("holds pickled Python objects beyond tensors, which are never loaded (they could "
           "run code)")


def load_torch(path: Path, error: type, what: str, fix: str):
    """torch.load with weights_only (no code from the file runs), torch's warnings silenced
    (a protocol-4 pickle warns on two lines first), and every failure one `error` line:
    "{path}: unreadable as {what} (damaged, or not a torch file); {fix}" or, for a pickle
    that parses but names Python objects, "{path}: holds pickled Python objects ...; {fix}".
    The two are told apart by the file, not by torch's message (which calls a damaged byte
    an "unsupported operand" and a protocol-4 pickle of os.system the same)."""
    import warnings

    import torch

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - classified below, in one line
        objects = isinstance(exc, pickle.UnpicklingError) and (
            "Unsupported global" in str(exc) or _names_objects(path))
    if objects:
        raise error(f"{path}: {PICKLED}; {fix}") from None
    raise error(f"{path}: unreadable as {what} (damaged, or not a torch file); {fix}") from None


def _names_objects(path: Path) -> bool:
    """Whether the file's pickle (a legacy file's first, or a zip's data.pkl) parses to its
    end and names a Python global (GLOBAL, STACK_GLOBAL, INST): read by pickletools, never run."""
    import pickletools
    import zipfile

    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                name = next(n for n in archive.namelist() if n.endswith("data.pkl"))
                data = archive.read(name)
        else:
            data = path.read_bytes()
        ops = [op.name for op, _, _ in pickletools.genops(data)]
    except Exception:  # noqa: BLE001 - not a whole pickle: damaged
        return False
    return bool({"GLOBAL", "STACK_GLOBAL", "INST"} & set(ops))


def read_weights(path: Path) -> dict:
    """A state_dict (names -> tensors) from a safetensors or torch file, or one ExportError
    naming the file and what is wrong: unreadable, pickled objects, not a state_dict, or
    tensors holding NaN/inf (diverged training must not become a model that prints nan)."""
    import torch

    path = Path(path)
    if not path.is_file():
        raise ExportError(f"{path}: no such weights file")
    kind = _format(path)
    if kind is None:
        raise ExportError(f"{path}: unreadable as weights (neither a safetensors nor a torch "
                          f"file); {WEIGHT_FORMATS}")
    if kind == "safetensors":
        try:
            from safetensors.torch import load_file

            state = load_file(str(path))
        except Exception as exc:  # noqa: BLE001 - a corrupt file: say which and why, in one line
            raise ExportError(f"{path}: unreadable as weights ({_first_line(exc)}); "
                              f"{WEIGHT_FORMATS}") from None
    else:
        state = load_torch(path, ExportError, "weights", WEIGHT_FORMATS)
    if not isinstance(state, dict) or not all(isinstance(k, str) and isinstance(v, torch.Tensor)
                                              for k, v in state.items()):
        inner = next((k for k, v in state.items() if isinstance(v, dict)), None) \
            if isinstance(state, dict) else None
        hint = f"; it holds a dict under {inner!r}: save that one" if inner is not None else ""
        raise ExportError(f"{path}: expected a state_dict (names -> tensors), as "
                          f"`cnngraph train` writes (best.safetensors){hint}")
    bad = [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]
    if bad:
        named = ", ".join(bad[:3]) + (f" and {len(bad) - 3} more" if len(bad) > 3 else "")
        raise ExportError(f"{path}: NaN or inf values in {named}; "
                          "these weights cannot give a usable model (a diverged training? use "
                          "an earlier checkpoint)")
    return state


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text.splitlines()[0].split('. ')[0][:200]}" if text else type(exc).__name__


MAX_DATA_BYTES = 1 << 32  # 4 GiB: the most a data file (an array, a dataset) may hold unpacked
MAX_PIXELS = 1 << 26  # 67 megapixels (8192 x 8192): larger images are refused before decoding
_ALPHA = {"RGBA", "LA", "PA", "RGBa", "La"}
_GRAY = {"1", "L", "LA", "La", "I", "I;16", "I;16L", "I;16B", "I;16N", "F"}


@contextmanager
def _pillow_logs():
    """The messages Pillow logs meanwhile (a damaged TIFF logs an error before it raises),
    collected instead of printed as extra stderr lines."""
    import logging

    class Collect(logging.Handler):
        def emit(self, record):
            messages.append(record.getMessage())

    messages: list[str] = []
    pil, handler = logging.getLogger("PIL"), Collect(logging.WARNING)
    propagate, pil.propagate = pil.propagate, False
    pil.addHandler(handler)
    try:
        yield messages
    finally:
        pil.removeHandler(handler)
        pil.propagate = propagate


def read_image(path: Path, mode: str, size: tuple[int, int], error: type = InputError):
    """One image file -> (uint8 array (H, W) or (H, W, C), notes): decoded by Pillow, turned
    upright by its EXIF orientation, converted to `mode` ("L", "RGB" or "RGBA") and resized
    bilinearly to `size` (H, W). `notes` says, one short phrase each, what was changed
    beyond a lossless decode, so that a caller can tell the user. Any damage, and images over
    MAX_PIXELS (a decompression bomb), raise one `error` line naming the file."""
    import warnings

    import numpy as np
    from PIL import Image, ImageOps

    height, width = size
    notes = []
    try:
        with warnings.catch_warnings(record=True) as caught, _pillow_logs() as logged:
            warnings.simplefilter("always")  # Pillow's warnings and logged errors become notes
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(path) as im:
                if im.width * im.height > MAX_PIXELS:
                    raise error(f"{path}: image of {im.width}x{im.height} pixels, larger than "
                                f"the {MAX_PIXELS:,} pixels read (a decompression bomb?); "
                                "scale it down first")
                if getattr(im, "n_frames", 1) > 1:  # an animation or a multi-page TIFF
                    notes.append(f"first of its {im.n_frames} frames")
                if im.getexif().get(0x0112, 1) in range(2, 9):  # EXIF Orientation: not upright
                    im = ImageOps.exif_transpose(im)
                    notes.append("turned upright by its EXIF orientation")
                source = im.mode
                if source.startswith("I") or source == "F":  # Pillow's convert clips at 255
                    values = np.nan_to_num(np.asarray(im, dtype=np.float64))
                    scale = 1 / 257 if source != "F" else 255 if values.max(initial=0) <= 1 else 1
                    im = Image.fromarray(np.clip(np.rint(values * scale), 0, 255).astype(np.uint8), "L")
                    notes.append(("16-bit" if source != "F" else "float") + " -> 8-bit")
                has_alpha = source in _ALPHA or "transparency" in im.info
                changes = [text for cond, text in (
                    (has_alpha and mode != "RGBA", "alpha dropped"),
                    (mode != "L" and source in _GRAY, "1 channel repeated to 3"),
                    (mode == "L" and source not in _GRAY, "colour to grayscale"),
                    (mode == "RGBA" and not has_alpha, "opaque alpha added")) if cond]
                if changes:
                    notes.append(f"{source} -> {mode} ({', '.join(changes)})")
                im = im.convert(mode)
                if im.size != (width, height):
                    notes.append(f"resized {im.width}x{im.height} -> {width}x{height}"
                                 + (" (aspect ratio changed)"
                                    if abs(im.width * height - im.height * width) > max(width, height)
                                    else ""))
                    im = im.resize((width, height), Image.Resampling.BILINEAR)
                pixels = np.asarray(im, dtype=np.uint8)
        said = [str(w.message) for w in caught] + logged
        notes += [f"Pillow: {text.strip().splitlines()[0]}" for text in said if text.strip()]
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise error(f"{path}: image larger than the {MAX_PIXELS:,} pixels read (a "
                    "decompression bomb?); scale it down first") from None
    except error:
        raise
    except Exception as exc:  # noqa: BLE001 - Pillow's decoders raise OSError, SyntaxError,
        # ValueError, struct.error, zlib.error... on damaged bytes: all mean "not readable"
        raise error(f"{path}: cannot read it as an image ({_first_line(exc)})") from None
    return pixels, notes
