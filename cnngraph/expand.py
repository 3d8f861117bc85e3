"""From a spec to flat nodes: parameters and variants evaluated, blocks instantiated, `repeat`,
`first` and `when` applied, every name resolved to a full layer path such as
`layer2.0.conv1`. Nothing here knows an op's rules: attributes stay as written (values
evaluated) and `analysis` checks them.

Names are resolved in scopes (the top-level layer list, and each block instance): a scope maps
a local name to a node's full path, or to another name (the output of a block instance, the last
copy of a `repeat`, a layer switched off by `when`, a block's input). Resolution happens after
everything is expanded, so a layer may name one written after it (the cycle check comes later).
"""
from __future__ import annotations

import math
import re
from collections import ChainMap
from dataclasses import dataclass, field
from difflib import get_close_matches
from typing import Any

from . import limits
from .errors import SpecError
from .expr import ExprError, resolve
from .graph import Node, Output
from .limits import MAX_LAYERS, describe
from .spec import Source, check_data

NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
TOP_KEYS = ("name", "doc", "input", "inputs", "params", "variants", "variant", "meta", "blocks",
            "layers", "outputs")
BLOCK_KEYS = ("doc", "params", "inputs", "layers", "output")
LAYER_KEYS = ("name", "op", "block", "inputs", "args", "repeat", "first", "when")
OUTPUT_KEYS = ("name", "from", "phase", "loss_weight")
PHASES = ("both", "train", "inference")
REQUIRED = "required"  # a block parameter without default


def suggest(name: str, known) -> str:
    """' (did you mean 'x'?)' for the nearest known name, or ''."""
    near = get_close_matches(name, [k for k in known if isinstance(k, str)], n=1, cutoff=0.6)
    return f" (did you mean '{near[0]}'?)" if near else ""


@dataclass
class Expanded:
    """The spec flattened: nodes in spec order (inputs are full node names) and the outputs;
    `exprs[node][attr]` is the `$...` text an attribute was written as, for messages."""

    name: str
    nodes: list[Node]
    outputs: list[Output]
    variant: str | None
    exprs: dict[str, dict[str, str]] = field(default_factory=dict)


@dataclass
class Alias:
    """A name standing for another name in `scope`, written at `mapping` (layer `path`)."""

    scope: "Scope"
    name: str
    mapping: Any
    path: str | None


@dataclass
class Scope:
    """The names one layer list can see; `prefix` turns a local name into a full path."""

    prefix: str
    symbols: dict[str, "str | Alias"] = field(default_factory=dict)


