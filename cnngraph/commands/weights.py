"""`cnngraph weights FILE --spec SPEC_OR_NAME -o OUT.safetensors`: a checkpoint converted once
to cnngraph's names (a torchvision state_dict, a .pth/.pt or a .safetensors file, any naming the
spec's family declares; docs/pretrained.md), written as safetensors, with what it matched.

The output loads strictly into `cnngraph.build(spec)` and is what --weights, `cnngraph train`
and the Python API take without renaming again; it records the input normalisation the
checkpoint needs (torchvision's googlenet and inception_v3), so an export from it gets it."""
from __future__ import annotations

from pathlib import Path

from . import about
from ..errors import InputError


def register(subparsers) -> None:
    p = subparsers.add_parser("weights", help="convert a checkpoint (e.g. torchvision's) to "
                              "cnngraph's names, as safetensors", description=about(__doc__))
    p.add_argument("file", type=Path, metavar="FILE",
                   help="the checkpoint: a .safetensors file or a torch state_dict (.pth/.pt)")
    p.add_argument("--spec", required=True, metavar="SPEC_OR_NAME",
                   help="the network it is for: a spec file or a zoo name (resnet50)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the .safetensors to write")
    p.add_argument("--naming", metavar="NAME",
                   help="whose names FILE has, where the keys fit several (torchvision for its "
                        "inception_v3, whose keys are ours); default: recognised from the keys")
    p.set_defaults(func=run)


def run(args) -> int:
    import cnngraph
    from ..files import atomic_write, check_output
    from ..pretrained import import_weights, to_safetensors

    check_output(args.output, "-o", "weights.safetensors")
    if args.output.suffix.lower() != ".safetensors":
        raise InputError(f"-o {args.output}: the output is a safetensors file; name it "
                         f"{args.output.with_suffix('.safetensors').name}")
    if not args.file.is_file():
        raise InputError(f"{args.file}: no such weights file")
    graph = cnngraph.load(args.spec)
    state = import_weights(graph, args.file, naming=args.naming)
    data = to_safetensors(state, graph)
    atomic_write(args.output, data)
    print(f"{args.file}: {state.summary()}")
    print(f"wrote {args.output} ({len(state)} tensors for '{graph.name}', "
          f"{len(data) / 1e6:.1f} MB)")
    return 0
