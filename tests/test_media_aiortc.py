"""Real WebRTC media between wacall's relay and a business written with aiortc: ICE-lite, DTLS-SRTP,
Opus both ways, and RFC 4733 digits both ways, for user- and business-initiated calls."""

from __future__ import annotations

import asyncio
import io
import wave

import numpy as np
import pytest

from support.harness import take_user_call
from wacall.media.audio import dominant_frequency, tone_power
from wacall.testing.peer import AiortcBusiness

ALICE = "447700900001"


async def call_api(fn, *args, **kwargs):
    """The harness's HTTP client is synchronous; keep the event loop (and aiortc) running meanwhile."""
    return await asyncio.to_thread(fn, *args, **kwargs)


def recording(wa, call: dict) -> np.ndarray:
    data = wa.http.get(call["media"]["recording_url"]).content
    with wave.open(io.BytesIO(data)) as wav:
        assert wav.getframerate() == 48000 and wav.getnchannels() == 1
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


async def wait_media(wa, call_id: str, predicate, timeout: float = 10.0) -> dict:
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        call = await call_api(wa.call, call_id)
        if predicate(call):
            return call
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"media condition not reached: {call['media']}")
        await asyncio.sleep(0.1)


@pytest.fixture
def media_wa(media_server):
    wa = media_server
    wa.reset(media_timeouts=True)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440", "answer_after": 1}).status_code == 200
    return wa


async def test_user_initiated_call_with_aiortc_business(media_wa):
    wa = media_wa
    call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
    async with AiortcBusiness(tone_hz=1000) as business:
        await take_user_call(wa, business, call_id)
        assert business.ice_role == "controlling" and business.dtls_role == "client"
        await business.wait_received(2.0, timeout=10)
        assert abs(business.dominant_frequency() - 440) < 5, "the business should hear the user's 440 Hz"
        assert business.tone_power(440) > 0.8

        # the user presses keys: RFC 4733 events reach the business
        response = await call_api(wa.ctl, "POST", f"calls/{call_id}/dtmf", {"digits": "12#"})
        assert response.status_code == 200, response.text
        assert await business.wait_digits(3, timeout=5) == ["1", "2", "#"]
        # the business presses keys: wacall detects them and puts them on the timeline
        await business.send_dtmf("9*")
        call = await wait_media(wa, call_id, lambda c: len(c["media"]["digits_received"]) >= 2)
        assert [d["digit"] for d in call["media"]["digits_received"]] == ["9", "*"]
        assert any(e.get("event") == "dtmf_from_business" for e in call["timeline"])

        call = await wait_media(wa, call_id, lambda c: c["media"]["received"]["packets"] >= 100)
        media = call["media"]
        assert media["dtls"]["state"] == "connected" and media["dtls"]["role"] == "server"
        assert media["received"]["loss"] < 0.01 and media["received"]["srtp_auth_failures"] == 0
        assert media["received"]["ssrcs"] == 1
        heard = recording(wa, call)
        assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user should hear the business's 1000 Hz"
        assert tone_power(heard, 48000, 1000) > 100 * tone_power(heard, 48000, 440)
        assert (await call_api(wa.calls_action, {"call_id": call_id, "action": "terminate"})).status_code == 200


async def test_business_initiated_call_with_aiortc_business(media_wa):
    wa = media_wa
    granted = await call_api(wa.ctl, "POST", f"users/{ALICE}/permission_replies", {
        "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"})
    assert granted.status_code == 200
    async with AiortcBusiness(tone_hz=1000) as business:
        offer = await business.offer()
        response = await call_api(wa.calls_action, {"to": ALICE, "action": "connect",
                                                    "session": {"sdp_type": "offer", "sdp": offer}})
        assert response.status_code == 200, response.text
        call_id = response.json()["calls"][0]["id"]
        call = await call_api(wa.call, call_id)
        assert "a=ice-lite" in call["meta_sdp"] and "a=setup:active" in call["meta_sdp"]
        await business.accept_answer(call["meta_sdp"])
        await business.wait_connected(10)
        await call_api(wa.wait_state, call_id, "ACCEPTED")
        await business.wait_received(1.5, timeout=10)
        assert abs(business.dominant_frequency(last_seconds=1.0) - 440) < 5

        response = await call_api(wa.ctl, "POST", f"calls/{call_id}/dtmf", {"digits": "5"})
        assert response.status_code == 200
        assert await business.wait_digits(1, timeout=5) == ["5"]

        call = await wait_media(wa, call_id, lambda c: c["media"]["received"]["packets"] >= 75)
        assert call["media"]["dtls"]["role"] == "client"
        assert call["media"]["received"]["loss"] < 0.01
        heard = recording(wa, call)
        assert abs(dominant_frequency(heard, 48000) - 1000) < 5
        await call_api(wa.ctl, "POST", f"calls/{call_id}/hangup")


async def test_dtls_failure_is_on_the_timeline_and_ends_the_call(media_wa):
    """A business whose SDP fingerprint does not match its certificate: DTLS fails at the relay."""
    wa = media_wa
    call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
    offer = (await call_api(wa.call, call_id))["meta_sdp"]
    async with AiortcBusiness(tone_hz=1000) as business:
        answer = await business.answer(offer)
        line = next(l for l in answer.split("\r\n") if l.startswith("a=fingerprint:sha-256 "))
        forged = answer.replace(line, "a=fingerprint:sha-256 " + ":".join(["AB"] * 32))
        for action in ("pre_accept", "accept"):
            response = await call_api(wa.calls_action, {"call_id": call_id, "action": action,
                                                        "session": {"sdp_type": "answer", "sdp": forged}})
            assert response.status_code == 200, response.text
        call = await wait_media(wa, call_id, lambda c: any(e.get("event") == "dtls_failed" for e in c["timeline"]))
        failed = next(e for e in call["timeline"] if e.get("event") == "dtls_failed")
        assert "fingerprint" in failed["reason"]
        await call_api(wa.advance, 21)
        call = await call_api(wa.wait_state, call_id, "ENDED")
        assert call["end_status"] == "FAILED"
        assert call["errors"][0]["code"] == 138020 and "DTLS failed" in call["errors"][0]["error_data"]["details"]
