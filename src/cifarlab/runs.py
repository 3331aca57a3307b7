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
==========================  =================================================================
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab.errors import CifarlabError
from cifarlab.files import append_jsonl, atomic_write, open_private

CONFIG = "config.json"
METRICS = "metrics.jsonl"
LAST = "last.pt"
BEST = "best.pt"
LOCK = ".lock"
CHECKPOINTS = {"best": BEST, "last": LAST}
SPLITS = ("test", "val")
EXPORTS = {"onnx": "model.onnx", "torchscript": "model.pt"}
# config.json keys that are not TrainConfig fields: what the run recorded about itself.
RECORDS = ("num_classes", "class_names", "params", "device_used", "train_images", "world_size",
           "precision_used", "precision_choice", "machine", "budget_plan", "train_seconds",
           "best_val_acc", "budget_used_seconds", "budget_replans", "steps_trained",
           "rank_weight_digests", "provenance", "model_source")  # fmt: skip


def _split_prefix(split: str) -> str:
    return "" if split == "test" else f"{split}_"


class RunFolder:
    """One run folder: where each of its files is, and reading and writing them safely
    (every write goes to a temporary name first, then is renamed)."""

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

    def export_path(self, fmt: str) -> Path:
        if fmt not in EXPORTS:
            raise CifarlabError(f"format must be one of {', '.join(EXPORTS)}, got {fmt!r}")
        return self.path / EXPORTS[fmt]

    # ------------------------------------------------------------------ state of the folder

    def holds_run(self) -> bool:
        """A config and at least one checkpoint: a run (finished or interrupted) is here."""
        return self.config_path.exists() and any(
            (self.path / n).exists() for n in CHECKPOINTS.values()
        )

    def check_new(self) -> None:
        """Refuse to start a new run in a folder that already holds one."""
        if self.holds_run():
            raise CifarlabError(
                f"{self.path} already holds a run: resume it with --resume {self.path}, "
                "or choose another --out"
            )

    def check_exists(self) -> None:
        if not self.path.is_dir():
            raise CifarlabError(f"{self.path}: no such run folder")
        if not self.config_path.is_file():
            raise CifarlabError(f"{self.path}: not a run folder (no {CONFIG})")

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Hold an exclusive lock on the folder while training into it, so that a second
        process training into the same folder is refused instead of mixing two runs' files.
        The lock dies with the process; the ``.lock`` file stays, unless the folder was made
        here and nothing else was written into it (a run that failed at once leaves no empty
        folder behind)."""
        try:
            import fcntl
        except ImportError:  # Windows: no advisory locks; go on without
            yield
            return
        created = not self.path.exists()
        self.path.mkdir(parents=True, exist_ok=True)
        with open_private(self.path / LOCK, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                f.seek(0)
                holder = f.read().strip() or "another process"
                raise CifarlabError(
                    f"{self.path} is being trained right now ({holder}): wait for it to "
                    "finish, or choose another --out"
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

    # ------------------------------------------------------------------ config

    def read_config(self) -> dict[str, Any]:
        """``config.json`` as a dict; a clear error if it is missing or not cifarlab's."""
        self.check_exists()
        path = self.config_path
        try:
            config = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise CifarlabError(f"{path}: not valid JSON ({e})") from None
        except (OSError, UnicodeDecodeError) as e:
            raise CifarlabError(f"{path}: cannot read it ({e})") from None
        if not isinstance(config, dict):
            raise CifarlabError(f"{path}: expected a JSON object")
        missing = [k for k in ("model", "num_classes", "class_names") if k not in config]
        if missing:
            raise CifarlabError(
                f"{path}: missing {', '.join(missing)} (not written by cifarlab train?)"
            )
        return config

    def read_config_if_any(self) -> dict[str, Any]:
        """``config.json`` as a dict, or {} if there is none yet (or it is unreadable)."""
        try:
            data = json.loads(self.config_path.read_text())
        except (OSError, ValueError):
            return {}
        return data if isinstance(data, dict) else {}

    def write_config(self, data: dict[str, Any]) -> Path:
        return atomic_write(
            self.config_path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n")
        )

    # ------------------------------------------------------------------ metrics

    def read_metrics(self) -> list[dict[str, Any]]:
        """The rows of ``metrics.jsonl`` ([] if there is none)."""
        path = self.metrics_path
        if not path.is_file():
            return []
        rows = []
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if line.strip():
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CifarlabError(f"{path}: line {n} is not JSON") from None
        return rows

    def append_metrics(self, row: dict[str, Any]) -> None:
        append_jsonl(self.metrics_path, row)

    def trim_metrics(self, epochs_done: int) -> None:
        """Drop the lines of epochs after the checkpoint (written after it, before a crash)."""
        path = self.metrics_path
        if not path.is_file():
            return
        rows: list[Any] = []
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                rows.append(None)  # not ours (or cut off by an older version): dropped below
        kept = [r for r in rows if isinstance(r, dict) and r.get("epoch", np.inf) <= epochs_done]
        if len(kept) != len(rows):
            text = "".join(json.dumps(r) + "\n" for r in kept)
            atomic_write(path, lambda tmp: tmp.write_text(text))

    # ------------------------------------------------------------------ checkpoints

    def save_checkpoint(self, which: str, state: dict[str, Any]) -> Path:
        from cifarlab.train.checkpoint import save_checkpoint

        path = self.checkpoint_path(which)
        save_checkpoint(path, state)
        return path

    def load_checkpoint(self, which: str = "best") -> dict[str, Any]:
        from cifarlab.train.checkpoint import load_checkpoint

        path = self.checkpoint_path(which)
        if not path.is_file() and self.config_path.is_file() and not self.holds_run():
            raise CifarlabError(
                f"{path}: no checkpoint there: that run stopped before it saved one; "
                f"train it again with --out {self.path}"
            )
        return load_checkpoint(path)

    def promote_last_to_best(self) -> None:
        """``best.pt`` becomes a copy of ``last.pt`` (through a temporary name)."""
        tmp = self.path / f".{BEST}.tmp"
        shutil.copyfile(self.checkpoint_path("last"), tmp)
        os.replace(tmp, self.checkpoint_path("best"))

    # ------------------------------------------------------------------ evaluations

    def write_eval(self, split: str, metrics: dict[str, Any]) -> Path:
        return atomic_write(
            self.eval_path(split), lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n")
        )

    def read_eval(self, split: str) -> dict[str, Any]:
        """``eval_SPLIT.json``; a clear error if the run was not evaluated on ``split``."""
        path = self.eval_path(split)
        if not path.is_file():
            raise CifarlabError(
                f"{self.path}: not evaluated on {split} yet "
                f"(run: cifarlab evaluate {self.path} --split {split})"
            )
        try:
            m = json.loads(path.read_text())
            m["accuracy"], m["macro_avg"]["f1"], m["per_class"]  # noqa: B018
        except (json.JSONDecodeError, KeyError, TypeError):
            raise CifarlabError(
                f"{path}: not an evaluation written by cifarlab (run: cifarlab evaluate "
                f"{self.path} --split {split})"
            ) from None
        return m

    def write_predictions(self, split: str, labels: np.ndarray, probs: np.ndarray) -> Path:
        def save(tmp: Path) -> None:
            with open(tmp, "wb") as f:
                np.savez_compressed(f, labels=labels, probs=probs.astype(np.float32))

        return atomic_write(self.predictions_path(split), save)

    def read_prediction_labels(self, split: str) -> np.ndarray:
        path = self.predictions_path(split)
        if not path.is_file():
            raise ValueError(
                f"write_report needs the true labels: pass labels=, or have {path.name} in the run"
            )
        with np.load(path) as saved:
            return saved["labels"].astype(np.int64)


