"""Groups of seeds through the real CLI: ``cifarlab evaluate GROUP`` evaluates every run,
``cifarlab compare G1 G2 RUN`` prints each side's mean ± sd and 95 % CI (from the runs' own
eval files, every run's numbers kept) and each pair's difference with its test and verdict,
and writes a page with a dot per run; damaged or unevaluated groups are one error line."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib.collections import PathCollection
from scipy import stats as sps

from cifarlab.evaluate.stats import p_phrase
from cifarlab.report import plots
from cifarlab.report.compare import compare, dot_panels
from conftest import built_once, cli_run, require_shared_data

pytestmark = [pytest.mark.slow, pytest.mark.data]

SEEDS = (0, 1, 2)
# Two set-ups that differ (the training subset's size), tiny: 1 epoch of FastNet-S each.
SETUPS = {"small": 1000, "large": 2000}


def _cli(*args: str) -> list[str]:
    return [sys.executable, "-m", "cifarlab", *args]


def _run(*args: str, cache: Path) -> tuple[int, str, str]:
    r = cli_run(_cli(*args), capture_output=True, text=True, timeout=600,
                env={**os.environ, "CIFARLAB_CACHE": str(cache)})  # fmt: skip
    return r.returncode, r.stdout, r.stderr


def _build(folder: Path) -> None:
    """Two groups of three runs and a single run, trained with the library, group.json as
    `cifarlab train --seeds` writes it (kind, seeds, config)."""
    from cifarlab.runs import GroupFolder
    from cifarlab.train.config import make_config
    from cifarlab.train.launch import train

    root = str(require_shared_data())
    for name, size in SETUPS.items():
        for seed in SEEDS:
            cfg = make_config("quick", root=root, train_size=size, val_size=500, epochs=1,
                              seed=seed, tta=0, device="cpu")  # fmt: skip
            train(cfg, out=folder / name / f"seed-{seed}", progress=False)
        GroupFolder(folder / name).write(
            {"kind": "cifarlab seed group", "seeds": list(SEEDS), "config": cfg.to_dict()}
        )
    cfg = make_config("quick", root=root, train_size=1500, val_size=500, epochs=1, seed=7,
                      tta=0, device="cpu")  # fmt: skip
    train(cfg, out=folder / "one", progress=False)


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("compare-cache")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory: pytest.TempPathFactory, cache: Path) -> dict:
    """The groups and the run, trained once per test run, copied here and evaluated through
    the CLI on the validation split (500 images: the test split's 10,000 would take four times
    as long; the code is the same), ``small`` and the run without reports, ``large`` with:
    their paths and what `cifarlab evaluate` printed for each."""
    old = os.environ.get("CIFARLAB_CACHE")
    os.environ["CIFARLAB_CACHE"] = str(cache)
    try:
        built = built_once(tmp_path_factory, "seed-groups", _build)
    finally:
        if old is None:
            os.environ.pop("CIFARLAB_CACHE", None)
        else:
            os.environ["CIFARLAB_CACHE"] = old
    base = tmp_path_factory.mktemp("groups")
    out: dict = {}
    for name in (*SETUPS, "one"):
        shutil.copytree(built / name, base / name)
        extra = [] if name == "large" else ["--no-report"]
        code, stdout, stderr = _run("evaluate", str(base / name), "--split", "val", "--device",
                                    "cpu", *extra,
                                    cache=cache)  # fmt: skip
        assert code == 0, stderr
        out[name] = {"path": base / name, "stdout": stdout}
    return out


def _evals(group: Path) -> list[dict]:
    return [json.loads((group / f"seed-{s}" / "eval_val.json").read_text()) for s in SEEDS]


def _numbers(evals: list[dict]) -> dict[str, list[float]]:
    return {
        "accuracy": [e["accuracy"] for e in evals],
        "macro F1": [e["macro_avg"]["f1"] for e in evals],
        "log-loss": [e["log_loss"] for e in evals],
        "ECE": [e["calibration"]["after"]["ece"] for e in evals],  # the temperature's
    }


def _expected_rows(values: list[float], percent: bool) -> tuple[str, str, list[str]]:
    """mean ± sd, the 95 % t-interval and each run's value as the tables write them."""
    scale, unit = (100, "%") if percent else (1, "")
    digits = 2 if percent else 4
    x = np.array(values) * scale
    mean, sd = x.mean(), x.std(ddof=1)
    half = sps.t.ppf(0.975, len(x) - 1) * sd / np.sqrt(len(x))
    return (
        f"{mean:.{digits}f} ± {sd:.{digits}f}{unit}",
        f"{mean - half:.{digits}f} to {mean + half:.{digits}f}{unit}",
        [f"{v:.{digits}f}{unit}" for v in x],
    )


