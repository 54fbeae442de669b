"""A virtual WhatsApp user's phone on one call: what the user says, hears, keys and records, when it
counts as answered, and when the user gives up on the media.

The phone is sans-I/O: it never touches a socket, a DTLS session or an SRTP key. The relay's transport
part (``wacall.media.relay.RelayEndpoint``) owns the connection and talks to the phone through a
narrow interface:

- in: :meth:`Phone.hear` with every authenticated, decrypted RTP packet of the negotiated audio codec
  (one call per media packet), :meth:`Phone.heard_digit` with every RFC 4733 digit the transport
  decoded, :meth:`Phone.answer_on_media` when media arrives before the phone was answered;
- out: :meth:`Phone.start_talking` once the transport can send, then the :class:`Microphone`'s frames
  (one pre-encoded 20 ms frame per packet; a compiled path takes the loop once and hands back where it
  is in it, ``Microphone.position``), and
  :meth:`Phone.take_keys` for the keys the user pressed (the transport sends them as RFC 4733 events on
  the audio stream);
- a browser in the user's place (the console's phone, ``wacall.media.engine.MediaEngine.attach_browser``):
  :attr:`Phone.bridge` is a :class:`BrowserMicrophone` the user's microphone becomes (the browser's own
  Opus frames, passed through), and :attr:`Phone.forward` gets every packet the phone hears (for the
  browser's earpiece);
- patience: :meth:`Phone.gives_up` says, from the time the call connected and when media last arrived
  (RTP or RTCP, which the transport knows), whether the user hangs up, and why in neutral words.

Behaviour from Meta's docs: the business sends the first packet; the caller's phone treats the first
media packet or the accept, whichever comes first, as answered; a phone that is still ringing
(business-initiated call not yet picked up) hears nothing, so media before the answer is lost
(clipping); no media 20 s after the call connects, or 30 s of silence mid-call, and the user hangs up
(the timeouts come from the platform's limits).
"""

from __future__ import annotations

import base64
from collections import deque
from typing import Any, Callable

from ..media.dtmf import DtmfDigit
from ..media.playout import ByteLRU, PreEncodedAudio, frames_size
from ..media.rtp import rtp_payload
from ..media.recording import RecordingWriter, decode

LEVEL_PACKETS = 15                       # the last 300 ms heard, kept for the level (200 ms window + warm-up)
ENCODE_WAIT_TICKS = 100                  # 2 s of ticks waiting for a source encoded off the loop, then here

#: What :meth:`Phone.gives_up` answers: the user heard nothing since the call connected, or the line
#: went silent mid-call. The transport adds why (no ICE check, DTLS failed...) and the error code.
NO_MEDIA_AT_START = "no_media_at_start"
SILENCE = "silence"

Note = Callable[..., None]               # note(kind, **data): a fact for the call's timeline
_NONE: frozenset = frozenset()           # an empty set shared by phones until their first member


def heard_level(codec: str, packets: list[bytes]) -> float:
    """The level (dBFS) of the last 200 ms of ``packets`` (plain RTP of ``codec``), decoded now."""
    return decode(codec, packets).level_dbfs


def level_field(level: float | None) -> float | None:
    """The level as the inspector shows it: dBFS to 0.1, None when nothing was heard."""
    return None if level is None or level == float("-inf") else round(level, 1)


def measure_level(view: dict) -> dict:
    """Put the level into a view made with ``level=False`` (and into its browser leg's part), from the
    packets it carries: the server measures for its media workers, whose processes never load PyAV."""
    for part in (view, view.get("browser")):
        heard = part.pop("heard", None) if isinstance(part, dict) else None
        if heard and isinstance(part.get("received"), dict):
            packets = [base64.b64decode(p) for p in heard["packets"]]
            part["received"]["level_dbfs"] = level_field(heard_level(heard["codec"], packets))
    return view


