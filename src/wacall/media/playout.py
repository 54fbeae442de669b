"""Pre-encoded playout: what a user says, as a loop of 20 ms Opus packets encoded once per source and shared
by every call that plays it, and the bounded caches that hold such packets.

This module loads neither PyAV nor numpy (together ~29 MB in a process): encoding a source imports the
encoder from :mod:`wacall.media.audio` when it happens. A media worker never encodes: the server sends it
the packets (``wacall.media.workers``, op ``audio``), so the worker process stays without them.
"""

from __future__ import annotations

import fractions
import sys
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from typing import Any

from .audio_format import DEFAULT_OPUS_BITRATE, FRAME_MS, FRAMES_PER_SECOND, AudioError


def frames_size(frames: list[bytes]) -> int:
    """Bytes a list of packets takes in memory (payloads, object headers, the list's pointers)."""
    return sum(sys.getsizeof(frame) + 8 for frame in frames)


class ByteLRU:
    """A cache bounded by the bytes of what it holds: putting past ``max_bytes`` drops the least recently
    used entries (one entry larger than the bound is kept alone). Thread-safe."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._items: OrderedDict[object, tuple[object, int]] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: object) -> object | None:
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def __contains__(self, key: object) -> bool:
        return key in self._items

    def __len__(self) -> int:
        return len(self._items)

    def put(self, key: object, value: object, size: int) -> None:
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self.bytes -= old[1]
            self._items[key] = (value, size)
            self.bytes += size
            while self.bytes > self.max_bytes and len(self._items) > 1:
                _, (_, dropped) = self._items.popitem(last=False)
                self.bytes -= dropped

    def clear(self) -> None:
        with self._lock:
            self._items.clear()
            self.bytes = 0


class PreEncodedAudio:
    """A source encoded once into a loop of 20 ms Opus packets, shared between calls.

    The loop is encoded twice with one encoder and the second pass kept, so the first packet was
    encoded with the loop's end as history and the wrap-around is seamless. Loop length: silence
    one frame; a tone the fewest frames holding a whole number of periods (440 Hz: 5 frames, 1 kHz:
    1; at most 50 for any integer frequency); a file or TTS its whole length up to ``max_seconds``.
    """

    MAX_CACHE_BYTES = 32 * 1024 * 1024     # ~2 hours of 32 kbit/s Opus over all sources
    _cache = ByteLRU(MAX_CACHE_BYTES)
    _lock = threading.Lock()

    def __init__(self, spec: str, frames: list[bytes], *, bitrate: int, encode_seconds: float) -> None:
        if not frames:
            raise AudioError("pre-encoded audio needs at least one frame")
        self.spec = spec
        self.frames = frames
        self.bitrate = bitrate
        self.encode_seconds = encode_seconds

    def __len__(self) -> int:
        return len(self.frames)

    def frame(self, index: int) -> bytes:
        """The packet for 20 ms interval ``index`` of the playout (looped)."""
        return self.frames[index % len(self.frames)]

    def cursor(self, start: int = 0) -> Iterator[bytes]:
        """An endless iterator over the looped packets, for one call."""
        n = len(self.frames)
        i = start % n
        frames = self.frames
        while True:
            yield frames[i]
            i = i + 1 if i + 1 < n else 0

    @property
    def duration(self) -> float:
        return len(self.frames) * FRAME_MS / 1000.0

    @classmethod
    def encode(
        cls,
        source: Any,                      # a wacall.media.audio.AudioSource
        n_frames: int,
        *,
        bitrate: int = DEFAULT_OPUS_BITRATE,
        spec: str | None = None,
    ) -> PreEncodedAudio:
        """Encode ``n_frames`` frames of ``source`` as a seamless loop (uncached)."""
        import numpy as np                   # numpy and PyAV: only in a process that encodes (module docstring)
        from .audio import OpusEncoder
        started = time.perf_counter()
        pcm = [np.array(source.read(), dtype=np.int16) for _ in range(max(1, n_frames))]
        encoder = OpusEncoder(bitrate)
        for frame in pcm:  # warm-up pass: the encoder's history is now the loop's end
            encoder.encode(frame)
        frames = [encoder.encode(frame) for frame in pcm]
        return cls(
            spec or source.spec, frames, bitrate=bitrate, encode_seconds=time.perf_counter() - started
        )

    @staticmethod
    def loop_frames(source: Any, max_seconds: float) -> int:      # source: a wacall.media.audio.AudioSource
        from .audio import FileSource, SilenceSource, ToneSource
        cap = max(1, int(max_seconds * FRAMES_PER_SECOND))
        if isinstance(source, SilenceSource):
            return 1
        if isinstance(source, ToneSource):
            cycles_per_frame = fractions.Fraction(source.freq_hz).limit_denominator(1000) * fractions.Fraction(
                FRAME_MS, 1000
            )
            return min(cycles_per_frame.denominator, cap)
        if isinstance(source, FileSource):
            return min(source.frames_per_loop, cap)
        return cap

    @classmethod
    def get(
        cls, spec: str, *, max_seconds: float = 60.0, bitrate: int = DEFAULT_OPUS_BITRATE
    ) -> PreEncodedAudio:
        """The cached encoding of ``spec``, encoding it on first use (seconds for long files: call it
        at startup or in an executor, not on the event loop)."""
        key = (spec, float(max_seconds), int(bitrate))
        cached = cls._cache.get(key)
        if cached is not None:
            return cached  # type: ignore[return-value]
        with cls._lock:                 # one encoding at a time: a second caller waits and finds it cached
            cached = cls._cache.get(key)
            if cached is None:
                from .audio import parse_audio_spec
                source = parse_audio_spec(spec)
                cached = cls.encode(source, cls.loop_frames(source, max_seconds), bitrate=bitrate, spec=spec)
                cls._cache.put(key, cached, frames_size(cached.frames))
            return cached  # type: ignore[return-value]

    @classmethod
    def add(cls, spec: str, frames: list[bytes], *, max_seconds: float = 60.0,
            bitrate: int = DEFAULT_OPUS_BITRATE) -> PreEncodedAudio:
        """Cache ``spec``'s packets encoded elsewhere (a media worker gets them from the server), as :meth:`get`
        would have encoded them."""
        audio = cls(spec, frames, bitrate=bitrate, encode_seconds=0.0)
        cls._cache.put((spec, float(max_seconds), int(bitrate)), audio, frames_size(frames))
        return audio

    @classmethod
    def cached(cls, spec: str, *, max_seconds: float = 60.0, bitrate: int = DEFAULT_OPUS_BITRATE) -> bool:
        return (spec, float(max_seconds), int(bitrate)) in cls._cache

    @classmethod
    def clear_cache(cls) -> None:
        cls._cache.clear()
