"""Checkpoints: written atomically, loadable on a CPU whatever device saved them, read with
``weights_only=True`` (no arbitrary code from a checkpoint file), of bounded size, and checked
against their schema (:data:`cifarlab.schemas.CHECKPOINT`) before anything uses them."""

from __future__ import annotations

import os
import pickle
import re
import zipfile
from pathlib import Path
from typing import Any

import torch

from cifarlab import schemas
from cifarlab.errors import CifarlabError, one_line
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
        raise CifarlabError(f"{path}: nested more than {schemas.MAX_DEPTH} levels deep: not a "
                            "cifarlab checkpoint")  # fmt: skip
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
        raise CifarlabError(f"{path}: entry {one_line(packed[0], 80)} is compressed, which "
                            "torch.save never does: not a cifarlab checkpoint")  # fmt: skip
    size = os.fstat(f.fileno()).st_size
    if sum(i.file_size for i in entries) > size:
        raise CifarlabError(f"{path}: its entries claim more bytes than the file holds: "
                            "truncated or not a cifarlab checkpoint")  # fmt: skip


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
