"""RFC 3261 section 17 transactions over TLS on loopback (wacall.sip.transaction), with a small T1."""

from __future__ import annotations

import asyncio

import pytest

from wacall.certs import LocalCA
from wacall.sip.message import Headers, Request, new_branch, new_tag, response_to
from wacall.sip.tls import Resolver, client_context, server_context
from wacall.sip.transaction import (
    Retransmitter,
    ServerTransaction,
    State,
    TransactionLayer,
    build_ack,
)
from wacall.sip.transport import TlsTransport

T1 = 0.01  # 64*T1 = 0.64 s
T2 = 0.04
BIZ = "sip.business.example"


def make_request(method: str, *, branch: str | None = None, call_id: str | None = None, cseq: int = 1,
                 to_tag: str | None = None, from_tag: str = "fromtag") -> Request:
    h = Headers()
    h.add("Via", f"SIP/2.0/TLS {BIZ}:5061;branch={branch or new_branch()}")
    h.add("Max-Forwards", "70")
    h.add("From", f"<sip:+15550002222@{BIZ}>;tag={from_tag}")
    h.add("To", "<sip:+15550001111@wa.meta.vc>" + (f";tag={to_tag}" if to_tag else ""))
    h.add("Call-ID", call_id or f"{new_tag()}@{BIZ}")
    h.add("CSeq", f"{cseq} {method}")
    h.add("Contact", f"<sip:+15550002222@{BIZ};transport=tls>")
    return Request(method, "sip:+15550001111@wa.meta.vc;transport=tls", h)


class Inbox:
    def __init__(self) -> None:
        self.queue: asyncio.Queue = asyncio.Queue()

    def __call__(self, *args) -> None:
        self.queue.put_nowait(args if len(args) > 1 else args[0])

    async def get(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.queue.get(), timeout)

    def empty(self) -> bool:
        return self.queue.empty()


class Side:
    """One end: a TlsTransport and (optionally) a TransactionLayer on top of it."""

    def __init__(self, transport: TlsTransport, layer: TransactionLayer | None) -> None:
        self.transport = transport
        self.layer = layer
        self.requests = Inbox()  # (request, server_txn) from layer.on_request
        self.raw = Inbox()  # (msg, conn) when there is no layer
        if layer is not None:
            layer.on_request = self.requests
        else:
            transport.on_message = self.raw


@pytest.fixture
async def pair(tmp_path):
    """``make(uas_layer=True, uac_layer=True, trying_delay=...)`` -> (uas, uac, conn uac->uas)."""
    ca = LocalCA.load_or_create(tmp_path / "pki")
    cert, key = ca.gateway_paths()
    made: list[TlsTransport] = []

    async def make(*, uas_layer: bool = True, uac_layer: bool = True, trying_delay: float = 0.05):
        uas_t = TlsTransport(server_ssl=server_context(cert, key))
        await uas_t.start("127.0.0.1", 0)
        uac_t = TlsTransport(client_ssl=client_context(ca.cert_path), resolver=Resolver({"wa.meta.vc": "127.0.0.1"}))
        made.extend([uas_t, uac_t])
        uas = Side(uas_t, TransactionLayer(uas_t, t1=T1, t2=T2, trying_delay=trying_delay) if uas_layer else None)
        uac = Side(uac_t, TransactionLayer(uac_t, t1=T1, t2=T2) if uac_layer else None)
        conn = await uac_t.connect("wa.meta.vc", uas_t.port)
        return uas, uac, conn

    yield make
    for t in made:
        await t.close()


async def test_non_invite_round_trip(pair):
    uas, uac, conn = await pair()
    txn = uac.layer.send_request(make_request("OPTIONS"), conn)
    assert txn.state is State.TRYING
    request, stxn = await uas.requests.get()
    assert isinstance(stxn, ServerTransaction) and stxn.state is State.TRYING
    assert stxn.respond(response_to(request, 200, to_tag=stxn.local_tag))
    assert stxn.terminated  # Timer J = 0 on reliable transports
    response = await asyncio.wait_for(txn.final(), 5)
    assert response.status == 200 and txn.terminated  # Timer K = 0
    assert not uac.layer.client_transactions and not uas.layer.server_transactions
    assert not stxn.respond(response_to(request, 500))  # too late


