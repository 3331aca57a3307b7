"""What ``cifarlab serve`` runs behind its HTTP layer: the served runs, their inference backend
(PyTorch, or the run's model in ONNX Runtime when that is faster here) and the micro-batcher
that puts requests arriving together through the model as one batch.

Nothing here knows about HTTP: :mod:`cifarlab.serve.app` decodes the uploads, hands 32×32
arrays to :meth:`Batcher.predict` and turns the probabilities into JSON.
"""

from __future__ import annotations

import asyncio
import base64
import io
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

from cifarlab.errors import CifarlabError, one_line
from cifarlab.predict import (
    DEFAULT_RESIZE,
    ImageError,
    Run,
    decode_image,
    resize_to_32,
    shown,
)

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


def decode_upload(
    data: bytes, name: str, resize: str = DEFAULT_RESIZE, budget: PixelBudget | None = None
) -> np.ndarray:
    """One uploaded file as the 32×32×3 uint8 array the model sees: the decoder and the resize
    rule of ``cifarlab predict`` (:func:`cifarlab.predict.decode_image`), from memory.
    ``budget``: the pixels the request may still decode: an image whose header says more is
    refused before it is decoded."""
    if not data:
        raise ImageError(f"{name}: empty file (0 bytes): no image")
    check = None if budget is None else (lambda size: budget.spend(name, size))
    im = decode_image(io.BytesIO(data), name, check)
    return np.asarray(resize_to_32(im, resize), dtype=np.uint8)


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
        import onnxruntime as ort

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
    """The run's model as an ONNX file in the cache, keyed by the checkpoint's bytes, the TTA
    level and the versions: exported on the first start, reused after."""
    import hashlib
    import json

    import onnxruntime as ort

    from cifarlab import __version__
    from cifarlab.data.cache import cache_dir
    from cifarlab.export import _example, _write_onnx, metadata

    ckpt = run.opened.folder.checkpoint_path(run.opened.checkpoint)
    h = hashlib.sha256()
    with open(ckpt, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    key = json.dumps(
        [GRAPH_VERSION, h.hexdigest(), run.tta, run.temperature if run.calibrated else None,
         __version__, torch.__version__, ort.__version__]
    )  # fmt: skip
    digest = hashlib.sha256(key.encode()).hexdigest()[:20]
    out = cache_dir() / "serve" / f"{run.name[:40]}-{digest}.onnx"
    if out.is_file():
        return out
    import copy

    from cifarlab.evaluate.inference import TTAModel
    from cifarlab.export import Preprocessed
    from cifarlab.files import atomic_write

    model = copy.deepcopy(run.model).float().cpu().eval()
    temperature = run.temperature if run.calibrated else 1.0
    wrapped = Preprocessed(TTAModel(model, run.tta), run.mean, run.std, "uint8",
                           temperature).eval()  # fmt: skip
    meta = metadata(run.config, run.class_names, "uint8", run.mean, run.std, temperature,
                    run.calibration_note)  # fmt: skip
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(out, lambda tmp: _write_onnx(wrapped, _example("uint8"), meta, tmp))
    return out


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
    accuracy = None
    from cifarlab.runs import RunFolder

    try:
        accuracy = float(RunFolder(run.path).read_eval("test")["accuracy"])
    except CifarlabError:
        pass  # not evaluated yet: the page says "not evaluated"
    torch_backend = TorchBackend(run)
    served = ServedRun(run.name, run, torch_backend, "torch", "PyTorch", accuracy)
    if backend == "torch":
        served.backend_note = "PyTorch (chosen with --backend torch)"
        return served
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        if backend == "onnx":
            raise CifarlabError(
                "--backend onnx needs ONNX Runtime: pip install 'cifarlab[export]'"
            ) from None
        served.backend_note = "PyTorch (ONNX Runtime is not installed)"
        return served
    if backend == "auto" and run.autocast is not None:
        served.backend_note = (
            f"PyTorch: the run evaluates in {str(run.autocast).replace('torch.', '')}, which "
            "ONNX Runtime does not run on this CPU (float32 would change the probabilities)"
        )
        return served
    threads = threads or torch.get_num_threads()
    try:
        onnx_backend = OnnxBackend(run, threads)
    except CifarlabError:
        raise
    except Exception as e:  # noqa: BLE001 - a model the exporter cannot take: PyTorch then
        if backend == "onnx":
            raise CifarlabError(
                f"{shown(path)}: cannot export the model to ONNX "
                f"({type(e).__name__}: {one_line(e)})"
            ) from None
        served.backend_note = f"PyTorch (the ONNX export failed: {type(e).__name__})"
        return served
    rng = np.random.default_rng(0)
    probe = rng.integers(0, 256, (64, 32, 32, 3), dtype=np.uint8)
    try:
        diff = float(np.abs(onnx_backend(probe) - torch_backend(probe)).max())
    except Exception as e:  # noqa: BLE001 - a graph ONNX Runtime cannot run: PyTorch then
        if backend == "onnx":
            raise CifarlabError(
                f"{shown(path)}: ONNX Runtime cannot run the exported model ({type(e).__name__})"
            ) from None
        served.backend_note = f"PyTorch (ONNX Runtime failed on the model: {type(e).__name__})"
        return served
    if backend == "onnx":
        served.backend, served.backend_name = onnx_backend, "onnx"
        served.backend_note = f"ONNX Runtime (chosen with --backend onnx; max |Δp| {diff:.1e})"
        return served
    t = {
        f"{b}_batch{n}_ms": 1e3 * _best_time(fn, probe[:n])
        for b, fn in (("torch", torch_backend), ("onnx", onnx_backend))
        for n in (1, 64)
    }
    faster = t["onnx_batch1_ms"] + t["onnx_batch64_ms"] / 8 < (
        t["torch_batch1_ms"] + t["torch_batch64_ms"] / 8
    )
    if diff > 1e-4:
        served.backend_note = f"PyTorch (ONNX Runtime's probabilities differ by {diff:.1e})"
    elif faster:
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
    return served


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
