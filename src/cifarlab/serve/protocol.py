"""The HTTP layer under the app: uvicorn's httptools protocol (its speed: ``serve_load.py``)
with what a server facing hostile clients needs and uvicorn does not do by itself. One
:class:`Guard` per process holds the limits (from :class:`~cifarlab.serve.settings.Settings`)
and the open connections; every connection is a :class:`GuardedProtocol`.

- **The request head** (line and headers) is fed to the parser in slices that never pass what
  is left of ``--max-header-kb``, so no head costs more than that to hold or parse (httptools
  joins a header's pieces, at a cost that grows faster than its size; a head that begins after
  another request in the same read may take that read more); a longer request line is 414, a
  bigger head or more than ``--max-headers`` fields 431, a request line without an HTTP
  version 400. Chunk headers and trailers are bounded like a head; trailer fields are 400.
- **Early answers** (413 from the declared length, 401, 404: before the body came): the rest
  of the body is read and dropped for up to ``--body-timeout-s``, then the connection closes,
  so the client reads the answer rather than a reset.
- **Time**: a head must arrive within ``--header-timeout-s`` of its first byte (slowloris:
  408); a connection without a request in progress is closed after ``--idle-timeout-s``
  (before its first request too). A body's deadline is the app's (``--body-timeout-s``); a
  client that reads its answer too slowly (the answer waits unread past the transport's
  high-water mark for ``--body-timeout-s``: slow read) is dropped.
- **Connections**: at most ``--max-connections`` per process and ``--max-connections-per-client``
  per client address. Past either, the connection idle the longest (no request in progress:
  waiting, or still sending its head) is closed to make room; if every one is busy the new one
  is answered 503. Idle connections never lock active clients out.
- **Errors** made here are the app's JSON (``{"error", "status"}``), sent after the answers
  to the requests before them on the connection (pipelining), then the connection closes
  after a short linger (the client reads the answer rather than a reset).
- **Early closes**: every request of a connection, the running one and those queued behind
  it, learns that the client has gone; nothing touches a closed transport.
- **Stops**: on Ctrl-C or SIGTERM uvicorn stops accepting and calls :meth:`shutdown` on each
  connection: an idle one closes, a busy one has ``--grace-s`` to finish its request; after
  that its request is answered 503 (the app's decoding stops between files) and it closes.

Why here and not in a reverse proxy: ``cifarlab serve`` must hold on its own, on a laptop or a
lab machine; a public deployment still goes behind nginx for TLS (README "Serve").
"""

from __future__ import annotations

import asyncio
import http
import json
import threading
from collections import Counter
from typing import Any

import httptools
from uvicorn.protocols.http.flow_control import FlowControl
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from cifarlab.serve.settings import Settings

LINGER_S = 1.0  # after an error answer: how long the rest of a client's request is read
# The connections' deadlines are checked this often by one sweep per process (a timer per
# request cost 30 % of the requests/s of a small GET): each fires up to this late.
SWEEP_S = 0.1


class Guard:
    """The limits of one server process and its open connections (oldest first)."""

    def __init__(self, settings: Settings, stopping: threading.Event) -> None:
        self.settings = settings
        self.max_line = int(settings.max_request_line_kb * 1024)
        self.max_head = int(settings.max_header_kb * 1024)
        self.open: dict[GuardedProtocol, None] = {}
        self.per_client: Counter[str] = Counter()
        self.stopping = stopping  # set when a stop's grace period is over
        self.sweeping = False

    def _sweep(self) -> None:
        """Fire the deadlines that have passed; again in :data:`SWEEP_S` while any is open."""
        if not self.open:
            self.sweeping = False
            return
        conn = next(iter(self.open))
        now = conn.loop.time()
        try:
            for c in list(self.open):
                if c.due is not None and c.due <= now:
                    then, c.due = c.then, None
                    then()
        finally:
            conn.loop.call_later(SWEEP_S, self._sweep)

    def admit(self, conn: GuardedProtocol) -> str | None:
        """Count a new connection; past a limit, close the idlest connection to make room.
        The reason when no connection could make room (the new one is then refused)."""
        self.open[conn] = None
        self.per_client[conn.host] += 1
        if not self.sweeping:
            self.sweeping = True
            conn.loop.call_later(SWEEP_S, self._sweep)
        s = self.settings
        if self.per_client[conn.host] > s.max_connections_per_client:
            if not self._evict(conn, conn.host):
                return (
                    f"too many connections from your address: the server keeps at most "
                    f"{s.max_connections_per_client} per client (--max-connections-per-client)"
                )
        if len(self.open) > s.max_connections:
            if not self._evict(conn, None):
                return (
                    f"too many connections: the server keeps at most {s.max_connections} "
                    "(--max-connections), each with a request in progress; try again"
                )
        return None

    def _evict(self, new: GuardedProtocol, host: str | None) -> bool:
        idle = [
            c
            for c in self.open
            if c is not new and not c.busy() and (host is None or c.host == host)
        ]
        if not idle:
            return False
        min(idle, key=lambda c: c.idle_since).drop()
        return True

    def forget(self, conn: GuardedProtocol) -> None:
        if self.open.pop(conn, False) is None:
            self.per_client[conn.host] -= 1
            if self.per_client[conn.host] <= 0:
                del self.per_client[conn.host]


