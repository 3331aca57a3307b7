"""A corpus of hostile inputs for every CLI command that reads what a user hands over.

Each :class:`Case` is one command (``argv``, run with the case's folder as the working
directory) over a folder that :func:`build` fills from a template (a tiny trained run ``run/``,
a tiny CIFAR-10 in the python layout ``data/``, a good image ``good.png``) and then spoils: bombs,
FIFOs, sparse files, symbolic links, truncated and mutated files of every format cifarlab reads,
ill-typed run-folder files, out-of-range options.

``tests/test_hostile.py`` runs them all; ``benchmarks/fuzz_long.py`` reuses the generators.
"""

from __future__ import annotations

import contextlib
import gzip
import io
import json
import os
import pickle
import shutil
import signal
import struct
import tarfile
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

import fakedata

SPARSE_SIZE = 300 << 30  # a 300 GB file that takes no disk space


@dataclass
class Case:
    name: str
    argv: list[str]
    setup: Callable[[Path], None]
    codes: tuple[int, ...] = (1,)  # what the command may end with
    allowed: tuple[str, ...] = ("cache",)  # paths (relative) the command may change
    env: dict[str, str] = field(default_factory=dict)
    check: Callable[[Path], None] | None = None  # more assertions after the run
    errors: int | None = 1  # how many `error:` lines stderr must have (None: at least one)


@contextlib.contextmanager
def no_hang(seconds: float = 5.0) -> Iterator[None]:
    """Fail (instead of blocking the test run) if the block takes longer than ``seconds``."""

    def alarm(signum: int, frame: object) -> None:
        raise TimeoutError(f"blocked for more than {seconds} s")

    old = signal.signal(signal.SIGALRM, alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


# --------------------------------------------------------------------------- file makers


def fifo(path: Path) -> None:
    path.unlink(missing_ok=True)
    os.mkfifo(path)


def sparse(path: Path, size: int = SPARSE_SIZE) -> None:
    path.unlink(missing_ok=True)
    with open(path, "wb") as f:
        f.truncate(size)


def truncate(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def mutate(data: bytes, seed: int, flips: int = 12) -> bytes:
    """``flips`` bytes of ``data`` replaced by random ones (the header spared a little less)."""
    rng = np.random.default_rng(seed)
    out = bytearray(data)
    for i in rng.integers(0, len(out), size=flips):
        out[i] = int(rng.integers(0, 256))
    return bytes(out)


def png_bytes(size: tuple[int, int] = (32, 32), seed: int = 0) -> bytes:
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, "PNG")
    return buf.getvalue()


def image_bytes(
    fmt: str, frames: int = 1, seed: int = 0, size: tuple[int, int] = (32, 32)
) -> bytes:
    """Random RGB frames of ``size`` (width, height) saved as ``fmt``."""
    rng = np.random.default_rng(seed)
    ims = [
        Image.fromarray(rng.integers(0, 256, size=(size[1], size[0], 3), dtype=np.uint8))
        for _ in range(frames)
    ]
    buf = io.BytesIO()
    if frames > 1:
        ims[0].save(buf, fmt, save_all=True, append_images=ims[1:])
    else:
        ims[0].save(buf, fmt)
    return buf.getvalue()


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_claiming(width: int, height: int, rows: int = 1) -> bytes:
    """A small, valid-looking PNG whose header claims ``width`` × ``height`` pixels (8-bit
    grey); its data holds ``rows`` rows of zeros, compressed: a decompression bomb when
    ``rows == height``."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    z, left, chunk = zlib.compressobj(9), (width + 1) * rows, bytes(1 << 20)
    parts = []
    while left > 0:  # compressed piece by piece: the zeros themselves are never in memory
        parts.append(z.compress(chunk[: min(left, len(chunk))]))
        left -= len(chunk)
    raw = b"".join(parts) + z.flush()
    return (
        b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", ihdr) + _chunk(b"IDAT", raw) + _chunk(b"IEND", b"")
    )


class _Reduce:
    """Pickles as ``func(*args)`` (optionally followed by ``__setstate__(state)``)."""

    def __init__(self, func, args, state=None) -> None:
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    try:
        from numpy._core.multiarray import _reconstruct
    except ImportError:  # numpy 1.x
        from numpy.core.multiarray import _reconstruct
    return _reconstruct


def pickle_batch(data, labels, protocol: int = 2) -> bytes:
    return pickle.dumps({b"data": data, b"labels": labels, b"batch_label": b"x"}, protocol)


def memo_bomb(depth: int = 3, width: int = 2000):
    """A list nested ``depth`` deep, each level ``width`` references to the one below: a few
    KB pickled, ``width ** depth`` elements for ``np.asarray``."""
    level: list = [7] * width
    for _ in range(depth - 1):
        level = [level] * width
    return level


def tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for info, data in members:
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buf.getvalue()


def member(name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE, link: str = "") -> tuple:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.size = len(data) if kind == tarfile.REGTYPE else 0
    info.linkname = link
    return info, (data if kind == tarfile.REGTYPE else None)


def zeros_gz_tar(name: str, megabytes: int) -> bytes:
    """A tar.gz with one member of ``megabytes`` MB of zeros (a few KB compressed)."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w") as tar:
        info = tarfile.TarInfo(name)
        info.size = megabytes << 20
        tar.addfile(info, io.BytesIO(bytes(info.size)))
    return gzip.compress(raw.getvalue(), 9)


