from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# Read before any fixture clears it: the tests isolate themselves from the user's settings.
_CIFARLAB_DATA = os.environ.get("CIFARLAB_DATA")

# Under pytest-xdist (`-n 2` in pyproject.toml's addopts) each worker is a process of its own:
# "gw0", "gw1"...; None in a plain `pytest -p no:xdist` or `-n 0` run.
WORKER = os.environ.get("PYTEST_XDIST_WORKER")


def shared_data() -> Path | None:
    """The full CIFAR-10 copy: $CIFARLAB_DATA, else ../shared/data beside the repo."""
    for candidate in (_CIFARLAB_DATA, REPO.parent / "shared" / "data"):
        if candidate and (Path(candidate) / "cifar-10-batches-py" / "data_batch_1").is_file():
            return Path(candidate)
    return None


def run_cli(
    *args: str, cwd: Path | None = None, env: dict[str, str] | None = None, timeout: int = 300
) -> subprocess.CompletedProcess:
    """``python -m cifarlab ARGS`` in a real subprocess: exit code, stdout, stderr (Python's
    warnings off; ``env`` added to this process's environment). See :func:`cli_run`."""
    return cli_run([sys.executable, "-m", "cifarlab", *args], capture_output=True, text=True,
                   cwd=cwd, timeout=timeout,
                   env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})})  # fmt: skip


def cli_run(cmd: list[str], **kw: Any) -> subprocess.CompletedProcess:
    """``subprocess.run(cmd, **kw)``, for ``cmd = [sys.executable, "-m", "cifarlab", ...]`` with
    ``capture_output=True, text=True``: the same exit code, stdout and stderr, from a real
    process forked from a warm server that has imported Python, torch and cifarlab's commands
    once (tests/cli_server.py, as the hostile corpus runs), without the 2 s of start-up of a
    fresh interpreter. The child has the command's own working directory, whole environment,
    output files and exit code. An environment that differs from the server's in what an
    interpreter reads only as it starts (PYTHON*, OMP_*, the locale, ...), any other ``cmd`` or
    option, or $CIFARLAB_TEST_FRESH_CLI=1, gets ``subprocess.run`` itself."""
    env = kw.get("env")
    env = dict(os.environ if env is None else env)
    simple = set(kw) <= {"capture_output", "text", "timeout", "env", "cwd"}
    if not (simple and kw.get("capture_output") and kw.get("text")
            and cmd[:3] == [sys.executable, "-m", "cifarlab"]):  # fmt: skip
        return subprocess.run(cmd, **kw)
    server = _WarmCli.get(env)
    if server is None:
        return subprocess.run(cmd, **kw)
    cwd = Path(kw["cwd"]) if kw.get("cwd") is not None else Path.cwd()
    if not cwd.is_dir():  # as subprocess.run raises it
        raise FileNotFoundError(f"no such directory: {cwd}")
    code, out, err = server.run(cmd, cwd, env, kw.get("timeout"))
    return subprocess.CompletedProcess(cmd, code, out, err)


# What a Python (or torch, or matplotlib) process reads from its environment once, as it
# starts or imports: a command that needs other values than a warm server's gets its own.
_STARTUP_VARS = ("PYTHON", "OMP_", "MKL_", "KMP_", "GOMP_", "LANG", "LC_", "TORCH", "MPL",
                 "HOME", "XDG_CONFIG", "CIFARLAB_DIST", "CUDA", "TMPDIR")  # fmt: skip
# Imported by the server before it forks: what most commands import (each costs 0.2-1.3 s;
# torch._dynamo 2.5 s: torch imports it at the first optimizer a command makes).
_PRELOAD = ("cifarlab.train", "cifarlab.evaluate.run", "cifarlab.predict", "cifarlab.export",
            "torch._dynamo")  # fmt: skip


