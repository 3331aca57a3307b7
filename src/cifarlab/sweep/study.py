"""A sweep: an Optuna study whose trials are cifarlab training runs.

- **The study** lives in an embedded SQLite file in the sweep folder (``study.db``) unless
  ``storage`` names a database (``postgresql://user@host/db``, Optuna's RDB storage): then any
  number of workers, on any machines, :func:`run_sweep` with ``join=URL`` and share it. What
  decides the trials' results (the space, the fixed settings, the trials' length and data) is
  kept in the study itself, so a worker that joins needs no space file.
- **Trials**: Optuna's TPE sampler (``constant_liar``: workers running at once do not draw
  the same point) picks each trial's settings; the trial trains them with
  :func:`cifarlab.train.train` into ``trial-NNN/`` (a normal run folder: ``cifarlab evaluate``
  can evaluate it later) and is scored by its best **validation** accuracy (without test-time
  augmentation); the test split is never evaluated. A median pruner is fed each epoch's
  validation accuracy and stops trials that fall behind (never before the second epoch).
- **Exactly N trials**: the study is given N waiting trials when it is made; a worker claims
  one (atomically: a row lock in PostgreSQL, a lock file beside a SQLite database) or stops
  when none is left, so no trial runs twice and the total never overshoots, whatever the
  number of workers.
- **Failures**: a trial that diverges (NaN) or fails is recorded as failed with its reason,
  and the sweep goes on. A trial stopped by Ctrl-C (or lost with its worker: its heartbeat
  stopped for :data:`GRACE_SECONDS`) does not count: a new trial with its settings takes its
  place and, on the machine that holds its folder, resumes its training from the checkpoint,
  so a later ``--resume`` loses nothing.

Optuna is imported here: this module is what needs the extra ``cifarlab[sweep]``.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import logging
import math
import os
import socket
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from cifarlab.errors import (
    CifarlabError,
    DataError,
    DownloadError,
    SettingError,
    WriteError,
    one_line,
)

try:
    import optuna
    import sqlalchemy
    from optuna.trial import FrozenTrial, TrialState
except ImportError as e:  # the extra is not installed
    raise CifarlabError(
        f"cifarlab sweep needs Optuna ({one_line(e, None)}): pip install 'cifarlab[sweep]'"
    ) from None

from cifarlab import __version__
from cifarlab.data.sources import get_info
from cifarlab.files import atomic_write, open_private, read_json
from cifarlab.runs import RunFolder
from cifarlab.sweep import output
from cifarlab.sweep.space import Param, Space, check_space, read_space
from cifarlab.train import budget as budgets
from cifarlab.train import device as devices
from cifarlab.train import probe
from cifarlab.train.budget import format_duration, parse_duration
from cifarlab.train.config import TrainConfig, make_config
from cifarlab.train.engine import TrainingInterrupted, Watcher
from cifarlab.train.launch import train

SWEEP_FILE = "sweep.json"  # the sweep folder's record: the study's name and storage
STUDY_DB = "study.db"  # the default storage: SQLite in the sweep folder
ATTR = "cifarlab_sweep"  # the study's user attribute holding the plan
HEARTBEAT_SECONDS = 5  # a running trial's heartbeat, in its storage
GRACE_SECONDS = 30  # a trial silent this long has lost its worker: it is retried
MAX_TRIALS = 100_000
DATA_SECONDS = 1.0  # a trial's data loading (from the parsed cache), in its budget's first guess
PLAN_VERSION = 1


# --------------------------------------------------------------------------- the plan


@dataclass
class Plan:
    """What decides the trials' results, the same for every worker (kept in the study)."""

    space: Space
    trials: int  # trials that count (finished, pruned or failed on their own)
    epochs: int | None = None  # each trial's epochs (None: the recipe's)
    budget: float | None = None  # each trial's seconds (--budget-per-trial)
    settings: dict[str, Any] = field(default_factory=dict)  # train_size, val_size, seed
    pruning: bool = True

    def fixed(self) -> dict[str, Any]:
        """The settings every trial shares: the file's, then the sweep's."""
        length = {"epochs": self.epochs} if self.epochs is not None else {}
        if self.budget is not None:
            length = {"budget": self.budget}
        return {**self.space.base, **self.settings, **length}

    def changes(self, params: dict[str, Any]) -> dict[str, Any]:
        return {**self.fixed(), **params}

    def to_dict(self) -> dict[str, Any]:
        return {
            "version": PLAN_VERSION,
            "space": self.space.to_dict(),
            "trials": self.trials,
            "epochs": self.epochs,
            "budget": self.budget,
            "settings": self.settings,
            "pruning": self.pruning,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Plan:
        if not isinstance(d, dict) or d.get("version") != PLAN_VERSION:
            raise CifarlabError("the study was not made by this version of cifarlab sweep")
        return cls(
            Space.from_dict(d["space"]),
            int(d["trials"]),
            d.get("epochs"),
            d.get("budget"),
            dict(d.get("settings") or {}),
            bool(d.get("pruning", True)),
        )


@dataclass
class SweepResult:
    """What a worker leaves when it ends: the trials of the whole study, as records."""

    folder: Path
    study: str
    plan: Plan
    records: list[dict[str, Any]]
    best: dict[str, Any] | None
    table: str
    files: list[Path]

    @property
    def unfinished(self) -> int:
        return sum(r["state"] in ("waiting", "running") for r in self.records)


@dataclass
class _Worker:
    """One process working on a study."""

    folder: Path
    name: str
    study: optuna.Study
    storage: optuna.storages.RDBStorage
    plan: Plan
    local: dict[str, Any]  # root, threads, device: this machine's
    claims: Path | None  # SQLite: claims are serialized by this lock file
    progress: bool = True
    log: Callable[[str], None] = print


# --------------------------------------------------------------------------- the entry point


def run_sweep(
    space: str | os.PathLike | None = None,
    *,
    trials: int | None = None,
    out: str | os.PathLike | None = None,
    epochs: int | None = None,
    budget_per_trial: str | float | None = None,
    train_size: int | None = None,
    val_size: int | None = None,
    seed: int | None = None,
    storage: str | None = None,
    study: str | None = None,
    resume: str | os.PathLike | None = None,
    join: str | None = None,
    root: str | os.PathLike | None = None,
    threads: int | None = None,
    device: str | None = None,
    pruning: bool | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
) -> SweepResult:
    """Start a sweep over the space file ``space`` (``trials`` trials, each ``epochs`` long
    or ``budget_per_trial`` seconds; ``train_size``, ``val_size``, ``seed`` for every trial)
    in the folder ``out``, its study in ``storage`` (default: SQLite in ``out``); or go on
    with the sweep in the folder ``resume`` (``trials``: a new total); or ``join`` the study
    ``study`` in the database ``join`` as one more worker. ``root``, ``threads`` and ``device``
    are this machine's. Returns when no trial is left to run."""
    modes = [name for name, v in (("space", space), ("resume", resume), ("join", join)) if v]
    if len(modes) != 1:
        raise CifarlabError(
            "give a space file to start a sweep, --resume DIR to go on with one, or --join URL "
            "to work on one (one of them)"
        )
    root = str(Path(root).resolve()) if root is not None else None
    local = {"root": root, "threads": threads, "device": device}
    local = {k: v for k, v in local.items() if v is not None}
    given = {
        "trials": trials,
        "epochs": epochs,
        "budget_per_trial": budget_per_trial,
        "train_size": train_size,
        "val_size": val_size,
        "seed": seed,
        "storage": storage,
        "study": study,
        "out": out,
        "pruning": pruning,
    }
    given = {k: v for k, v in given.items() if v is not None}
    with _quiet_optuna():
        if space:
            worker = _start(Path(space), given, local)
        elif resume:
            worker = _resume(Path(resume), given, local)
        else:
            worker = _join(str(join), given, local)
        worker.progress, worker.log = progress, log
        _work(worker)
        return _finish(worker)


# --------------------------------------------------------------------------- start, resume, join


def _start(path: Path, given: dict[str, Any], local: dict[str, Any]) -> _Worker:
    space = read_space(path)
    trials = given.get("trials")
    if trials is None:
        raise SettingError("trials", "is needed: how many trials to run (e.g. --trials 20)")
    if not 1 <= trials <= MAX_TRIALS:
        raise SettingError("trials", f"must be 1..{MAX_TRIALS:,}, got {trials}")
    epochs, budget = given.get("epochs"), given.get("budget_per_trial")
    if epochs is not None and budget is not None:
        raise SettingError(
            "epochs",
            "and {others} cannot go together: give a trial's length one way",
            others=["budget_per_trial"],
        )
    seconds = None
    if budget is not None:
        try:
            seconds = parse_duration(budget)
        except SettingError as e:
            raise SettingError("budget_per_trial", e.problem) from None
        if "epochs" in space.names:
            raise CifarlabError(
                f"{space.source}: space.epochs: a trial's length is its --budget-per-trial"
            )
    settings = {k: given[k] for k in ("train_size", "val_size", "seed") if k in given}
    plan = Plan(space, trials, epochs, seconds, settings, given.get("pruning", True))
    check_space(space, {**plan.fixed(), **local})
    if make_config(**plan.fixed(), **local).val_size < 1:
        raise SettingError(
            "val_size", "must be 1 or more: a sweep scores every trial on the validation split"
        )
    out = Path(given.get("out") or Path("sweeps") / f"{path.stem}-{time.strftime('%Y%m%d-%H%M%S')}")
    _check_new_folder(out, make=False)
    name = given.get("study") or out.resolve().name
    url = given.get("storage")
    if url:  # a bad URL or a database out of reach leaves no folder behind
        storage, claims = open_storage(url)
    _check_new_folder(out)
    if not url:
        storage, claims = open_storage(_sqlite_url(out))
    try:
        created = optuna.create_study(
            storage=storage,
            study_name=name,
            direction="maximize",
            sampler=_sampler(plan, seed=plan.settings.get("seed", 0)),
            pruner=_pruner(plan),
        )
    except optuna.exceptions.DuplicatedStudyError:
        with contextlib.suppress(OSError):
            out.rmdir()  # made just now, and still empty
        raise SettingError(
            "study",
            f"{name!r} already exists in {_shown(url or _sqlite_url(out))}: join it with "
            "--join, or name another with --study",
        ) from None
    created.set_user_attr(ATTR, plan.to_dict())
    for _ in range(plan.trials):
        created.enqueue_trial({})
    _write_sweep_file(out, name, url, plan, local)
    return _Worker(out, name, created, storage, plan, local, claims)


def _resume(folder: Path, given: dict[str, Any], local: dict[str, Any]) -> _Worker:
    fixed = sorted(set(given) - {"trials", "storage"})
    if fixed:
        raise SettingError(
            fixed,
            "cannot change when a sweep is resumed (only {others} can): it goes on with "
            "its own settings",
            others=["trials", "storage"],
        )
    record = read_sweep_file(folder)
    local = {**record.get("local", {}), **local}  # this machine's, as the sweep began
    url = given.get("storage") or record.get("storage") or _sqlite_url(folder)
    storage, claims = open_storage(url)
    study, plan = _load(storage, record["study"], url)
    trials = given.get("trials")
    if trials is not None and not 1 <= trials <= MAX_TRIALS:
        raise SettingError("trials", f"must be 1..{MAX_TRIALS:,}, got {trials}")
    with _claims(claims):
        counted = len(_counted(study.get_trials(deepcopy=False)))
        if trials is not None:
            if counted > trials:
                raise SettingError(
                    "trials", f"is the new total: the study already has {counted} trials"
                )
            plan.trials = trials
            study.set_user_attr(ATTR, plan.to_dict())
        for _ in range(plan.trials - counted):  # and those lost without a trial in their place
            study.enqueue_trial({})
    study = _load(storage, record["study"], url, seed=counted + plan.settings.get("seed", 0))[0]
    return _Worker(folder, record["study"], study, storage, plan, local, claims)


def _join(url: str, given: dict[str, Any], local: dict[str, Any]) -> _Worker:
    fixed = sorted(set(given) - {"study", "out"})
    if fixed:
        raise SettingError(
            fixed,
            "cannot be given to a worker that joins: the study has its own settings "
            "(only {others} can)",
            others=["study", "out"],
        )
    storage, claims = open_storage(url)
    name = given.get("study")
    if name is None:
        names = optuna.get_all_study_names(storage)
        if len(names) != 1:
            raise SettingError(
                "study",
                f"is needed: {_shown(url)} holds {len(names)} studies"
                + (f" ({', '.join(names[:10])})" if names else ""),
            )
        name = names[0]
    study, plan = _load(storage, name, url, seed=None)
    out = Path(given.get("out") or Path("sweeps") / name)
    if (out / SWEEP_FILE).is_file():
        if read_sweep_file(out)["study"] != name:
            raise SettingError("out", f"{out} holds another sweep: choose another --out")
    else:
        _check_new_folder(out)
        _write_sweep_file(out, name, url, plan, local)
    return _Worker(out, name, study, storage, plan, local, claims)


def _load(
    storage: optuna.storages.RDBStorage, name: str, url: str, seed: int | None = 0
) -> tuple[optuna.Study, Plan]:
    try:
        summary = optuna.load_study(study_name=name, storage=storage)
    except KeyError:
        raise CifarlabError(f"no study {name!r} in {_shown(url)}") from None
    raw = summary.user_attrs.get(ATTR)
    if raw is None:
        raise CifarlabError(f"the study {name!r} in {_shown(url)} is not a cifarlab sweep")
    plan = Plan.from_dict(raw)
    study = optuna.load_study(
        study_name=name, storage=storage, sampler=_sampler(plan, seed), pruner=_pruner(plan)
    )
    return study, plan


def _sampler(plan: Plan, seed: int | None) -> optuna.samplers.BaseSampler:
    """TPE, as Optuna's default; ``constant_liar``: workers running at once do not draw the
    same point. Seeded for the worker that starts the sweep; a joining worker draws its own."""
    return optuna.samplers.TPESampler(seed=seed, constant_liar=True)


def _pruner(plan: Plan) -> optuna.pruners.BasePruner:
    """Stop a trial whose validation accuracy at an epoch is below the median of the earlier
    trials' at that epoch: after 5 trials, never at the first epoch (the schedule's warm-up
    makes it a poor guide)."""
    if not plan.pruning:
        return optuna.pruners.NopPruner()
    return optuna.pruners.MedianPruner(n_startup_trials=5, n_warmup_steps=2)  # epochs from 1


# --------------------------------------------------------------------------- storage


def _sqlite_url(folder: Path) -> str:
    return f"sqlite:///{(folder / STUDY_DB).resolve()}"


def _shown(url: str) -> str:
    """A storage URL without its password (for messages and ``sweep.json``)."""
    try:
        return sqlalchemy.engine.make_url(url).set(password=None).render_as_string(False)
    except Exception:  # noqa: BLE001 - not a URL: shown as it is, cut short
        return one_line(url, 80)


def open_storage(url: str) -> tuple[optuna.storages.RDBStorage, Path | None]:
    """Optuna's RDB storage at ``url`` (a plain ``postgresql://`` with the driver installed),
    with heartbeats; for SQLite, the lock file that serializes claims (SQLite takes no row
    locks). ``optuna.load_study(study_name=..., storage=open_storage(url)[0])`` reads a
    sweep's study."""
    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:  # noqa: BLE001 - sqlalchemy's ArgumentError, ValueError
        raise SettingError(
            "storage",
            f"{one_line(url, 80)!r} is not a database URL (sqlite:///PATH, "
            "postgresql://USER@HOST/DB)",
        ) from None
    kwargs: dict[str, Any] = {}
    claims = None
    if parsed.get_backend_name() == "sqlite":
        if not parsed.database:
            raise SettingError("storage", "a SQLite storage needs a file: sqlite:///PATH")
        db = Path(parsed.database)
        if not db.parent.is_dir():
            raise CifarlabError(f"no folder {db.parent} for the SQLite storage {db.name}")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
        claims = db.with_name(db.name + ".claims")  # a lock file
    elif parsed.drivername == "postgresql":  # no driver named: the one installed
        url = parsed.set(drivername=f"postgresql+{_postgres_driver(url)}").render_as_string(False)
    callback = "heartbeat_stale_trial_callback"
    if callback not in inspect.signature(optuna.storages.RDBStorage).parameters:
        callback = "failed_trial_callback"  # Optuna before 4.9
    kwargs[callback] = _continue_lost
    try:
        with warnings.catch_warnings():  # heartbeats are "experimental" (since Optuna 2.9)
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            storage = optuna.storages.RDBStorage(
                url, heartbeat_interval=HEARTBEAT_SECONDS, grace_period=GRACE_SECONDS, **kwargs
            )
    except ImportError as e:  # the database's driver (Optuna says "Failed to import DB ...")
        hint = "'cifarlab[sweep-postgres]'" if parsed.get_backend_name() == "postgresql" else (
            "its Python driver")  # fmt: skip
        raise CifarlabError(f"the storage {_shown(url)} needs {hint}: {one_line(e, 200)}") from None
    except Exception as e:  # noqa: BLE001 - sqlalchemy's and the driver's, in their words
        detail = one_line(getattr(e, "orig", None) or e, 300)
        raise CifarlabError(f"cannot open the study storage {_shown(url)}: {detail}") from None
    return storage, claims


def _postgres_driver(url: str) -> str:
    """psycopg (3) or psycopg2, whichever is installed (SQLAlchemy 2.0 takes psycopg2 for a
    plain ``postgresql://``, 2.1 psycopg)."""
    import importlib.util

    for name in ("psycopg", "psycopg2"):
        if importlib.util.find_spec(name) is not None:
            return name
    raise CifarlabError(
        f"the storage {_shown(url)} needs a PostgreSQL driver: pip install "
        "'cifarlab[sweep-postgres]' (psycopg2-binary)"
    )


@contextlib.contextmanager
def _claims(lock: Path | None) -> Iterator[None]:
    """Serialize claiming trials (SQLite: a lock file beside the database; a database with
    row locks needs none)."""
    if lock is None:
        yield
        return
    import fcntl

    with open_private(lock) as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


@contextlib.contextmanager
def _quiet_optuna() -> Iterator[None]:
    """Optuna's log lines (each trial's result: we print our own) and its experimental-
    feature warnings (heartbeats) off while a sweep runs."""
    previous = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(logging.WARNING)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            yield
    finally:
        optuna.logging.set_verbosity(previous)


# --------------------------------------------------------------------------- the sweep folder


def _check_new_folder(out: Path, make: bool = True) -> None:
    """``out`` can hold a new sweep (nothing, or an empty folder); made if ``make``."""
    if os.path.lexists(out) and not out.is_dir():
        raise SettingError("out", f"{out} is not a folder: choose another --out")
    if out.is_dir() and any(out.iterdir()):
        if (out / SWEEP_FILE).exists():
            raise SettingError(
                "out", f"{out} holds a sweep already: go on with it with --resume {out}, or "
                "choose another --out"
            )  # fmt: skip
        raise SettingError("out", f"{out} holds files already: choose another --out")
    if not make:
        return
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise WriteError(f"cannot create {out}: {e.strerror or e}") from None


def _write_sweep_file(
    out: Path, name: str, url: str | None, plan: Plan, local: dict[str, Any]
) -> None:
    record = {
        "study": name,
        # None: study.db in this folder; a database's URL is kept without its password
        # (--resume takes it again with --storage, or libpq's PGPASSWORD / ~/.pgpass)
        "storage": _shown(url) if url else None,
        "plan": plan.to_dict(),
        "local": local,  # this machine's --root, --threads, --device: --resume takes them again
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "cifarlab": __version__,
    }
    text = json.dumps(record, indent=2) + "\n"
    atomic_write(out / SWEEP_FILE, lambda tmp: tmp.write_text(text))


def read_sweep_file(folder: Path) -> dict[str, Any]:
    """The record of the sweep folder ``folder`` (``sweep.json``)."""
    path = folder / SWEEP_FILE
    if not folder.is_dir():
        raise CifarlabError(f"no sweep folder {folder}")
    if not path.is_file():
        raise CifarlabError(f"{folder} is not a sweep folder (no {SWEEP_FILE})")
    record = read_json(path)
    ok = isinstance(record, dict) and isinstance(record.get("study"), str)
    ok = ok and isinstance(record.get("local", {}), dict)
    if not ok or not isinstance(record.get("storage"), str | None):
        raise CifarlabError(f"{path}: not a sweep record written by cifarlab")
    return record


# --------------------------------------------------------------------------- the work


def _counted(trials: list[FrozenTrial]) -> list[FrozenTrial]:
    """The trials that count towards the total: all but those interrupted or lost (a new
    trial with their settings takes their place)."""
    return [t for t in trials if t.state != TrialState.FAIL or "failed" in t.user_attrs]


def _continue_lost(study: optuna.Study, trial: FrozenTrial) -> None:
    """A trial whose worker stopped (its heartbeat did) was failed by Optuna: queue a trial
    with its settings in its place (which resumes its run where its folder is)."""
    study.enqueue_trial(trial.params, user_attrs=_continuation(trial))


def _continuation(trial: FrozenTrial | optuna.Trial) -> dict[str, Any]:
    attrs = trial.user_attrs
    carry = {"resumes_folder": attrs["folder"], "resumes_host": attrs.get("host")}
    return {"continues": trial.number, **(carry if "folder" in attrs else {})}


def _claim(w: _Worker) -> tuple[optuna.Trial, int] | None:
    """A waiting trial, now running in this worker, or None when none is left. Trials whose
    worker stopped are failed first (and their settings queued again)."""
    study_id = w.storage.get_study_id_from_name(w.name)
    with _claims(w.claims):
        optuna.storages.fail_stale_trials(w.study)
        for t in w.study.get_trials(deepcopy=False, states=(TrialState.WAITING,)):
            trial_id = w.storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
            try:
                if not w.storage.set_trial_state_values(trial_id, state=TrialState.RUNNING):
                    continue  # another worker took it
            except optuna.exceptions.UpdateFinishedTrialError:
                continue
            w.storage.record_heartbeat(trial_id)
            return optuna.Trial(w.study, trial_id), trial_id
    return None


def _work(w: _Worker) -> None:
    """Claim and run trials until none is left; then wait for those running in other workers
    (a lost one comes back as a waiting trial, and this worker takes it)."""
    waited: list[int] = []
    while True:
        claimed = _claim(w)
        if claimed is not None:
            waited = []
            _run_trial(w, *claimed)
            continue
        running = [t.number for t in w.study.get_trials(False, states=(TrialState.RUNNING,))]
        if not running:
            return
        if running != waited:
            w.log(
                f"waiting for trial {', '.join(map(str, running))} (running in another worker; "
                f"a worker that stopped has its trial retried {GRACE_SECONDS} s after its last "
                "heartbeat)"
            )
            waited = running
        time.sleep(1.0)


@contextlib.contextmanager
def _heartbeat(storage: optuna.storages.RDBStorage, trial_id: int) -> Iterator[None]:
    """The trial's heartbeat while it runs (a thread; a database that does not answer for a
    moment only delays a beat)."""
    stop = threading.Event()

    def beat() -> None:
        while not stop.wait(HEARTBEAT_SECONDS):
            with contextlib.suppress(Exception):
                storage.record_heartbeat(trial_id)

    thread = threading.Thread(target=beat, name="sweep-heartbeat", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=2 * HEARTBEAT_SECONDS)


class _Pruning(Watcher):
    """Reports each epoch's validation accuracy to the trial, and prunes it when the pruner
    says so (never after the last epoch: there is nothing left to save)."""

    def __init__(self, trial: optuna.Trial, prune: bool) -> None:
        self.trial, self.prune = trial, prune
        self.reported: set[int] = set()

    def report(self, row: dict[str, Any]) -> None:
        if row.get("val_acc") is not None and row["epoch"] not in self.reported:
            self.trial.report(float(row["val_acc"]), int(row["epoch"]))
            self.reported.add(int(row["epoch"]))

    def epoch(self, trainer: Any, row: dict[str, Any]) -> None:
        self.report(row)
        last = row["epoch"] >= trainer.cfg.epochs
        if self.prune and not last and self.trial.should_prune():
            raise optuna.TrialPruned(
                f"pruned after epoch {row['epoch']}: validation accuracy "
                f"{100 * row['val_acc']:.1f}% below the median of earlier trials"
            )


def _suggest(trial: optuna.Trial, p: Param) -> Any:
    if p.kind == "choice":
        return trial.suggest_categorical(p.name, list(p.choices))
    if p.kind == "int":
        return trial.suggest_int(p.name, int(p.low), int(p.high), step=int(p.step or 1), log=p.log)
    return trial.suggest_float(p.name, p.low, p.high, step=p.step, log=p.log)


def _run_trial(w: _Worker, trial: optuna.Trial, trial_id: int) -> None:
    folder = w.folder / f"trial-{trial.number:03d}"
    start = time.perf_counter()
    try:
        trial.set_user_attr("folder", str(folder.resolve()))
        trial.set_user_attr("host", socket.gethostname())
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        params = {p.name: _suggest(trial, p) for p in w.plan.space.params}
        note = f" (continues trial {trial.user_attrs['continues']})" if (
            "continues" in trial.user_attrs) else ""  # fmt: skip
        w.log(f"trial {trial.number}{note}: {output.params_text(params)} → {folder}")
        with _heartbeat(w.storage, trial_id):
            value, record = _train_trial(w, trial, params, folder)
    except optuna.TrialPruned as e:
        seconds = time.perf_counter() - start
        if _tell(w, trial, trial_id, TrialState.PRUNED, pruned=str(e), seconds=seconds):
            _said(w, trial.number, str(e))
    except (KeyboardInterrupt, TrainingInterrupted):
        _interrupted(w, trial, "interrupted (Ctrl-C)")
        raise TrainingInterrupted(
            f"interrupted in trial {trial.number}: its settings are queued again and its "
            f"checkpoint kept; go on with: cifarlab sweep --resume {w.folder}"
        ) from None
    except (DataError, DownloadError, WriteError) as e:  # not the trial's fault: stop
        _interrupted(w, trial, f"stopped: {one_line(e, 300)}")
        raise
    except Exception as e:  # noqa: BLE001 - the trial's own failure: recorded, the sweep goes on
        reason = one_line(e, 500) if isinstance(e, CifarlabError) else (
            f"{type(e).__name__}: {one_line(e, 400)}")  # fmt: skip
        seconds = time.perf_counter() - start
        if _tell(w, trial, trial_id, TrialState.FAIL, failed=reason, seconds=seconds):
            _said(w, trial.number, f"failed: {reason}")
    else:
        attrs = {"seconds": record.get("train_seconds"), "steps": record.get("steps_trained")}
        if _tell(w, trial, trial_id, TrialState.COMPLETE, value, **attrs):
            _said(w, trial.number, f"validation accuracy {100 * value:.2f}%")


def _tell(
    w: _Worker,
    trial: optuna.Trial,
    trial_id: int,
    state: TrialState,
    value: float | None = None,
    **attrs: Any,
) -> bool:
    """Record the trial's end (its attributes, then its state); False if it had ended
    already: failed by another worker after a stall longer than :data:`GRACE_SECONDS` without
    a heartbeat (a trial with its settings was queued then, and resumes its run)."""
    try:
        for key, v in attrs.items():
            if v is not None:
                trial.set_user_attr(key, v)
        w.study.tell(trial, value, state=state, skip_if_finished=True)
    except optuna.exceptions.UpdateFinishedTrialError:
        pass
    ended = w.storage.get_trial(trial_id)
    if ended.state == state and all(ended.user_attrs.get(k) == v for k, v in attrs.items()
                                    if v is not None):  # fmt: skip
        return True
    w.log(
        f"trial {trial.number}: its heartbeat stopped for {GRACE_SECONDS} s or more, and it was "
        "taken for lost: a trial with its settings runs it again"
    )
    return False


def _train_trial(
    w: _Worker, trial: optuna.Trial, params: dict[str, Any], folder: Path
) -> tuple[float, dict[str, Any]]:
    """Train the trial into ``folder`` (or resume the run of the trial it continues) and
    return its best validation accuracy and its run record."""
    watcher = _Pruning(trial, w.plan.pruning)
    if _carry_over(trial, folder):
        for row in RunFolder(folder).read_metrics():
            watcher.report(row)
        w.log(f"  resuming the run of trial {trial.user_attrs['continues']} in {folder}")
        train(
            resume=folder,
            changes=dict(w.local),
            progress=w.progress,
            watchers=[watcher],
            calibrate=False,  # evaluate fits the chosen trial's temperature later
        )
    else:
        cfg = make_config(**w.plan.changes(params), **w.local)
        if cfg.budget is not None:
            cfg.steps = budget_steps(cfg)
        train(cfg, out=folder, progress=w.progress, watchers=[watcher], calibrate=False)
    record = RunFolder(folder).read_config()
    value = record.get("best_val_acc")
    if not isinstance(value, int | float):
        raise CifarlabError(f"{folder}: the run recorded no validation accuracy")
    return float(value), record


def budget_steps(cfg: TrainConfig) -> int:
    """A first guess at the steps of ``cfg`` that fit in its ``budget``, from this machine's
    measured speed for its network (``train/probe.py``: a second or two, then cached per
    machine), as ``--budget``'s planner guesses. The trainer's pacer then re-plans the steps
    from the pace it measures (it re-plans every 1/20 of the steps: it corrects a guess that
    is somewhat off, not one of 6 steps for 600, which the recipe's epochs can be)."""
    device = devices.resolve_device(cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    info = get_info(cfg.dataset)
    classes = info.num_coarse_classes if cfg.labels == "coarse" else info.num_classes
    what = {"num_classes": classes or info.num_classes, "model_args": cfg.model_args,
            "channels_last": cfg.channels_last, "device": device}  # fmt: skip
    precision = cfg.precision
    speeds: list[probe.Speed] = []
    if precision == "auto":
        choice = probe.choose_precision(cfg.model, batch_size=cfg.batch_size, **what)
        precision, speeds = choice.precision, choice.speeds
    speeds = [s for s in speeds if s.precision == precision] or probe.measure(
        cfg.model, batch_sizes=(cfg.batch_size,), precisions=(precision,), **what
    )
    images_per_s = speeds[0].images_per_s
    num_train = min(cfg.train_size or info.train_size, info.train_size - cfg.val_size)
    per_epoch = max(1, math.ceil(num_train / cfg.batch_size))
    step_s = cfg.batch_size / images_per_s * budgets.recipe_step_cost(cfg)
    val_s = cfg.val_size / (images_per_s * budgets.EVAL_SPEEDUP)
    avail = cfg.budget * budgets.TARGET - budgets.SETUP_SECONDS - DATA_SECONDS
    return max(1, int(avail / (step_s + val_s / per_epoch)))


def _carry_over(trial: optuna.Trial, folder: Path) -> bool:
    """For a trial that continues an interrupted one whose run folder is on this machine, with
    a checkpoint: move that folder to this trial's (it then resumes)."""
    attrs = trial.user_attrs
    old = attrs.get("resumes_folder")
    if old is None or attrs.get("resumes_host") != socket.gethostname() or folder.exists():
        return False
    old = Path(old)
    if not RunFolder(old).checkpoint_path("last").is_file():
        return False
    try:
        os.rename(old, folder)
    except OSError:  # another file system, or gone: train it afresh
        return False
    return True


def _interrupted(w: _Worker, trial: optuna.Trial, why: str) -> None:
    """The trial stopped for a reason of its worker's: recorded as failed without counting,
    and its settings queued again. Never hides the interruption itself."""
    with contextlib.suppress(Exception):
        trial.set_user_attr("interrupted", why)
        continuation = _continuation(trial)
        w.study.tell(trial, state=TrialState.FAIL)
        w.study.enqueue_trial(trial.params, user_attrs=continuation)


def _said(w: _Worker, number: int, what: str) -> None:
    trials = w.study.get_trials(deepcopy=False)
    counted = _counted(trials)
    done = sum(t.state.is_finished() for t in counted)
    best = [t for t in trials if t.state == TrialState.COMPLETE]
    top = max(best, key=lambda t: t.value) if best else None
    best_text = f"; best: trial {top.number}, {100 * top.value:.2f}%" if top else ""
    w.log(f"trial {number} ({done}/{w.plan.trials} done): {what}{best_text}")


# --------------------------------------------------------------------------- the end


def _finish(w: _Worker) -> SweepResult:
    """The records of every trial of the study, and the sweep folder's outputs."""
    trials = w.study.get_trials(deepcopy=False)
    records = output.records(trials)
    best = output.best_record(records)
    names = w.plan.space.names
    files = [output.write_csv(w.folder, records, names)]
    if best is not None:
        header = _best_header(w, best, records)
        settings = w.plan.changes(best["params"])
        if w.plan.budget is not None and best.get("steps"):  # what the trial trained, exactly
            settings.pop("budget")
            settings["steps"] = best["steps"]
        files.append(output.write_best(w.folder, settings, header))
    importances, why = _importances(w.study)
    files.append(
        output.write_html(
            w.folder, _title(w), _description(w), records, w.plan.space, importances, why, best
        )
    )
    return SweepResult(w.folder, w.name, w.plan, records, best, output.table(records, names), files)


def _title(w: _Worker) -> str:
    return f"Sweep {w.name}"


def _description(w: _Worker) -> list[str]:
    plan = w.plan
    cfg = make_config(**plan.fixed(), **w.local)
    length = (
        f"{format_duration(plan.budget)} of training each" if plan.budget is not None
        else f"{cfg.epochs} epoch{'s' if cfg.epochs != 1 else ''} each"
    )  # fmt: skip
    data = f"{cfg.train_size:,} training images" if cfg.train_size else "the training split"
    return [
        f"{plan.trials} trials over {plan.space.source} ({length}, recipe {cfg.recipe}, "
        f"{cfg.model}), trained on {data} less the {cfg.val_size:,} validation images held out.",
        "Each trial is scored by its best validation accuracy, without test-time augmentation; "
        "the test split is never evaluated during a sweep. Optuna's TPE sampler chose the "
        "settings"
        + (", and a median pruner stopped trials that fell behind." if plan.pruning else "."),
    ]


def _best_header(w: _Worker, best: dict[str, Any], records: list[dict[str, Any]]) -> list[str]:
    done = sum(r["state"] in ("complete", "pruned", "failed") for r in records)
    lines = [
        f"cifarlab sweep {w.name}: the best of {done} trials, trial {best['number']}, "
        f"validation accuracy {100 * best['value']:.2f}% (without test-time augmentation)",
        "train it: cifarlab train --config best.toml (evaluate it: cifarlab evaluate RUN)",
    ]
    if w.plan.settings.get("train_size"):
        lines.append("the sweep trained on a subset: remove train_size to train on all images")
    if w.plan.budget is not None and best.get("steps"):
        lines.append(
            f"steps: the {best['steps']} steps the trial fitted in its budget of "
            f"{format_duration(w.plan.budget)} (budget = {w.plan.budget:g} instead: train for "
            "that time again, on any machine)"
        )
    return lines


def _importances(study: optuna.Study) -> tuple[dict[str, float], str]:
    """Each searched setting's share of the variation in validation accuracy (fANOVA, as
    Optuna's default, with scikit-learn; else PED-ANOVA), or why there are none."""
    complete = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    if len(complete) < 3:
        return {}, f"needs 3 finished trials or more ({len(complete)} here)"
    try:
        import sklearn  # noqa: F401 - fANOVA's random forest

        evaluator = optuna.importance.FanovaImportanceEvaluator(seed=0)
    except ImportError:
        evaluator = optuna.importance.PedAnovaImportanceEvaluator()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            found = optuna.importance.get_param_importances(study, evaluator=evaluator)
    except Exception as e:  # noqa: BLE001 - too few distinct values, in Optuna's words
        return {}, one_line(e, 200)
    return {k: float(v) for k, v in found.items()}, ""
