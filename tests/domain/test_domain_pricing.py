"""Pricing at the Platform level: business-initiated calls cost 6-second pulses, a fractional pulse counting
as one ("a 56-second call (9.33 pulses) would be counted as 10 pulses",
https://developers.facebook.com/docs/whatsapp/cloud-api/calling/pricing), at the per-minute rate of the
callee's calling code and the WABA's monthly volume tier; a call that never connected costs nothing, and
user-initiated calls are free. Rates are the built-in rate card (``wacall.domain.pricing.DEFAULT_RATES``).
"""

from __future__ import annotations

import pytest
from support.domain import ALICE, BRUNO, CHITRA, DAVE, Domain

from wacall.domain.pricing import PULSE_SECONDS, RateCard, price_call, pulses_for


@pytest.mark.parametrize("seconds, pulses", [(0, 0), (1, 1), (5, 1), (6, 1), (7, 2), (12, 2), (13, 3),
                                              (56, 10), (60, 10), (61, 11), (3600, 600)])
def test_six_second_pulses_rounded_up(seconds: int, pulses: int):
    assert PULSE_SECONDS == 6
    assert pulses_for(seconds) == pulses


def test_rate_card_picks_the_longest_calling_code_the_card_knows():
    card = RateCard()
    assert card.tiers_for(ALICE) == ("44", [(0, 0.03), (50001, 0.027), (250001, 0.024)])
    assert card.tiers_for(DAVE)[0] == "1" and card.tiers_for(CHITRA)[0] == "91"
    assert card.tiers_for("8613800000007") == ("*", [(0, 0.03), (50001, 0.027), (250001, 0.024)])
    custom = RateCard(rates={"4477": [(0, 0.05)], "44": [(0, 0.03)], "*": [(0, 0.0)]})
    assert card.tiers_for("447700900001")[0] == "44" and custom.tiers_for("447700900001")[0] == "4477"
    assert custom.tiers_for("442079460000")[0] == "44"


def talk(domain: Domain, wa_id: str, seconds: float):
    """A business-initiated call the user answers after 2 s and the business ends ``seconds`` later."""
    domain.grant(wa_id, permanent=True)
    domain.user(wa_id).incoming = "answer"
    call = domain.connect(wa_id)
    domain.advance(2)
    domain.advance(seconds)
    domain.act(call, "terminate")
    return call


@pytest.mark.parametrize("wa_id, cost", [(ALICE, 0.03), (BRUNO, 0.01), (CHITRA, 0.0045), (DAVE, 0.011),
                                          ("8613800000007", 0.03)])      # 10 pulses = 1 minute at the rate
def test_a_56_second_call_is_10_pulses_at_the_callees_country_rate(domain: Domain, wa_id: str, cost: float):
    if wa_id not in domain.platform.users:
        domain.add_user(wa_id, country="CN")
    call = talk(domain, wa_id, 56)
    assert (call.duration, call.pulses) == (56, 10)
    assert call.cost == cost
    assert domain.waba.bic_seconds_by_month == {"2026-06": 60.0}


@pytest.mark.parametrize("seconds, duration, pulses, cost", [
    (0.4, 0, 0, 0.0),            # under half a second: duration 0, nothing billed
    (0.5, 1, 1, 0.003),
    (6.4, 6, 1, 0.003),
    (6.5, 7, 2, 0.006),
    (60, 60, 10, 0.03),
    (600.2, 600, 100, 0.3),
])
def test_billing_follows_the_whole_second_duration(domain: Domain, seconds, duration, pulses, cost):
    call = talk(domain, ALICE, seconds)
    assert (call.duration, call.pulses, call.cost) == (duration, pulses, cost)


def test_calls_that_never_connected_cost_nothing(domain: Domain):
    domain.grant(ALICE, permanent=True)
    domain.grant(DAVE, permanent=True)
    domain.user(ALICE).incoming = "ignore"
    not_answered = domain.connect(ALICE)
    domain.advance(60)
    rejected = domain.connect(DAVE)
    domain.advance(2)
    domain.user(ALICE).incoming = "manual"
    cancelled = domain.connect(ALICE)
    domain.advance(30)
    domain.act(cancelled, "terminate")
    for call in (not_answered, rejected, cancelled):
        assert (call.accepted_at, call.duration, call.pulses, call.cost) == (None, None, 0, 0.0)
    assert [c.end_reason for c in (not_answered, rejected, cancelled)] == ["not_answered", "rejected", "cancelled"]
    assert domain.waba.bic_seconds_by_month == {}


