"""The bridge's SIP toward the PBX over TCP and TLS with digest registration, end to end on loopback: wacall as
Meta, the bridge as a subprocess, RtpEngine, Kamailio as registrar and proxy with digest authentication and its
``tls`` module (``tests/data/bridge/kamailio-pbx-auth.cfg``), baresip as the agent's phone.

Shown here: the bridge's REGISTER is challenged, answered and saved at the registrar (over TCP and over TLS, the
PBX's certificate checked against the test CA); a user's call reaches the agent through the bridge's challenged
INVITE and the agent's call reaches the user through the bridge's registered Contact (Kamailio's ``lookup`` of
the bridge's AOR over the bridge's own connection), both ended from either side; a wrong password is refused by
the registrar and reported (log and ``sip_registration``); a PBX certificate from another CA is refused; the
registration is refreshed before it expires and removed at stop."""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest

from support.bridge_tools import bridge_toml as tools_bridge_toml
from support.bridge_tools import rtpengine_media
from support.bridge_tools import ROOT, AgentPhone, BridgeProcess, PbxKamailio, RtpEngineDaemon, free_udp_port
from support.sip_tools import LOOPBACK, find_binary, free_port, make_test_pki, render
from test_bridge_rtpengine import ALICE, DOMAIN, _heard_both_ways, _logged
from test_bridge_sip_ua import pbx_invite
from wacall.bridge.sip_ua import SipFailure, SipUserAgent
from wacall.sip.message import StreamFramer, parse_message, response_to

KAMAILIO_AUTH_CFG = ROOT / "tests" / "data" / "bridge" / "kamailio-pbx-auth.cfg"
BRIDGE_USER, BRIDGE_PASSWORD = "bridge", "s3cret-trunk"


class AuthPbx(PbxKamailio):
    """Kamailio as a PBX that authenticates (digest, realm = the domain) over UDP, TCP and TLS."""

    name = "kamailio-auth"

    def __init__(self, *, cert: Path, key: Path, **kwargs) -> None:
        super().__init__(**kwargs)
        self.cert, self.key = cert, key
        self.tcp_port = self.tls_port = 0

    def write_config(self) -> Path:
        mpath = next((p for p in ("/usr/lib/x86_64-linux-gnu/kamailio/modules", "/usr/lib/kamailio/modules")
                      if Path(p).is_dir()), "/usr/lib/x86_64-linux-gnu/kamailio/modules")
        tls_cfg = self.workdir / "tls.cfg"
        tls_cfg.write_text(f"[server:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n"
                           f"certificate = {self.cert}\nprivate_key = {self.key}\n\n"
                           f"[client:default]\nmethod = TLSv1.2+\nverify_certificate = no\nrequire_certificate = no\n")
        self.config.write_text(render(KAMAILIO_AUTH_CFG.read_text(), {
            "DEBUG": self.debug, "HOST": LOOPBACK, "PORT": self.port, "TCP_PORT": self.tcp_port,
            "TLS_PORT": self.tls_port, "DOMAIN": self.domain, "MPATH": mpath, "TLS_CFG": tls_cfg,
            "EXTENSION": self.extension, "AGENT": self.agent, "BRIDGE_USER": BRIDGE_USER,
            "BRIDGE_PASSWORD": BRIDGE_PASSWORD}))
        return self.config

    def start(self, timeout: float = 15.0) -> "AuthPbx":
        binary = find_binary("kamailio", "kamailio")
        self.port, self.tcp_port, self.tls_port = free_udp_port(), free_port(), free_port()
        self.write_config()
        (self.workdir / "run").mkdir(exist_ok=True)
        self._spawn([binary, "-DD", "-E", "-f", str(self.config), "-P", str(self.workdir / "kamailio.pid"),
                     "-Y", str(self.workdir / "run"), "-m", "64", "-M", "8"])
        self._wait_udp(self.port, timeout)
        self._wait_listening([self.tcp_port, self.tls_port], timeout)
        return self

    def log_text(self) -> str:
        return self.stderr_log.read_text(errors="replace")


