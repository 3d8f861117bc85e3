"""The ranges of the numeric command-line options, in one place.

Each range is an argparse `type=` (so a bad value is refused, as one line, before a command does
anything) and a check for the same value given through the Python API (`TrainConfig`), so the
two always agree. Floats must be finite: argparse's `float` accepts "nan" and "inf".
"""
from __future__ import annotations

import argparse
import math

from .errors import CnnGraphError

SEED_LIMIT = 2 ** 32  # numpy's and torch's seeds: 0 <= seed < 2**32
MAX_BATCH = 4096  # samples in one batch (bench, infer, train, export --static-batch)


class Range:
    """A finite int or float within bounds; `low`/`high` inclusive unless `open_low`/`open_high`."""

    def __init__(self, kind: type, low=None, high=None, *, open_low=False, open_high=False,
                 high_text: str | None = None):
        self.kind, self.low, self.high = kind, low, high
        self.open_low, self.open_high = open_low, open_high
        self.high_text = high_text or (None if high is None else f"{high:,}")
        self.__name__ = kind.__name__  # argparse names the type in some messages

    def describe(self) -> str:
        """The range in words, e.g. 'an integer >= 0 and < 4,294,967,296 (2**32)'."""
        bounds = []
        if self.low is not None:
            bounds.append(f"{'>' if self.open_low else '>='} {self.low:g}")
        if self.high is not None:
            bounds.append(f"{'<' if self.open_high else '<='} {self.high_text}")
        noun = "an integer" if self.kind is int else "a finite number"
        return noun + (" " + " and ".join(bounds) if bounds else "")

    def problem(self, value) -> str | None:
        """None when `value` is in range, else what is wrong with it."""
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        if ok and self.kind is int:
            ok = isinstance(value, int)
        if ok:
            ok = math.isfinite(value)
        if ok and self.low is not None:
            ok = value > self.low if self.open_low else value >= self.low
        if ok and self.high is not None:
            ok = value < self.high if self.open_high else value <= self.high
        return None if ok else f"must be {self.describe()}, not {value!r}"

    def __call__(self, text: str):
        """argparse's conversion: the value, or ArgumentTypeError (one line, exit 2)."""
        try:
            value = self.kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}") from None
        if self.problem(value):  # the message quotes what was typed
            raise argparse.ArgumentTypeError(f"must be {self.describe()}, not {text!r}")
        return value

    def check(self, option: str, value) -> None:
        """Raise CnnGraphError naming `option` when `value` is out of range (the Python API)."""
        if problem := self.problem(value):
            raise CnnGraphError(f"{option} {problem}")


SEED = Range(int, 0, SEED_LIMIT, open_high=True, high_text="4,294,967,296 (2**32)")
COUNT = Range(int, 1)  # epochs, samples
BATCH = Range(int, 1, MAX_BATCH)
POSITIVE = Range(float, 0, open_low=True)  # learning rate
NON_NEGATIVE = Range(float, 0)  # weight decay, minutes
OPSET = Range(int, 1)
FRACTION = Range(float, 0, 1, open_low=True, open_high=True)
SECONDS = Range(float, 0, 3600, open_low=True)  # a time budget: up to an hour


def batch_list(text: str) -> list[int]:
    """argparse's type for comma-separated batch sizes ('1,8,64'), each in BATCH."""
    try:
        return [BATCH(item) for item in text.split(",")]
    except argparse.ArgumentTypeError:
        raise argparse.ArgumentTypeError(
            f"must be integers >= 1 and <= {MAX_BATCH:,} separated by commas, not {text!r}"
        ) from None


WEIGHT_FILES = ("a .safetensors file or a torch state_dict (.pth/.pt), named by cnngraph or by "
                "torchvision (recognised from the keys; docs/pretrained.md)")


def add_weights(parser: argparse.ArgumentParser, default: str) -> None:
    """`--weights FILE` and `--naming NAME`, as every command that takes weights has them
    (export, verify, bench, weights, train); `default` says what is used without --weights.
    cnngraph.pretrained.load_weights loads what they name."""
    from pathlib import Path

    parser.add_argument("--weights", type=Path, metavar="FILE",
                        help=f"{WEIGHT_FILES} (default: {default})")
    parser.add_argument("--naming", metavar="NAME",
                        help="whose names the weights have, where the keys fit several: "
                             "torchvision's inception_v3 has ours, but its own input "
                             "normalisation (default: recognised from the keys)")
