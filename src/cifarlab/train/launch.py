"""``train()``: one call, from its arguments to a finished run folder. It checks what it is
asked (a new run, a resumed one, a budget, a model of the user's own) into a :class:`Job`
before anything is loaded; builds the parts (:mod:`cifarlab.train.setup`); hands them to the
:class:`~cifarlab.train.engine.Trainer`, whose loop trains; records the run in its
``config.json``; and calibrates the best checkpoint on the validation split at the end.

It stands one floor above the loop: calibrating opens the trained run
(:mod:`cifarlab.trained`), as evaluation does.
"""

from __future__ import annotations

import contextlib
import math
import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab.data.dataset import CifarDataset
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.evaluate.run import fit_opened
from cifarlab.models import count_parameters
from cifarlab.runs import LAST, RunFolder
from cifarlab.train import budget as budgets
from cifarlab.train import device as devices
from cifarlab.train import distributed, probe, setup
from cifarlab.train import tensorboard as board
from cifarlab.train.config import BUDGET_FIELDS, TrainConfig
from cifarlab.train.engine import Trainer, TrainingError, Watcher
from cifarlab.train.provenance import provenance
from cifarlab.train.recipe_data import RECIPE_DATA, recorded_version
from cifarlab.train.recipes import recipe_config
from cifarlab.train.resume import ResumeCheck, prepare_resume, repair
from cifarlab.train.setup import ModelLike
from cifarlab.trained import open_run


@dataclass
class Job:
    """One call of :func:`train`, checked: what it trains, into which folder, and what was
    found or decided before training starts."""

    cfg: TrainConfig  # resolved
    folder: RunFolder
    clock: float  # perf_counter() when train() was called: a budget counts from there
    progress: bool = True
    model: ModelLike | None = None  # a model of the user's own
    plan: budgets.Plan | None = None  # a budget's plan
    data: CifarDataset | None = None  # the data a budget's plan loaded (the run reuses it)
    state: dict[str, Any] | None = None  # the checkpoint a resumed run goes on from
    found: ResumeCheck | None = None  # what the resume check found in the folder
    device: str = "auto"  # the device this process trains on (set by distributed.setup)
    watchers: Sequence[Watcher] = ()  # what follows the run as it trains (rank 0)
    calibrate: bool = True  # fit the best checkpoint's temperature on val at the end


def train(
    config: TrainConfig | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    progress: bool = True,
    changes: dict[str, Any] | None = None,
    budget: str | float | None = None,
    budget_model: str | None = None,
    model: ModelLike | None = None,
    watchers: Sequence[Watcher] = (),
    tensorboard: bool | None = None,
    calibrate: bool = True,
) -> Path:
    """Train ``config`` into a run folder (``out``, default ``runs/<model>-<dataset>-<time>``),
    or continue the interrupted run in ``resume``. Returns the run folder.

    ``config`` fields left ``None`` come from its recipe, else the model's default recipe
    (:meth:`TrainConfig.resolved`). ``model`` trains a model of your own instead of
    ``config.model``: an ``nn.Module``, or a builder called with ``num_classes`` (and
    ``config.model_args``). The run records its import path (``"package.module:Name"``), so
    that ``evaluate``, ``predict`` and ``export`` can rebuild it where that module imports (a
    module instance is rebuilt as ``type(module)(num_classes=...)``). Without a recipe it
    trains with the ``original`` recipe's settings.

    A resumed run keeps its settings, except those in ``changes`` (only the fields of
    :data:`~cifarlab.train.config.RESUME_CHANGES`: more ``epochs``, another ``device``, data
    ``root`` or ``threads``); ``config.epochs``, if given with ``resume``, extends the run.

    ``budget`` (``"90s"``, ``"5m"``, ``"1h"`` or seconds) trains to a time budget instead: the
    network, precision and number of steps are chosen by measuring this machine (see
    :mod:`cifarlab.train.budget`); ``config`` then only supplies the data and run settings
    (:data:`~cifarlab.train.config.BUDGET_FIELDS`) and ``budget_model`` may restrict the
    choice to one network. ``watchers`` (:class:`~cifarlab.train.engine.Watcher`) follow the
    run step by step and epoch by epoch. The whole call — data loading and the probe
    included — ends within the budget. ``tensorboard``: TensorBoard event files in the run
    folder (:mod:`cifarlab.train.tensorboard`; None: when the package is installed, unless
    ``CIFARLAB_TENSORBOARD=0``; False: none; True: the package must be installed).
    ``calibrate=False`` skips fitting the temperature at the end (a sweep's trials: ``cifarlab
    evaluate`` fits it later).

    Launched by ``torchrun`` (several processes), every process calls this: they join one
    process group, each trains on its part of every global batch, and rank 0 alone prints and
    writes the run folder.
    """
    clock = time.perf_counter()  # a budget counts from here
    boarded = board.wanted(tensorboard)  # asked for without the package: before anything
    if resume is not None:
        job = _resume_job(Path(resume), config, changes, budget, clock)
    else:
        job = _new_job(config, out, budget, budget_model, model, clock)
    job.progress = progress
    job.calibrate = calibrate
    job.watchers = [*([board.TensorBoardWatcher()] if boarded else []), *watchers]
    joined = distributed.launched_by_torchrun() and not distributed.is_distributed()
    job.device = distributed.setup(job.cfg.device)
    run_dir = job.folder.path
    try:
        distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
        return _run(job)
    except (RuntimeError, ConnectionError) as e:
        if not (distributed.is_distributed() and distributed.is_peer_error(e)):
            raise
        raise TrainingError(
            f"rank {devices.rank()}: lost contact with the other training processes "
            f"({distributed.short(e)}); the last checkpoint is {run_dir / LAST} "
            f"(resume with: cifarlab train --resume {run_dir})"
        ) from None
    finally:
        if joined:
            distributed.teardown()


