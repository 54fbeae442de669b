"""The ICE-lite agent: every request-handling branch, the asyncio wrapper, and interop with a
full aioice agent on loopback."""

from __future__ import annotations

import asyncio
import socket

import aioice
import aioice.ice
import pytest

from wacall.media.ice_lite import (
    CheckReceived,
    IceEvent,
    IceLiteAgent,
    IceLiteProtocol,
    Nominated,
    Rejected,
)
from wacall.media.stun import (
    Attr,
    StunClass,
    StunMessage,
    StunMethod,
    binding_request,
    check_fingerprint,
    check_integrity,
    parse,
)

L_UFRAG, L_PWD = "LiteUfrag", "lite-password-0123456789"
R_UFRAG, R_PWD = "Full", "full-password-0123456789"
KEY = L_PWD.encode()
PEER = ("192.0.2.10", 50000)
OTHER = ("192.0.2.11", 50002)


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def make_agent(remote_ufrag: str | None = R_UFRAG) -> tuple[IceLiteAgent, FakeClock]:
    clock = FakeClock()
    return IceLiteAgent(L_UFRAG, L_PWD, remote_ufrag, R_PWD, clock=clock), clock


def check(
    *,
    username: str = f"{L_UFRAG}:{R_UFRAG}",
    controlling: bool = True,
    use_candidate: bool = False,
    **kw: object,
) -> StunMessage:
    return binding_request(
        username,
        priority=1853824767,
        controlling=0xABCDEF if controlling else None,
        use_candidate=use_candidate,
        **kw,  # type: ignore[arg-type]
    )


def send(agent: IceLiteAgent, msg: StunMessage, addr: tuple = PEER, key: bytes | None = KEY):
    result = agent.handle(msg.encode(key), addr)
    return result, (parse(result.response) if result.response is not None else None)


def assert_error(data: bytes | None, txid: bytes, code: int, signed: bool) -> StunMessage:
    assert data is not None
    reply = parse(data)
    assert reply.message_class == StunClass.ERROR and reply.transaction_id == txid
    assert reply.error_code is not None and reply.error_code[0] == code
    assert check_fingerprint(data)
    assert check_integrity(data, KEY) is signed
    assert reply.has(Attr.MESSAGE_INTEGRITY) is signed
    return reply


# --- success and nomination ----------------------------------------------------------------------


