"""Meta's media relay for one call leg, and the WhatsApp user's phone behind it.

One :class:`RelayEndpoint` per call gets the datagrams that the engine's shared ports
(``wacall.media.ports``) route to its leg and demultiplexes them (RFC 7983): STUN goes to the
ICE-lite agent (RFC 8445 §2.5, always controlled), DTLS to the DTLS-SRTP session (RFC 5764; role
from the negotiated ``a=setup``), SRTP/SRTCP to the SRTP context (keyed by DTLS or by SDES,
RFC 4568). Media goes only to an address the business proved is its own: the pair it nominated
after a check that passed the leg's ICE credentials, or (SDES) the source of authenticated SRTP.
Received audio is the user's earpiece: it is recorded (what the user heard, streamed to a file by
``wacall.media.recording``), measured, and RFC 4733 digits are detected. The user's microphone is a
pre-encoded source sent on one SSRC, 20 ms Opus (or G.711 when negotiated), with the user's DTMF on
the same SSRC and sequence space.

Behaviour from Meta's docs: the business sends the first SRTP packet; the user side treats the
first media packet or the accept, whichever comes first, as answered; no business media 20 s after
the call connects, or 30 s of silence (no RTP nor RTCP) mid-call, makes the user hang up (the
reporter ends the call with the error code); media that arrives before the media connection is
up, or before the user answered, is lost and shows as clipping.

What a restarted relay needs to carry a call on (the SRTP keys once DTLS agreed them, the business's
address, where both RTP streams had got to) is reported with ``Reporter.persist`` and comes back
through :meth:`RelayEndpoint.restore`.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import struct
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from . import g711
from .audio import ByteLRU, PreEncodedAudio, frames_size, parse_audio_spec
from .certificate import DtlsCertificate
from .dtls import DtlsSrtpSession, is_dtls
from .dtmf import DtmfReceiver, DtmfSender, RtpStreamState
from .fastpath import FastLeg
from .ice_lite import CheckReceived, IceLiteAgent, Nominated, Rejected
from .leg import MediaLeg
from .ports import PortSocket, Ports
from .recording import RecordingWriter, decode
from .rtcp import RtcpError, RtcpSenderReport, build_compound, ntp_timestamp, parse_rtcp
from .rtp import RTP_HEADER, ReceiveStats, RtpError, RtpPacket, is_rtcp
from .sdp import SessionDescription, parse_crypto, parse_sdp
from .srtp import SrtpContext, SrtpError
from .stun import is_stun

log = logging.getLogger("wacall.media")
Addr = tuple[str, int]
RTCP_INTERVAL = 5.0
_SEQ_TS_SSRC = struct.Struct("!HII")
LEVEL_PACKETS = 15                       # the last 300 ms heard, kept for the level (200 ms window + warm-up)
CHECKPOINT_INTERVAL = 30.0               # seconds between persisted positions of both RTP streams
MAX_RESUME_GAP = 30000                   # packets skipped after a restart (libsrtp guesses within 2^15)


class Reporter(Protocol):
    """How the relay talks to the platform (implemented by the server)."""

    def note(self, call_id: str, kind: str, **data: Any) -> None: ...
    def ended(self, call_id: str, code: int, reason: str) -> None: ...
    def now(self) -> float: ...
    def timeouts(self) -> tuple[float, float]: ...   # (no media at start, silence mid-call); 0 = off
    def persist(self, call_id: str, state: dict) -> None: ...   # merged into the call's saved media state


@dataclass
class Negotiated:
    """What the two SDPs agreed on, from the relay's point of view."""
    key_exchange: str                   # DTLS | SDES
    dtls_role: str | None = None        # client | server (DTLS only)
    remote_fingerprint: str | None = None
    remote_ufrag: str | None = None
    remote_pwd: str | None = None
    remote_crypto: str | None = None    # SDES only
    remote_addr: Addr | None = None     # c= / m= of the business (SDES latching starts here)
    send_codec: str = "opus"
    payload_types: dict[str, int] = field(default_factory=dict)   # opus / pcmu / pcma / telephone-event


