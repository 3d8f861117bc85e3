"""`cnngraph infer` on PNG, .npy and .npz inputs: top-k against torch.softmax of an independent
torch computation of the model, and one clear message for every bad input."""
from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from cnngraph.cli import main
from test_runtime import reference, write_model

CLASSES = ["ant", "bee", "cat", "dog", "eel"]
MEAN, STD = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]


@pytest.fixture
def model(tmp_path):
    meta = {"cnngraph.input_shape": "[3, 8, 8]", "cnngraph.input_layout": "NCHW",
            "cnngraph.classes": json.dumps(CLASSES),
            "cnngraph.normalize": json.dumps({"mean": MEAN, "std": STD})}
    return write_model(tmp_path / "tiny.onnx", meta=meta)


def expected_top(x: np.ndarray, k: int) -> list[list[tuple[str, float]]]:
    probs = torch.softmax(torch.from_numpy(reference(x)).double(), dim=1)
    values, indices = probs.topk(k, dim=1)
    return [[(CLASSES[i], v) for v, i in zip(vs.tolist(), ix.tolist())] for vs, ix in zip(values, indices)]


def normalised(pixels: np.ndarray) -> np.ndarray:
    """uint8 pixels or floats in [0, 1] (N, 3, H, W) -> what the model sees, by training's rule
    (cnngraph/data/dataset.py: uint8 / 255, floats as given, then (x - mean) / std), computed
    here without the runtime."""
    x = pixels / 255.0 if pixels.dtype == np.uint8 else pixels.astype(np.float64)
    return ((x - np.array(MEAN)[:, None, None]) / np.array(STD)[:, None, None]).astype(np.float32)


def infer_json(capsys, *args) -> list[dict]:
    assert main(["infer", *map(str, args), "--json", "--device", "cpu"]) == 0
    return json.loads(capsys.readouterr().out)


def check(result: list[dict], x: np.ndarray, k: int) -> None:
    for row, want in zip(result, expected_top(x, k), strict=True):
        got = [(c["class"], c["probability"]) for c in row["top_k"]]
        assert [g[0] for g in got] == [w[0] for w in want]
        np.testing.assert_allclose([g[1] for g in got], [w[1] for w in want], rtol=1e-4)


