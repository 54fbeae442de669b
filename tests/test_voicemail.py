"""Voicemail end to end: a business written with pywa (PyPI ``pywa==4.5.0``, unmodified) and a virtual
user with real audio.

pywa 4.5.0 has no ``voicemail`` in its ``CallingSettings`` and no ``use_case`` on ``upload_media``, so the
announcement upload and the settings are plain HTTP (what Meta documents); rejecting the call, receiving
the terminate and the audio message, and downloading the message through the Media API are pywa's own.
"""

from __future__ import annotations

import base64
import hashlib
import io
import wave
from collections.abc import Iterator

import numpy as np
import pytest
from pywa.types.calls import CallDirection, CallTerminateStatus

from support.pywa_bridge import PywaBusiness, start_business
from wacall.media.audio import SAMPLE_RATE, dominant_frequency
from wacall.media.voicemail import decode_ogg_opus, encode_ogg_opus

ALICE = "447700900001"
ANNOUNCEMENT_HZ, USER_HZ = 600, 1000
ANNOUNCEMENT_SECONDS, MESSAGE_SECONDS = 1.5, 2


@pytest.fixture
def vwa(media_server):
    """wacall with its media in the server process, and with it in two worker processes."""
    return media_server


@pytest.fixture
def business(vwa) -> Iterator[PywaBusiness]:
    biz = start_business(vwa)
    try:
        yield biz
    finally:
        biz.close()


def tone_ogg(freq: float, seconds: float) -> bytes:
    t = np.arange(int(seconds * SAMPLE_RATE)) / SAMPLE_RATE
    return encode_ogg_opus((np.sin(2 * np.pi * freq * t) * 12000).astype(np.int16))


def upload_announcement(wa) -> str:
    """``POST /{phone_number_id}/media`` with ``use_case=call_voicemail_announcement`` (plain HTTP)."""
    response = wa.graph("POST", f"{wa.pnid}/media", files={
        "file": ("announcement.ogg", tone_ogg(ANNOUNCEMENT_HZ, ANNOUNCEMENT_SECONDS), "audio/ogg")},
        data={"messaging_product": "whatsapp", "type": "audio/ogg", "use_case": "call_voicemail_announcement"})
    assert response.status_code == 200, response.text
    return response.json()["id"]


def enable_voicemail(wa, triggers: list[str], media_id: str, timeout: int = 20) -> dict:
    voicemail = {"status": "ENABLED", "triggers": triggers,
                 "audio": {"default": {"announcement_media_id": int(media_id), "timeout_seconds": timeout}}}
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"voicemail": voicemail}})
    assert response.status_code == 200, response.text
    assert response.json() == {"success": True}
    echoed = wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]["voicemail"]
    assert echoed == voicemail
    return voicemail


def user_calls(wa, seconds: float = MESSAGE_SECONDS) -> str:
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": f"tone:{USER_HZ}"}).status_code == 200
    response = wa.user_calls(ALICE)
    assert response.status_code == 201, response.text
    call_id = response.json()["call_id"]
    chosen = wa.ctl("POST", f"calls/{call_id}/voicemail", {"seconds": seconds})
    assert chosen.status_code == 200, chosen.text
    return call_id


def check_voicemail(wa, business: PywaBusiness, call_id: str, trigger: str) -> None:
    client = business.client
    message = business.wait_one("message", lambda m: m.id == call_id, timeout=30)
    assert message.from_user.wa_id == ALICE
    assert message.audio is not None and message.audio.mime_type == "audio/ogg; codecs=opus"
    raw = message.raw["entry"][0]["changes"][0]
    assert raw["field"] == "messages" and raw["value"]["messages"][0]["type"] == "audio"

    terminate = business.wait_one("terminate", lambda t: t.id == call_id)
    assert terminate.status == CallTerminateStatus.COMPLETED
    assert terminate.direction == CallDirection.USER_INITIATED

    # the business downloads the message through the Media API, with pywa
    url = client.get_media_url(message.audio.id)
    assert url.mime_type == "audio/ogg; codecs=opus"
    data = client.get_media_bytes(url.url)
    assert base64.b64encode(hashlib.sha256(data).digest()).decode() == message.audio.sha256 == url.sha256
    assert int(url.file_size) == len(data)
    pcm = decode_ogg_opus(data)
    assert abs(len(pcm) / SAMPLE_RATE - MESSAGE_SECONDS) < 0.1
    assert abs(dominant_frequency(pcm, SAMPLE_RATE) - USER_HZ) < 5          # the user's tone

    # the user heard the announcement: it is in the user's recording
    wav = wa.ctl("GET", f"calls/{call_id}/recording.wav")
    assert wav.status_code == 200
    with wave.open(io.BytesIO(wav.content)) as w:
        rate = w.getframerate()
        heard = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2")
    assert abs(len(heard) / rate - ANNOUNCEMENT_SECONDS) < 0.1
    assert abs(dominant_frequency(heard, rate) - ANNOUNCEMENT_HZ) < 5

    view = wa.call(call_id)
    assert (view["state"], view["end_reason"], view["ended_by"]) == ("ENDED", "voicemail", "user")
    assert view["voicemail"] == {"trigger": trigger, "media_id": message.audio.id, "seconds": MESSAGE_SECONDS,
                                 "phase": "done"}


