"""Webhook fault injection (docs/control-api.md, "Webhook faults"): duplicates, delays, reordering, failing
and timed-out first attempts, per field or event kind, seeded and reproducible; every injected fault is on
the journal and the call's timeline. Real receivers, a real wacall; the virtual clock moves through holds
and retries."""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import pytest

from support.harness import Receiver, Wacall, wait_until
from wacall.control.client import ControlClient, ControlRefused

ALICE = "447700900001"
BRUNO = "5511987650002"
DATA = Path(__file__).parent / "data"


def set_faults(wa: Wacall, **plan) -> dict:
    response = wa.ctl("POST", "webhooks/faults", plan)
    assert response.status_code == 200, response.text
    return response.json()


def journal(wa: Wacall, **query) -> list[dict]:
    suffix = "&".join(f"{k}={v}" for k, v in query.items())
    return wa.ctl("GET", f"webhooks?{suffix}").json()["data"]


def call_items(wa: Wacall, call_id: str, event: str) -> list[dict]:
    return [i for i in journal(wa, call_id=call_id) if i["field"] == "calls"
            and any(c["event"] == event for c in i["body"]["entry"][0]["changes"][0]["value"].get("calls", []))]


def posts_of(rx: Receiver, call_id: str, event: str) -> list:
    return [p for p in list(rx.posts) if any(c["id"] == call_id and c["event"] == event
                                            for c in p.body["entry"][0]["changes"][0]["value"].get("calls", []))]


def fault_notes(wa: Wacall, call_id: str) -> list[dict]:
    return [e for e in wa.call(call_id)["timeline"] if e["kind"] == "webhook_fault"]


def text_ids(rx: Receiver) -> list[str]:
    """Inbound text message ids in the order the receiver accepted them."""
    return [m["id"] for d in rx.snapshot() for m in d.value.get("messages", []) if m.get("type") == "text"]


def send_texts(wa: Wacall, n: int) -> list[str]:
    out = []
    for k in range(n):
        response = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": f"message {k}"})
        assert response.status_code == 201, response.text
        out.append(response.json()["message_id"])
    return out


def test_duplicate_of_one_event_kind(wa, receiver):
    plan = set_faults(wa, seed=1, rules=[{"kind": "duplicate", "field": "calls", "event": "connect"}])
    assert plan["rules"][0]["kind"] == "duplicate" and plan["rules"][0]["copies"] == 1 and plan["seed"] == 1
    call_id = wa.user_calls(ALICE).json()["call_id"]
    assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
    receiver.wait(lambda r: len([e for e in r.call_events(call_id) if e["event"] == "connect"]) == 2
                  and [e for e in r.call_events(call_id) if e["event"] == "terminate"], what="two connects")
    connects = [d for d in receiver.snapshot() if any(c["id"] == call_id and c["event"] == "connect"
                                                    for c in d.value.get("calls", []))]
    assert len({d.raw for d in connects}) == 1                                    # byte-identical, same signature
    assert len({d.headers["X-Hub-Signature-256"] for d in connects}) == 1
    assert len([e for e in receiver.call_events(call_id) if e["event"] == "terminate"]) == 1
    items = call_items(wa, call_id, "connect")
    assert sorted(i["fault"][0].get("copy", 0) for i in items) == [0, 1]
    assert all(i["fault"][0]["kind"] == "duplicate" for i in items)
    assert call_items(wa, call_id, "terminate")[0]["fault"] is None
    notes = fault_notes(wa, call_id)
    assert [(n["fault"], n["event"], n["field"]) for n in notes] == [("duplicate", "connect", "calls")]
    assert wa.ctl("GET", "webhooks/faults").json()["rules"][0]["hits"] == 1


def test_delay_holds_the_first_attempt_on_the_virtual_clock(wa, receiver):
    set_faults(wa, rules=[{"kind": "delay", "event": "terminate", "seconds": 300}])
    call_id = wa.user_calls(ALICE).json()["call_id"]
    assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e["event"] == "connect"])
    held = call_items(wa, call_id, "terminate")[0]
    assert held["status"] == "pending" and held["attempt_log"] == []
    assert held["next_attempt_at"] == pytest.approx(held["created_at"] + 300)
    assert held["fault"] == [{"kind": "delay", "rule": 0, "seconds": 300.0}]
    assert not [e for e in receiver.call_events(call_id) if e["event"] == "terminate"]
    wa.advance(300)
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e["event"] == "terminate"], what="terminate")
    note = fault_notes(wa, call_id)[0]
    assert (note["fault"], note["event"], note["seconds"]) == ("delay", "terminate", 300.0)
    attempt = [e for e in wa.call(call_id)["timeline"] if e["kind"] == "webhook_attempt"
               and e.get("fault")]
    assert attempt and attempt[0]["fault"][0]["kind"] == "delay" and attempt[0]["status_code"] == 200


