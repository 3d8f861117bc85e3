"""Timing helpers shared by `cnngraph bench`, `cnngraph demo` and bench/bench_runtime.py: the
same model in PyTorch (eager, optionally torch.compile) and on onnxruntime, timed the same way
(warm-up, then timed runs within a time budget), with the parity error between them."""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from ..errors import InputError
from .predictor import Predictor
from .session import CUDA, physical_cores, resolve_device


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
    gmacs: float | None = None         # multiply-accumulates per second (1e9) at that throughput
    vs_fp32: float | None = None       # int8 rows: onnxruntime float32 p50 / this p50

    def as_dict(self) -> dict:
        return asdict(self)


def measure(fn: Callable[[], object], batch: int, engine: str, *, warmup: int = 3,
            min_runs: int = 5, max_runs: int = 50, budget_s: float = 3.0, rounds: int = 3,
            sync: Callable[[], None] | None = None) -> Timing:
    """Call fn `warmup` times, then time it in `rounds` rounds of at least `min_runs` and at most
    `max_runs` calls or `budget_s / rounds` seconds each, and keep the round with the lowest p50:
    on a small machine a burst of other work (or a thread pool that has not gone to sleep yet)
    can stall every call of a round, and such a round says nothing about the model. `sync`
    waits for the device (CUDA) before the clock stops."""
    for _ in range(warmup):
        fn()
    if sync:
        sync()
    best: Timing | None = None
    for _ in range(max(1, rounds)):
        times = []
        start = time.perf_counter()
        while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() - start < budget_s / rounds):
            t0 = time.perf_counter()
            fn()
            if sync:
                sync()
            times.append(time.perf_counter() - t0)
        p50, p90 = np.percentile(times, [50, 90])
        if best is None or p50 * 1e3 < best.p50_ms:
            best = Timing(engine, batch, p50 * 1e3, p90 * 1e3, batch / p50, len(times))
    return best


def model_input_shapes(model_path: str | Path) -> dict[str, list]:
    """Every graph input's dimensions (an int, or a name for a symbolic one), by name in the
    model's order, read without starting onnxruntime."""
    from ..files import read_onnx
    graph = read_onnx(model_path).graph
    weights = {t.name for t in graph.initializer}
    return {i.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                     for d in i.type.tensor_type.shape.dim]
            for i in graph.input if i.name not in weights}


def compare(module, model_path: str | Path, batch_sizes: list[int], *, device: str = "cpu",
            fp16: bool = False, compile: bool = False, cuda_graph: bool = False,
            seed: int = 0, macs: int | None = None, int8_path: str | Path | None = None,
            progress: Callable[[str], None] | None = None, **timing) -> list[Timing]:
    """Time `module` (torch, None for onnxruntime only) and the exported model at each batch
    size on one device, on the same seeded inputs; with `macs` (per sample) each row also gets
    its multiply-accumulate rate. With `int8_path` (the model quantized, cnngraph.quantize), an
    "ort int8" row follows each onnxruntime row on the same inputs, with its speed-up over
    float32 onnxruntime (`vs_fp32`). `progress` is told each phase as it starts (a big model takes
    minutes in all). Parity: the largest absolute difference
    from torch eager in float32 over the largest eager magnitude (random-init nets can have
    huge logits); fp16 runs are compared against that float32 reference too.

    Two phases, PyTorch first and then onnxruntime, both with the physical cores as threads:
    onnxruntime's worker threads spin for a while after each run, and on a 2-core machine they
    take the cores from PyTorch's OpenMP team, whose every call then waits on a descheduled
    thread (eager read up to ~500x slow). Other processes do the same to it, which the rounds
    of `measure` and the load note of `busy_note` deal with."""
    import torch
    torch.set_num_threads(physical_cores())
    say = progress or (lambda message: None)
    threads = f"{torch.get_num_threads()} threads"
    on_cuda = resolve_device(device) == CUDA
    tdev = torch.device("cuda" if on_cuda else "cpu")
    sync = torch.cuda.synchronize if on_cuda else None
    shapes = model_input_shapes(model_path)
    dims = next(iter(shapes.values()))
    fixed = dims[0] if dims and isinstance(dims[0], int) and dims[0] > 0 else None
    if fixed is not None and set(batch_sizes) != {fixed}:
        raise InputError(f"{model_path}: exported with a fixed batch of {fixed}; time it with "
                         f"--batch-sizes {fixed} (or export it with a dynamic batch)")
    _check_input_memory(model_path, shapes, batch_sizes)
    inputs = {b: _random_inputs(shapes, b, seed) for b in batch_sizes}  # a list: one per input
    eager_rows: dict[int, list[Timing]] = {b: [] for b in batch_sizes}
    references: dict[int, np.ndarray] = {}
    if module is not None:
        module = module.to(tdev).eval()
        compiled = None
        with torch.inference_mode():
            for batch, x in inputs.items():
                xt = [torch.from_numpy(a).to(tdev) for a in x]
                say(f"torch eager, batch {batch}, {threads}")
                references[batch] = _first(module.float()(*xt)).float().cpu().numpy()
                runner, xr = (module.half(), [t.half() for t in xt]) if fp16 else (module, xt)
                eager = measure(lambda: runner(*xr), batch, "torch eager", sync=sync, **timing)
                eager_rows[batch].append(eager)
                if compile:
                    say(f"torch.compile, batch {batch}: compiling, then timing")
                    if compiled is None:
                        compiled = torch.compile(runner)
                    try:
                        out = _first(compiled(*xr)).float().cpu().numpy()
                    except Exception as exc:  # noqa: BLE001 - inductor raises many kinds
                        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
                        raise InputError(f"torch.compile failed here ({type(exc).__name__}: "
                                         f"{first[:160]}); on CPU it needs a working C++ "
                                         "compiler, on CUDA Triton: run without --compile"
                                         ) from None
                    t = measure(lambda: compiled(*xr), batch, "torch.compile", sync=sync, **timing)
                    eager_rows[batch].append(_against(t, eager, out, references[batch]))
        module.float()
    say("onnxruntime: creating the session")
    predictor = Predictor(model_path, "cuda" if on_cuda else "cpu", fp16=fp16, cuda_graph=cuda_graph)
    rows: list[Timing] = []
    for batch, x in inputs.items():
        eager = eager_rows[batch][0] if eager_rows[batch] else None
        say(f"onnxruntime, batch {batch}")
        if on_cuda:   # inputs and outputs stay on the GPU (IO binding), as a pipeline would
            xt = [torch.from_numpy(a).to(tdev) for a in x]
            out = predictor.run_torch(*xt)[0].float().cpu().numpy()
            t = measure(lambda: predictor.run_torch(*xt), batch, "onnxruntime", sync=sync, **timing)
        else:
            out = predictor.run(*x)[0]
            t = measure(lambda: predictor.run(*x), batch, "onnxruntime", **timing)
        rows += eager_rows[batch] + [_against(t, eager, out, references.get(batch))]
    if int8_path is not None:   # CPU only: onnxruntime's int8 kernels are its CPU provider's
        say("onnxruntime int8: creating the session")
        quantized = Predictor(int8_path, "cpu")
        for batch, x in inputs.items():
            say(f"onnxruntime int8, batch {batch}")
            out = quantized.run(*x)[0]
            t = measure(lambda: quantized.run(*x), batch, "ort int8", **timing)
            eager = eager_rows[batch][0] if eager_rows[batch] else None
            fp32 = next(r for r in rows if r.batch == batch and r.engine == "onnxruntime")
            t = _against(t, eager, out, references.get(batch))
            t.vs_fp32 = fp32.p50_ms / t.p50_ms
            rows.insert(rows.index(fp32) + 1, t)
    if macs:  # how close each engine comes to the machine's arithmetic peak
        for row in rows:
            row.gmacs = macs * row.throughput / 1e9
    return rows


