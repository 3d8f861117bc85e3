"""The op registry's rules against hand-computed numbers (output-size formula, published layer
parameter counts, closed-form MACs) and against the shapes the torch lowerings really produce."""
from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from cnngraph.graph import Node
from cnngraph.ops import REGISTRY, REQUIRED, Call, ShapeError

LENET_C3 = [[0, 1, 2], [1, 2, 3], [2, 3, 4], [3, 4, 5], [0, 4, 5], [0, 1, 5], [0, 1, 2, 3],
            [1, 2, 3, 4], [2, 3, 4, 5], [0, 3, 4, 5], [0, 1, 4, 5], [0, 1, 2, 5], [0, 1, 3, 4],
            [1, 2, 4, 5], [0, 2, 3, 5], [0, 1, 2, 3, 4, 5]]


def node(op: str, **given) -> Node:
    """A node as the front end hands it over: attributes normalised, defaults filled in."""
    attrs = {}
    for name, attr in REGISTRY[op].attrs.items():
        value = given.pop(name, attr.default)
        attrs[name] = None if value is REQUIRED else attr.normalize(value)
    assert not given, f"unknown attributes {given}"
    return Node("layer", op, attrs=attrs)


def infer(op: str, *ins, **attrs):
    n = node(op, **attrs)
    return REGISTRY[op].infer(n, list(ins))


def stats(op: str, *ins, **attrs):
    """(shape, params, macs) of one node."""
    n = node(op, **attrs)
    rules = REGISTRY[op]
    out = rules.infer(n, list(ins))
    return out, rules.params(n, list(ins)), rules.macs(n, list(ins), out)


def lower(op: str, *ins, **attrs):
    """Run the op's torch lowering on random batch-2 inputs; (inferred shape, torch result)."""
    n = node(op, **attrs)
    rules = REGISTRY[op]
    out = rules.infer(n, list(ins))
    lowered = rules.torch(n, list(ins))
    xs = [torch.randn(2, *shape[1:]) for shape in ins]
    with torch.no_grad():
        y = lowered.fn(*xs, **lowered.kwargs) if isinstance(lowered, Call) else lowered(*xs)
    return out, y, lowered


def assert_lowering_matches(op: str, *ins, **attrs):
    out, y, lowered = lower(op, *ins, **attrs)
    assert tuple(y.shape) == (2, *out[1:])
    return out, y, lowered


