"""Every zoo model against independent numbers: the published parameter counts (torchvision with
weights=None, Caffe's bvlc_alexnet, the LeNet-5 paper), hand counts for the small glyph nets,
torchvision's published GFLOPS (which count multiply-accumulates) and hand-computed receptive
fields. The built module is checked against the IR: parameter count and output shapes."""
from __future__ import annotations

import pytest
import torch

import cnngraph
from cnngraph import zoo

# Inference-mode parameter counts (auxiliary heads excluded).
PARAMS = {
    "lenet5": 60_850,
    "alexnet": 60_965_224,
    "alexnet_tv": 61_100_840,
    "vgg11": 132_863_336,
    "vgg11_bn": 132_868_840,
    "vgg13": 133_047_848,
    "vgg13_bn": 133_053_736,
    "vgg16": 138_357_544,
    "vgg16_bn": 138_365_992,
    "vgg19": 143_667_240,
    "vgg19_bn": 143_678_248,
    "googlenet": 6_624_904,
    "inception_v3": 23_834_568,
    "resnet18": 11_689_512,
    "resnet34": 21_797_672,
    "resnet50": 25_557_032,
    "resnet101": 44_549_160,
    "resnet152": 60_192_808,
    "resnext50_32x4d": 25_028_904,
    "resnext101_32x8d": 88_791_336,
    "resnext101_64x4d": 83_455_272,
    "wide_resnet50_2": 68_883_240,
    "wide_resnet101_2": 126_886_696,
    "densenet121": 7_978_856,
    "densenet161": 28_681_000,
    "densenet169": 14_149_480,
    "densenet201": 20_013_928,
    "mobilenet_v2": 3_504_872,
    "mobilenet_v3_large": 5_483_032,
    "mobilenet_v3_small": 2_542_856,
    "efficientnet_b0": 5_288_548,
    "efficientnet_b1": 7_794_184,
    "efficientnet_b2": 9_109_994,
    "efficientnet_b3": 12_233_232,
    "efficientnet_b4": 19_341_616,
    "efficientnet_b5": 30_389_784,
    "efficientnet_b6": 43_040_704,
    "efficientnet_b7": 66_347_960,
    "mnasnet0_5": 2_218_512,
    "mnasnet0_75": 3_170_208,
    "mnasnet1_0": 4_383_312,
    "mnasnet1_3": 6_282_256,
    "squeezenet1_0": 1_248_424,
    "squeezenet1_1": 1_235_496,
    "shufflenet_v2_x0_5": 1_366_792,
    "shufflenet_v2_x1_0": 2_278_604,
    "shufflenet_v2_x1_5": 3_503_624,
    "shufflenet_v2_x2_0": 7_393_996,
    "regnet_x_400mf": 5_495_976,
    "regnet_x_800mf": 7_259_656,
    "regnet_x_1_6gf": 9_190_136,
    "regnet_x_3_2gf": 15_296_552,
    "regnet_x_8gf": 39_572_648,
    "regnet_x_16gf": 54_278_536,
    "regnet_y_400mf": 4_344_144,
    "regnet_y_800mf": 6_432_512,
    "regnet_y_1_6gf": 11_202_430,
    "regnet_y_3_2gf": 19_436_338,
    "regnet_y_8gf": 39_381_472,
    "regnet_y_16gf": 83_590_140,
    "convnext_tiny": 28_589_128,
    "convnext_small": 50_223_688,
    "convnext_base": 88_591_464,
    "convnext_large": 197_767_336,
    # The glyph nets, counted by hand (conv: out*in*k*k [+ out bias]; BN: 2*C; linear: in*out+out;
    # deformable: its conv + an offset conv with 2*k*k (v1) or 3*k*k (v2, with mask) outputs
    # and bias; gated: two convs).
    "dcn_net": (1 * 32 * 9 + 64) + (32 * 64 * 9 + 128)
    + (64 * 64 * 9 + (64 * 18 * 9 + 18) + 128)
    + (64 * 64 * 9 + (64 * 27 * 9 + 27) + 128)
    + (64 * 10 + 10),                                                     # 119,511
    "dcn_net_plain": (1 * 32 * 9 + 64) + (32 * 64 * 9 + 128)
    + 2 * (64 * 64 * 9 + 128) + (64 * 10 + 10),                           # 93,546
    "lrn_within_net": (1 * 32 * 25 + 32) + (32 * 32 * 25 + 32) + (32 * 64 * 25 + 64)
    + (64 * 4 * 4 * 10 + 10),                                             # 87,978
    "encoder_decoder": (1 * 16 * 9 + 32) + (16 * 32 * 9 + 64) + (32 * 64 * 9 + 128)
    + 2 * (64 * 64 * 9 + 128)                                             # dilated context
    + (64 * 32 * 4 * 4 + 64)                                              # transposed conv + BN
    + 2 * (64 * 32 * 9 + 32)                                              # gated conv
    + (32 * 16 * 9 + 32)                                                  # resize-then-conv
    + 2 * (32 * 16 * 9 + 16)                                              # gated conv
    + (16 * 10 + 10),                                                     # 181,210
}

