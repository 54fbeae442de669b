"""The platform's state and the bookkeeping every rule shares: lookups, ids, events, dirty tracking, the
working set and the indexes the rules count with.

No I/O happens here. Time comes from the injected clock. The server persists ``dirty`` records and the new
timeline entries (``drain_notes``), and delivers ``events`` after each operation (see ``wacall.server``).

The working set is what is live: every app, WABA, number, user, pair and template, the calls in progress
and the messages the virtual user still has to react to, plus the last ``keep_ended`` ended calls and
done messages. After each commit the server calls :meth:`PlatformState.trim`, and older ones leave
memory; :meth:`PlatformState.call` and :meth:`PlatformState.message` read them back through the injected
:class:`Archive` (the store). Counts the rules need are indexes kept up to date as records change
(active calls per number and per pair, business-initiated calls per number in the last 24 hours, billed
seconds per WABA and month), never scans over every call.
"""

from __future__ import annotations

import binascii
import bisect
import heapq
import itertools
import math
import os
from collections import OrderedDict, deque
from typing import Any, Iterable, Protocol

from .clock import VirtualClock
from .errors import GraphError
from .events import Event
from .limits import DAY, Limits
from .model import (ENDED, Call, App, Message, Pair, PhoneNumber, Record, RECORD_TYPES, Template, User,
                    Waba)
from .phone import phone_digits
from .pricing import RateCard

KEEP_ENDED = 1000     # ended calls and done messages kept in memory after they leave the working set


class Archive(Protocol):
    """What the platform reads back from persistence (implemented by ``wacall.store.sqlite.Store``)."""

    def load_record(self, kind: str, key: str) -> dict | None:
        """The stored document of one record, or None."""

    def call_totals(self, phone_number_ids: list[str], direction: str, start: float, end: float) -> dict:
        """``count``, ``completed_count``, ``total_duration``, ``pulses`` and ``cost`` of the calls created in
        ``[start, end)`` on those numbers in that direction."""

    def bic_initiations_since(self, since: float) -> list[tuple[str, float]]:
        """``(phone_number_id, created_at)`` of every business-initiated call created after ``since``, oldest
        first."""

    def bic_connected_since(self, since: float) -> list[tuple[str, str, float]]:
        """``(phone_number_id, wa_id, accepted_at)`` of every business-initiated call connected after ``since``,
        oldest first."""


class ControlError(Exception):
    """A refusal on the WhatsApp-user side (control API): a reason code plus a human sentence."""

    def __init__(self, reason: str, detail: str, status: int = 409) -> None:
        self.reason = reason
        self.detail = detail
        self.status = status
        super().__init__(f"{reason}: {detail}")


def round_ms(seconds: float) -> float:
    """``round(seconds, 3)``, the same float, at about a third of its cost (``float.__round__`` converts through
    decimal digits): the t of :func:`millisecond`."""
    return millisecond(seconds)[0]


def millisecond(seconds: float) -> tuple[float, float, float]:
    """``round(seconds, 3)`` (a timeline entry's ``t``) and an open interval around ``seconds`` where every
    reading rounds to that same value (``(k - 0.49) / 1000`` to ``(k + 0.49) / 1000`` for ``k`` thousandths:
    inside the half-thousandth on either side by far more than the products' and quotients' error below 4e9).

    Below 4e9 (the year 2096) ``seconds * 1000`` is under 2**42, so the float product is within 2**-12 of the
    exact one: a fraction not within 0.0005 of a half rounds as the exact one does, and ``k / 1000`` is then
    the float nearest to k thousandths, as round() gives (a near-tie asks round() which k). A zero, a negative
    or a larger time goes to round() itself, with an empty interval."""
    if 0.0 < seconds < 4e9:              # (not 0.0 itself: round keeps the sign of a -0.0)
        thousandths = seconds * 1000.0
        k = math.floor(thousandths)
        fraction = thousandths - k
        if fraction > 0.5005:
            k += 1
        elif fraction >= 0.4995:
            k = round(round(seconds, 3) * 1000.0)
        return k / 1000.0, (k - 0.49) / 1000.0, (k + 0.49) / 1000.0
    return round(seconds, 3), seconds, seconds


_URLSAFE = bytes.maketrans(b"+/", b"-_")      # base64's two symbols in the URL-safe alphabet (RFC 4648 section 5)


def urlsafe_text(raw: bytes) -> str:
    """``secrets.token_urlsafe``'s text of ``raw`` (URL-safe base64 without padding), made in C (binascii)
    without its three Python frames (token_urlsafe, token_bytes, base64.urlsafe_b64encode)."""
    return binascii.b2a_base64(raw, newline=False).translate(_URLSAFE).rstrip(b"=").decode("ascii")


