"""How calls are refused and how they end, in Meta's words: the ONE table from what happened to Meta's
error code (Graph errors, ``errors[]`` of the terminate webhook) and to the SIP final response Meta's
gateway sends for a business's INVITE (calling-wire-spec §7.2).

What happened is named neutrally by whoever saw it: the domain's rules refuse with a Graph code, the
call state machine ends calls with a reason (``rejected``, ``not_answered``, ``cancelled``), the media
plane reports a :class:`MediaFact` (no ICE check, DTLS failed, no packets), the SIP gateway a failed
dialog. The table below says what Meta answers; nothing else in the code base maps one to the other.

Sources: the error codes are Meta's
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/troubleshooting and
https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes); the SIP statuses and
reason texts are those of Meta's SIP docs and captures
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/sip). Texts Meta does not show are
ours (docs/fidelity.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    from .errors import GraphError
    from .model import Call


class MediaFact:
    """What the media plane can report about a call it gives up on: facts, not Meta codes."""

    NO_SDES_KEY = "no_sdes_key"                 # SDES, but no usable a=crypto from the business
    ICE_ROLE_CONFLICT = "ice_role_conflict"     # the business's ICE agent wants to be controlled
    DTLS_FAILED = "dtls_failed"                 # the DTLS handshake failed (fingerprint, profile, alert)
    NO_ICE_CHECK = "no_ice_check"               # accepted, but no ICE connectivity check within n s
    NO_MEDIA = "no_media"                       # connected, but no media within n s of the accept
    SILENCE = "silence"                         # no RTP nor RTCP for n s mid-call
    NOT_RESTORED = "not_restored"               # after a restart, no leg at all could be had


SIP_DIALOG_FAILED = "sip_dialog_failed"         # no ACK, unreachable server, unusable SDP in a 200 OK
MEDIA_UNAVAILABLE = "media_unavailable"         # the relay has no room for a new call

# Meta's SIP reason texts, exactly (calling-wire-spec §7.2)
UNKNOWN_NUMBER = "Asset not found, invalid business phone number"
NO_PERMISSION = "No Approved Call Permission Found: No approved call permission from the recipient"
DAILY_LIMIT = "Business Initiated Connected Call Per Day Limit Hit"
SERVICE_UNAVAILABLE = "Service Unavailable"
# undocumented texts: our wording (docs/fidelity.md)
DUPLICATE_CALL = "Duplicate call: a call between this business number and the recipient is already in progress"
BAD_DIGEST = "Invalid digest response"
PAYMENT = "Business payment eligibility check failed: no valid payment method"
SDP_INVALID = "SDP Validation error"

#: in the table: the SIP reason is the Graph error's own details text
DETAILS = None


@dataclass(frozen=True)
class Outcome:
    """One row: what happened (a refusal of a new call, a normal end, a failure of a call), Meta's error
    code for it (None: no error), and the final SIP response to a business's INVITE not answered yet."""

    kind: str                   # refusal | end | failure
    cause: str
    code: int | None
    sip_status: int
    sip_reason: str | None


