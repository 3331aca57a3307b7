"""Each reader, on small files written in each official layout."""

from __future__ import annotations

import codecs
import contextlib
import os
import pickle
import re
import resource
import shutil
import struct
import tempfile
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
from hostile import no_hang, png_claiming


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


# --------------------------------------------------------------------------- hostile files


def load_error(*args, **kwargs) -> str:
    """The one-line message of the DataError that loading raises (within 5 s)."""
    with no_hang(), pytest.raises(DataError) as info:
        _quiet_load(*args, **kwargs)
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


_LAYOUT_FILES = [
    (write_cifar10_python, "cifar-10-batches-py/data_batch_1"),
    (write_cifar10_python, "cifar-10-batches-py/test_batch"),
    (write_cifar10_python, "cifar-10-batches-py/batches.meta"),
    (write_cifar10_binary, "cifar-10-batches-bin/data_batch_3.bin"),
    (write_cifar10_binary, "cifar-10-batches-bin/batches.meta.txt"),
    (write_image_folder, "train/cat/00010.png"),
    (write_image_folder, "test/ship/00025.png"),
]
_IDS = [name.split("/", 1)[1] for _, name in _LAYOUT_FILES]


@pytest.mark.parametrize("writer,name", _LAYOUT_FILES, ids=_IDS)
def test_a_fifo_where_a_data_file_should_be(tmp_path: Path, writer, name: str) -> None:
    """A named pipe would block open() forever: it is refused at once, naming it."""
    writer(tmp_path)
    path = tmp_path / name
    assert path.is_file()
    path.unlink()
    os.mkfifo(path)
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert str(path) in msg and "named pipe (FIFO)" in msg


@pytest.mark.parametrize("writer,name", _LAYOUT_FILES[:5], ids=_IDS[:5])
def test_a_huge_sparse_data_file_is_refused_by_its_size(tmp_path: Path, writer, name: str) -> None:
    writer(tmp_path)
    path = tmp_path / name
    with open(path, "r+b") as f:
        f.truncate(300 << 30)  # 300 GB, no block on disk
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert str(path) in msg and "over the limit of 512.0 MB" in msg
    assert "CIFARLAB_MAX_DATA_FILE_MB" in msg


