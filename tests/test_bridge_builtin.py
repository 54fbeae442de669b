"""``wacall bridge`` in builtin media mode, end to end on loopback: the bridge terminates Meta's WebRTC leg itself
(ICE full agent controlling, DTLS client, DTLS-SRTP) and relays to the PBX in plain RTP or SDES. The chain is that
of tests/test_bridge_rtpengine*.py without RtpEngine: wacall as Meta (a virtual user with WebRTC media playing
440 Hz), the bridge as a subprocess, Kamailio as the PBX and baresip as the agent's phone (1000 Hz). Audio is
checked by frequency both ways, digits by what each side reports, hang-ups on each side."""

from __future__ import annotations

import asyncio
import os
import re
import struct

import numpy as np
import pytest

from support.bridge_tools import bridge_toml as tools_bridge_toml
from support.bridge_tools import wait_logged as _logged
from support.bridge_tools import (agent_calls_user, agent_heard_the_user, bridge_chain, pbx_sip, user_call_answered,
                                  user_heard_the_agent)
from support.bridge_tools import (PCMU_ONLY, AgentPhone, PbxKamailio, digits_heard_by_user,
                                  user_sends_digits)
from wacall.bridge.builtin import _Relay, parse_sdp
from wacall.media.audio import OpusDecoder, OpusEncoder, dominant_frequency
from wacall.media.certificate import DtlsCertificate
from wacall.media.g711 import alaw_decode, alaw_encode, ulaw_decode, ulaw_encode
from wacall.media.srtp import AES_CM_128_HMAC_SHA1_80, SrtpContext

ALICE = "447700900001"
DOMAIN = "pbx.example.com"


def bridge_toml(wa, pbx: PbxKamailio, media: str = "") -> str:
    return tools_bridge_toml(wa.info, sip=pbx_sip(pbx), media=f'mode = "builtin"\nrtp_host = "127.0.0.1"\n{media}')


@pytest.fixture
async def chain(wa, tmp_path, request):
    """wacall (Alice plays 440 Hz), the PBX, the agent's phone (1000 Hz) and the bridge in builtin mode. Indirect
    parameter: ``{"agent": {AgentPhone keyword arguments}, "media": "more [media] lines"}``."""
    param = getattr(request, "param", None) or {}
    async with bridge_chain(wa, tmp_path, lambda pbx, _: bridge_toml(wa, pbx, param.get("media", "")),
                            rtpengine=False, agent=param.get("agent")) as (agent, bridge, _, _):
        yield wa, agent, bridge


async def _agent_hangs_up(wa, agent: AgentPhone, bridge, call_id: str) -> None:
    await agent.hangup()                                       # BYE from the PBX → Graph terminate
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    await asyncio.sleep(0.3)                                   # baresip closes its recording
    await _logged(bridge, "BYE from the PBX")


async def _user_hangs_up(wa, agent: AgentPhone, bridge, call_id: str) -> None:
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await agent.wait_event("CALL_CLOSED", 10)                  # terminate webhook → BYE to the PBX
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "user", ended
    await asyncio.sleep(0.3)
    await _logged(bridge, "BYE to the PBX: 200")


async def _dtmf_both_ways(wa, agent: AgentPhone, call_id: str) -> None:
    await asyncio.to_thread(user_sends_digits, wa, call_id, "12#")
    assert await agent.wait_digits(3) == "12#", "the agent's phone gets every digit the user pressed"
    await agent.send_dtmf("9*")
    assert await asyncio.to_thread(digits_heard_by_user, wa, call_id, 2) == "9*", "the user gets the agent's digits"


def _media_line(bridge) -> str:
    return next(line for line in bridge.log_text().splitlines() if "media " in line and "PBX RTP" in line)


async def test_user_calls_the_agent_opus_end_to_end_dtmf_both_ways_agent_hangs_up(chain):
    wa, agent, bridge = chain
    call_id = await user_call_answered(wa, agent)
    await user_heard_the_agent(wa, call_id)
    assert "opus passed through" in _media_line(bridge)
    log = bridge.log_text()
    assert "ICE connected" in log and "DTLS-SRTP keyed" in log
    assert "nominating pair" in log, "regular nomination: a check, then USE-CANDIDATE on the pair (aioice's log)"
    [answer] = re.findall(r"SDP toward WhatsApp:\n(.*?)\n\n", log, re.S)
    assert "a=setup:active" in answer and "a=ice-lite" not in answer and "a=fingerprint:sha-256 " in answer
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    agent_heard_the_user(agent)
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+ ended \(pbx\)", bridge.log_text())


