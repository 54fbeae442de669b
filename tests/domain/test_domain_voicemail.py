"""Voicemail in the call state machine, on a clock only the test moves.

A user-initiated call the business rejects (``REJECT``) or leaves unanswered for ``timeout_seconds``
(``TIMEOUT``) goes to VOICEMAIL: the relay is told to play the announcement (``VoicemailAnswer``), then
to take the user's message (``VoicemailRecord``); the message arrives as an audio message whose id is
the wacid, after the terminate. Best effort: a hangup during the announcement, or a relay that never
reports, ends the call without a message.
"""

from __future__ import annotations

import pytest
from support.domain import BRUNO, T0, Domain

from wacall.domain.calls import VOICEMAIL_DEFAULT_MESSAGE_SECONDS, VOICEMAIL_GRACE_SECONDS
from wacall.domain.errors import GraphError
from wacall.domain.events import (
    CallConnect,
    CallTerminate,
    InboundMessage,
    ReleaseMedia,
    VoicemailAnswer,
    VoicemailRecord,
)
from wacall.domain.model import ENDED, RINGING, VOICEMAIL
from wacall.domain.state import ControlError

ANNOUNCEMENT = "938884519013664"


def enable(domain: Domain, triggers=("REJECT", "TIMEOUT"), timeout: int = 20) -> None:
    domain.number.calling["voicemail"] = {
        "status": "ENABLED", "triggers": list(triggers),
        "audio": {"default": {"announcement_media_id": int(ANNOUNCEMENT), "timeout_seconds": timeout}}}


def placed(domain: Domain):
    domain.grant(BRUNO, permanent=True)
    call = domain.user_calls(BRUNO)
    assert domain.events() == [CallConnect(call.id)]
    return call


def leave(domain: Domain, call, seconds: float) -> None:
    domain.platform.voicemail_left(call.id, media_id="555", sha256="c2hh", mime_type="audio/ogg; codecs=opus",
                                   seconds=seconds)


def test_reject_goes_to_voicemail_and_the_message_arrives_with_the_wacid(domain: Domain):
    enable(domain)
    call = placed(domain)
    domain.advance(3)
    domain.act(call, "reject")
    assert call.state == VOICEMAIL and call.voicemail["trigger"] == "REJECT"
    assert domain.events() == [VoicemailAnswer(call.id, ANNOUNCEMENT, domain.user(BRUNO).audio)]
    with pytest.raises(GraphError) as error:          # the business left the call
        domain.act(call, "accept")
    assert "went to voicemail" in error.value.details
    with pytest.raises(GraphError):
        domain.act(call, "terminate")

    domain.advance(4)                                  # the announcement played
    domain.platform.voicemail_heard(call.id)
    assert domain.events() == [VoicemailRecord(call.id, VOICEMAIL_DEFAULT_MESSAGE_SECONDS)]
    assert call.voicemail["phase"] == "message"
    domain.advance(5)
    leave(domain, call, 5.0)
    assert (call.state, call.end_status, call.end_reason, call.ended_by) == (ENDED, "COMPLETED", "voicemail", "user")
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id), InboundMessage(call.id)]
    message = domain.platform.messages[call.id]
    assert (message.type, message.direction, message.body["audio"]["id"]) == ("audio", "inbound", "555")
    assert call.voicemail | {} == {**call.voicemail, "trigger": "REJECT", "media_id": "555", "seconds": 5.0,
                                   "phase": "done"}
    assert call.duration is None                       # the business never connected: nothing is billed
    assert domain.pair(BRUNO).window_opened_at == T0 + 12


def test_timeout_goes_to_voicemail_after_timeout_seconds(domain: Domain):
    enable(domain, triggers=["TIMEOUT"], timeout=7)
    call = placed(domain)
    assert (call.deadline, call.deadline_kind) == (T0 + 7, "voicemail_timeout")
    domain.act(call, "pre_accept")                     # a pre-accept is not an accept
    domain.events()
    domain.advance(6.9)
    assert call.state != VOICEMAIL
    domain.advance(0.1)
    assert call.state == VOICEMAIL and call.voicemail["trigger"] == "TIMEOUT"
    assert [type(e) for e in domain.events()] == [VoicemailAnswer]


def test_only_the_configured_triggers_go_to_voicemail(domain: Domain):
    enable(domain, triggers=["TIMEOUT"], timeout=10)
    call = placed(domain)
    domain.act(call, "reject")                         # REJECT is not a trigger: an ordinary reject
    assert (call.state, call.end_reason) == (ENDED, "rejected")

    enable(domain, triggers=["REJECT"])
    call = domain.user_calls(BRUNO)
    assert call.deadline_kind == "accept_timeout"     # no TIMEOUT: the 60 s accept window as ever
    domain.advance(60)
    assert (call.state, call.end_status) == (ENDED, "FAILED")


def test_disabled_voicemail_or_calling_is_ignored(domain: Domain):
    enable(domain)
    domain.number.calling["voicemail"]["status"] = "DISABLED"
    call = placed(domain)
    assert call.deadline_kind == "accept_timeout"
    domain.act(call, "reject")
    assert call.end_reason == "rejected"


def test_settings_changed_before_the_timeout_falls_back_to_the_accept_window(domain: Domain):
    enable(domain, triggers=["TIMEOUT"], timeout=5)
    call = placed(domain)
    domain.number.calling["voicemail"]["status"] = "DISABLED"
    domain.advance(5)
    assert (call.state, call.deadline, call.deadline_kind) == (RINGING, T0 + 60, "accept_timeout")


