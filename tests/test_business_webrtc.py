"""wacall.business.webrtc.WhatsAppLeg, the business library's WebRTC leg, on its own (no bridge, no aiortc):
a business answers a virtual user's call with it (pre_accept, then accept with its SDP), the leg connects
(ICE controlling, DTLS client) and the business hears the user's tone, decoded from the Opus packets it got."""

from __future__ import annotations

import asyncio
import struct

import numpy as np

from test_business_library import ALICE, graph_for, receiver_for
from wacall.business import Call
from wacall.business.webrtc import WhatsAppLeg
from wacall.media.audio import OpusDecoder, OpusEncoder, dominant_frequency


async def test_a_business_answers_a_user_call_with_whatsapp_leg_and_hears_the_tone(wa):
    packets: list[bytes] = []
    legs: dict[str, WhatsAppLeg] = {}
    heard = asyncio.Event()

    def on_rtp(rtp: bytes) -> None:
        packets.append(rtp)
        if len(packets) >= 60:
            heard.set()

    async with graph_for(wa) as graph:
        async def on_connect(call: Call) -> None:
            leg = legs[call.call_id] = WhatsAppLeg(on_rtp=on_rtp, name=call.call_id)
            answer = await leg.answer(call.sdp or "")
            assert "a=setup:active" in answer and "a=ice-lite" not in answer
            await graph.pre_accept(call.call_id, answer)
            await graph.accept(call.call_id, answer)

        receiver = await receiver_for(wa, on_connect=on_connect)
        try:
            call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
            await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED")
            leg = legs[call_id]
            await leg.wait_connected(30)
            speaking = asyncio.get_running_loop().create_task(_speak(leg))   # the business's own audio (700 Hz)
            try:
                await asyncio.wait_for(heard.wait(), 30)
            finally:
                speaking.cancel()
                await asyncio.gather(speaking, return_exceptions=True)
            stats = leg.stats()
            assert stats["connected"] and stats["from_whatsapp"] >= 60 and stats["failed"] is None
            audio = [p for p in packets if p[1] & 0x7F == leg.audio_pt]
            dec = OpusDecoder()
            pcm = np.concatenate([dec.decode(p[12:]) for p in audio[:50]])[48000 // 10:]
            assert abs(dominant_frequency(pcm, 48000) - 440) < 15          # Alice's default tone
            await graph.terminate(call_id)
        finally:
            for leg in legs.values():
                await leg.close()
            await receiver.stop()


async def _speak(leg: WhatsAppLeg) -> None:
    """20 ms Opus frames of 700 Hz through ``leg.send`` (RTP header ours: our SSRC, the SDP's payload type)."""
    enc, t, seq = OpusEncoder(), np.arange(960) / 48000, 0
    ssrc = struct.unpack("!I", leg.ssrc)[0]
    while True:
        pcm = (np.sin(2 * np.pi * 700 * (t + seq * 0.02)) * 8000).astype(np.int16)
        leg.send(struct.pack("!BBHII", 0x80, leg.audio_pt, seq & 0xFFFF, 960 * seq, ssrc) + enc.encode(pcm))
        seq += 1
        await asyncio.sleep(0.02)


async def test_wait_connected_raises_once_the_leg_failed_and_send_holds_media():
    from wacall.business.webrtc import WebRtcError
    failures: list[tuple[str, str]] = []
    leg = WhatsAppLeg(name="c", on_failure=lambda name, reason: failures.append((name, reason)))
    assert leg.send(b"\x80\x6f" + bytes(10)) is False                  # held: not keyed yet
    waiting = asyncio.get_running_loop().create_task(leg.wait_connected(5))
    await asyncio.sleep(0)
    leg._dtls_expired()
    try:
        await waiting
        raise AssertionError("wait_connected returned on a failed leg")
    except WebRtcError as exc:
        assert "DTLS handshake timed out" in str(exc)
    assert failures == [("c", leg.failed)] and leg.stats()["failed"] == leg.failed
    await leg.close()


async def test_short_and_junk_datagrams_on_the_whatsapp_port_are_dropped():
    """What arrives on the ICE port after the pair is chosen is noise until it is RTP or DTLS: an empty or
    one-byte datagram, or a truncated RTP header, is dropped (no IndexError in the datagram handler)."""
    leg = WhatsAppLeg(name="c")
    got: list[bytes] = []
    leg.on_rtp = got.append
    for junk in (b"", b"\x80", b"\x80\x6f", b"\x16\xfe\xfd", bytes(11), b"\x80\x6f" + bytes(9)):
        leg.from_whatsapp(junk, ("127.0.0.1", 9))
    assert got == [] and leg.stats()["from_whatsapp"] == 0
    await leg.close()
