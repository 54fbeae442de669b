"""``wacall trigger <scenario>``: common situations played end to end against a running wacall.

Each scenario plays both sides the way they meet on Meta's platform: the WhatsApp user through the
control API (:class:`~wacall.control.client.ControlClient`) and the business through the Graph API with
the business's own access token, so the business's subscribed webhook receiver gets exactly what Meta
would send it in that situation. Nothing is faked: the calls, permissions and webhooks are wacall's own,
the rules (accept window, temporary permission lifetime, the unanswered streak that revokes a
permission, media timeouts) are read from the running server's limits, and time passes on its virtual
clock. A scenario returns what happened (:class:`Outcome`): its steps, the calls, the Graph refusal the
business got if any, and the webhook journal entries queued while it ran (docs/cli.md).
"""

from __future__ import annotations

import asyncio
import random
import time
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import aiohttp

from .control.client import ControlClient, ControlRefused

GRAPH_VERSION = "v23.0"

# SDPs a business's WebRTC stack sends (Chromium's shape). The scenarios never carry media, so the DTLS
# fingerprint is a well-formed stand-in; wacall validates the SDP as Meta does, not the certificate.
_FINGERPRINT = ("sha-256 6B:8B:F0:65:5F:78:E2:51:3B:AC:6F:F3:3F:46:1B:35:DC:B8:5F:64:1A:24:C2:43:F0:A1:58:D0:"
                "A1:2C:19:08")


def business_offer() -> str:
    """The offer of a business-initiated call."""
    return "\r\n".join([
        "v=0", f"o=- {random.randrange(10**15, 10**16)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0", "a=group:BUNDLE 0",
        "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 126", "c=IN IP4 0.0.0.0",
        "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:tRiG", "a=ice-pwd:tRiGgErPaSsWoRd0123456789",
        "a=ice-options:trickle", f"a=fingerprint:{_FINGERPRINT}", "a=setup:actpass", "a=mid:0", "a=sendrecv",
        "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000", "a=ssrc:7654321 cname:business", ""])


def business_answer() -> str:
    """The answer to Meta's offer of a user-initiated call."""
    return "\r\n".join([
        "v=0", f"o=- {random.randrange(10**15, 10**16)} 2 IN IP4 127.0.0.1", "s=-", "t=0 0",
        "a=group:BUNDLE audio", "a=msid-semantic: WMS", "m=audio 9 UDP/TLS/RTP/SAVPF 111 126",
        "c=IN IP4 0.0.0.0", "a=rtcp:9 IN IP4 0.0.0.0", "a=ice-ufrag:tRiG", "a=ice-pwd:tRiGgErPaSsWoRd0123456789",
        "a=ice-options:trickle", f"a=fingerprint:{_FINGERPRINT}", "a=setup:active", "a=mid:audio", "a=sendrecv",
        "a=rtcp-mux", "a=rtpmap:111 opus/48000/2", "a=fmtp:111 minptime=10;useinbandfec=1",
        "a=rtpmap:126 telephone-event/8000", "a=ssrc:1234567 cname:business", ""])


class ScenarioFailed(Exception):
    """The situation did not unfold as the scenario expects (the reason says where)."""


@dataclass
class Outcome:
    scenario: str
    user: str
    phone_number_id: str
    steps: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    refusal: dict | None = None            # the Graph error the business got at the end, if the scenario ends so
    webhooks: list[dict] = field(default_factory=list)   # journal entries queued during the scenario

    def as_dict(self) -> dict:
        return {"scenario": self.scenario, "user": self.user, "phone_number_id": self.phone_number_id,
                "steps": self.steps, "calls": self.calls, "refusal": self.refusal, "webhooks": self.webhooks}


