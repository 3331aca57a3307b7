"""The training engine: :func:`train` runs a :class:`TrainConfig` into a run folder."""

from cifarlab.train.config import TrainConfig
from cifarlab.train.engine import TrainingError, TrainingInterrupted, train

__all__ = ["TrainConfig", "TrainingError", "TrainingInterrupted", "train"]
