"""Every limit of the spec front end, in one place (docs/SPEC.md, "Limits", states them).

A spec may come from anywhere, so each size it can ask for is bounded where the value is made:
numbers when they are read or computed, nesting while the file is parsed, layer counts before a
`repeat` copies anything, tensor sizes as soon as a shape is known. Every limit is far above
what a real network needs and low enough that the largest accepted spec loads in seconds.
"""
from __future__ import annotations

import math
import reprlib
from typing import Any

MAX_INT = 2**63 - 1  # |int| of any value, read or computed (int64, what ONNX and torch hold)
MAX_FILE_BYTES = 1 << 20  # a spec file: 1 MiB
MAX_DEPTH = 64  # nesting of mappings and lists in a spec
MAX_SCALARS = 1_000_000  # keys and values in a spec, with YAML aliases counted as copies
MAX_LAYERS = 100_000  # layers one spec expands to (repeat copies and block layers included)
MAX_EVALUATED = 2_000_000  # values evaluated while expanding (each copy evaluates its own)
MAX_NAME = 100  # characters of a key or a name
MAX_BLOCK_DEPTH = 32  # blocks instantiated inside blocks
MAX_EXPR_CHARS = 1000  # characters of one ${...} expression
MAX_EXPR_DEPTH = 50  # nesting of an expression's syntax tree
MAX_ITEMS = 100_000  # length of a string or list an expression builds
MAX_EXPONENT = 64  # |b| in a ** b
MAX_SIZE = 100_000  # an op's size attribute (kernel, stride, padding, dilation, size, scale)
MAX_DIM = 2**31 - 1  # one dimension of a tensor (channels, features, height, width)
MAX_NUMEL = 2**32  # elements of one sample of a layer's output, and parameters of a layer
MAX_FIELD = 2**53  # receptive field and jump saturate here (exact in a float)
MAX_FLOAT = 3.4028234663852886e38  # |x| of a float attribute: networks compute in float32
MAX_CAFFE_PROTOTXT = 16 << 20  # a Caffe prototxt to import: 16 MiB (published ones: ~1 MiB)
MAX_CAFFE_MODEL = (1 << 31) - 1  # a .caffemodel: protobuf's own limit on one message


class LimitError(ValueError):
    """A value past a limit; the caller adds where it was written."""


def number(value: Any) -> Any:
    """`value` itself when it is not a number out of range: an int within ±MAX_INT, a finite
    float (bools, strings and the rest pass)."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int):
        if -MAX_INT <= value <= MAX_INT:
            return value
        raise LimitError(f"integer out of range (limit: ±2**63-1, this one has "
                         f"{value.bit_length()} bits)")
    if isinstance(value, float) and not math.isfinite(value):
        raise LimitError(f"{value} is not a finite number")
    return value


class _Short(reprlib.Repr):
    """repr with every string, list and level cut short (reprlib's), and no huge int printed."""

    def repr_int(self, x, level):
        return repr(x) if x.bit_length() <= 64 else f"<an integer of {x.bit_length()} bits>"


_SHORT = _Short()
_SHORT.maxstring = _SHORT.maxother = 60
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 8
_SHORT.maxlevel = 3


def describe(value: Any) -> str:
    """`repr(value)` shortened for messages (a value from a spec may be huge)."""
    text = _SHORT.repr(value)
    return text if len(text) <= 120 else text[:117] + "..."
