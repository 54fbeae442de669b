"""The fields people set on virtual users and business numbers, checked the same way whether they come
from the config file or the control API: JSON/TOML types as documented (a boolean is ``true``/``false``,
never ``"no"``), phone numbers as Meta reads them (``phone.phone_digits``). A wrong field raises
``ValueError`` naming it; the control API answers ``bad_field``, the config loader a clear message.
"""

from __future__ import annotations

import math
from typing import Any

from .identity import is_bsuid, is_parent_bsuid
from .phone import phone_digits

USER_CHOICES = {"incoming": {"answer", "reject", "ignore", "manual"},
                "permission_requests": {"manual", "accept", "accept_permanent", "reject", "ignore"},
                "platform": {"android", "ios", "smb_android", "smb_ios", "web", "desktop"},
                "device": {"primary", "companion"}}
USER_STRINGS = ("name", "country", "client_version")
USER_BOOLS = ("on_whatsapp", "tos_accepted")
USER_SECONDS = ("answer_after", "reply_after")
USER_IDENTITY = ("bsuid", "parent_bsuid", "username", "username_only", "contacts")   # domain.identity
USER_KEYS = {"wa_id", "audio", *USER_CHOICES, *USER_STRINGS, *USER_BOOLS, *USER_SECONDS, *USER_IDENTITY}

NUMBER_SETTABLE = {"payment_method": bool, "messaging_limit": int, "is_test_number": bool,
                   "allowed_recipients": list, "country": str}


def _type_name(kind: type) -> str:
    return {bool: "true or false", int: "an integer", str: "a string", list: "a list"}[kind]


def is_number(value: Any, *, integer: bool = False) -> bool:
    """A JSON/TOML number: an int, or also a float unless ``integer``; never a bool (``true`` is no number)."""
    return isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)


def _is(value: Any, kind: type) -> bool:
    return is_number(value, integer=True) if kind is int else isinstance(value, kind)


def phone(value: Any, name: str) -> str:
    digits = phone_digits(value)
    if digits is None:
        raise ValueError(f"{name} must be a phone number: digits (0-9) with optional +, -, (, ) and spaces, "
                         f"or an integer; got {value!r}")
    return digits


def check_user_fields(data: dict) -> dict:
    """Validate a user's fields (all optional here); returns them with ``wa_id`` as E.164 digits."""
    unknown = set(data) - USER_KEYS
    if unknown:
        raise ValueError(f"unknown user fields: {', '.join(sorted(map(str, unknown)))}")
    out = dict(data)
    if "wa_id" in out:
        out["wa_id"] = phone(out["wa_id"], "wa_id")
    for name, allowed in USER_CHOICES.items():
        if name in out and (not isinstance(out[name], str) or out[name] not in allowed):
            raise ValueError(f"{name} must be one of {', '.join(sorted(allowed))}")
    for name in USER_SECONDS:
        if name in out and (not is_number(out[name]) or not math.isfinite(out[name]) or out[name] < 0):
            raise ValueError(f"{name} must be a non-negative number of seconds")
    for name in USER_BOOLS:
        if name in out and not isinstance(out[name], bool):
            raise ValueError(f"{name} must be true or false (a JSON/TOML boolean), got {out[name]!r}")
    for name in USER_STRINGS:
        if name in out and not isinstance(out[name], str):
            raise ValueError(f"{name} must be a string")
    _check_identity(out)
    audio = out.get("audio")
    if "audio" in out and not (isinstance(audio, str) and (
            audio == "silence" or audio.split(":", 1)[0] in ("tone", "file", "tts") and ":" in audio)):
        raise ValueError('audio must be "tone:HZ", "file:PATH", "silence" or "tts:TEXT"')
    return out


def _check_identity(out: dict) -> None:
    """A user's business-scoped identity: BSUIDs in Meta's form, a username, contacts as business numbers."""
    if out.get("bsuid") is not None and not is_bsuid(out["bsuid"]):
        raise ValueError("bsuid must be a country code, a dot and 1-128 letters or digits (US.13491208655302741918)")
    if out.get("parent_bsuid") is not None and not (is_parent_bsuid(out["parent_bsuid"])
                                                    or is_bsuid(out["parent_bsuid"])):
        raise ValueError("parent_bsuid must look like US.ENT.11815799212886844830")
    if out.get("username") is not None and not (isinstance(out["username"], str) and 0 < len(out["username"]) <= 64):
        raise ValueError("username must be a non-empty string (at most 64 characters) or null")
    if "username_only" in out and not isinstance(out["username_only"], bool):
        raise ValueError("username_only must be true or false")
    if "contacts" in out:
        if not isinstance(out["contacts"], list):
            raise ValueError("contacts must be a list of business phone numbers or phone_number_ids")
        out["contacts"] = [phone(c, "contacts[]") for c in out["contacts"]]


def check_number_fields(data: dict) -> dict:
    """Validate the settable fields of a business number; returns them with recipients as digits."""
    out = dict(data)
    for key, value in data.items():
        kind = NUMBER_SETTABLE.get(key)
        if kind is None:
            raise ValueError(f"{key} is not a settable number field ({', '.join(NUMBER_SETTABLE)})")
        if not _is(value, kind):
            raise ValueError(f"{key} must be {_type_name(kind)}")
    if "messaging_limit" in out and out["messaging_limit"] < 0:
        raise ValueError("messaging_limit must not be negative")
    if "allowed_recipients" in out:
        out["allowed_recipients"] = [phone(r, "allowed_recipients[]") for r in out["allowed_recipients"]]
    return out
