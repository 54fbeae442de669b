"""Webhook delivery from the persisted outbox, the way Meta delivers: every event on its own.

Each app subscribed to the WABA and to the event's field gets its own copy, signed with its secret, at
the URL the domain chose (``Platform.webhook_targets``: the number's override, then the WABA's, then the
app's callback).
Every copy is delivered and retried independently: a refused or slow event never holds back later
ones, up to ``concurrent_per_url`` attempts run at once per URL, and a failed attempt (anything but
HTTP 200, a timeout, a connection error) is retried with growing intervals ("decreasing frequency")
until ``give_up_after_seconds`` (Meta: 7 days). Meta promises no ordering; the ``ordered`` fault mode
brings back one-at-a-time delivery per URL for businesses that want to test the strict case.

The dispatcher reads only what is due, per URL, through the outbox indexes, and sleeps until the
next due attempt: thousands of rows waiting for a retry cost nothing per loop. A row that is due the
moment it is committed is not read back: :meth:`Dispatcher.committed` writes its POST on an idle
kept-alive connection in the same loop turn as the commit (``sender.py``), before the loop answers the
next queued request. Attempts are recorded together, one transaction every ``RECORD_BATCH_SECONDS``; an
answered row frees its URL's slot at once but is not attempted again until its attempt is recorded, so it
is never sent twice at once.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable, Iterable
from urllib.parse import urlencode

import aiohttp

from .. import codec
from ..domain.clock import VirtualClock
from ..domain.errors import GraphError
from ..domain.platform import Platform
from ..store.sqlite import OUTBOX_COLUMNS, OUTBOX_DEFAULTS, OutboxItem, Store
from . import payloads
from .faults import FaultPlan, hold, injected
from .sender import Sender, SendError
from .settings import WebhookDelivery
from .signature import HEADER, sign

log = logging.getLogger("wacall.webhooks")
USER_AGENT = "facebookexternalua"
RECORD_BATCH_SECONDS = 0.01    # attempts are recorded together, at most this long after they end


def outbox_rows(platform: Platform, events: list, now: float, faults: FaultPlan | None = None) -> list[dict]:
    """The outbox rows for these events: one per (event, app), bodies escaped and signed as Meta does.
    Injected faults are decided here, stored with the row, and noted on the call's timeline."""
    rows = []
    for event in events:
        rendered = payloads.render(platform, event)
        if rendered is None:
            continue
        field, number, value, call_id = rendered
        body = codec.dump_escaped(payloads.envelope(number.waba_id, field, value))
        kind = payloads.event_kind(field, value)
        for app_id, url in platform.webhook_targets(field, number):
            row = {"app_id": app_id, "url": url, "field": field, "waba_id": number.waba_id,
                   "phone_number_id": number.id, "call_id": call_id, "body": body, "created_at": now,
                   "next_attempt_at": now, "attempts": 0, "status": "pending", "fault": None}
            decided = faults.decide(field, kind, app_id) if faults else []
            if decided:
                row.update(fault=codec.dumps(decided), next_attempt_at=now + hold(decided))
                call = platform.calls.get(call_id) if call_id else None
                if call is not None:
                    for fault in decided:
                        platform.note(call, "webhook_fault", fault=fault["kind"], field=field, event=kind,
                                      app_id=app_id, url=url, seconds=fault.get("seconds"),
                                      attempts=fault.get("attempts"), copies=fault.get("copies"))
            rows.append(row)
            rows += [{**row, "next_attempt_at": now,
                      "fault": codec.dumps([{"kind": "duplicate", "rule": fault["rule"], "copy": copy}])}
                     for fault in decided if fault["kind"] == "duplicate" for copy in range(1, fault["copies"] + 1)]
    return rows