def n_params(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


# --- conv2d -----------------------------------------------------------------------------------
@pytest.mark.parametrize("size, attrs, expected", [
    (224, dict(kernel=7, stride=2, padding=3), (112, 112)),      # ResNet conv1
    (227, dict(kernel=11, stride=4), (55, 55)),                   # AlexNet conv1
    (32, dict(kernel=5), (28, 28)),                               # LeNet C1
    (28, dict(kernel=3, dilation=2, padding=2), (28, 28)),        # dilated, size kept
    (28, dict(kernel=3, dilation=4), (20, 20)),                   # 28 - 8
    (17, dict(kernel=[1, 7], padding=[0, 3]), (17, 17)),          # Inception v3 1x7
    (10, dict(kernel=3, padding=[0, 1, 2, 3]), (10, 12)),         # top, left, bottom, right
    (7, dict(kernel=3, stride=2, padding="same"), (4, 4)),        # ceil(7/2)
    (8, dict(kernel=3, stride=2, padding="same"), (4, 4)),        # pad 1, all at the bottom
    (5, dict(kernel=4, padding="same"), (5, 5)),                  # pad 3: 1 top, 2 bottom
    (9, dict(kernel=3, stride=3, padding="same"), (3, 3)),        # needs no padding
])
def test_conv2d_output_size(size, attrs, expected):
    out, _, _ = assert_lowering_matches("conv2d", ("N", 3, size, size), out=8, **attrs)
    assert out == ("N", 8, *expected)


def test_conv2d_same_padding_puts_the_odd_pixel_bottom_right():
    # 8 -> 4 with k3 s2 needs 1 pixel of padding: TensorFlow puts it at the bottom/right, so
    # the first output sees rows 0..2 and the last rows 6..8 (8 = padding). With a weight of
    # all ones and a ramp input, output (0, 0) sums x[0:3, 0:3] and not a padded window.
    n = node("conv2d", out=1, kernel=3, stride=2, padding="same", bias=False)
    module = REGISTRY["conv2d"].torch(n, [("N", 1, 8, 8)])
    nn.init.ones_(module.weight)
    x = torch.arange(64.0).view(1, 1, 8, 8)
    y = module(x)
    assert y[0, 0, 0, 0].item() == x[0, 0, 0:3, 0:3].sum().item()
    assert y[0, 0, 3, 3].item() == x[0, 0, 6:8, 6:8].sum().item()
    assert list(module.state_dict()) == ["weight"]


@pytest.mark.parametrize("cin, attrs, params, macs", [
    (3, dict(out=64, kernel=7, stride=2, padding=3, bias=False), 9_408, 118_013_952),
    (96, dict(out=256, kernel=5, padding=2, groups=2), 307_456, 223_948_800),  # AlexNet conv2
    (1, dict(out=6, kernel=5), 156, 117_600),                                    # LeNet C1
    (16, dict(out=120, kernel=5), 48_120, 48_000),                               # LeNet C5
])
def test_conv2d_params_and_macs(cin, attrs, params, macs):
    size = {3: 224, 96: 27, 1: 32, 16: 5}[cin]
    _, got_params, got_macs = stats("conv2d", ("N", cin, size, size), **attrs)
    assert (got_params, got_macs) == (params, macs)
    _, _, module = assert_lowering_matches("conv2d", ("N", cin, size, size), **attrs)
    assert n_params(module) == params


def test_lenet_c3_connection_table():
    out, params, macs = stats("conv2d", ("N", 6, 14, 14), out=16, kernel=5, table=LENET_C3)
    assert out == ("N", 16, 10, 10)
    assert params == 1_516                      # 60 connections x 25 + 16 biases
    assert macs == 60 * 25 * 10 * 10
    _, y, module = assert_lowering_matches("conv2d", ("N", 6, 14, 14), out=16, kernel=5,
                                           table=LENET_C3)
    assert n_params(module) == 1_516
    assert set(module.state_dict()) == {"weight", "bias"}


def test_table_conv_computes_only_the_listed_connections():
    table = [[0, 2], [1]]
    n = node("conv2d", out=2, kernel=3, table=table)
    module = REGISTRY["conv2d"].torch(n, [("N", 3, 6, 6)])
    nn.init.normal_(module.bias)
    x = torch.randn(2, 3, 6, 6)
    # Reference: each output channel is a sum of single-channel convolutions over its inputs,
    # taking the connection weights in table order.
    kernels = iter(module.weight.detach())
    expected = []
    for o, inputs in enumerate(table):
        y = sum(F.conv2d(x[:, i:i + 1], next(kernels).view(1, 1, 3, 3)) for i in inputs)
        expected.append(y + module.bias[o].detach())
    assert torch.allclose(module(x).detach(), torch.cat(expected, 1), atol=1e-5)
    dense = module.dense_weight().detach()
    assert dense.shape == (2, 3, 3, 3)
    assert dense[0, 1].abs().sum() == 0 and dense[1, 0].abs().sum() == 0


def test_conv_init_is_kaiming_fan_out_with_zero_bias():
    n = node("conv2d", out=256, kernel=3, padding=1)
    module = REGISTRY["conv2d"].torch(n, [("N", 128, 8, 8)])
    assert module.weight.std().item() == pytest.approx(math.sqrt(2 / (256 * 9)), rel=0.02)
    assert module.bias.abs().sum().item() == 0


# --- conv_transpose2d, deform_conv2d, gated_conv2d -------------------------------------------
@pytest.mark.parametrize("attrs, expected", [
    (dict(kernel=4, stride=2, padding=1), 14),                    # (7-1)2 - 2 + 4 = 14
    (dict(kernel=3, stride=2, padding=1, output_padding=1), 14),  # 12 - 2 + 3 + 1
    (dict(kernel=3, stride=2), 15),                               # 12 + 3
    (dict(kernel=3, dilation=2), 11),                             # 6 + 5
])
def test_conv_transpose2d_output_size(attrs, expected):
    out, _, _ = assert_lowering_matches("conv_transpose2d", ("N", 16, 7, 7), out=8, **attrs)
    assert out == ("N", 8, expected, expected)


def test_conv_transpose2d_params_and_macs():
    _, params, macs = stats("conv_transpose2d", ("N", 16, 7, 7), out=8, kernel=4, stride=2,
                            padding=1)
    assert params == 16 * 8 * 16 + 8
    assert macs == 16 * 7 * 7 * 8 * 16          # every input element meets out x k x k weights
    _, _, module = lower("conv_transpose2d", ("N", 16, 7, 7), out=8, kernel=4, stride=2,
                         padding=1)
    assert n_params(module) == params


@pytest.mark.parametrize("modulated, offset_params", [(False, 18 * 28), (True, 27 * 28)])
def test_deform_conv2d_counts_its_offset_conv(modulated, offset_params):
    # 3 -> 8 channels, 3x3: the offset conv has 2*9 (v1) or 3*9 (v2) outputs over 3*9 inputs.
    shape = ("N", 3, 10, 10)
    out, params, macs = stats("deform_conv2d", shape, out=8, kernel=3, padding=1,
                              modulated=modulated)
    assert out == ("N", 8, 10, 10)
    assert params == 8 * 27 + 8 + offset_params
    assert macs == 100 * 8 * 27 + 100 * (offset_params // 28) * 27
    _, _, module = assert_lowering_matches("deform_conv2d", shape, out=8, kernel=3, padding=1,
                                           modulated=modulated)
    assert n_params(module) == params


def test_gated_conv2d_is_conv_times_sigmoid_gate():
    shape = ("N", 4, 9, 9)
    out, params, macs = stats("gated_conv2d", shape, out=6, kernel=3, padding="same")
    assert out == ("N", 6, 9, 9)
    assert params == 2 * (6 * 4 * 9 + 6)
    assert macs == 2 * 81 * 6 * 36
    _, _, module = assert_lowering_matches("gated_conv2d", shape, out=6, kernel=3, padding="same")
    assert n_params(module) == params
    x = torch.randn(2, 4, 9, 9)
    expected = module.conv(x) * torch.sigmoid(module.gate(x))
    assert isinstance(module.conv, nn.Conv2d) and isinstance(module.gate, nn.Conv2d)
    assert torch.equal(module(x), expected)


# --- linear, batch_norm, lrn ------------------------------------------------------------------
def test_linear():
    out, params, macs = stats("linear", ("N", 9216), out=4096)
    assert (out, params, macs) == (("N", 4096), 37_752_832, 37_748_736)   # AlexNet fc6
    _, _, module = assert_lowering_matches("linear", ("N", 84), out=10, bias=False)
    assert isinstance(module, nn.Linear) and n_params(module) == 840
    big = REGISTRY["linear"].torch(node("linear", out=1000), [("N", 2048)])
    assert big.weight.std().item() == pytest.approx(0.01, rel=0.02)
    assert big.bias.abs().sum().item() == 0


@pytest.mark.parametrize("shape, kind", [(("N", 64, 7, 7), nn.BatchNorm2d),
                                         (("N", 84), nn.BatchNorm1d)])
def test_batch_norm(shape, kind):
    out, params, macs = stats("batch_norm", shape)
    assert (out, params, macs) == (shape, 2 * shape[1], 0)
    _, _, module = assert_lowering_matches("batch_norm", shape, eps=1e-3)
    assert isinstance(module, kind) and module.eps == 1e-3 and n_params(module) == params
    assert torch.equal(module.weight, torch.ones(shape[1]))
    assert torch.equal(module.bias, torch.zeros(shape[1]))


@pytest.mark.parametrize("region", ["across_channels", "within_channel"])
def test_lrn(region):
    out, params, _ = stats("lrn", ("N", 96, 13, 13), region=region)
    assert (out, params) == (("N", 96, 13, 13), 0)
    _, y, module = assert_lowering_matches("lrn", ("N", 96, 13, 13), region=region)
    assert n_params(module) == 0


def test_lrn_across_channels_matches_torch():
    x = torch.randn(2, 16, 5, 5)
    n = node("lrn", size=5, alpha=1e-2, beta=0.75, k=2.0)
    module = REGISTRY["lrn"].torch(n, [("N", 16, 5, 5)])
    reference = nn.LocalResponseNorm(5, 1e-2, 0.75, 2.0)
    assert torch.allclose(module(x), reference(x), atol=1e-6)


# --- pooling ----------------------------------------------------------------------------------
@pytest.mark.parametrize("op, size, attrs, expected", [
    ("max_pool2d", 55, dict(kernel=3, stride=2), 27),                     # AlexNet, overlapping
    ("max_pool2d", 112, dict(kernel=3, stride=2, padding=1), 56),         # ResNet
    ("max_pool2d", 112, dict(kernel=3, stride=2, ceil_mode=True), 56),    # GoogLeNet; floor: 55
    ("max_pool2d", 112, dict(kernel=3, stride=2), 55),
    ("max_pool2d", 6, dict(kernel=3, stride=2, ceil_mode=True), 3),       # (6-3)/2 = 1.5 -> 2, +1
    # ceil gives 4, but the 4th window would start in the right padding
    ("max_pool2d", 5, dict(kernel=2, stride=2, padding=1, ceil_mode=True), 3),
    ("max_pool2d", 10, dict(kernel=3, dilation=2, stride=1), 6),          # span 5
    ("max_pool2d", 28, dict(kernel=2), 14),                               # stride = kernel
    ("avg_pool2d", 28, dict(kernel=2), 14),
    ("avg_pool2d", 8, dict(kernel=3, stride=1, padding=1), 8),
    ("avg_pool2d", 17, dict(kernel=5, stride=3, ceil_mode=True), 5),      # 12/3 = 4, +1
    ("subsample2d", 28, dict(), 14),                                      # LeNet S2
    ("subsample2d", 10, dict(kernel=2), 5),                               # LeNet S4
])
def test_pool_output_size(op, size, attrs, expected):
    out, _, _ = assert_lowering_matches(op, ("N", 6, size, size), **attrs)
    assert out == ("N", 6, expected, expected)


def test_global_and_adaptive_pooling():
    assert assert_lowering_matches("global_avg_pool2d", ("N", 2048, 7, 7))[0] == ("N", 2048, 1, 1)
    assert assert_lowering_matches("adaptive_avg_pool2d", ("N", 256, 13, 13), size=6)[0] == (
        "N", 256, 6, 6)
    assert assert_lowering_matches("adaptive_avg_pool2d", ("N", 8, 14, 9), size=[4, 3])[0] == (
        "N", 8, 4, 3)


def test_subsample2d_is_a_scaled_window_sum_plus_bias():
    out, params, macs = stats("subsample2d", ("N", 6, 28, 28))
    assert (params, macs) == (12, 0)
    module = REGISTRY["subsample2d"].torch(node("subsample2d"), [("N", 6, 28, 28)])
    assert n_params(module) == 12 and set(module.state_dict()) == {"weight", "bias"}
    with torch.no_grad():
        module.weight.copy_(torch.arange(1.0, 7.0))
        module.bias.copy_(torch.arange(6.0))
    x = torch.randn(1, 6, 28, 28)
    sums = x.view(1, 6, 14, 2, 14, 2).sum((3, 5))
    expected = sums * torch.arange(1.0, 7.0).view(1, 6, 1, 1) + torch.arange(6.0).view(1, 6, 1, 1)
    assert torch.allclose(module(x), expected, atol=1e-5)


# --- tensor ops and activations ---------------------------------------------------------------
def test_input_flatten_concat_add_mul():
    assert infer("input", shape=[3, 224, 224]) == ("N", 3, 224, 224)
    assert infer("input", shape=[784]) == ("N", 784)
    assert assert_lowering_matches("flatten", ("N", 256, 6, 6))[0] == ("N", 9216)
    out, y, _ = assert_lowering_matches("concat", ("N", 64, 28, 28), ("N", 128, 28, 28),
                                        ("N", 32, 28, 28))
    assert out == ("N", 224, 28, 28)
    assert assert_lowering_matches("concat", ("N", 4), ("N", 6))[0] == ("N", 10)
    for op in ("add", "mul"):
        assert assert_lowering_matches(op, ("N", 8, 5, 5), ("N", 8, 5, 5), ("N", 8, 5, 5))[0] == (
            "N", 8, 5, 5)
    a, b, c = torch.randn(3, 4)
    add, mul = REGISTRY["add"].torch(None, []), REGISTRY["mul"].torch(None, [])
    assert torch.allclose(add.fn(a, b, c), a + b + c)
    assert torch.allclose(mul.fn(a, b, c), a * b * c)


@pytest.mark.parametrize("attrs, expected", [
    (dict(), (14, 14)), (dict(scale=[2, 3]), (14, 21)), (dict(scale=1.5), (10, 10)),
    (dict(scale=4, mode="bilinear"), (28, 28)),
    (dict(scale=2, mode="bilinear", align_corners=True), (14, 14)),
])
def test_upsample(attrs, expected):
    assert assert_lowering_matches("upsample", ("N", 3, 7, 7), **attrs)[0] == ("N", 3, *expected)


def test_upsample_nearest_repeats_pixels():
    x = torch.arange(4.0).view(1, 1, 2, 2)
    lowered = REGISTRY["upsample"].torch(node("upsample"), [("N", 1, 2, 2)])
    y = lowered.fn(x, **lowered.kwargs)
    assert torch.equal(y, x.repeat_interleave(2, 2).repeat_interleave(2, 3))


@pytest.mark.parametrize("op, attrs, reference", [
    ("relu", {}, lambda x: x.clamp(min=0)),
    ("leaky_relu", {"negative_slope": 0.2}, lambda x: torch.where(x > 0, x, 0.2 * x)),
    ("sigmoid", {}, lambda x: 1 / (1 + torch.exp(-x))),
    ("tanh", {}, lambda x: (torch.exp(2 * x) - 1) / (torch.exp(2 * x) + 1)),
    ("softmax", {}, lambda x: torch.exp(x) / torch.exp(x).sum(1, keepdim=True)),
    ("identity", {}, lambda x: x),
    ("dropout", {"p": 0.3}, lambda x: x),          # inference: the identity
])
def test_pointwise_values(op, attrs, reference):
    shape = ("N", 5, 3, 3)
    n = node(op, **attrs)
    assert REGISTRY[op].infer(n, [shape]) == shape
    assert REGISTRY[op].params(n, [shape]) == 0
    lowered = REGISTRY[op].torch(n, [shape])
    x = torch.randn(2, 5, 3, 3)
    if isinstance(lowered, nn.Module):
        y = lowered.eval()(x)
    else:
        y = lowered.fn(x, **lowered.kwargs)
    assert torch.allclose(y, reference(x), atol=1e-6)


# --- receptive-field windows ------------------------------------------------------------------
def apply_window(rule, rf: float, jump: float, size: int):
    """The contract's update of one axis: rf += (k-1)*jump, then jump *= s."""
    if rule is None:
        return rf, jump
    if rule == "global":
        return rf + (size - 1) * jump, jump
    k, s = rule
    return rf + (k - 1) * jump, jump * s


@pytest.mark.parametrize("op, shape, attrs, rf, jump", [
    ("conv2d", ("N", 3, 227, 227), dict(out=96, kernel=11, stride=4), 1 + 10 * 2, 8),
    ("conv2d", ("N", 3, 32, 32), dict(out=8, kernel=3, dilation=2), 1 + 4 * 2, 2),
    ("max_pool2d", ("N", 3, 32, 32), dict(kernel=3, stride=2), 1 + 2 * 2, 4),
    ("max_pool2d", ("N", 3, 32, 32), dict(kernel=3), 1 + 2 * 2, 6),
    ("subsample2d", ("N", 3, 32, 32), dict(), 1 + 1 * 2, 4),
    # transposed: the jump is divided by s first, then the kernel adds (k-1) * new jump
    ("conv_transpose2d", ("N", 3, 8, 8), dict(out=4, kernel=4, stride=2), 1 + 3 * 1, 1),
    ("upsample", ("N", 3, 8, 8), dict(scale=2), 1, 1),
    ("global_avg_pool2d", ("N", 3, 7, 7), dict(), 1 + 6 * 2, 2),
    ("flatten", ("N", 3, 7, 7), dict(), 1 + 6 * 2, 2),
    ("adaptive_avg_pool2d", ("N", 3, 12, 12), dict(size=6), 1 + 1 * 2, 4),   # exact 2/2 pool
    ("adaptive_avg_pool2d", ("N", 3, 7, 7), dict(size=1), 1 + 6 * 2, 14),    # global
    ("lrn", ("N", 3, 8, 8), dict(region="within_channel", size=3), 1 + 2 * 2, 2),
    ("lrn", ("N", 3, 8, 8), dict(), 1, 2),
    ("relu", ("N", 3, 8, 8), dict(), 1, 2),
])
def test_receptive_field_window(op, shape, attrs, rf, jump):
    # The node's input has rf 1 and jump 2 (one stride-2 layer before it).
    n = node(op, **attrs)
    rule = REGISTRY[op].window(n, [shape])
    per_axis = (rule, rule) if rule is None or rule == "global" else rule
    for axis_rule, size in zip(per_axis, shape[2:]):
        assert apply_window(axis_rule, 1, 2, size) == pytest.approx((rf, jump))


def test_adaptive_pool_window_for_uneven_bins():
    # 13 -> 6: bins [0,3) [2,5) [4,7) [6,9) [8,11) [10,13): 3 wide, 13/6 apart on average.
    rule = REGISTRY["adaptive_avg_pool2d"].window(node("adaptive_avg_pool2d", size=6),
                                                  [("N", 1, 13, 13)])
    assert rule == ((3, 13 / 6), (3, 13 / 6))


# --- errors a user can make -------------------------------------------------------------------
@pytest.mark.parametrize("op, ins, attrs, message", [
    ("conv2d", [("N", 64, 56, 56)], dict(out=64, kernel=3, groups=3),
     "groups 3 does not divide 64 input channels"),
    ("conv2d", [("N", 64, 56, 56)], dict(out=30, kernel=3, groups=4),
     "groups 4 does not divide 30 output channels"),
    ("conv2d", [("N", 3, 5, 5)], dict(out=8, kernel=7),
     "conv2d kernel 7 is larger than the padded input 5x5: lower the kernel or add padding"),
    ("conv2d", [("N", 3, 5, 5)], dict(out=8, kernel=3, dilation=3),
     "kernel 3 (dilated: 7x7) is larger than the padded input 5x5"),
    ("conv2d", [("N", 256)], dict(out=8, kernel=3),
     "conv2d needs a (N, C, H, W) feature map, got (N,256)"),
    ("conv2d", [("N", 6, 14, 14)], dict(out=15, kernel=5, table=LENET_C3),
     "the connection table has 16 entries but out is 15: give one entry per output channel"),
    ("conv2d", [("N", 4, 14, 14)], dict(out=16, kernel=5, table=LENET_C3),
     "table entry 2 names input channel 4 but the input has 4 channels"),
    ("conv2d", [("N", 6, 14, 14)], dict(out=2, kernel=5, table=[[0], [1, 1]]),
     "table entry 1 lists an input channel twice"),
    ("conv2d", [("N", 6, 14, 14)], dict(out=2, kernel=5, groups=2, table=[[0], [1]]),
     "a connection table needs groups 1"),
    ("conv_transpose2d", [("N", 8, 7, 7)], dict(out=8, kernel=3, stride=2, output_padding=2),
     "output_padding 2 must be smaller than the stride 2 or the dilation 1"),
    ("conv_transpose2d", [("N", 8, 1, 1)], dict(out=8, kernel=1, padding=1),
     "padding 1 leaves an empty -1x-1 output: lower the padding"),
    ("deform_conv2d", [("N", 6, 8, 8)], dict(out=8, kernel=3, offset_groups=4),
     "offset_groups 4 does not divide 6 input channels"),
    ("linear", [("N", 256, 6, 6)], dict(out=10),
     "linear needs a (N, F) input, got (N,256,6,6): add a flatten layer"),
    ("batch_norm", [("N", 4, 5)], dict(), "batch_norm needs a (N, C, H, W) or (N, F) input"),
    ("lrn", [("N", 4, 5, 5)], dict(region="within_channel", size=4),
     "within_channel lrn needs an odd size (a window centred on each pixel), got 4; use size 3 or 5"),
    ("max_pool2d", [("N", 4, 8, 8)], dict(kernel=3, padding=2),
     "max_pool2d padding 2x2 is more than half the kernel 3x3"),
    ("avg_pool2d", [("N", 4, 2, 2)], dict(kernel=3),
     "avg_pool2d kernel 3 is larger than the padded input 2x2"),
    ("add", [("N", 64, 56, 56), ("N", 128, 28, 28)], dict(),
     "add needs shapes that broadcast, got (N,64,56,56) and (N,128,28,28) (dimension 1: 64 "
     "against 128)"),
    ("mul", [("N", 64), ("N", 32)], dict(), "mul needs shapes that broadcast, got (N,64) and "
     "(N,32)"),
    ("mul", [("N", 64, 7, 7), ("N", 64, 7, 1), ("N", 64, 5, 1)], dict(),
     "mul needs shapes that broadcast, got (N,64,7,7) and (N,64,5,1) (dimension 2: 7 against 5)"),
    ("add", [("N", 64, 1, 1), ("N", 64)], dict(), "add needs inputs of the same rank"),
    ("clip", [("N", 4)], dict(min=1.0, max=0.5), "clip min 1.0 is above max 0.5"),
    ("concat", [("N", 64, 28, 28), ("N", 32, 14, 14)], dict(),
     "concat along axis 1 needs equal sizes in the other dimensions, got (N,64,28,28) and "
     "(N,32,14,14)"),
    ("concat", [("N", 64), ("N", 32)], dict(axis=2), "concat axis 2 is outside 1..1"),
    ("softmax", [("N", 10)], dict(axis=2), "softmax axis 2 is outside 1..1"),
    ("flatten", [("N", 10)], dict(start_dim=2), "flatten start_dim 2 is outside 1..1"),
    ("dropout", [("N", 10)], dict(p=1.0), "dropout p must be in [0, 1), got 1.0"),
    ("upsample", [("N", 3, 4, 4)], dict(scale=0.1), "turns the 4x4 input into 0x0"),
    ("upsample", [("N", 3, 4, 4)], dict(scale=[1, 2, 3]), "upsample scale must be"),
    ("input", [], dict(shape=[3, 0, 4]), "input shape must be [C, H, W] or [F]"),
])
def test_error_messages(op, ins, attrs, message):
    with pytest.raises(ShapeError) as caught:
        infer(op, *ins, **attrs)
    assert message in str(caught.value)


def test_every_op_documents_itself_and_its_attributes():
    for name, op in REGISTRY.items():
        assert type(op).__doc__, name
        for attr_name, attr in op.attrs.items():
            assert attr.doc, (name, attr_name)
