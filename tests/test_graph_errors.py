"""Every calling error code the Graph surface can return, provoked through the real HTTP API.

Each test drives the emulator as a business (Graph API) and as WhatsApp users (control API) until one
error comes back, then checks Meta's error envelope: the HTTP status (from the calling troubleshooting
table in seed 002 / calling-wire-spec §7), ``error.code``, ``error.type == "OAuthException"``, a
``message`` starting with ``(#<code>)``, a non-empty ``error_data.details`` and a ``fbtrace_id``.

Code -> test that produces it (``test_every_graph_error_code_is_covered`` keeps this table honest
against the ``GraphError(<code>`` raises in ``src/wacall``):

=======  ======  ===========================================================================================
code     HTTP    test
=======  ======  ===========================================================================================
1        400     test_1_oauth_bad_client_secret                 (also the catch-all for unexpected exceptions)
2        503     test_2_media_relay_without_room_is_transient_and_recovers   (is_transient: true)
10       403     test_10_app_without_permission                 (tests/data/errors.toml apps)
100      400     test_100_bad_json_body, test_100_unexpected_session_key, test_100_invalid_sdp,
                 test_100_unknown_call_id, test_100_accept_sdp_differs_from_pre_accept,
                 test_100_pre_accept_on_business_initiated_call, test_100_accept_on_ended_call,
                 test_100_terminate_twice, test_100_invalid_sdp_in_pre_accept_names_the_line
101      400     test_101_oauth_unknown_application
104      400     test_104_no_access_token
190      401     test_190_bad_access_token
200      403     test_200_app_token_on_whatsapp_business_objects  (the app token where Meta wants a user token)
613      429     test_613_call_permissions_more_than_5_per_second
2200     400     test_2200_callback_verification_fails
2635     400     test_2635_retired_graph_version                ([graph] oldest_version, v21.0 by default)
131009   400     test_131009_voice_call_parameter_invalid
131026   (wh)    test_131026_failed_status_webhook_for_old_client  (messages `failed` status webhook only)
131030   400     test_131030_recipient_not_in_test_number_allow_list
131044   400     test_131044_no_payment_method                  (+ the UIC terminate webhook errors[])
131047   400     test_131047_outside_customer_service_window
131053   400     test_131053_media_upload_too_large            (more Media API errors: tests/test_media_api.py)
131055   400     test_131055_graph_calls_on_sip_enabled_number
132001   404     test_132001_unknown_template
138000   401     test_138000_calling_not_enabled
138001   400     test_138001_receiver_uncallable
138002   429     test_138002_concurrent_calls_limit
138003   400     test_138003_duplicate_call
138004   500     test_138004_connection_error_fault
138005   429     test_138005_call_rate_limit
138006   401     test_138006_no_call_permission
138007   500     test_138007_accept_after_accept_window         (+ terminate webhook errors[])
138009   400     test_138009_permission_request_limit
138012   400     test_138012_connected_bic_limit_with_next_allowed_time
138013   400     test_138013_bic_not_available_in_country       (PATCH country, and a US number in errors.toml)
138014   400     test_138014_calling_temporarily_restricted
138015   400     test_138015_calling_cannot_be_enabled_low_messaging_limit
138017   400     test_138017_permanent_permission_exists
138018   400     test_138018_no_calls_webhook_subscriber
=======  ======  ===========================================================================================

Not provoked: 4 and 131008 (in the catalogue, never raised); 138019-138023 (terminate-webhook-only
client/media failures the virtual users never simulate); code 1 as the catch-all for an unexpected
exception (that would be a wacall bug).
"""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest

from support.harness import Receiver, Wacall
from support.sdp_samples import business_answer, business_offer

ALICE = "447700900001"           # answers business-initiated calls after 2 s (virtual clock)
BRUNO = "5511987650002"
OLD_CLIENT = "6281200000006"     # WhatsApp 2.23.20: too old for calls and call permission requests
UNKNOWN = "447700999999"         # not a WhatsApp user

SRC = Path(__file__).resolve().parents[1] / "src" / "wacall"
ERRORS_TOML = Path(__file__).resolve().parent / "data" / "errors.toml"