def busy_note() -> str | None:
    """A warning when other processes were competing for the cores in the last minute: PyTorch's
    thread team then waits on descheduled threads, and its timings can read many times slow."""
    if not hasattr(os, "getloadavg"):
        return None
    load, cores = os.getloadavg()[0], physical_cores()
    if load < cores:
        return None
    return (f"note: load average {load:.1f} on {cores} cores; other processes compete for the "
            "cores, so timings (PyTorch's most) may read slow")


def _check_input_memory(model_path, shapes: dict[str, list], batch_sizes: list[int]) -> None:
    """Refuse batch sizes whose random inputs alone would take over half the machine's memory
    (the model's activations need the rest), before numpy tries to allocate them."""
    per_sample = sum(math.prod(d if isinstance(d, int) and d > 0 else 1 for d in dims[1:])
                     for dims in shapes.values())
    need = 4 * per_sample * sum(batch_sizes)  # float32, every batch size held at once
    try:
        memory = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # no sysconf: let numpy answer
        return
    if need > memory // 2:
        raise InputError(f"--batch-sizes {','.join(map(str, batch_sizes))}: the random inputs "
                         f"of {model_path} alone need {need / 2**30:,.1f} GiB, over half of this "
                         f"machine's {memory / 2**30:,.1f} GiB; ask for smaller batch sizes")


def _random_inputs(shapes: dict[str, list], batch: int, seed: int) -> list[np.ndarray]:
    """Seeded standard-normal float32 inputs at this batch, one per model input (a symbolic
    dim other than the batch taken as 1)."""
    rng = np.random.default_rng(seed)
    return [rng.standard_normal([batch] + [d if isinstance(d, int) and d > 0 else 1
                                           for d in dims[1:]], dtype=np.float32)
            for dims in shapes.values()]


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
    int8 = any(r.vs_fp32 is not None for r in rows)
    head = (f"{'engine':<14} {'batch':>5} {'p50 ms':>9} {'p90 ms':>9} {'samples/s':>10} "
            f"{'GMAC/s':>8} {'vs eager':>9} {'rel err':>10}" + (f" {'vs fp32':>8}" if int8 else ""))
    lines = [head, "-" * len(head)]
    for r in rows:
        speed = f"{r.speedup:.2f}x" if r.speedup is not None else ""
        err = f"{r.max_rel_err:.2e}" if r.max_rel_err is not None else ""
        rate = f"{r.gmacs:.0f}" if r.gmacs is not None else ""
        vs = f"{r.vs_fp32:.2f}x" if r.vs_fp32 is not None else ""
        lines.append(f"{r.engine:<14} {r.batch:>5} {r.p50_ms:>9.2f} {r.p90_ms:>9.2f} "
                     f"{r.throughput:>10.1f} {rate:>8} {speed:>9} {err:>10}"
                     + (f" {vs:>8}" if int8 else ""))
    return "\n".join(lines)
