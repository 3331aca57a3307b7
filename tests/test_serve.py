"""``cifarlab serve``: a real server process on 127.0.0.1 (a free port) and real HTTP requests.

The API gives ``cifarlab predict``'s numbers; every bad request is a JSON 4xx error and the
next good request still works; nothing a client sends reaches the filesystem; the start-up
errors are one line before any port is opened; Ctrl-C stops it cleanly; a small load test
finds no error and no memory growth (``benchmarks/serve_load.py`` is the full one).
"""

from __future__ import annotations

import io
import json
import re
import socket
import subprocess
import sys
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import fakedata
import hostile
from cifarlab.runs import RunFolder
from conftest import run_cli
from serving import Server, multipart

pytest.importorskip("fastapi")
pytest.importorskip("uvicorn")
pytestmark = pytest.mark.slow  # server processes: seconds each


@pytest.fixture(scope="module")
def cnn_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One epoch of simple_cnn on a tiny fake CIFAR-10, float32, with TTA 2 (six views): a
    run whose backend may be ONNX Runtime and whose TTA must survive the export."""
    from cifarlab import TrainConfig, train

    root = tmp_path_factory.mktemp("serve-data")
    fakedata.write_cifar10_python(root, per_batch=20, test=20, seed=0)
    with pytest.MonkeyPatch.context() as mp, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # md5 sums differ from the official files: fake data
        mp.setenv("CIFARLAB_CACHE", str(root / "cache"))
        cfg = TrainConfig(
            root=str(root),
            epochs=1,
            val_size=20,
            model="simple_cnn",
            device="cpu",
            precision="fp32",
            tta=2,
        )
        return train(cfg, out=tmp_path_factory.mktemp("serve") / "cnn", progress=False)


@pytest.fixture(scope="module")
def onnx_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One cache for the servers that export the run to ONNX: exported once, then reused."""
    return tmp_path_factory.mktemp("onnx-cache")


@pytest.fixture(scope="module")
def server_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The server's TMPDIR: it must stay empty (uploads never touch the disk)."""
    return tmp_path_factory.mktemp("server-tmp")


@pytest.fixture(scope="module")
def server(cnn_run: Path, server_tmp: Path, tmp_path_factory: pytest.TempPathFactory):  # noqa: ANN201
    """The run served with PyTorch (exactly predict's numbers), an upload limit of 1 MB and at
    most 8 files per request."""
    cache = tmp_path_factory.mktemp("server-cache")
    s = Server(
        str(cnn_run),
        "--backend",
        "torch",
        "--max-upload-mb",
        "1",
        "--max-files",
        "8",
        "--max-pending-mb",
        "2.5",
        env={"TMPDIR": str(server_tmp), "CIFARLAB_CACHE": str(cache)},
    )
    yield s
    s.stop()


def photo(seed: int, size: tuple[int, int], fmt: str = "PNG", mode: str = "RGB") -> bytes:
    """A smooth picture (not noise: JPEG and the resize behave as on photos)."""
    w, h = size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    chans = [
        np.sin(xx / rng.uniform(3, 30) + yy / rng.uniform(3, 30) + rng.uniform(0, 6))
        for _ in range(4)
    ]
    arr = ((np.stack(chans, -1) + 1) * 127.5).astype(np.uint8)
    im = Image.fromarray(arr, "RGBA").convert(mode)
    buf = io.BytesIO()
    im.save(buf, fmt)
    return buf.getvalue()


SAMPLES = {
    "small.png": lambda: photo(1, (32, 32)),
    "photo.jpg": lambda: photo(2, (640, 480), "JPEG"),
    "tall.webp": lambda: photo(3, (90, 300), "WEBP"),
    "alpha.png": lambda: photo(4, (64, 48), "PNG", "RGBA"),
    "grey.bmp": lambda: photo(5, (50, 40), "BMP", "L"),
    "anim.gif": lambda: hostile.image_bytes("GIF", frames=3, size=(40, 40)),
}


