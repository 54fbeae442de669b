"""The README's "Media API and Graph versions" and "Voicemail" shell blocks, run as written against a live
wacall (only G, P and T set, as the curl quickstart sets them): the announcement made, uploaded, read back
and downloaded byte for byte; voicemail switched on with it; a user's call rejected by the business ends in
a message; the announcement deleted."""

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
        done = subprocess.run(["bash", "-e", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                              timeout=120, env={**os.environ, "G": server.url, "P": server.pnid, "T": server.token})
        assert done.returncode == 0, done.stdout + done.stderr
        out = done.stdout
        assert "same bytes" in out and '"mime_type":"audio/ogg"' in out and '{"error"' not in out, out
        assert "'trigger': 'REJECT'" in out and "'phase': 'done'" in out, out
        assert out.rstrip().endswith('{"success":true}'), out                # the DELETE
        [call] = [c for c in server.ctl("GET", "calls").json()["data"]]
        assert server.call(call["call_id"])["voicemail"]["phase"] == "done"
    finally:
        server.close()
    assert (tmp_path / "copy.ogg").read_bytes() == (tmp_path / "hello.ogg").read_bytes()
