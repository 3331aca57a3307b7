"""Dataset facts are data: every file name, pickle key, record size and label offset the
readers use comes from a DatasetInfo, so a dataset described only by one is read without code
changes."""

from __future__ import annotations

import dataclasses
import re
import warnings
from pathlib import Path

import numpy as np
import pytest

from cifarlab import DataError, load_dataset
from cifarlab.data import sources
from cifarlab.data.dataset import find_source, read_raw
from cifarlab.data.download import _looks_complete, md5sum
from cifarlab.data.sources import (
    CIFAR10,
    CIFAR100,
    IMAGE_BYTES,
    Archive,
    BinaryLayout,
    PythonLayout,
)
from fakedata import (
    make_tar_gz,
    write_cifar10_binary,
    write_cifar10_python,
    write_cifar100_binary,
    write_cifar100_python,
    write_layout,
)

SRC = Path(__file__).resolve().parent.parent / "src" / "cifarlab" / "data"

# A CIFAR-10-shaped dataset with its own names for everything: three train files, two test
# files, other pickle keys, and 3-byte binary labels with the class in the last byte.
TOY = dataclasses.replace(
    CIFAR10,
    name="toy10",
    title="Toy-10",
    train_size=60,
    test_size=20,
    archives={
        "python": Archive("toy-10-python.tar.gz", "0" * 32, "toy-10-py"),
        "binary": Archive("toy-10-binary.tar.gz", "0" * 32, "toy-10-bin"),
    },
    python_layout=PythonLayout(
        train_files=("part_a", "part_b", "part_c"),
        test_files=("held_1", "held_2"),
        meta_file="classes.pkl",
        label_key="targets",
        names_key="classes",
        data_key="pixels",
    ),
    binary_layout=BinaryLayout(
        train_files=("train_0.rec", "train_1.rec"),
        test_files=("eval.rec",),
        names_file="classes.txt",
        label_bytes=3,
        label_offset=2,
    ),
    python_md5={},
)

# A CIFAR-100-shaped one: two label sets, the fine label first in each binary record (the
# official CIFAR-100 records start with the coarse one).
TOY_COARSE = dataclasses.replace(
    CIFAR100,
    name="toy100",
    title="Toy-100",
    train_size=200,
    test_size=100,
    archives={
        "python": Archive("toy-100-python.tar.gz", "0" * 32, "toy-100-py"),
        "binary": Archive("toy-100-binary.tar.gz", "0" * 32, "toy-100-bin"),
    },
    python_layout=PythonLayout(
        train_files=("fit",),
        test_files=("score",),
        meta_file="names",
        label_key="fine",
        names_key="fine_names",
        coarse_label_key="coarse",
        coarse_names_key="coarse_names",
    ),
    binary_layout=BinaryLayout(
        train_files=("fit.dat",),
        test_files=("score.dat",),
        names_file="fine.txt",
        coarse_names_file="coarse.txt",
        label_bytes=2,
        label_offset=0,
        coarse_label_offset=1,
    ),
    python_md5={},
)


