"""The live stream, ``GET /_wacall/stream`` (docs/console.md): call, webhook and clock events from an
in-process wacall, read with the control client as the CLI and the console pages read them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest
from aiohttp import web

from wacall.config import load_config as _load_config
from wacall.control.client import ControlClient, ControlRefused
from wacall.server import Wacall

VERSION = "v23.0"
ALICE, BOB = "447700900001", "5511987650002"


def load_config(token: str | None = None):
    config = _load_config()
    config.sip.port = -1                 # no SIP gateway: these tests are about HTTP
    config.server.control_token = token
    return config


@pytest.fixture
async def emulator():
    wacall = await Wacall(load_config(), db=":memory:", port=0).start()
    yield wacall
    await wacall.stop()


class Events:
    """A background reader of the stream, collecting (event, data) pairs."""

    def __init__(self, control: ControlClient, call_id: str | None = None) -> None:
        self.items: list[tuple[str, dict]] = []
        self.arrived = asyncio.Event()
        self.task = asyncio.create_task(self._read(control, call_id))

    async def _read(self, control: ControlClient, call_id: str | None) -> None:
        async for item in control.stream(call_id):
            self.items.append(item)
            self.arrived.set()

    async def until(self, predicate, what: str) -> tuple[str, dict]:
        async def look():
            while True:
                for item in self.items:
                    if predicate(*item):
                        return item
                self.arrived.clear()
                await self.arrived.wait()
        try:
            return await asyncio.wait_for(look(), 10)
        except asyncio.TimeoutError:
            raise AssertionError(f"no {what} event; got {[(k, d.get('state')) for k, d in self.items]}") from None

    async def listening(self, live, count: int = 1) -> None:
        for _ in range(200):
            if len(live.listeners) >= count:
                return
            await asyncio.sleep(0.01)
        raise AssertionError("the stream never connected")

    def stop(self) -> None:
        self.task.cancel()


async def receiver() -> tuple[web.AppRunner, str]:
    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text=request.query.get("hub.challenge", ""))
        await request.read()
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_route("*", "/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    return runner, f"http://127.0.0.1:{port}/hook"


async def test_the_stream_tells_calls_webhooks_and_the_clock(emulator):
    info = emulator.info()
    hook, url = await receiver()
    try:
        async with aiohttp.ClientSession() as http:
            subscribed = await http.post(f"{info['graph_url']}/{VERSION}/{info['app_id']}/subscriptions", params={
                "object": "whatsapp_business_account", "callback_url": url, "verify_token": info["verify_token"],
                "fields": "calls", "access_token": f"{info['app_id']}|{info['app_secret']}"})
            assert subscribed.status == 200, await subscribed.text()
        async with ControlClient(info["control_url"]) as control:
            everything = Events(control)
            await everything.listening(emulator.live)
            call_id = await control.user_calls(ALICE, info["phone_number_id"])
            only_this = Events(control, call_id)
            await only_this.listening(emulator.live, 2)
            other = await control.user_calls(BOB, info["phone_number_id"])
            _, ringing = await everything.until(lambda k, d: k == "call" and d["call_id"] == call_id, "ringing call")
            assert ringing["state"] == "RINGING" and ringing["direction"] == "USER_INITIATED"
            assert ringing["wa_id"] == ALICE and ringing["signalling"] == "graph"
            assert "timeline" not in ringing and ringing["media"]["port"] > 0
            await control.hangup(call_id)
            _, ended = await everything.until(
                lambda k, d: k == "call" and d["call_id"] == call_id and d["state"] == "ENDED", "ended call")
            assert ended["end_reason"] and ended["ended_at"] is not None
            _, hooked = await everything.until(lambda k, d: k == "webhook" and d["call_id"] == call_id, "webhook")
            assert hooked["field"] == "calls" and hooked["attempt_log"][0]["status_code"] == 200
            assert hooked["body"]["entry"][0]["changes"][0]["field"] == "calls"
            await control.advance(5)
            _, clock = await everything.until(lambda k, d: k == "clock", "clock")
            assert clock["offset"] >= 5
            await only_this.until(lambda k, d: k == "call" and d["state"] == "ENDED", "ended call (filtered)")
            await only_this.until(lambda k, d: k == "clock", "clock (filtered)")
            await everything.until(lambda k, d: k == "call" and d["call_id"] == other, "the other call")
            assert all(d.get("call_id") in (call_id, None) for _, d in only_this.items)
            everything.stop()
            only_this.stop()
    finally:
        await hook.cleanup()


async def test_pings_and_an_end_at_stop():
    wacall = await Wacall(load_config(), db=":memory:", port=0).start()
    wacall.live.ping_seconds = 0.05
    stopped = False
    try:
        async with aiohttp.ClientSession() as http:
            async with http.get(f"{wacall.base_url}/_wacall/stream") as resp:
                assert resp.status == 200 and resp.headers["Content-Type"] == "text/event-stream"
                lines = []
                while ": ping" not in lines:
                    lines.append((await asyncio.wait_for(resp.content.readline(), 5)).decode().strip())
                await wacall.stop()
                stopped = True
                rest = await asyncio.wait_for(resp.content.read(), 5)     # the server ended the stream
                assert b"event:" not in rest
    finally:
        if not stopped:
            await wacall.stop()


async def test_the_stream_is_guarded_like_the_control_api():
    wacall = await Wacall(load_config(token="s3cret"), db=":memory:", port=0).start()
    try:
        url = f"{wacall.base_url}/_wacall/stream"
        async with aiohttp.ClientSession() as http:
            async with http.get(url) as resp:
                assert resp.status == 401 and (await resp.json())["error"]["reason"] == "unauthorized"
            async with http.get(url, headers={"Authorization": "Bearer s3cret", "Host": "evil.example"}) as resp:
                assert resp.status == 403 and (await resp.json())["error"]["reason"] == "forbidden_host"
            async with http.get(url, headers={"Authorization": "Bearer s3cret",
                                              "Origin": "http://evil.example"}) as resp:
                assert resp.status == 403 and (await resp.json())["error"]["reason"] == "cross_site"
        async with ControlClient(wacall.base_url, token="wrong") as control:
            with pytest.raises(ControlRefused) as refused:
                async for _ in control.stream():
                    pass
            assert refused.value.status == 401
        async with ControlClient(wacall.base_url, token="s3cret") as control:
            events = Events(control)
            await events.listening(wacall.live)
            await control.advance(1)
            await events.until(lambda k, d: k == "clock", "clock")
            events.stop()
    finally:
        await wacall.stop()
