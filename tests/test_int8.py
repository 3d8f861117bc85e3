"""int8 quantization (cnngraph quantize, export --int8, verify on int8) on a tiny net trained in
the test: a densenet-style batch norm after a concat, and a cnngraph-domain node (Caffe's
within-channel LRN) that must stay in float. Top-1 figures are recomputed here with onnxruntime
on the raw .npz pixels, normalised by hand; speed lives in bench/bench_int8.py."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import yaml

from cnngraph.cli import main
from cnngraph.quantize import META_KEY, batch_norms_as_conv
from cnngraph.train import train

NET = {
    "name": "int8net",
    "input": [1, 12, 12],
    "layers": [
        {"name": "conv1", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1, "bias": False},
        {"name": "bn1", "op": "batch_norm"},
        {"name": "relu1", "op": "relu"},
        {"name": "conv2", "op": "conv2d", "out": 8, "kernel": 3, "padding": 1},
        {"name": "relu2", "op": "relu"},
        {"name": "cat", "op": "concat", "inputs": ["relu1", "relu2"]},
        {"name": "norm", "op": "batch_norm"},        # after a concat: folds into nothing
        {"name": "relu3", "op": "relu"},
        {"name": "lrn", "op": "lrn", "size": 3, "region": "within_channel"},  # cnngraph domain
        {"name": "conv3", "op": "conv2d", "out": 8, "kernel": 1},
        {"name": "pool", "op": "global_avg_pool2d"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 3},
    ],
}


def thirds(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """n 12x12 uint8 images, 3 classes: which third of the columns is bright, under noise."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 90, (n, 1, 12, 12))
    for i, label in enumerate(y):
        x[i, :, :, 4 * label:4 * label + 4] += rng.integers(60, 140)
    return x.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    """(folder, run dir, data.npz, float model): the net trained 3 epochs, then exported."""
    root = tmp_path_factory.mktemp("int8")
    (root / "net.yaml").write_text(yaml.safe_dump(NET))
    x, y = thirds(900, 0)
    xv, yv = thirds(300, 1)
    np.savez(root / "data.npz", x=x, y=y, x_val=xv, y_val=yv)
    run = root / "run"
    train(root / "net.yaml", str(root / "data.npz"), out=run, progress=False, epochs=3,
          batch_size=32, lr=0.01, seed=0, device="cpu")
    assert main(["export", str(run), "-o", str(root / "net.onnx")]) == 0
    return root, run, root / "data.npz", root / "net.onnx"


@pytest.fixture(scope="module")
def quantized(setup):
    root, run, _, model = setup
    out = root / "net.int8.onnx"
    assert main(["quantize", str(model), "--calibrate", str(run), "--samples", "64",
                 "-o", str(out)]) == 0
    return out


def by_hand_top1(model: Path, run: Path, data: Path) -> float:
    """Top-1 on the validation arrays of `data`: pixels / 255, then the run's mean and std."""
    info = json.loads((run / "info.json").read_text())
    with np.load(data) as f:
        x, y = f["x_val"].astype(np.float32) / 255, f["y_val"]
    x = (x - info["normalize"]["mean"][0]) / info["normalize"]["std"][0]
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    scores = session.run(None, {session.get_inputs()[0].name: x})[0]
    return float((scores.argmax(1) == y).mean())


def record(model: Path) -> dict:
    props = {p.key: p.value for p in onnx.load(str(model)).metadata_props}
    return json.loads(props[META_KEY])


def test_gate_figures_are_top1_of_both_models(setup, quantized):
    root, run, data, model = setup
    gate = record(quantized)["gate"]
    assert gate["samples"] == 300 and gate["max_drop"] == 1.0
    assert gate["float_top1"] == pytest.approx(by_hand_top1(model, run, data), abs=1e-9)
    assert gate["int8_top1"] == pytest.approx(by_hand_top1(quantized, run, data), abs=1e-9)
    assert gate["float_top1"] >= 0.9                    # the net did learn the task
    assert 100 * (gate["float_top1"] - gate["int8_top1"]) <= 1.0


def test_metadata_says_how_it_was_calibrated(setup, quantized):
    _, run, _, model = setup
    rec = record(quantized)
    assert rec["method"] == "minmax" and rec["samples"] == 64 and rec["source"] == str(run)
    assert rec["format"] == "QDQ" and rec["weights"] == "int8, per channel"
    assert "train split" in rec["data"] and rec["batch_norms_as_conv"] == 1
    props = {p.key for p in onnx.load(str(quantized)).metadata_props}
    assert {"cnngraph.spec", "cnngraph.normalize", "cnngraph.classes"} <= props  # kept


def test_weights_int8_per_channel_and_custom_node_float(quantized):
    model = onnx.load(str(quantized))
    init = {t.name: t for t in model.graph.initializer}
    producer = {o: n for n in model.graph.node for o in n.output}
    users = {}
    for n in model.graph.node:
        for i in n.input:
            users.setdefault(i, []).append(n)
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert len(convs) == 4 and not any(n.op_type == "BatchNormalization" for n in model.graph.node)
    for conv in convs:   # every conv reads a dequantized int8 weight with one scale per channel
        dq = producer[conv.input[1]]
        assert dq.op_type == "DequantizeLinear"
        assert init[dq.input[0]].data_type == onnx.TensorProto.INT8
        channels = init[dq.input[0]].dims[0]
        assert list(init[dq.input[1]].dims) == [channels]
    (lrn,) = [n for n in model.graph.node if n.domain == "cnngraph"]
    assert lrn.op_type == "LRNWithinChannel" and lrn.name in record(quantized)["float_nodes"]
    assert producer[lrn.input[0]].op_type == "DequantizeLinear"    # float in
    assert [n.op_type for n in users[lrn.output[0]]] == ["QuantizeLinear"]  # float out
    assert model.functions and model.functions[0].name == "LRNWithinChannel"