# --------------------------------------------------------------------------- the template


def write_template(folder: Path, train_run: Callable[[Path, Path], None]) -> None:
    """``folder/data`` (tiny CIFAR-10, python layout), ``folder/run`` (trained and evaluated on
    it by ``train_run(data, out)``), ``folder/good.png``."""
    fakedata.write_cifar10_python(folder / "data", per_batch=20, test=20, seed=0)
    train_run(folder / "data", folder / "run")
    (folder / "good.png").write_bytes(png_bytes(seed=1))


def _py(case: Path, name: str = "data_batch_1") -> Path:
    return case / "data" / "cifar-10-batches-py" / name


def _run(case: Path, name: str) -> Path:
    return case / "run" / name


def _edit_json(path: Path, **changes) -> None:
    d = json.loads(path.read_text())
    d.update(changes)
    path.write_text(json.dumps(d))


def _deflated_padding(path: Path, padding: int) -> None:
    """The checkpoint rewritten with compressed entries, its pickle padded with ``padding``
    zero bytes: small on disk, huge once inflated."""
    import zipfile

    entries = []
    with zipfile.ZipFile(path) as z:
        for info in z.infolist():
            data = z.read(info)
            if info.filename.endswith("data.pkl"):
                data += bytes(padding)
            entries.append((info.filename, data))
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in entries:
            z.writestr(name, data)


def _edit_checkpoint(path: Path, edit: Callable[[dict], None]) -> None:
    import torch

    state = torch.load(path, map_location="cpu", weights_only=True)
    edit(state)
    torch.save(state, path)


def _binary_layout(case: Path) -> None:
    shutil.rmtree(case / "data")
    fakedata.write_cifar10_binary(case / "data", per_batch=20, test=20, seed=0)


def _image_folders(case: Path) -> None:
    shutil.rmtree(case / "data")
    root = case / "data"
    for split in ("train", "test"):
        for k, name in enumerate(fakedata.CIFAR10_CLASSES):
            (root / split / name).mkdir(parents=True)
            (root / split / name / "a.png").write_bytes(png_bytes(seed=k))


def _in_class_folder(case: Path) -> Path:
    return case / "data" / "train" / "cat" / "b.png"


def _archive(case: Path, data: bytes) -> None:
    shutil.rmtree(case / "data")
    (case / "data").mkdir()
    (case / "data" / "cifar-10-python.tar.gz").write_bytes(data)


def _no_extracted_leftovers(case: Path) -> None:
    extracted = case / "cache" / "extracted"
    left = [p for p in extracted.rglob("*")] if extracted.exists() else []
    assert not left, f"extraction left {left[:5]} behind"


