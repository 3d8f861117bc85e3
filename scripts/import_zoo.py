#!/usr/bin/env python
"""Every zoo network through export -> import (docs/import.md): `python scripts/import_zoo.py
[NAME ...] [--size 64]`.

Each network gets random weights with non-trivial batch-norm statistics (and moving deformable
offsets), is exported by cnngraph's exporter, imported back with `importers.onnx.from_onnx`, and
the imported spec's built module is compared with onnxruntime running the exported file (batch
2); one line per network: input, layers and parameters before and after (batch norm folded),
max |difference| / max |reference|, seconds. Exit status 1 when one is over 1e-4 or fails.
The tests run the small ones (tests/test_import_onnx.py).
"""
import argparse
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import numpy as np  # noqa: E402

import cnngraph  # noqa: E402
from cnngraph import zoo  # noqa: E402

TOLERANCE = 1e-4


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo names (default: all)")
    parser.add_argument("--size", type=int, default=64,
                        help="H = W of the input where the spec allows it (default 64; 0: the "
                             "spec's own)")
    args = parser.parse_args()
    from test_import_onnx import (build_imported, exported_zoo_model, onnxruntime_outputs,
                                  rel_error, torch_outputs)

    from importers.onnx import from_onnx

    failed = 0
    folder = Path(tempfile.mkdtemp(prefix="import_zoo_"))
    for name in args.names or zoo.names():
        start = time.perf_counter()
        graph = cnngraph.load(name)
        shape = None
        if args.size and len(graph.inputs[0].shape) == 4 and graph.inputs[0].shape[2] > args.size:
            shape = [graph.inputs[0].shape[1], args.size, args.size]
            try:
                cnngraph.load(name, input_shape=shape)
            except cnngraph.CnnGraphError:
                shape = None  # too small for this network: its own size
        path = folder / f"{name}.onnx"
        try:
            graph, model = exported_zoo_model(name, shape, path)
            spec, state = from_onnx(path)
            imported = cnngraph.load(spec)
            module = build_imported(spec, state)
            rng = np.random.default_rng(1)
            feeds = {i.name: rng.standard_normal((2, *graph.input_shapes[i.name])).astype(np.float32)
                     for i in model.graph.input}
            error = max(rel_error(r, g) for r, g in zip(onnxruntime_outputs(path, feeds),
                                                        torch_outputs(module, feeds)))
        except Exception as exc:  # noqa: BLE001 - report and go on
            failed += 1
            print(f"{name:20s} FAILED: {exc}", flush=True)
            continue
        failed += error > TOLERANCE
        size = "x".join(map(str, graph.inputs[0].shape[1:]))
        print(f"{name:20s} {size:>10s}  layers {len(graph.nodes) - 1:4d} -> {len(imported.nodes) - 1:4d}"
              f"  params {graph.params:>12,} -> {imported.params:>12,}  error {error:.1e}"
              f"  {time.perf_counter() - start:5.1f} s", flush=True)
        path.unlink()
        path.with_suffix(".onnx.data").unlink(missing_ok=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
