"""The control API under ``/_wacall/``: tests and people play the WhatsApp side through it.

See docs/control-api.md. Refusals come back as ``{"error": {"reason": ..., "detail": ...}}`` with a
4xx status; the reasons are the ones a WhatsApp user would see (call icon hidden, outside call
hours, already in a call...). What it may do with the running emulator is :class:`ControlHost`.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, Awaitable, Callable

from aiohttp import web

from .. import codec
from ..config import region_of
from ..domain import fields, identity
from ..domain.clock import VirtualClock
from ..domain.errors import MediaUnavailable
from ..domain.model import ACCEPTED, User
from ..domain.phone import phone_digits
from ..domain.platform import Platform
from ..domain.state import ControlError
from ..guard import control_error, is_loopback

log = logging.getLogger("wacall.control")


@dataclass(frozen=True)
class ControlHost:
    """What the control API may do with the running emulator (built by ``wacall.server``): play the
    WhatsApp side, move the clock, inject faults, and inspect calls, media, webhooks and SIP."""

    platform: Platform                                       # read: lookups and views
    clock: VirtualClock
    apply: Callable[[Callable[[], Any]], Any]                # the one write path: run a domain operation, commit
    place_call: Callable[[Callable[[str, Any], Any]], Awaitable[Any]]   # legs.LegOwner.place: a new call with its leg
    reset: Callable[[], Awaitable[None]]                     # back to the configured start
    info: Callable[..., dict]                                # what a client needs (``credentials=``)
    base_url: Callable[[], str]
    faults: dict[str, int]                                   # injected faults still to cause, by name
    encode_audio: Callable[[str], Any]                       # a user's audio source encoded once; raises if unusable
    timeline: Callable[[str], list[dict]]                    # a call's committed timeline
    journal: Callable[..., list[dict]]                       # webhook deliveries (``call_id=``, ``limit=``)
    call_list: Callable[..., list[dict]]                     # the call index (``limit=``, ``before=``, ``state=``)
    media_view: Callable[[str], Awaitable[dict | None]]
    media_stats: Callable[[], Awaitable[dict]]
    send_dtmf: Callable[[str, str], Awaitable[bool]]         # the user presses keys; False without media
    recording_wav: Callable[[str], Awaitable[bytes | None]]
    webhook_stats: Callable[[], dict | None]
    webhook_faults: Callable[[dict | None], dict]            # None: the plan; a dict replaces it (ValueError)
    sip_health: Callable[[], dict | None]                    # None when the SIP gateway is off
    sip_hosts: Callable[[dict | None], dict | None]          # add name -> loopback address (OSError); None when off
    resend_webhook: Callable[[int], dict | None] = lambda outbox_id: None   # a copy of a journal entry, queued now
    # a published media's (mime type, file) for the console's players (recordings, transcripts, voicemails);
    # KeyError when missing, deleted or expired
    media_file: Callable[[str], tuple[str, Any]] | None = None


CONTROL = web.AppKey("control", ControlHost)


def ok(data: Any, status: int = 200) -> web.Response:
    return web.Response(body=codec.dump_bytes(data), status=status, content_type="application/json")


async def body_of(request: web.Request) -> dict:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise ControlError("too_large", "the body is over the 1 MiB limit", 413) from None
    if not raw:
        return {}
    try:
        data = codec.loads(raw)
        codec.dumps(data).encode("utf-8")   # lone surrogates ("\ud800") could be neither stored nor echoed
    except (ValueError, RecursionError):   # bad JSON or UTF-8, an over-long int, too-deep nesting
        raise ControlError("bad_json", "the body is not valid JSON", 400) from None
    if not isinstance(data, dict):
        raise ControlError("bad_json", "the body must be a JSON object", 400)
    return data


def handler(fn, key: web.AppKey = CONTROL):
    """A route in the control API's manner: ``fn(host, request)`` with the host stored under ``key``;
    refusals and failures in the control API's error shape, never a traceback to the client."""
    async def wrapped(request: web.Request) -> web.Response:
        host = request.app[key]
        try:
            return await fn(host, request)
        except ControlError as exc:
            return control_error(exc.reason, exc.detail, exc.status)
        except (ValueError, TypeError, KeyError, OverflowError) as exc:
            return control_error("bad_request", str(exc), 400)
        except Exception as exc:
            log.exception("control API failure")
            return control_error("internal", f"{type(exc).__name__}: {exc}", 500)
    return wrapped