# tests/data/errors.toml
E_NUMBER, E_US_NUMBER, E_NO_SUB_NUMBER = "300000000000001", "300000000000002", "300000000000003"
E_FULL_TOKEN = "EAAerrors0000full0000token"
E_MESSAGING_ONLY_TOKEN = "EAAerrors0000messaging0only"
E_MANAGEMENT_ONLY_TOKEN = "EAAerrors0000management0only"
E_NO_CALLS_FIELD_TOKEN = "EAAerrors0000no0calls0field"

# code -> the tests that produce it (see the module docstring)
COVERAGE: dict[int, list[str]] = {
    1: ["test_1_oauth_bad_client_secret"],
    2: ["test_2_media_relay_without_room_is_transient_and_recovers"],
    10: ["test_10_app_without_permission"],
    100: ["test_100_bad_json_body", "test_100_unexpected_session_key", "test_100_invalid_sdp",
          "test_100_unknown_call_id", "test_100_accept_sdp_differs_from_pre_accept",
          "test_100_pre_accept_on_business_initiated_call", "test_100_accept_on_ended_call",
          "test_100_terminate_twice", "test_100_invalid_sdp_in_pre_accept_names_the_line"],
    101: ["test_101_oauth_unknown_application"],
    104: ["test_104_no_access_token"],
    190: ["test_190_bad_access_token"],
    200: ["test_200_app_token_on_whatsapp_business_objects"],
    613: ["test_613_call_permissions_more_than_5_per_second"],
    2200: ["test_2200_callback_verification_fails"],
    131009: ["test_131009_voice_call_parameter_invalid"],
    131026: ["test_131026_failed_status_webhook_for_old_client"],
    131030: ["test_131030_recipient_not_in_test_number_allow_list"],
    131044: ["test_131044_no_payment_method", "test_131044_user_call_terminate_webhook"],
    131047: ["test_131047_outside_customer_service_window"],
    131055: ["test_131055_graph_calls_on_sip_enabled_number"],
    132001: ["test_132001_unknown_template"],
    138000: ["test_138000_calling_not_enabled"],
    138001: ["test_138001_receiver_uncallable"],
    138002: ["test_138002_concurrent_calls_limit"],
    138003: ["test_138003_duplicate_call"],
    138004: ["test_138004_connection_error_fault"],
    138005: ["test_138005_call_rate_limit"],
    138006: ["test_138006_no_call_permission"],
    138007: ["test_138007_accept_after_accept_window", "test_138007_terminate_webhook_errors"],
    138009: ["test_138009_permission_request_limit"],
    138012: ["test_138012_connected_bic_limit_with_next_allowed_time"],
    138013: ["test_138013_bic_not_available_in_country"],
    138014: ["test_138014_calling_temporarily_restricted"],
    138015: ["test_138015_calling_cannot_be_enabled_low_messaging_limit"],
    138017: ["test_138017_permanent_permission_exists"],
    138018: ["test_138018_no_calls_webhook_subscriber"],
    131053: ["test_131053_media_upload_too_large"],
    2635: ["test_2635_retired_graph_version"],
}
# Raised in src but not provokable through the API on purpose: code -> why.
NOT_PROVOKABLE: dict[int, str] = {}


