"""TrainConfig: every setting of a training run, saved as ``config.json`` in the run folder, and
the configuration logic around it (one function each, used by the CLI, the Python API and the
benchmarks alike):

- :meth:`TrainConfig.resolved`: fill the fields left ``None`` from the recipe the config names,
  else from the model's default recipe (:func:`cifarlab.train.recipe_data.default_recipe`),
  then check every value. The recipes' values (``train/recipe_data.py``) are the one source of
  training defaults; ``train/recipes.py`` makes them :class:`~cifarlab.train.recipes.Recipe`
  objects.
- :func:`make_config`: a recipe (or a model's default recipe) with changes applied: what
  ``cifarlab train --recipe R --model M --lr X --set k=v`` means (``--set recipe=R`` included).
- :func:`apply_changes`: set fields by name; unknown names and ill-typed values are errors.
- :func:`parse_setting`: ``"FIELD=VALUE"`` (``--set``) → (field, value).
- :func:`resume_config`: what a resumed run may change (:data:`RESUME_CHANGES`).
- :func:`budget_config`: what ``--budget`` leaves to the user (:data:`BUDGET_FIELDS`).
- :func:`read_config_file`: an experiment as a file (TOML, or a run's ``config.json``).

Errors about a setting are :class:`SettingError`, which names the field; the CLI names the
option instead (``epochs`` → ``--epochs``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import sys
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser from PyPI
    import tomli as tomllib

from cifarlab.data.augment import Augment
from cifarlab.data.sources import DATASETS, get_info
from cifarlab.errors import CifarlabError, SettingError  # noqa: F401 - SettingError: here too
from cifarlab.files import read_input, read_json
from cifarlab.limits import MAX_JSON_FILE, megabytes
from cifarlab.train.recipe_data import default_recipe, recipe_values

OPTIMIZERS = ("adam", "sgd", "muon")
NORMALIZE = ("unit", "standard")
SCHEDULES = ("constant", "triangle", "cosine")
PRECISIONS = ("fp32", "bf16", "auto")
LABELS = ("fine", "coarse")
_WANT = {"int": "an integer", "float": "a number", "str": "a string", "bool": "true or false"}
# Bounds on the numbers a setting may hold: beyond them a value is a typo (or an attack on the
# memory: a batch of 2**70 images), and past MAX_INT the C code behind torch cannot take it.
MAX_INT = 2**63 - 1
MAX_EPOCHS = 1_000_000
MAX_STEPS = 2**40
MAX_BATCH = 1 << 24
MAX_IMAGES = 1 << 31
MAX_THREADS = 1024
MAX_BUDGET = 365 * 24 * 3600.0

# Shorthands for the augmentation settings (``augment`` is a dict of Augment fields): the CLI's
# --translate/--flip/--cutout/--corrupt and ``--set translate=4`` change one key of it.
AUGMENT_KEYS = ("translate", "flip", "cutout", "corrupt")


@dataclass
class TrainConfig:
    """A complete training set-up. A field left ``None`` takes the value of the recipe named
    in ``recipe``, else of the model's default recipe (``cifarlab models`` lists them), when
    the config is :meth:`resolved`; ``TrainConfig(model="fastnet_m", epochs=3)`` trains
    FastNet-M the way the ``fast`` recipe does, for 3 epochs."""

    model: str | None = None  # a registered name, or an import path "package.module:callable"
    # Builder options (e.g. widths). None: the recipe's when the model is the recipe's own
    # (the FastNet recipes standardize each image), else none; a dict replaces them.
    model_args: dict[str, Any] | None = None
    recipe: str | None = None  # the named recipe this config starts from
    dataset: str = "cifar10"
    labels: str = "fine"  # CIFAR-100: fine (100) or coarse (20)
    root: str | None = None  # data folder; None: $CIFARLAB_DATA, then the user cache
    epochs: int | None = None
    # Total training steps (the schedule's length); None: epochs × steps per epoch. Set by
    # --budget, where the last epoch may stop part-way.
    steps: int | None = None
    budget: float | None = None  # seconds of training wall time this run may take (--budget)
    batch_size: int | None = None
    lr: float | None = None  # PyTorch's lr, for the mean loss of a batch
    optimizer: str | None = None  # adam | sgd (Nesterov momentum) | muon (Muon on conv filters)
    momentum: float | None = None
    muon_lr: float | None = None  # optimizer muon: the conv filters' lr (the rest use lr)
    muon_momentum: float | None = None
    weight_decay: float | None = None  # PyTorch's (coupled) weight decay
    label_smoothing: float | None = None
    normalize: str | None = None  # unit: pixels / 255 | standard: dataset mean/std
    augment: dict[str, Any] | None = None  # Augment fields
    # Progressive resizing: {"SIZE": UNTIL, ...} trains on SIZE×SIZE images (the augmented
    # batch, resized with antialiasing) until that share of the steps, then on the next size,
    # and on full-size images for the rest: a CPU pays per pixel. {} is off.
    progressive: dict[str, Any] | None = None
    # learning-rate schedule over all steps: constant | triangle | cosine
    schedule: str | None = None
    warmup: float | None = None  # share of the steps spent rising from lr_start·lr to lr
    lr_start: float | None = None  # first multiplier of lr (triangle, cosine)
    lr_end: float | None = None  # last multiplier of lr (triangle, cosine)
    bias_lr_scale: float | None = None  # lr multiplier for normalization-layer biases
    lookahead_every: int | None = None  # average the weights every N steps (0: off)
    lookahead_start: float | None = None  # ...from this share of training on
    whiten_bias_epochs: int | None = None  # FastNet: train the whitening bias this many epochs
    # FastNet: the floor added to every eigenvalue of the training patches' covariance before
    # the whitening stem scales each direction by 1/sqrt(eigenvalue + whiten_eps). The larger,
    # the less the stem amplifies the directions images hardly use, which pixel noise fills.
    whiten_eps: float | None = None
    precision: str | None = None  # fp32 | bf16 | auto (measured: the faster one here)
    channels_last: bool | None = None  # NHWC memory format for model and batches
    compile: bool = False  # torch.compile the model
    sync_bn: bool = False  # distributed on CUDA: synchronize BatchNorm statistics across GPUs
    tta: int | None = None  # test-time augmentation: 0 none, 1 + mirror, 2 + mirror and shifts
    threads: int | None = None  # CPU threads (None: PyTorch's default)
    seed: int = 0
    device: str = "auto"  # auto | cpu | cuda | mps
    train_size: int | None = None  # a stratified subset of the training split
    val_size: int = 5000
    eval_batch_size: int | None = None

    def check_types(self) -> None:
        """Every field holds a value of its declared type (``--set`` values come from JSON)."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            kinds = [k.strip() for k in str(f.type).split("|")]
            if value is None and "None" in kinds:
                continue
            base = kinds[0]
            ok = {
                "int": isinstance(value, int) and not isinstance(value, bool),
                "float": isinstance(value, int | float) and not isinstance(value, bool),
                "str": isinstance(value, str),
                "bool": isinstance(value, bool),
            }.get(base, isinstance(value, dict))
            if not ok:
                want = _WANT.get(base, 'a JSON object like {"key": 1}')
                raise SettingError(
                    f.name, f"must be {want}, got {_short(value)} ({type(value).__name__})"
                )
            if base == "float":
                if not math.isfinite(value):  # JSON lets NaN and Infinity through
                    raise SettingError(f.name, f"must be a finite number, got {value!r}")
                setattr(self, f.name, float(value))
            if base == "int" and abs(value) > MAX_INT:
                raise SettingError(f.name, f"must be at most {MAX_INT} (2**63 - 1), got {value}")

    def resolved(self) -> TrainConfig:
        """A complete, validated copy: every ``None`` training setting filled from the recipe
        (``recipe``, else the model's default recipe); ``recipe`` then names that recipe."""
        self.check_types()
        name = self.recipe or default_recipe(self.model)
        base = TrainConfig(**recipe_values(name))
        values = asdict(self)
        if values["model_args"] is None:  # a recipe's builder options are for its own model
            same = values["model"] is None or values["model"] == base.model
            values["model_args"] = dict(base.model_args or {}) if same else {}
        for key, value in asdict(base).items():
            if values[key] is None:
                values[key] = value
        values["recipe"] = name
        cfg = TrainConfig(**values)
        cfg.validate()
        changed = [k for k in _ONLY_WITH if getattr(self, k) not in (None, getattr(base, k))]
        for key in changed:
            acts, when = _ONLY_WITH[key]
            if not acts(cfg):
                problem = f"has no effect here: it acts {when} only (this set-up: {_setup(cfg)})"
                raise SettingError(key, problem)
        return cfg

    def validate(self) -> None:
        """Every value is one this setting can have (a resolved config: nothing missing)."""
        unset = [f.name for f in dataclasses.fields(self) if getattr(self, f.name) is None]
        missing = [name for name in unset if name not in OPTIONAL]
        if missing:
            raise SettingError(missing, "must be set (or come from a recipe: call resolved())")
        self.check_types()
        checks = [
            ("model", self.model != "", "must name a model, got ''"),
            ("dataset", _known_dataset(self.dataset),
             f"must be one of {', '.join(DATASETS)}, got {self.dataset!r}"),
            ("labels", self.labels in LABELS, f"must be fine or coarse, got {self.labels!r}"),
            ("model_args", all(isinstance(k, str) and k.isidentifier() for k in self.model_args),
             f"keys must be the builder's option names, got {_short(list(self.model_args))}"),
            ("model_args", "num_classes" not in self.model_args,
             "cannot set num_classes: the dataset decides it (10 for cifar10, 100 or 20 for "
             "cifar100)"),
            ("epochs", self.epochs >= 1, f"must be ≥ 1, got {self.epochs}"),
            ("epochs", self.epochs <= MAX_EPOCHS, f"must be at most {MAX_EPOCHS:,}, got "
             f"{self.epochs}"),
            ("batch_size", self.batch_size >= 1, f"must be ≥ 1, got {self.batch_size}"),
            ("batch_size", self.batch_size <= MAX_BATCH, f"must be at most {MAX_BATCH:,}, got "
             f"{self.batch_size}"),
            ("steps", self.steps is None or self.steps >= 1, f"must be ≥ 1, got {self.steps}"),
            ("steps", self.steps is None or self.steps <= MAX_STEPS,
             f"must be at most {MAX_STEPS:,}, got {self.steps}"),
            ("budget", self.budget is None or self.budget > 0, f"must be > 0, got {self.budget}"),
            ("budget", self.budget is None or self.budget <= MAX_BUDGET,
             f"must be at most {MAX_BUDGET:,.0f} seconds (a year), got {self.budget}"),
            ("seed", 0 <= self.seed <= MAX_INT,
             f"must be 0..{MAX_INT} (2**63 - 1, what the random generators take), got "
             f"{self.seed}"),
            ("lr", self.lr > 0, f"must be > 0, got {self.lr}"),
            ("optimizer", self.optimizer in OPTIMIZERS, f"must be one of {', '.join(OPTIMIZERS)}"),
            ("normalize", self.normalize in NORMALIZE, f"must be one of {', '.join(NORMALIZE)}"),
            ("train_size", self.train_size is None or self.train_size >= 1,
             f"must be ≥ 1, got {self.train_size}"),
            ("train_size", self.train_size is None or self.train_size <= MAX_IMAGES,
             f"must be at most {MAX_IMAGES:,}, got {self.train_size}"),
            ("val_size", self.val_size >= 0, f"must be ≥ 0, got {self.val_size}"),
            ("val_size", self.val_size <= MAX_IMAGES,
             f"must be at most {MAX_IMAGES:,}, got {self.val_size}"),
            ("label_smoothing", 0 <= self.label_smoothing < 1,
             f"must be in [0, 1), got {self.label_smoothing}"),
            ("schedule", self.schedule in SCHEDULES, f"must be one of {', '.join(SCHEDULES)}"),
            ("warmup", 0 <= self.warmup < 1, f"must be in [0, 1), got {self.warmup}"),
            ("lr_start", self.lr_start >= 0, f"must be ≥ 0, got {self.lr_start}"),
            ("lr_end", self.lr_end >= 0, f"must be ≥ 0, got {self.lr_end}"),
            ("momentum", 0 <= self.momentum < 1, f"must be in [0, 1), got {self.momentum}"),
            ("muon_lr", self.muon_lr > 0, f"must be > 0, got {self.muon_lr}"),
            ("muon_momentum", 0 <= self.muon_momentum < 1,
             f"must be in [0, 1), got {self.muon_momentum}"),
            ("weight_decay", self.weight_decay >= 0, f"must be ≥ 0, got {self.weight_decay}"),
            ("bias_lr_scale", self.bias_lr_scale > 0, f"must be > 0, got {self.bias_lr_scale}"),
            ("lookahead_every", 0 <= self.lookahead_every <= MAX_STEPS,
             f"must be 0..{MAX_STEPS:,}, got {self.lookahead_every}"),
            ("lookahead_start", 0 <= self.lookahead_start < 1,
             f"must be in [0, 1), got {self.lookahead_start}"),
            ("whiten_bias_epochs", self.whiten_bias_epochs is None
             or 0 <= self.whiten_bias_epochs <= MAX_EPOCHS,
             f"must be 0..{MAX_EPOCHS:,}, got {self.whiten_bias_epochs}"),
            ("whiten_eps", math.isfinite(self.whiten_eps) and 0 < self.whiten_eps <= 1e3,
             f"must be above 0 and at most 1000, got {self.whiten_eps}"),
            ("precision", self.precision in PRECISIONS, f"must be one of {', '.join(PRECISIONS)}"),
            ("tta", self.tta in (0, 1, 2), f"must be 0, 1 or 2, got {self.tta}"),
            ("threads", self.threads is None or 1 <= self.threads <= MAX_THREADS,
             f"must be 1..{MAX_THREADS}, got {self.threads}"),
            ("eval_batch_size", 1 <= self.eval_batch_size <= MAX_BATCH,
             f"must be 1..{MAX_BATCH:,}, got {self.eval_batch_size}"),
            ("device", self.device != "", "must be auto, cpu, cuda or mps, got ''"),
        ]  # fmt: skip
        for name, ok, problem in checks:
            if not ok:
                raise SettingError(name, problem)
        _check_progressive(self.progressive)
        _check_augment(self.augment)

    def image_size(self, progress: float, full: int = 32) -> int:
        """The training image size at ``progress`` (0-1) of the steps (``progressive``)."""
        for size, until in sorted((self.progressive or {}).items(), key=lambda kv: kv[1]):
            if progress < until:
                return int(size)
        return full

    def normalization(self) -> tuple[tuple[float, ...] | None, tuple[float, ...] | None]:
        """The (mean, std) images are normalized with: the dataset's for ``standard``,
        (None, None) for ``unit`` (pixels / 255). The one place this rule is written."""
        if self.normalize != "standard":
            return None, None
        info = get_info(self.dataset)
        return info.mean, info.std

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """A config from its fields; a key that is not a field is an error naming it."""
        _check_known(d, FIELDS)
        cfg = cls(**d)
        cfg.check_types()
        return cfg

    @classmethod
    def from_saved(cls, d: dict[str, Any]) -> TrainConfig:
        """The config of a run folder's ``config.json`` (which also holds records such as
        ``class_names``: ignored here). A run written by an older version may lack fields
        added since: they take the ``original`` recipe's values, the defaults of that time."""
        names = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in d.items() if k in names}
        for key, value in asdict(cls(**recipe_values("original"))).items():
            if values.get(key) is None and key not in OPTIONAL and key != "model":
                values[key] = value
        cfg = cls(**values)
        cfg.check_types()
        return cfg


