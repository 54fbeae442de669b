"""The ``builtin`` media mode (:class:`.media.MediaPath`): the bridge terminates Meta's WebRTC leg itself and
relays to plain RTP (RTP/AVP) or SDES (RTP/SAVP) toward the PBX, no media server needed.

Toward WhatsApp, Meta's business endpoint rules
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference#sdp-overview-and-sample-sdp-structures):
ICE full agent in the controlling role with regular nomination (aioice; Meta is ICE-lite, and aioice nominates
regularly toward a lite peer), DTLS client (``a=setup:active`` in every SDP we send) with an ECDSA P-256
certificate, DTLS-SRTP, Opus 48 kHz 20 ms, RFC 4733 ``telephone-event/8000``, one SSRC, ``rtcp-mux``.

Toward the PBX: one UDP port, RTP/AVP or RTP/SAVP (SDES, ``AES_CM_128_HMAC_SHA1_80``). The PBX's codec decides:
Opus is passed through untouched (only the payload type and the SSRC toward WhatsApp are rewritten); PCMU or
PCMA is transcoded (Opus ⇄ 48 kHz PCM ⇄ 8 kHz ⇄ G.711, timestamps scaled 6:1). RFC 4733 events pass both ways
with their payload type mapped (and their timestamp scaled when transcoding, as Meta's events share the 48 kHz
audio timestamp base).

Per packet the work is done in place, in the sockets' ``datagram_received``: once ICE has chosen its pair the
ICE socket's protocol hands non-STUN datagrams straight to :meth:`_Relay.from_whatsapp` (STUN, e.g. consent
checks, still goes to aioice). RTCP is not relayed (each leg's reports describe its own hop); the bridge sends
none.

Sans-I/O modules of wacall used (see docs/design.md): :mod:`wacall.media.dtls` (DTLS-SRTP over memory BIOs),
:mod:`wacall.media.certificate`, :mod:`wacall.media.srtp` (pylibsrtp) and :mod:`wacall.media.g711`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import fractions
import logging

import av
import numpy as np

import wacall.media.g711 as g711
from wacall.media.certificate import DtlsCertificate
from wacall.business.webrtc import _STATIC, ICE_TIMEOUT, Sdp, WebRtcError, WhatsAppLeg
from wacall.business.webrtc import parse_sdp as _parse_sdp
from wacall.media.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext, generate_key_salt, sdes_crypto_line

from .media import MediaError, MediaStats, NoCommonCodec

log = logging.getLogger("wacall.bridge.builtin")

G711 = {"PCMU": 0, "PCMA": 8}


def parse_sdp(text: str) -> Sdp:
    try:
        return _parse_sdp(text)
    except WebRtcError as exc:
        raise MediaError(str(exc)) from None


# -- Opus through PyAV ----------------------------------------------------------------------------------------
class _Transcoder:
    """Opus 48 kHz ⇄ G.711 8 kHz, 20 ms frames, one per call (each direction keeps its filter history)."""

    def __init__(self, law: str) -> None:
        self.encode_g711 = g711.ulaw_encode if law == "PCMU" else g711.alaw_encode
        self.decode_g711 = g711.ulaw_decode if law == "PCMU" else g711.alaw_decode
        self.down, self.up = g711.Downsampler(), g711.Upsampler()
        dec = av.CodecContext.create("libopus", "r")
        dec.sample_rate, dec.layout = 48000, "mono"
        enc = av.CodecContext.create("libopus", "w")
        enc.sample_rate, enc.layout, enc.format, enc.bit_rate = 48000, "mono", "s16", 32000
        enc.time_base = fractions.Fraction(1, 48000)
        enc.options = {"application": "voip", "frame_duration": "20", "compression_level": "0"}
        enc.open()
        self.dec, self.enc, self.pts = dec, enc, 0

    def opus_to_g711(self, payload: bytes) -> bytes | None:
        try:
            frames = self.dec.decode(av.Packet(payload))
        except av.error.FFmpegError:
            return None
        if not frames:
            return None
        pcm = np.concatenate([_int16(f) for f in frames])
        return self.encode_g711(self.down.process(pcm))

    def g711_to_opus(self, payload: bytes) -> bytes | None:
        pcm = self.up.process(self.decode_g711(payload))
        if pcm.shape[0] != 960:                 # 20 ms only (a=ptime:20 in every SDP toward the PBX)
            return None
        frame = av.AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        frame.sample_rate, frame.pts = 48000, self.pts
        self.pts += 960
        packets = self.enc.encode(frame)
        return bytes(packets[0]) if packets else None


def _int16(frame: av.AudioFrame) -> np.ndarray:
    arr = frame.to_ndarray()
    if arr.dtype.kind == "f":
        arr = np.clip(np.rint(arr * 32768.0), -32768, 32767).astype(np.int16)
    channels = len(frame.layout.channels)
    arr = arr.reshape(channels, -1) if frame.format.is_planar else arr.reshape(-1, channels).T
    return arr[0].astype(np.int16, copy=False)              # the first channel (libopus decodes mono here)


def _payload_offset(rtp: bytes) -> int:
    """Where an RTP packet's payload starts (CSRCs and a header extension skipped)."""
    offset = 12 + 4 * (rtp[0] & 0x0F)
    if rtp[0] & 0x10 and len(rtp) >= offset + 4:
        offset += 4 + 4 * int.from_bytes(rtp[offset + 2:offset + 4], "big")
    return offset


