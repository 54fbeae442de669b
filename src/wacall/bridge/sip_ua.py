"""The bridge's SIP user agent toward the PBX (RFC 3261) over UDP, TCP or TLS, on wacall's sans-I/O SIP message
and digest modules.

* Transports (RFC 3261 18): UDP as one datagram socket; TCP and TLS as connections framed by Content-Length
  (``StreamFramer``), one per peer, made on demand and reused both ways. The bridge listens for the PBX's own
  connections (TCP always; TLS when it has a certificate) and puts ``;alias`` in its Via (RFC 5923), so a PBX that
  honours it (Kamailio ``tcp_accept_aliases``) sends its requests back over the bridge's connection. TLS verifies
  the PBX's certificate against ``tls_ca`` (or the system's CAs) and its name (``tls_server_name``), unless told
  not to. Over a reliable transport requests and non-2xx answers are not retransmitted (Timers A, E, G are
  UDP-only; B, F, H stay); our 2xx to an INVITE is, until its ACK, whatever the transport (RFC 3261 13.3.1.4).
* Digest (RFC 3261 22, RFC 2617/7616, ``wacall.sip.digest``): a 401/407 to a REGISTER, INVITE or BYE is answered
  once per realm with ``username``/``password`` (again only for ``stale=true``); a second challenge is a refusal.
* Registration (RFC 3261 10): REGISTER ``sip:<username>@<domain>`` with our Contact, refreshed before the granted
  expiry, retried ``register_retry`` seconds after a failure (or at once when the PBX connection drops),
  unregistered (Expires: 0) at stop. Without ``register`` the PBX trusts the bridge by address (IP trust).
* Calls: place an INVITE (Timer A/B), ACK the final answer (a 2xx by a new request along the dialog, a non-2xx
  hop by hop), CANCEL (after a provisional answer, a non-INVITE transaction of its own: Timers E/F), BYE both
  ways; a 2xx to an INVITE given up (CANCELled, timed out, another fork) is ACKed and ended with a BYE; answer
  the PBX's INVITE (only from the PBX's own addresses: anyone else gets 403) (:class:`Incoming`): a 2xx resent
  until its ACK and, when no ACK comes within 64*T1 (Timer H, RFC 3261 13.3.1.4), the dialog is ended with a BYE
  and the bridge hears it through ``on_bye`` like a BYE from the PBX.
* In a call: the PBX's re-INVITE and UPDATE (session refresh, hold, resume) are answered from the dialog's SDPs
  (:func:`answer_offer`: the same media or 488), ``Session-Expires`` echoed with the PBX as refresher.
"""

from __future__ import annotations

import asyncio
import logging
import random
import re
import socket
import ssl
from dataclasses import dataclass, field
from typing import Callable

from wacall.sip.digest import answer as digest_answer, parse_challenge
from wacall.sip.message import (PING, Headers, Request, Response, SipParseError, StreamFramer, new_branch,
                                new_call_id, new_tag, parse_message, response_to)
from wacall.sip.uri import parse_name_addr

log = logging.getLogger("wacall.bridge.sip")

T1, T2 = 0.5, 4.0
TRANSPORTS = ("udp", "tcp", "tls")
CONNECT_TIMEOUT = 10.0
KEEPALIVE = 30.0                    # CRLF CRLF on the PBX connection (RFC 5626 3.5.1) so it outlives idle timers
_EXPIRES = re.compile(r";\s*expires\s*=\s*(\d+)", re.I)


class SipFailure(Exception):
    """A request ended without a 2xx: ``status`` (408 when nothing answered, 503 when the transport failed)
    and ``reason``."""

    def __init__(self, status: int, reason: str) -> None:
        super().__init__(f"{status} {reason}")
        self.status, self.reason = status, reason


class _Failed:
    """Put in a transaction's queue when its connection failed (RFC 3261 18.4: reported as a 503)."""

    def __init__(self, reason: str) -> None:
        self.reason = reason


@dataclass
class Dialog:
    call_id: str
    local_tag: str
    local_uri: str                      # From of our requests
    remote_uri: str                     # To of our requests
    target: str                         # the remote Contact: the Request-URI of requests in the dialog
    route: list[str] = field(default_factory=list)
    remote_tag: str | None = None
    cseq: int = 1
    ended: bool = False
    unacked: bool = False               # ended by us because our 2xx never got its ACK (Timer H)
    local_sdp: str = ""                 # the SDP the bridge gave the PBX last (its offer, or its answer)
    remote_sdp: str = ""                # the PBX's last SDP (re-INVITE/UPDATE offers are compared with it)


def tls_contexts(*, ca: str = "", verify: bool = True, cert: str = "", key: str = ""
                 ) -> tuple[ssl.SSLContext, ssl.SSLContext | None]:
    """The client context (the PBX's certificate checked against ``ca``, or the system's CAs; not at all
    when ``verify`` is False) and, with ``cert``/``key``, the server context of the bridge's TLS listener
    (the same certificate is offered as a client certificate to a PBX that asks for one)."""
    client = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=ca or None)
    if not verify:
        client.check_hostname = False
        client.verify_mode = ssl.CERT_NONE
    server = None
    if cert:
        client.load_cert_chain(cert, key or None)
        server = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        server.load_cert_chain(cert, key or None)
    return client, server


class _Stream(asyncio.Protocol):
    """One TCP/TLS connection: messages cut by :class:`StreamFramer`, handed to the UA with the peer's address
    (which is also where the UA's answers to them go: RFC 3261 18.2.2, on the same connection)."""

    def __init__(self, ua: "SipUserAgent", peer: tuple[str, int] | None = None) -> None:
        self.ua, self.peer = ua, peer
        self.outbound = peer is not None
        self.transport: asyncio.Transport | None = None
        self.pending: list[bytes] = []
        self.framer = StreamFramer()
        self.closed = False

    def connection_made(self, transport) -> None:                       # type: ignore[override]
        self.transport = transport
        if self.peer is None:                                            # accepted from the PBX
            self.peer = tuple(transport.get_extra_info("peername")[:2])  # type: ignore[assignment]
            self.ua._streams[self.peer] = self                          # type: ignore[index]
        for data in self.pending:
            transport.write(data)
        self.pending.clear()
        self.ua._stream_up(self)

    def write(self, data: bytes) -> None:
        if self.closed:
            return
        if self.transport is None:
            self.pending.append(data)
        else:
            self.transport.write(data)

    def data_received(self, data: bytes) -> None:
        assert self.transport is not None and self.peer is not None
        for item in self.framer.feed(data):
            if item is PING:
                self.transport.write(b"\r\n")                           # RFC 5626 4.4.1: pong
            elif isinstance(item, SipParseError):
                log.warning("SIP from %s:%s: %s", *self.peer, item)
                if self.framer.closed:
                    self.transport.close()
            else:
                self.ua._received(item, self.peer)                      # type: ignore[arg-type]

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self.ua._stream_lost(self, str(exc) if exc else "connection closed")

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()


