"""safe_extract on real tar files: normal archives, crafted ones, damaged ones."""

from __future__ import annotations

import io
import random
import tarfile
from pathlib import Path

import pytest

from cifarlab.data.extract import safe_extract
from cifarlab.errors import DataError


def add_file(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def add_special(tar: tarfile.TarFile, name: str, type_: bytes, linkname: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type = type_
    info.linkname = linkname
    tar.addfile(info)


def add_dir(tar: tarfile.TarFile, name: str) -> None:
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE
    info.mode = 0o755
    tar.addfile(info)


def make_good(path: Path, mode: str = "w:gz") -> Path:
    with tarfile.open(path, mode) as tar:
        add_dir(tar, "pkg")
        add_file(tar, "pkg/a.txt", b"hello")
        add_file(tar, "pkg/sub/b.bin", b"\x00\x01\x02")
        add_file(tar, "README", b"top")
    return path


@pytest.fixture
def target(tmp_path: Path) -> Path:
    t = tmp_path / "target"
    t.mkdir()
    return t


@pytest.mark.parametrize("mode,suffix", [("w:gz", ".tar.gz"), ("w", ".tar")])
def test_normal_archive(tmp_path: Path, target: Path, mode: str, suffix: str) -> None:
    archive = make_good(tmp_path / f"good{suffix}", mode)
    assert safe_extract(archive, target) == ["README", "pkg"]
    assert (target / "pkg" / "a.txt").read_bytes() == b"hello"
    assert (target / "pkg" / "sub" / "b.bin").read_bytes() == b"\x00\x01\x02"
    assert (target / "README").read_bytes() == b"top"
    assert sorted(p.name for p in target.iterdir()) == ["README", "pkg"]  # no temp dir left


def test_existing_folder_is_replaced_whole(tmp_path: Path, target: Path) -> None:
    (target / "pkg").mkdir()
    (target / "pkg" / "stale.txt").write_text("old")
    (target / "keep.txt").write_text("mine")
    safe_extract(make_good(tmp_path / "good.tar.gz"), target)
    assert not (target / "pkg" / "stale.txt").exists()
    assert (target / "pkg" / "a.txt").read_bytes() == b"hello"
    assert (target / "keep.txt").read_text() == "mine"
    assert sorted(p.name for p in target.iterdir()) == ["README", "keep.txt", "pkg"]


def assert_untouched(tmp_path: Path, target: Path) -> None:
    assert list(target.iterdir()) == []
    assert not (tmp_path / "evil").exists()
    assert not Path("/tmp/cifarlab-evil").exists()


@pytest.mark.parametrize(
    "name", ["../evil", "pkg/../../evil", "./../evil", "/tmp/cifarlab-evil", "pkg/.."]
)
def test_path_escape_is_refused(tmp_path: Path, target: Path, name: str) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "good.txt", b"fine")  # comes first: must not be written either
        add_file(tar, name, b"pwned")
    with pytest.raises(DataError) as info:
        safe_extract(archive, target)
    assert "bad.tar.gz" in str(info.value) and repr(name) in str(info.value)
    assert_untouched(tmp_path, target)


@pytest.mark.parametrize(
    "type_,linkname,what",
    [
        (tarfile.SYMTYPE, "/etc/passwd", "symbolic link"),
        (tarfile.SYMTYPE, "good.txt", "symbolic link"),
        (tarfile.LNKTYPE, "good.txt", "hard link"),
        (tarfile.CHRTYPE, "", "device"),
        (tarfile.BLKTYPE, "", "device"),
        (tarfile.FIFOTYPE, "", "FIFO"),
    ],
)
def test_special_members_are_refused(
    tmp_path: Path, target: Path, type_: bytes, linkname: str, what: str
) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "good.txt", b"fine")
        add_special(tar, "link", type_, linkname)
    with pytest.raises(DataError, match=what) as info:
        safe_extract(archive, target)
    assert "bad.tar" in str(info.value) and "'link'" in str(info.value)
    assert_untouched(tmp_path, target)


def test_truncated_targz(tmp_path: Path, target: Path) -> None:
    good = tmp_path / "good.tar.gz"
    with tarfile.open(good, "w:gz") as tar:
        add_file(tar, "pkg/big.bin", random.Random(0).randbytes(300_000))
        add_file(tar, "pkg/after.bin", b"x")
    cut = tmp_path / "cut.tar.gz"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(DataError, match="cut.tar.gz"):
        safe_extract(cut, target)
    assert list(target.iterdir()) == []


def test_not_an_archive(tmp_path: Path, target: Path) -> None:
    junk = tmp_path / "junk.tar.gz"
    junk.write_bytes(b"\x1f\x8b" + b"not really gzip" * 50)
    with pytest.raises(DataError, match="junk.tar.gz"):
        safe_extract(junk, target)
    assert list(target.iterdir()) == []


def test_missing_archive(tmp_path: Path, target: Path) -> None:
    with pytest.raises(DataError, match="no such file"):
        safe_extract(tmp_path / "nope.tar.gz", target)


def test_target_is_created(tmp_path: Path) -> None:
    archive = make_good(tmp_path / "good.tar.gz")
    assert safe_extract(archive, tmp_path / "new" / "dir") == ["README", "pkg"]


def test_refused_archive_leaves_no_new_folder(tmp_path: Path) -> None:
    archive = tmp_path / "bad.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "../evil", b"pwned")
    with pytest.raises(DataError):
        safe_extract(archive, tmp_path / "new" / "target")
    assert not (tmp_path / "new").exists()  # the folders it made for the target are gone