@pytest.fixture
def registered(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make the toy datasets known by name, as an entry in sources.DATASETS would."""
    for info in (TOY, TOY_COARSE):
        monkeypatch.setitem(sources.DATASETS, info.name, info)


def _load(*args, **kwargs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-formed toy set loads without a warning
        return load_dataset(*args, **kwargs)


def _check(ds, expected: dict, labels: str = "y") -> None:
    np.testing.assert_array_equal(ds.train.images.numpy(), expected["train_x"])
    np.testing.assert_array_equal(ds.train.labels.numpy(), expected[f"train_{labels}"])
    np.testing.assert_array_equal(ds.test.images.numpy(), expected["test_x"])
    np.testing.assert_array_equal(ds.test.labels.numpy(), expected[f"test_{labels}"])


# --------------------------------------------------------------------------- a third dataset


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_a_dataset_described_only_by_its_info_is_read(
    tmp_path: Path, registered: None, fmt: str
) -> None:
    expected = write_layout(tmp_path, TOY, fmt, TOY.train_size, TOY.test_size)
    assert find_source(TOY, tmp_path).kind == fmt
    ds = _load("toy10", tmp_path, val_size=10)
    assert ds.meta["kind"] == fmt and ds.meta["checksum"]["status"] == "unverified"
    assert ds.class_names == list(TOY.class_names) and ds.train.coarse_labels is None
    whole = _load("toy10", tmp_path, val_size=0)
    _check(whole, expected)
    assert _load("toy10", tmp_path, val_size=0).meta["from_cache"] is True
    layout = TOY.python_layout if fmt == "python" else TOY.binary_layout
    files = sorted(p.name for p in expected["folder"].iterdir())
    assert files == sorted(layout.files)


@pytest.mark.parametrize("fmt", ["python", "binary"])
def test_a_dataset_with_two_label_sets_is_read(tmp_path: Path, registered: None, fmt: str) -> None:
    expected = write_layout(tmp_path, TOY_COARSE, fmt, 200, 100)
    fine = _load("toy100", tmp_path, val_size=0)
    _check(fine, expected)
    coarse = _load("toy100", tmp_path, val_size=0, labels="coarse")
    _check(coarse, expected, labels="coarse")
    assert coarse.class_names == list(TOY_COARSE.coarse_class_names or ())
    assert fine.fine_names == list(TOY_COARSE.class_names)


def test_the_official_cifar_folders_are_not_taken_for_the_toy(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    write_cifar10_binary(tmp_path)
    with pytest.raises(DataError, match="Toy-10 not found"):
        read_raw(TOY, tmp_path)


def test_a_toy_archive_is_extracted_and_read(
    tmp_path: Path, registered: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    expected = write_layout(tmp_path / "made", TOY, "binary", 60, 20)
    official = TOY.archives["binary"]
    archive = make_tar_gz(expected["folder"], tmp_path / "dl" / official.filename)
    with pytest.warns(UserWarning, match="md5 sums differ from the official Toy-10 files"):
        ds = load_dataset("toy10", archive.parent, val_size=0)
    assert ds.meta["kind"] == "binary archive"
    _check(ds, expected)
    # with this archive's sum as the official one it is taken as official
    real = dataclasses.replace(official, md5=md5sum(archive))
    monkeypatch.setitem(TOY.archives, "binary", real)
    again = _load("toy10", archive.parent, val_size=0, use_cache=False)
    assert again.meta["checksum"]["status"] == "official"


def test_complete_extraction_is_judged_from_the_info(tmp_path: Path) -> None:
    folder = write_layout(tmp_path, TOY, "binary", TOY.train_size, TOY.test_size)["folder"]
    assert TOY.binary_file_sizes() == {
        "train_0.rec": 30 * 3075, "train_1.rec": 30 * 3075, "eval.rec": 20 * 3075,
    }  # fmt: skip
    assert _looks_complete(folder, TOY, "binary")
    rec = folder / "eval.rec"
    rec.write_bytes(rec.read_bytes()[:-3075])  # an interrupted extraction
    assert not _looks_complete(folder, TOY, "binary")
    py = write_layout(tmp_path, TOY, "python", 60, 20)["folder"]
    assert _looks_complete(py, TOY, "python")
    (py / "held_2").unlink()
    assert not _looks_complete(py, TOY, "python")


def test_layout_offsets_are_checked() -> None:
    with pytest.raises(ValueError, match="outside a 2-byte label"):
        BinaryLayout(("a",), ("b",), "n", label_bytes=2, label_offset=2)
    with pytest.raises(ValueError, match="go together"):
        BinaryLayout(("a",), ("b",), "n", "c", label_bytes=2, label_offset=1)


# --------------------------------------------------------------------------- the official facts


def test_official_layouts_match_independently_written_files(tmp_path: Path) -> None:
    """fakedata's official writers spell out the file names themselves: the infos agree."""
    cases = [
        (CIFAR10.python_layout, write_cifar10_python),
        (CIFAR10.binary_layout, write_cifar10_binary),
        (CIFAR100.python_layout, write_cifar100_python),
        (CIFAR100.binary_layout, write_cifar100_binary),
    ]
    for i, (layout, writer) in enumerate(cases):
        folder = writer(tmp_path / str(i))["folder"]
        assert sorted(p.name for p in folder.iterdir()) == sorted(layout.files)


def test_official_facts() -> None:
    assert IMAGE_BYTES == 3072
    assert CIFAR10.binary_layout.record_size == 3073
    assert CIFAR100.binary_layout.record_size == 3074
    assert (CIFAR100.binary_layout.coarse_label_offset, CIFAR100.binary_layout.label_offset) == (
        0,
        1,
    )
    assert CIFAR10.binary_file_sizes() == {
        **{f"data_batch_{i}.bin": 10_000 * 3073 for i in range(1, 6)},
        "test_batch.bin": 10_000 * 3073,
    }
    assert CIFAR100.binary_file_sizes() == {"train.bin": 50_000 * 3074, "test.bin": 10_000 * 3074}
    assert (CIFAR10.python_layout.label_key, CIFAR10.python_layout.names_key) == (
        "labels",
        "label_names",
    )
    assert (CIFAR100.python_layout.label_key, CIFAR100.python_layout.names_key) == (
        "fine_labels",
        "fine_label_names",
    )
    for info in (CIFAR10, CIFAR100):
        # the official sums cover exactly the files of the python layout
        assert list(info.python_md5) == list(info.python_layout.files)
        assert sources.DATASETS[info.name] is info


# Literals that belong in sources.py only: official file names and keys (a "labels" key read
# from a record; "labels" as a parameter's name is fine), dataset names, and branches on a
# dataset's name.
_FACTS = re.compile(
    r"cifar10|data_batch|test_batch|label_names|batches\.meta|\.bin\b|\.txt\b|\[\s*b?\"labels\"|"
    r"info\.name\s*[!=]="
)


@pytest.mark.parametrize(
    "module", sorted(p.name for p in SRC.glob("*.py") if p.name != "sources.py")
)
def test_no_dataset_facts_outside_sources(module: str) -> None:
    hits = [
        f"{module}:{n}: {line.strip()}"
        for n, line in enumerate((SRC / module).read_text().splitlines(), 1)
        if _FACTS.search(line)
    ]
    assert hits == []
