"""Runs and groups of runs side by side, with the statistics that say whether a difference is
more than seed noise (``cifarlab compare``, ``cifarlab evaluate GROUP``).

A *side* is one evaluated run, or a group (``cifarlab train --seeds``: a folder with
``group.json`` and one run per seed, :class:`cifarlab.runs.GroupFolder`) whose every member was
evaluated. For each run four numbers are read from its ``eval_SPLIT.json``: accuracy, macro F1,
log-loss (of the model's own probabilities) and ECE (of the probabilities ``predict`` and
``serve`` give: after the run's temperature when it has one, as trained when it has none). A side
is summarized per metric (:func:`cifarlab.evaluate.stats.summarize`: mean, sd, 95 % CI) without
averaging away its runs: each run's numbers stay in the tables. Pairs of sides are compared by
:func:`cifarlab.evaluate.stats.difference` (Welch's t-test, or a bootstrap where it fits better,
a verdict in words and a power estimate): every pair for up to :data:`ALL_PAIRS_UP_TO` sides,
else each side against the first.

:func:`comparison_lines` and :func:`side_lines` are the text the CLI prints; the HTML page is
:func:`cifarlab.report.html.write_comparison`.
"""

from __future__ import annotations

import math
import os
import textwrap
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cifarlab.errors import CifarlabError, printable
from cifarlab.evaluate.stats import Difference, Summary, difference, p_phrase, summarize
from cifarlab.runs import GroupFolder, RunFolder
from cifarlab.trained import read_run

ALL_PAIRS_UP_TO = 4  # sides; more: each against the first


@dataclass(frozen=True)
class Metric:
    """A number read from each run: ``key``, its ``label``, shown in percent or not."""

    key: str
    label: str
    percent: bool

    def num(self, x: float) -> str:
        """The number without its unit (percent points for a percentage)."""
        return f"{100 * x:.2f}" if self.percent else f"{x:.4f}"

    def value(self, x: float | None) -> str:
        if x is None:
            return "–"
        if not math.isfinite(x):
            return str(x)
        return self.num(x) + ("%" if self.percent else "")

    @property
    def unit(self) -> str:
        """The unit of a difference or a standard deviation."""
        return "points" if self.percent else ""

    def signed(self, x: float) -> str:
        sign = "−" if x < 0 else "+" if x > 0 else ""
        return sign + self.num(abs(x))


METRICS = (
    Metric("accuracy", "accuracy", True),
    Metric("macro_f1", "macro F1", False),
    Metric("log_loss", "log-loss", False),
    Metric("ece", "ECE", True),
)
BY_KEY = {m.key: m for m in METRICS}
ECE_AFTER, ECE_BEFORE = "after temperature", "as trained"


@dataclass
class Member:
    """One run of a side: its name (``seed-K`` in a group, the folder's name alone), seed,
    ``config.json``, evaluation, metric rows, and the four numbers (None where the evaluation
    has none, or it is not finite)."""

    name: str
    seed: int | None
    config: dict[str, Any]
    metrics: dict[str, Any]
    history: list[dict[str, Any]]
    values: dict[str, float | None]
    ece_kind: str | None  # ECE_AFTER, ECE_BEFORE, or None (an evaluation without calibration)
    path: Path | None = None


@dataclass
class Side:
    """A run (one member) or a group of runs (one member per seed)."""

    name: str
    members: list[Member]
    group: bool = False
    path: Path | None = None

    @property
    def n(self) -> int:
        return len(self.members)

    @property
    def config(self) -> dict[str, Any]:
        return self.members[0].config

    def values(self, key: str) -> list[float | None]:
        return [m.values.get(key) for m in self.members]

    def summary(self, key: str) -> Summary | None:
        """The summary of the members that have ``key`` (None if none has)."""
        known = [v for v in self.values(key) if v is not None]
        return summarize(known) if known else None

    @property
    def kind(self) -> str:
        if not self.group:
            return "one run"
        seeds = ", ".join(str(m.seed) for m in self.members)
        return f"group of {self.n} runs, seeds {seeds}"


@dataclass
class Pair:
    """``b`` against ``a``: per metric, mean(b) − mean(a) (None when a side lacks it)."""

    a: Side
    b: Side
    differences: dict[str, Difference | None] = field(default_factory=dict)

    def verdict(self, key: str = "accuracy") -> str:
        d = self.differences.get(key)
        if d is None:
            return f"no {BY_KEY[key].label} on both sides"
        m = BY_KEY[key]
        return d.verdict(self.a.name, self.b.name, m.num, m.unit)


