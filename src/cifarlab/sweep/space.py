"""A sweep's search space, from a TOML file: the fixed settings at the top (any
:class:`~cifarlab.train.config.TrainConfig` field, as in ``cifarlab train --config``), and one
``[space.FIELD]`` table per searched setting::

    recipe = "quick"          # fixed: every trial starts from the quick recipe

    [space.lr]                # a number: low, high, log (a log scale), step (a grid)
    low = 0.2
    high = 2.0
    log = true

    [space.optimizer]         # a choice
    choices = ["sgd", "muon"]

The field's type in ``TrainConfig`` decides what a range means (an ``int`` field: whole
numbers; a ``float`` field: any number); a text or true/false field takes ``choices`` only.
``translate``, ``flip``, ``cutout`` and ``corrupt`` name that key of ``augment``.

Every error is one line naming the file and the key (``sweep.toml: space.lr.low: ...``), and
:func:`check_space` builds the configuration of each range's ends and each choice before any
training, so a value a setting cannot have is found at once, not after hours of trials.
Nothing here imports Optuna.
"""

from __future__ import annotations

import dataclasses
import math
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10: the same parser from PyPI
    import tomli as tomllib

from cifarlab.data.augment import Augment
from cifarlab.errors import CifarlabError, SettingError, one_line
from cifarlab.files import read_input
from cifarlab.limits import MAX_JSON_FILE, megabytes
from cifarlab.train.config import AUGMENT_KEYS, FIELDS, TrainConfig, make_config

MAX_PARAMS = 64  # searched settings in one space
MAX_CHOICES = 1000  # values of one choice

# Settings a sweep does not search, and why: they decide what every trial is scored on, where
# it runs or how long it trains (the sweep's options), not how it learns.
NOT_SWEPT = {
    "seed": "searching seeds picks the luckiest one, not better settings (--seed sets it)",
    "dataset": "it decides the images every trial is scored on (set it at the top)",
    "labels": "it decides the classes every trial is scored on (set it at the top)",
    "val_size": "it decides the validation images every trial is scored on (--val-size)",
    "root": "it is where the data is, not how a trial trains (--root)",
    "device": "it is where a trial runs, not how it trains (--device)",
    "threads": "it is how a trial runs, not how it trains (--threads)",
    "budget": "give each trial its time with --budget-per-trial",
    "steps": "give the trials' length with --epochs or --budget-per-trial",
    "tta": "trials are scored without test-time augmentation: it would change nothing",
    "eval_batch_size": "it changes how fast validation runs, not the score",
    "augment": "is a table: search its keys translate, flip, cutout and corrupt by name",
    "model_args": "is a table, which a sweep cannot search (search among models instead)",
    "progressive": "is a table, which a sweep cannot search (search among recipes instead)",
}
_RANGE_KEYS = ("low", "high", "log", "step")
_KEYS = (*_RANGE_KEYS, "choices")


@dataclass(frozen=True)
class Param:
    """One searched setting: a range of numbers (``kind`` int or float) or a choice."""

    name: str
    kind: str  # "int" | "float" | "choice"
    low: float | int | None = None
    high: float | int | None = None
    log: bool = False
    step: float | int | None = None
    choices: tuple[Any, ...] = ()

    def describe(self) -> str:
        """``0.2 to 2 (log scale)``, ``0 to 0.3 in steps of 0.05``, ``sgd or muon``."""
        if self.kind == "choice":
            shown = [_show(c) for c in self.choices]
            return shown[0] if len(shown) == 1 else ", ".join(shown[:-1]) + f" or {shown[-1]}"
        text = f"{_show(self.low)} to {_show(self.high)}"
        if self.log:
            text += " (log scale)"
        if self.step is not None:
            text += f" in steps of {_show(self.step)}"
        return text

    def ends(self) -> list[tuple[str, Any]]:
        """The values that :func:`check_space` builds a configuration with, each with the key
        that gave it: a range's ends, every choice."""
        if self.kind == "choice":
            return [(f"choices[{i}]", c) for i, c in enumerate(self.choices)]
        return [("low", self.low), ("high", self.high)]

    def to_dict(self) -> dict[str, Any]:
        d = dataclasses.asdict(self)
        d["choices"] = list(self.choices)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Param:
        return cls(**{**d, "choices": tuple(d.get("choices") or ())})


