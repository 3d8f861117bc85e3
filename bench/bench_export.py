"""Benchmarks of the ONNX exporter (numbers go to docs/export.md).

    .venv/bin/python bench/bench_export.py                 # everything
    .venv/bin/python bench/bench_export.py kernels         # cnngraph nodes vs standard ops
    .venv/bin/python bench/bench_export.py export          # export + full check time vs size
    .venv/bin/python bench/bench_export.py latency [NAME…] # this exporter vs torch.onnx dynamo

kernels: a cnngraph.DeformConv node against a bare standard DeformConv of the same shape (and
the legacy GridSample body), a cnngraph.LRNWithinChannel node against one Relu over the same
tensor. export: `export_onnx` + `check_model(full_check=True)` from lenet5 to densenet201.
latency: onnxruntime CPU latency at batch 1 of each zoo model exported here and by
`torch.onnx.export(dynamo=True)` from the same PyTorch module. Medians over repeated runs.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from exporters import custom_domain  # noqa: E402
from exporters.opset import default_opset, ir_version_for  # noqa: E402

THREADS = os.cpu_count()


def session(model: onnx.ModelProto | str) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = THREADS
    source = model if isinstance(model, str) else model.SerializeToString()
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


def median_ms(sess: ort.InferenceSession, feeds: dict, repeat: int = 30, warmup: int = 5) -> float:
    for _ in range(warmup):
        sess.run(None, feeds)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        sess.run(None, feeds)
        times.append(time.perf_counter() - start)
    return statistics.median(times) * 1e3


def one_node_model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], deform_body="native"):
    opset = default_opset()
    graph = helper.make_graph(
        [node], "bench",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version_for(opset))
    return custom_domain.attach_functions(model, deform_body)


def bench_kernels() -> None:
    rng = np.random.default_rng(0)
    print(f"## kernels (onnxruntime CPU, {THREADS} threads, median ms)")
    for n, c, hw in [(1, 64, 56), (8, 64, 28)]:
        feeds = {"x": rng.standard_normal((n, c, hw, hw), dtype=np.float32),
                 "w": rng.standard_normal((c, c, 3, 3), dtype=np.float32),
                 "offset": rng.standard_normal((n, 18, hw, hw), dtype=np.float32),
                 "b": rng.standard_normal((c,), dtype=np.float32),
                 "mask": rng.uniform(size=(n, 9, hw, hw)).astype(np.float32)}
        names = list(feeds)
        attrs = dict(pads=[1, 1, 1, 1])
        bare = median_ms(session(one_node_model(helper.make_node("DeformConv", names, ["y"], **attrs), feeds)), feeds)
        ours = median_ms(session(one_node_model(helper.make_node("DeformConv", names, ["y"], domain="cnngraph", **attrs), feeds)), feeds)
        legacy = median_ms(session(one_node_model(helper.make_node("DeformConv", names, ["y"], domain="cnngraph", **attrs), feeds, "legacy")), feeds, repeat=10)
        print(f"DeformConv 3x3 {c}->{c} on {n}x{c}x{hw}x{hw}: bare {bare:.2f}  cnngraph {ours:.2f} "
              f"({ours / bare:.3f}x)  legacy body {legacy:.2f} ({legacy / bare:.1f}x)")
    for shape in [(1, 64, 56, 56), (8, 32, 32, 32)]:
        feeds = {"x": rng.standard_normal(shape, dtype=np.float32)}
        relu = median_ms(session(one_node_model(helper.make_node("Relu", ["x"], ["y"]), feeds)), feeds, repeat=100)
        # floors for any body: the window sum alone, the log a non-integer power needs, and
        # onnxruntime's own native LRN kernel (across channels) over the same tensor
        for label, node in [("AveragePool 3x3 alone", helper.make_node(
                                "AveragePool", ["x"], ["y"], kernel_shape=[3, 3], auto_pad="SAME_UPPER")),
                            ("Log alone", helper.make_node("Log", ["x"], ["y"])),
                            ("standard LRN size 3", helper.make_node(
                                "LRN", ["x"], ["y"], size=3, alpha=5e-5, beta=0.75))]:
            ms = median_ms(session(one_node_model(node, feeds)), feeds, repeat=30)
            print(f"{label} on {'x'.join(map(str, shape))}: {ms:.3f} ({ms / relu:.1f}x Relu)")
        for size in (3, 5):
            node = helper.make_node("LRNWithinChannel", ["x"], ["y"], domain="cnngraph", kernel_shape=[size, size],
                                    alpha=5e-5, beta=0.75)
            lrn = median_ms(session(one_node_model(node, feeds)), feeds, repeat=100)
            print(f"LRNWithinChannel size {size} on {'x'.join(map(str, shape))}: {lrn:.3f} vs "
                  f"Relu {relu:.3f} ({lrn / relu:.1f}x)")


def _build(name: str):
    import cnngraph

    graph = cnngraph.load(name)
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    with torch.no_grad():  # no all-zero biases or offsets an exporter could fold away
        for param in module.parameters():
            param.add_(0.01 * torch.randn_like(param))
    return graph, module


def bench_export(names: list[str]) -> None:
    from exporters import export_onnx

    print("## export time (export_onnx + check_model(full_check=True), seconds)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            graph, module = _build(name)
            path = Path(tmp) / f"{name}.onnx"
            start = time.perf_counter()
            model = export_onnx(graph, module, path)
            exported = time.perf_counter() - start
            onnx.checker.check_model(str(path), full_check=True)
            total = time.perf_counter() - start
            print(f"{name:<14} {len(graph):>5} IR nodes {len(model.graph.node):>5} ONNX nodes  "
                  f"export {exported:5.2f}  + check {total:5.2f}")


def bench_latency(names: list[str]) -> None:
    from exporters import export_onnx, torch_onnx_export

    print(f"## latency at batch 1 (onnxruntime CPU, {THREADS} threads, median ms)")
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            graph, module = _build(name)
            x = np.random.default_rng(0).standard_normal((1, *graph.input_shape), dtype=np.float32)
            ours = Path(tmp) / "ours.onnx"
            export_onnx(graph, module, ours)
            theirs = Path(tmp) / "dynamo.onnx"
            torch_onnx_export(module, (torch.from_numpy(x),), theirs)
            a, b = session(str(ours)), session(str(theirs))
            feeds_a, feeds_b = {a.get_inputs()[0].name: x}, {b.get_inputs()[0].name: x}
            times_a, times_b = [], []
            for _ in range(5 if graph.macs > 5e9 else 20):  # interleaved: load drifts hit both
                times_a.append(median_ms(a, feeds_a, repeat=1, warmup=1))
                times_b.append(median_ms(b, feeds_b, repeat=1, warmup=1))
            t_ours, t_theirs = statistics.median(times_a), statistics.median(times_b)
            print(f"{name:<14} cnngraph {t_ours:8.2f}  torch.onnx dynamo {t_theirs:8.2f}  "
                  f"ratio {t_ours / t_theirs:.2f}")


EXPORT_NAMES = ["lenet5", "alexnet", "resnet18", "googlenet", "resnet50", "inception_v3",
                "densenet121", "vgg16", "resnet152", "densenet201"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("what", nargs="?", default="all", choices=["all", "kernels", "export", "latency"])
    parser.add_argument("names", nargs="*", help="zoo names (export, latency)")
    args = parser.parse_args()
    print(f"machine: {os.cpu_count()}-core CPU, onnxruntime {ort.__version__}, opset {default_opset()}")
    if args.what in ("all", "kernels"):
        bench_kernels()
    if args.what in ("all", "export"):
        bench_export(args.names or EXPORT_NAMES)
    if args.what in ("all", "latency"):
        from cnngraph import zoo

        bench_latency(args.names or zoo.names())


if __name__ == "__main__":
    main()
