"""The optimizers and schedules (cifarlab/train/optim.py): learning-rate schedules, the
BatchNorm-bias parameter group, lookahead, and Muon's orthogonalized update."""

from __future__ import annotations

import copy
import dataclasses

import pytest
import torch
import torch.nn.functional as F

from cifarlab.models import create_model
from cifarlab.train.config import TrainConfig
from cifarlab.train.optim import (
    Lookahead,
    Muon,
    build_optimizer,
    lr_factor,
    orthogonalize,
    param_groups,
)
from cifarlab.train.recipes import recipe_config


def test_triangle_and_cosine_schedules() -> None:
    tri = TrainConfig(schedule="triangle", warmup=0.25, lr_start=0.2, lr_end=0.1).resolved()
    total = 101
    assert lr_factor(tri, 0, total) == pytest.approx(0.2)
    assert lr_factor(tri, 25, total) == pytest.approx(1.0)
    assert lr_factor(tri, 100, total) == pytest.approx(0.1)
    assert lr_factor(tri, 50, total) == pytest.approx(1.0 - 0.9 * (0.25 / 0.75))
    cos = dataclasses.replace(tri, schedule="cosine")
    assert lr_factor(cos, 25, total) == pytest.approx(1.0)
    assert lr_factor(cos, 100, total) == pytest.approx(0.1)
    assert lr_factor(cos, 62, total) == pytest.approx(0.55, abs=0.02)  # half-way down
    assert lr_factor(TrainConfig().resolved(), 37, total) == 1.0


def test_norm_biases_get_the_scaled_lr() -> None:
    model = create_model("fastnet_s")
    cfg = TrainConfig(lr=0.1, weight_decay=0.01, bias_lr_scale=64.0)
    others, biases = param_groups(cfg, model)
    assert biases["lr"] == pytest.approx(6.4) and biases["weight_decay"] == pytest.approx(0.01 / 64)
    bn = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert {id(p) for p in biases["params"]} == {id(m.bias) for m in bn}
    # frozen: the whitening filters and the BatchNorm scales
    trainable = {id(p) for p in others["params"]} | {id(p) for p in biases["params"]}
    assert id(model.whiten.weight) not in trainable
    assert all(id(m.weight) not in trainable for m in bn)


def test_lookahead_pulls_weights_towards_their_average() -> None:
    model = torch.nn.Linear(2, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    la = Lookahead(model)
    with torch.no_grad():
        model.weight.fill_(1.0)
    la.update(model, decay=0.75)
    assert torch.allclose(model.weight, torch.full((1, 2), 0.25))  # 0.75·0 + 0.25·1
    assert torch.allclose(la.avg["weight"], model.weight)
    assert la.decay(1.0, 5) == pytest.approx(0.95**5) and la.decay(0.5, 5) < la.decay(1.0, 5)


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
