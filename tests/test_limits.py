"""The business rules that hang on the virtual clock: permissions and their expiry, request limits, the
unanswered-call streak, the connected-call cap, automatic callback permission, the customer service
window, call hours, call icon visibility, the UIC accept window, and pricing / analytics.

Everything goes through the Graph API and the control API of the shared emulator, with a real
webhook receiver; time moves only through ``POST /_wacall/clock/advance``.
"""

from __future__ import annotations

import datetime as dt
import time

import pytest

from support.harness import graph_error
from support.sdp_samples import business_answer, business_offer

ALICE = "447700900001"      # GB, answers after 2 s
BRUNO = "5511987650002"     # BR
CHITRA = "919876500003"     # IN, iOS
DAVE = "14155550004"        # US, rejects every call by default
DAY = 86400
WEEK = 7 * DAY
DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")


# ---------------------------------------------------------------------------------------------- helpers

def now(wa) -> float:
    return wa.ctl("GET", "clock").json()["now"]


def user_message(wa, wa_id: str, text: str = "hello") -> None:
    response = wa.ctl("POST", f"users/{wa_id}/messages", {"to": wa.pnid, "text": text})
    assert response.status_code == 201, response.text


def permission_request(wa, wa_id: str):
    return wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": wa_id, "type": "interactive",
        "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                        "body": {"text": "May we call you?"}}})


def reply(wa, wa_id: str, response: str = "accept", permanent: bool = False):
    return wa.ctl("POST", f"users/{wa_id}/permission_replies",
                  {"phone_number_id": wa.pnid, "response": response, "permanent": permanent})


def grant(wa, wa_id: str, permanent: bool = False) -> None:
    """The user writes, the business asks for call permission, the user accepts."""
    user_message(wa, wa_id)
    sent = permission_request(wa, wa_id)
    assert sent.status_code == 200, sent.text
    answered = reply(wa, wa_id, "accept", permanent)
    assert answered.status_code == 200, answered.text
    assert answered.json()["permission"] == ("permanent" if permanent else "temporary")


def permissions(wa, wa_id: str) -> dict:
    """GET call_permissions, riding out the 5-per-second rate limit if a test happens to hit it."""
    deadline = time.monotonic() + 5
    while True:
        response = wa.graph("GET", f"{wa.pnid}/call_permissions", params={"user_wa_id": wa_id})
        if response.status_code == 429 and time.monotonic() < deadline:
            time.sleep(0.25)
            continue
        assert response.status_code == 200, response.text
        return response.json()


def action(view: dict, name: str) -> dict:
    return next(a for a in view["actions"] if a["action_name"] == name)


def limit(view: dict, name: str, period: str) -> dict:
    return next(item for item in action(view, name)["limits"] if item["time_period"] == period)


def connect(wa, wa_id: str, opaque: str | None = None):
    body = {"to": wa_id, "action": "connect", "session": {"sdp_type": "offer", "sdp": business_offer()}}
    if opaque:
        body["biz_opaque_callback_data"] = opaque
    return wa.calls_action(body)


def connect_ok(wa, wa_id: str, opaque: str | None = None) -> str:
    response = connect(wa, wa_id, opaque)
    assert response.status_code == 200, response.text
    return response.json()["calls"][0]["id"]


def patch_user(wa, wa_id: str, **fields) -> None:
    response = wa.ctl("PATCH", f"users/{wa_id}", fields)
    assert response.status_code == 200, response.text


def settings(wa, calling: dict):
    return wa.graph("POST", f"{wa.pnid}/settings", json={"calling": calling})


def settings_ok(wa, calling: dict) -> None:
    response = settings(wa, calling)
    assert response.status_code == 200, response.text


def user_call(wa, wa_id: str, entry_point: str = "call_icon"):
    return wa.user_calls(wa_id, entry_point=entry_point)


def refused(response, reason: str) -> None:
    assert 400 <= response.status_code < 500, response.text
    assert response.json()["error"]["reason"] == reason, response.text


