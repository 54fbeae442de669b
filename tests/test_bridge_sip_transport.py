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
from pathlib import Path

import pytest

from support.bridge_tools import ROOT, AgentPhone, BridgeProcess, PbxKamailio, RtpEngineDaemon, free_udp_port
from support.sip_tools import LOOPBACK, find_binary, free_port, make_test_pki, render
from test_bridge_rtpengine import ALICE, DOMAIN, _heard_both_ways, _logged

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
                password: str = BRIDGE_PASSWORD, expires: int = 600) -> str:
    return f"""
[graph]
base_url = "{wa.url}"
phone_number_id = "{wa.pnid}"
token = "{wa.token}"

[webhook]
host = "127.0.0.1"
port = 0
app_secret = "{wa.info['app_secret']}"
verify_token = "{wa.info['verify_token']}"

[sip]
host = "127.0.0.1"
port = 0
pbx_host = "127.0.0.1"
pbx_port = {pbx.tls_port if transport == "tls" else pbx.tcp_port}
domain = "{DOMAIN}"
extension = "c2b-sip"
transport = "{transport}"
username = "{BRIDGE_USER}"
password = "{password}"
register = true
register_expires = {expires}
register_retry = 1.0
tls_ca = "{ca}"

[media]
mode = "rtpengine"
rtpengine = "{rtpengine.address}"
"""


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
