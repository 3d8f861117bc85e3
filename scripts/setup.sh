#!/usr/bin/env bash
# Creates .venv and installs cnngraph into it, editable. Idempotent.
# torch: an installed one (system or venv) is kept as it is; otherwise torch==2.13.0 is tried first
# (a CPU wheel lies on disk on our machines), then the registry's newest.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PY" -m venv --system-site-packages .venv
fi
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
if ! .venv/bin/python -c "import torch" >/dev/null 2>&1; then
  "${PIP[@]}" torch==2.13.0 || "${PIP[@]}" torch
fi
"${PIP[@]}" -e ".[dev]"
# tritonclient: optional (cnngraph[triton]); only its model_config_pb2 is used (export --triton and its
# tests), which needs protobuf alone, so --no-deps keeps grpc and the HTTP stack out
if ! .venv/bin/python -m pip show -q tritonclient >/dev/null 2>&1; then
  "${PIP[@]}" --no-deps tritonclient || echo "setup: tritonclient not installed; the Triton tests will skip"
fi
# torchvision: optional and for the tests only (its models are the reference; tests/torchvision_ref.py).
# The release that matches torch, with --no-deps so that it can never replace torch; skipped if unavailable.
TV=$(.venv/bin/python -c "import torch; v = torch.__version__.split('+')[0].split('.'); print('0.%d.0' % (int(v[1]) + 15) if v[0] == '2' else '')")
if [ -n "$TV" ] && ! .venv/bin/python -m pip show -q torchvision >/dev/null 2>&1; then
  "${PIP[@]}" --no-deps "torchvision==$TV" || echo "setup: torchvision $TV not installed; the tests that compare against it will skip"
fi