async def test_invite_trying_then_486_and_ack_absorbed(pair):
    uas, uac, conn = await pair(trying_delay=0.05)
    provisional = []
    txn = uac.layer.send_request(make_request("INVITE"), conn)
    txn.on_provisional = provisional.append
    request, stxn = await uas.requests.get()
    await asyncio.sleep(0.15)  # TU silent for longer than trying_delay
    assert [r.status for r in provisional] == [100] and txn.state is State.PROCEEDING
    assert provisional[0].to.tag is None  # no To tag on 100 (8.2.6.1)
    stxn.respond(response_to(request, 486, "Busy Here", to_tag=stxn.local_tag))
    assert stxn.state is State.COMPLETED
    final = await asyncio.wait_for(txn.final(), 5)
    assert final.status == 486 and txn.terminated
    # The client transaction ACKed the 486 itself (17.1.1.3), on the same branch, and the server
    # transaction absorbed it (TU not told) and terminated (Timer I = 0).
    assert txn.ack is not None and txn.ack.branch == txn.branch and txn.ack.to.tag == stxn.local_tag
    assert txn.ack.cseq == (1, "ACK")
    await asyncio.wait_for(stxn.wait_terminated(), 5)
    assert stxn.ack is not None and not stxn.timed_out
    assert uas.requests.empty()


async def test_trying_not_sent_when_tu_answers_quickly(pair):
    uas, uac, conn = await pair(trying_delay=0.2)
    responses = []
    txn = uac.layer.send_request(make_request("INVITE"), conn)
    txn.on_response = responses.append
    request, stxn = await uas.requests.get()
    stxn.respond(response_to(request, 180, to_tag=stxn.local_tag))
    stxn.respond(response_to(request, 603, to_tag=stxn.local_tag))
    assert (await txn.final()).status == 603
    await asyncio.sleep(0.3)
    assert [r.status for r in responses] == [180, 603]


async def test_trying_immediately_with_zero_delay(pair):
    uas, uac, conn = await pair(trying_delay=0)
    got = []
    txn = uac.layer.send_request(make_request("INVITE"), conn)
    txn.on_provisional = got.append
    request, stxn = await uas.requests.get()
    assert stxn.last_response is not None and stxn.last_response.status == 100
    stxn.respond(response_to(request, 480, to_tag=stxn.local_tag))
    assert (await txn.final()).status == 480 and [r.status for r in got] == [100]


async def test_timer_b_and_timer_f(pair):
    uas, uac, conn = await pair(uas_layer=False)  # the far end never answers
    loop = asyncio.get_running_loop()
    start = loop.time()
    invite = uac.layer.send_request(make_request("INVITE"), conn)
    options = uac.layer.send_request(make_request("OPTIONS"), conn)
    r1, r2 = await asyncio.wait_for(asyncio.gather(invite.final(), options.final()), 5)
    elapsed = loop.time() - start
    assert r1.status == 408 and r2.status == 408
    assert invite.error == "timeout" and options.error == "timeout"
    assert 64 * T1 * 0.9 < elapsed < 64 * T1 + 1.0
    assert invite.terminated and options.terminated and not uac.layer.client_transactions
    # No retransmissions over TLS (Timer A/E do not run): the peer saw each request exactly once.
    seen = []
    while not uas.raw.empty():
        seen.append((await uas.raw.get())[0].method)
    assert sorted(seen) == ["INVITE", "OPTIONS"]


async def test_retransmitted_invite_is_absorbed_with_the_same_response(pair):
    uas, uac, conn = await pair(uac_layer=False, trying_delay=10)
    invite = make_request("INVITE")
    conn.send(invite)
    request, stxn = await uas.requests.get()
    conn.send(invite)  # retransmission before any response: absorbed silently
    await asyncio.sleep(0.05)
    assert uac.raw.empty()
    stxn.respond(response_to(request, 180, to_tag=stxn.local_tag))
    assert (await uac.raw.get())[0].status == 180
    conn.send(invite)  # in Proceeding: the last provisional again
    assert (await uac.raw.get())[0].status == 180
    busy = response_to(request, 486, to_tag=stxn.local_tag)
    stxn.respond(busy)
    first, _ = await uac.raw.get()
    conn.send(invite)  # in Completed: the final again
    again, _ = await uac.raw.get()
    assert first.status == again.status == 486 and again.to_bytes() == first.to_bytes()
    assert uas.requests.empty()  # the TU saw one INVITE
    # ACK (same branch) confirms; Timer H does not fire.
    conn.send(build_ack(invite, first))
    await asyncio.wait_for(stxn.wait_terminated(), 5)
    assert stxn.ack is not None and not stxn.timed_out and uas.requests.empty()


