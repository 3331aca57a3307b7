"""Run many ``cifarlab`` commands in real processes without paying Python + torch start-up for
each: this server imports cifarlab once, then forks one child per command. The child is a real
process: its own working directory, environment, stdin/stdout/stderr files and exit code; an
exception that escapes ``cli.main`` prints a traceback and exits 1, as ``python -m cifarlab``
would. The server waits for the child up to a timeout and kills it past that (a hang).

Protocol: one JSON object per line on stdin (``argv``, ``cwd``, ``env``, ``stdout``, ``stderr``,
``timeout``; ``whole_env``: true when ``env`` is the child's whole environment, not additions to
the server's); one JSON object per line on stdout (``code``, ``timed_out``, ``seconds``).

Modules named on the command line (``cli_server.py cifarlab.train ...``) are imported once too,
before any fork (tests/conftest.py's ``run_cli`` preloads the commands' heavy imports).
"""

from __future__ import annotations

import json
import os
import signal
import sys
import time


def _child(job: dict) -> None:
    os.chdir(job["cwd"])
    if job.get("whole_env"):
        os.environ.clear()
    os.environ.update(job["env"])
    out = os.open(job["stdout"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    err = os.open(job["stderr"], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    null = os.open(os.devnull, os.O_RDONLY)
    os.dup2(null, 0)
    os.dup2(out, 1)
    os.dup2(err, 2)
    # A strict UTF-8 stdout, as on a machine whose locale is C.UTF-8 with PYTHONIOENCODING strict.
    sys.stdout = open(1, "w", encoding="utf-8", errors="strict", closefd=False)  # noqa: SIM115
    sys.stderr = open(2, "w", encoding="utf-8", errors="backslashreplace", closefd=False)  # noqa: SIM115
    sys.argv = ["cifarlab", *job["argv"]]
    code = 1
    try:
        from cifarlab.cli import main

        code = main(job["argv"])
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except BaseException:  # what the interpreter would print for an uncaught exception
        import traceback

        traceback.print_exc()
        code = 1
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        code = code or 120  # as the interpreter does when stdout cannot be flushed
    os._exit(int(code or 0))


def serve(preload: list[str]) -> None:
    import importlib

    import torch  # noqa: F401

    import cifarlab.cli  # noqa: F401 - the expensive imports, once

    for name in preload:
        importlib.import_module(name)

    for line in sys.stdin:
        job = json.loads(line)
        start = time.monotonic()
        pid = os.fork()
        if pid == 0:
            _child(job)
        timed_out = False
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                break
            if time.monotonic() - start > job["timeout"]:
                timed_out = True
                os.kill(pid, signal.SIGKILL)
                _, status = os.waitpid(pid, 0)
                break
            time.sleep(0.01)
        code = os.waitstatus_to_exitcode(status)
        reply = {"code": code, "timed_out": timed_out, "seconds": time.monotonic() - start}
        print(json.dumps(reply), flush=True)


if __name__ == "__main__":
    serve(sys.argv[1:])
