"""Tests for wacall.domain.settings: validation, per-app SIP servers, views, call hours and icon visibility."""

from __future__ import annotations

import copy
import datetime as dt

import pytest

from wacall.domain.errors import GraphError
from wacall.domain.settings import (
    WEBHOOK_OBSERVED_KEYS,
    additional_codecs,
    apply_calling_update,
    default_calling_settings,
    icon_visible_to,
    is_within_call_hours,
    render_calling_settings,
    settings_webhook_view,
    sip_enabled,
    sip_servers,
    srtp_protocol,
)

TODAY = dt.date(2026, 1, 1)
APP = "1234567890"
OTHER_APP = "9876543210"

DOC_SAMPLE = {
    "status": "ENABLED",
    "call_icon_visibility": "DEFAULT",
    "call_icons": {"restrict_to_user_countries": ["US", "BR"]},
    "call_hours": {
        "status": "ENABLED",
        "timezone_id": "America/Manaus",
        "weekly_operating_hours": [
            {"day_of_week": "MONDAY", "open_time": "0400", "close_time": "1020"},
            {"day_of_week": "TUESDAY", "open_time": "0108", "close_time": "1020"},
        ],
        "holiday_schedule": [{"date": "2026-01-01", "start_time": "0000", "end_time": "2359"}],
    },
    "callback_permission_status": "ENABLED",
    "sip": {
        "status": "ENABLED",
        "servers": [{"hostname": "sip.example.com", "port": 5061,
                     "request_uri_user_params": {"tgrp": "wacall", "trunk-context": "byoc.example.com"}}],
    },
    "srtp_key_exchange_protocol": "DTLS",
    "audio": {"additional_codecs": ["PCMA", "PCMU"]},
    "voicemail": {"status": "ENABLED", "triggers": ["REJECT", "TIMEOUT"],
                  "audio": {"default": {"announcement_media_id": 938884519013664, "timeout_seconds": 20}}},
}


def apply(update, current=None, *, app_id=APP, today=TODAY):
    if current is None:
        current = default_calling_settings(False)
    return apply_calling_update(current, update, app_id=app_id, today=today)


def details_of(update, current=None, **kw) -> str:
    with pytest.raises(GraphError) as exc:
        apply(update, current, **kw)
    assert exc.value.code == 100
    assert exc.value.http_status == 400
    return exc.value.details


def hours(weekly, holidays=None, tz="America/Manaus", status="ENABLED"):
    body = {"status": status, "timezone_id": tz, "weekly_operating_hours": weekly}
    if holidays is not None:
        body["holiday_schedule"] = holidays
    return {"call_hours": body}


def slot(day, open_time, close_time):
    return {"day_of_week": day, "open_time": open_time, "close_time": close_time}


# ---------------------------------------------------------------------------------------------- defaults

def test_default_settings_shape():
    assert default_calling_settings(False) == {
        "status": "DISABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "DISABLED",
        "call_hours": {"status": "DISABLED"},
        "sip": {"status": "DISABLED", "servers": []},
        "audio": {"additional_codecs": []},
    }
    assert default_calling_settings(True)["status"] == "ENABLED"
    assert "srtp_key_exchange_protocol" not in default_calling_settings(True)
    assert "call_icons" not in default_calling_settings(True)


def test_default_settings_are_independent_copies():
    a = default_calling_settings(False)
    a["sip"]["servers"].append({"x": 1})
    assert default_calling_settings(False)["sip"]["servers"] == []


# ---------------------------------------------------------------------------------------------- full doc sample

def test_full_doc_sample_is_accepted():
    new, changed = apply(copy.deepcopy(DOC_SAMPLE))
    assert new["status"] == "ENABLED"
    assert new["call_icons"] == {"restrict_to_user_countries": ["US", "BR"]}
    assert new["call_hours"] == DOC_SAMPLE["call_hours"]
    assert new["sip"] == {"status": "ENABLED", "servers": [
        {"app_id": APP, "hostname": "sip.example.com", "port": 5061,
         "request_uri_user_params": {"tgrp": "wacall", "trunk-context": "byoc.example.com"}}]}
    assert new["srtp_key_exchange_protocol"] == "DTLS"
    assert new["audio"] == {"additional_codecs": ["PCMA", "PCMU"]}
    assert new["voicemail"] == DOC_SAMPLE["voicemail"]
    assert changed == ["status", "call_icons", "callback_permission_status", "call_hours", "sip.status",
                       "sip.servers", "srtp_key_exchange_protocol", "audio", "voicemail"]


def test_current_is_not_mutated():
    current = default_calling_settings(False)
    snapshot = copy.deepcopy(current)
    apply(copy.deepcopy(DOC_SAMPLE), current)
    assert current == snapshot


def test_failed_update_changes_nothing_even_if_earlier_keys_were_valid():
    current = default_calling_settings(False)
    snapshot = copy.deepcopy(current)
    with pytest.raises(GraphError):
        apply({"status": "ENABLED", "call_icon_visibility": "NOPE"}, current)
    assert current == snapshot


# ---------------------------------------------------------------------------------------------- top level

def test_calling_must_be_object():
    assert details_of(["status"]) == "Param calling must be a JSON object."
    assert details_of(None) == "Param calling must be a JSON object."


def test_unknown_top_level_key():
    assert details_of({"foo": 1}) == 'Unexpected key "foo" on param "calling".'


def test_restrictions_is_response_only():
    assert details_of({"restrictions": {}}) == 'Unexpected key "restrictions" on param "calling".'


def test_empty_update_changes_nothing():
    current = default_calling_settings(True)
    new, changed = apply({}, current)
    assert new == current
    assert changed == []


