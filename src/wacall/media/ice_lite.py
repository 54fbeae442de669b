"""Meta's side of ICE: a lite agent (RFC 8445 sections 2.5 and 6.1.1), sans-I/O.

Meta's media relay is ICE-lite and always controlled; the business is a full, controlling agent
that sends the checks and nominates a pair (wire spec section 9). A lite agent never sends checks:
it answers each Binding request, and the pair it uses is the one the controlling peer nominates
with USE-CANDIDATE. Source addresses it was never told about are accepted when the request passes
the short-term credential check (peer-reflexive, RFC 8445 section 7.3.1.3).

:class:`IceLiteAgent` turns one datagram into at most one response plus events; the caller owns
the socket. :class:`IceLiteProtocol` is the thin asyncio glue that owns one and passes non-STUN
datagrams (DTLS, RTP, RTCP: RFC 7983) to a callback.

Request handling, in the order RFC 8489 section 6.3 and RFC 8445 section 7.3 give:

* not STUN (first byte 0..3 and magic cookie, RFC 7983): ``Rejected(not_stun)``, no response;
* bad framing: ``Rejected(malformed)``, 400 when the header says request;
* FINGERPRINT present but wrong: ``Rejected(bad_fingerprint)``, dropped silently (RFC 8489 7.3);
* indications (keepalives, RFC 8445 section 11) and responses: ignored, no event;
* a method other than Binding, or no USERNAME or MESSAGE-INTEGRITY: 400, ``Rejected(malformed)``;
* USERNAME not ``<local ufrag>:<remote ufrag>``: 401, ``Rejected(bad_username)``;
* MESSAGE-INTEGRITY not keyed with the local password: 401, ``Rejected(bad_integrity)``;
  400 and 401 carry no MESSAGE-INTEGRITY (RFC 8489 section 9.1.3);
* an unknown comprehension-required attribute: 420 with UNKNOWN-ATTRIBUTES,
  ``Rejected(unknown_attribute)``;
* ICE-CONTROLLED: the peer wants to be controlled too, and a lite agent cannot take the
  controlling role, so it always answers 487 Role Conflict (section 7.3.1.1; the full agent then
  switches to controlling per section 7.2.5.1) and emits ``Rejected(role_conflict)``;
* otherwise: success with XOR-MAPPED-ADDRESS = source address, MESSAGE-INTEGRITY, FINGERPRINT;
  ``CheckReceived``; with USE-CANDIDATE and ICE-CONTROLLING, the source becomes the selected pair
  and ``Nominated`` is emitted whenever that changes the selection.

Every response except the 400 and 401 is signed with the local password and all carry FINGERPRINT.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal, Union, cast

from .stun import (
    Attr,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    check_fingerprint,
    check_integrity,
    is_stun,
    peek_header,
)

Addr = tuple[str, int]
RejectReason = Literal[
    "not_stun",
    "malformed",
    "bad_fingerprint",
    "bad_username",
    "bad_integrity",
    "unknown_attribute",
    "role_conflict",
]

#: RFC 7675 section 5.1: consent expires 30 s after the last check that got a response.
CONSENT_TIMEOUT = 30.0


@dataclass(frozen=True)
class Nominated:
    """The controlling peer nominated the pair ending at ``addr``; media goes there now."""

    addr: Addr


@dataclass(frozen=True)
class CheckReceived:
    """A connectivity check passed authentication and got a success response.
    ``peer_reflexive``: ``addr`` is not among the signalled remote candidates."""

    addr: Addr
    peer_reflexive: bool


@dataclass(frozen=True)
class Rejected:
    addr: Addr
    reason: RejectReason


IceEvent = Union[Nominated, CheckReceived, Rejected]


@dataclass
class IceResult:
    """What :meth:`IceLiteAgent.handle` wants done: ``response`` goes back to the source address."""

    response: bytes | None = None
    events: list[IceEvent] = field(default_factory=list)


def _addr(addr: tuple[object, ...]) -> Addr:
    """``(host, port)`` from an asyncio address (IPv6 ones carry flowinfo and scope id too)."""
    return str(addr[0]), int(cast(int, addr[1]))


class IceLiteAgent:
    """The ICE-lite, always-controlled side of one media stream with one component."""

    def __init__(
        self,
        local_ufrag: str,
        local_pwd: str,
        remote_ufrag: str | None = None,
        remote_pwd: str | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.local_ufrag = local_ufrag
        self.local_pwd = local_pwd
        #: Unknown until the business's SDP arrives; then the USERNAME's second half must match.
        self.remote_ufrag = remote_ufrag
        #: Kept for completeness: a lite agent sends no requests, so it never signs with it.
        self.remote_pwd = remote_pwd
        self.known_remote_candidates: set[Addr] = set()
        self._key = local_pwd.encode("utf-8")
        self._clock = clock
        self.created_at: float = clock()
        self._selected: Addr | None = None
        self._last_check_at: float | None = None

    # -- configuration

    def set_remote_credentials(self, ufrag: str, pwd: str | None = None) -> None:
        self.remote_ufrag = ufrag
        self.remote_pwd = pwd

    def add_remote_candidate(self, addr: tuple[object, ...]) -> None:
        """A candidate signalled in SDP; checks from elsewhere are flagged peer-reflexive."""
        self.known_remote_candidates.add(_addr(addr))

    def resume(self, selected: Addr) -> None:
        """Take over a pair a previous process of this relay had selected (same credentials)."""
        self._selected = selected
        self._last_check_at = self._clock()

    # -- state

    @property
    def selected(self) -> Addr | None:
        """The remote address of the nominated pair, or ``None``."""
        return self._selected

    @property
    def connected(self) -> bool:
        """A pair has been nominated (consent is :meth:`consent_expired`'s business)."""
        return self._selected is not None

    @property
    def last_check_at(self) -> float | None:
        """Clock time of the last check answered with success (consent, RFC 7675)."""
        return self._last_check_at

    def consent_expired(self, now: float | None = None, timeout: float = CONSENT_TIMEOUT) -> bool:
        """No successful check for ``timeout`` seconds; counted from creation if none came yet."""
        now = self._clock() if now is None else now
        since = self._last_check_at if self._last_check_at is not None else self.created_at
        return now - since >= timeout

    # -- the state machine

    def handle(self, data: bytes, addr: tuple[object, ...]) -> IceResult:
        """Process one datagram received from ``addr``."""
        source = _addr(addr)
        if not is_stun(data):
            return IceResult(events=[Rejected(source, "not_stun")])
        try:
            request = StunMessage.parse(data)
        except StunError:
            header = peek_header(data)
            response = None
            if header is not None and header[1] == StunClass.REQUEST:
                reply = StunMessage(header[0], StunClass.ERROR, header[2])
                response = reply.add(Attr.ERROR_CODE, (400, "Bad Request")).encode()
            return IceResult(response, [Rejected(source, "malformed")])
        if request.has(Attr.FINGERPRINT) and not check_fingerprint(data):
            return IceResult(events=[Rejected(source, "bad_fingerprint")])
        if request.message_class != StunClass.REQUEST:
            return IceResult()

        if request.method != StunMethod.BINDING or request.username is None or not request.has(
            Attr.MESSAGE_INTEGRITY
        ):
            return self._error(request, source, 400, "Bad Request", "malformed")
        if not self._username_ok(request.username):
            return self._error(request, source, 401, "Unauthenticated", "bad_username")
        if not check_integrity(data, self._key):
            return self._error(request, source, 401, "Unauthenticated", "bad_integrity")
        unknown = request.unknown_required()
        if unknown:
            return self._error(request, source, 420, "Unknown Attribute", "unknown_attribute", unknown)
        if request.has(Attr.ICE_CONTROLLED):
            return self._error(request, source, 487, "Role Conflict", "role_conflict")

        self._last_check_at = self._clock()
        reply = StunMessage(StunMethod.BINDING, StunClass.SUCCESS, request.transaction_id)
        reply.add(Attr.XOR_MAPPED_ADDRESS, source)
        events: list[IceEvent] = [CheckReceived(source, source not in self.known_remote_candidates)]
        if request.use_candidate and request.has(Attr.ICE_CONTROLLING) and source != self._selected:
            self._selected = source
            events.append(Nominated(source))
        return IceResult(reply.encode(self._key), events)

    def _username_ok(self, username: str) -> bool:
        local, sep, remote = username.partition(":")
        if not sep or local != self.local_ufrag or not remote:
            return False
        return self.remote_ufrag is None or remote == self.remote_ufrag

    def _error(
        self,
        request: StunMessage,
        source: Addr,
        code: int,
        phrase: str,
        reason: RejectReason,
        unknown: tuple[int, ...] = (),
    ) -> IceResult:
        reply = StunMessage(request.method, StunClass.ERROR, request.transaction_id)
        reply.add(Attr.ERROR_CODE, (code, phrase))
        if unknown:
            reply.add(Attr.UNKNOWN_ATTRIBUTES, unknown)
        key = None if code in (400, 401) else self._key
        return IceResult(reply.encode(key), [Rejected(source, reason)])


class IceLiteProtocol(asyncio.DatagramProtocol):
    """One UDP socket in front of an :class:`IceLiteAgent`.

    Datagrams for which ``demux`` is true (STUN by default) go through the agent: its response
    is sent back to the source and each event is passed to ``on_event``. Everything else
    (DTLS, SRTP, SRTCP) goes to ``on_other(data, addr)``.
    """

    def __init__(
        self,
        agent: IceLiteAgent,
        *,
        on_event: Callable[[IceEvent], None] | None = None,
        on_other: Callable[[bytes, Addr], None] | None = None,
        demux: Callable[[bytes], bool] = is_stun,
    ) -> None:
        self.agent = agent
        self.on_event = on_event
        self.on_other = on_other
        self.demux = demux
        self.transport: asyncio.DatagramTransport | None = None

    @classmethod
    async def bind(
        cls,
        agent: IceLiteAgent,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        on_event: Callable[[IceEvent], None] | None = None,
        on_other: Callable[[bytes, Addr], None] | None = None,
    ) -> IceLiteProtocol:
        """Create the protocol on a new UDP socket bound to ``(host, port)``."""
        loop = asyncio.get_running_loop()
        _, protocol = await loop.create_datagram_endpoint(
            lambda: cls(agent, on_event=on_event, on_other=on_other),
            local_addr=(host, port),
        )
        return protocol

    @property
    def local_addr(self) -> Addr:
        if self.transport is None:
            raise RuntimeError("not bound")
        return _addr(self.transport.get_extra_info("sockname"))

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.DatagramTransport, transport)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def datagram_received(self, data: bytes, addr: tuple[str | object, ...]) -> None:
        if not self.demux(data):
            if self.on_other is not None:
                self.on_other(data, _addr(addr))
            return
        result = self.agent.handle(data, addr)
        if result.response is not None and self.transport is not None:
            self.transport.sendto(result.response, addr)
        if self.on_event is not None:
            for event in result.events:
                self.on_event(event)

    def send(self, data: bytes, addr: Addr | None = None) -> bool:
        """Send to ``addr``, by default to the selected pair; ``False`` if there is neither
        a destination nor an open socket."""
        target = addr if addr is not None else self.agent.selected
        if target is None or self.transport is None or self.transport.is_closing():
            return False
        self.transport.sendto(data, target)
        return True

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
