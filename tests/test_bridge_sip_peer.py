"""The bridge's SIP user agent (wacall.bridge.sip_ua) over real UDP sockets against a scripted PBX on port 0, for
what Kamailio and baresip cannot be made to do on cue: a CANCEL left unanswered (its retransmission, RFC 3261
17.1.2), a 2xx arriving after the bridge gave its INVITE up (CANCELled and 487 from one fork then 200 from another,
or after Timer B; RFC 3261 15, RFC 6026), and the PBX's re-INVITEs and UPDATEs in a call (session refresh, RFC
4028; hold and resume, RFC 3264 8.4; a media change, 488)."""

from __future__ import annotations

import asyncio

import pytest

from wacall.bridge.sip_ua import SipFailure, SipUserAgent
from wacall.sip.message import Request, Response, parse_message, response_to

LOOPBACK = "127.0.0.1"
OUR_SDP = ("v=0\r\no=- 1000 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
           "m=audio 30000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
           "a=sendrecv\r\n")


def pbx_sdp(version: int = 1, port: int = 40000, direction: str = "sendrecv") -> str:
    return (f"v=0\r\no=pbx 555 {version} IN IP4 127.0.0.1\r\ns=pbx\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
            f"m=audio {port} RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\na=rtpmap:101 telephone-event/8000\r\n"
            f"a=ptime:20\r\na={direction}\r\n")