def reorder_run(wa: Wacall, receiver: Receiver, seed: int) -> tuple[list[float], list[int]]:
    """Five texts under a 60 s reorder window; returns the seeded holds and the arrival order (as send
    positions), moving the virtual clock to each hold in turn."""
    set_faults(wa, seed=seed, rules=[{"kind": "reorder", "field": "messages", "event": "text", "window": 60}])
    sent = send_texts(wa, 5)
    items = {i["body"]["entry"][0]["changes"][0]["value"]["messages"][0]["id"]: i for i in journal(wa)
             if i["field"] == "messages"}
    holds = [items[m]["fault"][0]["seconds"] for m in sent]
    assert all(0 <= h <= 60 for h in holds)
    moved = 0.0
    for k, hold in sorted(enumerate(holds), key=lambda p: p[1]):
        wa.advance(max(0.0, hold - moved) + 0.001)
        moved = hold + 0.001
        receiver.wait(lambda r: sent[k] in text_ids(r), what=f"message {k} after its {hold} s hold")
    return holds, [sent.index(m) for m in text_ids(receiver)]


def test_reorder_within_a_window_is_reproducible_with_a_seed(wa, receiver):
    holds, order = reorder_run(wa, receiver, seed=1)          # seed 1: holds at least 5 s apart
    assert order == sorted(range(5), key=lambda k: holds[k])
    assert order != [0, 1, 2, 3, 4]                           # the messages did arrive out of order
    assert fault_kinds(wa) == {"reorder"}
    for seed, same in ((1, True), (7, False)):
        wa.reset()
        rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
        try:
            assert wa.subscribe(rx.url).status_code == 200
            again = reorder_run(wa, rx, seed=seed)
        finally:
            rx.stop()
        assert (again == (holds, order)) is same, (seed, again, holds)


def fault_kinds(wa: Wacall) -> set[str]:
    return {f["kind"] for i in journal(wa) for f in i["fault"] or []}


def test_failing_first_attempts_never_reach_the_receiver_then_succeed(wa, receiver):
    set_faults(wa, rules=[{"kind": "fail", "field": "calls", "event": "connect", "attempts": 2}])
    call_id = wa.user_calls(ALICE).json()["call_id"]
    item = wait_until(lambda: (i := call_items(wa, call_id, "connect")) and i[0]["attempts"] == 1 and i[0],
                      what="the first injected failure")
    assert item["attempt_log"][0]["error"].startswith("injected fault: fail")
    assert item["attempt_log"][0]["status_code"] is None
    wa.advance(1)
    wait_until(lambda: call_items(wa, call_id, "connect")[0]["attempts"] == 2, what="the second failure")
    wa.advance(2)
    receiver.wait(lambda r: r.call_events(call_id), what="the connect after two injected failures")
    item = call_items(wa, call_id, "connect")[0]
    assert [a["status_code"] for a in item["attempt_log"]] == [None, None, 200]
    assert len(posts_of(receiver, call_id, "connect")) == 1          # the failures never reached it
    timeline = wa.call(call_id)["timeline"]
    attempts = [e for e in timeline if e["kind"] == "webhook_attempt" and e["field"] == "calls"]
    assert [bool(e["error"]) for e in attempts] == [True, True, False]
    assert fault_notes(wa, call_id)[0]["attempts"] == 2


def test_timed_out_first_attempt_reaches_the_receiver_twice(wa, receiver):
    set_faults(wa, rules=[{"kind": "timeout", "event": "connect", "count": 1}])
    first = wa.user_calls(ALICE).json()["call_id"]
    wait_until(lambda: call_items(wa, first, "connect")[0]["attempts"] == 1, what="the timed-out attempt")
    wa.advance(1)
    receiver.wait(lambda r: len(posts_of(r, first, "connect")) == 2, what="the connect sent again")
    item = wait_until(lambda: (i := call_items(wa, first, "connect")[0]) and i["status"] == "delivered" and i,
                      what="delivered on the retry")
    log = item["attempt_log"]
    assert log[0]["status_code"] == 200 and log[0]["error"] == (
        "injected fault: timeout (the receiver answered HTTP 200)")
    assert log[1]["status_code"] == 200 and log[1]["error"] is None
    # count: 1 -- the next call's connect is not touched
    second = wa.user_calls(BRUNO).json()["call_id"]
    receiver.wait(lambda r: posts_of(r, second, "connect"))
    assert call_items(wa, second, "connect")[0]["fault"] is None
    assert wa.ctl("GET", "webhooks/faults").json()["rules"][0]["hits"] == 1


def test_probability_is_seeded(wa, receiver):
    def run(seed: int) -> list[bool]:
        set_faults(wa, seed=seed, rules=[{"kind": "duplicate", "field": "messages", "event": "text",
                                          "probability": 0.5}])
        sent = send_texts(wa, 12)
        items = [i for i in journal(wa) if i["field"] == "messages"]
        return [sum(1 for i in items if i["body"]["entry"][0]["changes"][0]["value"]["messages"][0]["id"] == m) == 2
                for m in sent]

    first = run(99)
    assert 0 < sum(first) < 12
    for seed, same in ((99, True), (100, False)):
        wa.reset()                                         # (a reset also drops the subscription)
        assert wa.subscribe(receiver.url).status_code == 200
        assert (run(seed) == first) is same


