"""TensorBoard event files (cifarlab/train/tensorboard.py), read back for real: tiny runs are
trained (and one evaluated, one stopped and resumed), TensorBoard's own server is started over
their folder, and what its HTTP API serves is compared with the run folders' files."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fakedata
from cifarlab import evaluate_run
from cifarlab.cli import main as cli_main
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.runs import RunFolder
from cifarlab.train import TrainConfig, train
from cifarlab.train import tensorboard as board
from cifarlab.train.engine import Trainer, Watcher

pytest.importorskip("tensorboard")
# fakedata's batches are not the official files: said once per load, not the point here
pytestmark = pytest.mark.filterwarnings("ignore::cifarlab.data.dataset.DataWarning")

STEPS_PER_EPOCH = 8  # 400 training images (500 less 100 for val) in batches of 50
EPOCHS = 2


def _config(root: Path, **kw: Any) -> TrainConfig:
    base = dict(model="fastnet_s", model_args={"widths": [8, 16, 16]}, root=str(root),
                epochs=EPOCHS, val_size=100, batch_size=50, precision="fp32", device="cpu",
                tta=0)  # fmt: skip
    return TrainConfig(**{**base, **kw})


def _rows(run: Path) -> list[dict[str, Any]]:
    return RunFolder(run).read_metrics()


def _f32(values: list[float]) -> list[float]:
    """As an event file holds a scalar: float32."""
    return [float(np.float32(v)) for v in values]


class _Pruned(Exception):
    pass


class _StopAt(Watcher):
    """Stops training after step ``at`` (as a sweep prunes a trial): the run folder keeps the
    last finished epoch's checkpoint, and the event files the steps after it."""

    def __init__(self, at: int) -> None:
        self.at = at

    def step(self, trainer: Trainer, step: int, loss: float, lr: float) -> None:
        if step == self.at:
            raise _Pruned


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """``runs/``: a group of two seeds, ``grp/seed-0`` trained and evaluated, ``grp/seed-1``
    stopped mid-epoch 2 and resumed."""
    base = tmp_path_factory.mktemp("board")
    root = base / "data"
    fakedata.write_cifar10_python(root, per_batch=100, test=50, seed=0)
    out = base / "runs"
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("CIFARLAB_CACHE", str(base / "cache"))
        mp.delenv(board.ENV, raising=False)
        first = train(_config(root), out=out / "grp" / "seed-0", progress=False)
        evaluate_run(first, "test", device="cpu")
        second = out / "grp" / "seed-1"
        with pytest.raises(_Pruned):
            train(_config(root, seed=1), out=second, progress=False,
                  watchers=[_StopAt(STEPS_PER_EPOCH + 3)])  # fmt: skip
        assert len(_rows(second)) == 1  # the checkpoint is epoch 1's; steps 9-11 were logged
        train(resume=second, progress=False)
    yield out


class Board:
    """TensorBoard's own server (``python -m tensorboard.main``) on 127.0.0.1, port chosen by
    the OS, and its HTTP API."""

    def __init__(self, logdir: Path, load_fast: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tensorboard.main", "--logdir", str(logdir),
             "--host", "127.0.0.1", "--port", "0", f"--load_fast={load_fast}"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )  # fmt: skip
        assert self.proc.stderr is not None
        said = []
        for line in self.proc.stderr:  # "TensorBoard 2.x at http://127.0.0.1:PORT/ (...)"
            said.append(line)
            found = re.search(r"(http://127\.0\.0\.1:\d+)/", line)
            if found:
                self.url = found.group(1)
                break
        else:
            raise AssertionError(f"TensorBoard did not start: {''.join(said)}")

    def get(self, path: str, **query: str) -> Any:
        url = f"{self.url}{path}?{urllib.parse.urlencode(query)}" if query else self.url + path
        with urllib.request.urlopen(url, timeout=10) as r:
            body = r.read()
            return json.loads(body) if "json" in r.headers.get("Content-Type", "") else body

    def post(self, path: str, payload: dict[str, Any]) -> Any:
        request = urllib.request.Request(
            self.url + path, data=json.dumps(payload).encode(),
            headers={"Content-Type": "application/json", "X-XSRF-Protected": "1"},
        )  # fmt: skip
        with urllib.request.urlopen(request, timeout=10) as r:
            return json.loads(r.read())

    def scalars(self, run: str, tag: str) -> tuple[list[int], list[float]]:
        points = self.get("/data/plugin/scalars/scalars", run=run, tag=tag)
        return [p[1] for p in points], [p[2] for p in points]

    def wait_for(self, runs: dict[str, str], timeout: float = 60) -> None:
        """Until every run lists its tag (the server loads the files in the background)."""
        deadline = time.monotonic() + timeout
        while True:
            try:
                tags = self.get("/data/plugin/scalars/tags")
                if all(tag in tags.get(run, {}) for run, tag in runs.items()):
                    return
            except OSError:
                pass
            assert self.proc.poll() is None, "TensorBoard ended"
            assert time.monotonic() < deadline, f"TensorBoard did not load {runs} in {timeout}s"
            time.sleep(0.2)

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


