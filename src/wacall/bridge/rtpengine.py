"""The ng protocol over UDP (asyncio): one socket toward RtpEngine, a request retransmitted with its cookie until
the reply comes (RtpEngine answers a repeated cookie from its cache) or ``timeout`` passes."""

from __future__ import annotations

import asyncio
import logging

from . import ng
from .media import MediaError, MediaStats, NoCommonCodec

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

    async def delete(self, call_id: str, from_tag: str | None = None) -> None:
        try:
            await self.command("delete", ng.delete(call_id, from_tag))
        except ng.NgError as exc:                                   # already gone: nothing to free
            log.info("rtpengine delete %s: %s", call_id, exc)


WA_SIDE = "whatsapp"            # the ng tag of the WhatsApp leg


class RtpEngineMedia:
    """The ``rtpengine`` media mode (:class:`.media.MediaPath`): RtpEngine rewrites each SDP and relays the
    packets. The ng call-id is the media call's name; the ng from-tag is the side that offered (``WA_SIDE`` for
    a user-initiated call, the PBX's tag for a business-initiated one)."""

    def __init__(self, address: tuple[str, int], *, timeout: float = 5.0, pbx_protocol: str = "RTP/AVP",
                 transcode: "tuple[str, ...] | list[str]" = ()) -> None:
        self.ng = RtpEngine(address, timeout=timeout)
        self.pbx_protocol = pbx_protocol
        self.transcode = tuple(transcode)           # G.711 toward the PBX: ("PCMU", "PCMA"); () Opus only
        self._from_tags: dict[str, str] = {}

    async def start(self) -> str:
        await self.ng.start()
        try:
            await self.ng.ping()
        except ng.NgError as exc:
            raise MediaError(str(exc)) from None
        return f"rtpengine {self.ng.address[0]}:{self.ng.address[1]}"

    def close(self) -> None:
        self.ng.close()

    async def _sdp(self, command: str, params: dict, *, call: str, from_tag: str) -> str:
        self._from_tags.setdefault(call, from_tag)
        try:
            reply = await self.ng.command(command, params)
        except ng.NgError as exc:
            raise MediaError(str(exc)) from None
        if not reply.sdp:
            raise MediaError(f"rtpengine: {command} reply without sdp")
        return ng.events_from_rtpengine(reply.sdp)

    def _opus_for_whatsapp(self, sdp: str, what: str) -> str:
        """Meta's WebRTC leg speaks Opus only: an SDP for it without Opus means the PBX offered or answered only
        codecs RtpEngine was not asked to transcode (``[media] transcode``), and the call cannot have audio."""
        if "opus/48000" not in sdp.lower():
            codecs = sorted({line.split(" ", 1)[1].split("/")[0] for line in sdp.splitlines()
                             if line.startswith("a=rtpmap:") and "telephone-event" not in line})
            hint = "" if self.transcode else " (set [media] transcode = [\"PCMU\", \"PCMA\"] to transcode G.711)"
            raise NoCommonCodec(f"the PBX {what} no codec WhatsApp speaks: {', '.join(codecs) or 'none'}{hint}")
        return sdp

    async def offer_to_pbx(self, call: str, whatsapp_offer: str) -> str:
        return await self._sdp("offer", ng.offer_to_pbx(call, WA_SIDE, whatsapp_offer, pbx_protocol=self.pbx_protocol,
                                                        transcode=self.transcode), call=call, from_tag=WA_SIDE)

    async def answer_to_whatsapp(self, call: str, pbx_answer: str, pbx_tag: str) -> str:
        return self._opus_for_whatsapp(await self._sdp("answer", ng.answer_to_whatsapp(
            call, WA_SIDE, pbx_tag, pbx_answer), call=call, from_tag=WA_SIDE), "answered")

    async def offer_to_whatsapp(self, call: str, pbx_offer: str, pbx_tag: str) -> str:
        return self._opus_for_whatsapp(await self._sdp("offer", ng.offer_to_whatsapp(
            call, pbx_tag, pbx_offer, transcode=bool(self.transcode)), call=call, from_tag=pbx_tag), "offered")

    async def answer_to_pbx(self, call: str, whatsapp_answer: str, pbx_tag: str) -> str:
        return await self._sdp("answer", ng.answer_to_pbx(call, pbx_tag, WA_SIDE, whatsapp_answer),
                               call=call, from_tag=pbx_tag)

    async def delete(self, call: str) -> None:
        await self.ng.delete(call, self._from_tags.pop(call, None))

    # -- operations (bridge/metrics.py, bridge/state.py): additive, see MediaPath ------------------------------
    async def stats(self, call: str) -> MediaStats | None:
        """RtpEngine's ``query``: packets received per leg (``stats``: ``packets`` relayed + ``errors`` dropped)
        and sent to it (``stats_out`` where this RtpEngine has it, else what the other leg relayed). RtpEngine
        10.5 gives no per-SSRC loss (its ``SSRC`` table stays empty without RTCP reports), so ``lost_from_*``
        stays None."""
        try:
            reply = await self.ng.command("query", {"call-id": call})
        except ng.NgError as exc:
            raise MediaError(str(exc)) from None
        log.debug("rtpengine query %s: %r", call, reply.message)
        return stats_from_query(reply.message, self._from_tags.get(call) or WA_SIDE)

    def snapshot(self, call: str) -> dict | None:
        return {"from_tag": self._from_tags.get(call)}

    async def restore(self, call: str, saved: dict) -> bool:
        """RtpEngine holds the media of a call across a restart of the bridge: only the from-tag to learn, once
        RtpEngine confirms it still has the call (False: it deleted it meanwhile, e.g. after its media timeout)."""
        try:
            await self.ng.command("query", {"call-id": call})
        except ng.NgError as exc:
            log.info("rtpengine no longer has %s: %s", call, exc)
            return False
        if saved.get("from_tag"):
            self._from_tags[call] = str(saved["from_tag"])
        return True


