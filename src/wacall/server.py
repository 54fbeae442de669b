"""The running emulator: one aiohttp application serving the Graph API and the control API, the
platform (domain), the store, the media engine and the webhook dispatcher, driven by one clock.

Every operation that changes state goes through :meth:`Wacall.apply`: the domain decides, then the
records it touched, the timeline entries it noted and the webhooks it caused are committed in one
transaction, media legs of ended calls are released, the dispatcher is woken, and the platform lets
ended calls beyond its working set leave memory (the store is its archive).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import socket
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, TypeVar

import aiohttp
from aiohttp import web

from . import guard
from .config import Config, load_config
from .domain.clock import VirtualClock
from .domain.events import MediaConfigure, MediaConnected, ReleaseMedia, SipCallChanged
from .domain.model import USER_INITIATED
from .domain.platform import Platform
from .domain.state import new_id
from .media.certificate import DtlsCertificate
from .media.engine import MediaEngine
from .media.leg import MediaLeg
from .media.ports import MediaUnavailable
from .media.recording import Recordings
from .media.workers import MediaWorkers
from .store.sqlite import Store
from .webhooks.delivery import Dispatcher, outbox_rows

log = logging.getLogger("wacall")
T = TypeVar("T")
MAX_BODY = 1024 * 1024
SWEEP_SECONDS = 60.0          # how often (wall time) recordings past their retention are removed


def raise_open_file_limit() -> tuple[int, int]:
    """Raise the soft open-file limit to the hard one (calls need descriptors: SIP connections,
    webhooks, the store). Returns (soft, hard) as they are afterwards."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 1 << 20)
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
            soft = target
        except (ValueError, OSError) as exc:
            log.warning("could not raise the open-file limit from %d: %s", soft, exc)
    return soft, hard


