"""Where cifarlab keeps things, and the parsed-array cache that makes later loads instant.

After the first parse a dataset is saved as ``.npy`` files that load memory-mapped. Each cache
entry records a fingerprint (name, size, mtime of every source file); when the source changes the
fingerprint differs and the entry is rebuilt.

Every cached ``.npy`` (the parsed data here, the corrupted sets of ``cifarlab robustness``) is
written by :func:`write_array` (a temporary name, then a rename: a reader never sees half a file,
and of concurrent writers one whole file wins) and read by :func:`read_array` (memory-mapped; a
missing, damaged or foreign file is None, never an error: the entry is made again).
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.errors import CifarlabError
from cifarlab.files import atomic_write, read_input

CACHE_VERSION = 2  # 2: loads re-validated (missing-class warning)
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y", "train_coarse", "test_coarse")
_MAX_META = 16 << 20  # meta.json: class names and a few notes


def cache_dir() -> Path:
    """``$CIFARLAB_CACHE``, else ``$XDG_CACHE_HOME/cifarlab``, else ``~/.cache/cifarlab``."""
    if env := os.environ.get("CIFARLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cifarlab"


def _resolved(p: Path) -> Path:
    try:
        return p.resolve()
    except (OSError, RuntimeError):  # a link loop: the path as given will do
        return p.absolute()


def fingerprint(files: list[Path]) -> str:
    """A digest of each file's path, size and modification time: cheap (no file is read),
    and it changes when a file is replaced, rewritten or touched. A file that cannot be
    stat'ed counts as missing (its reader will say why)."""
    h = hashlib.sha1()
    for f in sorted(files):
        try:
            st = f.stat()
        except OSError:
            h.update(f"{f}\0missing\n".encode("utf-8", "surrogateescape"))
            continue
        line = f"{_resolved(f)}\0{st.st_size}\0{st.st_mtime_ns}\n"
        h.update(line.encode("utf-8", "surrogateescape"))
    return h.hexdigest()


def read_array(
    path: Path, shape: tuple[int, ...] | None = None, dtype: np.dtype | type | None = None
) -> np.ndarray | None:
    """The cached array at ``path``, memory-mapped, or None when it is absent, not a regular
    ``.npy`` file, unreadable, or not of ``shape`` and ``dtype`` (when given)."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO (it would block)
            return None
        # mmap_mode="c": copy-on-write pages, so the array is writable (torch wants that) yet
        # nothing is read from disk until it is used.
        arr = np.load(path, mmap_mode="c", allow_pickle=False)
    except (OSError, ValueError, EOFError):
        return None
    if not isinstance(arr, np.ndarray):  # a .npz archive under the name
        arr.close()
        return None
    if shape is not None and arr.shape != tuple(shape):
        return None
    if dtype is not None and arr.dtype != dtype:
        return None
    return arr


def write_array(path: Path, arr: np.ndarray) -> Path:
    """Write ``arr`` as a ``.npy`` file at ``path``: to a temporary name beside it, then
    renamed, so that a reader never sees half a file and two processes writing the same file
    at once each leave a whole one. A failure is a :class:`~cifarlab.errors.WriteError` (an
    OSError)."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would append ".npy"
            np.save(f, arr, allow_pickle=False)

    return atomic_write(path, write)


def entry_dir(dataset: str, source: Path, kind: str) -> Path:
    key = f"{dataset}\0{kind}\0{_resolved(source)}".encode("utf-8", "surrogateescape")
    return cache_dir() / "parsed" / f"{dataset}-{kind}-{hashlib.sha1(key).hexdigest()[:16]}"


def load(entry: Path, expected_fingerprint: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached arrays and metadata, or None when absent, stale or unreadable."""
    try:
        meta = json.loads(read_input(entry / "meta.json", _MAX_META, CifarlabError))
        if not isinstance(meta, dict):
            return None
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != expected_fingerprint:
            return None
        names = meta["arrays"]
        if not isinstance(names, list) or not set(names) <= set(ARRAY_KEYS):
            return None
        arrays = {}
        for k in names:
            arr = read_array(entry / f"{k}.npy")
            if arr is None:
                return None
            arrays[k] = arr
    except (OSError, ValueError, KeyError, TypeError, CifarlabError):
        return None
    return arrays, meta


def save(entry: Path, arrays: dict[str, np.ndarray | None], meta: dict[str, Any]) -> None:
    """Write an entry atomically (temp folder, then rename); a failure only warns.

    Several processes may parse the same data at once (torchrun's ranks, two shells): an entry
    is never deleted in place, only renamed aside first, and when another process has just
    written an entry for the same source files, that one is kept and ours dropped.
    """
    tmp = None
    try:
        entry.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=entry.parent))
        present = [k for k in ARRAY_KEYS if arrays.get(k) is not None]
        for k in present:
            write_array(tmp / f"{k}.npy", arrays[k])
        meta = {**meta, "version": CACHE_VERSION, "arrays": present}
        (tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        for _ in range(5):
            try:
                os.replace(tmp, entry)  # succeeds when there is no entry (or an empty folder)
                tmp = None
                return
            except OSError as e:
                if e.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                    raise
            if load(entry, meta["fingerprint"]) is not None:
                return  # a whole entry for the same files, written by another process: keep it
            # a stale or damaged entry: move it aside (atomically), delete it, try again
            aside = Path(tempfile.mkdtemp(prefix=".old-", dir=entry.parent))
            try:
                os.replace(entry, aside)  # an empty folder may be replaced by a folder
            except FileNotFoundError:
                pass  # another process moved it first
            shutil.rmtree(aside, ignore_errors=True)
        raise OSError(f"{entry.name} kept changing under concurrent writers")
    except OSError as e:
        warnings.warn(f"could not write the data cache in {entry.parent} ({e})", stacklevel=2)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
