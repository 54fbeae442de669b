"""G.711, resampling, Opus via PyAV, audio sources, pre-encoded playout, recording and analysis."""

from __future__ import annotations

import math
import warnings
import wave

import av
import numpy as np
import pytest

from wacall.media import audio, g711
from wacall.media.audio import (
    FRAME_SAMPLES,
    SILENCE_DBFS,
    AudioError,
    AudioSourceUnavailable,
    AudioSpecError,
    FileSource,
    OpusDecoder,
    OpusEncoder,
    Recorder,
    SilenceSource,
    ToneSource,
    TtsSource,
    dominant_frequency,
    parse_audio_spec,
    rms_dbfs,
    tone_power,
    write_wav,
)
from wacall.media.dtmf import RtpStreamState
from wacall.media.playout import PreEncodedAudio

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    import audioop  # deprecated since 3.11, removed in 3.13: only a reference here


def sine(freq: float, seconds: float, rate: int = 48000, amplitude: float = 0.5) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return np.rint(np.sin(2 * np.pi * freq * t) * amplitude * 32767).astype(np.int16)


# --- G.711 --------------------------------------------------------------------------------------

ALL_INT16 = np.arange(-32768, 32768, dtype=np.int16)
ALL_BYTES = bytes(range(256))


def test_ulaw_matches_audioop_exhaustively():
    assert g711.ulaw_encode(ALL_INT16) == audioop.lin2ulaw(ALL_INT16.tobytes(), 2)
    assert g711.ulaw_decode(ALL_BYTES).tobytes() == audioop.ulaw2lin(ALL_BYTES, 2)


def test_alaw_matches_audioop_exhaustively():
    assert g711.alaw_encode(ALL_INT16) == audioop.lin2alaw(ALL_INT16.tobytes(), 2)
    assert g711.alaw_decode(ALL_BYTES).tobytes() == audioop.alaw2lin(ALL_BYTES, 2)


def test_g711_known_values_and_round_trip():
    assert g711.ulaw_encode(np.array([0, -1, 32767, -32768], dtype=np.int16)) == bytes([0xFF, 0x7E, 0x80, 0x00])
    assert g711.alaw_encode(np.array([0, -1], dtype=np.int16)) == bytes([0xD5, 0x55])
    x = sine(1000, 0.1, 8000, 0.8)
    for enc, dec in ((g711.ulaw_encode, g711.ulaw_decode), (g711.alaw_encode, g711.alaw_decode)):
        y = dec(enc(x))
        snr = 10 * math.log10(np.mean(x.astype(float) ** 2) / np.mean((x.astype(float) - y) ** 2))
        assert snr > 30  # G.711 gives ~38 dB on a loud tone


def test_resampling_keeps_a_tone_and_streams_seamlessly():
    x48 = sine(1000, 0.5)
    down = g711.Downsampler()
    x8 = np.concatenate([down.process(x48[i : i + 960]) for i in range(0, len(x48), 960)])
    assert len(x8) == len(x48) // 6
    assert np.array_equal(x8, g711.resample_48k_to_8k(x48))  # frame by frame == one shot
    assert dominant_frequency(x8[200:], 8000) == pytest.approx(1000, abs=2)
    up = g711.Upsampler()
    y48 = np.concatenate([up.process(x8[i : i + 160]) for i in range(0, len(x8), 160)])
    assert len(y48) == len(x48)
    assert np.array_equal(y48, g711.resample_8k_to_48k(x8))
    assert dominant_frequency(y48[2400:], 48000) == pytest.approx(1000, abs=2)
    assert rms_dbfs(y48[2400:]) == pytest.approx(rms_dbfs(x48), abs=0.2)
    # a 6 kHz tone cannot pass into 8 kHz audio (no aliasing to 2 kHz)
    assert rms_dbfs(g711.resample_48k_to_8k(sine(6000, 0.2))[100:]) < -80


# --- analysis -----------------------------------------------------------------------------------


