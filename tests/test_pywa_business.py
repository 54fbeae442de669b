"""Acceptance: a business written with pywa (PyPI ``pywa==4.5.0``, unmodified) runs against wacall.

The business is pywa as shipped: its ``WhatsApp`` client (pointed at wacall only through the httpx
``session`` it accepts, see ``support/pywa_bridge.py``), its FastAPI webhook routes served by uvicorn,
its own app-scope callback registration (so wacall performs Meta's GET verification handshake against
pywa's endpoint), its own ``X-Hub-Signature-256`` validation (``validate_updates=True``) and its own
typed update handlers. Every assertion on a webhook is made on what pywa's handlers were given.

Where pywa 4.5.0 and Meta's documented API disagree, wacall keeps the documented shape
(shared/reference/calling-wire-spec.md) and the test says so in a comment marked ``pywa deviation``.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import hmac
import json
import warnings
from collections.abc import Iterator

import httpx
import pytest
from pywa import errors as pywa_errors
from pywa.types import CallPermissionRequestButton
from pywa.types.calls import (
    CallDirection,
    CallHours,
    CallIconVisibility,
    CallbackPermissionStatus,
    CallingSettings,
    CallingSettingsStatus,
    CallPermissionResponse,
    CallPermissionResponseSource,
    CallPermissionStatus,
    CallPermissions,
    CallTerminateStatus,
    Monday,
    SessionDescription,
    STRPKeyExchangeProtocol,
)

from support.pywa_bridge import PywaBusiness, start_business
from support.sdp_samples import business_answer, business_offer

ALICE = "447700900001"   # answers business calls after 2 s
BRUNO = "5511987650002"
DAVE = "14155550004"     # rejects business calls; never granted permission here
WEEK = 7 * 86400


@pytest.fixture
def business(wa) -> Iterator[PywaBusiness]:
    biz = start_business(wa)
    try:
        yield biz
    finally:
        biz.close()


def clock_now(wa) -> float:
    return wa.ctl("GET", "clock").json()["now"]


def assert_pywa_accepted_every_delivery(wa, business: PywaBusiness) -> None:
    """Every webhook wacall sent to pywa's endpoint got a 200 from pywa, i.e. passed pywa's own
    X-Hub-Signature-256 check (see test_pywa_refuses_webhooks_that_wacall_did_not_sign for the refusals)."""
    def settled() -> list[dict]:   # wacall records an attempt only once pywa's response is in
        ours = [j for j in wa.ctl("GET", "webhooks").json()["data"] if j["url"] == business.webhook_url]
        return ours if ours and all(j["status"] != "pending" for j in ours) else []
    ours = business.wait(settled, what="wacall's deliveries to pywa to settle")
    codes = [a["status_code"] for j in ours for a in j["attempt_log"]]
    assert all(j["status"] == "delivered" for j in ours) and all(code == 200 for code in codes), ours
    # and pywa's raw-update handler saw each delivered body (pywa skips exact duplicates only)
    bodies = {json.dumps(j["body"], sort_keys=True) for j in ours}
    business.wait(lambda: len(business.raw) >= len(bodies), what="pywa to handle every delivery")
    assert {json.dumps(r, sort_keys=True) for r in business.raw} == bodies


def call_permissions(client, wa_id: str) -> CallPermissions:
    """pywa's ``get_call_permissions``, parsed by pywa's own ``CallPermissions`` model.

    pywa bug (4.5.0, independent of wacall): ``WhatsApp.get_call_permissions`` passes only
    ``user_wa_id`` to ``GraphAPI.get_call_permissions``, whose ``recipient`` parameter has no default, so
    it raises TypeError before any request. Fall back to the same GraphAPI call with ``recipient=None``."""
    try:
        return client.get_call_permissions(wa_id)
    except TypeError as bug:
        assert "recipient" in str(bug)
        return CallPermissions.from_dict(client.api.get_call_permissions(
            phone_id=client.phone_id, user_wa_id=wa_id, recipient=None))


def raw_call_item(update) -> dict:
    return update.raw["entry"][0]["changes"][0]["value"]["calls"][0]


# -- 1. settings --------------------------------------------------------------------------------------
def test_pywa_enables_calling_and_reads_the_settings_back(wa, business):
    client = business.client

    assert client.update_business_phone_number_settings(
        calling=CallingSettings(status=CallingSettingsStatus.DISABLED))
    assert client.get_business_phone_number_settings().calling.status == CallingSettingsStatus.DISABLED
    refused = wa.user_calls(ALICE)
    assert refused.status_code >= 400 and refused.json()["error"]["reason"] == "calling_not_enabled"
    with pytest.raises(pywa_errors.CallingNotEnabled) as not_enabled:
        client.initiate_call(to=ALICE, sdp=SessionDescription(sdp_type="offer", sdp=business_offer()))
    assert not_enabled.value.code == 138000

    enabled = client.update_business_phone_number_settings(calling=CallingSettings(
        status=CallingSettingsStatus.ENABLED,
        call_icon_visibility=CallIconVisibility.DEFAULT,
        callback_permission_status=CallbackPermissionStatus.ENABLED,
        srtp_key_exchange_protocol=STRPKeyExchangeProtocol.DTLS,
        call_hours=CallHours(status=CallingSettingsStatus.DISABLED, timezone_id="Europe/London",
                             weekly_operating_hours=[Monday(open_time=dt.time(9, 0), close_time=dt.time(17, 30))]),
    ))
    assert enabled.success is True

    calling = client.get_business_phone_number_settings().calling
    assert calling.status == CallingSettingsStatus.ENABLED
    assert calling.call_icon_visibility == CallIconVisibility.DEFAULT
    assert calling.callback_permission_status == CallbackPermissionStatus.ENABLED
    assert calling.srtp_key_exchange_protocol == STRPKeyExchangeProtocol.DTLS
    assert calling.call_hours.status == CallingSettingsStatus.DISABLED
    assert calling.call_hours.timezone_id == "Europe/London"
    monday = calling.call_hours.weekly_operating_hours[0]
    assert (monday.day_of_week, monday.open_time, monday.close_time) == ("MONDAY", dt.time(9, 0), dt.time(17, 30))
    assert calling.sip.status.value == "DISABLED"

    # what pywa put on the wire, as it built it for graph.facebook.com
    posts = [e for e in business.transport.snapshot() if e.method == "POST" and e.original_url.endswith("/settings")]
    assert posts and all(e.original_url.startswith("https://graph.facebook.com/v") for e in posts)
    assert wa.user_calls(ALICE).status_code == 201


# -- 2. user-initiated call ---------------------------------------------------------------------------
def test_user_calls_pywa_business_which_pre_accepts_accepts_and_terminates(wa, business):
    client = business.client
    actions: list[tuple[str, object]] = []

    @client.on_call_connect
    def pick_up(_, call):   # runs in pywa's webhook worker, as a real pywa business would
        if call.direction != CallDirection.USER_INITIATED:
            return
        sdp = SessionDescription(sdp_type="answer", sdp=business_answer())
        for name, action in (("pre_accept", lambda: call.pre_accept(sdp=sdp)),
                             ("accept", lambda: call.accept(sdp=sdp, tracker="pywa-uic-1"))):
            try:
                actions.append((name, action()))
            except Exception as exc:   # pywa would only log it; keep it for the assertion below
                actions.append((name, exc))

    response = wa.user_calls(ALICE, entry_point="call_button", payload="order-42")
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]

    connect = business.wait_one("connect", lambda c: c.id == call_id)
    assert connect.direction == CallDirection.USER_INITIATED
    assert connect.from_user.wa_id == ALICE and connect.from_user.name == "Alice Smith"
    assert connect.metadata.phone_number_id == wa.pnid
    assert connect.session.sdp_type == "offer" and "a=ice-lite" in connect.session.sdp
    # pywa deviation: CallConnect has no cta_payload / deeplink_payload; they are only in the raw update.
    assert raw_call_item(connect)["cta_payload"] == "order-42"

    business.wait(lambda: len(actions) == 2, what="pywa's handler to pre-accept and accept")
    assert [(name, bool(result)) for name, result in actions] == [("pre_accept", True), ("accept", True)], actions
    wa.wait_state(call_id, "ACCEPTED")
    # callback permission is ENABLED by default: the user's call grants one, which pywa sees as an
    # automatic call_permission_reply in context of the call
    automatic = business.wait_one("permission", lambda p: p.reply_to_message and p.reply_to_message.id == call_id)
    assert automatic.response == CallPermissionResponse.ACCEPT
    assert automatic.response_source == CallPermissionResponseSource.AUTOMATIC

    wa.advance(65)
    assert client.terminate_call(call_id).success is True

    terminate = business.wait_one("terminate", lambda t: t.id == call_id)
    assert terminate.status == CallTerminateStatus.COMPLETED
    assert terminate.direction == CallDirection.USER_INITIATED
    assert terminate.tracker == "pywa-uic-1"
    assert terminate.error is None
    assert 65 <= terminate.duration <= 67
    assert (terminate.end_time - terminate.start_time).total_seconds() == terminate.duration
    assert terminate.from_user.wa_id == ALICE
    assert wa.call(call_id)["state"] == "ENDED"
    assert_pywa_accepted_every_delivery(wa, business)


def test_pywa_refuses_webhooks_that_wacall_did_not_sign(wa, business):
    body = json.dumps({"object": "whatsapp_business_account", "entry": [{"id": wa.waba_id, "changes": [
        {"field": "calls", "value": {"messaging_product": "whatsapp", "metadata": {
            "display_phone_number": wa.info["display_phone_number"], "phone_number_id": wa.pnid},
            "contacts": [{"profile": {"name": "Mallory"}, "wa_id": ALICE, "user_id": "GB.1"}],
            "calls": [{"id": "wacid.FORGED", "from": ALICE, "to": wa.info["display_phone_number"],
                       "event": "connect", "timestamp": "1700000000", "direction": "USER_INITIATED",
                       "session": {"sdp_type": "offer", "sdp": "v=0\r\n"}}]}}]}]}).encode()
    wrong = "sha256=" + hmac.new(b"not-the-app-secret", body, hashlib.sha256).hexdigest()
    with httpx.Client(timeout=10) as http:
        forged = http.post(business.webhook_url, content=body, headers={"X-Hub-Signature-256": wrong,
                                                                         "Content-Type": "application/json"})
        unsigned = http.post(business.webhook_url, content=body, headers={"Content-Type": "application/json"})
    assert forged.status_code == 403
    # pywa's FastAPI route declares the signature header required, so FastAPI itself refuses (422)
    # before pywa's validator (which would answer 401) runs
    assert unsigned.status_code == 422
    # the same body signed with the app secret, as wacall signs, is accepted and handled
    good = "sha256=" + hmac.new(wa.info["app_secret"].encode(), body, hashlib.sha256).hexdigest()
    with httpx.Client(timeout=10) as http:
        assert http.post(business.webhook_url, content=body, headers={
            "X-Hub-Signature-256": good, "Content-Type": "application/json"}).status_code == 200
    assert business.wait_one("connect", lambda c: c.id == "wacid.FORGED").from_user.name == "Mallory"
    assert len(business.of("connect")) == 1


# -- 3. permission request, then a business-initiated call --------------------------------------------
def test_pywa_asks_permission_then_calls_and_the_user_answers(wa, business):
    client = business.client
    assert wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    hello = business.wait_one("message", lambda m: m.from_user.wa_id == ALICE)
    assert hello.text == "hi"

    # (pywa also logs "Failed to construct update" for the sent/delivered statuses of this message:
    # MessageStatus.from_update wants value["contacts"], which Meta's documented message-status webhook,
    # as wacall sends it (wire spec 5.4), does not have. Nothing here depends on those statuses.)
    sent = client.send_message(to=ALICE, text="May we call you about your order?",
                               buttons=CallPermissionRequestButton())
    assert sent.id.startswith("wamid.")
    before = clock_now(wa)
    reply = wa.ctl("POST", f"users/{ALICE}/permission_replies", {"phone_number_id": wa.pnid, "response": "accept"})
    assert reply.status_code == 200, reply.text
    after = clock_now(wa)

    granted = business.wait_one("permission", lambda p: p.from_user.wa_id == ALICE)
    assert granted.response == CallPermissionResponse.ACCEPT and bool(granted)
    assert granted.response_source == CallPermissionResponseSource.USER_ACTION
    assert granted.reply_to_message.id == sent.id
    # Meta sends expiration_timestamp as a string of Unix seconds (wacall does too); pywa parses it with
    # int(), so both forms work. pywa deviation: CallPermissionUpdate drops `is_permanent` (raw only).
    raw_reply = granted.raw.value["messages"][0]["interactive"]["call_permission_reply"]
    assert isinstance(raw_reply["expiration_timestamp"], str) and raw_reply["is_permanent"] is False
    assert before + WEEK - 1 <= granted.expiration_timestamp.timestamp() <= after + WEEK + 1

    permissions = call_permissions(client, ALICE)
    assert permissions.permission.status == CallPermissionStatus.TEMPORARY
    assert permissions.permission.expiration_time == granted.expiration_timestamp
    start_call = next(a for a in permissions.actions if a.action_name == "start_call")
    assert start_call.can_perform_action is True

    offer = SessionDescription(sdp_type="offer", sdp=business_offer())
    try:
        call_id = client.initiate_call(to=ALICE, sdp=offer, tracker="pywa-bic-1").id
    except KeyError as missing:
        # pywa deviation: InitiatedCall.from_sent_update reads update["success"], but Meta's documented
        # connect response is {"messaging_product": "whatsapp", "calls": [{"id": ...}]} with no
        # "success" (wire spec 2.1). The call IS placed; pywa learns its id from the connect webhook.
        assert missing.args == ("success",)
        call_id = None
    sent_connect = [e for e in business.transport.snapshot() if e.original_url.endswith("/calls")][-1]
    assert sent_connect.status_code == 200 and sent_connect.body["calls"][0]["id"].startswith("wacid.")

    connect = business.wait_one("connect", lambda c: c.direction == CallDirection.BUSINESS_INITIATED)
    call_id = call_id or connect.id
    assert connect.id == call_id == sent_connect.body["calls"][0]["id"]
    assert connect.from_user.wa_id == ALICE
    assert connect.session.sdp_type == "answer"
    assert "a=ice-lite" in connect.session.sdp and "m=audio" in connect.session.sdp
    assert raw_call_item(connect)["biz_opaque_callback_data"] == "pywa-bic-1"

    # pywa deviation: CallStatus.from_update reads value["contacts"][0], but Meta's documented call-status
    # webhook (wire spec 6.5) carries no `contacts`; pywa logs "Failed to construct update" and never
    # calls on_call_status. The statuses still reach the business, signature-checked by pywa, through its
    # on_raw_update handler, which pywa calls for every accepted update.
    def statuses(status: str) -> list[dict]:
        return [s for v in business.raw_values("calls") for s in v.get("statuses", [])
                if s["id"] == call_id and s["status"] == status]
    ringing = business.wait(lambda: statuses("RINGING"), what="the RINGING status")
    wa.advance(2)   # Alice answers 2 s after her phone rings
    wa.wait_state(call_id, "ACCEPTED")
    accepted = business.wait(lambda: statuses("ACCEPTED"), what="the ACCEPTED status")
    seen = ringing + accepted
    assert len(seen) == 2
    assert all(s["biz_opaque_callback_data"] == "pywa-bic-1" and s["recipient_id"] == ALICE for s in seen)
    if not any("contacts" in v for v in business.raw_values("calls") if v.get("statuses")):
        assert business.of("status") == []
    else:   # should the typed model and the payload ever meet, the typed handler must agree
        assert {s.status.value for s in business.of("status", lambda s: s.id == call_id)} == {"RINGING", "ACCEPTED"}

    wa.advance(30)
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200   # Alice hangs up
    terminate = business.wait_one("terminate", lambda t: t.id == call_id)
    assert terminate.direction == CallDirection.BUSINESS_INITIATED
    assert terminate.status == CallTerminateStatus.COMPLETED
    assert terminate.tracker == "pywa-bic-1"
    assert 30 <= terminate.duration <= 32
    assert_pywa_accepted_every_delivery(wa, business)


# -- 4. no permission --------------------------------------------------------------------------------
def test_pywa_calling_without_permission_raises_138006(wa, business):
    client = business.client
    with pytest.raises(pywa_errors.CallPermissionNotFound) as refused:
        client.initiate_call(to=DAVE, sdp=SessionDescription(sdp_type="offer", sdp=business_offer()))
    error = refused.value
    assert isinstance(error, pywa_errors.CallingError)
    assert error.code == 138006
    assert error.status_code == 401
    assert "No approved call permission" in error.message
    assert call_permissions(client, DAVE).permission.status == CallPermissionStatus.NO_PERMISSION
    assert not [c for c in wa.ctl("GET", "calls").json()["data"] if c["wa_id"] == DAVE]
    assert business.of("connect") == []


def test_permanent_permission_keeps_the_documented_status_pywa_reads_it_as_unknown(wa, business):
    client = business.client
    reply = wa.ctl("POST", f"users/{BRUNO}/permission_replies",
                   {"phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"})
    assert reply.status_code == 200, reply.text
    granted = business.wait_one("permission", lambda p: p.from_user.wa_id == BRUNO)
    assert granted.response == CallPermissionResponse.ACCEPT
    assert granted.reply_to_message is None            # granted from the business profile: no context
    assert granted.expiration_timestamp is None        # permanent: never expires
    assert granted.raw.value["messages"][0]["interactive"]["call_permission_reply"]["is_permanent"] is True

    # pywa deviation: CallPermissionStatus has only no_permission/temporary; Meta documents `permanent`
    # (since 2025-11-03, wire spec 4), which wacall returns. pywa maps it to UNKNOWN with a warning.
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        permissions = call_permissions(client, BRUNO)
    assert permissions.permission.status == CallPermissionStatus.UNKNOWN
    assert any(issubclass(w.category, pywa_errors.PywaUnknownEnumMemberWarning) for w in caught)
    raw = [e for e in business.transport.snapshot() if "/call_permissions" in e.original_url][-1].body
    assert raw["permission"]["status"] == "permanent" and "expiration_time" not in raw["permission"]
    assert permissions.permission.expiration_time is None
