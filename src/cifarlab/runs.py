"""The run folder: the one list of the files a run holds, and the functions that read, write,
lock and open a run. Training, evaluation, prediction, export, the reports and the CLI go
through this module; none of them spells a run file's name.

A run is a folder, ``runs/NAME/``:

==========================  =================================================================
``config.json``             the resolved TrainConfig + records: class names, parameters, the
                            machine and precision used, versions, git commit, a budget's plan
``metrics.jsonl``           one JSON object per finished epoch
``last.pt``                 the latest checkpoint (model, optimizer, loop state): resumes
``best.pt``                 the checkpoint with the best validation accuracy
``.lock``                   held while a process trains into the folder
``eval_SPLIT.json``         ``cifarlab evaluate``'s metrics for SPLIT (test or val)
``predictions_SPLIT.npz``   the true labels and predicted probabilities behind them
``report.html``             the report of the test split (``report_val.html`` for val), with
``*.png``                   its figures (``val_*.png`` for val)
``model.onnx``/``model.pt``  ``cifarlab export``'s default output
``calibration.json``        the temperature fitted on the validation split (per checkpoint)
``robustness.json``         ``cifarlab robustness``'s accuracy per corruption and severity, with
``robustness_*.png``        its heat-map and example images
==========================  =================================================================

Nothing read back from a run folder is trusted: each file is read only if it is a regular file
within its size limit (:mod:`cifarlab.limits`), and checked against its table in
:mod:`cifarlab.schemas` (:data:`SCHEMAS`), failing with one line naming the file and the field.
A run is finished only when every file it should hold is there; ``--resume`` rebuilds what it
can (:meth:`RunFolder.check_resume`, :meth:`RunFolder.repair`) and says what it cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import re
import shutil
import socket
import stat
import subprocess
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab import schemas
from cifarlab.errors import CifarlabError, one_line
from cifarlab.files import (
    append_jsonl,
    atomic_write,
    file_kind,
    open_input,
    open_private,
    read_input,
)
from cifarlab.limits import MAX_JSON_FILE, MAX_RUN_FILE, megabytes

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"
CHECKPOINTS = {"best": BEST, "last": LAST}
SPLITS = ("test", "val")
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.pt"}
CALIBRATION = "calibration.json"
ROBUSTNESS = "robustness.json"
# config.json keys that are not TrainConfig fields: what the run recorded about itself.
RECORDS = ("num_classes", "class_names", "params", "device_used", "train_images", "world_size",
           "precision_used", "precision_choice", "machine", "budget_plan", "train_seconds",
           "best_val_acc", "budget_used_seconds", "budget_replans", "steps_trained",
           "rank_weight_digests", "provenance", "model_source")  # fmt: skip
# The table (cifarlab.schemas) each file read back from a run folder is checked against.
SCHEMAS: dict[str, schemas.Schema] = {
    CONFIG: schemas.CONFIG,
    METRICS: schemas.METRICS_ROW,  # each line
    "eval_SPLIT.json": schemas.EVAL,
    "predictions_SPLIT.npz": schemas.PREDICTIONS,
    BEST: schemas.CHECKPOINT,
    LAST: schemas.CHECKPOINT,
    CALIBRATION: schemas.CALIBRATION,
}
# The files training writes; their temporary names (files.atomic_write: ".NAME.XXXXXXXX.tmp",
# and ".best.pt.tmp" of older versions), left behind only by a process killed mid-write.
TRAINING_FILES = (CONFIG, METRICS, LAST, BEST)
_TEMP = re.compile(r"^\.(" + "|".join(map(re.escape, TRAINING_FILES)) + r")\.(\w+\.)?tmp$")


def _split_prefix(split: str) -> str:
    return "" if split == "test" else f"{split}_"


def _score(row: dict[str, Any]) -> float | None:
    """What picks the best epoch: validation accuracy, else training accuracy."""
    return row.get("val_acc") if row.get("val_acc") is not None else row.get("train_acc")


@dataclass
class ResumeCheck:
    """What :meth:`RunFolder.check_resume` found in a run folder about to be resumed: what is
    missing, what can be rebuilt (done by :meth:`RunFolder.repair`, under the lock)."""

    source: Path  # the checkpoint the run goes on from (last.pt; best.pt if last.pt is lost)
    config: dict[str, Any]  # config.json ({} if it was missing: written again)
    rows_to_restore: list[dict[str, Any]] = field(default_factory=list)  # from the checkpoint
    rebuild_best: bool = False  # best.pt = a copy of last.pt
    lost_epochs: list[int] = field(default_factory=list)  # metrics rows nothing can rebuild
    stale: list[Path] = field(default_factory=list)  # temporary files of a killed process
    notes: list[str] = field(default_factory=list)  # what is printed before training goes on


class RunFolder:
    """One run folder: where each of its files is, and reading and writing them safely
    (every write goes to a temporary name first, then is renamed; every read is of a regular
    file of bounded size, and what is read is checked against its table in
    :mod:`cifarlab.schemas`)."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"RunFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    # ------------------------------------------------------------------ where things are

    @property
    def config_path(self) -> Path:
        return self.path / CONFIG

    @property
    def metrics_path(self) -> Path:
        return self.path / METRICS

    def checkpoint_path(self, which: str = "best") -> Path:
        """``best`` or ``last`` (or their file names)."""
        name = CHECKPOINTS.get(which, which)
        if name not in CHECKPOINTS.values():
            raise CifarlabError(f"checkpoint must be best or last, got {which!r}")
        return self.path / name

    def eval_path(self, split: str) -> Path:
        return self.path / f"eval_{split}.json"

    def predictions_path(self, split: str) -> Path:
        return self.path / f"predictions_{split}.npz"

    def report_path(self, split: str) -> Path:
        return self.path / ("report.html" if split == "test" else f"report_{split}.html")

    def figure_path(self, split: str, filename: str) -> Path:
        return self.path / f"{_split_prefix(split)}{filename}"

    @property
    def calibration_path(self) -> Path:
        return self.path / CALIBRATION

    @property
    def robustness_path(self) -> Path:
        return self.path / ROBUSTNESS

    def robustness_figure_path(self, what: str) -> Path:
        """``robustness_WHAT.png`` (the heat-map: ``heatmap``; examples: ``examples``)."""
        return self.path / f"robustness_{what}.png"

    def export_path(self, fmt: str) -> Path:
        if fmt not in EXPORTS:
            raise CifarlabError(f"format must be one of {', '.join(EXPORTS)}, got {fmt!r}")
        return self.path / EXPORTS[fmt]

    # ------------------------------------------------------------------ state of the folder

    def _has(self, name: str) -> bool:
        return os.path.lexists(self.path / name)  # a dangling link or a FIFO is there too

    def holds_run(self) -> bool:
        """A config and at least one checkpoint: a run (finished or interrupted) is here."""
        return self._has(CONFIG) and any(self._has(n) for n in CHECKPOINTS.values())

    def check_new(self) -> None:
        """Refuse to start a new run in a folder that holds anything but the leftovers of a
        cifarlab run that stopped before its first checkpoint (a ``config.json`` that passes
        its schema, an empty ``metrics.jsonl``, the ``.lock``): a run, someone else's files
        and a folder being trained are never written over."""
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise CifarlabError(f"{self.path} is not a folder: choose another --out")
        if not self.path.exists():
            return
        holder = self.lock_holder()
        if holder:
            raise CifarlabError(f"{self.path} is being trained right now ({holder}): wait for it "
                                "to finish, or choose another --out")  # fmt: skip
        if self.holds_run():
            raise CifarlabError(
                f"{self.path} already holds a run: resume it with --resume {self.path}, "
                "or choose another --out"
            )
        try:
            names = sorted(os.listdir(self.path))
        except OSError as e:
            raise CifarlabError(f"cannot read the folder {self.path}: {e.strerror or e}") from None
        leave = f"choose another --out (nothing in {self.path} was changed)"
        checkpoints = [n for n in names if n in CHECKPOINTS.values()]
        if checkpoints:
            raise CifarlabError(
                f"{self.path} holds {', '.join(checkpoints)} but no {CONFIG}: not a run that "
                f"can be resumed or trained into; {leave}"
            )
        foreign = [n for n in names if n not in (LOCK, CONFIG, METRICS) and not _TEMP.match(n)]
        if foreign:
            shown = ", ".join(foreign[:3]) + (f" and {len(foreign) - 3} more" if len(foreign) > 3
                                              else "")  # fmt: skip
            raise CifarlabError(f"{self.path} is not empty and is not a cifarlab run (it holds "
                                f"{shown}); {leave}")  # fmt: skip
        if METRICS in names and CONFIG not in names:
            raise CifarlabError(f"{self.path} holds a {METRICS} but no {CONFIG}: not a cifarlab "
                                f"run; {leave}")  # fmt: skip
        if CONFIG in names:
            try:
                self.read_config()
            except CifarlabError as e:
                raise CifarlabError(f"{self.path} is not a cifarlab run ({e}); {leave}") from None
        if METRICS in names:
            rows = self._metric_lines()
            if rows:
                raise CifarlabError(
                    f"{self.metrics_path}: holds {len(rows)} rows of metrics but the folder has "
                    f"no checkpoint: not a run that can be resumed or trained into; {leave}"
                )

    def check_exists(self) -> None:
        if not self.path.is_dir():
            if self.path.exists() or self.path.is_symlink():
                kind = file_kind(os.stat(self.path).st_mode) if self.path.exists() else None
                raise CifarlabError(f"{self.path}: is {kind or 'a broken link'}, not a run folder")
            raise CifarlabError(f"{self.path}: no such run folder")
        if not self._has(CONFIG):
            raise CifarlabError(f"{self.path}: not a run folder (no {CONFIG})")

    def lock_holder(self) -> str | None:
        """Who holds the folder's lock ("process N on HOST"), or None if no process is
        training into it. Creates nothing, follows no link."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks
            return None
        flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
        try:
            fd = os.open(self.path / LOCK, flags | getattr(os, "O_CLOEXEC", 0))
        except OSError:
            return None
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            try:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            except OSError:
                return _holder_text(os.read(fd, 200))
            fcntl.flock(fd, fcntl.LOCK_UN)
            return None
        finally:
            os.close(fd)

    @contextlib.contextmanager
    def lock(self, resuming: bool = False) -> Iterator[None]:
        """Hold an exclusive lock on the folder while training into it, so that a second
        process training into the same folder is refused instead of mixing two runs' files.
        The lock dies with the process; the ``.lock`` file stays, unless the folder was made
        here and nothing else was written into it (a run that failed at once leaves no empty
        folder behind). ``.lock`` is never followed if it is a link (``open_private``)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; go on without
            yield
            return
        created = not self.path.exists()
        try:
            self.path.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise CifarlabError(f"cannot make the run folder {self.path}: "
                                f"{e.strerror or e}") from None  # fmt: skip
        with open_private(self.path / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = _holder_text(f.read(200).encode())
                then = ("wait for it to finish (or stop it: Ctrl-C saves a checkpoint) before "
                        "resuming it") if resuming else "wait for it to finish, or choose " \
                    "another --out"  # fmt: skip
                raise CifarlabError(
                    f"{self.path} is being trained right now ({holder}): {then}"
                ) from None
            f.seek(0)
            f.truncate()
            f.write(f"process {os.getpid()} on {socket.gethostname()}\n")
            f.flush()
            try:
                yield
            finally:
                if created and os.listdir(self.path) == [LOCK]:  # failed before writing
                    shutil.rmtree(self.path, ignore_errors=True)
                fcntl.flock(f, fcntl.LOCK_UN)

    # ------------------------------------------------------------------ reading JSON

    def _read_json(self, path: Path) -> Any:
        """The JSON value of ``path``: a regular file of at most MAX_JSON_FILE (a FIFO or a
        device is refused without blocking); one-line errors naming the file."""
        data = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
        try:
            return _shallow(json.loads(data.decode("utf-8")), path)
        except UnicodeDecodeError:
            raise CifarlabError(f"{path}: not valid JSON (not UTF-8 text)") from None
        except RecursionError:
            raise CifarlabError(f"{path}: not valid JSON (nested too deeply)") from None
        except ValueError as e:  # JSONDecodeError, or an integer of thousands of digits
            raise CifarlabError(f"{path}: not valid JSON ({one_line(e)})") from None

    # ------------------------------------------------------------------ config

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict, checked against :data:`cifarlab.schemas.CONFIG` (its
        fields' types and ranges, as many class names as classes, every setting valid)."""
        self.check_exists()
        config = self._read_json(self.config_path)
        return schemas.check(schemas.CONFIG, config, str(self.config_path))

    def read_config_if_any(self) -> dict[str, Any]:
        """``config.json`` as :meth:`read_config` reads it, or {} if there is none."""
        return self.read_config() if self._has(CONFIG) else {}

    def write_config(self, data: dict[str, Any]) -> Path:
        return atomic_write(
            self.config_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n")
        )

    # ------------------------------------------------------------------ metrics

    def _metric_lines(self) -> list[tuple[int, str]]:
        """(line number, text) of the non-empty lines of ``metrics.jsonl`` ([] if none)."""
        path = self.metrics_path
        if not self._has(METRICS):
            return []
        data = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
        text = data.decode("utf-8", "replace")
        return [(n, line) for n, line in enumerate(text.splitlines(), 1) if line.strip()]

    def _row(self, n: int, line: str) -> dict[str, Any]:
        where = f"{self.metrics_path}: line {n}"
        try:
            row = json.loads(line)
        except (ValueError, RecursionError):
            raise CifarlabError(f"{self.metrics_path}: line {n} is not JSON") from None
        return schemas.check(schemas.METRICS_ROW, _shallow(row, where), where)

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` ([] if there is none), each checked against
        :data:`cifarlab.schemas.METRICS_ROW`."""
        return [self._row(n, line) for n, line in self._metric_lines()]

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, row)

    def _rows_to_keep(self) -> tuple[list[dict[str, Any]], bool]:
        """The rows of ``metrics.jsonl`` and whether its last line was torn (not JSON: cut
        off by a crash in an older version) and left out. Any other bad line is an error
        that says which line to fix."""
        lines = self._metric_lines()
        torn = False
        if lines:
            try:
                json.loads(lines[-1][1])
            except (ValueError, RecursionError):
                lines, torn = lines[:-1], True
        rows = []
        for n, line in lines:
            try:
                rows.append(self._row(n, line))
            except CifarlabError as e:
                raise CifarlabError(f"{e} (fix or delete that line, then try again)") from None
        return rows, torn

    def trim_metrics(self, epochs_done: int) -> None:
        """Drop the lines of epochs after the checkpoint (written after it, before a crash)
        and a torn last line."""
        if not self._has(METRICS):
            return
        rows, torn = self._rows_to_keep()
        kept = [r for r in rows if r["epoch"] <= epochs_done]
        if torn or len(kept) != len(rows):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.metrics_path, lambda tmp: tmp.write_text(text))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, which: str, state: dict[str, Any]) -> Path:
        from cifarlab.train.checkpoint import save_checkpoint

        path = self.checkpoint_path(which)
        save_checkpoint(path, state)
        return path

    def load_checkpoint(self, which: str = "best", purpose: str = "open") -> dict[str, Any]:
        """A checkpoint, checked against :data:`cifarlab.schemas.CHECKPOINT` (``purpose``
        "resume": everything training needs to go on)."""
        from cifarlab.train.checkpoint import load_checkpoint

        path = self.checkpoint_path(which)
        if not self._has(path.name) and self._has(CONFIG) and not self.holds_run():
            holder = self.lock_holder()
            if holder:
                raise CifarlabError(f"{path}: not there yet: the run is being trained right now "
                                    f"({holder}) and has not finished its first epoch")  # fmt: skip
            raise CifarlabError(
                f"{path}: no checkpoint there: that run stopped before it saved one; "
                f"train it again with --out {self.path}"
            )
        return load_checkpoint(path, purpose)

    def promote_last_to_best(self) -> None:
        """``best.pt`` becomes a copy of ``last.pt``, through a temporary file created
        exclusively under a random name (a link planted at any name is never followed); a
        failed copy (a full disk) leaves no temporary file and the old ``best.pt``."""
        last = self.checkpoint_path("last")

        def copy(tmp: Path) -> None:
            flags = os.O_WRONLY | os.O_TRUNC | getattr(os, "O_NOFOLLOW", 0)
            with open_input(last) as src, os.fdopen(os.open(tmp, flags), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)

        atomic_write(self.checkpoint_path("best"), copy)

    # ------------------------------------------------------------------ resuming

    def stale_temp_files(self) -> list[Path]:
        """Temporary files of the training files, left by a process killed mid-write."""
        try:
            return sorted(self.path / n for n in os.listdir(self.path) if _TEMP.match(n))
        except OSError:
            return []

    def check_resume(self, state: dict[str, Any], source: Path) -> ResumeCheck:
        """Before a run is resumed from ``state`` (read from ``source``): is every file the
        run should hold there and sound (``config.json``; a metrics row for every epoch of the
        checkpoint; ``best.pt``, of the best epoch)? Reads only: what can be rebuilt is
        listed for :meth:`repair`; what cannot, and stops the run, is an error that says
        exactly what to do."""
        epoch = int(state["epoch"])
        found = ResumeCheck(source=source, config={})
        # config.json: rewritten at the start of the session anyway; a foreign one is refused
        if self._has(CONFIG):
            try:
                found.config = self.read_config()
            except CifarlabError as e:
                raise CifarlabError(f"{e} (delete {CONFIG}: --resume writes it again from "
                                    f"{source.name})") from None  # fmt: skip
            _check_same_run(found.config, state, self.config_path, source)
        else:
            found.notes.append(f"{CONFIG} was missing: written again from {source.name}")
        # metrics.jsonl: a row for every epoch done
        rows, torn = self._rows_to_keep()
        if torn:
            found.notes.append(f"{METRICS}: its torn last line is dropped")
        have = {r["epoch"] for r in rows if r["epoch"] <= epoch}
        saved = state.get("row")
        missing = [e for e in range(1, epoch + 1) if e not in have]
        if saved is not None and saved["epoch"] in missing:
            found.rows_to_restore.append(saved)
            missing.remove(saved["epoch"])
            rows.append(saved)
            found.notes.append(f"{METRICS} lacked the row of epoch {saved['epoch']}: restored "
                               f"from {source.name}")  # fmt: skip
        if missing:
            found.lost_epochs = missing
            found.notes.append(f"{METRICS} lacks the rows of epoch(s) "
                               f"{', '.join(map(str, missing))}: they are lost (nothing holds "
                               "them), so the training curves will skip them")  # fmt: skip
        # best.pt: there, readable, and of the best epoch
        if epoch >= 1:
            self._check_best(state, source, rows, found)
        found.stale = self.stale_temp_files()
        return found

    def _check_best(self, state: dict[str, Any], source: Path, rows: list[dict[str, Any]],
                    found: ResumeCheck) -> None:  # fmt: skip
        epoch, best_path = int(state["epoch"]), self.checkpoint_path("best")
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
            best = self.load_checkpoint("best")
        except CifarlabError as e:
            problem = str(e)
        else:
            from cifarlab.train.checkpoint import clean_state_dict

            ours = clean_state_dict(state["model"])
            other = weights_problem(
                {k: list(v.shape) for k, v in ours.items()}, clean_state_dict(best["model"])
            )
            if other:
                problem = f"{best_path} is not this run's ({other}, unlike {source.name})"
            elif scored and (best["epoch"] in scored or best.get("best_val_acc") == best_val):
                pass  # an older run's best.pt of one of the tied best epochs
            elif best_epoch is not None and best["epoch"] < best_epoch:  # (later: chosen)
                problem = (f"{best_path} holds epoch {best['epoch']}, but the best epoch is "
                           f"{best_epoch}")  # fmt: skip
            elif best_epoch is None and best.get("best_val_acc") not in (None, best_val):
                problem = f"{best_path} is not of the best epoch (another validation accuracy)"
        if problem is None:
            return
        if best_epoch == epoch and at_end:
            with contextlib.suppress(OSError):
                mode = os.lstat(best_path).st_mode
                if not (stat.S_ISREG(mode) or stat.S_ISLNK(mode)):
                    raise CifarlabError(f"{problem}: remove it, then resume again (it is rebuilt "
                                        f"from {source.name})")  # fmt: skip
            found.rebuild_best = True
            found.notes.append(f"{problem}: rebuilt from {source.name} (the best epoch, "
                               f"{epoch}, is the last)")  # fmt: skip
            return
        which = f"epoch {best_epoch}" if best_epoch is not None else "an earlier epoch"
        raise CifarlabError(
            f"{problem}; the best checkpoint ({which}) cannot be rebuilt from {source.name}: "
            f"to go on with the latest weights as the best so far, copy {source} to {best_path} "
            "and resume again"
        )

    def repair(self, found: ResumeCheck) -> None:
        """Do what :meth:`check_resume` found can be done (under the lock), and say it."""
        for path in found.stale:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
        if found.rows_to_restore or self._rows_to_keep()[1]:
            rows, _ = self._rows_to_keep()
            rows = sorted(rows + found.rows_to_restore, key=lambda r: r["epoch"])
            text = "".join(json.dumps(r) + "\n" for r in rows)
            atomic_write(self.metrics_path, lambda tmp: tmp.write_text(text))
        if found.rebuild_best:
            self.promote_last_to_best()
        for note in found.notes:
            print(f"{self.path}: {note}", flush=True)

    # ------------------------------------------------------------------ calibration

    def read_calibration(self) -> dict[str, dict[str, Any]]:
        """``calibration.json``'s record per checkpoint ({} when the run has none), each
        checked against :data:`cifarlab.schemas.CALIBRATION_RECORD`."""
        path = self.calibration_path
        if not os.path.lexists(path):
            return {}
        data = self._read_json(path)
        schemas.check(schemas.CALIBRATION, data, str(path))
        for which, record in data["checkpoints"].items():
            schemas.check(schemas.CALIBRATION_RECORD, record, f"{path}: checkpoints.{which}")
        return data["checkpoints"]

    def write_calibration(self, checkpoint: str, record: dict[str, Any]) -> Path:
        """Store the calibration ``record`` of ``checkpoint`` (the other's is kept)."""
        try:
            records = self.read_calibration()
        except CifarlabError:
            records = {}  # a broken file is replaced
        records[checkpoint] = record
        text = json.dumps({"version": 1, "checkpoints": records}, indent=1) + "\n"
        return atomic_write(self.calibration_path, lambda tmp: tmp.write_text(text))

    # ------------------------------------------------------------------ evaluations

    def write_eval(self, split: str, metrics: dict[str, Any]) -> Path:
        return atomic_write(
            self.eval_path(split), lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n")
        )

    def read_eval(self, split: str) -> dict[str, Any]:
        """``eval_SPLIT.json``, checked against :data:`cifarlab.schemas.EVAL`; a clear error
        if the run was not evaluated on ``split``."""
        path = self.eval_path(split)
        again = f"run: cifarlab evaluate {self.path} --split {split}"
        if not os.path.lexists(path):
            raise CifarlabError(f"{self.path}: not evaluated on {split} yet ({again})")
        try:
            m = self._read_json(path)
        except CifarlabError as e:
            if "not valid JSON" not in str(e):
                raise
            raise CifarlabError(
                f"{path}: not an evaluation written by cifarlab ({again})"
            ) from None
        missing = [n for n in schemas.EVAL.required() if isinstance(m, dict) and n not in m]
        if not isinstance(m, dict) or missing:
            what = f"missing {', '.join(missing)}; " if missing else ""
            raise CifarlabError(f"{path}: not an evaluation written by cifarlab ({what}{again})")
        try:
            return schemas.check(schemas.EVAL, m, str(path))
        except CifarlabError as e:
            raise CifarlabError(f"{e} ({again})") from None

    def write_predictions(self, split: str, labels: np.ndarray, probs: np.ndarray) -> Path:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, labels=labels, probs=probs.astype(np.float32))

        return atomic_write(self.predictions_path(split), save)

    def read_predictions(self, split: str) -> tuple[np.ndarray, np.ndarray]:
        """The true labels and predicted probabilities of ``predictions_SPLIT.npz``, checked
        against :data:`cifarlab.schemas.PREDICTIONS` (no pickled objects are read)."""
        path = self.predictions_path(split)
        limit = megabytes(MAX_RUN_FILE)
        with open_input(path, limit, limit_hint=MAX_RUN_FILE.env) as f:
            try:
                with zipfile.ZipFile(f) as z:
                    expanded = sum(i.file_size for i in z.infolist())
                if expanded > limit:
                    raise CifarlabError(f"{path}: expands to {expanded:,} bytes, over the limit "
                                        f"(raise it with {MAX_RUN_FILE.env})")  # fmt: skip
                f.seek(0)
                with np.load(f, allow_pickle=False) as saved:
                    data = {k: saved[k] for k in ("labels", "probs") if k in saved.files}
            except CifarlabError:
                raise
            except Exception as e:  # noqa: BLE001 - any failure means an unusable file
                raise CifarlabError(f"{path}: not readable ({one_line(e)})") from None
        schemas.check(schemas.PREDICTIONS, data, str(path))
        return data["labels"].astype(np.int64), data["probs"]

    def read_prediction_labels(self, split: str) -> np.ndarray:
        path = self.predictions_path(split)
        if not os.path.lexists(path):
            raise ValueError(
                f"write_report needs the true labels: pass labels=, or have {path.name} in the run"
            )
        return self.read_predictions(split)[0]


def _shallow(value: Any, where: str | os.PathLike) -> Any:
    """``value``, if its lists and objects nest at most MAX_DEPTH levels (deeper, the checks
    and messages would run out of stack)."""
    if schemas.depth(value, schemas.MAX_DEPTH) > schemas.MAX_DEPTH:
        raise CifarlabError(f"{where}: nested more than {schemas.MAX_DEPTH} levels deep: not a "
                            "file cifarlab writes")  # fmt: skip
    return value


def _holder_text(raw: bytes) -> str:
    """The lock holder a ``.lock`` names ("process N on HOST"), on one printable line."""
    line = raw.decode("utf-8", "replace").strip().splitlines()[:1]
    text = "".join(c for c in (line[0] if line else "") if c.isprintable())[:100]
    return text or "another process"


def _check_same_run(config: dict[str, Any], state: dict[str, Any], config_path: Path,
                    source: Path) -> None:  # fmt: skip
    """``config.json`` and the checkpoint describe the same run (not a checkpoint copied in
    from another run)."""
    saved = state.get("config") or {}
    for key in ("model", "model_args", "dataset", "labels"):
        if key in saved and key in config and saved[key] != config[key]:
            raise CifarlabError(
                f"{source}: not this run's checkpoint: its {key} is {schemas.describe(saved[key])}"
                f", {config_path.name} says {schemas.describe(config[key])}"
            )


# --------------------------------------------------------------------------- opening a run


def read_run(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The run folder, its ``config.json`` and its ``metrics.jsonl`` rows; clear errors if
    something is missing or not what cifarlab writes."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    return folder.path, config, folder.read_metrics()


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """The shape of every tensor in ``model``'s state: what tells two architectures apart."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def planned_shapes(name: str, num_classes: int, model_args: dict[str, Any]) -> dict | None:
    """:func:`shapes` of the model ``name`` would build, found without allocating it (built
    on PyTorch's meta device); None if the builder cannot build there."""
    from cifarlab.models import create_model

    try:
        with torch.device("meta"):
            return shapes(create_model(name, num_classes, **model_args))
    except Exception:  # noqa: BLE001 - any builder: the real build says what is wrong
        return None


def weights_problem(expected: dict[str, list[int]], weights: dict[str, Any]) -> str | None:
    """Why ``weights`` (a state dict) do not fit a model of ``expected`` shapes, naming the
    first parameter that differs; None if they fit."""
    for key, shape in expected.items():
        if key not in weights:
            lacking = [k for k in expected if k not in weights]
            more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
            return f"it lacks parameter {key}{more}"
        got = weights[key]
        if not isinstance(got, torch.Tensor):
            return f"parameter {key} is {schemas.describe(got)}, not a tensor"
        if list(got.shape) != shape:
            return f"parameter {key} is {list(got.shape)} in the checkpoint, {shape} in the model"
    extra = [k for k in weights if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        return f"it has parameter {extra[0]}{more}, which the model lacks"
    return None


def _dtype_problem(model: nn.Module, weights: dict[str, Any]) -> str | None:
    """A floating-point parameter given integers (or the reverse) would be cast silently."""
    for key, have in model.state_dict().items():
        got = weights[key]
        if have.is_floating_point() != got.is_floating_point() or got.is_complex():
            return f"parameter {key} holds {got.dtype} values, the model {have.dtype}"
    return None


def build_model(config: dict[str, Any], where: str | os.PathLike = CONFIG) -> nn.Module:
    """The (untrained) model a run's ``config.json`` describes: its registered name or import
    path, class count and builder options."""
    from cifarlab.models import create_model

    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CifarlabError(f"{where}: model_args must be a JSON object, got {model_args!r}")
    name = _model_name(config)
    try:
        return create_model(name, int(config["num_classes"]), **model_args)
    except CifarlabError as e:
        raise CifarlabError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a builder's failure on these options
        raise CifarlabError(f"{where}: model {name!r} cannot be built with model_args "
                            f"{schemas.describe(model_args)} ({type(e).__name__}: "
                            f"{one_line(e)})") from None  # fmt: skip


def _model_name(config: dict[str, Any]) -> str:
    from cifarlab.models import model_names

    name, source = config["model"], config.get("model_source")
    if source and name not in model_names():  # registered by the user in the training process
        name = source
    return name


def load_model(
    run_dir: str | os.PathLike, config: dict[str, Any], checkpoint: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with the weights of ``checkpoint`` ("best" or "last"), on the CPU, in
    eval mode; and the checkpoint's state. Weights of another model are refused before the
    model is built (its shapes are found on the meta device), naming the parameter."""
    from cifarlab.train.checkpoint import clean_state_dict

    folder = RunFolder(run_dir)
    path = folder.checkpoint_path(checkpoint)
    state = folder.load_checkpoint(checkpoint)
    weights = clean_state_dict(state["model"])
    model_args = config.get("model_args") or {}

    def refuse(problem: str) -> CifarlabError:
        return CifarlabError(
            f"{path}: the weights do not fit model {config['model']!r} with model_args "
            f"{schemas.describe(model_args)} ({problem}): the checkpoint is from another model, "
            f"or {CONFIG} was changed"
        )

    planned = planned_shapes(_model_name(config), int(config["num_classes"]), model_args)
    problem = weights_problem(planned, weights) if planned is not None else None
    if problem:
        raise refuse(problem)
    model = build_model(config, folder.config_path)
    problem = weights_problem(shapes(model), weights) or _dtype_problem(model, weights)
    if problem:
        raise refuse(problem)
    try:
        model.load_state_dict(weights)
    except (RuntimeError, KeyError, TypeError) as e:
        raise refuse(one_line(e)) from None
    return model.eval(), state


def check_outputs(model: nn.Module, class_names: list[str], where: str | os.PathLike) -> None:
    """The model gives one score per class name (one forward pass of a blank image)."""
    try:
        with torch.no_grad():
            out = model(torch.zeros(1, 3, 32, 32))
    except Exception as e:  # noqa: BLE001 - a model that cannot run on a CIFAR image
        raise CifarlabError(f"{where}: the model does not run on a 32×32 image "
                            f"({type(e).__name__}: {one_line(e)})") from None  # fmt: skip
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise CifarlabError(f"{where}: the model gives {schemas.describe(out)}, not one row of "
                            "class scores per image")  # fmt: skip
    if out.shape[1] != len(class_names):
        raise CifarlabError(f"{where}: class_names has {len(class_names)} names but the model "
                            f"gives {out.shape[1]} class scores")  # fmt: skip


@dataclass
class OpenRun:
    """A trained run ready for inference: its model on a device (channels-last as trained),
    the normalization and autocast precision it was trained with, and its records."""

    folder: RunFolder
    config: dict[str, Any]  # config.json as written
    cfg: Any  # the TrainConfig (cifarlab.train.config)
    model: nn.Module
    device: torch.device
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None
    autocast: torch.dtype | None
    checkpoint: str
    checkpoint_epoch: int
    temperature: float = 1.0  # the logits are divided by it (1.0 when not calibrated)
    calibration_note: str = "probabilities not calibrated"
    calibrated: bool = False  # a fitted temperature is applied

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def tta(self) -> int:
        return int(self.cfg.tta)

    def autocast_context(self) -> contextlib.AbstractContextManager:
        from cifarlab.train.device import autocast_context

        return autocast_context(self.device, self.autocast)


def open_run(
    run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "cpu",
    calibrated: bool = True,
) -> OpenRun:  # fmt: skip
    """Open a trained run: its config, and its model with the ``checkpoint`` weights on
    ``device`` with the normalization and precision of its training. Every file is checked
    against its schema first; the model must give one score per class name.

    ``calibrated``: use the temperature fitted for these weights (``calibration.json``) when
    there is one (:attr:`OpenRun.temperature`; :attr:`OpenRun.calibration_note` says what the
    probabilities are)."""
    from cifarlab.train.config import TrainConfig
    from cifarlab.train.device import resolve_device, run_autocast

    folder = RunFolder(run_dir)
    config = folder.read_config()
    cfg = TrainConfig.from_saved(config)
    dev = resolve_device(device)
    model, state = load_model(folder.path, config, checkpoint)
    check_outputs(model, config["class_names"], folder.config_path)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = cfg.normalization()
    epoch = int(state["epoch"])
    temperature, note = _temperature(folder, checkpoint, epoch, calibrated)
    return OpenRun(folder, config, cfg, model.eval(), dev, mean, std, run_autocast(config, dev),
                   checkpoint, epoch, temperature or 1.0, note,
                   temperature is not None)  # fmt: skip


def _temperature(folder: RunFolder, checkpoint: str, epoch: int,
                 calibrated: bool) -> tuple[float | None, str]:  # fmt: skip
    """The temperature to divide the logits by (None: none) and a line saying why."""
    from cifarlab.evaluate.calibration import describe

    if not calibrated:
        return None, "probabilities not calibrated (turned off)"
    record = folder.read_calibration().get(checkpoint)
    if record is None:
        return None, (f"probabilities not calibrated ({folder.calibration_path.name} has no "
                     f"temperature for the {checkpoint} checkpoint: cifarlab evaluate "
                     f"{folder.path} fits one)")  # fmt: skip
    if record["checkpoint_epoch"] != epoch:
        return None, (f"probabilities not calibrated (the temperature was fitted for epoch "
                     f"{record['checkpoint_epoch']}, the {checkpoint} checkpoint is epoch "
                     f"{epoch}: cifarlab evaluate {folder.path} fits it again)")  # fmt: skip
    if record["temperature"] is None:
        return None, describe(record)
    return float(record["temperature"]), describe(record)


# --------------------------------------------------------------------------- provenance


def _git_commit() -> str | None:
    """The commit of the checkout cifarlab runs from (None when installed from a wheel)."""
    here = Path(__file__).resolve().parent
    if not any((p / ".git").exists() for p in (here, *here.parents)):
        return None
    try:
        out = subprocess.run(["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)  # fmt: skip
        dirty = subprocess.run(["git", "-C", str(here), "status", "--porcelain", "--", "."],
                               capture_output=True, text=True, timeout=5)  # fmt: skip
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    if out.returncode or not commit:
        return None
    return commit + ("+changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(device: torch.device) -> dict[str, Any]:
    """What made a run: versions, the git commit (from a checkout), the processor."""
    from cifarlab import __version__
    from cifarlab.train.probe import describe_machine

    info: dict[str, Any] = {
        "cifarlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "cpu": describe_machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
