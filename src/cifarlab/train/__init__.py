"""Training: :func:`train` runs a :class:`TrainConfig` into a run folder.

The loop is :mod:`cifarlab.train.engine`; :func:`train` itself (checking a call, building
the parts, calibrating at the end) is :mod:`cifarlab.train.launch`. The names below are
resolved on first use, as the package ``cifarlab``'s are: importing one module of this package
(its settings, say, which the run folder's schema checks) does not import the whole of
training.
"""

import importlib
from typing import Any

_NAMES = {
    "TrainConfig": "cifarlab.train.config",
    "TrainingError": "cifarlab.train.engine",
    "TrainingInterrupted": "cifarlab.train.engine",
    "train": "cifarlab.train.launch",
    "train_group": "cifarlab.train.group",
}

__all__ = ["TrainConfig", "TrainingError", "TrainingInterrupted", "train", "train_group"]


def __getattr__(name: str) -> Any:
    if name in _NAMES:
        return getattr(importlib.import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'cifarlab.train' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_NAMES})
