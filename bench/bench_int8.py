"""int8 against fp32 on onnxruntime's CPU provider (issue 14), one run, printed as tables.

Speed (default): each model exported with seeded random weights (224x224; speed does not depend
on the weights), quantized as `cnngraph quantize` does (QDQ, int8 per-channel weights, uint8
activations, MinMax on 16 seeded random inputs: the calibration changes scales, not the work),
then timed at batch 1 and 8:
  - 1 thread: process CPU time (time.process_time around each run, intra_op_num_threads=1):
    what the run costs this process, which other processes on a shared machine barely move;
  - 2 threads: wall time (time.perf_counter), which they do move: the load average is printed.
Each figure is the median of --runs runs after one warm-up. densenet121 is also quantized with
its unfoldable batch norms left as they are (`int8, BN as is`), to measure the fix of
cnngraph/quantize.py (batch_norms_as_conv).

Accuracy (--accuracy): the glyph networks trained here for --epochs on the embedded glyphs
(cnngraph.train, CPU), exported, quantized with the accuracy gate; float and int8 top-1 on the
2,000 validation glyphs.

    .venv/bin/python bench/bench_int8.py [--models resnet18,resnet50,googlenet,densenet121]
                                         [--runs 7] [--json F]
    .venv/bin/python bench/bench_int8.py --accuracy [--nets lenet5,glyph_resnet] [--epochs 3]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import cnngraph  # noqa: E402
from cnngraph.files import read_onnx  # noqa: E402
from cnngraph.quantize import Settings, quantize_file, quantize_model  # noqa: E402
from exporters import export_onnx  # noqa: E402

GOALS = {"resnet18": 2.5, "resnet50": 2.5, "googlenet": 2.5, "densenet121": 2.0}
GLYPH_RESNET = ROOT / "bench" / "glyph_resnet.yaml"


def session(path: Path, threads: int) -> ort.InferenceSession:
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.inter_op_num_threads = 1
    so.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.log_severity_level = 3
    return ort.InferenceSession(str(path), so, providers=["CPUExecutionProvider"])


def timed(path: Path, batch: int, threads: int, runs: int) -> float:
    """Median milliseconds of `runs` runs: process CPU time on 1 thread, wall time on more."""
    s = session(path, threads)
    name = s.get_inputs()[0].name
    x = np.random.default_rng(1).standard_normal((batch, 3, 224, 224), dtype=np.float32)
    s.run(None, {name: x})
    clock = time.process_time if threads == 1 else time.perf_counter
    times = []
    for _ in range(runs):
        t0 = clock()
        s.run(None, {name: x})
        times.append(clock() - t0)
    return 1e3 * statistics.median(times)


def speed(models: list[str], runs: int) -> list[dict]:
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as folder:
        folder = Path(folder)
        for name in models:
            import torch
            torch.manual_seed(0)
            graph = cnngraph.load(name)
            fp32 = folder / f"{name}.onnx"
            export_onnx(graph, cnngraph.build(graph).eval(), fp32)
            calib = np.random.default_rng(0).standard_normal((16, 3, 224, 224), dtype=np.float32)
            variants = {"fp32": fp32}
            for label, affine in [("int8", True)] + ([("int8, BN as is", False)]
                                                     if name.startswith("densenet") else []):
                work = folder / f"{name}-{affine}"
                work.mkdir()
                model = quantize_model(read_onnx(fp32), fp32, calib, Settings(), "random", work,
                                       affine=affine)
                path = folder / f"{name}.{'int8' if affine else 'int8-bn'}.onnx"
                path.write_bytes(model.SerializeToString())
                variants[label] = path
            for batch in (1, 8):
                for threads in (1, 2):
                    n = runs if batch == 1 else max(3, runs // 2)
                    row = {"model": name, "batch": batch, "threads": threads,
                           "clock": "process CPU" if threads == 1 else "wall",
                           "load": round(os.getloadavg()[0], 1)}
                    for label, path in variants.items():
                        row[label] = timed(path, batch, threads, n)
                    row["speedup"] = row["fp32"] / row["int8"]
                    if "int8, BN as is" in row:
                        row["speedup_bn_as_is"] = row["fp32"] / row["int8, BN as is"]
                    rows.append(row)
                    print(json.dumps(row), flush=True)
    return rows


def accuracy(nets: list[str], epochs: int, folder: Path, train_samples: int | None) -> list[dict]:
    from cnngraph.train import train
    rows = []
    for name in nets:
        spec = str(GLYPH_RESNET) if name == "glyph_resnet" else name
        run = folder / name
        t0 = time.process_time()
        train(spec, "glyphs", out=run, progress=False, epochs=epochs, device="cpu", seed=0,
              train_samples=train_samples)
        trained = time.process_time() - t0
        subprocess.run([sys.executable, "-m", "cnngraph.cli", "export", str(run), "-o",
                        str(folder / f"{name}.onnx")], check=True, capture_output=True)
        gate = quantize_file(folder / f"{name}.onnx", folder / f"{name}.int8.onnx",
                             calibrate=str(run), say=lambda m: None)
        row = {"net": name, "epochs": epochs, "train_samples": train_samples or 20000,
               "train_cpu_s": round(trained, 1),
               "float_top1": gate.float_top1, "int8_top1": gate.int8_top1,
               "drop_points": round(gate.drop, 2), "samples": gate.samples}
        rows.append(row)
        print(json.dumps(row), flush=True)
    return rows


def machine() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True).stdout
        model = next(line.split(":", 1)[1].strip() for line in out.splitlines()
                     if line.startswith("Model name"))
        vnni = "avx512_vnni" in out
    except (OSError, StopIteration):
        model, vnni = platform.processor(), False
    return (f"{model}, {os.cpu_count()} CPUs{', AVX-512 VNNI' if vnni else ''}; "
            f"onnxruntime {ort.__version__}")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--models", default="resnet18,resnet50,googlenet,densenet121")
    p.add_argument("--runs", type=int, default=7)
    p.add_argument("--accuracy", action="store_true")
    p.add_argument("--nets", default="lenet5,glyph_resnet,dcn_net_plain,lrn_within_net")
    p.add_argument("--epochs", type=int, default=3)
    p.add_argument("--train-samples", type=int, help="train on the first N glyphs only")
    p.add_argument("--json", type=Path)
    args = p.parse_args()
    print(f"machine: {machine()}; load average {os.getloadavg()[0]:.1f}", flush=True)
    if args.accuracy:
        with tempfile.TemporaryDirectory(prefix="bench-int8-acc-") as folder:
            rows = accuracy(args.nets.split(","), args.epochs, Path(folder), args.train_samples)
        print("\n| net | epochs × samples | float top-1 | int8 top-1 | drop (points) |\n"
              "|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['net']} | {r['epochs']} × {r['train_samples']} | "
                  f"{100 * r['float_top1']:.2f} % | "
                  f"{100 * r['int8_top1']:.2f} % | {r['drop_points']:+.2f} |")
    else:
        rows = speed(args.models.split(","), args.runs)
        print("\n| model | batch | clock | fp32 ms | int8 ms | int8 speed-up | goal |\n"
              "|---|---|---|---|---|---|---|")
        for r in rows:
            extra = (f" (BN as is: {r['int8, BN as is']:.1f} ms, {r['speedup_bn_as_is']:.2f}×)"
                     if "speedup_bn_as_is" in r else "")
            goal = GOALS.get(r["model"])
            print(f"| {r['model']} | {r['batch']} | {r['threads']} thread{'s' * (r['threads'] > 1)}"
                  f", {r['clock']} | {r['fp32']:.1f} | {r['int8']:.1f} | "
                  f"**{r['speedup']:.2f}×**{extra} | "
                  f"{'≥ %.1f× — %s' % (goal, 'met' if r['speedup'] >= goal else 'missed') if goal else ''} |")
    if args.json:
        args.json.write_text(json.dumps({"machine": machine(), "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
