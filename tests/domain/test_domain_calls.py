"""The call state machine at the Platform level, both directions, on a clock that only the test moves.

User-initiated: RINGING --pre_accept--> PRE_ACCEPTED --accept--> ACCEPTED --terminate--> ENDED, with
reject, the user hanging up and the 60 s accept window (138007). Business-initiated: connect -->
RINGING --user answers--> ACCEPTED, with the user rejecting, the 60 s ring timeout and the business
cancelling. Every step asserts the exact events the wire layers would turn into webhooks.
"""

from __future__ import annotations

import pytest
from support.domain import ALICE, BRUNO, DAVE, T0, Domain, configured
from support.sdp_samples import business_answer

from wacall.domain.ends import MediaFact
from wacall.domain.errors import GraphError
from wacall.domain.events import (
    CallConnect,
    CallStatus,
    CallTerminate,
    MediaConnected,
    ReleaseMedia,
)
from wacall.domain.model import ACCEPTED, ENDED, PRE_ACCEPTED, RINGING
from wacall.domain.state import ControlError


def ended(call) -> tuple:
    return call.state, call.end_status, call.end_reason, call.ended_by


# ---------------------------------------------------------------------------------------- user-initiated

def test_user_call_rings_pre_accepts_accepts_and_terminates(domain: Domain):
    domain.grant(BRUNO, permanent=True)          # no automatic callback permission event in the way
    call = domain.user_calls(BRUNO, entry_point="call_icon")
    assert (call.state, call.direction, call.deadline, call.deadline_kind) == (
        RINGING, "USER_INITIATED", T0 + 60, "accept_timeout")
    assert domain.events() == [CallConnect(call.id)]
    assert domain.platform.active_count(domain.number.id) == 1

    domain.advance(5)
    assert domain.act(call, "pre_accept") == {"messaging_product": "whatsapp", "success": True}
    assert call.state == PRE_ACCEPTED
    assert domain.events() == [configured(call.id)]

    domain.advance(10)
    domain.act(call, "accept", biz_opaque_callback_data="ticket-7")
    assert (call.state, call.accepted_at, call.deadline) == (ACCEPTED, T0 + 15, None)
    assert call.biz_opaque_callback_data == "ticket-7"
    assert domain.events() == [MediaConnected(call.id, T0 + 15)]     # configured once, at the pre_accept

    domain.advance(90)                           # well past the accept window: a connected call has none
    assert call.state == ACCEPTED and domain.events() == []
    domain.act(call, "terminate")
    assert ended(call) == (ENDED, "COMPLETED", "completed", "business")
    assert (call.duration, call.start_time, call.end_time) == (90, int(T0 + 15), int(T0 + 105))
    assert (call.pulses, call.cost) == (0, 0.0)  # user-initiated calls are free
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    assert domain.platform.active_count(domain.number.id) == 0
    assert [n["state"] for n in domain.notes(call) if n["kind"] == "state"] == [
        RINGING, PRE_ACCEPTED, ACCEPTED, ENDED]


def test_user_call_accepted_without_pre_accept(domain: Domain):
    call = domain.user_calls(BRUNO)
    domain.events()
    domain.advance(59.9)
    domain.act(call, "accept")
    assert call.state == ACCEPTED
    assert domain.events() == [configured(call.id), MediaConnected(call.id, T0 + 59.9)]


def test_accept_must_repeat_the_pre_accept_answer(domain: Domain):
    call = domain.user_calls(BRUNO)
    domain.act(call, "pre_accept")
    domain.events()
    other = {"sdp_type": "answer", "sdp": business_answer(ufrag="oThr")}
    with pytest.raises(GraphError) as error:
        domain.act(call, "accept", session=other)
    assert error.value.code == 100 and "different from the SDP answer given in pre_accept" in error.value.details
    assert call.state == PRE_ACCEPTED and domain.events() == []


def test_business_rejects_a_ringing_and_a_pre_accepted_user_call(domain: Domain):
    ringing = domain.user_calls(BRUNO)
    domain.events()
    domain.act(ringing, "reject")
    assert ended(ringing) == (ENDED, "COMPLETED", "rejected", "business")
    assert ringing.duration is None
    assert domain.events() == [CallTerminate(ringing.id), ReleaseMedia(ringing.id)]

    pre_accepted = domain.user_calls(ALICE)
    domain.act(pre_accepted, "pre_accept")
    domain.events()
    domain.act(pre_accepted, "reject")
    assert ended(pre_accepted) == (ENDED, "COMPLETED", "rejected", "business")
    assert domain.events() == [CallTerminate(pre_accepted.id), ReleaseMedia(pre_accepted.id)]
    with pytest.raises(GraphError) as error:
        domain.act(pre_accepted, "accept")
    assert error.value.code == 100 and "already terminated (rejected)" in error.value.details


