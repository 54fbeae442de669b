"""``wacall bridge`` in operation, on the real chain of tests/test_bridge_rtpengine.py (wacall as Meta, RtpEngine,
Kamailio as the PBX, baresip as the agent's phone, the bridge as a subprocess): Prometheus metrics
(``[metrics]``), JSON log lines (``--log-json``), graceful shutdown (SIGTERM drains, a second signal ends the
calls), and a restart after ``kill -9`` that keeps a live call (``[bridge] state_dir``; RtpEngine holds the media,
so the audio keeps flowing, and the restored call still ends both legs). See docs/bridge.md "Operating it"."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import sqlite3
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from support.bridge_tools import AgentPhone, BridgeProcess, PbxKamailio, RtpEngineDaemon
from support.sip_tools import make_test_pki
from test_bridge_rtpengine import (ALICE, DOMAIN, _agent_heard, _heard_both_ways, _logged,
                                   _user_calls_and_agent_answers, bridge_toml)
from test_bridge_rtpengine_bic import _agent_dials_alice
from wacall.bridge.config import build_bridge_config
from wacall.bridge.logs import JsonFormatter
from wacall.bridge.metrics import MediaStats
from wacall.bridge.rtpengine import stats_from_query
from wacall.bridge.state import CallStore
from wacall.media.audio import dominant_frequency

BOB = "447700900002"


# -- the parts alone ------------------------------------------------------------------------------------------
def test_json_log_lines_carry_the_wacid_and_the_sip_call_id():
    import logging

    record = logging.LogRecord("wacall.bridge", logging.INFO, __file__, 1, "%s bridged in %.0f ms",
                               ("wacid=wacid.ABC sip=x1@127.0.0.1", 93.2), None)
    line = json.loads(JsonFormatter().format(record))
    assert line["wacid"] == "wacid.ABC" and line["sip_call_id"] == "x1@127.0.0.1"
    assert line["msg"] == "bridged in 93 ms" and line["level"] == "INFO" and line["ts"].endswith("+00:00")
    none = logging.LogRecord("wacall.bridge", logging.INFO, __file__, 1, "wacid=- sip=y@h INVITE", (), None)
    assert json.loads(JsonFormatter().format(none))["wacid"] is None


def test_the_operations_tables_are_checked_at_load():
    base = {"graph": {"phone_number_id": "1", "token": "t"}, "webhook": {"app_secret": "s", "verify_token": "v"}}
    cfg = build_bridge_config({**base, "bridge": {"drain_seconds": 30, "state_dir": "/tmp/x"},
                               "metrics": {"enabled": True, "port": 0}})
    assert cfg.bridge.drain_seconds == 30 and cfg.metrics.enabled and cfg.metrics.port == 0
    for bad, key in (({"bridge": {"drain_seconds": -1}}, "bridge.drain_seconds"),
                     ({"metrics": {"port": 70000}}, "metrics.port"), ({"metrics": {"enabled": "yes"}}, "metrics.enabled"),
                     ({"bridge": {"drain": 1}}, "unknown keys drain")):
        with pytest.raises(ValueError, match=key):
            build_bridge_config({**base, **bad})


def test_rtpengine_query_becomes_media_stats():
    def stream(packets, errors=0):
        return {"stats": {"packets": packets, "bytes": 100 * packets, "errors": errors}}
    raw = {"result": "ok", "tags": {                           # the shape RtpEngine 10.5 answers
        "whatsapp": {"medias": [{"streams": [stream(500, errors=20), stream(0)]}]},
        "pbxtag": {"medias": [{"streams": [stream(490), stream(9)]}]}}}
    stats = stats_from_query(raw, "whatsapp")
    assert (stats.from_whatsapp, stats.to_pbx, stats.from_pbx, stats.to_whatsapp) == (520, 500, 490, 490)
    assert stats.loss_toward_pbx == pytest.approx(20 / 520) and stats.loss_toward_whatsapp == 0
    assert stats_from_query({"result": "ok"}, "whatsapp") is None
    assert MediaStats(from_whatsapp=95, lost_from_whatsapp=5, to_pbx=95).loss_toward_pbx == pytest.approx(0.05)


def test_the_call_store_keeps_calls_across_a_reopen(tmp_path):
    store = CallStore(tmp_path / "state")
    store.save("wacid.A", {"state": "setup"})
    store.save("wacid.A", {"state": "bridged"})
    store.save("x@h", {"state": "setup"})
    store.delete("x@h")
    store.db.close()                                        # as after kill -9: nothing flushed on purpose
    assert CallStore(tmp_path / "state").load() == [("wacid.A", {"state": "bridged"})]


# -- the real chain -------------------------------------------------------------------------------------------
OPS_TABLES = """
[bridge]
drain_seconds = {drain}
state_dir = "{state_dir}"

