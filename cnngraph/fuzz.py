"""A seeded fuzzer for everything a spec passes through: load (expand + check) -> build ->
forward -> ONNX export -> onnxruntime.

Case `i` of seed `s` is a pure function of (s, i): a source (a zoo file or one of the small
specs below), one to three mutations at the value, structure or text level, and the way it is
loaded (a .yaml/.json file or a dict, with or without `variant=` / `input_shape=`). A case
passes when every stage succeeds, or when it stops with a `CnnGraphError` whose message is one
printable line that names the place (the file, for a spec file). Anything else -- another
exception, a multi-line message, a case running past the time limit, a worker that died, or
onnxruntime disagreeing with torch -- is a finding. Cases run in worker processes, so a hang is
killed and reported with the stack it hung in (faulthandler), and the run goes on.

    python scripts/fuzz.py --cases 20000 --seed 1          # the long run (docs/robustness.md)
    python scripts/fuzz.py --seed 1 --case 123 --show      # one case: its mutations and spec
"""
from __future__ import annotations

import copy
import json
import math
import os
import random
import re
import reprlib
import select
import subprocess
import sys
import tempfile
import time
import traceback
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ZOO = Path(__file__).parent / "zoo"
DUMPER = getattr(yaml, "CSafeDumper", yaml.SafeDumper)
STAGES = ("load", "build", "forward", "export", "onnxruntime")
# a loaded graph goes the whole way only when it is this cheap (a case should take milliseconds)
MAX_PARAMS, MAX_MACS, MAX_ACTIVATIONS, MAX_NODES = 300_000, 30_000_000, 2_000_000, 400

# Small specs of our own, covering every op and spec feature at a size that runs in milliseconds.
SMALL = {
    "chain": """
name: chain
input: [3, 8, 8]
meta: {classes: [a, b, c], normalize: {mean: [0.5], std: [0.25]}}
layers:
  - {name: conv, op: conv2d, out: 4, kernel: 3, padding: 1, stride: 1, dilation: 1, groups: 1}
  - {name: bn, op: batch_norm, eps: 0.001, momentum: 0.1}
  - {name: act, op: leaky_relu, negative_slope: 0.1}
  - {name: pool, op: max_pool2d, kernel: 2, stride: 2, padding: 0, ceil_mode: false}
  - {name: avg, op: avg_pool2d, kernel: 2, count_include_pad: true}
  - {name: drop, op: dropout, p: 0.25}
  - {name: flat, op: flatten, start_dim: 1}
  - {name: fc, op: linear, out: 3, bias: true}
  - {name: prob, op: softmax, axis: 1}
""",
    "residual": """
name: residual
input: [2, 6, 6]
params: {width: 4, depth: 2, use_gate: true, widths: [4, 6]}
variants:
  small: {width: 2, depth: 1}
  wide: {width: 6, depth: 2}
blocks:
  unit:
    params: {out: required, stride: 1}
    inputs: [x]
    layers:
      - {name: conv, op: conv2d, out: $out, kernel: 3, padding: same, bias: false}
      - {name: bn, op: batch_norm}
      - {name: relu, op: relu}
      - {name: skip, op: identity, inputs: [x]}
      - {name: sum, op: add, inputs: [relu, skip]}
    output: sum
layers:
  - {name: stem, op: conv2d, out: $width, kernel: 1}
  - {name: body, block: unit, args: {out: $width}, repeat: $depth}
  - {name: gate, op: sigmoid, when: $use_gate}
  - {name: prod, op: mul, inputs: [body, gate]}
  - {name: wide, op: conv2d, out: "${widths[1] + i}", kernel: [1, 3], padding: [0, 1], repeat: 2,
     first: {out: "${widths[0]}"}}
  - {name: side, op: tanh, inputs: [stem]}
  - {name: cat, op: concat, inputs: [wide, side], axis: 1}
  - {name: gap, op: adaptive_avg_pool2d, size: [2, 1]}
  - {name: g, op: global_avg_pool2d}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: "${max(2, width)}"}
""",
    "decoder": """
name: decoder
input: [1, 8, 8]
layers:
  - {name: enc, op: conv2d, out: 4, kernel: 3, stride: 2, padding: 1}
  - {name: up, op: conv_transpose2d, out: 3, kernel: 4, stride: 2, padding: 1, output_padding: 0}
  - {name: up2, op: upsample, scale: 2, mode: bilinear, align_corners: false}
  - {name: down, op: avg_pool2d, kernel: 2}
  - {name: skip, op: upsample, inputs: [enc], scale: [2, 2]}
  - {name: cat, op: concat, inputs: [down, skip]}
  - {name: gate, op: gated_conv2d, out: 2, kernel: 3, padding: 1}
  - {name: sub, op: subsample2d, kernel: 2}
  - {name: gap, op: global_avg_pool2d}
  - {name: flat, op: flatten}
""",
    "exotic": """
name: exotic
input: [6, 7, 7]
layers:
  - {name: table, op: conv2d, out: 3, kernel: 3, table: [[0, 1], [2, 3, 4], [5]]}
  - {name: lrn1, op: lrn, size: 3, alpha: 0.0001, beta: 0.75, k: 1.0, region: across_channels}
  - {name: dcn, op: deform_conv2d, out: 4, kernel: 3, padding: 1, offset_groups: 1, modulated: true}
  - {name: dcn1, op: deform_conv2d, out: 4, kernel: 2, stride: 2, bias: false, offset_groups: 2}
  - {name: lrn2, op: lrn, size: 3, region: within_channel}
  - {name: pool, op: max_pool2d, kernel: 2, dilation: 1, ceil_mode: true}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: 2}
""",
    "heads": """
name: heads
input: [3, 8, 8]
layers:
  - {name: conv, op: conv2d, out: 4, kernel: 3}
  - {name: relu, op: relu}
  - {name: aux_pool, op: global_avg_pool2d, inputs: [conv]}
  - {name: aux_flat, op: flatten}
  - {name: aux, op: linear, out: 2}
  - {name: pool, op: max_pool2d, kernel: 2, inputs: [relu]}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: 2}
outputs:
  - fc
  - {name: aux_out, from: aux, phase: train, loss_weight: 0.3}
""",
    "mlp": """
name: mlp
input: [12]
layers:
  - {name: fc1, op: linear, out: 8}
  - {name: bn, op: batch_norm}
  - {name: act, op: relu}
  - {name: drop, op: dropout}
  - {name: fc2, op: linear, out: 3}
""",
    "two_inputs": """
name: two_inputs
inputs: {image: [3, 8, 8], mask: [1, 8, 8]}
layers:
  - {name: both, op: concat, inputs: [image, mask]}
  - {name: conv, op: conv2d, out: 4, kernel: 3, padding: 1}
  - {name: gap, op: global_avg_pool2d}
  - {name: flat, op: flatten}
  - {name: fc, op: linear, out: 2}
""",
}