def good(server: Server) -> None:
    """A valid request still succeeds (the server keeps serving)."""
    status, payload = server.predict([("ok.png", photo(9, (32, 32)))])
    assert status == 200, payload
    assert payload["results"][0]["label"]


def test_predictions_equal_cifarlab_predict(server: Server, cnn_run: Path, tmp_path: Path) -> None:
    """The same files through the API (multipart and raw body) and through `cifarlab predict`
    give the same classes and probabilities."""
    files = [(name, make()) for name, make in SAMPLES.items()]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    r = run_cli(
        "predict", str(cnn_run), *(str(tmp_path / n) for n, _ in files), "--json", "--top-k", "10"
    )
    assert r.returncode == 0, r.stderr
    expected = {Path(x["file"]).name: x for x in json.loads(r.stdout)}
    status, payload = server.predict(files, "?top_k=10")
    assert status == 200, payload
    assert [x["file"] for x in payload["results"]] == [n for n, _ in files]
    for got in payload["results"]:
        want = expected[got["file"]]
        assert got["label"] == want["label"]
        assert [c["class"] for c in got["top_k"]] == [c["class"] for c in want["top_k"]]
        np.testing.assert_allclose(
            [c["probability"] for c in got["top_k"]],
            [c["probability"] for c in want["top_k"]],
            atol=1e-6,
        )
    # one image as the raw body, as curl --data-binary sends it
    name, data = files[1]
    status, body, _ = server.request(
        "POST", "/v1/predict?top_k=10", data, {"Content-Type": "image/jpeg", "X-Filename": name}
    )
    assert status == 200, body
    assert body["results"][0]["file"] == name
    np.testing.assert_allclose(
        [c["probability"] for c in body["results"][0]["top_k"]],
        [c["probability"] for c in expected[name]["top_k"]],
        atol=1e-6,
    )


def test_models_health_docs_and_page(server: Server, cnn_run: Path) -> None:
    """/v1/models describes the run and the input contract; /healthz, /openapi.json, /docs
    and the page answer; the page and the docs name no host on the internet."""
    status, info, _ = server.request("GET", "/v1/models")
    assert status == 200
    m = info["models"][0]
    assert info["default"] == m["name"] == cnn_run.name
    assert m["model"] == "simple_cnn" and len(m["classes"]) == 10 and m["tta"] == 2
    assert m["backend"] == "torch" and "PyTorch" in m["backend_note"]
    assert m["input"]["size"] == [32, 32, 3]
    # the probabilities served are calibrated by the temperature fitted on val, as predict's
    t = RunFolder(cnn_run).read_calibration()["best"]["temperature"]
    assert m["calibration"]["calibrated"] and m["calibration"]["temperature"] == t
    assert "temperature scaling" in m["calibration"]["note"]
    assert info["limits"] == {"max_upload_mb": 1.0, "max_files": 8}
    assert info["batching"]["enabled"] and info["batching"]["max_wait_ms"] == 2.0
    assert server.request("GET", "/healthz")[:2] == (
        200,
        {"status": "ok", "models": [cnn_run.name]},
    )
    status, spec, _ = server.request("GET", "/openapi.json")
    assert status == 200 and "/v1/predict" in spec["paths"] and "/v1/models" in spec["paths"]
    body = spec["paths"]["/v1/predict"]["post"]["requestBody"]["content"]
    assert "multipart/form-data" in body and "image/*" in body
    for path in ("/docs", "/"):
        status, html, headers = server.request("GET", path)
        assert status == 200 and headers["content-type"].startswith("text/html")
        for marker in ("https://", "http://", "cdn", "//fonts"):
            assert marker not in html.lower().replace("http://127.0.0.1:8000", ""), (path, marker)
    assert "/v1/predict" in server.request("GET", "/docs")[1]


def gif_frames(n: int) -> bytes:
    """An n-frame 4×4 GIF."""
    return hostile.image_bytes("GIF", frames=n, size=(4, 4))


