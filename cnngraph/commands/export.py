"""`cnngraph export SOURCE -o model.onnx`: a spec, zoo name or training run to ONNX."""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

from ..errors import ExportError
from ..files import check_output
from ..options import BATCH, OPSET, SEED, add_weights

log = logging.getLogger("cnngraph.export")


def register(subparsers) -> None:
    p = subparsers.add_parser("export", help="write a network and its weights as ONNX",
                              description=__doc__)
    p.add_argument("source", metavar="SPEC_OR_NAME_OR_RUN_DIR",
                   help="a spec file, a zoo name, or a training run directory (its best weights)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .onnx file to write")
    add_weight_options(p)
    p.add_argument("--opset", type=OPSET, help="ONNX opset (default: the newest onnxruntime runs)")
    p.add_argument("--fp16", action="store_true", help="float16 weights and compute (I/O float32)")
    p.add_argument("--static-batch", type=BATCH, metavar="N", help="fix the batch size to N")
    p.add_argument("--keep-aux", action="store_true", help="keep training-only outputs (aux heads)")
    p.add_argument("--deform-body", choices=["native", "legacy"], default="native",
                   help="body of cnngraph.DeformConv: the standard DeformConv, or GridSample+"
                        "MatMul for runtimes without it (slower)")
    p.set_defaults(func=run)


def add_weight_options(p: argparse.ArgumentParser) -> None:
    add_weights(p, "the run's best weights, or a seeded random initialisation")
    p.add_argument("--seed", type=SEED, default=0, help="seed of the random initialisation")


def run(args) -> int:
    from exporters import export_onnx

    if args.static_batch is not None and args.static_batch < 1:
        raise ExportError(f"--static-batch must be at least 1, got {args.static_batch}")
    check_output(args.output, "-o", "model.onnx")
    if args.output.suffix.lower() != ".onnx":
        log.warning("note: %s does not end in .onnx (it is written as ONNX all the same)",
                    args.output)
    graph, module = resolve(args.source, args.weights, args.seed, args.naming)
    model = export_onnx(graph, module, args.output, opset=args.opset,
                        dynamic_batch=args.static_batch is None, batch_size=args.static_batch or 1,
                        fp16=args.fp16, keep_aux=args.keep_aux, deform_body=args.deform_body)
    size = args.output.stat().st_size / 1e6
    print(f"wrote {args.output} ({size:.1f} MB, opset {model.opset_import[0].version}, "
          f"{len(model.graph.node)} nodes)")
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
