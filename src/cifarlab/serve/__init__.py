"""``cifarlab serve``: a web page and an HTTP API for trained runs (``pip install
'cifarlab[serve]'``: FastAPI, uvicorn, python-multipart).

- :mod:`cifarlab.serve.engine`: the served runs, their backend, the micro-batcher;
- :mod:`cifarlab.serve.app`: the FastAPI app (routes, limits, token, JSON errors);
- ``page.html``: the page (one file: no script, style or font from the internet);
- :mod:`cifarlab.serve.docs`: the offline API docs page, from ``/openapi.json``.

:func:`serve` loads every run first (a broken run folder is one line, before any port is
opened), binds the socket itself (a port in use is one line too), then hands it to uvicorn.
"""

from __future__ import annotations

import errno
import ipaddress
import json
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

from cifarlab.errors import CifarlabError, one_line

if TYPE_CHECKING:
    from cifarlab.serve.app import Settings
    from cifarlab.serve.engine import ServedRun

TOKEN_ENV = "CIFARLAB_SERVE_TOKEN"
EXTRA = "pip install 'cifarlab[serve]'"


def require() -> None:
    """A one-line error naming the extra when FastAPI, uvicorn or python-multipart is missing."""
    missing = []
    # python-multipart's module is python_multipart (older releases: multipart only)
    for modules, package in (
        (("fastapi",), "fastapi"),
        (("uvicorn",), "uvicorn"),
        (("python_multipart", "multipart"), "python-multipart"),
    ):
        if not any(_importable(m) for m in modules):
            missing.append(package)
    if missing:
        raise CifarlabError(f"cifarlab serve needs {', '.join(missing)}: {EXTRA}")


def _importable(module: str) -> bool:
    import importlib.util

    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):  # a module set to None in sys.modules: not importable
        return False


def load_runs(
    paths: Sequence[str | os.PathLike],
    *,
    backend: str = "auto",
    checkpoint: str = "best",
    threads: int | None = None,
    tta: int | None = None,
    calibrated: bool = True,
) -> list[ServedRun]:
    """Every run, opened and ready to serve; two runs of the same folder name are refused (the
    name is how a request chooses one)."""
    from cifarlab.serve.engine import load_served

    runs: list[ServedRun] = []
    for p in paths:
        served = load_served(p, backend=backend, checkpoint=checkpoint, threads=threads, tta=tta,
                             calibrated=calibrated)  # fmt: skip
        if any(r.name == served.name for r in runs):
            raise CifarlabError(
                f"two runs named {served.name!r}: a request chooses a run by "
                "its folder's name, so serve runs with different names"
            )
        runs.append(served)
    return runs


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def bind(host: str, port: int) -> socket.socket:
    """The listening socket, or one line saying why not (a port in use, an unknown host)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as e:
        raise CifarlabError(f"--host {host}: cannot listen there ({e.strerror})") from None
    family, _, _, _, address = infos[0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(2048)
    except OSError as e:
        sock.close()
        why = e.strerror or one_line(e)
        hint = (
            "; another program has this port: choose another --port"
            if (e.errno == errno.EADDRINUSE)
            else ""
        )
        raise CifarlabError(f"cannot listen on {host}:{port} ({why}{hint})") from None
    sock.set_inheritable(True)
    return sock


def url_of(sock: socket.socket, host: str) -> str:
    port = sock.getsockname()[1]
    shown_host = "127.0.0.1" if host in ("0.0.0.0", "") else "[::1]" if host == "::" else host
    if ":" in shown_host and not shown_host.startswith("["):
        shown_host = f"[{shown_host}]"
    return f"http://{shown_host}:{port}/"


class _Stopped(Exception):
    """SIGTERM, once uvicorn has stopped serving."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


def settle_heap() -> None:
    """Move every object alive after start-up (torch, the models, FastAPI: ~200,000) out of
    the garbage collector's sight. A full collection walks them all: 0.12 s on the Zen 4
    machine, which every request in flight waited for (it was the p99 latency under load);
    after ``gc.freeze`` it walks only what requests allocate."""
    import gc

    gc.collect()
    gc.freeze()


