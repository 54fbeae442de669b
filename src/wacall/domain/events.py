"""What the domain tells the outside world happened. The webhooks layer renders these into Meta's
envelopes; the server applies the rest (media release, persistence)."""

from __future__ import annotations

from dataclasses import dataclass, field

from .sdp import Negotiated


@dataclass
class CallConnect:
    call_id: str


@dataclass
class CallStatus:
    call_id: str
    status: str            # RINGING | ACCEPTED | REJECTED
    timestamp: float


@dataclass
class CallTerminate:
    call_id: str


@dataclass
class PermissionReply:
    phone_number_id: str
    wa_id: str
    response: str          # accept | reject
    is_permanent: bool | None
    expiration_timestamp: float | None
    response_source: str   # user_action | automatic
    context_id: str | None
    message_id: str
    timestamp: float


@dataclass
class MessageStatus:
    message_id: str
    status: str            # sent | delivered | read | failed
    timestamp: float
    errors: list[dict] = field(default_factory=list)


@dataclass
class SettingsUpdate:
    phone_number_id: str
    timestamp: float
    calling_changed: bool


@dataclass
class InboundMessage:
    message_id: str


@dataclass
class SipCallChanged:
    """A SIP-signalled call changed state: the SIP gateway sends what Meta's gateway would."""
    call_id: str


@dataclass
class ReleaseMedia:
    call_id: str


@dataclass
class MediaConfigure:
    """Both SDPs of the call are known: the relay sets up ICE, DTLS or SDES as ``negotiated`` says (the
    one negotiation, ``wacall.domain.sdp.negotiate``), and the user's phone plays ``user_audio``."""
    call_id: str
    negotiated: Negotiated
    user_audio: str = "silence"
    user_is_caller: bool = True


@dataclass
class MediaConnected:
    """The call was accepted: the user's phone starts its media clock."""
    call_id: str
    at: float


Event = (CallConnect | CallStatus | CallTerminate | PermissionReply | MessageStatus
         | SettingsUpdate | InboundMessage | ReleaseMedia | MediaConfigure | MediaConnected)