# -- helpers ---------------------------------------------------------------------------------------
def assert_graph_error(response, code: int, status: int) -> dict:
    """Meta's error envelope for ``code`` with HTTP ``status``; returns ``error``."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert set(body) == {"error"}, body
    error = body["error"]
    assert error["code"] == code, error
    assert error["type"] == "OAuthException", error
    assert isinstance(error["message"], str) and error["message"].startswith(f"(#{code})"), error
    details = error["error_data"]["details"]
    assert isinstance(details, str) and details.strip(), error
    assert isinstance(error.get("fbtrace_id"), str) and error["fbtrace_id"], error
    return error


def details(error: dict) -> str:
    return error["error_data"]["details"]


def connect(wa, to: str = ALICE, sdp: str | None = None, **extra):
    return wa.calls_action({"to": to, "action": "connect",
                            "session": {"sdp_type": "offer", "sdp": sdp or business_offer()}, **extra})


def connected_call_id(response) -> str:
    assert response.status_code == 200, response.text
    return response.json()["calls"][0]["id"]


def open_window(wa, wa_id: str) -> None:
    response = wa.ctl("POST", f"users/{wa_id}/messages", {"to": wa.pnid, "text": "hi"})
    assert response.status_code == 201, response.text


def permission_request(wa, wa_id: str):
    return wa.permission_request(wa_id)


def voice_call(wa, wa_id: str, **parameters):
    return wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": wa_id, "type": "interactive",
        "interactive": {"type": "voice_call", "body": {"text": "Call us"},
                        "action": {"name": "voice_call", "parameters": parameters}}})


def grant_permission(wa, wa_id: str, *, permanent: bool = False) -> None:
    """The user opens the window, the business asks, the user accepts."""
    wa.grant_permission(wa_id, permanent=permanent)


def set_user(wa, wa_id: str, **fields) -> None:
    response = wa.ctl("PATCH", f"users/{wa_id}", fields)
    assert response.status_code == 200, response.text


def set_limits(wa, **limits) -> None:
    response = wa.ctl("PATCH", "limits", limits)
    assert response.status_code == 200, response.text


def set_number(wa, **fields) -> None:
    response = wa.ctl("PATCH", f"numbers/{wa.pnid}", fields)
    assert response.status_code == 200, response.text


def post_settings(wa, calling: dict, token: str | None = "default", pnid: str | None = None):
    return wa.graph("POST", f"{pnid or wa.pnid}/settings", token=token,
                    json={"messaging_product": "whatsapp", "calling": calling})


def user_call(wa, wa_id: str = ALICE) -> str:
    response = wa.user_calls(wa_id)
    assert response.status_code == 201, response.text
    return response.json()["call_id"]


def closed_port_url() -> str:
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    return f"http://127.0.0.1:{port}/webhook"


@pytest.fixture(scope="module")
def errors_world():
    """A second emulator started from tests/data/errors.toml (read-mostly: tests here don't reset it)."""
    server = Wacall(config=str(ERRORS_TOML)).start()
    yield server
    server.close()


# -- 104 / 190 / 10: authentication and permissions ------------------------------------------------
@pytest.mark.parametrize("method,path", [("POST", "calls"), ("GET", "call_permissions?user_wa_id=" + ALICE),
                                         ("GET", "settings")])
def test_104_no_access_token(wa, method, path):
    response = wa.graph(method, f"{wa.pnid}/{path}", token=None,
                        json={"messaging_product": "whatsapp"} if method == "POST" else None)
    assert_graph_error(response, 104, 400)


@pytest.mark.parametrize("token", ["not-a-token", "EAAwacall0000default0000tokenX"])
def test_190_bad_access_token(wa, token):
    response = wa.graph("POST", f"{wa.pnid}/calls", token=token, json={
        "messaging_product": "whatsapp", "to": ALICE, "action": "connect",
        "session": {"sdp_type": "offer", "sdp": business_offer()}})
    assert_graph_error(response, 190, 401)


@pytest.mark.parametrize("method,edge", [("POST", "calls"), ("POST", "messages"), ("GET", "settings"),
                                         ("POST", "settings"), ("GET", "call_permissions"), ("GET", ""),
                                         ("POST", ""), ("GET", "waba:"), ("GET", "waba:subscribed_apps"),
                                         ("POST", "waba:subscribed_apps"), ("GET", "waba:message_templates"),
                                         ("GET", "waba:phone_numbers")])
def test_200_app_token_on_whatsapp_business_objects(wa, method, edge):
    """An app access token ("{app_id}|{app_secret}") is for the app's own edges (subscriptions); the
    phone number and WABA edges want a system-user or user token."""
    object_id, edge = (wa.waba_id, edge[5:]) if edge.startswith("waba:") else (wa.pnid, edge)
    path = f"{object_id}/{edge}" if edge else object_id
    body = {"messaging_product": "whatsapp", "to": ALICE, "action": "connect",
            "session": {"sdp_type": "offer", "sdp": business_offer()}} if method == "POST" else None
    response = wa.graph(method, path, token=wa.app_token, json=body,
                        params={"user_wa_id": ALICE} if edge == "call_permissions" else None)
    error = assert_graph_error(response, 200, 403)
    assert "app access token" in details(error)
    assert wa.ctl("GET", "calls").json()["data"] == []
    # the same app's token is what /{app_id}/subscriptions wants
    assert wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token).status_code == 200
    assert wa.graph("DELETE", f"{wa.app_id}/subscriptions", token=wa.app_token).status_code == 200
    assert_graph_error(wa.subscribe(closed_port_url()), 2200, 400)          # verified, not refused for its token


