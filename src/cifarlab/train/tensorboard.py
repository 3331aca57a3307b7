"""TensorBoard: every run writes event files into its own folder, so that
``tensorboard --logdir runs`` shows every run by its folder's name, and every seed of a group
(``runs/GROUP/seed-K/``) as ``GROUP/seed-K``.

The writer is PyTorch's own, :class:`torch.utils.tensorboard.SummaryWriter`: it needs only the
``tensorboard`` package, which whoever looks at the curves installs anyway
(``pip install 'cifarlab[tensorboard]'``) — no TensorFlow (``tf.summary``), no third writer
(tensorboardX would be one more dependency doing the same). Its records go to the file from a
background thread; a step costs about 0.1 ms here (two scalars), against 50–300 ms for a
training step on a CPU.

What is written (the x axis in brackets):

- every step (the run's step, from 1): ``step/loss`` (the step's mean loss), ``step/lr``;
- every epoch (the epoch number of ``metrics.jsonl``'s rows, so a series read back equals that
  file's column): ``epoch/train_loss``, ``epoch/train_acc``, ``epoch/val_loss``,
  ``epoch/val_acc``, ``epoch/images_per_s``;
- at the end of a finished run: the HParams dashboard's record — every setting of the resolved
  configuration (numbers and text as they are, true/false as text, lists and dicts as JSON;
  unset ones left out) with the metrics ``hparams/best_val_acc``, ``hparams/last_val_acc``,
  ``hparams/train_seconds`` (and ``hparams/test_acc`` once evaluated), written into the run's
  own folder (``SummaryWriter.add_hparams`` would make a timestamped sub-run of it);
- after ``cifarlab evaluate`` (:func:`add_evaluation`; only into a run that has event files):
  ``SPLIT/accuracy``, ``SPLIT/top5_accuracy``, ``SPLIT/log_loss``, ``SPLIT/macro_f1``,
  ``SPLIT/ece`` (and ``SPLIT/ece_calibrated``: after the run's temperature) and the report's
  key figures as images (``SPLIT/confusion_matrix``, ``SPLIT/reliability``,
  ``SPLIT/predicted_vs_true``), at the epoch of the evaluated checkpoint.

A resumed run does not repeat steps: each session's writer starts with a ``purge_step`` (the
first step it trains), and TensorBoard drops what an earlier session wrote from that step on
(steps after the checkpoint it resumed from) — both TensorBoard's loaders, the data server and
its Python fallback, since every session writes its start. A new run removes the event files
of an attempt that stopped before its first checkpoint. Evaluating a run again adds its points
again, at the same step.

On by default when ``tensorboard`` is installed; off with ``train(..., tensorboard=False)``,
``cifarlab train --no-tensorboard`` or ``CIFARLAB_TENSORBOARD=0``. Without the package nothing
is written and nothing is said.
"""

from __future__ import annotations

import functools
import importlib.util
import json
import os
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.errors import SettingError, one_line
from cifarlab.runs import RunFolder
from cifarlab.train.engine import Trainer, Watcher

READ_EVERY = 32  # steps whose losses are read from the device together
ENV = "CIFARLAB_TENSORBOARD"  # 0 (or false, no, off): write no event files
INSTALL = "pip install 'cifarlab[tensorboard]'"
# metrics.jsonl's columns logged per epoch, as epoch/NAME
EPOCH_KEYS = ("train_loss", "train_acc", "val_loss", "val_acc", "images_per_s")
# The HParams dashboard's metrics: the last value of each of these scalar series in a run.
METRICS = (
    "hparams/best_val_acc",
    "hparams/last_val_acc",
    "hparams/train_seconds",
    "hparams/test_acc",
)
# An evaluation's scalars, SPLIT/NAME
EVAL_KEYS = ("accuracy", "top5_accuracy", "accuracy_without_tta", "log_loss")
FLUSH_SECS = 10  # the background thread writes what is queued at least this often
MAX_QUEUE = 1000  # events queued before an add waits for the writer thread


