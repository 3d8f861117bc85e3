"""Runs and writes under stress: kills at chosen moments then --resume, the run lock, damaged
run files, full and read-only disks, a killed export's staging, a killed DDP rank, and logs
without progress-bar frames."""
from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from cnngraph.cli import main
from cnngraph.errors import CnnGraphError
from cnngraph.train import rundir as rd
from cnngraph.train import train, trainer
from cnngraph.train.trainer import Dist

ROOT = Path(__file__).resolve().parents[1]
TINY = {
    "name": "tiny",
    "input": [1, 8, 8],
    "layers": [
        {"name": "conv", "op": "conv2d", "out": 4, "kernel": 3},
        {"name": "relu", "op": "relu"},
        {"name": "flatten", "op": "flatten"},
        {"name": "fc", "op": "linear", "out": 3},
    ],
    "outputs": ["fc"],
}
OPTIONS = dict(epochs=3, batch_size=16, lr=0.01, seed=3, deterministic=True)
ARGS = ["--epochs", "3", "--batch-size", "16", "--lr", "0.01", "--seed", "3", "--deterministic"]
TIMING = {"images_per_second", "train_seconds", "seconds"}  # differ between two runs


@pytest.fixture(scope="module")
def files(tmp_path_factory, bright_thirds):
    """tiny.yaml and the bright-thirds dataset (conftest.py)."""
    root = tmp_path_factory.mktemp("tiny")
    (root / "tiny.yaml").write_text(yaml.safe_dump(TINY))
    return root / "tiny.yaml", bright_thirds


@pytest.fixture(scope="module")
def reference(files, tmp_path_factory):
    """The uninterrupted run every killed-and-resumed one must equal."""
    spec, data = files
    out = tmp_path_factory.mktemp("ref") / "run"
    train(spec, data, out=out, progress=False, **OPTIONS)
    return out


def metrics(run: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return [{k: v for k, v in row.items() if k not in TIMING} for row in rows]


def assert_complete(run: Path, reference: Path) -> None:
    """Every file of the run agrees with its checkpoint, and the run equals the reference:
    same metrics (timings aside), same last and best weights, bit for bit."""
    state = rd.read_checkpoint(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (3, 0)
    last, best = load_file(run / "last.safetensors"), load_file(run / "best.safetensors")
    for name, tensor in state["model"].items():
        assert torch.equal(last[name], tensor), name
    rows = metrics(run)
    assert [r["epoch"] for r in rows] == [1, 2, 3]
    assert rows == [{k: v for k, v in r.items() if k not in TIMING} for r in state["history"]]
    best_epoch = max(rows, key=lambda r: r["val_top1"])["epoch"]  # the first of the highest
    assert state["best"]["epoch"] == best_epoch
    assert Image.open(run / "curves.png").size[0] > 100
    assert not list(run.glob(".*.tmp"))
    assert rows == metrics(reference)
    for name, ref in (("last", load_file(reference / "last.safetensors")),
                      ("best", load_file(reference / "best.safetensors"))):
        got = last if name == "last" else best
        assert got.keys() == ref.keys()
        assert all(torch.equal(got[k], ref[k]) for k in ref), name


class Killed(BaseException):
    """Stands for kill -9 in-process: nothing after the moment runs (no handler catches it)."""


# moments between two writes of an epoch (the case, "checkpoint:3": the final
# checkpoint written, then killed before last, best, metrics and curves, is the real kill -9
# of the next test)
MOMENTS = ["best:3", "metrics:3", "checkpoint:1"]


@pytest.mark.parametrize("moment", MOMENTS)
def test_kill_at_a_moment_then_resume_is_complete_and_exact(moment, files, reference, tmp_path,
                                                            monkeypatch):
    spec, data = files
    run = tmp_path / "run"

    def reached(name, epoch, rank=0):
        if f"{name}:{epoch}" == moment:
            raise Killed

    monkeypatch.setattr(trainer, "_reached", reached)
    with pytest.raises(Killed):
        train(spec, data, out=run, progress=False, **OPTIONS)
    monkeypatch.undo()
    assert rd.read_checkpoint(run / "checkpoint.pt")["epoch"] == int(moment[-1])
    train(spec, data, out=run, resume=True, progress=False)
    assert_complete(run, reference)


def test_kill_9_between_final_checkpoint_and_metrics(files, reference, tmp_path):
    """The same with a real process ended by the CNNGRAPH_KILL_AT hook, resumed by the CLI."""
    spec, data = files
    run = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "cnngraph.cli", "train", str(spec), "--data",
                           str(data), "--out", str(run), *ARGS], cwd=ROOT, capture_output=True,
                          text=True, env={**os.environ, "CNNGRAPH_KILL_AT": "checkpoint:3"},
                          timeout=300)
    assert proc.returncode == 137, proc.stderr
    assert len(metrics(run)) == 2  # the final epoch's row was never written
    assert main(["train", str(spec), "--data", str(data), "--out", str(run), "--resume"]) == 0
    assert_complete(run, reference)


