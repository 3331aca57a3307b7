"""Data-parallel training under the real torchrun: 2 processes, gloo, on this CPU."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cifarlab.checkpoint import load_checkpoint
from conftest import cli_run

pytestmark = [pytest.mark.distributed, pytest.mark.slow]

TORCHRUN = [sys.executable, "-m", "torch.distributed.run"]


def _common(root: Path, *extra: str) -> list[str]:
    return ["--root", str(root), "--train-size", "2000", "--val-size", "1000", "--seed", "3",
            "--batch-size", "64", "--no-progress", "--device", "cpu", *extra]  # fmt: skip


def _env() -> dict[str, str]:
    # one thread per process: 2 processes share this 2-core machine (torchrun's default too)
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}


def _torchrun(n: int, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    cmd = [*TORCHRUN, "--standalone", f"--nproc_per_node={n}", "-m", "cifarlab", "train", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=_env())


def _single(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """One process, forked from a warm one (conftest.cli_run: a real process, without the 5 s
    of imports a fresh interpreter and its first optimizer cost)."""
    cmd = [sys.executable, "-m", "cifarlab", "train", *args]
    return cli_run(cmd, capture_output=True, text=True, timeout=300,
                   env={**_env(), **(env or {})})  # fmt: skip


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


def _config(run: Path) -> dict:
    return json.loads((run / "config.json").read_text())


def test_two_processes_match_one(cifar10_root: Path, tmp_path: Path) -> None:
    """simple_cnn (no BatchNorm, no augmentation): two halves of each global batch average to
    the gradient of the whole batch, so 2 processes must track 1 process closely."""
    args = _common(cifar10_root, "--model", "simple_cnn", "--epochs", "2")
    two = _torchrun(2, *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = _single(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]

    # rank 0 alone talked: one line per epoch, one "run saved"
    assert two.stdout.count("epoch   1/2") == 1 and two.stdout.count("run saved in") == 1
    config = _config(tmp_path / "two")
    assert config["world_size"] == 2
    digests = config["rank_weight_digests"]
    assert len(digests) == 2 and digests[0] == digests[1]  # the same weights on both ranks
    h2, h1 = _history(tmp_path / "two"), _history(tmp_path / "one")
    assert len(h2) == len(h1) == 2
    for a, b in zip(h2, h1, strict=True):
        assert abs(a["val_acc"] - b["val_acc"]) <= 0.02, (h2, h1)
        assert abs(a["train_loss"] - b["train_loss"]) <= 0.02, (h2, h1)
    # Not bit-equal: the sums run in another order, and training magnifies rounding. The
    # yardstick is the same run on 2 threads instead of 1, which differs from it only so.
    other = _single(*args, "--out", str(tmp_path / "threads"), env={"OMP_NUM_THREADS": "2"})
    assert other.returncode == 0, other.stderr[-3000:]
    w1, w2, wt = (load_checkpoint(tmp_path / r / "last.pt")["model"]
                  for r in ("one", "two", "threads"))  # fmt: skip

    def distance(a: dict, b: dict) -> float:
        return float(sum((a[k] - b[k]).pow(2).sum() for k in a).sqrt())

    assert distance(w2, w1) <= 2 * distance(wt, w1) + 1e-6, (distance(w2, w1), distance(wt, w1))


def test_fast_recipe_with_batchnorm_and_lookahead(cifar10_root: Path, tmp_path: Path) -> None:
    """A FastNet recipe (BatchNorm, lookahead, whitening bias frozen after epoch 1, bf16):
    the ranks still end identical, and the result is as good as one process's."""
    args = _common(cifar10_root, "--recipe", "quick", "--epochs", "3", "--batch-size", "256",
                   "--set", "whiten_bias_epochs=1")  # fmt: skip
    two = _torchrun(2, *args, "--out", str(tmp_path / "two"))
    assert two.returncode == 0, two.stderr[-3000:]
    one = _single(*args, "--out", str(tmp_path / "one"))
    assert one.returncode == 0, one.stderr[-3000:]
    digests = _config(tmp_path / "two")["rank_weight_digests"]
    assert digests[0] == digests[1]
    # per-rank BatchNorm statistics and augmentation draws differ: a looser tolerance
    assert (
        abs(_history(tmp_path / "two")[-1]["val_acc"] - _history(tmp_path / "one")[-1]["val_acc"])
        < 0.06
    )