# ------------------------------------------------------------------------------------------
# Hostile values


def _deep_list(depth: int) -> list:
    value: list = []
    for _ in range(depth):
        value = [value]
    return value


def _deep_dict(depth: int) -> dict:
    value: dict = {}
    for _ in range(depth):
        value = {"a": value}
    return value


def _self_list() -> list:
    value: list = []
    value.append(value)
    return value


def _bomb(levels: int = 9, width: int = 9) -> list:
    """A billion-laughs value: `levels` lists, each holding `width` references to the one below."""
    value: Any = "lol"
    for _ in range(levels):
        value = [value] * width
    return value


HOSTILE_EXPRS = [
    "${None}", "${1e999 - 1e999}", "${1e999}", "${-1e999}", "${((9**64)**64)**64}",
    "${((10**64)**64)**2}", "${(((9**64)**64)**64)**64}", "${2**64}", "${-2**63}", "${10**400}",
    "${" + "(" * 200 + "1" + ")" * 200 + "}", "${" + "+".join(["1"] * 3000) + "}",
    "${" + "-" * 3000 + "1}", "${" + "not " * 2000 + "1}", "${'a' * 100000}", "${[0] * 100000}",
    "${[[0] * 1000] * 1000}", "${1/0}", "${1//0}", "${1 % 0}", "${0 ** -1}", "${2 ** -1}",
    "${2 ** 0.5}", "${(-8) ** (1/3)}", "${x.__class__}", "${__import__('os')}", "${[i for i in [1]]}",
    "${len(1)}", "${max()}", "${min([])}", "${int('x')}", "${int(1e999)}", "${int(2.5)}",
    "${depths[99]}", "${widths[-99]}", "${undefined}", "${i}", "${lambda: 1}", "${(1, 2)}",
    "${{1: 2}}", "${'a' < 1}", "${[1] + 1}", "${'%s' % 1}", "${'a' * -1}", "${[1][1:0:0]}",
    "${1 if 2}", "${", "${}", "${ }", "$", "$$", "$1", "$ name", "${1}${2}", "x${1e999}y",
    "${'" + "a" * 5000 + "'}", "${0.1 + 0.2}", "${True + True}", "${-0.0}", "${3 > 2 > 1}",
    "${int(10**4300)}", "${10**4301}", "${len('x' * 100000) * 100000}", "${9**9**9}",
    "${max(1e308 * 10, 1)}", "${[1, 2][True]}", "${'abc'[10**20]}",
]

HOSTILE_VALUES: list[Any] = [
    None, True, False, 0, -1, -7, 1, 2, 3, 1.5, 0.5, -0.0, 1e-300, 2 ** 31, 2 ** 63, 2 ** 64 + 1,
    -(2 ** 63), 10 ** 30, 10 ** 5000, 1e308, float("inf"), float("-inf"), float("nan"),
    "nan", "NaN", "inf", "", " ", "abc", "same", "\x00", "a\nb", "a\rb", "\x1b[2J", "\u2028",
    "é", "a" * 10000, "1", "3", "true", "null", "-", "required", [], [[]], {}, {"a": 1}, [1] * 5,
    [0], [-1], [1, 2, 3, 4, 5], [3, 3], [0, 0], [1.5, 2], [None], [True], ["a"], list(range(1000)),
    {"name": "x"}, {1: 2}, [{}],
]


def hostile_value(rng: random.Random) -> tuple[str, Any]:
    pick = rng.random()
    if pick < 0.3:
        expr = rng.choice(HOSTILE_EXPRS)
        return f"expr {expr[:40]!r}", expr
    if pick < 0.36:
        kind = rng.choice(["deep_list", "deep_dict", "self_list", "bomb"])
        value = {"deep_list": lambda: _deep_list(rng.choice([50, 1000, 1500, 5000])),
                 "deep_dict": lambda: _deep_dict(rng.choice([50, 1000, 1500, 5000])),
                 "self_list": _self_list, "bomb": _bomb}[kind]()
        return kind, value
    value = rng.choice(HOSTILE_VALUES)
    return f"value {_short(value)}", copy.deepcopy(value)


def perturb(rng: random.Random, value: Any, names: list[str]) -> tuple[str, Any]:
    """A value near the one there: numbers nudged or blown up, strings edited, lists resized."""
    if isinstance(value, bool):
        return "flip bool", rng.choice([not value, int(value), str(value).lower(), None])
    if isinstance(value, int) and abs(value) > 2 ** 64:
        new = rng.choice([value + 1, -value, 0, 1, [value], {"v": value}])
        return f"huge int -> {_short(new)}", new
    if isinstance(value, int):
        new = rng.choice([value + 1, value - 1, 0, -value, -1, value * 1000, value ** 3,
                          value * 10 ** 20, float(value), value + 0.5, str(value), [value],
                          2 ** 62, f"${{{value} * 10**6}}", f"${{{value} - {value + 1}}}"])
        return f"int {value} -> {_short(new)}", new
    if isinstance(value, float):
        new = rng.choice([-value, 0.0, value * 1e300, value / 1e300, float("nan"), float("inf"),
                          int(value) if math.isfinite(value) else 0, str(value), -1.0, 1.0,
                          2.0, 1e-12])
        return f"float {value} -> {_short(new)}", new
    if isinstance(value, str):
        other = rng.choice(names) if names else "x"
        new = rng.choice([value + "x", value[:-1], value.upper(), "$" + value, other,
                          f"${{{other}}}", value + "\n", value + ".0", value + " ", "", other + "." + value,
                          value + "\x00", "${" + value + "}", value * 2])
        return f"str {value[:20]!r} -> {_short(new)}", new
    if isinstance(value, list):
        new = list(value)
        how = rng.choice(["drop", "append", "dup", "nest", "reverse", "empty", "int"])
        if how == "drop" and new:
            new.pop(rng.randrange(len(new)))
        elif how == "append":
            new.append(rng.choice([1, -1, 0, "x", None, [1], 10 ** 9]))
        elif how == "dup" and new:
            new.append(_copy(rng.choice(new)))
        elif how == "nest":
            new = [new]
        elif how == "reverse":
            new.reverse()
        elif how == "empty":
            new = []
        else:
            new = len(new)
        return f"list {how}", new
    if isinstance(value, dict):
        return "dict -> list", list(value.items()) if rng.random() < 0.3 else list(value)
    return "none -> value", rng.choice([0, 1, "x", [], {}])


def _copy(value: Any) -> Any:
    """A deep copy, or the value itself (shared, as a YAML alias would) when too deep to copy."""
    try:
        return copy.deepcopy(value)
    except RecursionError:
        return value


_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxdict, _REPR.maxstring, _REPR.maxother = 3, 6, 4, 30, 30
_SHOW = reprlib.Repr()  # a spec that YAML cannot write (a huge int, a tuple key), for --show
_SHOW.maxlevel, _SHOW.maxlist, _SHOW.maxdict, _SHOW.maxstring, _SHOW.maxother = 5, 12, 40, 200, 200