TABLE: tuple[Outcome, ...] = (
    # refusals of a business-initiated call (Graph ``connect`` or a SIP INVITE); the first three are
    # deliberately indistinguishable over SIP (not on WhatsApp, no ToS, no permission...)
    Outcome("refusal", "not_on_whatsapp", 138001, 403, NO_PERMISSION),
    Outcome("refusal", "no_permission", 138006, 403, NO_PERMISSION),
    Outcome("refusal", "not_an_allowed_recipient", 131030, 403, NO_PERMISSION),
    Outcome("refusal", "connected_calls_per_day", 138012, 403, DAILY_LIMIT),
    Outcome("refusal", "duplicate_call", 138003, 403, DUPLICATE_CALL),
    Outcome("refusal", "payment", 131044, 403, PAYMENT),
    Outcome("refusal", "calling_unavailable_in_country", 138013, 403, DETAILS),
    Outcome("refusal", "calling_restricted", 138014, 403, DETAILS),
    Outcome("refusal", "initiations_per_day", 138005, 403, DETAILS),
    Outcome("refusal", "calling_disabled", 138000, 403, DETAILS),
    Outcome("refusal", "concurrent_calls", 138002, 503, SERVICE_UNAVAILABLE),
    Outcome("refusal", "connection_error", 138004, 503, SERVICE_UNAVAILABLE),
    Outcome("refusal", MEDIA_UNAVAILABLE, 2, 503, SERVICE_UNAVAILABLE),
    # calls that end before the business's INVITE was answered: the state machine's end reasons
    Outcome("end", "rejected", None, 486, "User declined the call"),
    Outcome("end", "not_answered", None, 480, "Temporarily Unavailable"),
    Outcome("end", "cancelled", None, 487, "Request Terminated"),
    # calls that fail: what the media plane or the SIP gateway reports
    Outcome("failure", MediaFact.NO_SDES_KEY, 138020, 503, SERVICE_UNAVAILABLE),
    Outcome("failure", MediaFact.ICE_ROLE_CONFLICT, 138020, 503, SERVICE_UNAVAILABLE),
    Outcome("failure", MediaFact.DTLS_FAILED, 138020, 503, SERVICE_UNAVAILABLE),
    Outcome("failure", SIP_DIALOG_FAILED, 138020, 503, SERVICE_UNAVAILABLE),
    Outcome("failure", MediaFact.NO_ICE_CHECK, 138023, 503, SERVICE_UNAVAILABLE),
    Outcome("failure", MediaFact.NO_MEDIA, 138021, 408, "RTP Timeout"),
    Outcome("failure", MediaFact.SILENCE, 138021, 408, "RTP Timeout"),
    Outcome("failure", MediaFact.NOT_RESTORED, 138021, 408, "RTP Timeout"),
)

_BY_CAUSE = {row.cause: row for row in TABLE}
_REFUSAL_BY_CODE = {row.code: row for row in TABLE if row.kind == "refusal"}
_FAILURE_BY_CODE = {row.code: row for row in reversed(TABLE) if row.kind == "failure"}   # one SIP answer per code
_FALLBACK = Outcome("failure", "other", None, 503, SERVICE_UNAVAILABLE)


def failure_code(cause: str) -> int:
    """Meta's error code for a call that fails because of ``cause`` (a :class:`MediaFact` or
    ``SIP_DIALOG_FAILED``); a cause nobody named is Meta's generic relay failure, 138020."""
    row = _BY_CAUSE.get(cause)
    return row.code if row is not None and row.kind == "failure" and row.code is not None else 138020


class SipRefusal(Exception):
    """A final SIP response for an INVITE: status, reason phrase, and whether Meta adds a Warning header."""

    def __init__(self, status: int, reason: str, *, warning: bool = False) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason, self.warning = status, reason, warning


def refusal_for(error: GraphError) -> SipRefusal:
    """The SIP answer to a business-initiated INVITE that the Graph rules refuse with ``error``."""
    if error.code == 100 and SDP_INVALID in (error.details or ""):
        return SipRefusal(403, error.details.replace("\r", " ").replace("\n", " ")[:320], warning=True)
    row = _REFUSAL_BY_CODE.get(error.code, _FALLBACK)
    return SipRefusal(row.sip_status, row.sip_reason if row.sip_reason is not DETAILS else error.details)


def refusal_for_cause(cause: str) -> SipRefusal:
    """The SIP answer to an INVITE refused for ``cause`` before any Graph rule ran (``MEDIA_UNAVAILABLE``:
    the relay has no room for a new call)."""
    row = _BY_CAUSE[cause]
    return SipRefusal(row.sip_status, row.sip_reason)


def sip_final_for_ended(call: Call) -> tuple[int, str]:
    """Meta's final answer to a business INVITE whose call ended before it was answered (§7.2)."""
    row = _BY_CAUSE.get(call.end_reason or "")
    if row is None or row.kind != "end":
        code = call.errors[0].get("code") if call.errors else None
        row = _FAILURE_BY_CODE.get(code, _FALLBACK)
    return row.sip_status, row.sip_reason or SERVICE_UNAVAILABLE
