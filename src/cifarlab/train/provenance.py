"""Provenance: what made a run (versions, the git commit of a checkout, the processor), kept
in its ``config.json``."""

from __future__ import annotations

import platform
import re
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


def same_processor(a: Any, b: Any) -> bool:
    """Two descriptions of a machine (:func:`describe_machine`) name the same processor, cores
    and flags (the number of threads torch used is a setting of the run, not the machine)."""
    return isinstance(a, str) and isinstance(b, str) and _no_threads(a) == _no_threads(b)


def _no_threads(machine: str) -> str:
    return re.sub(r", \d+ threads?,", ",", machine)


def recorded_difference(
    recorded: dict[str, Any], device: torch.device, changed: str | None = None
) -> str:
    """One line: how this machine and these versions differ from those a run recorded (its
    ``provenance``), or that they are the same: a seeded run then repeats exactly, unless
    ``changed`` says what else differs from the recording (settings given here, a budget's
    steps trained without its re-planning)."""
    here = provenance(device)
    labels = {"cifarlab": "cifarlab", "torch": "torch", "python": "Python", "cpu": "CPU"}
    if "gpu" in here or "gpu" in recorded:
        labels["gpu"] = "GPU"
    differences = [
        f"{label} {recorded.get(key) or '?'} → {here.get(key) or '?'}"
        for key, label in labels.items()
        if recorded.get(key) != here.get(key)
        and not (key == "cpu" and same_processor(recorded.get(key), here.get(key)))
    ]
    if differences:
        return (
            f"differs from the recorded run: {'; '.join(differences)}: the results may differ a "
            "little from the recorded ones"
        )
    if changed:
        return f"same versions and machine as the recorded run, but {changed}"
    return "same versions and machine as the recorded run: the same seed gives the same weights"
