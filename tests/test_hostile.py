"""Every CLI command that reads user input, over the hostile-files corpus (tests/hostile.py):
exit code 1, one ``error:`` line, no traceback, no hang, and no file changed outside the
command's output. Commands run as real processes forked from a warm server (tests/cli_server.py),
two at a time."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import hostile
from conftest import _PRELOAD

# What the commands import, imported once by each server before it forks (half the corpus's
# time was each child importing these again): conftest's warm servers' list, and what the
# corpus's report and robustness cases import besides.
PRELOAD = (*_PRELOAD, "cifarlab.report.html", "cifarlab.robustness.evaluate", "matplotlib.pyplot")
TIMEOUT = 30  # seconds a command may take before it counts as a hang
HERE = Path(__file__).resolve().parent

pytestmark = pytest.mark.slow


class Server:
    def __init__(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(HERE / "cli_server.py"), *PRELOAD],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore"},
        )
        self.lock = threading.Lock()

    def run(self, job: dict) -> dict:
        assert self.proc.stdin and self.proc.stdout
        self.proc.stdin.write(json.dumps(job) + "\n")
        self.proc.stdin.flush()
        return json.loads(self.proc.stdout.readline())

    def close(self) -> None:
        if self.proc.stdin:
            self.proc.stdin.close()
        self.proc.wait(timeout=30)


def _train_and_evaluate(data: Path, out: Path) -> None:
    from cifarlab.evaluate.run import evaluate_run
    from cifarlab.train import TrainConfig, train

    cfg = TrainConfig(model="fastnet_s", model_args={"widths": [8, 16, 16]}, root=str(data),
                      epochs=1, val_size=20, precision="fp32")  # fmt: skip
    train(cfg, out=out, progress=False)
    evaluate_run(out, "test", root=data, report=False)


@pytest.fixture(scope="module")
def template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("hostile-template")
    old = os.environ.get("CIFARLAB_CACHE")
    os.environ["CIFARLAB_CACHE"] = str(folder / "cache")
    try:
        hostile.write_template(folder, _train_and_evaluate)
    finally:
        if old is None:
            os.environ.pop("CIFARLAB_CACHE", None)
        else:
            os.environ["CIFARLAB_CACHE"] = old
    shutil.rmtree(folder / "cache", ignore_errors=True)
    return folder


def _snapshot(root: Path, allowed: tuple[str, ...]) -> dict[str, tuple]:
    """Every entry under ``root`` (not following links) but the allowed ones: type, size,
    mtime, link target."""
    out = {}
    stack = [""]  # no recursion: the corpus nests folders deeper than Python's limit
    while stack:
        folder = stack.pop()
        for entry in os.scandir(root / folder if folder else root):
            rel = f"{folder}/{entry.name}" if folder else entry.name
            if any(rel == a or rel.startswith(a + "/") for a in allowed):
                continue
            st = entry.stat(follow_symlinks=False)
            link = os.readlink(entry.path) if stat.S_ISLNK(st.st_mode) else None
            size = st.st_size if stat.S_ISREG(st.st_mode) else 0
            out[rel] = (stat.S_IFMT(st.st_mode), size, st.st_mtime_ns if size else 0, link)
            if stat.S_ISDIR(st.st_mode):
                stack.append(rel)
    return out


def _one(server: Server, case: hostile.Case, template: Path, base: Path) -> str | None:
    """Run one case; return what went wrong, or None."""
    folder = base / case.name.replace("/", "__")
    shutil.copytree(template, folder, symlinks=True)
    case.setup(folder)
    before = _snapshot(folder, case.allowed + ("_out", "_err"))
    env = {"CIFARLAB_CACHE": str(folder / "cache"), "HOME": str(folder),
           "MPLCONFIGDIR": str(folder / "cache" / "matplotlib"),  # its font cache: not ours
           "CIFARLAB_DATA": "", "PYTHONWARNINGS": "ignore", **case.env}  # fmt: skip
    reply = server.run({"argv": case.argv, "cwd": str(folder), "env": env,
                        "stdout": str(folder / "_out"), "stderr": str(folder / "_err"),
                        "timeout": TIMEOUT})  # fmt: skip
    err = (folder / "_err").read_text(errors="replace")
    where = f"{case.name} ({' '.join(case.argv)}): "
    if reply["timed_out"]:
        return where + f"hung (killed after {TIMEOUT} s)"
    problems = []
    if reply["code"] not in case.codes:
        problems.append(f"exit code {reply['code']}, expected {case.codes}")
    if "Traceback" in err or "internal error" in err:
        problems.append("a traceback / internal error")
    lines = [x for x in err.splitlines() if x.startswith("error:")]
    if reply["code"] == 1 and case.errors is not None and len(lines) != case.errors:
        problems.append(f"{len(lines)} error: lines, expected {case.errors}")
    if reply["code"] == 1 and case.errors is None and not lines:
        problems.append("no error: line")
    after = _snapshot(folder, case.allowed + ("_out", "_err"))
    if after != before:
        changed = sorted(k for k in before.keys() | after.keys() if before.get(k) != after.get(k))
        problems.append(f"changed {changed[:5]}")
    if case.check is not None:
        try:
            case.check(folder)
        except AssertionError as e:
            problems.append(str(e))
    if problems:
        return where + "; ".join(problems) + f"\n    stderr: {err.strip()[-600:]}"
    subprocess.run(["rm", "-rf", str(folder)], check=False)  # rmtree recurses: too deep here
    return None


def test_every_command_survives_the_hostile_corpus(template: Path, tmp_path: Path) -> None:
    cases = hostile.all_cases()
    assert len({c.name for c in cases}) == len(cases)
    servers = [Server() for _ in range(2)]
    free = list(servers)
    pick = threading.Lock()

    def run(case: hostile.Case) -> str | None:
        with pick:
            server = free.pop()
        try:
            return _one(server, case, template, tmp_path)
        finally:
            with pick:
                free.append(server)

    try:
        with ThreadPoolExecutor(len(servers)) as pool:
            failures = [f for f in pool.map(run, cases) if f]
    finally:
        for s in servers:
            s.close()
    assert not failures, f"{len(failures)} of {len(cases)} cases failed:\n" + "\n".join(failures)
