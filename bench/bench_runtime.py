"""Acceptance measurements of the runtime (issue 6), one run, printed as a table.

For every zoo model (or --models): the module built with seeded random weights, timed at
batch 1 in PyTorch eager and on onnxruntime (CPU provider, the Predictor's tuned session) twice:
our export (exporters.export_onnx) and `torch.onnx.export(dynamo=True)` of the same module
(exporters.torch_onnx.torch_onnx_export: the same call plus cnngraph's op translations).
Targets (eager p50 / our onnxruntime p50): resnet18 >= 2.0, densenet121 >= 2.2, googlenet >= 2.0,
alexnet_tv >= 1.3; and our export no slower than the dynamo one (ratio >= 1 within noise).
Parity: max |onnxruntime - eager| / max |eager| (random-init nets can have very large logits).
The machine's arithmetic ceiling comes first: the best multiply-accumulate rate of one large 3×3
convolution on onnxruntime and on PyTorch (oneDNN); each model's onnxruntime rate is given as a
share of it, and "cap" is the largest speed-up that ceiling allows (eager time over the time
the model's MACs take at the peak rate).

    .venv/bin/python bench/bench_runtime.py [--models resnet18,googlenet] [--seconds 3] [--json F]
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import cnngraph  # noqa: E402
from cnngraph.runtime import Predictor, physical_cores  # noqa: E402
from cnngraph.runtime.benchmark import measure  # noqa: E402
from exporters import export_onnx  # noqa: E402
from exporters.torch_onnx import torch_onnx_export  # noqa: E402

TARGETS = {"resnet18": 2.0, "densenet121": 2.2, "googlenet": 2.0, "alexnet_tv": 1.3}
ROUNDS = 3   # rounds per engine (the two exports in alternating order); the best p50 counts


def zoo_names() -> list[str]:
    """Every loadable zoo name: a file's variants, or the file's stem."""
    names = []
    for path in sorted((Path(cnngraph.__file__).parent / "zoo").glob("*.yaml")):
        spec = yaml.safe_load(path.read_text())
        names += list(spec.get("variants", {})) or [path.stem]
    return names


def peak_gmacs(seconds: float) -> float:
    """The best GMAC/s of a 3×3 convolution, 128 -> 128 channels on 4×56×56, on onnxruntime's
    CPU provider and on PyTorch: what this machine's cores do at best, in float32."""
    import onnx
    from onnx import TensorProto, helper
    x = np.random.default_rng(0).standard_normal((4, 128, 56, 56)).astype(np.float32)
    w = np.random.default_rng(1).standard_normal((128, 128, 3, 3)).astype(np.float32) * 0.05
    macs = 4 * 128 * 128 * 9 * 56 * 56
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1, 1, 1, 1])], "conv",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        [onnx.numpy_helper.from_array(w, "w")])
    timing = dict(budget_s=seconds, max_runs=50, min_runs=5, warmup=3)
    with torch.inference_mode():
        xt, wt = torch.from_numpy(x), torch.from_numpy(w)
        eager = measure(lambda: torch.nn.functional.conv2d(xt, wt, padding=1), 1, "eager", **timing)
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "conv.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)],
                                    ir_version=8), path)
        p = Predictor(path, "cpu", cache=False)
        ort_time = measure(lambda: p.run(x), 1, "onnxruntime", **timing)
    return macs / 1e6 / min(eager.p50_ms, ort_time.p50_ms)