class _WarmCli:
    """A warm CLI server (tests/cli_server.py) of this process, one for each start-up
    environment, started on first use and ended with the session."""

    servers: dict[tuple, _WarmCli] = {}

    def __init__(self, env: dict[str, str]) -> None:
        import tempfile
        import threading

        self.folder = Path(tempfile.mkdtemp(prefix="cifarlab-cli-"))
        self.lock = threading.Lock()
        self.count = 0
        self.proc = subprocess.Popen(
            [sys.executable, str(Path(__file__).with_name("cli_server.py")), *_PRELOAD],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env,
        )  # fmt: skip

    @classmethod
    def get(cls, env: dict[str, str]) -> _WarmCli | None:
        if os.environ.get("CIFARLAB_TEST_FRESH_CLI") == "1":
            return None
        key = tuple(sorted((k, v) for k, v in env.items() if k.startswith(_STARTUP_VARS)))
        server = cls.servers.get(key)
        if server is not None and server.proc.poll() is not None:  # it died: start another
            server.close()
            server = None
        if server is None:
            server = cls.servers[key] = cls(env)
        return server

    def run(self, cmd: list[str], cwd: Path, env: dict[str, str],
            timeout: float | None) -> tuple[int, str, str]:  # fmt: skip
        import json
        import locale

        with self.lock:
            self.count += 1
            out, err = self.folder / f"{self.count}.out", self.folder / f"{self.count}.err"
            job = {"argv": cmd[3:], "cwd": str(cwd), "env": env, "whole_env": True,
                   "stdout": str(out), "stderr": str(err),
                   "timeout": 24 * 3600 if timeout is None else timeout}  # fmt: skip
            assert self.proc.stdin is not None and self.proc.stdout is not None
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"the warm CLI server died running {cmd}")
        reply = json.loads(line)
        # decoded as subprocess.run(text=True) decodes: the locale's encoding, universal newlines
        encoding = locale.getpreferredencoding(False)
        texts = []
        for path in (out, err):
            with open(path, encoding=encoding, newline=None) as f:
                texts.append(f.read())
            path.unlink()
        if reply["timed_out"]:
            raise subprocess.TimeoutExpired(cmd, timeout or 0, texts[0], texts[1])
        return reply["code"], texts[0], texts[1]

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.folder, ignore_errors=True)


def pytest_unconfigure(config: pytest.Config) -> None:
    for server in _WarmCli.servers.values():
        server.close()
    _WarmCli.servers.clear()


@pytest.fixture(scope="session")
def shared_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One parsed-data cache for every test that reads the full copy (parse it once)."""
    return tmp_path_factory.mktemp("shared-cache")


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Each test gets its own cache and no $CIFARLAB_DATA unless it asks for them."""
    cache = tmp_path / "cache"
    monkeypatch.setenv("CIFARLAB_CACHE", str(cache))
    monkeypatch.delenv("CIFARLAB_DATA", raising=False)
    monkeypatch.delenv("CIFARLAB_MIRROR", raising=False)
    return cache


def require_shared_data() -> Path:
    """The full CIFAR-10 copy; without it the test is skipped, or fails under CI."""
    root = shared_data()
    if root is None:
        message = "the full CIFAR-10 copy is not here: set CIFARLAB_DATA"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run these tests, not skip them
        pytest.skip(message)
    return root


@pytest.fixture
def planner_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache folder for the whole test run, all xdist workers, for $CIFARLAB_CACHE: the
    tests that only need `budget.plan`'s speeds of the FastNets probe them once (30 s on one
    thread; fastnet_xl only where the planner cannot rule it out), not each (tests of the
    probe itself keep an empty cache)."""
    folder = run_wide_dir(tmp_path_factory) / "planner-cache"
    folder.mkdir(exist_ok=True)
    return folder


@pytest.fixture
def cifar10_root(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> Path:
    root = require_shared_data()
    monkeypatch.setenv("CIFARLAB_CACHE", str(shared_cache))
    return root


def run_wide_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This test run's temporary folder, one for all its xdist workers (each worker's own
    basetemp is ``pytest-N/popen-gwK``: its parent is the run's)."""
    base = tmp_path_factory.getbasetemp()
    return base.parent if WORKER else base