def _voicemail_view(voicemail: dict | None) -> dict | None:
    """What the platform's voicemail did on a call (None: it never went there): the trigger, the message's
    media id and length (None until a message was left), and where it got to."""
    if not voicemail or not voicemail.get("trigger"):
        return None
    return {"trigger": voicemail["trigger"], "media_id": voicemail.get("media_id"),
            "seconds": voicemail.get("seconds"), "phase": voicemail.get("phase")}


async def call_view(host: ControlHost, call_id: str, with_webhooks: bool = True, with_timeline: bool = True) -> dict:
    """A call as ``GET /_wacall/calls/{call_id}`` shows it; without its timeline for the live stream (an
    ended call's final media statistics are still read from it, one entry)."""
    call = host.platform.call(call_id)          # live, or ended and read back from the store
    if call is None:
        raise ControlError("unknown_call", f"no call {call_id}", 404)
    number = host.platform.numbers.get(call.phone_number_id)
    view = {
        "call_id": call.id, "state": call.state, "direction": call.direction,
        "phone_number_id": call.phone_number_id,
        "business": number.display_phone_number if number else None, "wa_id": call.wa_id,
        "signalling": call.signalling, "entry_point": call.entry_point, "created_at": call.created_at,
        "accepted_at": call.accepted_at, "ended_at": call.ended_at, "end_status": call.end_status,
        "end_reason": call.end_reason, "ended_by": call.ended_by, "duration": call.duration,
        "errors": call.errors, "pulses": call.pulses, "cost": call.cost,
        "biz_opaque_callback_data": call.biz_opaque_callback_data, "cta_payload": call.cta_payload,
        "deeplink_payload": call.deeplink_payload, "meta_sdp": call.meta_sdp, "business_sdp": call.business_sdp,
        "sip": call.sip,                   # the SIP dialog as persisted (restored after a restart)
        "voicemail": _voicemail_view(call.voicemail),
        # call recording / transcription (domain.recording): what was asked, and what came of it
        "capture": call.capture,
        "recording": (call.captured or {}).get("recording"),
        "transcript": (call.captured or {}).get("transcript"),
    }
    if with_timeline:
        view["timeline"] = host.timeline(call.id) + host.platform.pending_notes(call.id)
    media = await host.media_view(call.id)
    if media is None:                 # a released leg the media plane forgot: its final statistics
        timeline = view["timeline"] if with_timeline else host.timeline(call.id) + host.platform.pending_notes(call.id)
        media = next((dict(e["media"]) for e in reversed(timeline)
                      if e.get("event") == "final_stats" and isinstance(e.get("media"), dict)), None)
    view["media"] = media
    if media is not None:
        media["recording_url"] = f"{host.base_url()}/_wacall/calls/{call.id}/recording.wav"
    if with_webhooks and with_timeline:
        journal = host.journal(call_id=call.id)
        view["webhooks"] = journal
        events = [{"t": a["at"], "kind": "webhook_attempt", "outbox_id": j["id"], "field": j["field"],
                   "url": j["url"], "status_code": a["status_code"], "error": a["error"], "response": a["response"],
                   **({"fault": j["fault"]} if j.get("fault") else {})}
                  for j in journal for a in j["attempt_log"]]
        view["timeline"] = sorted(view["timeline"] + events, key=lambda e: e["t"])
    host.platform.trim()                        # a call read back from the store does not stay long
    return view


async def prepare_audio(host: ControlHost, spec: str) -> None:
    """Encode a user's audio source once, off the event loop; refuse one that cannot be read."""
    try:
        await asyncio.get_running_loop().run_in_executor(None, host.encode_audio, spec)
    except Exception as exc:
        raise ControlError("bad_audio", f"cannot use audio {spec!r}: {exc}", 400) from None


def patch(host: ControlHost, record, data: dict) -> None:
    """Set validated fields on a record and persist it."""
    def change() -> None:
        for key, value in data.items():
            setattr(record, key, value)
        host.platform.put(record)
    host.apply(change)


