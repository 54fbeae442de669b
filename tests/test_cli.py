"""The ``wacall`` CLI against a live wacall: every command, its errors, ``--follow`` on the live stream, and
each ``wacall trigger`` scenario checked against the webhooks a real receiver got.

Most commands run through typer's ``CliRunner`` (the same app ``python -m wacall`` runs, in this process,
against the live server over HTTP); what depends on the process itself (``--version``, exit status of a
refused connection, Ctrl-C ending ``--follow``) runs ``python -m wacall`` as a subprocess.
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import tomllib

import pytest
from typer.testing import CliRunner

from support.aiortc_business import AiortcBusiness, take_user_call
from support.harness import ROOT, Wacall
from support.sdp_samples import business_offer
from wacall.cli import cli
from wacall.cli_client import package_version, parse_duration, webhook_event
from wacall.config import DEFAULT_TOML, load_config

ALICE = "447700900001"
WIDE = {"COLUMNS": "250"}          # rich tables one line per row, so a test can read them


def wacall_cli(wa: Wacall, *args: str, env: dict | None = None):
    """``wacall ARGS`` in this process against ``wa``; returns typer's result (exit_code, stdout, stderr)."""
    runner = CliRunner()
    return runner.invoke(cli, list(args), env={"WACALL_URL": wa.url, **WIDE, **(env or {})}, catch_exceptions=False)


def ok_json(wa: Wacall, *args: str):
    result = wacall_cli(wa, *args, "--json")
    assert result.exit_code == 0, result.output + result.stderr
    return json.loads(result.stdout)


def subprocess_cli(*args: str, url: str, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "wacall", *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, "WACALL_URL": url, **WIDE}, timeout=60, **kwargs)


