"""The audio format inside wacall: 48 kHz mono int16 PCM in 20 ms frames, Opus at 32 kbit/s; and the error
every audio module raises. No dependencies, so the modules that need no audio stack (``wacall.media.playout``)
and the one that is the audio stack (``wacall.media.audio``) share it."""

SAMPLE_RATE = 48000
FRAME_MS = 20
FRAME_SAMPLES = SAMPLE_RATE * FRAME_MS // 1000  # 960
FRAMES_PER_SECOND = 1000 // FRAME_MS
DEFAULT_OPUS_BITRATE = 32000


class AudioError(Exception):
    """An audio codec or source failure."""