# --------------------------------------------------------------------------- opening a run


def read_run(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The run folder, its ``config.json`` and its ``metrics.jsonl`` rows; clear errors if
    something is missing."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    return folder.path, config, folder.read_metrics()


def build_model(config: dict[str, Any]) -> nn.Module:
    """The (untrained) model a run's ``config.json`` describes: its registered name or import
    path, class count and builder options."""
    from cifarlab.models import create_model, model_names

    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CifarlabError(f"{CONFIG}: model_args must be a JSON object, got {model_args!r}")
    name, source = config["model"], config.get("model_source")
    if source and name not in model_names():  # registered by the user in the training process
        name = source
    return create_model(name, int(config["num_classes"]), **model_args)


def load_model(
    run_dir: str | os.PathLike, config: dict[str, Any], checkpoint: str = "best"
) -> tuple[nn.Module, dict[str, Any]]:
    """The run's model with the weights of ``checkpoint`` ("best" or "last"), on the CPU, in
    eval mode; and the checkpoint's state."""
    from cifarlab.train.checkpoint import clean_state_dict

    folder = RunFolder(run_dir)
    path = folder.checkpoint_path(checkpoint)
    state = folder.load_checkpoint(checkpoint)
    model = build_model(config)
    try:
        model.load_state_dict(clean_state_dict(state["model"]))
    except (RuntimeError, KeyError) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(e).__name__)[:200]
        raise CifarlabError(
            f"{path}: the weights do not fit model {config['model']!r} with model_args "
            f"{config.get('model_args') or {}} ({detail})"
        ) from None
    return model.eval(), state


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

    @property
    def class_names(self) -> list[str]:
        return list(self.config["class_names"])

    @property
    def tta(self) -> int:
        return int(self.cfg.tta)

    def autocast_context(self) -> contextlib.AbstractContextManager:
        from cifarlab.train.device import autocast_context

        return autocast_context(self.device, self.autocast)


def open_run(run_dir: str | os.PathLike, checkpoint: str = "best", device: str = "cpu") -> OpenRun:
    """Open a trained run: its config, and its model with the ``checkpoint`` weights on
    ``device`` with the normalization and precision of its training."""
    from cifarlab.train.config import TrainConfig
    from cifarlab.train.device import resolve_device, run_autocast

    folder = RunFolder(run_dir)
    config = folder.read_config()
    cfg = TrainConfig.from_saved(config)
    dev = resolve_device(device)
    model, state = load_model(folder.path, config, checkpoint)
    model = model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    mean, std = cfg.normalization()
    return OpenRun(folder, config, cfg, model.eval(), dev, mean, std,
                   run_autocast(config, dev), checkpoint, int(state["epoch"]))  # fmt: skip


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