def bridge_toml(wa, rtpengine: RtpEngineDaemon, pbx: AuthPbx, transport: str, *, ca: Path,
                password: str = BRIDGE_PASSWORD, expires: int = 600, pbx_port: int = 0, register: bool = True,
                t1: float = 0.5) -> str:
    port = pbx_port or (pbx.tls_port if transport == "tls" else pbx.tcp_port if transport == "tcp" else pbx.port)
    return tools_bridge_toml(wa.info, media=rtpengine_media(rtpengine), sip=f"""host = "127.0.0.1"
port = 0
pbx_host = "127.0.0.1"
pbx_port = {port}
domain = "{DOMAIN}"
extension = "c2b-sip"
transport = "{transport}"
username = "{BRIDGE_USER}"
password = "{password}"
register = {"true" if register else "false"}
t1 = {t1}
register_expires = {expires}
register_retry = 1.0
tls_ca = "{ca}"
""")


@pytest.fixture
async def chain(wa, tmp_path):
    """wacall (Alice plays 440 Hz), RtpEngine, the authenticating PBX (its certificate from the test CA) and the
    agent's phone registered to it over UDP; the test starts the bridge (:func:`start_bridge`)."""
    wa.reset()
    assert wa.ctl("PATCH", f"users/{ALICE}", {"audio": "tone:440"}).status_code == 200
    pki = make_test_pki(tmp_path / "pki")
    pbx_cert = pki.issue([DOMAIN, "localhost"], "pbx")
    async with RtpEngineDaemon(workdir=tmp_path / "rtpengine") as rtpengine, \
            AuthPbx(domain=DOMAIN, cert=pbx_cert.cert, key=pbx_cert.key, workdir=tmp_path / "pbx") as pbx:
        agent = AgentPhone(user="agent", domain=DOMAIN, registrar=("127.0.0.1", pbx.port), ca=pki.ca_cert,
                           cert=pki.business.pem, tone_hz=1000, workdir=tmp_path / "agent")
        async with agent:
            await agent.wait_registered()
            yield wa, agent, rtpengine, pbx, pki, tmp_path


async def start_bridge(chain, transport: str, **kwargs) -> BridgeProcess:
    wa, _, rtpengine, pbx, pki, tmp_path = chain
    kwargs.setdefault("ca", pki.ca_cert)
    bridge = BridgeProcess(bridge_toml(wa, rtpengine, pbx, transport, **kwargs), workdir=tmp_path / "bridge")
    await asyncio.to_thread(bridge.start)
    subscribed = await asyncio.to_thread(wa.subscribe, bridge.info["webhook_url"], "calls")
    assert subscribed.status_code == 200, subscribed.text
    return bridge


async def _pbx_logged(pbx: AuthPbx, pattern: str, seconds: float = 5.0) -> re.Match:
    for _ in range(int(seconds * 20)):
        if m := re.search(pattern, pbx.log_text()):
            return m
        await asyncio.sleep(0.05)
    raise AssertionError(f"{pattern!r} not in the PBX's log:\n{pbx.log_text()[-3000:]}")


