"""Downloads against a real local HTTP server: resume, retry, stall, 404, checksum."""

from __future__ import annotations

import hashlib
import io
import os
import random
import re
import socket
import subprocess
import sys
import tarfile
import threading
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from cifarlab.data.download import NETWORK_HINT, download_dataset, download_file, md5sum
from cifarlab.data.extract import safe_extract
from cifarlab.data.sources import get_info
from cifarlab.errors import CifarlabError, DataError, DownloadError
from conftest import cli_run
from hostile import no_hang

FAST = {"backoff": 0.01, "timeout": 5.0, "progress": False}
PAYLOAD = random.Random(0).randbytes(200_000)  # several read chunks, incompressible


def md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


@dataclass
class Server:
    """What the test HTTP server serves and what it was asked for."""

    base: str = ""
    files: dict[str, bytes] = field(default_factory=dict)
    # normal | cut | 404 | error_once | no_range | stall_headers | stall_body | trickle
    # | long_reason | no_length
    mode: str = "normal"
    trickle_every: float = 0.5  # seconds between the bytes of "trickle"
    requests: list[tuple[str, str | None]] = field(default_factory=list)  # (path, Range)
    release: threading.Event = field(default_factory=threading.Event)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def url(self, path: str) -> str:
        return self.base + path

    @property
    def ranges(self) -> list[str | None]:
        return [r for _, r in self.requests]


