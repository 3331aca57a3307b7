"""Training to a time budget and precision chosen by measurement: real probes of real models,
real training runs on small subsets of the real data, real subprocesses and signals."""

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

from cifarlab.errors import CifarlabError
from cifarlab.models import model_names
from cifarlab.train import budget as budgets
from cifarlab.train import probe
from cifarlab.train.recipes import RECIPES
from conftest import cli_run  # a warm fork where nothing in the test needs a fresh interpreter

# Tests share the machine (and its two cores) with each other: timing limits get a margin.
SLACK = 1.5


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *args]


# --------------------------------------------------------------------------- durations


@pytest.mark.parametrize(
    "text, seconds",
    [("90s", 90), ("5m", 300), ("1h", 3600), ("1h30m", 5400), ("2.5m", 150), ("300", 300),
     ("10 min", 600), (45, 45)],
)  # fmt: skip
def test_durations(text: str | int, seconds: float) -> None:
    assert budgets.parse_duration(text) == seconds


@pytest.mark.parametrize("text", ["soon", "0s", "-5m", "5 parsecs", "", "m"])
def test_bad_durations_are_clear_errors(text: str) -> None:
    with pytest.raises(CifarlabError, match="^budget "):
        budgets.parse_duration(text)


# --------------------------------------------------------------------------- curves


def test_curves_are_measured_data_for_real_recipes() -> None:
    data = budgets.curves()
    assert "benchmarks/epoch_curves.py" in data["about"]
    sizes = []
    for name, c in data["candidates"].items():
        assert c["recipe"] in RECIPES and c["model"] in model_names(), name
        assert RECIPES[c["recipe"]].config.model == c["model"]
        points = c["points"]
        assert len(points) >= 2, f"{name}: a curve needs two points"
        epochs = [p[0] for p in points]
        assert epochs == sorted(epochs) and len(set(epochs)) == len(epochs)
        assert all(0.1 < p[1] < 1 and p[2] >= 1 and p[3] for p in points)  # acc, seeds, machine
        sizes.append(sum(x.numel() for x in __import__("cifarlab").models.create_model(
            c["model"]).parameters()))  # fmt: skip
    assert sizes == sorted(sizes), "candidates must be listed smallest first"


def test_expected_accuracy_interpolates_and_never_extrapolates_upwards() -> None:
    points = [[1, 0.60, 1, "m"], [4, 0.80, 1, "m"], [16, 0.90, 1, "m"]]
    assert budgets.expected_accuracy(points, 0.5) is None  # below the first point: no evidence
    assert budgets.expected_accuracy(points, 1) == pytest.approx(0.60)
    assert budgets.expected_accuracy(points, 2) == pytest.approx(0.70)  # half-way in log(epochs)
    assert budgets.expected_accuracy(points, 8) == pytest.approx(0.85)
    assert budgets.expected_accuracy(points, 64) == pytest.approx(0.90)  # flat beyond the last


def test_a_big_network_is_not_probed_when_the_slowest_smaller_one_could_not_fit_it() -> None:
    # a bigger network is never faster per image: the bound is the slowest one measured
    small = budgets.Option("fastnet_s", "quick", "fastnet_s", 256, images_per_s=4000.0)
    large = budgets.Option("fastnet_l", "max-cpu", "fastnet_l", 256, images_per_s=500.0)
    unprobed = budgets.Option("fastnet_m", "fast", "fastnet_m", 256)  # hopeless itself: 0
    xl = budgets.Option("fastnet_xl_muon", "long", "fastnet_xl", 256, cost=0.7)
    # 6 epochs of 45,000 images at 0.7 of a step of 500 images/s: 378 s, 394 s of a budget
    assert budgets._hopeless(xl, [small, unprobed, large], 6, 0.0, 300, 45000)
    assert xl.min_budget == pytest.approx(6 * 45000 * 0.7 / 500 / budgets.TARGET)
    assert "at fastnet_l's speed" in xl.note
    assert not budgets._hopeless(xl, [small, unprobed, large], 6, 0.0, 400, 45000)
    # with only the small network measured, its speed is the bound
    assert not budgets._hopeless(xl, [small], 6, 0.0, 300, 45000)


