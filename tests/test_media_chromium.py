"""A real browser as the business agent: Debian's headless Chromium, driven by PyPI Playwright.

Chromium's fake audio device plays a WAV (a 1200 Hz tone) as the agent's microphone; the page
(``support/chromium_agent.html``, served from 127.0.0.1) runs a plain ``RTCPeerConnection`` against
Meta's ICE-lite relay. The virtual user plays 440 Hz. Each test checks both directions: the agent's
tone is what the user's recording holds, and the page's WebAudio analyser hears the user's tone.

Chromium behaviour these tests rely on or document (see the assertions):
- it answers Meta's offer with ``a=setup:active`` (DTLS client), is the controlling ICE agent, and
  negotiates Opus 111 plus ``telephone-event/8000`` on 126, so ``insertDTMF`` reaches Meta as RFC 4733;
- its SDP carries host candidates for every interface; the page hands over only 127.0.0.1/UDP, but
  Chromium still pairs its other IPv4 host addresses with Meta's 127.0.0.1 candidate, and may move
  the nomination to such a pair (a peer-reflexive source address of this same host; the packets still
  go to 127.0.0.1 and never leave the machine);
- with getUserMedia's default processing (noise suppression, AGC) a steady tone is attenuated by
  ~20 dB within a few seconds; with processing off the WAV arrives at its own level;
- a WebAudio analyser on the remote stream reads pure silence unless the stream also plays into a
  media element (the page keeps a muted ``<audio>`` for that);
- Meta's relay answers the browser's ICE checks as soon as the page has applied Meta's offer, so a
  user-initiated call's first DTLS ClientHello can arrive before ``pre_accept`` (timeline:
  ``dtls_before_answer``); Chromium's retransmission completes the handshake;
- a business-initiated call's media connects while the phone rings; Chromium sends at once, and what
  arrives before the user picks up is clipped.
"""

from __future__ import annotations

import time

import numpy as np
import pytest

from support.chromium_agent import ChromiumAgent, ChromiumBrowser, candidates, chromium_available
from wacall.media.audio import dominant_frequency, rms_dbfs, tone_power, write_wav

# scripts/test installs Debian's chromium and PyPI's playwright: a missing browser is a failure, not a skip.
assert chromium_available(), "needs /usr/bin/chromium (scripts/apt-packages) and playwright (test extras)"

ALICE = "447700900001"
AGENT_HZ = 1200.0
USER_HZ = 440.0
AGENT_AMPLITUDE = 12000
SRTP_NAMES = {"AES_CM_128_HMAC_SHA1_80": "SRTP_AES128_CM_HMAC_SHA1_80",      # wacall -> WebRTC stats
              "AEAD_AES_128_GCM": "SRTP_AEAD_AES_128_GCM", "AEAD_AES_256_GCM": "SRTP_AEAD_AES_256_GCM"}
NO_PROCESSING = {"echoCancellation": False, "noiseSuppression": False, "autoGainControl": False}


@pytest.fixture(scope="module")
def agent_wav(tmp_path_factory):
    t = np.arange(48000 * 10) / 48000
    pcm = (np.sin(2 * np.pi * AGENT_HZ * t) * AGENT_AMPLITUDE).astype(np.int16)
    return write_wav(tmp_path_factory.mktemp("chromium") / "agent-1200hz.wav", pcm, 48000)


@pytest.fixture(scope="module")
def chromium(agent_wav):
    browser = ChromiumBrowser(agent_wav).start()
    try:
        yield browser
    finally:
        browser.close()


@pytest.fixture
def agent(wa, chromium):
    wa.reset(media_timeouts=True)
    page = chromium.new_agent()
    try:
        yield page
    finally:
        page.close()


# -- helpers ------------------------------------------------------------------------------------------

def _assert_handed_over_sdp(sdp: str, raw: str) -> None:
    """What the page gives the business: CRLF SDP, only 127.0.0.1/UDP candidates, c= on loopback."""
    assert sdp.endswith("\r\n") and "\n" not in sdp.replace("\r\n", "")
    kept = candidates(sdp)
    assert kept and all(proto == "udp" and addr == "127.0.0.1" for proto, addr, _ in kept), kept
    assert "c=IN IP4 127.0.0.1" in sdp
    assert len(candidates(raw)) >= len(kept)        # Chromium's own SDP may name other interfaces


