"""What ``cifarlab serve`` runs behind its HTTP layer: the served runs, their inference backend
(PyTorch, or the run's model in ONNX Runtime when that is faster here) and the micro-batcher
that puts requests arriving together through the model as one batch.

Nothing here knows about HTTP: :mod:`cifarlab.serve.app` decodes the uploads, hands 32×32
arrays to :meth:`Batcher.predict` and turns the probabilities into JSON.
"""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import io
import json
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from cifarlab import __version__
from cifarlab.data.cache import cache_dir
from cifarlab.errors import CifarlabError, one_line
from cifarlab.evaluate.inference import TTAModel
from cifarlab.export import Preprocessed, _example, _write_onnx, metadata
from cifarlab.files import atomic_write
from cifarlab.predict import (
    DEFAULT_RESIZE,
    ORIENTATION,
    ImageError,
    Run,
    decode_image,
    resize_to_32,
    shown,
)
from cifarlab.runs import RunFolder

BACKENDS = ("auto", "torch", "onnx")
# bumped whenever the exported graph changes: the cached ONNX files of older graphs are not used
GRAPH_VERSION = 3


# --------------------------------------------------------------------------- decoding


class PixelBudget:
    """The pixels one request may still decode, shared by the threads decoding its files."""

    def __init__(self, pixels: float) -> None:
        self.left = pixels
        self.lock = threading.Lock()

    def spend(self, name: str, size: tuple[int, int]) -> None:
        w, h = size
        with self.lock:
            if w * h > self.left:
                raise ImageError(
                    f"{name}: refused: its {w:,}×{h:,} pixels pass what one request may decode "
                    "(--max-request-megapixels, the request's images together)"
                )
            self.left -= w * h


class Busy(ImageError):
    """The server's memory budget is spent for now: the request is answered 503. (An
    :class:`ImageError`, so that the decoder lets it through unchanged.)"""


class MemoryBudget:
    """The bytes the server holds for requests, all clients and threads together (the CLI's
    ``--max-pending-mb``): each body from its first byte until its decoding ends, and each
    image's decoding by what it allocates (:func:`decode_cost`). :meth:`take` says no past the
    limit: the request is answered 503 and gives back what it held."""

    def __init__(self, limit: float) -> None:
        self.limit = int(limit)
        self.used = 0
        self.lock = threading.Lock()

    def take(self, n: int) -> bool:
        with self.lock:
            if self.used + n > self.limit:
                return False
            self.used += n
            return True

    def give(self, n: int) -> None:
        with self.lock:
            self.used -= n


class Later(ImageError):
    """A big image whose turn has not come (:class:`BigLane`): decoded on a later try."""


# An image over this many pixels decodes in a quarter of a second or more (a 64-megapixel
# 16-bit PNG: about a second on 2 cores): such images take turns on fewer threads than the
# pool has, so a small image never waits for them.
BIG_PIXELS = 16_000_000


class BigLane:
    """Big images (over :data:`BIG_PIXELS`) are decoded on at most ``slots`` threads at
    once: with ``decode_threads - 1`` slots, one decoding thread is always free for small
    images whatever clients send. A thread never waits for a slot: the image is handed back
    (:class:`Later`) and tried again."""

    def __init__(self, slots: int) -> None:
        self.slots = threading.Semaphore(max(1, slots))

    def enter(self) -> bool:
        return self.slots.acquire(blocking=False)

    def leave(self) -> None:
        self.slots.release()


class Held:
    """What one request holds of the :class:`MemoryBudget` (its body, copies of it): taken as
    it arrives, given back whole when the request's decoding ends (or it fails)."""

    def __init__(self, budget: MemoryBudget) -> None:
        self.budget = budget
        self.n = 0

    def take(self, n: int) -> None:
        if not self.budget.take(n):
            raise Busy
        self.n += n

    def give(self, n: int) -> None:
        n = min(n, self.n)
        self.budget.give(n)
        self.n -= n

    def give_all(self) -> None:
        self.give(self.n)


