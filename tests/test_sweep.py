"""``cifarlab sweep``: the space file and its one-line errors, real sweeps through the real CLI
(tiny fake datasets; the example on the real data), a diverging trial recorded as failed while
the sweep goes on, Ctrl-C then ``--resume`` losing nothing, two worker processes finishing one
study together (in SQLite, and in a real PostgreSQL: ``$CIFARLAB_TEST_POSTGRES``, started by
``.ci/run``), Optuna as an optional import."""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import fakedata
from cifarlab.errors import CifarlabError
from conftest import REPO, run_cli

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser from PyPI
    import tomli as tomllib

optuna = pytest.importorskip("optuna")  # the dev extra installs it; `cifarlab[sweep]` for users

from cifarlab.sweep import output  # noqa: E402 - after optuna's check
from cifarlab.sweep.space import check_space, read_space  # noqa: E402
from cifarlab.sweep.study import open_storage  # noqa: E402

SPACE = """recipe = "quick"
precision = "fp32"

[space.lr]
low = 0.2
high = 2.0
log = true
"""
# every trial: one epoch of FastNet-S on 500 images, scored on 200
TINY = ("--epochs", "1", "--val-size", "200", "--no-progress")
POSTGRES_ENV = "CIFARLAB_TEST_POSTGRES"


@pytest.fixture(scope="module")
def fake_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """700 random training images (500 to train on, 200 held out), 20 test images."""
    root = tmp_path_factory.mktemp("sweep-data")
    fakedata.write_cifar10_python(root, per_batch=140, test=20)
    return root


