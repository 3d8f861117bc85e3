"""Weights from elsewhere: a state_dict named by cnngraph or by another library (torchvision),
renamed to the keys `cnngraph.build(graph)` has.

How another library names a family's weights is data, declared once in the family's spec under
`meta.naming` (docs/SPEC.md, docs/pretrained.md): an ordered list of rules that turn each of
our layer paths into that library's module path. Two kinds of rule cover torchvision:

    - {rename: REGEX, to: TEMPLATE}   # the first match in the path is replaced by TEMPLATE,
                                      # where {N} is group N and {N+K} / {N-K} its number +- K;
                                      # key: true renames whole keys, after the path rules
    - {sequential: SCOPE}             # the children of each scope SCOPE (a regex matching a
                                      # whole path prefix) are numbered 0, 1, ... in graph order,
                                      # parameter-free layers counted, as nn.Sequential does;
                                      # flat: true numbers every layer under it instead;
                                      # skip: [op, ...] leaves layers of those ops uncounted

A checkpoint's naming is recognised from its keys: the naming (cnngraph's own or a declared one)
that matches most keys wins, and must then match every key with the right shape.
"""
from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import torch

from .errors import ExportError
from .graph import Graph
from .naming import _layer, namings_of, rename_keys, rename_paths  # noqa: F401 - re-exported

OWN = "cnngraph"
IGNORED = "num_batches_tracked"  # BatchNorm's step counter: taken when present, else ours
SHOWN = 4  # keys named per kind in a mismatch message


class WeightsError(ExportError):
    """Weights that fit the network under none of its namings (or cannot be read)."""


class Imported(dict):
    """The state_dict `import_weights` returns, with what it matched: `naming` (e.g.
    "torchvision"), `matched` (tensors taken from the source), `reshaped` (keys whose tensor
    was reshaped, e.g. a Linear's (out, in) into a 1x1 convolution's (out, in, 1, 1)), `kept`
    (keys not in the source, left at the fresh module's values: batch norm step counters,
    `ignore`d layers, auxiliary heads (layers only training-only outputs use) that a model saved
    for inference lacks), `normalize` (the input normalisation the naming declares, or None) and
    `alike` (the other namings under which the keys are the same)."""

    naming: str = OWN
    matched: int = 0
    reshaped: list
    kept: list
    alike: list
    normalize: dict | None = None

    def summary(self) -> str:
        text = f"naming {self.naming}, {self.matched} tensors matched"
        if self.alike:
            text += f" (the keys are {', '.join(self.alike)}'s too: choose with naming=)"
        if self.reshaped:
            text += f", {len(self.reshaped)} reshaped"
        if self.kept:
            text += f", {len(self.kept)} kept from a fresh build ({_first(self.kept)})"
        if self.normalize:
            text += f", input normalisation mean {self.normalize['mean']} std {self.normalize['std']}"
        return text