# "auto": the fast loader (tensorboard-data-server), what `tensorboard --logdir runs` uses
# where it is installed; "false": TensorBoard's Python loader, its fallback elsewhere.
@pytest.fixture(scope="module", params=["auto", "false"])
def served(request: pytest.FixtureRequest, runs: Path) -> Iterator[Board]:
    server = Board(runs, request.param)
    try:
        server.wait_for({"grp/seed-0": "hparams/test_acc", "grp/seed-1": "hparams/best_val_acc"})
        yield server
    finally:
        server.close()


@pytest.mark.slow  # the runs (about 10 s) and two servers
def test_curves_read_back_through_tensorboard_equal_the_metrics(served: Board, runs: Path) -> None:
    listed = served.get("/data/runs")
    assert {"grp/seed-0", "grp/seed-1"} <= set(listed)  # by folder: a group's seeds as GROUP/seed-K
    for name in ("grp/seed-0", "grp/seed-1"):
        rows = _rows(runs / name)
        assert len(rows) == EPOCHS
        for key in board.EPOCH_KEYS:
            steps, values = served.scalars(name, f"epoch/{key}")
            assert steps == [r["epoch"] for r in rows], (name, key)
            assert values == _f32([r[key] for r in rows]), (name, key)
        for tag in ("step/loss", "step/lr"):  # one point per step, each once (seed-1: resumed)
            steps, values = served.scalars(name, tag)
            assert steps == list(range(1, EPOCHS * STEPS_PER_EPOCH + 1)), (name, tag)
            assert all(np.isfinite(values))
        _, lrs = served.scalars(name, "step/lr")
        assert lrs[-1] == _f32([rows[-1]["lr"]])[0]  # the last step's lr is the last row's


@pytest.mark.slow
def test_hparams_dashboard_knows_every_run(served: Board, runs: Path) -> None:
    experiment = served.post("/data/plugin/hparams/experiment", {"experimentName": ""})
    names = {h["name"] for h in experiment["hparamInfos"]}
    assert {"lr", "weight_decay", "label_smoothing", "batch_size", "epochs", "optimizer",
            "model", "recipe", "seed", "model_args"} <= names  # fmt: skip
    assert {m["name"]["tag"] for m in experiment["metricInfos"]} == set(board.METRICS)
    groups = served.post("/data/plugin/hparams/session_groups", {
        "experimentName": "", "startIndex": 0, "sliceSize": 100, "colParams": [],
        "allowedStatuses": ["STATUS_UNKNOWN", "STATUS_SUCCESS", "STATUS_FAILURE",
                            "STATUS_RUNNING"]})  # fmt: skip
    sessions = {g["name"]: g for g in groups["sessionGroups"]}
    assert {"grp/seed-0", "grp/seed-1"} <= set(sessions)
    for name in ("grp/seed-0", "grp/seed-1"):
        config = RunFolder(runs / name).read_config()
        group = sessions[name]
        assert group["hparams"]["seed"] == config["seed"]
        assert group["hparams"]["optimizer"] == config["optimizer"]
        assert group["hparams"]["model_args"] == json.dumps(config["model_args"], sort_keys=True)
        assert group["hparams"]["lr"] == pytest.approx(config["lr"])
        metrics = {m["name"]["tag"]: m["value"] for m in group["metricValues"]}
        rows = _rows(runs / name)
        assert metrics["hparams/best_val_acc"] == _f32([config["best_val_acc"]])[0]
        assert metrics["hparams/last_val_acc"] == _f32([rows[-1]["val_acc"]])[0]
        assert metrics["hparams/train_seconds"] == pytest.approx(config["train_seconds"])
    evaluated = RunFolder(runs / "grp" / "seed-0").read_eval("test")
    test_acc = {m["name"]["tag"]: m["value"] for m in sessions["grp/seed-0"]["metricValues"]}
    assert test_acc["hparams/test_acc"] == _f32([evaluated["accuracy"]])[0]