def _check_summary(text: str, group: Path) -> None:
    """The group's table in ``text`` holds every run's numbers and their mean ± sd and 95 %
    CI, computed here from the eval files."""
    numbers = _numbers(_evals(group))
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{group.name}: group"))
    table = lines[start : start + 7]
    assert "group of 3 runs, seeds 0, 1, 2" in table[0]
    means, cis = [], []
    for column, (label, values) in enumerate(numbers.items()):
        mean, ci, each = _expected_rows(values, label in ("accuracy", "ECE"))
        means.append(mean)
        cis.append(ci)
        for seed, value in zip(SEEDS, each, strict=True):
            row = table[2 + seed].split()
            assert row[0] == f"seed-{seed}" and row[1 + column] == value, (label, row)
    assert re.split(r"\s{2,}", table[5].strip()) == ["mean ± sd", *means]
    assert re.split(r"\s{2,}", table[6].strip()) == ["95 % CI", *cis]


def test_evaluate_group_evaluates_every_run_and_summarizes(evaluated: dict) -> None:
    for name in SETUPS:
        group, text = evaluated[name]["path"], evaluated[name]["stdout"]
        for seed, e in zip(SEEDS, _evals(group), strict=True):
            assert f"seed-{seed} (epoch 1)  accuracy {100 * e['accuracy']:.2f}%" in text
            assert (group / f"seed-{seed}" / "report_val.html").exists() == (name == "large")
        _check_summary(text, group)
        assert "ECE after each run's temperature" in text
        assert "wrote eval_val.json" in text and "in each of the 3 runs" in text
    # a single run is evaluated as before
    assert "precision    recall  f1-score   support" in evaluated["one"]["stdout"]


def test_compare_groups_and_a_run(evaluated: dict, cache: Path, tmp_path: Path) -> None:
    small, large, one = (evaluated[n]["path"] for n in (*SETUPS, "one"))
    out = tmp_path / "cmp.html"
    code, text, err = _run("compare", str(small), str(large), str(one), "--split", "val",
                           "--out", str(out),
                           cache=cache)  # fmt: skip
    assert code == 0, err
    _check_summary(text, small)
    _check_summary(text, large)
    run = json.loads((one / "eval_val.json").read_text())
    assert re.search(rf"^  one\s+{100 * run['accuracy']:.2f}%", text, re.M)

    # large − small: Welch's t-test on the runs' accuracies, as scipy computes it
    a, b = (_numbers(_evals(g))["accuracy"] for g in (small, large))
    ref = sps.ttest_ind(b, a, equal_var=False)
    ci = ref.confidence_interval()
    block = text[text.index("large − small:") :]
    diff = 100 * (np.mean(b) - np.mean(a))
    sign = "+" if diff > 0 else "−"
    row = block.splitlines()[1]
    assert row.startswith(f"  accuracy   {sign}{abs(diff):.2f} points")
    assert f"{abs(100 * ci.low):.2f} to " in row and "Welch's t-test" in row
    assert f" {p_phrase(ref.pvalue)} " in row  # p = 0.237, p < 0.0001
    said = "not distinguishable" if ref.pvalue >= 0.05 else "distinguishable"
    assert row.endswith(said)
    verdict = " ".join(block.split("\n\n")[0].splitlines()[5:])
    assert f"{said} from seed noise with 3 runs per side" in verdict
    assert re.search(r"takes about \d+ runs per side", verdict)
    # a single run against a group: not tested, and it says why
    assert "one − small:" in text and "one side is a single run" in text

    page = out.read_text(encoding="utf-8")
    assert '<section id="stats">' in page and "Every run as a dot" in page
    for group in (small, large):
        for seed, e in zip(SEEDS, _evals(group), strict=True):
            assert f"{group.name} / seed-{seed}</td>" in page  # its own row
            assert f"{100 * e['accuracy']:.2f}%" in page  # its own accuracy, in full
    assert "Welch&#x27;s t-test" in page and "distinguishable" in page


