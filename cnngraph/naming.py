"""Other libraries' weight names, as a family declares them under `meta.naming` (docs/SPEC.md,
docs/pretrained.md): the rules that turn our layer paths into theirs. Torch-free, so that
loading a spec checks them (compiler.check_meta); cnngraph.pretrained applies them."""
from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from .errors import SpecError
from .graph import Graph

MAX_PATTERN = 300  # characters of one rule's regex or template
_FIELD = re.compile(r"\{(\d+)([+-]\d+)?\}")


def check(graph: Graph, naming: Any) -> None:
    """`meta.naming` (given: graph.meta is filled after the checks) checked, every naming's
    rules applied once to the graph's layers: a SpecError naming `meta.naming.NAME...`."""
    for name, entry in namings_of(graph, naming).items():
        norm = entry["normalize"]
        if norm is not None and not (isinstance(norm, Mapping) and set(norm) == {"mean", "std"}
                                     and all(isinstance(v, list) and v and all(
                                         isinstance(x, (int, float)) and not isinstance(x, bool)
                                         for x in v) for v in norm.values())
                                     and all(x > 0 for x in norm["std"])):
            raise SpecError(f"`meta.naming.{name}.normalize` must be {{mean: [...], std: [...]}} "
                            "with numbers, std > 0", file=graph.source)
        rename_keys(graph, entry["rules"], [], f"meta.naming.{name}")


def namings_of(graph: Graph, naming: Any = None) -> dict[str, dict[str, Any]]:
    """The family's declared namings (`naming`, default graph.meta's), {name: {rules,
    normalize}}, their form checked (SpecError)."""
    naming = (graph.meta.get("naming") if naming is None else naming) or {}
    where = graph.source or graph.name
    if not isinstance(naming, Mapping):
        raise SpecError("`meta.naming` must map a naming's name to {rules: [...]} "
                        "(docs/pretrained.md)", file=where)
    out = {}
    for name, entry in naming.items():
        if not isinstance(entry, Mapping) or not isinstance(entry.get("rules", []), list) \
                or set(entry) - {"rules", "normalize"}:
            raise SpecError(f"`meta.naming.{name}` must be {{rules: [...], normalize: "
                            "{mean, std} (optional)}} (docs/pretrained.md)", file=where)
        out[str(name)] = {"rules": entry.get("rules") or [], "normalize": entry.get("normalize")}
    return out


def rename_keys(graph: Graph, rules: list, keys: list[str],
                where: str = "meta.naming") -> dict[str, str]:
    """Our state_dict key -> the other library's: each key's layer path renamed by the path
    rules, the parameter name appended, then the `key: true` renames applied to the whole key."""
    paths = rename_paths(graph, rules, where)
    out = {}
    for key in keys:
        layer = _layer(key, paths)
        out[key] = paths.get(layer, layer) + key[len(layer):]
    for i, rule in enumerate(rules):
        if isinstance(rule, Mapping) and rule.get("key"):
            rename = _renamer(rule, f"{where}.rules[{i}]", graph)
            out = {ours: rename(theirs) for ours, theirs in out.items()}
    return out


def rename_paths(graph: Graph, rules: list, where: str = "meta.naming") -> dict[str, str]:
    """Our layer path -> the other library's module path, for every layer (inputs aside), by
    the rules other than the `key: true` renames."""
    nodes = [n for n in graph if n.op != "input"]
    paths = [n.name for n in nodes]
    for i, rule in enumerate(rules):
        place = f"{where}.rules[{i}]"
        if not isinstance(rule, Mapping):
            raise SpecError(f"`{place}` must be {{rename: REGEX, to: TEMPLATE}} or "
                            "{sequential: SCOPE}", file=graph.source)
        if "rename" in rule and set(rule) <= {"rename", "to", "key"}:
            rename = _renamer(rule, place, graph)
            if not rule.get("key"):
                paths = [rename(p) for p in paths]
        elif "sequential" in rule and set(rule) <= {"sequential", "flat", "skip"}:
            scope = _regex(rule["sequential"], place, graph)
            skip = set(rule.get("skip") or ())
            paths = _number(paths, [n.op for n in nodes], scope, bool(rule.get("flat")), skip)
        else:
            raise SpecError(f"`{place}` has keys {sorted(rule)}: a rule is {{rename: REGEX, "
                            "to: TEMPLATE, key: bool} or {sequential: SCOPE, flat: bool, skip: [op]} "
                            "(docs/pretrained.md)", file=graph.source)
    return dict(zip((n.name for n in nodes), paths))


def _number(paths: list[str], ops: list[str], scope: re.Pattern, flat: bool,
            skip: set[str]) -> list[str]:
    """nn.Sequential's numbering of the children (or, flat, of the layers) of each scope."""
    counters: dict[str, dict[str, int]] = {}
    out = []
    for path, op in zip(paths, ops):
        parts = path.split(".")
        k = next((k for k in range(1, len(parts)) if scope.fullmatch(".".join(parts[:k]))), None)
        if k is None or op in skip:
            out.append(path)
            continue
        prefix = ".".join(parts[:k])
        child = ".".join(parts[k:]) if flat else parts[k]
        numbers = counters.setdefault(prefix, {})
        number = numbers.setdefault(child, len(numbers))
        rest = [] if flat else parts[k + 1:]
        out.append(".".join([prefix, str(number), *rest]))
    return out


def _layer(key: str, layers) -> str:
    """The layer path of a state_dict key: its longest prefix that is a layer."""
    layer = key
    while layer not in layers and "." in layer:
        layer = layer.rsplit(".", 1)[0]
    return layer


def _renamer(rule: Mapping, place: str, graph: Graph):
    pattern, template = _regex(rule["rename"], place, graph), rule.get("to")
    if not isinstance(template, str) or len(template) > MAX_PATTERN:
        raise SpecError(f"`{place}.to` must be a text of at most {MAX_PATTERN} characters",
                        file=graph.source)
    return lambda path: pattern.sub(lambda m: _fill(template, m, place, graph), path, count=1)


def _regex(pattern: Any, place: str, graph: Graph) -> re.Pattern:
    if not isinstance(pattern, str) or len(pattern) > MAX_PATTERN:
        raise SpecError(f"`{place}` needs a regular expression of at most {MAX_PATTERN} "
                        "characters", file=graph.source)
    try:
        return re.compile(pattern)
    except re.error as exc:
        raise SpecError(f"`{place}`: {pattern!r} is not a regular expression ({exc})",
                        file=graph.source) from None


def _fill(template: str, match: re.Match, place: str, graph: Graph) -> str:
    """TEMPLATE with {N} -> group N and {N+K} / {N-K} -> int(group N) +- K."""
    def field(f: re.Match) -> str:
        group = int(f.group(1))
        if group > (match.re.groups or 0):
            raise SpecError(f"`{place}.to` names group {{{group}}}, but the regex has "
                            f"{match.re.groups}", file=graph.source)
        text = match.group(group) or ""
        if f.group(2) is None:
            return text
        if not text.isdigit():
            raise SpecError(f"`{place}.to`: {{{f.group(1)}{f.group(2)}}} needs a number, but "
                            f"group {group} is {text!r}", file=graph.source)
        return str(int(text) + int(f.group(2)))
    return _FIELD.sub(field, template)
