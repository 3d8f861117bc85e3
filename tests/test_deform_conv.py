"""custom_ops.deform_conv2d / DeformConv2d against independent references: onnxruntime's native
DeformConv kernel, F.conv2d for zero offsets, and numerical gradients (gradcheck)."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
import torch.nn.functional as F
from onnx import TensorProto, helper

import custom_ops
from custom_ops import deform_conv as dc

NAMES = ["X", "W", "offset", "B", "mask"]


def ort_deform_conv(x, weight, offset, bias, mask, stride, padding, dilation, group, og):
    """onnxruntime's native DeformConv (CPU) on float64 numpy arrays."""
    arrays = [x, weight, offset, bias, mask]
    inputs = [helper.make_tensor_value_info(n, TensorProto.DOUBLE, a.shape)
              for n, a in zip(NAMES, arrays) if a is not None]
    node = helper.make_node("DeformConv", [n if a is not None else "" for n, a in
                                           zip(NAMES, arrays)], ["Y"],
                            strides=list(stride), pads=list(padding) * 2,
                            dilations=list(dilation), group=group, offset_group=og)
    graph = helper.make_graph([node], "deform", inputs,
                              [helper.make_tensor_value_info("Y", TensorProto.DOUBLE, None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 22)], ir_version=10)
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(None, {n: a for n, a in zip(NAMES, arrays) if a is not None})[0]


def out_size(size, kernel, stride, padding, dilation):
    return tuple((s + 2 * p - d * (k - 1) - 1) // st + 1
                 for s, k, st, p, d in zip(size, kernel, stride, padding, dilation))


def make_case(n, c, m, size, kernel, stride, padding, dilation, groups, og, modulated,
              offset_scale, seed=0):
    gen = torch.Generator().manual_seed(seed)
    oh, ow = out_size(size, kernel, stride, padding, dilation)
    taps = kernel[0] * kernel[1]
    x = torch.randn(n, c, *size, generator=gen, dtype=torch.float64)
    weight = torch.randn(m, c // groups, *kernel, generator=gen, dtype=torch.float64)
    bias = torch.randn(m, generator=gen, dtype=torch.float64)
    offset = torch.randn(n, 2 * og * taps, oh, ow, generator=gen, dtype=torch.float64)
    offset *= offset_scale
    mask = (torch.rand(n, og * taps, oh, ow, generator=gen, dtype=torch.float64)
            if modulated else None)
    return x, offset, weight, bias, mask


# (n, c, m, (H, W), (kH, kW), stride, padding, dilation, groups, offset_groups, mask, offset scale)
GRID = [
    (1, 2, 3, (5, 5), (3, 3), (1, 1), (0, 0), (1, 1), 1, 1, False, 1.0),
    (2, 4, 4, (7, 6), (3, 3), (2, 2), (1, 1), (1, 1), 1, 1, True, 1.0),
    (2, 4, 6, (8, 7), (3, 2), (1, 2), (1, 0), (2, 1), 2, 1, True, 2.0),
    (2, 4, 4, (6, 9), (2, 3), (2, 1), (0, 2), (1, 2), 1, 2, False, 2.0),
    (3, 4, 2, (7, 7), (3, 3), (1, 1), (2, 2), (2, 2), 2, 2, True, 1.5),
    (1, 6, 4, (6, 5), (3, 3), (1, 2), (1, 1), (1, 1), 2, 3, True, 1.0),  # groups ≠ og
    (2, 4, 4, (5, 6), (3, 3), (1, 1), (1, 1), (1, 1), 1, 4, True, 6.0),  # far outside
    (2, 2, 2, (4, 4), (1, 1), (1, 1), (0, 0), (1, 1), 1, 1, False, 10.0),
]


@pytest.mark.parametrize("case", GRID, ids=lambda case: "-".join(map(str, case)))
def test_forward_matches_onnxruntime(case):
    *shape, modulated, scale = case
    n, c, m, size, kernel, stride, padding, dilation, groups, og = shape
    x, offset, weight, bias, mask = make_case(*shape, modulated, scale)
    got = custom_ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation, mask)
    want = ort_deform_conv(x.numpy(), weight.numpy(), offset.numpy(), bias.numpy(),
                           None if mask is None else mask.numpy(), stride, padding, dilation,
                           groups, og)
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-10, atol=1e-10)


