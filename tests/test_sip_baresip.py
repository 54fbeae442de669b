"""baresip (Debian) as the business's SIP endpoint, over TLS with SRTP-SDES and Opus, against the
gateway: a virtual user's call rings it and both sides hear each other, DTMF from the user reaches
it; and it places a business-initiated call through wa.meta.vc that the virtual user answers."""

from __future__ import annotations

import asyncio
import io
import re
import wave
from pathlib import Path

import numpy as np
import pytest

from support.harness import PKI_DIR
from support.sip_tools import Baresip, free_port
from wacall.certs import LocalCA
from wacall.media.audio import dominant_frequency, tone_power

ALICE = "447700900001"
HOST = "pbx.business.example"


async def call_api(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


def _wav(data: bytes | Path) -> tuple[np.ndarray, int]:
    with wave.open(io.BytesIO(data) if isinstance(data, bytes) else str(data)) as wav:
        pcm = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
        if wav.getnchannels() == 2:
            pcm = pcm[::2]
        return pcm, wav.getframerate()


def _business_pem() -> Path:
    cert, key = LocalCA.load_or_create(PKI_DIR).issue([HOST], out="pbx-business")
    pem = Path(PKI_DIR) / "pbx-business.combined.pem"
    pem.write_bytes(Path(cert).read_bytes() + Path(key).read_bytes())
    return pem


def _enable_sip(wa, port: int, *, additional_codecs: list[str] | None = None) -> str:
    calling = {"status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
               "sip": {"status": "ENABLED", "servers": [{"hostname": HOST, "port": port}]}}
    if additional_codecs is not None:
        calling["audio"] = {"additional_codecs": additional_codecs}
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": calling})
    assert response.status_code == 200, response.text
    settings = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    return settings["calling"]["sip"]["servers"][0]["sip_user_password"]


def _heard_by_business(business: Baresip, rate: int = 48000) -> np.ndarray:
    [received] = business.recordings()["dec"]
    pcm, found = _wav(received)
    assert found == rate
    return pcm


@pytest.fixture
def audio_wa(wa):
    wa.reset()
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440", "answer_after": 0.3}).status_code == 200
    return wa


async def test_user_calls_a_baresip_business_audio_both_ways_and_dtmf(audio_wa, tmp_path):
    wa = audio_wa
    biz = wa.info["display_phone_number"]
    business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=_business_pem(),
                       tone_hz=1000, workdir=tmp_path / "business")
    async with business:
        _enable_sip(wa, business.tls_port)
        call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
        incoming = await business.wait_event("CALL_ESTABLISHED", 15)
        assert incoming.raw["direction"] == "incoming"
        assert "AES_CM_128_HMAC_SHA1_80" in (await business.wait_event("CALL_MENC", 5)).param
        await call_api(wa.wait_state, call_id, "ACCEPTED")
        await asyncio.sleep(2.5)
        response = await call_api(wa.ctl, "POST", f"calls/{call_id}/dtmf", {"digits": "12#"})
        assert response.status_code == 200, response.text
        for _ in range(50):
            if len(business.received_digits()) >= 3:
                break
            await asyncio.sleep(0.1)
        assert business.received_digits() == "12#"
        call = await call_api(wa.call, call_id)
        assert call["media"]["key_exchange"] == "SDES" and call["media"]["received"]["packets"] > 50
        assert call["media"]["received"]["loss"] < 0.01
        heard, _ = _wav(wa.http.get(call["media"]["recording_url"]).content)
        assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears baresip's 1000 Hz"
        assert await call_api(wa.ctl, "POST", f"calls/{call_id}/hangup")
        await business.wait_event("CALL_CLOSED", 10)
        await asyncio.sleep(0.3)
        at_business = _heard_by_business(business)
        assert abs(dominant_frequency(at_business[48000:], 48000) - 440) < 5, "baresip hears the user's 440 Hz"
        assert tone_power(at_business[48000:], 48000, 440) > 10 * tone_power(at_business[48000:], 48000, 1000)
    lines = [e["line"] for e in (await call_api(wa.call, call_id))["timeline"] if e["kind"] == "sip_message"]
    assert lines[0].startswith(f"INVITE sip:+{biz}@{HOST}") and any(line.startswith("BYE ") for line in lines)