def test_png_same_size_and_resized(model, tmp_path, capsys):
    rng = np.random.default_rng(1)
    pixels = rng.integers(0, 256, (8, 8, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    big = rng.integers(0, 256, (16, 12, 3), dtype=np.uint8)
    Image.fromarray(big).save(tmp_path / "b.png")
    resized = np.asarray(Image.fromarray(big).resize((8, 8), Image.Resampling.BILINEAR))
    result = infer_json(capsys, model, tmp_path / "a.png", tmp_path / "b.png", "--top-k", "3")
    assert [r["input"] for r in result] == ["a.png", "b.png"]
    x = normalised(np.stack([pixels, resized]).transpose(0, 3, 1, 2))
    check(result, x, 3)


def test_grayscale_png_is_converted_to_rgb(model, tmp_path, capsys):
    gray = np.random.default_rng(2).integers(0, 256, (8, 8), dtype=np.uint8)
    Image.fromarray(gray, mode="L").save(tmp_path / "g.png")
    result = infer_json(capsys, model, tmp_path / "g.png", "--top-k", "2")
    check(result, normalised(np.repeat(gray[None, None], 3, axis=1)), 2)


def test_npy_float_and_npz_uint8(model, tmp_path, capsys):
    x = np.random.default_rng(3).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    pixels = np.random.default_rng(4).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    np.savez(tmp_path / "p.npz", x=pixels, y=np.zeros(2))
    result = infer_json(capsys, model, tmp_path / "x.npy", tmp_path / "p.npz", "--batch-size", "2")
    assert [r["input"] for r in result] == ["x.npy[0]", "x.npy[1]", "x.npy[2]", "p.npz[0]", "p.npz[1]"]
    check(result, np.concatenate([normalised(x), normalised(pixels)]), 5)


def test_uint8_pixels_and_the_same_floats_predict_the_same(model, tmp_path, capsys):
    pixels = np.random.default_rng(7).integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)
    np.save(tmp_path / "u8.npy", pixels)
    np.save(tmp_path / "f32.npy", pixels.astype(np.float32) / 255)
    from_uint8 = infer_json(capsys, model, tmp_path / "u8.npy")
    from_float = infer_json(capsys, model, tmp_path / "f32.npy")
    check(from_uint8, normalised(pixels), 5)
    check(from_float, normalised(pixels), 5)


def test_text_output_and_written_outputs(model, tmp_path, capsys):
    x = np.random.default_rng(5).standard_normal((3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "one.npy", x)
    out = tmp_path / "out.npz"
    assert main(["infer", str(model), str(tmp_path / "one.npy"), "--top-k", "1",
                 "--output", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    (name, p), = expected_top(normalised(x[None]), 1)[0]
    assert text.startswith(f"one.npy: {name} {p:.3f}")
    np.testing.assert_allclose(np.load(out)["logits"], reference(normalised(x[None])), rtol=1e-5, atol=1e-5)


def test_fixed_batch_model_runs_in_padded_chunks(tmp_path, capsys):
    model = write_model(tmp_path / "fixed.onnx", batch=2, out_shape=[2, 5],
                        meta={"cnngraph.classes": json.dumps(CLASSES)})
    x = np.random.default_rng(6).standard_normal((3, 3, 8, 8)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    check(infer_json(capsys, model, tmp_path / "x.npy"), x, 5)


@pytest.mark.parametrize("make, message", [
    (lambda d: np.save(d / "bad.npy", np.zeros((2, 8, 8), np.float32)), "model expects (3, 8, 8)"),
    (lambda d: np.save(d / "bad.npy", np.zeros((8, 8, 3), np.float32)),
     "looks channels-last (H, W, C): transpose it"),
    (lambda d: np.save(d / "bad.npy", np.zeros((3, 8, 8), np.int32)), "neither uint8 pixels nor floats"),
    (lambda d: np.save(d / "bad.npy", np.zeros((8, 8), np.float32)), "(C, H, W) or (N, C, H, W)"),
    (lambda d: (d / "bad.png").write_bytes(b"not a png"), "cannot read it as an image"),
    (lambda d: (d / "bad.npy").write_bytes(b"junk"), "not a NumPy file (no .npy or .npz header)"),
    (lambda d: np.savez(d / "bad.npz", a=np.zeros(1), b=np.zeros(1)), "name the input array"),
    (lambda d: (d / "bad.txt").write_text("x"), "unsupported input file"),
    (lambda d: np.save(d / "bad.npy", np.zeros((0, 3, 8, 8), np.float32)), "holds no samples"),
    (lambda d: (d / "bad.d").mkdir(), "is a directory"),
    (lambda d: None, "no such file"),
])
def test_bad_inputs_give_one_line(model, tmp_path, capsys, make, message):
    make(tmp_path)
    target = next(iter(sorted(tmp_path.glob("bad.*"))), tmp_path / "missing.npy")
    assert main(["infer", str(model), str(target), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1 and err.startswith("cnngraph infer: error:")


@pytest.mark.parametrize("args, message", [
    (lambda d, m: [d / "spec.yaml", d / "x.npy"], "export it first with `cnngraph export"),
    (lambda d, m: [m, d / "x.npy", "--output", d / "x.npy" / "o.npz"], "x.npy is a file, not a folder"),
    (lambda d, m: [m, d / "x.npy", "--output", d], "is a folder; give a file name"),
])
def test_bad_model_or_output_give_one_line(model, tmp_path, capsys, args, message):
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    (tmp_path / "spec.yaml").write_text("name: tiny\n")
    assert main(["infer", *map(str, args(tmp_path, model)), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert message in err and err.count("\n") == 1


def test_the_cpu_fallback_is_said_only_when_auto_is_asked_for(model, tmp_path, capsys, caplog,
                                                              monkeypatch):
    from cnngraph.runtime import session
    monkeypatch.setattr(session, "cuda_status", lambda: (False, "no CUDA GPU found"))
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    assert main(["infer", str(model), str(tmp_path / "x.npy")]) == 0
    said = lambda: [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]  # noqa: E731
    assert said() == [] and capsys.readouterr().err == ""  # the default: no note on every run
    assert main(["infer", str(model), str(tmp_path / "x.npy"), "--device", "auto"]) == 0
    assert said() == ["running on the CPU: no CUDA GPU found"]
    assert main(["infer", str(model), str(tmp_path / "x.npy"), "--device", "cuda"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1 and "no CUDA GPU found; use device cpu" in err, err
    with pytest.raises(SystemExit):
        main(["infer", "--help"])
    assert "--device {auto,cpu,cuda}\n                        where onnxruntime runs" in \
        capsys.readouterr().out


@pytest.mark.parametrize("dtype, note", [(np.uint8, "uint8 pixels, divided by 255"),
                                         (np.float64, "float64 -> float32"),
                                         (np.float32, None)])
def test_infer_notes_what_it_did_to_an_array(model, tmp_path, capsys, caplog, dtype, note):
    path = tmp_path / "x.npy"
    np.save(path, np.zeros((2, 3, 8, 8), dtype))
    assert main(["infer", str(model), str(path), "--device", "cpu"]) == 0
    notes = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert notes == ([f"note: {path}: {note}"] if note else []), notes