# Fields a resolved config may leave None.
OPTIONAL = frozenset(
    {"recipe", "root", "steps", "budget", "whiten_bias_epochs", "threads", "train_size"}
)
FIELDS = tuple(f.name for f in dataclasses.fields(TrainConfig))


# Settings that act only together with another: set (to other than the recipe's value) where
# they cannot act, they would be ignored silently, so that is an error.
_ONLY_WITH: dict[str, tuple[Callable[[TrainConfig], bool], str]] = {
    "momentum": (lambda c: c.optimizer in ("sgd", "muon"), "with optimizer sgd or muon"),
    "muon_lr": (lambda c: c.optimizer == "muon", "with optimizer muon"),
    "muon_momentum": (lambda c: c.optimizer == "muon", "with optimizer muon"),
    "warmup": (lambda c: c.schedule != "constant", "with a triangle or cosine schedule"),
    "lr_start": (lambda c: c.schedule != "constant", "with a triangle or cosine schedule"),
    "lr_end": (lambda c: c.schedule != "constant", "with a triangle or cosine schedule"),
    "lookahead_start": (lambda c: c.lookahead_every > 0, "with lookahead_every above 0"),
}


def _setup(c: TrainConfig) -> str:
    return f"optimizer {c.optimizer}, schedule {c.schedule}, lookahead_every {c.lookahead_every}"


