"""Weights from elsewhere (cnngraph.import_weights): torchvision's own models are the reference.
Each test builds torchvision's network with random weights, imports its state_dict and compares
outputs on the same input, so a wrong rename, a shifted nn.Sequential number or a transposed
tensor shows as a missing key, a mis-shaped key or a different output."""
from __future__ import annotations

import pytest
import torch

import cnngraph
from cnngraph.pretrained import WeightsError
from torchvision_ref import models


def imported(name: str, reference: torch.nn.Module, **options):
    """(graph, our module, the imported state_dict) carrying the reference's weights."""
    graph = cnngraph.load(name, input_shape=options.pop("input_shape", None))
    state = cnngraph.import_weights(graph, reference.state_dict(), **options)
    with torch.device("meta"):  # no initialisation: the weights come next
        module = cnngraph.build(graph)
    module.load_state_dict(state, assign=True)  # strict: every key, no extra
    return graph, module, state


def randomise_bn(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial batch norm statistics and affine terms, so that eval mode tests them."""
    g = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
            m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(m.num_features, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(m.num_features, generator=g) * 0.1)


def same_outputs(ours, theirs, x, *, train: bool, outputs=("main",), atol=1e-4):
    """Both networks' outputs on x agree: ours named `outputs`, in the order of torchvision's
    (its namedtuple: main, then auxiliary heads)."""
    ours.train(train)
    theirs.train(train)
    with torch.no_grad():
        a, b = ours(x), theirs(x)
    a = [a] if isinstance(a, torch.Tensor) else [a[name] for name in outputs]
    b = [b] if isinstance(b, torch.Tensor) else list(b)
    assert len(a) == len(b) == len(outputs)
    for p, q in zip(a, b):
        assert p.shape == q.shape
        torch.testing.assert_close(p, q, atol=atol, rtol=1e-4)


@pytest.fixture
def no_dropout(monkeypatch):
    """Dropout as the identity in both networks (ours and torchvision's call F.dropout), so
    that train mode compares deterministic outputs and still tests batch norm's batch
    statistics: the random masks could not agree anyway, the layers run in different orders."""
    monkeypatch.setattr(torch.nn.functional, "dropout", lambda x, *args, **kwargs: x)


def test_resnet18_from_torchvision_eval_and_train():
    tv = models()
    torch.manual_seed(0)
    reference = tv.resnet18()
    randomise_bn(reference)
    graph, ours, state = imported("resnet18", reference)
    assert state.naming == "torchvision" and state.matched == len(reference.state_dict())
    assert "layer2.0.downsample.conv.weight" in state  # from torchvision's downsample.0
    x = torch.randn(2, 3, 64, 64)
    same_outputs(ours, reference, x, train=False)
    same_outputs(ours, reference, x, train=True)  # batch statistics, and the same update:
    torch.testing.assert_close(ours.state_dict()["bn1.running_mean"],
                               reference.state_dict()["bn1.running_mean"])


def test_own_naming_round_trip_and_files(tmp_path):
    from safetensors.torch import save_file

    graph = cnngraph.load("resnet18")
    torch.manual_seed(1)
    state = cnngraph.build(graph).state_dict()
    got = cnngraph.import_weights(graph, state)
    assert got.naming == "cnngraph" and set(got) == set(state)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    torch.save({"module." + k: v for k, v in state.items()}, tmp_path / "w.pth")  # DataParallel
    torch.save({"model": state, "epoch": 3}, tmp_path / "checkpoint.pth")  # a training checkpoint
    for name in ("w.safetensors", "w.pth", "checkpoint.pth"):
        got = cnngraph.import_weights(graph, tmp_path / name)
        assert all(torch.equal(got[k], state[k]) for k in state), name


def test_mismatch_is_one_line_naming_keys_and_counts():
    tv = models()
    with pytest.raises(WeightsError) as info:
        cnngraph.import_weights(cnngraph.load("resnet34"), tv.resnet18().state_dict())
    message = str(info.value)
    assert "\n" not in message and "closest is torchvision" in message
    assert "80 missing (layer1.2.conv1.weight" in message  # 3+4+6+3 vs 2+2+2+2 blocks: 8 more
    state = tv.resnet18(num_classes=10).state_dict()
    with pytest.raises(WeightsError, match=r"1 unmatched in the file \(extra.weight\); 2 "
                       r"mis-shaped \(fc.weight \(10, 512\) \(expected \(1000, 512\)\), fc.bias"):
        cnngraph.import_weights(cnngraph.load("resnet18"), {**state, "extra.weight": torch.ones(1)})
    # the head left out: everything else is taken, the head kept from a fresh build
    got = cnngraph.import_weights(cnngraph.load("resnet18"), state, ignore=["fc"])
    assert sorted(got.kept) == ["fc.bias", "fc.weight"] and got.matched == len(state) - 2


# One variant per family, against torchvision's network at a small input (what the network
# allows: inception_v3's auxiliary head needs 299x299). The other variants: keys and shapes.
MAIN = ("main",)
FAMILIES = [  # (ours, torchvision's builder, its options, input size, outputs in train mode)
    ("alexnet_tv", "alexnet", {}, 63, MAIN),
    ("resnext50_32x4d", "resnext50_32x4d", {}, 64, MAIN),  # grouped 3x3 convolutions
    ("vgg11_bn", "vgg11_bn", {}, 32, MAIN),
    ("densenet121", "densenet121", {}, 32, MAIN),
    ("googlenet", "googlenet", {"aux_logits": True, "init_weights": True}, 64,
     ("main", "aux2", "aux1")),  # GoogLeNetOutputs(logits, aux_logits2, aux_logits1)
    ("inception_v3", "inception_v3", {"aux_logits": True, "init_weights": True}, 299,
     ("main", "aux")),
]


@pytest.mark.parametrize("name, builder, options, size, outputs", FAMILIES,
                         ids=[f[0] for f in FAMILIES])
def test_family_outputs_equal_torchvisions(name, builder, options, size, outputs, no_dropout):
    tv = models()
    torch.manual_seed(0)
    reference = getattr(tv, builder)(**options)
    randomise_bn(reference)
    naming = {"naming": "torchvision"} if name == "inception_v3" else {}  # its keys are ours
    graph, ours, state = imported(name, reference, input_shape=(3, size, size), **naming)
    assert state.naming == "torchvision" and not state.kept
    x = torch.randn(2, 3, size, size)
    same_outputs(ours, reference, x, train=False)
    same_outputs(ours, reference, x, train=True, outputs=outputs)


VARIANTS = ["alexnet_tv", "vgg11", "vgg11_bn", "vgg13", "vgg13_bn", "vgg16", "vgg16_bn", "vgg19",
            "vgg19_bn", "densenet121", "densenet161", "densenet169", "densenet201", "googlenet",
            "inception_v3", "resnet18", "resnet34", "resnet50", "resnet101", "resnet152",
            "resnext50_32x4d", "resnext101_32x8d", "resnext101_64x4d", "wide_resnet50_2",
            "wide_resnet101_2"]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_variant_imports_torchvisions_keys(name):
    """Every key and shape of torchvision's network (built on the meta device: no memory)."""
    tv = models()
    builder = "alexnet" if name == "alexnet_tv" else name
    options = {"aux_logits": True, "init_weights": False} if name in ("googlenet", "inception_v3") else {}
    with torch.device("meta"):
        state = getattr(tv, builder)(**options).state_dict()
    graph = cnngraph.load(name)
    got = cnngraph.import_weights(graph, state, naming="torchvision")
    assert got.matched == len(state) and not got.kept
    with torch.device("meta"):
        cnngraph.build(graph).load_state_dict(got, strict=True)


@pytest.mark.parametrize("name, size", [("googlenet", 64), ("inception_v3", 299)])
def test_transform_input_checkpoint_predicts_as_torchvision_through_infer(name, size, tmp_path,
                                                                          capsys):
    """torchvision's pretrained googlenet and inception_v3 (transform_input=True) take an
    ImageNet-normalised image and re-normalise it inside to (pixels - 0.5) / 0.5. Imported, the
    model records that normalisation, so `cnngraph infer` on the image file gives torchvision's
    logits. Its state_dict is saved without the auxiliary heads (as a model loaded for
    inference is): they are kept at a fresh initialisation."""
    import numpy as np
    from PIL import Image

    from cnngraph.cli import main
    from exporters import export_onnx

    tv = models()
    torch.manual_seed(0)
    reference = getattr(tv, name)(transform_input=True, aux_logits=False, init_weights=True).eval()
    randomise_bn(reference)
    torch.save(reference.state_dict(), tmp_path / "tv.pth")
    pixels = np.random.default_rng(0).integers(0, 256, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "image.png")
    mean, std = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])
    x = (torch.from_numpy(pixels).permute(2, 0, 1).float() / 255 - mean[:, None, None]) / std[:, None, None]
    with torch.no_grad():
        expected = reference(x[None]).numpy()

    graph = cnngraph.load(name, input_shape=(3, size, size))
    state = cnngraph.import_weights(graph, tmp_path / "tv.pth", naming="torchvision")
    assert graph.meta["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}
    assert state.kept and all(k.startswith(("aux", "AuxLogits")) for k in state.kept)
    with torch.device("meta"):
        module = cnngraph.build(graph)
    module.load_state_dict(state, assign=True)
    export_onnx(graph, module.eval(), tmp_path / "model.onnx")
    assert main(["infer", str(tmp_path / "model.onnx"), str(tmp_path / "image.png"),
                 "--output", str(tmp_path / "out.npz")]) == 0
    capsys.readouterr()
    got = np.load(tmp_path / "out.npz")
    scale = np.abs(expected).max()  # random weights: logits may be huge (inception_v3 ~1e13)
    np.testing.assert_allclose(got[got.files[0]] / scale, expected / scale, atol=1e-5)
    assert got[got.files[0]].argmax() == expected.argmax()
    # the ImageNet normalisation (what the family declares for its own training) differs
    graph = cnngraph.load(name, input_shape=(3, size, size))
    assert graph.meta["normalize"]["mean"] == [0.485, 0.456, 0.406]