@dataclass
class Space:
    """The file's fixed settings (``base``) and searched ones (``params``)."""

    source: str  # the file's name, for messages
    base: dict[str, Any] = field(default_factory=dict)
    params: list[Param] = field(default_factory=list)

    @property
    def names(self) -> list[str]:
        return [p.name for p in self.params]

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "base": self.base,
            "params": [p.to_dict() for p in self.params],
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Space:
        return cls(d["source"], dict(d["base"]), [Param.from_dict(p) for p in d["params"]])


def read_space(path: str | Path) -> Space:
    """The space in the TOML file ``path``, each table and value checked (one-line errors
    naming the file and the key); :func:`check_space` then builds configurations from it."""
    path = Path(path)
    raw = read_input(path, megabytes(MAX_JSON_FILE), limit_hint=MAX_JSON_FILE.env)
    try:
        data = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise CifarlabError(f"{path}: not UTF-8 text") from None
    except tomllib.TOMLDecodeError as e:
        raise CifarlabError(f"{path}: not valid TOML ({one_line(e, None)})") from None
    space = data.pop("space", None)
    if space is None:
        raise CifarlabError(
            f"{path}: no [space.FIELD] table: name at least one setting to search, e.g. "
            "[space.lr] with low, high and log = true"
        )
    if not isinstance(space, dict) or not space:
        raise CifarlabError(f"{path}: space must hold one [space.FIELD] table per setting")
    if len(space) > MAX_PARAMS:
        raise CifarlabError(f"{path}: space searches {len(space)} settings; at most {MAX_PARAMS}")
    for key in ("budget", "steps"):
        if key in data:
            raise CifarlabError(
                f"{path}: {key}: give the trials' length with --epochs or --budget-per-trial"
            )
    try:
        make_config(**data)  # the fixed settings: names, types, values
    except SettingError as e:
        raise CifarlabError(f"{path}: {e.render()}") from None
    params = []
    for name, table in space.items():
        params.append(_param(path, name, table, data))
    return Space(path.name, data, params)


def check_space(space: Space, run: dict[str, Any]) -> None:
    """Build the configuration of every range's ends and every choice, each alone over the
    fixed settings and ``run`` (the sweep's own: epochs, train_size ...): a value a setting
    cannot have is an error naming its key before any training. Values that only clash
    together (``optimizer`` and ``momentum``) make that trial fail, with the reason."""
    for name in space.names:
        if name in run:
            raise CifarlabError(
                f"{space.source}: space.{name}: {name} is searched: it cannot also be given "
                f"as an option of the sweep"
            )
    for p in space.params:
        for key, value in p.ends():
            try:
                make_config(**{**space.base, **run, p.name: value})
            except SettingError as e:
                raise CifarlabError(f"{space.source}: space.{p.name}.{key}: {e.render()}") from None
    first = {p.name: p.ends()[0][1] for p in space.params}
    try:
        make_config(**{**space.base, **run, **first})
    except SettingError as e:
        raise CifarlabError(
            f"{space.source}: the first value of every searched setting together: {e.render()}"
        ) from None