@pytest.mark.parametrize("token,method,edge,permission", [
    (E_MESSAGING_ONLY_TOKEN, "POST", "settings", "whatsapp_business_management"),
    (E_MESSAGING_ONLY_TOKEN, "GET", "settings", "whatsapp_business_management"),
    (E_MANAGEMENT_ONLY_TOKEN, "POST", "calls", "whatsapp_business_messaging"),
    (E_MANAGEMENT_ONLY_TOKEN, "GET", "call_permissions", "whatsapp_business_messaging"),
    (E_MANAGEMENT_ONLY_TOKEN, "POST", "messages", "whatsapp_business_messaging"),
])
def test_10_app_without_permission(errors_world, token, method, edge, permission):
    body = {"messaging_product": "whatsapp", "to": ALICE, "action": "connect",
            "session": {"sdp_type": "offer", "sdp": business_offer()}} if edge == "calls" else (
        {"messaging_product": "whatsapp", "calling": {"status": "ENABLED"}} if edge == "settings" else
        {"messaging_product": "whatsapp", "to": ALICE, "type": "text", "text": {"body": "hi"}})
    response = errors_world.graph(method, f"{E_NUMBER}/{edge}", token=token,
                                  params={"user_wa_id": ALICE} if edge == "call_permissions" else None,
                                  json=body if method == "POST" else None)
    error = assert_graph_error(response, 10, 403)
    assert permission in details(error)


def test_101_oauth_unknown_application(wa):
    response = wa.graph("GET", "oauth/access_token", token=None, params={
        "grant_type": "client_credentials", "client_id": "999999999999999", "client_secret": "x"})
    error = assert_graph_error(response, 101, 400)
    assert "Invalid application ID" in details(error)


def test_1_oauth_bad_client_secret(wa):
    response = wa.graph("GET", "oauth/access_token", token=None, params={
        "grant_type": "client_credentials", "client_id": wa.app_id, "client_secret": "wrong"})
    error = assert_graph_error(response, 1, 400)
    assert "client secret" in details(error)


# -- 100: invalid parameters -------------------------------------------------------------------------
def test_100_bad_json_body(wa):
    response = wa.graph("POST", f"{wa.pnid}/calls", content=b'{"messaging_product": "whatsapp", "to": ',
                        headers={"Content-Type": "application/json"})
    error = assert_graph_error(response, 100, 400)
    assert "JSON" in details(error)


def test_100_unexpected_session_key(wa):
    response = wa.calls_action({"to": ALICE, "action": "connect",
                                "session": {"type": "offer", "sdp": business_offer()}})
    error = assert_graph_error(response, 100, 400)
    assert "Unexpected key 'type' on param 'session'" in details(error)


def _sdp_without_fingerprint() -> str:
    return "\r\n".join(line for line in business_offer().split("\r\n") if not line.startswith("a=fingerprint"))


@pytest.mark.parametrize("sdp,expected", [
    (business_offer().replace("\r\n", "\n"),
     "SDP line 1 'v=0': line ends in a bare LF; SDP lines must end in CRLF"),
    (business_offer()[:-2], "'a=ssrc:7654321 cname:business': line does not end in CRLF"),
    (business_offer() + "m=video 9 UDP/TLS/RTP/SAVPF 96\r\nc=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000\r\n",
     "'m=video 9 UDP/TLS/RTP/SAVPF 96': only one audio m-line is supported (video is not)"),
    (_sdp_without_fingerprint(), "No fingerprint found in SDP"),
], ids=["bare-lf", "no-final-crlf", "video-m-line", "no-fingerprint"])
def test_100_invalid_sdp(wa, sdp, expected):
    error = assert_graph_error(connect(wa, sdp=sdp), 100, 400)
    assert details(error).startswith("SDP Validation error: ")
    assert expected in details(error)


def test_100_invalid_sdp_in_pre_accept_names_the_line(wa):
    call_id = user_call(wa)
    bad = business_answer().replace("a=setup:active", "a=setup:active\r\nm=video 9 UDP/TLS/RTP/SAVPF 96\r\n"
                                                      "c=IN IP4 0.0.0.0\r\na=rtpmap:96 VP8/90000")
    response = wa.calls_action({"call_id": call_id, "action": "pre_accept",
                                "session": {"sdp_type": "answer", "sdp": bad}})
    error = assert_graph_error(response, 100, 400)
    assert re.search(r"SDP line \d+ 'm=video 9 UDP/TLS/RTP/SAVPF 96'", details(error)), details(error)
    assert wa.call(call_id)["state"] == "RINGING"


