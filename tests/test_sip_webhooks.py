"""Webhooks for SIP numbers, end to end: a number with ``calling.sip.webhook_delivery: ENABLED`` gets
``call_created`` and ``terminate`` (signed, on ``calls``, no ``session``) for SIPp-driven calls in both
directions, and their id is the wacid the SIP dialog carries: user-initiated, the Call-ID
``outgoing:<wacid>`` of Meta's INVITE (and its ``x-wa-meta-wacid``); business-initiated, the call wacall
opened for the business's INVITE, whose own Call-ID it keeps (and the ``x-wa-meta-wacid`` of Meta's BYE)."""

from __future__ import annotations

import hashlib
import hmac
import time
from pathlib import Path

import pytest

from support.harness import PKI_DIR
from support.sip_tools import (Sipp, Stunnel, bic_auth_uri, bic_keys, free_port, header_values, scenario_path,
                               uas_keys)
from wacall.certs import LocalCA

ALICE = "447700900001"
HOST = "pbx.business.example"


def _enable_sip(wa, port: int, **sip) -> str:
    """SIP (SDES) on the default number with webhook delivery as given; returns the SIP password."""
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
        "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
        "sip": {"status": "ENABLED", "servers": [{"hostname": HOST, "port": port}], **sip}}})
    assert response.status_code == 200, response.text
    settings = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    if "webhook_delivery" in sip:
        assert settings["calling"]["sip"]["webhook_delivery"] == sip["webhook_delivery"], "echoed by GET"
    return settings["calling"]["sip"]["servers"][0]["sip_user_password"]


def _signed(receiver, value: dict) -> None:
    """The delivery carrying ``value`` is signed with the app secret (Meta's X-Hub-Signature-256)."""
    [delivery] = [d for d in receiver.snapshot() if d.field == "calls" and d.value == value]
    expected = "sha256=" + hmac.new(receiver.app_secret.encode(), delivery.raw, hashlib.sha256).hexdigest()
    assert delivery.headers.get("X-Hub-Signature-256") == expected
    assert receiver.bad_signatures == 0


def _only_created_and_terminate(receiver, call_id: str) -> tuple[dict, dict]:
    terminate = receiver.wait_for("calls", id=call_id, event="terminate", timeout=20)
    created = receiver.wait_for("calls", id=call_id, event="call_created")
    events = [c["event"] for c in receiver.call_events(call_id)]
    assert events == ["call_created", "terminate"], events
    for value in (created, terminate):
        _signed(receiver, value)
        assert value["messaging_product"] == "whatsapp" and value["metadata"]["phone_number_id"]
        assert "session" not in value["calls"][0]
    return created["calls"][0], terminate["calls"][0]


@pytest.fixture
def meta_tunnel(wa, tmp_path):
    """stunnel in front of SIPp as the business's UA, verifying wa.meta.vc's certificate."""
    info = wa.info["sip"]
    tunnel = Stunnel.client(("127.0.0.1", info["port"]), ca=Path(info["ca_file"]), check_host="wa.meta.vc",
                            workdir=tmp_path / "stunnel").start()
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
    yield tunnel
    tunnel.stop()


def _bic(wa, tunnel, password: str, tmp: Path, name: str):
    business = wa.info["display_phone_number"]
    return Sipp("bic_digest.xml", tunnel.address, calls=1, keys=bic_keys(ALICE, business, HOST),
                auth=(business, password), auth_uri=bic_auth_uri(ALICE), pause_ms=1500,
                workdir=tmp / name).run(timeout=60)


def test_business_initiated_sip_call_sends_call_created_and_terminate(wa, receiver, meta_tunnel, tmp_path):
    password = _enable_sip(wa, free_port(), webhook_delivery="ENABLED")
    result = _bic(wa, meta_tunnel, password, tmp_path, "sipp")
    result.assert_ok(1)
    invite = next(t for t in result.sent() if t.startswith("INVITE "))
    sip_call_id = header_values(invite, "Call-ID")[0]
    [call] = [wa.call(c["call_id"]) for c in wa.ctl("GET", "calls").json()["data"]]
    assert call["sip"]["call_id"] == sip_call_id, "the call wacall opened for this INVITE"

    created, terminate = _only_created_and_terminate(receiver, call["call_id"])
    assert created["id"] == terminate["id"] == call["call_id"]
    business = wa.info["display_phone_number"]
    assert {k: created[k] for k in ("from", "to", "direction")} == {
        "from": business, "to": ALICE, "direction": "BUSINESS_INITIATED"}
    assert created["timestamp"] == str(int(call["created_at"]))
    assert terminate["status"] == "COMPLETED" and terminate["direction"] == "BUSINESS_INITIATED"
    assert terminate["duration"] == call["duration"] >= 1
    assert int(terminate["end_time"]) - int(terminate["start_time"]) == terminate["duration"]
    assert not any(e["kind"] == "webhook_suppressed" and e.get("event") in ("CallConnect", "CallTerminate")
                   for e in call["timeline"])


