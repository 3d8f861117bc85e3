"""Starting a run from weights (`cnngraph train --weights FILE`) and freezing its first layers
(`--freeze LAYER`).

The head is the layers named by the spec's `meta.head` (by default the layer that computes each
class-score output). When the dataset has another number of classes than the network, the spec
is rewritten with the head at the dataset's size (so the run directory's spec.yaml rebuilds the
fine-tuned network), the head keeps the fresh initialisation of `build`, and every other tensor
comes from the weights."""
from __future__ import annotations

import copy
from difflib import get_close_matches

from ..errors import CnnGraphError, SpecError
from ..graph import Graph


# --- the head -----------------------------------------------------------------------------
def head_layers(graph: Graph) -> list[str]:
    """`meta.head` (checked by the loader), or the layer computing each output of class
    scores: followed back from the output through parameter-free single-input layers (flatten,
    dropout, pooling) to the first layer with an `out` width."""
    if graph.meta.get("head") is not None:
        return list(graph.meta["head"])
    width, found = graph.num_classes, []
    for output in graph.outputs:
        node = graph[output.node]
        while (not node.stats.get("params") and len(node.inputs) == 1
               and graph[node.inputs[0]].op != "input"):
            node = graph[node.inputs[0]]
        if "out" not in node.attrs or node.shape is None or node.shape[1] != width:
            raise CnnGraphError(f"'{graph.name}': cannot tell which layer computes the class "
                                f"scores of output '{output.name}' (it comes from '{node.name}', "
                                f"a {node.op}); name the classifier layers in the spec's "
                                "`meta.head: [LAYER, ...]` (docs/SPEC.md)")
        if node.name not in found:
            found.append(node.name)
    return found


def with_classes(graph: Graph, classes: list[str]) -> Graph:
    """`graph` with its head giving len(classes) scores and `meta.classes` = classes: the
    spec's head layers rewritten (`out`), loaded again, and checked that nothing but the head
    changed (a head layer written in a block that other layers use too would)."""
    from .. import load

    head, k = head_layers(graph), len(classes)
    spec = copy.deepcopy(graph.spec)
    for path in head:
        layer = _written_layer(spec, path)
        if layer is None:
            raise CnnGraphError(f"'{graph.name}': the head layer '{path}' is not written as a "
                                "plain layer of the spec (or of a block named without `$`), so "
                                f"it cannot be re-sized to {k} classes; write it so, or train "
                                "a spec whose head has the dataset's number of classes")
        layer["out"] = k
    meta = spec.setdefault("meta", {})
    meta["classes"] = list(classes)
    try:
        resized = load(spec)
    except SpecError as exc:
        raise CnnGraphError(f"'{graph.name}': re-sizing the head ({', '.join(head)}) to {k} "
                            f"classes gives a spec that does not check: {exc.reason}") from None
    for node in graph:
        new = resized.nodes.get(node.name)
        expected = {**node.attrs, "out": k} if node.name in head else node.attrs
        if new is None or new.op != node.op or new.inputs != node.inputs or new.attrs != expected:
            raise CnnGraphError(f"'{graph.name}': re-sizing the head layer(s) "
                                f"{', '.join(head)} to {k} classes also changes '{node.name}' "
                                "(written in the same block or repeat): list it in "
                                "`meta.head` too, or give the head its own block")
    return resized


def _written_layer(spec: dict, path: str) -> dict | None:
    """The op layer mapping of `spec` that makes the node `path`: names through top-level
    layers, repeat copies (`NAME.i`) and block instances; None where a name is an expression."""
    parts, layers, i = path.split("."), spec.get("layers"), 0
    blocks = spec.get("blocks") or {}
    while isinstance(layers, list):
        layer = next((x for x in layers if isinstance(x, dict) and x.get("name") == parts[i]),
                     None)
        if layer is None:
            return None
        i += 2 if "repeat" in layer else 1
        if i >= len(parts):
            return layer if "op" in layer and i == len(parts) else None
        block = blocks.get(layer.get("block")) if isinstance(layer.get("block"), str) else None
        layers = block.get("layers") if isinstance(block, dict) else None
    return None


def classes_of(dataset) -> list[str]:
    """The dataset's class names, one per label value (numbered past the names it has)."""
    top = max((int(y.max()) + 1 for y in (dataset.y_train, dataset.y_val) if len(y)), default=0)
    names = list(dataset.classes)
    return names + [str(i) for i in range(len(names), top)]


