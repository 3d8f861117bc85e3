"""Every user error gives one SpecError naming file:line, the layer path and the fix; each case
is a one-line edit of a valid spec, checked for its intended message."""
from __future__ import annotations

import re

import pytest

import cnngraph
from cnngraph import SpecError

BASE = """\
name: errors
input: [3, 32, 32]
params:
  width: 8
blocks:
  unit:
    params: {out: required, stride: 1}
    layers:
      - {name: conv1, op: conv2d, out: $out, kernel: 3, stride: $stride, padding: 1}
      - {name: relu, op: relu}
  stage:
    params: {out: required}
    layers:
      - {name: block1, block: unit, args: {out: $out, stride: 2}}
      - {name: block2, block: unit, args: {out: $out}}
layers:
  - {name: stage1, block: stage, args: {out: $width}}
  - {name: stage2, block: stage, args: {out: 16}}
  - {name: stage3, block: stage, args: {out: 32}}
  - {name: pool, op: global_avg_pool2d}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: 10}
"""


def test_the_base_spec_is_valid():
    g = cnngraph.load(__import__("yaml").safe_load(BASE))
    assert g["stage3.block2.relu"].shape == ("N", 32, 4, 4)


# case: (text to replace, replacement, layer path in the message, pattern of the reason)
CASES = {
    "unknown op": ("{name: relu, op: relu}", "{name: relu, op: rleu}", "stage1.block1.relu",
                   r"unknown op 'rleu' \(did you mean 'relu'\?\): `cnngraph ops` lists"),
    "unknown attribute": ("kernel: 3, stride: $stride", "kernal: 3, stride: $stride",
                          "stage1.block1.conv1",
                          r"unknown attribute 'kernal' for conv2d \(did you mean 'kernel'\?\)"),
    "missing required attribute": ("out: $out, kernel: 3,", "kernel: 3,", "stage1.block1.conv1",
                                   r"conv2d needs attribute 'out' .*: add `out: \.\.\.`"),
    "missing name": ("{name: relu, op: relu}", "{op: relu}", "stage1.block1",
                     r"layer without `name`: add `name: \.\.\.`"),
    "duplicate name": ("{name: relu, op: relu}", "{name: conv1, op: relu}",
                       "stage1.block1.conv1", r"duplicate name 'conv1'.*rename one"),
    "cycle": ("{name: pool, op: global_avg_pool2d}",
              "{name: pool, op: global_avg_pool2d, inputs: [fc]}", "pool",
              r"cycle: pool -> flat -> fc -> pool: .*fix the `inputs`"),
    "dangling input": ("{name: flat, op: flatten}", "{name: flat, op: flatten, inputs: [poll]}",
                       "flat", r"no layer or input named 'poll' here \(did you mean 'pool'\?\)"),
    "dangling input in a block": ("{name: relu, op: relu}",
                                  "{name: relu, op: relu, inputs: [conv]}", "stage1.block1.relu",
                                  r"no layer or input named 'conv' .*did you mean 'conv1'"),
    "concat of different spatial sizes": (
        "{name: pool, op: global_avg_pool2d}",
        "{name: pool, op: concat, inputs: [stage2, stage3]}", "pool",
        r"concat.*\(N,16,8,8\).*\(N,32,4,4\)"),
    "add of different channel counts": (
        "{name: stage3, block: stage, args: {out: 32}}",
        "{name: stage3, op: add, inputs: [stage2, stage2x]}\n"
        "  - {name: stage2x, op: conv2d, out: 12, kernel: 1, inputs: [stage2]}", "stage3",
        r"add needs shapes that broadcast, got \(N,16,8,8\) and \(N,12,8,8\) \(dimension 1: 16 "
        r"against 12\)"),
    "groups not dividing channels": ("padding: 1}", "padding: 1, groups: 3}",
                                     "stage1.block1.conv1", r"groups 3 does not divide"),
    "kernel larger than the padded input": (
        "{name: pool, op: global_avg_pool2d}", "{name: pool, op: max_pool2d, kernel: 7}", "pool",
        r"max_pool2d kernel 7 is larger than the padded input 4x4"),
    "unknown block": ("block: stage, args: {out: 16}", "block: stag, args: {out: 16}", "stage2",
                      r"unknown block 'stag' \(did you mean 'stage'\?\)"),
    "missing block parameter": ("args: {out: 16}", "args: {}", "stage2",
                                r"block 'stage' needs parameter 'out': add it to `args`"),
    "unknown block parameter": ("args: {out: 16}", "args: {out: 16, with: 2}", "stage2",
                                r"block 'stage' has no parameter 'with'; its parameters: out"),
    "bad expression": ("args: {out: $width}", 'args: {out: "${width * }"}', "stage1",
                       r"bad expression '\$\{width \* \}'"),
    "unsafe expression": ("args: {out: $width}", 'args: {out: "${width.__class__}"}', "stage1",
                          r"'width.__class__' is not allowed"),
    "unknown parameter": ("args: {out: $width}", "args: {out: $widht}", "stage1",
                          r"unknown parameter 'widht': did you mean 'width'\?"),
    "bad attribute value": ("kernel: 3, stride: $stride", "kernel: [3, 3, 3], stride: $stride",
                            "stage1.block1.conv1",
                            r"attribute 'kernel' of conv2d: expected an integer or a list of 2"),
    "too few inputs": ("{name: flat, op: flatten}", "{name: flat, op: add}", "flat",
                       r"add takes at least 2 input\(s\), got 1"),
    "when is not a bool": ("{name: relu, op: relu}", "{name: relu, op: relu, when: 1}",
                           "stage1.block1.relu", r"`when` must be true or false"),
}