def import_weights(graph: Graph, source: str | Path | Mapping[str, torch.Tensor], *,
                   naming: str | None = None, ignore: Iterable[str] = (),
                   update_meta: bool = True) -> Imported:
    """A state_dict that `cnngraph.build(graph).load_state_dict(...)` takes strictly, from
    `source`: a .safetensors file, a torch.save'd state_dict (.pth/.pt, read with
    weights_only: nothing in it runs) or a mapping of names to tensors, named by cnngraph or by a
    naming the family declares (`meta.naming`), recognised from the keys unless `naming` names
    it (needed where the names are alike but the normalisation is not: torchvision's
    inception_v3). `ignore`: layer paths (or their prefixes, e.g.
    the head to re-initialise) whose weights are neither required nor taken. Where the naming
    declares an input normalisation (torchvision's googlenet normalises inside), it becomes
    graph.meta["normalize"] unless `update_meta` is False. A WeightsError (one line) names the
    unmatched, missing and mis-shaped keys of the closest naming."""
    if isinstance(source, (str, Path)):
        state, what = _read(Path(source))
    else:
        what = "the state_dict"
        state = _checked(source, what)
    if state and all(k.startswith("module.") for k in state):  # saved from a DataParallel
        state = {k[len("module."):]: v for k, v in state.items()}
    ignored = tuple(ignore)
    expected = _shapes(graph)
    namings = {OWN: {k: k for k in expected}}
    declared = namings_of(graph)
    for name, entry in declared.items():
        keys = rename_keys(graph, entry["rules"], list(expected), f"meta.naming.{name}")
        namings[name] = {theirs: ours for ours, theirs in keys.items()}
    if naming is not None and naming not in namings:
        raise WeightsError(f"naming {naming!r}: '{graph.name}' knows {', '.join(namings)} "
                           "(its spec declares the others under meta.naming)")
    name = naming or max(namings, key=lambda n: (len(state.keys() & namings[n].keys()), n == OWN))
    mapping = namings[name]
    out = Imported()
    out.naming, out.reshaped, out.kept = name, [], []
    out.alike = [n for n in namings if n != name and namings[n].keys() == mapping.keys()]
    unmatched = [k for k in state if k not in mapping]
    missing, wrong, not_float = [], [], []
    train_only = set(graph.nodes) - graph.ancestors([o.node for o in graph.active_outputs(False)])
    for theirs, ours in mapping.items():
        if any(ours.startswith(p + ".") for p in ignored):
            continue  # neither required nor taken: kept below
        if theirs not in state:
            if ours.endswith(IGNORED) or _layer(ours, graph.nodes) in train_only:
                out.kept.append(ours)  # a counter, or an aux head a saved inference model lacks
            else:
                missing.append(theirs)
            continue
        tensor, shape = state[theirs], tuple(expected[ours].shape)
        if expected[ours].is_floating_point() and not tensor.is_floating_point():
            not_float.append(f"{theirs} ({str(tensor.dtype).removeprefix('torch.')})")
            continue
        if tuple(tensor.shape) != shape:
            if _squeezed(tensor.shape) == _squeezed(shape):
                tensor = tensor.reshape(shape)
                out.reshaped.append(ours)
            else:
                wrong.append(f"{theirs} {tuple(tensor.shape)} (expected {shape})")
                continue
        out[ours] = tensor
    if not_float:
        raise WeightsError(f"{what}: non-floating tensors where the network has weights: "
                           f"{_first(not_float)}; are these the right weights?")
    if unmatched or missing or wrong:
        raise WeightsError(_mismatch(graph, what, name, len(state), unmatched, missing, wrong,
                                     list(namings)))
    left = [key for key in expected if key not in out]
    if left:
        fresh = _fresh(graph) if any(not k.endswith(IGNORED) for k in left) else {}
        for key in left:
            out[key] = fresh[key] if fresh else torch.zeros((), dtype=torch.long)
            if key not in out.kept:
                out.kept.append(key)
    out.matched = len(out) - len(out.kept)
    normalize = declared.get(name, {}).get("normalize")
    if name == OWN and isinstance(source, (str, Path)):
        normalize = recorded_normalize(Path(source))  # a file `cnngraph weights` converted
    out.normalize = normalize
    if normalize and update_meta:
        graph.meta["normalize"] = normalize
        if isinstance(graph.spec.get("meta"), dict):
            graph.spec["meta"] = {**graph.spec["meta"], "normalize": normalize}
    return out


def load_weights(graph: Graph, module: torch.nn.Module, path: str | Path, *,
                 naming: str | None = None, ignore: Iterable[str] = (), say=None) -> Imported:
    """The command line's --weights (options.add_weights): `path` imported for `graph` and
    loaded into `module` (built from it); a note through `say` (default: a line on stderr,
    which keeps a command's stdout, a table or JSON, clean) where it was not cnngraph's own
    naming, or some tensors were kept from the fresh build."""
    state = import_weights(graph, path, naming=naming, ignore=ignore)
    module.load_state_dict(state, strict=True)
    if state.naming != OWN or state.kept or state.reshaped:
        message = f"note: {path}: {state.summary()}"
        say(message) if say else print(message, file=sys.stderr)
    return state


NORMALIZE_KEY = "cnngraph.normalize"  # safetensors metadata: the normalisation to import with


