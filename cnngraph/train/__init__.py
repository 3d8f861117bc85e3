"""Training: `train(spec, data=..., epochs=..., ...)` runs into a run directory that
`load_run(run_dir)` reads back (graph, best weights, normalisation and classes)."""
from .config import TrainConfig
from .rundir import load_run
from .trainer import train

__all__ = ["train", "load_run", "TrainConfig"]
