"""The virtual user's phone on its own (``wacall.users.phone``): no socket, no SRTP, no event loop.

The relay's transport hands the phone authenticated RTP packets and decoded digits and takes frames
and keys from it; these tests drive that interface directly, with explicit (virtual) times."""

from __future__ import annotations

import ast
import inspect

import pytest

from wacall.media.playout import PreEncodedAudio
from wacall.media.dtmf import DtmfDigit
from wacall.media.recording import Recordings, read_packets
from wacall.media.rtp import RTP_HEADER
from wacall.users import phone as phone_module
from wacall.users.phone import NO_MEDIA_AT_START, SILENCE, BrowserMicrophone, G711Loop, Phone


class Clock:
    def __init__(self, t: float = 1000.0) -> None:
        self.t = t

    def __call__(self) -> float:
        return self.t


def make_phone(audio: str = "tone:440", is_caller: bool = True) -> tuple[Phone, list[tuple[str, dict]]]:
    notes: list[tuple[str, dict]] = []
    phone = Phone(lambda kind, **data: notes.append((kind, data)))
    phone.set_up(audio, is_caller)
    return phone, notes


def rtp_packets(spec: str, count: int, pt: int = 111) -> list[bytes]:
    frames = PreEncodedAudio.get(spec).frames
    return [RTP_HEADER.pack(0x80, pt, 1000 + i, 960 * i, 0x1234) + frames[i % len(frames)] for i in range(count)]


def kinds(notes: list[tuple[str, dict]]) -> list[str]:
    return [kind for kind, _ in notes]


# -- answering --------------------------------------------------------------------------------------------
def test_the_callers_phone_counts_the_first_media_as_answered():
    phone, notes = make_phone(is_caller=True)
    assert phone.answered_at is None
    assert phone.answer_on_media(1001.5) is True
    assert phone.answered_at == 1001.5
    assert notes == [("user_answered", {"trigger": "first_media"})]
    phone.connected(1002.0)                      # the accept after the first media answers nothing again
    assert phone.connected_at == 1002.0 and phone.answered_at == 1001.5
    assert kinds(notes) == ["user_answered"]


def test_a_ringing_phone_hears_nothing_until_the_user_picks_up():
    phone, notes = make_phone(is_caller=False)
    assert phone.answer_on_media(1001.0) is False      # business-initiated: the phone still rings
    assert phone.answered_at is None and notes == []
    phone.connected(1003.0)                            # the user picked up
    assert phone.answered_at == phone.connected_at == 1003.0
    assert notes == []                                 # the accept is on the call's timeline already
    phone.connected(1009.0)                            # the first accept counts
    assert phone.connected_at == phone.answered_at == 1003.0 and notes == []


def test_a_restored_phone_is_connected_and_answered_as_before():
    phone, notes = make_phone()
    phone.resume(990.0)
    assert phone.connected_at == phone.answered_at == 990.0 and notes == []
    other, _ = make_phone()
    other.resume(None)                                  # a call that never connected stays unanswered
    assert other.connected_at is None and other.answered_at is None


# -- the earpiece -----------------------------------------------------------------------------------------
def test_the_earpiece_measures_the_level_of_what_it_heard():
    phone, _ = make_phone()
    assert phone.level_dbfs() is None
    for packet in rtp_packets("tone:440", 20):
        phone.hear("opus", packet)
    level = phone.level_dbfs()
    assert level is not None and -12.0 < level < -6.0      # a sine at half scale: -9 dBFS
    quiet, _ = make_phone()
    for packet in rtp_packets("silence", 20):
        quiet.hear("opus", packet)
    assert quiet.level_dbfs() < -60.0


def test_a_codec_switch_mid_call_is_not_heard_and_noted_once():
    phone, notes = make_phone()
    opus = rtp_packets("tone:440", 3)
    phone.hear("opus", opus[0])
    phone.hear("pcmu", b"\x80\x00" + bytes(10) + bytes(160))
    phone.hear("pcma", b"\x80\x08" + bytes(10) + bytes(160))
    phone.hear("opus", opus[1])
    assert phone.heard_codec == "opus"
    assert notes == [("codec_switch", {"codec": "pcmu"})]