def hang_up(wa, call_id: str) -> None:
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200


def permission_replies(receiver) -> list[dict]:
    """Every call_permission_reply message (with its contacts-free message item) received so far."""
    return [m for value in receiver.values("messages") for m in value.get("messages", [])
            if m.get("interactive", {}).get("type") == "call_permission_reply"]


def accepted_uic(wa, wa_id: str) -> str:
    """A user-initiated call the business picks up: a connected call in the UIC direction."""
    response = wa.user_calls(wa_id, entry_point="call_button")
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    answer = business_answer()
    accepted = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": answer}})
    assert accepted.status_code == 200, accepted.text
    assert wa.call(call_id)["state"] == "ACCEPTED"
    return call_id


# ---------------------------------------------------------------------------------------------- permissions

def test_temporary_permission_expires_after_seven_days_permanent_survives(wa, receiver):
    user_message(wa, ALICE)
    assert permission_request(wa, ALICE).status_code == 200
    before = now(wa)
    assert reply(wa, ALICE, "accept").status_code == 200
    after = now(wa)

    view = permissions(wa, ALICE)
    assert view["messaging_product"] == "whatsapp"
    assert view["permission"]["status"] == "temporary"
    expiration = view["permission"]["expiration_time"]
    assert isinstance(expiration, int)
    assert int(before) + 604800 <= expiration <= after + 604800
    assert action(view, "start_call")["can_perform_action"] is True

    # the reply webhook carries the same expiry, as a string
    reply_item = receiver.wait(lambda r: permission_replies(r))[0]
    payload = reply_item["interactive"]["call_permission_reply"]
    assert payload["response"] == "accept" and payload["is_permanent"] is False
    assert payload["response_source"] == "user_action"
    assert payload["expiration_timestamp"] == str(expiration)

    grant(wa, BRUNO, permanent=True)
    bruno = permissions(wa, BRUNO)
    assert bruno["permission"] == {"status": "permanent"}
    receiver.wait(lambda r: len(permission_replies(r)) == 2)

    wa.advance(WEEK + 1)
    view = permissions(wa, ALICE)
    assert view["permission"] == {"status": "no_permission"}
    assert action(view, "start_call")["can_perform_action"] is False
    error = graph_error(connect(wa, ALICE), 138006)
    assert error["error_data"]["details"]

    assert permissions(wa, BRUNO)["permission"] == {"status": "permanent"}
    call_id = connect_ok(wa, BRUNO)
    assert wa.call(call_id)["state"] == "RINGING"
    # no webhook announces the expiry
    assert len(permission_replies(receiver)) == 2


# ---------------------------------------------------------------------------------------------- request limits

def test_permission_request_limits_per_day_and_week_and_reset_by_connected_calls(wa, receiver):
    user_message(wa, ALICE)
    first = permission_request(wa, ALICE)
    assert first.status_code == 200, first.text
    t1 = now(wa)
    graph_error(permission_request(wa, ALICE), 138009)

    view = permissions(wa, ALICE)
    request = action(view, "send_call_permission_request")
    assert request["can_perform_action"] is False
    day = limit(view, "send_call_permission_request", "PT24H")
    week = limit(view, "send_call_permission_request", "P7D")
    assert (day["current_usage"], day["max_allowed"]) == (1, 1)
    assert abs(day["limit_expiration_time"] - (t1 + DAY)) <= 2
    assert (week["current_usage"], week["max_allowed"]) == (1, 2)
    assert "limit_expiration_time" not in week

    wa.advance(DAY)
    user_message(wa, ALICE)               # the service window closed with the day; reopen it
    second = permission_request(wa, ALICE)
    assert second.status_code == 200, second.text

    wa.advance(DAY)
    user_message(wa, ALICE)
    graph_error(permission_request(wa, ALICE), 138009)   # 2 within 7 days
    view = permissions(wa, ALICE)
    assert action(view, "send_call_permission_request")["can_perform_action"] is False
    day = limit(view, "send_call_permission_request", "PT24H")
    week = limit(view, "send_call_permission_request", "P7D")
    assert day["current_usage"] == 0 and "limit_expiration_time" not in day
    assert (week["current_usage"], week["max_allowed"]) == (2, 2)
    assert abs(week["limit_expiration_time"] - (t1 + WEEK)) <= 2

    # a connected user-initiated call resets the counters
    call_id = accepted_uic(wa, ALICE)
    view = permissions(wa, ALICE)
    assert action(view, "send_call_permission_request")["can_perform_action"] is True
    assert [item["current_usage"] for item in action(view, "send_call_permission_request")["limits"]] == [0, 0]
    hang_up(wa, call_id)

    assert permission_request(wa, ALICE).status_code == 200
    graph_error(permission_request(wa, ALICE), 138009)

    # ... and so does a connected business-initiated call (Alice answers after 2 s)
    assert permissions(wa, ALICE)["permission"]["status"] == "temporary"   # automatic callback permission
    bic = connect_ok(wa, ALICE)
    wa.advance(3)
    assert wa.call(bic)["state"] == "ACCEPTED"
    view = permissions(wa, ALICE)
    assert action(view, "send_call_permission_request")["can_perform_action"] is True
    assert limit(view, "send_call_permission_request", "PT24H")["current_usage"] == 0
    assert permission_request(wa, ALICE).status_code == 200