class ScriptedPbx(asyncio.DatagramProtocol):
    """A PBX on a UDP socket of its own (port 0) that answers only what the test tells it to."""

    def __init__(self) -> None:
        self.received: list[Request | Response] = []
        self.taken = 0                                   # received[:taken] were handed to the test
        self.arrived = asyncio.Event()
        self.transport: asyncio.DatagramTransport | None = None
        self.peer: tuple[str, int] | None = None

    @classmethod
    async def start(cls) -> "ScriptedPbx":
        pbx = cls()
        await asyncio.get_running_loop().create_datagram_endpoint(lambda: pbx, local_addr=(LOOPBACK, 0))
        return pbx

    @property
    def address(self) -> tuple[str, int]:
        assert self.transport is not None
        return self.transport.get_extra_info("sockname")[:2]

    def connection_made(self, transport) -> None:        # type: ignore[override]
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if data.strip():
            self.received.append(parse_message(data))
            self.peer = addr
            self.arrived.set()

    def send(self, message: Request | Response) -> None:
        assert self.transport is not None and self.peer is not None
        self.transport.sendto(message.to_bytes(), self.peer)

    async def next(self, method: str, timeout: float = 5.0) -> Request:
        """The next request ``method`` received (others before it are passed over)."""
        return await self._first(lambda m: isinstance(m, Request) and m.method == method, f"no {method} from the "
                                 "bridge", timeout)

    async def response(self, cseq: tuple[int, str], timeout: float = 5.0) -> Response:
        return await self._first(lambda m: isinstance(m, Response) and m.cseq == cseq, f"no response to {cseq}",
                                 timeout)

    async def _first(self, wanted, missing: str, timeout: float):
        """The next message received that is ``wanted`` (those before it are passed over)."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            while self.taken < len(self.received):
                message = self.received[self.taken]
                self.taken += 1
                if wanted(message):
                    return message
            self.arrived.clear()
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{missing}; got {[_name(m) for m in self.received]}")
            try:
                await asyncio.wait_for(self.arrived.wait(), left)
            except asyncio.TimeoutError:
                pass

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


def _name(message: Request | Response) -> str:
    return message.method if isinstance(message, Request) else f"{message.status} {message.cseq[1]}"


@pytest.fixture
async def peer():
    pbx = await ScriptedPbx.start()
    ua = SipUserAgent(LOOPBACK, 0, pbx.address, t1=0.05)
    await ua.start()
    yield ua, pbx
    ua.close()
    pbx.close()


def invite_task(ua: SipUserAgent) -> asyncio.Task:
    return asyncio.create_task(ua.invite("sip:c2b-sip@pbx.example.com", "sip:+447700900001@bridge",
                                         "sip:c2b-sip@pbx.example.com", OUR_SDP, []))


def answer(pbx: ScriptedPbx, request: Request, status: int, *, tag: str = "pbx1", sdp: str = "",
           headers: list[tuple[str, str]] = ()) -> Response:
    extra = list(headers)
    if 200 <= status < 300 and request.method == "INVITE" and request.to.tag is None:
        extra.append(("Contact", f"<sip:agent@{LOOPBACK}:{pbx.address[1]}>"))
    response = response_to(request, status, to_tag=tag, headers=extra, body=sdp.encode(),
                           content_type="application/sdp" if sdp else None)
    pbx.send(response)
    return response


async def until(condition, what: str, timeout: float = 5.0) -> None:
    for _ in range(int(timeout * 100)):
        if condition():
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"not within {timeout} s: {what}")


# -- CANCEL: a non-INVITE client transaction of its own (RFC 3261 9.1, 17.1.2) -------------------------------------

async def test_a_cancel_is_retransmitted_until_the_pbx_answers_it(peer):
    ua, pbx = peer
    call = invite_task(ua)
    invite = await pbx.next("INVITE")
    answer(pbx, invite, 180)
    await until(lambda: invite.call_id in ua._inviting, "the INVITE pending")
    assert ua.cancel(invite.call_id)
    copies = [await pbx.next("CANCEL") for _ in range(3)]         # unanswered: Timer E sends it again
    assert {(c.branch, c.cseq, c.uri) for c in copies} == {(invite.branch, (1, "CANCEL"), invite.uri)}
    answer(pbx, copies[-1], 200)
    # the response ends the CANCEL's transaction: nothing left to retransmit it
    await until(lambda: (invite.branch, "CANCEL") not in ua._waiting, "the CANCEL transaction over")
    answer(pbx, invite, 487)
    ack = await pbx.next("ACK")
    assert ack.branch == invite.branch and ack.cseq == (1, "ACK")
    with pytest.raises(SipFailure) as ended:
        await asyncio.wait_for(call, 5)
    assert ended.value.status == 487
    assert [m for m in pbx.received[pbx.taken:] if isinstance(m, Request) and m.method == "CANCEL"] == []


async def test_a_cancel_never_answered_gives_up_after_64_t1(peer):
    ua, pbx = peer
    call = invite_task(ua)
    invite = await pbx.next("INVITE")
    answer(pbx, invite, 183)
    await until(lambda: invite.call_id in ua._inviting, "the INVITE pending")
    ua.cancel(invite.call_id)
    await pbx.next("CANCEL")
    await pbx.next("CANCEL")
    with pytest.raises(SipFailure) as ended:                      # nothing answers: the INVITE gives up too
        await asyncio.wait_for(call, 64 * ua.t1 + 5)
    assert ended.value.status == 487
    await until(lambda: (invite.branch, "CANCEL") not in ua._waiting, "Timer F ended the CANCEL", 64 * ua.t1 + 5)
    cancels = [m for m in pbx.received if isinstance(m, Request) and m.method == "CANCEL"]
    assert len(cancels) >= 4 and {c.branch for c in cancels} == {invite.branch}


async def test_a_provisional_answer_to_an_invite_already_given_up_is_cancelled(peer):
    ua, pbx = peer
    call = asyncio.create_task(ua.invite("sip:c2b-sip@pbx.example.com", "sip:+447700900001@bridge",
                                         "sip:c2b-sip@pbx.example.com", OUR_SDP, [], timeout=0.3))
    invite = await pbx.next("INVITE")
    with pytest.raises(SipFailure):                               # nothing came in time: the bridge gave up
        await asyncio.wait_for(call, 5)
    answer(pbx, invite, 180)                                      # ... and then the agent's phone rings
    cancel = await pbx.next("CANCEL")
    assert cancel.branch == invite.branch and cancel.cseq == (invite.cseq[0], "CANCEL")
    answer(pbx, cancel, 200)
    answer(pbx, invite, 487)
    ack = await pbx.next("ACK")
    assert ack.branch == invite.branch


# -- a 2xx to an INVITE the bridge gave up on: ACK, then BYE (RFC 3261 15, RFC 6026) ----------------------------------

async def test_a_200_from_another_fork_after_the_487_is_acked_and_ended(peer):
    ua, pbx = peer
    call = invite_task(ua)
    invite = await pbx.next("INVITE")
    answer(pbx, invite, 180, tag="fork-a")
    await until(lambda: invite.call_id in ua._inviting, "the INVITE pending")
    ua.cancel(invite.call_id)
    answer(pbx, await pbx.next("CANCEL"), 200, tag="fork-a")
    answer(pbx, invite, 487, tag="fork-a")
    await pbx.next("ACK")
    with pytest.raises(SipFailure):
        await asyncio.wait_for(call, 5)
    # another fork had answered meanwhile (a forking proxy forwards every 2xx, RFC 3261 16.7)
    ok = answer(pbx, invite, 200, tag="fork-b", sdp=pbx_sdp())
    ack = await pbx.next("ACK")
    bye = await pbx.next("BYE")
    assert ack.to.tag == bye.to.tag == "fork-b" and ack.cseq == (1, "ACK") and bye.cseq == (2, "BYE")
    assert ack.branch != invite.branch and ack.uri == bye.uri == f"sip:agent@{LOOPBACK}:{pbx.address[1]}"
    assert bye.from_.tag == invite.from_.tag and bye.call_id == invite.call_id
    answer(pbx, bye, 200, tag="fork-b")
    pbx.send(ok)                                                  # our ACK was lost: the 2xx again
    await pbx.next("ACK")
    await until(lambda: not [t for t in ua._tasks if not t.done()], "the BYE transaction over")
    assert [m for m in pbx.received if isinstance(m, Request) and m.method == "BYE"] == [bye]


async def test_a_200_after_timer_b_is_acked_and_ended():
    pbx = await ScriptedPbx.start()
    ua = SipUserAgent(LOOPBACK, 0, pbx.address, t1=0.02)
    await ua.start()
    try:
        with pytest.raises(SipFailure) as timed_out:
            await ua.invite("sip:c2b-sip@pbx.example.com", "sip:+447700900001@bridge", "sip:c2b-sip@pbx.example.com",
                            OUR_SDP, [])
        assert timed_out.value.status == 408
        invite = await pbx.next("INVITE")
        answer(pbx, invite, 200, sdp=pbx_sdp())                   # the PBX answers at last
        await pbx.next("ACK")
        bye = await pbx.next("BYE")
        assert bye.to.tag == "pbx1" and bye.call_id == invite.call_id
        answer(pbx, bye, 200)
    finally:
        ua.close()
        pbx.close()


async def test_an_invite_of_a_previous_run_is_cancelled_and_a_2xx_to_it_acked_and_ended(peer):
    """After a restart (tests/test_bridge_ops.py: the 487 path against Kamailio): the INVITE a previous run sent is
    CANCELled at once, and the agent's 200 that crossed the CANCEL is ACKed and ended with a BYE."""
    ua, pbx = peer
    earlier = SipUserAgent(LOOPBACK, 0, pbx.address, t1=0.05)       # the bridge before its kill -9
    await earlier.start()
    call = invite_task(earlier)
    invite = await pbx.next("INVITE")
    call.cancel()
    earlier.close()
    assert ua.abandon(invite.to_bytes().decode("latin-1"))
    cancel = await pbx.next("CANCEL")
    assert cancel.branch == invite.branch and cancel.cseq == (invite.cseq[0], "CANCEL")
    answer(pbx, cancel, 200)
    answer(pbx, invite, 200, sdp=pbx_sdp())                         # the agent had answered
    ack = await pbx.next("ACK")
    bye = await pbx.next("BYE")
    assert ack.to.tag == bye.to.tag == "pbx1" and bye.call_id == invite.call_id and bye.from_.tag == invite.from_.tag
    answer(pbx, bye, 200)
    assert not ua.abandon("not SIP at all")


