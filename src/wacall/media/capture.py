"""Call recording and transcription: the spoken announcement, the two channels, the stereo Ogg/Opus file
and the transcript document (Meta's call recording and call transcription features).

- :func:`announcement_pcm`: the announcement spoken by ``espeak-ng`` (the same renderer as the users'
  ``tts:TEXT``) in the language's voice, 48 kHz mono.
- :func:`intro_frames`: the first seconds of what the user's phone sends while the announcement plays:
  the announcement mixed into the user's own audio, encoded once (Opus or G.711) off the event loop.
- :func:`capture`: after the call, the two channels as Meta captures them (after the mix): channel 0 the
  business (what the user heard: the call's recording file, ``wacall.media.recording``, with the
  announcement mixed in), channel 1 the customer (the user's source with the announcement mixed in);
  :func:`stereo_ogg` encodes them as stereo Ogg/Opus; :func:`transcript_document` runs the recogniser
  on each channel and builds Meta's JSON document.
- :class:`Recogniser`: offline speech recognition with PocketSphinx (PyPI ``pocketsphinx``, which ships
  its US English acoustic model, dictionary and language model in the wheel: nothing is downloaded).

Everything here blocks (TTS, encoding, recognition: seconds): run it in an executor, never on the loop; the
post-call processing runs in a process of its own (:func:`main`): PocketSphinx holds the GIL while it decodes.
"""

from __future__ import annotations

import datetime as dt
import fractions
import io
import threading
from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
import numpy.typing as npt

from . import g711
from .audio import FRAME_SAMPLES, SAMPLE_RATE, TTS_VOICE, OpusEncoder, parse_audio_spec
from .recording import Recordings, announcement_pcm, mix

Int16Array = npt.NDArray[np.int16]
ASR_RATE = 16000                       # PocketSphinx's en-us model is a 16 kHz model
SEGMENT_GAP = 0.6                      # seconds of silence that end a segment
SPEAKERS = ("Business", "Customer")    # channel 0, channel 1 (Meta's transcript document)


def announcement_voice(language_voice: str | None) -> str:
    """The espeak-ng voice of an announcement: the language's voice with the Klatt variant of ``tts:``."""
    variant = TTS_VOICE.partition("+")[2]
    return f"{language_voice or 'en-us'}+{variant}" if variant else (language_voice or "en-us")


