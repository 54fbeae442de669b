"""SIP over TLS on loopback (wacall.sip.transport): framing, keep-alive, robustness, connection reuse."""

from __future__ import annotations

import asyncio
import random
import socket
import ssl

import pytest

from wacall.certs import LocalCA
from wacall.sip.message import Request, Response, StreamFramer, new_branch, parse_message, response_to
from wacall.sip.tls import NotLoopbackError, Resolver, client_context, server_context
from wacall.sip.transport import Connection, TlsTransport, TransportError, salvage_error_response

BIZ = "sip.business.example"


def options(branch: str | None = None, *, via_host: str = BIZ, via_port: int = 5061, extra: str = "",
            body: bytes = b"") -> bytes:
    branch = branch or new_branch()
    head = (f"OPTIONS sip:+15550001111@wa.meta.vc;transport=tls SIP/2.0\r\n"
            f"Via: SIP/2.0/TLS {via_host}:{via_port};branch={branch};rport\r\n"
            f"Max-Forwards: 70\r\n"
            f"From: <sip:+15550002222@{BIZ}>;tag=abc\r\n"
            f"To: <sip:+15550001111@wa.meta.vc>\r\n"
            f"Call-ID: {branch}@{BIZ}\r\n"
            f"CSeq: 1 OPTIONS\r\n{extra}"
            f"Content-Length: {len(body)}\r\n\r\n")
    return head.encode() + body


@pytest.fixture
def pki(tmp_path):
    ca = LocalCA.load_or_create(tmp_path / "pki")
    return ca, ca.gateway_paths(), ca.issue([BIZ])


class Inbox:
    """Collects (message, connection) pairs from a transport's on_message."""

    def __init__(self) -> None:
        self.queue: asyncio.Queue[tuple[Request | Response, Connection]] = asyncio.Queue()

    def __call__(self, msg, conn) -> None:
        self.queue.put_nowait((msg, conn))

    async def get(self, timeout: float = 5.0):
        return await asyncio.wait_for(self.queue.get(), timeout)


@pytest.fixture
async def gateway(pki):
    """wacall's listener (certificate for wa.meta.vc) that answers OPTIONS with 200."""
    ca, (cert, key), _ = pki
    inbox = Inbox()
    transport = TlsTransport(server_ssl=server_context(cert, key), client_ssl=client_context(ca.cert_path),
                             resolver=Resolver({BIZ: "127.0.0.1"}), on_message=inbox)
    await transport.start("127.0.0.1", 0)
    transport.inbox = inbox
    yield transport
    await transport.close()


async def raw_client(port: int, cafile, *, hostname: str = "wa.meta.vc"):
    reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=client_context(cafile),
                                                   server_hostname=hostname)
    writer.get_extra_info("socket").setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return reader, writer


async def read_message(reader: asyncio.StreamReader, timeout: float = 5.0) -> Request | Response:
    framer = StreamFramer()
    while True:
        data = await asyncio.wait_for(reader.read(65536), timeout)
        assert data, "connection closed"
        for item in framer.feed(data):
            if isinstance(item, bytes):
                return parse_message(item)


