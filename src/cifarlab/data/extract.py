"""Unpack tar archives safely: every member is checked before anything is written.

Archives come from the network or from the user, so a crafted one must not be able to
write outside the target folder (``../``, absolute paths, links) or create devices, nor fill
the disk: the entries are counted and their declared sizes added up before anything is
written (:data:`~cifarlab.limits.MAX_ARCHIVE_MEMBERS`,
:data:`~cifarlab.limits.MAX_ARCHIVE_EXPANSION`), and the bytes are counted again while they
are decompressed and written (a compressed stream can hold far more than its headers
suggest). The archive is extracted into a temporary folder inside the target and each
top-level entry is then renamed into place, so an interrupted or failed extraction never
leaves a half-written dataset folder behind.

A failure says what happened: a damaged archive ("download it again") is told apart from a
full or read-only disk (which no new download fixes).
"""

from __future__ import annotations

import bz2
import contextlib
import gzip
import lzma
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath
from typing import BinaryIO

from cifarlab import limits
from cifarlab.errors import CifarlabError, DataError, one_line
from cifarlab.files import disk_problem, open_input, size_text

# What reading a damaged .tar / .tar.gz can raise, depending on where the damage is.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error, lzma.LZMAError)
_CHUNK = 1 << 20
# Room for the tar headers themselves (a 512-byte header and up to 511 bytes of padding per
# entry, long names, the end blocks) on top of the cap on the members' contents, when the
# decompressed stream is bounded.
_HEADER_ROOM = 1 << 20
_ROOM_PER_MEMBER = 4096
# The official archives hold 8 (CIFAR-10) or 5 (CIFAR-100) files in one folder and expand to
# about 178 MB (CIFAR-10 python); the limits' texts say so.
_NAME_MAX = 255  # bytes in one path component (most file systems)
_PATH_MAX = 1024  # characters in a member name


# --------------------------------------------------------------------------- messages


def _why(err: BaseException) -> str:
    text = getattr(err, "strerror", None) or str(err) or type(err).__name__
    return one_line(text)


# --------------------------------------------------------------------------- folders


@contextlib.contextmanager
def new_folder(path: Path, error: type[CifarlabError] = DataError) -> Iterator[None]:
    """Create ``path`` (and its parents) for the block; if the block fails, remove the folders
    it created as long as they are still empty, so a failure leaves no empty folders behind.
    A folder that cannot be created is ``error`` saying why (disk full, read-only, ...)."""
    path = Path(path)
    created = []
    p = path
    while not p.exists():
        created.append(p)
        if p.parent == p:
            break
        p = p.parent
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        why = disk_problem(e, p) or _why(e)
        raise error(f"cannot create the folder {path}: {why}") from None
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): keep it and its parents
        raise


# --------------------------------------------------------------------------- extraction


class _TooLarge(Exception):
    """The archive expands past the cap."""


class _Bounded:
    """A read-only, seekable view of a decompressed stream that refuses to go past
    ``limit`` bytes: no read (tarfile reads a long-name or pax header whole) and no seek
    (skipping a member decompresses it) may take the stream further."""

    def __init__(self, raw: BinaryIO, limit: int, name: str) -> None:
        self.raw, self.limit, self.name, self.pos = raw, limit, name, 0
        self.mode = "rb"

    def _check(self, end: int) -> None:
        if end > self.limit:
            raise _TooLarge

    def read(self, n: int = -1) -> bytes:
        if n is None or n < 0:  # the rest: in chunks, so that it stops at the limit
            parts = []
            while block := self.read(min(_CHUNK, self.limit - self.pos)):
                parts.append(block)
            if self.pos >= self.limit and self.raw.read(1):
                raise _TooLarge
            return b"".join(parts)
        self._check(self.pos + n)
        data = self.raw.read(n)
        self.pos += len(data)
        return data

    def seek(self, offset: int, whence: int = os.SEEK_SET) -> int:
        if whence == os.SEEK_CUR:
            offset += self.pos
        elif whence != os.SEEK_SET:
            raise OSError("seek from the end is not supported")
        self._check(offset)
        self.pos = self.raw.seek(offset)
        return self.pos

    def tell(self) -> int:
        return self.pos

    def close(self) -> None:
        pass


