"""The IR exporter against independent references: each zoo model's own PyTorch module run by
PyTorch, onnx's checker and shape inference, onnxruntime's kernels; plus the torch.onnx path,
fp16, metadata, weight errors, opset errors, atomic writes and the export/verify commands.

One export per zoo model serves every check on it (the file is written once, then checked and
run at batch 1 and 3)."""
from __future__ import annotations

import json
import os

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph import zoo
from cnngraph.cli import main as cli
from cnngraph.errors import ExportError
from cnngraph.runtime import cuda_status
from exporters import DOMAIN, export_onnx, torch_onnx_export

# The families of issue 12 export here in their smallest variant at 64x64 (the others are built from
# the same blocks); scripts/verify_families.py exports and verifies every variant, fp32 and fp16.
SMALLEST = {"mobilenet_v2", "mobilenet_v3_small", "efficientnet_b0", "mnasnet0_5",
            "squeezenet1_1", "shufflenet_v2_x0_5", "regnet_x_400mf", "regnet_y_400mf"}
LARGER_VARIANTS = {f"efficientnet_b{k}" for k in range(1, 8)} | {
    "mobilenet_v3_large", "mnasnet0_75", "mnasnet1_0", "mnasnet1_3",
    "squeezenet1_0", "shufflenet_v2_x1_0", "shufflenet_v2_x1_5", "shufflenet_v2_x2_0",
    "regnet_x_800mf", "regnet_x_1_6gf", "regnet_x_3_2gf", "regnet_x_8gf",
    "regnet_x_16gf", "regnet_y_800mf", "regnet_y_1_6gf", "regnet_y_3_2gf",
    "regnet_y_8gf", "regnet_y_16gf", "convnext_small", "convnext_base", "convnext_large"}
ZOO = [name for name in zoo.names() if name not in LARGER_VARIANTS]
TOLERANCE = 1e-4  # max |onnx - torch| / max |torch|, as `cnngraph verify`


def randomize_batch_norm(module: torch.nn.Module, seed: int = 0) -> None:
    """Non-trivial running statistics and affine terms, so folding them is really tested."""
    gen = torch.Generator().manual_seed(seed)
    for m in module.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
            c = m.num_features
            m.running_mean.copy_(torch.rand(c, generator=gen) - 0.5)
            m.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
            m.weight.data.copy_(torch.rand(c, generator=gen) + 0.5)
            m.bias.data.copy_(torch.rand(c, generator=gen) - 0.5)


def build(name_or_spec, seed: int = 0, input_shape=None):
    graph = cnngraph.load(name_or_spec, input_shape=input_shape)
    torch.manual_seed(seed)
    module = cnngraph.build(graph).eval()
    randomize_batch_norm(module, seed)
    for m in module.modules():  # deformable layers start with zero offsets: make them move
        if hasattr(m, "offset_conv"):
            torch.nn.init.normal_(m.offset_conv.weight, 0.0, 0.05)
            torch.nn.init.normal_(m.offset_conv.bias, 0.0, 0.5)
    return graph, module


def run_onnx(path, x: np.ndarray) -> dict[str, np.ndarray]:
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]
    return dict(zip(names, session.run(names, {session.get_inputs()[0].name: x})))


def run_torch(module, x: np.ndarray) -> dict[str, np.ndarray]:
    with torch.no_grad():
        out = module(torch.from_numpy(x))
    return {k: v.numpy() for k, v in out.items()} if isinstance(out, dict) else {"": out.numpy()}


def relative_error(got: np.ndarray, ref: np.ndarray) -> float:
    assert got.shape == ref.shape, (got.shape, ref.shape)
    return float(np.max(np.abs(got - ref)) / max(np.max(np.abs(ref)), 1e-12))


def assert_matches(got: dict, ref: dict, tolerance: float = TOLERANCE, rows=slice(None)) -> None:
    ref = list(ref.values()) if "" in ref else [ref[k] for k in got]
    for (name, value), expected in zip(got.items(), ref):
        assert relative_error(value, expected[rows]) <= tolerance, name


