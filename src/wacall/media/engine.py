"""The media plane of one server process: a UDP leg and a :class:`RelayEndpoint` per call, one 20 ms
ticker for every call's outgoing audio, and the users' patience (media timeouts) on the virtual clock.

What the user heard goes to the call's recording file (``wacall.media.recording``). When a call's leg
is released, only the relay's final statistics stay (a small dict, for the last ``KEEP_FINISHED``
calls), and they are reported once as the ``final_stats`` media entry of the call's timeline, so the
inspector shows them for every ended call, also after a restart."""

from __future__ import annotations

import asyncio
import logging
import socket
import time
from typing import Any

from .audio import PreEncodedAudio
from .certificate import DtlsCertificate
from .leg import MediaLeg
from .recording import Recordings
from .relay import RelayEndpoint, Reporter

log = logging.getLogger("wacall.media")
TICK = 0.020
KEEP_FINISHED = 200          # final statistics of the last released legs, kept for the inspector


class _Silent:
    """A reporter for engines used without a platform (tests of the leg alone)."""

    def note(self, call_id: str, kind: str, **data: Any) -> None:
        pass

    def ended(self, call_id: str, code: int, reason: str) -> None:
        pass

    def now(self) -> float:
        return time.time()

    def timeouts(self) -> tuple[float, float]:
        return 20.0, 30.0


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
                 reporter: Reporter | None = None, host6: str | None = None,
                 recordings: Recordings | None = None) -> None:
        self.host = host
        self.host6 = host6 if host6 is not None else loopback6()
        self.certificate = certificate if certificate is not None else DtlsCertificate.default()
        self.reporter: Reporter = reporter or _Silent()
        self.endpoints: dict[str, RelayEndpoint] = {}
        self.recordings = recordings                     # None: nothing is recorded
        self.finished: dict[str, dict] = {}              # final statistics of released legs (view dicts)
        self._ticker: asyncio.Task | None = None
        self._closing = False

    # -- legs -------------------------------------------------------------------------------------
    async def allocate(self, call_id: str) -> MediaLeg:
        """Bind a UDP socket on ``(host, 0)`` for ``call_id``; returns the existing leg if any."""
        existing = self.endpoints.get(call_id)
        if existing is not None and existing.leg.is_open:
            return existing.leg
        loop = asyncio.get_running_loop()
        leg = MediaLeg.create(call_id, host=self.host, port=0, fingerprint=self.certificate.fingerprint)
        transport, endpoint = await loop.create_datagram_endpoint(
            lambda: RelayEndpoint(leg, self.certificate, self.reporter), local_addr=(self.host, 0))
        leg._transport = transport
        leg.port = transport.get_extra_info("sockname")[1]
        if self.host6:
            try:
                transport6, _ = await loop.create_datagram_endpoint(lambda: endpoint, local_addr=(self.host6, 0))
            except OSError as exc:               # IPv6 went away: IPv4 only from now on
                log.warning("no IPv6 candidate: %s", exc)
                self.host6 = None
            else:
                leg._transport6 = transport6
                leg.host6, leg.port6 = self.host6, transport6.get_extra_info("sockname")[1]
        self.endpoints[call_id] = endpoint
        self._ensure_ticker()
        return leg

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
        endpoint.close()
        endpoint.leg._transport = endpoint.leg._transport6 = None
        if self._closing:                    # a shutdown does not end the call: no final statistics
            return
        final = self._view(endpoint)
        self.finished[call_id] = final
        while len(self.finished) > KEEP_FINISHED:
            self.finished.pop(next(iter(self.finished)))
        if endpoint.negotiated is not None:
            self.reporter.note(call_id, "final_stats", media=dict(final))

    async def close(self) -> None:
        self._closing = True
        if self._ticker:
            self._ticker.cancel()
            await asyncio.gather(self._ticker, return_exceptions=True)
            self._ticker = None
        for call_id in list(self.endpoints):
            self.release(call_id)
        await asyncio.sleep(0)

    def __len__(self) -> int:
        return len(self.endpoints)

    # -- what signalling and the inspector ask of the media plane (the same on MediaWorkers) ----------
    def configure(self, call_id: str, meta_sdp: str, business_sdp: str, key_exchange: str, user_audio: str,
                  user_is_caller: bool) -> None:
        endpoint = self.endpoints.get(call_id)
        if endpoint is None:
            return
        if not PreEncodedAudio.cached(user_audio):      # encode a new source once, off the event loop
            asyncio.get_running_loop().run_in_executor(None, PreEncodedAudio.get, user_audio)
        if self.recordings is not None and endpoint.recording is None:
            endpoint.recording = self.recordings.writer(
                call_id, self.reporter.now,
                on_error=lambda reason: self.reporter.note(call_id, "recording_failed", reason=reason))
        endpoint.configure(meta_sdp, business_sdp, key_exchange, user_audio, user_is_caller=user_is_caller)

    def call_connected(self, call_id: str, at: float) -> None:
        if (endpoint := self.endpoint(call_id)) is not None:
            endpoint.call_connected(at)

    def is_live(self, call_id: str) -> bool:
        return call_id in self.endpoints

    async def send_dtmf(self, call_id: str, digits: str) -> bool:
        """Press keys on the user's phone; False when the call has no media connection yet."""
        endpoint = self.endpoints.get(call_id)
        if endpoint is None or endpoint.srtp is None or endpoint.dtmf_out is None:
            return False
        endpoint.send_dtmf(digits)
        return True

    @staticmethod
    def _view(endpoint: RelayEndpoint) -> dict:
        return {**endpoint.view(), "packets_received": endpoint.leg.packets_received}

    async def view(self, call_id: str) -> dict | None:
        endpoint = self.endpoints.get(call_id)
        if endpoint is not None:
            return self._view(endpoint)
        final = self.finished.get(call_id)
        return dict(final) if final is not None else None

    def flush_recording(self, call_id: str) -> None:
        """Write out what a live call's relay has buffered of its recording."""
        if (endpoint := self.endpoints.get(call_id)) is not None:
            endpoint.flush_recording()

    async def recording_wav(self, call_id: str) -> bytes | None:
        """What the user heard on ``call_id`` (live or ended) as a WAV, decoded off the event loop."""
        if self.recordings is None:
            return None
        self.flush_recording(call_id)
        return await asyncio.get_running_loop().run_in_executor(None, self.recordings.wav, call_id)

    # -- the 20 ms ticker ---------------------------------------------------------------------------
    def _ensure_ticker(self) -> None:
        if self._ticker is None or self._ticker.done():
            self._ticker = asyncio.get_running_loop().create_task(self._run())

    async def _run(self) -> None:
        next_at = time.monotonic()
        last_check = 0.0
        while self.endpoints:
            now = time.monotonic()
            for endpoint in list(self.endpoints.values()):
                try:
                    endpoint.tick(now)
                except Exception:
                    log.exception("relay %s: tick failed", endpoint.call_id)
            if now - last_check >= 0.25:
                last_check = now
                self.check_timeouts()
            next_at += TICK
            delay = next_at - time.monotonic()
            if delay < -0.2:        # fell far behind: skip, don't burst, and say so per call
                skipped = int(-delay / TICK)
                for endpoint in self.endpoints.values():
                    if endpoint.sending:
                        endpoint.skipped_ticks += skipped
                next_at = time.monotonic()
                delay = 0
            await asyncio.sleep(max(0.0, delay))
        self._ticker = None

    def check_timeouts(self) -> None:
        now = self.reporter.now()
        start, silence = self.reporter.timeouts()
        for endpoint in list(self.endpoints.values()):
            verdict = endpoint.check_timeouts(now, start, silence)
            if verdict is not None:
                self.reporter.ended(endpoint.call_id, *verdict)