def test_batch_norm_as_depthwise_conv_keeps_outputs(setup):
    model = onnx.load(str(setup[3]))
    assert sum(n.op_type == "BatchNormalization" for n in model.graph.node) == 1
    rewritten = onnx.load(str(setup[3]))
    assert batch_norms_as_conv(rewritten) == 1
    (dw,) = [n for n in rewritten.graph.node if n.name == next(
        m.name for m in model.graph.node if m.op_type == "BatchNormalization")]
    assert dw.op_type == "Conv" and {a.name: a.i for a in dw.attribute}["group"] == 16
    x = np.random.default_rng(0).standard_normal((3, 1, 12, 12), dtype=np.float32)
    outs = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"])
            .run(None, {"input": x})[0] for m in (model, rewritten)]   # onnxruntime's own BN
    np.testing.assert_allclose(outs[1], outs[0], rtol=1e-5, atol=1e-5)


def test_verify_int8_against_pytorch(setup, quantized, capsys):
    assert main(["verify", str(quantized), "--against", str(setup[1])]) == 0
    out = capsys.readouterr().out
    assert "(int8)" in out and "top-1 same 63/63" in out and "PASS" in out


def test_gate_refuses_a_damaging_calibration(setup, tmp_path, capsys):
    root, run, data, model = setup
    x, y = thirds(60, 2)
    np.savez(tmp_path / "black.npz", x=np.zeros_like(x), y=y)   # ranges of a black image
    out = tmp_path / "bad.int8.onnx"
    rc = main(["quantize", str(model), "--calibrate", str(tmp_path / "black.npz"),
               "--data", str(data), "-o", str(out)])
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and lines[-1].startswith("REFUSED: top-1") and "--max-drop 1" in lines[-1]
    assert not out.exists() and (tmp_path / "bad.int8.onnx.rejected").is_file()
    gate = record(tmp_path / "bad.int8.onnx.rejected")["gate"]
    assert 100 * (gate["float_top1"] - gate["int8_top1"]) > 1


def test_export_int8_calibrates_on_the_run(setup, tmp_path, capsys):
    _, run, _, _ = setup
    out = tmp_path / "e.int8.onnx"
    assert main(["export", str(run), "--int8", "--samples", "32", "--method", "percentile",
                 "-o", str(out)]) == 0
    rec = record(out)
    assert rec["source"] == str(run) and rec["method"] == "percentile" and rec["samples"] == 32
    assert "wrote" in capsys.readouterr().out


@pytest.mark.parametrize("args, message", [
    (["quantize", "{model}", "-o", "{tmp}/q.onnx"], "--calibrate"),
    (["quantize", "{model}", "--calibrate", "{run}", "--max-drop", "-1", "-o", "{tmp}/q.onnx"],
     "--max-drop"),
    (["quantize", "{model}", "--calibrate", "{run}", "--max-drop", "nan", "-o", "{tmp}/q.onnx"],
     "--max-drop"),
    (["quantize", "{tmp}/junk.onnx", "--calibrate", "{run}", "-o", "{tmp}/q.onnx"],
     "not an ONNX model"),
    (["quantize", "{model}", "--calibrate", "{tmp}/nothing.npz", "-o", "{tmp}/q.onnx"],
     "not found"),
    (["export", "lenet5", "--int8", "-o", "{tmp}/q.onnx"], "--int8 needs calibration data"),
    (["export", "lenet5", "--calibrate", "glyphs", "-o", "{tmp}/q.onnx"], "go with --int8"),
    (["quantize", "{quantized}", "--calibrate", "{run}", "-o", "{tmp}/q.onnx"],
     "already quantized"),
])
def test_wrong_inputs_one_line_exit_2(setup, quantized, tmp_path, capsys, args, message):
    (tmp_path / "junk.onnx").write_bytes(b"not a model at all")
    names = dict(model=setup[3], run=setup[1], tmp=tmp_path, quantized=quantized)
    assert main([a.format(**names) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err and "error" in err


def test_bench_int8_row_beside_fp32(setup, capsys):
    _, run, _, model = setup
    assert main(["bench", str(model), "--int8", "--calibrate", str(run), "--batch-sizes", "1,2",
                 "--seconds", "0.05", "--device", "cpu", "--json"]) == 0
    rows = json.loads(capsys.readouterr().out)["results"]
    assert [(r["engine"], r["batch"]) for r in rows] == [
        ("onnxruntime", 1), ("ort int8", 1), ("onnxruntime", 2), ("ort int8", 2)]
    for fp32, int8 in (rows[:2], rows[2:]):
        assert int8["vs_fp32"] == pytest.approx(fp32["p50_ms"] / int8["p50_ms"])
        assert fp32["vs_fp32"] is None
