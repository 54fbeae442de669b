"""Meta's webhook payloads: each domain event rendered as (field, waba_id, value).

Which events become webhooks is the table :data:`RENDERERS` (event type -> renderer). Shapes follow
Meta's calling webhook reference
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/reference: connect, status, terminate),
the call permission reply and message status webhooks, and account_settings_update. Timestamps are strings
of Unix seconds; ``duration`` is an integer.
"""

from __future__ import annotations

from typing import Any, Callable

from ..domain import events as ev
from ..domain import identity
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
    # the BSUID fields (user_id, parent_user_id, profile.username) and the phone-number rule are applied to
    # every rendered value by with_user_ids(), in render()
    user = platform.users.get(wa_id)
    return [{"profile": {"name": user.name if user else wa_id}, "wa_id": wa_id}]


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


def call_created(platform: Platform, call: Call, number: PhoneNumber) -> dict:
    """A SIP call was attempted (``calling.sip.webhook_delivery`` ENABLED): Meta's ``call_created``, on
    ``calls``, without ``session`` (https://developers.facebook.com/docs/whatsapp/cloud-api/calling/call-settings)."""
    item = {"id": call.id, **_parties(call, number), "event": "call_created", "timestamp": _ts(call.created_at),
            "direction": call.direction}
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
    if renderer is None:
        return None
    field, number, value, call_id = renderer(platform, event)
    return field, number, with_user_ids(platform, number, value), call_id


# -- business-scoped user IDs: one pass over every rendered value ----------------------------------------
# Meta's BSUID page: each phone-number field that names the user (contacts[].wa_id, calls[].from/to,
# statuses[].recipient_id, messages[].from) gains its BSUID sibling (user_id, from_user_id, to_user_id,
# recipient_user_id) and, with parent BSUIDs enabled, the parent one; contacts gain profile.username; the
# phone-number field itself stays only under Meta's phone-number rules (domain.identity.phone_visible).
# Renderers written before BSUIDs (and those of other features) get all of this for free.

def _parent_key(prefix: str, item: dict) -> str:
    if prefix != "recipient":
        return f"{prefix}_parent_user_id"
    # Meta's quirk: call statuses say recipient_parent_user_id, message statuses parent_recipient_user_id
    return "recipient_parent_user_id" if item.get("type") == "call" else "parent_recipient_user_id"


Who = Callable[[Any], "identity.Identity | None"]


def _who(platform: Platform, number: PhoneNumber) -> Who:
    """The identity of a value naming a user (None for anything else, e.g. the business's number), asked
    once per user and webhook."""
    seen: dict[str, identity.Identity | None] = {}

    def who(wa_id: Any) -> identity.Identity | None:
        if not isinstance(wa_id, str):
            return None
        if wa_id not in seen:
            seen[wa_id] = identity.identity(platform, number, wa_id) if wa_id in platform.users else None
        return seen[wa_id]
    return who


def _tag(who_is: Who, item: dict, key: str, prefix: str) -> dict:
    """``item`` with the BSUID fields beside ``item[key]`` when it names a user (a business number does not)."""
    who = who_is(item.get(key))
    if who is None:
        return item
    out: dict = {}
    for name, value in item.items():
        if name != key:
            out[name] = value
            continue
        if who.wa_id is not None:
            out[key] = value
        out[f"{prefix}_user_id"] = who.user_id
        if who.parent_user_id is not None:
            out[_parent_key(prefix, item)] = who.parent_user_id
    return out


def _contact(who_is: Who, contact: dict, *, username: bool) -> dict:
    who = who_is(contact.get("wa_id"))
    if who is None:
        return contact
    profile = dict(contact.get("profile") or {"name": who.name})
    if username and who.username:
        profile["username"] = who.username
    out: dict = {"profile": profile, **who.contact_ids()}
    out.update((k, v) for k, v in contact.items() if k not in ("profile", "wa_id", "user_id", "parent_user_id"))
    return out


def with_user_ids(platform: Platform, number: PhoneNumber, value: dict) -> dict:
    """``value`` with Meta's business-scoped identity fields (see above); other values unchanged."""
    if not isinstance(value, dict) or "metadata" not in value:
        return value
    who = _who(platform, number)
    statuses = value.get("statuses")
    if "contacts" in value:
        # a message status shows the username on delivered and read only (Meta's BSUID page)
        username = not statuses or all(s.get("status") in ("delivered", "read") for s in statuses)
        value["contacts"] = [_contact(who, c, username=username) for c in value["contacts"]]
    if "calls" in value:
        value["calls"] = [_tag(who, _tag(who, item, "from", "from"), "to", "to") for item in value["calls"]]
    if statuses:
        value["statuses"] = [_tag(who, item, "recipient_id", "recipient") for item in statuses]
    if "messages" in value:
        messages = []
        for item in value["messages"]:
            tagged = _tag(who, item, "from", "from")
            context = tagged.get("context")
            if "from" not in tagged and isinstance(context, dict) and context.get("from") == item.get("from"):
                tagged["context"] = {k: v for k, v in context.items() if k != "from"}   # no phone leaks there
            messages.append(tagged)
        value["messages"] = messages
    return value


def _calls_field(platform: Platform, call_id: str, value: Callable[[Call, PhoneNumber], dict]) -> Rendered:
    call = platform.calls[call_id]
    number = platform.numbers[call.phone_number_id]
    return "calls", number, value(call, number), call.id


@renders(ev.CallConnect)
def _call_connect(platform: Platform, event: ev.CallConnect) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_connect(platform, call, number))


@renders(ev.CallCreated)
def _call_created(platform: Platform, event: ev.CallCreated) -> Rendered:
    return _calls_field(platform, event.call_id, lambda call, number: call_created(platform, call, number))


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
    value: dict = {"messaging_product": "whatsapp", "metadata": _metadata(number)}
    if event.status != "failed":     # since BSUIDs, sent/delivered/read carry the user's contact (not failed)
        value["contacts"] = _contacts(platform, message.wa_id)
    value["statuses"] = [status]
    return "messages", number, value, None


@renders(identity.UserChangedUserId)
def _user_changed_user_id(platform: Platform, event: identity.UserChangedUserId) -> Rendered:
    """Meta's system message when a user's number (so its BSUID) changes: no contacts array; the old
    identity in ``from``/``from_user_id``, the new BSUID in ``system.user_id``."""
    number = platform.numbers[event.phone_number_id]
    new = identity.identity(platform, number, event.new_wa_id)
    old_user = platform.users.get(event.wa_id)
    old_id = identity.user_id(old_user, event.wa_id)
    system: dict = {"body": f"User {new.name} changed from {old_id} to {new.user_id}",
                    "type": "user_changed_user_id", "user_id": new.user_id}
    if new.parent_user_id is not None:
        system["parent_user_id"] = new.parent_user_id
    message = {"from": event.wa_id, "id": event.message_id, "timestamp": _ts(event.timestamp), "type": "system",
               "system": system}
    return "messages", number, {"messaging_product": "whatsapp", "metadata": _metadata(number),
                                "messages": [message]}, None


@renders(ev.InboundMessage)
def _inbound_message(platform: Platform, event: ev.InboundMessage) -> Rendered:
    message = platform.messages[event.message_id]
    number = platform.numbers[message.phone_number_id]
    if message.type == "audio":         # a voicemail: id is the call's wacid (Meta's voicemail sample)
        item = {"from": message.wa_id, "id": message.id, "timestamp": _ts(message.created_at), "type": "audio",
                "audio": dict(message.body.get("audio") or {})}
    else:
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
