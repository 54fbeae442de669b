"""Call audio: Opus over PyAV, 20 ms PCM sources, pre-encoded playout, recording and analysis.

Format: everything inside wacall is 48 kHz mono int16 PCM in 20 ms frames (960 samples). Opus is
always signalled ``opus/48000/2`` in SDP (RFC 7587 section 7), but the stream's channel count is
the encoder's choice; we encode **mono at 32 kbit/s** (``application=voip``, constrained VBR;
plain VBR overshoots to ~47 kbit/s on a pure tone): above the 20 kbit/s Meta asks for with
``maxaveragebitrate`` in its SIP SDPs, within the ~40 kbit/s it budgets per direction. We decode
to mono (libopus downmixes stereo packets).

Cost (PyAV 18 / libopus, 2-core Debian VM, mono 32 kbit/s, complexity 10): encoding a 20 ms frame
takes about 115 µs for a tone and 215 µs for broadband audio, decoding 30-60 µs; ``complexity=0``
brings broadband encoding to 65-95 µs. So a call never encodes per packet if it can help it: :class:`PreEncodedAudio` encodes a source once into a loop of Opus packets, cached by
spec string and shared by every call that plays the same spec; silence is one cached frame. The cache
is bounded (:class:`ByteLRU`, least recently used sources go first); a call keeps the packets it plays.
Both live in :mod:`wacall.media.playout`, which a process can import without PyAV and numpy (it imports this
module when it encodes).

Sources (:func:`parse_audio_spec`): ``silence``, ``tone:FREQ[:AMPLITUDE]``, ``file:PATH`` (anything
FFmpeg decodes, resampled to 48 kHz mono, looped), ``tts:TEXT`` (the ``espeak-ng`` binary renders
a WAV; without it :class:`AudioSourceUnavailable`).

:class:`Recorder` takes received Opus/PCMU/PCMA payloads with their RTP timestamps, places them
on the timeline by timestamp (gaps from lost packets become silence), tracks the level, and writes
a 48 kHz mono 16-bit WAV.

Levels are dBFS relative to a full-scale square wave: a full-scale sine has an RMS of -3.01 dBFS;
digital silence is reported as :data:`SILENCE_DBFS`.
"""

from __future__ import annotations

import fractions
import math
import shutil
import subprocess
import tempfile
import time
import wave
from collections import deque
from pathlib import Path
from typing import Protocol

import av
import av.error
import numpy as np
import numpy.typing as npt

from . import g711
from .audio_format import DEFAULT_OPUS_BITRATE, FRAME_MS, FRAME_SAMPLES, SAMPLE_RATE, AudioError  # noqa: F401
from .rtp import RtpPacket

__all__ = [
    "FRAME_SAMPLES",
    "SAMPLE_RATE",
    "SILENCE_DBFS",
    "AudioError",
    "AudioSource",
    "AudioSourceUnavailable",
    "AudioSpecError",
    "FileSource",
    "OpusDecoder",
    "OpusEncoder",
    "Recorder",
    "SilenceSource",
    "ToneSource",
    "TtsSource",
    "dominant_frequency",
    "parse_audio_spec",
    "read_wav",
    "rms_dbfs",
    "tone_power",
    "write_wav",
]

SILENCE_DBFS = -120.0

Int16Array = npt.NDArray[np.int16]


class AudioSourceUnavailable(AudioError):
    """A source cannot be produced here (e.g. ``tts:`` without the espeak-ng binary)."""


class AudioSpecError(AudioError, ValueError):
    """An audio spec string that does not parse."""


# --- analysis ---------------------------------------------------------------------------------


def _float(pcm: npt.ArrayLike) -> npt.NDArray[np.float64]:
    return np.asarray(pcm, dtype=np.float64).reshape(-1) / 32768.0


def rms_dbfs(pcm: npt.ArrayLike) -> float:
    """RMS level of int16 PCM in dBFS (full-scale sine: -3.01), :data:`SILENCE_DBFS` for silence."""
    x = _float(pcm)
    if x.size == 0:
        return SILENCE_DBFS
    ms = float(np.mean(x * x))
    return max(10.0 * math.log10(ms), SILENCE_DBFS) if ms > 0 else SILENCE_DBFS


