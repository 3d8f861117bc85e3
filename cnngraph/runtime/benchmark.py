"""Timing helpers shared by `cnngraph bench`, `cnngraph demo` and bench/bench_runtime.py: the
same model in PyTorch (eager, optionally torch.compile) and on onnxruntime, timed the same way
(warm-up, then timed runs within a time budget), with the parity error between them."""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from .predictor import Predictor


@dataclass
class Timing:
    engine: str          # "torch eager", "torch.compile", "onnxruntime"
    batch: int
    p50_ms: float
    p90_ms: float
    throughput: float    # samples per second at the median latency
    runs: int
    max_rel_err: float | None = None   # max |this - torch eager| / max |torch eager|, same input
    speedup: float | None = None       # torch eager p50 / this p50

    def as_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], batch: int, engine: str, *, warmup: int = 3,
            min_runs: int = 5, max_runs: int = 50, budget_s: float = 3.0,
            sync: Callable[[], None] | None = None) -> Timing:
    """Call fn `warmup` times, then time it at least `min_runs` and at most `max_runs` times, or
    until `budget_s` has passed. `sync` waits for the device (CUDA) before the clock stops."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    times = []
    start = time.perf_counter()
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    p50, p90 = np.percentile(times, [50, 90])
    return Timing(engine, batch, p50 * 1e3, p90 * 1e3, batch / p50, len(times))


def compare(module, model_path: str | Path, batch_sizes: list[int], *, device: str = "cpu",
            fp16: bool = False, compile: bool = False, cuda_graph: bool = False,
            seed: int = 0, **timing) -> list[Timing]:
    """Time `module` (torch, None for onnxruntime only) and the exported model at each batch
    size on one device, on the same seeded inputs. Parity: the largest absolute difference
    from torch eager in float32 over the largest eager magnitude (random-init nets can have
    huge logits); fp16 runs are compared against that float32 reference too."""
    import torch
    predictor = Predictor(model_path, device, fp16=fp16, cuda_graph=cuda_graph)
    on_cuda = predictor.provider == "CUDAExecutionProvider"
    tdev = torch.device("cuda" if on_cuda else "cpu")
    sync = torch.cuda.synchronize if on_cuda else None
    spec = predictor.inputs[0]
    rows: list[Timing] = []
    for batch in batch_sizes:
        shape = [batch] + [d if isinstance(d, int) else 1 for d in spec.shape[1:]]
        x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
        reference = None
        eager = None
        if module is not None:
            module = module.to(tdev).eval()
            xt = torch.from_numpy(x).to(tdev)
            with torch.inference_mode():
                reference = _first(module(xt)).float().cpu().numpy()
                runner = module.half() if fp16 else module
                xr = xt.half() if fp16 else xt
                eager = measure(lambda: runner(xr), batch, "torch eager", sync=sync, **timing)
                rows.append(eager)
                if compile:
                    compiled = torch.compile(runner)
                    out = _first(compiled(xr)).float().cpu().numpy()
                    t = measure(lambda: compiled(xr), batch, "torch.compile", sync=sync, **timing)
                    rows.append(_against(t, eager, out, reference))
                if fp16:
                    module.float()
        if on_cuda:   # inputs and outputs stay on the GPU (IO binding), as a pipeline would
            xt = torch.from_numpy(x).to(tdev)
            out = predictor.run_torch(xt)[0].float().cpu().numpy()
            t = measure(lambda: predictor.run_torch(xt), batch, "onnxruntime", sync=sync, **timing)
        else:
            out = predictor.run(x)[0]
            t = measure(lambda: predictor.run(x), batch, "onnxruntime", **timing)
        rows.append(_against(t, eager, out, reference))
    return rows


def _first(out):
    return next(iter(out.values())) if isinstance(out, dict) else out


def _against(t: Timing, eager: Timing | None, out: np.ndarray, reference: np.ndarray | None) -> Timing:
    if reference is not None:
        scale = max(float(np.abs(reference).max()), 1e-12)
        t.max_rel_err = float(np.abs(out.astype(np.float32) - reference).max()) / scale
    if eager is not None:
        t.speedup = eager.p50_ms / t.p50_ms
    return t


def table(rows: list[Timing]) -> str:
    """A fixed-width text table of timings."""
    head = f"{'engine':<14} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>10} {'vs eager':>9} {'rel err':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        err = f"{r.max_rel_err:.2e}" if r.max_rel_err is not None else ""
        lines.append(f"{r.engine:<14} {r.batch:>5} {r.p50_ms:>9.2f} {r.p90_ms:>9.2f} "
                     f"{r.throughput:>10.1f} {speed:>9} {err:>10}")
    return "\n".join(lines)
