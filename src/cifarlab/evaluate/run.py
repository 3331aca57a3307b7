"""Evaluate a trained run on a split: metrics, tables, JSON, and the HTML report."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cifarlab.data.dataset import CifarDataset, load_dataset
from cifarlab.errors import CifarlabError
from cifarlab.evaluate.inference import TTA_LEVELS, eval_loader, predict_logits
from cifarlab.models import create_model
from cifarlab.report.io import atomic_write
from cifarlab.train.checkpoint import clean_state_dict, load_checkpoint
from cifarlab.train.config import TrainConfig
from cifarlab.train.device import resolve_device, run_autocast


def read_run(run_dir: str | os.PathLike) -> tuple[Path, dict[str, Any], list[dict[str, Any]]]:
    """The run folder, its config.json and its metrics.jsonl rows; clear errors if absent."""
    run = Path(run_dir)
    if not run.is_dir():
        raise CifarlabError(f"{run}: no such run folder")
    try:
        config = json.loads((run / "config.json").read_text())
    except FileNotFoundError:
        raise CifarlabError(f"{run}: not a run folder (no config.json)") from None
    except json.JSONDecodeError as e:
        raise CifarlabError(f"{run / 'config.json'}: not valid JSON ({e})") from None
    if not isinstance(config, dict):
        raise CifarlabError(f"{run / 'config.json'}: expected a JSON object")
    missing = [k for k in ("model", "num_classes", "class_names") if k not in config]
    if missing:
        raise CifarlabError(
            f"{run / 'config.json'}: missing {', '.join(missing)} (not written by cifarlab train?)"
        )
    history = []
    if (run / "metrics.jsonl").is_file():
        for n, line in enumerate((run / "metrics.jsonl").read_text().splitlines(), 1):
            if line.strip():
                try:
                    history.append(json.loads(line))
                except json.JSONDecodeError:
                    raise CifarlabError(f"{run / 'metrics.jsonl'}: line {n} is not JSON") from None
    return run, config, history


def load_model(run_dir: Path, config: dict[str, Any], checkpoint: str = "best") -> tuple:
    """The run's model with the weights of ``checkpoint`` ("best" or "last"), on the CPU."""
    path = run_dir / f"{checkpoint}.pt"
    if checkpoint not in ("best", "last"):
        raise CifarlabError(f"--checkpoint must be best or last, got {checkpoint!r}")
    state = load_checkpoint(path)
    model = create_model(config["model"], config["num_classes"], **config.get("model_args", {}))
    model.load_state_dict(clean_state_dict(state["model"]))
    return model.eval(), state


def evaluate_run(
    run_dir: str | os.PathLike,
    split: str = "test",
    *,
    checkpoint: str = "best",
    root: str | os.PathLike | None = None,
    device: str = "auto",
    tta: int | None = None,
    report: bool = True,
) -> dict[str, Any]:
    """Evaluate ``checkpoint`` of a run on ``split``; writes ``eval_<split>.json``,
    ``predictions_<split>.npz`` and (``report=True``) ``report.html`` (``report_val.html``
    for val) into the run folder.

    ``tta`` is the test-time augmentation level (default: the run's own ``tta`` setting); with
    TTA the accuracy without it is reported too, as ``accuracy_without_tta``."""
    from cifarlab.evaluate.metrics import compute_metrics

    if split not in ("test", "val"):
        raise CifarlabError(f"--split must be test or val, got {split!r}")
    run, config, history = read_run(run_dir)
    cfg = TrainConfig.from_dict(config)
    ds: CifarDataset = load_dataset(
        cfg.dataset, root if root is not None else cfg.root, val_size=cfg.val_size,
        labels=cfg.labels,
    )  # fmt: skip
    part = ds.split(split)
    if len(part) == 0:
        raise CifarlabError(f"{run}: the {split} split is empty (the run used --val-size 0)")
    tta = cfg.tta if tta is None else tta
    if tta not in TTA_LEVELS:
        raise CifarlabError(f"--tta must be one of {', '.join(map(str, TTA_LEVELS))}, got {tta}")
    model, state = load_model(run, config, checkpoint)
    dev = resolve_device(device)
    model.to(dev)
    if cfg.channels_last:
        model = model.to(memory_format=torch.channels_last)
    stats = (ds.mean, ds.std) if cfg.normalize == "standard" else (None, None)
    loader = eval_loader(part.images, part.labels, batch_size=cfg.eval_batch_size, device=dev,
                         mean=stats[0], std=stats[1], channels_last=cfg.channels_last)  # fmt: skip
    autocast = run_autocast(config, dev)
    logits, labels = predict_logits(model, loader, tta=tta, autocast=autocast)
    probs = torch.softmax(logits, 1).numpy()
    metrics = compute_metrics(labels.numpy(), probs, ds.class_names, split=split)
    metrics.update(checkpoint=checkpoint, checkpoint_epoch=int(state["epoch"]), tta=tta)
    if tta:
        plain, _ = predict_logits(model, loader, tta=0, autocast=autocast)
        metrics["accuracy_without_tta"] = float((plain.argmax(1) == labels).float().mean())
    atomic_write(run / f"eval_{split}.json",
                 lambda tmp: tmp.write_text(json.dumps(metrics, indent=1) + "\n"))  # fmt: skip

    def save_predictions(tmp: Path) -> None:
        with open(tmp, "wb") as f:
            np.savez_compressed(f, labels=labels.numpy(), probs=probs.astype(np.float32))

    atomic_write(run / f"predictions_{split}.npz", save_predictions)
    if report:
        from cifarlab.report.html import write_report

        metrics["report"] = str(
            write_report(run, config, history, metrics, part.images.numpy(), probs)
        )
    return metrics
