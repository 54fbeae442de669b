"""The SIP gateway against Debian's SIPp over TLS (stunnel4 carries TLS for SIPp, which has none):
business-initiated calls with Meta's 407 digest challenge, and every documented refusal with its
exact status and reason text (calling-wire-spec §7.2, §8.2)."""

from __future__ import annotations

import re
import threading
import time
from pathlib import Path

import pytest

from support.sip_tools import (free_port, Sipp, Stunnel, bic_auth_uri, bic_keys, expect_status_scenario, header_values,
                               render_scenario, scenario_path)

ALICE, BRUNO, DAVE = "447700900001", "5511987650002", "14155550004"
HOST = "pbx.business.example"


@pytest.fixture
def sip(wa, tmp_path):
    """The default number switched to SIP (SDES) with the business server pbx.business.example, a
    stunnel client in front of SIPp that verifies wa.meta.vc's certificate, and the SIP password."""
    info = wa.info["sip"]
    assert info and info["domain"] == "wa.meta.vc"
    response = wa.graph("POST", f"{wa.pnid}/settings", json={"calling": {
        "status": "ENABLED", "srtp_key_exchange_protocol": "SDES",
        "sip": {"status": "ENABLED", "servers": [{"hostname": HOST, "port": free_port()}]}}})
    assert response.status_code == 200, response.text
    settings = wa.graph("GET", f"{wa.pnid}/settings", params={"include_sip_credentials": "true"}).json()
    password = settings["calling"]["sip"]["servers"][0]["sip_user_password"]
    for wa_id in (ALICE, DAVE):
        assert wa.ctl("POST", f"users/{wa_id}/permission_replies", {
            "phone_number_id": wa.pnid, "response": "accept", "via": "business_profile"}).status_code == 200
    assert wa.ctl("PATCH", f"users/{ALICE}", {"answer_after": 0.2}).status_code == 200
    assert wa.ctl("PATCH", f"users/{DAVE}", {"answer_after": 0.2}).status_code == 200
    tunnel = Stunnel.client(("127.0.0.1", info["port"]), ca=Path(info["ca_file"]), check_host="wa.meta.vc",
                            workdir=tmp_path / "stunnel").start()
    yield Sip(wa, tunnel, password, tmp_path)
    tunnel.stop()


class Sip:
    def __init__(self, wa, tunnel: Stunnel, password: str, tmp: Path) -> None:
        self.wa, self.tunnel, self.password, self.tmp = wa, tunnel, password, tmp
        self.business = wa.info["display_phone_number"]
        self.runs = 0

    def sipp(self, scenario, *, user: str = ALICE, business: str | None = None, from_domain: str = HOST,
             password: str | None = None, hold_ms: int = 1000, calls: int = 1, **kwargs) -> Sipp:
        self.runs += 1
        business = business or self.business
        return Sipp(scenario, self.tunnel.address, calls=calls,
                    keys=bic_keys(user, business, from_domain), auth=(business, password or self.password),
                    auth_uri=bic_auth_uri(user), pause_ms=hold_ms, workdir=self.tmp / f"sipp{self.runs}", **kwargs)

    def expect(self, status: int, reason: str, **kwargs):
        scenario = expect_status_scenario(self.tmp, status, reason)
        result = self.sipp(scenario, **kwargs).run(timeout=60)
        result.assert_ok(1)
        final = [t for t in result.received() if t.startswith(f"SIP/2.0 {status} ")]
        assert final and _first_line(final[-1]) == f"SIP/2.0 {status} {reason}", result.describe()
        return final[-1]


def _first_line(message: str) -> str:
    return message.splitlines()[0].strip()


def _sip_calls(wa) -> list[dict]:
    return [wa.call(c["call_id"]) for c in wa.ctl("GET", "calls").json()["data"]]