@handler
async def health(host: ControlHost, request: web.Request) -> web.Response:
    platform = host.platform
    working_set = {"calls": len(platform.calls), "live_calls": len(platform.active_calls),
                   "messages": len(platform.messages), "pending_messages": len(platform.pending_messages)}
    return ok({"status": "ok", "now": host.clock.now(), "sip": host.sip_health(), "webhooks": host.webhook_stats(),
               "media": await host.media_stats(), "working_set": working_set})


@handler
async def info(host: ControlHost, request: web.Request) -> web.Response:
    """The only control response with the app's credentials, and only for a caller on loopback."""
    return ok(host.info(credentials=is_loopback(request.remote or "")))


@handler
async def reset(host: ControlHost, request: web.Request) -> web.Response:
    await host.reset()
    return ok({"success": True})


def clock_view(host: ControlHost) -> dict:
    now = host.clock.now()
    return {"now": now, "iso": datetime.fromtimestamp(now, timezone.utc).isoformat(), "offset": host.clock.offset}


@handler
async def clock(host: ControlHost, request: web.Request) -> web.Response:
    return ok(clock_view(host))


@handler
async def clock_advance(host: ControlHost, request: web.Request) -> web.Response:
    seconds = (await body_of(request)).get("seconds")
    limit = 95_617_584_000 - host.clock.now()   # the year 5000: every timestamp stays a valid date
    if not fields.is_number(seconds) or not 0 <= seconds <= limit:
        raise ControlError("bad_seconds", "seconds must be a non-negative number (the clock stops at year 5000)",
                           400)
    host.clock.advance(float(seconds))
    host.apply(host.platform.tick)
    return ok(clock_view(host))


def check_user_fields(data: dict) -> dict:
    try:
        return fields.check_user_fields(data)
    except ValueError as exc:
        raise ControlError("bad_field", str(exc), 400) from None


def business_address(data: dict) -> str:
    """The ``to`` of a user's call or message: a phone_number_id or the business's display number."""
    to = data.get("to", "")
    if phone_digits(to) is None:
        raise ControlError("bad_field", "to must be the business's phone_number_id or phone number (digits with "
                                        "optional +, -, (, ) and spaces)", 400)
    return str(to)


def user_doc(user: User) -> dict:
    """A user's record plus its effective BSUID and parent BSUID (derived ones included)."""
    return {**user.to_doc(), "user_id": identity.user_id(user, user.wa_id),
            "parent_user_id": identity.parent_user_id(user, user.wa_id)}


@handler
async def users(host: ControlHost, request: web.Request) -> web.Response:
    if request.method == "GET":
        return ok({"data": [user_doc(u) for u in host.platform.users.values()]})
    data = check_user_fields(await body_of(request))
    wa_id = data.get("wa_id")
    if not wa_id:
        raise ControlError("bad_field", "wa_id is required (the user's phone number)", 400)
    if wa_id in host.platform.users:
        raise ControlError("exists", f"user {wa_id} already exists", 409)
    if "audio" in data:
        await prepare_audio(host, data["audio"])
    user = User(**{"name": wa_id, **data, "wa_id": wa_id, "country": data.get("country") or region_of(wa_id)})
    host.apply(lambda: host.platform.put(user))
    return ok(user_doc(user), 201)


@handler
async def user(host: ControlHost, request: web.Request) -> web.Response:
    found = host.platform.user(request.match_info["wa_id"])
    if request.method == "PATCH":
        data = check_user_fields(await body_of(request))
        data.pop("wa_id", None)
        if "audio" in data:
            await prepare_audio(host, data["audio"])
        patch(host, found, data)
    return ok(user_doc(found))


@handler
async def user_number_change(host: ControlHost, request: web.Request) -> web.Response:
    """The user moves to a new number: a new BSUID, and ``user_changed_user_id`` to the businesses it knows."""
    data = check_user_fields({"wa_id": (await body_of(request)).get("wa_id")})
    new_wa_id = data.get("wa_id")
    if not new_wa_id:
        raise ControlError("bad_field", "wa_id (the new phone number) is required", 400)
    user = host.apply(lambda: identity.user_changes_number(host.platform, request.match_info["wa_id"], new_wa_id,
                                                           country=region_of(new_wa_id)))
    return ok(user_doc(user), 201)


