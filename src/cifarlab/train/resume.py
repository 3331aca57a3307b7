"""Resuming a run: what a run folder about to be resumed holds, what is missing and can be
rebuilt (a lost ``best.pt`` or metrics row, from ``last.pt``), and what stops the run with an
error that says what to do. :func:`prepare_resume` reads only; :func:`repair` does what can be
done, under the folder's lock."""

from __future__ import annotations

import contextlib
import json
import os
import stat
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab import schemas
from cifarlab.checkpoint import clean_state_dict, planned_shapes, weights_problem
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.files import atomic_write
from cifarlab.runs import BEST, CONFIG, LAST, METRICS, RunFolder
from cifarlab.train.config import TrainConfig, resume_config


def _score(row: dict[str, Any]) -> float | None:
    """What picks the best epoch: validation accuracy, else training accuracy."""
    return row.get("val_acc") if row.get("val_acc") is not None else row.get("train_acc")


@dataclass
class ResumeCheck:
    """What :func:`check_resume` found in a run folder about to be resumed: what is
    missing, what can be rebuilt (done by :func:`repair`, under the lock)."""

    source: Path  # the checkpoint the run goes on from (last.pt; best.pt if last.pt is lost)
    config: dict[str, Any]  # config.json ({} if it was missing: written again)
    rows_to_restore: list[dict[str, Any]] = field(default_factory=list)  # from the checkpoint
    rebuild_best: bool = False  # best.pt = a copy of last.pt
    lost_epochs: list[int] = field(default_factory=list)  # metrics rows nothing can rebuild
    stale: list[Path] = field(default_factory=list)  # temporary files of a killed process
    notes: list[str] = field(default_factory=list)  # what is printed before training goes on


def _check_same_run(
    config: dict[str, Any], state: dict[str, Any], config_path: Path, source: Path
) -> None:
    """``config.json`` and the checkpoint describe the same run (not a checkpoint copied in
    from another run)."""
    saved = state.get("config") or {}
    for key in ("model", "model_args", "dataset", "labels"):
        if key in saved and key in config and saved[key] != config[key]:
            raise CifarlabError(
                f"{source}: not this run's checkpoint: its {key} is {schemas.describe(saved[key])}"
                f", {config_path.name} says {schemas.describe(config[key])}"
            )


def prepare_resume(
    folder: RunFolder, changes: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any], ResumeCheck]:
    """The config, checkpoint state and state of the files of a run about to be resumed:
    refused at once (before any data is loaded) if another process is training it, if its
    checkpoint is not sound, or if a file it should hold is missing and cannot be rebuilt.
    Reads only; what can be rebuilt is done under the lock (:func:`repair`)."""
    run_dir = folder.path
    if not run_dir.is_dir():
        raise CifarlabError(f"{run_dir}: no such run folder")
    holder = folder.lock_holder()
    if holder:
        raise CifarlabError(
            f"{run_dir} is being trained right now ({holder}): wait for it to "
            "finish (or stop it: Ctrl-C saves a checkpoint) before resuming "
            "it"
        )
    last, best = folder.checkpoint_path("last"), folder.checkpoint_path("best")
    note = None
    if not os.path.lexists(last) and os.path.lexists(best):
        source, state = best, folder.load_checkpoint("best", "resume")
        note = (
            f"{LAST} is missing: resuming from {BEST} (epoch {state['epoch']}); the "
            "epochs after it are trained again"
        )
    else:
        source, state = last, folder.load_checkpoint("last", "resume")
    try:
        cfg = resume_config(TrainConfig.from_saved(state["config"]), changes)
    except SettingError as e:
        if set(e.names) & set(changes):
            raise  # the user's change: named by its option
        raise CifarlabError(f"{source}: config.{e}") from None
    found = check_resume(folder, state, source)
    if note:
        found.notes.insert(0, note)
    names = state.get("class_names") or found.config.get("class_names") or []
    planned = planned_shapes(cfg.model, len(names), cfg.model_args) if len(names) >= 2 else None
    problem = weights_problem(planned, clean_state_dict(state["model"])) if planned else None
    if problem:
        raise CifarlabError(
            f"{source}: the weights do not fit model {cfg.model!r} with "
            f"model_args {cfg.model_args} ({problem}): the checkpoint is from "
            "another model"
        )
    return cfg, state, found


