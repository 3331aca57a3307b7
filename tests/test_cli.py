"""The command line, run as a real subprocess: help, data info, data show, clear errors."""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from fakedata import write_cifar10_python, write_cifar100_python


def run(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(
        [sys.executable, "-m", "cifarlab", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120,
    )  # fmt: skip


COMMANDS = [[], ["download"], ["data"], ["data", "info"], ["data", "show"], ["models"],
            ["recipes"], ["doctor"], ["train"], ["evaluate"], ["compare"], ["predict"],
            ["export"]]  # fmt: skip


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "cifarlab")
def test_help_everywhere(cmd: list[str]) -> None:
    r = run(*cmd, "--help")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith(f"usage: cifarlab {' '.join(cmd)}".rstrip())


def test_every_command_has_help() -> None:
    """COMMANDS above names every sub-command the parser has."""
    from cifarlab.cli import build_parser

    def names(parser: argparse.ArgumentParser, prefix: list[str]) -> list[list[str]]:
        out = [prefix]
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    out += names(sub, [*prefix, name])
        return out

    assert sorted(names(build_parser(), [])) == sorted(COMMANDS)


def test_models_lists_every_model_with_its_parameters() -> None:
    from cifarlab.models import count_parameters, create_model, model_names

    r = run("models")
    assert r.returncode == 0, r.stderr
    for name in model_names():
        line = next(x for x in r.stdout.splitlines() if x.split()[:1] == [name])
        assert f"{count_parameters(create_model(name)):,}" in line
    assert "12,230,010" in r.stdout and "167,562" in r.stdout


def test_a_closed_pipe_is_not_an_error() -> None:
    """`cifarlab models | head -1`: the reader goes away; no traceback, no error line."""
    proc = subprocess.Popen([sys.executable, "-m", "cifarlab", "models"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    proc.stdout.close()  # before the interpreter has started: its first write breaks the pipe
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 141 and err == "", err


def test_data_info_counts(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    r = run("data", "info", "--root", str(tmp_path), "--val-size", "20")
    assert r.returncode == 0, r.stderr
    lines = {line.split()[0]: line.split()[1:] for line in r.stdout.splitlines() if line.strip()}
    assert lines["airplane"] == ["8", "2", "2"]
    assert lines["total"] == ["80", "20", "20"]
    assert "python layout, found via --root" in r.stdout
    assert "checksum  differs" in r.stdout
    # the warning about the checksums is one line on stderr, no traceback
    assert r.stderr.count("\n") == 1 and r.stderr.startswith("warning: ")


def test_data_info_cifar100_coarse_from_env(tmp_path: Path) -> None:
    write_cifar100_python(tmp_path)
    r = run("data", "info", "--dataset", "cifar100", "--labels", "coarse", "--val-size", "0",
            env={"CIFARLAB_DATA": str(tmp_path)})  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert "coarse labels, 20 classes" in r.stdout and "found via $CIFARLAB_DATA" in r.stdout
    assert "large_man-made_outdoor_things" in r.stdout


@pytest.mark.slow
def test_data_show_writes_png(tmp_path: Path) -> None:
    write_cifar10_python(tmp_path)
    out = tmp_path / "grid" / "s.png"
    r = run("data", "show", "--root", str(tmp_path), "--val-size", "10", "--split", "test",
            "--per-class", "2", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    with Image.open(out) as im:
        assert im.format == "PNG" and im.size[0] > 200 and im.size[1] > 400
    assert not [p for p in out.parent.iterdir() if p.name != "s.png"]  # no temp files left


@pytest.mark.slow
def test_data_show_cifar100_fine(tmp_path: Path) -> None:
    write_cifar100_python(tmp_path)
    out = tmp_path / "s.png"
    r = run("data", "show", "--dataset", "cifar100", "--root", str(tmp_path), "--val-size", "0",
            "--per-class", "1", "--out", str(out))  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert out.stat().st_size > 10_000


@pytest.mark.parametrize("args,message", [
    (["data", "info", "--root", "/nonexistent/cifar"], "/nonexistent/cifar: no such folder"),
    (["data", "show", "--per-class", "0"], "--per-class must be at least 1"),
    (["data", "show", "--per-class", "51", "--val-size", "0"],
     "--per-class must be at most 50 for 10 classes"),
    (["data", "show", "--out", "x.jpg"], "--out must name a .png file"),
    (["data", "info", "--labels", "coarse"], "CIFAR-10 has no coarse labels"),
])  # fmt: skip
def test_errors_are_one_clear_line(tmp_path: Path, args: list[str], message: str) -> None:
    write_cifar10_python(tmp_path)
    r = run(*args, env={"CIFARLAB_DATA": str(tmp_path)})
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and message in errors[0], r.stderr


def test_empty_folder_says_how_to_get_data(tmp_path: Path) -> None:
    r = run("data", "info", "--root", str(tmp_path))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "CIFAR-10 not found in" in r.stderr and "cifarlab download" in r.stderr


def test_unknown_option_exits_2() -> None:
    r = run("data", "info", "--bogus")
    assert r.returncode == 2 and "unrecognized arguments: --bogus" in r.stderr
