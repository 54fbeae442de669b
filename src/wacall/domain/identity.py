"""Business-scoped user IDs (BSUIDs), parent BSUIDs, usernames, and when a business may see a user's
phone number (Meta's "Business-scoped user IDs" page,
https://developers.facebook.com/documentation/business-messaging/whatsapp/business-scoped-user-ids/).

- A BSUID is an ISO 3166 alpha-2 country code, a dot and up to 128 alphanumerics (``US.13491208655302741918``);
  a parent BSUID has ``ENT`` after the country (``US.ENT.11815799212886844830``). wacall models one business
  portfolio, so a user's BSUID is derived from the wa_id (stable across restarts, new with a new number)
  unless the user's record names one.
- The phone number (``wa_id``, ``from``, ``to``, ``recipient_id``) is shown to a business unless the user has
  adopted a username ("username only"); then only if, within 30 days, the two exchanged a message or call by
  phone number, or either party has the other in contacts.

Rules only, no I/O: the webhooks layer asks :func:`identity` what to show.
"""

from __future__ import annotations

import functools
import hashlib
import re
from dataclasses import dataclass, replace
from typing import Any

from .errors import GraphError
from .limits import DAY
from .model import PhoneNumber, User
from .state import ControlError, PlatformState, new_id

BSUID_RE = re.compile(r"[A-Z]{2}\.[A-Za-z0-9]{1,128}")
PARENT_BSUID_RE = re.compile(r"[A-Z]{2}\.ENT\.[A-Za-z0-9]{1,128}")
PHONE_RULE_SECONDS = 30 * DAY     # "within 30 days" of a message or call exchanged by phone number


def is_bsuid(value: Any) -> bool:
    return isinstance(value, str) and BSUID_RE.fullmatch(value) is not None


def is_parent_bsuid(value: Any) -> bool:
    return isinstance(value, str) and PARENT_BSUID_RE.fullmatch(value) is not None


@functools.lru_cache(maxsize=65536)       # the webhooks ask for the same users' IDs over and over
def _digits(seed: str) -> str:
    return str(int(hashlib.sha256(seed.encode()).hexdigest()[:16], 16))


def _country(user: User | None) -> str:
    country = (user.country if user else "") or "ZZ"
    return country if re.fullmatch(r"[A-Z]{2}", country) else "ZZ"


def user_id(user: User | None, wa_id: str) -> str:
    """The user's BSUID: the one its record names, else derived from its number."""
    if user is not None and user.bsuid:
        return user.bsuid
    return f"{_country(user)}.{_digits('bsuid:' + wa_id)}"


def parent_user_id(user: User | None, wa_id: str) -> str:
    if user is not None and user.parent_bsuid:
        return user.parent_bsuid
    return f"{_country(user)}.ENT.{_digits('parent-bsuid:' + wa_id)}"


@dataclass(frozen=True)
class Identity:
    """What a business is shown of one user."""
    wa_id: str | None                  # None: the phone number is withheld
    user_id: str
    parent_user_id: str | None         # only when the business has parent BSUIDs enabled
    username: str | None
    name: str

    def contact_ids(self) -> dict:
        """The ids of a ``contacts[]`` entry, in Meta's order: ``wa_id`` (when shown), ``user_id``,
        ``parent_user_id`` (when enabled)."""
        out: dict = {} if self.wa_id is None else {"wa_id": self.wa_id}
        out["user_id"] = self.user_id
        if self.parent_user_id is not None:
            out["parent_user_id"] = self.parent_user_id
        return out


def parents_enabled(state: PlatformState, number: PhoneNumber) -> bool:
    waba = state.wabas.get(number.waba_id)
    return bool(waba and waba.parent_bsuids)


