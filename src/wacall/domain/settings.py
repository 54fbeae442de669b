"""Phone-number calling settings: validation, storage form and views (``/{phone_number_id}/settings``).

Pure module: no I/O, no clock. "Today" and "now" are passed in by the caller.

Doc rules implemented (calling-wire-spec.md §3, seed 002 "Configure call settings", SIP guide):

* ``POST`` updates are partial at the top level of ``calling``: only keys present change. ``call_hours``
  is replaced wholesale (so omitting ``holiday_schedule`` deletes the stored holidays).
* Enums: ``status``/``callback_permission_status``/``call_hours.status``/``sip.status`` ENABLED|DISABLED,
  ``call_icon_visibility`` DEFAULT|DISABLE_ALL, ``srtp_key_exchange_protocol`` DTLS|SDES,
  ``day_of_week`` MONDAY..SUNDAY, ``audio.additional_codecs`` ⊆ {PCMA, PCMU} (Opus is always on).
* The nine documented call-hours messages, verbatim minus the docs' markdown backticks:
  "Timezone is invalid in call_hours", "weekly_operating_hours in call_hours cannot be empty",
  "Invalid schedule for call_hours", "More than 2 entries not allowed in weekly_operating_hours
  schedule in call_hours", "Overlapping schedule in call_hours is not allowed", "Date format in
  holiday_schedule for call_hours is invalid", "Holiday given in call_hours is a past date".
  All validation errors are ``GraphError(100, details)`` (the docs give no code).
* ``holiday_schedule`` at most 20 entries; ``start_time``/``end_time`` (the samples' names).
* ``call_icons.restrict_to_user_countries``: ISO-3166 alpha-2 codes; ``[]`` = no restriction; the
  country is the one the user's phone number is registered in.
* ``sip.servers`` entries are stored per app (the app comes from the token): an update replaces only the
  caller app's entry, ``[]`` deletes it, other apps' entries stay. ``sip.status`` DISABLED keeps servers.
  At least one server (of any app) must exist while ``sip.status`` is ENABLED. ``port`` defaults to 5061.
  ``request_uri_user_params`` keys/values at most 128 characters.
* ``srtp_key_exchange_protocol`` is absent from GET until set explicitly (effective default DTLS).
* GET adds ``app_id`` to each server, ``sip_user_password`` only with ``include_sip_credentials``, and
  ``restrictions.restrictions_list`` only when restrictions apply.
* ``account_settings_update`` observes only ``status``, ``call_icon_visibility``,
  ``callback_permission_status``, ``sip.status``, ``srtp_key_exchange_protocol``.
* ``call_hours`` DISABLED means open 24x7.

Choices made where the docs are silent or contradictory:

* Times: canonical form is the string ``"HHMM"``. Also accepted and normalised to ``"HHMM"``: ``"HH:MM"``
  (one Meta sample shows ``"04:00"``) and integers such as ``400``/``1130`` (the tables type the
  fields as Integer). ``"2400"`` is rejected; unparseable times give "Invalid schedule for call_hours".
* Weekly slots are half-open ``[open_time, close_time)``: adjacent slots (0900-1200, 1200-1500) do not
  overlap, and a call at exactly ``close_time`` is outside hours.
* A holiday entry is a *closed* window on its date, inclusive of its end minute (``0000``-``2359`` closes
  the whole day); outside the window the weekly schedule for that weekday applies. (The docs call it
  "an override to the weekly schedule" and the table names its fields ``open_time``/``close_time``;
  the reading that it lists *open* hours on that date is not implemented.)
* Holiday ``start_time`` must be < ``end_time`` ("Invalid schedule ..."); two holiday windows on the same
  date that overlap give "Overlapping schedule ..."; holidays using ``open_time``/``close_time`` are
  rejected as unexpected keys. A past date is ``date < today`` (today itself is allowed); ``today`` is
  whatever date the caller passes. More than 20 holidays: "More than 20 entries not allowed in
  holiday_schedule in call_hours" (wording invented, modelled on the weekly message).
* ``call_hours`` with status ENABLED requires ``timezone_id`` (missing gives "Timezone is invalid in
  call_hours") and non-empty ``weekly_operating_hours``. With status DISABLED both are optional but are
  validated when present. ``null`` for ``timezone_id``/``weekly_operating_hours``/``holiday_schedule``
  is treated as omitted (pywa sends ``"holiday_schedule": null`` when it has no holidays).
  ``timezone_id`` must be an IANA name known to zoneinfo/tzdata (case-sensitive).
* Empty ``holiday_schedule`` is not stored (GET omits it).
* GET and the webhook omit ``call_hours`` while it carries no ``timezone_id`` (a new number's
  ``{"status": "DISABLED"}``): pywa's ``CallHours.from_dict`` requires ``timezone_id`` whenever
  ``call_hours`` is present, so a bare object would break the reference client.
* Country codes: uppercase two letters, and a member of ``phonenumbers.SUPPORTED_REGIONS`` (regions a
  phone number can belong to: includes XK/AC/TA, excludes e.g. AQ). Duplicates are dropped.
* ``sip.servers`` with more than one entry in one request: 100 "Only one SIP server can be configured
  per app". ``hostname``: required, a DNS name (letters, digits, hyphens, dot-separated labels of 1-63
  characters, at most 253 in all; a single label such as ``localhost`` is allowed). ``port``: integer
  or digit string, 1-65535, stored as int. ``request_uri_user_params`` keys and values must be
  non-empty strings without whitespace, ``;``, ``@`` (keys also without ``=``) so the INVITE URI
  stays parseable; empty params are not shown in GET.
* SIP ENABLED with no server after the update: 100 "At least 1 SIP server must exist when SIP status is
  ENABLED". Checked only when the request carries ``sip``.
* ``sip.webhook_delivery`` (ENABLED|DISABLED, default DISABLED; Meta's call-settings page, 2026) is stored
  and echoed by GET once set; ENABLED makes SIP calls send ``call_created`` and ``terminate``.
* ``audio``: only ``additional_codecs``; ``OPUS`` in the list is an error (Opus cannot be listed);
  duplicates are dropped; ``audio: {}`` changes nothing.
* ``voicemail`` merges at its own top level (``status``, ``triggers``, ``audio`` present replace);
  ``triggers`` ⊆ {REJECT, TIMEOUT}; ``audio.default.timeout_seconds`` integer 0-30;
  ``announcement_media_id`` non-empty digit string or positive integer (kept as sent).
* Unknown keys anywhere: 100 ``Unexpected key "k" on param "calling[...]".``; wrong types: 100
  ``Param calling[...] must be ...``; missing required: 100 ``The parameter calling[...] is required.``
  Checks run in request key order and the first failure wins; nothing is applied on failure.
* ``changed`` lists keys whose stored value actually differs (setting the same value reports nothing;
  explicitly setting DTLS when it was unset does count, since GET then shows it). Names: ``status``,
  ``call_icon_visibility``, ``call_icons``, ``callback_permission_status``, ``call_hours``,
  ``sip.status``, ``sip.servers``, ``sip.webhook_delivery``, ``srtp_key_exchange_protocol``,
  ``audio``, ``voicemail``.
* ``icon_visible_to`` is also False when calling ``status`` is not ENABLED (docs: DISABLED hides it).
"""

