"""At-least-once webhook delivery from the persisted outbox, against real receivers.

Each test runs its own ``wacall serve`` with a file database and fast retries
(tests/data/delivery_*.toml: timeout 1 s, backoff 0.2 s doubling up to 1 s), so a receiver can fail,
hang, or outlive a crashed emulator, and the test can check what arrived, byte for byte.
"""

from __future__ import annotations

import hashlib
import hmac
import io
import json
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest

from support.harness import Receiver, Wacall, graph_error, wait_until
from support.sdp_samples import business_answer, business_offer

DATA = Path(__file__).parent / "data"
FAST = DATA / "delivery_fast_retry.toml"
TWO_APPS = DATA / "delivery_two_apps.toml"
SECOND_APP = {"id": "6543210987654321", "secret": "wacall-second-app-secret-fedcba98765",
              "verify_token": "wacall-second-verify-token"}

ALICE = "447700900001"
BRUNO = "5511987650002"
CHITRA = "919876500003"
DAVE = "14155550004"


# ---------------------------------------------------------------------------------------------- fixtures

@pytest.fixture
def emulator(tmp_path):
    """Start a private wacall on a file database in tmp_path (several calls share the same file)."""
    started: list[Wacall] = []

    def start(config: Path = FAST) -> Wacall:
        server = Wacall(db=str(tmp_path / "w.db"), config=str(config)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.close()


@pytest.fixture
def receivers():
    made: list[Receiver] = []

    def make(secret: str, verify_token: str) -> Receiver:
        rx = Receiver(app_secret=secret, verify_token=verify_token).start()
        made.append(rx)
        return rx

    yield make
    for rx in made:
        rx.stop()


@dataclass
class Attempt:
    raw: bytes
    signature: str


def record_attempts(rx: Receiver) -> list[Attempt]:
    """Log every POST the receiver gets (the failed ones too), before it answers."""
    log: list[Attempt] = []
    base = rx.server.RequestHandlerClass

    class Recording(base):
        def do_POST(self) -> None:
            raw = self.rfile.read(int(self.headers.get("Content-Length", "0")))
            with rx.lock:
                log.append(Attempt(raw, self.headers.get("X-Hub-Signature-256", "")))
            self.rfile = io.BytesIO(raw)
            super().do_POST()

    rx.server.RequestHandlerClass = Recording
    return log


# ---------------------------------------------------------------------------------------------- helpers

def config(tmp_path: Path, faults_toml: str = "", **webhooks) -> Path:
    """FAST with its [webhooks] table replaced (and a [webhooks.faults] table, if given)."""
    base = FAST.read_text().split("[webhooks]")[0]
    lines = ["[webhooks]", *(f"{key} = {json.dumps(value)}" for key, value in webhooks.items())]
    path = tmp_path / "wacall.toml"
    path.write_text(base + "\n".join(lines) + "\n" + faults_toml)
    return path


def field_of(body: dict) -> str:
    return body["entry"][0]["changes"][0]["field"]


def item_for(wa: Wacall, key: tuple) -> dict | None:
    return next((i for i in journal(wa) if identity(i["body"]) == key), None)


def text_message(body: dict) -> bool:
    value = body["entry"][0]["changes"][0]["value"]
    return any(m.get("type") == "text" for m in value.get("messages", []))


def in_flight(wa: Wacall) -> int:
    return wa.ctl("GET", "health").json()["webhooks"]["in_flight"]


def signature(secret: str, raw: bytes) -> str:
    return "sha256=" + hmac.new(secret.encode(), raw, hashlib.sha256).hexdigest()


def header(delivery, name: str) -> str:
    return next(v for k, v in delivery.headers.items() if k.lower() == name.lower())


def identity(body: dict) -> tuple:
    """What one outbox item is about: unique per webhook wacall emits."""
    keys = []
    for entry in body["entry"]:
        for change in entry["changes"]:
            value = change["value"]
            keys += [("call", c["id"], c["event"]) for c in value.get("calls", [])]
            keys += [("status", s["id"], s["status"]) for s in value.get("statuses", [])]
            keys += [("message", m["id"]) for m in value.get("messages", [])]
            if change["field"] == "account_settings_update":
                keys.append(("settings", value["phone_number_settings"]["phone_number_id"], value["timestamp"]))
    return tuple(keys)


def events(rx: Receiver) -> set[tuple]:
    """The received webhooks, in the terms a test expects them: calls by (id, event), statuses by
    (id, status), inbound messages by id, permission replies by (context, response, source)."""
    out: set[tuple] = set()
    for delivery in rx.snapshot():
        for change in delivery.changes:
            value = change["value"]
            out |= {("call", c["id"], c["event"]) for c in value.get("calls", [])}
            out |= {("status", s["id"], s["status"]) for s in value.get("statuses", [])}
            for m in value.get("messages", []):
                if m.get("type") == "interactive" and m["interactive"]["type"] == "call_permission_reply":
                    r = m["interactive"]["call_permission_reply"]
                    out.add(("permission_reply", (m.get("context") or {}).get("id"), r["response"],
                             r["response_source"]))
                else:
                    out.add(("message", m["id"]))
            if change["field"] == "account_settings_update":
                out.add(("settings", value["phone_number_settings"]["phone_number_id"]))
    return out


def journal(wa: Wacall, **params) -> list[dict]:
    query = "&".join(f"{k}={v}" for k, v in params.items())
    response = wa.ctl("GET", f"webhooks?{query}" if query else "webhooks")
    assert response.status_code == 200, response.text
    return response.json()["data"]


def subscribe_app(wa: Wacall, app_id: str, secret: str, url: str, verify_token: str):
    return wa.graph("POST", f"{app_id}/subscriptions", token=None, params={
        "object": "whatsapp_business_account", "callback_url": url, "verify_token": verify_token,
        "fields": "calls,messages,account_settings_update", "access_token": f"{app_id}|{secret}"})


def user_call(wa: Wacall, wa_id: str, entry_point: str = "call_button") -> str:
    response = wa.user_calls(wa_id, entry_point=entry_point)
    assert response.status_code == 201, response.text
    return response.json()["call_id"]


def action(wa: Wacall, call_id: str, name: str, with_answer: bool = False) -> None:
    body = {"call_id": call_id, "action": name}
    if with_answer:
        body["session"] = {"sdp_type": "answer", "sdp": business_answer()}
    response = wa.calls_action(body)
    assert response.status_code == 200, response.text


def permission(wa: Wacall, wa_id: str) -> dict:
    response = wa.graph("GET", f"{wa.pnid}/call_permissions", params={"user_wa_id": wa_id})
    assert response.status_code == 200, response.text
    return response.json()["permission"]


# ---------------------------------------------------------------------------------------------- crash + recovery

def test_failing_receiver_and_crash_lose_nothing(emulator, receivers):
    wa = emulator()
    secret = wa.info["app_secret"]
    rx = receivers(secret, wa.info["verify_token"])
    attempts = record_attempts(rx)
    assert wa.subscribe(rx.url).status_code == 200
    rx.fail_remaining = 10**6                         # the receiver is down (HTTP 500) until told otherwise
    expected: set[tuple] = set()

    # -- before the crash ---------------------------------------------------------------------
    changed = wa.graph("POST", f"{wa.pnid}/settings",
                       json={"calling": {"call_icons": {"restrict_to_user_countries": ["GB", "BR"]}}})
    assert changed.status_code == 200, changed.text
    expected.add(("settings", wa.pnid))

    alice_call = user_call(wa, ALICE)
    expected |= {("call", alice_call, "connect"), ("permission_reply", alice_call, "accept", "automatic")}
    action(wa, alice_call, "pre_accept", with_answer=True)
    action(wa, alice_call, "accept", with_answer=True)

    hello = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "call me maybe"})
    assert hello.status_code == 201, hello.text
    expected.add(("message", hello.json()["message_id"]))
    request = wa.graph("POST", f"{wa.pnid}/messages", json={
        "messaging_product": "whatsapp", "to": BRUNO, "type": "interactive",
        "interactive": {"type": "call_permission_request", "action": {"name": "call_permission_request"},
                        "body": {"text": "May we call you?"}}})
    assert request.status_code == 200, request.text
    request_id = request.json()["messages"][0]["id"]
    expected |= {("status", request_id, "sent"), ("status", request_id, "delivered")}
    replied = wa.ctl("POST", f"users/{BRUNO}/permission_replies", {"phone_number_id": wa.pnid, "response": "accept"})
    assert replied.status_code == 200, replied.text
    expected |= {("permission_reply", request_id, "accept", "user_action"), ("status", request_id, "read")}
    wa.advance(5)
    clock_before = wa.ctl("GET", "clock").json()["offset"]

    # the receiver has turned the head of the queue away a few times
    wait_until(lambda: len(journal(wa)[0]["attempt_log"]) >= 2, what="failed attempts", timeout=15)
    assert rx.deliveries == []
    assert {(a["status_code"], a["error"], a["response"]) for a in journal(wa)[0]["attempt_log"]} == {
        (500, "HTTP 500", "down for a test")}               # what the receiver said, kept for the journal
    pending_before = journal(wa)
    assert all(item["status"] == "pending" for item in pending_before)
    assert len(pending_before) >= len(expected)

    wa.kill()                                          # crash: no clean shutdown
    wa.start()                                         # same database, same port

    # -- after the restart: everything the API showed is still there ----------------------------
    assert wa.ctl("GET", "clock").json()["offset"] >= clock_before
    number = wa.graph("GET", wa.pnid)
    assert number.status_code == 200 and number.json()["id"] == wa.pnid
    listed = wa.graph("GET", f"{wa.waba_id}/phone_numbers").json()["data"]
    assert [n["id"] for n in listed] == [wa.pnid]
    calling = wa.graph("GET", f"{wa.pnid}/settings").json()["calling"]
    assert calling["call_icons"] == {"restrict_to_user_countries": ["GB", "BR"]}
    assert calling["status"] == "ENABLED" and calling["callback_permission_status"] == "ENABLED"
    assert permission(wa, BRUNO)["status"] == "temporary"
    assert permission(wa, ALICE)["status"] == "temporary"      # the automatic callback permission
    record = wa.call(alice_call)
    assert record["state"] == "ACCEPTED" and record["direction"] == "USER_INITIATED"
    assert record["accepted_at"] is not None and record["media"] is not None
    after_restart = journal(wa)
    assert [i["id"] for i in after_restart] == [i["id"] for i in pending_before]
    assert len(after_restart[0]["attempt_log"]) >= len(pending_before[0]["attempt_log"])

    # -- more events while the receiver is still failing ----------------------------------------
    action(wa, alice_call, "terminate")
    expected.add(("call", alice_call, "terminate"))

    bic = wa.calls_action({"to": BRUNO, "action": "connect", "biz_opaque_callback_data": "after-crash",
                           "session": {"sdp_type": "offer", "sdp": business_offer()}})
    assert bic.status_code == 200, bic.text
    bic_id = bic.json()["calls"][0]["id"]
    wa.advance(3)                                      # Bruno answers after 2 s
    assert wa.call(bic_id)["state"] == "ACCEPTED"
    wa.advance(10)
    action(wa, bic_id, "terminate")
    expected |= {("call", bic_id, "connect"), ("status", bic_id, "RINGING"), ("status", bic_id, "ACCEPTED"),
                 ("call", bic_id, "terminate")}

    dave_call = user_call(wa, DAVE)
    action(wa, dave_call, "reject")
    expected |= {("call", dave_call, "connect"), ("call", dave_call, "terminate"),
                 ("permission_reply", dave_call, "accept", "automatic")}

    wait_until(lambda: len(journal(wa)[0]["attempt_log"]) > len(after_restart[0]["attempt_log"]) + 1,
               what="failed attempts after the restart", timeout=15)
    assert rx.deliveries == []

    # -- the receiver recovers --------------------------------------------------------------------
    with rx.lock:
        failures = rx.failures_served
        rx.fail_remaining = 0
    assert failures >= 4
    rx.wait(lambda r: expected <= events(r), timeout=20, what=f"every expected event ({len(expected)})")
    items = wait_until(lambda: (j := journal(wa)) and all(i["status"] == "delivered" for i in j) and j,
                       what="the whole outbox delivered", timeout=15)
    received = events(rx)
    assert expected <= received, expected - received
    assert rx.bad_signatures == 0

    # every attempt, failed or not, carried a valid signature over exactly the bytes sent,
    # and every retry of one webhook sent the very same bytes
    by_identity: dict[tuple, set[tuple[bytes, str]]] = {}
    for attempt in attempts:
        assert hmac.compare_digest(attempt.signature, signature(secret, attempt.raw))
        by_identity.setdefault(identity(json.loads(attempt.raw)), set()).add((attempt.raw, attempt.signature))
    assert all(len(variants) == 1 for variants in by_identity.values()), \
        [k for k, v in by_identity.items() if len(v) > 1]
    assert len(attempts) > len(rx.deliveries)

    # the journal: one item per webhook, failures then success; the body is what arrived
    delivered_raw = {identity(d.body): d.raw for d in rx.snapshot()}
    assert len(items) == len(delivered_raw)
    retried = [i for i in items if len(i["attempt_log"]) > 1]
    assert retried and max(len(i["attempt_log"]) for i in items) >= 4
    for item in items:
        log = item["attempt_log"]
        assert log[-1]["status_code"] == 200 and log[-1]["error"] is None, item
        assert all(a["status_code"] == 500 and a["error"] == "HTTP 500" for a in log[:-1]), log
        assert item["attempts"] == len(log) and item["url"] == rx.url
        raw = delivered_raw[identity(item["body"])]
        assert json.loads(raw) == item["body"]
    assert {(i["call_id"]) for i in items if i["field"] == "calls"} == {alice_call, bic_id, dave_call}

    # every webhook was retried on its own schedule: each interval is the backoff after that many failures
    # (tests/data/delivery_fast_retry.toml: 0.2 s doubling, at most 1 s), so none waited for another
    for item in items:
        at = [a["at"] for a in item["attempt_log"]]
        for n in range(1, len(at)):
            assert at[n] - at[n - 1] >= min(0.2 * 2 ** (n - 1), 1.0) - 0.01, (n, at)

    # and after a recovery, a brief outage affects only what is queued then
    rx.fail_remaining = 2
    late = wa.ctl("POST", f"users/{ALICE}/messages", {"to": wa.pnid, "text": "thanks!"}).json()["message_id"]
    rx.wait(lambda r: ("message", late) in events(r))
    item = next(i for i in journal(wa) if identity(i["body"]) == (("message", late),))
    assert [a["status_code"] for a in item["attempt_log"]] == [500, 500, 200]


