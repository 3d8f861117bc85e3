"""Every training option, its default, and the check of a resumed run's options."""
from __future__ import annotations

from dataclasses import asdict, dataclass, fields

from ..data.augment import AUGMENTATIONS
from ..errors import CnnGraphError
from ..options import BATCH, COUNT, FRACTION, NON_NEGATIVE, POSITIVE, SEED

DEFAULT_LR = {"adamw": 3e-3, "sgd": 0.05}


@dataclass
class TrainConfig:
    data: str = "glyphs"
    epochs: int = 10
    batch_size: int = 128  # global: split across DDP processes
    lr: float | None = None  # None: DEFAULT_LR of the optimizer
    optimizer: str = "adamw"
    schedule: str = "cosine"  # cosine: linear warm-up then cosine to 0; step: ×0.1 at 50%, 75%
    warmup_epochs: float = 0.5
    weight_decay: float = 5e-4
    momentum: float = 0.9  # sgd only
    augment: tuple[str, ...] = ()
    val_fraction: float = 0.1  # for sources without a validation set
    train_samples: int | None = None  # the first N training samples only (a quick try)
    seed: int = 0
    deterministic: bool = False
    device: str = "auto"  # auto: cuda when present
    amp: bool | None = None  # None: on with CUDA (bf16 where supported, else fp16)
    compile: bool = False
    checkpoint_minutes: float = 5.0  # also checkpoint inside an epoch this often
    weights: str | None = None  # start from these weights (the head re-sized to the data)
    naming: str | None = None  # whose names the weights have (default: from the keys)
    freeze: str | None = None  # a layer path: it and every layer before it do not train

    def __post_init__(self):
        self.augment = tuple(self.augment)
        if self.lr is None and self.optimizer in DEFAULT_LR:
            self.lr = DEFAULT_LR[self.optimizer]
        checks = [
            (self.optimizer in DEFAULT_LR, f"--optimizer must be one of {', '.join(DEFAULT_LR)}"),
            (self.schedule in ("cosine", "step"), "--schedule must be cosine or step"),
            (self.device in ("auto", "cpu", "cuda"), "--device must be auto, cpu or cuda"),
            (set(self.augment) <= set(AUGMENTATIONS),
             f"--augment takes {', '.join(AUGMENTATIONS)}, got {', '.join(self.augment)}"),
        ]
        for ok, message in checks:
            if not ok:
                raise CnnGraphError(message)
        for name, kind in RANGES.items():  # the ranges the command line checks too
            if (value := getattr(self, name)) is not None:  # None: lr and train_samples
                kind.check("--" + name.replace("_", "-"), value)

    def to_dict(self) -> dict:
        return {**asdict(self), "augment": list(self.augment)}


RANGES = {"epochs": COUNT, "batch_size": BATCH, "lr": POSITIVE, "warmup_epochs": NON_NEGATIVE,
          "weight_decay": NON_NEGATIVE, "momentum": NON_NEGATIVE, "val_fraction": FRACTION,
          "train_samples": COUNT, "seed": SEED, "checkpoint_minutes": NON_NEGATIVE}
DEFAULTS = TrainConfig()
# the JSON types config.json may hold for a field, by the type of its default
_KINDS = {int: (int,), float: (int, float), str: (str,), bool: (bool,), tuple: (list,),
          type(None): ()}
_NONE = {"lr": (int, float, type(None)), "train_samples": (int, type(None)),
         "amp": (bool, type(None)), "weights": (str, type(None)), "naming": (str, type(None)),
         "freeze": (str, type(None))}

# Options that may differ when a run is resumed (where and how fast, not what is computed).
RUNTIME_OPTIONS = {"device", "amp", "compile", "checkpoint_minutes"}


def resumed_config(saved: dict, options: dict, run_dir: str) -> TrainConfig:
    """The saved config; an option given again must agree with it, except RUNTIME_OPTIONS."""
    try:
        values = {f.name: saved[f.name] for f in fields(TrainConfig) if f.name in saved}
        for name, value in values.items():
            kinds = _KINDS[type(getattr(DEFAULTS, name))] + _NONE.get(name, ())
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                raise TypeError(f"{name} is {value!r}")
        config = TrainConfig(**values)
    except (TypeError, ValueError, CnnGraphError) as exc:  # a value of the wrong type or range
        raise CnnGraphError(f"{run_dir}/config.json: damaged ({exc}); it was not written this "
                            f"way by `cnngraph train`: delete {run_dir} and train again, or "
                            "train into a new --out") from None
    for name, value in options.items():
        if value is None or name in RUNTIME_OPTIONS:
            continue
        old = getattr(config, name)
        if name == "epochs" and value != old:
            raise CnnGraphError(f"{run_dir}: this run was started with --epochs {old}, and its "
                                "learning-rate schedule ends there, so a resume cannot change "
                                "it; drop --epochs to resume it, or train a new run with "
                                f"--epochs {value} into a new --out directory")
        if (tuple(value) if name == "augment" else value) != old:
            raise CnnGraphError(f"{run_dir}: this run was started with {name}={old!r}, not "
                                f"{value!r}; drop the option to resume it, or train into a new "
                                "--out directory")
    for name in RUNTIME_OPTIONS & options.keys():
        if options[name] is not None:
            setattr(config, name, options[name])
    return config