@dataclass
class Comparison:
    split: str
    sides: list[Side]
    pairs: list[Pair]

    @property
    def grouped(self) -> bool:
        """Any side is a group (else: single runs, compared as before)."""
        return any(s.group for s in self.sides)

    def members(self) -> list[tuple[str, Member]]:
        """Every run, named ``SIDE`` (a single run) or ``SIDE / seed-K``."""
        return [
            (f"{s.name} / {m.name}" if s.group else s.name, m)
            for s in self.sides
            for m in s.members
        ]


# --------------------------------------------------------------------------- reading


def _ece(metrics: dict[str, Any], where: str) -> tuple[float | None, str | None]:
    """The ECE of the probabilities predict gives (after the temperature; as trained without
    one) from an evaluation's ``calibration`` record; (None, None) if it has none."""
    c = metrics.get("calibration")
    if c is None:
        return None, None
    if not isinstance(c, dict):
        raise CifarlabError(f"{where}: calibration must be a JSON object")
    for name, kind in (("after", ECE_AFTER), ("before", ECE_BEFORE)):
        record = c.get(name)
        if record is None:
            continue
        ece = record.get("ece") if isinstance(record, dict) else None
        if not isinstance(ece, int | float) or isinstance(ece, bool) or not 0 <= ece <= 1:
            raise CifarlabError(
                f"{where}: calibration.{name}.ece must be a number in [0, 1], got "
                f"{printable(repr(ece))[:40]}"
            )
        return float(ece), kind
    return None, None


def member_values(
    metrics: dict[str, Any], where: str = "evaluation"
) -> tuple[dict[str, float | None], str | None]:
    """The four numbers of one evaluation (as :func:`cifarlab.runs.RunFolder.read_eval`
    returns it; ``where`` names it in errors) and which ECE it is."""
    ece, kind = _ece(metrics, where)
    ll = metrics.get("log_loss")
    values = {
        "accuracy": float(metrics["accuracy"]),
        "macro_f1": float(metrics["macro_avg"]["f1"]),
        "log_loss": float(ll) if isinstance(ll, int | float) and math.isfinite(ll) else None,
        "ece": ece,
    }
    return values, kind


def member(
    name: str,
    config: dict[str, Any],
    metrics: dict[str, Any],
    history: list[dict[str, Any]],
    seed: int | None = None,
    path: Path | None = None,
) -> Member:
    values, kind = member_values(metrics, str(path or name))
    return Member(name, seed, config, metrics, history, values, kind, path)


def _read_member(folder: RunFolder, split: str, seed: int | None, group: Path | None) -> Member:
    path, config, history = read_run(folder.path)
    if group is not None and not os.path.lexists(folder.eval_path(split)):
        raise CifarlabError(
            f"{folder.path}: not evaluated on {split} yet (run: cifarlab evaluate {group} "
            f"--split {split}: it evaluates every run of the group)"
        )
    metrics = folder.read_eval(split)
    name = folder.name
    return member(name, config, metrics, history, seed, folder.eval_path(split))


def run_states(group: GroupFolder) -> dict[int, dict[str, Any]]:
    """What ``group.json`` records of each run (its ``runs``: state, reason), by seed."""
    records = group.read().get("runs") or []
    return {r["seed"]: r for r in records if isinstance(r.get("seed"), int)}


def group_members(group: GroupFolder) -> list[tuple[int, RunFolder]]:
    """The group's runs, each checked to be there and finished (a one-line error naming the
    first that is not: an unfinished run's numbers are not the set-up's)."""
    members = group.members()
    states = run_states(group)
    resume = f"finish it with cifarlab train --resume {group.path}"
    for seed, folder in members:
        if not os.path.lexists(folder.path):
            raise CifarlabError(
                f"{folder.path}: no such run: {group.group_path} lists seed {seed} but the "
                f"group holds no run of it ({resume})"
            )
        folder.check_exists()
        state = states.get(seed, {}).get("state")
        if state in ("new", "interrupted"):
            raise CifarlabError(
                f"{folder.path}: not finished ({group.group_path} says {state}): {resume}"
            )
    return members


def _run_note(states: dict[int, dict[str, Any]], seed: int) -> str:
    """`` (failed in training: REASON)`` for a run ``group.json`` records as failed."""
    record = states.get(seed, {})
    if record.get("state") != "failed":
        return ""
    reason = printable(record.get("reason") or "")[:60]
    return f" (failed in training{': ' + reason if reason else ''})"


