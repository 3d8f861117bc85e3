"""Hostile and damaged specs (issue 10, "Specs"): each one gives a SpecError of one line that
names the place -- never a Python exception, a recursion error or a hang -- and the largest
spec each limit accepts still loads."""
from __future__ import annotations

import copy
import json

import pytest

import cnngraph
from cnngraph import limits
from cnngraph.cli import main
from cnngraph.errors import CnnGraphError, SpecError

BASE = """\
name: t
input: [3, 8, 8]
params: {w: 4}
layers:
  - {name: conv, op: conv2d, out: $w, kernel: 3}
  - {name: pool, op: global_avg_pool2d}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: 2}
"""
SPEC = {"name": "t", "input": [3, 8, 8], "params": {"w": 4},
        "layers": [{"name": "conv", "op": "conv2d", "out": "$w", "kernel": 3},
                   {"name": "pool", "op": "global_avg_pool2d"},
                   {"name": "flat", "op": "flatten"},
                   {"name": "fc", "op": "linear", "out": 2}]}


def edited(old: str, new: str) -> str:
    assert old in BASE
    return BASE.replace(old, new, 1)


def fails(spec, tmp_path, *words: str, line: int | None = None) -> str:
    """Loads `spec` (YAML text, written to a file, or a dict); the SpecError's message, checked
    to be one line that names each of `words` (and the file's `line`)."""
    if isinstance(spec, str):
        file = tmp_path / "net.yaml"
        file.write_text(spec, encoding="utf-8")
        spec = file
    with pytest.raises(SpecError) as caught:
        cnngraph.load(spec)
    message = str(caught.value)
    assert "\n" not in message and message.isprintable(), message
    for word in words:
        assert word in message, message
    if line is not None:
        assert f"net.yaml:{line}:" in message, message
    return message


def test_the_base_specs_load():
    assert cnngraph.load(SPEC)["fc"].shape == ("N", 2)


# --- numbers past Python's int-string limit, and too large for a float --------------------
def test_a_huge_yaml_integer_is_refused_where_it_is_written(tmp_path):
    fails(edited("{w: 4}", "{w: " + "9" * 6000 + "}"), tmp_path, "out of range", line=3)


def test_a_huge_json_integer_is_refused(tmp_path):
    file = tmp_path / "net.json"
    file.write_text('{"name": "t", "input": [3, 8, 8], "params": {"w": ' + "9" * 6000 + "}}")
    with pytest.raises(SpecError, match="out of range"):
        cnngraph.load(file)


def test_an_expression_stops_at_the_first_integer_out_of_range(tmp_path):
    message = fails(edited("out: $w,", "out: '${((10**64)**64)**2}',"), tmp_path,
                    "integer out of range", "2**63-1", line=5)
    assert "213 bits" in message  # 10**64 has 213 bits: the first power already fails


def test_a_power_tower_fails_at_once(tmp_path):
    fails(edited("{w: 4}", "{w: '${((((9**64)**64)**64)**64)**64}'}"), tmp_path,
          "integer out of range", line=3)


@pytest.mark.parametrize("value", [2**63, -(2**63), 10**30])
def test_integers_from_python_are_bounded_too(value):
    spec = copy.deepcopy(SPEC)
    spec["params"]["w"] = value
    with pytest.raises(SpecError, match=r"`params.w`: integer out of range"):
        cnngraph.load(spec)


def test_a_huge_loss_weight_and_float_attribute_are_refused(tmp_path):
    fails(BASE + "outputs: [{name: fc, loss_weight: " + "1" * 30 + "}]\n", tmp_path,
          "out of range", line=9)
    fails(edited("{name: pool, op: global_avg_pool2d}",
                 "{name: pool, op: leaky_relu, negative_slope: '${2**62 * 4}'}"),
          tmp_path, "out of range", line=6)


