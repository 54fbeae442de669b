"""RTP (RFC 3550) packets and receive statistics, RTCP compound packets, and aiortc cross-checks."""

from __future__ import annotations

import struct

import pytest
from aiortc import rtp as artp
from aiortc.rtcrtpparameters import RTCRtpHeaderExtensionParameters, RTCRtpParameters

from wacall.media.rtcp import (
    NTP_EPOCH_OFFSET,
    ReportBlock,
    RtcpBye,
    RtcpError,
    RtcpReceiverReport,
    RtcpSdes,
    RtcpSenderReport,
    RtcpUnknown,
    SdesChunk,
    build_compound,
    build_rr,
    build_sr,
    ntp_middle32,
    ntp_timestamp,
    ntp_to_unix,
    parse_rtcp,
    serialize_rtcp,
)
from wacall.media.rtp import (
    ReceiveStats,
    RtpError,
    RtpExtension,
    RtpPacket,
    SourceStats,
    is_rtcp,
    is_rtp,
    rtp_payload,
    seq_distance,
)

# --- RTP packets ------------------------------------------------------------------------------


@pytest.mark.parametrize("packet", [
    RtpPacket(payload_type=111, payload=b"opus"),
    RtpPacket(payload_type=111, payload=b"opus", csrc=[1, 2]),
    RtpPacket(payload_type=111, payload=b"opus", extension=RtpExtension.from_elements([(1, b"\x30")])),
    RtpPacket(payload_type=111, payload=b"opus", csrc=[7], padding_size=3,
              extension=RtpExtension.from_elements([(1, b"\x30"), (3, b"abc")])),
])
def test_rtp_payload_reads_past_csrcs_and_extension_and_drops_padding(packet):
    data = packet.serialize()
    assert rtp_payload(data) == RtpPacket.parse(data).payload == b"opus"


def test_rtp_payload_of_a_packet_shorter_than_its_header_says_is_empty():
    data = RtpPacket(payload_type=111, payload=b"", extension=RtpExtension.from_elements([(1, b"x")])).serialize()
    assert rtp_payload(data[:14]) == b""
    assert rtp_payload(RtpPacket(payload_type=111).serialize()) == b""


def test_minimal_packet_round_trip_and_layout():
    pkt = RtpPacket(payload_type=111, sequence_number=0xABCD, timestamp=0x01020304, ssrc=0xDEADBEEF, payload=b"xy")
    data = pkt.serialize()
    assert data == bytes.fromhex("806fabcd01020304deadbeef") + b"xy"
    assert RtpPacket.parse(data) == pkt


def test_full_packet_round_trip():
    ext = RtpExtension.from_elements([(1, b"\x10"), (3, b"mid0")])
    pkt = RtpPacket(
        payload_type=126,
        sequence_number=65535,
        timestamp=0xFFFFFFFF,
        ssrc=1,
        payload=b"\x01\x8a\x00\xa0",
        marker=True,
        csrc=[7, 8, 9],
        extension=ext,
        padding_size=5,
    )
    data = pkt.serialize()
    assert data[0] == 0x80 | 0x20 | 0x10 | 3  # V=2, P, X, CC=3
    assert data[1] == 0x80 | 126
    assert data[-5:] == b"\x00\x00\x00\x00\x05"
    parsed = RtpPacket.parse(data)
    assert parsed == pkt
    assert parsed.extension.profile == 0xBEDE
    assert parsed.extension.elements() == [(1, b"\x10"), (3, b"mid0")]
    assert parsed.serialize() == data


def test_one_byte_extension_kept_intact_including_padding_and_unknown_ids():
    # id 5 len 2, padding byte, id 14 len 1, then zero padding to 32 bits
    raw = bytes([0x51, 0xAA, 0xBB, 0x00, 0xE0, 0xCC, 0x00, 0x00])
    pkt = RtpPacket(payload_type=111, extension=RtpExtension(0xBEDE, raw), payload=b"p")
    parsed = RtpPacket.parse(pkt.serialize())
    assert parsed.extension.data == raw
    assert parsed.extension.elements() == [(5, b"\xaa\xbb"), (14, b"\xcc")]
    two = RtpExtension.from_elements([(20, b"long-id")])
    assert two.profile == 0x1000 and two.elements() == [(20, b"long-id")]
    other = RtpExtension(0x1234, b"\x01\x02\x03\x04")
    assert RtpPacket.parse(RtpPacket(extension=other).serialize()).extension == other
    assert other.elements() == []