# --------------------------------------------------------------------------- the job


def _resume_job(
    run_dir: Path,
    config: TrainConfig | None,
    changes: dict[str, Any] | None,
    budget: str | float | None,
    clock: float,
) -> Job:
    if budget is not None:
        raise SettingError("budget", "starts a new run; a resumed run keeps its own budget")
    changes = dict(changes or {})
    if config is not None and config.epochs:
        changes.setdefault("epochs", config.epochs)  # resuming may extend a run
    folder = RunFolder(run_dir)
    cfg, state, found = prepare_resume(folder, changes)
    return Job(cfg, folder, clock, state=state, found=found)


def _new_job(
    config: TrainConfig | None,
    out: str | os.PathLike | None,
    budget: str | float | None,
    budget_model: str | None,
    model: ModelLike | None,
    clock: float,
) -> Job:
    if config is None and budget is None:
        raise CifarlabError("train() needs a config or resume=")
    if out is None and distributed.launched_by_torchrun():
        raise CifarlabError("under torchrun, name the run folder with --out")
    if budget is not None:
        if model is not None:
            raise CifarlabError(
                "a budget chooses among cifarlab's networks: it does not train a model of your own"
            )
        base = config or TrainConfig()
        folder = RunFolder(Path(out) if out is not None else default_run_dir(base, "budget"))
        folder.check_new()
        cfg, plan, data = _plan_budget(base, budget, budget_model, clock)
        return Job(cfg, folder, clock, plan=plan, data=data)
    if model is not None:
        config = setup.own_model_config(config, model)
    cfg = config.resolved()
    if model is None:
        setup.check_model_size(cfg)
    folder = RunFolder(Path(out) if out is not None else default_run_dir(cfg))
    folder.check_new()
    return Job(cfg, folder, clock, model=model)


