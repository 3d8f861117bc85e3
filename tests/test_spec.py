"""The spec format and the front end: expansion (blocks, repeat, first, when, params, variants),
expressions, shape and statistics inference against closed-form formulas, receptive fields
against hand computations, and lossless YAML <-> JSON <-> dict round trips."""
from __future__ import annotations

import json

import pytest
import yaml

import cnngraph
from cnngraph import SpecBuilder, layer, save_spec, spec, zoo
from cnngraph.expr import ExprError, evaluate, resolve


def out_size(n, k, s=1, p=0, d=1):
    """The standard output length: floor((n + 2p - d(k-1) - 1)/s) + 1."""
    return (n + 2 * p - d * (k - 1) - 1) // s + 1


def same_network(a: cnngraph.Graph, b: cnngraph.Graph) -> bool:
    def key(g):
        return ([(n.name, n.op, n.inputs, n.attrs, n.shape, n.stats) for n in g],
                g.outputs, g.name)
    return key(a) == key(b)


CHAIN = {
    "name": "chain",
    "input": [3, 32, 32],
    "layers": [
        {"name": "conv1", "op": "conv2d", "out": 6, "kernel": 5},
        {"name": "relu1", "op": "relu"},
        {"name": "pool1", "op": "max_pool2d", "kernel": 2},
        {"name": "conv2", "op": "conv2d", "out": 16, "kernel": 3, "stride": 2, "padding": 1,
         "dilation": 2, "groups": 2, "bias": False},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 10},
    ],
}


