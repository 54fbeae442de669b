"""The aiortc business media stack (wacall.testing.peer, the plugin's business media peer), proven against itself.

Two :class:`AiortcBusiness` peers on loopback: one offers (business-initiated shape), one answers
(user-initiated shape). They must connect over ICE + DTLS-SRTP, hear each other's tone, exchange
RFC 4733 digits on the audio SSRC and sequence space, advertise only 127.0.0.1 candidates and
telephone-event/8000, and honour a pinned SRTP profile. Nothing here talks to wacall.
"""

from __future__ import annotations

import asyncio
import math
import struct
import wave

import aioice.ice
import aiortc.rtcpeerconnection as aiortc_pc
import numpy as np
import pytest
from aiortc import RTCConfiguration, RTCPeerConnection
from aiortc.rtp import RtpPacket

from wacall.testing.peer import (
    AiortcBusiness,
    extensions_installed,
    loopback_only_sdp,
    sdp_candidate_addresses,
)


async def _call(offerer: AiortcBusiness, answerer: AiortcBusiness) -> tuple[str, str]:
    offer = await offerer.offer()
    answer = await answerer.answer(offer)
    await offerer.accept_answer(answer)
    await asyncio.gather(offerer.wait_connected(5), answerer.wait_connected(5))
    return offer, answer


def _assert_loopback_sdp(sdp: str) -> None:
    assert "\r\n" in sdp and "\n" not in sdp.replace("\r\n", "")
    addresses = sdp_candidate_addresses(sdp)
    assert addresses and set(addresses) == {"127.0.0.1"}, addresses
    assert "c=IN IP4 127.0.0.1" in sdp


def _spy_rtp(biz: AiortcBusiness) -> list[RtpPacket]:
    """Record every decrypted RTP packet arriving at ``biz`` (an instance attribute on its transport)."""
    transport = biz.pc.getTransceivers()[0].receiver.transport
    original = transport._handle_rtp_data
    seen: list[RtpPacket] = []

    async def spy(data: bytes, arrival_time_ms: int) -> None:
        seen.append(RtpPacket.parse(data))
        await original(data, arrival_time_ms=arrival_time_ms)

    transport._handle_rtp_data = spy
    return seen