[metrics]
enabled = true
host = "127.0.0.1"
port = 0
"""


@pytest.fixture
async def chain(wa, tmp_path):
    """wacall (Alice plays 440 Hz), RtpEngine, the PBX and the agent's phone (1000 Hz); the test starts the
    bridge with :func:`start_bridge` (its drain time, state directory, webhook port)."""
    wa.reset()
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440"}).status_code == 200
    pki = make_test_pki(tmp_path / "pki")
    async with RtpEngineDaemon(workdir=tmp_path / "rtpengine") as rtpengine, \
            PbxKamailio(domain=DOMAIN, workdir=tmp_path / "pbx") as pbx:
        agent = AgentPhone(user="agent", domain=DOMAIN, registrar=("127.0.0.1", pbx.port), ca=pki.ca_cert,
                           cert=pki.business.pem, tone_hz=1000, workdir=tmp_path / "agent")
        async with agent:
            await agent.wait_registered()
            bridges: list[BridgeProcess] = []
            yield wa, agent, rtpengine, pbx, bridges
            for bridge in bridges:
                bridge.stop()


async def start_bridge(wa, rtpengine, pbx, tmp_path: Path, bridges: list, *, drain: float = 0,
                       webhook_port: int = 0, subscribe: bool = True, name: str = "bridge") -> BridgeProcess:
    text = bridge_toml(wa, rtpengine, pbx).replace("port = 0", f"port = {webhook_port}", 1)
    text += OPS_TABLES.format(drain=drain, state_dir=tmp_path / "state")
    bridge = BridgeProcess(text, workdir=tmp_path / name, args=("--log-json",))
    bridges.append(bridge)
    await asyncio.to_thread(bridge.start)
    if subscribe:
        subscribed = await asyncio.to_thread(wa.subscribe, bridge.info["webhook_url"], "calls")
        assert subscribed.status_code == 200, subscribed.text
    return bridge


def scrape(bridge: BridgeProcess) -> dict[tuple[str, tuple], float]:
    """The bridge's /metrics as {(sample name, sorted labels): value}."""
    text = httpx.get(bridge.info["metrics_url"], timeout=5).text
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def healthz(bridge: BridgeProcess) -> int:
    return httpx.get(bridge.info["metrics_url"].replace("/metrics", "/healthz"), timeout=5).status_code


