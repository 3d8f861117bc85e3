"""`cnngraph export SOURCE -o model.onnx`: a spec, zoo name or training run to ONNX."""
from __future__ import annotations

import argparse
import logging
import tempfile
from pathlib import Path

from ..errors import ExportError
from ..files import check_output
from ..options import BATCH, OPSET, SEED, Range, add_weights

log = logging.getLogger("cnngraph.export")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a network and its weights as ONNX",
                              description=__doc__)
    p.add_argument("source", metavar="SPEC_OR_NAME_OR_RUN_DIR",
                   help="a spec file, a zoo name, or a training run directory (its best weights)")
    p.add_argument("-o", "--output", type=Path,
                   help="the .onnx file to write (required unless --triton is given)")
    add_weight_options(p)
    p.add_argument("--opset", type=OPSET, help="ONNX opset (default: the newest onnxruntime runs)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute (I/O float32)")
    p.add_argument("--static-batch", type=BATCH, metavar="N", help="fix the batch size to N")
    p.add_argument("--keep-aux", action="store_true", help="keep training-only outputs (aux heads)")
    p.add_argument("--deform-body", choices=["native", "legacy"], default="native",
                   help="body of cnngraph.DeformConv: the standard DeformConv, or GridSample+"
                        "MatMul for runtimes without it (slower)")
    int8 = p.add_argument_group("int8 (docs/int8.md)")
    int8.add_argument("--int8", action="store_true",
                      help="static int8 quantization with an accuracy gate (exit 1 when refused)")
    from .quantize import add_int8_options
    add_int8_options(int8, required=False)
    triton = p.add_argument_group("Triton Inference Server (docs/int8.md)")
    triton.add_argument("--triton", metavar="REPO", type=Path,
                        help="also write a Triton model repository: REPO/NAME/config.pbtxt, "
                             "REPO/NAME/1/model.onnx, REPO/NAME/labels.txt")
    triton.add_argument("--triton-name", metavar="NAME",
                        help="the model's name in the repository (default: the network's name, "
                             "with _fp16 or _int8 appended)")
    triton.add_argument("--triton-max-batch", type=BATCH, default=64, metavar="N",
                        help="max_batch_size for dynamic batching (default 64)")
    triton.add_argument("--triton-gpu", action="store_true",
                        help="instances on the GPU (KIND_GPU, with the CUDA options); default CPU")
    triton.add_argument("--triton-instances", type=INSTANCES, default=1, metavar="N",
                        help="model instances (default 1)")
    p.set_defaults(func=run)


INSTANCES = Range(int, 1, 64)


def add_weight_options(p: argparse.ArgumentParser) -> None:
    add_weights(p, "the run's best weights, or a seeded random initialisation")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the random initialisation")


def run(args) -> int:
    from exporters import export_onnx

    if args.static_batch is not None and args.static_batch < 1:
        raise ExportError(f"--static-batch must be at least 1, got {args.static_batch}")
    if args.output is None and args.triton is None:
        raise ExportError("give -o FILE.onnx (or --triton REPO, or both)")
    if args.output is not None:
        check_output(args.output, "-o", "model.onnx")
        if args.output.suffix.lower() != ".onnx":
            log.warning("note: %s does not end in .onnx (it is written as ONNX all the same)",
                        args.output)
    if args.int8 and args.fp16:
        raise ExportError("--int8 and --fp16 exclude each other: choose one precision")
    int8_options = ("calibrate", "data", "eval_samples", "per_tensor")
    if not args.int8 and any(getattr(args, k) not in (None, False) for k in int8_options):
        raise ExportError("--calibrate, --data, --eval-samples and --per-tensor go with --int8")
    if args.int8 and args.calibrate is None:
        if not Path(args.source).is_dir():
            raise ExportError(f"--int8 needs calibration data: give --calibrate DATA (a run "
                              f"directory or a dataset), or export a training run directory, "
                              f"which calibrates on its own training data")
        args.calibrate = args.source
    if args.triton is not None:
        from ..triton import model_config_pb2
        model_config_pb2()  # the optional dependency is there, before any work
    graph, module = resolve(args.source, args.weights, args.seed, args.naming)
    with tempfile.TemporaryDirectory(prefix="cnngraph-export-") as folder:
        staged = Path(folder) / "model.onnx"
        float_path = staged if args.int8 or args.output is None else args.output
        model = export_onnx(graph, module, float_path, opset=args.opset,
                            dynamic_batch=args.static_batch is None,
                            batch_size=args.static_batch or 1, fp16=args.fp16,
                            keep_aux=args.keep_aux, deform_body=args.deform_body)
        final = float_path
        if args.int8:
            from .quantize import quantize
            final = args.output or Path(folder) / "model.int8.onnx"
            if quantize(float_path, final, args, scratch=args.output is None):
                return 1
        elif args.output is not None:
            size = args.output.stat().st_size / 1e6
            print(f"wrote {args.output} ({size:.1f} MB, opset {model.opset_import[0].version}, "
                  f"{len(model.graph.node)} nodes)")
        if args.triton is not None:
            from ..triton import write_repository
            suffix = "_int8" if args.int8 else "_fp16" if args.fp16 else ""
            config = write_repository(final, args.triton, args.triton_name or graph.name + suffix,
                                      classes=graph.meta.get("classes"),
                                      max_batch_size=args.triton_max_batch, gpu=args.triton_gpu,
                                      instances=args.triton_instances)
            print(f"wrote Triton model {config.parent.name} in {args.triton} ({config})")
    return 0


def resolve(source: str, weights: Path | None, seed: int, naming: str | None = None):
    """(graph, module) for a source: a run directory gives its spec and best weights (its last
    ones, said on stdout, before an epoch has finished); else the spec (file or zoo name) with
    `weights` (any naming import_weights takes; `naming` forces one), or a random
    initialisation seeded by `seed`."""
    import torch

    import cnngraph

    run_dir = Path(source)
    if run_dir.is_dir():
        from ..train.rundir import BEST, LAST, load_run

        graph, state, _ = load_run(run_dir)
        if not weights and not (run_dir / BEST).exists():
            print(f"note: {run_dir} has no {BEST} yet (no epoch has finished); "
                  f"using its last weights, {LAST}")
    else:
        graph, state = cnngraph.load(source), None
    torch.manual_seed(seed)
    module = cnngraph.build(graph).eval()
    if weights:
        from ..pretrained import load_weights

        load_weights(graph, module, weights, naming=naming)
    elif state is not None:
        from exporters.ir_export import check_weights, state_arrays

        check_weights(graph, state_arrays(state), built=module)
        module.load_state_dict(state, strict=False)  # checked above; BN step counters optional
    return graph, module
