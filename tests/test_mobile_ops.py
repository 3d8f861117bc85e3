"""The ops of the mobile families (broadcasting add/mul, stochastic depth, relu6, clip, hard
sigmoid, hard swish, silu) against closed forms, torchvision's StochasticDepth and
onnxruntime's kernels (fp32 and fp16 exports of a net that uses each of them)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph.passes import inference_graph
from exporters import export_onnx
from tests.test_ops import assert_lowering_matches, infer, node, stats
from torchvision_ref import required as torchvision_required
from cnngraph.ops import REGISTRY

CLOSED_FORMS = {  # op, attributes -> y(x) written from the definitions
    ("relu6", ()): lambda x: np.minimum(np.maximum(x, 0), 6),
    ("clip", (("min", -1.0), ("max", 2.5))): lambda x: np.minimum(np.maximum(x, -1.0), 2.5),
    ("hardsigmoid", ()): lambda x: np.minimum(np.maximum(x + 3, 0), 6) / 6,
    ("hardswish", ()): lambda x: x * np.minimum(np.maximum(x + 3, 0), 6) / 6,
    ("silu", ()): lambda x: x / (1 + np.exp(-x)),
}


@pytest.mark.parametrize("op, attrs", sorted(CLOSED_FORMS))
def test_activation_closed_forms(op, attrs):
    x = torch.linspace(-9, 9, 181).view(1, 1, 181, 1)  # both kinks and saturation
    n = node(op, **dict(attrs))
    shape = ("N", 1, 181, 1)
    assert REGISTRY[op].infer(n, [shape]) == shape
    assert stats(op, shape, **dict(attrs))[1:] == (0, 0)
    assert REGISTRY[op].window(n, [shape]) is None
    lowered = REGISTRY[op].torch(n, [shape])
    y = lowered.fn(x, **lowered.kwargs)
    np.testing.assert_allclose(y.numpy(), CLOSED_FORMS[op, attrs](x.numpy()), atol=1e-6)


@pytest.mark.parametrize("ins, out", [
    ([("N", 8, 5, 5), ("N", 8, 1, 1)], ("N", 8, 5, 5)),          # squeeze-and-excitation
    ([("N", 8, 1, 1), ("N", 8, 5, 5)], ("N", 8, 5, 5)),
    ([("N", 1, 5, 5), ("N", 8, 1, 1)], ("N", 8, 5, 5)),          # both sides stretch
    ([("N", 8, 5, 1), ("N", 8, 1, 5), ("N", 1, 1, 1)], ("N", 8, 5, 5)),
    ([("N", 6), ("N", 1)], ("N", 6)),
])
def test_broadcasting_shapes_and_values(ins, out):
    for op, fold in (("add", np.add), ("mul", np.multiply)):
        got, y, lowered = assert_lowering_matches(op, *ins)
        assert got == out
        assert stats(op, *ins)[1:] == (0, 0)
        xs = [torch.randn(2, *s[1:]) for s in ins]
        expected = xs[0].numpy()
        for x in xs[1:]:
            expected = fold(expected, x.numpy())  # NumPy's own broadcasting
        np.testing.assert_allclose(lowered.fn(*xs).numpy(), expected, rtol=1e-6)


def test_broadcast_receptive_field_is_the_widest_input():
    graph = cnngraph.load({"name": "se", "input": [2, 9, 9], "layers": [
        {"name": "conv", "op": "conv2d", "out": 4, "kernel": 3, "padding": 1},
        {"name": "pool", "op": "global_avg_pool2d"},
        {"name": "scale", "op": "mul", "inputs": ["conv", "pool"]}]})
    # conv: 3; the pooled gate sees the whole 9x9 input: 3 + (9 - 1) * 1 = 11
    assert graph["conv"].stats["receptive_field"] == (3, 3)
    assert graph["scale"].stats["receptive_field"] == (11, 11)
    assert graph["scale"].shape == ("N", 4, 9, 9)


def test_stochastic_depth_semantics():
    n = node("stochastic_depth", p=0.25)
    assert infer("stochastic_depth", ("N", 4, 3, 3), p=0.25) == ("N", 4, 3, 3)
    module = REGISTRY["stochastic_depth"].torch(n, [("N", 4, 3, 3)])
    x = torch.randn(256, 4, 3, 3)
    assert torch.equal(module.eval()(x), x)                   # inference: the identity
    torch.manual_seed(0)
    y = module.train()(x)
    kept = (y != 0).flatten(1).all(1)
    dropped = (y == 0).flatten(1).all(1)
    assert bool((kept | dropped).all())                       # whole rows, one draw each
    torch.testing.assert_close(y[kept], x[kept] / 0.75)       # survivors scaled by 1/(1-p)
    assert 0.1 < dropped.float().mean() < 0.4
    batch = REGISTRY["stochastic_depth"].torch(node("stochastic_depth", p=0.5, mode="batch"), [])
    ys = [batch.train()(x) for _ in range(8)]
    assert all(torch.equal(y, 2 * x) or bool((y == 0).all()) for y in ys)
    assert torch.equal(REGISTRY["stochastic_depth"].torch(node("stochastic_depth", p=1.0), [])
                       .train()(x), torch.zeros_like(x))


def test_stochastic_depth_draws_as_torchvision():
    stochastic_depth = torchvision_required().ops.stochastic_depth

    x = torch.randn(64, 3, 2, 2)
    for mode in ("row", "batch"):
        module = REGISTRY["stochastic_depth"].torch(node("stochastic_depth", p=0.3, mode=mode), [])
        torch.manual_seed(7)
        ours = module.train()(x)
        torch.manual_seed(7)
        assert torch.equal(ours, stochastic_depth(x, 0.3, mode, training=True))


NET = {"name": "mobile_ops", "input": [3, 12, 12], "layers": [
    {"name": "conv", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1},
    {"name": "r6", "op": "relu6"},
    {"name": "dw", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1, "groups": 8},
    {"name": "hs", "op": "hardswish"},
    {"name": "pool", "op": "global_avg_pool2d"},
    {"name": "fc1", "op": "conv2d", "out": 4, "kernel": 1},
    {"name": "silu", "op": "silu"},
    {"name": "fc2", "op": "conv2d", "out": 8, "kernel": 1},
    {"name": "gate", "op": "hardsigmoid"},
    {"name": "scale", "op": "mul", "inputs": ["hs", "gate"]},
    {"name": "sd", "op": "stochastic_depth", "p": 0.5},
    {"name": "res", "op": "add", "inputs": ["sd", "r6"]},
    {"name": "bias", "op": "add", "inputs": ["res", "gate"]},   # (N,8,12,12) + (N,8,1,1)
    {"name": "clip", "op": "clip", "min": -0.5, "max": 1.5},
    {"name": "flat", "op": "flatten"},
    {"name": "fc", "op": "linear", "out": 5}]}


@pytest.mark.parametrize("fp16, tolerance", [(False, 1e-5), (True, 2e-2)])
def test_export_runs_on_onnxruntime_kernels(fp16, tolerance, tmp_path):
    graph = cnngraph.load(NET)
    assert "sd" not in inference_graph(graph)[0].nodes       # gone like dropout
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    path = tmp_path / "net.onnx"
    model = export_onnx(graph, module, path, fp16=fp16)
    ops = {n.op_type for n in model.graph.node}
    assert {"Clip", "HardSwish", "HardSigmoid", "Sigmoid", "Mul", "Add"} <= ops
    x = np.random.default_rng(0).standard_normal((3, 3, 12, 12), dtype=np.float32) * 3
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    for rows in (slice(0, 1), slice(0, 3)):
        got = session.run(None, {session.get_inputs()[0].name: x[rows]})[0]
        assert np.max(np.abs(got - expected[rows])) <= tolerance * np.max(np.abs(expected))


@pytest.mark.parametrize("spec_value, message", [
    ("${make_divisible(32, 0)}", "make_divisible needs a number and a divisor >= 1, got 32 and 0"),
    ("${make_divisible('a', 8)}", "make_divisible needs a number and a divisor >= 1"),
    ("${sum([1, [2]])}", "TypeError"),
    ("${ceil('x')}", "TypeError"),
])
def test_new_expression_functions_fail_in_one_located_line(spec_value, message):
    spec = {"name": "bad", "input": [3, 8, 8], "params": {"w": spec_value},
            "layers": [{"name": "conv", "op": "conv2d", "out": "$w", "kernel": 1}]}
    with pytest.raises(cnngraph.SpecError) as caught:
        cnngraph.load(spec)
    assert message in str(caught.value) and "\n" not in str(caught.value)


def test_uniform_init_rule():
    spec = {**NET, "meta": {"init": {"linear": {"weight": {"uniform": 0.25}, "bias": 0}}}}
    torch.manual_seed(0)
    fc = cnngraph.build(cnngraph.load(spec)).fc.weight.detach()
    assert 0.24 < float(fc.abs().max()) <= 0.25
    with pytest.raises(cnngraph.SpecError, match="the std must be a number"):
        cnngraph.load({**NET, "meta": {"init": {"linear": {"weight": {"uniform": -1}}}}})
