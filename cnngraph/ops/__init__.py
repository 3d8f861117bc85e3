"""The op registry: every op the IR knows, by name. Read this file to find an op's home."""
from __future__ import annotations

from .base import REQUIRED, Attr, Call, Op, ShapeError

REGISTRY: dict[str, Op] = {}


def register(cls: type[Op]) -> type[Op]:
    """Class decorator: adds one instance of the op to the registry under `cls.name`."""
    if cls.name in REGISTRY:
        raise RuntimeError(f"op '{cls.name}' registered twice")
    REGISTRY[cls.name] = cls()
    return cls


def get(name: str) -> Op:
    return REGISTRY[name]


# The op families; importing them fills REGISTRY.
from . import tensor, conv, linear, norm, activation, pool  # noqa: E402,F401
from . import channels  # noqa: E402,F401
from . import eltwise  # noqa: E402,F401  (Caffe's Eltwise MAX and weighted SUM)

__all__ = ["REGISTRY", "register", "get", "Op", "Attr", "Call", "ShapeError", "REQUIRED"]