@pytest.mark.parametrize("first,second", [(2, 1), (1, 2)])
def test_resume_across_process_counts(
    cifar10_root: Path, tmp_path: Path, first: int, second: int
) -> None:
    args = _common(cifar10_root, "--model", "simple_cnn")
    run = tmp_path / "run"
    start = (
        _torchrun(2, *args, "--epochs", "1", "--out", str(run))
        if first == 2
        else _single(*args, "--epochs", "1", "--out", str(run))
    )
    assert start.returncode == 0, start.stderr[-3000:]
    assert _config(run)["world_size"] == first
    more = ["--resume", str(run), "--epochs", "2", "--no-progress"]
    resumed = _torchrun(2, *more) if second == 2 else _single(*more)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "resuming" in resumed.stdout
    assert [r["epoch"] for r in _history(run)] == [1, 2]
    assert _config(run)["world_size"] == second
    assert load_checkpoint(run / "last.pt")["epoch"] == 2
    assert _history(run)[-1]["val_acc"] > 0.25  # it kept learning (chance is 0.10)


def _children(pid: int) -> list[int]:
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        text = (task / "children").read_text().split()
        out += [int(p) for p in text]
    return out


def _rank_of(pid: int) -> int | None:
    try:
        env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    except OSError:
        return None
    for item in env:
        if item.startswith(b"RANK="):
            return int(item[5:])
    return None


def _start_after_one_epoch(run: Path, args: list[str], **popen) -> subprocess.Popen:
    """A 2-process torchrun training into ``run``, returned once its first epoch is written."""
    cmd = [*TORCHRUN, "--standalone", "--nproc_per_node=2", "-m", "cifarlab", "train", *args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env(), **popen)  # fmt: skip
    deadline = time.monotonic() + 180
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            err = proc.communicate()[1][-3000:]
            pytest.fail(f"no epoch finished (exit {proc.returncode}): {err}")
        time.sleep(0.05)
    return proc


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="needs Linux /proc")
def test_killing_one_rank_ends_the_job(cifar10_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    args = _common(cifar10_root, "--model", "simple_cnn", "--epochs", "50", "--out", str(run))
    proc = _start_after_one_epoch(run, args)
    try:
        workers = {_rank_of(p): p for p in _children(proc.pid)}
        assert set(workers) >= {0, 1}, workers
        os.kill(workers[1], signal.SIGKILL)
        killed_at = time.monotonic()
        _, err = proc.communicate(timeout=120)
        took = time.monotonic() - killed_at
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode != 0
    assert took < 60, f"the job took {took:.0f} s to stop"
    assert "FAILED" in err and "Root Cause" in err, err[-2000:]  # torchrun's summary
    # and cifarlab's own line from rank 0, pointing at the checkpoint
    assert ("stopped by torchrun" in err or "lost contact" in err) and "--resume" in err, err
    state = load_checkpoint(run / "last.pt")  # intact: written atomically
    assert state["epoch"] >= 1 and isinstance(state["model"], dict)
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_ctrl_c_mid_epoch_saves_the_whole_jobs_sums(cifar10_root: Path, tmp_path: Path) -> None:
    """Ctrl-C in a terminal reaches torchrun and every rank; they stop at the same step and
    the checkpoint's running sums of the epoch count every rank's images, so a resume on any
    number of processes reports the epoch's loss and accuracy over all of them."""
    run = tmp_path / "run"
    args = _common(cifar10_root, "--model", "simple_cnn", "--epochs", "3", "--out", str(run))
    proc = _start_after_one_epoch(run, args, start_new_session=True)
    try:
        time.sleep(0.3)  # into epoch 2
        os.killpg(proc.pid, signal.SIGINT)  # what Ctrl-C in a terminal does
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    state = load_checkpoint(run / "last.pt")
    assert state["epoch"] == 1 and 0 < state["step"] < 31, (state["step"], err[-2000:])
    assert state["totals"]["seen"] == 64 * state["step"]  # both ranks' halves of each batch
    resumed = _single("--resume", str(run), "--no-progress")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    row = _history(run)[1]
    assert row["epoch"] == 2 and 0.1 < row["train_acc"] < 1 and row["train_loss"] < 2.3
