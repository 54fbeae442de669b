"""The running emulator, and where its parts are wired together: one aiohttp application serving the
Graph API and the control API, the platform (domain), the store, the media engine, the SIP gateway and
the webhook dispatcher, driven by one clock.

Nothing imports this module but the command line: each wire layer declares the narrow interface it
needs (``GraphHost``, ``ControlHost``, ``SipHost``) and this module builds it.

Every operation that changes state goes through :meth:`Wacall.apply`: the domain decides, then the
records it touched, the timeline entries it noted and the webhooks it caused are committed in one
transaction, the events are published to the consumers that registered for their type (media legs
configured, connected and released; the SIP gateway told), the dispatcher is woken, and the platform
lets ended calls beyond its working set leave memory (the store is its archive).
"""

from __future__ import annotations

import asyncio
import json
import logging
import resource
import secrets
import socket
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, TypeVar

import aiohttp
from aiohttp import web

from . import codec, guard, logs
from .certs import LocalCA
from .config import Config, load_config
from .console.phone import PhoneHost, add_phone_routes
from .console.routes import console_routes, root_redirect
from .console.stream import CALL_EVENTS, LiveStream
from .control.routes import CONTROL, ControlHost, control_routes
from .domain.clock import VirtualClock
from .domain.ends import MediaFact
from .domain.events import (
    EventRegistry,
    MediaConfigure,
    MediaConnected,
    ReleaseMedia,
    SipCallChanged,
    VoicemailAnswer,
    VoicemailRecord,
)
from .domain.platform import Platform
from .domain import recording as call_recording
from .graph.media import DOWNLOAD_PATH
from .graph.routes import GRAPH, GraphHost, graph_routes
from .legs import LegOwner
from .media.playout import PreEncodedAudio
from .media.certificate import DtlsCertificate
from .media.recording import Recordings
from .media.voicemail import announcement_frames
from .media.workers import MediaWorkers
from .sip import tls
from .sip.gateway import SipGateway, SipHost
from .sip.transport import TlsTransport
from .store.mediafiles import MediaFiles, MediaLibrary
from .store.sqlite import Store
from .users import behaviour
from .webhooks.delivery import Dispatcher, outbox_rows

if TYPE_CHECKING:
    from .media.engine import MediaEngine

log = logging.getLogger("wacall")
T = TypeVar("T")
MAX_BODY = 1024 * 1024
VOICEMAIL_MIME = "audio/ogg; codecs=opus"      # Meta's voicemail sample
#: events that make no webhook (consumed inside the process): a grouped change that emits only these may wait
#: for the end of the loop turn, or of GROUPED_WITHIN after the last commit, to be committed
#: (``Wacall.apply(group=True)``)
QUIET_EVENTS = (SipCallChanged, ReleaseMedia, MediaConfigure, MediaConnected, VoicemailAnswer, VoicemailRecord)
# How long a deferred fact (apply(defer=True): a SIP trace, a dialog's state, a media note) may wait for its commit:
# any commit before then takes it along. Nobody was told of it, so a kill -9 inside the window loses no promise
# (a dialog whose ACK it was comes back unconfirmed and its 200 is sent again, which the business ACKs again,
# RFC 3261 13.3.1.4); under load it joins another transaction instead of costing one of its own (a SIP flow's ACK).
# The HTTP APIs commit what still waits before they answer (the `settled` middleware): what was shown is durable.
DEFERRED_WITHIN = 0.02
# How long after a commit a grouped change (apply(group=True): a SIP request's or a timer's change, whose 180/200
# the consumers send after its commit) waits for the next one: one commit a GROUPED_WITHIN at most under load,
# taking every change made by then, at once when the last commit is older (an idle server answers as before).
GROUPED_WITHIN = 0.002
SWEEP_SECONDS = 60.0          # how often (wall time) recordings past their retention are removed


def _media_engine() -> type[MediaEngine]:
    """The in-process relay's engine, imported only when the media runs in this process: with media workers
    the server loads no DTLS, SRTP nor compiled media path."""
    from .media.engine import MediaEngine
    return MediaEngine


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


def _differing(old: dict, new: dict) -> list[str]:
    """The fields two documents disagree on."""
    return sorted(k for k in set(old) | set(new) if old.get(k) != new.get(k))


SETTLE = web.AppKey("settle", Callable[[], None])


@web.middleware
async def settled(request: web.Request, handler):
    """Deferred facts still waiting for their commit are committed before an HTTP request is answered, so what the
    Graph and control APIs show has been made durable (a kill -9 after the answer keeps it)."""
    request.app[SETTLE]()
    return await handler(request)


