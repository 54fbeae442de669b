"""DTLS-SRTP (RFC 5764) sans-I/O session: our client against our server, failure modes,
retransmission, and interop with aiortc's DTLS transport (a DTLS peer not written here)."""

from __future__ import annotations

import asyncio
import re
import select
import shutil
import socket
import struct
import subprocess
import time
from collections.abc import Callable

import pytest

from wacall.media.certificate import DtlsCertificate
from wacall.media.dtls import DEFAULT_MTU, DtlsError, DtlsSrtpSession, is_dtls, parse_fingerprint
from wacall.media.srtp import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AES_CM_128_HMAC_SHA1_80, SrtpContext, SrtpError

CLIENT_CERT = DtlsCertificate.generate(common_name="test-client")
SERVER_CERT = DtlsCertificate.generate(common_name="test-server")


def rtp(seq: int, payload: bytes = b"opus!", *, ssrc: int = 0xC0FFEE, pt: int = 111) -> bytes:
    return struct.pack("!BBHII", 0x80, pt, seq, seq * 960, ssrc) + payload


def sessions(
    client_profiles=None, server_profiles=None, *, client_sees=None, server_sees=None, mtu: int = DEFAULT_MTU
) -> tuple[DtlsSrtpSession, DtlsSrtpSession]:
    extra_c = {} if client_profiles is None else {"profiles": client_profiles}
    extra_s = {} if server_profiles is None else {"profiles": server_profiles}
    client = DtlsSrtpSession(
        CLIENT_CERT, role="client", remote_fingerprint=client_sees or SERVER_CERT.fingerprint, mtu=mtu, **extra_c
    )
    server = DtlsSrtpSession(
        SERVER_CERT, role="server", remote_fingerprint=server_sees or CLIENT_CERT.fingerprint, mtu=mtu, **extra_s
    )
    return client, server


class Wire:
    """Moves datagrams between two sessions in memory; ``drop`` decides which get lost."""

    def __init__(self, client: DtlsSrtpSession, server: DtlsSrtpSession) -> None:
        self.client, self.server = client, server
        self.log: list[tuple[str, bytes]] = []  # ("to_server" | "to_client", datagram), delivered or not
        self.pending: list[tuple[str, bytes]] = []

    def send(self, direction: str, datagrams: list[bytes]) -> None:
        self.pending += [(direction, d) for d in datagrams]

    def run(self, drop: Callable[[int, str, bytes], bool] = lambda i, d, x: False) -> None:
        while self.pending:
            direction, datagram = self.pending.pop(0)
            index = len(self.log)
            self.log.append((direction, datagram))
            if drop(index, direction, datagram):
                continue
            if direction == "to_server":
                self.send("to_client", self.server.feed(datagram))
            else:
                self.send("to_server", self.client.feed(datagram))

    def handshake(self, drop: Callable[[int, str, bytes], bool] = lambda i, d, x: False) -> None:
        self.send("to_server", self.client.start())
        assert self.server.start() == []
        self.run(drop)


def connected_pair(**kwargs) -> tuple[DtlsSrtpSession, DtlsSrtpSession, Wire]:
    client, server = sessions(**kwargs)
    wire = Wire(client, server)
    wire.handshake()
    assert (client.state, server.state) == ("connected", "connected"), (client, server)
    return client, server, wire


# -- our client <-> our server ---------------------------------------------------------------


