"""The training loop: one epoch after another over a BatchLoader, a line per epoch, metrics
and checkpoints in the run folder, exact resume, clean Ctrl-C.

Rank-aware from the start: every rank trains on its own shard of each epoch (the loader's
``rank``/``world_size``), only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import hashlib
import inspect
import json
import math
import os
import random
import signal
import sys
import threading
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cifarlab.data.augment import Augment, normalize
from cifarlab.data.dataset import CifarDataset, load_dataset, stratified_holdout
from cifarlab.data.loader import BatchLoader
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.evaluate.inference import eval_loader, loss_and_accuracy, predict_logits
from cifarlab.models import (
    count_parameters,
    create_model,
    get_entry,
    import_path,
    reopen_problem,
)
from cifarlab.runs import (
    BEST,
    LAST,
    ResumeCheck,
    RunFolder,
    open_run,
    planned_shapes,
    provenance,
    shapes,
    weights_problem,
)
from cifarlab.train import budget as budgets
from cifarlab.train import device as devices
from cifarlab.train import distributed, probe
from cifarlab.train.checkpoint import clean_state_dict
from cifarlab.train.config import BUDGET_FIELDS, TrainConfig, resume_config
from cifarlab.train.optim import Lookahead, build_optimizer, lr_factor, set_lr

# What ``train(model=...)`` takes: a module to train, or a builder called with num_classes.
ModelLike = nn.Module | Callable[..., nn.Module]


class TrainingError(CifarlabError):
    """Training cannot go on (e.g. the loss became NaN)."""


class TrainingInterrupted(CifarlabError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""


class _StopRequested(Exception):
    """Raised at a step boundary after Ctrl-C, to leave the loop."""


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def default_run_dir(cfg: TrainConfig, name: str | None = None) -> Path:
    return Path("runs") / f"{name or cfg.model}-{cfg.dataset}-{time.strftime('%Y%m%d-%H%M%S')}"


def load_data(cfg: TrainConfig) -> CifarDataset:
    return load_dataset(cfg.dataset, cfg.root, val_size=cfg.val_size, labels=cfg.labels)


@dataclass
class _Totals:
    """Running sums of one epoch (kept as tensors: no device sync per step)."""

    loss: torch.Tensor
    correct: torch.Tensor
    seen: int = 0
    seconds: float = 0.0

    @classmethod
    def zeros(cls, device: torch.device) -> _Totals:
        return cls(torch.zeros((), device=device), torch.zeros((), device=device))

    def to_state(self) -> dict:
        return {
            "loss": self.loss.item(),
            "correct": self.correct.item(),
            "seen": self.seen,
            "seconds": self.seconds,
        }

    def summed(self, device: torch.device) -> tuple[float, float, int]:
        """Loss, correct and seen summed over every rank (a collective: all ranks call it)."""
        loss, correct, seen = distributed.all_sum(
            [self.loss.item(), self.correct.item(), float(self.seen)], device
        )
        return loss, correct, int(seen)

    @classmethod
    def from_state(cls, s: dict, device: torch.device) -> _Totals:
        return cls(
            torch.tensor(s["loss"], device=device, dtype=torch.float32),
            torch.tensor(s["correct"], device=device, dtype=torch.float32),
            s["seen"],
            s["seconds"],
        )


# DDP's option to broadcast rank 0's buffers at every forward: renamed in recent PyTorch.
_SYNC_BUFFERS = (
    {"forward_sync_buffers": True}
    if "forward_sync_buffers" in inspect.signature(DistributedDataParallel.__init__).parameters
    else {"broadcast_buffers": True}
)


class Trainer:
    """Holds the model, optimizer, loaders and run folder of one training run."""

    WHITEN_SAMPLE = 5000  # training images whose patches set a whitening stem
    WARMUP_STEPS = 3  # a session's first steps, left out of its measured pace

    def __init__(
        self,
        cfg: TrainConfig,
        run_dir: Path,
        *,
        progress: bool = True,
        device: str | None = None,
        precision_used: str | None = None,
        budget: budgets.Budget | None = None,
        data: CifarDataset | None = None,
        model: ModelLike | None = None,
    ) -> None:
        self.cfg, self.run_dir, self.progress = cfg, run_dir, progress
        self.folder = RunFolder(run_dir)
        self.rank, self.world = devices.rank(), devices.world_size()
        self.main = self.rank == 0
        self.device = devices.resolve_device(device or cfg.device)
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        seed_everything(cfg.seed)
        # Flush denormal floats to zero. As training goes on, some of Adam's moments (and
        # gradients) decay into the denormal range, where x86 arithmetic is many times slower:
        # the mlp's step went from 28 ms to 85 ms after ~600 steps without this. Zero instead
        # of a number below 1e-38 changes no result that matters.
        torch.set_flush_denormal(True)
        self.budget = budget
        self.data = data if data is not None else load_data(cfg)
        train = self.data.train
        images, labels = train.images, train.labels
        if cfg.train_size is not None and cfg.train_size < len(labels):
            keep = torch.from_numpy(stratified_holdout(labels.numpy(), cfg.train_size, seed=0))
            images, labels = images[keep], labels[keep]
        elif cfg.train_size is not None and cfg.train_size > len(labels) and self.main:
            warnings.warn(f"train_size {cfg.train_size} is more than the {len(labels)} training "
                          "images: training on all of them", stacklevel=2)  # fmt: skip
        self.num_train = len(labels)
        self.mean, self.std = cfg.normalization()
        self.loader = BatchLoader(
            images,
            labels,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed,
            device=self.device,
            augment=Augment(**cfg.augment),
            mean=self.mean,
            std=self.std,
            channels_last=cfg.channels_last,
            rank=self.rank,
            world_size=self.world,
        )
        self.val_loader = None
        if len(self.data.val):
            self.val_loader = eval_loader(
                self.data.val.images,
                self.data.val.labels,
                batch_size=cfg.eval_batch_size,
                device=self.device,
                mean=self.mean,
                std=self.std,
                channels_last=cfg.channels_last,
            )
        self.model = _build(cfg, self.data.num_classes, model)
        self._own_model = model is not None
        self.precision_used, self.precision_choice = self._choose_precision(precision_used)
        self.autocast = torch.bfloat16 if self.precision_used == "bf16" else None
        if cfg.sync_bn:
            if self.device.type != "cuda":
                raise CifarlabError("sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm)")
            self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
        self.model = self.model.to(self.device)
        if cfg.channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self._ddp_key: tuple[int, ...] | None = None  # the trainable set DDP was built for
        self.optimizer = build_optimizer(cfg, self.model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        if cfg.steps is not None:  # a step count (from --budget): the last epoch may be partial
            cfg.epochs = math.ceil(cfg.steps / len(self.loader))
        self.total_steps = cfg.steps or cfg.epochs * len(self.loader)
        self.replans: list[list[int]] = []  # [at step, old total, new total] (--budget)
        # Pace of this session (--budget): steps and validation seconds since the mark, set
        # after the first steps (which build oneDNN's kernels and run slow).
        self._session_steps, self._mark, self._mark_steps, self._val_since_mark = 0, None, 0, 0.0
        self._units = 0.0  # steps since the mark, each weighted by its cost (image size)
        self._val_seconds: float | None = None
        self.lookahead: Lookahead | None = None
        self.epoch, self.step, self.best_val = 0, 0, -math.inf
        self.best_epoch: int | None = None  # the epoch best.pt holds
        self.last_row: dict[str, Any] | None = None  # metrics row of the last finished epoch
        self.totals = _Totals.zeros(self.device)
        self.elapsed = 0.0  # training seconds over all sessions of this run

    def _choose_precision(self, saved: str | None) -> tuple[str, probe.PrecisionChoice | None]:
        """fp32 or bf16. ``auto`` is decided by timing this model's training step here (or the
        decision a resumed run made); under torchrun rank 0 measures and tells the others."""
        cfg = self.cfg
        if cfg.precision != "auto":
            return cfg.precision, None
        if saved in ("fp32", "bf16"):
            return saved, None
        choice = None
        bf16 = 0.0
        if self.main:
            choice = probe.choose_precision(
                cfg.model,
                # a model passed in may not import by its path: the probe times copies of it
                # (untrained yet: precision is chosen before the first step)
                build=(lambda: copy.deepcopy(self.model)) if self._own_model else None,
                num_classes=self.data.num_classes,
                model_args=self._probe_key_args(),
                batch_size=cfg.batch_size,
                channels_last=cfg.channels_last,
                device=self.device,
            )
            bf16 = 1.0 if choice.precision == "bf16" else 0.0
            print(f"precision auto → {choice.precision}: {choice.reason}", flush=True)
        (bf16,) = distributed.all_sum([bf16], self.device)
        return ("bf16" if bf16 > 0 else "fp32"), choice

    def _probe_key_args(self) -> dict[str, Any]:
        """What tells the probe cache this model from others: its options, and for a model
        passed in (whose source may change under the same name) the shapes of its weights."""
        if not self._own_model:
            return self.cfg.model_args
        text = json.dumps(sorted(shapes(self.model).items()))
        return {**self.cfg.model_args, "_shapes": hashlib.sha1(text.encode()).hexdigest()[:12]}

    # ------------------------------------------------------------------ state

    def state(self) -> dict[str, Any]:
        return {
            "model": clean_state_dict(self.model.state_dict()),
            "optimizer": self.optimizer.state_dict(),
            "lookahead": self.lookahead.state_dict() if self.lookahead else None,
            "epoch": self.epoch,
            "step": self.step,
            "best_val_acc": self.best_val,
            "totals": self.totals.to_state(),
            "elapsed": self.elapsed,
            "precision_used": self.precision_used,
            "device_type": self.device.type,
            "budget_used": self.budget.used() if self.budget else None,
            "replans": self.replans,
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "class_names": self.data.class_names,
            # what a resume needs to rebuild a lost metrics row or best.pt (runs.check_resume)
            "row": self.last_row,
            "best_epoch": self.best_epoch,
        }

    def restore(self, state: dict[str, Any], source: str | os.PathLike = "the checkpoint") -> None:
        """Go on from ``state`` (checked against its schema by the caller); a state that
        does not fit this run's model, optimizer or generator is an error naming ``source``
        and what does not fit."""
        weights = clean_state_dict(state["model"])
        problem = weights_problem(shapes(self.model), weights)
        if problem:
            raise CifarlabError(f"{source}: the weights do not fit model {self.cfg.model!r} "
                                f"with model_args {self.cfg.model_args} ({problem}): the "
                                "checkpoint is from another model")  # fmt: skip
        steps = [
            ("model weights", lambda: self.model.load_state_dict(weights)),
            ("optimizer", lambda: self.optimizer.load_state_dict(state["optimizer"])),
            ("lookahead", lambda: self._restore_lookahead(state.get("lookahead"))),
            ("torch_rng", lambda: torch.set_rng_state(state["torch_rng"])),
        ]
        for what, step in steps:
            try:
                step()
            except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
                line = next((x.strip() for x in str(e).splitlines() if x.strip()), "")
                raise CifarlabError(f"{source}: its {what} state does not fit this run "
                                    f"({type(e).__name__}: {line[:200]})") from None  # fmt: skip
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_val = float(state["best_val_acc"])
        # The saved sums are the whole job's: rank 0 carries them on, the others start at 0.
        saved = state["totals"] if self.main else {**state["totals"], "loss": 0.0,
                                                    "correct": 0.0, "seen": 0}  # fmt: skip
        self.totals = _Totals.from_state(saved, self.device)
        self.elapsed = float(state["elapsed"])
        self.replans = list(state.get("replans") or [])
        self.last_row = state.get("row")
        self.best_epoch = state.get("best_epoch")

    def _restore_lookahead(self, saved: dict[str, torch.Tensor] | None) -> None:
        if saved is None:
            return
        problem = weights_problem(shapes(self.model), saved)
        if problem:
            raise ValueError(problem)
        self.lookahead = Lookahead(self.model)
        self.lookahead.load_state_dict(saved)

    def save(self, name: str) -> None:
        """Rank 0 writes the checkpoint. Every rank calls this at the same step: the epoch's
        running sums are added up over the ranks first, so that a run resumed mid-epoch on
        any number of processes goes on from the whole job's sums, not rank 0's share."""
        loss, correct, seen = self.totals.summed(self.device)
        if self.main:
            state = self.state()
            state["totals"].update(loss=loss, correct=correct, seen=seen)
            self.folder.save_checkpoint(name, state)

    # ------------------------------------------------------------------ loop

    def _autocast(self) -> contextlib.AbstractContextManager:
        return devices.autocast_context(self.device, self.autocast)

    def init_whitening(self) -> None:
        """Set a whitening stem (FastNet) from the patches of the first training images: once,
        at the start of a new run (its result is in every checkpoint)."""
        init = getattr(self.model, "init_whitening", None)
        if init is None:
            return
        t0 = time.perf_counter()
        sample = self.loader.images[: self.WHITEN_SAMPLE]
        init(normalize(sample, self.mean, self.std))
        self.elapsed += time.perf_counter() - t0

    def fit(self) -> None:
        cfg = self.cfg
        previous = self._catch_signals()
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                row = self._end_epoch()
                if self.main:
                    self.folder.append_metrics(row)
                    print(_summary_line(row, cfg.epochs), flush=True)
                if self._stop_requested():  # Ctrl-C during validation: last.pt is saved
                    raise _StopRequested
        except _StopRequested:
            self.save(LAST)  # at a step boundary: the state resumes exactly
            raise self._interrupted() from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, wherever the loop was
            raise self._interrupted(saved=False) from None
        finally:
            # Leaving with an error under torchrun (e.g. a peer died), torchrun's SIGTERM may
            # arrive before the message saying why is printed: keep catching it (the process
            # ends right after) so that it does not kill the process silently.
            stopping = sys.exc_info()[0] is not None and self.world > 1
            for signum, handler in previous.items():
                if not (stopping and signum == signal.SIGTERM):
                    signal.signal(signum, handler)

    def _interrupted(self, saved: bool = True) -> TrainingInterrupted:
        if not saved:
            return TrainingInterrupted(
                f"interrupted at epoch {self.epoch + 1}, step {self.step}; the last checkpoint "
                f"is {self.run_dir / LAST}. Resume with: cifarlab train --resume {self.run_dir}"
            )
        return TrainingInterrupted(
            f"interrupted at epoch {self.epoch + 1}, step {self.step}; checkpoint saved. "
            f"Resume with: cifarlab train --resume {self.run_dir}"
        )

    def _catch_signals(self) -> dict[int, Any]:
        """Ctrl-C (SIGINT) and, under torchrun, SIGTERM (how torchrun stops its processes)
        ask the loop to stop at the next step boundary, where the state can be saved and
        resumed exactly; a second Ctrl-C stops at once."""
        self._signal: int | None = None

        def request(signum: int, frame: object) -> None:
            if self._signal is not None and signum == signal.SIGINT:
                raise KeyboardInterrupt
            self._signal = signum

        signals = [signal.SIGINT] + ([signal.SIGTERM] if self.world > 1 else [])
        previous = {}
        if threading.current_thread() is threading.main_thread():
            for signum in signals:
                previous[signum] = signal.signal(signum, request)
        return previous

    def _stop_requested(self) -> bool:
        """Whether any rank was asked to stop: all ranks stop at the same step."""
        return distributed.any_rank(getattr(self, "_signal", None) is not None, self.device)

    def _wrap_for_ddp(self) -> None:
        """In a distributed run, (re)build the DistributedDataParallel wrapper whenever the set
        of trainable parameters changes (the whitening bias freezes after a few epochs): DDP
        fixes the gradients it all-reduces when it is built. Building it broadcasts rank 0's
        weights and buffers, so every rank starts from the same state."""
        if not distributed.is_distributed():
            return
        key = tuple(id(p) for p in self.model.parameters() if p.requires_grad)
        if key == self._ddp_key:
            return
        ids = [self.device.index] if self.device.type == "cuda" else None
        # broadcast_buffers: rank 0's BatchNorm running statistics go to every rank at each
        # forward, so all ranks hold the same buffers and any rank's checkpoint is the same.
        ddp = DistributedDataParallel(self.model, device_ids=ids, **_SYNC_BUFFERS)
        self.forward = torch.compile(ddp) if self.cfg.compile else ddp
        self._ddp_key = key

    def _after_step(self, global_step: int) -> None:
        """Lookahead: every ``lookahead_every`` steps once ``lookahead_start`` of training is
        done, pull the weights towards their running average."""
        every = self.cfg.lookahead_every
        if not every or global_step % every:
            return
        progress = global_step / self.total_steps
        if progress < self.cfg.lookahead_start:
            return
        if self.lookahead is None:
            self.lookahead = Lookahead(self.model)
        else:
            self.lookahead.update(self.model, self.lookahead.decay(progress, every))

    def _train_epoch(self) -> None:
        cfg, model, opt = self.cfg, self.model, self.optimizer
        model.train()
        whiten = getattr(model, "whiten", None)
        if whiten is not None and whiten.bias is not None and cfg.whiten_bias_epochs is not None:
            whiten.bias.requires_grad_(self.epoch < cfg.whiten_bias_epochs)
        self._wrap_for_ddp()
        self.loader.set_epoch(self.epoch)
        batches = iter(self.loader)
        for _ in range(self.step):  # resuming mid-epoch: replay the same batches, unused
            next(batches)
        steps_here = min(len(self.loader), self.total_steps - self.epoch * len(self.loader))
        bar = tqdm(
            total=steps_here,
            initial=self.step,
            disable=not (self.progress and self.main),
            desc=f"epoch {self.epoch + 1}/{cfg.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )
        t0 = time.perf_counter()
        start_seconds = self.totals.seconds
        steps_before = self.epoch * len(self.loader)
        for x, y in batches:
            if steps_before + self.step >= self.total_steps:
                break  # a step-counted run resumed right at its end
            set_lr(opt, self.base_lrs, lr_factor(cfg, steps_before + self.step, self.total_steps))
            if cfg.progressive:
                x = self._resize(x, (steps_before + self.step) / self.total_steps)
            with self._autocast():
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.totals.loss += loss.detach() * len(y)
            self.totals.correct += (logits.detach().argmax(1) == y).sum()
            self.totals.seen += len(y)
            self.step += 1
            self._after_step(steps_before + self.step)
            bar.update(1)
            if steps_before + self.step >= self.total_steps:
                self.totals.seconds = start_seconds + time.perf_counter() - t0
                break  # the last, partial epoch of a step-counted run (Ctrl-C: after the epoch)
            self._session_steps += 1
            if self._mark is not None:
                self._units += budgets.size_cost(x.shape[-1])
            if self._session_steps == self.WARMUP_STEPS:
                self._mark, self._mark_steps = time.perf_counter(), self._session_steps
            done = steps_before + self.step
            if self.budget is not None and done % self._replan_every() == 0:
                self._replan(done)
                bar.total = min(len(self.loader), self.total_steps - steps_before)
            if self._stop_requested():
                bar.close()
                self.totals.seconds = start_seconds + time.perf_counter() - t0
                raise _StopRequested
            if self.step % 25 == 0 or self.step == len(self.loader):
                self.totals.seconds = start_seconds + time.perf_counter() - t0
                self._check_finite()
                if bar.disable is False:
                    t = self.totals
                    bar.set_postfix(
                        loss=f"{t.loss.item() / t.seen:.3f}",
                        acc=f"{t.correct.item() / t.seen:.3f}",
                        img_s=f"{t.seen / max(t.seconds, 1e-9):,.0f}",
                        refresh=False,
                    )
        if self.lookahead is not None:
            self.lookahead.update(model, 1.0)  # end the epoch on the averaged weights
        distributed.sync_buffers(model)
        bar.close()
        self.totals.seconds = start_seconds + time.perf_counter() - t0
        self._check_finite()

    def _resize(self, x: torch.Tensor, progress: float) -> torch.Tensor:
        """Progressive resizing: the batch at this point of training's image size."""
        size = self.cfg.image_size(progress, x.shape[-1])
        if size >= x.shape[-1]:
            return x
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _replan_every(self) -> int:
        """How often a budgeted run checks its pace: about 20 times over the run."""
        return max(self.total_steps // 20, 5)

    def _replan(self, done: int) -> None:
        """Under a budget: from the speed measured so far in this session, set the total
        number of steps so that training (and its validation passes) ends on time. The
        schedule (learning rate, lookahead) follows the new total from here on."""
        steps = self._session_steps - self._mark_steps
        if self.budget is None or self._mark is None or steps < 3:
            return
        # seconds of a full-size step; with progressive resizing the steps still to come cost
        # what their image sizes say, on average
        full_step_s = (time.perf_counter() - self._mark - self._val_since_mark) / self._units
        step_s = full_step_s * budgets.step_cost(self.cfg, done / self.total_steps)
        per_epoch = len(self.loader)
        val_s = self._val_seconds
        if val_s is None:
            val_s = len(self.data.val) * full_step_s / self.cfg.batch_size / budgets.EVAL_SPEEDUP
        more = self.budget.remaining_steps(step_s, val_s, done, per_epoch)
        new_total = max(done + more, done, 1)
        if abs(new_total - self.total_steps) <= max(0.01 * self.total_steps, 1):
            return
        self.replans.append([done, self.total_steps, new_total])
        self.total_steps = new_total
        self.cfg.steps = new_total
        self.cfg.epochs = math.ceil(new_total / per_epoch)

    def _check_finite(self) -> None:
        bad = not bool(torch.isfinite(self.totals.loss))
        if distributed.any_rank(bad, self.device):  # all ranks stop together
            raise TrainingError(
                f"the training loss became NaN/inf at epoch {self.epoch + 1}, step {self.step}: "
                f"training stopped (try a lower --lr than {self.cfg.lr})"
            )

    def _end_epoch(self) -> dict[str, Any]:
        t = self.totals
        loss, correct, seen = t.summed(self.device)
        row: dict[str, Any] = {
            "epoch": self.epoch + 1,
            "train_loss": loss / max(seen, 1),
            "train_acc": correct / max(seen, 1),
            "val_loss": None,
            "val_acc": None,
            "lr": self.optimizer.param_groups[0]["lr"],
            "epoch_seconds": t.seconds,
            "images_per_s": seen / max(t.seconds, 1e-9),
        }
        if self.val_loader is not None and self.main:
            # Rank 0 alone validates, on the bare model (a DDP forward would wait for the
            # other ranks); they go on and meet it at the next step's all-reduce.
            model = self.model if distributed.is_distributed() else self.forward
            t0 = time.perf_counter()
            logits, labels = predict_logits(model, self.val_loader, autocast=self.autocast)
            self._val_seconds = time.perf_counter() - t0
            if self._mark is not None:
                self._val_since_mark += self._val_seconds
            row["val_loss"], row["val_acc"] = loss_and_accuracy(logits, labels)
        self.elapsed += t.seconds
        row["elapsed_seconds"] = self.elapsed
        self.epoch, self.step = self.epoch + 1, 0
        self.totals = _Totals.zeros(self.device)
        score = row["val_acc"] if row["val_acc"] is not None else row["train_acc"]
        is_best = score > self.best_val
        if is_best:
            self.best_val, self.best_epoch = score, self.epoch
        # last.pt carries this row and which epoch is best: if what follows (best.pt, the
        # metrics line) is lost to a crash or a full disk, --resume rebuilds it from last.pt
        self.last_row = row
        self.save(LAST)
        if is_best and self.main:
            self.folder.promote_last_to_best()
        return row


def _summary_line(row: dict, epochs: int) -> str:
    val = (
        f"val loss {row['val_loss']:.4f} acc {row['val_acc']:.4f}"
        if row["val_acc"] is not None
        else "no validation split"
    )
    return (
        f"epoch {row['epoch']:>3}/{epochs}  train loss {row['train_loss']:.4f} "
        f"acc {row['train_acc']:.4f}  {val}  {row['epoch_seconds']:.1f}s "
        f"({row['images_per_s']:,.0f} img/s)"
    )


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
    choice to one network. The whole call — data loading and the probe included — ends
    within the budget.

    Launched by ``torchrun`` (several processes), every process calls this: they join one
    process group, each trains on its part of every global batch, and rank 0 alone prints and
    writes the run folder.
    """
    clock = time.perf_counter()  # a budget counts from here
    plan, data = None, None  # a budget's plan, and the data loaded to make it
    if resume is not None:
        if budget is not None:
            raise SettingError("budget", "starts a new run; a resumed run keeps its own budget")
        run_dir = Path(resume)
        changes = dict(changes or {})
        if config is not None and config.epochs:
            changes.setdefault("epochs", config.epochs)  # resuming may extend a run
        cfg, state, found = _check_resume(RunFolder(run_dir), changes)
    else:
        if config is None and budget is None:
            raise CifarlabError("train() needs a config or resume=")
        if out is None and distributed.launched_by_torchrun():
            raise CifarlabError("under torchrun, name the run folder with --out")
        if budget is not None:
            if model is not None:
                raise CifarlabError("a budget chooses among cifarlab's networks: it does not "
                                    "train a model of your own")  # fmt: skip
            base = config or TrainConfig()
            run_dir = Path(out) if out is not None else default_run_dir(base, "budget")
            RunFolder(run_dir).check_new()
            cfg, plan, data = _plan_budget(base, budget, budget_model, clock)
        else:
            if model is not None:
                config = _own_model_config(config, model)
            cfg = config.resolved()
            if model is None:
                _check_model_size(cfg)
            run_dir = Path(out) if out is not None else default_run_dir(cfg)
            RunFolder(run_dir).check_new()
        state, found = None, None
    joined = distributed.launched_by_torchrun() and not distributed.is_distributed()
    device = distributed.setup(cfg.device)
    try:
        distributed.barrier()  # every rank has checked the folder before rank 0 writes to it
        return _train(cfg, run_dir, state, progress, device, plan, data, clock, model, found)
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


def _check_resume(
    folder: RunFolder, changes: dict[str, Any]
) -> tuple[TrainConfig, dict[str, Any], ResumeCheck]:
    """The config, checkpoint state and state of the files of a run about to be resumed:
    refused at once (before any data is loaded) if another process is training it, if its
    checkpoint is not sound, or if a file it should hold is missing and cannot be rebuilt.
    Reads only; what can be rebuilt is done under the lock (:meth:`RunFolder.repair`)."""
    run_dir = folder.path
    if not run_dir.is_dir():
        raise CifarlabError(f"{run_dir}: no such run folder")
    holder = folder.lock_holder()
    if holder:
        raise CifarlabError(f"{run_dir} is being trained right now ({holder}): wait for it to "
                            "finish (or stop it: Ctrl-C saves a checkpoint) before resuming "
                            "it")  # fmt: skip
    last, best = folder.checkpoint_path("last"), folder.checkpoint_path("best")
    note = None
    if not os.path.lexists(last) and os.path.lexists(best):
        source, state = best, folder.load_checkpoint("best", "resume")
        note = (f"{LAST} is missing: resuming from {BEST} (epoch {state['epoch']}); the "
                "epochs after it are trained again")  # fmt: skip
    else:
        source, state = last, folder.load_checkpoint("last", "resume")
    try:
        cfg = resume_config(TrainConfig.from_saved(state["config"]), changes)
    except SettingError as e:
        if set(e.names) & set(changes):
            raise  # the user's change: named by its option
        raise CifarlabError(f"{source}: config.{e}") from None
    found = folder.check_resume(state, source)
    if note:
        found.notes.insert(0, note)
    names = state.get("class_names") or found.config.get("class_names") or []
    planned = planned_shapes(cfg.model, len(names), cfg.model_args) if len(names) >= 2 else None
    problem = weights_problem(planned, clean_state_dict(state["model"])) if planned else None
    if problem:
        raise CifarlabError(f"{source}: the weights do not fit model {cfg.model!r} with "
                            f"model_args {cfg.model_args} ({problem}): the checkpoint is from "
                            "another model")  # fmt: skip
    return cfg, state, found


# The most parameters a model built from a name and model_args may have (8 GB of float32
# weights): past it a typo in model_args (widths of 10**6) would exhaust the memory.
MAX_PARAMS = 1 << 31


def _check_model_size(cfg: TrainConfig) -> None:
    """A model built from its name and ``model_args`` has at most :data:`MAX_PARAMS`
    parameters (counted on the meta device, before any data is loaded or memory taken)."""
    from cifarlab.data.sources import get_info

    info = get_info(cfg.dataset)
    coarse = cfg.labels == "coarse" and info.num_coarse_classes
    planned = planned_shapes(cfg.model, coarse or info.num_classes, cfg.model_args)
    size = sum(math.prod(s) for s in planned.values()) if planned else 0
    if size > MAX_PARAMS:
        raise SettingError("model_args", f"{cfg.model_args} give model {cfg.model!r} {size:,} "
                           f"parameters, more than the {MAX_PARAMS:,} a run may have")  # fmt: skip


def _own_model_config(config: TrainConfig, model: ModelLike) -> TrainConfig:
    """``config`` for a model passed in: ``model`` names its import path, and without a
    recipe the ``original`` recipe's settings fill what is not given."""
    if not (isinstance(model, nn.Module) or callable(model)):
        raise CifarlabError(f"model must be an nn.Module or a builder, got {model!r}")
    source = type(model) if isinstance(model, nn.Module) else model
    path = import_path(source)
    _warn_if_not_reopenable(path)
    return dataclasses.replace(config, model=path, recipe=config.recipe or "original")


def _warn_if_not_reopenable(path: str) -> None:
    problem = reopen_problem(path)
    if problem and devices.rank() == 0:
        print(f"warning: the model {path} cannot be rebuilt by another process ({problem}): "
              "this run trains, but `cifarlab evaluate`, `predict` and `export` will not open "
              "it; define the model at the top level of an importable module to use them",
              file=sys.stderr)  # fmt: skip


def _model_source(cfg: TrainConfig) -> str | None:
    """For a model registered by the user (``register_model``): its builder's import path,
    which a run records so that another process, where the name is not registered, can still
    rebuild it. None for cifarlab's own models and import paths."""
    if ":" in cfg.model:
        return None
    builder = get_entry(cfg.model).builder
    if builder.__module__.split(".")[0] == "cifarlab":
        return None
    path = import_path(builder)
    _warn_if_not_reopenable(path)
    return path


def _check_rebuild(cfg: TrainConfig, num_classes: int, model: nn.Module) -> None:
    """A module passed in is recorded as its class's import path with ``model_args``: warn
    if rebuilding it from those gives other shapes than the module trained (the run could
    not be reopened)."""
    if reopen_problem(cfg.model):
        return  # already said
    try:
        rebuilt = create_model(cfg.model, num_classes, **cfg.model_args)
        same = shapes(rebuilt) == shapes(model)
        problem = None if same else "its parameters have other shapes"
    except CifarlabError as e:
        problem = str(e)
    if problem and devices.rank() == 0:
        print(f"warning: rebuilding {cfg.model}(num_classes={num_classes}, **{cfg.model_args}) "
              f"does not give the module being trained ({problem}): give its constructor's "
              "arguments as model_args, or `cifarlab evaluate`, `predict` and `export` will "
              "not open this run", file=sys.stderr)  # fmt: skip


def _build(cfg: TrainConfig, num_classes: int, model: ModelLike | None) -> nn.Module:
    """The model to train: ``model`` as given (a module, or a builder called here), else the
    registered model or import path ``cfg.model``."""
    if model is None:
        return create_model(cfg.model, num_classes, **cfg.model_args)
    if isinstance(model, nn.Module):
        return model
    built = model(num_classes=num_classes, **cfg.model_args)
    if not isinstance(built, nn.Module):
        raise CifarlabError(f"the model builder returned {type(built).__name__}, not an nn.Module")
    return built


def _plan_budget(
    base: TrainConfig, budget: str | float, only: str | None, clock: float
) -> tuple[TrainConfig, budgets.Plan, CifarDataset]:
    """The config a budgeted run trains: the chosen candidate's recipe, its step count and
    precision, with the data and run settings of ``base``; the plan; and the data it loaded
    (the trainer reuses it)."""
    from cifarlab.train.recipes import recipe_config

    seconds = budgets.parse_duration(budget)
    if distributed.launched_by_torchrun():
        raise SettingError("budget", "measures one process on this machine: it does not run "
                           "under torchrun; give a recipe or a number of epochs there")  # fmt: skip
    base.resolved()  # every setting valid (--train-size, --threads, ...) before any work
    data = load_data(base)
    num_train = len(data.train)
    if base.train_size is not None:
        num_train = min(num_train, base.train_size)
    dev = devices.resolve_device(base.device)
    if base.threads:
        torch.set_num_threads(base.threads)
    say = print if devices.rank() == 0 else None
    if say:
        print(f"measuring this machine for --budget {budgets.format_duration(seconds)} "
              f"({probe.describe_machine()})", flush=True)  # fmt: skip
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


def _train(
    cfg: TrainConfig,
    run_dir: Path,
    state: dict | None,
    progress: bool,
    device: str,
    plan: budgets.Plan | None,
    data: CifarDataset | None,
    clock: float,
    model: ModelLike | None = None,
    found: ResumeCheck | None = None,
) -> Path:
    folder = RunFolder(run_dir)
    main = devices.rank() == 0
    with folder.lock(resuming=state is not None) if main else contextlib.nullcontext():
        if found is not None and main:
            folder.repair(found)  # what a resume found missing and can rebuild
        return _train_locked(cfg, folder, state, progress, device, plan, data, clock, model,
                             found)  # fmt: skip


def _train_locked(
    cfg: TrainConfig,
    folder: RunFolder,
    state: dict | None,
    progress: bool,
    device: str,
    plan: budgets.Plan | None,
    data: CifarDataset | None,
    clock: float,
    model: ModelLike | None,
    found: ResumeCheck | None = None,
) -> Path:
    run_dir = folder.path
    budget = None
    if cfg.budget is not None and distributed.is_distributed():
        raise CifarlabError("a --budget run measures one process: resume it without torchrun")
    if cfg.budget is not None:
        used = float((state or {}).get("budget_used") or 0.0)
        budget = budgets.Budget(cfg.budget, used, start=clock)
    saved_precision = None
    if state is not None and cfg.precision == "auto":
        here = devices.resolve_device(device)
        if "precision_used" not in state:  # written before auto was measured: the flag rule
            saved_precision = "bf16" if devices.autocast_dtype("auto", here) else "fp32"
        elif state.get("device_type") == here.type:
            saved_precision = state.get("precision_used")
    trainer = Trainer(cfg, run_dir, progress=progress, device=device,
                      precision_used=saved_precision, budget=budget, data=data,
                      model=model)  # fmt: skip
    if trainer.main:
        run_dir.mkdir(parents=True, exist_ok=True)
    if state is not None:
        trainer.restore(state, found.source if found is not None else folder.path / LAST)
        if trainer.main:
            folder.trim_metrics(trainer.epoch)
        if trainer.main and trainer.epoch >= cfg.epochs:
            lost = found.lost_epochs if found is not None else []
            gaps = (f" ({folder.metrics_path.name} lacks epoch(s) {', '.join(map(str, lost))}: "
                    "lost)") if lost else ""  # fmt: skip
            print(f"{run_dir} has finished all {cfg.epochs} epochs{gaps}; nothing to resume")
        elif trainer.main:
            print(f"resuming {run_dir} at epoch {trainer.epoch + 1}, step {trainer.step}"
                  f"{f' on {trainer.world} processes' if trainer.world > 1 else ''}")  # fmt: skip
    else:
        if trainer.main:  # a folder left by an attempt that stopped before its first checkpoint
            folder.trim_metrics(0)
        trainer.init_whitening()
    if isinstance(model, nn.Module) and state is None:
        _check_rebuild(cfg, trainer.data.num_classes, trainer.model)
    extra = {
        "num_classes": trainer.data.num_classes,
        "class_names": trainer.data.class_names,
        "params": count_parameters(trainer.model),
        "device_used": str(trainer.device),
        "train_images": trainer.num_train,
        "world_size": trainer.world,
        "precision_used": trainer.precision_used,
        "machine": probe.describe_machine(),
        "provenance": provenance(trainer.device),
    }
    source = _model_source(cfg) if state is None else None
    if source:
        extra["model_source"] = source
    if trainer.precision_choice is not None:
        extra["precision_choice"] = trainer.precision_choice.to_dict()
    if plan is not None:
        extra["budget_plan"] = plan.to_dict()
    if state is not None:  # resumed: keep the record of what the first session chose
        old = found.config if found is not None else folder.read_config_if_any()
        for key in ("budget_plan", "precision_choice", "model_source"):
            if key in old and key not in extra:
                extra[key] = old[key]
    if trainer.main:
        folder.write_config({**cfg.to_dict(), **extra})
    trainer.fit()
    digests = distributed.weight_digests(trainer.model)
    if trainer.main:
        final = {**extra, "train_seconds": trainer.elapsed, "best_val_acc": trainer.best_val}
        if budget is not None:
            final.update(budget_used_seconds=budget.used(), budget_replans=trainer.replans,
                         steps_trained=trainer.total_steps)  # fmt: skip
        if trainer.world > 1:
            final["rank_weight_digests"] = digests  # equal on every rank, or DDP went wrong
        folder.write_config({**cfg.to_dict(), **final})
        if budget is None:
            _calibrate(run_dir, trainer)
        else:  # the budget is the promise: a pass over val after it would break it
            print("calibration: not fitted at the end of a --budget run (it would overrun the "
                  f"budget); cifarlab evaluate {run_dir} fits it", flush=True)  # fmt: skip
    return run_dir


def _calibrate(run_dir: Path, trainer: Trainer) -> None:
    """Fit the best checkpoint's temperature on the validation split (calibration.json), and
    say what it did to the validation NLL and ECE."""
    from cifarlab.evaluate.calibration import fit_opened

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
