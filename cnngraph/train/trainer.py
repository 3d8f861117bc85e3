"""The training loop: one run directory, resumable at any checkpoint, on CPU, GPU or under
torchrun (DistributedDataParallel).

Reproducibility: data order comes from DistributedSampler(seed, epoch), and each step reseeds
torch (dropout) and the augmentation generator from (seed, epoch, step, rank). The random state
is therefore a function of the position, and a checkpoint that stores the position, weights and
optimizer/scheduler state resumes exactly where the uninterrupted run would be."""
from __future__ import annotations

import math
import os
import re
import shlex
import signal
import sys
import threading
import time
from contextlib import ExitStack, contextmanager, nullcontext
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler
from tqdm import tqdm

from ..data import Dataset, channel_stats, check, load_data, to_input
from ..data.augment import augment
from ..errors import CnnGraphError, DataError
from ..graph import Graph
from . import finetune
from . import rundir as rd
from .config import TrainConfig, resumed_config
from .metrics import combined_loss, correct_topk, main_logits, plot_curves


# --- set-up -------------------------------------------------------------------------------
@dataclass
class Dist:
    """This process's place in a torchrun job (world 1 without torchrun)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0
    owned: bool = False  # we initialised the process group, so we tear it down

    @property
    def main(self) -> bool:
        return self.rank == 0

    def all_sum(self, values: list[float], device, op=dist.ReduceOp.SUM) -> list[float]:
        if self.world == 1:
            return values
        t = torch.tensor(values, dtype=torch.float64, device=device)
        with self.talking():
            dist.all_reduce(t, op=op)
        return t.tolist()

    def barrier(self) -> None:
        if self.world > 1:
            with self.talking():
                dist.barrier()

    def broadcast(self, obj):
        if self.world == 1:
            return obj
        box = [obj]
        with self.talking():
            dist.broadcast_object_list(box, src=0)
        return box[0]

    @contextmanager
    def talking(self):
        """Around anything that talks to the other processes (collectives, DDP's backward):
        when one of them died, a one-line error naming it instead of the backend's trace."""
        try:
            yield
        except dist.DistError as exc:  # DistBackendError, DistNetworkError, ... (RuntimeErrors)
            raise self.lost(exc) from None
        except RuntimeError as exc:  # gloo reports a closed connection as a plain RuntimeError
            if self.world == 1 or not _PEER_GONE.search(str(exc)):
                raise
            raise self.lost(exc) from None

    def lost(self, exc: BaseException) -> CnnGraphError:
        others = [str(r) for r in range(self.world) if r != self.rank]
        who = f"rank {others[0]}" if len(others) == 1 else f"one of ranks {', '.join(others)}"
        # the backend's first sentence, without its source location: "[pair.cc:537] Read ..."
        reason = re.sub(r"^\[[^\]]*\]\s*", "", (str(exc).strip().splitlines() or [""])[0])
        reason = reason.split(". ")[0][:160] or type(exc).__name__
        return CnnGraphError(f"rank {self.rank} of {self.world}: lost contact with {who}, which "
                             f"stopped or was killed (see its own output; {reason}); the last "
                             "checkpoint is intact: run the same torchrun command again with "
                             "--resume")


# how the backends word "the other process is gone"
_PEER_GONE = re.compile(r"connection (closed|reset)|peer|broken pipe|timed? ?out|gloo|nccl|"
                        r"socket|closed by", re.I)


def _distributed(device: torch.device) -> Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return Dist()
    owned = not dist.is_initialized()
    if owned:
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(world, dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), owned)


def _device(config: TrainConfig) -> torch.device:
    if config.device == "cuda" and not torch.cuda.is_available():
        raise CnnGraphError("--device cuda: no CUDA GPU is available here; use --device cpu")
    use_cuda = config.device == "cuda" or (config.device == "auto" and torch.cuda.is_available())
    if not use_cuda:
        return torch.device("cpu")
    index = int(os.environ.get("LOCAL_RANK", "0"))
    torch.cuda.set_device(index)
    return torch.device("cuda", index)


def _amp_dtype(config: TrainConfig, device: torch.device) -> torch.dtype | None:
    amp = config.amp if config.amp is not None else device.type == "cuda"
    if not amp:
        return None
    if device.type == "cuda" and not torch.cuda.is_bf16_supported():
        return torch.float16
    return torch.bfloat16