@pytest.mark.parametrize("transport", ["tcp", "tls"])
async def test_registered_over_the_transport_calls_go_both_ways(chain, transport):
    wa, agent, _, pbx, _, _ = chain
    bridge = await start_bridge(chain, transport)
    try:
        assert bridge.info["sip_registration"] == "registered", bridge.log_text()[-3000:]
        proto = transport
        await _pbx_logged(pbx, rf"AUTH OK REGISTER user {BRIDGE_USER} over {proto}")
        await _pbx_logged(pbx, rf"REGISTERED sip:{BRIDGE_USER}@{DOMAIN} contact <sip:{BRIDGE_USER}@127\.0\.0\.1:\d+"
                               rf";transport={transport}>")
        assert f"SIP registered as sip:{BRIDGE_USER}@{DOMAIN}" in bridge.log_text()

        # a user calls the business: the bridge's INVITE is challenged (407) and answered
        call_id = (await asyncio.to_thread(wa.user_calls, ALICE)).json()["call_id"]
        ringing = await agent.wait_event("CALL_INCOMING", 15)
        assert f"+{ALICE}" in ringing.param or f"+{ALICE}" in str(ringing.raw), ringing.raw
        await _pbx_logged(pbx, rf"AUTH OK INVITE user {BRIDGE_USER} over {proto}")
        await agent.accept()
        await agent.wait_event("CALL_ESTABLISHED", 10)
        await asyncio.to_thread(wa.wait_state, call_id, "ACCEPTED", 15)
        await _heard_both_ways(wa, agent, call_id)
        await agent.hangup()                                    # the PBX's BYE over the bridge's connection
        await agent.wait_event("CALL_CLOSED", 10)
        ended = await asyncio.to_thread(wa.wait_state, call_id, "ENDED", 10)
        assert ended["ended_by"] == "business", ended

        # the agent calls the user: Kamailio finds the bridge by its registration
        await asyncio.to_thread(wa.grant_permission, ALICE)
        assert wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "manual"}).status_code == 200
        await agent.dial(f"sip:+{ALICE}@{DOMAIN}")

        def ringing_at_wacall():
            calls = wa.ctl("GET", "calls?state=RINGING").json()["data"]
            return [c for c in calls if c["wa_id"] == ALICE and c["direction"] == "BUSINESS_INITIATED"]
        [call] = await asyncio.to_thread(wa.wait_for, ringing_at_wacall, 15, "the agent's call ringing at wacall")
        await _pbx_logged(pbx, rf"TO BRIDGE sip:\+{ALICE}@127\.0\.0\.1:\d+;transport={transport}")
        assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call['call_id']}/answer")).status_code == 200
        established = await agent.wait_event("CALL_ESTABLISHED", 10)
        await asyncio.to_thread(wa.wait_state, call["call_id"], "ACCEPTED", 10)
        assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call['call_id']}/hangup")).status_code == 200
        await agent.wait_event("CALL_CLOSED", 10, after=agent.history.index(established))   # our BYE
        await _logged(bridge, "BYE to the PBX: 200")
    finally:
        assert await asyncio.to_thread(bridge.terminate) == 0
    await _pbx_logged(pbx, rf"REGISTERED sip:{BRIDGE_USER}@{DOMAIN} contact \S+ expires 0 over {proto}")
    assert f"SIP unregistered sip:{BRIDGE_USER}@{DOMAIN}: 200" in bridge.log_text()


async def test_a_wrong_password_is_refused_by_the_registrar_and_reported(chain):
    wa, agent, _, pbx, _, _ = chain
    bridge = await start_bridge(chain, "tls", password="not-the-password")
    try:
        assert bridge.info["sip_registration"] == "401 Unauthorized", bridge.info
        await _pbx_logged(pbx, rf"AUTH REFUSED REGISTER user {BRIDGE_USER}")
        assert "REGISTERED sip:bridge" not in pbx.log_text()
        log = bridge.log_text()
        assert re.search(r"SIP registration as sip:bridge@pbx\.example\.com refused by the PBX: 401 Unauthorized "
                         r"\(wrong username or password\?\); retrying in 1\.0 s", log), log[-3000:]
        # retried, and still refused; the agent's call to a user finds no bridge
        await _pbx_logged(pbx, r"(?s)AUTH REFUSED REGISTER.*AUTH REFUSED REGISTER", 5)
        await agent.dial(f"sip:+{ALICE}@{DOMAIN}")
        closed = await agent.wait_event("CALL_CLOSED", 10)
        assert "480" in closed.param or "480" in str(closed.raw), closed.raw
    finally:
        await asyncio.to_thread(bridge.terminate)


async def test_a_pbx_certificate_from_another_ca_is_refused(chain):
    _, _, _, pbx, _, tmp_path = chain
    other = make_test_pki(tmp_path / "other-pki")
    bridge = await start_bridge(chain, "tls", ca=other.ca_cert)
    try:
        assert bridge.info["sip_registration"].startswith("503 "), bridge.info
        assert "CERTIFICATE_VERIFY_FAILED" in bridge.log_text() or "certificate verify failed" in bridge.log_text()
        assert "AUTH OK REGISTER" not in pbx.log_text()
    finally:
        await asyncio.to_thread(bridge.terminate)


