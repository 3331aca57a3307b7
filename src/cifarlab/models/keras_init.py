"""Keras' default initialisation (Glorot-uniform weights, zero biases), so the models of the
original Keras study start from the same distribution as they did there."""

from __future__ import annotations

from torch import nn


def keras_init(model: nn.Module) -> nn.Module:
    for m in model.modules():
        if isinstance(m, (nn.Linear, nn.Conv2d)):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
    return model
