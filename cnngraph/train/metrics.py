"""Loss over a graph's active outputs, accuracy counts, and the training-curve plot."""
from __future__ import annotations

import io

import torch
import torch.nn.functional as F

from ..graph import Output


def combined_loss(logits: torch.Tensor | dict[str, torch.Tensor], target: torch.Tensor,
                  outputs: list[Output]) -> torch.Tensor:
    """Σ loss_weight · cross-entropy over the active outputs (main + auxiliary heads).
    `logits` is one tensor when one output is active, else a dict by output name."""
    if isinstance(logits, torch.Tensor):
        (out,) = outputs
        return out.loss_weight * F.cross_entropy(logits.float(), target)
    return sum(o.loss_weight * F.cross_entropy(logits[o.name].float(), target) for o in outputs)


def main_logits(logits: torch.Tensor | dict[str, torch.Tensor], main: str) -> torch.Tensor:
    return logits if isinstance(logits, torch.Tensor) else logits[main]


def correct_topk(logits: torch.Tensor, target: torch.Tensor, k: int) -> tuple[int, int]:
    """(top-1 hits, top-k hits) in the batch."""
    top = logits.topk(min(k, logits.shape[1]), dim=1).indices
    hits = top == target[:, None]
    return int(hits[:, 0].sum()), int(hits.any(dim=1).sum())


def plot_curves(history: list[dict], title: str) -> bytes:
    """Loss and top-1 accuracy per epoch (train and validation) as PNG bytes."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    epochs = [row["epoch"] for row in history]
    fig = Figure(figsize=(9, 3.5), tight_layout=True)
    ax_loss, ax_acc = fig.subplots(1, 2)
    for ax, key, label in ((ax_loss, "loss", "loss"), (ax_acc, "top1", "top-1 accuracy")):
        ax.plot(epochs, [row[f"train_{key}"] for row in history], "o-", label="train")
        ax.plot(epochs, [row[f"val_{key}"] for row in history], "o-", label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(label)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    return buffer.getvalue()
