"""Running a model over a split: probabilities, loss and accuracy, in batches, no gradients."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarlab.data.loader import BatchLoader


@torch.no_grad()
def predict_logits(model: nn.Module, loader: BatchLoader) -> tuple[Tensor, Tensor]:
    """All logits (float32, CPU) and labels of one pass over ``loader`` (not shuffled)."""
    was_training = model.training
    model.eval()
    logits, labels = [], []
    for x, y in loader:
        logits.append(model(x).float().cpu())
        labels.append(y.cpu())
    model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def eval_loader(
    images: Tensor,
    labels: Tensor,
    *,
    batch_size: int = 1000,
    device: torch.device | str = "cpu",
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> BatchLoader:
    """A plain, ordered loader for evaluation (no augmentation)."""
    return BatchLoader(images, labels, batch_size, device=device, mean=mean, std=std)


def loss_and_accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    return (
        F.cross_entropy(logits, labels).item(),
        (logits.argmax(1) == labels).float().mean().item(),
    )
