"""Call recording and transcription (Meta, 2026) end to end: a business (plain HTTP + the SDES business of
test_media_sdes, whose media plays a WAV of known speech made with espeak-ng at test time) accepts a user's
call with ``recording`` and ``transcription`` enabled; both sides hear the announcement; after the call
``call_recording_available`` and ``call_transcription_available`` arrive; the stereo Ogg/Opus downloaded
through the Media API has the business on channel 0 and the user on channel 1; the transcript, made by
PocketSphinx, has each party's words under its speaker. pywa 4.5 has no recording/transcription fields, so
the business here is plain HTTP."""

from __future__ import annotations

import fractions
import subprocess

import av
import numpy as np
import pytest

from test_media_sdes import ALICE, SdesBusiness
from wacall.media import capture
from wacall.media.audio import TTS_VOICE, decode_file

BUSINESS_SAYS = "hello world"
USER_SAYS = "one two three four five"
ENABLED = {"status": "ENABLED", "purpose": "quality assurance", "announcement_language": "en_US"}


class SpeakingBusiness(SdesBusiness):
    """The SDES business, playing a WAV of known speech (looped, 1.5 s of silence between) instead of a tone."""

    def __init__(self, wav_path) -> None:
        super().__init__()
        speech = decode_file(wav_path)
        self.speech = np.concatenate((speech, np.zeros(72000, dtype=np.int16)))

    def _opus_frame(self, n: int) -> bytes:
        start = (n * 960) % len(self.speech)
        pcm = np.take(self.speech, np.arange(start, start + 960), mode="wrap").reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(np.ascontiguousarray(pcm), format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, n * 960, fractions.Fraction(1, 48000)
        packets = self.encoder.encode(frame)
        return bytes(packets[0]) if packets else b"\xf8\xff\xfe"


@pytest.fixture
def business(wa, receiver, tmp_path):
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"srtp_key_exchange_protocol": "SDES"}}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": f"tts:{USER_SAYS}"}).status_code == 200
    wav = tmp_path / "business.wav"
    subprocess.run(["espeak-ng", "-v", TTS_VOICE, "-w", str(wav), BUSINESS_SAYS], check=True, capture_output=True)
    speaking = SpeakingBusiness(wav)
    yield speaking
    speaking.close()


def _accept(wa, business, **objects) -> str:
    call_id = wa.user_calls(ALICE).json()["call_id"]
    answer = business.answer(wa.call(call_id)["meta_sdp"])
    response = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": answer}, **objects})
    assert response.status_code == 200, response.text
    return call_id


def _words(pcm: np.ndarray) -> str:
    return " ".join(w.word for w in capture.Recogniser.words(pcm))


def _similarity(pcm: np.ndarray, spoken: np.ndarray, max_lag: int = 2400) -> float:
    """The best normalised correlation of ``spoken`` with the start of ``pcm`` (lags up to 50 ms: codec delay)."""
    a = pcm[:len(spoken) + max_lag].astype(np.float64)
    b = spoken.astype(np.float64)
    n = 1 << (len(a) + len(b)).bit_length()
    corr = np.fft.irfft(np.fft.rfft(a, n) * np.conj(np.fft.rfft(b, n)), n)[:max_lag]
    lag = int(np.argmax(corr))
    return float(corr[lag] / (np.linalg.norm(a[lag:lag + len(b)]) * np.linalg.norm(b) + 1e-9))


def _download(wa, media_id: str) -> tuple[str, bytes]:
    info = wa.graph("GET", media_id).json()
    response = wa.http.get(info["url"], headers={"Authorization": f"Bearer {wa.token}"})
    assert response.status_code == 200, response.text
    return info["mime_type"], response.content


