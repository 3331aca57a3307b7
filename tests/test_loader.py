"""BatchLoader: seeded shuffling, epochs, sharding, resume."""

from __future__ import annotations

import torch

from cifarlab.data.augment import Augment
from cifarlab.data.loader import BatchLoader


def _data(n: int = 103) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (n, 32, 32, 3), generator=g, dtype=torch.uint8)
    # encode each image's index in its first pixel so batches can be traced back
    images[:, 0, 0, 0] = torch.arange(n) % 256
    images[:, 0, 0, 1] = torch.arange(n) // 256
    return images, torch.arange(n) % 10


def _ids(x: torch.Tensor) -> list[int]:
    raw = (x[:, :2, 0, 0] * 255).round().long()
    return (raw[:, 0] + 256 * raw[:, 1]).tolist()


def _epoch(loader: BatchLoader) -> list[int]:
    return [i for x, _ in loader for i in _ids(x)]


def test_every_image_once_per_epoch_and_labels_follow() -> None:
    images, labels = _data()
    loader = BatchLoader(images, labels, 10, shuffle=True, seed=3)
    assert len(loader) == 11
    seen, batches = [], list(loader)
    for x, y in batches:
        ids = _ids(x)
        assert y.tolist() == [labels[i].item() for i in ids]
        seen += ids
    assert sorted(seen) == list(range(103)) and seen != list(range(103))
    assert x.dtype == torch.float32 and x.shape[1:] == (3, 32, 32)


def test_same_seed_same_batches_other_seed_other_order() -> None:
    images, labels = _data()
    aug = Augment(translate=2, flip="random", cutout=4)
    a = list(BatchLoader(images, labels, 16, shuffle=True, seed=1, augment=aug))
    b = list(BatchLoader(images, labels, 16, shuffle=True, seed=1, augment=aug))
    assert all(
        torch.equal(xa, xb) and torch.equal(ya, yb) for (xa, ya), (xb, yb) in zip(a, b, strict=True)
    )
    plain = BatchLoader(images, labels, 16, shuffle=True, seed=1)
    other = BatchLoader(images, labels, 16, shuffle=True, seed=2)
    assert _epoch(plain) != _epoch(other)


def test_epochs_differ_and_set_epoch_replays() -> None:
    images, labels = _data()
    loader = BatchLoader(images, labels, 16, shuffle=True, seed=0)
    e0, e1 = _epoch(loader), _epoch(loader)
    assert e0 != e1 and loader.epoch == 2
    loader.set_epoch(1)
    assert _epoch(loader) == e1


def test_drop_last() -> None:
    images, labels = _data()
    loader = BatchLoader(images, labels, 10, shuffle=True, drop_last=True)
    batches = list(loader)
    assert len(loader) == len(batches) == 10 and all(len(y) == 10 for _, y in batches)


def test_shards_are_disjoint_and_cover_the_epoch() -> None:
    images, labels = _data(100)
    shards = [_epoch(BatchLoader(images, labels, 8, shuffle=True, seed=5, rank=r, world_size=2))
              for r in range(2)]  # fmt: skip
    assert len(shards[0]) == len(shards[1]) == 50
    assert not set(shards[0]) & set(shards[1])
    assert sorted(shards[0] + shards[1]) == list(range(100))


def test_ranks_augment_differently() -> None:
    images, labels = _data(100)
    aug = Augment(translate=4)
    # shards hold different images, so compare the random draws through identical inputs
    same = torch.zeros(100, 32, 32, 3, dtype=torch.uint8)
    same[:, 10:20, 10:20] = 255
    a, b = (next(iter(BatchLoader(same, labels, 50, seed=5, augment=aug, rank=r, world_size=2)))[0]
            for r in range(2))  # fmt: skip
    assert not torch.equal(a, b)


def test_state_dict_resumes_at_the_right_epoch() -> None:
    images, labels = _data()
    loader = BatchLoader(images, labels, 16, shuffle=True, seed=9, augment=Augment(translate=2))
    list(loader), list(loader)
    state = loader.state_dict()
    expected = [x for x, _ in loader]
    fresh = BatchLoader(images, labels, 16, shuffle=True, seed=0, augment=Augment(translate=2))
    fresh.load_state_dict(state)
    got = [x for x, _ in fresh]
    assert all(torch.equal(a, b) for a, b in zip(expected, got, strict=True))


def test_normalization_uses_mean_and_std() -> None:
    images = torch.full((4, 32, 32, 3), 255, dtype=torch.uint8)
    x, _ = next(iter(BatchLoader(images, torch.zeros(4), 4, mean=(0.5,) * 3, std=(0.25,) * 3)))
    assert torch.allclose(x, torch.full_like(x, 2.0))


def test_ranks_split_each_global_batch_of_one_process() -> None:
    """Step k of W ranks sees exactly the images of step k of one process (same batch size)."""
    images, labels = _data(103)
    one = BatchLoader(images, labels, 16, shuffle=True, seed=2)
    for world in (2, 3):
        ranks = [BatchLoader(images, labels, 16, shuffle=True, seed=2, rank=r, world_size=world)
                 for r in range(world)]  # fmt: skip
        assert all(len(r) == len(one) == 7 for r in ranks)  # 6 full batches + 7 left over
        for step, single in enumerate(one.batch_indices(4)):
            parts = [r.batch_indices(4)[step] for r in ranks]
            assert torch.equal(torch.cat(parts), single)
            assert max(map(len, parts)) - min(map(len, parts)) <= 1
    # a last batch smaller than the world cannot feed every rank: all ranks drop it
    few = [BatchLoader(images, labels, 50, rank=r, world_size=4) for r in range(4)]
    assert all(len(r) == 2 and len(r.batch_indices(0)) == 2 for r in few)  # 103 = 2·50 + 3