def phone_visible(state: PlatformState, number: PhoneNumber, user: User | None) -> bool:
    """Meta's phone-number rules: always for a user without a username; for a username-only user only after a
    message or call exchanged by phone number within 30 days, or when either has the other in contacts."""
    if user is None or not user.username_only:
        return True
    if number.id in user.contacts or number.display_phone_number in user.contacts:
        return True
    pair = state.pairs.get(f"{number.id}:{user.wa_id}")
    seen = pair.phone_seen_at if pair is not None else None
    return seen is not None and state.now() - seen < PHONE_RULE_SECONDS


def identity(state: PlatformState, number: PhoneNumber, wa_id: str) -> Identity:
    user = state.users.get(wa_id)
    return Identity(wa_id=wa_id if phone_visible(state, number, user) else None,
                    user_id=user_id(user, wa_id),
                    parent_user_id=parent_user_id(user, wa_id) if parents_enabled(state, number) else None,
                    username=user.username if user else None,
                    name=user.name if user else wa_id)


def phone_used(state: PlatformState, number: PhoneNumber, wa_id: str, now: float | None = None) -> None:
    """A message or call was exchanged with ``wa_id`` by phone number (at ``now``, the clock's time unless the
    caller read it already): the 30 days start again."""
    pair = state.pair(number.id, wa_id)
    pair.phone_seen_at = state.now() if now is None else now
    state.put(pair)


def user_by_recipient(state: PlatformState, number: PhoneNumber, recipient: str) -> User | None:
    """The user a business addresses by BSUID (or parent BSUID, when the business has them enabled)."""
    parent = is_parent_bsuid(recipient)
    if parent and not parents_enabled(state, number):
        return None
    for user in state.users.values():
        if user.changed_to is None and recipient == (parent_user_id(user, user.wa_id) if parent
                                                     else user_id(user, user.wa_id)):
            return user
    return None


def recipient_wa_id(state: PlatformState, number: PhoneNumber, recipient: Any, param: str = "recipient"):
    """The wa_id behind a ``recipient`` (BSUID or parent BSUID) value; None for a well-formed ID that names no
    user. Raises Meta's 100 for a value that is no BSUID."""
    if not (is_bsuid(recipient) or is_parent_bsuid(recipient)):
        raise GraphError(100, f"Param {param} must be a business-scoped user ID (BSUID) or parent BSUID.")
    user = user_by_recipient(state, number, recipient)
    return None if user is None else user.wa_id


# -- a user changes number: a new wa_id and a new BSUID ------------------------------------------------
@dataclass
class UserChangedUserId:
    """The ``user_changed_user_id`` system message to one business number."""
    phone_number_id: str
    wa_id: str             # the old number
    new_wa_id: str
    message_id: str
    timestamp: float


def user_changes_number(state: PlatformState, wa_id: str, new_wa_id: str, *, country: str) -> User:
    """The user moves to ``new_wa_id``: a new user record with a new BSUID (and parent BSUID), the old one
    gone from WhatsApp; every business the user has talked to gets a ``user_changed_user_id`` message."""
    old = state.user(wa_id)
    if old.changed_to is not None:
        raise ControlError("number_changed", f"user {wa_id} already moved to {old.changed_to}")
    if new_wa_id == wa_id or new_wa_id in state.users:
        raise ControlError("exists", f"user {new_wa_id} already exists", 409)
    new = replace(old, wa_id=new_wa_id, country=country, bsuid=None, parent_bsuid=None, contacts=list(old.contacts))
    state.put(new)
    old.changed_to, old.on_whatsapp = new_wa_id, False
    state.put(old)
    now = state.now()
    talked_to = sorted({pair.phone_number_id for pair in state.pairs.values() if pair.wa_id == wa_id})
    for phone_number_id in talked_to:
        if phone_number_id in state.numbers:
            state.emit(UserChangedUserId(phone_number_id, wa_id, new_wa_id, new_id("wamid"), now))
    return new


def send_contact(state: PlatformState, number: PhoneNumber, input_: str, wa_id: str) -> dict:
    """The ``contacts[]`` entry of a send (``POST /messages``) response."""
    return {"input": input_, **identity(state, number, wa_id).contact_ids()}