# What decoding an image allocates at its peak, in bytes per pixel: Pillow's own image (RGB
# and CMYK take 4 bytes a pixel), the decoder's own buffers, the copies the conversion to 8-bit
# RGB makes (predict.to_rgb) and the 32×32 resize. Measured on 64-megapixel images (peak RSS;
# BENCHMARKS.md, "serve against hostile clients"): RGB 4.0 (baseline JPEG, PNG), palette with
# transparency 5.3, 16-bit grey 7.0, progressive JPEG 7.0, CMYK 8.0, an EXIF rotation 8.0
# (one more copy), with alpha 8.3, 32-bit grey 12.0, WebP 16.0-16.3 (libwebp's buffers and
# Pillow's copy); each rounded up here.
def decode_cost(im: Image.Image) -> int:
    """The bytes decoding this opened image (its header read) may hold at its peak."""
    mode = im.mode
    if mode == "RGB":
        per = 5
    elif mode.startswith("I;16"):
        per = 8
    elif mode.startswith(("I", "F")):
        per = 13
    else:  # L, 1, P, LA, PA, RGBA, CMYK, YCbCr, LAB, HSV …
        per = 9
    if im.format == "WEBP":
        per += 12
    if im.format == "JPEG" and ("progressive" in im.info or "progression" in im.info):
        per += 4
    if im.getexif().get(ORIENTATION, 1) != 1:
        per += 4
    return im.size[0] * im.size[1] * per


