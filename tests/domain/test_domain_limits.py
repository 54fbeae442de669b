"""Meta's per-number and per-pair caps at the Platform level, at their real production values:
100 connected business-initiated calls per pair in 24 hours (138012), 1000 concurrent calls per number
(138002 for the business; for the user a generic failure and no webhook), 10 000 business-initiated
call initiations per number in 24 hours (138005).
"""

from __future__ import annotations

import datetime as dt

import pytest
from support.domain import ALICE, BRUNO, DAY, T0, Domain

from wacall.domain.errors import GraphError
from wacall.domain.events import CallConnect
from wacall.domain.limits import Limits
from wacall.domain.model import ENDED
from wacall.domain.state import ControlError


def test_the_production_numbers():
    limits = Limits.for_profile("production")
    assert (limits.bic_connected_per_24h, limits.concurrent_calls, limits.bic_initiations_per_24h) == (100, 1000, 10000)
    assert (limits.permission_requests_per_24h, limits.permission_requests_per_7d) == (1, 2)
    assert (limits.unanswered_nudge, limits.unanswered_revoke, limits.temporary_permission_seconds) == (2, 4, 7 * DAY)
    assert (limits.uic_accept_window_seconds, limits.bic_ring_seconds) == (60, 60)


def connected_call(domain: Domain, wa_id: str, seconds: float = 10):
    call = domain.connect(wa_id)
    domain.advance(2)                            # the user answers after 2 s
    domain.advance(seconds)
    domain.act(call, "terminate")
    assert call.duration == seconds
    return call


def test_100_connected_business_calls_per_pair_in_24_hours(domain: Domain):
    domain.grant(ALICE, permanent=True)
    domain.grant(BRUNO, permanent=True)
    first = connected_call(domain, ALICE)
    for _ in range(99):
        connected_call(domain, ALICE)
    assert domain.now() == T0 + 100 * 12
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    next_allowed = first.accepted_at + DAY       # the oldest connected call leaves the 24 hours
    assert error.value.code == 138012
    assert f"Next call allowed at {int(next_allowed)} (" in error.value.details
    assert dt.datetime.fromtimestamp(next_allowed, dt.timezone.utc).isoformat() in error.value.details
    view = domain.platform.call_permissions_view(domain.app, domain.number, ALICE)
    assert view["actions"][1] == {"action_name": "start_call", "can_perform_action": False, "limits": [
        {"time_period": "PT24H", "max_allowed": 100, "current_usage": 100,
         "limit_expiration_time": int(next_allowed)}]}
    assert connected_call(domain, BRUNO).state == ENDED   # the cap is per pair

    domain.advance(next_allowed - domain.now() - 0.001)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138012
    domain.advance(0.001)
    assert domain.connect(ALICE).state == "RINGING"


def test_unanswered_calls_do_not_count_towards_the_connected_cap(domain: Domain):
    domain.grant(ALICE, permanent=True)
    for _ in range(99):
        connected_call(domain, ALICE, seconds=1)
    domain.user(ALICE).incoming = "reject"
    for _ in range(3):                           # 3 rejections: still under the 4 that revoke
        domain.connect(ALICE)
        domain.advance(2)
    domain.user(ALICE).incoming = "answer"
    connected_call(domain, ALICE, seconds=1)     # the 100th connected call
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138012


def many_users(domain: Domain, count: int) -> list[str]:
    return [domain.add_user(f"4477009{n:05d}", country="GB").wa_id for n in range(count)]


def test_1000_concurrent_calls_per_number_both_directions(domain: Domain):
    users = many_users(domain, 1001)
    for wa_id in users[:500]:
        domain.user_calls(wa_id)
    for wa_id in users[500:1000]:
        domain.grant(wa_id, permanent=True)
        domain.user(wa_id).incoming = "manual"
        domain.connect(wa_id)
    assert domain.platform.active_count(domain.number.id) == 1000
    last = users[1000]
    domain.grant(last, permanent=True)
    domain.events()

    with pytest.raises(GraphError) as error:
        domain.connect(last)
    assert error.value.code == 138002 and error.value.http_status == 429
    assert error.value.details == "Limit reached for maximum concurrent calls (1000) for the given number"
    with pytest.raises(ControlError) as refused:
        domain.user_calls(last)                  # the user just sees "Couldn't place call"
    assert (refused.value.reason, refused.value.status) == ("cannot_place_call", 503)
    assert domain.events() == []                 # and the business hears nothing of it

    domain.act(domain.platform.calls["wacid.uic1"], "reject")    # one call ends: one place is free
    domain.events()
    call = domain.user_calls(last)
    assert domain.events()[0] == CallConnect(call.id)
    assert domain.platform.active_count(domain.number.id) == 1000


def test_ended_calls_free_their_place_whatever_ended_them():
    domain = Domain(concurrent_calls=1)
    domain.grant(ALICE, permanent=True)
    call = domain.user_calls(BRUNO)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138002
    domain.advance(60)                           # the accept window closes the user's call
    assert call.state == ENDED and domain.platform.active_count(domain.number.id) == 0
    bic = domain.connect(ALICE)
    domain.platform.media_ended(bic.id, 138020, "no ICE check")
    assert domain.user_calls(BRUNO).state == "RINGING"


class History:
    """A store that remembers 10 000 business-initiated calls, the first one at T0 - 23 h."""

    def load_record(self, kind: str, key: str) -> dict | None:
        return None

    def call_totals(self, phone_number_ids, direction, start, end) -> dict:
        raise AssertionError("not used here")

    def bic_initiations_since(self, since: float) -> list[tuple[str, float]]:
        times = [T0 - 23 * 3600 + n for n in range(10000)]
        return [("106540352242922", t) for t in times if t > since]

    def bic_connected_since(self, since: float) -> list[tuple[str, str, float]]:
        return []


def test_10000_business_call_initiations_per_number_in_24_hours():
    domain = Domain(archive=History())           # a restart reads the last 24 h back from the store
    domain.grant(ALICE, permanent=True)
    domain.grant(BRUNO, permanent=True)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138005 and error.value.http_status == 429
    domain.advance(3600)                         # T0 + 1 h: the first initiation (T0 - 23 h) is 24 h old
    call = domain.connect(ALICE)
    assert call.state == "RINGING"
    with pytest.raises(GraphError) as error:     # and its place is taken again at once
        domain.connect(BRUNO)
    assert error.value.code == 138005


class Connected(History):
    """A store whose calls index holds 100 connected business-initiated calls to ALICE, the first at T0 - 23 h."""

    def bic_initiations_since(self, since: float) -> list[tuple[str, float]]:
        return []

    def bic_connected_since(self, since: float) -> list[tuple[str, str, float]]:
        return [("106540352242922", ALICE, t) for t in (T0 - 23 * 3600 + n for n in range(100)) if t > since]


def test_the_daily_connected_call_limit_is_rebuilt_from_the_calls_index_not_the_pairs_document():
    domain = Domain(archive=Connected())         # a restart: the pair's 24 h of connected calls from the store
    domain.grant(ALICE, permanent=True)
    with pytest.raises(GraphError) as error:
        domain.connect(ALICE)
    assert error.value.code == 138012
    assert "bic_connected_times" not in domain.pair(ALICE).fields_view()     # never written into the document
    domain.advance(3600)                         # the first of them is 24 h old: one call allowed again
    assert domain.connect(ALICE).state == "RINGING"