from __future__ import annotations

import copy
import datetime as _dt
import json
import re
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo, available_timezones

import phonenumbers

from wacall.domain.errors import GraphError

__all__ = [
    "WEBHOOK_OBSERVED_KEYS",
    "DEFAULT_SIP_PORT",
    "MAX_HOLIDAYS",
    "default_calling_settings",
    "apply_calling_update",
    "render_calling_settings",
    "settings_webhook_view",
    "is_within_call_hours",
    "icon_visible_to",
    "sip_enabled",
    "sip_servers",
    "srtp_protocol",
    "additional_codecs",
    "voicemail_plan",
    "voicemail_announcement",
]

WEBHOOK_OBSERVED_KEYS = frozenset(
    {"status", "call_icon_visibility", "callback_permission_status", "sip.status", "srtp_key_exchange_protocol"}
)

DEFAULT_SIP_PORT = 5061
MAX_HOLIDAYS = 20
MAX_WEEKLY_PER_DAY = 2
MAX_USER_PARAM_LEN = 128

ON_OFF = ("ENABLED", "DISABLED")
ICON_VISIBILITY = ("DEFAULT", "DISABLE_ALL")
SRTP = ("DTLS", "SDES")
DAYS = ("MONDAY", "TUESDAY", "WEDNESDAY", "THURSDAY", "FRIDAY", "SATURDAY", "SUNDAY")
CODECS = ("PCMA", "PCMU")
VOICEMAIL_TRIGGERS = ("REJECT", "TIMEOUT")