def _short(value: Any) -> str:
    """A repr of at most ~40 characters, bounded in depth and width (a bomb or a cycle too)."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an int past the 4,300-digit limit, maybe inside a list
        text = f"<{type(value).__name__} holding a number past 4,300 digits>"
    return text if len(text) <= 40 else text[:37] + "..."


# ------------------------------------------------------------------------------------------
# Walking a spec tree


def paths(tree: Any, limit: int = 20000, depth: int = 30) -> list[tuple[tuple, Any]]:
    """(path, value) of every position in `tree` (dict keys and list indices), breadth first,
    each shared container walked once, at most `limit` and `depth` deep."""
    out, queue, seen = [], [((), tree)], set()
    for path, node in queue:
        if len(out) >= limit:
            break
        if isinstance(node, (dict, list)) and id(node) not in seen and len(path) < depth:
            seen.add(id(node))
            items = node.items() if isinstance(node, dict) else enumerate(node)
            for key, child in items:
                out.append((path + (key,), child))
                queue.append((path + (key,), child))
    return out


def get(tree: Any, path: tuple) -> Any:
    for key in path:
        tree = tree[key]
    return tree


def put(tree: Any, path: tuple, value: Any) -> None:
    get(tree, path[:-1])[path[-1]] = value


def names_in(tree: Any) -> list[str]:
    """Layer, block, param and input names of a spec (for references that almost fit)."""
    found = []
    for path, value in paths(tree):
        if path[-1] == "name" and isinstance(value, str):
            found.append(value)
        if len(path) >= 1 and path[0] in ("params", "blocks", "inputs", "variants") \
                and len(path) == 2 and isinstance(path[1], str):
            found.append(path[1])
    return found or ["x"]


def layer_lists(tree: Any) -> list[list]:
    """The layer lists of a spec: the top level's and each block's."""
    lists = []
    if isinstance(tree, dict):
        if isinstance(tree.get("layers"), list):
            lists.append(tree["layers"])
        if isinstance(tree.get("blocks"), dict):
            lists += [b["layers"] for b in tree["blocks"].values()
                      if isinstance(b, dict) and isinstance(b.get("layers"), list)]
    return lists


def cheapen(tree: Any) -> None:
    """Make a zoo network small enough to run: spatial input sizes to 32 at most, and every
    integer >= 16 elsewhere (widths, channel counts) divided by 8."""
    if not isinstance(tree, dict):
        return
    for key in ("input",):
        shape = tree.get(key)
        if isinstance(shape, list) and len(shape) == 3:
            tree[key] = [shape[0]] + [min(d, 32) if isinstance(d, int) else d for d in shape[1:]]

    def shrink(node):
        items = node.items() if isinstance(node, dict) else enumerate(node)
        for key, value in list(items):
            if key in ("input", "inputs", "classes", "normalize") and node is tree or key == "meta":
                continue
            if isinstance(value, int) and not isinstance(value, bool) and value >= 16:
                node[key] = max(1, value // 8)
            elif isinstance(value, (dict, list)):
                shrink(value)

    shrink(tree)


# ------------------------------------------------------------------------------------------
# Mutations


PLAUSIBLE = {  # attribute -> values of the right type and a sensible size: specs that load
    "out": lambda r: r.choice([1, 2, 3, 4, 6, 8]),
    "kernel": lambda r: r.choice([1, 2, 3, 4, 5, [1, 3], [3, 1], [2, 3]]),
    "stride": lambda r: r.choice([1, 2, 3, [1, 2], [2, 1]]),
    "padding": lambda r: r.choice([0, 1, 2, [0, 1], [1, 0], [0, 1, 1, 0], [1, 2, 0, 1], "same"]),
    "dilation": lambda r: r.choice([1, 2, 3, [1, 2]]),
    "groups": lambda r: r.choice([1, 2, 3, 4]),
    "bias": lambda r: r.choice([True, False]),
    "ceil_mode": lambda r: r.choice([True, False]),
    "count_include_pad": lambda r: r.choice([True, False]),
    "output_padding": lambda r: r.choice([0, 1, [0, 1], [1, 0]]),
    "scale": lambda r: r.choice([1, 2, 3, 0.5, 1.5, 2.5, [1, 2], [2, 1], [1.5, 2]]),
    "mode": lambda r: r.choice(["nearest", "bilinear"]),
    "align_corners": lambda r: r.choice([True, False]),
    "axis": lambda r: r.choice([0, 1, 2, 3, -1]),
    "start_dim": lambda r: r.choice([0, 1, 2, 3]),
    "size": lambda r: r.choice([1, 2, 3, 4, 5, [1, 2], [3, 1]]),
    "alpha": lambda r: r.choice([1e-4, 0.5, 1.0, 2.0]),
    "beta": lambda r: r.choice([0.5, 0.75, 1.0, 2.0]),
    "k": lambda r: r.choice([0.5, 1.0, 2.0]),
    "region": lambda r: r.choice(["across_channels", "within_channel"]),
    "offset_groups": lambda r: r.choice([1, 2, 3]),
    "modulated": lambda r: r.choice([True, False]),
    "negative_slope": lambda r: r.choice([0.0, 0.2, 1.0, -0.5, 3.0]),
    "p": lambda r: r.choice([0.0, 0.1, 0.9]),
    "eps": lambda r: r.choice([1e-5, 1e-3, 0.5, 10.0]),
    "momentum": lambda r: r.choice([0.0, 0.1, 1.0]),
    "table": lambda r: r.choice([[[0]], [[0], [1]], [[0, 1], [1, 2], [0, 2]]]),
    "repeat": lambda r: r.choice([0, 1, 2, 3]),
    "when": lambda r: r.choice([True, False]),
}


def mutate_plausible(rng: random.Random, tree: Any) -> str:
    """An op attribute changed (or added) to a value of the right type and a small size, so
    that the spec often still loads and its network goes on to the build, export and run."""
    layers = [entry for lst in layer_lists(tree) for entry in lst
              if isinstance(entry, dict) and "op" in entry]
    if not layers:
        return mutate_value(rng, tree)
    entry = rng.choice(layers)
    known = [k for k in entry if k in PLAUSIBLE]
    key = rng.choice(known) if known and rng.random() < 0.6 else rng.choice(sorted(PLAUSIBLE))
    entry[key] = PLAUSIBLE[key](rng)
    return f"plausible {_short(entry.get('name'))}.{key}: {_short(entry[key])}"


def mutate_value(rng: random.Random, tree: Any) -> str:
    positions = [p for p, _ in paths(tree)]
    if not positions:
        return "nothing to mutate"
    path = rng.choice(positions)
    if rng.random() < 0.5:
        what, value = perturb(rng, get(tree, path), names_in(tree))
    else:
        what, value = hostile_value(rng)
    put(tree, path, value)
    return f"value {_path(path)}: {what}"


def mutate_structure(rng: random.Random, tree: Any) -> str:
    how = rng.choice(["drop_key", "dup_item", "rename_key", "unknown_key", "nonstring_key",
                      "swap_container", "swap_items", "undefined_ref", "cycle", "self_block",
                      "deep_nest", "repeat", "when", "input_shape", "many_layers", "bomb_param",
                      "self_ref", "drop_section", "share"])
    walked = paths(tree)
    positions = [p for p, _ in walked]
    dicts = [p for p, v in walked if isinstance(v, dict)] + [()]
    lists = [p for p, v in walked if isinstance(v, list)]
    layers = [(lst, i) for lst in layer_lists(tree) for i, entry in enumerate(lst)
              if isinstance(entry, dict)]
    names = names_in(tree)
    if how == "drop_key":
        path = rng.choice(dicts)
        node = get(tree, path)
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            del node[key]
            return f"structure: drop {_path(path + (key,))}"
    if how == "dup_item" and lists:
        path = rng.choice(lists)
        node = get(tree, path)
        if node:
            node.insert(rng.randrange(len(node) + 1), _copy(rng.choice(node)))
            return f"structure: duplicate an item of {_path(path)}"
    if how in ("rename_key", "unknown_key", "nonstring_key"):
        path = rng.choice(dicts)
        node = get(tree, path)
        if isinstance(node, dict) and node:
            key = rng.choice(list(node))
            new = {"rename_key": rng.choice([str(key) + "s", str(key)[:-1], str(key).upper(),
                                             rng.choice(names), "op", "name", "inputs", "block"]),
                   "unknown_key": None,
                   "nonstring_key": rng.choice([1, None, True, 2.5, (1, 2), frozenset([1])])}[how]
            if how == "unknown_key":
                node[rng.choice(["extra", "kernal", "__class__", "", "a b", "x\ny"])] = 1
                return f"structure: unknown key in {_path(path)}"
            value = node.pop(key)
            node[new] = value
            return f"structure: key {_path(path + (key,))} -> {_short(new)}"
    if how == "swap_container" and positions:
        path = rng.choice(positions)
        value = get(tree, path)
        new = (list(value.values()) if isinstance(value, dict)
               else {str(i): v for i, v in enumerate(value)} if isinstance(value, list)
               else rng.choice([[value], {"value": value}]))
        put(tree, path, new)
        return f"structure: {_path(path)} {type(value).__name__} -> {type(new).__name__}"
    if how == "swap_items" and lists:
        node = get(tree, rng.choice(lists))
        if len(node) > 1:
            i, j = rng.sample(range(len(node)), 2)
            node[i], node[j] = node[j], node[i]
            return "structure: swap two items"
    if how in ("undefined_ref", "cycle") and layers:
        lst, i = rng.choice(layers)
        later = [e.get("name") for e in lst[i:] if isinstance(e, dict)]
        ref = (rng.choice(["nowhere", "input", "", "a.b", names[0] + "_x", 3, None, ["x"]])
               if how == "undefined_ref" else rng.choice(later))
        if rng.random() < 0.2 and isinstance(tree.get("outputs"), list) and tree["outputs"]:
            tree["outputs"][0] = {"name": "out", "from": ref}
            return f"structure: outputs[0] from {_short(ref)}"
        lst[i]["inputs"] = [ref] if rng.random() < 0.8 else ref
        return f"structure: layer {_short(lst[i].get('name'))} inputs -> {_short(ref)}"
    if how == "self_block" and isinstance(tree.get("blocks"), dict) and tree["blocks"]:
        name = rng.choice(list(tree["blocks"]))
        block = tree["blocks"][name]
        if isinstance(block, dict) and isinstance(block.get("layers"), list):
            block["layers"].append({"name": "again", "block": name})
            return f"structure: block {_short(name)} instantiates itself"
    if how == "deep_nest" and positions:
        path = rng.choice(positions)
        depth = rng.choice([30, 200, 1000, 1500, 3000])
        value = get(tree, path)
        for _ in range(depth):
            value = [value] if rng.random() < 0.5 else {"k": value}
        put(tree, path, value)
        return f"structure: nest {_path(path)} {depth} deep"
    if how in ("repeat", "when") and layers:
        lst, i = rng.choice(layers)
        value = (rng.choice([0, 1, 2, 7, 1000, 50001, 99999, 100000, 100001, 10 ** 6, 10 ** 30,
                             10 ** 5000, -1, 1.5, "3", "${10**5}", "${2**63}", None, True, [2]])
                 if how == "repeat" else
                 rng.choice([False, True, 0, 1, "false", None, "${i == 0}", "${1/0}", [True]]))
        lst[i][how] = value
        if how == "repeat" and rng.random() < 0.3:
            lst[i]["first"] = rng.choice([{}, {"out": 3}, {"stride": 2}, {"nope": 1}, [1]])
        return f"structure: layer {_short(lst[i].get('name'))} {how}: {_short(value)}"
    if how == "input_shape" and isinstance(tree, dict):
        shape = rng.choice([[3, 8, 8], [1, 1, 1], [3, 0, 8], [3, -8, 8], [3, 8], [12], [],
                            [3, 2 ** 40, 2 ** 40], [3, 8, 8, 8], ["3", 8, 8], [3.0, 8, 8],
                            [1, 3, 8, 8], [3, 10 ** 5000, 8], None, "3x8x8", {"c": 3}])
        if "inputs" in tree and isinstance(tree["inputs"], dict) and tree["inputs"]:
            tree["inputs"][rng.choice(list(tree["inputs"]))] = shape
        else:
            tree["input"] = shape
        return f"structure: input shape {_short(shape)}"
    if how == "many_layers" and layers:
        lst, i = rng.choice(layers)
        count = rng.choice([100, 1000, 3000])
        lst[i + 1:i + 1] = [{"name": f"extra{k}", "op": "identity"} for k in range(count)]
        return f"structure: {count} identity layers after {_short(lst[i].get('name'))}"
    if how == "bomb_param" and isinstance(tree, dict):
        params = tree.get("params")
        params = params if isinstance(params, dict) else {}
        params["bomb"] = _bomb()
        tree["params"] = params
        if layers and rng.random() < 0.5:
            lst, i = rng.choice(layers)
            lst[i]["kernel"] = "$bomb"
        return "structure: alias bomb in params"
    if how == "self_ref" and positions:
        path = rng.choice(positions)
        put(tree, path, _self_list() if rng.random() < 0.5 else get(tree, path[:-1]))
        return f"structure: {_path(path)} refers to itself"
    if how == "drop_section" and isinstance(tree, dict) and tree:
        key = rng.choice(list(tree))
        tree[key] = rng.choice([None, [], {}, "", 0])
        return f"structure: top-level {_short(key)} emptied"
    if how == "share" and len(layers) > 1:
        (la, a), (lb, b) = rng.sample(layers, 2)
        la[a] = lb[b]  # one mapping twice (a YAML alias): duplicate names, shared line records
        return "structure: one layer mapping in two places"
    return mutate_value(rng, tree)


TEXT_VALUES = [
    "&a [*a]", "*nowhere", "!!python/object/apply:os.system [echo hi]", "!!binary aGVsbG8=",
    "!!set {a, b}", "2001-12-14", "!!timestamp 2001-12-14t21:59:43.10-05:00", "0x10", "0o17",
    "1_000", ".inf", "-.inf", ".nan", "~", "1" + "0" * 5000, "-" + "9" * 4301, "1.0e+400",
    "[" * 3000 + "]" * 3000, "{a: " * 1500 + "1" + "}" * 1500, '"\\0"', '"a\\nb"', '"\\x1b[31m"',
    "? [a, b]", "yes", "no", "on", "off", "null", "a" * 100000, "!!float 3", "!!int 3.5",
    "!!str 3", "!!map {}", "!!omap [a: 1]", "!!pairs [a: 1]", "|\n  multi\n  line", "'${None}'",
    "'${((9**64)**64)**64}'", "!custom 1", "%", "@x", "`x`", "&anchor 3", "[*a, *a]",
    "=", "<<", "'\t'", '"\\t"', "\t3",
]
CONTROL = ["\x00", "\x01", "\x08", "\x1b", "\x7f", "\t", "\r", "\x0c", "\x85", "\u2028",
           "\ufeff", "\ud7ff", "\U0001f600", ":", "-", "[", "]", "{", "}", "&", "*", "!", "%",
           "@", "`", '"', "'", "#", "|", ">", ",", "?", " ", "\n", "a", "0", "9", "$"]


def mutate_text(rng: random.Random, text: str) -> tuple[str, str]:
    lines = text.split("\n")
    how = rng.choice(["flip", "flip", "delete", "truncate", "dup_line", "swap_lines", "tabs",
                      "value", "value", "value", "alias", "bomb", "documents", "crlf", "bom",
                      "number", "name", "deep_flow", "insert_control"])
    if how in ("flip", "insert_control") and text:
        at = rng.randrange(len(text))
        char = rng.choice(CONTROL)
        if how == "flip":
            return f"text: char {at} -> {char!r}", text[:at] + char + text[at + 1:]
        return f"text: insert {char!r} at {at}", text[:at] + char + text[at:]
    if how == "delete" and text:
        at = rng.randrange(len(text))
        span = rng.choice([1, 2, 5, 20, 100])
        return f"text: delete {span} at {at}", text[:at] + text[at + span:]
    if how == "truncate" and text:
        at = rng.randrange(len(text))
        return f"text: truncate at {at}", text[:at]
    if how == "dup_line" and lines:
        i = rng.randrange(len(lines))
        return f"text: duplicate line {i + 1}", "\n".join(lines[:i + 1] + lines[i:])
    if how == "swap_lines" and len(lines) > 1:
        i, j = rng.sample(range(len(lines)), 2)
        lines[i], lines[j] = lines[j], lines[i]
        return f"text: swap lines {i + 1} and {j + 1}", "\n".join(lines)
    if how == "tabs":
        indented = [i for i, line in enumerate(lines) if line.startswith("  ")]
        if indented:
            i = rng.choice(indented)
            lines[i] = "\t" + lines[i].lstrip(" ")
            return f"text: tab indentation on line {i + 1}", "\n".join(lines)
    pairs = [i for i, line in enumerate(lines) if re.match(r"\s*(- )?[\w]+: \S", line)]
    if how == "value" and pairs:
        i = rng.choice(pairs)
        value = rng.choice(TEXT_VALUES)
        lines[i] = re.sub(r"^(\s*(- )?[\w]+: ).*$", lambda m: m.group(1) + value, lines[i])
        return f"text: line {i + 1} value {value[:30]!r}", "\n".join(lines)
    if how == "alias" and len(pairs) > 1:
        i, j = sorted(rng.sample(pairs, 2))
        lines[i] = re.sub(r"^(\s*(- )?[\w]+: )", r"\1&x ", lines[i])
        lines[j] = re.sub(r"^(\s*(- )?[\w]+: ).*$", r"\1*x", lines[j])
        return f"text: line {j + 1} aliases line {i + 1}", "\n".join(lines)
    if how == "bomb":
        bomb = ["  l0: &l0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
        bomb += [f"  l{k}: &l{k} [" + ", ".join([f"*l{k - 1}"] * 9) + "]" for k in range(1, 9)]
        at = next((i for i, line in enumerate(lines) if line.startswith("params:")), None)
        if at is None or lines[at].strip() != "params:":
            lines = [line for line in lines if not line.startswith("params:")]
            lines.append("params:")
            at = len(lines) - 1
        lines[at + 1:at + 1] = bomb
        return "text: alias bomb in params", "\n".join(lines)
    if how == "documents":
        return "text: a second document", text + "\n---\nname: other\n"
    if how == "crlf":
        return "text: CRLF line ends", text.replace("\n", "\r\n")
    if how == "bom":
        return "text: byte-order mark", "\ufeff" + text
    if how == "number":
        numbers = list(re.finditer(r"(?<![\w.])\d+(?![\w.])", text))
        if numbers:
            m = rng.choice(numbers)
            new = rng.choice(["-1", "0", "99999999999999999999", "1.0e+400", "3.5", "1" + "0" * 5000,
                              "0x7fffffffffffffff", "-0", "1e3", "65536"])
            return f"text: number at {m.start()} -> {new[:20]}", text[:m.start()] + new + text[m.end():]
    if how == "name":
        words = list(re.finditer(r"(?<=name: )\w+|(?<=inputs: \[)\w+|(?<=block: )\w+", text))
        if words:
            m = rng.choice(words)
            new = rng.choice(["x", "input", m.group() + "2", "a-b", "1x", "stem", "conv", "fc"])
            return f"text: name {m.group()!r} -> {new!r}", text[:m.start()] + new + text[m.end():]
    if how == "deep_flow" and pairs:
        i = rng.choice(pairs)
        depth = rng.choice([100, 1000, 5000])
        lines[i] = re.sub(r"^(\s*(- )?[\w]+: ).*$", lambda m: m.group(1) + "[" * depth + "1"
                          + "]" * depth, lines[i])
        return f"text: line {i + 1} nested {depth} deep", "\n".join(lines)
    at = rng.randrange(len(text) + 1)
    return f"text: insert '\\x00' at {at}", text[:at] + "\x00" + text[at:]


def _path(path: tuple) -> str:
    return "/".join(str(p) for p in path) or "(top)"


# ------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    seed: int
    index: int
    source: str
    mutations: list[str] = field(default_factory=list)
    form: str = "dict"  # "dict", ".yaml", ".json"
    data: Any = None  # the spec dict (form "dict") or the file text
    variant: Any = None
    input_shape: Any = None
    cli: list[str] | None = None  # also run `cnngraph show FILE` + these options

    def describe(self) -> str:
        call = "".join(f", {k}={_short(v)}" for k, v in (("variant", self.variant),
                       ("input_shape", self.input_shape), ("cli show", self.cli)) if v is not None)
        return (f"seed {self.seed} case {self.index}: {self.source} as {self.form}{call}; "
                + ("; ".join(self.mutations) or "unmutated"))


def sources() -> dict[str, str]:
    """name -> YAML text of every source: the zoo files and the small specs."""
    out = {f"zoo/{p.name}": p.read_text(encoding="utf-8") for p in sorted(ZOO.glob("*.yaml"))}
    out.update({f"small/{k}": v.lstrip() for k, v in SMALL.items()})
    return out


_SOURCES: dict[str, tuple[str, Any]] = {}


def _source(name: str) -> tuple[str, Any]:
    if not _SOURCES:
        _SOURCES.update({k: (t, yaml.safe_load(t)) for k, t in sources().items()})
    return _SOURCES[name]


def make_case(seed: int, index: int) -> Case:
    """Case `index` of `seed`: the same on every machine and run."""
    rng = random.Random(f"cnngraph-fuzz/{seed}/{index}")
    _source("zoo/lenet5.yaml")
    name = rng.choice(sorted(_SOURCES))
    text, tree = _source(name)
    case = Case(seed, index, name)
    tree = copy.deepcopy(tree)
    if name.startswith("zoo/") and rng.random() < 0.6:
        cheapen(tree)
        case.mutations.append("cheap")
        text = None
    level = rng.choices(["none", "value", "structure", "text"], [0.04, 0.38, 0.3, 0.28])[0]
    count = rng.choice([1, 1, 1, 2, 3])
    if level in ("value", "structure"):
        for _ in range(count):
            mutate = (mutate_structure if level == "structure" else
                      mutate_plausible if rng.random() < 0.4 else mutate_value)
            case.mutations.append(mutate(rng, tree))
        text = None
    if level == "text":
        form = ".yaml" if rng.random() < 0.85 else ".json"
        if text is None or form == ".json":
            text = _dump(tree, form) or _source(name)[0]
        for _ in range(count):
            what, text = mutate_text(rng, text)
            case.mutations.append(what)
        case.form, case.data = form, text
    else:
        form = rng.choices(["dict", ".yaml", ".json"], [0.45, 0.45, 0.1])[0]
        dumped = None
        if form != "dict":
            dumped = text if text is not None and form == ".yaml" else _dump(tree, form)
        case.form, case.data = (form, dumped) if dumped is not None else ("dict", tree)
    variants = tree.get("variants") if isinstance(tree, dict) else None
    if isinstance(variants, dict) and variants and rng.random() < 0.7:
        case.variant = rng.choice(list(variants))
    if rng.random() < 0.05:
        case.variant = rng.choice(["nope", "", 1, ["resnet18"], None, "resnet18"])
    if rng.random() < 0.05:
        case.input_shape = rng.choice([[3, 8, 8], [1, 3, 8, 8], [1, 8, 8], [0, 8, 8], [3, -1, 8],
                                       [3, 8], "3,8,8", [3.0, 8, 8], {"image": [3, 8, 8]},
                                       {"nope": [1]}, [3, 2 ** 62, 1], [True, 8, 8], None])
    if case.form != "dict" and rng.random() < 0.15:
        case.cli = rng.choice([[], [], ["--json"], ["--input-shape", "1,3,16,16"],
                               ["--input-shape", "x"], ["--input-shape", "3,99999999999,1"]])
        if isinstance(case.variant, str):
            case.cli += ["--variant", case.variant]
    return case


def _dump(tree: Any, form: str) -> str | None:
    """`tree` as YAML or JSON text, or None when it cannot be written (a huge int, a
    self-referencing list, a tuple key: those stay dicts)."""
    if _expanded_size(tree) > 20_000:  # an alias bomb: JSON would write every copy
        return None
    try:
        if form == ".json":
            return json.dumps(tree, allow_nan=True)
        return yaml.dump(tree, Dumper=DUMPER, sort_keys=False, allow_unicode=True, width=100)
    except (ValueError, TypeError, RecursionError, yaml.YAMLError):
        return None


def _expanded_size(tree: Any, limit: int = 20_000) -> int:
    """Items in `tree` with shared references counted each time (stops past `limit`)."""
    count, stack = 1, [tree] if isinstance(tree, (dict, list)) else []
    while stack and count <= limit:
        node = stack.pop()
        children = node.values() if isinstance(node, dict) else node
        count += len(children)
        stack.extend(c for c in children if isinstance(c, (dict, list)))
    return count


# ------------------------------------------------------------------------------------------
# Running one case (in a worker)


def _is_user_error(exc: BaseException) -> bool:
    from cnngraph.errors import CnnGraphError

    return isinstance(exc, CnnGraphError)


def _message_problem(exc: BaseException, file: str | None) -> str | None:
    """Why a CnnGraphError's message is not fit for a user, or None. `file`: the spec file
    loaded, which a SpecError must name."""
    from cnngraph.errors import SpecError

    try:
        message = str(exc)
    except Exception as inner:  # noqa: BLE001 - a message that cannot even be built
        return f"str() of the error raised {type(inner).__name__}"
    if not message.strip():
        return "empty message"
    if "\n" in message or "\r" in message:
        return "multi-line message"
    if not message.isprintable():
        return "control characters in the message"
    if len(message) > 2000:
        return f"message of {len(message)} characters"
    if isinstance(exc, SpecError) and file is not None and file not in message and Path(file).name not in message:
        return "message does not name the file"
    return None


def _where(exc: BaseException) -> str:
    """The innermost frame of cnngraph's own code (or the innermost at all)."""
    frames = traceback.extract_tb(exc.__traceback__)
    own = [f for f in frames if "cnngraph" in f.filename or "exporters" in f.filename]
    frame = (own or frames or [None])[-1]
    if frame is None:
        return "?"
    path = frame.filename
    for root in ("cnngraph/", "exporters/"):
        if root in path:
            path = root + path.rsplit(root, 1)[1]
            break
    return f"{path}:{frame.lineno} ({frame.name})"


