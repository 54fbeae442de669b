"""The bridge: WhatsApp calls (Graph API and webhooks, through ``wacall.business``) to a PBX (SIP over UDP, TCP
or TLS: :mod:`.sip_ua`), the media through the ``[media] mode``'s :class:`.media.MediaPath` (RtpEngine, or the
bridge itself: :mod:`.builtin`); the steps below name RtpEngine's ng commands. User-initiated calls, as Meta's integration example describes them
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
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from wacall.business import Call, GraphApiError, GraphClient, WebhookReceiver
from wacall.sip.message import SipParseError, parse_message
from wacall.sip.uri import parse_name_addr

from .config import BridgeConfig
from .media import MediaError, MediaPath, NoCommonCodec
from .rtpengine import RtpEngineMedia
from .sip_ua import Dialog, Incoming, SipFailure, SipUserAgent
from .metrics import BridgeMetrics
from .state import CallStore, snapshot

log = logging.getLogger("wacall.bridge")

GRAPH_UNREACHABLE = (aiohttp.ClientError, asyncio.TimeoutError, KeyError, TypeError)   # no answer, or not Graph's


def open_media(config: BridgeConfig) -> MediaPath:
    """The media path of ``[media] mode``."""
    m = config.media
    if m.mode == "builtin":
        from .builtin import BuiltinMedia
        return BuiltinMedia(m.rtp_host, pbx_protocol=m.pbx_protocol)
    return RtpEngineMedia(m.rtpengine_address, timeout=m.ng_timeout, pbx_protocol=m.pbx_protocol,
                          transcode=m.transcode)


@dataclass
class BridgedCall:
    call_id: str                                  # the wacid
    user: str
    state: str = "setup"                          # setup, bridged, ended
    dialog: Dialog | None = None
    sip_call_id: str | None = None                # the INVITE's Call-ID, from the moment it is sent
    sent_invite: str | None = None                # user-initiated: the INVITE as sent, until the PBX's dialog
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
    why: str = ""                                 # why it ended (metrics: the first word)
    # bookkeeping (metrics, the state file): called as observer(call, name, old, new) when one of _WATCHED
    # changes, and once with ("state", None, state) when the call is made
    observer: Callable[[BridgedCall, str, Any, Any], None] | None = field(default=None, repr=False,
                                                                             compare=False)

    def __post_init__(self) -> None:
        if self.observer is not None:
            self.observer(self, "state", None, self.state)

    def __setattr__(self, name: str, value: Any) -> None:
        old = self.__dict__.get(name, value)
        object.__setattr__(self, name, value)
        if name in _WATCHED and old is not value and self.__dict__.get("observer") is not None:
            self.observer(self, name, old, value)      # type: ignore[misc]

    @property
    def tag(self) -> str:
        return f"wacid={self.call_id or '-'} sip={self.sip_call_id or '-'}"

    @property
    def key(self) -> str:
        """The call's name in the state file: the wacid, or the PBX's Call-ID for a business-initiated call."""
        return self.media_call or self.call_id


class PermissionCheckBusy(Exception):
    """No ``call_permissions`` slot within Meta's rate before the PBX's INVITE must be answered."""


class PermissionChecks:
    """``GET call_permissions`` for business-initiated calls, paced to Meta's rate limit for that endpoint (5
    requests per second per number in production; error 613 above it) and, when Meta still answers a rate-limit
    error, retried after Meta's one-second window while the PBX's INVITE can still wait (``deadline``, a
    ``clock()`` value). Nothing is cached: every INVITE reads the permission and its ``start_call`` action anew,
    because both change with every call and expire (docs/bridge.md "Permission checks")."""

    RATE_LIMITED = frozenset({4, 17, 613, 80007, 130429})
    WINDOW = 1.0                                  # Meta's limit counts requests in a 1 second window

    def __init__(self, graph: GraphClient, per_second: float, *, clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[float], Any] = asyncio.sleep) -> None:
        self.graph = graph
        self.interval = 1.1 / per_second if per_second > 0 else 0.0   # 10 % under the rate: jitter on the wire
        self.clock, self.sleep = clock, sleep
        self._next = 0.0                          # the earliest time of the next check

    async def _slot(self, deadline: float) -> None:
        now = self.clock()
        at = max(now, self._next)
        if at > now and at > deadline:           # no waiting past the deadline (a check due now still goes)
            raise PermissionCheckBusy(f"{len(self)} call permission checks queued for Meta's rate limit")
        self._next = at + self.interval
        if at > now:
            await self.sleep(at - now)

    def __len__(self) -> int:
        """Checks waiting for their slot now (roughly: the queue in front of a new one)."""
        return max(0, round((self._next - self.clock()) / self.interval)) if self.interval else 0

    async def check(self, user: str, deadline: float, tag: str = "wacid=- sip=-") -> dict:
        while True:
            await self._slot(deadline)
            try:
                return await self.graph.request("GET", f"{self.graph.phone_number_id}/call_permissions",
                                                params={"user_wa_id": user}, idempotent=False)
            except GraphApiError as exc:
                if exc.code not in self.RATE_LIMITED or self.clock() + self.WINDOW > deadline:
                    raise
                log.info("%s call_permissions for +%s rate-limited by Meta (code %s): again in %.0f s", tag,
                         user, exc.code, self.WINDOW)
                self._next = max(self._next, self.clock() + self.WINDOW)   # every queued check waits it out


_WATCHED = frozenset({"state", "call_id", "sip_call_id", "sent_invite", "dialog"})


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
        self.ua.on_dialog_changed = self._on_dialog_changed
        self.ua.on_invite = self._on_pbx_invite
        self.media = open_media(config)
        self.permissions = PermissionChecks(self.graph, g.permission_checks_per_second)
        if hasattr(self.media, "on_failure"):
            self.media.on_failure = self._on_media_failure    # type: ignore[attr-defined]
        self.calls: dict[str, BridgedCall] = {}
        self.pending: dict[str, BridgedCall] = {}     # business-initiated, before Graph's connect answered
        self._tasks: set[asyncio.Task] = set()
        self.webhook_url = ""
        # operations: metrics, the state file, draining (docs/bridge.md "Operating it")
        self.metrics = BridgeMetrics(lambda: list(self.calls.values()) + list(self.pending.values()))
        self.metrics.watch_graph(self.graph)
        self.store = CallStore(config.bridge.state_dir) if config.bridge.state_dir else None
        self.draining = False

    # -- lifecycle --------------------------------------------------------------------------------------------
    async def start(self) -> dict:
        await self.graph.__aenter__()
        media = await self.media.start()
        sip_port = await self.ua.start()
        if self.store is not None and 0 in (self.config.sip.port, self.config.webhook.port):
            log.warning("bridge.state_dir is set but sip.port or webhook.port is 0: a restart comes back on other "
                        "ports, and the PBX and Meta cannot reach the calls it restores")
        await self._restore()
        self.webhook_url = await self.receiver.start(self.config.webhook.host, self.config.webhook.port)
        info = {"webhook_url": self.webhook_url, "sip": f"{self.config.sip.host}:{sip_port}",
                "media": media, "graph": self.graph.base}
        if self.config.sip.register:
            info["sip_registration"] = self.ua.registration   # "registered", or what the PBX answered
        log.info("bridge ready: %s", info)
        if self.config.metrics.enabled:
            info["metrics_url"] = await self.metrics.start(self.config.metrics.host, self.config.metrics.port,
                                                           healthy=lambda: not self.draining)
            log.info("metrics at %s", info["metrics_url"])
        return info

    async def stop(self) -> None:
        """End every live call on both sides (BYE, Graph terminate), all at once, then close."""
        await asyncio.gather(*(self._end(call, "shutdown", tell_whatsapp=True, tell_pbx=True)
                               for call in list(self.calls.values()) + list(self.pending.values())),
                             return_exceptions=True)
        await self.receiver.stop()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        await self.ua.unregister()
        self.ua.close()
        self.media.close()
        await self.graph.close()
        await self.metrics.stop()
        if self.store is not None:
            self.store.close()

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- operations: bookkeeping, restart, draining -----------------------------------------------------------
    def _changed(self, bridged: BridgedCall, name: str, old: Any, new: Any) -> None:
        """Every change of a call's state, ids or dialog: metrics, and the state file."""
        if name == "state":
            self.metrics.call_changed(bridged, old, new)
            if new == "ended" and old == "bridged" and getattr(self.media, "stats", None) is not None:
                self._spawn(self._media_stats(bridged.key, bridged.tag))
        if self.store is None or not bridged.key:
            return
        if bridged.state == "ended":
            self.store.delete(bridged.key)
        else:
            keep = getattr(self.media, "snapshot", None)
            self.store.save(bridged.key, snapshot(bridged, keep(bridged.key) if keep is not None else None))

    async def _media_stats(self, media_call: str, tag: str) -> None:
        try:
            stats = await self.media.stats(media_call)          # type: ignore[attr-defined]
        except MediaError as exc:
            log.info("%s media stats: %s", tag, exc)
            return
        if stats is not None:
            self.metrics.media_stats(stats)
            log.info("%s media: from WhatsApp %s (lost %s) to the PBX %s, from the PBX %s (lost %s) to "
                     "WhatsApp %s", tag, stats.from_whatsapp, stats.lost_from_whatsapp,
                     stats.to_pbx, stats.from_pbx, stats.lost_from_pbx, stats.to_whatsapp)

    async def _restore(self) -> None:
        """The calls a previous run left in the state file: a bridged call whose media outlived the process
        (RtpEngine) is taken back (its BYE or terminate ends both legs as before); any other is ended on both
        sides, since half of it is gone (an INVITE still ringing gets 503)."""
        if self.store is None:
            return
        restore = getattr(self.media, "restore", None)
        for key, record in self.store.load():
            try:
                saved = record.get("dialog")
                dialog = Dialog(**{k: v for k, v in saved.items() if k in Dialog.__dataclass_fields__}) \
                    if saved else None
                bridged = BridgedCall(record["call_id"], record["user"], state=record["state"],
                                      direction=record["direction"], dialog=dialog,
                                      sip_call_id=record.get("sip_call_id"), media_call=record.get("media_call"),
                                      pbx_tag=record.get("pbx_tag") or "")
                bridged.started = time.monotonic() - max(0.0, time.time() - float(record["started_at"]))
            except (KeyError, TypeError, ValueError) as exc:
                log.warning("state: record %s unusable (%r): dropped", key, exc)
                self.store.delete(key)
                continue
            resumed = (bridged.state == "bridged" and dialog is not None and bridged.call_id != ""
                       and restore is not None and await restore(bridged.key, record.get("media") or {}))
            bridged.observer = self._changed
            if resumed:
                assert dialog is not None
                self.ua.dialogs[dialog.call_id] = dialog
                self.calls[bridged.call_id] = bridged
                # the webhook book learns the call again, so a repeated connect is recognised as one
                self.receiver.book.calls[bridged.call_id] = Call(
                    bridged.call_id, direction=bridged.direction, user=bridged.user, status="ACCEPTED",
                    connect={"restored": True}, events=["connect", "ACCEPTED"])
                self.metrics.restored.labels("resumed").inc()
                log.info("%s restored: bridged (%s)", bridged.tag, bridged.direction)
                continue
            self.metrics.restored.labels("ended").inc()
            log.info("%s restored in state %s: ending it on both sides", bridged.tag, bridged.state)
            if record.get("invite") and record.get("reply_to"):
                try:
                    incoming = Incoming(self.ua, parse_message(record["invite"].encode("latin-1")),
                                        tuple(record["reply_to"]))     # type: ignore[arg-type]
                    self.ua.incoming[incoming.call_id] = incoming
                    bridged.incoming = incoming
                except (SipParseError, TypeError, ValueError) as exc:
                    log.warning("%s state: INVITE unreadable: %s", bridged.tag, exc)
            if bridged.incoming is not None:
                self._refuse(bridged, 503, "Service Unavailable", "bridge restarted", ended=False)
            if dialog is None and record.get("sent_invite") and self.ua.abandon(record["sent_invite"]):
                # our INVITE's answer died with the previous run: CANCEL it (a 2xx to it gets ACK and BYE)
                log.info("%s restored with its INVITE to the PBX unanswered: CANCEL", bridged.tag)
            if bridged.call_id:
                self.calls[bridged.call_id] = bridged
            self._spawn(self._end(bridged, "restart", tell_whatsapp=True, tell_pbx=True))

    async def drain(self, seconds: float, now: asyncio.Event) -> None:
        """Refuse new calls (503 to the PBX, Graph reject for a new connect) and wait until the live calls have
        ended, ``seconds`` have passed, or ``now`` is set (a second signal); :meth:`stop` ends what is left."""
        self.draining = True
        self.metrics.draining.set(1)
        live = len(self.calls) + len(self.pending)
        log.info("draining: %d live call(s), up to %.0f s (a second signal ends them now)", live, seconds)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while (self.calls or self.pending) and not now.is_set() and loop.time() < deadline:
            try:
                await asyncio.wait_for(now.wait(), min(0.2, max(0.0, deadline - loop.time())))
            except TimeoutError:
                pass
        if self.calls or self.pending:
            log.info("drained: ending %d call(s) left", len(self.calls) + len(self.pending))

    # -- WhatsApp side ----------------------------------------------------------------------------------------
    async def on_connect(self, call: Call) -> None:
        if call.direction == "BUSINESS_INITIATED":
            await self._advance(call.call_id)
            return
        if call.direction != "USER_INITIATED" or call.ended:   # ended before this ran: nothing to bridge
            return
        if not call.sdp:
            log.warning("wacid=%s connect without an SDP offer: ignored", call.call_id)
            return
        if call.call_id in self.calls:            # restored after a restart: its connect again
            return
        if self.draining:
            log.info("wacid=%s sip=- connect from +%s while draining: rejected", call.call_id, call.user)
            self.metrics.refused_while_draining("USER_INITIATED")
            await self._graph_end(BridgedCall(call.call_id, call.user or ""), reject=True)
            return
        bridged = self.calls[call.call_id] = BridgedCall(call.call_id, call.user or "", observer=self._changed)
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
            if bridged.state == "ended":          # the user hung up while the media was set up
                await self.media.delete(wacid)
                return
            bridged.sip_call_id = self.ua.new_call_id()
            dialog, ok = await self.ua.invite(
                f"sip:{s.extension}@{s.domain}", f"sip:+{bridged.user}@{s.from_domain}",
                f"sip:{s.extension}@{s.domain}", pbx_offer, headers, call_id=bridged.sip_call_id,
                on_provisional=lambda r: log.info("%s PBX: %s %s", bridged.tag, r.status, r.reason),
                # in the state file before it goes out: a restart CANCELs it (docs/bridge.md "Restart")
                on_sending=lambda invite: setattr(bridged, "sent_invite", invite.to_bytes().decode("latin-1")))
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
            if bridged.state == "ended":          # a terminate or the PBX's BYE while Graph accepted
                return
            bridged.state, bridged.answered = "bridged", time.monotonic()
            log.info("%s bridged in %.0f ms", bridged.tag, 1000 * (bridged.answered - bridged.started))
        except asyncio.CancelledError:
            raise
        except SipFailure as exc:
            if bridged.state == "ended":          # our own CANCEL (the user hung up while it rang)
                log.info("%s INVITE ended: %s %s", bridged.tag, exc.status, exc.reason)
                return
            log.info("%s PBX refused: %s %s: rejecting", bridged.tag, exc.status, exc.reason)
            self.metrics.sip_refused(exc.status, "pbx")
            await self._end(bridged, f"sip {exc.status}", tell_whatsapp=True, tell_pbx=False, reject=True)
        except GraphApiError as exc:
            log.warning("%s Graph refused: code %s %s", bridged.tag, exc.code, exc.message)
            await self._end(bridged, f"graph {exc.code}", tell_whatsapp=False, tell_pbx=True)
        except GRAPH_UNREACHABLE as exc:
            log.warning("%s Graph unreachable or unreadable: %r", bridged.tag, exc)
            await self._end(bridged, "graph unreachable", tell_whatsapp=True, tell_pbx=True, reject=True)
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
        if self.draining:
            log.info("wacid=- sip=%s INVITE from the PBX while draining: 503", incoming.call_id)
            incoming.respond(503, "Service Unavailable", headers=[
                ("Warning", f'399 {self.config.sip.host} "bridge shutting down"'), ("Retry-After", "30")])
            self.metrics.sip_refused(503, "bridge")
            self.metrics.refused_while_draining("BUSINESS_INITIATED")
            return
        bridged = BridgedCall("", self._number(incoming), direction="BUSINESS_INITIATED", incoming=incoming,
                              sip_call_id=incoming.call_id, media_call=incoming.call_id,
                              pbx_tag=incoming.request.from_.tag or "pbx", observer=self._changed)
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
            # the PBX gave up on the INVITE after 64*T1 (Timer B; 100 Trying sent): answer well before that
            wait = min(self.config.graph.permission_wait_seconds, 64 * self.config.sip.t1 - 2)
            answer = await self.permissions.check(bridged.user, time.monotonic() + max(0.0, wait), bridged.tag)
            if bridged.state == "ended":          # the PBX cancelled while the check waited
                return
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
                await self.media.delete(bridged.media_call or "")
                return
            wacid = await self.graph.connect(bridged.user, offer)
        except asyncio.CancelledError:
            raise
        except PermissionCheckBusy as exc:
            log.warning("%s %s: 480", bridged.tag, exc)
            self._refuse(bridged, 480, "Temporarily Unavailable", "call permission checks above Meta's rate limit",
                         extra=[("Retry-After", "1")])
            return
        except GraphApiError as exc:
            log.warning("%s Graph refused: code %s %s", bridged.tag, exc.code, exc.message)
            if exc.code in PermissionChecks.RATE_LIMITED:   # 480, not 503: a proxy turns 503 into 500 (RFC 3261
                # 16.7) and drops the Warning; Retry-After: Meta's window is one second
                self._refuse(bridged, 480, "Temporarily Unavailable", f"WhatsApp error {exc.code}: {exc.message}",
                             extra=[("Retry-After", "1")])
                await self.media.delete(bridged.media_call or "")
                return
            self._refuse(bridged, 403 if exc.code == 138006 else 480,
                         "Forbidden" if exc.code == 138006 else "Temporarily Unavailable",
                         f"WhatsApp error {exc.code}: {exc.message}")
            await self.media.delete(bridged.media_call or "")
            return
        except NoCommonCodec as exc:
            log.warning("%s media: %s: 488", bridged.tag, exc)
            self._refuse(bridged, 488, "Not Acceptable Here", str(exc).split(" (set ")[0])
            await self.media.delete(bridged.media_call or "")
            return
        except MediaError as exc:
            log.warning("%s media: %s", bridged.tag, exc)
            self._refuse(bridged, 503, "Service Unavailable", "media relay unavailable")
            await self.media.delete(bridged.media_call or "")
            return
        except GRAPH_UNREACHABLE as exc:
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

    def _refuse(self, bridged: BridgedCall, status: int, reason: str, why: str, *, ended: bool = True,
                extra: list[tuple[str, str]] = ()) -> None:
        """A final refusal to the PBX's INVITE, with Warning and Reason saying why."""
        if ended:
            bridged.why = f"refused {status}"
            bridged.state = "ended"
        self.pending.pop(bridged.sip_call_id or "", None)
        if bridged.incoming is not None and bridged.incoming.final is None:
            self.metrics.sip_refused(status, "bridge")
            text = why.replace('"', "'")
            bridged.incoming.respond(status, reason, headers=[
                ("Warning", f'399 {self.config.sip.host} "{text}"'),
                ("Reason", f'SIP;cause={status};text="{text}"'), *extra])

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
                    if bridged.state != "setup":  # the PBX cancelled, or the call ended, meanwhile
                        return
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
                if dialog.unacked:                # Timer H on our 200: the UA sends the BYE itself
                    log.warning("%s no ACK from the PBX for our 200: ending", bridged.tag)
                    why = "no_ack"
                else:
                    log.info("%s BYE from the PBX", bridged.tag)
                    why = "pbx"
                self._spawn(self._end(bridged, why, tell_whatsapp=True, tell_pbx=False))
                return

    def _on_dialog_changed(self, dialog: Dialog) -> None:
        """A re-INVITE/UPDATE changed the dialog (hold, resume, a new target): written to the state file before
        the UA's 200 goes out, so a restart answers the next one from it."""
        for bridged in self.calls.values():
            if bridged.dialog is dialog:
                self._changed(bridged, "dialog", dialog, dialog)
                return

    # -- both -------------------------------------------------------------------------------------------------
    def _on_media_failure(self, media_call: str, reason: str) -> None:
        """The media mode lost a call's WhatsApp leg for good (ICE, DTLS, consent): end it on both sides."""
        for bridged in list(self.calls.values()) + list(self.pending.values()):
            if media_call in (bridged.media_call, bridged.call_id):
                log.warning("%s media failed toward WhatsApp: %s", bridged.tag, reason)
                self._spawn(self._end(bridged, "media", tell_whatsapp=True, tell_pbx=True))
                return

    async def _end(self, bridged: BridgedCall, why: str, *, tell_whatsapp: bool, tell_pbx: bool,
                   reject: bool = False, duration: object = None) -> None:
        if bridged.state == "ended":
            return
        was = bridged.state
        bridged.why = why
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
            await self._graph_end(bridged, reject=reject or was == "setup", restarted=why == "restart")
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
                self.metrics.sip_refused(480, "bridge")
        if tell_whatsapp and bridged.call_id:
            await self._graph_end(bridged, reject=False)
        if bridged.media_call:
            await self.media.delete(bridged.media_call)
        log.info("%s ended (%s)", bridged.tag, why)

    async def _graph_end(self, bridged: BridgedCall, *, reject: bool, restarted: bool = False) -> None:
        """Meta's rules: ``reject`` a user's call not yet accepted, ``terminate`` any other. A call restored in
        setup may have been accepted just before the previous run died (its state not yet written): when Meta
        refuses the reject, it is terminated."""
        try:
            await (self.graph.reject if reject else self.graph.terminate)(bridged.call_id)
        except GraphApiError as exc:              # the call already ended at Meta: nothing to end
            log.info("%s Graph on end: code %s %s", bridged.tag, exc.code, exc.message)
            if reject and restarted:
                await self._graph_end(bridged, reject=False)
        except GRAPH_UNREACHABLE as exc:          # the end goes on: the PBX leg and the media are freed anyway
            log.warning("%s Graph unreachable on end: %r", bridged.tag, exc)


async def serve(config: BridgeConfig, *, json_output: bool = False) -> None:
    """Run until SIGINT/SIGTERM; then drain (``[bridge] drain_seconds``: new calls refused, live ones may end by
    themselves; a second signal cuts it short), end the live calls left on both sides, and stop."""
    bridge = Bridge(config)
    try:
        info = await bridge.start()
    except BaseException:
        await bridge.stop()
        raise
    print(json.dumps(info) if json_output else f"wacall bridge: webhook {info['webhook_url']}, SIP {info['sip']}, "
          f"media {info['media']}, Graph {info['graph']}", flush=True)
    stop, now = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, lambda: now.set() if stop.is_set() else stop.set())
    try:
        await stop.wait()
        await bridge.drain(config.bridge.drain_seconds, now)
    finally:
        await bridge.stop()


__all__ = ["Bridge", "BridgedCall", "serve"]