@pytest.mark.slow
def test_evaluation_adds_scores_and_the_report_figures(served: Board, runs: Path) -> None:
    run = runs / "grp" / "seed-0"
    evaluated = RunFolder(run).read_eval("test")
    steps, values = served.scalars("grp/seed-0", "test/accuracy")
    assert steps == [evaluated["checkpoint_epoch"]] and values == _f32([evaluated["accuracy"]])
    tags = served.get("/data/plugin/images/tags")["grp/seed-0"]
    assert {f"test/{t}" for t in ("confusion_matrix", "reliability", "predicted_vs_true")} <= set(
        tags
    )
    shown = served.get("/data/plugin/images/images", run="grp/seed-0", tag="test/confusion_matrix")
    png = served.get(f"/data/plugin/images/individualImage?{shown[-1]['query']}")
    assert png[:8] == b"\x89PNG\r\n\x1a\n"
    size = int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")  # IHDR
    from PIL import Image

    with Image.open(run / "confusion_matrix.png") as figure:
        assert size == figure.size  # the report's figure


@pytest.mark.slow  # three runs
def test_switched_off_writes_no_event_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    cfg = _config(root, epochs=1, val_size=20)
    off = train(cfg, out=tmp_path / "off", progress=False, tensorboard=False)
    monkeypatch.setenv(board.ENV, "0")
    env_off = train(cfg, out=tmp_path / "env-off", progress=False)
    evaluate_run(env_off, "test", device="cpu", report=False)
    code = cli_main(["train", "--model", "fastnet_s", "--set", 'model_args={"widths": [8, 16, 16]}',
                     "--root", str(root), "--epochs", "1", "--val-size", "20", "--batch-size",
                     "50", "--precision", "fp32", "--device", "cpu", "--out", str(tmp_path / "cli"),
                     "--no-progress", "--no-tensorboard"])  # fmt: skip
    assert code == 0
    for run in (off, env_off, tmp_path / "cli"):
        assert RunFolder(run).holds_run()
        assert not [p.name for p in run.iterdir() if p.name.startswith("events")], run
    monkeypatch.delenv(board.ENV)
    evaluate_run(off, "test", device="cpu", report=False)  # a run without them gets none
    assert not RunFolder(off).event_files()


def test_a_new_run_takes_a_folder_with_event_files_of_a_failed_attempt(tmp_path: Path) -> None:
    folder = RunFolder(tmp_path / "r")
    folder.path.mkdir()
    stale = folder.path / "events.out.tfevents.1.host.1.0"
    stale.write_bytes(b"")
    folder.check_new()  # the leftovers of a run that stopped before its first checkpoint
    link = folder.path / "events.out.tfevents.link"
    link.symlink_to(stale)
    assert folder.event_files() == [stale]  # a link is not one of them
    link.unlink()
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    train(_config(root, epochs=1, val_size=20), out=folder.path, progress=False)
    written = folder.event_files()
    assert written and stale not in written  # the failed attempt's file is gone
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "events.out.tfevents.2.host.2.0").write_bytes(b"")
    (tmp_path / "other" / "notes.txt").write_text("mine")
    with pytest.raises(CifarlabError, match="not a cifarlab run"):
        RunFolder(tmp_path / "other").check_new()


def test_asking_for_it_without_the_package_is_a_setting_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.delenv(board.ENV, raising=False)
    monkeypatch.setattr(board, "available", lambda: False)
    assert not board.wanted(None) and not board.wanted(False)
    with pytest.raises(SettingError, match=r"pip install 'cifarlab\[tensorboard\]'"):
        board.wanted(True)
    assert "not installed" in board.describe()  # cifarlab doctor's line
    monkeypatch.setattr(board, "available", lambda: True)
    assert board.wanted(None) and board.wanted(True)
    assert "every run writes event files" in board.describe()
    monkeypatch.setenv(board.ENV, "off")
    assert not board.wanted(None) and board.wanted(True)
    assert board.describe() == "TensorBoard: off (CIFARLAB_TENSORBOARD=off)"


def test_hparam_values_are_numbers_or_text() -> None:
    settings = {"lr": 0.1, "epochs": 3, "compile": False, "steps": None, "model": "m",
                "augment": {"translate": 2, "flip": "random"}}  # fmt: skip
    assert board.hparam_values(settings) == {"lr": 0.1, "epochs": 3, "compile": "false",
        "model": "m", "augment": '{"flip": "random", "translate": 2}'}  # fmt: skip
