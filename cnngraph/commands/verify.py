"""`cnngraph verify model.onnx --against SOURCE`: onnxruntime against PyTorch on the same random
inputs, at batch 1 and 3 (or the model's fixed batch); exit 1 when an output differs by more
than the tolerance."""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..errors import DataError, InputError
from .export import add_weight_options, resolve

if TYPE_CHECKING:  # imported where used: onnx is not needed for --help
    import onnx

# max |onnx - torch| / max |torch| per output: float32 exports agree to rounding; float16
# weights and compute keep about 3 significant digits; int8 (8-bit weights and activations, a
# scale per tensor or channel) errs by a few steps of 1/255 of each range, so it is also held to
# top-1 agreement with PyTorch on real samples
TOLERANCE = {"float32": 1e-4, "float16": 1e-2, "int8": 0.1}
INT8_AGREEMENT = 0.9    # int8: the least fraction of samples whose top-1 class equals PyTorch's
INT8_SAMPLES = 64       # int8: held-out samples of the calibration data (1, then the other 63)
BATCHES = (1, 3)  # for a symbolic batch; a fixed one is tested at its size
WEIGHTS_DIFFER = 0.1  # a relative error this large is other weights, not rounding


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="compare an ONNX export with its PyTorch module",
                              description=__doc__)
    p.add_argument("model", type=Path, help="the .onnx file")
    p.add_argument("--against", required=True, metavar="SPEC_OR_NAME_OR_RUN_DIR",
                   help="what it was exported from (with the same --weights / --seed)")
    add_weight_options(p)
    p.add_argument("--data", metavar="DATA",
                   help="int8 models: samples to compare on (the validation split of a run "
                        "directory or dataset; default: the data the model was calibrated on)")
    p.add_argument("--placement", choices=["cpu", "cuda"],
                   help="also report the execution provider of every node on this device and "
                        "fail (exit 2) when a compute node would run elsewhere")
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx
    import torch

    if not args.model.is_file():
        raise InputError(f"{args.model}: no such model file")
    if args.placement == "cuda":  # before the parity run, which would be wasted
        from ..runtime import PlacementError, cuda_status
        usable, reason = cuda_status()
        if not usable:
            raise PlacementError(f"--placement cuda asked for, but {reason}; check placement on "
                                 "this machine with --placement cpu")
    model = read_model(args.model)
    graph, module = resolve(args.against, args.weights, args.seed, args.naming)
    exported_from = _exported_from(model, graph)
    if exported_from:
        print(f"note: {args.model} was exported from spec '{exported_from}', and --against "
              f"gives '{graph.name}'")
    feeds = {f.name: [d.dim_value if d.HasField("dim_value") else d.dim_param
                      for d in f.type.tensor_type.shape.dim] for f in model.graph.input}
    takes = {name: tuple(dims[1:]) for name, dims in feeds.items()}
    wants = graph.input_shapes
    if list(takes.values()) != list(wants.values()) or len(takes) > 1 and list(takes) != list(wants):
        def shown(shapes):  # a single input by its shape alone (the name is the spec's anyway)
            return (f"input {(*shapes.values(),)[0]}" if len(shapes) == 1 else
                    "inputs " + ", ".join(f"{k} {v}" for k, v in shapes.items()))
        raise InputError(f"{args.model} takes {shown(takes)} but {args.against} takes "
                         f"{shown(wants)}: {args.against} is probably not what was "
                         "exported; verify against the export's source")
    dims = next(iter(feeds.values()))
    session = open_session(args.model)
    from ..quantize import is_quantized
    precision = "int8" if is_quantized(model) else "float16" if any(
        t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer) else "float32"
    tolerance = TOLERANCE[precision]
    names = [o.name for o in session.get_outputs()]
    # with --keep-aux the file has the training-only heads too: forward_train on the module in
    # eval mode computes every head with inference batch norm and no dropout
    aux = set(names) - {o.name for o in graph.active_outputs(False)}
    forward = module.forward_train if aux and hasattr(module, "forward_train") else module
    batches = (dims[0],) if isinstance(dims[0], int) and dims[0] > 0 else BATCHES
    rng = np.random.default_rng(args.seed)
    samples = int8_samples(model, args, takes, batches) if precision == "int8" else None
    worst, agree, scored, constant = 0.0, 0, 0, set()
    print(f"{args.model} ({precision}) against {args.against}: max |onnx - torch|, and that "
          f"divided by max |torch|; tolerance {tolerance:g} relative"
          + (f", and top-1 agreement >= {INT8_AGREEMENT:.0%}" if samples else ""))
    for i, batch in enumerate(batches if samples is None else [len(s) for s in samples]):
        x = ({name: rng.standard_normal((batch, *shape), dtype=np.float32)
              for name, shape in takes.items()} if samples is None
             else {next(iter(takes)): samples[i]})
        got = dict(zip(names, session.run(names, x)))
        with torch.no_grad():  # the module takes the inputs in the spec's order, as the model
            expected = forward(*(torch.from_numpy(v) for v in x.values()))
        if not isinstance(expected, dict):
            expected = {names[0]: expected}
        for name in names:
            if name not in expected:
                raise InputError(f"output '{name}' of {args.model} is not an output of "
                                 f"{args.against}; is it the right source?")
            ref = expected[name].numpy()
            if ref.shape != got[name].shape:
                raise InputError(f"output '{name}': onnx shape {got[name].shape} vs torch "
                                 f"{ref.shape}; is {args.against} what was exported?")
            abs_err = float(np.max(np.abs(got[name] - ref)))
            rel_err = abs_err / max(float(np.max(np.abs(ref))), 1e-12)
            worst = max(worst, rel_err)
            if ref.size > 1 and float(np.ptp(ref)) == 0.0:
                constant.add(name)
            verdict = "ok" if rel_err <= tolerance else "OVER TOLERANCE"
            same = ""
            if samples and ref.ndim == 2 and name == names[0]:
                hits = int((ref.argmax(1) == got[name].argmax(1)).sum())
                agree, scored = agree + hits, scored + len(ref)
                same = f"  top-1 same {hits}/{len(ref)}"
            print(f"  batch {batch}  {name:<16} max abs {abs_err:.3e}  rel {rel_err:.3e}  "
                  f"{verdict}{same}")
    if scored and agree < INT8_AGREEMENT * scored:
        print(f"FAIL: top-1 agrees with PyTorch on {agree}/{scored} samples "
              f"(< {INT8_AGREEMENT:.0%})")
        return 1
    if worst > tolerance:
        print(f"FAIL: worst relative error {worst:.3e} > {tolerance:g}")
        if worst > WEIGHTS_DIFFER:
            print("hint: weights differ? export and verify must use the same --weights/--seed")
        return 1
    print(f"PASS: worst relative error {worst:.3e} <= {tolerance:g}")
    for name in sorted(constant):  # agreement on a constant says little about the network
        print(f"note: PyTorch's output '{name}' is the same number everywhere on these inputs, so "
              f"this check says little; a dead layer (e.g. a ReLU before the classifier that "
              f"never fires, or zero weights)?")
    if args.placement:
        from ..runtime import check_placement

        print(check_placement(args.model, args.placement).table())
    return 0


