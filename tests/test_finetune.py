"""Fine-tuning: `train --weights` re-sizes the head to the dataset's classes and loads the rest
bit for bit; `--freeze` keeps parameters and batch-norm statistics bit-equal; resume; the
exported run carries the dataset's class names. Facts checked: the checkpoint file's tensors,
the dataset's classes, GoogLeNet's published parameter count."""
from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import CnnGraphError
from cnngraph.train import train, trainer
from cnngraph.train.finetune import frozen_layers, with_classes

# A 10-class network with batch norms; the data (conftest's bright thirds) has 3 classes.
NET = {
    "name": "small",
    "input": [1, 8, 8],
    "layers": [
        {"name": "conv1", "op": "conv2d", "out": 4, "kernel": 3, "padding": 1, "bias": False},
        {"name": "bn1", "op": "batch_norm"},
        {"name": "relu1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out": 6, "kernel": 3, "padding": 1, "bias": False},
        {"name": "bn2", "op": "batch_norm"},
        {"name": "relu2", "op": "relu"},
        {"name": "pool", "op": "global_avg_pool2d"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 10},
    ],
}
OPTIONS = dict(epochs=2, batch_size=16, lr=0.01, seed=1, deterministic=True, progress=False)
HEAD = ("fc.weight", "fc.bias")


@pytest.fixture(scope="module")
def files(tmp_path_factory, bright_thirds):
    """small.yaml, a checkpoint of it whose every tensor (running stats too) is far from an
    initialisation, and the data with class names."""
    root = tmp_path_factory.mktemp("finetune")
    (root / "small.yaml").write_text(yaml.safe_dump(NET))
    g = torch.Generator().manual_seed(7)
    model = cnngraph.build(cnngraph.load(NET))
    ckpt = {k: (torch.rand(v.shape, generator=g) + 0.5 if "running_var" in k else
                torch.randn(v.shape, generator=g)) if v.is_floating_point() else v + 5
            for k, v in model.state_dict().items()}
    save_file(ckpt, root / "pretrained.safetensors")
    arrays = dict(np.load(bright_thirds))
    np.savez(root / "thirds.npz", **arrays, classes=np.array(["left", "middle", "right"]))
    return root / "small.yaml", root / "pretrained.safetensors", root / "thirds.npz", ckpt


def _weights(run, name="last"):
    return load_file(run / f"{name}.safetensors")


@pytest.fixture(scope="module")
def partly_frozen(files, tmp_path_factory):
    """The reference fine-tune: conv1 and bn1 frozen, conv2/bn2 and the new head train."""
    spec, ckpt, data, _ = files
    run = tmp_path_factory.mktemp("ref") / "run"
    result = train(spec, str(data), out=run, weights=str(ckpt), freeze="bn1", **OPTIONS)
    return run, result


def test_new_head_at_the_data_size_and_the_rest_loaded_bit_for_bit(files, tmp_path):
    spec, path, data, ckpt = files
    run = tmp_path / "run"
    # everything before the head frozen: after training, every other tensor is the file's
    train(spec, str(data), out=run, weights=str(path), freeze="flatten", **OPTIONS)
    trained = _weights(run)
    assert trained.keys() == ckpt.keys()
    for key in ckpt.keys() - set(HEAD):
        assert torch.equal(trained[key], ckpt[key]), key
    assert trained["fc.weight"].shape == (3, 6) and trained["fc.bias"].shape == (3,)
    reloaded = cnngraph.load(yaml.safe_load((run / "spec.yaml").read_text()))
    assert reloaded.num_classes == 3 and reloaded.meta["classes"] == ["left", "middle", "right"]
    info = json.loads((run / "info.json").read_text())
    assert info["classes"] == ["left", "middle", "right"]
    start = info["start"]
    assert start["reinitialised"] == ["fc"] and start["classes"] == [10, 3]
    assert start["loaded_layers"] == ["conv1", "bn1", "conv2", "bn2"]
    assert start["loaded_tensors"] == len(ckpt) - 2
    assert info["frozen"] == ["conv1", "bn1", "conv2", "bn2"]