def _nested(case: Path, depth: int = 1050) -> None:
    """Folders nested deeper than Python's recursion limit, an image at the bottom."""
    p = case / "deep"
    p.mkdir()
    for _ in range(depth):
        p = p / "d"
        os.mkdir(p)
    (p / "x.png").write_bytes(png_bytes())


def _still_a_device(path: str) -> Callable[[Path], None]:
    def check(case: Path) -> None:
        import stat

        assert stat.S_ISCHR(os.stat(path).st_mode), f"{path} is no longer a device"

    return check


def _target_untouched(case: Path) -> None:
    assert (case / "target.txt").read_text() == "keep me\n", "a link was written through"


def _link_to_target(rel: str) -> Callable[[Path], None]:
    def setup(case: Path) -> None:
        (case / "target.txt").write_text("keep me\n")
        link = case / rel
        link.unlink(missing_ok=True)
        os.symlink(case / "target.txt", link)

    return setup


# --------------------------------------------------------------------------- the cases


def data_cases() -> list[Case]:
    info = ["data", "info", "--root", "data"]
    pk = _reconstruct()
    cases = [
        Case("fifo-pickle", info, lambda c: fifo(_py(c))),
        Case("fifo-meta", info, lambda c: fifo(_py(c, "batches.meta"))),
        Case("sparse-pickle", info, lambda c: sparse(_py(c))),
        Case("truncated-pickle", info, lambda c: truncate(_py(c))),
        Case("empty-pickle", info, lambda c: _py(c).write_bytes(b"")),
        Case("pickle-runs-code", info,
             lambda c: _py(c).write_bytes(pickle.dumps(_Reduce(os.system, ("echo pwned",))))),
        Case("pickle-not-a-dict", info, lambda c: _py(c).write_bytes(pickle.dumps([1, 2]))),
        Case("pickle-reconstruct-bomb", info, lambda c: _py(c).write_bytes(
            pickle_batch(_Reduce(pk, (np.ndarray, (10**11,), b"b")), [0]))),
        Case("pickle-setstate-bomb", info, lambda c: _py(c).write_bytes(pickle_batch(
            _Reduce(pk, (np.ndarray, (0,), b"b"),
                    (1, (10**7, 3072), np.dtype("u1"), False, b"")), [0]))),
        Case("pickle-list-bomb-data", info,
             lambda c: _py(c).write_bytes(pickle_batch(memo_bomb(), [0] * 20))),
        Case("pickle-list-bomb-labels", info, lambda c: _py(c).write_bytes(
            pickle_batch(np.zeros((20, 3072), np.uint8), memo_bomb()))),
        Case("binary-truncated", info,
             lambda c: (_binary_layout(c), truncate(c / "data/cifar-10-batches-bin/data_batch_1.bin"))),
        Case("binary-fifo", info,
             lambda c: (_binary_layout(c), fifo(c / "data/cifar-10-batches-bin/data_batch_1.bin"))),
        Case("binary-sparse", info, lambda c: (
            _binary_layout(c), sparse(c / "data/cifar-10-batches-bin/test_batch.bin", 3073 << 30))),
        Case("binary-names-fifo", info,
             lambda c: (_binary_layout(c), fifo(c / "data/cifar-10-batches-bin/batches.meta.txt"))),
        Case("binary-names-not-utf8", info, lambda c: (
            _binary_layout(c),
            (c / "data/cifar-10-batches-bin/batches.meta.txt").write_bytes(b"\xff\xfe\x00cat\n" * 10))),
        Case("images-bomb-header", info, lambda c: (
            _image_folders(c), _in_class_folder(c).write_bytes(png_claiming(20000, 20000, 4)))),
        Case("images-fifo", info, lambda c: (_image_folders(c), fifo(_in_class_folder(c)))),
        Case("images-truncated", info, lambda c: (
            _image_folders(c), _in_class_folder(c).write_bytes(png_bytes()[:150]))),
        Case("images-wrong-size", info, lambda c: (
            _image_folders(c), _in_class_folder(c).write_bytes(png_bytes((33, 32))))),
        Case("images-text", info, lambda c: (
            _image_folders(c), _in_class_folder(c).write_bytes(b"not an image at all\n"))),
        Case("archive-zeros-bomb", info, lambda c: _archive(
            c, zeros_gz_tar("cifar-10-batches-py/data_batch_1", 24)),
             env={"CIFARLAB_MAX_EXTRACT_MB": "8"}, check=_no_extracted_leftovers),
        Case("archive-not-cifar", info,
             lambda c: _archive(c, tar_gz([member("notes/readme.txt", b"hello\n")])),
             check=_no_extracted_leftovers),
        Case("archive-symlink", info, lambda c: _archive(c, tar_gz(
            [member("cifar-10-batches-py/data_batch_1", kind=tarfile.SYMTYPE, link="/etc/passwd")]))),
        Case("archive-traversal", info,
             lambda c: _archive(c, tar_gz([member("../../escaped.txt", b"x")]))),
        Case("archive-truncated", info, lambda c: _archive(
            c, tar_gz([member("cifar-10-batches-py/readme", b"y" * 50000)])[:200]),
             check=_no_extracted_leftovers),
        Case("archive-random", info, lambda c: _archive(c, mutate(bytes(4096), 1, 4096))),
        Case("archive-fifo", info,
             lambda c: (_archive(c, b""), fifo(c / "data/cifar-10-python.tar.gz"))),
        Case("archive-sparse", info,
             lambda c: (_archive(c, b""), sparse(c / "data/cifar-10-python.tar.gz"))),
    ]  # fmt: skip
    for seed in range(3):
        cases.append(Case(f"pickle-mutated-{seed}", info, lambda c, s=seed: _py(c).write_bytes(
            mutate(_py(c).read_bytes()[:4000], s) + _py(c).read_bytes()[4000:]), codes=(0, 1),
            errors=None))  # fmt: skip
    return cases


