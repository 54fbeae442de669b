"""``wacall bridge`` in rtpengine mode, business-initiated calls: the agent's baresip (registered to Kamailio, the
PBX) dials ``+<wa_id>``; Kamailio routes it to the bridge, which checks ``call_permissions``, has RtpEngine turn
the phone's RTP SDP into WebRTC, calls Graph ``connect``, and answers the PBX from the webhooks: RINGING → 180,
ACCEPTED (with the connect webhook's answer SDP) → 200, REJECTED → 486; no permission → 403 with the reason.

The fixture ``bridged`` (wacall, RtpEngine, Kamailio, the agent's phone, the bridge) is the user-initiated
tests' own."""

from __future__ import annotations

import asyncio
import re

import pytest

from test_bridge_rtpengine import (ALICE, DOMAIN, _agent_heard_the_user, _heard_both_ways, _logged,  # noqa: F401
                                   bridged)

async def _accepted_with_the_connect_held_back(wa, agent) -> str:
    """The agent calls Alice (permission granted) while wacall holds the connect webhook (Meta's answer SDP)
    back 60 virtual seconds; she answers: RINGING and ACCEPTED have come, the SDP has not."""
    await asyncio.to_thread(wa.grant_permission, ALICE)
    faults = await asyncio.to_thread(wa.ctl, "POST", "webhooks/faults", {"seed": 1, "rules": [
        {"kind": "delay", "field": "calls", "event": "connect", "seconds": 60}]})
    assert faults.status_code == 200, faults.text
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/answer")).status_code == 200
    await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 10)
    return call_id


async def _agent_dials_alice(wa, agent) -> str:
    """The agent dials Alice; the call rings at wacall: its call_id."""
    assert wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "manual"}).status_code == 200
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")

    def ringing():
        calls = wa.ctl("GET", "calls?state=RINGING").json()["data"]
        return [c for c in calls if c["wa_id"] == ALICE and c["direction"] == "BUSINESS_INITIATED"]
    [call] = await asyncio.to_thread(wa.wait_for, ringing, 15, "the business-initiated call ringing at wacall")
    return call["call_id"]


async def test_the_agent_calls_a_user_who_answers_and_they_hear_each_other(bridged):
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10)                 # RINGING webhook → 180 Ringing
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/answer")).status_code == 200
    await agent.wait_event("CALL_ESTABLISHED", 10)             # ACCEPTED → 200 OK with Meta's answer, rewritten
    call = await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 10)
    assert call["direction"] == "BUSINESS_INITIATED"
    await _heard_both_ways(wa, agent, call_id)                 # the user hears the agent's 1000 Hz
    await agent.hangup()                                       # BYE from the PBX → Graph terminate
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    await _agent_heard_the_user(agent)
    log = bridge.log_text()
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+ RINGING: 180", log), log[-3000:]
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+ bridged in", log), log[-3000:]
    assert "BYE from the PBX" in log


async def test_the_user_hangs_up_and_the_agent_gets_a_bye(bridged):
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/answer")).status_code == 200
    established = await agent.wait_event("CALL_ESTABLISHED", 10)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(established))   # terminate → BYE
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "user"
    await _logged(bridge, "BYE to the PBX: 200")


async def test_the_user_declines_and_the_agent_gets_486(bridged):
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/reject")).status_code == 200
    closed = await agent.wait_event("CALL_CLOSED", 10)
    assert "486" in closed.param or "486" in str(closed.raw), closed.raw
    assert "CALL_ESTABLISHED" not in [e.type for e in agent.history]


async def test_a_call_without_permission_gets_403_with_the_reason(bridged):
    wa, agent, bridge, _, _ = bridged
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
    closed = await agent.wait_event("CALL_CLOSED", 10)
    assert "403" in closed.param or "403" in str(closed.raw), closed.raw
    trace = agent.stdout_log.read_text(errors="replace")
    assert re.search(r'^SIP/2.0 403 Forbidden', trace, re.M), trace[-3000:]
    assert re.search(r'^Warning: 399 \S+ "WhatsApp call permission: no_permission\b', trace, re.M), trace[-3000:]
    calls = wa.ctl("GET", "calls").json()["data"]
    assert not [c for c in calls if c["direction"] == "BUSINESS_INITIATED"], "no Graph connect without permission"
    assert "no permission to call" in bridge.log_text()


