"""The spec as data: reading and writing spec files (YAML or JSON) with the line of every
mapping and key, and `SpecBuilder`, which writes the same dict from Python.

The data stays plain dicts and lists (what `yaml.safe_load` / `json.load` give), so a spec
round-trips through YAML, JSON and Python unchanged; the lines live beside it in `Source.lines`,
keyed by the identity of each mapping, and only error messages read them.
"""
from __future__ import annotations

import copy
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import limits
from .errors import SpecError
from .files import atomic_write
from .limits import describe

SUFFIXES = (".yaml", ".yml", ".json")


@dataclass
class Source:
    """A spec and where it came from: `lines[id(mapping)]` = (line, {key: line}), 1-based."""

    data: Any
    file: str | None = None
    lines: dict[int, tuple[int, dict[str, int]]] = field(default_factory=dict)

    def line(self, mapping: Any, key: str | None = None) -> int | None:
        """The line of `mapping` (or of its `key`), when the file told us."""
        entry = self.lines.get(id(mapping))
        if entry is None:
            return None
        return entry[1].get(key, entry[0]) if key is not None else entry[0]


try:  # libyaml scans and parses (fast); the Python composer above it bounds the nesting
    from yaml.cyaml import CParser

    _PARSERS: tuple = (CParser,)
except ImportError:  # pragma: no cover - PyYAML without libyaml
    _PARSERS = (yaml.reader.Reader, yaml.scanner.Scanner, yaml.parser.Parser)


class _LineLoader(yaml.composer.Composer, *_PARSERS, yaml.constructor.SafeConstructor,
                  yaml.resolver.Resolver):
    """A safe loader that records the line of each mapping and of each of its keys, refuses
    duplicate and non-string keys (plain YAML would silently keep the last one), nesting deeper
    than `limits.MAX_DEPTH` (before recursing: libyaml's own composer has no bound) and integer
    literals too long to be in range."""

    def __init__(self, stream, file: str | None = None):
        for parser in _PARSERS:
            parser.__init__(self, stream)
        yaml.composer.Composer.__init__(self)
        yaml.constructor.SafeConstructor.__init__(self)
        yaml.resolver.Resolver.__init__(self)
        self.lines: dict[int, tuple[int, dict[str, int]]] = {}
        self.file = file
        self.depth = 0

    def error(self, message: str, node) -> SpecError:
        return SpecError(message, file=self.file, line=node.start_mark.line + 1)

    def compose_node(self, parent, index):
        nests = self.check_event(yaml.SequenceStartEvent, yaml.MappingStartEvent)
        if nests and self.depth == limits.MAX_DEPTH:
            raise self.error(f"nested more than {limits.MAX_DEPTH} levels deep: flatten the "
                             "spec", self.peek_event())
        self.depth += nests
        try:
            return super().compose_node(parent, index)
        finally:
            self.depth -= nests

    def construct_yaml_int(self, node):
        if len(node.value) > 40:  # int() of a long literal is slow, and past 4,300 digits refused
            raise self.error(f"integer {node.value[:20]}... out of range (limit: ±2**63-1)", node)
        return super().construct_yaml_int(node)

    def construct_yaml_map(self, node):
        """The mapping, built here in one pass over its pairs (values as PyYAML's
        construct_mapping would make them), with the line of each key."""
        data: dict = {}
        yield data
        self.flatten_mapping(node)
        keys: dict[str, int] = {}
        for key_node, value_node in node.value:
            key = self.construct_object(key_node)
            if not isinstance(key, str):
                what = {list: "a list", dict: "a mapping"}.get(type(key)) or describe(key)
                raise self.error(f"key {what} is not a string: keys are names "
                                 "(quote it; YAML reads yes/no/on/off/null and numbers as "
                                 "other types)", key_node)
            if key in keys:
                raise self.error(f"duplicate key {describe(key)} (first on line "
                                 f"{keys[key]}): remove one of them", key_node)
            keys[key] = key_node.start_mark.line + 1
            data[key] = self.construct_object(value_node)
        self.lines[id(data)] = (node.start_mark.line + 1, keys)


def _located(construct):
    """A scalar constructor whose failures (`!!int 3.5`, `!!bool 3`, `!!timestamp x`) are a
    SpecError at the value's line."""
    def located(loader: _LineLoader, node):
        try:
            return construct(loader, node)
        except SpecError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError, IndexError,
                OverflowError) as exc:
            raise loader.error(f"{node.tag.rpartition(':')[2]} value "
                               f"{describe(node.value)} cannot be read "
                               f"({type(exc).__name__}): fix the value or drop its tag",
                               node) from None
    return located


_LineLoader.add_constructor("tag:yaml.org,2002:map", _LineLoader.construct_yaml_map)
_LineLoader.add_constructor("tag:yaml.org,2002:int", _located(_LineLoader.construct_yaml_int))
for _tag in ("float", "bool", "timestamp", "binary"):
    _tag = f"tag:yaml.org,2002:{_tag}"
    _LineLoader.add_constructor(_tag, _located(_LineLoader.yaml_constructors[_tag]))


