"""torchvision's own models, the independent reference for the zoo's architectures and weight names.

torchvision is an optional, test-only dependency: scripts/setup.sh installs the release that matches
the installed torch (0.28 for torch 2.13) with `--no-deps`, so it can never replace torch, and every
test that needs it skips when it is missing. The registry's torchvision 0.28 is a CUDA build: beside a
CPU torch its C++ extension (nms, roi_align, ...) does not load, and `import torchvision` then fails
while registering fake kernels for `torchvision::nms` and `torchvision::qnms`. Only the detection ops
need that extension; the model code is pure Python. So when the plain import fails that way we declare
those two operator schemas (no kernels) and import again.
"""
from __future__ import annotations

import sys
from types import ModuleType

import pytest

_SCHEMAS = ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
            "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
_library = None          # kept alive: dropping a torch.library.Library removes its definitions


def load() -> ModuleType | None:
    """torchvision, or None where it is not installed or cannot be imported."""
    global _library
    try:
        import torchvision
        return torchvision
    except ImportError:
        return None
    except RuntimeError as e:
        if "torchvision::" not in str(e) or _library is not None:
            return None
    for name in [m for m in sys.modules if m == "torchvision" or m.startswith("torchvision.")]:
        del sys.modules[name]
    import torch
    _library = torch.library.Library("torchvision", "DEF")
    for schema in _SCHEMAS:
        _library.define(schema)
    try:
        import torchvision
        return torchvision
    except (ImportError, RuntimeError):
        return None


def required() -> ModuleType:
    """torchvision, or skip the calling test (with the reason) where torchvision is missing."""
    torchvision = load()
    if torchvision is None:
        pytest.skip("torchvision is not installed (optional test-only dependency; scripts/setup.sh installs it)")
    return torchvision


def models() -> ModuleType:
    """torchvision.models, or skip the calling test where torchvision is missing."""
    return required().models