@pytest.mark.parametrize("key,allowed", [
    ("status", "{ENABLED, DISABLED}"),
    ("callback_permission_status", "{ENABLED, DISABLED}"),
    ("call_icon_visibility", "{DEFAULT, DISABLE_ALL}"),
    ("srtp_key_exchange_protocol", "{DTLS, SDES}"),
])
def test_enum_errors(key, allowed):
    assert details_of({key: "X"}) == f'Param calling[{key}] must be one of {allowed} - got "X".'
    assert details_of({key: True}) == f"Param calling[{key}] must be one of {allowed} - got true."
    assert details_of({key: "enabled"}).startswith(f"Param calling[{key}] must be one of")


def test_hide_in_chat_and_typo_variants_rejected():
    assert "DISABLE_ALL" in details_of({"call_icon_visibility": "HIDE_IN_CHAT"})
    assert "DISABLE_ALL" in details_of({"call_icon_visibility": "DISABLE ALL"})


def test_partial_update_only_touches_given_keys():
    current, _ = apply(copy.deepcopy(DOC_SAMPLE))
    new, changed = apply({"call_icon_visibility": "DISABLE_ALL"}, current)
    assert changed == ["call_icon_visibility"]
    assert new["call_icon_visibility"] == "DISABLE_ALL"
    for key in ("status", "call_hours", "sip", "call_icons", "audio", "voicemail", "srtp_key_exchange_protocol"):
        assert new[key] == current[key]


def test_same_value_reports_no_change():
    current = default_calling_settings(True)
    new, changed = apply({"status": "ENABLED", "callback_permission_status": "DISABLED"}, current)
    assert changed == []


def test_srtp_explicit_dtls_counts_as_change_then_sdes():
    new, changed = apply({"srtp_key_exchange_protocol": "DTLS"})
    assert changed == ["srtp_key_exchange_protocol"]
    assert new["srtp_key_exchange_protocol"] == "DTLS"
    new2, changed2 = apply({"srtp_key_exchange_protocol": "SDES"}, new)
    assert changed2 == ["srtp_key_exchange_protocol"]
    assert srtp_protocol(new2) == "SDES"
    assert srtp_protocol(default_calling_settings(True)) == "DTLS"


def test_missing_sections_in_current_are_filled():
    new, changed = apply({"status": "ENABLED"}, {})
    assert new["sip"] == {"status": "DISABLED", "servers": []}
    assert "status" in changed


# ---------------------------------------------------------------------------------------------- call icons

def test_call_icons_valid_and_dedupe():
    new, changed = apply({"call_icons": {"restrict_to_user_countries": ["US", "BR", "US"]}})
    assert new["call_icons"] == {"restrict_to_user_countries": ["US", "BR"]}
    assert changed == ["call_icons"]


def test_call_icons_empty_list_means_no_restriction():
    new, _ = apply({"call_icons": {"restrict_to_user_countries": []}})
    assert new["call_icons"] == {"restrict_to_user_countries": []}
    new, _ = apply({"call_icons": {}})
    assert new["call_icons"] == {"restrict_to_user_countries": []}


@pytest.mark.parametrize("code", ["us", "USA", "U", "ZZ", "AQ", "", 1, None, "Us"])
def test_call_icons_invalid_country(code):
    d = details_of({"call_icons": {"restrict_to_user_countries": ["BR", code]}})
    assert d.startswith("Param calling[call_icons][restrict_to_user_countries][1] must be a valid ISO 3166-1 "
                        "alpha-2 country code - got ")


def test_call_icons_shapes():
    assert details_of({"call_icons": "US"}) == "Param calling[call_icons] must be a JSON object."
    assert details_of({"call_icons": {"restrict_to_user_countries": "US"}}) == \
        "Param calling[call_icons][restrict_to_user_countries] must be an array."
    assert details_of({"call_icons": {"countries": []}}) == \
        'Unexpected key "countries" on param "calling[call_icons]".'


# ---------------------------------------------------------------------------------------------- call hours

def test_call_hours_doc_messages_timezone():
    assert details_of(hours([slot("MONDAY", "0900", "1700")], tz="Mars/Olympus")) == \
        "Timezone is invalid in call_hours"
    assert details_of(hours([slot("MONDAY", "0900", "1700")], tz="america/manaus")) == \
        "Timezone is invalid in call_hours"
    assert details_of(hours([slot("MONDAY", "0900", "1700")], tz=5)) == "Timezone is invalid in call_hours"
    body = {"call_hours": {"status": "ENABLED", "weekly_operating_hours": [slot("MONDAY", "0900", "1700")]}}
    assert details_of(body) == "Timezone is invalid in call_hours"


def test_call_hours_weekly_cannot_be_empty():
    assert details_of(hours([])) == "weekly_operating_hours in call_hours cannot be empty"
    body = {"call_hours": {"status": "ENABLED", "timezone_id": "Asia/Singapore"}}
    assert details_of(body) == "weekly_operating_hours in call_hours cannot be empty"
    body["call_hours"]["weekly_operating_hours"] = None
    assert details_of(body) == "weekly_operating_hours in call_hours cannot be empty"


@pytest.mark.parametrize("open_time,close_time", [
    ("1700", "0900"), ("0900", "0900"), ("2500", "2600"), ("0960", "1000"), ("900", "1000"),
    ("09000", "1000"), ("ab00", "1000"), ("0900", "2400"), (True, "1000"), (None, "1000"),
    (-5, 100), (2360, 2400), ("9:00", "10:00"),
])
def test_call_hours_invalid_schedule(open_time, close_time):
    d = details_of(hours([slot("MONDAY", open_time, close_time)]))
    if open_time is None:
        assert d == "The parameter calling[call_hours][weekly_operating_hours][0][open_time] is required."
    else:
        assert d == "Invalid schedule for call_hours"


