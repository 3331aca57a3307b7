"""Training to a time budget: ``cifarlab train --budget 5m``.

The choice splits into what does not depend on the machine and what does:

- **accuracy against epochs** of each candidate network (with its recipe's hyperparameters) was
  measured once on the validation split and is kept in ``curves.json`` beside this file,
  written by ``benchmarks/epoch_curves.py`` (every point names the machine and date it came
  from; accuracy per epoch is the same on any machine, up to bf16 rounding);
- **seconds per epoch** on this machine come from :mod:`cifarlab.train.probe`: the candidates'
  real training step timed in float32 and bf16 for a second or two (cached afterwards).

:func:`plan` turns the budget into, for every candidate, the number of steps that fit (after
the time already spent loading data and probing, the whitening set-up, and a validation pass
per epoch), reads the expected accuracy off its curve at that many epochs, and picks the best.
The trainer then keeps the finish on time: it re-plans the remaining steps from the measured
speed as training goes (:meth:`Budget.remaining_steps`), so a busier or slower machine than
the probe saw still ends within the budget.
"""

from __future__ import annotations

import json
import math
import re
import time
from dataclasses import asdict, dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import torch

from cifarlab.errors import SettingError
from cifarlab.train import probe
from cifarlab.train.recipes import get_recipe

CURVES_FILE = Path(__file__).with_name("curves.json")
# Aim at this share of the budget: the rest absorbs the machine's noise.
TARGET = 0.96
# A validation pass (forward only, batch 1000) runs about this many times faster per image
# than a training step (forward + backward + update): measured 3.2-3.6x on the FastNets here.
EVAL_SPEEDUP = 3.0
CURVE_TRAIN_IMAGES = 45000  # the curves' training split (50,000 less the 5,000 held out)
SETUP_SECONDS = 1.0  # whitening set-up, first checkpoint, config writes
FULL_SIZE = 32
# Muon's orthogonalization, per step, against a full-size SGD step: measured +6 % for
# fastnet_m and fastnet_l at batch 256 on the Zen 4 CPU (benchmarks/step_cost.py).
MUON_OVERHEAD = 1.06
_UNITS = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600}


def parse_duration(text: str | float | int) -> float:
    """``90s``, ``5m``, ``1h``, ``1h30m``, ``2.5m`` or a number of seconds → seconds."""
    if isinstance(text, int | float) and not isinstance(text, bool):
        seconds = float(text)
    else:
        s = str(text).strip().lower().replace(" ", "")
        parts = re.fullmatch(r"((\d+(\.\d+)?)(h|min|m|sec|s)?)+", s)
        if not parts:
            raise SettingError("budget", f"{text!r}: give a duration like 90s, 5m, 1h or 1h30m")
        seconds = 0.0
        for number, _, unit in re.findall(r"(\d+(\.\d+)?)(h|min|m|sec|s)?", s):
            seconds += float(number) * _UNITS[unit or "s"]
    if not math.isfinite(seconds) or seconds <= 0:
        raise SettingError("budget", f"{text!r}: the duration must be more than 0 s")
    return seconds


def format_duration(seconds: float) -> str:
    if seconds < 120:
        return f"{seconds:.0f} s"
    if seconds < 7200:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


@cache
def curves() -> dict[str, Any]:
    """The measured accuracy-vs-epochs curves (``curves.json``)."""
    return json.loads(CURVES_FILE.read_text())


def expected_accuracy(points: list[list], epochs: float) -> float | None:
    """Validation accuracy expected after ``epochs`` (may be fractional), interpolated linearly
    in log(epochs) between measured points; flat beyond the last one (no extrapolation
    upwards); None below the first (no evidence there)."""
    pts = sorted((float(p[0]), float(p[1])) for p in points)
    if epochs < pts[0][0] - 1e-9:
        return None
    if epochs >= pts[-1][0]:
        return pts[-1][1]
    for (e0, a0), (e1, a1) in zip(pts, pts[1:], strict=False):
        if e0 <= epochs <= e1:
            w = (math.log(epochs) - math.log(e0)) / (math.log(e1) - math.log(e0))
            return a0 + w * (a1 - a0)
    return pts[-1][1]