def test_user_call_not_accepted_within_60_seconds_fails_with_138007(domain: Domain):
    call = domain.user_calls(BRUNO)
    domain.events()
    domain.advance(59.999)
    assert call.state == RINGING and domain.events() == []
    domain.advance(0.001)
    assert ended(call) == (ENDED, "FAILED", "not_answered", "platform")
    assert [e["code"] for e in call.errors] == [138007]
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    with pytest.raises(GraphError) as error:     # a late accept gets the timeout error, not a generic one
        domain.act(call, "accept")
    assert error.value.code == 138007


def test_pre_accepted_call_still_times_out_at_60_seconds(domain: Domain):
    call = domain.user_calls(BRUNO)
    domain.advance(30)
    domain.act(call, "pre_accept")
    domain.events()
    domain.advance(30)
    assert ended(call) == (ENDED, "FAILED", "not_answered", "platform")
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]


def test_user_hangs_up_while_ringing_and_mid_call(domain: Domain):
    ringing = domain.user_calls(BRUNO)
    domain.events()
    domain.platform.user_hangs_up(ringing)
    assert ended(ringing) == (ENDED, "COMPLETED", "user_hangup", "user")
    assert domain.events() == [CallTerminate(ringing.id), ReleaseMedia(ringing.id)]
    with pytest.raises(GraphError) as error:
        domain.act(ringing, "accept")
    assert error.value.code == 100 and "the WhatsApp user has already terminated the call" in error.value.details

    talking = domain.user_calls(BRUNO)
    domain.act(talking, "accept")
    domain.advance(12)
    domain.events()
    domain.platform.user_hangs_up(talking)
    assert ended(talking) == (ENDED, "COMPLETED", "user_hangup", "user") and talking.duration == 12
    with pytest.raises(ControlError) as refused:
        domain.platform.user_hangs_up(talking)
    assert refused.value.reason == "call_ended"


def test_user_call_actions_out_of_order(domain: Domain):
    call = domain.user_calls(BRUNO)
    domain.act(call, "accept")
    for action in ("pre_accept", "accept", "reject"):
        with pytest.raises(GraphError) as error:
            domain.act(call, action)
        assert error.value.code == 100 and "already in progress" in error.value.details
    domain.act(call, "terminate")
    with pytest.raises(GraphError) as error:
        domain.act(call, "terminate")
    assert error.value.code == 100 and "already terminated (completed)" in error.value.details


def test_a_second_user_call_to_the_same_business_is_refused_while_one_is_live(domain: Domain):
    domain.user_calls(BRUNO)
    with pytest.raises(ControlError) as refused:
        domain.user_calls(BRUNO)
    assert refused.value.reason == "already_in_call"


# ------------------------------------------------------------------------------------ business-initiated

def test_business_call_rings_and_the_user_answers_after_2_seconds(domain: Domain):
    domain.grant(ALICE)
    call = domain.connect(ALICE, biz_opaque_callback_data="order-1")
    assert (call.state, call.direction, call.biz_opaque_callback_data) == (RINGING, "BUSINESS_INITIATED", "order-1")
    assert (call.deadline, call.deadline_kind) == (T0 + 2, "user_answer")
    assert domain.events() == [CallConnect(call.id), CallStatus(call.id, "RINGING", T0), configured(call.id)]
    assert call.meta_sdp and "a=setup:" in call.meta_sdp   # Meta's answer to the business's offer

    domain.advance(1.999)
    assert call.state == RINGING and domain.events() == []
    domain.advance(0.001)
    assert (call.state, call.accepted_at) == (ACCEPTED, T0 + 2)
    assert domain.events() == [MediaConnected(call.id, T0 + 2), CallStatus(call.id, "ACCEPTED", T0 + 2)]

    domain.advance(56)
    domain.act(call, "terminate")
    assert ended(call) == (ENDED, "COMPLETED", "completed", "business")
    assert (call.duration, call.start_time, call.end_time) == (56, int(T0 + 2), int(T0 + 58))
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    assert domain.pair(ALICE).window_opened_at == T0 + 2   # answering opens the service window


