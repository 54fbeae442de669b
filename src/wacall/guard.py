"""Who may talk to wacall's HTTP port (the Graph API and the control API), and what a request that
HTTP itself refuses gets back. See docs/fidelity.md, "Exposure".

- **Host** (DNS rebinding): a request naming a ``Host`` that is neither a loopback address
  (127.0.0.0/8, ::1), ``localhost``, the address wacall listens on, ``graph.facebook.com`` (SDKs
  rerouted to wacall keep it), nor a configured name (``--allowed-host``, ``[server] allowed_hosts``;
  ``*`` allows any) is refused.
- **Origin** (cross-site requests): a browser's ``Origin`` must be wacall's own origin,
  ``http://<Host>``; any other (``null`` too) is refused, and so is a state-changing request a browser
  marks ``Sec-Fetch-Site: cross-site``/``same-site`` without an Origin. Server-to-server clients
  (pywa/httpx, curl, aiohttp) send neither header and are not affected.
- **JSON only** for state-changing control requests (POST/PATCH/PUT/DELETE under ``/_wacall``): a
  body needs ``Content-Type: application/json``, so no "simple" cross-site form or text/plain POST
  can reset wacall or move its clock. A request without a body may carry no type or any type but
  the three a browser sends cross-site without asking (text/plain, form-urlencoded, multipart).
- **Control token**: when one is configured (required when listening beyond loopback), every control
  request carries ``Authorization: Bearer <token>``.
- **Unparseable requests** (request line or a header over 8190 bytes, bad syntax) get Meta's Graph
  error envelope, or the control API's error shape when the request line names ``/_wacall``, instead
  of aiohttp's plain-text 400 and a logged traceback.

Graph refusals use code 200 (HTTP 403) for Host and Origin, code 100 (HTTP 400) for unparseable
requests; control refusals use ``{"error": {"reason", "detail"}}``.
"""

from __future__ import annotations

import hmac
import ipaddress
import logging
import re
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from aiohttp import web
from aiohttp.http_exceptions import LineTooLong
from aiohttp.web_protocol import RequestHandler

from . import codec
from .domain.errors import GraphError
from .graph.errors import error_response

log = logging.getLogger("wacall.http")
STATE_CHANGING = frozenset({"POST", "PATCH", "PUT", "DELETE"})
# what a browser may send cross-site without a CORS preflight (the Fetch standard's "simple" types)
CORS_SAFELISTED = frozenset({"text/plain", "application/x-www-form-urlencoded", "multipart/form-data"})
CONTROL_PREFIX = "/_wacall"
# the control token as a browser keeps it (set by the console's entry page from ?token=; SameSite=Strict),
# one cookie per port: browsers keep cookies per host, not per port, and wacalls side by side (or a restart
# with another token) must not answer each other's
TOKEN_COOKIE = "wacall_control_token"
CONSOLE_ENTRY = CONTROL_PREFIX + "/console"


def token_cookie(request: web.BaseRequest) -> str:
    """The name of this wacall's token cookie: ``wacall_control_token_<port>``."""
    port = request.url.port or (443 if request.url.scheme == "https" else 80)
    return f"{TOKEN_COOKIE}_{port}"


def is_control(path: str) -> bool:
    return path == CONTROL_PREFIX or path.startswith(CONTROL_PREFIX + "/")


def host_name(value: str) -> str | None:
    """The host part of a ``Host`` header (no port, no brackets, lower case, no trailing dot)."""
    value = value.strip().lower()
    if value.startswith("["):                       # [::1]:8080
        end = value.find("]")
        if end < 0 or not re.fullmatch(r"(:\d{1,5})?", value[end + 1:]):
            return None
        return value[1:end] or None
    name, colon, port = value.partition(":")
    if colon and not re.fullmatch(r"\d{1,5}", port):
        return None
    return name.rstrip(".") or None


# Meta's own API host: an SDK rerouted to wacall at the transport level (the README's pywa example) or by
# a hosts-file entry still names it, and no rebinding page can make a browser send it to loopback.
META_HOSTS = frozenset({"graph.facebook.com"})


def is_loopback(host: str) -> bool:
    """127.0.0.0/8, ::1 (and ::ffff:127.x), or ``localhost``. Every request asks (its Host and peer), so
    the common answers are kept (bounded)."""
    known = _LOOPBACK.get(host)
    if known is None:
        known = _is_loopback(host)
        if len(_LOOPBACK) < 1024:
            _LOOPBACK[host] = known
    return known


_LOOPBACK: dict[str, bool] = {}


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    mapped = getattr(address, "ipv4_mapped", None)
    return address.is_loopback or bool(mapped and mapped.is_loopback)


@dataclass(frozen=True)
class Exposure:
    """The rules for one server: the listen address (as a Host header names it), the extra Host names, the
    control token; normalised once by :meth:`build`, not per request."""
    listen_name: str = "127.0.0.1"
    allowed_hosts: frozenset[str] = frozenset()
    control_token: str | None = None

    @classmethod
    def build(cls, listen_host: str, allowed_hosts: list[str], control_token: str | None) -> "Exposure":
        names = {(host_name(h) or h.lower()) for h in allowed_hosts}
        return cls(host_name(listen_host) or listen_host, frozenset(names), control_token or None)

    def host_allowed(self, host: str) -> bool:
        name = host_name(host)
        if name is None:
            return False
        return ("*" in self.allowed_hosts or is_loopback(name) or name in self.allowed_hosts or name in META_HOSTS
                or name == self.listen_name)