def size_cost(size: int) -> float:
    """A training step on size×size images against one on full-size images: the pixel count
    (measured within 3 % of this for the FastNets on a CPU, benchmarks/step_cost.py)."""
    return min(size / FULL_SIZE, 1.0) ** 2


def step_cost(cfg: Any, start: float = 0.0) -> float:
    """The mean cost of ``cfg``'s training steps from ``start`` (a share of the steps) to the
    end, in full-size steps: below 1 with progressive resizing."""
    start = min(max(start, 0.0), 1.0)
    if start >= 1.0:
        return size_cost(cfg.image_size(1.0))
    edges = sorted({start, 1.0, *(float(u) for u in (cfg.progressive or {}).values() if u > start)})
    total = sum(
        (b - a) * size_cost(cfg.image_size((a + b) / 2))
        for a, b in zip(edges, edges[1:], strict=False)
    )
    return total / (1.0 - start)


def recipe_step_cost(cfg: Any) -> float:
    """The mean cost of ``cfg``'s training steps against a full-size SGD step, the one the
    probe times: the pixel share of its image sizes, and Muon's measured overhead."""
    return step_cost(cfg) * (MUON_OVERHEAD if cfg.optimizer == "muon" else 1.0)


@dataclass
class Option:
    """One candidate network under this budget."""

    name: str
    recipe: str
    model: str
    batch_size: int
    precision: str = "fp32"
    images_per_s: float = 0.0
    speeds: dict[str, float] = field(default_factory=dict)  # precision → images/s
    steps: int = 0
    epochs: float = 0.0
    expected_acc: float | None = None
    seconds: float = 0.0  # predicted training + validation seconds
    cost: float = 1.0  # mean step time against a full-size SGD step (progressive resizing, Muon)
    min_budget: float = 0.0  # the shortest budget in which it reaches its first curve point
    note: str = ""


@dataclass
class Plan:
    budget: float
    chosen: Option
    options: list[Option]
    setup_seconds: float  # spent before planning ended (data load, probe)
    probe_seconds: float
    machine: str
    dataset: str
    num_train: int = 45000

    def reason(self) -> str:
        c = self.chosen
        acc = f"{100 * c.expected_acc:.1f}%" if c.expected_acc is not None else "?"
        others = [
            f"{o.name} {100 * o.expected_acc:.1f}% ({o.epochs:.1f} epochs)"
            for o in self.options
            if o is not c and o.expected_acc is not None
        ]
        too_slow = [o.name for o in self.options if o.expected_acc is None]
        text = (
            f"budget {format_duration(self.budget)}: {c.name} for {c.steps} steps "
            f"({c.epochs:.2f} epochs of batch {c.batch_size}, {c.precision}, "
            f"{c.images_per_s:,.0f} images/s here), expected validation accuracy ≈ {acc}"
        )
        if c.cost != 1.0:
            text += (
                f" (recipe {c.recipe}: Muon and smaller images early make its mean step "
                f"{c.cost:.2f}× a full-size step)"
            )
        if others:
            text += "; in the same time " + ", ".join(others)
        if too_slow:
            text += f"; {', '.join(too_slow)} would not reach its first measured point"
        if self.num_train != CURVE_TRAIN_IMAGES:
            text += (
                f" (the curves were measured on {CURVE_TRAIN_IMAGES:,} training images; "
                f"this run has {self.num_train:,}, so the accuracy is only indicative)"
            )
        if self.dataset != "cifar10":
            text += " (accuracies from the CIFAR-10 curves: on CIFAR-100 only the ranking holds)"
        return text

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reason"] = self.reason()
        return d