# -- re-INVITE and UPDATE from the PBX in a call (RFC 3261 14.2, RFC 3311, RFC 3264 8, RFC 4028) ----------------------

async def established(ua: SipUserAgent, pbx: ScriptedPbx):
    call = invite_task(ua)
    invite = await pbx.next("INVITE")
    answer(pbx, invite, 200, sdp=pbx_sdp())
    dialog, _ = await asyncio.wait_for(call, 5)
    await pbx.next("ACK")
    cseq = iter(range(20, 100))

    def request(method: str, sdp: str = "", headers: list[tuple[str, str]] = ()) -> Request:
        """A request of the PBX in the dialog (From/To swapped: the PBX is the UAS of the first INVITE)."""
        number = next(cseq)
        raw = (f"{method} {invite.headers.get('Contact')[1:-1]} SIP/2.0\r\n"
               f"Via: SIP/2.0/UDP {LOOPBACK}:{pbx.address[1]};branch=z9hG4bK{method.lower()}{number}\r\n"
               f"From: <sip:c2b-sip@pbx.example.com>;tag=pbx1\r\nTo: {invite.headers.get('From')}\r\n"
               f"Call-ID: {invite.call_id}\r\nCSeq: {number} {method}\r\n"
               f"Contact: <sip:agent@{LOOPBACK}:{pbx.address[1]}>\r\nMax-Forwards: 70\r\n"
               + "".join(f"{name}: {value}\r\n" for name, value in headers)
               + (f"Content-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}" if sdp else
                  "Content-Length: 0\r\n\r\n"))
        message = parse_message(raw.encode())
        pbx.send(message)
        return message

    def ack(reinvite: Request) -> None:
        pbx.send(parse_message(
            f"ACK {invite.headers.get('Contact')[1:-1]} SIP/2.0\r\n"
            f"Via: SIP/2.0/UDP {LOOPBACK}:{pbx.address[1]};branch=z9hG4bKack{reinvite.cseq[0]}\r\n"
            f"From: <sip:c2b-sip@pbx.example.com>;tag=pbx1\r\nTo: {invite.headers.get('From')}\r\n"
            f"Call-ID: {invite.call_id}\r\nCSeq: {reinvite.cseq[0]} ACK\r\nContent-Length: 0\r\n\r\n".encode()))
    return dialog, request, ack


