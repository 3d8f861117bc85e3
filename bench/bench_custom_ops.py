"""Benchmark custom_ops on this machine: deform_conv2d forward and forward+backward against a dense
conv2d of the same shape and onnxruntime's native DeformConv forward; LRN within vs across
channels. Prints Markdown tables (milliseconds, median of --repeat rounds).

The torch contenders of one case run interleaved (one call each per round, in the same process),
so load from other jobs on a shared machine hits them alike and the ratios stay meaningful;
onnxruntime's forward is timed right after them (its thread pool slows torch calls next to it).

    .venv/bin/python bench/bench_custom_ops.py [--repeat 9] [--threads 1 2]
"""
from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
import custom_ops  # noqa: E402

# (N, C, M, H, W, kernel, groups = offset groups): the case, a larger one, a grouped one.
CASES = [(8, 64, 64, 56, 56, 3, 1), (8, 128, 128, 56, 56, 3, 1), (8, 64, 64, 56, 56, 3, 2)]


def interleaved(fns: list, repeat: int, warmup: int = 3) -> list[float]:
    """Median wall time in ms of each fn, calling them in turn for `repeat` rounds after
    `warmup` rounds (the first calls of a process also grow its heap and thread pools)."""
    times = [[] for _ in fns]
    for round in range(warmup + repeat):
        for fn, spent in zip(fns, times):
            start = time.perf_counter()
            fn()
            if round >= warmup:
                spent.append(time.perf_counter() - start)
    return [statistics.median(spent) * 1e3 for spent in times]


def ort_deform_conv(x, weight, bias, offset, mask, groups: int, threads: int):
    """A one-node ONNX model running onnxruntime's native DeformConv (CPU provider)."""
    names = ["X", "W", "offset", "B", "mask"]
    arrays = [x, weight, offset, bias, mask]
    inputs = [helper.make_tensor_value_info(n, TensorProto.FLOAT, a.shape)
              for n, a in zip(names, arrays)]
    node = helper.make_node("DeformConv", names, ["Y"], pads=[1, 1, 1, 1], group=groups,
                            offset_group=groups)
    graph = helper.make_graph([node], "deform", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    # Idle onnxruntime workers spin for a while after each run by default, which would steal
    # the cores from the torch contender that runs next in the interleaved rounds.
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    session = ort.InferenceSession(model.SerializeToString(), options,
                                   providers=["CPUExecutionProvider"])
    feed = dict(zip(names, arrays))
    return lambda: session.run(None, feed)


def deform_rows(repeat: int, threads: int):
    for n, c, m, h, w, k, g in CASES:
        torch.manual_seed(0)
        x = torch.randn(n, c, h, w)
        weight = torch.randn(m, c // g, k, k) * 0.05
        bias = torch.randn(m)
        offset = torch.randn(n, 2 * g * k * k, h, w) * 2
        mask = torch.rand(n, g * k * k, h, w)
        shape = f"N={n} C={c} M={m} {h}×{w} {k}×{k}" + (f" groups={g} offset_groups={g}" if g > 1 else "")

        def fwd():
            with torch.no_grad():
                custom_ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)

        leaves = [t.clone().requires_grad_() for t in (x, offset, weight, bias, mask)]
        # a dense gradient, as from a following layer (the expanded one of .sum() is one
        # number read over and over, which flatters every kernel that reads it)
        grad = torch.randn(n, m, h, w)

        def fwd_bwd():
            xi, oi, wi, bi, mi = leaves
            custom_ops.deform_conv2d(xi, oi, wi, bi, 1, 1, 1, mi).backward(grad)

        def conv():
            with torch.no_grad():
                F.conv2d(x, weight, bias, 1, 1, 1, g)

        dense = [t.clone().requires_grad_() for t in (x, weight, bias)]

        def conv_bwd():
            F.conv2d(*dense, 1, 1, 1, g).backward(grad)

        times = interleaved([fwd, fwd_bwd, conv, conv_bwd], repeat)
        # onnxruntime after the torch runs: its thread pool, even with spinning off, slowed
        # every torch call interleaved with it by 20-40 % here (ours and the dense conv alike)
        native = ort_deform_conv(*(t.numpy() for t in (x, weight, bias, offset, mask)), g, threads)
        times += interleaved([native], repeat)
        del native
        yield (f"deform_conv2d v2 {shape}", *times)


def lrn_rows(repeat: int):
    x = torch.randn(8, 64, 56, 56)
    grad = torch.randn_like(x)
    for region in ("across_channels", "within_channel"):
        leaf = x.clone().requires_grad_()

        def fwd():
            with torch.no_grad():
                custom_ops.local_response_norm(x, 5, 1e-4, 0.75, 1.0, region)

        def fwd_bwd():
            custom_ops.local_response_norm(leaf, 5, 1e-4, 0.75, 1.0, region).backward(grad)

        yield (region, *interleaved([fwd, fwd_bwd], repeat))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2],
                        help="torch threads = onnxruntime intra-op threads, one table each")
    args = parser.parse_args()
    print(f"machine: {platform.processor() or platform.machine()}, {os.cpu_count()} CPUs; "
          f"torch {torch.__version__}, onnxruntime {ort.__version__}; load average "
          f"{os.getloadavg()[0]:.1f}\n")
    print("| threads | deform_conv2d case | fwd ms | fwd+bwd ms | conv2d fwd ms "
          "| conv2d fwd+bwd ms | ORT DeformConv fwd ms | fwd / ORT | fwd+bwd / conv2d fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for name, t_fwd, t_fb, t_conv, t_conv_fb, t_ort in deform_rows(args.repeat, threads):
            print(f"| {threads} | {name} | {t_fwd:.1f} | {t_fb:.1f} | {t_conv:.1f} "
                  f"| {t_conv_fb:.1f} | {t_ort:.1f} | {t_fwd / t_ort:.2f}× "
                  f"| {t_fb / t_conv_fb:.2f}× |", flush=True)
    print("\n| threads | LRN size 5, N=8 C=64 56×56 | fwd ms | fwd+bwd ms |")
    print("|---|---|---|---|")
    for threads in args.threads:
        torch.set_num_threads(threads)
        for region, t_fwd, t_fb in lrn_rows(args.repeat):
            print(f"| {threads} | {region} | {t_fwd:.1f} | {t_fb:.1f} |", flush=True)


if __name__ == "__main__":
    main()
