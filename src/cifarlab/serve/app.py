"""The HTTP layer of ``cifarlab serve`` (FastAPI on Starlette, run by uvicorn).

Routes: ``GET /`` (the page), ``GET /docs`` (the API described from ``/openapi.json``, offline:
no script from a CDN), ``GET /openapi.json``, ``GET /healthz``, ``GET /v1/models`` and
``POST /v1/predict``. Every error is JSON, ``{"error": "…"}``, with a 4xx status for anything a
client can send (a 500 would be a bug, and still names no file and shows no traceback).

Uploads stay in memory: the body is counted while it streams and refused (413) as soon as it
passes ``max_upload_mb``, so at most that much of one request is ever held; multipart files are
parsed into memory (Starlette's parser, never spooled to disk), so nothing a client sends
touches the filesystem.

Laid out as FastAPI's "bigger applications": the routes are module-level functions on
:data:`router`; what they share lives on ``app.state`` (:func:`create_app`: the settings, the
served runs and their batchers, the thread pools, the :class:`Traffic` counters, the page) and
is reached through ``request.app.state`` or the dependency :func:`get_settings`. :class:`Front`
checks the token before routing. Limits on connections, headers and time, and the stops, live a
layer below, in :mod:`cifarlab.serve.protocol`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import threading
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import asynccontextmanager
from dataclasses import dataclass
from importlib import resources
from typing import Annotated, Any

import numpy as np
from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, Response
from starlette.datastructures import FormData, State
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import ClientDisconnect

from cifarlab import __version__
from cifarlab.errors import CifarlabError, one_line
from cifarlab.predict import ImageError, Prediction, shown
from cifarlab.serve.docs import docs_page
from cifarlab.serve.engine import (
    Batcher,
    BigLane,
    Busy,
    Held,
    Later,
    MemoryBudget,
    PixelBudget,
    ServedRun,
    decode_upload,
    png_data_uri,
)
from cifarlab.serve.settings import Settings

FILE_FIELDS = ("file", "files")
RAW_TYPES = ("application/octet-stream",)  # and image/*
MAX_NAME = 200  # characters of a client's file name echoed back
# Files are decoded by both threads at once only when the request holds this many bytes: for
# small files Pillow's Python code dominates, and two threads fighting for the GIL took 12 ms
# for 64 CIFAR PNGs where one thread took 7 (on the Zen 4 machine).
PARALLEL_DECODE_BYTES = 1 << 20

Upload = tuple[str, bytes]  # a client's file: its name as shown, its bytes


class ApiError(Exception):
    """A request refused: its status and the message the client reads."""

    def __init__(self, status: int, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.extra = extra


@dataclass
class Traffic:
    """What the server is handling now, all clients together (``app.state.traffic``)."""

    active: int = 0  # predict requests being received, decoded or run, all models together

    def in_flight(self) -> int:
        return self.active


# Paths that need no token (the page, its docs, the health check); every other path, known or
# not, is 401 without it, before routing (no 404, 405 or redirect tells a stranger anything).
PUBLIC_PATHS = frozenset({"/", "/docs", "/openapi.json", "/healthz"})
NEEDS_TOKEN = "this server needs a token: Authorization: Bearer TOKEN"
BUSY = (
    "the server is busy: the memory it holds for requests (--max-pending-mb) is in use; try again"
)


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


# --------------------------------------------------------------------------- the app


def create_app(
    runs: list[ServedRun], settings: Settings, stopping: threading.Event | None = None
) -> FastAPI:
    """The FastAPI application serving ``runs`` (the first is the default model). ``stopping``:
    set when the server's grace period after Ctrl-C or SIGTERM has passed (decoding then stops
    between files)."""
    if not runs:
        raise CifarlabError("no run to serve")
    app = FastAPI(
        title="cifarlab serve",
        version=__version__,
        description="Predict the class of images with trained cifarlab runs. Every error is "
        'JSON: `{"error": "…", "status": N}`.'
        + (" API calls need `Authorization: Bearer TOKEN`." if settings.token else ""),
        docs_url=None,  # FastAPI's /docs loads Swagger UI from a CDN: ours is offline
        redoc_url=None,
        lifespan=_lifespan,
        redirect_slashes=False,  # a redirect's Location would come from the client's Host
    )
    _share(app.state, runs, settings, stopping or threading.Event())
    app.include_router(router)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    app.add_exception_handler(RequestValidationError, _invalid)
    app.add_exception_handler(Exception, _unexpected)
    app.add_middleware(Front, token=settings.token)
    return app


def _share(
    state: State, runs: list[ServedRun], settings: Settings, stopping: threading.Event
) -> None:
    """What the routes share, on ``app.state``."""
    state.settings = settings
    state.served = runs  # the first: the default model
    state.runs = {r.name: r for r in runs}  # a request's model= chooses one by its name
    state.traffic = Traffic()
    state.memory = MemoryBudget(settings.max_pending_mb * 1024 * 1024)
    state.stopping = stopping  # set once the grace period of a stop has passed
    state.decode_pool = ThreadPoolExecutor(settings.decode_threads, thread_name_prefix="decode")
    state.big_lane = BigLane(settings.decode_threads - 1)
    state.infer_pool = ThreadPoolExecutor(1, thread_name_prefix="infer")
    state.batchers = {
        r.name: Batcher(
            r.backend,
            max_batch=settings.max_batch,
            max_wait_ms=settings.batch_wait_ms,
            enabled=settings.batching,
            executor=state.infer_pool,
            in_flight=state.traffic.in_flight,
        )
        for r in runs
    }
    state.page = resources.files("cifarlab.serve").joinpath("page.html").read_text("utf-8")


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    yield
    for b in app.state.batchers.values():
        await b.close()
    app.state.decode_pool.shutdown(wait=False, cancel_futures=True)
    app.state.infer_pool.shutdown(wait=False, cancel_futures=True)


async def _api_error(request: Request, e: ApiError) -> Response:
    return _error(e.status, e.message, **e.extra)


async def _http_error(request: Request, e: StarletteHTTPException) -> Response:
    return _error(e.status_code, str(e.detail), headers=e.headers)


async def _invalid(request: Request, e: RequestValidationError) -> Response:
    parts = []
    for err in e.errors():
        where = ".".join(str(x) for x in err.get("loc", ())[1:]) or "request"
        parts.append(f"{where}: {err.get('msg', 'invalid')}")
    return _error(422, "; ".join(parts) or "invalid request")


async def _unexpected(request: Request, e: Exception) -> Response:  # a bug: say little
    return _error(500, f"internal error ({type(e).__name__})")


# --------------------------------------------------------------------------- dependencies


async def get_settings(request: Request) -> Settings:
    return request.app.state.settings


AppSettings = Annotated[Settings, Depends(get_settings)]


def token_refusal(token: str | None, authorization: bytes | None) -> str | None:
    """Why a request's ``Authorization`` header does not carry ``token`` (None: it does, or
    the server has no token); compared in constant time."""
    if token is None:
        return None
    scheme, _, given = (authorization or b"").partition(b" ")
    if scheme.lower() != b"bearer" or not hmac.compare_digest(given.strip(), token.encode()):
        return "wrong token" if authorization else NEEDS_TOKEN
    return None


class Front:
    """What every request meets before routing (an ASGI middleware): without the token, any
    path but :data:`PUBLIC_PATHS` is 401 (before 404, 405 or 422); ``HEAD`` is answered as
    ``GET`` without the body, on every route (the server under it sends no body for HEAD)."""

    def __init__(self, app: Any, token: str | None) -> None:
        self.app = app
        self.token = token

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        if self.token is not None and scope["path"] not in PUBLIC_PATHS:
            given = next((v for k, v in scope["headers"] if k == b"authorization"), None)
            why = token_refusal(self.token, given)
            if why is not None:
                return await _error(401, why)(scope, receive, send)
        if scope["method"] == "HEAD":
            scope = {**scope, "method": "GET"}
        return await self.app(scope, receive, send)


# --------------------------------------------------------------------------- routes

router = APIRouter()


@router.get("/", response_class=HTMLResponse, include_in_schema=False)
async def index(request: Request) -> HTMLResponse:
    return HTMLResponse(request.app.state.page)


@router.get("/docs", response_class=HTMLResponse, include_in_schema=False)
async def docs(request: Request) -> HTMLResponse:
    return HTMLResponse(docs_page(request.app.openapi()))


@router.get("/healthz", summary="Is the server up", tags=["health"])
async def healthz(request: Request) -> Response:
    """`{"status": "ok", "models": [...]}` while the server serves (no token needed)."""
    return _json({"status": "ok", "models": list(request.app.state.runs)})


@router.get(
    "/v1/models",
    summary="The served runs",
    tags=["models"],
)
async def models(request: Request, settings: AppSettings) -> Response:
    """Each served run: name, model, classes, test accuracy (`null`: not evaluated),
    backend and why, and the input contract; the batching and the limits."""
    state = request.app.state
    return _json(
        {
            "default": state.served[0].name,
            "models": [r.describe() for r in state.served],
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
                name: {"batches": b.batches, "images": b.images}
                for name, b in state.batchers.items()
            },
        }
    )


PREDICT_BODY = {
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
PREDICT_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"description": "bad request"},
    401: {"description": "no or wrong token"},
    413: {"description": "too large or too many files"},
    415: {"description": "not an image or form content type"},
    422: {"description": "no image could be read, or a bad parameter"},
}


@router.post(
    "/v1/predict",
    summary="Predict images",
    tags=["predict"],
    openapi_extra={"requestBody": PREDICT_BODY},
    responses=PREDICT_RESPONSES,
)
async def predict(
    request: Request,
    settings: AppSettings,
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
    state = request.app.state
    held = Held(state.memory)
    state.traffic.active += 1
    try:
        return await _predict(request, settings, held, top_k, model, resize, include_input)
    except Busy:
        raise ApiError(503, BUSY) from None
    finally:
        held.give_all()
        state.traffic.active -= 1


# --------------------------------------------------------------------------- predict's steps


async def _predict(
    request: Request,
    settings: Settings,
    held: Held,
    top_k: int,
    model: str | None,
    resize: str,
    include_input: bool,
) -> Response:
    state = request.app.state
    served = _chosen(state, model)
    files = await uploads(request, settings, held)
    decoded = await _decode(files, resize, settings, state)
    names = [name for name, _ in files]
    del files  # the bodies are no longer needed: their bytes go back to the budget
    held.give_all()
    good = [d for d in decoded if not isinstance(d, str)]
    probs = await state.batchers[served.name].predict(np.stack(good)) if good else None
    k = min(top_k, len(served.class_names))
    results: list[dict[str, Any]] = []
    i = 0
    for name, d in zip(names, decoded, strict=True):
        if isinstance(d, str):
            results.append({"file": name, "error": d})
            continue
        assert probs is not None
        results.append(_result(name, d, probs[i], served, k, settings, include_input))
        i += 1
    payload = {"model": served.name, "backend": served.backend_name, "results": results}
    if not any("error" not in r for r in results):
        first = results[0]["error"] if len(results) == 1 else "no image could be read"
        return _error(422, first, model=served.name, results=results)
    return _json(payload)


def _chosen(state: State, model: str | None) -> ServedRun:
    """The run a request asks for (``model=``; default: the first); 404 for another name."""
    served = state.runs.get(model or state.served[0].name)
    if served is None:
        raise ApiError(
            404, f"no model '{shown(model or '')[:60]}' here; served: " + ", ".join(state.runs)
        )
    return served


def _result(
    name: str,
    image: np.ndarray,
    p: np.ndarray,
    served: ServedRun,
    k: int,
    settings: Settings,
    include_input: bool,
) -> dict[str, Any]:
    """One image's entry in the response: its top ``k`` classes, or an error when the model's
    probabilities are not numbers."""
    if not np.isfinite(p).all():
        return {
            "file": name,
            "error": f"{name}: the model gave probabilities "
            "that are not numbers (its checkpoint holds broken weights)",
        }
    top = Prediction(p[None], served.class_names).top_k(k)[0]
    item: dict[str, Any] = {
        "file": name,
        "label": top[0][0],
        "top_k": [{"class": c, "probability": q} for c, q in top],
        "uncertain": top[0][1] < settings.uncertain_below,
    }
    if include_input:
        item["input"] = png_data_uri(image)
    return item


# --------------------------------------------------------------------------- reading uploads


async def read_body(request: Request, settings: Settings, held: Held) -> AsyncIterator[bytes]:
    """The body, refused (413) as soon as it passes the limit: never read whole first. Each
    chunk is taken from the memory budget as it arrives (:class:`Busy` past it) and stays
    held until the request's decoding ends."""
    limit = settings.max_upload_bytes
    too_big = (
        f"request too large: the limit is {settings.max_upload_mb:g} MB "
        "(the server's --max-upload-mb)"
    )
    _check_headers(request, limit, too_big)
    seen = 0  # bytes of this body received
    deadline = _loop_time() + settings.body_timeout_s
    stream = request.stream().__aiter__()
    while True:
        try:
            chunk = await asyncio.wait_for(stream.__anext__(), max(0.0, deadline - _loop_time()))
        except StopAsyncIteration:
            break
        except asyncio.TimeoutError:  # (the stream is cancelled with it: never read on)
            raise ApiError(
                408, f"the request body took more than {settings.body_timeout_s:g} s to arrive"
            ) from None
        except ClientDisconnect:
            raise ApiError(400, "the client closed the connection") from None
        seen += len(chunk)
        if seen > limit:
            raise ApiError(413, too_big)
        held.take(len(chunk))
        yield chunk


