"""Calibration (cifarlab/evaluate/calibration.py): the measures, temperature scaling, and the
temperature stored in a run and used by predict, Run.predict, export and evaluate."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from cifarlab.errors import CifarlabError
from cifarlab.evaluate.calibration import (
    NO_VAL,
    calibration_metrics,
    fit_temperature,
    nll,
    reliability,
)
from cifarlab.runs import RunFolder
from conftest import run_cli


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=1, keepdims=True))
    return e / e.sum(axis=1, keepdims=True)


def _sample(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row, drawn from that row's probabilities."""
    u = rng.random((len(probs), 1))
    return np.minimum((probs.cumsum(axis=1) < u).sum(axis=1), probs.shape[1] - 1)


@pytest.mark.parametrize("true_t", [0.4, 0.7, 1.0, 1.6, 3.0])
def test_fit_recovers_a_known_temperature(true_t: float) -> None:
    """Labels drawn from softmax(z); the model reports z · T: the fit must find T."""
    rng = np.random.default_rng(1)
    z = rng.normal(0, 2.5, (40_000, 10))
    labels = _sample(_softmax(z), rng)
    fitted = fit_temperature(z * true_t, labels)
    assert fitted == pytest.approx(true_t, rel=0.04)
    assert nll(z * true_t, labels, fitted) <= nll(z * true_t, labels, 1.0) + 1e-12


def test_ece_of_calibrated_predictions_is_near_zero_and_of_overconfident_ones_is_not() -> None:
    rng = np.random.default_rng(2)
    probs = rng.dirichlet(np.full(10, 0.3), 50_000)
    labels = _sample(probs, rng)  # the labels follow the probabilities: calibrated
    m = calibration_metrics(labels, probs)
    assert m["ece"] < 0.01
    assert m["mce"] < 0.05
    sharp = _softmax(np.log(probs + 1e-12) * 3)  # the same predictions, over-confident
    assert calibration_metrics(labels, sharp)["ece"] > 0.1


def test_measures_by_hand() -> None:
    """Four predictions, checked against the definitions written out."""
    probs = np.array([[0.9, 0.1], [0.8, 0.2], [0.3, 0.7], [0.55, 0.45]])
    labels = np.array([0, 1, 1, 0])
    m = calibration_metrics(labels, probs, bins=2)
    # bin (0, .5]: none; bin (.5, 1]: all four, confidence .7375, accuracy .75
    assert [b["count"] for b in m["bins"]] == [0, 4]
    assert m["ece"] == pytest.approx(abs(0.75 - (0.9 + 0.8 + 0.7 + 0.55) / 4))
    m15 = calibration_metrics(labels, probs)
    # bins of width 1/15: .9 → 13, .8 → 11, .7 → 10, .55 → 8; each alone
    gaps = [abs(1 - 0.9), abs(0 - 0.8), abs(1 - 0.7), abs(1 - 0.55)]
    assert m15["ece"] == pytest.approx(sum(gaps) / 4)
    assert m15["mce"] == pytest.approx(max(gaps))
    brier = ((0.1**2 * 2) + (0.8**2 * 2) + (0.3**2 * 2) + (0.45**2 * 2)) / 4
    assert m15["brier"] == pytest.approx(brier)
    assert m15["nll"] == pytest.approx(-np.mean(np.log([0.9, 0.2, 0.7, 0.55])))
    assert sum(b["count"] for b in reliability(labels, probs)) == 4
    # a confidence of exactly 1 is in the last bin, not past it
    assert reliability([0], [[1.0, 0.0]])[-1]["count"] == 1


def test_nll_is_never_worse_after_fitting() -> None:
    """Whatever the logits (random labels, a constant model, huge or tiny scales), the fitted
    temperature never raises the NLL of what it was fitted on."""
    rng = np.random.default_rng(3)
    cases = [
        (rng.normal(0, 1, (500, 10)), rng.integers(0, 10, 500)),  # labels unrelated
        (np.zeros((50, 10)), rng.integers(0, 10, 50)),  # every temperature is as good
        (rng.normal(0, 200, (300, 10)), rng.integers(0, 10, 300)),  # wildly over-confident
        (rng.normal(0, 1e-4, (300, 3)), rng.integers(0, 3, 300)),
    ]
    for z, y in cases:
        t = fit_temperature(z, y)
        assert 0.01 <= t <= 100
        assert nll(z, y, t) <= nll(z, y, 1.0) + 1e-12


def test_arg_max_is_kept() -> None:
    rng = np.random.default_rng(4)
    z = rng.normal(0, 3, (1000, 10))
    for t in (0.05, 0.5, 2.0, 50.0):
        assert (_softmax(z / t).argmax(1) == z.argmax(1)).all()


# --------------------------------------------------------------------------- runs


def _copy_run(run: Path, tmp_path: Path) -> Path:
    dest = tmp_path / run.name
    shutil.copytree(run, dest)
    return dest


