"""The run folder (cifarlab/runs.py): its files, locking, reading and writing, opening a run,
provenance; and run folders written by an older version still open, evaluate and predict."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

import fakedata
from cifarlab import evaluate_run, load_run, open_run
from cifarlab.errors import CifarlabError
from cifarlab.runs import CONFIG, METRICS, RunFolder, read_run
from cifarlab.train import TrainConfig, train

REPO = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"


def test_where_each_file_lives(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "r")
    assert f.config_path.name == "config.json" and f.metrics_path.name == "metrics.jsonl"
    assert f.checkpoint_path("best").name == "best.pt"
    assert f.checkpoint_path("last").name == "last.pt"
    assert f.eval_path("val").name == "eval_val.json"
    assert f.predictions_path("test").name == "predictions_test.npz"
    assert f.report_path("test").name == "report.html"
    assert f.report_path("val").name == "report_val.html"
    assert f.figure_path("val", "x.png").name == "val_x.png"
    assert f.figure_path("test", "x.png").name == "x.png"
    assert f.export_path("onnx").name == "model.onnx"
    with pytest.raises(CifarlabError, match="checkpoint must be best or last"):
        f.checkpoint_path("middle")


def test_no_module_spells_a_run_file_name() -> None:
    """Every module goes through cifarlab/runs.py for the names of a run's files."""
    names = re.compile(
        r"""["'](config\.json|metrics\.jsonl|last\.pt|best\.pt|\.lock|"""
        r"""report\.html|model\.onnx)["']|f["']eval_\{|f["']predictions_\{"""
    )
    offenders = []
    for path in (REPO / "src" / "cifarlab").rglob("*.py"):
        if path.name == "runs.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if names.search(line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert not offenders, "\n".join(offenders)


def test_metrics_config_and_eval_round_trip(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "r")
    with pytest.raises(CifarlabError, match="no such run folder"):
        f.read_config()
    f.path.mkdir()
    with pytest.raises(CifarlabError, match=r"not a run folder \(no config.json\)"):
        f.read_config()
    f.write_config({"model": "mlp", "num_classes": 10, "class_names": list("abcdefghij")})
    assert f.read_config()["model"] == "mlp"
    for epoch in (1, 2, 3):
        f.append_metrics({"epoch": epoch, "val_acc": 0.1 * epoch})
    assert [r["epoch"] for r in f.read_metrics()] == [1, 2, 3]
    f.trim_metrics(2)
    assert [r["epoch"] for r in f.read_metrics()] == [1, 2]
    f.metrics_path.write_text('{"epoch": 1}\nnot json\n')
    with pytest.raises(CifarlabError, match=r"metrics.jsonl: line 2 is not JSON"):
        f.read_metrics()
    with pytest.raises(CifarlabError, match="not evaluated on test yet"):
        f.read_eval("test")
    f.eval_path("test").write_text('{"accuracy": 0.5}')
    with pytest.raises(CifarlabError, match="not an evaluation written by cifarlab"):
        f.read_eval("test")
    assert sorted(p.name for p in f.path.iterdir()) == [CONFIG, "eval_test.json", METRICS]


def test_lock_refuses_a_second_trainer_and_cleans_an_empty_folder(tmp_path: Path) -> None:
    f = RunFolder(tmp_path / "new")
    with f.lock():
        with pytest.raises(CifarlabError, match="is being trained right now"):
            with RunFolder(f.path).lock():
                pass
    assert not f.path.exists()  # made here, nothing written: removed again
    f.path.mkdir()
    (f.path / "kept.txt").write_text("x")
    with f.lock():
        pass
    assert (f.path / "kept.txt").exists()


@pytest.fixture
def tiny_run(tmp_path: Path) -> tuple[Path, Path]:
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    cfg = TrainConfig(
        model="fastnet_s",
        model_args={"widths": [8, 16, 16]},
        root=str(root),
        epochs=1,
        val_size=20,
        precision="fp32",
    )
    return train(cfg, out=tmp_path / "run", progress=False), root


