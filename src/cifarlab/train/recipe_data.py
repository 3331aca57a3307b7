"""The recipes as data: the original study's set-up (every training setting), what each named
recipe changes in it, its description and its measured figures. Nothing here imports
:mod:`cifarlab.train`: the config logic (``train/config.py``) reads these values to fill the
fields a :class:`~cifarlab.train.config.TrainConfig` leaves ``None``, and ``train/recipes.py``
builds the public :class:`~cifarlab.train.recipes.Recipe` objects (each with its
``TrainConfig``) from them.

The figures in ``measured`` come from ``BENCHMARKS.md`` (section "Recipes"), where the
commands that produced them are; a test checks that the two agree.

Learning rates here are PyTorch's, for the mean loss of a batch. The SGD recipes follow
airbench's decoupled form: for batch size B, momentum m and an "lr per 1024 images" L,
``lr = L · B / (1024 · (1 + 1/(1-m)))`` and ``weight_decay = W / L`` for a decay W per 1024
images; :func:`sgd_hyper` does that arithmetic.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Any

from cifarlab.errors import SettingError
from cifarlab.models import get_entry


def sgd_hyper(batch_size: int, lr_per_1024: float, wd_per_1024: float, momentum: float) -> dict:
    """PyTorch lr and weight decay for Nesterov SGD from airbench's decoupled values."""
    kilostep = 1024 * (1 + 1 / (1 - momentum))
    return {
        "batch_size": batch_size,
        "lr": round(lr_per_1024 * batch_size / kilostep, 10),
        "weight_decay": round(wd_per_1024 / lr_per_1024, 10),
        "momentum": momentum,
    }


XEON_207 = "2 cores of an Intel Xeon (family 6, model 207, Emerald Rapids: AVX512-BF16, AMX)"
ZEN4 = "2 cores of an AMD EPYC (family 25, model 17, Zen 4: AVX512-BF16, no AMX)"

# The original study's set-up: every training setting (the fields a TrainConfig may leave
# None); every other recipe starts from it and says what it changes. These were TrainConfig's
# own defaults before recipes became the one source of them.
ORIGINAL_VALUES: dict[str, Any] = {
    "model": "simple_cnn",
    "model_args": {},
    "epochs": 10,
    "batch_size": 32,
    "lr": 1e-3,
    "optimizer": "adam",
    "momentum": 0.9,
    "muon_lr": 0.24,
    "muon_momentum": 0.6,
    "weight_decay": 0.0,
    "label_smoothing": 0.0,
    "normalize": "unit",
    "augment": {},
    "progressive": {},
    "schedule": "constant",
    "warmup": 0.0,
    "lr_start": 0.0,
    "lr_end": 0.0,
    "bias_lr_scale": 1.0,
    "lookahead_every": 0,
    "lookahead_start": 0.0,
    "whiten_bias_epochs": None,
    "whiten_eps": 5e-4,
    "precision": "fp32",
    "channels_last": False,
    "tta": 0,
    "eval_batch_size": 1000,
}

# Shared by the FastNet recipes: what the published fast recipes do, re-tuned for a CPU.
_FAST_COMMON: dict[str, Any] = {
    "optimizer": "sgd",
    "normalize": "standard",
    "label_smoothing": 0.2,
    "augment": {"translate": 2, "flip": "alternate"},
    "schedule": "triangle",
    "warmup": 0.23,
    "lr_start": 0.2,
    "lr_end": 0.07,
    "bias_lr_scale": 64.0,
    "lookahead_every": 5,
    "lookahead_start": 0.3,
    "whiten_bias_epochs": 3,
    # Version 2 (issue 26), chosen on the validation split (benchmarks/noise_suspects.py;
    # BENCHMARKS.md "Pixel noise"): the whitening stem's eigenvalue floor 3 instead of
    # airbench's 5e-4, which multiplied the patch directions this JPEG-rebuilt copy hardly
    # uses (its smallest eigenvalues are ~1e-4) by up to 40 — the directions mild pixel noise
    # fills; and each image standardized inside the network (contrast, fog, brightness).
    "whiten_eps": 3.0,
    "model_args": {"standardize": True},
    "precision": "auto",
    "channels_last": True,
    "tta": 2,
}