def _loop_time() -> float:
    return asyncio.get_running_loop().time()


def _check_headers(request: Request, limit: int, too_big: str) -> None:
    """No content encoding, and a declared ``Content-Length`` within the limit: refused before
    a byte of the body is read."""
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("", "identity"):
        raise ApiError(
            415,
            f"Content-Encoding {shown(encoding)[:40]!r} is not accepted: send the image as it is",
        )
    declared = request.headers.get("content-length")
    if declared is not None:
        try:
            size = int(declared)
        except ValueError:
            raise ApiError(400, "Content-Length is not a number") from None
        if size > limit:
            raise ApiError(413, too_big)


async def uploads(request: Request, settings: Settings, held: Held) -> list[Upload]:
    """The request's files: the parts of a multipart form, or the raw body as one image."""
    ctype = request.headers.get("content-type", "")
    kind = ctype.split(";")[0].strip().lower()
    if kind == "multipart/form-data":
        return await _form_files(request, settings, held)
    if kind.startswith("image/") or kind in RAW_TYPES or not kind:
        chunks = [c async for c in read_body(request, settings, held)]
        size = sum(map(len, chunks))
        held.take(size)  # the joined copy, while the chunks still exist
        data = b"".join(chunks)
        del chunks
        held.give(size)
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


async def _form_files(request: Request, settings: Settings, held: Held) -> list[Upload]:
    """The files of a multipart form, each part named ``file`` (or ``files``). While the form
    is open its parts exist twice (the parser's buffers and the bytes read from them): the
    copies are taken from the memory budget too."""
    form = await _parse_form(request, settings, held)
    files: list[Upload] = []
    copies = 0
    try:
        for key, value in form.multi_items():
            if key not in FILE_FIELDS or isinstance(value, str):
                raise ApiError(
                    400,
                    f"unknown form field {shown(key)[:60]!r}: send each "
                    "image as a file part named 'file'",
                )
            await value.seek(0)
            size = value.size or 0
            held.take(size)
            copies += size
            data = await value.read()
            files.append((_client_name(value.filename, len(files)), data))
    finally:
        await form.close()
        held.give(copies)  # the parser's buffers are gone
    if not files:
        raise ApiError(400, "no file in the form: send each image as a part named 'file'")
    return files


