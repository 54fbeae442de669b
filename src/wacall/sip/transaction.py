"""SIP transactions over a reliable transport (RFC 3261 section 17, with RFC 6026 and section 9.2).

wacall speaks SIP over TLS only, so the retransmission timers of unreliable transports (A, E, G)
never run and the "wait for stray retransmissions" timers are zero (D, I, J, K = 0). What remains:

=========  ===================  ============================================================
Timer      Value                Meaning
=========  ===================  ============================================================
B          64*T1                client INVITE: no response at all -> 408 to the TU (17.1.1.2)
F          64*T1                client non-INVITE: no final response -> 408 (17.1.2.2)
H          64*T1                server INVITE: non-2xx sent but no ACK -> terminated (17.2.1)
L          64*T1                server INVITE Accepted state, absorbs INVITE retransmits (RFC 6026)
M          64*T1                client INVITE Accepted state, passes 2xx retransmits up (RFC 6026)
(100)      ``trying_delay``     server INVITE sends 100 Trying if the TU has not (17.2.1)
=========  ===================  ============================================================

The 64*T1 timers (B, F, H, L, M) of all transactions run from one queue on one loop timer
(:class:`_FixedDelayTimers`: same delay, so they expire in the order they started), each up to T1 late.

RFC 6026 replaces "terminate on 2xx" with an Accepted state in both INVITE transactions, so a
retransmitted INVITE after the 2xx is absorbed instead of reaching the TU as a new request, and
retransmitted 2xx responses reach the client TU through the transaction.

100 Trying: the server INVITE transaction sends it ``trying_delay`` seconds (default 0.2, the 200 ms
of section 17.2.1) after the loop turn the request arrived in, unless the TU has responded by then;
``trying_delay=0`` sends it at once, before the TU sees the request.

CANCEL (section 9.2) is handled here, not by the TU: it is matched to the INVITE server transaction
by branch and sent-by, answered 200 (481 if nothing matches), and the TU is told through
``layer.on_cancel(invite_txn, cancel)`` and ``invite_txn.cancelled``; the TU then answers the INVITE
with 487. Without an ``on_cancel`` callback the layer answers 487 itself.

Deviation: if the connection a client transaction was sent on closes before a final response,
the transaction fails at once with a local 503 (section 8.1.3.1 transport error) instead of
waiting for Timer B/F, since over TLS the response can only come back on that connection.

2xx retransmission for INVITE is the UAS core's job (section 13.3.1.4, "even if the transport is
reliable"): :class:`Retransmitter` / :meth:`TransactionLayer.retransmit_2xx`. The layer's retransmitters
start their first resend (after T1) on one more fixed-delay queue (``timers_t1``, each up to 1 ms late): the
ACK nearly always comes first, and a queued timer forgotten costs less than a loop timer started and cancelled.

Matching: server transactions by (branch, sent-by, method) with ACK matching INVITE (17.2.3);
client transactions by (branch, CSeq method) of the response (17.1.3). Requests whose branch lacks
the ``z9hG4bK`` cookie (RFC 2543 peers) are keyed by Call-ID, From tag, CSeq number and top Via.
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import logging
import types
from collections import deque
from collections.abc import AsyncIterator, Callable
from typing import Any, Union

from .message import VIA_FACTS, Headers, Request, Response, SipParseError, new_tag, response_to
from .transport import Connection, TlsTransport, TransportError
from .uri import param

log = logging.getLogger(__name__)

T1 = 0.5  #: RTT estimate (section 17.1.1.1)
T2 = 4.0  #: maximum retransmit interval for non-INVITE requests and INVITE responses
T4 = 5.0  #: maximum duration a message remains in the network
TRYING_DELAY = 0.2
MAGIC_COOKIE = "z9hG4bK"

__all__ = [
    "ClientTransaction", "Retransmitter", "ServerTransaction", "State", "TransactionLayer",
    "build_ack", "build_cancel",
]

Message = Union[Request, Response]


class State(enum.Enum):
    CALLING = "Calling"
    TRYING = "Trying"
    PROCEEDING = "Proceeding"
    ACCEPTED = "Accepted"
    COMPLETED = "Completed"
    CONFIRMED = "Confirmed"
    TERMINATED = "Terminated"


def _run_callback(callback: Callable[..., Any] | None, *args: Any) -> None:
    """Call a TU callback; exceptions are logged, coroutines scheduled (never crash the layer)."""
    if callback is None:
        return
    try:
        result = callback(*args)
    except Exception:
        log.exception("TU callback %r failed", callback)
        return
    if result is not None and inspect.isawaitable(result):   # None: the common case, no ABC check
        task = asyncio.ensure_future(result)
        task.add_done_callback(_log_task_error)


def _log_task_error(task: asyncio.Future[Any]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.error("TU callback task failed", exc_info=task.exception())


async def _resumed(coro: Any, yielded: Any) -> Any:
    """The rest of a coroutine already run up to its first wait, which gave ``yielded``, as a coroutine a Task can
    run (what Python 3.12's eager tasks do)."""
    return await _resume(coro, yielded)


@types.coroutine
def _resume(coro: Any, yielded: Any) -> Any:
    """``yield from coro`` for a coroutine that has already yielded ``yielded``: that first, then the same
    delegation (values sent and exceptions thrown in go on to ``coro``)."""
    while True:
        try:
            sent = yield yielded
        except GeneratorExit:
            coro.close()
            raise
        except BaseException as exc:          # a Task's cancellation included: the coroutine sees it where it waits
            try:
                yielded = coro.throw(exc)
            except StopIteration as stop:
                return stop.value
        else:
            try:
                yielded = coro.send(sent)
            except StopIteration as stop:
                return stop.value


class _Timer:
    """One timer of a :class:`_FixedDelayTimers`: the transaction (or 2xx :class:`Retransmitter`: whatever has a
    ``_fire(callback)``) and what it runs when the timer expires."""

    __slots__ = ("due", "txn", "callback")

    def __init__(self, due: float, txn: _Transaction | Retransmitter, callback: Callable[[], None]) -> None:
        self.due = due
        self.txn: _Transaction | Retransmitter | None = txn
        self.callback: Callable[[], None] | None = callback

    def cancel(self) -> None:
        self.txn = self.callback = None        # (the transaction is not kept alive until the timer's time)


class _FixedDelayTimers:
    """The transactions' timers of one fixed delay (Timers H, L, B, F and M are all 64*T1) on one loop timer.

    Timers of one delay expire in the order they were started, so a queue stands for the loop's heap:
    starting one is an append, cancelling one forgets its callback (the entry expires unseen). The loop timer
    runs for the head of the queue, up to ``slack`` late, and expires every timer due by then: timers started
    within ``slack`` of one another share one loop timer (a loop timer costs ~4.5 k instructions to start and
    cancel, and each SIP flow starts two 64*T1 timers: the 407's Timer H and the 200's Timer L).
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, delay: float, slack: float) -> None:
        self.loop = loop
        self.delay = delay
        self.slack = slack
        self._queue: deque[_Timer] = deque()
        self._handle: asyncio.TimerHandle | None = None
        self._expiring = False

    def start(self, txn: _Transaction | Retransmitter, callback: Callable[[], None]) -> _Timer:
        timer = _Timer(self.loop.time() + self.delay, txn, callback)
        self._queue.append(timer)
        if self._handle is None and not self._expiring:
            self._handle = self.loop.call_at(timer.due + self.slack, self._expire)
        return timer

    def _expire(self) -> None:
        self._handle = None
        queue, now = self._queue, self.loop.time()
        self._expiring = True
        try:
            while queue and queue[0].due <= now:
                timer = queue.popleft()
                txn, callback = timer.txn, timer.callback
                if txn is not None:
                    timer.txn = timer.callback = None
                    try:
                        txn._fire(callback)
                    except Exception:
                        log.exception("%r: timer callback %r failed", txn, callback)
        finally:           # (re-armed even when a callback raised past ``except Exception``: the others still fire)
            self._expiring = False
            while queue and queue[0].txn is None:     # cancelled: nothing to wake up for
                queue.popleft()
            if queue and self._handle is None:
                self._handle = self.loop.call_at(queue[0].due + self.slack, self._expire)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.cancel()
            self._handle = None
        self._queue.clear()


class _Transaction:
    """State, timers and the termination event shared by the four transaction kinds."""

    def __init__(self, layer: TransactionLayer, request: Request, conn: Connection | None, key: tuple[Any, ...],
                 state: State) -> None:
        self.layer = layer
        self.request = request
        self.conn = conn
        self.key = key
        self.method = request.method
        self.state = state
        # the one RFC 3261 timer running, if any: a transaction's timers follow each other, never overlap
        # (server: 100 Trying, then H or L; client: B or F, then M)
        self._timer: asyncio.TimerHandle | _Timer | None = None
        self._terminated: asyncio.Event | None = None     # made when someone waits (most never do)

    @property
    def is_invite(self) -> bool:
        return self.method == "INVITE"

    @property
    def branch(self) -> str | None:
        return self.request.branch

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.method} {self.branch} {self.state.value}>"

    def _start_timer(self, delay: float, callback: Callable[[], None]) -> None:
        """Run ``callback`` in ``delay`` seconds (unless terminated by then), replacing the timer running, if any."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.layer.loop.call_later(delay, self._fire, callback)

    def _start_64t1(self, callback: Callable[[], None]) -> None:
        """Timer H, L, B, F or M: run ``callback`` in 64*T1 (up to T1 later), replacing the timer running, if any."""
        if self._timer is not None:
            self._timer.cancel()
        self._timer = self.layer.timers_64t1.start(self, callback)

    def _fire(self, callback: Callable[[], None]) -> None:
        self._timer = None
        if self.state is not State.TERMINATED:
            callback()

    def _cancel_timer(self) -> None:
        timer = self._timer
        if timer is not None:
            self._timer = None
            timer.cancel()

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        self.state = State.TERMINATED
        self._cancel_timer()
        self.layer._remove(self)
        if self._terminated is not None:
            self._terminated.set()

    @property
    def terminated(self) -> bool:
        return self.state is State.TERMINATED

    async def wait_terminated(self) -> None:
        if self.state is State.TERMINATED:
            return
        if self._terminated is None:
            self._terminated = asyncio.Event()
        await self._terminated.wait()


class ServerTransaction(_Transaction):
    """INVITE (17.2.1 + RFC 6026) or non-INVITE (17.2.2) server transaction; the TU calls :meth:`respond`."""

    def __init__(self, layer: TransactionLayer, request: Request, conn: Connection, key: tuple[Any, ...]) -> None:
        super().__init__(layer, request, conn, key, State.PROCEEDING if request.method == "INVITE" else State.TRYING)
        self.last_response: Response | None = None
        self._local_tag: str | None = None
        self._cancelled: asyncio.Event | None = None
        self.cancel_request: Request | None = None
        #: The ACK that confirmed a non-2xx final response (INVITE only).
        self.ack: Request | None = None
        #: Timer H fired: a non-2xx final response was never acknowledged.
        self.timed_out = False
        self.transport_error: str | None = None

    @property
    def local_tag(self) -> str:
        """Suggested To tag for this transaction's responses; also used for the 200 to a CANCEL (9.2). Drawn on
        first use: a BYE's 200 (the To has its tag) and a CANCEL's transaction never ask."""
        tag = self._local_tag
        if tag is None:
            tag = self._local_tag = new_tag()
        return tag

    @property
    def cancelled(self) -> asyncio.Event:
        """Set when a CANCEL matched this INVITE (section 9.2); made on first use (most transactions never ask)."""
        if self._cancelled is None:
            self._cancelled = asyncio.Event()
        return self._cancelled

    @property
    def to_tag(self) -> str | None:
        """The To tag of the last response sent, if any."""
        if self.last_response is None:
            return None
        try:
            return self.last_response.to.tag
        except SipParseError:
            return None

    @property
    def final_sent(self) -> bool:
        return self.last_response is not None and self.last_response.status >= 200

    def respond(self, response: Response) -> bool:
        """Send ``response`` through the transaction; False if the state no longer allows it.

        Proceeding/Trying accept any response; Accepted (INVITE after a 2xx) accepts further 2xx
        (the UAS core's retransmissions); Completed and later accept nothing.
        """
        status = response.status
        state = self.state
        if state in (State.COMPLETED, State.CONFIRMED, State.TERMINATED) or (
                state is State.ACCEPTED and not 200 <= status < 300):
            log.debug("%r: not sending %d in state %s", self, status, state.value)
            return False
        if self.last_response is None and self._timer is not None:
            self._cancel_timer()          # the 100 Trying timer (it runs until the first response)
        self.last_response = response
        self._send(response)
        invite = self.method == "INVITE"
        if status < 200:
            if not invite:
                self.state = State.PROCEEDING
        elif invite and status < 300:
            if self.state is not State.ACCEPTED:
                self.state = State.ACCEPTED  # RFC 6026 section 7.1
                self._start_64t1(self._terminate)      # Timer L
        elif invite:
            self.state = State.COMPLETED
            self._start_64t1(self._timer_h)          # Timer H
        else:
            self.state = State.COMPLETED
            self._terminate()  # Timer J = 0 on reliable transports (17.2.2)
        return True

    def _send(self, response: Response) -> None:
        conn = self.conn
        if conn is not None:
            try:
                conn.send(response)       # (a closed connection raises: no is_open asked first, send asks it)
                return
            except TransportError:
                pass
        # Section 18.2.2: the connection is gone, try a new one to the Via's received/sent-by.
        task = asyncio.ensure_future(self.layer.transport.send_response(response, None))
        task.add_done_callback(self._fallback_done)

    def _fallback_done(self, task: asyncio.Future[Connection]) -> None:
        if task.cancelled():
            return
        exc = task.exception()
        if exc is not None:
            self._transport_failed(str(exc))
        else:
            self.conn = task.result()

    def _transport_failed(self, reason: str) -> None:
        """Section 17.2.4: inform the TU (``transport_error``) and terminate."""
        log.info("%r: transport error: %s", self, reason)
        self.transport_error = reason
        self._terminate()

    def _timer_h(self) -> None:
        self.timed_out = True
        log.info("%r: Timer H fired, no ACK for %d", self, self.last_response.status if self.last_response else 0)
        self._terminate()

    def _start_trying(self) -> None:
        if self.state is State.PROCEEDING and self.last_response is None:
            self._start_timer(self.layer.trying_delay, self._send_trying)

    def _send_trying(self) -> None:
        if self.state is State.PROCEEDING and self.last_response is None:
            self.respond(response_to(self.request, 100, "Trying"))

    def _on_retransmission(self, request: Request) -> None:
        """A retransmitted request (17.2.1 / 17.2.2): repeat the last response, or absorb it."""
        if self.state in (State.PROCEEDING, State.COMPLETED) and self.last_response is not None:
            self._send(self.last_response)
        # Trying (nothing sent yet), Accepted (RFC 6026: TU retransmits 2xx), Confirmed: absorb.

    def _on_ack(self, ack: Request) -> None:
        if self.state is State.COMPLETED:
            self.ack = ack
            self.state = State.CONFIRMED
            self._terminate()  # Timer I = 0 on reliable transports
        elif self.state is State.ACCEPTED:
            _run_callback(self.layer.on_request, ack, None)  # RFC 6026 section 7.1: pass the ACK up
        # Confirmed: absorbed.


class ClientTransaction(_Transaction):
    """INVITE (17.1.1 + RFC 6026) or non-INVITE (17.1.2) client transaction.

    ``await txn.final()`` gives the first final response (a local 408 on Timer B/F, a local 503 on
    a transport error; see ``error``). ``on_provisional(response)`` is called for each 1xx and
    ``on_response(response)`` for every response passed up, including 2xx retransmissions in the
    Accepted state. ``async for response in txn`` yields the same responses until termination.
    """

    def __init__(self, layer: TransactionLayer, request: Request, conn: Connection, key: tuple[Any, ...]) -> None:
        super().__init__(layer, request, conn, key, State.CALLING if request.method == "INVITE" else State.TRYING)
        self.on_provisional: Callable[[Response], Any] | None = None
        self.on_response: Callable[[Response], Any] | None = None
        self.provisional: Response | None = None
        self.final_response: Response | None = None
        #: ``"timeout"`` or ``"transport: ..."`` when the final response was generated locally.
        self.error: str | None = None
        #: The ACK this transaction sent for a non-2xx final response (17.1.1.3).
        self.ack: Request | None = None
        self._final: asyncio.Future[Response] = layer.loop.create_future()
        self._got_response = asyncio.Event()
        self._queue: asyncio.Queue[Response | None] = asyncio.Queue()

    async def final(self) -> Response:
        """The final response (first one for INVITE; 2xx retransmissions come via ``on_response``)."""
        return await asyncio.shield(self._final)

    def __aiter__(self) -> AsyncIterator[Response]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Response]:
        while True:
            item = await self._queue.get()
            if item is None:
                return
            yield item

    def _start(self) -> None:
        assert self.conn is not None
        self.conn.add_close_callback(self._on_conn_closed)
        if self.terminated:  # the connection was already gone
            return
        try:
            self.conn.send(self.request)
        except TransportError as exc:
            self._fail(503, "Service Unavailable", f"transport: {exc}")
            return
        self._start_64t1(self._on_timeout)  # Timer B or F

    def _on_conn_closed(self, conn: Connection) -> None:
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self._fail(503, "Service Unavailable", "transport: connection closed")

    def _on_timeout(self) -> None:
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            self._fail(408, "Request Timeout", "timeout")

    def _fail(self, status: int, reason: str, error: str) -> None:
        """Section 8.1.3.1: a timeout is a 408, a transport error a 503, generated locally."""
        if self.terminated:
            return
        self.error = error
        response = response_to(self.request, status, reason)
        self._pass_up(response)
        if not self._final.done():
            self.final_response = response
            self._final.set_result(response)
        self._terminate()

    def _terminate(self) -> None:
        if self.state is State.TERMINATED:
            return
        if self.conn is not None:
            self.conn.remove_close_callback(self._on_conn_closed)
        super()._terminate()
        self._got_response.set()
        self._queue.put_nowait(None)
        if not self._final.done():  # e.g. layer closed: never leave final() hanging
            self.error = self.error or "terminated"
            response = response_to(self.request, 503, "Service Unavailable")
            self.final_response = response
            self._final.set_result(response)

    def _pass_up(self, response: Response) -> None:
        self._queue.put_nowait(response)
        _run_callback(self.on_response, response)

    def _on_response(self, response: Response) -> None:
        """A response matched to this transaction (17.1.3)."""
        status = response.status
        self._got_response.set()
        if self.state in (State.CALLING, State.TRYING, State.PROCEEDING):
            if status < 200:
                if self.is_invite:
                    self._cancel_timer()  # Timer B only runs in Calling
                self.state = State.PROCEEDING
                self.provisional = response
                self._pass_up(response)
                _run_callback(self.on_provisional, response)
                return
            self._cancel_timer()  # Timer B or F
            self.final_response = response
            if self.is_invite and status < 300:
                self.state = State.ACCEPTED  # RFC 6026 section 7.2
                self._start_64t1(self._terminate)  # Timer M
            elif self.is_invite:
                self.state = State.COMPLETED
                self._send_ack(response)
            else:
                self.state = State.COMPLETED
            self._pass_up(response)
            self._final.set_result(response)
            if self.state is State.COMPLETED:
                self._terminate()  # Timer D / K = 0 on reliable transports
        elif self.state is State.ACCEPTED and 200 <= status < 300:
            self._pass_up(response)  # retransmitted (or forked) 2xx: the TU ACKs it
        elif self.state is State.COMPLETED and self.is_invite and status >= 300:
            self._send_ack(response)

    def _send_ack(self, response: Response) -> None:
        self.ack = build_ack(self.request, response)
        try:
            if self.conn is not None:
                self.conn.send(self.ack)
        except TransportError as exc:
            log.info("%r: could not send ACK: %s", self, exc)