class Expander:
    def __init__(self, source: Source):
        self.source = source
        self.blocks: dict[str, Any] = {}
        self.nodes: list[Node] = []
        self.exprs: dict[str, dict[str, str]] = {}
        self.expanded = 0  # layers expanded so far (switched-off ones too), against MAX_LAYERS
        self.pending: list[tuple[Node, list[Alias]]] = []
        self.stack: list[str] = []  # blocks being instantiated, to refuse recursion
        self.sizes: dict[int, int] = {}  # keys and values under each spec list and mapping
        self.evaluated = 0  # values evaluated so far, against MAX_EVALUATED

    # --- messages ----------------------------------------------------------------------------
    def error(self, message: str, mapping: Any = None, path: str | None = None,
              key: str | None = None) -> SpecError:
        return SpecError(message, file=self.source.file, line=self.source.line(mapping, key),
                         path=path)

    def where(self, mapping: Any, key: str | None = None) -> str | None:
        line = self.source.line(mapping, key)
        if self.source.file is None:
            return f"line {line}" if line else None
        return f"{self.source.file}:{line}" if line else self.source.file

    def value(self, raw: Any, env: dict, mapping: Any, path: str | None, key: str) -> Any:
        self.spend(self.sizes.get(id(raw), 1), mapping, path, key)
        try:
            return resolve(raw, env)
        except ExprError as exc:
            raise self.error(f"{key}: {exc}", mapping, path, key) from None

    def spend(self, values: int, mapping: Any, path: str | None, key: str | None,
              projected: bool = False) -> None:
        """Counts values evaluated (or, `projected`, only checks that many more would fit):
        copies re-evaluate their layer, so a big layer repeated many times is refused before
        it takes minutes."""
        if not projected:
            self.evaluated += values
        if self.evaluated + (values if projected else 0) > limits.MAX_EVALUATED:
            raise self.error(f"expanding the spec evaluates more than "
                             f"{limits.MAX_EVALUATED:,} values (each `repeat` copy and block "
                             "instance evaluates its own): lower `repeat` or the number of keys",
                             mapping, path, key)

    def name(self, value: Any, what: str, mapping: Any, path: str | None, key: str,
             identifier: bool = False) -> str:
        """`value` when it is a name: a string of at most MAX_NAME characters (an identifier,
        [A-Za-z_][A-Za-z0-9_]*, for layer names); else a SpecError naming `what`."""
        if (not isinstance(value, str) or not value or len(value) > limits.MAX_NAME
                or (identifier and not NAME.fullmatch(value))):
            rule = "matching [A-Za-z_][A-Za-z0-9_]*" if identifier else "as a string"
            raise self.error(f"{what} {describe(value)} is not a name: write one {rule} (at "
                             f"most {limits.MAX_NAME} characters)", mapping, path, key)
        return value

    # --- the whole spec ----------------------------------------------------------------------
    def run(self, variant: str | None, input_shapes: dict[str, list[int]] | None) -> Expanded:
        self.sizes = check_data(self.source)
        spec = self.source.data
        if not isinstance(spec, dict):
            raise self.error("a spec is a mapping with at least `name`, `input` and `layers`")
        for key in spec:
            if key not in TOP_KEYS:
                raise self.error(f"unknown top-level key '{key}'{suggest(str(key), TOP_KEYS)}: "
                                 f"the keys are {', '.join(TOP_KEYS)}", spec, key=key)
        name = spec.get("name")
        if name is None:
            raise self.error("the spec has no `name`: add e.g. `name: mynet`", spec)
        if (not isinstance(name, str) or not name or not name.isprintable()
                or len(name) > limits.MAX_NAME):
            raise self.error(f"`name` must be a non-empty printable string of at most "
                             f"{limits.MAX_NAME} characters (it names the built class and the "
                             f"exported graph), got {describe(name)}: write e.g. `name: mynet`",
                             spec, key="name")
        variant = variant or spec.get("variant")
        if variant is not None:
            variant = self.name(variant, "variant", spec, None, "variant")
        env = self.params(spec, variant)
        blocks = spec.get("blocks") or {}
        if not isinstance(blocks, dict):
            raise self.error("`blocks` must map block names to blocks", spec, key="blocks")
        self.blocks = blocks
        top = Scope("")
        first_input = self.inputs(spec, env, top, input_shapes)
        layers = spec.get("layers")
        if layers is None:
            raise self.error("the spec has no `layers`: add a list of layers", spec)
        last = self.layers(layers, top, env, first_input, spec)
        outputs = self.outputs(spec, top, env, last)
        for node, refs in self.pending:
            node.inputs = [self.resolve(ref) for ref in refs]
        return Expanded(variant or name, self.nodes, outputs, variant, self.exprs)

    def params(self, spec: dict, variant: str | None) -> dict:
        """The spec parameters, in order, with the variant's values put in."""
        params = spec.get("params") or {}
        variants = spec.get("variants") or {}
        if not isinstance(params, dict) or not isinstance(variants, dict):
            raise self.error("`params` and `variants` must be mappings", spec)
        overrides = {}
        if variant is not None:
            if variant not in variants:
                known = ", ".join(variants) or "none"
                raise self.error(f"unknown variant '{variant}'{suggest(variant, variants)}: "
                                 f"this spec's variants are {known}", spec, key="variants")
            overrides = variants[variant] or {}
            if not isinstance(overrides, dict):
                raise self.error(f"variant '{variant}' must map parameter names to values",
                                 variants, key=variant)
            for key in overrides:
                if key not in params:
                    raise self.error(f"variant '{variant}' sets '{key}', which is not a parameter"
                                     f"{suggest(str(key), params)}: declare it under `params`",
                                     variants, key=variant)
        env: dict = {}
        for key, raw in params.items():
            if not isinstance(key, str) or not NAME.fullmatch(key):
                raise self.error(f"parameter name {describe(key)} is not an identifier", params)
            where = variants if key in overrides else params
            env[key] = self.value(overrides.get(key, raw), env, where,
                                  None, variant if key in overrides else key)
        return env

    def inputs(self, spec: dict, env: dict, scope: Scope,
               shapes: dict[str, list[int]] | None) -> str:
        """Creates the input nodes; returns the first one's name."""
        if ("input" in spec) == ("inputs" in spec):
            raise self.error("give the input shape once: `input: [C, H, W]` (one input) or "
                             "`inputs: {name: [C, H, W], ...}`", spec)
        if "input" in spec:
            declared = {"input": spec["input"]}
        else:
            declared = spec["inputs"]
            if not isinstance(declared, dict) or not declared:
                raise self.error("`inputs` must map input names to shapes", spec, key="inputs")
        for name, raw in declared.items():
            if not isinstance(name, str) or not NAME.fullmatch(name):
                raise self.error(f"input name {describe(name)} is not an identifier", spec,
                                 key="inputs")
            shape = self.value(raw, env, spec, None, "input" if "input" in spec else "inputs")
            if shapes and name in shapes:
                shape = shapes[name]
            shape = tuple(shape) if isinstance(shape, list) else shape
            self.nodes.append(Node(name, "input", attrs={"shape": shape},
                                   where=self.where(spec, "input" if "input" in spec else "inputs")))
            scope.symbols[name] = name
        return next(iter(declared))

    def outputs(self, spec: dict, top: Scope, env: dict, last: str) -> list[Output]:
        raw = spec.get("outputs")
        if raw is None:
            return [Output(last, self.resolve(Alias(top, last, spec, None)))]
        if not isinstance(raw, list) or not raw:
            raise self.error("`outputs` must be a list of layer names or "
                             "{name, from, phase, loss_weight} mappings", spec, key="outputs")
        outputs: list[Output] = []
        names: set[str] = set()
        for raw_entry in raw:
            mapping, key = (raw_entry, None) if isinstance(raw_entry, dict) else (spec, "outputs")
            entry = self.value(raw_entry, env, mapping, None, "outputs")
            if isinstance(entry, str):
                entry = {"name": entry}
            if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
                raise self.error("each output is a layer name or a mapping with `name`",
                                 mapping, key=key)
            for key in entry:
                if key not in OUTPUT_KEYS:
                    raise self.error(f"output '{entry['name']}': unknown key '{key}'"
                                     f"{suggest(str(key), OUTPUT_KEYS)}", mapping, key=key)
            phase = entry.get("phase", "both")
            if phase not in PHASES:
                raise self.error(f"output '{entry['name']}': phase must be one of "
                                 f"{', '.join(PHASES)}, got {describe(phase)}", mapping,
                                 key="phase")
            weight = entry.get("loss_weight", 1.0)
            if (isinstance(weight, bool) or not isinstance(weight, (int, float))
                    or not math.isfinite(weight) or weight < 0):
                raise self.error(f"output '{entry['name']}': loss_weight must be a number >= 0, "
                                 f"got {describe(weight)}", mapping, key="loss_weight")
            if entry["name"] in names:
                raise self.error(f"duplicate output name '{entry['name']}': rename one", mapping)
            names.add(entry["name"])
            source = entry.get("from", entry["name"])
            if not isinstance(source, str):
                raise self.error(f"output '{entry['name']}': `from` must be a layer name, got "
                                 f"{describe(source)}", mapping, key="from")
            node = self.resolve(Alias(top, source, mapping, None))
            outputs.append(Output(entry["name"], node, phase, float(weight)))
        for training, mode in ((False, "inference"), (True, "training")):
            if not any(o.active(training) for o in outputs):
                raise self.error(f"no output is active in {mode}: give at least one output "
                                 f"`phase: both` (the default) or `phase: "
                                 f"{'train' if training else 'inference'}`", spec, key="outputs")
        return outputs

    # --- layer lists -------------------------------------------------------------------------
    def layers(self, layers: Any, scope: Scope, env: dict, first_input: str, owner: Any) -> str:
        """Expands a layer list into `scope`; returns the local name of the last layer."""
        if not isinstance(layers, list):
            raise self.error(f"`layers` must be a list of layers (`- {{name: ..., op: ...}}`), "
                             f"got a {type(layers).__name__}", owner, key="layers")
        if not layers:
            raise self.error("`layers` is an empty list: add at least one layer", owner,
                             key="layers")
        previous = first_input
        for layer in layers:
            previous = self.layer(layer, scope, env, previous)
        return previous

    def layer(self, layer: Any, scope: Scope, env: dict, previous: str) -> str:
        if not isinstance(layer, dict):
            raise self.error(f"a layer is a mapping with `name` and `op` (or `block`), got "
                             f"{describe(layer)}", None, scope.prefix.rstrip(".") or None)
        if "name" not in layer:
            raise self.error("layer without `name`: add `name: ...` (unique in its list)", layer,
                             scope.prefix.rstrip(".") or None)
        name = self.name(self.value(layer["name"], env, layer, None, "name"), "layer name",
                         layer, None, "name", identifier=True)
        path = scope.prefix + name
        if name in scope.symbols:
            raise self.error(f"duplicate name '{name}': every layer in a list needs its own name "
                             "(rename one)", layer, path, "name")
        for key in ("args", "first"):
            if key in layer and not isinstance(layer[key], dict):
                raise self.error(f"`{key}` must be a mapping", layer, path, key)
        if "first" in layer and "repeat" not in layer:
            raise self.error("`first` only applies with `repeat`: remove it, or add `repeat`",
                             layer, path, "first")
        inputs = self.input_names(layer, env, path, previous)
        if "repeat" not in layer:
            self.instance(layer, scope, name, env, inputs, {})
            return name
        count = self.value(layer["repeat"], env, layer, path, "repeat")
        if isinstance(count, bool) or not isinstance(count, int) or count < 0:
            raise self.error(f"repeat must be a non-negative integer, got {describe(count)}",
                             layer, path, "repeat")
        before, spent = self.expanded, self.evaluated
        self.check_size(before + count, layer, path)  # each copy is at least one layer
        for i in range(count):
            if i == 1:  # one copy made: its size times `repeat` must fit before making the rest
                self.check_size(before + (self.expanded - before) * count, layer, path)
                self.spend((self.evaluated - spent) * (count - 1), layer, path, "repeat", True)
            self.instance(layer, scope, f"{name}.{i}", ChainMap({"i": i}, env),
                          inputs if i == 0 else [f"{name}.{i - 1}"],
                          layer.get("first", {}) if i == 0 else {})
        target = f"{name}.{count - 1}" if count else inputs[0]
        scope.symbols[name] = Alias(scope, target, layer, path)
        return name

    def check_size(self, layers: int, layer: dict, path: str) -> None:
        if layers > MAX_LAYERS:
            raise self.error(f"the spec expands to more than {MAX_LAYERS:,} layers (at least "
                             f"{layers:,}): lower `repeat` here or in the blocks it "
                             "instantiates", layer, path, "repeat" if "repeat" in layer else None)

    def input_names(self, layer: dict, env: dict, path: str, previous: str) -> list[str]:
        if "inputs" not in layer:
            return [previous]
        names = self.value(layer["inputs"], env, layer, path, "inputs")
        if not isinstance(names, list) or not names or not all(isinstance(n, str) for n in names):
            raise self.error("`inputs` must be a non-empty list of layer names", layer, path,
                             "inputs")
        return names

    def instance(self, layer: dict, scope: Scope, name: str, env: dict, inputs: list[str],
                 first: dict) -> None:
        """One layer (or one copy of a repeated layer) into `scope` under `name`."""
        path = scope.prefix + name
        self.expanded += 1
        self.check_size(self.expanded, layer, path)
        refs = [Alias(scope, n, layer, path) for n in inputs]
        if "when" in layer:
            when = self.value(layer["when"], env, layer, path, "when")
            if not isinstance(when, bool):
                raise self.error(f"`when` must be true or false, got {describe(when)}", layer, path,
                                 "when")
            if not when:
                scope.symbols[name] = refs[0]
                return
        if ("op" in layer) == ("block" in layer):
            raise self.error("a layer needs exactly one of `op` (an op from `cnngraph ops`) or "
                             "`block` (a block of this spec)", layer, path)
        if "op" in layer:
            if "args" in layer:
                raise self.error("`args` is for block layers; write op attributes directly on "
                                 "the layer", layer, path, "args")
            op = self.value(layer["op"], env, layer, path, "op")
            attrs = {k: self.value(v, env, layer, path, k) for k, v in layer.items()
                     if k not in LAYER_KEYS}
            attrs.update({k: self.value(v, env, layer, path, "first") for k, v in first.items()})
            written = {**{k: v for k, v in layer.items() if k not in LAYER_KEYS}, **first}
            exprs = {k: v for k, v in written.items() if isinstance(v, str) and "$" in v}
            if exprs:
                self.exprs[path] = exprs
            node = Node(path, op, attrs=attrs, where=self.where(layer))
            self.nodes.append(node)
            self.pending.append((node, refs))
            scope.symbols[name] = path
        else:
            extra = [k for k in layer if k not in LAYER_KEYS]
            if extra:
                raise self.error(f"'{extra[0]}' on a block layer: block parameters go in "
                                 f"`args: {{{extra[0]}: ...}}`", layer, path, extra[0])
            args = self.value(layer.get("args", {}), env, layer, path, "args")
            args.update(self.value(first, env, layer, path, "first"))
            block = self.name(self.value(layer["block"], env, layer, path, "block"), "block",
                              layer, path, "block")
            scope.symbols[name] = self.block(block, args, refs, layer, path)

    # --- blocks ------------------------------------------------------------------------------
    def block(self, name: Any, args: dict, refs: list[Alias], layer: dict, path: str) -> Alias:
        """Instantiates block `name` at `path`; returns the alias of its output."""
        if name not in self.blocks:
            known = ", ".join(self.blocks) or "none (add a `blocks:` section)"
            raise self.error(f"unknown block '{name}'{suggest(str(name), self.blocks)}: the "
                             f"blocks of this spec are {known}", layer, path, "block")
        if len(self.stack) >= limits.MAX_BLOCK_DEPTH:
            raise self.error(f"blocks nested more than {limits.MAX_BLOCK_DEPTH} deep (through "
                             f"{' -> '.join(self.stack[:3])} ...): flatten some blocks", layer,
                             path, "block")
        if name in self.stack:
            raise self.error(f"block '{name}' instantiates itself (through "
                             f"{' -> '.join(self.stack)}): a block cannot contain itself",
                             layer, path, "block")
        block = self.blocks[name]
        if not isinstance(block, dict):
            raise self.error(f"block '{name}' must be a mapping with `layers`", self.blocks,
                             key=name)
        for key in block:
            if key not in BLOCK_KEYS:
                raise self.error(f"block '{name}': unknown key '{key}'"
                                 f"{suggest(str(key), BLOCK_KEYS)}", block, key=key)
        params = block.get("params") or {}
        if not isinstance(params, dict):
            raise self.error(f"block '{name}': `params` must map parameter names to defaults",
                             block, key="params")
        if not isinstance(args, dict):
            raise self.error("`args` must map block parameters to values", layer, path, "args")
        for arg in args:
            if arg not in params:
                known = ", ".join(params) or "none"
                raise self.error(f"block '{name}' has no parameter '{arg}'"
                                 f"{suggest(str(arg), params)}; its parameters: {known}",
                                 layer, path, "args")
        self.spend(len(params), layer, path, "block")
        env: dict = {}
        for key, default in params.items():
            if key in args:
                env[key] = args[key]
            elif default == REQUIRED:
                raise self.error(f"block '{name}' needs parameter '{key}': add it to `args`, "
                                 f"e.g. `args: {{{key}: ...}}`", layer, path, "args")
            else:
                env[key] = self.value(default, env, params, path, key)
        formal = block.get("inputs", ["input"])
        if not isinstance(formal, list) or not all(isinstance(f, str) and NAME.fullmatch(f)
                                                   for f in formal):
            raise self.error(f"block '{name}': `inputs` must be a list of names", block,
                             key="inputs")
        if len(formal) != len(refs):
            raise self.error(f"block '{name}' takes {len(formal)} input(s) ({', '.join(formal)}),"
                             f" got {len(refs)}: set `inputs` to {len(formal)} name(s)",
                             layer, path, "inputs")
        scope = Scope(path + ".", dict(zip(formal, refs)))
        self.stack.append(name)
        last = self.layers(block.get("layers"), scope, env, formal[0], block)
        self.stack.pop()
        output = block.get("output", last)
        if not isinstance(output, str) or output not in scope.symbols:
            raise self.error(f"block '{name}': output {describe(output)} is not one of its "
                             "layers"
                             f"{suggest(str(output), scope.symbols)}", block, key="output")
        return Alias(scope, output, block, path)

    # --- names -------------------------------------------------------------------------------
    def resolve(self, ref: Alias) -> str:
        """The full path of the node a name stands for."""
        seen = set()
        while True:
            if ref.name not in ref.scope.symbols:
                visible = [n for n in ref.scope.symbols if "." not in n]
                where = "block" if ref.scope.prefix else "spec"
                raise self.error(f"no layer or input named '{ref.name}' here"
                                 f"{suggest(ref.name, visible)}: name a layer or an input of "
                                 f"the same {where}", ref.mapping, ref.path)
            key = (id(ref.scope), ref.name)
            if key in seen:
                raise self.error(f"'{ref.name}' refers to itself", ref.mapping, ref.path)
            seen.add(key)
            target = ref.scope.symbols[ref.name]
            if isinstance(target, str):
                return target
            ref = target


def expand(source: Source, variant: str | None = None,
           input_shapes: dict[str, list[int]] | None = None) -> Expanded:
    return Expander(source).run(variant, input_shapes)
