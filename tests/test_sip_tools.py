"""The real SIP software the gateway tests and bench/sip_flows.py drive (tests/support/sip_tools.py).

Every tool runs for real on loopback: SIPp (Debian's, no TLS) behind stunnel, kamailio playing
wa.meta.vc, baresip as a business endpoint. These tests pin down what the harness guarantees, so
gateway tests can rely on it:

- ``bic_digest.xml`` completes Meta's flow over TLS against kamailio: 407, ACK on the INVITE's
  branch, the re-INVITE's digest ``uri`` equal to the Request-URI and ``username`` the business
  digits, ACK and BYE routed through both of Meta's Record-Routes;
- ``bic_expect_status.xml`` passes only on the expected final status and reason phrase;
- stunnel's client really checks the server's host name;
- ``bic_cancel.xml`` completes against a SIPp stand-in for Meta that rings;
- ``uas_401.xml`` challenges with 401 and accepts only the right digest (baresip dials it);
- baresip answers over TLS with SRTP-SDES (AES_CM_128_HMAC_SHA1_80) and Opus, records both
  directions, and reports received RFC 4733 digits as CALL_DTMF_START events;
- baresip places a business-initiated call to wa.meta.vc through an outbound proxy with digest.

Facts about the tools these tests document:
- SIPp prefixes ``-auth_uri`` with ``sip:`` itself (``Sipp`` strips a leading ``sip:``), and joins a
  route set into one comma-separated ``Route`` header;
- baresip 1.0 does *not* verify the TLS server certificate (any CA, any name): use
  :func:`tls_peer_certificate` or the stunnel client to check wacall's certificate;
- baresip hangs up when its ``aufile`` WAV ends, and reports a BYE it receives as CALL_CLOSED with
  param "Connection reset by peer".
"""

from __future__ import annotations

import asyncio
import re
import ssl
from pathlib import Path

import pytest

from support.sip_tools import (
    Baresip, Kamailio, Sipp, Stunnel, TestPki, bic_auth_uri, bic_keys, expect_status_scenario,
    find_binary, free_port, make_test_pki, tls_peer_certificate, uas_keys,
)
from wacall.media.audio import dominant_frequency, read_wav, rms_dbfs

# scripts/test installs the Debian packages (scripts/apt-packages): a missing tool is a failure, not a skip
for _binary, _package in (("sipp", "sip-tester"), ("stunnel4", "stunnel4"), ("baresip", "baresip-core"),
                          ("kamailio", "kamailio")):
    find_binary(_binary, _package)

USER = "447700900001"
BUSINESS = "442071838750"
DOMAIN = "business.example.com"
PASSWORD = "Zm9vYmFyLXNpcC1wYXNz"


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> TestPki:
    return make_test_pki(tmp_path_factory.mktemp("pki"), [DOMAIN])


@pytest.fixture(scope="module")
def kamailio(pki: TestPki, tmp_path_factory: pytest.TempPathFactory):
    assert pki.meta is not None
    with Kamailio(cert=pki.meta.cert, key=pki.meta.key, ca=pki.ca_cert, password=PASSWORD,
                  workdir=tmp_path_factory.mktemp("kamailio")) as kam:
        yield kam


@pytest.fixture
def meta_tunnel(kamailio: Kamailio, pki: TestPki, tmp_path: Path):
    """A stunnel client: plain TCP for SIPp → TLS to kamailio, checking the wa.meta.vc certificate."""
    with Stunnel.client(kamailio.address, ca=pki.ca_cert, workdir=tmp_path / "stunnel") as tunnel:
        yield tunnel


def _header(message: str, name: str) -> list[str]:
    return [line.split(":", 1)[1].strip() for line in message.splitlines()
            if line.lower().startswith(name.lower() + ":")]


def _branch(message: str) -> str:
    m = re.search(r"branch=([^;\s]+)", _header(message, "Via")[0])
    assert m, message
    return m.group(1)


def _digest_params(value: str) -> dict[str, str]:
    return {k: v.strip('"') for k, v in re.findall(r'(\w+)=("[^"]*"|[^,\s]+)', value)}


# -- PKI, stunnel, kamailio -------------------------------------------------------------------------

