"""Locating, caching, splitting; and the full CIFAR-10 copy in ../shared/data."""

from __future__ import annotations

import io
import os
import tarfile
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab import CifarlabError, DataError, load_dataset
from cifarlab.data.dataset import stratified_holdout
from fakedata import make_tar_gz, write_cifar10_binary, write_cifar10_python, write_cifar100_python
from hostile import no_hang


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
    with pytest.raises(CifarlabError, match="val_size must be between 0 and 99"):
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


@pytest.mark.slow
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


# --------------------------------------------------------------------------- Split as a Dataset


def test_split_is_a_torch_dataset(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import Dataset

    expected = write_cifar10_python(tmp_path)
    ds = _load("cifar10", tmp_path, val_size=30)
    train = ds.train
    assert isinstance(train, Dataset) and len(train) == 70 == len(train.labels)
    image, label = train[0]
    assert isinstance(image, torch.Tensor) and image.dtype == torch.uint8
    assert image.shape == (3, 32, 32) and image.is_contiguous()
    assert type(label) is int and label == int(train.labels[0])
    # CHW of the NHWC tensor, which is the file's image at train.indices[0]
    assert torch.equal(image, train.images[0].permute(2, 0, 1))
    original = expected["train_x"][int(train.indices[0])]
    np.testing.assert_array_equal(image.numpy().transpose(1, 2, 0), original)
    # negative, numpy and tensor indices; out of range; slices are not items
    assert torch.equal(train[-1][0], train[69][0]) and train[-1][1] == train[69][1]
    assert train[np.int64(5)][1] == train[torch.tensor(5)][1] == int(train.labels[5])
    with pytest.raises(IndexError, match="out of range for the train split of 70"):
        train[70]
    with pytest.raises(IndexError):
        train[-71]
    with pytest.raises(TypeError):
        train[0:2]
    # iterating goes through __getitem__ and stops at the end
    assert [y for _, y in ds.test] == ds.test.labels.tolist()
    # the fast path is untouched: images and labels are the same tensors as before
    assert train.images.shape == (70, 32, 32, 3) and train.images.dtype == torch.uint8


def test_split_transforms(tmp_path: Path) -> None:
    import torch

    from cifarlab.data.dataset import Split

    write_cifar10_python(tmp_path)
    ds = _load("cifar10", tmp_path, val_size=0)
    test = ds.test
    raw, label = test[3]
    test.transform = lambda x: x.float() / 255
    test.target_transform = lambda y: ds.class_names[y]
    image, name = test[3]
    assert image.dtype == torch.float32 and torch.allclose(image * 255, raw.float())
    assert name == ds.class_names[label]
    assert test.images.dtype == torch.uint8  # the tensors themselves are not transformed
    test.transform = test.target_transform = None
    assert torch.equal(test[3][0], raw) and test[3][1] == label
    # or given when the split is made
    made = Split(
        "mirrored", test.images, test.labels, test.indices,
        transform=lambda x: x.flip(-1), target_transform=lambda y: -y,
    )  # fmt: skip
    image, neg = made[3]
    assert torch.equal(image, raw.flip(-1)) and neg == -label


def test_split_in_a_torch_dataloader(tmp_path: Path) -> None:
    import torch
    from torch.utils.data import DataLoader, Subset

    write_cifar10_python(tmp_path)
    ds = _load("cifar10", tmp_path, val_size=30)
    # in order: the batches are the split's tensors, NHWC -> NCHW
    x, y = next(iter(DataLoader(ds.train, batch_size=16)))
    assert x.dtype == torch.uint8 and x.shape == (16, 3, 32, 32)
    assert y.dtype == torch.int64 and y.tolist() == ds.train.labels[:16].tolist()
    assert torch.equal(x, ds.train.images[:16].permute(0, 3, 1, 2))
    # shuffled, over a subset: every item once, each image with its own label
    subset = Subset(ds.train, range(40))
    by_image = {ds.train[i][0].numpy().tobytes(): ds.train[i][1] for i in range(40)}
    loader = DataLoader(subset, batch_size=16, shuffle=True,
                        generator=torch.Generator().manual_seed(0))  # fmt: skip
    batches = list(loader)
    assert [len(b[1]) for b in batches] == [16, 16, 8]
    seen = [
        (img.numpy().tobytes(), int(lab))
        for xb, yb in batches
        for img, lab in zip(xb, yb, strict=True)
    ]
    assert all(by_image[k] == lab for k, lab in seen) and len({k for k, _ in seen}) == 40
    assert [lab for _, lab in seen] != ds.train.labels[:40].tolist()  # shuffled
    # with a transform: float batches
    ds.val.transform = lambda t: t.float().div(255)
    xf, yf = next(iter(DataLoader(ds.val, batch_size=64)))
    assert xf.dtype == torch.float32 and xf.shape == (30, 3, 32, 32) and float(xf.max()) <= 1


# --------------------------------------------------------------------------- hostile sources


def load_error(*args, **kwargs) -> str:
    with no_hang(), pytest.raises(DataError) as info:
        _load(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


def cache_leftovers(cache: Path) -> list[str]:
    """What the archive reads left in the cache's extracted/ folder."""
    extracted = cache / "extracted"
    return sorted(p.name for p in extracted.iterdir()) if extracted.exists() else []


def test_an_archive_without_the_dataset_leaves_nothing_in_the_cache(
    tmp_path: Path, isolated_cache: Path
) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("junk/big.bin")
        info.size = 500_000
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    msg = load_error("cifar10", tmp_path)
    assert str(archive) in msg and "does not hold CIFAR-10" in msg
    assert cache_leftovers(isolated_cache) == []


def test_an_archive_with_a_damaged_file_leaves_nothing_in_the_cache(
    tmp_path: Path, isolated_cache: Path
) -> None:
    folder = write_cifar10_python(tmp_path / "src")["folder"]
    batch = folder / "data_batch_4"
    batch.write_bytes(batch.read_bytes()[:1000])
    archive = make_tar_gz(folder, tmp_path / "data" / "cifar-10-python.tar.gz")
    msg = load_error("cifar10", archive.parent)
    assert "data_batch_4: truncated or corrupt pickle" in msg
    assert f"in the archive {archive}; its extracted copy was removed" in msg
    assert cache_leftovers(isolated_cache) == []


def test_an_archive_over_the_expansion_cap_leaves_nothing(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    folder = write_cifar10_python(tmp_path / "src", per_batch=200)["folder"]  # 3.7 MB
    archive = make_tar_gz(folder, tmp_path / "data" / "cifar-10-python.tar.gz")
    monkeypatch.setenv("CIFARLAB_MAX_EXTRACT_MB", "2")
    msg = load_error("cifar10", archive.parent)
    assert str(archive) in msg and "expands to more than 2.0 MB" in msg
    assert cache_leftovers(isolated_cache) == []


def test_an_archive_that_is_a_fifo_or_a_sparse_file(tmp_path: Path) -> None:
    archive = tmp_path / "cifar-10-python.tar.gz"
    os.mkfifo(archive)
    msg = load_error("cifar10", tmp_path)
    assert str(archive) in msg and "named pipe (FIFO)" in msg
    msg = load_error("cifar10", archive)  # named as the source itself
    assert str(archive) in msg and "named pipe (FIFO)" in msg
    archive.unlink()
    with open(archive, "wb") as f:
        f.truncate(300 << 30)
    t0 = time.monotonic()
    msg = load_error("cifar10", tmp_path)
    assert time.monotonic() - t0 < 2  # neither hashed nor read
    assert str(archive) in msg and "over the limit" in msg and "CIFARLAB_MAX_DATA_FILE_MB" in msg


def test_a_source_that_is_neither_folder_nor_archive(tmp_path: Path) -> None:
    fifo = tmp_path / "data"
    os.mkfifo(fifo)
    msg = load_error("cifar10", fifo)
    assert str(fifo) in msg and "named pipe (FIFO)" in msg
    loop = tmp_path / "loop.tar.gz"
    loop.symlink_to(loop)  # a link to itself
    msg = load_error("cifar10", loop)
    assert str(loop) in msg


def test_the_cached_path_opens_no_data_file(
    tmp_path: Path, isolated_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The checks above cost nothing on a cache hit: the source files are only stat'ed and the
    arrays come memory-mapped from the cache."""
    from cifarlab import files
    from cifarlab.data import download, extract, formats

    real = files.open_input
    opened = []

    def watched(path, *args, **kwargs):  # noqa: ANN001, ANN202
        opened.append(Path(path))
        return real(path, *args, **kwargs)

    for module in (files, formats, download, extract):  # every way a data file is opened
        monkeypatch.setattr(module, "open_input", watched)
    for writer, root in ((write_cifar10_python, tmp_path / "py"), (write_cifar10_binary,
                                                                   tmp_path / "bin")):  # fmt: skip
        writer(root)
        _load("cifar10", root, val_size=0)
        assert any(isolated_cache not in p.parents for p in opened)  # parsed: files were read
        opened.clear()
        ds = _load("cifar10", root, val_size=0)
        assert ds.meta["from_cache"] is True
        assert [p for p in opened if isolated_cache not in p.parents] == []
        assert isinstance(ds.train.images, torch.Tensor)


def test_a_fifo_in_the_cache_is_not_opened(tmp_path: Path, isolated_cache: Path) -> None:
    write_cifar10_python(tmp_path)
    _load("cifar10", tmp_path, val_size=0)
    (entry,) = (isolated_cache / "parsed").iterdir()
    (entry / "train_x.npy").unlink()
    os.mkfifo(entry / "train_x.npy")
    with no_hang():
        ds = _load("cifar10", tmp_path, val_size=0)  # a damaged entry: parsed again
    assert ds.meta["from_cache"] is False and len(ds.train) == 100
