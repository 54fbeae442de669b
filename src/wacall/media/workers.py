"""The media plane spread over worker processes.

One Python process tops out at a few hundred calls of real media (every packet is a syscall, an
SRTP operation and some Python), so with ``media.workers = N`` the server starts N child processes,
each running its own :class:`~wacall.media.engine.MediaEngine`, and gives each new call to the
least-loaded one. Signalling, the store and the domain stay in the main process.

The two sides talk over the child's stdin/stdout, one JSON object per line:

- main → worker: ``{"op": "certificate" | "audio" | "allocate" | "restore" | "configure" | "connected" |
  "dtmf" | "release" | "view" | "stats" | "recording" | "clock" | "check" | "attach_browser" |
  "connect_browser" | "detach_browser" | "voicemail_answer" | "voicemail_record", ...}``; operations that
  answer carry an ``id``.
- worker → main: ``{"re": id, "value": ...}`` answers, and the relay's reports
  ``{"report": "note" | "ended" | "persist" | "voicemail_heard" | "voicemail_recorded", "call_id": ..., ...}``
  (the voicemail's Opus frames and Ogg file travel base64-encoded) which the main process applies to
  the domain exactly as it does for in-process media (``ended`` carries a neutral fact, not a code).

``configure`` and ``restore`` carry the domain's negotiation (``Negotiated.to_doc()``), never the SDPs.

A worker loads no audio stack (PyAV and numpy take ~29 MB in each process): the main process encodes what
the users say and sends each source's Opus packets once per worker (``audio``, before the first call that
plays it), and the views and final statistics a worker sends carry the last packets each leg heard, whose
level the main process measures (``wacall.users.phone.measure_level``). Rarer audio work (G.711 loops,
voicemail, recording announcements) imports them in the worker when it happens.

Each worker's engine has its own shared ports. After a restart, the calls a worker had are restored
together on one new worker, which binds their old ports again.

A worker runs the virtual clock as wall time plus the offset the main process last sent it, and
checks the media timeouts itself every 250 ms; after a clock jump the main process sends the new
offset and a ``check``. Recordings never travel through the pipe: every worker appends its calls'
recordings to the shared recordings directory, and the main process reads the file (after asking the
worker to write out what it has buffered, for a live call).

Run a worker by hand with ``python -m wacall.media.workers --host 127.0.0.1``.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import logging
import sys
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import codec
from ..loop import loop_factory
from .certificate import DtlsCertificate
from ..domain.sdp import LocalMedia, Negotiated
from .playout import PreEncodedAudio
from .recording import Recordings
from ..users.phone import measure_level

if TYPE_CHECKING:
    from .relay import Reporter

log = logging.getLogger("wacall.media.workers")
PIPE_LIMIT = 1 << 20
KEEP_OWNERS = 5000
#: what ``restore`` carries besides the leg and its saved state (``MediaEngine.restore``'s keywords)
RESTORE_ARGS = ("negotiated", "user_audio", "user_is_caller", "connected_at")


# -- the main process's side ---------------------------------------------------------------------------
@dataclass
class _Worker:
    index: int
    process: asyncio.subprocess.Process
    live: set[str] = field(default_factory=set)
    pending: dict[int, asyncio.Future] = field(default_factory=dict)
    reader: asyncio.Task | None = None
    alive: bool = True
    audio: set[str] = field(default_factory=set)       # the sources whose packets it was sent

    def send(self, message: dict) -> None:
        if self.alive and self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.write(codec.dump_bytes(message) + b"\n")


class MediaWorkers:
    """The same interface as :class:`MediaEngine`, with the calls living in child processes."""

    def __init__(self, count: int, host: str = "127.0.0.1", reporter: Reporter | None = None,
                 certificate: DtlsCertificate | None = None, port: int = 0,
                 recordings: Recordings | None = None, fastpath: bool = True) -> None:
        if count < 1:
            raise ValueError("media workers: at least one")
        self.count, self.host, self.port = count, host, port
        self.fastpath = fastpath
        self.reporter = reporter
        self.certificate = certificate
        self._by_port: dict[int, _Worker] = {}      # restored ports → the worker that bound them
        self.recordings = recordings
        self.workers: list[_Worker] = []
        self.owner: dict[str, _Worker] = {}         # call_id → the worker holding its leg (or results)
        self._next_id = 0
        self._clock_sent: tuple[float, float, float] | None = None
        self._sync_task: asyncio.Task | None = None
        self._closing = False
        self._respawn = asyncio.Lock()               # one replacement per crashed worker, however many calls ask

    async def start(self) -> MediaWorkers:
        for index in range(self.count):
            self.workers.append(await self._spawn(index))
        self._sync_clock(force=True)
        self._sync_task = asyncio.get_running_loop().create_task(self._sync_loop())
        return self

    async def _spawn(self, index: int) -> _Worker:
        port = self.port + index if self.port else 0
        recording = ([] if self.recordings is None else
                     ["--recordings-dir", str(self.recordings.dir), "--recording-max-seconds",
                      repr(self.recordings.max_seconds)])
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "wacall.media.workers", "--host", self.host, "--port", str(port), *recording,
            *([] if self.fastpath else ["--no-fastpath"]),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, limit=PIPE_LIMIT)
        worker = _Worker(index, process)
        worker.reader = asyncio.get_running_loop().create_task(self._read(worker))
        if self.certificate is not None:
            worker.send({"op": "certificate", "cert": self.certificate.cert_pem.decode("ascii"),
                         "key": self.certificate.key_pem.decode("ascii")})
        self._send_audio(worker, "silence")          # what a phone says when its own source fails
        return worker

    def _send_audio(self, worker: _Worker, spec: str) -> None:
        """Make sure ``worker`` has ``spec``'s Opus packets: sent now when encoded here already, else encoded
        off the event loop first (meanwhile the worker's phone waits for them, as for its own encoding)."""
        if spec in worker.audio:
            return
        worker.audio.add(spec)
        if PreEncodedAudio.cached(spec):
            self._audio_to(worker, spec, PreEncodedAudio.get(spec))
            return

        def encoded(future: asyncio.Future) -> None:
            if future.cancelled() or future.exception() is not None:
                worker.audio.discard(spec)   # the worker's phone tries itself and notes why it cannot
            else:
                self._audio_to(worker, spec, future.result())
        asyncio.get_running_loop().run_in_executor(None, PreEncodedAudio.get, spec).add_done_callback(encoded)

    @staticmethod
    def _audio_to(worker: _Worker, spec: str, audio: PreEncodedAudio) -> None:
        worker.send({"op": "audio", "spec": spec, "frames": [base64.b64encode(f).decode("ascii") for f in audio.frames]})

    async def _read(self, worker: _Worker) -> None:
        assert worker.process.stdout is not None
        while line := await worker.process.stdout.readline():
            try:
                self._on_message(worker, codec.loads(line))
            except Exception:
                log.exception("media worker %d: bad message %r", worker.index, line[:200])
        worker.alive = False
        if not self._closing:
            log.error("media worker %d exited (%s); its %d calls lose media", worker.index,
                      worker.process.returncode, len(worker.live))
        for future in worker.pending.values():
            if not future.done():
                future.set_exception(RuntimeError("media worker exited"))
        worker.pending.clear()

    def _on_message(self, worker: _Worker, message: dict) -> None:
        if "re" in message:
            future = worker.pending.pop(message["re"], None)
            if future is not None and not future.done():
                future.set_result(message.get("value"))
        elif self.reporter is not None and message.get("report") == "note":
            data = message.get("data", {})
            if message["kind"] == "final_stats" and isinstance(data.get("media"), dict):
                measure_level(data["media"])
            self.reporter.note(message["call_id"], message["kind"], **data)
        elif self.reporter is not None and message.get("report") == "ended":
            self.reporter.ended(message["call_id"], message["fact"], message["reason"])
        elif self.reporter is not None and message.get("report") == "persist":
            self.reporter.persist(message["call_id"], message["state"])
        elif self.reporter is not None and message.get("report") == "voicemail_heard":
            self.reporter.voicemail_heard(message["call_id"])
        elif self.reporter is not None and message.get("report") == "voicemail_recorded":
            self.reporter.voicemail_recorded(message["call_id"], base64.b64decode(message["ogg"]),
                                             float(message["seconds"]))

    async def _ask(self, worker: _Worker, message: dict) -> Any:
        if not worker.alive:             # nothing would ever answer (its reader has already finished)
            raise RuntimeError(f"media worker {worker.index} exited")
        self._next_id += 1
        future = asyncio.get_running_loop().create_future()
        worker.pending[self._next_id] = future
        worker.send({**message, "id": self._next_id})
        return await future

    def _clock_state(self) -> tuple[float, float, float]:
        if self.reporter is None:
            return (0.0, 20.0, 30.0)
        start, silence = self.reporter.timeouts()
        return (round(self.reporter.now() - time.time(), 3), float(start), float(silence))

    def _sync_clock(self, force: bool = False) -> None:
        state = self._clock_state()
        if force or self._clock_sent is None or any(abs(a - b) > 0.01 for a, b in zip(state, self._clock_sent)):
            self._clock_sent = state
            for worker in self.workers:
                worker.send({"op": "clock", "offset": state[0], "start": state[1], "silence": state[2]})

    async def _sync_loop(self) -> None:
        while True:
            await asyncio.sleep(0.25)
            self._sync_clock()

    # -- the media plane interface ------------------------------------------------------------------
    async def _least_loaded(self) -> _Worker:
        async with self._respawn:                          # a crashed worker is replaced for new calls, once
            for i, worker in enumerate(self.workers):
                if not worker.alive:
                    self.workers[i] = await self._spawn(i)
                    self._clock_sent = None
        self._sync_clock()
        return min((w for w in self.workers if w.alive), key=lambda w: len(w.live))

    def _own(self, worker: _Worker, call_id: str) -> None:
        worker.live.add(call_id)
        self.owner[call_id] = worker
        while len(self.owner) > KEEP_OWNERS:
            self.owner.pop(next(iter(self.owner)))

    async def allocate(self, call_id: str) -> LocalMedia:
        worker = await self._least_loaded()
        doc = await self._ask(worker, {"op": "allocate", "call_id": call_id})
        if doc is None:
            raise RuntimeError(f"media worker {worker.index} could not allocate a leg")
        self._own(worker, call_id)
        return LocalMedia.from_doc(doc)

    async def restore(self, call_id: str, leg_doc: dict | None, state: dict, *, negotiated: Negotiated | None = None,
                      **kwargs: Any) -> bool:
        port = int((leg_doc or {}).get("port") or 0)
        worker = self._by_port.get(port)
        if worker is None or not worker.alive:
            worker = await self._least_loaded()
            if self.port and 0 <= port - self.port < len(self.workers):
                # worker i's own configured port (port + i): another worker binding it would take it
                # from worker i, whose new calls could then never get a leg
                worker = self.workers[port - self.port]
            self._by_port[port] = worker
        if kwargs.get("user_audio"):
            self._send_audio(worker, kwargs["user_audio"])
        restored = await self._ask(worker, {"op": "restore", "call_id": call_id, "leg": leg_doc, "state": state,
                                            "negotiated": negotiated.to_doc() if negotiated else None, **kwargs})
        self._own(worker, call_id)
        return bool(restored)

    def configure(self, call_id: str, negotiated: Negotiated, user_audio: str, user_is_caller: bool) -> None:
        if (worker := self.owner.get(call_id)) is not None:
            self._send_audio(worker, user_audio)
            worker.send({"op": "configure", "call_id": call_id, "negotiated": negotiated.to_doc(),
                         "user_audio": user_audio, "user_is_caller": user_is_caller})

    def voicemail_answer(self, call_id: str, announcement: list[bytes], user_audio: str) -> bool:
        worker = self.owner.get(call_id)
        if worker is None or call_id not in worker.live or not worker.alive:
            return False
        self._send_audio(worker, user_audio)
        worker.send({"op": "voicemail_answer", "call_id": call_id, "user_audio": user_audio,
                     "frames": [base64.b64encode(f).decode("ascii") for f in announcement]})
        return True

    def voicemail_record(self, call_id: str, seconds: float) -> None:
        if (worker := self.owner.get(call_id)) is not None:
            worker.send({"op": "voicemail_record", "call_id": call_id, "seconds": seconds})

    def call_connected(self, call_id: str, at: float, announcement: dict | None = None) -> None:
        if (worker := self.owner.get(call_id)) is not None:
            worker.send({"op": "connected", "call_id": call_id, "at": at, "announcement": announcement})

    async def attach_browser(self, call_id: str) -> LocalMedia | None:
        """The browser's leg, in the worker that holds the call's (a bridge never crosses processes)."""
        worker = self.owner.get(call_id)
        if worker is None or call_id not in worker.live or not worker.alive:
            return None
        doc = await self._ask(worker, {"op": "attach_browser", "call_id": call_id})
        return None if doc is None else LocalMedia.from_doc(doc)

    def connect_browser(self, call_id: str, negotiated: Negotiated) -> bool:
        worker = self.owner.get(call_id)
        if worker is None or call_id not in worker.live:
            return False
        worker.send({"op": "connect_browser", "call_id": call_id, "negotiated": negotiated.to_doc()})
        return True

    def detach_browser(self, call_id: str) -> None:
        if (worker := self.owner.get(call_id)) is not None:
            worker.send({"op": "detach_browser", "call_id": call_id})

    def is_live(self, call_id: str) -> bool:
        worker = self.owner.get(call_id)
        return worker is not None and call_id in worker.live

    async def send_dtmf(self, call_id: str, digits: str) -> bool:
        worker = self.owner.get(call_id)
        return bool(worker and worker.alive
                    and await self._ask(worker, {"op": "dtmf", "call_id": call_id, "digits": digits}))

    async def view(self, call_id: str) -> dict | None:
        worker = self.owner.get(call_id)
        if worker is None or not worker.alive:
            return None
        view = await self._ask(worker, {"op": "view", "call_id": call_id})
        return measure_level(view) if isinstance(view, dict) else view

    async def recording_wav(self, call_id: str) -> bytes | None:
        """The call's recording file as a WAV; a live call's worker first writes out what it buffered."""
        if self.recordings is None:
            return None
        worker = self.owner.get(call_id)
        if worker is not None and call_id in worker.live and worker.alive:
            await self._ask(worker, {"op": "recording", "call_id": call_id})
        return await asyncio.get_running_loop().run_in_executor(None, self.recordings.wav, call_id)

    async def released(self, call_id: str) -> None:
        """Wait until the worker released the leg (its recording written out): it answers in order."""
        worker = self.owner.get(call_id)
        if worker is not None and worker.alive:
            await self._ask(worker, {"op": "recording", "call_id": call_id})

    def release(self, call_id: str) -> None:
        worker = self.owner.get(call_id)
        if worker is not None and call_id in worker.live:
            worker.live.discard(call_id)
            worker.send({"op": "release", "call_id": call_id})

    async def stats(self) -> dict:
        per_worker = [await self._ask(w, {"op": "stats"}) for w in self.workers if w.alive]
        totals: dict[str, Any] = {"workers": len(per_worker)}
        for stats in per_worker:
            for key, value in (stats or {}).items():
                if isinstance(value, int):
                    totals[key] = totals.get(key, 0) + value
                elif isinstance(value, list):
                    totals.setdefault(key, []).extend(value)
        return totals

    def check_timeouts(self) -> None:
        self._sync_clock(force=True)
        for worker in self.workers:
            worker.send({"op": "check"})

    def __len__(self) -> int:
        return sum(len(worker.live) for worker in self.workers)

    async def close(self) -> None:
        self._closing = True
        if self._sync_task:
            self._sync_task.cancel()
        for worker in self.workers:
            if worker.process.stdin is not None and not worker.process.stdin.is_closing():
                worker.process.stdin.close()
        for worker in self.workers:
            try:
                await asyncio.wait_for(worker.process.wait(), 5)
            except asyncio.TimeoutError:
                worker.process.kill()
                await worker.process.wait()
            if worker.reader:
                await asyncio.gather(worker.reader, return_exceptions=True)
        self.workers.clear()


# -- the worker process's side ---------------------------------------------------------------------------
class _PipeReporter:
    """The relay's reporter inside a worker: reports go up the pipe; time is wall time plus the offset."""

    def __init__(self) -> None:
        self.offset, self.start, self.silence = 0.0, 20.0, 30.0

    def note(self, call_id: str, kind: str, **data: Any) -> None:
        _emit({"report": "note", "call_id": call_id, "kind": kind, "data": data})

    def ended(self, call_id: str, fact: str, reason: str) -> None:
        _emit({"report": "ended", "call_id": call_id, "fact": fact, "reason": reason})

    def persist(self, call_id: str, state: dict) -> None:
        _emit({"report": "persist", "call_id": call_id, "state": state})

    def voicemail_heard(self, call_id: str) -> None:
        _emit({"report": "voicemail_heard", "call_id": call_id})

    def voicemail_recorded(self, call_id: str, ogg: bytes, seconds: float) -> None:
        _emit({"report": "voicemail_recorded", "call_id": call_id, "seconds": seconds,
               "ogg": base64.b64encode(ogg).decode("ascii")})

    def now(self) -> float:
        return time.time() + self.offset

    def timeouts(self) -> tuple[float, float]:
        return self.start, self.silence


def _emit(message: dict) -> None:
    sys.stdout.buffer.write(codec.dump_bytes(message) + b"\n")
    sys.stdout.buffer.flush()


async def _serve_pipe(host: str, port: int, recordings: Recordings | None = None, fastpath: bool = True) -> None:
    from .engine import MediaEngine     # the relay (DTLS, SRTP, the compiled path): only the worker runs it
    reporter = _PipeReporter()
    engine = MediaEngine(host=host, reporter=reporter, port=port, recordings=recordings, fastpath=fastpath)
    engine.encodes_audio = engine.measures_level = False     # the main process does both (module docstring)
    loop = asyncio.get_running_loop()
    reader = asyncio.StreamReader(limit=PIPE_LIMIT)
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    while line := await reader.readline():
        message: Any = None
        try:
            message = codec.loads(line)
            op, call_id = message["op"], message.get("call_id", "")
            value: Any = None
            if op == "allocate":
                value = (await engine.allocate(call_id)).to_doc()
            elif op == "restore":
                args = {key: message[key] for key in RESTORE_ARGS}
                args["negotiated"] = Negotiated.from_doc(args["negotiated"]) if args["negotiated"] else None
                value = await engine.restore(call_id, message["leg"], message["state"], **args)
            elif op == "audio":
                PreEncodedAudio.add(message["spec"], [base64.b64decode(f) for f in message["frames"]])
            elif op == "certificate":
                engine.certificate = DtlsCertificate.from_pem(message["cert"].encode(), message["key"].encode())
            elif op == "stats":
                value = await engine.stats()
            elif op == "configure":
                engine.configure(call_id, Negotiated.from_doc(message["negotiated"]), message["user_audio"],
                                 message["user_is_caller"])
            elif op == "connected":
                engine.call_connected(call_id, message["at"], message.get("announcement"))
            elif op == "voicemail_answer":
                if not engine.voicemail_answer(call_id, [base64.b64decode(f) for f in message["frames"]],
                                               message["user_audio"]):
                    reporter.note(call_id, "voicemail_no_leg")
            elif op == "voicemail_record":
                engine.voicemail_record(call_id, message["seconds"])
            elif op == "dtmf":
                value = await engine.send_dtmf(call_id, message["digits"])
            elif op == "attach_browser":
                local = await engine.attach_browser(call_id)
                value = None if local is None else local.to_doc()
            elif op == "connect_browser":
                engine.connect_browser(call_id, Negotiated.from_doc(message["negotiated"]))
            elif op == "detach_browser":
                engine.detach_browser(call_id)
            elif op == "release":
                engine.release(call_id)
            elif op == "view":
                value = await engine.view(call_id)
            elif op == "recording":         # write out the buffered part; the main process reads the file
                engine.flush_recording(call_id)
                value = True
            elif op == "clock":
                reporter.offset, reporter.start, reporter.silence = message["offset"], message["start"], message["silence"]
            elif op == "check":
                engine.check_timeouts()
            if "id" in message:
                _emit({"re": message["id"], "value": value})
        except Exception as exc:   # one bad request must not take every call on this worker down
            log.exception("media worker: %r failed", line[:200])
            if isinstance(message, dict) and "id" in message:
                _emit({"re": message["id"], "value": None, "error": str(exc)})
    await engine.close()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="a wacall media worker (started by the server)")
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=0, help="the shared media port (0: any free port)")
    parser.add_argument("--recordings-dir", help="where the calls' recordings go (none without)")
    parser.add_argument("--recording-max-seconds", type=float, default=180.0)
    parser.add_argument("--no-fastpath", action="store_true", help="every packet in Python (no compiled path)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s media-worker[%(process)d] %(name)s: %(message)s")
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        recordings = (Recordings(args.recordings_dir, max_seconds=args.recording_max_seconds)
                      if args.recordings_dir else None)
        runner.run(_serve_pipe(args.host, args.port, recordings, fastpath=not args.no_fastpath))


if __name__ == "__main__":
    main()
