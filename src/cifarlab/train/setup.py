"""What a :class:`~cifarlab.train.engine.Trainer` is handed, built here: the data (and the
training subset), the loaders, the model on its device in its memory format, and the precision
it trains in (``auto``: measured on this machine); and the checks and records of a model of
the user's own (``train(model=...)``)."""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import json
import math
import os
import random
import sys
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import nn

from cifarlab.checkpoint import planned_shapes, shapes
from cifarlab.data.augment import Augment
from cifarlab.data.dataset import CifarDataset, load_dataset, stratified_holdout
from cifarlab.data.loader import BatchLoader
from cifarlab.data.sources import get_info
from cifarlab.errors import CifarlabError, SettingError
from cifarlab.evaluate.inference import eval_loader
from cifarlab.models import create_model, get_entry, import_path, reopen_problem
from cifarlab.models.conv_grad import use_shifted_weight_grad
from cifarlab.train import device as devices
from cifarlab.train import distributed, probe
from cifarlab.train.config import TrainConfig

# What ``train(model=...)`` takes: a module to train, or a builder called with num_classes.
ModelLike = nn.Module | Callable[..., nn.Module]


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def load_data(cfg: TrainConfig) -> CifarDataset:
    return load_dataset(cfg.dataset, cfg.root, val_size=cfg.val_size, labels=cfg.labels)


@dataclass
class Parts:
    """Everything a training run is made of besides its settings, built by :func:`build`."""

    data: CifarDataset
    loader: BatchLoader  # the training images (the subset, if any), on the device
    val_loader: BatchLoader | None  # None without a validation split
    model: nn.Module  # on the device, in the memory format it trains in
    device: torch.device
    precision: str  # fp32 | bf16: what the steps run in
    precision_choice: probe.PrecisionChoice | None  # why, when auto measured it here
    # how a bf16 step on a CPU takes its small maps' weight gradients: "conv" (the library's
    # convolution backward) or "matmul" (models/conv_grad.py), as the probe measured here
    weight_grad: str = "conv"

    @property
    def num_train(self) -> int:
        return len(self.loader.labels)


def build(
    cfg: TrainConfig,
    device: str | None = None,
    *,
    data: CifarDataset | None = None,
    model: ModelLike | None = None,
    saved_precision: str | None = None,
    saved_weight_grad: str | None = None,
) -> Parts:
    """The parts of a run of ``cfg``, in the order that makes a seeded run repeat exactly:
    threads and seeds, the data, the loaders, the model, its precision, then the device.
    ``data`` already loaded (a budget's plan loads it) is used as is; ``model`` is the user's
    own (a module, or a builder called here); ``saved_precision`` is what a resumed run
    chose, ``saved_weight_grad`` how its steps took their weight gradients."""
    dev = devices.resolve_device(device or cfg.device)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    seed_everything(cfg.seed)
    # Flush denormal floats to zero. As training goes on, some of Adam's moments (and
    # gradients) decay into the denormal range, where x86 arithmetic is many times slower:
    # the mlp's step went from 28 ms to 85 ms after ~600 steps without this. Zero instead
    # of a number below 1e-38 changes no result that matters.
    torch.set_flush_denormal(True)
    data = data if data is not None else load_data(cfg)
    loader, val_loader = build_loaders(cfg, data, dev)
    net = build_model(cfg, data.num_classes, model)
    precision, choice = choose_precision(
        cfg, net, data.num_classes, dev, saved_precision, own=model is not None
    )
    weight_grad = choose_weight_grad(
        cfg, net, data.num_classes, dev, precision, choice, saved_weight_grad, own=model is not None
    )
    use_shifted_weight_grad(net, weight_grad == "matmul")
    if cfg.sync_bn:
        if dev.type != "cuda":
            raise CifarlabError("sync_bn needs CUDA GPUs (PyTorch's SyncBatchNorm)")
        net = nn.SyncBatchNorm.convert_sync_batchnorm(net)
    net = net.to(dev)
    if cfg.channels_last:
        net = net.to(memory_format=torch.channels_last)
    return Parts(data, loader, val_loader, net, dev, precision, choice, weight_grad)