def test_user_initiated_calls_are_free(domain: Domain):
    call = domain.user_calls(ALICE)
    domain.act(call, "accept")
    domain.advance(300)
    domain.act(call, "terminate")
    assert (call.duration, call.pulses, call.cost) == (300, 0, 0.0)
    assert domain.waba.bic_seconds_by_month == {}


def test_the_monthly_volume_tier_and_a_call_crossing_it(domain: Domain):
    """Tiers of +44: up to 50 000 minutes a month $0.03, from 50 001 $0.027, from 250 001 $0.024."""
    domain.waba.bic_seconds_by_month = {"2026-06": 49999 * 60.0}
    first = talk(domain, ALICE, 60)              # ends at 50 000 minutes: still the first tier
    assert (first.pulses, first.cost) == (10, 0.03)
    assert domain.waba.bic_seconds_by_month == {"2026-06": 50000 * 60.0}
    crossing = talk(domain, ALICE, 60)           # reaches 50 001: billed wholly at $0.027
    assert (crossing.pulses, crossing.cost) == (10, 0.027)
    after = talk(domain, ALICE, 30)
    assert (after.pulses, after.cost) == (5, 0.0135)
    assert domain.waba.bic_seconds_by_month == {"2026-06": 50001.5 * 60}
    assert price_call(RateCard(), ALICE, 60, 250000) == (10, 0.024)


def test_the_tier_month_is_the_calendar_month_in_the_wabas_timezone(domain: Domain):
    domain.waba.timezone_id = "America/Sao_Paulo"            # UTC-3: T0 is still 31 May there
    domain.waba.bic_seconds_by_month = {"2026-05": 50001 * 60.0}
    may = talk(domain, BRUNO, 6)
    assert (may.pulses, may.cost) == (1, 0.0009)             # $0.009 per minute: second tier of +55
    domain.advance(3 * 3600)                                 # 1 June in Sao Paulo: a new month from zero
    june = talk(domain, BRUNO, 6)
    assert (june.pulses, june.cost) == (1, 0.001)
    assert domain.waba.bic_seconds_by_month == {"2026-06": 6.0}


def test_call_analytics_adds_up_the_calls(domain: Domain):
    talk(domain, ALICE, 56)
    talk(domain, BRUNO, 10)
    domain.grant(DAVE, permanent=True)
    domain.connect(DAVE)
    domain.advance(2)                            # rejected: counted, not completed
    uic = domain.user_calls(CHITRA)
    domain.act(uic, "accept")
    domain.advance(30)
    domain.act(uic, "terminate")
    data = domain.platform.call_analytics(domain.waba.id)["data"][0]["data_points"]
    points = {p["direction"]: p for p in data}
    bic, user = points["BUSINESS_INITIATED"], points["USER_INITIATED"]
    assert (bic["count"], bic["completed_count"], bic["total_duration"], bic["average_duration"]) == (3, 2, 66, 33)
    assert (bic["pulses"], bic["cost"], bic["currency"]) == (12, 0.032, "USD")
    assert (user["count"], user["completed_count"], user["total_duration"], user["pulses"], user["cost"]) == (
        1, 1, 30, 0, 0)
    assert (bic["start"], bic["end"]) == (0, int(domain.now()))



@pytest.mark.parametrize("zone", ["UTC", "America/Sao_Paulo", "Australia/Lord_Howe", "Pacific/Apia", "Asia/Kolkata",
                                  "not/a-zone"])
def test_the_billing_month_kept_per_zone_is_the_calendar_month_hour_by_hour(zone: str) -> None:
    """The month a call is billed in (kept per zone between calls) is the zone's calendar month every quarter of
    an hour around every month end of two years, DST changes included, and after the clock jumps back and forth."""
    import datetime as dt

    from wacall.domain.calls import _month, _zone
    tz = _zone(zone)
    for k in range(24):
        start = dt.datetime(2025 + k // 12, k % 12 + 1, 1, tzinfo=tz).timestamp()
        for quarter in (*range(-27 * 4, 27 * 4), -24 * 14 * 4, 24 * 14 * 4):      # every 15 minutes, and mid-month
            t = start + quarter * 900 + 0.5
            assert _month(t, zone) == dt.datetime.fromtimestamp(t, tz).strftime("%Y-%m"), (zone, t)
    assert _month(0.5, zone) == dt.datetime.fromtimestamp(0.5, tz).strftime("%Y-%m")      # far back, then forward
    assert _month(2e9, zone) == dt.datetime.fromtimestamp(2e9, tz).strftime("%Y-%m")
