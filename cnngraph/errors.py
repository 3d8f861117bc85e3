"""Errors a user can cause. The CLI prints them as one message (exit 2), never a traceback."""
from __future__ import annotations


class CnnGraphError(Exception):
    """Base class: a problem the user can fix (bad spec, wrong input, missing file)."""


class SpecError(CnnGraphError, ValueError):
    """A spec that cannot be compiled. The message names file (and line), layer path, and the fix."""

    def __init__(self, message: str, *, file: str | None = None, line: int | None = None,
                 path: str | None = None):
        self.file, self.line, self.path, self.reason = file, line, path, message
        where = ""
        if file:
            where = file + (f":{line}" if line else "") + ": "
        if path:
            where += f"layer '{path}': "
        super().__init__(one_line(where + message))


MAX_MESSAGE = 2000  # characters: a message that echoes values is cut in the middle past this


def one_line(text: str) -> str:
    """`text` with newlines and other unprintable characters escaped (as repr writes them), so
    that a message naming a hostile value still prints as one line (SpecError applies it, the
    CLI applies it to every error it prints)."""
    if not text.isprintable():
        text = "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)
    if len(text) > MAX_MESSAGE:  # keep the place (the start) and the fix (the end)
        text = text[:MAX_MESSAGE // 2] + " [...] " + text[-MAX_MESSAGE // 3:]
    return text


class DataError(CnnGraphError, ValueError):
    """A dataset that cannot be read or does not fit the spec."""


class ExportError(CnnGraphError, ValueError):
    """Weights or ops that cannot be exported as asked."""


class InputError(CnnGraphError, ValueError):
    """An input (file, array, shape, dtype) that does not fit the model."""
