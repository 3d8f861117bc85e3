"""Optimised inference on onnxruntime: a predictor over exported models (CUDA provider tuned,
else CPU), placement proof, preprocessing from the model's metadata, and timing helpers."""
from .inputs import ModelMeta, load_inputs, load_named_inputs, normalize
from .placement import NodePlacement, Placement, check_placement, placement
from .predictor import Predictor, float16_model
from .session import CudaOptions, PlacementError, cuda_status, physical_cores

__all__ = ["Predictor", "CudaOptions", "ModelMeta", "load_inputs", "load_named_inputs", "normalize", "placement", "check_placement",
           "Placement", "NodePlacement", "PlacementError", "cuda_status", "physical_cores",
           "float16_model"]