def test_the_recording_keeps_what_the_user_heard_and_is_written_out_on_hang_up(tmp_path):
    recordings = Recordings(tmp_path)
    phone, _ = make_phone()
    phone.recording = recordings.writer("wacid.R", Clock())
    packets = rtp_packets("tone:440", 10)
    for packet in packets:
        phone.hear("opus", packet)
    phone.hang_up()
    codec, stored = read_packets(recordings.path("wacid.R").read_bytes())
    assert codec == "opus" and stored == packets


def test_digits_the_business_sent_are_kept_and_go_to_the_timeline():
    phone, notes = make_phone()
    phone.heard_digit(DtmfDigit("5", 120.4, 960))
    phone.heard_digit(DtmfDigit("#", 80.0, 1920))
    assert phone.digits_received == [{"digit": "5", "duration_ms": 120}, {"digit": "#", "duration_ms": 80}]
    assert notes == [("dtmf_from_business", {"digit": "5", "duration_ms": 120}),
                     ("dtmf_from_business", {"digit": "#", "duration_ms": 80})]


# -- the keys ---------------------------------------------------------------------------------------------
def test_keys_wait_for_the_transport_and_are_handed_over_once():
    phone, _ = make_phone()
    assert phone.take_keys() == ""
    phone.press("12")
    phone.press("#")
    assert phone.keys == "12#"
    assert phone.take_keys() == "12#" and phone.take_keys() == ""
    assert "".join(phone.digits_sent) == "12#"


# -- the microphone ---------------------------------------------------------------------------------------
def test_the_user_talks_once_answered_and_after_the_business_sent_first():
    phone, _ = make_phone(is_caller=False)
    assert not phone.wants_to_talk(business_sent_first=True)       # still ringing
    phone.connected(1000.0)
    assert not phone.wants_to_talk(business_sent_first=False)      # Meta: the business sends first
    assert phone.wants_to_talk(business_sent_first=True)


def test_the_microphone_is_the_pre_encoded_source_looped():
    phone, notes = make_phone("tone:440")
    PreEncodedAudio.get("tone:440")
    microphone = phone.start_talking("opus")
    assert microphone is phone.microphone and microphone is not None
    frames = PreEncodedAudio.get("tone:440").frames
    assert microphone.frames is frames                             # shared between calls, not copied
    assert [microphone.next() for _ in range(len(frames) + 2)] == frames + frames[:2]
    assert notes == [("user_media_started", {"codec": "opus"})]


def test_g711_frames_are_160_bytes_of_20_ms():
    phone, notes = make_phone("tone:440")
    microphone = phone.start_talking("pcmu")
    assert microphone is not None and microphone.frames is G711Loop.get("tone:440", "pcmu")
    assert {len(frame) for frame in microphone.frames} == {160} and len(microphone.frames) == 500
    assert G711Loop.get("tone:440", "pcma") != microphone.frames
    assert notes == [("user_media_started", {"codec": "pcmu"})]


def test_the_phone_waits_for_a_source_being_encoded_then_encodes_it_itself(monkeypatch):
    phone, notes = make_phone("tone:523")
    monkeypatch.setattr(PreEncodedAudio, "cached", classmethod(lambda cls, spec, **kw: False))
    waits = 0
    while phone.start_talking("opus") is None:
        waits += 1
        assert waits <= phone_module.ENCODE_WAIT_TICKS
    assert waits == phone_module.ENCODE_WAIT_TICKS and phone.microphone is not None
    assert kinds(notes) == ["user_media_started"]


def test_an_unreadable_source_makes_the_user_silent_and_says_why(tmp_path):
    phone, notes = make_phone(f"file:{tmp_path / 'missing.wav'}")
    microphone = phone.start_talking("pcma")
    assert microphone is not None and microphone.frames is PreEncodedAudio.get("silence").frames
    assert phone.audio == "silence"
    assert kinds(notes) == ["user_audio_unavailable", "user_media_started"]
    assert notes[0][1]["audio"].startswith("file:")