def int8_samples(model, args, takes: dict, batches) -> list[np.ndarray] | None:
    """Real inputs for an int8 model, as two batches (1 sample, then the rest): the validation
    split of --data, or of the data the model's metadata says it was calibrated on. Random
    inputs would leave the calibrated ranges and read as int8 error. None (random inputs, with
    a note) for a model whose data cannot be found."""
    import json

    from ..quantize import META_KEY, labelled_inputs
    from ..runtime.inputs import ModelMeta
    props = {p.key: p.value for p in model.metadata_props}
    try:
        source = args.data or json.loads(props.get(META_KEY, "{}")).get("source")
    except ValueError:
        source = None
    if not source or len(takes) != 1:
        print("note: no calibration data recorded (or --data given) for this int8 model: "
              "comparing on random inputs, which may leave its calibrated ranges")
        return None
    meta = ModelMeta.from_props(props, str(args.model))
    try:
        x, _, _ = labelled_inputs(source, meta, None, "val", INT8_SAMPLES)
    except DataError:
        if args.data:
            raise
        print(f"note: the data this int8 model was calibrated on ({source}) is not found here: "
              "comparing on random inputs, which may leave its calibrated ranges; give --data")
        return None
    fixed = batches[0] if len(batches) == 1 else None
    if fixed:
        return [x[i:i + fixed] for i in range(0, len(x) - fixed + 1, fixed)] or [x[:fixed]]
    return [x[:1], x[1:]] if len(x) > 1 else [x]


def _exported_from(model, graph) -> str | None:
    """The name of the network the model's cnngraph.spec metadata records, when it is not the
    one `graph` is: a family's variant counts, not the family (`densenet121`, not `densenet`). An
    export without a recorded variant matches any variant of its family."""
    import json
    props = {p.key: p.value for p in model.metadata_props}
    try:
        spec = json.loads(props["cnngraph.spec"])
        name, variant = spec.get("name"), spec.get("variant")
    except (KeyError, ValueError, AttributeError):
        return None
    if variant is None:
        same = name in (graph.name, graph.spec.get("name"))
    else:
        same = (name, variant) == (graph.spec.get("name"), graph.meta.get("variant"))
    return None if same else str(variant or name)


def read_model(path: Path) -> onnx.ModelProto:
    """The model's graph (weights stay on disk), or one InputError for a file that is not an
    ONNX model."""
    from ..files import read_onnx

    model = read_onnx(path)
    return model


def open_session(path: Path):
    """A CPU onnxruntime session, or one InputError saying why onnxruntime refuses the file
    (an opset or IR version newer than it runs, an op it lacks)."""
    import onnxruntime as ort

    try:
        return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime's error classes are not exported
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else exc.__class__.__name__
        raise InputError(f"{path}: onnxruntime {ort.__version__} cannot load it ({reason}); "
                         "re-export it with this installation's `cnngraph export`") from None
