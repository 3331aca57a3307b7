"""Writing files safely: :func:`atomic_write` (a temp file beside the target, then a rename)
and :func:`append_jsonl`. Used by training, evaluation, export and the reports alike."""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from cifarlab.errors import CifarlabError, WriteError


def atomic_write(path: str | os.PathLike, write: Callable[[Path], None]) -> Path:
    """Call ``write(tmp_path)`` then rename the temp file to ``path``; nothing half-written is
    left behind if ``write`` fails."""
    path = Path(path)
    if path.is_dir():
        raise WriteError(f"cannot write {path}: it is a folder; name a file")
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
    old = path.read_text() if path.is_file() else ""
    if old and not old.endswith("\n"):
        old += "\n"
    return atomic_write(path, lambda tmp: tmp.write_text(old + json.dumps(row) + "\n"))
