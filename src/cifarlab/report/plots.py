"""Evaluation figures: training curves, confusion matrix, predicted-vs-true counts, image grids,
calibration, and robustness to corruptions (heat-map, example images).

Every function returns a ``matplotlib.figure.Figure`` drawn on the Agg canvas. The figures are
built without pyplot, so they need no display, leave no global state behind and are safe to
create in a loop. ``save_png`` writes one atomically. Sizes and fonts scale with the number of
classes so that CIFAR-100's 100 class names stay legible.

Class names, run names and titles are user data (an image folder's names): they are drawn as
they are written, never read as matplotlib mathtext (``$…$``) or LaTeX (``text.usetex`` in a
user's matplotlibrc): every figure is built :func:`plain_text` and saved with math off, and
:func:`safe_text` makes any string drawable (no lone surrogates, no control characters).
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TypeVar

import matplotlib
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import Normalize, PowerNorm
from matplotlib.figure import Figure
from matplotlib.lines import Line2D
from matplotlib.patches import Patch
from matplotlib.text import Text
from matplotlib.ticker import MaxNLocator

from cifarlab.data.corruptions import FAMILY_ORDER
from cifarlab.errors import printable
from cifarlab.files import atomic_write

FEW_CLASSES = 20  # up to this many classes: numbers in cells and on bars, tilted names
RIGHT, WRONG = "#1a7f37", "#c62828"  # green / red, both readable on white
OVER, UNDER, EXACT = "#e8891c", "#3b75af", "#8c8c8c"
GRID_COLS = 8


# text.parse_math off: "$" is a dollar sign; text.usetex off: no LaTeX, whatever the user's rc.
_PLAIN_TEXT = {"text.usetex": False, "text.parse_math": False}
F = TypeVar("F", bound=Callable[..., Figure])


@contextmanager
def _plain_rc() -> Iterator[None]:
    with matplotlib.rc_context(_PLAIN_TEXT):
        yield


def plain_text(build: F) -> F:
    """Decorator for a function that returns a Figure: it is built with mathtext and LaTeX
    off, and every Text in it is set so, in case one was made otherwise."""

    @functools.wraps(build)
    def wrapper(*args: Any, **kwargs: Any) -> Figure:
        with _plain_rc():
            fig = build(*args, **kwargs)
        for text in fig.findobj(Text):
            text.set_usetex(False)
            text.set_parse_math(False)
        return fig

    return wrapper  # type: ignore[return-value]


def safe_text(text: Any) -> str:
    """Any value as text matplotlib can draw: lone surrogates (a file name that was not
    UTF-8) as escapes, control characters and line breaks as spaces."""
    return re.sub(r"[\x00-\x1f\x7f\x85\u2028\u2029]+", " ", printable(text))


def new_figure(width: float, height: float) -> Figure:
    fig = Figure(figsize=(width, height), layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def _pretty(name: Any) -> str:
    return safe_text(name).replace("_", " ")


def _class_axis(ax: Any, axis: str, names: list[str]) -> None:
    """Every class name as a tick label; tilted for few classes, vertical and small for many."""
    ticks = np.arange(len(names))
    labels = [_pretty(n) for n in names]
    if axis == "x":
        ax.set_xticks(ticks)
        if len(names) <= FEW_CLASSES:
            ax.set_xticklabels(labels, rotation=40, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticklabels(labels, rotation=90, fontsize=7)
    else:
        ax.set_yticks(ticks)
        ax.set_yticklabels(labels, fontsize=None if len(names) <= FEW_CLASSES else 7)


def _as_percent(values: list[float | None]) -> list[float | None]:
    """Accuracies are fractions in metrics.jsonl; a history already in percent is kept."""
    known = [v for v in values if v is not None]
    scale = 100.0 if known and max(known) <= 1.0 else 1.0
    return [None if v is None else v * scale for v in values]


def _plot_series(ax: Any, x: list[int], y: list[float | None], **kwargs: Any) -> bool:
    """Plot the points of y that exist; returns whether anything was drawn."""
    pts = [(a, b) for a, b in zip(x, y, strict=True) if b is not None]
    if not pts:
        return False
    xs, ys = zip(*pts, strict=True)
    ax.plot(xs, ys, marker="o" if len(x) <= 30 else None, markersize=4, **kwargs)
    return True


@plain_text
def training_curves(history: list[dict]) -> Figure:
    """Loss and accuracy per epoch, train and validation, side by side."""
    fig = new_figure(11, 4.2)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(row["epoch"]) for row in history]
    for ax, key, title, ylabel in (
        (ax_loss, "loss", "Loss", "cross-entropy loss"),
        (ax_acc, "acc", "Accuracy", "accuracy (%)"),
    ):
        train = [row.get(f"train_{key}") for row in history]
        val = [row.get(f"val_{key}") for row in history]
        if key == "acc":
            both = _as_percent(train + val)  # one scale for both curves
            train, val = both[: len(train)], both[len(train) :]
        drawn = _plot_series(ax, epochs, train, label="train", color="tab:blue")
        drawn |= _plot_series(ax, epochs, val, label="validation", color="tab:orange")
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.set_ylabel(ylabel)
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.grid(alpha=0.3)
        if drawn:
            ax.legend()
        else:
            ax.text(
                0.5, 0.5, "no epochs recorded", ha="center", va="center", transform=ax.transAxes
            )
    fig.suptitle("Training curves")
    return fig


@plain_text
def confusion_heatmap(metrics: dict) -> Figure:
    """Confusion matrix coloured by row (the share of each true class), counts in the cells."""
    names = metrics["class_names"]
    c = len(names)
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.int64)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    few = c <= FEW_CLASSES
    side = 0.6 * c + 3 if few else 0.15 * c + 2.5
    fig = new_figure(side + 1.5, side)
    ax = fig.subplots()
    # With many classes each confusion is a small share; a square-root scale keeps them visible.
    norm = Normalize(0, 1) if few else PowerNorm(0.5, 0, 1)
    im = ax.imshow(share, cmap="Blues", norm=norm, interpolation="nearest")
    cbar = fig.colorbar(im, ax=ax, shrink=0.8 if few else 0.5)
    cbar.set_label("share of the true class (row)" + ("" if few else ", square-root scale"))
    _class_axis(ax, "x", names)
    _class_axis(ax, "y", names)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if few:
        size = 9 if c <= 12 else 7
        for (i, j), v in np.ndenumerate(cm):
            colour = "white" if share[i, j] > 0.5 else "black"
            ax.text(j, i, str(v), ha="center", va="center", fontsize=size, color=colour)
    acc = metrics.get("accuracy")
    acc_text = f", accuracy {acc:.1%}" if acc is not None else ""
    ax.set_title(
        f"Confusion matrix: {safe_text(metrics.get('split', ''))} split, "
        f"{metrics.get('num_samples', int(cm.sum())):,} images{acc_text}",
        fontsize=12 if few else 16,
    )
    return fig


@plain_text
def predicted_vs_true(metrics: dict) -> Figure:
    """How often each class is predicted (bars) against how often it is true (black marks)."""
    names = metrics["class_names"]
    c = len(names)
    pred = np.asarray(metrics["predicted_counts"])
    true = np.asarray(metrics["true_counts"])
    few = c <= FEW_CLASSES
    fig = new_figure(max(9.0, 0.75 * c + 2) if few else 0.17 * c + 2, 5.5 if few else 6.5)
    ax = fig.subplots()
    x = np.arange(c)
    colours = np.where(pred > true, OVER, np.where(pred < true, UNDER, EXACT))
    ax.bar(x, pred, width=0.7, color=colours)
    ax.hlines(true, x - 0.45, x + 0.45, colors="black", linewidth=2.2, zorder=3)
    top = max(int(pred.max()), int(true.max()), 1)
    if few:
        for xi, p, t in zip(x, pred, true, strict=True):
            d = int(p - t)
            colour = OVER if d > 0 else UNDER if d < 0 else EXACT
            label = f"{d:+d}" if d else "±0"
            ax.text(
                xi,
                max(p, t) + 0.015 * top,
                label,
                ha="center",
                va="bottom",
                fontsize=9,
                color=colour,
            )
    ax.set_ylim(0, top * 1.12)
    ax.set_xlim(-0.6, c - 0.4)
    _class_axis(ax, "x", names)
    ax.set_ylabel("number of images")
    ax.set_xlabel("class")
    ax.grid(axis="y", alpha=0.3)
    handles = [
        Patch(color=OVER, label="predicted more often than true"),
        Patch(color=UNDER, label="predicted less often than true"),
        Line2D([], [], color="black", linewidth=2.2, label="true count"),
    ]
    if (pred == true).any():
        handles.insert(2, Patch(color=EXACT, label="predicted exactly as often"))
    ax.legend(
        handles=handles,
        loc="lower center",
        bbox_to_anchor=(0.5, 1.0),
        ncol=len(handles),
        frameon=False,
    )
    fig.suptitle(
        f"Predicted vs true class counts: {safe_text(metrics.get('split', ''))} split, "
        f"{int(true.sum()):,} images",
        fontsize=12 if few else 15,
    )
    return fig


def _image_grid(
    images: np.ndarray, picks: list[int], titles: list[str], colours: list[str], suptitle: str
) -> Figure:
    """Images in rows of 8, each with a coloured title and a frame of the same colour."""
    rows = max(1, math.ceil(len(picks) / GRID_COLS))
    fig = new_figure(GRID_COLS * 1.8, rows * 2.1 + 0.5)
    axes = fig.subplots(rows, GRID_COLS, squeeze=False)
    # Titles must not run into their neighbours: 23 characters fit a column at 9 pt.
    longest = max((len(line) for t in titles for line in t.splitlines()), default=0)
    size = max(6.5, min(9.0, 9.0 * 23 / max(longest, 1)))
    for k, ax in enumerate(axes.flat):
        ax.set_xticks([])
        ax.set_yticks([])
        if k >= len(picks):
            ax.axis("off")
            continue
        ax.imshow(np.asarray(images[picks[k]]), interpolation="nearest")
        ax.set_title(titles[k], fontsize=size, color=colours[k])
        for spine in ax.spines.values():
            spine.set_color(colours[k])
            spine.set_linewidth(3)
    if not picks:
        axes.flat[0].text(0.5, 0.5, "nothing to show", ha="center", va="center")
    fig.suptitle(suptitle, fontsize=13)
    return fig


@plain_text
def prediction_grid(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    probs_of_pred: np.ndarray,
    class_names: list[str],
    n: int = 32,
    *,
    seed: int = 0,
) -> Figure:
    """``n`` images chosen by a seeded draw, each titled with its prediction, its probability
    and its true label; right ones green with ✓, wrong ones red with ✗."""
    labels, preds, probs = np.asarray(labels), np.asarray(preds), np.asarray(probs_of_pred)
    rng = np.random.default_rng(seed)
    # A random draw, not the first n: some sources store the images sorted by class.
    picks = sorted(rng.choice(len(labels), size=min(n, len(labels)), replace=False).tolist())
    titles, colours = [], []
    for i in picks:
        ok = preds[i] == labels[i]
        mark = "✓" if ok else "✗"
        titles.append(
            f"{mark} {_pretty(class_names[preds[i]])} ({probs[i]:.0%})\n"
            f"true: {_pretty(class_names[labels[i]])}"
        )
        colours.append(RIGHT if ok else WRONG)
    right = sum(c == RIGHT for c in colours)
    return _image_grid(
        images,
        picks,
        titles,
        colours,
        f"Predictions on {len(picks)} random images: {right} right ✓, {len(picks) - right} wrong ✗",
    )


@plain_text
def confident_mistakes(
    images: np.ndarray,
    labels: np.ndarray,
    preds: np.ndarray,
    probs_of_pred: np.ndarray,
    class_names: list[str],
    n: int = 16,
) -> Figure:
    """The ``n`` wrong predictions made with the highest probability."""
    labels, preds, probs = np.asarray(labels), np.asarray(preds), np.asarray(probs_of_pred)
    wrong = np.flatnonzero(preds != labels)
    picks = wrong[np.argsort(-probs[wrong], kind="stable")][:n].tolist()
    titles = [
        f"pred {_pretty(class_names[preds[i]])} ({probs[i]:.0%})\n"
        f"true {_pretty(class_names[labels[i]])}"
        for i in picks
    ]
    return _image_grid(
        images,
        picks,
        titles,
        [WRONG] * len(picks),
        f"The {len(picks)} most confident mistakes (of {len(wrong):,} wrong predictions)",
    )


@plain_text
def f1_bars(runs: list[tuple[str, dict]]) -> Figure:
    """Per-class F1 of several runs (same classes) as grouped bars."""
    if not runs:
        raise ValueError("no runs to compare")
    names = runs[0][1]["class_names"]
    for run_name, m in runs:
        if m["class_names"] != names:
            raise ValueError(f"run {run_name!r} has other classes than {runs[0][0]!r}")
    c, r = len(names), len(runs)
    few = c <= FEW_CLASSES
    # Many classes: at most ~1900 px wide (a full-HD window); the bars get thinner instead.
    width = max(9.0, 0.5 * c * r**0.5 + 2) if few else min(19.0, 0.12 * c * r**0.5 + 2)
    fig = new_figure(width, 5.5 if few else 6.5)
    ax = fig.subplots()
    bar = 0.8 / r
    x = np.arange(c)
    for k, (run_name, m) in enumerate(runs):
        f1 = [row["f1"] for row in m["per_class"]]
        text = f"{safe_text(run_name)} (macro F1 {m['macro_avg']['f1']:.2f})"
        ax.bar(x - 0.4 + bar * (k + 0.5), f1, width=bar, label=text)
    ax.set_xlim(-0.6, c - 0.4)
    ax.set_ylim(0, 1.0)
    _class_axis(ax, "x", names)
    ax.set_ylabel("F1 score")
    ax.set_xlabel("class")
    ax.grid(axis="y", alpha=0.3)
    ax.legend(loc="lower center", bbox_to_anchor=(0.5, 1.0), ncol=min(r, 4), frameon=False)
    fig.suptitle("Per-class F1 score by run", fontsize=12 if few else 15)
    return fig


@plain_text
def val_accuracy_overlay(runs: list[tuple[str, list[dict]]]) -> Figure:
    """Validation accuracy per epoch of several runs on one axis (train accuracy, dashed, for a
    run trained without a validation split)."""
    fig = new_figure(9, 4.8)
    ax = fig.subplots()
    for run_name, history in runs:
        epochs = [int(row["epoch"]) for row in history]
        val = _as_percent([row.get("val_acc") for row in history])
        if not _plot_series(ax, epochs, val, label=safe_text(run_name)):
            train = _as_percent([row.get("train_acc") for row in history])
            text = f"{safe_text(run_name)} (train; no validation split)"
            _plot_series(ax, epochs, train, label=text, linestyle="--")
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("Validation accuracy by epoch")
    return fig


def _reliability_panel(ax: Any, table: list[dict], title: str, ece: float) -> None:
    lower = np.array([b["lower"] for b in table])
    width = lower[1] - lower[0] if len(lower) > 1 else 1.0
    centre = lower + width / 2
    count = np.array([b["count"] for b in table])
    acc = np.array([b["accuracy"] if b["count"] else np.nan for b in table])
    conf = np.array([b["confidence"] if b["count"] else np.nan for b in table])
    has = count > 0
    ax.bar(centre[has], acc[has], width=width * 0.95, color="#9cc3e6", label="accuracy in the bin")
    # the gap to the bin's mean confidence, hatched: red above the bar (over-confident),
    # orange inside it (under-confident); the black tick is the mean confidence
    gap = conf - acc
    over = has & (gap > 0)
    under = has & (gap < 0)
    ax.bar(
        centre[over],
        gap[over],
        bottom=acc[over],
        width=width * 0.95,
        facecolor="none",
        hatch="///",
        edgecolor=WRONG,
        linewidth=0.8,
        label="gap: over-confident",
    )
    ax.bar(
        centre[under],
        -gap[under],
        bottom=conf[under],
        width=width * 0.95,
        facecolor="none",
        hatch="\\\\\\",
        edgecolor="#b35900",
        linewidth=0.8,
        label="gap: under-confident",
    )
    ax.hlines(
        conf[has],
        centre[has] - width * 0.47,
        centre[has] + width * 0.47,
        colors="black",
        linewidth=1.5,
        label="mean confidence in the bin",
    )
    ax.plot([0, 1], [0, 1], color="black", linestyle="--", linewidth=1, label="perfect calibration")
    total = max(int(count.sum()), 1)
    for x, n, a_, c_ in zip(centre[has], count[has], acc[has], conf[has], strict=True):
        share = n / total
        text = f"{n:,}" if share >= 0.001 else f"{n}"
        ax.text(
            x,
            max(a_, c_) + 0.02,
            text,
            ha="center",
            va="bottom",
            fontsize=7,
            rotation=90,
            color="#333333",
        )
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.18)
    ax.set_yticks(np.linspace(0, 1, 6))
    ax.set_xlabel("confidence (top-1 probability)")
    ax.set_ylabel("accuracy")
    ax.set_title(f"{title}: ECE {ece:.2%}", fontsize=11)
    ax.grid(alpha=0.3)
    ax.text(0.02, 1.14, "numbers: images in each bin", fontsize=8, va="top", color="#333333")


@plain_text
def reliability_diagram(calibration: dict) -> Figure:
    """Accuracy against confidence per bin (the gap to the diagonal shaded, the bin counts
    written over the bars): as trained, and after temperature scaling when fitted."""
    panels = [("as trained", calibration["before"])]
    if calibration.get("after") is not None:
        panels.append((f"temperature {calibration['temperature']:.3f}", calibration["after"]))
    fig = new_figure(5.6 * len(panels) + 0.6, 5.4)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    for ax, (title, m) in zip(axes, panels, strict=True):
        _reliability_panel(ax, m["bins"], title, m["ece"])
    handles = [
        Patch(facecolor="#9cc3e6", label="accuracy in the bin"),
        Line2D([], [], color="black", linewidth=1.5, label="mean confidence in the bin"),
        Patch(facecolor="none", hatch="///", edgecolor=WRONG, label="gap: over-confident"),
        Patch(facecolor="none", hatch="\\\\\\", edgecolor="#b35900", label="gap: under-confident"),
        Line2D([], [], color="black", linestyle="--", linewidth=1, label="perfect calibration"),
    ]
    fig.legend(
        handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize=9
    )
    fig.suptitle(
        f"Reliability diagram ({len(calibration['before']['bins'])} equal-width bins)", fontsize=12
    )
    return fig


@plain_text
def confidence_histogram(
    labels: np.ndarray, probs: np.ndarray, temperature: float | None = None
) -> Figure:
    """How confident the right and the wrong answers are: the top-1 probability of each,
    as trained and (``temperature``) after temperature scaling."""
    labels = np.asarray(labels)
    probs = np.asarray(probs, dtype=np.float64)
    panels = [("as trained", probs)]
    if temperature is not None:
        with np.errstate(divide="ignore"):
            z = np.log(probs) / temperature
        z -= z.max(axis=1, keepdims=True)
        scaled = np.exp(z)
        scaled /= scaled.sum(axis=1, keepdims=True)
        panels.append((f"temperature {temperature:.3f}", scaled))
    fig = new_figure(5.6 * len(panels) + 0.6, 4.6)
    axes = np.atleast_1d(fig.subplots(1, len(panels), sharey=True))
    edges = np.linspace(0, 1, 16)
    for ax, (title, p) in zip(axes, panels, strict=True):
        conf = p.max(axis=1)
        right = p.argmax(axis=1) == labels
        for mask, colour, name in ((right, RIGHT, "right"), (~right, WRONG, "wrong")):
            if mask.any():
                n = int(mask.sum())
                label = f"{name}: {n:,} images, mean {conf[mask].mean():.0%}"
                ax.hist(
                    conf[mask],
                    bins=edges,
                    weights=np.full(n, 100.0 / n),
                    color=colour,
                    alpha=0.45,
                    label=label,
                )
                ax.axvline(conf[mask].mean(), color=colour, linestyle="--", linewidth=1.2)
        ax.set_xlim(0, 1)
        ax.set_xlabel("confidence (top-1 probability)")
        ax.set_title(title, fontsize=11)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(loc="upper right", fontsize=9, frameon=False)
    axes[0].set_ylabel("share of the right / of the wrong answers (%)")
    fig.suptitle("Confidence of right and wrong answers (dashed: their means)", fontsize=12)
    return fig


# --------------------------------------------------------------------------- robustness


def grouped(result: dict[str, Any]) -> list[str]:
    """The corruptions of a robustness result grouped by family (CIFAR-10-C's order within
    each)."""
    per = result["per_corruption"]
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(
        per, key=lambda n: (rank.get(per[n]["family"], len(rank)), result["corruptions"].index(n))
    )


def scope(result: dict[str, Any]) -> str:
    """What a robustness result evaluated, in words: split, images, TTA."""
    n = result["images"]
    if result.get("subset"):
        what = f"{n:,} of {result['split_images']:,} {result['split']} images (a subset)"
    else:
        what = f"{n:,} {result['split']} images"
    tta = f", test-time augmentation level {result['tta']}" if result.get("tta") else ""
    return what + tta


def headline(result: dict[str, Any]) -> str:
    """One line: clean accuracy, mean accuracy under corruption, relative drop."""
    drop = result.get("relative_drop")
    drop_text = f"{drop:.1%}" if isinstance(drop, (int, float)) else "–"
    return (
        f"clean {result['clean_accuracy']:.1%}, mean under corruption "
        f"{result['mean_corruption_accuracy']:.1%}, relative drop {drop_text}"
    )


def _family_axis(ax: Any, families: list[str]) -> None:
    """The families on the right of the heat-map, white lines between them."""
    starts = [i for i in range(len(families)) if i == 0 or families[i] != families[i - 1]]
    for i in starts[1:]:
        ax.axhline(i - 0.5, color="white", linewidth=3)
    ends = [*starts[1:], len(families)]
    fam_axis = ax.secondary_yaxis("right")
    fam_axis.set_yticks(
        [(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)],
        [safe_text(families[a]) for a in starts],
    )
    fam_axis.tick_params(length=0, labelsize=10)
    for label in fam_axis.get_yticklabels():
        label.set_fontweight("bold")
        label.set_color("#444444")
    for spine in (*ax.spines.values(), *fam_axis.spines.values()):
        spine.set_visible(False)


@plain_text
def robustness_heatmap(result: dict[str, Any]) -> Figure:
    """Accuracy (%) per corruption (rows, grouped by family) and severity (columns), with
    each corruption's mean; the clean accuracy marked on the colour bar."""
    names = grouped(result)
    levels = [int(s) for s in result["severities"]]
    per = result["per_corruption"]
    by = [[per[n]["accuracy_by_severity"][str(s)] for s in levels] for n in names]
    acc = np.array([row + [per[n]["mean_accuracy"]] for row, n in zip(by, names, strict=True)])
    acc = acc * 100
    clean = 100 * result["clean_accuracy"]
    lo = math.floor(min(acc.min(), clean) / 10) * 10
    hi = max(min(math.ceil((max(acc.max(), clean) + 2) / 10) * 10, 100), lo + 10)
    norm = Normalize(lo, hi)
    width = max(9.0, 2.6 + 0.85 * (len(levels) + 1) + 1.6)  # the title's two lines fit
    fig = new_figure(width, max(3.6, 1.6 + 0.42 * len(names)))
    ax = fig.subplots()
    im = ax.imshow(acc, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
    for (i, j), v in np.ndenumerate(acc):
        colour = "white" if norm(v) < 0.6 else "black"
        weight = "bold" if j == len(levels) else "normal"
        ax.text(
            j, i, f"{v:.1f}", ha="center", va="center", fontsize=9, color=colour, fontweight=weight
        )
    ax.set_xticks(range(len(levels) + 1), [*map(str, levels), "mean"])
    ax.xaxis.tick_top()
    ax.xaxis.set_label_position("top")
    ax.set_xlabel("severity")
    ax.set_yticks(range(len(names)), [_pretty(n) for n in names])
    ax.tick_params(length=0)
    ax.axvline(len(levels) - 0.5, color="white", linewidth=3)
    _family_axis(ax, [per[n]["family"] for n in names])
    cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
    cbar.set_label("accuracy (%)")
    cbar.ax.axhline(clean, color=WRONG, linewidth=2.5)
    title = safe_text(result.get("run") or "run")
    fig.suptitle(
        f"{title}: accuracy under corruption, {scope(result)}\n{headline(result)}"
        " (red line on the scale: clean)",
        fontsize=11,
    )
    return fig


@plain_text
def corruption_examples(
    images: np.ndarray,
    shown: dict[tuple[str, int], np.ndarray],
    names: list[str],
    levels: list[int],
    *,
    labels: list[str] | None = None,
) -> Figure:
    """For each example image, a row per corruption: the clean image, then each severity
    (32×32 pixels drawn as blocks, nearest neighbour)."""
    n_ex, cols = len(images), 1 + len(levels)
    cell = 0.82
    fig = new_figure(max(7.5, 1.6 + n_ex * cols * cell + (n_ex - 1) * 0.3), 0.9 + len(names) * cell)
    widths = []
    for e in range(n_ex):
        widths += [1.0] * cols + ([0.35] if e < n_ex - 1 else [])
    grid = fig.add_gridspec(len(names), len(widths), width_ratios=widths, wspace=0.04, hspace=0.04)
    for r, name in enumerate(names):
        for e in range(n_ex):
            for k in range(cols):
                ax = fig.add_subplot(grid[r, e * (cols + 1) + k])
                img = images[e] if k == 0 else shown[name, levels[k - 1]][e]
                ax.imshow(img, interpolation="nearest")
                ax.set_xticks([])
                ax.set_yticks([])
                if r == 0:
                    head = "clean" if k == 0 else f"severity {levels[k - 1]}"
                    if k == 0 and labels:
                        head = f"{safe_text(labels[e])}\n{head}"
                    ax.set_title(head, fontsize=8)
                if e == 0 and k == 0:
                    ax.set_ylabel(_pretty(name), rotation=0, ha="right", va="center", fontsize=9)
    fig.suptitle(
        f"The same {n_ex} images under each corruption: clean, then severities "
        f"{', '.join(map(str, levels))}",
        fontsize=11,
    )
    return fig


def save_png(fig: Figure, path: str | os.PathLike, dpi: int = 100) -> Path:
    """Write ``fig`` as a PNG (atomically) and close it (drawn with mathtext and LaTeX off:
    tick labels are made while drawing)."""

    def write(tmp: Path) -> None:
        with _plain_rc():
            fig.savefig(tmp, format="png", dpi=dpi)

    try:
        return atomic_write(path, write)
    finally:
        plt.close(fig)  # a no-op for our pyplot-free figures; frees one made with pyplot


def png_bytes(fig: Figure, dpi: int = 100) -> bytes:
    """The figure as PNG bytes (for embedding), closing it."""
    buf = io.BytesIO()
    try:
        with _plain_rc():
            fig.savefig(buf, format="png", dpi=dpi)
    finally:
        plt.close(fig)
    return buf.getvalue()


# --------------------------------------------------------------------------- groups of seeds

SideDots = tuple[str, list[float], float, tuple[float, float] | None]


def _spread(
    values: list[float], span: float, step: float = 0.07, width: float = 0.32
) -> list[float]:
    """Horizontal offsets for dots: values closer than ``span`` share a row, spread evenly
    about 0 (so equal values never hide each other); deterministic, in the values' order."""
    order = sorted(range(len(values)), key=lambda i: values[i])
    offsets = [0.0] * len(values)
    cluster: list[int] = []

    def place() -> None:
        k = len(cluster)
        gap = min(step, width / max(k - 1, 1))
        for j, i in enumerate(cluster):
            offsets[i] = (j - (k - 1) / 2) * gap

    for i in order:
        if cluster and values[i] - values[cluster[0]] > span:
            place()
            cluster = []
        cluster.append(i)
    place()
    return offsets


@plain_text
def seed_dots(panels: list[tuple[str, list[SideDots]]]) -> Figure:
    """Each run as a dot, per side, with the side's mean (a bar) and the 95 % interval of the
    mean (a line with caps); one panel per metric. ``panels``: (axis label, sides), each side
    (name, the runs' values, mean, interval or None), values already in the unit shown."""
    sides = len(panels[0][1]) if panels else 0
    longest = max((len(safe_text(s[0])) for _, ss in panels for s in ss), default=0)
    tilt = sides * max(longest, 8) > 60
    per = max(3.6, 1.25 * sides + 1.2)
    fig = new_figure(per * len(panels), 4.6 + (0.08 * min(longest, 40) if tilt else 0))
    axes = np.atleast_1d(fig.subplots(1, len(panels), squeeze=False)[0])
    for ax, (label, data) in zip(axes, panels, strict=True):
        every = [v for _, vals, _, _ in data for v in vals]
        span = (max(every) - min(every)) if every else 0.0
        pad = 0.15 * span if span else 0.5
        low = min([*every, *(c[0] for _, _, _, c in data if c)], default=0) - pad
        high = max([*every, *(c[1] for _, _, _, c in data if c)], default=1) + pad
        for k, (_, vals, mean, ci) in enumerate(data):
            color = f"C{k % 10}"
            offsets = _spread(vals, 0.035 * (high - low))  # a dot is about 2 % of the axis
            ax.scatter(
                [k - 0.12 + o for o in offsets],
                vals,
                s=34,
                color=color,
                edgecolor="white",
                linewidth=0.6,
                zorder=3,
            )
            if len(vals) > 1:
                ax.hlines(mean, k + 0.14, k + 0.34, color="#1f2328", linewidth=2.2, zorder=4)
                if ci is not None:
                    ax.errorbar(
                        k + 0.24,
                        mean,
                        yerr=[[mean - ci[0]], [ci[1] - mean]],
                        color="#1f2328",
                        capsize=4,
                        linewidth=1.2,
                        zorder=4,
                    )
        ax.set_xticks(range(len(data)))
        names = [f"{safe_text(n)}\n(n = {len(v)})" for n, v, _, _ in data]
        if tilt:
            ax.set_xticklabels(names, rotation=30, ha="right", rotation_mode="anchor")
        else:
            ax.set_xticklabels(names)
        ax.set_xlim(-0.6, len(data) - 0.4)
        ax.set_ylabel(safe_text(label))
        ax.grid(axis="y", alpha=0.3)
        ax.set_ylim(low, high)
    keys = [
        Line2D([], [], marker="o", linestyle="", color="#8c8c8c", label="one run"),
        Line2D([], [], color="#1f2328", linewidth=2.2, label="mean"),
        Line2D([], [], color="#1f2328", marker="_", markersize=8, label="95 % CI of the mean"),
    ]
    fig.legend(handles=keys, loc="outside upper center", ncol=3, frameon=False)
    return fig


@plain_text
def val_accuracy_sides(sides: list[tuple[str, list[list[dict]]]]) -> Figure:
    """Validation accuracy per epoch of every run, in its side's colour (one legend entry per
    side); a run without a validation split: train accuracy, dashed."""
    fig = new_figure(9, 4.8)
    ax = fig.subplots()
    for k, (name, histories) in enumerate(sides):
        color = f"C{k % 10}"
        label = f"{safe_text(name)} ({len(histories)} run{'s' if len(histories) != 1 else ''})"
        for history in histories:
            epochs = [int(row["epoch"]) for row in history]
            val = _as_percent([row.get("val_acc") for row in history])
            kw = {"color": color, "alpha": 0.8, "label": label}
            if _plot_series(ax, epochs, val, **kw):
                label = "_"  # one legend entry per side
            else:
                train = _as_percent([row.get("train_acc") for row in history])
                if _plot_series(ax, epochs, train, linestyle="--", **{**kw, "label": label}):
                    label = "_"
    ax.set_xlabel("epoch")
    ax.set_ylabel("accuracy (%)")
    last = max((int(r["epoch"]) for _, hs in sides for h in hs for r in h), default=1)
    if last <= 1:  # one epoch: one tick, not fractions of it
        ax.set_xticks([1])
        ax.set_xlim(0.5, 1.5)
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.grid(alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend()
    ax.set_title("Validation accuracy by epoch: every run, in its side's colour")
    return fig
