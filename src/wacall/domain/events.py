"""What the domain tells the outside world happened, and the registry that routes each event to the
consumers that react to it.

The webhooks layer renders events into Meta's envelopes (``wacall.webhooks.payloads``, its own
table from event type to renderer, before the commit: the outbox rows are part of the transaction);
after the commit the server publishes every event through an :class:`EventRegistry`, where the media
plane (configure, connected, release) and the SIP gateway (``SipCallChanged``) registered for the
types they consume (configure and release are prepared: done before the commit, so what they note joins
it). No consumer asks ``isinstance``: the type is the address.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable

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
class CallCreated:
    """A SIP call was attempted on a number with ``calling.sip.webhook_delivery`` ENABLED (its ``call_created``
    webhook; Graph calls have ``connect`` instead)."""
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
    """The call was accepted: the user's phone starts its media clock (and, with recording or transcription
    enabled, plays ``announcement`` = {"text", "language", "voice"} mixed into both directions first)."""
    call_id: str
    at: float
    announcement: dict | None = None


@dataclass
class CallRecordingAvailable:
    """The call's recording is ready: ``media`` = {"id", "sha256", "mime_type", "url"} (Media API)."""
    call_id: str
    media: dict
    timestamp: float


@dataclass
class CallTranscriptionAvailable:
    """The call's transcript document is ready: ``media`` = {"id", "sha256", "mime_type", "url"}."""
    call_id: str
    media: dict
    timestamp: float


@dataclass
class VoicemailAnswer:
    """The platform answers a user's call for voicemail: the relay plays the business's announcement
    (the uploaded media ``announcement_media_id``) to the user, whose phone says ``user_audio`` later."""
    call_id: str
    announcement_media_id: str
    user_audio: str = "silence"


@dataclass
class VoicemailRecord:
    """The announcement has played: the relay takes ``seconds`` of what the user says as the message."""
    call_id: str
    seconds: float


Event = (CallConnect | CallStatus | CallTerminate | CallCreated | PermissionReply | MessageStatus
         | SettingsUpdate | InboundMessage | SipCallChanged | ReleaseMedia | MediaConfigure | MediaConnected
         | VoicemailAnswer | VoicemailRecord | CallRecordingAvailable | CallTranscriptionAvailable)


class EventRegistry:
    """Event type -> the handlers that consume it, called in the order they registered.

    An event type nobody registered for is simply not consumed here (a webhook-only event, or
    ``SipCallChanged`` when the SIP gateway is off)."""

    def __init__(self) -> None:
        self._handlers: dict[type, list[Callable[[Any], None]]] = {}
        self._preparers: dict[type, list[Callable[[Any], None]]] = {}

    def on(self, event_type: type, handler: Callable[[Any], None] | None, *,
           prepare: Callable[[Any], None] | None = None) -> None:
        """``handler`` consumes the event after its commit. ``prepare``, if given, sees it before the commit:
        what it notes or saves (through the one write path) joins that same commit, e.g. the SIP response a
        state change causes, put on the call's timeline and sent by ``handler`` once the change is durable.
        A consumer with nothing left to do after the commit gives ``handler`` None."""
        if handler is not None:
            self._handlers.setdefault(event_type, []).append(handler)
        if prepare is not None:
            self._preparers.setdefault(event_type, []).append(prepare)

    @property
    def prepares(self) -> bool:
        return bool(self._preparers)

    def prepare(self, event: Any) -> None:
        for handler in self._preparers.get(type(event), ()):
            handler(event)

    def handlers(self, event_type: type) -> list[Callable[[Any], None]]:
        return list(self._handlers.get(event_type, ()))

    def publish(self, event: Any, failed: Callable[[Any, Exception], None] | None = None) -> None:
        """Every handler of the event's type, in order. One that raises keeps no other from the event:
        ``failed(event, exc)`` hears of each failure (without it, the first is raised once all ran)."""
        first: Exception | None = None
        for handler in self._handlers.get(type(event), ()):
            try:
                handler(event)
            except Exception as exc:
                if failed is None:
                    first = first or exc
                else:
                    failed(event, exc)
        if first is not None:
            raise first
