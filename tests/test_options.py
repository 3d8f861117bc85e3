"""Numeric command-line options: every bad value is refused as one line naming the option
(exit 2) before a command writes anything; a diverging training run stops with one line."""
import pytest

from cnngraph.cli import main
from cnngraph.errors import CnnGraphError
from cnngraph.train import TrainConfig


def cli(argv, capsys) -> tuple[int, list[str]]:
    """Exit code and stderr lines of `cnngraph argv` (argparse's exits included)."""
    try:
        code = main(argv)
    except SystemExit as exc:
        code = exc.code
    return code, capsys.readouterr().err.splitlines()


def refused(argv, capsys, option: str, *words: str) -> str:
    code, err = cli(argv, capsys)
    assert code == 2 and len(err) == 1, err
    assert option in err[0] and "Traceback" not in err[0], err
    for word in words:
        assert word in err[0], err
    return err[0]


@pytest.mark.parametrize("argv", [
    ["train", "lenet5", "--seed", "-1"], ["train", "lenet5", "--seed", str(2 ** 32)],
    ["export", "lenet5", "-o", "x.onnx", "--seed", "-1"],
    ["bench", "lenet5", "--seed", "-1"], ["verify", "x.onnx", "--against", "lenet5", "--seed", "-1"],
])
def test_seed_outside_0_to_2_32_is_refused_by_every_command_before_writing(argv, capsys,
                                                                           tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    refused(argv + ["--out", "RUN"] if argv[0] == "train" else argv, capsys, "--seed",
            ">= 0", "< 4,294,967,296")
    assert list(tmp_path.iterdir()) == []  # no run files left behind to block a retry


def test_seed_range_is_numpys():
    import numpy as np
    np.random.default_rng(2 ** 32 - 1)  # the largest accepted seed works
    with pytest.raises(ValueError):
        np.random.default_rng(-1)
    with pytest.raises(CnnGraphError, match="--seed"):  # the Python API agrees with the CLI
        TrainConfig(seed=-1)


@pytest.mark.parametrize("argv, option", [
    (["bench", "lenet5", "--batch-sizes", "1,100000000"], "--batch-sizes"),
    (["infer", "x.onnx", "x.npz", "--batch-size", "100000000"], "--batch-size"),
    (["train", "lenet5", "--batch-size", "100000000"], "--batch-size"),
    (["export", "lenet5", "-o", "x.onnx", "--static-batch", "100000000"], "--static-batch"),
])
def test_huge_batch_sizes_are_refused(argv, option, capsys):
    refused(argv, capsys, option, "4,096")


@pytest.mark.parametrize("option, value", [
    ("--checkpoint-minutes", "-1"), ("--weight-decay", "inf"), ("--weight-decay", "-0.1"),
    ("--weight-decay", "nan"), ("--lr", "nan"), ("--lr", "0"), ("--lr", "-inf"),
    ("--val-fraction", "nan"), ("--epochs", "0"), ("--train-samples", "-5"),
])
def test_train_float_and_count_options_are_finite_and_in_range(option, value, capsys, tmp_path):
    refused(["train", "lenet5", f"{option}={value}", "--out", str(tmp_path / "run")], capsys,
            f"argument {option}:", repr(value))
    assert not (tmp_path / "run").exists()


def test_other_commands_options_are_in_range(capsys):
    refused(["bench", "lenet5", "--seconds", "nan"], capsys, "--seconds", "> 0")
    refused(["bench", "lenet5", "--seconds", "1e9"], capsys, "--seconds", "<= 3,600")
    refused(["demo", "--epochs", "0"], capsys, "--epochs", ">= 1")
    refused(["export", "lenet5", "-o", "x.onnx", "--opset", "0"], capsys, "--opset")


def test_checkpoint_minutes_zero_is_accepted():
    assert TrainConfig(checkpoint_minutes=0).checkpoint_minutes == 0  # every step, as documented
    with pytest.raises(CnnGraphError, match="--checkpoint-minutes"):
        TrainConfig(checkpoint_minutes=-1)


def test_messages_state_exact_bounds_and_name_only_the_wrong_option(capsys):
    line = refused(["train", "lenet5", "--val-fraction", "0"], capsys, "--val-fraction",
                   "> 0 and < 1")
    assert "between" not in line
    line = refused(["infer", "x.onnx", "x.npz", "--top-k", "0"], capsys, "--top-k", ">= 1")
    assert "--batch-size" not in line
    with pytest.raises(CnnGraphError, match=r"--val-fraction must be a finite number > 0 and < 1"):
        TrainConfig(val_fraction=1.0)


def test_a_diverging_run_stops_with_one_line_and_keeps_its_files(capsys, tmp_path):
    run = tmp_path / "run"
    code, err = cli(["train", "lenet5", "--lr", "1e30", "--optimizer", "sgd", "--batch-size",
                     "16", "--epochs", "1", "--train-samples", "64", "--out", str(run)], capsys)
    assert code == 2 and len(err) == 1, err
    assert "epoch 1 step" in err[0] and "loss became nan" in err[0] and "lower --lr" in err[0]
    # no checkpoint of the NaN weights, no metrics of them
    files = sorted(p.name for p in run.iterdir() if p.name != ".lock")  # the lock is inert now
    assert files == ["config.json", "info.json", "spec.yaml"]


def test_bench_refuses_inputs_larger_than_memory_before_allocating(capsys, tmp_path):
    import onnx
    from onnx import TensorProto, helper
    shape = ["N", 1000, 100_000, 100_000]  # 4e13 bytes a sample: more than any machine's memory
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "huge",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)])
    path = tmp_path / "huge.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 18)]), str(path))
    refused(["bench", str(path), "--batch-sizes", "1", "--device", "cpu", "--seconds", "0.01"],
            capsys, "--batch-sizes 1", "GiB", "smaller batch sizes")
