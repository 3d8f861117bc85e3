"""A spec's `meta.init`: how `cnngraph.build` initialises the parameters, per op and per layer,
so that each family starts as its reference implementation does (torchvision's DenseNet uses
fan-in Kaiming convolutions, its ResNet and VGG fan-out ones: with the wrong one a fresh
densenet121 gives logits near 1e7).

    init:
      conv2d: {weight: kaiming_normal_fan_in}          # every layer of that op
      batch_norm: {weight: 1, bias: 0}
      linear: {weight: pytorch, bias: 0}
      layers: {"AuxLogits.fc": {weight: {trunc_normal: 0.001}}}   # by layer path, fnmatch

A rule is a number (a constant), a scheme name (`kaiming_normal_fan_in`, `kaiming_normal_fan_out`,
`kaiming_uniform_fan_in`, `pytorch`) or a one-key mapping (`{normal: STD}`, `{trunc_normal: STD}`, `{uniform: BOUND}`). `check` is the
checker's half (no torch); `apply` the builder's.
"""
from __future__ import annotations

import fnmatch
import math
from typing import Any, Callable

OPS = {"conv2d": "conv", "conv_transpose2d": "conv", "linear": "linear", "batch_norm": "norm"}
PARAMS = ("weight", "bias")
NAMED = {  # scheme -> what it draws from (fan: that of the layer's weight)
    "kaiming_normal_fan_in": "normal(0, sqrt(2 / fan_in))",
    "kaiming_normal_fan_out": "normal(0, sqrt(2 / fan_out))",
    "kaiming_uniform_fan_in": "uniform(-sqrt(6 / fan_in), sqrt(6 / fan_in)), SqueezeNet's",
    "pytorch": "uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)), PyTorch's own default",
}
WITH_STD = ("normal", "trunc_normal", "uniform")  # normal(0, STD); trunc_normal cut to [-2, 2];
# uniform(-STD, STD): EfficientNet's and MnasNet's classifiers
TRUNCATE = 2.0
LIMIT = 1e6  # the largest constant or std accepted


def _number(x: Any) -> bool:
    """A finite int or float within LIMIT (NaN and inf compare false; a huge int exactly)."""
    return isinstance(x, (int, float)) and not isinstance(x, bool) and abs(x) <= LIMIT


def _show(x: Any) -> str:
    """A value for a one-line message: repr, cut short (a 5,000-digit int has no repr)."""
    try:
        text = repr(x)
    except ValueError:
        return "a huge integer"
    return text if len(text) <= 60 else text[:57] + "..."


def _name(x: Any) -> str:
    """A key for a message path: as written when it is a short printable string."""
    return x if isinstance(x, str) and x.isprintable() and len(x) <= 60 else _show(x)


def check(meta: dict, graph, fail: Callable[[str, Any, Any], Exception]) -> None:
    """Raise `fail(message, mapping, key)` (a one-line SpecError at that key's line) for the
    first rule of `meta["init"]` that is not one of the above. An op rule may name an op the
    network lacks (a family's variants differ: vgg11 has no batch norm, vgg11_bn has); a
    `layers` pattern must match a layer."""
    init = meta["init"]
    if not isinstance(init, dict):
        raise fail(f"`meta.init` must map op names (and `layers`) to rules, got {_show(init)}: "
                   "write e.g. `init: {conv2d: {weight: kaiming_normal_fan_out}}`", meta, "init")
    for key, rules in init.items():
        if key == "layers":
            if not isinstance(rules, dict):
                raise fail("`meta.init.layers` must map layer name patterns to rules", init, key)
            for pattern, layer_rules in rules.items():
                matched = [node for node in graph if isinstance(pattern, str)
                           and node.op in OPS and fnmatch.fnmatchcase(node.name, pattern)]
                if not matched:
                    raise fail(f"`meta.init.layers`: {_show(pattern)} names no layer of op "
                               f"{', '.join(OPS)}: give a layer path such as 'layer1.0.conv1' "
                               "(wildcards * and ? allowed)", rules, pattern)
                for op in {node.op for node in matched}:
                    _check_rules(layer_rules, OPS[op], f"layers.{_name(pattern)}", rules, pattern,
                                 fail)
            continue
        if key not in OPS:
            raise fail(f"`meta.init.{_name(key)}`: not an op with parameters to initialise; the "
                       f"keys are {', '.join(OPS)} and layers", init, key)
        _check_rules(rules, OPS[key], key, init, key, fail)