def test_ordered_mode_is_opt_in_strict_head_of_line(wa, receiver):
    release = threading.Event()
    receiver.hold = lambda body: release if body["entry"][0]["changes"][0]["field"] == "messages" else None
    set_faults(wa, ordered=True)
    hello = send_texts(wa, 1)[0]
    wait_until(lambda: receiver.posts, what="the held message")
    call_id = wa.user_calls(ALICE).json()["call_id"]
    assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
    pending = [i for i in journal(wa) if i["field"] == "calls"]
    assert len(pending) == 2 and all(i["attempt_log"] == [] for i in pending)
    assert len(receiver.posts) == 1                                   # everything waits behind the head
    release.set()
    receiver.wait(lambda r: [e for e in r.call_events(call_id) if e["event"] == "terminate"])
    order = [d.field for d in receiver.snapshot()]
    assert order[0] == "messages" and text_ids(receiver) == [hello]
    assert wa.ctl("GET", "webhooks/faults").json()["ordered"] is True
    assert wa.ctl("DELETE", "webhooks/faults").json() == {"seed": wa.ctl("GET", "webhooks/faults").json()["seed"],
                                                           "ordered": False, "rules": []}


@pytest.mark.parametrize("body", [
    [], "x", {"rules": "duplicate"}, {"rules": [{"kind": "explode"}]}, {"rules": [{"kind": "delay", "copies": 2}]},
    {"rules": [{"kind": "delay", "seconds": -1}]}, {"rules": [{"kind": "reorder", "window": "1"}]},
    {"rules": [{"kind": "fail", "attempts": 0}]}, {"rules": [{"kind": "fail", "field": "statuses"}]},
    {"rules": [{"kind": "duplicate", "probability": 1.5}]}, {"rules": [{"kind": "duplicate", "copies": True}]},
    {"rules": [{"kind": "timeout", "event": ""}]}, {"seed": -1}, {"seed": 1.5}, {"ordered": "yes"},
    {"rules": [{"kind": "delay", "seconds": float("nan")}]}, {"surprise": 1}, {"rules": [None]},
    {"rules": [{"kind": "delay"}] * 101},
])
def test_bad_fault_plans_are_refused(wa, body):
    before = wa.ctl("GET", "webhooks/faults").json()
    raw = json.dumps(body).encode()
    response = wa.http.post(f"{wa.url}/_wacall/webhooks/faults", content=raw,
                            headers={"Content-Type": "application/json"})
    assert response.status_code == 400, response.text
    assert response.json()["error"]["reason"] in ("bad_fault", "bad_json")
    assert wa.ctl("GET", "webhooks/faults").json() == before


def test_faults_from_the_config_file_and_the_python_client(tmp_path):
    config = (DATA / "delivery_fast_retry.toml").read_text() + """
[webhooks.faults]
seed = 5
rules = [{ kind = "duplicate", field = "calls", event = "terminate", copies = 2 }]
"""
    path = tmp_path / "wacall.toml"
    path.write_text(config)
    wa = Wacall(config=str(path)).start()
    rx = Receiver(app_secret=wa.info["app_secret"], verify_token=wa.info["verify_token"]).start()
    try:
        assert wa.subscribe(rx.url).status_code == 200
        call_id = wa.user_calls(ALICE).json()["call_id"]
        assert wa.calls_action({"call_id": call_id, "action": "reject"}).status_code == 200
        rx.wait(lambda r: len([e for e in r.call_events(call_id) if e["event"] == "terminate"]) == 3,
                what="the terminate and its two copies")
        assert [n["copies"] for n in fault_notes(wa, call_id)] == [2]

        async def script() -> tuple[dict, dict, dict]:
            async with ControlClient(wa.url) as control:
                current = await control.webhook_faults()
                with pytest.raises(ControlRefused) as refused:
                    await control.set_webhook_faults({"kind": "delay", "seconds": "soon"})
                assert refused.value.status == 400 and refused.value.reason == "bad_fault"
                replaced = await control.set_webhook_faults({"kind": "fail", "app_id": wa.app_id}, seed=3)
                await control.reset()
                return current, replaced, await control.webhook_faults()

        current, replaced, after_reset = asyncio.run(script())
        assert current["seed"] == 5 and current["rules"][0]["hits"] == 1
        assert replaced == {"seed": 3, "ordered": False, "rules": [
            {"kind": "fail", "app_id": wa.app_id, "probability": 1.0, "attempts": 1, "hits": 0}]}
        assert after_reset["seed"] == 5 and after_reset["rules"][0]["hits"] == 0    # reset: the config's plan
    finally:
        rx.stop()
        wa.close()


def test_a_bad_fault_table_in_the_config_file_is_refused_at_start(tmp_path):
    path = tmp_path / "wacall.toml"
    path.write_text((DATA / "delivery_fast_retry.toml").read_text()
                    + '\n[webhooks.faults]\nrules = [{ kind = "explode" }]\n')
    with pytest.raises(RuntimeError, match="kind must be one of"):
        Wacall(config=str(path)).start()