def zoo_input_shape(name: str):
    """The input the zoo test uses: the spec's, except for nets over 2 GMACs (VGG, the deeper
    ResNets and DenseNets), which run at 64 pixels -- the same layers and weights for a twelfth
    of the arithmetic, so the whole zoo fits the test budget. Inception v3 keeps its 299: its
    auxiliary head (checked at load) needs it."""
    graph = cnngraph.load(name)
    if (graph.macs <= 2e9 and name not in SMALLEST) or name == "inception_v3":
        return None
    return [graph.input_shape[0], 64, 64]


@pytest.mark.parametrize("name", ZOO)
def test_zoo_model_exports_checks_and_matches_torch(name, tmp_path):
    graph, module = build(name, input_shape=zoo_input_shape(name))
    path = tmp_path / f"{name}.onnx"
    export_onnx(graph, module, path)
    del module.graph  # keep memory low for the big nets: only the weights are needed now

    onnx.checker.check_model(str(path), full_check=True)  # includes strict shape inference
    model = onnx.load(str(path), load_external_data=False)
    producers = {out: node for node in model.graph.node for out in node.output}
    ops = [node.op_type for node in model.graph.node]
    assert "Dropout" not in ops and "Identity" not in ops
    for node in model.graph.node:
        if node.op_type == "BatchNormalization":
            assert producers.get(node.input[0]) is None or producers[node.input[0]].op_type != "Conv"
    custom = {node.op_type for node in model.graph.node if node.domain == DOMAIN}
    assert custom <= {f.name for f in model.functions if f.domain == DOMAIN}
    assert ("dcn" not in name or "plain" in name) or "DeformConv" in custom
    assert "lrn_within" not in name or "LRNWithinChannel" in custom
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_param  # symbolic batch

    x = np.random.default_rng(0).standard_normal((3, *graph.input_shape), dtype=np.float32)
    expected = run_torch(module, x)
    assert_matches(run_onnx(path, x), expected)
    assert_matches(run_onnx(path, x[:1]), expected, rows=slice(0, 1))


CUSTOM_NET = {
    "name": "custom_net", "input": [3, 20, 20],
    "layers": [
        {"name": "conv", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1},
        {"name": "dcn1", "op": "deform_conv2d", "out": 8, "kernel": 3, "padding": 1},
        {"name": "within", "op": "lrn", "region": "within_channel", "size": 5, "alpha": 0.5,
         "k": 1.5},
        {"name": "dcn2", "op": "deform_conv2d", "out": 12, "kernel": 3, "padding": 2,
         "dilation": 2, "stride": 2, "modulated": True, "groups": 2, "offset_groups": 2},
        {"name": "across", "op": "lrn", "size": 3, "alpha": 0.1, "k": 2.0},
        {"name": "pool", "op": "global_avg_pool2d"},
        {"name": "flat", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 5},
    ],
}


@pytest.fixture(scope="module")
def custom_net():
    return build(CUSTOM_NET, seed=1)


def test_torch_onnx_path_gives_the_ir_exports_nodes_and_outputs(custom_net, tmp_path):
    graph, module = custom_net
    x = np.random.default_rng(1).standard_normal((2, 3, 20, 20), dtype=np.float32)
    export_onnx(graph, module, tmp_path / "ir.onnx")
    torch_onnx_export(module, (torch.from_numpy(x),), tmp_path / "dynamo.onnx")
    dynamo = onnx.load(str(tmp_path / "dynamo.onnx"))
    onnx.checker.check_model(dynamo, full_check=True)
    assert sorted(n.op_type for n in dynamo.graph.node if n.domain == DOMAIN) == \
        ["DeformConv", "DeformConv", "LRNWithinChannel"]
    assert {f.name for f in dynamo.functions} == {"DeformConv", "LRNWithinChannel"}
    assert "LRN" in [n.op_type for n in dynamo.graph.node]

    ir_out = list(run_onnx(tmp_path / "ir.onnx", x).values())[0]
    dynamo_out = list(run_onnx(tmp_path / "dynamo.onnx", x).values())[0]
    assert relative_error(dynamo_out, ir_out) <= TOLERANCE
    assert relative_error(ir_out, run_torch(module, x)[""]) <= TOLERANCE


