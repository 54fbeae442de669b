"""Business-scoped user IDs end to end: an unmodified pywa 4.5.0 business (which knows Meta's BSUID
fields: ``User.bsuid``, ``parent_bsuid``, ``username``; ``recipient`` on calls and permission lookups)
against a running wacall, and the SIP gateway with a BSUID in the Request-URI and Meta's user-id headers.

The rules themselves (30-day and contacts rule, every webhook shape) are tested on the virtual clock in
tests/domain/test_domain_identity.py.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from pywa.types.calls import CallDirection, CallPermissions, CallPermissionStatus, SessionDescription

from support.pywa_bridge import PywaBusiness, start_business
from support.sdp_samples import business_offer
from support.sip_tools import Stunnel, free_port, header_values

ALICE = "447700900001"
CAROL = "447700900077"      # adopted a username and shows it instead of her number


@pytest.fixture
def business(wa) -> Iterator[PywaBusiness]:
    biz = start_business(wa)
    try:
        yield biz
    finally:
        biz.close()


def user(wa, wa_id: str) -> dict:
    response = wa.ctl("GET", f"users/{wa_id}")
    assert response.status_code == 200, response.text
    return response.json()


def parents_on(wa) -> None:
    response = wa.ctl("PATCH", f"wabas/{wa.waba_id}", {"parent_bsuids": True})
    assert response.status_code == 200 and response.json()["parent_bsuids"] is True, response.text


def add_carol(wa) -> dict:
    response = wa.ctl("POST", "users", {"wa_id": CAROL, "name": "Carol", "username": "carol.gardens",
                                        "username_only": True, "answer_after": 1.0})
    assert response.status_code == 201, response.text
    return response.json()


def permissions_by_recipient(business: PywaBusiness, recipient: str) -> CallPermissions:
    """pywa's own call for a BSUID: ``WhatsApp.get_call_permissions(bsuid)`` maps it to ``recipient`` but
    then (pywa 4.5.0 bug, as for phone numbers: see test_pywa_business.call_permissions) omits the
    ``user_wa_id`` argument GraphAPI.get_call_permissions requires; so the same GraphAPI call, by hand."""
    try:
        return business.client.get_call_permissions(recipient)
    except TypeError as bug:
        assert "user_wa_id" in str(bug)
        return CallPermissions.from_dict(business.client.api.get_call_permissions(
            phone_id=business.client.phone_id, user_wa_id=None, recipient=recipient))


def test_pywa_reads_bsuid_parent_and_username_from_messages_statuses_and_calls(wa, business):
    parents_on(wa)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"username": "alice.s"}).status_code == 200
    alice = user(wa, ALICE)
    statuses = []
    business.client.on_message_status()(lambda _, status: statuses.append(status))

    assert wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    hello = business.wait_one("message", lambda m: m.text == "hi")
    assert (hello.from_user.wa_id, hello.from_user.bsuid, hello.from_user.parent_bsuid, hello.from_user.username) == (
        ALICE, alice["user_id"], alice["parent_user_id"], "alice.s")
    assert hello.raw["entry"][0]["changes"][0]["value"]["messages"][0]["from_user_id"] == alice["user_id"]

    sent = business.client.send_message(to=ALICE, text="Thanks!")
    # since BSUIDs Meta's sent/delivered/read statuses carry `contacts`, which pywa's MessageStatus needs
    business.wait(lambda: {s.status.value for s in statuses if s.id == sent.id} >= {"sent", "delivered"},
                  what="pywa's typed sent and delivered statuses")
    delivered = next(s for s in statuses if s.id == sent.id and s.status.value == "delivered")
    assert (delivered.from_user.bsuid, delivered.from_user.parent_bsuid, delivered.from_user.username) == (
        alice["user_id"], alice["parent_user_id"], "alice.s")
    raw_status = delivered.raw["entry"][0]["changes"][0]["value"]["statuses"][0]
    assert (raw_status["recipient_id"], raw_status["recipient_user_id"], raw_status["parent_recipient_user_id"]) == (
        ALICE, alice["user_id"], alice["parent_user_id"])

    call_id = wa.user_calls(ALICE).json()["call_id"]
    connect = business.wait_one("connect", lambda c: c.id == call_id)
    assert connect.direction == CallDirection.USER_INITIATED
    assert (connect.from_user.wa_id, connect.from_user.bsuid, connect.from_user.parent_bsuid) == (
        ALICE, alice["user_id"], alice["parent_user_id"])
    item = connect.raw["entry"][0]["changes"][0]["value"]["calls"][0]
    assert (item["from"], item["from_user_id"], item["from_parent_user_id"]) == (
        ALICE, alice["user_id"], alice["parent_user_id"])
    business.client.reject_call(call_id=call_id)
    terminate = business.wait_one("terminate", lambda t: t.id == call_id)
    assert terminate.from_user.bsuid == alice["user_id"]

    changes = []       # Alice changes number: pywa's PhoneNumberChange reads user_changed_user_id
    business.client.on_phone_number_change()(lambda _, change: changes.append(change))
    moved = wa.ctl("POST", f"users/{ALICE}/number_change", {"wa_id": "447700900099"}).json()
    [change] = business.wait(lambda: changes, what="pywa's PhoneNumberChange")
    assert change.sys_type.value == "user_changed_user_id" and change.old_wa_id == ALICE
    assert (change.new_user_id, change.new_parent_id) == (moved["user_id"], moved["parent_user_id"])
    assert moved["user_id"] != alice["user_id"]


def test_pywa_calls_and_looks_up_permission_by_bsuid_and_a_username_only_user_shows_no_number(wa, business):
    carol = add_carol(wa)
    assert "user_id" in carol and carol["user_id"].startswith("GB.")
    assert wa.ctl("POST", f"users/{CAROL}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    permissions = permissions_by_recipient(business, carol["user_id"])
    # pywa deviation: its CallPermissionStatus has no `permanent` (Meta's since 2025-11): UNKNOWN, with a warning
    assert permissions.permission.status == CallPermissionStatus.UNKNOWN
    raw = business.client.api.get_call_permissions(phone_id=business.client.phone_id, user_wa_id=None,
                                                   recipient=carol["user_id"])
    assert raw["permission"] == {"status": "permanent"}
    start = next(a for a in permissions.actions if a.action_name == "start_call")
    assert start.can_perform_action is True

    offer = SessionDescription(sdp_type="offer", sdp=business_offer())
    try:
        business.client.initiate_call(to=carol["user_id"], sdp=offer)     # pywa sends `recipient`
    except KeyError as missing:     # pywa deviation: reads "success" from the connect response (wire spec 2.1)
        assert missing.args == ("success",)
    sent = [e for e in business.transport.snapshot() if e.original_url.endswith("/calls")][-1]
    assert sent.status_code == 200, sent.body
    connect = business.wait_one("connect", lambda c: c.direction == CallDirection.BUSINESS_INITIATED)
    assert connect.from_user.bsuid == carol["user_id"] and connect.from_user.wa_id is None
    assert connect.from_user.username == "carol.gardens"
    value = connect.raw["entry"][0]["changes"][0]["value"]
    assert CAROL not in repr(value), "no phone number anywhere for a username-only user"
    assert value["calls"][0]["to_user_id"] == carol["user_id"] and "to" not in value["calls"][0]
    assert wa.call(connect.id)["wa_id"] == CAROL

    wa.advance(1)                        # Carol answers; the statuses name her by BSUID only
    wa.wait_state(connect.id, "ACCEPTED")
    accepted = business.wait(lambda: [s for v in business.raw_values("calls") for s in v.get("statuses", [])
                                      if s["id"] == connect.id and s["status"] == "ACCEPTED"], what="ACCEPTED")
    assert accepted[0]["recipient_user_id"] == carol["user_id"] and "recipient_id" not in accepted[0]
    assert wa.ctl("POST", f"calls/{connect.id}/hangup").status_code == 200
    terminate = business.wait_one("terminate", lambda t: t.id == connect.id)
    assert terminate.from_user.wa_id is None and terminate.from_user.bsuid == carol["user_id"]


def test_graph_recipient_to_wins_and_unknown_bsuids(wa):
    for wa_id in (ALICE, "14155550004"):
        wa.grant_permission(wa_id)
    alice = user(wa, ALICE)
    session = {"sdp_type": "offer", "sdp": business_offer()}
    both = wa.calls_action({"action": "connect", "to": "14155550004", "recipient": alice["user_id"],
                            "session": session})
    assert both.status_code == 200, both.text
    assert wa.call(both.json()["calls"][0]["id"])["wa_id"] == "14155550004"      # `to` wins
    unknown = wa.calls_action({"action": "connect", "recipient": "GB.1", "session": session})
    assert unknown.status_code == 400 and unknown.json()["error"]["code"] == 138001
    lookup = wa.graph("GET", f"{wa.pnid}/call_permissions", params={"recipient": alice["user_id"]})
    assert lookup.status_code == 200 and lookup.json()["permission"]["status"] == "temporary", lookup.text


def test_number_change_gives_a_new_bsuid_and_a_user_changed_user_id_system_message(wa, receiver):
    assert wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "hi"}).status_code == 201
    old = user(wa, ALICE)["user_id"]
    moved = wa.ctl("POST", f"users/{ALICE}/number_change", {"wa_id": "+44 7700 900099"})
    assert moved.status_code == 201, moved.text
    new = moved.json()
    assert new["wa_id"] == "447700900099" and new["user_id"] != old and new["user_id"].startswith("GB.")
    assert user(wa, ALICE)["changed_to"] == "447700900099"

    value = receiver.wait_for("messages", type="system")
    assert "contacts" not in value
    [message] = value["messages"]
    assert message["system"]["type"] == "user_changed_user_id"
    assert (message["from"], message["from_user_id"], message["system"]["user_id"]) == (ALICE, old, new["user_id"])
    assert wa.ctl("POST", f"users/{ALICE}/number_change", {"wa_id": "447700900098"}).status_code == 409


def test_user_id_headers_on_a_sip_users_call(wa, tmp_path):
    from test_sip_user_calls import BusinessServer
    parents_on(wa)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"username": "alice.s"}).status_code == 200
    alice = user(wa, ALICE)
    server = BusinessServer(wa, tmp_path).start()
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        wa.wait_state(call_id, "ACCEPTED", timeout=15)
        assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
        result = server.sipp.wait(timeout=30)
        result.assert_ok(1)
    finally:
        server.stop()
    invite = next(t for t in result.received() if t.startswith("INVITE "))
    assert header_values(invite, "x-wa-meta-user-id") == [alice["user_id"]]
    assert header_values(invite, "x-wa-meta-parent-user-id") == [alice["parent_user_id"]]
    assert header_values(invite, "x-wa-meta-user-name") == ["alice.s"]
    assert header_values(invite, "x-wa-meta-user-country-code") == ["GB"]


def test_a_business_sip_invite_to_a_bsuid_reaches_the_user(wa, tmp_path):
    from test_sip_gateway import Sip
    info = wa.info["sip"]
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
        "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
        "sip": {"status": "ENABLED", "servers": [{"hostname": "pbx.business.example", "port": free_port()}]}}})
    assert response.status_code == 200, response.text
    settings = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    password = settings["calling"]["sip"]["servers"][0]["sip_user_password"]
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
    alice = user(wa, ALICE)
    tunnel = Stunnel.client(("127.0.0.1", info["port"]), ca=Path(info["ca_file"]), check_host="wa.meta.vc",
                            workdir=tmp_path / "stunnel").start()
    try:
        result = Sip(wa, tunnel, password, tmp_path).sipp("bic_digest.xml", user=alice["user_id"],
                                                          hold_ms=500).run(timeout=60)
    finally:
        tunnel.stop()
    result.assert_ok(1)
    assert 200 in result.statuses(), result.describe()
    calls = [wa.call(c["call_id"]) for c in wa.ctl("GET", "calls").json()["data"]]
    assert [c["wa_id"] for c in calls if c["direction"] == "BUSINESS_INITIATED"] == [ALICE]