def test_business_call_with_digest_is_established_and_ended_with_bye(sip, receiver):
    result = sip.sipp("bic_digest.xml", hold_ms=1500).run(timeout=60)
    result.assert_ok(1)
    assert result.statuses()[:1] == [407] and 180 in result.statuses() and 200 in result.statuses()
    challenge = next(t for t in result.received() if t.startswith("SIP/2.0 407 "))
    assert challenge.startswith("SIP/2.0 407 Proxy Authentication Required")
    assert re.fullmatch(r'Digest realm="wa\.meta\.vc",nonce="[0-9a-f]{16}",opaque="[0-9a-f]{16}",'
                        r'algorithm=MD5,qop="auth"', header_values(challenge, "Proxy-Authenticate")[0])
    ok = next(t for t in result.received() if t.startswith("SIP/2.0 200 ") and "INVITE" in header_values(t, "CSeq")[0])
    assert header_values(ok, "Record-Route") == ["<sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>",
                                           "<sip:wa.meta.vc;transport=tls;lr>"]
    assert header_values(ok, "X-FB-External-Domain") == ["wa.meta.vc"]
    assert header_values(ok, "Allow") == ["INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS"]
    assert header_values(ok, "Contact")[0].startswith(f"<sip:+{ALICE}@wa.meta.vc;transport=tls;ob;")
    body = re.split(r"\r?\n\r?\n", ok, maxsplit=1)[1]
    assert "m=audio" in body and "RTP/SAVP 111 126" in body and "a=crypto:1 AES_CM_128_HMAC_SHA1_80" in body
    assert "a=ice-lite" not in body, "SDES: no ICE"

    [call] = _sip_calls(sip.wa)
    assert call["direction"] == "BUSINESS_INITIATED" and call["signalling"] == "sip"
    assert call["state"] == "ENDED" and call["ended_by"] == "business" and call["duration"] >= 1
    assert call["pulses"] >= 1, "SIP calls are priced like Graph calls"
    lines = [e["line"] for e in call["timeline"] if e["kind"] == "sip_message"]
    assert lines[0].startswith("INVITE sip:+447700900001@wa.meta.vc;transport=tls")
    assert any(line == "SIP/2.0 180 Ringing" for line in lines)
    assert any(line.startswith("ACK ") for line in lines) and any(line.startswith("BYE ") for line in lines)
    assert any(e["kind"] == "webhook_suppressed" for e in call["timeline"])
    time.sleep(0.5)
    assert not [d for d in receiver.deliveries if d.field == "calls"], "no calling webhooks for SIP numbers"


def test_user_hangs_up_a_business_call_gateway_sends_bye_with_duration(sip):
    """The user ends an established business-initiated call: Meta's BYE carries Reason, the wacid and
    x-wa-meta-call-duration; SIPp (as the business) answers it 200."""
    scenario = scenario_path("bic_digest_remote_bye.xml")
    sipp = sip.sipp(scenario).start()
    call_id = sip.wa.wait_for(lambda: next((c["call_id"] for c in sip.wa.ctl("GET", "calls").json()["data"]
                                            if sip.wa.call(c["call_id"])["state"] == "ACCEPTED"), None),
                              what="the call to be answered")
    time.sleep(1.2)
    assert sip.wa.ctl("POST", f"calls/{call_id}/hangup").status_code == 200
    result = sipp.wait(timeout=30)
    result.assert_ok(1)
    bye = next(t for t in result.received() if t.startswith("BYE "))
    assert header_values(bye, "x-wa-meta-wacid") == [call_id]
    assert int(header_values(bye, "x-wa-meta-call-duration")[0]) >= 1
    assert int(header_values(bye, "x-wa-meta-call-duration")[0]) == sip.wa.call(call_id)["duration"]   # Call.duration
    assert header_values(bye, "Reason") == ['Q.850;cause=16;text="NORMAL_CLEARING"']
    ok = next(t for t in result.received() if t.startswith("SIP/2.0 200 "))
    meta_tag = re.search(r";tag=([^;>\s]+)", header_values(ok, "To")[0]).group(1)
    assert (header_values(bye, "From")[0].endswith(f";tag={meta_tag}")
            and header_values(bye, "From")[0].count("tag=") == 1)
    assert header_values(bye, "To")[0].count("tag=") == 1, "the business's tag, once"
    assert sip.wa.call(call_id)["ended_by"] == "user"