# messages documented by Meta (call settings page), markdown stripped
MSG_INVALID_SCHEDULE = "Invalid schedule for call_hours"
MSG_PAST_HOLIDAY = "Holiday given in call_hours is a past date"
MSG_BAD_TIMEZONE = "Timezone is invalid in call_hours"
MSG_EMPTY_WEEKLY = "weekly_operating_hours in call_hours cannot be empty"
MSG_BAD_HOLIDAY_DATE = "Date format in holiday_schedule for call_hours is invalid"
MSG_TOO_MANY_PER_DAY = "More than 2 entries not allowed in weekly_operating_hours schedule in call_hours"
MSG_OVERLAP = "Overlapping schedule in call_hours is not allowed"
# messages of our own wording
MSG_TOO_MANY_HOLIDAYS = "More than 20 entries not allowed in holiday_schedule in call_hours"
MSG_SIP_NEEDS_SERVER = "At least 1 SIP server must exist when SIP status is ENABLED"
MSG_ONE_SERVER_PER_APP = "Only one SIP server can be configured per app"
MSG_OPUS = "Opus is always enabled and cannot be listed in additional_codecs; allowed values are {PCMA, PCMU}"

_TOP_KEYS = ("status", "call_icon_visibility", "call_icons", "call_hours", "callback_permission_status",
             "sip", "srtp_key_exchange_protocol", "audio", "voicemail")

_LABEL_RE = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_HHMM_RE = re.compile(r"^(\d{2}):?(\d{2})$")
_BAD_PARAM_CHARS = re.compile(r"[\s;@]")


# ---------------------------------------------------------------------------------------------- helpers

def _bad(details: str) -> GraphError:
    return GraphError(100, details)


def _got(value: Any) -> str:
    try:
        return json.dumps(value)
    except (TypeError, ValueError):
        return repr(value)


def _require_object(value: Any, path: str) -> dict:
    if not isinstance(value, dict):
        raise _bad(f"Param {path} must be a JSON object.")
    return value


def _require_list(value: Any, path: str) -> list:
    if not isinstance(value, list):
        raise _bad(f"Param {path} must be an array.")
    return value


def _check_keys(obj: dict, allowed: tuple[str, ...] | frozenset[str], path: str) -> None:
    for key in obj:
        if key not in allowed:
            raise _bad(f'Unexpected key "{key}" on param "{path}".')


def _enum(value: Any, allowed: tuple[str, ...], path: str) -> str:
    if not isinstance(value, str) or value not in allowed:
        raise _bad(f"Param {path} must be one of {{{', '.join(allowed)}}} - got {_got(value)}.")
    return value


def _required(obj: dict, key: str, path: str) -> Any:
    if obj.get(key) is None:
        raise _bad(f"The parameter {path}[{key}] is required.")
    return obj[key]


