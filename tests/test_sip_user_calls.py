"""User-initiated calls to a SIP-enabled number: wacall (as Meta) sends the INVITE to the business's
SIP server over TLS, verifying its certificate against the configured hostname. The server is Debian's
SIPp behind a stunnel4 TLS front (SIPp has no TLS), challenging with 401 as a real PBX would."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

from support.harness import PKI_DIR, Wacall
from support.sip_tools import Sipp, Stunnel, header_values, scenario_path, uas_keys
from wacall.certs import LocalCA

ALICE = "447700900001"
HOST = "pbx.business.example"
USER_PARAMS = {"tgrp": "wacall", "trunk-context": "byoc.example.com"}


class BusinessServer:
    """SIPp as the business's SIP server at pbx.business.example (a certificate from wacall's CA)."""

    def __init__(self, wa, tmp: Path, scenario: str | Path = "uas_401.xml", password: str | None = None) -> None:
        cert, key = LocalCA.load_or_create(PKI_DIR).issue([HOST], out="pbx-business")
        self.wa = wa
        self.sipp = Sipp(scenario, None, keys={}, workdir=tmp / "sipp-uas", timeout=40)
        self.tunnel = Stunnel.server(("127.0.0.1", self.sipp.port), cert=Path(cert), key=Path(key),
                                     workdir=tmp / "stunnel-uas")
        self.password = password

    def configure(self) -> str:
        response = self.wa.graph("POST", f"{self.wa.pnid}/settings", json={"calling": {
            "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
            "sip": {"status": "ENABLED", "servers": [{"hostname": HOST, "port": self.tunnel.accept_port,
                                                      "request_uri_user_params": USER_PARAMS}]}}})
        assert response.status_code == 200, response.text
        settings = self.wa.graph("GET", f"{self.wa.pnid}/settings", params={"include_sip_credentials": "true"})
        return settings.json()["calling"]["sip"]["servers"][0]["sip_user_password"]

    def start(self) -> "BusinessServer":
        password = self.configure()
        business = self.wa.info["display_phone_number"]
        self.sipp.keys = uas_keys(business, self.password or password,
                                  f"sip:+{business}@{HOST}:{self.tunnel.accept_port};transport=tls")
        self.sipp.start()
        self.tunnel.start()
        return self

    def stop(self) -> None:
        self.tunnel.stop()
        self.sipp.stop()


@pytest.fixture
def business(wa, tmp_path):
    server = BusinessServer(wa, tmp_path).start()
    yield server
    server.stop()


def test_user_call_rings_the_business_server_which_challenges_answers_and_gets_bye(wa, business):
    call_id = wa.user_calls(ALICE, entry_point="call_button", payload="order-1234").json()["call_id"]
    call = wa.wait_state(call_id, "ACCEPTED", timeout=15)
    time.sleep(1.1)
    assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    result = business.sipp.wait(timeout=30)
    result.assert_ok(1)

    first, retry = [t for t in result.received() if t.startswith("INVITE ")][:2]
    biz = wa.info["display_phone_number"]
    port = business.tunnel.accept_port
    assert first.splitlines()[0] == (f"INVITE sip:+{biz};tgrp=wacall;trunk-context=byoc.example.com@{HOST}:{port}"
                                     f";transport=tls SIP/2.0")
    assert call_id.startswith("wacid.")
    assert header_values(first, "Call-ID") == [f"outgoing:{call_id}"], "outgoing:wacid.<id>, as in Meta's captures"
    assert header_values(first, "x-wa-meta-wacid") == [call_id]
    assert header_values(first, "x-wa-meta-cta-payload") == ["order-1234"]
    assert header_values(first, "Record-Route") == ["<sip:wa.meta.vc;transport=tls;lr>",
                                              "<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>"]
    assert header_values(first, "From")[0].startswith(f'"{ALICE}" <sip:+{ALICE}@wa.meta.vc>;tag=')
    assert header_values(first, "X-FB-External-Domain") == ["wa.meta.vc"]
    assert header_values(first, "User-Agent") == ["Facebook SipGateway"]
    assert "RTP/SAVP" in first and "a=crypto:" in first, "Meta's SDES offer"
    auth = header_values(retry, "Authorization")[0]
    assert f'username="{biz}"' in auth and 'realm="business.example.com"' in auth
    assert f'uri="sip:+{biz}@{HOST}"' in auth
    bye = next(t for t in result.received() if t.startswith("BYE "))
    assert int(header_values(bye, "x-wa-meta-call-duration")[0]) >= 1
    assert header_values(bye, "x-wa-meta-wacid") == [call_id]

    call = wa.call(call_id)
    assert call["state"] == "ENDED" and call["ended_by"] == "user" and call["signalling"] == "sip"
    ladder = [e["line"] for e in call["timeline"] if e["kind"] == "sip_message"]
    assert ladder[0].startswith("INVITE sip:+") and ladder[1] == "SIP/2.0 401 Unauthorized", ladder
    assert ladder[2].startswith("INVITE sip:+") and "SIP/2.0 200 OK" in ladder and ladder[-1] == "SIP/2.0 200 OK"
    assert any(line.startswith("ACK ") for line in ladder) and any(line.startswith("BYE ") for line in ladder)


def test_wrong_password_is_refused_by_the_business_server(wa, tmp_path):
    """SIPp verifies wacall's digest: with a wrong password configured on the business side the
    server answers 403, wacall ACKs it and the call ends as declined."""
    server = BusinessServer(wa, tmp_path, password="not-the-password").start()
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        call = wa.wait_state(call_id, "ENDED", timeout=15)
        assert any(e.get("line", "").startswith("SIP/2.0 403") for e in call["timeline"])
        assert call["ended_by"] == "business"
    finally:
        server.stop()


@pytest.fixture(scope="module")
def fast_t1():
    """A wacall with T1 = 50 ms, so 64*T1 (the dialog's patience for an ACK) is 3.2 s."""
    server = Wacall(extra=["--sip-t1", "0.05"]).start()
    yield server
    server.close()


def test_breaking_metas_record_route_rule_kills_the_dialog(fast_t1, tmp_path):
    wa = fast_t1
    wa.reset()
    text = scenario_path("uas_401.xml").read_text()
    head, sep, rest = text.partition("SIP/2.0 200 OK")
    broken = tmp_path / "uas_no_record_route.xml"
    broken.write_text(head + sep + rest.replace("[last_Record-Route:]\n", "", 1))
    server = BusinessServer(wa, tmp_path, scenario=broken).start()
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        call = wa.wait_state(call_id, "ENDED", timeout=20)
        events = [e for e in call["timeline"] if e["kind"] == "sip"]
        assert any(e.get("event") == "record_route_rule_broken" for e in events)
        assert call["end_status"] == "FAILED" and "64*T1" in call["errors"][0]["error_data"]["details"]
        assert not any(e.get("line", "").startswith("ACK ") and e.get("direction") == "out"
                       for e in call["timeline"] if e["kind"] == "sip_message"), "no ACK can reach the business"
    finally:
        server.stop()


def test_user_hangs_up_while_the_business_rings_meta_sends_cancel(wa, tmp_path):
    server = BusinessServer(wa, tmp_path, scenario="uas_ring_cancel.xml").start()
    try:
        call_id = wa.user_calls(ALICE).json()["call_id"]
        wa.wait_for(lambda: any(e.get("line") == "SIP/2.0 180 Ringing" for e in wa.call(call_id)["timeline"]),
                    what="the business server ringing")
        assert wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
        result = server.sipp.wait(timeout=20)
        result.assert_ok(1)
        cancel = next(t for t in result.received() if t.startswith("CANCEL "))
        invite = next(t for t in result.received() if t.startswith("INVITE "))
        assert cancel.splitlines()[0].split()[1] == invite.splitlines()[0].split()[1], "same Request-URI"
        assert header_values(cancel, "CSeq")[0].split()[0] == header_values(invite, "CSeq")[0].split()[0]
        ladder = [e["line"] for e in wa.call(call_id)["timeline"] if e["kind"] == "sip_message"]
        assert any(line.startswith("CANCEL ") for line in ladder)
        assert "SIP/2.0 487 Request Terminated" in ladder
        assert wa.call(call_id)["ended_by"] == "user"
    finally:
        server.stop()
