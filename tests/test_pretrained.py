"""Weights from elsewhere (cnngraph.import_weights): torchvision's own models are the reference.
Each test builds torchvision's network with random weights, imports its state_dict and compares
outputs on the same input, so a wrong rename, a shifted nn.Sequential number or a transposed
tensor shows as a missing key, a mis-shaped key or a different output."""
from __future__ import annotations

import functools
import gzip
import json
from pathlib import Path

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
    x = torch.randn(2, 3, 32, 32)
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


def torchvision_state(name: str, **shapes) -> dict[str, torch.Tensor]:
    """torchvision's state_dict of `name` (stored keys and shapes), zeros; `shapes` replaces
    some (fc__weight=(10, 512) for the key fc.weight)."""
    shapes = {k.replace("__", "."): v for k, v in shapes.items()}
    return {k: torch.zeros(shapes.get(k, shape)) for k, shape in stored_keys()[name]}


def test_mismatch_is_one_line_naming_keys_and_counts():
    with pytest.raises(WeightsError) as info:
        cnngraph.import_weights(cnngraph.load("resnet34"), torchvision_state("resnet18"))
    message = str(info.value)
    assert "\n" not in message and "closest is torchvision" in message
    assert "80 missing (layer1.2.conv1.weight" in message  # 3+4+6+3 vs 2+2+2+2 blocks: 8 more
    state = torchvision_state("resnet18", fc__weight=(10, 512), fc__bias=(10,))
    with pytest.raises(WeightsError, match=r"1 unmatched in the file \(extra.weight\); 2 "
                       r"mis-shaped \(fc.weight \(10, 512\) \(expected \(1000, 512\)\), fc.bias"):
        cnngraph.import_weights(cnngraph.load("resnet18"), {**state, "extra.weight": torch.ones(1)})
    # the head left out: everything else is taken, the head kept from a fresh build
    got = cnngraph.import_weights(cnngraph.load("resnet18"), state, ignore=["fc"])
    assert sorted(got.kept) == ["fc.bias", "fc.weight"] and got.matched == len(state) - 2
    # a family's naming (googlenet's) does not fit another family (resnet18)
    with pytest.raises(WeightsError, match=r"closest is \w+, with \d+ of 364 keys named alike"):
        cnngraph.import_weights(cnngraph.load("resnet18"), torchvision_state("googlenet"))
    with pytest.raises(WeightsError, match="naming 'timm': 'resnet18' knows cnngraph, torchvision"):
        cnngraph.import_weights(cnngraph.load("resnet18"), state, naming="timm")


