"""Opening a trained run: its model rebuilt from ``config.json`` with the weights of a
checkpoint (refused before anything is allocated if they do not fit), on a device, with the
normalization, precision and test-time augmentation it was trained with, and the temperature
fitted for those weights (``calibration.json``). Evaluation, robustness, predict, export and
serve all open runs here."""

from __future__ import annotations

import contextlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import schemas
from cifarlab.checkpoint import (
    clean_state_dict,
    dtype_problem,
    planned_shapes,
    shapes,
    weights_problem,
)
from cifarlab.data.loader import BatchLoader
from cifarlab.errors import CifarlabError, one_line
from cifarlab.evaluate.calibration import describe
from cifarlab.evaluate.inference import eval_loader
from cifarlab.models import create_model, model_names
from cifarlab.runs import CONFIG, RunFolder
from cifarlab.train.config import TrainConfig
from cifarlab.train.device import autocast_context, resolve_device, run_autocast


def read_run(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The run folder, its ``config.json`` and its ``metrics.jsonl`` rows; clear errors if
    something is missing or not what cifarlab writes."""
    folder = RunFolder(run_dir)
    config = folder.read_config()
    return folder.path, config, folder.read_metrics()


def build_model(config: dict[str, Any], where: str | os.PathLike = CONFIG) -> nn.Module:
    """The (untrained) model a run's ``config.json`` describes: its registered name or import
    path, class count and builder options."""
    model_args = config.get("model_args") or {}
    if not isinstance(model_args, dict):
        raise CifarlabError(f"{where}: model_args must be a JSON object, got {model_args!r}")
    name = _model_name(config)
    try:
        return create_model(name, int(config["num_classes"]), **model_args)
    except CifarlabError as e:
        raise CifarlabError(f"{where}: {e}") from None
    except Exception as e:  # noqa: BLE001 - a builder's failure on these options
        raise CifarlabError(
            f"{where}: model {name!r} cannot be built with model_args "
            f"{schemas.describe(model_args)} ({type(e).__name__}: "
            f"{one_line(e)})"
        ) from None


def _model_name(config: dict[str, Any]) -> str:
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
    problem = weights_problem(shapes(model), weights) or dtype_problem(model, weights)
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
        raise CifarlabError(
            f"{where}: the model does not run on a 32×32 image ({type(e).__name__}: {one_line(e)})"
        ) from None
    if not isinstance(out, torch.Tensor) or out.ndim != 2 or out.shape[0] != 1:
        raise CifarlabError(
            f"{where}: the model gives {schemas.describe(out)}, not one row of "
            "class scores per image"
        )
    if out.shape[1] != len(class_names):
        raise CifarlabError(
            f"{where}: class_names has {len(class_names)} names but the model "
            f"gives {out.shape[1]} class scores"
        )


@dataclass
class OpenRun:
    """A trained run ready for inference: its model on a device (channels-last as trained),
    the normalization and autocast precision it was trained with, and its records."""

    folder: RunFolder
    config: dict[str, Any]  # config.json as written
    cfg: TrainConfig
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
        return autocast_context(self.device, self.autocast)

    def loader(self, images: torch.Tensor, labels: torch.Tensor) -> BatchLoader:
        """An evaluation loader of ``images`` as this run was trained to see them (its
        normalization and memory format, its eval batch size, on its device)."""
        return eval_loader(
            images,
            labels,
            batch_size=self.cfg.eval_batch_size,
            device=self.device,
            mean=self.mean,
            std=self.std,
            channels_last=self.cfg.channels_last,
        )


def open_run(
    run_dir: str | os.PathLike,
    checkpoint: str = "best",
    device: str = "cpu",
    calibrated: bool = True,
) -> OpenRun:
    """Open a trained run: its config, and its model with the ``checkpoint`` weights on
    ``device`` with the normalization and precision of its training. Every file is checked
    against its schema first; the model must give one score per class name.

    ``calibrated``: use the temperature fitted for these weights (``calibration.json``) when
    there is one (:attr:`OpenRun.temperature`; :attr:`OpenRun.calibration_note` says what the
    probabilities are)."""
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
    return OpenRun(
        folder,
        config,
        cfg,
        model.eval(),
        dev,
        mean,
        std,
        run_autocast(config, dev),
        checkpoint,
        epoch,
        temperature or 1.0,
        note,
        temperature is not None,
    )


def _temperature(
    folder: RunFolder, checkpoint: str, epoch: int, calibrated: bool
) -> tuple[float | None, str]:
    """The temperature to divide the logits by (None: none) and a line saying why."""
    if not calibrated:
        return None, "probabilities not calibrated (turned off)"
    record = folder.read_calibration().get(checkpoint)
    if record is None:
        return None, (
            f"probabilities not calibrated ({folder.calibration_path.name} has no "
            f"temperature for the {checkpoint} checkpoint: cifarlab evaluate "
            f"{folder.path} fits one)"
        )
    if record["checkpoint_epoch"] != epoch:
        return None, (
            f"probabilities not calibrated (the temperature was fitted for epoch "
            f"{record['checkpoint_epoch']}, the {checkpoint} checkpoint is epoch "
            f"{epoch}: cifarlab evaluate {folder.path} fits it again)"
        )
    if record["temperature"] is None:
        return None, describe(record)
    return float(record["temperature"]), describe(record)