def build_loaders(
    cfg: TrainConfig, data: CifarDataset, device: torch.device
) -> tuple[BatchLoader, BatchLoader | None]:
    """The training loader (over a class-balanced subset of ``train_size`` images, if set;
    under torchrun each rank takes its part of every batch) and the validation loader."""
    images, labels = data.train.images, data.train.labels
    if cfg.train_size is not None and cfg.train_size < len(labels):
        keep = torch.from_numpy(stratified_holdout(labels.numpy(), cfg.train_size, seed=0))
        images, labels = images[keep], labels[keep]
    elif cfg.train_size is not None and cfg.train_size > len(labels) and devices.rank() == 0:
        warnings.warn(
            f"train_size {cfg.train_size} is more than the {len(labels)} training "
            "images: training on all of them",
            stacklevel=3,
        )
    mean, std = cfg.normalization()
    loader = BatchLoader(
        images,
        labels,
        cfg.batch_size,
        shuffle=True,
        seed=cfg.seed,
        device=device,
        augment=Augment(**cfg.augment),
        mean=mean,
        std=std,
        channels_last=cfg.channels_last,
        rank=devices.rank(),
        world_size=devices.world_size(),
    )
    val_loader = None
    if len(data.val):
        val_loader = eval_loader(
            data.val.images,
            data.val.labels,
            batch_size=cfg.eval_batch_size,
            device=device,
            mean=mean,
            std=std,
            channels_last=cfg.channels_last,
        )
    return loader, val_loader


def choose_precision(
    cfg: TrainConfig,
    model: nn.Module,
    num_classes: int,
    device: torch.device,
    saved: str | None = None,
    own: bool = False,
) -> tuple[str, probe.PrecisionChoice | None]:
    """fp32 or bf16. ``auto`` is decided by timing this model's training step here (or the
    decision a resumed run made: ``saved``); under torchrun rank 0 measures and tells the
    others. ``own``: ``model`` is the user's, timed as copies of it."""
    if cfg.precision != "auto":
        return cfg.precision, None
    if saved in ("fp32", "bf16"):
        return saved, None
    choice = None
    bf16 = 0.0
    if devices.rank() == 0:
        choice = probe.choose_precision(
            cfg.model, num_classes=num_classes, device=device, **_probe_args(cfg, model, own)
        )
        bf16 = 1.0 if choice.precision == "bf16" else 0.0
        print(f"precision auto → {choice.precision}: {choice.reason}", flush=True)
    (bf16,) = distributed.all_sum([bf16], device)
    return ("bf16" if bf16 > 0 else "fp32"), choice


# Overrides the probe's choice of weight gradients for bf16 steps on a CPU: conv or matmul
# (for side-by-side timings, or the same numbers as a run on another machine); auto: measured.
WEIGHT_GRAD_ENV = "CIFARLAB_WEIGHT_GRAD"


