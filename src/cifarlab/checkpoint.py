"""Checkpoints: written atomically, loadable on a CPU whatever device saved them, read with
``weights_only=True`` (no arbitrary code from a checkpoint file), of bounded size, and checked
against their schema (:data:`cifarlab.schemas.CHECKPOINT`) before anything uses them; and
whether a checkpoint's weights fit a model (:func:`weights_problem`, on the shapes of
:func:`planned_shapes`, found without allocating the model)."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch
from torch import nn

from cifarlab import schemas
from cifarlab.errors import CifarlabError, one_line
from cifarlab.files import atomic_write, open_input
from cifarlab.limits import MAX_RUN_FILE, megabytes
from cifarlab.models import create_model


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
        _check_archive(f, path)
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
        raise CifarlabError(
            f"{path}: nested more than {schemas.MAX_DEPTH} levels deep: not a cifarlab checkpoint"
        )
    return schemas.check(schemas.CHECKPOINT, state, str(path), purpose)


def _check_archive(f: Any, path: Path) -> None:
    """A checkpoint is a zip archive whose entries ``torch.save`` stores uncompressed: an entry
    that is compressed could expand to far more than the file (torch would allocate it whole),
    so it is refused before ``torch.load`` reads it."""
    try:
        if not zipfile.is_zipfile(f):
            return  # torch.load says what it is (the legacy format is read with weights_only)
        with zipfile.ZipFile(f) as z:
            entries = z.infolist()
    except Exception as e:  # noqa: BLE001 - a damaged zip directory: unreadable
        raise CifarlabError(f"{path}: not a readable checkpoint ({one_line(e)})") from None
    finally:
        f.seek(0)
    packed = [i.filename for i in entries if i.compress_type != zipfile.ZIP_STORED]
    if packed:
        raise CifarlabError(
            f"{path}: entry {one_line(packed[0], 80)} is compressed, which "
            "torch.save never does: not a cifarlab checkpoint"
        )
    size = os.fstat(f.fileno()).st_size
    if sum(i.file_size for i in entries) > size:
        raise CifarlabError(
            f"{path}: its entries claim more bytes than the file holds: "
            "truncated or not a cifarlab checkpoint"
        )


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


# --------------------------------------------------------------------------- weights and models


def shapes(model: nn.Module) -> dict[str, list[int]]:
    """The shape of every tensor in ``model``'s state: what tells two architectures apart."""
    return {k: list(v.shape) for k, v in model.state_dict().items()}


def planned_shapes(name: str, num_classes: int, model_args: dict[str, Any]) -> dict | None:
    """:func:`shapes` of the model ``name`` would build, found without allocating it (built
    on PyTorch's meta device); None if the builder cannot build there."""
    try:
        with torch.device("meta"):
            return shapes(create_model(name, num_classes, **model_args))
    except Exception:  # noqa: BLE001 - any builder: the real build says what is wrong
        return None


def weights_problem(expected: dict[str, list[int]], weights: dict[str, Any]) -> str | None:
    """Why ``weights`` (a state dict) do not fit a model of ``expected`` shapes, naming the
    first parameter that differs; None if they fit."""
    for key, shape in expected.items():
        if key not in weights:
            lacking = [k for k in expected if k not in weights]
            more = f" and {len(lacking) - 1} more" if len(lacking) > 1 else ""
            return f"it lacks parameter {key}{more}"
        got = weights[key]
        if not isinstance(got, torch.Tensor):
            return f"parameter {key} is {schemas.describe(got)}, not a tensor"
        if list(got.shape) != shape:
            return f"parameter {key} is {list(got.shape)} in the checkpoint, {shape} in the model"
    extra = [k for k in weights if k not in expected]
    if extra:
        more = f" and {len(extra) - 1} more" if len(extra) > 1 else ""
        return f"it has parameter {extra[0]}{more}, which the model lacks"
    return None


def dtype_problem(model: nn.Module, weights: dict[str, Any]) -> str | None:
    """A floating-point parameter given integers (or the reverse) would be cast silently."""
    for key, have in model.state_dict().items():
        got = weights[key]
        if have.is_floating_point() != got.is_floating_point() or got.is_complex():
            return f"parameter {key} holds {got.dtype} values, the model {have.dtype}"
    return None
