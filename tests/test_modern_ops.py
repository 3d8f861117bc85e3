"""The ops of ShuffleNet v2 and ConvNeXt (gelu, layer_norm, layer_scale, channel_split,
channel_shuffle) against closed forms (the GELU formulas with math.erf, layer normalisation in
NumPy, the shuffle's index permutation), onnxruntime's kernels at the newest opset and at one
before each op's ONNX counterpart existed, fp16, and the checker's located messages."""
from __future__ import annotations

import math

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph.errors import SpecError
from exporters import export_onnx


def net(*layers, shape=(8, 5, 6)):
    return {"name": "t", "input": list(shape), "layers": list(layers)}


def run(spec, x: np.ndarray, seed: int = 0):
    """(graph, module, torch output) of a spec on x, parameters drawn at random."""
    graph = cnngraph.load(spec)
    torch.manual_seed(seed)
    module = cnngraph.build(graph).eval()
    with torch.no_grad():
        for p in module.parameters():
            p.copy_(torch.randn_like(p))
        y = module(torch.from_numpy(x)).numpy()
    return graph, module, y


def onnx_run(graph, module, x, tmp_path, **options):
    path = tmp_path / "m.onnx"
    export_onnx(graph, module, path, **options)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ops = {n.op_type for n in onnx.load(str(path)).graph.node}
    return session.run(None, {"input": x})[0], ops


X = np.random.default_rng(0).standard_normal((3, 8, 5, 6)).astype(np.float32) * 2


@pytest.mark.parametrize("approximate", ["none", "tanh"])
def test_gelu_closed_forms(approximate):
    _, _, y = run(net({"name": "g", "op": "gelu", "approximate": approximate}), X)
    erf = np.vectorize(math.erf)
    if approximate == "none":
        expected = 0.5 * X * (1 + erf(X / math.sqrt(2)))
    else:
        expected = 0.5 * X * (1 + np.tanh(math.sqrt(2 / math.pi) * (X + 0.044715 * X ** 3)))
    np.testing.assert_allclose(y, expected, atol=1e-6)


def test_layer_norm_over_channels_closed_form():
    graph, module, y = run(net({"name": "ln", "op": "layer_norm", "eps": 1e-3}), X)
    w = module.ln.weight.detach().numpy()[None, :, None, None]
    b = module.ln.bias.detach().numpy()[None, :, None, None]
    mean, var = X.mean(axis=1, keepdims=True), X.var(axis=1, keepdims=True)
    np.testing.assert_allclose(y, (X - mean) / np.sqrt(var + 1e-3) * w + b, atol=1e-5)
    assert graph["ln"].stats["params"] == 16 and graph["ln"].stats["macs"] == 0
    # on a vector, over its features
    v = X.reshape(3, -1)[:, :10]
    _, module, y = run({"name": "v", "input": [10], "layers": [{"name": "ln", "op": "layer_norm"}]}, v)
    w, b = module.ln.weight.detach().numpy(), module.ln.bias.detach().numpy()
    expected = (v - v.mean(1, keepdims=True)) / np.sqrt(v.var(1, keepdims=True) + 1e-6) * w + b
    np.testing.assert_allclose(y, expected, atol=1e-5)


def test_layer_scale_multiplies_each_channel_and_starts_at_its_value():
    graph = cnngraph.load(net({"name": "s", "op": "layer_scale", "value": 0.25}))
    module = cnngraph.build(graph)
    assert module.s.weight.shape == (8, 1, 1) and (module.s.weight == 0.25).all()
    assert graph["s"].stats["params"] == 8
    _, module, y = run(net({"name": "s", "op": "layer_scale"}), X)
    np.testing.assert_allclose(y, X * module.s.weight.detach().numpy()[None], rtol=1e-6)


def test_channel_split_is_torch_chunk():
    for index in (0, 1):
        graph, _, y = run(net({"name": "s", "op": "channel_split", "index": index}), X)
        np.testing.assert_array_equal(y, np.split(X, 2, axis=1)[index])
        assert graph["s"].shape == ("N", 4, 5, 6)
    _, _, y = run(net({"name": "s", "op": "channel_split", "parts": 4, "index": 3}), X)
    np.testing.assert_array_equal(y, X[:, 6:8])