def test_handshake_derives_matching_keys_and_carries_srtp_both_ways() -> None:
    client, server, wire = connected_pair()
    assert client.srtp_profile is server.srtp_profile is AES_CM_128_HMAC_SHA1_80  # default preference
    assert client.failure_reason is None and server.failure_reason is None
    assert client.local_key_salt == server.remote_key_salt and client.remote_key_salt == server.local_key_salt
    assert client.local_key_salt != client.remote_key_salt and len(client.local_key_salt or b"") == 30
    assert client.timeout() is None and server.timeout() is None
    # one flight per direction, each a single datagram well under the MTU (ECDSA keeps it small)
    assert [d for d, _ in wire.log] == ["to_server", "to_client", "to_server", "to_client"]
    assert all(is_dtls(x) and len(x) <= DEFAULT_MTU for _, x in wire.log)

    c_srtp, s_srtp = client.srtp(), server.srtp()
    assert client.srtp() is c_srtp
    for seq in range(1, 4):
        assert s_srtp.unprotect(c_srtp.protect(rtp(seq))) == rtp(seq)
        assert c_srtp.unprotect(s_srtp.protect(rtp(seq, ssrc=7))) == rtp(seq, ssrc=7)
    rtcp = struct.pack("!BBHI", 0x81, 201, 7, 7) + bytes(24)  # receiver report with one block
    assert c_srtp.unprotect_rtcp(s_srtp.protect_rtcp(rtcp)) == rtcp

    # tampered packets are rejected and counted
    packet = bytearray(c_srtp.protect(rtp(10)))
    packet[-1] ^= 0xFF
    with pytest.raises(SrtpError):
        s_srtp.unprotect(bytes(packet))
    packet[-1] ^= 0xFF
    packet[13] ^= 0x20
    with pytest.raises(SrtpError):
        s_srtp.unprotect(bytes(packet))
    assert s_srtp.auth_failures == 2
    # replays are rejected and counted
    good = c_srtp.protect(rtp(11))
    assert s_srtp.unprotect(good) == rtp(11)
    with pytest.raises(SrtpError) as info:
        s_srtp.unprotect(good)
    assert info.value.kind == "replay" and s_srtp.replays == 1

    # closing sends close_notify, which closes the peer
    alert = client.close()
    assert alert and client.state == "closed"
    for datagram in alert:
        assert server.feed(datagram) == []
    assert server.state == "closed"
    assert server.close() == []


@pytest.mark.parametrize(
    ("client_profiles", "server_profiles", "expected"),
    [
        ((AEAD_AES_256_GCM, AES_CM_128_HMAC_SHA1_80), (AEAD_AES_128_GCM, AEAD_AES_256_GCM), AEAD_AES_256_GCM),
        (None, ("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"), AEAD_AES_128_GCM),  # the server's order wins
        (("AEAD_AES_128_GCM", "AES_CM_128_HMAC_SHA1_80"), None, AES_CM_128_HMAC_SHA1_80),
    ],
)
def test_profile_negotiation(client_profiles, server_profiles, expected) -> None:
    client, server, _ = connected_pair(client_profiles=client_profiles, server_profiles=server_profiles)
    assert client.srtp_profile is server.srtp_profile is expected
    assert len(client.srtp().local_key_salt) == expected.key_salt_length
    assert server.srtp().unprotect(client.srtp().protect(rtp(1))) == rtp(1)


def test_no_common_profile_fails_on_both_sides() -> None:
    client, server = sessions(client_profiles=["AEAD_AES_256_GCM"], server_profiles=["AES_CM_128_HMAC_SHA1_80"])
    Wire(client, server).handshake()
    assert (client.state, server.state) == ("failed", "failed")
    assert client.failure_reason == server.failure_reason == "no SRTP profile negotiated"
    assert client.srtp_profile is None
    with pytest.raises(DtlsError):
        client.srtp()


@pytest.mark.parametrize("liar", ["client", "server"])
def test_fingerprint_mismatch_fails(liar: str) -> None:
    wrong = DtlsCertificate.generate().fingerprint
    if liar == "server":  # the client expects another server certificate
        client, server = sessions(client_sees=wrong)
    else:
        client, server = sessions(server_sees=wrong)
    Wire(client, server).handshake()
    checker, other = (client, server) if liar == "server" else (server, client)
    assert checker.state == "failed" and checker.failure_reason == "fingerprint mismatch"
    # the checker aborted with an alert, so the other side fails too
    assert other.state == "failed" and (other.failure_reason or "").startswith("handshake error:")
    assert checker.feed(b"\x16\xfe\xfd" + bytes(20)) == [] and checker.timeout() is None


def test_fingerprint_formats() -> None:
    fp = SERVER_CERT.fingerprint
    lower = fp.lower()
    assert parse_fingerprint(f"sha-256 {lower}") == parse_fingerprint(fp) == parse_fingerprint(f"SHA-256 {fp}")
    client, server = sessions(client_sees=f"sha-256 {lower}")
    Wire(client, server).handshake()
    assert client.state == server.state == "connected"
    for bad in ["AB:CD", "sha-1 " + fp, "not a fingerprint at all", fp.replace(":", "")]:
        with pytest.raises(ValueError):
            parse_fingerprint(bad)