def test_resuming_a_finished_run_writes_nothing(files, reference, tmp_path):
    spec, data = files
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    def stamps():  # the lock file holds the PID of its holder: not a file of the run
        return {p.name: (p.stat().st_ino, p.stat().st_mtime_ns) for p in run.iterdir()
                if p.name != ".lock"}

    before = stamps()
    result = train(spec, data, out=run, resume=True, progress=False)
    assert result["epochs"] == 3
    assert stamps() == before


# --- the run lock -------------------------------------------------------------------------
def test_a_second_process_on_the_same_run_is_refused(files, reference, tmp_path, capsys):
    spec, data = files
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    with rd.locked(run):  # another open of the lock file: flock refuses it as it would a process
        assert main(["train", str(spec), "--data", str(data), "--out", str(run),
                     "--resume"]) == 2
        err = capsys.readouterr().err.strip()
        assert err == (f"cnngraph train: error: {run} is in use by another cnngraph process "
                       f"(PID {os.getpid()}); wait for it to end, or train into another --out")
        fresh = tmp_path / "fresh"
        fresh.mkdir()
        with rd.locked(fresh):
            assert main(["train", str(spec), "--data", str(data), "--out", str(fresh)]) == 2
            assert "is in use by another cnngraph process" in capsys.readouterr().err
            assert not (fresh / "config.json").exists()


def test_the_lock_of_a_killed_process_does_not_block(files, tmp_path):
    spec, data = files
    run = tmp_path / "run"
    run.mkdir()
    code = ("import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT); "
            "fcntl.flock(fd, fcntl.LOCK_EX); os.write(fd, b'4242'); os._exit(9)")
    subprocess.run([sys.executable, "-c", code, str(run / ".lock")], check=False, timeout=60)
    assert (run / ".lock").read_text() == "4242"
    train(spec, data, out=run, progress=False, **{**OPTIONS, "epochs": 1})
    assert (run / "config.json").exists()


