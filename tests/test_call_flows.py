"""Both call directions end to end over the Graph API, with webhooks to a real receiver."""

from __future__ import annotations

from support.sdp_samples import business_answer, business_offer

ALICE = "447700900001"


def test_user_initiated_call_connect_pre_accept_accept_terminate(wa, receiver):
    response = wa.user_calls(ALICE, entry_point="call_button", payload="order-42")
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    connect = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])[0]
    assert connect["direction"] == "USER_INITIATED"
    assert connect["from"] == ALICE and connect["to"] == wa.info["display_phone_number"]
    assert connect["session"]["sdp_type"] == "offer" and "a=ice-lite" in connect["session"]["sdp"]
    assert connect["cta_payload"] == "order-42"

    answer = business_answer()
    assert wa.calls_action({"call_id": call_id, "action": "pre_accept",
                            "session": {"sdp_type": "answer", "sdp": answer}}).json() == {
        "messaging_product": "whatsapp", "success": True}
    assert wa.calls_action({"call_id": call_id, "action": "accept", "biz_opaque_callback_data": "tracking-1",
                            "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200
    wa.advance(65)
    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    assert terminate["status"] == "COMPLETED"
    assert terminate["biz_opaque_callback_data"] == "tracking-1"
    assert 65 <= terminate["duration"] <= 75   # 65 s of virtual time plus real time under load
    assert int(terminate["end_time"]) - int(terminate["start_time"]) == terminate["duration"]
    assert receiver.bad_signatures == 0
    assert wa.call(call_id)["state"] == "ENDED"


def test_business_initiated_call_rings_and_is_answered(wa, receiver):
    wa.grant_permission(ALICE)           # Alice grants permission through a request message first
    response = wa.calls_action({"to": ALICE, "action": "connect", "biz_opaque_callback_data": "bic-1",
                                "session": {"sdp_type": "offer", "sdp": business_offer()}})
    assert response.status_code == 200, response.text
    call_id = response.json()["calls"][0]["id"]
    wa.wait_state(call_id, "ACCEPTED")
    events = receiver.wait(lambda r: len(r.call_events(call_id)) >= 3 and r.call_events(call_id))
    # Meta promises no order: connect and RINGING leave together and may arrive either way round
    assert sorted(e.get("status", e.get("event")) for e in events[:3]) == ["ACCEPTED", "RINGING", "connect"]
    connect = next(e for e in events if e.get("event") == "connect")
    assert connect["session"]["sdp_type"] == "answer"
    assert connect["from"] == wa.info["display_phone_number"] and connect["to"] == ALICE
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    assert terminate["status"] == "COMPLETED" and terminate["biz_opaque_callback_data"] == "bic-1"
