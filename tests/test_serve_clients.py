"""``cifarlab serve`` against hostile *clients*: raw sockets that speak HTTP badly or slowly
on purpose, against a real server process on 127.0.0.1 with small limits (so that each attack
is bounded in time). During each attack a good request is answered within a second; every
error a client causes is the JSON ``{"error", "status"}``; no traceback is ever logged.
(``benchmarks/serve_attack.py`` runs Debian's slowhttptest and wrk for longer.)
"""

from __future__ import annotations

import io
import json
import os
import signal
import socket
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakedata
import hostile
from serving import Server, multipart

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow  # server processes: seconds each

LIMITS = (
    "--header-timeout-s",
    "1.5",
    "--idle-timeout-s",
    "1",
    "--max-connections",
    "60",
    "--max-connections-per-client",
    "40",
    "--max-headers",
    "50",
    "--max-header-kb",
    "16",
    "--max-request-line-kb",
    "4",
    "--max-upload-mb",
    "1",
    "--max-pending-mb",
    "150",
    "--max-request-megapixels",
    "20",
    "--grace-s",
    "1.5",
    "--body-timeout-s",
    "3",
)


@pytest.fixture(scope="module")
def small_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of simple_cnn on a tiny fake CIFAR-10 (what is served does not matter here)."""
    from cifarlab import TrainConfig, train

    root = tmp_path_factory.mktemp("clients-data")
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mp.setenv("CIFARLAB_CACHE", str(root / "cache"))
        cfg = TrainConfig(
            root=str(root), epochs=1, val_size=20, model="simple_cnn", device="cpu", tta=0
        )
        return train(cfg, out=tmp_path_factory.mktemp("clients") / "cnn", progress=False)


@pytest.fixture(scope="module")
def server(small_run: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    s = Server(
        str(small_run),
        "--backend",
        "torch",
        *LIMITS,
        env={"CIFARLAB_CACHE": str(tmp_path_factory.mktemp("clients-cache"))},
    )
    yield s
    s.stop()
    out = s.output()
    assert "Traceback" not in out and "Exception" not in out and "RuntimeError" not in out, out


def png(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def connect(server: Server) -> socket.socket:
    return socket.create_connection(("127.0.0.1", server.port), timeout=10)


def read_all(s: socket.socket, timeout: float = 10) -> bytes:
    """Everything the server sends until it closes (or ``timeout`` passes)."""
    s.settimeout(timeout)
    out = b""
    end = time.monotonic() + timeout
    try:
        while time.monotonic() < end:
            d = s.recv(65536)
            if not d:
                break
            out += d
    except (TimeoutError, ConnectionResetError):
        pass
    return out


def answers(raw: bytes) -> list[tuple[int, bytes]]:
    """(status, body) of each answer in a stream of HTTP/1.1 answers (Content-Length bodies)."""
    out = []
    while raw:
        head, _, rest = raw.partition(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split()[1])
        length = next(
            (int(x.split(b":")[1]) for x in lines[1:] if x.lower().startswith(b"content-length")),
            0,
        )
        out.append((status, rest[:length]))
        raw = rest[length:]
    return out


def json_error(raw: bytes, status: int) -> str:
    """The error message of a single JSON error answer with this status."""
    (got, body), *_ = answers(raw)
    assert got == status, raw[:300]
    payload = json.loads(body)
    assert payload["status"] == status and payload["error"], payload
    assert b"content-type: application/json" in raw.lower()
    return payload["error"]


def good_within(server: Server, seconds: float = 1.0) -> float:
    """A good predict request on a new connection: answered 200 within ``seconds``."""
    t = time.monotonic()
    status, payload = server.predict([("ok.png", png())])
    took = time.monotonic() - t
    assert status == 200, payload
    assert took < seconds, f"a good request took {took:.2f} s during the attack"
    return took


def during(server: Server, attack: Callable[[], object], settle: float = 0.3) -> object:
    """Run ``attack`` in a thread; while it runs, good requests are answered within 1 s."""
    result: list[object] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            result.append(attack())
        except BaseException as e:  # noqa: BLE001 - reported below
            errors.append(e)

    t = threading.Thread(target=run)
    t.start()
    time.sleep(settle)
    for _ in range(3):
        good_within(server)
    t.join(60)
    assert not t.is_alive()
    if errors:
        raise errors[0]
    return result[0]


def send_slowly(s: socket.socket, data: bytes, piece: int) -> None:
    try:
        for i in range(0, len(data), piece):
            s.sendall(data[i : i + piece])
    except OSError:  # the server answered and closed: the rest is not wanted
        pass


@pytest.mark.alone  # good requests are timed: no other test beside them
def test_attacks_on_the_head_leave_the_server_responsive(server: Server) -> None:
    """A 4 MB header sent in pieces is 431 once 16 KB have come (the event loop never holds
    more); 51 headers 431; a 5 KB request line 414; a slowloris client (a header line every
    0.3 s) 408 after 1.5 s. Good requests meanwhile: within a second."""

    def huge_header() -> str:
        with connect(server) as s:
            head = b"GET /healthz HTTP/1.1\r\nHost: x\r\nX-Big: " + b"a" * (4 << 20)
            threading.Thread(target=send_slowly, args=(s, head, 8192), daemon=True).start()
            return json_error(read_all(s), 431)

    assert "--max-header-kb" in during(server, huge_header)

    def many_headers() -> str:
        with connect(server) as s:
            fields = b"".join(b"X-%d: 1\r\n" % i for i in range(51))
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + fields + b"\r\n")
            return json_error(read_all(s), 431)

    assert "--max-headers" in during(server, many_headers, settle=0)

    with connect(server) as s:
        s.sendall(b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n")
        assert "--max-request-line-kb" in json_error(read_all(s), 414)

    def slowloris() -> tuple[str, float]:
        with connect(server) as s:
            t = time.monotonic()
            s.sendall(b"GET /healthz HTTP/1.1\r\n")
            s.settimeout(0.3)
            got = b""
            for i in range(30):
                try:
                    s.sendall(b"X-%d: 1\r\n" % i)
                    got = s.recv(65536)
                    if got:
                        break
                except TimeoutError:
                    continue
                except OSError:
                    break
            got += read_all(s, 5)
            return json_error(got, 408), time.monotonic() - t

    message, took = during(server, slowloris)  # type: ignore[misc]
    assert "--header-timeout-s" in message
    assert 1.4 < took < 4, took


@pytest.mark.alone  # good requests are timed: no other test beside them
def test_connections_are_bounded_and_idle_ones_make_room(server: Server) -> None:
    """80 connections that send nothing (more than the 40 per client and the 60 in all):
    the idlest are closed to make room, a good request still gets in within a second, and
    the rest are closed after the 1 s idle timeout. 40 connections each in the middle of an
    upload (busy: none can be closed for room): the 41st is answered a JSON 503."""
    idle = [connect(server) for _ in range(80)]
    try:
        good_within(server)
        time.sleep(1.6)  # past the idle timeout
        closed = 0
        for s in idle:
            s.settimeout(2)
            try:
                closed += s.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                closed += 1
        assert closed == 80
    finally:
        for s in idle:
            s.close()

    busy = []
    try:
        for _ in range(40):
            s = connect(server)
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000\r\n\r\n" + b"x" * 10
            )
            busy.append(s)
        time.sleep(0.3)
        with connect(server) as s:
            s.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert "--max-connections-per-client" in json_error(read_all(s), 503)
    finally:
        for s in busy:
            s.close()
    time.sleep(0.3)
    good_within(server)


@pytest.mark.alone  # good requests are timed: no other test beside them
def test_a_client_that_does_not_read_is_dropped(server: Server) -> None:
    """Slow read: 200 pipelined requests for the page, a tiny receive buffer and nothing
    read; the answers pile up past the transport's high-water mark, and after
    --body-timeout-s (3 s) the connection is dropped. Good requests meanwhile: within 1 s."""
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", server.port))
    try:
        s.sendall(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n" * 200)
        t = time.monotonic()
        good_within(server)
        time.sleep(4)
        good_within(server)
        got = read_all(s, 10)
        assert got.count(b"HTTP/1.1 200") < 200  # dropped before the last answers
        assert time.monotonic() - t < 12
    finally:
        s.close()


def test_trailers_are_refused_and_bounded(server: Server) -> None:
    """A chunked body followed by trailer fields: 400; a trailer line that never ends: 431
    once 16 KB (--max-header-kb) have come. Both JSON."""
    head = (
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Transfer-Encoding: chunked\r\n\r\n"
    )
    with connect(server) as s:
        s.sendall(head + b"1\r\na\r\n0\r\nX-Trailer: 1\r\n\r\n")
        assert "trailer" in json_error(read_all(s), 400)
    with connect(server) as s:
        s.sendall(head + b"1\r\na\r\n0\r\nX-Trailer: ")
        send_slowly(s, b"b" * (1 << 20), 4096)
        assert "--max-header-kb" in json_error(read_all(s), 431)


def test_an_early_answer_reaches_a_client_still_uploading(server: Server) -> None:
    """A body declared over --max-upload-mb is refused (413) before it is read; the client,
    still sending 2 MB over 2 s (past the 1 s idle timeout), then reads the JSON answer: the
    connection is not reset under it."""
    with connect(server) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Content-Length: 5000000\r\n\r\n"
        )
        for _ in range(20):
            s.sendall(bytes(100_000))
            time.sleep(0.1)
        assert "--max-upload-mb" in json_error(read_all(s), 413)


def test_pipelined_requests_and_early_closes(server: Server) -> None:
    """Two requests in one write then a close, many times: no traceback. Two requests then a
    garbage line: both answered 200 in order, then a JSON 400, then the close."""
    get = b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
    body, ctype = multipart([("a.png", png())])
    post = (
        f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode() + body
    for i in range(30):
        with connect(server) as s:
            s.sendall((get + post + get) if i % 2 else (post + get + post))
    time.sleep(0.5)
    with connect(server) as s:
        s.sendall(get + post + b"garbage\r\n\r\n")
        got = answers(read_all(s))
    assert [status for status, _ in got] == [200, 200, 400], got
    assert json.loads(got[1][1])["results"][0]["label"]
    assert json.loads(got[2][1])["status"] == 400
    out = server.output()
    assert "Traceback" not in out and "RuntimeError" not in out, out[-3000:]


def test_every_error_a_client_causes_is_json(server: Server) -> None:
    """Errors found before the app (a bad request line, a bad length, no HTTP version, a
    broken chunk) are the app's JSON, and a request without a version is not answered 200."""
    for raw in (
        b"garbage\r\n\r\n",
        b"GET /healthz\r\n\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"GET /healthz HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\nTransfer-Encoding: "
        b"chunked\r\n\r\n",
        b"GET /healthz HTTP/9.9\r\nHost: x\r\n\r\n",
    ):
        with connect(server) as s:
            s.sendall(raw)
            got = read_all(s)
        status, body = answers(got)[0]
        assert 400 <= status < 500 or status == 505, (raw, got[:300])
        assert json.loads(body)["status"] == status, (raw, got[:300])