def test_float32_and_chunked_batch_match_onnxruntime(monkeypatch):
    shape = (5, 4, 4, (6, 6), (3, 3), (1, 1), (1, 1), (1, 1), 2, 2)
    x, offset, weight, bias, mask = make_case(*shape, True, 2.0)
    want = ort_deform_conv(x.numpy(), weight.numpy(), offset.numpy(), bias.numpy(),
                           mask.numpy(), (1, 1), (1, 1), (1, 1), 2, 2)
    one_image = 4 * 9 * 36 * 4  # C·kH·kW·oH·oW float32 bytes: chunks of 2 images, last of 1
    monkeypatch.setattr(dc, "IM2COL_BUDGET_BYTES", 2 * one_image)
    args = [t.float() for t in (x, offset, weight, bias)]
    got = custom_ops.deform_conv2d(*args, 1, 1, 1, mask.float())
    assert got.dtype == torch.float32
    np.testing.assert_allclose(got.numpy(), want, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("groups,og", [(1, 1), (2, 2)])
def test_zero_offsets_and_unit_mask_equal_conv2d(groups, og):
    x, _, weight, bias, _ = make_case(2, 4, 6, (7, 8), (3, 3), (2, 1), (1, 1), (1, 2), groups,
                                      og, False, 0.0)
    oh, ow = out_size((7, 8), (3, 3), (2, 1), (1, 1), (1, 2))
    offset = torch.zeros(2, og * 18, oh, ow, dtype=torch.float64)
    mask = torch.ones(2, og * 9, oh, ow, dtype=torch.float64)
    want = F.conv2d(x, weight, bias, (2, 1), (1, 1), (1, 2), groups)
    for m in (None, mask):
        got = custom_ops.deform_conv2d(x, offset, weight, bias, (2, 1), (1, 1), (1, 2), m)
        torch.testing.assert_close(got, want, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("case", [
    (2, 4, 4, (5, 4), (3, 2), (1, 1), (1, 1), (1, 1), 2, 2, True, 1.0),
    (1, 2, 2, (4, 5), (2, 2), (2, 1), (0, 1), (1, 2), 1, 1, False, 3.0),
    (2, 4, 2, (4, 4), (3, 3), (1, 1), (1, 1), (1, 1), 1, 2, True, 1.5),  # blocks per group
    (1, 4, 4, (4, 5), (2, 3), (1, 1), (1, 1), (1, 1), 2, 1, True, 1.5),  # per offset group
])
def test_gradcheck_every_input(case):
    *shape, modulated, scale = case
    _, _, _, _, _, stride, padding, dilation, _, _ = shape
    tensors = make_case(*shape, modulated, scale, seed=1)
    leaves = [t.clone().requires_grad_() for t in tensors if t is not None]

    def fn(x, offset, weight, bias, *mask):
        return custom_ops.deform_conv2d(x, offset, weight, bias, stride, padding, dilation,
                                        mask[0] if mask else None)

    assert torch.autograd.gradcheck(fn, leaves, eps=1e-6, atol=1e-6, fast_mode=True)


@pytest.mark.parametrize("groups,og", [(1, 1), (1, 2), (2, 1)])
def test_float32_gradients_match_float64(groups, og):
    """float32 on CPU runs its matmuls through oneDNN, float64 through F.linear (checked by
    gradcheck above): the gradients of every input agree to float32 precision."""
    tensors = make_case(3, 4, 6, (9, 8), (3, 3), (1, 2), (1, 1), (1, 1), groups, og, True, 2.0)
    grads = {}
    for dtype in (torch.float64, torch.float32):
        leaves = [t.detach().to(dtype).clone().requires_grad_() for t in tensors]
        x, offset, weight, bias, mask = leaves
        out = custom_ops.deform_conv2d(x, offset, weight, bias, (1, 2), 1, 1, mask)
        out.backward(torch.linspace(-1, 1, out.numel(), dtype=dtype).view(out.shape))
        grads[dtype] = [out.detach()] + [t.grad for t in leaves]
    for low, high in zip(grads[torch.float32], grads[torch.float64]):
        torch.testing.assert_close(low.double(), high, rtol=1e-4, atol=1e-4)


def test_inference_mode_then_training():
    """The im2col buffer a thread keeps between calls is made outside inference mode, so a call
    under torch.inference_mode() (evaluation) does not break the next training step."""
    x, offset, weight, bias, mask = (t.float() for t in make_case(
        2, 4, 4, (8, 8), (3, 3), (1, 1), (1, 1), (1, 1), 1, 1, True, 1.0))
    dc._kept.buffer = None  # this thread's first call is the one under inference mode
    with torch.inference_mode():
        evaluated = custom_ops.deform_conv2d(x, offset, weight, bias, 1, 1, 1, mask)
    leaf = x.clone().requires_grad_()
    trained = custom_ops.deform_conv2d(leaf, offset, weight, bias, 1, 1, 1, mask)
    trained.sum().backward()
    torch.testing.assert_close(trained.detach(), evaluated)
    assert leaf.grad is not None and torch.isfinite(leaf.grad).all()


def test_module_starts_as_plain_convolution():
    torch.manual_seed(0)
    for modulated in (False, True):
        layer = custom_ops.DeformConv2d(4, 6, (3, 2), stride=2, padding=(1, 0), dilation=1,
                                        groups=2, offset_groups=2, modulated=modulated)
        assert layer.offset_conv.out_channels == 2 * (3 if modulated else 2) * 6
        assert layer.offset_conv.weight.abs().sum() == 0
        x = torch.randn(2, 4, 7, 6)
        scale = 0.5 if modulated else 1.0  # sigmoid(0) masks every sample by one half
        want = scale * F.conv2d(x, layer.weight, None, 2, (1, 0), 1, 2) + layer.bias.view(-1, 1, 1)
        torch.testing.assert_close(layer(x), want, rtol=1e-5, atol=1e-5)
        layer(x).sum().backward()
        assert layer.offset_conv.weight.grad.abs().sum() > 0


def test_export_and_compile_see_one_op():
    layer = custom_ops.DeformConv2d(2, 3, 3, padding=1, modulated=True).eval()
    x = torch.randn(1, 2, 5, 5)
    program = torch.export.export(layer, (x,))
    targets = [node.target for node in program.graph.nodes if node.op == "call_function"]
    assert targets.count(torch.ops.cnngraph.deform_conv2d.default) == 1
    schema = str(torch.ops.cnngraph.deform_conv2d.default._schema)
    assert schema == ("cnngraph::deform_conv2d(Tensor input, Tensor offset, Tensor weight, "
                      "Tensor? bias, Tensor? mask, int[2] stride, int[2] padding, "
                      "int[2] dilation) -> Tensor")

    graphs = []

    def capture(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    def fn(x, offset, weight):
        return custom_ops.deform_conv2d(x, offset, weight, padding=1)

    offset = torch.randn(1, 18, 5, 5)
    weight = torch.randn(3, 2, 3, 3)
    torch._dynamo.reset()
    got = torch.compile(fn, backend=capture, fullgraph=True)(x, offset, weight)
    torch.testing.assert_close(got, fn(x, offset, weight))
    calls = [n.target for gm in graphs for n in gm.graph.nodes if n.op == "call_function"]
    op = torch.ops.cnngraph.deform_conv2d
    assert len(calls) == 1 and calls[0] in (op, op.default)


def _args(**change):
    args = dict(input=torch.randn(2, 4, 6, 6), offset=torch.zeros(2, 18, 6, 6),
                weight=torch.randn(4, 4, 3, 3), bias=None, stride=1, padding=1, dilation=1,
                mask=None)
    args.update(change)
    return args


@pytest.mark.parametrize("change,message", [
    (dict(input=torch.randn(4, 6, 6)), r"input must be 4-D, got shape \(4, 6, 6\)"),
    (dict(weight=torch.randn(4, 4, 3)), r"weight must be 4-D, got shape \(4, 4, 3\)"),
    (dict(offset=torch.zeros(2, 17, 6, 6)),
     r"offset must have shape \(N=2, 2\*offset_groups\*kH\*kW = 2\*og\*9, oH=6, oW=6\).*"
     r"got \(2, 17, 6, 6\)"),
    (dict(offset=torch.zeros(2, 18, 5, 6)), r"offset must have shape \(2, 18, 6, 6\), got "
                                            r"\(2, 18, 5, 6\)"),
    (dict(offset=torch.zeros(1, 18, 6, 6)), r"offset must have shape \(2, 18, 6, 6\), got "
                                            r"\(1, 18, 6, 6\)"),
    (dict(mask=torch.ones(2, 18, 6, 6)), r"mask must have shape \(2, 9, 6, 6\).*got "
                                         r"\(2, 18, 6, 6\)"),
    (dict(mask=torch.ones(1, 9, 6, 6)), r"mask must have shape \(2, 9, 6, 6\)"),
    (dict(weight=torch.randn(4, 3, 3, 3)), r"weight \(M, C/groups, kH, kW\) = \(4, 3, 3, 3\) "
                                           r"needs input channels C=4 divisible by 3"),
    (dict(weight=torch.randn(3, 2, 3, 3)), r"= \(3, 2, 3, 3\) needs .* M=3 by the groups"),
    (dict(bias=torch.zeros(5)), r"bias must have shape \(4,\), got \(5,\)"),
    (dict(stride=0), r"stride must be an int or a pair of ints >= 1"),
])
def test_bad_input_raises_value_error(change, message):
    with pytest.raises(ValueError, match=message):
        custom_ops.deform_conv2d(**_args(**change))


def test_bad_module_arguments():
    with pytest.raises(ValueError, match="in_channels=4 must be divisible by offset_groups=3"):
        custom_ops.DeformConv2d(4, 4, 3, offset_groups=3)
    with pytest.raises(ValueError, match="divisible by groups=3"):
        custom_ops.DeformConv2d(4, 6, 3, groups=3)