def test_a_broken_link_where_a_data_file_should_be(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    path.unlink()
    path.symlink_to(tmp_path / "gone")
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert str(path) in msg and "no such file" in msg


class _Reduce:
    """Pickles as whatever ``__reduce__`` tuple it is given: crafted numpy payloads."""

    def __init__(self, *reduce: object) -> None:
        self.reduce = reduce

    def __reduce__(self) -> tuple:
        return self.reduce


def _numpy(module: str, name: str) -> object:
    import importlib

    return getattr(importlib.import_module(module), name)


_RECONSTRUCT = _numpy("numpy._core.multiarray", "_reconstruct")
_SCALAR = _numpy("numpy._core.multiarray", "scalar")
_FROMBUFFER = _numpy("numpy._core.numeric", "_frombuffer")
_HUGE = (1_000_000, 1_000_000)  # a terabyte of uint8


def _array_state(shape: tuple, dtype: object, data: object) -> _Reduce:
    return _Reduce(_RECONSTRUCT, (np.ndarray, (0,), b"b"), (1, shape, dtype, False, data))


_ROW = [0] * 3072
_ZEROS = np.zeros((20, 3072), np.uint8)
_MB_TEXT = "x" * (1 << 20)
_SHARED = [np.zeros(1, np.uint8)] * 100_000
_BOMBS = {
    # the array's header asks for a terabyte, its data is empty
    "reconstruct-huge-shape": (
        {"data": _array_state(_HUGE, np.dtype("u1"), b""), "labels": [0] * 20},
        r"corrupt pickle: an array of shape \(1000000, 1000000\) needs 1,000,000,000,000 bytes",
    ),
    "object-dtype": (
        {"data": _array_state((10**9,), np.dtype("O"), []), "labels": [0] * 20},
        r"refused to unpickle numpy.dtype\('O8'\)",
    ),
    "sub-array-dtype": (
        {"data": _array_state((4,), np.dtype(("u1", (10**4, 10**5))), b""), "labels": [0] * 20},
        r"refused to unpickle numpy.dtype\('V1000000000'\)",
    ),
    "structured-dtype": (
        {"data": _array_state((4,), np.dtype([("a", "u1")]), b"xxxx"), "labels": [0] * 20},
        r"refused to unpickle numpy.dtype\('V1'\)",
    ),
    "ndarray-called-directly": (
        {"data": _Reduce(np.ndarray, (_HUGE,)), "labels": [0] * 20},
        r"refused to unpickle numpy.ndarray called directly",
    ),
    "frombuffer-huge-shape": (
        {"data": _Reduce(_FROMBUFFER, (b"", np.dtype("u1"), _HUGE, "C")), "labels": [0] * 20},
        r"corrupt pickle: an array of shape \(1000000, 1000000\) needs",
    ),
    "scalar-of-a-huge-dtype": (
        {"data": _ZEROS, "labels": [_Reduce(_SCALAR, (np.dtype("S9999999"), b""))] * 20},
        r"refused to unpickle numpy.dtype\('S9999999'\)",
    ),
    "scalar-without-its-bytes": (
        {"data": _ZEROS, "labels": [_Reduce(_SCALAR, (np.dtype("i8"), b""))] * 20},
        r"corrupt pickle: a numpy scalar of int64 without its 8 bytes",
    ),
    "codecs-to-another-encoding": (
        {"data": _Reduce(codecs.encode, ("x" * 100, "utf-32")), "labels": [0] * 20},
        r"refused to unpickle _codecs.encode to 'utf-32'",
    ),
    # one row, referenced 200,000 times: a 600 KB file that np.asarray would make 4.9 GB of
    "rows-repeated-by-reference": (
        {"data": [_ROW] * 200_000, "labels": [0] * 200_000},
        r"'data' lists 200,000 images, 614,400,000 values: more than the file can hold",
    ),
    "rows-of-rows": (
        {"data": [[_ROW] * 3072] * 20, "labels": [0] * 20},
        r"'data' holds list values, expected integers 0\.\.255",
    ),
    # one 1 MB string encoded 1,000 times: a 1 MB file asking for 1 GB of bytes
    "encode-again-and-again": (
        {"data": [_Reduce(codecs.encode, (_MB_TEXT, "latin1")) for _ in range(1000)],
         "labels": [0] * 20},
        r"corrupt pickle: its strings, encoded, add up to more than the file holds",
    ),
    # one list of 100,000 arrays under 100,000 keys: each gone through once, not 100,000 times
    "one-list-under-many-keys": (
        {"data": _SHARED, **{f"k{i}": _SHARED for i in range(100_000)}},
        r"'data' lists 100,000 images, 307,200,000 values: more than the file can hold",
    ),
    "labels-of-lists": (
        {"data": np.zeros((20, 3072), np.uint8), "labels": [[[0] * 1000] * 1000] * 20},
        r"'labels' must be a list of class numbers \(list of list\)",
    ),
}  # fmt: skip


@pytest.mark.parametrize("name", list(_BOMBS))
def test_a_small_pickle_cannot_ask_for_a_huge_array(tmp_path: Path, name: str) -> None:
    """Each payload is refused before numpy allocates: no MemoryError, no time spent, the
    process's peak memory unchanged (give or take)."""
    batch, message = _BOMBS[name]
    write_cifar10_python(tmp_path, str_keys=True)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump(batch, f, protocol=2)
    assert path.stat().st_size < 3_000_000
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    msg = load_error("cifar10", tmp_path, val_size=0)
    grown_mb = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - peak) / 1024
    assert str(path) in msg
    assert re.search(message, msg), msg
    assert grown_mb < 300


