"""``cifarlab serve`` under attack: Debian's ``slowhttptest`` (slow headers, slow body, slow
read) and ``wrk`` (a flood), plus raw-socket attacks of our own (idle connections, huge
headers, 16-bit images), each for a bounded time, while a prober sends one good request every
0.2 s on a new connection from another address (127.0.0.2). Per phase: the good requests'
latency (p50, p99, worst) and failures, the server's peak RSS, and what the attack reported.

    apt-get install slowhttptest wrk          # Debian's packages
    python benchmarks/serve_attack.py runs/simple-cnn --seconds 30
    python benchmarks/serve_attack.py runs/simple-cnn --phases slow-headers,wrk --json out.jsonl

Everything runs on this machine against 127.0.0.1: the attack, the prober and the server share
its cores, so a latency here is an upper bound of what a remote attack would cause.
"""

from __future__ import annotations

import argparse
import io
import json
import re
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from serve_load import cifar_png, request_bytes, rss_mb, start_server  # noqa: E402


class Repeating:
    """``tick`` every ``every`` seconds in a thread of its own, for the ``with`` block."""

    def __init__(self, every: float) -> None:
        self.every = every
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def tick(self) -> None:
        raise NotImplementedError

    def _run(self) -> None:
        while not self.stop.is_set():
            self.tick()
            self.stop.wait(self.every)

    def __enter__(self) -> Repeating:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join()


class Prober(Repeating):
    """One good predict request every ``every`` seconds on a new connection."""

    def __init__(self, host: str, port: int, every: float = 0.2) -> None:
        super().__init__(every)
        self.host, self.port = host, port
        self.payload = request_bytes(host, port, [cifar_png(0)])
        self.latencies: list[float] = []
        self.failures: list[str] = []

    def tick(self) -> None:
        t = time.perf_counter()
        try:
            # from 127.0.0.2: another client address than the attack's (the server's caps
            # per client address keep the attacker to its share)
            source = ("127.0.0.2", 0) if self.host == "127.0.0.1" else None
            with socket.create_connection(
                (self.host, self.port), timeout=10, source_address=source
            ) as s:
                s.sendall(self.payload)
                data = b""
                while b"\r\n\r\n" not in data:
                    chunk = s.recv(65536)
                    if not chunk:
                        break
                    data += chunk
            if not data.startswith(b"HTTP/1.1 200"):
                self.failures.append(data[:120].decode("latin-1"))
                return
            self.latencies.append(time.perf_counter() - t)
        except OSError as e:
            self.failures.append(repr(e))

    def summary(self) -> dict:
        ms = np.array(self.latencies) * 1000 if self.latencies else np.array([np.nan])
        return {
            "good": len(self.latencies),
            "failed": len(self.failures),
            "first_failure": self.failures[0] if self.failures else "",
            "p50_ms": round(float(np.percentile(ms, 50)), 1),
            "p99_ms": round(float(np.percentile(ms, 99)), 1),
            "max_ms": round(float(ms.max()), 1),
        }


class PeakRss(Repeating):
    """The server's peak RSS (its children included), sampled every 10 ms."""

    def __init__(self, pid: int) -> None:
        super().__init__(0.01)
        self.pid, self.peak = pid, rss_mb(pid)

    def tick(self) -> None:
        self.peak = max(self.peak, rss_mb(self.pid))


def tool(cmd: list[str], seconds: float) -> str:
    """Run an attack tool for about ``seconds``; the last lines it printed."""
    if shutil.which(cmd[0]) is None:
        return f"{cmd[0]} is not installed (apt-get install {cmd[0]})"
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60)
    text = re.sub(r"\x1b\[[0-9;]*m", "", p.stdout + p.stderr)
    return text


def slowhttptest(mode: str, url: str, seconds: float) -> Callable[[], str]:
    common = ["-c", "1000", "-r", "200", "-l", str(int(seconds)), "-p", "3"]
    args = {
        "slow-headers": ["-H", "-i", "5", "-x", "24", "-u", f"{url}/healthz"],
        "slow-body": ["-B", "-i", "5", "-s", "8192", "-t", "POST", "-u", f"{url}/v1/predict"],
        "slow-read": ["-X", "-w", "10", "-y", "20", "-n", "3", "-z", "32", "-k", "3"]
        + ["-u", f"{url}/"],
    }[mode]

    def run() -> str:
        out = tool(["slowhttptest", *args, *common], seconds)
        last = [line.strip() for line in out.splitlines() if "service available" in line]
        closed = [line.strip() for line in out.splitlines() if line.strip().startswith("closed:")]
        return "; ".join(x for x in (closed[-1:] + last[-1:]) if x) or out[-300:]

    return run


def wrk(url: str, seconds: float, connections: int) -> Callable[[], str]:
    def run() -> str:
        cmd = ["wrk", "-t2", f"-c{connections}", f"-d{int(seconds)}s", f"{url}/healthz"]
        out = tool(cmd, seconds)
        keep = [x.strip() for x in out.splitlines() if "Requests/sec" in x or "errors" in x]
        return "; ".join(keep) or out[-300:]

    return run


