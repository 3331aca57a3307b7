"""Checkpoints: written atomically, loadable on a CPU whatever device saved them, read with
``weights_only=True`` (no arbitrary code from a checkpoint file), of bounded size, and checked
against their schema (:data:`cifarlab.schemas.CHECKPOINT`) before anything uses them."""

from __future__ import annotations

import os
import pickle
import re
from pathlib import Path
from typing import Any

import torch

from cifarlab import schemas
from cifarlab.errors import CifarlabError
from cifarlab.files import atomic_write, open_input
from cifarlab.limits import MAX_RUN_FILE, megabytes


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    return atomic_write(path, lambda tmp: torch.save(state, tmp))


def load_checkpoint(path: str | os.PathLike, purpose: str = "open") -> dict[str, Any]:
    """The checkpoint at ``path``, checked against :data:`cifarlab.schemas.CHECKPOINT`:
    ``purpose`` "open" (weights and epoch, for inference) or "resume" (all that training
    needs to go on). Only a regular file of at most MAX_RUN_FILE is read (a FIFO is refused
    without blocking); ``weights_only``: a file asking for any other global is refused,
    naming it, and nothing in it is run."""
    path = Path(path)
    if not os.path.lexists(path):
        raise CifarlabError(f"{path}: no checkpoint there")
    with open_input(path, megabytes(MAX_RUN_FILE), limit_hint=MAX_RUN_FILE.env) as f:
        try:
            state = torch.load(f, map_location="cpu", weights_only=True)
        except Exception as e:  # noqa: BLE001 - any failure means an unusable file
            found = re.search(r"GLOBAL ([\w.]+)", str(e))
            if isinstance(e, pickle.UnpicklingError) and found:  # weights_only refused a global
                raise CifarlabError(
                    f"{path}: refused to load: it asks for {found.group(1)}, which no cifarlab "
                    "checkpoint needs (the file comes from elsewhere or was altered; nothing in "
                    "it was run)"
                ) from None
            raise CifarlabError(f"{path}: not a readable checkpoint ({_reason(e)})") from None
    if not isinstance(state, dict) or "model" not in state:
        raise CifarlabError(f"{path}: not a cifarlab checkpoint (no model weights)")
    if schemas.depth(state, schemas.MAX_DEPTH) > schemas.MAX_DEPTH:
        raise CifarlabError(f"{path}: nested more than {schemas.MAX_DEPTH} levels deep: not a "
                            "cifarlab checkpoint")  # fmt: skip
    return schemas.check(schemas.CHECKPOINT, state, str(path), purpose)


def _reason(error: BaseException) -> str:
    """What went wrong, in a line: without torch's advice to load with weights_only=False."""
    lines = [x.strip() for x in str(error).splitlines() if x.strip()]
    boiler = ("Weights only load failed", "Please file an issue", "Check the documentation")
    useful = [x for x in lines if not x.startswith(boiler)]
    return f"{type(error).__name__}: {(useful or [''])[0][:200]}".rstrip(": ")


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
