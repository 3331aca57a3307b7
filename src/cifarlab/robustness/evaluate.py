"""Robustness to common corruptions: a trained run evaluated on CIFAR-10-C-style corrupted
copies of its test split (Hendrycks & Dietterich, ICLR 2019: 15 corruptions × 5 severities).

The corrupted sets are made here (:mod:`cifarlab.data.corruptions`), not downloaded, and
cached: one ``.npy`` per corruption and severity under ``CACHE/corrupted/KEY/``, where KEY
fingerprints the clean images (a digest of their bytes), the corruptions' ``VERSION`` and the
seed. Each file is written and read by the data cache's helpers
(:func:`cifarlab.data.cache.write_array`: a temporary name, then a rename, so two processes may
fill the cache at once; :func:`~cifarlab.data.cache.read_array`: memory-mapped), so a later
run loads it instead of generating again. The whole test set takes about 2.3 GB there (as much
as the published CIFAR-10-C); delete the folder to free it.

Where the results go: the run folder's robustness record (``robustness.json`` and its figures,
:meth:`cifarlab.runs.RunFolder.write_robustness`) is written only by a run on the *whole test
split*, so that the report never shows a subset or the validation split as the run's
robustness. A run on a subset (``images=N``) or on val writes nothing unless ``out=`` names a
folder; the result always records ``split``, ``images`` and ``subset``. The figures are
:mod:`cifarlab.report.plots`'s, the report's section :mod:`cifarlab.report.html`'s.
"""

from __future__ import annotations

import difflib
import hashlib
import os
import re
import sys
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

from cifarlab.data.cache import cache_dir, read_array, write_array
from cifarlab.data.corruptions import (
    CORRUPTIONS,
    FAMILIES,
    FAMILY_ORDER,
    NOTES,
    SEVERITIES,
    VERSION,
    corrupt,
)
from cifarlab.errors import CifarlabError, SettingError, one_line
from cifarlab.evaluate.inference import TTA_LEVELS, predict_logits
from cifarlab.evaluate.run import run_split
from cifarlab.report import plots
from cifarlab.report.html import write_report
from cifarlab.runs import RunFolder
from cifarlab.train.recipe_data import describe_version, recorded_version
from cifarlab.trained import OpenRun, open_run

REFERENCE = (
    "CIFAR-10-C, Hendrycks & Dietterich, ICLR 2019; published mean corruption error with "
    "standard training (AugMix paper, Hendrycks et al., ICLR 2020, Table 1): WRN-40-2 26.9 %, "
    "ResNeXt-29 27.5 %, DenseNet 30.7 %; AugMix WRN-40-2 11.2 %"
)
EXAMPLE_IMAGES = 2  # images shown in the examples figure
_KEY = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


# --------------------------------------------------------------------------- parsing


def parse_corruptions(text: str) -> list[str]:
    """``all`` or a comma-separated list of corruption names → the names, in CIFAR-10-C's
    order, each once; an unknown name is a :class:`SettingError` naming it."""
    parts = [p.strip() for p in str(text).split(",")]
    if [p.lower() for p in parts] == ["all"]:
        return list(CORRUPTIONS)
    if not any(parts):
        raise SettingError("corruptions", f"must be all or names from {', '.join(CORRUPTIONS)}")
    for p in parts:
        if p not in CORRUPTIONS:
            close = difflib.get_close_matches(p, CORRUPTIONS, n=1)
            hint = f" (did you mean {close[0]}?)" if close else ""
            what = f"an unknown corruption {p!r}" if p else "an empty name"
            raise SettingError(
                "corruptions",
                f"names {what}{hint}: choose all, or names from {', '.join(CORRUPTIONS)}",
            )
    return [n for n in CORRUPTIONS if n in parts]


