"""The bridge: WhatsApp calls (Graph API and webhooks, through ``wacall.business``) to a PBX (SIP over UDP), the
media through RtpEngine. User-initiated calls, as Meta's integration example describes them
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/integration-examples):

    connect webhook ─► ng offer (Meta's WebRTC SDP → plain RTP) ─► INVITE to the bridging extension
    200 OK ─► ACK, ng answer (the PBX's SDP → WebRTC: ICE, DTLS) ─► Graph pre_accept, then accept
    terminate webhook ─► BYE to the PBX;  BYE from the PBX ─► Graph terminate;  each: ng delete

Every log line of a call names its wacid and, once there is one, the SIP Call-ID (``wacid=… sip=…``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field

from wacall.business import Call, GraphApiError, GraphClient, WebhookReceiver

from .config import BridgeConfig
from .ng import NgError
from .rtpengine import RtpEngine
from .sip_ua import Dialog, SipFailure, SipUserAgent

log = logging.getLogger("wacall.bridge")

WA_SIDE = "whatsapp"            # the ng from-tag of the WhatsApp leg (the ng call-id is the wacid)


@dataclass
class BridgedCall:
    call_id: str                                  # the wacid
    user: str
    state: str = "setup"                          # setup, bridged, ended
    dialog: Dialog | None = None
    sip_call_id: str | None = None                # the INVITE's Call-ID, from the moment it is sent
    setup: asyncio.Task | None = None
    started: float = field(default_factory=time.monotonic)
    answered: float | None = None

    @property
    def tag(self) -> str:
        return f"wacid={self.call_id} sip={self.sip_call_id or '-'}"


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        g, s = config.graph, config.sip
        self.graph = GraphClient(g.phone_number_id, g.token, base_url=g.base_url, version=g.version)
        self.receiver = WebhookReceiver(config.webhook.app_secret, config.webhook.verify_token,
                                        on_connect=self.on_connect, on_terminate=self.on_terminate,
                                        path=config.webhook.path)
        self.ua = SipUserAgent(s.host, s.port, (s.pbx_host, s.pbx_port), t1=s.t1)
        self.ua.on_bye = self._on_pbx_bye
        self.rtpengine = RtpEngine(config.media.rtpengine_address, timeout=config.media.ng_timeout)
        self.calls: dict[str, BridgedCall] = {}
        self._tasks: set[asyncio.Task] = set()
        self.webhook_url = ""

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> dict:
        await self.graph.__aenter__()
        await self.rtpengine.start()
        await self.rtpengine.ping()
        sip_port = await self.ua.start()
        self.webhook_url = await self.receiver.start(self.config.webhook.host, self.config.webhook.port)
        info = {"webhook_url": self.webhook_url, "sip": f"{self.config.sip.host}:{sip_port}",
                "rtpengine": self.config.media.rtpengine, "graph": self.graph.base}
        log.info("bridge ready: %s", info)
        return info

    async def stop(self) -> None:
        """End every live call on both sides (BYE, Graph terminate), then close."""
        for call in list(self.calls.values()):
            await self._end(call, "shutdown", tell_whatsapp=True, tell_pbx=True)
        await self.receiver.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        self.ua.close()
        self.rtpengine.close()
        await self.graph.close()

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- WhatsApp side ----------------------------------------------------------------------------------------
    async def on_connect(self, call: Call) -> None:
        if call.direction != "USER_INITIATED":
            return                                # business-initiated calls: not in this slice
        if not call.sdp:
            log.warning("wacid=%s connect without an SDP offer: ignored", call.call_id)
            return
        bridged = self.calls[call.call_id] = BridgedCall(call.call_id, call.user or "")
        log.info("%s connect from +%s: bridging to %s", bridged.tag, bridged.user, self.config.sip.extension)
        bridged.setup = self._spawn(self._setup(bridged, call))

    async def on_terminate(self, call: Call) -> None:
        bridged = self.calls.get(call.call_id)
        if bridged is None:
            return
        end = call.end or {}
        log.info("%s terminate from WhatsApp (%s)", bridged.tag, end.get("status"))
        await self._end(bridged, "whatsapp", tell_whatsapp=False, tell_pbx=True,
                        duration=end.get("duration"))

    async def _setup(self, bridged: BridgedCall, call: Call) -> None:
        s, wacid = self.config.sip, bridged.call_id
        try:
            pbx_offer = await self.rtpengine.offer(call_id=wacid, from_tag=WA_SIDE, sdp=call.sdp or "",
                                                   pbx_protocol=self.config.media.pbx_protocol)
            log.debug("%s SDP toward the PBX:\n%s", bridged.tag, pbx_offer)
            headers = [("x-wa-meta-wacid", wacid),
                       ("P-Asserted-Identity", f"<sip:+{bridged.user}@{s.from_domain}>")]
            connect = call.connect or {}
            for key, header in (("cta_payload", "x-wa-meta-cta-payload"),
                                ("deeplink_payload", "x-wa-meta-deeplink-payload")):
                if connect.get(key):
                    headers.append((header, str(connect[key])))
            if call.callback_data:
                headers.append(("x-wa-meta-biz-opaque-callback-data", call.callback_data))
            if bridged.state == "ended":          # the user hung up while RtpEngine was asked
                return
            bridged.sip_call_id = self.ua.new_call_id()
            dialog, ok = await self.ua.invite(
                f"sip:{s.extension}@{s.domain}", f"sip:+{bridged.user}@{s.from_domain}",
                f"sip:{s.extension}@{s.domain}", pbx_offer, headers, call_id=bridged.sip_call_id,
                on_provisional=lambda r: log.info("%s PBX: %s %s", bridged.tag, r.status, r.reason))
            bridged.dialog = dialog
            log.info("%s PBX answered: 200 OK", bridged.tag)
            if bridged.state == "ended":          # the user hung up while the 200 was on its way
                await self.ua.bye(dialog)
                return
            answer = await self.rtpengine.answer(call_id=wacid, from_tag=WA_SIDE, to_tag=dialog.remote_tag or "",
                                                 sdp=ok.body.decode("utf-8", "replace"))
            log.debug("%s SDP toward WhatsApp:\n%s", bridged.tag, answer)
            await self.graph.pre_accept(wacid, answer)
            await self.graph.accept(wacid, answer)
            bridged.state, bridged.answered = "bridged", time.monotonic()
            log.info("%s bridged in %.0f ms", bridged.tag, 1000 * (bridged.answered - bridged.started))
        except asyncio.CancelledError:
            raise
        except SipFailure as exc:
            if bridged.state == "ended":          # our own CANCEL (the user hung up while it rang)
                log.info("%s INVITE ended: %s %s", bridged.tag, exc.status, exc.reason)
                return
            log.info("%s PBX refused: %s %s: rejecting", bridged.tag, exc.status, exc.reason)
            await self._end(bridged, f"sip {exc.status}", tell_whatsapp=True, tell_pbx=False, reject=True)
        except GraphApiError as exc:
            log.warning("%s Graph refused: code %s %s", bridged.tag, exc.code, exc.message)
            await self._end(bridged, f"graph {exc.code}", tell_whatsapp=False, tell_pbx=True)
        except NgError as exc:
            log.warning("%s rtpengine: %s", bridged.tag, exc)
            await self._end(bridged, "rtpengine", tell_whatsapp=True, tell_pbx=True, reject=True)

    # -- PBX side ---------------------------------------------------------------------------------------------
    def _on_pbx_bye(self, dialog: Dialog) -> None:
        for bridged in self.calls.values():
            if bridged.dialog is dialog:
                log.info("%s BYE from the PBX", bridged.tag)
                self._spawn(self._end(bridged, "pbx", tell_whatsapp=True, tell_pbx=False))
                return

    # -- both -------------------------------------------------------------------------------------------------
    async def _end(self, bridged: BridgedCall, why: str, *, tell_whatsapp: bool, tell_pbx: bool,
                   reject: bool = False, duration: object = None) -> None:
        if bridged.state == "ended":
            return
        was = bridged.state
        bridged.state = "ended"
        self.calls.pop(bridged.call_id, None)
        current = asyncio.current_task()
        if bridged.setup is not None and bridged.setup is not current and not bridged.setup.done() \
                and bridged.dialog is None and bridged.sip_call_id is not None:
            self.ua.cancel(bridged.sip_call_id)   # ringing at the PBX: CANCEL (the UA waits for a 1xx first)
            await asyncio.wait([bridged.setup], timeout=64 * self.config.sip.t1 + 1)
        if tell_pbx and bridged.dialog is not None:
            headers = [("x-wa-meta-wacid", bridged.call_id)]
            if duration is not None:
                headers.append(("x-wa-meta-call-duration", str(duration)))
            status = await self.ua.bye(bridged.dialog, headers)
            log.info("%s BYE to the PBX: %s", bridged.tag, status)
        if tell_whatsapp:
            try:
                if reject or was == "setup":
                    await self.graph.reject(bridged.call_id)
                else:
                    await self.graph.terminate(bridged.call_id)
            except GraphApiError as exc:          # the call already ended at Meta: nothing to end
                log.info("%s Graph on end: code %s %s", bridged.tag, exc.code, exc.message)
        await self.rtpengine.delete(bridged.call_id, WA_SIDE)
        log.info("%s ended (%s)", bridged.tag, why)


async def serve(config: BridgeConfig, *, json_output: bool = False) -> None:
    """Run until SIGINT/SIGTERM; then end the live calls on both sides and stop."""
    bridge = Bridge(config)
    try:
        info = await bridge.start()
    except BaseException:
        await bridge.stop()
        raise
    print(json.dumps(info) if json_output else f"wacall bridge: webhook {info['webhook_url']}, SIP {info['sip']}, "
          f"rtpengine {info['rtpengine']}, Graph {info['graph']}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await bridge.stop()


__all__ = ["Bridge", "BridgedCall", "serve"]
