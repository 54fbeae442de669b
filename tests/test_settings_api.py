"""Call settings over the Graph API: GET/POST, SIP credentials and the documented password reset,
seed 000's provider route, the account_settings_update webhook, and the SIP seam."""

from __future__ import annotations

SIP_SERVER = {"hostname": "sip.example.com", "port": 5061, "request_uri_user_params": {"tgrp": "wacall"}}


def test_settings_round_trip_and_validation(wa):
    body = {"calling": {"call_icon_visibility": "DISABLE_ALL",
                        "call_hours": {"status": "ENABLED", "timezone_id": "America/Manaus",
                                       "weekly_operating_hours": [
                                           {"day_of_week": "MONDAY", "open_time": "0400", "close_time": "1020"}]},
                        "srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMA"]}}}
    assert wa.graph("POST", f"{wa.pnid}/settings", json=body).json() == {"success": True}
    calling = wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]
    assert calling["call_icon_visibility"] == "DISABLE_ALL"
    assert calling["call_hours"]["weekly_operating_hours"][0]["open_time"] == "0400"
    assert calling["srtp_key_exchange_protocol"] == "SDES"
    assert calling["audio"] == {"additional_codecs": ["PCMA"]}
    bad = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"call_hours": {
        "status": "ENABLED", "timezone_id": "Mars/Olympus_Mons",
        "weekly_operating_hours": [{"day_of_week": "MONDAY", "open_time": "0400", "close_time": "1020"}]}}})
    assert bad.status_code == 400
    assert bad.json()["error"]["code"] == 100
    assert "Timezone is invalid" in bad.json()["error"]["error_data"]["details"]


def test_sip_password_only_with_credentials_and_reset_procedure(wa):
    enable = {"calling": {"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [SIP_SERVER]}}}
    assert wa.graph("POST", f"{wa.pnid}/settings", json=enable).status_code == 200
    plain = wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]["sip"]
    assert plain["status"] == "ENABLED" and "sip_user_password" not in plain["servers"][0]
    assert str(plain["servers"][0]["app_id"]) == wa.app_id
    first = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    password = first["calling"]["sip"]["servers"][0]["sip_user_password"]
    assert len(password) >= 16
    again = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    assert again["calling"]["sip"]["servers"][0]["sip_user_password"] == password

    # Meta's reset procedure: disable with no servers, enable again, read the new password
    disable = {"calling": {"status": "DISABLED", "sip": {"status": "DISABLED", "servers": []}}}
    assert wa.graph("POST", f"{wa.pnid}/settings", json=disable).status_code == 200
    assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
        "status": "ENABLED", "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com"}]}}}).status_code == 200
    reset = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    new_password = reset["calling"]["sip"]["servers"][0]["sip_user_password"]
    assert new_password != password


def test_provider_route_behaves_like_graph(wa):
    headers = {"Authorization": f"Bearer {wa.token}"}
    got = wa.http.get(f"{wa.url}/calling/settings/{wa.pnid}", headers=headers)
    assert got.status_code == 200
    assert got.json() == wa.graph("GET", f"{wa.pnid}/settings").json()
    posted = wa.http.post(f"{wa.url}/calling/settings/{wa.pnid}", headers=headers,
                          json={"calling": {"callback_permission_status": "DISABLED"}})
    assert posted.json() == {"success": True}
    assert wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]["callback_permission_status"] == "DISABLED"
    assert wa.http.get(f"{wa.url}/calling/settings/{wa.pnid}").json()["error"]["code"] == 104


def test_account_settings_update_webhook(wa, receiver):
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"call_icon_visibility": "DISABLE_ALL"}}).status_code == 200
    value = receiver.wait(lambda r: r.values("account_settings_update"))[0]
    assert value["type"] == "PHONE_NUMBER_SETTINGS"
    settings = value["phone_number_settings"]
    assert settings["phone_number_id"] == wa.pnid
    assert settings["calling"]["call_icon_visibility"] == "DISABLE_ALL"
    delivery = [d for d in receiver.snapshot() if d.field == "account_settings_update"][0]
    assert delivery.body["entry"][0]["id"] == wa.waba_id
    assert receiver.bad_signatures == 0


def test_sip_enabled_number_refuses_graph_calls_and_sends_no_calling_webhooks(wa, receiver):
    enable = {"calling": {"sip": {"status": "ENABLED", "servers": [SIP_SERVER]}}}
    assert wa.graph("POST", f"{wa.pnid}/settings", json=enable).status_code == 200
    refused = wa.calls_action({"to": "447700900001", "action": "connect",
                               "session": {"sdp_type": "offer", "sdp": "v=0\r\n"}})
    assert refused.status_code == 400 and refused.json()["error"]["code"] == 131055
    call_id = wa.user_calls("447700900001").json()["call_id"]
    call = wa.call(call_id)
    assert call["signalling"] == "sip"
    assert any(e["kind"] == "webhook_suppressed" for e in call["timeline"])
    # messaging webhooks still flow (the user's automatic callback permission), calling ones do not
    receiver.wait(lambda r: r.values("messages"))
    assert receiver.values("calls") == []
    assert all(j["field"] != "calls" for j in wa.ctl("GET", "webhooks").json()["data"])