def parse_severities(text: str) -> list[int]:
    """``1-5``, ``1,3,5``, ``2`` (ranges and single levels, comma-separated) → the levels,
    sorted, each once; anything else, or a level outside 1..5, is a :class:`SettingError`."""
    lo, hi = min(SEVERITIES), max(SEVERITIES)
    out: set[int] = set()
    for part in str(text).split(","):
        m = re.fullmatch(r"\s*(\d{1,3})\s*(?:-\s*(\d{1,3})\s*)?", part)
        if not m:
            raise SettingError(
                "severities",
                f"must be levels {lo}..{hi} as 1-5, 1,3,5 or 2, got {one_line(text, 60)!r}",
            )
        a, b = int(m[1]), int(m[2] or m[1])
        if not (lo <= a <= hi and lo <= b <= hi) or a > b:
            raise SettingError(
                "severities", f"must be levels {lo}..{hi} (a range low-high), got {part.strip()!r}"
            )
        out.update(range(a, b + 1))
    return sorted(out)


def _names(corruptions: Any) -> list[str]:
    if corruptions is None:
        return list(CORRUPTIONS)
    if isinstance(corruptions, str):
        return parse_corruptions(corruptions)
    return parse_corruptions(",".join(map(str, corruptions)))


def _levels(severities: Any) -> list[int]:
    if severities is None:
        return list(SEVERITIES)
    if isinstance(severities, str):
        return parse_severities(severities)
    if isinstance(severities, int):
        severities = [severities]
    return parse_severities(",".join(map(str, severities)))


def _check_options(split: str, images: int | None, seed: int, tta: bool | int) -> None:
    """The options of :func:`run_robustness` that are not names or levels, checked before
    anything is loaded."""
    if split not in ("test", "val"):
        raise SettingError("split", f"must be test or val, got {split!r}")
    if images is not None and (isinstance(images, bool) or int(images) < 1):
        raise SettingError("images", f"must be at least 1, got {images}")
    if isinstance(seed, bool) or not 0 <= int(seed) < 2**63:
        raise SettingError("seed", f"must be a whole number 0 or more, got {seed}")
    if not isinstance(tta, bool) and tta not in TTA_LEVELS:
        raise SettingError("tta", f"must be one of {', '.join(map(str, TTA_LEVELS))}, got {tta}")


# --------------------------------------------------------------------------- the cache


def cache_key(images: np.ndarray, seed: int = 0) -> str:
    """The cache folder's name for corrupted copies of ``images``: a digest of their shape
    and bytes, the corruptions' VERSION and the seed."""
    arr = np.ascontiguousarray(images)
    h = hashlib.sha256(f"{arr.shape}|{arr.dtype}|".encode())
    h.update(memoryview(arr).cast("B"))
    return f"{h.hexdigest()[:20]}-v{VERSION}-seed{int(seed)}"


def cache_folder(key: str) -> Path:
    """Where the corrupted sets of cache key ``key`` live."""
    if not _KEY.match(key):
        raise CifarlabError(f"not a corrupted-set cache key: {key!r}")
    return cache_dir() / "corrupted" / key


def _save_cached(path: Path, arr: np.ndarray) -> None:
    """Cache a corrupted set (:func:`cifarlab.data.cache.write_array`); a failure only
    warns: the set was made, the evaluation goes on."""
    try:
        write_array(path, arr)
    except (CifarlabError, OSError) as e:
        warnings.warn(
            f"could not cache the corrupted set in {path.parent} ({one_line(e)})", stacklevel=3
        )


def _corrupted(
    images: np.ndarray, name: str, severity: int, seed: int, key: str
) -> tuple[np.ndarray, bool]:
    """The corrupted set and whether it was generated now (False: read from the cache)."""
    if name not in CORRUPTIONS:
        raise CifarlabError(f"unknown corruption {name!r}: choose from {', '.join(CORRUPTIONS)}")
    if severity not in SEVERITIES:
        raise CifarlabError(f"severity must be one of {SEVERITIES}, got {severity!r}")
    path = cache_folder(key) / f"{name}-{int(severity)}.npy"
    cached = read_array(path, images.shape, np.uint8)
    if cached is not None:
        return cached, False
    out = corrupt(np.asarray(images), name, int(severity), seed=seed)
    if not isinstance(out, np.ndarray) or out.shape != images.shape or out.dtype != np.uint8:
        got = f"{getattr(out, 'dtype', type(out).__name__)} {getattr(out, 'shape', '')}"
        raise CifarlabError(f"corruption {name} gave {got}, not uint8 {images.shape}")
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
    per: dict[str, Any] = {}
    for name, by_level in cells.items():
        per[name] = {
            "family": FAMILIES.get(name, "other"),
            "accuracy_by_severity": {str(s): by_level[s] for s in sorted(by_level)},
            "mean_accuracy": _mean(list(by_level.values())),
            "note": NOTES.get(name),
        }
    every = [a for by_level in cells.values() for a in by_level.values()]
    mean = _mean(every)
    families: dict[str, Any] = {}
    for fam in [*FAMILY_ORDER, *sorted({p["family"] for p in per.values()} - set(FAMILY_ORDER))]:
        members = [n for n, p in per.items() if p["family"] == fam]
        if members:
            fam_mean = _mean([per[n]["mean_accuracy"] for n in members])
            families[fam] = {"mean_accuracy": fam_mean, "corruptions": members}
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


