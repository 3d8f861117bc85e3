"""Specs with several inputs (`inputs: {image: ..., mask: ...}`): export (one ONNX input each,
metadata per input), onnxruntime against the torch module, `verify`, `infer` on .npz files,
`bench`, and `train`'s refusal; the single-input metadata stays as it was."""
from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

import cnngraph
from cnngraph.cli import main
from cnngraph.errors import InputError, SpecError
from cnngraph.runtime import ModelMeta
from exporters import export_onnx

MEAN = {"image": [0.5, 0.4, 0.3], "mask": [0.25]}
STD = {"image": [0.2, 0.25, 0.5], "mask": [0.5]}
SPEC = f"""\
name: two
inputs: {{image: [3, 8, 8], mask: [1, 8, 8]}}
layers:
  - {{name: conv, op: conv2d, out: 4, kernel: 3, padding: 1, inputs: [image]}}
  - {{name: cat, op: concat, inputs: [conv, mask]}}
  - {{name: pool, op: global_avg_pool2d}}
  - {{name: flat, op: flatten}}
  - {{name: fc, op: linear, out: 3}}
meta:
  classes: [a, b, c]
  normalize:
    image: {{mean: {MEAN['image']}, std: {STD['image']}}}
    mask: {{mean: {MEAN['mask']}, std: {STD['mask']}}}
"""


def run(capsys, *argv):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.fixture
def exported(tmp_path):
    """(spec path, model path, the torch module whose weights the model holds)."""
    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC)
    torch.manual_seed(3)
    module = cnngraph.build(cnngraph.load(spec)).eval()
    model = tmp_path / "two.onnx"
    export_onnx(cnngraph.load(spec), module, model)
    return spec, model, module


def test_export_has_one_input_each_and_metadata_per_input(exported):
    _, model, module = exported
    proto = onnx.load(str(model))
    dims = {i.name: [d.dim_param or d.dim_value for d in i.type.tensor_type.shape.dim]
            for i in proto.graph.input}
    assert dims == {"image": ["N", 3, 8, 8], "mask": ["N", 1, 8, 8]}
    props = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(props["cnngraph.inputs"]) == [
        {"name": "image", "shape": [3, 8, 8], "mean": MEAN["image"], "std": STD["image"]},
        {"name": "mask", "shape": [1, 8, 8], "mean": MEAN["mask"], "std": STD["mask"]}]
    assert "cnngraph.input_shape" not in props and "cnngraph.normalize" not in props
    # onnxruntime's kernels against torch's, batch 2 through the symbolic batch
    rng = np.random.default_rng(0)
    image = rng.standard_normal((2, 3, 8, 8), dtype=np.float32)
    mask = rng.standard_normal((2, 1, 8, 8), dtype=np.float32)
    (got,) = ort.InferenceSession(str(model)).run(None, {"image": image, "mask": mask})
    with torch.no_grad():
        want = module(torch.from_numpy(image), torch.from_numpy(mask)).numpy()
    assert got.shape == (2, 3)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    meta = ModelMeta.from_props(props)
    assert meta.input_shape is None and meta.mean is None  # no single input to describe
    assert meta.for_input("mask").input_shape == (1, 8, 8)
    assert meta.for_input("image").std == tuple(STD["image"])
    assert meta.for_input("mask").classes == ("a", "b", "c")


def test_verify_passes(exported, capsys):
    spec, model, _ = exported
    code, out, err = run(capsys, "verify", model, "--against", spec, "--seed", 3)
    assert (code, err) == (0, "")
    assert "batch 3" in out and out.splitlines()[-1].startswith("PASS")


def test_infer_takes_an_npz_with_an_array_per_input(exported, tmp_path, capsys):
    _, model, module = exported
    rng = np.random.default_rng(1)
    image = rng.integers(0, 256, (2, 3, 8, 8), dtype=np.uint8)     # pixels: / 255
    mask = rng.random((1, 8, 8), dtype=np.float32)                  # one sample, in [0, 1]
    np.savez(tmp_path / "a.npz", image=image, mask=np.stack([mask, 1 - mask]))
    np.savez(tmp_path / "b.npz", image=image[0], mask=mask)
    code, out, err = run(capsys, "infer", model, tmp_path / "a.npz", tmp_path / "b.npz",
                         "--json", "--device", "cpu", "--top-k", "3")
    assert code == 0
    rows = json.loads(out)
    assert [r["input"] for r in rows] == ["a.npz[0]", "a.npz[1]", "b.npz"]

    def norm(x, name):  # training's rule, written out here
        return ((x - np.array(MEAN[name])[:, None, None]) / np.array(STD[name])[:, None, None])
    x_image = norm(np.concatenate([image, image[:1]]) / 255.0, "image")
    x_mask = norm(np.stack([mask, 1 - mask, mask]).astype(np.float64), "mask")
    with torch.no_grad():
        logits = module(torch.tensor(x_image, dtype=torch.float32),
                        torch.tensor(x_mask, dtype=torch.float32))
    probs = torch.softmax(logits.double(), dim=1).numpy()
    for row, want in zip(rows, probs):
        order = np.argsort(-want, kind="stable")
        assert [c["class"] for c in row["top_k"]] == [["a", "b", "c"][i] for i in order]
        np.testing.assert_allclose([c["probability"] for c in row["top_k"]], want[order], rtol=1e-4)


