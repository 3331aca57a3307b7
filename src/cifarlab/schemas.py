"""What every file read back from a run folder must hold, as data: one table per file
(``config.json``, a ``metrics.jsonl`` row, ``eval_SPLIT.json``, ``predictions_SPLIT.npz``, a
checkpoint ``best.pt``/``last.pt``) and one function, :func:`check`, that holds a value to a
table.

A run folder can come from anywhere (someone else's run, an older version, a damaged disk), so
nothing read from one is used before it passed its table; what fails is one line naming the
file and the field::

    runs/x/config.json: num_classes must be an integer 2..100000, got '10'

A table lists its fields: the name, the kind of value (what it must be, in words, and the test),
and when it is required (always; only to resume training from a checkpoint; or never: a field
an older version did not write, checked when it is there). Keys a table does not list are
left alone (a newer version may add some). Rules that tie fields together (as many class names
as classes) follow the fields. ``cifarlab.runs`` reads the files and calls :func:`check`;
the tests iterate :data:`cifarlab.runs.SCHEMAS` (file name → table).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from cifarlab.errors import CifarlabError, SettingError, one_line
from cifarlab.models.registry import MAX_CLASSES  # the most classes a model is built for
from cifarlab.train.config import TrainConfig

# --------------------------------------------------------------------------- kinds of value


@dataclass(frozen=True)
class Kind:
    """A kind of value: ``want`` says it in words ("an integer ≥ 1"), ``ok`` tests it.
    ``schema`` (an object) and ``items`` (a list's elements) are checked field by field."""

    want: str
    ok: Callable[[Any], bool]
    schema: Schema | None = None
    items: Kind | None = None


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def integer(lo: int | None = None, hi: int | None = None) -> Kind:
    if lo is not None and hi is not None:
        want = f"an integer {lo}..{hi}"
    elif lo is not None:
        want = "a positive integer" if lo == 1 else f"an integer ≥ {lo}"
    else:
        want = "an integer"
    return Kind(want, lambda v: _is_int(v) and (lo is None or v >= lo) and (hi is None or v <= hi))


def number(lo: float | None = None, hi: float | None = None, finite: bool = True) -> Kind:
    """A JSON number (int or float, not a bool); ``finite=False`` also lets NaN and ±inf
    through (a loss may have been NaN)."""
    if lo is not None and hi is not None:
        want = f"a number in [{lo:g}, {hi:g}]"
    elif lo is not None:
        want = f"a number ≥ {lo:g}"
    else:
        want = "a finite number" if finite else "a number"

    def ok(v: Any) -> bool:
        if not _is_number(v):
            return False
        if not math.isfinite(v):
            return not finite and lo is None and hi is None
        return (lo is None or v >= lo) and (hi is None or v <= hi)

    return Kind(want, ok)


def text(choices: Sequence[str] | None = None) -> Kind:
    if choices:
        return Kind(f"one of {', '.join(choices)}", lambda v: isinstance(v, str) and v in choices)
    return Kind("a non-empty string", lambda v: isinstance(v, str) and v != "")


BOOL = Kind("true or false", lambda v: isinstance(v, bool))
ANY_TEXT = Kind("a string", lambda v: isinstance(v, str))


def optional(kind: Kind) -> Kind:
    return Kind(f"{kind.want} or null", lambda v: v is None or kind.ok(v), kind.schema, kind.items)


def list_of(kind: Kind, what: str | None = None, max_len: int | None = None) -> Kind:
    def ok(v: Any) -> bool:
        return isinstance(v, list) and (max_len is None or len(v) <= max_len)

    return Kind(what or f"a list of {_plural(kind.want)}", ok, items=kind)


def obj(schema: Schema | None = None, what: str = "a JSON object") -> Kind:
    return Kind(what, lambda v: isinstance(v, dict), schema=schema)


def string_keyed(values: Kind, what: str) -> Kind:
    """A dict of str → ``values`` (a model's state: parameter name → tensor)."""

    def ok(v: Any) -> bool:
        return isinstance(v, dict) and all(
            isinstance(k, str) and values.ok(x) for k, x in v.items()
        )

    return Kind(what, ok)


def tensor(dtype: torch.dtype | None = None, ndim: int | None = None) -> Kind:
    parts = [
        f"{ndim}-D " if ndim is not None else "",
        f"{dtype} ".replace("torch.", "") if dtype else "",
        "tensor",
    ]
    want = "a " + "".join(parts)
    return Kind(
        want,
        lambda v: (
            isinstance(v, torch.Tensor)
            and (dtype is None or v.dtype == dtype)
            and (ndim is None or v.ndim == ndim)
        ),
    )


def array(kind: str, ndim: int) -> Kind:
    """A numpy array of ``ndim`` dimensions of integers (``kind="int"``) or floats."""
    test = np.issubdtype

    def ok(v: Any) -> bool:
        if not isinstance(v, np.ndarray) or v.ndim != ndim:
            return False
        return test(v.dtype, np.integer) if kind == "int" else test(v.dtype, np.floating)

    return Kind(f"a {ndim}-D array of {'integers' if kind == 'int' else 'floats'}", ok)


def _plural(want: str) -> str:
    for article in ("an ", "a "):
        if want.startswith(article):
            word, _, rest = want[len(article) :].partition(" ")
            return f"{word}s {rest}".strip()
    return want


# --------------------------------------------------------------------------- tables


@dataclass(frozen=True)
class Field:
    """One key of a file. ``required``: True (always), False (checked when present: older
    versions may lack it), or the purpose that needs it ("resume": a checkpoint training goes
    on from, not one only opened for inference)."""

    name: str
    kind: Kind
    required: bool | str = True


@dataclass(frozen=True)
class Rule:
    """A test across fields, run once every field it names has passed. ``problem`` says what
    is wrong (a sentence starting with the first field's name)."""

    fields: tuple[str, ...]
    ok: Callable[[dict], bool]
    problem: Callable[[dict], str]


@dataclass(frozen=True)
class Schema:
    """The table of one file (or of an object nested in one)."""

    name: str  # what the file is, for the tests and messages
    fields: tuple[Field, ...]
    rules: tuple[Rule, ...] = ()
    # appended to the message of a missing required field: what the file should have been
    missing_hint: str = ""

    def field(self, name: str) -> Field:
        return next(f for f in self.fields if f.name == name)

    def required(self, purpose: str | None = None) -> list[str]:
        return [
            f.name
            for f in self.fields
            if f.required is True or (purpose is not None and f.required == purpose)
        ]


def describe(value: Any, width: int = 50) -> str:
    """A value in a few characters, on one line (for a message)."""
    if isinstance(value, torch.Tensor | np.ndarray):
        dtype = str(value.dtype).replace("torch.", "")
        return (
            f"a {dtype} {'tensor' if isinstance(value, torch.Tensor) else 'array'} of "
            f"shape {list(value.shape)}"
        )
    if not isinstance(value, str | int | float | bool | list | tuple | dict | type(None)):
        return f"a {type(value).__name__}"
    try:
        r = repr(value)
    except (RecursionError, ValueError):  # nested too deeply; an int of too many digits
        r = "?" * (width + 1)
    if isinstance(value, dict) and len(r) > width:
        return f"an object of {len(value)} keys"
    if isinstance(value, list | tuple) and len(r) > width:
        return f"a list of {len(value)} items"
    return r if len(r) <= width else r[: width - 3] + "..."


def depth(value: Any, limit: int = 64) -> int:
    """How deeply lists and objects nest in ``value`` (counted without recursion, up to
    ``limit + 1``): what reads a run's JSON refuses past :data:`MAX_DEPTH`."""
    level, deepest = [value], 0
    while level and deepest <= limit:
        inner = []
        for v in level:
            if isinstance(v, dict):
                inner.extend(v.values())
            elif isinstance(v, list | tuple):
                inner.extend(v)
        if inner or any(isinstance(v, dict | list | tuple) for v in level):
            deepest += 1
        level = inner
    return deepest


MAX_DEPTH = 32  # cifarlab's own files nest 4 levels at most


def check(
    schema: Schema, data: Any, where: str, purpose: str | None = None, prefix: str = ""
) -> Any:
    """Raise a one-line :class:`CifarlabError` (``"WHERE: FIELD must be ..., got ..."``) if
    ``data`` does not hold to ``schema``; return ``data``. ``purpose`` makes the fields
    required for it required too."""
    if not isinstance(data, dict):
        what = f"{prefix.rstrip('.')} must be a JSON object" if prefix else "expected a JSON object"
        raise CifarlabError(f"{where}: {what}, got {describe(data)}")
    missing = [n for n in schema.required(purpose) if n not in data]
    if missing:
        hint = f" ({schema.missing_hint})" if schema.missing_hint and not prefix else ""
        names = ", ".join(prefix + n for n in missing)
        raise CifarlabError(f"{where}: missing {names}{hint}")
    for f in schema.fields:
        if f.name in data:
            check_value(f.kind, data[f.name], where, prefix + f.name, purpose)
    for rule in schema.rules:
        if all(n in data for n in rule.fields) and not rule.ok(data):
            raise CifarlabError(f"{where}: {prefix}{rule.problem(data)}")
    return data


def check_value(kind: Kind, value: Any, where: str, name: str, purpose: str | None = None) -> None:
    """One value: its kind, then its fields (an object) or items (a list)."""
    if not kind.ok(value):
        raise CifarlabError(f"{where}: {name} must be {kind.want}, got {describe(value)}")
    if value is None:
        return
    if kind.schema is not None:
        check(kind.schema, value, where, purpose, prefix=f"{name}.")
    if kind.items is not None:
        for i, item in enumerate(value):
            check_value(kind.items, item, where, f"{name}[{i}]", purpose)


# --------------------------------------------------------------------------- config.json


def _settings_problem(d: dict) -> str | None:
    """The first TrainConfig setting of ``d`` that is of the wrong type or out of range, as
    "NAME must be ..." (the ranges are TrainConfig.validate's: one place)."""
    try:
        TrainConfig.from_saved(d).validate()
    except SettingError as e:
        return str(e)
    except CifarlabError as e:  # e.g. an unknown dataset
        return f"settings: {e}"
    return None


def _class_count_ok(d: dict) -> bool:
    return len(d["class_names"]) == d["num_classes"]


def _class_count_problem(d: dict) -> str:
    return f"class_names has {len(d['class_names'])} names but num_classes is {d['num_classes']}"


CLASS_NAMES = list_of(ANY_TEXT, "a list of strings", MAX_CLASSES)

CONFIG = Schema(
    "config",
    (
        Field("model", text()),
        Field("num_classes", integer(2, MAX_CLASSES)),
        Field("class_names", CLASS_NAMES),
        Field("model_args", obj(), False),
        Field("params", integer(0), False),
        Field("device_used", ANY_TEXT, False),
        Field("train_images", integer(0), False),
        Field("world_size", integer(1), False),
        Field("precision_used", optional(text(("fp32", "bf16"))), False),
        Field("weight_grad_used", optional(text(("conv", "matmul"))), False),
        Field("precision_choice", optional(obj()), False),
        Field("machine", optional(ANY_TEXT), False),
        Field("budget_plan", optional(obj()), False),
        Field("train_seconds", optional(number(0)), False),
        Field("best_val_acc", optional(number(0, 1)), False),
        Field("budget_used_seconds", optional(number(0)), False),
        Field("budget_replans", optional(list_of(list_of(integer(0)))), False),
        Field("steps_trained", optional(integer(0)), False),
        Field("rank_weight_digests", optional(list_of(ANY_TEXT)), False),
        Field("provenance", optional(obj()), False),
        Field("model_source", optional(text()), False),
        Field("recipe_version", optional(integer(1)), False),
    ),
    (
        Rule(("num_classes", "class_names"), _class_count_ok, _class_count_problem),
        Rule(
            ("model",), lambda d: _settings_problem(d) is None, lambda d: _settings_problem(d) or ""
        ),
    ),
    missing_hint="not written by cifarlab train?",
)


# --------------------------------------------------------------------------- metrics.jsonl

ACCURACY = optional(number(0, 1))
LOSS = optional(number(finite=False))
SECONDS = optional(number(0))

METRICS_ROW = Schema(
    "metrics row",
    (
        Field("epoch", integer(1)),
        Field("train_loss", LOSS, False),
        Field("train_acc", ACCURACY, False),
        Field("val_loss", LOSS, False),
        Field("val_acc", ACCURACY, False),
        Field("lr", optional(number(0)), False),
        Field("epoch_seconds", SECONDS, False),
        Field("images_per_s", SECONDS, False),
        Field("elapsed_seconds", SECONDS, False),
    ),
    missing_hint="not written by cifarlab train?",
)


# --------------------------------------------------------------------------- eval_SPLIT.json

SCORE = number(0, 1)
COUNTS = list_of(integer(0), "a list of counts (integers ≥ 0)")
# What compare and the reports read is required (f1, the class names); the rest is checked
# when it is there.
_AVERAGE = Schema(
    "average",
    (
        Field("f1", SCORE),
        Field("precision", SCORE, False),
        Field("recall", SCORE, False),
        Field("support", integer(0), False),
    ),
)
_PER_CLASS = Schema(
    "per-class row",
    (
        Field("f1", SCORE),
        Field("class", ANY_TEXT, False),
        Field("precision", SCORE, False),
        Field("recall", SCORE, False),
        Field("support", integer(0), False),
    ),
)


def _n(d: dict) -> int:
    return len(d["class_names"])


EVAL = Schema(
    "evaluation",
    (
        Field("accuracy", SCORE),
        Field("macro_avg", obj(_AVERAGE)),
        Field("per_class", list_of(obj(_PER_CLASS), "a list of objects", MAX_CLASSES)),
        Field("class_names", CLASS_NAMES),
        Field("split", text(("test", "val")), False),
        Field("num_samples", integer(1), False),
        Field("top5_accuracy", optional(SCORE), False),
        Field("log_loss", number(finite=False), False),
        Field("weighted_avg", obj(_AVERAGE), False),
        Field("confusion_matrix", list_of(COUNTS, "a list of rows of counts"), False),
        Field("predicted_counts", COUNTS, False),
        Field("true_counts", COUNTS, False),
        Field("checkpoint", text(("best", "last")), False),
        Field("checkpoint_epoch", integer(0), False),
        Field("tta", integer(0, 2), False),
        Field("accuracy_without_tta", SCORE, False),
        Field("calibration", obj(), False),
    ),
    (
        Rule(
            ("per_class", "class_names"),
            lambda d: len(d["per_class"]) == _n(d),
            lambda d: f"per_class has {len(d['per_class'])} rows for {_n(d)} class names",
        ),
        Rule(
            ("confusion_matrix", "class_names"),
            lambda d: (
                len(d["confusion_matrix"]) == _n(d)
                and all(len(r) == _n(d) for r in d["confusion_matrix"])
            ),
            lambda d: (
                f"confusion_matrix must be {_n(d)}×{_n(d)} (one row and column per class name)"
            ),
        ),
        Rule(
            ("predicted_counts", "class_names"),
            lambda d: len(d["predicted_counts"]) == _n(d),
            lambda d: (
                f"predicted_counts has {len(d['predicted_counts'])} counts for {_n(d)} classes"
            ),
        ),
        Rule(
            ("true_counts", "class_names"),
            lambda d: len(d["true_counts"]) == _n(d),
            lambda d: f"true_counts has {len(d['true_counts'])} counts for {_n(d)} classes",
        ),
        Rule(
            ("true_counts", "num_samples"),
            lambda d: sum(d["true_counts"]) == d["num_samples"],
            lambda d: (
                f"true_counts add up to {sum(d['true_counts'])}, not num_samples {d['num_samples']}"
            ),
        ),
    ),
    missing_hint="not an evaluation written by cifarlab",
)


# --------------------------------------------------------------------------- predictions_SPLIT.npz

PREDICTIONS = Schema(
    "predictions",
    (Field("labels", array("int", 1)), Field("probs", array("float", 2))),
    (
        Rule(
            ("labels", "probs"),
            lambda d: len(d["labels"]) == len(d["probs"]),
            lambda d: f"labels has {len(d['labels'])} entries but probs {len(d['probs'])} rows",
        ),
        Rule(
            ("labels", "probs"),
            lambda d: (
                len(d["labels"]) == 0
                or (0 <= int(d["labels"].min()) and int(d["labels"].max()) < d["probs"].shape[1])
            ),
            lambda d: f"labels must lie in 0..{d['probs'].shape[1] - 1} (one per column of probs)",
        ),
    ),
    missing_hint="not written by cifarlab evaluate",
)


# --------------------------------------------------------------------------- checkpoints

_TOTALS = Schema(
    "totals",
    (
        Field("loss", number(finite=False)),
        Field("correct", number(0)),
        Field("seen", integer(0)),
        Field("seconds", number(0)),
    ),
)
_PARAM_GROUP = Schema("param group", (Field("params", list_of(integer(0))), Field("lr", number(0))))
_OPTIMIZER = Schema(
    "optimizer state",
    (
        Field("state", obj(what="a dict")),
        Field("param_groups", list_of(obj(_PARAM_GROUP, "a dict"), "a list of dicts")),
    ),
)
WEIGHTS = string_keyed(tensor(), "a dict of parameter name → tensor")

CHECKPOINT = Schema(
    "checkpoint",
    (
        Field("model", WEIGHTS),
        Field("epoch", integer(0)),
        Field("step", integer(0), "resume"),
        Field("best_val_acc", number(finite=False), "resume"),
        Field("optimizer", obj(_OPTIMIZER, "a dict"), "resume"),
        Field("totals", obj(_TOTALS, "a dict"), "resume"),
        Field("elapsed", number(0), "resume"),
        Field("torch_rng", tensor(torch.uint8, 1), "resume"),
        Field("config", obj(what="a dict"), "resume"),
        Field("lookahead", optional(WEIGHTS), False),
        Field("precision_used", optional(text(("fp32", "bf16"))), False),
        Field("weight_grad_used", optional(text(("conv", "matmul"))), False),
        Field("device_type", optional(ANY_TEXT), False),
        Field("budget_used", optional(number(0)), False),
        Field("replans", optional(list_of(list_of(integer(0)))), False),
        Field("class_names", CLASS_NAMES, False),
        Field("row", optional(obj(METRICS_ROW, "a dict")), False),
        Field("best_epoch", optional(integer(0)), False),
    ),
    (
        Rule(
            ("config",),
            lambda d: _settings_problem(d["config"]) is None,
            lambda d: f"config.{_settings_problem(d['config'])}",
        ),
        Rule(
            ("row", "epoch"),
            lambda d: d["row"] is None or d["row"]["epoch"] <= d["epoch"],
            lambda d: f"row is of epoch {d['row']['epoch']}, after the checkpoint's {d['epoch']}",
        ),
    ),
    missing_hint="not a cifarlab checkpoint",
)


_CALIBRATION_RECORD = Schema(
    "calibration record",
    (
        Field("temperature", optional(number(0.01, 100))),
        Field("checkpoint", text(("best", "last"))),
        Field("checkpoint_epoch", integer(0)),
        Field("reason", ANY_TEXT, False),
        Field("fitted_on", text(("val",)), False),
        Field("images", integer(1), False),
        Field("tta", integer(0, 2), False),
        Field("nll_before", number(0), False),
        Field("nll_after", number(0), False),
        Field("ece_before", SCORE, False),
        Field("ece_after", SCORE, False),
    ),
    (
        Rule(
            ("temperature", "checkpoint"),
            lambda d: d["temperature"] is not None or isinstance(d.get("reason"), str),
            lambda d: "temperature is null without a reason",
        ),
    ),
)
CALIBRATION = Schema(
    "calibration",
    (
        Field("version", integer(1)),
        Field("checkpoints", obj(what="a JSON object of checkpoint → record")),
    ),
    (
        Rule(
            ("checkpoints",),
            lambda d: set(d["checkpoints"]) <= {"best", "last"},
            lambda d: "checkpoints has keys other than best and last",
        ),
    ),
    missing_hint="not a cifarlab calibration file",
)
CALIBRATION_RECORD = _CALIBRATION_RECORD


# --------------------------------------------------------------------------- robustness.json

# What the report reads is required; the rest of the record (timings, the cache, the
# reference) is left alone.
ROBUSTNESS_CORRUPTION = Schema(
    "robustness per corruption",
    (
        Field("accuracy_by_severity", obj(what="a JSON object of severity → accuracy")),
        Field("mean_accuracy", SCORE),
        Field("family", ANY_TEXT),
        Field("note", optional(ANY_TEXT), False),
    ),
)


def _lacking_a_cell(d: dict) -> str | None:
    """The first corruption whose ``accuracy_by_severity`` lacks an accuracy for one of the
    severities (a record that is not an object is left to its own table)."""
    for name, p in d["per_corruption"].items():
        by = p.get("accuracy_by_severity") if isinstance(p, dict) else None
        if isinstance(by, dict) and not all(SCORE.ok(by.get(str(s))) for s in d["severities"]):
            return name
    return None


_NAMES = list_of(ANY_TEXT, "a list of strings")

ROBUSTNESS = Schema(
    "robustness",
    (
        Field("clean_accuracy", SCORE),
        Field("mean_corruption_accuracy", SCORE),
        Field("mean_corruption_error", SCORE),
        Field("split", ANY_TEXT),
        Field("images", integer(0)),
        Field("split_images", integer(0)),
        Field("tta", integer(0)),
        Field(
            "severities",
            Kind(
                "a non-empty list of integers",
                lambda v: isinstance(v, list) and len(v) > 0,
                items=integer(),
            ),
        ),
        Field(
            "per_corruption",
            Kind(
                "a non-empty JSON object of corruption → record",
                lambda v: isinstance(v, dict) and len(v) > 0,
            ),
        ),
        Field("corruptions", _NAMES),
        Field("worst", _NAMES),
        Field("subset", optional(ANY_TEXT), False),
        Field("recipe_version", optional(integer(1)), False),
        Field("trained_with", optional(ANY_TEXT), False),
    ),
    (
        Rule(
            ("corruptions", "per_corruption"),
            lambda d: set(d["corruptions"]) == set(d["per_corruption"]),
            lambda d: "corruptions and per_corruption differ",
        ),
        Rule(
            ("worst", "per_corruption"),
            lambda d: all(n in d["per_corruption"] for n in d["worst"]),
            lambda d: "worst names a corruption not evaluated",
        ),
        Rule(
            ("per_corruption", "severities"),
            lambda d: _lacking_a_cell(d) is None,
            lambda d: (
                f"per_corruption.{one_line(_lacking_a_cell(d), 40)} lacks an accuracy per severity"
            ),
        ),
    ),
)

# --------------------------------------------------------------------------- group.json

MAX_SEEDS = 1000  # runs in one group


def _seeds_ok(v: Any) -> bool:
    return (
        isinstance(v, list)
        and 0 < len(v) <= MAX_SEEDS
        and all(_is_int(s) and 0 <= s <= 2**63 - 1 for s in v)
        and len(set(v)) == len(v)
    )


GROUP = Schema(
    "group",
    (
        Field("kind", Kind('"cifarlab seed group"', lambda v: v == "cifarlab seed group")),
        Field(
            "seeds",
            Kind(f"a list of 1..{MAX_SEEDS} different integers ≥ 0", _seeds_ok),
        ),
        Field("config", obj(what="a JSON object of settings")),
        Field("runs", optional(list_of(obj(), "a list of objects")), False),
    ),
    missing_hint="not a cifarlab group of seeds",
)

# The table of each file, by the role of the file (runs.SCHEMAS: by its name in a run folder).
SCHEMAS: dict[str, Schema] = {
    s.name: s
    for s in (CONFIG, METRICS_ROW, EVAL, PREDICTIONS, CHECKPOINT, CALIBRATION, ROBUSTNESS, GROUP)
}