# Training-mode counts where auxiliary heads add parameters.
TRAIN_PARAMS = {"googlenet": 13_004_888, "inception_v3": 27_161_264}

# torchvision's published GFLOPS (multiply-accumulates) of the inference model.
GMACS = {"alexnet_tv": 0.71, "resnet18": 1.81, "resnet50": 4.09, "vgg16": 15.47,
         "googlenet": 1.50, "densenet121": 2.83, "inception_v3": 5.71,
         "resnext50_32x4d": 4.23, "resnext101_32x8d": 16.41, "resnext101_64x4d": 15.46,
         "wide_resnet50_2": 11.40, "wide_resnet101_2": 22.75}
# The mobile families' `_ops` (each variant at its own eval resolution), to within 1 %: they count
# convolutions (squeeze-and-excitation's 1x1 ones included) and linear layers, not the
# activations, the excitation's multiplication or the residual adds, as cnngraph does.
GMACS_1PCT = {"mobilenet_v2": 0.301, "mobilenet_v3_large": 0.217, "mobilenet_v3_small": 0.057,
              "efficientnet_b0": 0.386, "efficientnet_b1": 0.687, "efficientnet_b2": 1.088,
              "efficientnet_b3": 1.827, "efficientnet_b4": 4.394, "efficientnet_b5": 10.266,
              "efficientnet_b6": 19.068, "efficientnet_b7": 37.746, "mnasnet0_5": 0.104,
              "mnasnet0_75": 0.215, "mnasnet1_0": 0.314, "mnasnet1_3": 0.526}

# The same, as the weight enums' meta["_ops"] state them (rounded to 3 decimals) for the families
# of issue 12: our count, rounded the same way, must give the very same figure.
PUBLISHED_GMACS = {
    "squeezenet1_0": 0.819, "squeezenet1_1": 0.349,
    "shufflenet_v2_x0_5": 0.04, "shufflenet_v2_x1_0": 0.145, "shufflenet_v2_x1_5": 0.296,
    "shufflenet_v2_x2_0": 0.583,
    "regnet_x_400mf": 0.414, "regnet_x_800mf": 0.8, "regnet_x_1_6gf": 1.603,
    "regnet_x_3_2gf": 3.177, "regnet_x_8gf": 7.995, "regnet_x_16gf": 15.941,
    "regnet_y_400mf": 0.402, "regnet_y_800mf": 0.834, "regnet_y_1_6gf": 1.612,
    "regnet_y_3_2gf": 3.176, "regnet_y_8gf": 8.473, "regnet_y_16gf": 15.912,
    "convnext_tiny": 4.456, "convnext_small": 8.684, "convnext_base": 15.355,
    "convnext_large": 34.361,
}

# Output name -> (shape without batch, phase, loss weight) of the multi-output nets.
HEADS = {
    "googlenet": {"main": ((1000,), "both", 1.0), "aux1": ((1000,), "train", 0.3),
                  "aux2": ((1000,), "train", 0.3)},
    "inception_v3": {"main": ((1000,), "both", 1.0), "aux": ((1000,), "train", 0.4)},
}


def test_zoo_lists_exactly_these_models():
    assert sorted(zoo.names()) == sorted(PARAMS)


def inference_macs(graph) -> int:
    live = graph.ancestors([o.node for o in graph.active_outputs(False)])
    return sum(graph[n].stats.get("macs", 0) for n in live)


@pytest.mark.parametrize("name", sorted(PARAMS))
def test_params_match_published_counts(name):
    graph = cnngraph.load(name)
    assert graph.params_for(False) == PARAMS[name]
    assert graph.params == TRAIN_PARAMS.get(name, PARAMS[name])
    assert all(node.shape is not None and node.shape[0] == "N" for node in graph)


@pytest.mark.parametrize("name", sorted(GMACS))
def test_macs_match_torchvision_gflops(name):
    assert inference_macs(cnngraph.load(name)) / 1e9 == pytest.approx(GMACS[name], rel=0.02)


@pytest.mark.parametrize("name", sorted(PUBLISHED_GMACS))
def test_macs_round_to_torchvision_published_ops(name):
    assert round(inference_macs(cnngraph.load(name)) / 1e9, 3) == PUBLISHED_GMACS[name]


@pytest.mark.parametrize("name", sorted(GMACS_1PCT))
def test_macs_match_torchvision_ops_within_one_percent(name):
    assert inference_macs(cnngraph.load(name)) / 1e9 == pytest.approx(GMACS_1PCT[name], rel=0.01)


@pytest.mark.parametrize("name", sorted(HEADS))
def test_auxiliary_heads_are_training_outputs(name):
    graph = cnngraph.load(name)
    heads = {o.name: (graph[o.node].shape[1:], o.phase, o.loss_weight) for o in graph.outputs}
    assert heads == HEADS[name]
    assert [o.name for o in graph.active_outputs(False)] == ["main"]


