"""`cnngraph infer MODEL.onnx INPUTS...`: run an exported model on images or arrays.

A model whose first output is (N, classes) prints the top-k classes per input (softmax applied
unless the rows already are probabilities); any other model has its outputs written to an .npz.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import numpy as np

from . import about
from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("infer", help="run an exported model on images, .npy or .npz files",
                              description=about(__doc__))
    p.add_argument("model", type=Path, help="exported model (.onnx)")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="image files (PNG, JPEG, ...), .npy or .npz arrays, (C,H,W) or (N,C,H,W)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--batch-size", type=int, default=32, help="samples per run (default 32)")
    p.add_argument("--top-k", type=int, default=5, help="classes to print per input (default 5)")
    p.add_argument("--output", type=Path,
                   help="also write all outputs to this .npz (default for non-classifiers: "
                        "MODEL_STEM.outputs.npz)")
    p.add_argument("--json", action="store_true", help="print JSON instead of text")
    p.set_defaults(func=run)


def softmax(logits: np.ndarray) -> np.ndarray:
    z = logits - logits.max(axis=1, keepdims=True)
    e = np.exp(z)
    return e / e.sum(axis=1, keepdims=True)


def as_probabilities(scores: np.ndarray) -> np.ndarray:
    """Rows that already are a distribution (in [0, 1], summing to 1) stay; logits get softmax."""
    scores = scores.astype(np.float64)
    if (scores >= 0).all() and (scores <= 1).all() and np.allclose(scores.sum(axis=1), 1, atol=1e-3):
        return scores
    return softmax(scores)


def top_k(probs: np.ndarray, k: int, classes) -> list[list[dict]]:
    k = min(k, probs.shape[1])
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return [[{"index": int(i), "class": classes[i] if classes and i < len(classes) else str(int(i)),
              "probability": float(row[i])} for i in idx] for row, idx in zip(probs, order)]


def predict(predictor: Predictor, x: np.ndarray, batch_size: int) -> list[np.ndarray]:
    """All outputs for the batch x, run `batch_size` samples at a time; a model exported with
    a fixed batch runs in chunks of that size, the last one padded with zeros."""
    fixed = predictor.inputs[0].shape[0]
    size = fixed if isinstance(fixed, int) else batch_size
    parts = []
    for i in range(0, len(x), size):
        chunk = x[i:i + size]
        if isinstance(fixed, int) and len(chunk) < fixed:
            chunk = np.concatenate([chunk, np.zeros((fixed - len(chunk), *chunk.shape[1:]), chunk.dtype)])
        parts.append([out[:len(x) - i] for out in predictor.run(chunk)])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(predictor.output_names))]


def save_outputs(path: Path, names: list[str], outputs: list[np.ndarray]) -> None:
    """Write the outputs as one .npz, atomically."""
    if path.is_dir():
        raise InputError(f"--output {path}: is a directory; give a file name such as {path / 'outputs.npz'}")
    blocker = next((p for p in [path.parent, *path.parent.parents] if p.exists()), None)
    if blocker is not None and not blocker.is_dir():
        raise InputError(f"--output {path}: {blocker} is a file, not a folder")
    if not path.parent.is_dir():
        raise InputError(f"--output {path}: folder {path.parent} does not exist")
    fd, tmp = tempfile.mkstemp(suffix=".npz", dir=path.parent)
    os.close(fd)
    try:
        np.savez(tmp, **dict(zip(names, outputs)))
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)


def run(args) -> int:
    from ..runtime import Predictor, load_inputs

    if args.batch_size < 1 or args.top_k < 1:
        raise InputError("--batch-size and --top-k must be at least 1")
    predictor = Predictor(args.model, args.device)
    if len(predictor.inputs) != 1:
        raise InputError(f"{args.model}: infer feeds single-input models; this one takes "
                         f"{[i.name for i in predictor.inputs]} (use cnngraph.runtime.Predictor)")
    spec = predictor.inputs[0]
    expected = predictor.meta.input_shape or (
        tuple(spec.shape[1:]) if all(isinstance(d, int) for d in spec.shape[1:]) else None)
    x, labels = load_inputs(args.inputs, predictor.meta, spec.name, expected)
    outputs = predict(predictor, x, args.batch_size)
    classifier = outputs[0].ndim == 2
    out_path = args.output or (None if classifier else Path(f"{args.model.stem}.outputs.npz"))
    if out_path:
        save_outputs(out_path, predictor.output_names, outputs)
    if classifier:
        ranked = top_k(as_probabilities(outputs[0]), args.top_k, predictor.meta.classes)
        if args.json:
            print(json.dumps([{"input": name, "top_k": r} for name, r in zip(labels, ranked)], indent=1))
        else:
            for name, r in zip(labels, ranked):
                print(f"{name}: " + ", ".join(f"{c['class']} {c['probability']:.3f}" for c in r))
    if out_path:
        shapes = {n: list(o.shape) for n, o in zip(predictor.output_names, outputs)}
        if args.json and not classifier:
            print(json.dumps({"outputs": str(out_path), "shapes": shapes}))
        elif not args.json:
            print(f"wrote {out_path} ({', '.join(f'{n} {tuple(s)}' for n, s in shapes.items())})")
    return 0