def test_user_hangs_up_during_the_announcement_no_message(domain: Domain):
    enable(domain)
    call = placed(domain)
    domain.act(call, "reject")
    domain.events()
    domain.advance(2)
    domain.platform.user_hangs_up(call)
    assert (call.state, call.end_reason, call.voicemail["phase"], call.voicemail["media_id"]) == (
        ENDED, "user_hangup", "abandoned", None)
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]
    domain.platform.voicemail_heard(call.id)          # a late report from the relay changes nothing
    leave(domain, call, 5)
    assert domain.events() == [] and call.id not in domain.platform.messages


def test_the_users_choice_of_message_length(domain: Domain):
    enable(domain)
    call = placed(domain)
    for bad in (0, 121, "5", True, None):
        with pytest.raises(ControlError):
            domain.platform.user_voicemail_choice(call, bad)
    domain.platform.user_voicemail_choice(call, 3)    # chosen before the voicemail answers
    domain.act(call, "reject")
    domain.platform.user_voicemail_choice(call, 2.5)  # or while the announcement plays
    domain.events()
    domain.platform.voicemail_heard(call.id)
    assert domain.events() == [VoicemailRecord(call.id, 2.5)]
    with pytest.raises(ControlError) as error:
        domain.platform.user_voicemail_choice(call, 4)
    assert error.value.reason == "too_late"


def test_a_relay_that_never_reports_ends_the_call_without_a_message(domain: Domain):
    enable(domain)
    call = placed(domain)
    domain.act(call, "reject")
    domain.events()
    domain.advance(60 + VOICEMAIL_GRACE_SECONDS)
    assert (call.state, call.end_reason, call.ended_by, call.voicemail["phase"]) == (
        ENDED, "voicemail_failed", "platform", "failed")
    assert domain.events() == [CallTerminate(call.id), ReleaseMedia(call.id)]

    call = domain.user_calls(BRUNO)
    domain.act(call, "reject")
    domain.platform.voicemail_heard(call.id)
    domain.events()
    domain.advance(VOICEMAIL_DEFAULT_MESSAGE_SECONDS + VOICEMAIL_GRACE_SECONDS)
    assert call.end_reason == "voicemail_failed" and call.id not in domain.platform.messages


def test_voicemail_call_counts_as_active_until_it_ends(domain: Domain):
    enable(domain)
    call = placed(domain)
    domain.act(call, "reject")
    assert domain.platform.active_count(domain.number.id) == 1
    with pytest.raises(ControlError):
        domain.user_calls(BRUNO)                       # the user is still on this call
    domain.platform.voicemail_failed(call.id, "test")
    assert domain.platform.active_count(domain.number.id) == 0


# ---------------------------------------------------------------------------------------- settings

def details(update: dict, current: dict | None = None) -> str:
    from wacall.domain.settings import apply_calling_update
    import datetime as dt
    with pytest.raises(GraphError) as error:
        apply_calling_update(current or {}, {"voicemail": update}, app_id="1", today=dt.date(2026, 6, 1))
    assert error.value.code == 100
    return error.value.details


def test_enabled_voicemail_needs_triggers_audio_and_timeout():
    audio = {"default": {"announcement_media_id": "1", "timeout_seconds": 5}}
    assert details({"status": "ENABLED", "audio": audio}) == \
        "The parameter calling[voicemail][triggers] is required."
    assert details({"status": "ENABLED", "triggers": [], "audio": audio}).startswith(
        "Param calling[voicemail][triggers] must contain at least one")
    assert details({"status": "ENABLED", "triggers": ["REJECT"]}) == \
        "The parameter calling[voicemail][audio][default] is required."
    assert details({"status": "ENABLED", "triggers": ["REJECT"], "audio": {"default": {}}}) == \
        "The parameter calling[voicemail][audio][default][announcement_media_id] is required."
    assert details({"status": "ENABLED", "triggers": ["TIMEOUT"],
                    "audio": {"default": {"announcement_media_id": 1}}}) == \
        "The parameter calling[voicemail][audio][default][timeout_seconds] is required."


def test_voicemail_plan_reads_the_stored_setting():
    from wacall.domain.settings import voicemail_plan
    stored = {"status": "ENABLED", "voicemail": {"status": "ENABLED", "triggers": ["REJECT"],
                                                 "audio": {"default": {"announcement_media_id": 42}}}}
    assert voicemail_plan(stored, "REJECT") == {"announcement_media_id": "42", "timeout_seconds": 0}
    assert voicemail_plan(stored, "TIMEOUT") is None
    assert voicemail_plan({**stored, "status": "DISABLED"}, "REJECT") is None   # calling off: ignored


def test_a_sip_decline_is_a_reject_only_when_it_says_so(domain: Domain):
    enable(domain)
    call = placed(domain)
    domain.platform.sip_business_declines(call, 403, "Forbidden")      # an error, not a rejection
    assert (call.state, call.end_reason) == (ENDED, "rejected")
    for status in (486, 600, 603):
        call = domain.user_calls(BRUNO)
        domain.platform.sip_business_declines(call, status, "Decline")
        assert call.state == VOICEMAIL and call.voicemail["trigger"] == "REJECT"
        domain.platform.sip_call_failed(call, "late 200 OK with a bad SDP")   # the voicemail goes on
        assert call.state == VOICEMAIL
        domain.platform.voicemail_failed(call.id, "test")
