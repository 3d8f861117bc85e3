"""The runtime on the CPU provider against independent references (torch functional ops), the
optimised-model cache, placement reports, and the CUDA paths where CUDA really runs."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper, numpy_helper

from cnngraph.errors import InputError
from cnngraph.runtime import (ModelMeta, PlacementError, Predictor, check_placement, cuda_status,
                              float16_model, placement)
from cnngraph.runtime.session import cache_path

CUDA = cuda_status()[0]
needs_cuda = pytest.mark.skipif(not CUDA, reason="CUDA provider cannot start here")

RNG = np.random.default_rng(0)
W1 = RNG.standard_normal((4, 3, 3, 3)).astype(np.float32) * 0.3
B1 = RNG.standard_normal(4).astype(np.float32) * 0.1
FC = RNG.standard_normal((5, 4)).astype(np.float32)
FCB = RNG.standard_normal(5).astype(np.float32)


def scaled_relu() -> onnx.FunctionProto:
    """A cnngraph-domain function: 2 * relu(x), its body nodes named."""
    return helper.make_function(
        "cnngraph", "ScaledRelu", ["X"], ["Y"],
        [helper.make_node("Relu", ["X"], ["r"], name="relu"),
         helper.make_node("Constant", [], ["two"], name="two",
                          value=helper.make_tensor("v", TensorProto.FLOAT, [], [2.0])),
         helper.make_node("Mul", ["r", "two"], ["Y"], name="mul")],
        opset_imports=[helper.make_opsetid("", 18)])


def write_model(path, w1=W1, meta: dict | None = None, out_shape=("N", 5), batch="N"):
    """Conv(3->4, 3x3, pad 1) -> cnngraph.ScaledRelu -> GlobalAveragePool -> Flatten -> Gemm(5)."""
    nodes = [helper.make_node("Conv", ["x", "W1", "B1"], ["c"], pads=[1, 1, 1, 1], name="conv"),
             helper.make_node("ScaledRelu", ["c"], ["s"], domain="cnngraph", name="act"),
             helper.make_node("GlobalAveragePool", ["s"], ["p"], name="gap"),
             helper.make_node("Flatten", ["p"], ["f"], name="flat"),
             helper.make_node("Gemm", ["f", "FC", "FCB"], ["logits"], transB=1, name="fc")]
    graph = helper.make_graph(
        nodes, "tiny", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, 8, 8])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, out_shape)],
        [numpy_helper.from_array(a, n) for a, n in ((w1, "W1"), (B1, "B1"), (FC, "FC"), (FCB, "FCB"))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18),
                                                    helper.make_opsetid("cnngraph", 1)],
                              functions=[scaled_relu()], ir_version=10)
    for key, value in (meta or {}).items():
        model.metadata_props.add(key=key, value=value)
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, str(path))
    return path


def reference(x: np.ndarray, w1=W1) -> np.ndarray:
    t = torch.from_numpy(x)
    h = 2 * F.relu(F.conv2d(t, torch.from_numpy(w1), torch.from_numpy(B1), padding=1))
    return F.linear(h.mean(dim=(2, 3)), torch.from_numpy(FC), torch.from_numpy(FCB)).numpy()


@pytest.fixture
def model(tmp_path):
    return write_model(tmp_path / "tiny.onnx")


X = RNG.random((2, 3, 8, 8), dtype=np.float32)


def test_cpu_predictor_matches_torch_reference(model):
    p = Predictor(model, "cpu", threads=1)
    assert p.provider == "CPUExecutionProvider"
    np.testing.assert_allclose(p.run(X)[0], reference(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p(x=X.astype(np.float64))[0], reference(X), rtol=1e-5, atol=1e-5)


def test_torch_and_ortvalue_binding_match_reference(model):
    p = Predictor(model, "cpu")
    out = p.run_torch(torch.from_numpy(X))[0]
    assert isinstance(out, torch.Tensor) and out.shape == (2, 5)
    np.testing.assert_allclose(out.numpy(), reference(X), rtol=1e-5, atol=1e-5)
    values = p.run_ortvalues(p.to_device(X))
    np.testing.assert_allclose(values[0].numpy(), reference(X), rtol=1e-5, atol=1e-5)
    x1 = X[:1].copy()   # another batch size: output shapes found again
    np.testing.assert_allclose(p.run_torch(torch.from_numpy(x1))[0].numpy(), reference(x1),
                               rtol=1e-5, atol=1e-5)
    # a model that does not declare its output shape: found by a run on zeros
    q = Predictor(write_model(model.with_name("undeclared.onnx"), out_shape=[None, None]), "cpu")
    np.testing.assert_allclose(q.run_torch(torch.from_numpy(X))[0].numpy(), reference(X),
                               rtol=1e-5, atol=1e-5)


def test_optimised_model_is_cached_and_reused(model):
    Predictor(model, "cpu")
    cached = list(model.parent.glob("tiny.cpu-ort*.opt.onnx"))
    assert cached == [cache_path(model, "cpu")]
    # the cached graph had its cnngraph function inlined and still loads on its own
    assert not onnx.load(str(cached[0])).functions
    # prove the second session reads the cache: plant a cache built from other weights
    other = write_model(model.with_name("w2.onnx"), w1=-W1)
    Predictor(other, "cpu")
    shutil.copy(cache_path(other, "cpu"), cached[0])
    np.testing.assert_allclose(Predictor(model, "cpu").run(X)[0], reference(X, -W1), rtol=1e-5, atol=1e-5)


def test_changed_model_gets_a_fresh_cache(model):
    Predictor(model, "cpu")
    first = cache_path(model, "cpu")
    write_model(model, w1=W1 * 2)
    out = Predictor(model, "cpu").run(X)[0]
    np.testing.assert_allclose(out, reference(X, W1 * 2), rtol=1e-5, atol=1e-5)
    assert not first.exists() and cache_path(model, "cpu").exists()


def test_broken_cache_is_rebuilt(model):
    Predictor(model, "cpu")
    cache_path(model, "cpu").write_bytes(b"not a model")
    np.testing.assert_allclose(Predictor(model, "cpu").run(X)[0], reference(X), rtol=1e-5, atol=1e-5)
    onnx.load(str(cache_path(model, "cpu")))   # rewritten, valid again


def test_placement_lists_every_node_with_inlined_function_bodies(model):
    report = placement(model, "cpu")
    assert report.device == "CPUExecutionProvider"
    assert {n.provider for n in report.nodes} == {"CPUExecutionProvider"}
    # the body's Mul survives optimisation; ORT names inlined nodes _inlfunc_<Function>_<node>
    body = [n for n in report.nodes if n.function == "ScaledRelu"]
    assert any(n.op_type == "Mul" and n.name == "_inlfunc_ScaledRelu_mul" for n in body)
    assert {"gap", "fc"} <= {n.name for n in report.nodes}
    assert report.fallbacks() == []
    assert "ScaledRelu" in report.table()
    check_placement(model, "cpu")


def test_unfused_placement_shows_every_node_of_the_inlined_graph(model):
    """The 4 main-graph nodes besides the call, plus the function's Relu and Mul (its Constant
    becomes an initializer)."""
    report = placement(model, "cpu", fused=False)
    assert sorted(n.op_type for n in report.nodes) == sorted(
        ["Conv", "Relu", "Mul", "GlobalAveragePool", "Flatten", "Gemm"])
    assert sorted(n.op_type for n in report.nodes if n.function == "ScaledRelu") == ["Mul", "Relu"]
    assert {n.provider for n in report.nodes} == {"CPUExecutionProvider"}


@pytest.mark.skipif(CUDA, reason="checks the refusal where CUDA is absent")
def test_cuda_requests_fail_clearly_without_cuda(model):
    with pytest.raises(PlacementError, match="cuda"):
        Predictor(model, "cuda", strict=True)
    with pytest.raises(PlacementError, match=r"use device cpu \(--device cpu\)"):
        check_placement(model, "cuda")
    assert Predictor(model, "auto").provider == "CPUExecutionProvider"


def test_bad_inputs_raise_one_clear_error(model, tmp_path):
    p = Predictor(model, "cpu")
    with pytest.raises(InputError, match=r"shape \(2, 1, 8, 8\) does not fit the model's \('N', 3, 8, 8\)"):
        p.run(X[:, :1])
    with pytest.raises(InputError, match="dtype int64"):
        p.run(X.astype(np.int64))
    with pytest.raises(InputError, match="takes 1 input"):
        p.run(X, X)
    with pytest.raises(InputError, match="no such model file"):
        Predictor(tmp_path / "missing.onnx")
    (tmp_path / "junk.onnx").write_bytes(b"junk")
    with pytest.raises(InputError, match="junk.onnx: not an ONNX model file"):  # as verify says
        Predictor(tmp_path / "junk.onnx", "cpu")


def test_fp16_model_keeps_float32_io(model):
    fp16 = float16_model(model)
    m = onnx.load(str(fp16))
    assert m.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert {i.data_type for i in m.graph.initializer if i.name == "W1"} == {TensorProto.FLOAT16}
    assert not m.functions   # inlined before conversion
    out = Predictor(model, "cpu", fp16=True).run(X)[0]
    np.testing.assert_allclose(out, reference(X), rtol=2e-2, atol=2e-2)


def test_fp16_copy_of_the_custom_op_nets(tmp_path):
    """The inlined cnngraph bodies (DeformConv, the within-channel LRN) compute in float16 and
    match PyTorch's float32 to fp16 precision; the copy passes the full checker."""
    import cnngraph
    from exporters import export_onnx
    for name in ("lrn_within_net", "dcn_net"):
        graph = cnngraph.load(name)
        torch.manual_seed(0)
        module = cnngraph.build(graph).eval()
        export_onnx(graph, module, tmp_path / f"{name}.onnx")
        predictor = Predictor(tmp_path / f"{name}.onnx", "cpu", fp16=True, cache=False)
        onnx.checker.check_model(str(predictor.source), full_check=True)
        x = np.random.default_rng(0).standard_normal((2, *graph.input_shape)).astype(np.float32)
        with torch.no_grad():
            want = module(torch.from_numpy(x)).numpy()
        got = predictor.run(x)[0]
        assert np.abs(got - want).max() <= 2e-3 * np.abs(want).max(), name