def decode_upload(
    data: bytes,
    name: str,
    resize: str = DEFAULT_RESIZE,
    budget: PixelBudget | None = None,
    memory: MemoryBudget | None = None,
    lane: BigLane | None = None,
) -> np.ndarray:
    """One uploaded file as the 32×32×3 uint8 array the model sees: the decoder and the resize
    rule of ``cifarlab predict`` (:func:`cifarlab.predict.decode_image`), from memory.
    ``budget``: the pixels the request may still decode: an image whose header says more is
    refused before it is decoded. ``memory``: the server's :class:`MemoryBudget`, from which
    the decoding's bytes are taken (from the header, before decoding: :class:`Busy` if they
    are not there now, an :class:`ImageError` if the whole budget is too small) and given
    back when it ends. ``lane``: a big image waits for its turn (:class:`Later`)."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes): no image")
    taken = 0
    entered = False

    def check(im: Image.Image) -> None:
        nonlocal taken, entered
        size = im.size
        if lane is not None and size[0] * size[1] > BIG_PIXELS:
            if not lane.enter():
                raise Later
            entered = True
        if budget is not None:
            budget.spend(name, size)
        if memory is not None:
            cost = decode_cost(im)
            if cost > memory.limit:
                raise ImageError(
                    f"{name}: refused: decoding its {size[0]:,}×{size[1]:,} pixels ({im.mode}) "
                    f"takes {cost / 2**20:,.0f} MB, more than the server's memory budget "
                    "(--max-pending-mb)"
                )
            if not memory.take(cost):
                raise Busy
            taken = cost

    try:
        im = decode_image(io.BytesIO(data), name, check)
        return np.asarray(resize_to_32(im, resize), dtype=np.uint8)
    finally:
        if memory is not None and taken:
            memory.give(taken)
        if entered:
            assert lane is not None
            lane.leave()


def png_data_uri(image: np.ndarray) -> str:
    """A 32×32×3 uint8 image as a ``data:image/png;base64,…`` URI (what the model saw)."""
    buf = io.BytesIO()
    Image.fromarray(image, "RGB").save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


# --------------------------------------------------------------------------- backends


class TorchBackend:
    """The run as ``cifarlab predict`` runs it (:class:`cifarlab.predict.Run`): its
    normalization, precision and test-time augmentation; the same probabilities."""

    name = "torch"

    def __init__(self, run: Run) -> None:
        self.run = run

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        return torch.softmax(self.run.logits(batch), dim=1).numpy()


class OnnxBackend:
    """The run's model, with its normalization and test-time augmentation in the graph, in
    ONNX Runtime (float32, CPU). The graph is exported once per checkpoint into the cache
    (``$CIFARLAB_CACHE/serve/``)."""

    name = "onnx"

    def __init__(self, run: Run, threads: int) -> None:
        import onnxruntime as ort  # the optional extra (cifarlab[export]): only when it is used

        path = _onnx_graph(run)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        opts.log_severity_level = 3
        self.session = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        self.path = path

    def __call__(self, batch: np.ndarray) -> np.ndarray:
        x = np.ascontiguousarray(batch, dtype=np.uint8)
        return self.session.run(["probabilities"], {"images": x})[0]


def _onnx_graph(run: Run) -> Path:
    """The run's model as an ONNX file in the cache (:func:`_graph_path`): exported on the
    first start, reused after."""
    out = _graph_path(run)
    if out.is_file():
        return out
    model = copy.deepcopy(run.model).float().cpu().eval()
    temperature = run.temperature if run.calibrated else 1.0
    tta = TTAModel(model, run.tta)
    wrapped = Preprocessed(tta, run.mean, run.std, "uint8", temperature).eval()
    meta = metadata(
        run.config,
        run.class_names,
        "uint8",
        run.mean,
        run.std,
        temperature,
        run.calibration_note,
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: _write_onnx(wrapped, _example("uint8"), meta, tmp))
    return out


def _graph_path(run: Run) -> Path:
    """Where the run's graph is cached, keyed by the checkpoint's bytes, the TTA level, the
    temperature and the versions."""
    import onnxruntime as ort  # the optional extra (cifarlab[export]): only when it is used

    ckpt = run.opened.folder.checkpoint_path(run.opened.checkpoint)
    h = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    temperature = run.temperature if run.calibrated else None
    versions = [__version__, torch.__version__, ort.__version__]
    key = json.dumps([GRAPH_VERSION, h.hexdigest(), run.tta, temperature, *versions])
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    return cache_dir() / "serve" / f"{run.name[:40]}-{digest}.onnx"


def _best_time(fn: Callable[[np.ndarray], Any], batch: np.ndarray, repeats: int = 5) -> float:
    fn(batch)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn(batch)
        best = min(best, time.perf_counter() - t)
    return best


# --------------------------------------------------------------------------- a served run


@dataclass
class ServedRun:
    """One run folder, loaded and ready: its backend and what ``/v1/models`` says of it."""

    name: str
    run: Run
    backend: Callable[[np.ndarray], np.ndarray]
    backend_name: str
    backend_note: str
    test_accuracy: float | None

    @property
    def class_names(self) -> list[str]:
        return self.run.class_names

    def describe(self) -> dict[str, Any]:
        cfg = self.run.config
        return {
            "name": self.name,
            "model": cfg.get("model"),
            "recipe": cfg.get("recipe"),
            "dataset": cfg.get("dataset"),
            "classes": list(self.class_names),
            "test_accuracy": self.test_accuracy,
            "checkpoint": self.run.opened.checkpoint,
            "epoch": self.run.checkpoint_epoch,
            "tta": self.run.tta,
            "calibration": {
                "calibrated": self.run.calibrated,
                "temperature": self.run.temperature if self.run.calibrated else None,
                "note": self.run.calibration_note,
            },
            "precision": str(self.run.autocast).replace("torch.", "")
            if self.run.autocast
            else "float32",
            "backend": self.backend_name,
            "backend_note": self.backend_note,
            "input": {
                "formats": ["PNG", "JPEG", "BMP", "WebP", "GIF (first frame)", "TIFF"],
                "resize": "shorter side to 32 px (Lanczos), centre 32×32 crop; transparency "
                "onto white",
                "size": [32, 32, 3],
            },
        }


def load_served(
    path: str | os.PathLike,
    *,
    backend: str = "auto",
    checkpoint: str = "best",
    threads: int | None = None,
    tta: int | None = None,
    calibrated: bool = True,
) -> ServedRun:
    """Open one run for serving (a broken or missing run folder is a one-line
    :class:`CifarlabError`) and choose its backend: ``torch``, ``onnx``, or ``auto`` (ONNX
    Runtime when it is installed, the run evaluates in float32 so the probabilities are
    ``cifarlab predict``'s, and it is faster here on batches of 1 and 64; else PyTorch).
    ``tta``: a test-time augmentation level instead of the run's (0 none, 1 mirror, 2 mirror +
    1-px shifts). ``calibrated``: the run's fitted temperature applied (its default)."""
    if backend not in BACKENDS:
        raise CifarlabError(f"--backend must be one of {', '.join(BACKENDS)}, got {backend!r}")
    run = Run(path, checkpoint, "cpu", calibrated=calibrated)
    if tta is not None:  # instead of the run's own test-time augmentation
        run.tta = tta
    accuracy = _test_accuracy(run)
    served = ServedRun(run.name, run, TorchBackend(run), "torch", "PyTorch", accuracy)
    try:
        _choose_backend(served, path, backend, threads)
    except _KeepTorch as e:
        served.backend_note = str(e)
    return served


