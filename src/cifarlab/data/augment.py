"""Augmentation as whole-batch tensor ops: translate (reflect pad + random crop), horizontal
flip (random, or alternating across epochs), cutout, and normalization.

Every random choice comes from an explicit ``torch.Generator`` so runs are repeatable. The
geometric ops work on uint8 (4x less memory traffic than float) and on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import torch
from torch import Tensor

from cifarlab.errors import CifarlabError

FLIP_MODES = ("none", "random", "alternate")


@dataclass(frozen=True)
class Augment:
    """What to do to each training batch. The defaults do nothing."""

    translate: int = 0  # max shift in pixels, reflect padding
    flip: str = "none"  # "none" | "random" | "alternate"
    cutout: int = 0  # side of the zeroed square, 0 for none

    def __post_init__(self) -> None:
        if self.flip not in FLIP_MODES:
            raise CifarlabError(f"flip must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        if not 0 <= self.translate <= 16 or not 0 <= self.cutout <= 32:
            raise CifarlabError("translate must be 0..16 and cutout 0..32 pixels")

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip != "none" or self.cutout)

    def to_dict(self) -> dict:
        return asdict(self)


def _reflect_index(size: int, pad: int, device: torch.device) -> Tensor:
    """Source positions of a reflect-padded axis: for pad 2, size 5 → 2 1 0 1 2 3 4 3 2."""
    i = torch.arange(-pad, size + pad, device=device).abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad the last two dimensions by ``pad`` (works for uint8, unlike F.pad)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    x = x.index_select(-2, _reflect_index(h, pad, x.device))
    return x.index_select(-1, _reflect_index(w, pad, x.device))


def random_translate(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Shift each image of an NCHW batch by a random (dy, dx) in [-pad, pad], filling the
    border by reflection: reflect-pad, then crop a random window back to the input size.

    Rather than a crop per image, loop over the 2*pad+1 offsets of each axis and move every
    image with that offset at once: 2*(2*pad+1) batched copies instead of N small ones.
    """
    if pad == 0:
        return x
    n, _, h, w = x.shape
    padded = reflect_pad(x, pad)
    dy = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    dx = torch.randint(0, 2 * pad + 1, (n,), generator=gen, device=gen.device).to(x.device)
    rows = torch.empty((n, x.shape[1], h, w + 2 * pad), dtype=x.dtype, device=x.device)
    for s in range(2 * pad + 1):
        idx = (dy == s).nonzero().squeeze(1)
        if len(idx):
            rows[idx] = padded[idx, :, s : s + h, :]
    out = torch.empty_like(x)
    for s in range(2 * pad + 1):
        idx = (dx == s).nonzero().squeeze(1)
        if len(idx):
            out[idx] = rows[idx, :, :, s : s + w]
    return out


def flip_where(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images of an NCHW batch where ``mask`` is True."""
    return torch.where(mask.view(-1, 1, 1, 1), x.flip(-1), x)


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image with probability 1/2."""
    mask = torch.rand(len(x), generator=gen, device=gen.device).to(x.device) < 0.5
    return flip_where(x, mask)


def alternating_flip_mask(flip_bits: Tensor, epoch: int) -> Tensor:
    """Alternating flips: image i is mirrored iff its fixed random bit XOR (epoch is odd), so
    every image is seen both ways in any two consecutive epochs."""
    return flip_bits ^ bool(epoch % 2)


def cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero a ``size``×``size`` square (clipped at the borders) at a random centre of each
    image. Meant for normalized input, where 0 is the mean colour."""
    if size == 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (n, 1, 1), generator=gen, device=gen.device).to(x.device)
    top, left = cy - size // 2, cx - size // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= top) & (ys < top + size) & (xs >= left) & (xs < left + size)
    return x.masked_fill(inside.unsqueeze(1), 0)


def normalize(
    x: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Tensor:
    """uint8 NCHW → float: divide by 255, then (if given) subtract ``mean`` and divide by
    ``std`` per channel (both on the 0–1 scale)."""
    out = x.to(dtype)
    if mean is None or std is None:
        out = out.mul_(1 / 255)
    else:
        s = torch.tensor(std, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        m = torch.tensor(mean, dtype=dtype, device=x.device).view(1, -1, 1, 1)
        # (x/255 - m) / s  ==  x * (1/(255 s)) - m/s : one multiply-add pass
        out = torch.addcmul(-m / s, out, 1 / (255 * s))
    if channels_last:
        out = out.contiguous(memory_format=torch.channels_last)
    return out
