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
        r"add needs equal shapes, got \(N,16,8,8\) and \(N,12,8,8\)"),
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