NEGATIVE = {
    "unknown business number": dict(status=400, reason="Asset not found, invalid business phone number",
                                    business="15550000000"),
    "From domain not configured": dict(status=403, reason=(
        "SIP server other.example from INVITE does not match any SIP server configured for phone number id "
        "{pnid}"), from_domain="other.example"),
    "no call permission": dict(status=403, reason=(
        "No Approved Call Permission Found: No approved call permission from the recipient"), user=BRUNO),
    "bad digest password": dict(status=403, reason="Invalid digest response", password="wrong"),
}


@pytest.mark.parametrize("case", list(NEGATIVE))
def test_refusals_have_metas_status_and_reason(sip, case):
    spec = dict(NEGATIVE[case])
    status, reason = spec.pop("status"), spec.pop("reason").format(pnid=sip.wa.pnid)
    final = sip.expect(status, reason, **spec)
    assert header_values(final, "X-FB-External-Domain") == ["wa.meta.vc"]
    if case == "From domain not configured":
        assert header_values(final, "Warning") == [f'399 wa.meta.vc "{reason}"']
    assert sip.wa.ctl("GET", "calls").json()["data"] == [], "a refused INVITE creates no call"


def test_a_sub_domain_of_the_from_domain_matches_the_configured_server(sip):
    """Configured pbx.business.example; From: …@business.example is accepted (Meta's rule)."""
    result = sip.sipp("bic_digest.xml", from_domain="business.example", hold_ms=200).run(timeout=60)
    result.assert_ok(1)


def test_app_not_authorized_for_the_number(sip):
    app_id = sip.wa.info["app_id"]
    assert sip.wa.ctl("PATCH", f"apps/{app_id}", {"permissions": ["whatsapp_business_management"]}).status_code == 200
    sip.expect(403, f"The app {app_id} configured for SIP server {HOST} is not authorized for phone number id "
                    f"{sip.wa.pnid}")


def test_daily_connected_call_limit(sip):
    assert sip.wa.ctl("PATCH", "limits", {"bic_connected_per_24h": 1}).status_code == 200
    sip.sipp("bic_digest.xml", hold_ms=200).run(timeout=60).assert_ok(1)
    sip.expect(403, "Business Initiated Connected Call Per Day Limit Hit")


def test_duplicate_call(sip):
    first = sip.sipp("bic_digest.xml", hold_ms=4000).start()
    sip.wa.wait_for(lambda: any(sip.wa.call(c["call_id"])["state"] == "ACCEPTED"
                                for c in sip.wa.ctl("GET", "calls").json()["data"]), what="first call up")
    sip.expect(403, "Duplicate call: a call between this business number and the recipient is already in progress")
    first.wait(timeout=30).assert_ok(1)


def test_user_declines_480_when_unanswered_and_503_over_capacity(sip):
    assert sip.wa.ctl("PATCH", f"users/{DAVE}", {"incoming": "reject"}).status_code == 200
    sip.expect(486, "User declined the call", user=DAVE)
    assert sip.wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "ignore"}).status_code == 200
    done = {}
    runner = threading.Thread(target=lambda: done.setdefault("final", sip.expect(480, "Temporarily Unavailable")))
    runner.start()
    sip.wa.wait_for(lambda: any(sip.wa.call(c["call_id"])["state"] == "RINGING"
                                for c in sip.wa.ctl("GET", "calls").json()["data"]), what="ringing")
    sip.wa.advance(61)                        # the ring timeout, on the virtual clock
    runner.join(60)
    assert "final" in done
    assert sip.wa.ctl("PATCH", "limits", {"concurrent_calls": 0}).status_code == 200
    sip.expect(503, "Service Unavailable")


