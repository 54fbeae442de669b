"""A business's webhook endpoint for tests: answers Meta's verification GET, checks every POST's
``X-Hub-Signature-256`` against the app secret, records the webhooks and lets a test wait for one.

    receiver = WebhookReceiver(app_secret, verify_token).start()     # on a free loopback port
    w.subscribe_webhooks(receiver.url)
    connect = receiver.wait_for("calls", event="connect")           # the webhook's value
    offer = connect["calls"][0]["session"]["sdp"]

Meta signs the raw body with HMAC-SHA256 under the app secret
(https://developers.facebook.com/docs/graph-api/webhooks/getting-started#validate-payloads); a POST
whose signature does not match is answered 401 and counted in ``bad_signatures``, and
:meth:`WebhookReceiver.wait_for` then fails at once saying so.

For tests of failure handling it can also fail (HTTP 500) a number of times, hang, answer another status
per webhook (``refuse(body)`` returns one, or None to accept) or hold a request until an event is set
(``hold(body)`` returns a ``threading.Event``, or None). ``posts`` has every POST as it arrived, accepted
or not; ``deliveries`` only the accepted ones.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any, Callable, Iterator
from urllib.parse import parse_qs, urlparse

from ..webhooks.signature import verify


@dataclass
class Delivery:
    """One webhook POST: its headers, raw body and parsed JSON."""
    headers: dict[str, str]
    raw: bytes
    body: dict

    @property
    def changes(self) -> list[dict]:
        return [c for e in self.body.get("entry", []) for c in e.get("changes", [])]

    @property
    def field(self) -> str:
        return self.changes[0]["field"]

    @property
    def value(self) -> dict:
        return self.changes[0]["value"]


def _items(value: dict) -> list[dict]:
    """The value itself and every object in its lists (``calls``, ``statuses``, ``messages``...)."""
    out = [value]
    for item in value.values():
        if isinstance(item, list):
            out += [x for x in item if isinstance(x, dict)]
    return out


def matches(value: dict, match: dict[str, Any]) -> bool:
    """True when the value, or one object in its lists, has every ``key == expected`` of ``match``."""
    return any(all(item.get(key) == expected for key, expected in match.items()) for item in _items(value))


def _summary(delivery: Delivery) -> str:
    try:
        value = delivery.value
        kinds = [f"{key}={item.get('event') or item.get('status') or item.get('type') or '?'}"
                 for key, items in value.items() if isinstance(items, list) and key != "contacts"
                 for item in items if isinstance(item, dict)]
        return f"{delivery.field}({', '.join(kinds)})"
    except (KeyError, IndexError, AttributeError):
        return json.dumps(delivery.body)[:200]


@dataclass
class WebhookReceiver:
    app_secret: str
    verify_token: str
    path: str = "/webhook"
    deliveries: list[Delivery] = field(default_factory=list)
    posts: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    fail_remaining: int = 0
    failures_served: int = 0
    hang_seconds: float = 0.0
    refuse: Callable[[dict], int | None] | None = None
    hold: Callable[[dict], threading.Event | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "WebhookReceiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def _answer(self, status: int, body: bytes = b"") -> None:
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                if (query.get("hub.mode") == ["subscribe"]
                        and query.get("hub.verify_token") == [receiver.verify_token]):
                    self._answer(200, query["hub.challenge"][0].encode())
                else:
                    self._answer(403, b"forbidden")

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                try:
                    body = json.loads(raw)
                except ValueError:
                    self._answer(400, b"not JSON")
                    return
                with receiver.lock:
                    receiver.posts.append(Delivery(dict(self.headers), raw, body))
                    failing = receiver.fail_remaining > 0
                    if failing:
                        receiver.fail_remaining -= 1
                        receiver.failures_served += 1
                held = receiver.hold(body) if receiver.hold else None
                if held is not None:
                    held.wait(60)
                if receiver.hang_seconds:
                    time.sleep(receiver.hang_seconds)
                status = 500 if failing else (receiver.refuse(body) if receiver.refuse else None)
                if status is not None and status != 200:
                    self._answer(status, b"down for a test" if failing else b"")
                    return
                if not verify(receiver.app_secret, raw, self.headers.get("X-Hub-Signature-256")):
                    with receiver.lock:
                        receiver.bad_signatures += 1
                    self._answer(401, b"bad X-Hub-Signature-256")
                    return
                with receiver.lock:
                    receiver.deliveries.append(Delivery(dict(self.headers), raw, body))
                self._answer(200)

        class Server(ThreadingHTTPServer):
            request_queue_size = 128        # Meta sends several webhooks to one URL at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, name="wacall-webhooks", daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}{self.path}"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def __enter__(self) -> "WebhookReceiver":
        return self.start()

    @classmethod
    @contextlib.contextmanager
    def subscribed_to(cls, server: Any, **options: Any) -> Iterator["WebhookReceiver"]:
        """A started receiver for ``server``'s default app (a :class:`~wacall.testing.running.Running`),
        subscribed (app level) to its ``calls``, ``messages`` and ``account_settings_update``; stopped
        on exit."""
        with cls(app_secret=server.app_secret, verify_token=server.verify_token, **options) as receiver:
            server.subscribe_webhooks(receiver.url)
            yield receiver

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- what arrived ----------------------------------------------------------------------------------
    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def values(self, field_name: str) -> list[dict]:
        """The value of every accepted webhook of this field (``calls``, ``messages``...), in order."""
        return [d.value for d in self.snapshot() if d.field == field_name]

    def call_events(self, call_id: str) -> list[dict]:
        """Every `calls` item (connect/terminate) and call status for one call, in arrival order."""
        out = []
        for value in self.values("calls"):
            out += [c for c in value.get("calls", []) if c["id"] == call_id]
            out += [dict(s, event="status") for s in value.get("statuses", []) if s["id"] == call_id]
        return out

    def wait(self, predicate: Callable[["WebhookReceiver"], Any], timeout: float = 10.0, what: str = "webhook") -> Any:
        """Poll ``predicate(self)`` until it returns something truthy (returned), or fail after ``timeout``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; got {[d.body for d in self.snapshot()]}")

    def wait_for(self, field_name: str | None = "calls", *, timeout: float = 10.0,
                 where: Callable[[dict], bool] | None = None, **match: Any) -> dict:
        """The value of the first accepted webhook of ``field_name`` that matches, waiting up to ``timeout``
        seconds for it: ``wait_for("calls", event="connect")``, ``wait_for("calls", id=call_id,
        event="terminate")``, ``wait_for("calls", status="ACCEPTED")``, ``wait_for("messages", type="text")``.
        Each ``key=expected`` must hold on the value itself or on one object of its lists (``calls``,
        ``statuses``, ``messages``...); ``where(value)`` may add any other test. Fails with what did arrive
        when the time is up, and at once when a webhook came with a bad signature. From a coroutine it
        returns an awaitable (``connect = await receiver.wait_for("calls", event="connect")``)."""
        from .running import blocking_or_awaitable

        return blocking_or_awaitable(self._wait_for, field_name, timeout, where, match)

    def _wait_for(self, field_name: str | None, timeout: float, where: Callable[[dict], bool] | None,
                  match: dict[str, Any]) -> dict:
        described = ", ".join(f"{key}={expected!r}" for key, expected in match.items())
        what = f"a {field_name or 'any'!r} webhook" + (f" with {described}" if described else "") + \
            (" passing where()" if where else "")
        deadline = time.monotonic() + timeout
        while True:
            if self.bad_signatures:
                raise AssertionError(f"{self.bad_signatures} webhook(s) arrived with an X-Hub-Signature-256 that "
                                     "does not match the app secret this receiver was given")
            for delivery in self.snapshot():
                if field_name is not None and delivery.field != field_name:
                    continue
                if matches(delivery.value, match) and (where is None or where(delivery.value)):
                    return delivery.value
            if time.monotonic() >= deadline:
                seen = [_summary(d) for d in self.snapshot()]
                raise AssertionError(f"timed out after {timeout:g} s waiting for {what}; received "
                                     f"{len(seen)} webhook(s){': ' + '; '.join(seen) if seen else ''}")
            time.sleep(0.02)
