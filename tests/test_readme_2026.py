"""The README's "Media API and Graph versions", "Voicemail" and "Call recording and transcription" shell
blocks, run as written against a live wacall (only G, P and T set, as the curl quickstart sets them): the
announcement made, uploaded, read back and downloaded byte for byte; voicemail switched on with it; a user's
call rejected by the business ends in a message; the announcement deleted; a call answered with recording
and transcription gets both."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from support.harness import ROOT, Wacall


def blocks(start: str, end: str) -> str:
    text = (ROOT / "README.md").read_text()
    section = text[text.index(start):text.index(end)]
    return "\n".join(re.findall(r"```sh\n(.*?)```", section, re.S))


def test_the_readme_media_api_and_voicemail_blocks_run_as_written(tmp_path):
    script = blocks("## Media API and Graph versions", "## SIP")
    (tmp_path / ".venv").symlink_to(Path(sys.executable).parent.parent)      # the README runs from a clone
    server = Wacall().start()
    try:
        script = ("trap 'kill $(jobs -p) 2>/dev/null' EXIT\n"
                  + script.replace("python examples/", f"{sys.executable} {ROOT}/examples/"))
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              timeout=240, env={**os.environ, "G": server.url, "P": server.pnid, "T": server.token})
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "same bytes" in out and '"mime_type":"audio/ogg"' in out and '{"error"' not in out, out
        assert "'trigger': 'REJECT'" in out and "'phase': 'done'" in out, out
        voicemail, recorded = sorted((c["call_id"] for c in server.ctl("GET", "calls").json()["data"]),
                                     key=lambda c: server.call(c)["created_at"])
        assert server.call(voicemail)["voicemail"]["phase"] == "done"
        recorded = server.call(recorded)
        assert recorded["recording"]["media_id"] and recorded["transcript"]["media_id"], recorded
        assert "{'media_id': " in out and "'text': " in out and "[Customer]" in out, out   # recording, transcript
    finally:
        server.close()
    assert (tmp_path / "copy.ogg").read_bytes() == (tmp_path / "hello.ogg").read_bytes()