@pytest.mark.parametrize(
    "data, message",
    [
        (b"\x80\x00\x00", "shorter"),
        (bytes.fromhex("406f000100000001 00000001"), "version"),
        (bytes.fromhex("826f000100000001 00000001 00000002"), "CSRC"),
        (bytes.fromhex("906f000100000001 00000001 bede00"), "extension"),
        (bytes.fromhex("906f000100000001 00000001 bede0002 00000000"), "extension"),
        (bytes.fromhex("a06f000100000001 00000001 0102 00"), "padding"),
        (bytes.fromhex("a06f000100000001 00000001 0102 09"), "padding"),
    ],
)
def test_parse_errors(data, message):
    with pytest.raises(RtpError, match=message):
        RtpPacket.parse(data)


def test_serialize_errors():
    with pytest.raises(RtpError):
        RtpPacket(payload_type=128).serialize()
    with pytest.raises(RtpError):
        RtpPacket(csrc=list(range(16))).serialize()
    with pytest.raises(RtpError):
        RtpPacket(extension=RtpExtension(0xBEDE, b"\x01")).serialize()


def test_demultiplexing_rfc7983_and_rfc5761():
    rtp = RtpPacket(payload_type=111, payload=b"x").serialize()
    rtp_marker_pt0 = RtpPacket(payload_type=0, marker=True).serialize()  # second byte 128
    rtcp_sr = build_sr(1, 0, 0, 0, 0).serialize()
    stun = bytes.fromhex("0001 0000 2112a442") + bytes(12)
    dtls = bytes([22, 0xFE, 0xFD]) + bytes(20)
    assert is_rtp(rtp) and not is_rtcp(rtp)
    assert is_rtp(rtp_marker_pt0) and not is_rtcp(rtp_marker_pt0)
    assert is_rtcp(rtcp_sr) and not is_rtp(rtcp_sr)
    for other in (stun, dtls, b"", b"\x80"):
        assert not is_rtp(other) and not is_rtcp(other)
    # RFC 5761: 192..223 are RTCP (aiortc only checks up to 208)
    xr_like = bytes([0x80, 207, 0, 1]) + bytes(4)
    app = bytes([0x80, 204, 0, 1]) + bytes(4)
    assert is_rtcp(xr_like) and is_rtcp(app)


def test_seq_distance():
    assert seq_distance(65535, 0) == 1
    assert seq_distance(0, 65535) == -1
    assert seq_distance(100, 90) == -10


# --- aiortc cross-checks: RTP -------------------------------------------------------------------


def _aiortc_mid_map() -> artp.HeaderExtensionsMap:
    params = RTCRtpParameters(
        headerExtensions=[
            RTCRtpHeaderExtensionParameters(id=1, uri="urn:ietf:params:rtp-hdrext:sdes:mid"),
            RTCRtpHeaderExtensionParameters(id=2, uri="urn:ietf:params:rtp-hdrext:ssrc-audio-level"),
        ]
    )
    ext_map = artp.HeaderExtensionsMap()
    ext_map.configure(params)
    return ext_map


def test_aiortc_parses_our_rtp():
    ours = RtpPacket(
        payload_type=111,
        sequence_number=4242,
        timestamp=123456789,
        ssrc=0x01020304,
        payload=b"opus-bytes",
        marker=True,
        csrc=[11, 22],
        extension=RtpExtension.from_elements([(1, b"0"), (2, b"\x85")]),
        padding_size=3,
    )
    theirs = artp.RtpPacket.parse(ours.serialize(), _aiortc_mid_map())
    assert (theirs.payload_type, theirs.sequence_number, theirs.timestamp, theirs.ssrc) == (
        111,
        4242,
        123456789,
        0x01020304,
    )
    assert theirs.marker == 1 and theirs.csrc == [11, 22] and theirs.payload == b"opus-bytes"
    assert theirs.padding_size == 3
    assert theirs.extensions.mid == "0"
    assert theirs.extensions.audio_level == (True, 5)