def test_call_hours_more_than_two_per_day():
    weekly = [slot("MONDAY", "0800", "0900"), slot("MONDAY", "1000", "1100"), slot("MONDAY", "1200", "1300")]
    assert details_of(hours(weekly)) == \
        "More than 2 entries not allowed in weekly_operating_hours schedule in call_hours"


def test_call_hours_two_per_day_on_every_day_is_fine():
    days = ["MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY"]
    weekly = [slot(d, "0800", "1200") for d in days] + [slot(d, "1300", "1700") for d in days]
    new, _ = apply(hours(weekly))
    assert len(new["call_hours"]["weekly_operating_hours"]) == 14


@pytest.mark.parametrize("second", [("1100", "1300"), ("0900", "1200"), ("0800", "0930"), ("0930", "1000")])
def test_call_hours_overlap(second):
    weekly = [slot("MONDAY", "0900", "1200"), slot("MONDAY", *second)]
    assert details_of(hours(weekly)) == "Overlapping schedule in call_hours is not allowed"


def test_call_hours_adjacent_slots_and_other_days_do_not_overlap():
    weekly = [slot("MONDAY", "0900", "1200"), slot("MONDAY", "1200", "1500"), slot("TUESDAY", "0900", "1200")]
    new, _ = apply(hours(weekly))
    assert len(new["call_hours"]["weekly_operating_hours"]) == 3


def test_call_hours_day_of_week_enum_and_required_keys():
    d = details_of(hours([slot("monday", "0900", "1000")]))
    assert d == ('Param calling[call_hours][weekly_operating_hours][0][day_of_week] must be one of '
                 '{MONDAY, TUESDAY, WEDNESDAY, THURSDAY, FRIDAY, SATURDAY, SUNDAY} - got "monday".')
    assert details_of(hours([{"open_time": "0900", "close_time": "1000"}])) == \
        "The parameter calling[call_hours][weekly_operating_hours][0][day_of_week] is required."
    assert details_of(hours([{**slot("MONDAY", "0900", "1000"), "note": "x"}])) == \
        'Unexpected key "note" on param "calling[call_hours][weekly_operating_hours][0]".'
    assert details_of(hours("MONDAY")) == "Param calling[call_hours][weekly_operating_hours] must be an array."
    assert details_of(hours(["MONDAY"])) == \
        "Param calling[call_hours][weekly_operating_hours][0] must be a JSON object."


def test_call_hours_status_required_and_enum():
    assert details_of({"call_hours": {"timezone_id": "UTC"}}) == \
        "The parameter calling[call_hours][status] is required."
    assert details_of({"call_hours": {"status": "ON"}}) == \
        'Param calling[call_hours][status] must be one of {ENABLED, DISABLED} - got "ON".'
    assert details_of({"call_hours": []}) == "Param calling[call_hours] must be a JSON object."
    assert details_of({"call_hours": {"status": "DISABLED", "x": 1}}) == \
        'Unexpected key "x" on param "calling[call_hours]".'


def test_call_hours_time_formats_normalised():
    weekly = [slot("MONDAY", "04:00", "10:20"), slot("TUESDAY", 400, 1020), slot("WEDNESDAY", 0, 2359)]
    new, _ = apply(hours(weekly))
    assert new["call_hours"]["weekly_operating_hours"] == [
        slot("MONDAY", "0400", "1020"), slot("TUESDAY", "0400", "1020"), slot("WEDNESDAY", "0000", "2359")]


def test_call_hours_disabled_needs_nothing_else():
    current, _ = apply(copy.deepcopy(DOC_SAMPLE))
    new, changed = apply({"call_hours": {"status": "DISABLED"}}, current)
    assert new["call_hours"] == {"status": "DISABLED"}
    assert changed == ["call_hours"]


def test_call_hours_disabled_still_validates_present_fields():
    assert details_of(hours([], tz="Nowhere/City", status="DISABLED")) == "Timezone is invalid in call_hours"
    assert details_of(hours([slot("MONDAY", "1000", "0900")], status="DISABLED")) == \
        "Invalid schedule for call_hours"
    new, _ = apply(hours([], status="DISABLED"))
    assert new["call_hours"] == {"status": "DISABLED", "timezone_id": "America/Manaus",
                                 "weekly_operating_hours": []}


def test_call_hours_replaced_wholesale_and_holidays_deleted_when_omitted():
    current, _ = apply(copy.deepcopy(DOC_SAMPLE))
    assert current["call_hours"]["holiday_schedule"]
    new, changed = apply(hours([slot("FRIDAY", "0900", "1000")]), current)
    assert "holiday_schedule" not in new["call_hours"]
    assert new["call_hours"]["weekly_operating_hours"] == [slot("FRIDAY", "0900", "1000")]
    assert changed == ["call_hours"]


def test_call_hours_null_holidays_treated_as_omitted():
    """pywa's CallHours.to_dict sends "holiday_schedule": null when it has no holidays."""
    body = hours([slot("FRIDAY", "0900", "1000")])
    body["call_hours"]["holiday_schedule"] = None
    new, _ = apply(body)
    assert "holiday_schedule" not in new["call_hours"]
    new, _ = apply(hours([slot("FRIDAY", "0900", "1000")], holidays=[]))
    assert "holiday_schedule" not in new["call_hours"]


