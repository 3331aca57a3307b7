"""Robustness to common corruptions: a trained run evaluated on CIFAR-10-C-style corrupted
copies of its test split (Hendrycks & Dietterich, ICLR 2019: 15 corruptions × 5 severities).

The corrupted sets are made here (:mod:`cifarlab.robustness.corruptions`), not downloaded, and
cached: one ``.npy`` per corruption and severity under ``CACHE/corrupted/KEY/``, where KEY
fingerprints the clean images (a digest of their bytes), the corruptions' ``VERSION`` and the
seed. A file is written under a temporary name and renamed, so two processes may fill the cache
at once; a later run loads it (memory-mapped) instead of generating again. The whole test set
takes about 2.3 GB there (as much as the published CIFAR-10-C); delete the folder to free it.

Where the results go: the run folder's robustness record (``robustness.json`` and its figures,
:meth:`cifarlab.runs.RunFolder.robustness_path`) is written only by a run on the *whole test
split*, so that the report never shows a subset or the validation split as the run's
robustness. A run on a subset (``images=N``) or on val writes nothing unless ``out=`` names a
folder; the result always records ``split``, ``images`` and ``subset``.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import math
import os
import re
import stat
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab.data.cache import cache_dir
from cifarlab.errors import CifarlabError, SettingError, one_line
from cifarlab.files import atomic_write, read_input

HEADING = "Robustness to corruptions"
FAMILY_ORDER = ("noise", "blur", "weather", "digital")
REFERENCE = (
    "CIFAR-10-C, Hendrycks & Dietterich, ICLR 2019; published mean corruption error with "
    "standard training (AugMix paper, Hendrycks et al., ICLR 2020, Table 1): WRN-40-2 26.9 %, "
    "ResNeXt-29 27.5 %, DenseNet 30.7 %; AugMix WRN-40-2 11.2 %"
)
PUBLISHED_ERROR = {"WRN-40-2": 0.269, "ResNeXt-29": 0.275, "DenseNet": 0.307,
                   "AugMix WRN-40-2": 0.112}  # fmt: skip
SOURCES = ("Sources: Hendrycks & Dietterich, ICLR 2019 (CIFAR-10-C); Hendrycks et al., ICLR "
           "2020 (AugMix), Table 1.")  # fmt: skip
EXAMPLE_IMAGES = 2  # images shown in the examples figure
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def _corruptions() -> Any:
    """The corruptions module (imported on first use: it is only needed here)."""
    from cifarlab.robustness import corruptions

    return corruptions


# --------------------------------------------------------------------------- parsing


def parse_corruptions(text: str) -> list[str]:
    """``all`` or a comma-separated list of corruption names → the names, in CIFAR-10-C's
    order, each once; an unknown name is a :class:`SettingError` naming it."""
    names = _corruptions().CORRUPTIONS
    parts = [p.strip() for p in str(text).split(",")]
    if [p.lower() for p in parts] == ["all"]:
        return list(names)
    if not any(parts):
        raise SettingError("corruptions", f"must be all or names from {', '.join(names)}")
    for p in parts:
        if p not in names:
            close = difflib.get_close_matches(p, names, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            what = f"an unknown corruption {p!r}" if p else "an empty name"
            raise SettingError("corruptions", f"names {what}{hint}: choose all, or names from "
                               f"{', '.join(names)}")  # fmt: skip
    return [n for n in names if n in parts]


def parse_severities(text: str) -> list[int]:
    """``1-5``, ``1,3,5``, ``2`` (ranges and single levels, comma-separated) → the levels,
    sorted, each once; anything else, or a level outside 1..5, is a :class:`SettingError`."""
    levels = _corruptions().SEVERITIES
    lo, hi = min(levels), max(levels)
    out: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?", part)
        if not m:
            raise SettingError("severities", f"must be levels {lo}..{hi} as 1-5, 1,3,5 or 2, "
                               f"got {one_line(text, 60)!r}")  # fmt: skip
        a, b = int(m[1]), int(m[2] or m[1])
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise SettingError("severities", f"must be levels {lo}..{hi} (a range low-high), "
                               f"got {part.strip()!r}")  # fmt: skip
        out.update(range(a, b + 1))
    return sorted(out)


def _names(corruptions: Any) -> list[str]:
    if corruptions is None:
        return list(_corruptions().CORRUPTIONS)
    if isinstance(corruptions, str):
        return parse_corruptions(corruptions)
    return parse_corruptions(",".join(map(str, corruptions)))


def _levels(severities: Any) -> list[int]:
    if severities is None:
        return list(_corruptions().SEVERITIES)
    if isinstance(severities, str):
        return parse_severities(severities)
    if isinstance(severities, int):
        severities = [severities]
    return parse_severities(",".join(map(str, severities)))


# --------------------------------------------------------------------------- the cache


def cache_key(images: np.ndarray, seed: int = 0) -> str:
    """The cache folder's name for corrupted copies of ``images``: a digest of their shape
    and bytes, the corruptions' VERSION and the seed."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(memoryview(arr).cast("B"))
    return f"{h.hexdigest()[:20]}-v{_corruptions().VERSION}-seed{int(seed)}"


