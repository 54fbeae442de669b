"""SDES-keyed SRTP (RFC 4568): a business written directly on pylibsrtp and PyAV over plain UDP
(no ICE, no DTLS) exchanges audio with the virtual user through wacall's relay."""

from __future__ import annotations

import base64
import fractions
import os
import re
import socket
import struct
import time

import av
import numpy as np
import pylibsrtp
import pytest

from wacall.media.audio import dominant_frequency, tone_power

ALICE = "447700900001"
SUITE = "AES_CM_128_HMAC_SHA1_80"


G711_PT = {"PCMU": 0, "PCMA": 8}


def _audioop():
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    return audioop


class SdesBusiness:
    """A business's media stack: one UDP socket, Opus via PyAV (or, with ``g711="PCMU"``/``"PCMA"``,
    only that G.711 codec via the stdlib's audioop: a legacy endpoint without Opus), SRTP via pylibsrtp."""

    def __init__(self, tone_hz: float = 1000.0, *, payload_type: int = 111, wrong_key: bool = False,
                 extra_ssrc: bool = False, g711: str | None = None) -> None:
        self.g711 = g711
        if g711 is not None:
            payload_type = G711_PT[g711]
        self.payload_type, self.wrong_key, self.extra_ssrc = payload_type, wrong_key, extra_ssrc
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setblocking(False)
        self.port = self.sock.getsockname()[1]
        self.key = os.urandom(30)
        self.ssrc = int.from_bytes(os.urandom(4), "big")
        self.tone_hz = tone_hz
        self.encoder = av.CodecContext.create("libopus", "w")
        self.encoder.sample_rate, self.encoder.layout, self.encoder.format = 48000, "mono", "s16"
        self.decoder = av.CodecContext.create("libopus", "r")
        self.decoder.sample_rate, self.decoder.layout = 48000, "mono"
        self.received_pcm: list[np.ndarray] = []
        self.rx_session: pylibsrtp.Session | None = None
        self.tx_session: pylibsrtp.Session | None = None
        self.remote: tuple[str, int] | None = None
        self.sent = 0

    def _keys_from(self, meta_sdp: str) -> re.Match:
        crypto = re.search(r"a=crypto:(\d+) (\S+) inline:([A-Za-z0-9+/=]+)", meta_sdp)
        assert crypto and crypto.group(2) == SUITE, meta_sdp
        port = int(re.search(r"m=audio (\d+) RTP/SAVP", meta_sdp).group(1))
        host = re.search(r"c=IN IP4 (\S+)", meta_sdp).group(1)
        self.remote = (host, port)
        rx = pylibsrtp.Policy(key=base64.b64decode(crypto.group(3)), ssrc_type=pylibsrtp.Policy.SSRC_ANY_INBOUND,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        tx = pylibsrtp.Policy(key=self.key, ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                              srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80)
        self.rx_session, self.tx_session = pylibsrtp.Session(rx), pylibsrtp.Session(tx)
        if self.wrong_key:                      # advertise one key, encrypt with another
            self.tx_session = pylibsrtp.Session(pylibsrtp.Policy(
                key=os.urandom(30), ssrc_type=pylibsrtp.Policy.SSRC_ANY_OUTBOUND,
                srtp_profile=pylibsrtp.Policy.SRTP_PROFILE_AES128_CM_SHA1_80))
        return crypto

    def _sdp(self, tag: str, codecs: list[str]) -> str:
        pts = [G711_PT[c] for c in codecs] if self.g711 else [111]
        lines = ["v=0", "o=- 1 1 IN IP4 127.0.0.1", "s=-", "c=IN IP4 127.0.0.1", "t=0 0",
                 f"m=audio {self.port} RTP/SAVP {' '.join(map(str, pts))} 126",
                 f"a=crypto:{tag} {SUITE} inline:" + base64.b64encode(self.key).decode()]
        if self.g711:
            lines += [f"a=rtpmap:{G711_PT[c]} {c}/8000" for c in codecs]
        else:
            lines += ["a=rtpmap:111 opus/48000/2", "a=fmtp:111 useinbandfec=1"]
        lines += ["a=rtpmap:126 telephone-event/8000", "a=ptime:20", "a=sendrecv", ""]
        return "\r\n".join(lines)

    def answer(self, meta_offer: str) -> str:
        """The answer to Meta's offer (a user-initiated call)."""
        crypto = self._keys_from(meta_offer)
        return self._sdp(crypto.group(1), [self.g711] if self.g711 else [])

    def offer(self, codecs: list[str] | None = None) -> str:
        """An offer for a business-initiated call (G.711 mode: ``codecs``, default both, in that order)."""
        return self._sdp("1", codecs or ["PCMU", "PCMA"])

    def answered(self, meta_answer: str) -> None:
        """Meta's answer to :meth:`offer`: its key, its address, and the G.711 codec it chose."""
        self._keys_from(meta_answer)
        if self.g711:
            m_line = re.search(r"m=audio \d+ RTP/SAVP ([\d ]+)", meta_answer).group(1).split()
            self.g711 = next(c for c, pt in G711_PT.items() if str(pt) == m_line[0])
            self.payload_type = G711_PT[self.g711]

    def _opus_frame(self, n: int) -> bytes:
        t = (np.arange(960) + n * 960) / 48000
        pcm = (np.sin(2 * np.pi * self.tone_hz * t) * 12000).astype(np.int16).reshape(1, -1)
        frame = av.AudioFrame.from_ndarray(pcm, format="s16", layout="mono")
        frame.sample_rate, frame.pts, frame.time_base = 48000, n * 960, fractions.Fraction(1, 48000)
        packets = self.encoder.encode(frame)
        return bytes(packets[0]) if packets else b"\xf8\xff\xfe"

    def _g711_frame(self, n: int) -> bytes:
        t = (np.arange(160) + n * 160) / 8000
        pcm = (np.sin(2 * np.pi * self.tone_hz * t) * 10000).astype(np.int16).tobytes()
        audioop = _audioop()
        return audioop.lin2ulaw(pcm, 2) if self.g711 == "PCMU" else audioop.lin2alaw(pcm, 2)

    @property
    def rate(self) -> int:
        """The sample rate of :attr:`received_pcm`."""
        return 8000 if self.g711 else 48000

    def send_one(self) -> None:
        ssrc = self.ssrc ^ (self.sent & 1) if self.extra_ssrc else self.ssrc
        step = 160 if self.g711 else 960
        header = struct.pack("!BBHII", 0x80, self.payload_type, self.sent & 0xFFFF, (self.sent * step) & 0xFFFFFFFF,
                             ssrc)
        frame = self._g711_frame(self.sent) if self.g711 else self._opus_frame(self.sent)
        self.sock.sendto(self.tx_session.protect(header + frame), self.remote)
        self.sent += 1

    def run(self, seconds: float) -> None:
        start = time.monotonic()
        while time.monotonic() - start < seconds:
            self.send_one()
            deadline = start + self.sent * 0.02
            while time.monotonic() < deadline:
                try:
                    data, _ = self.sock.recvfrom(2048)
                except BlockingIOError:
                    time.sleep(0.002)
                    continue
                if 192 <= data[1] <= 223:            # SRTCP (RFC 5761)
                    continue
                rtp = self.rx_session.unprotect(data)
                payload = rtp[12 + 4 * (rtp[0] & 0x0F):]
                if self.g711 and rtp[1] & 0x7F == self.payload_type:
                    audioop = _audioop()
                    pcm = audioop.ulaw2lin(payload, 2) if self.g711 == "PCMU" else audioop.alaw2lin(payload, 2)
                    self.received_pcm.append(np.frombuffer(pcm, dtype=np.int16))
                elif not self.g711 and rtp[1] & 0x7F == 111:
                    for frame in self.decoder.decode(av.Packet(payload)):
                        self.received_pcm.append(frame.to_ndarray().reshape(-1))

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def wa(media_server):
    """Every SDES test runs with media in the server process and in worker processes."""
    return media_server


@pytest.fixture
def sdes(wa):
    wa.reset(media_timeouts=True)
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"srtp_key_exchange_protocol": "SDES"}}).status_code == 200
    business = SdesBusiness()
    yield business
    business.close()


