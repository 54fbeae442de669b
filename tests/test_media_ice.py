"""The relay's ICE-lite behaviour inside a call: a business agent that claims the controlled role
gets 487 Role Conflict, the reason lands on the timeline, and the call fails instead of hanging."""

from __future__ import annotations

import re
import socket

from support.sdp_samples import business_answer
from wacall.media.stun import StunMessage, binding_request

ALICE = "447700900001"


def test_controlled_business_agent_gets_role_conflict_and_documented_failure(wa):
    wa.reset(media_timeouts=True)
    call_id = wa.user_calls(ALICE).json()["call_id"]
    offer = wa.call(call_id)["meta_sdp"]
    ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
    pwd = re.search(r"a=ice-pwd:(\S+)", offer).group(1)
    port = int(re.search(r"m=audio (\d+)", offer).group(1))
    answer = business_answer(ufrag="bUsi")
    for action in ("pre_accept", "accept"):
        assert wa.calls_action({"call_id": call_id, "action": action,
                                "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200

    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.settimeout(2)
    try:
        request = binding_request(f"{ufrag}:bUsi", priority=1853817087, controlled=0x1234567890ABCDEF)
        sock.sendto(request.encode(integrity_key=pwd.encode()), ("127.0.0.1", port))
        response = StunMessage.parse(sock.recvfrom(2048)[0])
    finally:
        sock.close()
    assert response.error_code[0] == 487
    call = wa.wait_for(lambda: (c := wa.call(call_id)) and any(
        e.get("event") == "ice_role_conflict" for e in c["timeline"]) and c, what="role conflict on the timeline")
    wa.advance(21)
    call = wa.wait_state(call_id, "ENDED")
    assert call["errors"][0]["code"] == 138020
    assert "ICE role conflict" in call["errors"][0]["error_data"]["details"]


def test_the_relay_offers_an_ipv6_host_candidate_that_answers_checks(wa):
    """Where the host has IPv6 (loopback ::1 here), Meta's relay offers a second host candidate, and a
    binding request to it is answered from it with the IPv6 XOR-MAPPED-ADDRESS; the call then runs on it."""
    wa.reset()
    call_id = wa.user_calls(ALICE).json()["call_id"]
    offer = wa.call(call_id)["meta_sdp"]
    found = re.findall(r"a=candidate:(\d+) 1 udp (\d+) (\S+) (\d+) typ host", offer)
    assert [c[2] for c in found] == ["127.0.0.1", "::1"]
    (f4, p4, _, port4), (f6, p6, _, port6) = found
    assert f4 != f6 and int(p4) > int(p6), "different foundations; IPv4 preferred"
    assert port4 == re.search(r"m=audio (\d+)", offer).group(1)
    ufrag = re.search(r"a=ice-ufrag:(\S+)", offer).group(1)
    pwd = re.search(r"a=ice-pwd:(\S+)", offer).group(1)
    answer = business_answer(ufrag="bUsi")
    assert wa.calls_action({"call_id": call_id, "action": "pre_accept",
                            "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200

    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.bind(("::1", 0))
    sock.settimeout(2)
    try:
        request = binding_request(f"{ufrag}:bUsi", priority=1853817087, controlling=0x1234567890ABCDEF,
                                  use_candidate=True)
        sock.sendto(request.encode(integrity_key=pwd.encode()), ("::1", int(port6)))
        data, source = sock.recvfrom(2048)
        local_port = sock.getsockname()[1]
        response = StunMessage.parse(data)
    finally:
        sock.close()
    assert source[1] == int(port6)
    assert response.error_code is None
    assert response.xor_mapped_address == ("::1", local_port)
    call = wa.wait_for(lambda: (c := wa.call(call_id)) and c["media"]["ice"]["connected"] and c,
                       what="ICE connected over IPv6")
    assert call["media"]["ice"]["remote"].startswith("::1:")
    assert call["media"]["port6"] == int(port6)