def cache_folder(key: str) -> Path:
    """Where the corrupted sets of cache key ``key`` live."""
    if not _KEY.match(key):
        raise CifarlabError(f"not a corrupted-set cache key: {key!r}")
    return cache_dir() / "corrupted" / key


def _load_cached(path: Path, shape: tuple[int, ...]) -> np.ndarray | None:
    """The cached array at ``path`` if it is a regular ``.npy`` of ``shape`` and uint8."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):  # never open a FIFO (it would block)
            return None
        arr = np.load(path, mmap_mode="c", allow_pickle=False)  # "c": writable, lazily read
    except (OSError, ValueError):
        return None
    if arr.shape != tuple(shape) or arr.dtype != np.uint8:
        return None
    return arr


def _save_cached(path: Path, arr: np.ndarray) -> None:
    """Write ``arr`` to ``path`` (temporary name, then rename); a failure only warns."""

    def write(tmp: Path) -> None:
        with open(tmp, "wb") as f:  # a file, not a name: np.save would append ".npy"
            np.save(f, arr, allow_pickle=False)

    try:
        atomic_write(path, write)
    except (CifarlabError, OSError) as e:
        warnings.warn(f"could not cache the corrupted set in {path.parent} ({one_line(e)})",
                      stacklevel=3)  # fmt: skip


def _corrupted(
    images: np.ndarray, name: str, severity: int, seed: int, key: str
) -> tuple[np.ndarray, bool]:
    """The corrupted set and whether it was generated now (False: read from the cache)."""
    c = _corruptions()
    if name not in c.CORRUPTIONS:
        raise CifarlabError(f"unknown corruption {name!r}: choose from {', '.join(c.CORRUPTIONS)}")
    if severity not in c.SEVERITIES:
        raise CifarlabError(f"severity must be one of {c.SEVERITIES}, got {severity!r}")
    path = cache_folder(key) / f"{name}-{int(severity)}.npy"
    cached = _load_cached(path, images.shape)
    if cached is not None:
        return cached, False
    out = c.corrupt(np.asarray(images), name, int(severity), seed=seed)
    if not isinstance(out, np.ndarray) or out.shape != images.shape or out.dtype != np.uint8:
        raise CifarlabError(f"corruption {name} gave {getattr(out, 'dtype', type(out).__name__)} "
                            f"{getattr(out, 'shape', '')}, not uint8 {images.shape}")  # fmt: skip
    _save_cached(path, out)
    return out, True


def corrupted_set(
    images: np.ndarray, name: str, severity: int, *, seed: int = 0, key: str | None = None
) -> np.ndarray:
    """``images`` (uint8 N×32×32×3) under corruption ``name`` at ``severity``: from the cache
    when it holds them (memory-mapped), else generated and cached. ``key`` is
    :func:`cache_key` of the images and seed (computed when None; pass it to save hashing the
    images for every set)."""
    key = cache_key(images, seed) if key is None else key
    return _corrupted(images, name, severity, seed, key)[0]


# --------------------------------------------------------------------------- evaluation


def _subset(labels: np.ndarray, n: int) -> np.ndarray:
    """Indices of ``n`` images, class-stratified: from each class its first images, as many as
    its share of the split (largest remainders), kept in the split's order."""
    classes, counts = np.unique(labels, return_counts=True)
    quota = counts * n / len(labels)
    take = np.floor(quota).astype(np.int64)
    extra = np.argsort(-(quota - take), kind="stable")[: n - int(take.sum())]
    take[extra] += 1
    picks = [np.flatnonzero(labels == c)[:k] for c, k in zip(classes, take, strict=True)]
    return np.sort(np.concatenate(picks))


