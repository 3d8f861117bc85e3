"""ONNX -> spec (importers/onnx.py) against independent references: onnxruntime running the
imported file (our own exports of zoo networks, hand-written ONNX graphs) and the PyTorch
modules that torch.onnx.export (TorchScript and dynamo) exported; then the command and the
errors. The rest of the zoo (the large networks): scripts/import_zoo.py, docs/import.md."""
from __future__ import annotations

import functools
import tempfile
import warnings
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper
from safetensors.torch import load_file
from torch import nn

import cnngraph
from cnngraph.cli import main as cli
from cnngraph.errors import CnnGraphError, InputError
from exporters import export_onnx
from importers import import_model, write_import
from importers.onnx import from_onnx

TOLERANCE = 1e-4  # max |difference| / max |reference|, as `cnngraph verify`

# the small zoo networks, at the smallest sizes their specs allow: the whole zoo (and these at
# full size) runs in scripts/import_zoo.py
ZOO_SMALL = [("lenet5", None), ("lrn_within_net", None), ("dcn_net", None),
             ("dcn_net_plain", None), ("encoder_decoder", None), ("resnet18", (3, 32, 32))]


def rel_error(reference: np.ndarray, got: np.ndarray) -> float:
    assert reference.shape == got.shape
    return float(np.abs(reference - got).max() / max(np.abs(reference).max(), 1e-12))


def build_imported(spec: dict, state: dict) -> torch.nn.Module:
    """The imported spec built, its weights loaded strictly (BatchNorm's counters aside)."""
    module = cnngraph.build(cnngraph.load(spec)).eval()
    missing, unexpected = module.load_state_dict(state, strict=False)
    assert not unexpected and all(k.endswith("num_batches_tracked") for k in missing)
    return module


