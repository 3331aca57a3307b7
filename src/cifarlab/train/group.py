"""``train_group()``: one set-up trained once per seed, into a group folder (``cifarlab train
--seeds 0-4 --out runs/NAME``): ``runs/NAME/seed-K/`` is an ordinary run for each seed, and
``runs/NAME/group.json`` (:class:`~cifarlab.runs.GroupFolder`) holds the seeds, the set-up,
each run's state and a summary of their validation accuracy, rewritten after every run.

Interrupted (Ctrl-C, a crash), ``train_group(resume="runs/NAME")`` goes on where it stopped:
finished runs are left as they are, the interrupted one is resumed as ``--resume`` resumes a
run (the same weights as without the interruption), the others start. A run that fails (its
loss became NaN) is recorded as failed with the reason and the group goes on; a later resume
tries it again.

On a CPU the runs go one after the other: two at once share the same cores. ``parallel=K``
runs K at once in K processes (for a GPU, whose work per step leaves room for more than one
run); on a CPU it is allowed, and says that it will not be faster.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import multiprocessing
import os
import shutil
import signal
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from torch import nn

from cifarlab.errors import CifarlabError, SettingError, say_warning
from cifarlab.evaluate import stats
from cifarlab.runs import GroupFolder, RunFolder, member_name
from cifarlab.train import device as devices
from cifarlab.train import distributed, setup
from cifarlab.train.config import TrainConfig, parse_seeds, resume_config
from cifarlab.train.engine import TrainingError, TrainingInterrupted, Watcher
from cifarlab.train.launch import default_run_dir, train
from cifarlab.train.setup import ModelLike

GROUP_KIND = "cifarlab seed group"
MAX_PARALLEL = 64


def train_group(
    config: TrainConfig | None = None,
    seeds: str | int | Sequence[int] | None = None,
    *,
    out: str | os.PathLike | None = None,
    resume: str | os.PathLike | None = None,
    changes: dict[str, Any] | None = None,
    parallel: int = 1,
    progress: bool = True,
    model: ModelLike | None = None,
    watchers: Sequence[Watcher] = (),
) -> Path:
    """Train ``config`` once per seed of ``seeds`` (``"0-4"``, ``"0,3,7"`` or a list) into the
    group folder ``out`` (default ``runs/group-<model>-<dataset>-<time>``), or go on with the
    interrupted group ``resume`` (``changes``: what a resumed run may change, as for
    :func:`~cifarlab.train.launch.train`). Returns the group folder.

    ``model`` is a builder of your own (called once per seed), not a module instance: each
    seed starts from its own initialization. ``parallel`` runs that many seeds at once, in
    separate processes (no ``watchers`` then: they live in this process)."""
    if distributed.launched_by_torchrun():
        raise SettingError(
            "seeds",
            "trains one process per seed: run it without torchrun (or train each seed "
            "under torchrun with --seed)",
        )
    if isinstance(model, nn.Module):
        raise CifarlabError(
            "a group trains one model per seed: pass a builder (a class or a function taking "
            "num_classes), not a module instance"
        )
    if (
        not isinstance(parallel, int)
        or isinstance(parallel, bool)
        or not (1 <= parallel <= MAX_PARALLEL)
    ):
        raise SettingError("parallel", f"must be an integer 1..{MAX_PARALLEL}, got {parallel!r}")
    if parallel > 1 and watchers:
        raise SettingError("parallel", "runs seeds in other processes: it takes no watchers")
    if resume is not None:
        group, base, seeds_list, changes = _resumed(Path(resume), config, seeds, changes)
    else:
        if config is None:
            raise CifarlabError("train_group() needs a config or resume=")
        seeds_list = parse_seeds(seeds if seeds is not None else config.seed)
        if model is not None:
            config = setup.own_model_config(config, model)
        base = config.resolved()
        if model is None:
            setup.check_model_size(base)
        group = GroupFolder(Path(out) if out is not None else default_run_dir(base, "group"))
        group.check_new()
        for seed in seeds_list:  # nothing unusable in the members' places
            RunFolder(group.path / member_name(seed)).check_new()
        changes = {}
    created = not group.path.exists()
    runner = _Runner(group, base, seeds_list, changes, progress, model, watchers)
    runner.record()
    try:
        if parallel > 1:
            runner.in_parallel(parallel)
        else:
            runner.one_after_another()
    except CifarlabError:
        if resume is None and not any(m.holds_run() for _, m in group.members()):
            for _, member in group.members():  # what a run left before its first checkpoint
                with contextlib.suppress(CifarlabError, OSError):
                    member.check_new()  # only a cifarlab run's leftovers are removed
                    shutil.rmtree(member.path)
            group.group_path.unlink(missing_ok=True)  # a set-up that trains nothing: no group
            if created:
                with contextlib.suppress(OSError):
                    group.path.rmdir()
        raise
    return runner.done()


def _resumed(
    path: Path,
    config: TrainConfig | None,
    seeds: Any,
    changes: dict[str, Any] | None,
) -> tuple[GroupFolder, TrainConfig, list[int], dict[str, Any]]:
    """The group in ``path``, the set-up it goes on with and its seeds; only what a resumed
    run may change (more epochs, another device, data root or threads) is taken from
    ``changes``."""
    group = GroupFolder(path)
    data = group.read()
    if seeds is not None and parse_seeds(seeds) != data["seeds"]:
        raise SettingError(
            "seeds",
            f"cannot change when a group is resumed: {group.path} trains seeds "
            f"{_seeds_text(data['seeds'])} (start a new group for others)",
        )
    changes = {k: v for k, v in (changes or {}).items() if v is not None}
    if config is not None and config.epochs:
        changes.setdefault("epochs", config.epochs)
    try:
        saved = TrainConfig.from_saved(data["config"])
    except CifarlabError as e:
        raise CifarlabError(f"{group.group_path}: config: {e}") from None
    if changes.get("epochs") is not None and saved.epochs and changes["epochs"] < saved.epochs:
        raise SettingError(
            "epochs",
            f"cannot shorten a group: {group.path} trains {saved.epochs} epochs per "
            "seed (more extends every run)",
        )
    base = resume_config(saved, changes)
    return group, base, list(data["seeds"]), changes


def _seeds_text(seeds: Sequence[int]) -> str:
    if len(seeds) > 2 and list(seeds) == list(range(seeds[0], seeds[-1] + 1)):
        return f"{seeds[0]}-{seeds[-1]}"
    return ",".join(map(str, seeds))


@dataclasses.dataclass
class _Runner:
    """The members of one group and their states, trained and recorded in ``group.json``."""

    group: GroupFolder
    base: TrainConfig
    seeds: list[int]
    changes: dict[str, Any]
    progress: bool
    model: ModelLike | None
    watchers: Sequence[Watcher]
    failed: dict[int, str] = dataclasses.field(default_factory=dict)

    def state(self, seed: int) -> str:
        """finished, interrupted (a run to resume) or new."""
        member = self.group.member(seed)
        if not member.holds_run():
            return "new"
        try:
            config = member.read_config()
            rows = len(member.read_metrics())
        except CifarlabError:
            return "interrupted"  # --resume repairs what it can, or says what it cannot
        done = "train_seconds" in config and rows >= int(config.get("epochs") or 0)
        if self.changes.get("epochs") and rows < self.changes["epochs"]:
            done = False
        return "finished" if done else "interrupted"

    def config_for(self, seed: int) -> TrainConfig:
        return dataclasses.replace(self.base, seed=seed)

    def record(self) -> None:
        """``group.json``: the seeds, the set-up, each run's state, the summary so far."""
        runs, values = [], []
        for seed in self.seeds:
            entry: dict[str, Any] = {"seed": seed, "folder": member_name(seed)}
            state = self.state(seed)
            entry["state"] = "failed" if seed in self.failed else state
            if seed in self.failed:
                entry["reason"] = self.failed[seed]
            if state == "finished":
                config = self.group.member(seed).read_config()
                entry["best_val_acc"] = config.get("best_val_acc")
                entry["train_seconds"] = config.get("train_seconds")
                if isinstance(entry["best_val_acc"], int | float):
                    values.append(float(entry["best_val_acc"]))
            runs.append(entry)
        config = self.base.to_dict()
        config.pop("seed")  # each run has its own
        self.group.write(
            {
                "kind": GROUP_KIND,
                "seeds": self.seeds,
                "config": config,
                "runs": runs,
                "summary": {"best_val_acc": _summary(values)},
            }
        )

    def _say(self, text: str) -> None:
        if devices.rank() == 0:
            print(text, flush=True)

    def one_after_another(self) -> None:
        n = len(self.seeds)
        for i, seed in enumerate(self.seeds, 1):
            state = self.state(seed)
            member = self.group.member(seed)
            if state == "finished":
                self._say(f"[{i}/{n}] seed {seed}: finished before ({member.path}), left as it is")
                continue
            self._say(f"[{i}/{n}] seed {seed} → {member.path}")
            try:
                if state == "interrupted":
                    train(resume=member.path, changes=self.changes, progress=self.progress,
                          watchers=self.watchers)  # fmt: skip
                else:
                    train(self.config_for(seed), out=member.path, progress=self.progress,
                          model=self.model, watchers=self.watchers)  # fmt: skip
            except TrainingInterrupted:
                self.record()
                raise self._interrupted(seed) from None
            except KeyboardInterrupt:
                self.record()
                raise self._interrupted(seed) from None
            except TrainingError as e:  # this seed's training failed (its loss became NaN)
                self.failed[seed] = str(e)
                self._say(f"seed {seed} failed: {e}; the group goes on")
            self.record()

    def in_parallel(self, k: int) -> None:
        todo = [s for s in self.seeds if self.state(s) != "finished"]
        device = devices.resolve_device(self.base.device)
        threads = self.base.threads
        if device.type == "cpu":
            self._say(
                f"--parallel {k} on a CPU: the runs share its {os.cpu_count()} cores, so "
                "together they take about as long as one after the other"
            )
            threads = threads or max(1, (os.cpu_count() or 1) // k)
        jobs = []
        for seed in todo:
            if self.state(seed) == "interrupted":
                changes = {**self.changes, **({"threads": threads} if threads else {})}
                jobs.append((seed, None, str(self.group.member(seed).path), changes))
            else:
                cfg = self.config_for(seed)
                if threads and cfg.threads is None:
                    cfg = dataclasses.replace(cfg, threads=threads)
                jobs.append((seed, cfg, str(self.group.member(seed).path), None))
        context = multiprocessing.get_context("spawn")
        self._say(f"training {len(jobs)} seed(s), {k} at a time")
        interrupted = False
        try:
            with concurrent.futures.ProcessPoolExecutor(k, mp_context=context) as pool:
                futures = {pool.submit(_train_member, *job, self.model): job[0] for job in jobs}
                for future in concurrent.futures.as_completed(futures):
                    seed = futures[future]
                    outcome, message = future.result()
                    if outcome == "set-up":
                        pool.shutdown(wait=True, cancel_futures=True)
                        raise CifarlabError(message)
                    if outcome == "interrupted":
                        interrupted = True
                    elif outcome == "failed":
                        self.failed[seed] = message
                        self._say(f"seed {seed} failed: {message}; the group goes on")
                    else:
                        self._say(f"seed {seed} finished ({message})")
                    self.record()
        except KeyboardInterrupt:
            interrupted = True
        self.record()
        if interrupted:
            raise self._interrupted(None)

    def _interrupted(self, seed: int | None) -> TrainingInterrupted:
        finished = sum(self.state(s) == "finished" for s in self.seeds)
        where = f" at seed {seed}" if seed is not None else ""
        return TrainingInterrupted(
            f"interrupted{where}: {finished} of {len(self.seeds)} seeds finished, checkpoints "
            f"saved. Resume the group with: cifarlab train --resume {self.group.path}"
        )

    def done(self) -> Path:
        summary = self.group.read().get("summary", {}).get("best_val_acc", {})
        finished = [s for s in self.seeds if self.state(s) == "finished"]
        if summary.get("n"):
            spread = f" ± {summary['std']:.4f} (std)" if summary.get("std") is not None else ""
            if summary.get("ci95"):
                low, high = summary["ci95"]
                spread += f", 95 % CI of the mean {low:.4f} to {high:.4f}"
            self._say(
                f"group {self.group.path}: {len(finished)} of {len(self.seeds)} seeds finished; "
                f"best validation accuracy {summary['mean']:.4f}{spread} over "
                f"{summary['n']} runs: {', '.join(f'{v:.4f}' for v in summary['values'])}"
            )
        if self.failed:
            seeds = ", ".join(map(str, sorted(self.failed)))
            raise CifarlabError(
                f"{len(self.failed)} of {len(self.seeds)} seeds failed (seed {seeds}: "
                f"{self.failed[min(self.failed)]}); the others are in {self.group.path} "
                f"(resume to try again: cifarlab train --resume {self.group.path})"
            )
        return self.group.path


def _summary(values: list[float]) -> dict[str, Any]:
    """What group.json says of the finished runs' best validation accuracy: each value, their
    mean, standard deviation and the 95 % t-interval of the mean (:func:`stats.summarize`)."""
    if not values:
        return {"n": 0, "values": [], "mean": None, "std": None, "ci95": None}
    s = stats.summarize(values)
    return {"n": s.n, "values": values, "mean": s.mean, "std": s.std,
            "ci95": list(s.ci) if s.ci is not None else None}  # fmt: skip


def _train_member(
    seed: int,
    cfg: TrainConfig | None,
    path: str,
    changes: dict[str, Any] | None,
    model: ModelLike | None,
) -> tuple[str, str]:
    """One member in a process of its own (``parallel``): ("finished", what), ("failed",
    why) or ("interrupted", why) — errors come back as text, which always pickles."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    warnings.showwarning = say_warning  # as the command line says them: once, on one line
    try:
        if cfg is None:
            train(resume=path, changes=changes, progress=False)
        else:
            train(cfg, out=path, progress=False, model=model)
    except (TrainingInterrupted, KeyboardInterrupt) as e:
        return "interrupted", str(e)
    except TrainingError as e:
        return "failed", str(e)
    except CifarlabError as e:  # the set-up itself: every seed would fail the same way
        return "set-up", str(e)
    config = RunFolder(path).read_config()
    return "finished", f"best validation accuracy {config.get('best_val_acc', float('nan')):.4f}"
