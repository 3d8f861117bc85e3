"""The front end in one call: `load` reads a spec (file, zoo name, dict or SpecBuilder), expands
it, checks it and infers shapes and statistics, giving a Graph; nothing touches torch."""
from __future__ import annotations

import copy
import gc
import os
from pathlib import Path
from typing import Any

from . import init, zoo
from .analysis import analyse
from .errors import InputError, SpecError
from .expand import expand, suggest
from .graph import Graph
from .limits import describe
from .spec import SUFFIXES, Source, SpecBuilder, read


def source_of(x: Any) -> tuple[Source, str | None]:
    """The spec behind `x`, and the zoo variant its name picks (if any)."""
    if isinstance(x, SpecBuilder):
        return Source(x.to_dict()), None
    if isinstance(x, dict):
        return Source(x), None
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix.lower() in SUFFIXES or path.exists() or os.sep in str(x):
            return read(path), None
        found = zoo.find(str(x))
        if found is None:
            zoo.path(str(x))  # raises the "no such model" error with a suggestion
        file, variant = found
        return read(file), variant
    raise SpecError(f"cannot load a {type(x).__name__}: give a spec file path, a zoo name, a "
                    "dict or a SpecBuilder")


def load(x: Any, *, variant: str | None = None, input_shape=None) -> Graph:
    """A checked Graph with shapes and per-layer stats.

    `x`: a .yaml/.yml/.json path, a zoo name (`resnet50`), a spec dict or a SpecBuilder.
    `variant`: a variant of a family spec (default: the zoo name's, or the spec's `variant`).
    `input_shape`: replaces the spec's input shape, with or without the batch ([3, 64, 64] or
    [1, 3, 64, 64]); for several inputs, a dict name -> shape.
    """
    enabled = gc.isenabled()
    gc.disable()  # the front end makes ~10 objects a layer and no garbage: spare the collector
    try:
        return _load(x, variant, input_shape)
    finally:
        if enabled:
            gc.enable()


def _load(x: Any, variant: str | None, input_shape) -> Graph:
    source, zoo_variant = source_of(x)
    if (zoo_variant is not None and isinstance(variant, str) and variant != zoo_variant
            and variant in (source.data.get("variants") or {})):  # an unknown one: expand says
        raise SpecError(f"the zoo name '{x}' already picks variant '{zoo_variant}', not "
                        f"'{variant}': load '{variant}' by name, or drop the variant (--variant)")
    variant = variant or zoo_variant
    spec = source.data
    shapes = _input_shapes(spec, input_shape)
    flat = expand(source, variant, shapes)
    graph = Graph(flat.name, {n.name: n for n in flat.nodes}, flat.outputs, source=source.file)
    analyse(graph, flat.exprs)
    check_meta(graph, source)
    graph.spec = _chosen_spec(spec, flat.variant, shapes)
    graph.meta = {**copy.deepcopy(spec.get("meta") or {}), "variant": flat.variant}
    return graph


def _input_shapes(spec: Any, input_shape) -> dict[str, list[int]] | None:
    """`input_shape` as {input name: shape without batch}, checked against the spec's inputs."""
    if input_shape is None or not isinstance(spec, dict):
        return None
    declared = {"input": spec["input"]} if "input" in spec else spec.get("inputs") or {}
    if not isinstance(declared, dict) or not all(isinstance(k, str) for k in declared):
        return None  # a broken spec: expand names what is wrong with it
    if not isinstance(input_shape, dict):
        if len(declared) != 1:
            raise InputError(f"the spec has {len(declared)} inputs ({', '.join(declared)}): "
                             "give input_shape as a dict name -> shape (Python), or change the "
                             "spec's `inputs:` (--input-shape takes single-input specs)")
        input_shape = {next(iter(declared)): input_shape}
    shapes = {}
    for name, shape in input_shape.items():
        if name not in declared:
            raise InputError(f"input_shape names '{name}', but the spec's inputs are "
                             f"{', '.join(declared)}")
        if not isinstance(shape, (list, tuple)):
            raise InputError(f"input shape {describe(shape)} for '{name}': give a list "
                             "of sizes, e.g. [3, 224, 224]")
        shape = list(shape)
        if not all(isinstance(d, int) and not isinstance(d, bool) and d > 0 for d in shape):
            raise InputError(f"input shape {shape} for '{name}': every size, the batch too, "
                             "must be an integer >= 1")
        rank = len(declared[name]) if isinstance(declared[name], list) else len(shape)
        if len(shape) == rank + 1:
            shape = shape[1:]  # the batch: the graph keeps it symbolic
        if len(shape) != rank or not all(isinstance(d, int) and d > 0 for d in shape):
            raise InputError(f"input shape {shape} does not fit the spec's input "
                             f"{declared[name]}: give {rank} positive sizes (or {rank + 1} with "
                             "the batch first)")
        _check_channels(spec, name, shape, declared)
        shapes[name] = shape
    return shapes


def _check_channels(spec: dict, name: str, shape: list[int], declared: dict) -> None:
    """An input shape whose channels differ from the per-channel `meta.normalize` of a
    one-input spec is refused here, naming the input shape (the spec itself is fine)."""
    meta = spec.get("meta")
    normalize = meta.get("normalize") if isinstance(meta, dict) else None
    if len(declared) != 1 or not isinstance(normalize, dict) or len(shape) != 3:
        return
    counts = {len(v) for v in normalize.values() if isinstance(v, list) and len(v) > 1}
    if len(counts) == 1 and shape[0] not in counts:
        (n,) = counts
        raise InputError(f"input shape {shape} has {shape[0]} channel(s), but the spec's "
                         f"`meta.normalize` gives {n} values, one per channel of its input "
                         f"{declared[name]}: keep {n} channels (e.g. {[n, *shape[1:]]}), or "
                         "use a spec made for this input")


