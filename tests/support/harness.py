"""Test harness: a real ``wacall serve`` subprocess, a real webhook receiver, plain HTTP clients.

Nothing here mocks wacall: tests talk to it over loopback exactly as a business would.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import resource
import signal
import subprocess
import tempfile
import sys
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any, Callable
from urllib.parse import parse_qs, urlparse

import httpx

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v23.0"
#: One local CA for every wacall the tests start (``wacall cert`` keeps it in this directory).
PKI_DIR = os.environ.get("WACALL_TEST_PKI") or tempfile.mkdtemp(prefix="wacall-test-pki-")
os.environ["WACALL_TEST_PKI"] = PKI_DIR          # subprocesses and xdist workers share it
#: Business SIP server hostnames the tests configure; wacall resolves them to 127.0.0.1.
BUSINESS_SIP_HOSTS = ("pbx.business.example", "sip.business.example")


def wait_until(predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition",
               describe: Callable[[], str] | None = None) -> Any:
    """Poll ``predicate`` every 20 ms until it returns something truthy (returned), or fail after ``timeout``
    seconds saying ``what`` was awaited (and ``describe()`` of what was seen instead)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = predicate()
        if result:
            return result
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}" + (f"; {describe()}" if describe else ""))


def graph_error(response: httpx.Response, code: int) -> dict:
    """The ``error`` of a Graph refusal (any 4xx/5xx) with this code."""
    assert response.status_code >= 400, response.text
    error = response.json()["error"]
    assert error["code"] == code, response.text
    return error