def _stopping_server(config: Any, stopping: threading.Event) -> Any:
    """uvicorn's server, which also tells the app it is stopping (decoding then stops between
    files, so Ctrl-C never waits for the last images of a big request)."""
    import uvicorn

    class Server(uvicorn.Server):
        def handle_exit(self, sig: int, frame: Any) -> None:
            stopping.set()
            super().handle_exit(sig, frame)

    return Server(config)


def serve(
    paths: Sequence[str | os.PathLike],
    settings: Settings,
    *,
    host: str = "127.0.0.1",
    port: int = 8000,
    workers: int = 1,
    backend: str = "auto",
    checkpoint: str = "best",
    access_log: bool = False,
    tta: int | None = None,
    threads: int | None = None,
    calibrated: bool = True,
) -> int:
    """Load the runs, open the port, serve until Ctrl-C (or SIGTERM); 0 once stopped."""
    require()
    import torch
    import uvicorn

    from cifarlab.serve.app import create_app

    cores = os.cpu_count() or 1
    threads = threads or max(1, min(torch.get_num_threads(), cores // workers))
    torch.set_num_threads(threads)
    runs = load_runs(paths, backend=backend, checkpoint=checkpoint, threads=threads, tta=tta,
                     calibrated=calibrated)  # fmt: skip
    sock = bind(host, port)
    url = url_of(sock, host)
    for r in runs:
        acc = (
            f"test accuracy {r.test_accuracy:.2%}"
            if r.test_accuracy is not None
            else "not evaluated"
        )
        print(
            f"serving {r.name} ({r.run.config.get('model')}, {acc}; backend: {r.backend_note}; "
            f"{r.run.calibration_note})",
            flush=True,
        )
    if not is_loopback(host):
        print(
            f"warning: listening on {host}: the model is reachable from the network"
            + ("" if settings.token else " (without a token: --token)"),
            file=sys.stderr,
            flush=True,
        )
    auth = " (API calls need the token)" if settings.token else ""
    print(f"cifarlab serve: {url}{auth} — docs at {url}docs; Ctrl-C stops", flush=True)
    kwargs = dict(
        log_level="warning",
        access_log=access_log,
        timeout_graceful_shutdown=5,
        server_header=False,
        lifespan="on",
    )
    # uvicorn stops on SIGINT and SIGTERM, then raises the signal again once it has: ours turns
    # that into the clean end below (Python's default for SIGTERM would kill the process)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if workers <= 1:
            app = create_app(runs, settings)
            config = uvicorn.Config(app, **kwargs)
            settle_heap()
            _stopping_server(config, app.state.stopping).run(sockets=[sock])
        else:
            from uvicorn.supervisors import Multiprocess

            # each worker loads its own copy (below: runs is dropped once the spec is written)
            spec = {
                "runs": [os.fspath(Path(p).resolve()) for p in paths],
                # the parent's choice of backend, measured once, for every worker
                "backends": [[r.backend_name, r.backend_note] for r in runs],
                "checkpoint": checkpoint,
                "threads": threads,
                "tta": tta,
                "calibrated": calibrated,
                "settings": {k: v for k, v in asdict(settings).items() if k != "token"},
            }
            del runs
            os.environ["CIFARLAB_SERVE_SPEC"] = json.dumps(spec)
            if settings.token:
                os.environ[TOKEN_ENV] = settings.token
            config = uvicorn.Config(
                "cifarlab.serve.app:app_from_env", factory=True, workers=workers, **kwargs
            )
            import inspect

            server = uvicorn.Server(config)
            # uvicorn < 0.36 takes the worker's function; newer ones build it from the config
            if "target" in inspect.signature(Multiprocess).parameters:
                Multiprocess(config, target=server.run, sockets=[sock]).run()
            else:
                Multiprocess(config, sockets=[sock]).run()
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("cifarlab serve: stopped", flush=True)
    return 0