class Wacall:
    def __init__(self, config: Config | None = None, *, db: str = ":memory:", host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config = config or load_config()
        self.host, self.port = host, port
        self.port_requested = port             # what was asked for (0: any free port); self.port: what was had
        self.db = db
        self.restored = False                  # start() found state in the database and used it
        self.config_drift: list[str] = []      # how the config differs from what the database was seeded with
        self.store = Store(db)
        self.clock = VirtualClock(float(self.store.get_meta("clock_offset") or 0.0))
        self.platform = Platform(self.clock, self.config.limits, self.config.rate_card, archive=self.store,
                                 behaviour=behaviour)
        self.platform.keep_ended = self.config.keep_ended
        self.recordings, self._temporary_recordings = self._recordings_for(db)
        self.media_library = MediaLibrary(self._media_files_for(db), self.platform, self.apply, self._media_url_key())
        self._swept_at = time.monotonic()
        self._captures: set[asyncio.Task] = set()   # calls' recordings and transcripts being made
        workers, certificate, port = self.config.media_workers, self._relay_certificate(), self.config.media_port
        self.media: MediaEngine | MediaWorkers = (
            MediaWorkers(workers, "127.0.0.1", reporter=self, certificate=certificate, port=port,
                         recordings=self.recordings, fastpath=self.config.media_fastpath) if workers
            else _media_engine()(host="127.0.0.1", reporter=self, certificate=certificate, port=port,
                                 recordings=self.recordings, fastpath=self.config.media_fastpath))
        self.legs = LegOwner(self.media, self.apply)      # allocates new calls' legs, releases refused ones
        self.session: aiohttp.ClientSession | None = None
        self.dispatcher: Dispatcher | None = None
        self.runner: web.AppRunner | None = None
        self._http: asyncio.AbstractServer | None = None
        self.exposure = guard.Exposure.build(host, self.config.server.allowed_hosts, self.config.server.control_token)
        self._loop: asyncio.AbstractEventLoop | None = None   # the loop start() ran on (asking costs a getpid())
        self._tick_timer: asyncio.TimerHandle | asyncio.Handle | None = None   # the timers' next look
        self._dispatch_task: asyncio.Task | None = None
        self._tick_planned = float("-inf")     # when (clock time) the timers look next; -inf: now (or not started)
        self._stopping = False
        self.sip: SipGateway | None = None     # the SIP gateway, when enabled
        self.sip_ca_file: str | None = None
        self._applying = 0                     # apply() calls and commits in progress (they nest: one commit)
        self._due = False                      # a nested apply() wants its commit now, not deferred
        self._flush_scheduled = False
        self._committed_at = float("-inf")   # the loop's time of the last commit (see GROUPED_WITHIN)
        self._grouped: asyncio.TimerHandle | None = None    # the commit of grouped changes, at that window's end
        self._deferred: asyncio.TimerHandle | None = None   # the commit of deferred facts, DEFERRED_WITHIN away
        self._preparing = False                # consumers are preparing a commit's events (see _commit_round)
        self.faults: dict[str, int] = {"connect_error": 0}   # fault injection: counts of failures to cause
        self.clock.on_advance(self._on_clock_advance)
        self.live = LiveStream()               # GET /_wacall/stream: told of call changes, webhook attempts, the clock
        self.consumers = EventRegistry()       # event type -> who reacts after the commit (see _route_events)
        self._route_events()

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

    @staticmethod
    def _media_files_for(db: str) -> MediaFiles:
        """The Media API's files: ``<db>.media`` next to a database file, else a temporary directory (removed
        at stop)."""
        if db == ":memory:" or "://" in db:
            return MediaFiles(tempfile.mkdtemp(prefix="wacall-media-"), temporary=True)
        return MediaFiles(Path(db).with_name(Path(db).name + ".media"))

    def _media_url_key(self) -> bytes:
        """The key media download URLs are signed with: kept in the store, so URLs outlive a restart."""
        key = self.store.get_meta("media_url_key")
        if key is None:
            key = secrets.token_hex(32)
            self.store.set_meta("media_url_key", key)
        return bytes.fromhex(key)

    # -- lifecycle ----------------------------------------------------------------------------
    def seed(self) -> None:
        self.platform.clear()
        for record in [*self.config.wabas, *self.config.numbers, *self.config.apps, *self.config.users]:
            self.platform.put(type(record).from_doc(record.to_doc()))   # fresh copies: reset re-seeds
        self._commit()
        self.store.set_meta("seeded_from", json.dumps(self._seed_docs(), sort_keys=True))

    def _seed_docs(self) -> dict[str, dict[str, dict]]:
        """What the config seeds, as documents by kind and key (kept in the store to tell config edits apart)."""
        docs: dict[str, dict[str, dict]] = {}
        for record in [*self.config.wabas, *self.config.numbers, *self.config.apps, *self.config.users]:
            docs.setdefault(record.KIND, {})[record.key] = json.loads(json.dumps(record.to_doc(), default=str))
        return docs

    def _check_config_drift(self) -> list[str]:
        """A database with state is used as it is; a config edited since it was seeded (users or numbers added,
        removed or changed) is reported, never silently ignored (docs/configuration.md, "Config and database")."""
        saved = self.store.get_meta("seeded_from")
        if saved is None:
            return []
        try:
            before = json.loads(saved)
        except ValueError:
            return []
        now = self._seed_docs()
        drift = []
        for kind in sorted(set(before) | set(now)):
            old, new = before.get(kind, {}), now.get(kind, {})
            added = sorted(set(new) - set(old))
            removed = sorted(set(old) - set(new))
            changed = [f"{key} ({', '.join(_differing(old[key], new[key]))})"
                       for key in sorted(set(old) & set(new)) if old[key] != new[key]]
            for what, keys in (("added", added), ("removed", removed), ("changed", changed)):
                if keys:
                    drift.append(f"{kind} {what}: {', '.join(keys)}")
        return drift

    async def start(self) -> "Wacall":
        self.restored = self.store.has_records()
        if self.restored:
            self.platform.load(self.store.load_live_records())
            self.config_drift = self._check_config_drift()
            if self.config_drift:
                log.warning("the config differs from what %s was seeded with (%s); the database's state is used "
                            "as it is: POST /_wacall/reset (or a new --db) applies the config", self.db,
                            "; ".join(self.config_drift))
        else:
            self.seed()
        self.media_library.sweep_orphans()      # files a crash left without their record
        if log.isEnabledFor(logging.INFO):
            log.info("database %s: %s", self.db, f"state restored ({len(self.platform.active_calls)} calls in "
                     "progress)" if self.restored else "new, seeded from the config")
        self.session = aiohttp.ClientSession()
        self.dispatcher = Dispatcher(self.store, self.clock, self.session, self.config.webhooks,
                                     lambda app_id: (self.platform.apps.get(app_id) or None) and
                                     self.platform.apps[app_id].secret)
        middlewares = [guard.guard_middleware, settled, root_redirect]
        if logs.http.isEnabledFor(logging.INFO):     # decided once: below INFO a request pays nothing for it
            middlewares.insert(0, logs.request_middleware)
        app = web.Application(client_max_size=MAX_BODY, middlewares=middlewares)
        app[guard.EXPOSURE] = self.exposure
        app[SETTLE] = self.settle
        app[CONTROL] = self._control_host()
        app[GRAPH] = self._graph_host()
        self.dispatcher.on_attempt = self.live.webhook_attempted
        add_phone_routes(app, self._phone_host())      # the browser phone
        console_routes(app, self.live)         # the console and the live stream: before the control routes' catch-all
        control_routes(app)
        graph_routes(app)
        self.runner = web.AppRunner(app, access_log=None)
        await self.runner.setup()
        sock = socket.socket(socket.AF_INET6 if ":" in self.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self.port))
        self.port_requested, self.port = self.port, sock.getsockname()[1]
        # the runner's connections, with requests aiohttp's parser refuses answered in Meta's envelope
        self._loop = loop = asyncio.get_running_loop()
        self._http = await loop.create_server(guard.protocol_factory(self.runner.server, loop, access_log=None),
                                              sock=sock)
        if isinstance(self.media, MediaWorkers):
            await self.media.start()
        if self.config.sip.port_for(self.port_requested) >= 0:
            await self._start_sip()        # SIP dialogs first: a call that ends while media comes back gets its BYE
        await self._reopen_media()
        self._tick_timer = loop.call_soon(self._tick)
        self._dispatch_task = asyncio.create_task(self.dispatcher.run())
        return self

    async def _start_sip(self) -> None:
        """The SIP gateway on TLS, with a certificate for its domain from the local CA (wacall cert)."""
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
        await transport.start(host, sip.port_for(self.port_requested))
        self.sip = gateway = SipGateway(
            SipHost(platform=self.platform, apply=self.apply,
                    place_call=partial(self.legs.place, group=True)), transport,   # the 180 is sent by a consumer
            domain=sip.domain, t1=sip.t1)
        self.sip_ca_file = str(ca.cert_path)
        self.consumers.on(SipCallChanged, gateway.on_call_changed, prepare=gateway.prepare_call_changed)
        # after the media plane's release (registered in _route_events): the BYE's 200 is traced after final_stats
        self.consumers.on(ReleaseMedia, None, prepare=gateway.prepare_released)
        gateway.restore()                  # dialogs of SIP calls in progress before a restart

    async def stop(self) -> None:
        self._stopping = True              # (a tick under way schedules no next one)
        if self._tick_timer is not None:
            self._tick_timer.cancel()
            self._tick_timer = None
        if self.dispatcher:
            await self.dispatcher.stop()
        if self._dispatch_task:
            self._dispatch_task.cancel()
            await asyncio.gather(self._dispatch_task, return_exceptions=True)
        for task in list(self._captures):
            task.cancel()
        if self.sip is not None:
            await self.sip.close()
        await self.media.close()
        for _ in range(8):                 # deferred facts (the last traces, final statistics) and grouped changes
            if self._deferred is None and not self._flush_scheduled:   # waiting for their commit: committed now,
                break                      # and those the consumers of that commit deferred (bounded: not a loop
            self._commit()                 # that a consumer deferring on each commit would keep going)
        self.live.close()                  # open streams end: the runner's cleanup does not wait on them
        if self._http is not None:
            self._http.close()
        if self.runner:
            await self.runner.cleanup()
        if self.session:
            await self.session.close()
        self.store.close()
        if self._temporary_recordings:
            self.recordings.remove_dir()
        if self.media_library.files.temporary:
            self.media_library.files.remove_dir()

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
            setup = self.platform.media_setup(call)        # the domain's negotiation and phone, as at set-up
            try:
                await self.media.restore(call.id, leg, state, negotiated=setup.negotiated if setup else None,
                                         user_audio=setup.user_audio if setup else "silence",
                                         user_is_caller=setup.user_is_caller if setup else True,
                                         connected_at=call.accepted_at)
            except Exception as exc:      # no leg at all: nothing could ever time the call out
                log.error("call %s: media could not be restored: %r", call.id, exc)
                reason = f"media could not be restored after a restart ({type(exc).__name__}: {exc})"
                self.apply(lambda c=call.id: self.platform.media_ended(c, MediaFact.NOT_RESTORED, reason))
                continue
            if call.id not in self.platform.active_calls:  # it ended while its leg was coming back
                self.media.release(call.id)

    # -- the one path for state changes -----------------------------------------------------------
    def apply(self, operation: Callable[[], T], *, defer: bool = False, group: bool = False) -> T:
        """Run ``operation`` (a domain call) and commit what it changed, also when it raises.

        Calls nest: an ``apply`` inside another, or inside a consumer reacting to a commit's events,
        is committed by the one around it. ``defer`` is for facts no caller waits on (SIP traces and
        dialog state, the media plane's notes and positions): they are committed with the next commit,
        at the latest ``DEFERRED_WITHIN`` later (at the end of this event-loop iteration if they caused a
        webhook), so a burst of them costs one transaction, and a consumer's trace does not hold up the
        request that caused it.

        ``group`` is for a state change that its caller does not acknowledge itself: everything it
        causes that leaves the process (the SIP 180/200) is sent by the event's consumers, which run
        after the commit. If it caused no webhook (only ``QUIET_EVENTS`` are pending), it is
        committed, and its consumers run, at the end of this event-loop iteration together with every
        other change made by then (under load: at the end of ``GROUPED_WITHIN`` after the last commit): the
        SIP requests and timers of one loop turn share one transaction, and still nothing is announced
        before it is durable. A webhook does not wait for the loop turn
        (its latency is measured from the state change), so a change that makes one is committed at
        once, as is an operation that raises (its caller answers the refusal itself).
        """
        self._applying += 1
        done = False
        try:
            result = operation()
            done = True
            return result
        finally:
            self._applying -= 1
            later = defer
            quiet = True
            if (group and done) or defer:
                for event in self.platform.events:       # (a loop: a generator in all() costs more)
                    if not isinstance(event, QUIET_EVENTS):
                        quiet = False
                        break
                if not defer:
                    later = quiet
            if not later:
                self._due = True
            if not self._applying:
                if self._due:
                    self._commit()
                elif defer and quiet:
                    self._flush_deferred()
                else:
                    self._flush_soon(quiet)
            elif later and not self._preparing:      # (a preparer's changes join the commit under way)
                if defer and quiet:
                    self._flush_deferred()
                else:
                    self._flush_soon(quiet)

    def _flush_soon(self, quiet: bool = False) -> None:
        """Commit at the end of this event-loop iteration (now, without a running loop); ``quiet`` (the changes
        make no webhook): at the end of ``GROUPED_WITHIN`` after the last commit if that is later."""
        loop = self._loop               # kept: Python 3.11's get_running_loop() makes a getpid() syscall
        if loop is None or not loop.is_running():
            try:
                loop = self._loop = asyncio.get_running_loop()
            except RuntimeError:        # a synchronous caller: there is no later
                self._due = True
                if not self._applying:
                    self._commit()
                return
        if self._flush_scheduled and (quiet or self._grouped is None):
            return                      # one commit takes everything (a webhook's does not wait for the window)
        if self._grouped is not None:
            self._grouped.cancel()
            self._grouped = None
        self._flush_scheduled = True
        wait = self._committed_at + GROUPED_WITHIN - loop.time() if quiet else 0.0
        if wait > 0:                    # (a commit a moment ago: the changes of the next turns join this one)
            self._grouped = loop.call_later(wait, self._flush)
        else:
            loop.call_soon(self._flush)

    def _flush_deferred(self) -> None:
        """Commit within ``DEFERRED_WITHIN`` (any commit before then takes these changes along)."""
        if self._deferred is not None or self._flush_scheduled:
            return
        loop = self._loop
        if loop is None or not loop.is_running():
            self._flush_soon()              # (it finds the running loop, or commits now without one)
            return
        self._deferred = loop.call_later(DEFERRED_WITHIN, self._flush)

    def _flush(self) -> None:
        self._flush_scheduled = False
        self._commit()

    def settle(self) -> None:
        """Commit the changes still waiting for their commit (see ``settled``): deferred facts in their window, and
        grouped changes waiting for the end of the loop turn or of their GROUPED_WITHIN window (an HTTP request's
        task may run before that)."""
        if (self._deferred is not None or self._flush_scheduled) and not self._applying:
            self._commit()

    def _commit(self) -> None:
        """Commit in rounds: each persists the domain's changes (records, timeline entries, outbox rows)
        in one transaction, then publishes its events; a consumer's own apply() makes another round."""
        # the deferred changes waiting go with this commit: their window closes now, not when it ends, so that a
        # consumer's deferred fact (a trace of what it sent) opens a window of its own (this commit's last round
        # does not take it); so do the grouped changes waiting for their window. Neither timer outlives this
        # commit, even a failed one: its first round drained what they waited for (a failed commit loses it, and
        # its caller or the loop's handler sees the error), and a timer left would fire after stop()
        taken, self._deferred = self._deferred, None
        grouped, self._grouped = self._grouped, None
        if grouped is not None:
            self._flush_scheduled = False
        self._applying += 1             # consumers' apply() calls do not commit on their own
        try:
            self._due = True
            while self._due:
                self._due = False
                self._commit_round()
        finally:
            self._applying -= 1
            self._due = False
            if taken is not None:
                taken.cancel()
            if grouped is not None:
                grouped.cancel()
        self.platform.trim()            # ended calls beyond the working set leave memory (persisted now)

    def _commit_round(self) -> None:
        events, dirty = self.platform.drain()
        if events and self.consumers.prepares:
            dirty = self._prepare(events, dirty)
        faults = self.dispatcher.faults if self.dispatcher else None
        rows = outbox_rows(self.platform, events, self.clock.now(), faults) if events else []
        notes = self.platform.drain_notes()       # after the rows: injected webhook faults are noted too
        if not events and not dirty and not notes:
            return
        ids = self.store.commit(dirty, rows, notes)
        if self._loop is not None:
            self._committed_at = self._loop.time()
        if rows and self.dispatcher:              # first: the webhooks leave now, in this loop turn
            self.dispatcher.committed(rows, ids)
        if notes and logs.calls.isEnabledFor(logging.INFO):
            logs.log_notes(notes)
        for event in events:                      # media, SIP: whoever registered for the event's type
            self.consumers.publish(event, self._consumer_failed)
        self._wake_timers()

    def _wake_timers(self) -> None:
        """Wake the timers when a commit made a deadline earlier than their next look (a call the user answers
        at once); other commits leave them asleep (the next deadline comes from a heap)."""
        if self._tick_planned == float("-inf"):     # they look now already (or have not started)
            return
        due = self.platform.next_deadline()
        if due is not None and due < self._tick_planned:
            self._wake_tick()

    def _prepare(self, events: list, dirty: list) -> list:
        """Let the consumers prepare the events before they are committed: what they note or save joins this
        commit (one transaction and one serialisation of the call instead of two). Returns the dirty records."""
        self._preparing = True
        try:
            for event in events:
                self.consumers.prepare(event)
        finally:
            self._preparing = False
        more_events, more_dirty = self.platform.drain()
        events.extend(more_events)
        if more_dirty:
            known = {(record.KIND, record.key) for record in dirty}
            dirty = dirty + [record for record in more_dirty if (record.KIND, record.key) not in known]
        return dirty

    @staticmethod
    def _consumer_failed(event: Any, exc: Exception) -> None:
        """A consumer's bug: the state is committed already, and the other consumers, the webhooks and
        the next events go on; the log says what failed."""
        log.error("consumer of %s failed: %s", type(event).__name__, exc, exc_info=exc)

    def _route_events(self) -> None:
        """Who consumes which event after its commit (the webhooks were rendered into the commit itself;
        the SIP gateway registers for ``SipCallChanged`` when it starts)."""
        # the leg is released before the commit that ends the call, so its final_stats join that commit (and the
        # SIP 200 to a BYE, traced after them) instead of costing a transaction of their own
        self.consumers.on(ReleaseMedia, self._after_call, prepare=self._release_media)
        # the relay is configured before the commit of the change that negotiated its media, so what it notes
        # (srtp_ready, dtls_role) joins that commit instead of costing a transaction of its own
        self.consumers.on(MediaConfigure, None, prepare=self._configure_media)
        self.consumers.on(MediaConnected, lambda event: self.media.call_connected(event.call_id, event.at,
                                                                                  event.announcement))
        self.consumers.on(VoicemailAnswer, self._voicemail_answer)
        self.consumers.on(VoicemailRecord, lambda event: self.media.voicemail_record(event.call_id, event.seconds))
        for event_type in (VoicemailAnswer, VoicemailRecord):      # the live stream: the call's voicemail moved on
            self.consumers.on(event_type, self._live_call_changed)
        for event_type in CALL_EVENTS:         # the live stream: which call changed (it reads the view itself)
            self.consumers.on(event_type, self._live_call_changed)

    def _live_call_changed(self, event: Any) -> None:
        self.live.call_changed(event.call_id)  # (it does nothing while nobody watches, the usual case)

    # -- call recording and transcription (domain.recording, media.capture) ------------------------------
    def _after_call(self, event: ReleaseMedia) -> None:
        """A call with recording or transcription enabled ended: its audio is processed off the event loop."""
        call = self.platform.call(event.call_id)
        if not call_recording.wanted(call):
            return
        task = asyncio.get_running_loop().create_task(self._capture(call.id, call.phone_number_id, dict(call.capture)))
        self._captures.add(task)
        task.add_done_callback(self._captures.discard)

    async def _capture(self, call_id: str, phone_number_id: str, capture: dict) -> None:
        """Make the call's recording / transcript in a child process (``python -m wacall.media.capture``:
        the recogniser holds the GIL for seconds, which would stall the calls' media here), publish them and
        tell the business; a user who hung up during the announcement declined."""
        process = None
        try:
            await self.media.released(call_id)             # the leg wrote out what the user heard
            with tempfile.TemporaryDirectory(prefix="wacall-capture-") as out:
                args = [sys.executable, "-m", "wacall.media.capture", "--recordings-dir", str(self.recordings.dir),
                        "--call-id", call_id, "--out", out, "--processed-at", repr(self.clock.now())]
                args += ["--recording"] if call_recording.enabled(capture, "recording") else []
                args += ["--transcription"] if call_recording.enabled(capture, "transcription") else []
                process = await asyncio.create_subprocess_exec(*args, stdin=asyncio.subprocess.DEVNULL,
                                                               stdout=asyncio.subprocess.PIPE,
                                                               stderr=asyncio.subprocess.PIPE)
                stdout, stderr = await process.communicate()
                if process.returncode != 0:
                    raise RuntimeError(stderr.decode(errors="replace").strip().splitlines()[-1:] or process.returncode)
                result = codec.loads(stdout.strip().splitlines()[-1])
                if result["declined"]:
                    self.apply(lambda: call_recording.declined(self.platform, call_id))
                    return
                recording = transcript = None
                if result["recording"]:
                    recording = self._publish(phone_number_id, result["recording"], "audio/ogg; codecs=opus")
                if result["transcript"]:
                    transcript = self._publish(phone_number_id, result["transcript"], "application/json")
            self.apply(lambda: call_recording.available(self.platform, call_id, recording, transcript,
                                                        result["text"]))
        except asyncio.CancelledError:
            if process is not None and process.returncode is None:
                process.kill()
            raise
        except Exception as exc:          # Meta: best effort; nothing is sent when processing fails
            log.warning("recording/transcription of call %s failed: %s", call_id, exc)
            reason = str(exc)             # (the deferred note runs after this block, where exc is gone)
            self.apply(lambda: self.platform.media_note(call_id, "recording_failed", reason=reason), defer=True)

    def _publish(self, phone_number_id: str, path: str, mime_type: str) -> dict:
        """Publish a file as webhook media (kept 7 days) and describe it as Meta's webhooks do."""
        media_id = self.media_library.add_media(phone_number_id, path, mime_type, move=True)
        record = self.platform.media_record(media_id)
        return {"id": media_id, "sha256": record.sha256 if record else None, "mime_type": mime_type,
                "url": f"{self.base_url}{DOWNLOAD_PATH}?{self.media_library.url_query(media_id)}"}

    def _release_media(self, event: ReleaseMedia) -> None:
        """Release the call's leg (a preparer: a failure is logged like a consumer's and the commit goes on).
        Should that commit fail, the leg is gone all the same: the call has ended in memory, and the
        consumers, which do not run then, release nothing a second time."""
        try:
            self.media.release(event.call_id)
        except Exception as exc:
            self._consumer_failed(event, exc)

    def _configure_media(self, event: MediaConfigure) -> None:
        """Configure the relay for a call (a preparer: a failure is logged like a consumer's and the commit
        goes on; the call's media then times out as Meta's would)."""
        try:
            self.media.configure(event.call_id, event.negotiated, event.user_audio, event.user_is_caller)
        except Exception as exc:
            self._consumer_failed(event, exc)

    # -- voicemail: the announcement from the media store to the relay, the message back ----------------
    def _voicemail_answer(self, event: VoicemailAnswer) -> None:
        asyncio.get_running_loop().create_task(self._play_announcement(event))

    async def _play_announcement(self, event: VoicemailAnswer) -> None:
        """Read the business's uploaded announcement, decode it off the loop and hand the relay its frames;
        an announcement that cannot be had (deleted, not Ogg/Opus) ends the voicemail without a message."""
        call_id = event.call_id
        try:
            _mime, data = self._announcement_bytes(event.announcement_media_id)
            frames = await asyncio.get_running_loop().run_in_executor(None, announcement_frames, data)
        except Exception as exc:
            reason = f"announcement {event.announcement_media_id} unusable: {type(exc).__name__}: {exc}"
            self.apply(lambda: self.platform.voicemail_failed(call_id, reason))
            return
        if not self.media.voicemail_answer(call_id, frames, event.user_audio):
            self.apply(lambda: self.platform.voicemail_failed(call_id, "the call's media leg is gone"))

    def _announcement_bytes(self, media_id: str) -> tuple[str, bytes]:
        return self.media_library.media_bytes(media_id)

    def _publish_voicemail(self, phone_number_id: str, ogg: bytes) -> tuple[str, str]:
        """The message as webhook media (kept 7 days): its media id and base64 SHA-256."""
        media_id = self.media_library.add_media(phone_number_id, ogg, VOICEMAIL_MIME)
        media = self.platform.media_record(media_id)
        return media_id, media.sha256 if media is not None else ""

    def voicemail_heard(self, call_id: str) -> None:
        self.apply(lambda: self.platform.voicemail_heard(call_id))

    def voicemail_recorded(self, call_id: str, ogg: bytes, seconds: float) -> None:
        """The relay recorded the user's message: publish it in the media store (downloadable through the
        Media API), then the domain ends the call and sends the audio message."""
        call = self.platform.active_calls.get(call_id)
        if call is None:                     # the user hung up meanwhile: nothing is published
            return
        try:
            media_id, sha256 = self._publish_voicemail(call.phone_number_id, ogg)
        except Exception as exc:
            reason = f"the message could not be stored: {type(exc).__name__}: {exc}"
            self.apply(lambda: self.platform.voicemail_failed(call_id, reason))
            return
        self.apply(lambda: self.platform.voicemail_left(call_id, media_id=media_id, sha256=sha256,
                                                        mime_type=VOICEMAIL_MIME, seconds=seconds))

    async def reset(self) -> None:
        """Back to the configured start: state, outbox, clock and media all cleared."""
        for call_id in list(self.platform.active_calls):
            self.media.release(call_id)
        self.store.wipe()
        self.store.set_meta("media_url_key", self.media_library.url_key.hex())   # media URLs handed out stay valid
        self._save_certificate(self.media.certificate)    # the relay keeps it: so must a restart after the reset
        self.recordings.clear()
        self.media_library.files.clear()
        self.clock.set_offset(0.0)
        self.config_drift = []           # the config is applied now
        self.platform.limits = self.config.limits
        for key in self.faults:          # in place: the control API holds this dict
            self.faults[key] = 0
        if self.dispatcher:
            self.dispatcher.reset()
        self.seed()

    # -- the media plane's reporter (wacall.media.relay.Reporter) ------------------------------------
    def note(self, call_id: str, kind: str, **data) -> None:
        if self._preparing:      # a preparer's (configure's srtp_ready, release's final_stats): the commit under way
            self.platform.media_note(call_id, kind, **data)     # takes it, as apply(defer=True) would have let it
            return
        self.apply(lambda: self.platform.media_note(call_id, kind, **data), defer=True)

    def ended(self, call_id: str, fact: str, reason: str) -> None:
        self.apply(lambda: self.platform.media_ended(call_id, fact, reason))

    def persist(self, call_id: str, state: dict) -> None:
        self.apply(lambda: self.platform.media_state(call_id, state), defer=True)   # saved with the call

    def now(self) -> float:
        return self.clock.now()

    def timeouts(self) -> tuple[float, float]:
        limits = self.platform.limits
        return limits.media_start_timeout_seconds, limits.media_silence_timeout_seconds

    # -- the wire layers' interfaces --------------------------------------------------------------
    def _graph_host(self) -> GraphHost:
        assert self.dispatcher is not None
        return GraphHost(platform=self.platform, apply=self.apply, place_call=self.legs.place,
                         take_fault=self._take_fault,
                         verify_callback=self.dispatcher.verify_callback, media=self.media_library,
                         versions=self.config.graph)

    def _control_host(self) -> ControlHost:
        assert self.dispatcher is not None
        media, store, dispatcher = self.media, self.store, self.dispatcher
        return ControlHost(
            platform=self.platform, clock=self.clock, apply=self.apply, place_call=self.legs.place,
            reset=self.reset, info=self.info, base_url=lambda: self.base_url,
            faults=self.faults, encode_audio=PreEncodedAudio.get, timeline=store.timeline, journal=dispatcher.journal,
            call_list=store.call_list, media_view=media.view, media_stats=media.stats, send_dtmf=media.send_dtmf,
            recording_wav=media.recording_wav, webhook_stats=dispatcher.stats, media_file=self.media_library.media_path,
            webhook_faults=dispatcher.fault_plan,
            sip_health=lambda: None if self.sip is None else self.sip.health(),
            sip_hosts=lambda add: None if self.sip is None else self.sip.hosts(add),
            resend_webhook=self._resend_webhook)

    def _resend_webhook(self, outbox_id: int) -> dict | None:
        """A copy of a journal entry (same app, URL and body) queued for delivery now; None if unknown."""
        found = self.dispatcher.journal(outbox_id=outbox_id, limit=1) if self.dispatcher else []
        if not found:
            return None
        entry, now = found[0], self.clock.now()
        row = {key: entry[key] for key in ("app_id", "url", "field", "waba_id", "phone_number_id", "call_id")}
        row.update(body=codec.dump_escaped(entry["body"]), created_at=now, next_attempt_at=now, attempts=0,
                   status="pending", fault=None)
        ids = self.store.commit([], [row])
        self.dispatcher.committed([row], ids)
        return self.store.journal(outbox_id=ids[0], limit=1)[0]

    def _phone_host(self) -> PhoneHost:
        media = self.media
        return PhoneHost(platform=self.platform, apply=self.apply, place_call=self.legs.place,
                         attach_browser=media.attach_browser, connect_browser=media.connect_browser,
                         detach_browser=media.detach_browser)

    def _take_fault(self, name: str) -> bool:
        """True, and one fewer to cause, when an injected fault of this name is due."""
        if self.faults.get(name, 0) > 0:
            self.faults[name] -= 1
            return True
        return False

    # -- timers -----------------------------------------------------------------------------------
    def _on_clock_advance(self) -> None:
        self.store.set_meta("clock_offset", repr(self.clock.offset))
        self.live.clock_advanced()
        self.recordings.sweep(self.clock.now(), set(self.platform.active_calls))
        self.media_library.expire()         # media past their retention (virtual clock), and their files
        self.media.check_timeouts()
        self._wake_tick()
        if self.dispatcher:
            self.dispatcher.wake()

    def _wake_tick(self) -> None:
        """The timers look in the next loop iteration instead of when planned."""
        if self._tick_planned == float("-inf") or self._tick_timer is None or self._loop is None:
            return                      # they look now already, or have not started, or have stopped
        self._tick_timer.cancel()
        self._tick_planned = float("-inf")
        self._tick_timer = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        """Run the timers that are due, then plan the next look: at the next deadline, at least every 0.5 s
        (a timer handle of the loop, woken earlier by :meth:`_wake_tick`; no task waits in between)."""
        self._tick_timer = None
        self._tick_planned = float("-inf")
        if self._stopping:
            return
        delay = 0.5
        try:
            try:
                self.apply(self.platform.tick, group=True)   # what it causes is sent by consumers
            except Exception:  # a timer bug must not stop every other timer
                log.exception("timer tick failed")
            if time.monotonic() - self._swept_at >= SWEEP_SECONDS:
                self._swept_at = time.monotonic()
                self._loop.run_in_executor(None, self.recordings.sweep, self.clock.now(),
                                           set(self.platform.active_calls))
                try:
                    self.media_library.expire()
                except Exception:
                    log.exception("media retention sweep failed")
            next_deadline = self.platform.next_deadline()
            if next_deadline is not None:
                delay = max(0.005, min(0.5, next_deadline - self.clock.now()))
        finally:
            if not self._stopping:
                self._tick_planned = self.clock.now() + delay
                self._tick_timer = self._loop.call_later(delay, self._tick)

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
            "db": self.db if credentials else None,
            "restored": self.restored,
            "config_drift": self.config_drift,
            "sip": None if self.sip is None else {
                "host": self.sip.transport.host, "port": self.sip.transport.port, "domain": self.sip.domain,
                "ca_file": self.sip_ca_file},
        }

