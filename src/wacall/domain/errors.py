"""Meta's Graph error codes, as the calling docs list them, and the exception the domain raises.

The wire layer turns a :class:`GraphError` into Meta's envelope::

    {"error": {"message": "(#138006) No approved call permission found", "type": "OAuthException",
               "code": 138006, "error_data": {"messaging_product": "whatsapp", "details": "..."},
               "fbtrace_id": "..."}}
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class ErrorCode:
    code: int
    http_status: int
    title: str
    details: str
    type: str = "OAuthException"


# code -> (HTTP status, title, default details). Titles and details follow Meta's calling
# troubleshooting table (seed 002) and the general Graph error-codes page.
CATALOGUE: dict[int, ErrorCode] = {
    e.code: e
    for e in [
        ErrorCode(1, 500, "An unknown error occurred", "An unknown error occurred"),
        ErrorCode(2, 503, "Service temporarily unavailable", "Service temporarily unavailable"),
        ErrorCode(4, 429, "Application request limit reached", "Application request limit reached"),
        ErrorCode(10, 403, "Application does not have permission for this action",
                  "Application does not have permission for this action"),
        ErrorCode(100, 400, "Invalid parameter", "Invalid parameter"),
        ErrorCode(104, 400, "An access token is required to request this resource.",
                  "An access token is required to request this resource."),
        ErrorCode(190, 401, "Invalid OAuth access token - Cannot parse access token",
                  "Invalid OAuth access token - Cannot parse access token"),
        ErrorCode(200, 403, "Permissions error", "Permissions error"),
        ErrorCode(613, 429, "Fetch Call Permission For Consumer Phone Number API Limit Hit",
                  "Limit reached for requests to the fetch call permission status API."),
        ErrorCode(2200, 400, "Callback verification failed", "Callback verification failed"),
        ErrorCode(131008, 400, "Required parameter is missing", "Required parameter is missing"),
        ErrorCode(131009, 400, "Parameter value is not valid", "Parameter value is not valid"),
        ErrorCode(131026, 400, "Message undeliverable", "Message Undeliverable."),
        ErrorCode(131030, 400, "Recipient phone number not in allowed list",
                  "Recipient phone number is not in allowed list."),
        ErrorCode(131044, 400, "Payment method not attached",
                  "No valid payment method is attached to the WhatsApp Business Account."),
        ErrorCode(131047, 400, "Re-engagement message",
                  "Message failed to send because more than 24 hours have passed since the customer "
                  "last replied to this number."),
        ErrorCode(131053, 400, "Media upload error", "Unable to upload the media used in the message."),
        ErrorCode(2635, 400, "Deprecated API version", "You are calling a deprecated version of the Graph API."),
        ErrorCode(131055, 400, "Method not allowed",
                  "Method not allowed. Graph API calls are not allowed for SIP enabled numbers"),
        ErrorCode(138000, 401, "Calling not enabled", "Calling APIs are not enabled for this phone number"),
        ErrorCode(138001, 400, "Receiver Uncallable", "Receiver is unable to receive calls"),
        ErrorCode(138002, 429, "Concurrent Calls limit",
                  "Limit reached for maximum concurrent calls (1000) for the given number"),
        ErrorCode(138003, 400, "Duplicate call", "A call is already ongoing with the receiver"),
        ErrorCode(138004, 500, "Connection error", "Error while connecting the call"),
        ErrorCode(138005, 429, "Call rate limit exceeded",
                  "Limit reached for maximum calls that can be initiated by the business phone number"),
        ErrorCode(138006, 401, "No approved call permission found",
                  "No approved call permission from the recipient"),
        ErrorCode(138007, 500, "Connect Timeout error", "Call was unable to connect due to a timeout"),
        ErrorCode(138009, 400, "Call Permission Request Limit Hit",
                  "Limit reached for call permission request sends for the given business and consumer pair"),
        ErrorCode(138012, 400, "Business Initiated Calls Limit Hit",
                  "Limit reached for maximum business initiated calls allowed in 24 hours."),
        ErrorCode(138013, 400, "Business-initiated calling is not available",
                  "Business-initiated calling is not available for this business account phone number."),
        ErrorCode(138014, 400, "Calling is temporarily disabled",
                  "Calling APIs for this WhatsApp Business Number have been temporarily disabled for "
                  "having low quality."),
        ErrorCode(138015, 400, "Calling cannot be enabled",
                  "Calling APIs cannot be enabled for this phone number."),
        ErrorCode(138017, 400,
                  "Call permission request can't be sent because a permanent permission already exists.",
                  "Call permission request cannot be sent because a permanent permission has already "
                  "been approved by the user for this business account phone number."),
        ErrorCode(138018, 400,
                  "WhatsApp Business calling cannot be enabled because technical pre-requisites are not met.",
                  "Configure SIP or ensure there is at-least one app subscribed to the WhatsApp Business "
                  "Account that also has subscription to the calls webhook field."),
        ErrorCode(138019, 400, "Call setup failed", "The WhatsApp client failed to set up the call."),
        ErrorCode(138020, 400, "Relay connection failed",
                  "The WhatsApp client failed to establish a connection with the relay server."),
        ErrorCode(138021, 400, "Media receive timeout",
                  "The WhatsApp client terminated the call due to not receiving any media for a long time."),
        ErrorCode(138022, 400, "Media transmit timeout",
                  "The WhatsApp client terminated the call due to not transmitting any media for a long time."),
        ErrorCode(138023, 400, "Call accepted but terminated with no media signals",
                  "The call was accepted but terminated with no media connection signals."),
    ]
}


class GraphError(Exception):
    """A Graph API error the domain decided on. ``details`` lands in ``error_data.details``."""

    def __init__(self, code: int, details: str | None = None, *, message: str | None = None,
                 http_status: int | None = None, subcode: int | None = None, error_type: str | None = None,
                 bare_message: bool = False) -> None:
        """``bare_message``: ``message`` is Graph's whole text, without the ``(#code)`` prefix (Graph's
        own errors such as "Invalid appsecret_proof provided in the API argument" read that way)."""
        entry = CATALOGUE.get(code) or ErrorCode(code, 400, "Error", "")
        self.code = code
        self.title = message or entry.title
        # error_data.details is never empty: a specific message, else the catalogue text, else the title
        self.details = details if details is not None else (message or entry.details or self.title)
        self.http_status = http_status or entry.http_status
        self.type = error_type or entry.type
        self.subcode = subcode
        self.bare_message = bare_message
        super().__init__(f"(#{code}) {self.title}: {self.details}")

    @property
    def message(self) -> str:
        return self.title if self.bare_message else f"(#{self.code}) {self.title}"

    def as_webhook_error(self) -> dict:
        """The ``errors[]`` item shape used inside webhooks (terminate, failed statuses)."""
        return {"code": self.code, "title": self.title, "message": self.title,
                "error_data": {"details": self.details},
                "href": "https://developers.facebook.com/docs/whatsapp/cloud-api/support/error-codes/"}


class MediaUnavailable(Exception):
    """No media leg can be had right now (a port, a worker process or descriptors ran out): a fact the
    media plane reports, shared by every entry point. Each wire layer answers with Meta's transient
    error: Graph code 2, a control-API 503, SIP 503."""