def test_sdes_user_initiated_call_audio_both_ways(wa, sdes):
    call_id = wa.user_calls(ALICE).json()["call_id"]
    offer = wa.call(call_id)["meta_sdp"]
    assert "RTP/SAVP" in offer and "a=crypto:" in offer and "a=ice-ufrag" not in offer and "fingerprint" not in offer
    answer = sdes.answer(offer)
    for action in ("pre_accept", "accept"):
        response = wa.calls_action({"call_id": call_id, "action": action,
                                    "session": {"sdp_type": "answer", "sdp": answer}})
        assert response.status_code == 200, response.text
    sdes.run(3.0)
    media = wa.call(call_id)["media"]
    assert media["key_exchange"] == "SDES"
    assert media["received"]["packets"] >= 100 and media["received"]["srtp_auth_failures"] == 0
    heard = np.concatenate(sdes.received_pcm)
    assert len(heard) > 48000, "the business received less than a second of the user's audio"
    assert abs(dominant_frequency(heard, 48000) - 440) < 5
    wav = wa.http.get(media["recording_url"]).content
    pcm = np.frombuffer(wav[44:], dtype=np.int16)
    assert abs(dominant_frequency(pcm, 48000) - 1000) < 5
    assert tone_power(pcm, 48000, 1000) > 100 * tone_power(pcm, 48000, 440)
    assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200


