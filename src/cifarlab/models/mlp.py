"""The original study's fully connected network ("ANN"): 3072 → 3000 → 1000 → classes."""

from __future__ import annotations

from torch import nn

from cifarlab.models.keras_init import keras_init
from cifarlab.models.registry import register


@register(
    "mlp",
    "the original study's ANN: Flatten, Dense 3000 ReLU, Dense 1000 ReLU, Dense (classes)",
    recipe="original",
)
def mlp(num_classes: int = 10) -> nn.Module:
    return keras_init(
        nn.Sequential(
            nn.Flatten(),
            nn.Linear(3 * 32 * 32, 3000),
            nn.ReLU(inplace=True),
            nn.Linear(3000, 1000),
            nn.ReLU(inplace=True),
            nn.Linear(1000, num_classes),
        )
    )
