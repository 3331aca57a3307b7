"""Download the CIFAR archives: resumable, retried, checksum-verified, stdlib only.

A download goes to ``<dest>.part`` and is renamed into place only once it is complete and
its md5 matches, so ``dest`` never exists half-written. Transient failures (a stalled or
reset connection, a short body, HTTP 5xx, a server slower than the minimum rate) are retried
with exponential backoff, each retry resuming from the bytes already on disk. Failures that
retrying cannot fix (no DNS, HTTP 4xx, a wrong checksum, a full disk, the overall deadline)
are reported at once.

Bounds (:mod:`cifarlab.limits`): every socket operation has a timeout; the whole download,
retries and waits included, has a deadline (``CIFARLAB_DOWNLOAD_DEADLINE_S``); an attempt
that averages less than ``CIFARLAB_DOWNLOAD_MIN_RATE_KBS`` over a minute is dropped; a file
larger than ``CIFARLAB_MAX_DATA_FILE_MB`` is refused. The ``.part`` file is never followed
through a symbolic link.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import hashlib
import http.client
import os
import re
import socket
import stat
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import urlsplit

from tqdm import tqdm

from cifarlab import limits
from cifarlab.data.extract import new_folder, safe_extract
from cifarlab.data.sources import DatasetInfo, get_info
from cifarlab.errors import CifarlabError, DataError, DownloadError, one_line
from cifarlab.files import disk_problem, file_kind, open_input, size_text

NETWORK_HINT = (
    "no network? download it elsewhere and point cifarlab at the folder with "
    "--root DIR or CIFARLAB_DATA=DIR"
)
MIRROR_ENV = "CIFARLAB_MIRROR"
_CHUNK = 1 << 16
_USER_AGENT = "cifarlab (python urllib)"
_SCHEMES = ("http", "https")


class _Retryable(Exception):
    """One attempt failed in a way another attempt may fix."""

    def __init__(self, message: str, network: bool = False, slow: bool = False) -> None:
        super().__init__(message)
        self.network = network  # whether the hint about offline use applies
        self.slow = slow  # dropped for sending below the minimum rate


class _WriteFailed(Exception):
    """Writing the .part file failed (disk full, read-only...): not the network's fault."""

    def __init__(self, err: OSError) -> None:
        super().__init__(str(err))
        self.err = err


class _DeadlinePassed(Exception):
    """The overall deadline passed during an attempt."""


@dataclass(frozen=True)
class _Job:
    """One download: what each of its attempts uses."""

    opener: urllib.request.OpenerDirector
    url: str
    part: Path  # where the bytes go until the file is complete and verified
    desc: str  # the progress bar's label
    timeout: float  # seconds, for every socket operation
    progress: bool
    ends: float  # the time.monotonic() by which the whole download must be done
    min_rate: float  # bytes/s
    rate_window: float  # seconds
    max_bytes: int


def _data_file_limit() -> int:
    return limits.megabytes(limits.MAX_DATA_FILE)


def md5sum(
    path: Path,
    chunk: int = 1 << 20,
    *,
    max_bytes: int | None = None,
    error: type[CifarlabError] = DataError,
) -> str:
    """Return the hex md5 of the regular file at ``path``.

    The file is opened with :func:`cifarlab.files.open_input`: a FIFO, a device or a folder
    is ``error`` naming it (without blocking), and so is a file over ``max_bytes`` (default
    ``CIFARLAB_MAX_DATA_FILE_MB``), before a byte is hashed.
    """
    limit = _data_file_limit() if max_bytes is None else max_bytes
    h = hashlib.md5()
    with open_input(path, limit, error, f"{limits.MAX_DATA_FILE.env}=MB") as f:
        try:
            while block := f.read(chunk):
                h.update(block)
        except OSError as e:
            raise error(f"{path}: cannot read ({one_line(e.strerror or e)})") from None
    return h.hexdigest()


