"""The bridge's UDP SIP user agent (wacall.bridge.sip_ua) against scripted PBX answers, no socket: INVITE
retransmission, ACK of a 2xx along the Record-Route and of a failure hop by hop, CANCEL after a provisional
answer, BYE both ways and 481 for a stranger's BYE (RFC 3261 13, 15, 17); digest answers to 401/407 (RFC 3261
22), REGISTER and its refresh/retry (RFC 3261 10), Timer H on an unACKed 2xx (13.3.1.4), the [sip] keys. TCP
framing against a real socket is in tests/test_bridge_sip_transport.py (this file is in the fast tier)."""

from __future__ import annotations

import asyncio

import pytest

from wacall.bridge.sip_ua import SipFailure, SipUserAgent
from wacall.sip.digest import NonceBook, Verdict, parse_credentials
from wacall.sip.message import Request, parse_message, response_to

PBX = ("127.0.0.1", 5060)


class FakeTransport:
    def __init__(self) -> None:
        self.sent: list[tuple[Request, tuple[str, int]]] = []
        self.arrived = asyncio.Event()

    def sendto(self, data: bytes, addr: tuple[str, int]) -> None:
        self.sent.append((parse_message(data), addr))
        self.arrived.set()

    def close(self) -> None:
        pass

    async def next(self, method: str) -> Request:
        for _ in range(200):
            for message, _addr in self.sent:
                if isinstance(message, Request) and message.method == method and not getattr(message, "_seen", 0):
                    message._seen = 1                                    # type: ignore[attr-defined]
                    return message
            self.arrived.clear()
            await asyncio.wait_for(self.arrived.wait(), 5)
        raise AssertionError(f"no {method} sent")


def ua_with_fake_transport(t1: float = 0.05) -> tuple[SipUserAgent, FakeTransport]:
    ua = SipUserAgent("127.0.0.1", 5070, PBX, t1=t1)
    ua.transport = FakeTransport()                                       # type: ignore[assignment]
    return ua, ua.transport                                               # type: ignore[return-value]


def answer(ua: SipUserAgent, request: Request, status: int, *, tag: str = "pbx1", extra=(), body: bytes = b"") -> None:
    response = response_to(request, status, to_tag=tag, headers=extra, body=body,
                           content_type="application/sdp" if body else None)
    ua.datagram_received(response.to_bytes(), PBX)


async def test_invite_is_retransmitted_then_a_2xx_is_acked_along_the_record_route():
    ua, wire = ua_with_fake_transport()
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx.example.com", "sip:+4477@bridge", "sip:c2b-sip@pbx.example.com",
                                         "v=0\r\n", [("x-wa-meta-wacid", "wacid.1")]))
    invite = await wire.next("INVITE")
    again = await wire.next("INVITE")                                   # Timer A: nothing answered
    assert again.branch == invite.branch and invite.headers.get("x-wa-meta-wacid") == "wacid.1"
    assert invite.body == b"v=0\r\n" and invite.from_.tag and invite.to.tag is None
    answer(ua, invite, 180)
    answer(ua, invite, 200, extra=[("Contact", "<sip:agent@127.0.0.1:40000>"),
                                   ("Record-Route", "<sip:127.0.0.1:5060;lr>")], body=b"v=0\r\n")
    dialog, ok = await asyncio.wait_for(call, 5)
    assert ok.status == 200 and dialog.remote_tag == "pbx1" and dialog.target == "sip:agent@127.0.0.1:40000"
    ack, addr = wire.sent[-1]
    assert ack.method == "ACK" and ack.uri == "sip:agent@127.0.0.1:40000" and addr == PBX
    assert ack.headers.get("Route") == "<sip:127.0.0.1:5060;lr>" and ack.cseq == (1, "ACK")
    assert ack.branch != invite.branch                                   # a 2xx's ACK is a new transaction


async def test_a_refusal_raises_after_a_hop_by_hop_ack():
    ua, wire = ua_with_fake_transport()
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx", "sip:+1@b", "sip:c2b-sip@pbx", "v=0\r\n", []))
    invite = await wire.next("INVITE")
    answer(ua, invite, 486)
    with pytest.raises(SipFailure) as refused:
        await asyncio.wait_for(call, 5)
    assert refused.value.status == 486
    ack, _ = wire.sent[-1]
    assert ack.method == "ACK" and ack.branch == invite.branch and ack.to.tag == "pbx1" and ack.uri == invite.uri