# ---------------------------------------------------------------------------------------------- unanswered streak

def ring_out(wa, wa_id: str) -> str:
    call_id = connect_ok(wa, wa_id)
    wa.advance(61)
    call = wa.call(call_id)
    assert call["state"] == "ENDED" and call["end_reason"] == "not_answered", call
    return call_id


def nudged(call: dict) -> bool:
    return any(e.get("action") == "nudge_shown" for e in call["timeline"])


def auto_revokes(receiver) -> list[dict]:
    return [m for m in permission_replies(receiver)
            if m["interactive"]["call_permission_reply"].get("response_source") == "automatic"
            and m["interactive"]["call_permission_reply"]["response"] == "reject"]


def test_four_unanswered_business_calls_revoke_the_permission(wa, receiver):
    grant(wa, ALICE)
    patch_user(wa, ALICE, incoming="ignore")
    first = ring_out(wa, ALICE)
    assert not nudged(wa.call(first))
    terminate = receiver.wait(lambda r: [e for e in r.call_events(first) if e.get("event") == "terminate"])[0]
    assert terminate["status"] == "COMPLETED" and "duration" not in terminate
    second = ring_out(wa, ALICE)
    assert nudged(wa.call(second))
    third = ring_out(wa, ALICE)
    assert not nudged(wa.call(third))
    assert permissions(wa, ALICE)["permission"]["status"] == "temporary"
    assert auto_revokes(receiver) == []

    fourth = ring_out(wa, ALICE)
    assert any(e.get("action") == "auto_revoke" for e in wa.call(fourth)["timeline"])
    revoke = receiver.wait(lambda r: auto_revokes(r), what="automatic revoke")[0]
    payload = revoke["interactive"]["call_permission_reply"]
    assert payload["response"] == "reject"
    assert payload["response_source"] == "automatic"
    assert "context" not in revoke
    assert "expiration_timestamp" not in payload and "is_permanent" not in payload
    assert revoke["from"] == ALICE
    assert permissions(wa, ALICE)["permission"] == {"status": "no_permission"}
    graph_error(connect(wa, ALICE), 138006)


def test_rejections_count_towards_the_streak(wa, receiver):
    grant(wa, DAVE)
    for n in range(4):
        call_id = connect_ok(wa, DAVE)
        wa.advance(3)                          # Dave rejects after 2 s
        call = wa.call(call_id)
        assert call["state"] == "ENDED" and call["end_reason"] == "rejected", call
        statuses = receiver.wait(lambda r: [e["status"] for e in r.call_events(call_id)
                                            if e["event"] == "status" and e["status"] == "REJECTED"])
        assert statuses == ["REJECTED"]
        assert nudged(call) == (n == 1)
    revoke = receiver.wait(lambda r: auto_revokes(r), what="automatic revoke")[0]
    assert revoke["from"] == DAVE and "context" not in revoke
    assert permissions(wa, DAVE)["permission"] == {"status": "no_permission"}
    graph_error(connect(wa, DAVE), 138006)


