"""Each reader, on small files written in each official layout."""

from __future__ import annotations

import os
import pickle
import warnings
from pathlib import Path

import numpy as np
import pytest

from cifarlab import DataError, load_dataset
from cifarlab.data.formats import load_pickle
from cifarlab.data.sources import CIFAR10_CLASSES, CIFAR100_COARSE_CLASSES, CIFAR100_FINE_CLASSES
from fakedata import (
    make_tar_gz,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_cifar100_python,
    write_image_folder,
)


def _quiet_load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return load_dataset(*args, **kwargs)


def _check(ds, expected: dict, labels: str = "y") -> None:
    assert ds.train.images.dtype.is_floating_point is False
    np.testing.assert_array_equal(ds.train.images.numpy(), expected["train_x"])
    np.testing.assert_array_equal(ds.train.labels.numpy(), expected[f"train_{labels}"])
    np.testing.assert_array_equal(ds.test.images.numpy(), expected["test_x"])
    np.testing.assert_array_equal(ds.test.labels.numpy(), expected[f"test_{labels}"])


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "str-keys"])
def test_cifar10_python(tmp_path: Path, str_keys: bool) -> None:
    expected = write_cifar10_python(tmp_path, str_keys=str_keys)
    ds = _quiet_load("cifar10", tmp_path, val_size=0)
    _check(ds, expected)
    assert ds.class_names == list(CIFAR10_CLASSES)
    assert ds.meta["kind"] == "python"
    assert ds.train.images.shape == (100, 32, 32, 3)


def test_pixel_layout_is_rgb_planes_row_major(tmp_path: Path) -> None:
    expected = write_cifar10_python(tmp_path)
    raw = load_pickle(expected["folder"] / "data_batch_1")
    flat = np.asarray(raw["data"])[0]
    ds = _quiet_load("cifar10", tmp_path, val_size=0)
    img = ds.train.images[0].numpy()
    # pixel (row 2, col 5): R at 2*32+5, G at 1024 + that, B at 2048 + that
    assert tuple(img[2, 5]) == (flat[69], flat[1024 + 69], flat[2048 + 69])


@pytest.mark.parametrize("str_keys", [False, True], ids=["bytes-keys", "str-keys"])
def test_cifar100_python_fine_and_coarse(tmp_path: Path, str_keys: bool) -> None:
    expected = write_cifar100_python(tmp_path, str_keys=str_keys)
    fine = _quiet_load("cifar100", tmp_path, val_size=0)
    _check(fine, expected)
    assert fine.class_names == list(CIFAR100_FINE_CLASSES) and fine.num_classes == 100
    coarse = _quiet_load("cifar100", tmp_path, val_size=0, labels="coarse")
    _check(coarse, expected, labels="coarse")
    assert coarse.class_names == list(CIFAR100_COARSE_CLASSES) and coarse.num_classes == 20
    # Both label sets and both name lists travel with either choice, split by split.
    for ds in (fine, _quiet_load("cifar100", tmp_path, val_size=40, labels="coarse")):
        assert ds.fine_names == list(CIFAR100_FINE_CLASSES)
        assert ds.coarse_names == list(CIFAR100_COARSE_CLASSES)
        for split in (ds.train, ds.val, ds.test):
            part = "test" if split.name == "test" else "train"
            idx = split.indices.numpy()
            np.testing.assert_array_equal(split.fine_labels, expected[f"{part}_y"][idx])
            np.testing.assert_array_equal(split.coarse_labels, expected[f"{part}_coarse"][idx])
    plain = _quiet_load("cifar10", write_cifar10_python(tmp_path / "c10")["folder"].parent,
                        val_size=0)  # fmt: skip
    assert plain.fine_names is None and plain.train.coarse_labels is None


def test_cifar10_binary(tmp_path: Path) -> None:
    expected = write_cifar10_binary(tmp_path)
    ds = _quiet_load("cifar10", tmp_path, val_size=0)
    _check(ds, expected)
    assert ds.meta["kind"] == "binary" and ds.class_names == list(CIFAR10_CLASSES)
    assert ds.meta["checksum"]["status"] == "unverified"


