"""A business's webhook endpoint for calling (aiohttp), and the state of each call kept by its wacid.

    book = CallBook()
    receiver = WebhookReceiver(app_secret, verify_token, book, on_connect=answer, on_terminate=hang_up)
    url = await receiver.start(port=8443)               # behind your TLS proxy; port 0: a free port

What Meta does, and what this takes care of
(https://developers.facebook.com/docs/graph-api/webhooks/getting-started,
https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference#call-connect-webhook):

- The subscription's verification ``GET`` (``hub.mode=subscribe``, ``hub.verify_token``, ``hub.challenge``)
  is answered with the challenge when the token matches, 403 otherwise.
- Every ``POST`` is signed: ``X-Hub-Signature-256: sha256=<HMAC-SHA256 of the raw body under the app
  secret>``. Meta signs the bytes it sends, whose non-ASCII characters are escaped (``\\u00e9``), so the
  signature is checked over the raw body, never over JSON re-encoded after parsing. A POST that does not
  match is answered 401 and not processed.
- Meta answers nothing about order and delivers at least once: the same webhook may come twice, a
  ``terminate`` may come before its ``connect``, and a ``connect`` retried for minutes may come after the
  call ended. :class:`CallBook` applies each webhook to the call's record so that each handler runs at
  most once per call and event: ``on_connect`` only for a call that has not ended, ``on_terminate`` once,
  ``on_status`` once per status and never backwards (``RINGING`` after ``ACCEPTED`` is stale). What came
  too late is kept on the record (``late``) for the logs. An ended call is kept small (its SDPs are dropped:
  a handler that runs after the terminate was applied sees ``sdp`` None), and only the last ``keep_ended``
  (``KEEP_ENDED``) ended calls are remembered.
- The 200 goes back as soon as the signature is checked; handlers run afterwards (a task per webhook,
  one call's handlers one after another), because a slow answer makes Meta retry.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import logging
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

from aiohttp import web

log = logging.getLogger("wacall.business")

SIGNATURE_HEADER = "X-Hub-Signature-256"
# a call status only moves forward; the end comes from the terminate webhook
_STATUS_RANK = {"RINGING": 1, "ACCEPTED": 2, "REJECTED": 3}
# Ended calls remembered, oldest forgotten first, so that a late or repeated webhook for one of them is recognised
# (Meta retries a delivery for up to 7 days): 10 000 calls whole, about 12 MB (each is kept small, ~1.2 KB: its SDPs
# are dropped once KEEP_SDPS calls have ended after it, when no handler still reads them), and the ids of 100 000 more
# (~10 MB), whose webhooks are then dropped as late instead of ringing a call that is over.
KEEP_ENDED = 10_000
KEEP_ENDED_IDS = 100_000
KEEP_SDPS = 100
LATE_KEPT = 32      # late or repeated events named per call (Call.late); more are only counted


def signature(app_secret: str, raw: bytes) -> str:
    """The ``X-Hub-Signature-256`` value Meta sends for ``raw``."""
    return "sha256=" + hmac.new(app_secret.encode(), raw, hashlib.sha256).hexdigest()


@dataclass
class Call:
    """What the business knows of one call, from its webhooks."""
    call_id: str
    phone_number_id: str | None = None
    direction: str | None = None          # USER_INITIATED or BUSINESS_INITIATED (from the connect)
    user: str | None = None               # the WhatsApp user's wa_id
    sdp: str | None = None                # Meta's SDP from the connect: an offer (user-initiated) or the answer
    status: str | None = None             # the latest call status: RINGING, ACCEPTED, REJECTED
    ended: bool = False
    end: dict | None = None               # the terminate event: status, duration, start/end time, errors
    connect: dict | None = None           # the connect event as it came
    callback_data: str | None = None      # biz_opaque_callback_data, when the business set one
    events: list[str] = field(default_factory=list)    # what was applied, in arrival order
    late: list[str] = field(default_factory=list)      # what came after the end, or twice, and was dropped
    late_more: int = 0                    # how many more were dropped once ``late`` held LATE_KEPT

    def drop(self, what: str) -> None:
        """Note an event dropped as late: the first LATE_KEPT by name, then only counted (a sender that
        redelivers without end must not grow the call without bound)."""
        if len(self.late) < LATE_KEPT:
            self.late.append(what)
        else:
            self.late_more += 1


Handler = Callable[[Call], Awaitable[None]]
StatusHandler = Callable[[Call, str], Awaitable[None]]



def _list(items: object) -> list[dict]:
    """The objects of a webhook's list, without what is not one (a sender's malformed element is skipped, not
    a 500 that makes Meta retry the whole delivery)."""
    return [item for item in items if isinstance(item, dict)] if isinstance(items, list) else []

class CallBook:
    """Calls by wacid, updated by webhooks in whatever order and number they come (see the module)."""

    def __init__(self, keep_ended: int = KEEP_ENDED, keep_ended_ids: int = KEEP_ENDED_IDS) -> None:
        self.calls: dict[str, Call] = {}
        self._ended: OrderedDict[str, Call] = OrderedDict()
        self._with_sdps: deque[Call] = deque()          # the last KEEP_SDPS calls ended, still whole
        self._forgotten: OrderedDict[str, None] = OrderedDict()   # ids of ended calls no longer kept whole
        self.keep_ended, self.keep_ended_ids = keep_ended, keep_ended_ids

    def get(self, call_id: str) -> Call | None:
        return self.calls.get(call_id) or self._ended.get(call_id)

    def apply(self, field_name: str, value: dict) -> list[tuple[str, Call, str | None]]:
        """Apply one change of a webhook; returns what is new, as (``connect`` | ``terminate`` |
        ``status``, the call, the status or None), in order. Duplicates and late events return nothing."""
        if not isinstance(value, dict):
            return []
        if field_name != "calls" and not any(isinstance(s, dict) and s.get("type") == "call"
                                             for s in _list(value.get("statuses"))):
            return []
        metadata = value.get("metadata")
        pnid = metadata.get("phone_number_id") if isinstance(metadata, dict) else None
        happened: list[tuple[str, Call, str | None]] = []
        for event in _list(value.get("calls")):
            call = self._call(event.get("id"), pnid)
            if call is None:
                continue
            kind = event.get("event")
            if kind == "connect":
                if call.ended or call.connect is not None:
                    call.drop("connect")
                    continue
                call.connect = event
                call.direction = event.get("direction")
                call.user = event.get("from") if call.direction != "BUSINESS_INITIATED" else event.get("to")
                call.sdp = (event.get("session") or {}).get("sdp")
                call.callback_data = event.get("biz_opaque_callback_data", call.callback_data)
            elif kind == "terminate":
                if call.ended:
                    call.drop("terminate")
                    continue
                call.ended, call.end = True, event
                call.direction = call.direction or event.get("direction")
                call.user = call.user or (event.get("from") if event.get("direction") != "BUSINESS_INITIATED"
                                          else event.get("to"))
                self._retire(call)
            else:
                continue
            call.events.append(kind)
            happened.append((kind, call, None))
        for status in _list(value.get("statuses")):
            if status.get("type") != "call":
                continue
            call = self._call(status.get("id"), pnid)
            name = str(status.get("status", "")).upper()
            if call is None:
                continue
            if call.ended or _STATUS_RANK.get(name, 0) <= _STATUS_RANK.get(call.status or "", 0):
                call.drop(name)
                continue
            call.status = name
            call.callback_data = status.get("biz_opaque_callback_data", call.callback_data)
            call.events.append(name)
            happened.append(("status", call, name))
        return happened

    def _call(self, call_id: Any, pnid: str | None) -> Call | None:
        if not isinstance(call_id, str) or not call_id:
            return None
        call = self.get(call_id)
        if call is None and call_id in self._forgotten:     # over long ago: what comes for it is late
            return Call(call_id, phone_number_id=pnid, ended=True)
        if call is None:
            call = self.calls[call_id] = Call(call_id, phone_number_id=pnid)
        return call

    def _retire(self, call: Call) -> None:
        """The call ended: kept among the ended ones, up to ``keep_ended``, then by its id only. Its SDPs (the bulk
        of a record, of no use once it is over) are dropped ``KEEP_SDPS`` ended calls later, not now: a handler of
        its connect may still be on its way to read them (the terminate can be applied before it runs)."""
        self.calls.pop(call.call_id, None)
        self._ended[call.call_id] = call
        self._with_sdps.append(call)
        if len(self._with_sdps) > KEEP_SDPS:
            _drop_sdps(self._with_sdps.popleft())
        while len(self._ended) > self.keep_ended:
            old_id, _ = self._ended.popitem(last=False)
            self._forgotten[old_id] = None
        while len(self._forgotten) > self.keep_ended_ids:
            self._forgotten.popitem(last=False)


def _drop_sdps(call: Call) -> None:
    call.sdp = None
    session = (call.connect or {}).get("session")
    if isinstance(session, dict) and "sdp" in session:
        call.connect = {**call.connect, "session": {k: v for k, v in session.items() if k != "sdp"}}  # type: ignore[dict-item]


class WebhookReceiver:
    """The endpoint: Meta's verification GET, signed POSTs, a :class:`CallBook`, and the handlers."""

    def __init__(self, app_secret: str, verify_token: str, book: CallBook | None = None, *,
                 on_connect: Handler | None = None, on_terminate: Handler | None = None,
                 on_status: StatusHandler | None = None,
                 on_webhook: Callable[[str, dict], Awaitable[None]] | None = None, path: str = "/webhook") -> None:
        self.app_secret, self.verify_token, self.path = app_secret, verify_token, path
        self.book = book or CallBook()
        self.on_connect, self.on_terminate, self.on_status, self.on_webhook = (on_connect, on_terminate,
                                                                               on_status, on_webhook)
        self.refused = 0                                  # POSTs whose signature did not match
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}   # per call: its lock, handlers not done
        self._tasks: set[asyncio.Task] = set()
        self._runner: web.AppRunner | None = None

    def app(self) -> web.Application:
        app = web.Application(client_max_size=4 * 1024 * 1024)
        app.router.add_get(self.path, self._verify)
        app.router.add_post(self.path, self._post)
        return app

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        """Serve on ``host:port`` (0: a free port); the URL to subscribe."""
        self._runner = web.AppRunner(self.app(), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]          # type: ignore[union-attr]
        return f"http://{host}:{bound}{self.path}"

    async def stop(self) -> None:
        await self.drain()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def drain(self) -> None:
        """Wait for the handlers of what has arrived so far."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def _verify(self, request: web.Request) -> web.Response:
        query = request.query
        if query.get("hub.mode") == "subscribe" and hmac.compare_digest(query.get("hub.verify_token", ""),
                                                                         self.verify_token):
            return web.Response(text=query.get("hub.challenge", ""))
        return web.Response(status=403, text="verify token mismatch")

    async def _post(self, request: web.Request) -> web.Response:
        raw = await request.read()
        if not hmac.compare_digest(signature(self.app_secret, raw), request.headers.get(SIGNATURE_HEADER, "")):
            self.refused += 1
            log.warning("webhook refused: %s does not match the app secret", SIGNATURE_HEADER)
            return web.Response(status=401, text=f"bad {SIGNATURE_HEADER}")
        try:
            body = json.loads(raw)
        except ValueError:
            return web.Response(status=400, text="not JSON")
        entries = body.get("entry") if isinstance(body, dict) else None
        for entry in entries if isinstance(entries, list) else ():
            for change in (entry.get("changes") if isinstance(entry, dict) else None) or ():
                if isinstance(change, dict) and isinstance(change.get("value"), dict):
                    self._handle(str(change.get("field", "")), change["value"])
        return web.Response(text="ok")

    def _handle(self, field_name: str, value: dict) -> None:
        happened = self.book.apply(field_name, value)
        if self.on_webhook is not None:
            self._spawn(None, self.on_webhook(field_name, value))
        for kind, call, status in happened:
            handler = {"connect": self.on_connect, "terminate": self.on_terminate}.get(kind)
            if kind == "status" and self.on_status is not None:
                self._spawn(call.call_id, self.on_status(call, status or ""))
            elif handler is not None:
                self._spawn(call.call_id, handler(call))

    def _spawn(self, call_id: str | None, work: Awaitable[None]) -> None:
        lock = None
        if call_id is not None:                         # one call's handlers in the order its events came
            lock, waiting = self._locks.get(call_id, (asyncio.Lock(), 0))
            self._locks[call_id] = (lock, waiting + 1)

        async def run() -> None:
            try:
                if lock is None:
                    await work
                else:
                    async with lock:
                        await work
            except Exception:
                log.exception("webhook handler failed (call %s)", call_id)
            finally:
                if call_id is not None:
                    held, waiting = self._locks[call_id]
                    if waiting == 1:
                        del self._locks[call_id]
                    else:
                        self._locks[call_id] = (held, waiting - 1)
        task = asyncio.get_running_loop().create_task(run())
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
