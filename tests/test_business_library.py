"""wacall.business, the business-side library, against wacall in Meta's place: the Graph client's calls and
typed errors, retries only where sending twice is harmless, the webhook endpoint's handshake and
signature check, and a business built on both answering a user's call with real media (aiortc), also when
wacall's fault injection delivers webhooks twice and a terminate before its connect."""

from __future__ import annotations

import asyncio
import json

import pytest
from aiohttp import ClientSession, web

from support.harness import Wacall
from wacall.business import (AuthError, Call, CallLimitReached, CallPermissionMissing, GraphClient, InvalidRequest,
                             ServiceUnavailable, WebhookReceiver, signature)
from wacall.testing.peer import AiortcBusiness

ALICE = "447700900001"


def graph_for(wa: Wacall, **options) -> GraphClient:
    return GraphClient(wa.pnid, wa.token, base_url=wa.url, **options)


async def receiver_for(wa: Wacall, **handlers) -> WebhookReceiver:
    receiver = WebhookReceiver(wa.info["app_secret"], wa.info["verify_token"], **handlers)
    url = await receiver.start()
    subscribed = await asyncio.to_thread(wa.subscribe, url)     # wacall runs the verification GET first
    assert subscribed.status_code == 200, subscribed.text
    return receiver


class EchoDesk:
    """A business on the library: answers user calls with an aiortc endpoint (pre_accept, then accept) and
    counts what its handlers saw."""

    def __init__(self, graph: GraphClient) -> None:
        self.graph = graph
        self.peers: dict[str, AiortcBusiness] = {}
        self.connects: list[str] = []
        self.terminates: list[Call] = []
        self.ended = asyncio.Event()

    async def on_connect(self, call: Call) -> None:
        self.connects.append(call.call_id)
        peer = self.peers[call.call_id] = AiortcBusiness(tone_hz=700)
        answer = await peer.answer(call.sdp or "")
        await self.graph.pre_accept(call.call_id, answer)
        await self.graph.accept(call.call_id, answer)

    async def on_terminate(self, call: Call) -> None:
        self.terminates.append(call)
        self.ended.set()

    async def close(self) -> None:
        for peer in self.peers.values():
            await peer.close()


async def test_a_business_on_the_library_answers_a_user_call_with_media(wa):
    async with graph_for(wa) as graph:
        desk = EchoDesk(graph)
        receiver = await receiver_for(wa, on_connect=desk.on_connect, on_terminate=desk.on_terminate)
        try:
            call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
            await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED")
            peer = desk.peers[call_id]
            await peer.wait_connected()
            await peer.wait_received(1.0)
            assert abs(peer.dominant_frequency() - 440) < 15          # Alice's default tone, heard by the business
            await graph.terminate(call_id)
            await asyncio.wait_for(desk.ended.wait(), 10)
            await receiver.drain()
            [ended] = desk.terminates
            assert ended.call_id == call_id and ended.user == ALICE and ended.end["status"] == "COMPLETED"
            assert desk.connects == [call_id] and receiver.book.get(call_id).events[0] == "connect"
        finally:
            await desk.close()
            await receiver.stop()


async def test_duplicates_and_a_terminate_before_its_connect(wa):
    """wacall's fault injection holds the connect back 60 s (virtual) and sends the terminate twice: the
    user hangs up while the connect is held, so the terminate comes first, twice; the late connect must
    not be answered, and the terminate handler runs once."""
    faults = wa.ctl("POST", "webhooks/faults", {"seed": 3, "rules": [
        {"kind": "duplicate", "field": "calls", "event": "terminate", "copies": 1},
        {"kind": "delay", "field": "calls", "event": "connect", "seconds": 60}]})
    assert faults.status_code == 200, faults.text
    async with graph_for(wa) as graph:
        desk = EchoDesk(graph)
        receiver = await receiver_for(wa, on_connect=desk.on_connect, on_terminate=desk.on_terminate)
        try:
            call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
            assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
            await asyncio.wait_for(desk.ended.wait(), 10)
            await asyncio.to_thread(wa.advance, 61)                   # the held connect goes out now
            for _ in range(100):
                if receiver.book.get(call_id).late.count("connect") == 1:
                    break
                await asyncio.sleep(0.1)
            await asyncio.sleep(0.3)                                 # any handler it would have started
            await receiver.drain()
            call = receiver.book.get(call_id)
            assert call.events == ["terminate"] and sorted(call.late) == ["connect", "terminate"]
            assert desk.connects == [] and len(desk.terminates) == 1 and call.connect is None
            assert call.user == ALICE and call.direction == "USER_INITIATED"
        finally:
            await desk.close()
            await receiver.stop()


