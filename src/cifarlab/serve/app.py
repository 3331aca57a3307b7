"""The HTTP layer of ``cifarlab serve`` (FastAPI on Starlette, run by uvicorn).

Routes: ``GET /`` (the page), ``GET /docs`` (the API described from ``/openapi.json``, offline:
no script from a CDN), ``GET /openapi.json``, ``GET /healthz``, ``GET /v1/models`` and
``POST /v1/predict``. Every error is JSON, ``{"error": "…"}``, with a 4xx status for anything a
client can send (a 500 would be a bug, and still names no file and shows no traceback).

Uploads stay in memory: the body is counted while it streams and refused (413) as soon as it
passes ``max_upload_mb``, so at most that much of one request is ever held; multipart files are
parsed into memory (Starlette's parser, never spooled to disk), so nothing a client sends
touches the filesystem.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import os
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np
from fastapi import Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from cifarlab.errors import CifarlabError, one_line
from cifarlab.predict import ImageError, Prediction, shown
from cifarlab.serve.engine import Batcher, PixelBudget, ServedRun, decode_upload, png_data_uri

FILE_FIELDS = ("file", "files")
RAW_TYPES = ("application/octet-stream",)  # and image/*
MAX_NAME = 200  # characters of a client's file name echoed back
# Files are decoded by both threads at once only when the request holds this many bytes: for
# small files Pillow's Python code dominates, and two threads fighting for the GIL took 12 ms
# for 64 CIFAR PNGs where one thread took 7 (on the Zen 4 machine).
PARALLEL_DECODE_BYTES = 1 << 20


@dataclass
class Settings:
    """What the server was started with (the CLI's options)."""

    max_upload_mb: float = 10.0
    max_files: int = 128
    token: str | None = None
    batching: bool = True
    max_batch: int = 64
    batch_wait_ms: float = 2.0
    uncertain_below: float = 0.5
    decode_threads: int = 2
    max_request_pixels: float = 64e6
    # bytes of request bodies held at once, all requests together: past it, 503 (a crowd of
    # slow uploads cannot fill the memory), and how long one body may take to arrive
    max_pending_mb: float = 512.0
    body_timeout_s: float = 60.0

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 1024 * 1024)