async def test_the_registration_is_refreshed_before_it_expires(chain):
    _, _, _, pbx, _, _ = chain
    bridge = await start_bridge(chain, "tcp", expires=2)          # refreshed after 1 s
    try:
        await _pbx_logged(pbx, r"(?s)(REGISTERED sip:bridge@\S+ contact \S+ expires 2 over tcp.*){3}", 10)
        assert bridge.log_text().count("SIP registered as") == 1, "refreshes are not news"
    finally:
        await asyncio.to_thread(bridge.terminate)


async def test_a_200_the_pbx_never_acks_ends_the_call_on_both_sides(chain):
    """IP trust over UDP (no registration); a PBX (a bare socket here) calls a user through the bridge, the user
    answers, the bridge's 200 OK is never ACKed: after 64*T1 (Timer H) the bridge sends the PBX a BYE and ends
    the WhatsApp call through its usual end path (Graph terminate)."""
    wa = chain[0]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as pbx_sock:
        pbx_sock.bind(("127.0.0.1", 0))
        pbx_sock.settimeout(10)
        bridge = await start_bridge(chain, "udp", register=False, pbx_port=pbx_sock.getsockname()[1], t1=0.05)
        try:
            assert "sip_registration" not in bridge.info
            await asyncio.to_thread(wa.grant_permission, ALICE)
            assert wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "manual"}).status_code == 200
            host, port = bridge.info["sip"].rsplit(":", 1)
            me = pbx_sock.getsockname()
            sdp = (f"v=0\r\no=- 1 1 IN IP4 127.0.0.1\r\ns=-\r\nc=IN IP4 127.0.0.1\r\nt=0 0\r\n"
                   f"m=audio {free_udp_port()} RTP/AVP 111 0\r\na=rtpmap:111 opus/48000/2\r\n"
                   f"a=rtpmap:0 PCMU/8000\r\na=sendrecv\r\n")
            invite = (f"INVITE sip:+{ALICE}@{host}:{port} SIP/2.0\r\n"
                      f"Via: SIP/2.0/UDP {me[0]}:{me[1]};branch=z9hG4bKnoack\r\n"
                      f"From: <sip:agent@{DOMAIN}>;tag=agent1\r\nTo: <sip:+{ALICE}@{DOMAIN}>\r\n"
                      f"Call-ID: noack@pbx\r\nCSeq: 1 INVITE\r\nContact: <sip:agent@{me[0]}:{me[1]}>\r\n"
                      f"Max-Forwards: 70\r\nContent-Type: application/sdp\r\nContent-Length: {len(sdp)}\r\n\r\n{sdp}")
            pbx_sock.sendto(invite.encode(), (host, int(port)))

            def ringing_at_wacall():
                calls = wa.ctl("GET", "calls?state=RINGING").json()["data"]
                return [c for c in calls if c["wa_id"] == ALICE and c["direction"] == "BUSINESS_INITIATED"]
            [call] = await asyncio.to_thread(wa.wait_for, ringing_at_wacall, 15, "the call ringing at wacall")
            assert (await asyncio.to_thread(wa.ctl, "POST", f"calls/{call['call_id']}/answer")).status_code == 200
            oks, bye = 0, None
            while bye is None:                                  # 200s (resent, never ACKed), then the BYE
                data, addr = await asyncio.to_thread(pbx_sock.recvfrom, 65536)
                message = parse_message(data)
                if getattr(message, "status", None) == 200:
                    oks += 1
                elif getattr(message, "method", None) == "BYE":
                    bye = message
                    pbx_sock.sendto(response_to(message, 200).to_bytes(), addr)
            assert oks >= 2 and bye.call_id == "noack@pbx" and bye.to.tag == "agent1"
            ended = await asyncio.to_thread(wa.wait_state, call["call_id"], "ENDED", 10)
            assert ended["ended_by"] == "business", ended
            assert "no ACK for our 200 within 64*T1" in bridge.log_text()
            assert "no ACK from the PBX for our 200: ending" in bridge.log_text()
            assert "BYE from the PBX" not in bridge.log_text()
            await _logged(bridge, "ended (no_ack)")       # logged after Graph's answer to the terminate
            assert "ended (no_ack)" in bridge.log_text()
        finally:
            await asyncio.to_thread(bridge.terminate)


# -- the UA's TCP transport against a small TCP peer (no Kamailio) ----------------------------------------------