def test_attempt_cut_short_by_a_crash_is_sent_again(emulator, receivers):
    wa = emulator()
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    attempts = record_attempts(rx)
    assert wa.subscribe(rx.url).status_code == 200
    rx.hang_seconds = 0.8                              # slower than usual, within the 1 s timeout
    call_id = user_call(wa, ALICE)
    wait_until(lambda: attempts, what="the first attempt to reach the receiver", timeout=15)
    wa.kill()                                          # while the receiver is still working on it
    rx.hang_seconds = 0
    wa.start()
    rx.wait(lambda r: len([e for e in r.call_events(call_id) if e["event"] == "connect"]) >= 2,
            what="the connect webhook twice (before and after the crash)")
    connects = [d for d in rx.snapshot() if identity(d.body) == (("call", call_id, "connect"),)]
    assert len({d.raw for d in connects}) == 1
    assert len({header(d, "X-Hub-Signature-256") for d in connects}) == 1
    wait_until(lambda: all(i["status"] == "delivered" for i in journal(wa)), what="outbox delivered", timeout=15)
    assert rx.bad_signatures == 0
    head = journal(wa)[0]
    assert identity(head["body"]) == (("call", call_id, "connect"),)
    assert head["attempt_log"][-1]["status_code"] == 200


def test_receiver_slower_than_the_timeout_is_retried(emulator, receivers):
    wa = emulator()
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    assert wa.subscribe(rx.url).status_code == 200
    rx.hang_seconds = 1.5                              # the timeout is 1 s
    call_id = user_call(wa, ALICE)
    wait_until(lambda: any(a["error"] and "timed out" in a["error"] for a in journal(wa)[0]["attempt_log"]),
               what="an attempt that timed out", timeout=15)
    rx.hang_seconds = 0
    wait_until(lambda: all(i["status"] == "delivered" for i in journal(wa)), what="outbox delivered", timeout=15)
    head = journal(wa, call_id=call_id)[0]
    log = head["attempt_log"]
    assert log[0]["status_code"] is None and log[0]["error"].startswith("timed out")
    assert log[0]["duration_ms"] >= 900
    assert log[-1]["status_code"] == 200 and log[-1]["error"] is None
    connects = rx.wait(lambda r: [e for e in r.call_events(call_id) if e["event"] == "connect"])
    assert connects[0]["id"] == call_id
    assert rx.bad_signatures == 0


