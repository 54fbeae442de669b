"""The bridge's ``GET call_permissions`` checks against Meta's rate limit for that endpoint (5 requests per second
per number; 613 above it; wacall enforces it): paced and, when still rate-limited, retried while the PBX's INVITE
can wait (:class:`wacall.bridge.app.PermissionChecks`); a 613 that persists is a 480 (with Retry-After) to the PBX naming Meta's code.

The checks are driven against wacall's Graph directly (lean: no SIP, no media), and once through the bridge
(the rtpengine chain of test_bridge_rtpengine) with a burst of INVITEs from a bare UDP socket."""

from __future__ import annotations

import asyncio
import re
import socket
import time

import pytest

from test_bridge_rtpengine import ALICE, DOMAIN, bridged  # noqa: F401
from support.bridge_tools import free_udp_port
from wacall.bridge.app import PermissionCheckBusy, PermissionChecks
from wacall.business import GraphApiError, GraphClient
from wacall.sip.message import parse_message


def _client(wa) -> GraphClient:
    return GraphClient(wa.pnid, wa.token, base_url=wa.url, attempts=1)


async def test_a_burst_above_metas_rate_is_paced_and_every_check_answers(wa):
    await asyncio.to_thread(wa.grant_permission, ALICE)
    async with _client(wa) as graph:
        unpaced = PermissionChecks(graph, 0)     # the control: all at once, no retry (deadline < 1 s)
        now = time.monotonic()
        results = await asyncio.gather(*(unpaced.check(ALICE, now + 0.5) for _ in range(12)), return_exceptions=True)
        refused = [r for r in results if isinstance(r, GraphApiError)]
        assert refused and all(r.code == 613 and r.status == 429 for r in refused), results
        await asyncio.sleep(1.1)                             # Meta's window passes
        paced = PermissionChecks(graph, 5)
        deadline = time.monotonic() + 10
        results = await asyncio.gather(*(paced.check(ALICE, deadline) for _ in range(12)), return_exceptions=True)
        assert [(r.get("permission") or {}).get("status") if isinstance(r, dict) else r for r in results] \
            == ["temporary"] * 12


async def test_a_rate_limit_that_persists_gives_up_at_the_deadline(wa):
    assert wa.ctl("PATCH", "limits", {"call_permissions_per_second": 0}).status_code == 200
    async with _client(wa) as graph:
        checks = PermissionChecks(graph, 5)
        started = time.monotonic()
        with pytest.raises(GraphApiError) as refused:
            await checks.check(ALICE, started + 2.5)
        assert refused.value.code == 613
        assert time.monotonic() < started + 2.5 + 1        # never beyond the deadline (and the last answer)
        # a queue longer than the deadline allows is refused at once, not held past it
        checks._next = time.monotonic() + 60
        with pytest.raises(PermissionCheckBusy):
            await checks.check(ALICE, time.monotonic() + 5)


def _invite(host: str, port: str, me: tuple[str, int], n: int, user: str) -> bytes:
    sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           f"m=audio {free_udp_port()} RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
           f"a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
    return (f"INVITE sip:+{user}@{host}:{port} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bKburst{n}\r\n"
            f"From: <sip:agent@{DOMAIN}>;tag=agent{n}\r\nTo: <sip:+{user}@{DOMAIN}>\r\n"
            f"Call-ID: burst{n}@pbx\r\nCSeq: 1 INVITE\r\nContact: <sip:agent@{me[0]}:{me[1]}>\r\n"
            f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}").encode()


def _answers(sock: socket.socket, wanted) -> dict[str, list]:
    """What the bridge answers each INVITE, until ``wanted(answers)`` holds."""
    answers: dict[str, list] = {}
    while not wanted(answers):
        data, _ = sock.recvfrom(65536)
        message = parse_message(data)
        if getattr(message, "status", None) is not None:
            answers.setdefault(message.call_id, []).append(message)
    return answers


async def test_a_burst_of_invites_above_the_rate_all_reach_whatsapp(bridged):  # noqa: F811
    wa, _, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    assert wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "manual"}).status_code == 200
    host, port = bridge.info["sip"].rsplit(":", 1)
    n = 12
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx:
        pbx.bind(("127.0.0.1", 0))
        pbx.settimeout(15)
        for i in range(n):
            pbx.sendto(_invite(host, port, pbx.getsockname(), i, ALICE), (host, int(port)))

        def past_the_check(answers):                       # each: 180 (Graph connect rang) or a final answer
            return len([a for a in answers.values() if any(m.status >= 180 for m in a)]) == n
        answers = await asyncio.to_thread(_answers, pbx, past_the_check)
    assert all(a[0].status == 100 for a in answers.values()), "100 Trying first"
    log = bridge.log_text()
    finals = [m for a in answers.values() for m in a if m.status >= 300]
    # every call reached Graph connect: it rang (180), or Meta refused the connect itself (one user: 138003,
    # duplicate call), never the permission check
    assert all(re.search(r'"WhatsApp error 138\d\d\d: ', m.headers.get("Warning") or "") for m in finals), \
        [(m.status, m.headers.get("Warning")) for m in finals]
    assert len(re.findall(r"Graph connect to \+" + ALICE, log)) + \
        len(re.findall(r"Graph refused: code 138\d+", log)) == n, log[-4000:]
    assert "Graph refused: code 613" not in log


@pytest.mark.parametrize("bridged", [{"graph": "permission_wait_seconds = 2"}], indirect=True)
async def test_a_rate_limit_that_persists_is_a_480_naming_metas_code(bridged):  # noqa: F811
    wa, agent, bridge, _, _ = bridged
    await asyncio.to_thread(wa.grant_permission, ALICE)
    assert wa.ctl("PATCH", "limits", {"call_permissions_per_second": 0}).status_code == 200
    await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
    await agent.wait_event("CALL_CLOSED", 15)
    trace = agent.stdout_log.read_text(errors="replace")
    assert re.search(r"^SIP/2.0 480 Temporarily Unavailable", trace, re.M), trace[-3000:]
    assert re.search(r'^Warning: 399 \S+ "WhatsApp error 613: ', trace, re.M), trace[-3000:]
    assert re.search(r"^Retry-After: 1", trace, re.M), trace[-3000:]
    assert not [c for c in wa.ctl("GET", "calls").json()["data"] if c["direction"] == "BUSINESS_INITIATED"]


@pytest.mark.parametrize("key,value", [("permission_checks_per_second", -1), ("permission_wait_seconds", "10"),
                                       ("permission_wait_seconds", True)])
def test_the_pacing_keys_are_checked(key, value):
    from wacall.bridge.config import build_bridge_config
    raw = {"graph": {"phone_number_id": "1", "token": "t", key: value},
           "webhook": {"app_secret": "s", "verify_token": "v"}}
    with pytest.raises(ValueError, match=f"graph.{key}"):
        build_bridge_config(raw)
    raw["graph"][key] = 2.5
    assert getattr(build_bridge_config(raw).graph, key) == 2.5