def test_business_rejects_and_the_user_leaves_a_voicemail(vwa, business):
    wa = vwa
    client = business.client
    media_id = upload_announcement(wa)
    enable_voicemail(wa, ["REJECT"], media_id)
    rejected = []

    @client.on_call_connect
    def reject(_, call):        # pywa's own reject, from its webhook handler
        if call.direction == CallDirection.USER_INITIATED:
            rejected.append(call.reject())

    call_id = user_calls(wa)
    business.wait(lambda: rejected, what="pywa to reject")
    assert rejected[0].success is True
    check_voicemail(wa, business, call_id, "REJECT")


def test_business_does_not_answer_in_time_and_the_user_leaves_a_voicemail(vwa, business):
    wa = vwa
    media_id = upload_announcement(wa)
    enable_voicemail(wa, ["REJECT", "TIMEOUT"], media_id, timeout=10)
    call_id = user_calls(wa)
    business.wait_one("connect", lambda c: c.id == call_id)
    assert wa.call(call_id)["state"] == "RINGING"
    wa.advance(10)                                     # timeout_seconds on the virtual clock
    check_voicemail(wa, business, call_id, "TIMEOUT")


def test_user_hangs_up_during_the_announcement_no_message(wa, receiver):
    media_id = upload_announcement(wa)
    enable_voicemail(wa, ["REJECT"], media_id)
    call_id = user_calls(wa)
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])
    assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
    assert wa.call(call_id)["state"] == "VOICEMAIL"
    again = wa.calls_action({"call_id": call_id, "action": "accept", "session": {"sdp_type": "answer", "sdp": "x"}})
    assert again.status_code == 400 and "went to voicemail" in again.json()["error"]["error_data"]["details"]
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    terminate = receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])[0]
    assert terminate["status"] == "COMPLETED" and "duration" not in terminate
    view = wa.call(call_id)
    assert view["end_reason"] == "user_hangup"
    assert view["voicemail"] == {"trigger": "REJECT", "media_id": None, "seconds": None, "phase": "abandoned"}
    wa.advance(1)
    assert not [v for v in receiver.values("messages") if any(m["id"] == call_id for m in v.get("messages", []))]


def test_voicemail_settings_refuse_what_meta_refuses(wa):
    def refused(voicemail: dict) -> str:
        response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"voicemail": voicemail}})
        assert response.status_code == 400, response.text
        error = response.json()["error"]
        assert error["code"] == 100
        return error["error_data"]["details"]

    assert "timeout_seconds" in refused({"status": "ENABLED", "triggers": ["TIMEOUT"], "audio": {
        "default": {"announcement_media_id": "1", "timeout_seconds": 31}}})
    assert refused({"status": "ENABLED", "audio": {"default": {"announcement_media_id": "1"}}}) == \
        "The parameter calling[voicemail][triggers] is required."
    assert "call_voicemail_announcement" in refused({"status": "ENABLED", "triggers": ["REJECT"], "audio": {
        "default": {"announcement_media_id": "123456789"}}})
    plain = wa.graph("POST", f"{wa.pnid}/media", files={"file": ("a.ogg", tone_ogg(440, 0.5), "audio/ogg")},
                     data={"messaging_product": "whatsapp", "type": "audio/ogg"}).json()["id"]
    assert "call_voicemail_announcement" in refused({"status": "ENABLED", "triggers": ["REJECT"], "audio": {
        "default": {"announcement_media_id": plain}}})


# -- SIP numbers: the business's SIP server declines (603) or lets it ring past timeout_seconds --------------
@pytest.mark.parametrize("scenario, trigger", [("uas_decline.xml", "REJECT"), ("uas_ring_cancel.xml", "TIMEOUT")])
def test_sip_number_voicemail(wa, receiver, tmp_path, scenario, trigger):
    from test_sip_user_calls import BusinessServer
    server = BusinessServer(wa, tmp_path, scenario=scenario).start()
    try:
        enable_voicemail(wa, ["REJECT", "TIMEOUT"], upload_announcement(wa), timeout=10)
        call_id = user_calls(wa)
        wa.wait_for(lambda: any(e.get("line") == "SIP/2.0 180 Ringing" for e in wa.call(call_id)["timeline"]),
                    what="the business server ringing")
        if trigger == "TIMEOUT":
            wa.advance(10)
        server.sipp.wait(timeout=20).assert_ok(1)       # 603 ACKed, or Meta's CANCEL answered 487 and ACKed
        value = receiver.wait(lambda r: [v for v in r.values("messages")
                                         if any(m["id"] == call_id for m in v.get("messages", []))], timeout=30)[0]
        audio = value["messages"][0]["audio"]
        assert audio["mime_type"] == "audio/ogg; codecs=opus"
        url = wa.graph("GET", audio["id"]).json()["url"]
        download = wa.http.get(url, headers={"Authorization": f"Bearer {wa.token}"})
        assert download.status_code == 200 and download.headers["Content-Type"] == "audio/ogg; codecs=opus"
        pcm = decode_ogg_opus(download.content)
        assert abs(dominant_frequency(pcm, SAMPLE_RATE) - USER_HZ) < 5
        view = wa.call(call_id)
        assert view["voicemail"]["trigger"] == trigger and view["end_reason"] == "voicemail"
        ladder = [e["line"] for e in view["timeline"] if e["kind"] == "sip_message"]
        assert any(line.startswith("CANCEL ") for line in ladder) == (trigger == "TIMEOUT")
    finally:
        server.stop()