def _codec_pts(desc: SessionDescription) -> dict[str, int]:
    audio = desc.audio
    found: dict[str, int] = {}
    if audio is None:
        return found
    for pt in audio.payload_types:
        codec = audio.codec(pt)
        if codec is None:
            continue
        name = codec.encoding.lower()
        if name == "opus" and codec.clock_rate == 48000:
            found.setdefault("opus", pt)
        elif name in ("pcmu", "pcma") and codec.clock_rate == 8000:
            found.setdefault(name, pt)
        elif name == "telephone-event" and codec.clock_rate == 8000:
            found.setdefault("telephone-event", pt)
    return found


def negotiate(meta_sdp: str, business_sdp: str, key_exchange: str) -> Negotiated:
    meta, business = parse_sdp(meta_sdp), parse_sdp(business_sdp)
    result = Negotiated(key_exchange=key_exchange)
    ours, theirs = _codec_pts(meta), _codec_pts(business)
    result.payload_types = {name: pt for name, pt in ours.items() if name in theirs}
    for pt in (business.audio.payload_types if business.audio else []):   # the business's preference
        codec = business.audio.codec(pt)
        name = codec.encoding.lower() if codec else ""
        if name in ("opus", "pcmu", "pcma") and name in result.payload_types:
            result.send_codec = name
            break
    baudio = business.audio
    connection = (baudio.connection if baudio and baudio.connection else business.connection)
    if baudio and connection and connection.address not in ("0.0.0.0", "::") and baudio.port not in (0, 9):
        result.remote_addr = (connection.address, baudio.port)
    if key_exchange == "SDES":
        lines = list(baudio.attributes_named("crypto")) or list(business.attributes_named("crypto"))
        for _, value in lines:
            try:
                parse_crypto(value or "")
                result.remote_crypto = value
                break
            except ValueError:
                continue
        return result
    ufrag = business.effective_attribute(baudio, "ice-ufrag")
    pwd = business.effective_attribute(baudio, "ice-pwd")
    fingerprint = business.effective_attribute(baudio, "fingerprint")
    result.remote_ufrag = ufrag[1] if ufrag else None
    result.remote_pwd = pwd[1] if pwd else None
    result.remote_fingerprint = fingerprint[1] if fingerprint else None
    meta_setup = (meta.effective_attribute(meta.audio, "setup") or (0, "actpass"))[1]
    their_setup = (business.effective_attribute(baudio, "setup") or (0, "active"))[1]
    if meta_setup == "active":
        result.dtls_role = "client"
    elif meta_setup == "passive":
        result.dtls_role = "server"
    else:   # Meta offered actpass: the business's answer decides
        result.dtls_role = "client" if their_setup == "passive" else "server"
    return result


class G711Loop:
    """A user's source encoded once as 20 ms G.711 frames (160 bytes), shared between calls; the cache
    keeps the most recently used sources up to ``MAX_CACHE_BYTES`` (~100 KB per 10 s source)."""

    MAX_CACHE_BYTES = 16 * 1024 * 1024
    _cache = ByteLRU(MAX_CACHE_BYTES)

    @classmethod
    def get(cls, spec: str, codec: str, seconds: float = 10.0) -> list[bytes]:
        key = (spec, codec)
        frames = cls._cache.get(key)
        if frames is None:
            source = parse_audio_spec(spec)
            count = int(seconds * 50)
            pcm = np.concatenate([np.asarray(source.read(), dtype=np.int16) for _ in range(count)])
            narrow = g711.resample_48k_to_8k(pcm)
            encode = g711.ulaw_encode if codec == "pcmu" else g711.alaw_encode
            data = encode(narrow)
            frames = [data[i:i + 160] for i in range(0, len(data) - 159, 160)]
            cls._cache.put(key, frames, frames_size(frames))
        return frames


