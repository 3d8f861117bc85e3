"""`cnngraph demo`: the whole path in about a minute on a laptop CPU. Trains LeNet-5 briefly on
12,000 embedded glyphs, exports it to ONNX, checks onnxruntime against PyTorch, classifies a few
validation samples on onnxruntime (preprocessed from the model's own metadata) and times both.
"""
from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from . import about
from ..errors import InputError
from ..files import writing
from ..options import COUNT

SPEC = "lenet5"
SHOWN = 8


def register(subparsers) -> None:
    p = subparsers.add_parser("demo", help="train, export, verify, infer and bench LeNet-5",
                              description=about(__doc__))
    p.add_argument("--out", type=Path, default=Path("runs/demo"),
                   help="run folder (default ./runs/demo; an earlier demo's run there is replaced)")
    p.add_argument("--epochs", type=COUNT, default=3, help="training epochs (default 3)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    p.add_argument("--quick", action="store_true",
                   help="a smoke run: 1 epoch on 1,000 glyphs and short timings")
    p.set_defaults(func=run)


def replace_earlier_demo(run_dir: Path) -> None:
    """Remove the training run an earlier demo left in `run_dir`; refuse to touch anything else."""
    import json
    import shutil
    if not run_dir.exists():
        return
    try:
        earlier = json.loads((run_dir / "config.json").read_text()).get("spec_name") == SPEC
    except (OSError, ValueError):
        earlier = False
    if not earlier:
        raise InputError(f"{run_dir} exists and is not an earlier demo's training run; "
                         "choose another --out")
    shutil.rmtree(run_dir)


def process_age() -> float:
    """Seconds since this process started (Linux: from /proc, so the interpreter's and the
    libraries' start-up count too), else since the command began running."""
    try:
        fields = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(fields[19]) / os.sysconf("SC_CLK_TCK")   # field 22: start time after boot
        return float(Path("/proc/uptime").read_text().split()[0]) - started
    except (OSError, ValueError, IndexError, AttributeError):
        return 0.0


def run(args) -> int:
    started = time.perf_counter() - process_age()   # "done in": the whole command's wall time
    import torch

    import cnngraph
    from exporters import export_onnx

    from ..data import fit, glyphs
    from ..runtime import Predictor, normalize
    from ..runtime.benchmark import busy_note, compare, table
    from ..train import load_run, train

    if args.epochs < 1:
        raise InputError("--epochs must be at least 1")
    out = args.out.resolve()
    replace_earlier_demo(out / "train")
    with writing(out):
        out.mkdir(parents=True, exist_ok=True)
    print(f"cnngraph demo: writing into {out}")
    graph = cnngraph.load(SPEC)
    data = glyphs(train=1000, val=200) if args.quick else glyphs(train=12000, val=1000)
    epochs = 1 if args.quick else args.epochs

    t0 = time.perf_counter()
    print(f"\n[1/5] train {SPEC} on {data.source}: {len(data.y_train)} training and "
          f"{len(data.y_val)} validation samples, {epochs} epoch(s)")
    result = train(graph, data, out=out / "train", epochs=epochs, batch_size=64,
                   device=args.device, progress=not args.quick)
    print(f"      validation accuracy {result['best_val_accuracy']:.3f} "
          f"({time.perf_counter() - t0:.0f} s)")

    graph, state, info = load_run(result["run_dir"])
    model_path = out / f"{SPEC}.onnx"
    export_onnx(graph, state, model_path)
    print(f"\n[2/5] exported {model_path} ({model_path.stat().st_size / 1e3:.0f} kB)")

    module = cnngraph.build(graph).eval()
    module.load_state_dict(state, strict=False)
    predictor = Predictor(model_path, args.device)
    val = fit(data, graph.input_shape, len(info["classes"]))
    x = normalize(val.x_val, predictor.meta)   # the preprocessing stored in the model
    ort_logits = np.concatenate([predictor.run(x[i:i + 256])[0] for i in range(0, len(x), 256)])
    with torch.inference_mode():
        torch_logits = module(torch.from_numpy(x)).numpy()
    err = float(np.abs(ort_logits - torch_logits).max())
    scale = float(np.abs(torch_logits).max())
    verdict = "PASS" if err <= 1e-4 * max(scale, 1.0) else "FAIL"
    print(f"\n[3/5] parity on {len(x)} validation samples: max |onnxruntime - torch| = {err:.2e} "
          f"(largest logit {scale:.1f}) {verdict}")

    classes = predictor.meta.classes or tuple(info["classes"])
    probs = np.exp(ort_logits - ort_logits.max(1, keepdims=True))
    probs /= probs.sum(1, keepdims=True)
    predicted = probs.argmax(1)
    print(f"\n[4/5] onnxruntime ({predictor.provider}) on validation samples:")
    print("      sample  label  predicted  probability")
    for i in range(min(SHOWN, len(x))):
        mark = "" if predicted[i] == val.y_val[i] else "  <- wrong"
        print(f"      {i:>6}  {classes[val.y_val[i]]:>5}  {classes[predicted[i]]:>9}  "
              f"{probs[i, predicted[i]]:>11.3f}{mark}")
    print(f"      accuracy over all {len(x)}: onnxruntime {np.mean(predicted == val.y_val):.3f}, "
          f"torch {np.mean(torch_logits.argmax(1) == val.y_val):.3f}")

    print("\n[5/5] bench: PyTorch eager vs onnxruntime, same weights")
    if note := busy_note():
        print("      " + note)
    rows = compare(module, model_path, [1, 64], device="cuda" if predictor.provider.startswith("CUDA") else "cpu",
                   budget_s=0.3 if args.quick else 2.0, macs=graph.macs_for(False))
    print("\n".join("      " + line for line in table(rows).splitlines()))
    print(f"\ndone in {time.perf_counter() - started:.0f} s. Next: cnngraph infer {model_path} IMAGE.png")
    return 0 if verdict == "PASS" else 1
