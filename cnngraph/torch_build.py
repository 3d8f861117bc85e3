"""The PyTorch builder: lowers a Graph to a torch.nn.Module with a generated forward.

Each op lowers itself (`Op.torch`): layers with state become submodules, registered under their
dotted layer names (`layer2.0.conv1` -> state_dict key `layer2.0.conv1.weight`); stateless ops
become plain function calls. The forward is Python source written once per mode -- one line
per node, intermediates released after their last use -- and compiled, so a call runs no
interpreter loop over the graph and torch.compile / torch.export see ordinary code. Training
and inference each get their own function computing only what their active outputs need (no
auxiliary heads in eval); `forward` picks one on `self.training`. `module.code` shows the
source.
"""
from __future__ import annotations

import itertools
import keyword
import linecache
import re

import torch
from torch import nn

from . import init
from .graph import Graph
from .ops import REGISTRY, Call

_builds = itertools.count()


class Block(nn.Module):
    """A container for the layers of one block instance (`layer2`, `layer2.0`, ...)."""


class GraphModule(nn.Module):
    """A built network. Its generated subclass defines `forward`; `code` is that source and
    `graph` the Graph it was built from."""

    code: str = ""

    def __init__(self, graph: Graph, modules: dict[str, nn.Module]):
        super().__init__()
        self.graph = graph
        for path, module in modules.items():
            self._attach(path, module)

    def _attach(self, path: str, module: nn.Module) -> None:
        *parents, leaf = path.split(".")
        owner: nn.Module = self
        for segment in parents:
            if segment not in owner._modules:
                _add(owner, segment, Block(), path)
            owner = owner._modules[segment]
        placeholder = owner._modules.get(leaf)
        if isinstance(placeholder, Block):  # `a.b` came before the layer `a`: adopt its children
            for name, child in placeholder.named_children():
                _add(module, name, child, f"{path}.{name}")
            owner._modules[leaf] = module
        else:
            _add(owner, leaf, module, path)


def _add(owner: nn.Module, name: str, module: nn.Module, path: str) -> None:
    try:
        owner.add_module(name, module)
    except KeyError:
        raise ValueError(f"layer '{path}': the name '{name}' is taken by torch.nn.Module "
                         "itself; rename the layer") from None


def build(graph: Graph) -> GraphModule:
    """A torch.nn.Module computing `graph` (shapes must be inferred). One tensor argument per
    graph input, named after it; returns the one active output's tensor, or a dict name ->
    tensor when several outputs are active in the current mode (train() / eval())."""
    lowered: dict[str, nn.Module | Call] = {}
    for node in graph:
        if node.op != "input":
            ins = [graph[src].shape for src in node.inputs]
            lowered[node.name] = REGISTRY[node.op].torch(node, ins)
    _relu_in_place(graph, lowered)
    modules = {name: m for name, m in lowered.items() if isinstance(m, nn.Module)}
    source, namespace = _Codegen(graph, lowered).source()
    filename = f"<cnngraph {graph.name} #{next(_builds)}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    exec(compile(source, filename, "exec"), namespace)
    methods = {name: namespace[name] for name in ("forward", "forward_train", "forward_eval")
               if name in namespace}
    cls = type(_class_name(graph.name), (GraphModule,),
               {**methods, "code": source, "__module__": __name__,
                "__doc__": f"The network '{graph.name}', built by cnngraph.build."})
    module = cls(graph, modules)
    init.apply(module, graph)
    return module


# Ops whose output is a fresh tensor that their backward does not read: a ReLU may overwrite it
# (as torchvision's ReLU(inplace=True) after a conv, batch norm or residual add), which saves an
# activation-sized allocation per ReLU.
_OVERWRITABLE = {"conv2d", "conv_transpose2d", "gated_conv2d", "batch_norm", "linear", "add",
                 "mul", "concat"}


def _relu_in_place(graph: Graph, lowered: dict[str, nn.Module | Call]) -> None:
    """Turn `relu(x)` into `relu_(x)` where nothing else reads x and x is no output."""
    users = graph.users()
    outputs = {o.node for o in graph.outputs}
    for node in graph:
        call = lowered.get(node.name)
        if isinstance(call, Call) and call.fn is torch.relu:
            (src,) = node.inputs
            if (graph[src].op in _OVERWRITABLE and users[src] == [node.name]
                    and src not in outputs):
                lowered[node.name] = Call(torch.relu_, call.kwargs)