async def test_graph_client_calls_and_meta_errors(wa):
    async with graph_for(wa) as graph:
        assert (await graph.settings())["calling"]["status"] == "ENABLED"
        await graph.update_settings({"call_icons": {"restrict_to_user_countries": ["GB"]}})
        assert (await graph.settings())["calling"]["call_icons"]["restrict_to_user_countries"] == ["GB"]
        assert (await graph.call_permission(ALICE))["permission"]["status"] == "no_permission"
        peer = AiortcBusiness()
        offer = await peer.offer()
        await peer.close()
        with pytest.raises(CallPermissionMissing) as refused:
            await graph.connect(ALICE, offer)
        assert refused.value.code == 138006 and refused.value.status in (400, 401) and not refused.value.transient
        opened = await asyncio.to_thread(wa.ctl, "POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"})
        assert opened.status_code == 201
        assert (await graph.request_call_permission(ALICE, "May we call you?")).startswith("wamid.")
        assert (await graph.send_call_button(ALICE, "Call us", display_text="Call now", ttl_minutes=60,
                                             payload="desk-7")).startswith("wamid.")
        replied = await asyncio.to_thread(wa.ctl, "POST", f"users/{ALICE}/permission_replies",
                                          {"phone_number_id": wa.pnid, "response": "accept"})
        assert replied.status_code == 200, replied.text
        with pytest.raises(CallLimitReached) as again:                 # one request per user a day
            await graph.request_call_permission(ALICE, "And again?")
        assert again.value.code == 138009 and "Limit reached" in again.value.details
        with pytest.raises(InvalidRequest) as bad:
            await graph.connect(ALICE, "not an SDP")
        assert bad.value.code == 100
    async with GraphClient(wa.pnid, "EAAnot-a-token", base_url=wa.url) as stranger:
        with pytest.raises(AuthError) as denied:
            await stranger.settings()
        assert denied.value.code == 190 and denied.value.status == 401


async def test_transient_refusals_are_retried_only_where_harmless():
    """A Graph stand-in refuses the first two of every request with Meta's transient envelope: reads and
    actions on a call are sent again and succeed; connect and messages are sent once and raise."""
    seen: list[str] = []

    async def handler(request: web.Request) -> web.Response:
        action = (await request.json()).get("action") if request.method == "POST" else None
        seen.append(f"{request.method} {request.path} {action}")
        if seen.count(seen[-1]) <= 2:
            return web.json_response({"error": {"message": "Service temporarily unavailable", "code": 2,
                                                "is_transient": True, "fbtrace_id": "X"}}, status=503)
        if request.path.endswith("/settings"):
            return web.json_response({"calling": {"status": "ENABLED"}})
        return web.json_response({"success": True})

    app = web.Application()
    app.router.add_route("*", "/{tail:.*}", handler)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    base = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}"
    try:
        async with GraphClient("123", "token", base_url=base, backoff=0) as graph:
            assert (await graph.settings())["calling"]["status"] == "ENABLED"
            await graph.terminate("wacid.1")
            with pytest.raises(ServiceUnavailable) as once:
                await graph.connect(ALICE, "v=0\r\n")
            assert once.value.transient and once.value.code == 2
        assert seen == (["GET /v23.0/123/settings None"] * 3 + ["POST /v23.0/123/calls terminate"] * 3
                        + ["POST /v23.0/123/calls connect"])
    finally:
        await runner.cleanup()


async def test_the_endpoint_checks_meta_signature_over_the_raw_escaped_body(wa):
    """A user named with non-ASCII letters writes: Meta escapes them in the body it signs, and the endpoint
    verifies the bytes as sent; a POST signed with another secret is refused with 401 and not processed."""
    created = await asyncio.to_thread(wa.ctl, "POST", "users", {"wa_id": "447700900777", "name": "Zoë Ñandú"})
    assert created.status_code in (200, 201), created.text
    values: list[dict] = []

    async def on_webhook(field: str, value: dict) -> None:
        values.append(value)

    receiver = await receiver_for(wa, on_webhook=on_webhook)
    try:
        sent = await asyncio.to_thread(wa.ctl, "POST", "users/447700900777/messages", {"to": wa.pnid, "text": "¿hola?"})
        assert sent.status_code == 201, sent.text
        for _ in range(100):
            if values:
                break
            await asyncio.sleep(0.1)
        [value] = values
        assert value["contacts"][0]["profile"]["name"] == "Zoë Ñandú" and receiver.refused == 0
        body = json.dumps({"entry": [{"changes": [{"field": "calls", "value": {"calls": [
            {"id": "wacid.forged", "event": "terminate"}]}}]}]}).encode()
        url = f"http://127.0.0.1:{receiver._runner.addresses[0][1]}{receiver.path}"
        async with ClientSession() as http:
            async with http.post(url, data=body, headers={"X-Hub-Signature-256": signature("other", body)}) as r:
                assert r.status == 401
            async with http.get(url, params={"hub.mode": "subscribe", "hub.verify_token": "wrong",
                                             "hub.challenge": "42"}) as r:
                assert r.status == 403
        assert receiver.refused == 1 and receiver.book.get("wacid.forged") is None
    finally:
        await receiver.stop()