async def test_timer_h_without_ack(pair):
    uas, uac, conn = await pair(uac_layer=False, trying_delay=10)
    conn.send(make_request("INVITE"))
    request, stxn = await uas.requests.get()
    stxn.respond(response_to(request, 404, to_tag=stxn.local_tag))
    await asyncio.wait_for(stxn.wait_terminated(), 5)
    assert stxn.timed_out and stxn.ack is None


async def test_cancel_gets_200_and_tu_answers_487(pair):
    uas, uac, conn = await pair()
    cancels = Inbox()
    uas.layer.on_cancel = cancels
    invite_txn = uac.layer.send_request(make_request("INVITE"), conn)
    request, stxn = await uas.requests.get()
    stxn.respond(response_to(request, 180, to_tag=stxn.local_tag))
    cancel_txn = await asyncio.wait_for(uac.layer.cancel(invite_txn), 5)
    assert cancel_txn is not None and cancel_txn.request.branch == invite_txn.branch
    cancel_final = await asyncio.wait_for(cancel_txn.final(), 5)
    assert cancel_final.status == 200 and cancel_final.to.tag == stxn.local_tag  # same To tag (9.2)
    txn, cancel = await cancels.get()
    assert txn is stxn and cancel.method == "CANCEL" and stxn.cancelled.is_set()
    assert stxn.state is State.PROCEEDING  # the TU decides: it answers 487
    stxn.respond(response_to(request, 487, "Request Terminated", to_tag=stxn.local_tag))
    assert (await asyncio.wait_for(invite_txn.final(), 5)).status == 487
    await asyncio.wait_for(stxn.wait_terminated(), 5)
    assert stxn.ack is not None  # the 487 was ACKed by the client transaction
    assert uas.requests.empty()  # neither CANCEL nor ACK reached on_request


async def test_cancel_without_tu_handler_answers_487(pair):
    uas, uac, conn = await pair(trying_delay=0)
    invite_txn = uac.layer.send_request(make_request("INVITE"), conn)
    await uas.requests.get()
    cancel_txn = await asyncio.wait_for(uac.layer.cancel(invite_txn), 5)
    assert (await cancel_txn.final()).status == 200
    assert (await asyncio.wait_for(invite_txn.final(), 5)).status == 487


async def test_unknown_cancel_gets_481(pair):
    uas, uac, conn = await pair()
    cancel = make_request("CANCEL")
    txn = uac.layer.send_request(cancel, conn)
    response = await asyncio.wait_for(txn.final(), 5)
    assert response.status == 481 and response.reason == "Call/Transaction Does Not Exist"
    assert uas.requests.empty()


async def test_cancel_after_final_still_200_but_no_effect(pair):
    uas, uac, conn = await pair(uac_layer=False)
    invite = make_request("INVITE")
    conn.send(invite)
    request, stxn = await uas.requests.get()
    stxn.respond(response_to(request, 200, to_tag=stxn.local_tag))
    assert (await uac.raw.get())[0].status == 200
    cancel = make_request("CANCEL", branch=invite.branch, call_id=invite.call_id)
    conn.send(cancel)
    response, _ = await uac.raw.get()
    assert response.status == 200 and response.cseq == (1, "CANCEL")
    assert not stxn.cancelled.is_set()


async def test_2xx_retransmitter_stops_on_ack(pair):
    uas, uac, conn = await pair()
    invite_txn = uac.layer.send_request(make_request("INVITE"), conn)
    two_xx = []
    invite_txn.on_response = lambda r: two_xx.append(r) if r.status == 200 else None
    request, stxn = await uas.requests.get()
    ok = response_to(request, 200, to_tag=stxn.local_tag)
    rtx = uas.layer.retransmit_2xx(stxn, ok)
    assert stxn.state is State.ACCEPTED
    final = await asyncio.wait_for(invite_txn.final(), 5)
    assert final.status == 200 and invite_txn.state is State.ACCEPTED
    await asyncio.sleep(5 * T1)
    assert len(two_xx) >= 2  # retransmissions reached the UAC TU through the Accepted state

    # A retransmitted INVITE in Accepted is absorbed (RFC 6026), not passed to the TU.
    conn.send(request)
    # The UAC core ACKs the 2xx end to end (new branch), outside any transaction.
    ack = build_ack(invite_txn.request, final)
    ack.headers.set("Via", f"SIP/2.0/TLS {BIZ}:5061;branch={new_branch()}")
    uac.layer.send_ack(ack, conn)
    got, txn = await uas.requests.get()
    assert got.method == "ACK" and txn is None
    rtx.ack()
    assert await rtx.wait() is True and rtx.acked and not rtx.gave_up
    count = rtx.retransmissions
    assert count >= 1
    await asyncio.sleep(10 * T1)
    assert rtx.retransmissions == count
    assert uas.requests.empty()