def test_a_run_records_what_made_it(tiny_run: tuple[Path, Path]) -> None:
    import torch

    import cifarlab

    run, _ = tiny_run
    config = RunFolder(run).read_config()
    made = config["provenance"]
    assert made["cifarlab"] == cifarlab.__version__ and made["torch"] == torch.__version__
    assert made["cpu"] and made["python"]
    assert config["precision_used"] == "fp32" and config["recipe"] == "quick"
    if (REPO / ".git").exists():  # run from a checkout: the commit it ran
        assert re.fullmatch(r"[0-9a-f]{40}(\+changes)?", made["git_commit"]), made["git_commit"]
    f = RunFolder(run)
    assert f.holds_run() and f.checkpoint_path("best").is_file()
    with pytest.raises(CifarlabError, match="already holds a run"):
        f.check_new()


def test_open_run_gives_model_normalization_and_precision(tiny_run: tuple[Path, Path]) -> None:
    run, _ = tiny_run
    opened = open_run(run)
    assert opened.mean is not None and len(opened.class_names) == 10  # quick: standard
    assert opened.autocast is None and opened.tta == 2 and not opened.model.training
    _, config, history = read_run(run)
    assert config["model"] == "fastnet_s" and len(history) == 1


def test_weights_of_another_model_are_a_clear_error(tiny_run: tuple[Path, Path]) -> None:
    run, _ = tiny_run
    config = json.loads((run / "config.json").read_text())
    config["model_args"] = {"widths": [16, 16, 16]}
    (run / "config.json").write_text(json.dumps(config))
    with pytest.raises(CifarlabError, match=r"best.pt: the weights do not fit model 'fastnet_s'"):
        open_run(run)


# --------------------------------------------------------------------------- older versions


def _legacy(tmp_path: Path) -> tuple[Path, Path]:
    """The run folder cifarlab 0.1.0 wrote (tests/fixtures/README.md), and its data."""
    run = tmp_path / "old-run"
    shutil.copytree(FIXTURES / "run_v0_1", run)
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    return run, root


def test_a_run_from_the_previous_version_predicts_the_same(tmp_path: Path) -> None:
    run, _ = _legacy(tmp_path)
    expected = json.loads((run / "expected.json").read_text())
    probs = load_run(run).predict(fakedata.arrays(20, 10, 100)[0]).probs
    # bf16 (as it was trained): kernels of another CPU may round a little differently
    assert np.allclose(probs, np.asarray(expected["probs"]), atol=5e-3)


def test_a_run_from_the_previous_version_evaluates_the_same(tmp_path: Path) -> None:
    run, root = _legacy(tmp_path)
    expected = json.loads((run / "expected.json").read_text())
    m = evaluate_run(run, "test", root=root, report=False)
    assert m["num_samples"] == 20 and m["tta"] == 2
    assert m["log_loss"] == pytest.approx(expected["log_loss"], abs=5e-3)
    assert RunFolder(run).read_eval("test")["log_loss"] == m["log_loss"]


def test_the_study_config_of_the_previous_version_is_what_simple_cnn_trains_now() -> None:
    old = json.loads((FIXTURES / "config_v0_1_simple_cnn.json").read_text())
    new = TrainConfig(model="simple_cnn", epochs=1, val_size=20, root=old["root"]).resolved()
    saved = TrainConfig.from_saved(old)
    differ = {
        k: (v, getattr(saved, k))
        for k, v in new.to_dict().items()
        if k != "recipe" and getattr(saved, k) != v
    }
    assert not differ, differ
    assert new.recipe == "original" and old["recipe"] is None


def test_a_config_missing_newer_fields_takes_the_old_defaults() -> None:
    old = json.loads((FIXTURES / "run_v0_1" / "config.json").read_text())
    for key in ("progressive", "muon_lr", "muon_momentum", "eval_batch_size"):
        del old[key]
    cfg = TrainConfig.from_saved(old)
    assert cfg.progressive == {} and cfg.muon_lr == 0.24 and cfg.eval_batch_size == 1000