def o_version(sdp: bytes) -> int:
    [line] = [one for one in sdp.decode().splitlines() if one.startswith("o=")]
    return int(line.split()[2])


async def test_a_session_refresh_re_invite_gets_the_same_sdp_and_its_200_waits_for_the_ack(peer):
    ua, pbx = peer
    dialog, request, ack = await established(ua, pbx)
    refresh = request("INVITE", pbx_sdp(), [("Session-Expires", "1800;refresher=uac"), ("Supported", "timer")])
    ok = await pbx.response((refresh.cseq[0], "INVITE"))
    assert ok.status == 200 and ok.body == OUR_SDP.encode()      # unchanged: the same o= version too
    assert ok.headers.get("Session-Expires") == "1800;refresher=uac" and ok.headers.get("Require") == "timer"
    assert ok.to.tag == dialog.local_tag and ok.headers.get("Contact")
    again = await pbx.response((refresh.cseq[0], "INVITE"))      # Timer G: resent until the ACK
    assert again.status == 200 and again.body == ok.body
    ack(refresh)
    await until(lambda: ua._reinvites[(dialog.call_id, refresh.cseq[0])].is_acked, "the re-INVITE ACKed")
    # a refresh by UPDATE, without SDP (RFC 4028's preferred way)
    update = request("UPDATE", headers=[("Session-Expires", "1800"), ("Supported", "timer")])
    ok = await pbx.response((update.cseq[0], "UPDATE"))
    assert ok.status == 200 and ok.body == b"" and ok.headers.get("Session-Expires") == "1800;refresher=uac"
    # a PBX that asks the bridge to refresh: no session timer at all (RFC 4028 7.2), the call goes on
    refresh = request("INVITE", pbx_sdp(), [("Session-Expires", "90;refresher=uas"), ("Supported", "timer")])
    ok = await pbx.response((refresh.cseq[0], "INVITE"))
    ack(refresh)
    assert ok.status == 200 and ok.headers.get("Session-Expires") is None and ok.body == OUR_SDP.encode()
    assert not dialog.ended and ua.dialogs[dialog.call_id] is dialog