@dataclass
class _CleanSet:
    """The images the corruptions are made from: the split (or its class-stratified subset),
    their labels, and how many images the whole split holds."""

    images: np.ndarray
    labels: torch.Tensor
    split_images: int
    subset: str | None


def _clean_set(run: OpenRun, split: str, root: Any, images: int | None) -> _CleanSet:
    """The run's ``split`` (``images``: a class-stratified subset of that many), checked to be
    of 32×32 RGB images."""
    _, part = run_split(run, split, root)
    if tuple(part.images.shape[1:]) != (32, 32, 3):
        h, w, ch = part.images.shape[1:]
        raise CifarlabError(
            f"{run.cfg.dataset}: the corruptions are made for 32×32 RGB images (CIFAR-10-C), the "
            f"{split} split's are {h}×{w}×{ch}"
        )
    all_labels = part.labels.numpy()
    if images is not None and int(images) < len(part):
        pick = _subset(all_labels, int(images))
        subset = f"class-stratified: the first images of each class, {len(pick):,} of {len(part):,}"
        return _CleanSet(
            part.images.numpy()[pick], torch.from_numpy(all_labels[pick]), len(part), subset
        )
    return _CleanSet(np.ascontiguousarray(part.images.numpy()), part.labels, len(part), None)


def _accuracy(run: OpenRun, x: np.ndarray, labels: torch.Tensor, level: int) -> float:
    """The run's accuracy on the images ``x`` at test-time augmentation ``level``."""
    loader = run.loader(torch.from_numpy(np.asarray(x)), labels)
    logits, y = predict_logits(run.model, loader, tta=level, autocast=run.autocast)
    return int((logits.argmax(1) == y).sum()) / len(y)


@dataclass
class _Sweep:
    """What evaluating the clean set and every (corruption, severity) cell gave."""

    clean_accuracy: float = 0.0
    cells: dict[str, dict[int, float]] = field(default_factory=dict)
    shown: dict[tuple[str, int], np.ndarray] = field(default_factory=dict)  # the examples
    timing: dict[str, Any] = field(default_factory=dict)
    generated: int = 0  # sets made now
    loaded: int = 0  # sets read from the cache