# --- the weights --------------------------------------------------------------------------
def fresh_layers(base: Graph, graph: Graph) -> list[str]:
    """The head layers `graph` re-sized from `base` (none when the classes agree)."""
    return head_layers(graph) if graph.num_classes != base.num_classes else []


def read_weights(base: Graph, graph: Graph, source, naming: str | None = None):
    """The weights `source` for `base` (`cnngraph.import_weights`: cnngraph's or torchvision's
    names, one-line errors), the head that `graph` re-sized neither required nor taken."""
    from ..pretrained import import_weights

    return import_weights(base, source, naming=naming, ignore=fresh_layers(base, graph),
                          update_meta=False)


def start(model, base: Graph, graph: Graph, weights, source) -> dict:
    """Load `weights` (read_weights) into `model` (built from `graph`) except the re-sized
    head; the record of what was loaded and what kept its fresh initialisation."""
    fresh = fresh_layers(base, graph)
    skip = {k for keys in layer_keys(model, fresh).values() for k in keys}
    own = model.state_dict()
    loaded = {k: weights[k] for k in own if k not in skip}
    model.load_state_dict({**own, **loaded})
    taken = [k for k in loaded if k not in weights.kept]
    return {"weights": str(source), "naming": weights.naming, "loaded_tensors": len(taken),
            "loaded_layers": [n.name for n in graph if any(k.startswith(n.name + ".")
                                                           for k in taken)],
            "kept": [k for k in weights.kept if k not in skip], "reinitialised": fresh,
            "classes": [base.num_classes, graph.num_classes]}


def layer_keys(model, layers: list[str]) -> dict[str, list[str]]:
    """The state_dict keys of each layer (its module's), by layer path."""
    modules = dict(model.named_modules())
    return {name: [f"{name}.{k}" for k in modules[name].state_dict()] if name in modules else []
            for name in layers}


# --- freezing -----------------------------------------------------------------------------
def frozen_layers(graph: Graph, layer: str) -> list[str]:
    """The layers (with parameters or state) up to and including `layer` in graph order; a
    block path counts to its last layer. An unknown path is one line naming close ones."""
    order = [n.name for n in graph if n.op != "input"]
    hits = [i for i, name in enumerate(order) if name == layer or name.startswith(layer + ".")]
    if not hits:
        paths = set(order) | {".".join(n.split(".")[:d]) for n in order
                              for d in range(1, n.count(".") + 1)}
        near = get_close_matches(layer, sorted(paths), n=3, cutoff=0.5)
        close = f" (close: {', '.join(near)})" if near else ""
        raise CnnGraphError(f"--freeze {layer}: no layer or block of '{graph.name}' has this "
                            f"path{close}; `cnngraph show` lists the layer paths in order")
    return order[:max(hits) + 1]


def freeze(model, graph: Graph, layer: str, fresh: list[str]) -> list:
    """Stop the gradients of every parameter of the layers up to `layer`; returns the frozen
    modules, which the trainer keeps in eval mode (batch norms keep their running stats)."""
    layers = frozen_layers(graph, layer)
    clash = [n for n in fresh if n in layers]
    if clash:
        raise CnnGraphError(f"--freeze {layer}: this covers '{clash[0]}', a head layer "
                            "re-initialised for the dataset's classes, which must train; "
                            "freeze up to a layer before the head")
    modules = dict(model.named_modules())
    frozen = [modules[n] for n in layers if n in modules]
    for module in frozen:
        module.requires_grad_(False)
    if not any(p.requires_grad for p in model.parameters()):
        raise CnnGraphError(f"--freeze {layer}: this freezes every layer of '{graph.name}', "
                            "leaving nothing to train; freeze up to an earlier layer")
    return frozen


def summary(record: dict, freeze: str | None, frozen: list[str] | None) -> str:
    """The one line a run started from weights prints."""
    old, new = record["classes"]
    fresh = (f"; re-initialised {', '.join(record['reinitialised'])} ({old} -> {new} classes)"
             if record["reinitialised"] else "")
    frozen = f"; froze {len(frozen)} layers up to {freeze} (eval mode)" if frozen else ""
    names = "" if record["naming"] == "cnngraph" else f", {record['naming']} names"
    kept = f"; {len(record['kept'])} kept fresh (not in the file)" if record["kept"] else ""
    return (f"weights: loaded {record['loaded_tensors']} tensors ({len(record['loaded_layers'])} "
            f"layers{names}) from {record['weights']}{fresh}{kept}{frozen}")
