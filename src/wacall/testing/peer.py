"""A business's media stack written with aiortc: a real WebRTC peer for wacall's calls.

:class:`AiortcBusiness` is what a business that picked aiortc would run against Meta's (here:
wacall's) media relay: one audio transceiver, Opus 48000/2, RFC 4733 telephone events, DTLS-SRTP,
full ICE, on loopback only. Nobody in this project wrote aiortc, so a call that works against it is
evidence that wacall's media leg speaks real WebRTC and not just its own dialect.

:class:`BusinessPeer` is the same peer for plain (non-async) tests: it runs on a background event loop
and each method returns its result, or an awaitable when called from a coroutine (the pytest plugin's
``wacall_business`` fixture is one).

Usage::

    biz = AiortcBusiness(tone_hz=440.0)
    answer_sdp = await biz.answer(offer_sdp)         # user-initiated call (Meta offers)
    # or: offer_sdp = await biz.offer(); ...; await biz.accept_answer(answer_sdp)
    await biz.wait_connected(5)
    biz.send_dtmf("12#")                             # RFC 4733 on the audio SSRC
    await biz.wait_digits(3, timeout=5)              # digits the remote sent: biz.received_digits
    await biz.wait_received(1.0, timeout=5)          # seconds of decoded remote audio
    assert abs(biz.dominant_frequency() - 1000) < 10
    await biz.close()

What aiortc 1.16 lacks, and how this module adds it from the outside
--------------------------------------------------------------------
Nothing in aiortc's or aioice's installed files is changed. Two module globals are wrapped, and only
while at least one :class:`AiortcBusiness` is alive (reference-counted :func:`install_extensions` /
:func:`uninstall_extensions`, which restore the originals). The wrappers change behaviour only inside
a ``contextvars`` scope that :class:`AiortcBusiness` enters around its own ``createOffer``,
``setRemoteDescription`` and ``setLocalDescription`` calls; any other aiortc peer connection in the
process, even one running concurrently on the same event loop, sees aiortc unchanged.

1. **Loopback ICE** -- ``aioice.ice.get_host_addresses`` skips 127.0.0.1, so nothing would connect
   on loopback. Inside the scope the wrapper returns ``["127.0.0.1"]`` only (``["::1"]`` for an
   IPv6-only agent). With ``RTCConfiguration(iceServers=[])`` (no Google STUN server) the agent
   gathers exactly one host candidate, 127.0.0.1. The SDP handed out is additionally filtered by
   :func:`loopback_only_sdp` (any non-127.0.0.1 ``a=candidate`` line is dropped).

2. **telephone-event negotiation** -- aiortc reads its codec table as
   ``aiortc.rtcpeerconnection.CODECS[kind]`` in ``createOffer`` and ``setRemoteDescription``. That
   name is replaced by :class:`_ScopedCodecs`, a dict sharing aiortc's lists whose ``["audio"]``,
   inside the scope, is aiortc's audio codecs with Opus on PT 111 (as browsers and Meta use) plus
   ``telephone-event/8000`` on PT 126 (``a=fmtp:126 0-15``). Offers therefore carry it, and answers
   carry it (on the remote's PT) when the remote offers it. After negotiation telephone-event is
   moved behind the audio codecs so aiortc's sender, which encodes with ``codecs[0]``, never picks it.

Per instance (plain attribute assignment on *our* objects only, undone by :meth:`close`):

3. **RFC 4733 receive** -- ``RTCRtpReceiver._handle_rtp_packet`` of our audio receiver is shadowed
   by an instance attribute. Because telephone-event is negotiated, the DTLS transport's RTP router
   routes PT 126 to our receiver; the hook takes every packet of a negotiated telephone-event PT,
   decodes it (events identified by SSRC + RTP timestamp, recorded once at the first E-bit packet, so
   the three end retransmissions are deduplicated; an event whose end packets were all lost is
   recorded when the next event starts) and never passes it on: aiortc's decoder thread would die
   on it. The sequence numbers those packets took are hidden from aiortc's audio jitter buffer by
   shifting later audio packets' sequence numbers down by the count of telephone-event packets seen
   on that SSRC (a 16-slot audio jitter buffer otherwise stalls on the gap and throws away audio).
   Audio that arrives reordered across an event gets a wrong shift; harmless on loopback.

4. **RFC 4733 send** -- ``RTCDtlsTransport._send_rtp`` of our DTLS transport is shadowed by an
   instance attribute. aiortc's sender keeps its sequence counter in a local variable of
   ``RTCRtpSender._run_rtp``, so the hook owns the stream's sequence space instead: every outgoing
   RTP packet with our sender's SSRC (``RTCRtpSender._ssrc``) is renumbered from one counter that
   continues aiortc's random start. While digits are queued, each 20 ms audio packet is replaced by
   the telephone-event packet of that interval (what libwebrtc does: audio is suppressed during an
   event), with the same SSRC, the next sequence number and the event's onset timestamp taken from
   the audio packet it replaced (48 kHz audio base, as Meta asks: "same timestamp and sequence base
   as audio"); durations count the 8000 Hz event clock (160 per 20 ms). First packet has the marker
   bit; the end packet is sent in three consecutive intervals; ``gap_ms`` of audio between digits.
   RTCP passes through untouched. Digits therefore go out only while the audio track produces
   frames (a tone or WAV always does).

5. **SRTP profiles** -- ``RTCDtlsTransport._srtp_profiles`` (an instance attribute aiortc sets
   from its module list in ``__init__``) is replaced on our transport before the DTLS handshake when
   ``srtp_profiles`` is given, e.g. ``["AES_CM_128_HMAC_SHA1_80"]``. Default negotiation between two
   aiortc peers gives ``AEAD_AES_256_GCM``.

Roles: given an offer with ``a=ice-lite`` (Meta's), aiortc becomes ICE controlling and answers
``a=setup:active`` (DTLS client). Offers are always ``a=setup:actpass``.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import dataclasses
import fractions
import math
import struct
import threading
import time
from collections import deque
from collections.abc import Iterator, Sequence
from typing import Any

import aioice.ice
import aiortc.rtcpeerconnection as _aiortc_pc
import av
import numpy as np
from aiortc import (
    MediaStreamTrack,
    RTCConfiguration,
    RTCPeerConnection,
    RTCSessionDescription,
)
from aiortc.mediastreams import MediaStreamError
from aiortc.rtcdtlstransport import (
    SRTP_AEAD_AES_128_GCM,
    SRTP_AEAD_AES_256_GCM,
    SRTP_AES128_CM_SHA1_80,
    SRTPProtectionProfile,
)
from aiortc.rtcrtpparameters import RTCRtpCodecParameters
from aiortc.rtp import is_rtcp

__all__ = [
    "AiortcBusiness",
    "BusinessPeer",
    "ToneTrack",
    "TELEPHONE_EVENT_PT",
    "OPUS_PT",
    "install_extensions",
    "uninstall_extensions",
    "extensions_installed",
    "loopback_only_sdp",
    "sdp_candidate_addresses",
]

SAMPLE_RATE = 48000
PTIME = 0.020
OPUS_PT = 111
TELEPHONE_EVENT_PT = 126
TELEPHONE_EVENT_CLOCK = 8000
DTMF_DIGITS = "0123456789*#ABCD"

# --------------------------------------------------------------------------------------------------
# Scoped, reference-counted, reversible patches of two module globals (points 1 and 2 above)
# --------------------------------------------------------------------------------------------------

_IN_SCOPE: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "wacall_aiortc_business_scope", default=False
)
_patch_lock = threading.Lock()
_patch_refs = 0
_ORIGINAL_GET_HOST_ADDRESSES = aioice.ice.get_host_addresses
_ORIGINAL_CODECS = _aiortc_pc.CODECS

_TELEPHONE_EVENT = RTCRtpCodecParameters(
    mimeType="audio/telephone-event",
    clockRate=TELEPHONE_EVENT_CLOCK,
    channels=1,
    payloadType=TELEPHONE_EVENT_PT,
    parameters={"0-15": None},
)


def _scoped_get_host_addresses(use_ipv4: bool, use_ipv6: bool) -> list[str]:
    if _IN_SCOPE.get():
        if use_ipv4:
            return ["127.0.0.1"]
        return ["::1"] if use_ipv6 else []
    return _ORIGINAL_GET_HOST_ADDRESSES(use_ipv4, use_ipv6)


def _business_audio_codecs(base: list[RTCRtpCodecParameters]) -> list[RTCRtpCodecParameters]:
    codecs = []
    for codec in base:
        if codec.mimeType.lower() == "audio/opus":
            codec = dataclasses.replace(codec, payloadType=OPUS_PT)
        codecs.append(codec)
    if not any(c.mimeType.lower() == "audio/telephone-event" for c in codecs):
        codecs.append(_TELEPHONE_EVENT)
    return codecs


class _ScopedCodecs(dict):
    """Stands in for ``aiortc.rtcpeerconnection.CODECS``; same lists, plus telephone-event in scope."""

    def __getitem__(self, kind: str) -> list[RTCRtpCodecParameters]:
        base = _ORIGINAL_CODECS[kind]
        if kind == "audio" and _IN_SCOPE.get():
            return _business_audio_codecs(base)
        return base


def install_extensions() -> None:
    """Install the scoped wrappers (idempotent, reference-counted)."""
    global _patch_refs
    with _patch_lock:
        _patch_refs += 1
        if _patch_refs == 1:
            aioice.ice.get_host_addresses = _scoped_get_host_addresses
            _aiortc_pc.CODECS = _ScopedCodecs(_ORIGINAL_CODECS)


def uninstall_extensions() -> None:
    """Drop one reference; the last one restores aioice's and aiortc's originals."""
    global _patch_refs
    with _patch_lock:
        if _patch_refs == 0:
            return
        _patch_refs -= 1
        if _patch_refs == 0:
            if aioice.ice.get_host_addresses is _scoped_get_host_addresses:
                aioice.ice.get_host_addresses = _ORIGINAL_GET_HOST_ADDRESSES
            if isinstance(_aiortc_pc.CODECS, _ScopedCodecs):
                _aiortc_pc.CODECS = _ORIGINAL_CODECS


def extensions_installed() -> bool:
    return _patch_refs > 0


@contextlib.contextmanager
def _scope() -> Iterator[None]:
    token = _IN_SCOPE.set(True)
    try:
        yield
    finally:
        _IN_SCOPE.reset(token)


# --------------------------------------------------------------------------------------------------
# SDP helpers
# --------------------------------------------------------------------------------------------------


def sdp_candidate_addresses(sdp: str) -> list[str]:
    """Connection addresses of all ``a=candidate`` lines."""
    out = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) > 4:
                out.append(parts[4])
    return out


def loopback_only_sdp(sdp: str) -> str:
    """Drop every non-127.0.0.1 candidate; CRLF line endings."""
    lines = []
    for line in sdp.splitlines():
        if line.startswith("a=candidate:"):
            parts = line.split()
            if len(parts) <= 4 or parts[4] != "127.0.0.1":
                continue
        lines.append(line)
    return "\r\n".join(lines) + "\r\n"


# --------------------------------------------------------------------------------------------------
# Outgoing audio
# --------------------------------------------------------------------------------------------------


class ToneTrack(MediaStreamTrack):
    """A sine tone: 20 ms, 48 kHz, s16 mono frames, pts in 1/48000, paced in real time."""

    kind = "audio"

    def __init__(self, freq: float = 1000.0, amplitude: float = 0.3, sample_rate: int = SAMPLE_RATE):
        super().__init__()
        self.freq = float(freq)
        self.amplitude = float(amplitude)
        self.sample_rate = sample_rate
        self.samples = int(sample_rate * PTIME)
        self._start: float | None = None
        self._timestamp = 0

    async def recv(self) -> av.AudioFrame:
        if self.readyState != "live":
            raise MediaStreamError
        if self._start is None:
            self._start = time.monotonic()
            self._timestamp = 0
        else:
            self._timestamp += self.samples
            wait = self._start + self._timestamp / self.sample_rate - time.monotonic()
            if wait > 0:
                await asyncio.sleep(wait)
        n = np.arange(self._timestamp, self._timestamp + self.samples, dtype=np.float64)
        pcm = self.amplitude * 32767.0 * np.sin(2.0 * math.pi * self.freq * n / self.sample_rate)
        frame = av.AudioFrame.from_ndarray(
            pcm.astype(np.int16).reshape(1, -1), format="s16", layout="mono"
        )
        frame.sample_rate = self.sample_rate
        frame.pts = self._timestamp
        frame.time_base = fractions.Fraction(1, self.sample_rate)
        return frame


# --------------------------------------------------------------------------------------------------
# RFC 4733 state
# --------------------------------------------------------------------------------------------------


@dataclasses.dataclass
class _TxEvent:
    event: int
    digit: str
    onset: int
    intervals: int
    sent: int = 0
    ends: int = 0
    done: asyncio.Future | None = None


@dataclasses.dataclass(frozen=True)
class ReceivedDtmf:
    digit: str
    duration_ms: float
    timestamp: int
    ssrc: int
    payload_type: int


_RTP_HEADER = struct.Struct("!BBHII")
_EVENT = struct.Struct("!BBH")


def _pcm_from_frame(frame: av.AudioFrame, resampler: Any) -> tuple[np.ndarray, Any]:
    """Mono int16 48 kHz samples of a decoded frame (numpy path for s16, PyAV resampler otherwise)."""
    fmt = frame.format.name
    channels = len(frame.layout.channels)
    if frame.sample_rate == SAMPLE_RATE and fmt in ("s16", "s16p"):
        arr = frame.to_ndarray()
        if fmt == "s16":
            arr = arr.reshape(-1, channels)
            mono = arr.mean(axis=1) if channels > 1 else arr[:, 0]
        else:
            mono = arr.mean(axis=0) if channels > 1 else arr[0]
        return np.asarray(mono).astype(np.int16), resampler
    if resampler is None:
        resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    chunks = [f.to_ndarray().reshape(-1) for f in resampler.resample(frame)]
    pcm = np.concatenate(chunks).astype(np.int16) if chunks else np.zeros(0, np.int16)
    return pcm, resampler


_SRTP_PROFILES: dict[str, SRTPProtectionProfile] = {
    "AES_CM_128_HMAC_SHA1_80": SRTP_AES128_CM_SHA1_80,
    "SRTP_AES128_CM_SHA1_80": SRTP_AES128_CM_SHA1_80,
    "AEAD_AES_128_GCM": SRTP_AEAD_AES_128_GCM,
    "SRTP_AEAD_AES_128_GCM": SRTP_AEAD_AES_128_GCM,
    "AEAD_AES_256_GCM": SRTP_AEAD_AES_256_GCM,
    "SRTP_AEAD_AES_256_GCM": SRTP_AEAD_AES_256_GCM,
}
_RFC_PROFILE_NAME = {
    b"SRTP_AES128_CM_SHA1_80": "AES_CM_128_HMAC_SHA1_80",
    b"SRTP_AEAD_AES_128_GCM": "AEAD_AES_128_GCM",
    b"SRTP_AEAD_AES_256_GCM": "AEAD_AES_256_GCM",
}


# --------------------------------------------------------------------------------------------------
# The business
# --------------------------------------------------------------------------------------------------


class AiortcBusiness:
    """One business-side WebRTC endpoint built on aiortc (one call, one audio stream).

    :param tone_hz: frequency of the outgoing sine tone (ignored when ``wav_path`` is given).
    :param wav_path: play this WAV file (looped) through ``aiortc.contrib.media.MediaPlayer``.
    :param srtp_profiles: restrict DTLS-SRTP to these profiles, e.g. ``["AES_CM_128_HMAC_SHA1_80"]``
        (RFC 5764 names or OpenSSL's ``SRTP_*`` names).
    """

    def __init__(
        self,
        tone_hz: float = 1000.0,
        wav_path: str | None = None,
        *,
        srtp_profiles: Sequence[str] | None = None,
        tone_amplitude: float = 0.3,
        wav_loop: bool = True,
    ) -> None:
        self.tone_hz = tone_hz
        self.wav_path = wav_path
        self._player = None
        if wav_path is not None:
            from aiortc.contrib.media import MediaPlayer

            self._player = MediaPlayer(wav_path, loop=wav_loop)
            self._track: MediaStreamTrack = self._player.audio
            if self._track is None:
                raise ValueError(f"{wav_path} has no audio stream")
        else:
            self._track = ToneTrack(tone_hz, amplitude=tone_amplitude)
        self._srtp_profiles: list[SRTPProtectionProfile] | None = None
        if srtp_profiles is not None:
            try:
                self._srtp_profiles = [_SRTP_PROFILES[name.upper()] for name in srtp_profiles]
            except KeyError as exc:
                raise ValueError(f"unknown SRTP profile {exc.args[0]!r}") from None
            if not self._srtp_profiles:
                raise ValueError("srtp_profiles must not be empty")

        install_extensions()
        self._extensions_held = True
        self._pc: RTCPeerConnection | None = None
        self._closed = False
        self.local_sdp: str | None = None
        self.remote_sdp: str | None = None

        # hooks
        self._hooked_transport = None
        self._hooked_receiver = None
        self._sender = None

        # received audio
        self._pcm_chunks: list[np.ndarray] = []
        self._pcm_samples = 0
        self._pcm_event: asyncio.Event | None = None
        self._consumer: asyncio.Task | None = None
        self.remote_track_ended = False

        # RFC 4733 receive
        self.received_digits: list[str] = []
        self.received_dtmf: list[ReceivedDtmf] = []
        self.rx_dtmf_packets = 0
        self._rx_dtmf_pts: dict[int, int] = {}  # PT -> clock rate
        self._rx_seq_shift: dict[int, int] = {}
        self._rx_current: tuple[tuple[int, int], int, int, int] | None = None  # key, event, duration, pt
        self._rx_done: deque[tuple[int, int]] = deque(maxlen=64)
        self._digit_event: asyncio.Event | None = None

        # RFC 4733 send
        self.sent_digits: list[str] = []
        self.tx_dtmf_packets = 0
        self._tx_dtmf_pt: int | None = None
        self._tx_dtmf_clock = TELEPHONE_EVENT_CLOCK
        self._tx_seq: int | None = None
        self._tx_queue: deque[_TxEvent] = deque()
        self._tx_current: _TxEvent | None = None
        self._tx_gap_left = 0
        self._tx_gap_intervals = 3
        self.dtmf_volume = 10

    # ---------------------------------------------------------------- peer connection & signalling

    @property
    def pc(self) -> RTCPeerConnection:
        if self._pc is None:
            if self._closed:
                raise RuntimeError("AiortcBusiness is closed")
            self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
            self._pc.on("track", self._on_track)
        return self._pc

    def _on_track(self, track: MediaStreamTrack) -> None:
        if track.kind == "audio" and self._consumer is None:
            # a fresh Context: the consumer must not inherit our patch scope
            self._consumer = asyncio.get_running_loop().create_task(
                self._consume(track), context=contextvars.Context()
            )

    @property
    def _transceiver(self):
        for t in self.pc.getTransceivers():
            if t.kind == "audio":
                return t
        return None

    async def answer(self, offer_sdp: str) -> str:
        """User-initiated call: take the remote offer, return our answer (CRLF, loopback candidates)."""
        pc = self.pc
        self.remote_sdp = offer_sdp
        with _scope():
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
        self._sender = pc.addTrack(self._track)
        self._after_negotiation()
        self._install_hooks()
        answer = await pc.createAnswer()
        with _scope():
            await pc.setLocalDescription(answer)
        await self._wait_gathered()
        self.local_sdp = loopback_only_sdp(pc.localDescription.sdp)
        return self.local_sdp

    async def offer(self) -> str:
        """Business-initiated call: our offer (``a=setup:actpass``, Opus 111, telephone-event 126)."""
        pc = self.pc
        if self._sender is None:
            self._sender = pc.addTrack(self._track)
        self._install_hooks()
        with _scope():
            offer = await pc.createOffer()
            await pc.setLocalDescription(offer)
        await self._wait_gathered()
        self.local_sdp = loopback_only_sdp(pc.localDescription.sdp)
        return self.local_sdp

    async def accept_answer(self, answer_sdp: str) -> None:
        """Business-initiated call: apply the remote answer; ICE and DTLS then start."""
        self.remote_sdp = answer_sdp
        with _scope():
            await self.pc.setRemoteDescription(RTCSessionDescription(sdp=answer_sdp, type="answer"))
        self._after_negotiation()

    async def _wait_gathered(self, timeout: float = 5.0) -> None:
        pc = self.pc
        if pc.iceGatheringState == "complete":
            return
        done = asyncio.Event()

        @pc.on("icegatheringstatechange")
        def _changed() -> None:
            if pc.iceGatheringState == "complete":
                done.set()

        if pc.iceGatheringState != "complete":
            await asyncio.wait_for(done.wait(), timeout)

    def _after_negotiation(self) -> None:
        """Keep telephone-event behind the audio codecs; note the negotiated event PTs."""
        t = self._transceiver
        if t is None:
            return
        codecs = list(t._codecs)
        events = [c for c in codecs if c.mimeType.lower() == "audio/telephone-event"]
        media = [c for c in codecs if c.mimeType.lower() != "audio/telephone-event"]
        t._codecs = media + events
        self._rx_dtmf_pts = {c.payloadType: c.clockRate for c in events}
        tx = next((c for c in events if c.clockRate == TELEPHONE_EVENT_CLOCK), None) or (
            events[0] if events else None
        )
        self._tx_dtmf_pt = tx.payloadType if tx else None
        self._tx_dtmf_clock = tx.clockRate if tx else TELEPHONE_EVENT_CLOCK

    # ---------------------------------------------------------------- hooks (points 3, 4, 5)

    def _install_hooks(self) -> None:
        t = self._transceiver
        if t is None:
            return
        transport = t.receiver.transport
        if self._srtp_profiles is not None:
            transport._srtp_profiles = list(self._srtp_profiles)
        if self._hooked_transport is None:
            original_send = transport._send_rtp

            async def send_rtp_hook(data: bytes) -> None:
                await self._outgoing(data, original_send)

            transport._send_rtp = send_rtp_hook
            self._hooked_transport = transport
        if self._hooked_receiver is None:
            receiver = t.receiver
            original_handle = receiver._handle_rtp_packet

            async def handle_rtp_hook(packet, arrival_time_ms: int) -> None:
                await self._incoming(packet, arrival_time_ms, original_handle)

            receiver._handle_rtp_packet = handle_rtp_hook
            self._hooked_receiver = receiver

    def _remove_hooks(self) -> None:
        if self._hooked_transport is not None:
            self._hooked_transport.__dict__.pop("_send_rtp", None)
            self._hooked_transport = None
        if self._hooked_receiver is not None:
            self._hooked_receiver.__dict__.pop("_handle_rtp_packet", None)
            self._hooked_receiver = None

    # ---------------------------------------------------------------- RFC 4733 receive

    async def _incoming(self, packet, arrival_time_ms: int, original) -> None:
        clock = self._rx_dtmf_pts.get(packet.payload_type)
        if clock is not None:
            self.rx_dtmf_packets += 1
            self._rx_seq_shift[packet.ssrc] = self._rx_seq_shift.get(packet.ssrc, 0) + 1
            self._on_event_packet(packet, clock)
            return
        shift = self._rx_seq_shift.get(packet.ssrc)
        if shift:
            packet.sequence_number = (packet.sequence_number - shift) & 0xFFFF
        await original(packet, arrival_time_ms=arrival_time_ms)

    def _on_event_packet(self, packet, clock: int) -> None:
        if len(packet.payload) < 4:
            return
        event, flags, duration = _EVENT.unpack_from(packet.payload)
        end = bool(flags & 0x80)
        key = (packet.ssrc, packet.timestamp)
        if key in self._rx_done:
            return  # end retransmission or a straggler of a finished event
        current = self._rx_current
        if current is not None and current[0] != key:
            self._finish_event(*current, clock)  # the previous event lost all its end packets
        self._rx_current = (key, event, duration, packet.payload_type)
        if end:
            self._finish_event(key, event, duration, packet.payload_type, clock)

    def _finish_event(self, key, event: int, duration: int, pt: int, clock: int) -> None:
        self._rx_current = None
        self._rx_done.append(key)
        if event >= len(DTMF_DIGITS):
            return
        digit = DTMF_DIGITS[event]
        self.received_digits.append(digit)
        self.received_dtmf.append(
            ReceivedDtmf(digit, duration * 1000.0 / clock, key[1], key[0], pt)
        )
        if self._digit_event is not None:
            self._digit_event.set()

    async def wait_digits(self, count: int, timeout: float = 5.0) -> list[str]:
        """Wait until at least ``count`` digits were received; returns ``received_digits``."""
        if self._digit_event is None:
            self._digit_event = asyncio.Event()
        deadline = time.monotonic() + timeout
        while len(self.received_digits) < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(
                    f"{len(self.received_digits)} of {count} digits: {self.received_digits}"
                )
            self._digit_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._digit_event.wait(), remaining)
        return list(self.received_digits)

    # ---------------------------------------------------------------- RFC 4733 send

    def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 60) -> asyncio.Future:
        """Queue ``digits`` (0-9 * # A-D) as RFC 4733 events on the audio stream.

        Returns a future (await it or not) that resolves when the last digit's third end packet has
        been sent. ``duration_ms`` and ``gap_ms`` are rounded to 20 ms intervals.
        """
        if not digits:
            raise ValueError("no digits")
        events = []
        for d in digits:
            index = DTMF_DIGITS.find(d.upper()) if len(d) == 1 else -1
            if index < 0:
                raise ValueError(f"not a DTMF digit: {d!r}")
            events.append((index, DTMF_DIGITS[index]))
        if self._pc is not None and self._tx_dtmf_pt is None and self.pc.remoteDescription:
            raise RuntimeError("telephone-event was not negotiated")
        done = asyncio.get_running_loop().create_future()
        self._tx_gap_intervals = max(1, round(gap_ms / (PTIME * 1000)))
        intervals = max(1, round(duration_ms / (PTIME * 1000)))
        for i, (event, digit) in enumerate(events):
            self._tx_queue.append(
                _TxEvent(event, digit, onset=0, intervals=intervals,
                         done=done if i == len(events) - 1 else None)
            )
        return done

    async def _outgoing(self, data: bytes, original) -> None:
        sender = self._sender
        if (
            sender is None
            or len(data) < 12
            or is_rtcp(data)
            or int.from_bytes(data[8:12], "big") != sender._ssrc
        ):
            await original(data)
            return
        if self._tx_seq is None:
            self._tx_seq = int.from_bytes(data[2:4], "big")
        events = self._dtmf_tick(int.from_bytes(data[4:8], "big"), sender._ssrc)
        if events:
            for packet in events:
                await original(packet)
            return  # this interval's audio is replaced by the event packet
        buf = bytearray(data)
        buf[2:4] = self._next_seq().to_bytes(2, "big")
        await original(bytes(buf))

    def _next_seq(self) -> int:
        seq = self._tx_seq
        self._tx_seq = (seq + 1) & 0xFFFF
        return seq

    def _dtmf_tick(self, audio_ts: int, ssrc: int) -> list[bytes]:
        if self._tx_dtmf_pt is None:
            return []
        cur = self._tx_current
        if cur is None:
            if self._tx_gap_left > 0:
                self._tx_gap_left -= 1
                return []
            if not self._tx_queue:
                return []
            cur = self._tx_current = self._tx_queue.popleft()
            cur.onset = audio_ts
        units = int(self._tx_dtmf_clock * PTIME)
        if cur.sent < cur.intervals:
            cur.sent += 1
            return [self._event_packet(cur, ssrc, end=False, duration=cur.sent * units,
                                       marker=cur.sent == 1)]
        cur.ends += 1
        packet = self._event_packet(cur, ssrc, end=True, duration=cur.intervals * units, marker=False)
        if cur.ends >= 3:
            self._tx_current = None
            self._tx_gap_left = self._tx_gap_intervals
            self.sent_digits.append(cur.digit)
            if cur.done is not None and not cur.done.done():
                cur.done.set_result(cur.digit)
        return [packet]

    def _event_packet(self, cur: _TxEvent, ssrc: int, *, end: bool, duration: int,
                      marker: bool) -> bytes:
        self.tx_dtmf_packets += 1
        header = _RTP_HEADER.pack(
            0x80, (0x80 if marker else 0) | self._tx_dtmf_pt, self._next_seq(),
            cur.onset & 0xFFFFFFFF, ssrc,
        )
        flags = (0x80 if end else 0) | (self.dtmf_volume & 0x3F)
        return header + _EVENT.pack(cur.event, flags, min(duration, 0xFFFF))

    # ---------------------------------------------------------------- received audio

    async def _consume(self, track: MediaStreamTrack) -> None:
        resampler = None
        try:
            while True:
                frame = await track.recv()
                pcm, resampler = _pcm_from_frame(frame, resampler)
                if pcm.size:
                    self._pcm_chunks.append(pcm)
                    self._pcm_samples += pcm.size
                    if self._pcm_event is not None:
                        self._pcm_event.set()
        except (MediaStreamError, asyncio.CancelledError):
            pass
        finally:
            self.remote_track_ended = True

    def received_pcm(self, skip_seconds: float = 0.0) -> np.ndarray:
        """All decoded remote audio so far: int16 mono 48 kHz (optionally minus a leading part)."""
        if len(self._pcm_chunks) > 1:
            self._pcm_chunks = [np.concatenate(self._pcm_chunks)]
        pcm = self._pcm_chunks[0] if self._pcm_chunks else np.zeros(0, np.int16)
        return pcm[int(skip_seconds * SAMPLE_RATE):].copy()

    @property
    def received_seconds(self) -> float:
        return self._pcm_samples / SAMPLE_RATE

    async def wait_received(self, seconds: float, timeout: float = 5.0) -> float:
        """Wait until ``seconds`` of remote audio have been decoded (counted from the call start)."""
        if self._pcm_event is None:
            self._pcm_event = asyncio.Event()
        deadline = time.monotonic() + timeout
        while self.received_seconds < seconds:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(
                    f"received {self.received_seconds:.2f} s of audio, wanted {seconds} s"
                )
            self._pcm_event.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._pcm_event.wait(), remaining)
        return self.received_seconds

    def _analysis_window(self, pcm: np.ndarray | None, skip_seconds: float,
                         last_seconds: float | None) -> np.ndarray:
        x = self.received_pcm(skip_seconds) if pcm is None else np.asarray(pcm)
        if last_seconds is not None:
            x = x[-int(last_seconds * SAMPLE_RATE):]
        return x.astype(np.float64)

    def tone_power(self, freq: float, *, bandwidth: float = 25.0, skip_seconds: float = 0.2,
                   last_seconds: float | None = None, pcm: np.ndarray | None = None) -> float:
        """Fraction (0..1) of the received signal's energy within ``freq ± bandwidth`` Hz.

        Hann-windowed FFT over the received audio (after ``skip_seconds``, or the last
        ``last_seconds``); 0.0 when there is no audio or only silence.
        """
        x = self._analysis_window(pcm, skip_seconds, last_seconds)
        if x.size < 256:
            return 0.0
        x = x - x.mean()
        spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size))) ** 2
        total = spectrum.sum()
        if total <= 0:
            return 0.0
        freqs = np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE)
        band = (freqs >= freq - bandwidth) & (freqs <= freq + bandwidth)
        return float(spectrum[band].sum() / total)

    def dominant_frequency(self, *, skip_seconds: float = 0.2, last_seconds: float | None = None,
                           pcm: np.ndarray | None = None, min_hz: float = 50.0) -> float:
        """Frequency (Hz) of the strongest spectral peak above ``min_hz``; 0.0 without audio."""
        x = self._analysis_window(pcm, skip_seconds, last_seconds)
        if x.size < 256:
            return 0.0
        x = x - x.mean()
        spectrum = np.abs(np.fft.rfft(x * np.hanning(x.size)))
        freqs = np.fft.rfftfreq(x.size, 1.0 / SAMPLE_RATE)
        spectrum[freqs < min_hz] = 0.0
        k = int(np.argmax(spectrum))
        if spectrum[k] <= 0:
            return 0.0
        # parabolic interpolation on the log magnitude
        if 0 < k < spectrum.size - 1 and spectrum[k - 1] > 0 and spectrum[k + 1] > 0:
            a, b, c = np.log(spectrum[k - 1 : k + 2])
            denom = a - 2 * b + c
            offset = 0.5 * (a - c) / denom if denom else 0.0
            return float((k + offset) * SAMPLE_RATE / x.size)
        return float(freqs[k])

    def rms_dbfs(self, *, skip_seconds: float = 0.2, last_seconds: float | None = None) -> float:
        x = self._analysis_window(None, skip_seconds, last_seconds)
        if x.size == 0:
            return -math.inf
        rms = math.sqrt(float(np.mean(x * x)))
        return 20 * math.log10(rms / 32768.0) if rms > 0 else -math.inf

    # ---------------------------------------------------------------- state

    @property
    def connection_state(self) -> str:
        return self._pc.connectionState if self._pc is not None else "new"

    async def wait_connected(self, timeout: float = 10.0) -> None:
        pc = self.pc
        if pc.connectionState == "connected":
            return
        changed = asyncio.Event()

        @pc.on("connectionstatechange")
        def _on_change() -> None:
            changed.set()

        deadline = time.monotonic() + timeout
        while pc.connectionState != "connected":
            if pc.connectionState in ("failed", "closed"):
                raise ConnectionError(f"connection {pc.connectionState}")
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise asyncio.TimeoutError(f"connection state is {pc.connectionState}")
            changed.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(changed.wait(), min(remaining, 0.25))

    @property
    def ice_role(self) -> str | None:
        """``"controlling"`` or ``"controlled"`` (None before a transceiver exists)."""
        t = self._transceiver if self._pc is not None else None
        return t.receiver.transport.transport.role if t is not None else None

    @property
    def dtls_role(self) -> str | None:
        """``"client"``, ``"server"`` or ``"auto"`` (not yet decided)."""
        t = self._transceiver if self._pc is not None else None
        return t.receiver.transport._role if t is not None else None

    @property
    def srtp_profile(self) -> str | None:
        """The negotiated SRTP profile (RFC 5764 name), once DTLS is connected."""
        t = self._transceiver if self._pc is not None else None
        ssl = getattr(t.receiver.transport, "_ssl", None) if t is not None else None
        if ssl is None:
            return None
        try:
            selected = ssl.get_selected_srtp_profile()
        except Exception:
            return None
        return _RFC_PROFILE_NAME.get(selected, selected.decode() if selected else None)

    @property
    def negotiated_codecs(self) -> list[str]:
        """``"PT name/clock"`` of the transceiver's negotiated codecs."""
        t = self._transceiver if self._pc is not None else None
        return [f"{c.payloadType} {c}" for c in t._codecs] if t is not None else []

    @property
    def dtmf_payload_type(self) -> int | None:
        return self._tx_dtmf_pt

    async def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        if self._consumer is not None:
            self._consumer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._consumer
        if self._pc is not None:
            await self._pc.close()
        self._remove_hooks()
        with contextlib.suppress(Exception):
            self._track.stop()
        for t in self._tx_queue:
            if t.done is not None and not t.done.done():
                t.done.cancel()
        self._tx_queue.clear()
        if self._extensions_held:
            self._extensions_held = False
            uninstall_extensions()

    async def __aenter__(self) -> AiortcBusiness:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.close()


class BusinessPeer:
    """An :class:`AiortcBusiness` on the plugin's background event loop (:func:`running.client_portal`),
    so that plain tests can use it: each method below returns its result from plain code, and an
    awaitable from a coroutine. The peer's loop keeps running (ICE, DTLS, audio both ways) while a
    test blocks. Attributes (``received_digits``, ``ice_role``...) and the analysis methods
    (``dominant_frequency()``, ``tone_power(f)``, ``rms_dbfs()``) are read straight from the peer.

    ``BusinessPeer(tone_hz=1000.0)`` plays a sine tone; ``BusinessPeer(wav_path="prompt.wav")`` a WAV file.
    """

    def __init__(self, tone_hz: float = 1000.0, wav_path: str | None = None, **options: Any) -> None:
        from .running import client_portal

        self._portal = client_portal()

        async def make() -> AiortcBusiness:
            return AiortcBusiness(tone_hz, wav_path, **options)
        self.peer = self._portal.run(make(), timeout=30)

    def answer(self, offer_sdp: str) -> Any:
        """A user-initiated call: take Meta's offer (the ``connect`` webhook's SDP), return the answer SDP
        for ``pre_accept``/``accept``."""
        return self._portal.call(self.peer.answer(offer_sdp))

    def offer(self) -> Any:
        """A business-initiated call: the offer SDP for Graph's ``connect``."""
        return self._portal.call(self.peer.offer())

    def accept_answer(self, answer_sdp: str) -> Any:
        """A business-initiated call: take Meta's answer (the ``connect`` webhook's SDP)."""
        return self._portal.call(self.peer.accept_answer(answer_sdp))

    def wait_connected(self, timeout: float = 10.0) -> Any:
        """Until ICE and DTLS are up."""
        return self._portal.call(self.peer.wait_connected(timeout))

    def wait_received(self, seconds: float, timeout: float = 10.0) -> Any:
        """Until ``seconds`` of the user's audio have been received and decoded."""
        return self._portal.call(self.peer.wait_received(seconds, timeout))

    def wait_digits(self, count: int, timeout: float = 5.0) -> Any:
        """Until ``count`` RFC 4733 digits have arrived from the user; returns them."""
        return self._portal.call(self.peer.wait_digits(count, timeout))

    def send_dtmf(self, digits: str, duration_ms: int = 100, gap_ms: int = 60) -> Any:
        """Press keys (RFC 4733 on the audio stream); returns once they are sent."""
        async def send() -> None:
            await self.peer.send_dtmf(digits, duration_ms, gap_ms)
        return self._portal.call(send())

    def close(self) -> Any:
        return self._portal.call(self.peer.close())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.peer, name)

    def __enter__(self) -> "BusinessPeer":
        return self

    def __exit__(self, *exc: object) -> None:
        self._portal.run(self.peer.close(), timeout=30)
