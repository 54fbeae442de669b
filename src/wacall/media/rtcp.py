"""RTCP packets (RFC 3550 section 6): SR, RR, SDES, BYE and compound packets.

- :class:`RtcpSenderReport` (PT 200), :class:`RtcpReceiverReport` (201), :class:`RtcpSdes` (202),
  :class:`RtcpBye` (203); any other packet type (RTPFB/PSFB feedback of RFC 4585, APP, XR) is kept
  verbatim as :class:`RtcpUnknown`, so a compound packet survives parse -> serialize.
- :func:`parse_rtcp` splits a compound packet (RFC 3550 section 6.1) and raises :class:`RtcpError`
  on anything malformed; :func:`serialize_rtcp` joins packets back. Neither enforces the compound
  rules (SR/RR first, SDES CNAME included); :func:`build_compound` produces a conforming one.
- NTP timestamps (RFC 3550 section 4): 64-bit fixed point seconds since 1900;
  :func:`ntp_timestamp` / :func:`ntp_to_unix` convert from/to Unix time, :func:`ntp_middle32`
  gives the compact form used in LSR.
- :func:`report_block` turns a :class:`~wacall.media.rtp.SourceStats` into a report block (A.3
  interval loss, A.8 jitter, LSR/DLSR of section 6.4.1); :func:`build_sr` / :func:`build_rr` build
  reports.

Meta hangs up after 30 s without media *or RTCP* mid-call (calling-wire-spec section 9), so a
silent leg keeps sending these.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from .rtp import ReceiveStats, SourceStats

__all__ = [
    "NTP_EPOCH_OFFSET",
    "RTCP_BYE",
    "RTCP_RR",
    "RTCP_SDES",
    "RTCP_SR",
    "SDES_CNAME",
    "ReportBlock",
    "RtcpBye",
    "RtcpError",
    "RtcpPacket",
    "RtcpReceiverReport",
    "RtcpSdes",
    "RtcpSenderReport",
    "RtcpUnknown",
    "SdesChunk",
    "build_compound",
    "build_rr",
    "build_sr",
    "ntp_middle32",
    "ntp_timestamp",
    "ntp_to_unix",
    "parse_rtcp",
    "report_block",
    "serialize_rtcp",
]

RTCP_SR = 200
RTCP_RR = 201
RTCP_SDES = 202
RTCP_BYE = 203
SDES_CNAME = 1

#: Seconds from 1900-01-01 (NTP era 0) to 1970-01-01 (Unix epoch).
NTP_EPOCH_OFFSET = 2_208_988_800

_HEADER = struct.Struct("!BBH")
_REPORT = struct.Struct("!IB3sIIII")
_SENDER_INFO = struct.Struct("!IQIII")


class RtcpError(ValueError):
    """A datagram that is not a well-formed RTCP (compound) packet."""


# --- NTP --------------------------------------------------------------------------------------


def ntp_timestamp(unix_time: float) -> int:
    """64-bit NTP timestamp (seconds since 1900 in 32.32 fixed point) of a Unix time."""
    return int(round((unix_time + NTP_EPOCH_OFFSET) * (1 << 32))) & 0xFFFFFFFFFFFFFFFF


def ntp_to_unix(ntp: int) -> float:
    """Unix time of a 64-bit NTP timestamp (era 0)."""
    return ntp / (1 << 32) - NTP_EPOCH_OFFSET


def ntp_middle32(ntp: int) -> int:
    """The middle 32 bits of an NTP timestamp (16.16 seconds), the form of LSR (section 6.4.1)."""
    return (ntp >> 16) & 0xFFFFFFFF


# --- packets ----------------------------------------------------------------------------------


def _header(packet_type: int, count: int, payload_len: int) -> bytes:
    if payload_len % 4:
        raise RtcpError("RTCP payload must be a multiple of 4 bytes")
    if not 0 <= count <= 31:
        raise RtcpError(f"RTCP count {count} is out of range 0..31")
    return _HEADER.pack(0x80 | count, packet_type, payload_len // 4)


@dataclass(slots=True)
class ReportBlock:
    """A reception report block (RFC 3550 section 6.4.1); ``packets_lost`` is signed 24-bit."""

    ssrc: int
    fraction_lost: int = 0
    packets_lost: int = 0
    highest_sequence: int = 0
    jitter: int = 0
    lsr: int = 0
    dlsr: int = 0

    SIZE: ClassVar[int] = 24

    def serialize(self) -> bytes:
        lost = max(-(1 << 23), min(self.packets_lost, (1 << 23) - 1)) & 0xFFFFFF
        return _REPORT.pack(
            self.ssrc,
            self.fraction_lost & 0xFF,
            lost.to_bytes(3, "big"),
            self.highest_sequence & 0xFFFFFFFF,
            self.jitter & 0xFFFFFFFF,
            self.lsr & 0xFFFFFFFF,
            self.dlsr & 0xFFFFFFFF,
        )

    @classmethod
    def parse(cls, data: bytes, pos: int = 0) -> ReportBlock:
        ssrc, fraction, lost3, highest, jitter, lsr, dlsr = _REPORT.unpack_from(data, pos)
        lost = int.from_bytes(lost3, "big")
        if lost & 0x800000:
            lost -= 1 << 24
        return cls(ssrc, fraction, lost, highest, jitter, lsr, dlsr)


def _parse_reports(payload: bytes, pos: int, count: int) -> list[ReportBlock]:
    if len(payload) < pos + ReportBlock.SIZE * count:
        raise RtcpError("RTCP report blocks are truncated")
    return [ReportBlock.parse(payload, pos + i * ReportBlock.SIZE) for i in range(count)]


@dataclass(slots=True)
class RtcpSenderReport:
    """SR (PT 200). Profile-specific extensions after the report blocks are kept in ``extension``."""

    ssrc: int
    ntp_timestamp: int
    rtp_timestamp: int
    packet_count: int
    octet_count: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    packet_type: ClassVar[int] = RTCP_SR

    def serialize(self) -> bytes:
        body = _SENDER_INFO.pack(
            self.ssrc,
            self.ntp_timestamp & 0xFFFFFFFFFFFFFFFF,
            self.rtp_timestamp & 0xFFFFFFFF,
            self.packet_count & 0xFFFFFFFF,
            self.octet_count & 0xFFFFFFFF,
        )
        body += b"".join(r.serialize() for r in self.reports) + self.extension
        return _header(RTCP_SR, len(self.reports), len(body)) + body

    @classmethod
    def parse(cls, count: int, payload: bytes) -> RtcpSenderReport:
        if len(payload) < _SENDER_INFO.size:
            raise RtcpError("RTCP SR is shorter than its sender info")
        ssrc, ntp, rtp_ts, packets, octets = _SENDER_INFO.unpack_from(payload)
        reports = _parse_reports(payload, _SENDER_INFO.size, count)
        ext = payload[_SENDER_INFO.size + ReportBlock.SIZE * count :]
        return cls(ssrc, ntp, rtp_ts, packets, octets, reports, bytes(ext))


@dataclass(slots=True)
class RtcpReceiverReport:
    """RR (PT 201)."""

    ssrc: int
    reports: list[ReportBlock] = field(default_factory=list)
    extension: bytes = b""

    packet_type: ClassVar[int] = RTCP_RR

    def serialize(self) -> bytes:
        body = struct.pack("!I", self.ssrc) + b"".join(r.serialize() for r in self.reports) + self.extension
        return _header(RTCP_RR, len(self.reports), len(body)) + body

    @classmethod
    def parse(cls, count: int, payload: bytes) -> RtcpReceiverReport:
        if len(payload) < 4:
            raise RtcpError("RTCP RR is shorter than its SSRC")
        (ssrc,) = struct.unpack_from("!I", payload)
        reports = _parse_reports(payload, 4, count)
        return cls(ssrc, reports, bytes(payload[4 + ReportBlock.SIZE * count :]))


@dataclass(slots=True)
class SdesChunk:
    """One SDES chunk: an SSRC and its (item type, value) items (section 6.5)."""

    ssrc: int
    items: list[tuple[int, bytes]] = field(default_factory=list)

    @property
    def cname(self) -> str | None:
        for item_type, value in self.items:
            if item_type == SDES_CNAME:
                return value.decode("utf-8", "replace")
        return None


@dataclass(slots=True)
class RtcpSdes:
    """SDES (PT 202). Each chunk's item list ends with a null octet and pads to 32 bits."""

    chunks: list[SdesChunk] = field(default_factory=list)

    packet_type: ClassVar[int] = RTCP_SDES

    @classmethod
    def cname(cls, ssrc: int, cname: str) -> RtcpSdes:
        return cls([SdesChunk(ssrc, [(SDES_CNAME, cname.encode())])])

    def serialize(self) -> bytes:
        body = bytearray()
        for chunk in self.chunks:
            body += struct.pack("!I", chunk.ssrc)
            for item_type, value in chunk.items:
                if not 1 <= item_type <= 255 or len(value) > 255:
                    raise RtcpError(f"SDES item {item_type} does not fit")
                body += bytes((item_type, len(value))) + value
            body += b"\x00" * (4 - len(body) % 4)  # at least one null octet, then 32-bit aligned
        return _header(RTCP_SDES, len(self.chunks), len(body)) + bytes(body)

    @classmethod
    def parse(cls, count: int, payload: bytes) -> RtcpSdes:
        chunks = []
        pos = 0
        n = len(payload)
        for _ in range(count):
            if pos + 4 > n:
                raise RtcpError("RTCP SDES chunk is truncated")
            (ssrc,) = struct.unpack_from("!I", payload, pos)
            pos += 4
            items = []
            while True:
                if pos >= n:
                    raise RtcpError("RTCP SDES item list is not terminated")
                item_type = payload[pos]
                if item_type == 0:
                    pos = (pos + 4) & ~3  # skip the null octet and the padding to 32 bits
                    break
                if pos + 2 > n or pos + 2 + payload[pos + 1] > n:
                    raise RtcpError("RTCP SDES item is truncated")
                length = payload[pos + 1]
                items.append((item_type, bytes(payload[pos + 2 : pos + 2 + length])))
                pos += 2 + length
            chunks.append(SdesChunk(ssrc, items))
        return cls(chunks)


