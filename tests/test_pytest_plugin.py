"""wacall's pytest plugin (``wacall.testing``) and ``wacall.running()``, used as their users use them:
the README's example test file run by pytest in a directory of its own (also under pytest-xdist, and
in-process), the fixtures from plain and from async tests, and the context manager outside pytest."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import socket
import subprocess
import sys
from pathlib import Path

import pytest

import wacall as wacall_package
from wacall.control.client import ControlRefused
from wacall.testing.receiver import WebhookReceiver
from wacall.testing.running import GraphError, seconds

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "examples" / "test_my_business.py"
ALICE = "447700900001"


def run_pytest(directory: Path, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """pytest as a user runs it: in their own directory (no project conftest, no pyproject of ours)."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(("WACALL_", "PYTEST_"))}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args],
                          cwd=directory, env={**environment, **(env or {})}, capture_output=True, text=True,
                          timeout=300)


@pytest.mark.parametrize("args", [["-n", "2", "-vv"], ["--wacall-mode=inprocess"]],
                         ids=["xdist-2-workers", "inprocess"])
def test_the_example_test_file_passes_as_a_user_runs_it(tmp_path, args):
    shutil.copy(EXAMPLE, tmp_path)
    done = run_pytest(tmp_path, *args, EXAMPLE.name)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-3000:]
    assert re.search(r"\b3 passed\b", done.stdout), done.stdout[-2000:]
    if "-n" in args:                           # both workers ran tests, each with a wacall of its own
        assert "[gw0]" in done.stdout and "[gw1]" in done.stdout, done.stdout[-2000:]


def test_a_conftest_that_names_the_plugin_loads_it_once(tmp_path):
    """The entry point and ``pytest_plugins`` use the same name: listing it in a conftest (as wacall's own
    tests do) is harmless with the entry point, and enough without it."""
    shutil.copy(EXAMPLE, tmp_path)
    (tmp_path / "conftest.py").write_text('pytest_plugins = ["wacall.testing.plugin"]\n')
    done = run_pytest(tmp_path, "-k", "unanswered", EXAMPLE.name)
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]
    done = run_pytest(tmp_path, "-k", "unanswered", EXAMPLE.name, env={"PYTEST_DISABLE_PLUGIN_AUTOLOAD": "1"})
    assert done.returncode == 0 and "1 passed" in done.stdout, done.stdout[-4000:] + done.stderr[-2000:]


def test_the_readme_shows_the_example_file_as_it_is():
    readme = (ROOT / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.S)
    assert EXAMPLE.read_text() in blocks, "README's 'Testing your integration' must show examples/test_my_business.py"


