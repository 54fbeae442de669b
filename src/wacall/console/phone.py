"""The console's phone: a browser takes a virtual user's place on a call, with its microphone and speaker.

The page (``/_wacall/console/phone``: the console's shell, filled by ``console/static/phone.js``) places a user's call to a
business, or takes a business-initiated call ringing on the user's phone. Its audio travels as a second
WebRTC leg on wacall's own relay, bridged to the call's leg (``wacall.media.bridge``): wacall offers the
browser the SDP Meta's relay offers a business (ICE-lite, DTLS-SRTP, Opus, RFC 4733), the browser
answers, and from then on the browser's microphone is the user's and the browser plays what the user
hears. Keys, answering and hanging up go through the control API like any other user action
(``/_wacall/calls/{call_id}/dtmf|answer|hangup``).

The page's signalling, JSON under ``/_wacall/console/phone`` (through the guard like all of ``/_wacall``):

- ``POST /_wacall/console/phone/calls`` ``{"wa_id", "to", "entry_point"?, "payload"?}``: the user calls
  the business (as ``POST /_wacall/users/{wa_id}/calls``) with the browser in its place; answers
  ``{"call_id", "state", "sdp"}``, ``sdp`` being the offer for the browser;
- ``POST /_wacall/console/phone/calls/{call_id}/browser``: the browser takes the user's place on a call in
  progress (a business-initiated call still ringing, typically); answers ``{"call_id", "state", "sdp"}``;
- ``POST /_wacall/console/phone/calls/{call_id}/browser/answer`` ``{"sdp"}``: the browser's answer;
- ``DELETE /_wacall/console/phone/calls/{call_id}/browser``: the browser leaves (the user goes silent).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web

from ..domain.model import ENDED
from ..domain.platform import Platform
from ..domain.sdp import LocalMedia, Negotiated, SdpError, build_meta_offer, negotiate, validate_business_sdp
from ..control.routes import body_of, handler, ok, place_user_call
from ..domain.state import ControlError
from .routes import page

log = logging.getLogger("wacall.console")
MAX_OFFERS = 1000                 # offers waiting for the browser's answer (one per call; the oldest go)


@dataclass(frozen=True)
class PhoneHost:
    """What the phone may do with the running emulator (built by ``wacall.server``)."""

    platform: Platform
    apply: Callable[[Callable[[], Any]], Any]                 # the one write path
    place_call: Callable[[Callable[[str, Any], Any]], Awaitable[Any]]   # legs.LegOwner.place
    attach_browser: Callable[[str], Awaitable[LocalMedia | None]]      # the media plane's (wacall.media.bridge)
    connect_browser: Callable[[str, Negotiated], bool]
    detach_browser: Callable[[str], None]


PHONE = web.AppKey("phone", PhoneHost)
_OFFERS = web.AppKey("phone_offers", dict)


def _handler(fn):
    return handler(fn, PHONE)


async def _browser_offer(host: PhoneHost, request: web.Request, call_id: str) -> web.Response:
    """A leg for the browser beside the call's, and Meta's offer for it."""
    local = await host.attach_browser(call_id)
    call = host.platform.call(call_id)
    if local is None or call is None or call.state == ENDED:
        raise ControlError("no_media", f"call {call_id} has no media leg to join (it has ended)", 409)
    offers: dict = request.app[_OFFERS]
    offers.pop(call_id, None)
    offers[call_id] = offer = build_meta_offer(local)     # DTLS-SRTP, Opus only: passed through to the call
    while len(offers) > MAX_OFFERS:
        offers.pop(next(iter(offers)))
    return ok({"call_id": call_id, "state": call.state, "sdp": offer}, 201)


@_handler
async def place(host: PhoneHost, request: web.Request) -> web.Response:
    data = await body_of(request)
    call = await place_user_call(host, str(data.get("wa_id", "")), data)
    return await _browser_offer(host, request, call.id)


@_handler
async def join(host: PhoneHost, request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    if host.platform.call(call_id) is None:
        raise ControlError("unknown_call", f"no call {call_id}", 404)
    if request.method == "DELETE":
        host.detach_browser(call_id)
        request.app[_OFFERS].pop(call_id, None)
        return ok({"success": True})
    return await _browser_offer(host, request, call_id)


@_handler
async def answer(host: PhoneHost, request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    offer = request.app[_OFFERS].get(call_id)
    if offer is None:
        raise ControlError("no_offer", f"no browser offer is waiting for call {call_id}: POST "
                                       f"/_wacall/console/phone/calls/{call_id}/browser first", 409)
    sdp = (await body_of(request)).get("sdp")
    if not isinstance(sdp, str) or not sdp:
        raise ControlError("bad_sdp", "sdp must be the browser's answer (a string)", 400)
    try:                   # Meta's rules for an answer (sha-256 fingerprint, setup active or passive...)
        negotiated = negotiate(offer, validate_business_sdp(sdp, key_exchange="DTLS", role="answer"), "DTLS")
    except SdpError as exc:
        raise ControlError("bad_sdp", f"the browser's answer is not usable SDP: {exc}", 400) from None
    if "opus" not in negotiated.payload_types or not (negotiated.remote_ufrag and negotiated.remote_pwd
                                                       and negotiated.remote_fingerprint):
        raise ControlError("bad_sdp", "the browser's answer needs Opus, ICE credentials and a DTLS fingerprint",
                           400)
    if not host.connect_browser(call_id, negotiated):
        raise ControlError("no_media", f"call {call_id} has no browser leg any more", 409)
    request.app[_OFFERS].pop(call_id, None)
    host.apply(lambda: host.platform.media_note(call_id, "browser_joined", dtls_role=negotiated.dtls_role))
    return ok({"call_id": call_id, "connected": True})


def add_phone_routes(app: web.Application, host: PhoneHost) -> None:
    """Register the phone's page and signalling (before the control API's catch-all for ``/_wacall``);
    its script and stylesheet are the console's static files."""
    app[PHONE] = host
    app[_OFFERS] = {}
    r = app.router
    r.add_get("/_wacall/console/phone", page("phone", "Phone"))     # the console's shell; phone.js fills it
    r.add_post("/_wacall/console/phone/calls", place)
    r.add_route("POST", "/_wacall/console/phone/calls/{call_id}/browser", join)
    r.add_route("DELETE", "/_wacall/console/phone/calls/{call_id}/browser", join)
    r.add_post("/_wacall/console/phone/calls/{call_id}/browser/answer", answer)


__all__ = ["PhoneHost", "PHONE", "add_phone_routes"]
