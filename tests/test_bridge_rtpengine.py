"""``wacall bridge`` in rtpengine mode, end to end on loopback: wacall as Meta (Graph, webhooks, a virtual user with
real WebRTC media), the bridge as a subprocess, a real RtpEngine (Debian's rtpengine-daemon, userspace), Kamailio
as the PBX (registrar and proxy over UDP) and baresip as the agent's phone registered to it.

A user calls the business; the agent's phone rings, the agent answers; the user hears the agent's 1000 Hz and the
agent hears the user's 440 Hz (dominant frequency of each side's recording); a hang-up on either side ends both
legs (terminate → BYE, BYE → terminate)."""

from __future__ import annotations

import asyncio
import io
import json
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from support.bridge_tools import bridge_toml as tools_bridge_toml
from support.bridge_tools import wait_logged as _logged
from support.bridge_tools import bridge_chain, pbx_sip, rtpengine_media
from support.bridge_tools import AgentPhone, BridgeProcess, PbxKamailio, RtpEngineDaemon
from wacall.media.audio import dominant_frequency, tone_power

ALICE = "447700900001"
DOMAIN = "pbx.example.com"


def _wav(data: bytes | Path) -> np.ndarray:
    with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as w:
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype=np.int16)
        return pcm[::2] if w.getnchannels() == 2 else pcm


def bridge_toml(wa, rtpengine: RtpEngineDaemon, pbx: PbxKamailio, extra: dict | None = None) -> str:
    """The bridge's config; ``extra``: more lines per table (``{"graph": 'permission_request = "..."'}``)."""
    extra = extra or {}
    return tools_bridge_toml(wa.info, graph=extra.get("graph", ""), sip=pbx_sip(pbx, extra.get("sip", "")),
                             media=rtpengine_media(rtpengine))


@pytest.fixture
async def bridged(wa, tmp_path, request):
    """wacall (user Alice plays 440 Hz), RtpEngine, the PBX, the agent's phone (1000 Hz) registered to it, and
    the bridge subscribed to wacall's calls webhooks (indirect parametrization: more config, see bridge_toml)."""
    extra = getattr(request, "param", None)
    async with bridge_chain(wa, tmp_path, lambda pbx, engine: bridge_toml(wa, engine, pbx, extra)) as (
            agent, bridge, rtpengine, pbx):
        yield wa, agent, bridge, rtpengine, pbx


async def _user_calls_and_agent_answers(wa, agent: AgentPhone, bridge: BridgeProcess) -> str:
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    ringing = await agent.wait_event("CALL_INCOMING", 15)
    assert f"+{ALICE}" in ringing.param or f"+{ALICE}" in str(ringing.raw), ringing.raw
    await agent.accept()
    await agent.wait_event("CALL_ESTABLISHED", 10)
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
    assert call["direction"] == "USER_INITIATED"
    return call_id


async def _heard_both_ways(wa, agent: AgentPhone, call_id: str) -> None:
    """Waits (bounded) until wacall has 2 s of the agent's audio: media starts once RtpEngine's DTLS handshake
    completes, which can be a DTLS retransmission after the accept (see docs/bridge.md)."""
    def two_seconds_received():
        call = wa.call(call_id)
        return call["media"]["received"]["packets"] >= 100 and call
    call = await asyncio.to_thread(wa.wait_for, two_seconds_received, 15, "2 s of the agent's audio at wacall")
    heard = _wav(wa.http.get(call["media"]["recording_url"]).content)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears the agent's 1000 Hz"


async def _agent_heard_the_user(agent: AgentPhone) -> None:
    """After the call: the agent's recording holds 1.5 s and more of the user's 440 Hz, not its own tone."""
    await asyncio.sleep(0.3)
    at_agent = _agent_heard(agent)
    assert len(at_agent) > 72000, f"the agent's recording holds {len(at_agent) / 48000:.2f} s"
    assert abs(dominant_frequency(at_agent[24000:], 48000) - 440) < 5, "the agent hears the user's 440 Hz"
    assert tone_power(at_agent[24000:], 48000, 440) > 10 * tone_power(at_agent[24000:], 48000, 1000)


def _agent_heard(agent: AgentPhone) -> np.ndarray:
    [received] = agent.recordings()["dec"]
    return _wav(received)


async def test_user_calls_the_agent_through_rtpengine_and_the_agent_hangs_up(bridged):
    wa, agent, bridge, _, _ = bridged
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    await _heard_both_ways(wa, agent, call_id)
    await agent.hangup()                                       # BYE from the PBX → Graph terminate
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    await _agent_heard_the_user(agent)
    log = bridge.log_text()
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+@127\.0\.0\.1 bridged", log), log[-3000:]
    assert f"wacid={call_id}" in log and "BYE from the PBX" in log


async def test_the_user_hangs_up_and_the_agent_gets_a_bye(bridged):
    wa, agent, bridge, _, _ = bridged
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    await asyncio.sleep(1.0)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    closed = await agent.wait_event("CALL_CLOSED", 10)         # terminate webhook → BYE to the PBX
    assert closed.raw.get("direction") == "incoming"
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "user"
    await _logged(bridge, "BYE to the PBX: 200")


