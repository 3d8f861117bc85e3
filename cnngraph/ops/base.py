"""What an op is: its attributes (with defaults and docs), shape rule, parameter count, MACs,
receptive-field window, torch lowering and ONNX lowering -- all in one class, so adding an op
is one new place (a subclass registered with `@register`)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, ClassVar

from ..graph import Node, Shape

REQUIRED = object()  # marks an attribute the spec must give


@dataclass(frozen=True)
class Attr:
    """One attribute: `default` (or REQUIRED), what it means, and the accepted type.

    `kind` is one of: "int", "float", "bool", "str", "ints" (an int or a list of ints, e.g. a
    kernel size given as 3 or [3, 5]), "padding" (int, [h, w], [top, left, bottom, right] or
    "same"), "table" (list of lists of ints), "any"; `choices` limits a "str".
    """

    default: Any = REQUIRED
    doc: str = ""
    kind: str = "any"
    choices: tuple | None = None


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