# (what, request → (status, payload), expected status, a phrase of the error)
def bad_requests(server: Server) -> list:
    big = photo(7, (32, 32))
    too_big = big + bytes(1024 * 1024)  # a PNG with 1 MB of trailing bytes: over the limit
    truncated = photo(8, (200, 200))[:300]
    return [
        (
            "not an image",
            lambda: server.predict([("notes.txt", b"hello, this is text\n")]),
            422,
            "not an image",
        ),
        (
            "truncated image",
            lambda: server.predict([("cut.png", truncated)]),
            422,
            "truncated or corrupt",
        ),
        ("zero-byte file", lambda: server.predict([("empty.png", b"")]), 422, "empty file"),
        (
            "zero-byte body",
            lambda: server.request("POST", "/v1/predict", b"", {"Content-Type": "image/png"})[:2],
            400,
            "empty request body",
        ),
        (
            "decompression bomb",
            lambda: server.predict([("bomb.png", hostile.png_claiming(30000, 30000))]),
            422,
            "too many pixels",
        ),
        (
            "over the size limit",
            lambda: server.predict([("big.png", too_big)]),
            413,
            "the limit is 1 MB",
        ),
        (
            "raw body over the limit",
            lambda: server.request("POST", "/v1/predict", too_big, {"Content-Type": "image/png"})[
                :2
            ],
            413,
            "the limit is 1 MB",
        ),
        (
            "too many files",
            lambda: server.predict([(f"{i}.png", big) for i in range(9)]),
            413,
            "too many files",
        ),
        (
            "wrong field name",
            lambda: server.predict([("a.png", big)], field="image"),
            400,
            "unknown form field 'image'",
        ),
        (
            "a text field",
            lambda: server.request(
                "POST",
                "/v1/predict",
                b'--b\r\nContent-Disposition: form-data; name="x"\r\n\r\n1\r\n--b--\r\n',
                {"Content-Type": "multipart/form-data; boundary=b"},
            )[:2],
            400,
            "only files",
        ),
        (
            "multipart without a boundary",
            lambda: server.request(
                "POST", "/v1/predict", b"xx", {"Content-Type": "multipart/form-data"}
            )[:2],
            400,
            "multipart",
        ),
        (
            "JSON body",
            lambda: server.request(
                "POST", "/v1/predict", b"{}", {"Content-Type": "application/json"}
            )[:2],
            415,
            "not accepted",
        ),
        ("bad top_k", lambda: server.predict([("a.png", big)], "?top_k=0"), 422, "top_k"),
        ("top_k not a number", lambda: server.predict([("a.png", big)], "?top_k=x"), 422, "top_k"),
        ("bad resize", lambda: server.predict([("a.png", big)], "?resize=zoom"), 422, "resize"),
        (
            "unknown model",
            lambda: server.predict([("a.png", big)], "?model=nope"),
            404,
            "no model 'nope'",
        ),
        ("wrong method", lambda: server.request("GET", "/v1/predict")[:2], 405, "not allowed"),
        (
            "gzip body",
            lambda: server.request(
                "POST",
                "/v1/predict",
                big,
                {"Content-Type": "image/png", "Content-Encoding": "gzip"},
            )[:2],
            415,
            "gzip",
        ),
        ("no such page", lambda: server.request("GET", "/nothing")[:2], 404, "not found"),
        (
            "bad Content-Length",
            lambda: raw_exchange(
                server,
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 12x\r\n\r\n",
            ),
            400,
            "",
        ),
    ]


def raw_exchange(server: Server, data: bytes) -> tuple[int, object]:
    """Send bytes as they are on a socket; the status and body of the answer."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(data)
        reply = b""
        while True:
            head, sep, body = reply.partition(b"\r\n\r\n")
            m = re.search(rb"content-length:\s*(\d+)", head, re.I)
            if sep and (m is None or len(body) >= int(m.group(1))):
                break
            chunk = s.recv(65536)
            if not chunk:
                break
            reply += chunk
    status = int(head.split(b" ", 2)[1])
    try:
        return status, json.loads(body)
    except ValueError:
        return status, body.decode("latin-1")


def test_bad_requests_are_json_4xx_and_the_server_keeps_serving(
    server: Server, server_tmp: Path
) -> None:
    """Each bad request: its status, a JSON error in words (no traceback), and the next valid
    request succeeds; nothing is left in the server's temp folder."""
    for what, send, want, phrase in bad_requests(server):
        status, payload = send()
        assert status == want, (what, status, payload)
        if isinstance(payload, dict):
            assert phrase.lower() in payload["error"].lower(), (what, payload)
            assert payload["status"] == want
            assert "Traceback" not in json.dumps(payload)
        else:
            assert "Traceback" not in payload
        good(server)
    assert list(server_tmp.iterdir()) == []
    assert "Traceback" not in server.output()