@pytest.mark.parametrize("groups", [1, 2, 4])
def test_channel_shuffle_permutation(groups):
    _, _, y = run(net({"name": "s", "op": "channel_shuffle", "groups": groups}), X)
    per = 8 // groups  # output channel j*groups + g is input channel g*per + j
    order = [g * per + j for j in range(per) for g in range(groups)]
    np.testing.assert_array_equal(y, X[:, order])


MIXED = net(
    {"name": "a", "op": "channel_split", "index": 1},
    {"name": "conv", "op": "conv2d", "out": 4, "kernel": 3, "padding": 1, "inputs": ["input"]},
    {"name": "cat", "op": "concat", "inputs": ["a", "conv"]},
    {"name": "shuffle", "op": "channel_shuffle", "groups": 2},
    {"name": "ln", "op": "layer_norm"},
    {"name": "g1", "op": "gelu"},
    {"name": "g2", "op": "gelu", "approximate": "tanh"},
    {"name": "scale", "op": "layer_scale"},
    {"name": "pool", "op": "global_avg_pool2d"},
    {"name": "flat", "op": "flatten"},
    {"name": "ln2", "op": "layer_norm", "eps": 1e-5},
)


@pytest.mark.parametrize("opset, native", [(None, {"Gelu", "LayerNormalization"}),
                                           (16, {"Erf", "Tanh", "ReduceMean"})])
def test_onnxruntime_kernels_match_torch(opset, native, tmp_path):
    """The newest opset uses Gelu and LayerNormalization; opset 16 (before both) the formulas."""
    graph, module, y = run(MIXED, X)
    got, ops = onnx_run(graph, module, X, tmp_path, opset=opset)
    assert native <= ops and "Slice" in ops and "Transpose" in ops
    np.testing.assert_allclose(got, y, rtol=1e-4, atol=1e-5)


def test_fp16_export(tmp_path):
    graph, module, y = run(MIXED, X)
    got, _ = onnx_run(graph, module, X, tmp_path, fp16=True)
    assert np.max(np.abs(got - y)) / np.max(np.abs(y)) < 1e-2


@pytest.mark.parametrize("layer, message", [
    ({"op": "channel_split", "parts": 3, "index": 0},
     "channel_split parts 3 does not divide the 8 input channels: use a divisor of 8"),
    ({"op": "channel_split", "index": 2}, "channel_split index 2 is outside 0..1 (parts 2)"),
    ({"op": "channel_split", "parts": 0, "index": 0}, "attribute 'parts' of channel_split"),
    ({"op": "channel_shuffle", "groups": 3},
     "channel_shuffle groups 3 does not divide the 8 input channels: use a divisor of 8"),
    ({"op": "channel_shuffle"}, "channel_shuffle needs attribute 'groups'"),
    ({"op": "gelu", "approximate": "erf"}, "expected one of none, tanh"),
    ({"op": "layer_norm", "eps": 0}, "attribute 'eps' of layer_norm: must be > 0"),
])
def test_checker_messages_are_located_single_lines(layer, message):
    with pytest.raises(SpecError) as info:
        cnngraph.load(net({"name": "bad", **layer}))
    text = str(info.value)
    assert message in text and "\n" not in text and "bad" in text


@pytest.mark.parametrize("op", ["channel_split", "channel_shuffle", "layer_scale"])
def test_map_ops_refuse_a_vector(op):
    layer = {"name": "bad", "op": op, "index": 0} if op == "channel_split" else \
        {"name": "bad", "op": op, "groups": 2} if op == "channel_shuffle" else {"name": "bad", "op": op}
    with pytest.raises(SpecError, match=f"{op} needs a \\(N, C, H, W\\) feature map"):
        cnngraph.load({"name": "t", "input": [8], "layers": [layer]})
