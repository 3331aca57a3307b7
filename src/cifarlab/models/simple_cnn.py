"""The original study's small CNN: two valid 3×3 convolutions with max-pooling, then two dense
layers (167,562 parameters for 10 classes)."""

from __future__ import annotations

from torch import nn

from cifarlab.models.keras_init import keras_init
from cifarlab.models.registry import register


@register(
    "simple_cnn",
    "the original study's CNN: Conv 32, MaxPool, Conv 64, MaxPool, Dense 64, Dense (classes)",
    recipe="original",
)
def simple_cnn(num_classes: int = 10) -> nn.Module:
    return keras_init(
        nn.Sequential(
            nn.Conv2d(3, 32, 3),  # 32 → 30
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # → 15
            nn.Conv2d(32, 64, 3),  # → 13
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # → 6
            nn.Flatten(),
            nn.Linear(64 * 6 * 6, 64),
            nn.ReLU(inplace=True),
            nn.Linear(64, num_classes),
        )
    )
