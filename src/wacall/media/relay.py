"""Meta's media relay for one call leg: the transport part, in front of the user's phone.

One :class:`RelayEndpoint` per call gets the datagrams that the engine's shared ports
(``wacall.media.ports``) route to its leg and demultiplexes them (RFC 7983): STUN goes to the
ICE-lite agent (RFC 8445 §2.5, always controlled), DTLS to the DTLS-SRTP session (RFC 5764; role
from the domain's negotiation, ``Negotiated``), SRTP/SRTCP to the SRTP context (keyed by DTLS or by SDES,
RFC 4568). Media goes only to an address the business proved is its own: the pair it nominated
after a check that passed the leg's ICE credentials, or (SDES) the source of authenticated SRTP.
The transport keeps the RTP/RTCP statistics, parses RFC 4733 events, and sends on one SSRC and
sequence space what the user says (20 ms Opus, or G.711 when negotiated) and the user's DTMF.

The user's phone (``wacall.users.phone.Phone``: what the user hears, says, keys and records, when it
counts as answered and when the user gives up) never sees a socket or a key: the transport hands it
every authenticated audio packet (one call per packet) and every decoded digit, and takes the
frames and keys it sends from it. Behaviour from Meta's docs: the business sends the first SRTP
packet; media that arrives before the media connection is up, or before the user answered, is lost
and shows as clipping; when the user's patience runs out (:meth:`RelayEndpoint.check_timeouts`) the
reporter says which fact (a ``MediaFact``), and the domain's ``ends`` table picks Meta's code.

What a restarted relay needs to carry a call on (the SRTP keys once DTLS agreed them, the business's
address, where both RTP streams had got to) is reported with ``Reporter.persist`` and comes back
through :meth:`RelayEndpoint.restore`.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import functools
import logging
import struct
import time
from typing import Any, Callable, Protocol

from ..domain.ends import MediaFact
from ..domain.sdp import Negotiated, parse_crypto
from ..users.phone import NO_MEDIA_AT_START, Phone, heard_level, level_field
from .certificate import DtlsCertificate
from .dtls import DtlsSrtpSession, is_dtls
from .dtmf import DtmfReceiver, DtmfSender, RtpStreamState
from .ice_lite import CheckReceived, IceLiteAgent, Nominated, Rejected
from .leg import MediaLeg
from .ports import Ports, PortSocket
from .rtcp import RtcpError, RtcpSenderReport, build_compound, ntp_timestamp, parse_rtcp
from .rtp import RTP_HEADER, ReceiveStats, RtpError, RtpPacket, is_rtcp
from .srtp import SrtpContext, SrtpError
from .stun import is_stun

log = logging.getLogger("wacall.media")
Addr = tuple[str, int]
RTCP_INTERVAL = 5.0
_SEQ_TS_SSRC = struct.Struct("!HII")
CHECKPOINT_INTERVAL = 30.0               # seconds between persisted positions of both RTP streams
MAX_RESUME_GAP = 30000                   # packets skipped after a restart (libsrtp guesses within 2^15)


_SHAPES: dict[tuple, tuple[int, frozenset[int], dict[int, str]]] = {}   # by payload types, shared (read only)


def _payload_shape(payload_types: dict[str, int]) -> tuple[int, frozenset[int], dict[int, str]]:
    """For these negotiated payload types: the telephone-event one (``Negotiated.telephone_event_pt``), it as
    the set of RFC 4733 payload types of the receive statistics, and ``Negotiated.audio_codecs``; computed
    once per shape (every call of a business usually negotiates the same codecs), shared between legs and
    never changed."""
    shape = tuple(payload_types.items())
    known = _SHAPES.get(shape)
    if known is None:
        if len(_SHAPES) >= 256:                           # a bound; shapes are few in practice
            _SHAPES.clear()
        negotiated = Negotiated(key_exchange="", payload_types=payload_types)
        te = negotiated.telephone_event_pt
        known = _SHAPES[shape] = (te, frozenset((te,)), negotiated.audio_codecs)
    return known


_NO_CODECS: dict[int, str] = {}                  # a leg's codecs by payload type before configure (never changed)
_NONE: frozenset = frozenset()                   # an empty set shared by legs until their first member
_NO_SOURCES: dict = {}                           # the sources a leg without statistics has heard (never changed)
_DEFAULT_EVENT_TYPES = ReceiveStats.event_payload_types


class Reporter(Protocol):
    """How the relay talks to the platform (implemented by the server)."""

    def note(self, call_id: str, kind: str, **data: Any) -> None: ...
    def ended(self, call_id: str, fact: str, reason: str) -> None: ...   # a MediaFact; the domain picks the code
    def now(self) -> float: ...
    def timeouts(self) -> tuple[float, float]: ...   # (no media at start, silence mid-call); 0 = off
    def persist(self, call_id: str, state: dict) -> None: ...   # merged into the call's saved media state
    def voicemail_heard(self, call_id: str) -> None: ...     # the voicemail announcement has played
    def voicemail_recorded(self, call_id: str, ogg: bytes, seconds: float) -> None: ...   # the user's message


class RelayEndpoint:
    # slots: a leg's ~45 fields are more than an instance dict's shared keys hold (CPython gives each such
    # instance its own growing dict: ~8 k instructions more per call set up)
    __slots__ = ("leg", "certificate", "reporter", "call_id", "ice_ufrag", "ports", "sock", "sock6", "ice", "negotiated",
                 "dtls", "srtp", "remote", "_remote_sock", "failure", "closed", "phone", "stream", "_first_seq",
                 "dtmf_out", "dtmf_in", "_codec_by_pt", "_te_pt", "_event_types", "stats", "_send_pt", "sending", "business_sent_first",
                 "first_packet_at", "last_media_at", "clipped_packets", "junk_datagrams", "wrong_payload_types",
                 "packets_sent", "rtcp_sent", "skipped_ticks", "_noted", "_last_rtcp", "_last_checkpoint", "_dtls_timer",
                 "restored", "fast", "partner", "voicemail", "may_send")

    def __init__(self, leg: MediaLeg, certificate: DtlsCertificate, reporter: Reporter, ports: Ports,
                 sock: PortSocket | None, sock6: PortSocket | None = None) -> None:
        local = leg.local                                 # (read once: MediaLeg's fields read through)
        self.leg = leg
        self.certificate = certificate
        self.reporter = reporter
        self.call_id = call_id = local.call_id
        self.ice_ufrag = local.ice_ufrag
        self.ports = ports
        self.sock = sock                                  # the shared IPv4 socket (None: the leg is dead)
        self.sock6 = sock6                                # the shared IPv6 one, where the host has it
        # What a leg needs only once media flows is made then (a call ended before its first packet makes
        # none of it): the ICE-lite agent with the business's credentials or first check (:meth:`_ice`), the
        # user's RTP stream when the user starts talking (:meth:`_start_stream`), the receive statistics with
        # the business's first RTP or RTCP (:meth:`_receive_stats`), the DTMF sender and receiver with the
        # first key pressed / first RFC 4733 packet, the sets below with their first member.
        self.ice: IceLiteAgent | None = None
        self.negotiated: Negotiated | None = None
        self.dtls: DtlsSrtpSession | None = None
        self.srtp: SrtpContext | None = None
        self.remote: Addr | None = None                  # where media goes: set through _latch
        self._remote_sock: PortSocket | None = None
        self.failure: tuple[str, str] | None = None        # why media never came up: (MediaFact, reason)
        self.closed = False
        self.phone = Phone(functools.partial(reporter.note, call_id))   # no cycle back to the relay
        self.stream: RtpStreamState | None = None         # the user's stream: audio and DTMF
        self._first_seq = 0                               # SRTP index = first sequence number + packets sent
        self.dtmf_out: DtmfSender | None = None
        self.dtmf_in: DtmfReceiver | None = None
        self._codec_by_pt: dict[int, str] = _NO_CODECS
        self._te_pt = -1
        self._event_types = _DEFAULT_EVENT_TYPES          # RFC 4733 payload types: loss counted, not jitter
        self.stats: ReceiveStats | None = None
        self._send_pt = 111
        self.sending = False
        self.business_sent_first = False
        self.first_packet_at: float | None = None
        self.last_media_at: float | None = None
        self.clipped_packets = 0
        self.junk_datagrams = 0                             # empty, unclassifiable or undecodable datagrams
        self.wrong_payload_types: frozenset[int] | set[int] = _NONE   # (a set from the first one)
        self.packets_sent = 0
        self.rtcp_sent = 0
        self.skipped_ticks = 0                              # 20 ms intervals the engine could not serve
        self._noted: frozenset[str] | set[str] = _NONE      # kinds noted once (a set from the first one)
        self._last_rtcp = 0.0
        self._last_checkpoint = 0.0
        self._dtls_timer: asyncio.TimerHandle | None = None
        self.restored = False                               # carried on from a previous relay process
        self.fast: Any = None          # [fastpath] a media.fastpath.FastLeg while the compiled path carries this leg
        # the other leg of a bridge (wacall.media.bridge: a browser in the user's place); bridged legs stay in Python
        self.partner: RelayEndpoint | None = None
        # the platform's voicemail in the business's place (wacall.media.voicemail): it alone talks to the phone
        self.voicemail: Any = None
        # told when the leg may start sending (the business's first media, a restored call): the engine's
        # ticker then sends 20 ms frames (it has nothing to tick before)
        self.may_send: Callable[[], None] | None = None

    def _ice(self) -> IceLiteAgent:
        """The leg's ICE-lite agent, made at its first use (a DTLS leg's configure, the first STUN check)."""
        ice = self.ice
        if ice is None:
            local = self.leg.local
            ice = self.ice = IceLiteAgent(local.ice_ufrag, local.ice_pwd)
        return ice

    def _receive_stats(self) -> ReceiveStats:
        """The receive statistics (RFC 3550 A.1, A.8), made with the business's first RTP or RTCP packet, or
        when a restored leg resumes: a leg that may send has them (its RTCP reports read them)."""
        stats = self.stats
        if stats is None:
            stats = self.stats = ReceiveStats(event_payload_types=self._event_types)
        return stats

    def _start_stream(self) -> RtpStreamState:
        """The user's RTP stream (audio and DTMF on one SSRC), made when the user starts talking or a restored
        leg resumes it: random sequence number and timestamp bases (RFC 3550 section 5.1) drawn with the leg's
        credentials (``MediaLeg.rtp_start``)."""
        stream = self.stream
        if stream is None:
            start = self.leg.rtp_start
            stream = self.stream = RtpStreamState(ssrc=self.leg.local.ssrc, sequence_number=start & 0xFFFF,
                                                  timestamp=start >> 16)
            self._first_seq = stream.sequence_number
        return stream

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
                self.phone.heard_digit(digit)
        self.phone.hang_up()
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

    def _latch(self, addr: Addr | None, persist: bool = True) -> None:
        """Send to ``addr`` from now on, through the socket of its address family (chosen once, not per packet).
        ``persist=False``: an address a restart gets back without it (the SDP's, which configure latches again)."""
        if persist and addr is not None and addr != self.remote:
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
            self._noted = {*self._noted, kind}         # (a new set: the first one is the shared empty one)
            self.reporter.note(self.call_id, kind, **data)

    # -- configuration (from the signalling) ------------------------------------------------------
    def configure(self, negotiated: Negotiated, user_audio: str, user_is_caller: bool = True) -> None:
        """Set up ICE, DTLS or SDES as the domain negotiated (``wacall.domain.sdp.negotiate``); once."""
        if self.negotiated is not None:
            return
        self.phone.set_up(user_audio, user_is_caller)
        self.negotiated = n = negotiated
        # RFC 4733 packets count for loss, not jitter (in the statistics made with the first packet)
        self._te_pt, self._event_types, self._codec_by_pt = _payload_shape(n.payload_types)
        if n.key_exchange == "SDES":
            if n.remote_crypto is None:
                self.failure = (MediaFact.NO_SDES_KEY, "no usable a=crypto line from the business")
                return
            crypto = n.remote_key or parse_crypto(n.remote_crypto)      # (parsed already by the negotiation)
            self.srtp = SrtpContext.from_sdes(binascii.a2b_base64(self.leg.local.sdes_key_b64), crypto)
            if n.remote_addr is not None:               # c=/m= of the business: media goes there first
                self._latch(n.remote_addr, persist=False)     # (restore() runs after configure: no need to save it)
                self.ports.learn(n.remote_addr, self)
            self.ports.expect_claims(self, True)        # until its media comes (symmetric RTP, RFC 4961)
            self.reporter.note(self.call_id, "srtp_ready", key_exchange="SDES", suite=crypto.suite)
            return
        if n.remote_ufrag and n.remote_pwd:
            self._ice().set_remote_credentials(n.remote_ufrag, n.remote_pwd)
        self.dtls = DtlsSrtpSession(self.certificate, role=n.dtls_role or "server",
                                    remote_fingerprint=n.remote_fingerprint or "")
        self.reporter.note(self.call_id, "dtls_role", role=n.dtls_role)

    def take_over(self, machine: Any) -> None:
        """The platform's voicemail (a ``wacall.media.voicemail.VoicemailMachine``) takes the business's
        place: nothing more goes to the business, and the machine is ticked instead."""
        if self.fast is not None:                           # [fastpath] back to Python for the rest of the call
            self.fast.release()
        self.voicemail = machine
        self.sending = False

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
        result = self._ice().handle(data, addr)
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
                    self.failure = self.failure or (MediaFact.ICE_ROLE_CONFLICT, "ICE role conflict: the business's agent is "
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
            self.failure = (MediaFact.DTLS_FAILED, f"DTLS failed: {self.dtls.failure_reason}")
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
                    self._receive_stats().on_sender_report(report.ssrc, report.ntp_timestamp, time.monotonic())
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
            self._receive_stats()
            if self.dtls is not None:       # its SRTP proves the business has our last flight: ~90 KB freed
                self.dtls.release()
            self.ports.expect_claims(self, False)
            connected_at = self.phone.connected_at
            after = None if connected_at is None else round((now - connected_at) * 1000)
            self.reporter.note(self.call_id, "first_media_from_business", ms_after_accept=after)
            if self.may_send is not None:
                self.may_send()
        self.last_media_at = now
        phone = self.phone
        if phone.answered_at is None and not phone.answer_on_media(now):
            self.clipped_packets += 1          # the user's phone is still ringing: nobody listens
            self._note_once("media_before_answer", detail="business media before the user answered: "
                                                          "lost (clipping)")
            return
        arrival = time.monotonic()
        stats = self.stats                     # (made with the business's first packet, above)
        stats.update_fields(ssrc, sequence_number, timestamp, payload_type, len(plain) - 12, arrival)
        if len(stats.sources) > 1:
            self._note_once("multiple_ssrcs", ssrcs=sorted(stats.ssrcs_seen))
        codec = self._codec_by_pt.get(payload_type)
        if self.voicemail is not None:
            return                             # the business left the call: the voicemail talks to the user now
        if codec is not None:
            phone.hear(codec, plain)
        elif payload_type == self._te_pt:
            self._on_event(plain, arrival)
        elif payload_type not in self.wrong_payload_types:
            self.wrong_payload_types = {*self.wrong_payload_types, payload_type}   # (the first: a shared empty one)
            self.reporter.note(self.call_id, "wrong_payload_type", payload_type=payload_type)

    def _on_event(self, plain: bytes, arrival: float) -> None:
        """An RFC 4733 telephone-event packet (already counted in the statistics): digits for the phone."""
        try:
            packet = RtpPacket.parse(plain)
        except RtpError:
            self._note_once("rtp_malformed")
            return
        if self.dtmf_in is None:
            self.dtmf_in = DtmfReceiver(payload_type=self._te_pt)
        for digit in self.dtmf_in.receive(packet, arrival):
            self.phone.heard_digit(digit)

    def press(self, digits: str) -> None:
        """The user presses keys: its phone has them sent on the next 20 ms tick, by Python."""
        self.phone.press(digits)
        if self.fast is not None:                           # [fastpath] Python sends while the keys are pressed
            self.fast.stop_tx()

    def tick(self, now: float) -> None:
        """One 20 ms interval: the user's microphone and DTMF, and RTCP every few seconds."""
        if self.voicemail is not None:
            if not self.closed:
                self.voicemail.tick()
            return
        if self.closed or self.srtp is None or self._remote_sock is None or self.negotiated is None:
            return
        phone = self.phone
        if not self.sending:
            if not phone.wants_to_talk(self.business_sent_first):
                return
            if phone.start_talking(self.negotiated.send_codec) is None:
                return
            self.sending = True
            self._start_stream()
            self._send_pt = self.negotiated.payload_types[self.negotiated.send_codec]
            self._checkpoint(time.time())
        if phone.keys:
            if self.dtmf_out is None:
                self.dtmf_out = DtmfSender(self.stream, payload_type=self._te_pt)
            self.dtmf_out.send(phone.take_keys())
        events = self.dtmf_out.tick() if self.dtmf_out and self.dtmf_out.busy else []
        if events:
            for packet in events:
                self._send(self.srtp.protect(packet.serialize()))
            self.packets_sent += len(events)
        else:                                  # the hot path: one pre-encoded frame, header packed here
            if phone.intro is not None:        # a recording announcement starts (wacall.domain.recording)
                phone.begin_intro()
            frame = phone.microphone.next()
            if phone.after_intro is not None:
                phone.after_frame()
            if frame is not None:              # (None: a browser in the user's place sent nothing in time)
                stream = self.stream
                stream.packet_count += 1
                stream.octet_count += len(frame)
                header = RTP_HEADER.pack(0x80, self._send_pt, stream.next_sequence(), stream.timestamp, stream.ssrc)
                self._send(self.srtp.protect(header + frame))
                self.packets_sent += 1
        self.stream.advance()
        if self.fast is not None:                           # [fastpath] C may still carry the receive side
            self.fast.reports(time.time())
        else:
            self.reports(time.time())
        if self.ports.fast is not None and self.partner is None and not phone.keys \
                and not (self.dtmf_out and self.dtmf_out.busy) and phone.intro is None and phone.after_intro is None:
            self.ports.fast.promote(self)                   # [fastpath] established: C carries it from here

    def reports(self, wall: float, before: Callable[[], None] | None = None) -> bool:
        """An RTCP report every ``RTCP_INTERVAL`` and a checkpoint every ``CHECKPOINT_INTERVAL`` (from
        :meth:`tick`, or from the compiled path's housekeeping, which brings what C counted first:
        ``before``). True when a report went out."""
        sent = False
        if wall - self._last_rtcp >= RTCP_INTERVAL:
            if before is not None:
                before()
            self._last_rtcp = wall
            self._send_rtcp(wall)
            sent = True
        if wall - self._last_checkpoint >= CHECKPOINT_INTERVAL:
            if before is not None:
                before()
            self._checkpoint(wall)
        return sent

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
        source = next(iter(self.stats.sources.values()), None) if self.stats is not None else None
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
            self._ice().resume(remote)
            self.ports.learn(remote, self)
            self._latch(remote)
        tx, rx = state.get("tx"), state.get("rx") or {}
        if tx and self.srtp is not None:
            gap = min(MAX_RESUME_GAP, int(max(0.0, time.time() - tx["at"]) * 50) + 50)
            index = tx["index"] + gap
            stream = self._start_stream()
            stream.sequence_number = index & 0xFFFF
            stream.timestamp = (tx["ts"] + gap * stream.samples_per_packet) & 0xFFFFFFFF
            stream.packet_count, stream.octet_count = tx["packets"], tx["octets"]
            self._first_seq = index - self.packets_sent
            self.rtcp_sent = tx.get("rtcp", 0)
            self.srtp.resume(tx_ssrc=stream.ssrc, tx_index=index - 1, rtcp_sent=self.rtcp_sent + gap // 250 + 2,
                             rx_ssrc=rx.get("ssrc"), rx_index=rx.get("index"))
            self.business_sent_first = True           # the user's phone picks up where it was
            self._receive_stats()
            self.ports.expect_claims(self, False)
            if self.may_send is not None:
                self.may_send()
        self._patience_from_now(connected_at)
        self.reporter.note(self.call_id, "media_restored", remote=f"{self.remote[0]}:{self.remote[1]}"
                           if self.remote else None, resumed_streams=bool(tx and self.srtp is not None))

    def _patience_from_now(self, connected_at: float | None) -> None:
        """A restored leg: the call was connected at ``connected_at``, and the user's phone counts its
        silence from the restart."""
        self.restored = True
        self.phone.resume(connected_at)
        if connected_at is not None:
            self.last_media_at = self.reporter.now()

    # -- when the user's patience runs out -------------------------------------------------------------
    def check_timeouts(self, now: float, start_timeout: float, silence_timeout: float) -> tuple[str, str] | None:
        """Why the user's phone gives up on the media now, as (:class:`MediaFact`, reason), or None."""
        if self.closed:
            return None
        verdict = self.phone.gives_up(now, start_timeout, silence_timeout, self.last_media_at)
        if verdict is None:
            return None
        if verdict == NO_MEDIA_AT_START:
            if self.failure:
                return self.failure
            if self.remote is None and (self.negotiated is None or self.negotiated.key_exchange == "DTLS"):
                return (MediaFact.NO_ICE_CHECK, f"no media connection signals within {start_timeout:g} s of the "
                                                "accept (no ICE connectivity check from the business)")
            return (MediaFact.NO_MEDIA, f"no media from the business within {start_timeout:g} s of the accept")
        return (MediaFact.SILENCE, f"no media (neither RTP nor RTCP) from the business for {silence_timeout:g} s")

    # -- what the inspector shows ---------------------------------------------------------------------
    def view(self, *, level: bool = True) -> dict:
        """What the inspector shows of this leg. ``level=False`` (a media worker): the level is left to the
        process that reads the view, ``heard`` carrying the last packets heard (see :func:`level_field`)."""
        if self.fast is not None:                           # [fastpath] what C counted, first
            self.fast.sync()
        phone, local, negotiated, dtls, stats = self.phone, self.leg.local, self.negotiated, self.dtls, self.stats
        heard = phone.heard_recently() if phone.recent else None      # (None: nothing heard, the usual at release)
        sources = stats.sources if stats is not None else _NO_SOURCES
        expected = stats.expected if sources else 0         # (the sums over sources, each taken once)
        # (round(x, 2) goes through decimal digits: a leg that heard nothing has no jitter to round)
        jitter = round(max(s.jitter_ms for s in sources.values()), 2) if sources else 0.0
        view = {
            "host": local.host, "port": local.port, "host6": local.host6, "port6": local.port6,
            "key_exchange": negotiated.key_exchange if negotiated else None,
            "ice": {"connected": self.ice is not None and self.ice.connected,
                    "remote": f"{self.remote[0]}:{self.remote[1]}" if self.remote else None},
            "dtls": {"role": negotiated.dtls_role if negotiated else None,
                     "state": dtls.state if dtls else None,
                     "profile": dtls.srtp_profile.name if dtls and dtls.srtp_profile else None},
            "send_codec": negotiated.send_codec if negotiated else None,
            "payload_types": negotiated.payload_types if negotiated else {},
            "received": {
                "packets": stats.received if sources else 0, "lost": stats.lost if sources else 0,
                "loss": round(stats.lost / expected, 4) if expected else 0.0,
                "jitter_ms": jitter,
                "level_dbfs": level_field(heard_level(*heard)) if heard is not None and level else None,
                "first_packet_ms_after_accept": None if self.first_packet_at is None or phone.connected_at is None
                else round((self.first_packet_at - phone.connected_at) * 1000),
                "clipped_packets": self.clipped_packets,
                "srtp_auth_failures": self.srtp.auth_failures if self.srtp else 0,
                "wrong_payload_types": sorted(self.wrong_payload_types) if self.wrong_payload_types else [],
                "ssrcs": len(sources),
            },
            "sent": {"packets": self.packets_sent, "ssrc": local.ssrc, "audio": phone.audio,
                     "skipped_ticks": self.skipped_ticks},
            "junk_datagrams": self.junk_datagrams,
            "restored": self.restored,
            "alive": self.sock is not None,
            "digits_received": list(phone.digits_received),
            "digits_sent": "".join(phone.digits_sent),
        }
        if heard is not None and not level:
            view["heard"] = {"codec": heard[0], "packets": [base64.b64encode(p).decode("ascii") for p in heard[1]]}
        return view


__all__ = ["RelayEndpoint", "Reporter"]