def test_head_and_redirects(server: Server) -> None:
    """HEAD is answered as GET without the body on every GET route; no redirect is made
    (a trailing slash is 404: a Location would come from the client's Host header)."""
    for path in ("/", "/healthz", "/v1/models", "/openapi.json", "/docs"):
        status, _, h = server.request("GET", path)
        with connect(server) as s:
            s.sendall(f"HEAD {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n".encode())
            raw = read_all(s)
        assert raw.startswith(b"HTTP/1.1 200"), (path, raw[:200])
        assert raw.endswith(b"\r\n\r\n"), (path, raw[-200:])  # no body
        assert f"content-length: {h['content-length']}".encode() in raw.lower()
    with connect(server) as s:
        s.sendall(b"GET /v1/predict/ HTTP/1.1\r\nHost: evil.example\r\n\r\n")
        raw = read_all(s, 2)
    assert raw.startswith(b"HTTP/1.1 404") and b"evil" not in raw, raw


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


def image_bytes(arr: np.ndarray, fmt: str, **options: object) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, fmt, **options)
    return buf.getvalue()


def smooth(w: int, h: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    arr = (np.stack([np.sin(xx / 40), np.cos(yy / 55), np.sin((xx + yy) / 70)], -1) + 1) * 127
    return arr.astype(np.uint8)


@pytest.mark.alone  # good requests are timed: no other test beside them
@pytest.mark.skipif(not Path("/proc/self/status").exists(), reason="needs /proc")
def test_one_memory_budget_for_bodies_and_decoding(server: Server) -> None:
    """Two clients send 16-bit PNGs of 4,200×4,200 again and again (141 MB each to decode,
    from the header; big images take turns on one thread) while JPEGs of 2,500×2,500 (31 MB
    each) arrive six at a time: under --max-pending-mb 150 a PNG and a JPEG never decode
    together, the second to come is answered 503 (busy), none fails otherwise; a good request
    is answered within a second throughout; the server's memory grows by less than the budget
    plus 60 MB; once the PNGs stop, a JPEG is answered 200."""
    deep = image_bytes(np.zeros((4200, 4200), np.uint16), "PNG")
    jpeg = image_bytes(smooth(2500, 2500), "JPEG", quality=60)
    assert len(jpeg) < 1 << 20 and len(deep) < 1 << 20
    before = rss_kb(server.proc.pid)
    peak = before
    stop = threading.Event()

    def watch() -> None:
        nonlocal peak
        while not stop.is_set():
            peak = max(peak, rss_kb(server.proc.pid))
            time.sleep(0.002)

    deep_got: list[tuple[int, dict]] = []

    def deep_client() -> None:
        while not stop.is_set():
            deep_got.append(server.predict([("deep.png", deep)]))

    watcher = threading.Thread(target=watch)
    watcher.start()
    pool = ThreadPoolExecutor(14)
    try:
        deep_runs = [pool.submit(deep_client) for _ in range(2)]
        time.sleep(0.3)
        got: list[tuple[int, dict]] = []
        end = time.monotonic() + 10
        while time.monotonic() < end and not any(s == 503 for s, _ in got + deep_got):
            jpegs = [pool.submit(server.predict, [(f"{i}.jpg", jpeg)]) for i in range(6)]
            good_within(server)
            got += [f.result() for f in jpegs]
    finally:
        stop.set()
        pool.shutdown(wait=True)
        watcher.join()
    for f in deep_runs:
        f.result()
    statuses = [status for status, _ in got + deep_got]
    # whichever comes second of a PNG and a JPEG is refused: 141 + 31 MB > 150 MB
    assert set(statuses) <= {200, 503} and 503 in statuses, statuses
    for status, payload in got + deep_got:
        if status == 503:
            assert "--max-pending-mb" in payload["error"]
    grew_mb = (peak - before) / 1024
    assert grew_mb < 150 + 60, grew_mb
    assert server.predict([("after.jpg", jpeg)])[0] == 200  # the budget came back


def test_an_image_bigger_than_the_whole_budget_is_its_own_error(server: Server) -> None:
    """A 32-bit float TIFF of 3,500×3,500 (159 MB to decode) under a 150 MB budget: refused
    from its header as that file's error (422), not a 503 that no retry could cure."""
    data = image_bytes(np.zeros((3500, 3500), np.float32), "TIFF", compression="tiff_deflate")
    status, payload = server.predict([("deep.tif", data)])
    assert status == 422, payload
    assert "--max-pending-mb" in payload["error"] and "deep.tif" in payload["error"]


def test_a_request_decodes_at_most_its_pixel_budget(server: Server) -> None:
    """Two images whose headers claim 10.2 MP each: the first is decoded, the second refused
    from its header, as together they pass the request's 20 MP."""
    claim = hostile.png_claiming(3200, 3200)
    status, payload = server.predict([("a.png", claim), ("b.png", claim)])
    assert status == 200, payload
    a, b = payload["results"]
    assert "label" in a
    assert "--max-request-megapixels" in b["error"]


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_stop_lets_requests_finish_then_answers_503(
    small_run: Path, tmp_path: Path, sig: signal.Signals
) -> None:
    """SIGTERM (or Ctrl-C) while two uploads are half sent: the one whose body comes within
    the grace period (1.5 s) is answered 200, the other a JSON 503; an idle connection is
    closed at once; new connections are refused; exit code 0, no traceback; nothing was
    written into TMPDIR or HOME."""
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    s = Server(
        str(small_run),
        "--backend",
        "torch",
        *LIMITS,
        env={"TMPDIR": str(tmp), "HOME": str(home), "CIFARLAB_CACHE": str(tmp_path / "cache")},
    )
    try:
        body, ctype = multipart([("a.png", png())])
        head = (
            f"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: {ctype}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n"
        ).encode()
        finishing, stalled, idle = connect(s), connect(s), connect(s)
        for c in (finishing, stalled):
            c.sendall(head + body[:50])
        time.sleep(0.3)
        t = time.monotonic()
        s.proc.send_signal(sig)
        time.sleep(0.3)
        finishing.sendall(body[50:])
        assert answers(read_all(finishing))[0][0] == 200
        assert read_all(idle, 2) == b""  # closed at once, without an answer
        message = json_error(read_all(stalled), 503)
        assert "stopping" in message and "--grace-s" in message
        assert 1.4 < time.monotonic() - t < 5
        assert s.proc.wait(20) == 0
        with pytest.raises(OSError):
            connect(s)
        out = s.output()
        assert "cifarlab serve: stopped" in out
        assert "Traceback" not in out and "Error" not in out, out
    finally:
        s.stop()
    assert sorted(os.listdir(tmp)) == [] and sorted(os.listdir(home)) == []
