"""The mobile families (MobileNet v2/v3, EfficientNet, MnasNet) against independent references:
torchvision's own models on the same random weights (eval and train mode, stochastic depth and
dropout drawing the same numbers), torchvision's _make_divisible, onnxruntime's fp16 kernels,
and receptive fields computed by hand. Parameter counts and MACs are in test_zoo.py's tables."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph.expr import evaluate
from exporters import export_onnx
from torchvision_ref import models as tv_models

SMALLEST = ["mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5"]
SIZE = [3, 64, 64]


def randomize_batch_norm(module: torch.nn.Module) -> None:
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)


@pytest.mark.parametrize("name", SMALLEST)
def test_torchvision_weights_import_and_outputs_equal_in_eval_and_train_mode(name):
    """torchvision's state_dict through import_weights (the family's meta.naming), then the
    same outputs; in train mode dropout and stochastic depth draw the same numbers in the same
    order, and the running statistics update alike."""
    tv = tv_models()
    torch.manual_seed(0)
    reference = getattr(tv, name)(weights=None)
    randomize_batch_norm(reference)
    graph = cnngraph.load(name, input_shape=SIZE)
    state = cnngraph.import_weights(graph, reference.state_dict())
    assert state.naming == "torchvision" and state.matched == len(reference.state_dict())
    ours = cnngraph.build(graph)
    ours.load_state_dict(state)
    x = torch.randn(2, *SIZE)
    with torch.no_grad():
        torch.testing.assert_close(ours.eval()(x), reference.eval()(x), rtol=1e-5, atol=1e-5)
        outputs = []
        for model in (ours, reference):
            torch.manual_seed(1)
            outputs.append(model.train()(x))
    torch.testing.assert_close(*outputs, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(dict(cnngraph.import_weights(graph, reference.state_dict())),
                               ours.state_dict())


@pytest.mark.parametrize("name", ["mobilenet_v3_large", "efficientnet_b5"])
def test_larger_variants_take_torchvisions_names(name):
    """The naming is declared once per family: every key of the larger variants too (on the
    meta device: names and shapes, no arithmetic)."""
    tv = tv_models()
    with torch.device("meta"):
        reference = getattr(tv, name)(weights=None)
    graph = cnngraph.load(name)
    state = cnngraph.import_weights(graph, reference.state_dict())
    assert state.naming == "torchvision" and state.matched == len(reference.state_dict())


@pytest.mark.parametrize("name", SMALLEST)
def test_fp16_export_matches_torch_at_batch_1_and_3(name, tmp_path):
    """fp32 is checked for the same nets by test_export.py; here the float16 export."""
    graph = cnngraph.load(name, input_shape=SIZE)
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    randomize_batch_norm(module)
    path = tmp_path / "model.onnx"
    export_onnx(graph, module, path, fp16=True)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, *SIZE), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    for rows in (slice(0, 1), slice(0, 3)):
        got = session.run(None, {session.get_inputs()[0].name: x[rows]})[0]
        assert np.max(np.abs(got - expected[rows])) <= 1e-2 * np.max(np.abs(expected))


def test_make_divisible_is_torchvisions():
    tv_models()
    from torchvision.models._utils import _make_divisible

    for value in [3, 7.5, 12, 16 * 0.75, 32 * 1.1, 35.2, 83, 84, 100.0, 1280 * 1.3, 960 * 0.5,
                  72 // 4, 4.0, 1e-3]:
        for divisor in (8, 16):
            assert evaluate("make_divisible(v, d)", {"v": value, "d": divisor}) == \
                _make_divisible(value, divisor), (value, divisor)


def test_efficientnet_depth_and_stochastic_depth_schedule():
    graph = cnngraph.load("efficientnet_b1")
    # torchvision: ceil(n * 1.1) blocks per stage; p = 0.2 * block index / total
    depths = [2, 3, 3, 4, 4, 5, 2]
    assert evaluate("ceil(3 * 1.1)", {}) == 4 and evaluate("sum(d[:3])", {"d": depths}) == 8
    assert [sum(1 for n in graph if n.name.startswith(f"stage.{s}.block.")
                and n.name.endswith(".dw.conv")) for s in range(7)] == depths
    total = sum(depths)
    probabilities = {n.name: n.attrs["p"] for n in graph if n.op == "stochastic_depth"}
    # stage 3 starts after 2 + 3 + 3 = 8 blocks; its second block (the first with a residual) is 9
    assert probabilities["stage.3.block.1.stochastic_depth"] == pytest.approx(0.2 * 9 / total)
    assert max(probabilities.values()) == pytest.approx(0.2 * (total - 1) / total)


def test_receptive_fields_by_hand():
    graph = cnngraph.load("mobilenet_v2")
    field = {n: graph[n].stats["receptive_field"][0] for n in (
        "stem.conv", "stage.0.block.0.dw.conv", "stage.1.block.0.dw.conv",
        "stage.1.block.1.dw.conv", "stage.1.block.1.add")}
    # stem 3x3/2: 3 (jump 2); depthwise 3x3: +2*2 = 7; 3x3/2: +2*2 = 11 (jump 4); 3x3: +2*4 = 19;
    # the residual add: the wider of its inputs
    assert field == {"stem.conv": 3, "stage.0.block.0.dw.conv": 7,
                     "stage.1.block.0.dw.conv": 11, "stage.1.block.1.dw.conv": 19,
                     "stage.1.block.1.add": 19}
    se = cnngraph.load("efficientnet_b0")
    # the excitation's gate pools the whole 112x112 map: 3 + 2*2 (dw) + 111*2 = 229
    assert se["stage.0.block.0.se.avgpool"].stats["receptive_field"] == (229, 229)
    assert se["stage.0.block.0.se.scale"].shape == ("N", 32, 112, 112)


def test_initialisation_is_torchvisions():
    torch.manual_seed(0)
    efficientnet = cnngraph.build(cnngraph.load("efficientnet_b0"))
    mnasnet = cnngraph.build(cnngraph.load("mnasnet0_5"))
    mobilenet = cnngraph.build(cnngraph.load("mobilenet_v3_small"))
    for fc, bound in ((efficientnet.classifier, 1000 ** -0.5),
                      (mnasnet.classifier, (3 / 1000) ** 0.5)):
        w = fc.weight.detach()
        assert float(w.abs().max()) <= bound and float(w.abs().max()) > 0.99 * bound
        assert float(w.std()) == pytest.approx(bound / 3 ** 0.5, rel=0.02)  # uniform(-b, b)
        assert not fc.bias.any()
    assert float(mobilenet.classifier.weight.detach().std()) == pytest.approx(0.01, rel=0.02)
    conv = efficientnet.get_submodule("stage.1.block.0.expand.conv").weight.detach()  # 96x16x1x1
    assert float(conv.std()) == pytest.approx((2 / 96) ** 0.5, rel=0.05)  # kaiming, fan_out