class SipUserAgent(asyncio.DatagramProtocol):
    """A SIP UA on ``host:port`` (0: a free port) over ``transport`` sending its requests to the PBX at ``pbx``."""

    def __init__(self, host: str, port: int, pbx: tuple[str, int], *, t1: float = T1, transport: str = "udp",
                 domain: str = "", username: str = "", password: str = "", register: bool = False,
                 register_expires: int = 600, register_retry: float = 30.0,
                 client_ssl: ssl.SSLContext | None = None, server_ssl: ssl.SSLContext | None = None,
                 tls_server_name: str = "") -> None:
        if transport not in TRANSPORTS:
            raise ValueError(f"transport must be one of {', '.join(TRANSPORTS)}")
        self.host, self.port, self.pbx, self.t1 = host, port, pbx, t1
        self.trusted: set[str] = {pbx[0]}               # the PBX's addresses (resolved at start)
        self.kind = transport
        self.reliable = transport != "udp"
        self.domain = domain or pbx[0]
        self.username, self.password = username, password
        self.user = username or "bridge"
        self.client_ssl = client_ssl if transport == "tls" else None
        if transport == "tls" and self.client_ssl is None:
            self.client_ssl = tls_contexts()[0]
        self.server_ssl = server_ssl
        self.tls_server_name = tls_server_name or self.domain
        self.transport: asyncio.DatagramTransport | None = None
        self.dialogs: dict[str, Dialog] = {}
        self.on_bye: Callable[[Dialog], None] | None = None
        # a re-INVITE/UPDATE changed the dialog (its SDPs, its target): called before the 2xx goes out
        self.on_dialog_changed: Callable[[Dialog], None] | None = None
        self._waiting: dict[tuple[str, str], asyncio.Queue] = {}    # (branch, method) -> responses
        self._hops: dict[tuple[str, str], tuple[str, int]] = {}      # (branch, method) -> where it was sent
        self._cancelled: dict[str, Request] = {}      # branch -> an INVITE we CANCELled (its 487 gets an ACK)
        self._finished: dict[str, Request] = {}       # branch -> an INVITE whose transaction ended, for 64*T1
        self._strays: dict[tuple[str, str], Dialog] = {}   # (Call-ID, To tag) -> a 2xx's dialog we ended at once
        self._reinvites: dict[tuple[str, int], Incoming] = {}   # (Call-ID, CSeq) -> the PBX's re-INVITE
        self._inviting: dict[str, asyncio.Queue] = {}  # Call-ID -> the pending INVITE's responses
        self.on_invite: Callable[["Incoming"], None] | None = None   # a new INVITE from the PBX
        self.incoming: dict[str, Incoming] = {}       # Call-ID -> an INVITE from the PBX not yet ACKed
        self._streams: dict[tuple[str, int], _Stream] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tasks: set[asyncio.Task] = set()
        # registration (RFC 3261 10.2: one Call-ID and From tag for all of them, CSeq rising)
        self.register_enabled, self.register_expires, self.register_retry = register, register_expires, register_retry
        self.registration = "off" if not register else "not yet"   # "registered", or what went wrong
        self.registered_until = 0.0
        self._reg_call_id = new_call_id(host)
        self._reg_tag = new_tag()
        self._reg_cseq = 0
        self._bound: str | None = None                # the Contact the registrar holds for us
        self._reg_task: asyncio.Task | None = None
        self._reg_now = asyncio.Event()
        self._reg_done = asyncio.Event()

    @classmethod
    def from_config(cls, s) -> "SipUserAgent":
        """From bridge.toml's ``[sip]`` (:class:`wacall.bridge.config.SipSection`)."""
        client, server = (tls_contexts(ca=s.tls_ca, verify=s.tls_verify, cert=s.tls_cert, key=s.tls_key)
                          if s.transport == "tls" else (None, None))
        return cls(s.host, s.port, (s.pbx_host, s.pbx_port), t1=s.t1, transport=s.transport, domain=s.domain,
                   username=s.username, password=s.password, register=s.register,
                   register_expires=s.register_expires, register_retry=s.register_retry, client_ssl=client,
                   server_ssl=server, tls_server_name=s.tls_server_name)

    async def start(self) -> int:
        """Listen (UDP socket; TCP listener; TLS listener when there is a certificate, else the connection to
        the PBX is opened now and its local port is ours, RFC 5626 style); with ``register``, the first
        REGISTER's outcome is waited for (bounded) and refreshed from then on. The port."""
        loop = asyncio.get_running_loop()
        try:                                      # who may start a call here: the PBX (its addresses), no one else
            infos = await loop.getaddrinfo(self.pbx[0], self.pbx[1], type=socket.SOCK_DGRAM)
            self.trusted = {info[4][0] for info in infos}
        except OSError:
            self.trusted = {self.pbx[0]}
        if not self.reliable:
            self.transport, _ = await loop.create_datagram_endpoint(lambda: self, local_addr=(self.host, self.port))
            self.port = self.transport.get_extra_info("sockname")[1]
        elif self.kind == "tcp" or self.server_ssl is not None:
            self._server = await loop.create_server(lambda: _Stream(self), self.host, self.port,
                                                    ssl=self.server_ssl if self.kind == "tls" else None)
            self.port = self._server.sockets[0].getsockname()[1]
        else:
            stream = self._stream(self.pbx)
            await asyncio.wait([self._spawn(self._wait_up(stream))], timeout=CONNECT_TIMEOUT + 1)
        if self.reliable:
            self._spawn(self._keepalive())
        if self.register_enabled:
            self._reg_task = self._spawn(self._registration_loop())
            # bounded: a PBX that does not answer must not hold the bridge's start (the loop goes on)
            await asyncio.wait([self._spawn(self._reg_done.wait())], timeout=min(64 * self.t1, 5.0) + 0.5)
        return self.port

    @staticmethod
    async def _wait_up(stream: _Stream) -> None:
        while stream.transport is None and not stream.closed:
            await asyncio.sleep(0.01)

    def close(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        if self.transport is not None:
            self.transport.close()
        if self._server is not None:
            self._server.close()
        for stream in list(self._streams.values()):
            stream.close()

    def _spawn(self, work) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return task

    # -- the wire -------------------------------------------------------------------------------------------
    def _send(self, message: Request | Response, addr: tuple[str, int] | None = None) -> None:
        addr = addr or self.pbx
        if self.reliable:
            self._stream(addr).write(message.to_bytes())
            return
        assert self.transport is not None, "start() first"
        self.transport.sendto(message.to_bytes(), addr)

    def _stream(self, addr: tuple[str, int]) -> _Stream:
        """The open connection to ``addr``, or a new one (its messages wait until it is up)."""
        stream = self._streams.get(addr)
        if stream is None or stream.closed:
            stream = self._streams[addr] = _Stream(self, addr)
            self._spawn(self._connect(stream))
        return stream

    async def _connect(self, stream: _Stream) -> None:
        host, port = stream.peer                                         # type: ignore[misc]
        tls = self.client_ssl if self.kind == "tls" else None
        try:
            await asyncio.wait_for(asyncio.get_running_loop().create_connection(
                lambda: stream, host, port, ssl=tls, server_hostname=self.tls_server_name if tls else None),
                CONNECT_TIMEOUT)
        except (OSError, asyncio.TimeoutError) as exc:
            why = f"{self.kind.upper()} connection to {host}:{port} failed: {exc or type(exc).__name__}"
            log.warning("SIP %s", why)
            stream.closed = True
            self._stream_lost(stream, why, established=False)

    def _stream_up(self, stream: _Stream) -> None:
        if stream.outbound and stream.peer == self.pbx and self._server is None and stream.transport is not None:
            self.port = stream.transport.get_extra_info("sockname")[1]   # no listener: this flow is our address
            if self.register_enabled and self.registration == "registered" and self._reg_cseq:
                self._reg_now.set()                                      # a new flow: register it

    def _stream_lost(self, stream: _Stream, why: str, *, established: bool = True) -> None:
        if self._streams.get(stream.peer) is stream:                     # type: ignore[arg-type]
            del self._streams[stream.peer]                               # type: ignore[arg-type]
        for key, hop in list(self._hops.items()):                        # RFC 3261 18.4: the transactions fail
            if hop == stream.peer and key in self._waiting:
                self._waiting[key].put_nowait(_Failed(why))
        if established and stream.peer == self.pbx and self.register_enabled and self.registration == "registered":
            log.info("SIP connection to the PBX lost (%s): registering again", why)
            self._reg_now.set()

    async def _keepalive(self) -> None:
        while True:
            await asyncio.sleep(KEEPALIVE)
            stream = self._streams.get(self.pbx)
            if stream is not None and stream.transport is not None:
                stream.write(b"\r\n\r\n")

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        if not data.strip():
            return                                            # keep-alive
        self._received(data, addr)

    def _received(self, data: bytes, addr: tuple[str, int]) -> None:
        try:
            message = parse_message(data)
        except SipParseError as exc:
            log.warning("SIP from %s:%s dropped: %s", *addr, exc)
            return
        if isinstance(message, Response):
            queue = self._waiting.get((message.branch or "", message.cseq[1]))
            if queue is not None:
                queue.put_nowait(message)
            elif message.cseq[1] == "INVITE" and message.status >= 300 and message.branch in self._cancelled:
                self._ack_failure(self._cancelled[message.branch], message)
            elif message.cseq[1] == "INVITE" and 200 <= message.status < 300:
                self._late_2xx(message)
            elif (message.cseq[1] == "INVITE" and message.status < 200 and message.branch in self._finished
                  and message.branch not in self._cancelled and message.call_id not in self.dialogs):
                # a provisional answer to an INVITE given up before any came (Timer B, or a CANCEL waiting for
                # one): CANCEL it now (RFC 3261 9.1), or the agent's phone rings on until the PBX gives up
                self._cancel(self._finished[message.branch], message.branch)
            return
        self._request(message, addr)

    def _request(self, request: Request, addr: tuple[str, int]) -> None:
        reply_to = self._response_address(request, addr)
        dialog = self.dialogs.get(request.call_id)
        incoming = self.incoming.get(request.call_id)
        if request.method == "ACK":
            if incoming is not None and incoming.final is not None:
                incoming.acked()
            reinvite = self._reinvites.get((request.call_id, request.cseq[0]))
            if reinvite is not None and reinvite.final is not None:
                reinvite.acked()
            return
        if request.method == "INVITE" and request.to.tag is None:
            if incoming is not None:                          # a retransmission: the last answer again
                if incoming.last is not None:
                    self._send(incoming.last, incoming.reply_to)
                return
            if request.call_id in self.dialogs:
                return
            if addr[0] not in self.trusted:                 # a call placed through the bridge costs the business:
                log.warning("INVITE from %s:%s, not the PBX: 403", addr[0], addr[1])   # only the PBX may
                self._send(response_to(request, 403, "Forbidden"), reply_to)
                return
            try:                                            # the dialog is built from them when it is answered
                request.name_addrs("Contact"), request.name_addrs("Record-Route")
            except SipParseError as exc:
                self._send(response_to(request, 400, f"Bad Request ({exc})"[:120]), reply_to)
                return
            incoming = self.incoming[request.call_id] = Incoming(self, request, reply_to)
            incoming.respond(100)
            if self.on_invite is None:
                incoming.respond(480)
            else:
                self.on_invite(incoming)
            return
        if request.method == "CANCEL" and request.to.tag is None:
            if incoming is None or incoming.final is not None:
                self._send(response_to(request, 481), reply_to)
                return
            self._send(response_to(request, 200), reply_to)
            incoming.respond(487)
            if incoming.on_cancel is not None:
                incoming.on_cancel()
            return
        if request.method == "OPTIONS" and request.to.tag is None:   # a PBX's qualify/keep-alive ping
            self._send(response_to(request, 200, to_tag=new_tag(),
                                   headers=[("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")]), reply_to)
            return
        if dialog is None or (request.to.tag or None) != dialog.local_tag:
            self._send(response_to(request, 481), reply_to)
            return
        if request.method == "BYE":
            self._send(response_to(request, 200), reply_to)
            if not dialog.ended:
                dialog.ended = True
                self.dialogs.pop(dialog.call_id, None)
                if self.on_bye is not None:
                    self.on_bye(dialog)
        elif request.method in ("INVITE", "UPDATE"):
            self._offered(dialog, request, reply_to)
        elif request.method in ("OPTIONS", "INFO", "NOTIFY"):
            self._send(response_to(request, 200), reply_to)
        else:
            self._send(response_to(request, 488, "Not Acceptable Here"), reply_to)

    def _offered(self, dialog: Dialog, request: Request, reply_to: tuple[str, int]) -> None:
        """A re-INVITE or UPDATE from the PBX in an established dialog: a session refresh (RFC 4028), hold or
        resume, or a media change. Answered at once from what the dialog holds (:func:`answer_offer`); a 2xx to a
        re-INVITE is resent until its ACK like the first one (Timer G/H)."""
        key = (request.call_id, request.cseq[0])
        if request.method == "INVITE":
            earlier = self._reinvites.get(key)
            if earlier is not None:                           # a retransmission: the same answer again
                if earlier.last is not None:
                    self._send(earlier.last, earlier.reply_to)
                return
            if any(tx.dialog is dialog and not tx.is_acked for tx in self._reinvites.values()):
                # RFC 3261 14.2: a re-INVITE while our 2xx to the previous one waits for its ACK
                self._send(response_to(request, 500, "Server Internal Error",    # 0-10 s at random (14.2)
                                       headers=[("Retry-After", str(random.randint(0, 10)))]),
                           reply_to)
                return
        before = (dialog.local_sdp, dialog.remote_sdp, dialog.target)
        status, sdp = answer_offer(dialog, request.method, request.body.decode("utf-8", "replace"))
        headers: list[tuple[str, str]] = []
        if status < 300:
            headers = _session_timer(request)
            try:                                              # a target refresh request (RFC 3261 12.2.2)
                contacts = request.name_addrs("Contact")
                if contacts:
                    dialog.target = str(contacts[0].uri)
            except SipParseError:
                pass
            if (dialog.local_sdp, dialog.remote_sdp, dialog.target) != before and self.on_dialog_changed:
                self.on_dialog_changed(dialog)                # kept (the state file) before the 2xx says so
            log.info("SIP %s in dialog %s: %s%s", request.method, dialog.call_id, status,
                     " (session refresh)" if headers else "")
        else:
            headers = [("Warning", f'399 {self.host} "the bridge cannot change the media of a call in progress"')]
            log.warning("SIP %s in dialog %s changes the media: %s", request.method, dialog.call_id, status)
        if request.method == "INVITE":
            tx = self._reinvites[key] = Incoming(self, request, reply_to, dialog=dialog)
            tx.respond(status, sdp=sdp, headers=headers)
            return
        if status < 300:
            headers.append(("Contact", self._contact()))
        self._send(response_to(request, status, headers=headers, body=sdp.encode() if sdp else b"",
                               content_type="application/sdp" if sdp else None), reply_to)

    def _response_address(self, request: Request, addr: tuple[str, int]) -> tuple[str, int]:
        if self.reliable:
            return addr                                       # RFC 3261 18.2.2: back on the same connection
        via = request.top_via
        return (via.received or addr[0], via.rport or addr[1]) if via.wants_rport or via.rport else addr

    @property
    def hostport(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"

    def _via(self, branch: str) -> str:
        alias = ";alias" if self.reliable else ""
        return f"SIP/2.0/{self.kind.upper()} {self.hostport};branch={branch};rport{alias}"

    def _contact(self) -> str:
        suffix = f";transport={self.kind}" if self.reliable else ""
        return f"<sip:{self.user}@{self.hostport}{suffix}>"

    # -- digest (RFC 3261 22.2, 22.3) ---------------------------------------------------------------------
    def _authorized(self, request: Request, response: Response, tried: set[str]) -> Request | None:
        """``request`` again (new branch, CSeq + 1) with credentials answering the 401/407 ``response``; None
        when there is nothing to answer with or the realm already refused our credentials (not stale)."""
        if not self.username:
            return None
        challenge_header, answer_header = (("WWW-Authenticate", "Authorization") if response.status == 401
                                           else ("Proxy-Authenticate", "Proxy-Authorization"))
        for value in response.headers.get_all(challenge_header):
            try:
                challenge = parse_challenge(value)
                if challenge.realm in tried and not challenge.stale:
                    return None
                credentials = digest_answer(challenge, username=self.username, password=self.password,
                                            method=request.method, uri=request.uri, body=request.body)
            except (SipParseError, ValueError) as exc:
                log.warning("SIP %s challenge not understood: %s", response.status, exc)
                continue
            tried.add(challenge.realm)
            h = request.headers.copy()
            h.set("Via", self._via(new_branch()))
            h.set("CSeq", f"{request.cseq[0] + 1} {request.method}")
            h.remove("Authorization")
            h.remove("Proxy-Authorization")
            h.add(answer_header, credentials.header_value())
            return Request(request.method, request.uri, h, request.body)
        return None

    async def _transact(self, request: Request, hop: tuple[str, int]) -> Response:
        """A non-INVITE client transaction (RFC 3261 17.1.2): Timer E over UDP, Timer F; the final response.
        Raises :class:`SipFailure` 408 (nothing answered) or 503 (the connection failed)."""
        key = (request.branch or "", request.method)
        queue: asyncio.Queue = asyncio.Queue()
        self._waiting[key], self._hops[key] = queue, hop
        loop = asyncio.get_running_loop()
        give_up, interval = loop.time() + 64 * self.t1, self.t1
        try:
            self._send(request, hop)
            while (left := give_up - loop.time()) > 0:
                try:
                    response = await asyncio.wait_for(queue.get(), left if self.reliable else min(interval, left))
                except asyncio.TimeoutError:
                    if not self.reliable:
                        self._send(request, hop)              # Timer E
                        interval = min(interval * 2, T2)
                    continue
                if isinstance(response, _Failed):
                    raise SipFailure(503, response.reason)
                if response.status >= 200:
                    return response
            raise SipFailure(408, "Request Timeout")
        finally:
            self._waiting.pop(key, None)
            self._hops.pop(key, None)

    async def _request_with_auth(self, request: Request, hop: tuple[str, int]) -> Response:
        tried: set[str] = set()
        while True:
            response = await self._transact(request, hop)
            if response.status in (401, 407):
                again = self._authorized(request, response, tried)
                if again is not None:
                    request = again
                    continue
            return response

    # -- registration (RFC 3261 10) -------------------------------------------------------------------------
    async def register(self, expires: int) -> tuple[Response, int]:
        """One REGISTER of our Contact for ``expires`` seconds (0: unregister), answering a challenge; the final
        response and the expiry the registrar granted. Raises :class:`SipFailure` (408/503) when nothing
        answered."""
        if self.reliable and self._server is None:            # our address is the flow's: wait for it to be up
            stream = self._stream(self.pbx)
            await asyncio.wait_for(self._wait_up(stream), CONNECT_TIMEOUT + 1)
            if stream.transport is None:
                raise SipFailure(503, f"{self.kind.upper()} connection to {self.pbx[0]}:{self.pbx[1]} failed")
        self._reg_cseq += 1
        aor = f"sip:{self.user}@{self.domain}"
        contact = self._contact()
        h = Headers()
        h.add("Via", self._via(new_branch()))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{aor}>;tag={self._reg_tag}")
        h.add("To", f"<{aor}>")
        h.add("Call-ID", self._reg_call_id)
        h.add("CSeq", f"{self._reg_cseq} REGISTER")
        h.add("Contact", contact)
        if expires and self._bound and self._bound != contact:   # a new flow (new local port): the old one goes
            h.add("Contact", f"{self._bound};expires=0")
        h.add("Expires", str(expires))
        h.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
        request = Request("REGISTER", f"sip:{self.domain}", h)
        response = await self._request_with_auth(request, self.pbx)
        self._reg_cseq = max(self._reg_cseq, response.cseq[0])
        floor = (response.headers.get("Min-Expires") or "").strip()
        if response.status == 423 and floor.isdigit() and expires < int(floor) <= 86400:
            log.info("SIP registrar asks for at least %s s (423): registering for that", floor)
            self.register_expires = int(floor)                # RFC 3261 10.2.8: again with the registrar's minimum
            return await self.register(int(floor))
        granted = expires
        if 200 <= response.status < 300:
            self._bound = contact if expires else None
        if 200 <= response.status < 300 and expires:
            mine = self.hostport
            for contact in response.headers.get_all("Contact"):
                for one in re.split(r",(?=\s*(?:\"[^\"]*\"\s*)?<)", contact):
                    m = _EXPIRES.search(one.split(">", 1)[-1])
                    if mine in one and m:
                        granted = int(m.group(1))
            if granted == expires and (value := response.headers.get("Expires") or "").strip().isdigit():
                granted = int(value)
        return response, granted

    def refresh_delay(self, granted: int) -> float:
        """When to refresh a registration granted for ``granted`` seconds: ahead of its expiry by half of it,
        at most 30 s ahead."""
        return max(0.5, granted - min(granted / 2, 30.0))

    async def _registration_loop(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            delay = self.register_retry
            try:
                response, granted = await self.register(self.register_expires)
                if 200 <= response.status < 300:
                    if self.registration != "registered":
                        log.info("SIP registered as sip:%s@%s at %s:%s over %s: %s %s, expires in %s s", self.user,
                                 self.domain, *self.pbx, self.kind.upper(), response.status, response.reason, granted)
                    self.registration = "registered"
                    self.registered_until = loop.time() + granted
                    delay = self.refresh_delay(granted)
                else:
                    hint = " (wrong username or password?)" if response.status in (401, 403, 407) else ""
                    self.registration = f"{response.status} {response.reason}"
                    log.error("SIP registration as sip:%s@%s refused by the PBX: %s %s%s; retrying in %s s",
                              self.user, self.domain, response.status, response.reason, hint, delay)
            except SipFailure as exc:
                self.registration = f"{exc.status} {exc.reason}"
                log.error("SIP registration as sip:%s@%s failed: %s %s; retrying in %s s", self.user, self.domain,
                          exc.status, exc.reason, delay)
            except (SipParseError, ValueError, OSError) as exc:     # an unreadable answer: try again later
                self.registration = f"error: {exc}"
                log.error("SIP registration as sip:%s@%s: %r; retrying in %s s", self.user, self.domain, exc, delay)
            self._reg_done.set()
            try:
                await asyncio.wait_for(self._reg_now.wait(), delay)
            except asyncio.TimeoutError:
                pass
            self._reg_now.clear()

    async def unregister(self, timeout: float = 5.0) -> None:
        """Stop refreshing and, when registered, remove our binding (Expires: 0), waiting at most ``timeout``."""
        if self._reg_task is not None:
            self._reg_task.cancel()
            self._reg_task = None
        if self.registration != "registered":
            return
        self.registration = "unregistered"
        try:
            response, _ = await asyncio.wait_for(self.register(0), timeout)
            log.info("SIP unregistered sip:%s@%s: %s %s", self.user, self.domain, response.status, response.reason)
        except (SipFailure, asyncio.TimeoutError) as exc:
            log.warning("SIP unregister of sip:%s@%s: %r", self.user, self.domain, exc)

    # -- INVITE ---------------------------------------------------------------------------------------------
    def new_call_id(self) -> str:
        return new_call_id(self.host)

    async def invite(self, ruri: str, from_uri: str, to_uri: str, sdp: str, headers: list[tuple[str, str]],
                     *, call_id: str | None = None, on_provisional: Callable[[Response], None] | None = None,
                     on_sending: Callable[[Request], None] | None = None,
                     timeout: float | None = None) -> tuple[Dialog, Response]:
        """Place a call; returns the dialog and the 200 OK once ACKed. Raises :class:`SipFailure` (487 after
        :meth:`cancel`). Cancel with :meth:`cancel`, not by cancelling the task: the CANCEL must wait for a
        provisional answer, and a 200 that crosses it must still be ACKed and ended with a BYE. A 401/407 is
        ACKed and the INVITE sent again with credentials (once per realm). ``on_sending`` sees each INVITE just
        before it first goes out (the bridge keeps it in its state file, to CANCEL it after a restart)."""
        call_id, tag, branch = call_id or new_call_id(self.host), new_tag(), new_branch()
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{from_uri}>;tag={tag}")
        h.add("To", f"<{to_uri}>")
        h.add("Call-ID", call_id)
        h.add("CSeq", "1 INVITE")
        h.add("Contact", self._contact())
        h.add("Allow", "INVITE, ACK, BYE, CANCEL, OPTIONS")
        for name, value in headers:
            h.add(name, value)
        h.add("Content-Type", "application/sdp")
        invite = Request("INVITE", ruri, h, sdp.encode())
        dialog = Dialog(call_id, tag, from_uri, to_uri, target=ruri)
        queue: asyncio.Queue = asyncio.Queue()
        self._waiting[(branch, "INVITE")], self._hops[(branch, "INVITE")] = queue, self.pbx
        self._inviting[call_id] = queue
        loop = asyncio.get_running_loop()
        give_up = loop.time() + (timeout if timeout is not None else 64 * self.t1)
        interval, provisional, cancelling = self.t1, False, False
        tried: set[str] = set()
        sent = [invite]                                       # every INVITE of this call (new branch per challenge)
        try:
            if on_sending is not None:
                on_sending(invite)
            self._send(invite)
            while True:
                left = give_up - loop.time()
                wait = left if provisional or self.reliable else min(interval, left)
                if wait <= 0:
                    raise SipFailure(487 if cancelling else 408, "Request Terminated" if cancelling
                                     else "Request Timeout")
                try:
                    response = await asyncio.wait_for(queue.get(), wait)
                except asyncio.TimeoutError:
                    if not provisional and not self.reliable:
                        self._send(invite)                    # Timer A
                        interval *= 2
                    continue
                if isinstance(response, _Failed):
                    raise SipFailure(487 if cancelling else 503, "Request Terminated" if cancelling
                                     else response.reason)
                if response is None:                          # cancel(): RFC 3261 9.1
                    if not cancelling:
                        cancelling = True
                        if provisional:
                            self._cancel(invite, invite.branch or "")
                        give_up = min(give_up, loop.time() + 64 * self.t1)
                    continue
                if response.status < 200:
                    if cancelling and not provisional:        # the CANCEL waited for this
                        self._cancel(invite, invite.branch or "")
                    provisional = True
                    if on_provisional is not None and not cancelling:
                        on_provisional(response)
                    if timeout is None and not cancelling:    # ringing: Timer C's 3 minutes
                        give_up = max(give_up, loop.time() + 180.0)
                    continue
                if response.status >= 300:
                    self._ack_failure(invite, response)
                    again = (self._authorized(invite, response, tried)
                             if response.status in (401, 407) and not cancelling else None)
                    if again is None:
                        raise SipFailure(response.status, response.reason)
                    old = (invite.branch or "", "INVITE")
                    self._waiting.pop(old, None)
                    self._hops.pop(old, None)
                    invite = again
                    sent.append(invite)
                    if on_sending is not None:
                        on_sending(invite)
                    key = (invite.branch or "", "INVITE")
                    self._waiting[key], self._hops[key] = queue, self.pbx
                    interval, provisional = self.t1, False
                    give_up = loop.time() + (timeout if timeout is not None else 64 * self.t1)
                    log.debug("SIP INVITE %s challenged (%s): sent again with credentials", call_id, response.status)
                    self._send(invite)
                    continue
                if cancelling:                                # the 2xx crossed our CANCEL: end it at once
                    self._stray(invite, response)
                    raise SipFailure(487, "Request Terminated")
                dialog.remote_tag = response.to.tag
                dialog.cseq = invite.cseq[0]
                try:
                    contacts = response.name_addrs("Contact")
                    route = [str(rr) for rr in reversed(response.name_addrs("Record-Route"))]
                except SipParseError as exc:                  # no dialog can be built on it: a failed INVITE
                    log.warning("SIP INVITE %s: a 2xx with an unreadable Contact/Record-Route: %s", call_id, exc)
                    raise SipFailure(502, "Bad Gateway") from None
                dialog.target = str(contacts[0].uri) if contacts else ruri
                dialog.route = route
                dialog.local_sdp, dialog.remote_sdp = sdp, response.body.decode("utf-8", "replace")
                self.dialogs[call_id] = dialog
                self._ack(dialog, response.cseq[0])
                return dialog, response
        finally:
            key = (invite.branch or "", "INVITE")
            self._waiting.pop(key, None)
            self._hops.pop(key, None)
            self._inviting.pop(call_id, None)
            for one in sent:
                self._finish(one)

    def _finish(self, invite: Request) -> None:
        """The INVITE's client transaction is over (answered, refused, CANCELled, timed out or given up), but for
        64*T1 (RFC 6026 "Accepted") a 2xx to it is still recognised: ACKed, and ended unless it is the call's."""
        branch = invite.branch or ""
        self._finished[branch] = invite
        asyncio.get_running_loop().call_later(64 * self.t1, self._forget, branch, invite)

    def _forget(self, branch: str, invite: Request) -> None:
        if self._finished.get(branch) is invite:
            del self._finished[branch]

    def _late_2xx(self, response: Response) -> None:
        """A 2xx after its INVITE's transaction ended (RFC 3261 13.2.2.4 and 15, RFC 6026): the dialog the call holds
        gets its ACK again (ours was lost); any other (the INVITE was CANCELled or given up, the call ended
        meanwhile, another fork answered too) is ACKed and ended with a BYE, once: never left to the PBX's
        retransmissions."""
        dialog = self.dialogs.get(response.call_id)
        if dialog is not None and dialog.remote_tag == response.to.tag:
            self._ack(dialog, response.cseq[0])
            return
        stray = self._strays.get((response.call_id, response.to.tag or ""))
        if stray is not None:
            self._ack(stray, response.cseq[0])
            return
        invite = self._finished.get(response.branch or "")
        if invite is None:
            log.warning("SIP %s %s to an INVITE we do not know (Call-ID %s): ignored", response.status,
                        response.reason, response.call_id)
            return
        self._stray(invite, response)

    def _stray(self, invite: Request, response: Response) -> None:
        """The 2xx to ``invite`` made a dialog the bridge does not want: ACK it and end it with a BYE (RFC 3261 15)."""
        try:
            contacts = response.name_addrs("Contact")
            route = [str(rr) for rr in reversed(response.name_addrs("Record-Route"))]
        except SipParseError as exc:
            log.warning("SIP INVITE %s: a 2xx with an unreadable Contact/Record-Route: %s", invite.call_id, exc)
            return
        dialog = Dialog(invite.call_id, invite.from_.tag or "", str(invite.from_.uri), str(invite.to.uri),
                        target=str(contacts[0].uri) if contacts else invite.uri, route=route,
                        remote_tag=response.to.tag, cseq=invite.cseq[0])
        key = (dialog.call_id, response.to.tag or "")
        self._strays[key] = dialog
        asyncio.get_running_loop().call_later(64 * self.t1, self._strays.pop, key, None)
        log.info("SIP INVITE %s: %s %s after the bridge gave it up: ACK and BYE", invite.call_id, response.status,
                 response.reason)
        self._ack(dialog, response.cseq[0])
        self._spawn(self.bye(dialog))

    def abandon(self, invite_text: str) -> bool:
        """Give up an INVITE a previous run of the bridge sent (kept in the state file, its answer unknown): CANCEL
        it now, ACK its 487, and ACK then BYE a 2xx to it (:meth:`_late_2xx`). False when it cannot be read."""
        try:
            invite = parse_message(invite_text.encode("latin-1"))
        except (SipParseError, UnicodeEncodeError) as exc:
            log.warning("SIP INVITE from the state file unreadable: %s", exc)
            return False
        if not isinstance(invite, Request) or invite.method != "INVITE":
            return False
        self._finish(invite)
        self._cancel(invite, invite.branch or "")
        return True

    def cancel(self, call_id: str) -> bool:
        """Give up the INVITE of ``call_id`` (its :meth:`invite` then raises 487); False when none is pending."""
        queue = self._inviting.get(call_id)
        if queue is None:
            return False
        queue.put_nowait(None)
        return True

    def _ack_failure(self, invite: Request, response: Response) -> None:
        """RFC 3261 17.1.1.3: the ACK of a non-2xx reuses the INVITE's branch, To with the response's tag."""
        h = Headers()
        h.add("Via", invite.headers.get("Via") or "")
        h.add("Max-Forwards", "70")
        h.add("From", invite.headers.get("From") or "")
        h.add("To", response.headers.get("To") or "")
        h.add("Call-ID", invite.call_id)
        h.add("CSeq", f"{invite.cseq[0]} ACK")
        for name in ("Authorization", "Proxy-Authorization"):
            value = invite.headers.get(name)
            if value:
                h.add(name, value)
        self._send(Request("ACK", invite.uri, h))

    def _cancel(self, invite: Request, branch: str) -> None:
        """CANCEL ``invite`` (RFC 3261 9.1): a non-INVITE client transaction of its own (17.1.2: Timer E over UDP,
        doubling up to T2, until a response; Timer F gives up after 64*T1), sent now; its 487 gets an ACK."""
        h = Headers()
        for name in ("Via", "Max-Forwards", "From", "To", "Call-ID"):
            h.add(name, invite.headers.get(name) or "")
        h.add("CSeq", f"{invite.cseq[0]} CANCEL")
        for value in invite.headers.get_all("Route"):      # RFC 3261 9.1: the INVITE's Route set
            h.add("Route", value)
        self._cancelled[branch] = invite
        asyncio.get_running_loop().call_later(64 * self.t1, self._cancelled.pop, branch, None)
        self._spawn(self._cancel_transaction(Request("CANCEL", invite.uri, h)))

    async def _cancel_transaction(self, request: Request) -> None:
        try:
            response = await self._transact(request, self.pbx)
            log.debug("SIP CANCEL %s: %s %s", request.call_id, response.status, response.reason)
        except SipFailure as exc:
            log.info("SIP CANCEL %s: %s %s", request.call_id, exc.status, exc.reason)

    def _in_dialog(self, dialog: Dialog, method: str, cseq: int, branch: str) -> Request:
        h = Headers()
        h.add("Via", self._via(branch))
        h.add("Max-Forwards", "70")
        h.add("From", f"<{dialog.local_uri}>;tag={dialog.local_tag}")
        h.add("To", f"<{dialog.remote_uri}>" + (f";tag={dialog.remote_tag}" if dialog.remote_tag else ""))
        h.add("Call-ID", dialog.call_id)
        h.add("CSeq", f"{cseq} {method}")
        for route in dialog.route:
            h.add("Route", route)
        return Request(method, dialog.target, h)

    def _ack(self, dialog: Dialog, cseq: int) -> None:
        """The ACK of a 2xx (RFC 3261 13.2.2.4): a new transaction along the dialog."""
        self._send(self._in_dialog(dialog, "ACK", cseq, new_branch()), self._next_hop(dialog))

    def _next_hop(self, dialog: Dialog) -> tuple[str, int]:
        """Where requests of the dialog go: the first Route (a loose router: the proxy) or else the PBX."""
        return self.pbx if dialog.route or not dialog.target else _address(dialog.target, self.pbx)

    # -- BYE ------------------------------------------------------------------------------------------------
    async def bye(self, dialog: Dialog, headers: list[tuple[str, str]] = ()) -> int:
        """End the dialog; the BYE's final status (408 when nothing answered, 503 when the connection failed)."""
        if dialog.ended:
            return 0
        dialog.ended = True
        if self.dialogs.get(dialog.call_id) is dialog:
            del self.dialogs[dialog.call_id]
        dialog.cseq += 1
        request = self._in_dialog(dialog, "BYE", dialog.cseq, new_branch())
        for name, value in headers:
            request.headers.add(name, value)
        try:
            return (await self._request_with_auth(request, self._next_hop(dialog))).status
        except SipFailure as exc:
            return exc.status

    def _no_ack(self, incoming: "Incoming") -> None:
        """Timer H fired on our 2xx: RFC 3261 13.3.1.4, the dialog is confirmed and ended with a BYE; the bridge
        hears of it through ``on_bye`` (the same path as the PBX's BYE)."""
        dialog = incoming.dialog
        if dialog is None or dialog.ended:
            return
        log.warning("SIP Call-ID %s: no ACK for our %s within 64*T1 (%.0f s): BYE", dialog.call_id,
                    incoming.final, 64 * self.t1)
        dialog.unacked = True
        if self.on_bye is not None:
            self.on_bye(dialog)
        self._spawn(self.bye(dialog))


class Incoming:
    """An INVITE from the PBX (the UAS side, RFC 3261 13.3 and 17.2.1): 100 Trying at once, then what the bridge
    answers with :meth:`respond`. A final answer is resent (Timer G; over TCP/TLS only a 2xx) until the ACK;
    without an ACK within 64*T1 (Timer H) the transaction ends, and for a 2xx the UA ends the dialog
    (:meth:`SipUserAgent._no_ack`). A 2xx makes the :class:`Dialog` (``dialog``) the bridge then uses like one
    it placed. ``on_cancel`` runs on the PBX's CANCEL (the UA has answered it 200 and the INVITE 487)."""

    def __init__(self, ua: SipUserAgent, request: Request, reply_to: tuple[str, int], *,
                 dialog: Dialog | None = None) -> None:
        self.ua, self.request, self.reply_to = ua, request, reply_to
        self.in_dialog = dialog is not None               # a re-INVITE in ``dialog``, not a new call
        self.local_tag = dialog.local_tag if dialog is not None else new_tag()
        self.last: Response | None = None
        self.final: int | None = None
        self.dialog: Dialog | None = dialog
        self.on_cancel: Callable[[], None] | None = None
        self.is_acked = False
        self._resend: asyncio.TimerHandle | None = None
        self._timer_h: asyncio.TimerHandle | None = None

    @property
    def call_id(self) -> str:
        return self.request.call_id

    @property
    def sdp(self) -> str:
        return self.request.body.decode("utf-8", "replace")

    def respond(self, status: int, reason: str | None = None, *, sdp: str | None = None,
                headers: list[tuple[str, str]] = ()) -> Dialog | None:
        """Answer the INVITE (a no-op once a final answer went out); the dialog for a 2xx."""
        if self.final is not None:
            return self.dialog
        extra = list(headers)
        if 200 <= status < 300:
            extra.append(("Contact", self.ua._contact()))
            if not self.in_dialog:                        # the route set is made once, by the dialog's first 2xx
                extra.extend(("Record-Route", rr) for rr in self.request.headers.get_all("Record-Route"))
        response = response_to(self.request, status, reason, to_tag=None if status == 100 else self.local_tag,
                               headers=extra, body=sdp.encode() if sdp else b"",
                               content_type="application/sdp" if sdp else None)
        self.last = response
        self.ua._send(response, self.reply_to)
        if status < 200:
            return None
        self.final = status
        if status < 300 and not self.in_dialog:
            req = self.request
            contacts = req.name_addrs("Contact")
            self.dialog = Dialog(req.call_id, self.local_tag, str(req.to.uri), str(req.from_.uri),
                                 target=str(contacts[0].uri) if contacts else str(req.from_.uri),
                                 route=[str(rr) for rr in req.name_addrs("Record-Route")],
                                 remote_tag=req.from_.tag, cseq=0, local_sdp=sdp or "", remote_sdp=self.sdp)
            self.ua.dialogs[req.call_id] = self.dialog
        loop = asyncio.get_running_loop()
        self._timer_h = loop.call_later(64 * self.ua.t1, self._no_ack)

        def resend(interval: float) -> None:                  # Timer G
            if self.last is None or self.is_acked:
                return
            self.ua._send(self.last, self.reply_to)
            self._resend = loop.call_later(min(2 * interval, T2), resend, min(2 * interval, T2))
        if not self.ua.reliable or status < 300:              # a 2xx is resent end to end whatever the transport
            self._resend = loop.call_later(self.ua.t1, resend, self.ua.t1)   # (RFC 3261 13.3.1.4)
        return self.dialog

    def _no_ack(self) -> None:
        self._timer_h = None
        if not self.is_acked and self.final is not None and 200 <= self.final < 300:
            self.ua._no_ack(self)
        self.acked()

    def acked(self) -> None:
        self.is_acked = True
        for timer in (self._resend, self._timer_h):
            if timer is not None:
                timer.cancel()
        self._resend = self._timer_h = None
        if self.ua.incoming.get(self.call_id) is self:
            # kept a little for a retransmitted INVITE or ACK, then forgotten
            asyncio.get_running_loop().call_later(32 * self.ua.t1, self.ua.incoming.pop, self.call_id, None)
        key = (self.call_id, self.request.cseq[0])
        if self.ua._reinvites.get(key) is self:
            asyncio.get_running_loop().call_later(32 * self.ua.t1, self.ua._reinvites.pop, key, None)


# -- offers in an established dialog (RFC 3264 8, RFC 3311, RFC 4028) ------------------------------------------
# The media path (RtpEngine or the builtin relay) is set up once per call; the bridge does not move it mid-call.
# So a re-offer is taken when its media are those of the PBX's last SDP (addresses, ports, transports, payload
# types and their rtpmap/fmtp, crypto, RTCP): the direction alone may change (hold, resume), and the answer is the
# bridge's current SDP with the mirrored direction (its o= version raised only when that changes the SDP). Any
# other change is refused with 488; the session goes on as it was (RFC 3261 14.2).
_DIRECTIONS = ("sendrecv", "sendonly", "recvonly", "inactive")
_MIRROR = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}
_COMPARED = ("rtpmap", "fmtp", "crypto", "rtcp", "rtcp-mux")


def _sdp_media(sdp: str) -> tuple[list[tuple[str, ...]], list[str]]:
    """Per m= section: what a re-offer is compared on (the m= line, its connection address, the attributes of
    ``_COMPARED``, sorted), and its direction."""
    session_c, session_dir = "", "sendrecv"
    sections: list[list[str]] = []
    conns: list[str] = []
    directions: list[str] = []
    for line in (one.strip() for one in sdp.splitlines()):
        if line.startswith("m="):
            sections.append([])
            conns.append("")
            directions.append(session_dir)
            sections[-1].append(line)
        elif line.startswith("c="):
            if sections:
                conns[-1] = line
            else:
                session_c = line
        elif line.startswith("a="):
            name = line[2:].split(":", 1)[0]
            if name in _DIRECTIONS:
                if sections:
                    directions[-1] = name
                else:
                    session_dir = name
            elif name in _COMPARED and sections:
                sections[-1].append(line)
    compared = [(m[0], conns[i] or session_c, *sorted(m[1:])) for i, m in enumerate(sections)]
    return compared, directions


def _with_directions(sdp: str, directions: list[str]) -> str:
    """``sdp`` with each m= section's direction set to ``directions`` (session-level ones dropped) and its o=
    version raised by one."""
    newline = "\r\n" if "\r\n" in sdp else "\n"
    out: list[str] = []
    section = -1

    def close_section() -> None:
        if section >= 0:
            out.append(f"a={directions[section]}")
    for line in sdp.splitlines():
        if line.startswith("m="):
            close_section()
            section += 1
        elif line.startswith("a=") and line[2:].strip() in _DIRECTIONS:
            continue
        elif line.startswith("o="):
            fields = line.split()
            if len(fields) >= 3 and fields[2].isdigit():
                fields[2] = str(int(fields[2]) + 1)
                line = " ".join(fields)
        if line:
            out.append(line)
    close_section()
    return newline.join(out) + newline


def answer_offer(dialog: Dialog, method: str, offer: str) -> tuple[int, str | None]:
    """The status and SDP answering a re-INVITE or UPDATE carrying ``offer`` (may be empty) in ``dialog``; the
    dialog's SDPs follow what was answered. Without an offer: a re-INVITE gets the current SDP (as the offer its
    ACK answers), an UPDATE none."""
    if not offer.strip():
        if method == "UPDATE":
            return 200, None
        return (200, dialog.local_sdp) if dialog.local_sdp else (488, None)
    if not dialog.local_sdp or not dialog.remote_sdp:  # a dialog restored from a record without its SDPs
        return 488, None
    media, directions = _sdp_media(offer)
    before, _ = _sdp_media(dialog.remote_sdp)
    ours, current = _sdp_media(dialog.local_sdp)
    if media != before or len(ours) != len(directions):
        return 488, None
    wanted = [_MIRROR[d] for d in directions]
    if wanted != current:
        dialog.local_sdp = _with_directions(dialog.local_sdp, wanted)
    dialog.remote_sdp = offer
    return 200, dialog.local_sdp


def _session_timer(request: Request) -> list[tuple[str, str]]:
    """RFC 4028 9: a request with ``Session-Expires`` from a PBX that supports ``timer`` gets it back with the PBX
    as the refresher (``refresher=uac``: the bridge keeps no timer of its own; the PBX's next refresh is again a
    re-INVITE or UPDATE answered here). When the PBX asks the bridge to refresh (``refresher=uas``) none is
    returned, which means no session expiry (RFC 4028 7.2)."""
    value = request.headers.get("Session-Expires") or ""
    supported = {t.strip().lower() for v in request.headers.get_all("Supported") for t in v.split(",")}
    interval, _, params = value.partition(";")
    if not interval.strip().isdigit() or "timer" not in supported or "refresher=uas" in params.replace(" ", "").lower():
        return []
    return [("Session-Expires", f"{interval.strip()};refresher=uac"), ("Require", "timer")]


def _address(uri: str, default: tuple[str, int]) -> tuple[str, int]:
    try:
        parsed = parse_name_addr(f"<{uri}>").uri
    except SipParseError:
        return default
    host = getattr(parsed, "host", None)
    port = getattr(parsed, "port", None)
    return (host, port or 5060) if host else default


__all__ = ["Dialog", "Incoming", "SipFailure", "SipUserAgent", "TRANSPORTS", "tls_contexts"]