class Handler(BaseHTTPRequestHandler):
    server: ThreadingHTTPServer  # with a .state attribute (a Server)

    def log_message(self, format: str, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        st: Server = self.server.state  # type: ignore[attr-defined]
        rng = self.headers.get("Range")
        with st.lock:
            st.requests.append((self.path, rng))
            first = len(st.requests) == 1
        if st.mode == "404" or self.path not in st.files:
            self.send_error(404, "Not Found")
            return
        if st.mode == "error_once" and first:
            self.send_error(503, "Service Unavailable")
            return
        if st.mode == "stall_headers":
            st.release.wait(10)  # longer than any client timeout used in the tests
            return
        if st.mode == "long_reason":
            self.send_response(404, "Not\tFound " + "very " * 300)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if st.mode == "trickle":  # one byte at a time, never stalling long enough to time out
            self.send_response(200)
            self.send_header("Content-Length", str(len(st.files[self.path])))
            self.end_headers()
            try:
                for b in st.files[self.path]:
                    self.wfile.write(bytes([b]))
                    self.wfile.flush()
                    if st.release.wait(st.trickle_every):
                        break
            except OSError:
                pass  # the client gave up
            self.close_connection = True
            return
        if st.mode == "no_length":  # the whole body, its end marked by closing the connection
            self.send_response(200)
            self.end_headers()
            self.wfile.write(st.files[self.path])
            self.close_connection = True
            return
        body = st.files[self.path]
        start = 0
        if rng and st.mode != "no_range":
            m = re.fullmatch(r"bytes=(\d+)-", rng)
            assert m, rng
            start = int(m.group(1))
            if start >= len(body):
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(body)}")
                self.send_header("Content-Length", "0")
                self.end_headers()
                return
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        else:
            self.send_response(200)
        chunk = body[start:]
        self.send_header("Content-Type", "application/octet-stream")
        self.send_header("Content-Length", str(len(chunk)))  # always the full length
        self.end_headers()
        if (st.mode == "cut" and first) or st.mode == "stall_body":
            self.wfile.write(chunk[: len(chunk) // 2])
            self.wfile.flush()
            if st.mode == "stall_body":
                st.release.wait(10)
            self.close_connection = True
            return
        self.wfile.write(chunk)


@pytest.fixture(autouse=True)
def no_proxy(monkeypatch: pytest.MonkeyPatch) -> None:
    """Talk to 127.0.0.1 directly even where a proxy is configured."""
    for var in ("http_proxy", "https_proxy", "all_proxy", "no_proxy"):
        monkeypatch.delenv(var, raising=False)
        monkeypatch.delenv(var.upper(), raising=False)


@pytest.fixture
def server() -> Iterator[Server]:
    state = Server()
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.state = state  # type: ignore[attr-defined]
    state.base = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield state
    finally:
        state.release.set()  # let stalled handlers finish so server_close() can join them
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


def no_leftovers(dest: Path) -> bool:
    return not dest.exists() and not dest.with_name(dest.name + ".part").exists()


# --------------------------------------------------------------------------- download_file


def test_md5sum(tmp_path: Path) -> None:
    p = tmp_path / "f"
    p.write_bytes(PAYLOAD)
    assert md5sum(p) == md5(PAYLOAD)
    assert md5sum(p, chunk=7) == md5(PAYLOAD)


def test_normal_download(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "sub" / "a.bin"
    out = download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert out == dest
    assert dest.read_bytes() == PAYLOAD
    assert not dest.with_name("a.bin.part").exists()
    assert server.ranges == [None]


def test_progress_bar_does_not_break(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = download_file(server.url("/a.bin"), tmp_path / "a.bin", None, backoff=0.01)
    assert dest.read_bytes() == PAYLOAD


def test_cut_off_connection_is_resumed(server: Server, tmp_path: Path) -> None:
    server.mode = "cut"
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), retries=2, **FAST)
    assert dest.read_bytes() == PAYLOAD
    assert md5sum(dest) == md5(PAYLOAD)
    assert len(server.requests) == 2
    assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_resumes_existing_part_file(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    half = 123_457
    dest.with_name("a.bin.part").write_bytes(PAYLOAD[:half])
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert server.ranges == [f"bytes={half}-"]
    assert dest.read_bytes() == PAYLOAD


def test_server_ignoring_range_restarts_from_zero(server: Server, tmp_path: Path) -> None:
    server.mode = "no_range"
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(b"junk" * 1000)  # must be overwritten, not kept
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert server.ranges == ["bytes=4000-"]
    assert dest.read_bytes() == PAYLOAD


def test_part_file_too_long_starts_over(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    dest.with_name("a.bin.part").write_bytes(b"x" * (len(PAYLOAD) + 10))
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert server.ranges == [f"bytes={len(PAYLOAD) + 10}-", None]
    assert dest.read_bytes() == PAYLOAD


def test_server_error_is_retried(server: Server, tmp_path: Path) -> None:
    server.mode = "error_once"
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert len(server.requests) == 2
    assert dest.read_bytes() == PAYLOAD


def test_404_fails_at_once(server: Server, tmp_path: Path) -> None:
    server.mode = "404"
    dest = tmp_path / "a.bin"
    url = server.url("/a.bin")
    with pytest.raises(DownloadError, match="404") as info:
        download_file(url, dest, None, retries=3, **FAST)
    assert url in str(info.value)
    assert "\n" not in str(info.value)
    assert len(server.requests) == 1  # not retried
    assert no_leftovers(dest)


def test_wrong_checksum(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    wanted = md5(b"something else")
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, wanted, **FAST)
    msg = str(info.value)
    assert "a.bin" in msg and wanted in msg and md5(PAYLOAD) in msg
    assert no_leftovers(dest)


@pytest.mark.parametrize("mode", ["stall_headers", "stall_body"])
def test_stalled_server_times_out(server: Server, tmp_path: Path, mode: str) -> None:
    server.mode = mode
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError, match="2 attempts"):
        download_file(
            server.url("/a.bin"), dest, None, retries=1, backoff=0.01, timeout=0.5, progress=False
        )
    assert time.monotonic() - t0 < 4
    assert len(server.requests) == 2
    assert not dest.exists()
    if mode == "stall_body":  # the second attempt resumed what the first one got
        assert server.ranges == [None, f"bytes={len(PAYLOAD) // 2}-"]


def test_existing_file_with_right_md5_is_kept(server: Server, tmp_path: Path) -> None:
    dest = tmp_path / "a.bin"
    dest.write_bytes(PAYLOAD)
    assert download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST) == dest
    assert server.requests == []


def test_existing_file_with_wrong_md5_is_replaced(server: Server, tmp_path: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    dest.write_bytes(b"old")
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert dest.read_bytes() == PAYLOAD


def test_unresolvable_host_fails_fast(tmp_path: Path) -> None:
    dest = tmp_path / "x"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file("http://nonexistent.invalid/x", dest, None, retries=4, backoff=1.0)
    assert time.monotonic() - t0 < 5
    msg = str(info.value)
    assert "nonexistent.invalid" in msg and NETWORK_HINT in msg
    assert no_leftovers(dest)


def test_refused_connection_is_retried_then_fails(tmp_path: Path) -> None:
    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError, match="3 attempts") as info:
        download_file(f"http://127.0.0.1:{port}/x", tmp_path / "x", None, retries=2, **FAST)
    assert NETWORK_HINT in str(info.value)


# --------------------------------------------------------------------------- datasets


def tiny_targz(folder: str) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in {"data_batch_1": b"one", "test_batch": b"two"}.items():
            info = tarfile.TarInfo(f"{folder}/{name}")
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def test_download_dataset_checks_the_official_md5(server: Server, tmp_path: Path) -> None:
    archive = get_info("cifar10").archives["python"]
    server.files[f"/mirror/{archive.filename}"] = tiny_targz(archive.folder)
    with pytest.raises(DownloadError, match="checksum mismatch") as info:
        download_dataset("cifar10", tmp_path / "data", base_url=server.url("/mirror/"), **FAST)
    assert archive.md5 in str(info.value)
    assert server.requests[0][0] == f"/mirror/{archive.filename}"
    assert not (tmp_path / "data").exists()  # nothing left: no file, no empty folder


def test_download_dataset_uses_mirror_env(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = get_info("cifar100").archives["binary"]
    monkeypatch.setenv("CIFARLAB_MIRROR", server.url("/m"))
    with pytest.raises(DownloadError, match="404"):
        download_dataset("cifar100", tmp_path, "binary", **FAST)
    assert [p for p, _ in server.requests] == [f"/m/{archive.filename}"]


def test_download_dataset_skips_a_complete_folder(server: Server, tmp_path: Path) -> None:
    info = get_info("cifar10")
    folder = tmp_path / info.archives["python"].folder
    folder.mkdir()
    for name in info.python_md5:
        (folder / name).write_bytes(b"x")
    assert download_dataset("cifar10", tmp_path, base_url=server.base, **FAST) == folder
    assert server.requests == []


def test_download_then_extract(server: Server, tmp_path: Path) -> None:
    data = tiny_targz("cifar-10-batches-py")
    server.mode = "cut"
    server.files["/c.tar.gz"] = data
    path = download_file(server.url("/c.tar.gz"), tmp_path / "c.tar.gz", md5(data), **FAST)
    assert safe_extract(path, tmp_path) == ["cifar-10-batches-py"]
    assert (tmp_path / "cifar-10-batches-py" / "data_batch_1").read_bytes() == b"one"
    assert (tmp_path / "cifar-10-batches-py" / "test_batch").read_bytes() == b"two"


# --------------------------------------------------------------------------- the CLI


def _cli(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return cli_run(  # a warm fork: nothing here needs a fresh interpreter (tests/conftest.py)
        [sys.executable, "-m", "cifarlab", *args],
        capture_output=True, text=True, timeout=60, env={**os.environ, **env},
    )  # fmt: skip


def test_cli_download_checksum_error_is_one_line(server: Server, tmp_path: Path) -> None:
    server.files["/cifar-10-python.tar.gz"] = PAYLOAD
    r = _cli("download", "--root", str(tmp_path), "--url", server.base + "/", env={})
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "error: checksum mismatch for cifar-10-python.tar.gz" in r.stderr
    assert not list(tmp_path.iterdir())  # nothing half-written is left


def test_cli_offline_download_fails_fast_with_hint(tmp_path: Path) -> None:
    start = time.monotonic()
    r = _cli("data", "info", "--download", "--root", str(tmp_path / "d"),
             env={"CIFARLAB_MIRROR": "http://nonexistent.invalid/"})  # fmt: skip
    assert time.monotonic() - start < 15
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert "cannot download http://nonexistent.invalid/cifar-10-python.tar.gz" in r.stderr
    assert "CIFARLAB_DATA" in r.stderr


@pytest.mark.parametrize("dataset,fmt", [("cifar10", "python"), ("cifar100", "binary")])
def test_cli_download_then_load(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture,
    dataset: str, fmt: str,
) -> None:  # fmt: skip
    """The whole path a new user takes: `cifarlab download` fetches an archive in the official
    layout from a (local) server, checks its md5, unpacks it; `load_dataset` then reads it.
    The small archive's md5 stands in for the official one, which only the real file has."""
    import dataclasses

    from cifarlab import load_dataset
    from cifarlab.cli import main
    from fakedata import make_tar_gz, write_cifar10_python, write_cifar100_binary

    info = get_info(dataset)
    archive = info.archives[fmt]
    made = tmp_path / "made"
    write = write_cifar10_python if dataset == "cifar10" else write_cifar100_binary
    expected = write(made)
    data = make_tar_gz(made / archive.folder, tmp_path / archive.filename).read_bytes()
    server.files[f"/m/{archive.filename}"] = data
    monkeypatch.setitem(info.archives, fmt, dataclasses.replace(archive, md5=md5(data)))
    root = tmp_path / "data"
    args = ["download", "--dataset", dataset, "--format", fmt, "--root", str(root),
            "--url", server.url("/m/")]  # fmt: skip
    assert main(args) == 0
    assert str(root / archive.folder) in capsys.readouterr().out
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "md5 sums differ": these are not the official files
        ds = load_dataset(dataset, root, val_size=0)
    assert ds.meta["checksum"]["status"] == ("differs" if fmt == "python" else "unverified")
    assert ds.train.images.shape[1:] == (32, 32, 3)
    assert ds.train.labels.tolist() == expected["train_y"].tolist()
    assert main(args) == 0  # already there: nothing fetched again
    assert len(server.requests) == 1


# --------------------------------------------------------------------------- hostile input


def one_line(e: BaseException) -> str:
    msg = str(e)
    assert "\n" not in msg and "\r" not in msg, msg
    return msg


def test_md5sum_refuses_a_fifo_and_a_huge_sparse_file(tmp_path: Path) -> None:
    fifo = tmp_path / "data_batch_1"
    os.mkfifo(fifo)
    with no_hang(), pytest.raises(DataError) as info:
        md5sum(fifo)
    assert str(fifo) in one_line(info.value) and "named pipe" in str(info.value)
    sparse = tmp_path / "cifar-10-python.tar.gz"
    with open(sparse, "wb") as f:
        f.truncate(300 << 30)  # 300 GB, no block on disk
    t0 = time.monotonic()
    with pytest.raises(DataError) as info:
        md5sum(sparse)
    assert time.monotonic() - t0 < 1  # refused by its size, not read
    msg = one_line(info.value)
    assert str(sparse) in msg and "over the limit" in msg and "CIFARLAB_MAX_DATA_FILE_MB" in msg
    with pytest.raises(DownloadError):  # the error class is the caller's
        md5sum(sparse, error=DownloadError)


def test_a_trickling_server_is_dropped_below_the_minimum_rate(
    server: Server, tmp_path: Path
) -> None:
    """A server below the minimum rate is dropped after the rate window, and by default not
    tried again (each try would cost another window), whatever ``retries`` says."""
    server.mode = "trickle"
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), retries=4, min_rate=1000,
                      rate_window=1.0, **FAST)  # fmt: skip
    assert time.monotonic() - t0 < 3
    msg = one_line(info.value)
    assert "below the minimum of" in msg and "CIFARLAB_DOWNLOAD_MIN_RATE_KBS" in msg
    assert "after 1 attempt" in msg and "not tried again" in msg
    assert server.url("/a.bin") in msg and len(server.requests) == 1
    assert not dest.exists()
    assert "the partial file is kept" in msg  # and it says so


def test_a_slow_drop_says_why_before_it_is_retried(
    server: Server, tmp_path: Path, capfd: pytest.CaptureFixture[str]
) -> None:
    """With ``slow_retries=1``: one more try, which resumes the bytes of the first; before
    it, a line on stderr says why the first was dropped."""
    server.mode = "trickle"
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), retries=4, slow_retries=1,
                      min_rate=1000, rate_window=1.0, backoff=0.01, timeout=5.0)  # fmt: skip
    msg = one_line(info.value)
    assert "after 2 attempts" in msg and "not tried again" in msg
    assert len(server.requests) == 2
    assert server.ranges[1] is not None  # the second attempt resumed the bytes of the first
    err = capfd.readouterr().err
    assert "a.bin: attempt 1 of 5 failed: the server sent" in err
    assert "below the minimum of" in err and "trying again in 0.01 s" in err


