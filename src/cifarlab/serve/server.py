"""Starting ``cifarlab serve``: :func:`serve` loads every run first (a broken run folder is one
line, before any port is opened), binds the socket itself (a port in use is one line too), then
hands it to uvicorn: one process, or ``--workers N`` through uvicorn's supervisor, each worker
building its app in :func:`app_from_env` with the backend the parent measured.

This module needs the extra (FastAPI, uvicorn): the CLI imports it once
:func:`cifarlab.serve.settings.require` has said they are there.
"""

from __future__ import annotations

import errno
import gc
import inspect
import ipaddress
import json
import math
import os
import signal
import socket
import sys
import threading
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path
from typing import Any

import torch
import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from cifarlab.data.cache import cache_dir
from cifarlab.errors import CifarlabError, one_line
from cifarlab.serve import protocol
from cifarlab.serve.app import create_app
from cifarlab.serve.engine import ServedRun, load_served
from cifarlab.serve.settings import TOKEN_ENV, Launch, Settings

# Connections' file descriptors beyond --max-connections: the listening socket, the runs'
# files, the thread pools, a connection being refused.
SPARE_FILES = 64

SPEC_ENV = "CIFARLAB_SERVE_SPEC"  # the parent's runs and settings, for each worker (JSON)


def serve(
    paths: Sequence[str | os.PathLike], settings: Settings, launch: Launch | None = None
) -> int:
    """Load the runs, open the port, serve until Ctrl-C (or SIGTERM); 0 once stopped."""
    launch = launch or Launch()
    keep_library_files_in_cache()
    settings = open_file_room(settings)
    cores = os.cpu_count() or 1
    threads = settings.threads or max(1, min(torch.get_num_threads(), cores // launch.workers))
    torch.set_num_threads(threads)
    runs = load_runs(
        paths,
        backend=launch.backend,
        checkpoint=launch.checkpoint,
        threads=threads,
        tta=launch.tta,
        calibrated=launch.calibrated,
    )
    sock = bind(launch.host, launch.port)
    announce(runs, launch.host, url_of(sock, launch.host), settings.token)
    options = _uvicorn_options(launch.access_log, settings)
    # uvicorn stops on SIGINT and SIGTERM, then raises the signal again once it has: ours turns
    # that into the clean end below (Python's default for SIGTERM would kill the process)
    previous = signal.signal(signal.SIGTERM, _stop)
    try:
        if launch.workers <= 1:
            stopping = threading.Event()
            protocol.install(settings, stopping)
            _serve_here(create_app(runs, settings, stopping), options, sock)
        else:
            _write_spec(paths, runs, settings, launch, threads)
            del runs  # each worker loads its own copy
            _serve_workers(launch.workers, options, sock)
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()
    print("cifarlab serve: stopped", flush=True)
    return 0


def keep_library_files_in_cache() -> None:
    """What libraries write on their own at start-up goes nowhere, or into cifarlab's cache:
    ONNX Runtime's telemetry (a ``.ses`` file in ``$TMPDIR``, a database under ``$HOME/.cache``)
    is turned off, and the ONNX export's compiler cache (``torchinductor_USER`` in ``$TMPDIR``)
    goes into the cache. A value the user set wins."""
    os.environ.setdefault("ORT_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", str(cache_dir() / "torchinductor"))


def open_file_room(settings: Settings) -> Settings:
    """Raise this process's open-file limit (its soft limit, up to the hard one) so that
    ``--max-connections`` fit; where the hard limit is lower, fewer connections, said in a
    line. With a limit too low, accepting fails for everyone (the 1,024 default)."""
    try:
        import resource
    except ImportError:  # not on this system: nothing to raise
        return settings
    need = settings.max_connections + SPARE_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    top = hard if hard != resource.RLIM_INFINITY else math.inf
    if soft != resource.RLIM_INFINITY and soft < need:
        new = int(min(need, top))
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (new, hard))
            soft = new
        except (ValueError, OSError):
            pass
    if soft != resource.RLIM_INFINITY and soft < need:
        most = max(1, soft - SPARE_FILES)
        print(
            f"note: the open-file limit is {soft}: --max-connections lowered from "
            f"{settings.max_connections} to {most}",
            file=sys.stderr,
            flush=True,
        )
        return replace(
            settings,
            max_connections=most,
            max_connections_per_client=min(settings.max_connections_per_client, most),
        )
    return settings


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
    runs: list[ServedRun] = []
    for p in paths:
        served = load_served(
            p,
            backend=backend,
            checkpoint=checkpoint,
            threads=threads,
            tta=tta,
            calibrated=calibrated,
        )
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


def announce(runs: list[ServedRun], host: str, url: str, token: str | None) -> None:
    """What is served, where, and a warning when the network can reach it."""
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
            + ("" if token else " (without a token: --token)"),
            file=sys.stderr,
            flush=True,
        )
    auth = " (API calls need the token)" if token else ""
    print(f"cifarlab serve: {url}{auth} — docs at {url}docs; Ctrl-C stops", flush=True)


