"""Writes tests/data/torchvision_keys.json.gz: the state_dict keys and shapes of torchvision's
networks that the zoo imports (built on the meta device, weights=None, default heads, googlenet
and inception_v3 with their auxiliary heads), so that tests/test_pretrained.py checks every
family's naming where torchvision is not installed. Run it once after a torchvision release or a
new family: `.venv/bin/python scripts/torchvision_keys.py` (needs torchvision: scripts/setup.sh)."""
from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))
from torchvision_ref import load  # noqa: E402 - the CUDA-wheel import shim

OUT = ROOT / "tests" / "data" / "torchvision_keys.json.gz"
# zoo name -> (torchvision builder, its options)
MODELS = {
    "alexnet_tv": ("alexnet", {}),
    **{n: (n, {}) for n in ["vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn",
                            "vgg19", "vgg19_bn", "densenet121", "densenet161", "densenet169",
                            "densenet201", "resnet18", "resnet34", "resnet50", "resnet101",
                            "resnet152", "resnext50_32x4d", "resnext101_32x8d",
                            "resnext101_64x4d", "wide_resnet50_2", "wide_resnet101_2"]},
    "googlenet": ("googlenet", {"aux_logits": True, "init_weights": False}),
    "inception_v3": ("inception_v3", {"aux_logits": True, "init_weights": False}),
}


def main() -> None:
    torchvision = load()
    if torchvision is None:
        sys.exit("torchvision is not installed: run scripts/setup.sh first")
    table = {"torchvision": torchvision.__version__, "models": {}}
    for name, (builder, options) in MODELS.items():
        with torch.device("meta"):
            state = getattr(torchvision.models, builder)(**options).state_dict()
        table["models"][name] = [[k, list(v.shape)] for k, v in state.items()]
    OUT.parent.mkdir(exist_ok=True)
    data = json.dumps(table, separators=(",", ":")).encode()
    OUT.write_bytes(gzip.compress(data, mtime=0))
    print(f"wrote {OUT} ({len(MODELS)} networks, {OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
