"""Groups of seeds (`cifarlab train --seeds`) and experiments as files (`--config`), on small
subsets of the real CIFAR-10 copy, through the real command line."""

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

from cifarlab.errors import SettingError
from cifarlab.runs import GroupFolder
from cifarlab.train.config import parse_seeds
from conftest import require_shared_data, run_cli, shared_data

# one thread: the same weights in one process or in --parallel's (which would split the cores);
# float32: the same on every CPU, and no probe of the machine
SMALL = ["--recipe", "quick", "--train-size", "1000", "--val-size", "500", "--epochs", "2",
         "--threads", "1", "--precision", "fp32", "--no-progress",
         "--root", str(shared_data())]  # fmt: skip


def _weights(run: Path, which: str = "best.pt") -> dict[str, torch.Tensor]:
    return torch.load(run / which, map_location="cpu", weights_only=True)["model"]


def _same_weights(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture(scope="module")
def group(shared_cache: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three seeds of a tiny set-up, one after the other."""
    require_shared_data()
    out = tmp_path_factory.mktemp("group") / "g"
    r = run_cli("train", *SMALL, "--seeds", "0-2", "--out", str(out),
                env={"CIFARLAB_CACHE": str(shared_cache)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    return out


def test_seeds_parse() -> None:
    assert parse_seeds("0-4") == [0, 1, 2, 3, 4]
    assert parse_seeds("0,3,7") == [0, 3, 7]
    assert parse_seeds("0-2,9") == [0, 1, 2, 9]
    assert parse_seeds([5]) == [5]
    for bad, why in [("4-0", "backwards"), ("x", "like 0-4"), ("0,0", "twice"),
                     ("-1", "like 0-4"), ("0-5000", "more than 1000")]:  # fmt: skip
        with pytest.raises(SettingError, match=why):
            parse_seeds(bad)


@pytest.mark.data
def test_a_group_is_one_run_per_seed_and_a_summary(group: Path) -> None:
    data = GroupFolder(group).read()
    assert data["seeds"] == [0, 1, 2]
    assert [r["state"] for r in data["runs"]] == ["finished"] * 3
    values = []
    for seed in (0, 1, 2):
        config = json.loads((group / f"seed-{seed}" / "config.json").read_text())
        assert config["seed"] == seed and config["train_images"] == 1000
        values.append(config["best_val_acc"])
    summary = data["summary"]["best_val_acc"]
    assert summary["values"] == values and summary["n"] == 3
    assert summary["mean"] == pytest.approx(sum(values) / 3)
    assert not _same_weights(group / "seed-0", group / "seed-1")  # the seed did change something


@pytest.mark.data
@pytest.mark.slow
def test_an_interrupted_group_resumes_to_the_same_weights(
    group: Path, tmp_path: Path, cifar10_root: Path
) -> None:
    """Ctrl-C during seed 1; the resumed group leaves seed 0 as it was, resumes seed 1 and
    trains seed 2: every run ends with the weights of the uninterrupted group."""
    out = tmp_path / "g"
    cmd = [sys.executable, "-m", "cifarlab", "train", *SMALL, "--seeds", "0-2", "--out", str(out)]
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                          env=env) as p:  # fmt: skip
        for line in p.stdout:
            if line.startswith("epoch   1/2") and (out / "seed-1").exists():
                p.send_signal(signal.SIGINT)
                break
        _, err = p.communicate(timeout=120)
    assert p.returncode == 130, err
    assert f"Resume the group with: cifarlab train --resume {out}" in err
    states = [r["state"] for r in GroupFolder(out).read()["runs"]]
    assert states[0] == "finished" and states[2] == "new"
    seed0 = (out / "seed-0" / "best.pt").stat().st_mtime_ns
    time.sleep(0.01)
    r = run_cli("train", "--resume", str(out), "--no-progress")
    assert r.returncode == 0, r.stderr
    assert "seed 0: finished before" in r.stdout
    assert (out / "seed-0" / "best.pt").stat().st_mtime_ns == seed0  # left untouched
    assert [r["state"] for r in GroupFolder(out).read()["runs"]] == ["finished"] * 3
    for seed in (0, 1, 2):
        assert _same_weights(out / f"seed-{seed}", group / f"seed-{seed}"), seed


@pytest.mark.data
@pytest.mark.slow
def test_parallel_seeds_train_the_same_runs(
    group: Path, tmp_path: Path, cifar10_root: Path
) -> None:
    out = tmp_path / "g"
    r = run_cli("train", *SMALL, "--seeds", "1,2", "--parallel", "2", "--out", str(out))
    assert r.returncode == 0, r.stderr
    assert "share its" in r.stdout  # a CPU: said to be no faster
    for seed in (1, 2):
        assert _same_weights(out / f"seed-{seed}", group / f"seed-{seed}"), seed


@pytest.mark.data
def test_group_mistakes_are_one_line_errors(group: Path, tmp_path: Path) -> None:
    cases = [
        (["train", *SMALL, "--seeds", "3-1", "--out", str(tmp_path / "a")], "--seeds has a range"),
        (["train", *SMALL, "--seeds", "0-1", "--seed", "3", "--out", str(tmp_path / "b")],
         "--seed and --seeds"),
        (["train", "--budget", "1m", "--seeds", "0-1"], "--seeds cannot be combined with --budget"),
        (["train", *SMALL, "--parallel", "2"], "--parallel needs --seeds"),
        (["train", *SMALL, "--seeds", "0-1", "--out", str(group)], "already holds a group"),
        (["train", *SMALL, "--seeds", "0-1", "--out", str(group / "seed-0")], "single run"),
        (["train", "--resume", str(group), "--seeds", "0-4"], "cannot change when a group"),
        (["train", "--resume", str(group), "--lr", "0.1"], "--lr cannot change when a run"),
        (["train", "--resume", str(group), "--epochs", "1"], "--epochs cannot shorten a group"),
        (["train", "--config", str(group / "seed-0" / "config.json"), "--recipe", "fast",
          "--out", str(tmp_path / "c")], "--recipe cannot be combined with a recorded run"),
    ]  # fmt: skip
    for args, message in cases:
        r = run_cli(*args)
        assert r.returncode == 1, (args, r.stdout, r.stderr)
        assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, (args, r.stderr)
        assert "Traceback" not in r.stderr
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()
    assert not (tmp_path / "c").exists()


@pytest.mark.data
def test_a_seed_that_diverges_is_recorded_and_the_group_goes_on(
    tmp_path: Path, cifar10_root: Path
) -> None:
    out = tmp_path / "g"
    r = run_cli(
        "train", *SMALL, "--lr", "1e9", "--epochs", "1", "--seeds", "0-1", "--out", str(out)
    )
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "2 of 2 seeds failed" in r.stderr and len(r.stderr.strip().splitlines()) <= 2
    assert "seed 0 failed: the training loss became NaN" in r.stdout  # and seed 1 was trained
    runs = GroupFolder(out).read()["runs"]
    assert [x["state"] for x in runs] == ["failed", "failed"]
    assert all("NaN" in x["reason"] for x in runs)


# --------------------------------------------------------------------------- --config


@pytest.mark.data
def test_a_toml_experiment_is_its_settings_and_the_command_line_overrides(
    group: Path, tmp_path: Path, cifar10_root: Path
) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(
        f'root = "{cifar10_root}"\nprecision = "fp32"\nrecipe = "quick"\ntrain_size = 1000\n'
        "val_size = 500\nepochs = 3\nthreads = 1\nlr = 0.5\n[augment]\ntranslate = 2\n"
        'flip = "alternate"\n'
    )
    r = run_cli("train", "--config", str(exp), "--epochs", "2", "--seed", "1", "--lr", "0.75",
                "--no-progress", "--out", str(tmp_path / "run"))  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["epochs"] == 2 and config["lr"] == 0.75 and config["train_size"] == 1000
    # the same settings as the group's seed 1 (the quick recipe's lr is 0.75): the same weights
    assert _same_weights(tmp_path / "run", group / "seed-1")


@pytest.mark.data
def test_a_recorded_run_trains_again_to_the_same_weights(
    group: Path, tmp_path: Path, cifar10_root: Path
) -> None:
    recorded = group / "seed-2" / "config.json"
    r = run_cli("train", "--config", str(recorded), "--out", str(tmp_path / "again"),
                "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "same versions and machine as the recorded run" in r.stdout
    assert _same_weights(tmp_path / "again", group / "seed-2")
    assert _same_weights(tmp_path / "again", group / "seed-2")
    # settings given here: no promise of the same weights
    r = run_cli("train", "--config", str(recorded), "--out", str(tmp_path / "e1"), "--epochs", "1",
                "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "as the recorded run, but epochs set here: the weights will differ" in r.stdout
    # another machine or version is said in one line
    changed = json.loads(recorded.read_text())
    changed["provenance"] = {**changed["provenance"], "torch": "1.0.0", "cpu": "a Z80"}
    other = tmp_path / "other.json"
    other.write_text(json.dumps(changed))
    r = run_cli("train", "--config", str(other), "--out", str(tmp_path / "o"), "--epochs", "1",
                "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    line = next(x for x in r.stdout.splitlines() if "differs from the recorded run" in x)
    assert "torch 1.0.0 → " in line and "CPU a Z80 → " in line


@pytest.mark.parametrize(
    "text,message",
    [
        ("lr = 'fast'\n", "exp.toml: lr must be a number, got 'fast'"),
        ("learning_rate = 0.1\n", "exp.toml: learning_rate is not a setting"),
        ("lr = 0.1\nlr = 0.2\n", "exp.toml: not valid TOML"),
        ("[augment]\nshift = 2\n", "exp.toml: augment has no setting 'shift'"),
        ("epochs = -1\n", "exp.toml: epochs must be"),
    ],
)
def test_config_file_mistakes_name_the_file_and_the_key(
    tmp_path: Path, text: str, message: str
) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text(text)
    r = run_cli("train", "--config", str(exp), "--out", str(tmp_path / "run"), "--no-progress")
    assert r.returncode == 1
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1, r.stderr
    assert not (tmp_path / "run").exists()


def test_config_cannot_be_combined_with_resume_or_budget(tmp_path: Path) -> None:
    exp = tmp_path / "exp.toml"
    exp.write_text("epochs = 1\n")
    for extra, what in [
        (["--budget", "1m"], "--budget"),
        (["--resume", str(tmp_path)], "--resume"),
    ]:
        r = run_cli("train", "--config", str(exp), *extra)
        assert r.returncode == 1 and f"--config cannot be combined with {what}" in r.stderr