def test_an_answered_call_resets_the_unanswered_streak(wa, receiver):
    grant(wa, ALICE)
    patch_user(wa, ALICE, incoming="ignore")
    for _ in range(3):
        ring_out(wa, ALICE)
    patch_user(wa, ALICE, incoming="answer")
    answered = connect_ok(wa, ALICE)
    wa.advance(3)
    assert wa.call(answered)["state"] == "ACCEPTED"
    hang_up(wa, answered)

    patch_user(wa, ALICE, incoming="ignore")
    calls = [ring_out(wa, ALICE) for _ in range(3)]
    assert nudged(wa.call(calls[1]))           # the streak started again from zero
    assert permissions(wa, ALICE)["permission"]["status"] == "temporary"
    assert auto_revokes(receiver) == []
    ring_out(wa, ALICE)                         # the 4th in a row since the answered call
    receiver.wait(lambda r: auto_revokes(r), what="automatic revoke")
    assert permissions(wa, ALICE)["permission"] == {"status": "no_permission"}


# ---------------------------------------------------------------------------------------------- connected-call cap

def test_connected_business_calls_per_day_cap(wa, receiver):
    patched = wa.ctl("PATCH", "limits", {"bic_connected_per_24h": 2})
    assert patched.status_code == 200 and patched.json()["bic_connected_per_24h"] == 2
    grant(wa, ALICE)
    accepted = []
    for _ in range(2):
        call_id = connect_ok(wa, ALICE)
        wa.advance(3)
        call = wa.call(call_id)
        assert call["state"] == "ACCEPTED"
        accepted.append(call["accepted_at"])
        hang_up(wa, call_id)

    view = permissions(wa, ALICE)
    start_call = action(view, "start_call")
    assert start_call["can_perform_action"] is False
    cap = limit(view, "start_call", "PT24H")
    assert (cap["current_usage"], cap["max_allowed"]) == (2, 2)
    assert cap["limit_expiration_time"] == int(accepted[0] + DAY)

    error = graph_error(connect(wa, ALICE), 138012)
    details = error["error_data"]["details"]
    assert f"Next call allowed at {int(accepted[0] + DAY)}" in details
    expected_iso = dt.datetime.fromtimestamp(accepted[0] + DAY, dt.timezone.utc).isoformat()[:19]
    assert expected_iso in details

    wa.advance(DAY)
    assert action(permissions(wa, ALICE), "start_call")["can_perform_action"] is True
    call_id = connect_ok(wa, ALICE)
    wa.advance(3)
    assert wa.call(call_id)["state"] == "ACCEPTED"


# ---------------------------------------------------------------------------------------------- callback permission

def test_user_call_grants_automatic_callback_permission(wa, receiver):
    response = wa.user_calls(ALICE, entry_point="call_button")
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    message = receiver.wait(lambda r: permission_replies(r), what="callback permission")[0]
    assert message["from"] == ALICE
    assert message["context"]["id"] == call_id and call_id.startswith("wacid.")
    payload = message["interactive"]["call_permission_reply"]
    assert payload["response"] == "accept"
    assert payload["response_source"] == "automatic"
    assert payload["is_permanent"] is False
    assert isinstance(payload["expiration_timestamp"], str)
    view = permissions(wa, ALICE)
    assert view["permission"]["status"] == "temporary"
    assert payload["expiration_timestamp"] == str(view["permission"]["expiration_time"])
    # and the business may call back
    hang_up(wa, call_id)
    assert connect(wa, ALICE).status_code == 200


# ---------------------------------------------------------------------------------------------- service window