def built_once(tmp_path_factory: pytest.TempPathFactory, name: str,
               build: Callable[[Path], None]) -> Path:  # fmt: skip
    """``build(folder)`` run once for the whole test run, whichever xdist worker asks first
    (the others wait on a file lock, then use what it built). A build that raises is not kept:
    the next worker that asks builds it again (and fails the same way, in its own tests)."""
    from filelock import FileLock

    base = run_wide_dir(tmp_path_factory) / "built-once"
    base.mkdir(exist_ok=True)
    folder, done = base / name, base / f"{name}.done"
    with FileLock(str(base / f"{name}.lock")):
        if not done.exists():
            shutil.rmtree(folder, ignore_errors=True)
            folder.mkdir()
            build(folder)
            done.touch()
    return folder


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick run on a subset of the real data (session-wide: several modules use it).

    Trained once per test run, not once per xdist worker; each worker gets a copy of its
    own, as a session of one process had it (tests write into it: `export` adds model.pt)."""
    root = require_shared_data()

    def build(folder: Path) -> None:
        from cifarlab.train import train
        from cifarlab.train.recipes import recipe_config

        cfg = recipe_config("quick", root=str(root), train_size=10000, val_size=1000, epochs=3,
                            device="cpu")  # fmt: skip
        train(cfg, out=folder / "quick", progress=False)

    built = built_once(tmp_path_factory, "trained-run", build) / "quick"
    out = tmp_path_factory.mktemp("run") / "quick"
    shutil.copytree(built, out)
    return out


@pytest.fixture(scope="session")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The first 200 test images of the real copy and their labels."""
    from cifarlab import load_dataset

    root = require_shared_data()
    ds = load_dataset("cifar10", root, val_size=0)
    return ds.test.images[:200].numpy(), ds.test.labels[:200].numpy()


# --------------------------------------------------------------------------- under pytest-xdist
#
# Two workers share the machine's two cores. Each runs torch on one thread (set below, and
# OMP_NUM_THREADS=1 for the processes its tests start): two workers of two threads each would
# put four busy threads on two cores. A test marked `alone` (timing-sensitive: a budget that
# times the machine, a server's latency and batching, torchrun) runs with no other test beside
# it, on both cores: it waits for the other worker's test to end, and the other worker waits
# for it (a reader-writer lock on two files shared by the workers, the writer first).

if WORKER:
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    WORKER_THREADS = int(os.environ["OMP_NUM_THREADS"])
    # torch is imported by the test modules, after this: it reads OMP_NUM_THREADS then.
    # What a lone test restores: torch's default for this machine (one thread a core).
    ALONE_THREADS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (
        os.cpu_count() or 1)  # fmt: skip