@dataclass(frozen=True)
class Refusal:
    status: int
    reason: str          # the control API's error reason
    detail: str
    graph_code: int      # the Graph error code for the same refusal


def check(exposure: Exposure, request: web.BaseRequest) -> Refusal | None:
    """The first rule ``request`` breaks, or None."""
    headers = request.headers
    host = headers.get("Host")
    if host is not None and not exposure.host_allowed(host):
        return Refusal(403, "forbidden_host", f"Host {host!r} is not allowed: wacall answers loopback names and "
                       "the names given with --allowed-host (DNS rebinding protection)", 200)
    origin = headers.get("Origin")
    if origin is not None and (host is None or origin.strip().lower().rstrip("/") != f"http://{host.strip().lower()}"):
        return Refusal(403, "cross_site", f"Origin {origin!r} is not wacall's own origin; cross-site browser "
                       "requests are refused", 200)
    if (origin is None and request.method in STATE_CHANGING
            and headers.get("Sec-Fetch-Site", "").lower() in ("cross-site", "same-site")):
        return Refusal(403, "cross_site", "cross-site browser requests are refused", 200)
    if not is_control(request.path):
        return None
    if exposure.control_token is not None:
        sent = headers.get("Authorization", "")
        if sent[:7].lower() == "bearer ":
            token = sent[7:].strip()
        elif request.method == "GET" and request.path == CONSOLE_ENTRY and "token" in request.query:
            token = request.query["token"]               # the console's entry page turns it into the cookie
        else:
            token = request.cookies.get(token_cookie(request), "")
        if not hmac.compare_digest(token.encode(), exposure.control_token.encode()):
            return Refusal(401, "unauthorized", "the control API needs \"Authorization: Bearer <control token>\" "
                           "(--control-token)", 190)
    if request.method in STATE_CHANGING and request.content_type != "application/json":
        ctype = headers.get("Content-Type")
        if request.body_exists or request.content_type in CORS_SAFELISTED:
            return Refusal(415, "unsupported_media_type", "state-changing control requests take JSON: send "
                           f"Content-Type: application/json (got {ctype!r})", 100)
    return None


def control_error(reason: str, detail: str, status: int = 400) -> web.Response:
    """The control API's error shape, ``{"error": {"reason", "detail"}}`` (its routes refuse with it too)."""
    return web.Response(body=codec.dump_bytes({"error": {"reason": reason, "detail": detail}}), status=status,
                        content_type="application/json")


def refusal_response(refusal: Refusal, control: bool) -> web.Response:
    if control:
        response = control_error(refusal.reason, refusal.detail, refusal.status)
    else:
        response = error_response(GraphError(refusal.graph_code, refusal.detail, http_status=refusal.status))
    if refusal.status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="wacall control API"'
    return response


EXPOSURE = web.AppKey("exposure", Exposure)


@web.middleware
async def guard_middleware(request: web.Request,
                           handler: Callable[[web.Request], Awaitable[web.StreamResponse]]) -> web.StreamResponse:
    refusal = check(request.app[EXPOSURE], request)
    if refusal is not None:
        log.info("refused %s %s: %s", request.method, request.path[:200], refusal.detail)
        return refusal_response(refusal, is_control(request.path))
    return await handler(request)


# -- requests aiohttp's parser refuses before any handler runs -----------------------------------------
REQUEST_START = re.compile(rb"^[A-Z]{3,10} (\S{0,200})")


class ShapedErrorHandler(RequestHandler):
    """aiohttp's connection protocol, answering what its HTTP parser refuses (and the rare handler
    timeout) in Meta's envelope or the control shape, logged in one line without a traceback."""

    _wacall_head: bytes = b""

    def data_received(self, data: bytes) -> None:
        if REQUEST_START.match(data):        # remember how the latest request began: its path picks the shape
            self._wacall_head = bytes(data[:256])
        super().data_received(data)

    def handle_error(self, request: web.BaseRequest, status: int = 500, exc: BaseException | None = None,
                     message: str | None = None) -> web.StreamResponse:
        if status >= 500 and exc is not None:
            log.error("unhandled error on %s %s", request.method, request.path, exc_info=exc)
        else:
            log.info("refused an unparseable request from %s: %s", request.remote, message or exc)
        if request.writer.output_size > 0:
            raise ConnectionError("Response is sent already, cannot send another response with the error message")
        match = REQUEST_START.match(self._wacall_head)
        control = bool(match) and is_control(match.group(1).split(b"?", 1)[0].decode("latin-1"))
        text = str(getattr(exc, "message", None) or message or "bad request")[:120]
        if status >= 500:
            response = (control_error("internal", text, status) if control
                        else error_response(GraphError(1, http_status=status)))
        else:
            too_long = isinstance(exc, LineTooLong) or "too long" in text.lower() or "more than" in text
            detail = (f"The request line or a header is longer than {self.max_line_size} bytes." if too_long
                      else f"The request could not be parsed as HTTP: {text}")
            response = (control_error("too_large" if too_long else "bad_http", detail, 400) if control
                        else error_response(GraphError(100, detail, http_status=400)))
        response.force_close()
        return response


def protocol_factory(server: web.Server, loop, **kwargs: Any) -> Callable[[], ShapedErrorHandler]:
    """For ``loop.create_server``: connections of ``server`` (an AppRunner's) with shaped errors,
    made the way ``web.Server.__call__`` makes its own."""
    return lambda: ShapedErrorHandler(server, loop=loop, **kwargs)