def test_analysis_helpers():
    x = sine(440, 1.0, amplitude=0.5)
    assert tone_power(x, 48000, 440) == pytest.approx(0.125, rel=1e-3)
    assert tone_power(x, 48000, 1000) < 1e-6
    assert dominant_frequency(x, 48000) == pytest.approx(440, abs=0.5)
    assert dominant_frequency(sine(1234.5, 0.2), 48000) == pytest.approx(1234.5, abs=3)
    assert rms_dbfs(sine(1000, 0.1, amplitude=1.0)) == pytest.approx(-3.01, abs=0.01)
    assert rms_dbfs(x) == pytest.approx(-9.03, abs=0.01)
    assert rms_dbfs(np.zeros(960, dtype=np.int16)) == SILENCE_DBFS
    assert dominant_frequency(np.zeros(960, dtype=np.int16), 48000) == 0.0


# --- Opus ---------------------------------------------------------------------------------------


def test_opus_round_trip_keeps_440_hz():
    enc, dec = OpusEncoder(), OpusDecoder()
    src = ToneSource(440)
    packets = [enc.encode(src.read()) for _ in range(50)]
    kbps = sum(len(p) for p in packets[10:]) * 8 / (40 * 0.02) / 1000
    assert 20 < kbps < 40  # ~32 kbit/s constrained VBR
    pcm = np.concatenate([dec.decode(p) for p in packets])
    assert pcm.dtype == np.int16 and pcm.shape == (50 * FRAME_SAMPLES,)
    steady = pcm[FRAME_SAMPLES * 5 :]
    assert dominant_frequency(steady, 48000) == pytest.approx(440, abs=2)
    assert rms_dbfs(steady) == pytest.approx(-9.03, abs=1.0)
    assert tone_power(steady, 48000, 440) > 1000 * tone_power(steady, 48000, 1000)


def test_opus_input_shapes_and_errors():
    enc = OpusEncoder()
    stereo = np.stack([sine(440, 0.02), sine(440, 0.02)], axis=1)
    assert enc.encode(stereo)
    with pytest.raises(AudioError):
        enc.encode(np.zeros(480, dtype=np.int16))
    with pytest.raises(AudioError):
        enc.encode(np.zeros((960, 3), dtype=np.int16))
    stereo_enc = OpusEncoder(64000, channels=2)
    packet = stereo_enc.encode(sine(440, 0.02))
    assert OpusDecoder().decode(packet).shape == (960,)  # stereo stream decoded to mono
    assert OpusDecoder(channels=2).decode(packet).shape == (960, 2)
    dec = OpusDecoder()
    with pytest.raises(AudioError):
        dec.decode(b"\xff\xff\xff")
    assert dec.errors == 1


# --- sources ------------------------------------------------------------------------------------


def test_tone_and_silence_sources():
    src = ToneSource(1000, 0.25)
    frames = np.concatenate([src.read() for _ in range(10)])
    assert np.array_equal(frames, sine(1000, 0.2, amplitude=0.25))  # phase continuous
    silence = SilenceSource()
    assert not np.any(silence.read()) and len(silence.read()) == FRAME_SAMPLES
    with pytest.raises(AudioSpecError):
        ToneSource(30000)


def test_parse_audio_spec(tmp_path):
    assert isinstance(parse_audio_spec("silence"), SilenceSource)
    tone = parse_audio_spec("tone:440")
    assert isinstance(tone, ToneSource) and tone.freq_hz == 440 and tone.amplitude == 0.5
    assert parse_audio_spec("tone:1000:0.1").amplitude == 0.1
    path = write_wav(tmp_path / "a:b.wav", sine(500, 0.1))
    src = parse_audio_spec(f"file:{path}")
    assert isinstance(src, FileSource) and src.spec == f"file:{path}"
    for bad in ("noise", "tone:", "tone:abc", "file:", "silence:1", ""):
        with pytest.raises(AudioSpecError):
            parse_audio_spec(bad)
    with pytest.raises(AudioSourceUnavailable):
        parse_audio_spec(f"file:{tmp_path}/missing.wav")