# -- faults: killed in the middle of the voicemail -----------------------------------------------------------
def test_kill_9_during_the_voicemail_ends_the_call_without_a_message(tmp_path):
    """Best effort, and no call left in a state whose timers cannot fire: after a SIGKILL mid-voicemail the
    restarted wacall ends the call when the announcement's deadline passes, with one terminate and no
    message."""
    from support.harness import Receiver, Wacall
    wa = Wacall(db=str(tmp_path / "wacall.db")).start()
    rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    try:
        assert wa.subscribe(rx.url).status_code == 200
        enable_voicemail(wa, ["REJECT"], upload_announcement(wa))
        call_id = user_calls(wa, seconds=30)
        rx.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])
        assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
        wa.wait_for(lambda: wa.call(call_id)["voicemail"]["phase"] == "message", what="the announcement to play")
        wa.kill()
        wa.start()
        assert wa.call(call_id)["state"] == "VOICEMAIL"
        wa.advance(30 + 15)                                # the message's deadline (n + 15 s)
        view = wa.wait_state(call_id, "ENDED")
        assert (view["end_reason"], view["voicemail"]["phase"], view["voicemail"]["media_id"]) == (
            "voicemail_failed", "failed", None)
        def terminates():
            return [e for e in rx.call_events(call_id) if e.get("event") == "terminate"]
        rx.wait(lambda r: terminates())
        wa.advance(1)
        assert len(terminates()) == 1
        assert not [v for v in rx.values("messages") if any(m["id"] == call_id for m in v.get("messages", []))]
    finally:
        wa.close()
        rx.stop()


def test_cli_voicemail_choice(wa):
    from test_cli import subprocess_cli
    call_id = wa.user_calls(ALICE).json()["call_id"]
    done = subprocess_cli("voicemail", call_id, "2.5", url=wa.url)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"{call_id}: a message of 2.5 s if it goes to voicemail"
    refused = subprocess_cli("voicemail", call_id, "500", url=wa.url)
    assert refused.returncode != 0 and "bad_seconds" in refused.stdout + refused.stderr


def test_a_deleted_announcement_ends_the_voicemail_without_a_message(wa, receiver):
    media_id = upload_announcement(wa)
    enable_voicemail(wa, ["REJECT"], media_id)
    assert wa.graph("DELETE", media_id).json() == {"success": True}
    call_id = user_calls(wa)
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "connect"])
    assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
    view = wa.wait_state(call_id, "ENDED")
    assert (view["end_reason"], view["ended_by"], view["voicemail"]["phase"]) == ("voicemail_failed", "platform",
                                                                                  "failed")
    failed = [e for e in view["timeline"] if e["kind"] == "voicemail" and e.get("event") == "failed"]
    assert failed and media_id in failed[0]["reason"]
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e.get("event") == "terminate"])


async def test_the_live_stream_shows_the_call_in_voicemail():
    """The console's live stream (``GET /_wacall/stream``) tells the call going to voicemail and on."""
    from support.inprocess import config
    from test_console_stream import Events
    from wacall.control.client import ControlClient
    from wacall.server import Wacall as InProcess

    emulator = await InProcess(config(), db=":memory:", port=0).start()
    try:
        info = emulator.info()
        platform = emulator.platform
        number, app = platform.numbers[info["phone_number_id"]], platform.apps[info["app_id"]]
        media_id = emulator.media_library.add_media(number.id, tone_ogg(ANNOUNCEMENT_HZ, 0.5), "audio/ogg",
                                                    use_case="call_voicemail_announcement")
        emulator.apply(lambda: platform.update_settings(app, number, {"calling": {"voicemail": {
            "status": "ENABLED", "triggers": ["REJECT"], "audio": {"default": {"announcement_media_id": media_id}}}}}))
        async with ControlClient(info["control_url"]) as control:
            call_id = await control.user_calls(ALICE, number.id)
            await control.voicemail(call_id, 1)
            events = Events(control, call_id)
            await events.listening(emulator.live)
            emulator.apply(lambda: platform.call_action(app, number, {
                "messaging_product": "whatsapp", "call_id": call_id, "action": "reject"}))
            _, answered = await events.until(lambda k, d: k == "call" and d["state"] == "VOICEMAIL", "voicemail")
            assert answered["voicemail"]["trigger"] == "REJECT"
            _, ended = await events.until(lambda k, d: k == "call" and d["state"] == "ENDED", "ended")
            assert ended["voicemail"]["phase"] == "done" and ended["voicemail"]["seconds"] == 1
            events.stop()
    finally:
        await emulator.stop()