@pytest.mark.alone  # timed (< 10 s): no other test beside it
def test_some_bad_files_in_a_request_are_errors_of_their_own(server: Server) -> None:
    """Good and bad files together: 200, each bad file has its error, the others their
    prediction, in order; a GIF of 10,000 frames is predicted from its first frame at once."""
    start = time.perf_counter()
    status, payload = server.predict(
        [("a.png", photo(1, (32, 32))), ("b.txt", b"text"), ("many.gif", gif_frames(10_000))]
    )
    assert time.perf_counter() - start < 10
    assert status == 200, payload
    a, b, gif = payload["results"]
    assert a["label"] and "error" not in a
    assert "not an image" in b["error"] and "label" not in b
    assert gif["label"], gif


@pytest.mark.alone  # how soon the server answers: no other test beside it
def test_upload_is_refused_while_it_streams(server: Server) -> None:
    """A chunked body with no length is answered 413 as soon as it passes the limit (1 MB):
    the client has not sent the end of it when the answer comes."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=30) as s:
        s.sendall(
            b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
        )
        chunk = bytes(64 * 1024)
        sent = 0
        reply = b""
        s.settimeout(0.05)
        while sent < 64 * 1024 * 1024 and b"\r\n\r\n" not in reply:  # up to 64 MB offered
            try:
                s.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
                sent += len(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                pass
            try:
                reply += s.recv(65536)
            except TimeoutError:
                pass
    assert reply.startswith(b"HTTP/1.1 413"), reply[:200]
    assert sent < 8 * 1024 * 1024, sent  # refused long before the 64 MB were sent
    good(server)


def test_a_declared_length_over_the_limit_is_refused_before_the_body(server: Server) -> None:
    """Content-Length over the limit: 413 without a byte of the body sent."""
    status, payload = raw_exchange(
        server,
        b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
        b"Content-Length: 999999999\r\n\r\n",
    )
    assert status == 413 and "limit is 1 MB" in payload["error"]


@pytest.mark.alone  # batching: requests in flight together: no other test beside it
def test_requests_arriving_together_share_batches(server: Server) -> None:
    """24 clients at once: every answer right, in fewer model batches than requests."""
    _, before, _ = server.request("GET", "/v1/models")
    images = [photo(i, (32, 32)) for i in range(24)]
    solo = [server.predict([(f"{i}.png", im)])[1]["results"][0] for i, im in enumerate(images)]
    _, mid, _ = server.request("GET", "/v1/models")
    with ThreadPoolExecutor(24) as pool:
        together = list(pool.map(lambda i: server.predict([(f"{i}.png", images[i])]), range(24)))
    _, after, _ = server.request("GET", "/v1/models")
    name = before["default"]
    for (status, payload), alone in zip(together, solo, strict=True):
        assert status == 200
        got = payload["results"][0]
        assert got["label"] == alone["label"]
        np.testing.assert_allclose(
            got["top_k"][0]["probability"], alone["top_k"][0]["probability"], atol=1e-5
        )
    batches = after["stats"][name]["batches"] - mid["stats"][name]["batches"]
    images_run = after["stats"][name]["images"] - mid["stats"][name]["images"]
    assert images_run == 24
    assert batches < 24, batches
    assert mid["stats"][name]["batches"] - before["stats"][name]["batches"] == 24


def test_small_load_no_errors_no_memory_growth(server: Server) -> None:
    """8 clients × 250 single-image requests on kept-alive connections: no error, and the
    server's memory after 2,000 requests is within 30 MB of what it was after the first 400."""
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))
    from serve_load import load, rss_mb

    image = photo(3, (32, 32))
    warm = load("127.0.0.1", server.port, image, clients=8, requests=400)
    assert warm.errors == 0, warm.first_error
    rss_warm = rss_mb(server.proc.pid)
    result = load("127.0.0.1", server.port, image, clients=8, requests=2000)
    assert result.errors == 0, result.first_error
    assert result.ok == 2000
    growth_mb = rss_mb(server.proc.pid) - rss_warm
    assert growth_mb < 30, growth_mb


