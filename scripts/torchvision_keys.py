"""Writes tests/data/torchvision_keys.json.gz: the state_dict keys and shapes of torchvision's
networks that the zoo imports (weights=None, default heads, googlenet and inception_v3 with
their auxiliary heads), so that tests/test_pretrained.py checks every family's naming where
torchvision is not installed. Run it once after a torchvision release or a
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
OPTIONS = {"googlenet": {"aux_logits": True, "init_weights": False},
           "inception_v3": {"aux_logits": True, "init_weights": False}}


def models(tv) -> dict[str, tuple[str, dict]]:
    """zoo name -> (torchvision builder, its options): every zoo network with a torchvision
    builder of its name (alexnet_tv: torchvision's alexnet; our alexnet is Caffe's)."""
    from cnngraph import zoo

    out = {}
    for name in zoo.names():
        builder = "alexnet" if name == "alexnet_tv" else None if name == "alexnet" else name
        if builder and callable(getattr(tv, builder, None)):
            out[name] = (builder, OPTIONS.get(name, {}))
    return out


def state_of(tv, builder: str, options: dict) -> dict:
    """torchvision's state_dict: built on the meta device (no memory), or, where the builder
    computes with tensors (regnet's block widths), on the CPU."""
    try:
        with torch.device("meta"):
            return getattr(tv, builder)(**options).state_dict()
    except (NotImplementedError, RuntimeError):
        return getattr(tv, builder)(**options).state_dict()


def main() -> None:
    torchvision = load()
    if torchvision is None:
        sys.exit("torchvision is not installed: run scripts/setup.sh first")
    table = {"torchvision": torchvision.__version__, "models": {}}
    chosen = models(torchvision.models)
    for name, (builder, options) in chosen.items():
        state = state_of(torchvision.models, builder, options)
        table["models"][name] = [[k, list(v.shape)] for k, v in state.items()]
    OUT.parent.mkdir(exist_ok=True)
    data = json.dumps(table, separators=(",", ":")).encode()
    OUT.write_bytes(gzip.compress(data, mtime=0))
    print(f"wrote {OUT} ({len(chosen)} networks, {OUT.stat().st_size:,} bytes)")


if __name__ == "__main__":
    main()