def test_pki_leaves_cover_their_names(kamailio: Kamailio, pki: TestPki):
    """The wa.meta.vc leaf passes Meta's client checks for wa.meta.vc and 127.0.0.1, not for others."""
    peer = tls_peer_certificate(kamailio.address, "wa.meta.vc", pki.ca_cert)
    sans = {value for _, value in peer["subjectAltName"]}
    assert {"wa.meta.vc", "localhost", "127.0.0.1"} <= sans
    tls_peer_certificate(kamailio.address, "127.0.0.1", pki.ca_cert)
    with pytest.raises(ssl.SSLCertVerificationError):
        tls_peer_certificate(kamailio.address, DOMAIN, pki.ca_cert)
    assert pki.business is not None and DOMAIN in pki.business.hostnames


def test_kamailio_config_checks(kamailio: Kamailio):
    kamailio.check_config()


def test_sipp_bic_digest_through_stunnel_to_kamailio(meta_tunnel: Stunnel, tmp_path: Path):
    result = Sipp("bic_digest", meta_tunnel.address, calls=5, rate=50, keys=bic_keys(USER, BUSINESS, DOMAIN),
                  auth=(BUSINESS, PASSWORD), auth_uri=bic_auth_uri(USER), workdir=tmp_path / "sipp").run()
    result.assert_ok(calls=5)
    # the five calls overlap (50/s), so their messages interleave: each call's own, in its order
    call_ids = list(dict.fromkeys(_header(m, "Call-ID")[0] for m in result.sent()))
    assert len(call_ids) == 5, call_ids
    for call_id in call_ids:
        statuses = [int(m.split()[1]) for m in result.received()
                    if m.startswith("SIP/2.0 ") and _header(m, "Call-ID") == [call_id]]
        assert statuses == [407, 200, 200], (call_id, result.describe())

    sent = [m for m in result.sent() if _header(m, "Call-ID") == [call_ids[0]]]
    invites = [m for m in sent if m.startswith("INVITE ")]
    acks = [m for m in sent if m.startswith("ACK ")]
    byes = [m for m in sent if m.startswith("BYE ")]
    assert len(invites) == 2 and len(acks) == 2 and len(byes) == 1
    first, retry = invites[0], invites[1]
    assert first.split()[1] == f"sip:+{USER}@wa.meta.vc;transport=tls"
    assert _header(first, "From")[0].startswith(f"<sip:+{BUSINESS}@{DOMAIN}>")
    # ACK of the 407 on the INVITE's branch; the retry on a new one, with Meta's digest
    assert _branch(acks[0]) == _branch(first) != _branch(retry)
    assert _header(retry, "CSeq") == ["2 INVITE"]
    digest = _digest_params(_header(retry, "Proxy-Authorization")[0])
    assert digest["uri"] == retry.split()[1], digest          # Meta checks it against the Request-URI
    assert digest["username"] == BUSINESS and digest["realm"] == "wa.meta.vc" and digest["qop"] == "auth"
    # the 200's Record-Routes become the route set of ACK and BYE (SIPp: one comma-joined header)
    route = "<sip:wa.meta.vc;transport=tls;lr>, <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"
    assert _header(acks[1], "Route") == [route] and _header(byes[0], "Route") == [route]
    assert byes[0].split()[1].startswith(f"sip:+{USER}@wa.meta.vc;transport=tls;ob")
    ok = next(m for m in result.received() if m.startswith("SIP/2.0 200") and "INVITE" in _header(m, "CSeq")[0]
              and _header(m, "Call-ID") == [call_ids[0]])
    assert "a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:" in ok
    assert "m=audio" in invites[0] and "RTP/SAVP 111 126" in invites[0]