def run_case(case: Case, workdir: str) -> dict:
    """Runs the pipeline on `case`; the result: stage reached, outcome and, for an error, its
    type, message and place."""
    result = {"index": case.index, "stage": "load", "outcome": "ok"}
    file = None
    try:
        import cnngraph

        if case.form == "dict":
            target = case.data
        else:
            file = os.path.join(workdir, f"case{case.index}{case.form}")
            with open(file, "w", encoding="utf-8", errors="surrogatepass") as f:
                f.write(case.data)
            target = file
        if case.cli is not None:
            result["stage"], result["cli"] = "cli", True
            problem = _cli_problem(["show", file, *case.cli])
            if problem:
                result.update(outcome="finding", error="CLI", where="cnngraph show",
                              message=problem[:300], problem="`cnngraph show` output")
                return result
            result["stage"] = "load"
        kwargs = {k: v for k, v in (("variant", case.variant), ("input_shape", case.input_shape))
                  if v is not None}
        graph = cnngraph.load(target, **kwargs)
        if not _cheap(graph):
            result["outcome"] = "big"
            return result
        _pipeline(graph, result, workdir, case.index)
    except Exception as exc:  # noqa: BLE001 - the point: classify everything
        user = _is_user_error(exc)
        problem = _message_problem(exc, file if result["stage"] == "load" else None) if user else None
        result.update(outcome="error" if user and problem is None else "finding",
                      error=type(exc).__name__, message=_safe_str(exc)[:300], where=_where(exc),
                      problem=problem or ("" if user else "not a CnnGraphError"))
    finally:
        if file is not None and os.path.exists(file):
            os.unlink(file)
    return result