def _test_accuracy(run: Run) -> float | None:
    try:
        return float(RunFolder(run.path).read_eval("test")["accuracy"])
    except CifarlabError:
        return None  # not evaluated yet: the page says "not evaluated"


class _KeepTorch(Exception):
    """The run stays on PyTorch; the message says why (its backend note)."""


def _choose_backend(
    served: ServedRun, path: str | os.PathLike, backend: str, threads: int | None
) -> None:
    """Put ``served`` on ONNX Runtime when ``backend`` asks for it (``onnx``) or it is exact
    and faster (``auto``); :class:`_KeepTorch` when the run stays on PyTorch; with ``onnx``, a
    :class:`CifarlabError` when ONNX Runtime cannot run it."""
    if backend == "torch":
        raise _KeepTorch("PyTorch (chosen with --backend torch)")
    _check_onnx_runs(served.run, backend)
    torch_backend = served.backend
    onnx_backend = _onnx_backend(served.run, path, backend, threads)
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    diff = _difference(onnx_backend, torch_backend, probe, path, backend)
    if backend == "onnx":
        served.backend, served.backend_name = onnx_backend, "onnx"
        served.backend_note = f"ONNX Runtime (chosen with --backend onnx; max |Δp| {diff:.1e})"
        return
    t = {
        f"{b}_batch{n}_ms": 1e3 * _best_time(fn, probe[:n])
        for b, fn in (("torch", torch_backend), ("onnx", onnx_backend))
        for n in (1, 64)
    }
    if diff > 1e-4:
        raise _KeepTorch(f"PyTorch (ONNX Runtime's probabilities differ by {diff:.1e})")
    if _cost(t, "onnx") < _cost(t, "torch"):
        served.backend, served.backend_name = onnx_backend, "onnx"
        served.backend_note = (
            f"ONNX Runtime: faster here (batch 1: {t['onnx_batch1_ms']:.2f} ms vs PyTorch "
            f"{t['torch_batch1_ms']:.2f} ms; batch 64: {t['onnx_batch64_ms']:.1f} vs "
            f"{t['torch_batch64_ms']:.1f} ms)"
        )
    else:
        served.backend_note = (
            f"PyTorch: faster here (batch 1: {t['torch_batch1_ms']:.2f} ms vs ONNX Runtime "
            f"{t['onnx_batch1_ms']:.2f} ms; batch 64: {t['torch_batch64_ms']:.1f} vs "
            f"{t['onnx_batch64_ms']:.1f} ms)"
        )


def _cost(t: dict[str, float], backend: str) -> float:
    """What ``auto`` compares: a batch of 1 plus an eighth of a batch of 64 (ms)."""
    return t[f"{backend}_batch1_ms"] + t[f"{backend}_batch64_ms"] / 8


def _check_onnx_runs(run: Run, backend: str) -> None:
    """ONNX Runtime is installed (``--backend onnx`` without it: an error) and, for ``auto``,
    the run evaluates in float32 (what ONNX Runtime runs on a CPU)."""
    try:
        import onnxruntime  # noqa: F401 - the optional extra (cifarlab[export]): is it there
    except ImportError:
        if backend == "onnx":
            raise CifarlabError(
                "--backend onnx needs ONNX Runtime: pip install 'cifarlab[export]'"
            ) from None
        raise _KeepTorch("PyTorch (ONNX Runtime is not installed)") from None
    if backend == "auto" and run.autocast is not None:
        raise _KeepTorch(
            f"PyTorch: the run evaluates in {str(run.autocast).replace('torch.', '')}, which "
            "ONNX Runtime does not run on this CPU (float32 would change the probabilities)"
        )


def _onnx_backend(
    run: Run, path: str | os.PathLike, backend: str, threads: int | None
) -> OnnxBackend:
    """The run in ONNX Runtime (its graph exported on the first start)."""
    try:
        return OnnxBackend(run, threads or torch.get_num_threads())
    except CifarlabError:
        raise
    except Exception as e:  # noqa: BLE001 - a model the exporter cannot take: PyTorch then
        if backend == "onnx":
            raise CifarlabError(
                f"{shown(path)}: cannot export the model to ONNX "
                f"({type(e).__name__}: {one_line(e)})"
            ) from None
        raise _KeepTorch(f"PyTorch (the ONNX export failed: {type(e).__name__})") from None