def _payload(rtp: bytes) -> bytes:
    end = len(rtp) - (rtp[-1] if rtp[0] & 0x20 else 0)
    return rtp[_payload_offset(rtp):end]


# -- one call -------------------------------------------------------------------------------------------------
class _PbxProtocol(asyncio.DatagramProtocol):
    def __init__(self, relay: "_Relay") -> None:
        self.relay = relay
        self.transport: asyncio.DatagramTransport | None = None

    def connection_made(self, transport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr) -> None:
        self.relay.from_pbx(data, addr)

    def error_received(self, exc: Exception) -> None:         # ICMP unreachable: the PBX's phone not up yet
        pass


class _Relay(WhatsAppLeg):
    """One bridged call's media: the WebRTC leg (:class:`wacall.business.webrtc.WhatsAppLeg`: ICE, DTLS-SRTP), the
    PBX leg (RTP or SDES), and the packet relay between them."""

    def __init__(self, name: str, host: str, pbx_protocol: str, certificate: DtlsCertificate,
                 on_failure=None) -> None:
        super().__init__(host, certificate=certificate, name=name, on_failure=on_failure)
        self.pbx_protocol = pbx_protocol
        self.pbx = _PbxProtocol(self)
        self.pbx_port = 0
        self.pbx_remote: tuple[str, int] | None = None
        self.pbx_key = generate_key_salt(AES_CM_128_HMAC_SHA1_80) if pbx_protocol == "RTP/SAVP" else b""
        self.pbx_srtp: SrtpContext | None = None
        # the codec plan: payload types on each side; transcoder when the PBX speaks G.711
        self.pbx_audio, self.pbx_event = 111, 126
        self.pbx_codec = "opus"
        self.transcoder: _Transcoder | None = None
        self.packets = {"from_whatsapp": 0, "to_pbx": 0, "from_pbx": 0, "to_whatsapp": 0}

    # -- set-up -----------------------------------------------------------------------------------------------
    def whatsapp_leg(self, sdp: Sdp) -> None:
        try:
            super().whatsapp_leg(sdp)
        except WebRtcError as exc:
            raise MediaError(str(exc)) from None

    async def open(self) -> None:
        loop = asyncio.get_running_loop()
        transport, _ = await loop.create_datagram_endpoint(lambda: self.pbx, local_addr=(self.host, 0))
        self.pbx_port = transport.get_extra_info("sockname")[1]
        await super().open()

    def plan(self, codec: str, pbx_audio: int, pbx_event: int | None, wa_audio: int, wa_event: int | None) -> None:
        self.pbx_codec, self.pbx_audio, self.wa_audio = codec, pbx_audio, wa_audio
        self.pbx_event = pbx_event if pbx_event is not None and wa_event is not None else -1
        self.wa_event = wa_event if pbx_event is not None and wa_event is not None else -1
        self.transcoder = _Transcoder(codec) if codec in G711 else None

    def pbx_leg(self, sdp: Sdp) -> None:
        """The PBX's address and (SDES) key from its SDP."""
        if not sdp.port:
            raise MediaError("the PBX's SDP has no media port")
        self.pbx_remote = (sdp.address or "127.0.0.1", sdp.port)
        if self.pbx_protocol == "RTP/SAVP":
            crypto = next((c for c in sdp.crypto if c[1] == AES_CM_128_HMAC_SHA1_80.name), None)
            if crypto is None or not crypto[2].startswith("inline:"):
                raise MediaError(f"the PBX's SDP has no a=crypto with {AES_CM_128_HMAC_SHA1_80.name}")
            try:
                remote = base64.b64decode(crypto[2][7:].split("|")[0])
                self.pbx_srtp = SrtpContext(AES_CM_128_HMAC_SHA1_80, self.pbx_key, remote)
            except (ValueError, binascii.Error) as exc:
                raise MediaError(f"the PBX's SDES key: {exc}") from None

    # -- per packet -------------------------------------------------------------------------------------------
    def received(self, rtp: bytes) -> None:
        """One decrypted RTP packet from WhatsApp (:class:`WhatsAppLeg`), relayed in place."""
        pt = rtp[1] & 0x7F
        if pt == self.wa_audio:
            if self.transcoder is not None:
                payload = self.transcoder.opus_to_g711(_payload(rtp))
                if payload is None:
                    return
                ts = (int.from_bytes(rtp[4:8], "big") // 6) & 0xFFFFFFFF
                rtp = b"\x80" + bytes([(rtp[1] & 0x80) | self.pbx_audio]) + rtp[2:4] + \
                    ts.to_bytes(4, "big") + rtp[8:12] + payload
            elif self.pbx_audio != pt:
                rtp = rtp[:1] + bytes([(rtp[1] & 0x80) | self.pbx_audio]) + rtp[2:]
        elif pt == self.wa_event:
            if self.transcoder is not None:
                ts = (int.from_bytes(rtp[4:8], "big") // 6) & 0xFFFFFFFF
                rtp = b"\x80" + bytes([(rtp[1] & 0x80) | self.pbx_event]) + rtp[2:4] + \
                    ts.to_bytes(4, "big") + rtp[8:12] + _payload(rtp)
            elif self.pbx_event != pt:
                rtp = rtp[:1] + bytes([(rtp[1] & 0x80) | self.pbx_event]) + rtp[2:]
        else:
            return
        self._to_pbx(rtp)

    def _to_pbx(self, rtp: bytes) -> None:
        if self.pbx_remote is None or self.pbx.transport is None:
            return
        if self.pbx_srtp is not None:
            rtp = self.pbx_srtp.protect(rtp)
        self.pbx.transport.sendto(rtp, self.pbx_remote)
        self.packets["to_pbx"] += 1

    def from_pbx(self, data: bytes, addr) -> None:
        if len(data) < 12 or not 127 < data[0] < 192 or 191 < data[1] < 224:      # not RTP, or RTCP
            return
        if self.pbx_srtp is not None:
            data = self.pbx_srtp.try_unprotect(data)
            if data is None:
                return
        self.packets["from_pbx"] += 1
        srtp = self.wa_srtp
        if srtp is None or self.wa_transport is None:        # media held until WhatsApp's leg is keyed
            return
        pt = data[1] & 0x7F
        if pt == self.pbx_audio:
            if self.transcoder is not None:
                payload = self.transcoder.g711_to_opus(_payload(data))
                if payload is None:
                    return
                ts = (int.from_bytes(data[4:8], "big") * 6) & 0xFFFFFFFF
                rtp = b"\x80" + bytes([(data[1] & 0x80) | self.wa_audio]) + data[2:4] + ts.to_bytes(4, "big") + \
                    self.ssrc + payload
            else:
                rtp = data[:1] + bytes([(data[1] & 0x80) | self.wa_audio]) + data[2:8] + self.ssrc + data[12:]
        elif pt == self.pbx_event:
            if self.transcoder is not None:
                ts = (int.from_bytes(data[4:8], "big") * 6) & 0xFFFFFFFF
                rtp = b"\x80" + bytes([(data[1] & 0x80) | self.wa_event]) + data[2:4] + ts.to_bytes(4, "big") + \
                    self.ssrc + _payload(data)
            else:
                rtp = data[:1] + bytes([(data[1] & 0x80) | self.wa_event]) + data[2:8] + self.ssrc + data[12:]
        else:
            return
        self.send(rtp)

    # -- SDP we send ------------------------------------------------------------------------------------------
    def pbx_sdp(self, codecs: list[tuple[int, str, int]]) -> str:
        """Our SDP toward the PBX: ``codecs`` as (pt, name, clock), in preference order."""
        ip = "IP6" if ":" in self.host else "IP4"
        lines = ["v=0", f"o=- {self.session} 1 IN {ip} {self.host}", "s=wacall-bridge", f"c=IN {ip} {self.host}",
                 "t=0 0", f"m=audio {self.pbx_port} {self.pbx_protocol} {' '.join(str(c[0]) for c in codecs)}"]
        for pt, name, clock in codecs:
            lines.append(f"a=rtpmap:{pt} {name}/{clock}" + ("/2" if name == "opus" else ""))
            if name == "telephone-event":
                lines.append(f"a=fmtp:{pt} 0-15")
        lines += ["a=ptime:20", "a=sendrecv"]
        if self.pbx_key:
            lines.append(f"a=crypto:{sdes_crypto_line(1, AES_CM_128_HMAC_SHA1_80, self.pbx_key)}")
        return "\r\n".join(lines) + "\r\n"

    async def close(self) -> None:
        self.closed, self.pbx_remote = True, None               # the per-packet paths stop
        if self.pbx.transport is not None:
            self.pbx.transport.close()
        await super().close()


class BuiltinMedia:
    """The ``builtin`` media mode: one :class:`_Relay` per call, named by the media call's name."""

    def __init__(self, host: str = "127.0.0.1", *, pbx_protocol: str = "RTP/AVP") -> None:
        self.host, self.pbx_protocol = host, pbx_protocol
        self.certificate: DtlsCertificate | None = None
        self.calls: dict[str, _Relay] = {}
        self._offers: dict[str, Sdp] = {}
        self.ice_timeout = ICE_TIMEOUT
        self.on_failure = None                  # MediaPath's optional failure callback: (call, reason)

    async def start(self) -> str:
        self.certificate = DtlsCertificate.default()
        return f"builtin {self.host} ({self.pbx_protocol} toward the PBX)"

    def close(self) -> None:
        for relay in self.calls.values():
            relay.closed = True
            relay.pbx_remote = relay.wa_transport = None
            if relay.pbx.transport is not None:
                relay.pbx.transport.close()
        self.calls.clear()

    async def _relay(self, call: str) -> _Relay:
        if self.certificate is None:
            self.certificate = DtlsCertificate.default()
        old = self.calls.pop(call, None)
        if old is not None:
            await old.close()
        relay = self.calls[call] = _Relay(call, self.host, self.pbx_protocol, self.certificate, self._failed)
        relay.ice_timeout = self.ice_timeout
        try:
            await relay.open()
        except OSError as exc:
            self.calls.pop(call, None)
            await relay.close()
            raise MediaError(f"builtin media: no socket on {self.host}: {exc}") from None
        return relay

    def _failed(self, call: str, reason: str) -> None:
        if self.on_failure is not None and call in self.calls:
            self.on_failure(call, reason)

    def _get(self, call: str) -> _Relay:
        relay = self.calls.get(call)
        if relay is None:
            raise MediaError(f"builtin media: no call {call}")
        return relay

    # user-initiated: Meta offers WebRTC; we offer the PBX Opus (Meta's payload type), PCMU, PCMA, events
    async def offer_to_pbx(self, call: str, whatsapp_offer: str) -> str:
        offer = parse_sdp(whatsapp_offer)
        opus = offer.pt("opus", 48000)
        if opus is None:
            raise MediaError("WhatsApp's offer has no opus/48000")
        event = offer.pt("telephone-event", 8000)
        relay = await self._relay(call)
        self._offers[call] = offer
        codecs = [(opus, "opus", 48000), (0, "PCMU", 8000), (8, "PCMA", 8000)]
        if event is not None:
            codecs.append((event, "telephone-event", 8000))
        return relay.pbx_sdp(codecs)

    async def answer_to_whatsapp(self, call: str, pbx_answer: str, pbx_tag: str) -> str:
        relay, offer = self._get(call), self._offers.pop(call, None)
        if offer is None:
            raise MediaError(f"builtin media: no offer for {call}")
        answer = parse_sdp(pbx_answer)
        codec = _first_codec(answer, answer.payloads)
        if codec is None:
            raise NoCommonCodec("the PBX answered no codec the bridge relays (opus, PCMU, PCMA)")
        name, pt = codec
        relay.plan(name, pt, answer.pt("telephone-event", 8000), offer.pt("opus", 48000) or 111,
                   offer.pt("telephone-event", 8000))
        relay.pbx_leg(answer)
        relay.whatsapp_leg(offer)
        log.info("media %s: PBX %s %s:%s, %s", call, relay.pbx_protocol, *relay.pbx_remote or ("-", 0),
                 "opus passed through" if name == "opus" else f"{name} transcoded")
        return relay.whatsapp_sdp(offer.mid or "audio")

    # business-initiated: the PBX offers; we offer Meta Opus (the PBX's payload type when it speaks Opus)
    async def offer_to_whatsapp(self, call: str, pbx_offer: str, pbx_tag: str) -> str:
        offer = parse_sdp(pbx_offer)
        codec = _first_codec(offer, offer.payloads)
        if codec is None:
            raise NoCommonCodec("the PBX offered no codec the bridge relays (opus, PCMU, PCMA)")
        name, pt = codec
        event = offer.pt("telephone-event", 8000)
        relay = await self._relay(call)
        self._offers[call] = offer
        if offer.proto in ("RTP/AVP", "RTP/SAVP") and offer.proto != relay.pbx_protocol:
            relay.pbx_protocol = offer.proto        # answer the PBX in its own profile (SDES when it offered it)
            relay.pbx_key = generate_key_salt(AES_CM_128_HMAC_SHA1_80) if offer.proto == "RTP/SAVP" else b""
        relay.plan(name, pt, event, pt if name == "opus" else 111, event if event is not None else 126)
        return relay.whatsapp_sdp("0")

    async def answer_to_pbx(self, call: str, whatsapp_answer: str, pbx_tag: str) -> str:
        relay, offer = self._get(call), self._offers.pop(call, None)
        if offer is None:
            raise MediaError(f"builtin media: no offer for {call}")
        answer = parse_sdp(whatsapp_answer)
        opus = answer.pt("opus", 48000)
        if opus is None:
            raise MediaError("WhatsApp's answer has no opus/48000")
        wa_event = answer.pt("telephone-event", 8000)
        pbx_event = offer.pt("telephone-event", 8000)
        relay.plan(relay.pbx_codec, relay.pbx_audio, pbx_event, opus, wa_event)
        relay.pbx_leg(offer)
        relay.whatsapp_leg(answer)
        codecs = [(relay.pbx_audio, "opus" if relay.pbx_codec == "opus" else relay.pbx_codec, 48000
                   if relay.pbx_codec == "opus" else 8000)]
        if relay.pbx_event >= 0:
            codecs.append((relay.pbx_event, "telephone-event", 8000))
        log.info("media %s: PBX %s %s:%s, %s", call, relay.pbx_protocol, *relay.pbx_remote or ("-", 0),
                 "opus passed through" if relay.pbx_codec == "opus" else f"{relay.pbx_codec} transcoded")
        return relay.pbx_sdp(codecs)

    async def delete(self, call: str) -> None:
        self._offers.pop(call, None)
        relay = self.calls.pop(call, None)
        if relay is not None:
            log.info("media %s: deleted (packets %s)", call, relay.packets)
            await relay.close()

    async def stats(self, call: str):
        """The call's packet counts (sequence gaps are not counted, so ``lost_from_*`` stay None): None for an
        unknown call."""
        relay = self.calls.get(call)
        return None if relay is None else MediaStats(**relay.packets)


def _first_codec(sdp: Sdp, payloads: list[int]) -> tuple[str, int] | None:
    """The PBX's codec: Opus wherever it lists it (passed through), else its first of PCMU and PCMA (transcoded)."""
    opus = sdp.pt("opus", 48000)
    if opus is not None:
        return "opus", opus
    for pt in payloads:
        name = sdp.rtpmap.get(pt, _STATIC.get(pt, ("", 0)))
        if name in (("pcmu", 8000), ("pcma", 8000)):
            return name[0].upper(), pt
    return None


__all__ = ["BuiltinMedia", "Sdp", "parse_sdp"]