@pytest.mark.parametrize("action", ["pre_accept", "accept", "reject", "terminate"])
def test_100_unknown_call_id(wa, action):
    body = {"call_id": "wacid.does-not-exist", "action": action}
    if action in ("pre_accept", "accept"):
        body["session"] = {"sdp_type": "answer", "sdp": business_answer()}
    error = assert_graph_error(wa.calls_action(body), 100, 400)
    assert "wacid.does-not-exist" in details(error)


def test_100_accept_sdp_differs_from_pre_accept(wa):
    call_id = user_call(wa)
    assert wa.calls_action({"call_id": call_id, "action": "pre_accept",
                            "session": {"sdp_type": "answer", "sdp": business_answer()}}).status_code == 200
    response = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": business_answer(ufrag="oThEr")}})
    error = assert_graph_error(response, 100, 400)
    assert "different from the SDP answer given in pre_accept" in details(error)
    assert wa.call(call_id)["state"] == "PRE_ACCEPTED"


def test_100_pre_accept_on_business_initiated_call(wa):
    grant_permission(wa, ALICE)
    set_user(wa, ALICE, incoming="ignore")
    call_id = connected_call_id(connect(wa))
    response = wa.calls_action({"call_id": call_id, "action": "pre_accept",
                                "session": {"sdp_type": "answer", "sdp": business_answer()}})
    error = assert_graph_error(response, 100, 400)
    assert "only valid for user-initiated calls" in details(error)


def test_100_accept_on_ended_call(wa):
    call_id = user_call(wa)
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    response = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": business_answer()}})
    error = assert_graph_error(response, 100, 400)
    assert "already terminated" in details(error)


def test_100_terminate_twice(wa):
    call_id = user_call(wa)
    assert wa.calls_action({"call_id": call_id, "action": "accept",
                            "session": {"sdp_type": "answer", "sdp": business_answer()}}).status_code == 200
    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    error = assert_graph_error(wa.calls_action({"call_id": call_id, "action": "terminate"}), 100, 400)
    assert "already terminated" in details(error)


# -- 613: call_permissions rate limit ----------------------------------------------------------------
def test_613_call_permissions_more_than_5_per_second(wa):
    responses = [wa.graph("GET", f"{wa.pnid}/call_permissions", params={"user_wa_id": ALICE}) for _ in range(6)]
    assert [r.status_code for r in responses[:5]] == [200] * 5, [r.text for r in responses]
    assert_graph_error(responses[5], 613, 429)


# -- 2200: webhook callback verification ------------------------------------------------------------
@pytest.mark.parametrize("endpoint", ["wrong-verify-token", "connection-refused"])
def test_2200_callback_verification_fails(wa, endpoint):
    rx = None
    if endpoint == "wrong-verify-token":
        rx = Receiver(app_secret=wa.info["app_secret"], verify_token="some-other-token").start()
        url = rx.url
    else:
        url = closed_port_url()
    try:
        error = assert_graph_error(wa.subscribe(url), 2200, 400)
        assert "Callback verification failed" in details(error)
        override = wa.graph("POST", f"{wa.waba_id}/subscribed_apps",
                            json={"override_callback_uri": url, "verify_token": wa.info["verify_token"]})
        assert_graph_error(override, 2200, 400)
    finally:
        if rx:
            rx.stop()


# -- 131xxx: messaging-side codes ----------------------------------------------------------------------
@pytest.mark.parametrize("parameters,needle", [
    ({"display_text": "Call our friendly shop"}, "display_text"),     # 22 characters
    ({"display_text": "Call", "ttl_minutes": 0}, "ttl_minutes"),
    ({"display_text": "Call", "payload": "x" * 513}, "payload"),
])
def test_131009_voice_call_parameter_invalid(wa, parameters, needle):
    open_window(wa, ALICE)
    error = assert_graph_error(voice_call(wa, ALICE, **parameters), 131009, 400)
    assert needle in details(error)