@pytest.mark.parametrize("case", ["bad_password", "bad_username", "wrong_reason"])
def test_sipp_expect_status_against_kamailio(case: str, meta_tunnel: Stunnel, tmp_path: Path):
    status, reason, auth, should_pass = {
        "bad_password": (407, "Proxy Authentication Required", (BUSINESS, "wrong"), True),
        "bad_username": (403, "Forbidden", ("442071838751", PASSWORD), True),
        # kamailio's 403 reason is "Forbidden": expecting another phrase must fail the call
        "wrong_reason": (403, "No Approved Call Permission Found", ("442071838751", PASSWORD), False),
    }[case]
    scenario = expect_status_scenario(tmp_path, status, reason)
    result = Sipp(scenario, meta_tunnel.address, keys=bic_keys(USER, BUSINESS, DOMAIN), auth=auth,
                  auth_uri=bic_auth_uri(USER), workdir=tmp_path / "sipp").run()
    assert result.statuses() == [407, status], result.describe()
    if should_pass:
        result.assert_ok(calls=1)
        acks = [m for m in result.sent() if m.startswith("ACK ")]
        invites = [m for m in result.sent() if m.startswith("INVITE ")]
        assert [_branch(a) for a in acks] == [_branch(i) for i in invites], result.describe()
    else:
        assert result.failed == 1 and result.successful == 0, result.describe()
        assert "regexp" in result.errors, result.describe()


def test_stunnel_client_checks_the_host_name(kamailio: Kamailio, pki: TestPki, tmp_path: Path):
    """Told to expect the business's name, the client refuses kamailio's wa.meta.vc certificate."""
    with Stunnel.client(kamailio.address, ca=pki.ca_cert, check_host=DOMAIN, workdir=tmp_path / "st") as tunnel:
        result = Sipp("bic_digest", tunnel.address, keys=bic_keys(USER, BUSINESS, DOMAIN), auth=(BUSINESS, PASSWORD),
                      auth_uri=bic_auth_uri(USER), timeout=5, workdir=tmp_path / "sipp").run()
        assert not result.ok and result.statuses() == [], result.describe()
        log = tunnel.logs()
        assert re.search(r"CERT: .*(host|name)", log, re.I) or "Rejected by CERT" in log, log


def test_sipp_bic_cancel_against_a_ringing_meta_stand_in(pki: TestPki, tmp_path: Path):
    assert pki.meta is not None
    meta = Sipp("uas_meta_cancel", timeout=15, workdir=tmp_path / "meta").start()
    try:
        with Stunnel.server(("127.0.0.1", meta.port), cert=pki.meta.cert, key=pki.meta.key,
                            workdir=tmp_path / "sts") as server, \
                Stunnel.client(server.address, ca=pki.ca_cert, workdir=tmp_path / "stc") as client:
            result = Sipp("bic_cancel", client.address, keys=bic_keys(USER, BUSINESS, DOMAIN),
                          auth=(BUSINESS, PASSWORD), auth_uri=bic_auth_uri(USER), pause_ms=100, timeout=15,
                          workdir=tmp_path / "uac").run()
            result.assert_ok(calls=1)
            meta.wait(10).assert_ok(calls=1)
    finally:
        meta.stop()
    assert result.statuses() == [407, 100, 180, 200, 487], result.describe()
    sent = result.sent()
    invite = [m for m in sent if m.startswith("INVITE ")][1]
    cancel = next(m for m in sent if m.startswith("CANCEL "))
    last_ack = [m for m in sent if m.startswith("ACK ")][-1]
    assert _branch(cancel) == _branch(invite) == _branch(last_ack)
    assert _header(cancel, "CSeq") == ["2 CANCEL"] and _header(last_ack, "CSeq") == ["2 ACK"]
    assert cancel.split()[1] == invite.split()[1]


# -- baresip ----------------------------------------------------------------------------------------