def _parse_time(value: Any) -> int | None:
    """``"HHMM"``, ``"HH:MM"`` or an int like 930 -> minutes since midnight; None when invalid."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        if not 0 <= value <= 2359:
            return None
        hours, minutes = divmod(value, 100)
    elif isinstance(value, str):
        m = _HHMM_RE.match(value)
        if not m:
            return None
        hours, minutes = int(m.group(1)), int(m.group(2))
    else:
        return None
    if hours > 23 or minutes > 59:
        return None
    return hours * 60 + minutes


def _fmt_time(minutes: int) -> str:
    return f"{minutes // 60:02d}{minutes % 60:02d}"


@lru_cache(maxsize=1)
def _timezones() -> frozenset[str]:
    return frozenset(available_timezones())


def _valid_hostname(value: Any) -> bool:
    if not isinstance(value, str) or not value or len(value) > 253:
        return False
    return all(_LABEL_RE.match(label) for label in value.split("."))


def _dedupe(items: list[str]) -> list[str]:
    out: list[str] = []
    for item in items:
        if item not in out:
            out.append(item)
    return out


def _app_id_out(app_id: Any) -> Any:
    return int(app_id) if isinstance(app_id, str) and app_id.isdigit() else app_id


# ---------------------------------------------------------------------------------------------- defaults

def default_calling_settings(enabled: bool) -> dict:
    """The stored ``calling`` object of a new number."""
    return {
        "status": "ENABLED" if enabled else "DISABLED",
        "call_icon_visibility": "DEFAULT",
        "callback_permission_status": "DISABLED",
        "call_hours": {"status": "DISABLED"},
        "sip": {"status": "DISABLED", "servers": []},
        "audio": {"additional_codecs": []},
    }


# ---------------------------------------------------------------------------------------------- validators

def _validate_call_icons(value: Any) -> dict:
    path = "calling[call_icons]"
    obj = _require_object(value, path)
    _check_keys(obj, ("restrict_to_user_countries",), path)
    raw = obj.get("restrict_to_user_countries")
    if raw is None:
        return {"restrict_to_user_countries": []}
    lpath = f"{path}[restrict_to_user_countries]"
    countries = _require_list(raw, lpath)
    for i, code in enumerate(countries):
        if not (isinstance(code, str) and len(code) == 2 and code.isascii() and code.isupper()
                and code in phonenumbers.SUPPORTED_REGIONS):
            raise _bad(f"Param {lpath}[{i}] must be a valid ISO 3166-1 alpha-2 country code - got {_got(code)}.")
    return {"restrict_to_user_countries": _dedupe(countries)}


def _validate_weekly(entries: list, path: str) -> list[dict]:
    out: list[dict] = []
    slots: dict[str, list[tuple[int, int]]] = {}
    for i, raw in enumerate(entries):
        epath = f"{path}[{i}]"
        entry = _require_object(raw, epath)
        _check_keys(entry, ("day_of_week", "open_time", "close_time"), epath)
        day = _enum(_required(entry, "day_of_week", epath), DAYS, f"{epath}[day_of_week]")
        open_m = _parse_time(_required(entry, "open_time", epath))
        close_m = _parse_time(_required(entry, "close_time", epath))
        if open_m is None or close_m is None or open_m >= close_m:
            raise _bad(MSG_INVALID_SCHEDULE)
        slots.setdefault(day, []).append((open_m, close_m))
        out.append({"day_of_week": day, "open_time": _fmt_time(open_m), "close_time": _fmt_time(close_m)})
    for windows in slots.values():
        if len(windows) > MAX_WEEKLY_PER_DAY:
            raise _bad(MSG_TOO_MANY_PER_DAY)
    for windows in slots.values():
        _check_no_overlap(windows, inclusive_end=False)
    return out


def _check_no_overlap(windows: list[tuple[int, int]], *, inclusive_end: bool) -> None:
    ordered = sorted(windows)
    for (_, prev_end), (next_start, _) in zip(ordered, ordered[1:]):
        if next_start < prev_end or (inclusive_end and next_start == prev_end):
            raise _bad(MSG_OVERLAP)


def _validate_holidays(entries: list, path: str, today: _dt.date) -> list[dict]:
    if len(entries) > MAX_HOLIDAYS:
        raise _bad(MSG_TOO_MANY_HOLIDAYS)
    out: list[dict] = []
    windows: dict[str, list[tuple[int, int]]] = {}
    for i, raw in enumerate(entries):
        epath = f"{path}[{i}]"
        entry = _require_object(raw, epath)
        _check_keys(entry, ("date", "start_time", "end_time"), epath)
        date_s = _required(entry, "date", epath)
        if not isinstance(date_s, str) or not _DATE_RE.match(date_s):
            raise _bad(MSG_BAD_HOLIDAY_DATE)
        try:
            date = _dt.date.fromisoformat(date_s)
        except ValueError:
            raise _bad(MSG_BAD_HOLIDAY_DATE) from None
        if date < today:
            raise _bad(MSG_PAST_HOLIDAY)
        start_m = _parse_time(_required(entry, "start_time", epath))
        end_m = _parse_time(_required(entry, "end_time", epath))
        if start_m is None or end_m is None or start_m >= end_m:
            raise _bad(MSG_INVALID_SCHEDULE)
        windows.setdefault(date_s, []).append((start_m, end_m))
        out.append({"date": date_s, "start_time": _fmt_time(start_m), "end_time": _fmt_time(end_m)})
    for day_windows in windows.values():
        _check_no_overlap(day_windows, inclusive_end=True)
    return out


def _validate_call_hours(value: Any, today: _dt.date) -> dict:
    path = "calling[call_hours]"
    obj = _require_object(value, path)
    _check_keys(obj, ("status", "timezone_id", "weekly_operating_hours", "holiday_schedule"), path)
    status = _enum(_required(obj, "status", path), ON_OFF, f"{path}[status]")
    enabled = status == "ENABLED"
    out: dict[str, Any] = {"status": status}

    tz = obj.get("timezone_id")
    if tz is not None or enabled:
        if not isinstance(tz, str) or tz not in _timezones():
            raise _bad(MSG_BAD_TIMEZONE)
        out["timezone_id"] = tz

    weekly = obj.get("weekly_operating_hours")
    if weekly is not None or enabled:
        wpath = f"{path}[weekly_operating_hours]"
        if weekly is None:
            raise _bad(MSG_EMPTY_WEEKLY)
        weekly = _require_list(weekly, wpath)
        if enabled and not weekly:
            raise _bad(MSG_EMPTY_WEEKLY)
        out["weekly_operating_hours"] = _validate_weekly(weekly, wpath)

    holidays = obj.get("holiday_schedule")
    if holidays is not None:
        hpath = f"{path}[holiday_schedule]"
        validated = _validate_holidays(_require_list(holidays, hpath), hpath, today)
        if validated:
            out["holiday_schedule"] = validated
    return out


def _validate_server(raw: Any, path: str, app_id: str) -> dict:
    obj = _require_object(raw, path)
    _check_keys(obj, ("hostname", "port", "request_uri_user_params"), path)
    hostname = _required(obj, "hostname", path)
    if not _valid_hostname(hostname):
        raise _bad(f"Param {path}[hostname] must be a valid hostname - got {_got(hostname)}.")
    port_raw = obj.get("port")
    if port_raw is None:
        port = DEFAULT_SIP_PORT
    else:
        if isinstance(port_raw, bool) or not isinstance(port_raw, (int, str)) or (
                isinstance(port_raw, str) and not (port_raw.isascii() and port_raw.isdigit())):
            raise _bad(f"Param {path}[port] must be an integer between 1 and 65535 - got {_got(port_raw)}.")
        port = int(port_raw)
        if not 1 <= port <= 65535:
            raise _bad(f"Param {path}[port] must be an integer between 1 and 65535 - got {_got(port_raw)}.")
    params: dict[str, str] = {}
    params_raw = obj.get("request_uri_user_params")
    if params_raw is not None:
        ppath = f"{path}[request_uri_user_params]"
        _require_object(params_raw, ppath)
        for key, val in params_raw.items():
            if not key or len(key) > MAX_USER_PARAM_LEN or _BAD_PARAM_CHARS.search(key) or "=" in key:
                raise _bad(f"Param {ppath} has an invalid key {_got(key)}: keys must be 1 to "
                           f"{MAX_USER_PARAM_LEN} characters without whitespace, ';', '@' or '='.")
            if not isinstance(val, str) or not val or len(val) > MAX_USER_PARAM_LEN or _BAD_PARAM_CHARS.search(val):
                raise _bad(f"Param {ppath}[{key}] must be a string of 1 to {MAX_USER_PARAM_LEN} characters "
                           f"without whitespace, ';' or '@' - got {_got(val)}.")
            params[key] = val
    return {"app_id": app_id, "hostname": hostname, "port": port, "request_uri_user_params": params}


def _validate_sip(value: Any, current: dict, app_id: str) -> dict:
    path = "calling[sip]"
    obj = _require_object(value, path)
    _check_keys(obj, ("status", "servers", "webhook_delivery"), path)
    new = copy.deepcopy(current)
    new.setdefault("status", "DISABLED")
    new.setdefault("servers", [])
    if "status" in obj:
        new["status"] = _enum(obj["status"], ON_OFF, f"{path}[status]")
    if "webhook_delivery" in obj:
        new["webhook_delivery"] = _enum(obj["webhook_delivery"], ON_OFF, f"{path}[webhook_delivery]")
    if "servers" in obj:
        spath = f"{path}[servers]"
        servers = _require_list(obj["servers"], spath)
        mine = [_validate_server(s, f"{spath}[{i}]", app_id) for i, s in enumerate(servers)]
        if len(mine) > 1:
            raise _bad(MSG_ONE_SERVER_PER_APP)
        others = new["servers"]
        idx = next((i for i, s in enumerate(others) if str(s.get("app_id")) == app_id), None)
        kept = [s for s in others if str(s.get("app_id")) != app_id]
        if mine:
            if idx is None:
                kept.append(mine[0])
            else:
                kept.insert(min(idx, len(kept)), mine[0])
        new["servers"] = kept
    if new["status"] == "ENABLED" and not new["servers"]:
        raise _bad(MSG_SIP_NEEDS_SERVER)
    return new


def _validate_audio(value: Any, current: dict) -> dict:
    path = "calling[audio]"
    obj = _require_object(value, path)
    _check_keys(obj, ("additional_codecs",), path)
    new = copy.deepcopy(current)
    new.setdefault("additional_codecs", [])
    if obj.get("additional_codecs") is not None:
        cpath = f"{path}[additional_codecs]"
        codecs = _require_list(obj["additional_codecs"], cpath)
        for i, codec in enumerate(codecs):
            if isinstance(codec, str) and codec.upper() == "OPUS":
                raise _bad(MSG_OPUS)
            _enum(codec, CODECS, f"{cpath}[{i}]")
        new["additional_codecs"] = _dedupe(codecs)
    return new


def _validate_voicemail(value: Any, current: dict | None) -> dict:
    path = "calling[voicemail]"
    obj = _require_object(value, path)
    _check_keys(obj, ("status", "triggers", "audio"), path)
    new = copy.deepcopy(current) if current else {}
    if "status" in obj:
        new["status"] = _enum(obj["status"], ON_OFF, f"{path}[status]")
    if "triggers" in obj:
        tpath = f"{path}[triggers]"
        triggers = _require_list(obj["triggers"], tpath)
        for i, trig in enumerate(triggers):
            _enum(trig, VOICEMAIL_TRIGGERS, f"{tpath}[{i}]")
        new["triggers"] = _dedupe(triggers)
    if "audio" in obj:
        apath = f"{path}[audio]"
        audio = _require_object(obj["audio"], apath)
        _check_keys(audio, ("default",), apath)
        stored_audio: dict[str, Any] = {}
        if audio.get("default") is not None:
            dpath = f"{apath}[default]"
            default = _require_object(audio["default"], dpath)
            _check_keys(default, ("announcement_media_id", "timeout_seconds"), dpath)
            stored_default: dict[str, Any] = {}
            if default.get("announcement_media_id") is not None:
                media = default["announcement_media_id"]
                ok = (isinstance(media, int) and not isinstance(media, bool) and media > 0) or (
                    isinstance(media, str) and media.isascii() and media.isdigit())
                if not ok:
                    raise _bad(f"Param {dpath}[announcement_media_id] must be a media ID - got {_got(media)}.")
                stored_default["announcement_media_id"] = media
            if default.get("timeout_seconds") is not None:
                secs = default["timeout_seconds"]
                if isinstance(secs, bool) or not isinstance(secs, int) or not 0 <= secs <= 30:
                    raise _bad(f"Param {dpath}[timeout_seconds] must be an integer between 0 and 30 - "
                               f"got {_got(secs)}.")
                stored_default["timeout_seconds"] = secs
            stored_audio["default"] = stored_default
        new["audio"] = stored_audio
    new.setdefault("status", "DISABLED")
    if new["status"] == "ENABLED":      # what Meta requires of an enabled voicemail, on the merged result
        if "triggers" not in new:
            raise _bad(f"The parameter {path}[triggers] is required.")
        if not new["triggers"]:
            raise _bad(f"Param {path}[triggers] must contain at least one of {{REJECT, TIMEOUT}}.")
        default = (new.get("audio") or {}).get("default")
        if default is None:
            raise _bad(f"The parameter {path}[audio][default] is required.")
        if "announcement_media_id" not in default:
            raise _bad(f"The parameter {path}[audio][default][announcement_media_id] is required.")
        if "TIMEOUT" in new["triggers"] and "timeout_seconds" not in default:
            raise _bad(f"The parameter {path}[audio][default][timeout_seconds] is required.")
    return new


# ---------------------------------------------------------------------------------------------- update

def apply_calling_update(current: dict, update: Any, *, app_id: str,
                         today: _dt.date) -> tuple[dict, list[str]]:
    """Validate the ``calling`` object of a settings POST; return ``(new_stored, changed_keys)``.

    ``current`` is not modified. ``app_id`` (from the token) owns the ``sip.servers`` entry this request
    writes. ``today`` decides whether a holiday is in the past. Raises :class:`GraphError` (code 100).
    """
    obj = _require_object(update, "calling")
    _check_keys(obj, _TOP_KEYS, "calling")
    app_id = str(app_id)
    new = copy.deepcopy(current) if current else {}
    for key, value in default_calling_settings(False).items():
        new.setdefault(key, value)

    for key, value in obj.items():
        if key == "status":
            new["status"] = _enum(value, ON_OFF, "calling[status]")
        elif key == "call_icon_visibility":
            new["call_icon_visibility"] = _enum(value, ICON_VISIBILITY, "calling[call_icon_visibility]")
        elif key == "callback_permission_status":
            new["callback_permission_status"] = _enum(value, ON_OFF, "calling[callback_permission_status]")
        elif key == "srtp_key_exchange_protocol":
            new["srtp_key_exchange_protocol"] = _enum(value, SRTP, "calling[srtp_key_exchange_protocol]")
        elif key == "call_icons":
            new["call_icons"] = _validate_call_icons(value)
        elif key == "call_hours":
            new["call_hours"] = _validate_call_hours(value, today)
        elif key == "sip":
            new["sip"] = _validate_sip(value, new["sip"], app_id)
        elif key == "audio":
            new["audio"] = _validate_audio(value, new["audio"])
        elif key == "voicemail":
            new["voicemail"] = _validate_voicemail(value, new.get("voicemail"))

    old = current or {}
    changed: list[str] = []
    for key in ("status", "call_icon_visibility", "call_icons", "callback_permission_status", "call_hours"):
        if new.get(key) != old.get(key):
            changed.append(key)
    old_sip, new_sip = old.get("sip") or {}, new.get("sip") or {}
    for sub in ("status", "servers", "webhook_delivery"):
        if new_sip.get(sub) != old_sip.get(sub):
            changed.append(f"sip.{sub}")
    for key in ("srtp_key_exchange_protocol", "audio", "voicemail"):
        if new.get(key) != old.get(key):
            changed.append(key)
    return new, changed


# ---------------------------------------------------------------------------------------------- views

def _call_hours_view(stored: dict) -> dict | None:
    hours = stored.get("call_hours")
    if not hours or "timezone_id" not in hours:
        return None
    return copy.deepcopy(hours)


def render_calling_settings(stored: dict, *, include_sip_credentials: bool, sip_passwords: dict[str, str],
                            restrictions: list[dict] | None = None) -> dict:
    """The ``calling`` object of ``GET /{phone_number_id}/settings``."""
    out: dict[str, Any] = {
        "status": stored.get("status", "DISABLED"),
        "call_icon_visibility": stored.get("call_icon_visibility", "DEFAULT"),
    }
    if "call_icons" in stored:
        out["call_icons"] = copy.deepcopy(stored["call_icons"])
    out["callback_permission_status"] = stored.get("callback_permission_status", "DISABLED")
    hours = _call_hours_view(stored)
    if hours is not None:
        out["call_hours"] = hours
    sip = stored.get("sip") or {}
    servers = []
    for server in sip.get("servers", []):
        item: dict[str, Any] = {"app_id": _app_id_out(server.get("app_id")), "hostname": server["hostname"],
                                "port": server.get("port", DEFAULT_SIP_PORT)}
        if server.get("request_uri_user_params"):
            item["request_uri_user_params"] = dict(server["request_uri_user_params"])
        if include_sip_credentials:
            password = sip_passwords.get(str(server.get("app_id")))
            if password is not None:
                item["sip_user_password"] = password
        servers.append(item)
    sip_out: dict[str, Any] = {"status": sip.get("status", "DISABLED"), "servers": servers}
    if "webhook_delivery" in sip:
        sip_out["webhook_delivery"] = sip["webhook_delivery"]
    out["sip"] = sip_out
    if "srtp_key_exchange_protocol" in stored:
        out["srtp_key_exchange_protocol"] = stored["srtp_key_exchange_protocol"]
    out["audio"] = {"additional_codecs": list((stored.get("audio") or {}).get("additional_codecs", []))}
    if "voicemail" in stored:
        out["voicemail"] = copy.deepcopy(stored["voicemail"])
    if restrictions:
        out["restrictions"] = {"restrictions_list": copy.deepcopy(restrictions)}
    return out


def settings_webhook_view(stored: dict) -> dict:
    """The ``calling`` object inside an ``account_settings_update`` webhook."""
    out: dict[str, Any] = {
        "status": stored.get("status", "DISABLED"),
        "call_icon_visibility": stored.get("call_icon_visibility", "DEFAULT"),
        "callback_permission_status": stored.get("callback_permission_status", "DISABLED"),
    }
    hours = _call_hours_view(stored)
    if hours is not None:
        out["call_hours"] = hours
    sip = stored.get("sip") or {}
    out["sip"] = {"status": sip.get("status", "DISABLED"),
                  "servers": [{"hostname": s["hostname"], "port": s.get("port", DEFAULT_SIP_PORT)}
                              for s in sip.get("servers", [])]}
    if "srtp_key_exchange_protocol" in stored:
        out["srtp_key_exchange_protocol"] = stored["srtp_key_exchange_protocol"]
    return out


# ---------------------------------------------------------------------------------------------- queries

def is_within_call_hours(stored: dict, at_unix: float) -> bool:
    """Whether a user-initiated call at ``at_unix`` falls inside the business's call hours."""
    hours = stored.get("call_hours") or {}
    if hours.get("status") != "ENABLED":
        return True
    local = _dt.datetime.fromtimestamp(at_unix, ZoneInfo(hours["timezone_id"]))
    minute = local.hour * 60 + local.minute
    date_s = local.date().isoformat()
    for holiday in hours.get("holiday_schedule", []):
        if holiday["date"] == date_s:
            start, end = _parse_time(holiday["start_time"]), _parse_time(holiday["end_time"])
            if start is not None and end is not None and start <= minute <= end:
                return False
    day = DAYS[local.weekday()]
    for slot in hours.get("weekly_operating_hours", []):
        if slot["day_of_week"] == day:
            open_m, close_m = _parse_time(slot["open_time"]), _parse_time(slot["close_time"])
            if open_m is not None and close_m is not None and open_m <= minute < close_m:
                return True
    return False