def _example_picks(labels: np.ndarray, n: int = EXAMPLE_IMAGES) -> list[int]:
    """The first image, then the first of each class not yet shown, up to ``n``."""
    picks: list[int] = []
    for i, y in enumerate(labels.tolist()):
        if len(picks) == n:
            break
        if all(labels[j] != y for j in picks):
            picks.append(i)
    return picks


def _mean(values: list[float]) -> float:
    return float(sum(values) / len(values))


def summarize(
    clean: float,
    cells: dict[str, dict[int, float]],
    *,
    complete: bool,
) -> dict[str, Any]:
    """The headline numbers from the clean accuracy and the accuracy of each (corruption,
    severity) cell: means per corruption and family, the five worst, mean corruption error.
    ``complete``: every corruption and severity on the whole test split, without TTA (the
    published protocol), which makes ``comparable`` true."""
    c = _corruptions()
    notes = getattr(c, "NOTES", {}) or {}
    per: dict[str, Any] = {}
    for name, by_level in cells.items():
        per[name] = {
            "family": c.FAMILIES.get(name, "other"),
            "accuracy_by_severity": {str(s): by_level[s] for s in sorted(by_level)},
            "mean_accuracy": _mean(list(by_level.values())),
            "note": notes.get(name),
        }
    every = [a for by_level in cells.values() for a in by_level.values()]
    mean = _mean(every)
    families: dict[str, Any] = {}
    for fam in [*FAMILY_ORDER, *sorted({p["family"] for p in per.values()} - set(FAMILY_ORDER))]:
        members = [n for n, p in per.items() if p["family"] == fam]
        if members:
            families[fam] = {"mean_accuracy": _mean([per[n]["mean_accuracy"] for n in members]),
                             "corruptions": members}  # fmt: skip
    worst = sorted(per, key=lambda n: (per[n]["mean_accuracy"], n))[:5]
    return {
        "clean_accuracy": clean,
        "mean_corruption_accuracy": mean,
        "relative_drop": (clean - mean) / clean if clean > 0 else None,
        "mean_corruption_error": 1.0 - mean,
        "comparable": complete,
        "per_corruption": per,
        "per_family": families,
        "worst": worst,
    }