def test_holiday_date_format():
    weekly = [slot("MONDAY", "0900", "1000")]
    for bad in ["2026/01/05", "05-01-2026", "2026-1-5", "2026-02-30", "2026-13-01", 20260105, None, "tomorrow"]:
        d = details_of(hours(weekly, [{"date": bad, "start_time": "0000", "end_time": "2359"}]))
        if bad is None:
            assert d == "The parameter calling[call_hours][holiday_schedule][0][date] is required."
        else:
            assert d == "Date format in holiday_schedule for call_hours is invalid", bad


def test_holiday_past_date_relative_to_today():
    weekly = [slot("MONDAY", "0900", "1000")]
    past = [{"date": "2025-12-31", "start_time": "0000", "end_time": "2359"}]
    assert details_of(hours(weekly, past)) == "Holiday given in call_hours is a past date"
    today = [{"date": "2026-01-01", "start_time": "0000", "end_time": "2359"}]
    apply(hours(weekly, today))
    assert details_of(hours(weekly, today), today=dt.date(2026, 1, 2)) == \
        "Holiday given in call_hours is a past date"


def test_holiday_times():
    weekly = [slot("MONDAY", "0900", "1000")]
    for start, end in [("1200", "1100"), ("1200", "1200"), ("2500", "2600"), ("x", "1000")]:
        assert details_of(hours(weekly, [{"date": "2026-05-01", "start_time": start, "end_time": end}])) == \
            "Invalid schedule for call_hours"
    new, _ = apply(hours(weekly, [{"date": "2026-05-01", "start_time": "08:00", "end_time": 1200}]))
    assert new["call_hours"]["holiday_schedule"] == [{"date": "2026-05-01", "start_time": "0800", "end_time": "1200"}]


def test_holiday_table_field_names_rejected():
    weekly = [slot("MONDAY", "0900", "1000")]
    d = details_of(hours(weekly, [{"date": "2026-05-01", "open_time": "0000", "close_time": "2359"}]))
    assert d == 'Unexpected key "open_time" on param "calling[call_hours][holiday_schedule][0]".'


def test_holiday_overlap_same_date():
    weekly = [slot("MONDAY", "0900", "1000")]
    holidays = [{"date": "2026-05-01", "start_time": "0000", "end_time": "1200"},
                {"date": "2026-05-01", "start_time": "1200", "end_time": "1300"}]
    assert details_of(hours(weekly, holidays)) == "Overlapping schedule in call_hours is not allowed"
    holidays[1]["start_time"] = "1201"
    apply(hours(weekly, holidays))
    holidays[1]["date"] = "2026-05-02"
    holidays[1]["start_time"] = "0000"
    apply(hours(weekly, holidays))


def test_holiday_max_twenty():
    weekly = [slot("MONDAY", "0900", "1000")]
    holidays = [{"date": f"2026-02-{d:02d}", "start_time": "0000", "end_time": "2359"} for d in range(1, 21)]
    new, _ = apply(hours(weekly, holidays))
    assert len(new["call_hours"]["holiday_schedule"]) == 20
    holidays.append({"date": "2026-03-01", "start_time": "0000", "end_time": "2359"})
    assert details_of(hours(weekly, holidays)) == "More than 20 entries not allowed in holiday_schedule in call_hours"


def test_holiday_schedule_shape_errors():
    weekly = [slot("MONDAY", "0900", "1000")]
    assert details_of(hours(weekly, "2026-01-01")) == \
        "Param calling[call_hours][holiday_schedule] must be an array."
    assert details_of(hours(weekly, [{"date": "2026-05-01", "start_time": "0000"}])) == \
        "The parameter calling[call_hours][holiday_schedule][0][end_time] is required."


# ---------------------------------------------------------------------------------------------- SIP

def sip(status=None, servers=None):
    body = {}
    if status is not None:
        body["status"] = status
    if servers is not None:
        body["servers"] = servers
    return {"sip": body}


def test_sip_server_defaults_port_and_params():
    new, changed = apply(sip("ENABLED", [{"hostname": "sip.example.com"}]))
    assert new["sip"] == {"status": "ENABLED", "servers": [
        {"app_id": APP, "hostname": "sip.example.com", "port": 5061, "request_uri_user_params": {}}]}
    assert changed == ["sip.status", "sip.servers"]
    assert sip_enabled(new)


def test_sip_port_string_and_bounds():
    new, _ = apply(sip("ENABLED", [{"hostname": "sip.example.com", "port": "5071"}]))
    assert new["sip"]["servers"][0]["port"] == 5071
    for bad in [0, 65536, "abc", "50 61", -1, True, 5061.0, "٥٠٦١"]:
        d = details_of(sip("ENABLED", [{"hostname": "sip.example.com", "port": bad}]))
        assert d.startswith("Param calling[sip][servers][0][port] must be an integer between 1 and 65535"), bad


@pytest.mark.parametrize("host", ["", "-bad.example.com", "bad-.example.com", "exa mple.com", "a..b",
                                  "sip.example.com.", "x" * 64 + ".com", "sip_1.example.com", 5, "sip://x.com"])
def test_sip_invalid_hostname(host):
    d = details_of(sip("ENABLED", [{"hostname": host}]))
    assert d.startswith("Param calling[sip][servers][0][hostname] must be a valid hostname"), host


@pytest.mark.parametrize("host", ["localhost", "127.0.0.1", "SIP.Example.COM", "a-b.c-d.example"])
def test_sip_valid_hostnames(host):
    new, _ = apply(sip("ENABLED", [{"hostname": host}]))
    assert new["sip"]["servers"][0]["hostname"] == host


