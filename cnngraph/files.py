"""Writing files: every write goes to a temporary file beside the target and is renamed into
place (os.replace), so a kill or a full disk leaves the old version or the new one, never half
of one; and the errors of the place written to (full disk, read-only, no permission) become one
line naming the path and the fix."""
from __future__ import annotations

import errno
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path

from .errors import CnnGraphError

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