def run_robustness(
    run_dir: str | os.PathLike,
    *,
    corruptions: str | list[str] | None = None,
    severities: str | list[int] | None = None,
    tta: bool | int = False,
    split: str = "test",
    images: int | None = None,
    seed: int = 0,
    checkpoint: str = "best",
    root: str | os.PathLike | None = None,
    device: str = "auto",
    out: str | os.PathLike | None = None,
    progress: bool = True,
    examples: bool = True,
) -> dict[str, Any]:
    """Evaluate a run on corrupted copies of its ``split``: the clean set, then every
    (corruption, severity) cell. Returns the result dict (see the module's docstring for what
    is written where; the paths written are in its ``written`` list).

    ``corruptions``: None (all 15), ``"all"``, or names; ``severities``: None (1-5), text as
    ``"1,3,5"`` or levels. ``tta``: False (level 0, as the published numbers), True (the run's
    own level) or a level 0-2. ``images=N``: a class-stratified subset of N images (quick looks;
    not comparable with the published numbers). ``out``: a folder to write the results into
    (default: the run folder, for the whole test split only). ``examples``: draw the examples
    figure too."""
    import torch
    from tqdm import tqdm

    from cifarlab.evaluate.inference import TTA_LEVELS, eval_loader, predict_logits
    from cifarlab.evaluate.run import run_split
    from cifarlab.runs import open_run

    names, levels = _names(corruptions), _levels(severities)
    if split not in ("test", "val"):
        raise SettingError("split", f"must be test or val, got {split!r}")
    if images is not None and (isinstance(images, bool) or int(images) < 1):
        raise SettingError("images", f"must be at least 1, got {images}")
    if isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
        raise SettingError("seed", f"must be a whole number 0 or more, got {seed}")
    if not isinstance(tta, bool) and tta not in TTA_LEVELS:
        raise SettingError("tta", f"must be one of {', '.join(map(str, TTA_LEVELS))}, got {tta}")
    started = time.perf_counter()
    run = open_run(run_dir, checkpoint, device, calibrated=False)  # accuracy only
    cfg, folder = run.cfg, run.folder
    level = (run.tta if tta else 0) if isinstance(tta, bool) else int(tta)
    _, part = run_split(run, split, root)
    if tuple(part.images.shape[1:]) != (32, 32, 3):
        h, w, ch = part.images.shape[1:]
        raise CifarlabError(f"{cfg.dataset}: the corruptions are made for 32×32 RGB images "
                            f"(CIFAR-10-C), the {split} split's are {h}×{w}×{ch}")  # fmt: skip
    all_labels = part.labels.numpy()
    subset = None
    if images is not None and int(images) < len(part):
        pick = _subset(all_labels, int(images))
        clean = part.images.numpy()[pick]
        labels = torch.from_numpy(all_labels[pick])
        subset = f"class-stratified: the first images of each class, {len(pick):,} of {len(part):,}"
    else:
        clean = np.ascontiguousarray(part.images.numpy())
        labels = part.labels
    key = cache_key(clean, seed)

    def accuracy(x: np.ndarray) -> float:
        loader = eval_loader(torch.from_numpy(np.asarray(x)), labels,
                             batch_size=cfg.eval_batch_size, device=run.device, mean=run.mean,
                             std=run.std, channels_last=cfg.channels_last)  # fmt: skip
        logits, y = predict_logits(run.model, loader, tta=level, autocast=run.autocast)
        return int((logits.argmax(1) == y).sum()) / len(y)

    ex = _example_picks(labels.numpy())
    shown: dict[tuple[str, int], np.ndarray] = {}
    cells: dict[str, dict[int, float]] = {n: {} for n in names}
    timing: dict[str, Any] = {n: {"generate_s": 0.0, "evaluate_s": 0.0} for n in names}
    generated = loaded = 0
    bar = tqdm(total=1 + len(names) * len(levels), disable=not progress, desc="clean",
               unit="set", leave=False, dynamic_ncols=True, file=sys.stderr)  # fmt: skip
    try:
        t = time.perf_counter()
        bar.set_postfix_str("evaluating")
        clean_acc = accuracy(clean)
        timing["clean_evaluate_s"] = time.perf_counter() - t
        bar.update()
        for name in names:
            for s in levels:
                bar.set_description_str(f"{name} {s}")
                bar.set_postfix_str("corrupting")
                t = time.perf_counter()
                x, made = _corrupted(clean, name, s, seed, key)
                generated, loaded = generated + made, loaded + (not made)
                timing[name]["generate_s"] += time.perf_counter() - t
                bar.set_postfix_str("evaluating")
                t = time.perf_counter()
                cells[name][s] = accuracy(x)
                timing[name]["evaluate_s"] += time.perf_counter() - t
                shown[name, s] = np.array(x[ex])
                del x
                bar.update()
    finally:
        bar.close()
    timing["total_s"] = time.perf_counter() - started
    whole_test = split == "test" and subset is None
    complete = (whole_test and level == 0 and names == list(_corruptions().CORRUPTIONS)
                and levels == list(_corruptions().SEVERITIES))  # fmt: skip
    result: dict[str, Any] = {
        "run": folder.name,
        "split": split,
        "images": len(clean),
        "split_images": len(part),
        "subset": subset,
        "tta": level,
        "seed": int(seed),
        "checkpoint": checkpoint,
        "checkpoint_epoch": run.checkpoint_epoch,
        "corruptions": names,
        "severities": levels,
        **summarize(clean_acc, cells, complete=complete),
        "timing": timing,
        "cache": {"folder": str(cache_folder(key)), "generated": generated, "loaded": loaded},
        "corruptions_version": _corruptions().VERSION,
        "reference": REFERENCE,
    }
    target = Path(out) if out is not None else (folder.path if whole_test else None)
    result["written"] = []
    if target is not None:
        titles = [run.class_names[int(labels[i])] for i in ex]
        result["written"] = write_results(target, result, clean[ex], shown, examples=examples,
                                          labels=titles)  # fmt: skip
        if whole_test and target.resolve() == folder.path.resolve():
            report = _refresh_report(folder, run.config, clean)
            if report is not None:
                result["written"].append(report)
    return result