async def test_cancelled_while_ringing_sends_cancel_and_acks_the_487():
    ua, wire = ua_with_fake_transport()
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx", "sip:+1@b", "sip:c2b-sip@pbx", "v=0\r\n", []))
    invite = await wire.next("INVITE")
    assert ua.cancel(invite.call_id)                                     # before any provisional answer
    await asyncio.sleep(0.02)
    assert not [m for m, _ in wire.sent if m.method == "CANCEL"], "RFC 3261 9.1: not before a 1xx"
    answer(ua, invite, 180)
    cancel = await wire.next("CANCEL")
    assert cancel.branch == invite.branch and cancel.cseq == (1, "CANCEL") and cancel.uri == invite.uri
    answer(ua, invite, 487)
    with pytest.raises(SipFailure) as ended:
        await asyncio.wait_for(call, 5)
    assert ended.value.status == 487
    ack, _ = wire.sent[-1]
    assert ack.method == "ACK" and ack.branch == invite.branch and not ua.cancel(invite.call_id)


async def test_a_200_crossing_the_cancel_is_acked_and_ended_with_a_bye():
    ua, wire = ua_with_fake_transport()
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx", "sip:+1@b", "sip:c2b-sip@pbx", "v=0\r\n", []))
    invite = await wire.next("INVITE")
    answer(ua, invite, 180)
    await asyncio.sleep(0.01)
    ua.cancel(invite.call_id)
    await wire.next("CANCEL")
    answer(ua, invite, 200, body=b"v=0\r\n")
    bye = await wire.next("BYE")
    assert [m.method for m, _ in wire.sent[-2:]] == ["ACK", "BYE"] and bye.to.tag == "pbx1"
    answer(ua, bye, 200)
    with pytest.raises(SipFailure) as ended:
        await asyncio.wait_for(call, 5)
    assert ended.value.status == 487


async def test_no_answer_at_all_is_408():
    ua, wire = ua_with_fake_transport(t1=0.01)
    with pytest.raises(SipFailure) as timed_out:
        await ua.invite("sip:x@pbx", "sip:+1@b", "sip:x@pbx", "v=0\r\n", [])
    assert timed_out.value.status == 408 and len([m for m, _ in wire.sent if m.method == "INVITE"]) >= 4


async def test_bye_both_ways():
    ua, wire = ua_with_fake_transport()
    ended = []
    ua.on_bye = ended.append
    call = asyncio.create_task(ua.invite("sip:x@pbx", "sip:+1@b", "sip:x@pbx", "v=0\r\n", []))
    invite = await wire.next("INVITE")
    answer(ua, invite, 200, extra=[("Contact", "<sip:agent@127.0.0.1:40000>")], body=b"v=0\r\n")
    dialog, _ = await asyncio.wait_for(call, 5)
    # the PBX hangs up: 200, on_bye once; a retransmitted BYE after that gets 481
    bye = Request("BYE", "sip:bridge@127.0.0.1:5070", invite.headers.copy())
    bye.headers.set("To", f"{invite.headers.get('To')};tag={dialog.local_tag}")
    bye.headers.set("From", "<sip:x@pbx>;tag=pbx1")
    bye.headers.set("CSeq", "1 BYE")
    ua.datagram_received(bye.to_bytes(), PBX)
    assert ended == [dialog] and wire.sent[-1][0].status == 200
    ua.datagram_received(bye.to_bytes(), PBX)
    assert ended == [dialog] and wire.sent[-1][0].status == 481
    # our BYE on another dialog: retransmitted until answered
    call = asyncio.create_task(ua.invite("sip:x@pbx", "sip:+1@b", "sip:x@pbx", "v=0\r\n", []))
    invite = await wire.next("INVITE")
    answer(ua, invite, 200, tag="pbx2", body=b"v=0\r\n")
    dialog, _ = await asyncio.wait_for(call, 5)
    closing = asyncio.create_task(ua.bye(dialog, [("x-wa-meta-call-duration", "12")]))
    ours = await wire.next("BYE")
    again = await wire.next("BYE")
    assert again.branch == ours.branch and ours.cseq == (2, "BYE") and ours.to.tag == "pbx2"
    assert ours.headers.get("x-wa-meta-call-duration") == "12"
    answer(ua, ours, 200, tag="pbx2")
    assert await asyncio.wait_for(closing, 5) == 200
    assert await ua.bye(dialog) == 0                                     # once only


# -- the UAS side: INVITEs from the PBX (business-initiated calls) ----------------------------------------------