@handler
async def waba(host: ControlHost, request: web.Request) -> web.Response:
    """A WABA's business-portfolio switches: ``parent_bsuids`` (webhooks add the parent BSUID fields)."""
    found = host.platform.wabas.get(request.match_info["waba_id"])
    if found is None:
        raise ControlError("unknown_waba", f"no WABA {request.match_info['waba_id']}", 404)
    if request.method == "PATCH":
        data = await body_of(request)
        if set(data) - {"parent_bsuids"} or not isinstance(data.get("parent_bsuids", False), bool):
            raise ControlError("bad_field", "settable: parent_bsuids (true or false)", 400)
        patch(host, found, data)
    return ok(found.to_doc())


@handler
async def user_messages(host: ControlHost, request: web.Request) -> web.Response:
    data = await body_of(request)
    message = host.apply(lambda: host.platform.user_sends_message(
        request.match_info["wa_id"], business_address(data), data.get("text", "")))
    return ok({"message_id": message.id}, 201)


@handler
async def user_calls(host: ControlHost, request: web.Request) -> web.Response:
    call = await place_user_call(host, request.match_info["wa_id"], await body_of(request))
    return ok({"call_id": call.id, "state": call.state}, 201)


async def place_user_call(host: Any, wa_id: str, data: dict) -> Any:
    """A user calls a business (``data``: ``to``, ``entry_point``, ``payload``), its media leg owned from the
    start (``host.place_call``); the control API's and the browser phone's one way to place a user's call."""
    payload = data.get("payload")
    if payload is not None and not isinstance(payload, str):
        raise ControlError("bad_payload", "payload must be a string", 400)
    to = business_address(data)
    try:
        return await host.place_call(lambda call_id, leg: host.platform.user_calls(
            wa_id, to, entry_point=data.get("entry_point", "call_icon"), payload=payload, call_id=call_id, leg=leg))
    except MediaUnavailable:
        raise ControlError("cannot_place_call", "Couldn't place call (Meta's relay has no room right now; "
                                                "try again)", 503) from None


@handler
async def user_permission_replies(host: ControlHost, request: web.Request) -> web.Response:
    data = await body_of(request)
    result = host.apply(lambda: host.platform.user_permission_reply(
        request.match_info["wa_id"], str(data.get("phone_number_id", "")), response=data.get("response", ""),
        permanent=bool(data.get("permanent", False)), via=data.get("via", "request")))
    return ok(result)


CALL_LIST_STATES = {"live", "RINGING", "PRE_ACCEPTED", "ACCEPTED", "VOICEMAIL", "ENDED"}


@handler
async def calls(host: ControlHost, request: web.Request) -> web.Response:
    """The latest calls, oldest first, from the store's call index (``limit``, ``before``, ``state``)."""
    query = request.query
    limit = int(query.get("limit", "1000"))
    before = float(query["before"]) if "before" in query else None
    state = query.get("state")
    if not 1 <= limit <= 10000 or (before is not None and before != before) or (
            state is not None and state not in CALL_LIST_STATES):
        raise ControlError("bad_query", "limit is 1..10000, before a time, state one of "
                                        f"{', '.join(sorted(CALL_LIST_STATES))}", 400)
    items = host.call_list(limit=limit, before=before, state=state)
    body: dict = {"data": items}
    if len(items) == limit:
        body["paging"] = {"before": items[0]["created_at"]}
    return ok(body)


@handler
async def call(host: ControlHost, request: web.Request) -> web.Response:
    return ok(await call_view(host, request.match_info["call_id"]))


@handler
async def call_action(host: ControlHost, request: web.Request) -> web.Response:
    call_id, action = request.match_info["call_id"], request.match_info["action"]
    found = host.platform.call(call_id)
    if found is None:
        raise ControlError("unknown_call", f"no call {call_id}", 404)
    operation = {"answer": host.platform.user_answers, "reject": host.platform.user_rejects,
                 "hangup": host.platform.user_hangs_up}.get(action)
    if operation is None:
        raise ControlError("bad_action", "action must be answer, reject or hangup", 404)
    host.apply(lambda: operation(found))
    return ok(await call_view(host, call_id, with_webhooks=False))