def test_sip_hostname_required_and_unknown_keys():
    assert details_of(sip("ENABLED", [{"port": 5061}])) == \
        "The parameter calling[sip][servers][0][hostname] is required."
    assert details_of(sip("ENABLED", [{"hostname": "a.com", "app_id": 1}])) == \
        'Unexpected key "app_id" on param "calling[sip][servers][0]".'
    assert details_of({"sip": {"status": "ENABLED", "foo": 1}}) == 'Unexpected key "foo" on param "calling[sip]".'
    assert details_of({"sip": "ENABLED"}) == "Param calling[sip] must be a JSON object."
    assert details_of(sip("ENABLED", {"hostname": "a.com"})) == "Param calling[sip][servers] must be an array."
    assert details_of(sip("ON")) == 'Param calling[sip][status] must be one of {ENABLED, DISABLED} - got "ON".'


def test_sip_request_uri_user_params_limits():
    ok = {"tgrp": "wacall", "k" * 128: "v" * 128}
    new, _ = apply(sip("ENABLED", [{"hostname": "a.com", "request_uri_user_params": ok}]))
    assert new["sip"]["servers"][0]["request_uri_user_params"] == ok
    bad_values = [{"k": "v" * 129}, {"k": 5}, {"k": ""}, {"k": "a;b"}, {"k": "a@b"}, {"k": "a b"}]
    for params in bad_values:
        d = details_of(sip("ENABLED", [{"hostname": "a.com", "request_uri_user_params": params}]))
        assert d.startswith("Param calling[sip][servers][0][request_uri_user_params][k] must be a string"), params
    for params in [{"k" * 129: "v"}, {"": "v"}, {"a=b": "v"}, {"a;b": "v"}]:
        d = details_of(sip("ENABLED", [{"hostname": "a.com", "request_uri_user_params": params}]))
        assert d.startswith("Param calling[sip][servers][0][request_uri_user_params] has an invalid key"), params
    assert details_of(sip("ENABLED", [{"hostname": "a.com", "request_uri_user_params": ["tgrp=x"]}])) == \
        "Param calling[sip][servers][0][request_uri_user_params] must be a JSON object."


def test_sip_enabled_requires_a_server():
    assert details_of(sip("ENABLED")) == "At least 1 SIP server must exist when SIP status is ENABLED"
    assert details_of(sip("ENABLED", [])) == "At least 1 SIP server must exist when SIP status is ENABLED"


def test_sip_one_server_per_app():
    d = details_of(sip("ENABLED", [{"hostname": "a.com"}, {"hostname": "b.com"}]))
    assert d == "Only one SIP server can be configured per app"


def test_sip_servers_are_per_app():
    s1, _ = apply(sip("ENABLED", [{"hostname": "one.example.com"}]), app_id=APP)
    s2, changed = apply(sip(servers=[{"hostname": "two.example.com", "port": 5062}]), s1, app_id=OTHER_APP)
    assert changed == ["sip.servers"]
    assert [(s["app_id"], s["hostname"], s["port"]) for s in s2["sip"]["servers"]] == [
        (APP, "one.example.com", 5061), (OTHER_APP, "two.example.com", 5062)]
    # APP replaces only its own entry, keeping its position
    s3, _ = apply(sip(servers=[{"hostname": "uno.example.com"}]), s2, app_id=APP)
    assert [(s["app_id"], s["hostname"]) for s in s3["sip"]["servers"]] == [
        (APP, "uno.example.com"), (OTHER_APP, "two.example.com")]
    # [] deletes only the caller's entry
    s4, changed = apply(sip(servers=[]), s3, app_id=OTHER_APP)
    assert changed == ["sip.servers"]
    assert [(s["app_id"], s["hostname"]) for s in s4["sip"]["servers"]] == [(APP, "uno.example.com")]
    # the last server cannot go while SIP is ENABLED
    assert details_of(sip(servers=[]), s4, app_id=APP) == \
        "At least 1 SIP server must exist when SIP status is ENABLED"
    # but it can together with disabling SIP
    s5, changed = apply(sip("DISABLED", []), s4, app_id=APP)
    assert s5["sip"] == {"status": "DISABLED", "servers": []}
    assert changed == ["sip.status", "sip.servers"]


def test_sip_int_app_id_is_normalised_to_str():
    new, _ = apply_calling_update(default_calling_settings(False), sip("ENABLED", [{"hostname": "a.com"}]),
                                  app_id=42, today=TODAY)  # type: ignore[arg-type]
    assert new["sip"]["servers"][0]["app_id"] == "42"
    newer, changed = apply_calling_update(new, sip(servers=[{"hostname": "b.com"}]), app_id="42", today=TODAY)
    assert [s["hostname"] for s in newer["sip"]["servers"]] == ["b.com"]


def test_sip_disable_keeps_servers_and_reenable_uses_them():
    s1, _ = apply(sip("ENABLED", [{"hostname": "a.com"}]))
    s2, changed = apply(sip("DISABLED"), s1)
    assert changed == ["sip.status"]
    assert s2["sip"]["servers"] == s1["sip"]["servers"]
    assert not sip_enabled(s2)
    s3, changed = apply(sip("ENABLED"), s2)
    assert changed == ["sip.status"]
    assert sip_servers(s3) == s1["sip"]["servers"]


def test_sip_status_untouched_when_only_servers_sent():
    s1, _ = apply(sip(servers=[{"hostname": "a.com"}]))
    assert s1["sip"]["status"] == "DISABLED"
    assert len(s1["sip"]["servers"]) == 1


