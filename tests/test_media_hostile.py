"""Hostile datagrams at the relay's shared port, with real businesses on the call.

- A stranger's DTLS- or RTP-looking datagram before ICE does not move the relay's remote address:
  only an address that passed a connectivity check with the call's ICE password is latched (RFC 8445
  section 7.3; RFC 7675).
- 10 000 junk datagrams (empty, random, STUN with a wrong password, DTLS records, RTP headers) leave no
  traceback in the log, and the call keeps its audio both ways with an aiortc business.
- Junk from the business's own (validated) address is counted on the call's timeline.
"""

from __future__ import annotations

import asyncio
import os
import re
import socket

import pytest

from support.harness import Wacall, take_user_call
from test_media_sdes import SdesBusiness
from wacall.media.stun import binding_request
from wacall.testing.peer import AiortcBusiness

ALICE = "447700900001"


async def call_api(fn, *args, **kwargs):
    return await asyncio.to_thread(fn, *args, **kwargs)


@pytest.fixture
def own_wacall():
    """An instance of its own, so its log can be read after the test."""
    wa = Wacall().start()
    wa.media_timeouts(True)
    yield wa
    wa.close()


def relay_address(sdp: str) -> tuple[str, int]:
    return re.search(r"^c=IN IP4 (\S+)", sdp, re.M).group(1), int(re.search(r"^m=audio (\d+) ", sdp, re.M).group(1))


def junk(n: int, ufrag: str) -> list[bytes]:
    """Every shape a confused or hostile peer sends."""
    shapes = [b"", b"\x00", os.urandom(1), os.urandom(200), b"\x16\xfe\xfd" + os.urandom(60),   # DTLS record
              b"\x80\x6f" + os.urandom(170), b"\x81\xc8" + os.urandom(40),                        # RTP, RTCP
              binding_request(f"{ufrag}:x", priority=1, controlling=1, use_candidate=True).encode(b"wrong"),
              b"\x00\x01\x00\x00\x21\x12\xa4\x42" + os.urandom(12)]                               # bare STUN
    return [shapes[i % len(shapes)] for i in range(n)]


async def test_strangers_do_not_steer_media_and_junk_leaves_no_trace(own_wacall):
    wa = own_wacall
    call_id = (await call_api(wa.user_calls, ALICE)).json()["call_id"]
    offer = (await call_api(wa.call, call_id))["meta_sdp"]
    relay = relay_address(offer)
    ufrag = re.search(r"^a=ice-ufrag:(\S+)", offer, re.M).group(1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as stranger:
        stranger.bind(("127.0.0.1", 0))
        for _ in range(5):                     # before ICE: a ClientHello-looking record and RTP
            stranger.sendto(b"\x16\xfe\xfd\x00\x00" + os.urandom(80), relay)
            stranger.sendto(b"\x80\x6f" + os.urandom(100), relay)
        async with AiortcBusiness(tone_hz=1000) as business:
            await take_user_call(wa, business, call_id)
            await business.wait_received(1.0, timeout=10)
            media = (await call_api(wa.call, call_id))["media"]
            stranger_addr = "%s:%d" % stranger.getsockname()
            assert media["ice"]["connected"] and media["ice"]["remote"] != stranger_addr
            assert media["dtls"]["state"] == "connected"

            heard, received = business.received_seconds, media["received"]["packets"]
            flood = junk(10_000, ufrag)
            checks = sum(1 for d in flood if ufrag.encode() in d)      # reach the call's ICE agent: 401
            for i, datagram in enumerate(flood):
                stranger.sendto(datagram, relay)
                if i % 500 == 499:
                    await asyncio.sleep(0.01)   # let the loop breathe, as a real flood over the network would
            await business.wait_received(heard + 1.0, timeout=10)
            call = await call_api(wa.wait_for, lambda: (c := wa.call(call_id))["media"]["received"]["packets"]
                                  >= received + 50 and c, 10, "the relay still hearing the business")
            assert call["state"] == "ACCEPTED" and call["media"]["ice"]["remote"] != stranger_addr
            assert abs(business.dominant_frequency(last_seconds=0.8) - 440) < 5
            health = (await call_api(wa.ctl, "GET", "health")).json()
            assert health["media"]["unknown_source"] + health["media"]["unknown_ufrag"] >= 10_000 - checks
            assert any(str(e.get("event")).startswith("ice_bad_") for e in call["timeline"])
        await call_api(wa.calls_action, {"call_id": call_id, "action": "terminate"})
    wa.stop()
    log = wa.proc.stderr.read()
    assert "Traceback" not in log and "ERROR" not in log, log[-2000:]


@pytest.mark.parametrize("media_server", ["in-process", "2-workers"], indirect=True)
def test_junk_from_the_business_address_is_counted_on_the_timeline(media_server):
    wa = media_server
    wa.reset(media_timeouts=True)
    assert wa.graph("POST", f"{wa.pnid}/settings",
                    json={"calling": {"srtp_key_exchange_protocol": "SDES"}}).status_code == 200
    business = SdesBusiness()
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        answer = business.answer(wa.call(call_id)["meta_sdp"])
        for action in ("pre_accept", "accept"):
            assert wa.calls_action({"call_id": call_id, "action": action,
                                    "session": {"sdp_type": "answer", "sdp": answer}}).status_code == 200
        business.run(0.5)
        for datagram in (b"", b"\x00\x01", b"\x42" * 50, b"\xff" * 30):
            business.sock.sendto(datagram, business.remote)
        business.run(1.0)
        call = wa.wait_for(lambda: (c := wa.call(call_id))["media"]["junk_datagrams"] >= 4 and c,
                           what="junk counted")
        assert call["media"]["junk_datagrams"] == 4
        assert any(e.get("event") == "junk_datagrams" for e in call["timeline"])
        assert call["state"] == "ACCEPTED" and call["media"]["received"]["packets"] >= 50
    finally:
        business.close()
