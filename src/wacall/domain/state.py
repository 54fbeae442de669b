"""The platform's state and the bookkeeping every rule shares: lookups, ids, events, dirty tracking.

No I/O happens here. Time comes from the injected clock. The server persists ``dirty`` records
and delivers ``events`` after each operation (see ``wacall.server``).
"""

from __future__ import annotations

import secrets
from typing import Iterable

from .clock import VirtualClock
from .errors import GraphError
from .events import Event
from .limits import Limits
from .model import (Call, App, Message, Pair, PhoneNumber, Record, RECORD_TYPES, Template, User,
                    Waba)
from .phone import phone_digits
from .pricing import RateCard


class ControlError(Exception):
    """A refusal on the WhatsApp-user side (control API): a reason code plus a human sentence."""

    def __init__(self, reason: str, detail: str, status: int = 409) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}")


def new_id(prefix: str) -> str:
    return f"{prefix}.{secrets.token_urlsafe(24)}"


def unsupported(object_id: str, method: str = "get") -> GraphError:
    return GraphError(
        100,
        f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be loaded "
        "due to missing permissions, or does not support this operation.",
        message=f"Unsupported {method} request. Object with ID '{object_id}' does not exist, cannot be "
                "loaded due to missing permissions, or does not support this operation. Please read the "
                "Graph API documentation at https://developers.facebook.com/docs/graph-api",
        subcode=33,
    )


class PlatformState:
    def __init__(self, clock: VirtualClock, limits: Limits, rate_card: RateCard | None = None) -> None:
        self.clock = clock
        self.limits = limits
        self.rate_card = rate_card or RateCard()
        self.apps: dict[str, App] = {}
        self.wabas: dict[str, Waba] = {}
        self.numbers: dict[str, PhoneNumber] = {}
        self.users: dict[str, User] = {}
        self.pairs: dict[str, Pair] = {}
        self.calls: dict[str, Call] = {}
        self.messages: dict[str, Message] = {}
        self.templates: dict[str, Template] = {}
        self.active_calls: dict[str, Call] = {}
        self.pending_messages: dict[str, Message] = {}
        self.events: list[Event] = []
        self.dirty: dict[tuple[str, str], Record] = {}
        self.request_windows: dict[str, list[float]] = {}

    # -- bookkeeping -------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def _table(self, kind: str) -> dict:
        return {"app": self.apps, "waba": self.wabas, "phone_number": self.numbers, "user": self.users,
                "pair": self.pairs, "call": self.calls, "message": self.messages,
                "template": self.templates}[kind]

    def put(self, record: Record) -> Record:
        self._table(record.KIND)[record.key] = record
        if isinstance(record, Call):
            if record.active:
                self.active_calls[record.id] = record
            else:
                self.active_calls.pop(record.id, None)
        if isinstance(record, Message):
            if record.deadline is not None:
                self.pending_messages[record.id] = record
            else:
                self.pending_messages.pop(record.id, None)
        self.dirty[(record.KIND, record.key)] = record
        return record

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def drain(self) -> tuple[list[Event], list[Record]]:
        events, self.events = self.events, []
        dirty, self.dirty = list(self.dirty.values()), {}
        return events, dirty

    def load(self, docs: Iterable[tuple[str, dict]]) -> None:
        for kind, doc in docs:
            cls = RECORD_TYPES.get(kind)
            if cls is not None:
                self.put(cls.from_doc(doc))
        self.dirty.clear()

    def clear(self) -> None:
        for kind in RECORD_TYPES:
            self._table(kind).clear()
        self.active_calls.clear()
        self.pending_messages.clear()
        self.events.clear()
        self.dirty.clear()
        self.request_windows.clear()

    def note(self, call: Call, kind: str, **data) -> None:
        entry = {"t": round(self.now(), 3), "kind": kind}
        entry.update({k: v for k, v in data.items() if v is not None})
        call.timeline.append(entry)
        self.put(call)

    # -- lookups ----------------------------------------------------------------------------
    def app_for_token(self, token: str | None) -> App | None:
        if not token:
            return None
        for app in self.apps.values():
            if token in (app.access_token, app.app_token):
                return app
        return None

    def number_for(self, app: App, phone_number_id: str, method: str = "get") -> PhoneNumber:
        number = self.numbers.get(phone_number_id)
        if number is None or number.waba_id not in app.waba_ids:
            raise unsupported(phone_number_id, method)
        return number

    def waba_for(self, app: App, waba_id: str, method: str = "get") -> Waba:
        waba = self.wabas.get(waba_id)
        if waba is None or waba_id not in app.waba_ids:
            raise unsupported(waba_id, method)
        return waba

    def number_by_address(self, address: str) -> PhoneNumber | None:
        if address in self.numbers:
            return self.numbers[address]
        digits = phone_digits(address)
        if digits is None:
            return None
        for number in self.numbers.values():
            if number.display_phone_number == digits:
                return number
        return None

    def user(self, wa_id: str) -> User:
        user = self.users.get(wa_id)
        if user is None:
            raise ControlError("unknown_user", f"no virtual user with wa_id {wa_id}", 404)
        return user

    def pair(self, phone_number_id: str, wa_id: str) -> Pair:
        key = f"{phone_number_id}:{wa_id}"
        pair = self.pairs.get(key)
        if pair is None:
            pair = self.put(Pair(phone_number_id=phone_number_id, wa_id=wa_id))
        return pair

    def call_for(self, number: PhoneNumber, call_id: object) -> Call:
        if not isinstance(call_id, str) or not call_id:
            raise GraphError(100, "The parameter call_id is required and must be a string.")
        call = self.calls.get(call_id)
        if call is None or call.phone_number_id != number.id:
            raise GraphError(100, f"Invalid call_id: no call '{call_id}' found for this phone number.")
        return call

    def active_call_between(self, phone_number_id: str, wa_id: str) -> Call | None:
        for call in self.active_calls.values():
            if call.phone_number_id == phone_number_id and call.wa_id == wa_id:
                return call
        return None

    def active_count(self, phone_number_id: str) -> int:
        return sum(1 for c in self.active_calls.values() if c.phone_number_id == phone_number_id)

    def active_restriction(self, number: PhoneNumber, type_: str) -> dict | None:
        now = self.now()
        for restriction in number.restrictions:
            if restriction.get("type") == type_ and float(restriction.get("expiration", 0)) > now:
                return restriction
        return None

    def window_open(self, pair: Pair) -> bool:
        return (pair.window_opened_at is not None
                and self.now() < pair.window_opened_at + self.limits.service_window_seconds)

    def rate_limit_hit(self, bucket: str, per_second: int) -> bool:
        """Sliding one-second window; True when this request is over the limit."""
        now = self.now()
        hits = [t for t in self.request_windows.get(bucket, []) if t > now - 1.0]
        over = len(hits) >= per_second
        if not over:
            hits.append(now)
        self.request_windows[bucket] = hits
        return over