def pbx_invite(call_id: str = "bic1@pbx", branch: str = "z9hG4bKpbx1") -> bytes:
    return (f"INVITE sip:+447700900001@127.0.0.1:5070 SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP 127.0.0.1:5060;branch={branch}\r\n"
            f"Record-Route: <sip:127.0.0.1:5060;lr>\r\n"
            f"From: <sip:agent@pbx.example.com>;tag=agent1\r\nTo: <sip:+447700900001@pbx.example.com>\r\n"
            f"Call-ID: {call_id}\r\nCSeq: 10 INVITE\r\nContact: <sip:agent@127.0.0.1:40000>\r\nMax-Forwards: 69\r\n"
            f"Content-Type: application/sdp\r\nContent-Length: 5\r\n\r\nv=0\r\n").encode()


def responses(wire: FakeTransport) -> list[int]:
    return [m.status for m, _ in wire.sent if not isinstance(m, Request)]


async def test_an_invite_from_the_pbx_gets_100_then_a_200_resent_until_its_ack():
    ua, wire = ua_with_fake_transport()
    seen = []
    ua.on_invite = seen.append
    ua.datagram_received(pbx_invite(), PBX)
    [incoming] = seen
    assert responses(wire) == [100] and incoming.sdp == "v=0\r\n"
    incoming.respond(180, "Ringing")
    ua.datagram_received(pbx_invite(), PBX)                              # a retransmission: the 180 again
    assert responses(wire) == [100, 180, 180] and len(seen) == 1
    dialog = incoming.respond(200, "OK", sdp="v=0\r\n")
    ok = wire.sent[-1][0]
    assert ok.status == 200 and ok.to.tag == incoming.local_tag and ok.headers.get("Contact")
    assert ok.headers.get("Record-Route") == "<sip:127.0.0.1:5060;lr>" and ok.body == b"v=0\r\n"
    await asyncio.sleep(0.12)                                           # Timer G: resent while no ACK
    assert responses(wire).count(200) >= 2
    ack = (f"ACK sip:bridge@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack\r\n"
           f"From: <sip:agent@pbx.example.com>;tag=agent1\r\nTo: <sip:+447700900001@pbx.example.com>;tag="
           f"{incoming.local_tag}\r\nCall-ID: bic1@pbx\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    ua.datagram_received(ack, PBX)
    count = responses(wire).count(200)
    await asyncio.sleep(0.2)
    assert responses(wire).count(200) == count, "no 200 after the ACK"
    status = asyncio.create_task(ua.bye(dialog))                        # our BYE: From is the INVITE's To
    bye = await wire.next("BYE")
    assert bye.uri == "sip:agent@127.0.0.1:40000" and bye.headers.get("Route") == "<sip:127.0.0.1:5060;lr>"
    assert bye.from_.tag == incoming.local_tag and bye.to.tag == "agent1" and str(bye.from_.uri).startswith("sip:+4477")
    answer(ua, bye, 200, tag="agent1")
    assert await asyncio.wait_for(status, 5) == 200


async def test_only_the_pbx_may_start_a_call_through_the_bridge():
    """An INVITE from anywhere but the PBX's addresses is refused (403) and never reaches the bridge: a call
    placed through the bridge is a WhatsApp call the business pays for."""
    ua, wire = ua_with_fake_transport()
    seen = []
    ua.on_invite = seen.append
    ua.datagram_received(pbx_invite(), ("127.0.0.7", 5060))
    assert responses(wire) == [403] and seen == [] and not ua.incoming
    ua.datagram_received(pbx_invite("bic2@pbx"), PBX)
    assert len(seen) == 1 and responses(wire) == [403, 100]


async def test_an_invite_whose_record_route_cannot_be_read_gets_400():
    ua, wire = ua_with_fake_transport()
    seen = []
    ua.on_invite = seen.append
    ua.datagram_received(pbx_invite().replace(b"Record-Route: <sip:127.0.0.1:5060;lr>", b"Record-Route: <sip:"), PBX)
    assert responses(wire) == [400] and seen == [] and not ua.incoming


async def test_the_pbx_cancels_a_ringing_invite_487_and_on_cancel():
    ua, wire = ua_with_fake_transport()
    seen, cancelled = [], []
    ua.on_invite = seen.append
    ua.datagram_received(pbx_invite(), PBX)
    seen[0].on_cancel = lambda: cancelled.append(1)
    seen[0].respond(180)
    cancel = (b"CANCEL sip:+447700900001@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKpbx1"
              b"\r\nFrom: <sip:agent@pbx.example.com>;tag=agent1\r\nTo: <sip:+447700900001@pbx.example.com>\r\n"
              b"Call-ID: bic1@pbx\r\nCSeq: 10 CANCEL\r\nContent-Length: 0\r\n\r\n")
    ua.datagram_received(cancel, PBX)
    assert responses(wire)[-2:] == [200, 487] and cancelled == [1]
    seen[0].respond(200, sdp="v=0\r\n")                                # too late: nothing more goes out
    assert responses(wire)[-1] == 487


async def test_a_bye_from_the_pbx_in_an_answered_dialog():
    ua, wire = ua_with_fake_transport()
    seen, byes = [], []
    ua.on_invite, ua.on_bye = seen.append, byes.append
    ua.datagram_received(pbx_invite(), PBX)
    dialog = seen[0].respond(200, sdp="v=0\r\n")
    bye = (f"BYE sip:bridge@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKbye\r\n"
           f"From: <sip:agent@pbx.example.com>;tag=agent1\r\nTo: <sip:+447700900001@pbx.example.com>;tag="
           f"{seen[0].local_tag}\r\nCall-ID: bic1@pbx\r\nCSeq: 11 BYE\r\nContent-Length: 0\r\n\r\n").encode()
    ua.datagram_received(bye, PBX)
    assert responses(wire)[-1] == 200 and byes == [dialog]
    seen[0].acked()


# -- digest, registration, Timer H, streams (wacall.bridge.sip_ua over TCP/TLS is end to end in
#    tests/test_bridge_sip_transport.py) ----------------------------------------------------------------------

def authenticating_ua(t1: float = 0.05, **kwargs) -> tuple[SipUserAgent, FakeTransport]:
    ua = SipUserAgent("127.0.0.1", 5070, PBX, t1=t1, domain="pbx.example.com", username="bridge",
                      password="s3cret", **kwargs)
    ua.transport = FakeTransport()                                       # type: ignore[assignment]
    return ua, ua.transport                                               # type: ignore[return-value]


def challenge(ua: SipUserAgent, request: Request, book: NonceBook, status: int = 407) -> None:
    name = "Proxy-Authenticate" if status == 407 else "WWW-Authenticate"
    answer(ua, request, status, extra=[(name, book.issue().header_value())])


def verdict(request: Request, book: NonceBook, password: str = "s3cret") -> Verdict:
    value = request.headers.get("Proxy-Authorization") or request.headers.get("Authorization")
    assert value, request.to_bytes().decode()
    creds = parse_credentials(value)
    assert creds.username == "bridge" and creds.uri == request.uri
    return book.verify(creds, method=request.method, password=password)


async def test_a_challenged_invite_is_acked_and_sent_again_with_credentials():
    ua, wire = authenticating_ua()
    book = NonceBook("pbx.example.com")
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx.example.com", "sip:+1@b", "sip:c2b-sip@pbx.example.com",
                                         "v=0\r\n", []))
    first = await wire.next("INVITE")
    challenge(ua, first, book)
    ack = await wire.next("ACK")
    assert ack.branch == first.branch and ack.cseq == (1, "ACK")        # the 407's ACK: hop by hop
    second = await wire.next("INVITE")
    assert second.branch != first.branch and second.cseq == (2, "INVITE") and second.call_id == first.call_id
    assert second.from_.tag == first.from_.tag and verdict(second, book) is Verdict.OK
    answer(ua, second, 200, body=b"v=0\r\n")
    dialog, _ = await asyncio.wait_for(call, 5)
    closing = asyncio.create_task(ua.bye(dialog))
    bye = await wire.next("BYE")
    assert bye.cseq == (3, "BYE")                                         # the dialog's CSeq goes on from 2
    answer(ua, bye, 200)
    assert await asyncio.wait_for(closing, 5) == 200