def _step_seed(*position: int) -> int:
    return int(np.random.SeedSequence(list(position)).generate_state(1, np.uint64)[0] >> 1)


def _schedule(config: TrainConfig, steps_per_epoch: int):
    total = config.epochs * steps_per_epoch
    warmup = min(int(config.warmup_epochs * steps_per_epoch), total // 2)

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        if config.schedule == "step":
            return 0.1 ** ((step >= total // 2) + (step >= total * 3 // 4))
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """Weight decay on weight matrices and kernels only, not on biases and norm scales."""
    params = [p for p in model.parameters() if p.requires_grad]
    groups = [{"params": [p for p in params if p.ndim > 1], "weight_decay": config.weight_decay},
              {"params": [p for p in params if p.ndim <= 1], "weight_decay": 0.0}]
    if config.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=config.lr, momentum=config.momentum, nesterov=True)
    return torch.optim.AdamW(groups, lr=config.lr)


@contextmanager
def _stop_requests(flags: dict):
    """Ctrl-C / SIGTERM set flags["stop"]; the loop saves a checkpoint after the current step
    and stops. A second Ctrl-C stops at once (the last checkpoint stays valid)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum, frame):
        if flags["stop"]:  # asked twice: stop now, without the checkpoint
            raise KeyboardInterrupt
        flags["stop"] = True

    old = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --- the run ------------------------------------------------------------------------------
@dataclass
class _Progress:
    """Where the run stands; everything in it goes into the checkpoint."""

    epoch: int = 0
    step: int = 0  # next step inside `epoch`
    sums: dict = field(default_factory=lambda: {"loss": 0.0, "top1": 0.0, "seen": 0.0})
    history: list = field(default_factory=list)
    best: dict = field(default_factory=lambda: {"val_top1": -1.0, "epoch": 0})


def _prepare_run_dir(graph: Graph, out, resume: bool, options: dict, ddp: Dist,
                     hold: ExitStack) -> tuple[Path, TrainConfig, dict | None]:
    """The run directory and its config; on --resume the run's lock (held by `hold`, rank 0),
    then the saved config and checkpoint."""
    from .. import load

    if out is None:
        if resume:
            raise CnnGraphError("--resume needs --out RUN_DIR: the run directory to continue")
        stamp = ddp.broadcast(datetime.now().strftime("%Y%m%d-%H%M%S"))
        out = Path("runs") / f"{graph.name}-{stamp}"
    run = Path(out)
    if run.exists() and not run.is_dir():
        raise CnnGraphError(f"--out {run}: this is a file, not a directory; give a directory "
                            "for the run (it is created when missing)")
    if not resume:
        if (run / rd.CONFIG).exists():
            raise CnnGraphError(f"{run} already holds a run; add --resume to continue it, or "
                                "choose another --out")
        return run, TrainConfig(**{k: v for k, v in options.items() if v is not None}), None
    if not (run / rd.CONFIG).exists() or not (run / rd.SPEC).exists():
        raise CnnGraphError(f"{run}: no run to resume here (no {rd.CONFIG} / {rd.SPEC})")
    if ddp.main:
        hold.enter_context(rd.locked(run))
    trained = load(rd.read_spec(run / rd.SPEC))
    if not _same_network(trained, graph) and not _same_head_resized(trained, graph):
        raise CnnGraphError(f"{run} was trained from spec '{trained.name}', not from "
                            f"'{graph.name}'; resume it with "
                            f"`{_resume_command(run / rd.SPEC, run)}`, or train into a new --out")
    config = resumed_config(rd.read_json(run / rd.CONFIG), options, str(run))
    state = rd.read_checkpoint(run / rd.CHECKPOINT) if (run / rd.CHECKPOINT).exists() else None
    return run, config, state


def _resume_command(spec, run: Path) -> str:
    """The command line that continues the run in `run` from `spec` (as the user named it)."""
    return f"cnngraph train {shlex.quote(str(spec))} --resume --out {shlex.quote(str(run))}"


def _same_network(a: Graph, b: Graph) -> bool:
    def signature(g: Graph):
        return g.name, [(n.name, n.op, n.inputs, n.attrs, n.shape) for n in g]

    return signature(a) == signature(b)


def _same_head_resized(trained: Graph, graph: Graph) -> bool:
    """`trained` is `graph` with its head re-sized (a run started with --weights)."""
    if trained.num_classes is None or graph.num_classes is None:
        return False
    try:
        resized = finetune.with_classes(graph, [""] * trained.num_classes)
    except CnnGraphError:
        return False
    return _same_network(trained, resized)


def _load_dataset(data, graph: Graph, config: TrainConfig) -> tuple[Graph, Dataset]:
    """The dataset, checked against the network; the network itself, or with --weights and
    another number of classes than the dataset's, the network with its head re-sized."""
    num_classes = graph.num_classes
    if num_classes is None:
        raise DataError(f"'{graph.name}': its main output is not a vector of class scores, so "
                        "it cannot be trained as a classifier")
    dataset = data if isinstance(data, Dataset) else load_data(config.data, graph.input_shape,
                                                                config.val_fraction)
    if config.train_samples is not None:
        held = len(dataset.y_train)
        if config.train_samples > held:
            raise DataError(f"--train-samples {config.train_samples} is more than the {held} "
                            f"training samples of {dataset.source}")
        n = config.train_samples
        dataset = Dataset(dataset.x_train[:n], dataset.y_train[:n], dataset.x_val,
                          dataset.y_val, dataset.classes, f"{dataset.source}[:{n}]")
    if config.weights is not None:
        classes = finetune.classes_of(dataset)
        if len(classes) != num_classes:
            graph = finetune.with_classes(graph, classes)
    return graph, check(dataset, graph.input_shape, graph.num_classes)


def train(spec_or_graph, data: str | Dataset | None = None, *, out: str | Path | None = None,
          resume: bool = False, progress: bool = True, **options) -> dict:
    """Train a spec (path, zoo name, dict or Graph) and return the result: best_val_accuracy
    (a fraction), best_epoch, final_val_accuracy, final_val_top5, epochs, seconds,
    images_per_second and run_dir. `options` are TrainConfig fields (None = default, or the
    saved value on resume); `data` is a source name/path or a Dataset."""
    from .. import load

    unknown = set(options) - set(TrainConfig.__dataclass_fields__) - {"data"}
    if unknown:
        raise TypeError(f"train() got unknown options: {', '.join(sorted(unknown))}")
    graph = spec_or_graph if isinstance(spec_or_graph, Graph) else load(spec_or_graph)
    if len(graph.inputs) != 1:  # the datasets hold one image per sample
        shapes = ", ".join(f"{k} {list(v)}" for k, v in graph.input_shapes.items())
        raise DataError(f"'{graph.name}' has {len(graph.inputs)} inputs ({shapes}); `train` "
                        "trains single-input classifiers only (one image per sample): train "
                        "it with your own PyTorch loop on cnngraph.build(graph)")
    if data is not None:
        options["data"] = data.source if isinstance(data, Dataset) else str(data)
    if isinstance(options.get("weights"), os.PathLike):
        options["weights"] = str(options["weights"])
    device = _device(TrainConfig(device=options.get("device") or "auto"))
    ddp = _distributed(device)
    try:
        with ExitStack() as hold:  # the run's lock, from the first read (resume) or write
            return _train(graph, spec_or_graph, data, out, resume, options, progress, device,
                          ddp, hold)
    finally:
        if ddp.owned:
            dist.destroy_process_group()


def _train(graph, spec_or_graph, data, out, resume, options, progress, device, ddp,
           hold) -> dict:
    """train() inside the ExitStack `hold` that keeps the run's lock until it returns."""
    from .. import build

    run, config, state = _prepare_run_dir(graph, out, resume, options, ddp, hold)
    base = graph
    graph, dataset = _load_dataset(data, graph, config)
    if config.freeze is not None:  # an unknown path fails before anything is written
        finetune.frozen_layers(graph, config.freeze)
    weights = None  # resumed from a checkpoint: never read again (the file may be gone)
    if config.weights is not None and not state:
        weights = finetune.read_weights(base, graph, config.weights, config.naming)
    info = rd.read_info(run / rd.INFO) if resume else _info(graph, dataset, config, weights)
    sizes = [len(dataset.y_train), len(dataset.y_val)]
    if sizes != [info["train_samples"], info["val_samples"]]:
        raise DataError(f"{run} was trained on {info['data']} ({info['train_samples']} + "
                        f"{info['val_samples']} samples), not on {dataset.source} "
                        f"({sizes[0]} + {sizes[1]}); resume with the same data")
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), \
            _deterministic(config.deterministic):
        torch.manual_seed(config.seed)
        model = build(graph)
        frozen = _start(model, base, graph, config, info, weights, resume,
                        ddp.main and progress)
        ddp.barrier()  # every process has checked the run directory before rank 0 writes
        if ddp.main:
            _write_run_header(run, graph, config, info, resume, hold)
        spec_arg = spec_or_graph if isinstance(spec_or_graph, (str, Path)) else run / rd.SPEC
        loop = _Loop(graph, model, dataset, info, config, run, device, ddp, progress, frozen)
        result = loop.run(state, _resume_command(spec_arg, run))
    ddp.barrier()  # no rank tears the process group down while another still talks to it
    return result


def _start(model, base: Graph, graph: Graph, config: TrainConfig, info: dict, weights,
           resume: bool, show: bool) -> list:
    """`weights` (read_weights, or None) into the fresh model, then --freeze; a new run
    records both in `info` (info.json), and loading weights prints one line. Returns the
    frozen modules. Nothing is written yet: bad options leave no run behind."""
    record = None
    if weights is not None:
        record = finetune.start(model, base, graph, weights, config.weights)
    frozen = []
    if config.freeze is not None:
        frozen = finetune.freeze(model, graph, config.freeze, finetune.fresh_layers(base, graph))
    if not resume:
        names = {n for n, m in model.named_modules() if any(m is f for f in frozen)}
        if record is not None:
            info["start"] = record
        if config.freeze is not None:
            info["frozen"] = [n.name for n in graph if n.name in names]
    if record is not None and show:
        print(finetune.summary(record, config.freeze, info.get("frozen")), file=sys.stderr)
    return frozen


def _bgr(graph: Graph) -> bool:
    """Whether the network takes its 3 channels in BGR order (a Caffe import)."""
    return graph.meta.get("channel_order") == "BGR" and graph.input_shape[:1] == (3,)


def _info(graph: Graph, dataset: Dataset, config: TrainConfig, weights=None) -> dict:
    """What the run's model needs besides its weights. Starting from weights, the input is
    normalised as they expect: as their naming declares (torchvision's googlenet), else as the
    network declares (meta.normalize); else by the training set's statistics."""
    mean, std = channel_stats(dataset.x_train, dataset.pixel_scale, graph.input_shape)
    if _bgr(graph):  # the statistics of the channels as the network gets them
        mean, std = mean[::-1], std[::-1]
    declared = None
    if config.weights is not None:
        declared = ((weights.normalize if weights is not None else None)
                    or graph.normalization(graph.inputs[0].name))
    if declared:
        channels = graph.input_shape[0]
        mean, std = ([float(v) for v in declared[k]] * (channels if len(declared[k]) == 1 else 1)
                     for k in ("mean", "std"))
    return {"classes": dataset.classes, "normalize": {"mean": mean, "std": std},
            "pixel_scale": dataset.pixel_scale, "input_shape": list(graph.input_shape),
            "data": dataset.source, "train_samples": len(dataset.y_train),
            "val_samples": len(dataset.y_val)}


def _write_run_header(run: Path, graph: Graph, config: TrainConfig, info: dict,
                      resume: bool, hold: ExitStack) -> None:
    """spec.yaml, info.json, then config.json (the mark of a run); a new run first takes the
    lock and checks again that no other process made a run here meanwhile."""
    if not resume:
        try:
            run.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise CnnGraphError(f"--out {run}: cannot create the run directory "
                                f"({exc.strerror}); choose a writable place") from None
        hold.enter_context(rd.locked(run))
        if (run / rd.CONFIG).exists():
            raise CnnGraphError(f"{run} already holds a run (written meanwhile by another "
                                "process); add --resume to continue it, or choose another --out")
    for stale in run.glob(".*.tmp"):  # half-written by a killed run: never read, removed
        stale.unlink()
    if not resume:
        rd.write_spec(run / rd.SPEC, graph.spec)
        rd.write_json(run / rd.INFO, info)
    rd.update(run / rd.CONFIG, rd.json_bytes({**config.to_dict(), "spec_name": graph.name,
                                              "torch": torch.__version__}))


def _reached(moment: str, epoch: int, rank: int = 0) -> None:
    """A named point between two writes of the run directory. For kill tests:
    CNNGRAPH_KILL_AT=MOMENT:EPOCH ends the process there at once, as kill -9 would (under
    torchrun, the process of rank CNNGRAPH_KILL_RANK, default 0)."""
    if os.environ.get("CNNGRAPH_KILL_AT") == f"{moment}:{epoch}" and \
            os.environ.get("CNNGRAPH_KILL_RANK", "0") == str(rank):
        os._exit(137)


@contextmanager
def _deterministic(on: bool):
    """Deterministic kernels for the run (a warning where an op has none); restored after."""
    before = (torch.are_deterministic_algorithms_enabled(),
              torch.is_deterministic_algorithms_warn_only_enabled(),
              torch.backends.cudnn.benchmark)
    if on:
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not on  # autotuned conv kernels when speed comes first
    try:
        yield
    finally:
        torch.use_deterministic_algorithms(before[0], warn_only=before[1])
        torch.backends.cudnn.benchmark = before[2]


class _Loop:
    """One run's model, data, optimizer and schedule; `run` trains it to the configured end."""

    def __init__(self, graph, model, dataset, info, config, run, device, ddp, progress,
                 frozen=()):
        self.graph, self.config, self.run_dir = graph, config, run
        self.frozen = list(frozen)  # --freeze: these modules stay in eval mode
        self.device, self.ddp = device, ddp
        self.show = progress and ddp.main
        # bars redraw with \r and escape codes: only on a terminal; a log gets plain lines
        self.bars = self.show and sys.stderr.isatty()
        self.raw = model.to(device)
        if device.type == "cuda":
            self.raw = self.raw.to(memory_format=torch.channels_last)
        self.model = self.raw
        if ddp.world > 1:
            self.model = torch.nn.parallel.DistributedDataParallel(
                self.raw, device_ids=[device.index] if device.type == "cuda" else None)
        if config.compile:
            self.model = torch.compile(self.model)
        self.train_outputs = graph.active_outputs(True)
        self.main = graph.active_outputs(False)[0].name
        self.x_train = torch.from_numpy(dataset.x_train)
        self.y_train = torch.from_numpy(dataset.y_train)
        self.x_val, self.y_val = torch.from_numpy(dataset.x_val), torch.from_numpy(dataset.y_val)
        self.scale, self.input_shape = info["pixel_scale"], graph.input_shape
        self.bgr = _bgr(graph)
        self.mean = torch.tensor(info["normalize"]["mean"]).view(1, -1, 1, 1)
        self.std = torch.tensor(info["normalize"]["std"]).view(1, -1, 1, 1)
        self.rank_batch = config.batch_size // ddp.world
        if self.rank_batch < 1:
            raise CnnGraphError(f"--batch-size {config.batch_size} is smaller than the "
                                f"{ddp.world} processes; it is the global batch")
        self.sampler = DistributedSampler(range(len(self.y_train)), ddp.world, ddp.rank,
                                          shuffle=True, seed=config.seed, drop_last=True)
        self.steps = max(1, len(self.sampler) // self.rank_batch)
        self.optimizer = _optimizer(self.raw, config)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer,
                                                           _schedule(config, self.steps))
        self.amp_dtype = _amp_dtype(config, device)
        self.scaler = torch.amp.GradScaler(device.type, enabled=self.amp_dtype == torch.float16)
        # this process's share of the current epoch (not checkpointed): a resumed epoch's
        # speed counts only the steps run since resuming
        self.timed = {"images": 0.0, "seconds": 0.0}

    # --- batches --------------------------------------------------------------------------
    def _inputs(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        x = to_input(x.float(), self.input_shape) * self.scale
        if self.bgr:  # datasets decode to RGB; the network takes BGR (meta.channel_order)
            x = x.flip(1)
        x = (x - self.mean) / self.std
        if generator is not None and self.config.augment:
            x = augment(x, self.config.augment, generator)
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.device.type == "cuda" else x

    def _autocast(self):
        if self.amp_dtype is None:
            return nullcontext()
        return torch.autocast(self.device.type, dtype=self.amp_dtype)

    # --- checkpoints ----------------------------------------------------------------------
    def _save(self, p: _Progress) -> None:
        """Checkpoint at p's position; DDP: train sums are totalled over the processes."""
        names = ["loss", "top1", "seen"]
        totals = self.ddp.all_sum([p.sums[k] for k in names], self.device)
        if not self.ddp.main:
            return
        sums = {**p.sums, **dict(zip(names, totals))}
        rd.write_checkpoint(self.run_dir / rd.CHECKPOINT, {
            "model": self.raw.state_dict(), "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
            "epoch": p.epoch, "step": p.step, "world_size": self.ddp.world, "sums": sums,
            "history": p.history, "best": p.best})
        _reached("checkpoint", p.epoch)
        rd.write_weights(self.run_dir / rd.LAST, self.raw.state_dict())
        _reached("last", p.epoch)

    def _restore(self, state: dict) -> _Progress:
        """The checkpoint's position and states, each checked against this run first."""
        path = self.run_dir / rd.CHECKPOINT
        if state["step"] and state["world_size"] != self.ddp.world:
            raise CnnGraphError(f"{self.run_dir}: the checkpoint is inside an epoch of a "
                                f"{state['world_size']}-process run; resume it with "
                                f"{state['world_size']} processes")
        model, expected = state["model"], self.raw.state_dict()
        if not isinstance(model, dict) or model.keys() != expected.keys():
            names = set(model) if isinstance(model, dict) else set()
            odd = sorted(names ^ expected.keys())
            raise rd.damaged(path, f"its weights are not those of '{self.graph.name}' "
                                   f"(tensors {', '.join(odd[:3])}{'…' if len(odd) > 3 else ''} "
                                   "missing or extra)")
        for name, tensor in expected.items():
            got = model[name]
            if not isinstance(got, torch.Tensor) or got.shape != tensor.shape:
                shape = list(got.shape) if isinstance(got, torch.Tensor) else type(got).__name__
                raise rd.damaged(path, f"tensor '{name}' is {shape}, the network needs "
                                       f"{list(tensor.shape)}")
        try:
            epoch, step, history, best = (state[k] for k in ("epoch", "step", "history", "best"))
            if not (0 <= epoch <= self.config.epochs and 0 <= step <= self.steps
                    and len(history) == epoch and (step == 0 or epoch < self.config.epochs)):
                raise ValueError(f"epoch {epoch} step {step} with {len(history)} epochs of "
                                 f"history does not fit {self.config.epochs} epochs of "
                                 f"{self.steps} steps")
            best = {"val_top1": float(best["val_top1"]), "epoch": int(best["epoch"])}
            history = [dict(row) for row in history]
            sums = {k: float(state["sums"][k]) if self.ddp.main else 0.0
                    for k in _Progress().sums}
            self.raw.load_state_dict(model)
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise rd.damaged(path, str(exc).strip().splitlines()[0] if str(exc).strip()
                             else type(exc).__name__) from None
        return _Progress(epoch, step, sums, history, best)

    def _rederive(self, p: _Progress) -> None:
        """After a kill, the files written after the checkpoint may be missing or older:
        rewrite each that differs from what the checkpoint says (last, best when it is the
        checkpoint's epoch, metrics, curves), so a resumed run is whole before it goes on
        (or, finished, returns). Files that already agree are not touched."""
        if not self.ddp.main:
            return
        weights = rd.weights_bytes(self.raw.state_dict())
        rd.update(self.run_dir / rd.LAST, weights)
        if p.step == 0 and p.epoch and p.best["epoch"] == p.epoch:
            rd.update(self.run_dir / rd.BEST, weights)
        rd.update(self.run_dir / rd.METRICS, rd.metrics_bytes(p.history))
        if p.history:
            rd.update(self.run_dir / rd.CURVES, plot_curves(p.history, self.graph.name))

    # --- epochs ---------------------------------------------------------------------------
    def run(self, state: dict | None, resume_hint: str) -> dict:
        """Train to the configured end; on Ctrl-C, checkpoint and print `resume_hint`."""
        p = _Progress()
        if state:
            p = self._restore(state)
            self._rederive(p)
        flags = {"stop": False}
        epochs_bar = tqdm(total=self.config.epochs, initial=p.epoch, desc=self.graph.name,
                          unit="epoch", disable=not self.bars, file=sys.stderr)
        with _stop_requests(flags):
            while p.epoch < self.config.epochs:
                if not self._train_epoch(p, flags):
                    epochs_bar.close()
                    self._save(p)
                    if self.show:
                        print(f"stopped: checkpoint saved at epoch {p.epoch + 1} step {p.step} "
                              f"in {self.run_dir}; continue with: {resume_hint}",
                              file=sys.stderr)
                    raise KeyboardInterrupt
                self._end_epoch(p)
                epochs_bar.update(1)
                epochs_bar.set_postfix(val=f"{p.history[-1]['val_top1']:.2%}",
                                       best=f"{p.best['val_top1']:.2%}")
        epochs_bar.close()
        return self._result(p)

    def _train_epoch(self, p: _Progress, flags: dict) -> bool:
        """Steps from p.step to the end of the epoch; False when asked to stop."""
        self.sampler.set_epoch(p.epoch)
        order = torch.tensor(list(self.sampler))
        self.model.train()
        for module in self.frozen:  # frozen batch norms: running statistics used, not updated
            module.eval()
        bar = tqdm(total=self.steps, initial=p.step, desc=f"epoch {p.epoch + 1}", unit="batch",
                   leave=False, disable=not self.bars, file=sys.stderr)
        started, seen_here, last_save = time.monotonic(), 0, time.monotonic()
        for step in range(p.step, self.steps):
            idx = order[step * self.rank_batch:(step + 1) * self.rank_batch]
            seed = _step_seed(self.config.seed, p.epoch, step, self.ddp.rank)
            torch.manual_seed(seed)
            x = self._inputs(self.x_train[idx], torch.Generator().manual_seed(seed))
            y = self.y_train[idx].to(self.device, non_blocking=True)
            with self.ddp.talking():  # DDP's forward and backward talk to the other ranks
                with self._autocast():
                    logits = self.model(x)
                    loss = combined_loss(logits, y, self.train_outputs)
                self.optimizer.zero_grad(set_to_none=True)
                self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
            self.scheduler.step()
            top1, _ = correct_topk(main_logits(logits, self.main).detach(), y, 1)
            n, loss_value = len(y), float(loss.detach())
            p.sums["loss"] += loss_value * n
            p.sums["top1"] += top1
            p.sums["seen"] += n
            p.step, seen_here = step + 1, seen_here + n
            elapsed = time.monotonic() - started
            bar.update(1)
            if self.bars and (step % 10 == 0 or step + 1 == self.steps):
                bar.set_postfix(loss=f"{p.sums['loss'] / p.sums['seen']:.4f}",
                                acc=f"{p.sums['top1'] / p.sums['seen']:.2%}",
                                img_s=f"{seen_here * self.ddp.world / max(elapsed, 1e-9):.0f}")
            due = time.monotonic() - last_save > self.config.checkpoint_minutes * 60
            stop, save, diverged = self._agree(flags["stop"], due, not math.isfinite(loss_value))
            _reached("step", p.epoch, self.ddp.rank)
            if diverged:  # these weights are lost: keep the checkpoint on disk as it is
                bar.close()
                raise self._diverged(p, loss_value)
            if stop:
                bar.close()
                return False
            if save and p.step < self.steps:
                self._save(p)
                last_save = time.monotonic()
        self.timed = {"images": seen_here, "seconds": time.monotonic() - started}
        bar.close()
        return True

    def _agree(self, stop: bool, due: bool, diverged: bool) -> tuple[bool, bool, bool]:
        """All processes stop / checkpoint / give up at the same step (rank 0's clock decides
        saves; one rank's non-finite loss stops them all)."""
        if self.ddp.world == 1:
            return stop, due, diverged
        flags = self.ddp.all_sum([float(stop), float(due and self.ddp.main), float(diverged)],
                                 self.device, op=dist.ReduceOp.MAX)
        return bool(flags[0]), bool(flags[1]), bool(flags[2])

    def _diverged(self, p: _Progress, loss: float, which: str = "training") -> CnnGraphError:
        """The one-line error for a training loss that became NaN or infinite."""
        c = self.config
        kept = ("its last checkpoint is kept as it was" if (self.run_dir / rd.CHECKPOINT).exists()
                else "it holds no checkpoint yet")
        return CnnGraphError(
            f"epoch {p.epoch + 1} step {p.step}: the {which} loss became {loss} (the weights "
            f"diverged), so training stopped; {self.run_dir}: {kept}. Train again into a new "
            f"--out with a lower --lr (now {c.lr:g}) or --weight-decay (now {c.weight_decay:g})")

    @torch.no_grad()
    def evaluate(self) -> tuple[float, float, float]:
        """Validation loss, top-1 and top-5 of the main output (DDP: shards, then totals)."""
        self.raw.eval()
        loss = top1 = top5 = 0.0
        shard = torch.arange(self.ddp.rank, len(self.y_val), self.ddp.world)
        batch = max(256, 2 * self.config.batch_size)
        for start in range(0, len(shard), batch):
            idx = shard[start:start + batch]
            x, y = self._inputs(self.x_val[idx]), self.y_val[idx].to(self.device)
            with self._autocast():
                logits = main_logits(self.raw(x), self.main).float()
            loss += float(torch.nn.functional.cross_entropy(logits, y, reduction="sum"))
            hits1, hits5 = correct_topk(logits, y, 5)
            top1, top5 = top1 + hits1, top5 + hits5
        loss, top1, top5 = self.ddp.all_sum([loss, top1, top5], self.device)
        n = len(self.y_val)
        return loss / n, top1 / n, top5 / n

    def _end_epoch(self, p: _Progress) -> None:
        started = time.monotonic()
        val_loss, val_top1, val_top5 = self.evaluate()
        if not math.isfinite(val_loss):  # the last steps diverged: do not save these weights
            raise self._diverged(p, val_loss, "validation")
        loss, top1, seen, images = self.ddp.all_sum(
            [*(p.sums[k] for k in ("loss", "top1", "seen")), self.timed["images"]], self.device)
        train_seconds = self.timed["seconds"]
        row = {"epoch": p.epoch + 1, "train_loss": loss / seen, "train_top1": top1 / seen,
               "val_loss": val_loss, "val_top1": val_top1, "val_top5": val_top5,
               "lr": self.optimizer.param_groups[0]["lr"],
               "images_per_second": images / max(train_seconds, 1e-9),
               "train_seconds": train_seconds,
               "seconds": train_seconds + time.monotonic() - started}
        p.history.append(row)
        improved = val_top1 > p.best["val_top1"]
        if improved:
            p.best = {"val_top1": val_top1, "epoch": p.epoch + 1}
        p.epoch, p.step = p.epoch + 1, 0
        p.sums = {k: 0.0 for k in p.sums}
        # the checkpoint first: every later file of the epoch can be re-derived from it
        self._save(p)
        if not self.ddp.main:
            return
        if improved:
            rd.write_weights(self.run_dir / rd.BEST, self.raw.state_dict())
        _reached("best", p.epoch)
        rd.write_metrics(self.run_dir / rd.METRICS, p.history)
        _reached("metrics", p.epoch)
        rd.atomic_write(self.run_dir / rd.CURVES, plot_curves(p.history, self.graph.name))
        _reached("curves", p.epoch)
        if self.show:
            line = (f"epoch {row['epoch']}/{self.config.epochs}: train loss "
                    f"{row['train_loss']:.4f} top-1 {row['train_top1']:.2%} | val loss "
                    f"{val_loss:.4f} top-1 {val_top1:.2%} top-5 {val_top5:.2%} | "
                    f"{row['images_per_second']:.0f} img/s, {row['seconds']:.1f} s")
            (tqdm.write if self.bars else print)(line, file=sys.stderr)

    def _result(self, p: _Progress) -> dict:
        """The run's summary; seconds and images/s total the epochs' rows (the work done,
        each step counted once, time lost to an interruption not counted)."""
        last = p.history[-1]
        seconds = [row.get("train_seconds", row["seconds"]) for row in p.history]  # older runs
        train_seconds = sum(seconds)
        images = sum(row["images_per_second"] * t for row, t in zip(p.history, seconds))
        return {"run_dir": str(self.run_dir), "best_val_accuracy": p.best["val_top1"],
                "best_epoch": p.best["epoch"], "final_val_accuracy": last["val_top1"],
                "final_val_top5": last["val_top5"], "epochs": len(p.history),
                "seconds": sum(row["seconds"] for row in p.history),
                "images_per_second": images / max(train_seconds, 1e-9)}