async def test_2xx_retransmitter_gives_up_after_64_t1(pair):
    uas, uac, conn = await pair(uac_layer=False)
    conn.send(make_request("INVITE"))
    request, stxn = await uas.requests.get()
    gave_up = asyncio.Event()
    loop = asyncio.get_running_loop()
    start = loop.time()
    rtx = uas.layer.retransmit_2xx(stxn, response_to(request, 200, to_tag=stxn.local_tag), on_give_up=gave_up.set)
    assert await asyncio.wait_for(rtx.wait(), 5) is False
    elapsed = loop.time() - start
    assert gave_up.is_set() and rtx.gave_up and not rtx.acked
    assert 64 * T1 * 0.9 < elapsed < 64 * T1 + 1.0
    # T1, 2T1, 4T1, then every T2 (= 4T1) until 64*T1: 1+1+ (64-7)/4 -> about 16 resends.
    assert 12 <= rtx.retransmissions <= 17
    received = 0
    while not uac.raw.empty():
        msg, _ = await uac.raw.get()
        received += msg.status == 200
    assert received == rtx.retransmissions + 1


class ManualLoop:
    """Just what a Retransmitter asks of its loop (futures, call_later), on a clock moved by hand: the
    schedule is checked exactly, not against a busy machine's timing."""

    def __init__(self) -> None:
        self.now, self.timers, self._futures = 0.0, [], asyncio.new_event_loop()

    def create_future(self) -> asyncio.Future:
        return self._futures.create_future()

    def time(self) -> float:
        return self.now

    def call_later(self, delay: float, callback) -> asyncio.TimerHandle:
        return self.call_at(self.now + delay, callback)

    def call_at(self, when: float, callback) -> asyncio.TimerHandle:
        handle = asyncio.TimerHandle(when, callback, (), self._futures)
        self.timers.append(handle)
        return handle

    def run(self, until: float) -> None:
        while (due := sorted((h for h in self.timers if not h.cancelled() and h.when() <= until),
                             key=lambda h: h.when())):
            handle = due[0]
            self.timers.remove(handle)
            self.now = handle.when()
            handle._run()
        self.now = until

    def close(self) -> None:
        self._futures.close()


def test_retransmitter_schedule_unit():
    """RFC 3261 13.3.1.4: resend after T1, doubling up to T2, give up at 64*T1 (here T1 = 20 ms, T2 = 80 ms)."""
    loop = ManualLoop()
    times: list[float] = []
    gave_up: list[float] = []
    rtx = Retransmitter(lambda: times.append(loop.now), t1=0.02, t2=0.08, loop=loop,
                        on_give_up=lambda: gave_up.append(loop.now)).start()
    loop.run(until=2.0)
    gaps = [round(b - a, 6) for a, b in zip([0.0, *times], times)]
    assert gaps[:3] == [0.02, 0.04, 0.08] and set(gaps[3:]) == {0.08}
    assert times[-1] < 64 * 0.02 and gave_up == [pytest.approx(64 * 0.02)]
    assert rtx.done.done() and rtx.done.result() is False and rtx.retransmissions == len(times) == 17
    acked = Retransmitter(lambda: times.append(loop.now), t1=0.02, t2=0.08, loop=loop).start()
    loop.run(until=loop.now + 0.07)                                      # resent at +20 and +60 ms
    acked.ack()
    loop.run(until=loop.now + 2.0)
    assert acked.retransmissions == 2 and acked.done.result() is True     # nothing after the ACK
    loop.close()