def check_resume(folder: RunFolder, state: dict[str, Any], source: Path) -> ResumeCheck:
    """Before a run is resumed from ``state`` (read from ``source``): is every file the
    run should hold there and sound (``config.json``; a metrics row for every epoch of the
    checkpoint; ``best.pt``, of the best epoch)? Reads only: what can be rebuilt is
    listed for :func:`repair`; what cannot, and stops the run, is an error that says
    exactly what to do."""
    epoch = int(state["epoch"])
    found = ResumeCheck(source=source, config={})
    # config.json: rewritten at the start of the session anyway; a foreign one is refused
    if folder.has(CONFIG):
        try:
            found.config = folder.read_config()
        except CifarlabError as e:
            raise CifarlabError(
                f"{e} (delete {CONFIG}: --resume writes it again from {source.name})"
            ) from None
        _check_same_run(found.config, state, folder.config_path, source)
    else:
        found.notes.append(f"{CONFIG} was missing: written again from {source.name}")
    # metrics.jsonl: a row for every epoch done
    rows, torn = folder.rows_to_keep()
    if torn:
        found.notes.append(f"{METRICS}: its torn last line is dropped")
    have = {r["epoch"] for r in rows if r["epoch"] <= epoch}
    saved = state.get("row")
    missing = [e for e in range(1, epoch + 1) if e not in have]
    if saved is not None and saved["epoch"] in missing:
        found.rows_to_restore.append(saved)
        missing.remove(saved["epoch"])
        rows.append(saved)
        found.notes.append(
            f"{METRICS} lacked the row of epoch {saved['epoch']}: restored from {source.name}"
        )
    if missing:
        found.lost_epochs = missing
        found.notes.append(
            f"{METRICS} lacks the rows of epoch(s) "
            f"{', '.join(map(str, missing))}: they are lost (nothing holds "
            "them), so the training curves will skip them"
        )
    # best.pt: there, readable, and of the best epoch
    if epoch >= 1:
        _check_best(folder, state, source, rows, found)
    found.stale = folder.stale_temp_files()
    return found


def _check_best(
    folder: RunFolder,
    state: dict[str, Any],
    source: Path,
    rows: list[dict[str, Any]],
    found: ResumeCheck,
) -> None:
    epoch, best_path = int(state["epoch"]), folder.checkpoint_path("best")
    best_epoch = state.get("best_epoch")
    best_val = state.get("best_val_acc")
    scored: list[int] = []
    if best_epoch is None:  # an older checkpoint: the epochs whose row scored best_val
        scored = [r["epoch"] for r in rows if r["epoch"] <= epoch and _score(r) == best_val]
        # training keeps the first of tied epochs (best.pt is saved on a strict gain)
        best_epoch = min(scored) if scored else None
    at_end = int(state.get("step", 0)) == 0  # last.pt holds the weights of that epoch
    problem = None
    if source == best_path:
        return  # resumed from best.pt itself
    try:
        best = folder.load_checkpoint("best")
    except CifarlabError as e:
        problem = str(e)
    else:
        ours = clean_state_dict(state["model"])
        other = weights_problem(
            {k: list(v.shape) for k, v in ours.items()}, clean_state_dict(best["model"])
        )
        if other:
            problem = f"{best_path} is not this run's ({other}, unlike {source.name})"
        elif scored and (best["epoch"] in scored or best.get("best_val_acc") == best_val):
            pass  # an older run's best.pt of one of the tied best epochs
        elif best_epoch is not None and best["epoch"] < best_epoch:  # (later: chosen)
            problem = f"{best_path} holds epoch {best['epoch']}, but the best epoch is {best_epoch}"
        elif best_epoch is None and best.get("best_val_acc") not in (None, best_val):
            problem = f"{best_path} is not of the best epoch (another validation accuracy)"
    if problem is None:
        return
    if best_epoch == epoch and at_end:
        with contextlib.suppress(OSError):
            mode = os.lstat(best_path).st_mode
            if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                raise CifarlabError(
                    f"{problem}: remove it, then resume again (it is rebuilt from {source.name})"
                )
        found.rebuild_best = True
        found.notes.append(
            f"{problem}: rebuilt from {source.name} (the best epoch, {epoch}, is the last)"
        )
        return
    which = f"epoch {best_epoch}" if best_epoch is not None else "an earlier epoch"
    raise CifarlabError(
        f"{problem}; the best checkpoint ({which}) cannot be rebuilt from {source.name}: "
        f"to go on with the latest weights as the best so far, copy {source} to {best_path} "
        "and resume again"
    )


def repair(folder: RunFolder, found: ResumeCheck) -> None:
    """Do what :func:`check_resume` found can be done (under the lock), and say it."""
    for path in found.stale:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    if found.rows_to_restore or folder.rows_to_keep()[1]:
        rows, _ = folder.rows_to_keep()
        rows = sorted(rows + found.rows_to_restore, key=lambda r: r["epoch"])
        text = "".join(json.dumps(r) + "\n" for r in rows)
        atomic_write(folder.metrics_path, lambda tmp: tmp.write_text(text))
    if found.rebuild_best:
        folder.promote_last_to_best()
    for note in found.notes:
        print(f"{folder.path}: {note}", flush=True)
