"""RFC 4733 telephone events: payload layout, sender on the shared audio stream, receiver dedup."""

from __future__ import annotations

import pytest

from wacall.media.dtmf import (
    DtmfDigit,
    DtmfError,
    DtmfEvent,
    DtmfReceiver,
    DtmfSender,
    RtpStreamState,
    digit_to_event,
    event_to_digit,
)
from wacall.media.rtp import RtpPacket


def test_digit_event_mapping():
    assert [digit_to_event(d) for d in "0123456789*#ABCD"] == list(range(16))
    assert digit_to_event("a") == 12
    assert event_to_digit(11) == "#"
    for bad in ("E", "", "12", "x"):
        with pytest.raises(DtmfError):
            digit_to_event(bad)
    with pytest.raises(DtmfError):
        event_to_digit(16)


def test_payload_layout_rfc4733_section_2_3():
    # event=# (11), E=1, R=0, volume=10, duration=800 (100 ms at 8 kHz)
    data = DtmfEvent(11, end=True, volume=10, duration=800).encode()
    assert data == bytes([11, 0b1000_1010, 0x03, 0x20])
    # bit by bit: event octet, then E | R | 6-bit volume, then 16-bit duration, network order
    assert data[0] == 11
    assert data[1] >> 7 == 1 and (data[1] >> 6) & 1 == 0 and data[1] & 0x3F == 10
    assert int.from_bytes(data[2:4], "big") == 800
    assert DtmfEvent(1, volume=63, duration=65535).encode() == bytes([1, 63, 0xFF, 0xFF])


def test_payload_decode_ignores_r_bit_and_extra_bytes():
    ev = DtmfEvent.decode(bytes([5, 0b1100_0111, 0x01, 0x40, 9, 9, 9, 9]))
    assert ev == DtmfEvent(5, end=True, volume=7, duration=320)
    assert ev.digit == "5"
    with pytest.raises(DtmfError):
        DtmfEvent.decode(b"\x01\x02")
    for bad in (DtmfEvent(1, volume=64), DtmfEvent(1, duration=65536), DtmfEvent(256)):
        with pytest.raises(DtmfError):
            bad.encode()


def _play(state: RtpStreamState, sender: DtmfSender, ticks: int, audio_pt: int = 111):
    """A media loop: DTMF packets when an event plays, audio otherwise; timestamp advances per tick."""
    out: list[RtpPacket] = []
    for _ in range(ticks):
        packets = sender.tick()
        if not packets:
            packets = [state.packet(audio_pt, b"opus")]
        out += packets
        state.advance()
    return out


def test_sender_packets_share_audio_sequence_and_timestamp():
    state = RtpStreamState(ssrc=0x1234, sequence_number=65533, timestamp=0xFFFFFC00)
    sender = DtmfSender(state, duration_ms=100, gap_ms=40)
    sender.send("5")
    packets = _play(state, sender, 8)
    # one continuous sequence space across audio and events, with wrap-around
    seqs = [p.sequence_number for p in packets]
    assert seqs == [(65533 + i) & 0xFFFF for i in range(len(packets))]
    assert {p.ssrc for p in packets} == {0x1234}
    events = [p for p in packets if p.payload_type == 126]
    assert len(events) == 4 + 3  # updates at 20, 40, 60, 80 ms, then three end packets
    assert events[0].marker and not any(p.marker for p in events[1:])
    assert {p.timestamp for p in events} == {0xFFFFFC00}  # onset = the audio timestamp then
    decoded = [DtmfEvent.decode(p.payload) for p in events]
    assert [d.duration for d in decoded] == [160, 320, 480, 640, 800, 800, 800]
    assert [d.end for d in decoded] == [False] * 4 + [True] * 3
    assert {d.event for d in decoded} == {5} and {d.volume for d in decoded} == {10}
    # audio resumes on the 48 kHz timeline: 5 ticks of event, then the next frame's timestamp
    audio_after = [p for p in packets if p.payload_type == 111]
    assert audio_after[0].timestamp == (0xFFFFFC00 + 5 * 960) & 0xFFFFFFFF
    assert state.packet_count == len(packets)


def test_send_rejects_bad_digits_and_long_events():
    sender = DtmfSender(RtpStreamState(ssrc=1))
    with pytest.raises(DtmfError):
        sender.send("12x")
    assert not sender.busy
    with pytest.raises(DtmfError):
        sender.digit_packets("1", duration_ms=9000)  # 72000 units > 16 bits


