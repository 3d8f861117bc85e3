#!/usr/bin/env python
"""The long fuzz run (docs/robustness.md): `python scripts/fuzz.py --cases 20000 --seed 1`.

Seeded and reproducible: case i of seed s is the same everywhere; `--case i --show` prints it,
`--case i` reruns it alone. Exit status 1 when anything was found (see cnngraph/fuzz.py).
"""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from cnngraph.fuzz import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