def _check_rules(rules: Any, kind: str, where: str, parent: dict, key: Any, fail) -> None:
    if not isinstance(rules, dict) or not rules:
        raise fail(f"`meta.init.{where}` must map weight/bias to a rule, got {_show(rules)}",
                   parent, key)
    for param, rule in rules.items():
        if param not in PARAMS:
            raise fail(f"`meta.init.{where}.{_name(param)}`: the parameters are weight and bias",
                       rules, param)
        if _number(rule):
            continue
        text = f"`meta.init.{where}.{param}`"
        if isinstance(rule, str) and rule in NAMED:
            if kind == "norm":
                raise fail(f"{text}: {rule} needs a convolution's or linear layer's fan; give a "
                           "number for a batch norm", rules, param)
            if rule.startswith("kaiming") and param == "bias":
                raise fail(f"{text}: {rule} is for weights; give a bias a number or pytorch",
                           rules, param)
            continue
        if isinstance(rule, dict) and len(rule) == 1 and next(iter(rule)) in WITH_STD:
            std = next(iter(rule.values()))
            if _number(std) and std > 0:
                continue
            raise fail(f"{text}: the std must be a number in (0, {LIMIT:g}], got {_show(std)}",
                       rules, param)
        raise fail(f"{text}: unknown rule {_show(rule)}: give a number, one of "
                   f"{', '.join(NAMED)}, or {{normal: STD}} / {{trunc_normal: STD}} / "
                   "{uniform: BOUND}", rules, param)


def rules_for(init: dict, node) -> dict:
    """The rules of one layer: its op's, then those of every `layers` pattern it matches."""
    rules = dict(init.get(node.op) or {})
    for pattern, layer_rules in (init.get("layers") or {}).items():
        if fnmatch.fnmatchcase(node.name, pattern):
            rules.update(layer_rules)
    return rules


def apply(module, graph) -> None:
    """Initialise the built module's parameters by `graph.meta["init"]` (layers in graph order,
    so a seeded build is reproducible). Modules other than the plain torch layers (a connection
    table, deformable or gated convolutions) keep their own initialisation."""
    import torch
    from torch import nn

    init = (getattr(graph, "meta", None) or {}).get("init")
    if not init:
        return
    kinds = (nn.Conv2d, nn.ConvTranspose2d, nn.Linear, nn.modules.batchnorm._BatchNorm)
    with torch.no_grad():
        for node in graph:
            if node.op not in OPS:
                continue
            layer = module.get_submodule(node.name)
            if not isinstance(layer, kinds):
                continue
            for param, rule in rules_for(init, node).items():
                tensor = getattr(layer, param, None)
                if tensor is not None:
                    _fill(tensor, rule, layer.weight)


def _fill(tensor, rule, weight) -> None:
    from torch import nn

    if not isinstance(rule, (str, dict)):
        nn.init.constant_(tensor, float(rule))
        return
    if isinstance(rule, dict):
        (name, std), = rule.items()
        if name == "normal":
            nn.init.normal_(tensor, 0.0, float(std))
        elif name == "uniform":
            nn.init.uniform_(tensor, -float(std), float(std))
        else:
            nn.init.trunc_normal_(tensor, 0.0, float(std), -TRUNCATE, TRUNCATE)
        return
    fan_in, fan_out = _fans(weight)
    if rule == "pytorch":
        bound = 1.0 / math.sqrt(fan_in)
        nn.init.uniform_(tensor, -bound, bound)
    elif rule == "kaiming_uniform_fan_in":
        bound = math.sqrt(6.0 / fan_in)
        nn.init.uniform_(tensor, -bound, bound)
    else:
        fan = fan_in if rule == "kaiming_normal_fan_in" else fan_out
        nn.init.normal_(tensor, 0.0, math.sqrt(2.0 / fan))


def _fans(weight) -> tuple[int, int]:
    """(fan_in, fan_out) as PyTorch counts them: dims 1 and 0 of the weight, times the kernel
    area (a transposed convolution's weight is (in, out / groups, kh, kw))."""
    area = math.prod(weight.shape[2:])
    return weight.shape[1] * area, weight.shape[0] * area
