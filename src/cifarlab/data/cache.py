"""Where cifarlab keeps things, and the parsed-array cache that makes later loads instant.

After the first parse a dataset is saved as ``.npy`` files that load memory-mapped. Each cache
entry records a fingerprint (name, size, mtime of every source file); when the source changes the
fingerprint differs and the entry is rebuilt.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
import tempfile
import warnings
from pathlib import Path
from typing import Any

import numpy as np

CACHE_VERSION = 2  # 2: loads re-validated (missing-class warning)
ARRAY_KEYS = ("train_x", "train_y", "test_x", "test_y", "train_coarse", "test_coarse")


def cache_dir() -> Path:
    """``$CIFARLAB_CACHE``, else ``$XDG_CACHE_HOME/cifarlab``, else ``~/.cache/cifarlab``."""
    if env := os.environ.get("CIFARLAB_CACHE"):
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "cifarlab"


def fingerprint(files: list[Path]) -> str:
    """A digest of each file's path, size and modification time: cheap, and it changes when
    a file is replaced, rewritten or touched."""
    h = hashlib.sha1()
    for f in sorted(files):
        st = f.stat()
        h.update(f"{f.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
    return h.hexdigest()


def entry_dir(dataset: str, source: Path, kind: str) -> Path:
    key = hashlib.sha1(f"{dataset}\0{kind}\0{source.resolve()}".encode()).hexdigest()[:16]
    return cache_dir() / "parsed" / f"{dataset}-{kind}-{key}"


def load(entry: Path, expected_fingerprint: str) -> tuple[dict[str, np.ndarray], dict] | None:
    """The cached arrays and metadata, or None when absent, stale or unreadable."""
    try:
        meta = json.loads((entry / "meta.json").read_text())
        if meta.get("version") != CACHE_VERSION or meta.get("fingerprint") != expected_fingerprint:
            return None
        # mmap_mode="c": copy-on-write pages, so the arrays are writable (torch wants that)
        # yet nothing is read from disk until it is used.
        arrays = {k: np.load(entry / f"{k}.npy", mmap_mode="c") for k in meta["arrays"]}
    except (OSError, ValueError, KeyError):
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
            np.save(tmp / f"{k}.npy", arrays[k])
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
