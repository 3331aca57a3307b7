"""Load test of ``cifarlab serve``: N concurrent clients send a fixed number of requests on
kept-alive connections; requests/s, images/s, p50/p99 latency, errors, and the server's
memory.

    python benchmarks/serve_load.py runs/fast                       # starts the server itself
    python benchmarks/serve_load.py --url http://127.0.0.1:8000     # a server already running
    python benchmarks/serve_load.py runs/simple --clients 1,8,32 --requests 3000
    python benchmarks/serve_load.py runs/fast --images 64 --requests 60  # 64-image requests
    python benchmarks/serve_load.py runs/simple --serve-args="--no-batching"

The client is a few lines of asyncio on raw sockets (HTTP/1.1, Content-Length): a client
library would spend more of the two cores than the server does. A request is one image as the
raw body (``--images 1``) or a multipart form of N images; the image is a real CIFAR-10 test
image saved as PNG when the data is here ($CIFARLAB_DATA), else a generated one.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import os
import re
import statistics
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np


@dataclass
class LoadResult:
    clients: int
    requests: int
    ok: int = 0
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)
    images_per_request: int = 1

    @property
    def rps(self) -> float:
        return self.ok / self.seconds if self.seconds else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        return float(np.percentile(np.array(self.latencies) * 1000, q))

    def row(self) -> dict:
        return {
            "clients": self.clients,
            "requests": self.requests,
            "ok": self.ok,
            "errors": self.errors,
            "seconds": round(self.seconds, 3),
            "req_per_s": round(self.rps, 1),
            "images_per_s": round(self.rps * self.images_per_request, 1),
            "p50_ms": round(self.pct(50), 2),
            "p99_ms": round(self.pct(99), 2),
        }


def request_bytes(
    host: str, port: int, images: list[bytes], path: str = "/v1/predict", token: str | None = None
) -> bytes:
    """One POST: a single image as the raw body, or several as a multipart form."""
    auth = f"Authorization: Bearer {token}\r\n" if token else ""
    if len(images) == 1:
        body, ctype = images[0], "image/png"
    else:
        b = uuid.uuid4().hex
        parts = [
            f'--{b}\r\nContent-Disposition: form-data; name="file"; filename="{i}.png"\r\n'
            f"Content-Type: image/png\r\n\r\n".encode()
            + im
            + b"\r\n"
            for i, im in enumerate(images)
        ]
        body, ctype = (
            b"".join(parts) + f"--{b}--\r\n".encode(),
            f"multipart/form-data; boundary={b}",
        )
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n{auth}\r\n"
    )
    return head.encode() + body


async def _client(
    host: str, port: int, payload: bytes, counter: list[int], total: int, result: LoadResult
) -> None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        while counter[0] < total:
            counter[0] += 1
            t = time.perf_counter()
            writer.write(payload)
            head = await reader.readuntil(b"\r\n\r\n")
            m = re.search(rb"content-length:\s*(\d+)", head, re.I)
            body = await reader.readexactly(int(m.group(1))) if m else b""
            status = int(head.split(b" ", 2)[1])
            if status == 200:
                result.ok += 1
                result.latencies.append(time.perf_counter() - t)
            else:
                result.errors += 1
                result.first_error = result.first_error or f"{status} {body[:200]!r}"
            if b"connection: close" in head.lower():
                writer.close()
                reader, writer = await asyncio.open_connection(host, port)
    except (OSError, asyncio.IncompleteReadError) as e:
        result.errors += 1
        result.first_error = result.first_error or repr(e)
    finally:
        writer.close()


def load(
    host: str,
    port: int,
    image: bytes | list[bytes],
    *,
    clients: int,
    requests: int,
    token: str | None = None,
) -> LoadResult:
    """``clients`` connections send ``requests`` requests in all, as fast as answers come."""
    images = image if isinstance(image, list) else [image]
    payload = request_bytes(host, port, images, token=token)
    result = LoadResult(clients, requests, images_per_request=len(images))

    async def main() -> None:
        counter = [0]
        t = time.perf_counter()
        await asyncio.gather(
            *(_client(host, port, payload, counter, requests, result) for _ in range(clients))
        )
        result.seconds = time.perf_counter() - t

    asyncio.run(main())
    return result


def cifar_png(index: int = 0) -> bytes:
    """A CIFAR-10 test image as PNG (a generated picture without the data)."""
    from PIL import Image

    try:
        from cifarlab import load_dataset

        root = (
            os.environ.get("CIFARLAB_DATA") or Path(__file__).resolve().parents[2] / "shared/data"
        )
        arr = load_dataset("cifar10", root, val_size=0).test.images[index].numpy()
        arr = arr.transpose(1, 2, 0) if arr.shape[0] == 3 else arr
    except Exception:  # noqa: BLE001 - no data here: a generated picture
        arr = np.random.default_rng(index).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def rss_mb(pid: int) -> float:
    total = 0
    for p in [pid, *_children(pid)]:
        try:
            text = Path(f"/proc/{p}/status").read_text()
            total += int(re.search(r"VmRSS:\s+(\d+)", text).group(1))
        except (OSError, AttributeError):
            pass
    return total / 1024


def _children(pid: int) -> list[int]:
    try:
        kids = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
    except OSError:
        return []
    return [int(k) for k in kids] + [g for k in kids for g in _children(int(k))]


def start_server(run: str, extra: list[str]) -> tuple[subprocess.Popen, str, int]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "cifarlab", "serve", run, "--port", "0", *extra],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        sys.stderr.write(line)
        m = re.search(r"cifarlab serve: http://([\d.]+):(\d+)/", line)
        if m:
            return proc, m.group(1), int(m.group(2))
    raise SystemExit("the server did not start")


def bare_rate(run: str, backend: str, tta: int | None, batch: int, repeats: int) -> dict:
    """Images/s of the served model itself (the backend the server would choose, the same
    TTA) on batches of ``batch`` decoded images: no HTTP, no decoding; median of ``repeats``
    timings of about 3 s."""
    from cifarlab.serve.engine import load_served

    served = load_served(run, backend=backend, tta=tta)
    x = np.random.default_rng(0).integers(0, 256, (batch, 32, 32, 3), dtype=np.uint8)
    for _ in range(3):
        served.backend(x)
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while (elapsed := time.perf_counter() - t0) < 3.0:
            served.backend(x)
            n += 1
        rates.append(n * batch / elapsed)
    return {
        "bare": True,
        "run": run,
        "backend": served.backend_name,
        "tta": served.run.tta,
        "batch": batch,
        "images_per_s": round(statistics.median(rates), 1),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("run", nargs="?", help="a run folder: start `cifarlab serve RUN` for the test")
    ap.add_argument("--url", help="a server already running (instead of RUN)")
    ap.add_argument("--serve-args", default="", help="more options for cifarlab serve")
    ap.add_argument("--backend", default="auto", help="cifarlab serve --backend (default: auto)")
    ap.add_argument("--tta", type=int, help="cifarlab serve --tta (default: the run's)")
    ap.add_argument(
        "--bare",
        action="store_true",
        help="also time the same model, backend "
        "and TTA without the server, on batches of --images (in this process)",
    )
    ap.add_argument("--clients", default="1,8,32", help="concurrent clients, comma-separated")
    ap.add_argument("--requests", type=int, default=2000, help="requests per client count")
    ap.add_argument("--images", type=int, default=1, help="images per request (1: raw body)")
    ap.add_argument("--repeats", type=int, default=3, help="runs of each; the median is shown")
    ap.add_argument("--token", default=os.environ.get("CIFARLAB_SERVE_TOKEN"))
    ap.add_argument("--json", type=Path, help="append the rows to this JSON-lines file")
    args = ap.parse_args()
    if bool(args.run) == bool(args.url):
        ap.error("give RUN or --url")
    proc = None
    serve_args = ["--backend", args.backend, *args.serve_args.split()]
    if args.tta is not None:
        serve_args += ["--tta", str(args.tta)]
    bare = (
        bare_rate(args.run, args.backend, args.tta, args.images, args.repeats)
        if (args.bare and args.run)
        else None
    )
    if bare is not None:
        print(json.dumps(bare), flush=True)
        if args.json:
            with open(args.json, "a") as f:
                f.write(json.dumps(bare) + "\n")
    if args.run:
        proc, host, port = start_server(args.run, serve_args)
    else:
        m = re.match(r"http://([^:/]+):(\d+)", args.url)
        if not m:
            ap.error("--url must be http://HOST:PORT")
        host, port = m.group(1), int(m.group(2))
    images = [cifar_png(i) for i in range(args.images)]
    try:
        load(
            host, port, images, clients=4, requests=max(50, args.requests // 10), token=args.token
        )  # warm-up
        rss_start = round(rss_mb(proc.pid), 1) if proc is not None else None
        for clients in (int(c) for c in args.clients.split(",")):
            runs = [
                load(host, port, images, clients=clients, requests=args.requests, token=args.token)
                for _ in range(args.repeats)
            ]
            rows = [r.row() for r in runs]
            med = {k: statistics.median(r[k] for r in rows) for k in rows[0]}
            med["errors"] = sum(r["errors"] for r in rows)
            if proc is not None:
                med["server_rss_mb"] = round(rss_mb(proc.pid), 1)
                med["server_rss_mb_after_warmup"] = rss_start
            med.update(
                images_per_request=args.images, serve_args=args.serve_args, run=args.run or args.url
            )
            print(json.dumps(med), flush=True)
            if runs[0].first_error:
                print(f"  first error: {runs[0].first_error}", file=sys.stderr)
            if args.json:
                with open(args.json, "a") as f:
                    f.write(json.dumps(med) + "\n")
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(30)


if __name__ == "__main__":
    main()
