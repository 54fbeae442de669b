"""The Graph API surface: ``/v{major}.{minor}/{object-id}/{edge}`` the way graph.facebook.com
answers it, plus seed 000's provider route ``/calling/settings/{phone_number_id}``.

This layer only translates: it reads parameters the ways Graph accepts them (JSON body, form body,
query string), authenticates the bearer token, finds the object the token may see, calls the
platform, and writes Meta's JSON or error envelope. It never answers with a 500: anything
unexpected becomes Graph's code 1. What it may do with the running emulator is :class:`GraphHost`.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable
from urllib.parse import parse_qsl

from aiohttp import web

from .. import codec
from ..domain.errors import GraphError, MediaUnavailable
from ..domain.model import App, PhoneNumber, Waba
from ..domain.platform import Platform
from ..domain.state import unsupported
from .errors import error_response, graph_json
from .versions import GraphVersions
from .media import DOWNLOAD_PATH, MediaHost, Upload, download_url, file_response, read_upload, store_upload

log = logging.getLogger("wacall.graph")
MESSAGING = "whatsapp_business_messaging"
MANAGEMENT = "whatsapp_business_management"


@dataclass(frozen=True)
class GraphHost:
    """What the Graph API may do with the running emulator (built by ``wacall.server``)."""

    platform: Platform                                       # read: lookups and views
    apply: Callable[[Callable[[], Any]], Any]                # the one write path: run a domain operation, commit
    place_call: Callable[[Callable[[str, Any], Any]], Awaitable[Any]]   # legs.LegOwner.place: a new call with its leg
    take_fault: Callable[[str], bool]                        # True (and counted) when an injected fault is due
    verify_callback: Callable[[str, str], Awaitable[None]]   # Meta's hub.challenge handshake, or GraphError 2200
    media: MediaHost | None = None                           # the Media API's files (wacall.store.mediafiles)
    versions: GraphVersions = field(default_factory=GraphVersions)   # [graph]: the versions served


GRAPH = web.AppKey("graph", GraphHost)


class Request:
    """One Graph request, parsed."""

    def __init__(self, host: GraphHost, http: web.Request, params: dict[str, Any], body: Any) -> None:
        self.host = host
        self.platform = host.platform
        self.http = http
        self.params = params       # query string merged with a form or JSON-object body
        self.body = body           # the JSON body as sent (may be any JSON value) or the form dict
        self.app: App | None = None
        self.app_token = False     # authenticated with the app access token ("{app_id}|{app_secret}")
        self.upload: Upload | None = None   # a multipart body's file (POST /{phone_number_id}/media)

    def param(self, name: str) -> Any:
        return self.params.get(name)


async def parse(host: GraphHost, http: web.Request) -> Request:
    params: dict[str, Any] = dict(http.query)
    body: Any = None
    if http.content_type == "multipart/form-data" and host.media is not None:
        upload = await read_upload(http, host.media)        # the file streamed to disk, the fields kept
        params.update(upload.params)
        req = Request(host, http, params, dict(upload.params))
        req.upload = upload
        return req
    raw = await http.read()
    if raw:
        ctype = http.content_type
        if ctype == "application/x-www-form-urlencoded":
            try:
                body = dict(parse_qsl(raw.decode("utf-8"), keep_blank_values=True))
            except UnicodeDecodeError:
                raise GraphError(100, "The request body is not valid UTF-8.") from None
        else:
            try:
                body = codec.loads(raw)
                if b"\\u" in raw:                   # lone surrogates ("\ud800", only ever escaped) could be
                    codec.dumps(body).encode("utf-8")   # neither stored nor echoed: refused
            except (ValueError, RecursionError):   # bad JSON or UTF-8, an over-long int, too-deep nesting
                raise GraphError(100, "The request body could not be parsed as JSON.") from None
        if isinstance(body, dict):
            params.update(body)
            body.pop("appsecret_proof", None)    # a Graph-wide parameter (authenticate), not the edge's
    return Request(host, http, params, body)


def authenticate(req: Request) -> App:
    header = req.http.headers.get("Authorization", "")
    token = None
    if header[:7].lower() == "bearer ":
        token = header[7:].strip()
    token = token or req.http.headers.get("D360-API-KEY") or req.params.get("access_token")
    if not token:
        raise GraphError(104)
    app = req.platform.app_for_token(str(token))
    if app is None:
        raise GraphError(190)
    req.app = app
    req.app_token = str(token) == app.app_token
    check_appsecret_proof(req, app, str(token))
    return app


def check_appsecret_proof(req: Request, app: App, token: str) -> None:
    """``appsecret_proof`` = hex HMAC-SHA256 of the access token keyed with the app secret: checked when
    sent; required for user/system-user tokens when the app requires it (Meta's "Require App Secret",
    which an app token, holding the secret itself, satisfies)."""
    proof = req.param("appsecret_proof")
    if proof is None:
        if app.require_appsecret_proof and not req.app_token:
            raise GraphError(100, message="API calls from the server require an appsecret_proof argument",
                             error_type="GraphMethodException", bare_message=True)
        return
    expected = hmac.new(app.secret.encode(), token.encode(), hashlib.sha256).hexdigest()
    if not isinstance(proof, str) or not hmac.compare_digest(proof.encode(), expected.encode()):
        raise GraphError(100, message="Invalid appsecret_proof provided in the API argument",
                         error_type="GraphMethodException", bare_message=True)


def require(app: App, permission: str) -> None:
    if permission not in app.permissions:
        raise GraphError(10, f"Application does not have permission for this action: it needs {permission}.")


# -- phone number edges ----------------------------------------------------------------------------
async def number_settings(req: Request, number: PhoneNumber) -> dict:
    require(req.app, MANAGEMENT)
    if req.http.method == "GET":
        include = str(req.param("include_sip_credentials") or "").lower() == "true"
        return req.platform.get_settings(number, include)
    return req.host.apply(lambda: req.platform.update_settings(req.app, number, req.body))


async def number_calls(req: Request, number: PhoneNumber) -> dict:
    require(req.app, MESSAGING)
    body = req.body
    try:
        if not req.platform.wants_new_leg(number, body):
            return req.host.apply(lambda: req.platform.call_action(req.app, number, body))
        if req.host.take_fault("connect_error"):
            raise GraphError(138004)
        try:
            return await req.host.place_call(lambda call_id, leg: req.platform.call_action(
                req.app, number, body, new_call_id=call_id, leg=leg))
        except MediaUnavailable:
            raise GraphError(2, "Service temporarily unavailable: the media relay has no room for a new call "
                                "right now. Retry the request.") from None
    except GraphError as error:
        call_ref = body.get("call_id") if isinstance(body, dict) else None
        existing = req.platform.call(call_ref)        # live or ended (None for a non-string call_id)
        if existing is not None and existing.phone_number_id == number.id:
            code, details = error.code, error.details
            req.host.apply(lambda: req.platform.note(existing, "api_error", action=body.get("action"),
                                                     code=code, details=details))
        raise


async def number_call_permissions(req: Request, number: PhoneNumber) -> dict:
    require(req.app, MESSAGING)
    user_wa_id = req.param("user_wa_id")
    if user_wa_id is not None and (isinstance(user_wa_id, bool) or not isinstance(user_wa_id, (str, int))):
        raise GraphError(100, "Param user_wa_id must be a phone number string.")
    recipient = req.param("recipient")     # a BSUID or parent BSUID instead of user_wa_id
    return req.host.apply(lambda: req.platform.call_permissions_view(req.app, number, user_wa_id,
                                                                     recipient=recipient))


async def number_messages(req: Request, number: PhoneNumber) -> dict:
    require(req.app, MESSAGING)
    return req.host.apply(lambda: req.platform.send_message(req.app, number, req.body))


async def number_media(req: Request, number: PhoneNumber) -> dict:
    """``POST /{phone_number_id}/media``: a multipart upload (``file``, ``type``, ``messaging_product``,
    optional ``use_case``): ``{"id": media_id}``."""
    require(req.app, MESSAGING)
    if req.host.media is None:
        raise GraphError(2, "The Media API is not available on this instance.")
    if req.upload is None:
        if req.param("messaging_product") != "whatsapp":
            raise GraphError(100, "The parameter messaging_product is required and must be 'whatsapp'.",
                             message="The parameter messaging_product is required")
        raise GraphError(100, "The parameter file is required (send the upload as multipart/form-data).",
                         message="The parameter file is required")
    upload, media = req.upload, req.host.media
    return store_upload(media, upload, number.id, req.params)


async def media_node(req: Request, media_id: str) -> dict:
    """``GET /{media_id}``: the media's URL (valid 5 minutes), type, hash and size; ``DELETE /{media_id}``."""
    require(req.app, MESSAGING)
    method = req.http.method.lower()
    media = req.platform.media_for(req.app, media_id, method)
    number_id = req.param("phone_number_id")
    if number_id is not None and str(number_id) != media.phone_number_id:
        raise GraphError(100, f"Media {media_id} does not belong to phone number {number_id}.")
    if req.http.method == "DELETE":
        req.host.apply(lambda: req.platform.delete_media(media))
        req.host.media.delete(media.id)
        return {"success": True}
    return req.platform.media_view(media, download_url(req.http, req.host.media, media.id))


