"""Models are created by name: ``create_model("simple_cnn", num_classes=10)``.

Each model file registers its builder with :func:`register`, together with the training
defaults that belong to it (the recipe it was designed with).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from cifarlab.errors import CifarlabError


@dataclass(frozen=True)
class ModelEntry:
    name: str
    builder: Callable[..., nn.Module]
    description: str
    defaults: dict[str, Any] = field(default_factory=dict)  # training defaults for this model


_REGISTRY: dict[str, ModelEntry] = {}


def register(name: str, description: str, **defaults: Any) -> Callable:
    """Decorator: register ``builder(num_classes) -> nn.Module`` under ``name``."""

    def wrap(builder: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        _REGISTRY[name] = ModelEntry(name, builder, description, defaults)
        return builder

    return wrap


def _load_all() -> None:
    # Importing the model modules runs their @register decorators.
    from cifarlab.models import fastnet, mlp, resnet, simple_cnn  # noqa: F401


def model_names() -> list[str]:
    _load_all()
    return sorted(_REGISTRY)


def get_entry(name: str) -> ModelEntry:
    _load_all()
    if name not in _REGISTRY:
        raise CifarlabError(f"unknown model {name!r}: choose one of {', '.join(sorted(_REGISTRY))}")
    return _REGISTRY[name]


def create_model(name: str, num_classes: int = 10, **kwargs: Any) -> nn.Module:
    """Build the model registered as ``name`` for ``num_classes`` classes."""
    if num_classes < 2:
        raise CifarlabError(f"num_classes must be at least 2, got {num_classes}")
    entry = get_entry(name)
    try:
        return entry.builder(num_classes=num_classes, **kwargs)
    except TypeError as e:  # an option the builder does not take
        raise CifarlabError(f"model {name!r} does not take these options {kwargs}: {e}") from None


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