def default_run_dir(cfg: TrainConfig, name: str | None = None) -> Path:
    return Path("runs") / f"{name or cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def _plan_budget(
    base: TrainConfig, budget: str | float, only: str | None, clock: float
) -> tuple[TrainConfig, budgets.Plan, CifarDataset]:
    """The config a budgeted run trains: the chosen candidate's recipe, its step count and
    precision, with the data and run settings of ``base``; the plan; and the data it loaded
    (the trainer reuses it)."""
    seconds = budgets.parse_duration(budget)
    if distributed.launched_by_torchrun():
        raise SettingError(
            "budget",
            "measures one process on this machine: it does not run "
            "under torchrun; give a recipe or a number of epochs there",
        )
    base.resolved()  # every setting valid (--train-size, --threads, ...) before any work
    data = setup.load_data(base)
    num_train = len(data.train)
    if base.train_size is not None:
        num_train = min(num_train, base.train_size)
    dev = devices.resolve_device(base.device)
    if base.threads:
        torch.set_num_threads(base.threads)
    say = print if devices.rank() == 0 else None
    if say:
        print(
            f"measuring this machine for --budget {budgets.format_duration(seconds)} "
            f"({probe.describe_machine()})",
            flush=True,
        )
    plan = budgets.plan(
        seconds,
        num_train=num_train,
        val_size=len(data.val),
        num_classes=data.num_classes,
        dataset=base.dataset,
        device=dev,
        spent=time.perf_counter() - clock,
        only=only,
        log=say,
    )
    c = plan.chosen
    given = {k: getattr(base, k) for k in BUDGET_FIELDS if getattr(base, k) is not None}
    cfg = recipe_config(
        c.recipe,
        **given,
        batch_size=c.batch_size,
        precision=c.precision,
        steps=c.steps,
        epochs=max(1, math.ceil(c.epochs - 1e-9)),
        budget=seconds,
    ).resolved()
    if say:
        print(plan.reason(), flush=True)
    return cfg, plan, data


# --------------------------------------------------------------------------- the run


def _run(job: Job) -> Path:
    main = devices.rank() == 0
    with job.folder.lock(resuming=job.state is not None) if main else contextlib.nullcontext():
        if job.found is not None and main:
            repair(job.folder, job.found)  # what a resume found missing and can rebuild
        trainer = _start(job)
        records = _records(job, trainer)
        if trainer.main:
            job.folder.write_config({**job.cfg.to_dict(), **records})
        trainer.fit()
        _finish(job, trainer, records)
    return job.folder.path


def _start(job: Job) -> Trainer:
    """The trainer of ``job``, built, on the state it starts from: a resumed run's checkpoint,
    or for a new run a whitening stem set from the training images."""
    cfg, folder = job.cfg, job.folder
    if cfg.budget is not None and distributed.is_distributed():
        raise CifarlabError("a --budget run measures one process: resume it without torchrun")
    parts = setup.build(
        cfg,
        job.device,
        data=job.data,
        model=job.model,
        saved_precision=_saved_precision(job),
        saved_weight_grad=_saved_weight_grad(job),
    )
    pacer = None
    if cfg.budget is not None:
        used = float((job.state or {}).get("budget_used") or 0.0)
        budget = budgets.Budget(cfg.budget, used, start=job.clock)
        pacer = budgets.Pacer(budget, cfg, len(parts.loader), len(parts.data.val))
    trainer = Trainer(cfg, folder, parts, pacer=pacer, progress=job.progress, watchers=job.watchers)
    if trainer.main:
        folder.path.mkdir(parents=True, exist_ok=True)
    if job.state is None:
        if trainer.main:  # a folder left by an attempt that stopped before its first checkpoint
            folder.trim_metrics(0)
        trainer.init_whitening()
        if isinstance(job.model, nn.Module):
            setup.check_rebuild(cfg, parts.data.num_classes, trainer.model)
        return trainer
    trainer.restore(job.state, job.found.source if job.found is not None else folder.path / LAST)
    if trainer.main:
        folder.trim_metrics(trainer.epoch)
    if trainer.main and trainer.epoch >= cfg.epochs:
        lost = job.found.lost_epochs if job.found is not None else []
        gaps = (
            (f" ({folder.metrics_path.name} lacks epoch(s) {', '.join(map(str, lost))}: lost)")
            if lost
            else ""
        )
        print(f"{folder.path} has finished all {cfg.epochs} epochs{gaps}; nothing to resume")
    elif trainer.main:
        print(
            f"resuming {folder.path} at epoch {trainer.epoch + 1}, step {trainer.step}"
            f"{f' on {trainer.world} processes' if trainer.world > 1 else ''}"
        )
    return trainer