def test_the_plugin_and_import_wacall_stay_light():
    """pytest loads the plugin in every run where wacall is installed, and ``import wacall`` must not pull
    the server in: the server, aiohttp and aiortc are imported when a fixture or ``running()`` is used."""
    code = ("import sys, wacall, wacall.testing.plugin, wacall.testing; "
            "print(sorted(m for m in ('aiohttp', 'aiortc', 'av', 'numpy', 'wacall.server', 'wacall.testing.running') "
            "if m in sys.modules)); wacall.running; print('wacall.testing.running' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert done.stdout.split("\n")[:2] == ["[]", "True"], done.stdout + done.stderr


# -- the fixtures, from the project's own tests (their wacall_server is the harness's) -------------------
def test_wait_for_says_what_it_waited_for_and_what_came(wacall, wacall_users, wacall_receiver):
    call_id = wacall_users.user_calls(ALICE, wacall.phone_number_id)
    connect = wacall_receiver.wait_for("calls", event="connect")
    assert connect["calls"][0]["id"] == call_id and connect["metadata"]["phone_number_id"] == wacall.phone_number_id
    with pytest.raises(AssertionError) as timed_out:
        wacall_receiver.wait_for("calls", id=call_id, event="terminate", timeout=0.3)
    message = str(timed_out.value)
    assert message.startswith("timed out after 0.3 s waiting for a 'calls' webhook with ")
    assert f"id='{call_id}'" in message and "event='terminate'" in message
    assert re.search(r"received \d+ webhook\(s\): .*calls\(calls=connect\)", message), message


def test_the_receiver_refuses_a_webhook_signed_with_another_secret(wacall, wacall_users):
    with WebhookReceiver(app_secret="not-the-app-secret", verify_token=wacall.verify_token) as receiver:
        wacall.subscribe_webhooks(receiver.url)
        wacall_users.send_message(ALICE, wacall.phone_number_id, "hello")
        receiver.wait(lambda rx: rx.bad_signatures, what="a refused POST")
        assert receiver.deliveries == []
        with pytest.raises(AssertionError, match="X-Hub-Signature-256 that does not match"):
            receiver.wait_for("messages", timeout=5)


def test_the_receiver_answers_meta_verification_only_with_its_token(wacall):
    receiver = WebhookReceiver(app_secret=wacall.app_secret, verify_token="another-token").start()
    try:
        with pytest.raises(GraphError) as refused:
            wacall.subscribe_webhooks(receiver.url)
        assert refused.value.status == 400, refused.value
    finally:
        receiver.stop()


def test_the_clock_advances_by_durations(wacall_clock):
    before = wacall_clock.now()
    wacall_clock.advance("1d2h")
    assert wacall_clock.now() - before == pytest.approx(26 * 3600, abs=5)
    assert [seconds(x) for x in (90, "90s", "15m", "2h", "7d", "1w")] == [90, 90, 900, 7200, 604800, 604800]
    with pytest.raises(ValueError, match="not a duration"):
        seconds("7 days")


def test_users_are_the_control_client(wacall, wacall_users):
    assert {u["wa_id"] for u in wacall_users.users()} >= {ALICE}
    call_id = wacall_users.user_calls(ALICE, wacall.phone_number_id)
    with pytest.raises(ControlRefused) as refused:
        wacall_users.reject(call_id)                  # the user placed it: they hang up, not reject
    assert refused.value.status == 409 and refused.value.reason == "wrong_direction"
    wacall_users.hangup(call_id)
    assert wacall_users.call(call_id)["state"] == "ENDED"


async def test_async_tests_await_the_same_fixtures(wacall, wacall_users, wacall_receiver, wacall_business,
                                                    wacall_clock):
    await wacall_users.update_user(ALICE, audio="tone:440")
    call_id = await wacall_users.user_calls(ALICE, wacall.phone_number_id)
    connect = await wacall_receiver.wait_for("calls", id=call_id, event="connect")
    answer = await wacall_business.answer(connect["calls"][0]["session"]["sdp"])
    for action in ("pre_accept", "accept"):
        await wacall.graph_api("POST", f"{wacall.phone_number_id}/calls", {
            "messaging_product": "whatsapp", "call_id": call_id, "action": action,
            "session": {"sdp_type": "answer", "sdp": answer}})
    await wacall_business.wait_connected()
    await wacall_business.wait_received(0.5)
    assert abs(wacall_business.dominant_frequency() - 440) < 5
    assert (await wacall_users.call(call_id))["state"] == "ACCEPTED"
    now = await wacall_clock.now()
    assert (await wacall_clock.advance(60))["now"] >= now + 60


# -- wacall.running(): the same wacall outside pytest ---------------------------------------------------
def refused(url: str) -> bool:
    host, port = url.removeprefix("http://").rsplit(":", 1)
    with socket.socket() as sock:
        return sock.connect_ex((host, int(port))) != 0


def test_running_as_context_managers_side_by_side():
    """``with wacall.running()``: both modes at once, every listener on its own free port, the
    environment set inside and restored after, everything closed on exit."""
    assert "WACALL_URL" not in os.environ
    with wacall_package.running() as child, wacall_package.running(mode="inprocess") as inside:
        assert child.mode == "subprocess" and inside.mode == "inprocess"
        assert os.environ["WACALL_URL"] == inside.graph_url          # the innermost one
        assert child.graph_url != inside.graph_url and child.sip["port"] != inside.sip["port"]
        for w in (child, inside):
            assert w.control.health()["status"] == "ok"
            settings = w.graph_api("GET", f"{w.phone_number_id}/settings")
            assert "calling" in settings
            call_id = w.control.user_calls(ALICE, w.phone_number_id)
            w.advance("2m")
            assert w.control.call(call_id)["end_reason"] == "not_answered"
        assert os.environ["WACALL_URL"] == inside.graph_url
    assert "WACALL_URL" not in os.environ
    assert refused(child.graph_url) and refused(inside.graph_url)
    assert child.proc.poll() is not None and inside.server is None


def test_running_as_a_decorator_of_plain_and_async_functions():
    @wacall_package.running(mode="inprocess", sip=False)
    def plain() -> str:
        return os.environ["WACALL_GRAPH_URL"]

    @wacall_package.running(mode="inprocess", sip=False)
    async def coroutine() -> dict:
        from wacall.control.client import ControlClient

        async with ControlClient(os.environ["WACALL_URL"]) as control:
            return await control.info()

    url = plain()
    assert url.startswith("http://127.0.0.1:") and refused(url)
    info = asyncio.run(coroutine())
    assert info["sip"] is None and info["phone_number_id"] and refused(info["graph_url"])
    with pytest.raises(ValueError, match="mode must be one of"):
        wacall_package.running(mode="docker")


def test_a_wacall_that_cannot_start_says_why(tmp_path):
    with pytest.raises(RuntimeError, match=r"wacall did not start .*missing.toml: cannot read it"):
        with wacall_package.running(config=str(tmp_path / "missing.toml")):
            pass


@pytest.mark.parametrize("program,says", [
    ("print('Welcome to something else')", "Welcome to something else"),    # not wacall's JSON line
    ("import time; time.sleep(60)", "nothing within 1 s"),                   # hangs before its line
])
def test_a_child_that_is_not_a_ready_wacall_is_stopped_and_named(monkeypatch, program, says):
    from wacall.testing import running

    class NotWacall(running.Subprocess):
        def args(self) -> list[str]:
            return [sys.executable, "-c", program]

    monkeypatch.setattr(running, "START_TIMEOUT", 1.0)
    server = NotWacall(sip=False)
    with pytest.raises(RuntimeError, match=re.escape(says)):
        server.start()
    assert server.proc is not None and server.proc.poll() is not None        # not left running