def _decompressed(f: BinaryIO) -> BinaryIO:
    """The tar stream inside ``f``: gzip, bzip2 or xz by their magic bytes, else as is."""
    head = f.read(6)
    f.seek(0)
    if head[:2] == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=f, mode="rb")  # type: ignore[return-value]
    if head[:3] == b"BZh":
        return bz2.BZ2File(f, "rb")  # type: ignore[return-value]
    if head == b"\xfd7zXZ\x00":
        return lzma.LZMAFile(f, "rb")  # type: ignore[return-value]
    return f


def safe_extract(archive: Path, target: Path) -> list[str]:
    """Extract the .tar / .tar.gz ``archive`` into ``target``; return the top-level names.

    Refuses (with :class:`DataError`, before writing anything) members with absolute paths
    or ``..`` components, anything but regular files and directories, more entries than
    ``CIFARLAB_MAX_EXTRACT_MEMBERS`` and contents larger in all than
    ``CIFARLAB_MAX_EXTRACT_MB``. The archive must be a regular file of at most
    ``CIFARLAB_MAX_DATA_FILE_MB``. A top-level entry that already exists in ``target`` is
    replaced as a whole; on any failure nothing of the archive is left in ``target``.
    """
    archive, target = Path(archive), Path(target)
    with (
        open_input(
            archive,
            limits.megabytes(limits.MAX_DATA_FILE),
            DataError,
            f"{limits.MAX_DATA_FILE.env}=MB",
        ) as f,
        new_folder(target),
    ):
        return _extract(archive, f, target)


def _extract(archive: Path, f: BinaryIO, target: Path) -> list[str]:
    cap = limits.megabytes(limits.MAX_ARCHIVE_EXPANSION)
    max_members = int(limits.MAX_ARCHIVE_MEMBERS)
    try:
        room = _HEADER_ROOM + _ROOM_PER_MEMBER * max_members
        stream = _Bounded(_decompressed(f), cap + room, str(archive))
        tar = tarfile.open(fileobj=stream, mode="r:")  # type: ignore[call-overload]
    except _TooLarge:
        raise _too_large(archive, cap) from None
    except _READ_ERRORS as e:
        raise DataError(
            f"cannot extract {archive}: not a readable tar archive ({_why(e)})"
        ) from None
    with tar:
        root = os.path.realpath(target)
        members = _list_members(archive, tar, root, cap, max_members)
        try:
            tmp = Path(tempfile.mkdtemp(prefix=".cifarlab-extract-", dir=target))
        except OSError as e:
            raise _write_failed(archive, target, e) from None
        try:
            _write_members(archive, tar, members, tmp, target, cap)
            names = sorted(os.listdir(tmp))
            trash = Path(tempfile.mkdtemp(prefix=".old-", dir=tmp))
            for name in names:
                dst = target / name
                if dst.exists() or dst.is_symlink():
                    # os.replace cannot overwrite a non-empty directory: move the old entry
                    # aside first; it is deleted with the temporary folder.
                    os.replace(dst, trash / name)
                os.replace(tmp / name, dst)
        except OSError as e:
            raise _write_failed(archive, target, e) from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return names


def _list_members(
    archive: Path, tar: tarfile.TarFile, root: str, cap: int, max_members: int
) -> list[tarfile.TarInfo]:
    """Every member, checked, counted and its declared size added up, reading headers only
    (the stream is bounded, so a header that claims a huge long name or pax block stops at
    the cap too)."""
    members: list[tarfile.TarInfo] = []
    total = 0
    try:
        while (member := tar.next()) is not None:
            members.append(member)
            if len(members) > max_members:
                raise DataError(
                    f"cannot extract {archive}: it holds more than {max_members:,} entries "
                    f"(the official archives hold fewer than 10); refusing to extract "
                    f"anything (raise the limit with {limits.MAX_ARCHIVE_MEMBERS.env}=N)"
                )
            _check_member(archive, member, root)
            total += max(member.size, 0) if member.isfile() else 0
            if total > cap:
                raise _TooLarge
    except _TooLarge:
        raise _too_large(archive, cap) from None
    except _READ_ERRORS as e:
        raise _corrupt(archive, e) from None
    return members