def _refresh_report(folder: Any, config: dict[str, Any], images: np.ndarray) -> str | None:
    """Write the run's test report again, now with its robustness section, when the run has
    been evaluated on test (its metrics and predictions are there); None otherwise."""
    from cifarlab.report.html import write_report

    try:
        metrics = folder.read_eval("test")
        labels, probs = folder.read_predictions("test")
        history = folder.read_metrics()
    except CifarlabError:
        return None  # not evaluated yet: `cifarlab evaluate` writes the report with the section
    if len(labels) != len(images):
        return None
    return str(write_report(folder.path, config, history, metrics, np.asarray(images), probs,
                            labels=labels))  # fmt: skip


# --------------------------------------------------------------------------- writing


def write_results(
    folder: str | os.PathLike,
    result: dict[str, Any],
    example_images: np.ndarray | None = None,
    shown: dict[tuple[str, int], np.ndarray] | None = None,
    *,
    examples: bool = True,
    labels: list[str] | None = None,
) -> list[str]:
    """Write the result's JSON and heat-map (and, given the example images, the examples
    figure) into ``folder`` under the run folder's names; returns the paths written."""
    from cifarlab.report import plots
    from cifarlab.runs import RunFolder

    where = RunFolder(folder)
    data = {k: v for k, v in result.items() if k != "written"}
    text = json.dumps(data, indent=1, allow_nan=False) + "\n"
    paths = [atomic_write(where.robustness_path, lambda tmp: tmp.write_text(text))]
    paths.append(plots.save_png(heatmap_figure(result), where.robustness_figure_path("heatmap")))
    if examples and example_images is not None and shown:
        fig = examples_figure(example_images, shown, result["corruptions"], result["severities"],
                              labels=labels)  # fmt: skip
        paths.append(plots.save_png(fig, where.robustness_figure_path("examples")))
    return [str(p) for p in paths]


def grouped(result: dict[str, Any]) -> list[str]:
    """The evaluated corruptions grouped by family (CIFAR-10-C's order within each)."""
    per = result["per_corruption"]
    rank = {f: i for i, f in enumerate(FAMILY_ORDER)}
    return sorted(per, key=lambda n: (rank.get(per[n]["family"], len(rank)),
                                      result["corruptions"].index(n)))  # fmt: skip


def published_text() -> str:
    """The published mean corruption errors, in words."""
    standard = ", ".join(f"{k} {v:.1%}" for k, v in PUBLISHED_ERROR.items() if "AugMix" not in k)
    return (f"Published on CIFAR-10-C with standard training: {standard}; with AugMix, WRN-40-2 "
            f"{PUBLISHED_ERROR['AugMix WRN-40-2']:.1%}")  # fmt: skip


def headline(result: dict[str, Any]) -> str:
    """One line: clean accuracy, mean accuracy under corruption, relative drop."""
    drop = result.get("relative_drop")
    drop_text = f"{drop:.1%}" if isinstance(drop, (int, float)) else "–"
    return (f"clean {result['clean_accuracy']:.1%}, mean under corruption "
            f"{result['mean_corruption_accuracy']:.1%}, relative drop {drop_text}")  # fmt: skip


def scope(result: dict[str, Any]) -> str:
    """What was evaluated, in words: split, images, TTA."""
    n = result["images"]
    what = (f"{n:,} of {result['split_images']:,} {result['split']} images (a subset)"
            if result.get("subset") else f"{n:,} {result['split']} images")  # fmt: skip
    tta = f", test-time augmentation level {result['tta']}" if result.get("tta") else ""
    return what + tta


def _pretty(name: str) -> str:
    return str(name).replace("_", " ")


