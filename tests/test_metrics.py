"""compute_metrics and the text tables, checked against scikit-learn."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

from cifarlab.evaluate.metrics import (
    classification_report_text,
    compute_metrics,
    confusion_matrix_text,
    counts_table_text,
)

try:
    import sklearn.metrics as sk
except ImportError:  # a dev dependency; CI installs it, so there a skip would hide a problem
    if os.environ.get("CI"):
        raise
    pytest.skip("scikit-learn is not installed (pip install -e '.[dev]')", allow_module_level=True)

CIFAR10 = ["airplane", "automobile", "bird", "cat", "deer",
           "dog", "frog", "horse", "ship", "truck"]  # fmt: skip


def fake_predictions(
    num_classes: int, n: int, seed: int, never_predicted: int | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Labels and softmax probabilities that are right about half the time.

    ``never_predicted`` gets a very low logit everywhere, so no sample is predicted as it.
    """
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, num_classes, n)
    logits = rng.normal(size=(n, num_classes))
    logits[np.arange(n), labels] += 1.5
    if never_predicted is not None:
        logits[:, never_predicted] = -20.0
    probs = np.exp(logits - logits.max(axis=1, keepdims=True))
    return labels, probs / probs.sum(axis=1, keepdims=True)


@pytest.mark.parametrize(
    ("num_classes", "n", "never"),
    [(10, 1000, 3), (10, 57, None), (100, 3000, 42), (3, 40, 1)],
)
def test_matches_sklearn(num_classes: int, n: int, never: int | None) -> None:
    names = CIFAR10 if num_classes == 10 else [f"class_{i}" for i in range(num_classes)]
    labels, probs = fake_predictions(num_classes, n, seed=num_classes + n, never_predicted=never)
    preds = probs.argmax(1)
    all_labels = list(range(num_classes))
    m = compute_metrics(labels, probs, names, split="val")
    json.dumps(m)  # serialisable as it is

    assert m["split"] == "val" and m["num_samples"] == n and m["class_names"] == names
    assert m["accuracy"] == pytest.approx(sk.accuracy_score(labels, preds), abs=1e-12)
    assert m["log_loss"] == pytest.approx(sk.log_loss(labels, probs, labels=all_labels), rel=1e-6)
    if num_classes > 5:
        expected = sk.top_k_accuracy_score(labels, probs, k=5, labels=all_labels)
        assert m["top5_accuracy"] == pytest.approx(expected, abs=1e-12)
    else:
        assert m["top5_accuracy"] is None

    cm = sk.confusion_matrix(labels, preds, labels=all_labels)
    assert m["confusion_matrix"] == cm.tolist()
    assert m["true_counts"] == cm.sum(1).tolist() and m["predicted_counts"] == cm.sum(0).tolist()
    if never is not None:
        assert m["predicted_counts"][never] == 0
        assert m["per_class"][never]["precision"] == 0.0  # zero_division=0, not NaN

    report = sk.classification_report(
        labels, preds, labels=all_labels, target_names=names, output_dict=True, zero_division=0
    )
    for row in m["per_class"]:
        ref = report[row["class"]]
        for key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert row[key] == pytest.approx(ref[ref_key], abs=1e-12)
        assert row["support"] == ref["support"]
    for ours, theirs in (("macro_avg", "macro avg"), ("weighted_avg", "weighted avg")):
        for key, ref_key in (("precision", "precision"), ("recall", "recall"), ("f1", "f1-score")):
            assert m[ours][key] == pytest.approx(report[theirs][ref_key], abs=1e-12)
        assert m[ours]["support"] == report[theirs]["support"] == n


@pytest.mark.parametrize(("num_classes", "digits"), [(10, 2), (10, 4), (100, 2), (3, 2)])
def test_report_text_is_sklearns(num_classes: int, digits: int) -> None:
    names = CIFAR10 if num_classes == 10 else [f"c{i}" for i in range(num_classes)]
    labels, probs = fake_predictions(num_classes, 500, seed=7, never_predicted=num_classes - 1)
    m = compute_metrics(labels, probs, names)
    expected = sk.classification_report(
        labels,
        probs.argmax(1),
        labels=list(range(num_classes)),
        target_names=names,
        digits=digits,
        zero_division=0,
    )
    assert classification_report_text(m, digits=digits) == expected


def test_text_tables() -> None:
    labels, probs = fake_predictions(10, 200, seed=1, never_predicted=0)
    m = compute_metrics(labels, probs, CIFAR10)
    counts = counts_table_text(m).splitlines()
    assert counts[0].split() == ["class", "predicted", "true", "diff"]
    assert len(counts) == 11
    airplane = counts[1].split()
    assert airplane == ["airplane", "0", str(m["true_counts"][0]), f"-{m['true_counts'][0]}"]

    cm_text = confusion_matrix_text(m).splitlines()
    assert len(cm_text) == 12  # note, header, 10 rows
    for name, row, line in zip(CIFAR10, m["confusion_matrix"], cm_text[2:], strict=True):
        assert line.split() == [name, *map(str, row)]

    big = compute_metrics(*fake_predictions(100, 300, seed=2), [str(i) for i in range(100)])
    assert confusion_matrix_text(big) == "(100×100 matrix in the JSON)\n"


def test_bad_inputs() -> None:
    labels, probs = fake_predictions(10, 20, seed=0)
    with pytest.raises(ValueError, match="N×9"):
        compute_metrics(labels, probs, CIFAR10[:9])
    with pytest.raises(ValueError, match="labels but"):
        compute_metrics(labels[:5], probs, CIFAR10)
    with pytest.raises(ValueError, match="labels must lie"):
        compute_metrics(labels + 10, probs, CIFAR10)
