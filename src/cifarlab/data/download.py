"""Download the CIFAR archives: resumable, retried, checksum-verified, stdlib only.

A download goes to ``<dest>.part`` and is renamed into place only once it is complete and
its md5 matches, so ``dest`` never exists half-written. Transient failures (a stalled or
reset connection, a short body, HTTP 5xx) are retried with exponential backoff, each retry
resuming from the bytes already on disk. Failures that retrying cannot fix (no DNS, HTTP
4xx, a wrong checksum) are reported at once.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import socket
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

from cifarlab.data.sources import DatasetInfo, get_info
from cifarlab.errors import DownloadError

NETWORK_HINT = (
    "no network? download it elsewhere and point cifarlab at the folder with "
    "--root DIR or CIFARLAB_DATA=DIR"
)
MIRROR_ENV = "CIFARLAB_MIRROR"
_CHUNK = 1 << 16
_USER_AGENT = "cifarlab (python urllib)"


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, network: bool = False) -> None:
        super().__init__(message)
        self.network = network  # whether the hint about offline use applies


def md5sum(path: Path, chunk: int = 1 << 20) -> str:
    """Return the hex md5 of the file at ``path``."""
    h = hashlib.md5()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def download_file(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    retries: int = 4,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``md5``, return ``dest``.

    ``retries`` is the number of extra attempts after the first; the waits between them are
    ``backoff``, ``2 * backoff``, ... seconds. ``timeout`` bounds every socket operation, so
    a server that stops sending fails the attempt instead of hanging. If ``dest`` already
    exists with the right md5 (or ``md5`` is None), it is returned without downloading.
    Raises :class:`DownloadError` with a one-line message on failure.
    """
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    if dest.is_file() and (md5 is None or md5sum(dest) == md5):
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.with_name(dest.name + ".part")
    # Built per call (not urllib's global opener) so proxy settings in the environment are
    # read now rather than frozen at the first download of the process.
    opener = urllib.request.build_opener()

    attempts = max(0, retries) + 1
    last: _Retryable | None = None
    for attempt in range(attempts):
        if attempt:
            time.sleep(backoff * 2 ** (attempt - 1))
        try:
            _attempt(opener, url, part, timeout=timeout, progress=progress, desc=dest.name)
            break
        except _Retryable as e:
            last = e
    else:
        assert last is not None
        kept = (
            "; the partial file is kept and will be resumed"
            if part.is_file() and part.stat().st_size
            else ""
        )
        hint = f"; {NETWORK_HINT}" if last.network else ""
        raise DownloadError(
            f"cannot download {url}: {last} (gave up after {attempts} attempt"
            f"{'s' if attempts != 1 else ''}){kept}{hint}"
        )

    if md5 is not None:
        actual = md5sum(part)
        if actual != md5:
            # A bad file is useless for resuming too: the bytes already there may be the
            # corrupt ones, so start the next try from scratch.
            part.unlink(missing_ok=True)
            raise DownloadError(
                f"checksum mismatch for {dest.name} from {url}: expected md5 {md5}, got "
                f"{actual}; the downloaded file was deleted: run the download again, or fetch "
                "the file from the official site and check its md5"
            )
    os.replace(part, dest)
    return dest


