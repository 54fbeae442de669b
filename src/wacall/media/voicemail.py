"""The platform's voicemail on one call: it answers the user, plays the business's announcement into the
user's earpiece, then takes what the user says for the seconds the domain asked for.

:class:`VoicemailMachine` is sans-I/O and takes the business's place behind the relay
(``wacall.media.relay.RelayEndpoint.tick`` hands it each 20 ms tick while it is there): every tick of
the announcement it gives the user's phone one plain RTP packet of Opus (so the user hears it, and
the user's recording holds it, as any packet from a business would be), then it takes one frame from
the user's microphone per tick until the message is long enough.

The audio formats at its edges, through PyAV (libopus, libavformat's Ogg muxer/demuxer; nothing
hand-written):

- :func:`announcement_frames`: the uploaded announcement (Opus in Ogg, Meta's
  ``use_case=call_voicemail_announcement``) decoded to 48 kHz PCM and encoded again as 20 ms Opus
  frames, the packetisation of every other stream wacall sends;
- :func:`ogg_opus`: the user's message (20 ms Opus frames) decoded and written as an Ogg/Opus file,
  what the business downloads as ``audio/ogg; codecs=opus``.
"""

from __future__ import annotations

import fractions
import io
import struct
from typing import Callable

import av
import av.error
import numpy as np
import numpy.typing as npt

from .audio import FRAME_SAMPLES, SAMPLE_RATE, AudioError, OpusDecoder, OpusEncoder, _frame_to_int16

ANNOUNCEMENT_MAX_SECONDS = 60.0          # Meta: the announcement is shorter than 60 s
MESSAGE_BITRATE = 32000
_RTP = struct.Struct("!BBHII")
OPUS_PT = 111                            # the payload type the user's phone files the announcement under


def decode_ogg_opus(data: bytes, *, max_seconds: float = ANNOUNCEMENT_MAX_SECONDS) -> npt.NDArray[np.int16]:
    """An Ogg/Opus file's first audio stream as 48 kHz mono int16 PCM. Raises :class:`AudioError` when
    the bytes are not Ogg, the stream is not Opus, or nothing decodes."""
    chunks: list[npt.NDArray[np.int16]] = []
    total, cap = 0, int(max_seconds * SAMPLE_RATE)
    try:
        with av.open(io.BytesIO(data), format="ogg") as container:
            if not container.streams.audio:
                raise AudioError("the file has no audio stream")
            stream = container.streams.audio[0]
            if stream.codec_context.name != "opus":
                raise AudioError(f"the audio stream is {stream.codec_context.name}, not Opus")
            resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
            for frame in container.decode(stream):
                for out in resampler.resample(frame):
                    pcm = _frame_to_int16(out)
                    chunks.append(pcm)
                    total += len(pcm)
                if total >= cap:
                    break
            for out in resampler.resample(None):
                chunks.append(_frame_to_int16(out))
    except av.error.FFmpegError as exc:
        raise AudioError(f"not an Ogg/Opus file: {exc}") from exc
    if not chunks:
        raise AudioError("the file holds no audio")
    return np.concatenate(chunks)[:cap]


def opus_frames(pcm: npt.ArrayLike, *, bitrate: int = MESSAGE_BITRATE) -> list[bytes]:
    """48 kHz mono PCM as 20 ms Opus frames (the last one padded with silence)."""
    arr = np.asarray(pcm, dtype=np.int16).reshape(-1)
    pad = (-len(arr)) % FRAME_SAMPLES
    if pad:
        arr = np.concatenate([arr, np.zeros(pad, dtype=np.int16)])
    encoder = OpusEncoder(bitrate)
    return [encoder.encode(arr[i:i + FRAME_SAMPLES]) for i in range(0, len(arr), FRAME_SAMPLES)]


def announcement_frames(data: bytes) -> list[bytes]:
    """The uploaded announcement (Ogg/Opus bytes) as the 20 ms Opus frames the user's phone hears."""
    return opus_frames(decode_ogg_opus(data))


