"""wacall.media.capture: the stereo Ogg/Opus file and the offline recogniser (PocketSphinx's packaged
en-us model) on speech espeak-ng renders here."""

import numpy as np

from wacall.media import capture
from wacall.media.audio import TtsSource, dominant_frequency


def _tone(hz, seconds=1.0):
    t = np.arange(int(48000 * seconds)) / 48000
    return (np.sin(2 * np.pi * hz * t) * 8000).astype(np.int16)


def test_stereo_ogg_keeps_each_party_on_its_channel():
    ogg = capture.stereo_ogg(_tone(1000), _tone(440, 0.5))
    assert ogg[:4] == b"OggS" and b"OpusHead" in ogg[:100]
    left, right = capture.read_stereo(ogg)
    assert abs(dominant_frequency(left[4800:43200], 48000) - 1000) < 5
    assert abs(dominant_frequency(right[4800:19200], 48000) - 440) < 5
    assert np.abs(right[28800:]).max() < 300                      # the customer's half second is over


def test_hello_world_is_recognised_with_times_and_segments():
    speech = TtsSource("hello world", pause=0.0, loop=False).pcm
    pcm = np.concatenate([np.zeros(24000, np.int16), speech, np.zeros(48000, np.int16), speech])
    words = capture.Recogniser.words(pcm)
    assert [w.word for w in words] == ["hello", "world", "hello", "world"]
    assert 0.3 < words[0].start < words[0].end <= words[1].start < words[1].end < words[2].start
    segments = capture.segments(words, 1)
    assert [s["text"] for s in segments] == ["hello world", "hello world"]
    assert segments[0]["speaker"] == "Customer" and segments[0]["channel"] == 1
    doc = capture.transcript_document(speech, np.zeros(0, np.int16), 1796000000.0)
    assert doc["transcript"]["text"] == "[Business] hello world" and doc["transcript"]["language"] == "en"
    assert doc["metadata"]["processed_at"] == "2026-11-30T00:53:20Z"


def test_silence_gives_an_empty_transcript():
    doc = capture.transcript_document(np.zeros(48000, np.int16), np.zeros(48000, np.int16), 0.0)
    assert doc["transcript"]["segments"] == [] and doc["transcript"]["text"] == ""
    assert doc["metadata"]["audio"] == {"duration": 1.0, "sample_rate": 16000, "channels": 2, "audio_format": "stereo"}