def test_small_mtu_fragments_and_packs_records() -> None:
    client, server, wire = connected_pair(mtu=300)
    assert max(len(x) for _, x in wire.log) <= 300
    assert len(wire.log) > 4  # the flights had to be split
    assert server.srtp().unprotect(client.srtp().protect(rtp(1))) == rtp(1)


def test_non_dtls_datagrams_are_ignored_and_server_starts_on_feed() -> None:
    client, server = sessions()
    assert server.feed(b"\x00\x01\x00\x00stun") == [] and server.state == "new"
    hello = client.start()
    assert client.start() == []  # idempotent
    reply = server.feed(hello[0])  # no explicit start()
    assert reply and server.state == "connecting"


# -- retransmission --------------------------------------------------------------------------


def wait_and_retransmit(session: DtlsSrtpSession) -> list[bytes]:
    delay = session.timeout()
    assert delay is not None and 0 < delay <= 1.0  # OpenSSL's initial DTLS timer is 1 s
    assert session.handle_timeout() == []  # too early: nothing to do
    time.sleep(delay + 0.02)
    assert session.timeout() == 0
    return session.handle_timeout()


def test_lost_client_hello_is_retransmitted() -> None:
    client, server = sessions()
    wire = Wire(client, server)
    wire.handshake(drop=lambda i, d, x: i == 0)  # the ClientHello is lost
    assert (client.state, server.state) == ("connecting", "connecting")
    wire.send("to_server", wait_and_retransmit(client))
    wire.run()
    assert client.state == server.state == "connected"
    assert server.srtp().unprotect(client.srtp().protect(rtp(1))) == rtp(1)


def test_lost_final_flight_is_answered_after_the_server_connected() -> None:
    client, server = sessions()
    wire = Wire(client, server)
    wire.handshake(drop=lambda i, d, x: i == 3)  # the server's ChangeCipherSpec + Finished
    assert (client.state, server.state) == ("connecting", "connected")
    # the client resends its last flight; the connected server answers with its final flight
    wire.send("to_server", wait_and_retransmit(client))
    wire.run()
    assert client.state == "connected"
    assert client.srtp().unprotect(server.srtp().protect(rtp(5))) == rtp(5)


# -- interop with aiortc's DTLS transport ----------------------------------------------------


class QueueIceTransport:
    """Stands in for aiortc's RTCIceTransport: the three members RTCDtlsTransport uses."""

    def __init__(self, role: str) -> None:
        self.role = role  # aiortc: controlling -> DTLS server, controlled -> DTLS client
        self.inbox: asyncio.Queue[bytes | None] = asyncio.Queue()
        self.outbox: asyncio.Queue[bytes] = asyncio.Queue()

    async def _recv(self) -> bytes:
        data = await self.inbox.get()
        if data is None:
            raise ConnectionError("closed")
        return data

    async def _send(self, data: bytes) -> None:
        await self.outbox.put(data)


class RtpSink:
    def __init__(self) -> None:
        self.packets: asyncio.Queue = asyncio.Queue()

    def _handle_disconnect(self) -> None:
        pass

    async def _handle_rtcp_packet(self, packet) -> None:
        pass

    async def _handle_rtp_packet(self, packet, arrival_time_ms: int) -> None:
        await self.packets.put(packet)


async def drive(session: DtlsSrtpSession, ice: QueueIceTransport) -> None:
    """Our side of the bridge: the sans-I/O session moved by an asyncio loop."""
    for datagram in session.start():
        ice.inbox.put_nowait(datagram)
    while session.state in ("new", "connecting"):
        try:
            datagram = await asyncio.wait_for(ice.outbox.get(), session.timeout())
        except asyncio.TimeoutError:
            out = session.handle_timeout()
        else:
            out = session.feed(datagram)
        for datagram in out:
            ice.inbox.put_nowait(datagram)