def check_url(url: str, origin: str = "") -> str:
    """``url`` if it is an http(s) URL with a host, on one line; else a one-line
    :class:`DownloadError` (``origin`` says where it came from, e.g. ``CIFARLAB_MIRROR``)."""
    where = f" (from {origin})" if origin else ""
    shown = one_line(repr(url), 200) if isinstance(url, str) else type(url).__name__

    def bad(why: str) -> DownloadError:
        return DownloadError(f"bad download URL {shown}{where}: {why}")

    if not isinstance(url, str) or not url:
        raise bad("it is empty")
    if any(c.isspace() or not c.isprintable() for c in url):
        raise bad("it holds spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError as e:
        raise bad(f"not a URL ({one_line(e)})") from None
    if parts.scheme.lower() not in _SCHEMES:
        if not parts.scheme:
            raise bad("not a URL: it must start with http:// or https://")
        raise bad(f"the scheme {parts.scheme!r} is not supported: use http:// or https://")
    if not host:
        raise bad("it names no host")
    return url


def download_file(
    url: str,
    dest: Path,
    md5: str | None,
    *,
    retries: int = 4,
    slow_retries: int = 0,
    backoff: float = 1.0,
    timeout: float = 30.0,
    progress: bool = True,
    deadline: float | None = None,
    min_rate: float | None = None,
    rate_window: float = 60.0,
    max_bytes: int | None = None,
) -> Path:
    """Download ``url`` to ``dest`` (resuming ``dest.part``), verify ``md5``, return ``dest``.

    ``retries`` is the number of extra attempts after the first; the waits between them are
    ``backoff``, ``2 * backoff``, ... seconds. Before a retry, a line on stderr says why the
    attempt failed (when ``progress``). ``timeout`` bounds every socket operation, so a
    server that stops sending fails the attempt instead of hanging. ``deadline`` (seconds,
    default ``CIFARLAB_DOWNLOAD_DEADLINE_S``) bounds the whole download, every attempt and
    wait included. An attempt whose average rate over any ``rate_window`` seconds is below
    ``min_rate`` bytes/s (default ``CIFARLAB_DOWNLOAD_MIN_RATE_KBS``) is dropped, so a server
    that trickles bytes cannot hold it forever; it is retried only ``slow_retries`` times
    (default 0: a mirror that slow rarely recovers, and each try costs a whole
    ``rate_window``; the partial file is kept for the next run). A file over
    ``max_bytes`` (default ``CIFARLAB_MAX_DATA_FILE_MB``) is refused. If ``dest`` already
    exists with the right md5 (or ``md5`` is None), it is returned without downloading.
    Raises :class:`DownloadError` with a one-line message on failure.
    """
    check_url(url)
    dest = Path(dest)
    md5 = md5.lower() if md5 else None
    deadline = float(limits.DOWNLOAD_DEADLINE) if deadline is None else float(deadline)
    min_rate = float(limits.DOWNLOAD_MIN_RATE) * 1024 if min_rate is None else float(min_rate)
    max_bytes = _data_file_limit() if max_bytes is None else int(max_bytes)
    ends = time.monotonic() + deadline

    if _have(dest, md5, max_bytes):
        return dest
    part = dest.with_name(dest.name + ".part")
    _make_folder(url, dest.parent)
    _part_size(part)  # a link or a device there is refused before going to the network
    job = _Job(
        # Built per call (not urllib's global opener) so proxy settings in the environment
        # are read now rather than frozen at the first download of the process.
        opener=urllib.request.build_opener(),
        url=url,
        part=part,
        desc=dest.name,
        timeout=timeout,
        progress=progress,
        ends=ends,
        min_rate=min_rate,
        rate_window=rate_window,
        max_bytes=max_bytes,
    )
    _fetch(job, retries=retries, slow_retries=slow_retries, backoff=backoff, deadline=deadline)
    if md5 is not None:
        _check_md5(job, dest.name, md5)
    _move_into_place(part, dest)
    return dest


def _make_folder(url: str, folder: Path) -> None:
    """Create the folder the download goes to; a failure says why (full, read-only...)."""
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot download {url}: cannot create {folder}: "
            f"{disk_problem(e, folder) or one_line(e.strerror or e)}"
        ) from None


