"""The live stream, ``GET /_wacall/stream``: what happens in wacall as server-sent events, for the console's
pages, ``wacall calls --follow`` and anyone with ``curl -N``.

- ``event: call``, ``data:`` the call as ``GET /_wacall/calls/{call_id}`` shows it, without its timeline and
  webhook journal, each time the call changes (its state, its media set up, connected or released);
- ``event: webhook``, ``data:`` one entry of the webhook journal (``GET /_wacall/webhooks``) after each attempt;
- ``event: clock``, ``data:`` ``GET /_wacall/clock``, when the virtual clock is advanced;
- ``: ping`` every 15 s (a comment: it keeps proxies and idle timeouts from closing the stream).

``?call_id=`` keeps the call and webhook events of that call (clock events still come).

The server tells :class:`LiveStream` *which* call changed (it registers for the call events in its
``EventRegistry``), which webhook was attempted and that the clock moved; the stream reads the views through
a :class:`StreamSource` only when someone listens, one at a time in the order the changes came, so several
changes of one call in one event-loop turn make one event. A listener that cannot keep up (its queue of
unsent events full) is disconnected rather than let memory grow; ``EventSource`` reconnects by itself.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from .. import codec
from ..control.routes import CONTROL, ControlHost, call_view, clock_view
from ..domain.events import (CallConnect, CallStatus, CallTerminate, MediaConfigure, MediaConnected, ReleaseMedia,
                             SipCallChanged)

log = logging.getLogger("wacall.console")

# the domain events that say a call changed (state, media): the server registers call_changed for each
CALL_EVENTS = (CallConnect, CallStatus, CallTerminate, SipCallChanged, MediaConfigure, MediaConnected, ReleaseMedia)
PING_SECONDS = 15.0
QUEUE_LIMIT = 1000            # unsent events per listener before it is disconnected
CLOSE = object()              # queued to a listener: the server is stopping


@dataclass(frozen=True)
class StreamSource:
    """Where the stream reads what it sends (built from the control API's views by :func:`source_for`)."""
    call: Callable[[str], Awaitable[dict | None]]      # a call without its timeline; None when unknown
    webhook: Callable[[int], dict | None]              # one webhook journal entry by outbox id
    clock: Callable[[], dict]                          # the clock as GET /_wacall/clock shows it


def source_for(host: ControlHost) -> StreamSource:
    async def call(call_id: str) -> dict | None:
        if host.platform.call(call_id) is None:
            return None
        return await call_view(host, call_id, with_webhooks=False, with_timeline=False)

    def webhook(outbox_id: int) -> dict | None:
        found = host.journal(outbox_id=outbox_id, limit=1)
        return found[0] if found else None

    return StreamSource(call=call, webhook=webhook, clock=lambda: clock_view(host))


class Listener:
    def __init__(self, call_id: str | None) -> None:
        self.call_id = call_id
        self.queue: asyncio.Queue = asyncio.Queue(QUEUE_LIMIT)

    def close(self) -> None:
        """End this listener's stream: what it had not sent yet is dropped."""
        while not self.queue.empty():
            self.queue.get_nowait()
        self.queue.put_nowait(CLOSE)

    def wants(self, kind: str, call_id: str | None) -> bool:
        return self.call_id is None or kind == "clock" or call_id == self.call_id


class LiveStream:
    def __init__(self, ping_seconds: float = PING_SECONDS) -> None:
        self.ping_seconds = ping_seconds
        self.source: StreamSource | None = None
        self.listeners: set[Listener] = set()
        self._pending: deque[tuple[str, Any]] = deque()
        self._pending_calls: set[str] = set()
        self._pump: asyncio.Task | None = None

    # -- what the server tells it (cheap when nobody listens) -----------------------------------------
    def call_changed(self, call_id: str) -> None:
        if self.listeners and call_id not in self._pending_calls:
            self._pending_calls.add(call_id)
            self._queue(("call", call_id))

    def webhook_attempted(self, outbox_id: int) -> None:
        if self.listeners:
            self._queue(("webhook", outbox_id))

    def clock_advanced(self) -> None:
        if self.listeners:
            self._queue(("clock", None))

    def _queue(self, item: tuple[str, Any]) -> None:
        self._pending.append(item)
        if self._pump is None or self._pump.done():
            try:
                self._pump = asyncio.get_running_loop().create_task(self._run())
            except RuntimeError:       # no loop (a synchronous caller): nobody can be listening either
                self._pending.clear()
                self._pending_calls.clear()

    async def _run(self) -> None:
        await asyncio.sleep(0)         # let the rest of this turn's changes join (one event per call)
        while self._pending:
            kind, key = self._pending.popleft()
            if kind == "call":
                self._pending_calls.discard(key)
            try:
                data, call_id = await self._read(kind, key)
            except Exception:          # a view that cannot be read must not stop the stream
                log.exception("live stream: cannot read %s %s", kind, key)
                continue
            if data is not None:
                self._send(kind, data, call_id)

    async def _read(self, kind: str, key: Any) -> tuple[dict | None, str | None]:
        source = self.source
        if source is None:
            return None, None
        if kind == "call":
            return await source.call(key), key
        if kind == "webhook":
            entry = source.webhook(key)
            return entry, entry.get("call_id") if entry else None
        return source.clock(), None

    def _send(self, kind: str, data: dict, call_id: str | None) -> None:
        frame = f"event: {kind}\ndata: {codec.dumps(data)}\n\n".encode("utf-8")
        for listener in list(self.listeners):
            if listener.wants(kind, call_id):
                try:
                    listener.queue.put_nowait(frame)
                except asyncio.QueueFull:
                    log.info("live stream: a listener fell %d events behind; disconnecting it", QUEUE_LIMIT)
                    self.listeners.discard(listener)
                    listener.close()

    def close(self) -> None:
        """The server is stopping: every open stream ends."""
        for listener in list(self.listeners):
            listener.close()
        self.listeners.clear()

    # -- the HTTP side ------------------------------------------------------------------------------
    async def handle(self, request: web.Request) -> web.StreamResponse:
        call_id = request.query.get("call_id") or None
        response = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache",
                                               "X-Accel-Buffering": "no"})
        listener = Listener(call_id)
        self.listeners.add(listener)       # before the headers go: a client that sees it open misses nothing
        try:
            await response.prepare(request)
            await response.write(b"retry: 1000\n: connected\n\n")
            while True:
                try:
                    frame = await asyncio.wait_for(listener.queue.get(), self.ping_seconds)
                except asyncio.TimeoutError:
                    frame = b": ping\n\n"
                if frame is CLOSE:
                    break
                await response.write(frame)
        except ConnectionResetError:       # the client went away
            pass
        finally:
            self.listeners.discard(listener)
        return response


STREAM = web.AppKey("live_stream", LiveStream)


async def stream(request: web.Request) -> web.StreamResponse:
    return await request.app[STREAM].handle(request)


def stream_routes(app: web.Application, live: LiveStream) -> None:
    """``GET /_wacall/stream``, reading its views through the control API's host (``app[CONTROL]``)."""
    app[STREAM] = live
    live.source = source_for(app[CONTROL])
    app.router.add_get("/_wacall/stream", stream)