def test_sizes_are_bounded_before_shape_code(tmp_path):
    fails(edited("kernel: 3}", "kernel: 3, padding: '${2**62}'}"), tmp_path,
          "attribute 'padding' of conv2d", "<= 100,000", "conv", line=5)
    fails(edited("{name: pool, op: global_avg_pool2d}",
                 "{name: pool, op: adaptive_avg_pool2d, size: '${2**62}'}"),
          tmp_path, "attribute 'size'", "<= 100,000", line=6)
    fails(edited("{name: pool, op: global_avg_pool2d}",
                 "{name: pool, op: adaptive_avg_pool2d, size: [100000, 100000]}"),
          tmp_path, "too large", "elements per sample", "layer 'pool'", line=6)
    fails(edited("[3, 8, 8]", "[3, 8, 3000000000]"), tmp_path, "too large", line=2)
    fails(edited("out: 2}", "out: 2000000000}"), tmp_path, "parameters, more than", "'fc'")


def test_the_largest_adaptive_pool_loads_at_once():
    spec = copy.deepcopy(SPEC)
    spec["input"] = [1, 3, 99_991]  # a prime width: the bins are uneven
    spec["layers"][1] = {"name": "pool", "op": "adaptive_avg_pool2d", "size": [1, 100_000]}
    g = cnngraph.load(spec)
    assert g["pool"].shape == ("N", 4, 1, 100_000)
    # 99,989 columns into 100,000 bins: the widest bin covers 2 columns, the jump n/out
    assert g["pool"].stats["receptive_field"] == (3, 4)


def test_the_receptive_field_saturates_instead_of_overflowing():
    layers = [{"name": "c", "op": "conv2d", "out": 1, "kernel": 3, "stride": 2, "padding": 1,
               "repeat": 80},
              {"name": "up", "op": "conv_transpose2d", "out": 1, "kernel": 2, "stride": 2},
              {"name": "s", "op": "upsample", "scale": 0.5}]
    g = cnngraph.load({"name": "t", "input": [1, 4, 4], "layers": layers})
    assert g["c.79"].stats["jump"] == (2**53, 2**53)
    assert g["s"].shape == ("N", 1, 1, 1)


# --- names ---------------------------------------------------------------------------------
@pytest.mark.parametrize("old, new, words, line", [
    ("name: t\n", "name: t\nvariant: [v]\nvariants: {v: {}}\n", ["variant", "is not a name"], 2),
    ("name: t\n", "name: t\nvariant: 1\nvariants: {v: {}}\n", ["variant 1 is not a name"], 2),
    ("{name: flat, op: flatten}", "{name: flat, block: [1]}", ["block [1] is not a name",
                                                               "'flat'"], 7),
    ("{name: flat, op: flatten}", "{name: [flat], op: flatten}", ["layer name ['flat']"], 7),
    ("{w: 4}", "{w: 4, 1: 2}", ["key 1 is not a string"], 3),
    ("{w: 4}", "{w: 4, yes: 2}", ["key True is not a string", "quote it"], 3),
    ("{w: 4}", "{w: 4, ? [a, b] : 2}", ["key a list is not a string"], 3),
    ("{w: 4}", "{w: 4, ? {a: 1} : 2}", ["key a mapping is not a string"], 3),
])
def test_names_must_be_strings(tmp_path, old, new, words, line):
    fails(edited(old, new), tmp_path, *words, line=line)


def test_output_from_must_be_a_name(tmp_path):
    fails(BASE + "outputs: [{name: o, from: [fc]}]\n", tmp_path, "`from` must be a layer name",
          "['fc']", line=9)


def test_non_string_keys_from_python_are_refused():
    spec = copy.deepcopy(SPEC)
    spec["params"][1] = 2
    with pytest.raises(SpecError, match="`params`: key 1 is not a string"):
        cnngraph.load(spec)
    spec = copy.deepcopy(SPEC)
    spec["layers"][0]["stride"] = {(1, 2): 3}
    with pytest.raises(SpecError, match=r"`layers\[0\].stride`: key \(1, 2\) is not a string"):
        cnngraph.load(spec)


def test_a_name_with_a_newline_gives_a_one_line_message(tmp_path):
    message = fails(edited("{name: flat, op: flatten}", '{name: "fl\\nat", op: flatten}'),
                    tmp_path, "'fl\\nat'", line=7)
    assert message.count("net.yaml") == 1