def test_sip_password_reset_sequence():
    """Docs: disable + clear, then re-enable with a server. The caller rotates the password when the app's
    server goes from absent to present; here we check the state transitions it can observe."""
    s1, _ = apply({"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com"}]}})
    s2, ch2 = apply({"status": "DISABLED", "sip": {"status": "DISABLED", "servers": []}}, s1)
    assert ch2 == ["status", "sip.status", "sip.servers"]
    assert sip_servers(s2) == []
    s3, ch3 = apply({"status": "ENABLED", "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com"}]}},
                    s2)
    assert ch3 == ["status", "sip.status", "sip.servers"]
    assert [s["app_id"] for s in sip_servers(s3)] == [APP]


def test_sip_webhook_delivery_accepted():
    s1, _ = apply(sip("ENABLED", [{"hostname": "a.com"}]))
    s2, changed = apply({"sip": {"webhook_delivery": "ENABLED"}}, s1)
    assert changed == ["sip.webhook_delivery"]
    assert s2["sip"]["webhook_delivery"] == "ENABLED"
    assert details_of({"sip": {"webhook_delivery": "YES"}}, s1).startswith("Param calling[sip][webhook_delivery]")


def test_sip_servers_helper_returns_copies():
    s1, _ = apply(sip("ENABLED", [{"hostname": "a.com"}]))
    servers = sip_servers(s1)
    servers[0]["hostname"] = "changed"
    assert s1["sip"]["servers"][0]["hostname"] == "a.com"


# ---------------------------------------------------------------------------------------------- audio / voicemail

def test_audio_codecs():
    new, changed = apply({"audio": {"additional_codecs": ["PCMU", "PCMA", "PCMU"]}})
    assert new["audio"] == {"additional_codecs": ["PCMU", "PCMA"]}
    assert changed == ["audio"]
    assert additional_codecs(new) == ["PCMU", "PCMA"]
    new2, changed2 = apply({"audio": {"additional_codecs": []}}, new)
    assert new2["audio"] == {"additional_codecs": []}
    assert changed2 == ["audio"]
    same, changed3 = apply({"audio": {}}, new)
    assert same["audio"] == new["audio"] and changed3 == []


def test_audio_rejects_opus_and_unknown():
    for opus in ["OPUS", "opus", "Opus"]:
        assert details_of({"audio": {"additional_codecs": [opus]}}) == (
            "Opus is always enabled and cannot be listed in additional_codecs; allowed values are {PCMA, PCMU}")
    assert details_of({"audio": {"additional_codecs": ["G722"]}}) == \
        'Param calling[audio][additional_codecs][0] must be one of {PCMA, PCMU} - got "G722".'
    assert details_of({"audio": {"additional_codecs": "PCMA"}}) == \
        "Param calling[audio][additional_codecs] must be an array."
    assert details_of({"audio": {"status": "ENABLED"}}) == 'Unexpected key "status" on param "calling[audio]".'


def test_voicemail_accept_and_partial_merge():
    new, _ = apply({"voicemail": DOC_SAMPLE["voicemail"]})
    new2, changed = apply({"voicemail": {"status": "DISABLED"}}, new)
    assert changed == ["voicemail"]
    assert new2["voicemail"]["status"] == "DISABLED"
    assert new2["voicemail"]["triggers"] == ["REJECT", "TIMEOUT"]
    assert new2["voicemail"]["audio"] == DOC_SAMPLE["voicemail"]["audio"]
    new3, _ = apply({"voicemail": {"triggers": ["TIMEOUT"]}})
    assert new3["voicemail"] == {"triggers": ["TIMEOUT"], "status": "DISABLED"}


def test_voicemail_errors():
    assert details_of({"voicemail": {"triggers": ["BUSY"]}}) == \
        'Param calling[voicemail][triggers][0] must be one of {REJECT, TIMEOUT} - got "BUSY".'
    for secs in [31, -1, "20", True]:
        d = details_of({"voicemail": {"audio": {"default": {"timeout_seconds": secs}}}})
        assert d.startswith("Param calling[voicemail][audio][default][timeout_seconds] must be an integer "
                            "between 0 and 30")
    for media in ["abc", 0, "", True]:
        d = details_of({"voicemail": {"audio": {"default": {"announcement_media_id": media}}}})
        assert d.startswith("Param calling[voicemail][audio][default][announcement_media_id] must be a media ID")
    assert details_of({"voicemail": {"status": "ENABLED", "greeting": "x"}}) == \
        'Unexpected key "greeting" on param "calling[voicemail]".'
    new, _ = apply({"voicemail": {"audio": {"default": {"announcement_media_id": "123", "timeout_seconds": 0}}}})
    assert new["voicemail"]["audio"]["default"] == {"announcement_media_id": "123", "timeout_seconds": 0}


# ---------------------------------------------------------------------------------------------- GET view

def test_render_default():
    out = render_calling_settings(default_calling_settings(False), include_sip_credentials=False, sip_passwords={})
    assert out == {
        "status": "DISABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "DISABLED",
        "sip": {"status": "DISABLED", "servers": []},
        "audio": {"additional_codecs": []},
    }


