"""The bridge's UDP SIP user agent (wacall.bridge.sip_ua) against scripted PBX answers, no socket: INVITE
retransmission, ACK of a 2xx along the Record-Route and of a failure hop by hop, CANCEL after a provisional
answer, BYE both ways and 481 for a stranger's BYE (RFC 3261 13, 15, 17)."""

from __future__ import annotations

import asyncio

import pytest

from wacall.bridge.sip_ua import SipFailure, SipUserAgent
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