def test_file_source_resamples_wav_and_loops(tmp_path):
    path = tmp_path / "tone16k.wav"
    x16 = sine(700, 0.5, rate=16000)
    with wave.open(str(path), "wb") as w:  # 16 kHz stereo: converted to 48 kHz mono
        w.setnchannels(2)
        w.setsampwidth(2)
        w.setframerate(16000)
        w.writeframes(np.repeat(x16, 2).tobytes())
    src = FileSource(path)
    assert src.frames_per_loop == 25 and src.duration == pytest.approx(0.5)
    frames = [src.read() for _ in range(30)]
    assert all(len(f) == FRAME_SAMPLES for f in frames)
    assert np.array_equal(frames[25], frames[0])  # looped
    pcm = np.concatenate(frames[:25])
    assert dominant_frequency(pcm[960:-960], 48000) == pytest.approx(700, abs=2)
    once = FileSource(path, loop=False)
    for _ in range(25):
        once.read()
    assert not np.any(once.read()) and once.finished


def test_file_source_decodes_ogg_opus(tmp_path):
    path = tmp_path / "tone.ogg"
    with av.open(str(path), "w", format="ogg") as container:
        stream = container.add_stream("libopus", rate=48000, layout="mono")
        src = ToneSource(880)
        for i in range(25):
            frame = av.AudioFrame.from_ndarray(src.read().reshape(1, -1), format="s16", layout="mono")
            frame.sample_rate = 48000
            frame.pts = i * FRAME_SAMPLES
            container.mux(stream.encode(frame))
        container.mux(stream.encode(None))
    pcm = FileSource(path).pcm
    assert 0.4 < len(pcm) / 48000 < 0.6
    assert dominant_frequency(pcm[4800:-4800], 48000) == pytest.approx(880, abs=3)


@pytest.mark.e2e                                 # runs espeak-ng: not in the fast tier
def test_tts_source_speaks_with_espeak_ng():
    """espeak-ng comes from Debian (scripts/apt-packages); its speech is resampled to 48 kHz."""
    assert audio.espeak_binary() is not None, "the test command installs espeak-ng"
    src = parse_audio_spec("tts:press one")
    assert isinstance(src, TtsSource) and src.duration > 1.0
    assert rms_dbfs(src.pcm) > -50


def test_tts_source_without_espeak_ng_says_why(monkeypatch):
    monkeypatch.setattr(audio, "espeak_binary", lambda: None)
    with pytest.raises(AudioSourceUnavailable, match="espeak-ng"):
        TtsSource("hello")
    with pytest.raises(AudioSourceUnavailable):
        parse_audio_spec("tts:press one")


# --- pre-encoded playout --------------------------------------------------------------------------


def test_pre_encoded_audio_is_cached_and_loops():
    PreEncodedAudio.clear_cache()
    tone = PreEncodedAudio.get("tone:440")
    assert PreEncodedAudio.get("tone:440") is tone
    assert len(tone) == 5  # 440 Hz: 8.8 periods per frame, 44 whole periods in 5 frames
    assert tone.frame(5) is tone.frames[0] and tone.frame(-1) is tone.frames[4]
    silence = PreEncodedAudio.get("silence")
    assert len(silence) == 1 and len(silence.frames[0]) < 50
    assert rms_dbfs(OpusDecoder().decode(silence.frames[0])) < -80
    assert PreEncodedAudio.get("tone:1000") is not tone and len(PreEncodedAudio.get("tone:1000")) == 1
    # decode two laps back to back: the wrap-around is seamless (no click at the loop point)
    dec = OpusDecoder()
    cursor = tone.cursor()
    pcm = np.concatenate([dec.decode(next(cursor)) for _ in range(50)])
    assert dominant_frequency(pcm, 48000) == pytest.approx(440, abs=1)
    around_loop = pcm[23 * 960 : 27 * 960]  # crosses the wrap from packet 4 to packet 0
    assert tone_power(around_loop, 48000, 440) / np.mean((around_loop / 32768.0) ** 2) > 0.98
    PreEncodedAudio.clear_cache()
    assert PreEncodedAudio.get("tone:440") is not tone