def parse_yaml(text: str, file: str | None = None) -> Source:
    loader = None
    try:
        loader = _LineLoader(text, file)  # the Python reader checks the characters here
        data = loader.get_single_data()
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        context = f" {exc.context}" if exc.context else ""
        if exc.context_mark and mark and exc.context_mark.line != mark.line:
            context += f" (from line {exc.context_mark.line + 1})"
        raise SpecError(f"YAML syntax error: {exc.problem}{context}: fix the syntax here "
                        "(check indentation, colons, quotes and brackets)", file=file,
                        line=mark.line + 1 if mark else None) from None
    except yaml.reader.ReaderError as exc:
        line = text.count("\n", 0, exc.position) + 1 if isinstance(exc.position, int) else None
        raise SpecError(f"character {chr(exc.character)!r} is not allowed in YAML: remove it "
                        "(control characters and NUL are refused)", file=file, line=line) from None
    except yaml.YAMLError as exc:
        raise SpecError(f"YAML error: {exc}", file=file) from None
    except RecursionError:  # a guard: the composer bounds the nesting
        raise SpecError("nested too deep: flatten the spec", file=file) from None
    finally:
        if loader is not None:
            loader.dispose()
    return Source(data, file, loader.lines)


def check_data(source: Source) -> dict[int, int]:
    """Bounds a spec as data before anything reads it: nesting depth, number of keys and values
    (a YAML alias counts as the copy it stands for, memoised per object, so an alias bomb fails
    at once instead of expanding), numbers in range, string keys, plain values, no cycles.
    Returns the number of keys and values under each list and mapping, by `id`."""
    counted: dict[int, int] = {}  # id(container) -> keys and values under it
    open_: set[int] = set()  # containers being walked: one met again is a cycle

    def fail(message: str, where: tuple, mapping: Any, key: Any) -> SpecError:
        """`where` is (parent's where, key or index), spelled out only here."""
        parts = []
        while where:
            where, step = where
            parts.append(f"[{step}]" if isinstance(step, int) else f".{step}")
        path = "".join(reversed(parts)).lstrip(".")
        return SpecError(f"`{path}`: {message}" if path else message, file=source.file,
                         line=source.line(mapping, key) if isinstance(key, str) else
                         source.line(mapping))

    def walk(value: Any, where: tuple, depth: int, mapping: Any, key: Any) -> int:
        kind = type(value)
        if kind is str or value is None:  # the common case first
            return 1
        if kind is dict or kind is list or kind is tuple:
            if id(value) in counted:
                return counted[id(value)]
            if id(value) in open_:
                raise fail("contains itself (a YAML alias inside its own anchor): write the "
                           "value out", where, mapping, key)
            if depth >= limits.MAX_DEPTH:
                raise fail(f"nested more than {limits.MAX_DEPTH} levels deep: flatten the spec",
                           where, mapping, key)
            open_.add(id(value))
            if kind is dict:
                count = len(value)
                for k, v in value.items():
                    if type(k) is not str or len(k) > limits.MAX_NAME:
                        raise fail(f"key {describe(k)} is " + (
                            "not a string" if not isinstance(k, str) else
                            f"longer than {limits.MAX_NAME} characters") + ": keys are names",
                                   where, value, None)
                    count += walk(v, (where, k), depth + 1, value, k)
            else:
                count = 0
                for i, v in enumerate(value):
                    count += walk(v, (where, i), depth + 1, mapping, key)
            open_.discard(id(value))
            if count > limits.MAX_SCALARS:
                raise fail(f"holds more than {limits.MAX_SCALARS:,} keys and values (YAML "
                           "aliases counted as copies): is this a spec?", where, mapping, key)
            counted[id(value)] = count
            return count
        if not isinstance(value, (str, int, float)):
            raise fail(f"{describe(value)} is not a spec value: use a string (quote it), "
                       "a number, true/false, null, a list or a mapping", where, mapping, key)
        try:
            limits.number(value)
        except limits.LimitError as exc:
            raise fail(f"{exc}", where, mapping, key) from None
        return 1

    walk(source.data, (), 0, None, None)
    return counted


class _DuplicateKey(ValueError):
    pass


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict:
    data = dict(pairs)
    if len(data) < len(pairs):
        seen = set()
        raise _DuplicateKey(next(k for k, _ in pairs if k in seen or seen.add(k)))
    return data


def parse_json(text: str, file: str | None = None) -> Source:
    """JSON parsed by `json` (the authority on the data); the lines come from reading the same
    text as YAML, used only when both readings agree (JSON is, nearly always, YAML)."""
    try:
        data = json.loads(text, object_pairs_hook=_unique_keys)
    except json.JSONDecodeError as exc:
        raise SpecError(f"JSON syntax error: {exc.msg} (column {exc.colno}): fix the syntax on "
                        "this line", file=file, line=exc.lineno) from None
    except _DuplicateKey as exc:
        raise SpecError(f"duplicate key '{exc.args[0]}': remove one of them", file=file) from None
    except RecursionError:
        raise SpecError(f"nested too deep (limit: {limits.MAX_DEPTH} levels): flatten the spec",
                        file=file) from None
    except ValueError as exc:  # an integer literal past Python's 4,300 digits
        raise SpecError(f"JSON value out of range ({exc}): numbers must be within ±2**63-1",
                        file=file) from None
    try:
        located = parse_yaml(text, file)
    except SpecError:
        return Source(data, file)
    return located if located.data == data else Source(data, file)