def test_we_parse_aiortc_rtp():
    ext_map = _aiortc_mid_map()
    theirs = artp.RtpPacket(payload_type=0, marker=1, sequence_number=65535, timestamp=4294967295, ssrc=9, payload=b"\xff" * 160)
    theirs.csrc = [5]
    theirs.extensions.mid = "audio"
    theirs.extensions.audio_level = (False, 30)
    data = theirs.serialize(ext_map)
    ours = RtpPacket.parse(data)
    assert ours.payload_type == 0 and ours.marker and ours.sequence_number == 65535
    assert ours.timestamp == 4294967295 and ours.ssrc == 9 and ours.csrc == [5]
    assert ours.payload == b"\xff" * 160
    assert dict(ours.extension.elements()) == {1: b"audio", 2: bytes([30])}
    assert ours.serialize() == data


# --- receive statistics -------------------------------------------------------------------------


def _feed(stats: ReceiveStats, seqs, *, ssrc=1, pt=111, t0=0.0, ts0=0):
    for i, seq in enumerate(seqs):
        stats.update(RtpPacket(payload_type=pt, sequence_number=seq, timestamp=ts0 + 960 * i, ssrc=ssrc), t0 + 0.02 * i)


def test_loss_with_sequence_wrap_around():
    stats = ReceiveStats()
    seqs = [65530, 65531, 65532, 65533, 65535, 0, 1, 3, 4, 5]  # 65534 and 2 lost
    _feed(stats, seqs)
    src = stats.sources[1]
    assert src.cycles == 1 << 16
    assert src.extended_max_seq == 65536 + 5
    assert src.expected == 12
    assert src.received == 10
    assert src.lost == 2
    assert src.fraction_lost == (2 << 8) // 12
    assert src.loss_ratio == pytest.approx(2 / 12)


def test_reordering_and_duplicates():
    stats = ReceiveStats()
    _feed(stats, [10, 11, 13, 12, 14, 14])
    src = stats.sources[1]
    assert src.expected == 5
    assert src.received == 6  # A.1 counts the duplicate too
    assert src.lost == -1
    assert src.duplicates_or_late == 2
    assert src.fraction_lost == 0
    assert src.max_seq == 14


def test_reordering_across_wrap():
    stats = ReceiveStats()
    _feed(stats, [65534, 0, 65535, 1, 2])
    src = stats.sources[1]
    assert src.expected == 5 and src.received == 5 and src.lost == 0
    assert src.extended_max_seq == 65536 + 2


def test_restart_detection_and_probation():
    stats = ReceiveStats()
    _feed(stats, [100, 101, 20000, 20001, 20002])
    src = stats.sources[1]
    assert src.restarts == 1
    assert src.base_seq == 20001 and src.received == 2 and src.lost == 0  # as in A.1
    strict = ReceiveStats(min_sequential=2)
    _feed(strict, [500, 501, 502])
    assert strict.sources[1].received == 2  # the RFC's MIN_SEQUENTIAL leaves out the first
    assert strict.sources[1].expected == 2


def test_interval_fraction_lost():
    src = SourceStats(1)
    for seq in [1, 2, 3, 5, 6, 7, 8, 9, 10, 11]:  # 4 lost: 1 of 11
        src.update_seq(seq)
    assert src.fraction_lost == (1 << 8) // 11
    src.mark_reported()
    for seq in range(12, 22):
        src.update_seq(seq)
    assert src.fraction_lost == 0
    assert src.lost == 1