def test_tone_loop_length():
    assert PreEncodedAudio.loop_frames(ToneSource(440), 60) == 5  # 44 whole periods in 100 ms
    assert PreEncodedAudio.loop_frames(ToneSource(1000), 60) == 1
    assert PreEncodedAudio.loop_frames(ToneSource(441.5), 60) == 100
    assert PreEncodedAudio.loop_frames(SilenceSource(), 60) == 1


# --- recording ----------------------------------------------------------------------------------


def test_recorder_fills_lost_packet_with_silence_and_writes_wav(tmp_path):
    state = RtpStreamState(ssrc=5, sequence_number=1, timestamp=0xFFFFFFFF - 5 * 960)  # wraps
    enc = OpusEncoder()
    src = ToneSource(440)
    rec = Recorder("opus")
    for i in range(50):
        payload = enc.encode(src.read())
        pkt = state.packet(111, payload)
        state.advance()
        if i != 30:  # packet 30 is lost
            rec.add_packet(pkt, arrival_time=10.0 + i * 0.02)
        if i == 40:
            rec.add_packet(pkt, arrival_time=10.0 + i * 0.02)  # a duplicate is dropped
    assert rec.first_packet_at == 10.0
    assert rec.packets == 50 and rec.dropped_packets == 1 and rec.gap_samples == 960
    assert rec.level_dbfs == pytest.approx(-9.03, abs=1.0)
    out = rec.close(tmp_path / "rec.wav")
    with wave.open(str(out), "rb") as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, 48000)
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert len(pcm) == 50 * 960
    assert not np.any(pcm[30 * 960 : 31 * 960])  # the lost packet is silence
    assert dominant_frequency(pcm[5 * 960 : 30 * 960], 48000) == pytest.approx(440, abs=1)
    assert dominant_frequency(pcm[32 * 960 :], 48000) == pytest.approx(440, abs=1)
    with pytest.raises(AudioError):
        rec.add(b"x", 0)


def test_recorder_g711_and_long_gaps():
    x8 = sine(1000, 1.0, rate=8000)
    rec = Recorder("pcmu", max_gap_seconds=0.5)
    for i in range(50):
        if 20 <= i < 25:
            continue
        rec.add(g711.ulaw_encode(x8[i * 160 : (i + 1) * 160]), 1000 + i * 160)
    rec.add(g711.ulaw_encode(x8[:160]), 1000 + 50 * 160 + 8000 * 60)  # a minute later: clamped
    pcm = rec.pcm()
    assert len(pcm) == 51 * 960 + 24000
    assert rec.gap_samples == 5 * 960 + 24000
    assert not np.any(pcm[20 * 960 + 200 : 25 * 960])
    assert dominant_frequency(pcm[960:20 * 960], 48000) == pytest.approx(1000, abs=2)
    pcma = Recorder("pcma")
    pcma.add(g711.alaw_encode(x8[:160]), 0)
    assert len(pcma.pcm()) == 960
    with pytest.raises(AudioError):
        Recorder("g729")


def test_recorder_counts_corrupt_packets_and_caps_memory():
    rec = Recorder("opus", max_seconds=0.05)
    rec.add(b"\xff\xff\xff", 0)
    assert rec.decode_errors == 1 and rec.level_dbfs == SILENCE_DBFS
    enc = OpusEncoder()
    for i in range(1, 10):
        rec.add(enc.encode(np.zeros(960, dtype=np.int16)), i * 960)
    assert rec.duration == pytest.approx(0.2)
    assert len(rec.pcm()) == 2400