def test_lenet5_parts_and_receptive_field():
    graph = cnngraph.load("lenet5")
    counts = {n.name: n.stats["params"] for n in graph if n.stats.get("params")}
    assert counts == {"c1": 156, "s2": 12, "c3": 1_516, "s4": 32, "c5": 48_120, "f6": 10_164,
                      "output": 850}
    assert sum(v for k, v in counts.items() if k != "output") == 60_000
    # c1 5 -> s2 (2/2) 6, jump 2 -> c3 6+4*2 = 14 -> s4 16, jump 4 -> c5 16+4*4 = 32
    assert graph["c5"].stats["receptive_field"] == (32, 32)
    assert graph["c5"].stats["jump"] == (4, 4)


def test_alexnet_receptive_field():
    graph = cnngraph.load("alexnet")
    # conv1 11 (jump 4) -> pool1 11+2*4 = 19 (8) -> conv2 19+4*8 = 51 -> pool2 51+2*8 = 67 (16)
    # -> conv3/4/5 +2*16 each = 163 -> pool5 163+2*16 = 195 (32)
    expected = {"conv1": 11, "pool1": 19, "conv2": 51, "pool2": 67, "conv5": 163, "pool5": 195}
    assert {n: graph[n].stats["receptive_field"][0] for n in expected} == expected
    assert graph["pool5"].stats["jump"] == (32, 32)
    assert graph["pool5"].shape == ("N", 256, 6, 6)


def test_shufflenet_and_convnext_receptive_fields():
    # shufflenet_v2: conv1 3/2 -> 3 (jump 2); maxpool 3/2 -> 7 (4); each unit's depthwise 3x3
    # adds 2 jumps, the first of a stage before doubling it: stage2 7+8 = 15 (8) +3*16 = 63,
    # stage3 +16 = 79 (16) +7*32 = 303, stage4 +32 = 335 (32) +3*64 = 527
    graph = cnngraph.load("shufflenet_v2_x1_0")
    assert graph["conv5"].stats["receptive_field"] == (527, 527)
    assert graph["conv5"].stats["jump"] == (32, 32)
    # convnext_tiny: stem 4/4 -> 4 (4); a block's 7x7 adds 6 jumps, a 2/2 downsampling 1:
    # 4+3*24 = 76, +4 = 80 (8), +3*48 = 224, +8 = 232 (16), +9*96 = 1096, +16 = 1112 (32),
    # +3*192 = 1688
    graph = cnngraph.load("convnext_tiny")
    last = graph["stage4.block.2.add"]
    assert last.shape == ("N", 768, 7, 7) and last.stats["receptive_field"] == (1688, 1688)


def test_encoder_decoder_keeps_per_pixel_scores():
    graph = cnngraph.load("encoder_decoder")
    assert graph["scores"].shape == ("N", 10, 32, 32)
    assert graph.num_classes == 10


def forward_shapes(module, graph, batch: int, training: bool, x: torch.Tensor):
    """The tensors the module returns, by output name, and the shapes the IR inferred for them."""
    module.train(training)
    with torch.no_grad():
        y = module(x)
    outputs = graph.active_outputs(training)
    got = {o.name: y[o.name] for o in outputs} if len(outputs) > 1 else {outputs[0].name: y}
    inferred = {o.name: (batch, *graph[o.node].shape[1:]) for o in outputs}
    return got, inferred


# Variants built from the same blocks as one built here, at 1-3 s each on the meta device: their
# IR is checked above, their blocks by the variant that is built.
SAME_BLOCKS = {f"efficientnet_b{k}" for k in range(1, 8)} | {"mnasnet0_75", "mnasnet1_0"}


@pytest.mark.parametrize("name", sorted(set(PARAMS) - SAME_BLOCKS))
def test_built_module_matches_the_ir(name):
    """The module's parameters and the output shapes of its forward code in both modes. On the
    meta device: the same modules and code, without allocating and initialising up to 144M
    weights (about 2 s per VGG); real arithmetic is checked below."""
    graph = cnngraph.load(name)
    with torch.device("meta"):
        module = cnngraph.build(graph)
        assert sum(p.numel() for p in module.parameters()) == graph.params
        for training in (True, False):
            got, inferred = forward_shapes(module, graph, 2, training,
                                           torch.empty(2, *graph.input_shape))
            assert {k: tuple(v.shape) for k, v in got.items()} == inferred


# Real weights and arithmetic: the small nets (every special layer) and one or two of each
# ImageNet family's design (LRN and groups, residual, dense, Inception with auxiliary heads).
REAL = ["lenet5", "dcn_net", "dcn_net_plain", "lrn_within_net", "encoder_decoder", "alexnet",
        "resnet18", "densenet121", "googlenet", "inception_v3"]


@pytest.mark.parametrize("name", REAL)
def test_forward_with_real_weights(name):
    graph = cnngraph.load(name)
    torch.manual_seed(0)
    module = cnngraph.build(graph)
    training = name in HEADS  # training mode runs every head
    # Batch norm in training needs two samples where a head reduces to 1x1 (Inception v3's
    # auxiliary 5x5 conv).
    batch = 2 if training else 1
    got, inferred = forward_shapes(module, graph, batch, training,
                                   torch.randn(batch, *graph.input_shape))
    assert {k: tuple(v.shape) for k, v in got.items()} == inferred
    assert all(torch.isfinite(v).all() for v in got.values())