def test_retransmitter_first_resend_on_the_shared_queue_keeps_the_schedule():
    """The layer's 2xx retransmitters start their first resend on one queue of T1 timers (TransactionLayer.timers_t1,
    up to 1 ms late) instead of a loop timer each: the same resends at the same times (to the millisecond) as a
    retransmitter on loop timers alone; one ACKed before T1 sends nothing and its queued timer lets go of it, and
    retransmitters started together share one loop timer."""
    from wacall.sip.transaction import _FixedDelayTimers

    def schedule(shared: bool) -> tuple[list[float], list[float], int]:
        loop = ManualLoop()
        first = _FixedDelayTimers(loop, 0.02, 0.001) if shared else None
        times: list[float] = []
        gave_up: list[float] = []
        rtx = Retransmitter(lambda: times.append(loop.now), t1=0.02, t2=0.08, loop=loop, first=first,
                            on_give_up=lambda: gave_up.append(loop.now)).start()
        loop.run(until=2.0)
        assert rtx.done.result() is False and rtx.gave_up
        acked = [Retransmitter(lambda: times.append(loop.now), t1=0.02, t2=0.08, loop=loop, first=first).start()
                 for _ in range(3)]
        loops = len([h for h in loop.timers if not h.cancelled()])
        loop.run(until=loop.now + 0.015)
        for one in acked:
            one.ack()
        loop.run(until=loop.now + 2.0)
        assert all(one.done.result() is True and one.retransmissions == 0 for one in acked)
        if shared:
            assert all(timer.txn is None for timer in first._queue)
        loop.close()
        return times, gave_up, loops

    times, gave_up, loops = schedule(shared=False)
    shared_times, shared_gave_up, shared_loops = schedule(shared=True)
    assert len(shared_times) == len(times) == 17 and shared_gave_up == pytest.approx(gave_up, abs=0.0011)
    assert shared_times == pytest.approx(times, abs=0.0011)
    assert (loops, shared_loops) == (3, 1)


@pytest.mark.parametrize("stop", ["ack", "cancel", "give_up"])
def test_a_stopped_retransmitter_lets_go_of_its_dialog(stop):
    """The gateway's dialog holds its retransmitter, whose give-up callback holds the dialog: once stopped (ACKed,
    cancelled, or given up after 64*T1), the retransmitter drops its callbacks and timer, so the pair dies by
    reference counting when the call forgets the dialog, with the garbage collector off."""
    import gc
    import weakref

    class Dialog:                                   # what the gateway's Dialog is to it: a holder of the retransmitter
        retransmitter = None

    def retransmit(dialog: Dialog) -> None:             # as SipGateway._send_prepared: callbacks closing over it
        dialog.retransmitter = Retransmitter(lambda: dialog, t1=0.02, t2=0.08, loop=loop,
                                             on_give_up=lambda: gave_up.append(dialog is not None)).start()

    loop = ManualLoop()
    gave_up: list[bool] = []
    dialog = Dialog()
    retransmit(dialog)
    if stop == "give_up":
        loop.run(until=2.0)
        assert gave_up == [True] and dialog.retransmitter.gave_up
    else:
        getattr(dialog.retransmitter, stop)()
    gone, gone_rtx = weakref.ref(dialog), weakref.ref(dialog.retransmitter)
    gc.disable()
    try:
        del dialog
        assert gone() is None and gone_rtx() is None
    finally:
        gc.enable()
        loop.close()


async def test_connection_loss_fails_pending_client_transaction(pair):
    uas, uac, conn = await pair(uas_layer=False)
    txn = uac.layer.send_request(make_request("OPTIONS"), conn)
    _, server_conn = await uas.raw.get()
    server_conn.abort()
    response = await asyncio.wait_for(txn.final(), 5)
    assert response.status == 503 and txn.error.startswith("transport")
    # Sending on a dead connection fails immediately too.
    txn2 = uac.layer.send_request(make_request("OPTIONS"), conn)
    assert (await txn2.final()).status == 503 and txn2.terminated


