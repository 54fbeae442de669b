"""DTMF as RFC 4733 telephone events, sharing the audio stream's SSRC and sequence space.

Payload (RFC 4733 section 2.3, 4 bytes)::

     0                   1                   2                   3
     0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1 2 3 4 5 6 7 8 9 0 1
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+
    |     event     |E|R| volume    |          duration             |
    +-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+-+

Events 0-9 are the digits, 10 ``*``, 11 ``#``, 12-15 ``A``-``D`` (section 3.2). Volume is the
power level in -dBm0 (0..63). Sending (section 2.5.1): the first packet of an event has the RTP
marker bit, then one update every 20 ms carrying the duration so far, all with the event's onset
timestamp; the end packet (E bit) is sent three times with the same timestamp and duration, each
with a new sequence number (section 2.5.1.4).

Clocks: Meta negotiates ``telephone-event/8000`` on payload type 126 next to ``opus/48000/2`` and
says events use the *same timestamp and sequence base as audio* (calling-wire-spec section 9; a
48000 telephone-event clock is not supported). RFC 4733 (section 2.1) measures both the timestamp
and the duration field in the event's clock, which cannot hold when the timestamp must share the
48 kHz audio base. We do what libwebrtc (Chrome) does in that situation, which is what Meta's
clients meet every day:

- the RTP **timestamp** of an event is the audio stream's 48 kHz timestamp at the event onset
  (taken from the shared :class:`RtpStreamState`), so audio and events stay on one timeline;
- the **duration** field counts the negotiated event clock, 8000 Hz: 160 units per 20 ms packet,
  ``duration_ms = duration / 8``.

:class:`DtmfReceiver` converts durations with the same event clock and identifies an event by its
timestamp, whichever clock that timestamp uses.

One object, :class:`RtpStreamState`, owns the SSRC, the next sequence number and the audio
timestamp; the audio sender and :class:`DtmfSender` both take sequence numbers from it. A media
loop does, every 20 ms::

    packets = dtmf.tick()                 # event packets for this 20 ms, or []
    if not packets:                       # audio is suppressed while an event plays
        packets = [state.packet(opus_pt, next_opus_frame())]
    send(packets)
    state.advance()                       # the audio timestamp moves on by 960 either way
"""

from __future__ import annotations

import math
import secrets
import struct
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from typing import NamedTuple

from .rtp import RtpPacket

__all__ = [
    "DTMF_DIGITS",
    "DtmfDigit",
    "DtmfError",
    "DtmfEvent",
    "DtmfReceiver",
    "DtmfSender",
    "RtpStreamState",
    "digit_to_event",
    "event_to_digit",
]

#: Event codes 0..15 (RFC 4733 section 3.2), indexed by event number.
DTMF_DIGITS = "0123456789*#ABCD"
DEFAULT_PAYLOAD_TYPE = 126
DEFAULT_EVENT_CLOCK = 8000
DEFAULT_VOLUME = 10
MAX_DURATION_UNITS = 0xFFFF

_PAYLOAD = struct.Struct("!BBH")


class DtmfError(ValueError):
    """An invalid digit, event or telephone-event payload."""


def digit_to_event(digit: str) -> int:
    """Event code of ``0-9 * # A-D`` (case-insensitive)."""
    index = DTMF_DIGITS.find(digit.upper()) if len(digit) == 1 else -1
    if index < 0:
        raise DtmfError(f"not a DTMF digit: {digit!r}")
    return index


def event_to_digit(event: int) -> str:
    """The digit of event code 0..15."""
    if not 0 <= event <= 15:
        raise DtmfError(f"telephone event {event} is not a DTMF digit")
    return DTMF_DIGITS[event]


@dataclass(frozen=True, slots=True)
class DtmfEvent:
    """One RFC 4733 event payload; ``duration`` is in event-clock units."""

    event: int
    end: bool = False
    volume: int = DEFAULT_VOLUME
    duration: int = 0

    def encode(self) -> bytes:
        if not 0 <= self.event <= 255:
            raise DtmfError(f"event {self.event} is out of range 0..255")
        if not 0 <= self.volume <= 63:
            raise DtmfError(f"volume {self.volume} is out of range 0..63")
        if not 0 <= self.duration <= MAX_DURATION_UNITS:
            raise DtmfError(f"duration {self.duration} is out of range 0..65535")
        return _PAYLOAD.pack(self.event, (0x80 if self.end else 0) | self.volume, self.duration)

    @classmethod
    def decode(cls, payload: bytes) -> DtmfEvent:
        """Decode the first event of a payload (the R bit is ignored, as section 2.3.3 asks)."""
        if len(payload) < 4:
            raise DtmfError(f"telephone-event payload is {len(payload)} bytes, expected 4")
        event, flags, duration = _PAYLOAD.unpack_from(payload)
        return cls(event, bool(flags & 0x80), flags & 0x3F, duration)

    @property
    def digit(self) -> str:
        return event_to_digit(self.event)