# --- null ----------------------------------------------------------------------------------
@pytest.mark.parametrize("old, new, words", [
    ("kernel: 3}", "kernel: 3, groups: }", ["'groups'", "null is not a value", "default 1"]),
    ("kernel: 3}", "kernel: null}", ["'kernel'", "null is not a value here: give one"]),
    ("{name: flat, op: flatten}", "{name: flat, op: flatten, start_dim: '${None}'}",
     ["'start_dim'", "null"]),
    ("{name: pool, op: global_avg_pool2d}", "{name: pool, op: softmax, axis: null}",
     ["'axis' of softmax", "null"]),
])
def test_null_is_refused_unless_the_attribute_is_optional(tmp_path, old, new, words):
    fails(edited(old, new), tmp_path, *words)


def test_null_stays_allowed_where_the_default_is_none():
    spec = copy.deepcopy(SPEC)
    spec["layers"][1] = {"name": "pool", "op": "max_pool2d", "kernel": 2, "stride": None}
    assert cnngraph.load(spec)["pool"].shape == ("N", 4, 3, 3)


# --- recursion and bombs -------------------------------------------------------------------
def test_deeply_nested_yaml_is_refused_while_parsing(tmp_path):
    fails(edited("kernel: 3}", "kernel: " + "[" * 3000 + "]" * 3000 + "}"), tmp_path,
          "nested more than 64 levels", line=5)
    fails(BASE + "meta: " + "{k: " * 1500 + "1" + "}" * 1500 + "\n", tmp_path,
          "nested more than 64 levels", line=9)


def test_deep_dicts_and_json_are_refused():
    deep: dict = {"x": 1}
    for _ in range(1500):
        deep = {"x": deep}
    spec = copy.deepcopy(SPEC)
    spec["meta"] = deep
    with pytest.raises(SpecError, match="`meta.x.x.x.*nested more than 64"):
        cnngraph.load(spec)


def test_deep_json_is_refused(tmp_path):
    file = tmp_path / "net.json"
    file.write_text('{"name": "t", "meta": ' + "[" * 100_000 + "]" * 100_000 + "}")
    with pytest.raises(SpecError, match="nested"):
        cnngraph.load(file)


def test_a_self_referencing_alias_is_refused(tmp_path):
    fails(edited("kernel: 3}", "kernel: &a [*a]}"), tmp_path, "`layers[0].kernel[0]`",
          "contains itself", line=5)


def test_a_self_referencing_structure_from_python_is_refused():
    spec = copy.deepcopy(SPEC)
    loop: list = []
    loop.append(loop)
    spec["params"]["w"] = loop
    with pytest.raises(SpecError, match=r"`params.w\[0\]`: contains itself"):
        cnngraph.load(spec)


def test_an_alias_bomb_fails_at_once(tmp_path):
    bomb = 'a0: &a0 ["x","x","x","x","x","x","x","x","x"]\n'
    for i in range(1, 30):  # 9**30 strings once expanded
        bomb += f"    a{i}: &a{i} [" + ",".join([f"*a{i - 1}"] * 9) + "]\n"
    fails(edited("{w: 4}", "\n    w: 4\n    " + bomb.strip()), tmp_path,
          "more than 1,000,000 keys and values")


def test_a_long_expression_and_a_deep_one_are_refused(tmp_path):
    fails(edited("out: $w,", "out: '${" + "+".join(["1"] * 3000) + "}',"), tmp_path,
          "5,999 characters, more than 1,000", line=5)
    fails(edited("out: $w,", "out: '${" + "+".join(["1"] * 300) + "}',"), tmp_path,
          "nested more than 50 levels", line=5)
    fails(edited("out: $w,", "out: '${" + "-" * 900 + "1}',"), tmp_path, "nested", line=5)
    fails(edited("out: $w,", "out: '${" + "(" * 400 + "1" + ")" * 400 + "}',"), tmp_path,
          "expression", line=5)


def test_blocks_nested_too_deep_are_refused():
    blocks = {f"b{i}": {"layers": [{"name": "x", "block": f"b{i + 1}"}]} for i in range(200)}
    blocks["b200"] = {"layers": [{"name": "x", "op": "relu"}]}
    spec = {"name": "t", "input": [3], "blocks": blocks,
            "layers": [{"name": "top", "block": "b0"}]}
    with pytest.raises(SpecError, match="blocks nested more than 32 deep"):
        cnngraph.load(spec)


# --- damaged text --------------------------------------------------------------------------
@pytest.mark.parametrize("char", ["\x00", "\x07", "\x1b", "\ufffe"])
def test_control_characters_are_refused_on_their_line(tmp_path, char):
    fails(edited("op: flatten", "op: flat" + char + "ten"), tmp_path, "is not allowed in YAML",
          repr(char)[1:-1], line=7)