# ---------------------------------------------------------------------------------------------- subscriptions

def test_verification_handshake_is_required(emulator, receivers):
    wa = emulator()
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    wrong = wa.graph("POST", f"{wa.app_id}/subscriptions", token=None, params={
        "object": "whatsapp_business_account", "callback_url": rx.url, "verify_token": "not-the-token",
        "fields": "calls", "access_token": wa.app_token})
    error = graph_error(wrong, 2200)
    assert "403" in error["error_data"]["details"]
    assert wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token).json()["data"] == []   # still none

    closed = receivers("x", "y")
    closed.stop()
    graph_error(subscribe_app(wa, wa.app_id, wa.info["app_secret"], closed.url, wa.info["verify_token"]), 2200)

    assert wa.subscribe(rx.url).status_code == 200
    subs = wa.graph("GET", f"{wa.app_id}/subscriptions", token=wa.app_token).json()["data"][0]
    assert subs["callback_url"] == rx.url
    call_id = user_call(wa, ALICE)
    rx.wait(lambda r: r.call_events(call_id))


def test_every_subscribed_app_gets_every_event_signed_with_its_own_secret(emulator, receivers):
    wa = emulator(TWO_APPS)
    first = receivers(wa.info["app_secret"], wa.info["verify_token"])
    second = receivers(SECOND_APP["secret"], SECOND_APP["verify_token"])
    assert wa.subscribe(first.url).status_code == 200
    graph_error(subscribe_app(wa, SECOND_APP["id"], SECOND_APP["secret"], second.url, wa.info["verify_token"]),
                2200)                                  # each app has its own verify token
    ok = subscribe_app(wa, SECOND_APP["id"], SECOND_APP["secret"], second.url, SECOND_APP["verify_token"])
    assert ok.status_code == 200, ok.text

    call_id = user_call(wa, ALICE)
    got = []
    for rx, secret in ((first, wa.info["app_secret"]), (second, SECOND_APP["secret"])):
        rx.wait(lambda r: ("call", call_id, "connect") in events(r)
                and ("permission_reply", call_id, "accept", "automatic") in events(r))
        connect = next(d for d in rx.snapshot() if identity(d.body) == (("call", call_id, "connect"),))
        assert header(connect, "X-Hub-Signature-256") == signature(secret, connect.raw)
        assert rx.bad_signatures == 0
        got.append(connect)
    assert got[0].raw == got[1].raw
    assert header(got[0], "X-Hub-Signature-256") != header(got[1], "X-Hub-Signature-256")
    rows = journal(wa, call_id=call_id)
    assert sorted(i["app_id"] for i in rows if i["field"] == "calls") == sorted([wa.app_id, SECOND_APP["id"]])