def test_python2_pickles_are_read(tmp_path: Path) -> None:
    """The official files were written by Python 2: str keys and dtype names are bytes."""

    def s(b: bytes) -> bytes:  # SHORT_BINSTRING
        return b"U" + bytes([len(b)]) + b

    pixels = bytes(range(256)) * 24  # 2 images
    data = (
        b"\x80\x02}q\x00(" + s(b"data")
        + b"cnumpy.core.multiarray\n_reconstruct\ncnumpy\nndarray\nK\x00\x85" + s(b"b")
        + b"\x87R(K\x01K\x02M\x00\x0c\x86cnumpy\ndtype\n" + s(b"u1") + b"K\x00K\x01\x87R"
        + b"(K\x03" + s(b"|") + b"NNNJ\xff\xff\xff\xffJ\xff\xff\xff\xffK\x00tb\x89"
        + b"T" + struct.pack("<I", len(pixels)) + pixels + b"tb"
        + s(b"labels") + b"]q\x01(K\x03K\x07e" + b"u."
    )  # fmt: skip
    path = tmp_path / "batch"
    path.write_bytes(data)
    d = load_pickle(path)
    assert set(d) == {"data", "labels"} and d["labels"] == [3, 7]
    assert d["data"].dtype == np.uint8 and d["data"].shape == (2, 3072)
    assert d["data"].tobytes() == pixels


@pytest.mark.parametrize("protocol", [0, 2, 4, 5])
def test_every_pickle_protocol_is_read(tmp_path: Path, protocol: int) -> None:
    expected = write_cifar10_python(tmp_path, str_keys=True)
    folder = expected["folder"]
    for p in folder.iterdir():
        with open(p, "rb") as f:
            d = pickle.load(f)
        if "data" in d:  # arrays (big-endian labels too) and numpy scalars
            d = {"data": d["data"], "labels": np.asarray(d["labels"], ">i8")}
            if p.name == "data_batch_2":
                d["labels"] = [np.int64(v) for v in d["labels"]]
        p.write_bytes(pickle.dumps(d, protocol=protocol))
    ds = _quiet_load("cifar10", tmp_path, val_size=0)
    _check(ds, expected)


def test_a_pickle_with_odd_keys_names_them_on_one_line(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path, str_keys=True)
    path = tmp_path / "cifar-10-batches-py" / "data_batch_1"
    with open(path, "wb") as f:
        pickle.dump({1: 2, b"x\ny": 3, "z" * 500: 4, None: 5}, f)
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert str(path) in msg and "missing key 'data'" in msg and len(msg) < 600


@pytest.mark.parametrize(
    "width,height,message",
    [
        (20000, 20000, r"image header claims 400,000,000 pixels, expected 32x32"),
        (1, 3_000_000, r"image is 1x3000000, expected 32x32"),
        (64, 32, r"image is 64x32, expected 32x32"),
    ],
)
def test_an_image_claiming_another_size_is_not_decoded(
    tmp_path: Path, width: int, height: int, message: str
) -> None:
    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "dog" / "huge.png"
    bad.write_bytes(png_claiming(width, height))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Pillow's DecompressionBombWarning, if any
        msg = load_error("cifar10", tmp_path, val_size=0)
    assert re.search(message, msg) and str(bad) in msg
    assert "DecompressionBomb" not in msg and "could be decompression bomb" not in msg


@pytest.mark.parametrize(
    "exc", [IndexError, TypeError, struct.error, ValueError, MemoryError, ZeroDivisionError,
            RecursionError, OSError, SyntaxError],
)  # fmt: skip
def test_any_decoder_failure_is_an_error_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, exc: type[BaseException]
) -> None:
    """Pillow's plugins raise all sorts on fuzzed files (seen: IndexError, TypeError,
    struct.error from GIF and TIFF): whatever it is, it names the file."""
    from PIL import Image

    write_image_folder(tmp_path)
    bad = tmp_path / "train" / "frog" / "00018.png"
    Image.new("L", (32, 32)).save(bad)  # the one grey image: its decoding fails
    convert = Image.Image.convert

    def failing(self: Image.Image, *args: object, **kw: object) -> Image.Image:
        if self.mode == "L":
            raise exc("decoder blew up\non two lines")
        return convert(self, *args, **kw)

    monkeypatch.setattr(Image.Image, "convert", failing)
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert f"{bad}: not a readable image ({exc.__name__}: decoder blew up on two lines)" in msg


