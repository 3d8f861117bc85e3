"""What an op is: its attributes (with defaults and docs), shape rule, parameter count, MACs,
receptive-field window, torch lowering and ONNX lowering -- all in one class, so adding an op
is one new place (a subclass registered with `@register`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from .. import limits
from ..graph import Node, Shape
from ..limits import describe

REQUIRED = object()  # marks an attribute the spec must give


@dataclass(frozen=True)
class Attr:
    """One attribute: `default` (or REQUIRED), what it means, the accepted type and range.

    `kind` is one of: "int", "float", "bool", "str", "ints" (an int or a list of ints, e.g. a
    kernel size given as 3 or [3, 5]), "padding" (int, [h, w], [top, left, bottom, right] or
    "same"), "table" (list of lists of ints), "any"; `choices` limits a "str". A number (each
    one of "ints" and "padding") must lie in [`min`, `max`], and be > 0 when `positive`; `max`
    defaults to `limits.MAX_SIZE` for sizes ("ints", "padding") and `limits.MAX_DIM` for "int",
    so that the checker knows the range of every value before any shape code runs.
    """

    default: Any = REQUIRED
    doc: str = ""
    kind: str = "any"
    choices: tuple | None = None
    min: float | None = None
    max: float | None = None
    positive: bool = False

    def normalize(self, value: Any) -> Any:
        """The canonical form of a spec value (raises ValueError saying what is expected).

        int -> int; float -> float; bool -> bool; str -> str (one of `choices`);
        ints -> (h, w); padding -> (top, left, bottom, right) or "same"; table -> tuple of tuples.
        null is an unset optional attribute (default None) and refused elsewhere.
        """
        if value is None:
            if self.default is None:
                return None
            raise ValueError("null is not a value here: " + (
                "give one" if self.default is REQUIRED else
                f"give one, or remove the key for the default {self.default!r}"))
        kind = self.kind
        if kind == "int":
            if isinstance(value, bool) or not isinstance(value, int):
                raise ValueError(f"expected an integer, got {describe(value)}")
            return self._in_range(value, limits.MAX_DIM)
        if kind == "float":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise ValueError(f"expected a number, got {describe(value)}")
            try:
                limits.number(value)
            except limits.LimitError as exc:
                raise ValueError(str(exc)) from None
            if abs(value) > limits.MAX_FLOAT:
                raise ValueError(f"{describe(value)} does not fit float32, in which networks "
                                 f"compute (|x| <= 3.4e38)")
            return float(self._in_range(value, None))
        if kind == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"expected true or false, got {describe(value)}")
            return value
        if kind == "str":
            if not isinstance(value, str) or (self.choices and value not in self.choices):
                raise ValueError(f"expected one of {', '.join(self.choices or ())}, got "
                                 f"{describe(value)}")
            return value
        if kind == "ints":
            vals = [self._in_range(v, limits.MAX_SIZE) for v in _int_list(value, (1, 2))]
            return (vals[0], vals[0]) if len(vals) == 1 else tuple(vals)
        if kind == "padding":
            if value == "same":
                return "same"
            vals = [self._in_range(v, limits.MAX_SIZE)
                    for v in _int_list(value, (1, 2, 4), extra=' or "same"')]
            if len(vals) == 1:
                return (vals[0],) * 4
            if len(vals) == 2:
                return (vals[0], vals[1], vals[0], vals[1])
            return tuple(vals)
        if kind == "table":
            if not isinstance(value, (list, tuple)) or not all(
                isinstance(row, (list, tuple)) and row and all(
                    isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in row)
                for row in value):
                raise ValueError("expected a list, one entry per output channel, of non-empty "
                                 "lists of input-channel indices")
            if len(value) > limits.MAX_SIZE or any(max(row) > limits.MAX_DIM for row in value):
                raise ValueError(f"more than {limits.MAX_SIZE:,} rows or an index past "
                                 f"{limits.MAX_DIM:,}")
            return tuple(tuple(row) for row in value)
        return value

    def bounds(self, default_max=None) -> str:
        """The range as text ("> 0", ">= 1 and <= 100,000"), or "" when there is none."""
        high = self.max if self.max is not None else default_max
        low = "> 0" if self.positive else f">= {self.min}" if self.min is not None else None
        return " and ".join(x for x in (low, high is not None and f"<= {high:,}") if x)

    def _in_range(self, value, default_max):
        """`value` if within [min, max] (and > 0 when `positive`), else a ValueError."""
        high = self.max if self.max is not None else default_max
        if ((self.min is not None and value < self.min) or (high is not None and value > high)
                or (self.positive and value <= 0)):
            raise ValueError(f"must be {self.bounds(default_max)}, got {describe(value)}")
        return value


def _int_list(value: Any, lengths: tuple[int, ...], extra: str = "") -> list[int]:
    vals = [value] if isinstance(value, int) else value
    if (not isinstance(vals, (list, tuple)) or len(vals) not in lengths
            or any(isinstance(v, bool) or not isinstance(v, int) or v < 0 for v in vals)):
        shapes = " or ".join("an integer" if n == 1 else f"a list of {n} integers" for n in lengths)
        raise ValueError(f"expected {shapes} (non-negative){extra}, got "
                         f"{describe(value)}")
    return list(vals)


class ShapeError(ValueError):
    """Raised by an op's rules; shape inference adds the file, line and layer path."""


@dataclass(frozen=True)
class Call:
    """A stateless torch lowering: `fn(*inputs, **kwargs)` emitted as a call in the forward."""

    fn: Callable
    kwargs: dict


class Op:
    """Base class of every op. Subclasses set the class variables and override the rules."""

    name: ClassVar[str]
    doc: ClassVar[str] = ""
    attrs: ClassVar[dict[str, Attr]] = {}
    min_inputs: ClassVar[int] = 1
    max_inputs: ClassVar[int | None] = 1  # None: any number

    # --- analysis (no tensors) -------------------------------------------------------------
    def infer(self, node: Node, ins: list[Shape]) -> Shape:
        """Output shape from input shapes; raise ShapeError with the fix in the message."""
        raise NotImplementedError(self.name)

    def params(self, node: Node, ins: list[Shape]) -> int:
        return 0

    def macs(self, node: Node, ins: list[Shape], out: Shape) -> int:
        """Multiply-accumulates for one sample (batch 1)."""
        return 0

    def window(self, node: Node, ins: list[Shape]):
        """Receptive-field rule. None: pointwise (field and jump pass through). "global": the
        output sees the whole input. Else ((k_h, s_h), (k_w, s_w)) with k the effective
        (dilated) kernel and s the stride; a fractional s (upsampling) divides the jump."""
        return None

    # --- lowerings -------------------------------------------------------------------------
    def torch(self, node: Node, ins: list[Shape]):
        """A torch.nn.Module (owning the layer's parameters) or a `Call` for stateless ops."""
        raise NotImplementedError(self.name)

    def onnx(self, ctx, node: Node, inputs: list):
        """Emit ONNX for this node; `ctx` is the exporter's builder (see exporters/)."""
        raise NotImplementedError(f"no ONNX lowering for op '{self.name}'")
