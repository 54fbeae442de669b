"""Webhooks for SIP numbers (``calling.sip.webhook_delivery``): with it ENABLED a SIP call sends
``call_created`` when it is attempted and ``terminate`` when it ends, on ``calls``, without ``session``
and nothing else (no connect, no status); without it a SIP number sends no calling webhook at all."""

from __future__ import annotations

import datetime as dt

import pytest
from support.domain import ALICE, Domain
from support.sdp_samples import business_answer, business_offer

from wacall.domain.errors import GraphError
from wacall.domain.events import CallConnect, CallCreated, CallStatus, CallTerminate, SipCallChanged
from wacall.domain.settings import (apply_calling_update, default_calling_settings, render_calling_settings,
                                    sip_webhook_delivery)
from wacall.webhooks import payloads

SERVER = {"app_id": None, "hostname": "pbx.business.example", "port": 5061, "request_uri_user_params": {}}


def _sip_number(domain: Domain, delivery: str | None) -> None:
    sip = {"status": "ENABLED", "servers": [dict(SERVER, app_id=domain.app.id)]}
    if delivery is not None:
        sip["webhook_delivery"] = delivery
    domain.number.calling = {**domain.number.calling, "status": "ENABLED", "sip": sip}
    domain.grant(ALICE)


def _sip_bic(domain: Domain):
    server = domain.number.calling["sip"]["servers"][0]
    call = domain.platform.sip_business_invite(domain.number, server, f"+{ALICE}", business_offer(),
                                               call_id="wacid.sipbic1", leg=domain.leg("wacid.sipbic1"))
    return call


def _webhooks(domain: Domain, events: list) -> list[tuple[str, dict]]:
    """The ``calls`` webhooks the events render to (a user's call may also grant callback permission, on
    ``messages``)."""
    out = []
    for event in events:
        rendered = payloads.render(domain.platform, event)
        if rendered is not None:
            field, _number, value, _call_id = rendered
            if field == "calls":
                out.append((field, value))
    return out


@pytest.mark.parametrize("delivery", [None, "DISABLED"])
def test_sip_number_without_webhook_delivery_sends_no_calling_webhook(domain, delivery):
    _sip_number(domain, delivery)
    call = _sip_bic(domain)
    domain.advance(2.5)                          # Alice answers
    domain.platform.sip_business_hangs_up(call)
    events = domain.events()
    assert _webhooks(domain, events) == []
    assert not [e for e in events if isinstance(e, (CallConnect, CallStatus, CallTerminate, CallCreated))]
    assert any(isinstance(e, SipCallChanged) for e in events), "the gateway still hears of every change"


@pytest.mark.parametrize("delivery", [None, "ENABLED"])
def test_the_gateway_hears_once_of_each_change_of_a_sip_call(domain, delivery):
    """Connect's two calling events (connect, RINGING) are one change for the gateway: one SipCallChanged
    after both (it reads the call then: RINGING, its 180); the answer and the end are one each."""
    _sip_number(domain, delivery)
    call = _sip_bic(domain)
    changes = [e for e in domain.events() if isinstance(e, SipCallChanged)]
    assert changes == [SipCallChanged(call.id)] and call.state == "RINGING"
    assert [n["event"] for n in domain.notes(call) if n["kind"] == "webhook_suppressed"] == \
        (["CallStatus"] if delivery else ["CallConnect", "CallStatus"])
    domain.advance(2.5)                          # Alice answers
    assert [e for e in domain.events() if isinstance(e, SipCallChanged)] == [SipCallChanged(call.id)]
    domain.platform.sip_business_hangs_up(call)
    assert [e for e in domain.events() if isinstance(e, SipCallChanged)] == [SipCallChanged(call.id)]


def test_business_initiated_sip_call_sends_call_created_and_terminate(domain):
    _sip_number(domain, "ENABLED")
    call = _sip_bic(domain)
    created_at = domain.now()
    events = domain.events()
    assert [type(e) for e in events if not isinstance(e, SipCallChanged)][:1] == [CallCreated]
    [(field, value)] = _webhooks(domain, events)
    assert field == "calls"
    assert value["messaging_product"] == "whatsapp"
    assert value["metadata"] == {"display_phone_number": domain.number.display_phone_number,
                                 "phone_number_id": domain.number.id}
    assert value["contacts"][0]["wa_id"] == ALICE
    [item] = value["calls"]
    assert {k: item[k] for k in ("id", "from", "to", "event", "timestamp", "direction")} == {
        "id": call.id, "from": domain.number.display_phone_number, "to": ALICE, "event": "call_created",
        "timestamp": str(int(created_at)), "direction": "BUSINESS_INITIATED"}
    assert "session" not in item and "connection" not in item

    domain.advance(2.5)                          # Alice answers: no status webhook over SIP
    assert _webhooks(domain, domain.events()) == []
    domain.advance(30)
    domain.platform.sip_business_hangs_up(call)
    [(field, value)] = _webhooks(domain, domain.events())
    [item] = value["calls"]
    assert field == "calls" and item["event"] == "terminate" and item["id"] == call.id
    assert item["status"] == "COMPLETED" and item["direction"] == "BUSINESS_INITIATED"
    assert item["duration"] == 30 and int(item["end_time"]) - int(item["start_time"]) == 30
    assert item["timestamp"] == item["end_time"]
    assert "session" not in item