async def test_baresip_business_calls_a_user_through_wa_meta_vc(audio_wa, tmp_path):
    wa = audio_wa
    biz = wa.info["display_phone_number"]
    password = _enable_sip(wa, free_port())
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=_business_pem(),
                       auth_user=biz, auth_pass=password, tone_hz=1000,
                       tls_hosts={"wa.meta.vc": wa.info["sip"]["port"]}, workdir=tmp_path / "business")
    async with business:
        await business.dial(f"sip:+{ALICE}@wa.meta.vc")
        established = await business.wait_event("CALL_ESTABLISHED", 15)
        assert established.raw["direction"] == "outgoing"
        calls = (await call_api(wa.ctl, "GET", "calls")).json()["data"]
        [call_id] = [c["call_id"] for c in calls]
        await asyncio.sleep(2.5)
        call = await call_api(wa.call, call_id)
        assert call["state"] == "ACCEPTED" and call["direction"] == "BUSINESS_INITIATED"
        assert call["signalling"] == "sip" and call["media"]["key_exchange"] == "SDES"
        heard, _ = _wav(wa.http.get(call["media"]["recording_url"]).content)
        assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears the business's 1000 Hz"
        await business.hangup()
        await business.wait_event("CALL_CLOSED", 10)
        await asyncio.sleep(0.3)
        at_business = _heard_by_business(business)
        assert abs(dominant_frequency(at_business[24000:], 48000) - 440) < 5, "the business hears the user"
    call = await call_api(wa.wait_state, call_id, "ENDED")
    assert call["ended_by"] == "business" and call["duration"] >= 2
    trace = Path(business.stdout_log).read_text(errors="replace")
    assert "SIP/2.0 407 Proxy Authentication Required" in trace


G711_ONLY = ("PCMU/8000", "PCMA/8000")


def _sip_lines(call: dict) -> list[str]:
    return [e["line"] for e in call["timeline"] if e["kind"] == "sip_message"]


def _sdp_of(call: dict, first_line: str, cseq: str = "INVITE") -> str:
    """The body of the first traced SIP message whose first line starts with ``first_line``."""
    for e in call["timeline"]:
        if e["kind"] == "sip_message" and e["line"].startswith(first_line) and f" {cseq}\r\n" in e["raw"]:
            return e["raw"].split("\r\n\r\n", 1)[1]
    raise AssertionError(f"no {first_line} traced: {_sip_lines(call)}")


async def _assert_g711_audio_both_ways(wa, business: Baresip, call_id: str) -> None:
    call = await call_api(wa.call, call_id)
    assert call["media"]["send_codec"] in ("pcmu", "pcma"), call["media"]
    heard, _ = _wav(wa.http.get(call["media"]["recording_url"]).content)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears baresip's 1000 Hz (G.711)"
    return call


async def test_user_calls_a_g711_only_baresip_business(audio_wa, tmp_path):
    """baresip with only the g711 module (no Opus) answers a user's call once the number enables
    PCMU/PCMA: Meta's INVITE offers Opus, PCMU and PCMA; baresip answers G.711; both sides hear
    each other through the relay's transcoding."""
    wa = audio_wa
    business = Baresip(user=f"+{wa.info['display_phone_number']}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]),
                       cert=_business_pem(), tone_hz=1000, audio_codecs=G711_ONLY, workdir=tmp_path / "business")
    async with business:
        _enable_sip(wa, business.tls_port, additional_codecs=["PCMU", "PCMA"])
        call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
        await business.wait_event("CALL_ESTABLISHED", 15)
        await call_api(wa.wait_state, call_id, "ACCEPTED")
        await asyncio.sleep(2.5)
        call = await _assert_g711_audio_both_ways(wa, business, call_id)
        answer = _sdp_of(call, "SIP/2.0 200 ")
        assert "opus" not in answer.lower() and re.search(r"a=rtpmap:\d+ PCM[UA]/8000", answer), answer
        assert await call_api(wa.ctl, "POST", f"calls/{call_id}/hangup")
        await business.wait_event("CALL_CLOSED", 10)
        await asyncio.sleep(0.3)
        at_business = _heard_by_business(business, 8000)
        assert abs(dominant_frequency(at_business[8000:], 8000) - 440) < 5, "baresip hears the user's 440 Hz"