class RelayEndpoint:
    def __init__(self, leg: MediaLeg, certificate: DtlsCertificate, reporter: Reporter, ports: Ports,
                 sock: PortSocket | None, sock6: PortSocket | None = None) -> None:
        self.leg = leg
        self.certificate = certificate
        self.reporter = reporter
        self.call_id = leg.call_id
        self.ice_ufrag = leg.ice_ufrag
        self.ports = ports
        self.sock = sock                                  # the shared IPv4 socket (None: the leg is dead)
        self.sock6 = sock6                                # the shared IPv6 one, where the host has it
        self.ice = IceLiteAgent(leg.ice_ufrag, leg.ice_pwd)
        self.negotiated: Negotiated | None = None
        self.dtls: DtlsSrtpSession | None = None
        self.srtp: SrtpContext | None = None
        self.remote: Addr | None = None                  # where media goes: set through _latch
        self._remote_sock: PortSocket | None = None
        self.failure: tuple[int, str] | None = None        # why media never came up
        self.closed = False
        # the user's phone
        self.user_audio = "tone:440"
        self.user_is_caller = True
        self.stream = RtpStreamState.random(ssrc=leg.ssrc)
        self._first_seq = self.stream.sequence_number     # SRTP index = first sequence number + packets sent
        self.dtmf_out: DtmfSender | None = None
        self.dtmf_in: DtmfReceiver | None = None
        self.recording: RecordingWriter | None = None          # set by the engine: the file of what is heard
        self._heard_codec: str | None = None
        self._recent: deque[bytes] = deque(maxlen=LEVEL_PACKETS)   # the last packets heard (plain RTP)
        self._codec_by_pt: dict[int, str] = {}
        self._te_pt = -1
        self.stats = ReceiveStats()
        self._frames: list[bytes] = []
        self._frame_index = 0
        self._send_pt = 111
        self._waited = 0
        self.connected_at: float | None = None            # the call was accepted (virtual clock)
        self.user_answered_at: float | None = None
        self.sending = False
        self.business_sent_first = False
        self.first_packet_at: float | None = None
        self.last_media_at: float | None = None
        self.clipped_packets = 0
        self.junk_datagrams = 0                             # empty, unclassifiable or undecodable datagrams
        self.wrong_payload_types: set[int] = set()
        self.digits_received: list[dict] = []
        self.digits_sent: list[str] = []
        self.packets_sent = 0
        self.rtcp_sent = 0
        self.skipped_ticks = 0                              # 20 ms intervals the engine could not serve
        self._noted: set[str] = set()
        self._last_rtcp = 0.0
        self._last_checkpoint = 0.0
        self._dtls_timer: asyncio.TimerHandle | None = None
        self.restored = False                               # carried on from a previous relay process
        self.fast: FastLeg | None = None                    # [fastpath] the compiled path carries this leg

    # -- plumbing ----------------------------------------------------------------------------------
    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self.fast is not None:                           # [fastpath] what C holds comes back first
            self.fast.release()
        if self._dtls_timer:
            self._dtls_timer.cancel()
        if self.dtmf_in:
            for digit in self.dtmf_in.flush():
                self._digit(digit)
        self.flush_recording()
        self.ports.remove(self)

    def lost(self, reason: str, connected_at: float | None) -> None:
        """A restored leg that cannot carry media (its port is taken, nothing was saved, or the saved state
        is unusable): nothing is routed here nor sent, and the user's patience (:meth:`check_timeouts`)
        ends the call as it would if Meta's relay vanished."""
        if self.fast is not None:                           # [fastpath]
            self.fast.release()
        self.ports.remove(self)
        self.sock = self.sock6 = None
        self.remote, self._remote_sock = None, None
        self._patience_from_now(connected_at)
        self.reporter.note(self.call_id, "media_not_restored", reason=reason)

    def _sock_for(self, addr: Addr) -> PortSocket | None:
        return self.sock6 if ":" in addr[0] else self.sock

    def _latch(self, addr: Addr | None) -> None:
        """Send to ``addr`` from now on, through the socket of its address family (chosen once, not per packet)."""
        if addr is not None and addr != self.remote:
            self.reporter.persist(self.call_id, {"remote": list(addr)})
        self.remote = addr
        self._remote_sock = self._sock_for(addr) if addr else None
        if self.fast is not None:                           # [fastpath] C sends there, and takes media from there
            self.fast.rebind()

    def _send(self, data: bytes, addr: Addr | None = None) -> None:
        if addr is None:
            addr, sock = self.remote, self._remote_sock
        else:
            sock = self._sock_for(addr)
        if addr and sock is not None:
            sock.sendto(data, addr)

    def _note_once(self, kind: str, **data: Any) -> None:
        if kind not in self._noted:
            self._noted.add(kind)
            self.reporter.note(self.call_id, kind, **data)

    # -- configuration (from the signalling) ------------------------------------------------------
    def configure(self, meta_sdp: str, business_sdp: str, key_exchange: str, user_audio: str,
                  user_is_caller: bool = True) -> None:
        if self.negotiated is not None:
            return
        self.user_audio = user_audio
        self.user_is_caller = user_is_caller
        try:
            self.negotiated = n = negotiate(meta_sdp, business_sdp, key_exchange)
        except Exception as exc:   # validated SDPs; a failure here is a relay bug, not the business's
            self.failure = (138020, f"relay could not use the SDPs: {exc}")
            self._note_once("negotiation_failed", reason=str(exc))
            return
        te = n.payload_types.get("telephone-event", 126)
        self._te_pt = te
        self._codec_by_pt = {pt: name for name, pt in n.payload_types.items() if name in ("opus", "pcmu", "pcma")}
        self.dtmf_out = DtmfSender(self.stream, payload_type=te)
        self.dtmf_in = DtmfReceiver(payload_type=te)
        if n.key_exchange == "SDES":
            if n.remote_crypto is None:
                self.failure = (138020, "no usable a=crypto line from the business")
                return
            self.srtp = SrtpContext.from_sdes(base64.b64decode(self.leg.sdes_key_b64), parse_crypto(n.remote_crypto))
            if n.remote_addr is not None:               # c=/m= of the business: media goes there first
                self._latch(n.remote_addr)
                self.ports.learn(n.remote_addr, self)
            self.ports.expect_claims(self, True)        # until its media comes (symmetric RTP, RFC 4961)
            self.reporter.note(self.call_id, "srtp_ready", key_exchange="SDES", suite=parse_crypto(n.remote_crypto).suite)
            return
        if n.remote_ufrag and n.remote_pwd:
            self.ice.set_remote_credentials(n.remote_ufrag, n.remote_pwd)
        self.dtls = DtlsSrtpSession(self.certificate, role=n.dtls_role or "server",
                                    remote_fingerprint=n.remote_fingerprint or "")
        self.reporter.note(self.call_id, "dtls_role", role=n.dtls_role)

    # -- receiving ------------------------------------------------------------------------------
    def receive(self, data: bytes, addr: Addr, sock: PortSocket) -> None:
        """A datagram the shared port routed here (from a validated address, or STUN with our ufrag)."""
        if self.closed:
            return
        self.leg.packets_received += 1
        self.leg.bytes_received += len(data)
        self.leg.last_remote_addr = addr
        try:
            if not data:
                self._junk("empty datagram")
            elif is_stun(data):
                self._on_stun(data, addr, sock)
            elif is_dtls(data):
                self._on_dtls(data, addr)
            elif 128 <= data[0] <= 191:
                self._on_srtp(data, addr)
            else:
                self._junk("not STUN, DTLS or RTP (RFC 7983)")
        except Exception as exc:   # a hostile datagram must never take the relay down, nor fill the log
            self._junk(f"{type(exc).__name__}: {exc}")

    def claim(self, data: bytes, addr: Addr, sock: PortSocket) -> bool:
        """SDES media from an address nobody validated: ours if it authenticates with our keys."""
        if self.closed or self.srtp is None or not data or not 128 <= data[0] <= 191 or is_rtcp(data):
            return False
        plain = self.srtp.try_unprotect(data)
        if plain is None:
            return False
        self.ports.learn(addr, self)
        self.leg.packets_received += 1
        self.leg.bytes_received += len(data)
        self.leg.last_remote_addr = addr
        self._on_rtp(plain, addr)
        return True

    def clipped(self, packets: int) -> None:
        """Media the business sent before its address was known here: lost, as clipping."""
        self.clipped_packets += packets
        self._note_once("media_before_connection", detail="SRTP arrived before the media connection "
                                                            "was up: lost (clipping)")

    def _junk(self, why: str) -> None:
        self.junk_datagrams += 1
        self._note_once("junk_datagrams", detail=f"datagrams the relay could not use are dropped and counted "
                                                 f"(first: {why})")

    def _on_stun(self, data: bytes, addr: Addr, sock: PortSocket) -> None:
        result = self.ice.handle(data, addr)
        if result.response:
            sock.sendto(result.response, addr)          # answered from where the check arrived
        for event in result.events:
            if isinstance(event, CheckReceived):
                self.ports.learn(event.addr, self)      # the address proved it holds our ICE password
            elif isinstance(event, Nominated):
                first = self.remote is None
                self._latch(event.addr)
                self.reporter.note(self.call_id, "ice_connected" if first else "ice_switched",
                                   remote=f"{event.addr[0]}:{event.addr[1]}")
                if first and self.dtls is not None and self.dtls.state == "new" and self.negotiated \
                        and self.negotiated.dtls_role == "client":
                    self._dtls_out(self.dtls.start())
            elif isinstance(event, Rejected) and event.reason in ("role_conflict", "bad_integrity", "bad_username"):
                if event.reason == "role_conflict":
                    self.failure = self.failure or (138020, "ICE role conflict: the business's agent is "
                                                            "controlled, but Meta's relay is ICE-lite and "
                                                            "always controlled; the business must control")
                self._note_once(f"ice_{event.reason}", remote=f"{addr[0]}:{addr[1]}")

    def _dtls_out(self, datagrams: list[bytes], addr: Addr | None = None) -> None:
        for datagram in datagrams:
            self._send(datagram, addr if self.remote is None else None)
        self._arm_dtls_timer()

    def _arm_dtls_timer(self) -> None:
        if self._dtls_timer:
            self._dtls_timer.cancel()
            self._dtls_timer = None
        if self.dtls is None or self.dtls.state not in ("new", "connecting"):
            return
        delay = self.dtls.timeout()
        if delay is not None:
            self._dtls_timer = asyncio.get_running_loop().call_later(max(delay, 0.01), self._dtls_retransmit)

    def _dtls_retransmit(self) -> None:
        self._dtls_timer = None
        if self.dtls is not None and not self.closed:
            self._dtls_out(self.dtls.handle_timeout())

    def _on_dtls(self, data: bytes, addr: Addr) -> None:
        """DTLS from an address that passed an ICE check (the port routes nothing else here)."""
        if self.dtls is None:
            if not self.restored:             # a restored leg has its keys; late handshake records are moot
                self._note_once("dtls_before_answer")
            return
        before = self.dtls.state
        self._dtls_out(self.dtls.feed(data), addr)
        if self.dtls.state == "connected" and before != "connected":
            self.srtp = self.dtls.srtp()
            profile = self.dtls.srtp_profile
            self.reporter.note(self.call_id, "dtls_connected", profile=profile.name if profile else None)
            self.reporter.persist(self.call_id, {"srtp": {
                "profile": profile.name if profile else None,
                "local": base64.b64encode(self.srtp.local_key_salt).decode("ascii"),
                "remote": base64.b64encode(self.srtp.remote_key_salt).decode("ascii")}})
        elif self.dtls.state == "failed" and before != "failed":
            self.failure = (138020, f"DTLS failed: {self.dtls.failure_reason}")
            self.reporter.note(self.call_id, "dtls_failed", reason=self.dtls.failure_reason)

    def _on_srtp(self, data: bytes, addr: Addr) -> None:
        if self.srtp is None:
            self.clipped(1)
            return
        if is_rtcp(data):
            try:
                reports = parse_rtcp(self.srtp.unprotect_rtcp(data))
            except SrtpError as exc:
                self._note_once(f"srtcp_{exc.kind}_failure")
                return
            except RtcpError:
                self._note_once("rtcp_malformed")
                return
            for report in reports:
                if isinstance(report, RtcpSenderReport):
                    self.stats.on_sender_report(report.ssrc, report.ntp_timestamp, time.monotonic())
            self.last_media_at = self.reporter.now()
            return
        try:
            plain = self.srtp.unprotect(data)
        except SrtpError as exc:
            self._note_once(f"srtp_{exc.kind}_failure", detail="SRTP packets failed authentication")
            return
        self._on_rtp(plain, addr)

    def _on_rtp(self, plain: bytes, addr: Addr) -> None:
        """An authenticated, decrypted RTP packet from the business."""
        now = self.reporter.now()
        if len(plain) < 12 or plain[0] >> 6 != 2:
            self._note_once("rtp_malformed")
            return
        payload_type = plain[1] & 0x7F
        sequence_number, timestamp, ssrc = _SEQ_TS_SSRC.unpack_from(plain, 2)
        if addr != self.remote and self.negotiated and self.negotiated.key_exchange == "SDES":
            self._latch(addr)                       # symmetric RTP: latch the business's authenticated source
            self.ports.learn(addr, self)
        if not self.business_sent_first:
            self.business_sent_first = True
            self.first_packet_at = now
            if self.dtls is not None:       # its SRTP proves the business has our last flight: ~90 KB freed
                self.dtls.release()
            self.ports.expect_claims(self, False)
            after = None if self.connected_at is None else round((now - self.connected_at) * 1000)
            self.reporter.note(self.call_id, "first_media_from_business", ms_after_accept=after)
        self.last_media_at = now
        if self.user_answered_at is None:
            if not self.user_is_caller:        # the user's phone is still ringing: nobody listens
                self.clipped_packets += 1
                self._note_once("media_before_answer", detail="business media before the user answered: "
                                                              "lost (clipping)")
                return
            self.user_answered_at = now        # the caller's phone: first media counts as answered
            self.reporter.note(self.call_id, "user_answered", trigger="first_media")
        arrival = time.monotonic()
        self.stats.update_fields(ssrc, sequence_number, timestamp, payload_type, len(plain) - 12, arrival)
        if len(self.stats.sources) > 1:
            self._note_once("multiple_ssrcs", ssrcs=sorted(self.stats.ssrcs_seen))
        codec = self._codec_by_pt.get(payload_type)
        if codec is not None:
            self._record(codec, plain, arrival)
        elif payload_type == self._te_pt:
            self._on_event(plain, arrival)
        elif payload_type not in self.wrong_payload_types:
            self.wrong_payload_types.add(payload_type)
            self.reporter.note(self.call_id, "wrong_payload_type", payload_type=payload_type)

    def _on_event(self, plain: bytes, arrival: float) -> None:
        """An RFC 4733 telephone-event packet (already counted in the statistics)."""
        try:
            packet = RtpPacket.parse(plain)
        except RtpError:
            self._note_once("rtp_malformed")
            return
        for digit in self.dtmf_in.receive(packet, arrival):
            self._digit(digit)

    def _record(self, codec: str, plain: bytes, arrival: float) -> None:
        """Keep what the user heard (to the recording file, still encoded) and the last few packets for
        the level; decoding waits until someone listens."""
        if self._heard_codec != codec:
            if self._heard_codec is not None:
                self._note_once("codec_switch", codec=codec)
                return
            self._heard_codec = codec
        self._recent.append(plain)
        if self.recording is not None:
            self.recording.add(codec, plain)

    def flush_recording(self) -> None:
        """Write what is buffered of the recording to its file (before someone reads it, and at the end)."""
        if self.fast is not None:                           # [fastpath]
            self.fast.take_recording()
        if self.recording is not None:
            self.recording.flush()

    def level_dbfs(self) -> float | None:
        """The level of the last 200 ms heard (decoded now from the last packets), None before any."""
        if not self._recent or self._heard_codec is None:
            return None
        return decode(self._heard_codec, list(self._recent)).level_dbfs

    def _digit(self, digit) -> None:
        entry = {"digit": digit.digit, "duration_ms": round(digit.duration_ms)}
        self.digits_received.append(entry)
        self.reporter.note(self.call_id, "dtmf_from_business", **entry)

    # -- the user's side ----------------------------------------------------------------------------
    def call_connected(self, at: float) -> None:
        """The call was accepted (UIC accept, or the user picked up a BIC)."""
        if self.connected_at is None:
            self.connected_at = at
            if self.user_answered_at is None:
                self.user_answered_at = at
                self.reporter.note(self.call_id, "user_answered", trigger="accept")

    def send_dtmf(self, digits: str) -> None:
        if self.dtmf_out is None:
            raise RuntimeError("the call has no media yet")
        if self.fast is not None:                           # [fastpath] Python sends while the keys are pressed
            self.fast.stop_tx()
        self.dtmf_out.send(digits)
        self.digits_sent.extend(digits)

    def _frames_for(self, codec: str) -> list[bytes] | None:
        """The user's pre-encoded microphone, or None while it is still being encoded."""
        try:
            if codec == "opus":
                if not PreEncodedAudio.cached(self.user_audio) and self._waited < 100:
                    self._waited += 1              # being encoded off the loop; after 2 s encode here
                    return None
                return PreEncodedAudio.get(self.user_audio).frames
            return G711Loop.get(self.user_audio, codec)
        except Exception as exc:              # a bad file: the user says nothing, and the timeline says why
            self._note_once("user_audio_unavailable", audio=self.user_audio, reason=str(exc))
            self.user_audio = "silence"
            return PreEncodedAudio.get("silence").frames

    def tick(self, now: float) -> None:
        """One 20 ms interval: the user's microphone and DTMF, and RTCP every few seconds."""
        if self.closed or self.srtp is None or self._remote_sock is None or self.negotiated is None:
            return
        if not self.sending:
            if not (self.business_sent_first and self.user_answered_at is not None):
                return
            frames = self._frames_for(self.negotiated.send_codec)
            if frames is None:
                return
            self.sending = True
            self._frames = frames
            self._send_pt = self.negotiated.payload_types[self.negotiated.send_codec]
            self.reporter.note(self.call_id, "user_media_started", codec=self.negotiated.send_codec)
            self._checkpoint(time.time())
        events = self.dtmf_out.tick() if self.dtmf_out and self.dtmf_out.busy else []
        if events:
            for packet in events:
                self._send(self.srtp.protect(packet.serialize()))
            self.packets_sent += len(events)
        else:                                  # the hot path: one pre-encoded frame, header packed here
            stream = self.stream
            frame = self._frames[self._frame_index % len(self._frames)]
            self._frame_index += 1
            stream.packet_count += 1
            stream.octet_count += len(frame)
            header = RTP_HEADER.pack(0x80, self._send_pt, stream.next_sequence(), stream.timestamp, stream.ssrc)
            self._send(self.srtp.protect(header + frame))
            self.packets_sent += 1
        self.stream.advance()
        wall = time.time()
        if wall - self._last_rtcp >= RTCP_INTERVAL:
            self._last_rtcp = wall
            self._send_rtcp(wall)
        if wall - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            self._checkpoint(wall)
        if self.ports.fast is not None and not (self.dtmf_out and self.dtmf_out.busy):
            self.ports.fast.promote(self)                   # [fastpath] established: C carries it from here

    def _send_rtcp(self, wall: float) -> None:
        sender = (ntp_timestamp(wall), self.stream.timestamp, self.stream.packet_count, self.stream.octet_count)
        compound = build_compound(self.stream.ssrc, "WhatsAppAudioStream1", stats=self.stats,
                                  now=time.monotonic(), sender=sender)
        self._send(self.srtp.protect_rtcp(compound))
        self.rtcp_sent += 1

    # -- surviving a restart ------------------------------------------------------------------------
    def _checkpoint(self, wall: float) -> None:
        """Persist where both RTP streams are, so a restarted relay can carry on with the same keys."""
        self._last_checkpoint = wall
        state: dict[str, Any] = {"tx": {"index": self._first_seq + self.packets_sent, "ts": self.stream.timestamp,
                                        "packets": self.stream.packet_count, "octets": self.stream.octet_count,
                                        "rtcp": self.rtcp_sent, "at": wall}}
        source = next(iter(self.stats.sources.values()), None)
        if source is not None:
            state["rx"] = {"ssrc": source.ssrc, "index": source.cycles + source.max_seq}
        self.reporter.persist(self.call_id, state)

    def restore(self, state: dict, connected_at: float | None) -> None:
        """Carry on a call that a previous relay process served (called after :meth:`configure`).

        The leg already has its old address and credentials. DTLS is not repeated: the business
        finished it with the old process, so the SRTP keys it exported come back from ``state``.
        Both streams resume past where they were (see :meth:`SrtpContext.resume`); the user's phone
        gives the business the usual 30 s of silence before it hangs up.
        """
        keys = state.get("srtp")
        if keys and self.negotiated is not None and self.negotiated.key_exchange == "DTLS":
            self.dtls = None
            self.srtp = SrtpContext(keys["profile"], base64.b64decode(keys["local"]),
                                    base64.b64decode(keys["remote"]))
        if state.get("remote"):
            remote = (str(state["remote"][0]), int(state["remote"][1]))
            self.ice.resume(remote)
            self.ports.learn(remote, self)
            self._latch(remote)
        tx, rx = state.get("tx"), state.get("rx") or {}
        if tx and self.srtp is not None:
            gap = min(MAX_RESUME_GAP, int(max(0.0, time.time() - tx["at"]) * 50) + 50)
            index = tx["index"] + gap
            self.stream.sequence_number = index & 0xFFFF
            self.stream.timestamp = (tx["ts"] + gap * self.stream.samples_per_packet) & 0xFFFFFFFF
            self.stream.packet_count, self.stream.octet_count = tx["packets"], tx["octets"]
            self._first_seq = index - self.packets_sent
            self.rtcp_sent = tx.get("rtcp", 0)
            self.srtp.resume(tx_ssrc=self.stream.ssrc, tx_index=index - 1, rtcp_sent=self.rtcp_sent + gap // 250 + 2,
                             rx_ssrc=rx.get("ssrc"), rx_index=rx.get("index"))
            self.business_sent_first = True           # the user's phone picks up where it was
            self.ports.expect_claims(self, False)
        self._patience_from_now(connected_at)
        self.reporter.note(self.call_id, "media_restored", remote=f"{self.remote[0]}:{self.remote[1]}"
                           if self.remote else None, resumed_streams=bool(tx and self.srtp is not None))

    def _patience_from_now(self, connected_at: float | None) -> None:
        """A restored leg: the call was connected at ``connected_at``, and the user's phone counts its
        silence from the restart."""
        self.restored = True
        if connected_at is not None:
            self.connected_at = self.user_answered_at = connected_at
            self.last_media_at = self.reporter.now()

    # -- the user's patience --------------------------------------------------------------------------
    def check_timeouts(self, now: float, start_timeout: float, silence_timeout: float) -> tuple[int, str] | None:
        if self.connected_at is None or self.closed:
            return None
        if self.last_media_at is None:
            if start_timeout and now - self.connected_at >= start_timeout:
                if self.failure:
                    return self.failure
                if self.remote is None and (self.negotiated is None or self.negotiated.key_exchange == "DTLS"):
                    return (138023, f"no media connection signals within {start_timeout:g} s of the accept "
                                    "(no ICE connectivity check from the business)")
                return (138021, f"no media from the business within {start_timeout:g} s of the accept")
        elif silence_timeout and now - max(self.last_media_at, self.connected_at) >= silence_timeout:
            return (138021, f"no media (neither RTP nor RTCP) from the business for {silence_timeout:g} s")
        return None

    # -- what the inspector shows ---------------------------------------------------------------------
    def view(self) -> dict:
        if self.fast is not None:                           # [fastpath] what C counted, first
            self.fast.sync()
        level = self.level_dbfs()
        return {
            "host": self.leg.host, "port": self.leg.port, "host6": self.leg.host6, "port6": self.leg.port6,
            "key_exchange": self.negotiated.key_exchange if self.negotiated else None,
            "ice": {"connected": self.ice.connected,
                    "remote": f"{self.remote[0]}:{self.remote[1]}" if self.remote else None},
            "dtls": {"role": self.negotiated.dtls_role if self.negotiated else None,
                     "state": self.dtls.state if self.dtls else None,
                     "profile": self.dtls.srtp_profile.name if self.dtls and self.dtls.srtp_profile else None},
            "send_codec": self.negotiated.send_codec if self.negotiated else None,
            "payload_types": self.negotiated.payload_types if self.negotiated else {},
            "received": {
                "packets": self.stats.received, "lost": self.stats.lost,
                "loss": round(self.stats.lost / self.stats.expected, 4) if self.stats.expected else 0.0,
                "jitter_ms": round(max((s.jitter_ms for s in self.stats.sources.values()), default=0.0), 2),
                "level_dbfs": None if level is None or level == float("-inf") else round(level, 1),
                "first_packet_ms_after_accept": None if self.first_packet_at is None or self.connected_at is None
                else round((self.first_packet_at - self.connected_at) * 1000),
                "clipped_packets": self.clipped_packets,
                "srtp_auth_failures": self.srtp.auth_failures if self.srtp else 0,
                "wrong_payload_types": sorted(self.wrong_payload_types),
                "ssrcs": len(self.stats.sources),
            },
            "sent": {"packets": self.packets_sent, "ssrc": self.stream.ssrc, "audio": self.user_audio,
                     "skipped_ticks": self.skipped_ticks},
            "junk_datagrams": self.junk_datagrams,
            "restored": self.restored,
            "alive": self.sock is not None,
            "digits_received": list(self.digits_received),
            "digits_sent": "".join(self.digits_sent),
        }


__all__ = ["RelayEndpoint", "Reporter", "negotiate", "Negotiated"]