def test_131026_failed_status_webhook_for_old_client(wa, receiver):
    open_window(wa, OLD_CLIENT)
    sent = permission_request(wa, OLD_CLIENT)
    assert sent.status_code == 200, sent.text          # accepted by the API; fails on the user's phone
    message_id = sent.json()["messages"][0]["id"]
    failed = receiver.wait(lambda r: [s for v in r.values("messages") for s in v.get("statuses", [])
                                      if s["id"] == message_id and s["status"] == "failed"],
                           what="failed status")[0]
    assert failed["recipient_id"] == OLD_CLIENT
    [error] = failed["errors"]
    assert error["code"] == 131026
    assert error["title"] and error["error_data"]["details"]


@pytest.mark.parametrize("via", ["connect", "permission_request"])
def test_131030_recipient_not_in_test_number_allow_list(wa, via):
    set_number(wa, is_test_number=True, allowed_recipients=[])
    if via == "connect":
        response = connect(wa)
    else:
        open_window(wa, ALICE)
        response = permission_request(wa, ALICE)
    assert_graph_error(response, 131030, 400)


def test_131044_no_payment_method(wa):
    grant_permission(wa, ALICE)
    set_number(wa, payment_method=False)
    assert_graph_error(connect(wa), 131044, 400)


def test_131044_user_call_terminate_webhook(wa, receiver):
    set_number(wa, payment_method=False)
    call_id = user_call(wa)
    terminate = receiver.wait(lambda r: [v for v in r.values("calls")
                                         if any(c["id"] == call_id and c["event"] == "terminate"
                                                for c in v.get("calls", []))], what="terminate")[0]
    assert terminate["calls"][0]["status"] == "FAILED"
    assert [e["code"] for e in terminate["errors"]] == [131044]


@pytest.mark.parametrize("kind", ["call_permission_request", "voice_call", "text"])
def test_131047_outside_customer_service_window(wa, kind):
    if kind == "call_permission_request":
        response = permission_request(wa, ALICE)
    elif kind == "voice_call":
        response = voice_call(wa, ALICE, display_text="Call us")
    else:
        response = wa.graph("POST", f"{wa.pnid}/messages", json={
            "messaging_product": "whatsapp", "to": ALICE, "type": "text", "text": {"body": "hello"}})
    assert_graph_error(response, 131047, 400)
    # once the window has closed again, the same refusal comes back
    open_window(wa, ALICE)
    wa.advance(86400 + 1)
    assert_graph_error(permission_request(wa, ALICE), 131047, 400)


@pytest.mark.parametrize("action", ["connect", "terminate"])
def test_131055_graph_calls_on_sip_enabled_number(wa, action):
    call_id = user_call(wa) if action == "terminate" else None
    enabled = post_settings(wa, {"sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com",
                                                                          "port": 5061}]}})
    assert enabled.status_code == 200, enabled.text
    response = connect(wa) if action == "connect" else wa.calls_action({"call_id": call_id,
                                                                        "action": "terminate"})
    error = assert_graph_error(response, 131055, 400)
    assert "SIP" in details(error)


def test_132001_unknown_template(wa):
    response = wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": ALICE, "type": "template",
        "template": {"name": "no_such_template", "language": {"code": "en_US"}}})
    error = assert_graph_error(response, 132001, 404)
    assert "no_such_template" in details(error)


# -- 1380xx: calling codes ------------------------------------------------------------------------------
@pytest.mark.parametrize("request_kind", ["connect", "terminate", "call_permissions", "voice_call",
                                          "permission_request"])
def test_138000_calling_not_enabled(wa, request_kind):
    open_window(wa, ALICE)
    disabled = post_settings(wa, {"status": "DISABLED"})
    assert disabled.status_code == 200, disabled.text
    response = {
        "connect": lambda: connect(wa),
        "terminate": lambda: wa.calls_action({"call_id": "wacid.any", "action": "terminate"}),
        "call_permissions": lambda: wa.graph("GET", f"{wa.pnid}/call_permissions", params={"user_wa_id": ALICE}),
        "voice_call": lambda: voice_call(wa, ALICE, display_text="Call us"),
        "permission_request": lambda: permission_request(wa, ALICE),
    }[request_kind]()
    assert_graph_error(response, 138000, 401)


