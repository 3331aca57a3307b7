"""Checkpoints: written atomically, loadable on a CPU whatever device saved them, read with
``weights_only=True`` (no arbitrary code from a checkpoint file)."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cifarlab.errors import CifarlabError
from cifarlab.report.io import atomic_write


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        if (path.parent / "config.json").is_file() and not any(path.parent.glob("*.pt")):
            raise CifarlabError(
                f"{path}: no checkpoint there: that run stopped before it saved one; "
                f"train it again with --out {path.parent}"
            )
        raise CifarlabError(f"{path}: no checkpoint there")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # noqa: BLE001 - any failure means an unusable file
        raise CifarlabError(
            f"{path}: not a readable checkpoint ({type(e).__name__}: {e})"
        ) from None
    if not isinstance(state, dict) or "model" not in state:
        raise CifarlabError(f"{path}: not a cifarlab checkpoint (no model weights)")
    return state


def clean_state_dict(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """Strip the ``module.`` (DataParallel/DDP) and ``_orig_mod.`` (torch.compile) prefixes
    that make checkpoints fail to load elsewhere."""
    out = {}
    for k, v in state.items():
        for prefix in ("module.", "_orig_mod."):
            while k.startswith(prefix):
                k = k[len(prefix) :]
        out[k] = v
    return out
