"""Calibration: how far a model's probabilities are from the frequencies they claim, and
temperature scaling to bring them closer.

Measures (numpy only):

- **ECE**, expected calibration error: the predictions are sorted into ``BINS`` (15) equal-width
  bins by their confidence (the top probability); ECE = Σ (|bin| / N) · |accuracy − confidence|
  over the bins (Guo et al., "On Calibration of Modern Neural Networks", ICML 2017, eq. 3).
- **MCE**, maximum calibration error: the largest |accuracy − confidence| of a non-empty bin.
- **Brier score**: the mean over images of Σ_k (p_k − y_k)², y one-hot (0 is perfect, 2 the worst).
- **NLL**: the mean negative log-likelihood of the true class (natural log).

The fix is **temperature scaling** (Guo et al., 2017): the logits are divided by one scalar
T > 0 fitted on the validation split by minimising NLL. Dividing by T > 0 keeps every
arg-max, so accuracy cannot change. NLL as a function of β = 1/T is convex (a log-sum-exp of
functions linear in β, minus one linear in β), so a safeguarded Newton iteration on β finds
its minimum exactly; β = 1 (no change) is kept if nothing does better, so the fitted NLL on the
fitting set is never worse than before.

The fit is stored in the run folder (``calibration.json``, :class:`cifarlab.runs.RunFolder`)
per checkpoint, with the epoch of the weights it was fitted for (by
:func:`cifarlab.evaluate.run.fit_opened`): :func:`cifarlab.trained.open_run` applies it only to
those weights. A run without a validation split records that it cannot be
calibrated: the test split is never used for fitting.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

BINS = 15
MIN_T, MAX_T = 0.01, 100.0  # the fitted temperature is kept in this range
VERSION = 1


def _log_softmax(z: np.ndarray) -> np.ndarray:
    z = z - z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def _as_inputs(labels: Any, scores: Any) -> tuple[np.ndarray, np.ndarray]:
    labels = np.asarray(labels).astype(np.int64, copy=False).reshape(-1)
    scores = np.asarray(scores, dtype=np.float64)
    if scores.ndim != 2 or len(scores) != len(labels):
        raise ValueError(f"need N×C scores for {len(labels)} labels, got shape {scores.shape}")
    if len(labels) == 0:
        raise ValueError("no samples")
    if labels.min() < 0 or labels.max() >= scores.shape[1]:
        raise ValueError(f"labels must lie in [0, {scores.shape[1]})")
    return labels, scores


def reliability(labels: Any, probs: Any, bins: int = BINS) -> list[dict[str, Any]]:
    """The reliability table: for each of ``bins`` equal-width confidence bins, its bounds,
    how many predictions fall in it, their mean confidence and their accuracy (None when
    empty). A confidence of exactly 1 falls in the last bin; bins are (lo, hi]."""
    labels, probs = _as_inputs(labels, probs)
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    edges = np.linspace(0.0, 1.0, bins + 1)
    which = np.clip(np.searchsorted(edges, conf, side="left") - 1, 0, bins - 1)
    count = np.bincount(which, minlength=bins)
    conf_sum = np.bincount(which, weights=conf, minlength=bins)
    right_sum = np.bincount(which, weights=right.astype(np.float64), minlength=bins)
    rows = []
    for b in range(bins):
        n = int(count[b])
        rows.append(
            {
                "lower": float(edges[b]),
                "upper": float(edges[b + 1]),
                "count": n,
                "confidence": float(conf_sum[b] / n) if n else None,
                "accuracy": float(right_sum[b] / n) if n else None,
            }
        )
    return rows


def calibration_metrics(labels: Any, probs: Any, bins: int = BINS) -> dict[str, Any]:
    """ECE, MCE, Brier score and NLL of probabilities ``probs`` (N×C) for ``labels``, with the
    reliability table (``bins``) and the mean confidence of right and wrong answers."""
    labels, probs = _as_inputs(labels, probs)
    table = reliability(labels, probs, bins)
    n = len(labels)
    gaps = [(r["count"], abs(r["accuracy"] - r["confidence"])) for r in table if r["count"]]
    onehot = np.zeros_like(probs)
    onehot[np.arange(n), labels] = 1.0
    conf = probs.max(axis=1)
    right = probs.argmax(axis=1) == labels
    true_p = np.clip(probs[np.arange(n), labels], 1e-300, None)
    return {
        "ece": float(sum(c * g for c, g in gaps) / n),
        "mce": float(max(g for _, g in gaps)),
        "brier": float(((probs - onehot) ** 2).sum(axis=1).mean()),
        "nll": float(-np.log(true_p).mean()),
        "mean_confidence": float(conf.mean()),
        "mean_confidence_right": float(conf[right].mean()) if right.any() else None,
        "mean_confidence_wrong": float(conf[~right].mean()) if (~right).any() else None,
        "bins": table,
    }


def nll(logits: Any, labels: Any, temperature: float = 1.0) -> float:
    """Mean negative log-likelihood of ``labels`` under softmax(logits / temperature)."""
    labels, z = _as_inputs(labels, logits)
    return float(-_log_softmax(z / temperature)[np.arange(len(labels)), labels].mean())


def fit_temperature(logits: Any, labels: Any) -> float:
    """The temperature T minimising the NLL of softmax(logits / T) on (logits, labels), in
    [MIN_T, MAX_T]; 1.0 when no other value lowers it. Newton's method on β = 1/T (convex),
    bisection when a step leaves the bracket."""
    labels, z = _as_inputs(labels, logits)
    if not np.isfinite(z).all():
        raise ValueError("logits must be finite to fit a temperature")
    rows = np.arange(len(labels))
    zy = z[rows, labels]

    def grad_hess(beta: float) -> tuple[float, float]:
        p = np.exp(_log_softmax(beta * z))
        mean_z = (p * z).sum(axis=1)
        var_z = (p * z * z).sum(axis=1) - mean_z**2
        return float((mean_z - zy).mean()), float(np.clip(var_z, 0, None).mean())

    lo, hi = 1.0 / MAX_T, 1.0 / MIN_T
    g_lo, g_hi = grad_hess(lo)[0], grad_hess(hi)[0]
    if g_lo >= 0:  # increasing everywhere: the smallest β (hottest) is best
        beta = lo
    elif g_hi <= 0:
        beta = hi
    else:
        beta = 1.0
        for _ in range(100):
            g, h = grad_hess(beta)
            if abs(g) < 1e-12 or hi - lo < 1e-12 * hi:
                break  # the minimum (to the precision of float64 sums)
            if g > 0:
                hi = beta
            else:
                lo = beta
            step = beta - g / h if h > 0 else math.nan
            beta = step if lo < step < hi else 0.5 * (lo + hi)
    t = 1.0 / beta
    if nll(z, labels, t) > nll(z, labels, 1.0):  # never worse than leaving the logits alone
        return 1.0
    return float(t)


def fit_record(
    logits: Any,
    labels: Any,
    *,
    checkpoint: str,
    checkpoint_epoch: int,
    tta: int,
    split: str = "val",
) -> dict[str, Any]:
    """Fit a temperature on ``logits``/``labels`` and describe the fit: the record stored per
    checkpoint in ``calibration.json``."""
    labels, z = _as_inputs(labels, logits)
    t = fit_temperature(z, labels)
    before = calibration_metrics(labels, np.exp(_log_softmax(z)))
    after = calibration_metrics(labels, np.exp(_log_softmax(z / t)))
    return {
        "temperature": t,
        "fitted_on": split,
        "images": int(len(labels)),
        "checkpoint": checkpoint,
        "checkpoint_epoch": int(checkpoint_epoch),
        "tta": int(tta),
        "nll_before": before["nll"],
        "nll_after": after["nll"],
        "ece_before": before["ece"],
        "ece_after": after["ece"],
    }


NO_VAL = (
    "the run was trained with --val-size 0: there is no validation split to fit a "
    "temperature on (the test split is never used for fitting)"
)


def describe(record: dict[str, Any] | None) -> str:
    """One line for users: what the probabilities are."""
    if record is None:
        return "probabilities not calibrated"
    if record.get("temperature") is None:
        return f"probabilities not calibrated ({record.get('reason', 'no temperature')})"
    return (
        f"probabilities calibrated by temperature scaling (T = {record['temperature']:.3f}, "
        f"fitted on {record['images']:,} validation images)"
    )
