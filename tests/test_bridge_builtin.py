"""``wacall bridge`` in builtin media mode, end to end on loopback: the bridge terminates Meta's WebRTC leg itself
(ICE full agent controlling, DTLS client, DTLS-SRTP) and relays to the PBX in plain RTP or SDES. The chain is that
of tests/test_bridge_rtpengine*.py without RtpEngine: wacall as Meta (a virtual user with WebRTC media playing
440 Hz), the bridge as a subprocess, Kamailio as the PBX and baresip as the agent's phone (1000 Hz). Audio is
checked by frequency both ways, digits by what each side reports, hang-ups on each side."""

from __future__ import annotations

import asyncio
import re

import pytest

from support.bridge_tools import (PCMU_ONLY, AgentPhone, BridgeProcess, PbxKamailio, digits_heard_by_user,
                                  read_wav, user_sends_digits)
from support.sip_tools import make_test_pki
from wacall.bridge.builtin import parse_sdp
from wacall.media.audio import dominant_frequency, tone_power

ALICE = "447700900001"
DOMAIN = "pbx.example.com"


def bridge_toml(wa, pbx: PbxKamailio, media: str = "") -> str:
    return f"""
[graph]
base_url = "{wa.url}"
phone_number_id = "{wa.pnid}"
token = "{wa.token}"

[webhook]
host = "127.0.0.1"
port = 0
app_secret = "{wa.info['app_secret']}"
verify_token = "{wa.info['verify_token']}"

[sip]
host = "127.0.0.1"
port = {pbx.bridge_port}
pbx_host = "127.0.0.1"
pbx_port = {pbx.port}
domain = "{DOMAIN}"
extension = "c2b-sip"

[media]
mode = "builtin"
rtp_host = "127.0.0.1"
{media}
"""


@pytest.fixture
async def chain(wa, tmp_path, request):
    """wacall (Alice plays 440 Hz), the PBX, the agent's phone (1000 Hz) and the bridge in builtin mode. Indirect
    parameter: ``{"agent": {AgentPhone keyword arguments}, "media": "more [media] lines"}``."""
    param = getattr(request, "param", None) or {}
    wa.reset()
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440"}).status_code == 200
    pki = make_test_pki(tmp_path / "pki")
    async with PbxKamailio(domain=DOMAIN, workdir=tmp_path / "pbx") as pbx:
        agent = AgentPhone(user="agent", domain=DOMAIN, registrar=("127.0.0.1", pbx.port), ca=pki.ca_cert,
                           cert=pki.business.pem, tone_hz=1000, workdir=tmp_path / "agent",
                           **param.get("agent", {}))
        async with agent:
            await agent.wait_registered()
            bridge = BridgeProcess(bridge_toml(wa, pbx, param.get("media", "")), workdir=tmp_path / "bridge")
            async with bridge:
                subscribed = await asyncio.to_thread(wa.subscribe, bridge.info["webhook_url"], "calls")
                assert subscribed.status_code == 200, subscribed.text
                yield wa, agent, bridge


async def _user_call_answered(wa, agent: AgentPhone) -> str:
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    ringing = await agent.wait_event("CALL_INCOMING", 15)
    assert f"+{ALICE}" in ringing.param or f"+{ALICE}" in str(ringing.raw), ringing.raw
    await agent.accept()
    await agent.wait_event("CALL_ESTABLISHED", 10)
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
    assert call["direction"] == "USER_INITIATED"
    return call_id


async def _agent_calls_user(wa, agent: AgentPhone) -> str:
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440", "answer_after": 0.3}).status_code == 200
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
    await agent.wait_event("CALL_ESTABLISHED", 20)
    [call_id] = [c["call_id"] for c in (await asyncio.to_thread(wa.ctl, "GET", "calls")).json()["data"]]
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
    assert call["direction"] == "BUSINESS_INITIATED"
    return call_id


async def _user_heard_the_agent(wa, call_id: str) -> dict:
    """Once wacall has 2 s of the agent's audio: the user's recording holds the agent's 1000 Hz."""
    def two_seconds():
        call = wa.call(call_id)
        return call["media"]["received"]["packets"] >= 100 and call
    call = await asyncio.to_thread(wa.wait_for, two_seconds, 15, "2 s of the agent's audio at wacall")
    heard = read_wav(wa.http.get(call["media"]["recording_url"]).content)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears the agent's 1000 Hz"
    assert "opus" in call["media"]["send_codec"].lower(), call["media"]
    return call