def test_customer_service_window_gates_free_form_requests_not_templates(wa, receiver):
    graph_error(permission_request(wa, ALICE), 131047)
    user_message(wa, ALICE)
    assert permission_request(wa, ALICE).status_code == 200
    wa.advance(DAY + 1)
    graph_error(permission_request(wa, ALICE), 131047)

    # a user call opens the window too (the call itself need not be picked up)
    graph_error(permission_request(wa, BRUNO), 131047)
    assert wa.user_calls(BRUNO, entry_point="call_button").status_code == 201
    assert permission_request(wa, BRUNO).status_code == 200

    # a template-based permission request goes out with no window at all
    graph_error(permission_request(wa, CHITRA), 131047)
    created = wa.graph("POST", f"{wa.waba_id}/message_templates", json={
        "name": "may_we_call", "language": "en_US", "category": "MARKETING",
        "components": [{"type": "BODY", "text": "Can we call you about your order?"},
                       {"type": "call_permission_request"}]})
    assert created.status_code == 200, created.text
    sent = wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": CHITRA, "type": "template",
        "template": {"name": "may_we_call", "language": {"code": "en_US"}}})
    assert sent.status_code == 200, sent.text
    assert sent.json()["messages"][0]["id"].startswith("wamid.")
    # it counts against the same request limits
    graph_error(wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": CHITRA, "type": "template",
        "template": {"name": "may_we_call", "language": {"code": "en_US"}}}), 138009)
    assert reply(wa, CHITRA, "accept").json()["permission"] == "temporary"


# ---------------------------------------------------------------------------------------------- call hours

def local_midday_zone(at: float) -> tuple[str, dt.datetime]:
    """A fixed-offset zone in which ``at`` is around noon (so a window 08:00-20:00 surely holds it)."""
    utc_hour = dt.datetime.fromtimestamp(at, dt.timezone.utc).hour
    shift = 12 - utc_hour                      # -11 .. +12
    zone = "Etc/GMT" if shift == 0 else f"Etc/GMT{'-' if shift > 0 else '+'}{abs(shift)}"
    from zoneinfo import ZoneInfo
    return zone, dt.datetime.fromtimestamp(at, ZoneInfo(zone))


def test_call_hours_and_holidays_refuse_user_calls(wa, receiver):
    zone, local = local_midday_zone(now(wa))
    today = DAYS[local.weekday()]
    other_day = DAYS[(local.weekday() + 3) % 7]
    settings_ok(wa, {"call_hours": {"status": "ENABLED", "timezone_id": zone, "weekly_operating_hours": [
        {"day_of_week": other_day, "open_time": "0800", "close_time": "2000"}]}})
    refused(user_call(wa, ALICE, "call_button"), "outside_call_hours")

    open_today = [{"day_of_week": today, "open_time": "0800", "close_time": "2000"}]
    settings_ok(wa, {"call_hours": {"status": "ENABLED", "timezone_id": zone,
                                    "weekly_operating_hours": open_today}})
    inside = user_call(wa, ALICE, "call_button")
    assert inside.status_code == 201, inside.text
    hang_up(wa, inside.json()["call_id"])

    settings_ok(wa, {"call_hours": {"status": "ENABLED", "timezone_id": zone, "weekly_operating_hours": open_today,
                                    "holiday_schedule": [{"date": local.date().isoformat(),
                                                          "start_time": "0000", "end_time": "2359"}]}})
    refused(user_call(wa, ALICE, "call_button"), "outside_call_hours")
    refused(user_call(wa, BRUNO, "call_log"), "outside_call_hours")

    settings_ok(wa, {"call_hours": {"status": "DISABLED"}})
    allowed = user_call(wa, ALICE, "call_button")
    assert allowed.status_code == 201, allowed.text


# ---------------------------------------------------------------------------------------------- call icon