async def test_two_aiortc_businesses_talk_tones_and_dtmf():
    a = AiortcBusiness(tone_hz=440.0)    # offers (business-initiated call shape)
    b = AiortcBusiness(tone_hz=1000.0)   # answers (user-initiated call shape)
    try:
        offer, answer = await _call(a, b)

        # SDP: loopback only, Opus 111, telephone-event/8000 on 126, actpass / active
        for sdp in (offer, answer):
            _assert_loopback_sdp(sdp)
            assert "a=rtpmap:111 opus/48000/2" in sdp
            assert "a=rtpmap:126 telephone-event/8000" in sdp
            assert "a=fmtp:126 0-15" in sdp
        assert "a=setup:actpass" in offer
        assert "a=setup:active" in answer
        assert a.dtmf_payload_type == b.dtmf_payload_type == 126
        assert a.negotiated_codecs[0] == b.negotiated_codecs[0] == "111 opus/48000/2"
        assert a.negotiated_codecs[-1] == "126 telephone-event/8000"

        # roles and SRTP
        assert a.connection_state == b.connection_state == "connected"
        assert (a.ice_role, b.ice_role) == ("controlling", "controlled")
        assert (a.dtls_role, b.dtls_role) == ("server", "client")
        assert a.srtp_profile == b.srtp_profile == "AEAD_AES_256_GCM"

        wire_at_b = _spy_rtp(b)
        await asyncio.gather(a.wait_received(1.0, 5), b.wait_received(1.0, 5))

        # DTMF both ways
        sent_a = a.send_dtmf("12#")
        sent_b = b.send_dtmf("0*")
        assert await b.wait_digits(3, timeout=5) == ["1", "2", "#"]
        assert await a.wait_digits(2, timeout=5) == ["0", "*"]
        assert await asyncio.wait_for(sent_a, 2) == "#"
        assert await asyncio.wait_for(sent_b, 2) == "*"
        assert a.sent_digits == ["1", "2", "#"] and b.sent_digits == ["0", "*"]
        assert [round(e.duration_ms) for e in b.received_dtmf] == [100, 100, 100]
        assert all(e.payload_type == 126 for e in b.received_dtmf)
        assert b.rx_dtmf_packets == a.tx_dtmf_packets == 3 * (5 + 3)

        # audio keeps flowing after the events (the decoder thread survived, the jitter buffer
        # did not stall on the event packets' sequence numbers)
        before = b.received_seconds
        await asyncio.sleep(0.8)
        assert b.received_seconds - before > 0.6
        assert a.remote_track_ended is False and b.remote_track_ended is False

        # each side's tone is what the other hears
        assert abs(b.dominant_frequency() - 440.0) < 5, b.dominant_frequency()
        assert abs(a.dominant_frequency() - 1000.0) < 5, a.dominant_frequency()
        assert b.tone_power(440.0) > 0.8 and b.tone_power(1000.0) < 0.05
        assert a.tone_power(1000.0) > 0.8 and a.tone_power(440.0) < 0.05
        assert abs(b.dominant_frequency(last_seconds=0.5) - 440.0) < 5
        pcm = b.received_pcm()
        assert pcm.dtype == np.int16 and pcm.ndim == 1 and pcm.size == round(b.received_seconds * 48000)
        assert -20 < b.rms_dbfs() < -8  # tone at 0.3 of full scale is about -13.5 dBFS

        # wire level at b: one SSRC, one gap-free sequence space shared by audio and events, event
        # timestamps on the audio timeline, marker on the first event packet, three end packets
        ssrcs = {p.ssrc for p in wire_at_b}
        assert len(ssrcs) == 1
        seqs = [p.sequence_number for p in wire_at_b]
        assert all((y - x) & 0xFFFF == 1 for x, y in zip(seqs, seqs[1:])), "sequence gap or reorder"
        events = [p for p in wire_at_b if p.payload_type == 126]
        assert len(events) == 24
        audio = [p for p in wire_at_b if p.payload_type == 111]
        audio_ts = {p.timestamp for p in audio}
        onsets = sorted({p.timestamp for p in events})
        assert len(onsets) == 3
        first_audio_ts = audio[0].timestamp
        for onset in onsets:
            assert (onset - first_audio_ts) % 960 == 0  # on the 20 ms audio grid
            assert onset not in audio_ts               # audio suppressed while the event plays
            group = [p for p in events if p.timestamp == onset]
            flags = [struct.unpack("!BBH", p.payload[:4]) for p in group]
            assert group[0].marker == 1 and all(p.marker == 0 for p in group[1:])
            assert [d for _, _, d in flags] == [160, 320, 480, 640, 800, 800, 800, 800]
            assert [bool(f & 0x80) for _, f, _ in flags] == [False] * 5 + [True] * 3
    finally:
        await a.close()
        await b.close()


async def test_pinned_srtp_profile_is_negotiated():
    a = AiortcBusiness(tone_hz=440.0, srtp_profiles=["AES_CM_128_HMAC_SHA1_80"])
    b = AiortcBusiness(tone_hz=1000.0)
    try:
        await _call(a, b)
        assert a.srtp_profile == b.srtp_profile == "AES_CM_128_HMAC_SHA1_80"
        await asyncio.gather(a.wait_received(0.5, 5), b.wait_received(0.5, 5))
        a.send_dtmf("7")
        assert await b.wait_digits(1, timeout=3) == ["7"]
        assert abs(b.dominant_frequency() - 440.0) < 5
        assert abs(a.dominant_frequency() - 1000.0) < 5
    finally:
        await a.close()
        await b.close()


async def test_disjoint_srtp_pins_fail_the_call():
    a = AiortcBusiness(srtp_profiles=["AES_CM_128_HMAC_SHA1_80"])
    b = AiortcBusiness(srtp_profiles=["AEAD_AES_128_GCM"])
    try:
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            await _call(a, b)
        assert "connected" not in (a.connection_state, b.connection_state)
    finally:
        await a.close()
        await b.close()


async def test_answer_to_ice_lite_offer_is_controlling_and_active():
    """Meta's relay is ICE-lite: aiortc then takes ICE control and answers setup:active."""
    meta_like = AiortcBusiness()
    biz = AiortcBusiness()
    try:
        offer = await meta_like.offer()
        lines = offer.split("\r\n")
        lines.insert(lines.index("t=0 0") + 1, "a=ice-lite")
        answer = await biz.answer("\r\n".join(lines))
        assert biz.ice_role == "controlling"
        assert biz.dtls_role == "client"
        assert "a=setup:active" in answer
        _assert_loopback_sdp(answer)
    finally:
        await meta_like.close()
        await biz.close()


