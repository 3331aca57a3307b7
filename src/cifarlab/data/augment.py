"""Augmentation as whole-batch tensor ops: translate (reflect pad + random crop), horizontal
flip (random, or alternating across epochs), cutout, and normalization.

Every random choice comes from an explicit ``torch.Generator`` so runs are repeatable. The
geometric ops work on uint8 (4x less memory traffic than float) and on any device.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from cifarlab.data.corruptions import CORRUPTIONS, corrupt
from cifarlab.errors import CifarlabError, SettingError

FLIP_MODES = ("none", "random", "alternate")


@dataclass(frozen=True)
class Augment:
    """What to do to each training batch. The defaults do nothing."""

    translate: int = 0  # max shift in pixels, reflect padding
    flip: str = "none"  # "none" | "random" | "alternate"
    cutout: int = 0  # side of the zeroed square, 0 for none
    # share of each batch replaced by a corrupted copy (CIFAR-10-C's corruptions at a random
    # severity: cifarlab.data.corruptions), 0 for none
    corrupt: float = 0.0

    def __post_init__(self) -> None:
        if not isinstance(self.flip, str) or self.flip not in FLIP_MODES:
            raise SettingError("flip", f"must be one of {', '.join(FLIP_MODES)}, got {self.flip!r}")
        for name, top in (("translate", 16), ("cutout", 32)):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= top:
                raise SettingError(name, f"must be a whole number 0..{top} pixels, got {value!r}")
        c = self.corrupt
        if isinstance(c, bool) or not isinstance(c, int | float) or not 0 <= c <= 1:
            raise SettingError("corrupt", f"must be a share of the batch from 0 to 1, got {c!r}")

    @property
    def active(self) -> bool:
        return bool(self.translate or self.flip != "none" or self.cutout or self.corrupt)

    def to_dict(self) -> dict:
        return asdict(self)


CORRUPT_GROUPS = 4  # a batch's corrupted images are cut into this many groups, one corruption each


def corrupt_batch(x: Tensor, share: float, gen: torch.Generator) -> Tensor:
    """Replace ``share`` of the uint8 NCHW batch ``x`` by corrupted copies: the chosen images
    are cut into a few groups, each given one of CIFAR-10-C's corruptions at a random severity
    (1–5). The draws come from ``gen``: a replayed epoch gets the same images. The corruptions
    run in numpy on the CPU (:mod:`cifarlab.data.corruptions`)."""
    n = int(round(share * len(x)))
    if n == 0:
        return x
    device = gen.device
    chosen = torch.randperm(len(x), generator=gen, device=device)[:n].to(x.device)
    draws = len(CORRUPTIONS) * 5
    picks = torch.randint(0, draws, (CORRUPT_GROUPS,), generator=gen, device=device).tolist()
    seeds = torch.randint(0, 2**31 - 1, (CORRUPT_GROUPS,), generator=gen, device=device).tolist()
    out = x.clone()
    nhwc = x.index_select(0, chosen).permute(0, 2, 3, 1).cpu().numpy()
    parts = np.array_split(np.arange(n), CORRUPT_GROUPS)
    done = np.empty_like(nhwc)
    for part, pick, seed in zip(parts, picks, seeds, strict=True):
        if len(part):
            done[part] = corrupt(nhwc[part], CORRUPTIONS[pick // 5], pick % 5 + 1, seed)
    out[chosen] = torch.from_numpy(done).permute(0, 3, 1, 2).to(x.device)
    return out


def _reflect(i: Tensor, size: int) -> Tensor:
    """Fold positions in [-(size-1), 2(size-1)] back into [0, size) by mirroring at the edges
    without repeating the edge pixel (numpy/torch "reflect"): -1 → 1, size → size-2."""
    i = i.abs()
    return torch.where(i >= size, 2 * (size - 1) - i, i)


def reflect_pad(x: Tensor, pad: int) -> Tensor:
    """Reflect-pad the last two dimensions by ``pad`` (works for uint8, unlike F.pad)."""
    if pad == 0:
        return x
    h, w = x.shape[-2:]
    x = x.index_select(-2, _reflect(torch.arange(-pad, h + pad, device=x.device), h))
    return x.index_select(-1, _reflect(torch.arange(-pad, w + pad, device=x.device), w))


def translate(x: Tensor, dy: Tensor, dx: Tensor, flip_mask: Tensor | None = None) -> Tensor:
    """Shift image n of an NCHW batch by (dy[n], dx[n]) pixels, the border filled by
    reflection, then mirror it left-right where ``flip_mask`` is True.

    Output pixel (i, j) of image n is input pixel (reflect(i + dy[n]), reflect(j + dx[n])), the
    same as reflect-padding by |shift| and cropping; shifts must be smaller than the image.
    Both steps are folded into one source index per output pixel, so the whole batch is moved
    by a single ``gather``: about 10x faster on CPU than padding then cropping (a uint8
    ``index_select`` on the last dimension is slow).
    """
    n, c, h, w = x.shape
    rows = _reflect(torch.arange(h, device=x.device) + dy.to(x.device).view(n, 1), h)
    cols = _reflect(torch.arange(w, device=x.device) + dx.to(x.device).view(n, 1), w)
    if flip_mask is not None:
        # mirroring the output = reading the columns in reverse order
        cols = torch.where(flip_mask.to(x.device).view(n, 1), cols.flip(1), cols)
    index = (rows.view(n, h, 1) * w + cols.view(n, 1, w)).view(n, 1, h * w)
    return x.reshape(n, c, h * w).gather(2, index.expand(n, c, h * w)).view(n, c, h, w)


def random_shifts(n: int, pad: int, gen: torch.Generator) -> tuple[Tensor, Tensor]:
    """(dy, dx) for ``n`` images, each uniform over [-pad, pad], on the generator's device."""
    dy = torch.randint(-pad, pad + 1, (n,), generator=gen, device=gen.device)
    dx = torch.randint(-pad, pad + 1, (n,), generator=gen, device=gen.device)
    return dy, dx