def test_a_file_larger_than_the_limit_is_refused_unread(tmp_path):
    file = tmp_path / "net.yaml"
    file.write_text(BASE + "#" * limits.MAX_FILE_BYTES)
    with pytest.raises(SpecError, match="the most a spec may have"):
        cnngraph.load(file)


def test_an_endless_file_is_read_only_up_to_the_limit(tmp_path):
    link = tmp_path / "net.yaml"
    link.symlink_to("/dev/zero")
    with pytest.raises(SpecError, match="larger than 1,048,576 bytes, the most a spec may have"):
        cnngraph.load(link)


# --- non-finite numbers and out-of-range attributes ---------------------------------------
@pytest.mark.parametrize("value, words", [
    ("'${1e999 - 1e999}'", ["inf is not a finite number"]),
    ("'${1e308 * 10 - 1e308 * 10}'", ["inf is not a finite number"]),
    ("'${1e999}'", ["inf is not a finite number"]),
    (".nan", ["`layers[1].negative_slope`", "nan is not a finite number"]),
    ("-.inf", ["-inf is not a finite number"]),
])
def test_non_finite_numbers_are_refused(tmp_path, value, words):
    fails(edited("{name: pool, op: global_avg_pool2d}",
                 "{name: pool, op: leaky_relu, negative_slope: " + value + "}"),
          tmp_path, *words, line=6)


@pytest.mark.parametrize("layer, words", [
    ("{name: pool, op: batch_norm, eps: 0}", ["attribute 'eps' of batch_norm: must be > 0"]),
    ("{name: pool, op: batch_norm, eps: -1.0e-5}", ["'eps'", "> 0"]),
    ("{name: pool, op: batch_norm, momentum: 2}", ["'momentum'", "<= 1"]),
    ("{name: pool, op: lrn, alpha: 0}", ["attribute 'alpha' of lrn: must be > 0"]),
    ("{name: pool, op: lrn, beta: -0.75}", ["attribute 'beta' of lrn: must be > 0"]),
    ("{name: pool, op: lrn, k: 0}", ["attribute 'k' of lrn"]),
    ("{name: pool, op: max_pool2d, kernel: 0}", ["'kernel'", ">= 1"]),
    ("{name: pool, op: max_pool2d, kernel: 2, stride: 0}", ["'stride'", ">= 1"]),
    ("{name: pool, op: conv2d, out: 4, kernel: 1, groups: 0}", ["'groups'", ">= 1"]),
    ("{name: pool, op: conv2d, out: 0, kernel: 1}", ["'out'", ">= 1"]),
    ("{name: pool, op: upsample, scale: 1000000}", ["upsample scale must be a number"]),
])
def test_out_of_range_attributes_are_refused_before_shape_code(tmp_path, layer, words):
    fails(edited("{name: pool, op: global_avg_pool2d}", layer), tmp_path, "layer 'pool'",
          *words, line=6)


# --- the largest spec each limit accepts loads ---------------------------------------------
def test_the_largest_repeat_loads_and_one_more_layer_fails_at_once():
    params = {f"p{i}": i for i in range(100_000)}  # copies share them: none copied
    spec = {"name": "t", "input": [2], "params": params,
            "layers": [{"name": "a", "op": "relu", "repeat": limits.MAX_LAYERS}]}
    g = cnngraph.load(spec)  # input and 100,000 layers
    assert len(g) == limits.MAX_LAYERS + 1 and g["a.99999"].shape == ("N", 2)
    spec["layers"][0]["repeat"] = limits.MAX_LAYERS + 1
    with pytest.raises(SpecError, match="more than 100,000 layers"):
        cnngraph.load(spec)
    spec["layers"][0]["repeat"] = 2**62  # refused before a single copy
    with pytest.raises(SpecError, match="more than 100,000 layers"):
        cnngraph.load(spec)