def test_jitter_matches_rfc3550_a8():
    stats = ReceiveStats(clock_rate=48000)
    delays = [0.0, 0.005, 0.0, 0.012, 0.003, 0.0, 0.020, 0.001]
    expected = 0.0
    prev_transit = None
    for i, delay in enumerate(delays):
        ts = (0xFFFFFFFF - 2000 + 960 * i) & 0xFFFFFFFF  # wraps after two packets
        arrival = 100.0 + 0.02 * i + delay
        stats.update(RtpPacket(payload_type=111, sequence_number=i, timestamp=ts, ssrc=7), arrival)
        transit = arrival * 48000 - (960 * i)
        if prev_transit is not None:
            expected += (abs(transit - prev_transit) - expected) / 16
        prev_transit = transit
    src = stats.sources[7]
    assert src.jitter == pytest.approx(expected, rel=1e-9)
    assert src.jitter_ms == pytest.approx(expected / 48)


def test_constant_transit_has_no_jitter_and_dtmf_is_excluded():
    stats = ReceiveStats()
    _feed(stats, range(20), ts0=0xFFFFF000)
    # telephone events keep the onset timestamp: they must not count for jitter
    for k in range(5):
        stats.update(RtpPacket(payload_type=126, sequence_number=20 + k, timestamp=0xFFFFF000 + 960 * 20, ssrc=1), 0.4 + 0.02 * k)
    src = stats.sources[1]
    assert src.jitter == pytest.approx(0.0, abs=1e-6)
    assert src.lost == 0 and src.received == 25


def test_session_bookkeeping():
    stats = ReceiveStats()
    _feed(stats, [1, 2], ssrc=10, t0=5.0)
    _feed(stats, [7], ssrc=11, pt=0, t0=6.0)
    assert stats.ssrcs_seen == {10, 11} and stats.multiple_ssrcs
    assert stats.payload_types_seen == {111, 0}
    assert stats.first_packet_at == 5.0
    assert stats.sources[11].first_packet_at == 6.0
    assert stats.received == 3 and stats.lost == 0


# --- RTCP ---------------------------------------------------------------------------------------


def test_ntp_conversion():
    assert ntp_timestamp(0.0) == NTP_EPOCH_OFFSET << 32
    t = 1_700_000_000.25
    ntp = ntp_timestamp(t)
    assert ntp >> 32 == 1_700_000_000 + NTP_EPOCH_OFFSET
    assert ntp & 0xFFFFFFFF == 1 << 30
    assert ntp_to_unix(ntp) == pytest.approx(t, abs=1e-9)
    assert ntp_middle32(ntp) == ((ntp >> 16) & 0xFFFFFFFF)


def test_compound_round_trip():
    blocks = [ReportBlock(0xAAAA, 25, -3, 70000, 123, 0x12345678, 65536), ReportBlock(0xBBBB, 0, 8388607, 1, 0, 0, 0)]
    packets = [
        RtcpSenderReport(0x1111, ntp_timestamp(1.7e9), 960000, 1000, 100000, blocks),
        RtcpReceiverReport(0x1111, blocks[:1]),
        RtcpSdes([SdesChunk(0x1111, [(1, b"wacall@meta"), (6, b"tool")]), SdesChunk(0x2222, [(1, b"x")])]),
        RtcpUnknown(206, 1, struct.pack("!II", 0x1111, 0xAAAA)),  # PSFB PLI, kept verbatim
        RtcpBye([0x1111, 0x2222], "call ended"),
    ]
    data = serialize_rtcp(packets)
    assert len(data) % 4 == 0
    assert is_rtcp(data)
    parsed = parse_rtcp(data)
    assert parsed == packets
    assert serialize_rtcp(parsed) == data
    assert parsed[2].chunks[0].cname == "wacall@meta"