async def test_the_agent_declines_and_the_user_call_is_rejected(bridged):
    """A final refusal from the PBX (baresip declines while ringing) becomes Graph ``reject``."""
    wa, agent, bridge, _, _ = bridged
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    await agent.wait_event("CALL_INCOMING", 15)
    await agent.hangup()
    ended = await asyncio.to_thread(wa.wait_for, lambda: (c := wa.call(call_id))["state"] in ("REJECTED", "ENDED")
                                    and c, 10, "the call to be rejected")
    assert ended["state"] in ("REJECTED", "ENDED") and ended.get("ended_by") in (None, "business"), ended
    log = bridge.log_text()
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+@127\.0\.0\.1 PBX refused: 4\d\d", log), log[-3000:]
    assert "Graph on end" not in log, "Graph accepted the reject"


async def test_the_user_hangs_up_while_the_agent_rings_and_the_invite_is_cancelled(bridged):
    wa, agent, bridge, _, _ = bridged
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    incoming = await agent.wait_event("CALL_INCOMING", 15)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(incoming))
    trace = agent.stdout_log.read_text(errors="replace")
    assert re.search(r"^CANCEL sip:", trace, re.M), "the agent's phone got the CANCEL"
    ended = rf"wacid={re.escape(call_id)} sip=\S+@127\.0\.0\.1 ended \(whatsapp\)"
    for _ in range(50):
        if re.search(ended, bridge.log_text()):
            break
        await asyncio.sleep(0.1)
    assert re.search(ended, bridge.log_text()), bridge.log_text()[-3000:]
    assert "INVITE ended: 487" in bridge.log_text()


async def test_a_connect_delivered_twice_rings_the_agent_once(bridged):
    """wacall's fault injection delivers the connect webhook twice: one INVITE, one bridged call."""
    wa, agent, bridge, _, _ = bridged
    faults = await asyncio.to_thread(wa.ctl, "POST", "webhooks/faults", {"seed": 1, "rules": [
        {"kind": "duplicate", "field": "calls", "event": "connect", "copies": 2}]})
    assert faults.status_code == 200, faults.text
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    await asyncio.sleep(1.0)                                   # time for a second INVITE, were there one
    assert [e.type for e in agent.history].count("CALL_INCOMING") == 1
    assert bridge.log_text().count(f"wacid={call_id} sip=- connect from") == 1
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await agent.wait_event("CALL_CLOSED", 10)


async def test_a_terminate_before_its_connect_never_rings_the_agent(bridged):
    """The connect is held back (virtual 60 s) and the user hangs up meanwhile: the terminate comes first, the
    late connect is recognised and nothing is sent to the PBX."""
    wa, agent, bridge, _, _ = bridged
    faults = await asyncio.to_thread(wa.ctl, "POST", "webhooks/faults", {"seed": 1, "rules": [
        {"kind": "delay", "field": "calls", "event": "connect", "seconds": 60}]})
    assert faults.status_code == 200, faults.text
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await asyncio.to_thread(wa.advance, 61)
    def connect_delivered():
        items = wa.ctl("GET", f"webhooks?call_id={call_id}").json()["data"]
        return [i for i in items if i["status"] == "delivered" and '"connect"' in json.dumps(i.get("body"))]
    await asyncio.to_thread(wa.wait_for, connect_delivered, 10, "the late connect delivered")
    await asyncio.sleep(0.5)
    assert not [e for e in agent.history if e.type == "CALL_INCOMING"]
    assert f"wacid={call_id}" not in bridge.log_text()


async def test_sigterm_ends_a_bridged_call_on_both_sides(bridged):
    wa, agent, bridge, _, _ = bridged
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    assert await asyncio.to_thread(bridge.terminate) == 0
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business"
    assert f"wacid={call_id}" in bridge.log_text() and "ended (shutdown)" in bridge.log_text()


async def test_the_agent_puts_the_user_on_hold_and_back_and_the_call_goes_on(bridged):
    """baresip's hold and resume are re-INVITEs through Kamailio (``a=sendonly``, then ``a=sendrecv``) in the
    bridge's dialog: each is answered 200 (the bridge's SDP, direction mirrored), the call stays up, the audio
    flows again after the resume, and the agent's BYE still ends it at Meta."""
    wa, agent, bridge, _, _ = bridged
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    await _heard_both_ways(wa, agent, call_id)
    answered = re.compile(r"SIP INVITE in dialog \S+: 200")

    async def answered_reinvites(count: int) -> None:
        for _ in range(100):
            if len(answered.findall(bridge.log_text())) >= count:
                break
            await asyncio.sleep(0.1)
        assert len(answered.findall(bridge.log_text())) == count, bridge.log_text()[-3000:]
    assert (await agent.command("hold"))["ok"], "baresip's hold"
    await answered_reinvites(1)
    assert (await agent.command("resume"))["ok"], "baresip's resume"
    await answered_reinvites(2)
    assert "changes the media" not in bridge.log_text()
    before = wa.call(call_id)["media"]["received"]["packets"]
    await asyncio.to_thread(wa.wait_for, lambda: wa.call(call_id)["media"]["received"]["packets"] >= before + 50,
                            10, "the agent's audio after the resume")
    assert wa.call(call_id)["state"] == "ACCEPTED"
    await agent.hangup()
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