@dataclass(slots=True)
class RtpStreamState:
    """The sending side of one RTP stream, shared by the audio sender and :class:`DtmfSender`.

    ``sequence_number`` is the next sequence number to use, ``timestamp`` the RTP timestamp (audio
    clock) of the next 20 ms frame. :meth:`packet` takes a sequence number; :meth:`advance` moves the
    timestamp on once per frame interval, whether audio or events were sent in it. Also counts what
    an RTCP SR reports (``packet_count``, ``octet_count`` of payload).
    """

    ssrc: int
    sequence_number: int = 0
    timestamp: int = 0
    clock_rate: int = 48000
    samples_per_packet: int = 960
    packet_count: int = 0
    octet_count: int = 0

    @classmethod
    def random(cls, ssrc: int | None = None, **kwargs: int) -> RtpStreamState:
        """Random SSRC (unless given), sequence number and timestamp base (RFC 3550 5.1)."""
        return cls(
            ssrc=secrets.randbits(32) if ssrc is None else ssrc,
            sequence_number=secrets.randbits(16),
            timestamp=secrets.randbits(32),
            **kwargs,
        )

    def next_sequence(self) -> int:
        seq = self.sequence_number
        self.sequence_number = (seq + 1) & 0xFFFF
        return seq

    def packet(
        self, payload_type: int, payload: bytes, *, marker: bool = False, timestamp: int | None = None
    ) -> RtpPacket:
        """A packet with the next sequence number, at ``timestamp`` (default: the current one)."""
        self.packet_count += 1
        self.octet_count += len(payload)
        return RtpPacket(
            payload_type=payload_type,
            sequence_number=self.next_sequence(),
            timestamp=self.timestamp if timestamp is None else timestamp,
            ssrc=self.ssrc,
            payload=payload,
            marker=marker,
        )

    def advance(self, samples: int | None = None) -> None:
        """Move the timestamp on by one frame (or ``samples``), modulo 2**32."""
        step = self.samples_per_packet if samples is None else samples
        self.timestamp = (self.timestamp + step) & 0xFFFFFFFF

    @property
    def packet_ms(self) -> float:
        return self.samples_per_packet * 1000.0 / self.clock_rate


class DtmfSender:
    """Generates RFC 4733 packets on the stream's SSRC, sequence numbers and audio timestamps.

    :meth:`digit_packets` is a generator: each ``next()`` is one packet interval (20 ms) and gives
    that interval's packets, taking sequence numbers from the shared state at that moment; the
    caller advances the state's timestamp between intervals. :meth:`send` queues digits and
    :meth:`tick` plays the queue one interval at a time, with ``gap_ms`` of audio between digits.
    """

    def __init__(
        self,
        state: RtpStreamState,
        *,
        payload_type: int = DEFAULT_PAYLOAD_TYPE,
        event_clock_rate: int = DEFAULT_EVENT_CLOCK,
        volume: int = DEFAULT_VOLUME,
        duration_ms: int = 100,
        gap_ms: int = 60,
        end_repeats: int = 3,
    ) -> None:
        self.state = state
        self.payload_type = payload_type
        self.event_clock_rate = event_clock_rate
        self.volume = volume
        self.duration_ms = duration_ms
        self.gap_ms = gap_ms
        self.end_repeats = end_repeats
        self._queue: deque[tuple[str, int]] = deque()
        self._current: Iterator[list[RtpPacket]] | None = None
        self._gap_ticks = 0
        self.digits_sent = 0

    def _units(self, ms: float) -> int:
        return int(round(ms * self.event_clock_rate / 1000))

    def digit_packets(self, digit: str, duration_ms: int | None = None) -> Iterator[list[RtpPacket]]:
        """The packets of one digit, one list per packet interval.

        The event lasts ``ceil(duration / interval)`` intervals: intervals 0..n-2 carry the duration
        so far (interval 0 with the marker bit), interval n-1 the end packet ``end_repeats`` times.
        """
        event = digit_to_event(digit)
        duration_ms = self.duration_ms if duration_ms is None else duration_ms
        interval_ms = self.state.packet_ms
        ticks = max(1, math.ceil(duration_ms / interval_ms))
        total = self._units(duration_ms)
        if total > MAX_DURATION_UNITS:
            raise DtmfError(f"a {duration_ms} ms event does not fit one 16-bit duration field")
        return self._generate(event, ticks, interval_ms, total)

    def _generate(self, event: int, ticks: int, interval_ms: float, total: int) -> Iterator[list[RtpPacket]]:
        onset: int | None = None
        for k in range(ticks):
            if onset is None:
                onset = self.state.timestamp
            if k < ticks - 1:
                payload = DtmfEvent(event, False, self.volume, self._units((k + 1) * interval_ms)).encode()
                yield [self.state.packet(self.payload_type, payload, marker=k == 0, timestamp=onset)]
            else:
                payload = DtmfEvent(event, True, self.volume, total).encode()
                yield [
                    self.state.packet(self.payload_type, payload, marker=(k == 0 and i == 0), timestamp=onset)
                    for i in range(self.end_repeats)
                ]
        self.digits_sent += 1

    def send(self, digits: str, duration_ms: int | None = None) -> None:
        """Queue digits (validated now) for :meth:`tick`."""
        duration = self.duration_ms if duration_ms is None else duration_ms
        for d in digits:
            digit_to_event(d)
        self._queue.extend((d, duration) for d in digits)

    @property
    def busy(self) -> bool:
        return self._current is not None or bool(self._queue) or self._gap_ticks > 0

    def tick(self) -> list[RtpPacket]:
        """This interval's event packets; empty when idle or between digits (send audio then)."""
        while True:
            if self._current is not None:
                packets = next(self._current, None)
                if packets is not None:
                    return packets
                self._current = None
                self._gap_ticks = math.ceil(self.gap_ms / self.state.packet_ms)
            if self._gap_ticks > 0:
                self._gap_ticks -= 1
                return []
            if not self._queue:
                return []
            digit, duration = self._queue.popleft()
            self._current = self.digit_packets(digit, duration)