def check_meta(graph: Graph, source: Source) -> None:
    """`meta` is a mapping; its `normalize` has one mean and one positive std per input channel
    (or one for all), its `init` rules are known (cnngraph/init.py), and its `classes` name each
    column of a (N, F) main output."""
    spec = source.data
    meta = spec.get("meta")
    if meta is None:
        return

    def fail(message: str, mapping=spec, key: str | None = "meta") -> SpecError:
        return SpecError(message, file=source.file, line=source.line(mapping, key))

    if not isinstance(meta, dict):
        raise fail(f"`meta` must be a mapping, got {describe(meta)}: write e.g. "
                   "`meta: {classes: [...], normalize: {mean: [...], std: [...]}}`")
    if "normalize" in meta:
        normalize = meta["normalize"]
        channels = {n.name: n.shape[1] for n in graph.inputs}
        if isinstance(normalize, dict) and normalize and all(
                isinstance(v, dict) for v in normalize.values()):  # per input
            for name, entry in normalize.items():
                if name not in channels:
                    raise fail(f"`meta.normalize` names {name!r}, which is not an input; the "
                               f"inputs are {', '.join(channels)}", normalize, name)
                _check_normalize(entry, channels[name], f"meta.normalize.{name}",
                                 lambda message, key, m=entry: fail(message, m, key))
        elif len(channels) > 1:
            raise fail(f"`meta.normalize` must give each input its own: {{{next(iter(channels))}: "
                       f"{{mean: [...], std: [...]}}, ...}} (the inputs are "
                       f"{', '.join(channels)}), got {describe(normalize)}", meta, "normalize")
        else:
            if not isinstance(normalize, dict) or set(normalize) != {"mean", "std"}:
                raise fail(f"`meta.normalize` must be {{mean: [...], std: [...]}}, got "
                           f"{describe(normalize)}", meta, "normalize")
            _check_normalize(normalize, next(iter(channels.values())), "meta.normalize",
                             lambda message, key: fail(message, normalize, key))
    if "channel_order" in meta:
        order = meta["channel_order"]
        if order not in ("RGB", "BGR"):
            raise fail(f"`meta.channel_order` must be RGB or BGR (the order of an image "
                       f"input's 3 channels), got {describe(order)}", meta, "channel_order")
        if not any(n.shape[1:2] == (3,) and len(n.shape) == 4 for n in graph.inputs):
            raise fail("`meta.channel_order` is for 3-channel image inputs, and this network "
                       "has none: remove it", meta, "channel_order")
    if "init" in meta:
        init.check(meta, graph, fail)
    if "classes" in meta:
        classes = meta["classes"]
        if not isinstance(classes, list) or not all(isinstance(c, str) for c in classes):
            raise fail(f"`meta.classes` must be a list of class names (strings), got "
                       f"{describe(classes)}: quote numbers, e.g. [\"0\", \"1\"]", meta, "classes")
        width = graph.num_classes
        if width is not None and len(classes) != width:
            main = graph.active_outputs(False)[0].name
            raise fail(f"`meta.classes` has {len(classes)} names but the output '{main}' has "
                       f"{width} classes: give {width} names", meta, "classes")
    if "head" in meta:
        _check_head(graph, meta, fail)
    if "naming" in meta:
        from .naming import check
        try:
            check(graph, meta["naming"])
        except SpecError as exc:  # at the line of meta.naming
            raise fail(exc.reason, meta, "naming") from None


def _check_head(graph: Graph, meta: dict, fail) -> None:
    """`meta.head` lists the classifier layers that fine-tuning re-sizes: each a layer path
    with an `out` width equal to the main output's classes."""
    head = meta["head"]
    if not isinstance(head, list) or not head or not all(isinstance(h, str) for h in head):
        raise fail(f"`meta.head` must be a non-empty list of layer paths, got {describe(head)}:"
                   " write e.g. `head: [fc]`", meta, "head")
    width = graph.num_classes
    for path in head:
        node = graph.nodes.get(path)
        if node is None:
            raise fail(f"`meta.head` names '{path}', which is not a layer"
                       f"{suggest(path, graph.nodes)}: give full layer paths (e.g. aux1.fc2)",
                       meta, "head")
        if "out" not in node.attrs or (width is not None and node.shape[1] != width):
            raise fail(f"`meta.head` layer '{path}' ({node.op}) must give the {width} class "
                       "scores with its `out` width: name the classifier layers only",
                       meta, "head")


def _check_normalize(entry: dict, channels: int, where: str, fail) -> None:
    """`entry` is {mean: [...], std: [...]}: one number per channel (or one for all), std > 0."""
    if set(entry) != {"mean", "std"}:
        raise fail(f"`{where}` must be {{mean: [...], std: [...]}}, got {describe(entry)}", None)
    for key, values in entry.items():
        if (not isinstance(values, list) or len(values) not in (1, channels) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values)):
            raise fail(f"`{where}.{key}` must be a list of numbers, one per input channel "
                       f"({channels}) or one for all, got {describe(values)}", key)
        if key == "std" and not all(v > 0 for v in values):
            raise fail(f"`{where}.std` must be > 0 (inputs are divided by it), got "
                       f"{describe(values)}", key)


def _chosen_spec(spec: dict, variant: str | None, shapes: dict | None) -> dict:
    """The source spec with the choices of this load written in (variant, input shapes), so
    that loading it again gives the same network."""
    spec = copy.deepcopy(spec)
    if variant is not None:
        spec["variant"] = variant
    for name, shape in (shapes or {}).items():
        if "input" in spec:
            spec["input"] = shape
        else:
            spec["inputs"][name] = shape
    return spec