def _tone(path: Path) -> tuple[float, float]:
    pcm, rate = read_wav(path)
    body = pcm[rate // 2:]          # skip the jitter-buffer start
    return dominant_frequency(body, rate), rms_dbfs(body)


async def test_baresip_answers_baresip_over_tls_with_sdes(pki: TestPki, tmp_path: Path):
    """A user-side baresip calls the business baresip directly over TLS: SRTP-SDES, Opus, tones both
    ways in the recordings, RFC 4733 digits seen as CALL_DTMF_START events."""
    assert pki.business is not None and pki.meta is not None
    business = Baresip(user=f"+{BUSINESS}", domain=DOMAIN, ca=pki.ca_cert, cert=pki.business.pem, tone_hz=1000,
                       workdir=tmp_path / "business")
    user = Baresip(user=f"+{USER}", domain="wa.meta.vc", ca=pki.ca_cert, cert=pki.meta.pem, tone_hz=440,
                   workdir=tmp_path / "user")
    async with business, user:
        await user.dial(f"sip:+{BUSINESS}@127.0.0.1:{business.tls_port};transport=tls")
        await user.wait_event("CALL_ESTABLISHED", 10)
        incoming = await business.wait_event("CALL_ESTABLISHED", 10)
        assert incoming.raw["direction"] == "incoming"
        menc = await business.wait_event("CALL_MENC", 5)
        assert "AES_CM_128_HMAC_SHA1_80" in menc.param
        await business.wait_event("CALL_RTPESTAB", 5)
        await asyncio.sleep(1.5)

        async def three_digits() -> str:
            digits = ""
            async for event in business.events(start=len(business.history)):
                if event.type == "CALL_DTMF_START":
                    digits += event.param
                    if len(digits) == 3:
                        return digits
            return digits

        listener = asyncio.create_task(three_digits())
        await user.send_dtmf("19#")
        assert await asyncio.wait_for(listener, 5) == "19#"
        assert business.received_digits() == "19#"
        await user.hangup()
        closed = await business.wait_event("CALL_CLOSED", 10)
        assert closed.param == "Connection reset by peer"      # baresip's wording for a received BYE
        await asyncio.sleep(0.3)
        received, sent = business.recordings()["dec"], business.recordings()["enc"]
        assert len(received) == 1 and len(sent) == 1, business.recordings()
        freq, level = _tone(received[0])
        assert abs(freq - 440) < 5 and level > -30, (freq, level, business.logs())
        freq, level = _tone(sent[0])
        assert abs(freq - 1000) < 5 and level > -30, (freq, level)
        freq, _ = _tone(user.recordings()["dec"][0])
        assert abs(freq - 1000) < 5, freq


async def test_baresip_dials_uas_401_through_stunnel(pki: TestPki, tmp_path: Path):
    """Meta's side of a user-initiated call: a TLS client (baresip here, wacall in gateway tests)
    reaches SIPp's business server through a stunnel server, answers its 401 and gets the call."""
    assert pki.business is not None and pki.meta is not None
    tls_port = free_port()
    business = Sipp("uas_401", keys=uas_keys(BUSINESS, PASSWORD, f"sip:+{BUSINESS}@127.0.0.1:{tls_port};transport=tls",
                                             realm=DOMAIN), timeout=20, workdir=tmp_path / "uas").start()
    try:
        with Stunnel.server(("127.0.0.1", business.port), cert=pki.business.cert, key=pki.business.key,
                            accept_port=tls_port, workdir=tmp_path / "sts"):
            meta = Baresip(user=f"+{USER}", domain="wa.meta.vc", ca=pki.ca_cert, cert=pki.meta.pem,
                           auth_user=BUSINESS, auth_pass=PASSWORD,
                           outbound=f"sip:127.0.0.1:{tls_port};transport=tls", workdir=tmp_path / "meta")
            async with meta:
                await meta.dial(f"sip:+{BUSINESS}@{DOMAIN};transport=tls")
                await meta.wait_event("CALL_ESTABLISHED", 10)
                await asyncio.sleep(0.3)
                await meta.hangup()
                await meta.wait_event("CALL_CLOSED", 10)
            result = await business.await_result(15)
    finally:
        business.stop()
    result.assert_ok(calls=1)
    retry = [m for m in result.received() if m.startswith("INVITE ")][1]
    digest = _digest_params(_header(retry, "Authorization")[0])
    assert digest["username"] == BUSINESS and digest["realm"] == DOMAIN
    assert any(m.startswith("BYE ") for m in result.received())


async def test_uas_401_refuses_a_wrong_password(pki: TestPki, tmp_path: Path):
    assert pki.business is not None and pki.meta is not None
    tls_port = free_port()
    business = Sipp("uas_401", keys=uas_keys(BUSINESS, PASSWORD, f"sip:+{BUSINESS}@127.0.0.1:{tls_port};transport=tls",
                                             realm=DOMAIN), timeout=20, workdir=tmp_path / "uas").start()
    try:
        with Stunnel.server(("127.0.0.1", business.port), cert=pki.business.cert, key=pki.business.key,
                            accept_port=tls_port, workdir=tmp_path / "sts"):
            meta = Baresip(user=f"+{USER}", domain="wa.meta.vc", ca=pki.ca_cert, auth_user=BUSINESS,
                           auth_pass="not-the-password", outbound=f"sip:127.0.0.1:{tls_port};transport=tls",
                           workdir=tmp_path / "meta")
            async with meta:
                await meta.dial(f"sip:+{BUSINESS}@{DOMAIN};transport=tls")
                closed = await meta.wait_event("CALL_CLOSED", 10)
                assert "403" in closed.param, closed.raw
            result = await business.await_result(15)
    finally:
        business.stop()
    assert result.failed == 1 and result.successful == 0, result.describe()
    assert "digest verification FAILED" in result.logs


async def test_baresip_business_calls_wa_meta_vc_through_kamailio(kamailio: Kamailio, pki: TestPki, tmp_path: Path):
    """A business-initiated call as the gateway tests will place it: Request-URI on wa.meta.vc,
    resolved by baresip's FakeDns (SRV _sips._tcp.wa.meta.vc) to the gateway, digest answered with
    the business credentials; the BYE follows Meta's Record-Route to wa.meta.vc, i.e. the gateway."""
    assert pki.business is not None
    business = Baresip(user=f"+{BUSINESS}", domain=DOMAIN, ca=pki.ca_cert, cert=pki.business.pem,
                       auth_user=BUSINESS, auth_pass=PASSWORD, tls_hosts={"wa.meta.vc": kamailio.port},
                       workdir=tmp_path / "business")
    async with business:
        await business.dial(f"sip:+{USER}@wa.meta.vc;transport=tls")
        established = await business.wait_event("CALL_ESTABLISHED", 10)
        assert established.raw["direction"] == "outgoing"
        await business.hangup()
        await business.wait_event("CALL_CLOSED", 10)
    trace = Path(business.stdout_log).read_text(errors="replace")
    assert "SIP/2.0 407 Proxy Authentication Required" in trace and "Proxy-Authorization: Digest" in trace
    bye = trace[trace.index("\nBYE "):]
    assert "Route: <sip:wa.meta.vc;transport=tls;lr>" in bye.split("\n\n")[0], trace[-3000:]
    assert "SIP/2.0 200 OK" in bye, trace[-3000:]
    assert ("_sips._tcp.wa.meta.vc", "SRV") in business.dns.queries, business.dns.queries


async def test_baresip_does_not_verify_the_server_certificate(tmp_path: Path):
    """Documents a baresip 1.0 limit: it completes TLS with a server whose certificate comes from a CA
    it does not trust. Checking wacall's certificate takes tls_peer_certificate or the stunnel client."""
    trusted = make_test_pki(tmp_path / "trusted", [DOMAIN])
    stranger = make_test_pki(tmp_path / "stranger", [DOMAIN])
    assert stranger.business is not None and trusted.business is not None
    callee = Baresip(user=f"+{BUSINESS}", domain=DOMAIN, ca=stranger.ca_cert, cert=stranger.business.pem,
                     workdir=tmp_path / "callee", record=False)
    caller = Baresip(user=f"+{USER}", domain="wa.meta.vc", ca=trusted.ca_cert, workdir=tmp_path / "caller",
                     record=False)
    async with callee, caller:
        with pytest.raises(ssl.SSLCertVerificationError):
            tls_peer_certificate(("127.0.0.1", callee.tls_port), DOMAIN, trusted.ca_cert)
        await caller.dial(f"sip:+{BUSINESS}@127.0.0.1:{callee.tls_port};transport=tls")
        await caller.wait_event("CALL_ESTABLISHED", 10)
        await caller.hangup()


# -- bench/sip_flows.py -----------------------------------------------------------------------------

def test_sip_flows_bench_runs_against_kamailio(kamailio: Kamailio, tmp_path: Path):
    import sys
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "bench"))
    import sip_flows

    target = sip_flows.KamailioTarget(kamailio, sip_flows.user_ids(2), password=PASSWORD)
    lines: list[str] = []
    result = sip_flows.ramp(target, tmp_path, [50], 1.0, 1, 0, False, lines.append)
    best = result.best()
    assert best is not None and best.successful == 50 and best.target_cpu > 0, lines
    summary = sip_flows.report([result], lines.append)
    assert summary["kamailio"]["cps"] > 25 and summary["kamailio"]["users"] == 2, lines