def _known_dataset(name: str) -> bool:
    """As :func:`cifarlab.data.sources.get_info` takes it: case, ``-`` and ``_`` aside."""
    return name.lower().replace("-", "").replace("_", "") in DATASETS


def _short(value: Any, width: int = 60) -> str:
    """``repr(value)`` on one line, cut to ``width`` characters."""
    r = repr(value)
    return r if len(r) <= width else r[: width - 3] + "..."


def _check_known(names: Iterable[str], known: Iterable[str]) -> None:
    """Every name is a setting; an unknown one is an error naming it."""
    unknown = sorted(set(names) - set(known))
    if unknown:
        raise SettingError(unknown, "is not a setting (see `cifarlab recipes --show NAME`)")


def _check_augment(augment: dict[str, Any]) -> None:
    keys = [f.name for f in dataclasses.fields(Augment)]
    unknown = sorted(set(augment) - set(keys))
    if unknown:
        names = ", ".join(map(repr, unknown))
        raise SettingError("augment", f"has no setting {names}: its settings are {', '.join(keys)}")
    Augment(**augment)  # validates values


def _check_progressive(stages: dict[str, Any]) -> None:
    for size, until in stages.items():
        ok_size = str(size).isdigit() and 8 <= int(size) <= 31
        ok_until = isinstance(until, int | float) and not isinstance(until, bool) and 0 < until <= 1
        if not (ok_size and ok_until):
            raise SettingError(
                "progressive",
                f'must map "SIZE": UNTIL with SIZE 8-31 pixels and UNTIL a share of the steps '
                f"in (0, 1], got {size!r}: {until!r}",
            )