def onnxruntime_outputs(path, feeds: dict) -> list[np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


def torch_outputs(module, feeds: dict) -> list[np.ndarray]:
    with torch.no_grad():
        out = module(*(torch.from_numpy(v) for v in feeds.values()))
    return [v.numpy() for v in (out.values() if isinstance(out, dict) else [out])]


@functools.lru_cache(maxsize=None)
def zoo_export(name: str, input_shape: tuple | None):
    """(graph, model, path) of `exported_zoo_model`, written once per session."""
    path = Path(tempfile.mkdtemp(prefix="import_onnx_")) / f"{name}.onnx"
    graph, model = exported_zoo_model(name, list(input_shape) if input_shape else None, path)
    return graph, model, path


def exported_zoo_model(name, input_shape, path):
    """A zoo network, random weights with non-trivial batch-norm statistics and deformable
    offsets, exported by cnngraph's exporter."""
    graph = cnngraph.load(name, input_shape=input_shape)
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    gen = torch.Generator().manual_seed(0)
    for m in module.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            for t, low, span in ((m.running_mean, -0.5, 1), (m.running_var, 0.5, 1),
                                 (m.weight.data, 0.5, 1), (m.bias.data, -0.5, 1)):
                t.copy_(torch.rand(t.shape, generator=gen) * span + low)
        if hasattr(m, "offset_conv"):
            m.offset_conv.weight.data.normal_(0, 0.05, generator=gen)
            m.offset_conv.bias.data.normal_(0, 0.5, generator=gen)
    model = export_onnx(graph, module, path)
    return graph, model


@pytest.mark.parametrize("name,input_shape", ZOO_SMALL, ids=[n for n, _ in ZOO_SMALL])
def test_zoo_export_reimports_and_matches_onnxruntime(name, input_shape):
    graph, model, path = zoo_export(name, input_shape)
    spec, state = from_onnx(path)
    module = build_imported(spec, state)
    rng = np.random.default_rng(1)
    feeds = {i.name: rng.standard_normal((2, *graph.input_shapes[i.name])).astype(np.float32)
             for i in model.graph.input}
    for reference, got in zip(onnxruntime_outputs(path, feeds), torch_outputs(module, feeds)):
        assert rel_error(reference, got) < TOLERANCE
    # batch norm the exporter folded stays folded: one batch_norm layer per node left in the file
    ops = [layer["op"] for layer in spec["layers"]]
    assert ops.count("batch_norm") == sum(n.op_type == "BatchNormalization" for n in model.graph.node)
    # every weight of the file, and nothing else, is in the state_dict
    assert sum(v.numel() for v in state.values()) == sum(
        int(np.prod(t.dims)) for t in model.graph.initializer  # weights are named LAYER.KEY,
        if "/" not in t.name)                                  # made constants LAYER/WHAT_N


@pytest.mark.parametrize("name", ["mixed", "cifar10_full"])
def test_caffe_import_exported_imports_back(name, tmp_path):
    """A Caffe net (importers/caffe.py) exported by cnngraph and imported back: Eltwise SUM
    with coefficients (weighted_add), MAX, PROD, two inputs and three outputs (mixed), the
    WITHIN_CHANNEL LRN through cnngraph.LRNWithinChannel (cifar10_full); the channel order
    and normalisation the export recorded come back as meta."""
    from importers.caffe import from_caffe

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        spec, state = from_caffe(Path(__file__).parent / "data" / "caffe" / f"{name}.prototxt")
    graph = cnngraph.load(spec)
    module = cnngraph.build(graph).eval()
    module.load_state_dict(state, strict=False)
    path = tmp_path / f"{name}.onnx"
    model = export_onnx(graph, module, path)
    imported, weights = from_onnx(path)
    ops = {layer["op"] for layer in imported["layers"]}
    assert {"weighted_add", "max", "mul"} <= ops if name == "mixed" else \
        any(n.op_type == "LRNWithinChannel" for n in model.graph.node)
    assert imported["meta"]["channel_order"] == "BGR"
    rng = np.random.default_rng(4)
    feeds = {i.name: rng.standard_normal((2, *graph.input_shapes[i.name])).astype(np.float32)
             for i in model.graph.input}
    for reference, got in zip(onnxruntime_outputs(path, feeds),
                              torch_outputs(build_imported(imported, weights), feeds)):
        assert rel_error(reference, got) < TOLERANCE


def test_float16_export_imports(tmp_path):
    """cnngraph's --fp16 export of dcn_net (float16 weights; Casts at the input, the output and
    around the float32 cnngraph.DeformConv): the Casts vanish, the weights come back float32,
    the module matches onnxruntime on the float16 file to float16 precision."""
    graph, module = cnngraph.load("dcn_net"), None
    torch.manual_seed(0)
    module = cnngraph.build(graph).eval()
    for m in module.modules():
        if hasattr(m, "offset_conv"):
            m.offset_conv.bias.data.normal_(0, 0.5)
    path = tmp_path / "dcn16.onnx"
    export_onnx(graph, module, path, fp16=True)
    spec, state = from_onnx(path)
    assert sum(layer["op"] == "deform_conv2d" for layer in spec["layers"]) == 2
    assert all(v.dtype == torch.float32 for v in state.values())
    feeds = {"input": np.random.default_rng(5).standard_normal((2, 1, 32, 32)).astype(np.float32)}
    (reference,), (got,) = onnxruntime_outputs(path, feeds), torch_outputs(build_imported(spec, state), feeds)
    assert rel_error(reference, got) < 1e-2


def test_folded_batch_norm_stays_folded():
    """resnet18's export holds no BatchNormalization (each folded into its conv): the import
    has no batch_norm layer, every conv has a bias, and the parameter count is the folded one."""
    graph, model, path = zoo_export("resnet18", (3, 32, 32))
    spec, _ = from_onnx(path)
    convs = [layer for layer in spec["layers"] if layer["op"] == "conv2d"]
    assert "batch_norm" not in {layer["op"] for layer in spec["layers"]}
    assert len(convs) == 20 and all(layer["bias"] for layer in convs)
    bn_params = sum(n.stats["params"] for n in graph if n.op == "batch_norm")
    assert cnngraph.load(spec).params == graph.params - bn_params + sum(c["out"] for c in convs)


# --- networks exported by torch.onnx.export ------------------------------------------------------
class Pools(nn.Module):
    """Ceil-mode pools (max, and average without the padding), a batch norm that cannot be
    folded, gating, leaky ReLU, Flatten (Reshape under dynamo), Gemm, softmax."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, stride=2, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(8)
        self.c2 = nn.Conv2d(8, 8, 3, padding=2, dilation=2, groups=4)
        self.bn2 = nn.BatchNorm2d(8)
        self.fc = nn.Linear(8 * 3 * 3, 10)

    def forward(self, x):
        x = F.relu(self.bn1(self.c1(x)))
        x = F.max_pool2d(x, 3, 2, ceil_mode=True)
        x = self.bn2(F.leaky_relu(x * torch.sigmoid(self.c2(x)) + x, 0.2))
        x = F.avg_pool2d(x, 3, 2, padding=1, ceil_mode=True, count_include_pad=False)
        return torch.softmax(self.fc(x.flatten(1)), 1)


class Upsampling(nn.Module):
    """ConvTranspose with output_padding, nearest and bilinear Resize, concat, a residual add,
    x.view(N, -1) (Shape/Gather/Concat -> Reshape under TorchScript) and MatMul + Add."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 6, 3, padding=1)
        self.t = nn.ConvTranspose2d(6, 4, 3, stride=2, padding=1, output_padding=1)
        self.d = nn.Conv2d(10, 2, 1)
        self.w = nn.Parameter(torch.randn(2 * 32 * 32, 5) * 0.01)
        self.b = nn.Parameter(torch.randn(5))

    def forward(self, x):
        a = torch.tanh(self.c(x))
        y = torch.cat([self.t(a), F.interpolate(a, scale_factor=2, mode="nearest")], 1)
        y = self.d(y)
        y = y + F.interpolate(F.avg_pool2d(y, 2), scale_factor=2, mode="bilinear")
        return y.view(y.size(0), -1) @ self.w + self.b


class Classic(nn.Module):
    """'same' padding with an even kernel (asymmetric: Pad + Conv, or the Conv's own pads),
    global average pooling, dropout (gone in eval) and two linear layers."""

    def __init__(self):
        super().__init__()
        self.c = nn.Conv2d(3, 8, 4, padding="same")
        self.fc1 = nn.Linear(8, 16)
        self.drop = nn.Dropout(0.3)
        self.fc2 = nn.Linear(16, 4)

    def forward(self, x):
        x = F.adaptive_avg_pool2d(F.relu(self.c(x)), 1).flatten(1)
        return self.fc2(self.drop(F.relu(self.fc1(x))))


class Modern(nn.Module):
    """The ops of the mobile and modern families: relu6 (Clip), ConvNeXt's permute +
    LayerNorm + permute and layer scale, GELU (Gelu, or its Erf form), chunk (Split or Slice),
    hardswish, channel shuffle (Reshape, Transpose, Reshape), squeeze-and-excitation with
    hardsigmoid (a broadcasting Mul), SiLU (x * Sigmoid(x)), x.mean((2, 3)) (ReduceMean),
    LayerNorm over features."""

    def __init__(self):
        super().__init__()
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.ln = nn.LayerNorm(8, eps=1e-6)
        self.gamma = nn.Parameter(torch.rand(8, 1, 1) + 0.5)
        self.dw = nn.Conv2d(4, 4, 3, padding=1, groups=4)
        self.se = nn.Conv2d(8, 8, 1)
        self.fc = nn.Linear(8, 6)
        self.ln2 = nn.LayerNorm(6)

    def forward(self, x):
        x = F.relu6(self.c1(x))
        x = x + self.gamma * F.gelu(self.ln(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2))
        a, b = x.chunk(2, dim=1)
        x = torch.cat([a, F.hardswish(self.dw(b))], 1)
        n, c, h, w = x.shape
        x = x.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        x = F.silu(x * F.hardsigmoid(self.se(F.adaptive_avg_pool2d(x, 1))))
        return self.ln2(self.fc(x.mean((2, 3))))


class All(nn.Module):
    """The four side by side, for one dynamo export (each takes seconds)."""

    def __init__(self):
        super().__init__()
        self.parts = nn.ModuleList([Pools(), Upsampling(), Classic(), Modern()])

    def forward(self, x):
        return torch.cat([part(x) for part in self.parts], 1)


TORCH_NETS = [("pools", False), ("upsampling", False), ("classic", False), ("modern", False),
              ("all", True)]


@pytest.mark.parametrize("name,dynamo", TORCH_NETS,
                         ids=[f"{n}-{'dynamo' if d else 'torchscript'}" for n, d in TORCH_NETS])
def test_torch_onnx_export_imports_and_matches_pytorch(name, dynamo, tmp_path):
    """TorchScript exports (opset 17) of four small nets, and the dynamo export of all four
    together."""
    torch.manual_seed(0)
    net = {"pools": Pools, "upsampling": Upsampling, "classic": Classic, "modern": Modern,
           "all": All}[name]().eval()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.running_mean.uniform_(-1, 1)
            m.running_var.uniform_(0.5, 2)
    x = torch.randn(3, 3, 16, 16)
    path = tmp_path / f"{name}.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if dynamo:
            torch.onnx.export(net, (x,), path, input_names=["x"], dynamo=True, verbose=False,
                              dynamic_shapes={"x": {0: torch.export.Dim("batch")}})
        else:
            torch.onnx.export(net, (x,), path, input_names=["x"], dynamo=False, opset_version=17,
                              dynamic_axes={"x": {0: "batch"}})
    spec, state = from_onnx(path)
    module = build_imported(spec, state)
    with torch.no_grad():
        reference = net(x).numpy()
        assert reference.std() > 0.01 and rel_error(reference, module(x).numpy()) < TOLERANCE


# --- hand-written graphs, onnxruntime as the reference ---------------------------------------------
def _weights(rng, **shapes):
    return [numpy_helper.from_array((rng.standard_normal(s) * 0.3).astype(np.float32), name)
            for name, s in shapes.items()]


def _model(nodes, inputs, outputs, initializers, opset=19, path=None):
    graph = helper.make_graph(nodes, "hand", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 8
    if all(o.type.tensor_type.HasField("shape") for o in outputs):
        onnx.checker.check_model(model)
    if path is not None:
        onnx.save(model, path)
    return model


def test_hand_written_graph_matches_onnxruntime(tmp_path):
    """Asymmetric pads (from a Pad and the Conv's own), auto_pad SAME_LOWER and SAME_UPPER, a
    bias kept apart (Add), Clip(0) as relu, Sum of three, Resize to sizes with align_corners,
    Gemm with alpha, beta and transB=0, MatMul + Add, softmax over axis -1."""
    rng = np.random.default_rng(0)
    node = helper.make_node
    nodes = [
        node("Pad", ["x", "pads"], ["p"], name="pad"),
        node("Conv", ["p", "w1"], ["c1"], name="conv/asym", pads=[0, 1, 1, 2]),
        node("Add", ["c1", "b1"], ["c1b"], name="bias"),
        node("Conv", ["c1b", "w2", "b2"], ["c2"], name="lower", auto_pad="SAME_LOWER", strides=[2, 2]),
        node("Conv", ["c1b", "w3"], ["c3"], name="upper", auto_pad="SAME_UPPER", strides=[2, 2]),
        node("Clip", ["c3", "zero", ""], ["r3"], name="clip"),
        node("Sum", ["c2", "r3", "c2"], ["s"], name="sum3"),
        node("Resize", ["s", "", "", "sizes"], ["up"], name="resize", axes=[2, 3], mode="linear",
             coordinate_transformation_mode="align_corners"),
        node("GlobalAveragePool", ["up"], ["g"], name="gap"),
        node("Flatten", ["g"], ["f"], name="flat"),
        node("Gemm", ["f", "wg", "bg"], ["y1"], name="gemm", alpha=0.5, beta=2.0),
        node("MatMul", ["y1", "wm"], ["m"], name="mm"),
        node("Add", ["m", "bm"], ["y2"], name="mm_bias"),
        node("Softmax", ["y2"], ["out"], name="softmax", axis=-1),
    ]
    inits = [numpy_helper.from_array(np.array([0, 0, 1, 0, 0, 0, 0, 1], np.int64), "pads"),
             numpy_helper.from_array(np.array(0, np.float32), "zero"),
             numpy_helper.from_array(np.array([12, 14], np.int64), "sizes"),
             *_weights(rng, w1=(4, 3, 3, 2), b1=(1, 4, 1, 1), w2=(6, 4, 3, 3), b2=(6,),
                       w3=(6, 4, 4, 4), wg=(6, 5), bg=(1, 5), wm=(5, 7), bm=(7,))]
    path = tmp_path / "hand.onnx"
    _model(nodes, [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 11, 13])],
           [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 7])], inits, path=path)
    spec, state = from_onnx(path)
    layers = {layer["name"]: layer for layer in spec["layers"]}
    assert layers["conv_asym"]["padding"] == [1, 1, 1, 3]  # the Pad's top and right joined it
    assert layers["lower"]["padding"] == [1, 1, 1, 0] and layers["upper"]["padding"] == [1, 1, 2, 1]
    assert layers["clip"]["op"] == "relu" and "bias" not in layers and "mm_bias" not in layers
    x = rng.standard_normal((2, 3, 11, 13)).astype(np.float32)
    (reference,) = onnxruntime_outputs(path, {"x": x})
    (got,) = torch_outputs(build_imported(spec, state), {"x": x})
    assert rel_error(reference, got) < TOLERANCE


