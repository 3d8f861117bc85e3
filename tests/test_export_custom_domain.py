"""The `cnngraph` ONNX domain against independent references: onnxruntime's own DeformConv
kernel (a bare standard node) and a NumPy closed form of Caffe's WITHIN_CHANNEL LRN."""
from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from exporters import custom_domain
from exporters.opset import default_opset

OPSET = default_opset()


def _model(node: onnx.NodeProto, inputs: dict[str, np.ndarray], *,
           opset: int = OPSET, deform_body: str = "native") -> onnx.ModelProto:
    graph = helper.make_graph(
        [node], "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in inputs.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)])
    imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=imports,
                              ir_version=helper.find_min_ir_version_for(imports))
    return custom_domain.attach_functions(model, deform_body)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, feeds)[0]


def _deform_case(rng, *, group=1, offset_group=1, mask=True, bias=True, stride=(1, 1),
                 pads=(1, 1, 1, 1), dilation=(1, 1), n=2, c=4, m=6, h=7, w=8, k=(3, 3)):
    oh = (h + pads[0] + pads[2] - dilation[0] * (k[0] - 1) - 1) // stride[0] + 1
    ow = (w + pads[1] + pads[3] - dilation[1] * (k[1] - 1) - 1) // stride[1] + 1
    feeds = {"x": rng.standard_normal((n, c, h, w), dtype=np.float32),
             "w": rng.standard_normal((m, c // group, *k), dtype=np.float32),
             # offsets up to +-3 px: many samples fall between pixels and past the borders
             "offset": 3 * rng.standard_normal((n, offset_group * 2 * k[0] * k[1], oh, ow),
                                               dtype=np.float32)}
    if bias:
        feeds["b"] = rng.standard_normal((m,), dtype=np.float32)
    if mask:
        feeds["mask"] = rng.uniform(size=(n, offset_group * k[0] * k[1], oh, ow)).astype(np.float32)
    names = ["x", "w", "offset", "b" if bias else "", "mask" if mask else ""]
    attrs = dict(strides=list(stride), pads=list(pads), dilations=list(dilation), group=group,
                 offset_group=offset_group)
    return feeds, names, attrs


DEFORM_CASES = {
    "v2": {},
    "v1_no_bias": dict(mask=False, bias=False),
    "groups_stride_dilation": dict(group=2, offset_group=2, stride=(2, 1), dilation=(2, 1),
                                   pads=(2, 0, 1, 1)),
    "5x3_kernel": dict(k=(5, 3), pads=(2, 1, 2, 1), h=9, w=6),
}


@pytest.mark.parametrize("case", DEFORM_CASES)
@pytest.mark.parametrize("body", custom_domain.DEFORM_BODIES)
def test_deform_conv_node_matches_bare_deform_conv(case, body):
    feeds, names, attrs = _deform_case(np.random.default_rng(0), **DEFORM_CASES[case])
    while names and not names[-1]:
        names.pop()
    bare = _model(helper.make_node("DeformConv", names, ["y"], **attrs), feeds)
    ours = _model(helper.make_node("DeformConv", names, ["y"], domain="cnngraph", **attrs),
                  feeds, deform_body=body)
    assert any(f.name == "DeformConv" for f in ours.functions)
    expected, got = _run(bare, feeds), _run(ours, feeds)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4)


def lrn_within_channel_reference(x: np.ndarray, size: int, alpha: float, beta: float,
                                 bias: float = 1.0) -> np.ndarray:
    """Caffe WITHIN_CHANNEL, written out: explicit window loops over a zero-padded x^2."""
    half = (size - 1) // 2
    sq = np.pad(x.astype(np.float64) ** 2, ((0, 0), (0, 0), (half, half), (half, half)))
    total = np.zeros(x.shape, np.float64)
    for dy in range(size):
        for dx in range(size):
            total += sq[:, :, dy:dy + x.shape[2], dx:dx + x.shape[3]]
    return (x / (bias + alpha / size ** 2 * total) ** beta).astype(np.float32)


@pytest.mark.parametrize("size,bias", [(1, None), (3, None), (5, None), (7, None), (3, 2.5)])
def test_lrn_within_channel_matches_closed_form(size, bias):
    """Every window size; bias left out is Caffe's 1."""
    rng = np.random.default_rng(size)
    x = 3 * rng.standard_normal((2, 3, 9, 6), dtype=np.float32)
    alpha, beta = 0.7, 0.75
    extra = {} if bias is None else {"bias": bias}
    node = helper.make_node("LRNWithinChannel", ["x"], ["y"], domain="cnngraph",
                            kernel_shape=[size, size], alpha=alpha, beta=beta, **extra)
    got = _run(_model(node, {"x": x}), {"x": x})
    want = lrn_within_channel_reference(x, size, alpha, beta, 1.0 if bias is None else bias)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("opset", [custom_domain.MIN_OPSET, OPSET])
def test_checker_and_shape_inference_know_the_domain(opset):
    feeds, names, attrs = _deform_case(np.random.default_rng(1), stride=(2, 2))
    deform = helper.make_node("DeformConv", names, ["d"], domain="cnngraph", **attrs)
    lrn = helper.make_node("LRNWithinChannel", ["d"], ["y"], domain="cnngraph", kernel_shape=[3, 3],
                           alpha=1e-4, beta=0.75)
    graph = helper.make_graph(
        [deform, lrn], "g",
        [helper.make_tensor_value_info(k, TensorProto.FLOAT, v.shape) for k, v in feeds.items()],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", "m", "h", "w"])])
    imports = [helper.make_opsetid("", opset)]
    model = helper.make_model(graph, opset_imports=imports,
                              ir_version=helper.find_min_ir_version_for(imports))
    custom_domain.attach_functions(model)
    onnx.checker.check_model(model, full_check=True)
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True)
    dims = {v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
            for v in list(inferred.graph.value_info) + list(inferred.graph.output)}
    assert dims["d"] == [2, 6, 4, 4] and dims["y"] == [2, 6, 4, 4]


def test_bad_deform_body_is_refused():
    with pytest.raises(ValueError, match="deform_body"):
        custom_domain.functions(OPSET, "fast")
