"""The package module: its API is imported on first use (``import cifarlab`` does not import
torch, so the CLI can catch a Ctrl-C from its first moment), and behaves as a plain module."""

from __future__ import annotations

import pickle
import subprocess
import sys
from unittest import mock

import cifarlab


def test_importing_the_package_does_not_import_torch() -> None:
    code = "import sys, cifarlab, cifarlab.cli; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_the_api_and_the_subpackages_are_there() -> None:
    from cifarlab.train.launch import train as engine_train

    assert cifarlab.train is engine_train  # the function, though cifarlab.train is a package
    assert cifarlab.data.__name__ == "cifarlab.data" and cifarlab.runs.__name__ == "cifarlab.runs"
    assert cifarlab.TrainConfig.__module__ == "cifarlab.train.config"
    assert set(cifarlab.__all__) <= set(dir(cifarlab))
    assert pickle.loads(pickle.dumps(cifarlab.train)) is engine_train


def test_the_api_can_be_patched() -> None:
    original = cifarlab.train
    with mock.patch("cifarlab.train", lambda *a, **k: "patched"):
        assert cifarlab.train() == "patched"
    assert cifarlab.train is original
