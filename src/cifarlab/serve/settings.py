"""What ``cifarlab serve`` is started with, and the extra it needs. Nothing here imports FastAPI,
uvicorn or torch: ``cifarlab serve --help``, the option checks and :func:`require` run without
them.

- :class:`Settings`: how every request is handled (limits, batching, threads, the token);
- :class:`Launch`: how the server starts (where it listens, its processes, how runs are loaded);
- :func:`token_from`: ``--token``, else ``$CIFARLAB_SERVE_TOKEN``;
- :func:`require`: one line naming the extra when one of its packages is missing.

Both settings objects check their values when they are built: a value out of range is a
:class:`~cifarlab.errors.SettingError` naming the field, which the CLI shows as its option
(``max_upload_mb`` → ``--max-upload-mb``).
"""

from __future__ import annotations

import importlib.util
import math
import os
import re
from dataclasses import dataclass

from cifarlab.errors import CifarlabError, SettingError

TOKEN_ENV = "CIFARLAB_SERVE_TOKEN"
EXTRA = "pip install 'cifarlab[serve]'"
# RFC 6750's token characters: what an HTTP header carries as is
TOKEN = re.compile(r"[A-Za-z0-9._~+/=-]{1,512}")
# the packages of the extra, each by the modules it may install (python-multipart's module is
# python_multipart; older releases: multipart only)
PACKAGES = (
    (("fastapi",), "fastapi"),
    (("uvicorn",), "uvicorn"),
    (("python_multipart", "multipart"), "python-multipart"),
)


def require() -> None:
    """A one-line error naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = [
        package
        for modules, package in PACKAGES
        if not any(_importable(module) for module in modules)
    ]
    if missing:
        raise CifarlabError(f"cifarlab serve needs {', '.join(missing)}: {EXTRA}")


def _importable(module: str) -> bool:
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: not importable
        return False


def token_from(given: str | None) -> str | None:
    """The API token: ``--token`` when given, else ``$CIFARLAB_SERVE_TOKEN`` (unset or empty:
    no token)."""
    return given if given is not None else os.environ.get(TOKEN_ENV) or None


def _check(name: str, ok: bool, what: str, others: tuple[str, ...] = ()) -> None:
    if not ok:
        raise SettingError(name, f"must be {what}", others)


@dataclass
class Settings:
    """How the server handles requests (the CLI's options; every worker gets the same)."""

    max_upload_mb: float = 10.0
    max_files: int = 128
    token: str | None = None
    batching: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    uncertain_below: float = 0.5
    decode_threads: int = 2
    # the model's threads in each worker (None: the cores divided among the workers)
    threads: int | None = None
    # the pixels of one request's images together, read from their headers
    max_request_megapixels: float = 64.0
    # the memory held for requests, all together: each body from its first byte until its
    # decoding ends, and each image's decoding by its decoded size; past it, 503 (a crowd of
    # slow uploads or big images cannot fill the memory). Above the costliest request the
    # other limits allow: 64 megapixels of 32-bit grey decode in 832 MB.
    max_pending_mb: float = 1024.0
    body_timeout_s: float = 60.0  # how long one body may take to arrive (408)
    # Clients, below the app (serve/protocol.py): the request head (line, headers) in size
    # and count, and the time it may take; how long a connection may sit without a request;
    # open connections (of each worker process) in all and per client address; the grace
    # period of a stop.
    max_request_line_kb: float = 8.0
    max_header_kb: float = 32.0
    max_headers: int = 100
    header_timeout_s: float = 10.0
    idle_timeout_s: float = 5.0
    max_connections: int = 512
    max_connections_per_client: int = 64
    grace_s: float = 10.0

    def __post_init__(self) -> None:
        """Each option in its range, in the order of the CLI's checks (the first wrong one is
        the one reported)."""
        mb = self.max_upload_mb
        _check(
            "max_upload_mb",
            math.isfinite(mb) and 0 < mb <= 1024,
            f"more than 0 and at most 1024, got {mb:g}",
        )
        _check("max_files", 1 <= self.max_files <= 10_000, f"1..10000, got {self.max_files}")
        _check(
            "uncertain_below",
            0 <= self.uncertain_below <= 1,
            f"a probability 0..1, got {self.uncertain_below:g}",
        )
        wait = self.batch_wait_ms
        _check("batch_wait_ms", 0 <= wait <= 1000, f"0..1000 ms, got {wait:g}")
        if self.threads is not None:
            _check("threads", 1 <= self.threads <= 1024, f"1..1024, got {self.threads}")
        _check("max_batch", 1 <= self.max_batch <= 4096, f"1..4096, got {self.max_batch}")
        pending = self.max_pending_mb
        _check(
            "max_pending_mb",
            math.isfinite(pending) and mb <= pending,
            f"at least {{others}} ({mb:g}), got {pending:g}",
            others=("max_upload_mb",),
        )
        self._check_clients()
        mp = self.max_request_megapixels
        _check(
            "max_request_megapixels",
            0 < mp <= 10_000,
            f"more than 0 and at most 10000, got {mp:g}",
        )
        if self.token is not None:
            _check(
                "token",
                bool(TOKEN.fullmatch(self.token)),
                "1 to 512 of A-Z a-z 0-9 - . _ ~ + / = (no spaces or other characters)",
            )

    def _check_clients(self) -> None:
        for name, most in (
            ("body_timeout_s", 86400),
            ("header_timeout_s", 3600),
            ("idle_timeout_s", 3600),
            ("grace_s", 3600),
        ):
            v = getattr(self, name)
            _check(
                name,
                math.isfinite(v) and 0 < v <= most,
                f"more than 0 and at most {most} s, got {v:g}",
            )
        line, head = self.max_request_line_kb, self.max_header_kb
        _check("max_request_line_kb", 0.1 <= line <= 1024, f"0.1..1024 KB, got {line:g}")
        _check(
            "max_header_kb",
            line <= head <= 1024,
            f"at least {{others}} ({line:g}) and at most 1024 KB, got {head:g}",
            others=("max_request_line_kb",),
        )
        _check("max_headers", 1 <= self.max_headers <= 10_000, f"1..10000, got {self.max_headers}")
        most = self.max_connections
        _check("max_connections", 1 <= most <= 1_000_000, f"1..1000000, got {most}")
        per = self.max_connections_per_client
        _check(
            "max_connections_per_client",
            1 <= per <= most,
            f"1 to {{others}} ({most}), got {per}",
            others=("max_connections",),
        )

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)

    @property
    def max_request_pixels(self) -> float:
        return self.max_request_megapixels * 1e6


@dataclass
class Launch:
    """How the server starts: where it listens, how many processes serve, how each loads the
    runs (backend, checkpoint, test-time augmentation, calibration), the access log."""

    host: str = "127.0.0.1"
    port: int = 8000
    workers: int = 1
    backend: str = "auto"
    checkpoint: str = "best"
    tta: int | None = None
    calibrated: bool = True
    access_log: bool = False

    def __post_init__(self) -> None:
        _check("port", 0 <= self.port <= 65535, f"0..65535, got {self.port}")
        _check("workers", 1 <= self.workers <= 64, f"1..64, got {self.workers}")
