"""``cifarlab doctor``: what this machine is, how fast it trains each network, and what that
means for the recipes and for ``--budget``."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any

import torch

from cifarlab.errors import CifarlabError
from cifarlab.train import budget as budgets
from cifarlab.train import probe
from cifarlab.train import tensorboard as board
from cifarlab.train.recipes import RECIPES

TRAIN_IMAGES, VAL_IMAGES = 45000, 5000  # CIFAR-10's training split, 5,000 held out


def recipe_seconds(epochs: int, batch_size: int, images_per_s: float, cost: float = 1.0) -> float:
    """Expected training time of a recipe: its steps at ``images_per_s`` (full-size steps;
    ``cost``: its mean step against one of those) plus a validation pass per epoch."""
    steps = math.ceil(TRAIN_IMAGES / batch_size) * epochs
    val = VAL_IMAGES / (images_per_s * budgets.EVAL_SPEEDUP)
    return steps * batch_size / images_per_s * cost + epochs * val


def doctor(
    *,
    fresh: bool = False,
    batch_sizes: tuple[int, ...] = (256,),
    matmul: bool = False,
    budgets_shown: tuple[str, ...] = ("1m", "5m", "20m", "1h"),
    log: Callable[[str], Any] | None = print,
) -> dict[str, Any]:
    """Measure (or read from the cache) and describe this machine; returns everything as a
    dict and, with ``log``, prints it as a report."""
    say = log or (lambda _text: None)
    info = probe.machine_info()
    say(f"machine: {probe.describe_machine(info)}")
    say(f"torch {info['torch']}, kernels for {info['capability']}")
    say(board.describe())
    out: dict[str, Any] = {"machine": info, "speeds": [], "recipes": {}, "budgets": {}}
    out["tensorboard"] = board.available() and not board.switched_off()
    if matmul:
        peaks = {
            "fp32": probe.matmul_peak(torch.float32),
            "bf16": probe.matmul_peak(torch.bfloat16),
        }
        out["matmul_flops"] = peaks
        say("torch.mm peak: " + ", ".join(f"{n} {v / 1e9:,.0f} GFLOP/s" for n, v in peaks.items()))
    models = list(dict.fromkeys(c["model"] for c in budgets.curves()["candidates"].values()))
    say(
        f"\ntraining step, channels-last, images/s ({'measured now' if fresh else 'cached'}"
        f"{'' if fresh else ' or measured now'}; `auto` takes the one ≥ 5 % faster):"
    )
    say(f"  {'model':<10} {'batch':>5} {'fp32':>8} {'bf16':>8}  auto  bf16 weight gradients")
    best: dict[str, float] = {}
    for model in models:
        speeds = probe.measure(model, batch_sizes=batch_sizes, use_cache=not fresh)
        for b in batch_sizes:
            by = {s.precision: s for s in speeds if s.batch_size == b}
            fp32, bf16 = by["fp32"].images_per_s, by["bf16"].images_per_s
            auto = probe.pick_precision(fp32, bf16)
            if b == 256 or model not in best:
                best[model] = bf16 if auto == "bf16" else fp32
            cached = " (cached)" if all(s.cached for s in by.values()) else ""
            ways = by["bf16"].weight_grad_speeds
            grads = (
                f"  conv {ways['conv']:,.0f} / matmul {ways['matmul']:,.0f} → "
                f"{by['bf16'].weight_grad}"
                if ways
                else ""
            )
            say(f"  {model:<10} {b:>5} {fp32:>8,.0f} {bf16:>8,.0f}  {auto:<4}{grads}{cached}")
        out["speeds"] += [dataclasses.asdict(s) for s in speeds]
    say(f"\nrecipes here ({TRAIN_IMAGES:,} training images, a validation pass per epoch):")
    for r in RECIPES.values():
        cfg = r.config
        if cfg.model not in best or cfg.epochs is None or cfg.batch_size is None:
            continue
        secs = recipe_seconds(
            cfg.epochs, cfg.batch_size, best[cfg.model], budgets.recipe_step_cost(cfg)
        )
        out["recipes"][r.name] = secs
        m = r.measured
        acc = f"({100 * m['test_acc']:.1f}% test, {m['machine']})" if m else ""
        say(
            f"  {r.name:<12} {cfg.model:<10} {cfg.epochs:>2} epochs ≈ "
            f"{budgets.format_duration(secs):>8}  {acc}"
        )
    say("\nwhat --budget would train here:")
    for label in budgets_shown:
        try:
            plan = budgets.plan(
                budgets.parse_duration(label),
                num_train=TRAIN_IMAGES,
                val_size=VAL_IMAGES,
                spent=1.0,
            )
        except CifarlabError as e:
            say(f"  {label:>4}: {e}")
            continue
        c = plan.chosen
        out["budgets"][label] = plan.to_dict()
        say(
            f"  {label:>4}: {c.name} ({c.recipe}) for {c.epochs:.1f} epochs ({c.precision}), "
            f"expected "
            f"validation accuracy ≈ {100 * (c.expected_acc or 0):.1f}%"
        )
    return out
