"""What a virtual WhatsApp user decides, in one place: whether and when it answers a business's call,
whether and when it replies to a call permission request, and what it says on a call.

The platform (``wacall.domain``) asks these questions and keeps Meta's rules to itself (the ring
timeout, the accept window, the permission limits, what a reject or an answer does to the call). What
the user does during a call (hears, says, keys, records, how long it waits for media) is its phone,
``wacall.users.phone``. Pure functions of the user's settings (``wacall.domain.model.User``, or any
object with the same fields): no I/O, no clock, and no import from the rest of wacall, so the domain
can ask them without depending on anything but this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Reaction:
    """The user acts ``after`` seconds: ``answer`` or ``reject`` a call; ``accept``,
    ``accept_permanent`` or ``reject`` a call permission request."""
    action: str
    after: float


def when_called(user: Any) -> Reaction | None:
    """How the user reacts when the business's call rings on its phone. None: the user does nothing by
    itself (``ignore``; or ``manual``, where someone answers through the control API), and the phone
    rings until Meta's ring timeout."""
    if user.incoming in ("answer", "reject"):
        return Reaction(user.incoming, max(0.0, user.answer_after))
    return None


def when_asked_permission(user: Any) -> Reaction | None:
    """How the user replies to a call permission request that reached its phone. None: it does not
    reply by itself (``ignore``, or ``manual`` through the control API)."""
    if user.permission_requests in ("accept", "accept_permanent", "reject"):
        return Reaction(user.permission_requests, max(0.0, user.reply_after))
    return None


def voice(user: Any | None) -> str:
    """What the user says on a call (an audio source, ``wacall.media.audio.parse_audio_spec``); a user
    who is gone says nothing."""
    return user.audio if user is not None else "silence"


__all__ = ["Reaction", "when_called", "when_asked_permission", "voice"]
