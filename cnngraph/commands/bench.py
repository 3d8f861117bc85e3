"""`cnngraph bench SPEC_OR_NAME_OR_MODEL`: PyTorch eager (and torch.compile) against onnxruntime
on the same weights and inputs, in one process: p50/p90 latency, throughput, speed-up, parity.

A spec, zoo name or run folder is built (with its run's weights, --weights, or seeded random
weights) and exported to a temporary folder; an exported .onnx is timed on onnxruntime alone,
or against PyTorch when --weights gives its weights (the spec comes from its cnngraph.spec
metadata).
"""
from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

from . import about
from ..errors import InputError
from ..options import SECONDS, SEED, add_weights, batch_list


def register(subparsers) -> None:
    p = subparsers.add_parser("bench", help="time PyTorch against onnxruntime on one model",
                              description=about(__doc__))
    p.add_argument("model", help="a spec file, a zoo name, a training run folder, or an exported .onnx")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], default=None,
                   help="where onnxruntime runs: cuda, cpu, or auto (CUDA when a usable GPU is "
                        "found, else the CPU); default auto, without the note that "
                        "--device auto prints on why it runs on the CPU")
    p.add_argument("--batch-sizes", type=batch_list, default="1,8,64", help="comma-separated (default 1,8,64)")
    p.add_argument("--fp16", action="store_true", help="float16 on both sides (CUDA only)")
    p.add_argument("--compile", action="store_true", help="also time torch.compile")
    p.add_argument("--cuda-graph", action="store_true", help="onnxruntime with CUDA graphs")
    p.add_argument("--int8", action="store_true",
                   help="also time the model quantized to int8 (CPU; a row 'ort int8' with its "
                        "speed-up over float32 onnxruntime)")
    p.add_argument("--calibrate", metavar="DATA",
                   help="with --int8: calibration data (default: a run's own training data, "
                        "else seeded random inputs, which time the same but score nothing)")
    add_weights(p, "a run's best weights, or a seeded random initialisation")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the random initialisation and inputs")
    p.add_argument("--seconds", type=SECONDS, default=3.0, help="time budget per measurement")
    p.add_argument("--json", action="store_true", help="print JSON instead of a table")
    p.set_defaults(func=run)


def say(message: str) -> None:
    """One progress line on stderr (plain text, no cursor control: fine in a log or a pipe)."""
    print(f"bench: {message}", file=sys.stderr, flush=True)


def spec_graph(model: Path):
    """The graph of the spec in the model's cnngraph.spec metadata, or None without one."""
    import cnngraph
    from ..files import read_onnx
    props = {p.key: p.value for p in read_onnx(model).metadata_props}
    if "cnngraph.spec" not in props:
        return None
    try:
        return cnngraph.load(json.loads(props["cnngraph.spec"]))
    except (ValueError, cnngraph.CnnGraphError):  # unreadable metadata: no MAC count, no harm
        return None


def module_for_onnx(model: Path, graph, weights: Path, naming: str | None = None):
    """The PyTorch module of an exported model: the graph of its cnngraph.spec metadata
    (`spec_graph`), these weights."""
    import cnngraph
    if graph is None:
        raise InputError(f"{model}: has no cnngraph.spec metadata, so PyTorch cannot rebuild it; "
                         "bench it without --weights (onnxruntime only)")
    if not weights.is_file():
        raise InputError(f"{weights}: no such weights file")
    from ..pretrained import load_weights
    module = cnngraph.build(graph)
    load_weights(graph, module, weights, naming=naming, say=say)  # any naming; one-line errors
    return module.eval()