def new_id(prefix: str) -> str:
    """A new record id: ``prefix``, a dot and 24 random octets as ``secrets.token_urlsafe(24)`` writes them."""
    return f"{prefix}.{urlsafe_text(os.urandom(24))}"


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


class UserBehaviour(Protocol):
    """What a virtual user decides for itself, asked by the rules (``wacall.users.behaviour`` is the one
    implementation; the server hands it to the platform, so the domain imports nothing outside itself)."""

    def when_called(self, user: Any) -> Any: ...             # a Reaction(action, after) or None
    def when_asked_permission(self, user: Any) -> Any: ...   # a Reaction(action, after) or None
    def voice(self, user: Any) -> str: ...                   # the user's audio source on a call


class _Unattended:
    """No behaviour given: users do nothing by themselves and say nothing (a bare platform in tests)."""

    def when_called(self, user: Any) -> None:
        return None

    def when_asked_permission(self, user: Any) -> None:
        return None

    def voice(self, user: Any) -> str:
        return "silence"


class PlatformState:
    def __init__(self, clock: VirtualClock, limits: Limits, rate_card: RateCard | None = None,
                 archive: Archive | None = None, behaviour: UserBehaviour | None = None) -> None:
        self.clock = clock
        self.behaviour = behaviour or _Unattended()   # what the virtual users decide (wacall.users.behaviour)
        self.limits = limits
        self.rate_card = rate_card or RateCard()
        self.archive = archive              # None: nothing ever leaves memory
        self.keep_ended = KEEP_ENDED
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
        self.notes: list[tuple[str, dict]] = []          # new timeline entries: (call_id, entry)
        self.request_windows: dict[str, list[float]] = {}
        self.ended: OrderedDict[tuple[str, str], None] = OrderedDict()   # ended calls, done messages: oldest first
        self.active_by_pair: dict[tuple[str, str], Call] = {}
        self.active_per_number: dict[str, int] = {}
        self.bic_initiations: dict[str, deque[float]] = {}  # phone_number_id -> created_at, last 24 h
        self.timers: list[tuple[float, int, str]] = []      # heap of (deadline, n, call_id): the calls' timers
        self._timed: dict[str, float] = {}                  # call_id -> the deadline last pushed for it
        self._timer_n = itertools.count()
        # the last timeline entry's t and the clock readings that round to it: the entries of one change (a
        # SIP flow makes 17, mostly in bursts) share a millisecond, and comparing is cheaper than rounding
        self._note_t, self._note_low, self._note_high = 0.0, 0.0, 0.0
        self._tables: dict[str, dict] = {
            "app": self.apps, "waba": self.wabas, "phone_number": self.numbers, "user": self.users,
            "pair": self.pairs, "call": self.calls, "message": self.messages, "template": self.templates}

    # -- bookkeeping -------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def _table(self, kind: str) -> dict:
        return self._tables[kind]

    def put(self, record: Record) -> Record:
        """Keep ``record`` and mark it for persistence with the next commit."""
        if type(record) is Call:      # (~5 puts per call: its key is its id, read without the property's frame, and
            slot = (Call.KIND, record.id)   # its table and indexes set here, without _hold's frame and tests)
            self.calls[record.id] = record
            self._index_call(record, slot)
        else:
            slot = (record.KIND, record.key)
            if isinstance(record, (Message, Call)):
                self._hold(record, slot)
            else:                     # (a pair, a WABA, ...: in no index; 3 puts per SIP flow)
                self._tables[slot[0]][slot[1]] = record
        self.dirty[slot] = record
        return record

    def _hold(self, record: Record, slot: tuple[str, str] | None = None) -> None:
        """Keep ``record`` (whose ``(KIND, key)`` is ``slot``, when the caller has it) in memory and in the
        indexes."""
        if slot is None:
            slot = (record.KIND, record.key)
        self._tables[slot[0]][slot[1]] = record
        if isinstance(record, Call):
            self._index_call(record, slot)
            return
        if isinstance(record, Message):
            live = record.live
            if live:
                self.pending_messages[record.id] = record
            else:
                self.pending_messages.pop(record.id, None)
        else:
            return
        if live:
            self.ended.pop(slot, None)
        else:
            self.ended[slot] = None
            self.ended.move_to_end(slot)

    def _index_call(self, call: Call, slot: tuple[str, str]) -> None:
        """The active-call indexes, the timer heap and the ended calls' order for ``call`` (whose ``(KIND, key)``
        is ``slot``). The usual put of a call in progress (active already and still) changes nothing but its
        pair slot and its timer: a call's ENDED is final, so it is not among the ended."""
        call_id = call.id
        if call.state != ENDED:        # (call.live, without the property's frame)
            active = self.active_calls.get(call_id)
            self.active_by_pair[(call.phone_number_id, call.wa_id)] = call
            deadline = call.deadline
            if deadline is not None and self._timed.get(call_id) != deadline:
                self._push_timer(call)
            if active is call:
                return
            if active is None:
                self.active_per_number[call.phone_number_id] = self.active_per_number.get(call.phone_number_id, 0) + 1
            self.active_calls[call_id] = call
            self.ended.pop(slot, None)
            return
        if self.active_calls.pop(call_id, None) is not None:
            self._timed.pop(call_id, None)
            if len(self.timers) > 2 * len(self.active_calls) + 64:    # ended calls' entries: drop them now
                self._rebuild_timers()
            left = self.active_per_number.get(call.phone_number_id, 1) - 1
            if left > 0:
                self.active_per_number[call.phone_number_id] = left
            else:
                self.active_per_number.pop(call.phone_number_id, None)
            pair = (call.phone_number_id, call.wa_id)
            if (held := self.active_by_pair.get(pair)) is not None and held.id == call_id:
                del self.active_by_pair[pair]
        self.ended[slot] = None
        self.ended.move_to_end(slot)

    # -- the calls' timers: a heap, so a tick and the next deadline never scan every active call ----------
    def _push_timer(self, call: Call) -> None:
        self._timed[call.id] = call.deadline
        heapq.heappush(self.timers, (call.deadline, next(self._timer_n), call.id))

    def _rebuild_timers(self) -> None:
        self._timed.clear()
        self.timers = []
        for call in self.active_calls.values():
            if call.deadline is not None:
                self._timed[call.id] = call.deadline
                self.timers.append((call.deadline, next(self._timer_n), call.id))
        heapq.heapify(self.timers)

    def _timer_entry_current(self, deadline: float, call_id: str) -> Call | None:
        """The active call a popped heap entry still times, or None for a stale entry (the call ended, or its
        deadline was cleared or moved: a moved deadline has its own entry, pushed when the call was put)."""
        if self._timed.get(call_id) == deadline:
            del self._timed[call_id]
        call = self.active_calls.get(call_id)
        if call is None or call.deadline is None:
            return None
        if call.deadline != deadline:
            if self._timed.get(call_id) != call.deadline:      # changed without a put: keep it timed
                self._push_timer(call)
            return None
        return call

    def due_calls(self, now: float) -> list[Call]:
        """The active calls whose deadline has come, earliest first (taken off the heap)."""
        due: dict[str, Call] = {}
        timers = self.timers
        while timers and timers[0][0] <= now:
            deadline, _, call_id = heapq.heappop(timers)
            call = self._timer_entry_current(deadline, call_id)
            if call is not None:
                due.setdefault(call_id, call)
        return list(due.values())

    def next_call_deadline(self) -> float | None:
        """The earliest deadline of an active call (stale heap entries on top are dropped)."""
        timers = self.timers
        while timers:
            deadline, _, call_id = timers[0]
            call = self.active_calls.get(call_id)
            if call is not None and call.deadline == deadline:
                return deadline
            heapq.heappop(timers)
            self._timer_entry_current(deadline, call_id)
        return None

    def emit(self, event: Event) -> None:
        self.events.append(event)

    def drain(self) -> tuple[list[Event], list[Record]]:
        events, self.events = self.events, []
        dirty, self.dirty = list(self.dirty.values()), {}
        return events, dirty

    def drain_notes(self) -> list[tuple[str, dict]]:
        notes, self.notes = self.notes, []
        return notes

    def pending_notes(self, call_id: str) -> list[dict]:
        """Timeline entries of ``call_id`` not committed yet."""
        return [entry for owner, entry in self.notes if owner == call_id]

    def trim(self) -> None:
        """Let the oldest ended calls and done messages leave memory; they are persisted, and :meth:`call`
        and :meth:`message` read them back. The server calls this after each commit."""
        if self.archive is None:
            return
        while len(self.ended) > self.keep_ended:
            slot = next(iter(self.ended))
            if slot in self.dirty:               # not persisted yet: keep until the next commit
                break
            del self.ended[slot]
            self._tables[slot[0]].pop(slot[1], None)

    def load(self, docs: Iterable[tuple[str, dict]]) -> None:
        """Load the working set after a restart, and rebuild the indexes that need history."""
        for kind, doc in docs:
            cls = RECORD_TYPES.get(kind)
            if cls is not None:
                self._hold(cls.from_doc(doc))
        if self.archive is not None:
            for phone_number_id, created_at in self.archive.bic_initiations_since(self.now() - DAY):
                self.bic_initiations.setdefault(phone_number_id, deque()).append(created_at)
            for pair in self.pairs.values():            # an older database's docs still carry them
                pair.bic_connected_times = []
            for phone_number_id, wa_id, accepted_at in self.archive.bic_connected_since(self.now() - DAY):
                self.pair(phone_number_id, wa_id).bic_connected_times.append(accepted_at)
        self.dirty.clear()

    def clear(self) -> None:
        for kind in RECORD_TYPES:
            self._table(kind).clear()
        self.active_calls.clear()
        self.pending_messages.clear()
        self.events.clear()
        self.dirty.clear()
        self.notes.clear()
        self.request_windows.clear()
        self.ended.clear()
        self.active_by_pair.clear()
        self.active_per_number.clear()
        self.bic_initiations.clear()
        self.timers.clear()
        self._timed.clear()

    def note(self, call: Call, kind: str, **data) -> None:
        """A timeline entry for ``call``: appended to the call's timeline table with the next commit. A None
        value is left out (most entries have none: a loop finds a None sooner than `None in data.values()`,
        which compares each value with None through its type's __eq__)."""
        for value in data.values():
            if value is None:
                data = {key: value for key, value in data.items() if value is not None}
                break
        self.note_values(call, kind, data)

    def note_values(self, call: Call, kind: str, values: dict) -> None:
        """:meth:`note` for the hot paths (a SIP flow's 17 entries): its values as a dict, none of them None (kept
        as they are). No keyword arguments packed again and no None looked for: ~1-3 k instructions less an entry.
        The entry is built once, as stored and read back: t, kind, then the values in their order."""
        now = self.clock.now()
        if not self._note_low < now < self._note_high:   # not the last entry's millisecond: round (round_ms(now))
            self._note_t, self._note_low, self._note_high = millisecond(now)
        self.notes.append((call.id, {"t": self._note_t, "kind": kind, **values}))

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
        # (digits already, as a SIP From user's: phone_digits would hand them back as they are)
        digits = address if type(address) is str and address.isdigit() and address.isascii() else phone_digits(address)
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

    def _find(self, kind: str, key: object) -> Record | None:
        if not isinstance(key, str):
            return None
        found = self._tables[kind].get(key)
        if found is None and self.archive is not None and key:
            doc = self.archive.load_record(kind, key)
            if doc is not None:
                found = RECORD_TYPES[kind].from_doc(doc)
                self._hold(found)
        return found

    def call(self, call_id: object) -> Call | None:
        """Any call, live or ended: from memory, else read back from the archive (and kept a while)."""
        found = self.calls.get(call_id) if type(call_id) is str else None     # (in memory, the usual: one frame)
        return found if found is not None else self._find(Call.KIND, call_id)  # type: ignore[return-value]

    def message(self, message_id: object) -> Message | None:
        return self._find(Message.KIND, message_id)  # type: ignore[return-value]

    def call_for(self, number: PhoneNumber, call_id: object) -> Call:
        if not isinstance(call_id, str) or not call_id:
            raise GraphError(100, "The parameter call_id is required and must be a string.")
        call = self.call(call_id)
        if call is None or call.phone_number_id != number.id:
            raise GraphError(100, f"Invalid call_id: no call '{call_id}' found for this phone number.")
        return call

    def active_call_between(self, phone_number_id: str, wa_id: str) -> Call | None:
        return self.active_by_pair.get((phone_number_id, wa_id))

    def active_count(self, phone_number_id: str) -> int:
        return self.active_per_number.get(phone_number_id, 0)

    def bic_initiated_last_24h(self, phone_number_id: str, now: float | None = None) -> deque[float]:
        """When this number's business-initiated calls of the last 24 hours (before ``now``, the clock's time
        unless the caller read it already) were created, oldest first."""
        times = self.bic_initiations.setdefault(phone_number_id, deque())
        cutoff = (self.now() if now is None else now) - DAY
        while times and times[0] <= cutoff:
            times.popleft()
        return times

    def bic_connected_last_24h(self, pair: Pair, now: float | None = None) -> list[float]:
        """When this pair's business-initiated calls of the last 24 hours (before ``now``, as above) were
        connected, oldest first (the list is kept in time order: a bisection, not a scan and a sort per call)."""
        times = pair.bic_connected_times
        return times[bisect.bisect_right(times, (self.now() if now is None else now) - DAY):]

    def active_restriction(self, number: PhoneNumber, type_: str, now: float | None = None) -> dict | None:
        """The number's restriction of ``type_`` in force at ``now`` (as above), if any."""
        if not number.restrictions:
            return None
        if now is None:
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