@functools.cache
def available() -> bool:
    """Whether the ``tensorboard`` package is installed: found, not imported (0.1–0.2 s: a
    run imports it as it builds its watcher, after its settings and folder are checked)."""
    return importlib.util.find_spec("tensorboard") is not None


def switched_off() -> bool:
    """``CIFARLAB_TENSORBOARD=0`` (or false, no, off)."""
    return os.environ.get(ENV, "").strip().lower() in ("0", "false", "no", "off")


def wanted(tensorboard: bool | None = None) -> bool:
    """Whether a run writes event files: ``tensorboard`` as :func:`~cifarlab.train.train`
    takes it (None: unless ``CIFARLAB_TENSORBOARD=0``, when the package is installed; True:
    the package must be there)."""
    if tensorboard is False:
        return False
    if tensorboard is None:
        return not switched_off() and available()
    if not available():
        raise SettingError("tensorboard", f"needs the tensorboard package: {INSTALL}")
    return True


def describe() -> str:
    """One line for ``cifarlab doctor``: whether runs write event files here, and if not why."""
    if not available():
        return f"TensorBoard: not installed, runs write no event files ({INSTALL} for them)"
    if switched_off():
        return f"TensorBoard: off ({ENV}={os.environ.get(ENV)})"
    return "TensorBoard: every run writes event files into its folder (tensorboard --logdir runs)"


@functools.cache
def _writer_class() -> Any:
    """PyTorch's ``SummaryWriter`` (imported once per process: 0.1–0.2 s), or None where the
    installed package does not import (said once)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except Exception as e:  # an installation that is there but broken
        print(f"TensorBoard: no event files written (it does not import: {one_line(e)})",
              file=sys.stderr, flush=True)  # fmt: skip
        return None
    return SummaryWriter


def _writer(folder: RunFolder, purge_step: int | None = None) -> Any:
    """A writer into ``folder`` (a file of its own), or None (see :func:`_writer_class`)."""
    writer_class = _writer_class()
    if writer_class is None:
        return None
    return writer_class(
        str(folder.path), purge_step=purge_step, max_queue=MAX_QUEUE, flush_secs=FLUSH_SECS
    )


class TensorBoardWatcher(Watcher):
    """Writes a run's curves into TensorBoard event files in its folder, as it trains (rank 0:
    :class:`~cifarlab.train.engine.Watcher`). Made, it imports the writer (not in the timed
    loop); the file opens at the first step (a run that fails before it writes nothing), with
    the step it starts from as ``purge_step``."""

    def __init__(self) -> None:
        self.writer: Any = None
        self.opened = False
        self.pending: list[tuple[int, torch.Tensor, float]] = []  # steps not yet written
        _writer_class()

    def _open(self, trainer: Trainer, first_step: int) -> Any:
        if not self.opened:
            self.opened = True
            if first_step == 1:  # a new run: an attempt that stopped before a checkpoint is gone
                for path in trainer.folder.event_files():
                    path.unlink(missing_ok=True)
            self.writer = _writer(trainer.folder, purge_step=first_step)
        return self.writer

    def step(self, trainer: Trainer, step: int, loss: torch.Tensor, lr: float) -> None:
        writer = self._open(trainer, step)
        if writer is not None:
            self.pending.append((step, loss, lr))
            if len(self.pending) >= READ_EVERY:
                self._write_steps()

    def _write_steps(self) -> None:
        """The steps kept since the last write: their losses read from the device at once (one
        wait for a GPU per :data:`READ_EVERY` steps, not one per step)."""
        if not self.pending:
            return
        losses = torch.stack([loss.float() for _, loss, _ in self.pending]).tolist()
        for (step, _, lr), loss in zip(self.pending, losses, strict=True):
            self.writer.add_scalar("step/loss", loss, step)
            self.writer.add_scalar("step/lr", lr, step)
        self.pending.clear()

    def epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        writer = self._open(trainer, trainer.global_step + 1)
        if writer is None:
            return
        self._write_steps()
        for key in EPOCH_KEYS:
            if row.get(key) is not None:
                writer.add_scalar(f"epoch/{key}", row[key], row["epoch"])
        writer.flush()  # an epoch's points are on disk when its line is printed

    def close(self, trainer: Trainer, finished: bool) -> None:
        """Write the HParams record of a finished run (one that trained in this session) and
        close the file."""
        if self.writer is None:
            return
        try:
            self._write_steps()
            if finished:
                last = (trainer.last_row or {}).get("val_acc")
                values = {"hparams/best_val_acc": trainer.best_val, "hparams/last_val_acc": last,
                          "hparams/train_seconds": trainer.elapsed}  # fmt: skip
                write_hparams(self.writer, trainer.cfg.to_dict(), values, trainer.global_step)
        finally:
            self.writer.close()
            self.writer = None


def hparam_values(settings: Mapping[str, Any]) -> dict[str, float | str]:
    """A configuration as the HParams dashboard takes it: numbers and text as they are,
    true/false as text, lists and dicts as JSON text; unset (None) settings left out."""
    out: dict[str, float | str] = {}
    for key, value in settings.items():
        if value is None:
            continue
        if isinstance(value, bool):
            out[key] = str(value).lower()
        elif isinstance(value, (int, float, str)):
            out[key] = value
        else:
            out[key] = json.dumps(value, sort_keys=True, default=str)
    return out


def write_hparams(
    writer: Any, settings: Mapping[str, Any], metrics: Mapping[str, float | None], step: int
) -> None:
    """The HParams record into ``writer``'s own folder (not a sub-run, as ``add_hparams``
    makes): the settings, the names of :data:`METRICS`, and the values of ``metrics`` given
    (None: not known, left out) as scalars at ``step``."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(hparam_values(settings), dict.fromkeys(METRICS, 0.0))
    for summary in (experiment, start, end):
        writer.file_writer.add_summary(summary)  # as add_hparams does, into this folder
    for tag, value in metrics.items():
        if value is not None and np.isfinite(value):
            writer.add_scalar(tag, value, step)


