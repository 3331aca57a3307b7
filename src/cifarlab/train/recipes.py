"""Recipes: named, complete training set-ups (model, optimizer, schedule, augmentation,
evaluation), each one :class:`TrainConfig`, saved with every run that uses it.

``cifarlab train --recipe fast`` starts from the recipe; any option given on the command line
(or ``--set FIELD=VALUE``) overrides its field. The values, descriptions and measured figures
are data in ``train/recipe_data.py`` (which the config logic reads too, to fill the fields a
config leaves ``None``); here they become :class:`Recipe` objects, each with its config.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from cifarlab.train.config import TrainConfig, make_config
from cifarlab.train.recipe_data import (
    RECIPE_DATA,
    default_recipe,
    recipe_data,
    recipe_values,
    sgd_hyper,
)

__all__ = [
    "ORIGINAL",
    "RECIPES",
    "Recipe",
    "default_recipe",
    "get_recipe",
    "recipe_config",
    "sgd_hyper",
]


@dataclass(frozen=True)
class Recipe:
    name: str
    description: str
    config: TrainConfig
    # What was measured (BENCHMARKS.md): test accuracy mean/std over seeds, training seconds,
    # and the machine that measured them (times hold on that CPU only; see `cifarlab doctor`).
    measured: dict[str, Any] = field(default_factory=dict)


def _recipe(name: str) -> Recipe:
    data = RECIPE_DATA[name]
    return Recipe(name, data.description, TrainConfig(**recipe_values(name)), data.measured)


RECIPES: dict[str, Recipe] = {name: _recipe(name) for name in RECIPE_DATA}

# The original study's set-up, complete: every other recipe starts from it and says what it
# changes (train/recipe_data.py).
ORIGINAL = RECIPES["original"].config


def get_recipe(name: str) -> Recipe:
    """The recipe ``name``; an unknown name is a :class:`SettingError` naming ``recipe``."""
    recipe_data(name)  # raises for an unknown name
    return RECIPES[name]


def recipe_config(name: str, **changes: Any) -> TrainConfig:
    """The recipe ``name`` with ``changes`` (TrainConfig fields) applied, resolved."""
    return make_config(name, **changes)
