"""Muon on the conv filters and progressive resizing: the optimizer's arithmetic, the image
sizes training really sees, the budget planner's cost of both, and training with them on a
subset of the real data."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from cifarlab.errors import CifarlabError
from cifarlab.models import create_model
from cifarlab.train import budget as budgets
from cifarlab.train import train
from cifarlab.train.config import TrainConfig
from cifarlab.train.engine import Trainer
from cifarlab.train.optim import Muon, build_optimizer, orthogonalize
from cifarlab.train.recipes import recipe_config


def test_orthogonalize_gives_singular_values_near_one() -> None:
    g = torch.Generator().manual_seed(0)
    for shape, tall in [((64, 576), False), ((256, 2304), False), ((64, 576), True)]:
        m = torch.randn(*shape, generator=g) * torch.logspace(-1, 1, shape[1])
        m = m.T if tall else m  # wide, as conv filters are, and tall
        s0 = torch.linalg.svdvals(m)
        s = torch.linalg.svdvals(orthogonalize(m).float())
        assert s.max() < 1.25 and s.min() > 0.6, (shape, s.min(), s.max())
        assert s0.max() / s0.min() > 4 and s0.max() > 10  # the input's were far from equal


def test_muon_takes_the_conv_filters_and_sgd_the_rest() -> None:
    model = create_model("fastnet_m")
    cfg = recipe_config("fast-muon")
    opt = build_optimizer(cfg, model)
    assert isinstance(opt, Muon)
    muon = [g for g in opt.param_groups if g["muon"]]
    assert len(muon) == 1 and muon[0]["lr"] == cfg.muon_lr == 0.08
    filters = {id(p) for p in model.parameters() if p.requires_grad and p.ndim == 4}
    assert {id(p) for p in muon[0]["params"]} == filters and filters
    others = {id(p) for g in opt.param_groups if not g["muon"] for p in g["params"]}
    trainable = {id(p) for p in model.parameters() if p.requires_grad}
    assert others == trainable - filters  # biases and the head, each in exactly one group
    assert id(model.whiten.weight) not in filters | others  # the frozen stem is not trained


def test_a_muon_step_normalizes_each_filter_and_moves_it_orthogonally() -> None:
    torch.manual_seed(0)
    model = create_model("fastnet_s")
    cfg = recipe_config("quick", optimizer="muon", muon_lr=0.05)
    opt = build_optimizer(cfg, model)
    twin = copy.deepcopy(model)  # the non-filter parameters under torch's own Nesterov SGD
    sgd_groups = []
    for g in opt.param_groups:
        if not g["muon"]:
            names = {id(p) for p in g["params"]}
            params = [pt for pm, pt in zip(model.parameters(), twin.parameters(), strict=True)
                      if id(pm) in names]  # fmt: skip
            sgd_groups.append({"params": params, "lr": g["lr"], "weight_decay": g["weight_decay"]})
    ref = torch.optim.SGD(sgd_groups, lr=cfg.lr, momentum=cfg.momentum, nesterov=True)
    x, y = torch.randn(32, 3, 32, 32), torch.randint(0, 10, (32,))
    for net in (model, twin):
        F.cross_entropy(net(x), y).backward()
    conv = model.groups[1].layers[0].weight
    before = conv.detach().clone()
    opt.step()
    ref.step()
    normalized = before * (len(before) ** 0.5 / before.norm())
    update = ((normalized - conv.detach()) / 0.05).reshape(len(conv), -1)
    s = torch.linalg.svdvals(update)
    assert s.max() < 1.3 and s.min() > 0.3  # an orthogonalized step of size lr
    for (name, p), q in zip(model.named_parameters(), twin.parameters(), strict=True):
        if p.requires_grad and p.ndim != 4:
            assert torch.allclose(p, q, atol=1e-6), name  # exactly torch's SGD elsewhere


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


def test_training_sees_small_images_first_then_full_size(
    cifar10_root: Path, tmp_path: Path
) -> None:
    cfg = recipe_config("fast-muon", root=str(cifar10_root), train_size=1024, val_size=256,
                        epochs=2, device="cpu", precision="fp32").resolved()  # fmt: skip
    (tmp_path / "r").mkdir()
    trainer = Trainer(cfg, tmp_path / "r", progress=False)
    sizes: list[int] = []
    trainer.model.register_forward_pre_hook(
        lambda m, args: sizes.append(args[0].shape[-1]) if m.training else None
    )
    trainer.fit()
    assert len(sizes) == trainer.total_steps == 8  # 4 steps of 256 per epoch
    assert sizes == [24] * 4 + [32] * 4  # the first half of the steps at 24×24


def test_muon_recipe_learns_and_the_planner_counts_its_cheaper_steps(
    cifar10_root: Path, tmp_path: Path
) -> None:
    cfg = recipe_config("fast-muon", root=str(cifar10_root), train_size=4000, val_size=1000,
                        epochs=2, device="cpu")  # fmt: skip
    run = train(cfg, out=tmp_path / "r", progress=False)
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert rows[-1]["val_acc"] > 0.35, rows  # chance is 0.10
    plan = budgets.plan(1200, num_train=45000, val_size=5000, spent=1.0)
    by = {o.name: o for o in plan.options}
    muon, sgd = by["fastnet_m_muon"], by["fastnet_m"]
    assert muon.images_per_s == sgd.images_per_s  # the same network's full-size step...
    assert muon.cost == pytest.approx(0.78125 * budgets.MUON_OVERHEAD)  # ...24 px for half
    assert muon.epochs > sgd.epochs * 1.15  # so more epochs fit in the same time