def metric(samples: dict, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def json_lines(bridge: BridgeProcess) -> list[dict]:
    return [json.loads(line) for line in bridge.log_text().splitlines() if line.startswith("{")]


async def _exits(bridge: BridgeProcess, seconds: float) -> int | None:
    for _ in range(int(seconds * 10)):
        if bridge.proc.poll() is not None:
            return bridge.proc.returncode
        await asyncio.sleep(0.1)
    return bridge.proc.poll()


async def test_a_bridged_call_shows_in_the_metrics_and_the_json_log(chain, tmp_path):
    wa, agent, rtpengine, pbx, bridges = chain
    bridge = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    await _heard_both_ways(wa, agent, call_id)
    live = await asyncio.to_thread(scrape, bridge)
    assert metric(live, "wacall_bridge_calls", state="bridged", direction="USER_INITIATED") == 1
    assert metric(live, "wacall_bridge_calls_started_total", direction="USER_INITIATED") == 1
    assert metric(live, "wacall_bridge_call_setup_seconds_count", direction="USER_INITIATED") == 1
    assert (await asyncio.to_thread(healthz, bridge)) == 200
    await agent.hangup()
    await agent.wait_event("CALL_CLOSED", 10)
    await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    await _logged(bridge, '"msg": "media: from WhatsApp')
    after = await asyncio.to_thread(scrape, bridge)
    assert metric(after, "wacall_bridge_calls", state="bridged", direction="USER_INITIATED") == 0
    assert metric(after, "wacall_bridge_calls_ended_total", direction="USER_INITIATED", state="bridged",
                  reason="pbx") == 1
    for leg in ("whatsapp", "pbx"):                            # 2 s and more of audio each way went through
        assert metric(after, "wacall_bridge_media_packets_total", leg=leg, direction="in") > 100, after
        assert metric(after, "wacall_bridge_media_packets_total", leg=leg, direction="out") > 100, after
    assert metric(after, "wacall_bridge_media_loss_ratio_count", toward="pbx") == 1
    lines = json_lines(bridge)
    bridged = [line for line in lines if line["msg"].startswith("bridged in")]
    assert len(bridged) == 1 and bridged[0]["wacid"] == call_id, bridged
    assert re.fullmatch(r"\S+@127\.0\.0\.1", bridged[0]["sip_call_id"] or ""), bridged
    mine = [line for line in lines if line["wacid"] == call_id]
    assert any(line["msg"] == "BYE from the PBX" for line in mine), [line["msg"] for line in mine]
    assert all(line["sip_call_id"] == bridged[0]["sip_call_id"] for line in mine if line["sip_call_id"])


async def test_refusals_are_counted_by_sip_status_and_by_metas_code(chain, tmp_path):
    """No permission → 403 to the PBX; calling disabled at Meta → Graph 138000 → 480; the agent declining a
    user's call → the PBX's 486 (or 603) counted as the PBX's refusal."""
    wa, agent, rtpengine, pbx, bridges = chain
    bridge = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")                 # no permission
    first = await agent.wait_event("CALL_CLOSED", 10)
    assert "403" in first.param or "403" in str(first.raw), first.raw
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    await agent.wait_event("CALL_INCOMING", 15)
    await agent.hangup()                                       # the agent declines
    await asyncio.to_thread(wa.wait_for, lambda: wa.call(call_id)["state"] in ("REJECTED", "ENDED"), 10,
                            "the declined call rejected")
    await asyncio.to_thread(wa.grant_permission, ALICE)
    disabled = await asyncio.to_thread(wa.graph, "POST", f"{wa.pnid}/settings",
                                       json={"calling": {"status": "DISABLED"}})
    assert disabled.status_code == 200, disabled.text
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
    await _logged(bridge, "Graph refused: code 138000")
    samples = await asyncio.to_thread(scrape, bridge)
    assert metric(samples, "wacall_bridge_sip_refusals_total", status="403", by="bridge") == 1, samples
    assert metric(samples, "wacall_bridge_sip_refusals_total", status="480", by="bridge") == 1, samples
    assert metric(samples, "wacall_bridge_graph_errors_total", code="138000") >= 1, samples
    declined = {labels: v for (name, labels), v in samples.items()
                if name == "wacall_bridge_sip_refusals_total" and ("by", "pbx") in labels}
    assert sum(declined.values()) == 1, declined
    line = next(line for line in json_lines(bridge) if "Graph refused: code 138000" in line["msg"])
    assert line["level"] == "WARNING" and line["sip_call_id"], line


async def test_sigterm_drains_refuses_new_calls_and_exits_when_the_last_call_ends(chain, tmp_path):
    wa, agent, rtpengine, pbx, bridges = chain
    bridge = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges, drain=60)
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    bridge.proc.send_signal(signal.SIGTERM)
    await _logged(bridge, "draining: 1 live call(s)")
    assert (await asyncio.to_thread(healthz, bridge)) == 503
    assert metric(await asyncio.to_thread(scrape, bridge), "wacall_bridge_draining") == 1
    assert (await asyncio.to_thread(wa.ctl, "POST", "users", {"wa_id": BOB, "name": "Bob"})).status_code == 201
    bob = (await asyncio.to_thread(wa.user_calls, BOB)).json()["call_id"]      # a new user call: rejected
    rejected = await asyncio.to_thread(wa.wait_for, lambda: (c := wa.call(bob))["state"] in ("REJECTED", "ENDED")
                                       and c, 10, "Bob's call rejected while draining")
    assert rejected.get("ended_by") in (None, "business"), rejected
    samples = await asyncio.to_thread(scrape, bridge)
    assert metric(samples, "wacall_bridge_calls_ended_total", direction="USER_INITIATED", state="setup",
                  reason="draining") == 1, samples
    assert bridge.proc.poll() is None
    assert (await asyncio.to_thread(wa.call, call_id))["state"] == "ACCEPTED", "the live call goes on"
    await agent.hangup()                                       # the last call ends: the bridge stops by itself
    assert await _exits(bridge, 15) == 0, bridge.logs()
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business"
    assert "ended (shutdown)" not in bridge.log_text()


