"""The Caffe importer against independent references: published and closed-form parameter
counts, a NumPy forward written from Caffe's own formulas (below), onnxruntime, and one-line
errors for the wrong inputs."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest

import cnngraph
from cnngraph.errors import InputError
from importers import caffe_schema as schema
from importers.caffe import caffe_spec, from_caffe

DATA = Path(__file__).parent / "data" / "caffe"


# --- parameter counts -----------------------------------------------------------------------
def _conv(k, cin, cout, groups=1):
    return k * k * cin // groups * cout + cout


def _googlenet_paper() -> int:
    """bvlc_googlenet from Szegedy et al. 2014, Table 1 (convolutions with biases, true 5x5)."""
    table = [(192, 64, 96, 128, 16, 32, 32), (256, 128, 128, 192, 32, 96, 64),
             (480, 192, 96, 208, 16, 48, 64), (512, 160, 112, 224, 24, 64, 64),
             (512, 128, 128, 256, 24, 64, 64), (512, 112, 144, 288, 32, 64, 64),
             (528, 256, 160, 320, 32, 128, 128), (832, 256, 160, 320, 32, 128, 128),
             (832, 384, 192, 384, 48, 128, 128)]
    total = _conv(7, 3, 64) + _conv(1, 64, 64) + _conv(3, 64, 192) + 1024 * 1000 + 1000
    for cin, a, r3, b, r5, c, p in table:
        total += (_conv(1, cin, a) + _conv(1, cin, r3) + _conv(3, r3, b) + _conv(1, cin, r5)
                  + _conv(5, r5, c) + _conv(1, cin, p))
    return total


COUNTS = {
    # Caffe's LeNet: conv 20@5x5, conv 50@5x5, ip 500, ip 10
    "lenet": _conv(5, 1, 20) + _conv(5, 20, 50) + 800 * 500 + 500 + 500 * 10 + 10,
    "bvlc_alexnet": 60_965_224,  # published
    "bvlc_googlenet": _googlenet_paper(),  # 6,998,552
    # cifar10_full: three 5x5 convs (32, 32, 64), pooling 32 -> 16 -> 8 -> 4 (ceil), ip 10
    "cifar10_full": _conv(5, 3, 32) + _conv(5, 32, 32) + _conv(5, 32, 64) + 64 * 16 * 10 + 10,
}


@pytest.mark.parametrize("name", list(COUNTS))
def test_caffe_era_networks_import_with_their_parameter_counts(name):
    graph = cnngraph.load(caffe_spec(DATA / f"{name}.prototxt"))
    assert graph.params == COUNTS[name]
    ops = {n.op for n in graph}
    if name == "bvlc_alexnet":
        assert [n.attrs["groups"] for n in graph if n.op == "conv2d"] == [1, 2, 1, 2, 2]
        assert sum(n.attrs.get("region") == "across_channels" for n in graph) == 2
    if name == "cifar10_full":
        assert sum(n.attrs.get("region") == "within_channel" for n in graph) == 2
        assert graph["pool1"].shape == ("N", 32, 16, 16)  # ceil: (32 - 3) / 2 rounds up
    if name == "bvlc_googlenet":
        assert graph.params == 6_998_552 and "concat" in ops
        assert graph["pool1_3x3_s2"].shape == ("N", 64, 56, 56)


# --- a NumPy forward of Caffe's formulas ------------------------------------------------------
def np_conv(x, w, b, stride=(1, 1), pad=(0, 0), dil=(1, 1), group=1):
    n, c, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = np.pad(x, ((0, 0), (0, 0), (pad[0], pad[0]), (pad[1], pad[1])))
    oh = (h + 2 * pad[0] - (dil[0] * (kh - 1) + 1)) // stride[0] + 1
    ow = (wd + 2 * pad[1] - (dil[1] * (kw - 1) + 1)) // stride[1] + 1
    out = np.zeros((n, o, oh, ow))
    og = o // group
    for g in range(group):
        xs = xp[:, g * cg:(g + 1) * cg]
        for i in range(kh):
            for j in range(kw):
                patch = xs[:, :, i * dil[0]:i * dil[0] + stride[0] * (oh - 1) + 1:stride[0],
                           j * dil[1]:j * dil[1] + stride[1] * (ow - 1) + 1:stride[1]]
                out[:, g * og:(g + 1) * og] += np.einsum("nchw,oc->nohw", patch,
                                                         w[g * og:(g + 1) * og, :, i, j])
    return out + (0 if b is None else b.reshape(1, -1, 1, 1))


def np_deconv(x, w, b, stride):
    """Caffe's Deconvolution (no padding, group 1): each input pixel scatters its kernel."""
    n, c, h, wd = x.shape
    _, o, kh, kw = w.shape
    out = np.zeros((n, o, stride * (h - 1) + kh, stride * (wd - 1) + kw))
    for y in range(h):
        for z in range(wd):
            out[:, :, y * stride:y * stride + kh, z * stride:z * stride + kw] += np.einsum(
                "nc,cokl->nokl", x[:, :, y, z], w)
    return out + b.reshape(1, -1, 1, 1)


