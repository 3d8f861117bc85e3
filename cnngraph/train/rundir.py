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
"""
from __future__ import annotations

import io
import json
import os
import pickle
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml
from safetensors.torch import save as save_safetensors

from ..errors import CnnGraphError

SPEC, CONFIG, INFO, CHECKPOINT = "spec.yaml", "config.json", "info.json", "checkpoint.pt"
LAST, BEST, METRICS, CURVES = "last.safetensors", "best.safetensors", "metrics.jsonl", "curves.png"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()  # what open() would give; mkstemp alone makes files 0600


def atomic_write(path: Path, data: bytes) -> None:
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


def write_json(path: Path, obj: Any) -> None:
    atomic_write(path, (json.dumps(obj, indent=2) + "\n").encode())


def write_spec(path: Path, spec: dict) -> None:
    atomic_write(path, yaml.safe_dump(spec, sort_keys=False).encode())


def read_spec(path: Path) -> dict:
    return yaml.safe_load(path.read_text())


def write_weights(path: Path, state_dict: dict[str, torch.Tensor]) -> None:
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state_dict.items()}
    atomic_write(path, save_safetensors(tensors))


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    from ..files import read_weights as read  # the one weights reader every command uses
    return read(path)


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    buffer = io.BytesIO()
    torch.save(state, buffer)
    atomic_write(path, buffer.getvalue())


def read_checkpoint(path: Path) -> dict[str, Any]:
    """The checkpoint, loaded with weights_only (no code from the file runs); our own one-line
    message for a file that needs more (torch's is long and holds terminal escape codes)."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CnnGraphError(f"{path}: holds pickled Python objects beyond tensors and plain "
                            "containers, which are not loaded (they could run code); it was "
                            "not written by `cnngraph train`") from None
    except (OSError, RuntimeError, EOFError) as exc:
        reason = str(exc).splitlines()[0] if str(exc) else exc.__class__.__name__
        raise CnnGraphError(f"{path}: cannot read the checkpoint ({reason}); it is damaged, "
                            "train into a new --out") from None


def write_metrics(path: Path, history: list[dict]) -> None:
    atomic_write(path, "".join(json.dumps(row) + "\n" for row in history).encode())


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
    info = json.loads((run / INFO).read_text())
    graph.meta.update(classes=info["classes"], normalize=info["normalize"])
    return graph, read_weights(weights), info


def read_json(path: Path) -> dict:
    return json.loads(path.read_text())
