"""Reading and writing files safely, for every module.

Reading what a user hands over: :func:`open_input` opens a *regular* file only (a FIFO, a
device or a socket is refused without blocking: ``O_NONBLOCK`` on the open) and refuses files
over a size limit before reading a byte; :func:`read_input` reads one whole.

Writing: :func:`atomic_write` (a temp file created exclusively beside the target, then a
rename; never over a device, FIFO or socket), :func:`append_jsonl`, and :func:`open_private`
for files that are opened in place (a lock): never through a symbolic link.
"""

from __future__ import annotations

import errno
import json
import os
import stat
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any, BinaryIO

from cifarlab.errors import CifarlabError, WriteError, one_line
from cifarlab.limits import MAX_JSON_FILE, megabytes

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a named pipe (FIFO)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def file_kind(mode: int) -> str:
    """What a stat mode is, in words ("a regular file", "a named pipe (FIFO)", ...)."""
    for test, name in _KINDS:
        if test(mode):
            return name
    return "a regular file" if stat.S_ISREG(mode) else "not a regular file"


def size_text(n: float) -> str:
    """A size for a message: "178.0 MB", or "90,000 bytes" below a tenth of a MB."""
    return f"{n / (1 << 20):,.1f} MB" if n >= (1 << 20) / 10 else f"{int(n):,} bytes"


def disk_problem(err: OSError, where: Path | str) -> str | None:
    """What a write error says about the disk at ``where`` (full, over quota, read-only, not
    writable), or None when it is some other failure."""
    code = getattr(err, "errno", None)
    if code == errno.ENOSPC:
        return f"the disk is full (no space left on the device holding {where})"
    if code == getattr(errno, "EDQUOT", -1):
        return f"the disk quota is exceeded on the device holding {where}"
    if code == errno.EROFS:
        return f"{where} is on a read-only file system"
    if code in (errno.EACCES, errno.EPERM):
        return f"permission denied writing in {where}"
    if code == errno.EFBIG:
        return f"the file system holding {where} cannot hold a file that large"
    return None


def open_input(
    path: str | os.PathLike,
    max_bytes: int | None = None,
    error: type[CifarlabError] = CifarlabError,
    limit_hint: str = "",
) -> BinaryIO:
    """Open ``path`` for reading if it is a regular file of at most ``max_bytes``; otherwise
    raise ``error`` naming the file and what is wrong. Never blocks: a FIFO is opened with
    ``O_NONBLOCK`` (which returns at once) and refused after ``fstat``."""
    path = Path(path)
    flags = os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
    try:
        fd = os.open(path, flags)
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except IsADirectoryError:
        raise error(f"{path}: is a folder, not a file") from None
    except OSError as e:
        raise error(f"{path}: cannot open ({e.strerror or type(e).__name__})") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error(f"{path}: is {file_kind(st.st_mode)}, not a regular file")
        if max_bytes is not None and st.st_size > max_bytes:
            hint = f" (raise it with {limit_hint})" if limit_hint else ""
            raise error(
                f"{path}: {size_text(st.st_size)} is over the limit of {size_text(max_bytes)}{hint}"
            )
        if hasattr(os, "set_blocking"):
            os.set_blocking(fd, True)
        return os.fdopen(fd, "rb")
    except BaseException:
        os.close(fd)
        raise


def read_input(
    path: str | os.PathLike,
    max_bytes: int,
    error: type[CifarlabError] = CifarlabError,
    limit_hint: str = "",
) -> bytes:
    """The bytes of the regular file ``path`` (at most ``max_bytes``, checked before reading
    and again while reading, in case the file grows)."""
    with open_input(path, max_bytes, error, limit_hint) as f:
        try:
            data = f.read(max_bytes + 1)
        except OSError as e:
            raise error(f"{path}: cannot read ({e.strerror or type(e).__name__})") from None
    if len(data) > max_bytes:
        raise error(f"{path}: grew over the limit of {size_text(max_bytes)} while it was read")
    return data


def read_json(path: str | os.PathLike) -> Any:
    """The JSON value of the file ``path``: a regular file of at most MAX_JSON_FILE (a FIFO or
    a device is refused without blocking); one-line errors naming the file (not UTF-8, not
    JSON, nested too deeply for the parser, an integer of thousands of digits)."""
    data = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
    try:
        return json.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise CifarlabError(f"{path}: not valid JSON (not UTF-8 text)") from None
    except RecursionError:
        raise CifarlabError(f"{path}: not valid JSON (nested too deeply)") from None
    except ValueError as e:  # JSONDecodeError, or an integer of thousands of digits
        raise CifarlabError(f"{path}: not valid JSON ({one_line(e)})") from None


def check_output(path: Path) -> None:
    """Refuse to replace anything but a regular file (or a link, which is replaced itself,
    never followed) or nothing: renaming over ``/dev/null`` would destroy the device."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    if stat.S_ISREG(st.st_mode) or stat.S_ISLNK(st.st_mode):
        return
    if stat.S_ISDIR(st.st_mode):
        raise WriteError(f"cannot write {path}: it is a folder; name a file")
    raise WriteError(
        f"cannot write {path}: it is {file_kind(st.st_mode)}, not a regular file; name a file"
    )


def open_private(path: str | os.PathLike, mode: str = "a+") -> IO:
    """Open (creating if needed) a file that is written in place, e.g. a lock: refused if it
    is a symbolic link (``O_NOFOLLOW``) or not a regular file, so that no other file is ever
    written through it."""
    path = Path(path)
    flags = os.O_RDWR | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(path, flags, 0o666)
    except OSError as e:
        if path.is_symlink():
            raise WriteError(
                f"{path} is a symbolic link; refusing to write through it (remove it)"
            ) from None
        raise WriteError(f"cannot open {path}: {e.strerror or e}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise WriteError(f"{path} is {file_kind(st.st_mode)}, not a regular file (remove it)")
        os.set_blocking(fd, True)
        return os.fdopen(fd, mode)
    except BaseException:
        os.close(fd)
        raise


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file to ``path``; nothing half-written is
    left behind if ``write`` fails."""
    path = Path(path)
    check_output(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise WriteError(f"cannot write {path}: {e.strerror or e}") from None
    os.close(fd)
    try:
        write(Path(tmp))
        # mkstemp makes the file private (0600); give it the usual permissions (0666 - umask)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException as e:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and not isinstance(e, CifarlabError):
            raise WriteError(f"cannot write {path}: {e.strerror or e}") from e
        raise
    return path


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def append_jsonl(path: str | os.PathLike, row: dict) -> Path:
    """Add one JSON line to ``path`` by rewriting the file whole (a few dozen lines) under a
    temporary name: a crash never leaves half a line behind."""
    path = Path(path)
    old = read_input(path, 64 << 20, WriteError).decode("utf-8", "replace") if path.exists() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(old + json.dumps(row) + "\n"))