def test_call_icon_visibility_and_country_restriction(wa, receiver):
    settings_ok(wa, {"call_icon_visibility": "DISABLE_ALL"})
    refused(user_call(wa, ALICE, "call_icon"), "call_icon_hidden")
    for entry_point in ("call_button", "deeplink", "call_log"):
        response = user_call(wa, ALICE, entry_point)
        assert response.status_code == 201, (entry_point, response.text)
        assert wa.call(response.json()["call_id"])["entry_point"] == entry_point
        hang_up(wa, response.json()["call_id"])

    settings_ok(wa, {"call_icon_visibility": "DEFAULT", "call_icons": {"restrict_to_user_countries": ["BR"]}})
    refused(user_call(wa, ALICE, "call_icon"), "call_icon_hidden")
    bruno = user_call(wa, BRUNO, "call_icon")
    assert bruno.status_code == 201, bruno.text
    alice = user_call(wa, ALICE, "call_button")
    assert alice.status_code == 201, alice.text

    settings_ok(wa, {"call_icons": {"restrict_to_user_countries": []}})
    hang_up(wa, alice.json()["call_id"])
    assert user_call(wa, ALICE, "call_icon").status_code == 201


# ---------------------------------------------------------------------------------------------- UIC accept window

def test_user_call_not_accepted_in_time_fails_with_138007(wa, receiver):
    response = wa.user_calls(ALICE, entry_point="call_button")
    call_id = response.json()["call_id"]
    pre = wa.calls_action({"call_id": call_id, "action": "pre_accept",
                           "session": {"sdp_type": "answer", "sdp": business_answer()}})
    assert pre.status_code == 200, pre.text
    wa.advance(59)
    assert wa.call(call_id)["state"] == "PRE_ACCEPTED"
    wa.advance(2)
    call = wa.call(call_id)
    assert call["state"] == "ENDED" and call["end_status"] == "FAILED"

    def terminate_value(r):
        return [v for v in r.values("calls") for c in v.get("calls", [])
                if c["id"] == call_id and c["event"] == "terminate"]
    value = receiver.wait(terminate_value, what="terminate webhook")[0]
    item = value["calls"][0]
    assert item["status"] == "FAILED"
    assert "duration" not in item and "start_time" not in item
    assert value["errors"][0]["code"] == 138007
    # a late accept is refused with the same code
    late = wa.calls_action({"call_id": call_id, "action": "accept",
                            "session": {"sdp_type": "answer", "sdp": business_answer()}})
    graph_error(late, 138007)


# ---------------------------------------------------------------------------------------------- pricing

def test_business_call_pricing_and_call_analytics(wa, receiver):
    grant(wa, ALICE)
    call_id = connect_ok(wa, ALICE, opaque="priced")
    wa.advance(3)
    assert wa.call(call_id)["state"] == "ACCEPTED"
    wa.advance(56)
    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    call = wa.call(call_id)
    assert call["duration"] == 56
    assert call["pulses"] == 10                              # 56 s = 10 six-second pulses, rounded up
    assert call["cost"] == pytest.approx(0.03)               # +44 tier 1: $0.03 per minute = 10 x 0.003
    terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    assert terminate["duration"] == 56 and terminate["biz_opaque_callback_data"] == "priced"

    # a free user-initiated call next to it, 30 s long
    uic = accepted_uic(wa, BRUNO)
    wa.advance(30)
    assert wa.calls_action({"call_id": uic, "action": "terminate"}).status_code == 200
    assert wa.call(uic)["pulses"] == 0 and wa.call(uic)["cost"] == 0

    response = wa.graph("GET", wa.waba_id, params={"fields": "call_analytics"})
    assert response.status_code == 200, response.text
    points = {p["direction"]: p for p in response.json()["call_analytics"]["data"][0]["data_points"]}
    bic, user = points["BUSINESS_INITIATED"], points["USER_INITIATED"]
    assert (bic["count"], bic["completed_count"], bic["total_duration"]) == (1, 1, 56)
    assert bic["average_duration"] == 56
    assert bic["pulses"] == 10 and bic["cost"] == pytest.approx(0.03) and bic["currency"] == "USD"
    assert (user["count"], user["completed_count"], user["total_duration"]) == (1, 1, 30)
    assert user["pulses"] == 0 and user["cost"] == 0