def test_round_trip_12_hash():
    state = RtpStreamState.random(ssrc=77)
    sender = DtmfSender(state)
    receiver = DtmfReceiver()
    sender.send("12#")
    got: list[DtmfDigit] = []
    ticks = 0
    while sender.busy:
        for pkt in _play(state, sender, 1):
            got += receiver.receive(RtpPacket.parse(pkt.serialize()), arrival_time=ticks * 0.02)
        ticks += 1
    assert [g.digit for g in got] == ["1", "2", "#"]
    assert [g.duration_ms for g in got] == [100.0, 100.0, 100.0]
    assert len({g.timestamp for g in got}) == 3
    assert ticks == 3 * 5 + 2 * 3 + 3  # 5 ticks per digit, 60 ms gaps (3 ticks) after each
    assert receiver.flush() == []


def _digit_packets(digit="7", ts=48000, seq=100, duration_ms=60):
    state = RtpStreamState(ssrc=1, sequence_number=seq, timestamp=ts)
    packets = []
    for tick in DtmfSender(state).digit_packets(digit, duration_ms):
        packets += tick
        state.advance()
    return packets


def test_receiver_dedupes_end_packets_and_ignores_late_updates():
    rx = DtmfReceiver()
    packets = _digit_packets()
    results = [rx.receive(p) for p in packets]
    assert [r for r in results if r] == [[DtmfDigit("7", 60.0, 48000)]]
    # retransmissions and a late update of the same event change nothing
    assert rx.receive(packets[-1]) == [] and rx.receive(packets[0]) == []
    assert rx.digits == [DtmfDigit("7", 60.0, 48000)]
    assert rx.ignored_packets == 4


def test_receiver_lost_start_and_lost_end():
    rx = DtmfReceiver()
    first = _digit_packets("1", ts=1000)
    assert [d for p in first[1:] for d in rx.receive(p)] == [DtmfDigit("1", 60.0, 1000)]  # start lost
    # all three end packets of "2" lost: reported when "3" begins
    second = [p for p in _digit_packets("2", ts=20000, duration_ms=100) if not DtmfEvent.decode(p.payload).end]
    third = _digit_packets("3", ts=40000)
    out = [d for p in second for d in rx.receive(p)]
    assert out == []
    out = rx.receive(third[0])
    assert out == [DtmfDigit("2", 80.0, 20000)]
    out = [d for p in third[1:] for d in rx.receive(p)]
    assert out == [DtmfDigit("3", 60.0, 40000)]
    # a lone update whose end never arrives: reported by poll() after the timeout, or flush()
    fourth = _digit_packets("4", ts=60000)
    assert rx.receive(fourth[0], arrival_time=5.0) == []
    assert rx.poll(5.5) == []
    assert rx.poll(6.0) == [DtmfDigit("4", 20.0, 60000)]
    assert rx.receive(fourth[-1]) == []  # its end arriving later is a duplicate now
    assert rx.flush() == []


def test_receiver_ignores_other_payload_types_and_garbage():
    rx = DtmfReceiver(payload_type=101)
    assert rx.receive(RtpPacket(payload_type=111, payload=b"\x01\x80\x00\xa0")) == []
    assert rx.receive(RtpPacket(payload_type=101, payload=b"\x01")) == []
    assert rx.ignored_packets == 1
    tone = RtpPacket(payload_type=101, timestamp=5, payload=DtmfEvent(70, end=True, duration=160).encode())
    assert rx.receive(tone) == []  # a non-DTMF event (RFC 4734 tone) is consumed silently


def test_single_tick_event_and_custom_clock():
    state = RtpStreamState(ssrc=1, timestamp=0)
    sender = DtmfSender(state, event_clock_rate=48000, end_repeats=2)
    (tick,) = list(sender.digit_packets("9", duration_ms=20))
    assert len(tick) == 2 and tick[0].marker and not tick[1].marker
    assert DtmfEvent.decode(tick[0].payload) == DtmfEvent(9, True, 10, 960)
    rx = DtmfReceiver(event_clock_rate=48000)
    assert rx.receive(tick[0]) == [DtmfDigit("9", 20.0, 0)]
