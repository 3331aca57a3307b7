"""Evaluate a trained run on a split: metrics, tables, JSON, and the HTML report; a group of
runs (one per seed) evaluated run by run (``evaluate_group``)."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import torch

from cifarlab.data.dataset import CifarDataset, load_dataset
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.evaluate.calibration import NO_VAL, calibration_metrics, describe, fit_record
from cifarlab.evaluate.inference import TTA_LEVELS, predict_logits
from cifarlab.evaluate.metrics import compute_metrics
from cifarlab.report.compare import Side, group_members, read_side
from cifarlab.report.html import write_report
from cifarlab.runs import GroupFolder, RunFolder
from cifarlab.train import tensorboard as board
from cifarlab.trained import load_model, open_run, read_run  # noqa: F401 - public here too

# The report's key figures that TensorBoard shows beside the run's curves (report/html.py
# draws them): their file → their tag (SPLIT/TAG).
BOARD_FIGURES = {
    "confusion_matrix.png": "confusion_matrix",
    "reliability.png": "reliability",
    "predicted_vs_true.png": "predicted_vs_true",
}


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    *,
    checkpoint: str = "best",
    root: str | os.PathLike | None = None,
    device: str = "auto",
    tta: int | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` of a run on ``split``; writes ``eval_<split>.json``,
    ``predictions_<split>.npz`` and (``report=True``) ``report.html`` (``report_val.html``
    for val) into the run folder; a run trained with TensorBoard gets the split's scores and
    the report's key figures in its event files too
    (:func:`cifarlab.train.tensorboard.add_evaluation`).

    ``tta`` is the test-time augmentation level (default: the run's own ``tta`` setting); with
    TTA the accuracy without it is reported too, as ``accuracy_without_tta``.

    Calibration: ECE, MCE, Brier score and NLL of the probabilities before and after the run's
    temperature scaling are in ``metrics["calibration"]``. A run with a validation split but
    no temperature for these weights (from an older version, or resumed since) is fitted
    first, on its validation split (``calibration.json``)."""
    if split not in ("test", "val"):
        raise SettingError("split", f"must be test or val, got {split!r}")
    if tta is not None and tta not in TTA_LEVELS:
        raise SettingError("tta", f"must be one of {', '.join(map(str, TTA_LEVELS))}, got {tta}")
    run = open_run(run_dir, checkpoint, device, calibrated=False)
    folder = run.folder
    history = folder.read_metrics() if report else []  # checked before any work is done
    ds, part = run_split(run, split, root)
    tta = run.tta if tta is None else tta
    loader = run.loader(part.images, part.labels)
    logits, labels = predict_logits(run.model, loader, tta=tta, autocast=run.autocast)
    probs = torch.softmax(logits, 1).numpy()
    metrics = compute_metrics(labels.numpy(), probs, ds.class_names, split=split)
    metrics.update(checkpoint=checkpoint, checkpoint_epoch=run.checkpoint_epoch, tta=tta)
    metrics["calibration"] = _calibration(run, ds, logits, labels, tta)
    if tta:
        plain, _ = predict_logits(run.model, loader, tta=0, autocast=run.autocast)
        metrics["accuracy_without_tta"] = float((plain.argmax(1) == labels).float().mean())
    folder.write_eval(split, metrics)
    folder.write_predictions(split, labels.numpy(), probs)
    if report:
        metrics["report"] = str(
            write_report(folder.path, run.config, history, metrics, part.images.numpy(), probs)
        )
    figures = {tag: folder.figure_path(split, name) for name, tag in BOARD_FIGURES.items()}
    board.add_evaluation(folder, metrics, figures if report else None)
    return metrics


def evaluate_group(
    group_dir: str | os.PathLike,
    split: str = "test",
    *,
    checkpoint: str = "best",
    root: str | os.PathLike | None = None,
    device: str = "auto",
    tta: int | None = None,
    report: bool = True,
    each: Callable[[int, RunFolder, dict[str, Any]], None] | None = None,
) -> Side:
    """Evaluate every run of a group (``cifarlab train --seeds``) in turn, as
    :func:`evaluate_run` evaluates one (the same options), skipping none: ``each(seed, folder,
    metrics)`` is called after each. Every run is checked to be there before the first is
    evaluated; a run that cannot be evaluated stops the loop with its one-line error. Returns
    the group as a :class:`cifarlab.report.compare.Side` (read back from the evaluations just
    written): its summary is ``side_lines(side)``."""
    group = GroupFolder(group_dir)
    members = group_members(group)
    for seed, folder in members:
        metrics = evaluate_run(
            folder.path,
            split,
            checkpoint=checkpoint,
            root=root,
            device=device,
            tta=tta,
            report=report,
        )
        if each is not None:
            each(seed, folder, metrics)
    return read_side(group.path, split)