def _media_events(call: dict) -> dict[str, dict]:
    return {e["event"]: e for e in call["timeline"] if e["kind"] == "media"}


def _connect(wa, business: SdesBusiness) -> str:
    call_id = wa.user_calls(ALICE).json()["call_id"]
    answer = business.answer(wa.call(call_id)["meta_sdp"])
    for action in ("pre_accept", "accept"):
        assert wa.calls_action({"call_id": call_id, "action": action,
                                "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200
    return call_id


@pytest.mark.parametrize("knobs, event, check", [
    ({"wrong_key": True}, "srtp_auth_failure", lambda m: m["received"]["srtp_auth_failures"] > 0),
    ({"payload_type": 100}, "wrong_payload_type", lambda m: m["received"]["wrong_payload_types"] == [100]),
    ({"extra_ssrc": True}, "multiple_ssrcs", lambda m: m["received"]["ssrcs"] == 2),
])
def test_media_faults_land_on_the_timeline(wa, sdes, knobs, event, check):
    for name, value in knobs.items():
        setattr(sdes, name, value)
    call_id = _connect(wa, sdes)
    sdes.run(0.5)
    call = wa.wait_for(lambda: (c := wa.call(call_id)) and event in _media_events(c) and c, what=event)
    assert check(call["media"]), call["media"]


def test_no_business_media_ends_the_call_after_20_seconds(wa, sdes, receiver):
    call_id = _connect(wa, sdes)                       # accepted, but the business never sends media
    wa.advance(19)
    assert wa.call(call_id)["state"] == "ACCEPTED"
    wa.advance(2)
    call = wa.wait_state(call_id, "ENDED")
    assert call["end_status"] == "FAILED" and call["ended_by"] == "user"
    terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    assert terminate["status"] == "FAILED"
    errors = receiver.values("calls")[-1]["errors"]
    assert errors[0]["code"] == 138021 and "20 s" in errors[0]["error_data"]["details"]


def test_silence_mid_call_ends_the_call_after_30_seconds(wa, sdes, receiver):
    call_id = _connect(wa, sdes)
    sdes.run(0.5)                                      # media flows, then stops
    wa.advance(25)
    assert wa.call(call_id)["state"] == "ACCEPTED"
    wa.advance(6)
    call = wa.wait_state(call_id, "ENDED")
    assert call["errors"][0]["code"] == 138021 and "30 s" in call["errors"][0]["error_data"]["details"]


def test_media_before_the_connection_is_up_is_clipped(wa, sdes):
    call_id = wa.user_calls(ALICE).json()["call_id"]
    answer = sdes.answer(wa.call(call_id)["meta_sdp"])
    for _ in range(25):                                # half a second before wacall has the business's key
        sdes.send_one()
        time.sleep(0.02)
    for action in ("pre_accept", "accept"):
        assert wa.calls_action({"call_id": call_id, "action": action,
                                "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200
    sdes.run(1.0)
    call = wa.call(call_id)
    assert call["media"]["received"]["clipped_packets"] == 25
    assert "media_before_connection" in _media_events(call)
    # the recording starts with the first packet that could be heard, not with the first one sent
    assert call["media"]["received"]["packets"] == sdes.sent - 25


def test_user_audio_from_a_file_and_bad_sources_are_refused(wa, sdes, tmp_path):
    from wacall.media.audio import write_wav
    path = tmp_path / "voice.wav"
    t = np.arange(48000 * 2) / 48000
    write_wav(path, (np.sin(2 * np.pi * 700 * t) * 10000).astype(np.int16), 48000)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": f"file:{path}"}).status_code == 200
    refused = wa.ctl("PATCH", f"users/{ALICE}", {"audio": f"file:{tmp_path}/missing.wav"})
    assert refused.status_code == 400 and refused.json()["error"]["reason"] == "bad_audio"
    call_id = _connect(wa, sdes)
    sdes.run(2.0)
    heard = np.concatenate(sdes.received_pcm)
    assert abs(dominant_frequency(heard, 48000) - 700) < 5
    assert wa.call(call_id)["media"]["sent"]["audio"] == f"file:{path}"


def test_user_speaks_with_text_to_speech(wa, sdes):
    """``tts:TEXT`` renders speech with Debian's espeak-ng: the business hears a voice (energy spread over
    the speech band, no single tone) where the same call with silence is silent."""
    from wacall.media.audio import rms_dbfs
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tts:press one for sales"}).status_code == 200
    call_id = _connect(wa, sdes)
    sdes.run(2.5)
    heard = np.concatenate(sdes.received_pcm)[48000 // 2:]
    assert rms_dbfs(heard) > -40, "the business should hear the user's synthetic voice"
    spectrum = np.abs(np.fft.rfft(heard.astype(np.float64))) ** 2     # power
    freqs = np.fft.rfftfreq(len(heard), 1 / 48000)
    speech = spectrum[(freqs > 100) & (freqs < 4000)].sum()
    # (0.7: tts: speaks with espeak-ng's low-pitched Klatt voice, ~12% of its energy at its ~90 Hz fundamental)
    assert speech > 0.7 * spectrum.sum(), "speech energy lies in the voice band"
    peak = spectrum.argmax()
    assert spectrum[max(0, peak - 20):peak + 20].sum() < 0.5 * speech, "a voice, not a tone"
    assert wa.call(call_id)["media"]["sent"]["audio"] == "tts:press one for sales"


def test_g711_business_is_transcoded_to_and_from_the_users_opus(wa, sdes):
    """With audio.additional_codecs enabled, a business that prefers PCMU gets PCMU (encoded from the
    user's Opus source) and its PCMU is heard by the user. The business side uses the stdlib's G.711."""
    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import audioop
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"audio": {"additional_codecs": ["PCMU"]}}}).status_code == 200
    call_id = wa.user_calls(ALICE).json()["call_id"]
    offer = wa.call(call_id)["meta_sdp"]
    assert "a=rtpmap:0 PCMU/8000" in offer
    answer = sdes.answer(offer).replace("RTP/SAVP 111 126", "RTP/SAVP 0 111 126").replace(
        "a=rtpmap:111", "a=rtpmap:0 PCMU/8000\r\na=rtpmap:111")
    for action in ("pre_accept", "accept"):
        assert wa.calls_action({"call_id": call_id, "action": action,
                                "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200
    heard: list[bytes] = []
    start, sent = time.monotonic(), 0
    while time.monotonic() - start < 2.5:
        t = (np.arange(160) + sent * 160) / 8000
        pcm = (np.sin(2 * np.pi * 1000 * t) * 10000).astype(np.int16).tobytes()
        header = struct.pack("!BBHII", 0x80, 0, sent & 0xFFFF, sent * 160, sdes.ssrc)
        sdes.sock.sendto(sdes.tx_session.protect(header + audioop.lin2ulaw(pcm, 2)), sdes.remote)
        sent += 1
        while time.monotonic() < start + sent * 0.02:
            try:
                data, _ = sdes.sock.recvfrom(2048)
            except BlockingIOError:
                time.sleep(0.002)
                continue
            if 192 <= data[1] <= 223:
                continue
            rtp = sdes.rx_session.unprotect(data)
            if rtp[1] & 0x7F == 0:
                heard.append(audioop.ulaw2lin(rtp[12:], 2))
    media = wa.call(call_id)["media"]
    assert media["send_codec"] == "pcmu" and media["payload_types"]["pcmu"] == 0
    business_heard = np.frombuffer(b"".join(heard), dtype=np.int16)
    assert len(business_heard) > 8000
    assert abs(dominant_frequency(business_heard, 8000) - 440) < 10
    wav = wa.http.get(media["recording_url"]).content
    user_heard = np.frombuffer(wav[44:], dtype=np.int16)
    assert abs(dominant_frequency(user_heard, 48000) - 1000) < 5


@pytest.mark.parametrize("codec", ["PCMU", "PCMA"])
def test_g711_only_business_answers_a_user_call(wa, codec):
    """A business without Opus (a legacy PBX answering with G.711 only) works once the number enables
    that codec: the user hears its tone and it hears the user's, transcoded by Meta's relay."""
    business = SdesBusiness(1000.0, g711=codec)
    try:
        assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
            "srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMU", "PCMA"]}}}).status_code == 200
        call_id = wa.user_calls(ALICE).json()["call_id"]
        answer = business.answer(wa.call(call_id)["meta_sdp"])
        assert "opus" not in answer
        for action in ("pre_accept", "accept"):
            response = wa.calls_action({"call_id": call_id, "action": action,
                                        "session": {"sdp_type": "answer", "sdp": answer}})
            assert response.status_code == 200, response.text
        business.run(2.5)
        _assert_g711_audio_both_ways(wa, call_id, business)
        assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    finally:
        business.close()