async def test_credentials_refused_twice_end_the_invite_with_the_challenge_status():
    ua, wire = authenticating_ua()
    book = NonceBook("pbx.example.com")
    call = asyncio.create_task(ua.invite("sip:x@pbx", "sip:+1@b", "sip:x@pbx", "v=0\r\n", []))
    challenge(ua, await wire.next("INVITE"), book, 401)
    challenge(ua, await wire.next("INVITE"), book, 401)                   # a second challenge: refused
    with pytest.raises(SipFailure) as refused:
        await asyncio.wait_for(call, 5)
    assert refused.value.status == 401
    assert len([m for m, _ in wire.sent if isinstance(m, Request) and m.method == "INVITE"]) == 2


async def test_without_credentials_a_challenge_is_a_refusal():
    ua, wire = ua_with_fake_transport()
    call = asyncio.create_task(ua.invite("sip:x@pbx", "sip:+1@b", "sip:x@pbx", "v=0\r\n", []))
    challenge(ua, await wire.next("INVITE"), NonceBook("pbx"))
    with pytest.raises(SipFailure) as refused:
        await asyncio.wait_for(call, 5)
    assert refused.value.status == 407


async def test_register_answers_the_challenge_and_reads_the_granted_expiry():
    ua, wire = authenticating_ua()
    book = NonceBook("pbx.example.com")
    registering = asyncio.create_task(ua.register(600))
    first = await wire.next("REGISTER")
    assert first.uri == "sip:pbx.example.com" and first.headers.get("Expires") == "600"
    assert str(first.to.uri) == "sip:bridge@pbx.example.com" and first.headers.get("Contact") == \
        "<sip:bridge@127.0.0.1:5070>"
    challenge(ua, first, book, 401)
    second = await wire.next("REGISTER")
    assert verdict(second, book) is Verdict.OK and second.cseq[0] == first.cseq[0] + 1
    assert second.call_id == first.call_id and second.from_.tag == first.from_.tag
    answer(ua, second, 200, extra=[("Contact", "<sip:other@10.0.0.9:5060>;expires=3000, "
                                               "<sip:bridge@127.0.0.1:5070>;expires=120")])
    response, granted = await asyncio.wait_for(registering, 5)
    assert response.status == 200 and granted == 120
    assert ua.refresh_delay(120) == 90 and ua.refresh_delay(3600) == 3570 and ua.refresh_delay(2) == 1
    again = asyncio.create_task(ua.register(600))                         # the next one: same Call-ID, CSeq up
    third = await wire.next("REGISTER")
    assert third.call_id == first.call_id and third.cseq[0] == second.cseq[0] + 1
    answer(ua, third, 200, extra=[("Expires", "300")])
    assert (await asyncio.wait_for(again, 5))[1] == 300


