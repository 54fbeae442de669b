"""Run an unmodified pywa business against wacall.

pywa hard-codes ``https://graph.facebook.com/v{version}`` as its httpx ``base_url``; the only seam it
offers is the ``session`` argument. :class:`GraphFacebookToWacall` is an httpx transport that sends
each request, unchanged apart from scheme/host/port, to wacall's Graph port, and keeps a log of what
pywa actually asked for. :class:`PywaBusiness` is one business: the pywa client, its FastAPI webhook
app served by uvicorn on a free loopback port, and a thread-safe record of every update pywa's own
handlers were given.
"""

from __future__ import annotations

import socket
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Callable

import httpx
import uvicorn
from fastapi import FastAPI
from pywa import WhatsApp, types

from .harness import Wacall, wait_until

META_GRAPH_HOST = "graph.facebook.com"


@dataclass
class Exchange:
    method: str
    original_url: str      # the URL pywa built (always https://graph.facebook.com/...)
    sent_url: str          # where it really went (wacall)
    status_code: int
    body: Any


class GraphFacebookToWacall(httpx.BaseTransport):
    """Rewrites ``https://graph.facebook.com/...`` to wacall's Graph URL; path and query untouched."""

    def __init__(self, graph_url: str) -> None:
        target = httpx.URL(graph_url)
        self.scheme, self.host, self.port = target.scheme, target.host, target.port
        self.inner = httpx.HTTPTransport()
        self.exchanges: list[Exchange] = []
        self.lock = threading.Lock()

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        original = request.url
        if (original.host, original.port) == (self.host, self.port):
            pass                     # a media download URL wacall handed out (Meta's are on its CDN hosts)
        elif original.host != META_GRAPH_HOST:
            raise AssertionError(f"pywa sent a request outside the Graph API: {original}")
        request.url = original.copy_with(scheme=self.scheme, host=self.host, port=self.port)
        request.headers["Host"] = request.url.netloc.decode("ascii")
        response = self.inner.handle_request(request)
        response.read()
        try:
            body = response.json()
        except ValueError:
            body = response.text
        with self.lock:
            self.exchanges.append(Exchange(request.method, str(original), str(request.url), response.status_code,
                                           body))
        return response

    def close(self) -> None:
        self.inner.close()

    def snapshot(self) -> list[Exchange]:
        with self.lock:
            return list(self.exchanges)


class UvicornThread:
    """A uvicorn server for one ASGI app on an already-listening loopback socket, in a daemon thread.

    The socket listens before uvicorn starts, so a verification GET that arrives early just waits in
    the accept backlog instead of being refused."""

    def __init__(self, app: Any) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(64)
        self.port = self.sock.getsockname()[1]
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]},
                                       name=f"pywa-uvicorn-{self.port}", daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.thread.start()
        deadline = time.monotonic() + timeout
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@dataclass
class PywaBusiness:
    """A pywa business wired to wacall. ``updates`` holds (kind, update) for every update a typed pywa
    handler was given, kind being connect, terminate, status, permission or message; ``raw`` holds
    every update pywa accepted (signature valid), as given to its ``on_raw_update`` handler."""
    client: WhatsApp
    transport: GraphFacebookToWacall
    server: UvicornThread
    webhook_url: str
    updates: list[tuple[str, Any]] = field(default_factory=list)
    raw: list[types.RawUpdate] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, kind: str, update: Any) -> None:
        with self.lock:
            (self.raw if kind == "raw" else self.updates).append(update if kind == "raw" else (kind, update))

    def of(self, kind: str, predicate: Callable[[Any], bool] = lambda _: True) -> list[Any]:
        with self.lock:
            return [u for k, u in self.updates if k == kind and predicate(u)]

    def raw_values(self, field_name: str) -> list[dict]:
        with self.lock:
            return [r.value for r in self.raw if r.field == field_name]

    def wait(self, probe: Callable[[], Any], timeout: float = 10.0, what: str = "update") -> Any:
        def seen() -> str:
            with self.lock:
                return f"pywa handlers saw {[(k, getattr(u, 'id', None)) for k, u in self.updates]}"
        return wait_until(probe, timeout, what, describe=seen)

    def wait_one(self, kind: str, predicate: Callable[[Any], bool] = lambda _: True, timeout: float = 10.0) -> Any:
        return self.wait(lambda: self.of(kind, predicate), timeout, f"a pywa {kind} update")[0]

    def close(self) -> None:
        self.server.stop()
        self.client.api._session.close()    # the httpx.Client we handed to pywa (closes the transport)


def start_business(wa: Wacall, *, endpoint: str = "/whatsapp") -> PywaBusiness:
    """Build the pywa client exactly as a business would, with its own FastAPI webhook app, and let pywa
    register its callback URL at app scope; returns once wacall has verified and stored it."""
    info = wa.info
    transport = GraphFacebookToWacall(info["graph_url"])
    app = FastAPI()
    server = UvicornThread(app)
    client = WhatsApp(
        phone_id=info["phone_number_id"],
        token=info["access_token"],
        session=httpx.Client(transport=transport, timeout=30),
        server=app,
        webhook_endpoint=endpoint,
        callback_url=server.url,
        verify_token=info["verify_token"],
        app_id=info["app_id"],
        app_secret=info["app_secret"],
        waba_id=info["waba_id"],
        validate_updates=True,
        continue_handling=True,   # the recorders below and a test's own handlers all see each update
        webhook_challenge_delay=0,   # the socket already listens; uvicorn starts right below
    )
    business = PywaBusiness(client, transport, server, f"{server.url}{endpoint}")

    @client.on_raw_update
    def _raw(_: WhatsApp, update: types.RawUpdate) -> None:
        business.record("raw", update)

    @client.on_call_connect
    def _connect(_: WhatsApp, call: types.CallConnect) -> None:
        business.record("connect", call)

    @client.on_call_terminate
    def _terminate(_: WhatsApp, call: types.CallTerminate) -> None:
        business.record("terminate", call)

    @client.on_call_status
    def _status(_: WhatsApp, status: types.CallStatus) -> None:
        business.record("status", status)

    @client.on_call_permission_update
    def _permission(_: WhatsApp, update: types.CallPermissionUpdate) -> None:
        business.record("permission", update)

    @client.on_message
    def _message(_: WhatsApp, message: types.Message) -> None:
        business.record("message", message)

    try:
        server.start()
        deadline = time.monotonic() + 15
        while True:   # pywa registers from a timer thread; wait until wacall verified and stored it
            subs = wa.graph("GET", f"{info['app_id']}/subscriptions").json().get("data", [])
            if any(s.get("callback_url") == business.webhook_url for s in subs):
                break
            if time.monotonic() > deadline:
                raise AssertionError(f"pywa did not register {business.webhook_url}; wacall has {subs}; "
                                     f"pywa's Graph requests: {transport.snapshot()}")
            time.sleep(0.02)
    except BaseException:
        business.close()
        raise
    return business