class Retransmitter:
    """Resend a 2xx to INVITE until ACKed (RFC 3261 section 13.3.1.4), over any transport.

    First resend after T1, then the interval doubles up to T2; after 64*T1 without :meth:`ack` it
    gives up (``done`` resolves False, ``on_give_up`` runs: the UAS core should then BYE, 13.3.1.4).
    ``done`` resolves True once ACKed; :meth:`cancel` stops quietly (resolves False).
    """

    def __init__(self, send: Callable[[], Any], *, t1: float = T1, t2: float = T2,
                 on_give_up: Callable[[], Any] | None = None, loop: asyncio.AbstractEventLoop | None = None,
                 first: _FixedDelayTimers | None = None) -> None:
        self.loop = loop or asyncio.get_running_loop()
        # the first resend (after T1) on this shared queue of T1 timers, if given: nearly every 2xx is ACKed
        # before it, and a queued timer cancelled costs less than a loop timer started and cancelled
        self._first = first if first is not None and first.delay == t1 else None
        self._send: Callable[[], Any] | None = send      # both callbacks: None once stopped
        self.t1 = t1
        self.t2 = t2
        self.on_give_up = on_give_up
        self.retransmissions = 0
        self.acked = False
        self.gave_up = False
        self._result: bool | None = None                  # what ``done`` resolves to, once stopped
        self._done: asyncio.Future[bool] | None = None     # made when someone asks (the gateway never does)
        self._interval = t1
        self._left = 64 * t1             # until giving up, from the time the timer was last armed
        self._timer: asyncio.TimerHandle | _Timer | None = None     # one timer: the next resend, or giving up

    @property
    def done(self) -> asyncio.Future[bool]:
        """Resolves True once ACKed, False once it gave up or was cancelled."""
        if self._done is None:
            self._done = self.loop.create_future()
            if self._result is not None:
                self._done.set_result(self._result)
        return self._done

    def start(self) -> Retransmitter:
        """Arm the timer (the first transmission is the caller's)."""
        if self._timer is None and self._result is None:
            first = self._first
            if first is not None and self._interval < self._left:     # _arm's first step, on the shared queue
                self._left -= self._interval
                self._timer = first.start(self, self._tick)
            else:
                self._arm()
        return self

    def _fire(self, callback: Callable[[], None]) -> None:
        """The shared queue's timer expired (see :meth:`start`)."""
        self._timer = None
        callback()

    def _arm(self) -> None:
        if self._interval < self._left:
            self._left -= self._interval
            self._timer = self.loop.call_later(self._interval, self._tick)
        else:
            self._timer = self.loop.call_later(self._left, self._give_up)

    def _tick(self) -> None:
        if self._result is not None:
            return
        self.retransmissions += 1
        try:
            self._send()
        except Exception:
            log.exception("2xx retransmission failed")
        self._interval = min(2 * self._interval, self.t2)
        self._arm()

    def _stop(self, result: bool) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        # Stopped: let go of the callbacks. They hold the dialog that holds this retransmitter (a cycle only
        # the garbage collector would free, once per call); now the dialog dies when its call forgets it.
        self._send = self.on_give_up = None
        if self._result is None:
            self._result = result
            if self._done is not None:
                self._done.set_result(result)

    def ack(self) -> None:
        """The ACK for the 2xx arrived: stop."""
        if self._result is None:
            self.acked = True
        self._stop(True)

    def cancel(self) -> None:
        self._stop(False)

    def _give_up(self) -> None:
        if self._result is not None:
            return
        self.gave_up = True
        give_up = self.on_give_up
        self._stop(False)
        _run_callback(give_up)

    async def wait(self) -> bool:
        """True if ACKed, False if it gave up or was cancelled."""
        return await asyncio.shield(self.done)