async def test_agent_calls_the_user_opus_end_to_end_dtmf_both_ways_user_hangs_up(chain):
    wa, agent, bridge = chain
    call_id = await agent_calls_user(wa, agent)
    await user_heard_the_agent(wa, call_id)
    assert "opus passed through" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _user_hangs_up(wa, agent, bridge, call_id)
    agent_heard_the_user(agent)


G711_PHONE = {"agent": {"audio_codecs": PCMU_ONLY}}


@pytest.mark.parametrize("chain", [G711_PHONE], indirect=True)
async def test_a_phone_without_opus_is_transcoded_to_pcmu_both_directions_of_media_and_dtmf(chain):
    """The phone speaks PCMU only: the bridge transcodes (Opus ⇄ PCMU), Meta's leg stays Opus, digits pass both
    ways with their payload types and clocks mapped; the user hangs up."""
    wa, agent, bridge = chain
    call_id = await user_call_answered(wa, agent)
    await user_heard_the_agent(wa, call_id)
    assert "PCMU transcoded" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _user_hangs_up(wa, agent, bridge, call_id)
    assert agent.sample_rate == 8000
    agent_heard_the_user(agent)


@pytest.mark.parametrize("chain", [G711_PHONE], indirect=True)
async def test_a_phone_without_opus_calls_a_user_transcoded(chain):
    wa, agent, bridge = chain
    call_id = await agent_calls_user(wa, agent)
    await user_heard_the_agent(wa, call_id)
    assert "PCMU transcoded" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    agent_heard_the_user(agent)


SRTP_PHONE = {"agent": {"srtp": True}, "media": 'pbx_protocol = "RTP/SAVP"'}


@pytest.mark.parametrize("chain", [SRTP_PHONE], indirect=True)
async def test_sdes_srtp_toward_the_pbx(chain):
    wa, agent, bridge = chain
    call_id = await user_call_answered(wa, agent)
    assert "AES_CM_128_HMAC_SHA1_80" in (await agent.wait_event("CALL_MENC", 10)).param
    await user_heard_the_agent(wa, call_id)
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    agent_heard_the_user(agent)


@pytest.mark.parametrize("chain", [{"agent": {"srtp": True}}], indirect=True)
async def test_an_sdes_phone_calls_a_user_and_is_answered_in_its_own_profile(chain):
    """Business-initiated: the phone offers RTP/SAVP with a=crypto; the bridge (configured RTP/AVP) answers SDES."""
    wa, agent, bridge = chain
    call_id = await agent_calls_user(wa, agent)
    assert "AES_CM_128_HMAC_SHA1_80" in (await agent.wait_event("CALL_MENC", 10)).param
    await user_heard_the_agent(wa, call_id)
    await _user_hangs_up(wa, agent, bridge, call_id)
    agent_heard_the_user(agent)


def test_the_sdp_reader_takes_what_the_relay_needs():
    sdp = parse_sdp("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\nm=video 5000 RTP/AVP 96\r\n")
    assert (sdp.address, sdp.port, sdp.proto, sdp.payloads) == ("10.0.0.1", 4000, "RTP/AVP", [0, 101])
    assert sdp.pt("pcmu", 8000) == 0 and sdp.pt("telephone-event", 8000) == 101 and sdp.pt("opus", 48000) is None
    assert sdp.crypto == [("1", "AES_CM_128_HMAC_SHA1_80", "inline:abc")]


# -- the relay's per-packet rewriting, without sockets ------------------------------------------------------
class _Capture:
    def __init__(self) -> None:
        self.sent: list[bytes] = []

    def sendto(self, data: bytes, addr=None) -> None:
        self.sent.append(data)

    def close(self) -> None:
        pass


