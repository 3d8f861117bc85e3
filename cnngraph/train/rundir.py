"""The run directory: every file a run writes, each written atomically (a temp file in the
same folder, fsync, os.replace), so a kill at any moment leaves the old or the new version.

    spec.yaml          the source spec (reload with cnngraph.load(dict))
    config.json        the full training configuration
    info.json          classes, normalisation (mean/std on [0,1] pixels), input shape, data
    checkpoint.pt      weights + optimizer/scheduler/scaler state + position + history;
                       torch.save of tensors and plain containers (loads with weights_only=True)
    last.safetensors   weights at the last checkpoint
    best.safetensors   weights of the best validation top-1 so far
    metrics.jsonl      one JSON object per epoch
    curves.png         loss and accuracy curves
    .lock              flock-ed by the process writing the run (holds its PID)

Each epoch writes checkpoint, last, best, metrics, curves in that order: all after the
checkpoint derive from it, and a resume rewrites whichever of them a kill left behind.
"""
from __future__ import annotations

import fcntl
import io
import json
import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save as save_safetensors

from ..errors import CnnGraphError
from ..files import atomic_write, writing

SPEC, CONFIG, INFO, CHECKPOINT = "spec.yaml", "config.json", "info.json", "checkpoint.pt"
LAST, BEST, METRICS, CURVES = "last.safetensors", "best.safetensors", "metrics.jsonl", "curves.png"
LOCK = ".lock"  # flock-ed by the process that writes the run, for its whole life


def update(path: Path, data: bytes) -> None:
    """Write `data` unless `path` already holds exactly it (a finished run resumed writes
    nothing)."""
    try:
        if path.read_bytes() == data:
            return
    except OSError:
        pass
    atomic_write(path, data)


def damaged(path: Path, reason: str) -> CnnGraphError:
    """The one-line error for a run file that cannot be used as it is."""
    return CnnGraphError(f"{path}: damaged ({reason}); it was not written this way by "
                         f"`cnngraph train`: delete {path.parent} and train again, or train "
                         "into a new --out")


def json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2) + "\n").encode()


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, json_bytes(obj))


# the keys info.json must hold, with their types
INFO_KEYS = {"classes": list, "normalize": dict, "pixel_scale": (int, float),
             "input_shape": list, "data": str, "train_samples": int, "val_samples": int}


def read_json(path: Path, keys: dict[str, type | tuple] | None = None) -> dict:
    """A JSON object; with `keys`, each of them present with its type."""
    try:
        obj = json.loads(path.read_bytes())
    except (OSError, ValueError) as exc:
        raise damaged(path, _first_line(exc)) from None
    if not isinstance(obj, dict):
        raise damaged(path, f"holds a {type(obj).__name__}, not a JSON object")
    for key, kind in (keys or {}).items():
        if not isinstance(obj.get(key), kind) or isinstance(obj.get(key), bool):
            raise damaged(path, f"'{key}' is missing or not of type {_names(kind)}")
    return obj


def read_info(path: Path, keys: dict = INFO_KEYS) -> dict:
    """info.json, checked: `keys` (all for training; the model's metadata for load_run)."""
    info = read_json(path, {"normalize": dict, **keys})
    norm = info["normalize"]
    if not all(isinstance(norm.get(k), list) and all(isinstance(v, (int, float)) for v in norm[k])
               for k in ("mean", "std")):
        raise damaged(path, "'normalize' needs lists of numbers 'mean' and 'std'")
    return info


def spec_bytes(spec: dict) -> bytes:
    return yaml.safe_dump(spec, sort_keys=False).encode()


def write_spec(path: Path, spec: dict) -> None:
    atomic_write(path, spec_bytes(spec))


def read_spec(path: Path) -> dict:
    try:
        spec = yaml.safe_load(path.read_bytes())
    except (OSError, yaml.YAMLError) as exc:
        raise damaged(path, _first_line(exc)) from None
    if not isinstance(spec, dict):
        raise damaged(path, f"holds a {type(spec).__name__}, not a spec mapping")
    return spec


def weights_bytes(state_dict: dict[str, torch.Tensor]) -> bytes:
    return save_safetensors({k: v.detach().to("cpu").contiguous().clone()
                             for k, v in state_dict.items()})


def write_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    atomic_write(path, weights_bytes(state_dict))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from ..files import read_weights as read  # the one weights reader every command uses
    return read(path)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint, loaded with weights_only (no code from the file runs); one line for a
    damaged file or one holding pickled objects (files.load_torch)."""
    from ..files import load_torch  # the same classification as every weights file

    state = load_torch(path, CnnGraphError, "a checkpoint",
                       "it was not written by `cnngraph train`: train into a new --out")
    if not isinstance(state, dict) or not CHECKPOINT_KEYS <= state.keys():
        keys = sorted(CHECKPOINT_KEYS - state.keys()) if isinstance(state, dict) else None
        raise damaged(path, f"missing {', '.join(keys)}" if keys else "not a checkpoint")
    return state


CHECKPOINT_KEYS = {"model", "optimizer", "scheduler", "scaler", "epoch", "step", "world_size",
                   "sums", "history", "best"}


def metrics_bytes(history: list[dict]) -> bytes:
    return "".join(json.dumps(row) + "\n" for row in history).encode()


def write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write(path, metrics_bytes(history))


@contextmanager
def locked(run: Path):
    """Holds RUN/.lock (flock) while the block runs, so that a second process writing the same
    run is refused, naming the holder's PID. The kernel drops a flock when its process dies, so
    the lock of a killed run never blocks."""
    with writing(run / LOCK):
        fd = os.open(run / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
            raise CnnGraphError(f"{run} is in use by another cnngraph process (PID {holder}); "
                                "wait for it to end, or train into another --out") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def load_run(run_dir: str | Path):
    """(graph, state_dict, info) of a finished or running run: the spec rebuilt from
    spec.yaml (its meta completed with the run's classes and normalisation), the best weights
    (the last ones while no best exists) and info.json."""
    from .. import load  # the IR loader; imported here so the data/train packages stay light

    run = Path(run_dir)
    missing = [n for n in (SPEC, INFO) if not (run / n).exists()]
    weights = run / BEST if (run / BEST).exists() else run / LAST
    if missing or not weights.exists():
        raise CnnGraphError(f"{run}: not a training run directory (missing "
                            f"{', '.join(missing + ([] if weights.exists() else [BEST]))}); "
                            "train one with `cnngraph train SPEC --out DIR`")
    graph = load(read_spec(run / SPEC))
    info = read_info(run / INFO, {"classes": list})
    graph.meta.update(classes=info["classes"], normalize=info["normalize"])
    return graph, read_weights(weights), info


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else exc.__class__.__name__


def _names(kind) -> str:
    return " or ".join(k.__name__ for k in (kind if isinstance(kind, tuple) else (kind,)))
