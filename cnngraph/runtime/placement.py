"""Placement proof: which execution provider ran every node, read from onnxruntime's own profile.

onnxruntime inlines model-local functions (the `cnngraph` custom ops) before it partitions the
graph, so their body nodes are placed like any other; it names them `_inlfunc_<Function>_<node>`,
which is how the report attributes them to their function. The profile lists the nodes of the
graph as optimised (fused nodes appear once, under the fused kernel's name).
"""
from __future__ import annotations

import json
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx

from .session import PlacementError


@dataclass(frozen=True)
class NodePlacement:
    name: str
    op_type: str
    provider: str
    function: str | None      # the cnngraph function whose body it came from, if any
    compute: bool             # produces floating-point data (not shape arithmetic)


@dataclass
class Placement:
    model: str
    device: str               # the provider asked for
    nodes: list[NodePlacement]

    def counts(self) -> Counter:
        return Counter(n.provider for n in self.nodes)

    def fallbacks(self) -> list[NodePlacement]:
        """Compute nodes that did not run on the provider asked for."""
        return [n for n in self.nodes if n.compute and n.provider != self.device]

    def table(self) -> str:
        width = max([len(n.name) for n in self.nodes] + [4])
        lines = [f"{'node':<{width}}  {'op':<20} {'provider':<24} function"]
        lines += [f"{n.name:<{width}}  {n.op_type:<20} {n.provider:<24} {n.function or ''}"
                  for n in self.nodes]
        summary = ", ".join(f"{p}: {c}" for p, c in self.counts().items())
        lines.append(f"{len(self.nodes)} nodes ({summary}); "
                     f"{len(self.fallbacks())} compute node(s) off {self.device}")
        return "\n".join(lines)


def placement(model_path: str | Path, device: str = "cpu", device_id: int = 0, *,
              strict: bool = False, fused: bool = True, **predictor_options) -> Placement:
    """Run the model once under onnxruntime's profiler on `device` ('cpu' | 'cuda') and report
    the provider of every node that ran. `strict` also asks onnxruntime itself to refuse any
    node on the CPU (session config session.disable_cpu_ep_fallback). `fused=False` profiles
    the graph without fusions (basic optimisation), so every node of the inlined graph shows."""
    from .predictor import Predictor
    model_path = Path(model_path)
    with tempfile.TemporaryDirectory(prefix="cnngraph-profile-") as folder:
        predictor = Predictor(model_path, device, device_id, strict=strict, profile_dir=folder,
                              optimization="all" if fused else "basic", **predictor_options)
        feeds = {}
        for spec in predictor.inputs:
            shape = [d if isinstance(d, int) else 1 for d in spec.shape]
            dtype = np.float32 if "float" in spec.type else np.int64
            feeds[spec.name] = np.zeros(shape, dtype)
        predictor.session.run(predictor.output_names, feeds)
        events = json.loads(Path(predictor.session.end_profiling()).read_text())
        provider = predictor.provider
    functions = _function_names(model_path)
    nodes, seen = [], set()
    for e in events:
        if e.get("cat") != "Node" or not e["name"].endswith("_kernel_time"):
            continue
        name = e["name"][: -len("_kernel_time")]
        if name in seen:
            continue
        seen.add(name)
        args = e["args"]
        outputs = [next(iter(t)) for t in args.get("output_type_shape", [])]
        nodes.append(NodePlacement(
            name=name, op_type=args["op_name"], provider=args["provider"],
            function=next((f for f in functions if name.startswith(f"_inlfunc_{f}_")), None),
            compute=any(t in ("float", "float16", "double", "bfloat16") for t in outputs)))
    return Placement(str(model_path), provider, nodes)


def check_placement(model_path: str | Path, device: str = "cuda", **options) -> Placement:
    """`placement`, raising PlacementError when a compute node ran off `device`: the check
    behind `cnngraph verify --placement`."""
    report = placement(model_path, device, **options)
    off = report.fallbacks()
    if off:
        listed = ", ".join(f"{n.name} ({n.op_type})" for n in off[:8])
        raise PlacementError(f"{model_path}: {len(off)} compute node(s) run on the CPU instead of "
                             f"{report.device}: {listed}{' ...' if len(off) > 8 else ''}")
    return report


def _function_names(model_path: Path) -> list[str]:
    from ..files import read_onnx
    model = read_onnx(model_path)
    # longest first, so a function named like the prefix of another is not matched by mistake
    return sorted({f.name for f in model.functions}, key=len, reverse=True)