def settle_heap() -> None:
    """Move every object alive after start-up (torch, the models, FastAPI: ~200,000) out of
    the garbage collector's sight. A full collection walks them all: 0.12 s on the Zen 4
    machine, which every request in flight waited for (it was the p99 latency under load);
    after ``gc.freeze`` it walks only what requests allocate."""
    gc.collect()
    gc.freeze()


class _Stopped(Exception):
    """SIGTERM, once uvicorn has stopped serving."""


def _stop(signum: int, frame: object) -> None:
    raise _Stopped


class _StoppingServer(uvicorn.Server):
    """uvicorn's server; a second Ctrl-C ends the grace period at once (decoding then stops
    between files, so it never waits for the last images of a big request)."""

    def __init__(self, config: uvicorn.Config, stopping: threading.Event) -> None:
        super().__init__(config)
        self.stopping = stopping

    def handle_exit(self, sig: int, frame: Any) -> None:
        if self.should_exit:
            self.stopping.set()
        super().handle_exit(sig, frame)


def _uvicorn_options(access_log: bool, settings: Settings) -> dict[str, Any]:
    return dict(
        log_level="warning",
        access_log=access_log,
        # the connections' own limits, timers and stops (serve/protocol.py); uvicorn's grace
        # is a backstop for a request that outlives ours (a batch still running)
        http=protocol.GuardedProtocol,
        ws="none",
        timeout_graceful_shutdown=math.ceil(settings.grace_s) + 5,
        server_header=False,
        lifespan="on",
    )


def _serve_here(app: FastAPI, options: dict[str, Any], sock: socket.socket) -> None:
    """One process: this one."""
    config = uvicorn.Config(app, **options)
    settle_heap()
    _StoppingServer(config, app.state.stopping).run(sockets=[sock])


def _write_spec(
    paths: Sequence[str | os.PathLike],
    runs: list[ServedRun],
    settings: Settings,
    launch: Launch,
    threads: int,
) -> None:
    """What every worker loads and serves with, in the environment it inherits (the token on
    its own: ``$CIFARLAB_SERVE_TOKEN``)."""
    spec = {
        "runs": [os.fspath(Path(p).resolve()) for p in paths],
        # the parent's choice of backend, measured once, for every worker
        "backends": [[r.backend_name, r.backend_note] for r in runs],
        "checkpoint": launch.checkpoint,
        "threads": threads,
        "tta": launch.tta,
        "calibrated": launch.calibrated,
        "settings": {k: v for k, v in asdict(settings).items() if k != "token"},
    }
    os.environ[SPEC_ENV] = json.dumps(spec)
    if settings.token:
        os.environ[TOKEN_ENV] = settings.token


def _serve_workers(workers: int, options: dict[str, Any], sock: socket.socket) -> None:
    """``workers`` processes under uvicorn's supervisor, each with :func:`app_from_env`."""
    config = uvicorn.Config(
        "cifarlab.serve.server:app_from_env", factory=True, workers=workers, **options
    )
    server = uvicorn.Server(config)
    # uvicorn < 0.36 takes the worker's function; newer ones build it from the config
    if "target" in inspect.signature(Multiprocess).parameters:
        Multiprocess(config, target=server.run, sockets=[sock]).run()
    else:
        Multiprocess(config, sockets=[sock]).run()


def app_from_env() -> FastAPI:
    """The app of one worker process (``--workers N``): the runs and settings come from the
    parent in ``$CIFARLAB_SERVE_SPEC`` (JSON; the token in ``$CIFARLAB_SERVE_TOKEN``)."""
    spec = json.loads(os.environ[SPEC_ENV])
    settings = Settings(**spec["settings"], token=os.environ.get(TOKEN_ENV) or None)
    keep_library_files_in_cache()
    runs = []
    for path, (backend, note) in zip(spec["runs"], spec["backends"], strict=True):
        served = load_served(
            path,
            backend=backend,
            checkpoint=spec["checkpoint"],
            threads=spec["threads"],
            tta=spec.get("tta"),
            calibrated=spec.get("calibrated", True),
        )
        served.backend_note = note  # the parent's measurement, the same in every worker
        runs.append(served)
    stopping = threading.Event()
    protocol.install(settings, stopping)
    app = create_app(runs, settings, stopping)
    settle_heap()
    return app