# -- patience ---------------------------------------------------------------------------------------------
@pytest.mark.parametrize("connected_at, last_media_at, now, verdict", [
    (None, None, 5000.0, None),                    # not connected: nobody waits yet
    (1000.0, None, 1019.9, None),                  # 20 s to the first media
    (1000.0, None, 1020.0, NO_MEDIA_AT_START),
    (1000.0, 1005.0, 1034.9, None),                # 30 s of silence mid-call
    (1000.0, 1005.0, 1035.0, SILENCE),
    (1000.0, 990.0, 1029.9, None),                 # media before the accept: silence counts from the accept
    (1000.0, 990.0, 1030.0, SILENCE),
])
def test_the_user_gives_up_after_the_media_timeouts(connected_at, last_media_at, now, verdict):
    phone, _ = make_phone()
    if connected_at is not None:
        phone.connected(connected_at)
    assert phone.gives_up(now, 20.0, 30.0, last_media_at) == verdict


def test_a_timeout_of_zero_is_off():
    phone, _ = make_phone()
    phone.connected(1000.0)
    assert phone.gives_up(10**9, 0.0, 0.0, None) is None
    assert phone.gives_up(10**9, 0.0, 0.0, 1001.0) is None


# -- a browser in the user's place (the console's phone) ----------------------------------------------------
def test_a_browser_microphone_passes_payloads_through_and_never_builds_up_latency():
    mic = BrowserMicrophone()
    assert mic.next() is None                                # nothing came: that tick sends nothing
    packets = rtp_packets("tone:1200", 5)
    mic.put(packets[0])
    assert mic.next() == packets[0][12:] and mic.next() is None
    for packet in packets:                                  # the browser's clock ran ahead: 5 in one tick
        mic.put(packet)
    assert mic.next() == packets[3][12:]                     # the oldest went; never more than 40 ms behind
    assert mic.next() == packets[4][12:] and mic.next() is None


def test_a_bridged_phone_talks_with_the_browser_and_forwards_what_it_hears():
    phone, notes = make_phone(audio="tone:440")
    heard: list[bytes] = []
    phone.let_browser_in(BrowserMicrophone(), heard.append)
    packets = rtp_packets("tone:600", 3)
    for packet in packets:
        phone.hear("opus", packet)
    assert heard == packets                                  # the browser's earpiece gets every packet
    assert phone.recent and phone.level_dbfs() is not None   # and the user's level and recording go on
    assert phone.start_talking("opus") is phone.bridge
    assert notes[-1] == ("user_media_started", {"codec": "opus", "source": "browser"})
    phone.hear("pcmu", b"\x80\x00" + bytes(170))             # not Opus: nothing the browser could play
    assert len(heard) == 3
    phone.let_browser_out()                                  # the browser leaves: the user goes silent
    assert phone.bridge is None and phone.forward is None and phone.audio == "silence"


def test_a_browser_taking_over_a_talking_phone_talks_from_the_next_frame():
    phone, notes = make_phone(audio="tone:440")
    PreEncodedAudio.get("tone:440")                          # encoded: the phone talks at once
    phone.answer_on_media(1000.0)
    own = phone.start_talking("opus")
    assert own is not None
    browser = BrowserMicrophone()
    phone.let_browser_in(browser, lambda plain: None)
    assert phone.microphone is browser and own is not browser
    assert notes[-1] == ("user_media_switched", {"source": "browser"})


def test_a_bridged_phone_on_a_g711_call_keeps_its_own_source_and_says_why():
    phone, notes = make_phone(audio="tone:440")
    phone.let_browser_in(BrowserMicrophone(), lambda plain: None)
    microphone = phone.start_talking("pcmu")
    assert microphone is not phone.bridge and len(microphone.next()) == 160
    assert ("browser_needs_opus", {"codec": "pcmu"}) in notes


# -- the phone stays on its side of the seam ----------------------------------------------------------------
def test_the_phone_touches_no_socket_no_keys_and_no_event_loop():
    tree = ast.parse(inspect.getsource(phone_module))
    imported = {node.module or "" for node in ast.walk(tree) if isinstance(node, ast.ImportFrom)}
    imported |= {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}
    forbidden = {"socket", "asyncio", "ssl", "media.srtp", "media.dtls", "media.ports", "media.ice_lite",
                 "media.relay", "media.engine", "domain", "server"}
    assert not {name for name in imported for bad in forbidden if name == bad or name.endswith("." + bad)
                or name.lstrip(".") == bad}, imported