def test_waba_and_number_overrides_take_precedence(emulator, receivers):
    wa = emulator()
    token = wa.info["verify_token"]
    app_rx = receivers(wa.info["app_secret"], token)
    waba_rx = receivers(wa.info["app_secret"], "waba-override-token")
    number_rx = receivers(wa.info["app_secret"], "number-override-token")
    assert wa.subscribe(app_rx.url).status_code == 200

    def urls(call_id: str) -> set[str]:
        return {i["url"] for i in journal(wa, call_id=call_id)}

    to_app = user_call(wa, ALICE)
    app_rx.wait(lambda r: r.call_events(to_app))
    assert urls(to_app) == {app_rx.url}

    graph_error(wa.graph("POST", f"{wa.waba_id}/subscribed_apps", json={
        "override_callback_uri": waba_rx.url, "verify_token": "wrong"}), 2200)
    ok = wa.graph("POST", f"{wa.waba_id}/subscribed_apps", json={
        "override_callback_uri": waba_rx.url, "verify_token": "waba-override-token"})
    assert ok.status_code == 200 and ok.json() == {"success": True}, ok.text
    listed = wa.graph("GET", f"{wa.waba_id}/subscribed_apps").json()["data"]
    assert listed[0]["override_callback_uri"] == waba_rx.url
    to_waba = user_call(wa, BRUNO)
    waba_rx.wait(lambda r: ("call", to_waba, "connect") in events(r))
    assert urls(to_waba) == {waba_rx.url}

    graph_error(wa.graph("POST", wa.pnid, json={"webhook_configuration": {
        "override_callback_uri": number_rx.url, "verify_token": "wrong"}}), 2200)
    ok = wa.graph("POST", wa.pnid, json={"webhook_configuration": {
        "override_callback_uri": number_rx.url, "verify_token": "number-override-token"}})
    assert ok.status_code == 200, ok.text
    node = wa.graph("GET", wa.pnid, params={"fields": "webhook_configuration"}).json()
    assert node["webhook_configuration"]["phone_number"] == number_rx.url
    to_number = user_call(wa, CHITRA)
    number_rx.wait(lambda r: ("call", to_number, "connect") in events(r)
                   and ("permission_reply", to_number, "accept", "automatic") in events(r))
    assert urls(to_number) == {number_rx.url}
    assert ("call", to_number, "connect") not in events(waba_rx) | events(app_rx)

    # removing the number's override falls back to the WABA's
    cleared = wa.graph("POST", wa.pnid, json={"webhook_configuration": {"override_callback_uri": ""}})
    assert cleared.status_code == 200, cleared.text
    action(wa, to_number, "reject")
    waba_rx.wait(lambda r: ("call", to_number, "terminate") in events(r))
    assert all(rx.bad_signatures == 0 for rx in (app_rx, waba_rx, number_rx))
    assert ("call", to_waba, "connect") not in events(app_rx) | events(number_rx)

    # the overrides are stored state: they survive a crash
    ok = wa.graph("POST", wa.pnid, json={"webhook_configuration": {
        "override_callback_uri": number_rx.url, "verify_token": "number-override-token"}})
    assert ok.status_code == 200, ok.text
    wa.kill()
    wa.start()
    assert wa.graph("GET", f"{wa.waba_id}/subscribed_apps").json()["data"][0]["override_callback_uri"] == waba_rx.url
    after = user_call(wa, DAVE)
    number_rx.wait(lambda r: ("call", after, "connect") in events(r))
    assert urls(after) == {number_rx.url}