def test_success_response_and_peer_reflexive_check() -> None:
    agent, clock = make_agent()
    msg = check()
    result, reply = send(agent, msg)
    assert reply is not None and result.response is not None
    assert (reply.method, reply.message_class) == (StunMethod.BINDING, StunClass.SUCCESS)
    assert reply.transaction_id == msg.transaction_id
    assert reply.xor_mapped_address == PEER
    assert check_integrity(result.response, KEY) and check_fingerprint(result.response)
    assert [t for t, _ in reply.attributes] == [Attr.XOR_MAPPED_ADDRESS, Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    assert result.events == [CheckReceived(PEER, peer_reflexive=True)]
    assert agent.selected is None and not agent.connected
    assert agent.last_check_at == 100.0


def test_signalled_candidate_is_not_peer_reflexive() -> None:
    agent, _ = make_agent()
    agent.add_remote_candidate(PEER)
    assert send(agent, check())[0].events == [CheckReceived(PEER, peer_reflexive=False)]
    assert send(agent, check(), OTHER)[0].events == [CheckReceived(OTHER, peer_reflexive=True)]


def test_nomination_once_per_address_and_switch() -> None:
    agent, _ = make_agent()
    result, _ = send(agent, check(use_candidate=True))
    assert result.events == [CheckReceived(PEER, True), Nominated(PEER)]
    assert agent.selected == PEER and agent.connected
    # The same nomination again (consent checks keep USE-CANDIDATE in some stacks): no new event.
    assert send(agent, check(use_candidate=True))[0].events == [CheckReceived(PEER, True)]
    # A check without USE-CANDIDATE from elsewhere does not move the selection.
    send(agent, check(), OTHER)
    assert agent.selected == PEER
    # A nomination of another address switches.
    assert send(agent, check(use_candidate=True), OTHER)[0].events == [CheckReceived(OTHER, True), Nominated(OTHER)]
    assert agent.selected == OTHER


def test_use_candidate_without_controlling_role_does_not_nominate() -> None:
    agent, _ = make_agent()
    result, reply = send(agent, check(controlling=False, use_candidate=True))
    assert reply is not None and reply.message_class == StunClass.SUCCESS
    assert result.events == [CheckReceived(PEER, True)]
    assert agent.selected is None


def test_ipv6_source_with_flowinfo_and_scope() -> None:
    agent, _ = make_agent()
    result, reply = send(agent, check(use_candidate=True), ("2001:db8::5", 6000, 0, 0))
    assert reply is not None and reply.xor_mapped_address == ("2001:db8::5", 6000)
    assert agent.selected == ("2001:db8::5", 6000)


def test_unknown_remote_ufrag_accepts_any_then_pins_after_set_remote_credentials() -> None:
    agent, _ = make_agent(remote_ufrag=None)
    assert send(agent, check(username=f"{L_UFRAG}:whatever"))[1].message_class == StunClass.SUCCESS
    agent.set_remote_credentials(R_UFRAG, R_PWD)
    assert agent.remote_pwd == R_PWD
    assert send(agent, check(username=f"{L_UFRAG}:whatever"))[0].events == [Rejected(PEER, "bad_username")]
    assert send(agent, check())[1].message_class == StunClass.SUCCESS


def test_comprehension_optional_unknown_attribute_is_ignored() -> None:
    agent, _ = make_agent()
    msg = check(extra=[(0xC057, b"\x00\x01\x00\x0a")])  # libwebrtc's GOOG-NETWORK-INFO
    assert send(agent, msg)[1].message_class == StunClass.SUCCESS


def test_missing_fingerprint_is_tolerated() -> None:
    agent, _ = make_agent()
    result = agent.handle(check().encode(KEY, fingerprint=False), PEER)
    assert parse(result.response or b"").message_class == StunClass.SUCCESS


# --- rejections ----------------------------------------------------------------------------------


def test_role_conflict_answers_signed_487() -> None:
    agent, _ = make_agent()
    msg = binding_request(f"{L_UFRAG}:{R_UFRAG}", priority=1, controlled=7, use_candidate=True)
    result, _ = send(agent, msg)
    assert_error(result.response, msg.transaction_id, 487, signed=True)
    assert result.events == [Rejected(PEER, "role_conflict")]
    assert agent.selected is None and agent.last_check_at is None


@pytest.mark.parametrize(
    "username",
    [f"{R_UFRAG}:{L_UFRAG}", L_UFRAG, f"{L_UFRAG}:", f"{L_UFRAG}:{R_UFRAG}x", f"x{L_UFRAG}:{R_UFRAG}", ""],
)
def test_bad_username_answers_unsigned_401(username: str) -> None:
    agent, _ = make_agent()
    msg = check(username=username)
    result, _ = send(agent, msg)
    assert_error(result.response, msg.transaction_id, 401, signed=False)
    assert result.events == [Rejected(PEER, "bad_username")]


def test_bad_integrity_answers_unsigned_401() -> None:
    agent, _ = make_agent()
    msg = check()
    result, _ = send(agent, msg, key=R_PWD.encode())  # signed with the wrong password
    assert_error(result.response, msg.transaction_id, 401, signed=False)
    assert result.events == [Rejected(PEER, "bad_integrity")]
    assert agent.last_check_at is None


@pytest.mark.parametrize(
    ("msg", "key"),
    [
        (check(), None),  # no MESSAGE-INTEGRITY
        (StunMessage(StunMethod.BINDING, StunClass.REQUEST).add(Attr.PRIORITY, 1), KEY),  # no USERNAME
        (StunMessage(0x003, StunClass.REQUEST).add(Attr.USERNAME, f"{L_UFRAG}:{R_UFRAG}"), KEY),  # Allocate
    ],
    ids=["no-integrity", "no-username", "not-binding"],
)
def test_bad_request_answers_400(msg: StunMessage, key: bytes | None) -> None:
    agent, _ = make_agent()
    result, _ = send(agent, msg, key=key)
    assert_error(result.response, msg.transaction_id, 400, signed=False)
    assert result.events == [Rejected(PEER, "malformed")]


def test_unknown_comprehension_required_attribute_answers_420() -> None:
    agent, _ = make_agent()
    msg = check(extra=[(0x0077, b"??")])
    result, _ = send(agent, msg)
    reply = assert_error(result.response, msg.transaction_id, 420, signed=True)
    assert reply.get(Attr.UNKNOWN_ATTRIBUTES) == (0x0077,)
    assert result.events == [Rejected(PEER, "unknown_attribute")]


def test_malformed_request_answers_400_with_its_transaction_id() -> None:
    agent, _ = make_agent()
    msg = check()
    data = msg.encode(KEY)
    broken = data[:2] + (len(data) - 16).to_bytes(2, "big") + data[4:]  # length field off by 4
    result = agent.handle(broken, PEER)
    assert_error(result.response, msg.transaction_id, 400, signed=False)
    assert result.events == [Rejected(PEER, "malformed")]


def test_malformed_response_is_not_answered() -> None:
    agent, _ = make_agent()
    data = StunMessage(StunMethod.BINDING, StunClass.SUCCESS).encode()
    result = agent.handle(data + b"\x00\x00\x00\x00", PEER)
    assert result.response is None and result.events == [Rejected(PEER, "malformed")]


def test_bad_fingerprint_is_dropped_silently() -> None:
    agent, _ = make_agent()
    data = bytearray(check(use_candidate=True).encode(KEY))
    data[-1] ^= 0xFF
    result = agent.handle(bytes(data), PEER)
    assert result.response is None and result.events == [Rejected(PEER, "bad_fingerprint")]
    assert agent.selected is None


def test_not_stun() -> None:
    agent, _ = make_agent()
    result = agent.handle(b"\x16\xfe\xfd" + bytes(40), PEER)
    assert result.response is None and result.events == [Rejected(PEER, "not_stun")]


@pytest.mark.parametrize("message_class", [StunClass.INDICATION, StunClass.SUCCESS, StunClass.ERROR])
def test_indications_and_responses_are_ignored(message_class: StunClass) -> None:
    agent, _ = make_agent()
    msg = StunMessage(StunMethod.BINDING, message_class)
    result = agent.handle(msg.encode(KEY), PEER)
    assert result.response is None and result.events == []


# --- consent freshness ---------------------------------------------------------------------------


def test_consent_expiry() -> None:
    agent, clock = make_agent()
    assert not agent.consent_expired()
    clock.now = 129.9
    assert not agent.consent_expired()
    clock.now = 130.0
    assert agent.consent_expired()  # no check since creation
    send(agent, check(use_candidate=True))
    assert agent.last_check_at == 130.0 and not agent.consent_expired()
    clock.now = 150.0
    send(agent, check(use_candidate=True, controlling=False), key=b"wrong")  # rejected: no consent
    assert agent.last_check_at == 130.0
    assert agent.consent_expired(now=160.0)
    assert not agent.consent_expired(now=159.0)
    assert agent.consent_expired(now=141.0, timeout=10)


# --- asyncio wrapper -----------------------------------------------------------------------------


async def _recv(sock: socket.socket) -> tuple[bytes, tuple]:
    loop = asyncio.get_running_loop()
    return await asyncio.wait_for(loop.sock_recvfrom(sock, 2048), 2)


async def test_protocol_answers_routes_other_and_sends_to_selected() -> None:
    events: list[IceEvent] = []
    other: list[tuple[bytes, tuple[str, int]]] = []
    agent = IceLiteAgent(L_UFRAG, L_PWD, R_UFRAG)
    proto = await IceLiteProtocol.bind(agent, on_event=events.append, on_other=lambda d, a: other.append((d, a)))
    client = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    client.bind(("127.0.0.1", 0))
    client.setblocking(False)
    me = client.getsockname()
    try:
        assert not proto.send(b"early")  # nothing selected yet
        loop = asyncio.get_running_loop()
        msg = check(use_candidate=True)
        await loop.sock_sendto(client, msg.encode(KEY), proto.local_addr)
        data, _ = await _recv(client)
        assert parse(data).xor_mapped_address == me
        assert events == [CheckReceived(me, True), Nominated(me)]

        await loop.sock_sendto(client, b"\x80\x6fRTP", proto.local_addr)
        await loop.sock_sendto(client, b"\x16\xfe\xfdDTLS", proto.local_addr)
        for _ in range(50):
            if len(other) == 2:
                break
            await asyncio.sleep(0.01)
        assert other == [(b"\x80\x6fRTP", me), (b"\x16\xfe\xfdDTLS", me)]

        assert proto.send(b"to-selected")
        assert (await _recv(client))[0] == b"to-selected"
    finally:
        proto.close()
        client.close()
    await asyncio.sleep(0)
    assert proto.transport is None and not proto.send(b"closed", me)
    with pytest.raises(RuntimeError):
        proto.local_addr


async def test_protocol_custom_demux_and_no_callbacks() -> None:
    agent = IceLiteAgent(L_UFRAG, L_PWD)
    seen: list[bytes] = []
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: IceLiteProtocol(agent, demux=lambda d: d.startswith(b"S"), on_other=lambda d, a: seen.append(d)),
        local_addr=("127.0.0.1", 0),
    )
    try:
        proto.datagram_received(b"Sxxxx", ("127.0.0.1", 9))  # "STUN" per demux, rejected by agent: no reply
        proto.datagram_received(b"\x00\x01other", ("127.0.0.1", 9))
        assert seen == [b"\x00\x01other"]
        bare = IceLiteProtocol(agent)  # no callbacks, no transport: must not fail
        bare.datagram_received(b"\x80rtp", ("127.0.0.1", 9))
        bare.datagram_received(check().encode(KEY), ("127.0.0.1", 9))
    finally:
        transport.close()


