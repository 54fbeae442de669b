"""The bridge's Prometheus metrics (``prometheus_client``, one registry per bridge) and their HTTP listener
(``[metrics]``: ``GET /metrics`` in Prometheus' text format; ``GET /healthz``: 200, or 503 while draining).

What is counted (all names start ``wacall_bridge_``):

* ``calls{state, direction}``: live calls (``setup``, ``bridged``) right now, read from the bridge at scrape time;
  ``calls_started_total{direction}``, ``calls_ended_total{direction, state, reason}`` (``state``: where the call
  was when it ended; ``reason``: ``whatsapp``, ``pbx``, ``shutdown``, ``media``, ``sip``, ``graph``, ``refused``,
  ``no_ack`` (the PBX never ACKed the bridge's 200 OK: Timer H ended the dialog) ...); ``call_setup_seconds{direction}``: from the connect webhook (user-initiated) or the PBX's INVITE
  (business-initiated) to the call bridged.
* ``graph_errors_total{code}``: every Graph request Meta refused, by Meta's code (``138006``, ``138003`` ...;
  ``none`` without one, ``unreachable`` when no answer came).
* ``sip_refusals_total{status, by}``: ``by="pbx"``: the PBX's final non-2xx to the bridge's INVITE; ``by="bridge"``:
  the bridge's to the PBX's INVITE (403 no permission, 480, 486, 503 ...).
* ``media_packets_total{leg, direction}`` and ``media_lost_packets_total{leg}`` where the media path can tell
  (:meth:`MediaPath.stats`, at the end of each call): ``leg`` ``whatsapp`` / ``pbx``, ``direction`` ``in`` (received
  by the bridge's media from that leg) / ``out`` (sent to it); lost: sequence-number gaps of what came in;
  ``media_loss_ratio{toward}``: per call, the share of one side's packets that did not reach the other
  (``toward="pbx"``: the user's audio).
* ``draining`` (1 after SIGTERM), ``calls_restored_total{outcome}`` (``resumed``, ``ended``) after a restart.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable
from typing import Any

import aiohttp
from aiohttp import web
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest

from .media import MediaStats

log = logging.getLogger("wacall.bridge.metrics")

SETUP_BUCKETS = (0.1, 0.25, 0.5, 1.0, 2.0, 3.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0)
LOSS_BUCKETS = (0.0, 0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0)
LIVE_STATES = ("setup", "bridged")


class _LiveCalls:
    """A collector reading the live calls at scrape time (nothing to keep in step with the call logic)."""

    def __init__(self, live: Callable[[], Iterable[Any]]) -> None:
        self.live = live

    def collect(self):
        family = GaugeMetricFamily("wacall_bridge_calls", "Live calls by state and direction",
                                   labels=["state", "direction"])
        counts = {(state, direction): 0 for state in LIVE_STATES
                  for direction in ("USER_INITIATED", "BUSINESS_INITIATED")}
        for call in self.live():
            if call.state in LIVE_STATES:
                key = (call.state, call.direction)
                counts[key] = counts.get(key, 0) + 1
        for (state, direction), n in sorted(counts.items()):
            family.add_metric([state, direction], n)
        yield family


class BridgeMetrics:
    def __init__(self, live: Callable[[], Iterable[Any]] = tuple) -> None:
        r = self.registry = CollectorRegistry()
        r.register(_LiveCalls(live))
        self.started = Counter("wacall_bridge_calls_started", "Calls the bridge began", ["direction"], registry=r)
        self.ended = Counter("wacall_bridge_calls_ended", "Calls ended, by the state they were in and why",
                             ["direction", "state", "reason"], registry=r)
        self.setup_seconds = Histogram("wacall_bridge_call_setup_seconds", "From the first signal to bridged",
                                       ["direction"], buckets=SETUP_BUCKETS, registry=r)
        self.graph_errors = Counter("wacall_bridge_graph_errors", "Graph requests Meta refused, by Meta's code",
                                    ["code"], registry=r)
        self.sip_refusals = Counter("wacall_bridge_sip_refusals", "Final non-2xx answers to INVITEs, by status",
                                    ["status", "by"], registry=r)
        self.media_packets = Counter("wacall_bridge_media_packets", "RTP packets through the media path",
                                     ["leg", "direction"], registry=r)
        self.media_lost = Counter("wacall_bridge_media_lost_packets", "RTP packets lost before the media path",
                                  ["leg"], registry=r)
        self.loss_ratio = Histogram("wacall_bridge_media_loss_ratio", "Per call: share of packets not relayed",
                                    ["toward"], buckets=LOSS_BUCKETS, registry=r)
        self.draining = Gauge("wacall_bridge_draining", "1 while the bridge drains (SIGTERM)", registry=r)
        self.restored = Counter("wacall_bridge_calls_restored", "Calls found in the state directory at start",
                                ["outcome"], registry=r)
        self._runner: web.AppRunner | None = None

    # -- what the bridge reports --------------------------------------------------------------------------
    def call_changed(self, call: Any, old: str | None, new: str) -> None:
        if old is None:
            self.started.labels(call.direction).inc()
        elif new == "bridged" and old != "bridged":
            self.setup_seconds.labels(call.direction).observe(max(0.0, time.monotonic() - call.started))
        elif new == "ended" and old != "ended":
            reason = (getattr(call, "why", "") or "unknown").split()[0]
            self.ended.labels(call.direction, old, reason).inc()

    def refused_while_draining(self, direction: str) -> None:
        """A call turned away while draining (it never became a bridged call: counted begun and ended)."""
        self.started.labels(direction).inc()
        self.ended.labels(direction, "setup", "draining").inc()

    def sip_refused(self, status: int, by: str) -> None:
        if status >= 300:
            self.sip_refusals.labels(str(status), by).inc()

    def graph_error(self, code: object) -> None:
        self.graph_errors.labels(str(code) if code is not None else "none").inc()

    def media_stats(self, stats: MediaStats) -> None:
        for leg, direction, n in (("whatsapp", "in", stats.from_whatsapp), ("whatsapp", "out", stats.to_whatsapp),
                                  ("pbx", "in", stats.from_pbx), ("pbx", "out", stats.to_pbx)):
            if n:
                self.media_packets.labels(leg, direction).inc(n)
        for leg, lost in (("whatsapp", stats.lost_from_whatsapp), ("pbx", stats.lost_from_pbx)):
            if lost:
                self.media_lost.labels(leg).inc(lost)
        for toward, ratio in (("pbx", stats.loss_toward_pbx), ("whatsapp", stats.loss_toward_whatsapp)):
            if ratio is not None:
                self.loss_ratio.labels(toward).observe(ratio)

    def watch_graph(self, graph: Any) -> None:
        """Count every error of ``graph.request`` (which all of GraphClient's calls go through)."""
        from wacall.business import GraphApiError

        request = graph.request

        async def counted(*args: Any, **kwargs: Any) -> Any:
            try:
                return await request(*args, **kwargs)
            except GraphApiError as exc:
                self.graph_error(exc.code)
                raise
            except (aiohttp.ClientError, TimeoutError):
                self.graph_error("unreachable")
                raise
        graph.request = counted

    # -- the listener -------------------------------------------------------------------------------------
    def render(self) -> bytes:
        return generate_latest(self.registry)

    async def start(self, host: str, port: int, *, healthy: Callable[[], bool] = lambda: True) -> str:
        async def metrics(_request: web.Request) -> web.Response:
            response = web.Response(body=self.render())
            response.headers["Content-Type"] = CONTENT_TYPE_LATEST
            return response

        async def healthz(_request: web.Request) -> web.Response:
            ok = healthy()
            return web.Response(status=200 if ok else 503, text="ok" if ok else "draining")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/healthz", healthz)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port)
        await site.start()
        bound = site._server.sockets[0].getsockname()[1]              # type: ignore[union-attr]
        return f"http://{host}:{bound}/metrics"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None


__all__ = ["BridgeMetrics"]