@pytest.mark.parametrize(
    "content",
    [
        b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 32 32\nshowpage\n",  # would run Ghostscript
        b"P6 32 32 255\n" + bytes(3072),  # a PPM: a format no image folder suffix names
        b"\x89PNG\r\n\x1a\n" + b"\x00" * 40,  # a PNG cut short
        b"GIF89a\x20\x00\x20\x00\xf7\x00\x00" + bytes(50),  # a GIF without its image
    ],
    ids=["eps", "ppm", "cut-png", "empty-gif"],
)
def test_files_that_are_not_images_of_the_suffix_formats(tmp_path: Path, content: bytes) -> None:
    write_image_folder(tmp_path)
    bad = tmp_path / "test" / "horse" / "x.png"
    bad.write_bytes(content)
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert f"{bad}: not a readable image" in msg


def test_an_image_file_over_the_size_limit(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path)
    monkeypatch.setenv("CIFARLAB_MAX_IMAGE_FILE_MB", "0.001")  # about 1 KB: a 32x32 PNG is 3 KB
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert "over the limit of 1,048 bytes" in msg and "CIFARLAB_MAX_IMAGE_FILE_MB" in msg


def test_image_folder_listing_is_bounded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_image_folder(tmp_path)
    monkeypatch.setenv("CIFARLAB_MAX_FOLDER_FILES", "25")
    msg = load_error("cifar10", tmp_path, val_size=0)
    assert "more than 25 files" in msg and "CIFARLAB_MAX_FOLDER_FILES" in msg


def test_an_unreadable_class_folder_is_an_error(tmp_path: Path) -> None:
    """Never skipped silently. Root reads any folder, so as root the read runs in a child
    process that has dropped to an ordinary user."""
    from cifarlab.data.formats import read_image_folder
    from cifarlab.data.sources import CIFAR10

    root = Path(tempfile.mkdtemp(prefix="cifarlab-perm-"))  # in /tmp: reachable by anyone
    try:
        root.chmod(0o755)
        write_image_folder(root)
        for p in root.rglob("*"):
            p.chmod(0o755 if p.is_dir() else 0o644)
        locked = root / "train" / "deer"
        locked.chmod(0)
        if os.geteuid() != 0:
            if os.access(locked, os.R_OK):
                pytest.skip("this user can read a folder with mode 000")
            with pytest.raises(DataError) as info:
                read_image_folder(root, CIFAR10)
            msg = str(info.value)
        else:
            msg = _as_nobody(lambda: read_image_folder(root, CIFAR10))
        assert f"{locked}: cannot list this folder (Permission denied)" in msg
    finally:
        (root / "train" / "deer").chmod(0o755)
        shutil.rmtree(root, ignore_errors=True)


def _as_nobody(call) -> str:  # noqa: ANN001
    """The DataError message ``call()`` raises in a forked child running as user nobody."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 1
        try:
            os.close(r)
            os.setgroups([])
            os.setgid(65534)
            os.setuid(65534)
            try:
                call()
                os.write(w, b"no error")
            except DataError as e:
                os.write(w, str(e).encode("utf-8", "replace"))
            code = 0
        except BaseException as e:  # noqa: BLE001
            with contextlib.suppress(Exception):
                os.write(w, f"child failed: {e!r}".encode())
        finally:
            os._exit(code)
    os.close(w)
    with no_hang(10):
        out = b""
        while chunk := os.read(r, 65536):
            out += chunk
        _, status = os.waitpid(pid, 0)
    os.close(r)
    if out.startswith(b"child failed: PermissionError"):
        pytest.skip("cannot drop to user nobody here")
    assert status == 0, out
    return out.decode()


def test_a_resaved_pickle_with_text_arrays_is_read(tmp_path: Path) -> None:
    """numpy string arrays (file names re-saved as an array) are plain data, not a threat."""
    path = tmp_path / "batch"
    names = np.array(["a.png", "bb.png"])
    path.write_bytes(pickle.dumps({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 2],
                                   b"filenames": names, b"raw": names.astype("S")}, 2))  # fmt: skip
    d = load_pickle(path)
    assert list(d["filenames"]) == ["a.png", "bb.png"] and list(d["raw"]) == [b"a.png", b"bb.png"]