def heatmap_figure(result: dict[str, Any]) -> Any:
    """Accuracy (%) per corruption (rows, grouped by family) and severity (columns), with
    each corruption's mean; the clean accuracy marked on the colour bar."""
    from matplotlib.colors import Normalize

    from cifarlab.report import plots

    @plots.plain_text
    def build() -> Any:
        names = grouped(result)
        levels = [int(s) for s in result["severities"]]
        per = result["per_corruption"]
        acc = np.array([[per[n]["accuracy_by_severity"][str(s)] for s in levels]
                        + [per[n]["mean_accuracy"]] for n in names]) * 100  # fmt: skip
        clean = 100 * result["clean_accuracy"]
        lo = math.floor(min(acc.min(), clean) / 10) * 10
        hi = max(min(math.ceil((max(acc.max(), clean) + 2) / 10) * 10, 100), lo + 10)
        norm = Normalize(lo, hi)
        width = max(9.0, 2.6 + 0.85 * (len(levels) + 1) + 1.6)  # the title's two lines fit
        fig = plots.new_figure(width, max(3.6, 1.6 + 0.42 * len(names)))
        ax = fig.subplots()
        im = ax.imshow(acc, cmap="viridis", norm=norm, aspect="auto", interpolation="nearest")
        for (i, j), v in np.ndenumerate(acc):
            colour = "white" if norm(v) < 0.6 else "black"
            ax.text(j, i, f"{v:.1f}", ha="center", va="center", fontsize=9, color=colour,
                    fontweight="bold" if j == len(levels) else "normal")  # fmt: skip
        ax.set_xticks(range(len(levels) + 1), [*map(str, levels), "mean"])
        ax.xaxis.tick_top()
        ax.xaxis.set_label_position("top")
        ax.set_xlabel("severity")
        ax.set_yticks(range(len(names)), [_pretty(n) for n in names])
        ax.tick_params(length=0)
        ax.axvline(len(levels) - 0.5, color="white", linewidth=3)
        families = [per[n]["family"] for n in names]
        starts = [i for i in range(len(names)) if i == 0 or families[i] != families[i - 1]]
        for i in starts[1:]:
            ax.axhline(i - 0.5, color="white", linewidth=3)
        ends = [*starts[1:], len(names)]
        fam_axis = ax.secondary_yaxis("right")
        fam_axis.set_yticks([(a + b - 1) / 2 for a, b in zip(starts, ends, strict=True)],
                            [plots.safe_text(families[a]) for a in starts])  # fmt: skip
        fam_axis.tick_params(length=0, labelsize=10)
        for label in fam_axis.get_yticklabels():
            label.set_fontweight("bold")
            label.set_color("#444444")
        for spine in (*ax.spines.values(), *fam_axis.spines.values()):
            spine.set_visible(False)
        cbar = fig.colorbar(im, ax=ax, shrink=0.9, pad=0.02)
        cbar.set_label("accuracy (%)")
        cbar.ax.axhline(clean, color="#c62828", linewidth=2.5)
        title = plots.safe_text(result.get("run") or "run")
        fig.suptitle(f"{title}: accuracy under corruption, {scope(result)}\n{headline(result)}"
                     " (red line on the scale: clean)", fontsize=11)  # fmt: skip
        return fig

    return build()


def examples_figure(
    images: np.ndarray,
    shown: dict[tuple[str, int], np.ndarray],
    names: list[str],
    levels: list[int],
    *,
    labels: list[str] | None = None,
) -> Any:
    """For each example image, a row per corruption: the clean image, then each severity
    (32×32 pixels drawn as blocks, nearest neighbour)."""
    from cifarlab.report import plots

    @plots.plain_text
    def build() -> Any:
        n_ex, cols = len(images), 1 + len(levels)
        cell = 0.82
        fig = plots.new_figure(max(7.5, 1.6 + n_ex * cols * cell + (n_ex - 1) * 0.3),
                               0.9 + len(names) * cell)  # fmt: skip
        widths = []
        for e in range(n_ex):
            widths += [1.0] * cols + ([0.35] if e < n_ex - 1 else [])
        grid = fig.add_gridspec(len(names), len(widths), width_ratios=widths, wspace=0.04,
                                hspace=0.04)  # fmt: skip
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
                            head = f"{plots.safe_text(labels[e])}\n{head}"
                        ax.set_title(head, fontsize=8)
                    if e == 0 and k == 0:
                        ax.set_ylabel(_pretty(name), rotation=0, ha="right", va="center",
                                      fontsize=9)  # fmt: skip
        fig.suptitle(f"The same {n_ex} images under each corruption: clean, then severities "
                     f"{', '.join(map(str, levels))}", fontsize=11)  # fmt: skip
        return fig

    return build()


