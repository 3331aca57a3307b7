"""A second way to compute a 3×3 convolution's weight gradient, for CPUs where it is faster.

oneDNN's bf16 weight-gradient kernel on Intel's AMX tiles (``brgconv_bwd_w``) runs at a third
of its forward convolution's speed when the feature map is small (7×7 and 3×3 in FastNet's
last groups: 200 and 80 GFLOP/s against the forward's 600, measured on 2 cores of a Xeon of
family 6, model 207; BENCHMARKS.md, issue 25). There the gradient is nine plain matrix
products instead: for each of the 3×3 offsets, the output gradient (N·H·W × C_out) against the
input shifted by that offset (N·H·W × C_in), which ``torch.mm`` runs on the same tiles at
350–400 GFLOP/s. The result is the same sum in another order (bf16 products, float32
accumulation, as oneDNN's).

Whether it pays is a property of the machine, not of the network: on CPUs without AMX the
oneDNN kernel may well be the faster. :mod:`cifarlab.train.probe` times the training step
both ways and a run switches it on only where it measured faster
(:func:`use_shifted_weight_grad`). It applies only while training under bf16 autocast on a CPU
and to maps of at most ``SMALL_MAP`` pixels; evaluation, export and every other device take
PyTorch's own convolution, and the weights and checkpoints do not change.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

# The largest feature map (H·W of the convolution's input) that takes the matrix products:
# FastNet's 7×7 and 3×3 maps (5×5 and 2×2 at 24 px), not its 15×15 and 31×31 ones, where
# oneDNN's kernel is the faster (measured alongside, same machine).
SMALL_MAP = 64


def shifted_weight_grad(x: Tensor, grad_out: Tensor, kernel: int = 3, padding: int = 1) -> Tensor:
    """The weight gradient of a stride-1 ``kernel``×``kernel`` convolution with ``padding``,
    as ``kernel²`` matrix products; returned in channels-last layout, in ``x``'s dtype."""
    n, c, h, w = x.shape
    out_h, out_w = grad_out.shape[2:]
    xp = F.pad(x, (padding,) * 4).permute(0, 2, 3, 1)  # N, H+2p, W+2p, C
    if not xp.is_contiguous():
        xp = xp.contiguous()
    g = grad_out.permute(0, 2, 3, 1).reshape(n * out_h * out_w, -1).t()  # C_out × N·H·W
    grad = torch.empty(g.shape[0], kernel, kernel, c, dtype=x.dtype, device=x.device)
    for i in range(kernel):
        for j in range(kernel):
            shifted = xp[:, i : i + out_h, j : j + out_w, :].reshape(-1, c)
            torch.mm(g, shifted, out=grad[:, i, j, :])
    return grad.permute(0, 3, 1, 2)


class _ShiftedGradConv(torch.autograd.Function):
    """conv2d (3×3, stride 1, padding 1, no bias) whose backward takes the weight gradient
    from :func:`shifted_weight_grad` and the input gradient from PyTorch's own kernel."""

    @staticmethod
    @torch.amp.custom_fwd(device_type="cpu", cast_inputs=torch.bfloat16)
    def forward(ctx, x: Tensor, weight: Tensor) -> Tensor:  # noqa: ANN001
        ctx.save_for_backward(x, weight)
        return F.conv2d(x, weight, padding=1)

    @staticmethod
    @torch.amp.custom_bwd(device_type="cpu")
    def backward(ctx, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None]:  # noqa: ANN001
        x, weight = ctx.saved_tensors
        grad_x = grad_w = None
        if ctx.needs_input_grad[0]:
            one = [1, 1]  # stride, padding, dilation
            mask = [True, False, False]  # the input's gradient only
            grad_x = torch.ops.aten.convolution_backward(
                grad_out, x, weight, None, one, one, one, False, [0, 0], 1, mask
            )[0]
        if ctx.needs_input_grad[1]:
            grad_w = shifted_weight_grad(x, grad_out)
        return grad_x, grad_w


class Conv3x3(nn.Conv2d):
    """A 3×3, stride-1, padding-1 convolution without bias (an ``nn.Conv2d``: same weights,
    same checkpoints) that can take its weight gradient from :func:`shifted_weight_grad`."""

    shifted_weight_grad = False  # set per model by use_shifted_weight_grad

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__(c_in, c_out, 3, padding=1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        if (
            self.shifted_weight_grad
            and self.training
            and x.device.type == "cpu"
            and x.shape[-1] * x.shape[-2] <= SMALL_MAP
            and torch.is_grad_enabled()
            and torch.is_autocast_enabled("cpu")
            and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ):
            return _ShiftedGradConv.apply(x, self.weight)
        return super().forward(x)


def use_shifted_weight_grad(model: nn.Module, on: bool = True) -> int:
    """Switch the matrix-product weight gradient on (or off) for every :class:`Conv3x3` in
    ``model``; the number of such convolutions (0: the model has none, nothing to choose)."""
    convs = [m for m in model.modules() if isinstance(m, Conv3x3)]
    for conv in convs:
        conv.shifted_weight_grad = on
    return len(convs)
