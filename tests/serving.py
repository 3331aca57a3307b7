"""A real ``cifarlab serve`` process for the tests, and a small HTTP client (the standard
library's, so the tests check the server and not a client library)."""

from __future__ import annotations

import http.client
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from typing import Any

URL_LINE = re.compile(r"cifarlab serve: (http://\S+?)/?\s")


class Server:
    """``cifarlab serve ARGS`` on 127.0.0.1 and a free port; ``url`` once it listens."""

    def __init__(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120):
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "cifarlab", "serve", *args, "--port", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "PYTHONWARNINGS": "ignore", **(env or {})},
        )
        self.lines: list[str] = []
        self.err: list[str] = []
        found = threading.Event()
        self.url = ""

        def read_out() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                m = URL_LINE.search(line)
                if m and not found.is_set():
                    self.url = m.group(1).rstrip("/")
                    found.set()
            found.set()

        def read_err() -> None:
            assert self.proc.stderr is not None
            for line in self.proc.stderr:
                self.err.append(line)

        threading.Thread(target=read_out, daemon=True).start()
        threading.Thread(target=read_err, daemon=True).start()
        if not found.wait(timeout) or not self.url:
            self.stop()
            raise RuntimeError(f"the server did not start: {''.join(self.lines + self.err)}")
        self.host, port = self.url.removeprefix("http://").rsplit(":", 1)
        self.port = int(port)

    def conn(self, timeout: float = 60) -> http.client.HTTPConnection:
        return http.client.HTTPConnection("127.0.0.1", self.port, timeout=timeout)

    def request(
        self,
        method: str,
        path: str,
        body: bytes | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any] | str, dict[str, str]]:
        """(status, JSON (or text), headers) of one request on a new connection."""
        c = self.conn()
        try:
            c.request(method, path, body=body, headers=headers or {})
            r = c.getresponse()
            data = r.read()
            ctype = r.getheader("content-type", "")
            payload: Any = json.loads(data) if "json" in ctype else data.decode()
            return r.status, payload, dict(r.getheaders())
        finally:
            c.close()

    def predict(
        self,
        files: list[tuple[str, bytes]],
        query: str = "",
        field: str = "file",
        headers: dict[str, str] | None = None,
    ) -> tuple[int, Any]:
        body, ctype = multipart(files, field)
        status, payload, _ = self.request(
            "POST", "/v1/predict" + query, body, {"Content-Type": ctype, **(headers or {})}
        )
        return status, payload

    def interrupt(self, timeout: float = 30) -> int:
        """Ctrl-C (SIGINT), as a terminal sends it; the exit code."""
        self.proc.send_signal(signal.SIGINT)
        return self.proc.wait(timeout)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def output(self) -> str:
        time.sleep(0.2)  # the reader threads catch up
        return "".join(self.lines) + "".join(self.err)


def multipart(files: list[tuple[str, bytes]], field: str = "file") -> tuple[bytes, str]:
    """A multipart/form-data body with one part per file, all named ``field``."""
    boundary = uuid.uuid4().hex
    out = bytearray()
    for name, data in files:
        out += (
            f'--{boundary}\r\nContent-Disposition: form-data; name="{field}"; '
            f'filename="{name}"\r\nContent-Type: application/octet-stream\r\n\r\n'
        ).encode()
        out += data + b"\r\n"
    out += f"--{boundary}--\r\n".encode()
    return bytes(out), f"multipart/form-data; boundary={boundary}"