def test_a_big_layer_repeated_many_times_is_refused_before_it_takes_minutes():
    layer = {"name": "a", "op": "relu", "repeat": limits.MAX_LAYERS - 1,
             **{f"k{i}": "$i" for i in range(100)}}  # unknown keys: check_node sees them later
    with pytest.raises(SpecError, match=r"layer 'a': expanding the spec evaluates more than "
                                        "2,000,000 values"):
        cnngraph.load({"name": "t", "input": [2], "layers": [layer]})
    block = {"params": {f"q{i}": i for i in range(1000)}, "layers": [{"name": "x", "op": "relu"}]}
    spec = {"name": "t", "input": [2], "blocks": {"b": block},
            "layers": [{"name": "a", "block": "b", "repeat": 9_999}]}
    with pytest.raises(SpecError, match="more than 2,000,000 values"):
        cnngraph.load(spec)


def test_a_repeated_block_is_sized_before_it_is_copied_on():
    spec = {"name": "t", "input": [2],
            "blocks": {"b": {"layers": [{"name": "x", "op": "relu"}, {"name": "y", "op": "relu"}]}},
            "layers": [{"name": "a", "block": "b", "repeat": 50_001}]}
    with pytest.raises(SpecError, match=r"more than 100,000 layers \(at least 150,003\)"):
        cnngraph.load(spec)


def test_the_largest_spec_of_each_limit_loads(tmp_path):
    """One file at the limits: 1 MiB, 64 levels of nesting, ~890,000 values through aliases,
    an expression of 1,000 characters and one 50 levels deep; one step more fails."""
    deep = json.dumps(["x"])
    for _ in range(limits.MAX_DEPTH - 3):  # the top mapping and `meta` are two levels
        deep = f"[{deep}]"
    aliases = "  a0: &a0 [x, x, x, x, x, x, x, x]\n" + "".join(
        f"  a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]\n" for i in range(1, 6))
    long = "${min(" + ",".join(["w"] * 498) + ")}"  # 1,000 characters inside ${}
    deepest = "${" + "+".join(["1"] * 49) + "}"  # Expression > 48 BinOps > Constant: 50
    text = (BASE.replace("{w: 4}", f"{{w: 4, long: '{long}', deepest: '{deepest}'}}")
            .replace("out: $w,", "out: '${deepest - 45}',") + f"meta:\n  deep: {deep}\n" + aliases)
    text += "#" * (limits.MAX_FILE_BYTES - len(text.encode()) - 1) + "\n"
    file = tmp_path / "net.yaml"
    file.write_text(text)
    assert file.stat().st_size == limits.MAX_FILE_BYTES
    g = cnngraph.load(file)
    assert g["conv"].shape == ("N", 4, 6, 6)
    for old, new, words in [("#\n", "##\n", "the most a spec may have"),
                            ("  deep: [", "  deep: [[", "nested more than 64"),
                            ("[x, x, x, x, x, x, x, x]", "[x, x, x, x, x, x, x, x, x, x, x, x]",
                             "more than 1,000,000 keys"),
                            ("w)}", "w,w)}", "1,002 characters, more than 1,000"),
                            ("1+1}", "1+1+1}", "nested more than 50")]:
        damaged = text.replace(old, new, 1)
        if old != "#\n":  # the same size: as many comment characters fewer
            damaged = damaged[:-(len(new) - len(old)) - 1] + "\n"
        file.write_text(damaged)
        with pytest.raises(SpecError, match=words):
            cnngraph.load(file)