def choose_weight_grad(
    cfg: TrainConfig,
    model: nn.Module,
    num_classes: int,
    device: torch.device,
    precision: str,
    choice: probe.PrecisionChoice | None,
    saved: str | None = None,
    own: bool = False,
) -> str:
    """ "matmul" where a bf16 step on this CPU measured faster with the small maps' weight
    gradients as matrix products (``probe``: the speed ``auto`` chose by, or the bf16 step
    timed now, cached per machine), else "conv"; ``$CIFARLAB_WEIGHT_GRAD`` (conv, matmul)
    overrides the probe; a resumed run keeps what it used. Under
    torchrun rank 0 decides and tells the others."""
    if precision != "bf16" or device.type != "cpu" or not use_shifted_weight_grad(model, False):
        return "conv"
    if saved in probe.WEIGHT_GRADS:
        return saved
    forced = os.environ.get(WEIGHT_GRAD_ENV, "auto").strip().lower() or "auto"
    if forced in probe.WEIGHT_GRADS:
        return forced
    if forced != "auto":
        raise CifarlabError(
            f"${WEIGHT_GRAD_ENV}={forced!r}: must be auto, {' or '.join(probe.WEIGHT_GRADS)}"
        )
    matmul = 0.0
    if devices.rank() == 0:
        if choice is not None:
            speed = next(s for s in choice.speeds if s.precision == "bf16")
        else:
            speed = probe.choose_weight_grad(
                cfg.model, num_classes=num_classes, **_probe_args(cfg, model, own)
            )
            if speed.weight_grad == "matmul":
                print(f"bf16 steps{probe.weight_grad_words(speed)}", flush=True)
        matmul = 1.0 if speed.weight_grad == "matmul" else 0.0
    (matmul,) = distributed.all_sum([matmul], device)
    return "matmul" if matmul > 0 else "conv"


def _probe_args(cfg: TrainConfig, model: nn.Module, own: bool) -> dict[str, Any]:
    """How the probe times ``cfg``'s step: a model passed in may not import by its path, so
    the probe times copies of it (untrained yet: the probe runs before the first step)."""
    return {
        "build": (lambda: copy.deepcopy(model)) if own else None,
        "model_args": _probe_key_args(cfg, model, own),
        "batch_size": cfg.batch_size,
        "channels_last": cfg.channels_last,
    }


def _probe_key_args(cfg: TrainConfig, model: nn.Module, own: bool) -> dict[str, Any]:
    """What tells the probe cache this model from others: its options, and for a model
    passed in (whose source may change under the same name) the shapes of its weights."""
    if not own:
        return cfg.model_args
    text = json.dumps(sorted(shapes(model).items()))
    return {**cfg.model_args, "_shapes": hashlib.sha1(text.encode()).hexdigest()[:12]}


# --------------------------------------------------------------------------- own models


# The most parameters a model built from a name and model_args may have (8 GB of float32
# weights): past it a typo in model_args (widths of 10**6) would exhaust the memory.
MAX_PARAMS = 1 << 31


def check_model_size(cfg: TrainConfig) -> None:
    """A model built from its name and ``model_args`` has at most :data:`MAX_PARAMS`
    parameters (counted on the meta device, before any data is loaded or memory taken)."""
    info = get_info(cfg.dataset)
    coarse = cfg.labels == "coarse" and info.num_coarse_classes
    planned = planned_shapes(cfg.model, coarse or info.num_classes, cfg.model_args)
    size = sum(math.prod(s) for s in planned.values()) if planned else 0
    if size > MAX_PARAMS:
        raise SettingError(
            "model_args",
            f"{cfg.model_args} give model {cfg.model!r} {size:,} "
            f"parameters, more than the {MAX_PARAMS:,} a run may have",
        )


def own_model_config(config: TrainConfig, model: ModelLike) -> TrainConfig:
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
        print(
            f"warning: the model {path} cannot be rebuilt by another process ({problem}): "
            "this run trains, but `cifarlab evaluate`, `predict` and `export` will not open "
            "it; define the model at the top level of an importable module to use them",
            file=sys.stderr,
        )


def model_source(cfg: TrainConfig) -> str | None:
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


def check_rebuild(cfg: TrainConfig, num_classes: int, model: nn.Module) -> None:
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
        print(
            f"warning: rebuilding {cfg.model}(num_classes={num_classes}, **{cfg.model_args}) "
            f"does not give the module being trained ({problem}): give its constructor's "
            "arguments as model_args, or `cifarlab evaluate`, `predict` and `export` will "
            "not open this run",
            file=sys.stderr,
        )


def build_model(cfg: TrainConfig, num_classes: int, model: ModelLike | None) -> nn.Module:
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