# --- damaged run files --------------------------------------------------------------------
def _resume_fails(spec, data, run, capsys, *expected: str) -> None:
    assert main(["train", str(spec), "--data", str(data), "--out", str(run), "--resume"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err, err
    for part in expected:
        assert part in err, err


@pytest.mark.parametrize("name, content, reason", [
    ("config.json", b"garbage\n", "damaged (Expecting value"),
    ("config.json", b'{"epochs": "three"}', "damaged (epochs is 'three')"),
    ("config.json", b"[1, 2]", "damaged (holds a list, not a JSON object)"),
    ("spec.yaml", b"name: [unclosed\n", "damaged (while parsing"),
    ("spec.yaml", b"- just\n- a list\n", "damaged (holds a list, not a spec mapping)"),
    ("info.json", b"{}", "damaged ('normalize' is missing"),
    ("info.json", b"\xff\xfe", "damaged ("),
])
def test_damaged_run_file_is_one_line(name, content, reason, files, reference, tmp_path, capsys):
    spec, data = files
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    (run / name).write_bytes(content)
    _resume_fails(spec, data, run, capsys, f"{run / name}: {reason}",
                  f"delete {run} and train again, or train into a new --out")


def _edit_checkpoint(run: Path, edit) -> None:
    state = rd.read_checkpoint(run / "checkpoint.pt")
    edit(state)
    torch.save(state, run / "checkpoint.pt")


@pytest.mark.parametrize("edit, reason", [
    (lambda s: s["model"].pop("fc.bias"), "its weights are not those of 'tiny' (tensors fc.bias"),
    (lambda s: s["model"].update({"extra.weight": torch.zeros(1)}), "(tensors extra.weight"),
    (lambda s: s["model"].update({"fc.weight": torch.zeros(5, 2)}),
     "tensor 'fc.weight' is [5, 2], the network needs [3, 144]"),
    (lambda s: s.pop("optimizer"), "damaged (missing optimizer)"),
    (lambda s: s.update(epoch=7), "damaged (epoch 7 step 0 with 3 epochs of history"),
    (lambda s: s.update(optimizer={"state": {}, "param_groups": []}), "damaged ("),
    (lambda s: s["history"].append("row"), "damaged ("),
])
def test_checkpoint_of_another_structure_is_one_line(edit, reason, files, reference, tmp_path,
                                                      capsys):
    spec, data = files
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    _edit_checkpoint(run, edit)
    _resume_fails(spec, data, run, capsys, f"{run / 'checkpoint.pt'}: ", reason)


# --- full, read-only and forbidden places -------------------------------------------------
def _no_space(*args, **kw):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def test_no_space_left_is_one_line_and_loses_nothing(files, reference, tmp_path, capsys,
                                                     monkeypatch):
    spec, data = files
    run = tmp_path / "run"
    shutil.copytree(reference, run)
    before = {p.name: p.read_bytes() for p in run.iterdir()}
    (run / "config.json").write_bytes(before["config.json"].replace(b'"device": "auto"',
                                                                    b'"device": "cpu"'))
    monkeypatch.setattr(os, "fsync", _no_space)  # where a full disk shows on write-back
    assert main(["train", str(spec), "--data", str(data), "--out", str(run), "--resume",
                 "--device", "auto"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"cnngraph train: error: cannot write {run / 'config.json'}: No space left "
                   "on device; free some space there (nothing written before was lost) and "
                   "run again")
    assert b'"device": "cpu"' in (run / "config.json").read_bytes()  # the old version stays
    assert not list(run.glob(".*.tmp"))
    # the same one line from the other writers
    from cnngraph.spec import save_spec
    with pytest.raises(CnnGraphError, match=r"^cannot write .*s\.yaml: No space left on device"):
        save_spec(TINY, tmp_path / "s.yaml")
    from cnngraph.commands.infer import save_outputs
    with pytest.raises(CnnGraphError, match=r"^cannot write .*o\.npz: No space left on device"):
        save_outputs(tmp_path / "o.npz", ["y"], [np.zeros(2)])
    assert not (tmp_path / "s.yaml").exists() and not list(tmp_path.glob("*.tmp"))


def test_unwritable_places_are_one_line(tmp_path, capsys, monkeypatch):
    # /proc refuses new folders for root as well, so this needs no chmod
    assert main(["demo", "--quick", "--out", "/proc/cnngraph-demo"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("cnngraph demo: error: cannot write /proc/cnngraph-demo: ") \
        and len(err.splitlines()) == 1, err

    def read_only(*args, **kw):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    from cnngraph.files import atomic_write
    (tmp_path / "kept.json").write_text("old")
    monkeypatch.setattr("tempfile.mkstemp", read_only)
    with pytest.raises(CnnGraphError) as info:
        atomic_write(tmp_path / "kept.json", b"new")
    assert str(info.value) == (f"cannot write {tmp_path / 'kept.json'}: Read-only file system; "
                               "the file system is read-only; choose a writable place")
    assert (tmp_path / "kept.json").read_text() == "old"


# --- export staging -----------------------------------------------------------------------
def test_a_killed_exports_staging_goes_away_on_the_next_write(tmp_path, monkeypatch):
    from cnngraph import build, load
    from exporters import export_onnx

    graph = load(TINY)
    state = build(graph).state_dict()
    path = tmp_path / "tiny.onnx"
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its PID now names no process
    stale = tmp_path / f".tiny.onnx.{dead.pid}.x1y2"
    stale.mkdir()
    (stale / "tiny.onnx").write_bytes(b"\0" * 1000)
    live = tmp_path / f".tiny.onnx.{os.getpid()}.abcd"  # a writer that still runs: kept
    live.mkdir()
    export_onnx(graph, state, path)
    assert not stale.exists() and live.exists()
    onnx.checker.check_model(str(path))
    old = path.read_bytes()
    monkeypatch.setattr(onnx, "save_model", _no_space)
    with pytest.raises(CnnGraphError, match=r"^cannot write .*tiny\.onnx: No space left"):
        export_onnx(graph, state, path)
    assert path.read_bytes() == old
    assert sorted(p.name for p in tmp_path.iterdir()) == [live.name, "tiny.onnx"]


# --- DDP: a rank that dies ----------------------------------------------------------------
def test_lost_rank_is_named_in_one_line():
    with pytest.raises(CnnGraphError) as info:
        with Dist(world=2, rank=0).talking():
            raise RuntimeError("[../third_party/gloo/gloo/transport/tcp/pair.cc:537] Read error "
                               "[127.0.0.1]:5555: Connection reset by peer. This is typically "
                               "caused by a remote worker\nmore")
    assert str(info.value) == (
        "rank 0 of 2: lost contact with rank 1, which stopped or was killed (see its own "
        "output; Read error [127.0.0.1]:5555: Connection reset by peer); the last checkpoint "
        "is intact: run the same torchrun command again with --resume")
    with pytest.raises(RuntimeError, match="shape mismatch"):  # not every error is a lost rank
        with Dist(world=2, rank=1).talking():
            raise RuntimeError("shape mismatch")


def test_ddp_rank_killed_is_named_in_one_line(files, tmp_path):
    """Rank 1 of a 2-process gloo run dies at its first step: rank 0 says so in one line."""
    spec, data = files
    env = {**os.environ, "OMP_NUM_THREADS": "1", "CNNGRAPH_KILL_AT": "step:0",
           "CNNGRAPH_KILL_RANK": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
         "-m", "cnngraph.cli", "train", str(spec), "--data", str(data), "--out",
         str(tmp_path / "ddp"), *ARGS], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=300)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.startswith("cnngraph train:")]
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("cnngraph train: error: rank 0 of 2: lost contact with rank 1, "
                               "which stopped or was killed") and "with --resume" in lines[0]
    # the only traceback left is torchrun's own summary, not rank 0's backend error
    assert "RuntimeError" not in proc.stderr and "DistBackendError" not in proc.stderr


# --- logs ---------------------------------------------------------------------------------
def test_a_log_gets_plain_lines_not_bar_frames(files, tmp_path, capsys):
    spec, data = files
    train(spec, data, out=tmp_path / "run", progress=True, **OPTIONS)
    err = capsys.readouterr().err
    lines = err.splitlines()
    assert [line.split(":")[0] for line in lines] == ["epoch 1/3", "epoch 2/3", "epoch 3/3"]
    assert "\r" not in err and "\x1b" not in err