def _difference(
    onnx_backend: OnnxBackend,
    torch_backend: Callable[[np.ndarray], np.ndarray],
    probe: np.ndarray,
    path: str | os.PathLike,
    backend: str,
) -> float:
    """The largest difference between the two backends' probabilities on ``probe``."""
    try:
        return float(np.abs(onnx_backend(probe) - torch_backend(probe)).max())
    except Exception as e:  # noqa: BLE001 - a graph ONNX Runtime cannot run: PyTorch then
        if backend == "onnx":
            raise CifarlabError(
                f"{shown(path)}: ONNX Runtime cannot run the exported model ({type(e).__name__})"
            ) from None
        raise _KeepTorch(
            f"PyTorch (ONNX Runtime failed on the model: {type(e).__name__})"
        ) from None


# --------------------------------------------------------------------------- batching


class Batcher:
    """Requests arriving together go through the model as one batch.

    The first request waits at most ``max_wait_ms`` for others, and only when others are on
    their way (``in_flight()``: requests the server is receiving or decoding, beyond this
    batch's); never when the batch is full already, nor after the model was busy (what
    arrived meanwhile goes at once, in the next batch). A lone client never waits;
    at most ``max_batch`` images per batch (a request with more runs alone). Inference runs in
    one thread of its own, off the event loop. ``enabled=False``: each request runs alone.
    """

    def __init__(
        self,
        infer: Callable[[np.ndarray], np.ndarray],
        *,
        max_batch: int = 64,
        max_wait_ms: float = 2.0,
        enabled: bool = True,
        executor: ThreadPoolExecutor,
        in_flight: Callable[[], int] | None = None,
    ) -> None:
        self.infer = infer
        self.max_batch = max_batch
        self.max_wait = max_wait_ms / 1000
        self.enabled = enabled
        self.executor = executor
        self.in_flight = in_flight
        self.queue: asyncio.Queue | None = None
        self.task: asyncio.Task | None = None
        self.batches = 0
        self.images = 0

    async def predict(self, images: np.ndarray) -> np.ndarray:
        loop = asyncio.get_running_loop()
        if not self.enabled:
            self.batches += 1
            self.images += len(images)
            return await loop.run_in_executor(self.executor, self.infer, images)
        if self.task is None:
            self.queue = asyncio.Queue()
            self.task = loop.create_task(self._loop())
        fut: asyncio.Future = loop.create_future()
        assert self.queue is not None
        self.queue.put_nowait((images, fut))
        return await fut

    def _take(self, items: list, n: int) -> tuple[int, tuple | None]:
        assert self.queue is not None
        while n < self.max_batch and not self.queue.empty():
            item = self.queue.get_nowait()
            if n + len(item[0]) > self.max_batch:
                return n, item  # the next batch's first
            items.append(item)
            n += len(item[0])
        return n, None

    async def _loop(self) -> None:
        assert self.queue is not None
        loop = asyncio.get_running_loop()
        carry: tuple | None = None
        while True:
            first = carry if carry is not None else await self.queue.get()
            items = [first]
            n, carry = self._take(items, len(first[0]))
            # wait only for a request that came alone to an idle model: what piled up while
            # the model was busy goes at once
            if (
                len(items) == 1
                and carry is None
                and n < self.max_batch
                and self.max_wait > 0
                and (self.in_flight is None or self.in_flight() > 1)
            ):
                await asyncio.sleep(self.max_wait)
                n, carry = self._take(items, n)
            batch = items[0][0] if len(items) == 1 else np.concatenate([i[0] for i in items])
            try:
                probs = await loop.run_in_executor(self.executor, self.infer, batch)
            except Exception as e:  # noqa: BLE001 - each waiting request gets the failure
                for _, fut in items:
                    if not fut.done():
                        fut.set_exception(e)
                continue
            self.batches += 1
            self.images += len(batch)
            start = 0
            for images, fut in items:
                if not fut.done():  # its client may have gone
                    fut.set_result(probs[start : start + len(images)])
                start += len(images)

    async def close(self) -> None:
        if self.task is not None:
            self.task.cancel()
            try:
                await self.task
            except (asyncio.CancelledError, Exception):  # noqa: BLE001
                pass
            self.task = None
