"""Device choice and process-rank helpers (rank-aware logging/saving for torchrun)."""

from __future__ import annotations

import contextlib
import os

import torch
import torch.distributed as dist

from cifarlab.errors import SettingError


def resolve_device(name: str = "auto") -> torch.device:
    """``auto`` picks CUDA, then Apple MPS, then the CPU; an explicit device must exist."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name not in ("cpu", "cuda", "mps") and not name.startswith("cuda:"):
        raise SettingError("device", f"must be auto, cpu, cuda or mps, got {name!r}")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SettingError("device", "cuda: no CUDA GPU is available here (try cpu)")
    if name == "mps" and not (
        getattr(torch.backends, "mps", None) and torch.backends.mps.is_available()
    ):
        raise SettingError("device", "mps: Apple's MPS backend is not available here")
    return torch.device(name)


def cpu_has_fast_bf16() -> bool:
    """Whether this CPU computes bfloat16 natively (AVX512-BF16 or AMX), where bf16 autocast
    speeds convolutions up instead of emulating them slowly."""
    try:
        flags = open("/proc/cpuinfo").read()
    except OSError:  # not Linux: ask PyTorch what it compiled kernels for
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    return " avx512_bf16" in flags or " amx_bf16" in flags


def autocast_dtype(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype for ``precision`` on ``device``, or None for plain float32.

    ``auto`` means bfloat16 on a CUDA GPU that supports it and on a CPU with native bf16
    (AVX512-BF16/AMX), float32 elsewhere (including Apple MPS). ``bf16`` forces it.
    """
    if precision == "fp32":
        return None
    if precision == "bf16":
        return torch.bfloat16
    if device.type == "cuda":
        # native bf16 from Ampere (compute capability 8) on; older GPUs would only emulate it
        return torch.bfloat16 if torch.cuda.get_device_capability(device)[0] >= 8 else None
    if device.type == "cpu":
        return torch.bfloat16 if cpu_has_fast_bf16() else None
    return None


def run_autocast(config: dict, device: torch.device) -> torch.dtype | None:
    """The autocast dtype to evaluate a trained run with: the precision its training used
    (``precision_used`` in ``config.json``: what ``auto`` measured) on the same kind of
    device, else what :func:`autocast_dtype` gives for its ``precision`` setting."""
    used = config.get("precision_used")
    trained_on = str(config.get("device_used", "")).split(":")[0]
    if config.get("precision") == "auto" and used in ("fp32", "bf16") and trained_on == device.type:
        return torch.bfloat16 if used == "bf16" else None
    return autocast_dtype(config.get("precision", "fp32"), device)


def autocast_context(
    device: torch.device, dtype: torch.dtype | None
) -> contextlib.AbstractContextManager:
    """``torch.autocast`` to ``dtype`` on ``device``, or nothing for ``None`` (plain float32):
    the one place training, evaluation and prediction turn a precision into a context."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)


def rank() -> int:
    """This process's rank: the process group's once joined, else torchrun's ``RANK``
    (0 outside torchrun). Only rank 0 prints and writes files."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank()
    return int(os.environ.get("RANK", "0") or 0)


def world_size() -> int:
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