def test_token(cnn_run: Path, tmp_path: Path) -> None:
    """With a token (here from $CIFARLAB_SERVE_TOKEN): API calls without it or with a wrong
    one are 401, with it 200; /healthz and the page need none. --host 0.0.0.0 warns that the
    model is reachable from the network. Ctrl-C stops the server cleanly (exit 0, no
    traceback)."""
    s = Server(
        str(cnn_run),
        "--backend",
        "torch",
        "--host",
        "0.0.0.0",
        "--tta",
        "1",
        env={"CIFARLAB_SERVE_TOKEN": "s3cret", "CIFARLAB_CACHE": str(tmp_path)},
    )
    try:
        assert "reachable from the network" in "".join(s.err) + s.output()
        body, ctype = multipart([("a.png", photo(1, (32, 32)))])
        for headers, want in (
            ({}, 401),
            ({"Authorization": "Bearer nope"}, 401),
            ({"Authorization": "Basic s3cret"}, 401),
            ({"Authorization": "Bearer s3cret"}, 200),
        ):
            status, payload, h = s.request(
                "POST", "/v1/predict", body, {"Content-Type": ctype, **headers}
            )
            assert status == want, (headers, payload)
            if want == 401:
                assert "token" in payload["error"] and h.get("www-authenticate") == "Bearer"
            status, _, _ = s.request("GET", "/v1/models", None, headers)
            assert status == want
        status, payload, _ = s.request(
            "POST", "/v1/predict?top_k=abc", body, {"Content-Type": ctype}
        )  # no token: 401 before 422
        assert status == 401, payload
        # the token before routing: 401 before 404, 405 or a redirect
        for method, path in (("GET", "/v1/predict"), ("POST", "/v1/predict/"), ("GET", "/x")):
            status, payload, h = s.request(method, path)
            assert status == 401 and "location" not in h, (method, path, payload)
        auth = {"Authorization": "Bearer s3cret"}
        assert s.request("GET", "/v1/predict", None, auth)[0] == 405
        status, _, h = s.request("POST", "/v1/predict/", body, {"Content-Type": ctype, **auth})
        assert status == 404 and "location" not in h
        _, info, _ = s.request("GET", "/v1/models", None, {"Authorization": "Bearer s3cret"})
        assert info["models"][0]["tta"] == 1  # --tta 1 instead of the run's 2
        assert s.request("GET", "/healthz")[0] == 200
        assert s.request("GET", "/")[0] == 200
        assert s.interrupt() == 0
        out = s.output()
        assert "cifarlab serve: stopped" in out and "Traceback" not in out
    finally:
        s.stop()


