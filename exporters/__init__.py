"""ONNX export for cnngraph networks.

- `export_onnx(graph, weights, path, ...)`: the IR lowered op by op (exporters/ir_export.py).
- `torch_onnx_export(module, args, path, ...)` / `custom_translation_table()`: a user's own
  module calling `custom_ops`, through `torch.onnx.export(dynamo=True)` (exporters/torch_onnx.py).
- The `cnngraph` ONNX domain: schemas and function bodies (exporters/custom_domain.py).
"""
from .custom_domain import DOMAIN, VERSION, attach_functions, register_schemas
from .ir_export import export_onnx
from .opset import default_opset
from .torch_onnx import custom_translation_table, torch_onnx_export

__all__ = ["export_onnx", "torch_onnx_export", "custom_translation_table", "attach_functions",
           "register_schemas", "default_opset", "DOMAIN", "VERSION"]