def _fetch(job: _Job, *, retries: int, slow_retries: int, backoff: float, deadline: float) -> None:
    """Make attempts until one completes ``job.part``: ``retries + 1`` at most (after a drop
    for slowness, ``slow_retries`` more at most), ``backoff``, ``2 * backoff``, ... seconds
    apart, all within ``deadline`` seconds (``job.ends``). Whatever stops them is a one-line
    DownloadError."""
    attempts = max(0, retries) + 1
    last: _Retryable | None = None
    made = slow = 0
    try:
        for attempt in range(attempts):
            _wait_turn(attempt, backoff, job.ends)
            made += 1
            try:
                _attempt(job)
                return
            except _Retryable as e:
                last = e
                slow += e.slow
                if e.slow and slow > slow_retries:
                    attempts = made
                    break
                if made < attempts and job.progress:
                    wait = backoff * 2 ** (made - 1)
                    print(
                        f"{job.desc}: attempt {made} of {attempts} failed: {e}; "
                        f"trying again in {wait:g} s{_kept(job.part)}",
                        file=sys.stderr,
                        flush=True,
                    )
    except _DeadlinePassed:
        why = f" (the last attempt: {last})" if last is not None else ""
        raise DownloadError(
            f"cannot download {job.url}: not done within the deadline of {deadline:g} s after "
            f"{made} attempt{'s' if made != 1 else ''}{why}{_kept(job.part)}; raise the "
            f"deadline with {limits.DOWNLOAD_DEADLINE.env}=SECONDS"
        ) from None
    except _WriteFailed as e:
        _remove(job.part)
        why = disk_problem(e.err, job.part.parent) or one_line(e.err.strerror or e.err)
        raise DownloadError(
            f"cannot download {job.url}: cannot write {job.part}: {why}; the partial file was "
            "deleted (the download itself was fine: make room or choose another folder)"
        ) from None
    assert last is not None
    hint = f"; {NETWORK_HINT}" if last.network else ""
    if last.slow and slow > slow_retries:
        hint += (
            "; not tried again: a mirror this slow rarely recovers (run the command again "
            "to resume, or choose another mirror)"
        )
    raise DownloadError(
        f"cannot download {job.url}: {last} (gave up after {attempts} attempt"
        f"{'s' if attempts != 1 else ''}){_kept(job.part)}{hint}"
    )


def _wait_turn(attempt: int, backoff: float, ends: float) -> None:
    """Wait before attempt number ``attempt`` (0 for the first, which does not wait); raise
    _DeadlinePassed if it could not start before ``ends``."""
    if attempt:
        wait = backoff * 2 ** (attempt - 1)
        if time.monotonic() + wait >= ends:
            raise _DeadlinePassed
        time.sleep(wait)
    if time.monotonic() >= ends:
        raise _DeadlinePassed


def _check_md5(job: _Job, name: str, md5: str) -> None:
    """Delete the downloaded ``job.part`` and say so if its md5 is not ``md5``."""
    actual = md5sum(job.part, max_bytes=job.max_bytes, error=DownloadError)
    if actual != md5:
        # A bad file is useless for resuming too: the bytes already there may be the
        # corrupt ones, so start the next try from scratch.
        _remove(job.part)
        raise DownloadError(
            f"checksum mismatch for {name} from {job.url}: expected md5 {md5}, got "
            f"{actual}; the downloaded file was deleted: run the download again, or fetch "
            "the file from the official site and check its md5"
        )


def _move_into_place(part: Path, dest: Path) -> None:
    try:
        os.replace(part, dest)
    except OSError as e:
        raise DownloadError(
            f"cannot move {part} to {dest}: "
            f"{disk_problem(e, dest.parent) or one_line(e.strerror or e)}"
        ) from None


