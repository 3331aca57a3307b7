"""FastNet: cifarlab's family of fast-training CIFAR networks.

Built from the published ideas behind the fastest GPU recipes (hlb-CIFAR10, airbench), re-sized
for a CPU:

- a frozen 2×2 *patch-whitening* stem: its filters are the eigenvectors of the covariance of
  2×2×3 training patches, scaled by 1/sqrt(eigenvalue), in ± pairs; only its bias learns, for
  the first epochs. It decorrelates the input, so the first trained layer starts well
  conditioned (:meth:`FastNet.init_whitening` needs a sample of normalized training images);
- conv groups ``conv3×3 → maxpool 2 → BN → GELU → (conv3×3 → BN → GELU) × extra``; BatchNorm
  with a frozen scale of 1 and a learnable bias (trained with a larger learning rate, see
  ``bias_lr_scale``), conv filters identity ("dirac") initialised so each group starts near a
  residual map;
- a final max-pool over what is left of the image, a linear layer without bias and logits
  multiplied by a small constant (1/9), which acts like a temperature and lets the optimizer
  run at a high learning rate;
- optionally (``standardize=True``, what the recipes ask for since version 2) each image
  brought to mean 0 and standard deviation 1 before the stem, so that a loss of contrast or a
  change of brightness does not reach the network (BENCHMARKS.md, "Pixel noise").

Widths and depth are arguments, so one family spans the ``quick`` to ``max-cpu`` recipes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from cifarlab.models.conv_grad import Conv3x3
from cifarlab.models.registry import register


class _BatchNorm(nn.BatchNorm2d):
    """BatchNorm with its scale frozen at 1 (only the bias learns) and a fast running average."""

    def __init__(self, channels: int, momentum: float = 0.4) -> None:
        super().__init__(channels, eps=1e-12, momentum=momentum)
        self.weight.requires_grad_(False)


def _conv(c_in: int, c_out: int) -> nn.Conv2d:
    conv = Conv3x3(c_in, c_out)
    # Identity init of the first c_in filters: each group starts close to passing its input on.
    with torch.no_grad():
        nn.init.dirac_(conv.weight[: min(c_in, c_out)])
    return conv


class ConvGroup(nn.Module):
    """conv → maxpool 2 → BN → GELU, then ``extra`` × (conv → BN → GELU)."""

    def __init__(self, c_in: int, c_out: int, extra: int = 1, bn_momentum: float = 0.4) -> None:
        super().__init__()
        layers: list[nn.Module] = [
            _conv(c_in, c_out),
            nn.MaxPool2d(2),
            _BatchNorm(c_out, bn_momentum),
            nn.GELU(),
        ]
        for _ in range(extra):
            layers += [_conv(c_out, c_out), _BatchNorm(c_out, bn_momentum), nn.GELU()]
        self.layers = nn.Sequential(*layers)

    def forward(self, x: Tensor) -> Tensor:
        return self.layers(x)


def _standardize(x: Tensor) -> Tensor:
    """Each image to mean 0 and standard deviation 1 over its pixels and channels (one mean
    and one scale per image, so its colours keep their balance): a network that sees only
    this cannot tell an image from a copy of it with less contrast or a brighter one."""
    centred = x - x.mean(dim=(1, 2, 3), keepdim=True)
    return centred / (centred.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() + 1e-2)


class FastNet(nn.Module):
    """Whitening stem, three conv groups, max-pool, scaled linear head."""

    def __init__(
        self,
        num_classes: int = 10,
        widths: Sequence[int] = (64, 256, 256),
        extra: int = 1,
        whiten_kernel: int = 2,
        logit_scale: float = 1 / 9,
        bn_momentum: float = 0.4,
        standardize: bool = False,
    ) -> None:
        super().__init__()
        self.standardize = bool(standardize)
        k = whiten_kernel
        stem_width = 2 * 3 * k * k  # ± each eigenvector of the k×k×3 patch covariance
        self.whiten = nn.Conv2d(3, stem_width, k, padding=0, bias=True)
        self.whiten.weight.requires_grad_(False)
        nn.init.zeros_(self.whiten.bias)
        self.act = nn.GELU()
        groups, c = [], stem_width
        for w in widths:
            groups.append(ConvGroup(c, w, extra, bn_momentum))
            c = w
        self.groups = nn.Sequential(*groups)
        self.pool = nn.AdaptiveMaxPool2d(1)
        self.head = nn.Linear(c, num_classes, bias=False)
        self.logit_scale = logit_scale
        self.whitened = False

    def forward(self, x: Tensor) -> Tensor:
        if self.standardize:
            x = _standardize(x)
        x = self.act(self.whiten(x))
        x = self.pool(self.groups(x)).flatten(1)
        return self.head(x) * self.logit_scale

    @torch.no_grad()
    def init_whitening(self, images: Tensor, eps: float = 5e-4) -> None:
        """Set the stem's filters from a sample of *normalized* NCHW training images; ``eps``
        is added to every eigenvalue before the 1/sqrt scaling (training passes its
        ``whiten_eps`` setting)."""
        w = self.whiten.weight
        c, kh, kw = w.shape[1:]
        x = _standardize(images.float()) if self.standardize else images.float()
        patches = x.unfold(2, kh, 1).unfold(3, kw, 1)  # N, C, H', W', kh, kw
        patches = patches.permute(0, 2, 3, 1, 4, 5).reshape(-1, c * kh * kw).double()
        cov = patches.T @ patches / len(patches)
        eigenvalues, eigenvectors = torch.linalg.eigh(cov)
        # largest first, each filter scaled so its output has unit variance
        filters = (eigenvectors.T.flip(0) / (eigenvalues.flip(0) + eps).sqrt().view(-1, 1)).to(
            w.dtype
        )
        filters = filters.reshape(-1, c, kh, kw)
        w.copy_(torch.cat([filters, -filters]).to(w.device))
        self.whitened = True


def _builder(widths: Sequence[int], extra: int = 1):  # noqa: ANN202
    def build(num_classes: int = 10, **kwargs: object) -> nn.Module:
        options = {"widths": widths, "extra": extra, **kwargs}
        return FastNet(num_classes, **options)  # type: ignore[arg-type]

    return build


# Registered sizes. The training recipes that go with them live in cifarlab.train.recipes.
register("fastnet_s", "FastNet, widths 16/32/64: seconds on a CPU", recipe="quick")(
    _builder((16, 32, 64))
)
register("fastnet_m", "FastNet, widths 64/128/256: minutes on a CPU", recipe="fast")(
    _builder((64, 128, 256))
)
register("fastnet_l", "FastNet, widths 64/256/256: airbench94's shape", recipe="max-cpu")(
    _builder((64, 256, 256))
)
register(
    "fastnet_xl", "FastNet, widths 128/384/384: airbench95's shape, for long budgets", recipe="long"
)(_builder((128, 384, 384)))
