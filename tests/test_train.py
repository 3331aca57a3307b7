"""Models and the training engine on small subsets of the real CIFAR-10 copy."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
import warnings
from pathlib import Path

import pytest
import torch

from cifarlab.checkpoint import load_checkpoint, save_checkpoint
from cifarlab.errors import CifarlabError
from cifarlab.models import count_parameters, create_model, model_names
from cifarlab.train import TrainConfig, TrainingError, train
from conftest import cli_run  # a warm fork where nothing in the test needs a fresh interpreter


@pytest.fixture(autouse=True)
def _quiet() -> None:
    warnings.simplefilter("ignore")


def test_original_parameter_counts() -> None:
    assert count_parameters(create_model("mlp", 10)) == 12_230_010
    assert count_parameters(create_model("simple_cnn", 10)) == 167_562


@pytest.mark.parametrize("name", model_names())
@pytest.mark.parametrize("classes", [10, 100, 20])
def test_every_model_for_10_and_100_classes(name: str, classes: int) -> None:
    out = create_model(name, classes)(torch.zeros(2, 3, 32, 32))
    assert out.shape == (2, classes)


def test_unknown_model_is_a_clear_error() -> None:
    with pytest.raises(CifarlabError, match="unknown model 'resnet9000': choose one of"):
        create_model("resnet9000")


def _small(root: Path, **kw) -> TrainConfig:
    base = dict(root=str(root), train_size=2000, val_size=1000, epochs=1, device="cpu")
    return TrainConfig(**{**base, **kw})


def _history(run: Path) -> list[dict]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.parametrize("model,epochs,floor", [("simple_cnn", 2, 0.25), ("mlp", 2, 0.20)])
@pytest.mark.slow
def test_models_learn(
    cifar10_root: Path, tmp_path: Path, model: str, epochs: int, floor: float
) -> None:
    run = train(
        _small(cifar10_root, model=model, epochs=epochs), out=tmp_path / "r", progress=False
    )
    rows = _history(run)
    assert len(rows) == epochs
    assert rows[-1]["val_acc"] > floor  # chance is 0.10
    for name in ("config.json", "metrics.jsonl", "last.pt", "best.pt"):
        assert (run / name).is_file()
    config = json.loads((run / "config.json").read_text())
    assert config["lr"] == 1e-3 and config["batch_size"] == 32 and config["optimizer"] == "adam"
    assert config["train_images"] == 2000 and config["params"] == count_parameters(
        create_model(model)
    )


def test_same_seed_same_metrics(cifar10_root: Path, tmp_path: Path) -> None:
    cfg = _small(cifar10_root, train_size=600, seed=3)
    a = train(cfg, out=tmp_path / "a", progress=False)
    b = train(cfg, out=tmp_path / "b", progress=False)

    def strip(rows: list[dict]) -> list[dict]:  # drop the timings, which always differ
        return [
            {k: v for k, v in r.items() if "second" not in k and k != "images_per_s"} for r in rows
        ]

    assert strip(_history(a)) == strip(_history(b))
    wa, wb = load_checkpoint(a / "last.pt")["model"], load_checkpoint(b / "last.pt")["model"]
    assert all(torch.equal(wa[k], wb[k]) for k in wa)
    c = train(_small(cifar10_root, train_size=600, seed=4), out=tmp_path / "c", progress=False)
    assert strip(_history(c)) != strip(_history(a))


def test_nan_loss_stops_with_a_clear_message(cifar10_root: Path, tmp_path: Path) -> None:
    cfg = _small(cifar10_root, train_size=600, optimizer="sgd", lr=1e6)
    with pytest.raises(TrainingError, match=r"loss became NaN/inf .*try a lower --lr"):
        train(cfg, out=tmp_path / "r", progress=False)
    # the folder holds no checkpoint: resuming says so, and the same --out may be used again
    with pytest.raises(CifarlabError, match=r"stopped before it saved one; train it again"):
        train(resume=tmp_path / "r", progress=False)
    run = train(_small(cifar10_root, train_size=300), out=tmp_path / "r", progress=False)
    assert (run / "best.pt").is_file() and len(_history(run)) == 1


def test_existing_run_folder_is_not_overwritten(cifar10_root: Path, tmp_path: Path) -> None:
    train(_small(cifar10_root, train_size=300), out=tmp_path / "r", progress=False)
    with pytest.raises(CifarlabError, match="already holds a run: resume it with --resume"):
        train(_small(cifar10_root, train_size=300), out=tmp_path / "r", progress=False)


def test_checkpoint_with_module_prefix_loads_on_cpu(cifar10_root: Path, tmp_path: Path) -> None:
    from cifarlab.evaluate.run import load_model

    run = train(_small(cifar10_root, train_size=300), out=tmp_path / "r", progress=False)
    state = load_checkpoint(run / "best.pt")
    state["model"] = {f"module.{k}": v for k, v in state["model"].items()}  # as DDP saves
    save_checkpoint(run / "best.pt", state)
    model, _ = load_model(run, json.loads((run / "config.json").read_text()))
    assert next(model.parameters()).device.type == "cpu"


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *args]


@pytest.mark.parametrize(
    "setup",
    # fast-muon's Muon, lookahead and 24-px first half, on its smallest network (the point is
    # the resume, not the accuracy: fastnet_m took 4x the time)
    [
        ["--model", "simple_cnn"],
        ["--recipe", "fast-muon", "--model", "fastnet_s", "--precision", "fp32"],
    ],  # fmt: skip
    ids=["adam", "muon-progressive"],
)
@pytest.mark.slow
def test_interrupt_and_resume_match_an_uninterrupted_run(
    cifar10_root: Path, tmp_path: Path, setup: list[str]
) -> None:
    common = [
        "train",
        *setup,
        "--root",
        str(cifar10_root),
        "--train-size",
        "2000",  # 8 steps an epoch at fast-muon's batch of 256: room to stop mid-epoch 2
        "--val-size",
        "500",
        "--epochs",
        "3",
        "--seed",
        "5",
        "--device",
        "cpu",
        "--no-progress",
    ]
    # the uninterrupted run and the resume fork from a warm process (cli_run); the run to cut
    # is a process of its own, which Ctrl-C reaches as it would in a terminal
    whole = cli_run(
        _cli(*common, "--out", str(tmp_path / "whole")), capture_output=True, text=True, timeout=300
    )
    assert whole.returncode == 0, whole.stderr

    run = tmp_path / "cut"
    proc = subprocess.Popen(
        _cli(*common, "--out", str(run)), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    deadline = time.monotonic() + 240
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before epoch 1"
        time.sleep(0.05)
    time.sleep(0.3)  # into epoch 2
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err
    assert (
        "checkpoint saved. Resume with: cifarlab train --resume" in err and "Traceback" not in err
    )
    cut = load_checkpoint(run / "last.pt")
    assert cut["epoch"] < 3 and cut["step"] > 0  # stopped mid-epoch (step counts within one)

    resumed = cli_run(
        _cli("train", "--resume", str(run), "--no-progress"),
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming" in resumed.stdout
    a, b = load_checkpoint(tmp_path / "whole" / "last.pt"), load_checkpoint(run / "last.pt")
    assert a["epoch"] == b["epoch"] == 3
    assert all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    assert [r["val_acc"] for r in _history(run)] == [
        r["val_acc"] for r in _history(tmp_path / "whole")
    ]


@pytest.mark.slow
def test_cli_train_evaluate_compare(cifar10_root: Path, tmp_path: Path) -> None:
    env = {**os.environ}
    runs = []
    for model in ("simple_cnn", "mlp"):
        run = tmp_path / model
        r = cli_run(
            _cli(
                "train",
                "--model",
                model,
                "--root",
                str(cifar10_root),
                "--train-size",
                "1000",
                "--val-size",
                "500",
                "--epochs",
                "1",
                "--out",
                str(run),
            ),
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        assert r.returncode == 0, r.stderr
        assert "epoch   1/1" in r.stdout and "val loss" in r.stdout
        r = cli_run(_cli("evaluate", str(run)), capture_output=True, text=True, timeout=300)
        assert r.returncode == 0, r.stderr
        assert "precision    recall  f1-score   support" in r.stdout
        assert "weighted avg" in r.stdout and "accuracy" in r.stdout
        m = json.loads((run / "eval_test.json").read_text())
        assert m["num_samples"] == 10000 and sum(m["true_counts"]) == 10000
        assert (run / "report.html").is_file()
        runs.append(str(run))
    out = tmp_path / "cmp.html"
    r = cli_run(
        _cli("compare", *runs, "--out", str(out)), capture_output=True, text=True, timeout=120
    )
    assert r.returncode == 0, r.stderr
    assert out.is_file() and "simple_cnn" in out.read_text()


@pytest.mark.slow
def test_cli_errors(tmp_path: Path) -> None:
    r = cli_run(_cli("evaluate", str(tmp_path / "nope")), capture_output=True, text=True)
    assert r.returncode == 1 and "no such run folder" in r.stderr and "Traceback" not in r.stderr
    r = cli_run(
        _cli("train", "--epochs", "0", "--root", str(tmp_path)), capture_output=True, text=True
    )
    assert r.returncode == 1 and "--epochs must be ≥ 1" in r.stderr
    r = cli_run(_cli("compare", str(tmp_path)), capture_output=True, text=True)
    assert r.returncode == 1 and "not a run folder" in r.stderr


def test_run_folder_with_a_foreign_config_is_a_clear_error(tmp_path: Path) -> None:
    from cifarlab.evaluate.run import read_run

    (tmp_path / "config.json").write_text('{"model": "simple_cnn"}')
    with pytest.raises(CifarlabError, match=r"config\.json: missing num_classes, class_names"):
        read_run(tmp_path)
    (tmp_path / "config.json").write_text("[1, 2]")
    with pytest.raises(CifarlabError, match=r"config\.json: expected a JSON object"):
        read_run(tmp_path)


def _hold_lock(run: Path) -> subprocess.Popen:
    """Another process holding ``run``'s training lock (until killed), as a trainer does."""
    holder = subprocess.Popen(
        [sys.executable, "-c",
         "import sys, time; from cifarlab.runs import RunFolder\n"
         "with RunFolder(sys.argv[1]).lock():\n    print('locked', flush=True); time.sleep(120)",
         str(run)],
        stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert holder.stdout is not None
    if holder.stdout.readline().strip() != "locked":
        holder.kill()
        raise AssertionError("the lock holder did not start")
    return holder


def test_a_folder_being_trained_is_not_trained_into_again(
    cifar10_root: Path, tmp_path: Path
) -> None:
    """Another process holding the run folder (here: in its first epoch, no checkpoint yet)
    makes a second train into it fail clearly; once that process is gone, the folder is free."""
    run = tmp_path / "r"
    holder = _hold_lock(run)
    try:
        with pytest.raises(
            CifarlabError, match=rf"is being trained right now \(process {holder.pid} "
        ):
            train(_small(cifar10_root, train_size=300), out=run, progress=False)
    finally:
        holder.kill()
        holder.wait()
    train(_small(cifar10_root, train_size=300), out=run, progress=False)
    assert (run / "best.pt").is_file()


@pytest.mark.slow
def test_resume_takes_a_new_data_root_and_device_but_keeps_the_rest(tmp_path: Path) -> None:
    """Data that moved is found again with --root; --device is honoured, not ignored; options
    that would change the run are refused in one line."""
    from fakedata import write_cifar10_python

    write_cifar10_python(tmp_path / "data", per_batch=40, test=40)
    run = tmp_path / "r"
    first = cli_run(
        _cli("train", "--model", "simple_cnn", "--root", str(tmp_path / "data"), "--val-size",
             "20", "--epochs", "1", "--device", "cpu", "--no-progress", "--out", str(run)),
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    assert first.returncode == 0, first.stderr
    (tmp_path / "data").rename(tmp_path / "moved")

    def resume(*extra: str) -> subprocess.CompletedProcess:
        return cli_run(
            _cli("train", "--resume", str(run), "--no-progress", *extra),
            capture_output=True, text=True, timeout=120,
        )  # fmt: skip

    r = resume("--epochs", "2")
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert str(tmp_path / "data") in r.stderr  # the folder it looked in
    r = resume("--epochs", "2", "--lr", "0.1", "--set", "seed=1")
    expected = ("--lr, --seed cannot change when a run is resumed (only --epochs, --device, "
                "--root, --threads can)")  # fmt: skip
    assert r.returncode == 1 and expected in r.stderr, r.stderr
    if not torch.cuda.is_available():
        r = resume("--epochs", "2", "--device", "cuda")
        assert r.returncode == 1 and "no CUDA GPU" in r.stderr, r.stderr
    r = resume("--epochs", "2", "--root", str(tmp_path / "moved"), "--device", "cpu")
    assert r.returncode == 0, r.stderr
    assert [row["epoch"] for row in _history(run)] == [1, 2]
    config = json.loads((run / "config.json").read_text())
    assert config["root"] == str(tmp_path / "moved") and config["epochs"] == 2


def test_a_torn_metrics_line_does_not_stop_a_resume(cifar10_root: Path, tmp_path: Path) -> None:
    run = train(_small(cifar10_root, train_size=300, epochs=1), out=tmp_path / "r",
                progress=False)  # fmt: skip
    with open(run / "metrics.jsonl", "a") as f:
        f.write('{"epoch": 2, "train_lo')  # as a crash in the middle of a write leaves it
    train(TrainConfig(epochs=2), resume=run, progress=False)
    assert [row["epoch"] for row in _history(run)] == [1, 2]


@pytest.mark.slow
def test_compare_refuses_a_damaged_evaluation(cifar10_root: Path, tmp_path: Path) -> None:
    run = train(_small(cifar10_root, train_size=300), out=tmp_path / "r", progress=False)
    for text in ("{not json", '{"accuracy": 0.5}'):
        (run / "eval_test.json").write_text(text)
        r = cli_run(_cli("compare", str(run), str(run), "--out", str(tmp_path / "c.html")),
                    capture_output=True, text=True, timeout=120)  # fmt: skip
        assert r.returncode == 1 and "Traceback" not in r.stderr, r.stderr
        assert "eval_test.json: not an evaluation written by cifarlab" in r.stderr
    assert not (tmp_path / "c.html").exists()


def test_a_run_that_fails_at_once_leaves_no_folder(tmp_path: Path) -> None:
    r = cli_run(_cli("train", "--root", str(tmp_path / "no-data"), "--out",
                     str(tmp_path / "runs" / "r"), "--no-progress"),
                capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 1 and "no-data" in r.stderr and "Traceback" not in r.stderr
    assert not (tmp_path / "runs" / "r").exists()


class _RunsACommand:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # noqa: ANN204 - what a booby-trapped checkpoint carries
        return (os.system, (f"touch {self.marker}",))


def test_a_checkpoint_that_carries_code_is_refused(tmp_path: Path) -> None:
    marker = tmp_path / "ran"
    torch.save({"model": {}, "extra": _RunsACommand(marker)}, tmp_path / "best.pt")
    with pytest.raises(CifarlabError, match=r"best\.pt: refused to load: it asks for \w+\.system"):
        load_checkpoint(tmp_path / "best.pt")
    assert not marker.exists()
    (tmp_path / "last.pt").write_bytes(b"not a checkpoint")
    with pytest.raises(CifarlabError, match=r"last\.pt: not a readable checkpoint \(") as e:
        load_checkpoint(tmp_path / "last.pt")
    assert "weights_only" not in str(e.value) and "\n" not in str(e.value)


# --------------------------------------------------------------------------- losing track of a run


def _tiny(tmp_path: Path, epochs: int = 1) -> TrainConfig:
    from fakedata import write_cifar10_python

    root = tmp_path / "data"
    if not root.exists():
        write_cifar10_python(root, per_batch=20, test=20, seed=0)
    return TrainConfig(model="fastnet_s", model_args={"widths": [8, 16, 16]}, root=str(root),
                       epochs=epochs, val_size=20, precision="fp32", device="cpu")  # fmt: skip


def test_disk_full_while_copying_best_is_repaired_by_resume(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    """The copy of best.pt fails half-way (a full disk): no partial file is left, and once
    there is space again --resume rebuilds best.pt and the metrics row the crash lost (both
    from last.pt) instead of calling the run finished."""
    import errno

    import cifarlab.runs as runs

    real_copy = runs.shutil.copyfileobj

    def disk_full(src, dst, length=0):  # noqa: ANN001, ANN202
        dst.write(src.read(4096))
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(runs.shutil, "copyfileobj", disk_full)
    run = tmp_path / "r"
    with pytest.raises(CifarlabError, match="No space left on device"):
        train(_tiny(tmp_path), out=run, progress=False)
    left = sorted(p.name for p in run.iterdir() if not p.name.startswith(runs.EVENTS))
    assert left == [".lock", "config.json", "last.pt"]  # (and TensorBoard's file, if installed)
    monkeypatch.setattr(runs.shutil, "copyfileobj", real_copy)  # space again
    capsys.readouterr()
    train(resume=run, progress=False)
    out = capsys.readouterr().out
    assert "lacked the row of epoch 1: restored from last.pt" in out
    assert "rebuilt from last.pt (the best epoch, 1, is the last)" in out
    assert "has finished all 1 epochs; nothing to resume" in out
    assert (run / "best.pt").read_bytes() == (run / "last.pt").read_bytes()
    assert [row["epoch"] for row in _history(run)] == [1]
    assert json.loads((run / "config.json").read_text())["best_val_acc"] is not None


def test_resume_says_what_to_do_when_best_cannot_be_rebuilt(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = train(_tiny(tmp_path, epochs=2), out=tmp_path / "r", progress=False)
    state = load_checkpoint(run / "last.pt", "resume")
    state["best_epoch"] = 1  # the best epoch is not the last: best.pt cannot come from last.pt
    save_checkpoint(run / "last.pt", state)
    (run / "best.pt").unlink()
    with pytest.raises(CifarlabError) as e:
        train(resume=run, progress=False)
    message = str(e.value)
    assert "best.pt: no checkpoint there" in message and "(epoch 1) cannot be rebuilt" in message
    assert f"copy {run / 'last.pt'} to {run / 'best.pt'} and resume again" in message
    assert "nothing to resume" not in message and "\n" not in message
    shutil.copyfile(run / "last.pt", run / "best.pt")  # as it says
    capsys.readouterr()
    train(resume=run, progress=False)
    assert "has finished all 2 epochs; nothing to resume" in capsys.readouterr().out


def test_resume_of_an_older_checkpoint_says_which_rows_are_lost(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = train(_tiny(tmp_path), out=tmp_path / "r", progress=False)
    for name in ("last.pt", "best.pt"):  # as versions before the rows were kept in last.pt
        state = load_checkpoint(run / name, "resume")
        del state["row"], state["best_epoch"]
        save_checkpoint(run / name, state)
    (run / "metrics.jsonl").unlink()
    capsys.readouterr()
    train(resume=run, progress=False)
    out = capsys.readouterr().out
    assert "metrics.jsonl lacks the rows of epoch(s) 1: they are lost" in out
    assert "has finished all 1 epochs (metrics.jsonl lacks epoch(s) 1: lost)" in out


def test_resume_of_an_older_run_whose_best_epochs_tie(tmp_path: Path) -> None:
    """Before issue 12 a checkpoint did not say which epoch was best: with two epochs tied
    on validation accuracy, best.pt holds the first (saved on a strict gain only). Resuming
    such a run goes on and keeps that best.pt."""
    run = train(_tiny(tmp_path, epochs=1), out=tmp_path / "r", progress=False)
    first_best = (run / "best.pt").read_bytes()
    train(TrainConfig(epochs=2), resume=run, progress=False)
    (run / "best.pt").write_bytes(first_best)  # epoch 1, tied with epoch 2 below
    rows = _history(run)
    tie = rows[0]["val_acc"]
    for row in rows:
        row["val_acc"] = tie
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    for name in ("last.pt", "best.pt"):  # as versions before issue 12 wrote them
        state = load_checkpoint(run / name, "resume")
        state.pop("row", None), state.pop("best_epoch", None)
        state["best_val_acc"] = tie
        save_checkpoint(run / name, state)
    train(TrainConfig(epochs=3), resume=run, progress=False)
    assert [row["epoch"] for row in _history(run)] == [1, 2, 3]
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] in (1, 3)  # epoch 1 kept, unless epoch 3 beat it


def test_resume_without_last_goes_on_from_best(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = train(_tiny(tmp_path, epochs=1), out=tmp_path / "r", progress=False)
    (run / "last.pt").unlink()
    (run / ".last.pt.abcd1234.tmp").write_text("left by a killed process")
    capsys.readouterr()
    train(TrainConfig(epochs=2), resume=run, progress=False)
    out = capsys.readouterr().out
    assert "last.pt is missing: resuming from best.pt (epoch 1)" in out
    assert [row["epoch"] for row in _history(run)] == [1, 2]
    assert (run / "last.pt").is_file() and not (run / ".last.pt.abcd1234.tmp").exists()


def test_resume_of_a_run_being_trained_names_the_process(tmp_path: Path) -> None:
    """In its first epoch a run has no checkpoint yet: --resume must say that it is being
    trained (by which process), not that it stopped before saving one."""
    run = tmp_path / "r"
    run.mkdir()
    cfg = _tiny(tmp_path).resolved()
    (run / "config.json").write_text(json.dumps({**cfg.to_dict(), "num_classes": 10,
                                                 "class_names": list("abcdefghij")}))  # fmt: skip
    holder = _hold_lock(run)
    try:
        with pytest.raises(CifarlabError) as e:
            train(resume=run, progress=False)
        message = str(e.value)
        assert f"is being trained right now (process {holder.pid} on " in message
        assert "before resuming it" in message and "train it again" not in message
        from cifarlab.trained import open_run

        with pytest.raises(
            CifarlabError,
            match=rf"the run is being trained right now \(process "
            rf"{holder.pid} on .*\) and has not finished its first epoch",
        ):
            open_run(run)  # evaluate, predict, export
    finally:
        holder.kill()
        holder.wait()
    with pytest.raises(CifarlabError, match="stopped before it saved one; train it again"):
        train(resume=run, progress=False)