def test_torch_onnx_path_opsets_and_training_mode(tmp_path):
    """The dynamo exporter's oldest opset (18) with the legacy deformable body (16+) matches
    torch; an older opset is refused before exporting; the module's training mode survives."""
    import custom_ops
    torch.manual_seed(0)
    module = torch.nn.Sequential(custom_ops.DeformConv2d(3, 4, 3, padding=1, modulated=True),
                                 torch.nn.BatchNorm2d(4))
    torch.nn.init.normal_(module[0].offset_conv.weight, std=0.1)
    module.train()
    x = np.random.default_rng(5).standard_normal((2, 3, 9, 9), dtype=np.float32)
    with pytest.raises(ExportError, match="opset 18 or newer, not 16.*export_onnx"):
        torch_onnx_export(module, (torch.from_numpy(x),), tmp_path / "m.onnx", opset=16)
    with pytest.raises(ExportError, match="cnngraph.DeformConv body needs opset 19.*legacy"):
        torch_onnx_export(module, (torch.from_numpy(x),), tmp_path / "m.onnx", opset=18)
    torch_onnx_export(module, (torch.from_numpy(x),), tmp_path / "m.onnx", opset=18,
                      deform_body="legacy")
    assert module.training
    assert_matches(run_onnx(tmp_path / "m.onnx", x), run_torch(module.eval(), x))


def test_legacy_deform_body_matches_torch(custom_net, tmp_path):
    """At opset 16, the oldest its GridSample allows (the native body needs 19)."""
    graph, module = custom_net
    export_onnx(graph, module, tmp_path / "legacy.onnx", opset=16, deform_body="legacy")
    model = onnx.load(str(tmp_path / "legacy.onnx"))
    body = next(f for f in model.functions if f.name == "DeformConv")
    assert "DeformConv" not in {n.op_type for n in body.node}
    x = np.random.default_rng(2).standard_normal((2, 3, 20, 20), dtype=np.float32)
    assert_matches(run_onnx(tmp_path / "legacy.onnx", x), run_torch(module, x))


@pytest.mark.parametrize("name", ["lenet5", "dcn_net", "lrn_within_net"])
def test_fp16_export_stays_within_its_tolerance(name, tmp_path):
    graph, module = build(name)
    export_onnx(graph, module, tmp_path / "half.onnx", fp16=True)
    onnx.checker.check_model(str(tmp_path / "half.onnx"), full_check=True)
    model = onnx.load(str(tmp_path / "half.onnx"))
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    x = np.random.default_rng(3).standard_normal((3, *graph.input_shape), dtype=np.float32)
    assert_matches(run_onnx(tmp_path / "half.onnx", x), run_torch(module, x), tolerance=1e-2)


def test_metadata_records_spec_and_preprocessing(tmp_path):
    graph, module = build("lenet5")
    export_onnx(graph, module, tmp_path / "m.onnx", dynamic_batch=False, batch_size=4)
    model = onnx.load(str(tmp_path / "m.onnx"))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["cnngraph.spec"])["name"] == "lenet5"
    assert cnngraph.load(json.loads(props["cnngraph.spec"])).params == graph.params
    assert json.loads(props["cnngraph.input_shape"]) == [1, 32, 32]
    assert props["cnngraph.input_layout"] == "NCHW"
    assert json.loads(props["cnngraph.classes"]) == [str(i) for i in range(10)]
    assert props["cnngraph.version"]
    assert model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 4

    graph, module = build("resnet18")
    export_onnx(graph, module, tmp_path / "r.onnx")
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "r.onnx")).metadata_props}
    assert json.loads(props["cnngraph.normalize"]) == {"mean": [0.485, 0.456, 0.406],
                                                       "std": [0.229, 0.224, 0.225]}


def test_bad_weights_give_one_error_listing_every_difference(tmp_path):
    graph, module = build("lenet5")
    state = dict(module.state_dict())
    del state["c1.weight"]
    state["c5.bias"] = torch.zeros(7)
    state["nonsense.weight"] = torch.zeros(1)
    path = tmp_path / "bad.onnx"
    path.write_bytes(b"previous export")
    with pytest.raises(ExportError) as err:
        export_onnx(graph, state, path)
    message = str(err.value)
    assert "missing: c1.weight" in message and "unexpected: nonsense.weight" in message
    assert "c5.bias (7,) (expected (120,))" in message
    assert path.read_bytes() == b"previous export" and os.listdir(tmp_path) == ["bad.onnx"]