class DtmfDigit(NamedTuple):
    """A received digit: the digit, its duration in ms and its RTP timestamp (event onset)."""

    digit: str
    duration_ms: float
    timestamp: int


class DtmfReceiver:
    """Turns received telephone-event packets into digits, each exactly once.

    An event is identified by its RTP timestamp. The first end packet (E bit) of an event reports
    it; retransmitted end packets and late updates with the timestamp of a reported event are
    dropped. A lost start packet does not matter (any packet opens the event). If all end packets
    are lost, the event is reported when the next event starts, on :meth:`poll` after
    ``end_timeout`` seconds without an update, or on :meth:`flush`.
    """

    def __init__(
        self,
        *,
        payload_type: int = DEFAULT_PAYLOAD_TYPE,
        event_clock_rate: int = DEFAULT_EVENT_CLOCK,
        end_timeout: float = 1.0,
        remember: int = 64,
    ) -> None:
        self.payload_type = payload_type
        self.event_clock_rate = event_clock_rate
        self.end_timeout = end_timeout
        self._done: deque[int] = deque(maxlen=remember)
        self._pending: tuple[int, DtmfEvent, float | None] | None = None  # timestamp, event, seen at
        self.digits: list[DtmfDigit] = []
        self.ignored_packets = 0

    def _emit(self, timestamp: int, event: DtmfEvent) -> list[DtmfDigit]:
        self._done.append(timestamp)
        if not 0 <= event.event <= 15:  # a non-DTMF event (e.g. RFC 4734 tones): consume silently
            return []
        digit = DtmfDigit(event.digit, event.duration * 1000.0 / self.event_clock_rate, timestamp)
        self.digits.append(digit)
        return [digit]

    def receive(self, packet: RtpPacket, arrival_time: float | None = None) -> list[DtmfDigit]:
        """Feed one packet (others than ``payload_type`` are ignored); returns newly finished digits."""
        if packet.payload_type != self.payload_type:
            return []
        try:
            event = DtmfEvent.decode(packet.payload)
        except DtmfError:
            self.ignored_packets += 1
            return []
        ts = packet.timestamp
        if ts in self._done:
            self.ignored_packets += 1
            return []
        out: list[DtmfDigit] = []
        if self._pending is not None and self._pending[0] != ts:
            # a new event started and the previous one's end packets were all lost
            out += self._emit(self._pending[0], self._pending[1])
            self._pending = None
        if event.end:
            self._pending = None
            out += self._emit(ts, event)
        elif self._pending is None or event.duration >= self._pending[1].duration:
            self._pending = (ts, event, arrival_time)
        return out

    def poll(self, now: float) -> list[DtmfDigit]:
        """Report a pending event whose end never came, ``end_timeout`` after its last update."""
        if self._pending is not None and self._pending[2] is not None and now - self._pending[2] >= self.end_timeout:
            return self.flush()
        return []

    def flush(self) -> list[DtmfDigit]:
        """Report a pending event now (e.g. when the call ends)."""
        if self._pending is None:
            return []
        ts, event, _ = self._pending
        self._pending = None
        return self._emit(ts, event)