# Muon on the conv filters (lr 0.08: 0.04-0.36 tried) and 24×24-pixel images for the first
# half of the steps: chosen on the validation split (benchmarks/ablations.py, BENCHMARKS.md
# "Fewer FLOPs for the same accuracy"). The other parameters keep the SGD recipe's settings.
_MUON: dict[str, Any] = {
    "optimizer": "muon",
    "muon_lr": 0.08,
    "muon_momentum": 0.6,
    "progressive": {"24": 0.5},
}


@dataclass(frozen=True)
class RecipeData:
    """One named recipe as data: what it changes in :data:`ORIGINAL_VALUES`, and what was
    measured (BENCHMARKS.md): test accuracy mean/std over seeds, training seconds, the
    machine that measured them (times hold on that CPU only; see `cifarlab doctor`) and the
    recipe's version they were measured with (``recipe_version``; 1 when not given)."""

    description: str
    changes: dict[str, Any] = field(default_factory=dict)
    measured: dict[str, Any] = field(default_factory=dict)
    version: int = 1  # raised when what the recipe trains changes (VERSIONS says how)


# What each version of a recipe changed; a run records its recipe's version in config.json,
# and the robustness and evaluation reports name it.
VERSIONS: dict[int, str] = {
    1: "as first published",
    2: "FastNet recipes: the whitening stem's eigenvalue floor (whiten_eps) 5e-4 → 3 and each "
    "image standardized in the network (model_args standardize), for robustness to pixel "
    "noise and contrast (issue 26)",
}


# The named recipes, in the order `cifarlab recipes` lists them.
RECIPE_DATA: dict[str, RecipeData] = {
    "original": RecipeData(
        "the original study: Adam lr 1e-3, batch 32, pixels / 255, no augmentation, 10 "
        "epochs (simple_cnn 0.679, mlp 0.479: BENCHMARKS.md); mlp's and simple_cnn's default",
    ),
    "quick": RecipeData(
        "FastNet-S, 3 epochs: ≥ 70% in under 30 s of CPU training",
        {
            "model": "fastnet_s",
            "epochs": 3,
            **{**_FAST_COMMON, "whiten_bias_epochs": 1},
            # twice airbench's lr for these few steps (val 0.778 against 0.769)
            **sgd_hyper(256, 23.0, 0.0306, 0.85),
        },
        {
            "test_acc": 0.770,
            "test_acc_std": 0.003,
            "train_seconds": 28,
            "machine": XEON_207,
            "recipe_version": 2,
        },
        version=2,
    ),
    "fast": RecipeData(
        "FastNet-M, 8 epochs: ≥ 87% in under 5 min of CPU training with AMX (7 min on a Zen 4)",
        {"model": "fastnet_m", "epochs": 8, **_FAST_COMMON, **sgd_hyper(256, 11.5, 0.0153, 0.85)},
        {
            "test_acc": 0.884,
            "test_acc_std": 0.003,
            "train_seconds": 432,
            "machine": ZEN4,
            "recipe_version": 2,
        },
        version=2,
    ),
    "max-cpu": RecipeData(
        "FastNet-L (airbench94's shape), 18 epochs: ≥ 90.5% in under 18 min of CPU training with "
        "AMX (28 min on a Zen 4)",
        {"model": "fastnet_l", "epochs": 18, **_FAST_COMMON, **sgd_hyper(256, 11.5, 0.0153, 0.85)},
        {
            "test_acc": 0.907,
            "test_acc_std": None,  # one seed (BENCHMARKS.md: 28 minutes a seed on the Zen 4)
            "train_seconds": 1701,
            "machine": ZEN4,
            "recipe_version": 2,
        },
        version=2,
    ),
    "fast-muon": RecipeData(
        "FastNet-M with Muon and 24-px images for the first half, 8 epochs: `fast`'s "
        "accuracy at 4/5 of its time (validation); a --budget candidate",
        {
            "model": "fastnet_m",
            "epochs": 8,
            **{**_FAST_COMMON, **_MUON},
            **sgd_hyper(256, 11.5, 0.0153, 0.85),
        },
        version=2,
    ),
    "max-cpu-muon": RecipeData(
        "FastNet-L with Muon and 24-px images for the first half, 10 epochs: airbench94's "
        "accuracy in less of its time; a --budget candidate",
        {
            "model": "fastnet_l",
            "epochs": 10,
            **{**_FAST_COMMON, **_MUON},
            **sgd_hyper(256, 11.5, 0.0153, 0.85),
        },
        version=2,
    ),
    "long": RecipeData(
        "FastNet-XL (airbench95's widths) with Muon and 24-px images for the first half, "
        "16 epochs: a --budget candidate for long budgets (so far, on validation, "
        "`max-cpu-muon`'s accuracy at 2.6× its cost per epoch)",
        {
            "model": "fastnet_xl",
            "epochs": 16,
            **{**_FAST_COMMON, **_MUON},
            **sgd_hyper(256, 11.5, 0.0153, 0.85),
        },
        version=2,  # born with version 2's whitening floor and standardization
    ),
    "resnet18": RecipeData(
        "CIFAR ResNet-18, 60 epochs of SGD + cosine: for a GPU and a long budget",
        {
            "model": "resnet18",
            "epochs": 60,
            "batch_size": 256,
            "optimizer": "sgd",
            "lr": 0.1,
            "momentum": 0.9,
            "weight_decay": 5e-4,
            "normalize": "standard",
            "label_smoothing": 0.1,
            "augment": {"translate": 4, "flip": "random"},
            "schedule": "cosine",
            "warmup": 0.03,
            "lr_start": 0.1,
            "lr_end": 0.0,
            "precision": "auto",
            "channels_last": True,
            "tta": 1,
        },
    ),
}