def _sweep(
    run: OpenRun,
    clean: _CleanSet,
    names: list[str],
    levels: list[int],
    *,
    level: int,
    seed: int,
    key: str,
    examples: list[int],
    progress: bool,
) -> _Sweep:
    """The accuracy on the clean set, then on each corruption at each severity (each set
    corrupted, or read from the cache, just before it is evaluated)."""
    done = _Sweep(cells={n: {} for n in names})
    done.timing = {n: {"generate_s": 0.0, "evaluate_s": 0.0} for n in names}
    bar = tqdm(
        total=1 + len(names) * len(levels),
        disable=not progress,
        desc="clean",
        unit="set",
        leave=False,
        dynamic_ncols=True,
        file=sys.stderr,
    )
    try:
        t = time.perf_counter()
        bar.set_postfix_str("evaluating")
        done.clean_accuracy = _accuracy(run, clean.images, clean.labels, level)
        done.timing["clean_evaluate_s"] = time.perf_counter() - t
        bar.update()
        for name in names:
            for s in levels:
                bar.set_description_str(f"{name} {s}")
                bar.set_postfix_str("corrupting")
                t = time.perf_counter()
                x, made = _corrupted(clean.images, name, s, seed, key)
                done.generated, done.loaded = done.generated + made, done.loaded + (not made)
                done.timing[name]["generate_s"] += time.perf_counter() - t
                bar.set_postfix_str("evaluating")
                t = time.perf_counter()
                done.cells[name][s] = _accuracy(run, x, clean.labels, level)
                done.timing[name]["evaluate_s"] += time.perf_counter() - t
                done.shown[name, s] = np.array(x[examples])
                del x
                bar.update()
    finally:
        bar.close()
    return done


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
    figure too. Every option is checked before anything is loaded."""
    names, levels = _names(corruptions), _levels(severities)
    _check_options(split, images, seed, tta)
    started = time.perf_counter()
    run = open_run(run_dir, checkpoint, device, calibrated=False)  # accuracy only
    level = (run.tta if tta else 0) if isinstance(tta, bool) else int(tta)
    clean = _clean_set(run, split, root, images)
    key = cache_key(clean.images, seed)
    ex = _example_picks(clean.labels.numpy())
    done = _sweep(
        run, clean, names, levels, level=level, seed=seed, key=key, examples=ex, progress=progress
    )
    done.timing["total_s"] = time.perf_counter() - started
    whole_test = split == "test" and clean.subset is None
    complete = (
        whole_test and level == 0 and names == list(CORRUPTIONS) and levels == list(SEVERITIES)
    )
    result: dict[str, Any] = {
        "run": run.folder.name,
        "split": split,
        "images": len(clean.images),
        "split_images": clean.split_images,
        "subset": clean.subset,
        "tta": level,
        "seed": int(seed),
        "checkpoint": checkpoint,
        "checkpoint_epoch": run.checkpoint_epoch,
        # what was measured: recipes change (train/recipe_data.py VERSIONS)
        "recipe": run.config.get("recipe"),
        "recipe_version": recorded_version(run.config),
        "trained_with": describe_version(run.config),
        "corruptions": names,
        "severities": levels,
        **summarize(done.clean_accuracy, done.cells, complete=complete),
        "timing": done.timing,
        "cache": {
            "folder": str(cache_folder(key)),
            "generated": done.generated,
            "loaded": done.loaded,
        },
        "corruptions_version": VERSION,
        "reference": REFERENCE,
    }
    result["written"] = _write(run, result, clean, done.shown, ex, out=out, examples=examples)
    return result


def _write(
    run: OpenRun,
    result: dict[str, Any],
    clean: _CleanSet,
    shown: dict[tuple[str, int], np.ndarray],
    ex: list[int],
    *,
    out: str | os.PathLike | None,
    examples: bool,
) -> list[str]:
    """Write the result where it belongs (the module's docstring says where) and, into the run
    folder, its report again; the paths written."""
    whole_test = result["split"] == "test" and clean.subset is None
    target = Path(out) if out is not None else (run.folder.path if whole_test else None)
    if target is None:
        return []
    titles = [run.class_names[int(clean.labels[i])] for i in ex]
    written = write_results(
        target, result, clean.images[ex], shown, examples=examples, labels=titles
    )
    if whole_test and target.resolve() == run.folder.path.resolve():
        report = _refresh_report(run.folder, run.config, clean.images)
        if report is not None:
            written.append(report)
    return written


def _refresh_report(folder: RunFolder, config: dict[str, Any], images: np.ndarray) -> str | None:
    """Write the run's test report again, now with its robustness section, when the run has
    been evaluated on test (its metrics and predictions are there); None otherwise."""
    try:
        metrics = folder.read_eval("test")
        labels, probs = folder.read_predictions("test")
        history = folder.read_metrics()
    except CifarlabError:
        return None  # not evaluated yet: `cifarlab evaluate` writes the report with the section
    if len(labels) != len(images):
        return None
    report = write_report(
        folder.path, config, history, metrics, np.asarray(images), probs, labels=labels
    )
    return str(report)


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
    where = RunFolder(folder)
    paths = [where.write_robustness({k: v for k, v in result.items() if k != "written"})]
    heatmap = plots.robustness_heatmap(result)
    paths.append(plots.save_png(heatmap, where.robustness_figure_path("heatmap")))
    if examples and example_images is not None and shown:
        fig = plots.corruption_examples(
            example_images, shown, result["corruptions"], result["severities"], labels=labels
        )
        paths.append(plots.save_png(fig, where.robustness_figure_path("examples")))
    return [str(p) for p in paths]