def run_split(
    run: Any, split: str, root: str | os.PathLike | None = None
) -> tuple[CifarDataset, Any]:
    """The dataset an opened run was trained on (``root``: another copy of it) and its
    ``split``; one-line errors if the classes disagree with the run's or the split is empty."""
    cfg, folder = run.cfg, run.folder
    ds: CifarDataset = load_dataset(
        cfg.dataset,
        root if root is not None else cfg.root,
        val_size=cfg.val_size,
        labels=cfg.labels,
    )
    if len(ds.class_names) != len(run.class_names):
        raise CifarlabError(
            f"{folder.config_path}: the run has {len(run.class_names)} classes but {cfg.dataset} "
            f"({cfg.labels} labels) has {len(ds.class_names)}: num_classes, class_names and the "
            "dataset must agree"
        )
    part = ds.split(split)
    if len(part) == 0:
        raise CifarlabError(
            f"{folder.path}: the {split} split is empty (the run was trained with val_size 0)"
        )
    return ds, part


def _calibration(
    run: Any, ds: CifarDataset, logits: torch.Tensor, labels: torch.Tensor, tta: int
) -> dict[str, Any]:
    """Calibration of these logits before and after the run's temperature (fitted now if the
    run has a validation split but no temperature for these weights)."""
    record = run.folder.read_calibration().get(run.checkpoint)
    if record is None or record["checkpoint_epoch"] != run.checkpoint_epoch:
        record = fit_opened(run, ds)
    z = logits.to(torch.float64)
    y = labels.numpy()
    out: dict[str, Any] = {
        "temperature": record["temperature"],
        "note": describe(record),
        "fitted_tta": record.get("tta"),
        "before": calibration_metrics(y, torch.softmax(z, 1).numpy()),
        "after": None,
    }
    if record["temperature"] is not None:
        out["after"] = calibration_metrics(y, torch.softmax(z / record["temperature"], 1).numpy())
        out["fit"] = {
            k: record[k] for k in ("images", "nll_before", "nll_after", "ece_before", "ece_after")
        }
    return out


# --------------------------------------------------------------------------- calibration


def calibrate_run(
    run_dir: str | os.PathLike,
    *,
    checkpoint: str = "best",
    root: str | os.PathLike | None = None,
    device: str = "auto",
    data: Any = None,
) -> dict[str, Any]:
    """Fit the temperature of a run's ``checkpoint`` on its validation split (with the run's
    own test-time augmentation, as ``predict`` runs it) and store it in ``calibration.json``.
    Returns the record; for a run without a validation split, a record with ``temperature``
    None and the ``reason``. ``data``: the run's dataset, if already loaded."""
    run = open_run(run_dir, checkpoint, device, calibrated=False)
    cfg = run.cfg
    if data is None and cfg.val_size:
        data = load_dataset(
            cfg.dataset,
            root if root is not None else cfg.root,
            val_size=cfg.val_size,
            labels=cfg.labels,
        )
    return fit_opened(run, data)


def fit_opened(run: Any, data: Any) -> dict[str, Any]:
    """:func:`calibrate_run` for a run already opened (:func:`cifarlab.trained.open_run`) and its
    dataset (None or an empty validation split: the record says it cannot be calibrated)."""
    if data is None or len(data.val) == 0:
        record: dict[str, Any] = {
            "temperature": None,
            "reason": NO_VAL,
            "checkpoint": run.checkpoint,
            "checkpoint_epoch": run.checkpoint_epoch,
        }
    else:
        loader = run.loader(data.val.images, data.val.labels)
        logits, labels = predict_logits(run.model, loader, tta=run.tta, autocast=run.autocast)
        record = fit_record(
            logits.to(torch.float64).numpy(),
            labels.numpy(),
            checkpoint=run.checkpoint,
            checkpoint_epoch=run.checkpoint_epoch,
            tta=run.tta,
        )
    run.folder.write_calibration(run.checkpoint, record)
    return record
