"""The families of issue 12 written by `modern` (squeezenet, shufflenet_v2, regnet, convnext)
against torchvision's own models: every variant's weights named and shaped as torchvision's
(on the meta device: no memory), outputs equal to torchvision's on the same random weights in
eval and train mode (smallest variant of each family, small input), and fp16 ONNX exports that
onnxruntime runs within fp16's tolerance at batch 1 and 3."""
from __future__ import annotations

import functools

import numpy as np
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph.pretrained import rename_keys
from exporters import export_onnx
from torchvision_ref import models

FAMILIES = {
    "squeezenet": ["squeezenet1_0", "squeezenet1_1"],
    "shufflenet_v2": ["shufflenet_v2_x0_5", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5",
                      "shufflenet_v2_x2_0"],
    "regnet": [f"regnet_{k}_{s}" for k in "xy"
               for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf")],
    "convnext": ["convnext_tiny", "convnext_small", "convnext_base", "convnext_large"],
}
ALL = [name for names in FAMILIES.values() for name in names]
# One network per family for the real arithmetic (regnet_y_400mf: RegNet X's block plus SE).
SMALLEST = ["squeezenet1_1", "shufflenet_v2_x0_5", "regnet_y_400mf", "convnext_tiny"]


@pytest.mark.parametrize("name", ALL)
def test_every_variant_has_torchvisions_weight_names_and_shapes(name, monkeypatch):
    """Our state_dict renamed by the family's `meta.naming.torchvision` is torchvision's, key for
    key and shape for shape (size-1 dimensions aside: a Linear is our 1x1 conv). torchvision's
    RegNet generates its widths with tensors, which the meta device cannot read back: that
    step runs on the CPU."""
    tv = models()
    generate = tv.regnet.BlockParams.from_init_params.__func__

    def on_cpu(cls, *args, **kwargs):
        with torch.device("cpu"):
            return generate(cls, *args, **kwargs)

    monkeypatch.setattr(tv.regnet.BlockParams, "from_init_params", classmethod(on_cpu))
    graph = cnngraph.load(name)
    with torch.device("meta"):
        ours = cnngraph.build(graph).state_dict()
        theirs = getattr(tv, name)().state_dict()
    renamed = rename_keys(graph, graph.meta["naming"]["torchvision"]["rules"], list(ours))
    assert sorted(renamed.values()) == sorted(theirs)
    squeeze = lambda shape: tuple(d for d in shape if d != 1)  # noqa: E731
    assert all(squeeze(ours[k].shape) == squeeze(theirs[renamed[k]].shape) for k in ours)


def randomise(module: torch.nn.Module, seed: int = 0) -> None:
    """Weights away from their initial values (layer scales at 1e-6 would hide the blocks) and
    non-trivial batch norm statistics, so that every tensor matters to the output."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in module.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        for m in module.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.1)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) + 0.5)


@functools.cache
def pair(name: str):
    """(graph at 32x32, our module, torchvision's module): torchvision's with random weights,
    ours carrying them through import_weights. Built once per network for the tests below."""
    tv = models()
    torch.manual_seed(0)
    reference = getattr(tv, name)()
    randomise(reference)
    graph = cnngraph.load(name, input_shape=[3, 32, 32])
    state = cnngraph.import_weights(graph, reference.state_dict())
    assert state.naming == "torchvision"
    ours = cnngraph.build(graph)
    ours.load_state_dict(state)
    return graph, ours, reference


@pytest.mark.parametrize("name", SMALLEST)
def test_outputs_equal_torchvisions_in_eval_and_train_mode(name):
    """The same weights (imported from torchvision's state_dict), input and seed: the same
    logits in eval mode, and in train mode (batch statistics, dropout and stochastic depth
    drawing the same random numbers in the same order)."""
    _, ours, reference = pair(name)
    x = torch.randn(2, 3, 32, 32)
    for train in (False, True):
        ours.train(train)
        reference.train(train)
        with torch.no_grad():
            torch.manual_seed(1)
            expected = reference(x)
            torch.manual_seed(1)
            got = ours(x)
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-4 * expected.abs().max())


@pytest.mark.parametrize("name", SMALLEST)
def test_fp16_export_runs_within_tolerance_at_batch_1_and_3(name, tmp_path):
    graph, module, _ = pair(name)
    module.eval()
    export_onnx(graph, module, tmp_path / "half.onnx", fp16=True)
    session = ort.InferenceSession(str(tmp_path / "half.onnx"),
                                   providers=["CPUExecutionProvider"])
    x = np.random.default_rng(0).standard_normal((3, 3, 32, 32), dtype=np.float32)
    with torch.no_grad():
        expected = module(torch.from_numpy(x)).numpy()
    for batch in (1, 3):
        (got,) = session.run(None, {"input": x[:batch]})
        error = np.max(np.abs(got - expected[:batch])) / np.max(np.abs(expected[:batch]))
        assert error < 1e-2, (batch, error)


@pytest.mark.parametrize("name", ["squeezenet1_1", "shufflenet_v2_x0_5", "regnet_y_400mf"])
def test_fresh_weights_are_drawn_as_torchvisions(name):
    """`meta.init` against torchvision's own initialisation, tensor by tensor under the family's
    naming: constants equal, and every random tensor of 1,000 or more values with torchvision's
    spread (std within 10 %)."""
    tv = models()
    graph = cnngraph.load(name, input_shape=[3, 32, 32])
    torch.manual_seed(0)
    ours = cnngraph.build(graph).state_dict()
    theirs = getattr(tv, name)().state_dict()
    renamed = rename_keys(graph, graph.meta["naming"]["torchvision"]["rules"], list(ours))
    for key, value in ours.items():
        if not value.is_floating_point() or "running" in key:
            continue
        expected = theirs[renamed[key]].reshape(value.shape)
        if expected.numel() == 1 or expected.std() == 0:  # a constant (batch norm 1 / 0, biases 0)
            assert torch.equal(value, expected), key
        elif value.numel() >= 1000:  # enough draws for the std to be within 10 % (3 % error)
            assert value.std() == pytest.approx(expected.std(), rel=0.1), key