def test_the_dot_plot_has_a_dot_per_run(evaluated: dict) -> None:
    c = compare([evaluated[n]["path"] for n in (*SETUPS, "one")], "val")
    fig = plots.seed_dots(dot_panels(c))
    for ax in fig.axes:
        dots = [len(c.get_offsets()) for c in ax.collections if isinstance(c, PathCollection)]
        assert dots == [3, 3, 1]  # a scatter per side, a dot per run
    panel = dot_panels(c)[0]
    assert panel[0] == "val accuracy (%)"
    assert [len(values) for _, values, _, _ in panel[1]] == [3, 3, 1]
    assert panel[1][2][3] is None  # a single run: no interval
    plots.png_bytes(fig)


def _copy(evaluated: dict, name: str, tmp_path: Path) -> Path:
    group = tmp_path / name
    shutil.copytree(evaluated[name]["path"], group)
    return group


def _one_error(code: int, err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert code == 1 and len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_an_unevaluated_run_of_a_group_is_one_line(
    evaluated: dict, cache: Path, tmp_path: Path
) -> None:
    group = _copy(evaluated, "small", tmp_path)
    (group / "seed-1" / "eval_val.json").unlink()
    code, _, err = _run("compare", str(group), str(evaluated["large"]["path"]), "--split", "val",
                        "--out",
                        str(tmp_path / "c.html"), cache=cache)  # fmt: skip
    line = _one_error(code, err)
    assert f"{group / 'seed-1'}: not evaluated on val yet" in line
    assert f"cifarlab evaluate {group} --split val" in line
    assert not (tmp_path / "c.html").exists()


@pytest.mark.parametrize(
    "change,message",
    [
        (dict(seeds="0-2"), "group.json: seeds must be a list of 1..1000 different integers"),
        (dict(kind="something"), "group.json: kind must be"),
        (dict(seeds=[0, 1, 2, 9]), "seed-9: no such run"),
        (dict(runs=[{"seed": 1, "state": "interrupted"}]), "seed-1: not finished"),
    ],
)
def test_a_damaged_group_is_one_line(
    evaluated: dict, cache: Path, tmp_path: Path, change: dict, message: str
) -> None:
    group = _copy(evaluated, "small", tmp_path)
    data = json.loads((group / "group.json").read_text())
    (group / "group.json").write_text(json.dumps({**data, **change}))
    for argv in (["compare", str(group), "--split", "val", "--out", str(tmp_path / "c.html")],
                 ["evaluate", str(group), "--device", "cpu", "--no-report"]):  # fmt: skip
        code, _, err = _run(*argv, cache=cache)
        assert message in _one_error(code, err), argv
    (group / "group.json").write_text("{nope")
    code, _, err = _run(
        "compare", str(group), "--split", "val", "--out", str(tmp_path / "c.html"), cache=cache
    )
    assert "group.json" in _one_error(code, err)


def test_the_bootstrap_when_asked(evaluated: dict, cache: Path, tmp_path: Path) -> None:
    small, large = (evaluated[n]["path"] for n in SETUPS)
    code, text, err = _run("compare", str(small), str(large), "--split", "val", "--stats-test",
                           "bootstrap", "--out", str(tmp_path / "c.html"), cache=cache)  # fmt: skip
    assert code == 0, err
    assert "bootstrap (10,000 resamples, percentile interval)" in text
    row = text[text.index("large − small:") :].splitlines()[1]
    assert row.startswith("  accuracy") and " bootstrap p = " in row


def test_a_run_that_failed_in_training_is_kept_and_said(
    evaluated: dict, cache: Path, tmp_path: Path
) -> None:
    group = _copy(evaluated, "small", tmp_path)
    data = json.loads((group / "group.json").read_text())
    data["runs"] = [{"seed": 1, "state": "failed", "reason": "the loss became NaN"}]
    (group / "group.json").write_text(json.dumps(data))
    code, text, err = _run("compare", str(group), "--split", "val", "--out",
                           str(tmp_path / "c.html"), cache=cache)  # fmt: skip
    assert code == 0, err
    assert "  seed-1 (failed in training: the loss became NaN)  " in text
    assert "group of 3 runs" in text