def _have(dest: Path, md5: str | None, max_bytes: int) -> bool:
    """Whether ``dest`` is already the file: a regular file (or a link to one) with the right
    md5. Anything at ``dest`` that a download could not replace is refused here, before the
    download; a regular file too large to be the file is not hashed (it is replaced)."""
    try:
        lst = os.lstat(dest)
    except FileNotFoundError:
        return False
    except OSError as e:
        raise DownloadError(f"cannot use {dest}: {one_line(e.strerror or e)}") from None
    if not (stat.S_ISREG(lst.st_mode) or stat.S_ISLNK(lst.st_mode)):
        raise DownloadError(
            f"cannot download to {dest}: it is {file_kind(lst.st_mode)}, not a regular file "
            "(remove it or choose another folder)"
        )
    try:
        st = os.stat(dest)
    except OSError:
        return False  # a dangling link: replaced by the download (the link, not its target)
    if not stat.S_ISREG(st.st_mode):
        return False
    if md5 is None:
        return True
    if st.st_size > max_bytes:
        return False
    try:
        return md5sum(dest, max_bytes=max_bytes, error=DownloadError) == md5
    except DownloadError:
        return False  # unreadable: download it again


def _remove(path: Path) -> None:
    with contextlib.suppress(OSError):
        path.unlink(missing_ok=True)


def _kept(part: Path) -> str:
    try:
        st = os.lstat(part)
    except OSError:
        return ""
    if stat.S_ISREG(st.st_mode) and st.st_size:
        return "; the partial file is kept and will be resumed"
    return ""


def _part_size(part: Path) -> int:
    """The bytes already in ``part`` (0 if there is none); refuse anything there but a regular
    file: a symbolic link would make the download write into its target."""
    try:
        st = os.lstat(part)
    except FileNotFoundError:
        return 0
    except OSError as e:
        raise DownloadError(f"cannot use {part}: {one_line(e.strerror or e)}") from None
    if stat.S_ISLNK(st.st_mode):
        raise DownloadError(
            f"{part} is a symbolic link; refusing to download through it (remove it)"
        )
    if not stat.S_ISREG(st.st_mode):
        raise DownloadError(
            f"{part} is {file_kind(st.st_mode)}, not a regular file; refusing to download "
            "into it (remove it)"
        )
    return st.st_size


def _open_part(part: Path, append: bool) -> BinaryIO:
    """Open ``part`` for writing without following a symbolic link (``O_NOFOLLOW``) and only
    if it is a regular file; a failure to create it is the disk's, not the network's."""
    flags = os.O_WRONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
    flags |= getattr(os, "O_NONBLOCK", 0) | (os.O_APPEND if append else os.O_TRUNC)
    try:
        fd = os.open(part, flags, 0o666)
    except OSError as e:
        if os.path.islink(part):
            raise DownloadError(
                f"{part} is a symbolic link; refusing to download through it (remove it)"
            ) from None
        raise _WriteFailed(e) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise DownloadError(
                f"{part} is {file_kind(st.st_mode)}, not a regular file; refusing to download "
                "into it (remove it)"
            )
        os.set_blocking(fd, True)
        # unbuffered: every write reaches the file at once, so a full disk shows at the
        # write that hit it (never later, at a close on the way out of another error)
        return os.fdopen(fd, "ab" if append else "wb", buffering=0)
    except BaseException:
        os.close(fd)
        raise


class _Pace:
    """Drop an attempt whose average rate over the last ``window`` seconds is below
    ``min_rate`` bytes/s (checked each time data arrives), or that runs past ``ends``."""

    def __init__(self, min_rate: float, window: float, ends: float) -> None:
        self.min_rate, self.window, self.ends = min_rate, window, ends
        now = time.monotonic()
        self.samples: collections.deque[tuple[float, int]] = collections.deque([(now, 0)])

    def update(self, total: int) -> None:
        now = time.monotonic()
        if now >= self.ends:
            raise _DeadlinePassed
        if self.min_rate <= 0 or self.window <= 0:
            return
        if now - self.samples[-1][0] >= self.window / 64:  # a few dozen samples per window
            self.samples.append((now, total))
        # keep the newest sample at least one window old as the start of the span
        while len(self.samples) > 1 and self.samples[1][0] <= now - self.window:
            self.samples.popleft()
        t0, b0 = self.samples[0]
        span = now - t0
        if span >= self.window and total - b0 < self.min_rate * span:
            rate = (total - b0) / span
            raise _Retryable(
                f"the server sent {_rate(rate)} on average over {span:.0f} s, below the "
                f"minimum of {_rate(self.min_rate)} (change it with "
                f"{limits.DOWNLOAD_MIN_RATE.env}=KB/s)",
                slow=True,
            )