def test_freeze_keeps_parameters_and_running_stats_bit_equal(files, partly_frozen):
    *_, ckpt = files
    trained = _weights(partly_frozen[0])
    for key in ("conv1.weight", "bn1.weight", "bn1.bias", "bn1.running_mean",
                "bn1.running_var", "bn1.num_batches_tracked"):
        assert torch.equal(trained[key], ckpt[key]), key
    for key in ("conv2.weight", "bn2.weight", "bn2.running_mean", "bn2.running_var"):
        assert not torch.equal(trained[key], ckpt[key]), key
    assert int(trained["bn2.num_batches_tracked"]) == int(ckpt["bn2.num_batches_tracked"]) + 26


def test_resume_never_reloads_the_weights_over_a_checkpoint(files, partly_frozen, tmp_path,
                                                            monkeypatch):
    spec, path, data, _ = files
    copy = tmp_path / "copy.safetensors"
    shutil.copy(path, copy)
    calls = []

    def stop_at_step_5(self, stop, due, diverged):
        calls.append(1)
        return len(calls) == 5, False, diverged

    monkeypatch.setattr(trainer._Loop, "_agree", stop_at_step_5)
    options = {**OPTIONS, "freeze": "bn1"}
    with pytest.raises(KeyboardInterrupt):
        train(spec, str(data), out=tmp_path / "a", weights=str(copy), **options)
    # killed before the first checkpoint: only the run's header is left
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        train(spec, str(data), out=tmp_path / "b", weights=str(copy), **options)
    monkeypatch.undo()
    for name in ("checkpoint.pt", "last.safetensors"):
        (tmp_path / "b" / name).unlink()
    train(spec, str(data), out=tmp_path / "b", resume=True, progress=False)  # reads the weights
    copy.unlink()  # a resume from a checkpoint must not need them
    train(spec, str(data), out=tmp_path / "a", resume=True, progress=False)
    reference = _weights(partly_frozen[0])
    for run in ("a", "b"):
        resumed = _weights(tmp_path / run)
        assert resumed.keys() == reference.keys()
        for key in reference:
            assert torch.equal(resumed[key], reference[key]), (run, key)


def test_export_of_a_fine_tuned_run_names_the_datasets_classes(files, partly_frozen, tmp_path,
                                                               capsys):
    run = partly_frozen[0]
    model = tmp_path / "model.onnx"
    assert main(["export", str(run), "-o", str(model)]) == 0
    props = {p.key: p.value for p in onnx.load(model).metadata_props}
    assert json.loads(props["cnngraph.classes"]) == ["left", "middle", "right"]
    assert main(["verify", str(model), "--against", str(run)]) == 0
    capsys.readouterr()