def test_fp16_copy_goes_to_the_temp_folder_when_the_model_folder_is_read_only(model, monkeypatch,
                                                                               tmp_path):
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path / "tmp"))
    (tmp_path / "tmp").mkdir()
    save = onnx.save

    def read_only_beside_model(proto, path, *args, **kwargs):
        if Path(path).parent == Path(model).parent:
            raise PermissionError(13, "Permission denied", str(path))
        return save(proto, path, *args, **kwargs)

    monkeypatch.setattr(onnx, "save", read_only_beside_model)
    copy = float16_model(Path(model))
    assert copy.parent == tmp_path / "tmp" and copy.is_file()
    assert not list(Path(model).parent.glob("*.fp16-*"))


def test_metadata_is_parsed(tmp_path):
    props = {"cnngraph.input_shape": "[3, 8, 8]", "cnngraph.classes": json.dumps(list("abcde")),
             "cnngraph.normalize": json.dumps({"mean": [0.5] * 3, "std": [0.25] * 3}),
             "cnngraph.input_layout": "NCHW", "cnngraph.spec": json.dumps({"name": "tiny"})}
    path = write_model(tmp_path / "m.onnx", meta=props)
    Predictor(path, "cpu")
    p = Predictor(path, "cpu")   # from the optimised cache, which keeps the metadata
    assert p.meta == ModelMeta(input_shape=(3, 8, 8), mean=(0.5,) * 3, std=(0.25,) * 3,
                               classes=tuple("abcde"), spec={"name": "tiny"})