def add_evaluation(
    folder: RunFolder, metrics: Mapping[str, Any], figures: Mapping[str, Path] | None = None
) -> bool:
    """An evaluation of a run (``evaluate_run``'s ``metrics``) into its event files: the
    split's accuracy and losses as scalars (``test``: also the HParams dashboard's
    ``hparams/test_acc``) and ``figures`` (name → PNG file of the report) as images, at the
    epoch of the evaluated checkpoint. Only into a run trained with TensorBoard (it has event
    files), unless it is switched off (``CIFARLAB_TENSORBOARD=0``) or not installed. Returns
    whether anything was written."""
    if switched_off() or not folder.event_files() or not available():
        return False
    split = metrics.get("split", "test")
    step = int(metrics.get("checkpoint_epoch") or 0)
    scalars = {f"{split}/{k}": metrics.get(k) for k in EVAL_KEYS}
    scalars[f"{split}/macro_f1"] = (metrics.get("macro_avg") or {}).get("f1")
    calibration = metrics.get("calibration") or {}
    scalars[f"{split}/ece"] = (calibration.get("before") or {}).get("ece")
    scalars[f"{split}/ece_calibrated"] = (calibration.get("after") or {}).get("ece")
    if split == "test":
        scalars["hparams/test_acc"] = metrics.get("accuracy")
    writer = _writer(folder)
    if writer is None:
        return False
    try:
        for tag, value in scalars.items():
            if isinstance(value, (int, float)) and np.isfinite(value):
                writer.add_scalar(tag, value, step)
        for name, path in (figures or {}).items():
            image = _png_pixels(path)
            if image is not None:
                writer.add_image(f"{split}/{name}", image, step, dataformats="HWC")
    finally:
        writer.close()
    return True


def _png_pixels(path: Path) -> np.ndarray | None:
    """A figure the report just wrote, as RGB pixels (None if it is not there)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            return np.asarray(image.convert("RGB"))
    except OSError:
        return None