def test_user_initiated_sip_call_sends_call_created_and_terminate(domain):
    _sip_number(domain, "ENABLED")
    call = domain.user_calls(ALICE)
    [(field, value)] = _webhooks(domain, domain.events())
    [item] = value["calls"]
    assert field == "calls" and item["event"] == "call_created" and item["id"] == call.id
    assert item["from"] == ALICE and item["to"] == domain.number.display_phone_number
    assert item["direction"] == "USER_INITIATED" and "session" not in item
    assert domain.platform.sip_business_answers(call, business_answer()) is None
    assert _webhooks(domain, domain.events()) == [], "no connect/status for SIP calls"
    domain.advance(12)
    domain.platform.user_hangs_up(call)
    [(field, value)] = _webhooks(domain, domain.events())
    [item] = value["calls"]
    assert item["event"] == "terminate" and item["status"] == "COMPLETED" and item["duration"] == 12
    assert {"start_time", "end_time", "timestamp"} <= set(item)


def test_a_user_call_the_business_server_declines_ends_with_terminate(domain):
    _sip_number(domain, "ENABLED")
    call = domain.user_calls(ALICE)
    domain.events()
    domain.platform.sip_business_declines(call, 486, "Busy Here")
    [(_, value)] = _webhooks(domain, domain.events())
    [item] = value["calls"]
    assert item["event"] == "terminate" and item["id"] == call.id and "duration" not in item


def test_delivery_follows_the_setting_when_the_call_ends(domain):
    """The setting is read as each webhook is due: turned off mid-call, the terminate is not sent."""
    _sip_number(domain, "ENABLED")
    call = _sip_bic(domain)
    assert len(_webhooks(domain, domain.events())) == 1
    domain.number.calling["sip"]["webhook_delivery"] = "DISABLED"
    domain.platform.sip_business_hangs_up(call)
    assert _webhooks(domain, domain.events()) == []
    assert any(n["kind"] == "webhook_suppressed" for n in domain.notes(call))


# -- the setting ---------------------------------------------------------------------------------------

def _apply(update: dict, current: dict | None = None) -> tuple[dict, list[str]]:
    current = default_calling_settings(False) if current is None else current
    return apply_calling_update(current, update, app_id="1001", today=dt.date(2026, 6, 1))


def test_webhook_delivery_defaults_to_disabled_and_is_echoed_once_set():
    stored, _ = _apply({"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [{"hostname": "pbx.example"}]}})
    assert not sip_webhook_delivery(stored)
    view = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={})
    assert "webhook_delivery" not in view["sip"]
    stored, changed = _apply({"sip": {"webhook_delivery": "ENABLED"}}, stored)
    assert changed == ["sip.webhook_delivery"] and sip_webhook_delivery(stored)
    assert stored["sip"]["status"] == "ENABLED" and stored["sip"]["servers"][0]["hostname"] == "pbx.example"
    view = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={})
    assert view["sip"]["webhook_delivery"] == "ENABLED"
    again, changed = _apply({"sip": {"webhook_delivery": "ENABLED"}}, stored)
    assert changed == [] and again == stored
    off, changed = _apply({"sip": {"webhook_delivery": "DISABLED"}}, stored)
    assert changed == ["sip.webhook_delivery"] and not sip_webhook_delivery(off)
    assert render_calling_settings(off, include_sip_credentials=False, sip_passwords={})["sip"][
        "webhook_delivery"] == "DISABLED"
    parked, _ = _apply({"sip": {"status": "DISABLED", "servers": []}}, stored)
    back, _ = _apply({"sip": {"status": "ENABLED", "servers": [{"hostname": "pbx.example"}]}}, parked)
    assert sip_webhook_delivery(back), "kept while SIP is off"


@pytest.mark.parametrize("bad, got", [("enabled", '"enabled"'), ("YES", '"YES"'), (True, "true"), (1, "1"),
                                      ("", '""'), ({"status": "ENABLED"}, None), (["ENABLED"], None)])
def test_webhook_delivery_takes_only_enabled_or_disabled(bad, got):
    before, _ = _apply({"sip": {"status": "ENABLED", "servers": [{"hostname": "pbx.example"}]}})
    with pytest.raises(GraphError) as exc:
        _apply({"sip": {"webhook_delivery": bad, "status": "DISABLED"}}, before)
    assert (exc.value.code, exc.value.http_status) == (100, 400)
    assert exc.value.details.startswith("Param calling[sip][webhook_delivery] must be one of {ENABLED, DISABLED}")
    if got is not None:
        assert exc.value.details.endswith(f"got {got}.")


def test_webhook_delivery_null_is_refused_and_nothing_is_applied():
    before, _ = _apply({"sip": {"status": "ENABLED", "servers": [{"hostname": "pbx.example"}]}})
    with pytest.raises(GraphError) as exc:
        _apply({"status": "DISABLED", "sip": {"status": "DISABLED", "webhook_delivery": None}}, before)
    assert exc.value.code == 100 and "webhook_delivery" in exc.value.details
    assert before["sip"]["status"] == "ENABLED" and "webhook_delivery" not in before["sip"]
