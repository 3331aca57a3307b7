"""Locating, caching, splitting; and the full CIFAR-10 copy in ../shared/data."""

from __future__ import annotations

import os
import time
import warnings
from pathlib import Path

import numpy as np
import pytest

from cifarlab import CifarlabError, load_dataset
from cifarlab.data.dataset import stratified_holdout
from fakedata import write_cifar10_python, write_cifar100_python


def _load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(*args, **kwargs)


def test_root_from_env_and_argument(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10_python(tmp_path / "a")
    monkeypatch.setenv("CIFARLAB_DATA", str(tmp_path / "a"))
    assert _load("cifar10", val_size=0).meta["root_from"] == "CIFARLAB_DATA"
    assert _load("cifar10", tmp_path / "a", val_size=0).meta["root_from"] == "--root"


def test_cache_is_used_and_notices_changes(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path, seed=1)
    first = _load("cifar10", tmp_path, val_size=0)
    assert first.meta["from_cache"] is False
    second = _load("cifar10", tmp_path, val_size=0)
    assert second.meta["from_cache"] is True
    assert np.array_equal(first.train.images.numpy(), second.train.images.numpy())
    # rewrite the source with other pixels: the cache must notice
    time.sleep(0.01)
    expected = write_cifar10_python(tmp_path, seed=7)
    third = _load("cifar10", tmp_path, val_size=0)
    assert third.meta["from_cache"] is False
    np.testing.assert_array_equal(third.train.images.numpy(), expected["train_x"])


def test_stratified_holdout_is_balanced_and_deterministic() -> None:
    labels = np.repeat(np.arange(10), 50)
    a = stratified_holdout(labels, 100, seed=0)
    assert len(a) == 100 and len(set(a.tolist())) == 100
    assert np.bincount(labels[a]).tolist() == [10] * 10
    np.testing.assert_array_equal(a, stratified_holdout(labels, 100, seed=0))
    assert not np.array_equal(a, stratified_holdout(labels, 100, seed=1))
    odd = stratified_holdout(labels, 15)
    assert len(odd) == 15 and np.bincount(labels[odd], minlength=10).max() <= 2


def test_splits_are_disjoint_and_complete(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    ds = _load("cifar10", tmp_path, val_size=30)
    assert len(ds.train) == 70 and len(ds.val) == 30 and len(ds.test) == 20
    both = set(ds.train.indices.tolist()) | set(ds.val.indices.tolist())
    assert len(both) == 100
    assert ds.val.labels.bincount(minlength=10).tolist() == [3] * 10
    with pytest.raises(CifarlabError, match="--val-size must be between 0 and 99"):
        _load("cifar10", tmp_path, val_size=100)


def test_val_split_same_for_fine_and_coarse(tmp_path: Path) -> None:
    write_cifar100_python(tmp_path)
    fine = _load("cifar100", tmp_path, val_size=100)
    coarse = _load("cifar100", tmp_path, val_size=100, labels="coarse")
    assert fine.val.indices.tolist() == coarse.val.indices.tolist()
    assert int(coarse.val.labels.max()) < 20


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(CifarlabError, match="unknown dataset 'cifar1000'"):
        load_dataset("cifar1000", tmp_path)
    with pytest.raises(CifarlabError, match="CIFAR-10 has no coarse labels"):
        load_dataset("cifar10", tmp_path, labels="coarse")


def test_shared_cifar10_copy(cifar10_root: Path) -> None:
    with pytest.warns(UserWarning, match="md5 sums differ"):
        ds = load_dataset("cifar10", cifar10_root, val_size=0)
    assert ds.train.images.shape == (50000, 32, 32, 3)
    assert ds.train.labels.bincount().tolist() == [5000] * 10
    assert ds.test.labels.bincount().tolist() == [1000] * 10
    assert ds.train.labels[:5].tolist() == [6, 9, 9, 4, 1]
    assert ds.class_names[:3] == ["airplane", "automobile", "bird"]
    held = _load("cifar10", cifar10_root)  # default: 5,000 held out
    assert len(held.train) == 45000 and held.val.labels.bincount().tolist() == [500] * 10
    assert os.environ["CIFARLAB_CACHE"]  # the session cache kept the parse


_RACE = """
import sys, warnings
import numpy as np
from pathlib import Path
from cifarlab.data import cache
entry = Path(sys.argv[1])
arrays = {"train_x": np.full((8, 32, 32, 3), 7, np.uint8), "train_y": np.arange(8)}
with warnings.catch_warnings():
    warnings.simplefilter("error")
    for _ in range(150):
        cache.save(entry, arrays, {"fingerprint": "f"})
        got = cache.load(entry, "f")
        assert got is not None and int(got[0]["train_x"][3, 1, 1, 2]) == 7
"""


def test_processes_writing_one_cache_entry_at_once_do_not_trip(tmp_path: Path) -> None:
    """torchrun's ranks (or two shells) may parse the same data at the same moment: every
    write must succeed quietly and leave a whole entry, never a half-removed one."""
    import subprocess
    import sys

    entry = tmp_path / "parsed" / "cifar10-python-x"
    procs = [
        subprocess.Popen([sys.executable, "-c", _RACE, str(entry)], stderr=subprocess.PIPE)
        for _ in range(4)
    ]
    errors = [p.communicate(timeout=120)[1].decode() for p in procs]
    assert [p.returncode for p in procs] == [0, 0, 0, 0], "\n".join(errors)
    assert sorted(x.name for x in entry.parent.iterdir()) == [entry.name]  # no leftovers


def test_a_damaged_cache_entry_is_rewritten(tmp_path: Path) -> None:
    from cifarlab.data import cache

    entry = tmp_path / "parsed" / "e"
    arrays = {"train_x": np.full((8, 32, 32, 3), 7, np.uint8), "train_y": np.arange(8)}
    cache.save(entry, arrays, {"fingerprint": "f"})
    data = (entry / "train_x.npy").read_bytes()
    (entry / "train_x.npy").write_bytes(data[: len(data) // 2])  # same meta, truncated array
    assert cache.load(entry, "f") is None
    cache.save(entry, arrays, {"fingerprint": "f"})
    got = cache.load(entry, "f")
    assert got is not None and int(got[0]["train_x"][7, 31, 31, 2]) == 7
    cache.save(entry, {**arrays, "train_y": np.arange(8) + 1}, {"fingerprint": "g"})  # stale
    assert cache.load(entry, "f") is None and cache.load(entry, "g") is not None
    assert sorted(p.name for p in entry.parent.iterdir()) == ["e"]
