"""The small maps' weight gradients as matrix products (models/conv_grad.py): the same
gradients as PyTorch's convolution, taken only where they apply, chosen by the probe per
machine, recorded in the run and kept by a resume."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import fakedata
from cifarlab import TrainConfig, create_model, train
from cifarlab.errors import CifarlabError
from cifarlab.models.conv_grad import SMALL_MAP, Conv3x3, shifted_weight_grad
from cifarlab.models.conv_grad import use_shifted_weight_grad as use_matmul
from cifarlab.train import probe


def _reference(x: torch.Tensor, weight: torch.Tensor, grad_out: torch.Tensor) -> torch.Tensor:
    return torch.ops.aten.convolution_backward(
        grad_out, x, weight, None, [1, 1], [1, 1], [1, 1], False, [0, 0], 1, [False, True, False]
    )[1]


@pytest.mark.parametrize(
    ("n", "c_in", "c_out", "h", "w", "channels_last"),
    [
        (4, 8, 16, 7, 7, True),
        (3, 5, 6, 3, 5, False),
        (2, 16, 8, 2, 2, True),
        (1, 3, 4, 1, 1, False),
    ],
)
def test_shifted_weight_grad_is_the_convolutions_weight_gradient(
    n: int, c_in: int, c_out: int, h: int, w: int, channels_last: bool
) -> None:
    gen = torch.Generator().manual_seed(0)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    x = torch.randn(n, c_in, h, w, generator=gen).contiguous(memory_format=fmt)
    weight = torch.randn(c_out, c_in, 3, 3, generator=gen)
    grad_out = torch.randn(n, c_out, h, w, generator=gen).contiguous(memory_format=fmt)
    got = shifted_weight_grad(x, grad_out)
    assert got.shape == weight.shape and got.dtype == x.dtype
    torch.testing.assert_close(got, _reference(x, weight, grad_out), rtol=1e-4, atol=1e-4)


def _grads(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, torch.Tensor]:
    model.zero_grad(set_to_none=True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = model(x)
    F.cross_entropy(logits.float(), y).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def test_a_fastnet_trains_on_the_same_gradients_and_keeps_its_weights() -> None:
    torch.manual_seed(0)
    plain = create_model("fastnet_s").to(memory_format=torch.channels_last)
    matmul = create_model("fastnet_s").to(memory_format=torch.channels_last)
    matmul.load_state_dict(plain.state_dict())
    assert use_matmul(matmul) == 6  # two 3×3 convolutions in each of the three groups
    # the same parameters and names as nn.Conv2d: checkpoints and exports do not change
    assert all(isinstance(m, nn.Conv2d) for m in matmul.modules() if isinstance(m, Conv3x3))
    assert list(plain.state_dict()) == list(matmul.state_dict())
    x = torch.randn(16, 3, 32, 32).contiguous(memory_format=torch.channels_last)
    y = torch.randint(0, 10, (16,))
    a, b = _grads(plain, x, y), _grads(matmul, x, y)
    assert a.keys() == b.keys()
    changed = 0
    for name in a:
        error = ((a[name] - b[name]).norm() / a[name].norm()).item()
        assert error < 1e-2, (name, error)  # bf16 products summed in another order
        changed += error > 0
        assert b[name].dtype == torch.float32
    assert changed >= 1  # the small maps' gradients did come another way


def _uses_matmul(conv: Conv3x3, x: torch.Tensor, *, autocast: bool = True) -> bool:
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = conv(x)
    return out.grad_fn is not None and "ShiftedGradConv" in type(out.grad_fn).__name__


def test_the_matrix_products_are_taken_only_where_they_apply() -> None:
    conv = Conv3x3(4, 4)
    small = torch.randn(2, 4, 8, 8, requires_grad=True)  # 64 pixels: SMALL_MAP
    large = torch.randn(2, 4, 9, 9, requires_grad=True)
    assert small.shape[-1] * small.shape[-2] == SMALL_MAP
    assert not _uses_matmul(conv, small)  # off unless the probe chose it
    use_matmul(conv)
    assert _uses_matmul(conv, small)
    assert not _uses_matmul(conv, large)  # a large map: the convolution's own kernel
    assert not _uses_matmul(conv, small, autocast=False)  # float32
    conv.eval()
    assert not _uses_matmul(conv, small)  # evaluation
    conv.train()
    with torch.no_grad():
        assert conv(small).grad_fn is None
    assert use_matmul(conv, False) == 1 and not _uses_matmul(conv, small)
    assert use_matmul(nn.Sequential(nn.Conv2d(3, 3, 3))) == 0  # nothing to switch


def test_the_probe_times_both_ways_and_caches_the_choice(isolated_cache: Path) -> None:
    speeds = probe.measure("fastnet_s", batch_sizes=(32,), seconds=0.1, max_steps=2)
    fp32, bf16 = speeds
    assert fp32.weight_grad == "conv" and fp32.weight_grad_speeds is None
    both = bf16.weight_grad_speeds
    assert both is not None and set(both) == {"conv", "matmul"}
    want = "matmul" if both["matmul"] >= probe.MATMUL_MARGIN * both["conv"] else "conv"
    assert bf16.weight_grad == want and bf16.images_per_s == both[want]
    assert len(json.loads((isolated_cache / "probe.json").read_text())["entries"]) == 3
    again = probe.measure("fastnet_s", batch_sizes=(32,))
    assert all(s.cached for s in again) and again[1].weight_grad == want
    assert again[1].weight_grad_speeds == both
    # a model without such convolutions: nothing to choose, remembered without timing
    (plain,) = probe.measure("simple_cnn", batch_sizes=(32,), precisions=("bf16",), seconds=0.1)
    assert plain.weight_grad == "conv" and plain.weight_grad_speeds is None
    (cached,) = probe.measure("simple_cnn", batch_sizes=(32,), precisions=("bf16",))
    assert cached.cached


@pytest.fixture
def data(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    return root


def test_a_run_records_its_weight_gradients_and_a_resume_keeps_them(
    data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = TrainConfig(root=str(data), model="fastnet_s", epochs=1, val_size=20, precision="bf16")
    monkeypatch.setenv("CIFARLAB_WEIGHT_GRAD", "matmul")
    run = train(cfg, out=tmp_path / "run", progress=False, tensorboard=False)
    assert json.loads((run / "config.json").read_text())["weight_grad_used"] == "matmul"
    monkeypatch.setenv("CIFARLAB_WEIGHT_GRAD", "conv")  # the resume keeps what the run used
    train(resume=run, changes={"epochs": 2}, progress=False, tensorboard=False)
    assert json.loads((run / "config.json").read_text())["weight_grad_used"] == "matmul"
    # float32 has nothing to choose; a wrong value is refused naming the variable
    fp32 = train(
        TrainConfig(**{**cfg.to_dict(), "precision": "fp32"}),
        out=tmp_path / "fp32",
        progress=False,
        tensorboard=False,
    )
    assert json.loads((fp32 / "config.json").read_text())["weight_grad_used"] == "conv"
    monkeypatch.setenv("CIFARLAB_WEIGHT_GRAD", "fast")
    with pytest.raises(CifarlabError, match=r"CIFARLAB_WEIGHT_GRAD='fast': must be auto"):
        train(cfg, out=tmp_path / "bad", progress=False, tensorboard=False)
    assert not (tmp_path / "bad").exists()