def test_cancel_before_answer_gets_487(sip):
    assert sip.wa.ctl("PATCH", f"users/{ALICE}", {"incoming": "manual"}).status_code == 200
    result = sip.sipp("bic_cancel.xml").run(timeout=60)
    result.assert_ok(1)
    assert "SIP/2.0 487 Request Terminated" in [_first_line(t) for t in result.received()]
    [call] = _sip_calls(sip.wa)
    assert call["state"] == "ENDED" and call["ended_by"] == "business"


def test_ip_address_in_the_request_uri_gets_404(sip):
    text = scenario_path("bic_expect_status.xml").read_text().replace(
        "INVITE sip:+[user]@wa.meta.vc;transport=tls", "INVITE sip:+[user]@127.0.0.1;transport=tls")
    template = sip.tmp / "bic_ip_template.xml"
    template.write_text(text)
    scenario = render_scenario(str(template), sip.tmp, STATUS=404, REASON_RE="Not found")
    result = sip.sipp(scenario).run(timeout=60)
    result.assert_ok(1)
    assert [_first_line(t) for t in result.received()][-1] == "SIP/2.0 404 Not found"


def test_options_register_and_reinvite(sip):
    result = sip.sipp("options_register.xml").run(timeout=60)
    result.assert_ok(1)
    lines = [_first_line(t) for t in result.received()]
    assert "SIP/2.0 200 OK" in lines and "SIP/2.0 403 Forbidden" in lines
    reinvite = sip.sipp("bic_reinvite.xml").run(timeout=60)
    reinvite.assert_ok(1)
    assert "SIP/2.0 500 Internal Server Error" in [_first_line(t) for t in reinvite.received()]


@pytest.mark.parametrize("calling, says, not_says", [
    ({}, ["does not support ICE", "set srtp_key_exchange_protocol to SDES"], ["already uses SDES"]),
    ({"srtp_key_exchange_protocol": "SDES"},
     ["already uses SDES", "(Opus, telephone-event)", "additional_codecs (PCMU, PCMA)"], ["ICE support", "set srtp"]),
    ({"srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMA"]}},
     ["(Opus, PCMA, telephone-event)", "additional_codecs (PCMU)"], ["set srtp"]),
    ({"srtp_key_exchange_protocol": "SDES", "audio": {"additional_codecs": ["PCMU", "PCMA"]}},
     ["(Opus, PCMU, PCMA, telephone-event)", "AES_CM_128_HMAC_SHA1_80"], ["additional_codecs", "set srtp"]),
])
def test_the_488_hint_fits_the_numbers_settings(calling, says, not_says):
    """Meta's FAQ: 488 likely means no ICE, so switch to SDES; that advice is wrong for an SDES number."""
    from wacall.domain.sip import not_acceptable_hint
    hint = not_acceptable_hint(calling)
    assert all(s in hint for s in says) and not any(s in hint for s in not_says), hint


def test_dialog_state_survives_a_round_trip_through_the_call_record():
    """What Call.sip keeps is plain JSON and rebuilds the same dialog (RFC 3261 §12 dialog state)."""
    from wacall import codec
    from wacall.domain.model import BUSINESS_INITIATED, Call
    from wacall.sip.gateway import Dialog
    call = Call(id="wacid.X", phone_number_id="1", wa_id=ALICE, direction=BUSINESS_INITIATED, signalling="sip")
    dialog = Dialog(call_id=call.id, direction=BUSINESS_INITIATED, sip_call_id="abc@pbx", local_tag="meta",
                    remote_tag="biz", local_uri="<sip:+447700900001@wa.meta.vc>", remote_uri="<sip:+1555@pbx>",
                    remote_target="sip:+1555@127.0.0.1:5071;transport=tls", route_set=["<sip:pbx;lr>"],
                    local_cseq=7, remote_cseq=2, final_status=200, confirmed=True,
                    server={"hostname": "pbx", "port": 5061}, peer=("127.0.0.1", 40000))
    state = codec.loads(codec.dumps(dialog.state()))
    assert state["uac"] == "business" and state["call_id"] == "abc@pbx"
    again = Dialog.from_state(call, state)
    for name in ("sip_call_id", "local_tag", "remote_tag", "local_uri", "remote_uri", "remote_target", "route_set",
                 "local_cseq", "remote_cseq", "final_status", "confirmed", "server", "peer", "direction"):
        assert getattr(again, name) == getattr(dialog, name), name
    assert again.conn is None and again.server_txn is None