def test_business_call_the_user_rejects(domain: Domain):
    domain.grant(DAVE)
    call = domain.connect(DAVE)
    assert (call.deadline, call.deadline_kind) == (T0 + 2, "user_reject")
    domain.events()
    domain.advance(2)
    assert ended(call) == (ENDED, "COMPLETED", "rejected", "user")
    assert (call.duration, call.pulses, call.cost) == (None, 0, 0.0)
    assert domain.events() == [CallStatus(call.id, "REJECTED", T0 + 2), CallTerminate(call.id),
                               ReleaseMedia(call.id)]
    assert domain.pair(DAVE).unanswered_streak == 1


def test_business_call_nobody_answers_ends_after_the_60_second_ring_timeout(domain: Domain):
    domain.grant(ALICE)
    domain.user(ALICE).incoming = "ignore"
    call = domain.connect(ALICE)
    assert (call.deadline, call.deadline_kind) == (T0 + 60, "ring_timeout")
    domain.events()
    domain.advance(59.999)
    assert call.state == RINGING and domain.events() == []
    domain.advance(0.001)
    assert ended(call) == (ENDED, "COMPLETED", "not_answered", "platform")
    assert (call.duration, call.start_time, call.errors) == (None, None, [])
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    assert domain.pair(ALICE).unanswered_streak == 1


def test_business_cancels_its_ringing_call(domain: Domain):
    domain.grant(ALICE)
    domain.user(ALICE).incoming = "manual"
    call = domain.connect(ALICE)
    domain.events()
    domain.advance(10)
    domain.act(call, "terminate")
    assert ended(call) == (ENDED, "COMPLETED", "cancelled", "business")
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    assert domain.pair(ALICE).unanswered_streak == 1     # a cancelled call went unanswered
    domain.advance(60)                                   # its ring timer is gone with it
    assert domain.events() == [] and domain.platform.next_deadline() is None


def test_user_answers_by_hand_and_hangs_up(domain: Domain):
    domain.grant(ALICE)
    domain.user(ALICE).incoming = "manual"
    call = domain.connect(ALICE)
    domain.advance(7)
    domain.events()
    domain.platform.user_answers(call)
    assert domain.events() == [MediaConnected(call.id, T0 + 7), CallStatus(call.id, "ACCEPTED", T0 + 7)]
    domain.advance(20)
    domain.platform.user_hangs_up(call)
    assert ended(call) == (ENDED, "COMPLETED", "user_hangup", "user") and call.duration == 20
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]


def test_business_call_actions_that_only_user_calls_have(domain: Domain):
    domain.grant(ALICE)
    call = domain.connect(ALICE)
    for action in ("pre_accept", "accept", "reject"):
        with pytest.raises(GraphError) as error:
            domain.act(call, action)
        assert error.value.code == 100 and "only valid for user-initiated calls" in error.value.details
    assert call.state == RINGING


@pytest.mark.parametrize("setup, code", [
    ("no_permission", 138006),
    ("duplicate", 138003),
    ("uncallable", 138001),
    ("no_payment", 131044),
    ("restricted", 138014),
    ("us_number", 138013),
])
def test_business_connect_refusals(domain: Domain, setup: str, code: int):
    if setup != "no_permission":
        domain.grant(ALICE)
    if setup == "duplicate":
        domain.connect(ALICE)
    elif setup == "uncallable":
        domain.user(ALICE).platform = "web"
    elif setup == "no_payment":
        domain.number.payment_method = False
    elif setup == "restricted":
        domain.platform.add_restriction(domain.number, "RESTRICTED_BUSINESS_INITIATED_CALLING", 3600)
    elif setup == "us_number":
        domain.number.country = "US"
    live = dict(domain.platform.active_calls)
    domain.events()
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == code
    assert domain.platform.active_calls == live and domain.events() == []


# ------------------------------------------------------------------------------------------------ media

def test_media_failure_ends_a_connected_call_failed_with_the_code(domain: Domain):
    domain.grant(ALICE)
    call = domain.connect(ALICE)
    domain.advance(2)
    domain.advance(14)
    domain.events()
    domain.platform.media_ended(call.id, MediaFact.SILENCE, "no media for 30 s")
    assert ended(call) == (ENDED, "FAILED", "media: no media for 30 s", "user")
    assert [e["code"] for e in call.errors] == [138021]
    assert (call.duration, call.pulses) == (14, 3)       # what connected is still billed
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    domain.platform.media_ended(call.id, MediaFact.SILENCE, "again")  # an ended call stays as it is
    assert domain.events() == [] and call.end_reason == "media: no media for 30 s"
