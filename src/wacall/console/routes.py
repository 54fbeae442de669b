"""The console's routes: its pages at ``/_wacall/console/...``, their static files, the live stream, the
media samples the plots read, and the redirect of a browser's ``GET /`` to the console.

Each page is one small HTML shell; the ES modules in ``static/`` fill it from the control API (JSON) and the
live stream, exactly as any other client would. No template engine and no build step: the files ship in the
package (``wacall/console/static``). See docs/console.md.
"""

from __future__ import annotations

import html
from pathlib import Path
from typing import Awaitable, Callable

from aiohttp import web

from .. import codec
from ..guard import CONSOLE_ENTRY, token_cookie
from ..control.routes import CONTROL, ControlHost
from .samples import MediaSamples
from .stream import LiveStream, stream_routes

STATIC = Path(__file__).parent / "static"
PREFIX = "/_wacall/console"
SAMPLES = web.AppKey("media_samples", MediaSamples)

# (path under the console, page name, title in the navigation)
PAGES = [("", "calls", "Calls"), ("/users", "users", "Users"), ("/permissions", "permissions", "Permissions"),
         ("/numbers", "numbers", "Numbers"), ("/webhooks", "webhooks", "Webhooks"),
         ("/platform", "platform", "Clock, limits & faults")]

SHELL = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>{title} · wacall console</title>
<link rel="stylesheet" href="{prefix}/static/console.css">
<link rel="icon" href="data:,">
</head>
<body>
<header class="top">
  <a class="brand" href="{prefix}">wacall</a>
  <nav>{nav}</nav>
  <span id="clock" class="clock" title="wacall's virtual clock"></span>
  <span id="live" class="live" title="live stream">●</span>
</header>
<main id="app" data-page="{page}" data-prefix="{prefix}"{extra}><p class="muted">Loading…</p></main>
<script type="module" src="{prefix}/static/console.js"></script>
</body>
</html>
"""


def page_html(page: str, title: str, **data: str) -> str:
    nav = "".join(f'<a href="{PREFIX}{path}"{" class=current" if name == page else ""}>{html.escape(label)}</a>'
                  for path, name, label in PAGES)
    nav += f'<a href="{PREFIX}/phone"{" class=current" if page == "phone" else ""}>Phone</a>'
    extra = "".join(f' data-{key.replace("_", "-")}="{html.escape(value, quote=True)}"' for key, value in data.items())
    return SHELL.format(title=html.escape(title), prefix=PREFIX, nav=nav, page=page, extra=extra)


def page(name: str, title: str) -> Callable[[web.Request], Awaitable[web.Response]]:
    async def handler(request: web.Request) -> web.Response:
        token = request.query.get("token")
        if token and request.path == CONSOLE_ENTRY:   # the guard checked it: keep it in a cookie, and take
            response = web.HTTPFound(request.path)   # it out of the address bar (other pages ignore ?token=)
            response.set_cookie(token_cookie(request), token, path="/_wacall", httponly=True, samesite="Strict")
            raise response
        return web.Response(text=page_html(name, title, **request.match_info), content_type="text/html",
                            headers={"Cache-Control": "no-store"})
    return handler


async def media_samples(request: web.Request) -> web.Response:
    call_id = request.match_info["call_id"]
    return web.Response(body=codec.dump_bytes({"call_id": call_id, "data": request.app[SAMPLES].of(call_id)}),
                        content_type="application/json")


async def to_console(request: web.Request) -> web.Response:
    raise web.HTTPFound(PREFIX)


@web.middleware
async def root_redirect(request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
                        ) -> web.StreamResponse:
    """A browser opening ``/`` lands on the console; every other request to ``/`` (an SDK, curl) still gets
    what Graph answers there."""
    if request.path == "/" and request.method == "GET" and "text/html" in request.headers.get("Accept", ""):
        raise web.HTTPFound(PREFIX)
    return await handler(request)


def console_routes(app: web.Application, live: LiveStream) -> None:
    """The console's pages, static files and media samples, and the live stream (before the control
    routes' catch-all); the pages read and act through the control API in ``app[CONTROL]``."""
    host: ControlHost = app[CONTROL]
    stream_routes(app, live)
    samples = app[SAMPLES] = MediaSamples(lambda: list(host.platform.active_calls), host.media_view,
                                          lambda: host.clock.now(),     # (read each time: see domain.clock)
                                          wanted=lambda: bool(live.listeners))

    async def start(app: web.Application) -> None:
        samples.start()

    async def stop(app: web.Application) -> None:
        await samples.stop()
    app.on_startup.append(start)
    app.on_cleanup.append(stop)
    r = app.router
    r.add_get("/_wacall/calls/{call_id}/media/samples", media_samples)
    for path, name, title in PAGES:
        r.add_get(PREFIX + path, page(name, title))
    r.add_get(PREFIX + "/calls/{call_id}", page("call", "Call"))
    r.add_get(PREFIX + "/", to_console)
    r.add_static(PREFIX + "/static", STATIC, append_version=False)     # phone.js and phone.css too
