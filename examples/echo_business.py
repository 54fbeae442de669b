"""An echo bot: a small WhatsApp business that answers every user call and plays the caller's own voice
back to them. It is written against Meta's Cloud API only (plain HTTP, signed webhooks, WebRTC with
aiortc), so it runs unchanged against wacall or against graph.facebook.com.

    pip install aiortc                      # the business's media stack (wacall itself does not need it)
    python examples/echo_business.py --graph http://127.0.0.1:8080 --subscribe

What it does, step by step:

1. Listens for webhooks on http://127.0.0.1:9000/webhook: answers Meta's GET verification handshake
   (``hub.verify_token``), and checks every POST's ``X-Hub-Signature-256`` (HMAC-SHA256 of the body with the
   app secret) before reading it; a bad signature gets 403.
2. ``--subscribe`` subscribes that URL to the ``calls`` field (``POST /{app_id}/subscriptions``, with the
   app token ``{app_id}|{app_secret}``), as a business does once in Meta's App Dashboard.
3. A ``calls`` webhook with ``event: connect`` carries a user's call: its id (``calls[0].id``) and Meta's
   SDP offer (``calls[0].session.sdp``). The bot answers the offer with aiortc, then ``pre_accept``s the
   call with that answer SDP and ``accept``s it with the same SDP (Meta's order: ``accept`` only after
   ``pre_accept``). The business sends the first media packet (Meta: the user's side waits for it), so the
   bot sends a moment of silence and from then on whatever audio it receives (:class:`EchoTrack`).
4. ``event: terminate`` (or the media ending) closes the peer connection.

Defaults are wacall's built-in configuration; pass your own for Meta. Against wacall everything runs on
loopback: aioice leaves loopback addresses out of its ICE candidates, so this bot offers 127.0.0.1 only
(``--loopback``, on by default; use ``--no-loopback`` against Meta).
"""

from __future__ import annotations

import argparse
import asyncio
import fractions
import hashlib
import hmac
import json
import logging

import aiohttp
from aiohttp import web

try:
    import av
    from aiortc import MediaStreamTrack
except ImportError:                                   # pragma: no cover - said clearly at start
    raise SystemExit("the echo business needs aiortc: pip install aiortc")

log = logging.getLogger("echo_business")

GRAPH_VERSION = "v23.0"


class EchoTrack(MediaStreamTrack):
    """What the bot says: 100 ms of silence (the business speaks first), then the caller's own audio."""

    kind = "audio"
    SILENT_FRAMES = 5                                  # 5 x 20 ms

    def __init__(self) -> None:
        super().__init__()
        self.source: MediaStreamTrack | None = None    # the caller's track, once it is known
        self._samples = 0
        self._started: float | None = None

    async def recv(self) -> av.AudioFrame:
        loop = asyncio.get_running_loop()
        if self._started is None:
            self._started = loop.time()
        if self.source is not None and self._samples >= self.SILENT_FRAMES * 960:
            frame = await self.source.recv()           # the caller's audio, decoded: send it back
        else:
            wait = self._started + self._samples / 48000 - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)
            frame = av.AudioFrame(format="s16", layout="stereo", samples=960)   # as aiortc decodes Opus
            for plane in frame.planes:
                plane.update(bytes(plane.buffer_size))
            frame.sample_rate = 48000
        frame.pts, frame.time_base = self._samples, fractions.Fraction(1, 48000)
        self._samples += frame.samples
        return frame


async def echo_peer(offer_sdp: str, on_end=None):
    """An aiortc peer connection answering ``offer_sdp`` with an :class:`EchoTrack`; returns it and the answer
    SDP (ICE candidates gathered). ``on_end`` (a coroutine function) runs when its media fails or closes."""
    from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription

    pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))   # no STUN server: Meta's relay is ICE-lite
    echo = EchoTrack()

    @pc.on("track")
    def on_track(track) -> None:                    # the caller's audio goes straight back to them
        if track.kind == "audio":
            echo.source = track
            pc.addTrack(echo)

    @pc.on("connectionstatechange")
    async def on_state() -> None:
        log.info("media %s", pc.connectionState)
        if pc.connectionState in ("failed", "closed") and on_end is not None:
            await on_end()

    await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
    await pc.setLocalDescription(await pc.createAnswer())          # gathers the ICE candidates
    return pc, pc.localDescription.sdp