@dataclass(slots=True)
class RtcpBye:
    """BYE (PT 203) with an optional reason."""

    sources: list[int] = field(default_factory=list)
    reason: str | None = None

    packet_type: ClassVar[int] = RTCP_BYE

    def serialize(self) -> bytes:
        body = b"".join(struct.pack("!I", s) for s in self.sources)
        if self.reason is not None:
            reason = self.reason.encode()[:255]
            body += bytes((len(reason),)) + reason
            body += b"\x00" * (-len(body) % 4)
        return _header(RTCP_BYE, len(self.sources), len(body)) + body

    @classmethod
    def parse(cls, count: int, payload: bytes) -> RtcpBye:
        if len(payload) < 4 * count:
            raise RtcpError("RTCP BYE is truncated")
        sources = list(struct.unpack_from(f"!{count}I", payload)) if count else []
        pos = 4 * count
        reason = None
        if pos < len(payload):
            length = payload[pos]
            if pos + 1 + length > len(payload):
                raise RtcpError("RTCP BYE reason is truncated")
            reason = payload[pos + 1 : pos + 1 + length].decode("utf-8", "replace")
        return cls(sources, reason)


@dataclass(slots=True)
class RtcpUnknown:
    """Any other RTCP packet, kept verbatim (its count/format field and payload)."""

    packet_type: int
    count: int
    payload: bytes

    def serialize(self) -> bytes:
        return _header(self.packet_type, self.count, len(self.payload)) + self.payload