def test_old_opset_is_converted_and_several_inputs_map(tmp_path):
    """An opset-9 model (Upsample, BatchNormalization, Dropout with its ratio attribute, LRN,
    GlobalMaxPool)
    with two inputs and two outputs: converted by onnx's version converter, inputs and outputs
    kept; the Dropout is the identity in inference and gone."""
    rng = np.random.default_rng(2)
    node = helper.make_node
    nodes = [node("Conv", ["image", "w", "b"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             node("BatchNormalization", ["c", "s", "bb", "mean", "var"], ["bn"], name="bn",
                  epsilon=1e-3),
             node("Upsample", ["bn", "scales"], ["up"], name="up", mode="nearest"),
             node("Add", ["up", "mask"], ["sum"], name="sum"),
             node("Dropout", ["sum"], ["d"], name="drop", ratio=0.25),
             node("LRN", ["d"], ["n"], name="lrn", size=3, alpha=0.01, beta=0.6, bias=1.5),
             node("MaxPool", ["n"], ["pooled"], name="pool", kernel_shape=[2, 2], strides=[2, 2]),
             node("Relu", ["pooled"], ["r"], name="relu"),
             node("GlobalMaxPool", ["r"], ["second"], name="gmax")]
    inits = [*_weights(rng, w=(4, 3, 3, 3), b=(4,), s=(4,), bb=(4,), mean=(4,)),
             numpy_helper.from_array(rng.uniform(0.5, 2, 4).astype(np.float32), "var"),
             numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32), "scales")]
    value = helper.make_tensor_value_info
    path = tmp_path / "old.onnx"
    _model(nodes, [value("image", TensorProto.FLOAT, ["N", 3, 6, 6]),
                   value("mask", TensorProto.FLOAT, ["N", 4, 12, 12])],
           [value("pooled", TensorProto.FLOAT, ["N", 4, 6, 6]),
            value("second", TensorProto.FLOAT, ["N", 4, 1, 1])], inits, opset=9, path=path)
    spec, state = from_onnx(path)
    assert spec["inputs"] == {"image": [3, 6, 6], "mask": [4, 12, 12]}
    assert [o["name"] for o in spec["outputs"]] == ["pooled", "second"]
    assert [layer["op"] for layer in spec["layers"]] == [
        "conv2d", "batch_norm", "upsample", "add", "lrn", "max_pool2d", "relu", "max_pool2d"]
    feeds = {"image": rng.standard_normal((2, 3, 6, 6)).astype(np.float32),
             "mask": rng.standard_normal((2, 4, 12, 12)).astype(np.float32)}
    module = build_imported(spec, state)
    for reference, got in zip(onnxruntime_outputs(path, feeds), torch_outputs(module, feeds)):
        assert rel_error(reference, got) < TOLERANCE