# ---------------------------------------------------------------------------------------------- independence

#: Retries only when the test moves the virtual clock: 60 s, then 120, 240... (a 20 s timeout, as Meta's).
SCHEDULE = {"timeout_seconds": 20, "retry_base_seconds": 60, "retry_factor": 2, "retry_max_seconds": 3600,
            "concurrent_per_url": 4}


def test_refused_event_does_not_hold_back_later_ones_and_is_retried_on_meta_schedule(emulator, receivers, tmp_path):
    wa = emulator(config(tmp_path, **SCHEDULE))
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    rx.refuse = lambda body: 400 if field_of(body) == "messages" else None     # a calls-only bot
    assert wa.subscribe(rx.url).status_code == 200

    hello = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "do you sell ferns?"})
    assert hello.status_code == 201, hello.text
    key = (("message", hello.json()["message_id"]),)
    wait_until(lambda: (i := item_for(wa, key)) and i["attempts"] == 1, what="the refused first attempt")

    # every later event still arrives at once, on its first attempt
    call_id = user_call(wa, ALICE)
    action(wa, call_id, "reject")
    rx.wait(lambda r: {("call", call_id, "connect"), ("call", call_id, "terminate")} <= events(r))
    for item in journal(wa, call_id=call_id):
        if item["field"] == "calls":       # (the automatic callback permission is a `messages` event: refused)
            assert item["status"] == "delivered" and [a["status_code"] for a in item["attempt_log"]] == [200], item

    # the refused one waits for its retry, 60 s on the virtual clock, then 120, 240...
    item = item_for(wa, key)
    assert item["status"] == "pending" and item["attempts"] == 1
    assert item["attempt_log"][0]["status_code"] == 400 and item["attempt_log"][0]["error"] == "HTTP 400"
    assert item["next_attempt_at"] == pytest.approx(item["attempt_log"][0]["at"] + 60)
    for made, wait in ((2, 60), (3, 120), (4, 240)):
        wa.advance(wait)
        item = wait_until(lambda: (i := item_for(wa, key)) and i["attempts"] == made and i,
                          what=f"attempt {made} after {wait} s")
        assert item["next_attempt_at"] == pytest.approx(item["attempt_log"][-1]["at"] + 2 * wait)
        assert item["status"] == "pending"
    refused = [p for p in rx.snapshot() if identity(p.body) == key]
    assert refused == []
    assert len([p for p in rx.posts if identity(p.body) == key]) == 4

    # Meta keeps trying for up to 7 days, then drops it
    wa.advance(7 * 86400)
    item = wait_until(lambda: (i := item_for(wa, key)) and i["status"] == "expired" and i, what="expiry")
    assert item["attempts"] == 5 and all(a["status_code"] == 400 for a in item["attempt_log"])
    assert rx.bad_signatures == 0


