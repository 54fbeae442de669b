"""Call permissions at the Platform level: a temporary grant lasts 7 days and expires without a webhook,
a permanent one does not expire, requests are limited to 1 per 24 hours and 2 per 7 days per pair
(reset by a connected call), 4 consecutive unanswered business calls revoke the permission (with a
nudge at 2), and a user's call grants the business an automatic 7-day callback permission.

Numbers: Meta's production profile (``wacall.domain.limits.Limits``), see docs/fidelity.md.
"""

from __future__ import annotations

import pytest
from support.domain import ALICE, BRUNO, DAY, HOUR, T0, WEEK, Domain, configured

from wacall.domain.errors import GraphError
from wacall.domain.events import (
    CallConnect,
    CallStatus,
    CallTerminate,
    MessageStatus,
    PermissionReply,
    ReleaseMedia,
)


def request_permission(domain: Domain, wa_id: str) -> str:
    """The user writes (opening the service window), the business sends a free-form permission request."""
    domain.platform.user_sends_message(wa_id, domain.number.id, "hi")
    response = domain.platform.send_message(domain.app, domain.number, {
        "messaging_product": "whatsapp", "to": wa_id, "type": "interactive",
        "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                        "body": {"text": "May we call you?"}}})
    return response["messages"][0]["id"]


def reply_fields(event: PermissionReply) -> tuple:
    return (event.wa_id, event.response, event.is_permanent, event.expiration_timestamp, event.response_source,
            event.context_id, event.timestamp)


def refused(domain: Domain, wa_id: str) -> int:
    with pytest.raises(GraphError) as error:
        request_permission(domain, wa_id)
    return error.value.code


def usage(domain: Domain, wa_id: str) -> list[tuple]:
    view = domain.platform.call_permissions_view(domain.app, domain.number, wa_id)
    limits = view["actions"][0]["limits"]
    return [(l["time_period"], l["max_allowed"], l["current_usage"], l.get("limit_expiration_time")) for l in limits]


# -------------------------------------------------------------------------------------- grants, expiry

def test_temporary_permission_lasts_seven_days_and_expires_without_a_webhook(domain: Domain):
    request_id = request_permission(domain, ALICE)
    assert domain.events()[-2:] == [MessageStatus(request_id, "sent", T0), MessageStatus(request_id, "delivered", T0)]
    domain.advance(HOUR)
    assert domain.platform.user_permission_reply(ALICE, domain.number.id, response="accept") == {
        "permission": "temporary", "context_id": request_id}
    read, reply = domain.events()
    assert read == MessageStatus(request_id, "read", T0 + HOUR)
    assert reply_fields(reply) == (ALICE, "accept", False, T0 + HOUR + WEEK, "user_action", request_id, T0 + HOUR)
    view = domain.platform.call_permissions_view(domain.app, domain.number, ALICE)
    assert view["permission"] == {"status": "temporary", "expiration_time": int(T0 + HOUR + WEEK)}

    domain.advance(WEEK - 1)
    assert domain.platform.permission_status(domain.pair(ALICE)) == "temporary"
    domain.advance(1)
    assert domain.platform.permission_status(domain.pair(ALICE)) == "no_permission"
    assert domain.events() == []                 # Meta sends nothing when a temporary permission lapses
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138006


def test_permanent_permission_does_not_expire_and_needs_no_request(domain: Domain):
    request_permission(domain, ALICE)
    domain.events()
    domain.platform.user_permission_reply(ALICE, domain.number.id, response="accept", permanent=True)
    reply = domain.events()[-1]
    assert (reply.response, reply.is_permanent, reply.expiration_timestamp) == ("accept", True, None)
    domain.advance(400 * DAY)
    assert domain.platform.permission_status(domain.pair(ALICE)) == "permanent"
    assert refused(domain, ALICE) == 138017      # a permanent permission makes a request pointless
    call = domain.connect(ALICE)
    assert call.state == "RINGING"


def test_the_user_revokes_from_the_business_profile(domain: Domain):
    domain.grant(ALICE, permanent=True)
    assert domain.platform.user_permission_reply(ALICE, domain.number.id, response="revoke",
                                                 via="business_profile") == {"permission": "no_permission"}
    [reply] = domain.events()
    assert reply_fields(reply) == (ALICE, "reject", None, None, "user_action", None, T0)


def test_a_declined_request_leaves_no_permission(domain: Domain):
    request_id = request_permission(domain, ALICE)
    domain.events()
    domain.platform.user_permission_reply(ALICE, domain.number.id, response="reject")
    read, reply = domain.events()
    assert read == MessageStatus(request_id, "read", T0)
    assert reply_fields(reply) == (ALICE, "reject", None, None, "user_action", request_id, T0)
    assert domain.pair(ALICE).permission == "no_permission"


def test_a_virtual_user_who_accepts_requests_answers_after_its_delay(domain: Domain):
    domain.user(ALICE).permission_requests = "accept"           # replies after reply_after = 1 s
    request_id = request_permission(domain, ALICE)
    domain.events()
    domain.advance(0.999)
    assert domain.events() == []
    domain.advance(0.001)
    read, reply = domain.events()
    assert read == MessageStatus(request_id, "read", T0 + 1)
    assert reply_fields(reply) == (ALICE, "accept", False, T0 + 1 + WEEK, "user_action", request_id, T0 + 1)


# -------------------------------------------------------------------------------------- request limits

def test_requests_are_limited_to_one_per_24_hours_and_two_per_7_days(domain: Domain):
    request_permission(domain, ALICE)
    assert usage(domain, ALICE) == [("PT24H", 1, 1, int(T0 + DAY)), ("P7D", 2, 1, None)]
    domain.advance(DAY - 1)
    assert refused(domain, ALICE) == 138009
    domain.advance(1)                            # the first request is now exactly 24 h old
    request_permission(domain, ALICE)
    assert usage(domain, ALICE) == [("PT24H", 1, 1, int(T0 + 2 * DAY)), ("P7D", 2, 2, int(T0 + WEEK))]
    domain.advance(DAY)
    assert refused(domain, ALICE) == 138009      # 24 h are free again, the 7 days are not
    view = domain.platform.call_permissions_view(domain.app, domain.number, ALICE)
    assert view["actions"][0]["can_perform_action"] is False
    domain.advance(WEEK - 2 * DAY)               # T0 + 7 days: the first request leaves the week
    assert usage(domain, ALICE) == [("PT24H", 1, 0, None), ("P7D", 2, 1, None)]
    request_permission(domain, ALICE)
    request_permission(domain, BRUNO)            # limits are per pair: Bruno has his own
    assert usage(domain, BRUNO) == [("PT24H", 1, 1, int(T0 + 8 * DAY)), ("P7D", 2, 1, None)]


def test_a_connected_call_resets_the_request_limits(domain: Domain):
    request_permission(domain, ALICE)
    domain.platform.user_permission_reply(ALICE, domain.number.id, response="accept")
    assert refused(domain, ALICE) == 138009
    call = domain.connect(ALICE)
    domain.advance(2)                            # Alice answers: connected
    domain.act(call, "terminate")
    assert usage(domain, ALICE) == [("PT24H", 1, 0, None), ("P7D", 2, 0, None)]
    request_permission(domain, ALICE)


def test_a_request_needs_the_service_window(domain: Domain):
    domain.platform.user_sends_message(ALICE, domain.number.id, "hi")
    domain.advance(DAY)                          # the 24-hour window closed at T0 + 24 h
    with pytest.raises(GraphError) as error:
        domain.platform.send_message(domain.app, domain.number, {
            "messaging_product": "whatsapp", "to": ALICE, "type": "interactive",
            "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"}}})
    assert error.value.code == 131047