def tone_power(pcm: npt.ArrayLike, sample_rate: int, freq: float) -> float:
    """Power of one frequency component, as the mean square it contributes (sine of amplitude A
    relative to full scale: A**2 / 2).

    This is the (generalised) Goertzel algorithm's single-bin DFT, evaluated as one numpy dot
    product instead of the sample-by-sample recursion, which is slow in Python; the result is the
    same up to rounding.
    """
    x = _float(pcm)
    n = x.size
    if n == 0:
        return 0.0
    w = 2.0 * math.pi * freq / sample_rate
    k = np.arange(n)
    re = float(np.dot(x, np.cos(w * k)))
    im = float(np.dot(x, np.sin(w * k)))
    return 2.0 * (re * re + im * im) / (n * n)


def dominant_frequency(pcm: npt.ArrayLike, sample_rate: int) -> float:
    """Frequency (Hz) of the strongest spectral peak above DC: Hann-windowed FFT with parabolic
    interpolation between bins. 0.0 for silence or empty input."""
    x = _float(pcm)
    n = x.size
    if n < 4 or not np.any(x):
        return 0.0
    spectrum = np.abs(np.fft.rfft((x - x.mean()) * np.hanning(n)))
    spectrum[0] = 0.0
    i = int(np.argmax(spectrum))
    if i <= 0:
        return 0.0
    delta = 0.0
    if 0 < i < len(spectrum) - 1:
        a, b, c = np.log(spectrum[i - 1 : i + 2] + 1e-300)
        denom = a - 2 * b + c
        if denom != 0:
            delta = 0.5 * (a - c) / denom
    return (i + delta) * sample_rate / n


# --- WAV --------------------------------------------------------------------------------------