def test_infer_says_what_a_multi_input_model_needs(exported, tmp_path, capsys):
    _, model, _ = exported
    np.savez(tmp_path / "wrong.npz", image=np.zeros((3, 8, 8), np.float32),
             masque=np.zeros((1, 8, 8), np.float32))
    code, out, err = run(capsys, "infer", model, tmp_path / "wrong.npz", "--device", "cpu")
    assert (code, out) == (2, "")
    assert err == (f"cnngraph infer: error: {tmp_path / 'wrong.npz'}: holds arrays image, masque "
                   "(missing mask; unexpected masque); the model takes one array per input: "
                   "image (3, 8, 8), mask (1, 8, 8)\n")
    np.save(tmp_path / "x.npy", np.zeros((3, 8, 8), np.float32))
    code, out, err = run(capsys, "infer", model, tmp_path / "x.npy", "--device", "cpu")
    assert code == 2 and err.count("\n") == 1
    assert "takes 2 inputs (image (3, 8, 8), mask (1, 8, 8))" in err
    assert "np.savez(path, image=..., mask=...)" in err
    np.savez(tmp_path / "n.npz", image=np.zeros((2, 3, 8, 8), np.float32),
             mask=np.zeros((3, 1, 8, 8), np.float32))
    code, _, err = run(capsys, "infer", model, tmp_path / "n.npz", "--device", "cpu")
    assert code == 2 and "different numbers of samples (image 2, mask 3)" in err
    np.savez(tmp_path / "s.npz", image=np.zeros((3, 8, 8), np.float32),
             mask=np.zeros((3, 8, 8), np.float32))
    code, _, err = run(capsys, "infer", model, tmp_path / "s.npz", "--device", "cpu")
    assert code == 2 and "s.npz[mask]: each sample has shape (3, 8, 8), the model expects (1, 8, 8)" in err


@pytest.mark.parametrize("which", ["spec", "onnx"])
def test_bench_feeds_every_input(exported, capsys, which):
    spec, model, _ = exported
    code, out, err = run(capsys, "bench", spec if which == "spec" else model, "--batch-sizes", "1,2",
                         "--seconds", "0.01", "--device", "cpu", "--json")
    assert code == 0, err
    rows = json.loads(out)["results"]
    ort_rows = [r for r in rows if r["engine"] == "onnxruntime"]
    assert [r["batch"] for r in ort_rows] == [1, 2]
    if which == "spec":  # torch eager on the same inputs: parity measured
        assert all(r["max_rel_err"] < 1e-5 for r in ort_rows)


def test_train_refuses_in_one_line(exported, tmp_path, capsys):
    spec, _, _ = exported
    code, out, err = run(capsys, "train", spec, "--epochs", "1", "--out", tmp_path / "run")
    assert (code, out) == (2, "")
    assert err == ("cnngraph train: error: 'two' has 2 inputs (image [3, 8, 8], mask [1, 8, 8]); "
                   "`train` trains single-input classifiers only (one image per sample): train "
                   "it with your own PyTorch loop on cnngraph.build(graph)\n")
    assert not (tmp_path / "run").exists()


def test_graph_input_shapes():
    graph = cnngraph.load(_spec_dict())
    assert graph.input_shapes == {"image": (3, 8, 8), "mask": (1, 8, 8)}
    with pytest.raises(InputError, match=r"^'two' has 2 inputs \(image \[3, 8, 8\], mask "
                                         r"\[1, 8, 8\]\); this needs a single-input network$"):
        graph.input_shape
    assert cnngraph.load("lenet5").input_shapes == {"input": (1, 32, 32)}


