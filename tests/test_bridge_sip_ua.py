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
