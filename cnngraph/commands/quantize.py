"""`cnngraph quantize MODEL.onnx --calibrate DATA -o MODEL.int8.onnx`: static int8 quantization
(QDQ, int8 per-channel weights, uint8 activations) calibrated on real samples, with an accuracy
gate: top-1 of the float and the int8 model on held-out labelled samples; exit 1 when the drop
exceeds --max-drop, the refused model then written as OUTPUT.rejected.

DATA is a training run directory (the data it was trained on) or any dataset `cnngraph train`
reads. Calibration uses its training split; the gate uses the validation split of --data
(default: of DATA), so no sample is both calibrated on and scored. See docs/int8.md.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from . import about
from ..errors import InputError
from ..options import Range

MAX_DROP = Range(float, 0, 100)
SAMPLES = Range(int, 1, 10_000)


def register(subparsers) -> None:
    p = subparsers.add_parser("quantize", help="int8 quantization with an accuracy gate",
                              description=about(__doc__))
    p.add_argument("model", type=Path, help="the float .onnx file (from `cnngraph export`)")
    p.add_argument("-o", "--output", required=True, type=Path, help="the int8 .onnx to write")
    add_int8_options(p, required=True)
    p.set_defaults(func=run)


def add_int8_options(p: argparse.ArgumentParser, required: bool) -> None:
    p.add_argument("--calibrate", metavar="DATA", required=required,
                   help="calibration data: a training run directory or a dataset (its training "
                   "split)" + ("" if required else "; default: the run's own training data"))
    p.add_argument("--data", metavar="DATA", help="labelled held-out data for the accuracy gate "
                   "(its validation split; default: the calibration data's validation split)")
    p.add_argument("--method", choices=["minmax", "entropy", "percentile"], default="minmax",
                   help="calibration method (default minmax)")
    p.add_argument("--samples", type=SAMPLES, default=256,
                   help="calibration samples, a seeded random subset (default 256)")
    p.add_argument("--max-drop", type=MAX_DROP, default=1.0, metavar="POINTS",
                   help="the most top-1 may drop, in percentage points (default 1)")
    p.add_argument("--eval-samples", type=SAMPLES, metavar="N",
                   help="score the gate on a seeded subset of N held-out samples (default: all, "
                   "up to 10,000)")
    p.add_argument("--per-tensor", action="store_true",
                   help="one scale per weight tensor instead of per output channel")


def quantize(src: Path, dst: Path, args, scratch: bool = False) -> int:
    """The quantize + gate step shared by `quantize` and `export --int8`: 0, or 1 when refused.
    `scratch`: dst is a temporary file (export --triton without -o), not named to the user."""
    from ..quantize import Settings, quantize_file

    gate = quantize_file(src, dst, calibrate=args.calibrate, data=args.data,
                         settings=Settings(args.method, args.samples, not args.per_tensor),
                         max_drop=args.max_drop, eval_samples=args.eval_samples)
    figures = (f"top-1 {100 * gate.float_top1:.2f}% float, {100 * gate.int8_top1:.2f}% int8 on "
               f"{gate.samples} samples of {gate.data}: drop {gate.drop:.2f} points")
    if gate.passed:
        size = dst.stat().st_size / 1e6
        print(f"{'int8' if scratch else f'wrote {dst} ({size:.1f} MB, int8)'}: {figures} "
              f"(max {args.max_drop:g})")
        return 0
    kept = ("nothing written (give -o FILE to keep it as FILE.rejected)" if scratch else
            f"int8 model written to {dst.name}.rejected, not {dst.name}")
    print(f"REFUSED: {figures} > --max-drop {args.max_drop:g}; {kept}")
    return 1


def run(args) -> int:
    from ..files import check_output, read_onnx

    if not args.model.is_file():
        raise InputError(f"{args.model}: no such model file")
    read_onnx(args.model)   # one message for a file that is not ONNX
    check_output(args.output, "-o", "model.int8.onnx")
    if args.output.resolve() == args.model.resolve():
        raise InputError(f"-o {args.output}: is the float model itself; write the int8 model "
                         "to another file, such as model.int8.onnx")
    return quantize(args.model, args.output, args)
