"""Driving the domain directly: a :class:`Platform` seeded with the built-in default config (one WABA,
one GB number with calling and callback permission on, one app, six users) on a clock that stands
still until the test advances it. No HTTP, no sockets, no subprocess, no sleeping.

Time moves only through :meth:`Domain.advance`, which advances the clock and runs the platform's timers
(``platform.tick()``), exactly what the server's timer loop does.
"""

from __future__ import annotations

import base64
import itertools
from typing import Any

from wacall.config import load_config
from wacall.domain.clock import VirtualClock
from wacall.domain.events import MediaConfigure
from wacall.domain.model import Call, Pair, User
from wacall.domain.platform import Platform
from wacall.domain.sdp import LocalMedia
from wacall.domain.state import Archive
from wacall.users import behaviour

from .sdp_samples import FINGERPRINT, business_answer, business_offer

T0 = 1_780_272_000.0        # 2026-06-01 00:00:00 UTC, a Monday: every test starts here
MINUTE, HOUR, DAY = 60.0, 3600.0, 86400.0
WEEK = 7 * DAY

ALICE = "447700900001"      # GB (+44), answers after 2 s
BRUNO = "5511987650002"     # BR (+55), answers after 2 s
CHITRA = "919876500003"     # IN (+91), iOS, answers after 2 s
DAVE = "14155550004"        # US (+1), rejects every call after 2 s


class Domain:
    """One platform, its clock and the default app and number, with the verbs the tests speak."""

    def __init__(self, archive: Archive | None = None, **limits: Any) -> None:
        config = load_config()
        self.clock = VirtualClock(source=lambda: T0)
        self.platform = Platform(self.clock, config.limits.updated(**limits), config.rate_card, archive=archive,
                                 behaviour=behaviour)
        self.platform.load((r.KIND, r.to_doc()) for r in [*config.wabas, *config.numbers, *config.apps,
                                                          *config.users])
        self.app = self.platform.apps[config.apps[0].id]
        self.number = self.platform.numbers[config.numbers[0].id]
        self.waba = self.platform.wabas[self.number.waba_id]
        self._ids = itertools.count(1)

    # -- time ---------------------------------------------------------------------------------
    def now(self) -> float:
        return self.clock.now()

    def advance(self, seconds: float) -> None:
        """Move the clock and run every timer now due (the server's timer loop does the same)."""
        self.clock.advance(seconds)
        self.platform.tick()

    # -- what came out ------------------------------------------------------------------------
    def events(self) -> list:
        """The events emitted since the last call (and forget the dirty records, as a commit would)."""
        events, _ = self.platform.drain()
        return events

    def notes(self, call: Call) -> list[dict]:
        """The timeline entries of ``call`` not drained yet, without their timestamps."""
        return [{k: v for k, v in entry.items() if k != "t"} for entry in self.platform.pending_notes(call.id)]

    # -- records ------------------------------------------------------------------------------
    def user(self, wa_id: str) -> User:
        return self.platform.users[wa_id]

    def add_user(self, wa_id: str, **fields: Any) -> User:
        return self.platform.put(User(wa_id=wa_id, name=fields.pop("name", wa_id),
                                      country=fields.pop("country", "ZZ"), **fields))  # type: ignore[return-value]

    def pair(self, wa_id: str) -> Pair:
        return self.platform.pair(self.number.id, wa_id)

    def grant(self, wa_id: str, *, permanent: bool = False) -> None:
        """The user has given call permission (what a reply to a request does); its events are dropped."""
        self.platform.grant_permission(self.pair(wa_id), permanent=permanent, source="user_action",
                                       context_id=None)
        self.events()

    # -- the business (Graph) -----------------------------------------------------------------
    def leg(self, call_id: str) -> LocalMedia:
        """Meta's media endpoint for a call, as a value: no socket is bound, and nothing random in it, so
        Meta's SDP is the same on every run."""
        n = int("".join(ch for ch in call_id if ch.isdigit()) or 0)
        return LocalMedia(call_id=call_id, host="127.0.0.1", port=40000 + n % 20000, ice_ufrag=f"uFrAg{n:011d}",
                        ice_pwd=f"iCePaSsWoRd{n:021d}", fingerprint=FINGERPRINT.split(" ", 1)[1], ssrc=1000 + n,
                        sdes_key_b64=base64.b64encode(n.to_bytes(30, "big")).decode("ascii"), session_id=n,
                        stream_id=f"stream-{n}")

    def connect(self, wa_id: str, **body: Any) -> Call:
        """``POST /{phone_number_id}/calls`` with ``action: connect``: the business calls the user."""
        call_id = f"wacid.bic{next(self._ids)}"
        request = {"messaging_product": "whatsapp", "to": wa_id, "action": "connect",
                   "session": {"sdp_type": "offer", "sdp": business_offer()}, **body}
        response = self.platform.call_action(self.app, self.number, request, new_call_id=call_id,
                                             leg=self.leg(call_id))
        assert response == {"messaging_product": "whatsapp", "calls": [{"id": call_id}]}
        return self.platform.calls[call_id]

    def act(self, call: Call, action: str, **body: Any) -> dict:
        """``POST /{phone_number_id}/calls`` with ``action`` on an existing call (answers carry an SDP)."""
        request: dict[str, Any] = {"messaging_product": "whatsapp", "call_id": call.id, "action": action, **body}
        if action in ("pre_accept", "accept") and "session" not in body:
            request["session"] = {"sdp_type": "answer", "sdp": business_answer()}
        return self.platform.call_action(self.app, self.number, request)

    # -- the WhatsApp user ------------------------------------------------------------------------
    def user_calls(self, wa_id: str, **kwargs: Any) -> Call:
        """The user taps the business's call icon (or ``entry_point``)."""
        call_id = f"wacid.uic{next(self._ids)}"
        return self.platform.user_calls(wa_id, self.number.display_phone_number, call_id=call_id,
                                        leg=self.leg(call_id), **kwargs)


class configured:
    """Matches the ``MediaConfigure`` event of a call (its negotiated media is tested in test_negotiation.py)."""

    def __init__(self, call_id: str) -> None:
        self.call_id = call_id

    def __eq__(self, other: object) -> bool:
        return isinstance(other, MediaConfigure) and other.call_id == self.call_id

    def __repr__(self) -> str:
        return f"MediaConfigure({self.call_id!r}, ...)"
