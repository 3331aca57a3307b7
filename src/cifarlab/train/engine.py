"""The training loop: one epoch after another over a BatchLoader, a line per epoch, metrics
and checkpoints in the run folder, exact resume, clean Ctrl-C.

Rank-aware from the start: every rank trains on its own shard of each epoch (the loader's
``rank``/``world_size``), only rank 0 prints and writes files.
"""

from __future__ import annotations

import contextlib
import inspect
import math
import os
import signal
import sys
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from cifarlab.checkpoint import clean_state_dict, shapes, weights_problem
from cifarlab.data.augment import normalize
from cifarlab.errors import CifarlabError
from cifarlab.evaluate.inference import loss_and_accuracy, predict_logits
from cifarlab.runs import LAST, RunFolder
from cifarlab.train import budget as budgets
from cifarlab.train import device as devices
from cifarlab.train import distributed
from cifarlab.train.config import TrainConfig
from cifarlab.train.optim import Lookahead, build_optimizer, lr_factor, set_lr
from cifarlab.train.setup import Parts


class TrainingError(CifarlabError):
    """Training cannot go on (e.g. the loss became NaN)."""


class TrainingInterrupted(CifarlabError):
    """Ctrl-C: a checkpoint was saved; the message says how to resume."""


class _StopRequested(Exception):
    """Raised at a step boundary after Ctrl-C, to leave the loop."""


class Watcher:
    """Something that follows a run as it trains (TensorBoard's event files, a sweep's pruner):
    handed to :class:`Trainer` (``train(..., watchers=[...])``), called on rank 0 only. Each
    method does nothing here; a watcher overrides those it needs. An exception raised by one
    (a sweep pruning its trial) stops training and leaves the call of ``train()``: the run
    folder then holds the last finished epoch's checkpoint, as after Ctrl-C."""

    def step(self, trainer: Trainer, step: int, loss: torch.Tensor, lr: float) -> None:
        """After each training step: the run's step number (from 1), the step's mean loss (a
        0-d tensor on the training device: reading it, ``float(loss)``, waits for a GPU to
        finish the step, so a watcher reads a few together) and the learning rate it used
        (the first parameter group's)."""

    def epoch(self, trainer: Trainer, row: dict[str, Any]) -> None:
        """After each epoch, with its row of ``metrics.jsonl`` (already written)."""

    def close(self, trainer: Trainer, finished: bool) -> None:
        """When the loop ends: ``finished`` if every epoch was trained (not after an error, a
        Ctrl-C or another watcher's exception)."""


