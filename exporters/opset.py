"""Which opset and IR version to write: the newest the installed onnxruntime runs.

onnxruntime has no API that names its newest opset or IR version, so ask it: build a one-node
model per candidate (newest first) and keep the first it loads. Done once per process.
"""
from __future__ import annotations

import functools

import onnx
import onnxruntime as ort
from onnx import TensorProto, helper

from .custom_domain import MIN_OPSET


def ir_version_for(opset: int) -> int:
    """The IR version onnx pairs with `opset` (the lowest that can express it)."""
    return helper.find_min_ir_version_for([helper.make_opsetid("", opset)])


def _runs(opset: int) -> bool:
    value = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "probe", [value],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)],
                              ir_version=ir_version_for(opset))
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:  # onnxruntime raises its own (unexported) error classes
        return False
    return True


@functools.cache
def default_opset() -> int:
    """The newest opset (>= MIN_OPSET) that both onnx and the installed onnxruntime handle."""
    for opset in range(onnx.defs.onnx_opset_version(), MIN_OPSET - 1, -1):
        if _runs(opset):
            return opset
    raise RuntimeError(f"onnxruntime {ort.__version__} runs no opset >= {MIN_OPSET}; "
                       "cnngraph needs onnxruntime 1.25 or newer")
