"""The numbers behind the business rules, per limits profile.

``production`` carries today's numbers from Meta's docs; ``sandbox`` the relaxed ones Meta gives
public test numbers and sandbox accounts. Every field can be overridden from the config file or
``PATCH /_wacall/limits``.
"""

from __future__ import annotations

import dataclasses
import functools
from dataclasses import dataclass

DAY = 86400.0


@dataclass
class Limits:
    profile: str = "production"
    permission_requests_per_24h: int = 1
    permission_requests_per_7d: int = 2
    temporary_permission_seconds: float = 7 * DAY
    unanswered_nudge: int = 2
    unanswered_revoke: int = 4
    bic_connected_per_24h: int = 100
    bic_initiations_per_24h: int = 10000
    concurrent_calls: int = 1000
    call_permissions_per_second: int = 5
    uic_accept_window_seconds: float = 60.0
    bic_ring_seconds: float = 60.0
    service_window_seconds: float = DAY
    min_messaging_limit_for_calling: int = 2000
    media_start_timeout_seconds: float = 20.0    # no business media this long after the accept: user hangs up
    media_silence_timeout_seconds: float = 30.0  # no RTP nor RTCP this long mid-call: user hangs up (0 = off)
    min_client_version: str = "2.24.14"
    min_payload_client_version: str = "2.25.27"

    @classmethod
    def for_profile(cls, profile: str, **overrides) -> "Limits":
        if profile == "production":
            base = cls()
        elif profile == "sandbox":
            base = cls(profile="sandbox", permission_requests_per_24h=25, permission_requests_per_7d=100,
                       unanswered_nudge=5, unanswered_revoke=10, call_permissions_per_second=100)
        else:
            raise ValueError(f"unknown limits profile {profile!r} (production or sandbox)")
        return base.updated(**overrides)

    def updated(self, **overrides) -> "Limits":
        names = {f.name: f.type for f in dataclasses.fields(self)}
        unknown = set(overrides) - set(names)
        if unknown:
            raise ValueError(f"unknown limits: {', '.join(sorted(unknown))}")
        for name, value in overrides.items():   # a wrong type here would break every rule that reads it
            kind = names[name]
            if not (isinstance(value, str) if kind == "str" else not isinstance(value, bool) and
                    isinstance(value, int if kind == "int" else (int, float)) and 0 <= value <= 1e12):
                raise ValueError(f"limit {name} must be a {'string' if kind == 'str' else 'non-negative ' + kind}")
        return dataclasses.replace(self, **overrides)

    def as_dict(self) -> dict:
        return dataclasses.asdict(self)


# Business numbers in these countries cannot place business-initiated calls (138013).
BIC_UNAVAILABLE_COUNTRIES = frozenset({"US", "CA", "EG", "VN", "NG"})


def version_tuple(version: str) -> tuple[int, ...]:
    text = str(version)
    return _known_version(text) if len(text) <= 64 else _version_tuple(text)


def _version_tuple(version: str) -> tuple[int, ...]:
    parts = []
    for piece in version.split("."):
        digits = "".join(ch for ch in piece if ch.isdigit())
        parts.append(int(digits[:12] or 0))   # int() refuses 4300+ digits
    return tuple(parts)


#: a handful of client versions, compared on every call placed: each read once (real ones are short)
_known_version = functools.lru_cache(maxsize=256)(_version_tuple)


def _version_at_least(version: str, minimum: str) -> bool:
    return version_tuple(version) >= version_tuple(minimum)


_known_at_least = functools.lru_cache(maxsize=256)(_version_at_least)


def version_at_least(version: str, minimum: str) -> bool:
    """Whether a client ``version`` is ``minimum`` or newer (both strings: the user fields and the limits are
    checked as such): a handful of pairs, asked on every call placed, each answered once; a long string (a
    client_version nobody bounded) is answered without being kept."""
    if len(version) <= 64 and len(minimum) <= 64:
        return _known_at_least(version, minimum)
    return _version_at_least(version, minimum)