def test_rtcp_parse_errors_and_padding():
    good = RtcpBye([1]).serialize()
    with pytest.raises(RtcpError):
        parse_rtcp(good[:6])
    with pytest.raises(RtcpError, match="version"):
        parse_rtcp(bytes([0x40]) + good[1:])
    with pytest.raises(RtcpError):
        parse_rtcp(RtcpSenderReport(1, 0, 0, 0, 0).serialize()[:-4].replace(b"\x00\x06", b"\x00\x05", 1))
    with pytest.raises(RtcpError):
        parse_rtcp(bytes.fromhex("81ca0001 00000001"))  # SDES chunk without its terminator
    # a padded RR (P bit, 4 octets of padding)
    padded = bytes.fromhex("a1c90008") + RtcpReceiverReport(5, [ReportBlock(6)]).serialize()[4:] + bytes.fromhex("00000004")
    parsed = parse_rtcp(padded)
    assert parsed == [RtcpReceiverReport(5, [ReportBlock(6)])]


def test_aiortc_parses_our_rtcp():
    stats = ReceiveStats()
    _feed(stats, [1, 2, 4, 5], ssrc=0xCAFE)
    ntp = ntp_timestamp(1_750_000_000.5)
    sender = (ntp, 48000, 10, 1600)
    data = build_compound(0xBEEF, "wacall", stats=stats, now=1.0, sender=sender, bye=True)
    sr, sdes, bye = artp.RtcpPacket.parse(data)
    assert isinstance(sr, artp.RtcpSrPacket) and sr.ssrc == 0xBEEF
    assert sr.sender_info.ntp_timestamp == ntp and sr.sender_info.rtp_timestamp == 48000
    assert (sr.sender_info.packet_count, sr.sender_info.octet_count) == (10, 1600)
    (report,) = sr.reports
    assert report.ssrc == 0xCAFE and report.packets_lost == 1 and report.highest_sequence == 5
    assert report.fraction_lost == (1 << 8) // 5
    assert sdes.chunks[0].ssrc == 0xBEEF and sdes.chunks[0].items == [(1, b"wacall")]
    assert bye.sources == [0xBEEF]
    rr = artp.RtcpPacket.parse(build_rr(0xBEEF, stats, now=2.0).serialize())[0]
    assert isinstance(rr, artp.RtcpRrPacket) and rr.reports[0].fraction_lost == 0  # new interval


def test_we_parse_aiortc_rtcp():
    info = artp.RtcpReceiverInfo(ssrc=3, fraction_lost=12, packets_lost=-2, highest_sequence=65540, jitter=77, lsr=5, dlsr=6)
    sr = artp.RtcpSrPacket(ssrc=1, sender_info=artp.RtcpSenderInfo(ntp_timestamp=2**63 + 5, rtp_timestamp=9, packet_count=8, octet_count=7), reports=[info])
    rr = artp.RtcpRrPacket(ssrc=2, reports=[info])
    sdes = artp.RtcpSdesPacket(chunks=[artp.RtcpSourceInfo(ssrc=1, items=[(1, b"{abc}")])])
    bye = artp.RtcpByePacket(sources=[1])
    parsed = parse_rtcp(bytes(sr) + bytes(rr) + bytes(sdes) + bytes(bye))
    block = ReportBlock(3, 12, -2, 65540, 77, 5, 6)
    assert parsed == [
        RtcpSenderReport(1, 2**63 + 5, 9, 8, 7, [block]),
        RtcpReceiverReport(2, [block]),
        RtcpSdes([SdesChunk(1, [(1, b"{abc}")])]),
        RtcpBye([1]),
    ]


def test_report_block_lsr_dlsr():
    stats = ReceiveStats()
    _feed(stats, range(10), ssrc=4)
    ntp = ntp_timestamp(1_760_000_000.0)
    stats.on_sender_report(4, ntp, arrival_time=10.0)
    rr = build_rr(99, stats, now=10.5)
    (block,) = rr.reports
    assert block.lsr == ntp_middle32(ntp)
    assert block.dlsr == 32768  # 0.5 s in 1/65536 s
    assert block.highest_sequence == 9 and block.packets_lost == 0
    sr = build_sr(99, ntp, 1234, 5, 600, rr.reports)
    assert parse_rtcp(sr.serialize()) == [sr]
