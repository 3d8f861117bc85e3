"""The torch.onnx path: a user's own nn.Module calling `custom_ops` exports with
`torch.onnx.export(..., dynamo=True)` to the same `cnngraph` nodes the IR exporter writes.

The dynamo exporter inlines every onnxscript *function* it is given, so the translations emit
plain `cnngraph` nodes (onnxscript Ops built from the registered schemas) and the function
bodies are attached to the exported model afterwards (`attach_functions`).
"""
from __future__ import annotations

import os
from typing import Any, Callable

import onnx
import torch
from onnxscript import opset19 as op
from onnxscript.values import Op, Opset

from cnngraph.errors import ExportError

from .custom_domain import DEFORM_BODIES, DOMAIN, VERSION, attach_functions
from .opset import default_opset, ir_version_for
from .writer import save_model

_cg = Opset(DOMAIN, VERSION)
DeformConvOp = Op(_cg, "DeformConv", onnx.defs.get_schema("DeformConv", VERSION, DOMAIN))
LRNWithinChannelOp = Op(_cg, "LRNWithinChannel",
                        onnx.defs.get_schema("LRNWithinChannel", VERSION, DOMAIN))


def _static_dim(value, axis: int, what: str) -> int:
    dim = value.shape[axis] if value.shape is not None else None
    if not isinstance(dim, int):
        raise ValueError(f"deform_conv2d export needs a static {what}")
    return dim


def _deform_conv2d(input, offset, weight, bias, mask, stride, padding, dilation):
    """torch.ops.cnngraph.deform_conv2d -> cnngraph.DeformConv (groups read from the shapes)."""
    channels = _static_dim(input, 1, "input channel count")
    group = channels // _static_dim(weight, 1, "weight")
    taps = _static_dim(weight, 2, "kernel height") * _static_dim(weight, 3, "kernel width")
    offset_group = _static_dim(offset, 1, "offset channel count") // (2 * taps)
    pads = [int(padding[0]), int(padding[1])] * 2
    return DeformConvOp(input, weight, offset, bias, mask, strides=[int(s) for s in stride],
                        pads=pads, dilations=[int(d) for d in dilation], group=group,
                        offset_group=offset_group)


def _local_response_norm(x, size: int, alpha: float, beta: float, k: float, region: str):
    """across_channels -> standard LRN (same formula, same parameters: x/(k + a/n*sum)^b);
    within_channel -> cnngraph.LRNWithinChannel, k as its bias."""
    if region == "across_channels":
        if size % 2 == 0:
            raise ValueError("ONNX LRN centres an even window one channel away from PyTorch's; "
                             "use an odd LRN size to export")
        return op.LRN(x, size=size, alpha=alpha, beta=beta, bias=k)
    return LRNWithinChannelOp(x, kernel_shape=[size, size], alpha=alpha, beta=beta, bias=k)


def custom_translation_table() -> dict[Callable, Callable]:
    """{torch op overload: onnxscript translation} for `torch.onnx.export(custom_translation_table=)`."""
    import custom_ops  # noqa: F401  (registers torch.ops.cnngraph.*)

    return {torch.ops.cnngraph.deform_conv2d.default: _deform_conv2d,
            torch.ops.cnngraph.local_response_norm.default: _local_response_norm}


DYNAMO_OLDEST_OPSET = 18  # torch.onnx's dynamo exporter writes nothing older


def torch_onnx_export(module: torch.nn.Module, args: tuple, path: str | os.PathLike, *,
                      opset: int | None = None, dynamic_batch: bool = True,
                      deform_body: str = "native", **kwargs: Any) -> onnx.ModelProto:
    """`torch.onnx.export(dynamo=True)` with the cnngraph translations, then the function
    bodies attached and the IR version set for onnxruntime; written atomically to `path`.
    The module is exported in eval mode and left in the mode it came in. The dynamo exporter
    writes opset 18 or newer; for older opsets export through the IR (`export_onnx`)."""
    opset = opset or default_opset()
    if opset > default_opset():
        raise ExportError(f"opset {opset} is newer than the installed onnxruntime runs "
                          f"(up to {default_opset()})")
    if opset < DYNAMO_OLDEST_OPSET:
        raise ExportError(f"torch.onnx.export(dynamo=True) writes opset {DYNAMO_OLDEST_OPSET} or "
                          f"newer, not {opset}; for an older opset export the spec with "
                          "exporters.export_onnx (`cnngraph export --opset`)")
    if deform_body not in DEFORM_BODIES:
        raise ExportError(f"deform_body must be one of {', '.join(DEFORM_BODIES)}, "
                          f"not {deform_body!r}")
    if dynamic_batch:
        batch = torch.export.Dim("batch")
        kwargs.setdefault("dynamic_shapes", tuple({0: batch} for _ in args))
    training = module.training
    try:
        program = torch.onnx.export(module.eval(), tuple(args), dynamo=True, opset_version=opset,
                                    custom_translation_table=custom_translation_table(), **kwargs)
    finally:
        module.train(training)
    model = program.model_proto
    try:
        attach_functions(model, deform_body)
    except ValueError as exc:  # a body newer than the opset written
        raise ExportError(f"{exc}; export with a newer opset, or deform_body='legacy' "
                          "(opset 16+) for the deformable convolution") from None
    model.ir_version = ir_version_for(opset)
    save_model(model, path)
    return model