def _relay(codec: str, pbx_audio: int, pbx_event: int | None, wa_audio: int = 111, wa_event: int | None = 126):
    relay = _Relay("t", "127.0.0.1", "RTP/AVP", DtlsCertificate.default())
    ours, metas = os.urandom(30), os.urandom(30)
    meta = SrtpContext(AES_CM_128_HMAC_SHA1_80, metas, ours)
    relay.plan(codec, pbx_audio, pbx_event, wa_audio, wa_event)
    relay.pbx.transport, relay.pbx_remote = _Capture(), ("127.0.0.1", 9)
    assert relay.wa_srtp is None
    relay.from_pbx(_rtp(pbx_audio, 1, 160, 0x99, bytes(160)), None)    # media held until DTLS has keyed the leg
    relay.wa_srtp = SrtpContext(AES_CM_128_HMAC_SHA1_80, ours, metas)
    relay.wa_transport, relay.wa_remote = _Capture(), ("127.0.0.1", 9)
    return relay, meta


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def test_opus_passes_through_with_payload_types_mapped_and_one_ssrc_toward_whatsapp():
    relay, meta = _relay("opus", 96, 101)
    event = bytes([1, 0x0A, 0, 160])                                # digit 1, volume 10, duration 160
    relay.from_whatsapp(meta.protect(_rtp(111, 7, 48000, 0x1234, b"opus-frame")), None)
    relay.from_whatsapp(meta.protect(_rtp(126, 8, 48960, 0x1234, event, marker=True)), None)
    relay.from_whatsapp(meta.protect(_rtp(0, 9, 49920, 0x1234, bytes(160))), None)     # not negotiated: dropped
    assert relay.pbx.transport.sent == [_rtp(96, 7, 48000, 0x1234, b"opus-frame"),
                                        _rtp(101, 8, 48960, 0x1234, event, marker=True)]
    relay.from_pbx(_rtp(96, 50, 960, 0x99, b"agent-frame"), None)
    relay.from_pbx(_rtp(101, 51, 1920, 0x99, event, marker=True), None)
    relay.from_pbx(bytes([0x80, 200]) + bytes(26), None)            # RTCP: not relayed
    ssrc = int.from_bytes(relay.ssrc, "big")
    assert [meta.unprotect(p) for p in relay.wa_transport.sent] == [
        _rtp(111, 50, 960, ssrc, b"agent-frame"), _rtp(126, 51, 1920, ssrc, event, marker=True)]


@pytest.mark.parametrize("law", ["PCMU", "PCMA"])
def test_g711_is_transcoded_and_events_keep_the_audio_timebase_scaled_6_to_1(law):
    static = 0 if law == "PCMU" else 8
    encode, decode = (ulaw_encode, ulaw_decode) if law == "PCMU" else (alaw_encode, alaw_decode)
    relay, meta = _relay(law, static, 101)
    enc, t = OpusEncoder(), np.arange(960) / 48000
    for i in range(25):                                              # 0.5 s of 440 Hz from the user
        pcm = (np.sin(2 * np.pi * 440 * (t + i * 0.02)) * 8000).astype(np.int16)
        relay.from_whatsapp(meta.protect(_rtp(111, i, 960 * i, 0x1234, enc.encode(pcm))), None)
    event = bytes([11, 0x8A, 1, 64])                                 # '#', end bit, duration 320 (8 kHz units)
    relay.from_whatsapp(meta.protect(_rtp(126, 25, 48000 * 3, 0x1234, event)), None)
    sent = relay.pbx.transport.sent
    assert [p[1] & 0x7F for p in sent] == [static] * 25 + [101]
    assert [int.from_bytes(p[4:8], "big") for p in sent] == [160 * i for i in range(25)] + [24000]
    assert all(len(p) == 12 + 160 for p in sent[:25]) and sent[25][12:] == event
    heard = np.concatenate([decode(p[12:]) for p in sent[5:25]])
    assert abs(dominant_frequency(heard, 8000) - 440) < 10
    t8 = np.arange(160) / 8000
    for i in range(25):                                              # 0.5 s of 1000 Hz from the agent
        pcm = (np.sin(2 * np.pi * 1000 * (t8 + i * 0.02)) * 8000).astype(np.int16)
        relay.from_pbx(_rtp(static, 100 + i, 160 * i, 0x99, encode(pcm)), None)
    relay.from_pbx(_rtp(101, 125, 4000, 0x99, event), None)
    got = [meta.unprotect(p) for p in relay.wa_transport.sent]
    assert [p[1] & 0x7F for p in got] == [111] * 25 + [126]
    assert [int.from_bytes(p[4:8], "big") for p in got] == [960 * i for i in range(25)] + [24000]
    dec = OpusDecoder()
    at_user = np.concatenate([dec.decode(p[12:]) for p in got[:25]])[48000 // 10:]
    assert abs(dominant_frequency(at_user, 48000) - 1000) < 10


def test_no_telephone_event_on_one_side_drops_events_both_ways():
    relay, meta = _relay("opus", 111, None)
    relay.from_whatsapp(meta.protect(_rtp(126, 1, 0, 0x1234, bytes(4))), None)
    relay.from_pbx(_rtp(101, 1, 0, 0x99, bytes(4)), None)
    assert relay.pbx.transport.sent == [] and relay.wa_transport.sent == []


class _Pair:
    remote_addr = ("127.0.0.1", 9)

    def __init__(self, answers) -> None:
        self.protocol, self.answers = self, answers

    async def request(self, request, addr, integrity_key=None, retransmissions=None):
        import aioice.stun
        await asyncio.sleep(0)
        if not self.answers():
            raise aioice.stun.TransactionError()


async def _consent(monkeypatch, answers) -> bool:
    """Runs the agent's RFC 7675 consent loop on a pair that answers when ``answers()``; True if consent held."""
    import wacall.business.webrtc as builtin
    monkeypatch.setattr(builtin, "CONSENT_INTERVAL", 0.01)
    monkeypatch.setattr(builtin, "CONSENT_TIMEOUT", 0.3)
    agent = builtin._Agent("127.0.0.1")
    agent.remote_password = "x" * 22
    agent._nominated = {1: _Pair(answers)}
    agent.build_request = lambda pair, nominate: object()
    closed = asyncio.Event()

    async def close():
        closed.set()
    agent.close = close
    task = asyncio.get_running_loop().create_task(agent.query_consent())
    try:
        await asyncio.wait_for(closed.wait(), 1.0)
        return False
    except asyncio.TimeoutError:
        return True
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)