# --- the command, and what goes out -------------------------------------------------------------
def test_command_writes_a_spec_that_trains_exports_and_verifies(tmp_path, capsys):
    """`cnngraph import` writes SPEC.yaml and SPEC.safetensors; the spec loads, the weights load
    strictly, and export + verify of the written pair pass (the verify against onnxruntime on
    the original file too)."""
    _, model, source = zoo_export("lenet5", None)
    spec_path = tmp_path / "net.yaml"
    assert cli(["import", str(source), "-o", str(spec_path)]) == 0
    assert "wrote" in capsys.readouterr().out
    weights = tmp_path / "net.safetensors"
    graph = cnngraph.load(spec_path)
    cnngraph.build(graph).load_state_dict(load_file(weights))  # strict
    again = tmp_path / "again.onnx"
    assert cli(["export", str(spec_path), "--weights", str(weights), "-o", str(again)]) == 0
    assert cli(["verify", str(again), "--against", str(spec_path), "--weights", str(weights)]) == 0
    assert cli(["verify", str(source), "--against", str(spec_path), "--weights", str(weights)]) == 0


def test_imported_torch_model_fine_tunes_with_train_weights(tmp_path, bright_thirds, capsys):
    """A PyTorch classifier exported by torch.onnx.export, imported, then `cnngraph train
    --weights` from the imported weights on the bright-thirds data: trains as any spec, and its
    first step starts from the imported network (the same outputs before training)."""
    torch.manual_seed(0)
    net = nn.Sequential(nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(),
                        nn.MaxPool2d(2), nn.Flatten(), nn.Linear(8 * 4 * 4, 3)).eval()
    source = tmp_path / "small.onnx"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(net, (torch.randn(1, 1, 8, 8),), source, dynamo=False,
                          input_names=["pixels"], dynamic_axes={"pixels": {0: "batch"}})
    spec_path = tmp_path / "small.yaml"
    assert cli(["import", str(source), "-o", str(spec_path)]) == 0
    imported = cnngraph.build(cnngraph.load(spec_path)).eval()
    imported.load_state_dict(load_file(tmp_path / "small.safetensors"))
    x = torch.randn(4, 1, 8, 8)
    with torch.no_grad():
        assert rel_error(net(x).numpy(), imported(x).numpy()) < TOLERANCE
    run = tmp_path / "run"
    assert cli(["train", str(spec_path), "--data", str(bright_thirds), "--weights",
                str(tmp_path / "small.safetensors"), "--epochs", "1", "--out", str(run)]) == 0
    assert (run / "best.safetensors").exists()
    capsys.readouterr()