def test_the_deadline_bounds_the_whole_download(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fast enough for the minimum rate, but never done: the deadline ends it, whatever the
    retries; the default deadline comes from the environment."""
    server.mode = "trickle"
    server.trickle_every = 0.05
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    monkeypatch.setenv("CIFARLAB_DOWNLOAD_DEADLINE_S", "1.5")
    t0 = time.monotonic()
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, None, retries=5, min_rate=1, **FAST)
    assert time.monotonic() - t0 < 4
    msg = one_line(info.value)
    assert "deadline of 1.5 s" in msg and "CIFARLAB_DOWNLOAD_DEADLINE_S" in msg
    assert "the partial file is kept" in msg and NETWORK_HINT not in msg
    assert len(server.requests) == 1 and not dest.exists()


def test_a_bad_limit_in_the_environment_is_named(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("CIFARLAB_DOWNLOAD_MIN_RATE_KBS", "fast")
    with pytest.raises(CifarlabError, match="CIFARLAB_DOWNLOAD_MIN_RATE_KBS='fast'"):
        download_file(server.url("/a.bin"), tmp_path / "a.bin", None, **FAST)


@pytest.mark.parametrize("kind", ["symlink", "dangling-symlink", "fifo", "folder"])
def test_a_part_file_that_is_not_a_regular_file_is_never_written_through(
    server: Server, tmp_path: Path, kind: str
) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "data" / "a.bin"
    dest.parent.mkdir()
    part = dest.with_name("a.bin.part")
    victim = tmp_path / "victim"
    if kind == "symlink":
        victim.write_bytes(b"precious")
        part.symlink_to(victim)
    elif kind == "dangling-symlink":
        part.symlink_to(victim)
    elif kind == "fifo":
        os.mkfifo(part)
    else:
        part.mkdir()
    with no_hang(), pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    msg = one_line(info.value)
    assert str(part) in msg and "remove it" in msg
    assert server.requests == []  # refused before any request
    assert not dest.exists()
    if kind == "symlink":
        assert victim.read_bytes() == b"precious" and part.is_symlink()
    if kind == "dangling-symlink":
        assert not victim.exists()


def test_the_part_file_is_opened_without_following_links(
    server: Server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link that appears between the check and the open (a race) is refused by the open
    itself (O_NOFOLLOW)."""
    from cifarlab.data import download

    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    part = dest.with_name("a.bin.part")
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    real = download._part_size

    def racing(p: Path) -> int:
        n = real(p)
        if not p.is_symlink():
            p.symlink_to(victim)
        return n

    monkeypatch.setattr(download, "_part_size", racing)
    with pytest.raises(DownloadError, match="symbolic link"):
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert victim.read_bytes() == b"precious" and part.is_symlink()


@pytest.mark.parametrize("kind", ["fifo", "folder"])
def test_a_destination_that_is_not_a_file_is_refused(
    server: Server, tmp_path: Path, kind: str
) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    os.mkfifo(dest) if kind == "fifo" else dest.mkdir()
    with no_hang(), pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    msg = one_line(info.value)
    assert str(dest) in msg and "not a regular file" in msg
    assert server.requests == [] and not dest.with_name("a.bin.part").exists()


def test_a_huge_sparse_destination_is_replaced_without_hashing(
    server: Server, tmp_path: Path
) -> None:
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    with open(dest, "wb") as f:
        f.truncate(300 << 30)
    t0 = time.monotonic()
    download_file(server.url("/a.bin"), dest, md5(PAYLOAD), **FAST)
    assert time.monotonic() - t0 < 2
    assert dest.read_bytes() == PAYLOAD


@pytest.mark.parametrize(
    "url,why",
    [
        ("not a url", "spaces"),
        ("not-a-url", "must start with http:// or https://"),
        ("ftp://example.com/x", "scheme 'ftp' is not supported"),
        ("file:///etc/passwd", "scheme 'file' is not supported"),
        ("http://", "names no host"),
        ("http:///x.tar.gz", "names no host"),
        ("http://example.com:99999/x", "not a URL"),
        ("http://example.com/\nx", "control characters"),
        ("", "empty"),
    ],
)
def test_bad_urls_are_one_line_errors(tmp_path: Path, url: str, why: str) -> None:
    with pytest.raises(DownloadError) as info:
        download_file(url, tmp_path / "x", None, **FAST)
    msg = one_line(info.value)
    assert why in msg and msg.startswith("bad download URL")
    assert not list(tmp_path.iterdir())  # nothing made


def test_bad_mirror_urls_are_refused_before_anything(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with pytest.raises(DownloadError, match=r"bad download URL 'not a url': .*spaces"):
        download_dataset("cifar10", tmp_path / "d", base_url="not a url", **FAST)
    monkeypatch.setenv("CIFARLAB_MIRROR", "gopher://x/")
    with pytest.raises(DownloadError, match=r"\(from CIFARLAB_MIRROR\): the scheme 'gopher'"):
        download_dataset("cifar10", tmp_path / "d", **FAST)
    assert not (tmp_path / "d").exists()


def test_a_long_reason_from_the_server_stays_one_short_line(server: Server, tmp_path: Path) -> None:
    server.mode = "long_reason"
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(DownloadError, match="HTTP 404 Not Found very") as info:
        download_file(server.url("/a.bin"), tmp_path / "a.bin", None, **FAST)
    assert len(one_line(info.value)) < 300 and "\t" not in str(info.value)


@pytest.mark.parametrize("mode", ["normal", "no_length"])
def test_a_file_over_the_size_limit_is_refused(server: Server, tmp_path: Path, mode: str) -> None:
    """Told in advance (Content-Length) or found while it arrives: refused, nothing kept."""
    server.mode = mode
    server.files["/a.bin"] = PAYLOAD
    dest = tmp_path / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, None, max_bytes=100_000, **FAST)
    msg = one_line(info.value)
    assert "the limit of 100,000 bytes" in msg and "CIFARLAB_MAX_DATA_FILE_MB" in msg
    assert len(server.requests) == 1  # not retried
    assert no_leftovers(dest)


def test_a_full_disk_is_not_a_network_error(server: Server, tiny_disk: Path) -> None:
    server.files["/a.bin"] = PAYLOAD  # 200 KB into 64 KB
    dest = tiny_disk / "a.bin"
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), dest, md5(PAYLOAD), retries=3, **FAST)
    msg = one_line(info.value)
    assert "disk is full" in msg and str(tiny_disk) in msg
    assert NETWORK_HINT not in msg and "no network" not in msg and "attempt" not in msg
    assert len(server.requests) == 1  # a full disk is not retried
    assert list(tiny_disk.iterdir()) == []  # the partial file is gone: the space is free


def test_a_read_only_folder_is_said_so(server: Server, read_only_dir: Path) -> None:
    server.files["/a.bin"] = PAYLOAD
    with pytest.raises(DownloadError) as info:
        download_file(server.url("/a.bin"), read_only_dir / "a.bin", None, **FAST)
    msg = one_line(info.value)
    assert "read-only file system" in msg and NETWORK_HINT not in msg
    assert list(read_only_dir.iterdir()) == []