def icon_visible_to(stored: dict, user_country: str) -> bool:
    """Whether the chat-bar/info-page call icon shows for a user whose number is registered in ``user_country``."""
    if stored.get("status") != "ENABLED":
        return False
    if stored.get("call_icon_visibility") == "DISABLE_ALL":
        return False
    countries = (stored.get("call_icons") or {}).get("restrict_to_user_countries") or []
    if countries and (user_country or "").upper() not in countries:
        return False
    return True


def sip_enabled(stored: dict) -> bool:
    return (stored.get("sip") or {}).get("status") == "ENABLED"


def sip_webhook_delivery(stored: dict) -> bool:
    """Whether SIP calls of the number send ``call_created``/``terminate`` (``sip.webhook_delivery``, default
    DISABLED)."""
    return (stored.get("sip") or {}).get("webhook_delivery") == "ENABLED"


def sip_servers(stored: dict) -> list[dict]:
    """Stored SIP servers of every app: ``{"app_id", "hostname", "port", "request_uri_user_params"}``."""
    return copy.deepcopy((stored.get("sip") or {}).get("servers", []))


def srtp_protocol(stored: dict) -> str:
    """The effective SRTP key exchange protocol (DTLS unless set to SDES)."""
    return stored.get("srtp_key_exchange_protocol") or "DTLS"


