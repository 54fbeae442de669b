"""A WhatsApp business WebRTC endpoint for Python businesses: :class:`WhatsAppLeg`, one call's media leg toward
Meta, with no media server and no aiortc.

What it does, per Meta's business endpoint rules
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference#sdp-overview-and-sample-sdp-structures):
ICE full agent in the controlling role with regular nomination (aioice; Meta is ICE-lite), DTLS client
(``a=setup:active`` in every SDP it sends, offer or answer) with an ECDSA P-256 certificate, DTLS-SRTP, Opus
48 kHz 20 ms and RFC 4733 ``telephone-event/8000`` in its SDP, one SSRC, ``rtcp-mux``, and RFC 7675 consent
freshness (consent lost after 30 s without an answer). Media is held (``send`` returns False) until DTLS has keyed
the leg, so nothing is clipped or sent in the clear.

It carries RTP packets, not audio: ``on_rtp`` gets each decrypted RTP packet, ``send`` takes an RTP packet
(Opus or RFC 4733, the payload types of the SDP: ``audio_pt``/``event_pt``) and encrypts it. Encoding and decoding
Opus is the caller's (PyAV, or pass-through as the bridge's builtin media mode does).

Why aioice + wacall's sans-I/O DTLS (:mod:`wacall.media.dtls`, :mod:`wacall.media.srtp`) rather than aiortc:
aiortc's RTCPeerConnection decodes and re-encodes every packet through asyncio queues and its own jitter buffer,
which a relay neither needs nor can afford per call; here each datagram is handled in place in the socket's
``datagram_received`` once ICE chose its pair (STUN still goes to aioice).

    leg = WhatsAppLeg(on_rtp=handle)
    sdp = await leg.answer(connect_webhook_sdp)       # → Graph pre_accept / accept with this SDP
    await leg.wait_connected(30)
    leg.send(rtp_packet); leg.stats(); await leg.close()
"""

from __future__ import annotations

import asyncio
import logging
import random
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

import aioice
import aioice.stun

from wacall.media.certificate import DtlsCertificate
from wacall.media.dtls import DtlsSrtpSession
from wacall.media.srtp import SrtpContext

log = logging.getLogger("wacall.business.webrtc")

ICE_TIMEOUT = 30.0              # no nominated pair by then: the leg failed
DTLS_TIMEOUT = 30.0             # no DTLS-SRTP keys this long after ICE connected: the leg failed
CONSENT_INTERVAL = 5.0          # RFC 7675 section 5.1: a consent check every 5 s (randomised 0.8-1.2)...
CONSENT_TIMEOUT = 30.0          # ... and consent lost after 30 s without a response


class WebRtcError(Exception):
    """The WhatsApp leg cannot be set up (bad SDP) or failed (ICE, DTLS, consent)."""


# -- SDP: only what the leg and the bridge need ---------------------------------------------------------------------------
@dataclass
class Sdp:
    address: str = ""
    port: int = 0
    proto: str = ""
    payloads: list[int] = field(default_factory=list)
    rtpmap: dict[int, tuple[str, int]] = field(default_factory=dict)      # pt → (lower-case name, clock)
    ice_ufrag: str = ""
    ice_pwd: str = ""
    ice_lite: bool = False
    fingerprint: str = ""
    candidates: list[str] = field(default_factory=list)
    crypto: list[tuple[str, str, str]] = field(default_factory=list)       # (tag, suite, key params)
    mid: str = ""

    def pt(self, name: str, clock: int) -> int | None:
        """The first payload type of the m= line carrying ``name/clock`` (static PCMU/PCMA without rtpmap)."""
        for pt in self.payloads:
            if self.rtpmap.get(pt, _STATIC.get(pt)) == (name, clock):
                return pt
        return None


_STATIC = {0: ("pcmu", 8000), 8: ("pcma", 8000)}


