"""`cnngraph demo --quick` end to end: trains, exports, verifies, infers and benches."""
from __future__ import annotations

import re

import numpy as np
import onnxruntime as ort
import pytest

from cnngraph.cli import main
from cnngraph.commands.demo import replace_earlier_demo
from cnngraph.errors import InputError


def test_quick_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--quick", "--out", str(out), "--device", "cpu"]) == 0
    text = capsys.readouterr().out
    model = out / "lenet5.onnx"
    assert (out / "train" / "config.json").is_file() and model.is_file()
    assert re.search(r"parity on 200 validation samples: max \|onnxruntime - torch\| = \S+ .* PASS", text)
    rows = re.findall(r"^\s+(\d+)\s+(\d)\s+(\d)\s+([01]\.\d{3})", text, re.M)
    assert len(rows) == 8
    accuracy = re.search(r"accuracy over all 200: onnxruntime ([\d.]+), torch ([\d.]+)", text)
    assert accuracy and accuracy.group(1) == accuracy.group(2)
    assert "onnxruntime" in text.split("[5/5]")[1] and "torch eager" in text
    # the written model stands alone: onnxruntime loads it and gives ten class scores
    session = ort.InferenceSession(str(model), providers=["CPUExecutionProvider"])
    (y,) = session.run(None, {session.get_inputs()[0].name: np.zeros((2, 1, 32, 32), np.float32)})
    assert y.shape == (2, 10)
    # a later demo replaces this run; any other folder in the way is left alone
    replace_earlier_demo(out / "train")
    assert not (out / "train").exists()
    (tmp_path / "other" / "train").mkdir(parents=True)
    with pytest.raises(InputError, match="not an earlier demo's training run"):
        replace_earlier_demo(tmp_path / "other" / "train")