async def test_423_interval_too_brief_registers_again_for_the_registrars_minimum():
    ua, wire = authenticating_ua(register=True, register_expires=30)
    registering = asyncio.create_task(ua.register(30))
    first = await wire.next("REGISTER")
    answer(ua, first, 423, extra=[("Min-Expires", "120")])
    second = await wire.next("REGISTER")
    assert second.headers.get("Expires") == "120" and second.cseq[0] == first.cseq[0] + 1
    answer(ua, second, 200, extra=[("Contact", "<sip:bridge@127.0.0.1:5070>;expires=120")])
    assert (await asyncio.wait_for(registering, 5))[1] == 120 and ua.register_expires == 120


async def test_a_refused_registration_is_reported_and_retried():
    ua, wire = authenticating_ua(register=True, register_retry=0.05)
    loop = asyncio.create_task(ua._registration_loop())
    try:
        answer(ua, await wire.next("REGISTER"), 403)
        await asyncio.wait_for(ua._reg_done.wait(), 5)
        assert ua.registration == "403 Forbidden"
        retried = await wire.next("REGISTER")                             # after register_retry
        answer(ua, retried, 200, extra=[("Contact", "<sip:bridge@127.0.0.1:5070>;expires=60")])
        for _ in range(100):
            if ua.registration == "registered":
                break
            await asyncio.sleep(0.01)
        assert ua.registration == "registered"
    finally:
        loop.cancel()
    unregistering = asyncio.create_task(ua.unregister())
    bye_bye = await wire.next("REGISTER")
    assert bye_bye.headers.get("Expires") == "0"
    answer(ua, bye_bye, 200)
    await asyncio.wait_for(unregistering, 5)
    assert ua.registration == "unregistered"


async def test_a_200_never_acked_ends_the_dialog_with_a_bye_and_tells_the_bridge():
    """RFC 3261 13.3.1.4: Timer H (64*T1) without the ACK of our 2xx: the dialog is ended with a BYE, and the
    bridge hears it through on_bye (it then ends the WhatsApp side as for the PBX's BYE)."""
    ua, wire = ua_with_fake_transport(t1=0.01)
    seen, byes = [], []
    ua.on_invite, ua.on_bye = seen.append, byes.append
    ua.datagram_received(pbx_invite(), PBX)
    dialog = seen[0].respond(200, sdp="v=0\r\n")
    bye = await wire.next("BYE")
    assert byes == [dialog] and dialog.unacked and bye.to.tag == "agent1" and bye.from_.tag == seen[0].local_tag
    assert responses(wire).count(200) >= 3                                # Timer G resent it meanwhile
    answer(ua, bye, 200, tag="agent1")


