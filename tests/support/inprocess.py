"""An in-process wacall (``wacall.server.Wacall``) for tests that drive it with aiohttp: its config, and a
webhook receiver subscribed to it."""

from __future__ import annotations

from aiohttp import web

from wacall.config import Config, load_config

VERSION = "v23.0"


def config(token: str | None = None) -> Config:
    """The built-in configuration without the SIP gateway (these tests are about HTTP), with a control token."""
    loaded = load_config()
    loaded.sip.port = -1
    loaded.server.control_token = token
    return loaded


async def hook_receiver(info: dict, session, fields: str = "calls") -> tuple[web.AppRunner, str, list[bytes]]:
    """A webhook receiver on a free port answering 200, subscribed (app level) to ``fields``: its runner
    (clean it up), URL and the bodies it got."""
    bodies: list[bytes] = []

    async def handle(request: web.Request) -> web.Response:
        if request.method == "GET":
            return web.Response(text=request.query.get("hub.challenge", ""))
        bodies.append(await request.read())
        return web.Response(text="ok")
    app = web.Application()
    app.router.add_route("*", "/hook", handle)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
    async with session.post(f"{info['graph_url']}/{VERSION}/{info['app_id']}/subscriptions", params={
            "object": "whatsapp_business_account", "callback_url": url, "verify_token": info["verify_token"],
            "fields": fields, "access_token": f"{info['app_id']}|{info['app_secret']}"}) as resp:
        assert resp.status == 200, await resp.text()
    return runner, url, bodies
