"""Test harness: a real ``wacall serve`` subprocess, a real webhook receiver, plain HTTP clients (the
server and the receiver are the pytest plugin's, ``wacall.testing``).

Nothing here mocks wacall: tests talk to it over loopback exactly as a business would.
"""

from __future__ import annotations

import asyncio
import os
import resource
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import httpx

from wacall.testing.receiver import Delivery, WebhookReceiver as Receiver  # noqa: F401  (the tests' names)
from wacall.testing.running import Subprocess, wait_until

if TYPE_CHECKING:
    from wacall.testing.peer import AiortcBusiness

ROOT = Path(__file__).resolve().parents[2]
VERSION = "v23.0"
#: One local CA for every wacall the tests start (``wacall cert`` keeps it in this directory).
PKI_DIR = os.environ.get("WACALL_TEST_PKI") or tempfile.mkdtemp(prefix="wacall-test-pki-")
os.environ["WACALL_TEST_PKI"] = PKI_DIR          # subprocesses and xdist workers share it
#: Business SIP server hostnames the tests configure; wacall resolves them to 127.0.0.1.
BUSINESS_SIP_HOSTS = ("pbx.business.example", "sip.business.example")


def graph_error(response: httpx.Response, code: int) -> dict:
    """The ``error`` of a Graph refusal (any 4xx/5xx) with this code."""
    assert response.status_code >= 400, response.text
    error = response.json()["error"]
    assert error["code"] == code, response.text
    return error


class Wacall(Subprocess):
    """A running ``wacall serve --json`` process (the pytest plugin's :class:`Subprocess`), with the
    business SIP hostnames the tests use and plain HTTP shortcuts for Graph and control requests."""

    stderr_pipe = True                          # tests read ``proc.stderr`` themselves

    def __init__(self, *, db: str = ":memory:", config: str | None = None, port: int = 0,
                 extra: list[str] | None = None, open_files: int | None = None,
                 control_token: str | None = None) -> None:
        super().__init__(db=db, config=config, extra_args=extra, control_token=control_token, pki_dir=PKI_DIR,
                         sip_hosts={name: "127.0.0.1" for name in BUSINESS_SIP_HOSTS}, env=False)
        self.open_files = open_files            # run under `ulimit -n N` (soft and hard)
        self.requested_port = port
        self.http = httpx.Client(timeout=30)

    def popen_options(self) -> dict[str, Any]:
        limit = self.open_files

        def preexec() -> None:
            resource.setrlimit(resource.RLIMIT_NOFILE, (limit, limit))
        return {"cwd": ROOT, "preexec_fn": preexec if limit is not None else None}

    def close(self) -> None:
        super().close()
        self.http.close()

    # -- shortcuts (the tests' short names for the plugin's) ----------------------------------------
    url = Subprocess.graph_url
    token = Subprocess.access_token
    pnid = Subprocess.phone_number_id

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


async def take_user_call(wa, business: AiortcBusiness, call_id: str) -> None:
    """Answer a user-initiated call the way Meta asks: the answer SDP with ``pre_accept``, then ``accept``
    (``wa``: the test harness's wacall); returns once ICE and DTLS are up."""
    offer = (await asyncio.to_thread(wa.call, call_id))["meta_sdp"]
    answer = await business.answer(offer)
    for action in ("pre_accept", "accept"):
        response = await asyncio.to_thread(wa.calls_action, {"call_id": call_id, "action": action,
                                                             "session": {"sdp_type": "answer", "sdp": answer}})
        assert response.status_code == 200, response.text
    await business.wait_connected(10)
