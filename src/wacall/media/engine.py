"""The media plane of one server process: a :class:`RelayEndpoint` per call behind the engine's shared
UDP ports (one IPv4, one IPv6; see ``wacall.media.ports``), one 20 ms ticker for every call's
outgoing audio, and the users' patience (media timeouts) on the virtual clock.

What the user heard goes to the call's recording file (``wacall.media.recording``). When a call's leg
is released, only the relay's final statistics stay (a small dict, for the last ``KEEP_FINISHED``
calls), and they are reported once as the ``final_stats`` media entry of the call's timeline, so the
inspector shows them for every ended call, also after a restart."""

from __future__ import annotations

import asyncio
import functools
import logging
import socket
import time
from dataclasses import replace
from typing import Any

from .playout import PreEncodedAudio
from .bridge import BrowserReporter, browser_leg_id, join, part
from .certificate import DtlsCertificate
from ..domain.sdp import LocalMedia, Negotiated
from .fastpath import HOUSEKEEPING, load as load_fastpath
from .leg import MediaLeg
from .ports import BIND_RETRY_SECONDS, PortSocket, Ports
from .recording import RecordingWriter, Recordings
from .relay import RelayEndpoint, Reporter

log = logging.getLogger("wacall.media")
TICK = 0.020
KEEP_FINISHED = 200          # final statistics of the last released legs, kept for the inspector
IPV6_RETRY_SECONDS = 5.0


class _Silent:
    """A reporter for engines used without a platform (tests of the leg alone)."""

    def note(self, call_id: str, kind: str, **data: Any) -> None:
        pass

    def ended(self, call_id: str, fact: str, reason: str) -> None:
        pass

    def persist(self, call_id: str, state: dict) -> None:
        pass

    def voicemail_heard(self, call_id: str) -> None:
        pass

    def voicemail_recorded(self, call_id: str, ogg: bytes, seconds: float) -> None:
        pass

    def now(self) -> float:
        return time.time()

    def timeouts(self) -> tuple[float, float]:
        return 20.0, 30.0


_ANNOUNCING: set[asyncio.Task] = set()           # recording announcements being rendered


def loopback6() -> str | None:
    """``::1`` when this host has IPv6 loopback (the relay then offers an IPv6 candidate), else None."""
    if not socket.has_ipv6:
        return None
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return None
    return "::1"


