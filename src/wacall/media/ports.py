"""Shared UDP ports: every call leg of a media engine listens on the same IPv4 and IPv6 port.

Meta's relay does the same: its SDPs advertise a handful of well-known ports (3480, 3482, ...) for
all calls, and the ICE credentials tell the calls apart. Sharing the ports keeps the cost of a call
at zero file descriptors, so 1000 concurrent calls (Meta's per-number cap) fit under the common
1024 open-file limit, and a restarted relay comes back on the port its SDPs advertised.

A datagram reaches a leg by, in this order:

1. its source address, once the leg has *validated* that address: an ICE connectivity check that
   passed the leg's short-term credentials (RFC 8445 section 7.3; RFC 7675 consent), or, for SDES
   legs without ICE, SRTP that authenticated with the call's keys;
2. for a STUN Binding request from an address nobody validated yet: the USERNAME's first half, which
   is the leg's ICE ufrag (RFC 8445 section 7.2.2);
3. for anything else from an unknown address: SDES legs still waiting for their business's first
   packet may claim it by authenticating it (symmetric RTP behind a NAT); otherwise it is dropped and
   counted, so a stranger's DTLS or RTP can never steer a call's media.

:class:`Ports` is the router; legs implement :class:`Leg`.
"""

from __future__ import annotations

import asyncio
import errno
import logging
import socket
import time
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, Protocol

from .stun import is_stun, peek_username

log = logging.getLogger("wacall.media")
Addr = tuple[str, int]
#: receive buffer asked for per shared socket: 1000 calls x 50 packets/s arrive on one socket
RCVBUF = 8 * 1024 * 1024
SNDBUF = 4 * 1024 * 1024
#: at most this many waiting SDES legs try to authenticate one packet from an unknown address
MAX_CLAIM_TRIES = 32
#: strangers whose packets no leg claimed are remembered (and then dropped at once) for this long
STRANGER_TTL = 5.0
MAX_STRANGERS = 4096
BIND_RETRY_SECONDS = 3.0
#: [fastpath] after draining a shared socket, wait this long before watching it again, so each wake-up
#: takes a batch of datagrams (recvmmsg) instead of one or two; media is at most this much later
COALESCE_SECONDS = 0.002


class Leg(Protocol):
    """What the router needs of a call leg (``RelayEndpoint``)."""

    call_id: str
    ice_ufrag: str

    def receive(self, data: bytes, addr: Addr, sock: "PortSocket") -> None: ...
    def claim(self, data: bytes, addr: Addr, sock: "PortSocket") -> bool: ...
    def clipped(self, packets: int) -> None: ...