def test_hanging_event_does_not_hold_back_later_ones(emulator, receivers, tmp_path):
    wa = emulator(config(tmp_path, **SCHEDULE))
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    release = threading.Event()
    rx.hold = lambda body: release if text_message(body) else None     # the user's text only
    assert wa.subscribe(rx.url).status_code == 200

    hello = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "hello?"}).json()["message_id"]
    wait_until(lambda: any(identity(p.body) == (("message", hello),) for p in rx.posts), what="the held POST")
    call_id = user_call(wa, ALICE)
    action(wa, call_id, "reject")
    rx.wait(lambda r: {("call", call_id, "connect"), ("call", call_id, "terminate")} <= events(r))
    assert ("message", hello) not in events(rx)
    held = item_for(wa, (("message", hello),))
    assert held["status"] == "pending" and held["attempt_log"] == []      # still waiting for its answer
    assert in_flight(wa) == 1
    release.set()
    item = wait_until(lambda: (i := item_for(wa, (("message", hello),))) and i["status"] == "delivered" and i,
                      what="the held webhook delivered")
    assert [a["status_code"] for a in item["attempt_log"]] == [200]


def test_concurrent_attempts_per_url_are_bounded(emulator, receivers, tmp_path):
    wa = emulator(config(tmp_path, **{**SCHEDULE, "concurrent_per_url": 2}))
    rx = receivers(wa.info["app_secret"], wa.info["verify_token"])
    release = threading.Event()
    rx.hold = lambda body: release
    assert wa.subscribe(rx.url, fields="messages").status_code == 200
    sent = [wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": f"m{n}"}).json()["message_id"]
            for n in range(3)]
    wait_until(lambda: len(rx.posts) == 2, what="two POSTs in flight")
    assert len(journal(wa)) == 3 and in_flight(wa) == 2 and len(rx.posts) == 2    # the third waits for a slot
    release.set()
    wait_until(lambda: all(i["status"] == "delivered" for i in journal(wa)), what="all three delivered")
    assert events(rx) == {("message", m) for m in sent}
    assert all(len(i["attempt_log"]) == 1 for i in journal(wa))