# --------------------------------------------------------------------------- the report


def read_result(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The run folder's robustness record, or None if it has none; a file that is not one
    cifarlab wrote is a one-line :class:`CifarlabError`."""
    from cifarlab.limits import MAX_JSON_FILE, megabytes
    from cifarlab.runs import RunFolder

    path = RunFolder(run_dir).robustness_path
    if not os.path.lexists(path):
        return None
    data = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
    try:
        r = json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise CifarlabError(f"{path}: not valid JSON ({one_line(e)})") from None
    problem = _result_problem(r)
    if problem:
        raise CifarlabError(f"{path}: not a robustness record written by cifarlab ({problem})")
    return r


def _fraction(x: Any) -> bool:
    ok = isinstance(x, (int, float)) and not isinstance(x, bool)
    return ok and math.isfinite(x) and 0 <= x <= 1


def _result_problem(r: Any) -> str | None:
    """What is wrong with a robustness record read back, or None."""
    if not isinstance(r, dict):
        return "not a JSON object"
    for k in ("clean_accuracy", "mean_corruption_accuracy", "mean_corruption_error"):
        if not _fraction(r.get(k)):
            return f"{k} is not a fraction"
    if not isinstance(r.get("split"), str):
        return "split is not text"
    for key in ("images", "split_images", "tta"):
        if not isinstance(r.get(key), int) or isinstance(r[key], bool) or r[key] < 0:
            return f"{key} is not a count"
    if r.get("subset") is not None and not isinstance(r["subset"], str):
        return "subset is not text"
    levels, per = r.get("severities"), r.get("per_corruption")
    if not isinstance(levels, list) or not levels or not all(isinstance(s, int) for s in levels):
        return "severities is not a list of levels"
    if not isinstance(per, dict) or not per:
        return "per_corruption missing"
    for key in ("corruptions", "worst"):
        if not isinstance(r.get(key), list) or not all(isinstance(n, str) for n in r[key]):
            return f"{key} is not a list of names"
    if set(r["corruptions"]) != set(per):
        return "corruptions and per_corruption differ"
    for name, p in per.items():
        by = p.get("accuracy_by_severity") if isinstance(p, dict) else None
        if not isinstance(by, dict) or not all(_fraction(by.get(str(s))) for s in levels):
            return f"per_corruption.{name} lacks an accuracy per severity"
        if not _fraction(p.get("mean_accuracy")) or not isinstance(p.get("family"), str):
            return f"per_corruption.{name} lacks its mean accuracy or family"
        if p.get("note") is not None and not isinstance(p["note"], str):
            return f"per_corruption.{name}.note is not text"
    if not all(w in per for w in r["worst"]):
        return "worst names a corruption not evaluated"
    return None


def _png(path: Path) -> bytes | None:
    """A figure of the run folder, if it is there and a PNG."""
    from cifarlab.limits import MAX_RUN_FILE, megabytes

    if not os.path.lexists(path):
        return None
    try:
        data = read_input(path, megabytes(MAX_RUN_FILE))
    except CifarlabError:
        return None
    return data if data.startswith(b"\x89PNG\r\n\x1a\n") and len(data) > 24 else None


def report_section_html(run_dir: str | os.PathLike) -> str | None:
    """The report's robustness section (a ``<section id="robustness">``): headline numbers,
    the five worst corruptions, the family means, the figures, where our corruptions differ,
    and the published numbers; None if the run has no robustness record. A record that cannot
    be read gives a section saying so (the rest of the report is still written)."""
    from cifarlab.report.html import _cards, _esc, _img, _pct, _section
    from cifarlab.runs import RunFolder

    try:
        r = read_result(run_dir)
    except CifarlabError as e:
        return _section("robustness", HEADING, f'<p class="note">{_esc(one_line(e))}; run '
                        "cifarlab robustness again</p>")  # fmt: skip
    if r is None:
        return None
    folder = RunFolder(run_dir)
    per, levels = r["per_corruption"], r["severities"]
    drop = r.get("relative_drop")
    cards = _cards([
        ("clean accuracy", _pct(r["clean_accuracy"])),
        ("mean accuracy under corruption", _pct(r["mean_corruption_accuracy"])),
        ("relative drop", _pct(drop)),
        ("mean corruption error", _pct(r["mean_corruption_error"])),
    ])  # fmt: skip
    epoch = r.get("checkpoint_epoch")
    sub = (f'<p class="sub">{_esc(scope(r))}; {len(per)} corruptions × {len(levels)} '
           f"severities ({_esc(', '.join(map(str, levels)))}); {_esc(r.get('checkpoint', '?'))} "
           f"checkpoint{f' (epoch {_esc(epoch)})' if epoch is not None else ''}; corrupted with "
           f"seed {_esc(r.get('seed', '?'))}, corruptions version "
           f"{_esc(r.get('corruptions_version', '?'))}</p>")  # fmt: skip
    if r.get("comparable"):
        compare = ("Every corruption and severity on the whole test set, without test-time "
                   "augmentation: the published protocol (our corruptions differ where noted "
                   "below).")  # fmt: skip
    else:
        compare = ("Not the published protocol (all 15 corruptions × 5 severities on the whole "
                   "test set, no test-time augmentation): compare with care.")  # fmt: skip
    reference = (f"<p>Mean corruption error here: <b>{_pct(r['mean_corruption_error'])}</b>. "
                 f"{_esc(published_text())}. {_esc(compare)}</p>"
                 f'<p class="note">{_esc(SOURCES)}</p>')  # fmt: skip
    head = "".join(f"<th>{_esc(s)}</th>" for s in levels)
    rows = "".join(
        f"<tr><td>{_esc(_pretty(n))}</td><td>{_esc(per[n]['family'])}</td>"
        f"<td>{_pct(per[n]['mean_accuracy'])}</td>"
        + "".join(f"<td>{_pct(per[n]['accuracy_by_severity'][str(s)])}</td>" for s in levels)
        + "</tr>"
        for n in r["worst"]
    )
    worst = (f"<h3>The {len(r['worst'])} worst corruptions</h3><table><thead><tr><th>corruption"
             f"</th><th>family</th><th>mean</th>{head}</tr></thead><tbody>{rows}</tbody>"
             "</table>")  # fmt: skip
    fams = r.get("per_family") if isinstance(r.get("per_family"), dict) else {}
    left = ' style="text-align: left"'
    fam_rows = "".join(
        f"<tr><td>{_esc(f)}</td><td>{_pct(v.get('mean_accuracy'))}</td><td{left}>"
        f"{_esc(', '.join(_pretty(n) for n in v['corruptions']))}</td></tr>"
        for f, v in fams.items()
        if isinstance(v, dict) and isinstance(v.get("corruptions"), list)
    )
    families = (f"<h3>By family</h3><table><thead><tr><th>family</th><th>mean accuracy</th>"
                f"<th{left}>corruptions</th></tr></thead><tbody>{fam_rows}</tbody></table>"
                if fam_rows else "")  # fmt: skip
    figures = ""
    for what, alt in (("heatmap", "accuracy per corruption and severity"),
                      ("examples", "example images under each corruption")):  # fmt: skip
        png = _png(folder.robustness_figure_path(what))
        if png is not None:
            figures += _img(png, alt)
    notes = [(n, per[n]["note"]) for n in r["corruptions"] if per[n].get("note")]
    notes_html = ""
    if notes:
        items = "".join(f"<li><b>{_esc(_pretty(n))}</b>: {_esc(t)}</li>" for n, t in notes)
        notes_html = f"<h3>Where these corruptions differ from CIFAR-10-C</h3><ul>{items}</ul>"
    body = "\n".join([sub, cards, reference, worst, families, figures, notes_html])
    return _section("robustness", HEADING, body)
