"""The baseline: plain aiortc peer pairs on loopback, each peer sending pre-encoded Opus to the other.

A pair is two ``RTCPeerConnection`` objects in the same process (an offerer and an answerer), each
with one audio track whose ``recv()`` returns pre-encoded 20 ms Opus ``av.Packet`` objects paced
like aiortc's own ``AudioStreamTrack`` (so aiortc sends without encoding), and each consuming the
other's track (aiortc decodes what it receives, as it always does). That is the same work per call
as wacall's relay plus the business peer: ICE + DTLS-SRTP set-up, 50 packets/s sent and received
each way. Loss comes from aiortc's own ``inbound-rtp`` statistics (packetsReceived, packetsLost).

The two loopback traps from docs (stack-notes): ``RTCConfiguration(iceServers=[])`` and aioice's
host-address gathering patched to return 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import fractions
import os
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
from workers import WorkerProcess, serve  # noqa: E402

if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

TIME_BASE = fractions.Fraction(1, 48000)


def _patch_loopback() -> None:
    import aioice.ice
    aioice.ice.get_host_addresses = lambda use_ipv4=True, use_ipv6=True: ["127.0.0.1"]


def _make_track_class():
    import av
    from aiortc import MediaStreamTrack

    class PreEncodedTrack(MediaStreamTrack):
        kind = "audio"

        def __init__(self, frames: list[bytes]) -> None:
            super().__init__()
            self.frames = frames
            self.index = 0
            self.start: float | None = None

        async def recv(self):
            if self.readyState != "live":
                from aiortc.mediastreams import MediaStreamError
                raise MediaStreamError
            if self.start is None:
                self.start = time.time()
            else:
                wait = self.start + self.index * 0.020 - time.time()
                if wait > 0:
                    await asyncio.sleep(wait)
            packet = av.Packet(self.frames[self.index % len(self.frames)])
            packet.pts = self.index * 960
            packet.time_base = TIME_BASE
            self.index += 1
            return packet

    return PreEncodedTrack


class Pairs:
    def __init__(self, audio: str = "tone:440") -> None:
        _patch_loopback()
        from wacall.media.playout import PreEncodedAudio
        self.frames = PreEncodedAudio.get(audio).frames
        self.Track = _make_track_class()
        self.pairs: list[tuple] = []
        self.sinks: list[asyncio.Task] = []

    async def _sink(self, track) -> None:
        from aiortc.mediastreams import MediaStreamError
        try:
            while True:
                await track.recv()
        except (MediaStreamError, asyncio.CancelledError):
            pass

    async def make_pair(self) -> tuple:
        from aiortc import RTCConfiguration, RTCPeerConnection
        a = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        b = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        for pc in (a, b):
            pc.addTrack(self.Track(self.frames))
            pc.on("track", lambda track: self.sinks.append(asyncio.ensure_future(self._sink(track))))
        await a.setLocalDescription(await a.createOffer())
        await b.setRemoteDescription(a.localDescription)
        await b.setLocalDescription(await b.createAnswer())
        await a.setRemoteDescription(b.localDescription)
        deadline = time.monotonic() + 20
        while not (a.connectionState == b.connectionState == "connected"):
            if a.connectionState == "failed" or b.connectionState == "failed" or time.monotonic() > deadline:
                await a.close()
                await b.close()
                raise RuntimeError(f"pair did not connect ({a.connectionState}/{b.connectionState})")
            await asyncio.sleep(0.02)
        return a, b

    async def add(self, n: int, concurrency: int = 16) -> dict:
        t0 = time.monotonic()
        sem = asyncio.Semaphore(concurrency)
        errors: list[str] = []

        async def one():
            async with sem:
                try:
                    self.pairs.append(await self.make_pair())
                except Exception as exc:
                    errors.append(f"{type(exc).__name__}: {exc}")

        await asyncio.gather(*(one() for _ in range(n)))
        return {"ok": n - len(errors), "n_failed": len(errors), "failed": errors[:10],
                "seconds": time.monotonic() - t0}

    async def snapshot(self) -> dict:
        streams = {}
        for i, (a, b) in enumerate(self.pairs):
            for side, pc in (("a", a), ("b", b)):
                rx = lost = sent = 0
                for s in (await pc.getStats()).values():
                    if s.type == "inbound-rtp":
                        rx += s.packetsReceived
                        lost += s.packetsLost
                    elif s.type == "outbound-rtp":
                        sent += s.packetsSent
                streams[f"{i}{side}"] = (sent, rx, rx + lost)
        return {"t": time.monotonic(), "streams": streams}

    async def close(self) -> None:
        for a, b in self.pairs:
            await a.close()
            await b.close()
        for t in self.sinks:
            t.cancel()


def _worker_main(conn, options: dict) -> None:
    cpu = options.pop("cpu", None)
    if cpu is not None:
        os.sched_setaffinity(0, cpu)
    asyncio.run(_worker_async(conn, options))


async def _worker_async(conn, options: dict) -> None:
    pairs = Pairs(**options)

    async def close() -> None:
        try:
            await asyncio.wait_for(pairs.close(), 20)
        except Exception:
            pass

    await serve(conn, {"add": lambda cmd: _answer("added", pairs.add(cmd["n"])),
                       "snapshot": lambda cmd: _answer("snapshot", pairs.snapshot())}, close)


async def _answer(op: str, work) -> dict:
    return {"op": op, **(await work)}


class AiortcWorker(WorkerProcess):
    def __init__(self, **options) -> None:
        super().__init__(_worker_main, options, name="aiortc worker")

    def stop(self, timeout: float = 30) -> None:
        super().stop(timeout)


