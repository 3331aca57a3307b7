"""safe_extract on real tar files: normal archives, crafted ones, damaged ones."""

from __future__ import annotations

import io
import os
import random
import tarfile
import time
from pathlib import Path

import pytest

from cifarlab.data.extract import safe_extract
from cifarlab.errors import DataError, one_line
from hostile import no_hang


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


# --------------------------------------------------------------------------- hostile archives


def message(info: pytest.ExceptionInfo) -> str:
    msg = str(info.value)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


def test_one_line() -> None:
    assert one_line("a\nb\r\n\t c") == "a b c"
    assert one_line("bell\x07 esc\x1b[31m") == "bell\\x07 esc\\x1b[31m"
    long = one_line("word " * 500)
    assert len(long) <= 200 and long.endswith("...")


def test_an_archive_that_is_a_fifo_is_refused_without_blocking(
    tmp_path: Path, target: Path
) -> None:
    fifo = tmp_path / "cifar-10-python.tar.gz"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(DataError) as info:
        safe_extract(fifo, target)
    assert str(fifo) in message(info) and "named pipe" in message(info)
    assert list(target.iterdir()) == []


def test_a_huge_sparse_archive_is_refused_by_its_size(tmp_path: Path, target: Path) -> None:
    sparse = tmp_path / "cifar-10-python.tar.gz"
    with open(sparse, "wb") as f:
        f.truncate(300 << 30)
    t0 = time.monotonic()
    with pytest.raises(DataError) as info:
        safe_extract(sparse, target)
    assert time.monotonic() - t0 < 1
    msg = message(info)
    assert str(sparse) in msg and "over the limit" in msg and "CIFARLAB_MAX_DATA_FILE_MB" in msg
    assert list(target.iterdir()) == []


def test_too_many_members_are_refused_before_writing(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARLAB_MAX_EXTRACT_MEMBERS", "5")
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(10):
            add_file(tar, f"pkg/f{i}", b"x")
    with pytest.raises(DataError) as info:
        safe_extract(archive, target)
    msg = message(info)
    assert "many.tar.gz" in msg and "more than 5 entries" in msg
    assert "CIFARLAB_MAX_EXTRACT_MEMBERS" in msg
    assert list(target.iterdir()) == []


def test_a_gzip_bomb_is_refused_from_its_headers(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A small .tar.gz whose members would expand past the cap: refused from the declared
    sizes, before a byte is written (and without decompressing the members)."""
    monkeypatch.setenv("CIFARLAB_MAX_EXTRACT_MB", "1")
    archive = tmp_path / "bomb.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "pkg/small", b"fine")
        for i in range(3):
            add_file(tar, f"pkg/zeros{i}", bytes(600_000))
    assert archive.stat().st_size < 10_000
    with pytest.raises(DataError) as info:
        safe_extract(archive, target)
    msg = message(info)
    assert "bomb.tar.gz" in msg and "expands to more than 1.0 MB" in msg
    assert "CIFARLAB_MAX_EXTRACT_MB" in msg
    assert list(target.iterdir()) == []


def test_a_huge_header_block_is_bounded_too(
    tmp_path: Path, target: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A pax header (read whole by tarfile) that decompresses to more than the cap stops at
    the cap: the decompressed bytes are counted as they come, headers included."""
    monkeypatch.setenv("CIFARLAB_MAX_EXTRACT_MB", "1")
    monkeypatch.setenv("CIFARLAB_MAX_EXTRACT_MEMBERS", "10")
    archive = tmp_path / "pax.tar.gz"
    with tarfile.open(archive, "w:gz", format=tarfile.PAX_FORMAT) as tar:
        info = tarfile.TarInfo("pkg/a")
        info.pax_headers = {"comment": "z" * (4 << 20)}
        tar.addfile(info, io.BytesIO(b""))
    assert archive.stat().st_size < 50_000
    with pytest.raises(DataError, match="expands to more than 1.0 MB") as info:
        safe_extract(archive, target)
    assert "pax.tar.gz" in message(info)
    assert list(target.iterdir()) == []


@pytest.mark.parametrize("mode", ["w:bz2", "w:xz"])
def test_other_compressions(tmp_path: Path, target: Path, mode: str) -> None:
    archive = make_good(tmp_path / f"good.tar.{mode[2:]}", mode)
    assert safe_extract(archive, target) == ["README", "pkg"]
    assert (target / "pkg" / "sub" / "b.bin").read_bytes() == b"\x00\x01\x02"


def test_members_that_clash_are_refused(tmp_path: Path, target: Path) -> None:
    archive = tmp_path / "clash.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "pkg", b"a file")
        add_file(tar, "pkg/inside", b"needs pkg to be a folder")
    with pytest.raises(DataError, match=r"member 'pkg/inside' clashes") as info:
        safe_extract(archive, target)
    assert "clash.tar" in message(info)
    assert list(target.iterdir()) == []


def test_a_repeated_member_is_the_last_one(tmp_path: Path, target: Path) -> None:
    archive = tmp_path / "twice.tar"
    with tarfile.open(archive, "w") as tar:
        add_file(tar, "pkg/a", b"first")
        add_file(tar, "pkg/a", b"second")
    safe_extract(archive, target)
    assert (target / "pkg" / "a").read_bytes() == b"second"


def test_member_names_in_messages_stay_one_line(tmp_path: Path, target: Path) -> None:
    archive = tmp_path / "bad.tar"
    with tarfile.open(archive, "w") as tar:
        add_special(tar, "x\n" * 300, tarfile.SYMTYPE, "/etc/passwd\nroot")
    with pytest.raises(DataError, match="symbolic link") as info:
        safe_extract(archive, target)
    assert len(message(info)) < 400
    assert list(target.iterdir()) == []


def test_a_full_disk_is_not_a_corrupt_archive(tmp_path: Path, tiny_disk: Path) -> None:
    archive = tmp_path / "big.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        add_file(tar, "pkg/a.txt", b"hello")
        add_file(tar, "pkg/big.bin", random.Random(0).randbytes(300_000))  # 300 KB into 64 KB
    with pytest.raises(DataError) as info:
        safe_extract(archive, tiny_disk)
    msg = message(info)
    assert "disk is full" in msg and str(tiny_disk) in msg and "big.tar.gz" in msg
    assert "corrupt" not in msg and "download it again" not in msg
    assert list(tiny_disk.iterdir()) == []  # what was written is gone: the space is free


def test_a_read_only_target_is_said_so(tmp_path: Path, read_only_dir: Path) -> None:
    archive = make_good(tmp_path / "good.tar.gz")
    with pytest.raises(DataError) as info:
        safe_extract(archive, read_only_dir)
    msg = message(info)
    assert "read-only file system" in msg and "corrupt" not in msg
    with pytest.raises(DataError, match="read-only file system"):
        safe_extract(archive, read_only_dir / "new" / "folder")  # a folder it cannot create
