"""The sample-image grid: N images per class, each row or image titled with its class."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from matplotlib.figure import Figure

from cifarlab.errors import SettingError
from cifarlab.report.plots import new_figure, plain_text, safe_text, save_png

_ROWS_PER_CLASS_LIMIT = 20  # above this many classes, one title per image reads better
# The grid's limits: beyond them the PNG is too large to look at (CIFAR-100 at 10 per class is
# already 100 rows, 15,500 pixels tall) and slow to draw.
MAX_PER_CLASS, MAX_THUMBNAILS = 50, 1000
MAX_SEED = 2**63 - 1  # what torch.Generator.manual_seed and numpy take


def check_grid(per_class: int, seed: int, num_classes: int | None = None) -> None:
    """``per_class`` and ``seed`` are ones a grid can be drawn with (for ``num_classes``
    classes, when known: the grid's size limit depends on it)."""
    if per_class < 1:
        raise SettingError("per_class", f"must be at least 1, got {per_class}")
    if not 0 <= seed <= MAX_SEED:
        raise SettingError("seed", f"must be between 0 and 2**63 - 1, got {seed}")
    if num_classes is None:
        return
    most = max(1, min(MAX_PER_CLASS, MAX_THUMBNAILS // num_classes))
    if per_class > most:
        raise SettingError(
            "per_class",
            f"must be at most {most} for {num_classes} classes (a bigger grid is too large to "
            f"look at), got {per_class}",
        )


def pick_samples(labels: torch.Tensor, per_class: int, seed: int = 0) -> list[list[int]]:
    """For each class, up to ``per_class`` indices, chosen by a seeded permutation."""
    g = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=g)
    ordered = labels[order]
    num_classes = int(labels.max()) + 1 if len(labels) else 0
    return [order[ordered == c][:per_class].tolist() for c in range(num_classes)]


@plain_text  # class names are user data: drawn as written, never as mathtext or LaTeX
def sample_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    *,
    per_class: int = 8,
    seed: int = 0,
    title: str = "",
) -> Figure:
    """A grid of ``per_class`` sample images for every class (a matplotlib Figure, which a
    notebook shows inline).

    With up to 20 classes each class is a row labelled with its name; with more (CIFAR-100
    fine labels) the images flow in a grid of 10 columns, each titled with its class.
    """
    check_grid(per_class, seed, len(class_names))
    picks = pick_samples(labels, per_class, seed)
    picks += [[] for _ in range(len(class_names) - len(picks))]
    if len(class_names) <= _ROWS_PER_CLASS_LIMIT:
        rows, cols = len(class_names), per_class
        fig = new_figure(1.1 * cols + 1.6, 1.1 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False)
        for r, idx in enumerate(picks):
            for c in range(cols):
                ax = axes[r][c]
                ax.set_xticks([])
                ax.set_yticks([])
                for spine in ax.spines.values():
                    spine.set_visible(False)
                if c < len(idx):
                    ax.imshow(np.asarray(images[idx[c]]), interpolation="nearest")
            axes[r][0].set_ylabel(
                safe_text(class_names[r]), rotation=0, ha="right", va="center", fontsize=11
            )
    else:
        flat = [(i, c) for c, idx in enumerate(picks) for i in idx]
        cols = 10
        rows = max(1, -(-len(flat) // cols))
        fig = new_figure(1.45 * cols, 1.55 * rows + 0.6)
        axes = fig.subplots(rows, cols, squeeze=False)
        for k, ax in enumerate(axes.flat):
            ax.axis("off")
            if k < len(flat):
                i, c = flat[k]
                ax.imshow(np.asarray(images[i]), interpolation="nearest")
                ax.set_title(safe_text(class_names[c]).replace("_", " "), fontsize=8)
    if title:
        fig.suptitle(safe_text(title), fontsize=13)
    return fig


def save_sample_grid(
    images: torch.Tensor,
    labels: torch.Tensor,
    class_names: list[str],
    out: str | os.PathLike,
    *,
    per_class: int = 8,
    seed: int = 0,
    title: str = "",
) -> Path:
    """Write :func:`sample_grid` as a PNG file (atomically)."""
    fig = sample_grid(images, labels, class_names, per_class=per_class, seed=seed, title=title)
    return save_png(fig, out)