# One variant per family, against torchvision's network at a small input (what the network
# allows: inception_v3's auxiliary head needs 299x299). The other variants: keys and shapes.
MAIN = ("main",)
FAMILIES = [  # (ours, torchvision's builder, its options, input size, outputs in train mode)
    ("alexnet_tv", "alexnet", {}, 63, MAIN),
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
    # eval mode computes no auxiliary head: inception_v3 runs it at its smallest input, 75
    same_outputs(ours, reference, x[:, :, :75, :75] if size == 299 else x, train=False)
    same_outputs(ours, reference, x, train=True, outputs=outputs)


KEYS = Path(__file__).parent / "data" / "torchvision_keys.json.gz"  # scripts/torchvision_keys.py


@functools.cache
def stored_keys() -> dict[str, list]:
    return json.loads(gzip.decompress(KEYS.read_bytes()))["models"]


@pytest.mark.parametrize("name", sorted(stored_keys()))
def test_every_variant_takes_torchvisions_keys_and_shapes(name):
    """Every key and shape of torchvision's network, as stored from its definition (so this
    runs without torchvision), renamed to ours: one tensor each, none left over, none kept
    from a fresh build (import_weights compares them with the built network's state_dict)."""
    state = {k: torch.empty(shape, device="meta") for k, shape in stored_keys()[name]}
    got = cnngraph.import_weights(cnngraph.load(name), state, naming="torchvision")
    assert got.matched == len(state) == len(got) and not got.kept


def test_stored_keys_are_torchvisions():
    """The stored lists are what the installed torchvision's definitions give, for every zoo
    network with a torchvision builder (the regnets, built on the CPU, two of them)."""
    import runpy

    tv = models()
    script = runpy.run_path(str(Path(__file__).parent.parent / "scripts" / "torchvision_keys.py"))
    stored, chosen = stored_keys(), script["models"](tv)
    assert sorted(stored) == sorted(chosen)
    for name, (builder, options) in chosen.items():
        if name.startswith("regnet") and "400mf" not in name:
            continue
        state = script["state_of"](tv, builder, options)
        assert [[k, list(v.shape)] for k, v in state.items()] == stored[name], name


def test_inception_v3_checkpoint_declares_the_same_normalisation():
    """torchvision's inception_v3 has our keys: naming="torchvision" says it is theirs, and
    brings the (x - 0.5) / 0.5 normalisation of transform_input, as googlenet's (below)."""
    graph = cnngraph.load("inception_v3")
    state = {k: torch.empty(shape, device="meta") for k, shape in stored_keys()["inception_v3"]}
    assert cnngraph.import_weights(graph, state).alike == ["torchvision"]
    assert graph.meta["normalize"]["mean"] == [0.485, 0.456, 0.406]  # ours: ImageNet's
    assert cnngraph.import_weights(graph, state, naming="torchvision").normalize["std"] == [0.5] * 3
    assert graph.meta["normalize"] == {"mean": [0.5] * 3, "std": [0.5] * 3}


@pytest.mark.parametrize("name, size", [("googlenet", 64)])
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


# --- the command line ----------------------------------------------------------------------
def one_line_error(capsys, *argv) -> str:
    from cnngraph.cli import main

    assert main([str(a) for a in argv]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    return err


TOY = """
name: toy
input: [3, 16, 16]
meta:
  naming:                       # as a Sequential(features) + Linear(fc) model would name it
    other:
      normalize: {mean: [0.5, 0.5, 0.5], std: [0.25, 0.25, 0.25]}
      rules:
        - {rename: '^(conv|bn|relu|pool)\\d$', to: 'features.{0}'}
        - {sequential: features, flat: true}
layers:
  - {name: conv1, op: conv2d, out: 8, kernel: 3, padding: 1, bias: false}
  - {name: bn1, op: batch_norm}
  - {name: relu1, op: relu}
  - {name: pool1, op: max_pool2d, kernel: 2, stride: 2}
  - {name: conv2, op: conv2d, out: 8, kernel: 3, padding: 1}
  - {name: relu2, op: relu}
  - {name: flatten, op: flatten}
  - {name: fc, op: linear, out: 5}
"""


def test_cli_weights_export_verify_bench_take_another_naming(tmp_path, capsys):
    """A checkpoint of a user's spec in the names its `meta.naming` declares (features.0,
    features.1, features.4, fc): converted once, and taken directly by export, verify and
    bench; the normalisation the naming declares reaches the exported model."""
    import onnx

    from cnngraph.cli import main

    spec = tmp_path / "toy.yaml"
    spec.write_text(TOY)
    graph = cnngraph.load(spec)
    torch.manual_seed(5)  # not the commands' default seed 0
    ours = cnngraph.build(graph).state_dict()
    number = {"conv1": 0, "bn1": 1, "conv2": 4}  # relu1 2, pool1 3: counted, as nn.Sequential
    theirs = {(f"features.{number[k.split('.')[0]]}." if k.split(".")[0] in number else "fc.")
              + k.split(".", 1)[1]: v for k, v in ours.items()}
    torch.save(theirs, tmp_path / "other.pth")

    assert main(["weights", str(tmp_path / "other.pth"), "--spec", str(spec),
                 "-o", str(tmp_path / "w.safetensors")]) == 0
    out = capsys.readouterr().out
    assert f"naming other, {len(ours)} tensors matched" in out and "std [0.25, 0.25, 0.25]" in out
    converted = cnngraph.import_weights(cnngraph.load(spec), tmp_path / "w.safetensors")
    assert converted.naming == "cnngraph" and converted.normalize["std"] == [0.25] * 3
    assert all(torch.equal(converted[k], ours[k]) for k in ours)

    assert main(["export", str(spec), "--weights", str(tmp_path / "other.pth"),
                 "-o", str(tmp_path / "m.onnx")]) == 0
    assert "naming other" in capsys.readouterr().err  # the note, off stdout
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert json.loads(props["cnngraph.normalize"])["std"] == [0.25] * 3
    assert main(["verify", str(tmp_path / "m.onnx"), "--against", str(spec),
                 "--weights", str(tmp_path / "w.safetensors")]) == 0
    assert "PASS" in capsys.readouterr().out
    assert main(["verify", str(tmp_path / "m.onnx"), "--against", str(spec)]) == 1  # other weights
    capsys.readouterr()
    for model in (tmp_path / "m.onnx", spec):  # PyTorch against the export, and the spec
        assert main(["bench", str(model), "--weights", str(tmp_path / "other.pth"),
                     "--batch-sizes", "1", "--seconds", "0.02", "--device", "cpu", "--json"]) == 0
        rows = json.loads(capsys.readouterr().out)["results"]
        assert {r["engine"] for r in rows} >= {"torch eager", "onnxruntime"}
        assert all(r["max_rel_err"] < 1e-4 for r in rows if r["engine"] == "onnxruntime")


def test_cli_wrong_checkpoints_are_one_line_and_write_nothing(tmp_path, capsys):
    out = tmp_path / "out.safetensors"
    ten = torchvision_state("resnet18", fc__weight=(10, 512), fc__bias=(10,))
    torch.save(ten, tmp_path / "ten.pth")
    message = one_line_error(capsys, "weights", tmp_path / "ten.pth", "--spec", "resnet18", "-o", out)
    assert "2 mis-shaped (fc.weight (10, 512) (expected (1000, 512))" in message
    assert "cnngraph train --weights" in message
    message = one_line_error(capsys, "weights", tmp_path / "ten.pth", "--spec", "googlenet", "-o", out)
    assert "fits 'googlenet' under none of its namings (cnngraph, torchvision)" in message
    torch.save({"conv1.weight": torch.zeros(1), "f": torch.nn.ReLU()}, tmp_path / "obj.pth")
    assert "holds pickled Python objects" in one_line_error(
        capsys, "weights", tmp_path / "obj.pth", "--spec", "resnet18", "-o", out)
    assert "knows cnngraph, torchvision" in one_line_error(
        capsys, "weights", tmp_path / "ten.pth", "--spec", "resnet18", "-o", out, "--naming", "tf")
    assert "is a safetensors file" in one_line_error(
        capsys, "weights", tmp_path / "ten.pth", "--spec", "resnet18", "-o", tmp_path / "o.pth")
    assert "mis-shaped" in one_line_error(capsys, "export", "resnet18", "--weights",
                                          tmp_path / "ten.pth", "-o", tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["obj.pth", "ten.pth"]


@pytest.mark.parametrize("rule, message", [
    ("{rename: '(', to: x}", r"rules\[0\]`: '\(' is not a regular expression"),
    ("{sequentail: x}", r"rules\[0\]` has keys \['sequentail'\]: a rule is"),
    ("{rename: '(c)', to: '{3}'}", r"rules\[0\].to` names group \{3\}, but the regex has 1"),
    ("{rename: 'c(o)', to: '{1+1}'}", r"rules\[0\].to`: \{1\+1\} needs a number, but group 1 is 'o'"),
])
def test_a_malformed_naming_rule_fails_at_load_with_its_line(tmp_path, rule, message):
    from cnngraph.errors import SpecError

    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ninput: [3, 8, 8]\nmeta:\n  naming:\n    tv:\n      rules:\n"
                    f"        - {rule}\nlayers:\n  - {{name: conv1, op: conv2d, out: 4, kernel: 3}}\n")
    with pytest.raises(SpecError, match=rf"bad.yaml:4: `meta.naming.tv.{message}"):
        cnngraph.load(spec)