def _cli_problem(argv: list[str]) -> str | None:
    """What is wrong with what `cnngraph ARGV` did, or None: it must exit 0, or 2 with one
    line `cnngraph CMD: error: ...` on stderr; an exception escaping main is a traceback."""
    import contextlib
    import io

    from cnngraph import cli

    out, err = io.StringIO(), io.StringIO()
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = cli.main(argv)
    except Exception as exc:  # noqa: BLE001 - what the user would see as a traceback
        return f"traceback: {type(exc).__name__}: {_safe_str(exc)} at {_where(exc)}"
    text = err.getvalue()
    if code == 0:
        return None
    if code != 2 or text.count("\n") != 1 or not text.startswith(f"cnngraph {argv[0]}: error: "):
        return f"exit {code}, stderr {text[:200]!r}"
    return None


def _safe_str(exc: BaseException) -> str:
    try:
        return str(exc).replace("\n", "\\n")
    except Exception:  # noqa: BLE001
        return f"<{type(exc).__name__}: str() failed>"


def _cheap(graph) -> bool:
    if len(graph) > MAX_NODES or graph.params > MAX_PARAMS or graph.macs > MAX_MACS:
        return False
    return sum(math.prod(n.shape[1:]) for n in graph) <= MAX_ACTIVATIONS


