"""Webhook delivery from the persisted outbox: at least once, retried with exponential backoff while
the receiver fails or times out, for up to ``give_up_after_seconds`` (Meta: 7 days).

Each app subscribed to the WABA and to the event's field gets its own copy, signed with its secret,
at the most specific URL it set: the number's override, then the WABA's, then the app's callback.
Deliveries to one URL leave in order (head-of-line), so a receiver that recovers sees events in the
order they happened, with duplicates only where an attempt's outcome was unknown.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Callable
from urllib.parse import urlencode

import aiohttp

from .. import codec
from ..config import WebhookDelivery
from ..domain.clock import VirtualClock
from ..domain.errors import GraphError
from ..domain.model import PhoneNumber
from ..domain.platform import Platform
from ..store.sqlite import OutboxItem, Store
from . import payloads
from .signature import HEADER, sign

log = logging.getLogger("wacall.webhooks")
USER_AGENT = "facebookexternalua"


def targets(platform: Platform, field: str, number: PhoneNumber) -> list[tuple[str, str]]:
    """(app_id, url) for every subscribed app that wants this field and has somewhere to receive it."""
    waba = platform.wabas[number.waba_id]
    out = []
    for app_id in waba.subscribed_apps:
        app = platform.apps.get(app_id)
        if app is None or field not in app.subscribed_fields():
            continue
        url = None
        if number.override_callback and number.override_callback.get("app_id", app_id) == app_id:
            url = number.override_callback.get("override_callback_uri")
        url = url or (waba.app_overrides.get(app_id) or {}).get("override_callback_uri")
        url = url or (app.subscriptions.get("whatsapp_business_account") or {}).get("callback_url")
        if url:
            out.append((app_id, url))
    return out


def outbox_rows(platform: Platform, events: list, now: float) -> list[dict]:
    rows = []
    for event in events:
        rendered = payloads.render(platform, event)
        if rendered is None:
            continue
        field, number, value, call_id = rendered
        body = codec.dump_bytes(payloads.envelope(number.waba_id, field, value))
        for app_id, url in targets(platform, field, number):
            rows.append({"app_id": app_id, "url": url, "field": field, "waba_id": number.waba_id,
                         "phone_number_id": number.id, "call_id": call_id, "body": body, "created_at": now,
                         "next_attempt_at": now, "attempts": 0, "status": "pending"})
    return rows


class Dispatcher:
    def __init__(self, store: Store, clock: VirtualClock, session: aiohttp.ClientSession,
                 settings: WebhookDelivery, secret_for: Callable[[str], str | None]) -> None:
        self.store = store
        self.clock = clock
        self.session = session
        self.settings = settings
        self.secret_for = secret_for
        self._wake = asyncio.Event()
        self._busy_urls: set[str] = set()
        self._tasks: set[asyncio.Task] = set()
        self._stopping = False

    def wake(self) -> None:
        self._wake.set()

    async def run(self) -> None:
        while not self._stopping:
            delay = self._dispatch_due()
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

    def _dispatch_due(self) -> float:
        now = self.clock.now()
        next_due = now + 1.0
        seen: set[str] = set()
        for item in self.store.pending_outbox():
            if item.url in seen:
                continue
            seen.add(item.url)                    # only the oldest pending item per URL may go
            if item.url in self._busy_urls:
                continue
            if item.next_attempt_at > now:
                next_due = min(next_due, item.next_attempt_at)
                continue
            self._busy_urls.add(item.url)
            task = asyncio.create_task(self._attempt(item))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
        return max(0.01, min(1.0, next_due - now))

    async def _attempt(self, item: OutboxItem) -> None:
        started, status, error = time.monotonic(), None, None
        try:
            secret = self.secret_for(item.app_id) or ""
            headers = {"Content-Type": "application/json", HEADER: sign(secret, item.body),
                       "User-Agent": USER_AGENT}
            timeout = aiohttp.ClientTimeout(total=self.settings.timeout_seconds)
            async with self.session.post(item.url, data=item.body, headers=headers, timeout=timeout) as resp:
                status = resp.status
                await resp.read()
                if not 200 <= status < 300:
                    error = f"HTTP {status}"
        except asyncio.CancelledError:
            self._busy_urls.discard(item.url)
            raise
        except asyncio.TimeoutError:
            error = f"timed out after {self.settings.timeout_seconds} s"
        except aiohttp.ClientError as exc:
            error = f"{type(exc).__name__}: {exc}"
        except Exception as exc:  # a receiver must never take the dispatcher down
            error = f"{type(exc).__name__}: {exc}"
        now = self.clock.now()
        delivered = error is None
        backoff = min(self.settings.retry_base_seconds * (2 ** item.attempts), self.settings.retry_max_seconds)
        expired = not delivered and now + backoff > item.created_at + self.settings.give_up_after_seconds
        self.store.record_attempt(item.id, at=now, status_code=status, error=error,
                                  duration_ms=round((time.monotonic() - started) * 1000, 2),
                                  delivered=delivered, next_attempt_at=now + backoff, expired=expired)
        if error:
            log.info("webhook %s to %s failed (%s); retry in %.1fs", item.id, item.url, error, backoff)
        self._busy_urls.discard(item.url)
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