# --------------------------------------------------------------------------- probe


def test_probe_measures_caches_and_remeasures(isolated_cache: Path) -> None:
    first = probe.measure("fastnet_s", batch_sizes=(64,), seconds=0.2)
    assert [s.precision for s in first] == ["fp32", "bf16"]
    assert all(s.images_per_s > 0 and not s.cached for s in first)
    assert all(s.images_per_s == pytest.approx(64 / s.step_seconds) for s in first)
    stored = json.loads((isolated_cache / "probe.json").read_text())
    assert len(stored["entries"]) == 3  # fp32, and bf16 with either weight gradients
    again = probe.measure("fastnet_s", batch_sizes=(64,))
    assert all(s.cached for s in again)
    assert [s.images_per_s for s in again] == [s.images_per_s for s in first]
    fresh = probe.measure("fastnet_s", batch_sizes=(64,), seconds=0.2, use_cache=False)
    assert not any(s.cached for s in fresh)
    # a damaged cache file, or a damaged entry, is measured again, no error
    (isolated_cache / "probe.json").write_text("{not json")
    assert not any(s.cached for s in probe.measure("fastnet_s", batch_sizes=(64,), seconds=0.1))
    stored = json.loads((isolated_cache / "probe.json").read_text())
    for entry in stored["entries"].values():
        entry["images_per_s"] = "fast"
    (isolated_cache / "probe.json").write_text(json.dumps(stored))
    assert not any(s.cached for s in probe.measure("fastnet_s", batch_sizes=(64,), seconds=0.1))


def test_auto_precision_follows_the_measured_speeds() -> None:
    choice = probe.choose_precision("fastnet_s", batch_size=64)
    by = {s.precision: s.images_per_s for s in choice.speeds}
    assert choice.precision == probe.pick_precision(by["fp32"], by["bf16"])
    assert probe.pick_precision(100, 200) == "bf16" and probe.pick_precision(200, 100) == "fp32"
    tie = probe.pick_precision(100, 101)
    assert tie == ("bf16" if probe.native_bf16() else "fp32")
    assert "images/s" in choice.reason and "fastnet_s" in choice.reason
    assert "cached probe)" in probe.choose_precision("fastnet_s", batch_size=64).reason


def test_machine_is_described() -> None:
    info = probe.machine_info()
    assert info["cores"] >= 1 and info["threads"] == torch.get_num_threads()
    assert info["torch"] == torch.__version__
    text = probe.describe_machine(info)
    assert str(info["cpu"]) in text and "flags" in text