def random_translate(x: Tensor, pad: int, gen: torch.Generator) -> Tensor:
    """Shift each image of an NCHW batch by a random (dy, dx) in [-pad, pad] with reflect
    padding: the same as reflect-padding by ``pad`` and cropping a random HxW window."""
    if pad == 0:
        return x
    if pad >= min(x.shape[-2:]):
        raise CifarlabError(f"pad {pad} must be smaller than the image {tuple(x.shape[-2:])}")
    return translate(x, *random_shifts(len(x), pad, gen))


def flip(x: Tensor, mask: Tensor) -> Tensor:
    """Mirror (left-right) the images of an NCHW batch where ``mask`` is True."""
    return torch.where(mask.to(x.device).view(-1, 1, 1, 1), x.flip(-1), x)


flip_where = flip  # earlier name, kept for callers that use it


def random_flip_mask(n: int, gen: torch.Generator) -> Tensor:
    """True for each of ``n`` images with probability 1/2, on the generator's device."""
    return torch.rand(n, generator=gen, device=gen.device) < 0.5


def random_flip(x: Tensor, gen: torch.Generator) -> Tensor:
    """Mirror each image with probability 1/2."""
    return flip(x, random_flip_mask(len(x), gen))


def alternating_flip_mask(flip_bits: Tensor, epoch: int) -> Tensor:
    """Alternating flips: image i is mirrored iff its fixed random bit XOR (epoch is odd), so
    every image is seen both ways in any two consecutive epochs."""
    return flip_bits ^ bool(epoch % 2)


def cutout(x: Tensor, size: int, gen: torch.Generator) -> Tensor:
    """Zero a ``size``×``size`` square (clipped at the borders) at a random centre of each
    image. Meant for normalized (finite) input, where 0 is the mean colour."""
    if size == 0:
        return x
    n, _, h, w = x.shape
    cy = torch.randint(0, h, (n, 1), generator=gen, device=gen.device).to(x.device)
    cx = torch.randint(0, w, (n, 1), generator=gen, device=gen.device).to(x.device)
    top, left = cy - size // 2, cx - size // 2
    ys, xs = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    in_rows = (ys >= top) & (ys < top + size)  # (n, h)
    in_cols = (xs >= left) & (xs < left + size)  # (n, w)
    # Multiplying by a 0/1 mask is about 2x faster than masked_fill on CPU.
    keep = ~(in_rows.view(n, 1, h, 1) & in_cols.view(n, 1, 1, w))
    return x * keep.to(x.dtype)


def normalize(
    x: Tensor,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    *,
    dtype: torch.dtype = torch.float32,
    channels_last: bool = False,
) -> Tensor:
    """uint8 NCHW → float: divide by 255, then (if given) subtract ``mean`` and divide by
    ``std`` per channel (both on the 0–1 scale). The arithmetic is done in float32 (float64
    if asked) and only then cast, so bfloat16/float16 output is correctly rounded."""
    if channels_last:
        # reorder the uint8 bytes (4x cheaper than the floats); the ops below keep the layout
        x = x.contiguous(memory_format=torch.channels_last)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    out = x.to(work)
    if mean is None or std is None:
        out.mul_(1 / 255)
    else:
        s = torch.tensor(std, dtype=work, device=x.device).view(1, -1, 1, 1)
        m = torch.tensor(mean, dtype=work, device=x.device).view(1, -1, 1, 1)
        # (x/255 - m) / s == x * (1/(255 s)) - m/s; two in-place passes beat one addcmul,
        # whose broadcasting kernel is several times slower on CPU.
        out.mul_(1 / (255 * s)).sub_(m / s)
    return out.to(dtype)