@pytest.fixture(scope="session")
def _turn_files(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = run_wide_dir(tmp_path_factory)
    return base / "alone.turnstile", base / "alone.lock"


@pytest.fixture(autouse=True)
def _alone_or_together(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory,
                       monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:  # fmt: skip
    """Under xdist: a test marked `alone` holds the machine; any other test shares it."""
    if not WORKER:
        yield
        return
    alone = request.node.get_closest_marker("alone") is not None
    turnstile_path, lock_path = request.getfixturevalue("_turn_files")
    with open(turnstile_path, "a") as turnstile, open(lock_path, "a") as lock:
        fcntl.flock(turnstile, fcntl.LOCK_EX)  # a waiting lone test lets no new test start
        if alone:
            fcntl.flock(lock, fcntl.LOCK_EX)
        else:
            fcntl.flock(turnstile, fcntl.LOCK_UN)
            fcntl.flock(lock, fcntl.LOCK_SH)
        if alone:
            import torch

            monkeypatch.setenv("OMP_NUM_THREADS", str(ALONE_THREADS))
            torch.set_num_threads(ALONE_THREADS)
        try:
            yield
        finally:
            if alone:
                import torch

                torch.set_num_threads(WORKER_THREADS)
            # closing the files releases both locks


# Fixtures that read the full copy: a test using one is marked `data` and `slow`.
DATA_FIXTURES = {"cifar10_root", "trained_run", "test_images"}


# Under xdist the costliest files run first (CPU seconds, measured), so that the end of the run
# is made of short tests that an idle worker can take over (--dist worksteal), not of one long
# test that keeps the other worker waiting. A file's tests stay together (its module fixtures
# are made once); a file not named here keeps its place after these.
HEAVY_FIRST = ["test_hostile.py", "test_recipes.py", "test_train.py", "test_sweep.py",
               "test_budget.py",
               "test_distributed.py", "test_calibration.py", "test_cli.py", "test_muon.py",
               "test_serve.py", "test_export.py", "test_notebook.py", "test_models.py",
               "test_config.py", "test_robustness.py", "test_predict.py", "test_report.py",
               "test_fuzz.py", "test_serve_page.py"]  # fmt: skip


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that reads the full CIFAR-10 copy is marked ``data`` (and ``slow``: parsing it
    alone takes seconds), so that ``pytest -m "not data"`` runs without the copy. Under xdist,
    the costliest files go first (HEAVY_FIRST)."""
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
            item.add_marker(pytest.mark.slow)
    if WORKER:
        rank = {name: i for i, name in enumerate(HEAVY_FIRST)}
        items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: keeps order
        _alone_first(items, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1")))


def _alone_first(items: list[pytest.Item], workers: int) -> None:
    """The `alone` tests first, and quick tests where the other workers' shares begin.

    An `alone` test waits for the test beside it to end, a core idle meanwhile: in the middle
    of the run that was a training of up to 60 s. xdist's worksteal hands each worker one
    contiguous share of this list at the start (the first 1/n, the next 1/n, ...): the `alone`
    tests open the first share, and each other share opens with tests of a few milliseconds,
    the only tests that run beside them. Only the speed depends on this order."""
    alone = [item for item in items if item.get_closest_marker("alone") is not None]
    rest = [item for item in items if item.get_closest_marker("alone") is None]
    per_share = 30  # quick tests opening each share after the first
    wanted = per_share * (workers - 1)
    quick = [item for item in rest if item.get_closest_marker("slow") is None
             and item.path.name not in HEAVY_FIRST]  # fmt: skip
    quick = quick[max(0, len(quick) - wanted) :] if wanted else []
    ids = {id(item) for item in quick}
    order = alone + [item for item in rest if id(item) not in ids]
    share = len(items) // workers
    for k in range(workers - 1, 0, -1):
        order[k * share : k * share] = quick[(k - 1) * per_share : k * per_share]
    assert len(order) == len(items)  # a reorder: nothing dropped, nothing repeated
    items[:] = order


def _mount_tmpfs(d: Path, options: str):  # noqa: ANN202 - a generator for the fixtures below
    d.mkdir()
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(d)],
                       capture_output=True)  # fmt: skip
    if r.returncode:
        pytest.skip(f"cannot mount a tmpfs here: {r.stderr.decode().strip()}")
    try:
        yield d
    finally:
        subprocess.run(["umount", "-l", str(d)], capture_output=True)


@pytest.fixture
def tiny_disk(tmp_path: Path):  # noqa: ANN201
    """A 64 KB tmpfs: a disk that fills (needs root to mount; skipped where not allowed)."""
    yield from _mount_tmpfs(tmp_path / "tiny", "size=64k")


@pytest.fixture
def read_only_dir(tmp_path: Path):  # noqa: ANN201
    """An empty read-only tmpfs (root only)."""
    yield from _mount_tmpfs(tmp_path / "ro", "ro,size=64k")