def read(path: str | os.PathLike) -> Source:
    """A spec file, by its suffix (any case): .yaml/.yml or .json."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise SpecError(f"{path}: not a spec file: use a .yaml, .yml or .json file, or a zoo name "
                        "(`cnngraph zoo` lists them)")
    try:
        with open(path, "rb") as f:  # at most the limit and one byte: a device never ends
            data = f.read(limits.MAX_FILE_BYTES + 1)
        if len(data) > limits.MAX_FILE_BYTES:
            raise SpecError(f"{path}: larger than {limits.MAX_FILE_BYTES:,} bytes, the most a "
                            "spec may have: is this a spec file?")
        text = data.decode("utf-8")
        if "\r" in text:  # as read_text would give it (universal newlines)
            text = text.replace("\r\n", "\n").replace("\r", "\n")
    except FileNotFoundError:
        raise SpecError(f"{path}: no such file: check the path, or use a zoo name "
                        "(`cnngraph zoo` lists them)") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise SpecError(f"{path}: cannot read the file ({exc})") from None
    parse = parse_json if path.suffix.lower() == ".json" else parse_yaml
    return parse(text, str(path))


def save_spec(spec: dict, path: str | os.PathLike) -> Path:
    """Writes a spec as YAML or JSON (by the suffix), atomically; returns the path."""
    path = Path(path)
    if path.suffix.lower() not in SUFFIXES:
        raise SpecError(f"{path}: cannot tell the format: name the file .yaml, .yml or .json")
    plain = json.loads(json.dumps(spec))  # tuples become lists, as a file would give them
    if path.suffix.lower() == ".json":
        text = json.dumps(plain, indent=2) + "\n"
    else:
        text = yaml.safe_dump(plain, sort_keys=False, allow_unicode=True)
    atomic_write(path, text.encode("utf-8"))
    return path


def layer(name: str, op: str | None = None, **keys: Any) -> dict:
    """One layer entry: `layer("conv1", "conv2d", out=64, kernel=3)`; a block instance:
    `layer("stage1", block="basic", args={"out": 64}, repeat=2)`."""
    return {"name": name, **({"op": op} if op else {}), **keys}


class SpecBuilder:
    """The spec format from Python: each call adds what a YAML key would, and `to_dict()` is the
    spec (so `cnngraph.load(builder)` and `save_spec(builder.to_dict(), "net.yaml")` agree).

        SpecBuilder("lenet", input=[1, 32, 32]).layer("c1", "conv2d", out=6, kernel=5) \\
            .layer("act", "tanh").layer("pool", "max_pool2d", kernel=2)
    """

    def __init__(self, name: str, *, input: list[int] | None = None,
                 inputs: dict[str, list[int]] | None = None, doc: str | None = None):
        self.spec: dict[str, Any] = {"name": name}
        if doc is not None:
            self.spec["doc"] = doc
        if input is not None:
            self.spec["input"] = list(input)
        if inputs is not None:
            self.spec["inputs"] = {k: list(v) for k, v in inputs.items()}

    def params(self, **values: Any) -> "SpecBuilder":
        self.spec.setdefault("params", {}).update(values)
        return self

    def variant(self, name: str, **values: Any) -> "SpecBuilder":
        self.spec.setdefault("variants", {})[name] = values
        return self

    def meta(self, **values: Any) -> "SpecBuilder":
        self.spec.setdefault("meta", {}).update(values)
        return self

    def block(self, name: str, layers: list[dict], *, params: dict | None = None,
              inputs: list[str] | None = None, output: str | None = None) -> "SpecBuilder":
        """Defines a block; `layers` are `layer(...)` entries (`"required"` marks a parameter
        without default)."""
        block: dict[str, Any] = {}
        if params is not None:
            block["params"] = dict(params)
        if inputs is not None:
            block["inputs"] = list(inputs)
        block["layers"] = list(layers)
        if output is not None:
            block["output"] = output
        self.spec.setdefault("blocks", {})[name] = block
        return self

    def layer(self, name: str, op: str | None = None, **keys: Any) -> "SpecBuilder":
        self.spec.setdefault("layers", []).append(layer(name, op, **keys))
        return self

    def output(self, name: str, node: str | None = None, *, phase: str = "both",
               loss_weight: float = 1.0) -> "SpecBuilder":
        """An output `name` taken from layer `node` (default: the layer called `name`)."""
        entry: dict[str, Any] = {"name": name}
        if node is not None:
            entry["from"] = node
        if phase != "both":
            entry["phase"] = phase
        if loss_weight != 1.0:
            entry["loss_weight"] = loss_weight
        self.spec.setdefault("outputs", []).append(entry)
        return self

    def to_dict(self) -> dict[str, Any]:
        return copy.deepcopy(self.spec)
