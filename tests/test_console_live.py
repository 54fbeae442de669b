"""wacall.console.stream.LiveStream without a socket: what it sends, in what order, coalescing several
changes of a call in one event-loop turn, nothing done while nobody listens, a slow listener cut off."""

from __future__ import annotations

import asyncio

import pytest

from wacall.console import stream as live_stream
from wacall.console.stream import CLOSE, Listener, LiveStream, StreamSource


class Views:
    def __init__(self) -> None:
        self.state = {"c1": "RINGING", "c2": "RINGING"}
        self.reads: list[str] = []

    async def call(self, call_id: str) -> dict | None:
        self.reads.append(call_id)
        await asyncio.sleep(0)                          # a view may take a turn (the media plane's view)
        return {"call_id": call_id, "state": self.state[call_id]} if call_id in self.state else None

    def webhook(self, outbox_id: int) -> dict | None:
        return {"id": outbox_id, "call_id": {1: "c1", 2: "c2"}.get(outbox_id)}     # 3: a message's, no call

    def clock(self) -> dict:
        return {"now": 1.0, "offset": 0.0}


def live_with(views: Views) -> LiveStream:
    live = LiveStream()
    live.source = StreamSource(call=views.call, webhook=views.webhook, clock=views.clock)
    return live


def frames(listener: Listener) -> list[str]:
    out = []
    while not listener.queue.empty():
        item = listener.queue.get_nowait()
        out.append("CLOSE" if item is CLOSE else item.decode())
    return out


async def settle() -> None:
    for _ in range(10):
        await asyncio.sleep(0)


async def test_changes_in_one_turn_make_one_event_per_call_in_order():
    views = Views()
    live = live_with(views)
    everyone, only_c2 = Listener(None), Listener("c2")
    live.listeners |= {everyone, only_c2}
    live.call_changed("c1")
    live.call_changed("c2")
    live.call_changed("c1")                             # same turn: c1 is read once
    views.state["c1"] = "ACCEPTED"
    await settle()
    assert views.reads == ["c1", "c2"]
    assert frames(everyone) == ['event: call\ndata: {"call_id":"c1","state":"ACCEPTED"}\n\n',
                                'event: call\ndata: {"call_id":"c2","state":"RINGING"}\n\n']
    live.webhook_attempted(1)
    live.webhook_attempted(2)
    live.webhook_attempted(3)
    live.clock_advanced()
    live.call_changed("gone")                           # unknown by now: nothing sent
    await settle()
    assert [f.split("\n", 1)[0] for f in frames(everyone)] == ["event: webhook"] * 3 + ["event: clock"]
    got = frames(only_c2)
    assert [f.split("\n", 1)[0] for f in got] == ["event: call", "event: webhook", "event: clock"]
    assert '"call_id":"c2"' in got[0] and '"id":2' in got[1]


async def test_nothing_is_read_while_nobody_listens():
    views = Views()
    live = live_with(views)
    live.call_changed("c1")
    live.webhook_attempted(1)
    live.clock_advanced()
    await settle()
    assert views.reads == [] and not live._pending and live._pump is None


async def test_a_listener_that_falls_behind_is_cut_off(monkeypatch):
    monkeypatch.setattr(live_stream, "QUEUE_LIMIT", 3)
    live = live_with(Views())
    slow, fine = Listener(None), Listener(None)
    live.listeners |= {slow, fine}
    for _ in range(3):
        live.clock_advanced()
        await settle()
    frames(fine)
    live.clock_advanced()
    await settle()
    assert slow not in live.listeners and fine in live.listeners
    assert frames(slow) == ["CLOSE"]                     # its handler ends the response; EventSource reconnects
    live.close()
    assert frames(fine)[-1] == "CLOSE" and not live.listeners


def test_without_a_loop_changes_are_dropped():
    live = live_with(Views())
    live.listeners.add(Listener(None))
    with pytest.raises(RuntimeError):
        asyncio.get_running_loop()
    live.call_changed("c1")
    assert not live._pending and not live._pending_calls
