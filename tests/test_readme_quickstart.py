"""The README's curl quickstart, run as written: its shell blocks against a live wacall, with only the
ports changed (tests never use a fixed port) and the call id taken from the connect webhook the README's
receiver prints. The call must be answered (pre_accept, accept) and the user must hear its own tone."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
import wave
from pathlib import Path

import numpy as np
import pytest

from support.harness import ROOT, Wacall
from support.sip_tools import free_port
from wacall.media.audio import dominant_frequency


def quickstart_blocks() -> list[str]:
    text = (ROOT / "README.md").read_text()
    section = text[text.index("## Quickstart with curl"):text.index("## An example business")]
    return re.findall(r"```sh\n(.*?)```", section, re.S)


@pytest.fixture
def wacall():
    server = Wacall().start()
    yield server
    server.close()


def test_the_readme_curl_quickstart_answers_a_call_with_audio(wacall, tmp_path):
    serve, setup, answer = quickstart_blocks()
    assert serve.startswith("scripts/serve")
    hooks = tmp_path / "hooks.txt"
    receiver = free_port()

    def ports(block: str) -> str:
        block = block.replace(":8080", ":" + wacall.url.rsplit(":", 1)[1]).replace(":9000", f":{receiver}")
        return block.replace('("127.0.0.1", 9000)', f'("127.0.0.1", {receiver})')

    setup = ports(setup).replace("serve_forever()\n' &", f"serve_forever()\n' > {hooks} &")
    first, rest = answer.split("\n", 1)
    assert first.startswith("CALL=wacid.")               # the README's placeholder: the id from the webhook
    call_from_webhook = (f"sleep 1; CALL=$(grep -o '\"id\":\"wacid[^\"]*' {hooks} | head -1 | cut -d'\"' -f4)\n"
                         "test -n \"$CALL\"\n")
    script = ("set -e\ntrap 'kill $(jobs -p) 2>/dev/null' EXIT\n" + setup + call_from_webhook
              + ports(rest).replace("python examples/", f"{sys.executable} {ROOT}/examples/")
              + 'echo "CALL=$CALL"\n')
    done = subprocess.run(["bash", "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"})
    assert done.returncode == 0, done.stdout + done.stderr
    call_id = done.stdout.strip().rsplit("CALL=", 1)[1]
    assert '{"error":{' not in done.stdout, done.stdout      # every request was taken
    call = wacall.call(call_id)
    assert call["state"] == "ENDED", call                    # the README's terminate
    actions = [e.get("action") for e in call["timeline"] if e["kind"] == "api"]
    assert actions[:2] == ["pre_accept", "accept"], actions
    with wave.open(io.BytesIO((tmp_path / "heard.wav").read_bytes())) as wav:
        heard = np.frombuffer(wav.readframes(wav.getnframes()), dtype=np.int16)
    assert heard.size > 48000 // 2, "at least half a second of audio between accept and terminate"
    assert abs(dominant_frequency(heard, 48000) - 440) < 5, "Alice hears her own 440 Hz tone, echoed"