def test_g711_only_business_calls_a_user(wa, receiver):
    """Business-initiated: a G.711-only offer gets a G.711-only answer (no Opus line) from Meta."""
    business = SdesBusiness(1000.0, g711="PCMU")
    try:
        assert wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
            "srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMA", "PCMU"]}}}).status_code == 200
        assert wa.ctl("POST", f"users/{ALICE}/permission_replies",
                      {"phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
        assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
        response = wa.calls_action({"to": ALICE, "action": "connect",
                                    "session": {"sdp_type": "offer", "sdp": business.offer(["PCMU", "PCMA"])}})
        assert response.status_code == 200, response.text
        call_id = response.json()["calls"][0]["id"]
        connect = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])[0]
        meta_answer = connect["session"]["sdp"]
        assert "RTP/SAVP 0 8 126" in meta_answer and "opus" not in meta_answer, meta_answer
        business.answered(meta_answer)
        wa.wait_state(call_id, "ACCEPTED")
        business.run(2.5)
        _assert_g711_audio_both_ways(wa, call_id, business)
        assert wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    finally:
        business.close()


def _assert_g711_audio_both_ways(wa, call_id: str, business: SdesBusiness) -> None:
    media = wa.call(call_id)["media"]
    assert media["send_codec"] == business.g711.lower(), media
    heard = np.concatenate(business.received_pcm)
    assert len(heard) > business.rate, "the business received less than a second of the user's audio"
    assert abs(dominant_frequency(heard, business.rate) - 440) < 10, "the business hears the user's 440 Hz"
    wav = wa.http.get(media["recording_url"]).content
    user_heard = np.frombuffer(wav[44:], dtype=np.int16)
    assert abs(dominant_frequency(user_heard, 48000) - 1000) < 5, "the user hears the business's 1000 Hz"
    assert tone_power(user_heard, 48000, 1000) > 100 * tone_power(user_heard, 48000, 440)


def test_g711_only_business_is_refused_when_the_number_does_not_enable_g711(wa):
    """Without audio.additional_codecs a G.711-only SDP gets Meta's SDP validation error, both ways."""
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"srtp_key_exchange_protocol": "SDES"}}).status_code == 200
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies",
                  {"phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    business = SdesBusiness(g711="PCMU")
    try:
        connect = wa.calls_action({"to": ALICE, "action": "connect",
                                   "session": {"sdp_type": "offer", "sdp": business.offer()}})
        call_id = wa.user_calls(ALICE).json()["call_id"]
        offer = wa.call(call_id)["meta_sdp"]
        assert "PCMU" not in offer, "Meta offers G.711 only when the number enables it"
        accept = wa.calls_action({"call_id": call_id, "action": "accept",
                                  "session": {"sdp_type": "answer", "sdp": business.answer(offer)}})
    finally:
        business.close()
    for response in (connect, accept):
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == 100
        assert error["error_data"]["details"].startswith("SDP Validation error: SDP line 6 'm=audio ")
        assert "opus/48000/2) is required on the audio m-line; without Opus, PCMU" in error["error_data"]["details"]