RtcpPacket = RtcpSenderReport | RtcpReceiverReport | RtcpSdes | RtcpBye | RtcpUnknown

_PARSERS: dict[int, Callable[[int, bytes], RtcpPacket]] = {
    RTCP_SR: RtcpSenderReport.parse,
    RTCP_RR: RtcpReceiverReport.parse,
    RTCP_SDES: RtcpSdes.parse,
    RTCP_BYE: RtcpBye.parse,
}


def parse_rtcp(data: bytes) -> list[RtcpPacket]:
    """Parse a (compound) RTCP packet; raises :class:`RtcpError` if any part is malformed."""
    packets: list[RtcpPacket] = []
    pos = 0
    n = len(data)
    if n < 4:
        raise RtcpError("RTCP packet is shorter than its 4-byte header")
    while pos < n:
        if pos + 4 > n:
            raise RtcpError("trailing bytes after the last RTCP packet")
        b0, packet_type, words = _HEADER.unpack_from(data, pos)
        if b0 >> 6 != 2:
            raise RtcpError(f"RTCP version {b0 >> 6}, expected 2")
        end = pos + 4 + 4 * words
        if end > n:
            raise RtcpError("RTCP packet is longer than the datagram")
        payload = bytes(data[pos + 4 : end])
        if b0 & 0x20:
            pad = payload[-1] if payload else 0
            if pad == 0 or pad > len(payload):
                raise RtcpError(f"invalid RTCP padding length {pad}")
            payload = payload[:-pad]
        count = b0 & 0x1F
        parser = _PARSERS.get(packet_type)
        try:
            packets.append(parser(count, payload) if parser else RtcpUnknown(packet_type, count, payload))
        except struct.error as exc:  # pragma: no cover - guarded by explicit length checks
            raise RtcpError(str(exc)) from exc
        pos = end
    return packets