def decode_frames(frames: list[bytes]) -> npt.NDArray[np.int16]:
    """20 ms Opus frames to 48 kHz mono PCM (a frame that does not decode becomes 20 ms of silence)."""
    decoder = OpusDecoder()
    out = []
    for frame in frames:
        try:
            pcm = decoder.decode(frame)
        except AudioError:
            pcm = np.zeros(FRAME_SAMPLES, dtype=np.int16)
        out.append(pcm.reshape(-1))
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


def encode_ogg_opus(pcm: npt.ArrayLike, *, bitrate: int = MESSAGE_BITRATE) -> bytes:
    """48 kHz mono PCM as an Ogg/Opus file (libopus in libavformat's Ogg muxer)."""
    arr = np.asarray(pcm, dtype=np.int16).reshape(-1)
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE)
        stream.codec_context.layout = "mono"
        stream.codec_context.format = "s16"
        stream.codec_context.bit_rate = bitrate
        stream.codec_context.time_base = fractions.Fraction(1, SAMPLE_RATE)
        pts = 0
        for i in range(0, len(arr), FRAME_SAMPLES):
            chunk = arr[i:i + FRAME_SAMPLES]
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(chunk).reshape(1, -1), format="s16",
                                               layout="mono")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = pts
            pts += len(chunk)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def ogg_opus(frames: list[bytes]) -> bytes:
    """The user's message (20 ms Opus frames as the microphone sent them) as an Ogg/Opus file."""
    return encode_ogg_opus(decode_frames(frames))


class VoicemailMachine:
    """The platform on the user's call in the business's place (one per call, ticked every 20 ms).

    ``heard()`` is called once when the announcement has played; :meth:`record` then starts the message
    (``seconds`` of the user's microphone); ``recorded(frames)`` gets the message's Opus frames."""

    __slots__ = ("phone", "announcement", "position", "phase", "wanted", "message", "heard", "recorded",
                 "_seq", "_ts", "_ssrc")

    def __init__(self, phone, announcement: list[bytes], *, heard: Callable[[], None],
                 recorded: Callable[[list[bytes]], None], ssrc: int = 0x766D0001) -> None:
        self.phone = phone
        self.announcement = announcement
        self.position = 0
        self.phase = "announcement"          # announcement | waiting | message | done
        self.wanted = 0
        self.message: list[bytes] = []
        self.heard, self.recorded = heard, recorded
        self._seq, self._ts, self._ssrc = 1, 0, ssrc

    def record(self, seconds: float) -> None:
        """The user speaks for ``seconds`` (the domain's word, once the announcement has played)."""
        if self.phase in ("announcement", "waiting"):
            self.wanted = max(1, int(round(seconds * 50)))
            self.phase = "message"

    def tick(self) -> None:
        if self.phase == "announcement":
            if self.position < len(self.announcement):
                frame = self.announcement[self.position]
                self.position += 1
                header = _RTP.pack(0x80, OPUS_PT, self._seq & 0xFFFF, self._ts & 0xFFFFFFFF, self._ssrc)
                self._seq += 1
                self._ts += FRAME_SAMPLES
                self.phone.hear("opus", header + frame)
                return
            self.phase = "waiting"
            self.heard()
            return
        if self.phase != "message":
            return
        phone = self.phone
        if phone.microphone is None and phone.start_talking("opus") is None:
            return                           # the user's source is still being encoded
        frame = phone.microphone.next()
        self.message.append(frame if frame is not None else b"")
        if len(self.message) >= self.wanted:
            self.phase = "done"
            self.recorded([f for f in self.message if f])


__all__ = ["VoicemailMachine", "announcement_frames", "decode_ogg_opus", "decode_frames", "encode_ogg_opus",
           "ogg_opus", "opus_frames", "ANNOUNCEMENT_MAX_SECONDS"]