def parse_sdp(text: str) -> Sdp:
    sdp, media, session_c = Sdp(), False, ""
    for line in text.replace("\r\n", "\n").split("\n"):
        kind, _, value = line.strip().partition("=")
        if kind == "m":
            if media:                           # the first audio section is the call's
                break
            parts = value.split()
            if len(parts) < 4 or parts[0] != "audio":
                continue
            media = True
            try:
                sdp.port, sdp.proto, sdp.payloads = int(parts[1]), parts[2], [int(p) for p in parts[3:]]
            except ValueError:
                raise WebRtcError(f"SDP: bad m= line {value!r}") from None
        elif kind == "c":
            address = value.split()[-1].split("/")[0] if value.split() else ""
            if media:
                sdp.address = address
            else:
                session_c = address
        elif kind == "a":
            name, _, arg = value.partition(":")
            if name == "ice-lite":
                sdp.ice_lite = True
            elif name == "ice-ufrag":
                sdp.ice_ufrag = arg.strip()
            elif name == "ice-pwd":
                sdp.ice_pwd = arg.strip()
            elif name == "fingerprint":
                sdp.fingerprint = arg.strip()
            elif name == "mid" and media:
                sdp.mid = arg.strip()
            elif name == "candidate" and media:
                sdp.candidates.append(arg.strip())
            elif name == "crypto" and media:
                parts = arg.split()
                if len(parts) >= 3:
                    sdp.crypto.append((parts[0], parts[1], parts[2]))
            elif name == "rtpmap" and media:
                pt, _, codec = arg.partition(" ")
                bits = codec.strip().split("/")
                try:
                    sdp.rtpmap[int(pt)] = (bits[0].lower(), int(bits[1]) if len(bits) > 1 else 8000)
                except ValueError:
                    continue
    if not media:
        raise WebRtcError("SDP without an audio m= line")
    sdp.address = sdp.address or session_c
    return sdp


class _Agent(aioice.Connection):
    """aioice's full agent, controlling, its one host candidate on the configured address only."""

    def __init__(self, host: str) -> None:
        super().__init__(ice_controlling=True, components=1, use_ipv6=":" in host, use_ipv4=":" not in host)
        self._host = host
        self.on_consent_lost = lambda: None

    async def gather_candidates(self) -> None:
        if not self._local_candidates_start:
            self._local_candidates_start = True
            self._local_candidates += await self.get_component_candidates(component=1, addresses=[self._host])
            self._local_candidates_end = True

    async def query_consent(self) -> None:
        """RFC 7675 consent freshness: consent expires after 30 s without a response, not after 6 checks in a row
        unanswered within 0.5 s (aioice's own loop; a response delayed by a busy machine would end the call)."""
        assert self.remote_password is not None
        loop = asyncio.get_running_loop()
        fresh = loop.time()
        while True:
            await asyncio.sleep(CONSENT_INTERVAL * (0.8 + 0.4 * random.random()))
            for pair in list(self._nominated.values()):
                try:
                    await pair.protocol.request(self.build_request(pair, nominate=False), pair.remote_addr,
                                                integrity_key=self.remote_password.encode("utf8"), retransmissions=3)
                    fresh = loop.time()
                except aioice.stun.TransactionError:
                    pass
            if loop.time() - fresh > CONSENT_TIMEOUT:
                log.warning("ICE consent lost (no answer to consent checks for %.0f s): media stopped",
                            loop.time() - fresh)
                self._query_consent_task = None
                self.on_consent_lost()
                await self.close()
                return