def read_side(path: str | os.PathLike, split: str = "test") -> Side:
    """A run folder or a group folder (``group.json``), every run of it evaluated on
    ``split``."""
    path = Path(path)
    if GroupFolder.is_group(path):
        group = GroupFolder(path)
        members = [_read_member(f, split, seed, path) for seed, f in group_members(group)]
        states = run_states(group)
        for m in members:  # a failed run's numbers are kept, and said to be a failed run's
            m.name += _run_note(states, m.seed) if m.seed is not None else ""
        return Side(path.name, members, group=True, path=path)
    folder = RunFolder(path)
    run_path, config, history = read_run(path)
    metrics = folder.read_eval(split)
    m = member(run_path.name, config, metrics, history, path=folder.eval_path(split))
    return Side(run_path.name, [m], group=False, path=run_path)


def pair_indices(count: int) -> list[tuple[int, int]]:
    """(a, b) of the pairs compared: every pair up to :data:`ALL_PAIRS_UP_TO` sides, else
    each side against the first."""
    if count <= ALL_PAIRS_UP_TO:
        return [(i, j) for i in range(count) for j in range(i + 1, count)]
    return [(0, j) for j in range(1, count)]


def compare_sides(sides: list[Side], split: str = "test", method: str = "auto") -> Comparison:
    """The pairs of :func:`pair_indices` with each metric's :class:`Difference` (``method``:
    see :func:`cifarlab.evaluate.stats.choose_method`)."""
    if not sides:
        raise ValueError("no runs to compare")
    names = [s.name for s in sides]
    for s in sides:  # two folders of the same name: told apart by their paths
        if names.count(s.name) > 1 and s.path is not None:
            s.name = str(s.path)
    pairs = []
    for i, j in pair_indices(len(sides)):
        a, b = sides[i], sides[j]
        diffs: dict[str, Difference | None] = {}
        for m in METRICS:
            va = [v for v in a.values(m.key) if v is not None]
            vb = [v for v in b.values(m.key) if v is not None]
            diffs[m.key] = difference(va, vb, method) if va and vb else None
        pairs.append(Pair(a, b, diffs))
    return Comparison(split, sides, pairs)


def compare(
    paths: list[str | os.PathLike], split: str = "test", method: str = "auto"
) -> Comparison:
    """Read every run or group of ``paths`` (each evaluated on ``split``) and compare them."""
    return compare_sides([read_side(p, split) for p in paths], split, method)


def runs_comparison(runs: list[tuple[str, dict, dict, list[dict]]]) -> Comparison:
    """A comparison of single runs given as (name, config, metrics, history)."""
    sides = [Side(name, [member(name, c, m, h)]) for name, c, m, h in runs]
    split = runs[0][2].get("split", "test") if runs else "test"
    return compare_sides(sides, split)


def dot_panels(
    c: Comparison, keys: tuple[str, ...] = ("accuracy", "macro_f1")
) -> list[tuple[str, list[tuple[str, list[float], float, tuple[float, float] | None]]]]:
    """What :func:`cifarlab.report.plots.seed_dots` draws: per metric of ``keys`` (a panel:
    its axis label), per side the runs' values, their mean and its 95 % CI, in the unit shown
    (percent for a percentage)."""
    panels = []
    for key in keys:
        m = BY_KEY[key]
        scale = 100.0 if m.percent else 1.0
        data = []
        for side in c.sides:
            s = side.summary(key)
            if s is None:
                continue
            ci = (s.ci[0] * scale, s.ci[1] * scale) if s.ci else None
            data.append((side.name, [v * scale for v in s.values], s.mean * scale, ci))
        panels.append((f"{c.split} {m.label}" + (" (%)" if m.percent else ""), data))
    return panels


# --------------------------------------------------------------------------- text


def ece_note(members: list[Member]) -> str:
    kinds = {m.ece_kind for m in members}
    if kinds == {None}:
        return "ECE: none recorded (evaluated by an older version: evaluate again)"
    if kinds == {ECE_AFTER}:
        return "ECE after each run's temperature (the probabilities predict and serve give)"
    if kinds == {ECE_BEFORE}:
        return "ECE of the model's own probabilities (no run has a temperature)"
    return (
        "ECE after each run's temperature where it has one (the probabilities predict gives), "
        "else of the model's own"
    )


def _model_text(config: dict[str, Any]) -> str:
    params = config.get("params")
    shown = f", {int(params):,} params" if isinstance(params, int | float) else ""
    return f"{printable(config.get('model', '?'))}{shown}"


_COL = 19