# --- the CLI -------------------------------------------------------------------------------
@pytest.mark.parametrize("text", [
    BASE.replace("op: flatten", "op: flat\x00ten"),
    BASE.replace("kernel: 3}", "kernel: &a [*a]}"),
    BASE.replace("{w: 4}", "{w: '${((9**64)**64)**64}'}"),
    BASE.replace("kernel: 3}", "kernel: " + "[" * 3000 + "]" * 3000 + "}"),
    BASE.replace("{w: 4}", "{w: 4, ? [a] : 1}"),
    BASE.replace("name: t\n", "name: t\nvariant: [v]\n"),
    BASE.replace("{name: flat, op: flatten}", '{name: "a\\nb", op: flatten}'),
    "\ufeff\x1b[2J" + BASE,
])
def test_show_prints_one_line_and_exits_2_on_damaged_files(tmp_path, capsys, text):
    file = tmp_path / "net.yaml"
    file.write_text(text, encoding="utf-8")
    assert main(["show", str(file)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("cnngraph show: error: ") and err.count("\n") == 1, err
    assert err[:-1].isprintable() and "net.yaml" in err


def test_show_input_shape_with_other_channels_names_the_option(capsys):
    assert main(["show", "resnet18", "--input-shape", "1,1,224,224"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--input-shape 1,1,224,224" in err, err
    assert "has 1 channel(s)" in err and "meta.normalize` gives 3 values" in err, err
    assert "keep 3 channels" in err and "resnet.yaml" not in err, err


def test_every_error_here_is_the_projects():
    assert issubclass(SpecError, CnnGraphError)


def test_a_cycle_through_every_layer_is_named_briefly():
    spec = {"name": "t", "input": [2], "layers": [
        {"name": "a", "op": "relu", "inputs": ["b"]},
        {"name": "b", "op": "relu", "repeat": limits.MAX_LAYERS - 1}]}
    with pytest.raises(SpecError) as caught:
        cnngraph.load(spec)
    assert str(caught.value) == (
        "layer 'a': cycle: a -> b.0 -> b.1 -> b.2 -> b.3 -> b.4 -> b.5 -> b.6 -> b.7 -> b.8 -> "
        "... (100000 layers) -> a: a layer cannot depend on its own output; fix the `inputs` of "
        "one of them")


# --- from the fuzzer (/work/fuzz-findings.md) ----------------------------------------------
@pytest.mark.parametrize("value, words", [
    ("!!int 3.5", ["int value '3.5' cannot be read", "drop its tag"]),
    ("!!float abc", ["float value 'abc' cannot be read"]),
    ("!!bool 3", ["bool value '3' cannot be read"]),
    ("!!timestamp abc", ["timestamp value 'abc' cannot be read"]),
])
def test_a_tag_on_a_value_it_does_not_fit_is_refused(tmp_path, value, words):
    fails(edited("kernel: 3}", f"kernel: {value}}}"), tmp_path, *words, line=5)


@pytest.mark.parametrize("value, words", [
    ("2001-12-14", ["`doc`: datetime.date(2001, 12, 14) is not a spec value", "quote it"]),
    ("!!binary aGVsbG8=", ["`doc`: b'hello' is not a spec value"]),
    ("!!set {a, b}", ["`doc`: {", "is not a spec value"]),
])
def test_dates_bytes_and_sets_are_not_spec_values(tmp_path, value, words):
    fails(BASE + f"doc: {value}\n", tmp_path, *words, line=9)


def test_an_input_list_with_an_input_shape_is_the_specs_error():
    spec = {"name": "t", "inputs": [[3, 8, 8], [1, 8, 8]], "layers": [{"name": "a", "op": "relu"}]}
    with pytest.raises(SpecError, match="`inputs` must map input names to shapes"):
        cnngraph.load(spec, input_shape={"image": [3, 8, 8]})


@pytest.mark.parametrize("where, value", [
    ("op", "a" * 10_000),
    ("op", "\x1b[2J"),
    ("name", "a" * 4000),
    ("kernel", "b" * 10_000),
    ("kernel", [[0] * 1000] * 1000),
    ("kernel", "${" + "[[0] * 1000] * 100" + "}"),
])
def test_echoed_values_are_shortened_and_printable(where, value):
    spec = copy.deepcopy(SPEC)
    spec["layers"][0][where] = value
    with pytest.raises(SpecError) as caught:
        cnngraph.load(spec)
    message = str(caught.value)
    assert len(message) < 300 and message.isprintable(), message


def test_a_long_key_is_refused_briefly():
    spec = copy.deepcopy(SPEC)
    spec["layers"][0]["k" * 5000] = 1
    with pytest.raises(SpecError, match=r"`layers\[0\]`: key 'kkk.*' is longer than 100 "):
        cnngraph.load(spec)


def test_an_uneven_adaptive_pool_too_large_for_onnx_constants_is_an_export_error(tmp_path):
    from cnngraph.errors import ExportError
    from exporters import export_onnx

    spec = {"name": "t", "input": [1, 1, 20_000],
            "layers": [{"name": "pool", "op": "adaptive_avg_pool2d", "size": [1, 19_999]}]}
    graph = cnngraph.load(spec)
    with pytest.raises(ExportError, match=r"layer 'pool' .*uneven bins from 1x20000 to 1x19999 "
                                          r"in constants of at most 16,777,216 numbers"):
        export_onnx(graph, cnngraph.build(graph), tmp_path / "t.onnx")


def test_the_cli_prints_any_error_on_one_line(monkeypatch, capsys):
    from cnngraph.commands import show
    from cnngraph.errors import InputError

    def run(args):
        raise InputError("file 'a\nb\x1b[2J' is odd")

    monkeypatch.setattr(show, "run", run)
    assert main(["show", "x"]) == 2
    assert capsys.readouterr().err == "cnngraph show: error: file 'a\\nb\\x1b[2J' is odd\n"


def test_text_with_many_expressions_is_bounded_as_a_whole():
    spec = copy.deepcopy(SPEC)
    spec["params"]["doc"] = "${'x' * 100000}-" * 60_000  # 60,000 parts of 100,000 characters
    with pytest.raises(SpecError, match="^doc: the text .* becomes longer than 100,000 char"):
        cnngraph.load(spec)


def test_many_outputs_load_in_linear_time():
    outputs = [{"name": f"o{i}", "from": "a"} for i in range(50_000)]
    spec = {"name": "t", "input": [2], "layers": [{"name": "a", "op": "relu"}],
            "outputs": outputs + [{"name": "o7", "from": "a"}]}
    with pytest.raises(SpecError, match="duplicate output name 'o7'"):
        cnngraph.load(spec)
    spec["outputs"].pop()
    assert len(cnngraph.load(spec).outputs) == 50_000


# --- hints only where they fit (issue 10, new-user review) ---------------------------------
@pytest.mark.parametrize("old, new, words, absent", [
    ("{name: flat, op: flatten}", "{name: flat, op: flatten}\n  - {name: d, op: dropout, p: 1.5}",
     ["layer 'd'", "attribute 'p' of dropout: must be >= 0 and <= 1, got 1.5"], "//"),
    ("out: $w,", """out: "${int('9' * 5000)}",""",
     ["layer 'conv'", "int() of a string of 5,000 characters", "±2**63-1"], "sys."),
    ("out: $w,", 'out: "${4",', ["layer 'conv'", "unclosed ${...} expression in '${4'"],
     "expected an integer"),
], ids=["float-out-of-range", "int-of-long-string", "unclosed"])
def test_spec_messages_give_only_the_fitting_hint(tmp_path, capsys, old, new, words, absent):
    spec = tmp_path / "net.yaml"
    spec.write_text(edited(old, new))
    assert main(["show", str(spec)]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and err.startswith("cnngraph show: error: "), err
    assert all(word in err for word in words) and absent not in err, err


def test_a_fraction_for_an_integer_still_gets_the_division_hint(tmp_path):
    fails(edited("out: $w,", 'out: "${w / 3}",'), tmp_path, "expected an integer",
          "from '${w / 3}'", "use // for integer division")


# --- the fuzzer's 20,000-case run of seed 2 (docs/robustness.md) ----------------------------

@pytest.mark.parametrize("name", ["t\x00", "t\nu", "x" * 101])
def test_the_spec_name_is_printable_and_short(tmp_path, name):
    """Found by the fuzzer: a NUL in `name` passed the checker and failed in the builder
    ("embedded null character")."""
    fails({**SPEC, "name": name}, tmp_path, "`name` must be a non-empty printable string")


@pytest.mark.parametrize("alpha", [1e308, -3.5e38, 3.5e38])
def test_a_float_attribute_must_fit_float32(tmp_path, alpha):
    """Found by the fuzzer: LRN alpha 1e308 became inf in float32 and torch and onnxruntime
    disagreed (nan); 3.4028234663852886e38 is float32's largest finite value."""
    spec = copy.deepcopy(SPEC)
    spec["layers"].insert(1, {"name": "lrn", "op": "lrn", "size": 3, "alpha": alpha})
    fails(spec, tmp_path, "layer 'lrn'", "does not fit float32")


def test_float32s_largest_value_is_accepted():
    spec = copy.deepcopy(SPEC)
    spec["layers"].insert(1, {"name": "lrn", "op": "lrn", "size": 3, "k": 3.4028234663852886e38})
    assert cnngraph.load(spec)["lrn"].shape == ("N", 4, 6, 6)  # after the 3x3 conv: 8 - 3 + 1
