"""Meta's webhook payloads: each domain event rendered as (field, waba_id, value).

Which events become webhooks is the table :data:`RENDERERS` (event type -> renderer). Shapes follow
Meta's calling webhook reference
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference: connect, status, terminate),
the call permission reply and message status webhooks, and account_settings_update. Timestamps are strings
of Unix seconds; ``duration`` is an integer.
"""

from __future__ import annotations

import hashlib
from typing import Any, Callable

from ..domain import events as ev
from ..domain.model import BUSINESS_INITIATED, Call, PhoneNumber
from ..domain.platform import Platform
from ..domain.settings import settings_webhook_view
from .. import codec


def _ts(value: float) -> str:
    return str(int(value))


def envelope(waba_id: str, field: str, value: dict) -> dict:
    return {"object": "whatsapp_business_account",
            "entry": [{"id": waba_id, "changes": [{"value": value, "field": field}]}]}


def _metadata(number: PhoneNumber) -> dict:
    return {"display_phone_number": number.display_phone_number, "phone_number_id": number.id}


def _contacts(platform: Platform, wa_id: str) -> list[dict]:
    user = platform.users.get(wa_id)
    # Since April 2026 Meta adds the business-scoped user ID (BSUID, "<ISO country>.<digits>") to every
    # contact; wacall models one business portfolio, so it is derived from the wa_id alone.
    bsuid = f"{user.country if user else 'ZZ'}.{int(hashlib.sha256(wa_id.encode()).hexdigest()[:15], 16)}"
    return [{"profile": {"name": user.name if user else wa_id}, "wa_id": wa_id, "user_id": bsuid}]


def _parties(call: Call, number: PhoneNumber) -> dict:
    if call.direction == BUSINESS_INITIATED:
        return {"from": number.display_phone_number, "to": call.wa_id}
    return {"from": call.wa_id, "to": number.display_phone_number}


def _payloads(call: Call) -> dict:
    out = {}
    if call.cta_payload is not None:
        out["cta_payload"] = call.cta_payload
    if call.deeplink_payload is not None:
        out["deeplink_payload"] = call.deeplink_payload
    if call.biz_opaque_callback_data is not None:
        out["biz_opaque_callback_data"] = call.biz_opaque_callback_data
    return out


def call_connect(platform: Platform, call: Call, number: PhoneNumber) -> dict:
    sdp_type = "answer" if call.direction == BUSINESS_INITIATED else "offer"
    item = {"id": call.id, **_parties(call, number), "event": "connect", "timestamp": _ts(call.created_at),
            "direction": call.direction, **_payloads(call),
            "session": {"sdp_type": sdp_type, "sdp": call.meta_sdp}}
    if call.direction == BUSINESS_INITIATED:   # Meta still sends the legacy form on BIC connects
        item["connection"] = {"webrtc": {"sdp": codec.dumps({"sdp": call.meta_sdp, "type": sdp_type})}}
    return {"messaging_product": "whatsapp", "metadata": _metadata(number),
            "contacts": _contacts(platform, call.wa_id), "calls": [item]}


def call_terminate(platform: Platform, call: Call, number: PhoneNumber) -> dict:
    # a connected call's times come from Call.start_time/end_time/duration, which agree with each other
    ended = call.end_time if call.end_time is not None else _ts(call.ended_at or platform.now())
    item = {"id": call.id, **_parties(call, number), "event": "terminate", "direction": call.direction,
            **_payloads(call), "timestamp": str(ended), "status": call.end_status}
    if call.duration is not None:
        item.update(start_time=str(call.start_time), end_time=str(call.end_time), duration=call.duration)
    value = {"messaging_product": "whatsapp", "metadata": _metadata(number),
             "contacts": _contacts(platform, call.wa_id), "calls": [item]}
    if call.errors:
        value["errors"] = call.errors
    return value


def call_status(call: Call, number: PhoneNumber, status: str, timestamp: float) -> dict:
    item = {"id": call.id, "timestamp": _ts(timestamp), "type": "call", "status": status,
            "recipient_id": call.wa_id}
    if call.biz_opaque_callback_data is not None:
        item["biz_opaque_callback_data"] = call.biz_opaque_callback_data
    return {"messaging_product": "whatsapp", "metadata": _metadata(number), "statuses": [item]}


Rendered = tuple[str, PhoneNumber, dict, str | None]
"""(field, number, value, call_id) of one webhook."""

#: event type -> its renderer: the events that become webhooks, and how (the others render to nothing)
RENDERERS: dict[type, Callable[[Platform, Any], Rendered]] = {}


def renders(*event_types: type) -> Callable:
    """Register the decorated function as the webhook renderer of ``event_types``."""
    def register(renderer: Callable[[Platform, Any], Rendered]) -> Callable[[Platform, Any], Rendered]:
        for event_type in event_types:
            RENDERERS[event_type] = renderer
        return renderer
    return register


def render(platform: Platform, event) -> Rendered | None:
    """Return (field, number, value, call_id) for an event that becomes a webhook, else None."""
    renderer = RENDERERS.get(type(event))
    return None if renderer is None else renderer(platform, event)


def _calls_field(platform: Platform, call_id: str, value: Callable[[Call, PhoneNumber], dict]) -> Rendered:
    call = platform.calls[call_id]
    number = platform.numbers[call.phone_number_id]
    return "calls", number, value(call, number), call.id