def np_pool(x, k, s, pad, mode):
    """Caffe's PoolingLayer: ceil-rounded size, one less when the last window starts in the
    padding; AVE divides by the window clipped to the padded input."""
    n, c, h, w = x.shape

    def size(length):
        out = int(math.ceil((length + 2 * pad - k) / s)) + 1
        return out - 1 if pad and (out - 1) * s >= length + pad else out
    oh, ow = size(h), size(w)
    out = np.zeros((n, c, oh, ow))
    for i in range(oh):
        for j in range(ow):
            h0, w0 = i * s - pad, j * s - pad
            h1, w1 = min(h0 + k, h + pad), min(w0 + k, w + pad)
            area = (h1 - h0) * (w1 - w0)
            h0, w0, h1, w1 = max(h0, 0), max(w0, 0), min(h1, h), min(w1, w)
            window = x[:, :, h0:h1, w0:w1]
            out[:, :, i, j] = (window.max(axis=(2, 3)) if mode == "max"
                               else window.sum(axis=(2, 3)) / area)
    return out


def np_lrn_across(x, n, alpha, beta, k):
    c = x.shape[1]
    sq = np.pad(x * x, ((0, 0), (n // 2, n // 2), (0, 0), (0, 0)))
    total = sum(sq[:, i:i + c] for i in range(n))
    return x / (k + alpha / n * total) ** beta


def np_lrn_within(x, n, alpha, beta):
    h, w = x.shape[2:]
    sq = np.pad(x * x, ((0, 0), (0, 0), (n // 2, n // 2), (n // 2, n // 2)))
    total = sum(sq[:, :, i:i + h, j:j + w] for i in range(n) for j in range(n))
    return x / (1 + alpha / n ** 2 * total) ** beta


def np_batch_norm(x, mean, var, factor, eps):
    f = 0.0 if factor == 0 else 1.0 / factor
    shape = (1, -1) + (1,) * (x.ndim - 2)
    return (x - (mean * f).reshape(shape)) / np.sqrt((var * f).reshape(shape) + eps)


def np_softmax(x):
    e = np.exp(x - x.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def write_caffemodel(path: Path, blobs: dict[str, list[np.ndarray]], legacy=()) -> None:
    """A .caffemodel through the same schema: each layer's blobs with their shapes (or, for the
    layers in `legacy`, the old 4-D num/channels/height/width form)."""
    net = schema.NetParameter(name="random")
    for name, arrays in blobs.items():
        layer = net.layer.add(name=name, type="Random")
        for array in arrays:
            blob = layer.blobs.add()
            if name in legacy:
                dims = (1,) * (4 - array.ndim) + array.shape
                blob.num, blob.channels, blob.height, blob.width = dims
            else:
                blob.shape.dim.extend(array.shape)
            blob.data.extend(array.astype(np.float32).ravel().tolist())
    path.write_bytes(net.SerializeToString())


def _rand(rng, *shape, scale=0.3):
    return (rng.standard_normal(shape) * scale).astype(np.float32)


def _mixed_blobs(rng, factor=0.5):
    c = 8
    var = rng.uniform(0.5, 2.0, c).astype(np.float32)
    return {
        "conv1": [_rand(rng, 8, 3, 3, 5), _rand(rng, 8)],
        "conv2": [_rand(rng, 8, 4, 3, 3), _rand(rng, 8)],
        "bn2": [_rand(rng, c) * factor, var * factor, np.array([factor], np.float32)],
        "scale2": [rng.uniform(0.5, 1.5, c).astype(np.float32), _rand(rng, c)],
        "scale_alone": [_rand(rng, c, scale=1.0)],
        "up": [_rand(rng, 16, 4, 2, 2), _rand(rng, 4)],
        "ip1": [_rand(rng, 256, 6, scale=0.1)],  # transposed: (in, out), and no bias? see below
        "bn_fc": [_rand(rng, 6), rng.uniform(0.5, 2.0, 6).astype(np.float32),
                  np.array([1.0], np.float32)],
        "ip2": [_rand(rng, 5, 16), _rand(rng, 5)],
    }


def np_mixed(b, data, extra):
    """tests/data/caffe/mixed.prototxt, layer by layer, in Caffe's formulas."""
    x = np_conv(data, b["conv1"][0], b["conv1"][1], pad=(1, 2))
    x = np.where(x > 0, x, 0.1 * x)
    x = np_lrn_across(x, 3, 0.5, 0.75, 2.0)
    x = np_pool(x, 3, 2, 0, "max")
    x = np_conv(x, b["conv2"][0], b["conv2"][1], pad=(2, 2), dil=(2, 2), group=2)
    x = np_batch_norm(x, *b["bn2"][:2], b["bn2"][2][0], 1e-3)
    x = x * b["scale2"][0].reshape(1, -1, 1, 1) + b["scale2"][1].reshape(1, -1, 1, 1)
    x = np_lrn_within(x, 3, 0.3, 0.75)
    pool2 = np_pool(x, 2, 2, 1, "ave")
    scaled = pool2 * b["scale_alone"][0].reshape(1, -1, 1, 1)
    diff = pool2 - 0.5 * scaled
    mx = np.maximum(diff, pool2)
    cat = np.concatenate([mx * extra, mx], axis=1)
    up = 1 / (1 + np.exp(-np_deconv(cat, b["up"][0], b["up"][1], 2)))
    flat = up.mean(axis=(2, 3))
    ip1 = np.tanh(up.reshape(len(up), -1) @ b["ip1"][0] + b["ip1"][1])
    bn_fc = np_batch_norm(ip1, *b["bn_fc"][:2], b["bn_fc"][2][0], 1e-5)
    ip2 = cat.max(axis=(2, 3)) @ b["ip2"][0].T + b["ip2"][1]
    cat2 = np.concatenate([bn_fc, ip2], axis=1)
    return {"prob": np_softmax(cat2), "drop": cat2, "flat": flat}


def _forward(spec, state, inputs):
    import torch

    model = cnngraph.build(cnngraph.load(spec))
    model.load_state_dict(state)
    model.eval()
    with torch.no_grad():
        out = model(*(torch.from_numpy(x.astype(np.float32)) for x in inputs))
    return {k: v.numpy() for k, v in out.items()} if isinstance(out, dict) else out.numpy()


def test_caffemodel_weights_give_caffes_outputs(tmp_path):
    rng = np.random.default_rng(0)
    blobs = _mixed_blobs(rng)
    blobs["ip1"].append(_rand(rng, 6))
    model = tmp_path / "mixed.caffemodel"
    write_caffemodel(model, blobs, legacy=("ip2",))
    spec, state = from_caffe(DATA / "mixed.prototxt", model)
    assert spec["inputs"] == {"data": [3, 14, 14], "extra": [8, 4, 4]}
    assert sorted(spec["outputs"]) == ["drop", "flat", "prob"]
    assert not any(layer["name"] in ("train_only", "loss") for layer in spec["layers"])
    assert "scale2" not in [layer["name"] for layer in spec["layers"]]  # folded into bn2
    data, extra = rng.standard_normal((2, 3, 14, 14)), rng.standard_normal((2, 8, 4, 4))
    ours, ref = _forward(spec, state, [data, extra]), np_mixed(blobs, data, extra)
    for name in ref:
        np.testing.assert_allclose(ours[name], ref[name], rtol=1e-4, atol=1e-5, err_msg=name)
    # and on onnxruntime: its AveragePool (ceil, padded, clipped), Max, weighted sum, ...
    import onnxruntime as ort

    from exporters import export_onnx

    graph = cnngraph.load(spec)
    module = cnngraph.build(graph)
    module.load_state_dict(state)
    export_onnx(graph, module.eval(), tmp_path / "mixed.onnx")
    session = ort.InferenceSession(str(tmp_path / "mixed.onnx"), providers=["CPUExecutionProvider"])
    got = session.run(None, {"data": data.astype(np.float32), "extra": extra.astype(np.float32)})
    for output, value in zip(session.get_outputs(), got):
        np.testing.assert_allclose(value, ref[output.name], rtol=1e-4, atol=1e-5,
                                   err_msg=output.name)


def test_batch_norm_factor_zero_and_a_layer_the_caffemodel_lacks(tmp_path, caplog):
    rng = np.random.default_rng(1)
    blobs = _mixed_blobs(rng, factor=0.0)
    blobs["bn2"][1] = rng.uniform(0.5, 2.0, 8).astype(np.float32)  # nonzero, yet 0 after / 0
    blobs["ip1"].append(_rand(rng, 6))
    del blobs["ip2"]  # as for a renamed, re-initialised classifier: Caffe fills it
    model = tmp_path / "m.caffemodel"
    write_caffemodel(model, blobs)
    spec, state = from_caffe(DATA / "mixed.prototxt", model)
    assert float(state["bn2.running_mean"].abs().max()) == 0.0
    assert float(state["bn2.running_var"].abs().max()) == 0.0
    assert "no blobs for layer(s) ip2" in caplog.text
    assert tuple(state["ip2.weight"].shape) == (5, 16) and float(state["ip2.weight"].std()) > 0
    assert float(state["bn_fc.weight"].min()) == 1.0  # a BatchNorm without Scale: weight 1
    module = cnngraph.build(cnngraph.load(spec))
    module.load_state_dict(state)  # strict: every key, every shape


def test_cifar_within_channel_lrn_matches_numpy_and_onnxruntime(tmp_path):
    import onnx
    import onnxruntime as ort

    from exporters import export_onnx

    rng = np.random.default_rng(2)
    blobs = {"conv1": [_rand(rng, 32, 3, 5, 5, scale=0.1), _rand(rng, 32)],
             "conv2": [_rand(rng, 32, 32, 5, 5, scale=0.05), _rand(rng, 32)],
             "conv3": [_rand(rng, 64, 32, 5, 5, scale=0.05), _rand(rng, 64)],
             "ip1": [_rand(rng, 10, 1024, scale=0.05), _rand(rng, 10)]}
    model = tmp_path / "cifar.caffemodel"
    write_caffemodel(model, blobs)
    spec, state = from_caffe(DATA / "cifar10_full.prototxt", model)
    x = rng.uniform(-1, 1, (2, 3, 32, 32)) * 20  # big enough for the LRN to matter

    def ref(x):
        b = blobs
        y = np_pool(np_conv(x, *b["conv1"], pad=(2, 2)), 3, 2, 0, "max")
        y = np_lrn_within(np.maximum(y, 0), 3, 5e-5, 0.75)
        y = np_pool(np.maximum(np_conv(y, *b["conv2"], pad=(2, 2)), 0), 3, 2, 0, "ave")
        y = np_lrn_within(y, 3, 5e-5, 0.75)
        y = np_pool(np.maximum(np_conv(y, *b["conv3"], pad=(2, 2)), 0), 3, 2, 0, "ave")
        return np_softmax(y.reshape(len(y), -1) @ b["ip1"][0].T + b["ip1"][1])

    expected = ref(x)
    np.testing.assert_allclose(_forward(spec, state, [x]), expected, rtol=1e-4, atol=1e-6)

    import torch

    graph = cnngraph.load(spec)
    module = cnngraph.build(graph)
    module.load_state_dict(state)
    path = tmp_path / "cifar.onnx"
    export_onnx(graph, module.eval(), path)
    exported = onnx.load(str(path))
    assert [n.op_type for n in exported.graph.node if n.domain == "cnngraph"] == \
        ["LRNWithinChannel"] * 2
    props = {p.key: p.value for p in exported.metadata_props}
    assert props["cnngraph.channel_order"] == "BGR"
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (got,) = session.run(None, {session.get_inputs()[0].name: x.astype(np.float32)})
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-6)
    del torch


def test_preprocessing_bgr_mean_and_scale_reach_infer(tmp_path, caplog):
    """The mixed net's transform_param (mean 104/117/123 BGR, scale 0.017) through export and the
    runtime's image loading: the network sees (BGR pixel - mean) * scale, Caffe's input."""
    from PIL import Image

    from cnngraph.runtime import ModelMeta, load_inputs
    from exporters import export_onnx

    spec, state = from_caffe(DATA / "mixed.prototxt")
    lenet = caffe_spec(DATA / "lenet.prototxt")
    assert lenet["meta"]["normalize"] == {"mean": [0.0], "std": [pytest.approx(256 / 255)]}
    assert "channel_order" not in lenet["meta"]  # one channel
    graph = cnngraph.load(spec)
    module = cnngraph.build(graph)
    path = tmp_path / "mixed.onnx"
    export_onnx(graph, module.eval(), path)
    import onnx

    meta = ModelMeta.from_props({p.key: p.value for p in onnx.load(str(path)).metadata_props})
    assert meta.channel_order == "BGR"
    rgb = np.random.default_rng(3).integers(0, 256, (14, 14, 3), dtype=np.uint8)
    image = tmp_path / "x.png"
    Image.fromarray(rgb).save(image)
    batch, _ = load_inputs([image], meta.for_input("data"), "data", (3, 14, 14))
    bgr = rgb.transpose(2, 0, 1)[::-1].astype(np.float64)
    caffe = (bgr - np.array([104, 117, 123]).reshape(3, 1, 1)) * 0.017
    np.testing.assert_allclose(batch[0], caffe, rtol=1e-5, atol=1e-4)
    assert "x.png: RGB -> BGR (the model's channel order)" in caplog.text


# --- wrong inputs -----------------------------------------------------------------------------
def _write(tmp_path, text: str, name="net.prototxt") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


INPUT = 'layer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 3 dim: 8 dim: 8 } } }\n'


@pytest.mark.parametrize("text, message", [
    ('name: "old"\nlayers { name: "conv1" type: CONVOLUTION bottom: "data" top: "conv1" }\n',
     "upgrade_net_proto_text"),
    (INPUT + 'layer { name: "act" type: "PReLU" bottom: "data" top: "act" }\n',
     "layer 'act' (PReLU): cnngraph cannot import this layer type; it imports Input, Convolution"),
    (INPUT + 'layer { name: "c" type: "Convolution" bottom: "dat" top: "c" '
     'convolution_param { num_output: 4 kernel_size: 3 } }\n',
     "its bottom 'dat' is made by no layer before it"),
    (INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
     'convolution_param { num_output: 4 kernel_sise: 3 } }\n',
     "ConvolutionParameter has no field 'kernel_sise'"),
    ('layer { name: "d" type: "Data" top: "data" top: "label" }\n', "import the deploy prototxt"),
    (INPUT + 'layer { name: "c" type: "Convolution" bottom: "data" top: "c" '
     'convolution_param { num_output: 4 } }\n', "needs kernel_size"),
    (INPUT + 'layer { name: "n" type: "LRN" bottom: "data" top: "n" lrn_param { local_size: 4 } }\n',
     "local_size 4 is even"),
    ('layer { name: "c" type: "Convolution" top: "c" \n', "not Caffe's prototxt text format"),
    (INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
     'pooling_param { kernel_size: 3 pad: 2 } }\n', "pad 2x2 is more than half the 3x3 window"),
    (INPUT + 'layer { name: "p" type: "Pooling" bottom: "data" top: "p" '
     'pooling_param { kernel_size: 1 stride: 3 } }\n', "Caffe pools the 8x8 input to 4x4"),
])
def test_wrong_prototxts_get_one_line(tmp_path, text, message):
    with pytest.raises(InputError) as caught:
        caffe_spec(_write(tmp_path, text))
    assert message in str(caught.value)
    assert "\n" not in str(caught.value) and str(tmp_path) in str(caught.value)


def test_wrong_caffemodels_get_one_line(tmp_path):
    rng = np.random.default_rng(4)
    blobs = _mixed_blobs(rng)
    blobs["ip1"].append(_rand(rng, 6))
    good = tmp_path / "good.caffemodel"
    write_caffemodel(good, blobs)
    damaged = tmp_path / "damaged.caffemodel"
    damaged.write_bytes(good.read_bytes()[:-7])
    with pytest.raises(InputError, match="damaged or not a .caffemodel"):
        from_caffe(DATA / "mixed.prototxt", damaged)
    wrong = dict(blobs, conv1=[_rand(rng, 8, 3, 3, 3), _rand(rng, 8)])
    write_caffemodel(tmp_path / "wrong.caffemodel", wrong)
    with pytest.raises(InputError, match=r"layer 'conv1'.*blob 0 has shape \(8, 3, 3, 3\), the "
                       r"prototxt's layer needs \(8, 3, 3, 5\)"):
        from_caffe(DATA / "mixed.prototxt", tmp_path / "wrong.caffemodel")
    v1 = schema.NetParameter()
    v1.layers.add(name="conv1")
    (tmp_path / "v1.caffemodel").write_bytes(v1.SerializeToString())
    with pytest.raises(InputError, match="upgrade_net_proto_binary"):
        from_caffe(DATA / "mixed.prototxt", tmp_path / "v1.caffemodel")
    with pytest.raises(InputError, match="no such file"):
        from_caffe(DATA / "mixed.prototxt", tmp_path / "missing.caffemodel")


def test_cli_import_writes_spec_and_weights_and_errors_in_one_line(tmp_path, capsys):
    from safetensors.numpy import load_file

    from cnngraph.cli import main

    rng = np.random.default_rng(5)
    blobs = {"conv1": [_rand(rng, 20, 1, 5, 5), _rand(rng, 20)],
             "conv2": [_rand(rng, 50, 20, 5, 5), _rand(rng, 50)],
             "ip1": [_rand(rng, 500, 800), _rand(rng, 500)], "ip2": [_rand(rng, 10, 500), _rand(rng, 10)]}
    write_caffemodel(tmp_path / "lenet.caffemodel", blobs)
    out = tmp_path / "lenet.yaml"
    assert main(["import", str(DATA / "lenet.prototxt"), "--weights",
                 str(tmp_path / "lenet.caffemodel"), "-o", str(out)]) == 0
    weights = load_file(tmp_path / "lenet.safetensors")
    np.testing.assert_array_equal(weights["ip1.weight"], blobs["ip1"][0])
    assert cnngraph.load(str(out)).params == COUNTS["lenet"]
    capsys.readouterr()
    assert main(["import", str(_write(tmp_path, INPUT + 'layer { name: "a" type: "PReLU" '
                                      'bottom: "data" top: "a" }\n')), "-o",
                 str(tmp_path / "x.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnngraph import: error: ") and "PReLU" in err and "\n" not in err


def test_training_a_bgr_network_feeds_it_bgr(tmp_path):
    """A spec with meta.channel_order BGR (a Caffe import) trains on BGR inputs: the dataset's
    RGB images are reversed, and the normalisation computed from them is in BGR order."""
    from types import SimpleNamespace

    import torch

    from cnngraph.train import train, trainer

    rng = np.random.default_rng(6)
    x = np.zeros((40, 3, 8, 8), np.uint8)
    x[:, 0], x[:, 1], x[:, 2] = 200, 100, rng.integers(0, 40, (40, 8, 8))  # R bright, B dark
    np.savez(tmp_path / "d.npz", x=x, y=np.arange(40) % 2)
    spec = {"name": "tiny_bgr", "input": [3, 8, 8], "meta": {"channel_order": "BGR"},
            "layers": [{"name": "pool", "op": "global_avg_pool2d"}, {"name": "flat", "op": "flatten"},
                       {"name": "fc", "op": "linear", "out": 2}]}
    train(spec, str(tmp_path / "d.npz"), out=tmp_path / "run", epochs=1, progress=False)
    info = json.loads((tmp_path / "run" / "info.json").read_text())
    mean = info["normalize"]["mean"]
    assert mean[0] < 0.2 and mean[1] == pytest.approx(100 / 255) and mean[2] == pytest.approx(200 / 255)
    loop = SimpleNamespace(input_shape=(3, 8, 8), scale=1 / 255, bgr=True,
                           mean=torch.tensor(mean).view(1, -1, 1, 1),
                           std=torch.tensor(info["normalize"]["std"]).view(1, -1, 1, 1),
                           config=SimpleNamespace(augment=None), device=torch.device("cpu"))
    fed = trainer._Loop._inputs(loop, torch.from_numpy(x))
    assert abs(float(fed[:, 2].mean())) < 1e-3 and abs(float(fed[:, 0].mean())) < 0.1  # not ~ -30


def test_opencv_dnn_runs_the_same_caffe_files_to_the_same_outputs(tmp_path):
    """OpenCV's dnn module reads Caffe files itself: an independent Caffe runtime (optional:
    skipped without opencv-python-headless). It deviates from Caffe in three things the mixed
    net uses, left out of its copy here: it ignores LRN's k, include/exclude phase rules and
    InnerProduct's transpose."""
    cv2 = pytest.importorskip("cv2")
    rng = np.random.default_rng(7)

    def compare(prototxt, blobs, inputs, outputs):
        model = tmp_path / f"{prototxt.stem}.caffemodel"
        write_caffemodel(model, blobs)
        spec, state = from_caffe(prototxt, model)
        spec["outputs"] = outputs  # pre-softmax too, where the softmax would hide differences
        ours = _forward(spec, state, list(inputs.values()))
        ours = ours if isinstance(ours, dict) else {outputs[0]: ours}
        net = cv2.dnn.readNetFromCaffe(str(prototxt), str(model))
        for name, value in inputs.items():
            net.setInput(value.astype(np.float32), name)
        for name, value in zip(outputs, net.forward(outputs)):
            assert np.abs(ours[name]).max() > 0.1
            np.testing.assert_allclose(value.reshape(ours[name].shape), ours[name], rtol=1e-4,
                                       atol=1e-5, err_msg=f"{prototxt.name} {name}")

    text = (DATA / "mixed.prototxt").read_text()
    for old, new in (("k: 2", "k: 1"), ("num_output: 6 transpose: true", "num_output: 6"),
                     ('layer { name: "train_only"', "# "), ('layer { name: "loss"', "# ")):
        assert old in text
        text = text.replace(old, new)
    blobs = _mixed_blobs(rng)
    blobs["ip1"] = [blobs["ip1"][0].T.copy(), _rand(rng, 6)]
    compare(_write(tmp_path, text, "mixed_cv.prototxt"), blobs,
            {"data": rng.standard_normal((1, 3, 14, 14)), "extra": rng.standard_normal((1, 8, 4, 4))},
            ["drop", "flat", "up", "ip1"])
    compare(DATA / "cifar10_full.prototxt",
            {"conv1": [_rand(rng, 32, 3, 5, 5, scale=0.1), _rand(rng, 32)],
             "conv2": [_rand(rng, 32, 32, 5, 5, scale=0.05), _rand(rng, 32)],
             "conv3": [_rand(rng, 64, 32, 5, 5, scale=0.05), _rand(rng, 64)],
             "ip1": [_rand(rng, 10, 1024, scale=0.05), _rand(rng, 10)]},
            {"data": rng.uniform(-128, 128, (2, 3, 32, 32))}, ["ip1"])


@pytest.mark.parametrize("reader, folded", [("", True), ("sc", True), ("bn", False)])
def test_scale_folds_into_its_batch_norm_only_when_nothing_else_reads_it(tmp_path, reader, folded):
    text = INPUT + ('layer { name: "bn" type: "BatchNorm" bottom: "data" top: "bn" }\n'
                    'layer { name: "sc" type: "Scale" bottom: "bn" top: "sc" }\n')
    if reader:
        text += f'layer {{ name: "r" type: "ReLU" bottom: "{reader}" top: "r" }}\n'
    ops = {layer["name"]: layer["op"] for layer in caffe_spec(_write(tmp_path, text))["layers"]}
    assert ("sc" not in ops) == folded
    if not folded:
        assert ops["sc"] == "conv2d" and ops["bn"] == "batch_norm"


@pytest.mark.parametrize("order, shape, message", [
    ("GBR", [3, 8, 8], "`meta.channel_order` must be RGB or BGR"),
    ("BGR", [1, 8, 8], "for 3-channel image inputs, and this network has none"),
])
def test_channel_order_is_checked(order, shape, message):
    spec = {"name": "t", "input": shape, "meta": {"channel_order": order},
            "layers": [{"name": "flat", "op": "flatten"}]}
    with pytest.raises(cnngraph.SpecError, match=message):
        cnngraph.load(spec)


def test_files_past_the_size_limits_are_refused_before_reading(tmp_path, monkeypatch):
    from importers import caffe

    monkeypatch.setattr(caffe, "MAX_PROTOTXT_BYTES", 100)
    with pytest.raises(InputError, match=r"net.prototxt: .* bytes, more than the 100 a prototxt"):
        caffe_spec(_write(tmp_path, INPUT * 2))
    monkeypatch.setattr(caffe, "MAX_CAFFEMODEL_BYTES", 10)
    (tmp_path / "big.caffemodel").write_bytes(b"\0" * 11)
    with pytest.raises(InputError, match="more than the 10 a caffemodel may hold"):
        caffe.read_caffemodel(tmp_path / "big.caffemodel")


def test_a_fresh_network_starts_from_the_prototxts_fillers(tmp_path):
    """Without a caffemodel the weights follow each layer's weight_filler/bias_filler, as Caffe
    would draw them (meta.init): gaussian std, constant, xavier's uniform bound sqrt(3/fan_in),
    msra's std sqrt(2/fan_in); a Scale alone starts at 1 (Caffe's default filler)."""
    text = INPUT + '''
layer { name: "c" type: "Convolution" bottom: "data" top: "c" convolution_param { num_output: 64
  kernel_size: 3 weight_filler { type: "gaussian" std: 0.05 } bias_filler { type: "constant" value: 0.3 } } }
layer { name: "x" type: "Convolution" bottom: "c" top: "x" convolution_param { num_output: 64
  kernel_size: 3 weight_filler { type: "xavier" } } }
layer { name: "s" type: "Scale" bottom: "x" top: "s" scale_param { bias_term: true } }
layer { name: "fc" type: "InnerProduct" bottom: "s" top: "fc" inner_product_param { num_output: 100
  weight_filler { type: "msra" } } }
'''
    spec, state = from_caffe(_write(tmp_path, text))
    assert float(state["c.weight"].std()) == pytest.approx(0.05, rel=0.1)
    assert float(state["c.bias"].min()) == float(state["c.bias"].max()) == pytest.approx(0.3)
    bound = math.sqrt(3 / (64 * 9))
    assert 0.9 * bound < float(state["x.weight"].abs().max()) <= bound
    assert float(state["s.weight"].min()) == float(state["s.weight"].max()) == 1.0
    assert float(state["s.bias"].abs().max()) == 0.0
    assert float(state["fc.weight"].std()) == pytest.approx(math.sqrt(2 / (64 * 4 * 4)), rel=0.1)


def test_eltwise_with_equal_coefficients_keeps_them_per_input(tmp_path):
    text = INPUT + ('layer { name: "a" type: "ReLU" bottom: "data" top: "a" }\n'
                    'layer { name: "s" type: "Eltwise" bottom: "data" bottom: "a" top: "s" '
                    'eltwise_param { coeff: 0.5 coeff: 0.5 } }\n')
    spec = caffe_spec(_write(tmp_path, text))
    assert spec["layers"][-1] == {"name": "s", "op": "weighted_add", "inputs": ["data", "a"],
                                  "coeffs": [0.5, 0.5]}
    assert cnngraph.load(spec)["s"].shape == ("N", 3, 8, 8)