@pytest.mark.parametrize("normalize, message", [
    ({"image": {"mean": [0.5], "std": [1]}, "mask": {"mean": [0.5, 0.5], "std": [1]}},
     "`meta.normalize.mask.mean` must be a list of numbers, one per input channel (1) or one "
     "for all, got [0.5, 0.5]"),
    ({"image": {"mean": [0.5], "std": [0]}},
     "`meta.normalize.image.std` must be > 0 (inputs are divided by it), got [0]"),
    ({"masque": {"mean": [0.5], "std": [1]}},
     "`meta.normalize` names 'masque', which is not an input; the inputs are image, mask"),
    ({"image": {"mean": [0.5]}}, "`meta.normalize.image` must be {mean: [...], std: [...]}, got "
     "{'mean': [0.5]}"),
    ({"mean": [0.5], "std": [1]}, "`meta.normalize` must give each input its own: {image: "
     "{mean: [...], std: [...]}, ...} (the inputs are image, mask), got {'mean': [0.5], 'std': [1]}"),
])
def test_per_input_normalize_is_checked(normalize, message):
    spec = _spec_dict()
    spec["meta"]["normalize"] = normalize
    with pytest.raises(SpecError) as info:
        cnngraph.load(spec)
    assert info.value.reason == message


def test_per_input_normalize_in_a_file_names_the_line(tmp_path):
    spec = tmp_path / "two.yaml"
    spec.write_text(SPEC.replace("std: [0.5]}", "std: [0.5, 2]}"))
    with pytest.raises(SpecError, match=rf"^{spec}:13: `meta.normalize.mask.std` must be a list"):
        cnngraph.load(spec)


def test_single_input_metadata_unchanged(tmp_path):
    """A single-input model keeps the keys older runtimes read, and `cnngraph.inputs` agrees;
    a model exported before `cnngraph.inputs` reads as it did."""
    spec = {"name": "one", "input": [2, 4, 4],
            "layers": [{"name": "flat", "op": "flatten"}, {"name": "fc", "op": "linear", "out": 2}],
            "meta": {"normalize": {"mean": [0.1, 0.2], "std": [0.3, 0.4]}}}
    graph = cnngraph.load(spec)
    path = tmp_path / "one.onnx"
    export_onnx(graph, cnngraph.build(graph), path)
    props = {p.key: p.value for p in onnx.load(str(path)).metadata_props}
    assert json.loads(props["cnngraph.input_shape"]) == [2, 4, 4]
    assert json.loads(props["cnngraph.normalize"]) == {"mean": [0.1, 0.2], "std": [0.3, 0.4]}
    assert json.loads(props["cnngraph.inputs"]) == [
        {"name": "input", "shape": [2, 4, 4], "mean": [0.1, 0.2], "std": [0.3, 0.4]}]
    old = {k: v for k, v in props.items() if k != "cnngraph.inputs"}
    for meta in (ModelMeta.from_props(props), ModelMeta.from_props(old)):
        for m in (meta, meta.for_input("input")):
            assert (m.input_shape, m.mean, m.std) == ((2, 4, 4), (0.1, 0.2), (0.3, 0.4))


def test_malformed_inputs_metadata_is_one_error():
    with pytest.raises(InputError, match=r"^m.onnx: metadata cnngraph.inputs is malformed"):
        ModelMeta.from_props({"cnngraph.inputs": '[{"name": "x", "shape": "big"}]'}, "m.onnx")


def _spec_dict() -> dict:
    import yaml
    return yaml.safe_load(SPEC)


def test_infer_pads_a_fixed_batch_for_every_input(exported, tmp_path, capsys):
    """A --static-batch 3 export fed 2 samples: both inputs padded, the same answers as the
    dynamic-batch model."""
    spec, model, module = exported
    fixed = tmp_path / "fixed.onnx"
    export_onnx(cnngraph.load(spec), module, fixed, dynamic_batch=False, batch_size=3)
    rng = np.random.default_rng(2)
    np.savez(tmp_path / "a.npz", image=rng.random((2, 3, 8, 8), dtype=np.float32),
             mask=rng.random((2, 1, 8, 8), dtype=np.float32))
    answers = []
    for path in (model, fixed):
        code, out, err = run(capsys, "infer", path, tmp_path / "a.npz", "--json", "--device", "cpu")
        assert code == 0, err
        answers.append([[c["probability"] for c in r["top_k"]] for r in json.loads(out)])
    assert len(answers[1]) == 2
    np.testing.assert_allclose(answers[1], answers[0], rtol=1e-5)


def test_show_input_shape_on_several_inputs_says_what_to_do(exported, capsys):
    spec, _, _ = exported
    code, out, err = run(capsys, "show", spec, "--input-shape", "1,3,16,16")
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "the spec has 2 inputs (image, mask)" in err
    assert "change the spec's `inputs:` (--input-shape takes single-input specs)" in err
    graph = cnngraph.load(spec, input_shape={"image": [3, 16, 16], "mask": [1, 16, 16]})
    assert graph.input_shapes == {"image": (3, 16, 16), "mask": (1, 16, 16)}