def _rate(bytes_per_s: float) -> str:
    if bytes_per_s >= 1024:
        return f"{bytes_per_s / 1024:,.1f} KB/s"
    return f"{bytes_per_s:,.0f} B/s"


def _attempt(job: _Job) -> None:
    """Make one request and append what arrives to ``job.part``; raise _Retryable if cut
    short, _WriteFailed if ``job.part`` cannot be written, _DeadlinePassed past ``job.ends``."""
    offset = _part_size(job.part)
    resp = _request(job, offset)
    with resp:
        append, offset, total, expected = _read_headers(job, resp, offset)
        received, oversize = _receive(job, resp, append, offset, total)
    if oversize:
        _remove(job.part)
        raise _too_big(job.url, offset + received, job.max_bytes, sent=True)
    if expected is not None and received < expected:
        raise _Retryable(
            f"connection closed after {offset + received} of {offset + expected} bytes"
        )
    if total is not None and offset + received != total:
        raise _Retryable(f"got {offset + received} bytes, expected {total}")


def _request(job: _Job, offset: int) -> http.client.HTTPResponse:
    """Ask for the file from byte ``offset`` on. A failure another attempt may fix is
    _Retryable; one it cannot (no DNS, HTTP 4xx) is a DownloadError."""
    req = urllib.request.Request(job.url, headers={"User-Agent": _USER_AGENT})
    if offset:
        req.add_header("Range", f"bytes={offset}-")
    left = job.ends - time.monotonic()
    if left <= 0:
        raise _DeadlinePassed
    try:
        return job.opener.open(req, timeout=min(job.timeout, left))
    except urllib.error.HTTPError as e:
        e.close()
        reason = one_line(e.reason, 100)
        if e.code == 416 and offset:
            # The .part is as long as (or longer than) the file: it cannot be resumed.
            _remove(job.part)
            raise _Retryable("server refused to resume the partial file (HTTP 416)") from None
        if 500 <= e.code < 600:
            raise _Retryable(f"server error HTTP {e.code} {reason}") from None
        raise DownloadError(f"cannot download {job.url}: HTTP {e.code} {reason}") from None
    except urllib.error.URLError as e:
        if isinstance(e.reason, socket.gaierror):
            # Name resolution failing means no network (or a typo): retrying will not help.
            host = urlsplit(job.url).hostname
            raise DownloadError(
                f"cannot download {job.url}: cannot resolve host {host} "
                f"({one_line(e.reason.strerror or e.reason)}); {NETWORK_HINT}"
            ) from None
        raise _Retryable(_describe(e.reason), network=True) from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _Retryable(_describe(e), network=True) from None


def _read_headers(
    job: _Job, resp: http.client.HTTPResponse, offset: int
) -> tuple[bool, int, int | None, int | None]:
    """What the response sends: (whether it continues the ``offset`` bytes of ``job.part``
    or starts it afresh, the offset it starts at, the file's total size, the body's length),
    sizes None where not said. A resume at another byte, or a file over ``job.max_bytes``,
    is refused."""
    status = resp.status
    length = resp.headers.get("Content-Length")
    expected = int(length) if length and length.isdigit() else None
    total = None
    append = True
    if status == 206:
        start, total = _parse_content_range(resp.headers.get("Content-Range", ""))
        if start != offset:
            if start != 0:
                _remove(job.part)
                raise _Retryable(f"server resumed at byte {start}, not {offset}")
            append, offset = False, 0
    else:
        # 200: the server ignored the Range header and sends the whole file.
        append, offset = False, 0
        total = expected
    size = total if total is not None else (offset + expected if expected else None)
    if size is not None and size > job.max_bytes:
        raise _too_big(job.url, size, job.max_bytes)
    return append, offset, total, expected