def stats_from_query(raw: dict, wa_tag: str) -> MediaStats | None:
    """A :class:`MediaStats` from an ng ``query`` reply: the leg tagged ``wa_tag`` (or ``WA_SIDE``) is WhatsApp's."""
    tags = raw.get("tags")
    if not isinstance(tags, dict) or not tags:
        return None
    legs: dict[str, dict] = {}
    for name, tag in tags.items():
        if not isinstance(tag, dict):
            continue
        side = "whatsapp" if _text(name) in (wa_tag, WA_SIDE) else "pbx"
        leg = legs.setdefault(side, {"in": 0, "relayed": 0, "out": None})
        for media in tag.get("medias") or ():
            for stream in (media.get("streams") or ())[:1]:        # the RTP stream (the next one is RTCP)
                stats = stream.get("stats") or {}
                # "packets": received and relayed; "errors": received and dropped (e.g. SRTP that does not
                # authenticate yet, before the DTLS handshake is done)
                leg["in"] += _int(stats.get("packets")) + _int(stats.get("errors"))
                leg["relayed"] += _int(stats.get("packets"))
                if isinstance(stream.get("stats_out"), dict):
                    leg["out"] = (leg["out"] or 0) + _int(stream["stats_out"].get("packets"))
    empty = {"in": 0, "relayed": 0, "out": None}
    wa, pbx = legs.get("whatsapp", empty), legs.get("pbx", empty)
    return MediaStats(from_whatsapp=wa["in"], from_pbx=pbx["in"],
                      to_pbx=pbx["out"] if pbx["out"] is not None else wa["relayed"],
                      to_whatsapp=wa["out"] if wa["out"] is not None else pbx["relayed"])


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _int(value: object) -> int:
    try:
        return int(value)                                           # type: ignore[call-overload]
    except (TypeError, ValueError):
        return 0


__all__ = ["RtpEngine", "RtpEngineMedia", "WA_SIDE"]