class Trainer:
    """One training run's loop: the model, optimizer, loaders and run folder it was handed
    (built by :func:`cifarlab.train.setup.build`), an epoch after another, each a step after
    another; a metrics row, ``last.pt`` (and ``best.pt``) at the end of every epoch."""

    WHITEN_SAMPLE = 5000  # training images whose patches set a whitening stem

    def __init__(
        self,
        cfg: TrainConfig,
        folder: RunFolder,
        parts: Parts,
        *,
        pacer: budgets.Pacer | None = None,
        progress: bool = True,
        watchers: Sequence[Watcher] = (),
    ) -> None:
        self.cfg, self.folder, self.run_dir = cfg, folder, folder.path
        self.parts, self.pacer, self.progress = parts, pacer, progress
        self.rank, self.world = devices.rank(), devices.world_size()
        self.main = self.rank == 0
        self.watchers = list(watchers) if self.main else []
        self.data, self.device = parts.data, parts.device
        self.loader, self.val_loader = parts.loader, parts.val_loader
        self.model = parts.model
        self.precision_used = parts.precision
        self.weight_grad_used = parts.weight_grad
        self.autocast = torch.bfloat16 if parts.precision == "bf16" else None
        self.mean, self.std = cfg.normalization()
        self.forward = torch.compile(self.model) if cfg.compile else self.model
        self._ddp_key: tuple[int, ...] | None = None  # the trainable set DDP was built for
        self.optimizer = build_optimizer(cfg, self.model)
        self.base_lrs = [g["lr"] for g in self.optimizer.param_groups]
        if cfg.steps is not None:  # a step count (from --budget): the last epoch may be partial
            cfg.epochs = math.ceil(cfg.steps / len(self.loader))
        self.total_steps = cfg.steps or cfg.epochs * len(self.loader)
        self.lookahead: Lookahead | None = None
        self.epoch, self.step, self.best_val = 0, 0, -math.inf
        self.best_epoch: int | None = None  # the epoch best.pt holds
        self.last_row: dict[str, Any] | None = None  # metrics row of the last finished epoch
        self.totals = _Totals.zeros(self.device)
        self.elapsed = 0.0  # training seconds over all sessions of this run
        self._signal: int | None = None  # a stop asked for by Ctrl-C (or torchrun's SIGTERM)

    @property
    def global_step(self) -> int:
        """Steps of the whole run so far."""
        return self.epoch * len(self.loader) + self.step

    def init_whitening(self) -> None:
        """Set a whitening stem (FastNet) from the patches of the first training images: once,
        at the start of a new run (its result is in every checkpoint)."""
        init = getattr(self.model, "init_whitening", None)
        if init is None:
            return
        t0 = time.perf_counter()
        sample = normalize(self.loader.images[: self.WHITEN_SAMPLE], self.mean, self.std)
        if "eps" in inspect.signature(init).parameters:  # an own model's hook may not take it
            init(sample, eps=self.cfg.whiten_eps)
        else:
            init(sample)
        self.elapsed += time.perf_counter() - t0

    # ---------------------------------------------------- the loop

    def fit(self) -> None:
        cfg = self.cfg
        previous = self._catch_signals()
        finished = False
        try:
            while self.epoch < cfg.epochs:
                self._train_epoch()
                row = self._end_epoch()
                if self.main:
                    self.folder.append_metrics(row)
                    print(_summary_line(row, cfg.epochs), flush=True)
                for watcher in self.watchers:
                    watcher.epoch(self, row)
                if self._stop_requested():  # Ctrl-C during validation: last.pt is saved
                    raise _StopRequested
            finished = True
        except _StopRequested:
            self.save(LAST)  # at a step boundary: the state resumes exactly
            raise self._interrupted() from None
        except KeyboardInterrupt:  # a second Ctrl-C: stop now, wherever the loop was
            raise self._interrupted(saved=False) from None
        finally:
            for watcher in self.watchers:
                watcher.close(self, finished)
            # Leaving with an error under torchrun (e.g. a peer died), torchrun's SIGTERM may
            # arrive before the message saying why is printed: keep catching it (the process
            # ends right after) so that it does not kill the process silently.
            stopping = sys.exc_info()[0] is not None and self.world > 1
            for signum, handler in previous.items():
                if not (stopping and signum == signal.SIGTERM):
                    signal.signal(signum, handler)

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
        bar = self._progress_bar()
        started = time.perf_counter() - self.totals.seconds  # the epoch's clock (resumed too)
        for x, y in batches:
            if self.global_step >= self.total_steps:
                break  # a step-counted run resumed right at its end
            # ---- the step
            set_lr(opt, self.base_lrs, lr_factor(cfg, self.global_step, self.total_steps))
            if cfg.progressive:
                x = self._resize(x, self.global_step / self.total_steps)
            with self._autocast():
                logits = self.forward(x)
            loss = F.cross_entropy(logits.float(), y, label_smoothing=cfg.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            self.totals.add(loss.detach(), logits.detach(), y)
            self.step += 1
            self._after_step(self.global_step)
            for watcher in self.watchers:
                watcher.step(self, self.global_step, loss.detach(), opt.param_groups[0]["lr"])
            bar.update(1)
            # ---- after the step: the end, the budget's pace, Ctrl-C, NaN, the bar
            if self.global_step >= self.total_steps:
                break  # the last, partial epoch of a step-counted run (Ctrl-C: after the epoch)
            if self.pacer is not None:
                self._pace(x.shape[-1], bar)
            if self._stop_requested():
                bar.close()
                self.totals.seconds = time.perf_counter() - started
                raise _StopRequested
            if self.step % 25 == 0 or self.step == len(self.loader):
                self.totals.seconds = time.perf_counter() - started
                self._check_finite()
                self._show(bar)
        if self.lookahead is not None:
            self.lookahead.update(model, 1.0)  # end the epoch on the averaged weights
        distributed.sync_buffers(model)
        bar.close()
        self.totals.seconds = time.perf_counter() - started
        self._check_finite()

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
            if self.pacer is not None:
                self.pacer.validated(time.perf_counter() - t0)
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

    # ---------------------------------------------------- its state: checkpoints, resume

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
            "weight_grad_used": self.weight_grad_used,
            "device_type": self.device.type,
            "budget_used": self.pacer.budget.used() if self.pacer else None,
            "replans": self.pacer.replans if self.pacer else [],
            "torch_rng": torch.get_rng_state(),
            "config": self.cfg.to_dict(),
            "class_names": self.data.class_names,
            # what a resume needs to rebuild a lost metrics row or best.pt (resume.check_resume)
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
            raise CifarlabError(
                f"{source}: the weights do not fit model {self.cfg.model!r} "
                f"with model_args {self.cfg.model_args} ({problem}): the "
                "checkpoint is from another model"
            )
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
                raise CifarlabError(
                    f"{source}: its {what} state does not fit this run "
                    f"({type(e).__name__}: {line[:200]})"
                ) from None
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.best_val = float(state["best_val_acc"])
        # The saved sums are the whole job's: rank 0 carries them on, the others start at 0.
        saved = (
            state["totals"]
            if self.main
            else {**state["totals"], "loss": 0.0, "correct": 0.0, "seen": 0}
        )
        self.totals = _Totals.from_state(saved, self.device)
        self.elapsed = float(state["elapsed"])
        if self.pacer is not None:
            self.pacer.replans = list(state.get("replans") or [])
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

    # ---------------------------------------------------- what a step and an epoch use

    def _autocast(self) -> contextlib.AbstractContextManager:
        return devices.autocast_context(self.device, self.autocast)

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

    def _resize(self, x: torch.Tensor, progress: float) -> torch.Tensor:
        """Progressive resizing: the batch at this point of training's image size."""
        size = self.cfg.image_size(progress, x.shape[-1])
        if size >= x.shape[-1]:
            return x
        x = F.interpolate(x, size=(size, size), mode="bilinear", antialias=True)
        return x.contiguous(memory_format=torch.channels_last) if self.cfg.channels_last else x

    def _pace(self, image_size: int, bar: tqdm) -> None:
        """Under a budget: the pacer may set a new total number of steps (the schedule follows
        it from here on)."""
        new_total = self.pacer.step(self.global_step, image_size, self.total_steps)
        if new_total is not None:
            self.total_steps = new_total
            self.cfg.steps = new_total
            self.cfg.epochs = math.ceil(new_total / len(self.loader))
        bar.total = min(len(self.loader), self.total_steps - self.epoch * len(self.loader))

    def _progress_bar(self) -> tqdm:
        steps_here = min(len(self.loader), self.total_steps - self.epoch * len(self.loader))
        return tqdm(
            total=steps_here,
            initial=self.step,
            disable=not (self.progress and self.main),
            desc=f"epoch {self.epoch + 1}/{self.cfg.epochs}",
            unit="batch",
            leave=False,
            dynamic_ncols=True,
        )

    def _show(self, bar: tqdm) -> None:
        if bar.disable:
            return
        t = self.totals
        bar.set_postfix(
            loss=f"{t.loss.item() / t.seen:.3f}",
            acc=f"{t.correct.item() / t.seen:.3f}",
            img_s=f"{t.seen / max(t.seconds, 1e-9):,.0f}",
            refresh=False,
        )

    def _check_finite(self) -> None:
        bad = not bool(torch.isfinite(self.totals.loss))
        if distributed.any_rank(bad, self.device):  # all ranks stop together
            raise TrainingError(
                f"the training loss became NaN/inf at epoch {self.epoch + 1}, step {self.step}: "
                f"training stopped (try a lower --lr than {self.cfg.lr})"
            )

    # ---------------------------------------------------- stopping; several processes

    def _catch_signals(self) -> dict[int, Any]:
        """Ctrl-C (SIGINT) and, under torchrun, SIGTERM (how torchrun stops its processes)
        ask the loop to stop at the next step boundary, where the state can be saved and
        resumed exactly; a second Ctrl-C stops at once."""
        self._signal = None

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
        return distributed.any_rank(self._signal is not None, self.device)

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

    def add(self, loss: torch.Tensor, logits: torch.Tensor, labels: torch.Tensor) -> None:
        """One step's batch: its mean loss, its logits and true labels."""
        self.loss += loss * len(labels)
        self.correct += (logits.argmax(1) == labels).sum()
        self.seen += len(labels)

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