def test_onnx_backend_gives_the_same_numbers(
    cnn_run: Path, tmp_path: Path, onnx_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The float32 run in ONNX Runtime (its TTA inside the exported graph) agrees with
    `cifarlab predict` to float precision; --backend auto says what it chose and why. Two
    1 MB noise PNGs make the request big enough to be decoded by both threads at once. The
    first start exports the graph: across start, load and stop nothing is written into TMPDIR
    or HOME (ONNX Runtime's telemetry is off, the exporter's cache is in cifarlab's)."""
    pytest.importorskip("onnxruntime")
    files = [(name, make()) for name, make in SAMPLES.items()]
    files += [
        (f"noise{i}.png", hostile.image_bytes("PNG", seed=i, size=(600, 600))) for i in range(2)
    ]
    for name, data in files:
        (tmp_path / name).write_bytes(data)
    r = run_cli(
        "predict", str(cnn_run), *(str(tmp_path / n) for n, _ in files), "--json", "--top-k", "10"
    )
    expected = {Path(x["file"]).name: x for x in json.loads(r.stdout)}
    tmp, home = tmp_path / "tmp", tmp_path / "home"
    tmp.mkdir()
    home.mkdir()
    env = {"CIFARLAB_CACHE": str(onnx_cache), "TMPDIR": str(tmp), "HOME": str(home)}
    s = Server(str(cnn_run), "--backend", "onnx", env=env)
    try:
        status, info, _ = s.request("GET", "/v1/models")
        assert info["models"][0]["backend"] == "onnx"
        status, payload = s.predict(files, "?top_k=10")
        assert status == 200
        for got in payload["results"]:
            want = expected[got["file"]]
            assert got["label"] == want["label"]
            np.testing.assert_allclose(
                [c["probability"] for c in got["top_k"]],
                [c["probability"] for c in want["top_k"]],
                atol=1e-4,
            )
        s.proc.terminate()  # SIGTERM, as a service manager stops it: the same clean end
        assert s.proc.wait(30) == 0
        assert "cifarlab serve: stopped" in s.output()
    finally:
        s.stop()
    assert list((onnx_cache / "serve").glob("*.onnx"))  # exported once, into the cache
    assert list(tmp.iterdir()) == [] and list(home.iterdir()) == []
    from cifarlab.serve.engine import load_served

    monkeypatch.setenv("CIFARLAB_CACHE", str(onnx_cache))
    auto = load_served(cnn_run, backend="auto")
    assert auto.backend_name in ("onnx", "torch")
    assert "faster here" in auto.backend_note and "batch 64" in auto.backend_note


def test_several_runs_and_workers(cnn_run: Path, tmp_path: Path, onnx_cache: Path) -> None:
    """Two runs in two worker processes: a request picks its run by name; every worker serves
    the backend the parent measured once (the same note whichever worker answers); Ctrl-C
    stops the workers too."""
    import shutil

    other = tmp_path / "other"
    shutil.copytree(cnn_run, other)
    s = Server(
        str(cnn_run),
        str(other),
        "--workers",
        "2",
        env={"CIFARLAB_CACHE": str(onnx_cache)},
    )
    try:
        status, info, _ = s.request("GET", "/v1/models")
        assert [m["name"] for m in info["models"]] == [cnn_run.name, "other"]
        notes = set()
        for _ in range(6):
            status, payload = s.predict([("a.png", photo(1, (32, 32)))], "?model=other")
            assert status == 200 and payload["model"] == "other"
            notes.add(s.request("GET", "/v1/models")[1]["models"][1]["backend_note"])
        assert len(notes) == 1, notes
        assert next(iter(notes)) in s.output()  # the note the start-up line gave
        kids = Path(f"/proc/{s.proc.pid}/task/{s.proc.pid}/children").read_text().split()
        assert len(kids) >= 2  # the two workers
        assert s.interrupt() == 0
        assert "Traceback" not in s.output()
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and any(_alive(k) for k in kids):
            time.sleep(0.1)
        assert not [k for k in kids if _alive(k)]  # no worker left
    finally:
        s.stop()


def _alive(pid: str) -> bool:
    try:
        status = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "State:\tZ" not in status  # a zombie has ended (its parent reaps it)


def test_startup_errors_are_one_line_before_the_port_opens(
    cnn_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """A missing or broken run folder, a port in use, two runs of one name, a bad option, a
    missing extra: one `error:` line, exit 1 (2 for argparse), nothing served."""
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "config.json").write_text("{not json")
    (broken / "best.pt").write_bytes(b"x")
    busy = socket.socket()
    busy.bind(("127.0.0.1", 0))
    busy.listen()
    port = str(busy.getsockname()[1])
    cases = [
        ((str(tmp_path / "missing"),), "missing"),
        ((str(broken),), "config.json"),
        (
            (str(cnn_run), "--port", port, "--backend", "torch"),
            f"cannot listen on 127.0.0.1:{port}",
        ),
        ((str(cnn_run), str(cnn_run), "--backend", "torch"), "two runs named"),
        ((str(cnn_run), "--workers", "0"), "--workers must be 1..64"),
        ((str(cnn_run), "--max-upload-mb", "0"), "--max-upload-mb must be"),
        ((str(cnn_run), "--port", "70000"), "--port must be 0..65535"),
        ((str(cnn_run), "--token", "a b"), "--token must be"),
        ((str(cnn_run), "--token", "tök€n"), "--token must be"),
        ((str(cnn_run), "--max-pending-mb", "1"), "--max-pending-mb must be at least"),
    ]
    from cifarlab.cli import main

    try:
        for args, phrase in cases:  # in this process: the same main() as the command's
            capsys.readouterr()
            code = main(["serve", *args])
            out, err = capsys.readouterr()
            lines = err.strip().splitlines()
            assert code == 1, (args, err)
            assert len(lines) == 1 and lines[0].startswith("error:"), (args, err)
            assert phrase in lines[0], (args, lines[0])
            assert "cifarlab serve:" not in out
    finally:
        busy.close()
    # without FastAPI installed: the extra to install, in one line
    code = (
        "import sys; sys.modules['fastapi'] = None; from cifarlab.cli import main; "
        f"sys.exit(main(['serve', {str(cnn_run)!r}]))"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert r.stderr.strip() == "error: cifarlab serve needs fastapi: pip install 'cifarlab[serve]'"


def test_no_500_for_random_bytes(server: Server) -> None:
    """Random and mutated bodies and headers: never a 500, always JSON."""
    rng = np.random.default_rng(0)
    base = photo(1, (64, 64))
    sends = []
    for seed in range(40):
        data = hostile.mutate(base, seed)
        sends.append(lambda d=data: server.predict([("m.png", d)]))
        blob = rng.integers(0, 256, int(rng.integers(1, 4000)), dtype=np.uint8).tobytes()
        sends.append(
            lambda b=blob: server.request("POST", "/v1/predict", b, {"Content-Type": "image/png"})[
                :2
            ]
        )
        body, ctype = multipart([("x.png", blob)])
        cut = body[: int(rng.integers(1, len(body)))]
        sends.append(
            lambda b=cut, c=ctype: server.request("POST", "/v1/predict", b, {"Content-Type": c})[:2]
        )
    for send in sends:
        status, payload = send()
        assert status < 500, payload
        assert isinstance(payload, dict) and ("error" in payload or "results" in payload)
    good(server)


def test_a_client_that_leaves_does_not_break_the_server(server: Server) -> None:
    """Clients that hang up mid-body or mid-answer: the server goes on."""
    for _ in range(5):
        with socket.create_connection(("127.0.0.1", server.port), timeout=10) as s:
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 5000\r\n\r\n" + photo(1, (32, 32))[:100]
            )
    threads = [
        threading.Thread(target=lambda: server.predict([("a.png", photo(2, (32, 32)))]))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    good(server)
    out = server.output()
    assert "Traceback" not in out and "Exception in ASGI" not in out, out[-2000:]


@pytest.mark.alone  # timed: sleeps while the server reads: no other test beside it
def test_slow_uploads_together_are_capped(server: Server) -> None:
    """Bodies held at once are capped for all clients together (--max-pending-mb 2.5 here):
    three half-sent 0.9 MB uploads, and the third is answered 503; once they go, the server
    serves again."""
    part = bytes(900 * 1024)
    socks = []
    try:
        for _ in range(3):
            s = socket.create_connection(("127.0.0.1", server.port), timeout=30)
            s.sendall(
                b"POST /v1/predict HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
                b"Content-Length: 1000000\r\n\r\n" + part
            )
            socks.append(s)
            time.sleep(0.5)  # the server has read it
        socks[-1].settimeout(10)
        reply = socks[-1].recv(65536)
        assert reply.startswith(b"HTTP/1.1 503"), reply[:200]
        assert b"busy" in reply
    finally:
        for s in socks:
            s.close()
    time.sleep(0.5)
    good(server)