def _recording(wa, call: dict) -> np.ndarray:
    response = wa.http.get(call["media"]["recording_url"])
    assert response.status_code == 200 and response.content[:4] == b"RIFF"
    return np.frombuffer(response.content[44:], dtype=np.int16)


def _wait_page_hears(agent: ChromiumAgent, hz: float, timeout: float = 5.0) -> np.ndarray:
    """Poll the page's analyser until its last window (~0.68 s) is dominated by ``hz``."""
    deadline = time.monotonic() + timeout
    pcm, rate = agent.heard()
    while time.monotonic() < deadline:
        pcm, rate = agent.heard()
        if pcm.size and rms_dbfs(pcm) > -40 and abs(dominant_frequency(pcm, rate) - hz) < 5:
            assert rate == 48000
            return pcm
        time.sleep(0.1)
    level = rms_dbfs(pcm) if pcm.size else None
    raise AssertionError(f"the page did not hear {hz} Hz: level {level} dBFS, "
                         f"dominant {dominant_frequency(pcm, 48000) if pcm.size else None} Hz, "
                         f"state {agent.state()}, stats {agent.stats()}")


def _assert_agent_tone(pcm: np.ndarray, seconds: float) -> None:
    assert pcm.size >= seconds * 48000, f"the user heard only {pcm.size / 48000:.2f} s"
    assert abs(dominant_frequency(pcm, 48000) - AGENT_HZ) < 5
    assert tone_power(pcm, 48000, AGENT_HZ) > 100 * tone_power(pcm, 48000, USER_HZ)


def _assert_local_remote(call: dict, raw_sdp: str) -> None:
    """Meta's relay latched onto 127.0.0.1 or onto another of Chromium's host addresses (see above)."""
    remote = call["media"]["ice"]["remote"]
    assert call["media"]["ice"]["connected"] and remote
    host = remote.rsplit(":", 1)[0]
    assert host == "127.0.0.1" or host in {addr for _, addr, _ in candidates(raw_sdp)}, (remote, raw_sdp)


def _media_events(call: dict) -> list[str]:
    return [e["event"] for e in call["timeline"] if e["kind"] == "media"]


# -- tests ----------------------------------------------------------------------------------------------

def test_chromium_agent_answers_a_user_initiated_call(wa, agent):
    call_id = wa.user_calls(ALICE).json()["call_id"]
    offer = wa.call(call_id)["meta_sdp"]
    assert "a=ice-lite" in offer and "a=setup:actpass" in offer

    answer = agent.answer(offer)                 # getUserMedia({audio: true}): Chromium's defaults
    raw = agent.raw_local_sdp()
    _assert_handed_over_sdp(answer, raw)
    assert "a=setup:active" in answer
    assert "a=rtpmap:111 opus/48000/2" in answer
    assert "a=rtpmap:126 telephone-event/8000" in answer    # Chromium keeps Meta's telephone-event

    for action in ("pre_accept", "accept"):
        response = wa.calls_action({"call_id": call_id, "action": action,
                                    "session": {"sdp_type": "answer", "sdp": answer}})
        assert response.status_code == 200, response.text
    agent.wait_connected(timeout=5)
    wa.wait_state(call_id, "ACCEPTED", timeout=5)

    time.sleep(3.0)                              # let audio flow both ways
    heard = _wait_page_hears(agent, USER_HZ)
    assert tone_power(heard, 48000, USER_HZ) > 100 * tone_power(heard, 48000, AGENT_HZ)

    call = wa.call(call_id)
    media = call["media"]
    assert media["key_exchange"] == "DTLS"
    assert media["dtls"]["role"] == "server" and media["dtls"]["state"] == "connected"
    assert media["payload_types"] == {"opus": 111, "telephone-event": 126}
    assert media["send_codec"] == "opus"
    received = media["received"]
    assert received["packets"] >= 120, received
    assert received["srtp_auth_failures"] == 0 and received["wrong_payload_types"] == []
    assert received["ssrcs"] == 1 and received["clipped_packets"] == 0
    assert media["sent"]["packets"] >= 120
    _assert_local_remote(call, raw)
    assert {"ice_connected", "dtls_connected", "first_media_from_business",
            "user_media_started"} <= set(_media_events(call))
    _assert_agent_tone(_recording(wa, call), seconds=2.5)

    stats = agent.stats()
    assert stats["transport"]["dtlsState"] == "connected" and stats["transport"]["dtlsRole"] == "client"
    assert stats["transport"]["iceRole"] == "controlling"
    assert stats["transport"]["srtpCipher"] == SRTP_NAMES[media["dtls"]["profile"]]

    # DTMF: RTCDTMFSender -> RFC 4733 on Meta's payload type 126 -> the user's phone detects it
    packets_before = received["packets"]
    assert agent.state()["canInsertDTMF"]
    assert agent.send_dtmf("1#", duration_ms=100, gap_ms=70) == "1#"
    call = wa.wait_for(lambda: len((c := wa.call(call_id))["media"]["digits_received"]) >= 2 and c,
                       timeout=5, what="two digits at the user's phone")
    digits = call["media"]["digits_received"]
    assert [d["digit"] for d in digits] == ["1", "#"], digits
    assert all(80 <= d["duration_ms"] <= 200 for d in digits), digits
    # tonechange fired per digit, then "" once the buffer is empty
    assert wa.wait_for(lambda: (t := agent.tones_played())[-1:] == [""] and t, timeout=2,
                       what="the DTMF sender's final tonechange") == ["1", "#", ""]
    time.sleep(0.3)                              # audio goes on after the events
    after = wa.call(call_id)["media"]["received"]
    assert after["packets"] > packets_before + 20 and after["wrong_payload_types"] == []

    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    ended = wa.wait_state(call_id, "ENDED", timeout=5)
    assert ended["end_status"] == "COMPLETED", ended
    assert not [line for line in agent.console if line.startswith(("error", "pageerror"))], agent.console


