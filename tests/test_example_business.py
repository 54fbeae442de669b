"""The README's example business (examples/echo_business.py) against a live wacall: it subscribes its
webhook, a virtual user calls it, it answers with pre_accept then accept, and echoes the audio: the user
hears its own 440 Hz tone back (what the user heard is wacall's per-call recording)."""

from __future__ import annotations

import io
import subprocess
import sys
import time
import wave

import numpy as np
import pytest

from support.harness import ROOT, Wacall
from wacall.media.audio import dominant_frequency, tone_power

ALICE = "447700900001"


@pytest.fixture
def wacall():
    server = Wacall().start()
    yield server
    server.close()


@pytest.fixture
def echo_bot(wacall):
    bot = subprocess.Popen([sys.executable, str(ROOT / "examples" / "echo_business.py"), "--graph", wacall.url,
                            "--port", "0", "--subscribe"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, cwd=ROOT)
    line = bot.stdout.readline()
    assert line.startswith("echo business: webhooks on http://127.0.0.1:"), line + bot.stderr.read()
    yield bot
    bot.terminate()
    try:
        bot.communicate(timeout=10)
    except subprocess.TimeoutExpired:
        bot.kill()
        bot.communicate()


def test_the_echo_business_answers_a_user_call_and_the_user_hears_itself(wacall, echo_bot):
    assert wacall.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440"}).status_code == 200
    placed = wacall.user_calls(ALICE)
    assert placed.status_code == 201, placed.text
    call_id = placed.json()["call_id"]
    wacall.wait_state(call_id, "ACCEPTED", timeout=20)
    call = wacall.wait_for(lambda: (c := wacall.call(call_id))["media"]["received"]["packets"] >= 150 and c, 20,
                           "three seconds of the business's audio")
    actions = [e.get("action") for e in call["timeline"] if e["kind"] == "api"]
    assert actions.index("pre_accept") < actions.index("accept"), actions
    assert call["media"]["dtls"]["state"] == "connected" and call["media"]["received"]["srtp_auth_failures"] == 0
    with wave.open(io.BytesIO(wacall.http.get(call["media"]["recording_url"]).content)) as wav:
        heard = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert abs(dominant_frequency(heard, 48000) - 440) < 5, "the user should hear its own 440 Hz echoed back"
    assert tone_power(heard, 48000, 440) > 100 * tone_power(heard, 48000, 1000)
    assert wacall.calls_action({"call_id": call_id, "action": "terminate"}).status_code == 200
    time.sleep(0.2)
    assert echo_bot.poll() is None, echo_bot.stderr.read()          # the bot lives on for the next call