def image_cases() -> list[Case]:
    def predict(*paths: str) -> list[str]:
        return ["predict", "run", *paths]

    def write(name: str, data: bytes | Callable[[], bytes]) -> Callable[[Path], None]:
        return lambda c: (c / name).write_bytes(data() if callable(data) else data)

    cases = [
        Case("zero-bytes", predict("x.png"), write("x.png", b"")),
        Case("text-as-png", predict("x.png"), write("x.png", b"hello\n")),
        Case("truncated-png", predict("x.png"), write("x.png", lambda: png_bytes((64, 64))[:300])),
        Case("fifo", predict("x.png"), lambda c: fifo(c / "x.png")),
        Case("fifo-in-folder", predict("imgs"),
             lambda c: ((c / "imgs").mkdir(), fifo(c / "imgs" / "x.png"))),
        Case("sparse", predict("x.png"), lambda c: sparse(c / "x.png")),
        Case("bomb-header", predict("x.png"), write("x.png", lambda: png_claiming(20000, 20000, 4))),
        Case("bomb-pixels", predict("x.png"), write("x.png", lambda: png_claiming(12000, 12000, 12000))),
        Case("one-by-3m", predict("x.png"), write("x.png", lambda: png_claiming(3_000_000, 1, 1))),
        Case("gif-frames", predict("x.gif"), write("x.gif", lambda: image_bytes("GIF", 300)),
             codes=(0, 1), errors=None),
        Case("good-and-bad", predict("good.png", "x.png"), write("x.png", b"\x89PNG\r\n"),
             check=None),
        Case("deep-folders", predict("deep"), _nested, codes=(0, 1), errors=None),
        Case("missing", predict("nowhere.png"), lambda c: None),
    ]  # fmt: skip
    for fmt, ext in (("GIF", "gif"), ("TIFF", "tif"), ("PNG", "png"), ("JPEG", "jpg"),
                     ("BMP", "bmp"), ("WEBP", "webp")):  # fmt: skip
        for seed in range(3):
            cases.append(Case(
                f"mutated-{ext}-{seed}", predict(f"x.{ext}"),
                write(f"x.{ext}", lambda f=fmt, s=seed: mutate(image_bytes(f, 2 if f in (
                    "GIF", "TIFF") else 1), s, 8)),
                codes=(0, 1), errors=None))  # fmt: skip
    return cases


