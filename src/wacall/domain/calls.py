"""The call state machine, both directions, and the rules that guard it.

User-initiated (UIC):  RINGING --pre_accept--> PRE_ACCEPTED --accept--> ACCEPTED --terminate--> ENDED
                       RINGING/PRE_ACCEPTED --reject | user hangs up | accept window passes--> ENDED
                       RINGING/PRE_ACCEPTED --reject | timeout_seconds pass (voicemail on)--> VOICEMAIL
                       VOICEMAIL --announcement played, message recorded | user hangs up | stalls--> ENDED
Business-initiated (BIC): connect --> RINGING --user answers--> ACCEPTED --terminate/hangup--> ENDED
                       RINGING --user rejects | ring timeout | business terminates--> ENDED
"""

from __future__ import annotations

import bisect
import datetime as dt
import zoneinfo
from typing import Any, Protocol

from . import identity
from . import recording as call_recording
from . import settings as calling_settings
from .ends import failure_code
from .errors import GraphError
from .events import (
    CallConnect,
    CallCreated,
    CallStatus,
    CallTerminate,
    MediaConfigure,
    MediaConnected,
    InboundMessage,
    ReleaseMedia,
    SipCallChanged,
    VoicemailAnswer,
    VoicemailRecord,
)
from .limits import BIC_UNAVAILABLE_COUNTRIES, DAY, version_at_least
from .model import (
    ACCEPTED,
    BUSINESS_INITIATED,
    ENDED,
    PRE_ACCEPTED,
    RINGING,
    USER_INITIATED,
    VOICEMAIL,
    Call,
    Message,
    Pair,
    PhoneNumber,
    User,
)
from .phone import phone_digits
from .pricing import PULSE_SECONDS, price_call
from .sdp import (
    LocalMedia,
    MetaSdp,
    SdpError,
    SessionDescription,
    build_meta_offer,
    meta_answer,
    negotiate,
    validate_business_sdp,
)
from .state import ControlError, PlatformState

ACTIONS = ("connect", "pre_accept", "accept", "reject", "terminate")
UNCALLABLE_PLATFORMS = {"web", "desktop"}
ENTRY_POINTS = ("call_icon", "call_button", "deeplink", "call_log")
#: the calling webhooks a SIP call sends with ``calling.sip.webhook_delivery`` ENABLED, by the Graph event
_SIP_WEBHOOKS: dict[type, type] = {CallConnect: CallCreated, CallTerminate: CallTerminate}
_SIP_SUPPRESSED = "number is SIP-enabled; calling webhooks are not sent"     # the others' webhook_suppressed reason

# voicemail (docs/fidelity.md, "Voicemail"): what the user says when it leaves a message and nobody chose
# otherwise, the longest message the control API accepts, and how long past what the relay should take
# the platform waits for it before giving the voicemail up (best effort: then no message is sent)
VOICEMAIL_DEFAULT_MESSAGE_SECONDS = 5.0
VOICEMAIL_MAX_MESSAGE_SECONDS = 120.0
VOICEMAIL_ANNOUNCEMENT_MAX_SECONDS = 60.0
VOICEMAIL_GRACE_SECONDS = 15.0


def _zone(name: str) -> dt.tzinfo:
    """The WABA's timezone (an IANA name), UTC when it is not one zoneinfo knows."""
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError, TypeError):
        return dt.timezone.utc


_MONTHS: dict[str, tuple[float, float, str]] = {}   # zone name -> the middle of a month (from, to) and its "YYYY-MM"
_MONTH_MARGIN = 3 * 3600.0                         # clock changes are at most 2 hours


def _month(now: float, zone_name: str) -> str:
    """The calendar month (``YYYY-MM``) ``now`` falls in, in the zone ``zone_name`` (see ``_zone``). The
    last month asked of each zone is kept, less ``_MONTH_MARGIN`` at each end (more than any zone's clock
    change around midnight: a time inside that is inside the month): a call's bill asks this once per call."""
    known = _MONTHS.get(zone_name)
    if known is not None and known[0] <= now < known[1]:
        return known[2]
    zone = _zone(zone_name)
    local = dt.datetime.fromtimestamp(now, zone)
    first = local.replace(day=1, hour=0, minute=0, second=0, microsecond=0)
    following = (first + dt.timedelta(days=32)).replace(day=1)
    month = local.strftime("%Y-%m")
    kept = (first.timestamp() + _MONTH_MARGIN, following.timestamp() - _MONTH_MARGIN, month)
    if all(dt.datetime.fromtimestamp(end, zone).strftime("%Y-%m") == month for end in (kept[0], kept[1] - 1)):
        _MONTHS[zone_name] = kept              # (a zone whose clock jumped further at a month's start: not kept)
    return month