class G711Loop:
    """A user's source encoded once as 20 ms G.711 frames (160 bytes), shared between calls; the cache
    keeps the most recently used sources up to ``MAX_CACHE_BYTES`` (~100 KB per 10 s source)."""

    MAX_CACHE_BYTES = 16 * 1024 * 1024
    _cache = ByteLRU(MAX_CACHE_BYTES)

    @classmethod
    def get(cls, spec: str, codec: str, seconds: float = 10.0) -> list[bytes]:
        key = (spec, codec)
        frames = cls._cache.get(key)
        if frames is None:
            import numpy as np                   # numpy: only a process that encodes G.711 loads it
            from ..media import g711
            from ..media.audio import parse_audio_spec
            source = parse_audio_spec(spec)
            count = int(seconds * 50)
            pcm = np.concatenate([np.asarray(source.read(), dtype=np.int16) for _ in range(count)])
            narrow = g711.resample_48k_to_8k(pcm)
            encode = g711.ulaw_encode if codec == "pcmu" else g711.alaw_encode
            data = encode(narrow)
            frames = [data[i:i + 160] for i in range(0, len(data) - 159, 160)]
            cls._cache.put(key, frames, frames_size(frames))
        return frames


class Microphone:
    """What the user says: a loop of pre-encoded 20 ms frames (shared between calls, never copied) and
    where this call is in it. The transport reads ``frames`` and ``position`` directly when it sends in
    batches (a compiled path may take the whole loop once)."""

    __slots__ = ("frames", "position")

    def __init__(self, frames: list[bytes], position: int = 0) -> None:
        self.frames = frames
        self.position = position

    def next(self) -> bytes:
        frame = self.frames[self.position % len(self.frames)]
        self.position += 1
        return frame


class BrowserMicrophone:
    """What a browser says in the user's place: the payloads of the RTP packets its leg received (the
    browser's Opus frames, passed through untouched), one per 20 ms tick of the leg that sends them on.
    :meth:`next` is None when nothing came in time (that tick sends nothing: a gap, as with DTX). At
    most ``KEEP`` frames wait: when the browser's clock runs ahead of the ticker, the oldest go."""

    __slots__ = ("waiting",)
    KEEP = 3                             # 60 ms: a little jitter absorbed, no latency built up

    def __init__(self) -> None:
        self.waiting: deque[bytes] = deque(maxlen=self.KEEP)

    def put(self, plain: bytes) -> None:
        """One decrypted RTP packet (header included) of the other leg's audio codec."""
        payload = rtp_payload(plain)
        if payload:
            self.waiting.append(payload)

    def next(self) -> bytes | None:
        waiting = self.waiting
        if not waiting:
            return None
        if len(waiting) == self.KEEP:     # running behind: catch up by one frame
            waiting.popleft()
        return waiting.popleft()