# -- CUDA: run where the CUDA provider really starts ------------------------------------------

@needs_cuda
def test_cuda_predictor_matches_reference_and_places_every_node_on_cuda(model):
    p = Predictor(model, "cuda", strict=True)
    assert p.session.get_providers()[0] == "CUDAExecutionProvider"
    np.testing.assert_allclose(p.run(X)[0], reference(X), rtol=1e-3, atol=1e-3)
    report = check_placement(model, "cuda")
    assert {n.provider for n in report.nodes if n.compute} == {"CUDAExecutionProvider"}


@needs_cuda
def test_cuda_torch_tensors_stay_on_device(model):
    p = Predictor(model, "cuda")
    out = p.run_torch(torch.from_numpy(X).cuda())[0]
    assert out.is_cuda
    np.testing.assert_allclose(out.cpu().numpy(), reference(X), rtol=1e-3, atol=1e-3)


@needs_cuda
def test_cuda_graph_replays_with_new_inputs(model):
    p = Predictor(model, "cuda", cuda_graph=True)
    for scale in (1.0, 2.0, 3.0, 0.5):   # capture happens after the first runs; then replays
        x = X * scale
        np.testing.assert_allclose(p.run(x)[0], reference(x), rtol=1e-3, atol=1e-3)
    with pytest.raises(InputError, match="fixed shapes"):
        p.run(X[:1])


