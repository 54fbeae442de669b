"""The live stream, ``GET /_wacall/stream`` (docs/console.md): call, webhook and clock events from an
in-process wacall, read with the control client as the CLI and the console pages read them."""

from __future__ import annotations

import asyncio

import aiohttp
import pytest

from support.inprocess import config, hook_receiver
from wacall.control.client import ControlClient, ControlRefused
from wacall.server import Wacall

ALICE, BOB = "447700900001", "5511987650002"


@pytest.fixture
async def emulator():
    wacall = await Wacall(config(), db=":memory:", port=0).start()
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


async def test_the_stream_tells_calls_webhooks_and_the_clock(emulator):
    info = emulator.info()
    async with aiohttp.ClientSession() as http:
        hook, _, _ = await hook_receiver(info, http)
    try:
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
            full = await control.call(call_id)                 # the contract: GET's view minus timeline, webhooks
            assert set(ended) == set(full) - {"timeline", "webhooks"}
            assert {k: v for k, v in ended.items() if k != "media"} == {
                k: v for k, v in full.items() if k not in ("media", "timeline", "webhooks")}
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
    wacall = await Wacall(config(), db=":memory:", port=0).start()
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
    wacall = await Wacall(config(token="s3cret"), db=":memory:", port=0).start()
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
