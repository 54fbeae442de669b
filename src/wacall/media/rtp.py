"""RTP packets (RFC 3550 section 5) and receive statistics (RFC 3550 appendix A).

- :class:`RtpPacket` parses and serialises the fixed header, the CSRC list, one header extension
  (RFC 3550 section 5.3.1; its ``profile`` and ``data`` are kept byte for byte, so one-byte and
  two-byte header extensions of RFC 8285 survive a round trip; :meth:`RtpExtension.elements`
  decodes them) and padding.
- :func:`is_rtp` / :func:`is_rtcp` demultiplex one UDP port: RFC 7983 section 7 puts RTP and RTCP
  at first bytes 128..191 and RFC 5761 section 4 tells RTCP apart by its packet type 192..223 in the
  second byte (an RTP marker bit plus payload types 64..95, which RFC 5761 reserves).
- :class:`ReceiveStats` keeps per-SSRC :class:`SourceStats`: extended highest sequence number with
  wrap-around and restart detection (A.1), expected/received/lost and the fraction lost of the
  current reporting interval (A.3), interarrival jitter in RTP timestamp units (A.8), plus what an
  emulator wants to assert on: when the first packet arrived, the SSRCs and payload types seen.

No sockets here: callers pass bytes in and get bytes out.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

__all__ = [
    "RTP_HEADER_SIZE",
    "RtpError",
    "RtpExtension",
    "RtpPacket",
    "rtp_payload",
    "ReceiveStats",
    "SourceStats",
    "is_rtcp",
    "is_rtp",
    "seq_distance",
]

RTP_VERSION = 2
RTP_HEADER_SIZE = 12
#: RFC 8285 section 4.2 / 4.3 ``defined by profile`` values.
ONE_BYTE_PROFILE = 0xBEDE
TWO_BYTE_PROFILE_MASK = 0xFFF0
TWO_BYTE_PROFILE = 0x1000

#: The fixed 12-byte header: V/P/X/CC, M/PT, sequence number, timestamp, SSRC.
RTP_HEADER = _HEADER = struct.Struct("!BBHII")
_EXT_HEADER = struct.Struct("!HH")
_SEQ_MOD = 1 << 16
_TS_MOD = 1 << 32


class RtpError(ValueError):
    """A datagram that is not a well-formed RTP packet."""


def is_rtcp(data: bytes) -> bool:
    """True for an RTCP packet on a multiplexed port (RFC 7983 first byte, RFC 5761 packet type)."""
    return len(data) >= 8 and 128 <= data[0] <= 191 and 192 <= data[1] <= 223


def is_rtp(data: bytes) -> bool:
    """True for an RTP packet: first byte 128..191 (RFC 7983) and not RTCP (RFC 5761)."""
    return len(data) >= RTP_HEADER_SIZE and 128 <= data[0] <= 191 and not 192 <= data[1] <= 223


def seq_distance(a: int, b: int) -> int:
    """Signed distance ``b - a`` between two 16-bit sequence numbers, in -32768..32767."""
    d = (b - a) & 0xFFFF
    return d - _SEQ_MOD if d >= 0x8000 else d


@dataclass(slots=True)
class RtpExtension:
    """The RTP header extension (RFC 3550 section 5.3.1), kept as raw bytes.

    ``data`` must be a multiple of 4 bytes long (the length field counts 32-bit words).
    """

    profile: int
    data: bytes = b""

    def elements(self) -> list[tuple[int, bytes]]:
        """The (id, value) elements of an RFC 8285 one-byte or two-byte header extension.

        Padding bytes are skipped; a one-byte element with id 15 stops parsing (RFC 8285 4.2).
        Any other profile gives an empty list. Raises :class:`RtpError` on a truncated element.
        """
        data = self.data
        out: list[tuple[int, bytes]] = []
        pos = 0
        if self.profile == ONE_BYTE_PROFILE:
            while pos < len(data):
                b = data[pos]
                if b == 0:
                    pos += 1
                    continue
                ext_id, length = b >> 4, (b & 0x0F) + 1
                if ext_id == 15:
                    break
                pos += 1
                if pos + length > len(data):
                    raise RtpError("truncated one-byte header extension element")
                out.append((ext_id, bytes(data[pos : pos + length])))
                pos += length
        elif self.profile & TWO_BYTE_PROFILE_MASK == TWO_BYTE_PROFILE:
            while pos < len(data):
                if data[pos] == 0:
                    pos += 1
                    continue
                if pos + 2 > len(data):
                    raise RtpError("truncated two-byte header extension element")
                ext_id, length = data[pos], data[pos + 1]
                pos += 2
                if pos + length > len(data):
                    raise RtpError("truncated two-byte header extension element")
                out.append((ext_id, bytes(data[pos : pos + length])))
                pos += length
        return out

    @classmethod
    def from_elements(cls, elements: list[tuple[int, bytes]]) -> RtpExtension:
        """Pack elements as a one-byte header extension if they fit (ids 1..14, 1..16 bytes),
        otherwise as a two-byte one (RFC 8285), padded with zero bytes to 32 bits."""
        one_byte = all(1 <= i <= 14 and 1 <= len(v) <= 16 for i, v in elements)
        parts = bytearray()
        for ext_id, value in elements:
            if one_byte:
                parts.append((ext_id << 4) | (len(value) - 1))
            else:
                if not 1 <= ext_id <= 255 or len(value) > 255:
                    raise RtpError(f"header extension element {ext_id} does not fit")
                parts += bytes((ext_id, len(value)))
            parts += value
        parts += b"\x00" * (-len(parts) % 4)
        return cls(ONE_BYTE_PROFILE if one_byte else TWO_BYTE_PROFILE, bytes(parts))


@dataclass(slots=True)
class RtpPacket:
    """One RTP packet (RFC 3550 section 5.1).

    ``padding_size`` is the number of padding octets including the final count octet (0: the P bit
    is clear); serialisation writes zero octets followed by the count.
    """

    payload_type: int = 0
    sequence_number: int = 0
    timestamp: int = 0
    ssrc: int = 0
    payload: bytes = b""
    marker: bool = False
    csrc: list[int] = field(default_factory=list)
    extension: RtpExtension | None = None
    padding_size: int = 0
    version: int = RTP_VERSION

    @classmethod
    def parse(cls, data: bytes) -> RtpPacket:
        """Parse one RTP packet; raises :class:`RtpError` if it is malformed."""
        n = len(data)
        if n < RTP_HEADER_SIZE:
            raise RtpError(f"RTP packet is {n} bytes, shorter than the 12-byte header")
        b0, b1, seq, ts, ssrc = _HEADER.unpack_from(data)
        version = b0 >> 6
        if version != RTP_VERSION:
            raise RtpError(f"RTP version {version}, expected 2")
        cc = b0 & 0x0F
        pos = RTP_HEADER_SIZE + 4 * cc
        if n < pos:
            raise RtpError("RTP packet has a truncated CSRC list")
        csrc = list(struct.unpack_from(f"!{cc}I", data, RTP_HEADER_SIZE)) if cc else []
        extension = None
        if b0 & 0x10:
            if n < pos + 4:
                raise RtpError("RTP packet has a truncated header extension")
            profile, words = _EXT_HEADER.unpack_from(data, pos)
            pos += 4
            end = pos + 4 * words
            if n < end:
                raise RtpError("RTP header extension is longer than the packet")
            extension = RtpExtension(profile, bytes(data[pos:end]))
            pos = end
        padding_size = 0
        end = n
        if b0 & 0x20:
            padding_size = data[-1]
            if padding_size == 0 or padding_size > n - pos:
                raise RtpError(f"invalid RTP padding length {padding_size}")
            end = n - padding_size
        return cls(
            payload_type=b1 & 0x7F,
            sequence_number=seq,
            timestamp=ts,
            ssrc=ssrc,
            payload=bytes(data[pos:end]),
            marker=bool(b1 & 0x80),
            csrc=csrc,
            extension=extension,
            padding_size=padding_size,
            version=version,
        )

    def serialize(self) -> bytes:
        """The packet's bytes. Raises :class:`RtpError` for values that do not fit the header."""
        if not 0 <= self.payload_type <= 127:
            raise RtpError(f"payload type {self.payload_type} is out of range 0..127")
        if len(self.csrc) > 15:
            raise RtpError("at most 15 CSRCs fit an RTP header")
        if not 0 <= self.padding_size <= 255:
            raise RtpError(f"padding size {self.padding_size} is out of range 0..255")
        b0 = (self.version << 6) | len(self.csrc)
        if self.padding_size:
            b0 |= 0x20
        if self.extension is not None:
            b0 |= 0x10
        b1 = (0x80 if self.marker else 0) | self.payload_type
        parts = [
            _HEADER.pack(
                b0, b1, self.sequence_number & 0xFFFF, self.timestamp & 0xFFFFFFFF, self.ssrc & 0xFFFFFFFF
            )
        ]
        if self.csrc:
            parts.append(struct.pack(f"!{len(self.csrc)}I", *self.csrc))
        if self.extension is not None:
            data = self.extension.data
            if len(data) % 4:
                raise RtpError("RTP header extension data must be a multiple of 4 bytes")
            parts.append(_EXT_HEADER.pack(self.extension.profile, len(data) // 4))
            parts.append(data)
        parts.append(self.payload)
        if self.padding_size:
            parts.append(b"\x00" * (self.padding_size - 1) + bytes((self.padding_size,)))
        return b"".join(parts)


def rtp_payload(data: bytes) -> bytes:
    """The payload of a well-formed RTP packet (past CSRCs and header extension, without padding), read
    without building an :class:`RtpPacket`; empty when the packet is too short for what its header says."""
    b0 = data[0]
    pos = RTP_HEADER_SIZE + 4 * (b0 & 0x0F)
    if b0 & 0x10:
        if len(data) < pos + 4:
            return b""
        pos += 4 + 4 * _EXT_HEADER.unpack_from(data, pos)[1]
    end = len(data) - (data[-1] if b0 & 0x20 else 0)
    return bytes(data[pos:end]) if end > pos else b""


# --- receive statistics (RFC 3550 appendix A) --------------------------------------------------

#: RFC 3550 A.1 constants.
MAX_DROPOUT = 3000
MAX_MISORDER = 100


@dataclass(slots=True)
class SourceStats:
    """Receive statistics for one SSRC (RFC 3550 A.1, A.3, A.8).

    ``min_sequential`` is A.1's ``MIN_SEQUENTIAL``: how many packets in sequence make a new source
    valid. The RFC suggests 2, which leaves the first packet out of every count; the default 1 counts
    every packet from the first, which is what an emulator with one known SSRC wants.
    """

    ssrc: int
    clock_rate: int = 48000
    min_sequential: int = 1
    # A.1 state
    max_seq: int = 0
    cycles: int = 0
    base_seq: int = 0
    bad_seq: int = _SEQ_MOD + 1
    probation: int = 0
    received: int = 0
    expected_prior: int = 0
    received_prior: int = 0
    _started: bool = False
    # A.8 state, in timestamp units
    jitter: float = 0.0
    _jitter_started: bool = False
    _last_arrival: float = 0.0
    _last_ts: int = 0
    # bookkeeping
    first_packet_at: float | None = None
    last_packet_at: float | None = None
    octets: int = 0
    duplicates_or_late: int = 0
    restarts: int = 0
    #: middle 32 bits of the NTP timestamp of the last SR from this source and its arrival time.
    last_sr: int = 0
    last_sr_at: float | None = None

    def __post_init__(self) -> None:
        self.probation = self.min_sequential

    def _init_seq(self, seq: int) -> None:
        self.base_seq = seq
        self.max_seq = seq
        self.bad_seq = _SEQ_MOD + 1
        self.cycles = 0
        self.received = 0
        self.received_prior = 0
        self.expected_prior = 0

    def update_seq(self, seq: int) -> bool:
        """RFC 3550 A.1 ``update_seq``: True if the packet is valid and counted."""
        if not self._started:
            # new source: A.1 init_seq(s, seq) with max_seq = seq - 1, then probation
            self._started = True
            self._init_seq(seq)
            self.max_seq = (seq - 1) & 0xFFFF
        udelta = (seq - self.max_seq) & 0xFFFF
        if self.probation:
            if seq == (self.max_seq + 1) & 0xFFFF:
                self.probation -= 1
                self.max_seq = seq
                if self.probation == 0:
                    self._init_seq(seq)
                    self.received += 1
                    return True
            else:
                self.probation = self.min_sequential - 1
                self.max_seq = seq
            return False
        if udelta == 0:
            self.duplicates_or_late += 1  # a repeat of the highest packet
        elif udelta < MAX_DROPOUT:
            if seq < self.max_seq:
                self.cycles += _SEQ_MOD
            self.max_seq = seq
        elif udelta <= _SEQ_MOD - MAX_MISORDER:
            # a very large jump
            if seq == self.bad_seq:
                # two sequential packets: the other side restarted without telling us
                self._init_seq(seq)
                self.restarts += 1
            else:
                self.bad_seq = (seq + 1) & 0xFFFF
                return False
        else:
            # duplicate or reordered packet
            self.duplicates_or_late += 1
        self.received += 1
        return True

    def update_jitter(self, timestamp: int, arrival_time: float) -> None:
        """RFC 3550 A.8: J += (|D| - J) / 16, arrival converted to timestamp units."""
        if not self._jitter_started:
            self._jitter_started = True
        else:
            # transit difference, with the 32-bit timestamp difference unwrapped
            dts = (timestamp - self._last_ts) & 0xFFFFFFFF
            if dts >= 0x80000000:
                dts -= _TS_MOD
            d = (arrival_time - self._last_arrival) * self.clock_rate - dts
            self.jitter += (abs(d) - self.jitter) / 16.0
        self._last_arrival = arrival_time
        self._last_ts = timestamp

    @property
    def extended_max_seq(self) -> int:
        """The extended highest sequence number received (cycles + max_seq)."""
        return self.cycles + self.max_seq

    @property
    def expected(self) -> int:
        if self.received == 0:
            return 0
        return self.extended_max_seq - self.base_seq + 1

    @property
    def lost(self) -> int:
        """Cumulative packets lost (A.3); negative when duplicates outnumber losses."""
        return self.expected - self.received

    @property
    def loss_ratio(self) -> float:
        """Cumulative lost / expected, 0.0 when nothing is expected."""
        expected = self.expected
        return max(self.lost, 0) / expected if expected else 0.0

    @property
    def fraction_lost(self) -> int:
        """Fraction lost since the last :meth:`mark_reported`, as RFC 3550's 8-bit fixed point."""
        expected_interval = self.expected - self.expected_prior
        lost_interval = expected_interval - (self.received - self.received_prior)
        if expected_interval <= 0 or lost_interval <= 0:
            return 0
        return min((lost_interval << 8) // expected_interval, 255)

    def mark_reported(self) -> None:
        """Start a new reporting interval (call after building a report block)."""
        self.expected_prior = self.expected
        self.received_prior = self.received

    @property
    def jitter_ms(self) -> float:
        return self.jitter * 1000.0 / self.clock_rate


@dataclass
class ReceiveStats:
    """Receive statistics of one RTP session, per SSRC.

    ``update(packet, arrival_time)`` takes a parsed :class:`RtpPacket` and its arrival time in
    seconds (any monotonic clock). Packets of ``event_payload_types`` (RFC 4733 telephone events,
    whose timestamp stays at the event onset) count for sequence and loss but not for jitter.
    """

    clock_rate: int = 48000
    min_sequential: int = 1
    event_payload_types: frozenset[int] = frozenset({126})
    sources: dict[int, SourceStats] = field(default_factory=dict)
    ssrcs_seen: set[int] = field(default_factory=set)
    payload_types_seen: set[int] = field(default_factory=set)
    packets: int = 0
    first_packet_at: float | None = None
    last_packet_at: float | None = None

    def source(self, ssrc: int) -> SourceStats:
        src = self.sources.get(ssrc)
        if src is None:
            src = SourceStats(ssrc, clock_rate=self.clock_rate, min_sequential=self.min_sequential)
            self.sources[ssrc] = src
            self.ssrcs_seen.add(ssrc)
        return src

    def update(self, packet: RtpPacket, arrival_time: float) -> bool:
        """Account one packet; True if the sequence check accepted it (A.1)."""
        return self.update_fields(packet.ssrc, packet.sequence_number, packet.timestamp, packet.payload_type,
                                  len(packet.payload), arrival_time)

    def update_fields(self, ssrc: int, sequence_number: int, timestamp: int, payload_type: int,
                      payload_length: int, arrival_time: float) -> bool:
        """:meth:`update` from header fields, for receivers that do not build an :class:`RtpPacket`."""
        self.packets += 1
        self.payload_types_seen.add(payload_type)
        if self.first_packet_at is None:
            self.first_packet_at = arrival_time
        self.last_packet_at = arrival_time
        src = self.sources.get(ssrc) or self.source(ssrc)
        if src.first_packet_at is None:
            src.first_packet_at = arrival_time
        valid = src.update_seq(sequence_number)
        src.last_packet_at = arrival_time
        src.octets += payload_length
        if valid and payload_type not in self.event_payload_types:
            src.update_jitter(timestamp, arrival_time)
        return valid

    def on_sender_report(self, ssrc: int, ntp_timestamp: int, arrival_time: float) -> None:
        """Remember an RTCP SR's NTP timestamp (middle 32 bits) for LSR/DLSR (RFC 3550 6.4.1)."""
        src = self.source(ssrc)
        src.last_sr = (ntp_timestamp >> 16) & 0xFFFFFFFF
        src.last_sr_at = arrival_time

    @property
    def multiple_ssrcs(self) -> bool:
        return len(self.ssrcs_seen) > 1

    @property
    def received(self) -> int:
        return sum(s.received for s in self.sources.values())

    @property
    def lost(self) -> int:
        return sum(s.lost for s in self.sources.values())

    @property
    def expected(self) -> int:
        return sum(s.expected for s in self.sources.values())