def _pipeline(graph, result: dict, workdir: str, index: int) -> None:
    import numpy as np
    import onnxruntime as ort
    import torch

    import cnngraph
    from exporters import export_onnx

    result["stage"] = "build"
    torch.manual_seed(index)
    module = cnngraph.build(graph)
    result["stage"] = "forward"
    inputs = [torch.randn(2, *node.shape[1:]) for node in graph.inputs]
    module.train()
    outs = module(*inputs)
    loss = sum(o.float().sum() for o in (outs.values() if isinstance(outs, dict) else [outs]))
    if loss.requires_grad:  # a net of no parameters (concat of its inputs) has no gradient
        loss.backward()
    module.eval()
    with torch.no_grad():
        expected = module(*inputs)
    if not isinstance(expected, dict):
        expected = {graph.active_outputs(False)[0].name: expected}
    result["stage"] = "export"
    path = os.path.join(workdir, f"case{index}.onnx")
    try:
        export_onnx(graph, module, path)
        result["stage"] = "onnxruntime"
        options = ort.SessionOptions()
        options.intra_op_num_threads = 1
        options.log_severity_level = 3
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feeds = {node.name: x.numpy() for node, x in zip(graph.inputs, inputs)}
        got = dict(zip([o.name for o in session.get_outputs()], session.run(None, feeds)))
    finally:
        if os.path.exists(path):
            os.unlink(path)
    for name, want in expected.items():
        want = want.numpy()
        have = got.get(name)
        scale = 1.0 + float(np.nanmax(np.abs(np.where(np.isfinite(want), want, 0))))
        if have is None or have.shape != want.shape or not np.allclose(
                have, want, rtol=1e-3, atol=1e-4 * scale, equal_nan=True):
            diff = "missing" if have is None else (
                f"shape {have.shape} vs {want.shape}" if have.shape != want.shape
                else f"max |diff| {float(np.nanmax(np.abs(have - want))):.3g}")
            result.update(outcome="finding", error="Mismatch", where="exporters",
                          message=f"output '{name}': onnxruntime and torch differ ({diff})",
                          problem="onnxruntime disagrees with torch")
            return