async def number_node(req: Request, number: PhoneNumber) -> dict:
    if req.http.method == "POST":
        require(req.app, MANAGEMENT)
        config = req.param("webhook_configuration")
        if isinstance(config, str):
            try:
                config = codec.loads(config)
            except codec.JSONDecodeError:
                raise GraphError(100, "Param webhook_configuration must be a JSON object.") from None
        uri = config.get("override_callback_uri") if isinstance(config, dict) else None
        if uri:
            await req.host.verify_callback(str(uri), str(config.get("verify_token", "")))
        req.host.apply(lambda: req.platform.set_number_override(req.app, number, {"webhook_configuration": config}))
        return {"success": True}
    out = {"id": number.id, "display_phone_number": format_number(number.display_phone_number),
           "verified_name": number.verified_name, "quality_rating": "GREEN",
           "platform_type": "CLOUD_API", "code_verification_status": "VERIFIED",
           "messaging_limit_tier": tier_name(number.messaging_limit), "is_test_number": number.is_test_number}
    if number.override_callback:
        out["webhook_configuration"] = {"phone_number": number.override_callback["override_callback_uri"]}
    return filter_fields(out, req.param("fields"))


def format_number(digits: str) -> str:
    import phonenumbers
    try:
        return phonenumbers.format_number(phonenumbers.parse("+" + digits),
                                          phonenumbers.PhoneNumberFormat.INTERNATIONAL)
    except phonenumbers.NumberParseException:
        return "+" + digits