def test_within_channel_lrn_exports_at_opset_15(tmp_path):
    """Its body needs CastLike (opset 15), nothing newer."""
    graph, module = build("lrn_within_net")
    export_onnx(graph, module, tmp_path / "old.onnx", opset=15)
    onnx.checker.check_model(str(tmp_path / "old.onnx"), full_check=True)
    x = np.random.default_rng(4).standard_normal((2, *graph.input_shape), dtype=np.float32)
    assert_matches(run_onnx(tmp_path / "old.onnx", x), run_torch(module, x))
    with pytest.raises(ExportError, match=r"LRNWithinChannel function body needs ONNX opset 15"):
        export_onnx(graph, module, tmp_path / "older.onnx", opset=14)


def test_an_opset_too_old_names_the_layer_and_the_opset(custom_net, tmp_path):
    graph, module = custom_net
    with pytest.raises(ExportError, match=r"layer 'dcn1'.*opset 19 or newer.*--deform-body legacy.*opset 16"):
        export_onnx(graph, module, tmp_path / "old.onnx", opset=18)
    with pytest.raises(ExportError, match=r"layer 'dcn1'.*opset 16 or newer"):
        export_onnx(graph, module, tmp_path / "old.onnx", opset=15, deform_body="legacy")


def test_export_and_verify_commands(tmp_path, capsys):
    path = tmp_path / "lenet5.onnx"
    assert cli(["export", "lenet5", "-o", str(path), "--seed", "3"]) == 0
    assert cli(["verify", str(path), "--against", "lenet5", "--seed", "3"]) == 0
    out = capsys.readouterr().out
    assert "batch 1" in out and "batch 3" in out and "PASS" in out
    assert cli(["verify", str(path), "--against", "lenet5", "--seed", "4"]) == 1  # other weights
    assert "hint: weights differ?" in capsys.readouterr().out
    assert cli(["export", "lenet5", "-o", str(path), "--weights", str(tmp_path / "none.pt")]) == 2