def run_cases() -> list[Case]:
    """A run folder with one file spoiled, through every command that reads it."""
    readers = {
        "evaluate": ["evaluate", "run", "--root", "data", "--no-report"],
        "predict": ["predict", "run", "good.png"],
        "export": ["export", "run", "--format", "torchscript", "--out", "out.pt"],
        "resume": ["train", "--resume", "run", "--epochs", "2", "--root", "data"],
    }

    def config(**changes) -> Callable[[Path], None]:
        return lambda c: _edit_json(_run(c, "config.json"), **changes)

    def ckpt(edit: Callable[[dict], None], name: str = "best.pt") -> Callable[[Path], None]:
        return lambda c: _edit_checkpoint(_run(c, name), edit)

    def drop(key: str) -> Callable[[dict], None]:
        return lambda s: s.pop(key)

    def first_weight(value) -> Callable[[dict], None]:
        def edit(s: dict) -> None:
            k = next(iter(s["model"]))
            s["model"][k] = value(s["model"][k])

        return edit

    import torch

    spoils: dict[str, tuple[Callable[[Path], None], tuple[str, ...]]] = {
        "config-num-classes-str": (config(num_classes="10"), ("evaluate", "predict", "export", "resume")),
        "config-model-args-list": (config(model_args=[]), ("evaluate", "predict", "export", "resume")),
        "config-class-names-short": (config(class_names=["a", "b"]), ("evaluate", "predict", "export")),
        "config-class-names-ints": (config(class_names=list(range(10))), ("predict", "export")),
        "config-epochs-negative": (config(epochs=-3), ("resume",)),
        "config-unknown-model": (config(model="no_such_model"), ("evaluate", "predict", "export")),
        "config-not-json": (lambda c: _run(c, "config.json").write_text("{nope"), ("evaluate", "predict", "resume")),
        "config-array": (lambda c: _run(c, "config.json").write_text("[1, 2]"), ("predict", "resume")),
        "config-fifo": (lambda c: fifo(_run(c, "config.json")), ("evaluate", "predict", "export", "resume")),
        "config-sparse": (lambda c: sparse(_run(c, "config.json")), ("predict",)),
        "best-other-model": (ckpt(first_weight(lambda w: torch.zeros(*(d + 1 for d in w.shape)))),
                             ("evaluate", "predict", "export")),
        "best-int-weights": (ckpt(first_weight(lambda w: torch.zeros(w.shape, dtype=torch.int64))),
                             ("predict", "export")),
        "best-no-model": (ckpt(drop("model")), ("evaluate", "predict", "export")),
        "best-model-str": (ckpt(lambda s: s.update(model="weights")), ("predict", "export")),
        "best-truncated": (lambda c: truncate(_run(c, "best.pt")), ("evaluate", "predict", "export")),
        "best-random": (lambda c: _run(c, "best.pt").write_bytes(mutate(bytes(2000), 3, 2000)),
                        ("predict",)),
        "best-runs-code": (lambda c: _run(c, "best.pt").write_bytes(
            pickle.dumps({"model": _Reduce(os.system, ("echo pwned",))})), ("predict", "export")),
        "best-fifo": (lambda c: fifo(_run(c, "best.pt")), ("evaluate", "predict", "export")),
        "best-zip-bomb": (lambda c: _deflated_padding(_run(c, "best.pt"), 300 << 20), ("predict", "export")),
        "best-sparse": (lambda c: sparse(_run(c, "best.pt")), ("predict",)),
        "last-missing-keys": (ckpt(drop("optimizer"), "last.pt"), ("resume",)),
        "last-epoch-str": (ckpt(lambda s: s.update(epoch="1"), "last.pt"), ("resume",)),
        "metrics-row-list": (lambda c: _run(c, "metrics.jsonl").write_text("[1, 2]\n"), ("resume",)),
        "metrics-not-json": (lambda c: _run(c, "metrics.jsonl").write_text("{\n"), ("resume",)),
        "lock-symlink": (_link_to_target(".lock"), ("resume",)),
        "calibration-temperature-str": (lambda c: _run(c, "calibration.json").write_text(
            '{"version": 1, "checkpoints": {"best": {"temperature": "0.5", "checkpoint": "best", '
            '"checkpoint_epoch": 1}}}'), ("predict", "export", "evaluate")),
        "calibration-temperature-zero": (lambda c: _run(c, "calibration.json").write_text(
            '{"version": 1, "checkpoints": {"best": {"temperature": 0, "checkpoint": "best", '
            '"checkpoint_epoch": 1}}}'), ("predict", "export")),
        "calibration-not-json": (lambda c: _run(c, "calibration.json").write_text("{nope"),
                                 ("predict", "evaluate")),
        "calibration-fifo": (lambda c: fifo(_run(c, "calibration.json")), ("predict", "export")),
        "calibration-sparse": (lambda c: sparse(_run(c, "calibration.json")), ("predict",)),
    }  # fmt: skip
    # What --resume may repair (a torn last line, a planted link replaced by a real lock file)
    # and then go on: it may succeed, as long as no link is written through.
    repairable = {"metrics-not-json", "lock-symlink"}
    cases = []
    for name, (setup, commands) in spoils.items():
        for command in commands:
            check = _target_untouched if "symlink" in name else None
            extra = {"codes": (0, 1), "allowed": ("cache", "run")} if name in repairable else {}
            cases.append(Case(f"{name}/{command}", readers[command], setup, check=check, **extra))
    cases += robustness_record_cases()
    # outputs that are not regular files
    cases += [
        Case("export-to-dev-null", ["export", "run", "--format", "torchscript", "--out",
                                    "/dev/null"], lambda c: None, check=_still_a_device("/dev/null")),
        Case("export-to-fifo", ["export", "run", "--format", "torchscript", "--out", "out.pt"],
             lambda c: fifo(c / "out.pt")),
        Case("compare-to-dev-null", ["compare", "run", "--out", "/dev/null"],
             lambda c: None, check=_still_a_device("/dev/null")),
        Case("compare-eval-accuracy-str", ["compare", "run", "--out", "cmp.html"],
             lambda c: _edit_json(_run(c, "eval_test.json"), accuracy="0.9")),
        Case("compare-eval-not-object", ["compare", "run", "--out", "cmp.html"],
             lambda c: _run(c, "eval_test.json").write_text('"x"')),
        Case("compare-metrics-row-list", ["compare", "run", "--out", "cmp.html"],
             lambda c: _run(c, "metrics.jsonl").write_text("[1]\n")),
        Case("out-into-foreign-folder", ["train", "--recipe", "quick", "--epochs", "1", "--root",
                                         "data", "--out", "foreign"], _foreign_folder,
             check=_foreign_untouched),
    ]  # fmt: skip
    return cases


