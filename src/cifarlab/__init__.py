"""cifarlab: train, evaluate and use CIFAR-10/100 image classifiers.

>>> from cifarlab import load_dataset
>>> ds = load_dataset("cifar10", root="data", val_size=5000)
>>> ds.train.images.shape  # uint8, NHWC
torch.Size([45000, 32, 32, 3])
>>> image, label = ds.train[0]  # a torch Dataset too: uint8 3×32×32, int

The public API, each with its docstring: :func:`load_dataset`, :func:`train` with
:class:`TrainConfig` / :func:`recipe_config`, :func:`evaluate_run`, :func:`load_run`,
:func:`export_run`, :func:`create_model` and :func:`register_model` (a model of your own);
:func:`train_group` (one set-up, several seeds) and :func:`read_config_file` (an experiment
as a file).
"""

__version__ = "0.1.0"

import importlib
import sys
import types
from typing import Any

# The public API is imported on first use, not with the package: `import cifarlab` (which every
# `cifarlab ...` command does first) must not import torch before the CLI can catch a Ctrl-C.
_API = {
    "CifarDataset": "cifarlab.data.dataset", "Split": "cifarlab.data.dataset",
    "load_dataset": "cifarlab.data.dataset", "CifarlabError": "cifarlab.errors",
    "DataError": "cifarlab.errors", "DownloadError": "cifarlab.errors",
    "SettingError": "cifarlab.errors", "evaluate_run": "cifarlab.evaluate.run",
    "export_run": "cifarlab.export", "create_model": "cifarlab.models",
    "register_model": "cifarlab.models", "Prediction": "cifarlab.predict",
    "Run": "cifarlab.predict", "load_run": "cifarlab.predict", "RunFolder": "cifarlab.runs",
    "open_run": "cifarlab.trained", "TrainConfig": "cifarlab.train.config",
    "recipe_config": "cifarlab.train.recipes", "train_group": "cifarlab.train.group",
    "read_config_file": "cifarlab.train.config",
}  # fmt: skip


class _Package(types.ModuleType):
    """The package module: API names resolved on first use. ``train`` is both a subpackage and
    the function users call: importing the subpackage must not replace the function."""

    @property
    def train(self) -> Any:
        patched = self.__dict__.get("_train")
        return (
            patched
            if patched is not None
            else importlib.import_module("cifarlab.train.launch").train
        )

    @train.setter
    def train(self, value: Any) -> None:
        # the import system binds the subpackage here: the name stays the function; anything
        # else (mock.patch, monkeypatch) replaces it until deleted
        if not isinstance(value, types.ModuleType):
            self.__dict__["_train"] = value

    @train.deleter
    def train(self) -> None:
        self.__dict__.pop("_train", None)

    def __getattr__(self, name: str) -> Any:
        if name in _API:
            value = getattr(importlib.import_module(_API[name]), name)
            setattr(self, name, value)
            return value
        if not name.startswith("_"):  # a subpackage or module, as `cifarlab.data` always was
            try:
                return importlib.import_module(f"cifarlab.{name}")
            except ModuleNotFoundError as e:
                if e.name != f"cifarlab.{name}":
                    raise
        raise AttributeError(f"module 'cifarlab' has no attribute {name!r}")

    def __dir__(self) -> list[str]:
        return sorted({*super().__dir__(), *_API, "train"})


sys.modules[__name__].__class__ = _Package

__all__ = [
    "CifarDataset",
    "CifarlabError",
    "DataError",
    "DownloadError",
    "Prediction",
    "Run",
    "RunFolder",
    "SettingError",
    "Split",
    "TrainConfig",
    "__version__",
    "create_model",
    "evaluate_run",
    "export_run",
    "load_dataset",
    "load_run",
    "open_run",
    "recipe_config",
    "register_model",
    "train",
    "train_group",
    "read_config_file",
]
