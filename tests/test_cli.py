"""The command line, run as a real subprocess: help, data info, data show, clear errors."""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from PIL import Image

from conftest import cli_run
from fakedata import write_cifar10_python, write_cifar100_python


def run(
    *args: str, env: dict | None = None, cwd: Path | None = None
) -> subprocess.CompletedProcess:
    full_env = {**os.environ, **(env or {})}
    return cli_run(  # a warm fork: nothing here needs a fresh interpreter (tests/conftest.py)
        [sys.executable, "-m", "cifarlab", *args],
        capture_output=True, text=True, env=full_env, cwd=cwd, timeout=120,
    )  # fmt: skip


COMMANDS = [[], ["download"], ["data"], ["data", "info"], ["data", "show"], ["models"],
            ["recipes"], ["doctor"], ["train"], ["evaluate"], ["compare"], ["predict"],
            ["export"], ["serve"], ["robustness"], ["sweep"]]  # fmt: skip


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


# --------------------------------------------------------------------------- hardening


def _torch_loaded(pid: int) -> bool:
    """Whether process ``pid`` has mapped torch's library (it is importing torch)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False
    return "libtorch" in maps or "torch/_C" in maps


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux /proc")
def test_ctrl_c_at_start_up_is_one_line() -> None:
    """Ctrl-C while the command starts (here: while it imports torch, before the command
    runs) prints `interrupted` and exits 130, never a traceback."""
    probe = subprocess.run(
        [sys.executable, "-c", "import sys, cifarlab.cli; print('torch' in sys.modules)"],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if probe.stdout.strip() == "True":
        pytest.xfail(
            "`import cifarlab` imports torch (src/cifarlab/__init__.py), before main() can "
            "catch Ctrl-C: the package must import its API lazily"
        )
    outcomes = []
    for delay in (0.0, 0.05, 0.15, 0.3, 0.6):
        proc = subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "models"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )  # fmt: skip
        deadline = time.monotonic() + 60
        while proc.poll() is None and not _torch_loaded(proc.pid) and time.monotonic() < deadline:
            time.sleep(0.002)
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
        assert "Traceback" not in err, err
        if proc.returncode == 0:  # it had finished already
            assert err == "" and "simple_cnn" in out
        else:
            assert (proc.returncode, err) == (130, "interrupted\n")
        outcomes.append(proc.returncode)
    assert 130 in outcomes


@pytest.fixture
def cli_main(monkeypatch: pytest.MonkeyPatch):  # noqa: ANN201
    """cifarlab.cli.main in this process; the SIGINT handler it may change is put back."""
    from cifarlab import cli

    handler = signal.getsignal(signal.SIGINT)
    monkeypatch.delenv("CIFARLAB_DEBUG", raising=False)
    yield cli
    signal.signal(signal.SIGINT, handler)


@pytest.mark.parametrize("exc,line", [
    (TypeError("unsupported operand\ntype(s)"),
     "error: internal error (TypeError: unsupported operand type(s)); please report it — set "
     "CIFARLAB_DEBUG=1 for the traceback"),
    (MemoryError("Unable to allocate 9.3 GiB"),
     "error: ran out of memory (Unable to allocate 9.3 GiB)"),
    (RecursionError("maximum recursion depth exceeded"), "error: ran out of stack"),
    (KeyboardInterrupt(), "interrupted"),
])  # fmt: skip
def test_any_failure_is_one_line(
    cli_main, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, exc: BaseException,
    line: str,
) -> None:  # fmt: skip
    def boom(args: argparse.Namespace) -> int:
        raise exc

    monkeypatch.setattr(cli_main, "cmd_models", boom)
    code = cli_main.main(["models"])
    err = capsys.readouterr().err
    assert code == (130 if isinstance(exc, KeyboardInterrupt) else 1)
    assert err.startswith(line) and err.count("\n") == 1, err
    if not isinstance(exc, KeyboardInterrupt):
        monkeypatch.setenv("CIFARLAB_DEBUG", "1")
        with pytest.raises(type(exc)):
            cli_main.main(["models"])


def test_an_internal_error_in_a_real_process(tmp_path: Path) -> None:
    script = (
        "import sys, cifarlab.cli as c\n"
        "def boom(args):\n    raise ValueError('deep\\ninside')\n"
        "c.cmd_models = boom\nsys.exit(c.main(['models']))\n"
    )
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1 and r.stderr == (
        "error: internal error (ValueError: deep inside); please report it — set "
        "CIFARLAB_DEBUG=1 for the traceback\n"
    ), r.stderr
    r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "CIFARLAB_DEBUG": "1"})  # fmt: skip
    assert r.returncode == 1 and "Traceback" in r.stderr and "ValueError: deep" in r.stderr


def test_models_num_classes_is_range_checked(cli_main, capsys: pytest.CaptureFixture) -> None:
    r = run("models", "--num-classes", str(10**12))
    assert (
        r.returncode == 1
        and r.stdout == ""
        and r.stderr
        == ("error: --num-classes must be between 2 and 100,000, got 1,000,000,000,000\n")
    ), r.stderr
    for value in ("0", "1", "-3", "100001"):
        assert cli_main.main(["models", "--num-classes", value]) == 1
        err = capsys.readouterr().err
        assert err.startswith("error: --num-classes must be between 2 and 100,000, got ")
        assert err.count("\n") == 1


@pytest.mark.parametrize("args,message", [
    (["download", "--url", "not a url"], "bad download URL 'not a url' (from --url): it holds"),
    (["download", "--url", "ftp://"], "bad download URL 'ftp://' (from --url): the scheme"),
    (["download", "--url", "http://"], "bad download URL 'http://' (from --url): it names no"),
    (["download", "--url", "file:///etc"], "bad download URL 'file:///etc' (from --url): the"),
    (["download", "--url", "http://host:port/"], "bad download URL 'http://host:port/' (from"),
    (["download", "--url", "http://a b/"], "bad download URL 'http://a b/' (from --url): it"),
    (["download", "--root", "afile"], "--root afile is not a folder"),
    (["data", "info", "--val-size", "-5"], "--val-size must be at least 0, got -5"),
    (["data", "show", "--seed", "-1"], "--seed must be between 0 and 2**63 - 1, got -1"),
    (["data", "show", "--seed", str(2**70)], "--seed must be between 0 and 2**63 - 1"),
])  # fmt: skip
def test_options_are_range_checked_where_they_enter(
    cli_main, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    args: list[str], message: str,
) -> None:  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "afile").write_text("x")
    if "--root" not in args:
        args = [*args, "--root", str(tmp_path / "data")]
    assert cli_main.main(args) == 1
    err = capsys.readouterr().err
    assert err.startswith(f"error: {message}") and err.count("\n") == 1, err
    assert not (tmp_path / "data").exists()  # nothing written, no network


def test_main_called_from_python_puts_ctrl_c_back_after_an_interrupt() -> None:
    """A notebook calling cli.main: after a Ctrl-C the next one must still interrupt."""
    import os
    import threading

    from cifarlab.cli import main

    before = signal.getsignal(signal.SIGINT)
    timer = threading.Timer(0.5, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        code = main(["doctor", "--fresh"])  # measures for seconds: interrupted
    finally:
        timer.cancel()
    assert code == 130
    assert signal.getsignal(signal.SIGINT) is before


# --------------------------------------------------------------------------- one rule, one place


def _train_parser() -> argparse.ArgumentParser:
    from cifarlab.cli import build_parser

    return build_parser().parse_args(["train"]).parser


def test_the_train_options_that_set_fields_come_from_the_parser() -> None:
    """An option whose dest is a configuration field sets it: the list is read from the
    train parser's groups, and is the one that was kept by hand."""
    from cifarlab.cli import _train_fields
    from cifarlab.train.config import AUGMENT_KEYS, FIELDS

    kept_by_hand = (
        "model dataset labels root epochs batch_size lr optimizer momentum weight_decay "
        "label_smoothing normalize schedule precision channels_last compile tta threads seed "
        "device train_size val_size translate flip cutout corrupt"
    ).split()
    derived = _train_fields(_train_parser(), (*FIELDS, *AUGMENT_KEYS))
    assert sorted(derived) == sorted(kept_by_hand) and len(set(derived)) == len(derived)


