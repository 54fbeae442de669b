"""A restart is not the end of a call: wacall killed with SIGKILL in the middle of a connected call
with real media comes back on the same media port with the same ICE credentials, SSRC and SRTP keys,
and a connected aiortc business hears the user again (and is heard) within 2 s of wacall being ready;
the call later ends normally with exactly one terminate webhook. Where the old port is taken, the call
ends the way the user's phone ends it: the media timeout, a terminate webhook with 138021 and a
timeline entry saying why."""

from __future__ import annotations

import asyncio
import io
import re
import socket
import time
import wave

import numpy as np
import pytest

from support.harness import Receiver, Wacall, take_user_call
from wacall.media.audio import dominant_frequency
from wacall.testing.peer import AiortcBusiness

ALICE = "447700900001"


async def call_api(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture(params=["in-process", "2-workers"])
def restartable(request, tmp_path):
    extra = ["--media-workers", "2"] if request.param == "2-workers" else []
    wa = Wacall(db=str(tmp_path / "wacall.db"), extra=extra).start()
    rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    assert wa.subscribe(rx.url).status_code == 200
    wa.media_timeouts(True)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440"}).status_code == 200
    yield wa, rx
    wa.close()
    rx.stop()


async def connected_call(wa, business: AiortcBusiness) -> str:
    call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
    await take_user_call(wa, business, call_id)
    await business.wait_received(1.0, timeout=10)
    return call_id


def received_packets(wa, call_id: str) -> int:
    media = wa.call(call_id)["media"]
    return media["received"]["packets"] if media else 0


def heard_by_user(wa, call_id: str) -> np.ndarray:
    data = wa.http.get(wa.call(call_id)["media"]["recording_url"]).content
    with wave.open(io.BytesIO(data)) as wav:
        return np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)


def bind_or_false(sock: socket.socket, port: int) -> bool:
    try:
        sock.bind(("127.0.0.1", port))
    except OSError:
        return False
    return True


def media_port(sdp: str) -> int:
    return int(re.search(r"^m=audio (\d+) ", sdp, re.M).group(1))


async def test_kill_9_mid_call_media_resumes_both_ways_and_the_call_ends_once(restartable):
    wa, rx = restartable
    async with AiortcBusiness(tone_hz=1000) as business:
        call_id = await connected_call(wa, business)
        before = await call_api(wa.call, call_id)
        assert before["media"]["dtls"]["state"] == "connected"
        await asyncio.sleep(2.5)                               # past a checkpoint of both streams

        await call_api(wa.kill)                                # SIGKILL: no clean shutdown
        heard_before = business.received_seconds
        await call_api(wa.start)                               # same db, same ports
        ready = time.monotonic()

        # within 2 s of wacall being ready, media flows again both ways
        await business.wait_received(heard_before + 0.5, timeout=2.0)
        await call_api(wa.wait_for, lambda: received_packets(wa, call_id) >= 25, 2.0 - (time.monotonic() - ready),
                       "the relay hearing the business again")
        call = await call_api(wa.call, call_id)
        assert call["state"] == "ACCEPTED" and call["media"]["restored"] is True
        assert any(e.get("event") == "media_restored" for e in call["timeline"])
        assert call["media"]["received"]["srtp_auth_failures"] == 0
        await asyncio.sleep(1.0)
        assert abs(business.dominant_frequency(last_seconds=0.8) - 440) < 5, "the business hears the user again"
        heard = await call_api(heard_by_user, wa, call_id)
        assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user hears the business again"

        # DTMF still works on the restored stream (same SSRC and sequence space)
        assert (await call_api(wa.ctl, "POST", f"calls/{call_id}/dtmf", {"digits": "7"})).status_code == 200
        assert await business.wait_digits(1, timeout=5) == ["7"]

        response = await call_api(wa.calls_action, {"call_id": call_id, "action": "terminate"})
        assert response.status_code == 200, response.text
    await call_api(rx.wait, lambda r: any(e["event"] == "terminate" for e in r.call_events(call_id)),
                   15, "the terminate webhook")
    await asyncio.sleep(0.5)
    events = [e["event"] for e in rx.call_events(call_id)]
    assert events.count("connect") == 1 and events.count("terminate") == 1, events
    terminate = next(e for e in rx.call_events(call_id) if e["event"] == "terminate")
    assert terminate["status"] == "COMPLETED"


async def test_restart_where_the_media_port_is_taken_ends_the_call_with_the_media_timeout(restartable):
    wa, rx = restartable
    async with AiortcBusiness(tone_hz=1000) as business:
        call_id = await connected_call(wa, business)
        port = media_port((await call_api(wa.call, call_id))["meta_sdp"])
        await call_api(wa.kill)
        squatter = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            # someone else takes the relay's port (once the killed process's media workers let go of it)
            await call_api(wa.wait_for, lambda: bind_or_false(squatter, port), 10, "the old media port free")
            await call_api(wa.start)
            call = await call_api(wa.call, call_id)
            assert call["state"] == "ACCEPTED"
            lost = next(e for e in call["timeline"] if e.get("event") == "media_not_restored")
            assert "taken" in lost["reason"] and str(port) in lost["reason"]
            await call_api(wa.advance, 31)                     # the user's phone: 30 s without media
            call = await call_api(wa.wait_state, call_id, "ENDED")
        finally:
            squatter.close()
    assert call["end_status"] == "FAILED" and call["errors"][0]["code"] == 138021
    terminate = await call_api(rx.wait, lambda r: next((e for e in r.call_events(call_id)
                                                        if e["event"] == "terminate"), None), 15, "terminate")
    assert terminate["status"] == "FAILED"
    value = next(v for v in rx.values("calls") if any(c["id"] == call_id and c["event"] == "terminate"
                                                       for c in v.get("calls", [])))
    assert value["errors"][0]["code"] == 138021
    new_call = (await call_api(wa.user_calls, "5511987650002")).json()    # new calls get a port that works
    assert media_port((await call_api(wa.call, new_call["call_id"]))["meta_sdp"]) != port
