"""Importers: models written by other tools become cnngraph specs with their weights -- the
mirror image of `exporters/`.

An importer returns `(spec, state_dict)`: a plain spec dict (what a YAML file would hold) and
the state_dict of `cnngraph.build(cnngraph.load(spec))`, so that everything downstream (train,
export, verify) stays as it is. One import format = one module here, imported only when used:

- `.onnx` -> `importers.onnx.from_onnx(path)`
- `.prototxt` -> `importers.caffe.from_caffe(prototxt, caffemodel=None)`

`import_model(path, weights=None)` picks by the suffix; `write_import(spec, state, path)` writes
SPEC.yaml and SPEC.safetensors beside it, each atomically.
"""
from __future__ import annotations

import importlib
from pathlib import Path
from typing import Any

from cnngraph.errors import InputError

#: suffix -> (module in importers/, function, what --weights means for it, or None)
FORMATS = {
    ".onnx": ("onnx", "from_onnx", None),
    ".prototxt": ("caffe", "from_caffe", "the .caffemodel with the trained blobs"),
}


def import_model(path: str | Path, weights: str | Path | None = None) -> tuple[dict, dict]:
    """(spec, state_dict) of the model at `path`, by its suffix (FORMATS); `weights` is a
    separate weights file for formats that keep them apart (Caffe's .caffemodel)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise InputError(f"{path}: cannot tell the format from the suffix {suffix or '(none)'!r}; "
                         f"cnngraph imports {', '.join(FORMATS)} files (rename it if it is one)")
    module, function, weights_are = FORMATS[suffix]
    if weights is not None and weights_are is None:
        raise InputError(f"--weights {weights}: a {suffix} file holds its own weights; "
                         "leave out --weights")
    reader = _reader(module, function, suffix)
    return reader(path) if weights_are is None else reader(path, weights)


def _reader(module: str, function: str, suffix: str):
    try:
        loaded = importlib.import_module(f"importers.{module}")
    except ModuleNotFoundError as exc:
        if exc.name != f"importers.{module}":
            raise
        raise InputError(f"this cnngraph has no {suffix} importer (importers/{module}.py is "
                         "missing); update cnngraph") from None
    return getattr(loaded, function)


def weights_path(spec_path: str | Path) -> Path:
    """Where the weights of SPEC.yaml go: SPEC.safetensors beside it."""
    return Path(spec_path).with_suffix(".safetensors")


def write_import(spec: dict, state: dict[str, Any], path: str | Path) -> tuple[Path, Path]:
    """Writes `spec` to `path` (.yaml/.yml/.json) and `state` to the .safetensors beside it,
    each atomically, after checking that the spec loads and that the weights are exactly the
    built module's state_dict (BatchNorm's step counters are added when missing). Returns both
    paths."""
    import torch
    from safetensors.torch import save

    import cnngraph
    from cnngraph.files import atomic_write
    from cnngraph.spec import SUFFIXES

    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise InputError(f"-o {path}: name the spec file .yaml, .yml or .json")
    state = complete_state(cnngraph.load(spec), state)
    tensors = {k: torch.as_tensor(v).detach().cpu().contiguous() for k, v in state.items()}
    cnngraph.save_spec(spec, path)
    target = weights_path(path)
    atomic_write(target, save(tensors, metadata={"format": "pt", "spec": path.name}))
    return path, target


def complete_state(graph, state: dict[str, Any]) -> dict[str, Any]:
    """`state` checked against the module `cnngraph.build(graph)` makes (built on the meta
    device: no memory): every key present with its shape, nothing extra, BatchNorm's
    `num_batches_tracked` added as 0 where missing. An importer's mistake, not the user's, so
    a ValueError."""
    import torch

    import cnngraph

    with torch.device("meta"):
        expected = cnngraph.build(graph).state_dict()
    state = dict(state)
    for key, value in expected.items():
        if key not in state and key.endswith("num_batches_tracked"):
            state[key] = torch.zeros((), dtype=torch.long)
    missing = sorted(set(expected) - set(state))
    extra = sorted(set(state) - set(expected))
    wrong = sorted(k for k in set(expected) & set(state)
                   if tuple(torch.as_tensor(state[k]).shape) != tuple(expected[k].shape))
    if missing or extra or wrong:
        raise ValueError(f"importer produced weights that do not fit its spec: missing {missing[:5]}, "
                         f"unexpected {extra[:5]}, mis-shaped {wrong[:5]}")
    return state


__all__ = ["import_model", "write_import", "weights_path", "complete_state", "FORMATS"]
