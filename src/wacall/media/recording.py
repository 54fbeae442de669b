"""What each user heard, on disk: one append-only file per call, decoded to a WAV only when asked for.

The relay hands every received audio packet (plain RTP, after SRTP) to the call's
:class:`RecordingWriter`, which keeps under 2 s of them in memory and appends them to
``<dir>/<call_id>.rec`` with open/write/close: a live call holds no file descriptor, so a thousand
calls fit under ``ulimit -n 1024``, and what was written survives a crash of the process. Packets stay
encoded (decoding every packet of every call would cost more CPU than the relay itself); a
recording is decoded by :meth:`Recordings.wav` when someone downloads it.

File format: the line ``WACREC1 <codec>\\n`` (``opus``, ``pcmu`` or ``pcma``), then per packet a 2-byte
big-endian length and the RTP packet. A partly written last packet (a crash mid-write) is ignored.
After every append the file's modification time is set to the *virtual* time of the write, so
retention (:meth:`Recordings.sweep`) follows ``POST /_wacall/clock/advance`` like every other timer.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import struct
import wave
from pathlib import Path
from typing import TYPE_CHECKING, Callable

from .audio_format import SAMPLE_RATE
from .rtp import RtpError, RtpPacket

if TYPE_CHECKING:
    import numpy as np

    from .audio import Recorder

# Writing (RecordingWriter, in the media workers) needs no audio stack; reading a recording back (decode,
# wav, the announcement) imports numpy and PyAV when it happens, so a media worker never loads them.

log = logging.getLogger("wacall.media")
MAGIC = b"WACREC1 "
SUFFIX = ".rec"
MARK_SUFFIX = ".ann"              # beside a recording: the announcement mixed into what the user heard
LENGTH = struct.Struct("!H")
FLUSH_BYTES = 8 * 1024            # ~1.7 s of 32 kbit/s Opus, ~0.9 s of G.711 per call in memory (1000 calls:
                                  # ~600 appends/s, against 17 MB more held at 32 KB)
PACKETS_PER_SECOND = 50           # 20 ms packets
_SAFE_ID = re.compile(r"[A-Za-z0-9_-][A-Za-z0-9._-]{0,199}")


def announcement_pcm(text: str, voice: str | None = None) -> np.ndarray:
    """A recording announcement as espeak-ng speaks it (48 kHz mono int16), then 300 ms of silence."""
    from .audio import TtsSource
    return TtsSource(text, voice=voice, pause=0.3, loop=False).pcm


def mix(base: np.ndarray, overlay: np.ndarray, offset: int = 0) -> np.ndarray:
    """``overlay`` added onto ``base`` from sample ``offset`` (``base`` extended with silence if needed),
    clipped to int16."""
    import numpy as np
    end = offset + len(overlay)
    out = np.zeros(max(len(base), end), dtype=np.int32)
    out[:len(base)] = base
    out[offset:end] += overlay
    return np.clip(out, -32768, 32767).astype(np.int16)


class RecordingWriter:
    """One call's recording: packets buffered in memory and appended to the file every ``flush_bytes``."""

    __slots__ = ("path", "clock", "max_packets", "flush_bytes", "on_error", "codec", "packets", "buffer", "error")

    def __init__(self, path: Path | str, *, clock: Callable[[], float], max_packets: int,
                 flush_bytes: int = FLUSH_BYTES, on_error: Callable[[str], None] | None = None) -> None:
        self.path = path                # Recordings.writer gives a str: a Path per call cost ~2 µs of set-up
        self.clock = clock
        self.max_packets = max_packets
        self.flush_bytes = flush_bytes
        self.on_error = on_error
        self.codec: str | None = None
        self.packets = 0
        self.buffer = bytearray()
        self.error: str | None = None

    def add(self, codec: str, packet: bytes) -> None:
        """One received RTP packet (plain). Past ``max_packets`` the rest of the call is not recorded."""
        if self.packets >= self.max_packets or self.error is not None:
            return
        if self.codec is None:
            self.codec = codec
        self.packets += 1
        buffer = self.buffer
        buffer += LENGTH.pack(len(packet))
        buffer += packet
        if len(buffer) >= self.flush_bytes:
            self.flush()

    def add_encoded(self, codec: str, chunk: bytes, packets: int) -> None:
        """``packets`` received packets already in the file's format (length + packet each), from the
        compiled media path, which stops at ``max_packets`` itself, and appended at once (C buffered them)."""
        if self.error is not None or not packets:
            return
        if self.codec is None:
            self.codec = codec
        self.packets += packets
        self.buffer += chunk
        self.flush()

    def flush(self) -> None:
        """Append what is buffered (open, write, close)."""
        if not self.buffer or self.error is not None:
            return
        try:
            try:
                self._append()
            except FileNotFoundError:   # the directory is not there (yet, or any more)
                Path(self.path).parent.mkdir(parents=True, exist_ok=True)
                self._append()
        except OSError as exc:
            self.error = f"cannot write {self.path}: {exc.strerror or exc}"
            if self.on_error is not None:
                self.on_error(self.error)
        self.buffer = bytearray()

    def mark(self, info: dict) -> None:
        """The recording announcement starts (``info``: text, voice, offset_frames, frames): written beside
        the recording, so what the user heard is read back with it mixed in (:meth:`Recordings.wav`)."""
        path = Path(self.path)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.with_suffix(MARK_SUFFIX).write_text(json.dumps(info))
        except OSError as exc:
            if self.on_error is not None:
                self.on_error(f"cannot write {path.with_suffix(MARK_SUFFIX)}: {exc.strerror or exc}")

    def _append(self) -> None:
        with open(self.path, "ab") as out:
            if out.tell() == 0:
                out.write(MAGIC + (self.codec or "opus").encode("ascii") + b"\n")
            out.write(self.buffer)
        try:
            at = self.clock()
            os.utime(self.path, (at, at))
        except (OSError, OverflowError, ValueError):
            pass                        # a virtual time the filesystem cannot hold: wall time stays


