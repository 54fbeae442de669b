"""The ``builtin`` media mode (:class:`.media.MediaPath`): the bridge terminates Meta's WebRTC leg itself (ICE
full agent, controlling, regular nomination; DTLS client with an ECDSA certificate; SRTP; Opus 48 kHz 20 ms;
RFC 4733) and relays to plain RTP (RTP/AVP) or SDES (RTP/SAVP) toward the PBX. Work in progress."""

from __future__ import annotations

import logging

from .media import MediaError, NoCommonCodec

log = logging.getLogger("wacall.bridge.builtin")


class BuiltinMedia:
    def __init__(self, host: str = "127.0.0.1", *, pbx_protocol: str = "RTP/AVP") -> None:
        self.host, self.pbx_protocol = host, pbx_protocol

    async def start(self) -> str:
        return f"builtin {self.host}"

    def close(self) -> None:
        pass

    async def offer_to_pbx(self, call: str, whatsapp_offer: str) -> str:
        raise MediaError("builtin media: not built yet")

    async def answer_to_whatsapp(self, call: str, pbx_answer: str, pbx_tag: str) -> str:
        raise MediaError("builtin media: not built yet")

    async def offer_to_whatsapp(self, call: str, pbx_offer: str, pbx_tag: str) -> str:
        raise MediaError("builtin media: not built yet")

    async def answer_to_pbx(self, call: str, whatsapp_answer: str, pbx_tag: str) -> str:
        raise MediaError("builtin media: not built yet")

    async def delete(self, call: str) -> None:
        pass


__all__ = ["BuiltinMedia"]