def source_pcm(spec: str, samples: int) -> Int16Array:
    """``samples`` of a user's audio source (``wacall.media.audio`` spec), from its start."""
    if samples <= 0:
        return np.zeros(0, dtype=np.int16)
    try:
        source = parse_audio_spec(spec)
    except Exception:                   # a source that cannot be produced: the user said nothing
        return np.zeros(samples, dtype=np.int16)
    frames = -(-samples // FRAME_SAMPLES)
    return np.concatenate([np.asarray(source.read(), dtype=np.int16) for _ in range(frames)])[:samples]


def intro_frames(announcement: Int16Array, user_audio: str, codec: str) -> list[bytes]:
    """What the user's phone sends while the announcement plays: the announcement mixed into the user's
    own audio (from its start), as 20 ms frames of ``codec`` (``opus``, ``pcmu`` or ``pcma``)."""
    n = -(-len(announcement) // FRAME_SAMPLES) * FRAME_SAMPLES
    pcm = mix(source_pcm(user_audio, n), announcement)
    if codec == "opus":
        encoder = OpusEncoder()
        return [encoder.encode(pcm[i:i + FRAME_SAMPLES]) for i in range(0, n, FRAME_SAMPLES)]
    data = (g711.ulaw_encode if codec == "pcmu" else g711.alaw_encode)(g711.resample_48k_to_8k(pcm))
    return [data[i:i + 160] for i in range(0, len(data) - 159, 160)]


# -- the stereo file -------------------------------------------------------------------------------------
def stereo_ogg(business: Int16Array, customer: Int16Array, bitrate: int = 64000) -> bytes:
    """Two channels (business on channel 0, customer on channel 1) as stereo Opus in Ogg."""
    n = max(len(business), len(customer))
    n = max(FRAME_SAMPLES, -(-n // FRAME_SAMPLES) * FRAME_SAMPLES)
    pcm = np.zeros((n, 2), dtype=np.int16)
    pcm[:len(business), 0] = business
    pcm[:len(customer), 1] = customer
    out = io.BytesIO()
    with av.open(out, "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=SAMPLE_RATE)
        stream.layout = "stereo"
        stream.bit_rate = bitrate
        stream.time_base = fractions.Fraction(1, SAMPLE_RATE)
        for start in range(0, n, FRAME_SAMPLES):
            frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm[start:start + FRAME_SAMPLES]).reshape(1, -1),
                                               format="s16", layout="stereo")
            frame.sample_rate = SAMPLE_RATE
            frame.pts = start
            frame.time_base = fractions.Fraction(1, SAMPLE_RATE)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return out.getvalue()


def read_stereo(data: bytes | str | Path) -> tuple[Int16Array, Int16Array]:
    """A stereo recording's two channels (48 kHz int16): (channel 0, channel 1)."""
    source = io.BytesIO(data) if isinstance(data, bytes) else str(data)
    chunks = []
    with av.open(source) as container:
        resampler = av.AudioResampler(format="s16", layout="stereo", rate=SAMPLE_RATE)
        for frame in container.decode(container.streams.audio[0]):
            for out in resampler.resample(frame):
                chunks.append(out.to_ndarray().reshape(-1, 2))
    pcm = np.concatenate(chunks) if chunks else np.zeros((0, 2), dtype=np.int16)
    return np.ascontiguousarray(pcm[:, 0]), np.ascontiguousarray(pcm[:, 1])


# -- recognition -----------------------------------------------------------------------------------------
def _to_asr_rate(pcm: Int16Array) -> Int16Array:
    if len(pcm) == 0:
        return pcm
    resampler = av.AudioResampler(format="s16", layout="mono", rate=ASR_RATE)
    frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm, dtype=np.int16).reshape(1, -1),
                                       format="s16", layout="mono")
    frame.sample_rate = SAMPLE_RATE
    out = [o.to_ndarray().reshape(-1) for o in resampler.resample(frame) + resampler.resample(None)]
    return np.concatenate(out) if out else np.zeros(0, dtype=np.int16)


@dataclass
class Word:
    word: str
    start: float
    end: float
    confidence: float


class Recogniser:
    """PocketSphinx with the US English model its wheel ships (``pocketsphinx.get_model_path()``), batch
    cepstral mean normalisation per utterance. A fresh decoder per channel (~0.7 s to load the model): a
    decoder carries adaptation from one utterance set to the next, and a transcript must not depend on the
    calls transcribed before it. CPU-bound and holding the GIL: run it in a process of its own."""

    language = "en"
    _lock = threading.Lock()

    @staticmethod
    def _new():
        from pocketsphinx import Decoder           # imported here: only transcription needs it
        return Decoder(samprate=ASR_RATE, loglevel="FATAL", cmn="batch", remove_noise=False)

    @classmethod
    def words(cls, pcm48: Int16Array) -> list[Word]:
        """The words recognised in 48 kHz mono speech, with times (seconds) and confidences: each stretch
        of speech between pauses (:func:`utterances`) is decoded as one utterance."""
        lead = ASR_RATE * 3 // 10                    # 300 ms of silence around: speech at an edge has context
        pcm = np.concatenate((np.zeros(lead, np.int16), _to_asr_rate(pcm48), np.zeros(lead, np.int16)))
        words: list[Word] = []
        spans = utterances(pcm)
        if not spans:
            return words
        with cls._lock:
            decoder = cls._new()
            for start, end in spans:
                words += cls._decode(decoder, pcm[start:end], (start - lead) / ASR_RATE)
        return [Word(w.word, max(0.0, w.start), max(0.0, w.end), w.confidence) for w in words]

    @staticmethod
    def _decode(decoder, pcm: Int16Array, at: float) -> list[Word]:
        frame_rate = decoder.config["frate"]
        decoder.start_utt()
        decoder.process_raw(np.ascontiguousarray(pcm, dtype="<i2").tobytes(), full_utt=True)
        decoder.end_utt()
        words = []
        for seg in decoder.seg():
            word = seg.word
            if word.startswith("<") or word.startswith("[") or word.startswith("++"):
                continue                            # <s>, </s>, <sil>, [NOISE], fillers
            if "(" in word:
                word = word[:word.index("(")]       # alternate pronunciations: "the(2)"
            words.append(Word(word, round(at + seg.start_frame / frame_rate, 2),
                              round(at + (seg.end_frame + 1) / frame_rate, 2),
                              round(float(min(1.0, max(0.0, seg.prob))), 2)))
        return words


def utterances(pcm: Int16Array, rate: int = ASR_RATE, pause: float = 0.4, pad: float = 0.3,
               floor_dbfs: float = -45.0) -> list[tuple[int, int]]:
    """(start, end) sample ranges of speech: 20 ms frames above ``floor_dbfs`` (and within 30 dB of the
    loudest frame), joined across pauses shorter than ``pause`` s, padded by ``pad`` s of context."""
    step = rate // 50
    n = len(pcm) // step
    if n == 0:
        return []
    x = pcm[:n * step].astype(np.float64).reshape(n, step) / 32768.0
    level = 10 * np.log10(np.mean(x * x, axis=1) + 1e-12)
    loud = level > max(floor_dbfs, float(level.max()) - 30.0)
    spans: list[list[int]] = []
    for i in np.flatnonzero(loud):
        if spans and i - spans[-1][1] <= pause * 50:
            spans[-1][1] = int(i) + 1
        else:
            spans.append([int(i), int(i) + 1])
    margin = int(pad * 50)
    return [(max(0, a - margin) * step, min(n, b + margin) * step) for a, b in spans if b - a >= 5]


def segments(words: list[Word], channel: int, first_id: int = 1) -> list[dict]:
    """Words grouped into segments (a pause of ``SEGMENT_GAP`` s or more ends one), in Meta's shape."""
    out: list[dict] = []
    group: list[Word] = []

    def close() -> None:
        if group:
            conf = round(sum(w.confidence for w in group) / len(group), 2)
            out.append({"id": first_id + len(out), "speaker": SPEAKERS[channel], "channel": channel,
                        "start": group[0].start, "end": group[-1].end,
                        "text": " ".join(w.word for w in group), "confidence": conf,
                        "words": [{"word": w.word, "start": w.start, "end": w.end, "confidence": w.confidence,
                                   "lang": Recogniser.language} for w in group]})
            group.clear()

    for word in words:
        if group and word.start - group[-1].end >= SEGMENT_GAP:
            close()
        group.append(word)
    close()
    return out


def transcript_document(business: Int16Array, customer: Int16Array, processed_at: float) -> dict:
    """Meta's transcript document for a stereo call (channel 0 Business, channel 1 Customer)."""
    duration = round(max(len(business), len(customer)) / SAMPLE_RATE, 2)
    both = segments(Recogniser.words(business), 0) + segments(Recogniser.words(customer), 1)
    both.sort(key=lambda s: (s["start"], s["channel"]))
    for i, segment in enumerate(both, 1):
        segment["id"] = i
    words = [w for s in both for w in s["words"]]
    confidence = round(sum(w["confidence"] for w in words) / len(words), 2) if words else 0.0
    stamp = dt.datetime.fromtimestamp(processed_at, dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"metadata": {"processed_at": stamp,
                         "audio": {"duration": duration, "sample_rate": ASR_RATE, "channels": 2,
                                   "audio_format": "stereo"}},
            "transcript": {"text": " ".join(f"[{s['speaker']}] {s['text']}" for s in both),
                           "language": Recogniser.language if words else "", "duration": duration,
                           "confidence": confidence, "segments": both}}


# -- after the call --------------------------------------------------------------------------------------
@dataclass
class Processed:
    """What the post-call processing made: the stereo recording and / or the transcript document."""
    recording: bytes | None
    transcript: dict | None
    seconds: float


def process(recordings, call_id: str, *, recording: bool, transcription: bool, processed_at: float) -> Processed | None:
    """Both channels of an ended call as Meta captures them (after the announcement's mix), as stereo
    Ogg/Opus and / or Meta's transcript document. ``recordings``: the ``wacall.media.recording.Recordings``
    holding what the user heard (channel 0, the business, with the announcement mixed in); channel 1, the
    customer, is the user's own audio source with the announcement mixed in at the same place. None when
    no announcement played to its end: the user hung up before or during it, which declines."""
    heard = recordings.heard_pcm(call_id)
    if heard is None or heard[1] is None:
        return None
    business, mark = heard
    offset = int(mark.get("offset_frames", 0)) * FRAME_SAMPLES
    length = int(mark.get("frames", 0)) * FRAME_SAMPLES
    if len(business) < offset + length - 5 * FRAME_SAMPLES:       # the call ended during the announcement
        return None
    announcement = announcement_pcm(mark["text"], mark.get("voice"))
    customer = mix(source_pcm(str(mark.get("user_audio", "silence")), len(business)), announcement, offset)
    customer = customer[:len(business)]
    return Processed(stereo_ogg(business, customer) if recording else None,
                     transcript_document(business, customer, processed_at) if transcription else None,
                     len(business) / SAMPLE_RATE)


def main(argv: list[str] | None = None) -> int:
    """``python -m wacall.media.capture --recordings-dir D --call-id C --out DIR [--recording] [--transcription]
    --processed-at T``: :func:`process` in a process of its own (PocketSphinx holds the GIL while it decodes:
    in a thread of the server it would stall every call's media for seconds), at a lower CPU priority. Writes
    ``recording.ogg`` / ``transcript.json`` into ``--out`` and prints one JSON line: {"declined", "recording",
    "transcript", "text", "seconds"}."""
    import argparse
    import json
    import os

    parser = argparse.ArgumentParser(prog="python -m wacall.media.capture")
    parser.add_argument("--recordings-dir", required=True)
    parser.add_argument("--call-id", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--recording", action="store_true")
    parser.add_argument("--transcription", action="store_true")
    parser.add_argument("--processed-at", type=float, required=True)
    args = parser.parse_args(argv)
    try:
        os.nice(10)                     # live calls first
    except OSError:
        pass
    done = process(Recordings(args.recordings_dir), args.call_id, recording=args.recording,
                   transcription=args.transcription, processed_at=args.processed_at)
    result: dict = {"declined": done is None, "recording": None, "transcript": None, "text": None, "seconds": None}
    if done is not None:
        out = Path(args.out)
        result["seconds"] = round(done.seconds, 2)
        if done.recording is not None:
            (out / "recording.ogg").write_bytes(done.recording)
            result["recording"] = str(out / "recording.ogg")
        if done.transcript is not None:
            (out / "transcript.json").write_text(json.dumps(done.transcript, ensure_ascii=False))
            result["transcript"] = str(out / "transcript.json")
            result["text"] = done.transcript["transcript"]["text"]
    print(json.dumps(result), flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())


__all__ = ["Processed", "Recogniser", "Word", "announcement_pcm", "announcement_voice", "process", "intro_frames", "mix", "read_stereo",
           "segments", "source_pcm", "stereo_ogg", "transcript_document"]