@needs_cuda
def test_cuda_fp16(model):
    out = Predictor(model, "cuda", fp16=True).run(X)[0]
    np.testing.assert_allclose(out, reference(X), rtol=2e-2, atol=2e-2)


def test_static_binding_used_by_cuda_graphs_on_cpu(model):
    """The CUDA-graph path binds static buffers once and copies each input into them; the same
    code runs on the CPU provider (which just does not capture), so it is checked here."""
    p = Predictor(model, "cpu")
    p.cuda_graph = True
    first = p.run(X)[0]
    np.testing.assert_allclose(first, reference(X), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p.run(X * 2)[0], reference(X * 2), rtol=1e-5, atol=1e-5)
    out = p.run_ortvalues(p.to_device(X * 3))
    np.testing.assert_allclose(out[0].numpy(), reference(X * 3), rtol=1e-5, atol=1e-5)
    with pytest.raises(InputError, match="fixed shapes"):
        p.run(X[:1])
    q = Predictor(model, "cpu")
    q.cuda_graph = True
    t = q.run_torch(torch.from_numpy(X))[0]
    again = q.run_torch(torch.from_numpy(X * 2))[0]
    assert again.data_ptr() == t.data_ptr()   # the same static output buffer, rewritten
    np.testing.assert_allclose(again.numpy(), reference(X * 2), rtol=1e-5, atol=1e-5)


def test_placement_of_an_exported_cnngraph_function(tmp_path):
    """The exporter's within-channel LRN is a cnngraph function called twice in this net: the
    unfused profile shows its body nodes from both calls, all on the CPU provider."""
    import cnngraph
    from exporters import export_onnx
    graph = cnngraph.load("lrn_within_net")
    torch.manual_seed(0)
    model = export_onnx(graph, cnngraph.build(graph).eval(), tmp_path / "lrn.onnx")
    (function,) = [f for f in model.functions if f.name == "LRNWithinChannel"]
    calls = [n for n in model.graph.node if n.op_type == "LRNWithinChannel"]
    report = placement(tmp_path / "lrn.onnx", "cpu", fused=False)
    body = [n for n in report.nodes if n.function == "LRNWithinChannel"]
    assert body and len(body) % len(calls) == 0
    assert {n.op_type for n in body} <= {n.op_type for n in function.node}
    assert {n.provider for n in report.nodes} == {"CPUExecutionProvider"}


def test_no_gpu_is_said_plainly(monkeypatch):
    """Without a GPU the reason is "no CUDA GPU found", not a hint about missing libraries."""
    from cnngraph.runtime import session
    monkeypatch.setattr(session, "gpu_present", lambda: False)
    session.cuda_status.cache_clear()
    try:
        ok, reason = session.cuda_status()
    finally:
        session.cuda_status.cache_clear()
    assert not ok
    assert reason in ("no CUDA GPU found", "this onnxruntime build has no CUDA provider (install onnxruntime-gpu)")


class Tiny(torch.nn.Module):
    """The tiny model in torch, from the same weights (the independent reference)."""

    def forward(self, x):
        h = 2 * F.relu(F.conv2d(x, torch.from_numpy(W1), torch.from_numpy(B1), padding=1))
        return F.linear(h.mean(dim=(2, 3)), torch.from_numpy(FC), torch.from_numpy(FCB))


def test_compare_times_eager_then_onnxruntime_with_parity(model):
    from cnngraph.runtime.benchmark import compare
    rows = compare(Tiny(), model, [1, 3], budget_s=0.03, min_runs=2, warmup=1)
    assert [(r.engine, r.batch) for r in rows] == [("torch eager", 1), ("onnxruntime", 1),
                                                   ("torch eager", 3), ("onnxruntime", 3)]
    assert all(r.max_rel_err < 1e-5 for r in rows[1::2])
    assert all(r.speedup == pytest.approx(e.p50_ms / r.p50_ms) for e, r in zip(rows[::2], rows[1::2]))


def test_compare_names_the_batch_of_a_fixed_batch_model(tmp_path):
    from cnngraph.runtime.benchmark import compare
    fixed = write_model(tmp_path / "fixed.onnx", batch=2, out_shape=[2, 5])
    with pytest.raises(InputError, match="--batch-sizes 2"):
        compare(None, fixed, [1], budget_s=0.01)