async def test_an_acked_200_does_not_end_the_call():
    ua, wire = ua_with_fake_transport(t1=0.01)
    seen, byes = [], []
    ua.on_invite, ua.on_bye = seen.append, byes.append
    ua.datagram_received(pbx_invite(), PBX)
    seen[0].respond(200, sdp="v=0\r\n")
    ack = (f"ACK sip:bridge@127.0.0.1:5070 SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:5060;branch=z9hG4bKack\r\n"
           f"From: <sip:agent@pbx.example.com>;tag=agent1\r\nTo: <sip:+447700900001@pbx.example.com>;tag="
           f"{seen[0].local_tag}\r\nCall-ID: bic1@pbx\r\nCSeq: 10 ACK\r\nContent-Length: 0\r\n\r\n").encode()
    ua.datagram_received(ack, PBX)
    await asyncio.sleep(64 * 0.01 + 0.2)
    assert byes == [] and not [m for m, _ in wire.sent if isinstance(m, Request) and m.method == "BYE"]


def test_sip_config_keys_are_checked():
    from wacall.bridge.config import build_bridge_config

    base = {"graph": {"phone_number_id": "1", "token": "t"}, "webhook": {"app_secret": "s", "verify_token": "v"}}

    def sip(**keys):
        return build_bridge_config({**base, "sip": keys}).sip

    assert sip().transport == "udp" and not sip().register
    with pytest.raises(ValueError, match="sip.transport must be one of udp, tcp, tls"):
        sip(transport="sctp")
    with pytest.raises(ValueError, match="sip.register needs sip.username and sip.password"):
        sip(register=True, username="bridge")
    with pytest.raises(ValueError, match="sip.register_expires"):
        sip(register_expires=0)
    with pytest.raises(ValueError, match="sip.tls_ca: no such file"):
        sip(transport="tls", tls_ca="/nonexistent/ca.pem")
    with pytest.raises(ValueError, match=r"\[sip\]: unknown keys"):
        sip(regsiter=True)
    import os
    os.environ["WACALL_TEST_PBX_PASSWORD"] = "from-env"
    try:
        assert sip(register=True, username="b", password_env="WACALL_TEST_PBX_PASSWORD").password == "from-env"
    finally:
        del os.environ["WACALL_TEST_PBX_PASSWORD"]


def test_via_and_contact_per_transport():
    udp = SipUserAgent("127.0.0.1", 5070, PBX)
    assert udp._contact() == "<sip:bridge@127.0.0.1:5070>" and udp._via("z9hG4bK1").startswith("SIP/2.0/UDP 127")
    tcp = SipUserAgent("::1", 5070, ("::1", 5060), transport="tcp", username="trunk")
    assert tcp._contact() == "<sip:trunk@[::1]:5070;transport=tcp>"
    assert tcp._via("z9hG4bK1") == "SIP/2.0/TCP [::1]:5070;branch=z9hG4bK1;rport;alias"
    with pytest.raises(ValueError):
        SipUserAgent("127.0.0.1", 5070, PBX, transport="sctp")


async def test_a_new_contact_replaces_the_registered_one():
    """Over TLS without a listener the bridge's address is its connection's; after a reconnection the next
    REGISTER binds the new Contact and removes the old one (expires=0) in the same request."""
    ua, wire = authenticating_ua()
    registering = asyncio.create_task(ua.register(60))
    first = await wire.next("REGISTER")
    answer(ua, first, 200, extra=[("Contact", "<sip:bridge@127.0.0.1:5070>;expires=60")])
    await asyncio.wait_for(registering, 5)
    ua.port = 5071                                                        # a new flow, a new local port
    registering = asyncio.create_task(ua.register(60))
    second = await wire.next("REGISTER")
    assert second.headers.get_all("Contact") == ["<sip:bridge@127.0.0.1:5071>", "<sip:bridge@127.0.0.1:5070>;expires=0"]
    answer(ua, second, 200, extra=[("Contact", "<sip:bridge@127.0.0.1:5071>;expires=60")])
    assert (await asyncio.wait_for(registering, 5))[1] == 60
