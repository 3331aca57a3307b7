"""Classification metrics from predicted probabilities, in pure numpy.

The numbers follow scikit-learn's definitions (``classification_report`` with
``zero_division=0``, ``confusion_matrix``, ``log_loss``, ``top_k_accuracy_score``) so that results
can be compared with the original study; scikit-learn itself is only a test dependency.
"""

from __future__ import annotations

from typing import Any

import numpy as np

_EPS = 1e-15  # probabilities are clipped here before the log, so one confident miss is finite
_MAX_MATRIX_TEXT = 20  # above this many classes the text confusion matrix is unreadable


def _divide(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """num / den as float64, 0 where den == 0 (sklearn's zero_division=0)."""
    num = np.asarray(num, dtype=np.float64)
    den = np.asarray(den, dtype=np.float64)
    safe = np.where(den == 0, 1.0, den)
    return np.where(den == 0, 0.0, num / safe)


def compute_metrics(
    labels: np.ndarray, probs: np.ndarray, class_names: list[str], split: str = "test"
) -> dict[str, Any]:
    """All metrics of one split from its true labels (N) and softmax probabilities (N×C).

    The prediction is the arg-max class. Returns a JSON-serialisable dict (plain floats, ints
    and lists): split, num_samples, accuracy, top5_accuracy (None for 5 classes or fewer),
    log_loss, class_names, per_class, macro_avg, weighted_avg, confusion_matrix (rows true,
    columns predicted), predicted_counts, true_counts.
    """
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    probs = np.asarray(probs, dtype=np.float64)
    num_classes = len(class_names)
    if probs.ndim != 2 or probs.shape[1] != num_classes:
        raise ValueError(
            f"probs must be N×{num_classes} (one column per class name), got {probs.shape}"
        )
    if len(labels) != len(probs):
        raise ValueError(f"{len(labels)} labels but {len(probs)} rows of probabilities")
    if len(labels) == 0:
        raise ValueError("no samples to evaluate")
    if labels.min() < 0 or labels.max() >= num_classes:
        raise ValueError(
            f"labels must lie in [0, {num_classes}), got {labels.min()}..{labels.max()}"
        )

    n = len(labels)
    preds = probs.argmax(axis=1)
    cm = np.bincount(labels * num_classes + preds, minlength=num_classes**2).reshape(
        num_classes, num_classes
    )
    tp = np.diag(cm)
    true_counts = cm.sum(axis=1)
    pred_counts = cm.sum(axis=0)

    # Same formulas as sklearn (f1 = 2tp / (true + pred)) so that the rounded report matches.
    precision = _divide(tp, pred_counts)
    recall = _divide(tp, true_counts)
    f1 = _divide(2.0 * tp, true_counts + pred_counts)

    true_p = probs[np.arange(n), labels]
    log_loss = float(-np.mean(np.log(np.clip(true_p, _EPS, 1.0))))
    top5 = None
    if num_classes > 5:
        # Rank of the true class = how many classes score strictly higher; ties count as hits.
        higher = (probs > true_p[:, None]).sum(axis=1)
        top5 = float(np.mean(higher < 5))

    def avg(weights: np.ndarray | None) -> dict[str, Any]:
        return {
            "precision": float(np.average(precision, weights=weights)),
            "recall": float(np.average(recall, weights=weights)),
            "f1": float(np.average(f1, weights=weights)),
            "support": int(n),
        }

    return {
        "split": split,
        "num_samples": int(n),
        "accuracy": float(np.mean(preds == labels)),
        "top5_accuracy": top5,
        "log_loss": log_loss,
        "class_names": list(class_names),
        "per_class": [
            {
                "class": name,
                "precision": float(precision[c]),
                "recall": float(recall[c]),
                "f1": float(f1[c]),
                "support": int(true_counts[c]),
            }
            for c, name in enumerate(class_names)
        ],
        "macro_avg": avg(None),
        "weighted_avg": avg(true_counts),
        "confusion_matrix": cm.tolist(),
        "predicted_counts": pred_counts.tolist(),
        "true_counts": true_counts.tolist(),
    }


def classification_report_text(metrics: dict[str, Any], digits: int = 2) -> str:
    """The per-class table in exactly the layout of sklearn's ``classification_report``."""
    headers = ["precision", "recall", "f1-score", "support"]
    names = [row["class"] for row in metrics["per_class"]]
    width = max(max(len(name) for name in names), len("weighted avg"), digits)
    head_fmt = "{:>{width}s} " + " {:>9}" * len(headers)
    row_fmt = "{:>{width}s} " + " {:>9.{digits}f}" * 3 + " {:>9}\n"
    out = head_fmt.format("", *headers, width=width) + "\n\n"
    for row in metrics["per_class"]:
        out += row_fmt.format(
            row["class"],
            row["precision"],
            row["recall"],
            row["f1"],
            row["support"],
            width=width,
            digits=digits,
        )
    out += "\n"
    acc_fmt = "{:>{width}s} " + " {:>9}" * 2 + " {:>9.{digits}f} {:>9}\n"
    out += acc_fmt.format(
        "accuracy", "", "", metrics["accuracy"], metrics["num_samples"], width=width, digits=digits
    )
    for heading, key in (("macro avg", "macro_avg"), ("weighted avg", "weighted_avg")):
        a = metrics[key]
        out += row_fmt.format(
            heading, a["precision"], a["recall"], a["f1"], a["support"], width=width, digits=digits
        )
    return out


def counts_table_text(metrics: dict[str, Any]) -> str:
    """Per class: how often it was predicted, how often it is the true class, the difference."""
    names = metrics["class_names"]
    width = max(len("class"), *(len(name) for name in names))
    lines = [f"{'class':<{width}}  {'predicted':>9}  {'true':>6}  {'diff':>6}"]
    for name, p, t in zip(names, metrics["predicted_counts"], metrics["true_counts"], strict=True):
        lines.append(f"{name:<{width}}  {p:>9}  {t:>6}  {p - t:>+6}")
    return "\n".join(lines) + "\n"


def confusion_matrix_text(metrics: dict[str, Any]) -> str:
    """The confusion matrix as a compact table (rows true, columns predicted).

    Columns are headed by the first letters of each class name; above 20 classes only a note.
    """
    names = metrics["class_names"]
    c = len(names)
    if c > _MAX_MATRIX_TEXT:
        return f"({c}×{c} matrix in the JSON)\n"
    cm = metrics["confusion_matrix"]
    cell = max(5, len(str(max(max(row) for row in cm))))
    name_w = max(len(name) for name in names)
    lines = ["rows: true class, columns: predicted class"]
    lines.append(" " * name_w + "".join(f" {name[:cell]:>{cell}}" for name in names))
    for name, row in zip(names, cm, strict=True):
        lines.append(f"{name:>{name_w}}" + "".join(f" {v:>{cell}}" for v in row))
    return "\n".join(lines) + "\n"
