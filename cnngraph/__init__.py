"""cnngraph: convolutional networks as declarative specs, compiled to a checked graph (shapes,
parameters, MACs, receptive fields), built as PyTorch modules and exported to ONNX.

    graph = cnngraph.load("resnet50")        # a zoo name, a .yaml/.json file, a dict or a SpecBuilder
    module = cnngraph.build(graph)           # a torch.nn.Module
    module.load_state_dict(cnngraph.import_weights(graph, "resnet50.pth"))  # e.g. torchvision's
"""
from __future__ import annotations

from .compiler import load
from .errors import CnnGraphError, DataError, ExportError, InputError, SpecError
from .graph import Graph, Node, Output
from .spec import SpecBuilder, layer, save_spec

__version__ = "0.1.0"


def __getattr__(name: str):
    """`cnngraph.build`, imported on first use: it brings torch (2-3 s), which loading, checking
    and `cnngraph show` do without."""
    if name == "build":
        from .torch_build import build  # the module has its own name, so nothing rebinds this one
        globals()["build"] = build
        return build
    if name == "import_weights":  # torch too (docs/pretrained.md)
        from .pretrained import import_weights
        globals()["import_weights"] = import_weights
        return import_weights
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = ["load", "build", "import_weights", "save_spec", "SpecBuilder", "layer", "Graph", "Node", "Output",
           "CnnGraphError", "SpecError", "InputError", "DataError", "ExportError", "__version__"]