class Wacall:
    def __init__(self, config: Config | None = None, *, db: str = ":memory:", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config or load_config()
        self.host, self.port = host, port
        self.store = Store(db)
        self.clock = VirtualClock(float(self.store.get_meta("clock_offset") or 0.0))
        self.platform = Platform(self.clock, self.config.limits, self.config.rate_card, archive=self.store)
        self.platform.keep_ended = self.config.keep_ended
        self.recordings, self._temporary_recordings = self._recordings_for(db)
        self._swept_at = time.monotonic()
        workers, certificate, port = self.config.media_workers, self._relay_certificate(), self.config.media_port
        self.media: MediaEngine | MediaWorkers = (
            MediaWorkers(workers, "127.0.0.1", reporter=self, certificate=certificate, port=port,
                         recordings=self.recordings, fastpath=self.config.media_fastpath) if workers
            else MediaEngine(host="127.0.0.1", reporter=self, certificate=certificate, port=port,
                             recordings=self.recordings, fastpath=self.config.media_fastpath))
        self._media_exhausted = False
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.runner: web.AppRunner | None = None
        self._http: asyncio.AbstractServer | None = None
        self.exposure = guard.Exposure.build(host, self.config.server.allowed_hosts, self.config.server.control_token)
        self._ticker: asyncio.Task | None = None
        self._dispatch_task: asyncio.Task | None = None
        self._tick_wake = asyncio.Event()
        self._stopping = False
        self.sip = None                    # the SIP gateway (wacall.sip.gateway.SipGateway), when enabled
        self.sip_ca_file: str | None = None
        self._commit_scheduled = False
        self.faults: dict[str, int] = {"connect_error": 0}   # fault injection: counts of failures to cause
        self.clock.on_advance(self._on_clock_advance)

    def _recordings_for(self, db: str) -> tuple[Recordings, bool]:
        """The recordings directory: configured, else ``<db>.recordings`` next to a database file, else a
        temporary directory (removed at stop)."""
        settings = self.config.recordings
        directory, temporary = settings.dir, False
        if not directory:
            if db == ":memory:" or "://" in db:
                directory, temporary = tempfile.mkdtemp(prefix="wacall-recordings-"), True
            else:
                directory = str(Path(db).with_name(Path(db).name + ".recordings"))
        return Recordings(directory, max_seconds=settings.max_seconds,
                          retention_seconds=settings.retention_seconds), temporary

    # -- lifecycle ----------------------------------------------------------------------------
    def seed(self) -> None:
        self.platform.clear()
        for record in [*self.config.wabas, *self.config.numbers, *self.config.apps, *self.config.users]:
            self.platform.put(type(record).from_doc(record.to_doc()))   # fresh copies: reset re-seeds
        self._commit()

    async def start(self) -> "Wacall":
        if self.store.has_records():
            self.platform.load(self.store.load_live_records())
        else:
            self.seed()
        self.session = aiohttp.ClientSession()
        self.dispatcher = Dispatcher(self.store, self.clock, self.session, self.config.webhooks,
                                     lambda app_id: (self.platform.apps.get(app_id) or None) and
                                     self.platform.apps[app_id].secret)
        from .graph.routes import graph_routes
        from .control.routes import control_routes
        app = web.Application(client_max_size=MAX_BODY, middlewares=[guard.guard_middleware])
        app[WACALL] = self
        app[guard.EXPOSURE] = self.exposure
        control_routes(app)
        graph_routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port = sock.getsockname()[1]
        # the runner's connections, with requests aiohttp's parser refuses answered in Meta's envelope
        loop = asyncio.get_running_loop()
        self._http = await loop.create_server(guard.protocol_factory(self.runner.server, loop, access_log=None),
                                              sock=sock)
        if isinstance(self.media, MediaWorkers):
            await self.media.start()
        if self.config.sip.port >= 0:
            await self._start_sip()        # SIP dialogs first: a call that ends while media comes back gets its BYE
        await self._reopen_media()
        self._ticker = asyncio.create_task(self._tick_loop())
        self._dispatch_task = asyncio.create_task(self.dispatcher.run())
        return self

    async def _start_sip(self) -> None:
        """The SIP gateway on TLS, with a certificate for its domain from the local CA (wacall cert)."""
        from .certs import LocalCA
        from .sip import tls
        from .sip.gateway import SipGateway
        from .sip.transport import TlsTransport

        sip = self.config.sip
        ca = LocalCA.load_or_create(sip.pki_dir)
        cert, key = ca.gateway_paths(sip.domain)
        client = tls.client_context(ca.cert_path)
        for extra in sip.trust:
            client.load_verify_locations(cafile=extra)
        transport = TlsTransport(server_ssl=tls.server_context(cert, key), client_ssl=client,
                                 resolver=tls.Resolver(sip.hosts), idle_timeout=sip.idle_timeout or None,
                                 max_connections=sip.max_connections or None,
                                 handshake_timeout=sip.handshake_timeout)
        host = self.host if self.host in ("127.0.0.1", "::1", "localhost") else "127.0.0.1"
        await transport.start(host, sip.port)
        self.sip = SipGateway(self, transport, domain=sip.domain, t1=sip.t1)
        self.sip_ca_file = str(ca.cert_path)
        self.sip.restore()                 # dialogs of SIP calls in progress before a restart

    async def stop(self) -> None:
        # the tick loop also checks this flag: Python 3.11's wait_for returns normally, swallowing the
        # cancel, when its inner wait finished in the same loop iteration (a state change just before stop)
        self._stopping = True
        self._tick_wake.set()
        for task in (self._ticker,):
            if task:
                task.cancel()
        if self.dispatcher:
            await self.dispatcher.stop()
        if self._dispatch_task:
            self._dispatch_task.cancel()
        await asyncio.gather(*(t for t in (self._ticker, self._dispatch_task) if t), return_exceptions=True)
        if self.sip is not None:
            await self.sip.close()
        await self.media.close()
        if self._http is not None:
            self._http.close()
        if self.runner:
            await self.runner.cleanup()
        if self.session:
            await self.session.close()
        self.store.close()
        if self._temporary_recordings:
            self.recordings.remove_dir()

    def _relay_certificate(self) -> DtlsCertificate:
        """The relay's DTLS certificate, kept in the store: a restarted relay still matches the
        fingerprint its SDPs advertised."""
        saved = self.store.get_meta("dtls_certificate")
        if saved:
            try:
                doc = json.loads(saved)
                return DtlsCertificate.from_pem(doc["cert"].encode(), doc["key"].encode())
            except (ValueError, KeyError, TypeError):
                log.warning("the saved DTLS certificate is unusable; making a new one")
        certificate = DtlsCertificate.generate()
        self._save_certificate(certificate)
        return certificate

    def _save_certificate(self, certificate: DtlsCertificate) -> None:
        self.store.set_meta("dtls_certificate", json.dumps({"cert": certificate.cert_pem.decode("ascii"),
                                                            "key": certificate.key_pem.decode("ascii")}))

    async def _reopen_media(self) -> None:
        """After a restart, calls still in progress get their media legs back: same port, ICE
        credentials, SSRC and keys, so a connected business hears a gap and the call goes on. A leg
        that cannot come back (its port is taken, or nothing was saved) stays without a socket, and the
        user's phone hangs up after its media timeout, as it would if Meta's relay vanished.

        The APIs already answer meanwhile: a call that ends while legs come back gets no leg (or loses
        the one it just got), and one whose leg cannot be had at all (a media worker died) ends now."""
        for call in list(self.platform.active_calls.values()):
            if call.id not in self.platform.active_calls:
                continue                                   # ended while earlier legs were coming back
            state = dict(call.media or {})
            leg = state.pop("leg", None)
            user = self.platform.users.get(call.wa_id)
            try:
                await self.media.restore(call.id, leg, state, meta_sdp=call.meta_sdp,
                                         business_sdp=call.business_sdp, key_exchange=call.key_exchange,
                                         user_audio=user.audio if user else "silence",
                                         user_is_caller=call.direction == USER_INITIATED,
                                         connected_at=call.accepted_at)
            except Exception as exc:      # no leg at all: nothing could ever time the call out
                log.error("call %s: media could not be restored: %r", call.id, exc)
                reason = f"media could not be restored after a restart ({type(exc).__name__}: {exc})"
                self.apply(lambda c=call.id: self.platform.media_ended(c, 138021, reason))
                continue
            if call.id not in self.platform.active_calls:  # it ended while its leg was coming back
                self.media.release(call.id)

    # -- the one path for state changes -----------------------------------------------------------
    def apply(self, operation: Callable[[], T]) -> T:
        try:
            result = operation()
        finally:
            self._commit()
        return result

    def _commit(self) -> None:
        events, dirty = self.platform.drain()
        faults = self.dispatcher.faults if self.dispatcher else None
        rows = outbox_rows(self.platform, events, self.clock.now(), faults) if events else []
        notes = self.platform.drain_notes()       # after the rows: injected webhook faults are noted too
        if not events and not dirty and not notes:
            self.platform.trim()
            return
        self.store.commit(dirty, rows, notes)
        for event in events:
            if isinstance(event, ReleaseMedia):
                self.media.release(event.call_id)
            elif isinstance(event, MediaConfigure):
                self._configure_media(event.call_id)
            elif isinstance(event, MediaConnected):
                self.media.call_connected(event.call_id, event.at)
            elif isinstance(event, SipCallChanged) and self.sip is not None:
                self.sip.on_call_changed(event.call_id)
        if rows and self.dispatcher:
            self.dispatcher.wake(row["url"] for row in rows)
        self._tick_wake.set()
        self.platform.trim()             # ended calls beyond the working set leave memory (persisted now)

    def commit_soon(self) -> None:
        """Persist notes added outside :meth:`apply` (SIP traces) on the next loop iteration."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:            # no loop (a synchronous caller): commit now
            self._commit()
            return
        if not self._commit_scheduled:
            self._commit_scheduled = True

            def run() -> None:
                self._commit_scheduled = False
                self._commit()
            loop.call_soon(run)

    async def reset(self) -> None:
        """Back to the configured start: state, outbox, clock and media all cleared."""
        for call_id in list(self.platform.active_calls):
            self.media.release(call_id)
        self.store.wipe()
        self._save_certificate(self.media.certificate)    # the relay keeps it: so must a restart after the reset
        self.recordings.clear()
        self.clock.set_offset(0.0)
        self.platform.limits = self.config.limits
        self.faults = {key: 0 for key in self.faults}
        if self.dispatcher:
            self.dispatcher.reset()
        self.seed()

    def _configure_media(self, call_id: str) -> None:
        call = self.platform.calls.get(call_id)
        if call is None or not call.meta_sdp or not call.business_sdp:
            return
        user = self.platform.users.get(call.wa_id)
        self.media.configure(call_id, call.meta_sdp, call.business_sdp, call.key_exchange,
                             user.audio if user else "silence", user_is_caller=call.direction == USER_INITIATED)

    # -- the media plane's reporter (wacall.media.relay.Reporter) ------------------------------------
    def note(self, call_id: str, kind: str, **data) -> None:
        self.platform.media_note(call_id, kind, **data)      # a timeline entry only: persisted with the next commit
        self.commit_soon()

    def ended(self, call_id: str, code: int, reason: str) -> None:
        self.apply(lambda: self.platform.media_ended(call_id, code, reason))

    def persist(self, call_id: str, state: dict) -> None:
        self.platform.media_state(call_id, state)           # saved with the call on the next commit
        self.commit_soon()

    def now(self) -> float:
        return self.clock.now()

    def timeouts(self) -> tuple[float, float]:
        limits = self.platform.limits
        return limits.media_start_timeout_seconds, limits.media_silence_timeout_seconds

    async def new_call_leg(self) -> tuple[str, MediaLeg]:
        """A call id and its media leg; :class:`MediaUnavailable` when the relay has no room."""
        call_id = new_id("wacid")
        try:
            leg = await self.media.allocate(call_id)
        except (OSError, RuntimeError) as exc:
            if not self._media_exhausted:            # said once per episode, not once per refused call
                self._media_exhausted = True
                log.error("media capacity exhausted (%s: %s); new calls get Meta's transient error until it "
                          "recovers", type(exc).__name__, exc)
            raise MediaUnavailable(str(exc)) from None
        if self._media_exhausted:
            self._media_exhausted = False
            log.warning("media capacity recovered")
        return call_id, leg

    # -- timers -----------------------------------------------------------------------------------
    def _on_clock_advance(self) -> None:
        self.store.set_meta("clock_offset", repr(self.clock.offset))
        self.recordings.sweep(self.clock.now(), set(self.platform.active_calls))
        self.media.check_timeouts()
        self._tick_wake.set()
        if self.dispatcher:
            self.dispatcher.wake()

    async def _tick_loop(self) -> None:
        while not self._stopping:
            try:
                self.apply(self.platform.tick)
            except Exception:  # a timer bug must not stop every other timer
                log.exception("timer tick failed")
            if time.monotonic() - self._swept_at >= SWEEP_SECONDS:
                self._swept_at = time.monotonic()
                asyncio.get_running_loop().run_in_executor(None, self.recordings.sweep, self.clock.now(),
                                                           set(self.platform.active_calls))
            next_deadline = self.platform.next_deadline()
            delay = 0.5 if next_deadline is None else max(0.005, min(0.5, next_deadline - self.clock.now()))
            self._tick_wake.clear()
            try:
                await asyncio.wait_for(self._tick_wake.wait(), timeout=delay)
            except asyncio.TimeoutError:
                pass

    # -- what a client needs ----------------------------------------------------------------------
    @property
    def base_url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def info(self, credentials: bool = True) -> dict[str, Any]:
        """What a client needs; the app's credentials only when ``credentials`` (loopback callers)."""
        app = self.config.apps[0]
        number = self.config.numbers[0]
        return {
            "graph_url": self.base_url,
            "control_url": f"{self.base_url}/_wacall",
            "access_token": app.access_token if credentials else None,
            "app_id": app.id,
            "app_secret": app.secret if credentials else None,
            "verify_token": app.verify_token if credentials else None,
            "waba_id": number.waba_id,
            "phone_number_id": number.id,
            "display_phone_number": number.display_phone_number,
            "users": [{"wa_id": u.wa_id, "name": u.name} for u in self.platform.users.values()],
            "limits_profile": self.platform.limits.profile,
            "sip": None if self.sip is None else {
                "host": self.sip.transport.host, "port": self.sip.transport.port, "domain": self.sip.domain,
                "ca_file": self.sip_ca_file},
        }


WACALL = web.AppKey("wacall", Wacall)