async def test_a_new_pbx_call_gets_503_while_draining_and_a_second_signal_ends_the_call_now(chain, tmp_path):
    wa, agent, rtpengine, pbx, bridges = chain
    bridge = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges, drain=600)
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge)
    bridge.proc.send_signal(signal.SIGTERM)
    await _logged(bridge, "draining: 1 live call(s)")
    established = len(agent.history)
    await agent.dial(f"sip:+{BOB}@{DOMAIN}")                   # a second line of the agent's phone
    refused = await agent.wait_event("CALL_CLOSED", 10, after=established)
    # the bridge answers 503; Kamailio, a proxy, forwards it as 500 (RFC 3261 16.7, step 6)
    assert re.match(r"50[03] Service Unavailable", refused.param), refused.raw
    await _logged(bridge, "INVITE from the PBX while draining: 503")
    assert bridge.proc.poll() is None
    bridge.proc.send_signal(signal.SIGTERM)                    # the second signal: end the calls now
    assert await _exits(bridge, 15) == 0, bridge.logs()
    await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(refused) + 1)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business"
    assert re.search(rf'"msg": "ended \(shutdown\)", "wacid": "{re.escape(call_id)}"', bridge.log_text())


async def test_kill_9_mid_call_then_restart_keeps_the_call_its_audio_and_its_hang_up(chain, tmp_path):
    """RtpEngine holds the media: after kill -9 the user and the agent still hear each other, the restarted
    bridge (same ports, same state directory) takes the call back, and the user's hang-up still reaches the
    agent's phone as a BYE."""
    wa, agent, rtpengine, pbx, bridges = chain
    first = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge=first)
    await _heard_both_ways(wa, agent, call_id)
    rows = sqlite3.connect(tmp_path / "state" / "bridge-calls.sqlite3").execute("SELECT key, record FROM calls")
    [(key, record)] = list(rows)
    assert key == call_id and json.loads(record)["state"] == "bridged"
    os.kill(first.proc.pid, signal.SIGKILL)
    assert await _exits(first, 5) == -signal.SIGKILL
    port = int(first.info["webhook_url"].split(":")[2].split("/")[0])
    before = (await asyncio.to_thread(wa.call, call_id))["media"]["received"]["packets"]
    second = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges, webhook_port=port, subscribe=False,
                                name="bridge-2")
    await _logged(second, '"msg": "restored: bridged (USER_INITIATED)"')
    assert metric(await asyncio.to_thread(scrape, second), "wacall_bridge_calls", state="bridged",
                  direction="USER_INITIATED") == 1

    def two_more_seconds():
        call = wa.call(call_id)
        return call["media"]["received"]["packets"] >= before + 100 and call
    call = await asyncio.to_thread(wa.wait_for, two_more_seconds, 15, "the agent's audio after the restart")
    heard = _wav_tail(wa.http.get(call["media"]["recording_url"]).content, seconds=2)
    assert abs(dominant_frequency(heard, 48000) - 1000) < 5, "the user still hears the agent's 1000 Hz"
    closed_before = len(agent.history)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/hangup")).status_code == 200
    await agent.wait_event("CALL_CLOSED", 10, after=closed_before)   # terminate → BYE from the new bridge
    await _logged(second, '"msg": "BYE to the PBX: 200"')
    await asyncio.sleep(0.3)
    at_agent = _agent_heard(agent)
    assert abs(dominant_frequency(at_agent[-48000:], 48000) - 440) < 5, "the agent heard the user to the end"
    assert not list(sqlite3.connect(tmp_path / "state" / "bridge-calls.sqlite3").execute("SELECT key FROM calls"))


def _wav_tail(data: bytes, seconds: float):
    from test_bridge_rtpengine import _wav
    pcm = _wav(data)
    return pcm[-int(seconds * 48000):]


async def _kill_and_restart(wa, rtpengine, pbx, tmp_path, bridges, first: BridgeProcess) -> BridgeProcess:
    """kill -9 the bridge, start another one on the same ports and state directory."""
    os.kill(first.proc.pid, signal.SIGKILL)
    assert await _exits(first, 5) == -signal.SIGKILL
    port = int(first.info["webhook_url"].split(":")[2].split("/")[0])
    return await start_bridge(wa, rtpengine, pbx, tmp_path, bridges, webhook_port=port, subscribe=False,
                              name=f"bridge-{len(bridges) + 1}")


async def test_a_restored_business_initiated_call_ends_both_legs_on_the_agents_bye(chain, tmp_path):
    wa, agent, rtpengine, pbx, bridges = chain
    first = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call_id}/answer")).status_code == 200
    await agent.wait_event("CALL_ESTABLISHED", 10)
    await _heard_both_ways(wa, agent, call_id)
    second = await _kill_and_restart(wa, rtpengine, pbx, tmp_path, bridges, first)
    await _logged(second, '"msg": "restored: bridged (BUSINESS_INITIATED)"')
    await agent.hangup()                                       # BYE to the new bridge → Graph terminate
    await agent.wait_event("CALL_CLOSED", 10)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    await _logged(second, '"msg": "BYE from the PBX"')
    assert metric(await asyncio.to_thread(scrape, second), "wacall_bridge_calls_restored_total",
                  outcome="resumed") == 1