@renders(ev.CallConnect)
def _call_connect(platform: Platform, event: ev.CallConnect) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_connect(platform, call, number))


@renders(ev.CallStatus)
def _call_status(platform: Platform, event: ev.CallStatus) -> Rendered:
    return _calls_field(platform, event.call_id,
                        lambda call, number: call_status(call, number, event.status, event.timestamp))


@renders(ev.CallTerminate)
def _call_terminate(platform: Platform, event: ev.CallTerminate) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_terminate(platform, call, number))


def call_capture(platform: Platform, call: Call, number: PhoneNumber, event: str, timestamp: float,
                 key: str, value: dict) -> dict:
    """``call_recording_available`` / ``call_transcription_available`` (Meta's call recording and call
    transcription pages): the media the business downloads through the Media API."""
    item = {"id": call.id, **_parties(call, number), "timestamp": _ts(timestamp), "event": event, key: value}
    return {"messaging_product": "whatsapp", "metadata": _metadata(number),
            "contacts": _contacts(platform, call.wa_id), "calls": [item]}


@renders(ev.CallRecordingAvailable)
def _call_recording(platform: Platform, event: ev.CallRecordingAvailable) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_capture(
        platform, call, number, "call_recording_available", event.timestamp, "call_recording",
        {"type": "audio", "audio": event.media}))


@renders(ev.CallTranscriptionAvailable)
def _call_transcription(platform: Platform, event: ev.CallTranscriptionAvailable) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_capture(
        platform, call, number, "call_transcription_available", event.timestamp, "call_transcript",
        {"document": event.media}))


@renders(ev.PermissionReply)
def _permission_reply(platform: Platform, event: ev.PermissionReply) -> Rendered:
    number = platform.numbers[event.phone_number_id]
    reply: dict = {"response": event.response}
    if event.is_permanent is not None:
        reply["is_permanent"] = event.is_permanent
    if event.expiration_timestamp is not None:
        reply["expiration_timestamp"] = _ts(event.expiration_timestamp)
    reply["response_source"] = event.response_source
    message = {"from": event.wa_id, "id": event.message_id, "timestamp": _ts(event.timestamp)}
    if event.context_id:
        message["context"] = {"from": event.wa_id, "id": event.context_id}
    message.update(type="interactive", interactive={"type": "call_permission_reply",
                                                    "call_permission_reply": reply})
    value = {"messaging_product": "whatsapp", "metadata": _metadata(number),
             "contacts": _contacts(platform, event.wa_id), "messages": [message]}
    call_id = event.context_id if event.context_id and event.context_id.startswith("wacid.") else None
    return "messages", number, value, call_id


@renders(ev.MessageStatus)
def _message_status(platform: Platform, event: ev.MessageStatus) -> Rendered:
    message = platform.messages[event.message_id]
    number = platform.numbers[message.phone_number_id]
    status: dict = {"id": message.id, "status": event.status, "timestamp": _ts(event.timestamp),
                    "recipient_id": message.wa_id}
    if event.status != "failed":
        category = "utility" if message.type == "template" else "service"
        status["pricing"] = {"billable": message.type == "template", "pricing_model": "PMP",
                             "category": category,
                             "type": "regular" if message.type == "template" else "free_customer_service"}
    if message.biz_opaque_callback_data is not None:
        status["biz_opaque_callback_data"] = message.biz_opaque_callback_data
    if event.errors:
        status["errors"] = event.errors
    return "messages", number, {"messaging_product": "whatsapp", "metadata": _metadata(number),
                                "statuses": [status]}, None


@renders(ev.InboundMessage)
def _inbound_message(platform: Platform, event: ev.InboundMessage) -> Rendered:
    message = platform.messages[event.message_id]
    number = platform.numbers[message.phone_number_id]
    item = {"from": message.wa_id, "id": message.id, "timestamp": _ts(message.created_at), "type": "text",
            "text": {"body": message.body.get("body", "")}}
    return "messages", number, {"messaging_product": "whatsapp", "metadata": _metadata(number),
                                "contacts": _contacts(platform, message.wa_id), "messages": [item]}, None


@renders(ev.SettingsUpdate)
def _settings_update(platform: Platform, event: ev.SettingsUpdate) -> Rendered:
    number = platform.numbers[event.phone_number_id]
    settings: dict = {"phone_number_id": number.id}
    if event.calling_changed:
        settings["calling"] = settings_webhook_view(number.calling)
    return "account_settings_update", number, {
        "messaging_product": "whatsapp", "timestamp": _ts(event.timestamp), "type": "PHONE_NUMBER_SETTINGS",
        "phone_number_settings": settings}, None


def event_kind(field: str, value: dict) -> str:
    """What one webhook is about, in the words fault rules use: ``connect``/``terminate``, a call or message
    status (``RINGING``, ``delivered``...), ``call_permission_reply``, a message type, or the field."""
    for item in value.get("calls") or []:
        return str(item.get("event", field))
    for item in value.get("statuses") or []:
        return str(item.get("status", field))
    for item in value.get("messages") or []:
        interactive = item.get("interactive") or {}
        return str(interactive.get("type") or item.get("type") or field)
    return field
