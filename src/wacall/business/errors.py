"""Meta's Graph errors as typed exceptions.

Every failed Graph request answers an envelope
``{"error": {"message", "type", "code", "error_subcode"?, "error_data"?: {"details"}, "is_transient"?,
"fbtrace_id"}}`` (https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes and the
calling error codes at https://developers.facebook.com/docs/whatsapp/cloud-api/calling/troubleshooting).
:func:`error_from` turns one into the most specific class below, so business code can write
``except CallPermissionMissing:`` instead of comparing numbers; ``err.code`` is always there too.
"""

from __future__ import annotations

from typing import Any


class GraphApiError(Exception):
    """A Graph request Meta refused: HTTP ``status``, Meta's ``code``, ``subcode``, ``message``, ``type``,
    ``details`` (``error_data.details``), ``transient`` (worth retrying unchanged) and ``fbtrace_id``."""

    def __init__(self, status: int, error: dict[str, Any]) -> None:
        self.status = status
        self.error = error
        self.code: int | None = error.get("code")
        self.subcode: int | None = error.get("error_subcode")
        self.message: str = str(error.get("message", ""))
        self.type: str = str(error.get("type", ""))
        data = error.get("error_data")
        self.details: str | None = data.get("details") if isinstance(data, dict) else None
        self.fbtrace_id: str | None = error.get("fbtrace_id")
        self.transient = (bool(error.get("is_transient")) or self.code in TRANSIENT_CODES
                          or (self.code is None and status >= 500))
        super().__init__(f"HTTP {status}: (#{self.code}) {self.message}" + (f": {self.details}" if self.details else ""))


class AuthError(GraphApiError):
    """The access token is missing, invalid, expired or lacks a permission (0, 3, 10, 190, 200-299)."""


class RateLimited(GraphApiError):
    """Too many requests or calls for now (4, 80007, 130429, 613, 138002 concurrent calls, 138005 call rate)."""


class ServiceUnavailable(GraphApiError):
    """Meta's side failed (1, 2, 131000, 131016, 138004 connection error): transient; retry later."""


class InvalidRequest(GraphApiError):
    """A parameter is missing or wrong (100, 131008, 131009), SDP included."""


class CallingNotEnabled(GraphApiError):
    """138000: calling is not enabled on the number."""


class ReceiverUncallable(GraphApiError):
    """138001: not a WhatsApp user, or a client that cannot take calls."""


class DuplicateCall(GraphApiError):
    """138003: a call with this user is already ongoing."""


class CallPermissionMissing(GraphApiError):
    """138006: no approved call permission for a business-initiated call."""


class CallLimitReached(GraphApiError):
    """138012 (connected business-initiated calls per day; ``details`` says when the next is allowed) or 138009
    (permission requests per business and user)."""


class SipNumber(GraphApiError):
    """131055: the number's calls are signalled over SIP, not through the Graph calling API."""


TRANSIENT_CODES = frozenset({1, 2, 4, 17, 341, 613, 80007, 130429, 131000, 131016, 138002, 138004, 138005})
_BY_CODE: dict[int, type[GraphApiError]] = {
    **{code: AuthError for code in (0, 3, 10, 190, *range(200, 300))},
    **{code: RateLimited for code in (4, 17, 341, 613, 80007, 130429, 138002, 138005)},
    **{code: ServiceUnavailable for code in (1, 2, 131000, 131016, 138004)},
    **{code: InvalidRequest for code in (100, 131008, 131009)},
    138000: CallingNotEnabled, 138001: ReceiverUncallable, 138003: DuplicateCall,
    138006: CallPermissionMissing, 138009: CallLimitReached, 138012: CallLimitReached, 131055: SipNumber,
}


def error_from(status: int, body: Any) -> GraphApiError:
    """The exception for a failed response: ``body`` is its parsed JSON (anything else: an envelope-less
    failure, e.g. a proxy's 502 page, becomes a :class:`ServiceUnavailable` for 5xx, else
    :class:`GraphApiError`)."""
    error = body.get("error") if isinstance(body, dict) else None
    if not isinstance(error, dict):
        error = {"message": f"HTTP {status} without Meta's error envelope", "code": None}
        return (ServiceUnavailable if status >= 500 else GraphApiError)(status, error)
    return _BY_CODE.get(error.get("code"), GraphApiError)(status, error)