@pytest.mark.parametrize("state", [{"final_status": 200}, {"final_status": 200, "call_id": "a", "local_tag": "t",
                                                           "local_cseq": "many"}])
def test_a_dialog_state_wacall_did_not_write_is_refused_not_crashed_on(state):
    """restore() treats such a record as a call it cannot go on with (it ends) instead of failing to start."""
    from wacall.domain.model import USER_INITIATED, Call
    from wacall.sip.gateway import Dialog
    call = Call(id="wacid.X", phone_number_id="1", wa_id=ALICE, direction=USER_INITIATED, signalling="sip")
    with pytest.raises((KeyError, TypeError, ValueError, IndexError)):
        Dialog.from_state(call, state)


@pytest.mark.parametrize("value", [
    "<sip:+442071838750@pbx.business.example>;tag=123SIPpTag001", "<sip:+447700900001@wa.meta.vc>",
    '"Biz Line" <sip:+1555@pbx;transport=tls>;x=1;tag=abc', "sip:+1555@pbx;tag=abc", "<sip:a@b>;tag=a;tag=b",
    "<sip:a@b>;TAG=x", "<sip:a@b>;tag", "<sip:a@b> ; tag = x ", "<sip:a@b>;tag=x;foo", "not an address <",
])
def test_a_from_or_to_without_its_tag_is_rendered_as_the_general_way_does(value):
    """_without_tag remembers the rendering of the text before a final ;tag=: on the first call and on the
    next (from the memo, with another tag too) it is what rendering the parsed address without "tag" gives."""
    from wacall.sip.gateway import _without_tag
    from wacall.sip.uri import NameAddr, SipParseError, parse_name_addr

    def general(text: str) -> str:
        try:
            addr = parse_name_addr(text)
        except SipParseError:
            return text
        return str(NameAddr(addr.display, addr.uri, {k: v for k, v in addr.params.items() if k != "tag"}))

    other = value.replace("tag=abc", "tag=zyx").replace("Tag001", "Tag002")
    for text in (value, value, other, other):
        assert _without_tag(text) == general(text), text


@pytest.mark.parametrize("first, then", [
    ("<sip:a@b>", "<sip:a@b>;tag=x"), ("<sip:a@b> ", "<sip:a@b> ;tag=x"), ("<sip:a@b>;tag=1", "<sip:a@b>;tag=x>"),
    ("<sip:a@b>;tag=1", "<sip:a@b>;tag=x;y=2"), ("<sip:a@b>;tag=1", "<sip:a@b>;tag= x"), ("<sip:a@b>", "<sip:a@b>;TAG=x"),
    ("<sip:a@b>;tag=1", "<sip:a@b>;tag=1;tag=2"), ("<sip:a;tag=1@b>", "<sip:a;tag=2@b>"), ("sip:a@b;x=1", "sip:a@b;x=1;tag=t"),
    ('"A" <sip:a@b>;p;tag=1', '"A" <sip:a@b>;p;tag=x.y-z!%*_+`\'~'), ("<sip:a@b>;tag=1", "<sip:a@b>;tag="),
])
def test_a_from_or_to_found_in_the_memo_is_what_parsing_it_gives(first, then):
    """_without_tag's memo look-up without parsing (a remembered head, then a final ;tag=<token>, or no tag at all)
    gives what the parsed way (_without_tag_parsed, which fills the memo) gives, whatever was remembered before."""
    from wacall.sip.gateway import _tagless, _without_tag, _without_tag_parsed

    _tagless.clear()
    assert _without_tag(first) == _without_tag_parsed(first)
    expected = _without_tag_parsed(then)
    _tagless.clear()
    _without_tag(first)                      # the memo holds what the first text taught it
    assert _without_tag(then) == expected, (first, then)