def additional_codecs(stored: dict) -> list[str]:
    """G.711 codecs offered besides Opus (``[]`` = Opus only)."""
    return list((stored.get("audio") or {}).get("additional_codecs") or [])


def voicemail_plan(stored: dict, trigger: str) -> dict | None:
    """What the platform does when a user's call meets ``trigger`` (``REJECT`` or ``TIMEOUT``):
    ``{"announcement_media_id", "timeout_seconds"}`` when voicemail is enabled for that trigger on a number
    with calling enabled (Meta: otherwise the setting is ignored), else None."""
    if stored.get("status") != "ENABLED":
        return None
    voicemail = stored.get("voicemail") or {}
    if voicemail.get("status") != "ENABLED" or trigger not in (voicemail.get("triggers") or []):
        return None
    default = (voicemail.get("audio") or {}).get("default") or {}
    if default.get("announcement_media_id") is None:
        return None
    return {"announcement_media_id": str(default["announcement_media_id"]),
            "timeout_seconds": int(default.get("timeout_seconds") or 0)}


def voicemail_announcement(stored: dict) -> str | None:
    """The announcement media id the voicemail setting names (enabled or not), as a string."""
    default = (((stored.get("voicemail") or {}).get("audio") or {}).get("default") or {})
    media = default.get("announcement_media_id")
    return None if media is None else str(media)
