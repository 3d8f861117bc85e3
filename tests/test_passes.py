"""The inference passes: dead-layer elimination (GoogLeNet's published count without its
auxiliary heads), dropout removal, and batch-norm folding checked against torch's own
convolution and batch norm in eval mode."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.nn import functional as F

import cnngraph
from cnngraph import passes


def test_dead_layers_go_with_the_training_only_outputs():
    g = cnngraph.load("googlenet")
    inference = passes.eliminate_dead_layers(g)
    assert inference.params == 6_624_904                       # torchvision, aux_logits=False
    assert [o.name for o in inference.outputs] == ["main"]
    assert not any(n.startswith(("aux1.", "aux2.")) for n in inference.nodes)
    assert list(inference.nodes) == [n for n in g.nodes if n in inference.nodes]   # order kept
    training = passes.eliminate_dead_layers(g, training=True)
    assert training.params == 13_004_888 and len(training) == len(g)
    assert len(g.outputs) == 3 and g.params == 13_004_888      # the input graph is untouched


def test_remove_dropout_rewires_consumers():
    g = cnngraph.load("alexnet")
    plain = passes.remove_dropout(g)
    assert set(g.nodes) - set(plain.nodes) == {"drop6", "drop7"}
    assert plain["fc7"].inputs == ["relu6"] and plain["fc8"].inputs == ["relu7"]
    assert plain.params == g.params == 60_965_224


def conv_bn_spec(op: str, **attrs) -> dict:
    shape = [6] if op == "linear" else [4, 9, 9]
    return {"name": "fold", "input": shape, "layers": [
        {"name": "layer", "op": op, **attrs},
        {"name": "bn", "op": "batch_norm", "eps": 0.01},
        {"name": "relu", "op": "relu"}]}


def random_state(g: cnngraph.Graph, seed: int = 0) -> dict[str, torch.Tensor]:
    torch.manual_seed(seed)
    state = {k: torch.randn_like(v) for k, v in cnngraph.build(g).state_dict().items()
             if not k.endswith("num_batches_tracked")}
    state["bn.running_var"] = state["bn.running_var"].abs() + 0.5
    return state


def reference(op: str, g, state, x):
    """torch's layer followed by torch's batch norm (eval), from the unfolded weights."""
    a = g["layer"].attrs
    w, b = state["layer.weight"], state.get("layer.bias")
    if op == "conv2d":
        y = F.conv2d(x, w, b, a["stride"], a["padding"][:2], a["dilation"], a["groups"])
    elif op == "conv_transpose2d":
        y = F.conv_transpose2d(x, w, b, a["stride"], a["padding"], a["output_padding"],
                               a["groups"], a["dilation"])
    else:
        y = F.linear(x, w, b)
    return F.batch_norm(y, state["bn.running_mean"], state["bn.running_var"], state["bn.weight"],
                        state["bn.bias"], training=False, eps=0.01)


FOLDS = {
    "conv2d": dict(out=6, kernel=3, padding=1, groups=2, bias=False),
    "conv2d_bias": dict(out=4, kernel=3, stride=2, dilation=2, bias=True),
    "conv_transpose2d": dict(out=6, kernel=4, stride=2, padding=1, groups=2, bias=False),
    "linear": dict(out=5),
}


@pytest.mark.parametrize("case", sorted(FOLDS))
def test_fold_batch_norm_matches_torch(case):
    op = case.removesuffix("_bias")
    g = cnngraph.load(conv_bn_spec(op, **FOLDS[case]))
    state = random_state(g)
    folded, new_state = passes.fold_batch_norm(g, state)
    assert list(folded.nodes) == ["input", "layer", "relu"]
    assert folded["relu"].inputs == ["layer"] and folded["layer"].attrs["bias"] is True
    assert not any(k.startswith("bn.") for k in new_state)
    assert "bn" in g.nodes and "bn.weight" in state                  # inputs untouched
    x = torch.randn(3, *g.input_shape)
    module = cnngraph.build(folded).eval()
    module.load_state_dict(new_state, strict=False)
    with torch.no_grad():
        expected = F.relu(reference(op, g, state, x))
        assert torch.allclose(module(x), expected, atol=1e-5)
    assert folded["layer"].shape == g["bn"].shape


def test_fold_works_on_numpy_and_on_connection_tables():
    table = [[0, 1], [1, 2], [0, 2, 3]]
    g = cnngraph.load(conv_bn_spec("conv2d", out=3, kernel=3, table=table))
    state = random_state(g, seed=1)
    _, new_state = passes.fold_batch_norm(g, {k: v.numpy() for k, v in state.items()})
    assert isinstance(new_state["layer.weight"], np.ndarray)
    # the equivalent dense convolution: zeros where the table has no connection
    dense = torch.zeros(3, 4, 3, 3)
    connections = [(o, i) for o, row in enumerate(table) for i in row]
    for k, (o, i) in enumerate(connections):
        dense[o, i] = state["layer.weight"][k]
    x = torch.randn(2, 4, 9, 9)
    expected = F.batch_norm(F.conv2d(x, dense, state["layer.bias"]), state["bn.running_mean"],
                            state["bn.running_var"], state["bn.weight"], state["bn.bias"],
                            eps=0.01)
    folded_dense = torch.zeros(3, 4, 3, 3)
    for k, (o, i) in enumerate(connections):
        folded_dense[o, i] = torch.from_numpy(new_state["layer.weight"][k])
    got = F.conv2d(x, folded_dense, torch.from_numpy(new_state["layer.bias"]))
    assert torch.allclose(got, expected, atol=1e-5)


def test_no_fold_when_the_layer_has_another_consumer():
    spec = conv_bn_spec("conv2d", out=4, kernel=3, padding=1)
    spec["layers"].append({"name": "sum", "op": "add", "inputs": ["relu", "layer"]})
    g = cnngraph.load(spec)
    folded, state = passes.fold_batch_norm(g, random_state(g))
    assert "bn" in folded.nodes and "bn.running_mean" in state


def test_inference_graph_matches_the_trained_module():
    # conv + BN blocks, a transposed conv + BN, gated convs, skip concats
    g = cnngraph.load("encoder_decoder", input_shape=[1, 16, 16])
    torch.manual_seed(0)
    module = cnngraph.build(g)
    module.train()
    with torch.no_grad():                   # give batch norm non-trivial running statistics
        module(torch.randn(4, *g.input_shape))
    module.eval()
    inference, state = passes.inference_graph(g, module.state_dict())
    assert not any(n.op == "batch_norm" for n in inference)
    biases = sum(g[n.inputs[0]].attrs["out"] for n in g if n.op == "batch_norm")
    bn_params = sum(n.stats["params"] for n in g if n.op == "batch_norm")
    assert inference.params == g.params - bn_params + biases     # each folded conv gains a bias
    folded = cnngraph.build(inference).eval()
    folded.load_state_dict(state, strict=False)
    x = torch.randn(2, *g.input_shape)
    with torch.no_grad():
        assert torch.allclose(folded(x), module(x), atol=1e-4)
    graph_only, none = passes.inference_graph(cnngraph.load("googlenet"))
    assert none is None and graph_only.params == 6_624_904
    assert not any(n.op == "dropout" for n in graph_only)
    aux, _ = passes.inference_graph(cnngraph.load("googlenet"), keep_aux=True)
    assert [o.name for o in aux.outputs] == ["main", "aux1", "aux2"]
    assert not any(n.op == "dropout" for n in aux)