async def _parse_form(request: Request, settings: Settings, held: Held) -> FormData:
    """The form, parsed into memory (no temp file on disk) while the body is counted."""
    parser = MultiPartParser(
        request.headers,
        read_body(request, settings, held),
        max_files=settings.max_files,
        max_fields=0,
        max_part_size=1024,
    )
    # every file in memory (no temp file on disk): the whole body is under the limit
    parser.spool_max_size = settings.max_upload_bytes + 1
    try:
        return await parser.parse()
    except MultiPartException as e:
        msg = str(e.message)
        if "Too many files" in msg:
            raise ApiError(
                413,
                f"too many files in one request: the limit is {settings.max_files} (--max-files)",
            ) from None
        if "Too many fields" in msg:
            raise ApiError(
                400,
                "only files are accepted in the form: send each image as a part named 'file'",
            ) from None
        raise ApiError(400, f"cannot read the multipart form: {msg}") from None
    except (ValueError, KeyError, UnicodeDecodeError) as e:
        raise ApiError(400, f"cannot read the multipart form ({one_line(e)})") from None


# --------------------------------------------------------------------------- decoding


async def _decode(
    files: list[Upload], resize: str, settings: Settings, state: State
) -> list[np.ndarray | str]:
    """Every file decoded in the decoding threads: by one thread, or for big files a part for
    each (Pillow frees the GIL in the codec). A big image whose turn has not come
    (:class:`~cifarlab.serve.engine.BigLane`) is tried again a little later."""
    loop = asyncio.get_running_loop()
    budget = PixelBudget(settings.max_request_pixels)
    pool = state.decode_pool
    args = (resize, budget, state.stopping, state.memory, state.big_lane)
    if len(files) < 2 or sum(len(d) for _, d in files) < PARALLEL_DECODE_BYTES:
        done = await loop.run_in_executor(pool, decode_all, files, *args)
    else:
        n = settings.decode_threads
        parts = [files[len(files) * i // n : len(files) * (i + 1) // n] for i in range(n)]
        gathered = await asyncio.gather(
            *(loop.run_in_executor(pool, decode_all, p, *args) for p in parts)
        )
        done = [d for part in gathered for d in part]
    wait = 0.01
    while waiting := [i for i, d in enumerate(done) if d is None]:
        await asyncio.sleep(wait)
        wait = min(0.2, wait * 2)
        again = await loop.run_in_executor(pool, decode_all, [files[i] for i in waiting], *args)
        for i, d in zip(waiting, again, strict=True):
            done[i] = d
    return done  # type: ignore[return-value]


def decode_all(
    files: list[Upload],
    resize: str,
    budget: PixelBudget,
    stopping: threading.Event,
    memory: MemoryBudget | None = None,
    lane: BigLane | None = None,
) -> list[np.ndarray | str | None]:
    """Each file as the model's 32×32 input, or its error; the request's pixels (read
    from the headers before decoding) within ``max_request_pixels``; each decoding's bytes
    from ``memory`` (:class:`Busy` when they are not there: the request is answered 503);
    stops at once when the server's grace period has passed. None: a big image whose turn
    has not come (``lane``), to try again."""
    out: list[np.ndarray | str | None] = []
    for name, data in files:
        if stopping.is_set():
            out.append(f"{name}: not decoded: the server is stopping")
            continue
        try:
            out.append(decode_upload(data, name, resize, budget, memory, lane))
        except Busy:
            raise
        except Later:
            out.append(None)
        except ImageError as e:
            out.append(shown(str(e)))
        except CifarlabError as e:
            out.append(shown(f"{name}: {e}"))
        except Exception as e:  # noqa: BLE001 - this file's failure, whatever it is
            out.append(shown(f"{name}: cannot read the image ({type(e).__name__})"))
    return out