# --- interop with a full aioice agent ------------------------------------------------------------


@pytest.fixture
def loopback_gathering(monkeypatch: pytest.MonkeyPatch) -> None:
    """aioice's host gathering leaves out 127.0.0.1; Connection.gather_candidates looks the
    function up in aioice.ice's globals at call time, so replacing it there is enough."""
    monkeypatch.setattr(aioice.ice, "get_host_addresses", lambda use_ipv4, use_ipv6: ["127.0.0.1"])


async def _full_agent_against_lite(
    *, controlling: bool, remote_is_lite: bool
) -> tuple[aioice.Connection, IceLiteProtocol, list[IceEvent], list[tuple[bytes, tuple[str, int]]]]:
    events: list[IceEvent] = []
    other: list[tuple[bytes, tuple[str, int]]] = []
    conn = aioice.Connection(ice_controlling=controlling, components=1, use_ipv6=False)
    agent = IceLiteAgent(L_UFRAG, L_PWD, conn.local_username, conn.local_password)
    proto = await IceLiteProtocol.bind(agent, on_event=events.append, on_other=lambda d, a: other.append((d, a)))
    host, port = proto.local_addr
    agent.add_remote_candidate(("127.0.0.9", 9))  # signalled but never used: ours is peer-reflexive
    conn.remote_is_lite = remote_is_lite
    conn.remote_username, conn.remote_password = L_UFRAG, L_PWD
    await conn.gather_candidates()
    assert [c.host for c in conn.local_candidates] == ["127.0.0.1"]
    await conn.add_remote_candidate(
        aioice.Candidate(
            foundation="meta1", component=1, transport="udp", priority=2130706431, host=host, port=port, type="host"
        )
    )
    await conn.add_remote_candidate(None)
    return conn, proto, events, other


