"""The run folder as files: the one list of the files a run holds, their schemas, and
:class:`RunFolder`, which reads (size-limited, schema-checked), writes (atomically) and locks
them. Training, evaluation, prediction, export, the reports and the CLI go through it; none of
them spells a run file's name. It knows nothing of training or evaluation: opening a trained
model is :mod:`cifarlab.trained`, resuming a run :mod:`cifarlab.train.resume`.

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
``events.out.tfevents.*``   TensorBoard's event files (:mod:`cifarlab.train.tensorboard`): the
                            curves per step and epoch, the settings and final metrics, the
                            report's figures (``tensorboard --logdir runs``)
==========================  =================================================================

Nothing read back from a run folder is trusted: each file is read only if it is a regular file
within its size limit (:mod:`cifarlab.limits`), and checked against its table in
:mod:`cifarlab.schemas` (:data:`SCHEMAS`), failing with one line naming the file and the field.
A run is finished only when every file it should hold is there; ``--resume`` rebuilds what it
can (:mod:`cifarlab.train.resume`) and says what it cannot.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np

from cifarlab import checkpoint as checkpoints
from cifarlab import schemas
from cifarlab.errors import CifarlabError, one_line
from cifarlab.files import (
    append_jsonl,
    atomic_write,
    file_kind,
    open_input,
    open_private,
    read_input,
    read_json,
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
EVENTS = "events.out.tfevents."  # how every TensorBoard event file's name begins
GROUP = "group.json"  # a group of runs of one set-up, one per seed (GroupFolder)
# config.json keys that are not TrainConfig fields: what the run recorded about itself.
RECORDS = (
    "num_classes",
    "class_names",
    "params",
    "device_used",
    "train_images",
    "world_size",
    "precision_used",
    "weight_grad_used",
    "precision_choice",
    "machine",
    "budget_plan",
    "train_seconds",
    "best_val_acc",
    "budget_used_seconds",
    "budget_replans",
    "steps_trained",
    "rank_weight_digests",
    "provenance",
    "model_source",
)
# The table (cifarlab.schemas) each file read back from a run folder is checked against.
SCHEMAS: dict[str, schemas.Schema] = {
    CONFIG: schemas.CONFIG,
    METRICS: schemas.METRICS_ROW,  # each line
    "eval_SPLIT.json": schemas.EVAL,
    "predictions_SPLIT.npz": schemas.PREDICTIONS,
    BEST: schemas.CHECKPOINT,
    LAST: schemas.CHECKPOINT,
    CALIBRATION: schemas.CALIBRATION,
    ROBUSTNESS: schemas.ROBUSTNESS,
}
# The files training writes; their temporary names (files.atomic_write: ".NAME.XXXXXXXX.tmp",
# and ".best.pt.tmp" of older versions), left behind only by a process killed mid-write.
TRAINING_FILES = (CONFIG, METRICS, LAST, BEST)
_TEMP = re.compile(r"^\.(" + "|".join(map(re.escape, TRAINING_FILES)) + r")\.(\w+\.)?tmp$")


def _split_prefix(split: str) -> str:
    return "" if split == "test" else f"{split}_"


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

    def event_files(self) -> list[Path]:
        """TensorBoard's event files in the folder (regular files, not followed through a
        link), by name."""
        try:
            names = sorted(n for n in os.listdir(self.path) if n.startswith(EVENTS))
        except OSError:
            return []
        return [self.path / n for n in names if stat.S_ISREG(os.lstat(self.path / n).st_mode)]

    # ------------------------------------------------------------------ state of the folder

    def has(self, name: str) -> bool:
        return os.path.lexists(self.path / name)  # a dangling link or a FIFO is there too

    def holds_run(self) -> bool:
        """A config and at least one checkpoint: a run (finished or interrupted) is here."""
        return self.has(CONFIG) and any(self.has(n) for n in CHECKPOINTS.values())

    def check_new(self) -> None:
        """Refuse to start a new run in a folder that holds anything but the leftovers of a
        cifarlab run that stopped before its first checkpoint (a ``config.json`` that passes
        its schema, an empty ``metrics.jsonl``, TensorBoard's event files, the ``.lock``): a
        run, someone else's files and a folder being trained are never written over."""
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise CifarlabError(f"{self.path} is not a folder: choose another --out")
        if not self.path.exists():
            return
        holder = self.lock_holder()
        if holder:
            raise CifarlabError(
                f"{self.path} is being trained right now ({holder}): wait for it "
                "to finish, or choose another --out"
            )
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
        foreign = [
            n
            for n in names
            if n not in (LOCK, CONFIG, METRICS) and not _TEMP.match(n) and not n.startswith(EVENTS)
        ]
        if foreign:
            shown = ", ".join(foreign[:3]) + (
                f" and {len(foreign) - 3} more" if len(foreign) > 3 else ""
            )
            raise CifarlabError(
                f"{self.path} is not empty and is not a cifarlab run (it holds {shown}); {leave}"
            )
        if METRICS in names and CONFIG not in names:
            raise CifarlabError(
                f"{self.path} holds a {METRICS} but no {CONFIG}: not a cifarlab run; {leave}"
            )
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
        if not self.has(CONFIG):
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
            raise CifarlabError(
                f"cannot make the run folder {self.path}: {e.strerror or e}"
            ) from None
        with open_private(self.path / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = _holder_text(f.read(200).encode())
                then = (
                    (
                        "wait for it to finish (or stop it: Ctrl-C saves a checkpoint) before "
                        "resuming it"
                    )
                    if resuming
                    else "wait for it to finish, or choose another --out"
                )
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
        return _shallow(read_json(path), path)

    # ------------------------------------------------------------------ config

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict, checked against :data:`cifarlab.schemas.CONFIG` (its
        fields' types and ranges, as many class names as classes, every setting valid)."""
        self.check_exists()
        config = self._read_json(self.config_path)
        return schemas.check(schemas.CONFIG, config, str(self.config_path))

    def read_config_if_any(self) -> dict[str, Any]:
        """``config.json`` as :meth:`read_config` reads it, or {} if there is none."""
        return self.read_config() if self.has(CONFIG) else {}

    def write_config(self, data: dict[str, Any]) -> Path:
        return atomic_write(
            self.config_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n")
        )

    # ------------------------------------------------------------------ metrics

    def _metric_lines(self) -> list[tuple[int, str]]:
        """(line number, text) of the non-empty lines of ``metrics.jsonl`` ([] if none)."""
        path = self.metrics_path
        if not self.has(METRICS):
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

    def rows_to_keep(self) -> tuple[list[dict[str, Any]], bool]:
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
        if not self.has(METRICS):
            return
        rows, torn = self.rows_to_keep()
        kept = [r for r in rows if r["epoch"] <= epochs_done]
        if torn or len(kept) != len(rows):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(self.metrics_path, lambda tmp: tmp.write_text(text))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, which: str, state: dict[str, Any]) -> Path:
        path = self.checkpoint_path(which)
        checkpoints.save_checkpoint(path, state)
        return path

    def load_checkpoint(self, which: str = "best", purpose: str = "open") -> dict[str, Any]:
        """A checkpoint, checked against :data:`cifarlab.schemas.CHECKPOINT` (``purpose``
        "resume": everything training needs to go on)."""
        path = self.checkpoint_path(which)
        if not self.has(path.name) and self.has(CONFIG) and not self.holds_run():
            holder = self.lock_holder()
            if holder:
                raise CifarlabError(
                    f"{path}: not there yet: the run is being trained right now "
                    f"({holder}) and has not finished its first epoch"
                )
            raise CifarlabError(
                f"{path}: no checkpoint there: that run stopped before it saved one; "
                f"train it again with --out {self.path}"
            )
        return checkpoints.load_checkpoint(path, purpose)

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

    # ------------------------------------------------------------------ robustness

    def read_robustness(self) -> dict[str, Any] | None:
        """``robustness.json`` (None when the run has none), checked against
        :data:`cifarlab.schemas.ROBUSTNESS` and each corruption's record against
        :data:`cifarlab.schemas.ROBUSTNESS_CORRUPTION`."""
        path = self.robustness_path
        if not os.path.lexists(path):
            return None
        data = self._read_json(path)
        try:
            schemas.check(schemas.ROBUSTNESS, data, str(path))
            for name, record in data["per_corruption"].items():
                prefix = f"per_corruption.{one_line(name, 40)}."
                schemas.check(schemas.ROBUSTNESS_CORRUPTION, record, str(path), prefix=prefix)
        except CifarlabError as e:
            problem = str(e).removeprefix(f"{path}: ")
            raise CifarlabError(
                f"{path}: not a robustness record written by cifarlab ({problem})"
            ) from None
        return data

    def write_robustness(self, record: dict[str, Any]) -> Path:
        """Write ``cifarlab robustness``'s ``record`` (JSON without NaN: ``allow_nan=False``)."""
        text = json.dumps(record, indent=1, allow_nan=False) + "\n"
        return atomic_write(self.robustness_path, lambda tmp: tmp.write_text(text))

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
                    raise CifarlabError(
                        f"{path}: expands to {expanded:,} bytes, over the limit "
                        f"(raise it with {MAX_RUN_FILE.env})"
                    )
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
        raise CifarlabError(
            f"{where}: nested more than {schemas.MAX_DEPTH} levels deep: not a file cifarlab writes"
        )
    return value


def _holder_text(raw: bytes) -> str:
    """The lock holder a ``.lock`` names ("process N on HOST"), on one printable line."""
    line = raw.decode("utf-8", "replace").strip().splitlines()[:1]
    text = "".join(c for c in (line[0] if line else "") if c.isprintable())[:100]
    return text or "another process"


# --------------------------------------------------------------------------- groups of seeds


def member_name(seed: int) -> str:
    """The folder of a group's run of ``seed``: ``seed-K``."""
    return f"seed-{seed}"


class GroupFolder:
    """A group: one set-up trained once per seed (``cifarlab train --seeds 0-4``), a folder
    ``runs/NAME/`` holding ``group.json`` (the seeds, the set-up, each run's state and the
    summary) and one run folder per seed, ``seed-K/``."""

    def __init__(self, path: str | os.PathLike) -> None:
        self.path = Path(path)

    def __repr__(self) -> str:
        return f"GroupFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        return self.path.name

    @property
    def group_path(self) -> Path:
        return self.path / GROUP

    @staticmethod
    def is_group(path: str | os.PathLike) -> bool:
        """``path`` holds a ``group.json`` (a group, not a single run)."""
        return os.path.lexists(Path(path) / GROUP)

    def member(self, seed: int) -> RunFolder:
        return RunFolder(self.path / member_name(seed))

    def read(self) -> dict[str, Any]:
        """``group.json``, checked against :data:`cifarlab.schemas.GROUP`."""
        if not self.path.is_dir():
            raise CifarlabError(f"{self.path}: no such group folder")
        data = RunFolder(self.path)._read_json(self.group_path)
        return schemas.check(schemas.GROUP, data, str(self.group_path))

    def write(self, data: dict[str, Any]) -> Path:
        self.path.mkdir(parents=True, exist_ok=True)
        return atomic_write(
            self.group_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n")
        )

    def members(self) -> list[tuple[int, RunFolder]]:
        """(seed, its run folder) for every seed of the group, in the group's order."""
        return [(seed, self.member(seed)) for seed in self.read()["seeds"]]

    def check_new(self) -> None:
        """Refuse to start a group in a folder that is not empty or absent (a group there is
        resumed with ``--resume``; a run is not a group)."""
        if os.path.lexists(self.path) and not self.path.is_dir():
            raise CifarlabError(f"{self.path} is not a folder: choose another --out")
        if not self.path.exists():
            return
        if self.is_group(self.path):
            raise CifarlabError(
                f"{self.path} already holds a group: resume it with --resume {self.path}, "
                "or choose another --out"
            )
        if RunFolder(self.path).holds_run():
            raise CifarlabError(
                f"{self.path} holds a single run, not a group: choose another --out"
            )
        if any(self.path.iterdir()):
            raise CifarlabError(
                f"{self.path} is not empty and is not a cifarlab group: choose another --out "
                f"(nothing in {self.path} was changed)"
            )