def _foreign_folder(case: Path) -> None:
    (case / "foreign").mkdir()
    (case / "foreign" / "config.json").write_text('{"name": "my other tool"}\n')
    (case / "foreign" / "metrics.jsonl").write_text('{"step": 1}\n')


def _foreign_untouched(case: Path) -> None:
    assert (case / "foreign" / "config.json").read_text() == '{"name": "my other tool"}\n'
    assert (case / "foreign" / "metrics.jsonl").read_text() == '{"step": 1}\n'


def option_cases() -> list[Case]:
    none = lambda c: None  # noqa: E731
    train = ["train", "--root", "data", "--out", "new", "--epochs", "1"]
    return [
        Case("seed-2**70", [*train, "--seed", str(2**70)], none),
        Case("seed-negative", [*train, "--seed", "-1"], none),
        Case("augment-translate-str", [*train, "--set", 'augment={"translate":"2"}'], none),
        Case("augment-float", [*train, "--set", "augment=2.5"], none),
        Case("model-args-num-classes", [*train, "--set", 'model_args={"num_classes":5}'], none),
        Case("lr-nan", [*train, "--lr", "nan"], none),
        Case("batch-size-zero", [*train, "--batch-size", "0"], none),
        Case("threads-negative", [*train, "--threads", "-1"], none),
        Case("val-size-negative", [*train, "--val-size", "-5"], none),
        Case("epochs-huge", [*train, "--epochs", str(10**30)], none),
        Case("budget-huge", ["train", "--root", "data", "--out", "new", "--budget", "1e30h"], none),
        Case("models-num-classes-huge", ["models", "--num-classes", str(10**12)], none),
        Case("models-num-classes-zero", ["models", "--num-classes", "0"], none),
        Case("download-not-a-url", ["download", "--root", "dl", "--url", "not a url"], none),
        Case("download-file-url", ["download", "--root", "dl", "--url", "ftp://"], none),
        Case("predict-top-k-negative", ["predict", "run", "good.png", "--top-k", "-1"], none),
        Case("predict-batch-size-zero", ["predict", "run", "good.png", "--batch-size", "0"], none),
        Case("evaluate-missing-run", ["evaluate", "nowhere"], none),
        Case("data-root-fifo", ["data", "info", "--root", "pipe"], lambda c: fifo(c / "pipe")),
        Case("robustness-severities-range", ["robustness", "run", "--severities", "0-9"], none),
        Case("robustness-unknown-corruption", ["robustness", "run", "--corruptions", "rain"], none),
        Case("seeds-huge", [*train, "--seeds", f"0-{10**30}"], none),
        Case("seeds-backwards", [*train, "--seeds", "9-0"], none),
        Case("parallel-zero", [*train, "--seeds", "0-1", "--parallel", "0"], none),
        # --config: whatever file it is handed
        Case("config-fifo", ["train", "--config", "exp.toml"], lambda c: fifo(c / "exp.toml")),
        Case("config-sparse", ["train", "--config", "exp.toml"], lambda c: sparse(c / "exp.toml")),
        Case(
            "config-binary",
            ["train", "--config", "exp.toml"],
            lambda c: (c / "exp.toml").write_bytes(bytes(range(256)) * 4),
        ),
        Case(
            "config-deep-toml",
            ["train", "--config", "exp.toml"],
            lambda c: (c / "exp.toml").write_text("augment = " + "[" * 5000 + "]" * 5000),
        ),
        Case(
            "config-deep-json",
            ["train", "--config", "x.json"],
            lambda c: (c / "x.json").write_text("[" * 100_000 + "]" * 100_000),
            check=lambda c: _said(c, "x.json: not valid JSON (nested too deeply)"),
        ),
        Case(
            "config-json-list",
            ["train", "--config", "x.json"],
            lambda c: (c / "x.json").write_text("[1, 2]"),
        ),
        Case(
            "config-model-args-huge",
            ["train", "--config", "exp.toml", "--root", "data"],
            lambda c: (c / "exp.toml").write_text(
                'model = "fastnet_s"\n[model_args]\nwidths = [100000, 100000, 100000]\n'
            ),
        ),
        Case("config-missing", ["train", "--config", "nowhere.toml"], none),
        # a spoiled group.json, resumed
        Case(
            "group-json-seeds-str", ["train", "--resume", "group"], lambda c: _group(c, seeds="0-4")
        ),
        Case(
            "group-json-seeds-twice",
            ["train", "--resume", "group"],
            lambda c: _group(c, seeds=[1, 1]),
        ),
        Case(
            "group-json-not-json", ["train", "--resume", "group"], lambda c: _group(c, text="{nope")
        ),
        Case(
            "group-json-fifo",
            ["train", "--resume", "group"],
            lambda c: (_group(c), fifo(c / "group" / "group.json")),
        ),
        Case(
            "group-json-config-unknown",
            ["train", "--resume", "group"],
            lambda c: _group(c, config={"learning_rate": 1}),
        ),
        # a spoiled group, compared or evaluated
        Case(
            "compare-group-seeds-str",
            ["compare", "group", "--out", "cmp.html"],
            lambda c: _group(c, seeds="0-4"),
        ),
        Case("evaluate-group-not-json", ["evaluate", "group"], lambda c: _group(c, text="{nope")),
        Case("compare-group-no-runs", ["compare", "group", "--out", "cmp.html"], _group),
        Case("evaluate-group-no-runs", ["evaluate", "group"], _group),
        Case(
            "compare-group-unevaluated",
            ["compare", "group", "--out", "cmp.html"],
            lambda c: _member(c, eval_test=None),
        ),
        Case(
            "compare-group-ece-text",
            ["compare", "group", "--out", "cmp.html"],
            lambda c: _member(c, ece="0.1"),
        ),
        Case(
            "compare-group-member-fifo",
            ["compare", "group", "--out", "cmp.html"],
            lambda c: (_member(c), fifo(c / "group" / "seed-0" / "eval_test.json")),
        ),
    ]