class _Codegen:
    """Writes the forward source: names for variables and called functions, one statement per
    node, and the release of each intermediate after its last use."""

    def __init__(self, graph: Graph, lowered: dict[str, nn.Module | Call]):
        self.graph, self.lowered = graph, lowered
        self.taken = {"self"}
        self.functions: dict[str, object] = {}  # global name -> function
        function_names: dict[int, str] = {}
        for call in lowered.values():
            if isinstance(call, Call) and id(call.fn) not in function_names:
                name = self._fresh(getattr(call.fn, "__name__", "fn"))
                function_names[id(call.fn)] = name
                self.functions[name] = call.fn
        self.function_names = function_names
        self.var = {node.name: self._fresh(node.name) for node in graph}
        self.args = [self.var[node.name] for node in graph.inputs]

    def _fresh(self, name: str) -> str:
        base = re.sub(r"\W", "_", name)
        if not base or base[0].isdigit() or keyword.iskeyword(base):
            base = "_" + base
        candidate = base
        for n in itertools.count(1):
            if candidate not in self.taken:
                break
            candidate = f"{base}_{n}"
        self.taken.add(candidate)
        return candidate

    def source(self) -> tuple[str, dict]:
        train = self.graph.active_outputs(True)
        infer = self.graph.active_outputs(False)
        if [(o.name, o.node) for o in train] == [(o.name, o.node) for o in infer]:
            text = self._function("forward", train)
        else:
            args = ", ".join(self.args)
            text = (f"def forward({', '.join(['self', *self.args])}):\n"
                    f"    if self.training:\n"
                    f"        return self.forward_train({args})\n"
                    f"    return self.forward_eval({args})\n\n\n"
                    + self._function("forward_train", train) + "\n\n"
                    + self._function("forward_eval", infer))
        return text, dict(self.functions)

    def _function(self, name: str, outputs) -> str:
        needed = self.graph.ancestors([o.node for o in outputs])
        nodes = [n for n in self.graph if n.name in needed and n.op != "input"]
        keep = {o.node for o in outputs}
        last_use = {}
        for i, node in enumerate(nodes):
            for src in node.inputs:
                last_use[src] = i
        lines = [f"def {name}({', '.join(['self', *self.args])}):"]
        for i, node in enumerate(nodes):
            lines.append(f"    {self.var[node.name]} = {self._expression(node)}")
            dead = [self.var[s] for s in dict.fromkeys(node.inputs)
                    if last_use[s] == i and s not in keep]
            if dead:
                lines.append(f"    {' = '.join(dead)} = None")
        if len(outputs) == 1:
            lines.append(f"    return {self.var[outputs[0].node]}")
        else:
            items = ", ".join(f"{o.name!r}: {self.var[o.node]}" for o in outputs)
            lines.append(f"    return {{{items}}}")
        return "\n".join(lines) + "\n"

    def _expression(self, node) -> str:
        args = [self.var[s] for s in node.inputs]
        lowered = self.lowered[node.name]
        if isinstance(lowered, Call):
            args += [f"{k}={v!r}" for k, v in lowered.kwargs.items()]
            return f"{self.function_names[id(lowered.fn)]}({', '.join(args)})"
        return f"{_attribute_path(node.name)}({', '.join(args)})"


def _attribute_path(path: str) -> str:
    """`self.layer2[0].conv1` spelled as torch.fx does: getattr for non-identifier segments."""
    expression = "self"
    for segment in path.split("."):
        if segment.isidentifier() and not keyword.iskeyword(segment):
            expression += f".{segment}"
        else:
            expression = f"getattr({expression}, {segment!r})"
    return expression


def _class_name(name: str) -> str:
    words = re.split(r"\W|_", name)
    camel = "".join(w[:1].upper() + w[1:] for w in words if w)
    return camel if camel.isidentifier() else "Net" + camel
