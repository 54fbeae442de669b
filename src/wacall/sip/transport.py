"""SIP over TLS: an asyncio listener and connector (RFC 3261 section 18, RFC 5626 section 4.4.1, RFC 5923).

One :class:`Connection` per TLS stream. Bytes go through the sans-I/O
:class:`~wacall.sip.message.StreamFramer` (RFC 3261 section 18.3: Content-Length frames messages
on streams); each complete message is parsed and handed to ``on_message(msg, conn)``.

Behaviour on the wire:

* Keep-alive (RFC 5626 section 4.4.1): a ``CRLFCRLF`` ping is answered with a ``CRLF`` pong.
* Responses go back over the connection the request arrived on (RFC 3261 section 18.2.2); if that
  connection has gone, :meth:`TlsTransport.send_response` opens a new one to the top Via's
  ``received``/sent-by (only ever to loopback).
* Requests wacall originates go over an outgoing connection from :meth:`TlsTransport.connect`,
  reused per (hostname, port) while it stays open (RFC 5923 style reuse; TLS verifies ``hostname``).
* A request that frames but does not parse is answered ``400 <reason>`` (RFC 3261 section 21.4.1)
  when Via, From, To, Call-ID and CSeq can still be read; otherwise it is dropped. A malformed
  response is dropped silently (section 18.1.2). If the framer itself gives up, the framing is
  lost and the connection is closed.
* A misbehaving peer never takes the listener down: handshake failures, resets and garbage are
  contained per connection; a message left half-sent for ``half_message_timeout`` (slowloris)
  closes the connection; a peer that stops reading (write buffer over ``max_write_buffer``) is
  aborted. TCP_NODELAY is set on every socket (SIP messages are small and latency-bound).
* Idle clients cannot take the file descriptors calls need. The listener accepts plain TCP sockets
  itself and hands each to ``connect_accepted_socket`` for TLS, so it sees them before any TLS work:

  - at most ``max_connections`` incoming connections (handshaking or established) at a time; one
    more is closed at once, before the handshake (its client sees the TCP connection close and, per
    RFC 3261 section 8.1.3.1, treats it as a transport error), and the first refusal of an episode
    is logged (not every one);
  - a client that does not finish its TLS handshake within ``handshake_timeout`` (one that connects
    and never sends a ClientHello) is dropped;
  - a connection on which nothing moved for ``idle_timeout`` seconds is closed. Any bytes count,
    RFC 5626 section 4.4.1 CRLF keep-alives included; a connection that ``in_use(conn)`` says
    carries a live dialog is never closed for being quiet (its call has its own timers).

Only loopback is ever used: listening addresses must be loopback, and outgoing names resolve
through :class:`~wacall.sip.tls.Resolver`, which refuses everything else.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import re
import socket
import ssl
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Union

from .message import (PING, VIA_FACTS, Request, Response, SipParseError, StreamFramer, Via, _via_memo,
                      is_canonical_via, new_tag, parse_message, parse_via, remember_via)
from .uri import FrozenParams, _load_compiled, split_shared
from .tls import NotLoopbackError, Resolver, is_loopback

log = logging.getLogger(__name__)

Message = Union[Request, Response]
OnMessage = Callable[[Message, "Connection"], Union[None, Awaitable[None]]]

HALF_MESSAGE_TIMEOUT = 32.0
HANDSHAKE_TIMEOUT = 10.0
CONNECT_TIMEOUT = 10.0
MAX_WRITE_BUFFER = 1 << 20
LISTEN_BACKLOG = 128

__all__ = ["Connection", "Message", "TlsTransport", "TransportError", "TransportStats"]


class TransportError(OSError):
    """A message could not be sent: the connection is closed or could not be opened (RFC 3261 8.1.3.1)."""


@dataclass
class TransportStats:
    """Counters over the whole transport (all connections)."""

    bytes_in: int = 0
    bytes_out: int = 0
    messages_in: int = 0
    messages_out: int = 0
    parse_errors: int = 0
    bad_requests_answered: int = 0
    pings: int = 0
    connections_in: int = 0
    connections_out: int = 0
    timeouts: int = 0
    callback_errors: int = 0
    idle_closed: int = 0
    handshake_failures: int = 0
    refused: int = 0               # incoming connections closed before the handshake: over max_connections


class Connection(asyncio.Protocol):
    """One TLS stream carrying SIP in both directions (incoming or outgoing)."""

    def __init__(self, owner: TlsTransport, *, outgoing: bool, hostname: str | None = None) -> None:
        self.owner = owner
        self.outgoing = outgoing
        #: For outgoing connections: the name TLS verified (the peer's configured hostname).
        self.hostname = hostname
        self.peer: tuple[str, int] = ("", 0)
        self.local: tuple[str, int] = ("", 0)
        self.bytes_in = self.bytes_out = self.messages_in = self.messages_out = 0
        self._transport: asyncio.Transport | None = None
        self._framer = StreamFramer()
        self._partial_timer: asyncio.TimerHandle | None = None
        self._idle_timer: asyncio.TimerHandle | None = None
        self._last_activity = 0.0
        self._loop = asyncio.get_running_loop()
        self._closed = self._loop.create_future()
        self._close_callbacks: list[Callable[[Connection], None]] = []

    def __repr__(self) -> str:
        kind = "out" if self.outgoing else "in"
        return f"<Connection {kind} {self.local[0]}:{self.local[1]}->{self.peer[0]}:{self.peer[1]}>"

    # -- asyncio.Protocol -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:  # called after the handshake
        # Not isinstance-checked: uvloop's SSL transport is not an asyncio.Transport subclass.
        self._transport = transport  # type: ignore[assignment]
        peer = transport.get_extra_info("peername") or ("", 0)
        local = transport.get_extra_info("sockname") or ("", 0)
        self.peer, self.local = (str(peer[0]), int(peer[1])), (str(local[0]), int(local[1]))
        sock = transport.get_extra_info("socket")
        if sock is not None:
            try:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            except (OSError, AttributeError):  # pragma: no cover - non-TCP sockets in tests
                pass
        self.owner._register(self)
        self._touch()

    def connection_lost(self, exc: Exception | None) -> None:
        self._transport = None
        for timer in (self._partial_timer, self._idle_timer):
            if timer is not None:
                timer.cancel()
        self.owner._unregister(self)
        if not self._closed.done():
            self._closed.set_result(None)
        callbacks, self._close_callbacks = self._close_callbacks, []
        for cb in callbacks:
            try:
                cb(self)
            except Exception:  # pragma: no cover - defensive
                log.exception("close callback failed for %r", self)

    def data_received(self, data: bytes) -> None:
        size = len(data)
        self.bytes_in += size
        self.owner.stats.bytes_in += size
        self._touch()
        try:
            items = self._framer.feed(data)
        except Exception:  # a framer bug must not kill the loop: treat it as lost framing
            log.exception("framer failed on %r", self)
            self.owner.stats.parse_errors += 1
            self.abort()
            return
        for item in items:
            if not self.is_open:
                return
            if item is PING:
                self.owner.stats.pings += 1
                self._write_quietly(b"\r\n")  # RFC 5626 section 4.4.1 pong
            elif isinstance(item, SipParseError):
                self._on_framing_error(item)
            else:
                self._on_frame(item)          # bytes: the framer's messages are
        framer = self._framer
        if framer.closed:
            log.info("framing lost on %r: closing", self)
            self.close()
            return
        if framer.buffered or self._partial_timer is not None:    # (the usual read leaves neither: no call)
            self._arm_partial_timer()

    def eof_received(self) -> bool | None:
        return False  # close our side too

    # -- receiving --------------------------------------------------------------------------------
    def _on_frame(self, raw: bytes) -> None:
        owner = self.owner
        try:
            msg = parse_received(raw, self.peer)
        except SipParseError as exc:
            owner.stats.parse_errors += 1
            self._answer_bad_request(raw, exc.status, exc.reason)
            return
        except Exception as exc:  # parser bug: contain it like a parse error
            log.exception("parse_message failed on %r", self)
            owner.stats.parse_errors += 1
            self._answer_bad_request(raw, 400, f"Bad Request ({exc.__class__.__name__})")
            return
        self.messages_in += 1
        owner.stats.messages_in += 1
        callback = owner.on_message            # delivered here, in the one place messages come from
        if callback is None:
            return
        try:
            result = callback(msg, self)
        except Exception:
            owner.stats.callback_errors += 1
            log.exception("on_message failed for %s from %r", _describe(msg), self)
            return
        if result is not None and inspect.isawaitable(result):   # None: the common case, no ABC check
            owner._spawn(owner._await_callback(result, msg, self))

    def _answer_bad_request(self, raw: bytes, status: int, reason: str) -> None:
        """RFC 3261 section 21.4.1 400 if enough of the request survives to address a response."""
        if not 400 <= status <= 699:
            status, reason = 400, "Bad Request"
        response = salvage_error_response(raw, status, reason)
        if response is None:
            log.info("dropping unparseable message from %s: %s %s", self.peer, status, reason)
            return
        self.owner.stats.bad_requests_answered += 1
        self._write_quietly(response)

    def _on_framing_error(self, exc: SipParseError) -> None:
        """A framer error: answer it if the header block was readable (the framer may then close)."""
        self.owner.stats.parse_errors += 1
        partial = exc.message
        if isinstance(partial, Request):
            self._answer_bad_request(partial.to_bytes(), exc.status, exc.reason)
        else:
            log.info("framing error on %r: %s %s", self, exc.status, exc.reason)

    # -- timers -----------------------------------------------------------------------------------
    def _arm_partial_timer(self) -> None:
        """Slowloris guard: a message may not stay incomplete for longer than half_message_timeout."""
        if not self._framer.buffered:
            if self._partial_timer is not None:
                self._partial_timer.cancel()
                self._partial_timer = None
        elif self._partial_timer is None and self._transport is not None:
            self._partial_timer = asyncio.get_running_loop().call_later(
                self.owner.half_message_timeout, self._timed_out, "half a message")

    def _touch(self) -> None:
        """Something moved: the idle clock restarts (one timer per connection, re-armed when it fires)."""
        timeout = self.owner.idle_timeout
        if not timeout or self._transport is None:
            return
        loop = self._loop
        self._last_activity = loop.time()
        if self._idle_timer is None:
            self._idle_timer = loop.call_later(timeout, self._idle_check)

    def _idle_check(self) -> None:
        self._idle_timer = None
        timeout = self.owner.idle_timeout
        if not timeout or self._transport is None:
            return
        loop = asyncio.get_running_loop()
        quiet = loop.time() - self._last_activity
        if quiet < timeout:
            self._idle_timer = loop.call_later(timeout - quiet, self._idle_check)
        elif self.owner.in_use is not None and self.owner.in_use(self):
            self._idle_timer = loop.call_later(timeout, self._idle_check)   # a live dialog: keep it
        else:
            self.owner.stats.idle_closed += 1
            log.info("%r: idle for %.0f s, closing", self, quiet)
            self.close()

    def _timed_out(self, what: str) -> None:
        self.owner.stats.timeouts += 1
        log.info("%r: %s timeout, closing", self, what)
        self.abort()

    # -- sending ----------------------------------------------------------------------------------
    @property
    def is_open(self) -> bool:
        return self._transport is not None and not self._transport.is_closing()

    def write(self, data: bytes) -> None:
        """Write raw bytes; raises :class:`TransportError` if the connection is closed."""
        transport = self._transport
        if transport is None or transport.is_closing():
            raise TransportError(f"{self!r} is closed")
        transport.write(data)
        size = len(data)
        self.bytes_out += size
        self.owner.stats.bytes_out += size
        self._touch()
        if transport.get_write_buffer_size() > self.owner.max_write_buffer:
            log.warning("%r: peer is not reading (%d bytes queued), aborting", self, transport.get_write_buffer_size())
            self.abort()

    def _write_quietly(self, data: bytes) -> None:
        """Write from inside the protocol callbacks, where a closed connection is not an error."""
        try:
            self.write(data)
        except TransportError:
            pass

    def send(self, msg: Message | bytes) -> None:
        """Serialise and write one SIP message."""
        data = msg if isinstance(msg, (bytes, bytearray)) else msg.to_bytes()
        self.write(data if type(data) is bytes else bytes(data))
        self.messages_out += 1
        self.owner.stats.messages_out += 1

    def close(self) -> None:
        """Close gracefully (TLS close_notify)."""
        if self._transport is not None and not self._transport.is_closing():
            self._transport.close()

    def abort(self) -> None:
        """Drop the connection at once (misbehaving peer)."""
        if self._transport is not None:
            self._transport.abort()

    async def wait_closed(self) -> None:
        await asyncio.shield(self._closed)

    def add_close_callback(self, callback: Callable[[Connection], None]) -> None:
        """Call ``callback(conn)`` once the connection is lost (immediately if it already is)."""
        if self._closed.done():
            callback(self)
        else:
            self._close_callbacks.append(callback)

    def remove_close_callback(self, callback: Callable[[Connection], None]) -> None:
        try:
            self._close_callbacks.remove(callback)
        except ValueError:
            pass


class TlsTransport:
    """SIP/TLS listener plus connector; set ``on_message`` to receive parsed messages."""

    def __init__(
        self,
        *,
        server_ssl: ssl.SSLContext | None = None,
        client_ssl: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        on_message: OnMessage | None = None,
        half_message_timeout: float = HALF_MESSAGE_TIMEOUT,
        idle_timeout: float | None = None,
        handshake_timeout: float = HANDSHAKE_TIMEOUT,
        connect_timeout: float = CONNECT_TIMEOUT,
        max_write_buffer: int = MAX_WRITE_BUFFER,
        max_connections: int | None = None,
        in_use: Callable[[Connection], bool] | None = None,
    ) -> None:
        self.server_ssl = server_ssl
        self.client_ssl = client_ssl
        self.resolver = resolver or Resolver()
        self.on_message = on_message
        self.half_message_timeout = half_message_timeout
        self.idle_timeout = idle_timeout
        self.handshake_timeout = handshake_timeout
        self.connect_timeout = connect_timeout
        self.max_write_buffer = max_write_buffer
        #: incoming connections allowed at once, handshaking ones included (None or 0: no limit)
        self.max_connections = max_connections
        #: ``in_use(conn)``: whether a live dialog runs over ``conn`` (then idleness never closes it)
        self.in_use = in_use
        self.incoming = 0             # incoming TCP connections held now (handshaking or established)
        self._over_cap = False        # inside an episode of refusals (logged once per episode)
        self._accept_failing = False
        self.stats = TransportStats()
        self.connections: set[Connection] = set()
        self._listener: socket.socket | None = None
        self._accepting: asyncio.Task[None] | None = None
        self._outgoing: dict[tuple[str, int], Connection] = {}
        self._connecting: dict[tuple[str, int], asyncio.Task[Connection]] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._handshakes: set[asyncio.Task[None]] = set()

    # -- listener ---------------------------------------------------------------------------------
    async def start(self, host: str = "127.0.0.1", port: int = 5061) -> None:
        """Listen for SIP/TLS on ``host:port`` (loopback only; port 0 picks a free port)."""
        if self.server_ssl is None:
            raise ValueError("TlsTransport.start needs server_ssl (see sip.tls.server_context)")
        if host != "localhost" and not is_loopback(host.strip("[]")):
            raise NotLoopbackError(f"refusing to listen on {host}: loopback only")
        loop = asyncio.get_running_loop()
        infos = await loop.getaddrinfo(host.strip("[]"), port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        family, _, proto, _, address = infos[0]
        listener = socket.socket(family, socket.SOCK_STREAM, proto)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind(address)
            listener.listen(LISTEN_BACKLOG)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listener = listener
        self._accepting = asyncio.ensure_future(self._accept_loop(listener))

    async def _accept_loop(self, listener: socket.socket) -> None:
        """Accept TCP connections; each one is counted against ``max_connections`` (or closed at once,
        before any TLS work, when over it) and then upgraded to TLS within ``handshake_timeout``."""
        loop = asyncio.get_running_loop()
        while True:
            try:
                sock, _ = await loop.sock_accept(listener)
            except OSError as exc:                  # EMFILE and friends: back off instead of spinning
                if not self._accept_failing:
                    self._accept_failing = True
                    log.warning("SIP/TLS: cannot accept connections (%s); retrying (logged once)", exc)
                await asyncio.sleep(0.1)
                continue
            self._accept_failing = False
            if not self._admit():
                sock.close()                        # before the handshake: no TLS work for a refused client
                continue
            task = asyncio.ensure_future(self._handshake(sock))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    def _admit(self) -> bool:
        """Hold a slot for a just-accepted connection, or refuse it (over ``max_connections``)."""
        cap = self.max_connections
        if cap and self.incoming >= cap:
            self.stats.refused += 1
            if not self._over_cap:
                self._over_cap = True
                log.warning("SIP/TLS: %d incoming connections, the limit (max_connections): refusing new "
                            "ones before the TLS handshake until some close (logged once per episode)", cap)
            return False
        self.incoming += 1
        return True

    def _release(self) -> None:
        self.incoming -= 1
        cap = self.max_connections
        if self._over_cap and (not cap or self.incoming < cap):
            self._over_cap = False
            log.info("SIP/TLS: below max_connections again (%d refused so far)", self.stats.refused)

    async def _handshake(self, sock: socket.socket) -> None:
        """TLS on an accepted connection (RFC 3261 section 26.2.1). The connection's slot is released
        when it closes, or here if the handshake fails or times out."""
        established = False
        conn = Connection(self, outgoing=False)
        try:
            # (uvloop returns its SSL protocol, not ours, as the second item: use ``conn`` itself)
            await asyncio.get_running_loop().connect_accepted_socket(
                lambda: conn, sock, ssl=self.server_ssl, ssl_handshake_timeout=self.handshake_timeout)
            conn.add_close_callback(lambda _conn: self._release())
            established = True
        except (OSError, ssl.SSLError, asyncio.TimeoutError, ConnectionError) as exc:
            self.stats.handshake_failures += 1
            log.debug("TLS handshake failed: %r", exc)
        finally:
            if not established:
                sock.close()
                self._release()

    @property
    def port(self) -> int:
        """The listening port (after :meth:`start`)."""
        if self._listener is None:
            raise RuntimeError("not listening")
        return int(self._listener.getsockname()[1])

    @property
    def host(self) -> str:
        if self._listener is None:
            raise RuntimeError("not listening")
        return str(self._listener.getsockname()[0])

    async def close(self) -> None:
        """Stop listening and close every connection."""
        if self._accepting is not None:
            self._accepting.cancel()
        for task in [*self._connecting.values(), *self._handshakes]:
            task.cancel()
        conns = list(self.connections)
        for conn in conns:
            conn.abort()
        for task in list(self._tasks):
            task.cancel()
        if conns:
            await asyncio.wait([asyncio.ensure_future(c.wait_closed()) for c in conns], timeout=5)
        if self._accepting is not None:
            await asyncio.gather(self._accepting, *self._handshakes, return_exceptions=True)
            self._accepting = None
        if self._listener is not None:
            self._listener.close()
            self._listener = None

    # -- bookkeeping ------------------------------------------------------------------------------
    def _register(self, conn: Connection) -> None:
        self.connections.add(conn)
        if conn.outgoing:
            self.stats.connections_out += 1
        else:
            self.stats.connections_in += 1

    def _unregister(self, conn: Connection) -> None:
        self.connections.discard(conn)
        for key, value in list(self._outgoing.items()):
            if value is conn:
                del self._outgoing[key]

    async def _await_callback(self, result: Awaitable[None], msg: Message, conn: Connection) -> None:
        try:
            await result
        except Exception:
            self.stats.callback_errors += 1
            log.exception("on_message failed for %s from %r", _describe(msg), conn)

    def _spawn(self, coro: Awaitable[None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- connector --------------------------------------------------------------------------------
    async def connect(self, host: str, port: int = 5061, *, address: str | None = None) -> Connection:
        """An open outgoing connection to ``host:port``: reused if one exists, else a new TLS one.

        ``host`` is a hostname (mapped to loopback by the resolver; the TLS certificate must cover
        it) or a loopback IP literal. ``address`` (loopback only) overrides the resolver but TLS
        still verifies ``host``. Concurrent calls for the same target share one handshake.
        """
        if self.client_ssl is None:
            raise ValueError("TlsTransport.connect needs client_ssl (see sip.tls.client_context)")
        key = (host.strip().lower().rstrip(".").strip("[]"), int(port))
        conn = self._outgoing.get(key)
        if conn is not None and conn.is_open:
            return conn
        task = self._connecting.get(key)
        if task is None:
            task = asyncio.ensure_future(self._open(key[0], key[1], address))
            self._connecting[key] = task
            task.add_done_callback(lambda t, k=key: self._connecting.pop(k, None))
        conn = await asyncio.shield(task)
        self._outgoing[key] = conn
        return conn

    async def _open(self, host: str, port: int, address: str | None) -> Connection:
        if address is not None:
            addresses = await self.resolver.resolve(address, port)  # enforces loopback
        else:
            addresses = await self.resolver.resolve(host, port)
        loop = asyncio.get_running_loop()
        last: Exception | None = None
        for address in addresses:
            try:
                _, conn = await asyncio.wait_for(
                    loop.create_connection(lambda: Connection(self, outgoing=True, hostname=host), address, port,
                                           ssl=self.client_ssl, server_hostname=host,
                                           ssl_handshake_timeout=self.handshake_timeout),
                    self.connect_timeout)
            except (OSError, asyncio.TimeoutError) as exc:
                last = exc
                continue
            return conn
        raise TransportError(f"cannot connect to {host}:{port}: {last}") from last

    # -- sending ----------------------------------------------------------------------------------
    def send(self, msg: Message | bytes, conn: Connection) -> None:
        """Send ``msg`` on ``conn`` now; raises :class:`TransportError` if it is closed."""
        conn.send(msg)

    async def send_response(self, response: Response, conn: Connection | None) -> Connection:
        """RFC 3261 section 18.2.2: on the request's connection, else a new one to the top Via.

        The fallback target is ``received`` (else the sent-by host) and ``rport`` (else the sent-by
        port, default 5061); the resolver keeps it on loopback. Returns the connection used.
        """
        if conn is not None and conn.is_open:
            conn.send(response)
            return conn
        host, received, port = _via_target(response)
        if host is None:
            raise TransportError("connection closed and no usable Via to reach the client")
        address = received if received is not None and is_loopback(received) else None
        new_conn = await self.connect(host, port, address=address)
        new_conn.send(response)
        return new_conn


# -- helpers --------------------------------------------------------------------------------------

def parse_received(raw: bytes, peer: tuple[str, int]) -> Message:
    """A message received from ``peer``: :func:`parse_message`, then :func:`stamp_via` if it is a request (errors
    are parse_message's). The usual request, whose first header line is ``Via: ...;rport`` from the host that
    Via names, is stamped in its octets first (``=<port>`` appended to that line, :func:`rport_spliced`) and parsed
    once: what the stamp would make of the parsed request, without a second Via built and the field spliced in
    again (the parse checks that it is; tests/test_sip_transport.py compares the two ways)."""
    host, port = peer
    if host:
        spliced = _RPORT_SPLICED(raw, port) if _RPORT_SPLICED is not None else rport_spliced(raw, port)
        if spliced is not None:
            try:
                msg = parse_message(spliced)
            except Exception:       # the message as received decides (the same error, or the general stamp)
                msg = None
            if msg is not None and _stamped_as_usual(msg, host, str(port)):
                return msg
    msg = parse_message(raw)
    if isinstance(msg, Request):
        try:
            stamp_via(msg, peer)
        except SipParseError:  # pragma: no cover - parse_message already checked the Via
            pass
    return msg


def rport_spliced(raw: bytes, port: int) -> bytes | None:
    """``raw`` with ``=<port>`` after the ``;rport`` that ends its first header line, when that line is
    ``Via: <one element with one ;rport>`` in CRLF and ``raw`` is not a response; else None. The reference of the
    compiled ``_sipscan.rport_spliced`` (one call instead of six byte searches per request received;
    tests/test_sip_transport.py compares the two)."""
    lf = raw.find(b"\n")
    if not (0 <= port <= 65535 and lf > 1 and raw[lf - 1] == 13 and raw.startswith(b"Via: ", lf + 1)
            and raw[:4].upper() != b"SIP/"):
        return None
    end = raw.find(b"\r\n", lf + 6)
    # the Via line's own end: a line ending in a bare LF (which the parser takes) ends before that CRLF
    if end < 0 or not raw.endswith(b";rport", 0, end) or raw.find(b"\n", lf + 1, end) >= 0:
        return None
    value = raw[lf + 6:end]
    if b"," in value or b"\r" in value or value.lower().count(b";rport") != 1:
        return None
    return b"".join((raw[:end], b"=", str(port).encode(), raw[end:]))


#: :func:`rport_spliced` in C (sipscan.c), or None (WACALL_SIPSCAN=0, not built)
_RPORT_SPLICED = _load_compiled("rport_spliced")


def _stamped_as_usual(msg: Message, host: str, rport: str) -> bool:
    """True if ``msg``, parsed from octets whose first header line got ``=<rport>`` appended, is a request whose
    first field is that Via, and the Via before the stamp is one :func:`_stamp_rport` stamps so (one element,
    written as the parser reads it back, from ``host``, its one ``rport`` the last parameter)."""
    items = msg.headers._items
    if type(msg) is not Request or not items:
        return False
    name, text = items[0]
    return name == "Via" and text.endswith(";rport=" + rport) and _splices(text, host)


def _splices(text: str, host: str) -> bool:
    """``_splice_form(text, host) is not None``, for a plain Via from its facts read in C (sipscan.c via_facts)
    without a Via made (the transaction layer's key needs none either); tests/test_sip_scan.py compares them."""
    facts = VIA_FACTS(text) if VIA_FACTS is not None else None
    if facts is None:
        return _splice_form(text, host) is not None
    if text.lower().count(";rport") != 1:      # (a plain Via holds no ",")
        return False
    via_host, _, _, canonical = facts
    return canonical and (via_host == host or via_host.strip("[]").lower() == host.lower())


def stamp_via(request: Request, peer: tuple[str, int]) -> None:
    """RFC 3261 section 18.2.1 ``received`` and RFC 3581 section 4 ``rport`` on the top Via.

    ``received`` is added when the sent-by host is not the packet source address; ``rport`` gets
    the source port when the client sent it empty. The top Via header element is rewritten in place.
    """
    host, port = peer
    if not host:
        return
    first = request.headers.get("Via")
    if first is None or not first.endswith(";rport") or not _stamp_rport(request, first, host, port):
        _stamp_any(request, host, port)


def _stamp_any(request: Request, host: str, port: int) -> None:
    """:func:`stamp_via` for every Via (the reference for :func:`_stamp_rport`)."""
    via = request.top_via            # shared with the parser's memo: the changed Via is a new one
    params: dict[str, str | None] | None = None
    if via.host.strip("[]").lower() != host.lower():
        params = dict(via.params)
        _set_param(params, "received", host)
    if via.wants_rport and via.rport is None:
        params = dict(via.params) if params is None else params
        _set_param(params, "rport", str(port))
    if params is None:
        return
    via = Via(via.transport, via.host, via.port, FrozenParams(params))
    text = str(via)
    remember_via(text, via)          # the layers above read this Via next: not parsed again from its text
    field = request.headers.get("Via") or ""
    if "," in field:                 # more Via elements in the first field: rewrite the first only
        text = ", ".join([text, *split_shared(field)[1:]])
    request.replace_first("Via", text)    # the received octets stay the wire form, with this Via


def _stamp_rport(request: Request, first: str, host: str, port: int) -> bool:
    """:func:`stamp_via` for what nearly every client sends: the first Via field is one element, written as the
    parser reads it back (``Via.__str__`` gives the same text), from the packet's source host, ending with the one
    valueless ``rport`` it has: the stamp is ``=<port>`` appended to that text (False: the general way decides;
    tests/test_sip_transport.py compares the two)."""
    via = _splice_form(first, host)
    if via is None:
        return False
    rport = str(port)
    params = dict(via.params)
    params["rport"] = rport                      # the last parameter: its position is kept
    text = f"{first}={rport}"
    remember_via(text, Via(via.transport, via.host, via.port, FrozenParams(params)))
    request.replace_first("Via", text)
    return True


def _splice_form(text: str, host: str) -> Via | None:
    """The Via of a first Via field the rport stamp is spliced into (by :func:`_stamp_rport` after the parse, by
    :func:`parse_received` before it): one element with one ``rport`` (the caller checks it ends the text),
    written as the parser reads it back, from ``host``; else None."""
    if "," in text or text.lower().count(";rport") != 1:
        return None
    via = _via_memo.get(text) or parse_via(text)     # the parser's memo: checked when the request was parsed
    if not is_canonical_via(text, via) or (via.host != host and via.host.strip("[]").lower() != host.lower()):
        return None
    return via


def _set_param(params: dict[str, str | None], name: str, value: str) -> None:
    """Set ``name`` in place (keeping its position and spelling) or append it."""
    for key in params:
        if key.lower() == name:
            params[key] = value
            return
    params[name] = value


def _describe(msg: Message) -> str:
    if isinstance(msg, Request):
        return f"{msg.method} request"
    return f"{msg.status} response"


def _via_target(response: Response) -> tuple[str | None, str | None, int]:
    """(sent-by host, received address, sent-by port) of the top Via (RFC 3261 section 18.2.2).

    ``rport`` is ignored: on a connection-oriented transport it names the client's ephemeral
    port, which is not listening once the connection is gone.
    """
    try:
        via = response.top_via
    except SipParseError:
        return None, None, 5061
    return via.host.strip("[]"), via.received, via.port or 5061


_COMPACT = {"v": "via", "f": "from", "t": "to", "i": "call-id"}
_NEEDED = ("via", "from", "to", "call-id", "cseq")
#: loose on purpose: a Request-URI with spaces in it (RFC 4475 §3.1.2.8) still gets its 400
_REQUEST_LINE = re.compile(rb"^([A-Za-z0-9.!%*_+`'~-]+) +.+? +SIP/\d+\.\d+\s*$")
_TAG = re.compile(r";\s*tag\s*=", re.IGNORECASE)


def salvage_error_response(raw: bytes, status: int, reason: str) -> bytes | None:
    """Build ``SIP/2.0 <status> <reason>`` for an unparseable request, or None if that is impossible.

    Needs a request line, at least one Via, and From, To, Call-ID and CSeq (RFC 3261 section 8.2.6.2
    copies these into the response). The To gets a tag if it has none. ACK is never answered
    (section 17.2.1), nor is anything that looks like a response (section 18.1.2).
    """
    head = raw.split(b"\r\n\r\n", 1)[0].split(b"\n\n", 1)[0]
    lines = head.replace(b"\r\n", b"\n").split(b"\n")
    match = _REQUEST_LINE.match(lines[0]) if lines else None
    if match is None or match.group(1).upper() == b"ACK":
        return None
    fields: dict[str, list[str]] = {}
    last: str | None = None
    for line in lines[1:]:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            text = line.decode("latin-1")
        if text[:1] in (" ", "\t") and last is not None:  # folded continuation (section 7.3.1)
            fields[last][-1] += " " + text.strip()
            continue
        name, sep, value = text.partition(":")
        if not sep:
            last = None
            continue
        key = name.strip().lower()
        key = _COMPACT.get(key, key)
        if key not in _NEEDED:
            last = None
            continue
        fields.setdefault(key, []).append(value.strip())
        last = key
    if any(not fields.get(k) or not fields[k][0] for k in _NEEDED):
        return None
    if any(ch in v for vs in fields.values() for v in vs for ch in "\r\n\x00"):
        return None
    cseq = fields["cseq"][0].split()
    if len(cseq) != 2 or not (cseq[0].isascii() and cseq[0].isdigit()):
        return None
    to = fields["to"][0]
    if not _TAG.search(to):
        to = f"{to};tag={new_tag()}"
    reason = re.sub(r"[\r\n\x00]", " ", reason) or "Bad Request"
    out = [f"SIP/2.0 {status} {reason}"]
    out += [f"Via: {v}" for v in fields["via"]]
    out += [f"From: {fields['from'][0]}", f"To: {to}", f"Call-ID: {fields['call-id'][0]}",
            f"CSeq: {fields['cseq'][0]}", "Content-Length: 0", "", ""]
    return "\r\n".join(out).encode("utf-8")