def recorded_normalize(path: Path) -> dict | None:
    """The input normalisation a safetensors file records under NORMALIZE_KEY (`cnngraph
    weights` writes it where the naming declared one), or None."""
    import json

    from .files import _format

    try:
        if _format(path) != "safetensors":
            return None
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            text = (f.metadata() or {}).get(NORMALIZE_KEY)
        norm = json.loads(text) if text else None
    except Exception:  # noqa: BLE001 - unreadable metadata: the weights were read already
        return None
    ok = isinstance(norm, dict) and set(norm) == {"mean", "std"} and all(
        isinstance(v, list) and v and all(isinstance(x, (int, float)) for x in v)
        for v in norm.values()) and all(x > 0 for x in norm["std"])
    return norm if ok else None


def to_safetensors(state: Imported, graph: Graph) -> bytes:
    """`state` as safetensors bytes, recording the network, the naming it came from and the
    normalisation it needs (NORMALIZE_KEY) in the file's metadata."""
    import json

    from safetensors.torch import save

    metadata = {"cnngraph.network": graph.name, "cnngraph.naming": state.naming}
    if state.normalize:
        metadata[NORMALIZE_KEY] = json.dumps(state.normalize)
    tensors = {k: v.detach().to("cpu").contiguous().clone() for k, v in state.items()}
    return save(tensors, metadata=metadata)


def read(path: str | Path) -> dict[str, torch.Tensor]:
    """The state_dict in a .safetensors or torch file (files.read_weights: nothing in it runs,
    NaN/inf refused); a training checkpoint holding it under 'state_dict' or 'model' (as
    torchvision's reference scripts save) is unwrapped."""
    return _read(Path(path))[0]


def _read(path: Path) -> tuple[dict[str, torch.Tensor], str]:
    """(state_dict, how messages name it)."""
    from .files import read_weights

    try:
        return read_weights(path), str(path)
    except ExportError as exc:
        if "it holds a dict under" not in str(exc):
            raise WeightsError(str(exc)) from None
    from .files import WEIGHT_FORMATS, load_torch

    loaded = load_torch(path, WeightsError, "weights", WEIGHT_FORMATS)
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(loaded.get(key), Mapping):
            what = f"{path} (the state_dict under {key!r})"
            return _checked(loaded[key], what), what
    raise WeightsError(f"{path}: expected a state_dict (names -> tensors), or a checkpoint "
                       "holding one under 'state_dict' or 'model'")


def _shapes(graph: Graph) -> dict[str, torch.Tensor]:
    """The state_dict of `cnngraph.build(graph)` on the meta device: keys and shapes, no memory."""
    from .torch_build import build

    with torch.device("meta"):
        return build(graph).state_dict()


def _fresh(graph: Graph) -> dict[str, torch.Tensor]:
    """The state_dict of a fresh `cnngraph.build(graph)` (seeded, so a kept key is the same on
    every call)."""
    from .torch_build import build

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        return build(graph).state_dict()


def _checked(state: Any, what: str) -> dict[str, torch.Tensor]:
    if not isinstance(state, Mapping) or not all(
            isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()):
        raise WeightsError(f"{what}: expected a state_dict (names -> tensors)")
    return dict(state)


def _squeezed(shape) -> tuple:
    return tuple(d for d in shape if d != 1)


def _first(keys: list[str]) -> str:
    return ", ".join(keys[:SHOWN]) + (f" and {len(keys) - SHOWN} more" if len(keys) > SHOWN else "")


def _mismatch(graph: Graph, what: str, naming: str, total: int, unmatched: list, missing: list,
              wrong: list, namings: list[str]) -> str:
    parts = [f"{len(keys)} {label} ({_first(keys)})" for label, keys in
             (("unmatched in the file", unmatched), ("missing", missing), ("mis-shaped", wrong))
             if keys]
    return (f"{what} fits '{graph.name}' under none of its namings "
            f"({', '.join(namings)}); closest is {naming}, with {total - len(unmatched)} of "
            f"{total} keys named alike: " + "; ".join(parts) + ". Use a checkpoint of this network "
            "(the same variant and number of classes); to start from one with another head, "
            "`cnngraph train --weights` re-initialises it (Python: import_weights(..., "
            "ignore=[its layers]))")
