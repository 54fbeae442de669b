"""MediaEngine / MediaLeg: real UDP sockets on loopback, credentials, lifecycle; aiortc interop."""

from __future__ import annotations

import asyncio
import base64
import re
import socket

import pytest

from wacall.media.certificate import DtlsCertificate
from wacall.media.engine import MediaEngine
from wacall.media.sdp import build_meta_offer, validate_business_sdp


@pytest.fixture
async def engine():
    eng = MediaEngine()
    yield eng
    await eng.close()


async def test_allocate_gives_fresh_credentials(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    other = await engine.allocate("wacid.B")
    assert leg.call_id == "wacid.A" and leg.host == "127.0.0.1"
    assert 0 < leg.port < 65536 and leg.port != other.port
    assert re.fullmatch(r"[A-Za-z0-9+/]{4,256}", leg.ice_ufrag)
    assert re.fullmatch(r"[A-Za-z0-9+/]{22,256}", leg.ice_pwd)
    assert leg.ice_ufrag != other.ice_ufrag and leg.ice_pwd != other.ice_pwd
    assert 0 <= leg.ssrc < 2**32
    assert len(base64.b64decode(leg.sdes_key_b64, validate=True)) == 30
    assert leg.fingerprint == engine.certificate.fingerprint == DtlsCertificate.default().fingerprint
    assert engine.get("wacid.A") is leg and engine.get("nope") is None
    assert len(engine) == 2


async def test_engine_uses_given_certificate() -> None:
    cert = DtlsCertificate.generate()
    eng = MediaEngine(certificate=cert)
    try:
        leg = await eng.allocate("c")
        assert leg.fingerprint == cert.fingerprint
        assert f"a=fingerprint:sha-256 {cert.fingerprint}\r\n" in build_meta_offer(leg)
    finally:
        await eng.close()


async def test_allocate_is_idempotent_per_call(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    assert await engine.allocate("wacid.A") is leg


async def _wait_for(predicate, timeout: float = 1.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not predicate():
        if loop.time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.005)


async def test_leg_port_receives_datagrams(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        sender.sendto(b"\x80" + bytes(171), ("127.0.0.1", leg.port))
        sender.sendto(b"hello", ("127.0.0.1", leg.port))
        await _wait_for(lambda: leg.packets_received == 2)
        assert leg.bytes_received == 172 + 5
        assert leg.last_remote_addr == sender.getsockname()


async def test_release_closes_socket_and_is_idempotent(engine: MediaEngine) -> None:
    leg = await engine.allocate("wacid.A")
    port = leg.port
    assert leg.is_open
    engine.release("wacid.A")
    engine.release("wacid.A")
    engine.release("never-allocated")
    assert not leg.is_open and engine.get("wacid.A") is None
    await asyncio.sleep(0)
    # The port is free again: binding it proves the socket was really closed.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", port))
    # A new allocation for the same call gets a new leg.
    again = await engine.allocate("wacid.A")
    assert again is not leg and again.is_open


async def test_close_releases_everything() -> None:
    eng = MediaEngine()
    legs = [await eng.allocate(f"c{i}") for i in range(3)]
    await eng.close()
    assert len(eng) == 0 and not any(leg.is_open for leg in legs)


async def test_aiortc_accepts_meta_offer_and_answers_validly(engine: MediaEngine) -> None:
    import aiortc  # installed by the test extras; never skipped
    leg = await engine.allocate("wacid.UIC")
    offer = build_meta_offer(leg)
    pc = aiortc.RTCPeerConnection(aiortc.RTCConfiguration(iceServers=[]))
    try:
        await pc.setRemoteDescription(aiortc.RTCSessionDescription(sdp=offer, type="offer"))
        await pc.setLocalDescription(await pc.createAnswer())
        answer = pc.localDescription.sdp
        # aiortc already emits CRLF line endings, so its SDP goes to the validator unchanged.
        sd = validate_business_sdp(answer, role="answer")
        audio = sd.audio
        assert audio is not None
        # aiortc sees a=ice-lite, becomes ICE controlling and DTLS client, as Meta asks.
        assert audio.attribute("setup") == "active"
        assert audio.find_codec("opus", 48000, 2) == 111
        assert audio.attribute("mid") == "audio"
    finally:
        await pc.close()