def int8_model(path: Path, folder: Path, calibrate: str | None) -> Path:
    """The model quantized as `cnngraph quantize` does (no gate: bench times, it does not score),
    calibrated on 256 samples of `calibrate`, or on 16 seeded random inputs without it."""
    import numpy as np

    from ..files import read_onnx
    from ..quantize import Settings, labelled_inputs, quantize_model
    from ..runtime.benchmark import model_input_shapes
    from ..runtime.inputs import ModelMeta
    header = read_onnx(path)
    if calibrate:
        meta = ModelMeta.from_props({p.key: p.value for p in header.metadata_props}, str(path))
        x, _, data = labelled_inputs(calibrate, meta, None, "train", 256)
        say(f"int8: calibrating on {len(x)} samples of {data}")
    else:
        dims = next(iter(model_input_shapes(path).values()))
        shape = [d if isinstance(d, int) and d > 0 else 1 for d in dims[1:]]
        x, data = np.random.default_rng(0).standard_normal((16, *shape), dtype=np.float32), "random"
        say("int8: calibrating on 16 seeded random inputs (speed only; give --calibrate DATA "
            "to calibrate on data)")
    (folder / "int8").mkdir(exist_ok=True)
    model = quantize_model(header, path, x, Settings(), data, folder / "int8", calibrate)
    out = folder / "model.int8.onnx"
    out.write_bytes(model.SerializeToString())
    return out


def run(args) -> int:
    import torch

    from ..runtime.benchmark import busy_note, compare, table
    from ..runtime.predictor import SPEC_SUFFIXES
    from ..runtime.session import CUDA, resolve_device
    sizes = args.batch_sizes
    if args.int8 and args.fp16:
        raise InputError("--int8 and --fp16 exclude each other: choose one precision")
    if args.calibrate and not args.int8:
        raise InputError("--calibrate goes with --int8")
    device = "cuda" if resolve_device(args.device) == CUDA else "cpu"
    if args.int8 and device == "cuda":
        raise InputError("--int8 times onnxruntime's CPU int8 kernels: add --device cpu")
    options = dict(device=device, fp16=args.fp16, compile=args.compile,
                   cuda_graph=args.cuda_graph, seed=args.seed, budget_s=args.seconds,
                   progress=lambda phase: say(f"{phase} (about {args.seconds:g} s)"))
    source = Path(args.model)
    if source.is_file() and source.suffix.lower() not in {".onnx", *SPEC_SUFFIXES}:
        raise InputError(f"{source}: neither a spec (.yaml, .json) nor an exported model (.onnx); "
                         "export it first with `cnngraph export`, or bench the spec")
    if source.suffix.lower() == ".onnx":
        if not source.is_file():
            raise InputError(f"{source}: no such model file")
        graph = spec_graph(source)
        module = module_for_onnx(source, graph, args.weights, args.naming) if args.weights else None
        macs = graph.macs_for(False) if graph is not None else None
        with tempfile.TemporaryDirectory(prefix="cnngraph-bench-") as folder:
            int8 = int8_model(source, Path(folder), args.calibrate) if args.int8 else None
            rows = compare(module, source, sizes, macs=macs, int8_path=int8, **options)
        name = source.name
    else:
        from exporters import export_onnx

        from .export import resolve
        say(f"building {args.model}")
        graph, module = resolve(args.model, args.weights, args.seed, args.naming)
        with tempfile.TemporaryDirectory(prefix="cnngraph-bench-") as folder:
            path = Path(folder) / f"{graph.name}.onnx"
            say(f"exporting {graph.name} to ONNX")
            export_onnx(graph, module, path)
            calibrate = args.calibrate or (args.model if Path(args.model).is_dir() else None)
            int8 = int8_model(path, Path(folder), calibrate) if args.int8 else None
            rows = compare(module, path, sizes, macs=graph.macs_for(False), int8_path=int8,
                           **options)
        name = graph.name
    if args.json:
        print(json.dumps({"model": name, "device": device, "fp16": args.fp16,
                          "torch_threads": torch.get_num_threads(),
                          "results": [r.as_dict() for r in rows]}, indent=1))
    else:
        if note := busy_note():
            print(note)
        print(f"{name} on {device} (fp16={args.fp16}, torch threads {torch.get_num_threads()})")
        print(table(rows))
    return 0
