"""Training runs on a tiny net and tiny data: exact resume (in-process, after Ctrl-C and after
kill -9), 2-process gloo DDP against one process, the run directory, and bad input."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from cnngraph.cli import main
from cnngraph.errors import CnnGraphError
from cnngraph.graph import Output
from cnngraph.train import load_run, train
from cnngraph.train.metrics import combined_loss, correct_topk
from cnngraph.train import trainer
from cnngraph.train.rundir import read_checkpoint


ROOT = Path(__file__).resolve().parents[1]

# A tiny classifier with an auxiliary head used only in training (weight 0.3).
TINY = {
    "name": "tiny",
    "input": [1, 8, 8],
    "layers": [
        {"name": "conv", "op": "conv2d", "out": 4, "kernel": 3},
        {"name": "relu", "op": "relu"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 3},
        {"name": "aux", "op": "linear", "out": 3, "inputs": ["flatten"]},
    ],
    "outputs": ["fc", {"name": "aux", "from": "aux", "phase": "train", "loss_weight": 0.3}],
}
OPTIONS = dict(epochs=3, batch_size=16, lr=0.01, seed=3, deterministic=True)


@pytest.fixture(scope="module")
def files(tmp_path_factory, bright_thirds):
    """tiny.yaml (the spec) and the bright-thirds dataset (conftest.py)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root / "tiny.yaml", bright_thirds


def weights(run: Path, name: str = "last") -> dict[str, torch.Tensor]:
    return load_file(run / f"{name}.safetensors")


def assert_same_weights(a: dict, b: dict, atol: float = 0.0):
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=atol, msg=k)


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """The uninterrupted run the resumed ones must reproduce."""
    spec, data = files
    out = tmp_path_factory.mktemp("ref") / "run"
    result = train(spec, data, out=out, progress=False, **OPTIONS)
    return out, result


# --- losses and metrics -------------------------------------------------------------------
def test_aux_loss_weighting_by_hand():
    logits = {"main": torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 3.0]]),
              "aux1": torch.tensor([[0.0, 1.0, 0.0], [1.0, 2.0, 3.0]]),
              "aux2": torch.tensor([[-2.0, 0.0, 2.0], [0.0, 0.0, 0.0]])}
    target = torch.tensor([0, 2])
    outputs = [Output("main", "fc"), Output("aux1", "a1", "train", 0.3),
               Output("aux2", "a2", "train", 0.3)]

    def ce(z, t):  # mean over the batch of log(sum exp z) - z[t]
        z = z.numpy().astype(np.float64)
        return np.mean([np.log(np.exp(row).sum()) - row[k] for row, k in zip(z, t.tolist())])

    expected = ce(logits["main"], target) + 0.3 * ce(logits["aux1"], target) \
        + 0.3 * ce(logits["aux2"], target)
    assert combined_loss(logits, target, outputs).item() == pytest.approx(expected, rel=1e-6)
    single = combined_loss(logits["main"], target, outputs[:1]).item()
    assert single == pytest.approx(ce(logits["main"], target), rel=1e-6)


def test_topk_counts():
    logits = torch.tensor([[0.1, 0.9, 0.0, 0.5, 0.2, 0.3],
                           [0.9, 0.1, 0.2, 0.3, 0.4, 0.5],
                           [0.0, 0.1, 0.2, 0.3, 0.4, 0.5]])
    # sample 0: class 1 is top-1; sample 1: class 1 ranks last; sample 2: class 1 ranks 5th
    assert correct_topk(logits, torch.tensor([1, 1, 1]), 5) == (1, 2)


# --- the run directory and exact resume ---------------------------------------------------
def test_run_directory_contents(reference, files):
    run, result = reference
    assert result["epochs"] == 3 and 0.9 <= result["best_val_accuracy"] <= 1.0
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert {"train_loss", "train_top1", "val_loss", "val_top1", "val_top5"} <= rows[0].keys()
    assert result["best_val_accuracy"] == max(r["val_top1"] for r in rows)
    assert json.loads((run / "config.json").read_text())["lr"] == 0.01
    assert Image.open(run / "curves.png").size[0] > 100
    graph, state, info = load_run(run)
    assert graph.name == "tiny" and graph.meta["normalize"] == info["normalize"]
    assert_same_weights(state, weights(run, "best"))
    # normalisation: mean/std of the training split's pixels / 255 (the npz has no x_val,
    # so the training split is everything but the seeded validation share)
    x = np.load(files[1])["x"] / 255
    assert info["normalize"]["mean"][0] == pytest.approx(x.mean(), rel=0.05)
    assert info["classes"] == ["0", "1", "2"] and info["train_samples"] == 216
    state = read_checkpoint(run / "checkpoint.pt")  # loads with weights_only=True
    assert state["epoch"] == 3 and state["step"] == 0