async def test_g711_only_baresip_business_calls_a_user(audio_wa, tmp_path):
    """Business-initiated through wa.meta.vc: baresip offers only PCMU/PCMA, Meta answers G.711 only."""
    wa = audio_wa
    biz = wa.info["display_phone_number"]
    password = _enable_sip(wa, free_port(), additional_codecs=["PCMU", "PCMA"])
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=_business_pem(),
                       auth_user=biz, auth_pass=password, tone_hz=1000, audio_codecs=G711_ONLY,
                       tls_hosts={"wa.meta.vc": wa.info["sip"]["port"]}, workdir=tmp_path / "business")
    async with business:
        await business.dial(f"sip:+{ALICE}@wa.meta.vc")
        await business.wait_event("CALL_ESTABLISHED", 15)
        [call_id] = [c["call_id"] for c in (await call_api(wa.ctl, "GET", "calls")).json()["data"]]
        await asyncio.sleep(2.5)
        call = await _assert_g711_audio_both_ways(wa, business, call_id)
        meta_answer = call["meta_sdp"]
        assert "opus" not in meta_answer and re.search(r"m=audio \d+ RTP/SAVP 0 8 \d+", meta_answer), meta_answer
        await business.hangup()
        await business.wait_event("CALL_CLOSED", 10)
        await asyncio.sleep(0.3)
        at_business = _heard_by_business(business, 8000)
        assert abs(dominant_frequency(at_business[4000:], 8000) - 440) < 5, "the business hears the user"
    call = await call_api(wa.wait_state, call_id, "ENDED")
    assert call["ended_by"] == "business"


async def test_g711_only_baresip_is_refused_without_additional_codecs(audio_wa, tmp_path):
    """The number does not enable G.711: baresip refuses Meta's Opus-only offer with 488 (and the
    timeline's hint says what is wrong for an SDES number), and Meta refuses baresip's G.711-only
    INVITE with its SDP validation error."""
    wa = audio_wa
    biz = wa.info["display_phone_number"]
    business = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=_business_pem(),
                       tone_hz=1000, audio_codecs=G711_ONLY, workdir=tmp_path / "business")
    async with business:
        password = _enable_sip(wa, business.tls_port)
        call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
        call = await call_api(wa.wait_state, call_id, "ENDED", 15)
        assert any(line.startswith("SIP/2.0 488") for line in _sip_lines(call)), _sip_lines(call)
        assert call["ended_by"] == "business"
        [hint] = [e["hint"] for e in call["timeline"] if e.get("event") == "not_acceptable_here"]
        assert "switch" not in hint and "already uses SDES" in hint and "additional_codecs (PCMU, PCMA)" in hint
    assert wa.ctl("POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    _enable_sip(wa, free_port())
    caller = Baresip(user=f"+{biz}", domain=HOST, ca=Path(wa.info["sip"]["ca_file"]), cert=_business_pem(),
                     auth_user=biz, auth_pass=password, audio_codecs=G711_ONLY,
                     tls_hosts={"wa.meta.vc": wa.info["sip"]["port"]}, workdir=tmp_path / "caller")
    async with caller:
        await caller.dial(f"sip:+{ALICE}@wa.meta.vc")
        closed = await caller.wait_event("CALL_CLOSED", 15)
    trace = Path(caller.stdout_log).read_text(errors="replace")
    refusal = re.search(r"SIP/2.0 403 (SDP Validation error[^\r\n]*)", trace)
    assert refusal and "without Opus, PCMU/PCMA must be enabled in settings calling.audio.additional_codecs" in \
        refusal.group(1), closed