async def test_tu_coroutine_runs_at_once_and_a_task_goes_on_where_it_waits(pair):
    """A coroutine from on_request runs before the layer returns, up to its first wait (no Task for one that never
    waits); one that waits goes on in a Task, which sends in what it awaited and throws in its cancellation."""
    uas, uac, conn = await pair()
    loop = asyncio.get_running_loop()
    seen: list = []

    async def at_once(request, txn):
        seen.append(asyncio.current_task())                 # None: run by the layer itself, not by a Task
        txn.respond(response_to(request, 200, to_tag=txn.local_tag))

    uas.layer.on_request = at_once
    txn = uac.layer.send_request(make_request("MESSAGE"), conn)
    assert (await asyncio.wait_for(txn.final(), 5)).status == 200 and seen == [None]

    later: asyncio.Future = loop.create_future()
    cancelled = asyncio.Event()

    async def waits(request, txn):
        seen.append(asyncio.current_task())
        try:
            status = await later                               # the value set below comes back here
        except asyncio.CancelledError:
            cancelled.set()
            raise
        seen.append(asyncio.current_task())
        txn.respond(response_to(request, status, to_tag=txn.local_tag))

    uas.layer.on_request = waits
    txn = uac.layer.send_request(make_request("MESSAGE"), conn)
    while len(seen) < 2:
        await asyncio.sleep(0.01)
    later.set_result(202)
    assert (await asyncio.wait_for(txn.final(), 5)).status == 202
    assert seen[1] is None and isinstance(seen[2], asyncio.Task)

    later = loop.create_future()
    uas.layer.on_request = waits
    uac.layer.send_request(make_request("MESSAGE"), conn)
    while len(seen) < 4:
        await asyncio.sleep(0.01)
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task() and not t.done()
             and "_resumed" in repr(t.get_coro())]
    assert len(tasks) == 1
    tasks[0].cancel()
    await asyncio.wait_for(cancelled.wait(), 5)


async def test_tu_exception_gives_500(pair):
    uas, uac, conn = await pair()

    def broken(request, txn):
        raise RuntimeError("TU bug")

    uas.layer.on_request = broken
    txn = uac.layer.send_request(make_request("MESSAGE"), conn)
    assert (await asyncio.wait_for(txn.final(), 5)).status == 500

    async def broken_async(request, txn):
        await asyncio.sleep(0)
        raise RuntimeError("async TU bug")

    uas.layer.on_request = broken_async
    txn = uac.layer.send_request(make_request("MESSAGE"), conn)
    assert (await asyncio.wait_for(txn.final(), 5)).status == 500


async def test_async_iteration_over_responses(pair):
    uas, uac, conn = await pair(trying_delay=10)
    txn = uac.layer.send_request(make_request("INVITE"), conn)
    request, stxn = await uas.requests.get()
    for status in (180, 183, 404):
        stxn.respond(response_to(request, status, to_tag=stxn.local_tag))
    statuses = [r.status async for r in txn]
    assert statuses == [180, 183, 404]


async def test_send_request_validation(pair):
    uas, uac, conn = await pair()
    with pytest.raises(ValueError):
        uac.layer.send_request(make_request("ACK"), conn)
    bad = make_request("OPTIONS")
    bad.headers.set("Via", f"SIP/2.0/TLS {BIZ}:5061;branch=oldstyle")
    with pytest.raises(ValueError):
        uac.layer.send_request(bad, conn)
    req = make_request("OPTIONS")
    uac.layer.send_request(req, conn)
    with pytest.raises(ValueError):
        uac.layer.send_request(req, conn)
    await uac.layer.close()


async def test_no_trying_timer_when_the_tu_answers_at_once(pair):
    """A TU that answers from on_request (the 407 challenge) leaves no 100 Trying timer behind; one that answers
    later still gets its 100 after trying_delay (test_invite_trying_then_486_and_ack_absorbed)."""
    uas, uac, conn = await pair(trying_delay=10)
    answered: list[ServerTransaction] = []
    armed: list[float] = []
    loop = uas.layer.loop

    class CountingLoop:                       # the layer's loop, counting the timers it is asked for
        def __getattr__(self, name):
            return getattr(loop, name)

        def call_later(self, delay, *args):
            armed.append(delay)
            return loop.call_later(delay, *args)

    uas.layer.loop = CountingLoop()

    def challenge(request, txn):
        txn.respond(response_to(request, 407, to_tag=txn.local_tag))
        answered.append(txn)

    uas.layer.on_request = challenge
    txn = uac.layer.send_request(make_request("INVITE"), conn)
    assert (await asyncio.wait_for(txn.final(), 5)).status == 407
    assert answered and armed == []            # no 100 Trying timer armed and cancelled
    queue = uas.layer.timers_64t1._queue       # Timer H went to the 64*T1 queue
    assert len(queue) == 1
    await asyncio.wait_for(answered[0].wait_terminated(), 5)     # the 407's ACK: Timer H cancelled
    assert all(timer.txn is None for timer in queue)

    # a TU that answers later in the same loop turn (the gateway's 180 leaves with the commit at its end): no
    # 100 Trying timer either
    later: list[ServerTransaction] = []

    def ring_at_the_end_of_the_turn(request, txn):
        loop.call_soon(lambda: txn.respond(response_to(request, 180, to_tag=txn.local_tag)))
        later.append(txn)

    uas.layer.on_request = ring_at_the_end_of_the_turn
    ringing = uac.layer.send_request(make_request("INVITE"), conn)
    ringing.on_provisional = lambda response: provisional.set_result(response.status)
    provisional = loop.create_future()
    assert await asyncio.wait_for(provisional, 5) == 180
    assert later and armed == []