async def test_consent_survives_unanswered_checks_within_30_s_and_expires_after(monkeypatch):
    """RFC 7675 section 5.1: consent is lost after 30 s (here 0.3 s) without any answer, not after a few checks
    unanswered in a row; a late answer keeps it."""
    import wacall.business.webrtc as builtin
    calls = {"n": 0}

    def every_fifth():
        calls["n"] += 1
        return calls["n"] % 5 == 0
    for answers, held in ((every_fifth, True), (lambda: False, False)):
        assert await _consent(monkeypatch, answers) is held
    assert builtin.CONSENT_TIMEOUT == 0.3


async def test_a_deleted_call_relays_nothing_more_either_way():
    """Packets already queued on either socket when the call is deleted go nowhere (no send on a closed socket)."""
    relay, meta = _relay("opus", 111, 126)
    wa = relay.wa_transport
    await relay.close()
    relay.from_whatsapp(meta.protect(_rtp(111, 1, 0, 0x1234, b"late")), None)
    relay.from_pbx(_rtp(111, 1, 0, 0x99, b"late"), None)
    assert relay.pbx.transport.sent == [] and wa.sent == []


async def test_mode_builtin_opens_the_builtin_media_path():
    from wacall.bridge.app import open_media
    from wacall.bridge.builtin import BuiltinMedia
    from wacall.bridge.config import build_bridge_config
    cfg = build_bridge_config({"graph": {"phone_number_id": "1065", "token": "EAA"},
                               "webhook": {"app_secret": "s", "verify_token": "v"},
                               "media": {"mode": "builtin", "rtp_host": "127.0.0.1", "pbx_protocol": "RTP/SAVP"}})
    media = open_media(cfg)
    assert isinstance(media, BuiltinMedia) and media.pbx_protocol == "RTP/SAVP"
    assert (await media.start()).startswith("builtin 127.0.0.1")
    with pytest.raises(Exception, match="no call"):
        await media.answer_to_whatsapp("nope", "v=0\r\nm=audio 4000 RTP/AVP 0\r\n", "tag")
    offer = await media.offer_to_pbx("c1", "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\n"
                                     "a=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n")
    pbx = parse_sdp(offer)
    counted = await media.stats("c1")
    assert (counted if isinstance(counted, dict) else vars(counted))["from_whatsapp"] == 0
    assert await media.stats("nope") is None
    assert pbx.proto == "RTP/SAVP" and pbx.payloads == [111, 0, 8, 126] and pbx.crypto[0][1] == "AES_CM_128_HMAC_SHA1_80"
    await media.delete("c1")
    assert media.calls == {}
    from wacall.bridge.media import NoCommonCodec
    with pytest.raises(NoCommonCodec):                               # G.722 only: the app answers the PBX 488
        await media.offer_to_whatsapp("c2", "v=0\r\nc=IN IP4 127.0.0.1\r\nm=audio 4000 RTP/AVP 9\r\n", "tag")
    assert media.calls == {}
    media.close()