# ------------------------------------------------------------------------------- unanswered calls revoke

def test_four_unanswered_business_calls_revoke_the_permission(domain: Domain):
    domain.grant(ALICE, permanent=True)
    domain.user(ALICE).incoming = "ignore"
    calls = []
    for n in range(1, 5):
        call = domain.connect(ALICE)
        domain.advance(60)                       # ring timeout
        calls.append(call)
        events = domain.events()
        if n < 4:
            assert domain.pair(ALICE).unanswered_streak == n
            assert not [e for e in events if isinstance(e, PermissionReply)]
    nudges = [n for n in domain.notes(calls[1]) if n.get("action") == "nudge_shown"]
    assert len(nudges) == 1 and "2 consecutive unanswered calls" in nudges[0]["detail"]
    last = calls[3].id
    *call_events, reply = events
    assert call_events == [CallConnect(last), CallStatus(last, "RINGING", T0 + 3 * 60), configured(last),
                           CallTerminate(last), ReleaseMedia(last)]
    assert reply_fields(reply) == (ALICE, "reject", None, None, "automatic", None, T0 + 4 * 60)
    assert domain.pair(ALICE).permission == "no_permission" and domain.pair(ALICE).unanswered_streak == 0
    assert {"kind": "permission", "action": "auto_revoke"} in domain.notes(calls[3])
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138006


def test_rejections_and_cancellations_count_and_an_answered_call_resets_the_streak(domain: Domain):
    domain.grant(ALICE, permanent=True)
    user = domain.user(ALICE)
    user.incoming = "reject"
    domain.connect(ALICE)
    domain.advance(2)                            # rejected: 1
    user.incoming = "manual"
    domain.act(domain.connect(ALICE), "terminate")   # cancelled while ringing: 2
    domain.advance(1)
    user.incoming = "ignore"
    domain.connect(ALICE)
    domain.advance(60)                           # not answered: 3
    assert domain.pair(ALICE).unanswered_streak == 3
    user.incoming = "answer"
    answered = domain.connect(ALICE)
    domain.advance(2)
    domain.act(answered, "terminate")
    assert domain.pair(ALICE).unanswered_streak == 0
    user.incoming = "reject"
    domain.events()
    domain.connect(ALICE)
    domain.advance(2)
    assert domain.pair(ALICE).unanswered_streak == 1 and domain.pair(ALICE).permission == "permanent"
    assert not [e for e in domain.events() if isinstance(e, PermissionReply)]


# -------------------------------------------------------------------------------- automatic callback

def test_a_user_call_grants_a_seven_day_callback_permission(domain: Domain):
    call = domain.user_calls(BRUNO)
    connect, reply = domain.events()
    assert reply_fields(reply) == (BRUNO, "accept", False, T0 + WEEK, "automatic", call.id, T0)
    assert domain.pair(BRUNO).permission == "temporary"
    domain.act(call, "reject")                   # even an unanswered user call grants it
    domain.advance(WEEK - 1)
    callback = domain.connect(BRUNO)             # the business may call back within the 7 days
    assert callback.state == "RINGING"


@pytest.mark.parametrize("why", ["companion_device", "setting_disabled", "already_permanent"])
def test_no_callback_permission(domain: Domain, why: str):
    if why == "companion_device":
        domain.user(BRUNO).device = "companion"
    elif why == "setting_disabled":
        domain.number.calling["callback_permission_status"] = "DISABLED"
    else:
        domain.grant(BRUNO, permanent=True)
    call = domain.user_calls(BRUNO)
    assert domain.events() == [CallConnect(call.id)]
    assert domain.pair(BRUNO).permission == ("permanent" if why == "already_permanent" else "no_permission")
