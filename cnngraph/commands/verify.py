"""`cnngraph verify model.onnx --against SOURCE`: onnxruntime against PyTorch on the same random
inputs, at batch 1 and 3; exit 1 when an output differs by more than the tolerance."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .export import add_weight_options, resolve

# max |onnx - torch| / max |torch| per output: float32 exports agree to rounding; float16
# weights and compute keep about 3 significant digits
TOLERANCE = {"float32": 1e-4, "float16": 1e-2}
BATCHES = (1, 3)


def register(subparsers) -> None:
    p = subparsers.add_parser("verify", help="compare an ONNX export with its PyTorch module",
                              description=__doc__)
    p.add_argument("model", type=Path, help="the .onnx file")
    p.add_argument("--against", required=True, metavar="SPEC_OR_NAME_OR_RUN_DIR",
                   help="what it was exported from (with the same --weights / --seed)")
    add_weight_options(p)
    p.add_argument("--placement", choices=["cpu", "cuda"],
                   help="also report the execution provider of every node on this device and "
                        "fail (exit 2) when a compute node would run elsewhere")
    p.set_defaults(func=run)


def run(args) -> int:
    import onnx
    import onnxruntime as ort

    if not args.model.is_file():
        raise InputError(f"{args.model}: no such model file")
    graph, module = resolve(args.against, args.weights, args.seed)
    model = onnx.load_model(str(args.model), load_external_data=False)
    precision = "float16" if any(t.data_type == onnx.TensorProto.FLOAT16
                                 for t in model.graph.initializer) else "float32"
    tolerance = TOLERANCE[precision]
    session = ort.InferenceSession(str(args.model), providers=["CPUExecutionProvider"])
    (feed,) = session.get_inputs()
    names = [o.name for o in session.get_outputs()]
    rng = np.random.default_rng(args.seed)
    worst = 0.0
    print(f"{args.model} ({precision}) against {args.against}: max |onnx - torch|, and that "
          f"divided by max |torch|; tolerance {tolerance:g} relative")
    for batch in BATCHES:
        shape = (batch, *graph.input_shape)
        fixed = feed.shape[0]
        if isinstance(fixed, int) and fixed != batch:
            print(f"  batch {batch}: skipped (the model's batch is fixed to {fixed})")
            continue
        x = rng.standard_normal(shape, dtype=np.float32)
        got = dict(zip(names, session.run(names, {feed.name: x})))
        with torch.no_grad():
            expected = module(torch.from_numpy(x))
        if not isinstance(expected, dict):
            expected = {names[0]: expected}
        for name in names:
            if name not in expected:
                raise InputError(f"output '{name}' of {args.model} is not an output of "
                                 f"{args.against} in inference; is it the right source?")
            ref = expected[name].numpy()
            if ref.shape != got[name].shape:
                raise InputError(f"output '{name}': onnx shape {got[name].shape} vs torch "
                                 f"{ref.shape}; is {args.against} what was exported?")
            abs_err = float(np.max(np.abs(got[name] - ref)))
            rel_err = abs_err / max(float(np.max(np.abs(ref))), 1e-12)
            worst = max(worst, rel_err)
            verdict = "ok" if rel_err <= tolerance else "OVER TOLERANCE"
            print(f"  batch {batch}  {name:<16} max abs {abs_err:.3e}  rel {rel_err:.3e}  {verdict}")
    if worst > tolerance:
        print(f"FAIL: worst relative error {worst:.3e} > {tolerance:g}")
        return 1
    print(f"PASS: worst relative error {worst:.3e} <= {tolerance:g}")
    if args.placement:
        from ..runtime import check_placement

        print(check_placement(args.model, args.placement).table())
    return 0