# -- the WhatsApp leg failing: the bridge is told, and ends the call on both sides --------------------------------
_SILENT_OFFER = """v=0\r
o=- 1 2 IN IP4 127.0.0.1\r
s=-\r
t=0 0\r
a=ice-lite\r
m=audio {port} UDP/TLS/RTP/SAVPF 111 126\r
c=IN IP4 127.0.0.1\r
a=mid:0\r
a=ice-ufrag:silentpeer\r
a=ice-pwd:silentpeersilentpeersilentpeer\r
a=fingerprint:sha-256 {fp}\r
a=setup:actpass\r
a=rtpmap:111 opus/48000/2\r
a=rtpmap:126 telephone-event/8000\r
a=candidate:1 1 udp 2130706431 127.0.0.1 {port} typ host\r
"""
_PBX_ANSWER = "v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n" \
    "m=audio {port} RTP/AVP 111 126\r\na=rtpmap:111 opus/48000/2\r\na=rtpmap:126 telephone-event/8000\r\n"


async def test_ice_toward_a_peer_that_never_answers_reports_the_failure_once():
    """A WhatsApp candidate that swallows every check: no nominated pair within the ICE timeout (here 0.5 s) → the
    mode's on_failure gets (call, reason) once, and the call's relay is still deletable."""
    from wacall.bridge.builtin import BuiltinMedia
    loop = asyncio.get_running_loop()
    silent, _ = await loop.create_datagram_endpoint(asyncio.DatagramProtocol, local_addr=("127.0.0.1", 0))
    port = silent.get_extra_info("sockname")[1]
    media = BuiltinMedia("127.0.0.1")
    await media.start()
    media.ice_timeout = 0.5
    failures: list[tuple[str, str]] = []
    failed = asyncio.Event()
    media.on_failure = lambda call, reason: (failures.append((call, reason)), failed.set())
    try:
        fp = DtlsCertificate.default().fingerprint
        await media.offer_to_pbx("wacid.X", _SILENT_OFFER.format(port=port, fp=fp))
        answer = await media.answer_to_whatsapp("wacid.X", _PBX_ANSWER.format(port=port), "tag")
        assert "a=setup:active" in answer
        await asyncio.wait_for(failed.wait(), 10)
        await asyncio.sleep(0)
        assert len(failures) == 1 and failures[0][0] == "wacid.X" and "ICE failed" in failures[0][1]
        await media.delete("wacid.X")
    finally:
        media.close()
        silent.close()


def test_dtls_failure_timeout_and_consent_loss_each_report_once():
    for trigger in ("dtls", "timeout", "consent"):
        failures: list[tuple[str, str]] = []
        relay = _Relay("c", "127.0.0.1", "RTP/AVP", DtlsCertificate.default(),
                       lambda call, reason: failures.append((call, reason)))
        if trigger == "timeout":
            relay._dtls_expired()
        elif trigger == "consent":
            relay.agent.on_consent_lost()
        else:
            relay._fail("DTLS failed: fingerprint mismatch")
        relay._fail("again")
        assert len(failures) == 1 and failures[0][0] == "c", trigger
        assert relay.wa_transport is None


async def test_the_bridge_ends_a_call_whose_media_failed_on_both_sides():
    """app.Bridge wires the mode's on_failure to its end path: BYE to the PBX and Graph terminate."""
    from wacall.bridge.app import Bridge
    ended: list[tuple] = []

    class Bridged:
        call_id, media_call, tag = "wacid.Y", None, "wacid=wacid.Y sip=s"

    class Stub:
        calls, pending = {"wacid.Y": Bridged()}, {}

        def _spawn(self, coro):
            return asyncio.get_running_loop().create_task(coro)

        async def _end(self, bridged, why, *, tell_whatsapp, tell_pbx):
            ended.append((bridged.call_id, why, tell_whatsapp, tell_pbx))
    Bridge._on_media_failure(Stub(), "wacid.Y", "ICE failed")
    Bridge._on_media_failure(Stub(), "unknown", "ICE failed")
    await asyncio.sleep(0)
    assert ended == [("wacid.Y", "media", True, True)]