def test_cifar100_binary(tmp_path: Path) -> None:
    expected = write_cifar100_binary(tmp_path)
    ds = _quiet_load("cifar100", tmp_path, val_size=0, labels="coarse")
    _check(ds, expected, labels="coarse")
    ds = _quiet_load("cifar100", tmp_path, val_size=0)
    _check(ds, expected)


def test_image_folder(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "imgs")
    ds = _quiet_load("cifar10", tmp_path / "imgs", val_size=0)
    _check(ds, expected)
    assert ds.meta["kind"] == "images" and ds.class_names == list(CIFAR10_CLASSES)


def test_image_folder_of_jpegs(tmp_path: Path) -> None:
    expected = write_image_folder(tmp_path / "imgs", ext=".jpg")
    ds = _quiet_load("cifar10", tmp_path / "imgs", val_size=0)
    np.testing.assert_array_equal(ds.train.labels.numpy(), expected["train_y"])
    # JPEG is lossy: the pixels are what Pillow decodes from each file, in the same order
    from PIL import Image

    files = sorted((tmp_path / "imgs" / "train" / "airplane").iterdir())
    decoded = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    assert tuple(ds.train.images.shape) == (30, 32, 32, 3)
    np.testing.assert_array_equal(ds.train.images.numpy()[:3], decoded)