@pytest.mark.parametrize(("our_role", "expected"), [("client", AEAD_AES_256_GCM), ("server", AES_CM_128_HMAC_SHA1_80)])
async def test_interop_with_aiortc_dtls_transport(our_role: str, expected) -> None:
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport

    # aiortc is the DTLS server when it is the ICE controlling agent
    ice = QueueIceTransport(role="controlling" if our_role == "client" else "controlled")
    theirs = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
    their_fp = next(f.value for f in theirs.getLocalParameters().fingerprints if f.algorithm == "sha-256")
    ours = DtlsSrtpSession(DtlsCertificate.default(), role=our_role, remote_fingerprint=f"sha-256 {their_fp}")
    our_params = RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint("sha-256", ours.certificate.fingerprint)])

    await asyncio.wait_for(asyncio.gather(theirs.start(our_params), drive(ours, ice)), 5)
    assert (ours.state, theirs.state) == ("connected", "connected"), ours.failure_reason
    # aiortc prefers AEAD_AES_256_GCM, we prefer AES_CM_128_HMAC_SHA1_80: the server's choice wins
    assert ours.srtp_profile is expected
    srtp = ours.srtp()

    # aiortc -> us: aiortc protects with its own libsrtp session keyed from its own export
    await theirs._send_rtp(rtp(1, b"from aiortc", ssrc=0xA10))
    assert srtp.unprotect(await asyncio.wait_for(ice.outbox.get(), 1)) == rtp(1, b"from aiortc", ssrc=0xA10)
    sender_report = struct.pack("!BBHIIIIII", 0x80, 200, 6, 0xA10, 1, 2, 3, 4, 5)
    await theirs._send_rtp(sender_report)
    assert srtp.unprotect_rtcp(await asyncio.wait_for(ice.outbox.get(), 1)) == sender_report

    # us -> aiortc: its receive path unprotects, parses and routes the packet
    sink = RtpSink()
    theirs._rtp_router.register_receiver(sink, ssrcs=[0xC0FFEE], payload_types=[111])
    ice.inbox.put_nowait(srtp.protect(rtp(1, b"from wacall")))
    packet = await asyncio.wait_for(sink.packets.get(), 1)
    assert (packet.ssrc, packet.sequence_number, packet.payload) == (0xC0FFEE, 1, b"from wacall")

    # our close_notify closes aiortc's transport
    for datagram in ours.close():
        ice.inbox.put_nowait(datagram)
    for _ in range(100):
        if theirs.state == "closed":
            break
        await asyncio.sleep(0.01)
    assert theirs.state == "closed"
    await theirs.stop()


async def test_aiortc_rejects_a_wrong_fingerprint_and_we_report_the_alert() -> None:
    from aiortc.rtcdtlstransport import RTCCertificate, RTCDtlsFingerprint, RTCDtlsParameters, RTCDtlsTransport

    ice = QueueIceTransport(role="controlling")
    theirs = RTCDtlsTransport(ice, [RTCCertificate.generateCertificate()])  # type: ignore[arg-type]
    their_fp = next(f.value for f in theirs.getLocalParameters().fingerprints if f.algorithm == "sha-256")
    ours = DtlsSrtpSession(CLIENT_CERT, role="client", remote_fingerprint=their_fp)
    wrong = RTCDtlsParameters(fingerprints=[RTCDtlsFingerprint("sha-256", SERVER_CERT.fingerprint)])
    # aiortc checks the fingerprint only after its handshake, so our side connects
    await asyncio.wait_for(asyncio.gather(theirs.start(wrong), drive(ours, ice)), 5)
    assert theirs.state == "failed"
    assert isinstance(ours.srtp(), SrtpContext)
    await theirs.stop()


# -- interop with the openssl command-line tool (another OpenSSL build, over UDP loopback) -----

OPENSSL = shutil.which("openssl")


def _pump_udp(session: DtlsSrtpSession, sock: socket.socket, peer: tuple[str, int] | None) -> tuple[str, int]:
    """Run the handshake over a real UDP socket; returns the peer address."""
    for datagram in session.start():
        assert peer is not None
        sock.sendto(datagram, peer)
    deadline = time.monotonic() + 5
    while session.state in ("new", "connecting"):
        assert time.monotonic() < deadline, "handshake did not finish"
        ready, _, _ = select.select([sock], [], [], min(session.timeout() or 0.5, 0.5))
        if ready:
            datagram, peer = sock.recvfrom(2048)
            out = session.feed(datagram)
        else:
            out = session.handle_timeout()
        for datagram in out:
            assert peer is not None
            sock.sendto(datagram, peer)
    assert peer is not None
    return peer