# ------------------------------------------------------------------------------------------
# Workers and the driver


def worker_main(seed: int, timeout: float, log: str) -> None:
    """Reads case indices on stdin, writes one JSON result per line on the protocol fd."""
    import faulthandler
    import resource

    proto = os.fdopen(os.dup(1), "w")
    os.dup2(2, 1)  # stray prints go to the log, never into the protocol
    limit = 6 * 1024 ** 3
    try:
        resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    except (ValueError, OSError):
        pass
    log_file = open(log, "a")
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch
    import warnings

    torch.set_num_threads(1)
    warnings.simplefilter("ignore")
    import cnngraph  # noqa: F401 - warm up the imports before the first case's clock
    import exporters  # noqa: F401
    import onnxruntime  # noqa: F401

    with tempfile.TemporaryDirectory(prefix="cnngraph-fuzz-") as workdir:
        warm = Case(seed, -1, "small/exotic", data=yaml.safe_load(SMALL["exotic"]))
        run_case(warm, workdir)  # the custom ops' first call costs seconds: not a case's time
    proto.write("ready\n")
    proto.flush()
    with tempfile.TemporaryDirectory(prefix="cnngraph-fuzz-") as workdir:
        for line in sys.stdin:
            index = int(line)
            log_file.write(f"--- case {index}\n")
            log_file.flush()
            faulthandler.dump_traceback_later(max(1.0, timeout - 1), file=log_file)
            start = time.perf_counter()
            try:
                result = run_case(make_case(seed, index), workdir)
            except BaseException as exc:  # noqa: BLE001 - a fuzzer bug: report, go on
                result = {"index": index, "stage": "fuzzer", "outcome": "finding",
                          "error": type(exc).__name__, "message": _safe_str(exc)[:300],
                          "where": _where(exc), "problem": "the fuzzer itself failed"}
            faulthandler.cancel_dump_traceback_later()
            result["seconds"] = round(time.perf_counter() - start, 4)
            proto.write(json.dumps(result) + "\n")
            proto.flush()