async def test_a_call_still_ringing_at_a_kill_9_is_ended_on_both_sides_after_the_restart(chain, tmp_path):
    """Half of a call being set up is gone with the process (the INVITE transaction toward WhatsApp's side is
    answered, Meta's side is not bridged): the restarted bridge answers the PBX's INVITE it kept (503, which
    Kamailio forwards as 500) and ends the WhatsApp call."""
    wa, agent, rtpengine, pbx, bridges = chain
    first = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    await asyncio.to_thread(wa.grant_permission, ALICE)
    call_id = await _agent_dials_alice(wa, agent)
    ringing = await agent.wait_event("CALL_RINGING", 10)
    second = await _kill_and_restart(wa, rtpengine, pbx, tmp_path, bridges, first)
    closed = await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(ringing))
    assert re.match(r"50[03] Service Unavailable", closed.param), closed.raw
    ended = await asyncio.to_thread(wa.wait_for, lambda: (c := wa.call(call_id))["state"] not in
                                    ("RINGING", "ACCEPTED") and c, 10, "the WhatsApp call ended")
    assert ended["state"] in ("ENDED", "REJECTED"), ended
    await _logged(second, "restored in state setup: ending it on both sides")
    assert metric(await asyncio.to_thread(scrape, second), "wacall_bridge_calls_restored_total",
                  outcome="ended") == 1


async def test_a_bridged_call_whose_media_rtpengine_dropped_meanwhile_is_ended_on_both_sides(chain, tmp_path):
    """The bridge is killed, and RtpEngine forgets the call before the restart (its media timeout, or its own
    restart): the restored call cannot carry audio any more, so the new bridge ends it: BYE and Graph terminate."""
    from wacall.bridge.rtpengine import RtpEngine

    wa, agent, rtpengine, pbx, bridges = chain
    first = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    call_id = await _user_calls_and_agent_answers(wa, agent, bridge=first)
    established = len(agent.history)
    os.kill(first.proc.pid, signal.SIGKILL)
    assert await _exits(first, 5) == -signal.SIGKILL
    client = RtpEngine(("127.0.0.1", rtpengine.ng_port))
    await client.start()
    try:
        await client.command("delete", {"call-id": call_id, "delete delay": 0})   # at once, not in 30 s
    finally:
        client.close()
    port = int(first.info["webhook_url"].split(":")[2].split("/")[0])
    second = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges, webhook_port=port, subscribe=False,
                                name="bridge-2")
    await agent.wait_event("CALL_CLOSED", 10, after=established)
    ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
    assert ended["ended_by"] == "business", ended
    await _logged(second, "restored in state bridged: ending it on both sides")
    await _logged(second, '"msg": "ended (restart)"')


async def test_a_users_call_still_ringing_at_the_agent_at_a_kill_9_is_cancelled_after_the_restart(chain, tmp_path):
    """The bridge's INVITE to the PBX had no final answer when the process died (the agent's phone rings): it is in
    the state file as sent, so the restarted bridge CANCELs it (the agent stops ringing, not at Kamailio's
    fr_inv_timer two minutes later) and rejects the user's call at Meta (it was never accepted)."""
    wa, agent, rtpengine, pbx, bridges = chain
    first = await start_bridge(wa, rtpengine, pbx, tmp_path, bridges)
    call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
    ringing = await agent.wait_event("CALL_INCOMING", 15)
    second = await _kill_and_restart(wa, rtpengine, pbx, tmp_path, bridges, first)
    await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(ringing))
    ended = await asyncio.to_thread(wa.wait_for, lambda: (c := wa.call(call_id))["state"] not in
                                    ("RINGING", "ACCEPTED") and c, 10, "the WhatsApp call ended")
    assert ended["state"] in ("ENDED", "REJECTED"), ended
    await _logged(second, "restored with its INVITE to the PBX unanswered: CANCEL")
    assert metric(await asyncio.to_thread(scrape, second), "wacall_bridge_calls_restored_total",
                  outcome="ended") == 1
    with sqlite3.connect(tmp_path / "state" / "bridge-calls.sqlite3") as db:
        assert db.execute("SELECT count(*) FROM calls").fetchone() == (0,), "no call left behind"