def test_chain_shapes_params_macs_follow_the_formulas():
    g = cnngraph.load(CHAIN)
    assert list(g.nodes) == ["input", "conv1", "relu1", "pool1", "conv2", "flat", "fc"]
    h1 = out_size(32, 5)                       # 28
    h2 = out_size(h1, 2, 2)                    # 14
    h3 = out_size(h2, 3, 2, 1, 2)              # (14 + 2 - 4 - 1)//2 + 1 = 6
    assert g["conv1"].shape == ("N", 6, h1, h1)
    assert g["pool1"].shape == ("N", 6, h2, h2)
    assert g["conv2"].shape == ("N", 16, h3, h3)
    assert g["fc"].shape == ("N", 10)
    assert g["conv1"].stats["params"] == 6 * (3 * 5 * 5 + 1)
    assert g["conv2"].stats["params"] == 16 * (6 // 2) * 3 * 3                 # no bias
    assert g["fc"].stats["params"] == 16 * h3 * h3 * 10 + 10
    assert g["conv1"].stats["macs"] == 6 * h1 * h1 * 3 * 25
    assert g["conv2"].stats["macs"] == 16 * h3 * h3 * 3 * 9
    assert g.params == sum(n.stats["params"] for n in g) == 456 + 432 + 5770
    assert [o.name for o in g.outputs] == ["fc"]                              # default output


def test_attributes_are_normalised_with_defaults_filled_in():
    g = cnngraph.load(CHAIN)
    assert g["conv1"].attrs == {"out": 6, "kernel": (5, 5), "stride": (1, 1),
                                "padding": (0, 0, 0, 0), "dilation": (1, 1), "groups": 1,
                                "bias": True, "table": None}
    assert g["conv2"].attrs["padding"] == (1, 1, 1, 1)
    assert g["input"].attrs == {"shape": (3, 32, 32)}


def test_receptive_field_and_jump_by_hand():
    g = cnngraph.load(CHAIN)
    # conv1 k5: 1 + 4*1 = 5, jump 1; pool1 k2 s2: 5 + 1*1 = 6, jump 2;
    # conv2 k3 d2 (effective 5) s2: 6 + 4*2 = 14, jump 4; flatten over the 6x6 map: 14 + 5*4 = 34
    assert [g[n].stats["receptive_field"] for n in ("conv1", "pool1", "conv2", "flat")] == [
        (5, 5), (6, 6), (14, 14), (34, 34)]
    assert g["conv2"].stats["jump"] == (4, 4)


def test_lenet5_receptive_field():
    g = cnngraph.load("lenet5")
    # c1 5x5: rf 5, jump 1. s2 2x2/2: 5 + (2-1)*1 = 6, jump 2. c3 5x5: 6 + 4*2 = 14.
    # s4 2x2/2: 14 + 1*2 = 16, jump 4. c5 5x5: 16 + 4*4 = 32 -- the whole 32x32 input.
    rf = {n: g[n].stats["receptive_field"][0] for n in ("c1", "s2", "c3", "s4", "c5", "output")}
    assert rf == {"c1": 5, "s2": 6, "c3": 14, "s4": 16, "c5": 32, "output": 32}
    assert g["s4"].stats["jump"] == (4, 4)


def test_alexnet_receptive_field():
    g = cnngraph.load("alexnet")
    # conv1 11/4: 11, jump 4. pool1 3/2: 11 + 2*4 = 19, jump 8. conv2 5: 19 + 4*8 = 51.
    # pool2 3/2: 51 + 2*8 = 67, jump 16. conv3, conv4, conv5 3x3: 67 + 3*2*16 = 163.
    # pool5 3/2: 163 + 2*16 = 195, jump 32.
    rf = {n: g[n].stats["receptive_field"][0] for n in ("conv1", "pool1", "conv2", "pool2",
                                                        "conv3", "conv4", "conv5", "pool5")}
    assert rf == {"conv1": 11, "pool1": 19, "conv2": 51, "pool2": 67, "conv3": 99,
                  "conv4": 131, "conv5": 163, "pool5": 195}
    assert g["pool5"].stats["jump"] == (32, 32)


RESIDUAL = """
name: residual
input: [8, 16, 16]
params:
  width: 8
  depth: 3
variants:
  small: {depth: 2}
  wide: {width: 16}
blocks:
  unit:
    params: {out: required, stride: 1, down: false}
    layers:
      - {name: conv1, op: conv2d, out: $out, kernel: 3, stride: $stride, padding: 1}
      - {name: relu, op: relu}
      - {name: conv2, op: conv2d, out: $out, kernel: 3, padding: 1}
      - {name: proj, op: conv2d, out: $out, kernel: 1, stride: $stride, inputs: [input], when: $down}
      - {name: add, op: add, inputs: [conv2, proj]}
layers:
  - {name: stage, block: unit, repeat: $depth, args: {out: "${width * 2}"}, first: {stride: 2, down: true}}
  - {name: head, op: conv2d, out: "${width + i}", kernel: 1, repeat: 2}
  - {name: tap, op: identity, inputs: [stage]}
outputs:
  - head
  - {name: features, from: tap, phase: train, loss_weight: 0.5}
"""


def test_blocks_repeat_first_and_when_expand_to_full_paths(tmp_path):
    path = tmp_path / "residual.yaml"
    path.write_text(RESIDUAL)
    g = cnngraph.load(path)
    unit = ["conv1", "relu", "conv2", "proj", "add"]
    assert list(g.nodes) == (["input"] + [f"stage.0.{n}" for n in unit]
                             + [f"stage.{i}.{n}" for i in (1, 2) for n in unit if n != "proj"]
                             + ["head.0", "head.1", "tap"])
    # `when: false` makes `proj` an alias of the block input: the previous copy's output
    assert g["stage.1.add"].inputs == ["stage.1.conv2", "stage.0.add"]
    assert g["stage.0.add"].inputs == ["stage.0.conv2", "stage.0.proj"]
    assert g["stage.0.proj"].inputs == ["input"]
    assert g["stage.0.conv1"].attrs["stride"] == (2, 2)         # `first` on copy 0 only
    assert g["stage.1.conv1"].attrs["stride"] == (1, 1)
    assert g["stage.2.add"].shape == ("N", 16, 8, 8)
    assert [g[n].attrs["out"] for n in ("head.0", "head.1")] == [8, 9]   # `i` inside repeat
    assert g["tap"].inputs == ["stage.2.add"]                    # `stage` is the last copy
    assert [(o.name, o.node, o.phase, o.loss_weight) for o in g.outputs] == [
        ("head", "head.1", "both", 1.0), ("features", "tap", "train", 0.5)]
    line = next(i for i, t in enumerate(RESIDUAL.splitlines(), 1) if "name: conv1" in t)
    assert g["stage.0.conv1"].where == f"{path}:{line}"


def test_variants_pick_parameters_and_reload_identically(tmp_path):
    source = yaml.safe_load(RESIDUAL)
    small = cnngraph.load(source, variant="small")
    assert small.name == "small" and small.meta == {"variant": "small"}
    assert "stage.1.add" in small.nodes and "stage.2.add" not in small.nodes
    wide = cnngraph.load(source, variant="wide")
    assert wide["stage.0.conv1"].shape == ("N", 32, 8, 8)
    assert cnngraph.load(source).name == "residual"
    # graph.spec is the source with the choice written in: it loads to the same network
    assert wide.spec == {**source, "variant": "wide"}
    save_spec(wide.spec, tmp_path / "wide.json")
    assert same_network(cnngraph.load(tmp_path / "wide.json"), wide)


def test_zoo_names_are_variants_or_file_stems():
    names = zoo.names()
    assert {"lenet5", "resnet50", "vgg16_bn", "densenet121", "googlenet"} <= set(names)
    assert "resnet" not in names and len(names) == len(set(names))
    assert zoo.path("resnet50").name == "resnet.yaml"
    g = cnngraph.load("resnet34")
    assert (g.name, g.meta["variant"], g.spec["variant"]) == ("resnet34", "resnet34", "resnet34")
    assert g.meta["normalize"]["mean"] == [0.485, 0.456, 0.406]
    assert same_network(cnngraph.load(g.spec), g)


def test_input_shape_override_with_or_without_batch():
    g = cnngraph.load("resnet18", input_shape=(2, 3, 64, 64))
    # stem 64 -> 32 (conv 7/2 p3) -> 16 (pool 3/2 p1) -> stages 16, 8, 4, 2
    assert g["layer4.1.relu2"].shape == ("N", 512, 2, 2)
    assert g.spec["input"] == [3, 64, 64]
    assert same_network(cnngraph.load(g.spec), g)
    assert same_network(cnngraph.load("resnet18", input_shape=[3, 64, 64]), g)
    with pytest.raises(cnngraph.InputError, match="does not fit"):
        cnngraph.load("resnet18", input_shape=[64, 64])


def test_named_inputs_and_forward_references():
    g = cnngraph.load({
        "name": "two", "inputs": {"image": [3, 8, 8], "mask": [1, 8, 8]},
        "layers": [
            {"name": "joined", "op": "concat", "inputs": ["image", "masked"]},
            {"name": "masked", "op": "conv2d", "out": 2, "kernel": 1, "inputs": ["mask"]},
        ]})
    assert list(g.nodes) == ["image", "mask", "masked", "joined"]   # topological order
    assert g["joined"].shape == ("N", 5, 8, 8)


def test_expressions():
    env = {"depths": [3, 4, 6, 3], "block": "basic", "w": 64}
    assert evaluate("depths[2] * 2 + 1", env) == 13
    assert evaluate("1 if block == 'basic' else 4", env) == 1
    assert evaluate("max(depths) // 4 ** 1 - len(depths) % 3", env) == 0
    assert evaluate("not (w > 32 and w < 100) or w in [64]", env) is True
    assert evaluate("int(w / 3)", env) == 21
    assert resolve({"a": ["$w", "${w * 2}", "stage${depths[0]}_${block}"]}, env) == {
        "a": [64, 128, "stage3_basic"]}
    for bad in ("__import__('os')", "w.bit_length()", "(lambda: 1)()", "[x for x in depths]",
                "open('f')", "w ** 1000", "'x' * 10 ** 9", "nope + 1"):
        with pytest.raises(ExprError):
            evaluate(bad, env)


ZOO_FILES = sorted(p.name for p in zoo.FOLDER.glob("*.yaml"))


@pytest.mark.parametrize("file", ZOO_FILES)
def test_yaml_json_dict_round_trips_are_lossless(file, tmp_path):
    text = (zoo.FOLDER / file).read_text()
    data = spec.parse_yaml(text).data
    assert data == yaml.safe_load(text)                 # the line records stay out of the data
    assert json.loads(json.dumps(data)) == data
    save_spec(data, tmp_path / "a.json")
    save_spec(data, tmp_path / "a.yaml")
    assert spec.read(tmp_path / "a.json").data == data
    assert spec.read(tmp_path / "a.yaml").data == data
    from_yaml = cnngraph.load(zoo.FOLDER / file)
    assert same_network(cnngraph.load(tmp_path / "a.json"), from_yaml)
    assert same_network(cnngraph.load(data), from_yaml)


def test_json_errors_have_lines_too(tmp_path):
    path = tmp_path / "net.json"
    bad = json.loads(json.dumps(CHAIN))
    bad["layers"][1]["op"] = "rleu"
    path.write_text(json.dumps(bad, indent=2))
    line = next(i for i, text in enumerate(path.read_text().splitlines(), 1) if "rleu" in text)
    with pytest.raises(cnngraph.SpecError) as err:
        cnngraph.load(path)
    assert str(err.value).startswith(f"{path}:{line - 2}: layer 'relu1': unknown op 'rleu'")


def test_spec_builder_is_the_same_thing_as_the_dict():
    unit = [layer("conv", "conv2d", out="$out", kernel=3, padding=1), layer("relu", "relu")]
    builder = (SpecBuilder("tiny", input=[1, 16, 16])
               .params(width=4)
               .block("unit", unit, params={"out": "required"})
               .layer("stem", "conv2d", out="$width", kernel=3)
               .layer("body", block="unit", args={"out": "${width * 2}"}, repeat=2)
               .layer("pool", "global_avg_pool2d")
               .layer("flat", "flatten")
               .layer("fc", "linear", out=3)
               .output("logits", "fc"))
    expected = {
        "name": "tiny", "input": [1, 16, 16], "params": {"width": 4},
        "blocks": {"unit": {"params": {"out": "required"}, "layers": [
            {"name": "conv", "op": "conv2d", "out": "$out", "kernel": 3, "padding": 1},
            {"name": "relu", "op": "relu"}]}},
        "layers": [
            {"name": "stem", "op": "conv2d", "out": "$width", "kernel": 3},
            {"name": "body", "block": "unit", "args": {"out": "${width * 2}"}, "repeat": 2},
            {"name": "pool", "op": "global_avg_pool2d"},
            {"name": "flat", "op": "flatten"},
            {"name": "fc", "op": "linear", "out": 3}],
        "outputs": [{"name": "logits", "from": "fc"}],
    }
    assert builder.to_dict() == expected
    g = cnngraph.load(builder)
    assert same_network(g, cnngraph.load(expected))
    assert g["body.1.conv"].shape == ("N", 8, 14, 14)
    assert g["body.1.conv"].stats["params"] == 8 * 8 * 9 + 8


def test_duplicate_yaml_keys_are_refused(tmp_path):
    path = tmp_path / "dup.yaml"
    path.write_text("name: a\ninput: [1, 4, 4]\nlayers:\n  - {name: r, op: relu, name: s}\n")
    with pytest.raises(cnngraph.SpecError, match=r"dup.yaml:4: duplicate key 'name'"):
        cnngraph.load(path)