def _steps_that_fit(avail: float, step_s: float, val_s: float, steps_per_epoch: int) -> int:
    """The most steps S with S·step_s + (epochs S spans)·val_s ≤ avail."""
    steps = max(int(avail / step_s), 0)
    for _ in range(4):
        epochs = math.ceil(steps / steps_per_epoch) if steps else 0
        steps = max(int((avail - epochs * val_s) / step_s), 0)
    while steps > 0 and steps * step_s + math.ceil(steps / steps_per_epoch) * val_s > avail:
        steps -= 1
    return steps


def plan(
    budget: float,
    *,
    num_train: int,
    val_size: int,
    num_classes: int = 10,
    dataset: str = "cifar10",
    device: torch.device | str = "cpu",
    spent: float = 0.0,
    only: str | None = None,
    use_cache: bool = True,
    log: Any = None,
) -> Plan:
    """Choose the network, precision and number of steps for ``budget`` seconds of training,
    of which ``spent`` are already gone (data loading); probing counts too.

    ``only`` restricts the choice to one candidate (``--model``). Raises a one-line
    :class:`CifarlabError` saying the minimum when no candidate fits.
    """
    device = torch.device(device)
    t_start = time.perf_counter()
    data = curves()["candidates"]
    names = _candidates(data, only)
    options: list[Option] = []
    probe_seconds = 0.0
    for name in names:  # smallest first: a bigger network is never faster per image
        c = data[name]
        opt = _new_option(name, c)
        first = min(float(p[0]) for p in c["points"])
        # bounded by the slowest smaller network measured: skip probing a hopeless one
        if options and _hopeless(opt, options, first, _used(spent, t_start), budget, num_train):
            options.append(opt)
            continue
        t0 = time.perf_counter()
        precision, speeds = _probe(opt, num_classes, device, use_cache)
        probe_seconds += time.perf_counter() - t0
        opt.speeds = {s.precision: round(s.images_per_s, 1) for s in speeds}
        opt.precision, opt.images_per_s = precision, opt.speeds[precision]
        _fit(opt, c["points"], first, _used(spent, t_start), budget, num_train, val_size)
        options.append(opt)
        if log:
            log(_probe_line(name, opt, speeds))
    chosen = _choose(budget, options)
    setup = spent + time.perf_counter() - t_start
    return Plan(
        budget, chosen, options, setup, probe_seconds, probe.describe_machine(), dataset, num_train
    )


def _used(spent: float, t_start: float) -> float:
    """The seconds of the budget gone by now: ``spent`` before planning began at ``t_start``,
    the planning since, and the set-up still to come."""
    return spent + (time.perf_counter() - t_start) + SETUP_SECONDS


def _candidates(data: dict[str, Any], only: str | None) -> list[str]:
    """The candidates of the curves ``data`` to choose among: all, or the one that ``only``
    names (by its name or its model)."""
    names = list(data)
    if only is None:
        return names
    matches = [n for n in names if n == only or data[n]["model"] == only]
    if not matches:
        raise SettingError(
            "model",
            f"{only} has no measured accuracy curve, and a budget chooses among "
            f"{', '.join(names)} (train it for a number of epochs instead)",
        )
    return matches


def _new_option(name: str, c: dict[str, Any]) -> Option:
    """The candidate ``name`` with its curve's settings ``c``, not yet measured."""
    opt = Option(name, c["recipe"], c["model"], int(c["batch_size"]))
    cfg = get_recipe(c["recipe"]).config
    opt.cost = recipe_step_cost(cfg)
    return opt