def test_recorded_and_transcribed_call(wa, receiver, business):
    call_id = _accept(wa, business, recording=ENABLED, transcription=ENABLED)
    business.run(13.0)
    call = wa.call(call_id)
    started = [e for e in call["timeline"] if e.get("event") == "announcement_started"]
    assert started and started[0]["offset_ms"] == 0, call["timeline"]
    # both sides hear the announcement mixed into what the other party says: its waveform is in there
    text = "The audio of this call will be recorded and transcribed for the following purpose: quality assurance."
    spoken = capture.announcement_pcm(text, capture.announcement_voice("en-us"))
    heard_by_business = np.concatenate(business.received_pcm)
    assert _similarity(heard_by_business, spoken) > 0.5
    heard_by_user = np.frombuffer(wa.http.get(call["media"]["recording_url"]).content[44:], dtype=np.int16)
    assert _similarity(heard_by_user, spoken) > 0.5
    later = heard_by_user[len(spoken) + 48000:len(spoken) * 2 + 48000]
    assert _similarity(later, spoken) < 0.2, "the announcement plays once"
    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200

    recording = receiver.wait_for("calls", id=call_id, event="call_recording_available", timeout=90)["calls"][0]
    transcription = receiver.wait_for("calls", id=call_id, event="call_transcription_available",
                                      timeout=90)["calls"][0]
    assert recording["from"] == ALICE and recording["call_recording"]["type"] == "audio"
    audio = recording["call_recording"]["audio"]
    assert audio["mime_type"] == "audio/ogg; codecs=opus" and audio["sha256"] and audio["url"].startswith("http")
    document = transcription["call_transcript"]["document"]
    assert document["mime_type"] == "application/json"

    mime, ogg = _download(wa, audio["id"])
    assert mime == "audio/ogg; codecs=opus"
    with av.open(__import__("io").BytesIO(ogg)) as container:
        stream = container.streams.audio[0]
        assert stream.codec_context.name == "opus" and stream.channels == 2
    business_channel, customer_channel = capture.read_stereo(ogg)
    skip = 48000 * 6                                 # past the announcement (in both channels)
    channel0, channel1 = _words(business_channel[skip:]), _words(customer_channel[skip:])
    assert BUSINESS_SAYS in channel0 and "three four" not in channel0, channel0
    assert "three four" in channel1 and BUSINESS_SAYS not in channel1, channel1

    mime, body = _download(wa, document["id"])
    assert mime == "application/json"
    doc = __import__("json").loads(body)
    assert doc["metadata"]["audio"]["channels"] == 2 and doc["metadata"]["audio"]["audio_format"] == "stereo"
    transcript = doc["transcript"]
    assert transcript["language"] == "en" and 0 < transcript["confidence"] <= 1
    by_speaker = {s: " ".join(seg["text"] for seg in transcript["segments"] if seg["speaker"] == s)
                  for s in ("Business", "Customer")}
    assert BUSINESS_SAYS in by_speaker["Business"], by_speaker
    assert "three four" in by_speaker["Customer"], by_speaker
    assert BUSINESS_SAYS not in by_speaker["Customer"]
    for segment in transcript["segments"]:
        assert segment["channel"] == (0 if segment["speaker"] == "Business" else 1)
        assert segment["words"] and all(w["start"] <= w["end"] and 0 <= w["confidence"] <= 1
                                        for w in segment["words"])
    assert "[Business]" in transcript["text"] and "[Customer]" in transcript["text"]
    view = wa.call(call_id)
    assert view["recording"]["media_id"] == audio["id"]
    assert view["transcript"]["media_id"] == document["id"] and BUSINESS_SAYS in view["transcript"]["text"]


def test_user_who_hangs_up_during_the_announcement_declines(wa, receiver, business):
    call_id = _accept(wa, business, recording=ENABLED)
    business.run(1.5)
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    receiver.wait_for("calls", id=call_id, event="terminate")
    wa.wait_for(lambda: wa.call(call_id).get("recording") is None and any(
        e.get("event") == "declined" for e in wa.call(call_id)["timeline"]), timeout=30, what="declined")
    assert not [d for d in receiver.snapshot() if d.value.get("calls", [{}])[0].get("event") ==
                "call_recording_available"]


@pytest.mark.parametrize("objects, message", [
    ({"recording": {"status": "ENABLED", "announcement_language": "en_US"}}, "recording[purpose]"),
    ({"recording": {**ENABLED, "purpose": "x" * 251}}, "at most 250"),
    ({"transcription": {**ENABLED, "announcement_language": "xx"}}, "announcement_language"),
    ({"recording": {**ENABLED, "status": "ON"}}, "recording[status]"),
    ({"recording": "yes"}, "must be an object"),
])
def test_bad_recording_objects_get_metas_error(wa, business, objects, message):
    call_id = wa.user_calls(ALICE).json()["call_id"]
    answer = business.answer(wa.call(call_id)["meta_sdp"])
    response = wa.calls_action({"call_id": call_id, "action": "accept",
                                "session": {"sdp_type": "answer", "sdp": answer}, **objects})
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == 100 and message in error["error_data"]["details"], error
    assert wa.call(call_id)["state"] == "RINGING"