def test_mismatched_weights_one_line_and_no_run_left(files, tmp_path, capsys):
    spec, path, data, ckpt = files
    bad = dict(ckpt)
    bad["conv2.weight"] = torch.zeros(6, 3, 3, 3)
    del bad["bn2.bias"]
    save_file(bad, tmp_path / "other.safetensors")
    run = tmp_path / "run"
    code = main(["train", str(spec), "--data", str(data), "--weights",
                 str(tmp_path / "other.safetensors"), "--out", str(run)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "conv2.weight" in err and "bn2.bias" in err, err
    assert not (run / "config.json").exists()  # nothing to --resume: the same command again


def test_freeze_unknown_path_names_close_ones(files, tmp_path, capsys):
    spec, path, data, _ = files
    code = main(["train", str(spec), "--data", str(data), "--weights", str(path),
                 "--freeze", "conv3", "--out", str(tmp_path / "r")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1, err
    assert "--freeze conv3" in err and "(close: conv2, conv1)" in err, err


def test_freeze_a_block_path_covers_the_whole_block():
    graph = cnngraph.load("resnet18")
    # torchvision's resnet18.layer1 is two basic blocks; the last layer of layer1.1 is relu2
    layers = frozen_layers(graph, "layer1")
    assert layers[-1] == "layer1.1.relu2" and "layer2.0.conv1" not in layers
    assert layers[:4] == ["conv1", "bn1", "relu", "maxpool"]


def test_googlenet_head_with_both_aux_heads_resized():
    """13,004,888 parameters with the aux heads (torchvision); each of the three classifiers
    loses 1025 x (1000 - 5)."""
    graph = with_classes(cnngraph.load("googlenet"), list("abcde"))
    assert graph.params == 13_004_888 - 3 * 1025 * 995
    assert [graph[n].shape for n in ("fc", "aux1.fc2", "aux2.fc2")] == [("N", 5)] * 3


def test_head_declared_in_the_spec_is_checked():
    spec = {**NET, "meta": {"head": ["flatten"]}}
    with pytest.raises(CnnGraphError, match="`meta.head` layer 'flatten'"):
        cnngraph.load(spec)
    with pytest.raises(CnnGraphError, match="did you mean 'fc'"):
        cnngraph.load({**NET, "meta": {"head": ["fcc"]}})


def test_torchvision_checkpoint_to_my_folder_to_export_and_infer(tmp_path, capsys):
    """The README's path: torchvision's resnet18 checkpoint (its own names) fine-tuned on a
    2-class image folder with everything but fc frozen, exported, verified, run. Independent
    check: torchvision's own resnet18 with that .pth and our new fc gives our run's logits."""
    pytest.importorskip("cnngraph.pretrained")
    import sys
    sys.path.insert(0, str(__import__("pathlib").Path(__file__).parent))
    from PIL import Image
    from torchvision_ref import models
    from cnngraph.train import load_run

    tv = models()
    torch.manual_seed(0)
    reference = tv.resnet18()
    for m in reference.modules():  # running stats that an import mix-up would show
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
    torch.save(reference.state_dict(), tmp_path / "resnet18.pth")
    rng = np.random.default_rng(0)
    for name, channel in (("cat", 0), ("dog", 2)):
        (tmp_path / "photos" / name).mkdir(parents=True)
        for i in range(6):
            pixels = rng.integers(0, 80, (24, 24, 3), dtype=np.uint8)
            pixels[..., channel] += 150
            Image.fromarray(pixels).save(tmp_path / "photos" / name / f"{i}.png")
    run, onnx_file = tmp_path / "run", tmp_path / "photos.onnx"
    # `cnngraph train resnet18 --weights resnet18.pth --data photos --freeze flatten ...`,
    # at 64x64 to keep the test short (ResNet's global pooling takes any size)
    train(cnngraph.load("resnet18", input_shape=[3, 64, 64]), str(tmp_path / "photos"),
          weights=tmp_path / "resnet18.pth", freeze="flatten", epochs=1, batch_size=4, out=run,
          progress=False)
    graph, state, info = load_run(run)
    assert graph.num_classes == 2 and info["classes"] == ["cat", "dog"]
    model = cnngraph.build(graph).eval()
    model.load_state_dict(state)
    reference.fc = torch.nn.Linear(512, 2)
    reference.fc.load_state_dict({"weight": state["fc.weight"], "bias": state["fc.bias"]})
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference.eval()(x), rtol=1e-4, atol=1e-4)
    assert main(["export", str(run), "-o", str(onnx_file)]) == 0
    assert main(["verify", str(onnx_file), "--against", str(run)]) == 0
    capsys.readouterr()
    assert main(["infer", str(onnx_file), str(tmp_path / "photos" / "dog" / "0.png"),
                 "--top-k", "2", "--json"]) == 0
    ranked = json.loads(capsys.readouterr().out)[0]["top_k"]
    assert {r["class"] for r in ranked} == {"cat", "dog"}


def test_input_normalisation_is_the_one_the_weights_expect(files, tmp_path):
    """A naming that declares its normalisation (as torchvision's googlenet does) wins over
    meta.normalize, which wins over the data's statistics."""
    spec, path, data, ckpt = files
    naming = {"other": {"normalize": {"mean": [0.5], "std": [0.25]},
                        "rules": [{"rename": "^conv", "to": "c"}]}}
    net = {**NET, "meta": {"normalize": {"mean": [0.1], "std": [0.2]}, "naming": naming}}
    renamed = {k.replace("conv", "c", 1) if k.startswith("conv") else k: v
               for k, v in ckpt.items()}
    save_file(renamed, tmp_path / "theirs.safetensors")
    options = {**OPTIONS, "epochs": 1, "freeze": "flatten"}
    for name, weights, expected in (("a", "theirs.safetensors", [[0.5], [0.25]]),
                                    ("b", path, [[0.1], [0.2]])):
        train(net, str(data), out=tmp_path / name, weights=tmp_path / weights, **options)
        info = json.loads((tmp_path / name / "info.json").read_text())
        assert [info["normalize"]["mean"], info["normalize"]["std"]] == expected
        assert info["start"]["naming"] == ("other" if name == "a" else "cnngraph")
        trained = _weights(tmp_path / name)
        assert torch.equal(trained["conv1.weight"], ckpt["conv1.weight"])