def _hopeless(
    opt: Option, options: list[Option], first: float, used: float, budget: float, num_train: int
) -> bool:
    """Whether ``opt`` could not reach its ``first`` epochs within ``budget`` (``used``
    seconds of it gone) even at the speed of the slowest smaller network measured in
    ``options`` (a bigger network is never faster per image); if so, its note and minimum
    budget say so."""
    measured = [o for o in options if o.images_per_s]
    if not measured:
        return False
    bound = min(measured, key=lambda o: o.images_per_s)
    at_least = (used + first * num_train * opt.cost / bound.images_per_s) / TARGET
    if at_least > budget:
        opt.min_budget = at_least
        opt.note = (
            f"not measured: even at {bound.name}'s speed it needs more than "
            f"{format_duration(at_least)} for {first:g} epoch(s)"
        )
        return True
    return False


def _probe(
    opt: Option, num_classes: int, device: torch.device, use_cache: bool
) -> tuple[str, list[probe.Speed]]:
    """Time ``opt``'s training step here: the precision to train it in, and its speeds."""
    choice = probe.choose_precision(
        opt.model,
        num_classes=num_classes,
        batch_size=opt.batch_size,
        device=device,
        use_cache=use_cache,
    )
    # on a CPU the choice timed both precisions; elsewhere time the one it chose
    speeds = choice.speeds or probe.measure(
        opt.model,
        num_classes=num_classes,
        batch_sizes=(opt.batch_size,),
        precisions=(choice.precision,),
        device=device,
        use_cache=use_cache,
    )
    return choice.precision, speeds


def _fit(
    opt: Option,
    points: list[list],
    first: float,
    used: float,
    budget: float,
    num_train: int,
    val_size: int,
) -> None:
    """Fill in the steps of the measured ``opt`` that fit in ``budget`` once ``used`` seconds
    are gone (with a validation pass per epoch), the epochs and accuracy (its curve
    ``points``) they give, the budget its ``first`` epochs need, and its training seconds."""
    step_s = opt.batch_size / opt.images_per_s * opt.cost
    val_s = val_size / (opt.images_per_s * EVAL_SPEEDUP)
    steps_per_epoch = math.ceil(num_train / opt.batch_size)
    opt.steps = _steps_that_fit(budget * TARGET - used, step_s, val_s, steps_per_epoch)
    opt.epochs = opt.steps * opt.batch_size / num_train
    opt.expected_acc = expected_accuracy(points, opt.epochs) if opt.steps else None
    need = math.ceil(first * steps_per_epoch)
    opt.min_budget = (used + need * step_s + math.ceil(first) * val_s) / TARGET
    opt.seconds = opt.steps * step_s + math.ceil(opt.steps / steps_per_epoch) * val_s
    if opt.expected_acc is None:
        opt.note = f"needs {format_duration(opt.min_budget)} for {first:g} epoch(s)"


def _probe_line(name: str, opt: Option, speeds: list[probe.Speed]) -> str:
    """The log line of the probe of ``opt``."""
    return (
        f"  probe {name}: "
        + ", ".join(f"{p} {v:,.0f} images/s" for p, v in opt.speeds.items())
        + (" (cached)" if all(s.cached for s in speeds) else "")
    )


def _choose(budget: float, options: list[Option]) -> Option:
    """The option with the best expected accuracy; if none reaches its first measured point,
    a one-line error giving the smallest one's minimum budget."""
    feasible = [o for o in options if o.expected_acc is not None]
    if not feasible:
        smallest = options[0]
        raise SettingError(
            "budget",
            f"{format_duration(budget)} is too short for any network here: the smallest, "
            f"{smallest.name}, needs about {format_duration(smallest.min_budget)} (data "
            f"loading and probing included); give {math.ceil(smallest.min_budget)}s or more",
        )
    return max(feasible, key=lambda o: o.expected_acc or 0.0)