def _attempt(
    opener: urllib.request.OpenerDirector,
    url: str,
    part: Path,
    *,
    timeout: float,
    progress: bool,
    desc: str,
) -> None:
    """Make one request and append what arrives to ``part``; raise _Retryable if cut short."""
    offset = part.stat().st_size if part.is_file() else 0
    req = urllib.request.Request(url, headers={"User-Agent": _USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    try:
        resp = opener.open(req, timeout=timeout)
    except urllib.error.HTTPError as e:
        e.close()
        if e.code == 416 and offset:
            # The .part is as long as (or longer than) the file: it cannot be resumed.
            part.unlink(missing_ok=True)
            raise _Retryable("server refused to resume the partial file (HTTP 416)") from None
        if 500 <= e.code < 600:
            raise _Retryable(f"server error HTTP {e.code} {e.reason}") from None
        raise DownloadError(f"cannot download {url}: HTTP {e.code} {e.reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):
            # Name resolution failing means no network (or a typo): retrying will not help.
            host = urllib.request.urlparse(url).hostname
            raise DownloadError(
                f"cannot download {url}: cannot resolve host {host} ({e.reason.strerror}); "
                f"{NETWORK_HINT}"
            ) from None
        raise _Retryable(_describe(e.reason), network=True) from None
    except (OSError, http.client.HTTPException) as e:
        raise _Retryable(_describe(e), network=True) from None

    with resp:
        status = resp.status
        length = resp.headers.get("Content-Length")
        expected = int(length) if length and length.isdigit() else None
        total = None
        mode = "ab"
        if status == 206:
            start, total = _parse_content_range(resp.headers.get("Content-Range", ""))
            if start != offset:
                if start != 0:
                    part.unlink(missing_ok=True)
                    raise _Retryable(f"server resumed at byte {start}, not {offset}")
                mode, offset = "wb", 0
        else:
            # 200: the server ignored the Range header and sends the whole file.
            mode, offset = "wb", 0
            total = expected
        received = 0
        with (
            open(part, mode) as f,
            tqdm(
                total=total,
                initial=offset,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=desc,
                disable=not progress,
            ) as bar,
        ):
            try:
                # read1 returns whatever has arrived, so bytes received before a stall are
                # on disk and the next attempt resumes after them.
                while chunk := resp.read1(_CHUNK):
                    f.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
            except TimeoutError:
                raise _Retryable(f"no data for {timeout:g} s (server stalled)") from None
            except (OSError, http.client.HTTPException) as e:
                raise _Retryable(_describe(e), network=True) from None
    if expected is not None and received < expected:
        raise _Retryable(
            f"connection closed after {offset + received} of {offset + expected} bytes"
        )
    if total is not None and offset + received != total:
        raise _Retryable(f"got {offset + received} bytes, expected {total}")


def _parse_content_range(value: str) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL or None)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not m:
        raise _Retryable(f"bad Content-Range header {value!r} in a 206 response")
    total = None if m.group(3) == "*" else int(m.group(3))
    return int(m.group(1)), total


def _describe(err: object) -> str:
    """A short description of a low-level network error."""
    if isinstance(err, TimeoutError):
        return "connection timed out"
    if isinstance(err, ConnectionRefusedError):
        return "connection refused"
    if isinstance(err, ConnectionResetError):
        return "connection reset by the server"
    if isinstance(err, http.client.IncompleteRead):
        return f"connection closed early ({len(err.partial)} bytes read)"
    if isinstance(err, OSError) and err.strerror:
        return err.strerror
    return str(err) or type(err).__name__


def _looks_complete(folder: Path, info: DatasetInfo, fmt: str) -> bool:
    """Whether ``folder`` holds every file of an extracted official archive.

    Binary record files must have their exact official size (enough to tell a complete
    extraction from an interrupted one without hashing 170 MB); python files must be there
    and not empty.
    """
    if not folder.is_dir():
        return False
    if fmt == "binary":
        sizes = info.binary_file_sizes()
        return bool(sizes) and all(
            (folder / f).is_file() and (folder / f).stat().st_size == size
            for f, size in sizes.items()
        )
    names = info.python_layout.files
    return bool(names) and all(
        (folder / f).is_file() and (folder / f).stat().st_size > 0 for f in names
    )


def download_dataset(
    name: str,
    root: Path,
    fmt: str = "python",
    *,
    base_url: str | None = None,
    progress: bool = True,
    **kw,
) -> Path:
    """Download and extract the official ``fmt`` archive of ``name`` under ``root``.

    The URL is ``base_url`` (else ``$CIFARLAB_MIRROR``, else the official site) joined with
    the archive's file name; the official md5 is always checked. Returns the extracted
    folder, without downloading anything if it is already there and complete. ``kw`` goes
    to :func:`download_file` (retries, backoff, timeout).
    """
    from cifarlab.data.extract import new_folder, safe_extract

    info = get_info(name)
    if fmt not in info.archives:
        raise DownloadError(
            f"{info.title} has no {fmt!r} archive: choose one of {', '.join(info.archives)}"
        )
    archive = info.archives[fmt]
    root = Path(root)
    folder = root / archive.folder
    if _looks_complete(folder, info, fmt):
        return folder
    base = base_url or os.environ.get(MIRROR_ENV) or None
    url = f"{base.rstrip('/')}/{archive.filename}" if base else archive.url
    with new_folder(root):  # a failed download leaves no empty folder behind
        path = download_file(url, root / archive.filename, archive.md5, progress=progress, **kw)
    safe_extract(path, root)
    return folder