@pytest.mark.slow
def test_planner_picks_the_best_expected_accuracy_that_fits(
    planner_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARLAB_CACHE", str(planner_cache))  # the FastNets' speeds, once a run
    plan = budgets.plan(600, num_train=45000, val_size=5000, spent=1.0)
    feasible = [o for o in plan.options if o.expected_acc is not None]
    assert plan.chosen in feasible
    assert plan.chosen.expected_acc == max(o.expected_acc for o in feasible)
    c = plan.chosen
    # it fills the budget: what is left after loading (1 s) and probing, less one step
    assert c.seconds <= 600 * budgets.TARGET - 1.0
    assert (
        c.seconds
        >= 600 * budgets.TARGET - plan.setup_seconds - 2 * c.batch_size / c.images_per_s - 5
    )
    assert c.epochs == pytest.approx(c.steps * c.batch_size / 45000)
    assert c.name in plan.reason() and "expected validation accuracy" in plan.reason()


def test_too_short_a_budget_says_the_minimum(
    planner_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARLAB_CACHE", str(planner_cache))  # the FastNets' speeds, once a run
    with pytest.raises(CifarlabError, match=r"too short .* give \d+s or more"):
        budgets.plan(0.5, num_train=45000, val_size=5000)


# --------------------------------------------------------------------------- training


def _budget_args(root: Path, budget: str, out: Path, *extra: str) -> list[str]:
    return _cli("train", "--budget", budget, "--root", str(root), "--train-size", "3000",
                "--val-size", "500", "--device", "cpu", "--out", str(out), "--no-progress",
                *extra)  # fmt: skip


@pytest.mark.slow
@pytest.mark.alone  # it times the machine: no other test beside it
def test_a_budget_run_ends_within_its_budget_and_records_its_choice(
    cifar10_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "b"
    t0 = time.monotonic()
    r = subprocess.run(_budget_args(cifar10_root, "25s", run), capture_output=True, text=True,
                       timeout=300)  # fmt: skip
    wall = time.monotonic() - t0
    assert r.returncode == 0, r.stderr
    # the choice is said before training starts
    out = r.stdout
    assert out.index("budget 25 s: fastnet_") < out.index("epoch ")
    config = json.loads((run / "config.json").read_text())
    plan = config["budget_plan"]
    assert config["budget"] == 25 and config["model"] == plan["chosen"]["model"]
    assert config["precision"] == plan["chosen"]["precision"] in ("fp32", "bf16")
    assert plan["reason"] in out and plan["options"][0]["speeds"]
    assert config["steps"] == config["steps_trained"] >= 1
    assert config["budget_used_seconds"] <= 25 * SLACK
    assert wall <= 25 * SLACK + 15  # + the interpreter's start-up and imports
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == config["epochs"]
    assert (run / "last.pt").is_file()


@pytest.mark.slow
@pytest.mark.alone  # it times the machine: no other test beside it
def test_a_budget_run_resumes_after_ctrl_c_within_its_budget(
    cifar10_root: Path, tmp_path: Path
) -> None:
    run = tmp_path / "b"
    proc = subprocess.Popen(_budget_args(cifar10_root, "30s", run), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 120
    while not ((run / "metrics.jsonl").is_file() and (run / "metrics.jsonl").read_text()):
        assert proc.poll() is None and time.monotonic() < deadline, "run ended before epoch 1"
        time.sleep(0.05)
    time.sleep(0.2)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130 and "Traceback" not in err, err
    state = torch.load(run / "last.pt", weights_only=False)
    used_before = state["budget_used"]
    assert 0 < used_before < 30
    time.sleep(2)  # time between the sessions is not the run's
    r = subprocess.run(_cli("train", "--resume", str(run), "--no-progress"), capture_output=True,
                       text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "resuming" in r.stdout
    config = json.loads((run / "config.json").read_text())
    assert config["budget_used_seconds"] <= 30 * SLACK
    assert config["budget_used_seconds"] > used_before
    assert config["budget_plan"]["chosen"]["model"] == config["model"]
    final = torch.load(run / "last.pt", weights_only=False)
    assert final["step"] == 0 and final["epoch"] == config["epochs"]


@pytest.mark.slow
def test_budget_errors_are_one_line(cifar10_root: Path, tmp_path: Path) -> None:
    cases = [
        (["--budget", "1s"], "too short for any network"),
        (["--budget", "soon"], "--budget 'soon': give a duration like 90s"),
        (["--budget", "5m", "--epochs", "3"], "--epochs cannot be combined with a budget"),
        (["--budget", "5m", "--recipe", "fast"], "--recipe cannot be combined"),
        (["--budget", "5m", "--model", "mlp"], "--model mlp has no measured accuracy curve"),
    ]
    for args, message in cases:
        out = tmp_path / "r"
        cmd = _cli("train", *args, "--root", str(cifar10_root), "--out", str(out), "--no-progress")
        r = cli_run(cmd, capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (args, r.stderr)
        assert message in r.stderr and "Traceback" not in r.stderr, (args, r.stderr)
        assert len(r.stderr.strip().splitlines()[-1]) > 10
        assert not out.exists(), args


@pytest.mark.slow
def test_precision_auto_is_measured_and_recorded(cifar10_root: Path, tmp_path: Path) -> None:
    run = tmp_path / "q"
    r = cli_run(_cli("train", "--recipe", "quick", "--epochs", "1", "--root",
                     str(cifar10_root), "--train-size", "1000", "--val-size", "200",
                     "--out", str(run), "--no-progress"),
                capture_output=True, text=True, timeout=300)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "precision auto → " in r.stdout
    config = json.loads((run / "config.json").read_text())
    choice = config["precision_choice"]
    speeds = {s["precision"]: s["images_per_s"] for s in choice["speeds"]}
    want = probe.pick_precision(speeds["fp32"], speeds["bf16"])
    assert config["precision_used"] == choice["precision"] == want
    assert config["precision"] == "auto" and config["machine"]


@pytest.mark.slow
def test_doctor_reports_machine_speeds_recipes_and_budgets(tmp_path: Path) -> None:
    env = {**os.environ, "CIFARLAB_CACHE": str(tmp_path / "cache")}
    r = cli_run(_cli("doctor", "--json", "--matmul"), capture_output=True, text=True,
                timeout=300, env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    report = json.loads(r.stdout)
    assert report["machine"]["cores"] >= 1
    assert {s["model"] for s in report["speeds"]} == {
        "fastnet_s",
        "fastnet_m",
        "fastnet_l",
        "fastnet_xl",
    }
    assert report["matmul_flops"]["fp32"] > 1e9
    assert set(report["recipes"]) >= {"quick", "fast", "max-cpu"}
    assert report["recipes"]["quick"] < report["recipes"]["fast"] < report["recipes"]["max-cpu"]
    assert "5m" in report["budgets"] and "1h" in report["budgets"]
    # the second time reads the cache: the human-readable form says so
    r = cli_run(_cli("doctor"), capture_output=True, text=True, timeout=300, env=env)
    assert r.returncode == 0 and "(cached)" in r.stdout and "machine:" in r.stdout


def test_probing_leaves_the_seeded_weights_alone(cifar10_root: Path, tmp_path: Path) -> None:
    """precision="auto" probes on the first run (empty cache) and not on the second: both
    start from the same weights and give the same numbers."""
    from cifarlab.train import TrainConfig, train
    from cifarlab.train.recipes import recipe_config

    common = dict(root=str(cifar10_root), train_size=1000, val_size=200, epochs=1, seed=3)
    cfg = recipe_config("quick", **common)
    assert cfg.precision == "auto"
    probe._cache_file().unlink(missing_ok=True)  # the data cache is shared; the probe's is not
    runs = [train(cfg, out=tmp_path / f"r{i}", progress=False) for i in range(2)]
    first, second = (json.loads((r / "config.json").read_text()) for r in runs)
    assert not all(s["cached"] for s in first["precision_choice"]["speeds"])
    assert all(s["cached"] for s in second["precision_choice"]["speeds"])
    a, b = (torch.load(r / "last.pt", weights_only=False)["model"] for r in runs)
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert isinstance(TrainConfig.from_saved(first), TrainConfig)


def test_a_run_counted_in_steps_ends_part_way_through_its_last_epoch(
    cifar10_root: Path, tmp_path: Path
) -> None:
    from cifarlab.train import train
    from cifarlab.train.recipes import recipe_config

    # 1,000 images in batches of 256: 4 steps an epoch; 6 steps = 1 epoch and a half
    cfg = recipe_config("quick", root=str(cifar10_root), train_size=1000, val_size=200,
                        steps=6, precision="fp32")  # fmt: skip
    run = train(cfg, out=tmp_path / "s", progress=False)
    config = json.loads((run / "config.json").read_text())
    assert config["epochs"] == 2 and config["steps"] == 6
    history = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert len(history) == 2
    state = torch.load(run / "last.pt", weights_only=False)
    assert state["epoch"] == 2 and state["step"] == 0
    # it cannot be extended by epochs: its length is its step count
    with pytest.raises(CifarlabError, match="cannot extend a run counted in steps"):
        train(resume=run, changes={"epochs": 5})


def test_evaluation_uses_the_precision_training_measured() -> None:
    from cifarlab.train.device import autocast_dtype, run_autocast

    cpu = torch.device("cpu")
    base = {"precision": "auto", "device_used": "cpu"}
    assert run_autocast({**base, "precision_used": "fp32"}, cpu) is None
    assert run_autocast({**base, "precision_used": "bf16"}, cpu) is torch.bfloat16
    assert run_autocast(base, cpu) == autocast_dtype("auto", cpu)  # an older run: the flag rule
    assert run_autocast({"precision": "bf16", "precision_used": "fp32"}, cpu) is torch.bfloat16