@pytest.mark.parametrize("args, message", [
    (["--seconds", "0"], "--seconds: must be a finite number > 0"),
    (["--weights", "{w}"], "mis-shaped"),
    (["--batch-sizes", "1,,8"], "--batch-sizes: must be integers >= 1"),
])
def test_bench_errors_are_one_line(tmp_path, capsys, args, message):
    import cnngraph
    from cnngraph.cli import main
    from exporters import export_onnx
    from safetensors.torch import save_file
    graph = cnngraph.load("lenet5")
    module = cnngraph.build(graph)
    path = tmp_path / "l5.onnx"
    export_onnx(graph, module, path)
    state = {k: v.clone() for k, v in module.state_dict().items()}
    first = next(k for k, v in state.items() if v.ndim == 4)
    state[first] = torch.zeros(1, 1, 1, 1)
    save_file(state, str(tmp_path / "w.safetensors"))
    args = [a.format(w=tmp_path / "w.safetensors") for a in args]
    assert main(["bench", str(path), "--batch-sizes", "1", "--device", "cpu", *args]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1
    assert first in err or "--weights" not in args


def test_bench_of_a_non_model_file_says_to_export(tmp_path, capsys):
    from cnngraph.cli import main
    (tmp_path / "w.pt").write_bytes(b"x")
    assert main(["bench", str(tmp_path / "w.pt"), "--device", "cpu"]) == 2
    assert "export it first with `cnngraph export`" in capsys.readouterr().err


def test_bench_json_gives_the_mac_rate_of_each_engine(capsys):
    """GMAC/s = MACs per sample × samples/s; resnet18's MACs are torchvision's published 1.81 G."""
    import json

    from cnngraph.cli import main
    assert main(["bench", "resnet18", "--batch-sizes", "1", "--device", "cpu", "--seconds", "0.05",
                 "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [r["engine"] for r in rows] == ["torch eager", "onnxruntime"]
    for r in rows:
        assert r["gmacs"] / r["throughput"] == pytest.approx(1.81, rel=0.01)


def test_bench_of_an_export_counts_macs_from_its_spec_metadata(tmp_path, capsys):
    """LeNet-5 (the zoo's, a linear classifier for the RBF): C1 6*25*28*28 = 117,600 + C3 its
    1,500 connection weights on 10x10 = 150,000 + C5 48,000 + F6 10,080 + output 840 = 326,520
    MACs (subsampling and activations count none)."""
    import json

    from cnngraph.cli import main
    path = tmp_path / "l5.onnx"
    assert main(["export", "lenet5", "-o", str(path)]) == 0
    capsys.readouterr()
    assert main(["bench", str(path), "--batch-sizes", "2", "--device", "cpu", "--seconds", "0.05",
                 "--json"]) == 0
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["gmacs"] * 1e9 / row["throughput"] == pytest.approx(326_520, rel=1e-9)


def test_bench_compile_failure_is_one_line(monkeypatch, capsys):
    """torch.compile without a C++ compiler (simulated): one line, exit 2, no traceback."""
    from cnngraph.cli import main

    def broken(fn, *args, **kwargs):
        def run(*a, **k):
            raise RuntimeError("InvalidCxxCompiler: No working C++ compiler found")
        return run

    monkeypatch.setattr(torch, "compile", broken)
    assert main(["bench", "lenet5", "--compile", "--batch-sizes", "1", "--device", "cpu",
                 "--seconds", "0.05"]) == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if not line.startswith("bench: ")]  # the progress lines before it
    assert len(err) == 1 and "run without --compile" in err[0] and "C++ compiler" in err[0]


def test_bench_says_each_phase_on_stderr_as_plain_lines(capsys):
    """A big model takes minutes: each phase is one plain line on stderr as it starts (no
    carriage returns or escape codes in a log), the table alone on stdout."""
    from cnngraph.cli import main
    assert main(["bench", "lenet5", "--batch-sizes", "1,2", "--device", "cpu",
                 "--seconds", "0.05"]) == 0
    out, err = capsys.readouterr()
    lines = err.splitlines()
    phases = [line.split(" (about")[0] for line in lines]
    threads = phases[2].rsplit(", ", 1)[1]
    assert phases == ["bench: building lenet5", "bench: exporting lenet5 to ONNX",
                      f"bench: torch eager, batch 1, {threads}",
                      f"bench: torch eager, batch 2, {threads}",
                      "bench: onnxruntime: creating the session",
                      "bench: onnxruntime, batch 1", "bench: onnxruntime, batch 2"]
    assert threads.endswith(" threads") and "(about 0.05 s)" in lines[2]
    assert "\r" not in err and "\x1b" not in err
    assert "bench:" not in out and "onnxruntime" in out