def test_chromium_agent_places_a_business_initiated_call(wa, agent):
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 1.0}).status_code == 200
    granted = wa.ctl("POST", f"users/{ALICE}/permission_replies",
                     {"phone_number_id": wa.pnid, "response": "accept", "permanent": True,
                      "via": "business_profile"})
    assert granted.status_code == 200, granted.text

    agent.set_audio_constraints(NO_PROCESSING)   # the WAV as it is: no noise suppression, no AGC
    offer = agent.offer()
    raw = agent.raw_local_sdp()
    _assert_handed_over_sdp(offer, raw)
    assert "a=setup:actpass" in offer and "a=rtpmap:126 telephone-event/8000" in offer

    response = wa.calls_action({"to": ALICE, "action": "connect", "session": {"sdp_type": "offer", "sdp": offer}})
    assert response.status_code == 200, response.text
    call_id = response.json()["calls"][0]["id"]
    call = wa.call(call_id)
    assert call["state"] == "RINGING"
    meta_answer = call["meta_sdp"]
    assert "a=ice-lite" in meta_answer and "a=setup:active" in meta_answer
    assert [c[1] for c in candidates(meta_answer)] == ["127.0.0.1", "::1"]     # IPv4 first, then IPv6

    agent.accept_answer(meta_answer)
    agent.wait_connected(timeout=5)              # media connects while the user's phone rings
    wa.wait_state(call_id, "ACCEPTED", timeout=5)
    time.sleep(3.0)

    heard = _wait_page_hears(agent, USER_HZ)
    assert tone_power(heard, 48000, USER_HZ) > 100 * tone_power(heard, 48000, AGENT_HZ)

    call = wa.call(call_id)
    media = call["media"]
    assert media["key_exchange"] == "DTLS"
    assert media["dtls"]["role"] == "client" and media["dtls"]["state"] == "connected"
    assert media["payload_types"] == {"opus": 111, "telephone-event": 126}
    received = media["received"]
    assert received["packets"] >= 120 and received["srtp_auth_failures"] == 0, received
    # Chromium sends as soon as DTLS is up; what arrived before Alice picked up was lost
    assert received["clipped_packets"] > 0 and received["first_packet_ms_after_accept"] < 0
    events = _media_events(call)
    assert "media_before_answer" in events and "user_media_started" in events
    assert events.index("media_before_answer") < events.index("user_media_started")
    _assert_local_remote(call, raw)

    recording = _recording(wa, call)
    _assert_agent_tone(recording, seconds=2.5)
    wav_level = 20 * np.log10(AGENT_AMPLITUDE / np.sqrt(2) / 32768)
    assert abs(rms_dbfs(recording[48000:]) - wav_level) < 3, (rms_dbfs(recording[48000:]), wav_level)

    stats = agent.stats()
    assert stats["transport"]["dtlsRole"] == "server" and stats["transport"]["iceRole"] == "controlling"

    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    assert wa.wait_state(call_id, "ENDED", timeout=5)["end_status"] == "COMPLETED"
