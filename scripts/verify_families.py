"""Export every variant of the mobile families to ONNX (fp32 and fp16) with `cnngraph export`
and check it against PyTorch with `cnngraph verify` (batch 1 and 3, its default), at each
variant's own input size. The test suite does this for the smallest variant of each family at
64x64; this script is the full list, run once (it takes a while on a CPU):

    .venv/bin/python scripts/verify_families.py [NAME ...]

Prints one line per export: name, precision, worst relative error, PASS/FAIL, seconds."""
from __future__ import annotations

import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

FAMILIES = ["mobilenet_v2", "mobilenet_v3_small", "mobilenet_v3_large"] + [
    f"efficientnet_b{k}" for k in range(8)] + ["mnasnet0_5", "mnasnet0_75", "mnasnet1_0",
                                                "mnasnet1_3"]
CLI = [str(Path(sys.executable).with_name("cnngraph"))]


def main(names: list[str]) -> int:
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for name in names:
            for fp16 in (False, True):
                path = Path(tmp) / f"{name}{'_fp16' if fp16 else ''}.onnx"
                start = time.perf_counter()
                subprocess.run(CLI + ["export", name, "-o", str(path)] + ["--fp16"] * fp16,
                               check=True, capture_output=True)
                run = subprocess.run(CLI + ["verify", str(path), "--against", name],
                                     capture_output=True, text=True)
                worst = re.search(r"worst relative error (\S+)", run.stdout)
                verdict = "PASS" if run.returncode == 0 else "FAIL"
                failed += run.returncode != 0
                print(f"{name:<20} {'fp16' if fp16 else 'fp32'}  worst rel "
                      f"{worst.group(1) if worst else '?':<10} {verdict}  "
                      f"{time.perf_counter() - start:.0f} s", flush=True)
                path.unlink()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:] or FAMILIES))