async def test_listen_and_connect_round_trip(pki, gateway):
    ca, _, (biz_cert, biz_key) = pki
    # A business-side transport that connects to the gateway by its SIP domain.
    inbox = Inbox()
    biz = TlsTransport(client_ssl=client_context(ca.cert_path), resolver=Resolver({"wa.meta.vc": "127.0.0.1"}),
                       on_message=inbox)
    try:
        conn = await biz.connect("wa.meta.vc", gateway.port)
        assert conn.outgoing and conn.hostname == "wa.meta.vc" and conn.peer[0] == "127.0.0.1"
        assert await biz.connect("WA.META.VC", gateway.port) is conn  # reused
        both = await asyncio.gather(biz.connect("wa.meta.vc", gateway.port), biz.connect("wa.meta.vc", gateway.port))
        assert both[0] is both[1] is conn
        assert biz.stats.connections_out == 1

        biz.send(parse_message(options(via_host="127.0.0.1", via_port=conn.local[1])), conn)
        request, server_conn = await gateway.inbox.get()
        assert isinstance(request, Request) and request.method == "OPTIONS"
        assert not server_conn.outgoing and server_conn.peer[1] == conn.local[1]
        sock = server_conn._transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY)
        # RFC 3581: the empty rport was filled; sent-by equals the source, so no received.
        assert request.top_via.rport == conn.local[1] and request.top_via.received is None

        gateway.send(response_to(request, 200, to_tag="t1"), server_conn)  # back on the same connection
        response, conn2 = await inbox.get()
        assert isinstance(response, Response) and response.status == 200 and conn2 is conn

        assert gateway.stats.messages_in == 1 and gateway.stats.messages_out == 1
        assert biz.stats.messages_out == 1 and biz.stats.messages_in == 1
        assert gateway.stats.bytes_in == biz.stats.bytes_out > 0
        assert gateway.stats.connections_in == 1
    finally:
        await biz.close()