def _param(path: Path, name: str, table: Any, base: dict[str, Any]) -> Param:
    where = f"{path}: space.{name}"
    if name not in (*FIELDS, *AUGMENT_KEYS):
        raise CifarlabError(
            f"{where}: {name} is not a setting (the names are TrainConfig fields: see "
            "`cifarlab recipes --show NAME`)"
        )
    if name in NOT_SWEPT:
        raise CifarlabError(f"{where}: cannot be searched: {NOT_SWEPT[name]}")
    if name in base:
        raise CifarlabError(
            f"{where}: {name} is also set at the top of the file: search it or fix it, not both"
        )
    if not isinstance(table, dict):
        raise CifarlabError(
            f"{where}: must be a table like {{low = 0.01, high = 1.0}} or {{choices = [...]}}, "
            f"got {_show(table)}"
        )
    unknown = [k for k in table if k not in _KEYS]
    if unknown:
        raise CifarlabError(
            f"{where}.{unknown[0]}: unknown key (a table takes low, high, log, step, or choices)"
        )
    kind = field_kind(name)
    if "choices" in table:
        mixed = [k for k in table if k in _RANGE_KEYS]
        if mixed:
            raise CifarlabError(f"{where}.{mixed[0]}: choices and a range cannot go together")
        return Param(name, "choice", choices=_choices(where, kind, table["choices"]))
    if kind not in ("int", "float"):
        what = "true or false" if kind == "bool" else "text"
        raise CifarlabError(
            f"{where}: {name} is {what}: give its values as choices = [...], not a range"
        )
    for key in ("low", "high"):
        if key not in table:
            raise CifarlabError(f"{where}: needs low and high (or choices = [...])")
    low, high = (_number(f"{where}.{k}", kind, table[k]) for k in ("low", "high"))
    if not low < high:
        raise CifarlabError(f"{where}.high: must be above low ({_show(low)}), got {_show(high)}")
    log = table.get("log", False)
    if not isinstance(log, bool):
        raise CifarlabError(f"{where}.log: must be true or false, got {_show(log)}")
    if log and low <= 0:
        raise CifarlabError(f"{where}.low: a log scale needs low above 0, got {_show(low)}")
    step = table.get("step")
    if step is not None:
        step = _number(f"{where}.step", kind, step)
        if step <= 0:
            raise CifarlabError(f"{where}.step: must be above 0, got {_show(step)}")
        if log and not (kind == "int" and step == 1):
            raise CifarlabError(f"{where}.step: a log scale and a step cannot go together")
        spans = (high - low) / step
        if abs(spans - round(spans)) > 1e-9 * max(1.0, abs(spans)):
            raise CifarlabError(
                f"{where}.step: high - low ({_show(high - low)}) must be a whole number of "
                f"steps of {_show(step)}"
            )
    return Param(name, kind, low, high, log, step)


def _choices(where: str, kind: str, values: Any) -> tuple[Any, ...]:
    if not isinstance(values, list) or not values:
        raise CifarlabError(
            f"{where}.choices: must be a list of one value or more, got {_show(values)}"
        )
    if len(values) > MAX_CHOICES:
        raise CifarlabError(f"{where}.choices: {len(values)} values; at most {MAX_CHOICES}")
    for i, v in enumerate(values):
        if not _of_kind(kind, v):
            want = _WANT.get(kind, "a plain value")
            raise CifarlabError(f"{where}.choices[{i}]: must be {want}, got {_show(v)}")
    seen = []
    for i, v in enumerate(values):
        if any(v == s and type(v) is type(s) for s in seen):
            raise CifarlabError(f"{where}.choices[{i}]: {_show(v)} is given twice")
        seen.append(v)
    return tuple(float(v) if kind == "float" else v for v in values)


_WANT = {"int": "a whole number", "float": "a number", "str": "text", "bool": "true or false"}


def _of_kind(kind: str, v: Any) -> bool:
    if isinstance(v, bool):
        return kind == "bool"
    if kind == "int":
        return isinstance(v, int)
    if kind == "float":
        return isinstance(v, int | float) and math.isfinite(v)
    if kind == "str":
        return isinstance(v, str)
    return False  # a table-valued setting has no choices a sampler could draw


def _number(where: str, kind: str, v: Any) -> float | int:
    if not _of_kind(kind, v):
        raise CifarlabError(f"{where}: must be {_WANT[kind]}, got {_show(v)}")
    return float(v) if kind == "float" else v


def field_kind(name: str) -> str:
    """``int``, ``float``, ``str``, ``bool`` or ``dict``: the declared type of the
    TrainConfig field (or ``augment`` key) ``name``."""
    types = {f.name: str(f.type) for f in dataclasses.fields(TrainConfig)}
    types.update({f.name: str(f.type) for f in dataclasses.fields(Augment)})
    base = types[name].split("|")[0].strip()
    return base if base in ("int", "float", "str", "bool") else "dict"


def _show(value: Any) -> str:
    """A value as the file writes it: ``0.2``, ``"sgd"``, ``true``."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, str):
        return f'"{value}"'
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
