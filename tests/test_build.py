"""The PyTorch builder on small specs (and hand-made graphs for layouts a spec cannot write):
module hierarchy and state_dict keys, parameter counts, train/eval outputs, torch.compile,
torch.export and weight round-trips."""
from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load_file, save_file

import cnngraph
from cnngraph import build
from cnngraph.graph import Graph, Node, Output
from cnngraph.ops import REGISTRY, REQUIRED

SPEC = {
    "name": "test_net",
    "inputs": {"image": [3, 16, 16]},
    "blocks": {
        "residual": {"layers": [
            {"name": "conv", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1, "bias": False},
            {"name": "bn", "op": "batch_norm"},
            {"name": "add", "op": "add", "inputs": ["bn", "input"]},
            {"name": "act", "op": "relu"}]},
        "head": {"layers": [
            {"name": "pool", "op": "avg_pool2d", "kernel": 4},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out": 5}]},
    },
    "layers": [
        {"name": "stem", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1},
        {"name": "stem_act", "op": "relu"},
        {"name": "stage", "block": "residual", "repeat": 2},
        {"name": "pool", "op": "global_avg_pool2d"},
        {"name": "flat", "op": "flatten"},
        {"name": "drop", "op": "dropout"},
        {"name": "fc", "op": "linear", "out": 5},
        {"name": "aux", "block": "head", "inputs": ["stem_act"]},
    ],
    "outputs": ["fc", {"name": "aux", "from": "aux", "phase": "train", "loss_weight": 0.3}],
}


def net_with_aux_head() -> Graph:
    """stem -> two residual blocks (`stage.0`, `stage.1`) -> main head `fc`; an auxiliary head
    `aux` on the stem that only exists in training."""
    return cnngraph.load(SPEC)


def layer(name: str, op: str, inputs=(), **given) -> Node:
    attrs = {}
    for key, attr in REGISTRY[op].attrs.items():
        value = given.get(key, attr.default)
        attrs[key] = None if value is REQUIRED else attr.normalize(value)
    return Node(name, op, list(inputs), attrs)


def hand_built(nodes: list[Node], outputs: list[Output]) -> Graph:
    """A Graph put together by hand (for layouts a spec cannot write), shapes inferred."""
    g = Graph("hand_built", {n.name: n for n in nodes}, outputs)
    for n in g:
        rules, ins = REGISTRY[n.op], [g[i].shape for i in n.inputs]
        n.shape = rules.infer(n, ins)
        n.stats = {"params": rules.params(n, ins)}
    return g


def test_submodules_follow_the_layer_names():
    model = build(net_with_aux_head())
    assert list(model.state_dict()) == [
        "stem.weight", "stem.bias",
        "stage.0.conv.weight", "stage.0.bn.weight", "stage.0.bn.bias", "stage.0.bn.running_mean",
        "stage.0.bn.running_var", "stage.0.bn.num_batches_tracked",
        "stage.1.conv.weight", "stage.1.bn.weight", "stage.1.bn.bias", "stage.1.bn.running_mean",
        "stage.1.bn.running_var", "stage.1.bn.num_batches_tracked",
        "fc.weight", "fc.bias", "aux.fc.weight", "aux.fc.bias"]
    assert 'getattr(self.stage, "0").conv(' in model.code.replace("'", '"')
    assert "def forward(self, image)" in model.code


def test_parameter_count_equals_the_graph():
    g = net_with_aux_head()
    model = build(g)
    # stem 8*27+8, two 3x3 8->8 convs without bias + BN, fc 8*5+5, aux fc 8*4*4*5+5 (hand count)
    expected = 224 + 2 * (576 + 16) + 45 + 645
    assert sum(p.numel() for p in model.parameters()) == g.params == expected


def test_train_and_eval_switch_the_outputs():
    model = build(net_with_aux_head())
    calls = []
    model.aux.fc.register_forward_hook(lambda *_: calls.append("aux"))
    x = torch.randn(2, 3, 16, 16)
    out = model.train()(x)
    assert set(out) == {"fc", "aux"} and out["fc"].shape == out["aux"].shape == (2, 5)
    assert calls == ["aux"]
    y = model.eval()(x)
    assert isinstance(y, torch.Tensor) and y.shape == (2, 5)
    assert calls == ["aux"]                     # eval did not compute the auxiliary head


def test_computes_the_same_function_as_a_hand_written_forward():
    model = build(net_with_aux_head()).eval()
    x = torch.randn(2, 3, 16, 16)
    m = model
    h = torch.relu(m.stem(x))
    for block in (getattr(m.stage, "0"), getattr(m.stage, "1")):
        h = torch.relu(block.bn(block.conv(h)) + h)
    expected = m.fc(h.mean((2, 3)))
    assert torch.allclose(model(x), expected, atol=1e-5)


def test_relu_overwrites_only_a_fresh_tensor_nobody_else_reads():
    g = hand_built([layer("x", "input", shape=[3, 8, 8]),
                    layer("conv", "conv2d", ["x"], out=4, kernel=3),
                    layer("act", "relu", ["conv"]),              # conv read only here
                    layer("act2", "relu", ["act"]),              # a relu's output: no
                    layer("skip", "add", ["act2", "act2"]),
                    layer("act3", "relu", ["skip"]),             # skip read only here
                    layer("flat", "flatten", ["act3"]),
                    layer("act4", "relu", ["flat"]),             # a view of act3: no
                    layer("fc", "linear", ["act4"], out=2),
                    layer("act5", "relu", ["fc"])],              # fc is an output: no
                   [Output("fc", "fc"), Output("act5", "act5")])
    code = build(g).code
    assert "act = relu_(conv)" in code and "act3 = relu_(skip)" in code
    assert "act2 = relu(act)" in code and "act4 = relu(flat)" in code
    assert "act5 = relu(fc)" in code


def test_training_gradients_match_a_hand_written_forward():
    model = build(net_with_aux_head()).train()
    x = torch.randn(4, 3, 16, 16)
    torch.manual_seed(0)                 # the same dropout mask in both runs
    out = model(x)
    (out["fc"].sum() + out["aux"].sum()).backward()
    built_grads = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad()
    m = model
    torch.manual_seed(0)
    stem = torch.relu(m.stem(x))
    h = stem
    for block in (getattr(m.stage, "0"), getattr(m.stage, "1")):
        h = torch.relu(block.bn(block.conv(h)) + h)
    main = m.fc(m.drop(h.mean((2, 3))))
    aux = m.aux.fc(torch.nn.functional.avg_pool2d(stem, 4).flatten(1))
    (main.sum() + aux.sum()).backward()
    for name, p in model.named_parameters():
        assert torch.allclose(p.grad, built_grads[name], atol=1e-5), name


def test_state_dict_round_trip_through_safetensors(tmp_path):
    g = net_with_aux_head()
    first = build(g)
    first.train()(torch.randn(4, 3, 16, 16))      # move the BN running statistics
    save_file(first.state_dict(), tmp_path / "w.safetensors")
    second = build(g)
    second.load_state_dict(load_file(tmp_path / "w.safetensors"))
    x = torch.randn(2, 3, 16, 16)
    assert torch.equal(first.eval()(x), second.eval()(x))
    twin = copy.deepcopy(first)
    assert torch.equal(twin(x), first(x))


def test_torch_compile_traces_without_graph_breaks():
    model = build(net_with_aux_head()).eval()
    x = torch.randn(2, 3, 16, 16)
    compiled = torch.compile(model, backend="eager", fullgraph=True)
    assert torch.allclose(compiled(x), model(x), atol=1e-6)


def test_torch_export_in_eval_mode():
    model = build(net_with_aux_head()).eval()
    x = torch.randn(2, 3, 16, 16)
    exported = torch.export.export(model, (x,))
    assert [s.arg.name for s in exported.graph_signature.input_specs
            if s.kind.name == "USER_INPUT"] == ["image"]
    assert torch.allclose(exported.module()(x), model(x), atol=1e-6)


def test_lenet5_with_its_table_conv_and_subsampling():
    g = cnngraph.load("lenet5")
    model = build(g)
    # C1..F6 hold LeNet-5's 60,000; the 10-way linear output adds 84*10 + 10.
    assert sum(p.numel() for p in model.parameters()) == g.params == 60_850
    assert model(torch.randn(3, 1, 32, 32)).shape == (3, 10)


def test_several_inputs_and_outputs_in_both_modes():
    g = cnngraph.load({"name": "two", "inputs": {"left": [4], "right": [4]},
                       "layers": [{"name": "sum", "op": "add", "inputs": ["left", "right"]},
                                  {"name": "prod", "op": "mul", "inputs": ["left", "right"]}],
                       "outputs": ["sum", "prod"]})
    model = build(g)
    a, b = torch.randn(2, 4), torch.randn(2, 4)
    for mode in (True, False):
        out = model.train(mode)(a, b)
        assert torch.equal(out["sum"], a + b) and torch.equal(out["prod"], a * b)
    assert "def forward(self, left, right)" in model.code


def test_a_layer_may_also_name_a_block():
    # `head.proj` comes before the layer `head` itself: both end up under `head`.
    g = hand_built([layer("x", "input", shape=[6]),
               layer("head.proj", "linear", ["x"], out=6),
               layer("head", "linear", ["head.proj"], out=3)],
              [Output("head", "head")])
    model = build(g)
    assert list(model.state_dict()) == ["head.weight", "head.bias", "head.proj.weight",
                                        "head.proj.bias"]
    x = torch.randn(2, 6)
    assert torch.allclose(model(x), model.head(model.head.proj(x)))


def test_a_layer_named_like_a_module_attribute_is_refused():
    g = hand_built([layer("x", "input", shape=[6]), layer("forward", "linear", ["x"], out=3)],
              [Output("forward", "forward")])
    with pytest.raises(ValueError, match="layer 'forward': the name 'forward' is taken"):
        build(g)


# --- meta.init: each family initialised as its reference (torchvision) does ----------------------
def _conv_weight_std_over_kaiming(module, mode: str) -> float:
    """The std of every conv weight divided by its Kaiming std sqrt(2 / fan), pooled: 1 when
    each layer was drawn from normal(0, sqrt(2 / fan)) with the fan `mode` counts."""
    scaled = []
    for m in module.modules():
        if isinstance(m, torch.nn.Conv2d):
            out_c, in_c, kh, kw = m.weight.shape
            fan = (in_c if mode == "fan_in" else out_c) * kh * kw
            scaled.append(m.weight.detach().flatten() / (2.0 / fan) ** 0.5)
    return float(torch.cat(scaled).std())


def test_densenet_starts_as_torchvision_does_with_bounded_eval_logits():
    torch.manual_seed(0)
    graph = cnngraph.load("densenet121", input_shape=[3, 64, 64])
    module = build(graph).eval()
    with torch.no_grad():
        logits = module(torch.randn(2, 3, 64, 64))
    assert float(logits.abs().max()) < 100  # fan-out convolutions gave ~3e7 here
    assert abs(_conv_weight_std_over_kaiming(module, "fan_in") - 1) < 0.01
    norms = [m for m in module.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert len(norms) == 121  # 120 convolutions (each after one) and norm5
    assert all(bool((m.weight == 1).all() and (m.bias == 0).all()) for m in norms)
    assert module.classifier.bias.tolist() == [0.0] * 1000


def test_resnet_convolutions_are_kaiming_fan_out():
    torch.manual_seed(0)
    module = build(cnngraph.load("resnet18", input_shape=[3, 32, 32]))
    assert abs(_conv_weight_std_over_kaiming(module, "fan_out") - 1) < 0.01
    # fc keeps PyTorch's default: uniform(+-1/sqrt(512)), whose std is 1/sqrt(3 * 512)
    assert float(module.fc.weight.detach().std()) == pytest.approx((3 * 512) ** -0.5, rel=0.01)
    assert float(module.fc.weight.detach().abs().max()) <= 512 ** -0.5


def test_init_rules_by_op_and_by_layer_pattern():
    spec = {"name": "init_net", "input": [2, 6, 6],
            "meta": {"init": {"conv2d": {"weight": {"normal": 0.5}, "bias": 0},
                              "layers": {"c2*": {"bias": 1.5}}}},
            "layers": [{"name": "c1", "op": "conv2d", "out": 400, "kernel": 3},
                       {"name": "c2a", "op": "conv2d", "out": 3, "kernel": 1}]}
    torch.manual_seed(0)
    module = build(cnngraph.load(spec))
    assert float(module.c1.weight.detach().std()) == pytest.approx(0.5, rel=0.03)
    assert module.c1.bias.tolist() == [0.0] * 400
    assert module.c2a.bias.tolist() == [1.5] * 3


@pytest.mark.parametrize("init, message", [
    ("{conv2d: {weight: xavier}}",
     r"`meta.init.conv2d.weight`: unknown rule 'xavier': give a number, one of "
     r"kaiming_normal_fan_in"),
    ("{conv2D: {weight: 1}}", r"`meta.init.conv2D`: not an op with parameters"),
    ("{conv2d: {scale: 1}}", r"`meta.init.conv2d.scale`: the parameters are weight and bias"),
    ("{conv2d: {weight: {normal: -1}}}", r"the std must be a number in \(0, 1e\+06\]"),
    ("{conv2d: {weight: {normal: 1.0e+300}}}", r"the std must be a number in .*, got 1e"),
    ("{conv2d: {bias: kaiming_normal_fan_in}}", r"is for weights"),
    ("{batch_norm: {weight: pytorch}}", r"give a number for a batch norm"),
    ("{layers: {nothing*: {bias: 0}}}", r"'nothing\*' names no layer"),
    ("{conv2d: {weight: .nan}}", r"`meta.init.conv2d.weight`: nan is not a finite number"),
    ("{conv2d: {weight: 9999999999}}", r"unknown rule 9999999999: give"),  # past 1e6
    ("{conv2d: {weight: " + "x" * 400 + "}}", r"unknown rule 'x{56}\.\.\.: give"),
    ("kaiming", r"`meta.init` must map op names"),
], ids=lambda value: value[:40] if isinstance(value, str) else None)
def test_init_errors_are_one_line_spec_errors_at_their_line(tmp_path, init, message):
    path = tmp_path / "bad.yaml"
    path.write_text(f"name: bad\ninput: [1, 8, 8]\nmeta:\n  init: {init}\nlayers:\n"
                    "  - {name: c, op: conv2d, out: 2, kernel: 3}\n"
                    "  - {name: bn, op: batch_norm}\n")
    with pytest.raises(cnngraph.SpecError, match=r"bad.yaml:4: .*" + message) as err:
        cnngraph.load(path)
    assert "\n" not in str(err.value) and len(str(err.value)) < 400