async def test_received_param_for_a_hostname_sent_by(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    writer.write(options())  # Via sent-by is sip.business.example:5061
    request, _ = await gateway.inbox.get()
    via = request.top_via
    assert via.received == "127.0.0.1" and via.rport == writer.get_extra_info("sockname")[1]
    assert request.headers.get_all("Via")[0].startswith(f"SIP/2.0/TLS {BIZ}:5061;branch=")
    writer.close()


async def test_hostname_verification_and_loopback_only(pki, gateway):
    ca = pki[0]
    client = TlsTransport(client_ssl=client_context(ca.cert_path),
                          resolver=Resolver({"evil.example": "127.0.0.1", "wa.meta.vc": "127.0.0.1"}))
    try:
        with pytest.raises(TransportError):
            await client.connect("evil.example", gateway.port)  # certificate does not cover it
        with pytest.raises(NotLoopbackError):
            await client.connect("192.0.2.1", gateway.port)
        with pytest.raises(NotLoopbackError):
            await client.connect("unknown.invalid", gateway.port)
        with pytest.raises(NotLoopbackError):
            await TlsTransport(server_ssl=gateway.server_ssl).start("0.0.0.0", 0)
        assert await client.connect("wa.meta.vc", gateway.port)  # the gateway survived the failed handshake
    finally:
        await client.close()


async def test_framing_across_tls_records(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    body = b"v=0\r\n" * 20
    first = options(body=body, extra="Content-Type: application/sdp\r\n")
    second, third = options(), options()
    # First message one byte per TLS record for its head, then odd-sized chunks.
    for i in range(0, 40):
        writer.write(first[i:i + 1])
        await writer.drain()
    for i in range(40, len(first), 7):
        writer.write(first[i:i + 7])
        await writer.drain()
    # Two messages and half of a third in one record, the rest later.
    writer.write(second + third[:50])
    await writer.drain()
    await asyncio.sleep(0.05)
    writer.write(third[50:])
    got = [await gateway.inbox.get() for _ in range(3)]
    assert [m.call_id for m, _ in got] == [parse_message(x).call_id for x in (first, second, third)]
    assert got[0][0].body == body
    assert gateway.stats.parse_errors == 0
    writer.close()


async def test_keepalive_ping_gets_pong(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    writer.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    writer.write(b"\r\n\r\n" + options())  # ping then a message in one record
    assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    msg, _ = await gateway.inbox.get()
    assert msg.method == "OPTIONS" and gateway.stats.pings == 2
    writer.close()


async def test_garbage_gets_400_or_is_dropped_and_server_survives(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    # Parseable enough to answer: CSeq method disagrees with the request line.
    bad = options().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    writer.write(bad)
    response = await read_message(reader)
    assert isinstance(response, Response) and response.status == 400
    assert "CSeq" in response.reason
    assert response.to.tag  # RFC 3261 8.2.6.2
    sent_via = bad.split(b"\r\n")[1].decode().removeprefix("Via: ")
    assert response.headers.get("Via") == sent_via
    assert response.call_id in bad.decode()
    # Unanswerable garbage (no Via/Call-ID): dropped, connection still usable.
    writer.write(b"\x00\x01\xffgarbage here\r\nno colon\r\n\r\n")
    writer.write(b"SIP/2.0 999 nonsense\r\nContent-Length: 0\r\n\r\n")  # malformed response: dropped
    writer.write(options())
    msg, _ = await gateway.inbox.get()
    assert msg.method == "OPTIONS"
    assert gateway.stats.parse_errors >= 2 and gateway.stats.bad_requests_answered == 1

    # Lost framing (header block beyond 64 KiB without an end): the connection is closed.
    writer.write(b"OPTIONS sip:x@wa.meta.vc SIP/2.0\r\nX-Junk: " + b"a" * 70000)
    assert await asyncio.wait_for(reader.read(), 5) == b""
    writer.close()

    # Not TLS at all, and a reset in the middle of a message.
    _, plain = await asyncio.open_connection("127.0.0.1", gateway.port)
    plain.write(b"OPTIONS sip:x SIP/2.0\r\n\r\n" * 10)
    await plain.drain()
    plain.close()
    _, resetter = await raw_client(gateway.port, ca.cert_path)
    resetter.write(options()[:60])
    await resetter.drain()
    resetter.transport.abort()

    # A second connection is still served.
    reader2, writer2 = await raw_client(gateway.port, ca.cert_path)
    writer2.write(b"\r\n\r\n")
    assert await asyncio.wait_for(reader2.readexactly(2), 5) == b"\r\n"
    writer2.write(options())
    msg, conn = await gateway.inbox.get()
    assert msg.method == "OPTIONS"
    gateway.send(response_to(msg, 200, to_tag="x"), conn)
    assert (await read_message(reader2)).status == 200
    writer2.close()


async def test_missing_content_length_is_answered(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    writer.write(options().replace(b"Content-Length: 0\r\n", b""))
    response = await read_message(reader)
    assert response.status == 400 and "Content-Length" in response.reason
    writer.write(options())
    assert (await gateway.inbox.get())[0].method == "OPTIONS"
    writer.close()


async def test_slowloris_half_message_times_out(pki):
    ca, (cert, key), _ = pki
    transport = TlsTransport(server_ssl=server_context(cert, key), half_message_timeout=0.3, on_message=Inbox())
    await transport.start("127.0.0.1", 0)
    try:
        reader, writer = await raw_client(transport.port, ca.cert_path)
        msg = options()
        loop = asyncio.get_running_loop()
        start = loop.time()
        for i in range(5):  # trickle bytes; never complete the message
            writer.write(msg[i:i + 1])
            await writer.drain()
            await asyncio.sleep(0.05)
        assert await asyncio.wait_for(reader.read(), 5) == b""
        assert 0.25 < loop.time() - start < 2
        assert transport.stats.timeouts == 1
        # A connection that only sends complete messages is not timed out.
        reader, writer = await raw_client(transport.port, ca.cert_path)
        writer.write(msg)
        await asyncio.sleep(0.5)
        writer.write(b"\r\n\r\n")
        assert await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
        writer.close()
    finally:
        await transport.close()


async def test_callback_errors_are_contained(pki):
    ca, (cert, key), _ = pki
    seen = []

    def broken(msg, conn):
        seen.append(msg)
        raise RuntimeError("TU bug")

    transport = TlsTransport(server_ssl=server_context(cert, key), on_message=broken)
    await transport.start("127.0.0.1", 0)
    try:
        reader, writer = await raw_client(transport.port, ca.cert_path)
        writer.write(options() + options())
        for _ in range(50):
            if len(seen) == 2:
                break
            await asyncio.sleep(0.02)
        assert len(seen) == 2 and transport.stats.callback_errors == 2
        writer.close()
    finally:
        await transport.close()


async def test_response_falls_back_to_via_when_connection_is_gone(pki, gateway):
    """RFC 3261 18.2.2: the request's connection closed, so the response goes to the Via sent-by."""
    ca, _, (biz_cert, biz_key) = pki
    biz_inbox = Inbox()
    biz = TlsTransport(server_ssl=server_context(biz_cert, biz_key), on_message=biz_inbox)
    await biz.start("127.0.0.1", 0)
    try:
        reader, writer = await raw_client(gateway.port, ca.cert_path)
        writer.write(options(via_host=BIZ, via_port=biz.port).replace(b";rport", b""))
        request, conn = await gateway.inbox.get()
        writer.close()
        await asyncio.wait_for(conn.wait_closed(), 5)
        with pytest.raises(TransportError):
            gateway.send(response_to(request, 200, to_tag="z"), conn)
        # received=127.0.0.1 was stamped: the fallback connects there, to the sent-by port, and
        # TLS verifies the sent-by hostname.
        gateway.resolver = Resolver()  # no hosts mapping needed: the received address is used
        used = await gateway.send_response(response_to(request, 200, to_tag="z"), conn)
        assert used is not conn and used.outgoing and used.hostname == BIZ and used.peer[1] == biz.port
        response, _ = await biz_inbox.get()
        assert response.status == 200 and response.call_id == request.call_id
    finally:
        await biz.close()


def test_salvage_error_response():
    raw = options().replace(b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE")
    out = salvage_error_response(raw, 400, "Bad Request - CSeq")
    msg = parse_message(out)
    assert msg.status == 400 and msg.reason == "Bad Request - CSeq" and msg.to.tag
    assert salvage_error_response(raw.replace(b"Call-ID", b"X-Call"), 400, "x") is None
    assert salvage_error_response(b"ACK sip:a@b SIP/2.0\r\n\r\n", 400, "x") is None
    assert salvage_error_response(b"SIP/2.0 200 OK\r\n\r\n", 400, "x") is None
    compact = (b"MESSAGE sip:a@b SIP/2.0\r\nv: SIP/2.0/TLS h;branch=z9hG4bKx\r\nf: <sip:a@b>;tag=1\r\n"
               b"t: <sip:c@d>;tag=2\r\ni: abc\r\nCSeq: 3 MESSAGE\r\n\r\n")
    msg = parse_message(salvage_error_response(compact, 400, "Bad"))
    assert msg.to.tag == "2" and msg.call_id == "abc" and msg.cseq == (3, "MESSAGE")


async def test_close_with_open_connections(pki, gateway):
    ca = pki[0]
    reader, writer = await raw_client(gateway.port, ca.cert_path)
    writer.write(b"\r\n\r\n")
    await asyncio.wait_for(reader.readexactly(2), 5)
    await gateway.close()
    assert await asyncio.wait_for(reader.read(), 5) == b""
    assert not gateway.connections


# -- idle clients cannot take the file descriptors calls need ----------------------------------------

async def _closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5.0) -> bool:
    """True once the other side closed (EOF or reset) within ``timeout``."""
    try:
        while True:
            if not await asyncio.wait_for(reader.read(65536), timeout):
                return True
    except (ConnectionError, OSError):
        return True


async def _still_open(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
    """A CRLF ping still gets its pong (RFC 5626 section 4.4.1)."""
    writer.write(b"\r\n\r\n")
    try:
        return await asyncio.wait_for(reader.readexactly(2), 5) == b"\r\n"
    except (asyncio.IncompleteReadError, ConnectionError):
        return False


async def test_idle_connections_are_closed_keepalives_and_live_dialogs_keep_them(pki):
    ca, (cert, key), _ = pki
    inbox, busy = Inbox(), set()
    transport = TlsTransport(server_ssl=server_context(cert, key), on_message=inbox, idle_timeout=1.0,
                             in_use=lambda conn: conn in busy)
    await transport.start("127.0.0.1", 0)
    try:
        idle_r, idle_w = await raw_client(transport.port, ca.cert_path)
        ping_r, ping_w = await raw_client(transport.port, ca.cert_path)
        call_r, call_w = await raw_client(transport.port, ca.cert_path)
        call_w.write(options())                       # this one carries a (pretend) dialog
        _, conn = await inbox.get()
        busy.add(conn)
        for _ in range(10):                           # 2.5 s: two and a half idle timeouts
            await asyncio.sleep(0.25)
            assert await _still_open(ping_r, ping_w), "CRLF keep-alives are activity"
        assert await _closed_by_peer(idle_r), "an idle connection is closed"
        assert await _still_open(call_r, call_w), "a connection with a live dialog is kept"
        busy.clear()                                  # the call ended: now it may idle out too
        assert await _closed_by_peer(call_r)
        assert await _closed_by_peer(ping_r), "once the pings stop, that one idles out too"
        assert transport.stats.idle_closed == 3 and transport.stats.timeouts == 0
        await asyncio.sleep(0.05)
        assert transport.incoming == 0 and not transport.connections, "every slot is free again"
        for w in (idle_w, ping_w, call_w):
            w.close()
    finally:
        await transport.close()


async def test_a_client_that_never_says_client_hello_is_dropped(pki):
    ca, (cert, key), _ = pki
    transport = TlsTransport(server_ssl=server_context(cert, key), handshake_timeout=0.3, max_connections=2)
    await transport.start("127.0.0.1", 0)
    try:
        silent = [await asyncio.open_connection("127.0.0.1", transport.port) for _ in range(2)]
        for reader, _ in silent:
            assert await _closed_by_peer(reader), "no ClientHello: closed after the handshake timeout"
        assert transport.stats.handshake_failures == 2
        await asyncio.sleep(0.05)
        assert transport.incoming == 0, "their slots are free again"
        reader, writer = await raw_client(transport.port, ca.cert_path)
        assert await _still_open(reader, writer)
        writer.close()
        for _, w in silent:
            w.close()
    finally:
        await transport.close()


async def test_connections_over_the_cap_are_refused_before_the_handshake_and_logged_once(pki, caplog):
    ca, (cert, key), _ = pki
    transport = TlsTransport(server_ssl=server_context(cert, key), max_connections=3, handshake_timeout=30)
    await transport.start("127.0.0.1", 0)
    try:
        held = [await raw_client(transport.port, ca.cert_path) for _ in range(2)]
        held.append(await asyncio.open_connection("127.0.0.1", transport.port))   # plain TCP, handshaking
        with caplog.at_level("WARNING", logger="wacall.sip.transport"):
            for _ in range(5):
                reader, writer = await asyncio.open_connection("127.0.0.1", transport.port)
                assert await _closed_by_peer(reader, 2), "refused: closed before any TLS byte"
                writer.close()
            with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
                await raw_client(transport.port, ca.cert_path)
        assert transport.stats.refused == 6 and transport.stats.handshake_failures == 0
        assert len([r for r in caplog.records if "max_connections" in r.getMessage()]) == 1, "logged once"
        held.pop()[1].close()                          # one goes: a new client gets in
        await asyncio.sleep(0.1)
        reader, writer = await raw_client(transport.port, ca.cert_path)
        assert await _still_open(reader, writer)
        assert await _still_open(*held[0]), "the connections already in were never disturbed"
        for _, w in [*held, (reader, writer)]:
            w.close()
    finally:
        await transport.close()


def test_stamped_via_is_what_its_text_parses_to():
    """``received``/``rport`` (RFC 3261 18.2.1, RFC 3581 4) rewrite the top Via; the Via the layers above read
    next is the one built here, equal to what the general parser makes of the new text."""
    from wacall.sip.message import _parse_via_general, parse_via
    from wacall.sip.transport import stamp_via
    raw = (b"OPTIONS sip:wa.meta.vc SIP/2.0\r\n"
           b"Via: SIP/2.0/TLS pbx.example:5070;branch=z9hG4bK-77;rport, SIP/2.0/TLS proxy.example;branch=z9hG4bK-1\r\n"
           b"From: <sip:a@pbx.example>;tag=1\r\nTo: <sip:b@wa.meta.vc>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\n"
           b"Content-Length: 0\r\n\r\n")
    request = parse_message(raw)
    stamp_via(request, ("127.0.0.1", 40123))
    text = "SIP/2.0/TLS pbx.example:5070;branch=z9hG4bK-77;rport=40123;received=127.0.0.1"
    assert request.headers.get("Via") == text + ", SIP/2.0/TLS proxy.example;branch=z9hG4bK-1"
    assert request.top_via is parse_via(text) and request.top_via == _parse_via_general(text)
    assert [v.host for v in request.vias] == ["pbx.example", "proxy.example"]


@pytest.mark.parametrize("via", [
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport",          # the usual: "=<port>" appended
    "SIP/2.0/TLS 127.0.0.1;branch=z9hG4bK-1;rport",
    "SIP/2.0/TLS [::1]:5070;branch=z9hG4bK-1;rport",
    "SIP/2.0/TLS pbx.example:5070;branch=z9hG4bK-1;rport",         # received too: the general way
    "SIP/2.0/TLS 127.0.0.1:05070;branch=z9hG4bK-1;rport",         # renders as :5070
    "SIP/2.0/TLS 127.0.0.1:0;branch=z9hG4bK-1;rport",
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport=7;rport",   # given twice
    "SIP/2.0/TLS 127.0.0.1:5070;RPORT;branch=z9hG4bK-1;rport",     # another spelling first
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;xrport;rport",
    "SIP/2.0/TLS 127.0.0.1:5070 ;branch=z9hG4bK-1 ; rport",       # whitespace
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport, SIP/2.0/TLS proxy.example;rport",
    "sip/2.0/tls 127.0.0.1:5070;branch=z9hG4bK-1;rport",
    "SIP/2.0/TLS 127.0.0.1:5070;branch=\"z9hG4bK-1\";rport",
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport=1234",
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1",
])
@pytest.mark.parametrize("scan", [True, False])
def test_the_rport_splice_is_the_general_stamp(via: str, scan: bool) -> None:
    """``stamp_via``'s splice of ``=<port>`` (the usual Via) gives what the general way gives: the same header
    fields, the same octets on the wire, the same Via read back (or it leaves the request to the general way)."""
    from wacall.sip import message
    from wacall.sip.transport import _stamp_any, stamp_via
    raw = (f"OPTIONS sip:wa.meta.vc SIP/2.0\r\nVia: {via}\r\nFrom: <sip:a@pbx.example>;tag=1\r\n"
           f"To: <sip:b@wa.meta.vc>\r\nCall-ID: c1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode()
    parse = message.parse_message if scan else message._parse_in_python
    for peer in (("127.0.0.1", 40123), ("::1", 40124), ("192.0.2.1", 40125)):
        fast, general = parse(raw), parse(raw)
        stamp_via(fast, peer)
        _stamp_any(general, *peer)
        assert list(fast.headers) == list(general.headers)
        assert fast.to_bytes() == general.to_bytes() == message._parse_in_python(general.to_bytes()).to_bytes()
        assert fast.top_via == general.top_via == message._parse_via_general(general.vias[0].__str__())
    usual = parse(raw.replace(via.encode(), b"SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport"))
    stamp_via(usual, ("127.0.0.1", 40123))
    assert usual.headers.get("Via") == "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport=40123"


def _received_both_ways(raw: bytes, peer: tuple[str, int]) -> tuple:
    """``parse_received`` (the octets stamped before the parse when the request is the usual one) and the
    general way (``parse_message`` then ``stamp_via``): the outcome of each, as comparable values."""
    from wacall.sip import message
    from wacall.sip.transport import parse_received, stamp_via

    def general(data: bytes):
        msg = message.parse_message(data)
        if isinstance(msg, Request):
            stamp_via(msg, peer)
        return msg

    outcomes = []
    for way in (parse_received, lambda data, _peer: general(data)):
        try:
            msg = way(raw, peer)
        except message.SipParseError as exc:
            outcomes.append(("error", exc.status, exc.reason))
            continue
        start = (msg.method, msg.uri) if isinstance(msg, Request) else (msg.status, msg.reason)
        top = msg.top_via if msg.headers.get("Via") is not None else None
        outcomes.append((type(msg).__name__, start, list(msg.headers), msg.body, msg.to_bytes(), top))
    return tuple(outcomes)


_USUAL = (b"INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0\r\n"
          b"Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport\r\nMax-Forwards: 70\r\n"
          b"From: <sip:+442071838750@pbx.business.example>;tag=1SIPpTag001\r\n"
          b"To: <sip:+447955500001@wa.meta.vc>\r\nCall-ID: 1-abc@127.0.0.1\r\nCSeq: 2 INVITE\r\n"
          b"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n")
_PEERS = [("127.0.0.1", 40123), ("::1", 40124), ("192.0.2.1", 5), ("", 0)]
#: the start line ends in CRLF, every header line in a bare LF (the parser takes both), the Via already carries
#: the rport, and the body has a line ending in ";rport" followed by CRLF
_START, _FIELDS = _USUAL.split(b"SIP/2.0\r\n", 1)
_BARE_LF_HEADERS = _START + b"SIP/2.0\r\n" + _FIELDS.replace(b";rport\r\n", b";rport=40123\r\n").replace(
    b"\r\n", b"\n").replace(b"Content-Length: 4\n\nv=0\n", b"Content-Length: 20\n\nv=0\na=x-foo;rport\r\n\r\n" + b"x" * 20)


def test_the_usual_request_is_stamped_before_its_parse() -> None:
    """A test of the path itself, not only of the fallback: the usual request comes out stamped, its received
    octets (with the stamp) kept as its wire form, and its stamped Via the one parse made."""
    from wacall.sip.message import parse_via
    from wacall.sip.transport import parse_received
    msg = parse_received(_USUAL, ("127.0.0.1", 40123))
    stamped = _USUAL.replace(b";rport", b";rport=40123")
    assert msg.headers.get("Via") == "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport=40123"
    assert msg.to_bytes() == stamped and msg._wire[2] == 0        # the parsed octets themselves, not a splice
    assert msg.top_via is parse_via(msg.headers.get("Via")) and msg.top_via.rport == 40123
    for peer in _PEERS:
        before, general = _received_both_ways(_USUAL, peer)
        assert before == general and before[0] == "Request"


@pytest.mark.parametrize("data", [
    _USUAL,
    _USUAL.replace(b"127.0.0.1:5070", b"pbx.example:5070"),                      # received too: the general way
    _USUAL.replace(b";rport", b";rport;rport"),
    _USUAL.replace(b";rport", b";RPORT"),
    _USUAL.replace(b";rport", b";rport, SIP/2.0/TLS proxy.example;rport"),
    _USUAL.replace(b";rport", b";rport\r\n ;folded"),
    _USUAL.replace(b";rport", b";rport\r\n \t"),
    _USUAL.replace(b";rport", b";rport \t"),
    _USUAL.replace(b"5070", b"05070"),
    _USUAL.replace(b"Via: ", b"v: "),
    _USUAL.replace(b"Via: ", b"VIA: "),
    _USUAL.replace(b"Via: ", b"Via:  "),
    _USUAL.replace(b"Via: ", b"X: 1\r\nVia: "),
    _USUAL.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\nVia: SIP/2.0/TLS 127.0.0.1:5070;rport=40123\r\nVia"),
    _USUAL.replace(b"SIP/2.0\r\nVia", b"SIP/2.0\nX: 1\r\nVia"),
    b"\r\n" + _USUAL,
    b"\r" + _USUAL,
    _USUAL.replace(b"INVITE sip", b"SIP/2.0 200 OK\r\nX: sip").replace(b"CSeq: 2 INVITE", b"CSeq: 2 INVITE"),
    _USUAL.replace(b"INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0", b"sip/2.0 200 OK"),
    _USUAL.replace(b"CSeq: 2 INVITE", b"CSeq: 2 BYE"),                            # a 400 either way
    _USUAL.replace(b"branch=z9hG4bK-1-1-0", b"branch=\"z\""),
    _USUAL.replace(b"branch=z9hG4bK-1-1-0", b"branch=z9hG4bK\xff"),
    _USUAL.replace(b"Content-Length: 4", b"Content-Length: 40"),
    # a Via line ending in a bare LF (the parser takes it) and carrying its rport already: the stamp is not
    # spliced into a later line that ends in ";rport" (a header, or the body)
    _USUAL.replace(b";rport\r\nMax-Forwards: 70\r\n", b";rport=40123\nX-Note: a;rport\r\nMax-Forwards: 70\r\n"),
    _BARE_LF_HEADERS,
])
def test_the_stamp_before_the_parse_is_the_general_stamp(data: bytes) -> None:
    for peer in _PEERS:
        before, general = _received_both_ways(data, peer)
        assert before == general, (data, peer)


def _head_mutations(seeds: list[bytes], nasty: list[bytes], *, seed: int, count: int, span: int) -> list[bytes]:
    """The seeds, then ``count`` of them with 1 to 3 edits in their first ``span`` octets (where the start line
    and the first Via are): a ``nasty`` piece inserted, or 1 to 6 octets cut."""
    rng = random.Random(seed)
    cases = list(seeds)
    for _ in range(count):
        data = rng.choice(seeds)
        for _ in range(rng.randint(1, 3)):
            i = rng.randrange(min(len(data), span) + 1)
            if rng.random() < 0.6:
                data = data[:i] + rng.choice(nasty) + data[i:]
            else:
                data = data[:i] + data[i + rng.randint(1, 6):]
        cases.append(data)
    return cases


def test_the_stamp_before_the_parse_agrees_on_torture_and_mutations() -> None:
    from pathlib import Path
    torture = sorted(p.read_bytes() for p in (Path(__file__).parent / "data" / "sip_torture").glob("*.dat"))
    seeds = [*torture, _USUAL, _USUAL.replace(b"127.0.0.1:5070", b"[::1]:5070")]
    nasty = [b"\r\n", b"\n", b" ", b",", b";", b";rport", b"=", b"Via: ", b"\r\n ", b"\xff", b"1"]
    for data in _head_mutations(seeds, nasty, seed=3581, count=1500, span=200):
        for peer in _PEERS[:3]:
            before, general = _received_both_ways(data, peer)
            assert before == general, (data, peer)


def test_the_compiled_rport_splice_is_the_python_one() -> None:
    """``_sipscan.rport_spliced`` (what parse_received calls) gives what ``transport.rport_spliced`` (the reference)
    gives, on the usual request, the torture messages and mutations of them around the Via line."""
    from pathlib import Path
    from wacall.sip.transport import _RPORT_SPLICED, rport_spliced
    if _RPORT_SPLICED is None:
        pytest.skip("the compiled scanner is not built (WACALL_SIPSCAN=0)")
    assert _RPORT_SPLICED(_USUAL, 40123) == _USUAL.replace(b";rport", b";rport=40123") == rport_spliced(_USUAL, 40123)
    torture = sorted(p.read_bytes() for p in (Path(__file__).parent / "data" / "sip_torture").glob("*.dat"))
    seeds = [*torture, _USUAL, _BARE_LF_HEADERS, _USUAL.replace(b"INVITE sip", b"SIP/2.0 200 OK\r\nX: sip")]
    nasty = [b"\r\n", b"\n", b"\r", b" ", b",", b";", b";rport", b";RpOrT", b"=", b"Via: ", b"\r\n ", b"\xff", b"1",
             b"sIp/"]
    spliced = 0
    for data in _head_mutations(seeds, nasty, seed=5626, count=3000, span=140):
        for port in (0, 5, 40123, 65535, 65536):
            got = _RPORT_SPLICED(data, port)
            assert got == rport_spliced(data, port), (data, port)
            spliced += got is not None
    assert spliced > 200          # the mutations keep the usual form often enough for the comparison to count