def _write_members(
    archive: Path,
    tar: tarfile.TarFile,
    members: list[tarfile.TarInfo],
    tmp: Path,
    target: Path,
    cap: int,
) -> None:
    """Write the (checked) members under ``tmp``, counting the bytes as they come."""
    written = 0
    for member in members:
        parts = PurePosixPath(member.name.replace("\\", "/")).parts
        parts = tuple(p for p in parts if p not in ("", "."))
        dest = tmp.joinpath(*parts) if parts else tmp
        if member.isdir():
            try:
                dest.mkdir(parents=True, exist_ok=True)
            except (FileExistsError, NotADirectoryError):
                raise _conflict(archive, member) from None
            continue
        try:
            dest.parent.mkdir(parents=True, exist_ok=True)
            if dest.is_symlink() or dest.exists():
                if not dest.is_file() or dest.is_symlink():
                    raise _conflict(archive, member)
                dest.unlink()  # a later member of the same name wins, as with tar
            fd = os.open(
                dest,
                os.O_WRONLY
                | os.O_CREAT
                | os.O_EXCL
                | getattr(os, "O_NOFOLLOW", 0)
                | getattr(os, "O_CLOEXEC", 0),
                0o666,
            )
        except (FileExistsError, NotADirectoryError, IsADirectoryError):
            raise _conflict(archive, member) from None
        with os.fdopen(fd, "wb") as out:
            for block in _blocks(tar, member, archive, cap):
                written += len(block)
                if written > cap:
                    raise _too_large(archive, cap)
                out.write(block)  # an OSError here is the disk's, handled by the caller
        with contextlib.suppress(OSError, OverflowError, ValueError, TypeError):
            os.utime(dest, (member.mtime, member.mtime))


def _too_large(archive: Path, cap: int) -> DataError:
    return DataError(
        f"cannot extract {archive}: it expands to more than {size_text(cap)} (the official "
        "archives expand to about 180 MB); refusing it, nothing was written (raise the limit "
        f"with {limits.MAX_ARCHIVE_EXPANSION.env}=MB)"
    )


def _conflict(archive: Path, member: tarfile.TarInfo) -> DataError:
    return DataError(
        f"cannot extract {archive}: member {_shown(member.name)} clashes with another member "
        "(a file where a folder is, or the other way round)"
    )


def _write_failed(archive: Path, target: Path, err: OSError) -> DataError:
    why = disk_problem(err, target)
    if why is not None:
        return DataError(
            f"cannot extract {archive} into {target}: {why}; nothing was kept (the archive "
            "itself is fine: make room, or choose another folder)"
        )
    return DataError(f"cannot extract {archive} into {target}: {_why(err)}")


def _blocks(
    tar: tarfile.TarFile, member: tarfile.TarInfo, archive: Path, cap: int
) -> Iterator[bytes]:
    """The bytes of a regular ``member``, a block at a time; a read failure is the archive's
    (corrupt, or past the expansion cap), never the disk's: the caller's writes are outside."""
    try:
        src = tar.extractfile(member)
        assert src is not None  # a regular file
        while block := src.read(_CHUNK):
            yield block
    except _TooLarge:
        raise _too_large(archive, cap) from None
    except _READ_ERRORS as e:
        raise _corrupt(archive, e) from None


def _corrupt(archive: Path, err: BaseException) -> DataError:
    return DataError(
        f"cannot extract {archive}: the archive is corrupt or truncated ({_why(err)}); "
        "delete it and download it again"
    )


def _shown(name: str) -> str:
    return one_line(repr(name), 120)


def _check_member(archive: Path, member: tarfile.TarInfo, root: str) -> None:
    """Raise DataError unless ``member`` is a plain file or folder that stays inside root."""
    name = member.name

    def refuse(why: str) -> DataError:
        return DataError(
            f"unsafe archive {archive}: member {_shown(name)} {why}; refusing to extract anything"
        )

    if not (member.isfile() or member.isdir()):
        if member.issym():
            raise refuse(f"is a symbolic link (to {_shown(member.linkname)})")
        if member.islnk():
            raise refuse(f"is a hard link (to {_shown(member.linkname)})")
        if member.ischr() or member.isblk():
            raise refuse("is a device file")
        if member.isfifo():
            raise refuse("is a FIFO")
        raise refuse(f"has unsupported type {member.type!r}")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise refuse("has an absolute path")
    parts = PurePosixPath(name.replace("\\", "/")).parts
    if ".." in parts:
        raise refuse("has a '..' component")
    if len(name) > _PATH_MAX or any(len(os.fsencode(p)) > _NAME_MAX for p in parts):
        raise refuse("has a name too long for a file system")
    path = os.path.realpath(os.path.join(root, name))
    if path != root and not path.startswith(root + os.sep):
        raise refuse(f"would be written outside {root}")
    if member.isfile() and path == root:
        raise refuse("is a file without a name")