_guard: Guard | None = None


def install(settings: Settings, stopping: threading.Event) -> Guard:
    """The process's :class:`Guard`, before uvicorn accepts a connection (each worker process
    installs its own)."""
    global _guard
    _guard = Guard(settings, stopping)
    return _guard


def error_bytes(status: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer: the app's JSON error, and the connection closes."""
    payload = {"error": message, "status": status}
    body = json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode()
    phrase = http.HTTPStatus(status).phrase
    head = [
        f"HTTP/1.1 {status} {phrase}",
        "content-type: application/json",
        f"content-length: {len(body)}",
        "x-content-type-options: nosniff",
        "connection: close",
    ]
    if status == 503:
        head.append("retry-after: 1")
    return ("\r\n".join(head) + "\r\n\r\n").encode() + body


class _Refused(Exception):
    """Raised in a parser callback: the request is answered with this status and message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def _gone(cycle: Any) -> None:
    """Tell a request its client has gone: its app's reads end, what it sends is dropped,
    and no ``100 Continue`` is written for it any more."""
    cycle.disconnected = True
    cycle.waiting_for_100_continue = False
    cycle.message_event.set()


class SafeFlow(FlowControl):
    """uvicorn's flow control, which never pauses or resumes a closed transport (uvloop
    raises ``RuntimeError`` there: the pipelining tracebacks)."""

    def pause_reading(self) -> None:
        if not self._transport.is_closing():
            super().pause_reading()

    def resume_reading(self) -> None:
        if not self._transport.is_closing():
            super().resume_reading()


class GuardedProtocol(HttpToolsProtocol):
    """One client connection (see the module's text for what it bounds)."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if _guard is None:
            raise RuntimeError("serve.protocol.install() was not called")
        self.guard = _guard
        self.host = ""
        self.due: float | None = None  # when ``then`` runs (the guard's sweep)
        self.then: Any = None
        self.write_deadline: asyncio.TimerHandle | None = None  # a client too slow to read
        self.idle_since = self.loop.time()
        self.in_head = False  # a request's first byte came, its head is not complete
        self.in_body = False  # its head is complete, its body is not
        self.head_left = self.guard.max_head  # bytes the head being read may still take
        self.running: Any = None  # the cycle whose app runs (self.cycle: the last one parsed)
        self.lost = False  # connection_lost has run
        self.stopping = False  # the server stops: the grace deadline is the only one
        self.ended_here = False  # a message ended in the piece being fed (pipelining)
        self.body_moved = False  # body bytes came out of the piece being fed
        self.no_body_bytes = 0  # bytes fed in a body since body bytes last came out
        self.done = False  # answered with an error or closing: what comes is discarded
        self.deferred: bytes | None = None  # an error to send once the requests before it end

    # --------------------------------------------------------------- connection
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self.flow = SafeFlow(transport)
        self.host = self.client[0] if self.client else ""
        self._arm(self.guard.settings.idle_timeout_s, self._idle_over)
        why = self.guard.admit(self)
        if why is not None:
            self._refuse(503, why)

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.guard.forget(self)
        self._disarm()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
        self._abandon()
        super().connection_lost(exc)

    def _abandon(self) -> None:
        """Every request of this connection learns its client has gone: the running one and
        those queued behind it (uvicorn tells only the last one parsed)."""
        for cycle in (self.running, self.cycle, *(c for c, _ in self.pipeline)):
            if cycle is not None and not cycle.response_complete:
                _gone(cycle)
        self.pipeline.clear()

    def busy(self) -> bool:
        """A request of this connection is in progress (its head complete, its answer not,
        its client there) or queued behind it."""
        running = self.running
        return bool(self.pipeline) or (
            running is not None and not running.response_complete and not running.disconnected
        )

    def drop(self) -> None:
        """Close at once, without an answer (an idle connection, to make room)."""
        self.done = True
        self.due = None
        self.guard.forget(self)
        if not self.lost:  # closing or not: unsent bytes are dropped too
            self.transport.abort()

    # --------------------------------------------------------------- bytes in
    def data_received(self, data: bytes) -> None:
        if self.done:
            return  # the rest of a refused request: read and dropped while lingering
        while data:
            in_body = self.in_body
            if in_body:
                piece, data = data, b""
            else:  # never more of a head than it may still take
                room = max(1, self.head_left)
                piece, data = data[:room], data[room:]
            self.ended_here = self.body_moved = False
            try:
                self.parser.feed_data(piece)
            except httptools.HttpParserUpgrade:
                # an upgrade (WebSocket) is not served: the request is answered as plain
                # HTTP, then the connection closes
                if self.cycle is not None:
                    self.cycle.keep_alive = False
                self.done = True
                return
            except httptools.HttpParserError as e:
                cause = e.__context__
                if isinstance(cause, _Refused):
                    self._refuse(cause.status, cause.message)
                else:
                    why = str(e).strip() or "cannot parse it"
                    self._refuse(400, f"not a valid HTTP/1.1 request ({why[:100]})")
                return
            if self.done:
                return
            if self.in_head and not self.ended_here:
                # (a head that began after another message in this piece counts from the
                # next piece: at most one piece more than the limit)
                self.head_left -= len(piece)
                if self.head_left <= 0:
                    self._refuse(
                        431,
                        f"request head too large: the limit is "
                        f"{self.guard.settings.max_header_kb:g} KB (--max-header-kb)",
                    )
                    return
            if in_body and self.in_body:
                # chunk headers and trailers are parsed like a head: bounded like one
                self.no_body_bytes = 0 if self.body_moved else self.no_body_bytes + len(piece)
                if self.no_body_bytes > self.guard.max_head:
                    self._refuse(
                        431,
                        "chunk headers or trailer fields too large: the limit is "
                        f"{self.guard.settings.max_header_kb:g} KB (--max-header-kb)",
                    )
                    return

    # --------------------------------------------------------------- parser callbacks
    def on_message_begin(self) -> None:
        super().on_message_begin()
        self.in_head, self.in_body = True, False
        self.head_left = self.guard.max_head
        self.no_body_bytes = 0
        self._arm(self.guard.settings.header_timeout_s, self._head_over)

    def on_header(self, name: bytes, value: bytes) -> None:
        if not self.in_head:  # after a chunked body: its trailer fields
            raise _Refused(400, "trailer fields are not accepted: send headers before the body")
        super().on_header(name, value)

    def on_body(self, body: bytes) -> None:
        self.body_moved = True
        super().on_body(body)

    def on_headers_complete(self) -> None:
        # the line and the fields are checked once complete: the head as a whole never
        # passed --max-header-kb (data_received), so counting them cost little
        if len(self.url) > self.guard.max_line:
            raise _Refused(
                414,
                f"request line too long: the limit is "
                f"{self.guard.settings.max_request_line_kb:g} KB (--max-request-line-kb)",
            )
        if len(self.headers) > self.guard.settings.max_headers:
            raise _Refused(
                431,
                f"too many header fields: the limit is {self.guard.settings.max_headers} "
                "(--max-headers)",
            )
        if self.parser.get_http_version() not in ("1.0", "1.1"):
            raise _Refused(400, "the request line has no HTTP version: send 'GET /path HTTP/1.1'")
        self.in_head, self.in_body = False, True
        self._disarm()  # the body's deadline is the app's
        super().on_headers_complete()
        if not (self.pipeline and self.pipeline[0][0] is self.cycle):
            self.running = self.cycle  # started at once, not queued behind another

    def on_message_complete(self) -> None:
        self.in_body = False
        self.ended_here = True
        super().on_message_complete()

    # --------------------------------------------------------------- requests and answers
    def _run(self, cycle: Any, app: Any) -> None:
        """Start a queued request's app (as uvicorn does; its own method for this is not in
        every version the extra allows)."""
        self.running = cycle
        task = self.loop.create_task(cycle.run_asgi(app))
        task.add_done_callback(self.tasks.discard)
        self.tasks.add(task)

    def on_response_complete(self) -> None:
        self.server_state.total_requests += 1
        if self.transport.is_closing():
            if self.transport.get_write_buffer_size():  # an answer the client does not read
                self._arm(self.guard.settings.body_timeout_s, self._abort, force=True)
            return
        self.flow.resume_reading()
        if self.pipeline:  # the next request queued on this connection
            cycle, app = self.pipeline.pop()
            self._run(cycle, app)
        elif self.deferred is not None:  # an error found after these requests: its turn
            self._answer_and_close(self.deferred)
        elif self.in_body:
            # answered before its body came (413, 401, 404…): the rest of the body is read
            # and dropped for a while, then the connection closes (closing at once would
            # reset it before the client read the answer)
            self.done = True
            if self.transport.can_write_eof():
                self.transport.write_eof()
            self._arm(self.guard.settings.body_timeout_s, self._abort, force=True)
        elif not self.in_head:
            self.idle_since = self.loop.time()
            self._arm(self.guard.settings.idle_timeout_s, self._idle_over)

    def _refuse(self, status: int, message: str) -> None:
        """Answer ``status`` with the JSON error and close: now, or after the answers to the
        requests before it on this connection."""
        if self.done:
            return
        self._disarm()
        payload = error_bytes(status, message)
        broken = self.cycle if self.in_body else None  # its body cannot be read on
        if broken is not None and not broken.response_complete:
            if self.pipeline and self.pipeline[0][0] is broken:
                self.pipeline.popleft()  # queued, never started: this answer is its answer
            elif broken.response_started:  # half an answer sent: nothing better to do
                self.drop()
                return
            _gone(broken)  # the app's wait for its body ends; its answer is ours
        if self.busy():
            self.deferred = payload
            self.done = True
            self.flow.pause_reading()
            return
        self._answer_and_close(payload)

    def _answer_and_close(self, payload: bytes) -> None:
        self.deferred = None
        self.done = True
        if self.transport.is_closing():
            return
        self.transport.write(payload)
        # keep reading (and dropping) what the client still sends for a moment: closing
        # with unread bytes would reset the connection before the client read the answer
        self.flow.resume_reading()
        if self.transport.can_write_eof():
            self.transport.write_eof()
        self._arm(LINGER_S, self._abort, force=True)

    # --------------------------------------------------------------- timers
    def _arm(self, seconds: float, then: Any, force: bool = False) -> None:
        """Run ``then`` in ``seconds`` (the guard's sweep), instead of any deadline set
        before. Once the server stops, only ``force`` replaces the grace deadline."""
        if force or not self.stopping:
            self.due, self.then = self.loop.time() + seconds, then

    def _disarm(self) -> None:
        if not self.stopping:
            self.due = None

    def _idle_over(self) -> None:
        if not self.busy() and not self.in_head:
            self.drop()

    def _head_over(self) -> None:
        if self.in_head:
            self._refuse(
                408,
                f"the request head took more than {self.guard.settings.header_timeout_s:g} s "
                "to arrive (--header-timeout-s)",
            )

    def _abort(self) -> None:
        if not self.transport.is_closing() or self.transport.get_write_buffer_size():
            self.transport.abort()

    def pause_writing(self) -> None:
        """The client reads slower than the answer is written: it has ``--body-timeout-s``
        to read what is waiting (slow read), else the connection is dropped."""
        super().pause_writing()
        if self.write_deadline is None:
            self.write_deadline = self.loop.call_later(
                self.guard.settings.body_timeout_s, self._write_over
            )

    def resume_writing(self) -> None:
        super().resume_writing()
        if self.write_deadline is not None:
            self.write_deadline.cancel()
            self.write_deadline = None

    def _write_over(self) -> None:
        self.write_deadline = None
        self.drop()

    # --------------------------------------------------------------- stops
    def shutdown(self) -> None:
        """The server stops: an idle connection closes now, a busy one has the grace period
        to finish its request (then it is answered 503)."""
        if not self.busy():
            self.drop()
            return
        for cycle in (self.running, self.cycle):
            if cycle is not None:
                cycle.keep_alive = False
        self._arm(self.guard.settings.grace_s, self._grace_over, force=True)
        self.stopping = True

    def _grace_over(self) -> None:
        self.guard.stopping.set()  # decoding stops between files
        answered = self.running is None or self.running.response_started
        self._abandon()  # what the apps still send is dropped
        if answered:
            self.transport.abort()  # half an answer: nothing better to do
            return
        self._answer_and_close(
            error_bytes(
                503,
                f"the server is stopping: this request did not finish within "
                f"{self.guard.settings.grace_s:g} s (--grace-s); try again",
            )
        )