def measured_accuracy(measured: dict[str, Any]) -> str:
    """A recipe's measured test accuracy as `cifarlab recipes` and BENCHMARKS.md write it:
    ``0.884 ± 0.003`` over several seeds, ``0.908 (1 seed)`` where one seed was measured
    (``test_acc_std`` None: no spread to give)."""
    if measured.get("test_acc_std") is None:
        return f"{measured['test_acc']:.3f} (1 seed)"
    return f"{measured['test_acc']:.3f} ± {measured['test_acc_std']:.3f}"


def recorded_version(config: dict[str, Any]) -> int | None:
    """The version of its recipe a run trained, from its ``config.json``: ``recipe_version``,
    or 1 for a run written before versions were recorded; None for a run without a named
    recipe."""
    if not config.get("recipe"):
        return None
    v = config.get("recipe_version")
    return v if isinstance(v, int) and not isinstance(v, bool) and v >= 1 else 1


def describe_version(config: dict[str, Any]) -> str:
    """A run's recipe and its version in words, e.g. ``max-cpu-muon version 2 (FastNet
    recipes: …)``; a run without a named recipe says so."""
    version = recorded_version(config)
    if version is None:
        return "no named recipe (own settings)"
    about = VERSIONS.get(version, "a version this cifarlab does not know")
    return f"{config['recipe']} version {version} ({about})"


def recipe_data(name: str) -> RecipeData:
    """The recipe ``name``; an unknown name is a :class:`SettingError` naming ``recipe``."""
    if name not in RECIPE_DATA:
        raise SettingError("recipe", f"{name!r} is unknown: choose one of {', '.join(RECIPE_DATA)}")
    return RECIPE_DATA[name]


def recipe_values(name: str) -> dict[str, Any]:
    """Every training setting of the recipe ``name`` (the original set-up with its changes),
    and ``recipe``: its name. A fresh copy: the caller may change it."""
    changes = recipe_data(name).changes
    return copy.deepcopy({**ORIGINAL_VALUES, **changes, "recipe": name})


def default_recipe(model: str | None) -> str:
    """The recipe a model trains with when none is named: the one its registration names
    (``cifarlab models`` lists them), else ``original``."""
    if model is None:
        return "original"
    return get_entry(model).recipe or "original"
