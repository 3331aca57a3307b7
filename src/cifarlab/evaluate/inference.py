"""Running a model over a split: logits, loss and accuracy, in batches, no gradients, with
optional test-time augmentation (TTA)."""

from __future__ import annotations

import contextlib
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from cifarlab.data.loader import BatchLoader

TTA_LEVELS = {0: "none", 1: "mirror", 2: "mirror + 1-px shifts"}


def _shift(x: Tensor, d: int) -> Tensor:
    """Every image moved by (d, d) pixels, the border filled by reflection: output pixel
    (i, j) is input pixel (reflect(i + d), reflect(j + d)), as
    :func:`cifarlab.data.augment.translate` moves a batch. Written as reflect-pad and crop,
    which does not depend on the batch size, so that a graph exported with it (``cifarlab
    serve``'s ONNX backend) takes any batch: the same pixels, and faster on float batches."""
    h, w = x.shape[-2:]
    k = abs(d)
    padded = F.pad(x, (k, k, k, k), mode="reflect")
    return padded[:, :, k + d : k + d + h, k + d : k + d + w].contiguous()


def tta_logits(model: nn.Module, x: Tensor, level: int = 0) -> Tensor:
    """Logits of a normalized NCHW batch, averaged over test-time augmentations.

    Level 0: the image only. Level 1: the mean over the image and its mirror. Level 2:
    half of level 1, plus half of the mean of level 1 on the image shifted by (-1, -1) and by
    (+1, +1) pixels (reflect-padded): 6 forward passes, the views airbench uses.
    """
    if level == 0:
        return model(x).float()

    def mirror(v: Tensor) -> Tensor:
        return 0.5 * (model(v).float() + model(v.flip(-1)).float())

    out = mirror(x)
    if level >= 2:
        shifted = 0.5 * (mirror(_shift(x, -1)) + mirror(_shift(x, 1)))
        out = 0.5 * out + 0.5 * shifted
    return out


class TTAModel(nn.Module):
    """``model`` as a module whose output is :func:`tta_logits` at ``level``: what an
    exported graph (``cifarlab serve``'s ONNX backend) or a benchmark runs."""

    def __init__(self, model: nn.Module, level: int) -> None:
        super().__init__()
        self.model = model
        self.level = level

    def forward(self, x: Tensor) -> Tensor:
        return tta_logits(self.model, x, self.level)


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    loader: BatchLoader,
    *,
    tta: int = 0,
    autocast: torch.dtype | None = None,
) -> tuple[Tensor, Tensor]:
    """All logits (float32, CPU) and labels of one pass over ``loader`` (not shuffled).

    ``tta`` is the test-time augmentation level (see :func:`tta_logits`); ``autocast`` a
    lower-precision dtype to run the model in (None: as it is)."""
    was_training = model.training
    model.eval()
    device = loader.device
    ctx = (
        torch.autocast(device.type, dtype=autocast)
        if autocast is not None
        else contextlib.nullcontext()
    )
    logits, labels = [], []
    with ctx:
        for x, y in loader:
            logits.append(tta_logits(model, x, tta).cpu())
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
    channels_last: bool = False,
) -> BatchLoader:
    """A plain, ordered loader for evaluation (no augmentation)."""
    return BatchLoader(
        images, labels, batch_size, device=device, mean=mean, std=std, channels_last=channels_last
    )


def loss_and_accuracy(logits: Tensor, labels: Tensor) -> tuple[float, float]:
    return (
        F.cross_entropy(logits, labels).item(),
        (logits.argmax(1) == labels).float().mean().item(),
    )
