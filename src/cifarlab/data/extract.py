"""Unpack tar archives safely: every member is checked before anything is written.

Archives come from the network or from the user, so a crafted one must not be able to
write outside the target folder (``../``, absolute paths, links) or create devices. The
archive is extracted into a temporary folder inside the target and each top-level entry is
then renamed into place, so an interrupted or failed extraction never leaves a
half-written dataset folder behind.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import tempfile
import zlib
from collections.abc import Iterator
from pathlib import Path, PurePosixPath, PureWindowsPath

from cifarlab.errors import DataError

# What reading a damaged .tar / .tar.gz can raise, depending on where the damage is.
_READ_ERRORS = (tarfile.TarError, EOFError, OSError, zlib.error)


@contextlib.contextmanager
def new_folder(path: Path) -> Iterator[None]:
    """Create ``path`` (and its parents) for the block; if the block fails, remove the folders
    it created as long as they are still empty, so a failure leaves no empty folders behind."""
    path = Path(path)
    created = []
    p = path
    while not p.exists():
        created.append(p)
        p = p.parent
    path.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except OSError:
                break  # not empty (or gone): keep it and its parents
        raise


def safe_extract(archive: Path, target: Path) -> list[str]:
    """Extract the .tar / .tar.gz ``archive`` into ``target``; return the top-level names.

    Refuses (with :class:`DataError`, before writing anything) members with absolute paths
    or ``..`` components, and anything but regular files and directories. A top-level
    entry that already exists in ``target`` is replaced as a whole.
    """
    archive, target = Path(archive), Path(target)
    if not archive.is_file():
        raise DataError(f"cannot extract {archive}: no such file")
    with new_folder(target):
        return _extract(archive, target)


def _extract(archive: Path, target: Path) -> list[str]:
    try:
        tar = tarfile.open(archive, "r:*")
    except _READ_ERRORS as e:
        raise DataError(f"cannot extract {archive}: not a readable tar archive ({e})") from None
    with tar:
        try:
            members = tar.getmembers()  # reads the whole archive: finds truncation early too
        except _READ_ERRORS as e:
            raise _corrupt(archive, e) from None
        root = os.path.realpath(target)
        for member in members:
            _check_member(archive, member, root)

        tmp = Path(tempfile.mkdtemp(prefix=".cifarlab-extract-", dir=target))
        try:
            try:
                if hasattr(tarfile, "data_filter"):
                    # Python's own checks as a second line of defence (3.10.12+ / 3.11.4+).
                    tar.extractall(tmp, members=members, filter="data")
                else:
                    tar.extractall(tmp, members=members)
            except _READ_ERRORS as e:
                raise _corrupt(archive, e) from None
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
            raise DataError(f"cannot extract {archive} into {target}: {e}") from None
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
    return names


def _corrupt(archive: Path, err: BaseException) -> DataError:
    why = str(err) or type(err).__name__
    return DataError(
        f"cannot extract {archive}: the archive is corrupt or truncated ({why}); "
        "delete it and download it again"
    )


def _check_member(archive: Path, member: tarfile.TarInfo, root: str) -> None:
    """Raise DataError unless ``member`` is a plain file or folder that stays inside root."""
    name = member.name

    def refuse(why: str) -> DataError:
        return DataError(
            f"unsafe archive {archive}: member {name!r} {why}; refusing to extract anything"
        )

    if not (member.isfile() or member.isdir()):
        if member.issym():
            raise refuse(f"is a symbolic link (to {member.linkname!r})")
        if member.islnk():
            raise refuse(f"is a hard link (to {member.linkname!r})")
        if member.ischr() or member.isblk():
            raise refuse("is a device file")
        if member.isfifo():
            raise refuse("is a FIFO")
        raise refuse(f"has unsupported type {member.type!r}")
    if name.startswith(("/", "\\")) or PureWindowsPath(name).drive:
        raise refuse("has an absolute path")
    if ".." in PurePosixPath(name.replace("\\", "/")).parts:
        raise refuse("has a '..' component")
    path = os.path.realpath(os.path.join(root, name))
    if path != root and not path.startswith(root + os.sep):
        raise refuse(f"would be written outside {root}")