def _member(case: Path, eval_test: object = "keep", ece: object = None) -> None:
    """A group of one seed whose run is the template's run (its eval_test.json removed when
    ``eval_test`` is None, its calibration's ECE made ``ece``)."""
    _group(case, seeds=[0])
    member = case / "group" / "seed-0"
    shutil.copytree(case / "run", member, symlinks=True)
    if eval_test is None:
        (member / "eval_test.json").unlink()
    elif ece is not None:
        d = json.loads((member / "eval_test.json").read_text())
        d["calibration"] = {"after": {"ece": ece}}
        (member / "eval_test.json").write_text(json.dumps(d))


def _said(case: Path, text: str) -> None:
    """The command's one error line names the file and what is wrong with it."""
    err = (case / "_err").read_text()
    assert text in err, f"expected {text!r} in stderr"


def _group(case: Path, text: str | None = None, **changes: object) -> None:
    """A group folder whose group.json is spoiled by ``changes`` (or is ``text``)."""
    (case / "group").mkdir(exist_ok=True)
    good = {"kind": "cifarlab seed group", "seeds": [0, 1], "config": {"epochs": 1}}
    (case / "group" / "group.json").write_text(text or json.dumps({**good, **changes}))


# A robustness record as `cifarlab robustness` writes it, cut to the fields the report reads.
_FOG = {"family": "weather", "mean_accuracy": 0.4, "accuracy_by_severity": {"1": 0.4}}
ROBUSTNESS_RECORD = {
    "clean_accuracy": 0.5,
    "mean_corruption_accuracy": 0.4,
    "mean_corruption_error": 0.6,
    "split": "test",
    "images": 20,
    "split_images": 20,
    "tta": 0,
    "severities": [1],
    "corruptions": ["fog"],
    "worst": ["fog"],
    "per_corruption": {"fog": _FOG},
}


