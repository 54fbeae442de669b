"""Business phone numbers: calling settings (with the enable checks and SIP passwords), webhook
override URLs, restrictions, and call analytics."""

from __future__ import annotations

import re
import secrets
import string
from datetime import datetime, timezone
from typing import Any, Protocol

from . import settings as calling_settings
from .errors import GraphError
from .events import SettingsUpdate
from .media import ANNOUNCEMENT
from .model import BUSINESS_INITIATED, USER_INITIATED, App, Media, PhoneNumber
from .state import PlatformState

NON_CALLING_FEATURES = {"storage_configuration", "user_identity_change", "payload_encryption", "payments"}


def sip_password() -> str:
    alphabet = string.ascii_letters + string.digits
    return "".join(secrets.choice(alphabet) for _ in range(32))


class MediaLookup(Protocol):
    """What the settings rules need from the media rules (``MediaRules``): the voicemail announcement."""

    def media_record(self, media_id: object) -> Media | None: ...


class NumberRules(PlatformState):
    media_rules: MediaLookup             # set by Platform (itself)
    def get_settings(self, number: PhoneNumber, include_sip_credentials: bool) -> dict:
        now = self.now()
        restrictions = [dict(r, expiration=int(r["expiration"])) for r in number.restrictions
                        if float(r.get("expiration", 0)) > now]
        return {"calling": calling_settings.render_calling_settings(
            number.calling, include_sip_credentials=include_sip_credentials,
            sip_passwords=number.sip_passwords, restrictions=restrictions)}

    def update_settings(self, app: App, number: PhoneNumber, body: Any) -> dict:
        if not isinstance(body, dict):
            raise GraphError(100, "The request body must be a JSON object.")
        unknown = set(body) - {"calling", "messaging_product"} - NON_CALLING_FEATURES
        if unknown:
            raise GraphError(100, f'Unexpected key "{sorted(unknown)[0]}" on param "settings".')
        if "calling" not in body:
            if set(body) & NON_CALLING_FEATURES:
                return {"success": True}
            raise GraphError(100, "One feature setting must be specified.")
        today = datetime.fromtimestamp(self.now(), timezone.utc).date()
        new, changed = calling_settings.apply_calling_update(number.calling, body["calling"], app_id=app.id,
                                                             today=today)
        announcement = calling_settings.voicemail_announcement(new)
        if announcement is not None and announcement != calling_settings.voicemail_announcement(number.calling):
            self._check_announcement(number, announcement)
        if new.get("status") == "ENABLED":
            if number.messaging_limit < self.limits.min_messaging_limit_for_calling and not number.is_test_number:
                raise GraphError(138015, f"Check and make sure messaging limit on your phone number is "
                                         f"{self.limits.min_messaging_limit_for_calling} or more (it is "
                                         f"{number.messaging_limit}).")
            enabling = body["calling"].get("status") == "ENABLED"      # checked when calling is (re-)enabled
            if enabling and not calling_settings.sip_enabled(new) and not self._calls_subscriber(number.waba_id):
                raise GraphError(138018)
        number.calling = new
        self._sync_sip_passwords(number)
        self.put(number)
        self.emit(SettingsUpdate(number.id, self.now(),
                                 calling_changed=bool(set(changed) & calling_settings.WEBHOOK_OBSERVED_KEYS)))
        return {"success": True}

    def _check_announcement(self, number: PhoneNumber, media_id: str) -> None:
        """A voicemail announcement being set must be media of this WABA uploaded as one
        (``use_case=call_voicemail_announcement``; docs/fidelity.md, "Voicemail")."""
        media = self.media_rules.media_record(media_id)
        owner = self.numbers.get(media.phone_number_id) if media is not None else None
        if media is None or owner is None or owner.waba_id != number.waba_id or media.use_case != ANNOUNCEMENT:
            raise GraphError(100, "Param calling[voicemail][audio][default][announcement_media_id] must be the id "
                                  "of media uploaded with use_case call_voicemail_announcement - got "
                                  f"\"{media_id}\".")

    def _calls_subscriber(self, waba_id: str) -> bool:
        waba = self.wabas[waba_id]
        return any("calls" in self.apps[a].subscribed_fields() for a in waba.subscribed_apps if a in self.apps)

    def _sync_sip_passwords(self, number: PhoneNumber) -> None:
        """One password per number and app; removing an app's servers forgets it (Meta's reset procedure)."""
        with_servers = {str(s.get("app_id")) for s in calling_settings.sip_servers(number.calling)}
        for app_id in list(number.sip_passwords):
            if app_id not in with_servers:
                del number.sip_passwords[app_id]
        for app_id in with_servers:
            number.sip_passwords.setdefault(app_id, sip_password())

    def set_number_override(self, app: App, number: PhoneNumber, body: Any) -> None:
        config = body.get("webhook_configuration") if isinstance(body, dict) else None
        if not isinstance(config, dict):
            raise GraphError(100, "The parameter webhook_configuration is required.")
        uri = config.get("override_callback_uri")
        if uri in (None, ""):
            number.override_callback = None
        else:
            if not isinstance(uri, str) or not re.match(r"^https?://", uri):
                raise GraphError(100, "Param webhook_configuration[override_callback_uri] must be a URL.")
            number.override_callback = {"override_callback_uri": uri, "app_id": app.id,
                                        "verify_token": str(config.get("verify_token", ""))}
        self.put(number)

    def add_restriction(self, number: PhoneNumber, type_: str, seconds: float, reason: str | None = None) -> dict:
        allowed = ("RESTRICTED_BUSINESS_INITIATED_CALLING", "RESTRICTED_USER_INITIATED_CALLING")
        if type_ not in allowed:
            raise ValueError(f"type must be one of {', '.join(allowed)}")
        restriction = {"type": type_, "reason": reason or (
            "Calling has been temporarily disabled for this phone number due to high negative feedback from users."),
            "expiration": int(self.now() + seconds)}
        number.restrictions = [r for r in number.restrictions if r.get("type") != type_] + [restriction]
        self.put(number)
        return restriction

    # -- analytics --------------------------------------------------------------------------
    def call_analytics(self, waba_id: str, start: float | None = None, end: float | None = None) -> dict:
        start = start if start is not None else 0.0
        end = end if end is not None else self.now()
        numbers = sorted(n.id for n in self.numbers.values() if n.waba_id == waba_id)
        points = []
        for direction in (USER_INITIATED, BUSINESS_INITIATED):
            totals = self._call_totals(numbers, direction, start, end)
            connected, total = totals["completed_count"], totals["total_duration"]
            points.append({
                "start": int(start), "end": int(end), "direction": direction,
                "count": totals["count"], "completed_count": connected,
                "total_duration": total,
                "average_duration": round(total / connected, 2) if connected else 0,
                "pulses": totals["pulses"],
                "cost": round(totals["cost"], 6),
                "currency": self.wabas[waba_id].currency,
            })
        return {"data": [{"data_points": points}]}

    def _call_totals(self, numbers: list[str], direction: str, start: float, end: float) -> dict:
        """Every call ever made counts: the store's call index answers; without one, the calls in memory."""
        if self.archive is not None:
            return self.archive.call_totals(numbers, direction, start, end)
        calls = [c for c in self.calls.values() if c.phone_number_id in numbers and c.direction == direction
                 and start <= c.created_at < end]
        connected = [c for c in calls if c.duration is not None]
        return {"count": len(calls), "completed_count": len(connected),
                "total_duration": sum(c.duration or 0 for c in connected),
                "pulses": sum(c.pulses for c in calls), "cost": sum(c.cost for c in calls)}