class MediaEngine:
    def __init__(self, host: str = "127.0.0.1", certificate: DtlsCertificate | None = None,
                 reporter: Reporter | None = None, host6: str | None = None, port: int = 0,
                 recordings: Recordings | None = None, fastpath: bool = True) -> None:
        self.host = host
        self.host6 = host6 if host6 is not None else loopback6()
        self.port = port                                  # 0: any free port (same for IPv6 where possible)
        self.certificate = certificate if certificate is not None else DtlsCertificate.default()
        self.reporter: Reporter = reporter or _Silent()
        self.ports = Ports()
        # the compiled per-packet path; None: every packet in Python ([media] fastpath = false, WACALL_FASTPATH=0)
        self.fast = self.ports.fast = load_fastpath() if fastpath else None
        self.endpoints: dict[str, RelayEndpoint] = {}
        self.recordings = recordings                     # None: nothing is recorded
        self.finished: dict[str, dict] = {}              # final statistics of released legs (view dicts)
        self._closing = False
        self._tick_handle: asyncio.TimerHandle | asyncio.Handle | None = None   # the ticker's next run
        self._loop: asyncio.AbstractEventLoop | None = None   # the ticker's (asking costs Python 3.11 a getpid())
        self._framing = False                            # ticking every 20 ms (else only at housekeeping)
        self._next_tick = 0.0                            # time.monotonic() of the next 20 ms frame
        self._last_check = 0.0                           # of the last housekeeping
        self._home: PortSocket | None = None
        self._home6: PortSocket | None = None
        self._ipv6_retry_at = 0.0
        self._unbindable: dict[tuple[str, int], str] = {}   # old ports a restore could not bind, and why
        # a media worker (wacall.media.workers) leaves the audio stack (PyAV, numpy: ~29 MB a process) to the
        # server: the server encodes what the users say and sends the packets, and measures the levels its
        # views carry the packets for
        self.encodes_audio = True
        self.measures_level = True

    # -- the shared ports --------------------------------------------------------------------------
    async def _home_sockets(self) -> tuple[PortSocket, PortSocket | None]:
        """The sockets new legs share, bound on first use. IPv4 is required: a failure raises
        (the caller answers Meta's transient error) and is retried on the next call. IPv6 is
        optional: after a failure the next attempt waits a few seconds, and it comes back."""
        if self._home is None or not self._home.is_open:
            self._home = await self.ports.bind(self.host, self.port)
        if self.host6 and (self._home6 is None or not self._home6.is_open) and time.monotonic() >= self._ipv6_retry_at:
            try:
                self._home6 = await self.ports.bind(self.host6, self.port or self._home.port)
            except OSError:
                try:                                      # that port number is taken on ::1: any other
                    self._home6 = await self.ports.bind(self.host6, 0) if not self.port else None
                except OSError as exc:
                    self._home6 = None
                    self._ipv6_retry_at = time.monotonic() + IPV6_RETRY_SECONDS
                    log.warning("no IPv6 candidate for now: %s", exc)
        return self._home, self._home6 if self._home6 is not None and self._home6.is_open else None

    # -- legs -------------------------------------------------------------------------------------
    async def allocate(self, call_id: str) -> LocalMedia:
        """A leg for ``call_id`` on the shared ports (fresh credentials), the existing one if any; what
        Meta's SDP advertises of it, as a frozen value."""
        existing = self.endpoints.get(call_id)
        if existing is not None:
            return existing.leg.local
        sock, sock6 = self._home, self._home6
        if sock is None or not sock.is_open or (self.host6 and (sock6 is None or not sock6.is_open)):
            sock, sock6 = await self._home_sockets()      # (bound already, the usual case: no coroutine)
        endpoint = self._new_endpoint(call_id, self.reporter, sock, sock6)
        self._add(endpoint)
        return endpoint.leg.local

    def _new_endpoint(self, call_id: str, reporter: Reporter, sock: PortSocket,
                      sock6: PortSocket | None) -> RelayEndpoint:
        """A new leg with fresh credentials on the shared ports ``sock`` and ``sock6``, behind its relay
        endpoint (a function, not a coroutine: the caller awaits the ports only when they are not bound)."""
        host6, port6 = (sock6.host, sock6.port) if sock6 is not None else (None, None)
        fingerprint, by_ufrag = self.certificate.fingerprint, self.ports.by_ufrag
        leg = MediaLeg.create(call_id, host=sock.host, port=sock.port, fingerprint=fingerprint, host6=host6, port6=port6)
        while leg.local.ice_ufrag in by_ufrag:                # the ufrag routes datagrams: it must be unique here
            leg = MediaLeg.create(call_id, host=sock.host, port=sock.port, fingerprint=fingerprint, host6=host6,
                                  port6=port6)
        return RelayEndpoint(leg, self.certificate, reporter, self.ports, sock, sock6)

    # -- a browser in the user's place (wacall.media.bridge) ------------------------------------------
    async def attach_browser(self, call_id: str) -> LocalMedia | None:
        """A leg for a browser that takes the user's place on ``call_id``, bridged to the call's leg
        (a browser already there is replaced); None when the call has no leg here."""
        call = self.endpoints.get(call_id)
        if call is None or call.closed:
            return None
        self.detach_browser(call_id)
        sock, sock6 = await self._home_sockets()
        browser = self._new_endpoint(browser_leg_id(call_id), BrowserReporter(self.reporter, call_id), sock, sock6)
        if self.endpoints.get(call_id) is not call:      # the call ended meanwhile
            return None
        self._add(browser)
        join(call, browser)
        return browser.leg.local

    def connect_browser(self, call_id: str, negotiated: Negotiated) -> bool:
        """The browser answered: its leg's ICE, DTLS and codecs as ``negotiated``."""
        browser = self.endpoints.get(browser_leg_id(call_id))
        if browser is None:
            return False
        browser.configure(negotiated, "silence", user_is_caller=True)
        return True

    def detach_browser(self, call_id: str) -> None:
        """The browser leaves ``call_id`` (the user says nothing from now on); unknown ids are ignored."""
        browser = self.endpoints.pop(browser_leg_id(call_id), None)
        if browser is not None:
            part(browser)
            browser.close()

    async def restore(self, call_id: str, leg_doc: dict | None, state: dict, *, negotiated: Negotiated | None,
                      user_audio: str, user_is_caller: bool, connected_at: float | None) -> bool:
        """Bring back a leg a previous process served, on its old port with its old credentials.
        False when its port cannot be had (or nothing was saved, or the saved state cannot be used): the
        leg is kept without a socket, so the user's phone hangs up after its media timeout as it would
        when the relay vanished."""
        sock = None
        if leg_doc is None:
            leg = MediaLeg.create(call_id, host=self.host, port=0, fingerprint=self.certificate.fingerprint)
            reason = "no media state was saved for this call"
        else:
            leg = MediaLeg.from_doc(leg_doc)
            sock, reason = await self._bind_again(leg.host, leg.port)
        sock6 = None
        if sock is not None and leg.host6 and leg.port6:
            sock6, _ = await self._bind_again(leg.host6, leg.port6)
            if sock6 is None:
                leg.local = replace(leg.local, host6=None, port6=None)   # IPv4 carries on; no IPv6 candidate
        if sock is not None and self._home is None and leg.host == self.host:
            self._home = sock                             # new calls keep the port the old process had
            self._home6 = sock6 if self._home6 is None else self._home6
        endpoint = RelayEndpoint(leg, self.certificate, self.reporter, self.ports, sock, sock6)
        self._add(endpoint)
        try:
            if negotiated is not None:
                self.configure(call_id, negotiated, user_audio, user_is_caller)
            if sock is not None:
                endpoint.restore(state, connected_at)
                return True
        except Exception as exc:   # a saved state this relay cannot use must not stop the start
            log.warning("call %s: media state not restorable: %r", call_id, exc)
            reason = f"the saved media state could not be used ({type(exc).__name__}: {exc})"
        endpoint.lost(reason or "", connected_at)
        return False

    async def _bind_again(self, host: str, port: int) -> tuple[PortSocket | None, str | None]:
        """A restored leg's old port, or (None, why). A port that could not be had is not tried again for
        the next leg on it: a restart with many calls on a taken port must not wait
        ``BIND_RETRY_SECONDS`` per call."""
        if (host, port) in self._unbindable:
            return None, self._unbindable[(host, port)]
        try:
            return await self.ports.bind(host, port, retry=BIND_RETRY_SECONDS), None
        except OSError as exc:
            reason = self._unbindable[(host, port)] = f"port {host}:{port} is taken ({exc.strerror or exc})"
            return None, reason

    def _add(self, endpoint: RelayEndpoint) -> None:
        self.ports.add(endpoint)
        self.endpoints[endpoint.call_id] = endpoint
        endpoint.may_send = self._frames_now
        self._ensure_ticker()

    def get(self, call_id: str) -> MediaLeg | None:
        endpoint = self.endpoints.get(call_id)
        return endpoint.leg if endpoint else None

    def endpoint(self, call_id: str) -> RelayEndpoint | None:
        return self.endpoints.get(call_id)

    def release(self, call_id: str) -> None:
        """Close the leg (its recording is written out) and keep only its final statistics, which also go
        to the call's timeline. Unknown ids are ignored."""
        endpoint = self.endpoints.pop(call_id, None)
        if endpoint is None:
            return
        if endpoint.partner is not None:                 # a browser in the user's place (joined as its partner)
            self.detach_browser(call_id)
        endpoint.close()
        if self._closing:                    # a shutdown does not end the call: no final statistics
            return
        final = self._view(endpoint)                     # computed once: kept, and noted (nobody changes it)
        self.finished[call_id] = final
        while len(self.finished) > KEEP_FINISHED:
            self.finished.pop(next(iter(self.finished)))
        if endpoint.negotiated is not None:
            self.reporter.note(call_id, "final_stats", media=final)

    async def close(self) -> None:
        self._closing = True
        if self._tick_handle is not None:
            self._tick_handle.cancel()
            self._tick_handle = None
        for call_id in list(self.endpoints):
            self.release(call_id)
        self.ports.close()
        self._home = self._home6 = None
        await asyncio.sleep(0)

    def __len__(self) -> int:
        return len(self.endpoints)

    # -- what signalling and the inspector ask of the media plane (the same on MediaWorkers) ----------
    def configure(self, call_id: str, negotiated: Negotiated, user_audio: str, user_is_caller: bool) -> None:
        endpoint = self.endpoints.get(call_id)
        if endpoint is None:
            return
        if self.encodes_audio and not PreEncodedAudio.cached(user_audio):   # a new source, once, off the loop
            asyncio.get_running_loop().run_in_executor(None, PreEncodedAudio.get, user_audio)
        if self.recordings is not None and endpoint.phone.recording is None:
            endpoint.phone.records = functools.partial(self._recording, call_id)   # opened with the first packet
        endpoint.configure(negotiated, user_audio, user_is_caller=user_is_caller)

    def _recording(self, call_id: str) -> RecordingWriter | None:
        """The writer of what the user hears on ``call_id`` (its phone opens it with the first packet)."""
        assert self.recordings is not None
        return self.recordings.writer(call_id, self.reporter.now, on_error=lambda reason: self.reporter.note(
            call_id, "recording_failed", reason=reason))

    # -- the platform's voicemail (wacall.media.voicemail) ---------------------------------------------
    def voicemail_answer(self, call_id: str, announcement: list[bytes], user_audio: str) -> bool:
        """The platform answers ``call_id`` in the business's place: the user hears ``announcement`` (20 ms
        Opus frames; also in the user's recording), then :meth:`voicemail_record` takes its message.
        False when the call has no leg here."""
        endpoint = self.endpoints.get(call_id)
        if endpoint is None or endpoint.closed:
            return False
        from .voicemail import VoicemailMachine, ogg_opus   # PyAV's Ogg muxer: only a process with voicemail
        if self.encodes_audio and not PreEncodedAudio.cached(user_audio):   # the user's message, off the loop
            asyncio.get_running_loop().run_in_executor(None, PreEncodedAudio.get, user_audio)
        phone = endpoint.phone
        phone.set_up(user_audio, True)
        phone.microphone = None           # the message is Opus (a browser in the user's place talks on)
        if self.recordings is not None and phone.recording is None:
            phone.records = functools.partial(self._recording, call_id)
        phone.answered_at = phone.answered_at or self.reporter.now()
        reporter = self.reporter

        def recorded(frames: list[bytes]) -> None:
            seconds = len(frames) / 50.0

            def done(future: asyncio.Future) -> None:
                if future.exception() is not None:
                    reporter.note(call_id, "voicemail_encode_failed", reason=str(future.exception()))
                else:
                    reporter.voicemail_recorded(call_id, future.result(), seconds)
            asyncio.get_running_loop().run_in_executor(None, ogg_opus, frames).add_done_callback(done)

        endpoint.take_over(VoicemailMachine(phone, announcement, heard=lambda: reporter.voicemail_heard(call_id),
                                            recorded=recorded))
        self._frames_now()
        return True

    def voicemail_record(self, call_id: str, seconds: float) -> None:
        """The user speaks its message for ``seconds`` (the announcement has played)."""
        endpoint = self.endpoints.get(call_id)
        if endpoint is not None and endpoint.voicemail is not None:
            endpoint.voicemail.record(seconds)

    def call_connected(self, call_id: str, at: float, announcement: dict | None = None) -> None:
        if (endpoint := self.endpoints.get(call_id)) is not None:
            endpoint.phone.connected(at)
            if announcement is not None:
                endpoint.phone.awaiting_intro = True       # the user's first words wait for the announcement
                task = asyncio.get_running_loop().create_task(self._announce(endpoint, announcement))
                _ANNOUNCING.add(task)                       # (a task nobody holds may be collected mid-way)
                task.add_done_callback(_ANNOUNCING.discard)

    async def _announce(self, endpoint: RelayEndpoint, announcement: dict) -> None:
        """Recording / transcription enabled: the announcement, rendered and mixed off the event loop, plays
        in both directions (``wacall.media.capture``); the user's phone sends it from its next tick."""
        from . import capture                      # TTS and the recogniser's module: only calls that record
        codec = endpoint.negotiated.send_codec if endpoint.negotiated else "opus"
        voice = capture.announcement_voice(announcement.get("voice"))
        try:
            frames = await asyncio.get_running_loop().run_in_executor(None, lambda: capture.intro_frames(
                capture.announcement_pcm(announcement["text"], voice), endpoint.phone.audio, codec))
        except Exception as exc:                   # no espeak-ng: the call goes on unannounced, and says so
            endpoint.phone.awaiting_intro = False
            self.reporter.note(endpoint.call_id, "announcement_failed", reason=str(exc))
            return
        if endpoint.closed:
            return
        if endpoint.fast is not None:              # [fastpath] Python sends while the announcement plays
            endpoint.fast.stop_tx()
        endpoint.phone.announce(frames, {"text": announcement["text"], "voice": voice})

    async def released(self, call_id: str) -> None:
        """Wait until a released leg wrote out its recording (here: at once, release is synchronous)."""

    def is_live(self, call_id: str) -> bool:
        return call_id in self.endpoints

    async def send_dtmf(self, call_id: str, digits: str) -> bool:
        """Press keys on the user's phone; False when the call has no media connection yet."""
        endpoint = self.endpoints.get(call_id)
        if endpoint is None or endpoint.srtp is None or endpoint.negotiated is None:
            return False
        endpoint.press(digits)
        return True

    async def stats(self) -> dict:
        fast = {"fast_legs": len(self.fast.legs), "fast_packets_sent": self.fast.packets_sent} if self.fast else {}
        return {"live": len(self.endpoints), **self.ports.view(), **fast}

    def _view(self, endpoint: RelayEndpoint) -> dict:
        view = endpoint.view(level=self.measures_level)
        view["packets_received"] = endpoint.leg.packets_received
        if endpoint.partner is not None:                 # a browser in the user's place: its leg, briefly
            browser = endpoint.partner.view(level=self.measures_level)
            view["browser"] = {key: browser[key] for key in ("ice", "dtls", "send_codec", "received", "sent", "heard")
                               if key in browser}
        return view

    async def view(self, call_id: str) -> dict | None:
        endpoint = self.endpoints.get(call_id)
        if endpoint is not None:
            return self._view(endpoint)
        final = self.finished.get(call_id)
        return dict(final) if final is not None else None

    def flush_recording(self, call_id: str) -> None:
        """Write out what a live call's relay has buffered of its recording."""
        if (endpoint := self.endpoints.get(call_id)) is not None:
            if endpoint.fast is not None:       # [fastpath] the chunks C kept come first
                endpoint.fast.take_recording()
            endpoint.phone.flush_recording()

    async def recording_wav(self, call_id: str) -> bytes | None:
        """What the user heard on ``call_id`` (live or ended) as a WAV, decoded off the event loop."""
        if self.recordings is None:
            return None
        self.flush_recording(call_id)
        return await asyncio.get_running_loop().run_in_executor(None, self.recordings.wav, call_id)

    # -- the 20 ms ticker ---------------------------------------------------------------------------
    # It sends every leg's 20 ms frames while some leg may send (Meta: the business sends the first packet,
    # so a leg may send from the business's first media on, or when voicemail takes over), and otherwise
    # wakes only for the housekeeping (RTCP and checkpoints of compiled-path legs, the users' patience):
    # a call set up and ended before any media (a rejected or unanswered call, a short SIP flow) costs
    # no 20 ms wake-ups. A chain of loop callbacks, not a task: a tick is one timer, no future.
    def _ensure_ticker(self) -> None:
        """A leg was added: the housekeeping runs from now on, every ``HOUSEKEEPING`` seconds."""
        if self._tick_handle is None:
            self._framing = False
            self._last_check = time.monotonic()      # (a new leg has nothing due: no check right away)
            self._loop = asyncio.get_running_loop()
            self._tick_handle = self._loop.call_later(HOUSEKEEPING, self._tick)

    def _frames_now(self) -> None:
        """A leg may start sending (the business's first media, a restored call, voicemail): frames every
        20 ms from now on, until no leg may send any more."""
        if self._framing and self._tick_handle is not None:
            return
        if self._tick_handle is not None:
            self._tick_handle.cancel()
        self._framing = True
        self._next_tick = time.monotonic()
        self._loop = asyncio.get_running_loop()
        self._tick_handle = self._loop.call_soon(self._tick)

    def _tick(self) -> None:
        self._tick_handle = None
        if not self.endpoints:
            self._framing = False
            return                                  # the next leg starts the ticker again
        now = time.monotonic()
        framing = False
        fast = self.fast
        for endpoint in list(self.endpoints.values()):
            if endpoint.fast is not None and endpoint.fast.tx:
                framing = True
                continue                       # the compiled path sends this one (below)
            if not endpoint.business_sent_first and endpoint.voicemail is None:
                continue                       # it sends nothing before the business's first media
            framing = True
            try:
                endpoint.tick(now)
            except Exception:
                log.exception("relay %s: tick failed", endpoint.call_id)
        if fast is not None and framing:
            fast.send()
        if now - self._last_check >= HOUSEKEEPING:
            self._last_check = now
            if fast is not None:
                try:
                    fast.housekeeping(time.time())   # RTCP, checkpoints, media seen, for fast legs
                except Exception:
                    log.exception("media: fast path housekeeping failed")
            self.check_timeouts()
        if self._tick_handle is not None or not self.endpoints:
            return                             # (what this tick caused restarted the ticker, or ended the last leg)
        if not framing:                        # nothing to send: only the housekeeping, unless a leg may send
            self._framing = False
            delay = self._last_check + HOUSEKEEPING - time.monotonic()
        else:
            if not self._framing:              # (a leg that was sending before is still at it)
                self._next_tick = now
            self._framing = True
            self._next_tick += TICK
            delay = self._next_tick - time.monotonic()
            if delay < -0.2:        # fell far behind: skip, don't burst, and say so per call
                skipped = int(-delay / TICK)
                for endpoint in self.endpoints.values():
                    if endpoint.sending:
                        endpoint.skipped_ticks += skipped
                self._next_tick = time.monotonic()
                delay = 0
        assert self._loop is not None                # (set with the handle that ran this tick)
        self._tick_handle = self._loop.call_later(max(0.0, delay), self._tick)

    def check_timeouts(self) -> None:
        now = self.reporter.now()
        start, silence = self.reporter.timeouts()
        for endpoint in list(self.endpoints.values()):
            verdict = endpoint.check_timeouts(now, start, silence)
            if verdict is not None:
                self.reporter.ended(endpoint.call_id, *verdict)