async def _wait_for(predicate, timeout: float = 2.0) -> None:
    for _ in range(int(timeout / 0.01)):
        if predicate():
            return
        await asyncio.sleep(0.01)
    raise AssertionError("condition not met")


@pytest.mark.parametrize("remote_is_lite", [True, False], ids=["regular-nomination", "aggressive-nomination"])
async def test_aioice_controlling_agent_connects(loopback_gathering: None, remote_is_lite: bool) -> None:
    conn, proto, events, other = await _full_agent_against_lite(controlling=True, remote_is_lite=remote_is_lite)
    try:
        await asyncio.wait_for(conn.connect(), 5)
        (local,) = conn.local_candidates
        peer = ("127.0.0.1", local.port)
        assert Nominated(peer) in events and proto.agent.selected == peer
        assert events.count(Nominated(peer)) == 1
        assert all(isinstance(e, CheckReceived | Nominated) for e in events)
        assert CheckReceived(peer, peer_reflexive=True) in events
        if remote_is_lite:  # regular nomination: a plain check first, then one with USE-CANDIDATE
            assert events[:2] == [CheckReceived(peer, True), CheckReceived(peer, True)]

        await conn.send(b"hello from the business")
        await conn.sendto(b"second", 1)
        await _wait_for(lambda: len(other) == 2)
        assert other == [(b"hello from the business", peer), (b"second", peer)]

        assert proto.send(b"hello from meta")
        assert await asyncio.wait_for(conn.recv(), 2) == b"hello from meta"
    finally:
        await conn.close()
        proto.close()


async def test_aioice_controlled_agent_gets_487_and_repairs_the_role(loopback_gathering: None) -> None:
    """An agent that starts controlled gets 487 on its first check. RFC 8445 section 7.2.5.1 tells
    it to switch to controlling and retry, which aioice does; so it then connects as controlling."""
    conn, proto, events, _ = await _full_agent_against_lite(controlling=False, remote_is_lite=True)
    try:
        await asyncio.wait_for(conn.connect(), 5)
        (local,) = conn.local_candidates
        peer = ("127.0.0.1", local.port)
        assert events[0] == Rejected(peer, "role_conflict")
        assert conn.ice_controlling is True
        assert Nominated(peer) in events and proto.agent.selected == peer
    finally:
        await conn.close()
        proto.close()


async def test_aioice_with_wrong_password_fails(loopback_gathering: None) -> None:
    conn, proto, events, _ = await _full_agent_against_lite(controlling=True, remote_is_lite=True)
    conn.remote_password = "not-the-lite-password-x"
    try:
        with pytest.raises((ConnectionError, asyncio.TimeoutError)):
            await asyncio.wait_for(conn.connect(), 1.5)
        assert events and all(e == Rejected(e.addr, "bad_integrity") for e in events)
        assert proto.agent.selected is None
    finally:
        await conn.close()
        proto.close()