class ApiError(Exception):
    """A request refused: its status and the message the client reads."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


def _json(payload: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, allow_nan=False, ensure_ascii=False, separators=(",", ":"))
    headers = {"X-Content-Type-Options": "nosniff", **(headers or {})}
    return Response(body.encode(), status, headers, media_type="application/json")


def _error(
    status: int, message: str, headers: dict[str, str] | None = None, **extra: Any
) -> Response:
    headers = dict(headers or {})
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status == 503:
        headers.setdefault("Retry-After", "1")
    return _json({"error": one_line(message, None), "status": status, **extra}, status, headers)


def _client_name(name: str | None, index: int) -> str:
    text = shown(name) if name else f"image {index + 1}"
    return text[:MAX_NAME] or f"image {index + 1}"


def create_app(runs: list[ServedRun], settings: Settings) -> FastAPI:
    """The FastAPI application serving ``runs`` (the first is the default model)."""
    if not runs:
        raise CifarlabError("no run to serve")
    by_name = {r.name: r for r in runs}
    decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
    stopping = threading.Event()  # set by the server on Ctrl-C: decoding stops between files
    active = [0]  # predict requests being received, decoded or run, all models together
    batchers = {
        r.name: Batcher(
            r.backend,
            max_batch=settings.max_batch,
            max_wait_ms=settings.batch_wait_ms,
            enabled=settings.batching,
            executor=infer_pool,
            in_flight=lambda: active[0],
        )
        for r in runs
    }

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        for b in batchers.values():
            await b.close()
        decode_pool.shutdown(wait=False, cancel_futures=True)
        infer_pool.shutdown(wait=False, cancel_futures=True)

    from cifarlab import __version__

    app = FastAPI(
        title="cifarlab serve",
        version=__version__,
        description="Predict the class of images with trained cifarlab runs. Every error is "
        'JSON: `{"error": "…", "status": N}`.'
        + (" API calls need `Authorization: Bearer TOKEN`." if settings.token else ""),
        docs_url=None,  # FastAPI's /docs loads Swagger UI from a CDN: ours is offline
        redoc_url=None,
        lifespan=lifespan,
    )
    app.state.runs = by_name
    app.state.batchers = batchers
    app.state.settings = settings
    app.state.stopping = stopping

    @app.exception_handler(ApiError)
    async def _api_error(request: Request, e: ApiError) -> Response:
        return _error(e.status, e.message, **e.extra)

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
        return _error(e.status_code, str(e.detail), headers=e.headers)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, e: RequestValidationError) -> Response:
        parts = []
        for err in e.errors():
            where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
            parts.append(f"{where}: {err.get('msg', 'invalid')}")
        return _error(422, "; ".join(parts) or "invalid request")

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, e: Exception) -> Response:  # a bug: say little
        return _error(500, f"internal error ({type(e).__name__})")

    def check_token(request: Request) -> None:
        """A FastAPI dependency of every /v1/ route: it runs before the parameters are
        checked, so a client without the token learns nothing but 401."""
        if settings.token is None:
            return
        got = request.headers.get("authorization", "")
        scheme, _, given = got.partition(" ")
        # the header as its bytes (Starlette decodes latin-1); the token is ASCII (the CLI)
        if scheme.lower() != "bearer" or not hmac.compare_digest(
            given.strip().encode("latin-1", "replace"), settings.token.encode()
        ):
            raise ApiError(
                401,
                "this server needs a token: Authorization: Bearer TOKEN"
                if not got
                else "wrong token",
            )

    page = resources.files("cifarlab.serve").joinpath("page.html").read_text("utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/docs", response_class=HTMLResponse, include_in_schema=False)
    async def docs() -> HTMLResponse:
        from cifarlab.serve.docs import docs_page

        return HTMLResponse(docs_page(app.openapi()))

    @app.get("/healthz", summary="Is the server up", tags=["health"])
    async def healthz() -> Response:
        """`{"status": "ok", "models": [...]}` while the server serves (no token needed)."""
        return _json({"status": "ok", "models": list(by_name)})

    @app.get(
        "/v1/models",
        summary="The served runs",
        tags=["models"],
        dependencies=[Depends(check_token)],
    )
    async def models(request: Request) -> Response:
        """Each served run: name, model, classes, test accuracy (`null`: not evaluated),
        backend and why, and the input contract; the batching and the limits."""
        return _json(
            {
                "default": runs[0].name,
                "models": [r.describe() for r in runs],
                "batching": {
                    "enabled": settings.batching,
                    "max_batch": settings.max_batch,
                    "max_wait_ms": settings.batch_wait_ms,
                },
                "limits": {
                    "max_upload_mb": settings.max_upload_mb,
                    "max_files": settings.max_files,
                },
                "uncertain_below": settings.uncertain_below,
                "stats": {
                    name: {"batches": b.batches, "images": b.images} for name, b in batchers.items()
                },
            }
        )

    pending = [0]  # bytes of bodies being received, every request together

    def loop_time() -> float:
        return asyncio.get_running_loop().time()

    async def read_body(request: Request) -> AsyncIterator[bytes]:
        """The body, refused (413) as soon as it passes the limit: never read whole first."""
        limit = settings.max_upload_bytes
        too_big = (
            f"request too large: the limit is {settings.max_upload_mb:g} MB "
            "(the server's --max-upload-mb)"
        )
        encoding = request.headers.get("content-encoding", "identity").strip().lower()
        if encoding not in ("", "identity"):
            raise ApiError(
                415,
                f"Content-Encoding {shown(encoding)[:40]!r} is not accepted: "
                "send the image as it is",
            )
        declared = request.headers.get("content-length")
        if declared is not None:
            try:
                size = int(declared)
            except ValueError:
                raise ApiError(400, "Content-Length is not a number") from None
            if size > limit:
                raise ApiError(413, too_big)
        seen = 0  # bytes of this body received (and counted in pending until it ends)
        deadline = loop_time() + settings.body_timeout_s
        stream = request.stream().__aiter__()
        try:
            while True:
                left = deadline - loop_time()
                if left <= 0:
                    raise ApiError(
                        408,
                        f"the request body took more than {settings.body_timeout_s:g} s to arrive",
                    )
                try:
                    chunk = await asyncio.wait_for(stream.__anext__(), left)
                except StopAsyncIteration:
                    break
                except asyncio.TimeoutError:
                    continue  # the deadline check above answers
                except ClientDisconnect:
                    raise ApiError(400, "the client closed the connection") from None
                seen += len(chunk)
                pending[0] += len(chunk)
                if seen > limit:
                    raise ApiError(413, too_big)
                if pending[0] > settings.max_pending_mb * 1024 * 1024:
                    raise ApiError(503, "the server is busy receiving other uploads: try again")
                yield chunk
        finally:
            pending[0] -= seen

    async def uploads(request: Request) -> list[tuple[str, bytes]]:
        ctype = request.headers.get("content-type", "")
        kind = ctype.split(";")[0].strip().lower()
        if kind == "multipart/form-data":
            parser = MultiPartParser(
                request.headers,
                read_body(request),
                max_files=settings.max_files,
                max_fields=0,
                max_part_size=1024,
            )
            # every file in memory (no temp file on disk): the whole body is under the limit
            parser.spool_max_size = settings.max_upload_bytes + 1
            try:
                form = await parser.parse()
            except MultiPartException as e:
                msg = str(e.message)
                if "Too many files" in msg:
                    raise ApiError(
                        413,
                        f"too many files in one request: the limit is "
                        f"{settings.max_files} (--max-files)",
                    ) from None
                if "Too many fields" in msg:
                    raise ApiError(
                        400,
                        "only files are accepted in the form: send each "
                        "image as a part named 'file'",
                    ) from None
                raise ApiError(400, f"cannot read the multipart form: {msg}") from None
            except (ValueError, KeyError, UnicodeDecodeError) as e:
                raise ApiError(400, f"cannot read the multipart form ({one_line(e)})") from None
            files: list[tuple[str, bytes]] = []
            try:
                for key, value in form.multi_items():
                    if key not in FILE_FIELDS or isinstance(value, str):
                        raise ApiError(
                            400,
                            f"unknown form field {shown(key)[:60]!r}: send each "
                            "image as a file part named 'file'",
                        )
                    await value.seek(0)
                    data = await value.read()
                    files.append((_client_name(value.filename, len(files)), data))
            finally:
                await form.close()
            if not files:
                raise ApiError(400, "no file in the form: send each image as a part named 'file'")
            return files
        if kind.startswith("image/") or kind in RAW_TYPES or not kind:
            chunks = [c async for c in read_body(request)]
            data = b"".join(chunks)
            if not data:
                raise ApiError(400, "empty request body: send an image (or a multipart form)")
            name = request.headers.get("x-filename") or request.query_params.get("filename")
            return [(_client_name(name, 0), data)]
        raise ApiError(
            415,
            f"Content-Type {shown(kind)[:60]!r} is not accepted: send one image "
            "as the body (image/* or application/octet-stream) or a "
            "multipart/form-data form with 'file' parts",
        )

    def decode_all(
        files: list[tuple[str, bytes]], resize: str, budget: PixelBudget
    ) -> list[np.ndarray | str]:
        """Each file as the model's 32×32 input, or its error; the request's pixels (read
        from the headers before decoding) within ``max_request_pixels``; stops at once when
        the server is stopping."""
        out: list[np.ndarray | str] = []
        for name, data in files:
            if stopping.is_set():
                out.append(f"{name}: not decoded: the server is stopping")
                continue
            try:
                out.append(decode_upload(data, name, resize, budget))
            except ImageError as e:
                out.append(shown(str(e)))
            except CifarlabError as e:
                out.append(shown(f"{name}: {e}"))
            except Exception as e:  # noqa: BLE001 - this file's failure, whatever it is
                out.append(shown(f"{name}: cannot read the image ({type(e).__name__})"))
        return out

    predict_body = {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "file": {"type": "array", "items": {"type": "string", "format": "binary"}}
                    },
                    "required": ["file"],
                }
            },
            "image/*": {"schema": {"type": "string", "format": "binary"}},
            "application/octet-stream": {"schema": {"type": "string", "format": "binary"}},
        },
    }

    @app.post(
        "/v1/predict",
        summary="Predict images",
        tags=["predict"],
        dependencies=[Depends(check_token)],
        openapi_extra={"requestBody": predict_body},
        responses={
            400: {"description": "bad request"},
            401: {"description": "no or wrong token"},
            413: {"description": "too large or too many files"},
            415: {"description": "not an image or form content type"},
            422: {"description": "no image could be read, or a bad parameter"},
        },
    )
    async def predict(
        request: Request,
        top_k: int = Query(3, ge=1, le=1000, description="classes per image"),
        model: str | None = Query(None, description="a served run's name (default: the first)"),
        resize: str = Query(
            "crop",
            pattern="^(crop|stretch)$",
            description="crop (default) or stretch, as `cifarlab predict`",
        ),
        include_input: bool = Query(
            False, description="add each image as the model saw it (32×32 PNG data URI)"
        ),
    ) -> Response:
        """One or many images as multipart files named `file`, or one image as the raw body.
        Per image: `label`, `top_k` (class, probability), `uncertain` (the top probability is
        under the server's threshold), or `error`. 200 if any image was predicted, 422 if
        none could be read."""
        active[0] += 1
        try:
            return await _predict(request, top_k, model, resize, include_input)
        finally:
            active[0] -= 1

    async def _predict(
        request: Request, top_k: int, model: str | None, resize: str, include_input: bool
    ) -> Response:
        served = by_name.get(model or runs[0].name)
        if served is None:
            raise ApiError(
                404, f"no model '{shown(model or '')[:60]}' here; served: " + ", ".join(by_name)
            )
        files = await uploads(request)
        loop = asyncio.get_running_loop()
        budget = PixelBudget(settings.max_request_pixels)
        if len(files) < 2 or sum(len(d) for _, d in files) < PARALLEL_DECODE_BYTES:
            decoded = await loop.run_in_executor(decode_pool, decode_all, files, resize, budget)
        else:  # big files: a part for each decoding thread (Pillow frees the GIL in the codec)
            n = settings.decode_threads
            parts = [files[len(files) * i // n : len(files) * (i + 1) // n] for i in range(n)]
            done = await asyncio.gather(
                *(loop.run_in_executor(decode_pool, decode_all, p, resize, budget) for p in parts)
            )
            decoded = [d for part in done for d in part]
        good = [d for d in decoded if not isinstance(d, str)]
        probs = await batchers[served.name].predict(np.stack(good)) if good else None
        k = min(top_k, len(served.class_names))
        results: list[dict[str, Any]] = []
        i = 0
        for (name, _), d in zip(files, decoded, strict=True):
            if isinstance(d, str):
                results.append({"file": name, "error": d})
                continue
            assert probs is not None
            p = probs[i]
            i += 1
            if not np.isfinite(p).all():
                results.append(
                    {
                        "file": name,
                        "error": f"{name}: the model gave probabilities "
                        "that are not numbers (its checkpoint holds broken weights)",
                    }
                )
                continue
            top = Prediction(p[None], served.class_names).top_k(k)[0]
            item: dict[str, Any] = {
                "file": name,
                "label": top[0][0],
                "top_k": [{"class": c, "probability": q} for c, q in top],
                "uncertain": top[0][1] < settings.uncertain_below,
            }
            if include_input:
                item["input"] = png_data_uri(d)
            results.append(item)
        payload = {"model": served.name, "backend": served.backend_name, "results": results}
        if not any("error" not in r for r in results):
            first = results[0]["error"] if len(results) == 1 else "no image could be read"
            return _error(422, first, model=served.name, results=results)
        return _json(payload)

    return app


def app_from_env() -> FastAPI:
    """The app of one worker process (``--workers N``): the runs and settings come from the
    parent in ``$CIFARLAB_SERVE_SPEC`` (JSON; the token in ``$CIFARLAB_SERVE_TOKEN``)."""
    from cifarlab.serve import TOKEN_ENV
    from cifarlab.serve.engine import load_served

    spec = json.loads(os.environ["CIFARLAB_SERVE_SPEC"])
    settings = Settings(**spec["settings"])
    settings.token = os.environ.get(TOKEN_ENV) or None
    runs = []
    for path, (backend, note) in zip(spec["runs"], spec["backends"], strict=True):
        served = load_served(
            path,
            backend=backend,
            checkpoint=spec["checkpoint"],
            threads=spec["threads"],
            tta=spec.get("tta"),
            calibrated=spec.get("calibrated", True),
        )
        served.backend_note = note  # the parent's measurement, the same in every worker
        runs.append(served)
    app = create_app(runs, settings)
    from cifarlab.serve import settle_heap

    settle_heap()
    return app