def test_verify_says_when_the_model_came_from_another_spec(tmp_path, capsys):
    spec = {"name": "other", "input": [1, 32, 32], "layers": [
        {"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "out": 10}]}
    (tmp_path / "other.json").write_text(json.dumps(spec))
    path = tmp_path / "other.onnx"
    assert cli(["export", str(tmp_path / "other.json"), "-o", str(path)]) == 0
    assert cli(["verify", str(path), "--against", "lenet5"]) == 1
    assert "exported from spec 'other', and --against gives 'lenet5'" in capsys.readouterr().out


def test_verify_compares_the_variant_not_the_family(tmp_path, capsys):
    import yaml

    family = {"name": "tiny", "input": [1, 8, 8], "params": {"width": 4},
              "variants": {"tiny_a": {"width": 4}, "tiny_b": {"width": 4}}, "variant": "tiny_a",
              "layers": [{"name": "conv", "op": "conv2d", "out": "$width", "kernel": 3},
                         {"name": "flat", "op": "flatten"},
                         {"name": "fc", "op": "linear", "out": 3}]}
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text(yaml.safe_dump(family))
    b.write_text(yaml.safe_dump({**family, "variant": "tiny_b"}))
    path = tmp_path / "a.onnx"
    assert cli(["export", str(a), "-o", str(path)]) == 0
    capsys.readouterr()
    assert cli(["verify", str(path), "--against", str(a)]) == 0  # the same variant: no note
    assert "note:" not in capsys.readouterr().out
    assert cli(["verify", str(path), "--against", str(b)]) == 0  # same weights, other variant
    assert "exported from spec 'tiny_a', and --against gives 'tiny_b'" in capsys.readouterr().out
    # an export that recorded only the family (no variant) matches every variant of it
    model = onnx.load(str(path))
    for prop in model.metadata_props:
        if prop.key == "cnngraph.spec":
            prop.value = json.dumps({k: v for k, v in json.loads(prop.value).items()
                                     if k != "variant"})
    onnx.save(model, str(path))
    assert cli(["verify", str(path), "--against", str(b)]) == 0
    assert "note:" not in capsys.readouterr().out


def test_a_static_batch_is_verified_at_its_size(tmp_path, capsys):
    path = tmp_path / "b2.onnx"
    assert cli(["export", "lenet5", "-o", str(path), "--static-batch", "2"]) == 0
    assert cli(["verify", str(path), "--against", "lenet5"]) == 0
    out = capsys.readouterr().out
    assert "batch 2" in out and "batch 1" not in out and "skipped" not in out
    assert cli(["verify", str(path), "--against", "lenet5", "--seed", "1"]) == 1  # it compares


def test_command_user_errors_are_one_line(tmp_path, capsys):
    lenet = tmp_path / "lenet5.onnx"
    assert cli(["export", "lenet5", "-o", str(lenet)]) == 0
    capsys.readouterr()

    def error(*argv) -> str:
        assert cli(list(argv)) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "Traceback" not in err
        return err

    assert "(1, 32, 32)" in error("verify", str(lenet), "--against", "resnet18")  # other input
    if not cuda_status()[0]:
        message = error("verify", str(lenet), "--against", "lenet5", "--placement", "cuda")
        assert "--placement cuda asked for" in message and "--placement cpu" in message
        assert "--device" not in message  # verify has no such flag
    garbage = tmp_path / "bad.onnx"
    garbage.write_text("garbage\n")
    assert "not an ONNX model" in error("verify", str(garbage), "--against", "lenet5")
    newer = onnx.load(str(lenet))  # IR 14 / opset 28: newer than onnxruntime 1.31 loads
    newer.ir_version, newer.opset_import[0].version = 14, 28
    onnx.save(newer, str(tmp_path / "newer.onnx"))
    assert "cannot load" in error("verify", str(tmp_path / "newer.onnx"), "--against", "lenet5")

    newest = max(o for o in range(13, onnx.defs.onnx_opset_version() + 1) if _ort_loads_opset(o))
    assert f"..{newest})" in error("export", "lenet5", "-o", str(tmp_path / "n.onnx"),
                                   "--opset", str(newest + 1))
    assert "is a folder" in error("export", "lenet5", "-o", str(tmp_path))
    assert "is a file, not a folder" in error("export", "lenet5", "-o", str(lenet / "x.onnx"))

    weights = tmp_path / "ints.safetensors"
    from safetensors.torch import save_file

    graph, module = build("lenet5")
    save_file({k: v.to(torch.int64) if k == "c1.weight" else v
               for k, v in module.state_dict().items()}, str(weights))
    assert "c1.weight (int64)" in error("export", "lenet5", "-o", str(tmp_path / "i.onnx"),
                                        "--weights", str(weights))


def _ort_loads_opset(opset: int) -> bool:
    """An independent probe: onnxruntime loads a one-Relu model of `opset` at onnx's IR."""
    x = onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])
    y = onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])
    graph = onnx.helper.make_graph([onnx.helper.make_node("Relu", ["x"], ["y"])], "g", [x], [y])
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", opset)])
    model.ir_version = onnx.helper.find_min_ir_version_for(list(model.opset_import))
    try:
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    except Exception:
        return False
    return True


def test_python_api_takes_a_zoo_name_and_says_what_it_expects(tmp_path):
    graph, module = build("lenet5")
    export_onnx("lenet5", module, tmp_path / "n.onnx")
    x = np.random.default_rng(7).standard_normal((2, 1, 32, 32), dtype=np.float32)
    assert_matches(run_onnx(tmp_path / "n.onnx", x), run_torch(module, x))
    with pytest.raises(TypeError, match="cnngraph Graph"):
        export_onnx(42, module, tmp_path / "t.onnx")
    _, other = build("resnet18")
    with pytest.raises(ExportError, match="leave out --weights.*Python"):
        export_onnx("lenet5", other, tmp_path / "o.onnx")  # a module of another spec