def test_every_dataset_option_offers_the_known_datasets() -> None:
    from cifarlab.cli import build_parser
    from cifarlab.data.sources import DATASETS

    def parsers(p: argparse.ArgumentParser) -> list[argparse.ArgumentParser]:
        out = [p]
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for sub in action.choices.values():
                    out += parsers(sub)
        return out

    offered = [
        (p.prog, a.choices)
        for p in parsers(build_parser())
        for a in p._actions
        if "--dataset" in a.option_strings
    ]
    assert len(offered) == 4  # download, data info, data show, train
    assert all(list(choices) == list(DATASETS) for _, choices in offered), offered


def test_help_does_not_import_torch() -> None:
    code = "import sys; from cifarlab.cli import build_parser; build_parser(); "
    code += "print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.stdout.strip() == "False", out.stderr


@pytest.mark.parametrize(
    "argv,message",
    [
        (
            ["--recipe", "quick", "--set", "recipe=fast"],
            "--recipe is given twice (--recipe and --set recipe=)",
        ),
        (["--set", "recipe=5"], "--recipe must be a recipe's name, got 5"),
        (["--set", "recipe="], "--recipe must be a recipe's name, got ''"),
        (["--set", "recipe=turbo"], "--recipe 'turbo' is unknown"),
    ],
)
def test_set_recipe_is_the_recipe(argv: list[str], message: str) -> None:
    from cifarlab.cli import _option_namer, build_parser, train_config_from_args
    from cifarlab.errors import SettingError

    args = build_parser().parse_args(["train", *argv])
    with pytest.raises(SettingError) as e:
        train_config_from_args(args)
    assert e.value.render(_option_namer(args)).startswith(message)
    args = build_parser().parse_args(["train", "--set", "recipe=quick", "--epochs", "2"])
    cfg = train_config_from_args(args)
    assert (cfg.recipe, cfg.model, cfg.epochs) == ("quick", "fastnet_s", 2)


def test_a_resumed_run_keeps_its_budget(
    cli_main, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """The rule is train()'s; the CLI prints it with the option's name."""
    argv = ["train", "--resume", str(tmp_path / "run"), "--budget", "5m", "--no-progress"]
    assert cli_main.main(argv) == 1
    err = capsys.readouterr().err
    assert err == "error: --budget starts a new run; a resumed run keeps its own budget\n", err
    assert list(tmp_path.iterdir()) == []


def test_the_library_checks_what_the_cli_names(tmp_path: Path) -> None:
    """Checks that moved out of the CLI name the parameter; the CLI names its option."""
    from cifarlab.data.dataset import load_dataset
    from cifarlab.errors import SettingError
    from cifarlab.predict import check_options

    with pytest.raises(SettingError, match=r"^val_size must be at least 0, got -1$"):
        load_dataset("cifar10", tmp_path / "nowhere", val_size=-1)
    with pytest.raises(SettingError, match=r"^top_k must be at least 1, got 0$"):
        check_options(top_k=0, batch_size=1)
    with pytest.raises(SettingError, match=r"^batch_size must be between 1 and 65536, got 0$"):
        check_options(top_k=1, batch_size=0)
    check_options(top_k=1, batch_size=65536)
    assert list(tmp_path.iterdir()) == []