class Worker:
    def __init__(self, seed: int, timeout: float, logdir: str, number: int):
        self.log = os.path.join(logdir, f"worker{number}.log")
        self.args = [sys.executable, "-m", "cnngraph.fuzz", "--worker", "--seed", str(seed),
                     "--timeout", str(timeout), "--log", self.log]
        self.proc: subprocess.Popen | None = None
        self.index: int | None = None
        self.started = 0.0

    def start(self) -> None:
        env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONHASHSEED="0")
        root = str(Path(__file__).resolve().parent.parent)
        env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
        with open(self.log, "a") as err:
            self.proc = subprocess.Popen(self.args, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=err, text=True, bufsize=1, env=env)
        self.ready = False

    def send(self, index: int) -> None:
        self.index, self.started = index, time.monotonic()
        self.proc.stdin.write(f"{index}\n")
        self.proc.stdin.flush()

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.wait()
            self.proc = None

    def log_tail(self) -> str:
        """The faulthandler stack of the case that hung: the innermost cnngraph frame."""
        try:
            text = Path(self.log).read_text(errors="replace")
        except OSError:
            return "?"
        last = text.rsplit("--- case", 1)[-1]
        frames = re.findall(r'File "([^"]+)", line (\d+) in (\w+)', last)
        own = [f for f in frames if "cnngraph" in f[0] or "exporters" in f[0]]
        if not (own or frames):
            return "?"
        path, line, name = (own or frames)[0]  # faulthandler lists the innermost frame first
        for root in ("cnngraph/", "exporters/"):
            if root in path:
                path = root + path.rsplit(root, 1)[1]
                break
        return f"{path}:{line} ({name})"


@dataclass
class Report:
    seed: int
    cases: int
    results: list[dict]
    seconds: float

    @property
    def findings(self) -> list[dict]:
        return [r for r in self.results if r["outcome"] in ("finding", "hang", "crash")]

    @property
    def hangs(self) -> list[dict]:
        return [r for r in self.results if r["outcome"] == "hang"]

    def outcomes(self) -> Counter:
        """(stage, outcome) counts: e.g. ('load', 'error'), ('onnxruntime', 'ok')."""
        return Counter((r["stage"], r["outcome"]) for r in self.results)

    def causes(self) -> Counter:
        """Distinct findings: (exception, place, problem)."""
        return Counter((r.get("error", r["outcome"]), r.get("where", "?"), r.get("problem", ""))
                       for r in self.findings)

    def summary(self, examples: int = 3) -> str:
        lines = [f"seed {self.seed}: {self.cases} cases in {self.seconds:.1f} s; "
                 f"{len(self.findings)} findings ({len(self.hangs)} hangs), "
                 f"{len(self.causes())} distinct causes"]
        order = {s: i for i, s in enumerate(("fuzzer",) + STAGES)}
        for (stage, outcome), n in sorted(self.outcomes().items(),
                                          key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
            lines.append(f"  {stage:12} {outcome:8} {n}")
        lines.append(f"  (`cnngraph show` also run on {sum('cli' in r for r in self.results)})")
        by_cause: dict[tuple, list[dict]] = {}
        for r in self.findings:
            by_cause.setdefault((r.get("error", r["outcome"]), r.get("where", "?"),
                                 r.get("problem", "")), []).append(r)
        for (error, where, problem), rs in sorted(by_cause.items(), key=lambda kv: -len(kv[1])):
            lines.append(f"{len(rs):5} x {error} at {where} [{problem}]")

            for r in rs[:examples]:
                try:
                    case = make_case(self.seed, r["index"]).describe()
                except Exception as exc:  # noqa: BLE001 - a fuzzer bug: the finding says so
                    case = f"seed {self.seed} case {r['index']}: ({type(exc).__name__})"
                lines.append(f"        {case[:300]}")
                lines.append(f"          -> {r.get('message', '')[:200]}")
        return "\n".join(lines)


def run(seed: int = 0, cases: int = 2000, *, start: int = 0, workers: int = 2,
        timeout: float = 20.0, progress: bool = False) -> Report:
    """Runs cases start..start+cases-1 of `seed` in `workers` processes."""
    began = time.monotonic()
    todo = list(range(start, start + cases))
    todo.reverse()
    results: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cnngraph-fuzz-logs-") as logdir:
        pool = [Worker(seed, timeout, logdir, k) for k in range(max(1, workers))]
        for w in pool:
            w.start()
        try:
            while todo or any(w.index is not None for w in pool):
                for w in pool:
                    if w.proc is None:
                        w.start()
                    if w.ready and w.index is None and todo:
                        w.send(todo.pop())
                streams = {w.proc.stdout: w for w in pool}
                ready, _, _ = select.select(list(streams), [], [], 0.5)
                for stream in ready:
                    w = streams[stream]
                    line = stream.readline()
                    if not line:  # the worker died
                        code = w.proc.wait()
                        if w.index is not None:
                            results.append({"index": w.index, "stage": "?", "outcome": "crash",
                                            "error": f"exit {code}", "where": w.log_tail(),
                                            "problem": "the worker died",
                                            "message": f"worker exited with status {code}"})
                        elif not w.ready:
                            raise RuntimeError(f"fuzz worker failed to start (exit {code}): "
                                               + Path(w.log).read_text(errors="replace")[-2000:])
                        w.proc, w.index = None, None
                        continue
                    if line.strip() == "ready":
                        w.ready = True
                        continue
                    results.append(json.loads(line))
                    w.index = None
                    if progress and len(results) % 500 == 0:
                        print(f"  {len(results)} cases, {time.monotonic() - began:.0f} s",
                              file=sys.stderr, flush=True)
                now = time.monotonic()
                for w in pool:
                    if w.index is not None and now - w.started > timeout:
                        where = w.log_tail()
                        w.kill()
                        results.append({"index": w.index, "stage": "?", "outcome": "hang",
                                        "error": "Hang", "where": where,
                                        "problem": f"over {timeout:g} s",
                                        "message": f"still running after {timeout:g} s"})
                        w.index = None
        finally:
            for w in pool:
                w.kill()
    results.sort(key=lambda r: r["index"])
    return Report(seed, cases, results, time.monotonic() - began)


def show(seed: int, index: int) -> str:
    """One case in full: what was done to which source, and the spec as loaded."""
    case = make_case(seed, index)
    data = case.data if case.form != "dict" else (_dump(case.data, ".yaml") or _SHOW.repr(case.data))
    return case.describe() + "\n" + data


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--cases", type=int, default=2000)
    parser.add_argument("--start", type=int, default=0, help="first case index")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--timeout", type=float, default=20.0, help="seconds per case (a hang)")
    parser.add_argument("--case", type=int, help="run (or --show) this one case only")
    parser.add_argument("--show", action="store_true", help="print the case, do not run it")
    parser.add_argument("--json", help="write every result to this file")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--log", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker_main(args.seed, args.timeout, args.log)
        return 0
    if args.case is not None:
        if args.show:
            print(show(args.seed, args.case))
            return 0
        report = run(args.seed, 1, start=args.case, workers=1, timeout=args.timeout)
    else:
        report = run(args.seed, args.cases, start=args.start, workers=args.workers,
                     timeout=args.timeout, progress=True)
    if args.json:
        Path(args.json).write_text(json.dumps(report.results, indent=0))
    print(report.summary())
    return 1 if report.findings else 0


if __name__ == "__main__":
    sys.exit(main())