def test_big_models_use_external_data(tmp_path, monkeypatch):
    from exporters import writer

    monkeypatch.setattr(writer, "EXTERNAL_DATA_THRESHOLD", 100_000)  # lenet5 holds 240 kB
    graph, module = build("lenet5")
    path = tmp_path / "big.onnx"
    export_onnx(graph, module, path)
    assert sorted(os.listdir(tmp_path)) == ["big.onnx", "big.onnx.data"]
    assert path.stat().st_size < 100_000
    x = np.random.default_rng(4).standard_normal((2, 1, 32, 32), dtype=np.float32)
    assert_matches(run_onnx(path, x), run_torch(module, x))


def test_export_from_a_training_run_directory(tmp_path):
    from cnngraph.train import rundir

    graph, module = build("lenet5", seed=5)
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_spec(run / rundir.SPEC, graph.spec)
    normalize = {"mean": [0.25], "std": [0.5]}
    rundir.write_json(run / rundir.INFO, {"classes": list("abcdefghij"), "normalize": normalize})
    rundir.write_weights(run / rundir.BEST, module.state_dict())
    path = tmp_path / "run.onnx"
    assert cli(["export", str(run), "-o", str(path)]) == 0
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["cnngraph.normalize"]) == normalize
    assert json.loads(props["cnngraph.classes"]) == list("abcdefghij")
    x = np.random.default_rng(5).standard_normal((2, 1, 32, 32), dtype=np.float32)
    assert_matches(run_onnx(path, x), run_torch(module, x))  # the run's weights, not a seed's
    assert cli(["verify", str(path), "--against", str(run)]) == 0


def test_a_run_without_best_weights_exports_its_last_ones_and_says_so(tmp_path, capsys):
    from cnngraph.train import rundir

    graph, module = build("lenet5", seed=6)
    run = tmp_path / "run"
    run.mkdir()
    rundir.write_spec(run / rundir.SPEC, graph.spec)
    rundir.write_json(run / rundir.INFO, {"classes": [str(i) for i in range(10)],
                                          "normalize": {"mean": [0.5], "std": [0.5]}})
    rundir.write_weights(run / rundir.LAST, module.state_dict())
    path = tmp_path / "last.onnx"
    assert cli(["export", str(run), "-o", str(path)]) == 0
    assert f"using its last weights, {rundir.LAST}" in capsys.readouterr().out
    x = np.random.default_rng(8).standard_normal((2, 1, 32, 32), dtype=np.float32)
    assert_matches(run_onnx(path, x), run_torch(module, x))


def test_keep_aux_exports_the_auxiliary_heads(tmp_path):
    graph, module = build("googlenet")
    path = tmp_path / "aux.onnx"
    export_onnx(graph, module, path, keep_aux=True)
    x = np.random.default_rng(6).standard_normal((1, 3, 224, 224), dtype=np.float32)
    got = run_onnx(path, x)
    assert list(got) == ["main", "aux1", "aux2"]
    with torch.no_grad():  # every head, with inference-mode batch norm and dropout
        expected = {k: v.numpy() for k, v in module.forward_train(torch.from_numpy(x)).items()}
    assert_matches(got, expected)

    from safetensors.torch import save_file  # `verify` checks the aux heads too

    save_file(module.state_dict(), str(tmp_path / "w.safetensors"))
    assert cli(["verify", str(path), "--against", "googlenet",
                "--weights", str(tmp_path / "w.safetensors")]) == 0


def test_export_refuses_a_missing_folder_and_notes_a_foreign_suffix(tmp_path, capsys, caplog):
    target = tmp_path / "nonexistdir" / "a" / "b.onnx"
    assert cli(["export", "lenet5", "-o", str(target)]) == 2
    err = capsys.readouterr().err
    assert err.splitlines() == [f"cnngraph export: error: -o {target}: folder {target.parent} "
                                "does not exist; create it first or choose another place"]
    assert not (tmp_path / "nonexistdir").exists()  # nothing made
    txt = tmp_path / "x.txt"
    assert cli(["export", "lenet5", "-o", str(txt)]) == 0
    assert [r.getMessage() for r in caplog.records if r.levelname == "WARNING"] == \
        [f"note: {txt} does not end in .onnx (it is written as ONNX all the same)"]
    assert onnx.load(str(txt)).graph.output  # ONNX all the same
