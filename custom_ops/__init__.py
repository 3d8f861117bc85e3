"""Custom PyTorch ops for cnngraph, registered under the `cnngraph` torch.library namespace:
deformable convolution v1/v2 (`torch.ops.cnngraph.deform_conv2d`) and local response
normalization across and within channels (`torch.ops.cnngraph.local_response_norm`)."""
from .deform_conv import IM2COL_BUDGET_BYTES, DeformConv2d, deform_conv2d
from .lrn import LocalResponseNorm, local_response_norm, lrn_params_from_tensorflow

__all__ = ["IM2COL_BUDGET_BYTES", "DeformConv2d", "deform_conv2d", "LocalResponseNorm",
           "local_response_norm", "lrn_params_from_tensorflow"]