def follow(wa: Wacall, *args: str) -> subprocess.Popen:
    """``wacall ARGS`` as a long-running subprocess (a ``--follow``), once it is connected to the stream."""
    proc = subprocess.Popen([sys.executable, "-m", "wacall", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, cwd=ROOT,
                            env={**os.environ, "WACALL_URL": wa.url, **WIDE}, preexec_fn=_ctrl_c_heard)
    wa.wait_for(lambda: connected(proc, wa), 20, "the --follow process on the stream")
    time.sleep(0.5)           # its first page came on that connection; the stream request follows at once
    return proc


def _ctrl_c_heard() -> None:
    """In the child: SIGINT acts as a terminal's Ctrl-C does, also when this test run was started in the
    background by a shell without job control (its children inherit SIGINT ignored)."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def connected(proc: subprocess.Popen, wa: Wacall) -> bool:
    """The process holds a connection to wacall's port (ss names each socket's process) and has started
    reading the stream (a --follow process opens no other connection after its first page)."""
    assert proc.poll() is None, proc.stderr.read()
    port = wa.url.rsplit(":", 1)[1]
    out = subprocess.run(["ss", "-Htnp", "state", "established", f"( dport = :{port} )"], capture_output=True,
                         text=True).stdout
    return f"pid={proc.pid}," in out


def manual(wa: Wacall, wa_id: str) -> None:
    """The user answers, declines and replies to permission requests only when told."""
    assert wa.ctl("PATCH", f"users/{wa_id}", {"incoming": "manual"}).status_code == 200


def business_calls(wa: Wacall, wa_id: str) -> str:
    response = wa.calls_action({"to": wa_id, "action": "connect",
                                "session": {"sdp_type": "offer", "sdp": business_offer()}})
    assert response.status_code == 200, response.text
    return response.json()["calls"][0]["id"]


# -- the process: --version, config, no server, refusals --------------------------------------------------------
def test_version_comes_from_the_package_metadata():
    from importlib.metadata import version

    done = subprocess_cli("--version", url="http://127.0.0.1:9")
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == f"wacall {version('wacall')}" == f"wacall {package_version()}"


def test_help_lists_every_command():
    result = CliRunner().invoke(cli, ["--help"], env=WIDE)
    assert result.exit_code == 0
    for command in ("serve", "cert", "users", "call", "answer", "reject", "hangup", "dtmf", "calls", "webhooks",
                    "clock", "trigger", "config"):
        assert f" {command} " in result.stdout, command
    assert "--version" in result.stdout


def test_config_default_prints_the_built_in_configuration_as_toml(tmp_path):
    result = CliRunner().invoke(cli, ["config", "--default"])
    assert result.exit_code == 0, result.output
    assert tomllib.loads(result.stdout) == tomllib.loads(DEFAULT_TOML)
    path = tmp_path / "wacall.toml"
    path.write_text(result.stdout)
    assert [u.wa_id for u in load_config(path).users] == [u.wa_id for u in load_config(None).users]
    refused = CliRunner().invoke(cli, ["config"])
    assert refused.exit_code == 1 and "--default" in refused.stderr


def test_no_wacall_at_the_url_is_one_line_and_a_failure():
    with socket.socket() as s:                  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    done = subprocess_cli("users", url=f"http://127.0.0.1:{port}")
    assert done.returncode == 1
    assert done.stderr.startswith(f"wacall: no wacall at http://127.0.0.1:{port} (")
    assert len(done.stderr.strip().splitlines()) == 1 and "Traceback" not in done.stderr


def test_a_refusal_is_one_line_with_the_reason(wa):
    result = wacall_cli(wa, "answer", "wacid.nope")
    assert result.exit_code == 1
    assert result.stderr.strip() == "wacall: unknown_call: no call wacid.nope"
    result = wacall_cli(wa, "call", ALICE, "--entry-point", "billboard")
    assert result.exit_code == 1 and result.stderr.startswith("wacall: bad_entry_point: entry_point must be")


def test_a_url_where_something_else_answers(wa, receiver):
    result = wacall_cli(wa, "users", env={"WACALL_URL": receiver.url.removesuffix("/webhook")})
    assert result.exit_code == 1
    assert result.stderr.startswith("wacall: not_wacall: GET http://127.0.0.1:") and "text/plain" in result.stderr


@pytest.fixture(scope="module")
def tokened():
    server = Wacall(control_token="s3cret-token").start()
    yield server
    server.close()


def test_control_token_from_the_flag_or_the_environment(tokened):
    refused = wacall_cli(tokened, "users")
    assert refused.exit_code == 1
    assert refused.stderr.startswith("wacall: unauthorized:") and "--token" in refused.stderr
    by_flag = wacall_cli(tokened, "users", "--json", "--token", "s3cret-token")
    assert by_flag.exit_code == 0 and ALICE in {u["wa_id"] for u in json.loads(by_flag.stdout)}
    by_env = wacall_cli(tokened, "clock", "--json", env={"WACALL_CONTROL_TOKEN": "s3cret-token"})
    assert by_env.exit_code == 0 and "now" in json.loads(by_env.stdout)


# -- the commands ------------------------------------------------------------------------------------------------
def test_users_table_and_json(wa):
    assert ok_json(wa, "users") == wa.ctl("GET", "users").json()["data"]
    table = wacall_cli(wa, "users")
    assert table.exit_code == 0
    assert "Alice Smith" in table.stdout and "Dave Miller" in table.stdout and "reject after 2 s" in table.stdout


def test_call_then_hangup(wa, receiver):
    result = wacall_cli(wa, "call", ALICE, "--entry-point", "call_button", "--payload", "order-42")
    assert result.exit_code == 0, result.stderr
    call_id = result.stdout.strip()
    call = wa.call(call_id)
    assert (call["state"], call["wa_id"], call["direction"], call["cta_payload"]) == (
        "RINGING", ALICE, "USER_INITIATED", "order-42")
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e["event"] == "connect"], what="connect")
    hung = ok_json(wa, "hangup", call_id)
    assert (hung["state"], hung["end_reason"], hung["ended_by"]) == ("ENDED", "user_hangup", "user")
    # to a number given by display number; the default business otherwise
    by_number = wacall_cli(wa, "call", ALICE, "--to", "+44 7700 900123", "--json")
    assert wa.call(json.loads(by_number.stdout)["call_id"])["phone_number_id"] == wa.pnid


def test_answer_and_reject_a_business_call(wa):
    manual(wa, ALICE)
    wa.grant_permission(ALICE, permanent=True)
    call_id = business_calls(wa, ALICE)
    answered = wacall_cli(wa, "answer", call_id)
    assert answered.exit_code == 0 and answered.stdout.strip() == f"{call_id}: ACCEPTED"
    assert wa.call(call_id)["state"] == "ACCEPTED"
    assert wacall_cli(wa, "hangup", call_id).stdout.strip() == f"{call_id}: ENDED (COMPLETED, user_hangup)"
    second = business_calls(wa, ALICE)
    rejected = ok_json(wa, "reject", second)
    assert (rejected["state"], rejected["end_reason"]) == ("ENDED", "rejected")
    again = wacall_cli(wa, "reject", second)
    assert again.exit_code == 1 and again.stderr.startswith("wacall: call_ended:")


async def test_dtmf_reaches_the_business(media_server):
    wa = media_server
    wa.reset(media_timeouts=True)
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    refused = await asyncio.to_thread(subprocess_cli, "dtmf", call_id, "5", url=wa.url)
    assert refused.returncode == 1 and refused.stderr.startswith("wacall: no_media:")
    async with AiortcBusiness() as business:
        await take_user_call(wa, business, call_id)
        deadline = time.monotonic() + 10
        while True:           # the media connection comes up a moment after the accept
            done = await asyncio.to_thread(subprocess_cli, "dtmf", call_id, "12#", url=wa.url)
            if done.returncode == 0 or time.monotonic() > deadline:
                break
            await asyncio.sleep(0.2)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"{call_id}: pressed 12#"
        assert await business.wait_digits(3, timeout=5) == ["1", "2", "#"]
    await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")


def test_calls_table_and_json(wa):
    first = json.loads(wacall_cli(wa, "call", ALICE, "--json").stdout)["call_id"]
    wa.ctl("POST", f"calls/{first}/hangup")
    second = json.loads(wacall_cli(wa, "call", "5511987650002", "--json").stdout)["call_id"]
    rows = ok_json(wa, "calls")
    assert [r["call_id"] for r in rows][-2:] == [first, second]
    assert rows[-2]["state"] == "ENDED" and rows[-2]["end_reason"] == "user_hangup"
    assert rows[-1]["state"] == "RINGING" and rows[-1]["signalling"] == "graph"
    assert "timeline" not in rows[-1]
    assert [r["call_id"] for r in ok_json(wa, "calls", "--limit", "1")] == [second]
    table = wacall_cli(wa, "calls").stdout
    assert first in table and second in table and "user → business" in table and "COMPLETED user_hangup" in table


def test_calls_follow_json_shows_each_state_change(wa):
    proc = follow(wa, "calls", "--follow", "--json")
    try:
        call_id = json.loads(wacall_cli(wa, "call", ALICE, "--json").stdout)["call_id"]
        wa.ctl("POST", f"calls/{call_id}/hangup")
        states = []
        while "ENDED" not in states:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            event = json.loads(line)
            if event["data"]["call_id"] == call_id:
                assert event["event"] == "call"
                states.append(event["data"]["state"])
        assert states == ["RINGING", "ENDED"]
    finally:
        proc.kill()
        proc.wait()


def test_calls_follow_table_until_ctrl_c(wa):
    manual(wa, ALICE)
    wa.grant_permission(ALICE, permanent=True)
    proc = follow(wa, "calls", "--follow")
    ended = json.loads(wacall_cli(wa, "call", ALICE, "--json").stdout)["call_id"]
    wa.ctl("POST", f"calls/{ended}/hangup")
    talking = business_calls(wa, ALICE)
    wa.ctl("POST", f"calls/{talking}/answer")
    wa.advance(90)                              # a clock event: the live call's duration follows it
    time.sleep(1.5)
    proc.send_signal(signal.SIGINT)
    out, err = proc.communicate(timeout=20)
    assert proc.returncode == 0, err
    assert "Traceback" not in err
    last = out[out.rfind("calls (live"):]       # the table as last drawn
    row = {line.split("│")[1].strip(): line for line in last.splitlines() if "wacid." in line}
    assert "ENDED" in row[ended] and "user_hangup" in row[ended] and "user → business" in row[ended]
    assert "ACCEPTED" in row[talking] and "business → user" in row[talking]
    assert re.search(r"\b(9[0-9]) s so far", row[talking]), row[talking]
    wa.ctl("POST", f"calls/{talking}/hangup")


def test_follow_ends_with_a_failure_when_wacall_stops():
    server = Wacall().start()
    try:
        proc = follow(server, "webhooks", "--follow")
    finally:
        server.close()
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 1
    assert err.startswith("wacall: ") and "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def test_clock_show_and_advance(wa):
    before = ok_json(wa, "clock")
    after = ok_json(wa, "clock", "advance", "7d")
    assert after["offset"] - before["offset"] == pytest.approx(7 * 86400)
    assert ok_json(wa, "clock", "advance", "1h30m")["offset"] - after["offset"] == pytest.approx(5400)
    shown = wacall_cli(wa, "clock", "advance", "90s")
    assert shown.exit_code == 0 and "virtual; +" in shown.stdout
    bad = wacall_cli(wa, "clock", "advance", "soon")
    assert bad.exit_code == 2 and "not a duration" in bad.output + bad.stderr


def test_durations():
    assert [parse_duration(t) for t in ("90s", "15m", "2h", "7d", "1w", "1h30m", "45", "0.5", "2d 3h")] == [
        90, 900, 7200, 604800, 604800, 5400, 45, 0.5, 183600]
    for bad in ("", "7x", "d", "-1s", "1h-"):
        with pytest.raises(Exception, match="not a duration"):
            parse_duration(bad)


def test_webhooks_table_json_and_follow(wa, receiver):
    proc = follow(wa, "webhooks", "--follow", "--json")
    try:
        call_id = json.loads(wacall_cli(wa, "call", ALICE, "--json").stdout)["call_id"]
        receiver.wait(lambda r: r.call_events(call_id), what="connect")
        while True:
            line = proc.stdout.readline()
            assert line, proc.stderr.read()
            event = json.loads(line)
            if (event["event"] == "webhook" and event["data"]["call_id"] == call_id and event["data"]["attempt_log"]
                    and webhook_event(event["data"]["body"]) == "connect"):   # (in any order with the permission's)
                break
        assert event["data"]["attempt_log"][-1]["status_code"] == 200
    finally:
        proc.kill()
        proc.wait()
    entries = ok_json(wa, "webhooks", "--call", call_id)
    # the call's connect, and the automatic callback permission its call gave (journalled with the call)
    assert [webhook_event(e["body"]) for e in entries] == ["connect",
                                                           "call_permission_reply accept (temporary, automatic)"]
    assert entries[0]["url"] == receiver.url
    table = wacall_cli(wa, "webhooks").stdout
    assert call_id in table and "delivered" in table and "connect" in table


# -- trigger scenarios: the webhooks the business got ----------------------------------------------------------
def trigger(wa: Wacall, scenario: str) -> dict:
    outcome = ok_json(wa, "trigger", scenario)
    assert outcome["scenario"] == scenario
    return outcome


def received(receiver, outcome: dict) -> list[str]:
    """What the receiver got during the scenario (its user's and calls' webhooks), summarised, in order."""
    def ours(delivery) -> bool:
        value = delivery.value
        return (any(c["id"] in outcome["calls"] for c in value.get("calls", []) + value.get("statuses", []))
                or any(m.get("from") == outcome["user"] for m in value.get("messages", []))
                or any(s.get("recipient_id") == outcome["user"] for s in value.get("statuses", [])))
    receiver.wait(lambda r: len([d for d in r.snapshot() if ours(d)]) >= len(outcome["webhooks"]),
                  what="every webhook of the scenario")
    return [webhook_event(d.body) for d in receiver.snapshot() if ours(d)]


def journal_events(outcome: dict) -> list[str]:
    return [webhook_event(e["body"]) for e in outcome["webhooks"]]


def test_trigger_lists_the_scenarios(wa):
    result = wacall_cli(wa, "trigger")
    assert result.exit_code == 0
    for name in ("missed-call", "permission-expires", "permission-revoked", "media-timeout"):
        assert name in result.stdout


def test_trigger_unknown_scenario_is_a_usage_error(wa):
    result = wacall_cli(wa, "trigger", "alien-call")
    assert result.exit_code == 2 and "alien-call" in result.output + result.stderr


def test_trigger_missed_call(wa, receiver):
    outcome = trigger(wa, "missed-call")
    (call_id,) = outcome["calls"]
    got = received(receiver, outcome)
    # connect; Meta's automatic callback permission (callback_permission_status ENABLED on this number);
    # after the accept window: terminate FAILED with 138007
    assert sorted(got) == sorted(journal_events(outcome))
    assert journal_events(outcome) == ["connect", "call_permission_reply accept (temporary, automatic)",
                                       "terminate FAILED 138007"]
    terminate = next(c for c in receiver.call_events(call_id) if c["event"] == "terminate")
    assert "duration" not in terminate and "start_time" not in terminate
    reply = next(m for v in receiver.values("messages") for m in v.get("messages", [])
                 if m.get("from") == outcome["user"])
    assert reply["context"]["id"] == call_id


def test_trigger_missed_call_table_output(wa, receiver):
    result = wacall_cli(wa, "trigger", "missed-call")
    assert result.exit_code == 0, result.stderr
    assert "past the accept window" in result.stdout and "webhooks the business got" in result.stdout
    assert "terminate FAILED 138007" in result.stdout and "delivered" in result.stdout


def test_trigger_missed_call_without_a_subscriber_says_so(wa):
    result = wacall_cli(wa, "trigger", "missed-call")
    assert result.exit_code == 0 and "No webhooks were sent" in result.stdout


def test_trigger_permission_expires(wa, receiver):
    outcome = trigger(wa, "permission-expires")
    assert outcome["calls"] == []
    assert (outcome["refusal"]["status"], outcome["refusal"]["code"]) == (401, 138006)
    got = received(receiver, outcome)
    # the user's message, the request's statuses, the temporary accept; nothing when it expires
    assert sorted(got) == sorted(["text", "message status sent", "message status delivered", "message status read",
                                  "call_permission_reply accept (temporary, user_action)"])
    reply = next(m["interactive"]["call_permission_reply"] for v in receiver.values("messages")
                 for m in v.get("messages", []) if m.get("from") == outcome["user"] and m["type"] == "interactive")
    # granted for 7 days, and the clock was moved 7 days and a second past the grant
    assert int(reply["expiration_timestamp"]) == pytest.approx(wa.ctl("GET", "clock").json()["now"] - 1, abs=5)
    assert sorted(journal_events(outcome)) == sorted(got)


def test_trigger_permission_revoked_after_the_unanswered_streak(wa, receiver):
    count = wa.ctl("GET", "limits").json()["unanswered_revoke"]
    assert count == 4                            # Meta's production rule
    outcome = trigger(wa, "permission-revoked")
    assert len(outcome["calls"]) == count
    assert (outcome["refusal"]["status"], outcome["refusal"]["code"]) == (401, 138006)
    got = received(receiver, outcome)
    assert sorted(journal_events(outcome)) == sorted(got)      # webhooks arrive in any order, as from Meta
    # in the order they were sent: per declined call connect, RINGING, REJECTED, terminate; the revoke after
    # the last one
    sent = [e for e in journal_events(outcome) if not e.startswith(("text", "message status"))]
    assert sent == ["call_permission_reply accept (permanent, user_action)",
                    *["connect", "status RINGING", "status REJECTED", "terminate COMPLETED"] * count,
                    "call_permission_reply reject (automatic)"]
    revoke = next(m for v in receiver.values("messages") for m in v.get("messages", [])
                  if m.get("from") == outcome["user"]
                  and m.get("interactive", {}).get("call_permission_reply", {}).get("response") == "reject")
    assert "context" not in revoke
    assert revoke["interactive"]["call_permission_reply"] == {"response": "reject", "response_source": "automatic"}


def test_trigger_media_timeout(wa, receiver):
    off = wacall_cli(wa, "trigger", "media-timeout")          # the `wa` fixture turns media timeouts off
    assert off.exit_code == 1 and "media timeouts are off" in off.stderr
    wa.media_timeouts(True)
    outcome = trigger(wa, "media-timeout")
    (call_id,) = outcome["calls"]
    got = received(receiver, outcome)
    assert sorted(journal_events(outcome)) == sorted(got)
    # no ICE check from the business within 20 s of its accept: Meta's 138023 (docs/fidelity.md)
    assert [e for e in journal_events(outcome) if not e.startswith("call_permission_reply")] == [
        "connect", "terminate FAILED 138023"]
    assert wa.call(call_id)["ended_by"] == "user"


def test_trigger_business_call_outcomes(wa, receiver):
    def calls_events(outcome: dict) -> list[str]:
        assert sorted(journal_events(outcome)) == sorted(received(receiver, outcome))
        return [e for e in journal_events(outcome)
                if not e.startswith(("text", "message status", "call_permission_reply"))]

    declined = trigger(wa, "declined-call")
    assert calls_events(declined) == ["connect", "status RINGING", "status REJECTED", "terminate COMPLETED"]
    unanswered = trigger(wa, "unanswered-business-call")
    assert calls_events(unanswered) == ["connect", "status RINGING", "terminate COMPLETED"]
    terminate = next(e for e in receiver.call_events(unanswered["calls"][0]) if e["event"] == "terminate")
    assert "duration" not in terminate and "start_time" not in terminate
    answered = trigger(wa, "answered-call")
    assert calls_events(answered) == ["connect", "status RINGING", "status ACCEPTED", "terminate COMPLETED"]
    terminate = next(e for e in receiver.call_events(answered["calls"][0]) if e["event"] == "terminate")
    assert terminate["duration"] > 0 and "start_time" in terminate


def test_trigger_no_payment_method(wa, receiver):
    outcome = trigger(wa, "no-payment-method")
    got = received(receiver, outcome)
    assert sorted(got) == sorted(journal_events(outcome))
    assert [g for g in got if not g.startswith("call_permission_reply")] == ["terminate FAILED 131044"]
    assert wa.ctl("GET", f"numbers/{wa.pnid}").json()["payment_method"] is True


def test_trigger_with_an_existing_user(wa, receiver):
    manual(wa, ALICE)
    outcome = ok_json(wa, "trigger", "declined-call", "--user", ALICE)
    assert outcome["user"] == ALICE and wa.call(outcome["calls"][0])["wa_id"] == ALICE


@pytest.mark.parametrize("option,value", [("--port", "70000"), ("--media-port", "-3")])
def test_serve_refuses_a_port_out_of_range_in_one_line(option, value):
    done = subprocess.run([sys.executable, "-m", "wacall", "serve", option, value, "--db", ":memory:"],
                          capture_output=True, text=True, timeout=30, env={**os.environ, **WIDE})
    assert done.returncode == 2 and "Traceback" not in done.stderr and "Unclosed" not in done.stderr
    assert f"Invalid value for '{option}'" in done.stderr


def test_serving_freezes_start_up_and_widens_the_young_generation():
    """The collector's policy serve applies once started (in a child: the policy is process-wide)."""
    probe = ("import gc; from wacall.cli import collect_for_serving, SERVING_YOUNG_GENERATION as Y;"
             "before = gc.get_threshold(); collect_for_serving();"
             "print(before[0], Y, *gc.get_threshold(), int(gc.get_freeze_count() > 0), before[1:] == gc.get_threshold()[1:])")
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=60, check=True)
    default, young, now_young, *_, frozen, older_kept = done.stdout.split()
    assert (now_young, frozen, older_kept) == (young, "1", "True") and int(young) > int(default)