class Business:
    """The business's side: Graph API requests with its access token, as its own code would make."""

    def __init__(self, session: aiohttp.ClientSession, base_url: str, token: str, phone_number_id: str) -> None:
        self.session, self.token, self.pnid = session, token, phone_number_id
        self.base = f"{base_url.rstrip('/').removesuffix('/_wacall')}/{GRAPH_VERSION}"

    async def post(self, path: str, body: dict) -> tuple[int, dict]:
        async with self.session.post(f"{self.base}/{path}", json=body,
                                     headers={"Authorization": f"Bearer {self.token}"}) as resp:
            return resp.status, await resp.json(content_type=None)

    async def ask_permission(self, wa_id: str) -> dict:
        status, body = await self.post(f"{self.pnid}/messages", {
            "messaging_product": "whatsapp", "recipient_type": "individual", "to": wa_id, "type": "interactive",
            "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                            "body": {"text": "We would like to call you about your order."}}})
        return _expect_ok(status, body, "the call permission request")

    async def connect(self, wa_id: str) -> tuple[int, dict]:
        return await self.post(f"{self.pnid}/calls", {"messaging_product": "whatsapp", "to": wa_id,
                                                      "action": "connect",
                                                      "session": {"sdp_type": "offer", "sdp": business_offer()}})

    async def accept(self, call_id: str) -> dict:
        status, body = await self.post(f"{self.pnid}/calls", {
            "messaging_product": "whatsapp", "call_id": call_id, "action": "accept",
            "session": {"sdp_type": "answer", "sdp": business_answer()}})
        return _expect_ok(status, body, f"accept of {call_id}")


def _expect_ok(status: int, body: dict, what: str) -> dict:
    if status >= 400:
        error = body.get("error", {}) if isinstance(body, dict) else {}
        raise ScenarioFailed(f"{what} was refused: ({error.get('code')}) {error.get('message', body)}")
    return body


@dataclass
class Run:
    """One scenario's run: both sides, the limits in force, and what the person is told."""
    wa: ControlClient
    biz: Business
    user: str
    limits: dict
    outcome: Outcome
    say: Callable[[str], None]

    def step(self, text: str) -> None:
        self.outcome.steps.append(text)
        self.say(text)

    async def advance(self, seconds: float, why: str) -> None:
        clock = await self.wa.advance(seconds)
        self.step(f"clock advanced {_duration(seconds)} ({why}); now {clock['iso']}")

    async def state(self, call_id: str, want: str, timeout: float = 10.0) -> dict:
        """The call once it is in ``want`` (the media plane notices timeouts on its next tick)."""
        deadline = time.monotonic() + timeout
        while True:
            call = await self.wa.call(call_id)
            if call["state"] == want or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.05)
        if call["state"] != want:
            raise ScenarioFailed(f"call {call_id} is {call['state']}, expected {want}")
        return call

    async def grant_permission(self, permanent: bool = False) -> None:
        """The way Meta's docs tell it: the user writes (opening the customer service window), the business
        asks for call permission, the user allows calls."""
        await self.wa.send_message(self.user, self.biz.pnid, "Hi! Can you call me about my order?")
        self.step(f"user {self.user} writes to the business (opens the 24-hour customer service window)")
        await self.biz.ask_permission(self.user)
        self.step("business sends a call permission request (POST /messages, call_permission_request)")
        await self.wa.reply_permission(self.user, self.biz.pnid, "accept", permanent=permanent)
        self.step(f"user allows calls ({'permanently' if permanent else 'temporarily'})")

    async def business_calls(self) -> str:
        status, body = await self.biz.connect(self.user)
        call_id = _expect_ok(status, body, "the business's call")["calls"][0]["id"]
        self.outcome.calls.append(call_id)
        self.step(f"business calls the user (POST /calls connect): {call_id}")
        return call_id

    async def business_refused(self) -> None:
        """The business calls once more and must be refused: the refusal is the scenario's end."""
        status, body = await self.biz.connect(self.user)
        if status < 400:
            raise ScenarioFailed(f"the business's call was placed ({body}), expected a refusal")
        error = body.get("error", {})
        self.outcome.refusal = {"status": status, **error}
        self.step(f"business calls again: refused, HTTP {status}, {error.get('message')}")


# -- the scenarios --------------------------------------------------------------------------------------------
async def missed_call(run: Run) -> None:
    """A user calls the business and nobody answers: connect, then after Meta's accept window a terminate
    (FAILED, 138007); with callback permission on, the user's automatic temporary permission too."""
    call_id = await run.wa.user_calls(run.user, run.biz.pnid)
    run.outcome.calls.append(call_id)
    run.step(f"user {run.user} calls the business: {call_id} rings (connect webhook with Meta's SDP offer)")
    run.step("business does not answer (no pre_accept, no accept)")
    await run.advance(run.limits["uic_accept_window_seconds"] + 1, "past the accept window")
    call = await run.state(call_id, "ENDED")
    run.step(f"call ended: {call['end_status']} ({call['end_reason']}), errors "
             f"{[e.get('code') for e in call['errors'] or []]}")


async def permission_expires(run: Run) -> None:
    """A temporary call permission lapses: the business's next call is refused with 138006. Meta sends no
    webhook when a temporary permission expires."""
    await run.grant_permission(permanent=False)
    await run.advance(run.limits["temporary_permission_seconds"] + 1, "past the temporary permission")
    await run.business_refused()


async def permission_revoked(run: Run) -> None:
    """Business-initiated calls the user declines, one after another: at Meta's count (4 in production, 10
    for sandbox accounts) the permission is revoked automatically (call_permission_reply reject,
    response_source automatic); the next call is refused with 138006."""
    await run.grant_permission(permanent=True)
    count = int(run.limits["unanswered_revoke"])
    for n in range(1, count + 1):
        call_id = await run.business_calls()
        await run.state(call_id, "RINGING")
        await run.wa.reject(call_id)
        await run.state(call_id, "ENDED")
        run.step(f"user declines call {n} of {count}")
    await run.business_refused()


async def media_timeout(run: Run) -> None:
    """The business accepts a user's call but its media never arrives: the user's phone hangs up after
    Meta's media timeout and the business gets a FAILED terminate with the media error."""
    seconds = run.limits["media_start_timeout_seconds"]
    if not seconds:
        raise ScenarioFailed("media timeouts are off on this wacall (limits media_start_timeout_seconds is 0)")
    call_id = await run.wa.user_calls(run.user, run.biz.pnid)
    run.outcome.calls.append(call_id)
    run.step(f"user {run.user} calls the business: {call_id}")
    await run.biz.accept(call_id)
    run.step("business accepts with an SDP answer (POST /calls accept) but never connects its media")
    await run.advance(seconds + 1, "past the media start timeout")
    call = await run.state(call_id, "ENDED")
    run.step(f"user's phone hangs up: {call['end_status']} ({call['end_reason']}), errors "
             f"{[e.get('code') for e in call['errors'] or []]}")


async def declined_call(run: Run) -> None:
    """The business calls with permission and the user declines: connect, RINGING, REJECTED, terminate."""
    await run.grant_permission(permanent=True)
    call_id = await run.business_calls()
    await run.state(call_id, "RINGING")
    await run.wa.reject(call_id)
    call = await run.state(call_id, "ENDED")
    run.step(f"user declines: {call['end_status']} ({call['end_reason']})")


async def unanswered_business_call(run: Run) -> None:
    """The business calls with permission and the user never picks up: after Meta's ring time the call
    ends COMPLETED without start_time, end_time or duration."""
    await run.grant_permission(permanent=True)
    call_id = await run.business_calls()
    await run.state(call_id, "RINGING")
    await run.advance(run.limits["bic_ring_seconds"] + 1, "past the ring time")
    call = await run.state(call_id, "ENDED")
    run.step(f"nobody picked up: {call['end_status']} ({call['end_reason']})")


async def answered_call(run: Run) -> None:
    """The business calls with permission, the user answers, talks a while and hangs up: connect, RINGING,
    ACCEPTED, terminate COMPLETED with start_time, end_time and duration."""
    await run.grant_permission(permanent=True)
    call_id = await run.business_calls()
    await run.state(call_id, "RINGING")
    await run.wa.answer(call_id)
    await run.state(call_id, "ACCEPTED")
    run.step("user answers")
    # the scenario's business sends no media: the talk stays inside the user's media timeouts
    timeouts = [t for t in (run.limits["media_start_timeout_seconds"], run.limits["media_silence_timeout_seconds"])
                if t]
    await run.advance(min([60.0] + [t / 2 for t in timeouts]), "the conversation")
    await run.wa.hangup(call_id)
    call = await run.state(call_id, "ENDED")
    run.step(f"user hangs up: {call['end_status']}, {call['duration']} s")


async def no_payment_method(run: Run) -> None:
    """A user calls a business whose account has no valid payment method: the call fails at once and the
    business gets a terminate with error 131044. The number's payment method is restored afterwards."""
    await run.wa.update_number(run.biz.pnid, payment_method=False)
    run.step("the business's payment method is removed")
    try:
        call_id = await run.wa.user_calls(run.user, run.biz.pnid)
        run.outcome.calls.append(call_id)
        call = await run.state(call_id, "ENDED")
        run.step(f"user {run.user} calls the business: {call_id} fails at once: {call['end_status']}, errors "
                 f"{[e.get('code') for e in call['errors'] or []]}")
    finally:
        await run.wa.update_number(run.biz.pnid, payment_method=True)
        run.step("the business's payment method is restored")


SCENARIOS: dict[str, Callable[[Run], Awaitable[None]]] = {
    "missed-call": missed_call,
    "permission-expires": permission_expires,
    "permission-revoked": permission_revoked,
    "media-timeout": media_timeout,
    "declined-call": declined_call,
    "unanswered-business-call": unanswered_business_call,
    "answered-call": answered_call,
    "no-payment-method": no_payment_method,
}


def describe(name: str) -> str:
    return (SCENARIOS[name].__doc__ or "").split("\n\n")[0].replace("\n   ", "").strip()


async def play(wa: ControlClient, name: str, *, user: str | None = None, phone_number_id: str | None = None,
               access_token: str | None = None, say: Callable[[str], None] = lambda text: None,
               settle: float = 10.0) -> Outcome:
    """Play scenario ``name``. ``user``: an existing user's wa_id (default: a new user made for this run,
    who reacts to nothing by itself); ``phone_number_id``/``access_token``: the business (default: the
    server's default number and app). Waits up to ``settle`` seconds for the webhooks' first attempts."""
    scenario = SCENARIOS[name]
    info = await wa.info()
    token = access_token or info.get("access_token")
    if not token:
        raise ScenarioFailed("the scenario plays the business and needs its access token: wacall gives it only "
                             "to a caller on loopback; pass --access-token")
    pnid = phone_number_id or info["phone_number_id"]
    if user is None:
        user = await _new_user(wa, name)
        say(f"new user {user} (answers, declines and replies only when told)")
    before = await wa.webhooks(limit=1)
    mark = before[-1]["id"] if before else 0
    outcome = Outcome(scenario=name, user=user, phone_number_id=pnid)
    async with aiohttp.ClientSession() as session:
        run = Run(wa=wa, biz=Business(session, wa.base, token, pnid), user=user, limits=await wa.limits(),
                  outcome=outcome, say=say)
        await scenario(run)
    outcome.webhooks = await _settled(wa, mark, settle)
    return outcome


async def _new_user(wa: ControlClient, scenario: str) -> str:
    """A user of its own for this run (North American fictional numbers, 1-555-...), reacting to nothing."""
    for _ in range(20):
        wa_id = f"1555{random.randrange(10**7):07d}"
        try:
            await wa.create_user(wa_id, name=f"trigger {scenario}", incoming="manual", permission_requests="manual")
            return wa_id
        except ControlRefused as exc:
            if exc.reason != "exists":
                raise
    raise ScenarioFailed("could not find a free number for the scenario's user; pass --user")


async def _settled(wa: ControlClient, mark: int, timeout: float) -> list[dict]:
    """The journal entries after ``mark``, once each has been tried (or ``timeout`` passed)."""
    deadline = time.monotonic() + timeout
    while True:
        entries = [e for e in await wa.webhooks(limit=1000) if e["id"] > mark]
        if all(e["status"] != "pending" or e["attempt_log"] for e in entries) or time.monotonic() > deadline:
            return entries
        await asyncio.sleep(0.05)


def _duration(seconds: float) -> str:
    """``604801`` -> ``7d 1s`` (the form ``wacall clock advance`` takes, one unit at a time)."""
    parts = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        whole, seconds = divmod(seconds, size)
        if whole:
            parts.append(f"{whole:g}{unit}")
    if seconds or not parts:
        parts.append(f"{seconds:g}s")
    return " ".join(parts)