@handler
async def call_voicemail(host: ControlHost, request: web.Request) -> web.Response:
    """The user's choice if the call goes to voicemail: ``{"seconds": n}`` leaves a message of n seconds
    (before the voicemail answers, or while its announcement plays). Hanging up is ``.../hangup``."""
    call_id = request.match_info["call_id"]
    seconds = (await body_of(request)).get("seconds")
    found = host.platform.call(call_id)
    if found is None:
        raise ControlError("unknown_call", f"no call {call_id}", 404)
    return ok({"voicemail": host.apply(lambda: host.platform.user_voicemail_choice(found, seconds))})


@handler
async def call_dtmf(host: ControlHost, request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    digits = (await body_of(request)).get("digits")
    if not isinstance(digits, str) or not digits or any(d not in "0123456789*#ABCD" for d in digits.upper()):
        raise ControlError("bad_digits", "digits must be a string of 0-9, *, #, A-D", 400)
    call = host.platform.call(call_id)
    if call is None:
        raise ControlError("unknown_call", f"no call {call_id}", 404)
    if call.state != ACCEPTED or not await host.send_dtmf(call_id, digits.upper()):
        raise ControlError("no_media", "the call has no media connection to press keys on", 409)
    host.apply(lambda: host.platform.media_note(call_id, "dtmf_from_user", digits=digits.upper()))
    return ok({"digits": digits.upper()})


@handler
async def call_media(host: ControlHost, request: web.Request) -> web.StreamResponse:
    """A call's published media (recording, transcript, voicemail) for the console on loopback, without the
    Media API's token and signed URL."""
    call = host.platform.call(request.match_info["call_id"])
    media_id = request.match_info["media_id"]
    if call is None or host.media_file is None:
        raise ControlError("unknown_call", f"no call {request.match_info['call_id']}", 404)
    record = host.platform.media_record(media_id)
    if record is None or record.phone_number_id != call.phone_number_id:
        raise ControlError("unknown_media", f"no media {media_id} for call {call.id}'s number", 404)
    try:
        mime_type, path = host.media_file(media_id)
    except KeyError:
        raise ControlError("unknown_media", f"media {media_id} is gone (deleted or past its retention)", 404) from None
    return web.FileResponse(path, headers={"Content-Type": mime_type})


@handler
async def call_recording(host: ControlHost, request: web.Request) -> web.Response:
    wav = await host.recording_wav(request.match_info["call_id"])
    if wav is None:
        raise ControlError("no_recording", "no media was recorded for this call (or it was forgotten)", 404)
    return web.Response(body=wav, content_type="audio/wav")


@handler
async def webhooks(host: ControlHost, request: web.Request) -> web.Response:
    limit = int(request.query.get("limit", "200"))
    return ok({"data": host.journal(call_id=request.query.get("call_id"), limit=limit)})


@handler
async def webhook_resend(host: ControlHost, request: web.Request) -> web.Response:
    """Deliver a journal entry again, as a new entry with the same body (signed afresh when attempted)."""
    entry = host.resend_webhook(int(request.match_info["outbox_id"]))
    if entry is None:
        raise ControlError("unknown_webhook", f"no webhook {request.match_info['outbox_id']} in the journal", 404)
    return ok(entry, 201)


@handler
async def webhook_faults(host: ControlHost, request: web.Request) -> web.Response:
    """The webhook fault plan (wacall.webhooks.faults): POST replaces it, DELETE clears it."""
    if request.method == "POST":
        try:
            return ok(host.webhook_faults(await body_of(request)))
        except ValueError as exc:
            raise ControlError("bad_fault", str(exc), 400) from None
    return ok(host.webhook_faults({} if request.method == "DELETE" else None))


@handler
async def limits(host: ControlHost, request: web.Request) -> web.Response:
    if request.method == "PATCH":
        data = await body_of(request)
        host.platform.limits = host.platform.limits.updated(**data)
    return ok(host.platform.limits.as_dict())


def number_doc(found, credentials: bool = False) -> dict:
    doc = found.to_doc()
    if not credentials:                                          # as Graph's GET settings
        doc.pop("sip_passwords", None)
    return doc


@handler
async def numbers(host: ControlHost, request: web.Request) -> web.Response:
    return ok({"data": [number_doc(n) for n in host.platform.numbers.values()]})


@handler
async def permissions(host: ControlHost, request: web.Request) -> web.Response:
    """What the platform remembers per business number and user: the call permission and its expiry, and
    the counts its limits are judged on (``?phone_number_id=``, ``?wa_id=`` narrow it)."""
    now, limits = host.clock.now(), host.platform.limits
    number, wa_id = request.query.get("phone_number_id"), request.query.get("wa_id")
    data = []
    for pair in list(host.platform.pairs.values()):
        if (number and pair.phone_number_id != number) or (wa_id and pair.wa_id != wa_id):
            continue
        expired = pair.permission == "temporary" and (pair.permission_expires_at or 0) <= now
        data.append({
            "phone_number_id": pair.phone_number_id, "wa_id": pair.wa_id,
            "permission": "expired" if expired else pair.permission, "expires_at": pair.permission_expires_at,
            "requests_24h": sum(1 for t in pair.permission_request_times if t > now - 86400),
            "requests_7d": sum(1 for t in pair.permission_request_times if t > now - 7 * 86400),
            "bic_connected_24h": sum(1 for t in pair.bic_connected_times if t > now - 86400),
            "unanswered_streak": pair.unanswered_streak, "window_opened_at": pair.window_opened_at,
            "window_open": pair.window_opened_at is not None
            and now - pair.window_opened_at < limits.service_window_seconds})
    return ok({"data": data, "now": now, "limits": {
        key: value for key, value in limits.as_dict().items()
        if key in ("permission_requests_per_24h", "permission_requests_per_7d", "temporary_permission_seconds",
                   "unanswered_nudge", "unanswered_revoke", "bic_connected_per_24h", "service_window_seconds")}})


def number_of(host: ControlHost, request: web.Request):
    found = host.platform.numbers.get(request.match_info["phone_number_id"])
    if found is None:
        raise ControlError("unknown_number", "no such phone number", 404)
    return found


@handler
async def number(host: ControlHost, request: web.Request) -> web.Response:
    found = number_of(host, request)
    if request.method == "PATCH":
        try:
            data = fields.check_number_fields(await body_of(request))
        except ValueError as exc:
            raise ControlError("bad_field", str(exc), 400) from None
        patch(host, found, data)
    return ok(number_doc(found, str(request.query.get("include_sip_credentials", "")).lower() == "true"))


@handler
async def app_record(host: ControlHost, request: web.Request) -> web.Response:
    """The app's permissions on its WABAs (e.g. take ``whatsapp_business_messaging`` away)."""
    found = host.platform.apps.get(request.match_info["app_id"])
    if found is None:
        raise ControlError("unknown_app", f"no app {request.match_info['app_id']}", 404)
    if request.method == "PATCH":
        data = await body_of(request)
        permissions = data.get("permissions", found.permissions)
        proof = data.get("require_appsecret_proof", found.require_appsecret_proof)
        if (set(data) - {"permissions", "require_appsecret_proof"} or not isinstance(permissions, list)
                or not all(isinstance(p, str) for p in permissions) or not isinstance(proof, bool)):
            raise ControlError("bad_field", "only permissions (a list of strings) and require_appsecret_proof "
                                            "(true/false) can be set", 400)
        patch(host, found, {"permissions": permissions, "require_appsecret_proof": proof})
    return ok({"id": found.id, "name": found.name, "permissions": found.permissions, "waba_ids": found.waba_ids,
               "require_appsecret_proof": found.require_appsecret_proof})


@handler
async def sip_hosts(host: ControlHost, request: web.Request) -> web.Response:
    """The gateway's hosts mapping: business SIP hostnames resolved to loopback addresses."""
    hosts = host.sip_hosts(None)
    if hosts is None:
        raise ControlError("no_sip", "the SIP gateway is not running (--sip-port -1)", 409)
    if request.method == "POST":
        data = await body_of(request)
        try:
            hosts = host.sip_hosts(data)
        except OSError as exc:
            raise ControlError("not_loopback", str(exc), 400) from None
    return ok({"hosts": hosts})


@handler
async def number_restrictions(host: ControlHost, request: web.Request) -> web.Response:
    found = number_of(host, request)
    data = await body_of(request)
    if not 0 <= float(data.get("seconds", 0)) <= 1e10:          # also refuses nan and inf
        raise ControlError("bad_seconds", "seconds must be between 0 and 1e10", 400)
    restriction = host.apply(lambda: host.platform.add_restriction(
        found, data.get("type", "RESTRICTED_BUSINESS_INITIATED_CALLING"), float(data.get("seconds", 7 * 86400)),
        data.get("reason")))
    return ok(restriction, 201)


@handler
async def faults(host: ControlHost, request: web.Request) -> web.Response:
    if request.method == "POST":
        data = await body_of(request)
        for key, value in data.items():
            if key not in host.faults or not fields.is_number(value, integer=True) or value < 0:
                raise ControlError("bad_fault", f"known faults: {', '.join(host.faults)} (counts)", 400)
            host.faults[key] = value
    return ok(dict(host.faults))


def control_routes(app: web.Application) -> None:
    """Register the routes; their handlers use the :class:`ControlHost` in ``app[CONTROL]``."""
    r = app.router
    r.add_get("/_wacall/health", health)
    r.add_get("/_wacall/info", info)
    r.add_post("/_wacall/reset", reset)
    r.add_get("/_wacall/clock", clock)
    r.add_post("/_wacall/clock/advance", clock_advance)
    r.add_route("GET", "/_wacall/users", users)
    r.add_route("POST", "/_wacall/users", users)
    r.add_route("GET", "/_wacall/users/{wa_id}", user)
    r.add_route("PATCH", "/_wacall/users/{wa_id}", user)
    r.add_post("/_wacall/users/{wa_id}/messages", user_messages)
    r.add_post("/_wacall/users/{wa_id}/number_change", user_number_change)
    r.add_route("GET", "/_wacall/wabas/{waba_id}", waba)
    r.add_route("PATCH", "/_wacall/wabas/{waba_id}", waba)
    r.add_post("/_wacall/users/{wa_id}/calls", user_calls)
    r.add_post("/_wacall/users/{wa_id}/permission_replies", user_permission_replies)
    r.add_get("/_wacall/calls", calls)
    r.add_get("/_wacall/calls/{call_id}", call)
    r.add_post("/_wacall/calls/{call_id}/dtmf", call_dtmf)
    r.add_post("/_wacall/calls/{call_id}/voicemail", call_voicemail)
    r.add_get("/_wacall/calls/{call_id}/recording.wav", call_recording)
    r.add_get("/_wacall/calls/{call_id}/media/{media_id}", call_media)
    r.add_post("/_wacall/calls/{call_id}/{action}", call_action)
    r.add_get("/_wacall/webhooks", webhooks)
    for method in ("GET", "POST", "DELETE"):
        r.add_route(method, "/_wacall/webhooks/faults", webhook_faults)
    r.add_post(r"/_wacall/webhooks/{outbox_id:\d{1,18}}/resend", webhook_resend)
    r.add_route("GET", "/_wacall/limits", limits)
    r.add_route("PATCH", "/_wacall/limits", limits)
    r.add_get("/_wacall/numbers", numbers)
    r.add_get("/_wacall/permissions", permissions)
    r.add_route("GET", "/_wacall/numbers/{phone_number_id}", number)
    r.add_route("PATCH", "/_wacall/numbers/{phone_number_id}", number)
    r.add_post("/_wacall/numbers/{phone_number_id}/restrictions", number_restrictions)
    r.add_route("GET", "/_wacall/apps/{app_id}", app_record)
    r.add_route("PATCH", "/_wacall/apps/{app_id}", app_record)
    r.add_route("GET", "/_wacall/sip/hosts", sip_hosts)
    r.add_route("POST", "/_wacall/sip/hosts", sip_hosts)
    r.add_route("GET", "/_wacall/faults", faults)
    r.add_route("POST", "/_wacall/faults", faults)
    r.add_route("*", r"/_wacall{tail:(?s:/.*)?}", no_route)   # last: unknown path or method, before Graph's catch-all


@handler
async def no_route(host: ControlHost, request: web.Request) -> web.Response:
    raise ControlError("no_route", f"no control route {request.method} {request.path}", 404)