def parse_setting(text: str) -> tuple[str, Any]:
    """``"FIELD=VALUE"`` → (field, value): VALUE is read as JSON, else kept as text; dashes in
    FIELD become underscores (``--set lookahead-every=0``)."""
    key, sep, raw = text.partition("=")
    if not sep or not key.strip():
        raise SettingError("set", f"needs FIELD=VALUE, got {text!r}")
    try:
        value = json.loads(raw)
    except json.JSONDecodeError:
        value = raw
    return key.strip().replace("-", "_"), value


def apply_changes(cfg: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """A copy of ``cfg`` with ``changes`` (field → value) applied. ``translate``, ``flip``,
    ``cutout`` and ``corrupt`` change that key of ``augment``; ``recipe`` must name a recipe
    (or be ``None``). An unknown field or a value of the wrong type is a :class:`SettingError`
    naming it."""
    changes = dict(changes)
    _check_known(changes, (*FIELDS, *AUGMENT_KEYS))
    if changes.get("recipe") is not None:
        _check_recipe_name(changes["recipe"])
    shorthands = {k: changes.pop(k) for k in AUGMENT_KEYS if k in changes}
    out = dataclasses.replace(cfg, **changes)
    if shorthands:
        base = out.augment if out.augment is not None else {}
        if not isinstance(base, dict):
            raise SettingError(
                "augment", f'must be a JSON object like {{"translate": 2}}, got {base!r}'
            )
        out.augment = {**base, **shorthands}
    out.check_types()
    return out


def _check_recipe_name(value: Any) -> None:
    if not isinstance(value, str) or not value:
        raise SettingError("recipe", f"must be a recipe's name, got {value!r}")


def make_config(recipe: str | None = None, /, **changes: Any) -> TrainConfig:
    """The recipe ``recipe`` (default: the default recipe of ``changes["model"]``, else
    ``original``) with ``changes`` applied, resolved: ``make_config(model="fastnet_m",
    epochs=3)`` is ``fast`` for 3 epochs, ``make_config("fast", lr=0.1)`` is ``fast`` with
    another lr. A ``recipe`` change (``--set recipe=NAME``, or ``make_config(recipe=NAME)``)
    names the recipe as ``recipe`` does; given both ways, it is an error."""
    if "recipe" in changes:
        if recipe is not None:
            raise SettingError("recipe", "is given twice (--recipe and --set recipe=)")
        recipe = changes.pop("recipe")
        _check_recipe_name(recipe)
    name = recipe or default_recipe(changes.get("model"))
    return apply_changes(_recipe_base(name), changes).resolved()


def _recipe_base(name: str) -> TrainConfig:
    """The recipe ``name`` to apply changes to: its ``model_args`` left to :meth:`resolved`,
    which keeps them only for the recipe's own model (a changed model gets none)."""
    return TrainConfig(**{**recipe_values(name), "model_args": None})


# What may differ when a run is resumed: nothing that changes what is computed per step (the
# data root may move, the device may be another; more epochs stretch the schedule).
RESUME_CHANGES = ("epochs", "device", "root", "threads")


def resume_config(saved: TrainConfig, changes: dict[str, Any]) -> TrainConfig:
    """The config a resumed run goes on with: its saved one, with the ``changes`` that
    :data:`RESUME_CHANGES` allows (``None`` values are ignored); any other is an error."""
    changes = {k: v for k, v in changes.items() if v is not None}
    fixed = sorted(set(changes) - set(RESUME_CHANGES))
    if fixed:
        raise SettingError(
            fixed,
            "cannot change when a run is resumed (only {others} can): it goes on with its own "
            "settings; start a new run in another folder instead",
            others=RESUME_CHANGES,
        )
    if (saved.budget is not None or saved.steps is not None) and "epochs" in changes:
        what = "trained to a budget" if saved.budget is not None else "counted in steps"
        raise SettingError("epochs", f"cannot extend a run {what}: it keeps its length")
    cfg = dataclasses.replace(saved, **changes)
    cfg.validate()
    return cfg


# What --budget leaves to the user: the data and the run, not the training recipe.
BUDGET_FIELDS = (
    "dataset",
    "labels",
    "root",
    "seed",
    "device",
    "threads",
    "train_size",
    "val_size",
    "eval_batch_size",
)


def budget_config(changes: dict[str, Any]) -> TrainConfig:
    """The data and run settings a ``--budget`` run takes from the user (``model`` restricts
    the choice of network and is passed apart); a recipe setting is an error: the budget
    chooses the recipe."""
    recipe_fields = sorted(set(changes) - set(BUDGET_FIELDS))
    if recipe_fields:
        raise SettingError(
            recipe_fields,
            "cannot be combined with a budget: the budget chooses the recipe (train a recipe "
            "or a model with a number of epochs for a fixed set-up)",
        )
    cfg = TrainConfig(**changes)
    cfg.check_types()
    return cfg


# --------------------------------------------------------------------------- experiments as files


@dataclass
class ConfigFile:
    """An experiment read from a file: the settings it gives (``TrainConfig`` fields, and the
    ``augment`` shorthands) and, for a run's ``config.json``, what that run recorded about
    itself (versions, machine, precision used)."""

    path: Path
    settings: dict[str, Any]
    records: dict[str, Any]
    notes: list[str]  # what was left out of a recorded run, in words

    @property
    def recorded(self) -> bool:
        """A run's ``config.json`` (not an experiment written by hand)."""
        return bool(self.records)

    def config(self, recipe: str | None = None, /, **changes: Any) -> TrainConfig:
        """The file's settings with ``changes`` over them (the command line's options), and
        ``recipe`` over the file's recipe: resolved and checked."""
        settings = dict(self.settings)
        if self.recorded and (recipe is not None or "recipe" in changes):
            raise SettingError(
                "recipe",
                f"cannot be combined with a recorded run ({self.path}): it holds "
                "every setting of that run, so another recipe would only rename it; start "
                "from the recipe instead",
            )
        if recipe is not None:
            settings.pop("recipe", None)
        return make_config(recipe, **{**settings, **changes})


# A run's config.json holds a budget run's budget and the steps it chose: re-running it trains
# those steps (the budget would pace and re-plan them again).
_NOT_REPLAYED = ("budget",)


def read_config_file(path: str | os.PathLike) -> ConfigFile:
    """The experiment in ``path``: a TOML file whose keys are :class:`TrainConfig` fields
    (``recipe = "quick"``, ``lr = 0.2``, an ``[augment]`` table; ``translate``, ``flip``,
    ``cutout``, ``corrupt`` as shorthands), or a run's ``config.json`` (re-runs that run).
    An unknown key or a value of the wrong type is a one-line error naming the file and the
    key. The file must be valid on its own (the command line's options then go over it)."""
    path = Path(path)
    if path.suffix.lower() == ".json":
        data = read_json(path)
    else:
        raw = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
        try:
            data = tomllib.loads(raw.decode("utf-8"))
        except UnicodeDecodeError:
            raise CifarlabError(f"{path}: not UTF-8 text") from None
        except tomllib.TOMLDecodeError as e:
            hint = "" if path.suffix.lower() == ".toml" else " (a .toml or a run's config.json)"
            raise CifarlabError(f"{path}: not valid TOML{hint} ({e})") from None
    if not isinstance(data, dict):
        raise CifarlabError(f"{path}: must hold settings by name, not {type(data).__name__}")
    known = (*FIELDS, *AUGMENT_KEYS)
    recorded = path.suffix.lower() == ".json" and "provenance" in data
    settings = {k: v for k, v in data.items() if k in known}
    records = {k: v for k, v in data.items() if k not in known} if recorded else {}
    notes = []
    if not recorded:
        unknown = sorted(set(data) - set(known))
        if unknown:
            raise CifarlabError(
                f"{path}: {', '.join(unknown)} is not a setting (the keys are TrainConfig "
                "fields: see `cifarlab recipes --show NAME`)"
            )
    else:
        for key in _NOT_REPLAYED:
            if settings.pop(key, None) is not None:
                notes.append(
                    f"a {key} run: training its recorded {settings.get('steps')} steps "
                    "with one schedule (no re-planning)"
                )
    try:  # each value's type, named with the file
        base = _recipe_base(
            settings.get("recipe")
            or default_recipe(
                settings.get("model") if isinstance(settings.get("model"), str) else None
            )
        )
        apply_changes(base, settings).resolved()  # the file is valid on its own
    except SettingError as e:
        raise CifarlabError(f"{path}: {e.render()}") from None
    except CifarlabError as e:
        raise CifarlabError(f"{path}: {e}") from None
    return ConfigFile(path, settings, records, notes)


MAX_GROUP = 1000  # runs in one group of seeds (cifarlab.schemas.MAX_SEEDS)


def parse_seeds(value: str | int | Iterable[int]) -> list[int]:
    """The seeds of a group: ``"0-4"`` (0, 1, 2, 3, 4), ``"0,3,7"``, ``"0-2,9"``, an integer,
    or a list of integers; each ≥ 0, none twice, at most 1000. An error names ``seeds``."""
    if isinstance(value, int) and not isinstance(value, bool):
        parts: list[Any] = [value]
    elif isinstance(value, str):
        parts = []
        for piece in value.replace(" ", "").split(","):
            lo, dash, hi = piece.partition("-")
            if not (lo.isdigit() and (not dash or hi.isdigit())):
                raise SettingError(
                    "seeds", f"must be like 0-4 or 0,3,7 (integers ≥ 0), got {_short(value)}"
                )
            if dash:
                if int(hi) < int(lo):
                    raise SettingError("seeds", f"has a range that runs backwards: {piece}")
                if int(hi) - int(lo) >= MAX_GROUP:
                    raise SettingError("seeds", f"holds more than {MAX_GROUP} seeds: {piece}")
                parts.extend(range(int(lo), int(hi) + 1))
            else:
                parts.append(int(lo))
    else:
        parts = list(value)
    for seed in parts:
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed <= MAX_INT:
            raise SettingError("seeds", f"must be integers ≥ 0, got {_short(seed)}")
    twice = sorted({s for s in parts if parts.count(s) > 1})
    if twice:
        raise SettingError("seeds", f"names seed {twice[0]} twice")
    if not 1 <= len(parts) <= MAX_GROUP:
        raise SettingError("seeds", f"must name 1 to {MAX_GROUP} seeds, got {len(parts)}")
    return parts