def test_render_full_without_credentials():
    stored, _ = apply(copy.deepcopy(DOC_SAMPLE))
    stored, _ = apply(sip(servers=[{"hostname": "other.example.com", "port": "5070"}]), stored, app_id="app-x")
    out = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={APP: "secret"})
    assert out["call_hours"] == DOC_SAMPLE["call_hours"]
    assert out["call_icons"] == {"restrict_to_user_countries": ["US", "BR"]}
    assert out["sip"] == {"status": "ENABLED", "servers": [
        {"app_id": 1234567890, "hostname": "sip.example.com", "port": 5061,
         "request_uri_user_params": {"tgrp": "wacall", "trunk-context": "byoc.example.com"}},
        {"app_id": "app-x", "hostname": "other.example.com", "port": 5070},
    ]}
    assert out["srtp_key_exchange_protocol"] == "DTLS"
    assert out["audio"] == {"additional_codecs": ["PCMA", "PCMU"]}
    assert out["voicemail"] == DOC_SAMPLE["voicemail"]
    assert "restrictions" not in out
    assert list(out) == ["status", "call_icon_visibility", "call_icons", "callback_permission_status",
                         "call_hours", "sip", "srtp_key_exchange_protocol", "audio", "voicemail"]


def test_render_with_credentials_by_app():
    stored, _ = apply(sip("ENABLED", [{"hostname": "a.com"}]), app_id=APP)
    stored, _ = apply(sip(servers=[{"hostname": "b.com"}]), stored, app_id=OTHER_APP)
    out = render_calling_settings(stored, include_sip_credentials=True,
                                  sip_passwords={APP: "pw-1", OTHER_APP: "pw-2"})
    assert [(s["app_id"], s["sip_user_password"]) for s in out["sip"]["servers"]] == [
        (int(APP), "pw-1"), (int(OTHER_APP), "pw-2")]
    out = render_calling_settings(stored, include_sip_credentials=True, sip_passwords={APP: "pw-1"})
    assert "sip_user_password" not in out["sip"]["servers"][1]


def test_render_restrictions_only_when_present():
    restrictions = [{"type": "RESTRICTED_BUSINESS_INITIATED_CALLING", "reason": "x", "expiration": 1754072386}]
    stored = default_calling_settings(True)
    out = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={}, restrictions=restrictions)
    assert out["restrictions"] == {"restrictions_list": restrictions}
    out = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={}, restrictions=[])
    assert "restrictions" not in out


def test_render_does_not_alias_stored():
    stored, _ = apply(copy.deepcopy(DOC_SAMPLE))
    out = render_calling_settings(stored, include_sip_credentials=False, sip_passwords={})
    out["call_hours"]["weekly_operating_hours"].clear()
    out["audio"]["additional_codecs"].clear()
    assert stored["call_hours"]["weekly_operating_hours"]
    assert stored["audio"]["additional_codecs"]


def test_render_round_trips_through_post():
    """A GET view, minus the response-only fields, is a valid POST (pywa's get -> modify -> update)."""
    stored, _ = apply(copy.deepcopy(DOC_SAMPLE))
    view = render_calling_settings(stored, include_sip_credentials=True, sip_passwords={APP: "pw"})
    for server in view["sip"]["servers"]:
        server.pop("app_id")
        server.pop("sip_user_password")
    again, changed = apply(view, stored)
    assert again == stored
    assert changed == []


def test_pywa_parses_render_output():
    pywa_calls = pytest.importorskip("pywa.types.calls")
    for stored in (default_calling_settings(False), apply(copy.deepcopy(DOC_SAMPLE))[0]):
        view = render_calling_settings(stored, include_sip_credentials=True, sip_passwords={APP: "pw"})
        parsed = pywa_calls.BusinessPhoneNumberSettings.from_dict({"calling": view, "id": "1"})
        assert parsed.calling.status.value == stored["status"]
        # pywa's own serialisation of what it parsed is accepted back
        again, _ = apply(parsed.calling.to_dict(), stored)
        assert again["status"] == stored["status"]


# ---------------------------------------------------------------------------------------------- webhook view

def test_webhook_view_and_observed_keys():
    assert WEBHOOK_OBSERVED_KEYS == {"status", "call_icon_visibility", "callback_permission_status", "sip.status",
                                     "srtp_key_exchange_protocol"}
    stored, _ = apply(copy.deepcopy(DOC_SAMPLE))
    view = settings_webhook_view(stored)
    assert view == {
        "status": "ENABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "ENABLED",
        "call_hours": DOC_SAMPLE["call_hours"],
        "sip": {"status": "ENABLED", "servers": [{"hostname": "sip.example.com", "port": 5061}]},
        "srtp_key_exchange_protocol": "DTLS",
    }
    default_view = settings_webhook_view(default_calling_settings(False))
    assert "srtp_key_exchange_protocol" not in default_view
    assert "call_hours" not in default_view


def test_changed_keys_map_onto_webhook_keys():
    stored, _ = apply(copy.deepcopy(DOC_SAMPLE))
    _, changed = apply({"audio": {"additional_codecs": []}, "call_hours": {"status": "DISABLED"}}, stored)
    assert not set(changed) & WEBHOOK_OBSERVED_KEYS
    _, changed = apply({"sip": {"status": "DISABLED"}}, stored)
    assert set(changed) & WEBHOOK_OBSERVED_KEYS == {"sip.status"}


# ---------------------------------------------------------------------------------------------- call hours evaluation

MANAUS = apply(hours(
    [slot("MONDAY", "0400", "1020"), slot("MONDAY", "1400", "1800"), slot("FRIDAY", "0800", "1700")],
    [{"date": "2026-12-25", "start_time": "1200", "end_time": "1500"},
     {"date": "2027-01-01", "start_time": "0000", "end_time": "2359"}],
))[0]

