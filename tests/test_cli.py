"""The front end's commands: `cnngraph zoo`, `show` (table and --json) and `ops`, run in-process
through the dispatcher, against published parameter counts and the output-size formula."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from cnngraph.cli import main


def run(capsys, *argv):
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def test_zoo_lists_one_model_a_line_with_its_params(capsys):
    code, out, _ = run(capsys, "zoo")
    assert code == 0
    lines = {line.split()[0]: line.split()[1] for line in out.splitlines()}
    assert lines["resnet50"] == "25,557,032"          # torchvision resnet50
    assert lines["vgg16_bn"] == "138,365,992"
    assert lines["googlenet"] == "6,624,904"
    assert "(13,004,888 with auxiliary heads)" in out
    assert len(lines) == len(out.splitlines())


def test_show_json(capsys):
    code, out, _ = run(capsys, "show", "lenet5", "--json")
    assert code == 0
    report = json.loads(out)
    assert report["params"] == 60_850 and report["outputs"] == {"output": ["N", 10]}
    c3 = next(layer for layer in report["layers"] if layer["name"] == "c3")
    # 60 connections x 5x5 x 10x10 outputs; the receptive field 6 + 4*2 = 14
    assert c3 == {"name": "c3", "op": "conv2d", "shape": ["N", 16, 10, 10], "params": 1_516,
                  "macs": 60 * 25 * 100, "receptive_field": [14, 14], "jump": [2, 2]}
    assert report["macs"] == sum(layer["macs"] for layer in report["layers"])


def test_show_with_an_input_shape(capsys):
    code, out, _ = run(capsys, "show", "alexnet", "--input-shape", "4,3,259,259", "--json")
    report = json.loads(out)
    # conv1 11/4: (259-11)//4+1 = 63; pool 3/2: 31; conv2 p2: 31; pool: 15; conv3-5: 15; pool: 7
    pool5 = next(layer for layer in report["layers"] if layer["name"] == "pool5")
    assert pool5["shape"] == [4, 256, 7, 7] and report["outputs"] == {"fc8": [4, 1000]}
    # fc6 sees 256*7*7 inputs instead of 256*6*6
    assert report["params"] == 60_965_224 + 256 * (49 - 36) * 4096


def test_show_table_has_totals_and_inference_params(capsys):
    code, out, _ = run(capsys, "show", "googlenet")
    assert code == 0
    assert "\ninception3a.branch2.conv  " in out
    assert "params: 13,004,888" in out and "params: 6,624,904" in out
    assert "aux1 Nx1000 (train only)" in out


def test_spec_errors_exit_2_with_one_line(capsys, tmp_path):
    spec = tmp_path / "bad.yaml"
    spec.write_text("name: bad\ninput: [1, 8, 8]\nlayers:\n  - {name: c, op: conv2d, out: 4}\n")
    code, out, err = run(capsys, "show", str(spec))
    assert code == 2 and out == ""
    assert err == (f"cnngraph show: error: {spec}:4: layer 'c': conv2d needs attribute 'kernel' "
                   "(kernel size: k or [kh, kw]): add `kernel: ...`\n")
    code, _, err = run(capsys, "show", str(tmp_path / "missing.yaml"))
    assert code == 2 and "missing.yaml: no such file" in err
    code, _, err = run(capsys, "show", "lenet5", "--input-shape", "1,x")
    assert code == 2 and "--input-shape must be integers" in err


def test_ops_lists_attributes_and_defaults(capsys):
    code, out, _ = run(capsys, "ops")
    assert code == 0
    names = [line.split()[0] for line in out.split("\n\n")]
    assert {"conv2d", "deform_conv2d", "subsample2d", "lrn", "upsample"} <= set(names)
    code, out, _ = run(capsys, "ops", "max_pool2d")
    assert out.startswith("max_pool2d  (1 input)")
    assert any(line.split()[:4] == ["kernel", "ints", "default", "required"]
               for line in out.splitlines())
    assert any(line.split()[:4] == ["ceil_mode", "bool", "default", "false"]
               for line in out.splitlines())
    code, _, err = run(capsys, "ops", "maxpool2d")
    assert code == 2 and "did you mean 'max_pool2d'" in err


def test_version_prints_the_package_version(capsys):
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    pyproject = Path(__file__).resolve().parents[1] / "pyproject.toml"
    expected = tomllib.loads(pyproject.read_text())["project"]["version"]
    with pytest.raises(SystemExit) as exit_:
        main(["--version"])
    assert exit_.value.code == 0
    assert capsys.readouterr().out == f"cnngraph {expected}\n"


@pytest.mark.parametrize("argv", [["--help"], ["zoo"], ["show", "resnet18"], ["ops"],
                                  ["export", "--help"], ["bench", "--help"], ["verify", "--help"],
                                  ["infer", "--help"], ["train", "--help"], ["demo", "--help"],
                                  ["import", "--help"]])
def test_front_end_commands_never_import_torch(argv):
    """In a fresh interpreter: the heavy libraries (2-3 s of CPU) stay unimported."""
    code = ("import sys, contextlib, io\n"
            "from cnngraph.cli import main\n"
            "with contextlib.redirect_stdout(io.StringIO()):\n"
            "    try:\n"
            f"        main({argv!r})\n"
            "    except SystemExit:\n"
            "        pass\n"
            "print(sorted(m for m in ('torch', 'onnx', 'onnxruntime') if m in sys.modules))\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_verify_notes_a_constant_output(capsys, tmp_path):
    """A network whose classifier has zero weights outputs zeros everywhere: onnxruntime agrees
    exactly, and verify passes, but says that such an agreement checks little."""
    import torch
    from safetensors.torch import save_file

    import cnngraph

    spec = tmp_path / "net.yaml"
    spec.write_text("name: net\ninput: [1, 8, 8]\nlayers:\n"
                    "  - {name: conv, op: conv2d, out: 4, kernel: 3}\n"
                    "  - {name: pool, op: global_avg_pool2d}\n"
                    "  - {name: flat, op: flatten}\n"
                    "  - {name: fc, op: linear, out: 3}\n")
    state = cnngraph.build(cnngraph.load(str(spec))).state_dict()
    state["fc.weight"], state["fc.bias"] = torch.zeros(3, 4), torch.zeros(3)
    save_file({k: v.contiguous() for k, v in state.items()}, tmp_path / "w.safetensors")
    model, weights = str(tmp_path / "net.onnx"), str(tmp_path / "w.safetensors")
    assert main(["export", str(spec), "--weights", weights, "-o", model]) == 0
    assert main(["verify", model, "--against", str(spec), "--weights", weights]) == 0
    out = capsys.readouterr().out
    assert "PASS" in out and "note: PyTorch's output 'fc' is the same number everywhere" in out