def tier_name(limit: int) -> str:
    for bound, name in ((250, "TIER_250"), (1000, "TIER_1K"), (2000, "TIER_2K"), (10000, "TIER_10K"),
                        (100000, "TIER_100K")):
        if limit <= bound:
            return name
    return "TIER_UNLIMITED"


def filter_fields(obj: dict, fields: Any) -> dict:
    if not fields or not isinstance(fields, str):
        return obj
    wanted = {f.strip().split(".")[0] for f in fields.split(",")} | {"id"}
    return {k: v for k, v in obj.items() if k in wanted}


# -- WABA edges ----------------------------------------------------------------------------------
ANALYTICS_ARG = re.compile(r"\.(start|end|granularity)\(([^)]*)\)")


async def waba_node(req: Request, waba: Waba) -> dict:
    if req.http.method != "GET":
        raise unsupported(waba.id, req.http.method.lower())
    fields = str(req.param("fields") or "id,name")
    out: dict[str, Any] = {"id": waba.id}
    for asked in re.split(r",(?![^(]*\))", fields):
        asked = asked.strip()
        name = asked.split(".")[0]
        if name == "call_analytics":
            args = {k: v for k, v in ANALYTICS_ARG.findall(asked)}
            try:
                start = float(args["start"]) if "start" in args else None
                end = float(args["end"]) if "end" in args else None
                if any(v is not None and not abs(v) < 1e18 for v in (start, end)):   # nan, inf, absurd
                    raise ValueError
            except ValueError:
                raise GraphError(100, "call_analytics start and end must be Unix timestamps.") from None
            out["call_analytics"] = req.platform.call_analytics(waba.id, start, end)
        elif name in ("name", "currency", "timezone_id"):
            out[name] = getattr(waba, name)
        elif name and name != "id":
            raise GraphError(100, f"Tried accessing nonexisting field ({name}) on node type "
                                  "(WhatsAppBusinessAccount)")
    return out