class StreamPbx:
    """A PBX over TCP for the UA: collects what the UA sends (framed), answers from the test."""

    def __init__(self) -> None:
        self.received: asyncio.Queue = asyncio.Queue()
        self.writer: asyncio.StreamWriter | None = None

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.writer = writer
        framer = StreamFramer()
        while data := await reader.read(65536):
            for item in framer.feed(data):
                if isinstance(item, bytes):
                    self.received.put_nowait(parse_message(item))

    def send(self, data: bytes) -> None:
        assert self.writer is not None
        self.writer.write(data)


async def test_over_tcp_requests_and_answers_share_the_connection_and_a_refused_connect_is_503():
    pbx = StreamPbx()
    server = await asyncio.start_server(pbx.serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    ua = SipUserAgent("127.0.0.1", 0, ("127.0.0.1", port), t1=0.05, transport="tcp", domain="pbx.example.com",
                      username="bridge", password="s3cret")
    await ua.start()
    try:
        registering = asyncio.create_task(ua.register(60))
        register = await asyncio.wait_for(pbx.received.get(), 5)
        via = register.top_via
        assert via.transport == "TCP" and "alias" in via.params and via.port == ua.port != 0
        assert register.headers.get("Contact") == f"<sip:bridge@127.0.0.1:{ua.port};transport=tcp>"
        pbx.send(response_to(register, 200, to_tag="r1").to_bytes())
        assert (await asyncio.wait_for(registering, 5))[0].status == 200
        seen = []
        ua.on_invite = seen.append
        pbx.send(pbx_invite().replace(b"SIP/2.0/UDP", b"SIP/2.0/TCP"))     # the PBX's INVITE on our connection
        trying = await asyncio.wait_for(pbx.received.get(), 5)
        assert trying.status == 100 and len(seen) == 1
    finally:
        ua.close()
        server.close()
    refused = SipUserAgent("127.0.0.1", 0, ("127.0.0.1", port), t1=0.05, transport="tcp")
    await refused.start()
    try:
        with pytest.raises(SipFailure) as failed:
            await asyncio.wait_for(refused.register(60), 5)             # nobody listens any more: at once
        assert failed.value.status == 503 and "connection to 127.0.0.1" in failed.value.reason
    finally:
        refused.close()


async def test_with_a_certificate_the_bridge_listens_for_the_pbx_over_tls(tmp_path):
    """``tls_cert``/``tls_key``: the PBX may open its own TLS connection to the bridge (an INVITE to the bridge's
    address without registration); the bridge answers on that connection."""
    import ssl

    from wacall.bridge.sip_ua import tls_contexts
    pki = make_test_pki(tmp_path / "pki")
    bridge_cert = pki.issue(["bridge.example.com"], "bridge")
    client, server = tls_contexts(ca=str(pki.ca_cert), cert=str(bridge_cert.cert), key=str(bridge_cert.key))
    ua = SipUserAgent("127.0.0.1", 0, ("127.0.0.1", 9), t1=0.05, transport="tls", client_ssl=client,
                      server_ssl=server)
    port = await ua.start()
    try:
        pbx_side = ssl.create_default_context(cafile=str(pki.ca_cert))
        reader, writer = await asyncio.open_connection("127.0.0.1", port, ssl=pbx_side,
                                                       server_hostname="bridge.example.com")
        options = (f"OPTIONS sip:bridge@127.0.0.1:{port};transport=tls SIP/2.0\r\n"
                   f"Via: SIP/2.0/TLS 127.0.0.1:5061;branch=z9hG4bKopt1\r\nFrom: <sip:pbx@pbx.example.com>;tag=p1\r\n"
                   f"To: <sip:bridge@pbx.example.com>\r\nCall-ID: opt1@pbx\r\nCSeq: 1 OPTIONS\r\n"
                   f"Max-Forwards: 70\r\nContent-Length: 0\r\n\r\n").encode()
        writer.write(options)
        framer = StreamFramer()
        answers: list = []
        while not answers:
            answers = [m for m in framer.feed(await asyncio.wait_for(reader.read(65536), 5)) if isinstance(m, bytes)]
        ok = parse_message(answers[0])
        assert ok.status == 200 and ok.branch == "z9hG4bKopt1" and ok.to.tag
        writer.close()
    finally:
        ua.close()