async def test_hold_and_resume_are_answered_with_the_mirrored_direction(peer):
    ua, pbx = peer
    dialog, request, ack = await established(ua, pbx)
    kept = []                                                      # what the bridge writes to its state file
    sent: list = []                                                # what the UA sent, in order
    send = ua._send
    ua._send = lambda message, addr=None: (sent.append(message), send(message, addr))[1]   # type: ignore[method-assign]
    ua.on_dialog_changed = lambda changed: kept.append((changed.local_sdp, len(sent)))
    hold = request("INVITE", pbx_sdp(version=2, direction="sendonly"))
    held = await pbx.response((hold.cseq[0], "INVITE"))
    ack(hold)
    assert held.status == 200 and "a=recvonly" in held.body.decode() and "a=sendrecv" not in held.body.decode()
    assert o_version(held.body) == 2                              # our SDP changed: its version too
    [(sdp, before)] = kept
    assert sdp == held.body.decode() and before < len(sent)
    assert [m.cseq for m in sent[before:] if isinstance(m, Response)][0] == (hold.cseq[0], "INVITE"), \
        "kept before the 200 went out"
    assert not [m for m in sent[:before] if isinstance(m, Response) and m.cseq == (hold.cseq[0], "INVITE")]
    resume = request("UPDATE", pbx_sdp(version=3))
    resumed = await pbx.response((resume.cseq[0], "UPDATE"))
    assert resumed.status == 200 and "a=sendrecv" in resumed.body.decode() and o_version(resumed.body) == 3
    refresh = request("INVITE")                                  # no SDP: the 200 carries ours as the offer
    offered = await pbx.response((refresh.cseq[0], "INVITE"))
    ack(refresh)
    assert offered.status == 200 and offered.body == resumed.body
    assert dialog.local_sdp == resumed.body.decode()
    assert [sdp for sdp, _ in kept] == [held.body.decode(), resumed.body.decode()]   # not for the refresh


async def test_a_media_change_mid_call_is_refused_with_488_and_the_call_goes_on(peer):
    ua, pbx = peer
    dialog, request, ack = await established(ua, pbx)
    moved = request("INVITE", pbx_sdp(version=2, port=41000))
    refused = await pbx.response((moved.cseq[0], "INVITE"))
    assert refused.status == 488 and refused.headers.get("Warning")
    ack(moved)
    update = request("UPDATE", pbx_sdp(version=2, port=41000).replace("RTP/AVP 0 101", "RTP/AVP 8 101")
                     .replace("0 PCMU", "8 PCMA"))
    assert (await pbx.response((update.cseq[0], "UPDATE"))).status == 488
    same = request("INVITE", pbx_sdp())                            # still the session it was
    ok = await pbx.response((same.cseq[0], "INVITE"))
    ack(same)
    assert ok.status == 200 and ok.body == OUR_SDP.encode() and not dialog.ended
