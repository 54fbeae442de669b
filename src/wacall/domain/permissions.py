"""Call permissions: temporary (7 days) and permanent grants, request limits per business-user pair,
automatic callback permission, automatic revoke, and the ``call_permissions`` view."""

from __future__ import annotations

from . import identity
from .errors import GraphError
from .events import MessageStatus, PermissionReply
from .limits import BIC_UNAVAILABLE_COUNTRIES
from .model import Call, Message, Pair, PhoneNumber
from .phone import phone_digits
from .state import ControlError, PlatformState, new_id

DAY = 86400.0


class PermissionRules(PlatformState):
    def permission_status(self, pair: Pair) -> str:
        if (pair.permission == "temporary" and pair.permission_expires_at is not None
                and pair.permission_expires_at <= self.now()):
            pair.permission, pair.permission_expires_at = "no_permission", None   # no webhook on expiry
            self.put(pair)
        return pair.permission

    def _reply(self, pair: Pair, *, response: str, permanent: bool | None, source: str,
               context_id: str | None) -> None:
        now = self.now()
        expires = pair.permission_expires_at if (response == "accept" and not permanent) else None
        self.emit(PermissionReply(phone_number_id=pair.phone_number_id, wa_id=pair.wa_id, response=response,
                                  is_permanent=permanent, expiration_timestamp=expires,
                                  response_source=source, context_id=context_id,
                                  message_id=new_id("wamid"), timestamp=now))

    def grant_permission(self, pair: Pair, *, permanent: bool, source: str, context_id: str | None) -> None:
        if permanent:
            pair.permission, pair.permission_expires_at = "permanent", None
        else:
            pair.permission = "temporary"
            pair.permission_expires_at = self.now() + self.limits.temporary_permission_seconds
        self.put(pair)
        self._reply(pair, response="accept", permanent=permanent, source=source, context_id=context_id)

    def revoke_permission(self, pair: Pair, *, source: str, context_id: str | None) -> None:
        pair.permission, pair.permission_expires_at = "no_permission", None
        self.put(pair)
        self._reply(pair, response="reject", permanent=None, source=source, context_id=context_id)

    def grant_callback_permission(self, pair: Pair, call: Call) -> None:
        if self.permission_status(pair) == "permanent":
            return
        self.note(call, "permission", action="automatic_callback_permission")
        self.grant_permission(pair, permanent=False, source="automatic", context_id=call.id)

    # -- request limits ---------------------------------------------------------------------
    def _request_usage(self, pair: Pair) -> tuple[list[float], list[float]]:
        now = self.now()
        week = [t for t in pair.permission_request_times if t > now - 7 * DAY]
        day = [t for t in week if t > now - DAY]
        return day, week

    def check_permission_request(self, number: PhoneNumber, wa_id: str) -> Pair:
        """Every synchronous refusal for sending a call permission request (free-form or template)."""
        if number.calling.get("status") != "ENABLED":
            raise GraphError(138000)
        if number.country in BIC_UNAVAILABLE_COUNTRIES:
            raise GraphError(138013)
        if self.active_restriction(number, "RESTRICTED_BUSINESS_INITIATED_CALLING"):
            raise GraphError(138014)
        if number.is_test_number and wa_id not in number.allowed_recipients:
            raise GraphError(131030)
        user = self.users.get(wa_id)
        if user is None or not user.on_whatsapp or not user.tos_accepted:
            raise GraphError(138001)
        pair = self.pair(number.id, wa_id)
        if self.permission_status(pair) == "permanent":
            raise GraphError(138017)
        day, week = self._request_usage(pair)
        if len(day) >= self.limits.permission_requests_per_24h or len(week) >= self.limits.permission_requests_per_7d:
            raise GraphError(138009)
        return pair

    def record_permission_request(self, pair: Pair) -> None:
        pair.permission_request_times = [t for t in pair.permission_request_times
                                         if t > self.now() - 7 * DAY] + [self.now()]
        self.put(pair)

    def call_permissions_view(self, app, number: PhoneNumber, user_wa_id: str | None,
                              recipient: str | None = None) -> dict:
        if self.rate_limit_hit(f"call_permissions:{app.id}:{number.id}", self.limits.call_permissions_per_second):
            raise GraphError(613)
        if number.calling.get("status") != "ENABLED":
            raise GraphError(138000)
        if not user_wa_id and recipient is not None:      # by BSUID; user_wa_id wins when both are sent
            # a BSUID that names no user of this business is uncallable: no_permission, as for a phone number
            wa_id = identity.recipient_wa_id(self, number, recipient) or f"bsuid:{recipient}"
        elif not user_wa_id:
            raise GraphError(100, "The parameter user_wa_id is required.")
        else:
            wa_id = phone_digits(user_wa_id)
        if wa_id is None:
            raise GraphError(100, "Param user_wa_id must be a valid phone number.")
        pair = self.pairs.get(f"{number.id}:{wa_id}") or Pair(phone_number_id=number.id, wa_id=wa_id)
        status = self.permission_status(pair) if pair.key in self.pairs else "no_permission"
        permission: dict = {"status": status}
        if status == "temporary" and pair.permission_expires_at:
            permission["expiration_time"] = int(pair.permission_expires_at)

        day, week = self._request_usage(pair)
        req_limits = [self._limit("PT24H", self.limits.permission_requests_per_24h, day, DAY),
                      self._limit("P7D", self.limits.permission_requests_per_7d, week, 7 * DAY)]
        can_request = (status != "permanent" and all(l["current_usage"] < l["max_allowed"] for l in req_limits)
                       and not self.active_restriction(number, "RESTRICTED_BUSINESS_INITIATED_CALLING"))
        connected = self.bic_connected_last_24h(pair)
        call_limits = [self._limit("PT24H", self.limits.bic_connected_per_24h, connected, DAY)]
        can_call = (status != "no_permission" and call_limits[0]["current_usage"] < call_limits[0]["max_allowed"]
                    and not self.active_restriction(number, "RESTRICTED_BUSINESS_INITIATED_CALLING"))
        return {"messaging_product": "whatsapp", "permission": permission, "actions": [
            {"action_name": "send_call_permission_request", "can_perform_action": can_request, "limits": req_limits},
            {"action_name": "start_call", "can_perform_action": can_call, "limits": call_limits},
        ]}

    @staticmethod
    def _limit(period: str, max_allowed: int, times: list[float], span: float) -> dict:
        entry = {"time_period": period, "max_allowed": max_allowed, "current_usage": len(times)}
        if len(times) >= max_allowed and times:
            entry["limit_expiration_time"] = int(sorted(times)[-max_allowed] + span)
        return entry

    # -- the user's side ----------------------------------------------------------------------
    def user_permission_reply(self, wa_id: str, phone_number_id: str, *, response: str, permanent: bool = False,
                              via: str = "request") -> dict:
        self.user(wa_id)
        number = self.number_by_address(phone_number_id)
        if number is None:
            raise ControlError("unknown_business", f"{phone_number_id} is not a business number here", 404)
        if response not in ("accept", "reject", "revoke"):
            raise ControlError("bad_response", "response must be accept, reject or revoke", 400)
        pair = self.pair(number.id, wa_id)
        if via == "business_profile":
            # From the business profile the user can always allow (permanently) or revoke.
            if response == "accept":
                self.grant_permission(pair, permanent=True, source="user_action", context_id=None)
            else:
                self.revoke_permission(pair, source="user_action", context_id=None)
            return {"permission": pair.permission}
        if via != "request":
            raise ControlError("bad_via", "via must be request or business_profile", 400)
        request = self.latest_open_request(number.id, wa_id)
        if request is None:
            raise ControlError("no_open_request", "there is no call permission request to answer "
                                                  "(none sent, already answered, or expired)")
        self.answer_request(request, pair, response=response, permanent=permanent)
        return {"permission": pair.permission, "context_id": request.id}

    def latest_open_request(self, phone_number_id: str, wa_id: str) -> Message | None:
        """The pair's latest request that reached the user, unless answered or older than 7 days (a newer
        request supersedes older ones)."""
        pair = self.pairs.get(f"{phone_number_id}:{wa_id}")
        latest = self.message(pair.last_request_id) if pair is not None else None
        if latest is None or latest.answered or latest.created_at <= self.now() - 7 * DAY:
            return None
        return latest

    def answer_request(self, request: Message, pair: Pair, *, response: str, permanent: bool) -> None:
        request.answered = True
        request.deadline = request.deadline_kind = None
        self.put(request)
        pair.window_opened_at = self.now()       # replying is a user message: it opens the window
        self.put(pair)
        if request.status != "read":
            request.status = "read"
            self.emit(MessageStatus(request.id, "read", self.now()))
        if response == "accept":
            self.grant_permission(pair, permanent=permanent, source="user_action", context_id=request.id)
        else:
            pair.permission, pair.permission_expires_at = "no_permission", None
            self.put(pair)
            self._reply(pair, response="reject", permanent=None, source="user_action", context_id=request.id)