def test_one_failing_app_does_not_slow_another(emulator, receivers):
    wa = emulator(TWO_APPS)
    good = receivers(wa.info["app_secret"], wa.info["verify_token"])
    bad = receivers(SECOND_APP["secret"], SECOND_APP["verify_token"])
    release = threading.Event()
    bad.hold = lambda body: release                     # hangs past the 1 s timeout on everything...
    bad.refuse = lambda body: 500                       # ...and then refuses it
    assert wa.subscribe(good.url).status_code == 200
    assert subscribe_app(wa, SECOND_APP["id"], SECOND_APP["secret"], bad.url,
                         SECOND_APP["verify_token"]).status_code == 200

    changed = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {"call_icon_visibility": "DEFAULT"}})
    assert changed.status_code == 200, changed.text
    call_id = user_call(wa, ALICE)
    action(wa, call_id, "reject")
    hello = wa.ctl("POST", f"users/{BRUNO}/messages", {"to": wa.pnid, "text": "hi"}).json()["message_id"]
    expected = {("settings", wa.pnid), ("call", call_id, "connect"), ("call", call_id, "terminate"),
                ("permission_reply", call_id, "accept", "automatic"), ("message", hello)}
    good.wait(lambda r: expected <= events(r), what="everything at the good app")
    for item in journal(wa):
        if item["app_id"] == wa.app_id:
            assert item["status"] == "delivered" and len(item["attempt_log"]) == 1, item
    assert events(bad) == set()
    bad_items = [i for i in journal(wa) if i["app_id"] == SECOND_APP["id"]]
    assert len(bad_items) == len([i for i in journal(wa) if i["app_id"] == wa.app_id])
    assert all(i["status"] == "pending" for i in bad_items)

    bad.refuse = None
    release.set()
    wait_until(lambda: all(i["status"] == "delivered" for i in journal(wa)), what="the second app recovers",
               timeout=20)
    assert expected <= events(bad)
    assert good.bad_signatures == 0 and bad.bad_signatures == 0
