"""`cnngraph train SPEC --data DATASET ...`: train a spec into a run directory."""
from __future__ import annotations

import argparse
import json
import os

from ..options import BATCH, COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED, add_weights


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "train", help="train a spec on a dataset into a run directory",
        description="Train a spec (file or zoo name). Options left out take their defaults, "
                    "or on --resume the run's saved values. Under torchrun it runs DDP.")
    p.add_argument("spec", help="spec file or zoo name")
    p.add_argument("--data", help="glyphs (default), glyphs16, or a path: .npz, MNIST IDX "
                                  "folder/file, CIFAR python folder, image folder")
    p.add_argument("--epochs", type=COUNT, help="default 10")
    p.add_argument("--batch-size", type=BATCH, help="global batch size, default 128")
    p.add_argument("--lr", type=POSITIVE, help="default 3e-3 (adamw) or 0.05 (sgd)")
    p.add_argument("--optimizer", choices=["sgd", "adamw"], help="default adamw")
    p.add_argument("--schedule", choices=["cosine", "step"], help="default cosine")
    p.add_argument("--weight-decay", type=NON_NEGATIVE, help="default 5e-4")
    p.add_argument("--augment", help="comma-separated: crop, flip (default none)")
    p.add_argument("--val-fraction", type=FRACTION,
                   help="validation share for data without a validation set, default 0.1")
    p.add_argument("--train-samples", type=COUNT, metavar="N",
                   help="train on the first N training samples only (a quick try); default all")
    p.add_argument("--seed", type=SEED, help="default 0")
    p.add_argument("--deterministic", action="store_true", default=None,
                   help="deterministic kernels only (torch.use_deterministic_algorithms)")
    p.add_argument("--device", choices=["auto", "cpu", "cuda"], help="default auto")
    p.add_argument("--amp", action=argparse.BooleanOptionalAction,
                   help="mixed precision (default: on with CUDA)")
    p.add_argument("--compile", action="store_true", default=None, help="torch.compile the model")
    p.add_argument("--checkpoint-minutes", type=NON_NEGATIVE,
                   help="also checkpoint inside an epoch this often, default 5 (0: every step)")
    add_weights(p, "a fresh initialisation; where the data has another number of classes, "
                   "the spec's head (meta.head) is re-sized and re-initialised, the rest loaded")
    p.add_argument("--freeze", metavar="LAYER",
                   help="do not train LAYER and every layer before it (a block path: the "
                        "whole block); their batch norms stay in eval mode")
    p.add_argument("--out", help="run directory (default runs/NAME-TIMESTAMP)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    p.add_argument("--json", action="store_true", help="print the result as one JSON line last")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from ..train import train

    options = {name: getattr(args, name) for name in (
        "epochs", "batch_size", "lr", "optimizer", "schedule", "weight_decay", "val_fraction",
        "train_samples", "seed", "deterministic", "device", "amp", "compile",
        "checkpoint_minutes", "weights", "naming", "freeze")}
    if args.augment is not None:
        options["augment"] = tuple(a for a in args.augment.split(",") if a)
    result = train(args.spec, data=args.data, out=args.out, resume=args.resume, **options)
    if os.environ.get("RANK", "0") != "0":  # under torchrun, rank 0 reports
        return 0
    print(f"best validation accuracy {result['best_val_accuracy']:.2%} (epoch "
          f"{result['best_epoch']}), run directory {result['run_dir']}")
    if args.json:
        print(json.dumps(result))
    return 0
