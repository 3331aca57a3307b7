"""Provenance: what made a run (versions, the git commit of a checkout, the processor), kept
in its ``config.json``."""

from __future__ import annotations

import platform
import subprocess
from pathlib import Path
from typing import Any

import torch

from cifarlab import __version__
from cifarlab.train.probe import describe_machine


def _git_commit() -> str | None:
    """The commit of the checkout cifarlab runs from (None when installed from a wheel)."""
    here = Path(__file__).resolve().parents[1]  # the cifarlab package
    if not any((p / ".git").exists() for p in (here, *here.parents)):
        return None
    try:
        out = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--", "."],
            capture_output=True,
            text=True,
            timeout=5,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    commit = out.stdout.strip()
    if out.returncode or not commit:
        return None
    return commit + ("+changes" if dirty.returncode == 0 and dirty.stdout.strip() else "")


def provenance(device: torch.device) -> dict[str, Any]:
    """What made a run: versions, the git commit (from a checkout), the processor."""
    info: dict[str, Any] = {
        "cifarlab": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "git_commit": _git_commit(),
        "cpu": describe_machine(),
    }
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info