def test_image_folder_rejects_wrong_size(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    from PIL import Image

    bad = tmp_path / "train" / "cat" / "big.png"
    Image.new("RGB", (64, 48)).save(bad)
    with pytest.raises(DataError, match=r"big\.png: image is 64x48, expected 32x32"):
        _quiet_load("cifar10", tmp_path, val_size=0)


@pytest.mark.parametrize("writer,name", [
    (write_cifar10_python, "cifar10"), (write_cifar10_binary, "cifar10"),
    (write_cifar100_python, "cifar100"), (write_cifar100_binary, "cifar100"),
])  # fmt: skip
def test_tar_gz_archives(tmp_path: Path, writer, name: str) -> None:
    src = tmp_path / "src"
    expected = writer(src)
    archive = make_tar_gz(expected["folder"], tmp_path / "dl" / "x.tar.gz")
    ds = _quiet_load(name, archive, val_size=0)  # the archive file itself
    _check(ds, expected)
    assert "archive" in ds.meta["kind"]
    # and a folder that holds the archive under its official name
    from cifarlab.data.sources import get_info

    fmt = "binary" if "bin" in expected["folder"].name else "python"
    official = tmp_path / "dl2" / get_info(name).archives[fmt].filename
    official.parent.mkdir()
    os.replace(archive, official)
    ds = _quiet_load(name, official.parent, val_size=0)
    _check(ds, expected)


class _Evil:
    def __reduce__(self):
        return (os.system, ("touch pwned-marker",))


def test_malicious_pickle_is_refused(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_cifar10_python(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_3"
    with open(batch, "wb") as f:
        pickle.dump({b"data": _Evil(), b"labels": []}, f, protocol=2)
    monkeypatch.chdir(tmp_path)
    with pytest.raises(DataError, match=r"data_batch_3: refused to unpickle posix\.system"):
        _quiet_load("cifar10", tmp_path, val_size=0)
    assert not (tmp_path / "pwned-marker").exists()


def test_truncated_python_batch(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_2"
    batch.write_bytes(batch.read_bytes()[: batch.stat().st_size // 2])
    with pytest.raises(DataError, match=r"data_batch_2: truncated or corrupt pickle"):
        _quiet_load("cifar10", tmp_path, val_size=0)


def test_truncated_binary_batch(tmp_path: Path) -> None:
    write_cifar10_binary(tmp_path)
    batch = tmp_path / "cifar-10-batches-bin" / "data_batch_4.bin"
    batch.write_bytes(batch.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_4\.bin: truncated or corrupt"):
        _quiet_load("cifar10", tmp_path, val_size=0)


def test_wrong_shape_and_label_range(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path, str_keys=True)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((20, 3000), np.uint8), "labels": [0] * 20}, f)
    with pytest.raises(DataError, match=r"data_batch_1: 'data' has shape \(20, 3000\)"):
        _quiet_load("cifar10", tmp_path, val_size=0)
    with open(batch, "wb") as f:
        pickle.dump({"data": np.zeros((20, 3072), np.uint8), "labels": [12] * 20}, f)
    with pytest.raises(DataError, match=r"train labels range 0\.\.12, expected 0\.\.9"):
        _quiet_load("cifar10", tmp_path, val_size=0)


@pytest.mark.parametrize(
    "relabel",
    [
        lambda y: np.asarray(y, np.float64),  # whole-number floats
        lambda y: list(np.asarray(y, np.int64)),  # a list of numpy scalars (pickled as such)
    ],
    ids=["floats", "numpy-scalars"],
)
def test_relabelled_batches_are_read(tmp_path: Path, relabel) -> None:  # noqa: ANN001
    expected = write_cifar10_python(tmp_path, str_keys=True)
    batch = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(batch, "rb") as f:
        d = pickle.load(f)
    with open(batch, "wb") as f:
        pickle.dump({**d, "labels": relabel(d["labels"])}, f)
    ds = _quiet_load("cifar10", tmp_path, val_size=0)
    np.testing.assert_array_equal(ds.train.labels.numpy(), expected["train_y"])


@pytest.mark.parametrize(
    "batch,message",
    [
        ({"data": np.zeros((20, 3072), np.uint8), "labels": ["a"] * 20},
         r"data_batch_1: 'labels' must be a list of class numbers"),
        ({"data": np.zeros((20, 3072), np.uint8), "labels": {"a": 1}},
         r"data_batch_1: 'labels' must be a list of class numbers"),
        ({"data": [["x"] * 3072] * 20, "labels": [0] * 20},
         r"data_batch_1: 'data' holds <U1 values, expected integers 0\.\.255"),
        ({"data": np.full((20, 3072), np.nan), "labels": [0] * 20},
         r"data_batch_1: 'data' holds NaN or infinite values"),
    ],
    ids=["str-labels", "dict-labels", "str-pixels", "nan-pixels"],
)  # fmt: skip
def test_malformed_batch_contents_name_the_file(tmp_path: Path, batch: dict, message: str) -> None:
    write_cifar10_python(tmp_path, str_keys=True)
    with open(tmp_path / "cifar-10-batches-py" / "data_batch_1", "wb") as f:
        pickle.dump(batch, f)
    with pytest.raises(DataError, match=message):
        _quiet_load("cifar10", tmp_path, val_size=0)


def test_binary_names_file_that_is_not_text(tmp_path: Path) -> None:
    write_cifar10_binary(tmp_path)
    (tmp_path / "cifar-10-batches-bin" / "batches.meta.txt").write_bytes(b"\xff\xfe\x00bad\n" * 10)
    with pytest.raises(DataError, match=r"batches\.meta\.txt: not a text file of class names"):
        _quiet_load("cifar10", tmp_path, val_size=0)


def test_a_class_missing_from_a_split_warns(tmp_path: Path) -> None:
    write_image_folder(tmp_path)
    for f in (tmp_path / "test" / "cat").iterdir():
        f.unlink()
    with pytest.warns(UserWarning, match=r"test has no images of class 'cat'"):
        load_dataset("cifar10", tmp_path, val_size=0)


def test_missing_data_says_how_to_point_at_a_copy(tmp_path: Path) -> None:
    with pytest.raises(DataError, match=r"CIFAR-10 not found in .*CIFARLAB_DATA"):
        load_dataset("cifar10", tmp_path)


def test_files_with_the_official_sums_load_silently(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The comparison itself: files whose md5 sums are the listed ones count as official (the
    list is pointed at these small files' sums; the real files are not here)."""
    import hashlib

    from cifarlab.data.sources import CIFAR10

    folder = write_cifar10_python(tmp_path)["folder"]
    sums = {p.name: hashlib.md5(p.read_bytes()).hexdigest() for p in folder.iterdir()}
    assert set(sums) == set(CIFAR10.python_md5)
    for name, md5 in sums.items():
        monkeypatch.setitem(CIFAR10.python_md5, name, md5)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no checksum warning
        ds = load_dataset("cifar10", tmp_path, val_size=0)
    assert ds.meta["checksum"]["status"] == "official"


def test_differing_checksums_warn_once(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    with pytest.warns(UserWarning, match="md5 sums differ from the official CIFAR-10") as rec:
        ds = load_dataset("cifar10", tmp_path, val_size=0)
    assert len(rec) == 1
    assert ds.meta["checksum"]["status"] == "differs"