def line_of(text: str, needle: str) -> int:
    return next(i for i, line in enumerate(text.splitlines(), 1) if needle in line)


@pytest.mark.parametrize("case", sorted(CASES))
def test_error_names_file_line_layer_and_fix(case, tmp_path):
    old, new, path, reason = CASES[case]
    assert BASE.count(old) >= 1
    text = BASE.replace(old, new, 1)
    file = tmp_path / "net.yaml"
    file.write_text(text)
    with pytest.raises(SpecError) as err:
        cnngraph.load(file)
    message = str(err.value)
    line = line_of(text, new.splitlines()[0])
    assert message.startswith(f"{file}:{line}: layer '{path}': "), message
    assert re.search(reason, message), message
    assert "\n" not in message and "Traceback" not in message
    assert (err.value.file, err.value.line, err.value.path) == (str(file), line, path)


def test_yaml_syntax_error_names_the_line(tmp_path):
    file = tmp_path / "net.yaml"
    file.write_text(BASE.replace("  - {name: pool, op: global_avg_pool2d}",
                                 "  - {name: pool, op: global_avg_pool2d"))
    with pytest.raises(SpecError, match=rf"^{re.escape(str(file))}:21: YAML syntax error: .*"
                                        r"\(from line 20\): fix the syntax here"):
        cnngraph.load(file)


def test_json_syntax_error_names_the_line(tmp_path):
    file = tmp_path / "net.json"
    file.write_text('{\n  "name": "x",\n  "input": [1, 4, 4]\n  "layers": []\n}\n')
    with pytest.raises(SpecError, match=rf"^{re.escape(str(file))}:4: JSON syntax error: "
                                        "Expecting ',' delimiter"):
        cnngraph.load(file)


def test_missing_file_and_unknown_zoo_name():
    with pytest.raises(SpecError, match=r"^nowhere/net\.yaml: no such file: check the path"):
        cnngraph.load("nowhere/net.yaml")
    with pytest.raises(SpecError, match=r"'resnet5' is neither a spec file nor a zoo model "
                                        r"\(did you mean 'resnet50'\?\)"):
        cnngraph.load("resnet5")


def test_unknown_variant_and_top_level_key():
    with pytest.raises(SpecError, match=r"unknown variant 'resnet51' \(did you mean "
                                        r"'resnet50'\?\)"):
        cnngraph.load("resnet18", variant="resnet51")
    with pytest.raises(SpecError, match=r"unknown top-level key 'layer' \(did you mean "
                                        r"'layers'\?\)"):
        cnngraph.load({"name": "x", "input": [1, 4, 4], "layer": []})


def test_a_block_cannot_contain_itself():
    spec = {"name": "x", "input": [1, 4, 4],
            "blocks": {"a": {"layers": [{"name": "inner", "block": "a"}]}},
            "layers": [{"name": "outer", "block": "a"}]}
    with pytest.raises(SpecError, match=r"layer 'outer.inner': block 'a' instantiates itself"):
        cnngraph.load(spec)


def test_duplicate_json_keys_are_refused(tmp_path):
    file = tmp_path / "net.json"
    file.write_text('{"name": "x", "input": [1, 4, 4], "name": "y", "layers": []}')
    with pytest.raises(SpecError, match=r"net.json: duplicate key 'name': remove one of them"):
        cnngraph.load(file)