class _ManualLoop:
    """A loop whose clock moves when the test says; call_at only records (the test runs what is due)."""

    def __init__(self) -> None:
        self.now = 100.0
        self.handles: list[list] = []            # [when, callback, cancelled]

    def time(self) -> float:
        return self.now

    def call_at(self, when, callback):
        handle = [when, callback, False]
        self.handles.append(handle)

        class Handle:
            def cancel(self_inner):
                handle[2] = True
        return Handle()

    def run_due(self) -> None:
        for handle in [h for h in self.handles if h[0] <= self.now and not h[2]]:
            self.handles.remove(handle)
            handle[1]()


class _Txn:
    def __init__(self, name: str, fired: list) -> None:
        self.name, self.fired, self._timer = name, fired, None

    def _fire(self, callback) -> None:
        self._timer = None
        callback()


def test_fixed_delay_timers_expire_in_order_share_loop_timers_and_forget_cancelled_ones():
    """Timers H/L/B/F/M (64*T1) on one queue: they expire in the order started, timers started within the slack
    of one another share one loop timer, a cancelled one neither runs nor keeps its transaction, and a timer
    started by an expiring callback gets a loop timer of its own."""
    from wacall.sip.transaction import _FixedDelayTimers
    loop, fired = _ManualLoop(), []
    timers = _FixedDelayTimers(loop, delay=32.0, slack=0.5)
    a, b, c = (_Txn(name, fired) for name in "abc")
    ta = timers.start(a, lambda: fired.append("a"))
    loop.now += 0.2
    tb = timers.start(b, lambda: fired.append("b"))
    loop.now += 0.1
    timers.start(c, lambda: fired.append("c"))
    assert len(loop.handles) == 1 and loop.handles[0][0] == 100.0 + 32.0 + 0.5    # one loop timer for the three
    tb.cancel()
    assert tb.txn is None and tb.callback is None         # the cancelled one keeps nothing alive
    loop.now = 131.9
    loop.run_due()
    assert fired == []                                     # not before its time
    loop.now = 132.5

    def restart():
        fired.append("c")
        timers.start(c, lambda: fired.append("c again"))
    timers._queue[-1].callback = restart
    loop.run_due()
    assert fired == ["a", "c"]                             # in order, b cancelled; all three due by 132.5
    assert ta.txn is None
    assert len(loop.handles) == 1 and loop.handles[0][0] == 132.5 + 32.0 + 0.5    # the restarted one's
    loop.now = 165.0
    loop.run_due()
    assert fired == ["a", "c", "c again"] and not timers._queue and not loop.handles


def test_fixed_delay_timers_go_on_after_a_callback_raised_past_the_queue():
    """A timer's callback that raises what the queue does not catch (a BaseException, such as a task's
    cancellation) propagates, and the timers after it still get their loop timer: none is left queued with
    nothing to wake it."""
    from wacall.sip.transaction import _FixedDelayTimers
    loop, fired = _ManualLoop(), []
    timers = _FixedDelayTimers(loop, delay=32.0, slack=0.5)

    def cancelled():
        raise asyncio.CancelledError
    timers.start(_Txn("a", fired), cancelled)
    loop.now += 1.0
    timers.start(_Txn("b", fired), lambda: fired.append("b"))
    loop.now = 132.5
    with pytest.raises(asyncio.CancelledError):
        loop.run_due()
    assert [h[0] for h in loop.handles if not h[2]] == [101.0 + 32.0 + 0.5]     # b's loop timer
    loop.now = 133.5
    loop.run_due()
    assert fired == ["b"] and not timers._queue