class Dispatcher:
    def __init__(self, store: Store, clock: VirtualClock, session: aiohttp.ClientSession,
                 settings: WebhookDelivery, secret_for: Callable[[str], str | None]) -> None:
        self.store = store
        self.clock = clock
        self.session = session
        self.settings = settings
        self.secret_for = secret_for
        self.faults = FaultPlan.parse(settings.faults)
        self._wake = asyncio.Event()
        self._in_flight: dict[str, set[int]] = {}     # url -> outbox ids being attempted
        self._recording: dict[str, set[int]] = {}     # url -> ids answered, their attempt not yet recorded
        self._urls: set[str] | None = None            # URLs with pending rows (read from the store once)
        self._tasks: set[asyncio.Task] = set()
        self._generation = 0                          # bumped by reset(): attempts from before it are not recorded
        self._stopping = False
        self._kick_scheduled = False
        self.on_attempt: Callable[[int], None] | None = None   # told each recorded attempt's outbox id (live stream)
        self.sender = Sender(USER_AGENT)
        self._backlog: set[str] = set()               # URLs that may have due rows not yet started
        self._records: list[tuple[OutboxItem, dict]] = []   # attempts to record at the end of this loop turn
        self._record_scheduled = False

    def committed(self, rows: list[dict], ids: list[int]) -> None:
        """These outbox rows were just committed (``ids`` from the store): each one due now, with no injected
        fault, is written to its URL at once when a kept-alive connection is idle (else its task opens one);
        the rest waits for the dispatcher as before."""
        urls: set[str] = set()
        now = self.clock.now()
        try:
            asyncio.get_running_loop()
        except RuntimeError:                    # no loop (a synchronous caller): run() sends them when it runs
            urls, rows = {row["url"] for row in rows}, []
        for row, item_id in zip(rows, ids):
            url = row["url"]
            busy = self._in_flight.setdefault(url, set())
            if (self._stopping or self.faults.ordered or row.get("fault") or row["next_attempt_at"] > now
                    or len(busy) >= self.settings.concurrent_per_url):
                urls.add(url)
                continue
            item = OutboxItem(item_id, *(row.get(name, OUTBOX_DEFAULTS.get(name)) for name in OUTBOX_COLUMNS))
            busy.add(item_id)
            try:
                request = self._request(item)
                started = self.sender.start(request)
            except Exception:  # a bad URL or header, a socket error: the attempt task reports it
                request = started = None
            self._spawn(self._attempt(item, request, started))
        if self._urls is not None:
            self._urls.update(row["url"] for row in rows)
        if urls:
            self._backlog.update(urls)
            self.wake(urls)

    def _spawn(self, coro) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _request(self, item: OutboxItem):
        secret = self.secret_for(item.app_id) or ""
        return self.sender.request(item.url, [("Content-Type", "application/json"), (HEADER, sign(secret, item.body))],
                                   item.body)

    def wake(self, urls: Iterable[str] = ()) -> None:
        """Look again now; ``urls`` have new rows (committed: the caller wakes the dispatcher after the
        store's commit). The due rows are started on the loop's next turn, not after :meth:`run` has come
        round (a webhook's latency is what a business measures)."""
        if self._urls is not None:
            self._urls.update(urls)
        self._wake.set()
        if not self._kick_scheduled and not self._stopping:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:
                return                      # no loop (a synchronous caller): run() looks when it runs
            self._kick_scheduled = True
            loop.call_soon(self._kick)

    def _kick(self) -> None:
        self._kick_scheduled = False
        if self._stopping:
            return
        try:
            self._dispatch_due()
        except Exception:  # run() retries on its own schedule
            log.exception("webhook dispatch failed")

    def reset(self) -> None:
        """The outbox was wiped (control API reset): forget what was known about it, restore the config's faults."""
        self._urls = None
        self._in_flight = {}
        self._recording = {}
        self._records = []                            # attempts at rows that are gone
        self._generation += 1
        self.faults = FaultPlan.parse(self.settings.faults)
        self._wake.set()

    def fault_plan(self, replace: dict | None = None) -> dict:
        """The fault plan as the control API shows it, after replacing it with ``replace`` when given
        (``{}`` clears it; ValueError for a plan that does not parse)."""
        if replace is not None:
            self.faults = FaultPlan.parse(replace)
            self.wake()
        return self.faults.view()

    def stats(self) -> dict:
        return {"in_flight": sum(len(ids) for ids in self._in_flight.values()),
                "urls_pending": None if self._urls is None else len(self._urls), **self.sender.stats}

    async def run(self) -> None:
        while not self._stopping:
            try:
                delay = self._dispatch_due()
            except Exception:  # a store hiccup must not stop delivery for good
                log.exception("webhook dispatch failed")
                delay = 1.0
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        self._stopping = True
        self._wake.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
        self._flush_records()
        self.sender.close()

    def retry_delay(self, failed_attempts: int) -> float:
        """Seconds between the n-th failed attempt and the next: growing by ``retry_factor`` up to the cap."""
        s = self.settings
        exponent = min(failed_attempts - 1, 64)
        return min(s.retry_base_seconds * s.retry_factor ** exponent, s.retry_max_seconds)

    def _dispatch_due(self) -> float:
        now = self.clock.now()
        if self._urls is None:
            self._urls = self.store.pending_urls()
        for url in list(self._urls):
            busy = self._in_flight.setdefault(url, set())
            recording = self._recording.get(url, set())      # still pending in the store: not to start again
            if self.faults.ordered:
                if busy or recording:
                    continue
                head = self.store.oldest_pending(url)
                due = [head] if head is not None and head.next_attempt_at <= now else []
                idle = head is None
            else:
                free = self.settings.concurrent_per_url - len(busy)
                if free <= 0:
                    continue
                due = self.store.due_outbox(url, now, exclude=busy | recording, limit=free)
                idle = not due and not busy and not recording and self.store.oldest_pending(url) is None
                if len(due) < free:
                    self._backlog.discard(url)
                else:
                    self._backlog.add(url)             # there may be more: look again when an attempt ends
            if idle:
                self._urls.discard(url)
                self._in_flight.pop(url, None)
                self._recording.pop(url, None)
            for item in due:
                busy.add(item.id)
                self._spawn(self._attempt(item))
        next_due = self.store.next_attempt_after(now)
        return 1.0 if next_due is None else max(0.01, min(1.0, next_due - now))

    async def _attempt(self, item: OutboxItem, request=None, started=None) -> None:
        """One attempt at one row (``started``: its POST is on the wire already, see :meth:`committed`)."""
        began, status, said, error, generation = time.monotonic(), None, b"", None, self._generation
        fault = injected(codec.loads(item.fault) if item.fault else None, item.attempts)
        try:
            if fault == "fail":
                error = "injected fault: fail (the attempt never reached the receiver)"
            else:
                async with asyncio.timeout(self.settings.timeout_seconds):
                    status, said = await self.sender.post(request or self._request(item), started)
                if status != 200:               # Meta: "an HTTP status code other than 200" is a failure
                    error = f"HTTP {status}"
        except asyncio.CancelledError:
            if generation == self._generation:
                self._done(item, False)
            raise
        except TimeoutError:
            error = f"timed out after {self.settings.timeout_seconds} s"
        except Exception as exc:  # SendError, and a receiver must never take the dispatcher down
            error = str(exc) if isinstance(exc, SendError) else f"{type(exc).__name__}: {exc}"
        if fault == "timeout":
            error = f"injected fault: timeout (the receiver answered {error or f'HTTP {status}'})"
        if generation != self._generation:      # the outbox was wiped meanwhile: this row is gone
            return
        now = self.clock.now()
        delivered = error is None
        backoff = self.retry_delay(item.attempts + 1)
        expired = not delivered and now + backoff > item.created_at + self.settings.give_up_after_seconds
        self._records.append((item, dict(at=now, status_code=status, error=error,
                                         response=said.decode("utf-8", "replace") if said else None,
                                         duration_ms=round((time.monotonic() - began) * 1000, 2),
                                         delivered=delivered, next_attempt_at=now + backoff, expired=expired)))
        # the answer is in: the URL's slot is free now (the row stays out of reach until it is recorded)
        self._in_flight.get(item.url, set()).discard(item.id)
        self._recording.setdefault(item.url, set()).add(item.id)
        if item.url in self._backlog:
            self.wake()
        if not self._record_scheduled:
            self._record_scheduled = True
            loop = asyncio.get_running_loop()
            if self.faults.ordered:                 # the next head waits for this record
                loop.call_soon(self._flush_records)
            else:
                loop.call_later(RECORD_BATCH_SECONDS, self._flush_records)
        if log.isEnabledFor(logging.INFO):      # one line per attempt (wacall.logs); nothing below INFO
            log.info("webhook %s attempt %d to %s: %s", item.id, item.attempts + 1, item.url,
                     "delivered (HTTP 200)" if delivered else
                     f"failed ({error}); {'giving up' if expired else f'retry in {backoff:.1f}s'}")

    def journal(self, **query) -> list[dict]:
        """The store's journal (``Store.journal``) with every attempt that has ended recorded first: what
        the receiver has answered, the journal shows."""
        self._flush_records()
        return self.store.journal(**query)

    def _flush_records(self) -> None:
        """Record the attempts that ended since the last time in one transaction; only then are their rows free
        again (a crash before it repeats those deliveries: at least once)."""
        self._record_scheduled = False
        batch, self._records = self._records, []
        if not batch:
            return
        try:
            self.store.record_attempts([(item.id, outcome) for item, outcome in batch])
        except Exception:  # a store hiccup: the rows stay pending and are attempted again
            log.exception("recording %d webhook attempts failed", len(batch))
        finally:
            for item, outcome in batch:
                self._done(item, outcome["delivered"])
        if self.on_attempt is not None:
            for item, _ in batch:
                self.on_attempt(item.id)

    def _done(self, item: OutboxItem, delivered: bool) -> None:
        self._in_flight.get(item.url, set()).discard(item.id)
        self._recording.get(item.url, set()).discard(item.id)
        if not delivered or item.url in self._backlog or self.faults.ordered:
            self.wake()

    async def verify_callback(self, url: str, verify_token: str) -> None:
        """Meta's GET handshake: the endpoint must echo hub.challenge for the right verify token."""
        challenge = str(int(self.clock.now() * 1000) % 10**10)
        query = urlencode({"hub.mode": "subscribe", "hub.challenge": challenge, "hub.verify_token": verify_token})
        target = f"{url}{'&' if '?' in url else '?'}{query}"
        try:
            timeout = aiohttp.ClientTimeout(total=self.settings.verify_timeout_seconds)
            async with self.session.get(target, timeout=timeout, headers={"User-Agent": USER_AGENT}) as resp:
                text = (await resp.text()).strip()
                if resp.status != 200:
                    raise GraphError(2200, f"Callback verification failed with the following errors: HTTP Status "
                                           f"Code = {resp.status}; HTTP Message = {resp.reason}")
                if text != challenge:
                    raise GraphError(2200, "Callback verification failed with the following errors: The "
                                           "response does not match the challenge.")
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            raise GraphError(2200, "Callback verification failed with the following errors: "
                                   f"{type(exc).__name__}: {exc}") from None