SMALL = {"name": "t", "input": [1, 8, 8],
         "layers": [{"name": "c", "op": "conv2d", "out": 4, "kernel": 3},
                    {"name": "p", "op": "global_avg_pool2d"}, {"name": "f", "op": "flatten"},
                    {"name": "fc", "op": "linear", "out": 3}]}

# case: (keys replacing SMALL's, pattern of the one-line message)
SPEC_CASES = {
    "meta not a mapping": ({"meta": 3}, r"^`meta` must be a mapping, got 3"),
    "normalize length": ({"meta": {"normalize": {"mean": [0.5, 0.5], "std": [1]}}},
                         r"`meta.normalize.mean` .* one per input channel \(1\) or one for all"),
    "normalize std zero": ({"meta": {"normalize": {"mean": [0.5], "std": [0]}}},
                           r"`meta.normalize.std` must be > 0"),
    "classes width": ({"meta": {"classes": ["a", "b"]}},
                      r"`meta.classes` has 2 names but the output 'fc' has 3 classes: give 3"),
    "classes not strings": ({"meta": {"classes": [0, 1, 2]}}, r"list of class names \(strings\)"),
    "no inference output": ({"outputs": [{"name": "o", "from": "fc", "phase": "train"}]},
                            r"no output is active in inference"),
    "no training output": ({"outputs": [{"name": "o", "from": "fc", "phase": "inference"}]},
                           r"no output is active in training"),
    "negative loss weight": ({"outputs": [{"name": "fc", "loss_weight": -1}]},
                             r"output 'fc': loss_weight must be a number >= 0, got -1"),
    "name not a string": ({"name": 5}, r"`name` must be a non-empty printable string of at most 100 characters .*, got 5"),
    "layers empty": ({"layers": []}, r"`layers` is an empty list: add at least one layer"),
    "layers not a list": ({"layers": {"c": 1}}, r"`layers` must be a list of layers .*got a dict"),
    "huge repeat": ({"layers": [{"name": "r", "op": "relu", "repeat": 10**8}]},
                    r"layer 'r': the spec expands to more than 100,000 layers"),
    "nested repeats": ({"blocks": {"a": {"layers": [{"name": "r", "op": "relu", "repeat": 1000}]},
                                   "b": {"layers": [{"name": "x", "block": "a", "repeat": 1000}]}},
                        "layers": [{"name": "s", "block": "b", "repeat": 1000}]},
                       r"layer 's.0.x': the spec expands to more than 100,000 layers"),
    "integer division": ({"params": {"w": 8},
                          "layers": [{"name": "c", "op": "conv2d", "out": "${w / 3}", "kernel": 1}]},
                         r"expected an integer, got 2\.6+5 \(from '\$\{w / 3\}'\): use // for"),
    "division by zero": ({"params": {"w": 8, "d": "${w // 0}"}},
                         r"bad expression '\$\{w // 0\}': division by zero: make the divisor"),
    "syntax": ({"params": {"w": "${8 *}"}}, r"invalid syntax: write a complete expression"),
}


@pytest.mark.parametrize("case", sorted(SPEC_CASES))
def test_spec_error_says_what_is_wrong(case):
    keys, reason = SPEC_CASES[case]
    with pytest.raises(SpecError) as err:
        cnngraph.load({**SMALL, **keys})
    assert re.search(reason, str(err.value)) and "\n" not in str(err.value), str(err.value)


def test_meta_error_names_the_line(tmp_path):
    file = tmp_path / "net.yaml"
    file.write_text("name: t\ninput: [1, 8, 8]\nmeta: 3\nlayers:\n  - {name: r, op: relu}\n")
    with pytest.raises(SpecError, match=rf"^{re.escape(str(file))}:3: `meta` must be a mapping"):
        cnngraph.load(file)


def test_input_shape_sizes_and_the_batch_must_be_positive():
    with pytest.raises(cnngraph.errors.InputError, match=r"the batch too, must be an integer >= 1"):
        cnngraph.load(SMALL, input_shape=[0, 1, 16, 16])


def test_zoo_name_and_a_different_variant_disagree():
    with pytest.raises(SpecError, match=r"'resnet18' already picks variant 'resnet18', not "
                                        r"'resnet50': load 'resnet50' by name"):
        cnngraph.load("resnet18", variant="resnet50")


def test_spec_suffixes_are_case_insensitive(tmp_path):
    file = tmp_path / "G.YAML"
    file.write_text("name: g\ninput: [2, 4, 4]\nlayers:\n  - {name: c, op: conv2d, out: 3, "
                    "kernel: 1}\n")
    assert cnngraph.load(file).params == 2 * 3 + 3  # 1x1 conv: in*out weights + out biases