def _agent_heard_the_user(agent: AgentPhone) -> None:
    """After the call: the agent's recording holds the user's 440 Hz (at the phone's own sample rate)."""
    rate = agent.sample_rate
    at_agent = agent.heard()[rate // 2:]
    assert len(at_agent) > rate, f"the agent's recording holds {len(at_agent) / rate:.2f} s after the first 0.5 s"
    assert abs(dominant_frequency(at_agent, rate) - 440) < 5, "the agent hears the user's 440 Hz"
    assert tone_power(at_agent, rate, 440) > 10 * tone_power(at_agent, rate, 1000)


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


async def _logged(bridge, line: str, seconds: float = 5.0) -> None:
    for _ in range(int(seconds * 10)):
        if line in bridge.log_text():
            return
        await asyncio.sleep(0.1)
    assert line in bridge.log_text(), bridge.log_text()[-3000:]


async def _dtmf_both_ways(wa, agent: AgentPhone, call_id: str) -> None:
    await asyncio.to_thread(user_sends_digits, wa, call_id, "12#")
    assert await agent.wait_digits(3) == "12#", "the agent's phone gets every digit the user pressed"
    await agent.send_dtmf("9*")
    assert await asyncio.to_thread(digits_heard_by_user, wa, call_id, 2) == "9*", "the user gets the agent's digits"


def _media_line(bridge) -> str:
    return next(line for line in bridge.log_text().splitlines() if "media " in line and "PBX RTP" in line)


async def test_user_calls_the_agent_opus_end_to_end_dtmf_both_ways_agent_hangs_up(chain):
    wa, agent, bridge = chain
    call_id = await _user_call_answered(wa, agent)
    await _user_heard_the_agent(wa, call_id)
    assert "opus passed through" in _media_line(bridge)
    assert "ICE connected" in bridge.log_text() and "DTLS-SRTP keyed" in bridge.log_text()
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    _agent_heard_the_user(agent)
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+ ended \(pbx\)", bridge.log_text())


async def test_agent_calls_the_user_opus_end_to_end_dtmf_both_ways_user_hangs_up(chain):
    wa, agent, bridge = chain
    call_id = await _agent_calls_user(wa, agent)
    await _user_heard_the_agent(wa, call_id)
    assert "opus passed through" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _user_hangs_up(wa, agent, bridge, call_id)
    _agent_heard_the_user(agent)


G711_PHONE = {"agent": {"audio_codecs": PCMU_ONLY}}


@pytest.mark.parametrize("chain", [G711_PHONE], indirect=True)
async def test_a_phone_without_opus_is_transcoded_to_pcmu_both_directions_of_media_and_dtmf(chain):
    """The phone speaks PCMU only: the bridge transcodes (Opus ⇄ PCMU), Meta's leg stays Opus, digits pass both
    ways with their payload types and clocks mapped; the user hangs up."""
    wa, agent, bridge = chain
    call_id = await _user_call_answered(wa, agent)
    await _user_heard_the_agent(wa, call_id)
    assert "PCMU transcoded" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _user_hangs_up(wa, agent, bridge, call_id)
    assert agent.sample_rate == 8000
    _agent_heard_the_user(agent)


@pytest.mark.parametrize("chain", [G711_PHONE], indirect=True)
async def test_a_phone_without_opus_calls_a_user_transcoded(chain):
    wa, agent, bridge = chain
    call_id = await _agent_calls_user(wa, agent)
    await _user_heard_the_agent(wa, call_id)
    assert "PCMU transcoded" in _media_line(bridge)
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    _agent_heard_the_user(agent)


SRTP_PHONE = {"agent": {"srtp": True}, "media": 'pbx_protocol = "RTP/SAVP"'}


@pytest.mark.parametrize("chain", [SRTP_PHONE], indirect=True)
async def test_sdes_srtp_toward_the_pbx(chain):
    wa, agent, bridge = chain
    call_id = await _user_call_answered(wa, agent)
    assert "AES_CM_128_HMAC_SHA1_80" in (await agent.wait_event("CALL_MENC", 10)).param
    await _user_heard_the_agent(wa, call_id)
    await _dtmf_both_ways(wa, agent, call_id)
    await _agent_hangs_up(wa, agent, bridge, call_id)
    _agent_heard_the_user(agent)


def test_the_sdp_reader_takes_what_the_relay_needs():
    sdp = parse_sdp("v=0\r\nc=IN IP4 10.0.0.1\r\nm=audio 4000 RTP/AVP 0 101\r\na=rtpmap:101 telephone-event/8000\r\n"
                    "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:abc\r\nm=video 5000 RTP/AVP 96\r\n")
    assert (sdp.address, sdp.port, sdp.proto, sdp.payloads) == ("10.0.0.1", 4000, "RTP/AVP", [0, 101])
    assert sdp.pt("pcmu", 8000) == 0 and sdp.pt("telephone-event", 8000) == 101 and sdp.pt("opus", 48000) is None
    assert sdp.crypto == [("1", "AES_CM_128_HMAC_SHA1_80", "inline:abc")]
