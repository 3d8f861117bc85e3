"""`cnngraph import MODEL -o SPEC.yaml [--weights FILE]`: an ONNX model (.onnx) or a Caffe
model (.prototxt, its blobs in --weights net.caffemodel) becomes a cnngraph spec and its
weights (SPEC.safetensors beside the spec).

Then train, export and verify it as any spec: `cnngraph export SPEC.yaml --weights
SPEC.safetensors -o model.onnx`."""
from __future__ import annotations

from pathlib import Path

from . import about
from ..files import check_output


def register(subparsers) -> None:
    p = subparsers.add_parser("import", help="an ONNX or Caffe model to a spec and its weights",
                              description=about(__doc__))
    p.add_argument("model", type=Path, metavar="MODEL",
                   help="model.onnx, or a Caffe deploy.prototxt")
    p.add_argument("-o", "--output", required=True, type=Path,
                   help="the spec to write (.yaml, .yml or .json); its weights go to the "
                        ".safetensors file beside it")
    p.add_argument("--weights", type=Path,
                   help="Caffe: the .caffemodel holding the trained blobs (an ONNX file holds "
                        "its own)")
    p.set_defaults(func=run)


def run(args) -> int:
    from importers import import_model, weights_path, write_import

    check_output(args.output, "-o", "model.yaml")
    spec, state = import_model(args.model, args.weights)
    spec_path, weights = write_import(spec, state, args.output)
    print(f"wrote {spec_path} ({len(spec.get('layers', []))} layers) and {weights}")
    print(f"next: cnngraph show {spec_path}; cnngraph export {spec_path} --weights {weights_path(spec_path)} "
          f"-o model.onnx")
    return 0