class Phone:
    """One call's virtual user at the phone. ``note(kind, **data)`` puts facts on the call's timeline;
    times come in as arguments (the platform's virtual clock), the phone keeps none of its own."""

    __slots__ = ("_note", "audio", "is_caller", "connected_at", "answered_at", "microphone", "keys",
                 "recording", "records", "heard_codec", "recent", "digits_received", "digits_sent", "_waited", "_noted",
                 "bridge", "forward", "intro", "after_intro", "awaiting_intro")

    def __init__(self, note: Note) -> None:
        self._note = note
        self.audio = "tone:440"                      # what the user says (a source spec, wacall.media.audio)
        self.is_caller = True                        # the user placed the call (its phone is not ringing)
        self.connected_at: float | None = None       # the call was accepted (virtual clock)
        self.answered_at: float | None = None        # the user's phone is off the hook (accept or first media)
        self.microphone: Microphone | BrowserMicrophone | None = None    # set once the user talks
        self.bridge: BrowserMicrophone | None = None     # a browser talks in the user's place (console phone)
        self.forward: Callable[[bytes], None] | None = None   # and hears what the user hears
        self.keys = ""                               # pressed, not yet handed to the transport
        self.recording: RecordingWriter | None = None    # the file of what is heard, once anything is
        # how the recording opens (set by the engine): called with the first packet heard, so a call without
        # media costs no writer (nothing was ever written for it anyway: a writer creates its file on a flush)
        self.records: Callable[[], RecordingWriter | None] | None = None
        self.heard_codec: str | None = None
        # made with their first member (a call without media makes none of them): the last packets heard
        # (plain RTP, from the first one), the digits heard and sent (empty tuples until then), the kinds noted once
        self.recent: deque[bytes] | None = None
        self.digits_received: list[dict] | tuple[()] = ()
        self.digits_sent: list[str] | tuple[()] = ()
        self._waited = 0
        self._noted: set[str] | frozenset[str] = _NONE
        self.intro: tuple[list[bytes], dict] | None = None   # an announcement to play next (frames, what it is)
        self.after_intro: tuple[Microphone, int] | None = None   # while it plays: the user's own microphone
        self.awaiting_intro = False                  # an announcement is being rendered: the user waits for it

    def _note_once(self, kind: str, **data: Any) -> None:
        if kind not in self._noted:
            self._noted = {*self._noted, kind}         # (a new set: the first one is the shared empty one)
            self._note(kind, **data)

    # -- set-up and the call's progress ---------------------------------------------------------------
    def set_up(self, audio: str, is_caller: bool) -> None:
        """What the user will say, and whether the user placed the call (from the signalling)."""
        self.audio, self.is_caller = audio, is_caller

    def connected(self, at: float) -> None:
        """The call was accepted (the business accepted the user's call, or the user picked up). The phone
        is answered now unless media answered it before; no note: the call's timeline has the accept."""
        if self.connected_at is None:
            self.connected_at = at
            if self.answered_at is None:
                self.answered_at = at

    def answer_on_media(self, now: float) -> bool:
        """Media arrived before the phone was answered: the caller's phone counts it as answered (True);
        a phone still ringing has nobody listening (False: the packet is lost, as clipping)."""
        if not self.is_caller:
            return False
        self.answered_at = now
        self._note("user_answered", trigger="first_media")
        return True

    def resume(self, connected_at: float | None) -> None:
        """A call carried on by a restarted relay, connected at ``connected_at``."""
        if connected_at is not None:
            self.connected_at = self.answered_at = connected_at

    def hang_up(self) -> None:
        """The leg is closing: the recording is written out."""
        self.flush_recording()

    # -- the earpiece ---------------------------------------------------------------------------------
    def hear(self, codec: str, plain: bytes) -> None:
        """One authenticated RTP packet (decrypted, header included) of the audio codec ``codec``: kept
        for the recording (still encoded) and the level; decoding waits until someone listens."""
        if self.heard_codec != codec:
            if self.heard_codec is not None:
                self._note_once("codec_switch", codec=codec)
                return
            self.heard_codec = codec
            self.recent = deque(maxlen=LEVEL_PACKETS)
        self.recent.append(plain)
        recording = self.recording
        if recording is None and self.records is not None:
            recording = self.open_recording()
        if recording is not None:
            recording.add(codec, plain)
        if self.forward is not None and codec == "opus":
            self.forward(plain)

    def heard_digit(self, digit: DtmfDigit) -> None:
        entry = {"digit": digit.digit, "duration_ms": round(digit.duration_ms)}
        if not self.digits_received:                 # (the empty tuple: no list before the first digit)
            self.digits_received = []
        self.digits_received.append(entry)
        self._note("dtmf_from_business", **entry)

    def level_dbfs(self) -> float | None:
        """The level of the last 200 ms heard (decoded now from the last packets), None before any."""
        heard = self.heard_recently()
        return None if heard is None else heard_level(*heard)

    def heard_recently(self) -> tuple[str, list[bytes]] | None:
        """(codec, the last packets heard) for the level, None before any (a media worker sends them to the
        server, which decodes them: see :func:`heard_level`)."""
        if not self.recent or self.heard_codec is None:
            return None
        return self.heard_codec, list(self.recent)

    def open_recording(self) -> RecordingWriter | None:
        """The recording of what the user hears, opened now if the engine gave the phone one to open."""
        if self.recording is None and self.records is not None:
            self.recording, self.records = self.records(), None
        return self.recording

    def flush_recording(self) -> None:
        """Write what is buffered of the recording to its file (before someone reads it, and at the end)."""
        if self.recording is not None:
            self.recording.flush()

    # -- the keys -------------------------------------------------------------------------------------
    def press(self, digits: str) -> None:
        """The user presses keys; the transport sends them on its next 20 ms tick."""
        self.keys += digits
        if not self.digits_sent:                     # (the empty tuple: no list before the first key)
            self.digits_sent = []
        self.digits_sent.extend(digits)

    def take_keys(self) -> str:
        keys, self.keys = self.keys, ""
        return keys

    # -- a browser in the user's place (the console's phone) -------------------------------------------
    def let_browser_in(self, microphone: BrowserMicrophone, earpiece: Callable[[bytes], None]) -> None:
        """A browser takes the user's place: it talks through ``microphone`` (from the next frame, when
        the user was already talking) and ``earpiece`` gets every Opus packet the phone hears."""
        self.bridge, self.forward = microphone, earpiece
        if self.microphone is not None and self.microphone is not microphone:
            self.microphone = microphone
            self._note("user_media_switched", source="browser")

    def let_browser_out(self) -> None:
        """The browser leaves: the user hears on, and says nothing from now on (a microphone that was the
        browser's becomes a silent one of the user's own, which the compiled path can carry again)."""
        self.bridge = self.forward = None
        self.audio = "silence"
        if isinstance(self.microphone, BrowserMicrophone):
            self.microphone = Microphone(PreEncodedAudio.get("silence").frames)

    # -- the microphone -------------------------------------------------------------------------------
    def wants_to_talk(self, business_sent_first: bool) -> bool:
        """The user talks once the phone is answered and the business's media arrived (Meta: the
        business sends the first packet)."""
        return business_sent_first and self.answered_at is not None and not self.awaiting_intro

    def start_talking(self, codec: str) -> Microphone | BrowserMicrophone | None:
        """The user's microphone in ``codec`` (opus, pcmu, pcma), or None while its source is still
        being encoded off the event loop (after 2 s of waiting it is encoded here). With a browser in the
        user's place, the browser's frames."""
        if self.bridge is not None:
            if codec == "opus":           # passed through: the browser speaks Opus only
                self.microphone = self.bridge
                self._note("user_media_started", codec=codec, source="browser")
                return self.microphone
            self._note_once("browser_needs_opus", codec=codec)
        try:
            if codec == "opus":
                if not PreEncodedAudio.cached(self.audio) and self._waited < ENCODE_WAIT_TICKS:
                    self._waited += 1
                    return None
                frames = PreEncodedAudio.get(self.audio).frames
            else:
                frames = G711Loop.get(self.audio, codec)
        except Exception as exc:              # a bad file: the user says nothing, and the timeline says why
            self._note_once("user_audio_unavailable", audio=self.audio, reason=str(exc))
            self.audio = "silence"
            frames = PreEncodedAudio.get("silence").frames
        self.microphone = Microphone(frames)
        self._note("user_media_started", codec=codec)
        return self.microphone

    # -- the recording announcement (wacall.domain.recording) -------------------------------------------
    def announce(self, frames: list[bytes], info: dict) -> None:
        """Play ``frames`` (the announcement mixed into the user's own audio, in the send codec) from the
        next tick on, before the user's microphone carries on. ``info`` ({"text", "voice"}) goes beside
        the recording, with where in it the announcement starts."""
        self.awaiting_intro = False
        if frames:
            self.intro = (frames, info)

    def begin_intro(self) -> None:
        """The transport is about to send: the announcement starts now (called by the transport's tick)."""
        frames, info = self.intro
        self.intro = None
        own = self.microphone
        if not isinstance(own, Microphone):      # a browser in the user's place: it hears no announcement
            self._note_once("announcement_skipped", reason="a browser is in the user's place")
            return
        self.after_intro = (own, own.position)
        self.microphone = Microphone(frames)
        if self.open_recording() is not None:    # what the user heard gets the announcement mixed in there
            self.recording.mark({**info, "offset_frames": own.position, "frames": len(frames),
                                 "user_audio": self.audio})
        self._note("announcement_started", frames=len(frames), offset_ms=own.position * 20)

    def after_frame(self) -> None:
        """After each frame sent while announcing: at its end the user's own microphone carries on."""
        intro = self.microphone
        if self.after_intro is not None and intro is not None and intro.position >= len(intro.frames):
            own, at = self.after_intro
            self.after_intro = None
            own.position = at + len(intro.frames)
            self.microphone = own
            self._note("announcement_ended")

    # -- patience -------------------------------------------------------------------------------------
    def gives_up(self, now: float, start_timeout: float, silence_timeout: float,
                 last_media_at: float | None) -> str | None:
        """Whether the user hangs up for want of media: :data:`NO_MEDIA_AT_START` (nothing since the call
        connected, for ``start_timeout`` s), :data:`SILENCE` (no RTP nor RTCP for ``silence_timeout`` s
        mid-call) or None. A timeout of 0 is off."""
        if self.connected_at is None:
            return None
        if last_media_at is None:
            if start_timeout and now - self.connected_at >= start_timeout:
                return NO_MEDIA_AT_START
        elif silence_timeout and now - max(last_media_at, self.connected_at) >= silence_timeout:
            return SILENCE
        return None


__all__ = ["BrowserMicrophone", "G711Loop", "Microphone", "Phone", "NO_MEDIA_AT_START", "SILENCE", "heard_level", "level_field", "measure_level"]