def write_wav(path: str | Path, pcm: npt.ArrayLike, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write mono int16 PCM as a 16-bit WAV."""
    path = Path(path)
    data = np.asarray(pcm, dtype=np.int16).reshape(-1)
    with wave.open(str(path), "wb") as w:
        w.setnchannels(1)
        w.setsampwidth(2)
        w.setframerate(sample_rate)
        w.writeframes(data.astype("<i2").tobytes())
    return path


def read_wav(path: str | Path) -> tuple[Int16Array, int]:
    """Read a 16-bit PCM WAV (any channel count: the first channel) -> (samples, sample rate)."""
    with wave.open(str(path), "rb") as w:
        if w.getsampwidth() != 2:
            raise AudioError(f"{path}: only 16-bit WAV is supported here")
        channels = w.getnchannels()
        rate = w.getframerate()
        data = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").astype(np.int16)
    return data[::channels].copy(), rate


# --- Opus -------------------------------------------------------------------------------------


def _frame_to_int16(frame: av.AudioFrame) -> Int16Array:
    arr = frame.to_ndarray()
    if arr.dtype.kind == "f":
        arr = np.clip(np.rint(arr * 32768.0), -32768, 32767).astype(np.int16)
    elif arr.dtype != np.int16:
        arr = arr.astype(np.int16)
    if frame.format.is_planar and arr.shape[0] > 1:
        arr = arr.T  # (channels, n) -> (n, channels)
    elif not frame.format.is_planar and len(frame.layout.channels) > 1:
        arr = arr.reshape(-1, len(frame.layout.channels))
    else:
        arr = arr.reshape(-1)
    return np.ascontiguousarray(arr)


class OpusEncoder:
    """20 ms Opus frames at 48 kHz from int16 PCM (libopus through PyAV).

    ``encode`` takes 960 samples: a 1-D mono array, or (960, 2) stereo which is downmixed when the
    encoder is mono (the default). ``complexity`` (0..10, libopus default 10) trades quality for CPU.
    """

    def __init__(
        self,
        bitrate: int = DEFAULT_OPUS_BITRATE,
        *,
        channels: int = 1,
        application: str = "voip",
        fec: bool = False,
        packet_loss_percent: int = 0,
        complexity: int | None = None,
    ) -> None:
        if channels not in (1, 2):
            raise AudioError("Opus channels must be 1 or 2")
        self.channels = channels
        self.bitrate = bitrate
        ctx = av.CodecContext.create("libopus", "w")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono" if channels == 1 else "stereo"
        ctx.format = "s16"
        ctx.bit_rate = bitrate
        ctx.time_base = fractions.Fraction(1, SAMPLE_RATE)
        options = {
            "application": application,
            "frame_duration": str(FRAME_MS),
            "vbr": "constrained",
            "fec": "1" if fec else "0",
            "packet_loss": str(packet_loss_percent),
        }
        if complexity is not None:
            options["compression_level"] = str(complexity)
        ctx.options = options
        ctx.open()
        self._ctx = ctx
        self._pts = 0
        self._pending: deque[bytes] = deque()
        self.frames_encoded = 0

    def encode(self, pcm: npt.ArrayLike) -> bytes:
        """One 20 ms frame of PCM -> one Opus packet (the RTP payload)."""
        arr = np.asarray(pcm)
        if arr.dtype != np.int16:
            arr = np.clip(arr, -32768, 32767).astype(np.int16)
        if arr.ndim == 2 and arr.shape[1] == 2:
            if self.channels == 1:
                arr = ((arr[:, 0].astype(np.int32) + arr[:, 1]) // 2).astype(np.int16)
        elif arr.ndim == 1 and self.channels == 2:
            arr = np.repeat(arr, 2).reshape(-1, 2)
        elif arr.ndim != 1:
            raise AudioError(f"PCM must be (n,) mono or (n, 2) stereo, got shape {arr.shape}")
        if arr.shape[0] != FRAME_SAMPLES:
            raise AudioError(f"an Opus frame is {FRAME_SAMPLES} samples, got {arr.shape[0]}")
        frame = av.AudioFrame.from_ndarray(
            np.ascontiguousarray(arr).reshape(1, -1), format="s16", layout=self._ctx.layout.name
        )
        frame.sample_rate = SAMPLE_RATE
        frame.pts = self._pts
        self._pts += FRAME_SAMPLES
        for packet in self._ctx.encode(frame):
            self._pending.append(bytes(packet))
        self.frames_encoded += 1
        if not self._pending:  # pragma: no cover - libopus emits one packet per frame
            raise AudioError("the Opus encoder produced no packet")
        return self._pending.popleft()


class OpusDecoder:
    """Opus packets -> int16 PCM at 48 kHz (mono 1-D by default; (n, 2) when ``channels=2``)."""

    def __init__(self, *, channels: int = 1) -> None:
        ctx = av.CodecContext.create("libopus", "r")
        ctx.sample_rate = SAMPLE_RATE
        ctx.layout = "mono" if channels == 1 else "stereo"
        self.channels = channels
        self._ctx = ctx
        self.frames_decoded = 0
        self.errors = 0

    def decode(self, payload: bytes) -> Int16Array:
        """Decode one packet; raises :class:`AudioError` for a corrupt one."""
        try:
            frames = self._ctx.decode(av.Packet(payload))
        except av.error.FFmpegError as exc:
            self.errors += 1
            raise AudioError(f"Opus decode failed: {exc}") from exc
        self.frames_decoded += 1
        if not frames:
            return np.zeros(0 if self.channels == 1 else (0, 2), dtype=np.int16)
        out = [_frame_to_int16(f) for f in frames]
        return out[0] if len(out) == 1 else np.concatenate(out)


# --- sources ----------------------------------------------------------------------------------


class AudioSource(Protocol):
    """Produces 48 kHz mono int16 PCM, :data:`FRAME_SAMPLES` samples per :meth:`read`."""

    spec: str

    def read(self) -> Int16Array: ...


class SilenceSource:
    spec = "silence"

    def __init__(self) -> None:
        self._frame = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        self._frame.flags.writeable = False

    def read(self) -> Int16Array:
        return self._frame


class ToneSource:
    """A continuous sine: ``amplitude`` is relative to full scale (0..1)."""

    def __init__(self, freq_hz: float, amplitude: float = 0.5) -> None:
        if not 0 < freq_hz < SAMPLE_RATE / 2:
            raise AudioSpecError(f"tone frequency {freq_hz} Hz is outside 0..24000")
        if not 0 <= amplitude <= 1:
            raise AudioSpecError(f"tone amplitude {amplitude} is outside 0..1")
        self.freq_hz = float(freq_hz)
        self.amplitude = float(amplitude)
        self.spec = f"tone:{freq_hz:g}" + ("" if amplitude == 0.5 else f":{amplitude:g}")
        self._phase = 0.0
        self._step = 2.0 * math.pi * self.freq_hz / SAMPLE_RATE
        self._k = np.arange(FRAME_SAMPLES, dtype=np.float64)

    def read(self) -> Int16Array:
        x = np.sin(self._phase + self._step * self._k) * (self.amplitude * 32767.0)
        self._phase = (self._phase + self._step * FRAME_SAMPLES) % (2.0 * math.pi)
        return np.rint(x).astype(np.int16)


def decode_file(path: str | Path) -> Int16Array:
    """Decode any FFmpeg-readable audio file to 48 kHz mono int16 (the first audio stream)."""
    path = Path(path)
    if not path.is_file():
        raise AudioSourceUnavailable(f"audio file not found: {path}")
    chunks: list[Int16Array] = []
    try:
        with av.open(str(path)) as container:
            if not container.streams.audio:
                raise AudioError(f"{path}: no audio stream")
            stream = container.streams.audio[0]
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    chunks.append(_frame_to_int16(out))
            for out in resampler.resample(None):
                chunks.append(_frame_to_int16(out))
    except av.error.FFmpegError as exc:
        raise AudioError(f"{path}: cannot decode: {exc}") from exc
    if not chunks:
        raise AudioError(f"{path}: no audio samples")
    return np.concatenate(chunks)


class FileSource:
    """A decoded audio file, padded with silence to whole 20 ms frames and looped (or, with
    ``loop=False``, followed by silence and ``finished`` set)."""

    def __init__(self, path: str | Path, *, loop: bool = True, spec: str | None = None) -> None:
        pcm = decode_file(path)
        self._init(pcm, loop=loop, spec=spec or f"file:{path}")

    def _init(self, pcm: Int16Array, *, loop: bool, spec: str) -> None:
        pad = -len(pcm) % FRAME_SAMPLES
        self.pcm = np.concatenate((pcm, np.zeros(pad, dtype=np.int16))) if pad else pcm
        self.loop = loop
        self.spec = spec
        self.finished = False
        self._pos = 0

    @classmethod
    def from_pcm(cls, pcm: npt.ArrayLike, *, loop: bool = True, spec: str = "pcm") -> FileSource:
        self = cls.__new__(cls)
        self._init(np.asarray(pcm, dtype=np.int16).reshape(-1), loop=loop, spec=spec)
        return self

    @property
    def frames_per_loop(self) -> int:
        return len(self.pcm) // FRAME_SAMPLES

    @property
    def duration(self) -> float:
        return len(self.pcm) / SAMPLE_RATE

    def read(self) -> Int16Array:
        if self._pos >= len(self.pcm):
            if not self.loop:
                self.finished = True
                return np.zeros(FRAME_SAMPLES, dtype=np.int16)
            self._pos = 0
        frame = self.pcm[self._pos : self._pos + FRAME_SAMPLES]
        self._pos += FRAME_SAMPLES
        return frame


#: espeak-ng's voice for ``tts:TEXT``: US English with the Klatt formant synthesiser, the espeak-ng voice an
#: offline recogniser (PocketSphinx's en-us model, call transcription) understands best (docs/fidelity.md)
TTS_VOICE = "en-us+klatt5"


def espeak_binary() -> str | None:
    """Path of the espeak-ng binary, if installed."""
    return shutil.which("espeak-ng")


class TtsSource(FileSource):
    """Text rendered by ``espeak-ng`` (its WAV resampled to 48 kHz), then ``pause`` seconds of
    silence, looped. Raises :class:`AudioSourceUnavailable` without espeak-ng."""

    def __init__(self, text: str, *, voice: str | None = TTS_VOICE, pause: float = 1.0, loop: bool = True) -> None:
        binary = espeak_binary()
        if binary is None:
            raise AudioSourceUnavailable("tts: needs the espeak-ng binary (apt-get install espeak-ng)")
        if not text.strip():
            raise AudioSpecError("tts: needs some text")
        with tempfile.TemporaryDirectory(prefix="wacall-tts-") as tmp:
            out = Path(tmp) / "tts.wav"
            cmd = [binary, "-w", str(out)]
            if voice:
                cmd += ["-v", voice]
            cmd += ["--", text]
            try:
                subprocess.run(cmd, check=True, capture_output=True, timeout=60)
            except (OSError, subprocess.SubprocessError) as exc:
                raise AudioSourceUnavailable(f"espeak-ng failed: {exc}") from exc
            pcm = decode_file(out)
        silence = np.zeros(int(pause * SAMPLE_RATE), dtype=np.int16)
        self._init(np.concatenate((pcm, silence)), loop=loop, spec=f"tts:{text}")
        self.text = text


def parse_audio_spec(spec: str) -> AudioSource:
    """``silence`` | ``tone:FREQ[:AMPLITUDE]`` | ``file:PATH`` | ``tts:TEXT`` -> a new source."""
    kind, sep, arg = spec.partition(":")
    kind = kind.strip().lower()
    if kind == "silence" and not arg:
        return SilenceSource()
    if kind == "tone" and sep:
        freq_s, _, amp_s = arg.partition(":")
        try:
            freq = float(freq_s)
            amplitude = float(amp_s) if amp_s else 0.5
        except ValueError:
            raise AudioSpecError(f"bad tone spec {spec!r}: use tone:FREQ[:AMPLITUDE]") from None
        return ToneSource(freq, amplitude)
    if kind == "file" and arg:
        return FileSource(arg, spec=spec)
    if kind == "tts" and arg:
        return TtsSource(arg)
    raise AudioSpecError(f"unknown audio spec {spec!r}: use silence, tone:FREQ, file:PATH or tts:TEXT")


# --- recording --------------------------------------------------------------------------------

_CODEC_CLOCK = {"opus": 48000, "pcmu": 8000, "pcma": 8000}


class Recorder:
    """Decodes received audio payloads onto a 48 kHz timeline and writes a WAV.

    ``add(payload, timestamp, arrival_time)`` places each payload at its RTP timestamp relative to
    the first packet (32-bit wrap handled). A gap before a packet (lost or never-sent packets) is
    filled with silence, at most ``max_gap_seconds`` of it per gap (a longer jump is treated as a
    timestamp discontinuity); a packet that would overlap audio already written (duplicate or too
    late) is dropped. ``level_dbfs`` is the RMS of the last ``level_window_ms`` of decoded audio
(inserted silence does not count). Decoding costs ~35 µs per Opus packet.
    ``max_seconds`` caps what is kept in memory (None: unlimited, 5.76 MB per minute).
    """

    def __init__(
        self,
        codec: str = "opus",
        *,
        max_gap_seconds: float = 10.0,
        level_window_ms: int = 200,
        max_seconds: float | None = None,
    ) -> None:
        codec = codec.lower()
        if codec not in _CODEC_CLOCK:
            raise AudioError(f"cannot record codec {codec!r}: use opus, pcmu or pcma")
        self.codec = codec
        self.clock_rate = _CODEC_CLOCK[codec]
        self._scale = SAMPLE_RATE // self.clock_rate
        self._opus = OpusDecoder() if codec == "opus" else None
        self._upsampler = g711.Upsampler() if codec != "opus" else None
        self.max_gap_samples = int(max_gap_seconds * SAMPLE_RATE)
        self.max_samples = None if max_seconds is None else int(max_seconds * SAMPLE_RATE)
        self._chunks: list[Int16Array] = []
        self.samples = 0  # samples on the timeline, stored or not
        self._stored = 0
        self._ext_ts = 0  # unwrapped timestamp of the last packet, relative to the first
        self._last_ts: int | None = None
        self._shift = 0  # timeline correction after discontinuities
        self._level: deque[tuple[float, int]] = deque()
        self._level_sum = 0.0
        self._level_n = 0
        self._level_window = SAMPLE_RATE * level_window_ms // 1000
        self.first_packet_at: float | None = None
        self.last_packet_at: float | None = None
        self.packets = 0
        self.dropped_packets = 0
        self.decode_errors = 0
        self.gap_samples = 0
        self.closed = False

    # timeline -----------------------------------------------------------------------------
    def _append(self, pcm: Int16Array) -> None:
        n = len(pcm)
        if n == 0:
            return
        if self.max_samples is None or self._stored + n <= self.max_samples:
            self._chunks.append(pcm)
            self._stored += n
        elif self._stored < self.max_samples:
            keep = self.max_samples - self._stored
            self._chunks.append(pcm[:keep])
            self._stored += keep
        self.samples += n

    def _track_level(self, pcm: Int16Array) -> None:
        x = pcm.astype(np.float64) / 32768.0
        energy = float(np.dot(x, x))
        self._level.append((energy, len(pcm)))
        self._level_sum += energy
        self._level_n += len(pcm)
        while self._level and self._level_n - self._level[0][1] >= self._level_window:
            e, n = self._level.popleft()
            self._level_sum -= e
            self._level_n -= n

    @property
    def level_dbfs(self) -> float:
        if self._level_n == 0 or self._level_sum <= 0:
            return SILENCE_DBFS
        return max(10.0 * math.log10(self._level_sum / self._level_n), SILENCE_DBFS)

    def _decode(self, payload: bytes) -> Int16Array | None:
        try:
            if self._opus is not None:
                return self._opus.decode(payload)
            pcm8 = g711.ulaw_decode(payload) if self.codec == "pcmu" else g711.alaw_decode(payload)
            assert self._upsampler is not None
            return self._upsampler.process(pcm8)
        except AudioError:
            self.decode_errors += 1
            return None

    def add(self, payload: bytes, timestamp: int, arrival_time: float | None = None) -> None:
        """Feed one received payload (RTP ``timestamp`` in the codec's clock)."""
        if self.closed:
            raise AudioError("recorder is closed")
        now = time.monotonic() if arrival_time is None else arrival_time
        if self.first_packet_at is None:
            self.first_packet_at = now
        self.last_packet_at = now
        self.packets += 1
        if self._last_ts is not None:
            d = (timestamp - self._last_ts) & 0xFFFFFFFF
            self._ext_ts += d - (1 << 32) if d >= 0x80000000 else d
        self._last_ts = timestamp
        position = self._ext_ts * self._scale + self._shift
        if position < self.samples:
            self.dropped_packets += 1
            return
        gap = position - self.samples
        if gap > self.max_gap_samples:
            self._shift -= gap - self.max_gap_samples
            gap = self.max_gap_samples
        pcm = self._decode(payload)
        if gap:
            self.gap_samples += gap
            self._append(np.zeros(gap, dtype=np.int16))
        if pcm is not None:
            self._track_level(pcm)
            self._append(pcm)

    def add_packet(self, packet: RtpPacket, arrival_time: float | None = None) -> None:
        self.add(packet.payload, packet.timestamp, arrival_time)

    @property
    def duration(self) -> float:
        return self.samples / SAMPLE_RATE

    def pcm(self) -> Int16Array:
        """Everything recorded so far (48 kHz mono int16)."""
        if not self._chunks:
            return np.zeros(0, dtype=np.int16)
        if len(self._chunks) > 1:
            self._chunks = [np.concatenate(self._chunks)]
        return self._chunks[0]

    def close(self, path: str | Path | None = None) -> Path | None:
        """Stop recording; write the WAV to ``path`` if given."""
        self.closed = True
        if path is None:
            return None
        return write_wav(path, self.pcm(), SAMPLE_RATE)