def _saved_precision(job: Job) -> str | None:
    """The precision a resumed ``auto`` run chose (measured again on another kind of device)."""
    if job.state is None or job.cfg.precision != "auto":
        return None
    here = devices.resolve_device(job.device)
    if "precision_used" not in job.state:  # written before auto was measured: the flag rule
        return "bf16" if devices.autocast_dtype("auto", here) else "fp32"
    if job.state.get("device_type") == here.type:
        return job.state.get("precision_used")
    return None


def _saved_weight_grad(job: Job) -> str | None:
    """How a resumed run's steps took their weight gradients, on the same kind of device."""
    if job.state is None or job.state.get("device_type") != devices.resolve_device(job.device).type:
        return None
    return job.state.get("weight_grad_used")


def _records(job: Job, trainer: Trainer) -> dict[str, Any]:
    """What ``config.json`` records beside the settings: the data, the model, the machine,
    the precision and why, a budget's plan; a resumed run keeps what its first session
    chose."""
    parts = trainer.parts
    records: dict[str, Any] = {
        "num_classes": parts.data.num_classes,
        "class_names": parts.data.class_names,
        "params": count_parameters(trainer.model),
        "device_used": str(trainer.device),
        "train_images": parts.num_train,
        "world_size": trainer.world,
        "precision_used": trainer.precision_used,
        "weight_grad_used": trainer.weight_grad_used,
        "machine": probe.describe_machine(),
        "provenance": provenance(trainer.device),
    }
    recipe = RECIPE_DATA.get(job.cfg.recipe or "")
    if recipe is not None:
        records["recipe_version"] = recipe.version
    source = setup.model_source(job.cfg) if job.state is None else None
    if source:
        records["model_source"] = source
    if parts.precision_choice is not None:
        records["precision_choice"] = parts.precision_choice.to_dict()
    if job.plan is not None:
        records["budget_plan"] = job.plan.to_dict()
    if job.state is not None:  # resumed: keep the record of what the first session chose
        old = job.found.config if job.found is not None else job.folder.read_config_if_any()
        for key in ("budget_plan", "precision_choice", "model_source"):
            if key in old and key not in records:
                records[key] = old[key]
        if "recipe_version" in records:  # what the first session trained (1: not recorded)
            records["recipe_version"] = recorded_version(old)
    return records


def _finish(job: Job, trainer: Trainer, records: dict[str, Any]) -> None:
    """After the last epoch: the final records (time, best score, a budget's use), then the
    temperature of the best checkpoint."""
    digests = distributed.weight_digests(trainer.model)
    if not trainer.main:
        return
    final = {**records, "train_seconds": trainer.elapsed, "best_val_acc": trainer.best_val}
    if trainer.pacer is not None:
        final.update(
            budget_used_seconds=trainer.pacer.budget.used(),
            budget_replans=trainer.pacer.replans,
            steps_trained=trainer.total_steps,
        )
    if trainer.world > 1:
        final["rank_weight_digests"] = digests  # equal on every rank, or DDP went wrong
    job.folder.write_config({**job.cfg.to_dict(), **final})
    if not job.calibrate:
        return
    if trainer.pacer is None:
        _calibrate(job.folder.path, trainer)
    else:  # the budget is the promise: a pass over val after it would break it
        print(
            "calibration: not fitted at the end of a --budget run (it would overrun the "
            f"budget); cifarlab evaluate {job.folder.path} fits it",
            flush=True,
        )


def _calibrate(run_dir: Path, trainer: Trainer) -> None:
    """Fit the best checkpoint's temperature on the validation split (calibration.json), and
    say what it did to the validation NLL and ECE."""
    start = time.perf_counter()
    try:
        run = open_run(run_dir, "best", str(trainer.device), calibrated=False)
    except CifarlabError as e:  # a model of the user's that cannot be rebuilt from the folder
        print(f"calibration: not fitted ({e})", flush=True)
        return
    record = fit_opened(run, trainer.data)
    if record["temperature"] is None:
        print(f"calibration: none ({record['reason']})", flush=True)
        return
    print(
        f"calibration: temperature {record['temperature']:.3f} fitted on "
        f"{record['images']:,} validation images: NLL {record['nll_before']:.4f} → "
        f"{record['nll_after']:.4f}, ECE {record['ece_before']:.2%} → "
        f"{record['ece_after']:.2%} ({time.perf_counter() - start:.1f}s)",
        flush=True,
    )