async def test_wav_source(tmp_path):
    path = tmp_path / "tone440.wav"
    t = np.arange(48000) / 48000.0
    pcm = (0.3 * 32767 * np.sin(2 * math.pi * 440.0 * t)).astype("<i2")
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(48000)
        w.writeframes(pcm.tobytes())

    a = AiortcBusiness(wav_path=str(path))
    b = AiortcBusiness(tone_hz=1000.0)
    try:
        await _call(a, b)
        await b.wait_received(1.2, 5)
        assert abs(b.dominant_frequency() - 440.0) < 5
        assert b.tone_power(440.0) > 0.8
    finally:
        await a.close()
        await b.close()


async def test_extensions_are_scoped_and_reversible():
    assert not extensions_installed()
    original_gather = aioice.ice.get_host_addresses
    original_codecs = aiortc_pc.CODECS
    biz = AiortcBusiness()
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    try:
        assert extensions_installed()
        assert aioice.ice.get_host_addresses is not original_gather
        # another aiortc peer in the same process, while ours is alive, sees aiortc unchanged
        plain.addTransceiver("audio")
        offer = await plain.createOffer()
        assert "telephone-event" not in offer.sdp
        assert "a=rtpmap:96 opus/48000/2" in offer.sdp
        assert "127.0.0.1" not in aioice.ice.get_host_addresses(use_ipv4=True, use_ipv6=False)
        ours = await biz.offer()
        assert "telephone-event/8000" in ours and set(sdp_candidate_addresses(ours)) == {"127.0.0.1"}
    finally:
        await plain.close()
        await biz.close()
    assert not extensions_installed()
    assert aioice.ice.get_host_addresses is original_gather
    assert aiortc_pc.CODECS is original_codecs


def test_rejects_bad_arguments():
    with pytest.raises(ValueError):
        AiortcBusiness(srtp_profiles=["NOPE"])
    assert not extensions_installed()


async def test_telephone_event_follows_the_offered_payload_type():
    a = AiortcBusiness(tone_hz=440.0)
    b = AiortcBusiness(tone_hz=1000.0)
    try:
        offer = await a.offer()
        offer_101 = (
            offer.replace(" 8 126\r\n", " 8 101\r\n")
            .replace("a=rtpmap:126 ", "a=rtpmap:101 ")
            .replace("a=fmtp:126 ", "a=fmtp:101 ")
        )
        assert "a=rtpmap:101 telephone-event/8000" in offer_101
        answer = await b.answer(offer_101)
        assert "a=rtpmap:101 telephone-event/8000" in answer and "126" not in answer.split("m=")[1].split("\r\n")[0]
        await a.accept_answer(answer)
        await asyncio.gather(a.wait_connected(5), b.wait_connected(5))
        assert a.dtmf_payload_type == b.dtmf_payload_type == 101
        await asyncio.gather(a.wait_received(0.3, 5), b.wait_received(0.3, 5))
        b.send_dtmf("5")
        a.send_dtmf("9")
        assert await a.wait_digits(1, timeout=3) == ["5"]
        assert await b.wait_digits(1, timeout=3) == ["9"]
        assert a.received_dtmf[0].payload_type == b.received_dtmf[0].payload_type == 101
    finally:
        await a.close()
        await b.close()


async def test_send_dtmf_needs_negotiated_telephone_event():
    """A plain aiortc offer has no telephone-event: nothing to send DTMF with."""
    plain = RTCPeerConnection(RTCConfiguration(iceServers=[]))
    biz = AiortcBusiness()
    try:
        plain.addTransceiver("audio")
        await plain.setLocalDescription(await plain.createOffer())
        # drop the plain peer's (non-loopback) candidates: no traffic leaves loopback
        answer = await biz.answer(loopback_only_sdp(plain.localDescription.sdp))
        assert "telephone-event" not in answer
        assert biz.dtmf_payload_type is None
        with pytest.raises(RuntimeError):
            biz.send_dtmf("1")
        with pytest.raises(ValueError):
            biz.send_dtmf("1x")
    finally:
        await plain.close()
        await biz.close()