@pytest.fixture
def media_wa(media_server):
    return media_server


def test_business_initiated_g711_call_is_recorded_in_both_media_planes(media_wa, tmp_path):
    """A business-initiated call (G.711 PCMU, so the announcement is mixed and encoded as G.711), with the
    media in the server process and in worker processes: the business hears the announcement over the
    user's tone, and the recording has the business's 1000 Hz on channel 0 and the user's 440 Hz on 1."""
    from support.harness import Receiver
    from wacall.media.audio import tone_power
    wa = media_wa
    business = SdesBusiness(1000.0, g711="PCMU")
    with Receiver.subscribed_to(wa) as receiver:
        try:
            assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
                "srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMU"]}}}).status_code == 200
            assert wa.ctl("POST", f"users/{ALICE}/permission_replies",
                          {"phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
            assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2, "audio": "tone:440"}).status_code == 200
            response = wa.calls_action({"to": ALICE, "action": "connect", "recording": ENABLED,
                                        "session": {"sdp_type": "offer", "sdp": business.offer(["PCMU"])}})
            assert response.status_code == 200, response.text
            call_id = response.json()["calls"][0]["id"]
            connect = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])[0]
            business.answered(connect["session"]["sdp"])
            wa.wait_state(call_id, "ACCEPTED")
            business.run(7.0)
            heard = np.concatenate(business.received_pcm).astype(np.float64)
            early, late = heard[:8000 * 3], heard[8000 * 6:]

            def share(pcm):
                return tone_power(pcm, 8000, 440) / np.mean((pcm / 32768.0) ** 2)
            assert share(early) < 0.95 and share(late) > 0.99, (share(early), share(late))   # speech mixed in early
            assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
            value = receiver.wait_for("calls", id=call_id, event="call_recording_available", timeout=60)
            item = value["calls"][0]
            assert item["to"] == ALICE and "call_transcript" not in item
            _, ogg = _download(wa, item["call_recording"]["audio"]["id"])
        finally:
            business.close()
    channel0, channel1 = capture.read_stereo(ogg)
    after = slice(48000 * 6, 48000 * 7)
    assert tone_power(channel0[after], 48000, 1000) > 20 * tone_power(channel0[after], 48000, 440)
    assert tone_power(channel1[after], 48000, 440) > 20 * tone_power(channel1[after], 48000, 1000)


from test_console_browser import page  # noqa: E402,F401  (the Playwright page fixture)


async def test_the_calls_page_plays_the_recording_and_shows_the_transcript(wa, business, page):
    """The console's call page (Chromium via Playwright): a player for the stereo recording, served from the
    control API, and the transcript's segments under each speaker."""
    import asyncio

    def recorded_call() -> str:
        call_id = _accept(wa, business, recording=ENABLED, transcription=ENABLED)
        business.run(9.0)
        assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
        wa.wait_for(lambda: wa.call(call_id).get("transcript"), timeout=90, what="the transcript")
        return call_id

    call_id = await asyncio.to_thread(recorded_call)
    view = await asyncio.to_thread(wa.call, call_id)
    base = wa.url.replace('127.0.0.1', 'localhost')
    await page.goto(f"{base}/_wacall/console/calls/{call_id}")
    await page.wait_for_selector("#transcript table.transcript tbody tr")
    source = await page.get_attribute("#call-recording audio source", "src")
    assert source == f"/_wacall/calls/{call_id}/media/{view['recording']['media_id']}"
    response = await page.request.get(base + source)
    assert response.ok and response.headers["content-type"] == "audio/ogg; codecs=opus"
    assert (await response.body())[:4] == b"OggS"
    duration = await page.evaluate("""src => new Promise((ok, fail) => {
        const a = new Audio(src); a.onloadedmetadata = () => ok(a.duration); a.onerror = () => fail(a.error.code); })""",
                                   source)
    assert 8 < duration < 12                       # Chromium decodes the stereo Ogg/Opus
    rows = await page.eval_on_selector_all("#transcript table.transcript tbody tr",
                                           "rows => rows.map(r => [r.cells[1].textContent, r.cells[2].textContent])")
    assert any(speaker.startswith("Business") and BUSINESS_SAYS in said for speaker, said in rows), rows
    assert any(speaker.startswith("Customer") for speaker, _ in rows), rows
    assert page.errors == []
    other = await page.request.get(f"{base}/_wacall/calls/{call_id}/media/999")
    assert other.status == 404