def serialize_rtcp(packets: Iterable[RtcpPacket]) -> bytes:
    """Join packets into one compound RTCP packet."""
    return b"".join(p.serialize() for p in packets)


# --- reports from receive statistics ----------------------------------------------------------


def report_block(source: SourceStats, now: float, *, mark: bool = True) -> ReportBlock:
    """A report block for one source (RFC 3550 6.4.1, A.3), ``now`` on the same clock as arrivals.

    With ``mark`` (the default) a new reporting interval starts, as after sending the report.
    """
    dlsr = 0
    if source.last_sr_at is not None:
        dlsr = max(0, int((now - source.last_sr_at) * 65536))
    block = ReportBlock(
        ssrc=source.ssrc,
        fraction_lost=source.fraction_lost,
        packets_lost=source.lost,
        highest_sequence=source.extended_max_seq & 0xFFFFFFFF,
        jitter=int(source.jitter),
        lsr=source.last_sr if source.last_sr_at is not None else 0,
        dlsr=dlsr,
    )
    if mark:
        source.mark_reported()
    return block


def _blocks(stats: ReceiveStats | None, now: float) -> list[ReportBlock]:
    if stats is None:
        return []
    return [report_block(s, now) for s in list(stats.sources.values())[:31] if s.received]


def build_sr(
    ssrc: int,
    ntp_time: int,
    rtp_ts: int,
    packets: int,
    octets: int,
    reports: Sequence[ReportBlock] = (),
) -> RtcpSenderReport:
    """An SR. ``ntp_time`` is a 64-bit NTP timestamp (see :func:`ntp_timestamp`), ``rtp_ts`` the
    RTP timestamp of the same instant, ``packets``/``octets`` the sender's counts (payload octets)."""
    return RtcpSenderReport(ssrc, ntp_time, rtp_ts, packets, octets, list(reports[:31]))


def build_rr(ssrc: int, stats: ReceiveStats | None, now: float) -> RtcpReceiverReport:
    """An RR with one report block per source in ``stats`` that sent something."""
    return RtcpReceiverReport(ssrc, _blocks(stats, now))


def build_compound(
    ssrc: int,
    cname: str,
    *,
    stats: ReceiveStats | None = None,
    now: float,
    sender: tuple[int, int, int, int] | None = None,
    bye: bool = False,
    bye_reason: str | None = None,
) -> bytes:
    """A conforming compound packet: SR (when ``sender`` = (ntp_time, rtp_ts, packets, octets) is
    given) or RR, report blocks from ``stats``, SDES CNAME, and optionally BYE (section 6.1)."""
    blocks = _blocks(stats, now)
    first: RtcpPacket
    if sender is not None:
        first = build_sr(ssrc, *sender, reports=blocks)
    else:
        first = RtcpReceiverReport(ssrc, blocks)
    packets: list[RtcpPacket] = [first, RtcpSdes.cname(ssrc, cname)]
    if bye:
        packets.append(RtcpBye([ssrc], bye_reason))
    return serialize_rtcp(packets)
