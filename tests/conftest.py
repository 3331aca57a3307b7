from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parent.parent
# Read before any fixture clears it: the tests isolate themselves from the user's settings.
_CIFARLAB_DATA = os.environ.get("CIFARLAB_DATA")


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
    warnings off; ``env`` added to this process's environment)."""
    return subprocess.run(
        [sys.executable, "-m", "cifarlab", *args],
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
    )


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
def cifar10_root(monkeypatch: pytest.MonkeyPatch, shared_cache: Path) -> Path:
    root = require_shared_data()
    monkeypatch.setenv("CIFARLAB_CACHE", str(shared_cache))
    return root


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A quick run on a subset of the real data (session-wide: several modules use it)."""
    from cifarlab.train import train
    from cifarlab.train.recipes import recipe_config

    root = require_shared_data()
    out = tmp_path_factory.mktemp("run") / "quick"

    cfg = recipe_config("quick", root=str(root), train_size=10000, val_size=1000, epochs=3,
                        device="cpu")  # fmt: skip
    return train(cfg, out=out, progress=False)


@pytest.fixture(scope="session")
def test_images() -> tuple[np.ndarray, np.ndarray]:
    """The first 200 test images of the real copy and their labels."""
    from cifarlab import load_dataset

    root = require_shared_data()
    ds = load_dataset("cifar10", root, val_size=0)
    return ds.test.images[:200].numpy(), ds.test.labels[:200].numpy()


# Fixtures that read the full copy: a test using one is marked `data` and `slow`.
DATA_FIXTURES = {"cifar10_root", "trained_run", "test_images"}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """A test that reads the full CIFAR-10 copy is marked ``data`` (and ``slow``: parsing it
    alone takes seconds), so that ``pytest -m "not data"`` runs without the copy."""
    for item in items:
        if DATA_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.data)
            item.add_marker(pytest.mark.slow)


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
