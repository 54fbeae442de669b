"""The ng protocol over UDP (asyncio): one socket toward RtpEngine, a request retransmitted with its cookie until
the reply comes (RtpEngine answers a repeated cookie from its cache) or ``timeout`` passes."""

from __future__ import annotations

import asyncio
import logging

from . import ng

log = logging.getLogger("wacall.bridge.rtpengine")


class RtpEngine(asyncio.DatagramProtocol):
    def __init__(self, address: tuple[str, int], *, timeout: float = 5.0, retransmit: float = 0.5) -> None:
        self.address, self.timeout, self.retransmit = address, timeout, retransmit
        self.client = ng.Client()
        self.transport: asyncio.DatagramTransport | None = None
        self._futures: dict[str, asyncio.Future[ng.Reply]] = {}

    async def start(self) -> None:
        loop = asyncio.get_running_loop()
        self.transport, _ = await loop.create_datagram_endpoint(lambda: self, remote_addr=self.address)

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def datagram_received(self, data: bytes, addr: object) -> None:
        try:
            reply = self.client.reply_for(data)
        except ng.NgError as exc:
            log.warning("ng reply dropped: %s", exc)
            return
        if reply is not None:
            future = self._futures.pop(reply.cookie, None)
            if future is not None and not future.done():
                future.set_result(reply)

    def error_received(self, exc: Exception) -> None:              # ICMP port unreachable: retransmits go on
        log.debug("ng socket: %s", exc)

    async def command(self, command: str, params: dict) -> ng.Reply:
        """Run one command; the reply (raises :class:`ng.NgError` on ``error`` or no answer)."""
        assert self.transport is not None, "start() first"
        cookie, datagram = self.client.request(command, **params)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[ng.Reply] = loop.create_future()
        self._futures[cookie] = future
        deadline = loop.time() + self.timeout
        try:
            while True:
                self.transport.sendto(datagram)
                left = deadline - loop.time()
                if left <= 0:
                    raise ng.NgError(f"rtpengine at {self.address[0]}:{self.address[1]}: no reply to {command}")
                try:
                    reply = await asyncio.wait_for(asyncio.shield(future), min(self.retransmit, left))
                    return reply.raise_for_error()
                except asyncio.TimeoutError:
                    continue
        finally:
            self._futures.pop(cookie, None)
            self.client.pending.pop(cookie, None)

    async def ping(self) -> bool:
        return (await self.command("ping", {})).result == "pong"

    async def offer(self, **params) -> str:
        reply = await self.command("offer", ng.offer_to_pbx(**params))
        if not reply.sdp:
            raise ng.NgError("rtpengine: offer reply without sdp")
        return reply.sdp

    async def offer_webrtc(self, **params) -> str:
        """The PBX's SDP rewritten to WebRTC for Meta (a business-initiated call)."""
        reply = await self.command("offer", ng.offer_to_whatsapp(**params))
        if not reply.sdp:
            raise ng.NgError("rtpengine: offer reply without sdp")
        return reply.sdp

    async def answer_plain(self, **params) -> str:
        """Meta's answer rewritten for the PBX (a business-initiated call)."""
        reply = await self.command("answer", ng.answer_to_pbx(**params))
        if not reply.sdp:
            raise ng.NgError("rtpengine: answer reply without sdp")
        return reply.sdp

    async def answer(self, **params) -> str:
        reply = await self.command("answer", ng.answer_to_whatsapp(**params))
        if not reply.sdp:
            raise ng.NgError("rtpengine: answer reply without sdp")
        return reply.sdp

    async def delete(self, call_id: str, from_tag: str | None = None) -> None:
        try:
            await self.command("delete", ng.delete(call_id, from_tag))
        except ng.NgError as exc:                                   # already gone: nothing to free
            log.info("rtpengine delete %s: %s", call_id, exc)


__all__ = ["RtpEngine"]