class TransactionLayer:
    """Matches messages to transactions and runs their timers; installs itself on ``transport``.

    TU hooks (plain functions or coroutines; a coroutine from ``on_request`` runs at once up to its first
    wait, and goes on in a Task only if it waits):

    * ``on_request(request, server_txn)`` -- a new request; ``server_txn`` is None for an ACK that
      matches no transaction (the ACK to a 2xx, an end-to-end request for the dialog layer).
    * ``on_cancel(invite_txn, cancel)`` -- a CANCEL matched a pending INVITE (already answered 200).
    * ``on_stray_response(response, conn)`` -- a response matching no client transaction (e.g. a
      2xx retransmission after Timer M: the UAC core must still ACK it, 13.2.2.4).
    """

    def __init__(self, transport: TlsTransport, *, t1: float = T1, t2: float = T2, t4: float = T4,
                 trying_delay: float = TRYING_DELAY, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self.transport = transport
        self.loop = loop or asyncio.get_running_loop()
        self.t1 = t1
        self.t2 = t2
        self.t4 = t4
        self.trying_delay = trying_delay
        self.on_request: Callable[[Request, ServerTransaction | None], Any] | None = None
        self.on_cancel: Callable[[ServerTransaction, Request], Any] | None = None
        self.on_stray_response: Callable[[Response, Connection], Any] | None = None
        self.server_transactions: dict[tuple[Any, ...], ServerTransaction] = {}
        self.client_transactions: dict[tuple[Any, ...], ClientTransaction] = {}
        self.timers_64t1 = _FixedDelayTimers(self.loop, 64 * t1, t1)      # Timers H, L, B, F, M
        # the 2xx retransmitters' first resends (13.3.1.4), each up to a millisecond late: the loop's clock counts
        # milliseconds, so this is about as exact as a loop timer of its own
        self.timers_t1 = _FixedDelayTimers(self.loop, t1, 0.001)
        transport.on_message = self.receive

    # -- keys -------------------------------------------------------------------------------------
    @staticmethod
    def server_key(request: Request) -> tuple[Any, ...]:
        """Section 17.2.3: branch + sent-by + method, ACK (and CANCEL's target) as INVITE. The usual request's (a
        first Via field of one plain element with an RFC 3261 branch) from the Via's text in C, without the Via
        made (nothing else of a flow reads it: ~10 k instructions a request); :meth:`_server_key_in_python` is the
        reference (tests/test_sip_scan.py compares them) and the way of everything else."""
        index = request.headers._index
        values = index.get("via") if index is not None and VIA_FACTS is not None else None
        if values:
            facts = VIA_FACTS(values[0])
            if facts is not None:
                host, port, branch, _ = facts
                if branch is not None and branch.startswith(MAGIC_COOKIE):
                    method = request.method
                    return (branch, (host.lower(), port or 5061), "INVITE" if method == "ACK" else method)
        return TransactionLayer._server_key_in_python(request)

    @staticmethod
    def _server_key_in_python(request: Request) -> tuple[Any, ...]:
        """:meth:`server_key` from the parsed top Via: the reference, and the way of what C declines."""
        via = request.top_via
        method = request.method
        if method == "ACK":
            method = "INVITE"
        params = via.params            # Via.branch inline (the branch is nearly always spelled so)
        branch = (params["branch"] if "branch" in params else param(params, "branch")) or ""
        if branch.startswith(MAGIC_COOKIE):
            return (branch, (via.host.lower(), via.port or 5061), method)
        sent_by = (via.host.lower(), via.port or 5061)
        # RFC 2543 fallback (17.2.3 end): To tag excluded so the ACK matches its INVITE.
        return ("2543", request.call_id, request.from_.tag, request.cseq[0], str(via), method)

    @staticmethod
    def client_key(message: Message) -> tuple[Any, ...]:
        """Section 17.1.3: top-Via branch + CSeq method."""
        return (message.branch, message.cseq[1])

    def _remove(self, txn: _Transaction) -> None:
        table: dict[tuple[Any, ...], Any] = (
            self.server_transactions if isinstance(txn, ServerTransaction) else self.client_transactions)
        if table.get(txn.key) is txn:
            del table[txn.key]

    # -- receiving --------------------------------------------------------------------------------
    def receive(self, msg: Message, conn: Connection) -> None:
        """Entry point for the transport (installed as ``transport.on_message``)."""
        try:
            if isinstance(msg, Request):
                self._receive_request(msg, conn)
            else:
                self._receive_response(msg, conn)
        except SipParseError as exc:  # a header the transport did not validate (should not happen)
            log.info("dropping message from %r: %s", conn, exc.reason)

    def _receive_response(self, response: Response, conn: Connection) -> None:
        txn = self.client_transactions.get(self.client_key(response))
        if txn is not None:
            txn._on_response(response)
        else:
            _run_callback(self.on_stray_response, response, conn)

    def _receive_request(self, request: Request, conn: Connection) -> None:
        key = self.server_key(request)
        txn = self.server_transactions.get(key)
        method = request.method
        if method == "ACK":
            if txn is not None:
                txn._on_ack(request)
            else:
                _run_callback(self.on_request, request, None)
            return
        if txn is not None:
            txn._on_retransmission(request)
            return
        txn = ServerTransaction(self, request, conn, key)
        self.server_transactions[key] = txn
        if method == "CANCEL":
            self._receive_cancel(request, txn)
            return
        invite = method == "INVITE"
        if invite and self.trying_delay <= 0:
            txn._send_trying()
        if self.on_request is None:
            txn.respond(response_to(request, 503, "Service Unavailable", to_tag=txn.local_tag))
            return
        try:
            result = self.on_request(request, txn)
            if result is not None and inspect.iscoroutine(result):     # None: the common case, no ABC check
                # run now up to its first real wait: the gateway's placing of a call mostly never waits (its
                # media leg is allocated in this process), and then needs no Task and no turns of the loop
                yielded = result.send(None)
                task = self.loop.create_task(_resumed(result, yielded))     # it waits: a Task goes on with it
                task.add_done_callback(lambda t: self._tu_task_done(t, txn))
            elif result is not None and inspect.isawaitable(result):
                task = asyncio.ensure_future(result)
                task.add_done_callback(lambda t: self._tu_task_done(t, txn))
        except StopIteration:
            pass                                  # the coroutine ran to its end without waiting
        except asyncio.CancelledError:
            pass                                  # as a cancelled Task: no 500
        except Exception:
            log.exception("on_request failed for %s", method)
            self._internal_error(txn)
            return
        if invite and txn.last_response is None and txn.state is State.PROCEEDING:
            # the TU did not answer at once (a 407 or a refusal is sent from on_request): the 100 Trying of
            # section 17.2.1, unless it answers within trying_delay (the 200 ms the section allows). It may
            # answer later in this loop turn (the gateway's 180 leaves with the commit made at its end): the
            # timer starts after the turn, if still unanswered (a loop timer started and cancelled costs ~4.5 k
            # instructions, a callback made ready ~1 k)
            self.loop.call_soon(txn._start_trying)

    def _tu_task_done(self, task: asyncio.Future[Any], txn: ServerTransaction) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("on_request failed for %s", txn.method, exc_info=task.exception())
            self._internal_error(txn)

    @staticmethod
    def _internal_error(txn: ServerTransaction) -> None:
        if not txn.final_sent and not txn.terminated:
            txn.respond(response_to(txn.request, 500, "Server Internal Error", to_tag=txn.local_tag))

    def _receive_cancel(self, cancel: Request, cancel_txn: ServerTransaction) -> None:
        """Section 9.2: find the INVITE by branch/sent-by, answer 200 (or 481), tell the TU."""
        via = cancel.top_via
        invite: ServerTransaction | None = None
        if (via.branch or "").startswith(MAGIC_COOKIE):
            invite = self.server_transactions.get((via.branch, (via.host.lower(), via.port or 5061), "INVITE"))
        else:
            invite = self.server_transactions.get(self.server_key(cancel)[:-1] + ("INVITE",))
        if invite is None:
            cancel_txn.respond(response_to(cancel, 481, "Call/Transaction Does Not Exist", to_tag=new_tag()))
            return
        cancel_txn.respond(response_to(cancel, 200, "OK", to_tag=invite.to_tag or invite.local_tag))
        if invite.final_sent or invite.cancelled.is_set():
            return  # "the CANCEL has no effect on the original request" (9.2)
        invite.cancel_request = cancel
        invite.cancelled.set()
        if self.on_cancel is None:
            invite.respond(response_to(invite.request, 487, "Request Terminated", to_tag=invite.local_tag))
        else:
            _run_callback(self.on_cancel, invite, cancel)

    # -- sending ----------------------------------------------------------------------------------
    def send_request(self, request: Request, conn: Connection) -> ClientTransaction:
        """Start a client transaction for ``request`` (not ACK) on ``conn``.

        The request must carry a top Via with an RFC 3261 branch (``new_branch()``), unique per
        transaction (section 8.1.1.7).
        """
        if request.method == "ACK":
            raise ValueError("ACK is not sent in a client transaction: use send_ack()")
        branch = request.branch
        if not branch or not branch.startswith(MAGIC_COOKIE):
            raise ValueError("request needs a top Via with a z9hG4bK branch")
        key = (branch, request.method)
        if key in self.client_transactions:
            raise ValueError(f"a client transaction for branch {branch} {request.method} already exists")
        txn = ClientTransaction(self, request, conn, key)
        self.client_transactions[key] = txn
        txn._start()
        return txn

    async def cancel(self, invite: ClientTransaction) -> ClientTransaction | None:
        """Send CANCEL for a pending INVITE (section 9.1); None if it already got a final response.

        Waits for a provisional response first (9.1: no CANCEL before one arrives).
        """
        if not invite.is_invite:
            raise ValueError("only INVITE transactions can be cancelled")
        while invite.provisional is None and invite.state is State.CALLING:
            invite._got_response.clear()
            await invite._got_response.wait()
        if invite.state is not State.PROCEEDING or invite.conn is None or not invite.conn.is_open:
            return None
        return self.send_request(build_cancel(invite.request), invite.conn)

    def send_ack(self, ack: Request, conn: Connection) -> None:
        """Send the ACK to a 2xx: end to end, outside any transaction (section 13.2.2.4)."""
        self.transport.send(ack, conn)

    def send_stateless(self, msg: Message, conn: Connection) -> None:
        """Send any message without a transaction (e.g. a stateless response, 8.2.7)."""
        self.transport.send(msg, conn)

    def retransmit_2xx(self, txn: ServerTransaction, response: Response, *,
                       on_give_up: Callable[[], Any] | None = None) -> Retransmitter:
        """Send ``response`` (a 2xx to ``txn``'s INVITE) now, and again per 13.3.1.4 until ACKed.

        The TU calls ``.ack()`` on the returned :class:`Retransmitter` when the dialog's ACK arrives.
        """
        if not (txn.is_invite and 200 <= response.status < 300):
            raise ValueError("only 2xx responses to INVITE are retransmitted by the UAS core")
        txn.respond(response)

        def resend() -> None:
            if txn.state is State.ACCEPTED:
                txn.respond(response)
            elif txn.conn is not None and txn.conn.is_open:
                txn.conn.send(response)

        return Retransmitter(resend, t1=self.t1, t2=self.t2, on_give_up=on_give_up, loop=self.loop,
                             first=self.timers_t1).start()

    async def close(self) -> None:
        """Terminate every transaction (pending client ones fail with a local 503)."""
        for txn in [*self.client_transactions.values(), *self.server_transactions.values()]:
            txn._terminate()
        self.timers_64t1.close()
        self.timers_t1.close()


# -- request builders -----------------------------------------------------------------------------

def _copy_common(request: Request, method: str, to: str) -> Headers:
    """Via (top only), Route, From, To, Call-ID, CSeq(method), Max-Forwards as 17.1.1.3 and 9.1 ask."""
    h = Headers()
    h.add("Via", request.headers.get_all("Via")[0])
    for route in request.headers.get_all("Route"):
        h.add("Route", route)
    h.add("Max-Forwards", "70")
    h.add("From", request.headers.get("From") or "")
    h.add("To", to)
    h.add("Call-ID", request.call_id)
    h.add("CSeq", f"{request.cseq[0]} {method}")
    return h


def build_ack(invite: Request, response: Response) -> Request:
    """The ACK for a non-2xx final response (section 17.1.1.3): same branch, To from the response."""
    to = response.headers.get("To") or invite.headers.get("To") or ""
    return Request("ACK", invite.uri, _copy_common(invite, "ACK", to))


def build_cancel(invite: Request) -> Request:
    """CANCEL for ``invite`` (section 9.1): same Request-URI, top Via (branch), From, To, Call-ID, CSeq number."""
    return Request("CANCEL", invite.uri, _copy_common(invite, "CANCEL", invite.headers.get("To") or ""))