class EchoBusiness:
    def __init__(self, *, graph: str, token: str, phone_number_id: str, app_id: str, app_secret: str,
                 verify_token: str) -> None:
        self.graph, self.token, self.phone_number_id = graph.rstrip("/"), token, phone_number_id
        self.app_id, self.app_secret, self.verify_token = app_id, app_secret, verify_token
        self.calls: dict[str, object] = {}          # call id -> its RTCPeerConnection
        self.answered: list[str] = []               # call ids taken (accepted), oldest first
        self.session: aiohttp.ClientSession | None = None
        self._tasks: set[asyncio.Task] = set()

    # -- webhooks ---------------------------------------------------------------------------------
    def routes(self, app: web.Application) -> None:
        app.router.add_get("/webhook", self.verify)
        app.router.add_post("/webhook", self.webhook)

    async def verify(self, request: web.Request) -> web.Response:
        """Meta's verification handshake: echo hub.challenge when hub.verify_token is ours."""
        if request.query.get("hub.verify_token") != self.verify_token:
            return web.Response(status=403)
        return web.Response(text=request.query.get("hub.challenge", ""))

    async def webhook(self, request: web.Request) -> web.Response:
        body = await request.read()
        expected = "sha256=" + hmac.new(self.app_secret.encode(), body, hashlib.sha256).hexdigest()
        if not hmac.compare_digest(request.headers.get("X-Hub-Signature-256", ""), expected):
            log.warning("webhook with a bad signature refused")
            return web.Response(status=403)
        payload = json.loads(body)
        for entry in payload.get("entry", []):
            for change in entry.get("changes", []):
                if change.get("field") != "calls":
                    continue
                for call in change.get("value", {}).get("calls", []):
                    task = asyncio.create_task(self.on_call_event(call))   # answer 200 at once; work after
                    self._tasks.add(task)
                    task.add_done_callback(self._tasks.discard)
        return web.Response(text="ok")

    async def on_call_event(self, call: dict) -> None:
        call_id, event = call.get("id"), call.get("event")
        log.info("call %s: %s", call_id, event)
        try:
            if event == "connect" and call.get("direction", "USER_INITIATED") == "USER_INITIATED":
                await self.answer(call_id, call["session"]["sdp"])
            elif event == "terminate":
                await self.hang_up_media(call_id)
        except Exception:
            log.exception("call %s: could not handle %s", call_id, event)

    # -- the call ---------------------------------------------------------------------------------
    async def answer(self, call_id: str, offer_sdp: str) -> None:
        pc, answer_sdp = await echo_peer(offer_sdp, on_end=lambda: self.hang_up_media(call_id))
        self.calls[call_id] = pc
        session = {"sdp_type": "answer", "sdp": answer_sdp}
        await self.call_action(call_id, "pre_accept", session)     # media may start flowing now
        await self.call_action(call_id, "accept", session)         # the call is connected
        self.answered.append(call_id)

    async def call_action(self, call_id: str, action: str, session: dict | None = None) -> dict:
        body = {"messaging_product": "whatsapp", "call_id": call_id, "action": action}
        if session:
            body["session"] = session
        async with self.session.post(f"{self.graph}/{GRAPH_VERSION}/{self.phone_number_id}/calls", json=body,
                                     headers={"Authorization": f"Bearer {self.token}"}) as resp:
            result = await resp.json()
            if resp.status != 200:
                raise RuntimeError(f"{action} refused: HTTP {resp.status} {result}")
            log.info("call %s: %s -> %s", call_id, action, result)
            return result

    async def hang_up_media(self, call_id: str) -> None:
        pc = self.calls.pop(call_id, None)
        if pc is not None:
            await pc.close()

    # -- set-up -----------------------------------------------------------------------------------
    async def subscribe(self, callback_url: str) -> None:
        """Subscribe the webhook URL to calls (Meta performs the GET handshake first)."""
        data = {"object": "whatsapp_business_account", "fields": "calls", "callback_url": callback_url,
                "verify_token": self.verify_token, "access_token": f"{self.app_id}|{self.app_secret}"}
        async with self.session.post(f"{self.graph}/{GRAPH_VERSION}/{self.app_id}/subscriptions", data=data) as r:
            if r.status != 200:
                raise RuntimeError(f"subscription refused: HTTP {r.status} {await r.text()}")
        log.info("subscribed %s to calls", callback_url)

    async def start(self, host: str, port: int, subscribe: bool) -> web.AppRunner:
        self.session = aiohttp.ClientSession()
        app = web.Application()
        self.routes(app)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        site = web.TCPSite(runner, host, port)
        await site.start()
        self.port = runner.addresses[0][1]
        self.url = f"http://{host}:{self.port}/webhook"
        if subscribe:
            await self.subscribe(self.url)
        return runner

    async def close(self) -> None:
        for call_id in list(self.calls):
            await self.hang_up_media(call_id)
        if self.session:
            await self.session.close()


def loopback_only() -> None:
    """Against wacall on this machine: offer 127.0.0.1 as the ICE host candidate (aioice skips loopback)."""
    import aioice.ice

    aioice.ice.get_host_addresses = lambda use_ipv4, use_ipv6: ["127.0.0.1"] if use_ipv4 else []


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--graph", default="http://127.0.0.1:8080", help="Graph API base URL")
    parser.add_argument("--token", default="EAAwacall0000default0000token", help="access token")
    parser.add_argument("--phone-number-id", default="106540352242922")
    parser.add_argument("--app-id", default="1234567890123456")
    parser.add_argument("--app-secret", default="wacall-app-secret-0123456789abcdef")
    parser.add_argument("--verify-token", default="wacall-verify-token")
    parser.add_argument("--host", default="127.0.0.1", help="where the webhook receiver listens")
    parser.add_argument("--port", type=int, default=9000, help="webhook receiver port (0: any free port)")
    parser.add_argument("--subscribe", action="store_true", help="subscribe the webhook URL to calls first")
    parser.add_argument("--loopback", action=argparse.BooleanOptionalAction, default=True,
                        help="ICE on 127.0.0.1 only (for wacall on this machine)")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    logging.getLogger("aioice").setLevel(logging.WARNING)
    if args.loopback:
        loopback_only()
    bot = EchoBusiness(graph=args.graph, token=args.token, phone_number_id=args.phone_number_id,
                       app_id=args.app_id, app_secret=args.app_secret, verify_token=args.verify_token)

    async def run() -> None:
        runner = await bot.start(args.host, args.port, args.subscribe)
        print(f"echo business: webhooks on {bot.url}; call it, e.g. curl -X POST "
              f"{args.graph}/_wacall/users/447700900001/calls -H 'Content-Type: application/json' "
              f"-d '{{\"to\": \"{args.phone_number_id}\"}}'", flush=True)
        try:
            await asyncio.Event().wait()
        finally:
            await bot.close()
            await runner.cleanup()

    try:
        asyncio.run(run())
    except KeyboardInterrupt:
        pass


if __name__ == "__main__":
    main()
