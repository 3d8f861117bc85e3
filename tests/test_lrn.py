"""custom_ops.local_response_norm against closed-form NumPy formulas, torch.nn.LocalResponseNorm,
onnxruntime's LRN, the tf.nn.lrn worked example, and numerical gradients."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from onnx import TensorProto, helper

import custom_ops


def numpy_across(x, n, alpha, beta, k):
    """y = x / (k + alpha/n · Σ x²) over channels [c - n//2, c + (n-1)//2] (PyTorch's window)."""
    channels = x.shape[1]
    y = np.empty_like(x)
    for c in range(channels):
        lo, hi = max(0, c - n // 2), min(channels, c + (n - 1) // 2 + 1)
        y[:, c] = x[:, c] / (k + alpha / n * (x[:, lo:hi] ** 2).sum(1)) ** beta
    return y


def numpy_within(x, n, alpha, beta, k):
    """y = x / (k + alpha/n² · Σ x²) over the n×n window (zeros past the border)."""
    r = n // 2
    padded = np.pad(x ** 2, ((0, 0), (0, 0), (r, r), (r, r)))
    h, w = x.shape[2:]
    sums = sum(padded[:, :, i:i + h, j:j + w] for i in range(n) for j in range(n))
    return x / (k + alpha / n ** 2 * sums) ** beta


@pytest.mark.parametrize("size", [1, 2, 3, 4, 5, 8])
def test_across_channels_matches_numpy(size):
    x = np.random.default_rng(size).standard_normal((2, 7, 3, 4)) * 3
    got = custom_ops.local_response_norm(torch.from_numpy(x), size, 0.3, 0.75, 2.0)
    np.testing.assert_allclose(got.numpy(), numpy_across(x, size, 0.3, 0.75, 2.0), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 3, 5])
def test_within_channel_matches_numpy(size):
    x = np.random.default_rng(size).standard_normal((2, 3, 6, 5)) * 3
    got = custom_ops.local_response_norm(torch.from_numpy(x), size, 0.5, 0.6, 1.0,
                                         "within_channel")
    np.testing.assert_allclose(got.numpy(), numpy_within(x, size, 0.5, 0.6, 1.0), rtol=1e-12)


@pytest.mark.parametrize("size", [1, 2, 3, 5, 6, 7])
def test_across_channels_matches_torch(size):
    """Odd sizes, and even ones: we follow PyTorch's window for an even size."""
    x = torch.randn(3, 9, 4, 4, dtype=torch.float64) * 4
    want = torch.nn.LocalResponseNorm(size, 1e-2, 0.75, 1.5)(x)
    got = custom_ops.LocalResponseNorm(size, 1e-2, 0.75, 1.5)(x)
    torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


def onnx_lrn(x, size, alpha, beta, bias):
    node = helper.make_node("LRN", ["X"], ["Y"], size=size, alpha=alpha, beta=beta, bias=bias)
    graph = helper.make_graph(
        [node], "lrn", [helper.make_tensor_value_info("X", TensorProto.FLOAT, x.shape)],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {"X": x})[0]


@pytest.mark.parametrize("size", [3, 5])
def test_across_channels_matches_onnxruntime(size):
    """Odd sizes only: onnxruntime's CPU LRN rejects even ones."""
    x = np.random.default_rng(0).standard_normal((2, 8, 3, 3)).astype(np.float32) * 4
    got = custom_ops.local_response_norm(torch.from_numpy(x), size, 0.2, 0.75, 1.0)
    np.testing.assert_allclose(got.numpy(), onnx_lrn(x, size, 0.2, 0.75, 1.0), rtol=1e-5)


def test_tensorflow_worked_example():
    """tf.nn.lrn(x = 1..32 as [2,2,2,4] NHWC, depth_radius=2, bias=0, alpha=1, beta=1):
    y = x / Σ(x² over channels d-2..d+2)."""
    x_nhwc = np.arange(1, 33, dtype=np.float64).reshape(2, 2, 2, 4)
    squares = x_nhwc ** 2
    want = np.empty_like(x_nhwc)
    for d in range(4):
        want[..., d] = x_nhwc[..., d] / squares[..., max(0, d - 2):d + 3].sum(-1)
    params = custom_ops.lrn_params_from_tensorflow(depth_radius=2, bias=0.0, alpha=1.0, beta=1.0)
    assert params == {"size": 5, "alpha": 5.0, "beta": 1.0, "k": 0.0,
                      "region": "across_channels"}
    x = torch.from_numpy(x_nhwc).permute(0, 3, 1, 2)
    got = custom_ops.local_response_norm(x, **params).permute(0, 2, 3, 1)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-12)
    assert got[0, 0, 0, 0].item() == pytest.approx(1 / (1 + 4 + 9))


@pytest.mark.parametrize("size,region", [(3, "across_channels"), (4, "across_channels"),
                                         (3, "within_channel")])
def test_gradcheck(size, region):
    x = (torch.randn(1, 5, 3, 3, dtype=torch.float64) * 2).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda t: custom_ops.local_response_norm(t, size, 0.7, 0.75, 1.3, region), (x,))


def test_export_sees_one_op():
    program = torch.export.export(custom_ops.LocalResponseNorm(3, region="within_channel"),
                                  (torch.randn(1, 2, 4, 4),))
    targets = [n.target for n in program.graph.nodes if n.op == "call_function"]
    assert targets == [torch.ops.cnngraph.local_response_norm.default]


@pytest.mark.parametrize("args,message", [
    ((torch.randn(2, 3, 4), 3), r"x must be 4-D \(N, C, H, W\), got shape \(2, 3, 4\)"),
    ((torch.randn(1, 2, 4, 4), 4, 1e-4, 0.75, 1.0, "within_channel"),
     r"within_channel needs an odd size .* got size=4 for x of shape \(1, 2, 4, 4\)"),
    ((torch.randn(1, 2, 4, 4), 0), r"size must be >= 1, got 0"),
    ((torch.randn(1, 2, 4, 4), 3, 1e-4, 0.75, 1.0, "spatial"), r"region must be one of"),
])
def test_bad_input_raises_value_error(args, message):
    with pytest.raises(ValueError, match=message):
        custom_ops.local_response_norm(*args)