def _opaque(body: dict) -> str | None:
    value = body.get("biz_opaque_callback_data")
    if value is None:
        return None
    if not isinstance(value, str):
        raise GraphError(100, "Param biz_opaque_callback_data must be a string.")
    if len(value) > 512:
        raise GraphError(100, "Param biz_opaque_callback_data must be at most 512 characters long.")
    return value


class CallPermissions(Protocol):
    """What the call rules need from the permission rules (``PermissionRules``)."""

    def permission_status(self, pair: Pair) -> str: ...

    def revoke_permission(self, pair: Pair, *, source: str, context_id: str | None) -> None: ...

    def grant_callback_permission(self, pair: Pair, call: Call) -> None: ...


class MessageTimers(Protocol):
    """What the call rules' ``tick`` needs from the message rules (``MessageRules``)."""

    def message_due(self, message: Message) -> None: ...


class CallRules(PlatformState):
    permission_rules: CallPermissions    # set by Platform (itself); a test may give a stand-in
    message_rules: MessageTimers

    # -- helpers -------------------------------------------------------------------------------
    def _media_options(self, number: PhoneNumber) -> tuple[str, list[str]]:
        return calling_settings.srtp_protocol(number.calling), calling_settings.additional_codecs(number.calling)

    def _session_sdp(self, body: dict, number: PhoneNumber, role: str,
                     media_options: tuple[str, list[str]] | None = None):
        """The business's SDP of ``body``'s ``session``, validated for ``role`` with the number's media options
        (``media_options`` when the caller has them already): (the text, parsed)."""
        session = body.get("session")
        if session is None:
            raise GraphError(100, "The parameter session is required.")
        if not isinstance(session, dict):
            raise GraphError(100, "Param session must be an object with sdp_type and sdp.")
        for key in session:
            if key not in ("sdp_type", "sdp"):
                raise GraphError(100, f"Unexpected key '{key}' on param 'session'.")
        sdp_type, sdp = session.get("sdp_type"), session.get("sdp")
        allowed = ("offer",) if role == "offer" else ("answer", "offer")  # docs' table says "offer"; samples "answer"
        if sdp_type not in allowed:
            raise GraphError(100, f"Param session[sdp_type] must be '{role}' - got {sdp_type!r}.")
        return sdp, self._business_sdp(sdp, number, role, media_options)

    def _business_sdp(self, sdp: Any, number: PhoneNumber, role: str,
                      media_options: tuple[str, list[str]] | None = None) -> SessionDescription:
        """``sdp`` (a session's ``sdp``; a SIP INVITE's body) validated for ``role`` with the number's media
        options, parsed."""
        if not isinstance(sdp, str) or not sdp:
            raise GraphError(100, "Param session[sdp] must be a non-empty string.")
        key_exchange, codecs = media_options or self._media_options(number)
        try:
            return validate_business_sdp(sdp, key_exchange=key_exchange, additional_codecs=codecs, role=role)
        except SdpError as exc:
            raise GraphError(100, f"SDP Validation error: {exc.details}") from None

    def _require_calling(self, number: PhoneNumber) -> None:
        if calling_settings.sip_enabled(number.calling):
            raise GraphError(131055)
        if number.calling.get("status") != "ENABLED":
            raise GraphError(138000)

    def _emit_call(self, call: Call, event, *, signal: bool = True) -> None:
        """``event`` for the business's webhooks; on a SIP call, the SIP gateway told of the change instead
        (``signal=False``: a further event of the same change follows at once, and its signal serves both:
        the gateway reads the call as it is when it handles the signal)."""
        events = self.events              # (self.emit's list, appended to without its frame: ~9 events a SIP flow)
        if call.signalling == "graph":
            events.append(event)
            return
        # SIP numbers: no calling webhooks, unless sip.webhook_delivery is ENABLED: then the call's creation
        # (call_created, for its connect) and its terminate, and nothing else (Meta's call-settings page)
        delivered = _SIP_WEBHOOKS.get(type(event))
        if delivered is not None and calling_settings.sip_webhook_delivery(self.numbers[call.phone_number_id].calling):
            events.append(delivered(call.id))
        else:
            self.note_values(call, "webhook_suppressed", {"reason": _SIP_SUPPRESSED, "event": type(event).__name__})
        if signal:
            events.append(SipCallChanged(call.id))     # the SIP gateway signals the change

    def _set_state(self, call: Call, state: str, **why) -> None:
        previous, call.state = call.state, state
        self.note_values(call, "state", {"state": state, "previous": previous, **why})
        self.put(call)

    def _end(self, call: Call, *, status: str, reason: str, by: str, errors: list[dict] | None = None) -> None:
        now = self.clock.now()
        call.ended_at = now
        call.end_status = status
        call.end_reason = reason
        call.ended_by = by
        call.errors = errors or []
        call.deadline = call.deadline_kind = None
        call.media = None                          # the relay's keys and positions are of no use any more
        if call.direction == BUSINESS_INITIATED and call.accepted_at is not None:
            self._bill(call, now)
        self._set_state(call, ENDED, reason=reason, by=by)
        self._emit_call(call, CallTerminate(call.id))
        self.events.append(ReleaseMedia(call.id))       # (emit)

    def _bill(self, call: Call, now: float) -> None:
        """Price a connected business-initiated call at the WABA's volume tier of the calendar month (in
        the WABA's timezone), and count its billed seconds into that month's volume (a counter per WABA)."""
        waba = self.wabas[self.numbers[call.phone_number_id].waba_id]
        month = _month(now, waba.timezone_id)
        billed = waba.bic_seconds_by_month.get(month, 0.0)
        call.pulses, call.cost = price_call(self.rate_card, call.wa_id, call.duration or 0, billed / 60.0)
        if call.pulses:
            waba.bic_seconds_by_month = {month: billed + call.pulses * PULSE_SECONDS}   # older months are done
            self.put(waba)

    def media_setup(self, call: Call, business: SessionDescription | None = None,
                    meta: MetaSdp | None = None) -> MediaConfigure | None:
        """What the relay needs for ``call`` once both SDPs are known: the negotiation (done here, once,
        by ``wacall.domain.sdp.negotiate``) and the user's phone. None before both SDPs are known.
        ``business``: the business's SDP already parsed (by its validation), not parsed again; ``meta``:
        Meta's SDP as its builder returned it (``call.meta_sdp``'s text with what it says), not parsed."""
        if not call.meta_sdp or not call.business_sdp:
            return None
        try:
            negotiated = negotiate(meta if meta is not None else call.meta_sdp, business or call.business_sdp,
                                   call.key_exchange)
        except SdpError as exc:         # validated SDPs: not the business's fault; the media will time out
            self.note(call, "media", event="negotiation_failed", reason=exc.details)
            return None
        user = self.users.get(call.wa_id)
        return MediaConfigure(call.id, negotiated, self.behaviour.voice(user),
                              user_is_caller=call.direction == USER_INITIATED)

    def _configure_media(self, call: Call, business: SessionDescription, meta: MetaSdp | None = None) -> None:
        setup = self.media_setup(call, business, meta)
        if setup is not None:
            self.emit(setup)

    def _connected(self, call: Call) -> None:
        """A call got connected: counters the docs tie to connected calls move here."""
        now = self.clock.now()
        call.accepted_at = now
        call.deadline = call.deadline_kind = None
        pair = self.pair(call.phone_number_id, call.wa_id)
        pair.permission_request_times = []        # any connected call resets request limits
        pair.unanswered_streak = 0
        if call.direction == BUSINESS_INITIATED:
            times = pair.bic_connected_times          # oldest first: drop what left the 24 hours, add this one
            del times[:bisect.bisect_right(times, now - DAY)]
            times.append(now)
            pair.window_opened_at = now            # the user accepting a call opens the service window
        self.put(pair)
        self._set_state(call, ACCEPTED)
        announcement = call_recording.announcement(call.capture) if call.capture else None   # (none: no 3 frames)
        self.events.append(MediaConnected(call.id, now, announcement))     # (emit)

    # -- the Graph action dispatcher ----------------------------------------------------------
    def wants_new_leg(self, number: PhoneNumber, body: Any) -> bool:
        """Whether ``body`` asks to place a new call on ``number`` that may get past the calling checks,
        so the wire layer must get the call a media leg (``wacall.legs.LegOwner``) before applying it."""
        return (isinstance(body, dict) and body.get("action", "connect") == "connect"
                and not calling_settings.sip_enabled(number.calling) and number.calling.get("status") == "ENABLED")

    def call_action(self, app, number: PhoneNumber, body: Any, *, new_call_id: str | None = None,
                    leg: LocalMedia | None = None) -> dict:
        if not isinstance(body, dict):
            raise GraphError(100, "The request body must be a JSON object.")
        if body.get("messaging_product") != "whatsapp":
            raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.")
        action = body.get("action", "connect")
        if action not in ACTIONS:
            raise GraphError(100, f"Param action must be one of {{{', '.join(ACTIONS)}}} - got {action!r}.")
        self._require_calling(number)
        if action == "connect":
            call = self.business_connect(app, number, body, new_call_id, leg)
            return {"messaging_product": "whatsapp", "calls": [{"id": call.id}]}
        call = self.call_for(number, body.get("call_id"))
        self.note(call, "api", action=action, app_id=app.id)
        getattr(self, f"business_{action}")(call, number, body)
        return {"messaging_product": "whatsapp", "success": True}

    # -- business-initiated calls -------------------------------------------------------------
    def business_connect(self, app, number: PhoneNumber, body: dict, call_id: str | None,
                         leg: LocalMedia | None) -> Call:
        """Graph's ``connect``: the body read, then :meth:`place_business_call`."""
        to = body.get("to")
        wa_id = self.bic_recipient(number, to, body.get("recipient"))
        opaque = _opaque(body)
        media_options = self._media_options(number)
        sdp, offer = self._session_sdp(body, number, "offer", media_options)
        capture = call_recording.parse(body) or None
        return self.place_business_call(app, number, wa_id, sdp, offer, media_options, call_id, leg,
                                        by_phone=to is not None, opaque=opaque, capture=capture)

    def bic_recipient(self, number: PhoneNumber, to: Any, recipient: Any) -> str:
        """The wa_id a business-initiated call is placed to: ``to`` (a phone number), else ``recipient`` (a
        BSUID; ``to`` wins when both are given). Meta's refusals as GraphError."""
        if to is None and recipient is not None:
            wa_id = identity.recipient_wa_id(self, number, recipient)
            if wa_id is None:
                raise GraphError(138001)      # no WhatsApp user of this business has that BSUID
        elif to is None:
            raise GraphError(100, "The parameter to is required.")
        else:
            wa_id = phone_digits(to)
        if wa_id is None:
            raise GraphError(100, "Param to must be a valid phone number.")
        return wa_id

    def place_business_call(self, app, number: PhoneNumber, wa_id: str, sdp: str, offer: SessionDescription,
                            media_options: tuple[str, list[str]], call_id: str | None, leg: LocalMedia | None, *,
                            by_phone: bool, opaque: str | None = None, capture: dict | None = None) -> Call:
        """A business-initiated call to ``wa_id`` (by phone number or, ``by_phone`` False, by BSUID) with the
        business's validated offer ``sdp`` (``offer`` parsed): the connect rules past the request's own
        parameters (Graph's ``connect`` after its body is read; a SIP INVITE after its digest)."""
        key_exchange, codecs = media_options
        if number.country in BIC_UNAVAILABLE_COUNTRIES:
            raise GraphError(138013)
        now = self.clock.now()           # one reading for every check and record of the connect
        if number.restrictions and self.active_restriction(number, "RESTRICTED_BUSINESS_INITIATED_CALLING", now):
            raise GraphError(138014)
        if not number.payment_method:
            raise GraphError(131044, "Business-initiated calls need a valid payment method on the account.")
        if number.is_test_number and wa_id not in number.allowed_recipients:
            raise GraphError(131030)
        user = self.users.get(wa_id)
        if not self._callable(user):
            raise GraphError(138001)
        pair = self.pair(number.id, wa_id)
        if self.permission_rules.permission_status(pair) == "no_permission":
            raise GraphError(138006)
        if (number.id, wa_id) in self.active_by_pair:             # (active_call_between, without its frame)
            raise GraphError(138003)
        if self.active_per_number.get(number.id, 0) >= self.limits.concurrent_calls:       # (active_count)
            raise GraphError(138002, f"Limit reached for maximum concurrent calls "
                                     f"({self.limits.concurrent_calls}) for the given number")
        initiated = self.bic_initiated_last_24h(number.id, now)
        if len(initiated) >= self.limits.bic_initiations_per_24h:
            raise GraphError(138005)
        connected = self.bic_connected_last_24h(pair, now)
        if len(connected) >= self.limits.bic_connected_per_24h:
            next_allowed = connected[-self.limits.bic_connected_per_24h] + DAY
            raise GraphError(138012, (
                f"Limit reached for maximum business initiated calls allowed in 24 hours. Currently "
                f"{self.limits.bic_connected_per_24h} connected business initiated calls are allowed within "
                f"24 hours. Next call allowed at {int(next_allowed)} ("
                f"{dt.datetime.fromtimestamp(next_allowed, dt.timezone.utc).isoformat()})."))
        if call_id is None or leg is None:
            raise GraphError(138004)
        call = Call(id=call_id, phone_number_id=number.id, wa_id=wa_id, direction=BUSINESS_INITIATED,
                    app_id=app.id, created_at=now, biz_opaque_callback_data=opaque, business_sdp=sdp,
                    key_exchange=key_exchange, capture=capture,
                    signalling="sip" if calling_settings.sip_enabled(number.calling) else "graph")
        answer = meta_answer(leg, offer, key_exchange=key_exchange, additional_codecs=codecs)
        call.meta_sdp = answer.text
        call.media = {"leg": leg.to_doc()}
        initiated.append(now)
        if by_phone:
            identity.phone_used(self, number, wa_id, now)
        self.note_values(call, "api", {"action": "connect", "app_id": app.id, "to": wa_id})
        self._schedule_user_reaction(call, user, now)     # before the state's put: that one put keeps both
        self._set_state(call, RINGING, direction=BUSINESS_INITIATED)
        self._emit_call(call, CallConnect(call.id), signal=False)     # (one SipCallChanged for both)
        self._emit_call(call, CallStatus(call.id, "RINGING", now))
        self._configure_media(call, offer, answer)
        return call

    def _callable(self, user: User | None) -> bool:
        return bool(user and user.on_whatsapp and user.tos_accepted
                    and user.platform not in UNCALLABLE_PLATFORMS
                    and version_at_least(user.client_version, self.limits.min_client_version))

    def _schedule_user_reaction(self, call: Call, user: User, now: float) -> None:
        """The user's phone rings (at ``now``): the user reacts when it decides to (wacall.users.behaviour), and
        a call nobody answers rings until Meta's ring timeout. Sets the call's timer; the caller puts the call."""
        reaction = self.behaviour.when_called(user)
        if reaction is not None:
            call.deadline, call.deadline_kind = now + reaction.after, f"user_{reaction.action}"
        else:
            call.deadline, call.deadline_kind = now + self.limits.bic_ring_seconds, "ring_timeout"

    def user_answers(self, call: Call) -> None:
        if call.state != RINGING or call.direction != BUSINESS_INITIATED:
            raise ControlError("not_ringing", f"call {call.id} is {call.state}, not ringing on the user's phone")
        self.note_values(call, "user", {"action": "answer"})
        self._connected(call)
        self._emit_call(call, CallStatus(call.id, "ACCEPTED", call.accepted_at))

    def user_rejects(self, call: Call) -> None:
        if call.state == ENDED:
            raise ControlError("call_ended", f"call {call.id} has already ended")
        if call.direction == USER_INITIATED:
            raise ControlError("wrong_direction", "the user placed this call; use hangup")
        if call.state != RINGING:
            raise ControlError("not_ringing", f"call {call.id} is {call.state}; use hangup")
        self.note(call, "user", action="reject")
        self._emit_call(call, CallStatus(call.id, "REJECTED", self.now()))
        self._end(call, status="COMPLETED", reason="rejected", by="user")
        self._unanswered(call)

    def user_hangs_up(self, call: Call) -> None:
        if call.state == ENDED:
            raise ControlError("call_ended", f"call {call.id} has already ended")
        if call.direction == BUSINESS_INITIATED and call.state == RINGING:
            return self.user_rejects(call)
        self.note(call, "user", action="hangup")
        if call.state == VOICEMAIL:               # before the message was complete: no message is sent
            self.note(call, "voicemail", event="abandoned", phase=call.voicemail.get("phase"))
            call.voicemail = {**call.voicemail, "phase": "abandoned"}
        self._end(call, status="COMPLETED", reason="user_hangup", by="user")

    def _unanswered(self, call: Call) -> None:
        pair = self.pair(call.phone_number_id, call.wa_id)
        pair.unanswered_streak += 1
        self.put(pair)
        if pair.unanswered_streak == self.limits.unanswered_nudge:
            self.note(call, "user", action="nudge_shown",
                      detail=f"{pair.unanswered_streak} consecutive unanswered calls: the user is asked "
                             "whether to keep the call permission")
        if pair.unanswered_streak >= self.limits.unanswered_revoke:
            pair.unanswered_streak = 0
            if self.permission_rules.permission_status(pair) != "no_permission":
                self.note(call, "permission", action="auto_revoke")
                self.permission_rules.revoke_permission(pair, source="automatic", context_id=None)

    # -- actions on calls ---------------------------------------------------------------------
    def _not_in_state(self, call: Call, action: str) -> GraphError:
        if call.state == ENDED:
            if call.end_reason == "not_answered" and call.direction == USER_INITIATED:
                return GraphError(138007, "Connect API was not invoked with the answer SDP in time: the "
                                          "call was not answered within the accept window.")
            if call.ended_by == "user":
                return GraphError(100, f"Cannot {action} call {call.id}: the WhatsApp user has already "
                                       "terminated the call.")
            return GraphError(100, f"Cannot {action} call {call.id}: the call is already terminated "
                                   f"({call.end_reason}).")
        if call.state == ACCEPTED:
            return GraphError(100, f"Cannot {action} call {call.id}: the call is already in progress.")
        if call.state == VOICEMAIL:
            trigger = (call.voicemail or {}).get("trigger")
            why = "rejected" if trigger == "REJECT" else "not answered in time"
            return GraphError(100, f"Cannot {action} call {call.id}: the call was {why} and went to voicemail.")
        return GraphError(100, f"Cannot {action} call {call.id} in state {call.state}.")

    def _uic_only(self, call: Call, action: str) -> None:
        if call.direction != USER_INITIATED:
            raise GraphError(100, f"Action {action} is only valid for user-initiated calls; call "
                                  f"{call.id} is business-initiated.")

    def business_pre_accept(self, call: Call, number: PhoneNumber, body: dict) -> None:
        self._uic_only(call, "pre_accept")
        if call.state != RINGING:
            raise self._not_in_state(call, "pre_accept")
        sdp, answer = self._session_sdp(body, number, "answer")
        call.pre_accept_sdp = sdp
        call.business_sdp = sdp
        self._set_state(call, PRE_ACCEPTED)
        self._configure_media(call, answer)

    def business_accept(self, call: Call, number: PhoneNumber, body: dict) -> None:
        self._uic_only(call, "accept")
        if call.state not in (RINGING, PRE_ACCEPTED):
            raise self._not_in_state(call, "accept")
        sdp, answer = self._session_sdp(body, number, "answer")
        if call.pre_accept_sdp is not None and sdp != call.pre_accept_sdp:
            raise GraphError(100, "SDP Validation error: the SDP answer in accept is different from the SDP "
                                  "answer given in pre_accept for this call_id.")
        capture = call_recording.parse(body)
        call.business_sdp = sdp
        call.biz_opaque_callback_data = _opaque(body) or call.biz_opaque_callback_data
        if capture:
            call.capture = capture
        if call.pre_accept_sdp is None:          # after a pre_accept the relay has this very answer already
            self._configure_media(call, answer)
        self._connected(call)

    def business_reject(self, call: Call, number: PhoneNumber, body: dict) -> None:
        self._uic_only(call, "reject")
        if call.state not in (RINGING, PRE_ACCEPTED):
            raise self._not_in_state(call, "reject")
        if self._to_voicemail(call, number, "REJECT"):
            return
        self._end(call, status="COMPLETED", reason="rejected", by="business")

    def business_terminate(self, call: Call, number: PhoneNumber, body: dict) -> None:
        if call.state in (ENDED, VOICEMAIL):
            raise self._not_in_state(call, "terminate")
        was_ringing_bic = call.direction == BUSINESS_INITIATED and call.state == RINGING
        self._end(call, status="COMPLETED", reason="completed" if call.accepted_at else "cancelled",
                  by="business")
        if was_ringing_bic:
            self._unanswered(call)

    # -- user-initiated calls -----------------------------------------------------------------
    def user_calls(self, wa_id: str, to: str, *, entry_point: str = "call_icon", payload: str | None = None,
                   call_id: str, leg: LocalMedia) -> Call:
        user = self.user(wa_id)
        number = self.number_by_address(to)
        if number is None:
            raise ControlError("unknown_business", f"{to} is not a WhatsApp business number here", 404)
        if entry_point not in ENTRY_POINTS:
            raise ControlError("bad_entry_point", f"entry_point must be one of {', '.join(ENTRY_POINTS)}", 400)
        if user.platform in UNCALLABLE_PLATFORMS:
            raise ControlError("unsupported_client", f"WhatsApp {user.platform} cannot call businesses")
        if number.calling.get("status") != "ENABLED":
            raise ControlError("calling_not_enabled", "the business has not enabled calling on this number")
        if self.active_restriction(number, "RESTRICTED_USER_INITIATED_CALLING"):
            raise ControlError("calling_restricted", "user-initiated calling to this number is paused")
        if entry_point == "call_icon" and not calling_settings.icon_visible_to(number.calling, user.country):
            raise ControlError("call_icon_hidden", "the business's call icon is not shown to this user; call "
                                                   "from a call button, a deep link or the call log instead")
        now = self.now()
        if not calling_settings.is_within_call_hours(number.calling, now):
            raise ControlError("outside_call_hours", "the business is outside its call hours; the user is "
                                                     "offered to request a callback")
        if self.active_call_between(number.id, wa_id):
            raise ControlError("already_in_call", "the user is already in a call with this business")
        if self.active_count(number.id) >= self.limits.concurrent_calls:
            # Meta: over the cap the user sees a generic failure and no webhook is sent.
            raise ControlError("cannot_place_call", "Couldn't place call (the business number is at its "
                                                    "concurrent call limit; no webhook was sent)", 503)
        if payload is not None and not version_at_least(user.client_version, self.limits.min_payload_client_version):
            payload = None
        key_exchange, codecs = self._media_options(number)
        call = Call(id=call_id, phone_number_id=number.id, wa_id=wa_id, direction=USER_INITIATED,
                    created_at=now, entry_point=entry_point, key_exchange=key_exchange,
                    cta_payload=payload if entry_point == "call_button" else None,
                    deeplink_payload=payload if entry_point == "deeplink" else None,
                    signalling="sip" if calling_settings.sip_enabled(number.calling) else "graph")
        call.meta_sdp = build_meta_offer(leg, key_exchange=key_exchange, additional_codecs=codecs)
        call.media = {"leg": leg.to_doc()}
        self.note(call, "user", action="call", entry_point=entry_point)
        pair = self.pair(number.id, wa_id)
        pair.window_opened_at = now                # a user call opens the customer service window
        self.put(pair)
        if not user.username_only:                 # placed from the number, not the username
            identity.phone_used(self, number, wa_id)
        if not number.payment_method:
            self._set_state(call, RINGING, direction=USER_INITIATED)
            call.ended_at, call.end_status, call.end_reason, call.ended_by = now, "FAILED", "payment", "platform"
            call.errors = [GraphError(131044).as_webhook_error()]
            self._set_state(call, ENDED, reason="no valid payment method")
            self._emit_call(call, CallTerminate(call.id))   # the 131044 error webhook
            self.emit(ReleaseMedia(call.id))
            return call
        call.deadline, call.deadline_kind = now + self.limits.uic_accept_window_seconds, "accept_timeout"
        plan = self._voicemail_plan(call, number, "TIMEOUT")
        if plan is not None and now + plan["timeout_seconds"] < call.deadline:
            call.deadline, call.deadline_kind = now + plan["timeout_seconds"], "voicemail_timeout"
        self._set_state(call, RINGING, direction=USER_INITIATED)
        self._emit_call(call, CallConnect(call.id))
        if number.calling.get("callback_permission_status") == "ENABLED" and user.device == "primary":
            self.permission_rules.grant_callback_permission(pair, call)
        return call

    # -- voicemail: the platform answers a user's call the business rejected or left unanswered -------
    def _voicemail_plan(self, call: Call, number: PhoneNumber, trigger: str) -> dict | None:
        """The number's voicemail for ``trigger``, or None (user-initiated calls, Graph or SIP signalled)."""
        if call.direction != USER_INITIATED:
            return None
        return calling_settings.voicemail_plan(number.calling, trigger)

    def _to_voicemail(self, call: Call, number: PhoneNumber, trigger: str) -> bool:
        """The platform answers ``call`` itself (``REJECT``/``TIMEOUT``): the relay plays the announcement to
        the user. False (nothing changed) when the number has no voicemail for ``trigger``."""
        plan = self._voicemail_plan(call, number, trigger)
        if plan is None:
            return False
        now = self.now()
        chosen = (call.voicemail or {}).get("message_seconds")
        call.voicemail = {"trigger": trigger, "media_id": None, "seconds": None, "phase": "announcement",
                          "announcement_media_id": plan["announcement_media_id"], "started_at": now,
                          "message_seconds": chosen}
        call.deadline = now + VOICEMAIL_ANNOUNCEMENT_MAX_SECONDS + VOICEMAIL_GRACE_SECONDS
        call.deadline_kind = "voicemail_announcement"
        self.note(call, "voicemail", event="answered", trigger=trigger,
                  announcement_media_id=plan["announcement_media_id"])
        self._set_state(call, VOICEMAIL, trigger=trigger)
        if call.signalling == "sip":               # the gateway CANCELs an INVITE still pending (TIMEOUT)
            self.emit(SipCallChanged(call.id))
        self.emit(VoicemailAnswer(call.id, plan["announcement_media_id"],
                                  self.behaviour.voice(self.users.get(call.wa_id))))
        return True

    def _voicemail_timeout(self, call: Call) -> None:
        """``timeout_seconds`` passed without an accept or a reject: voicemail, if still configured; else the
        call waits out the ordinary accept window."""
        if call.state not in (RINGING, PRE_ACCEPTED):
            return
        if self._to_voicemail(call, self.numbers[call.phone_number_id], "TIMEOUT"):
            return
        call.deadline = call.created_at + self.limits.uic_accept_window_seconds
        call.deadline_kind = "accept_timeout"
        self.put(call)

    def _in_voicemail(self, call_id: str, phase: str) -> Call | None:
        call = self.active_calls.get(call_id)
        if call is None or call.state != VOICEMAIL or (call.voicemail or {}).get("phase") != phase:
            return None
        return call

    def user_voicemail_choice(self, call: Call, seconds: Any) -> dict:
        """The user's choice (control API): if the call goes to voicemail (or while its announcement plays),
        leave a message of ``seconds``. (Hanging up instead is ``user_hangs_up``.)"""
        if call.direction != USER_INITIATED:
            raise ControlError("wrong_direction", "only a call the user placed goes to voicemail")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or \
                not 1 <= seconds <= VOICEMAIL_MAX_MESSAGE_SECONDS:
            raise ControlError("bad_seconds", f"seconds must be a number from 1 to "
                                              f"{VOICEMAIL_MAX_MESSAGE_SECONDS:g}", 400)
        if call.state == ENDED:
            raise ControlError("call_ended", f"call {call.id} has already ended")
        phase = (call.voicemail or {}).get("phase")
        if call.state == ACCEPTED or (call.state == VOICEMAIL and phase != "announcement"):
            raise ControlError("too_late", f"call {call.id} is past the point where the user chooses a message")
        call.voicemail = {**(call.voicemail or {}), "message_seconds": float(seconds)}
        self.note(call, "user", action="voicemail_choice", seconds=float(seconds))
        self.put(call)
        return dict(call.voicemail)

    def voicemail_heard(self, call_id: str) -> None:
        """The relay played the whole announcement: the user now speaks its message."""
        call = self._in_voicemail(call_id, "announcement")
        if call is None:
            return
        seconds = (call.voicemail or {}).get("message_seconds") or VOICEMAIL_DEFAULT_MESSAGE_SECONDS
        call.voicemail = {**call.voicemail, "phase": "message"}
        call.deadline, call.deadline_kind = self.now() + seconds + VOICEMAIL_GRACE_SECONDS, "voicemail_message"
        self.note(call, "voicemail", event="announcement_played", message_seconds=seconds)
        self.put(call)
        self.emit(VoicemailRecord(call.id, seconds))

    def voicemail_left(self, call_id: str, *, media_id: str, sha256: str, mime_type: str, seconds: float) -> None:
        """The user's message is recorded and published as media ``media_id``: the user hangs up, and the
        business gets it as an audio message on ``messages`` whose id is the call's wacid."""
        call = self._in_voicemail(call_id, "message")
        if call is None:
            return
        call.voicemail = {**call.voicemail, "phase": "done", "media_id": media_id, "seconds": round(seconds, 2)}
        self.note(call, "voicemail", event="message_left", media_id=media_id, seconds=round(seconds, 2))
        self._end(call, status="COMPLETED", reason="voicemail", by="user")
        now = self.now()
        message = Message(id=call.id, phone_number_id=call.phone_number_id, wa_id=call.wa_id, direction="inbound",
                          type="audio", kind="voicemail", created_at=now, status="received",
                          body={"audio": {"id": media_id, "sha256": sha256, "mime_type": mime_type}})
        self.put(message)
        pair = self.pair(call.phone_number_id, call.wa_id)
        pair.window_opened_at = now            # a message from the user opens the customer service window
        self.put(pair)
        self.emit(InboundMessage(message.id))

    def voicemail_failed(self, call_id: str, reason: str) -> None:
        """The voicemail could not be collected (announcement unreadable, the relay gone, nothing in time):
        best effort, as Meta's: the call ends and no message is sent."""
        call = self.active_calls.get(call_id)
        if call is None or call.state != VOICEMAIL:
            return
        call.voicemail = {**call.voicemail, "phase": "failed"}
        self.note(call, "voicemail", event="failed", reason=reason)
        self._end(call, status="COMPLETED", reason="voicemail_failed", by="platform")

    # -- what the media plane reports -------------------------------------------------------------
    def media_note(self, call_id: str, kind: str, **data) -> None:
        """A media fact for the call's timeline (ICE, DTLS, first packet, DTMF, anomalies)."""
        call = self.call(call_id)
        if call is not None:
            self.note(call, "media", event=kind, **data)

    def media_state(self, call_id: str, state: dict) -> None:
        """What the relay needs to carry a live call on after a restart, saved with the call."""
        call = self.active_calls.get(call_id)
        if call is not None:
            call.media = {**(call.media or {}), **state}
            self.put(call)

    def media_ended(self, call_id: str, fact: str, reason: str) -> None:
        """The user's phone gave up on the media (no media at start, silence mid-call, relay failure):
        it hangs up, and the business gets a FAILED terminate with the error code Meta uses for that
        fact (a ``wacall.domain.ends.MediaFact``; the code comes from the one table there)."""
        call = self.calls.get(call_id)
        if call is None or call.state == ENDED:
            return
        code = failure_code(fact)
        self.note(call, "media", event="timeout", code=code, reason=reason)
        self._end(call, status="FAILED", reason=f"media: {reason}", by="user",
                  errors=[GraphError(code, reason).as_webhook_error()])

    # -- timers ---------------------------------------------------------------------------------
    def tick(self) -> None:
        """Run every timer that is due on the clock."""
        now = self.clock.now()
        for call in self.due_calls(now):
            kind = call.deadline_kind
            call.deadline = call.deadline_kind = None
            if kind == "user_answer":
                self.user_answers(call)
            elif kind == "user_reject":
                self.user_rejects(call)
            elif kind == "ring_timeout":
                self.note(call, "user", action="not_answered")
                self._end(call, status="COMPLETED", reason="not_answered", by="platform")
                self._unanswered(call)
            elif kind == "voicemail_timeout":
                self._voicemail_timeout(call)
            elif kind in ("voicemail_announcement", "voicemail_message"):
                self.voicemail_failed(call.id, f"the voicemail {kind.split('_')[1]} did not finish in time")
            elif kind == "accept_timeout":
                self._end(call, status="FAILED", reason="not_answered", by="platform",
                          errors=[GraphError(138007, "Business did not accept the call within the accept "
                                                     "window.").as_webhook_error()])
        if self.pending_messages:          # (mostly none: no list built for nothing)
            for message in [m for m in self.pending_messages.values() if m.deadline is not None and m.deadline <= now]:
                self.message_rules.message_due(message)

    def next_deadline(self) -> float | None:
        """When the next timer falls due: the calls' from their heap (``due_calls``), the few pending
        messages' by looking."""
        first = self.next_call_deadline()
        if not self.pending_messages:       # (mostly none: no list built for nothing)
            return first
        deadlines = [m.deadline for m in self.pending_messages.values() if m.deadline is not None]
        if first is not None:
            deadlines.append(first)
        return min(deadlines) if deadlines else None
