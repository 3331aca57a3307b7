"""BatchLoader: the whole split lives on the device as one uint8 tensor; each epoch is a seeded
permutation cut into batches, augmented and normalized as tensor ops.

No worker processes and no per-image Python: gathering a batch is one ``index_select``.
Ready for data-parallel training: with ``world_size > 1`` ``batch_size`` is the global batch;
every rank draws the same global permutation, cuts the same global batches and takes its own
part of each, so the ranks together see each image once per epoch, step by step the same images
as one process would.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from torch import Tensor

from cifarlab.data.augment import (
    Augment,
    alternating_flip_mask,
    corrupt_batch,
    cutout,
    flip,
    normalize,
    random_flip_mask,
    random_shifts,
    translate,
)
from cifarlab.errors import CifarlabError


def _generator(device: torch.device, *seeds: int) -> torch.Generator:
    # Mix the seeds into one 63-bit number; distinct tuples give distinct streams.
    value = 0
    for s in seeds:
        value = (value * 1_000_003 + int(s)) % (2**63 - 1)
    return torch.Generator(device=device).manual_seed(value)


class BatchLoader:
    """Iterate over ``(x, y)`` batches: x float NCHW on ``device``, y int64.

    ``images`` are uint8 NHWC, as :func:`cifarlab.load_dataset` returns them. ``mean``/``std``
    None means pixels / 255 only. Each ``iter()`` is one epoch; the epoch number advances by
    itself, or is set with :meth:`set_epoch`.
    """

    def __init__(
        self,
        images: Tensor,
        labels: Tensor,
        batch_size: int,
        *,
        shuffle: bool = False,
        seed: int = 0,
        device: str | torch.device = "cpu",
        augment: Augment | None = None,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        drop_last: bool = False,
        channels_last: bool = False,
        dtype: torch.dtype = torch.float32,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if batch_size < 1:
            raise CifarlabError(f"batch size must be at least 1, got {batch_size}")
        if images.dtype != torch.uint8 or images.ndim != 4 or images.shape[-1] != 3:
            raise CifarlabError(
                f"images must be uint8 NHWC, got {images.dtype} {tuple(images.shape)}"
            )
        if len(images) != len(labels):
            raise CifarlabError(f"{len(images)} images but {len(labels)} labels")
        if not 0 <= rank < world_size:
            raise CifarlabError(f"rank {rank} is outside world size {world_size}")
        self.device = torch.device(device)
        # One copy, done once: NHWC → NCHW uint8 on the device.
        self.images = images.permute(0, 3, 1, 2).contiguous().to(self.device)
        self.labels = labels.to(self.device, torch.int64)
        self.batch_size = batch_size
        self.shuffle, self.seed, self.drop_last = shuffle, seed, drop_last
        self.augment = augment or Augment()
        self.mean, self.std = mean, std
        self.channels_last, self.dtype = channels_last, dtype
        self.rank, self.world_size = rank, world_size
        self.epoch = 0
        # A fixed random bit per image, for alternating flips (same on every rank).
        bits = torch.rand(len(labels), generator=_generator(torch.device("cpu"), seed, 7)) < 0.5
        self.flip_bits = bits.to(self.device)

    # ------------------------------------------------------------------ sizes

    def _global_steps(self) -> int:
        """Steps per epoch: global batches of ``batch_size``; in a distributed run a last
        partial batch too small to give every rank an image is dropped."""
        n, b = len(self.labels), self.batch_size
        full, rest = divmod(n, b)
        if rest and not self.drop_last and rest >= self.world_size:
            return full + 1
        return full

    @property
    def num_samples(self) -> int:
        """Images this rank sees per epoch."""
        return sum(len(idx) for idx in self.batch_indices(0))

    def __len__(self) -> int:
        return self._global_steps()

    # ------------------------------------------------------------------ epochs

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "seed": self.seed}

    def load_state_dict(self, state: dict) -> None:
        self.epoch = int(state["epoch"])
        self.seed = int(state.get("seed", self.seed))

    def batch_indices(self, epoch: int) -> list[Tensor]:
        """This rank's image indices for each step of ``epoch``.

        Every rank draws the same global permutation and cuts it into the same global batches
        of ``batch_size``; with ``world_size`` W, rank r takes the r-th of W near-equal parts of
        each (``batch_size // W`` or one more). So a step of W processes sees exactly the images
        that one process with the same batch size sees, and the number of steps is the same.
        """
        n = len(self.labels)
        if self.shuffle:
            order = torch.randperm(n, generator=_generator(torch.device("cpu"), self.seed, epoch))
        else:
            order = torch.arange(n)
        batches = list(order.split(self.batch_size))[: self._global_steps()]
        if self.world_size > 1:
            batches = [torch.tensor_split(b, self.world_size)[self.rank] for b in batches]
        return [b.to(self.device) for b in batches]

    def epoch_indices(self, epoch: int) -> Tensor:
        """This rank's image indices for ``epoch``, in order."""
        batches = self.batch_indices(epoch)
        return torch.cat(batches) if batches else torch.zeros(0, dtype=torch.int64)

    def __iter__(self) -> Iterator[tuple[Tensor, Tensor]]:
        # Advance the counter now, not at the first batch (a generator body runs lazily), so
        # state_dict() right after iter() already points at the next epoch.
        epoch = self.epoch
        self.epoch += 1
        return self._batches(epoch)

    def _batches(self, epoch: int) -> Iterator[tuple[Tensor, Tensor]]:
        gen = _generator(self.device, self.seed, epoch, self.rank, 1)
        cut = self.augment.cutout
        for idx in self.batch_indices(epoch):
            x = self.images.index_select(0, idx)
            x = self._geometric(x, idx, epoch, gen)
            if self.augment.corrupt:
                x = corrupt_batch(x, self.augment.corrupt, gen)
            x = normalize(
                x, self.mean, self.std, dtype=self.dtype, channels_last=self.channels_last
            )
            if cut:
                x = cutout(x, cut, gen)
            yield x, self.labels.index_select(0, idx)

    def _geometric(self, x: Tensor, idx: Tensor, epoch: int, gen: torch.Generator) -> Tensor:
        """Translate then flip the uint8 batch; both at once (one gather) when both are on."""
        aug = self.augment
        shifts = random_shifts(len(x), aug.translate, gen) if aug.translate else None
        mask = None
        if aug.flip == "random":
            mask = random_flip_mask(len(x), gen)
        elif aug.flip == "alternate":
            mask = alternating_flip_mask(self.flip_bits[idx], epoch)
        if shifts is not None:
            return translate(x, *shifts, flip_mask=mask)
        return x if mask is None else flip(x, mask)
