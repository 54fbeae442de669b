"""The voicemail's audio, sans-I/O: the announcement file in, the message file out (Ogg/Opus through
PyAV), and the :class:`VoicemailMachine` in the business's place in front of a real user's phone."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from wacall.media.audio import SAMPLE_RATE, AudioError, dominant_frequency
from wacall.media.playout import PreEncodedAudio
from wacall.media.recording import Recordings
from wacall.media.voicemail import (
    VoicemailMachine,
    announcement_frames,
    decode_ogg_opus,
    encode_ogg_opus,
    ogg_opus,
)
from wacall.users.phone import Phone


def tone(freq: float, seconds: float) -> np.ndarray:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return (np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16)


def test_ogg_opus_round_trip_keeps_the_tone():
    data = encode_ogg_opus(tone(600, 1.5))
    assert data.startswith(b"OggS")
    with av.open(io.BytesIO(data)) as container:
        assert container.format.name == "ogg"
        assert container.streams.audio[0].codec_context.name == "opus"
    pcm = decode_ogg_opus(data)
    assert abs(len(pcm) / SAMPLE_RATE - 1.5) < 0.05
    assert abs(dominant_frequency(pcm, SAMPLE_RATE) - 600) < 5


def test_an_announcement_becomes_20ms_frames():
    frames = announcement_frames(encode_ogg_opus(tone(600, 1.0)))
    assert len(frames) == 50


@pytest.mark.parametrize("data", [b"", b"junk" * 100, None])
def test_not_ogg_opus_is_refused(data):
    if data is None:                                  # a WAV is audio, but not Ogg/Opus
        buf = io.BytesIO()
        with av.open(buf, "w", format="wav") as out:
            stream = out.add_stream("pcm_s16le", rate=SAMPLE_RATE)
            stream.codec_context.layout = "mono"
            frame = av.AudioFrame.from_ndarray(tone(440, 0.1).reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = SAMPLE_RATE
            for packet in stream.encode(frame):
                out.mux(packet)
        data = buf.getvalue()
    with pytest.raises(AudioError):
        decode_ogg_opus(data)


def test_machine_plays_the_announcement_into_the_recording_then_takes_the_message(tmp_path):
    notes = []
    phone = Phone(lambda kind, **data: notes.append(kind))
    phone.set_up("tone:1000", True)
    phone.recording = Recordings(tmp_path).writer("wacid.vm1", clock=lambda: 0.0)
    heard, recorded = [], []
    machine = VoicemailMachine(phone, announcement_frames(encode_ogg_opus(tone(600, 0.4))),
                               heard=lambda: heard.append(True), recorded=recorded.append)
    PreEncodedAudio.get("tone:1000")
    for _ in range(20):
        machine.tick()
    assert heard == [] and phone.microphone is None   # 20 frames of announcement, nothing said yet
    machine.tick()
    assert heard == [True] and machine.phase == "waiting"
    machine.tick()                                    # nothing happens until the domain says how long
    assert machine.message == []
    machine.record(0.5)
    for _ in range(30):
        machine.tick()
    assert len(recorded) == 1 and len(recorded[0]) == 25
    phone.flush_recording()
    wav = Recordings(tmp_path).wav("wacid.vm1")
    from wacall.media.audio import read_wav
    path = tmp_path / "heard.wav"
    path.write_bytes(wav)
    pcm, rate = read_wav(path)
    assert abs(dominant_frequency(pcm, rate) - 600) < 5       # the user heard the announcement
    message = decode_ogg_opus(ogg_opus(recorded[0]))
    assert abs(len(message) / SAMPLE_RATE - 0.5) < 0.05
    assert abs(dominant_frequency(message, SAMPLE_RATE) - 1000) < 5   # and said its tone