def side_lines(side: Side) -> list[str]:
    """One side as a table: a row per run, then for a group the mean ± sd and the 95 % CI of
    each metric."""
    lines = [f"{printable(side.name)}: {side.kind} ({_model_text(side.config)})"]
    width = max(12, *(len(printable(m.name)) + 2 for m in side.members))
    lines.append(f"  {'run':<{width}}" + "".join(f"{m.label:>{_COL}}" for m in METRICS))
    for mem in side.members:
        cells = "".join(f"{BY_KEY[k].value(v):>{_COL}}" for k, v in mem.values.items())
        lines.append(f"  {printable(mem.name):<{width}}{cells}")
    if not side.group:
        return lines
    mean, ci = f"  {'mean ± sd':<{width}}", f"  {'95 % CI':<{width}}"
    for m in METRICS:
        s = side.summary(m.key)
        mean += f"{mean_text(m, s):>{_COL}}"
        ci += f"{ci_text(m, s):>{_COL}}"
    return [*lines, mean, ci]


def mean_text(m: Metric, s: Summary | None) -> str:
    if s is None:
        return "–"
    pct = "%" if m.percent else ""
    if s.std is None:
        return f"{m.num(s.mean)}{pct} (n=1)"
    return f"{m.num(s.mean)} ± {m.num(s.std)}{pct}"


def ci_text(m: Metric, s: Summary | None) -> str:
    if s is None or s.ci is None:
        return "–"
    return f"{m.num(s.ci[0])} to {m.num(s.ci[1])}{'%' if m.percent else ''}"


def _wrap(text: str, indent: str = "  ") -> list[str]:
    return textwrap.wrap(text, 100, initial_indent=indent, subsequent_indent=indent)


def pair_lines(pair: Pair) -> list[str]:
    """A pair: per metric the difference, its interval, the test and p, and the verdict; then
    the accuracy's verdict and power estimate in words."""
    a, b = printable(pair.a.name), printable(pair.b.name)
    lines = [f"{b} − {a}:"]
    for m in METRICS:
        d = pair.differences.get(m.key)
        if d is None:
            lines.append(f"  {m.label:<10} –")
            continue
        diff = f"{m.signed(d.diff)} {m.unit}".rstrip()
        if d.ci is None:
            lines.append(f"  {m.label:<10} {diff:<14} not tested")
            continue
        ci = f"95 % CI {m.signed(d.ci[0])} to {m.signed(d.ci[1])}"
        said = "distinguishable" if d.distinguishable else "not distinguishable"
        lines.append(
            f"  {m.label:<10} {diff:<14} {ci:<28} {d.test.split(' (')[0]} {p_phrase(d.p)}  {said}"
        )
    lines += _wrap(pair.verdict("accuracy"))
    return lines


def member_line(name: str, metrics: dict[str, Any]) -> str:
    """One run's evaluation on one line: accuracy, macro F1, log-loss, ECE."""
    values, kind = member_values(metrics, name)
    cells = "  ".join(f"{m.label} {m.value(values[m.key])}" for m in METRICS)
    return f"{printable(name)}  {cells}" + (f" ({kind})" if kind else "")


def tests_used(c: Comparison) -> list[str]:
    return sorted({d.test for p in c.pairs for d in p.differences.values() if d and d.ci})


def comparison_lines(c: Comparison) -> list[str]:
    """What ``cifarlab compare`` prints. Single runs only: a line per run (model, accuracy,
    macro F1, parameters) and a note that one run per side says nothing of seed noise."""
    if not c.grouped:
        lines = []
        for side in c.sides:
            mem = side.members[0]
            lines.append(
                f"{printable(side.name):<28} {printable(mem.config.get('model', '?')):<12} "
                f"acc {mem.values['accuracy']:.4f}  macro F1 {mem.values['macro_f1']:.4f}  "
                f"params {mem.config.get('params', 0):,}"
            )
        if len(c.sides) > 1:
            lines += _wrap(
                "(one run per side: no estimate of seed noise, so these differences may be "
                "noise; train each set-up with several seeds and compare the groups)",
                "",
            )
        return lines
    members = [m for s in c.sides for m in s.members]
    lines = [
        f"compared on the {c.split} split (accuracy, macro F1: higher is better; log-loss, "
        "ECE: lower)",
        ece_note(members),
        "",
    ]
    for side in c.sides:
        lines += [*side_lines(side), ""]
    used = tests_used(c)
    if c.pairs:
        how = "each side against the first" if len(c.sides) > ALL_PAIRS_UP_TO else "every pair"
        lines.append(
            f"differences ({how}; 95 % intervals; {' and '.join(used) or 'no test possible'}):"
        )
        for pair in c.pairs:
            lines += [*pair_lines(pair), ""]
        if len(c.pairs) > 1:
            lines += _wrap(
                f"({len(c.pairs)} pairs: about 1 in 20 pairs without a true difference looks "
                "distinguishable by chance at α = 0.05)",
                "",
            )
    return lines