class Wacall:
    """A running ``wacall serve --json`` process."""

    def __init__(self, *, db: str = ":memory:", config: str | None = None, port: int = 0,
                 extra: list[str] | None = None, open_files: int | None = None,
                 control_token: str | None = None) -> None:
        self.db, self.config, self.extra = db, config, extra or []
        self.open_files = open_files            # run under `ulimit -n N` (soft and hard)
        self.control_token = control_token      # sent as a bearer token on every control request
        self.requested_port = port
        self.requested_sip_port = 0
        self.proc: subprocess.Popen | None = None
        self.info: dict[str, Any] = {}
        self.http = httpx.Client(timeout=30)

    def start(self) -> "Wacall":
        args = [sys.executable, "-m", "wacall", "serve", "--json", "--port", str(self.requested_port),
                "--db", self.db, "--sip-port", str(self.requested_sip_port), "--pki-dir", PKI_DIR,
                *(f"--sip-host={name}=127.0.0.1" for name in BUSINESS_SIP_HOSTS), *self.extra]
        if self.config:
            args += ["--config", self.config]
        if self.control_token:
            args += ["--control-token", self.control_token]
        limit = self.open_files

        def preexec() -> None:
            if limit is not None:
                resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        self.proc = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                     cwd=ROOT, env={**os.environ, "PYTHONUNBUFFERED": "1"},
                                     preexec_fn=preexec if limit is not None else None)
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"wacall did not start: {self.proc.stderr.read()}")
        self.info = json.loads(line)
        self.requested_port = int(self.info["graph_url"].rsplit(":", 1)[1])   # restart on the same port
        if self.info.get("sip"):
            self.requested_sip_port = int(self.info["sip"]["port"])
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def kill(self) -> None:
        """Stop without a clean shutdown, as a crash would."""
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()

    def close(self) -> None:
        self.stop()
        self.http.close()

    # -- shortcuts ---------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return self.info["graph_url"]

    @property
    def token(self) -> str:
        return self.info["access_token"]

    @property
    def pnid(self) -> str:
        return self.info["phone_number_id"]

    @property
    def waba_id(self) -> str:
        return self.info["waba_id"]

    @property
    def app_id(self) -> str:
        return self.info["app_id"]

    @property
    def app_token(self) -> str:
        return f"{self.info['app_id']}|{self.info['app_secret']}"

    def graph(self, method: str, path: str, *, token: str | None = "default", **kwargs) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}) or {})
        if token == "default":
            token = self.token
        if token:
            headers["Authorization"] = f"Bearer {token}"
        return self.http.request(method, f"{self.url}/{VERSION}/{path.lstrip('/')}", headers=headers, **kwargs)

    def ctl(self, method: str, path: str, json_body: Any = None) -> httpx.Response:
        headers = {"Authorization": f"Bearer {self.control_token}"} if self.control_token else None
        return self.http.request(method, f"{self.url}/_wacall/{path.lstrip('/')}", json=json_body, headers=headers)

    def reset(self, *, media_timeouts: bool = False) -> None:
        """Back to the default. Signalling-only tests use SDPs no media stack stands behind, so the
        users' media timeouts (no media 20 s after accept) are off unless asked for."""
        assert self.ctl("POST", "reset").status_code == 200
        if not media_timeouts:
            self.media_timeouts(False)

    def media_timeouts(self, on: bool) -> None:
        value = {"media_start_timeout_seconds": 20.0 if on else 0, "media_silence_timeout_seconds": 30.0 if on else 0}
        assert self.ctl("PATCH", "limits", value).status_code == 200

    def enable_sip(self, hostname: str, port: int, **calling: Any) -> str:
        """Turn SIP on for the default number (SDES unless ``calling`` says otherwise) with one business
        server; returns its SIP password (read as Graph gives it, with ``include_sip_credentials``)."""
        body = {"status": "ENABLED", "srtp_key_exchange_protocol": "SDES", **calling,
                "sip": {"status": "ENABLED", "servers": [{"hostname": hostname, "port": port}]}}
        response = self.graph("POST", f"{self.pnid}/settings", json={"calling": body})
        assert response.status_code == 200, response.text
        settings = self.graph("GET", f"{self.pnid}/settings", params={"include_sip_credentials": "true"}).json()
        return settings["calling"]["sip"]["servers"][0]["sip_user_password"]

    def advance(self, seconds: float) -> None:
        assert self.ctl("POST", "clock/advance", {"seconds": seconds}).status_code == 200

    def call(self, call_id: str) -> dict:
        response = self.ctl("GET", f"calls/{call_id}")
        assert response.status_code == 200, response.text
        return response.json()

    def user_calls(self, wa_id: str, **body) -> httpx.Response:
        body.setdefault("to", self.pnid)
        return self.ctl("POST", f"users/{wa_id}/calls", body)

    def calls_action(self, body: dict) -> httpx.Response:
        return self.graph("POST", f"{self.pnid}/calls", json={"messaging_product": "whatsapp", **body})

    def permission_request(self, wa_id: str) -> httpx.Response:
        """The business asks the user for call permission (an interactive call_permission_request)."""
        return self.graph("POST", f"{self.pnid}/messages", json={
            "messaging_product": "whatsapp", "to": wa_id, "type": "interactive",
            "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                            "body": {"text": "May we call you?"}}})

    def grant_permission(self, wa_id: str, *, permanent: bool = False) -> None:
        """The way Meta's docs tell it: the user writes (opening the window), the business asks, the user
        accepts."""
        opened = self.ctl("POST", f"users/{wa_id}/messages", {"to": self.pnid, "text": "hi"})
        assert opened.status_code == 201, opened.text
        sent = self.permission_request(wa_id)
        assert sent.status_code == 200, sent.text
        reply = self.ctl("POST", f"users/{wa_id}/permission_replies",
                         {"phone_number_id": self.pnid, "response": "accept", "permanent": permanent})
        assert reply.status_code == 200, reply.text

    def subscribe(self, callback_url: str, fields: str = "calls,messages,account_settings_update") -> httpx.Response:
        return self.graph("POST", f"{self.app_id}/subscriptions", token=None, params={
            "object": "whatsapp_business_account", "callback_url": callback_url,
            "verify_token": self.info["verify_token"], "fields": fields, "access_token": self.app_token})

    def wait_for(self, predicate: Callable[[], Any], timeout: float = 10.0, what: str = "condition") -> Any:
        return wait_until(predicate, timeout, what)

    def wait_state(self, call_id: str, state: str, timeout: float = 10.0) -> dict:
        return self.wait_for(lambda: (c := self.call(call_id))["state"] == state and c, timeout,
                             f"call {call_id} to reach {state}")


@dataclass
class Delivery:
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


@dataclass
class Receiver:
    """A business's webhook endpoint: answers Meta's verification GET, checks signatures, records POSTs,
    and can be told to fail (HTTP 500) or hang for a while, or, per webhook, to answer another status
    (``refuse(body)`` returns one, or None to accept) or to hold the request until an event is set
    (``hold(body)`` returns a ``threading.Event``, or None). ``posts`` has every POST as it arrived,
    accepted or not; ``deliveries`` only the accepted ones."""
    app_secret: str
    verify_token: str
    deliveries: list[Delivery] = field(default_factory=list)
    posts: list[Delivery] = field(default_factory=list)
    bad_signatures: int = 0
    fail_remaining: int = 0
    failures_served: int = 0
    hang_seconds: float = 0.0
    refuse: Callable[[dict], int | None] | None = None
    hold: Callable[[dict], threading.Event | None] | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    def start(self) -> "Receiver":
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args) -> None:
                pass

            def do_GET(self) -> None:
                query = parse_qs(urlparse(self.path).query)
                if (query.get("hub.mode") == ["subscribe"]
                        and query.get("hub.verify_token") == [receiver.verify_token]):
                    body = query["hub.challenge"][0].encode()
                    self.send_response(200)
                else:
                    body = b"forbidden"
                    self.send_response(403)
                self.send_header("Content-Type", "text/plain")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def do_POST(self) -> None:
                raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                body = json.loads(raw)
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
                    self.send_response(status)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                expected = "sha256=" + hmac.new(receiver.app_secret.encode(), raw, hashlib.sha256).hexdigest()
                with receiver.lock:
                    if not hmac.compare_digest(expected, self.headers.get("X-Hub-Signature-256", "")):
                        receiver.bad_signatures += 1
                    receiver.deliveries.append(Delivery(dict(self.headers), raw, body))
                self.send_response(200)
                self.send_header("Content-Length", "0")
                self.end_headers()

        class Server(ThreadingHTTPServer):
            request_queue_size = 128        # Meta sends several webhooks to one URL at once

        self.server = Server(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/webhook"

    def stop(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def snapshot(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def values(self, field_name: str) -> list[dict]:
        return [d.value for d in self.snapshot() if d.field == field_name]

    def call_events(self, call_id: str) -> list[dict]:
        """Every `calls` item (connect/terminate) and call status for one call, in arrival order."""
        out = []
        for value in self.values("calls"):
            out += [c for c in value.get("calls", []) if c["id"] == call_id]
            out += [dict(s, event="status") for s in value.get("statuses", []) if s["id"] == call_id]
        return out

    def wait(self, predicate: Callable[["Receiver"], Any], timeout: float = 10.0, what: str = "webhook") -> Any:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            result = predicate(self)
            if result:
                return result
            time.sleep(0.02)
        raise AssertionError(f"timed out waiting for {what}; got {[d.body for d in self.snapshot()]}")