@pytest.mark.parametrize("who", ["unknown", "old_client", "web_client", "tos_not_accepted"])
def test_138001_receiver_uncallable(wa, who):
    wa_id = {"unknown": UNKNOWN, "old_client": OLD_CLIENT}.get(who, "447700900042")
    if who == "web_client":
        assert wa.ctl("POST", "users", {"wa_id": wa_id, "platform": "web"}).status_code == 201
    elif who == "tos_not_accepted":
        assert wa.ctl("POST", "users", {"wa_id": wa_id, "tos_accepted": False}).status_code == 201
    assert_graph_error(connect(wa, to=wa_id), 138001, 400)
    if who == "tos_not_accepted":                 # permission requests are refused the same way
        open_window(wa, wa_id)
        assert_graph_error(permission_request(wa, wa_id), 138001, 400)


def test_138002_concurrent_calls_limit(wa):
    grant_permission(wa, ALICE)
    grant_permission(wa, BRUNO)
    set_limits(wa, concurrent_calls=1)
    set_user(wa, ALICE, incoming="ignore")
    connected_call_id(connect(wa, to=ALICE))
    error = assert_graph_error(connect(wa, to=BRUNO), 138002, 429)
    assert "(1)" in details(error)


def test_2_media_relay_without_room_is_transient_and_recovers():
    """The relay cannot get its port (another program holds it): a connect gets Graph's transient
    error, never code 1 or a 500; a user's call fails the way the app shows it; both recover."""
    squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    squatter.bind(("127.0.0.1", 0))
    server = Wacall(extra=["--media-port", str(squatter.getsockname()[1])]).start()
    try:
        server.media_timeouts(False)
        grant_permission(server, ALICE)
        for _ in range(2):
            error = assert_graph_error(connect(server, to=ALICE), 2, 503)
            assert error["is_transient"] is True and "retry" in details(error).lower()
        refused = server.user_calls(BRUNO)
        assert refused.status_code == 503 and refused.json()["error"]["reason"] == "cannot_place_call"
        squatter.close()
        connected_call_id(connect(server, to=ALICE))
        assert server.user_calls(BRUNO).status_code == 201
    finally:
        squatter.close()
        server.close()
    log = server.proc.stderr.read()
    assert log.count("media capacity exhausted") == 1 and "media capacity recovered" in log
    assert "Traceback" not in log


def test_138003_duplicate_call(wa):
    grant_permission(wa, ALICE)
    set_user(wa, ALICE, incoming="ignore")
    first = connected_call_id(connect(wa))
    assert_graph_error(connect(wa), 138003, 400)
    assert wa.call(first)["state"] == "RINGING"


def test_138004_connection_error_fault(wa):
    grant_permission(wa, ALICE)
    assert wa.ctl("POST", "faults", {"connect_error": 1}).status_code == 200
    assert_graph_error(connect(wa), 138004, 500)
    connected_call_id(connect(wa))          # the fault was used up: the next connect goes through


def test_138005_call_rate_limit(wa):
    grant_permission(wa, ALICE)
    set_limits(wa, bic_initiations_per_24h=1)
    set_user(wa, ALICE, incoming="ignore")
    first = connected_call_id(connect(wa))
    assert wa.calls_action({"call_id": first, "action": "terminate"}).status_code == 200
    assert_graph_error(connect(wa), 138005, 429)


def test_138006_no_call_permission(wa):
    error = assert_graph_error(connect(wa, to=BRUNO), 138006, 401)
    assert error["message"] == "(#138006) No approved call permission found"


def test_138007_accept_after_accept_window(wa):
    call_id = user_call(wa)
    wa.advance(61)
    assert wa.call(call_id)["state"] == "ENDED"
    response = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": business_answer()}})
    assert_graph_error(response, 138007, 500)


def test_138007_terminate_webhook_errors(wa, receiver):
    call_id = user_call(wa)
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"], what="connect")
    wa.advance(61)
    terminate = receiver.wait(lambda r: [v for v in r.values("calls")
                                         if any(c["id"] == call_id and c["event"] == "terminate"
                                                for c in v.get("calls", []))], what="terminate")[0]
    assert terminate["calls"][0]["status"] == "FAILED"
    [error] = terminate["errors"]
    assert error["code"] == 138007 and error["error_data"]["details"]


def test_138009_permission_request_limit(wa):
    open_window(wa, ALICE)
    assert permission_request(wa, ALICE).status_code == 200
    error = assert_graph_error(permission_request(wa, ALICE), 138009, 400)
    assert error["message"] == "(#138009) Call Permission Request Limit Hit"


