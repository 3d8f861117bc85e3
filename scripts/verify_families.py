"""Export every variant of the families of issue 12 (mobile and modern) to ONNX (fp32 and fp16) with `cnngraph export`
and check it against PyTorch with `cnngraph verify` (batch 1 and 3, its default). The test suite
does this for the smallest variant of each family; this script is the full list, run once:

    .venv/bin/python scripts/verify_families.py [--size 64] [NAME ...]

--size runs each net at that input resolution (default 64: onnxruntime's float16 kernels are
slow on a CPU, and EfficientNet-B7 at its own 600x600 is 38 GMACs a sample; the layers and
weights are the same at any size); --size 0 keeps each variant's own resolution; --in-process
runs the commands in this one process (no start-up per command). The weights are
a seeded initialisation with random batch-norm statistics and affine terms (a fresh network's
are 0 and 1, and a fresh EfficientNet's logits are then about 1e-14, below float16's range),
saved and given to both commands with --weights. Prints one line per export: name, input,
precision, worst relative error, PASS/FAIL, seconds."""
from __future__ import annotations

import argparse
import contextlib
import io
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from safetensors.torch import save_file

import cnngraph

FAMILIES = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] + [
    f"efficientnet_b{k}" for k in range(8)] + ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
                                                "mnasnet1_3"]
FAMILIES += ["squeezenet1_0", "squeezenet1_1"] + [
    f"shufflenet_v2_{w}" for w in ("x0_5", "x1_0", "x1_5", "x2_0")] + [
    f"regnet_{k}_{s}" for k in "xy" for s in ("400mf", "800mf", "1_6gf", "3_2gf", "8gf", "16gf")] + [
    f"convnext_{s}" for s in ("tiny", "small", "base", "large")]
CLI = str(Path(sys.executable).with_name("cnngraph"))


def random_weights(graph) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    module = cnngraph.build(graph)
    for m in module.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.running_mean.uniform_(-0.5, 0.5)
            m.running_var.uniform_(0.5, 1.5)
            m.weight.data.uniform_(0.5, 1.5)
            m.bias.data.uniform_(-0.5, 0.5)
        if type(m).__name__ == "LayerScale":  # ConvNeXt's start at 1e-6: make the blocks count
            m.weight.data.uniform_(0.5, 1.5)
    return {k: v.contiguous() for k, v in module.state_dict().items()}


def run_in_process(argv: list[str], check: bool = False, **_) -> subprocess.CompletedProcess:
    """`cnngraph ARGS` through cnngraph.cli.main, its output captured as subprocess.run's."""
    from cnngraph.cli import main as cli

    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(io.StringIO()):
        code = cli(argv[1:])
    if check and code:
        raise subprocess.CalledProcessError(code, argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), "")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", default=FAMILIES)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--in-process", action="store_true",
                        help="run the same export and verify commands in this process (no "
                        "start-up of torch and onnxruntime per command: for a busy machine)")
    args = parser.parse_args()
    command = run_in_process if args.in_process else subprocess.run
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.names:
            graph = cnngraph.load(name, input_shape=[3, args.size, args.size] if args.size else None)
            spec = Path(tmp) / f"{name}.yaml"  # the variant, at that input size
            cnngraph.save_spec(graph.spec, spec)
            weights = Path(tmp) / f"{name}.safetensors"
            save_file(random_weights(graph), weights)
            for fp16 in (False, True):
                path = Path(tmp) / f"{name}{'_fp16' if fp16 else ''}.onnx"
                start = time.perf_counter()
                given = ["--weights", str(weights)]
                command([CLI, "export", str(spec), "-o", str(path), *given]
                        + ["--fp16"] * fp16, check=True, capture_output=True)
                run = command([CLI, "verify", str(path), "--against", str(spec), *given],
                              capture_output=True, text=True)
                worst = re.search(r"worst relative error (\S+)", run.stdout)
                failed += run.returncode != 0
                print(f"{name:<20} {'x'.join(map(str, graph.input_shape))}  "
                      f"{'fp16' if fp16 else 'fp32'}  worst rel "
                      f"{worst.group(1) if worst else '?':<10} "
                      f"{'PASS' if run.returncode == 0 else 'FAIL'}  "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                path.unlink()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
