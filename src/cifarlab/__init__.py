"""cifarlab: train, evaluate and use CIFAR-10/100 image classifiers.

>>> from cifarlab import load_dataset
>>> ds = load_dataset("cifar10", root="data", val_size=5000)
>>> ds.train.images.shape  # uint8, NHWC
torch.Size([45000, 32, 32, 3])
"""

from cifarlab.data.dataset import CifarDataset, Split, load_dataset
from cifarlab.errors import CifarlabError, DataError, DownloadError
from cifarlab.predict import Prediction, Run, load_run

__version__ = "0.1.0"

__all__ = [
    "CifarDataset",
    "CifarlabError",
    "DataError",
    "DownloadError",
    "Prediction",
    "Run",
    "Split",
    "__version__",
    "load_dataset",
    "load_run",
]