def test_user_hangs_up_a_business_call_the_bye_and_the_webhook_name_the_same_wacid(wa, receiver, meta_tunnel,
                                                                                     tmp_path):
    password = _enable_sip(wa, free_port(), webhook_delivery="ENABLED")
    business = wa.info["display_phone_number"]
    sipp = Sipp(scenario_path("bic_digest_remote_bye.xml"), meta_tunnel.address, calls=1,
                keys=bic_keys(ALICE, business, HOST), auth=(business, password), auth_uri=bic_auth_uri(ALICE),
                pause_ms=1000, workdir=tmp_path / "sipp").start()
    created = receiver.wait_for("calls", event="call_created", timeout=20)["calls"][0]
    call_id = created["id"]
    wa.wait_state(call_id, "ACCEPTED", timeout=15)
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    result = sipp.wait(timeout=30)
    result.assert_ok(1)
    bye = next(t for t in result.received() if t.startswith("BYE "))
    assert header_values(bye, "x-wa-meta-wacid") == [call_id]
    terminate = receiver.wait_for("calls", id=call_id, event="terminate")["calls"][0]
    assert terminate["duration"] == int(header_values(bye, "x-wa-meta-call-duration")[0])


def test_sip_number_without_webhook_delivery_gets_no_call_webhooks(wa, receiver, meta_tunnel, tmp_path):
    password = _enable_sip(wa, free_port(), webhook_delivery="DISABLED")
    _bic(wa, meta_tunnel, password, tmp_path, "sipp").assert_ok(1)
    [call] = [wa.call(c["call_id"]) for c in wa.ctl("GET", "calls").json()["data"]]
    assert call["state"] == "ENDED"
    suppressed = {e.get("event") for e in call["timeline"] if e["kind"] == "webhook_suppressed"}
    assert {"CallConnect", "CallTerminate"} <= suppressed
    # a later webhook on the same subscription shows the earlier ones had their chance to arrive
    assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"call_icon_visibility": "DEFAULT"}}
                    ).status_code == 200
    receiver.wait_for("account_settings_update")
    assert [d.value for d in receiver.snapshot() if d.field == "calls"] == []


class BusinessServer:
    """SIPp (behind stunnel with a certificate for pbx.business.example) as the business's SIP server."""

    def __init__(self, wa, tmp: Path, scenario: str = "uas_401.xml") -> None:
        cert, key = LocalCA.load_or_create(PKI_DIR).issue([HOST], out="pbx-business")
        self.wa = wa
        self.sipp = Sipp(scenario, None, keys={}, workdir=tmp / "sipp-uas", timeout=40)
        self.tunnel = Stunnel.server(("127.0.0.1", self.sipp.port), cert=Path(cert), key=Path(key),
                                     workdir=tmp / "stunnel-uas")

    def start(self, **sip) -> "BusinessServer":
        password = _enable_sip(self.wa, self.tunnel.accept_port, **sip)
        business = self.wa.info["display_phone_number"]
        self.sipp.keys = uas_keys(business, password,
                                  f"sip:+{business}@{HOST}:{self.tunnel.accept_port};transport=tls")
        self.sipp.start()
        self.tunnel.start()
        return self

    def stop(self) -> None:
        self.tunnel.stop()
        self.sipp.stop()


def test_user_initiated_sip_call_sends_call_created_and_terminate(wa, receiver, tmp_path):
    server = BusinessServer(wa, tmp_path).start(webhook_delivery="ENABLED")
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        created = receiver.wait_for("calls", id=call_id, event="call_created")["calls"][0]
        assert {k: created[k] for k in ("from", "to", "direction")} == {
            "from": ALICE, "to": wa.info["display_phone_number"], "direction": "USER_INITIATED"}
        wa.wait_state(call_id, "ACCEPTED", timeout=15)
        time.sleep(1.1)                     # a call of at least one second, for its duration
        assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
        result = server.sipp.wait(timeout=30)
        result.assert_ok(1)
    finally:
        server.stop()
    invite = next(t for t in result.received() if t.startswith("INVITE "))
    assert header_values(invite, "Call-ID") == [f"outgoing:{call_id}"]
    assert header_values(invite, "x-wa-meta-wacid") == [call_id]
    created, terminate = _only_created_and_terminate(receiver, call_id)
    assert f"outgoing:{created['id']}" == f"outgoing:{terminate['id']}" == header_values(invite, "Call-ID")[0]
    assert terminate["status"] == "COMPLETED" and terminate["direction"] == "USER_INITIATED"
    assert terminate["duration"] >= 1 and {"start_time", "end_time"} <= set(terminate)
    bye = next(t for t in result.received() if t.startswith("BYE "))
    assert int(header_values(bye, "x-wa-meta-call-duration")[0]) == terminate["duration"]


def test_a_bad_webhook_delivery_gets_graphs_error_and_changes_nothing(wa):
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"sip": {
        "status": "ENABLED", "servers": [{"hostname": HOST}], "webhook_delivery": "on"}}})
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == 100 and error["type"] == "OAuthException"
    assert error["error_data"]["details"] == (
        'Param calling[sip][webhook_delivery] must be one of {ENABLED, DISABLED} - got "on".')
    sip = wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]["sip"]
    assert sip["status"] == "DISABLED" and "webhook_delivery" not in sip
