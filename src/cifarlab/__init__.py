"""cifarlab: train, evaluate and use CIFAR-10/100 image classifiers.

>>> from cifarlab import load_dataset
>>> ds = load_dataset("cifar10", root="data", val_size=5000)
>>> ds.train.images.shape  # uint8, NHWC
torch.Size([45000, 32, 32, 3])
>>> image, label = ds.train[0]  # a torch Dataset too: uint8 3×32×32, int

The public API, each with its docstring: :func:`load_dataset`, :func:`train` with
:class:`TrainConfig` / :func:`recipe_config`, :func:`evaluate_run`, :func:`load_run`,
:func:`export_run`, :func:`create_model` and :func:`register_model` (a model of your own).
"""

__version__ = "0.1.0"

from cifarlab.data.dataset import CifarDataset, Split, load_dataset  # noqa: E402
from cifarlab.errors import CifarlabError, DataError, DownloadError, SettingError  # noqa: E402
from cifarlab.evaluate.run import evaluate_run  # noqa: E402
from cifarlab.export import export_run  # noqa: E402
from cifarlab.models import create_model, register_model  # noqa: E402
from cifarlab.predict import Prediction, Run, load_run  # noqa: E402
from cifarlab.runs import RunFolder, open_run  # noqa: E402
from cifarlab.train import TrainConfig, train  # noqa: E402
from cifarlab.train.recipes import recipe_config  # noqa: E402

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
]
