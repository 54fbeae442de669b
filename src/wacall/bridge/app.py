"""The bridge: WhatsApp calls (Graph API and webhooks, through ``wacall.business``) to a PBX (SIP over UDP), the
media through RtpEngine. User-initiated calls, as Meta's integration example describes them
(https://developers.facebook.com/docs/whatsapp/cloud-api/calling/integration-examples):

    connect webhook ─► ng offer (Meta's WebRTC SDP → plain RTP) ─► INVITE to the bridging extension
    200 OK ─► ACK, ng answer (the PBX's SDP → WebRTC: ICE, DTLS) ─► Graph pre_accept, then accept
    terminate webhook ─► BYE to the PBX;  BYE from the PBX ─► Graph terminate;  each: ng delete

Business-initiated calls (the agent dials a WhatsApp number through the PBX):

    INVITE from the PBX ─► 100 Trying; Graph call_permissions (none ─► 403 with Warning/Reason naming Meta's
    state, and a permission request when configured) ─► ng offer (the PBX's RTP SDP → WebRTC) ─► Graph connect
    connect webhook (Meta's answer SDP) ─► ng answer (→ RTP for the PBX);  RINGING ─► 180 Ringing
    ACCEPTED ─► 200 OK with that SDP;  REJECTED ─► 486;  terminate before ACCEPTED ─► 480;  CANCEL ─► terminate
    BYE either way ─► the other side ends (Graph terminate / BYE)

The webhooks may come in any order (a connect before Graph's connect answered, ACCEPTED before its connect):
each one is applied to the CallBook and the call moves on from what the book holds (:meth:`Bridge._advance`).

Every log line of a call names its wacid and, once there is one, the SIP Call-ID (``wacid=… sip=…``).
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
from dataclasses import dataclass, field

import aiohttp

from wacall.business import Call, GraphApiError, GraphClient, WebhookReceiver
from wacall.sip.message import SipParseError
from wacall.sip.uri import parse_name_addr

from .config import BridgeConfig
from .media import MediaError, MediaPath
from .rtpengine import RtpEngineMedia
from .sip_ua import Dialog, Incoming, SipFailure, SipUserAgent

log = logging.getLogger("wacall.bridge")


def open_media(config: BridgeConfig) -> MediaPath:
    """The media path of ``[media] mode``."""
    m = config.media
    return RtpEngineMedia(m.rtpengine_address, timeout=m.ng_timeout, pbx_protocol=m.pbx_protocol)


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
    direction: str = "USER_INITIATED"
    incoming: Incoming | None = None              # business-initiated: the PBX's INVITE
    media_call: str | None = None                 # the media call's name (the wacid, or the SIP Call-ID for BIC)
    pbx_tag: str = ""                             # BIC: the PBX's From tag
    pbx_sdp: str | None = None                    # BIC: Meta's answer rewritten for the PBX
    ringing_sent: bool = False
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def tag(self) -> str:
        return f"wacid={self.call_id or '-'} sip={self.sip_call_id or '-'}"


class Bridge:
    def __init__(self, config: BridgeConfig) -> None:
        self.config = config
        g, s = config.graph, config.sip
        self.graph = GraphClient(g.phone_number_id, g.token, base_url=g.base_url, version=g.version)
        self.receiver = WebhookReceiver(config.webhook.app_secret, config.webhook.verify_token,
                                        on_connect=self.on_connect, on_terminate=self.on_terminate,
                                        on_status=self.on_status, path=config.webhook.path)
        self.ua = SipUserAgent.from_config(s)
        self.ua.on_bye = self._on_pbx_bye
        self.ua.on_invite = self._on_pbx_invite
        self.media = open_media(config)
        self.calls: dict[str, BridgedCall] = {}
        self.pending: dict[str, BridgedCall] = {}     # business-initiated, before Graph's connect answered
        self._tasks: set[asyncio.Task] = set()
        self.webhook_url = ""

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> dict:
        await self.graph.__aenter__()
        media = await self.media.start()
        sip_port = await self.ua.start()
        self.webhook_url = await self.receiver.start(self.config.webhook.host, self.config.webhook.port)
        info = {"webhook_url": self.webhook_url, "sip": f"{self.config.sip.host}:{sip_port}",
                "media": media, "graph": self.graph.base}
        if self.config.sip.register:
            info["sip_registration"] = self.ua.registration   # "registered", or what the PBX answered
        log.info("bridge ready: %s", info)
        return info

    async def stop(self) -> None:
        """End every live call on both sides (BYE, Graph terminate), then close."""
        for call in list(self.calls.values()) + list(self.pending.values()):
            await self._end(call, "shutdown", tell_whatsapp=True, tell_pbx=True)
        await self.receiver.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ua.unregister()
        self.ua.close()
        self.media.close()
        await self.graph.close()

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- WhatsApp side ----------------------------------------------------------------------------------------
    async def on_connect(self, call: Call) -> None:
        if call.direction == "BUSINESS_INITIATED":
            await self._advance(call.call_id)
            return
        if call.direction != "USER_INITIATED":
            return
        if not call.sdp:
            log.warning("wacid=%s connect without an SDP offer: ignored", call.call_id)
            return
        bridged = self.calls[call.call_id] = BridgedCall(call.call_id, call.user or "")
        log.info("%s connect from +%s: bridging to %s", bridged.tag, bridged.user, self.config.sip.extension)
        bridged.setup = self._spawn(self._setup(bridged, call))

    async def on_status(self, call: Call, status: str) -> None:
        await self._advance(call.call_id)

    async def on_terminate(self, call: Call) -> None:
        bridged = self.calls.get(call.call_id)
        if bridged is None:
            return
        if bridged.direction == "BUSINESS_INITIATED" and bridged.state == "setup":
            await self._advance(call.call_id)     # REJECTED → 486, else 480
            return
        end = call.end or {}
        log.info("%s terminate from WhatsApp (%s)", bridged.tag, end.get("status"))
        await self._end(bridged, "whatsapp", tell_whatsapp=False, tell_pbx=True,
                        duration=end.get("duration"))

    async def _setup(self, bridged: BridgedCall, call: Call) -> None:
        s, wacid = self.config.sip, bridged.call_id
        try:
            pbx_offer = await self.media.offer_to_pbx(wacid, call.sdp or "")
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
            answer = await self.media.answer_to_whatsapp(wacid, ok.body.decode("utf-8", "replace"),
                                                         dialog.remote_tag or "")
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
        except MediaError as exc:
            log.warning("%s media: %s", bridged.tag, exc)
            await self._end(bridged, "media", tell_whatsapp=True, tell_pbx=True, reject=True)

    # -- business-initiated: the PBX calls a WhatsApp user -----------------------------------------------------
    def _number(self, incoming: Incoming) -> str:
        source = self.config.sip.number_from
        if source.startswith("header:"):
            raw = incoming.request.headers.get(source[7:].strip()) or ""
            if raw.strip().startswith(("<", "sip:", "tel:")) or "@" in raw:
                try:
                    raw = parse_name_addr(raw if "<" in raw else f"<{raw}>").uri.user or ""
                except SipParseError:
                    raw = ""
        else:
            raw = incoming.request.ruri.user or ""
        digits = "".join(ch for ch in raw.split(";")[0] if ch.isdigit())
        return digits if 6 <= len(digits) <= 15 else ""

    def _on_pbx_invite(self, incoming: Incoming) -> None:
        bridged = BridgedCall("", self._number(incoming), direction="BUSINESS_INITIATED", incoming=incoming,
                              sip_call_id=incoming.call_id, media_call=incoming.call_id,
                              pbx_tag=incoming.request.from_.tag or "pbx")
        self.pending[incoming.call_id] = bridged
        incoming.on_cancel = lambda: self._spawn(self._end(bridged, "pbx cancel", tell_whatsapp=True,
                                                           tell_pbx=False))
        bridged.setup = self._spawn(self._call_whatsapp(bridged))

    async def _call_whatsapp(self, bridged: BridgedCall) -> None:
        incoming = bridged.incoming
        assert incoming is not None
        if not bridged.user:
            log.info("%s INVITE without a WhatsApp number (%s): 404", bridged.tag, self.config.sip.number_from)
            self._refuse(bridged, 404, "Not Found", "no WhatsApp number in the INVITE")
            return
        log.info("%s INVITE from the PBX to +%s", bridged.tag, bridged.user)
        try:
            answer = await self.graph.call_permission(bridged.user)
            permission = (answer.get("permission") or {}).get("status", "unknown")
            start = next((a for a in answer.get("actions") or () if a.get("action_name") == "start_call"), None)
            allowed = permission in ("temporary", "permanent") and (start is None or start.get("can_perform_action"))
            if not allowed:
                why = f"WhatsApp call permission: {permission}" + (
                    "" if start is None or start.get("can_perform_action") else ", start_call not allowed now")
                log.info("%s no permission to call +%s (%s): 403", bridged.tag, bridged.user, why)
                self._refuse(bridged, 403, "Forbidden", why)
                if self.config.graph.permission_request and permission in ("no_permission", "expired"):
                    try:
                        await self.graph.request_call_permission(bridged.user, self.config.graph.permission_request)
                        log.info("%s call permission request sent to +%s", bridged.tag, bridged.user)
                    except GraphApiError as exc:
                        log.warning("%s permission request refused: code %s %s", bridged.tag, exc.code, exc.message)
                return
            offer = await self.media.offer_to_whatsapp(bridged.media_call or "", incoming.sdp, bridged.pbx_tag)
            log.debug("%s SDP toward WhatsApp:\n%s", bridged.tag, offer)
            if bridged.state == "ended":          # the PBX cancelled meanwhile
                return
            wacid = await self.graph.connect(bridged.user, offer)
        except asyncio.CancelledError:
            raise
        except GraphApiError as exc:
            log.warning("%s Graph refused: code %s %s", bridged.tag, exc.code, exc.message)
            self._refuse(bridged, 403 if exc.code == 138006 else 480,
                         "Forbidden" if exc.code == 138006 else "Temporarily Unavailable",
                         f"WhatsApp error {exc.code}: {exc.message}")
            await self.media.delete(bridged.media_call or "")
            return
        except MediaError as exc:
            log.warning("%s media: %s", bridged.tag, exc)
            self._refuse(bridged, 503, "Service Unavailable", "media relay unavailable")
            await self.media.delete(bridged.media_call or "")
            return
        except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError) as exc:
            log.warning("%s Graph unreachable or unreadable: %r", bridged.tag, exc)
            self._refuse(bridged, 503, "Service Unavailable", "WhatsApp Graph API unavailable")
            await self.media.delete(bridged.media_call or "")
            return
        bridged.call_id = wacid
        self.pending.pop(bridged.sip_call_id or "", None)
        if bridged.state == "ended":              # cancelled while Graph connected: end it at Meta
            await self._graph_end(bridged, reject=False)
            await self.media.delete(bridged.media_call or "")
            return
        self.calls[wacid] = bridged
        log.info("%s Graph connect to +%s", bridged.tag, bridged.user)
        await self._advance(wacid)                # webhooks that came before Graph's answer

    def _refuse(self, bridged: BridgedCall, status: int, reason: str, why: str, *, ended: bool = True) -> None:
        """A final refusal to the PBX's INVITE, with Warning and Reason saying why."""
        if ended:
            bridged.state = "ended"
        self.pending.pop(bridged.sip_call_id or "", None)
        if bridged.incoming is not None:
            text = why.replace('"', "'")
            bridged.incoming.respond(status, reason, headers=[
                ("Warning", f'399 {self.config.sip.host} "{text}"'),
                ("Reason", f'SIP;cause={status};text="{text}"')])

    async def _advance(self, wacid: str) -> None:
        """Move a business-initiated call on from what its webhooks say so far (in whatever order they came)."""
        bridged = self.calls.get(wacid)
        call = self.receiver.book.get(wacid)
        if bridged is None or call is None or bridged.direction != "BUSINESS_INITIATED":
            return
        async with bridged.lock:
            if bridged.state != "setup":
                return
            incoming = bridged.incoming
            assert incoming is not None
            try:
                if call.sdp and bridged.pbx_sdp is None:
                    bridged.pbx_sdp = await self.media.answer_to_pbx(bridged.media_call or "", call.sdp,
                                                                     bridged.pbx_tag)
                    log.debug("%s SDP toward the PBX:\n%s", bridged.tag, bridged.pbx_sdp)
            except MediaError as exc:
                log.warning("%s media: %s", bridged.tag, exc)
                await self._end(bridged, "media", tell_whatsapp=True, tell_pbx=True)
                return
            if call.status == "REJECTED" or (call.ended and not (call.status == "ACCEPTED" and bridged.pbx_sdp)):
                status = 486 if call.status == "REJECTED" else 480
                end = (call.end or {}).get("status") or call.status
                log.info("%s WhatsApp: %s: %s to the PBX", bridged.tag, end, status)
                self._refuse(bridged, status, "User declined the call" if status == 486 else "Temporarily Unavailable",
                             f"WhatsApp call {str(end).lower()}", ended=False)
                await self._end(bridged, f"whatsapp {end}", tell_whatsapp=False, tell_pbx=False)
                return
            if call.status in ("RINGING", "ACCEPTED") and not bridged.ringing_sent:
                bridged.ringing_sent = True
                incoming.respond(180, "Ringing", headers=[("x-wa-meta-wacid", wacid)])
                log.info("%s RINGING: 180 to the PBX", bridged.tag)
            if call.status == "ACCEPTED" and bridged.pbx_sdp is not None:
                bridged.dialog = incoming.respond(200, "OK", sdp=bridged.pbx_sdp,
                                                  headers=[("x-wa-meta-wacid", wacid)])
                bridged.state, bridged.answered = "bridged", time.monotonic()
                log.info("%s bridged in %.0f ms", bridged.tag, 1000 * (bridged.answered - bridged.started))
            if call.ended and bridged.state == "bridged":
                self._spawn(self._end(bridged, "whatsapp", tell_whatsapp=False, tell_pbx=True))

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
        self.pending.pop(bridged.sip_call_id or "", None)
        if bridged.direction == "BUSINESS_INITIATED":
            await self._end_outbound(bridged, why, was, tell_whatsapp=tell_whatsapp, tell_pbx=tell_pbx)
            return
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
        await self.media.delete(bridged.call_id)
        log.info("%s ended (%s)", bridged.tag, why)

    async def _end_outbound(self, bridged: BridgedCall, why: str, was: str, *, tell_whatsapp: bool,
                            tell_pbx: bool) -> None:
        if tell_pbx:
            if bridged.dialog is not None:
                status = await self.ua.bye(bridged.dialog, [("x-wa-meta-wacid", bridged.call_id)])
                log.info("%s BYE to the PBX: %s", bridged.tag, status)
            elif bridged.incoming is not None and bridged.incoming.final is None:
                bridged.incoming.respond(480, "Temporarily Unavailable")
        if tell_whatsapp and bridged.call_id:
            await self._graph_end(bridged, reject=False)
        if bridged.media_call:
            await self.media.delete(bridged.media_call)
        log.info("%s ended (%s)", bridged.tag, why)

    async def _graph_end(self, bridged: BridgedCall, *, reject: bool) -> None:
        try:
            await (self.graph.reject if reject else self.graph.terminate)(bridged.call_id)
        except GraphApiError as exc:              # the call already ended at Meta: nothing to end
            log.info("%s Graph on end: code %s %s", bridged.tag, exc.code, exc.message)


async def serve(config: BridgeConfig, *, json_output: bool = False) -> None:
    """Run until SIGINT/SIGTERM; then end the live calls on both sides and stop."""
    bridge = Bridge(config)
    try:
        info = await bridge.start()
    except BaseException:
        await bridge.stop()
        raise
    print(json.dumps(info) if json_output else f"wacall bridge: webhook {info['webhook_url']}, SIP {info['sip']}, "
          f"media {info['media']}, Graph {info['graph']}", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        await bridge.stop()


__all__ = ["Bridge", "BridgedCall", "serve"]
