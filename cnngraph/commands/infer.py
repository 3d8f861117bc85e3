"""`cnngraph infer MODEL.onnx INPUTS...`: run an exported model on images or arrays.

A model whose first output is (N, classes) prints the top-k classes per input (softmax applied
unless the rows already are probabilities); any other model has its outputs written to an .npz.
A model with several inputs takes .npz files holding one array per input name.
"""
from __future__ import annotations

import io
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from . import about
from ..files import atomic_write, check_output
from ..options import BATCH, COUNT

if TYPE_CHECKING:  # imported in run(): onnxruntime is not needed for --help
    from ..runtime import Predictor

log = logging.getLogger("cnngraph.runtime")


def register(subparsers) -> None:
    p = subparsers.add_parser("infer", help="run an exported model on images, .npy or .npz files",
                              description=about(__doc__))
    p.add_argument("model", type=Path, help="exported model (.onnx)")
    p.add_argument("inputs", type=Path, nargs="+",
                   help="image files (PNG, JPEG, ...), .npy or .npz arrays, (C,H,W) or (N,C,H,W); "
                        "for a model with several inputs, .npz files holding one array per "
                        "input name")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where onnxruntime runs: cuda, cpu, or auto (CUDA when a usable GPU is "
                        "found, else the CPU); default auto, without the note that "
                        "--device auto prints on why it runs on the CPU")
    p.add_argument("--batch-size", type=BATCH, default=32, help="samples per run (default 32)")
    p.add_argument("--top-k", type=COUNT, default=5, help="classes to print per input (default 5)")
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
              "probability": float(row[i]) if np.isfinite(row[i]) else None}  # JSON has no NaN
             for i in idx] for row, idx in zip(probs, order)]


def predict(predictor: Predictor, x: np.ndarray | dict[str, np.ndarray],
            batch_size: int) -> list[np.ndarray]:
    """All outputs for the batch x (or one batch per input name), run `batch_size` samples at a
    time; a model exported with a fixed batch runs in chunks of that size, the last one padded
    with zeros."""
    feeds = x if isinstance(x, dict) else {predictor.inputs[0].name: x}
    feeds = [feeds[i.name] for i in predictor.inputs]
    total = len(feeds[0])
    fixed = predictor.inputs[0].shape[0]
    size = fixed if isinstance(fixed, int) else batch_size
    parts = []
    for i in range(0, total, size):
        chunk = [f[i:i + size] for f in feeds]
        if isinstance(fixed, int) and len(chunk[0]) < fixed:
            chunk = [np.concatenate([c, np.zeros((fixed - len(c), *c.shape[1:]), c.dtype)])
                     for c in chunk]
        parts.append([out[:total - i] for out in predictor.run(*chunk)])
    return [np.concatenate([p[j] for p in parts]) for j in range(len(predictor.output_names))]


def warn_non_finite(labels: list[str], names: list[str], outputs: list[np.ndarray]) -> None:
    """One warning line per output holding NaN or inf, naming the inputs that gave them: their
    scores (printed as nan) mean nothing."""
    for name, out in zip(names, outputs):
        finite = np.isfinite(out.reshape(len(out), -1)).all(axis=1)
        if not finite.all():
            bad = [label for label, ok in zip(labels, finite) if not ok]
            log.warning("warning: output '%s' is NaN or inf for %d input(s): %s%s; their "
                        "results mean nothing", name, len(bad), ", ".join(bad[:5]),
                        " ..." if len(bad) > 5 else "")


def save_outputs(path: Path, names: list[str], outputs: list[np.ndarray]) -> None:
    """Write the outputs as one .npz, atomically."""
    check_output(path, "--output", "outputs.npz")
    buffer = io.BytesIO()
    np.savez(buffer, **dict(zip(names, outputs)))
    atomic_write(path, buffer.getvalue())


def _expected(predictor: Predictor, spec) -> tuple[int, ...] | None:
    """An input's (C, H, W): from the cnngraph metadata, else the model's static dims."""
    return predictor.meta.for_input(spec.name).input_shape or (
        tuple(spec.shape[1:]) if all(isinstance(d, int) for d in spec.shape[1:]) else None)


def run(args) -> int:
    from ..runtime import Predictor, load_inputs, load_named_inputs

    predictor = Predictor(args.model, args.device)
    if len(predictor.inputs) == 1:
        spec = predictor.inputs[0]
        x, labels = load_inputs(args.inputs, predictor.meta, spec.name, _expected(predictor, spec))
    else:  # one .npz per sample (or batch) holding an array per input name
        x, labels = load_named_inputs(args.inputs, predictor.meta,
                                      {i.name: _expected(predictor, i) for i in predictor.inputs})
    outputs = predict(predictor, x, args.batch_size)
    warn_non_finite(labels, predictor.output_names, outputs)
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
                print(f"{name}: " + ", ".join(f"{c['class']} " + ("nan" if c["probability"] is None
                                                                  else f"{c['probability']:.3f}")
                                              for c in r))
    if out_path:
        shapes = {n: list(o.shape) for n, o in zip(predictor.output_names, outputs)}
        if args.json and not classifier:
            print(json.dumps({"outputs": str(out_path), "shapes": shapes}))
        elif not args.json:
            print(f"wrote {out_path} ({', '.join(f'{n} {tuple(s)}' for n, s in shapes.items())})")
    return 0