class PortSocket(asyncio.DatagramProtocol):
    """One shared UDP socket; every datagram goes to the router."""

    def __init__(self, router: Ports, family: int) -> None:
        self.router = router
        self.family = family
        self.transport: asyncio.DatagramTransport | None = None
        self.host = ""
        self.port = 0

    def connection_made(self, transport) -> None:  # type: ignore[override]
        self.transport = transport
        self.host, self.port = transport.get_extra_info("sockname")[:2]
        sock = transport.get_extra_info("socket")
        for option, size in ((socket.SO_RCVBUF, RCVBUF), (socket.SO_SNDBUF, SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:
                pass

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def error_received(self, exc: Exception) -> None:   # ICMP port unreachable and the like
        self.router.stats["send_errors"] += 1

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.router.route(self, data, (addr[0], addr[1]))

    def sendto(self, data: bytes, addr: Addr) -> None:
        transport = self.transport
        if transport is not None:
            transport.sendto(data, addr)

    @property
    def is_open(self) -> bool:
        return self.transport is not None and not self.transport.is_closing()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


class FastPortSocket(PortSocket):
    """[fastpath] A shared socket read by the compiled path (``recvmmsg``) instead of asyncio: the
    media of established legs stays in C, every other datagram goes to :meth:`Ports.route` as before."""

    def __init__(self, router: Ports, family: int, sock: socket.socket) -> None:
        super().__init__(router, family)
        self.sock: socket.socket | None = sock
        self.fd = sock.fileno()
        self.host, self.port = sock.getsockname()[:2]
        for option, size in ((socket.SO_RCVBUF, RCVBUF), (socket.SO_SNDBUF, SNDBUF)):
            try:
                sock.setsockopt(socket.SOL_SOCKET, option, size)
            except OSError:
                pass
        self.loop = asyncio.get_running_loop()
        self.loop.add_reader(self.fd, self._readable)
        self._watching = True

    def _readable(self) -> None:
        try:
            self.router.fast.drain(self)
        except Exception:       # a bug here must not stop the socket being read
            log.exception("media: the compiled receive path failed")
        if self.sock is not None and COALESCE_SECONDS > 0:
            self.loop.remove_reader(self.fd)
            self._watching = False
            self.loop.call_later(COALESCE_SECONDS, self._watch)

    def _watch(self) -> None:
        if self.sock is not None and not self._watching:
            self.loop.add_reader(self.fd, self._readable)
            self._watching = True

    def sendto(self, data: bytes, addr: Addr) -> None:
        if self.sock is not None:
            try:
                self.sock.sendto(data, addr)
            except OSError:                           # a full send buffer drops the datagram, as UDP does
                self.router.stats["send_errors"] += 1

    @property
    def is_open(self) -> bool:
        return self.sock is not None

    def close(self) -> None:
        if self.sock is not None:
            if self._watching:
                self.loop.remove_reader(self.fd)
            self.sock.close()
            self.sock = None


@dataclass
class Ports:
    """The shared sockets of one media engine and the routing of datagrams to legs."""

    stats: dict[str, int] = field(default_factory=lambda: {
        "unknown_source": 0, "unknown_ufrag": 0, "claimed": 0, "send_errors": 0})
    sockets: dict[Addr, PortSocket] = field(default_factory=dict)
    by_addr: dict[Addr, Leg] = field(default_factory=dict)
    learned: dict[Leg, list[Addr]] = field(default_factory=dict)   # the addresses each leg learned (for remove)
    by_ufrag: dict[str, Leg] = field(default_factory=dict)
    waiting: dict[str, Leg] = field(default_factory=dict)      # SDES legs that may claim a new source
    strangers: OrderedDict = field(default_factory=OrderedDict)
    early: OrderedDict = field(default_factory=OrderedDict)    # RTP-looking packets per unknown source
    fast: Any = None                                            # [fastpath] wacall.media.fastpath.FastPath

    # -- sockets ------------------------------------------------------------------------------------
    async def bind(self, host: str, port: int = 0, *, retry: float = 0.0) -> PortSocket:
        """The shared socket on ``(host, port)``, binding it if needed. ``port`` 0 binds a free port.
        A taken port is retried for ``retry`` seconds (a killed predecessor may still hold it)."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        loop = asyncio.get_running_loop()
        deadline = time.monotonic() + retry
        while True:
            # checked on every try: a concurrent bind of the same port here (a restore and a new call's
            # allocate) may be the one that holds it
            if port and (host, port) in self.sockets and self.sockets[(host, port)].is_open:
                return self.sockets[(host, port)]
            try:
                if self.fast is not None:                  # [fastpath] read by C, not by asyncio
                    sock = self._bind_fast(host, port, family)
                    break
                _, sock = await loop.create_datagram_endpoint(lambda: PortSocket(self, family),
                                                              local_addr=(host, port), family=family)
                break
            except OSError as exc:
                if exc.errno != errno.EADDRINUSE or time.monotonic() >= deadline:
                    raise
                await asyncio.sleep(0.1)
        self.sockets[(sock.host, sock.port)] = sock
        return sock

    def _bind_fast(self, host: str, port: int, family: int) -> FastPortSocket:
        raw = socket.socket(family, socket.SOCK_DGRAM)
        try:
            if family == socket.AF_INET6:
                raw.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
            raw.setblocking(False)
            raw.bind((host, port))
        except OSError:
            raw.close()
            raise
        return FastPortSocket(self, family, raw)

    def close(self) -> None:
        for sock in self.sockets.values():
            sock.close()
        self.sockets.clear()
        self.by_addr.clear()
        self.learned.clear()
        self.by_ufrag.clear()
        self.waiting.clear()
        self.early.clear()

    def socket_for(self, host: str | None, port: int | None) -> PortSocket | None:
        sock = self.sockets.get((host, port)) if host and port else None
        return sock if sock is not None and sock.is_open else None

    # -- legs ---------------------------------------------------------------------------------------
    def add(self, leg: Leg) -> None:
        self.by_ufrag[leg.ice_ufrag] = leg

    def remove(self, leg: Leg) -> None:
        if self.by_ufrag.get(leg.ice_ufrag) is leg:
            del self.by_ufrag[leg.ice_ufrag]
        self.waiting.pop(leg.call_id, None)
        by_addr = self.by_addr
        for addr in self.learned.pop(leg, ()):       # (its own addresses: no walk over every call's)
            if by_addr.get(addr) is leg:
                del by_addr[addr]

    def learn(self, addr: Addr, leg: Leg) -> None:
        """``addr`` belongs to ``leg`` (a valid ICE check, authenticated SRTP, or the SDES business's
        own SDP). Media it sent before that was lost: the leg counts it as clipping."""
        self.by_addr[addr] = leg
        learned = self.learned.get(leg)
        if learned is None:
            self.learned[leg] = [addr]
        elif addr not in learned:
            learned.append(addr)
        self.strangers.pop(addr, None)
        early = self.early.pop(addr, None)
        if early is not None:
            leg.clipped(early[0])

    def expect_claims(self, leg: Leg, waiting: bool) -> None:
        if waiting:
            self.waiting[leg.call_id] = leg
        else:
            self.waiting.pop(leg.call_id, None)

    # -- the hot path -------------------------------------------------------------------------------
    def route(self, sock: PortSocket, data: bytes, addr: Addr) -> None:
        leg = self.by_addr.get(addr)
        if leg is not None:
            leg.receive(data, addr, sock)
            return
        if is_stun(data):
            username = peek_username(data)
            leg = self.by_ufrag.get(username.partition(":")[0]) if username else None
            if leg is not None:
                leg.receive(data, addr, sock)
            else:
                self.stats["unknown_ufrag"] += 1
            return
        if self.waiting and addr not in self.strangers:
            for tries, candidate in enumerate(list(self.waiting.values())):
                if tries >= MAX_CLAIM_TRIES:
                    break
                if candidate.claim(data, addr, sock):
                    self.stats["claimed"] += 1
                    return
            self.strangers[addr] = time.monotonic() + STRANGER_TTL
            while len(self.strangers) > MAX_STRANGERS:
                self.strangers.popitem(last=False)
        elif addr in self.strangers and self.strangers[addr] < time.monotonic():
            del self.strangers[addr]
        self.stats["unknown_source"] += 1
        if data and 128 <= data[0] <= 191:           # media that may yet turn out to be a call's (clipping)
            now = time.monotonic()
            count, since = self.early.pop(addr, (0, now))
            if now - since < STRANGER_TTL * 2:
                self.early[addr] = (count + 1, since)
            while len(self.early) > MAX_STRANGERS:
                self.early.popitem(last=False)

    def view(self) -> dict:
        return {"sockets": sorted(f"{h}:{p}" if ":" not in h else f"[{h}]:{p}" for h, p in self.sockets),
                "legs": len(self.by_ufrag), "validated_addresses": len(self.by_addr), **self.stats}
