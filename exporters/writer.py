"""Writing a model file atomically, with external data when the protobuf limit is near."""
from __future__ import annotations

import glob
import math
import os
import shutil
import tempfile
from pathlib import Path

import onnx
from onnx import helper

from cnngraph.errors import ExportError
from cnngraph.files import writing

# a protobuf message cannot reach 2 GiB; keep a margin for the graph itself
EXTERNAL_DATA_THRESHOLD = 2 * 1024 ** 3 - 64 * 1024 ** 2


def weight_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers, from their shapes (reading raw_data would copy it)."""
    return sum(math.prod(t.dims) * helper.tensor_dtype_to_np_dtype(t.data_type).itemsize
               for t in model.graph.initializer)


def save_model(model: onnx.ModelProto, path: str | os.PathLike) -> Path:
    """Write `model` to `path` so that a failure leaves nothing half written.

    Everything is written into a temporary folder beside `path` (`.NAME.PID.xxxx`), then
    renamed into place. Over 2 GB of weights go to `<name>.data` beside the model (external
    data), renamed first. Staging folders that a killed writer left are removed here.
    """
    path = Path(path)
    if path.is_dir():
        raise ExportError(f"{path} is a folder; give the file to write, e.g. {path / 'model.onnx'}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            _remove_stale_staging(path)
            staging = Path(tempfile.mkdtemp(dir=path.parent,
                                            prefix=f".{path.name}.{os.getpid()}."))
            try:
                if weight_bytes(model) > EXTERNAL_DATA_THRESHOLD:
                    copy = onnx.ModelProto()
                    copy.CopyFrom(model)  # saving with external data rewrites the tensors it saves
                    data_name = path.name + ".data"
                    onnx.save_model(copy, staging / path.name, save_as_external_data=True,
                                    all_tensors_to_one_file=True, location=data_name,
                                    size_threshold=1024)
                    os.replace(staging / data_name, path.with_name(data_name))
                else:
                    onnx.save_model(model, staging / path.name)
                os.replace(staging / path.name, path)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
    except OSError as exc:  # a parent that is a file, a missing mount, ...
        reason = _blocking_file(path.parent) or exc.strerror
        raise ExportError(f"cannot write {path}: {reason}") from None
    return path


def _remove_stale_staging(path: Path) -> None:
    """Remove the staging folders of `path` whose writer (the PID in the name) is dead: what a
    killed export left behind (it can be as large as the model)."""
    for folder in path.parent.glob(f".{glob.escape(path.name)}.*"):
        pid = folder.name[len(path.name) + 2:].split(".")[0]
        if folder.is_dir() and pid.isdigit() and not _alive(int(pid)):
            shutil.rmtree(folder, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _blocking_file(folder: Path) -> str | None:
    """'X is a file, not a folder' for the first ancestor of `folder` that is a file."""
    for parent in reversed([folder, *folder.parents]):
        if parent.exists() and not parent.is_dir():
            return f"{parent} is a file, not a folder"
    return None