def bench_model(name: str, folder: Path, seconds: float) -> dict:
    graph = cnngraph.load(name)
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    x = np.random.default_rng(0).standard_normal((1, *graph.input_shape)).astype(np.float32)
    ours, dynamo = folder / f"{name}.onnx", folder / f"{name}.dynamo.onnx"
    t0 = time.perf_counter()
    export_onnx(graph, module, ours)
    t1 = time.perf_counter()
    torch_onnx_export(module, (torch.from_numpy(x),), dynamo, verbose=False)
    t2 = time.perf_counter()
    xt = torch.from_numpy(x)
    timing = dict(budget_s=seconds, max_runs=200, min_runs=5, warmup=3)
    # eager first, before any onnxruntime session exists: onnxruntime's worker threads spin
    # after each run and would take the cores from PyTorch's threads (see runtime/benchmark.py)
    with torch.inference_mode():
        reference = module(xt)
        reference = (next(iter(reference.values())) if isinstance(reference, dict) else reference).numpy()
        best = {"eager": measure(lambda: module(xt), 1, "eager", rounds=ROUNDS, **timing).p50_ms,
                "ours": np.inf, "dynamo": np.inf}
    sessions = {"ours": Predictor(ours, "cpu", cache=False), "dynamo": Predictor(dynamo, "cpu", cache=False)}
    for round in range(ROUNDS):
        for key in ("ours", "dynamo") if round % 2 == 0 else ("dynamo", "ours"):
            p = sessions[key]
            best[key] = min(best[key], measure(lambda: p.run(x), 1, key, rounds=1, **timing).p50_ms)
    scale = max(float(np.abs(reference).max()), 1e-12)   # random-init nets can have huge logits
    err = {k: float(np.abs(p.run(x)[0] - reference).max()) / scale for k, p in sessions.items()}
    return {"model": name, "eager_ms": best["eager"], "ort_ms": best["ours"],
            "dynamo_ort_ms": best["dynamo"], "speedup": best["eager"] / best["ours"],
            "ours_vs_dynamo": best["dynamo"] / best["ours"], "target": TARGETS.get(name),
            "max_rel_err": err["ours"], "dynamo_max_rel_err": err["dynamo"],
            "export_s": t1 - t0, "dynamo_export_s": t2 - t1, "gmacs": graph.macs_for(False) / 1e9}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", help="comma-separated zoo names (default: the whole zoo)")
    parser.add_argument("--seconds", type=float, default=3.0, help="time budget per measurement")
    parser.add_argument("--json", type=Path, help="also write the results here")
    args = parser.parse_args()
    names = args.models.split(",") if args.models else zoo_names()
    torch.set_num_threads(physical_cores())   # onnxruntime's CPU sessions use the same count
    print(f"{platform.processor() or platform.machine()}, {physical_cores()} physical cores, "
          f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime "
          f"{ort.__version__}, batch 1, CPU provider; load average before: "
          f"{os.getloadavg()[0]:.1f} (timings need an otherwise idle machine)")
    peak = peak_gmacs(args.seconds)
    print(f"peak: {peak:.0f} GMAC/s (best of a large 3x3 convolution on onnxruntime and PyTorch)")
    head = (f"{'model':<16} {'eager ms':>9} {'ort ms':>8} {'speedup':>8} {'target':>7} "
            f"{'cap':>6} {'of peak':>8} {'dynamo ms':>10} {'ours/dyn':>9} {'rel err':>9}")
    print(head + "\n" + "-" * len(head), flush=True)
    rows = []
    with tempfile.TemporaryDirectory(prefix="cnngraph-bench-") as folder:
        for name in names:
            try:
                r = bench_model(name, Path(folder), args.seconds)
            except Exception as exc:  # noqa: BLE001 - report and go on with the other models
                print(f"{name:<16} failed: {type(exc).__name__}: {str(exc).splitlines()[0][:100]}")
                rows.append({"model": name, "error": str(exc)})
                continue
            r["peak_gmacs"] = peak
            r["share_of_peak"] = r["gmacs"] / (r["ort_ms"] / 1e3) / peak
            r["speedup_cap"] = r["eager_ms"] / (r["gmacs"] / peak * 1e3)
            rows.append(r)
            target = f"{r['target']:.1f}x" if r["target"] else ""
            met = "" if not r["target"] else (" ok" if r["speedup"] >= r["target"] else " MISS")
            print(f"{name:<16} {r['eager_ms']:>9.2f} {r['ort_ms']:>8.2f} {r['speedup']:>7.2f}x "
                  f"{target:>7} {r['speedup_cap']:>5.2f}x {r['share_of_peak']:>8.0%} "
                  f"{r['dynamo_ort_ms']:>10.2f} {r['ours_vs_dynamo']:>8.2f}x "
                  f"{r['max_rel_err']:>9.1e}{met}", flush=True)
            for f in Path(folder).iterdir():
                f.unlink()
    if args.json:
        args.json.write_text(json.dumps(rows, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
