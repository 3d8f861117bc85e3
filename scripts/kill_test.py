"""Random kill -9 of `cnngraph train`, then --resume: the run directory must end complete and
consistent, with the weights of an uninterrupted run, bit for bit.

    .venv/bin/python scripts/kill_test.py --kills 50 --seed 0

Each trial trains a tiny net (3 epochs, a checkpoint after every step) and SIGKILLs the process
1 to 3 times at random moments, each next start resuming the run (a fresh start when no run was
made yet), then lets the last resume finish and checks every file against the checkpoint and
against the reference run. A quarter of the kills land anywhere from start-up on; the others
land uniformly in the writing phase: from the moment the process holds the run's lock (its PID
in RUN/.lock) to the time an uninterrupted run takes from there to its end.
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import yaml
from safetensors.torch import load_file

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from cnngraph.train.rundir import read_checkpoint  # noqa: E402

SPEC = {"name": "tiny", "input": [1, 8, 8], "outputs": ["fc"], "layers": [
    {"name": "conv", "op": "conv2d", "out": 4, "kernel": 3}, {"name": "relu", "op": "relu"},
    {"name": "flatten", "op": "flatten"}, {"name": "fc", "op": "linear", "out": 3}]}
TIMING = {"images_per_second", "train_seconds", "seconds"}


def make_files(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    y = np.arange(240) % 3
    x = rng.integers(0, 60, (240, 8, 8))
    for i, label in enumerate(y):
        x[i, :, 3 * label:3 * label + 2] += 150
    np.savez(root / "tiny.npz", x=x.astype(np.uint8), y=y)
    (root / "tiny.yaml").write_text(yaml.safe_dump(SPEC))
    return root / "tiny.yaml", root / "tiny.npz"


def command(spec: Path, data: Path, run: Path) -> list[str]:
    args = [sys.executable, "-m", "cnngraph.cli", "train", str(spec), "--data", str(data),
            "--out", str(run), "--epochs", "3", "--batch-size", "16", "--lr", "0.01",
            "--seed", "3", "--deterministic", "--checkpoint-minutes", "0"]
    return args + (["--resume"] if (run / "config.json").exists() else [])


def start(args: list[str]) -> subprocess.Popen:
    return subprocess.Popen(args, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})


def holds_lock(run: Path, proc: subprocess.Popen, timeout: float) -> bool:
    """Wait until `proc` holds the run's lock (False: it ended or `timeout` passed first)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            if (run / ".lock").read_text().strip() == str(proc.pid):
                return True
        except OSError:
            pass
        time.sleep(0.005)
    return False


def finish(args: list[str]) -> None:
    proc = subprocess.run(args, cwd=ROOT, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "OMP_NUM_THREADS": "1"})
    if proc.returncode:
        raise AssertionError(f"{' '.join(args)} failed: {proc.stderr.strip()[-2000:]}")


def rows(run: Path) -> list[dict]:
    lines = (run / "metrics.jsonl").read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k not in TIMING} for line in lines]


def where(run: Path) -> str:
    """Where a kill landed, from what it left: no checkpoint yet, inside an epoch, or between
    an epoch's checkpoint and its metrics row (the window that used to stay inconsistent)."""
    if not (run / "checkpoint.pt").exists():
        return "before the first checkpoint"
    state = read_checkpoint(run / "checkpoint.pt")
    written = len(rows(run)) if (run / "metrics.jsonl").exists() else 0
    if state["step"] == 0 and written < state["epoch"]:
        return "between an epoch's checkpoint and its metrics"
    return "after the metrics" if state["step"] == 0 else "inside an epoch"


def readable(run: Path) -> None:
    """Right after a kill: every file there is whole (atomic writes)."""
    for name in ("config.json", "info.json"):
        if (run / name).exists():
            json.loads((run / name).read_text())
    if (run / "spec.yaml").exists():
        yaml.safe_load((run / "spec.yaml").read_text())
    if (run / "checkpoint.pt").exists():
        read_checkpoint(run / "checkpoint.pt")
    for name in ("last", "best"):
        if (run / f"{name}.safetensors").exists():
            load_file(run / f"{name}.safetensors")
    if (run / "metrics.jsonl").exists():
        rows(run)


def check(run: Path, reference: Path) -> None:
    state = read_checkpoint(run / "checkpoint.pt")
    assert (state["epoch"], state["step"]) == (3, 0), (state["epoch"], state["step"])
    last, best = load_file(run / "last.safetensors"), load_file(run / "best.safetensors")
    assert all(torch.equal(last[k], v) for k, v in state["model"].items()), "last != checkpoint"
    history = [{k: v for k, v in r.items() if k not in TIMING} for r in state["history"]]
    assert rows(run) == history, "metrics.jsonl != checkpoint history"
    assert (run / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "curves.png"
    assert not list(run.glob(".*.tmp")), "temporary files left"
    assert rows(run) == rows(reference), "metrics differ from the uninterrupted run"
    for name, got in (("last", last), ("best", best)):
        ref = load_file(reference / f"{name}.safetensors")
        assert got.keys() == ref.keys() and all(torch.equal(got[k], ref[k]) for k in ref), \
            f"{name} weights differ from the uninterrupted run"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=50, help="kills in all (default 50)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    root = Path(tempfile.mkdtemp(prefix="cnngraph-kill-"))
    try:
        spec, data = make_files(root)
        reference = root / "reference"
        began = time.monotonic()
        proc = start(command(spec, data, reference))
        holds_lock(reference, proc, 600)
        locked = time.monotonic()
        _, err = proc.communicate()
        assert proc.returncode == 0, err.decode()[-2000:]
        span, writing = time.monotonic() - began, time.monotonic() - locked
        print(f"uninterrupted run: {span:.1f} s, {writing:.1f} s of it holding the lock")
        kills, trials, places = 0, 0, {}
        while kills < args.kills:
            trials += 1
            run = root / f"run{trials}"
            for _ in range(min(rng.randint(1, 3), args.kills - kills)):
                proc = start(command(spec, data, run))
                anywhere = rng.random() < 0.25
                if not anywhere:
                    holds_lock(run, proc, 600)
                try:
                    proc.wait(timeout=rng.uniform(0, span if anywhere else writing))
                except subprocess.TimeoutExpired:
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    readable(run)
                    place = where(run)
                    places[place] = places.get(place, 0) + 1
                else:  # it finished before the kill
                    if proc.returncode:
                        raise AssertionError(proc.stderr.read().decode()[-2000:])
                proc.stderr.close()
            finish(command(spec, data, run))
            check(run, reference)
            shutil.rmtree(run)
            print(f"trial {trials}: {kills} kills so far, complete and equal", flush=True)
        print(f"{kills} kills in {trials} trials ({', '.join(f'{n} {p}' for p, n in places.items())}); "
              "after every final resume: all files consistent with the checkpoint, metrics and "
              "last/best weights bit-equal to the uninterrupted run")
        return 0
    finally:
        shutil.rmtree(root, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