def _receive(
    job: _Job, resp: http.client.HTTPResponse, append: bool, offset: int, total: int | None
) -> tuple[int, bool]:
    """Write the body of ``resp`` to ``job.part`` (after its ``offset`` bytes if ``append``,
    else from the start), showing progress, at the pace ``job`` asks for. Return the bytes
    received, and whether the server sent more than ``job.max_bytes`` (the rest is not
    written)."""
    received = 0
    pace = _Pace(job.min_rate, job.rate_window, job.ends)
    with (
        _open_part(job.part, append) as f,
        tqdm(
            total=total,
            initial=offset,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=job.desc,
            disable=not job.progress,
        ) as bar,
    ):
        while chunk := _read_chunk(resp, job.timeout):
            if offset + received + len(chunk) > job.max_bytes:
                return received, True
            _write_all(f, chunk)
            received += len(chunk)
            bar.update(len(chunk))
            pace.update(received)
    return received, False


def _read_chunk(resp: http.client.HTTPResponse, timeout: float) -> bytes:
    """The next bytes of the body (b"" at its end); a stall or a broken connection is
    _Retryable."""
    try:
        # read1 returns whatever has arrived, so bytes received before a stall
        # are on disk and the next attempt resumes after them.
        return resp.read1(_CHUNK)
    except TimeoutError:
        raise _Retryable(f"no data for {timeout:g} s (server stalled)") from None
    except (OSError, http.client.HTTPException, ValueError) as e:
        raise _Retryable(_describe(e), network=True) from None


def _write_all(f: BinaryIO, data: bytes) -> None:
    """Write all of ``data`` to the unbuffered ``f`` (a write may take part of it)."""
    view = memoryview(data)
    try:
        while view:
            n = f.write(view)
            if not n:
                raise OSError(errno.EIO, "the file took no bytes")
            view = view[n:]
    except OSError as e:
        raise _WriteFailed(e) from None


def _too_big(url: str, size: int, max_bytes: int, sent: bool = False) -> DownloadError:
    what = "sent more than" if sent else f"says the file is {size_text(size)}, over"
    return DownloadError(
        f"cannot download {url}: the server {what} the limit of {size_text(max_bytes)} for a "
        "dataset file (the official archives are about 170 MB; raise the limit with "
        f"{limits.MAX_DATA_FILE.env}=MB); nothing was kept"
    )


def _parse_content_range(value: str) -> tuple[int, int | None]:
    """Parse ``bytes START-END/TOTAL`` into (START, TOTAL or None)."""
    m = re.fullmatch(r"\s*bytes\s+(\d+)-(\d+)/(\d+|\*)\s*", value)
    if not m:
        raise _Retryable(f"bad Content-Range header {one_line(repr(value), 80)} in a 206 response")
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
        return one_line(err.strerror)
    return one_line(str(err) or type(err).__name__)


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
    info = get_info(name)
    if fmt not in info.archives:
        raise DownloadError(
            f"{info.title} has no {fmt!r} archive: choose one of {', '.join(info.archives)}"
        )
    archive = info.archives[fmt]
    if base_url is not None:
        check_url(base_url)
    base = base_url or os.environ.get(MIRROR_ENV) or None
    if base is not None and base_url is None:
        check_url(base, MIRROR_ENV)
    root = Path(root)
    folder = root / archive.folder
    if _looks_complete(folder, info, fmt):
        return folder
    url = f"{base.rstrip('/')}/{archive.filename}" if base else archive.url
    with new_folder(root, DownloadError):  # a failed download leaves no empty folder behind
        path = download_file(url, root / archive.filename, archive.md5, progress=progress, **kw)
    safe_extract(path, root)
    return folder