def _space(tmp_path: Path, text: str, name: str = "space.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def _study(folder: Path) -> optuna.Study:
    url = f"sqlite:///{folder / 'study.db'}"
    name = json.loads((folder / "sweep.json").read_text())["study"]
    return optuna.load_study(study_name=name, storage=url)


def _started(stdout: str) -> list[int]:
    """The trials a worker started, from its log lines."""
    return [
        int(n) for n in re.findall(r"^trial (\d+)(?: \(continues trial \d+\))?: ", stdout, re.M)
    ]


def _never_evaluated_on_test(run: Path) -> None:
    """A trial's run folder: trained and validated, nothing evaluated on the test split (and
    no temperature fitted: `cifarlab evaluate` does that for the trial one picks)."""
    names = {p.name for p in run.iterdir()}
    assert {"config.json", "metrics.jsonl", "best.pt", "last.pt"} <= names, names
    assert not [n for n in names if "test" in n or n.startswith(("eval_", "report", "calib"))]


# --------------------------------------------------------------------------- the space file


SPACE_ERRORS = [
    ("unknown field", "[space.learning_rate]\nlow = 0.1\nhigh = 1.0\n",
     "space.learning_rate: learning_rate is not a setting"),
    ("low above high", "[space.lr]\nlow = 1.0\nhigh = 0.1\n",
     "space.lr.high: must be above low (1), got 0.1"),
    ("log from zero", "[space.weight_decay]\nlow = 0.0\nhigh = 0.01\nlog = true\n",
     "space.weight_decay.low: a log scale needs low above 0, got 0"),
    ("a fraction for an int", "[space.epochs]\nlow = 1.5\nhigh = 3\n",
     "space.epochs.low: must be a whole number, got 1.5"),
    ("text for a number", '[space.lr]\nlow = "small"\nhigh = 1.0\n',
     'space.lr.low: must be a number, got "small"'),
    ("log not true or false", "[space.lr]\nlow = 0.1\nhigh = 1.0\nlog = 1\n",
     "space.lr.log: must be true or false, got 1"),
    ("a step off the grid", "[space.label_smoothing]\nlow = 0.0\nhigh = 0.25\nstep = 0.1\n",
     "space.label_smoothing.step: high - low (0.25) must be a whole number of steps of 0.1"),
    ("a choice the setting refuses", '[space.optimizer]\nchoices = ["sgd", "adamw"]\n',
     "space.optimizer.choices[1]: optimizer must be one of adam, sgd, muon"),
    ("a choice of the wrong type", '[space.cutout]\nchoices = [0, "big"]\n',
     'space.cutout.choices[1]: must be a whole number, got "big"'),
    ("a choice twice", "[space.epochs]\nchoices = [1, 2, 1]\n",
     "space.epochs.choices[2]: 1 is given twice"),
    ("no choices", "[space.optimizer]\nchoices = []\n",
     "space.optimizer.choices: must be a list of one value or more"),
    ("choices and a range", "[space.lr]\nchoices = [0.1]\nlow = 0.1\n",
     "space.lr.low: choices and a range cannot go together"),
    ("a range on text", "[space.optimizer]\nlow = 1\nhigh = 2\n",
     "space.optimizer: optimizer is text: give its values as choices"),
    ("a range end the setting refuses", "[space.label_smoothing]\nlow = 0.0\nhigh = 1.0\n",
     "space.label_smoothing.high: label_smoothing must be in [0, 1), got 1.0"),
    ("a key of no meaning", "[space.lr]\nlo = 0.1\nhigh = 1.0\n",
     "space.lr.lo: unknown key (a table takes low, high, log, step, or choices)"),
    ("not a table", "[space]\nlr = 0.5\n", "space.lr: must be a table like"),
    ("the scoring data", "[space.val_size]\nchoices = [100, 200]\n",
     "space.val_size: cannot be searched: it decides the validation images"),
    ("a table setting", '[space.augment]\nchoices = ["a"]\n',
     "space.augment: cannot be searched: is a table: search its keys"),
    ("fixed and searched", "lr = 0.5\n[space.lr]\nlow = 0.1\nhigh = 1.0\n",
     "space.lr: lr is also set at the top of the file"),
    ("a fixed setting's typo", "lerning_rate = 0.5\n[space.lr]\nlow = 0.1\nhigh = 1.0\n",
     "lerning_rate is not a setting"),
    ("a fixed length", "epochs = 3\nbudget = 60\n[space.lr]\nlow = 0.1\nhigh = 1.0\n",
     "budget: give the trials' length with --epochs or --budget-per-trial"),
    ("nothing searched", "", "no [space.FIELD] table"),
    ("not TOML", "[space.lr\n", "not valid TOML"),
]  # fmt: skip


@pytest.mark.parametrize("body, expected", [c[1:] for c in SPACE_ERRORS],
                         ids=[c[0] for c in SPACE_ERRORS])  # fmt: skip
def test_a_bad_space_is_one_error_naming_the_file_and_the_key(
    tmp_path: Path, body: str, expected: str
) -> None:
    path = _space(tmp_path, 'recipe = "quick"\n' + body)
    with pytest.raises(CifarlabError) as e:
        check_space(read_space(path), {"epochs": 1})
    message = str(e.value)
    assert message.startswith(f"{path}: ") or message.startswith("space.toml: "), message
    assert expected in message, message
    assert "\n" not in message


def _toml(value: object) -> str:
    """Any value Hypothesis makes, as TOML (which has nan and inf)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float) and not math.isfinite(value):
        return "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")
    if isinstance(value, float | int):
        return repr(value)
    if isinstance(value, str):
        return json.dumps(value)
    return "[" + ", ".join(_toml(v) for v in value) + "]"  # a list


_text = st.text(st.characters(blacklist_categories=("Cs",)), max_size=6)  # TOML: no surrogates
_values = st.one_of(
    st.integers(-(10**20), 10**20), st.floats(), _text, st.booleans(), st.sampled_from(["sgd"]),
    st.lists(st.one_of(st.integers(-5, 40), st.floats(), _text), max_size=4),
)  # fmt: skip
_tables = st.dictionaries(st.sampled_from(["low", "high", "log", "step", "choices", "x"]),
                          _values, max_size=4)  # fmt: skip
_names = st.sampled_from(["lr", "epochs", "optimizer", "channels_last", "translate", "flip",
                          "label_smoothing", "momentum", "val_size", "augment",
                          "nope"])  # fmt: skip


@pytest.fixture
def subnormals() -> None:
    """Training in this process (other tests) turns on flush-to-zero, which makes Hypothesis
    refuse to draw floats; the space reader does not depend on it."""
    import torch

    torch.set_flush_denormal(False)


@settings(max_examples=150, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # fmt: skip
@given(space=st.dictionaries(_names, st.one_of(_tables, _values), max_size=3))
def test_any_space_file_is_a_space_or_one_error_line(
    tmp_path: Path, subnormals: None, space: dict
) -> None:
    """Fuzzed (as tests/test_fuzz.py fuzzes every parser): a space or one CifarlabError line."""
    lines = ['recipe = "quick"']
    lines += [f"space.{n} = {_toml(v)}" for n, v in space.items() if not isinstance(v, dict)]
    for name, body in space.items():
        if isinstance(body, dict):
            lines += [f"[space.{name}]", *(f"{k} = {_toml(v)}" for k, v in body.items())]
    path = _space(tmp_path, "\n".join(lines) + "\n")
    try:
        check_space(read_space(path), {"epochs": 1})
    except CifarlabError as e:
        assert "\n" not in str(e) and str(e).startswith(str(path)), str(e)


def test_the_space_file_reads_ranges_choices_and_fixed_settings(tmp_path: Path) -> None:
    path = _space(tmp_path, SPACE + '[space.optimizer]\nchoices = ["sgd", "muon"]\n'
                  "[space.translate]\nlow = 0\nhigh = 4\nstep = 2\n")  # fmt: skip
    space = read_space(path)
    assert space.base == {"recipe": "quick", "precision": "fp32"}
    lr, opt, translate = space.params
    assert (lr.kind, lr.low, lr.high, lr.log) == ("float", 0.2, 2.0, True)
    assert (opt.kind, opt.choices) == ("choice", ("sgd", "muon"))
    assert (translate.kind, translate.step) == ("int", 2)  # an augment key, typed by Augment
    assert lr.describe() == "0.2 to 2 (log scale)" and opt.describe() == '"sgd" or "muon"'
    check_space(space, {"epochs": 1})
    with pytest.raises(CifarlabError, match=r"space.lr: lr is searched: it cannot also be given"):
        check_space(space, {"lr": 0.5})


def test_the_example_space_is_valid_as_the_readme_runs_it() -> None:
    space = read_space(REPO / "examples" / "sweep-quick.toml")
    assert space.base == {"recipe": "quick"}
    assert space.names == ["lr", "weight_decay", "label_smoothing"]
    check_space(space, {"epochs": 1, "train_size": 2000})


def test_space_and_option_errors_through_the_cli_are_one_line(tmp_path: Path) -> None:
    """Through the real command: exit 1, one `error:` line naming the key or the option, and
    no sweep folder made."""
    out = tmp_path / "out"
    cases = [
        (["--trials", "2"], "[space.lr]\nlow = 1.0\nhigh = 0.1\n",
         "space.lr.high: must be above low (1), got 0.1"),
        (["--trials", "2"], '[space.optimizer]\nchoices = ["sgd", "adamw"]\n',
         "space.optimizer.choices[1]: optimizer must be one of adam, sgd, muon"),
        (["--trials", "0"], SPACE, "--trials must be 1..100,000, got 0"),
        ([], SPACE, "--trials is needed"),
        (["--trials", "2", "--epochs", "2", "--budget-per-trial", "1m"], SPACE,
         "--epochs and --budget-per-trial cannot go together"),
        (["--trials", "2", "--budget-per-trial", "soon"], SPACE,
         "--budget-per-trial 'soon': give a duration like 90s"),
        (["--trials", "2", "--val-size", "0"], SPACE, "--val-size must be 1 or more: a sweep "
         "scores every trial on the validation split"),
        (["--trials", "2", "--storage", "nonsense"], SPACE, "--storage 'nonsense' is not a "
         "database URL"),
    ]  # fmt: skip
    for options, body, expected in cases:
        path = _space(tmp_path, body)
        r = run_cli("sweep", str(path), *options, "--out", str(out))
        assert r.returncode == 1, (options, r.stdout, r.stderr)
        assert r.stderr.count("\n") == 1 and r.stderr.startswith("error: "), r.stderr
        assert expected in r.stderr, r.stderr
        assert not out.exists()
    r = run_cli("sweep", "--resume", str(tmp_path / "nowhere"))
    assert r.returncode == 1 and "no sweep folder" in r.stderr, r.stderr
    r = run_cli("sweep", "--trials", "3")
    assert r.returncode == 1 and "give a space file to start a sweep" in r.stderr, r.stderr


def test_best_toml_is_what_train_config_reads(tmp_path: Path) -> None:
    from cifarlab.train.config import read_config_file

    settings = {"recipe": "quick", "train_size": 2000, "epochs": 1, "lr": 1e-05,
                "weight_decay": 0.0013, "label_smoothing": 0.0, "flip": "random",
                "channels_last": False,
                "augment": {"translate": 2, "flip": "alternate"}}  # fmt: skip
    path = tmp_path / "best.toml"
    path.write_text(output.best_toml(settings, ['a "header"', "line two"]))
    assert path.read_text().startswith('# a "header"\n# line two\n')
    assert tomllib.loads(path.read_text()) == settings
    cfg = read_config_file(path).config()
    assert (cfg.lr, cfg.epochs, cfg.augment) == (1e-05, 1, {"translate": 2, "flip": "random"})


# --------------------------------------------------------------------------- Optuna is optional


def test_optuna_is_imported_only_by_a_sweep(tmp_path: Path) -> None:
    code = ("import sys, cifarlab, cifarlab.cli; cifarlab.cli.build_parser(); "
            "print('optuna' in sys.modules)")  # fmt: skip
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.stdout.strip() == "False", r.stderr
    # an environment without Optuna: `import optuna` fails there
    shim = tmp_path / "no-optuna" / "optuna"
    shim.mkdir(parents=True)
    (shim / "__init__.py").write_text("raise ImportError(\"No module named 'optuna'\")\n")
    env = {"PYTHONPATH": str(shim.parent)}
    r = run_cli("sweep", "--help", env=env)
    assert r.returncode == 0 and "--budget-per-trial" in r.stdout, r.stderr
    r = run_cli("sweep", str(_space(tmp_path, SPACE)), "--trials", "1", env=env)
    assert r.returncode == 1, r.stderr
    assert r.stderr.count("\n") == 1 and "pip install 'cifarlab[sweep]'" in r.stderr, r.stderr


# --------------------------------------------------------------------------- sweeps


@pytest.mark.slow
def test_the_example_sweep_runs_as_documented(tmp_path: Path, cifar10_root: Path) -> None:
    """The README's command on the real data: a table, trials.csv, sweep.html and best.toml;
    each trial a run folder scored on validation alone."""
    out = tmp_path / "sq"
    env = {"CIFARLAB_DATA": str(cifar10_root)}
    r = run_cli("sweep", "examples/sweep-quick.toml", "--trials", "3", "--epochs", "1",
                "--train-size", "2000", "--out", str(out), "--no-progress", cwd=REPO,
                env=env)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert _started(r.stdout) == [0, 1, 2]
    table = r.stdout[r.stdout.index("trial  state") :]
    assert len(re.findall(r"^ +\d\*? +complete +\d+\.\d\d%", table, re.M)) == 3, table
    assert f"wrote {out / 'best.toml'}" in r.stdout and "best: trial " in r.stdout
    study = _study(out)
    values = {t.number: t.value for t in study.trials}
    assert len(values) == 3 and all(0 < v <= 1 for v in values.values())
    for number, value in values.items():
        run = out / f"trial-{number:03d}"
        _never_evaluated_on_test(run)
        config = json.loads((run / "config.json").read_text())
        rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
        assert config["train_images"] == 2000 - 0 and config["val_size"] == 5000
        assert value == config["best_val_acc"] == max(row["val_acc"] for row in rows)
    page = (out / "sweep.html").read_text()
    assert page.count("data:image/png;base64,") >= 3  # history, importances, slices
    assert "Optimisation history" in page and "never evaluated" in page
    csv_rows = (out / "trials.csv").read_text().splitlines()
    assert len(csv_rows) == 4 and csv_rows[0].startswith("trial,state,val_acc,lr,")
    best = tomllib.loads((out / "best.toml").read_text())
    top = max(values, key=values.get)
    assert best == {"recipe": "quick", "train_size": 2000, "epochs": 1,
                    **study.trials[top].params}  # fmt: skip
    assert f"trial {top}, validation accuracy" in (out / "best.toml").read_text()


@pytest.mark.slow
def test_a_diverging_trial_is_recorded_failed_and_the_sweep_goes_on(
    tmp_path: Path, fake_root: Path
) -> None:
    space = _space(tmp_path, 'recipe = "quick"\nprecision = "fp32"\n'
                   "[space.lr]\nchoices = [0.5, 1e30]\n")  # fmt: skip
    out = tmp_path / "s"
    r = run_cli("sweep", str(space), "--trials", "3", *TINY, "--root", str(fake_root),
                "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    trials = {t.number: t for t in _study(out).trials}
    assert sorted(trials) == [0, 1, 2]
    states = {n: (t.params["lr"], t.state.name) for n, t in trials.items()}
    assert set(states.values()) == {(1e30, "FAIL"), (0.5, "COMPLETE")}, states
    first_failed = min(n for n, (lr, _) in states.items() if lr == 1e30)
    assert any(n > first_failed for n, (lr, _) in states.items() if lr == 0.5), states  # went on
    for t in trials.values():
        if t.state.name == "FAIL":
            assert "NaN" in t.user_attrs["failed"], t.user_attrs
            said = re.search(rf"^trial {t.number} \(\d/3 done\): failed: the training loss "
                             "became NaN", r.stdout, re.M)  # fmt: skip
            assert said, r.stdout
    assert re.search(r"^ +\d +failed +– .*the training loss became NaN", r.stdout, re.M)
    assert "failed" in (out / "sweep.html").read_text()
    # best.toml: the fixed settings, the sweep's, the best value; `train --config` trains it
    best = tomllib.loads((out / "best.toml").read_text())
    assert best == {"recipe": "quick", "precision": "fp32", "val_size": 200, "epochs": 1,
                    "lr": 0.5}  # fmt: skip
    r = run_cli("train", "--config", str(out / "best.toml"), "--root", str(fake_root),
                "--out", str(tmp_path / "best"), "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    trained = json.loads((tmp_path / "best" / "config.json").read_text())
    assert (trained["lr"], trained["epochs"], trained["val_size"]) == (0.5, 1, 200)


@pytest.mark.slow
def test_the_pruner_stops_a_trial_that_falls_behind(tmp_path: Path) -> None:
    """Each epoch's validation accuracy goes to the median pruner: on data a network can learn,
    a trial whose lr is too small to learn anything falls below the earlier trials' median at
    epoch 2 (never the first) and stops there, a run folder with its two epochs. (Which trials
    draw which lr is the seeded sampler's: Optuna 5.1's TPE draws 1e-7 for trial 6.)"""
    root = tmp_path / "data"
    fakedata.write_cifar100_learnable(root, per_class=10, test_per_class=1)
    space = _space(tmp_path, 'recipe = "quick"\nprecision = "fp32"\ndataset = "cifar100"\n'
                   'labels = "coarse"\n[space.lr]\nchoices = [0.5, 1e-7]\n')  # fmt: skip
    out = tmp_path / "s"
    r = run_cli("sweep", str(space), "--trials", "7", "--epochs", "3", "--train-size", "512",
                "--val-size", "200", "--root", str(root), "--out", str(out),
                "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    trials = _study(out).trials
    pruned = [t for t in trials if t.state.name == "PRUNED"]
    assert pruned, [(t.number, t.state.name, t.params) for t in trials]
    for t in pruned:
        # after 5 trials, the one that learns nothing
        assert t.number >= 5 and t.params["lr"] == 1e-7
        assert sorted(t.intermediate_values) == [1, 2]
        run = out / f"trial-{t.number:03d}"
        assert len((run / "metrics.jsonl").read_text().splitlines()) == 2
        assert f"trial {t.number} (" in r.stdout and "pruned after epoch 2: valid" in r.stdout
    assert all(t.state.name == "COMPLETE" for t in trials if t.params["lr"] == 0.5)


def _popen(*args: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cifarlab", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip


def _wait_for(check, what: str, timeout: float = 120) -> None:  # noqa: ANN001
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.05)


@pytest.mark.slow
def test_ctrl_c_then_resume_loses_nothing(tmp_path: Path) -> None:
    """SIGINT in the middle of trial 0's second epoch: exit 130; trial 0 does not count, a
    trial with its settings takes its place and resumes its run from the checkpoint; the
    resumed sweep ends with the total asked for."""
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=500, test=20)  # 9 steps an epoch
    out = tmp_path / "s"
    space = _space(tmp_path, SPACE)
    worker = _popen("sweep", str(space), "--trials", "2", "--epochs", "3", "--val-size", "200",
                    "--root", str(root), "--out", str(out), "--threads", "1",
                    "--no-progress")  # fmt: skip
    metrics = out / "trial-000" / "metrics.jsonl"
    _wait_for(lambda: metrics.is_file() and metrics.read_text().count("\n") >= 1, "epoch 1")
    first_epoch = metrics.read_text().splitlines()[0]
    worker.send_signal(signal.SIGINT)
    stdout, stderr = worker.communicate(timeout=120)
    assert worker.returncode == 130, (stdout, stderr)
    assert f"go on with: cifarlab sweep --resume {out}" in stderr, stderr
    trials = {t.number: t for t in _study(out).trials}
    assert trials[0].state.name == "FAIL" and "interrupted" in trials[0].user_attrs
    assert trials[2].state.name == "WAITING" and trials[2].user_attrs["continues"] == 0
    assert trials[2].params == {} and trials[0].params  # queued with trial 0's settings

    r = run_cli("sweep", "--resume", str(out), "--no-progress")  # --root: as the sweep began
    assert r.returncode == 0, r.stderr
    assert "resuming the run of trial 0" in r.stdout
    trials = {t.number: t for t in _study(out).trials}
    done = [n for n, t in trials.items() if t.state.name == "COMPLETE"]
    assert sorted(done) == [1, 2], {n: t.state.name for n, t in trials.items()}
    assert trials[2].params == trials[0].params
    assert not (out / "trial-000").exists()  # moved: trial 2 went on with its run
    rows = (out / "trial-002" / "metrics.jsonl").read_text().splitlines()
    assert rows[0] == first_epoch and [json.loads(x)["epoch"] for x in rows] == [1, 2, 3]
    for n in done:
        _never_evaluated_on_test(out / f"trial-{n:03d}")
    assert re.search(r"^ +0 +interrupted .*continued by trial 2", r.stdout, re.M), r.stdout
    # asking for more trials on resume
    r = run_cli("sweep", "--resume", str(out), "--trials", "1")
    assert r.returncode == 1 and "--trials is the new total: the study already has 2" in r.stderr


def _postgres() -> str:
    url = os.environ.get(POSTGRES_ENV)
    if not url:
        message = f"no PostgreSQL for the tests: set {POSTGRES_ENV} (.ci/run starts one)"
        if os.environ.get("CI"):
            pytest.fail(message)  # CI must run this test, not skip it
        pytest.skip(message)
    return url


@pytest.mark.slow
@pytest.mark.parametrize("storage", ["sqlite", "postgresql"])
def test_two_workers_finish_a_study_together(tmp_path: Path, fake_root: Path, storage: str) -> None:
    """A worker starts a sweep of 4 trials, a second joins it: each trial runs once, in one
    of them, into one folder; together they run exactly 4."""
    space = _space(tmp_path, SPACE)
    first, second = tmp_path / "a", tmp_path / "b"
    name = f"two-workers-{uuid.uuid4().hex[:8]}"
    machine = ("--threads", "1", "--root", str(fake_root), "--no-progress")  # each worker's
    common = ("--trials", "4", "--epochs", "2", "--val-size", "200", *machine)
    if storage == "sqlite":
        url, second = f"sqlite:///{first / 'study.db'}", first  # one machine, one folder
        a = _popen("sweep", str(space), "--out", str(first), "--study", name, *common)
    else:
        url = _postgres()  # two "machines": each its own folder
        a = _popen("sweep", str(space), "--out", str(first), "--study", name, "--storage", url,
                   *common)  # fmt: skip
    try:
        _wait_for(lambda: (first / "sweep.json").is_file() or a.poll() is not None, "the study")
        b = _popen("sweep", "--join", url, "--study", name, "--out", str(second), *machine)
        out_b, err_b = b.communicate(timeout=600)
        out_a, err_a = a.communicate(timeout=600)
        assert a.returncode == 0, err_a
        assert b.returncode == 0, err_b
        ran_a, ran_b = _started(out_a), _started(out_b)
        assert ran_a and ran_b, (out_a, out_b)  # both worked
        assert not set(ran_a) & set(ran_b) and sorted(ran_a + ran_b) == [0, 1, 2, 3]
        study = optuna.load_study(study_name=name, storage=open_storage(url)[0])
        assert sorted(t.number for t in study.trials) == [0, 1, 2, 3]
        assert all(t.state.name == "COMPLETE" for t in study.trials)
        workers = {t.number: t.user_attrs["worker"] for t in study.trials}
        assert len(set(workers.values())) == 2
        assert {n for n, w in workers.items() if w.endswith(f":{a.pid}")} == set(ran_a)
        for n in range(4):
            folders = [
                d / f"trial-{n:03d}" for d in {first, second} if (d / f"trial-{n:03d}").exists()
            ]
            assert len(folders) == 1, folders
            assert len((folders[0] / "metrics.jsonl").read_text().splitlines()) == 2  # trained once
        for out in (out_a, out_b):  # each worker's last table holds every trial
            assert len(re.findall(r"^ +\d\*? +complete ", out, re.M)) == 4, out
    finally:
        for p in (a, *([b] if "b" in locals() else [])):
            if p.poll() is None:
                p.kill()
                p.wait()
        if storage == "postgresql":
            with contextlib.suppress(KeyError):  # made, unless the first worker failed at once
                optuna.delete_study(study_name=name, storage=open_storage(url)[0])


@pytest.mark.slow
@pytest.mark.alone  # a 4-second budget times the machine: no other test beside it
def test_budget_per_trial_trains_each_trial_for_its_time(tmp_path: Path) -> None:
    """Each trial trains its own settings to the budget (the pacer, from a first guess at the
    steps off the probe); best.toml holds the steps it fitted in its time."""
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=500, test=20)  # 9 steps an epoch
    out = tmp_path / "s"
    r = run_cli("sweep", str(_space(tmp_path, SPACE)), "--trials", "1", "--budget-per-trial",
                "4s", "--val-size", "200", "--root", str(root), "--out", str(out),
                "--no-progress")  # fmt: skip
    assert r.returncode == 0, r.stderr
    config = json.loads((out / "trial-000" / "config.json").read_text())
    assert config["budget"] == 4.0 and config["steps_trained"] >= 1
    # trained to its time, not to its recipe's epochs (the pacer keeps the time:
    # tests/test_budget.py; a budget of seconds on a loaded machine is kept only roughly)
    assert 4.0 * 0.5 <= config["budget_used_seconds"] < 4.0 * 3, config
    # best.toml: the steps the trial fitted in its time, which train on any machine alike
    best = tomllib.loads((out / "best.toml").read_text())
    assert best["steps"] == config["steps_trained"] and "budget" not in best
    assert "budget = 4 instead" in (out / "best.toml").read_text()