async def test_the_agent_hangs_up_while_it_rings_and_the_whatsapp_call_ends(bridged):
    """CANCEL from the PBX → 487 to it, Graph terminate to Meta."""
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10)
    await agent.hangup()
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    for _ in range(50):
        if re.search(rf"wacid={re.escape(call_id)} sip=\S+ ended \(pbx cancel\)", bridge.log_text()):
            break
        await asyncio.sleep(0.1)
    assert re.search(rf"wacid={re.escape(call_id)} sip=\S+ ended \(pbx cancel\)", bridge.log_text())
    assert "Graph on end" not in bridge.log_text(), "Graph accepted the terminate"


async def test_no_answer_gets_480(bridged):
    """The user lets it ring until Meta gives up (wacall's virtual clock): the terminate comes without an
    ACCEPTED and the PBX gets 480."""
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10)
    await asyncio.to_thread(wa.advance, 120)
    closed = await agent.wait_event("CALL_CLOSED", 10)
    assert "480" in closed.param or "480" in str(closed.raw), closed.raw
    assert wa.call(call_id)["state"] == "ENDED"


async def test_an_accepted_before_its_connect_webhook_waits_for_the_answer_sdp(bridged):
    """wacall holds the connect webhook (Meta's answer SDP) back 60 virtual seconds: RINGING and ACCEPTED come
    first; the 200 to the PBX waits for the SDP and goes out when the late connect arrives."""
    wa, agent, bridge, _, _ = bridged
    call_id = await _accepted_with_the_connect_held_back(wa, agent)
    await asyncio.sleep(0.5)
    assert "CALL_ESTABLISHED" not in [e.type for e in agent.history], "no 200 without Meta's answer SDP"
    await asyncio.to_thread(wa.advance, 61)
    await agent.wait_event("CALL_ESTABLISHED", 10)
    await _heard_both_ways(wa, agent, call_id)
    await agent.hangup()
    await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)


@pytest.mark.parametrize("bridged", [{"graph": 'permission_request = "May we call you about your order?"'}],
                         indirect=True)
async def test_without_permission_the_bridge_asks_for_it_and_the_next_call_goes_through(bridged):
    """With ``permission_request`` configured, the refused call also sends the user a call permission request
    (inside the customer service window the user opened); once the user accepts, the agent's next call rings."""
    wa, agent, bridge, _, _ = bridged
    opened = await asyncio.to_thread(wa.ctl, "POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"})
    assert opened.status_code == 201, opened.text
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
    closed = await agent.wait_event("CALL_CLOSED", 10)
    assert "403" in closed.param or "403" in str(closed.raw), closed.raw

    def asked():
        [row] = wa.ctl("GET", f"permissions?wa_id={ALICE}").json()["data"]
        return row["requests_24h"] == 1 and row
    await asyncio.to_thread(wa.wait_for, asked, 10, "the bridge's call permission request")
    assert "call permission request sent" in bridge.log_text()
    reply = await asyncio.to_thread(wa.ctl, "POST", f"users/{ALICE}/permission_replies",
                                    {"phone_number_id": wa.pnid, "response": "accept", "permanent": False})
    assert reply.status_code == 200, reply.text
    call_id = await _agent_dials_alice(wa, agent)
    await agent.wait_event("CALL_RINGING", 10, after=agent.history.index(closed))
    await agent.hangup()
    await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)


async def test_a_user_who_answers_and_hangs_up_before_the_connect_webhook_gives_480(bridged):
    """ACCEPTED and terminate came, the connect (Meta's answer SDP) is still held back: the call can never be
    bridged, so the PBX gets 480 rather than waiting; the late connect changes nothing."""
    wa, agent, bridge, _, _ = bridged
    call_id = await _accepted_with_the_connect_held_back(wa, agent)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    closed = await agent.wait_event("CALL_CLOSED", 10)
    assert "480" in closed.param or "480" in str(closed.raw), closed.raw
    await asyncio.to_thread(wa.advance, 61)
    await asyncio.sleep(0.5)
    assert "CALL_ESTABLISHED" not in [e.type for e in agent.history]
