"""`cnngraph export --triton REPO`: the repository layout, and config.pbtxt parsed back with
Triton's own schema (tritonclient's model_config_pb2) and protobuf's text format, field by
field against the ONNX model onnxruntime loads."""
from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import yaml

pytest.importorskip("tritonclient", reason="the optional cnngraph[triton] dependency")
from google.protobuf import text_format  # noqa: E402

from cnngraph.cli import main  # noqa: E402
from cnngraph.triton import model_config_pb2  # noqa: E402

SPEC = {"name": "tnet", "input": [3, 16, 16], "meta": {"classes": ["cat", "dog", "bird"]},
        "layers": [{"name": "conv", "op": "conv2d", "out": 4, "kernel": 3},
                   {"name": "relu", "op": "relu"}, {"name": "pool", "op": "global_avg_pool2d"},
                   {"name": "flatten", "op": "flatten"}, {"name": "fc", "op": "linear", "out": 3}]}


@pytest.fixture(scope="module")
def spec(tmp_path_factory):
    path = tmp_path_factory.mktemp("tnet") / "tnet.yaml"
    path.write_text(yaml.safe_dump(SPEC))
    return path


def parse(path):
    pb = model_config_pb2()
    return pb, text_format.Parse(path.read_text(), pb.ModelConfig())


def test_cpu_repository_field_by_field(spec, tmp_path):
    repo = tmp_path / "repo"
    assert main(["export", str(spec), "--triton", str(repo), "--triton-max-batch", "16"]) == 0
    pb, config = parse(repo / "tnet" / "config.pbtxt")
    session = ort.InferenceSession(str(repo / "tnet" / "1" / "model.onnx"),
                                   providers=["CPUExecutionProvider"])
    assert (config.name, config.backend, config.max_batch_size) == ("tnet", "onnxruntime", 16)
    assert config.default_model_filename == "model.onnx"
    (inp,), (out,) = config.input, config.output
    assert inp.name == session.get_inputs()[0].name and inp.data_type == pb.TYPE_FP32
    assert list(inp.dims) == [3, 16, 16] and session.get_inputs()[0].shape[1:] == [3, 16, 16]
    assert out.name == session.get_outputs()[0].name and out.data_type == pb.TYPE_FP32
    assert list(out.dims) == [3] and out.label_filename == "labels.txt"
    assert (repo / "tnet" / "labels.txt").read_text().split("\n") == ["cat", "dog", "bird", ""]
    assert list(config.dynamic_batching.preferred_batch_size) == [8, 16]
    assert config.dynamic_batching.max_queue_delay_microseconds == 100
    (group,) = config.instance_group
    assert group.kind == pb.ModelInstanceGroup.KIND_CPU and group.count == 1
    assert config.optimization.HasField("graph") and config.optimization.graph.level == 0
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params == {"execution_mode": "0", "inter_op_thread_count": "1",
                      "intra_op_thread_count": "0", "enable_mem_pattern": "1",
                      "enable_mem_arena": "1"}
    x = np.zeros((2, 3, 16, 16), np.float32)   # a batch Triton would form: dynamic batch dim
    assert session.run(None, {inp.name: x})[0].shape == (2, 3)


def test_gpu_fp16_static_batch(spec, tmp_path):
    repo = tmp_path / "repo"
    assert main(["export", str(spec), "--fp16", "--static-batch", "4", "--triton", str(repo),
                 "--triton-gpu", "--triton-instances", "2"]) == 0
    pb, config = parse(repo / "tnet_fp16" / "config.pbtxt")
    assert config.name == "tnet_fp16" and config.max_batch_size == 0   # the model's own batch
    assert list(config.input[0].dims) == [4, 3, 16, 16] and list(config.output[0].dims) == [4, 3]
    assert not config.HasField("dynamic_batching")
    assert config.input[0].data_type == pb.TYPE_FP32   # fp16 compute, float32 I/O
    (group,) = config.instance_group
    assert group.kind == pb.ModelInstanceGroup.KIND_GPU and group.count == 2
    params = {k: v.string_value for k, v in config.parameters.items()}
    assert params["cudnn_conv_algo_search"] == "0"        # EXHAUSTIVE, as session.CudaOptions
    assert params["cudnn_conv_use_max_workspace"] == "1"
    assert params["do_copy_in_default_stream"] == "1"


def test_int8_model_and_output_file_together(spec, tmp_path):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "d.npz", x=rng.integers(0, 255, (40, 3, 16, 16), dtype=np.uint8),
             y=rng.integers(0, 3, 40))
    repo, out = tmp_path / "repo", tmp_path / "t.int8.onnx"
    assert main(["export", str(spec), "--int8", "--calibrate", str(tmp_path / "d.npz"),
                 "--max-drop", "100", "-o", str(out), "--triton", str(repo),
                 "--triton-name", "tiny-int8"]) == 0
    _, config = parse(repo / "tiny-int8" / "config.pbtxt")
    assert config.name == "tiny-int8"
    assert (repo / "tiny-int8" / "1" / "model.onnx").read_bytes() == out.read_bytes()


@pytest.mark.parametrize("args, message", [
    (["export", "{spec}"], "give -o FILE.onnx"),
    (["export", "{spec}", "--triton", "{tmp}/r", "--triton-name", "../x"], "--triton-name"),
    (["export", "{spec}", "--triton", "{tmp}/file"], "is a file"),
    (["export", "{spec}", "--triton", "{tmp}/r", "--triton-max-batch", "0"],
     "--triton-max-batch"),
])
def test_wrong_inputs_one_line_exit_2(spec, tmp_path, capsys, args, message):
    (tmp_path / "file").write_text("")
    assert main([a.format(spec=spec, tmp=tmp_path) for a in args]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err