def test_stop_mid_epoch_then_resume_is_exact(reference, files, tmp_path, monkeypatch):
    """A stop request (what Ctrl-C sets) at step 20 of 39, then --resume: the same weights."""
    spec, data = files
    calls = []

    def stop_at_step_20(self, stop, due, diverged):
        calls.append(1)
        return len(calls) == 20, False, diverged

    monkeypatch.setattr(trainer._Loop, "_agree", stop_at_step_20)
    with pytest.raises(KeyboardInterrupt):
        train(spec, data, out=tmp_path, progress=False, **OPTIONS)
    monkeypatch.undo()
    state = read_checkpoint(tmp_path / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (1, 7)  # 13 steps per epoch
    with pytest.raises(CnnGraphError, match="started with --epochs 3.*with --epochs 5 into a "
                                            "new --out"):
        train(spec, data, out=tmp_path, resume=True, progress=False, epochs=5)
    result = train(spec, data, out=tmp_path, resume=True, progress=False)
    assert_same_weights(weights(tmp_path), weights(reference[0]))
    assert result["best_val_accuracy"] == reference[1]["best_val_accuracy"]
    # speed counts each epoch's steps run in its process: 13 x 16 images, and for the resumed
    # epoch 2 only steps 8..13 (6 x 16); the summary totals the rows
    rows = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    images = [r["images_per_second"] * r["train_seconds"] for r in rows]
    assert images == pytest.approx([208, 96, 208])
    assert all(r["train_seconds"] <= r["seconds"] for r in rows)
    assert result["seconds"] == pytest.approx(sum(r["seconds"] for r in rows))
    assert result["images_per_second"] == pytest.approx(
        512 / sum(r["train_seconds"] for r in rows))


def _cli(*args: str, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cnngraph.cli", *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def _wait_for(run: Path, proc: subprocess.Popen, reached) -> None:
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()
        if (run / "checkpoint.pt").exists() and reached(read_checkpoint(run / "checkpoint.pt")):
            return
        time.sleep(0.01)
    raise AssertionError("the run did not reach the position")


def _assert_readable(run: Path) -> None:
    for name in ("config.json", "info.json"):
        json.loads((run / name).read_text())
    yaml.safe_load((run / "spec.yaml").read_text())
    read_checkpoint(run / "checkpoint.pt")
    for name in ("last", "best"):
        if (run / f"{name}.safetensors").exists():
            weights(run, name)
    if (run / "metrics.jsonl").exists():
        [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def test_ctrl_c_then_kill_9_then_resume(reference, files, tmp_path):
    spec, data = files
    run = tmp_path / "run"
    args = ["train", str(spec), "--data", str(data), "--out", str(run), "--epochs", "3",
            "--batch-size", "16", "--lr", "0.01", "--seed", "3", "--deterministic",
            "--checkpoint-minutes", "0"]  # 0: a checkpoint after every step
    proc = _cli(*args)
    _wait_for(run, proc, lambda s: s["epoch"] >= 1 and s["step"] >= 2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=180)
    assert proc.returncode == 130, err
    assert "checkpoint saved" in err
    assert f"continue with: cnngraph train {spec} --resume --out {run}" in err, err
    stopped = read_checkpoint(run / "checkpoint.pt")
    assert stopped["step"] > 0  # inside an epoch

    proc = _cli(*args, "--resume")
    _wait_for(run, proc, lambda s: (s["epoch"], s["step"]) > (stopped["epoch"], stopped["step"] + 3))
    proc.send_signal(signal.SIGKILL)
    proc.communicate(timeout=180)
    _assert_readable(run)

    result = train(spec, None, out=run, resume=True, progress=False)
    assert_same_weights(weights(run), weights(reference[0]))
    assert result["best_val_accuracy"] == reference[1]["best_val_accuracy"]
    assert not list(run.glob(".*.tmp"))


def test_ddp_two_processes_match_one(reference, files, tmp_path):
    spec, data = files
    run = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cnngraph.cli", "train", str(spec), "--data", str(data), "--out", str(run),
         "--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--seed", "3", "--json"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    # the two halves of each global batch average to the one-process gradient
    assert_same_weights(weights(run), weights(reference[0]), atol=1e-5)
    assert result["best_val_accuracy"] == pytest.approx(reference[1]["best_val_accuracy"],
                                                        abs=0.01)


def test_cli_json_last_line(files, tmp_path, capsys):
    spec, data = files
    code = main(["train", str(spec), "--data", str(data), "--epochs", "1", "--out",
                 str(tmp_path / "r"), "--json"])
    assert code == 0
    result = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert result["run_dir"] == str(tmp_path / "r") and 0 <= result["best_val_accuracy"] <= 1


def test_train_samples_takes_the_first_n(files, tmp_path, capsys):
    spec, data = files
    assert main(["train", str(spec), "--data", str(data), "--epochs", "1", "--train-samples",
                 "7", "--out", str(tmp_path / "r")]) == 0
    info = json.loads((tmp_path / "r" / "info.json").read_text())
    assert info["train_samples"] == 7 and info["data"].endswith("[:7]")
    capsys.readouterr()
    # tiny.npz holds 240 samples, a tenth of them held out for validation
    _bad([str(spec), "--data", str(data), "--train-samples", "217"], capsys,
         "--train-samples 217 is more than the 216 training samples", tmp_path / "r2")


# --- bad input: one message, exit 2, nothing trained --------------------------------------
def _bad(args, capsys, expected: str, out: Path):
    assert main(["train", *args, "--out", str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and expected in err, err
    assert not (out / "checkpoint.pt").exists()


def test_bad_inputs(files, tmp_path, capsys):
    spec, data = files
    out = tmp_path / "run"
    _bad([str(spec), "--data", str(tmp_path / "missing")], capsys, "not found", out)
    (tmp_path / "data.csv").write_text("1,2\n")
    _bad([str(spec), "--data", str(tmp_path / "data.csv")], capsys, "unknown dataset format", out)
    np.savez(tmp_path / "many.npz", x=np.zeros((20, 8, 8), np.uint8), y=np.arange(20) % 5)
    _bad([str(spec), "--data", str(tmp_path / "many.npz")], capsys,
         "labels run from 0 to 4 but the spec has 3 classes", out)
    np.savez(tmp_path / "rgb.npz", x=np.zeros((20, 3, 8, 8), np.uint8), y=np.arange(20) % 3)
    _bad([str(spec), "--data", str(tmp_path / "rgb.npz")], capsys,
         "images have 3 channels but the spec's input has 1", out)
    _bad([str(spec), "--data", str(data), "--resume"], capsys, "no run to resume", out)
    _bad([str(spec), "--data", str(data), "--train-samples", "0"], capsys,
         "argument --train-samples: must be an integer >= 1", out)
    (tmp_path / "afile").write_text("")
    _bad([str(spec), "--data", str(data)], capsys, "this is a file, not a directory",
         tmp_path / "afile")
    _bad([str(spec), "--data", str(data)], capsys, "cannot create the run directory",
         tmp_path / "afile" / "run")


def test_pickled_checkpoint_is_refused_in_one_plain_line(tmp_path):
    torch.save({"model": Output("fc", "fc")}, tmp_path / "checkpoint.pt")  # a class: needs pickle
    with pytest.raises(CnnGraphError) as info:
        read_checkpoint(tmp_path / "checkpoint.pt")
    message = str(info.value)
    assert "holds pickled Python objects" in message
    assert "\x1b" not in message and len(message.splitlines()) == 1


def test_resume_with_another_spec_is_refused(files, tmp_path, capsys):
    spec, data = files
    assert main(["train", str(spec), "--data", str(data), "--epochs", "1", "--out",
                 str(tmp_path)]) == 0
    capsys.readouterr()
    other = tmp_path.parent / "other.yaml"
    other.write_text(yaml.safe_dump({**TINY, "name": "other"}))
    assert main(["train", str(other), "--data", str(data), "--out", str(tmp_path),
                 "--resume"]) == 2
    err = capsys.readouterr().err
    assert f"was trained from spec 'tiny', not from 'other'; resume it with `cnngraph train " \
           f"{tmp_path / 'spec.yaml'} --resume --out {tmp_path}`" in err, err
    assert main(["train", str(spec), "--data", str(data), "--out", str(tmp_path)]) == 2
    assert "already holds a run" in capsys.readouterr().err


def test_resume_from_a_damaged_checkpoint_says_damaged_not_pickled(files, tmp_path, capsys):
    spec, data = files
    run = tmp_path / "r"
    args = ["train", str(spec), "--data", str(data), "--epochs", "1", "--train-samples", "8",
            "--out", str(run)]
    assert main(args) == 0
    (run / "checkpoint.pt").write_text("garbage\n")  # 8 bytes of text
    capsys.readouterr()
    assert main([*args, "--resume"]) == 2
    err = capsys.readouterr().err
    assert len(err.splitlines()) == 1, err
    assert f"{run / 'checkpoint.pt'}: unreadable as a checkpoint (damaged" in err, err
    assert "pickled Python objects" not in err