def test_138012_connected_bic_limit_with_next_allowed_time(wa):
    grant_permission(wa, ALICE)
    set_limits(wa, bic_connected_per_24h=1)
    first = connected_call_id(connect(wa))
    wa.advance(3)                                    # Alice answers after 2 s
    accepted_at = wa.wait_state(first, "ACCEPTED")["accepted_at"]
    assert wa.calls_action({"call_id": first, "action": "terminate"}).status_code == 200
    error = assert_graph_error(connect(wa), 138012, 400)
    next_allowed = int(accepted_at + 86400)
    assert f"Next call allowed at {next_allowed}" in details(error), details(error)


@pytest.mark.parametrize("how", ["patched-country", "us-number-in-config"])
def test_138013_bic_not_available_in_country(wa, errors_world, how):
    if how == "patched-country":
        set_number(wa, country="US")
        assert_graph_error(connect(wa), 138013, 400)
        open_window(wa, ALICE)
        assert_graph_error(permission_request(wa, ALICE), 138013, 400)
    else:
        response = errors_world.graph("POST", f"{E_US_NUMBER}/calls", token=E_FULL_TOKEN, json={
            "messaging_product": "whatsapp", "to": ALICE, "action": "connect",
            "session": {"sdp_type": "offer", "sdp": business_offer()}})
        assert_graph_error(response, 138013, 400)


def test_138014_calling_temporarily_restricted(wa):
    grant_permission(wa, BRUNO)
    restricted = wa.ctl("POST", f"numbers/{wa.pnid}/restrictions", {})
    assert restricted.status_code == 201, restricted.text
    assert_graph_error(connect(wa, to=BRUNO), 138014, 400)
    open_window(wa, ALICE)
    assert_graph_error(permission_request(wa, ALICE), 138014, 400)


def test_138015_calling_cannot_be_enabled_low_messaging_limit(wa):
    set_number(wa, messaging_limit=1000)
    error = assert_graph_error(post_settings(wa, {"status": "ENABLED"}), 138015, 400)
    assert "2000" in details(error)


def test_138017_permanent_permission_exists(wa):
    grant_permission(wa, ALICE, permanent=True)
    error = assert_graph_error(permission_request(wa, ALICE), 138017, 400)
    assert "permanent" in details(error)


@pytest.mark.parametrize("how", ["app-unsubscribed-from-waba", "subscriber-lacks-calls-field"])
def test_138018_no_calls_webhook_subscriber(wa, errors_world, how):
    if how == "app-unsubscribed-from-waba":
        assert wa.graph("DELETE", f"{wa.waba_id}/subscribed_apps").status_code == 200
        response = post_settings(wa, {"status": "ENABLED"})
    else:
        response = post_settings(errors_world, {"status": "ENABLED"}, token=E_NO_CALLS_FIELD_TOKEN,
                                 pnid=E_NO_SUB_NUMBER)
    error = assert_graph_error(response, 138018, 400)
    assert "calls" in details(error)


# -- the table above is complete ------------------------------------------------------------------------
def test_every_graph_error_code_is_covered():
    raised = set()
    for path in SRC.rglob("*.py"):
        raised |= {int(c) for c in re.findall(r"GraphError\(\s*(\d+)", path.read_text())}
    missing = raised - set(COVERAGE) - set(NOT_PROVOKABLE)
    assert not missing, f"error codes raised in src with no test here: {sorted(missing)}"
    names = {name for name, obj in globals().items() if name.startswith("test_") and callable(obj)}
    unknown = {t for tests in COVERAGE.values() for t in tests} - names
    assert not unknown, f"COVERAGE names tests that do not exist: {sorted(unknown)}"


def test_131053_media_upload_too_large(wa):
    response = wa.graph("POST", f"{wa.pnid}/media", files={"file": ("big.png", b"\x89PNG" + bytes(5 * 1024 * 1024),
                                                                      "image/png")},
                        data={"messaging_product": "whatsapp", "type": "image/png"})
    assert_graph_error(response, 131053, 400)


def test_2635_retired_graph_version(wa):
    response = wa.http.get(f"{wa.url}/v20.0/{wa.pnid}/settings", headers={"Authorization": f"Bearer {wa.token}"})
    assert_graph_error(response, 2635, 400)
