"""Resources run out the way Meta runs out: under `ulimit -n 1024` (soft and hard), Meta's per-number cap
of 1000 concurrent calls fits, each with a media leg; the 1001st connect gets 138002; the process
holds far fewer descriptors than calls; after every call ended, new calls get both the IPv4 and the
IPv6 candidate again."""

from __future__ import annotations

import os
import re
import socket
from concurrent.futures import ThreadPoolExecutor

import pytest

from support.harness import Wacall
from support.sdp_samples import business_offer

CALLS = 1000


def open_descriptors(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@pytest.fixture
def capped():
    wa = Wacall(open_files=1024).start()
    yield wa
    wa.close()


def test_1000_concurrent_calls_under_ulimit_1024(capped):
    wa = capped
    wa.media_timeouts(False)                       # these businesses send no media: signalling at Meta's scale
    limits = open(f"/proc/{wa.proc.pid}/limits").read()
    assert re.search(r"Max open files\s+1024\s+1024", limits), limits
    users = [f"4479{n:08d}" for n in range(CALLS + 1)]

    def prepare(wa_id: str) -> None:
        assert wa.ctl("POST", "users", {"wa_id": wa_id, "answer_after": 0.2}).status_code == 201
        assert wa.ctl("POST", f"users/{wa_id}/permission_replies", {
            "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200

    def connect(wa_id: str):
        return wa.calls_action({"to": wa_id, "action": "connect",
                                "session": {"sdp_type": "offer", "sdp": business_offer()}})

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(prepare, users))
        responses = list(pool.map(connect, users[:CALLS]))
    assert [r.status_code for r in responses] == [200] * CALLS, next(r.text for r in responses if r.status_code != 200)
    call_ids = [r.json()["calls"][0]["id"] for r in responses]

    over = connect(users[CALLS])
    assert over.status_code == 429 and over.json()["error"]["code"] == 138002, over.text

    wa.wait_for(lambda: sum(c["state"] == "ACCEPTED" for c in wa.ctl("GET", "calls").json()["data"]) == CALLS,
                timeout=60, what="1000 calls answered by their users")
    health = wa.ctl("GET", "health").json()
    assert health["media"]["live"] == CALLS
    assert open_descriptors(wa.proc.pid) < 200, "calls must not cost descriptors"

    def terminate(call_id: str) -> int:
        return wa.calls_action({"call_id": call_id, "action": "terminate"}).status_code

    with ThreadPoolExecutor(8) as pool:
        assert set(pool.map(terminate, call_ids)) == {200}
    assert wa.ctl("GET", "health").json()["media"]["live"] == 0
    again = connect(users[CALLS])
    assert again.status_code == 200, again.text
    sdp = wa.call(again.json()["calls"][0]["id"])["meta_sdp"]
    candidates = re.findall(r"^a=candidate:\S+ 1 udp \d+ (\S+) \d+ typ host", sdp, re.M)
    assert candidates == ["127.0.0.1", "::1"], sdp
    log = wa.proc.stderr.read() if wa.proc.poll() is not None else ""
    assert "Traceback" not in log


def test_descriptors_exhausted_by_idle_clients_give_the_transient_error_then_recover():
    """Idle TCP clients eat every descriptor wacall may open (ulimit -n 100) before the relay has bound
    its port: calls get Meta's transient error (Graph code 2, never code 1 or a 500; a user's call the
    app's "couldn't place call"), the log says so once, and all is well once the clients go."""
    wa = Wacall(open_files=100).start()
    idle: list[socket.socket] = []
    try:
        wa.media_timeouts(False)
        granted = wa.ctl("POST", "users/447700900001/permission_replies", {
            "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"})
        assert granted.status_code == 200
        port = int(wa.url.rsplit(":", 1)[1])
        for _ in range(150):                      # more than the limit: the last ones wait in the backlog
            idle.append(socket.create_connection(("127.0.0.1", port)))
        wa.wait_for(lambda: open_descriptors(wa.proc.pid) >= 95, what="wacall out of descriptors")
        for _ in range(2):
            refused = wa.calls_action({"to": "447700900001", "action": "connect",
                                       "session": {"sdp_type": "offer", "sdp": business_offer()}})
            assert refused.status_code == 503, refused.text
            error = refused.json()["error"]
            assert error["code"] == 2 and error["is_transient"] is True
        user_call = wa.user_calls("5511987650002")
        assert user_call.status_code == 503 and user_call.json()["error"]["reason"] == "cannot_place_call"
        for sock in idle:
            sock.close()
        idle.clear()
        wa.wait_for(lambda: wa.user_calls("919876500003").status_code == 201, what="calls placed again")
        placed = wa.calls_action({"to": "447700900001", "action": "connect",
                                  "session": {"sdp_type": "offer", "sdp": business_offer()}})
        assert placed.status_code == 200, placed.text
    finally:
        for sock in idle:
            sock.close()
        wa.close()
    log = wa.proc.stderr.read()
    assert log.count("media capacity exhausted") == 1 and "media capacity recovered" in log
    assert "Traceback" not in log