def idle_flood(host: str, port: int, seconds: float, n: int = 2000) -> Callable[[], str]:
    """``n`` connections that send nothing, reopened as the server closes them."""

    def run() -> str:
        socks: list[socket.socket] = []
        opened = 0
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            socks = [s for s in socks if _alive(s)]
            while len(socks) < n and time.monotonic() < end:
                try:
                    socks.append(socket.create_connection((host, port), timeout=2))
                    opened += 1
                except OSError:
                    break
            time.sleep(0.2)
        for s in socks:
            s.close()
        return f"{opened} connections opened to keep up to {n} idle"

    return run


def _alive(s: socket.socket) -> bool:
    s.setblocking(False)
    try:
        data = s.recv(1)
        alive = data != b""
    except BlockingIOError:
        alive = True
    except OSError:
        alive = False
    if not alive:
        s.close()
    return alive


def header_bombs(host: str, port: int, seconds: float) -> Callable[[], str]:
    """Clients that each send a 96 MB header line, one after the other."""

    def run() -> str:
        answers: dict[str, int] = {}
        end = time.monotonic() + seconds
        chunk = b"a" * (1 << 20)
        while time.monotonic() < end:
            with socket.create_connection((host, port), timeout=10) as s:
                try:
                    s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: ")
                    for _ in range(96):
                        s.sendall(chunk)
                except OSError:
                    pass
                try:
                    got = s.recv(200).split(b"\r\n")[0].decode("latin-1")
                except OSError as e:
                    got = type(e).__name__
                answers[got] = answers.get(got, 0) + 1
        return "; ".join(f"{k}: {v}" for k, v in answers.items())

    return run


def deep_images(host: str, port: int, seconds: float) -> Callable[[], str]:
    """Two clients at a time, each sending a 16-bit PNG of 8,000×8,000 (64 MP: 122 KB that
    decode at a peak of 1.75 GB before issue 23, 0.45 GB after) again and again."""
    from PIL import Image

    buf = io.BytesIO()
    Image.fromarray(np.zeros((8000, 8000), np.uint16)).save(buf, "PNG")
    payload = request_bytes(host, port, [buf.getvalue()])
    counts: dict[str, int] = {}
    lock = threading.Lock()

    def client(end: float) -> None:
        while time.monotonic() < end:
            try:
                with socket.create_connection((host, port), timeout=60) as s:
                    s.sendall(payload)
                    got = s.recv(200).split(b"\r\n")[0].decode("latin-1")
            except OSError as e:
                got = type(e).__name__
            with lock:
                counts[got] = counts.get(got, 0) + 1

    def run() -> str:
        end = time.monotonic() + seconds
        ts = [threading.Thread(target=client, args=(end,)) for _ in range(2)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        return f"{len(buf.getvalue()) // 1024} KB PNG; " + "; ".join(
            f"{k}: {v}" for k, v in counts.items()
        )

    return run


PHASES = (
    "none",
    "slow-headers",
    "slow-body",
    "slow-read",
    "wrk-32",
    "wrk-256",
    "idle-flood",
    "header-bombs",
    "deep-images",
)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", help="a run folder: `cifarlab serve RUN` is started for the test")
    ap.add_argument("--serve-args", default="", help="more options for cifarlab serve")
    ap.add_argument("--seconds", type=float, default=30, help="length of each attack")
    ap.add_argument("--phases", default=",".join(PHASES), help="comma-separated, in order")
    ap.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    args = ap.parse_args()

    proc, host, port = start_server(args.run, args.serve_args.split())
    url = f"http://{host}:{port}"
    rows = []
    try:
        time.sleep(1)
        for phase in args.phases.split(","):
            attack = {
                "none": lambda: (time.sleep(min(args.seconds, 10)), "")[1],
                "slow-headers": slowhttptest("slow-headers", url, args.seconds),
                "slow-body": slowhttptest("slow-body", url, args.seconds),
                "slow-read": slowhttptest("slow-read", url, args.seconds),
                "wrk-32": wrk(url, args.seconds, 32),
                "wrk-256": wrk(url, args.seconds, 256),
                "idle-flood": idle_flood(host, port, args.seconds),
                "header-bombs": header_bombs(host, port, args.seconds),
                "deep-images": deep_images(host, port, args.seconds),
            }[phase]
            before = rss_mb(proc.pid)
            with PeakRss(proc.pid) as peak, Prober(host, port) as probe:
                said = attack()
            row = {
                "phase": phase,
                "seconds": args.seconds,
                **probe.summary(),
                "rss_before_mb": round(before, 1),
                "rss_peak_mb": round(peak.peak, 1),
                "attack": said,
            }
            rows.append(row)
            print(json.dumps(row), flush=True)
            time.sleep(2)  # the server closes what the attack left
        if proc.poll() is not None:
            raise SystemExit("the server died during the attacks")
    finally:
        proc.terminate()
        proc.wait(30)
    print()
    print("| attack | good | failed | p50 ms | p99 ms | worst ms | peak RSS MB | the attack |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['phase']} | {r['good']} | {r['failed']} | {r['p50_ms']} | {r['p99_ms']} | "
            f"{r['max_ms']} | {r['rss_peak_mb']} | {r['attack'][:120]} |"
        )
    if args.json:
        with args.json.open("a") as f:
            for r in rows:
                f.write(json.dumps(r) + "\n")


if __name__ == "__main__":
    main()
