"""The front end in one call: `load` reads a spec (file, zoo name, dict or SpecBuilder), expands
it, checks it and infers shapes and statistics, giving a Graph; nothing touches torch."""
from __future__ import annotations

import copy
import os
from pathlib import Path
from typing import Any

from . import zoo
from .analysis import analyse
from .errors import InputError, SpecError
from .expand import expand
from .graph import Graph
from .spec import SUFFIXES, Source, SpecBuilder, read


def source_of(x: Any) -> tuple[Source, str | None]:
    """The spec behind `x`, and the zoo variant its name picks (if any)."""
    if isinstance(x, SpecBuilder):
        return Source(x.to_dict()), None
    if isinstance(x, dict):
        return Source(x), None
    if isinstance(x, (str, os.PathLike)):
        path = Path(x)
        if path.suffix in SUFFIXES or path.exists() or os.sep in str(x):
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
    source, zoo_variant = source_of(x)
    variant = variant or zoo_variant
    spec = source.data
    shapes = _input_shapes(spec, input_shape)
    flat = expand(source, variant, shapes)
    graph = Graph(flat.name, {n.name: n for n in flat.nodes}, flat.outputs, source=source.file)
    analyse(graph)
    graph.spec = _chosen_spec(spec, flat.variant, shapes)
    graph.meta = {**copy.deepcopy(spec.get("meta") or {}), "variant": flat.variant}
    return graph


def _input_shapes(spec: Any, input_shape) -> dict[str, list[int]] | None:
    """`input_shape` as {input name: shape without batch}, checked against the spec's inputs."""
    if input_shape is None or not isinstance(spec, dict):
        return None
    declared = {"input": spec["input"]} if "input" in spec else spec.get("inputs") or {}
    if not isinstance(input_shape, dict):
        if len(declared) != 1:
            raise InputError(f"the spec has {len(declared)} inputs ({', '.join(declared)}): "
                             "give input_shape as a dict name -> shape")
        input_shape = {next(iter(declared)): input_shape}
    shapes = {}
    for name, shape in input_shape.items():
        if name not in declared:
            raise InputError(f"input_shape names '{name}', but the spec's inputs are "
                             f"{', '.join(declared)}")
        shape = list(shape)
        rank = len(declared[name]) if isinstance(declared[name], list) else len(shape)
        if len(shape) == rank + 1:
            shape = shape[1:]  # the batch: the graph keeps it symbolic
        if len(shape) != rank or not all(isinstance(d, int) and d > 0 for d in shape):
            raise InputError(f"input shape {shape} does not fit the spec's input "
                             f"{declared[name]}: give {rank} positive sizes (or {rank + 1} with "
                             "the batch first)")
        shapes[name] = shape
    return shapes


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
