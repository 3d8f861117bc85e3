"""`cnngraph show SPEC_OR_NAME`: every layer's output shape, parameters, MACs and receptive
field, and the totals; `--json` prints the same as one JSON object."""
from __future__ import annotations

import json

from . import about
from ..errors import InputError
from ..limits import describe


def register(subparsers) -> None:
    p = subparsers.add_parser("show", help="per-layer shapes, params, MACs, receptive fields",
                              description=about(__doc__))
    p.add_argument("spec", help="a spec file (.yaml/.yml/.json) or a zoo name")
    p.add_argument("--input-shape", metavar="N,C,H,W",
                   help="input shape to use instead of the spec's (batch optional: 3,64,64)")
    p.add_argument("--variant", help="a variant of a family spec file")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=run)


def shape_arg(text: str) -> list[int]:
    try:
        return [int(d) for d in text.split(",")]
    except ValueError:
        raise InputError(f"--input-shape must be integers separated by commas, like 1,3,224,224; "
                         f"got {describe(text)}") from None


def run(args) -> int:
    import cnngraph

    shape = shape_arg(args.input_shape) if args.input_shape else None
    try:
        graph = cnngraph.load(args.spec, variant=args.variant, input_shape=shape)
    except InputError as exc:  # only the input shape raises it: name the option
        raise InputError(f"--input-shape {args.input_shape}: {exc}") from None
    rank = len(graph.inputs[0].shape)
    batch = shape[0] if shape and len(shape) == rank else "N"
    report = summary(graph, batch)
    print(json.dumps(report) if args.json else table(report))
    return 0


def summary(graph, batch) -> dict:
    """Everything `show` prints, as plain data (shapes with `batch` as dim 0)."""
    def shape(node_name: str) -> list:
        return [batch, *graph[node_name].shape[1:]]

    return {
        "name": graph.name,
        "params": graph.params,
        "macs": graph.macs,
        "params_inference": graph.params_for(False),
        "macs_inference": graph.macs_for(False),
        "inputs": {n.name: shape(n.name) for n in graph.inputs},
        "outputs": {o.name: shape(o.node) for o in graph.outputs},
        "output_phases": {o.name: o.phase for o in graph.outputs},
        "layers": [{"name": n.name, "op": n.op, "shape": shape(n.name),
                    "params": n.stats["params"], "macs": n.stats["macs"],
                    "receptive_field": list(n.stats["receptive_field"]),
                    "jump": list(n.stats["jump"])} for n in graph],
    }


def table(report: dict) -> str:
    rows = [("layer", "op", "output shape", "params", "MACs", "RF")]
    for layer in report["layers"]:
        rf = layer["receptive_field"]
        rows.append((layer["name"], layer["op"], "x".join(map(str, layer["shape"])),
                     f"{layer['params']:,}", f"{layer['macs']:,}",
                     f"{rf[0]:g}" if rf[0] == rf[1] else f"{rf[0]:g}x{rf[1]:g}"))
    widths = [max(len(row[i]) for row in rows) for i in range(6)]
    lines = ["  ".join(cell.ljust(w) if i < 3 else cell.rjust(w)
                       for i, (cell, w) in enumerate(zip(row, widths))) for row in rows]
    lines.insert(1, "-" * len(lines[0]))
    lines.append("")
    outputs = ", ".join(f"{name} {'x'.join(map(str, shape))}"
                        + ("" if report["output_phases"][name] == "both"
                           else f" ({report['output_phases'][name]} only)")
                        for name, shape in report["outputs"].items())
    lines.append(f"{report['name']}: {len(report['layers'])} layers; outputs: {outputs}")
    lines.append(f"params: {report['params']:,}   MACs: {report['macs']:,}")
    if (report["params_inference"], report["macs_inference"]) != (report["params"],
                                                                 report["macs"]):
        lines.append(f"inference (training-only outputs dropped): params: "
                     f"{report['params_inference']:,}   MACs: {report['macs_inference']:,}")
    return "\n".join(lines)