async def waba_phone_numbers(req: Request, waba: Waba) -> dict:
    numbers = [n for n in req.platform.numbers.values() if n.waba_id == waba.id]
    return {"data": [{"id": n.id, "display_phone_number": format_number(n.display_phone_number),
                      "verified_name": n.verified_name, "quality_rating": "GREEN"} for n in numbers]}


async def waba_templates(req: Request, waba: Waba) -> dict:
    require(req.app, MANAGEMENT)
    if req.http.method == "POST":
        return req.host.apply(lambda: req.platform.create_template(waba.id, req.body))
    return {"data": [{"id": t.id, "name": t.name, "language": t.language, "category": t.category,
                      "status": t.status, "components": t.components}
                     for t in req.platform.templates.values() if t.waba_id == waba.id]}


async def waba_subscribed_apps(req: Request, waba: Waba) -> dict:
    require(req.app, MANAGEMENT)
    app, method = req.app, req.http.method
    if method == "GET":
        data = []
        for app_id in waba.subscribed_apps:
            sub = req.platform.apps.get(app_id)
            entry: dict = {"whatsapp_business_api_data": {
                "id": app_id, "name": sub.name if sub else app_id,
                "link": f"https://www.facebook.com/games/?app_id={app_id}"}}
            if waba.app_overrides.get(app_id):
                entry["override_callback_uri"] = waba.app_overrides[app_id]["override_callback_uri"]
            data.append(entry)
        return {"data": data}
    if method == "DELETE":
        req.host.apply(lambda: req.platform.unsubscribe_waba(app, waba))
        return {"success": True}
    uri = req.param("override_callback_uri")
    override = None
    if uri:
        if not isinstance(uri, str) or not re.match(r"^https?://", uri):
            raise GraphError(100, "Param override_callback_uri must be a URL.")
        verify_token = str(req.param("verify_token") or "")
        await req.host.verify_callback(uri, verify_token)
        override = {"override_callback_uri": uri, "verify_token": verify_token}
    req.host.apply(lambda: req.platform.subscribe_waba(app, waba, override))
    return {"success": True}