def _robustness_record(**changes) -> Callable[[Path], None]:
    text = json.dumps({**ROBUSTNESS_RECORD, **changes})
    return lambda c: _run(c, "robustness.json").write_text(text)


def _robustness_note(case: Path) -> None:
    text = _run(case, "report.html").read_text()
    assert "run cifarlab robustness again" in text, "the report does not say the record is bad"


def robustness_record_cases() -> list[Case]:
    """A spoiled robustness.json, read only for the report: the report is written, its
    robustness section says what is wrong (exit code 0)."""
    report = ["evaluate", "run", "--root", "data"]
    no_cell = {**_FOG, "accuracy_by_severity": {}}
    spoils = {
        "accuracy-str": _robustness_record(clean_accuracy="0.5"),
        "cell-missing": _robustness_record(per_corruption={"fog": no_cell}),
        "not-json": lambda c: _run(c, "robustness.json").write_text("{nope"),
        "fifo": lambda c: fifo(_run(c, "robustness.json")),
        "sparse": lambda c: sparse(_run(c, "robustness.json")),
    }
    written = {"codes": (0,), "allowed": ("cache", "run"), "check": _robustness_note}
    return [
        Case(f"robustness-{name}/report", report, setup, **written)
        for name, setup in spoils.items()
    ]


def all_cases() -> list[Case]:
    return data_cases() + image_cases() + run_cases() + option_cases()
