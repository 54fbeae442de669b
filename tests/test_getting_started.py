"""Getting started: ``--port 0`` gives every listener a free port (two instances side by side, beside a
running default one), the log at INFO (text or JSON), and a database whose config was edited since."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx

from support.harness import PKI_DIR, ROOT

PNID, ALICE = "106540352242922", "447700900001"


def serve(*args: str, db: str = ":memory:") -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "wacall", "serve", "--json", "--db", db, "--pki-dir", PKI_DIR,
                             *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "PYTHONUNBUFFERED": "1"})


def ready(proc: subprocess.Popen) -> dict:
    line = proc.stdout.readline()
    assert line, proc.stderr.read()
    return json.loads(line)


def stop(proc: subprocess.Popen) -> str:
    """Stop it; its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, err = proc.communicate(timeout=20)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    return err


def media_port(info: dict) -> int:
    call = httpx.post(f"{info['control_url']}/users/{ALICE}/calls", json={"to": PNID}, timeout=10)
    assert call.status_code == 201, call.text
    return httpx.get(f"{info['control_url']}/calls/{call.json()['call_id']}", timeout=10).json()["media"]["port"]


def test_two_instances_with_port_0_run_side_by_side():
    first, second = serve("--port", "0"), serve("--port", "0")
    try:
        a, b = ready(first), ready(second)
        ports = {(info["graph_url"].rsplit(":", 1)[1], info["sip"]["port"]) for info in (a, b)}
        assert len(ports) == 2 and all(port not in ("8080", 5061) for pair in ports for port in pair), ports
        assert a["sip"]["port"] != b["sip"]["port"] and a["graph_url"] != b["graph_url"]
        assert media_port(a) != media_port(b)              # the media relay too: each on its own free port
        for info in (a, b):
            assert httpx.get(f"{info['control_url']}/health", timeout=10).json()["status"] == "ok"
    finally:
        for proc in (first, second):
            assert "Traceback" not in stop(proc)


def test_a_fixed_graph_port_puts_sip_on_a_free_port_unless_asked():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = serve("--port", str(port))
    try:
        info = ready(proc)
        assert info["graph_url"].endswith(f":{port}") and info["sip"]["port"] not in (0, 5061)
    finally:
        stop(proc)


def test_info_logs_a_line_per_request_call_event_and_webhook_attempt_as_json(tmp_path):
    with socket.socket() as closed:                 # a callback URL where nothing listens: the attempt fails
        closed.bind(("127.0.0.1", 0))
        dead = closed.getsockname()[1]
    config = tmp_path / "wacall.toml"
    config.write_text(f'[[apps]]\nid = "1234567890123456"\nsecret = "s3cret"\naccess_token = "tok"\n'
                      f'waba_ids = ["102290129340398"]\nsubscribed_to = ["102290129340398"]\n'
                      f'callback_url = "http://127.0.0.1:{dead}/hook"\nfields = ["calls"]\n')
    proc = serve("--port", "0", "--sip-port", "-1", "--log-level", "INFO", "--log-format", "json",
                 "--config", str(config))
    try:
        info = ready(proc)
        media_port(info)
        bad = httpx.post(f"{info['graph_url']}/v23.0/{PNID}/calls", content=b"{not json",
                         headers={"Authorization": "Bearer tok", "Content-Type": "application/json"}, timeout=10)
        assert bad.status_code == 400
        deadline = time.monotonic() + 15            # the webhook's first attempt (it fails: nothing listens)
        while time.monotonic() < deadline:
            journal = httpx.get(f"{info['control_url']}/webhooks", timeout=10).json()
            if any(entry.get("attempts") for entry in journal.get("data", journal) if isinstance(entry, dict)):
                break
            time.sleep(0.2)
    finally:
        err = stop(proc)
    lines = [json.loads(line) for line in err.splitlines() if line.strip()]   # every line is a JSON object
    assert "Traceback" not in err
    messages = [(line["logger"], line["message"]) for line in lines]
    assert any(logger == "wacall" and "new, seeded from the config" in m for logger, m in messages), messages
    assert any(line.get("path") == f"/v23.0/{PNID}/calls" and line.get("status") == 400 for line in lines)
    assert any(line.get("kind") == "state" and "-> RINGING" in line["message"] for line in lines), messages
    assert any(logger == "wacall.webhooks" and "attempt 1" in m and "failed" in m for logger, m in messages), messages


def test_a_config_edited_after_the_database_was_seeded_is_reported(tmp_path):
    db = str(tmp_path / "wacall.db")
    proc = serve("--port", "0", "--sip-port", "-1", db=db)
    first = ready(proc)
    assert first["restored"] is False and first["db"] == db and first["config_drift"] == []
    stop(proc)
    config = tmp_path / "wacall.toml"
    config.write_text('[[users]]\nwa_id = "447700900001"\nname = "Alice Renamed"\n\n'
                      '[[users]]\nwa_id = "447700900099"\nname = "Zed"\n')
    proc = serve("--port", "0", "--sip-port", "-1", "--config", str(config), db=db)
    try:
        info = ready(proc)
        assert info["restored"] is True
        assert "user added: 447700900099" in info["config_drift"]
        assert "user changed: 447700900001 (name)" in info["config_drift"]
        users = {u["wa_id"]: u["name"] for u in info["users"]}
        assert users[ALICE] == "Alice Smith" and "447700900099" not in users    # used as it is, and said so
        reset = httpx.post(f"{info['control_url']}/reset", json={}, timeout=10)     # reset applies the config
        assert reset.status_code in (200, 204), reset.text
        users = {u["wa_id"]: u["name"] for u in httpx.get(f"{info['control_url']}/info", timeout=10).json()["users"]}
        assert users == {ALICE: "Alice Renamed", "447700900099": "Zed"}
        assert httpx.get(f"{info['control_url']}/info", timeout=10).json()["config_drift"] == []
    finally:
        err = stop(proc)
    assert "the config differs from what" in err and "POST /_wacall/reset" in err and "Traceback" not in err