def test_import_model_dispatches_on_the_suffix(tmp_path):
    with pytest.raises(InputError, match=r"cannot tell the format.*\.onnx, \.prototxt"):
        import_model(tmp_path / "model.pb")
    with pytest.raises(InputError, match="holds its own weights"):
        import_model(tmp_path / "model.onnx", tmp_path / "w.caffemodel")
    with pytest.raises(InputError, match="name the spec file"):
        write_import({"name": "x", "input": [4], "layers": [{"name": "fc", "op": "linear",
                                                            "out": 2}]}, {}, tmp_path / "x.txt")


# --- wrong inputs ---------------------------------------------------------------------------------
def _one_line_error(capsys, argv) -> str:
    assert cli(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("cnngraph import: error: ")
    return err


def _save_single(tmp_path, nodes, inits, shape=("N", 3, 8, 8), out_shape=None, extra_inputs=()):
    value = helper.make_tensor_value_info
    path = tmp_path / "bad.onnx"
    _model(nodes, [value("x", TensorProto.FLOAT, list(shape)), *extra_inputs],
           [value("y", TensorProto.FLOAT, out_shape)], inits, path=path)
    return path


def test_unsupported_op_names_node_op_and_what_is_supported(tmp_path, capsys):
    path = _save_single(tmp_path, [helper.make_node("Relu", ["x"], ["r"], name="first"),
                                   helper.make_node("Erf", ["r"], ["y"], name="odd/erf")], [])
    err = _one_line_error(capsys, ["import", str(path), "-o", str(tmp_path / "s.yaml")])
    assert "node 'odd/erf' (Erf) has no cnngraph equivalent; supported: Add, AveragePool" in err
    assert "cnngraph.LRNWithinChannel" in err
    assert not (tmp_path / "s.yaml").exists() and not (tmp_path / "s.safetensors").exists()


def test_damaged_files_are_one_line_errors(tmp_path, capsys):
    data = zoo_export("lenet5", None)[2].read_bytes()
    for i, damaged in enumerate([b"", b"\x00garbage" * 10, data[:len(data) // 2]]):
        path = tmp_path / f"damaged{i}.onnx"
        path.write_bytes(damaged)
        err = _one_line_error(capsys, ["import", str(path), "-o", str(tmp_path / "s.yaml")])
        assert str(path) in err
    err = _one_line_error(capsys, ["import", str(tmp_path / "missing.onnx"), "-o",
                                   str(tmp_path / "s.yaml")])
    assert "no such model file" in err


def test_weights_computed_at_run_time_are_refused(tmp_path):
    """A Conv whose weight is a graph input, and one whose weight is the Relu of a constant
    that constant folding does make constant (that one imports)."""
    rng = np.random.default_rng(0)
    value = helper.make_tensor_value_info
    path = _save_single(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="conv")], [],
                        extra_inputs=[value("w", TensorProto.FLOAT, [4, 3, 3, 3])])
    with pytest.raises(InputError, match=r"node 'conv' \(Conv\) computes its weight \('w'\) at "
                                         "run time, even after constant folding"):
        from_onnx(path)
    path = _save_single(tmp_path, [helper.make_node("Relu", ["w0"], ["w"], name="fold_me"),
                                   helper.make_node("Conv", ["x", "w"], ["y"], name="conv")],
                        _weights(rng, w0=(4, 3, 3, 3)))
    spec, state = from_onnx(path)
    assert [layer["op"] for layer in spec["layers"]] == ["conv2d"]
    assert (state["conv.weight"] >= 0).all()


def test_dynamic_spatial_sizes_are_refused(tmp_path):
    path = _save_single(tmp_path, [helper.make_node("Relu", ["x"], ["y"], name="r")], [],
                        shape=("N", 3, "height", "width"))
    with pytest.raises(InputError, match=r"input .x. has the shape \[N, 3, height, width\]; a "
                                         "spec needs .* fixed.*make_dynamic_shape_fixed"):
        from_onnx(path)


def test_semantics_without_an_exact_equivalent_are_refused(tmp_path):
    """Asymmetric pool padding, an even LRN, Softmax over the batch, a Conv on 1-D data:
    each one line naming the node."""
    rng = np.random.default_rng(0)
    node = helper.make_node
    cases = [
        ([node("MaxPool", ["x"], ["y"], name="p", kernel_shape=[3, 3], pads=[0, 0, 1, 1])], [],
         "asymmetric pads"),
        ([node("LRN", ["x"], ["y"], name="l", size=4)], [], "odd LRN sizes"),
        ([node("Softmax", ["x"], ["y"], name="s", axis=0)], [], "axis 0"),
        ([node("Mul", ["x", "k"], ["y"], name="m")], _weights(rng, k=(1,)), "constant"),
    ]
    for nodes, inits, message in cases:
        path = _save_single(tmp_path, nodes, inits)
        with pytest.raises(InputError, match=message) as info:
            from_onnx(path)
        assert f"node '{nodes[0].name}' ({nodes[0].op_type})" in str(info.value)
    value = helper.make_tensor_value_info
    path = tmp_path / "one_d.onnx"
    _model([node("Conv", ["x", "w"], ["y"], name="c1d")], [value("x", TensorProto.FLOAT, ["N", 3, 8])],
           [value("y", TensorProto.FLOAT, None)], _weights(rng, w=(2, 3, 3)), path=path)
    with pytest.raises(CnnGraphError, match="(N, C, H, W)|2-D"):
        from_onnx(path)


def test_external_data_outside_the_models_folder_is_refused(tmp_path):
    rng = np.random.default_rng(0)
    path = _save_single(tmp_path, [helper.make_node("Conv", ["x", "w"], ["y"], name="c")],
                        _weights(rng, w=(4, 3, 3, 3)))
    model = onnx.load(path)
    tensor = model.graph.initializer[0]
    tensor.data_location = TensorProto.EXTERNAL
    tensor.ClearField("raw_data")
    del tensor.float_data[:]
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", "../../etc/passwd"
    onnx.save(model, path)
    with pytest.raises(InputError, match="only from the model's own folder"):
        from_onnx(path)


def test_constant_folding_stops_at_its_total_budget(tmp_path, monkeypatch):
    """Many foldable nodes each making a large tensor (Expand of a scalar): folding stops once
    their total passes MAX_FOLD_TOTAL (here lowered to about three of them), the rest stays
    unfolded and is refused, instead of the memory running out."""
    import importers.onnx as onnx_importer

    monkeypatch.setattr(onnx_importer, "MAX_FOLD_TOTAL", 3 * 256 * 256)
    node = helper.make_node
    count = 8
    nodes = [node("Expand", ["one", "shape"], [f"big{i}"], name=f"e{i}") for i in range(count)]
    nodes += [node("ReduceSum", [f"big{i}"], [f"s{i}"], name=f"r{i}", keepdims=0)
              for i in range(count)]
    nodes += [node("Sum", [f"s{i}" for i in range(count)], ["t"], name="sum"),
              node("Add", ["x", "t"], ["y"], name="add")]
    path = tmp_path / "many.onnx"
    value = helper.make_tensor_value_info
    _model(nodes, [value("x", TensorProto.FLOAT, ["N", 4])], [value("y", TensorProto.FLOAT, ["N", 4])],
           [numpy_helper.from_array(np.array([256, 256], np.int64), "shape"),
            numpy_helper.from_array(np.array(1.0, np.float32), "one")], path=path)
    with pytest.raises(InputError, match=r"node 'e\d' \(Expand\) has no cnngraph equivalent"):
        from_onnx(path)
    monkeypatch.setattr(onnx_importer, "MAX_FOLD_TOTAL", 1 << 28)  # all folded: Add(x, constant)
    with pytest.raises(InputError, match=r"node 'add' \(Add\) adds the constant"):
        from_onnx(path)


def test_int8_weights_behind_dequantize_linear_import(tmp_path):
    """A QDQ-style weight (int8 initializer -> DequantizeLinear -> Conv) folds to a float weight:
    onnxruntime on the file is the reference."""
    rng = np.random.default_rng(3)
    node = helper.make_node
    q = rng.integers(-100, 100, (4, 3, 3, 3)).astype(np.int8)
    nodes = [node("DequantizeLinear", ["wq", "scale", "zero"], ["w"], name="dq"),
             node("Conv", ["x", "w"], ["y"], name="conv", pads=[1, 1, 1, 1])]
    path = _save_single(tmp_path, nodes, [
        numpy_helper.from_array(q, "wq"), numpy_helper.from_array(np.array(0.02, np.float32), "scale"),
        numpy_helper.from_array(np.array(3, np.int8), "zero")], out_shape=["N", 4, 8, 8])
    spec, state = from_onnx(path)
    assert np.allclose(state["conv.weight"].numpy(), (q.astype(np.float32) - 3) * 0.02)
    x = rng.standard_normal((2, 3, 8, 8)).astype(np.float32)
    (reference,) = onnxruntime_outputs(path, {"x": x})
    (got,) = torch_outputs(build_imported(spec, state), {"x": x})
    assert rel_error(reference, got) < TOLERANCE


def test_damaged_bytes_never_escape_as_other_errors():
    """25 seeded byte-level mutations of a small exported model (names, attributes, weights,
    structure): each imports or is one CnnGraphError, never another exception (a longer run of
    the same: docs/import.md)."""
    import random

    _, _, source = zoo_export("dcn_net", None)
    data = source.read_bytes()
    rng = random.Random(0)
    folder = Path(tempfile.mkdtemp(prefix="import_fuzz_"))
    for case in range(25):
        damaged = bytearray(data)
        for _ in range(rng.choice([1, 2, 4, 8])):
            damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        path = folder / f"case{case}.onnx"
        path.write_bytes(bytes(damaged))
        try:
            from_onnx(path)
        except CnnGraphError as exc:
            assert "\n" not in str(exc)


def test_layer_names_are_valid_unique_identifiers(tmp_path):
    """Node names become identifiers: the exporter's op suffix dropped, other characters '_',
    no leading digit, unique, never a torch.nn.Module attribute (the builder refuses those),
    an unnamed node named by its op type."""
    node = helper.make_node
    nodes = [node("Relu", ["x"], ["a"], name="block.1/conv/Relu"),
             node("Relu", ["a"], ["b"], name="block.1/conv/Relu_7"),
             node("Sigmoid", ["b"], ["c"], name="train"),
             node("Tanh", ["c"], ["d"], name="3rd layer!"),
             node("Relu", ["d"], ["y"], name="")]
    spec, _ = from_onnx(_save_single(tmp_path, nodes, [], out_shape=["N", 3, 8, 8]))
    assert [layer["name"] for layer in spec["layers"]] == [
        "block_1_conv", "block_1_conv_2", "train_2", "tanh_3rd_layer", "relu"]
    assert spec["outputs"] == [{"name": "y", "from": "relu"}]