@pytest.fixture
def real_images(test_images: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    return test_images


def test_training_fits_the_temperature_on_val(trained_run: Path) -> None:
    records = RunFolder(trained_run).read_calibration()
    r = records["best"]
    assert r["fitted_on"] == "val" and r["images"] == 1000
    assert r["nll_after"] <= r["nll_before"]  # never worse on what it was fitted on
    assert 0.01 <= r["temperature"] <= 100
    state = torch.load(trained_run / "best.pt", map_location="cpu", weights_only=True)
    assert r["checkpoint_epoch"] == state["epoch"]


def test_predict_uses_it_and_accuracy_is_unchanged(
    trained_run: Path, real_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    from cifarlab.predict import load_run

    images, _ = real_images
    on = load_run(trained_run)
    off = load_run(trained_run, calibrated=False)
    t = RunFolder(trained_run).read_calibration()["best"]["temperature"]
    assert on.calibrated and on.temperature == pytest.approx(t)
    assert "calibrated by temperature scaling" in on.calibration_note
    assert not off.calibrated and "turned off" in off.calibration_note
    p_on, p_off = on.predict(images).probs, off.predict(images).probs
    assert (p_on.argmax(1) == p_off.argmax(1)).all()  # the same classes
    assert np.abs(p_on - p_off).max() > 1e-3  # but other probabilities
    expected = torch.softmax(off.logits(images) / t, 1).numpy()
    np.testing.assert_allclose(p_on, expected, atol=1e-6)
    # the CLI says which, on stderr, and --no-calibration turns it off
    from PIL import Image

    Image.fromarray(images[0]).save(tmp_path / "a.png")
    r = run_cli("predict", str(trained_run), str(tmp_path / "a.png"), "--json")
    assert r.returncode == 0, r.stderr
    assert "calibrated by temperature scaling" in r.stderr
    top = json.loads(r.stdout)[0]
    r2 = run_cli("predict", str(trained_run), str(tmp_path / "a.png"), "--json",
                 "--no-calibration")  # fmt: skip
    assert r2.returncode == 0 and "not calibrated (turned off)" in r2.stderr
    top2 = json.loads(r2.stdout)[0]
    assert json.dumps(top) != json.dumps(top2)


def test_evaluate_reports_before_and_after(trained_run: Path, tmp_path: Path,
                                           cifar10_root: Path) -> None:  # fmt: skip
    """An older run without calibration.json is fitted by evaluate; the JSON has both."""
    run = _copy_run(trained_run, tmp_path)
    (run / "calibration.json").unlink()
    # one view of each image (--tta 0): what is tested is the calibration, at a sixth of the cost
    r = run_cli("evaluate", str(run), "--root", str(cifar10_root), "--no-report", "--tta", "0")
    assert r.returncode == 0, r.stderr
    assert "ECE" in r.stdout and "temperature" in r.stdout
    m = json.loads((run / "eval_test.json").read_text())
    c = m["calibration"]
    assert c["before"]["ece"] >= 0 and c["after"] is not None
    assert sum(b["count"] for b in c["before"]["bins"]) == m["num_samples"]
    assert (run / "calibration.json").is_file()
    # accuracy is the model's: the temperature does not change a predicted class
    probs = np.load(run / "predictions_test.npz")["probs"]
    labels = np.load(run / "predictions_test.npz")["labels"]
    assert m["accuracy"] == pytest.approx(float((probs.argmax(1) == labels).mean()))


def test_stale_temperature_is_not_applied(trained_run: Path, tmp_path: Path) -> None:
    from cifarlab.predict import load_run

    run = _copy_run(trained_run, tmp_path)
    data = json.loads((run / "calibration.json").read_text())
    data["checkpoints"]["best"]["checkpoint_epoch"] += 5
    (run / "calibration.json").write_text(json.dumps(data))
    loaded = load_run(run)
    assert not loaded.calibrated and "fitted for epoch" in loaded.calibration_note
    (run / "calibration.json").write_text('{"version": 1, "checkpoints": {"best": '
                                          '{"temperature": -2, "checkpoint": "best", '
                                          '"checkpoint_epoch": 1}}}')  # fmt: skip
    with pytest.raises(CifarlabError, match=r"calibration.json.*temperature"):
        load_run(run)


def test_export_includes_the_temperature(
    trained_run: Path, real_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    ort = pytest.importorskip("onnxruntime")
    from cifarlab.export import export_run, read_metadata
    from cifarlab.predict import load_run

    images, _ = real_images
    images = images[:32]
    on = tmp_path / "on.onnx"
    off = tmp_path / "off.onnx"
    export_run(trained_run, out=on)
    export_run(trained_run, out=off, calibrated=False)
    t = RunFolder(trained_run).read_calibration()["best"]["temperature"]
    assert json.loads(read_metadata(on)["temperature"]) == pytest.approx(t)
    assert json.loads(read_metadata(off)["temperature"]) == 1.0
    run = load_run(trained_run)
    run.tta = 0  # the exported graph is the single-view model
    with torch.autocast("cpu", enabled=False):
        plain = torch.softmax(run.model(run.preprocess(images).float()).float() / t, 1)
    p_on = ort.InferenceSession(str(on)).run(["probabilities"], {"images": images})[0]
    p_off = ort.InferenceSession(str(off)).run(["probabilities"], {"images": images})[0]
    np.testing.assert_allclose(p_on, plain.detach().numpy(), atol=1e-4)
    assert (p_on.argmax(1) == p_off.argmax(1)).all()
    assert np.abs(p_on - p_off).max() > 1e-3


def test_a_run_without_validation_says_it_cannot_be_calibrated(
    tmp_path: Path,
    cifar10_root: Path,
) -> None:
    from cifarlab.predict import load_run
    from cifarlab.train import train
    from cifarlab.train.recipes import recipe_config

    cfg = recipe_config("quick", root=str(cifar10_root), train_size=1000, val_size=0, epochs=1,
                        device="cpu")  # fmt: skip
    run = train(cfg, out=tmp_path / "noval", progress=False)
    record = RunFolder(run).read_calibration()["best"]
    assert record["temperature"] is None and record["reason"] == NO_VAL
    loaded = load_run(run)
    assert not loaded.calibrated and "--val-size 0" in loaded.calibration_note
    r = run_cli("evaluate", str(run), "--root", str(cifar10_root), "--no-report", "--tta", "0")
    assert r.returncode == 0, r.stderr
    assert "--val-size 0" in r.stdout
    c = json.loads((run / "eval_test.json").read_text())["calibration"]
    assert c["after"] is None and c["temperature"] is None
