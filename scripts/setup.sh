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
