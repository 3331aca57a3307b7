"""Muon on the conv filters and progressive resizing: the optimizer's arithmetic, the image
sizes training really sees, the budget planner's cost of both, and training with them on a
subset of the real data."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cifarlab.errors import CifarlabError
from cifarlab.runs import RunFolder
from cifarlab.train import budget as budgets
from cifarlab.train import setup, train
from cifarlab.train.config import TrainConfig
from cifarlab.train.engine import Trainer
from cifarlab.train.recipes import recipe_config


@pytest.mark.parametrize(
    "stages, message",
    [
        ({"40": 0.5}, "SIZE 8-31"),
        ({"24": 1.5}, "UNTIL"),
        ({"big": 0.5}, "SIZE"),
        ({"24": "half"}, "UNTIL"),
    ],  # fmt: skip
)
def test_bad_progressive_settings_are_clear_errors(stages: dict, message: str) -> None:
    with pytest.raises(CifarlabError, match=f"progressive.*{message}"):
        TrainConfig(model="fastnet_s", progressive=stages).resolved()


def test_progressive_sizes_and_their_cost() -> None:
    cfg = TrainConfig(model="fastnet_s", progressive={"16": 0.25, "24": 0.5})
    assert [cfg.image_size(p) for p in (0.0, 0.2, 0.25, 0.4, 0.5, 0.99)] == [16, 16, 24, 24, 32, 32]
    whole = 0.25 * (16 / 32) ** 2 + 0.25 * (24 / 32) ** 2 + 0.5
    assert budgets.step_cost(cfg) == pytest.approx(whole)
    assert budgets.step_cost(cfg, 0.5) == pytest.approx(1.0)
    assert budgets.step_cost(cfg, 0.4) == pytest.approx((0.1 * 0.5625 + 0.5) / 0.6)
    assert budgets.step_cost(TrainConfig(model="fastnet_s")) == 1.0


@pytest.mark.slow
def test_training_sees_small_images_first_then_full_size(
    cifar10_root: Path, tmp_path: Path
) -> None:
    cfg = recipe_config("fast-muon", root=str(cifar10_root), train_size=1024, val_size=256,
                        epochs=2, device="cpu", precision="fp32").resolved()  # fmt: skip
    (tmp_path / "r").mkdir()
    trainer = Trainer(cfg, RunFolder(tmp_path / "r"), setup.build(cfg), progress=False)
    sizes: list[int] = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: sizes.append(args[0].shape[-1]) if m.training else None
    )
    trainer.fit()
    assert len(sizes) == trainer.total_steps == 8  # 4 steps of 256 per epoch
    assert sizes == [24] * 4 + [32] * 4  # the first half of the steps at 24×24


@pytest.mark.slow
def test_muon_recipe_learns_and_the_planner_counts_its_cheaper_steps(
    cifar10_root: Path, tmp_path: Path, planner_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # tta=0: only the calibration at the end would use it (test_recipes.py says why)
    cfg = recipe_config("fast-muon", root=str(cifar10_root), train_size=4000, val_size=1000,
                        epochs=2, device="cpu", tta=0)  # fmt: skip
    run = train(cfg, out=tmp_path / "r", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_acc"] > 0.35, rows  # chance is 0.10
    monkeypatch.setenv("CIFARLAB_CACHE", str(planner_cache))  # the FastNets' speeds, once a run
    plan = budgets.plan(1200, num_train=45000, val_size=5000, spent=1.0)
    by = {o.name: o for o in plan.options}
    muon, sgd = by["fastnet_m_muon"], by["fastnet_m"]
    assert muon.images_per_s == sgd.images_per_s  # the same network's full-size step...
    assert muon.cost == pytest.approx(0.78125 * budgets.MUON_OVERHEAD)  # ...24 px for half
    assert muon.epochs > sgd.epochs * 1.15  # so more epochs fit in the same time