@pytest.mark.skipif(OPENSSL is None, reason="no openssl command")
@pytest.mark.parametrize("our_role", ["client", "server"])
def test_interop_with_openssl_cli_and_exported_keys(our_role: str, tmp_path) -> None:
    tool_cert = DtlsCertificate.generate(common_name="openssl-cli")
    (tmp_path / "cert.pem").write_bytes(tool_cert.cert_pem)
    (tmp_path / "key.pem").write_bytes(tool_cert.key_pem)
    common = ["-dtls1_2", "-cert", "cert.pem", "-key", "key.pem", "-use_srtp", "SRTP_AEAD_AES_128_GCM:SRTP_AES128_CM_SHA1_80"]
    # 60 bytes covers both profiles: the TLS 1.2 PRF output for a shorter length is a prefix
    common += ["-keymatexport", "EXTRACTOR-dtls_srtp", "-keymatexportlen", "60", "-mtu", "1200"]
    ours = DtlsSrtpSession(CLIENT_CERT, role=our_role, remote_fingerprint=tool_cert.fingerprint)  # type: ignore[arg-type]
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", 0))
    if our_role == "client":
        probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
        probe.close()
        args = ["s_server", "-accept", f"127.0.0.1:{port}", "-verify", "1", "-naccept", "1"]
    else:
        port = sock.getsockname()[1]
        args = ["s_client", "-connect", f"127.0.0.1:{port}"]
    tool = subprocess.Popen(
        [OPENSSL, *args, *common], cwd=tmp_path, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        if our_role == "client":
            assert tool.stdout is not None
            for line in iter(tool.stdout.readline, b""):  # wait until it listens
                if b"ACCEPT" in line:
                    break
            _pump_udp(ours, sock, ("127.0.0.1", port))
        else:
            _pump_udp(ours, sock, None)
        assert ours.state == "connected", ours.failure_reason
        time.sleep(0.05)  # let the tool print its summary
        output, _ = tool.communicate(timeout=5)  # EOF on stdin ends s_client; s_server ends after one accept
    finally:
        if tool.poll() is None:
            tool.kill()
            tool.wait()
        sock.close()
    text = output.decode(errors="replace")
    # OpenSSL's server picks by its own order: AEAD_AES_128_GCM; ours picks AES_CM_128_HMAC_SHA1_80
    expected = AEAD_AES_128_GCM if our_role == "client" else AES_CM_128_HMAC_SHA1_80
    assert f"profile={expected.openssl_name.decode()}" in text
    assert ours.srtp_profile is expected
    match = re.search(r"Keying material: ([0-9A-F]+)", text)
    assert match, text
    material = bytes.fromhex(match.group(1))[: 2 * expected.key_salt_length]
    k, s = expected.key_length, expected.salt_length
    client_keys = material[:k] + material[2 * k : 2 * k + s]
    server_keys = material[k : 2 * k] + material[2 * k + s : 2 * k + 2 * s]
    assert (ours.local_key_salt, ours.remote_key_salt) == (
        (client_keys, server_keys) if our_role == "client" else (server_keys, client_keys)
    )


def test_release_after_the_peer_proved_its_keys_keeps_srtp_and_ignores_late_records() -> None:
    client, server, wire = connected_pair()
    late = [x for d, x in wire.log if d == "to_server"][-1]       # the client's last flight, repeated later
    s_srtp, c_srtp = server.srtp(), client.srtp()
    assert s_srtp.unprotect(c_srtp.protect(rtp(1))) == rtp(1)
    server.release()
    assert server.released and server.state == "connected" and server.srtp() is s_srtp
    assert server.feed(late) == [] and server.timeout() is None and server.handle_timeout() == []
    assert c_srtp.unprotect(s_srtp.protect(rtp(2, ssrc=7))) == rtp(2, ssrc=7)
    assert server.close() == [] and server.state == "closed"


def test_sessions_of_one_certificate_share_a_context_but_check_their_own_peer() -> None:
    wrong = "sha-256 " + ":".join(["AB"] * 32)
    honest_client, honest_server = sessions()
    fooled_client, picky_server = sessions(server_sees=wrong)     # this server expects another client
    assert honest_server._ssl.get_context() is picky_server._ssl.get_context()
    honest, picky = Wire(honest_client, honest_server), Wire(fooled_client, picky_server)
    honest.send("to_server", honest_client.start())
    picky.send("to_server", fooled_client.start())
    honest.run()
    picky.run()
    assert (honest_client.state, honest_server.state) == ("connected", "connected")
    assert picky_server.state == "failed" and picky_server.failure_reason == "fingerprint mismatch"