class Budget:
    """Keeps a running training job inside its budget.

    ``used`` counts every second of the run's sessions from the start of ``train()`` (data
    loading, probing and validation included; time between an interruption and its resume does
    not). :meth:`remaining_steps` says how many more steps fit, from the speed measured so far
    in this session.
    """

    def __init__(
        self, seconds: float, used_before: float = 0.0, start: float | None = None
    ) -> None:
        """``start``: the ``perf_counter()`` this session's clock started at (default: now)."""
        self.seconds, self.used_before = seconds, used_before
        self.session_start = time.perf_counter() if start is None else start

    def used(self) -> float:
        return self.used_before + time.perf_counter() - self.session_start

    def remaining_steps(
        self, step_seconds: float, val_seconds: float, steps_done: int, steps_per_epoch: int
    ) -> int:
        """Steps that still fit after ``steps_done``, keeping ``TARGET`` of the budget and one
        validation pass per epoch begun."""
        avail = self.seconds * TARGET - self.used()
        into_epoch = steps_done % steps_per_epoch
        if steps_done and not into_epoch:  # at an epoch's end, its validation is still to come
            avail -= val_seconds
        # the current epoch's validation is still to come; further epochs add their own
        first_room = steps_per_epoch - into_epoch if into_epoch else steps_per_epoch
        steps = max(int((avail - val_seconds) / step_seconds), 0)
        if steps > first_room:
            rest = _steps_that_fit(
                avail - val_seconds - first_room * step_seconds,
                step_seconds,
                val_seconds,
                steps_per_epoch,
            )
            steps = first_room + rest
        return steps


class Pacer:
    """The pace of a budgeted run, asked by the training loop once per step: from the speed
    measured in this session it sets the run's total number of steps so that training (and
    its validation passes) ends on time, about 20 times over the run (the schedule — learning
    rate, lookahead — follows the new total from there on). The first ``WARMUP_STEPS`` of a
    session build oneDNN's kernels and run slow: the pace is measured after them."""

    WARMUP_STEPS = 3

    def __init__(
        self,
        budget: Budget,
        cfg: Any,
        steps_per_epoch: int,
        val_images: int,
        replans: list[list[int]] | None = None,
    ) -> None:
        self.budget, self.cfg = budget, cfg
        self.steps_per_epoch, self.val_images = steps_per_epoch, val_images
        self.replans: list[list[int]] = list(replans or [])  # [at step, old total, new total]
        self.session_steps = 0  # steps of this session
        self.mark: float | None = None  # perf_counter() after the warm-up steps
        self.mark_steps = 0  # session steps at the mark
        self.units = 0.0  # steps since the mark, each weighted by its cost (image size)
        self.val_since_mark = 0.0  # validation seconds since the mark
        self.val_seconds: float | None = None  # the last validation pass

    def step(self, done: int, image_size: int, total: int) -> int | None:
        """After a step (``done`` steps of the run so far, on images of ``image_size``): the new
        total number of steps when it is time to re-plan and the pace says so, else None."""
        self.session_steps += 1
        if self.mark is not None:
            self.units += size_cost(image_size)
        if self.session_steps == self.WARMUP_STEPS:
            self.mark, self.mark_steps = time.perf_counter(), self.session_steps
        if done % max(total // 20, 5):
            return None
        return self.replan(done, total)

    def validated(self, seconds: float) -> None:
        """A validation pass took ``seconds``."""
        self.val_seconds = seconds
        if self.mark is not None:
            self.val_since_mark += seconds

    def replan(self, done: int, total: int) -> int | None:
        steps = self.session_steps - self.mark_steps
        if self.mark is None or steps < 3:
            return None
        # seconds of a full-size step; with progressive resizing the steps still to come cost
        # what their image sizes say, on average
        full_step_s = (time.perf_counter() - self.mark - self.val_since_mark) / self.units
        step_s = full_step_s * step_cost(self.cfg, done / total)
        val_s = self.val_seconds
        if val_s is None:
            val_s = self.val_images * full_step_s / self.cfg.batch_size / EVAL_SPEEDUP
        more = self.budget.remaining_steps(step_s, val_s, done, self.steps_per_epoch)
        new_total = max(done + more, done, 1)
        if abs(new_total - total) <= max(0.01 * total, 1):
            return None
        self.replans.append([done, total, new_total])
        return new_total