# America/Manaus is UTC-4 all year.
MON_0400 = 1767600000        # Mon 2026-01-05 04:00:00 local (08:00Z)
MON_0359_59 = 1767599999     # Mon 2026-01-05 03:59:59 local
MON_1019_59 = 1767622799     # Mon 2026-01-05 10:19:59 local
MON_1020 = 1767622800        # Mon 2026-01-05 10:20:00 local (close_time, exclusive)
MON_1500 = 1767622800 + 4 * 3600 + 40 * 60  # Mon 2026-01-05 15:00 local: second slot
TUE_0500 = MON_0400 + 86400 + 3600  # Tue 2026-01-06 05:00 local: no slot on Tuesday
XMAS_0900 = 1798203600       # Fri 2026-12-25 09:00 local: open, before the holiday window
XMAS_1300 = 1798218000       # Fri 2026-12-25 13:00 local: inside the 1200-1500 holiday window
XMAS_1500_30 = XMAS_1300 + 2 * 3600 + 30  # Fri 15:00:30 local: end minute is inclusive
XMAS_1501 = XMAS_1300 + 2 * 3600 + 60     # Fri 15:01 local: open again
NEWYEAR_1200 = 1798819200    # Fri 2027-01-01 12:00 local: whole-day holiday


@pytest.mark.parametrize("ts,expected", [
    (MON_0400, True), (MON_0359_59, False), (MON_1019_59, True), (MON_1020, False), (MON_1500, True),
    (TUE_0500, False), (XMAS_0900, True), (XMAS_1300, False), (XMAS_1500_30, False), (XMAS_1501, True),
    (NEWYEAR_1200, False),
])
def test_within_call_hours_manaus(ts, expected):
    assert is_within_call_hours(MANAUS, ts) is expected


def test_fixed_timestamps_mean_what_the_comments_say():
    from zoneinfo import ZoneInfo
    tz = ZoneInfo("America/Manaus")
    assert dt.datetime.fromtimestamp(MON_0400, tz).strftime("%a %Y-%m-%d %H:%M") == "Mon 2026-01-05 04:00"
    assert dt.datetime.fromtimestamp(XMAS_1300, tz).strftime("%a %Y-%m-%d %H:%M") == "Fri 2026-12-25 13:00"
    assert dt.datetime.fromtimestamp(NEWYEAR_1200, tz).strftime("%a %Y-%m-%d %H:%M") == "Fri 2027-01-01 12:00"


def test_call_hours_disabled_means_always_open():
    assert is_within_call_hours(default_calling_settings(True), TUE_0500)
    stored, _ = apply({"call_hours": {"status": "DISABLED"}}, MANAUS)
    assert is_within_call_hours(stored, NEWYEAR_1200)


def test_call_hours_across_dst_new_york():
    stored, _ = apply(hours([slot(d, "0900", "1000") for d in ("MONDAY", "FRIDAY")], tz="America/New_York"))
    fri_0930_est = 1772807400  # Fri 2026-03-06 09:30 EST = 14:30Z
    mon_0930_edt = 1773063000  # Mon 2026-03-09 09:30 EDT = 13:30Z (DST began 2026-03-08)
    assert is_within_call_hours(stored, fri_0930_est)
    assert is_within_call_hours(stored, mon_0930_edt)
    # 14:30Z was inside hours on Friday (EST) but is 10:30 EDT on Monday
    assert not is_within_call_hours(stored, mon_0930_edt + 3600)


def test_call_hours_weekday_taken_in_local_time():
    # Mon 2026-03-09 22:00 EDT is already Tue 02:00Z
    stored, _ = apply(hours([slot("MONDAY", "2100", "2300")], tz="America/New_York"))
    assert is_within_call_hours(stored, 1773108000)
    stored_tue, _ = apply(hours([slot("TUESDAY", "0100", "0300")], tz="America/New_York"))
    assert not is_within_call_hours(stored_tue, 1773108000)


def test_call_hours_half_hour_offset_timezone():
    # Mon 2026-07-06 09:00 in Asia/Kolkata (UTC+5:30) = 03:30Z
    ts = 1783308600
    stored, _ = apply(hours([slot("MONDAY", "0900", "0901")], tz="Asia/Kolkata"))
    assert is_within_call_hours(stored, ts)
    assert is_within_call_hours(stored, ts + 59)
    assert not is_within_call_hours(stored, ts + 60)
    assert not is_within_call_hours(stored, ts - 1)


def test_holiday_in_business_timezone_not_utc():
    # Thu 2026-12-24 23:59:30 Manaus = Fri 2026-12-25 03:59:30Z: Christmas in UTC, not locally
    stored, _ = apply(hours([slot("THURSDAY", "2300", "2359")],
                            [{"date": "2026-12-25", "start_time": "0000", "end_time": "2359"}]))
    assert is_within_call_hours(stored, 1798171170 - 60)  # 23:58:30 local Thursday
    assert not is_within_call_hours(stored, 1798171170)     # 23:59 is close_time (exclusive)


# ---------------------------------------------------------------------------------------------- icon visibility

def test_icon_visibility_rules():
    stored, _ = apply({"status": "ENABLED"})
    assert icon_visible_to(stored, "US")
    restricted, _ = apply({"call_icons": {"restrict_to_user_countries": ["US", "BR"]}}, stored)
    assert icon_visible_to(restricted, "US")
    assert icon_visible_to(restricted, "br")
    assert not icon_visible_to(restricted, "IN")
    assert not icon_visible_to(restricted, "")
    hidden, _ = apply({"call_icon_visibility": "DISABLE_ALL"}, stored)
    assert not icon_visible_to(hidden, "US")
    cleared, _ = apply({"call_icons": {"restrict_to_user_countries": []}}, restricted)
    assert icon_visible_to(cleared, "IN")


def test_icon_hidden_when_calling_disabled():
    assert not icon_visible_to(default_calling_settings(False), "US")
