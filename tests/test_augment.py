"""Augmentation ops, checked against brute force on small real tensors."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from cifarlab.data.augment import (
    Augment,
    alternating_flip_mask,
    cutout,
    normalize,
    random_flip,
    random_translate,
    reflect_pad,
)
from cifarlab.errors import CifarlabError


def _batch(n: int = 16, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 256, (n, 3, 32, 32), generator=g, dtype=torch.uint8)


def test_reflect_pad_matches_torch_on_float() -> None:
    x = _batch(4)
    expected = F.pad(x.float(), (3, 3, 3, 3), mode="reflect")
    assert torch.equal(reflect_pad(x, 3).float(), expected)


def test_translate_zero_is_identity() -> None:
    x = _batch()
    assert torch.equal(random_translate(x, 0, torch.Generator().manual_seed(0)), x)


def test_translate_is_a_crop_of_the_reflect_padded_image() -> None:
    x, pad = _batch(32), 4
    out = random_translate(x, pad, torch.Generator().manual_seed(1))
    padded = reflect_pad(x, pad)
    offsets = set()
    for i in range(len(x)):
        hits = [(dy, dx) for dy in range(2 * pad + 1) for dx in range(2 * pad + 1)
                if torch.equal(out[i], padded[i, :, dy : dy + 32, dx : dx + 32])]  # fmt: skip
        assert hits, f"image {i} is not a crop of its padded self"
        offsets.add(hits[0])
    assert len(offsets) > 10  # the offsets really vary
    again = random_translate(x, pad, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)  # same generator seed, same result


def test_random_flip_mirrors_about_half() -> None:
    x = _batch(200)
    out = random_flip(x, torch.Generator().manual_seed(0))
    flipped = [torch.equal(out[i], x[i].flip(-1)) for i in range(len(x))]
    kept = [torch.equal(out[i], x[i]) for i in range(len(x))]
    assert all(f or k for f, k in zip(flipped, kept, strict=True))
    assert 60 < sum(flipped) < 140


def test_alternating_flip_complements_across_epochs() -> None:
    bits = torch.rand(100, generator=torch.Generator().manual_seed(0)) < 0.5
    e0, e1, e2 = (alternating_flip_mask(bits, e) for e in range(3))
    assert torch.equal(e0, ~e1) and torch.equal(e0, e2)
    assert 20 < int(e0.sum()) < 80


def test_cutout_zeros_one_clipped_square() -> None:
    x = torch.ones(64, 3, 32, 32)
    out = cutout(x, 8, torch.Generator().manual_seed(0))
    for img in out:
        zero = img[0] == 0
        assert torch.equal(zero, img[1] == 0) and torch.equal(zero, img[2] == 0)
        rows, cols = zero.any(1).nonzero().squeeze(1), zero.any(0).nonzero().squeeze(1)
        assert 1 <= len(rows) <= 8 and 1 <= len(cols) <= 8
        # a full rectangle: every pixel of its bounding box is zero
        assert int(zero.sum()) == len(rows) * len(cols)
        assert rows.max() - rows.min() + 1 == len(rows)
    assert cutout(x, 0, torch.Generator()).equal(x)


def test_normalize_values() -> None:
    x = torch.tensor([0, 51, 255], dtype=torch.uint8).view(1, 3, 1, 1).expand(2, 3, 2, 2)
    assert torch.allclose(normalize(x)[0, :, 0, 0], torch.tensor([0.0, 0.2, 1.0]))
    mean, std = (0.5, 0.1, 0.2), (0.25, 0.5, 0.4)
    got = normalize(x, mean, std)[0, :, 0, 0]
    want = (torch.tensor([0.0, 0.2, 1.0]) - torch.tensor(mean)) / torch.tensor(std)
    assert torch.allclose(got, want, atol=1e-6)
    assert normalize(x, channels_last=True).is_contiguous(memory_format=torch.channels_last)
    assert normalize(x, dtype=torch.bfloat16).dtype == torch.bfloat16


def test_augment_config_validation() -> None:
    assert not Augment().active and Augment(flip="random").active
    with pytest.raises(CifarlabError, match="flip must be one of"):
        Augment(flip="sometimes")


def test_corrupt_batch_replaces_the_share_asked_and_replays() -> None:
    """Training for robustness: a share of the batch gets a CIFAR-10-C corruption; the same
    generator state gives the same batch (a replayed epoch), the other images are untouched."""
    from cifarlab.data.augment import corrupt_batch

    g = torch.Generator().manual_seed(0)
    # smooth images with edges: every corruption changes them
    yy, xx = torch.meshgrid(torch.arange(32), torch.arange(32), indexing="ij")
    base = ((xx * 6 + yy * 2) % 200 + 20).to(torch.uint8)
    x = torch.stack([torch.stack([base, base.flip(0), base.t()]) for _ in range(40)])
    x = (x + torch.arange(40).view(40, 1, 1, 1)).to(torch.uint8)
    out = corrupt_batch(x, 0.5, torch.Generator().manual_seed(1))
    assert out.shape == x.shape and out.dtype == torch.uint8
    changed = (out != x).flatten(1).any(1)
    assert 15 <= int(changed.sum()) <= 20  # 20 chosen; a corruption may leave one as it was
    again = corrupt_batch(x, 0.5, torch.Generator().manual_seed(1))
    assert torch.equal(out, again)
    assert torch.equal(corrupt_batch(x, 0.0, g), x)
    with pytest.raises(CifarlabError, match="corrupt"):
        Augment(corrupt=1.5)