class WhatsAppLeg:
    """One call's WebRTC leg toward WhatsApp (see the module's docstring). ``on_rtp(rtp)`` gets each decrypted RTP
    packet; ``on_failure(name, reason)`` is called once if the leg fails for good (no nominated ICE pair within
    ``ice_timeout``, DTLS failure or no keys within ``DTLS_TIMEOUT``, consent lost)."""

    def __init__(self, host: str = "127.0.0.1", *, certificate: DtlsCertificate | None = None, name: str = "",
                 on_rtp: Callable[[bytes], None] | None = None,
                 on_failure: Callable[[str, str], None] | None = None, ice_timeout: float = ICE_TIMEOUT) -> None:
        self.name, self.host = name, host
        self.certificate = certificate or DtlsCertificate.default()
        self.on_rtp, self.on_failure, self.ice_timeout = on_rtp, on_failure, ice_timeout
        self.agent = _Agent(host)
        self.agent.on_consent_lost = lambda: self._fail("ICE consent lost")
        self.wa_transport: asyncio.DatagramTransport | None = None
        self.wa_remote: tuple[str, int] | None = None
        self.wa_srtp: SrtpContext | None = None
        self.dtls: DtlsSrtpSession | None = None
        self._dtls_timer: asyncio.TimerHandle | None = None
        self._dtls_deadline: asyncio.TimerHandle | None = None
        self._gathered = False
        self._done: asyncio.Event | None = None
        self.ssrc = struct.pack("!I", random.getrandbits(32))
        self.session = random.getrandbits(40)
        self.wa_audio, self.wa_event = 111, 126         # payload types on the WhatsApp side (-1: no events)
        self.task: asyncio.Task | None = None
        self.closed = False
        self.failed = ""
        self.packets = {"from_whatsapp": 0, "to_whatsapp": 0}

    # -- the public surface -----------------------------------------------------------------------------------
    @property
    def audio_pt(self) -> int:
        return self.wa_audio

    @property
    def event_pt(self) -> int:
        return self.wa_event

    @property
    def connected(self) -> bool:
        return self.wa_srtp is not None and self.wa_transport is not None

    async def open(self) -> None:
        """Gather the host candidate (the one socket toward Meta)."""
        if not self._gathered:
            self._gathered = True
            await self.agent.gather_candidates()

    async def offer(self, mid: str = "0") -> str:
        """Our SDP offer for Graph ``connect`` (business-initiated); then :meth:`start` with Meta's answer."""
        await self.open()
        return self.whatsapp_sdp(mid)

    async def answer(self, meta_offer: str) -> str:
        """Meta's offer (the connect webhook's SDP) → our answer for ``pre_accept``/``accept``; ICE and DTLS start
        in the background."""
        sdp = self._take_codecs(meta_offer, "offer")
        await self.open()
        self.whatsapp_leg(sdp)
        return self.whatsapp_sdp(sdp.mid or "audio")

    def start(self, meta_answer: str) -> None:
        """Meta's answer (the connect webhook of a business-initiated call) → ICE and DTLS start."""
        self.whatsapp_leg(self._take_codecs(meta_answer, "answer"))

    def _take_codecs(self, text: str, what: str) -> Sdp:
        """Meta's SDP parsed, its Opus and telephone-event payload types taken (no events: ``event_pt`` -1)."""
        sdp = parse_sdp(text)
        opus = sdp.pt("opus", 48000)
        if opus is None:
            raise WebRtcError(f"WhatsApp's {what} has no opus/48000")
        event = sdp.pt("telephone-event", 8000)
        self.wa_audio, self.wa_event = opus, event if event is not None else -1
        return sdp

    async def wait_connected(self, timeout: float | None = None) -> None:
        """Until DTLS has keyed the leg (media may flow); WebRtcError if it failed, TimeoutError after ``timeout``."""
        if self._done is None:
            self._done = asyncio.Event()
        if not (self.wa_srtp or self.failed):
            await asyncio.wait_for(self._done.wait(), timeout)
        if self.failed:
            raise WebRtcError(self.failed)

    def send(self, rtp: bytes) -> bool:
        """Encrypt and send one RTP packet (our SSRC is the caller's to put in); False while media is held."""
        srtp, transport = self.wa_srtp, self.wa_transport
        if srtp is None or transport is None:
            return False
        transport.sendto(srtp.protect(rtp), self.wa_remote)
        self.packets["to_whatsapp"] += 1
        return True

    def stats(self) -> dict:
        return {**self.packets, "connected": self.connected, "failed": self.failed or None,
                "srtp_profile": getattr(self.dtls.srtp_profile, "name", None) if self.dtls else None}

    # -- set-up -----------------------------------------------------------------------------------------------
    def whatsapp_leg(self, sdp: Sdp) -> None:
        """Start ICE toward Meta's candidates, then the DTLS handshake as client (in the background)."""
        if not (sdp.ice_ufrag and sdp.ice_pwd and sdp.fingerprint):
            raise WebRtcError("WhatsApp's SDP lacks ICE credentials or a fingerprint")
        self.dtls = DtlsSrtpSession(self.certificate, role="client", remote_fingerprint=sdp.fingerprint)
        self.agent.remote_username, self.agent.remote_password = sdp.ice_ufrag, sdp.ice_pwd
        # aioice nominates regularly (a check, then USE-CANDIDATE) toward a lite peer and aggressively otherwise;
        # the flag chooses only that, and Meta asks for regular nomination whatever its SDP says
        self.agent.remote_is_lite = True
        self.task = asyncio.get_running_loop().create_task(self._connect(sdp))

    async def _connect(self, sdp: Sdp) -> None:
        try:
            for line in sdp.candidates:
                try:
                    candidate = aioice.Candidate.from_sdp(line)
                except (ValueError, IndexError):
                    continue
                if candidate.transport.lower() == "udp" and candidate.component == 1 and \
                        (":" in candidate.host) == (":" in self.host):
                    await self.agent.add_remote_candidate(candidate)
            await self.agent.add_remote_candidate(None)
            await asyncio.wait_for(self.agent.connect(), self.ice_timeout)
        except asyncio.CancelledError:
            raise
        except Exception as exc:                # ConnectionError, TimeoutError: no pair
            self._fail(f"ICE failed: {exc!r}" if str(exc) else "ICE failed: no nominated pair in time")
            return
        pair = self.agent._nominated.get(1)
        if self.closed:
            return
        if pair is None:
            self._fail("ICE failed: no nominated pair")
            return
        protocol = pair.protocol
        self.wa_transport, self.wa_remote = protocol.transport, pair.remote_addr
        stun_received = type(protocol).datagram_received

        def datagram_received(data: bytes, addr, _stun=stun_received, _proto=protocol) -> None:
            if data and data[0] < 4:
                _stun(_proto, data, addr)
            else:
                self.from_whatsapp(data, addr)
        protocol.datagram_received = datagram_received          # the per-packet path from here on
        connection_lost = type(protocol).connection_lost

        def lost(exc, _lost=connection_lost, _proto=protocol) -> None:
            self.wa_transport = None                            # consent lost or closed: nothing more to Meta
            _lost(_proto, exc)
        protocol.connection_lost = lost
        log.info("media %s: ICE connected %s → %s", self.name, pair.local_addr, pair.remote_addr)
        assert self.dtls is not None
        self._dtls_deadline = asyncio.get_running_loop().call_later(DTLS_TIMEOUT, self._dtls_expired)
        self._send_dtls(self.dtls.start())

    def _dtls_expired(self) -> None:
        if self.wa_srtp is None:
            self._fail(f"DTLS handshake timed out after {DTLS_TIMEOUT:.0f} s")

    def _fail(self, reason: str) -> None:
        """The WhatsApp leg is gone for good (no pair, DTLS failed or timed out, consent lost): tell the bridge
        once, which ends the call on both sides."""
        if self.closed or self.failed:
            return
        self.failed = reason
        self.wa_transport = None
        log.warning("media %s: WhatsApp leg failed: %s", self.name, reason)
        if self._done is not None:
            self._done.set()
        if self.on_failure is not None:
            self.on_failure(self.name, reason)

    def _send_dtls(self, datagrams: list[bytes]) -> None:
        if self.wa_transport is None or self.closed:
            return
        for datagram in datagrams:
            self.wa_transport.sendto(datagram, self.wa_remote)
        if self._dtls_timer is not None:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        assert self.dtls is not None
        if self.wa_srtp is None and self.dtls.state == "connecting":
            due = self.dtls.timeout()
            if due is not None:
                self._dtls_timer = asyncio.get_running_loop().call_later(
                    max(due, 0.01), lambda: self._send_dtls(self.dtls.handle_timeout()))   # type: ignore[union-attr]
        elif self.dtls.state == "failed":
            self._fail(f"DTLS failed: {self.dtls.failure_reason}")

    # -- per packet -------------------------------------------------------------------------------------------
    def from_whatsapp(self, data: bytes, addr) -> None:
        if len(data) < 12:                                      # shorter than any RTP or DTLS record: noise
            return
        first = data[0]
        if 127 < first < 192:
            srtp = self.wa_srtp
            if srtp is None or 191 < data[1] < 224:             # before the keys, or SRTCP: not passed on
                return
            rtp = srtp.try_unprotect(data)
            if rtp is None:
                return
            self.packets["from_whatsapp"] += 1
            self.received(rtp)
        elif 19 < first < 64 and self.dtls is not None:
            self._send_dtls(self.dtls.feed(data))
            if self.wa_srtp is None and self.dtls.state == "connected":
                self.wa_srtp = self.dtls.srtp()
                log.info("media %s: DTLS-SRTP keyed (%s)", self.name, self.dtls.srtp_profile)
                if self._done is not None:
                    self._done.set()

    def received(self, rtp: bytes) -> None:
        """One decrypted RTP packet from WhatsApp (a subclass may handle it in place instead)."""
        if self.on_rtp is not None:
            self.on_rtp(rtp)

    def whatsapp_sdp(self, mid: str) -> str:
        """Our WebRTC SDP (offer or answer: DTLS client either way, ``a=setup:active``)."""
        candidates = self.agent.local_candidates
        port = candidates[0].port if candidates else 9
        ip = "IP6" if ":" in self.host else "IP4"
        pts = [self.wa_audio] + ([self.wa_event] if self.wa_event >= 0 else [])
        lines = ["v=0", f"o=- {self.session} 2 IN {ip} {self.host}", "s=-", "t=0 0",
                 f"a=group:BUNDLE {mid}", "a=msid-semantic: WMS wacall-bridge",
                 f"m=audio {port} UDP/TLS/RTP/SAVPF {' '.join(map(str, pts))}", f"c=IN {ip} {self.host}",
                 f"a=rtcp:{port} IN {ip} {self.host}"]
        lines += [f"a=candidate:{c.to_sdp()}" for c in candidates]
        lines += [f"a=ice-ufrag:{self.agent.local_username}", f"a=ice-pwd:{self.agent.local_password}",
                  f"a=fingerprint:sha-256 {self.certificate.fingerprint}", "a=setup:active", f"a=mid:{mid}",
                  "a=sendrecv", "a=rtcp-mux", f"a=rtpmap:{self.wa_audio} opus/48000/2",
                  f"a=fmtp:{self.wa_audio} minptime=10;useinbandfec=1", "a=ptime:20"]
        if self.wa_event >= 0:
            lines += [f"a=rtpmap:{self.wa_event} telephone-event/8000", f"a=fmtp:{self.wa_event} 0-15"]
        ssrc = int.from_bytes(self.ssrc, "big")
        lines += [f"a=ssrc:{ssrc} cname:wacall-bridge", f"a=ssrc:{ssrc} msid:wacall-bridge audio"]
        return "\r\n".join(lines) + "\r\n"

    async def close(self) -> None:
        self.closed = True
        wa, self.wa_transport = self.wa_transport, None                 # the per-packet paths stop
        if wa is not None and self.dtls is not None and self.dtls.state == "connected":
            for datagram in self.dtls.close():                  # close_notify (RFC 5246 7.2.1)
                wa.sendto(datagram, self.wa_remote)
        for timer in (self._dtls_timer, self._dtls_deadline):
            if timer is not None:
                timer.cancel()
        if self.task is not None and not self.task.done():
            self.task.cancel()
            await asyncio.gather(self.task, return_exceptions=True)
        if self.dtls is not None:
            self.dtls.release()
        try:
            await self.agent.close()
        except Exception as exc:                # aioice on an agent that never connected
            log.debug("media %s: ICE close: %r", self.name, exc)


__all__ = ["Sdp", "WebRtcError", "WhatsAppLeg", "parse_sdp"]