# -- app edges -----------------------------------------------------------------------------------
def parse_fields(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        value = value.strip()
        if value.startswith("["):
            try:
                value = codec.loads(value)
            except codec.JSONDecodeError:
                raise GraphError(100, "Param fields must be a comma-separated list.") from None
        else:
            return [f.strip() for f in value.split(",") if f.strip()]
    if isinstance(value, list) and all(isinstance(f, str) for f in value):
        return value
    raise GraphError(100, "Param fields must be a comma-separated list of strings.")


async def app_subscriptions(req: Request, app: App) -> dict:
    if req.app.id != app.id:
        raise unsupported(app.id, req.http.method.lower())
    method = req.http.method
    if method == "GET":
        return {"data": [{"object": obj, "callback_url": sub.get("callback_url"), "active": True,
                          "fields": [{"name": f, "version": "v23.0"} for f in sub.get("fields", [])]}
                         for obj, sub in app.subscriptions.items()]}
    obj = req.param("object")
    if method == "DELETE":
        unsubscribe = set(parse_fields(req.param("fields")))
        req.host.apply(lambda: req.platform.unsubscribe_app(app, str(obj) if obj else None, unsubscribe))
        return {"success": True}
    if not obj:
        raise GraphError(100, "The parameter object is required.")
    if obj not in ("whatsapp_business_account", "application", "page", "user", "permissions"):
        raise GraphError(100, f"Param object must be one of {{whatsapp_business_account, application, page, "
                              f"user, permissions}} - got \"{obj}\".")
    callback_url = req.param("callback_url")
    verify_token = req.param("verify_token")
    fields = parse_fields(req.param("fields"))
    existing = app.subscriptions.get(str(obj)) or {}
    if not callback_url and not existing.get("callback_url"):
        raise GraphError(100, "The parameter callback_url is required.")
    if callback_url:
        if not isinstance(callback_url, str) or not re.match(r"^https?://", callback_url):
            raise GraphError(100, "Param callback_url must be a valid URL.")
        if not verify_token:
            raise GraphError(100, "The parameter verify_token is required.")
        await req.host.verify_callback(callback_url, str(verify_token))
    req.host.apply(lambda: req.platform.subscribe_app(app, str(obj), callback_url, verify_token, fields))
    return {"success": True}


NUMBER_EDGES = {"": number_node, "settings": number_settings, "calls": number_calls,
                "call_permissions": number_call_permissions, "messages": number_messages, "media": number_media}
MEDIA_EDGES = {"": media_node}
WABA_EDGES = {"": waba_node, "message_templates": waba_templates, "subscribed_apps": waba_subscribed_apps,
              "phone_numbers": waba_phone_numbers}
APP_EDGES = {"subscriptions": app_subscriptions}
ALLOWED = {
    ("number", ""): {"GET", "POST"}, ("number", "settings"): {"GET", "POST"}, ("number", "calls"): {"POST"},
    ("number", "call_permissions"): {"GET"}, ("number", "messages"): {"POST"}, ("number", "media"): {"POST"},
    ("media", ""): {"GET", "DELETE"},
    ("waba", ""): {"GET"}, ("waba", "message_templates"): {"GET", "POST"},
    ("waba", "subscribed_apps"): {"GET", "POST", "DELETE"}, ("waba", "phone_numbers"): {"GET"},
    ("app", "subscriptions"): {"GET", "POST", "DELETE"},
}


async def dispatch(req: Request, object_id: str, edge: str) -> dict:
    app = authenticate(req)
    platform = req.platform
    method = req.http.method.lower()
    if object_id in platform.numbers:
        kind, obj, edges = "number", platform.number_for(app, object_id, method), NUMBER_EDGES
    elif object_id in platform.wabas:
        kind, obj, edges = "waba", platform.waba_for(app, object_id, method), WABA_EDGES
    elif object_id in platform.apps:
        kind, obj, edges = "app", platform.apps[object_id], APP_EDGES
    elif req.host.media is not None and platform.media_record(object_id) is not None:
        kind, obj, edges = "media", object_id, MEDIA_EDGES
    else:
        raise unsupported(object_id, method)
    if kind != "app" and req.app_token:
        raise GraphError(200, "An app access token cannot be used on WhatsApp Business objects: use a system "
                              "user or user access token with whatsapp_business_messaging / "
                              "whatsapp_business_management.")
    if edge not in edges:
        node = {"number": "WhatsAppBusinessPhoneNumber", "waba": "WhatsAppBusinessAccount",
                "app": "Application", "media": "WhatsAppBusinessMedia"}[kind]
        raise GraphError(100, f"Tried accessing nonexisting field ({edge}) on node type ({node})",
                         message=f"Tried accessing nonexisting field ({edge}) on node type ({node})")
    if req.http.method not in ALLOWED[(kind, edge)]:
        raise unsupported(object_id, method)
    return await edges[edge](req, obj)


def app_access_token(req: Request) -> dict:
    """``GET /oauth/access_token?grant_type=client_credentials&client_id=&client_secret=``: Meta's app
    access token (``{app_id}|{app_secret}``), which SDKs fetch before ``POST /{app_id}/subscriptions``."""
    if req.param("grant_type") != "client_credentials":
        raise GraphError(100, "Only grant_type=client_credentials (app access tokens) is supported.")
    app = req.platform.apps.get(str(req.param("client_id") or ""))
    if app is None:
        raise GraphError(101, message="Error validating application. Invalid application ID.")
    if str(req.param("client_secret") or "") != app.secret:
        raise GraphError(1, message="Error validating client secret.", http_status=400)
    return {"access_token": app.app_token, "token_type": "bearer"}


async def download(http: web.Request) -> web.StreamResponse:
    """A media URL from ``GET /{media_id}``: the bytes, with the bearer token of an app that may see the
    media, within 5 minutes (virtual clock) of the ``GET``; afterwards 404 (fetch a fresh URL)."""
    host = http.app[GRAPH]
    req = None
    try:
        if host.media is None:
            raise GraphError(100, "Unknown path components", message="Unknown path components")
        if http.method not in ("GET", "HEAD"):
            raise GraphError(100, f"Unsupported {http.method.lower()} request: a media URL is only read.")
        req = await parse(host, http)
        app = authenticate(req)
        media_id, ext, hash_ = (str(http.query.get(k, "")) for k in ("mid", "ext", "hash"))
        gone = GraphError(100, "The media URL has expired or is not valid: fetch a new one with GET /{media_id}.",
                          message="Media URL expired or invalid", http_status=404)
        if not host.media.url_valid(media_id, ext, hash_):
            raise gone
        try:
            host.platform.media_for(app, media_id)
            return file_response(host.media, media_id)
        except GraphError:
            raise gone from None
    except GraphError as error:
        return error_response(error)
    except Exception:
        log.exception("unexpected error on %s %s", http.method, http.path)
        return error_response(GraphError(1))
    finally:
        if req is not None and req.upload is not None:
            req.upload.discard()


async def handle(http: web.Request) -> web.Response:
    host = http.app[GRAPH]
    req = None
    try:
        path = http.match_info.get("path", "")
        parts = [p for p in path.split("/") if p]
        served = host.versions.served(http.match_info.get("version"))   # or Graph's refusal (retired, unknown)
        req = await parse(host, http)
        if "object_id" in http.match_info:              # /calling/settings/{id} (seed 000's provider route)
            result = await dispatch(req, http.match_info["object_id"], "settings")
        elif parts == ["oauth", "access_token"] and http.method == "GET":
            result = app_access_token(req)
        elif not parts or len(parts) > 2:
            raise GraphError(100, f"Unknown path components: /{path}", message="Unknown path components")
        else:
            result = await dispatch(req, parts[0], parts[1] if len(parts) > 1 else "")
        response = graph_json(result)
        response.headers["facebook-api-version"] = served
        return response
    except GraphError as error:
        return error_response(error)
    except web.HTTPRequestEntityTooLarge:
        return error_response(GraphError(100, "The request body is too large."))
    except Exception:
        log.exception("unexpected error on %s %s", http.method, http.path)
        return error_response(GraphError(1))
    finally:
        if req is not None and req.upload is not None:
            req.upload.discard()       # an upload no edge kept (any error, a wrong edge): its temporary file


def graph_routes(app: web.Application) -> None:
    """Register the routes; their handlers use the :class:`GraphHost` in ``app[GRAPH]``."""
    app.router.add_route("*", DOWNLOAD_PATH, download)          # media URLs (Meta's lookaside.fbsbx.com)
    app.router.add_route("*", "/calling/settings/{object_id}", handle)
    app.router.add_route("*", r"/{version:v[^/]*}/calling/settings/{object_id}", handle)
    app.router.add_route("*", r"/{version:v[^/]*}/{path:(?s:.*)}", handle)   # (?s): paths may hold %0A
    app.router.add_route("*", r"/{version:v[^/]*}", handle)
    app.router.add_route("*", r"/{path:(?s:.*)}", handle)           # unversioned requests, like Graph's default version