def read_packets(data: bytes) -> tuple[str, list[bytes]]:
    """(codec, RTP packets) of a recording file's contents."""
    if not data.startswith(MAGIC):
        raise ValueError("not a wacall recording")
    end = data.index(b"\n")
    codec = data[len(MAGIC):end].decode("ascii")
    packets, pos = [], end + 1
    while pos + 2 <= len(data):
        (length,) = LENGTH.unpack_from(data, pos)
        if pos + 2 + length > len(data):
            break                       # cut short by a crash
        packets.append(data[pos + 2:pos + 2 + length])
        pos += 2 + length
    return codec, packets


def decode(codec: str, packets: list[bytes]) -> Recorder:
    """The packets on a 48 kHz timeline (gaps as silence), as the user's earpiece played them."""
    from .audio import Recorder
    recorder = Recorder(codec)
    for plain in packets:
        try:
            recorder.add_packet(RtpPacket.parse(plain))
        except RtpError:
            pass
    return recorder


def wav_bytes(recorder: Recorder | None) -> bytes:
    buffer = io.BytesIO()
    with wave.open(buffer, "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(SAMPLE_RATE)
        if recorder is not None:
            out.writeframes(recorder.pcm().astype("<i2").tobytes())
    return buffer.getvalue()


class Recordings:
    """The recordings directory: where each call's file is, writers for live calls, WAVs, retention."""

    def __init__(self, directory: str | Path, *, max_seconds: float = 180.0,
                 retention_seconds: float = 7 * 86400.0) -> None:
        self.dir = Path(directory).expanduser()          # created with the first recording
        self.max_seconds = max_seconds
        self.retention_seconds = retention_seconds

    def path(self, call_id: str) -> Path | None:
        """The file of ``call_id``; None for an id that cannot be a file name here."""
        if not isinstance(call_id, str) or not _SAFE_ID.fullmatch(call_id):
            return None
        return self.dir / f"{call_id}{SUFFIX}"

    def writer(self, call_id: str, clock: Callable[[], float],
               on_error: Callable[[str], None] | None = None) -> RecordingWriter | None:
        """The writer of a live call's file (as :meth:`path`, but the path a str: one per call set up)."""
        if self.max_seconds <= 0 or not isinstance(call_id, str) or not _SAFE_ID.fullmatch(call_id):
            return None
        return RecordingWriter(f"{self.dir}{os.sep}{call_id}{SUFFIX}", clock=clock,
                               max_packets=int(self.max_seconds * PACKETS_PER_SECOND), on_error=on_error)

    def announcement(self, call_id: str) -> dict | None:
        """The recording announcement played on ``call_id`` (text, voice, offset_frames, frames), or None."""
        path = self.path(call_id)
        try:
            return json.loads(path.with_suffix(MARK_SUFFIX).read_text()) if path is not None else None
        except (OSError, ValueError):
            return None

    def heard(self, call_id: str) -> Recorder | None | bool:
        """What the user heard on ``call_id``, decoded (False: no recording file; None: an empty one)."""
        path = self.path(call_id)
        if path is None:
            return False
        try:
            data = path.read_bytes()
        except OSError:
            return False
        try:
            codec, packets = read_packets(data)
        except (ValueError, UnicodeDecodeError):
            log.warning("recording %s is not readable", path)
            return False
        return decode(codec, packets) if packets else None

    def heard_pcm(self, call_id: str) -> tuple[np.ndarray, dict | None] | None:
        """(what the user heard as 48 kHz PCM, with the announcement mixed in, the announcement), or None."""
        import numpy as np
        recorder = self.heard(call_id)
        if recorder is False:
            return None
        pcm = recorder.pcm() if recorder is not None else np.zeros(0, dtype=np.int16)
        mark = self.announcement(call_id)
        if mark is not None:
            try:
                pcm = mix(pcm, announcement_pcm(mark["text"], mark.get("voice")),
                          int(mark.get("offset_frames", 0)) * 960)[:max(len(pcm), 1)]
            except Exception as exc:                          # no espeak-ng any more: the plain recording
                log.warning("announcement of %s not mixed in: %s", call_id, exc)
        return pcm, mark

    def wav(self, call_id: str) -> bytes | None:
        """The recording of ``call_id`` as a 48 kHz mono WAV (with the recording announcement mixed in, when
        one played), or None when there is none (blocking: decodes up to ``max_seconds`` of audio, so run
        it in an executor)."""
        heard = self.heard_pcm(call_id)
        if heard is None:
            return None
        buffer = io.BytesIO()
        with wave.open(buffer, "wb") as out:
            out.setnchannels(1)
            out.setsampwidth(2)
            out.setframerate(SAMPLE_RATE)
            out.writeframes(heard[0].astype("<i2").tobytes())
        return buffer.getvalue()

    def sweep(self, now: float, keep: set[str] = frozenset()) -> int:
        """Remove recordings last written more than ``retention_seconds`` before ``now`` (virtual time),
        except those of calls in ``keep`` (still live). Returns how many went."""
        cutoff = now - self.retention_seconds
        removed = 0
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return 0
        for entry in entries:
            suffix = SUFFIX if entry.name.endswith(SUFFIX) else MARK_SUFFIX if entry.name.endswith(MARK_SUFFIX) else None
            if suffix is None or entry.name[:-len(suffix)] in keep:
                continue
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
                    removed += 1
            except OSError:
                pass
        return removed

    def clear(self) -> None:
        """Remove every recording (a reset)."""
        try:
            entries = list(os.scandir(self.dir))
        except OSError:
            return
        for entry in entries:
            if entry.name.endswith((SUFFIX, MARK_SUFFIX)):
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def remove_dir(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)
