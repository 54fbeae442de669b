"""SIP message layer: URIs, name-addr, Via, headers, parse/serialise, framing, response building.

Samples are Meta's wire samples from calling-wire-spec.md section 8.2-8.3, completed where the
spec elides (``…``) with plausible values.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wacall.sip.message import (
    PING,
    REASONS,
    Headers,
    Request,
    Response,
    SipParseError,
    StreamFramer,
    Via,
    new_branch,
    new_call_id,
    new_tag,
    parse_message,
    parse_via,
    response_to,
)
from wacall.sip.uri import NameAddr, SipUri, parse_name_addr, parse_uri

SDP = (
    b"v=0\r\n"
    b"o=- 1 1 IN IP4 137.184.87.1\r\n"
    b"s=-\r\n"
    b"c=IN IP4 137.184.87.1\r\n"
    b"t=0 0\r\n"
    b"m=audio 9 UDP/TLS/RTP/SAVPF 111 126\r\n"
)


def crlf(text: str, body: bytes = b"") -> bytes:
    """Message text written with \\n line ends -> wire bytes with CRLF, plus body."""
    return text.replace("\n", "\r\n").encode() + body


# calling-wire-spec 8.2: business-initiated INVITE (you to Meta)
BIC_INVITE = crlf(
    "INVITE sip:+12195550714@wa.meta.vc;transport=tls SIP/2.0\n"
    "Via: SIP/2.0/TLS 137.184.87.1:35181;rport=56533;received=137.184.87.1;branch=z9hG4bKQNa6meey5Dj2g\n"
    "Max-Forwards: 69\n"
    "From: <sip:+17125550259@meta-voip.example.com>;tag=Kc9QZg4496maQ\n"
    "To: <sip:+12195550714@wa.meta.vc>\n"
    "Call-ID: dc2c5b33-1b81-43ee-9213-afb56f4e56ba\n"
    "CSeq: 96743476 INVITE\n"
    "Contact: <sip:mod_sofia@137.184.87.1:35181;transport=tls;swrad=137.184.87.1~56533~3>\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n"
    "\n",
    SDP,
)

# 8.2: Meta's 407 (Via/From/Call-ID/CSeq completed from the INVITE it answers)
META_407 = crlf(
    "SIP/2.0 407 Proxy Authentication Required\n"
    "Via: SIP/2.0/TLS 137.184.87.1:35181;rport=56533;received=137.184.87.1;branch=z9hG4bKQNa6meey5Dj2g\n"
    "From: <sip:+17125550259@meta-voip.example.com>;tag=Kc9QZg4496maQ\n"
    "To: <sip:+12195550714@wa.meta.vc>;tag=z9hG4bK0da2.36614b8977461b486ceabc004c723476.0\n"
    "Call-ID: dc2c5b33-1b81-43ee-9213-afb56f4e56ba\n"
    "CSeq: 96743476 INVITE\n"
    'Proxy-Authenticate: Digest realm="wa.meta.vc",nonce="419ac2415577f8e1",opaque="440badfc05072367",'
    'algorithm=MD5,qop="auth"\n'
    "Content-Length: 0\n"
    "\n"
)

# 8.2: Meta's 200 OK to a BIC INVITE
META_200 = crlf(
    "SIP/2.0 200 OK\n"
    "Via: SIP/2.0/TLS 137.184.87.1:35181;rport=56533;received=137.184.87.1;branch=z9hG4bKQNa6meey5Dj2h\n"
    "Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>\n"
    "Record-Route: <sip:wa.meta.vc;transport=tls;lr>\n"
    "From: <sip:+17125550259@meta-voip.example.com>;tag=Kc9QZg4496maQ\n"
    "To: <sip:+12195550714@wa.meta.vc>;tag=0d185053-2615-46c7-8ff2-250bda494cf1\n"
    "Call-ID: dc2c5b33-1b81-43ee-9213-afb56f4e56ba\n"
    "CSeq: 96743477 INVITE\n"
    "Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS\n"
    "Supported: timer\n"
    "X-FB-External-Domain: wa.meta.vc\n"
    "Contact: <sip:+12195550714@wa.meta.vc;transport=tls;ob;X-FB-Sip-Smc-Tier=collaboration.sip_gateway.sip.prod>"
    ";isfocus\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n"
    "\n",
    SDP,
)

# 8.3: user-initiated INVITE (Meta to you); the elided IPv6 address and branch are filled in
UIC_INVITE = crlf(
    "INVITE sip:+17015558857@meta-voip.example.com;transport=tls SIP/2.0\n"
    "Via: SIP/2.0/TLS [2803:6080:e000:1::5]:33819;rport=33819;received=2803:6080:e000:1::5;"
    "branch=z9hG4bKPj5f3c9a;alias\n"
    "Record-Route: <sip:wa.meta.vc;transport=tls;lr>\n"
    "Record-Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>\n"
    "Max-Forwards: 70\n"
    'From: "12195550714" <sip:+12195550714@wa.meta.vc>;tag=bbf1ad6e-79bb-4d9c-8a2c-094168a10bea\n'
    "To: <sip:+17015558857@meta-voip.example.com>\n"
    "Contact: <sip:+12195550714@wa.meta.vc;transport=tls;ob>;isfocus\n"
    "Call-ID: outgoing:wacid.HBgLMTIxOTU1NTA3MTQVAgASGCAzODg1NTE5NEU1NTBEMTc1RTFFQUY5NjNCQ0FCRkEzRhwYCzE3MDE1N"
    "TU4ODU3FQIAAA==\n"
    "CSeq: 2824 INVITE\n"
    "X-FB-External-Domain: wa.meta.vc\n"
    "Allow: INVITE, ACK, BYE, CANCEL, NOTIFY, OPTIONS\n"
    "User-Agent: Facebook SipGateway\n"
    "x-wa-meta-wacid: wacid.HBgLMTIxOTU1NTA3MTQVAgASGCAz\n"
    "Content-Type: application/sdp\n"
    f"Content-Length: {len(SDP)}\n"
    "\n",
    SDP,
)

# 8.2: the business's BYE toward Meta
BYE = crlf(
    "BYE sip:+12195550714@wa.meta.vc;transport=tls;ob SIP/2.0\n"
    "Via: SIP/2.0/TLS 137.184.87.1:35181;branch=z9hG4bKbye1\n"
    "Route: <sip:wa.meta.vc;transport=tls;lr>\n"
    "Route: <sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr>\n"
    "Max-Forwards: 70\n"
    "From: <sip:+17125550259@meta-voip.example.com>;tag=Kc9QZg4496maQ\n"
    "To: <sip:+12195550714@wa.meta.vc>;tag=0d185053-2615-46c7-8ff2-250bda494cf1\n"
    "Call-ID: dc2c5b33-1b81-43ee-9213-afb56f4e56ba\n"
    "CSeq: 96743478 BYE\n"
    'Reason: Q.850;cause=16;text="NORMAL_CLEARING"\n'
    "Content-Length: 0\n"
    "\n"
)

MINIMAL = crlf(
    "OPTIONS sip:wa.meta.vc SIP/2.0\n"
    "Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKopt1\n"
    "From: <sip:ping@example.com>;tag=1\n"
    "To: <sip:wa.meta.vc>\n"
    "Call-ID: opt1@example.com\n"
    "CSeq: 1 OPTIONS\n"
    "Max-Forwards: 70\n"
    "Content-Length: 0\n"
    "\n"
)


# --- URIs --------------------------------------------------------------------------------------


class TestUri:
    def test_meta_request_uri(self) -> None:
        uri = parse_uri("sip:+12195550714@wa.meta.vc;transport=tls")
        assert (uri.scheme, uri.user, uri.host, uri.port) == ("sip", "+12195550714", "wa.meta.vc", None)
        assert uri.params == {"transport": "tls"}
        assert uri.transport == "tls"
        assert not uri.is_ip_host
        assert str(uri) == "sip:+12195550714@wa.meta.vc;transport=tls"

    def test_rfc4904_user_params_stay_in_user(self) -> None:
        text = "sip:+1234567890;tgrp=wacall;trunk-context=byoc.example.com@sip.example.com"
        uri = parse_uri(text)
        assert uri.user == "+1234567890;tgrp=wacall;trunk-context=byoc.example.com"
        assert uri.user_number == "+1234567890"
        assert uri.user_params == {"tgrp": "wacall", "trunk-context": "byoc.example.com"}
        assert uri.host == "sip.example.com"
        assert uri.params == {}
        assert str(uri) == text
        with_transport = parse_uri(text + ";transport=tls")
        assert with_transport.params == {"transport": "tls"}
        assert str(with_transport) == text + ";transport=tls"

    def test_params_ordered_and_valueless(self) -> None:
        uri = parse_uri("sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr")
        assert uri.port == 8191 and uri.user is None
        assert list(uri.params.items()) == [("transport", "tls"), ("lr", None)]
        assert uri.lr
        assert str(uri) == "sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr"

    def test_ipv6_ipv4_and_password_and_headers(self) -> None:
        v6 = parse_uri("sips:alice:secret@[2001:db8::1]:5061;maddr=239.255.255.1?subject=hi&priority=urgent")
        assert v6.scheme == "sips" and v6.password == "secret"
        assert v6.host == "[2001:db8::1]" and v6.host_ip == "2001:db8::1" and v6.port == 5061
        assert v6.is_ip_host
        assert v6.headers == {"subject": "hi", "priority": "urgent"}
        assert str(v6) == "sips:alice:secret@[2001:db8::1]:5061;maddr=239.255.255.1?subject=hi&priority=urgent"
        v4 = parse_uri("sip:137.184.87.1:35181")
        assert v4.is_ip_host and v4.port == 35181 and v4.user is None

    def test_scheme_case_insensitive(self) -> None:
        assert parse_uri("SIP:alice@AtLanTa.CoM;Transport=UDP").scheme == "sip"

    def test_constructed(self) -> None:
        uri = SipUri("sip", "+17015558857", None, "meta-voip.example.com", 5061, {"transport": "tls"})
        assert str(uri) == "sip:+17015558857@meta-voip.example.com:5061;transport=tls"

    @pytest.mark.parametrize("text", [
        "sip:user@",
        "sip:@example.com",
        "sip:user@exa mple.com",
        "sip:user@example.com:99999",
        "sip:user@example.com:5o60",
        "sip:user@[2001:db8::zz]",
        "sip:user@example.com;;lr",
        "sip:user@example.com;=x",
        "<sip:user@example.com>",
        "user@example.com",
        "sip:us er@example.com",
        "sip:user@example.com?bad",
    ])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(SipParseError) as exc:
            parse_uri(text)
        assert exc.value.status == 400

    def test_other_schemes(self) -> None:
        with pytest.raises(SipParseError) as exc:
            parse_uri("tel:+1-201-555-0123")
        assert exc.value.status == 416
        tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com", any_scheme=True)
        assert tel.scheme == "tel" and not tel.is_sip
        assert tel.opaque == "+1-201-555-0123;phone-context=example.com"
        assert str(tel) == "tel:+1-201-555-0123;phone-context=example.com"


class TestNameAddr:
    def test_quoted_display_and_tag(self) -> None:
        na = parse_name_addr('"12195550714" <sip:+12195550714@wa.meta.vc>;tag=bbf1ad6e')
        assert na.display == "12195550714"
        assert na.uri.user == "+12195550714"
        assert na.tag == "bbf1ad6e"
        assert str(na) == '"12195550714" <sip:+12195550714@wa.meta.vc>;tag=bbf1ad6e'

    def test_bare_addr_spec_params_are_header_params(self) -> None:
        na = parse_name_addr("sip:a@b.example;tag=x;transport=tcp")
        assert na.display is None
        assert na.uri.params == {}
        assert na.params == {"tag": "x", "transport": "tcp"}
        assert str(na) == "<sip:a@b.example>;tag=x;transport=tcp"

    def test_uri_params_inside_brackets(self) -> None:
        na = parse_name_addr("<sip:+12195550714@wa.meta.vc;transport=tls;ob>;isfocus")
        assert na.uri.params == {"transport": "tls", "ob": None}
        assert na.params == {"isfocus": None}
        assert na.tag is None

    def test_unquoted_display_and_escapes(self) -> None:
        assert parse_name_addr("Alice Smith <sip:alice@example.com>").display == "Alice Smith"
        na = parse_name_addr(r'"Say \"hi\" \\ bye" <sip:a@example.com>')
        assert na.display == 'Say "hi" \\ bye'
        assert str(na) == r'"Say \"hi\" \\ bye" <sip:a@example.com>'

    def test_quoted_param_value_kept(self) -> None:
        na = parse_name_addr(
            '<sip:a@192.0.2.1>;+sip.instance="<urn:uuid:00000000-0000-1000-8000-000A95A0E128>";expires=60')
        assert na.params["+sip.instance"] == '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
        assert na.params["expires"] == "60"

    def test_constructed_renders_angle_brackets(self) -> None:
        na = NameAddr(None, parse_uri("sip:+17125550259@meta-voip.example.com"), {"tag": "abc"})
        assert str(na) == "<sip:+17125550259@meta-voip.example.com>;tag=abc"

    @pytest.mark.parametrize("text", [
        '"unterminated <sip:a@example.com>',
        "Bell, Alexander <sip:a@example.com>",
        "<sip:a@example.com",
        "< sip:a@example.com >",
        "sip:a@example.com;;tag=1",
        "sip:a@example.com?x=y",
        '"name" sip:a@example.com',
        "",
    ])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(SipParseError):
            parse_name_addr(text)


class TestVia:
    def test_meta_via(self) -> None:
        text = "SIP/2.0/TLS 137.184.87.1:35181;rport=56533;received=137.184.87.1;branch=z9hG4bKQNa6meey5Dj2g"
        via = parse_via(text)
        assert (via.transport, via.host, via.port) == ("TLS", "137.184.87.1", 35181)
        assert via.branch == "z9hG4bKQNa6meey5Dj2g"
        assert via.received == "137.184.87.1"
        assert via.rport == 56533 and via.wants_rport
        assert str(via) == text

    def test_ipv6_and_valueless(self) -> None:
        via = parse_via(
            "SIP/2.0/TLS [2803:6080:e000:1::5]:33819;rport;received=2803:6080:e000:1::5;branch=z9hG4bKx;alias")
        assert via.host == "[2803:6080:e000:1::5]"
        assert via.rport is None and via.wants_rport
        assert via.received == "2803:6080:e000:1::5"
        assert via.params["alias"] is None

    def test_whitespace_tolerated(self) -> None:
        via = parse_via("SIP  /   2.0 /UDP 192.0.2.2 : 5060 ;  branch = z9hG4bK1")
        assert (via.transport, via.host, via.port, via.branch) == ("UDP", "192.0.2.2", 5060, "z9hG4bK1")

    def test_constructed(self) -> None:
        via = Via("TLS", "wa.meta.vc", 5061, {"branch": "z9hG4bKabc", "rport": None})
        assert str(via) == "SIP/2.0/TLS wa.meta.vc:5061;branch=z9hG4bKabc;rport"

    @pytest.mark.parametrize("text", ["SIP/2.0 host", "SIP/2.0/TLS", "SIP/3.0/TLS host", "HTTP/2.0/TLS host",
                                      "SIP/2.0/TLS host;;", "SIP/2.0/TLS host:99999"])
    def test_malformed(self, text: str) -> None:
        with pytest.raises(SipParseError):
            parse_via(text)


# --- headers -----------------------------------------------------------------------------------


class TestHeaders:
    def test_case_insensitive_and_compact(self) -> None:
        h = Headers([("i", "abc"), ("v", "SIP/2.0/TLS a;branch=z9hG4bK1"), ("CALL-ID", "dup")])
        assert h.get("call-id") == "abc"
        assert h.get("I") == "abc"
        assert "Call-ID" in h and "i" in h and "Route" not in h
        assert list(h) == [("Call-ID", "abc"), ("Via", "SIP/2.0/TLS a;branch=z9hG4bK1"), ("Call-ID", "dup")]

    def test_get_all_splits_list_headers_only(self) -> None:
        h = Headers([
            ("Contact", '"Doe, John" <sip:j@example.com;x=1>;q=0.5, <sip:k@example.com>'),
            ("Contact", "sip:l@example.com"),
            ("Allow", "INVITE, ACK,BYE"),
            ("WWW-Authenticate", 'Digest realm="a", nonce="b"'),
            ("Date", "Sat, 13 Nov 2010 23:29:00 GMT"),
            ("X-Unknown", "a, b"),
        ])
        assert h.get_all("Contact") == ['"Doe, John" <sip:j@example.com;x=1>;q=0.5', "<sip:k@example.com>",
                                         "sip:l@example.com"]
        assert h.get_all("m") == h.get_all("Contact")
        assert h.get_all("Allow") == ["INVITE", "ACK", "BYE"]
        assert h.get_all("WWW-Authenticate") == ['Digest realm="a", nonce="b"']
        assert h.get_all("Date") == ["Sat, 13 Nov 2010 23:29:00 GMT"]
        assert h.get_all("X-Unknown") == ["a, b"]
        assert h.get("Contact") == '"Doe, John" <sip:j@example.com;x=1>;q=0.5, <sip:k@example.com>'
        assert h.get_all("Route") == []

    def test_set_remove_prepend_copy(self) -> None:
        h = Headers([("Via", "v1"), ("To", "t"), ("Via", "v2"), ("From", "f")])
        h.prepend("Via", "v0")
        assert h.get_all("Via") == ["v0", "v1", "v2"]
        h2 = h.copy()
        h.set("v", "only")
        assert list(h) == [("Via", "only"), ("To", "t"), ("From", "f")]
        assert h2.get_all("Via") == ["v0", "v1", "v2"]
        h.remove("VIA")
        assert "Via" not in h and len(h) == 2
        h.remove("Not-There")
        h.set("Subject", "new")
        assert list(h)[-1] == ("Subject", "new")
        empty = Headers()
        empty.prepend("Via", "x")
        assert list(empty) == [("Via", "x")]

    def test_unknown_names_keep_their_spelling(self) -> None:
        h = Headers([("x-wa-meta-wacid", "w"), ("X-FB-External-Domain", "wa.meta.vc"), ("cseq", "1 INVITE")])
        assert [n for n, _ in h] == ["x-wa-meta-wacid", "X-FB-External-Domain", "CSeq"]
        assert h.get("X-WA-META-WACID") == "w"

    @pytest.mark.parametrize(("name", "value"), [("X-Evil", "a\r\nVia: injected"), ("X-Evil", "a\nb"),
                                                 ("Bad Name", "x"), ("Bad:Name", "x")])
    def test_injection_refused(self, name: str, value: str) -> None:
        with pytest.raises(ValueError):
            Headers().add(name, value)
        with pytest.raises(ValueError):
            Headers().set(name, value)


# --- parse / serialise -------------------------------------------------------------------------


class TestParseMeta:
    @pytest.mark.parametrize("raw", [BIC_INVITE, META_407, META_200, UIC_INVITE, BYE, MINIMAL],
                             ids=["bic-invite", "407", "200", "uic-invite", "bye", "options"])
    def test_round_trip_exact(self, raw: bytes) -> None:
        msg = parse_message(raw)
        assert msg.to_bytes() == raw
        assert parse_message(msg.to_bytes()) == msg

    def test_bic_invite(self) -> None:
        msg = parse_message(BIC_INVITE)
        assert isinstance(msg, Request)
        assert msg.method == "INVITE"
        assert msg.uri == "sip:+12195550714@wa.meta.vc;transport=tls"
        assert msg.ruri.user == "+12195550714" and msg.ruri.host == "wa.meta.vc" and msg.ruri.transport == "tls"
        assert msg.cseq == (96743476, "INVITE")
        assert msg.call_id == "dc2c5b33-1b81-43ee-9213-afb56f4e56ba"
        assert msg.branch == "z9hG4bKQNa6meey5Dj2g"
        assert msg.top_via.rport == 56533
        assert msg.from_.tag == "Kc9QZg4496maQ"
        assert msg.from_.uri.user == "+17125550259" and msg.from_.uri.host == "meta-voip.example.com"
        assert msg.to.tag is None
        assert msg.max_forwards == 69
        assert msg.content_type == "application/sdp"
        assert msg.body == SDP
        (contact,) = msg.name_addrs("Contact")
        assert contact.uri.params["swrad"] == "137.184.87.1~56533~3"

    def test_407(self) -> None:
        msg = parse_message(META_407)
        assert isinstance(msg, Response)
        assert (msg.status, msg.reason) == (407, "Proxy Authentication Required")
        assert msg.to.tag == "z9hG4bK0da2.36614b8977461b486ceabc004c723476.0"
        assert msg.headers.get("Proxy-Authenticate", "").startswith('Digest realm="wa.meta.vc"')
        assert msg.cseq == (96743476, "INVITE")

    def test_200_record_route_order_and_contact(self) -> None:
        msg = parse_message(META_200)
        assert isinstance(msg, Response)
        assert [str(na.uri) for na in msg.name_addrs("Record-Route")] == [
            "sip:onevc-sip-proxy.fbinfra.net:8191;transport=tls;lr",
            "sip:wa.meta.vc;transport=tls;lr",
        ]
        assert msg.headers.get_all("Allow") == ["INVITE", "ACK", "BYE", "CANCEL", "NOTIFY", "OPTIONS"]
        (contact,) = msg.name_addrs("Contact")
        assert contact.params == {"isfocus": None}
        assert contact.uri.params["X-FB-Sip-Smc-Tier"] == "collaboration.sip_gateway.sip.prod"

    def test_uic_invite_ipv6_via_and_meta_call_id(self) -> None:
        msg = parse_message(UIC_INVITE)
        assert msg.top_via.host == "[2803:6080:e000:1::5]"
        assert msg.top_via.received == "2803:6080:e000:1::5"
        assert msg.call_id.startswith("outgoing:wacid.")  # '=' is not RFC 3261 word, tolerated
        assert msg.from_.display == "12195550714"
        assert msg.headers.get("X-WA-Meta-Wacid") == "wacid.HBgLMTIxOTU1NTA3MTQVAgASGCAz"

    def test_bye_route_and_reason(self) -> None:
        msg = parse_message(BYE)
        assert [na.uri.host for na in msg.name_addrs("Route")] == ["wa.meta.vc", "onevc-sip-proxy.fbinfra.net"]
        assert msg.headers.get_all("Reason") == ['Q.850;cause=16;text="NORMAL_CLEARING"']
        assert msg.ruri.params == {"transport": "tls", "ob": None}


class TestParseTolerant:
    def test_compact_forms_expanded(self) -> None:
        raw = crlf(
            "MESSAGE sip:a@example.com SIP/2.0\n"
            "v: SIP/2.0/TLS 192.0.2.1;branch=z9hG4bK1\n"
            "f: <sip:b@example.com>;tag=1\n"
            "t: <sip:a@example.com>\n"
            "i: c1@example.com\n"
            "CSeq: 1 MESSAGE\n"
            "m: <sip:b@192.0.2.1>\n"
            "c: text/plain\n"
            "e: identity\n"
            "s: hello\n"
            "k: timer\n"
            "o: dialog\n"
            "r: <sip:c@example.com>\n"
            "u: refer\n"
            "x: 1800\n"
            "l: 2\n"
            "\n",
            b"hi",
        )
        msg = parse_message(raw)
        names = [n for n, _ in msg.headers]
        assert names == ["Via", "From", "To", "Call-ID", "CSeq", "Contact", "Content-Type", "Content-Encoding",
                         "Subject", "Supported", "Event", "Refer-To", "Allow-Events", "Session-Expires",
                         "Content-Length"]
        assert msg.body == b"hi"
        assert msg.to_bytes().startswith(b"MESSAGE sip:a@example.com SIP/2.0\r\nVia: SIP/2.0/TLS")

    def test_folding_whitespace_case(self) -> None:
        raw = crlf(
            "INVITE sip:a@example.com SIP/2.0\n"
            "VIA :  SIP/2.0/TLS 192.0.2.1\n"
            "   ;branch=z9hG4bK1\n"
            "fRoM:<sip:b@example.com>;tag=1\n"
            "to\t: sip:a@example.com\n"
            "CALL-ID: c1\n"
            "cseq: 0007\n"
            "\tINVITE\n"
            "X-Long: " + "x" * 5000 + "\n"
            "Content-Length: 0\n"
            "\n"
        )
        msg = parse_message(raw)
        assert msg.branch == "z9hG4bK1"
        assert msg.cseq == (7, "INVITE")
        assert len(msg.headers.get("X-Long") or "") == 5000

    def test_leading_crlf_and_lf_only_datagram(self) -> None:
        assert parse_message(b"\r\n\r\n" + MINIMAL).method == "OPTIONS"
        assert parse_message(MINIMAL.replace(b"\r\n", b"\n")).call_id == "opt1@example.com"

    def test_max_forwards_may_be_missing(self) -> None:
        msg = parse_message(MINIMAL.replace(b"Max-Forwards: 70\r\n", b""))
        assert msg.max_forwards is None

    def test_no_content_length_on_datagram_takes_the_rest(self) -> None:
        raw = MINIMAL.replace(b"Content-Length: 0\r\n", b"") + b"body"
        assert parse_message(raw).body == b"body"

    def test_extra_octets_after_content_length_ignored(self) -> None:
        assert parse_message(MINIMAL + b"garbage").body == b""

    def test_tel_from_and_unknown_request_uri_scheme(self) -> None:
        raw = MINIMAL.replace(b"From: <sip:ping@example.com>;tag=1", b"From: <tel:+12015550123>;tag=1")
        raw = raw.replace(b"OPTIONS sip:wa.meta.vc", b"OPTIONS tel:+12195550714")
        msg = parse_message(raw)
        assert msg.from_.uri.scheme == "tel"
        assert not msg.ruri.is_sip  # the gateway answers 416

    def test_response_without_reason_phrase(self) -> None:
        raw = META_407.replace(b"407 Proxy Authentication Required", b"407")
        msg = parse_message(raw)
        assert isinstance(msg, Response) and msg.status == 407 and msg.reason == ""


def _without(raw: bytes, header: str) -> bytes:
    lines = raw.split(b"\r\n")
    return b"\r\n".join(l for l in lines if not l.lower().startswith(header.lower().encode() + b":"))


class TestParseStrict:
    @pytest.mark.parametrize("header", ["To", "From", "Call-ID", "CSeq", "Via"])
    def test_missing_mandatory(self, header: str) -> None:
        with pytest.raises(SipParseError) as exc:
            parse_message(_without(MINIMAL, header))
        assert exc.value.status == 400
        assert exc.value.reason == f"Bad Request - Missing {header}"
        assert isinstance(exc.value.message, Request)  # a transport can still build the 400

    @pytest.mark.parametrize("header", ["To", "From", "Call-ID", "CSeq", "Via"])
    def test_missing_mandatory_in_response(self, header: str) -> None:
        with pytest.raises(SipParseError):
            parse_message(_without(META_407, header))

    @pytest.mark.parametrize(("old", "new", "why"), [
        (b"CSeq: 1 OPTIONS", b"CSeq: 1 INVITE", "CSeq method does not match"),
        (b"CSeq: 1 OPTIONS", b"CSeq: 2147483648 OPTIONS", "Malformed CSeq"),
        (b"CSeq: 1 OPTIONS", b"CSeq: -1 OPTIONS", "Malformed CSeq"),
        (b"CSeq: 1 OPTIONS", b"CSeq: one OPTIONS", "Malformed CSeq"),
        (b"CSeq: 1 OPTIONS", b"CSeq: 1", "Malformed CSeq"),
        (b"Content-Length: 0", b"Content-Length: 10", "Content-Length larger than body"),
        (b"Content-Length: 0", b"Content-Length: zero", "Malformed Content-Length"),
        (b"Content-Length: 0", b"Content-Length: 0\r\nl: 3", "Conflicting Content-Length"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPTIONS sip:wa.meta.vc", "Malformed Request-Line"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPTIONS sip:wa meta.vc SIP/2.0", "Malformed Request-Line"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPTIONS sip:@wa.meta.vc SIP/2.0", "Malformed URI"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPTIONS <sip:wa.meta.vc> SIP/2.0", "Malformed Request-URI"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPT(IONS sip:wa.meta.vc SIP/2.0", "Malformed method"),
        (b"OPTIONS sip:wa.meta.vc SIP/2.0", b"OPTIONS sip:wa.meta.vc HTTP/1.1", "Malformed SIP version"),
        (b"Max-Forwards: 70", b"Max-Forwards: seventy", "Malformed Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards: 256", "Malformed Max-Forwards"),
        (b"Max-Forwards: 70", b"Max-Forwards 70", "Malformed header line"),
        (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nFrom: <sip:x@example.com>;tag=2", "Multiple From"),
        (b"To: <sip:wa.meta.vc>", b"To: <sip:wa.meta.vc", "Malformed To"),
        (b"Call-ID: opt1@example.com", b"Call-ID: opt1 @example.com", "Malformed Call-ID"),
        (b"Via: SIP/2.0/TLS 192.0.2.1:5061;branch=z9hG4bKopt1", b"Via: SIP/2.0/TLS", "Malformed Via"),
        (b"Max-Forwards: 70", b"Contact: <sip:a@example.com", "Malformed Contact"),
        (b"Max-Forwards: 70", b"X-Bad: a\rb", "Bare CR"),
    ])
    def test_rejected(self, old: bytes, new: bytes, why: str) -> None:
        assert old in MINIMAL
        with pytest.raises(SipParseError) as exc:
            parse_message(MINIMAL.replace(old, new))
        assert exc.value.status == 400
        assert why in exc.value.reason
        assert exc.value.reason.startswith("Bad Request - ")

    def test_unknown_version_is_505(self) -> None:
        with pytest.raises(SipParseError) as exc:
            parse_message(MINIMAL.replace(b"SIP/2.0\r\n", b"SIP/3.0\r\n", 1))
        assert exc.value.status == 505

    @pytest.mark.parametrize("start", [b"SIP/2.0 99 Too Small", b"SIP/2.0 700 Too Big", b"SIP/2.0 2000 OK",
                                       b"SIP/2.0 abc OK", b"SIP/2.0"])
    def test_bad_status_line(self, start: bytes) -> None:
        with pytest.raises(SipParseError):
            parse_message(META_407.replace(b"SIP/2.0 407 Proxy Authentication Required", start))

    @pytest.mark.parametrize("raw", [b"", b"\r\n\r\n", b"garbage", b"INVITE sip:a@b SIP/2.0\r\nTo: x\r\n",
                                     b"\x00\xff\r\n\r\n", b" To: x\r\n\r\n", b"A B C\r\n continued\r\n\r\n"])
    def test_garbage_never_crashes(self, raw: bytes) -> None:
        with pytest.raises(SipParseError):
            parse_message(raw)


class TestSerialise:
    def test_content_length_set_from_body(self) -> None:
        msg = parse_message(MINIMAL)
        msg.body = b"hello"
        out = msg.to_bytes()
        assert b"\r\nContent-Length: 5\r\n\r\nhello" in out
        assert out.count(b"Content-Length") == 1
        assert msg.headers.get("Content-Length") == "0"  # to_bytes does not mutate

    def test_content_length_added_when_missing(self) -> None:
        req = Request("OPTIONS", "sip:wa.meta.vc", Headers([("Call-ID", "x")]))
        assert req.to_bytes() == b"OPTIONS sip:wa.meta.vc SIP/2.0\r\nCall-ID: x\r\nContent-Length: 0\r\n\r\n"

    def test_response_to_bytes(self) -> None:
        resp = Response(200, "OK", Headers([("Call-ID", "x")]), b"v=0\r\n")
        assert resp.to_bytes() == b"SIP/2.0 200 OK\r\nCall-ID: x\r\nContent-Length: 5\r\n\r\nv=0\r\n"

    def test_utf8_and_raw_octets_survive(self) -> None:
        raw = MINIMAL.replace(b"Max-Forwards: 70", b"Subject: \xd0\xbf\xd1\x80\xd0\xb8\xd0\xb2\xd0\xb5\xd1\x82 \xff")
        assert parse_message(raw).to_bytes() == raw


# --- response building -------------------------------------------------------------------------


class TestResponseTo:
    def test_copies_per_8_2_6(self) -> None:
        raw = BIC_INVITE.replace(
            b"Max-Forwards: 69\r\n",
            b"Max-Forwards: 69\r\nVia: SIP/2.0/TLS 10.0.0.1;branch=z9hG4bKsecond\r\nTimestamp: 54.3 0.1\r\n",
        )
        req = parse_message(raw)
        assert isinstance(req, Request)
        trying = response_to(req, 100, "Trying")
        assert [v.branch for v in trying.vias] == ["z9hG4bKQNa6meey5Dj2g", "z9hG4bKsecond"]
        assert trying.headers.get("Timestamp") == "54.3 0.1"
        assert trying.headers.get("From") == req.headers.get("From")
        assert trying.headers.get("To") == req.headers.get("To")
        assert trying.call_id == req.call_id and trying.cseq == req.cseq
        assert [n for n, _ in trying.headers] == ["Via", "Via", "From", "To", "Call-ID", "CSeq", "Timestamp"]

        tag = new_tag()
        ok = response_to(req, 200, "OK", to_tag=tag, headers=[("Record-Route", "<sip:wa.meta.vc;transport=tls;lr>")],
                         body=SDP, content_type="application/sdp")
        assert ok.to.tag == tag
        assert ok.headers.get("To") == f"<sip:+12195550714@wa.meta.vc>;tag={tag}"
        assert "Timestamp" not in ok.headers
        assert ok.content_type == "application/sdp"
        assert ok.body == SDP
        again = parse_message(ok.to_bytes())
        assert isinstance(again, Response) and again.status == 200 and again.body == SDP

    def test_existing_to_tag_kept(self) -> None:
        req = parse_message(BYE)
        assert isinstance(req, Request)
        resp = response_to(req, 200, "OK", to_tag="other")
        assert resp.to.tag == "0d185053-2615-46c7-8ff2-250bda494cf1"

    def test_bare_to_gets_tag_as_header_param(self) -> None:
        req = parse_message(MINIMAL.replace(b"To: <sip:wa.meta.vc>", b"To: sip:wa.meta.vc"))
        assert isinstance(req, Request)
        resp = response_to(req, 404, to_tag="t1")
        assert resp.reason == "Not Found"
        assert resp.to.tag == "t1" and resp.to.uri.params == {}

    @pytest.mark.parametrize("extra", [
        [], [("Allow", "INVITE, ACK")], [("Content-Type", "text/plain")], [("c", "text/plain"), ("X-A", "1")],
        [("X-A", "1"), ("content-type", "text/plain"), ("Content-Type", "a/b"), ("k", "timer")],
    ])
    @pytest.mark.parametrize("content_type", [None, "application/sdp"])
    def test_fields_filled_directly_agree_with_add_and_set(self, extra, content_type) -> None:
        """response_to fills the new Headers without add()/set(): the same fields, names and order as those give."""
        req = parse_message(BIC_INVITE)
        assert isinstance(req, Request)
        resp = response_to(req, 200, "OK", to_tag="t1", headers=extra, content_type=content_type)
        reference = Headers([*[f for f in req.headers if f[0] == "Via"], ("From", req.headers.get("From")),
                             ("To", req.headers.get("To") + ";tag=t1"), ("Call-ID", req.call_id),
                             ("CSeq", req.headers.get("CSeq"))])
        for name, value in extra:
            reference.add(name, value)
        if content_type is not None:
            reference.set("Content-Type", content_type)
        assert list(resp.headers) == list(reference)
        assert resp.to_bytes() == Response(200, "OK", reference).to_bytes()
        with pytest.raises(ValueError):
            response_to(req, 200, "OK", headers=[("X-A", "1\r\nX-B: 2")])

    def test_reasons(self) -> None:
        for code in (100, 180, 183, 200, 400, 401, 403, 404, 405, 407, 408, 420, 480, 481, 482, 483, 486,
                     487, 488, 500, 501, 503, 504, 505, 513):
            assert REASONS[code]
        assert REASONS[407] == "Proxy Authentication Required"
        assert REASONS[487] == "Request Terminated"


def test_identifiers() -> None:
    branches = {new_branch() for _ in range(100)}
    assert len(branches) == 100 and all(b.startswith("z9hG4bK") and len(b) > 7 + 8 for b in branches)
    assert len({new_tag() for _ in range(100)}) == 100
    call_id = new_call_id("wa.meta.vc")
    assert call_id.endswith("@wa.meta.vc") and new_call_id("wa.meta.vc") != call_id
    raw = MINIMAL.replace(b"opt1@example.com", call_id.encode()).replace(b"z9hG4bKopt1", new_branch().encode())
    parse_message(raw)


# --- stream framing ----------------------------------------------------------------------------


class TestStreamFramer:
    def test_byte_by_byte(self) -> None:
        framer = StreamFramer()
        out: list[object] = []
        for i in range(len(BIC_INVITE)):
            out += framer.feed(BIC_INVITE[i:i + 1])
        assert out == [BIC_INVITE]

    def test_several_in_one_feed_and_split_across_feeds(self) -> None:
        stream = BIC_INVITE + META_407 + META_200 + BYE
        framer = StreamFramer()
        cut = len(BIC_INVITE) + 10
        got = framer.feed(stream[:cut]) + framer.feed(stream[cut:-5]) + framer.feed(stream[-5:])
        assert got == [BIC_INVITE, META_407, META_200, BYE]
        assert [type(parse_message(m)).__name__ for m in got if isinstance(m, bytes)] == \
            ["Request", "Response", "Response", "Request"]

    def test_keepalives(self) -> None:
        framer = StreamFramer()
        assert framer.feed(b"\r\n\r\n") == [PING]
        assert framer.feed(b"\r\n") == []  # maybe the start of a ping: wait
        assert framer.feed(b"\r\n") == [PING]
        assert framer.feed(b"\r\n" + MINIMAL + b"\r\n\r\n\r\n") == [MINIMAL, PING]
        assert framer.pings == 3 and framer.pongs == 1
        assert framer.feed(MINIMAL) == [MINIMAL]
        assert framer.pongs == 2  # the CRLF left over before the second message

    def test_missing_content_length_resyncs(self) -> None:
        no_length = MINIMAL.replace(b"Content-Length: 0\r\n", b"")
        framer = StreamFramer()
        out = framer.feed(no_length + MINIMAL)
        assert len(out) == 2
        err, good = out
        assert isinstance(err, SipParseError) and err.status == 400 and "Content-Length" in err.reason
        assert isinstance(err.message, Request) and err.message.call_id == "opt1@example.com"
        assert good == MINIMAL
        assert not framer.closed

    def test_folded_content_length_found(self) -> None:
        raw = MINIMAL.replace(b"Content-Length: 0", b"Content-Length :\r\n 0")
        assert StreamFramer().feed(raw) == [raw]

    @pytest.mark.parametrize("field, expected", [
        (b"l: 5", ["5"]), (b"content-length:5", ["5"]), (b"CONTENT-LENGTH \t: 5 ", ["5"]),
        (b"Content-Length: 5\r\nl: 5", ["5", "5"]), (b"Content-Length: 5\r\nL: 6", ["5", "6"]),
        (b"Content-Length: x", ["x"]), (b"X-Content-Length: 9", []), (b"L-Foo: 9", []),
        (b"Content-Length:\r\n 5", ["5"])])
    def test_length_fields_found_alike_with_and_without_folding(self, field: bytes, expected: list[str]) -> None:
        """The framer's search of an unfolded header block finds the same Content-Length fields as its
        line-by-line path (taken when a line is folded): the compact ``l``, any case, repeated fields."""
        from wacall.sip.message import _length_headers
        head = b"INVITE sip:a@b SIP/2.0\r\nCall-ID: x\r\n" + field + b"\r\nTo: <sip:a@b>"
        folded = head + b"\r\nSubject: a\r\n b"             # a folded line elsewhere: the line-by-line path
        assert _length_headers(head).get_all("Content-Length") == expected
        assert _length_headers(folded).get_all("Content-Length") == expected

    def test_header_block_too_large_is_fatal(self) -> None:
        framer = StreamFramer(max_header=1024)
        out = framer.feed(b"INVITE sip:a@b SIP/2.0\r\nX: " + b"a" * 2000)
        assert len(out) == 1 and isinstance(out[0], SipParseError) and out[0].status == 400
        assert framer.closed
        assert framer.feed(MINIMAL) == []

    def test_body_too_large_is_fatal(self) -> None:
        framer = StreamFramer(max_body=100)
        out = framer.feed(MINIMAL.replace(b"Content-Length: 0", b"Content-Length: 1000000"))
        assert len(out) == 1 and isinstance(out[0], SipParseError) and out[0].status == 413
        assert framer.closed

    @pytest.mark.parametrize("value", [b"abc", b"-1", b"1, 2"])
    def test_unframeable_length_is_fatal(self, value: bytes) -> None:
        framer = StreamFramer()
        out = framer.feed(MINIMAL.replace(b"Content-Length: 0", b"Content-Length: " + value))
        assert len(out) == 1 and isinstance(out[0], SipParseError) and framer.closed

    def test_waits_for_body(self) -> None:
        framer = StreamFramer()
        head, body = BIC_INVITE[: -len(SDP)], SDP
        assert framer.feed(head) == []
        assert framer.feed(body[:-1]) == []
        assert framer.feed(body[-1:]) == [BIC_INVITE]


def test_parsed_values_are_memoised_by_text_and_shared_read_only():
    """parse_uri / parse_name_addr / parse_via keep what they parsed (the same From, To and Via come back in
    every message of a call) and hand the same value to every caller: its parameters cannot be changed in
    place (nothing a caller does changes the next caller's value); a changed value is built from a copy."""
    text = '"Alice" <sip:+15550001@wa.meta.vc;transport=tls>;tag=abc'
    first = parse_name_addr(text)
    assert parse_name_addr(text) is first
    with pytest.raises(TypeError):
        first.params.pop("tag")
    with pytest.raises(TypeError):
        first.uri.params["transport"] = "udp"
    again = parse_name_addr(text)
    assert again.tag == "abc" and again.uri.transport == "tls"
    changed = NameAddr(first.display, first.uri, {k: v for k, v in first.params.items() if k != "tag"})
    assert str(changed) == '"Alice" <sip:+15550001@wa.meta.vc;transport=tls>' and parse_name_addr(text).tag == "abc"
    uri = parse_uri("sip:+15550001@wa.meta.vc;lr")
    for change in (uri.params.clear, lambda: uri.params.update(x="1"), lambda: uri.params.setdefault("x"),
                   uri.params.popitem, lambda: uri.headers.__setitem__("a", "b")):
        with pytest.raises(TypeError):
            change()
    assert parse_uri("sip:+15550001@wa.meta.vc;lr").lr and uri.params == {"lr": None}
    copy = uri.params.copy()
    copy["x"] = "1"                                       # a copy is a plain, changeable dict
    assert type(copy) is dict and parse_uri("sip:+15550001@wa.meta.vc;lr").params == {"lr": None}
    via = parse_via("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1;rport")
    with pytest.raises(TypeError):
        via.params["received"] = "x"
    assert parse_via("SIP/2.0/TLS 10.0.0.1:5061;branch=z9hG4bK1;rport").received is None
    import copy as copying
    import pickle
    assert copying.deepcopy(via) == via and pickle.loads(pickle.dumps(first)) == first
    with pytest.raises(SipParseError):                    # failures are not kept: they fail every time
        parse_uri("sip:a b@host")
    with pytest.raises(SipParseError):
        parse_uri("sip:a b@host")


def test_header_lookups_follow_every_change():
    """Headers answers lookups from an index: add, set, prepend and remove all show at once."""
    h = Headers([("Via", "SIP/2.0/TLS a;branch=z9hG4bK1"), ("To", "<sip:b@c>"), ("v", "SIP/2.0/TLS b;branch=z9hG4bK2")])
    assert h.get("TO") == "<sip:b@c>" and len(h.get_all("via")) == 2
    h.prepend("Via", "SIP/2.0/TLS z;branch=z9hG4bK0")
    assert h.get("Via").startswith("SIP/2.0/TLS z")
    h.set("To", "<sip:d@e>;tag=1")
    assert h.get_all("t") == ["<sip:d@e>;tag=1"]
    h.remove("Via")
    assert h.get_all("Via") == [] and h.get("Via") is None
    h.add("X-Custom", "1")
    assert h.get("x-custom") == "1"
    values = h.get_all("X-Custom")
    values.append("2")                                    # a caller's list, not the index's
    assert h.get_all("X-Custom") == ["1"]


@pytest.mark.parametrize("value, expected", [
    ("INVITE, ACK,BYE , ,\tCANCEL", ["INVITE", "ACK", "BYE", "CANCEL"]),        # no quote or <: split in C
    ("SIP/2.0/TLS a:5061;branch=z9hG4bK1;rport", ["SIP/2.0/TLS a:5061;branch=z9hG4bK1;rport"]),
    ("a > b, c", ["a > b", "c"]), (" , ", []),
    ('"Doe, J" <sip:a@b>, <sip:c@d;x=1,2>', ['"Doe, J" <sip:a@b>', "<sip:c@d;x=1,2>"]),   # the character walk
])
def test_split_list_splits_at_top_level_commas_only(value: str, expected: list[str]) -> None:
    from wacall.sip.uri import split_list
    assert split_list(value) == expected


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["Via", "Content-Length", "content-length", "CONTENT-LENGTH", "To", "X"]),
                          st.sampled_from(["", "0", "3", "4", "x", "é"])), max_size=6),
       st.sampled_from([b"", b"abc", b"abcd"]))
def test_rendering_joins_agree_with_the_loop_that_fixes_content_length(items, body):
    """``to_bytes`` joins the fields in C unless a Content-Length must change; both give what the loop gives.
    The fields go in through ``Headers``, as every message's do: with their names made canonical."""
    msg = Request("OPTIONS", "sip:a@b", Headers(items), body)
    assert msg._render_now("OPTIONS sip:a@b SIP/2.0") == msg._render_fixing_length("OPTIONS sip:a@b SIP/2.0")


@pytest.mark.parametrize("spelling", ["l", "L", "content-length", "CONTENT-LENGTH", "Content-length"])
def test_field_names_come_out_canonical_however_they_went_in(spelling):
    """Rendering finds a Content-Length field by its canonical spelling alone (one search of the joined head):
    each way of filling a Headers (both parsers, add, set, prepend, replace_first) gives it that spelling, so
    such a field is never missed and written twice."""
    from wacall.sip.message import _parse_in_python

    raw = MINIMAL.replace(b"Content-Length: 0", f"{spelling}: 0".encode())
    for msg in (parse_message(raw), _parse_in_python(raw)):
        assert [n for n, _ in msg.headers][-1] == "Content-Length"
        assert msg.to_bytes() == MINIMAL
    for fill in ("add", "set", "prepend", "replace_first"):
        headers = Headers([("Call-ID", "x")])
        getattr(headers, fill)(spelling, "3")
        assert "Content-Length" in [n for n, _ in headers]
        assert Response(200, "OK", headers, b"abc").to_bytes().count(b"Content-Length: 3\r\n") == 1


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from([";", " ", "\t", "=", "tag", "lr", "a.b", "[::1]", "1:2", '"q"', '"', ",", "é",
                                 "x y", "%41"]), max_size=10).map("".join))
def test_parameters_read_by_regular_expression_agree_with_the_loop(text):
    from wacall.sip.uri import _parse_params_loop, parse_params

    def outcome(parse):
        try:
            return list(parse(text).items())
        except SipParseError as exc:
            return exc.reason
    assert outcome(parse_params) == outcome(_parse_params_loop)


@settings(max_examples=1000, deadline=None)
@given(st.lists(st.sampled_from(["SIP/2.0/TLS ", "SIP/2.0/", "sip/2.0/tcp ", "SIP / 2.0 / UDP ", "SIP/3.0/TLS ",
                                 "127.0.0.1", "[::1]", "wa.meta.vc", ":5061", ":99999", ":05070", ": 5060", " ",
                                 ";branch=z9hG4bK-1", ";rport", ";rport=1", ";received=[::1]", ";x=\"a b\"", ";",
                                 ";;", "=", ";branch=z9hG4bK-2", ";RPORT", "\t", ",", "é"]),
                max_size=7).map("".join))
@example("SIP/2.0/TLS wa.meta.vc:99999;branch=z9hG4bK-1")
@example("SIP/2.0/TLS wa.meta.vc:05070;branch=z9hG4bK-1;branch=z9hG4bK-2;rport")
@example("SIP/2.0/TLS [::1];received=[::1];rport=1;x")
@example("SIP/2.0/TLS a:5061;branch=")
@example("SIP/2.0/TLS a:5061 ;branch=z9hG4bK-1")
@example("SIP/2.0/tls a:5061;x=\"a b\"")
def test_plain_vias_read_by_one_match_agree_with_the_general_parser(text):
    """``_parse_via`` reads the form senders write with one regular expression; the general parser (whitespace,
    quoted values, errors) is the reference: the same Via, or the same error, for any text."""
    from wacall.sip.message import _parse_via, _parse_via_general

    def outcome(parse):
        try:
            via = parse(text)
        except SipParseError as exc:
            return exc.reason
        return via.transport, via.host, via.port, list(via.params.items())
    assert outcome(_parse_via) == outcome(_parse_via_general)


def test_the_plain_via_path_takes_what_sipp_sends():
    from wacall.sip import message
    text = "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport"
    assert message._VIA_PLAIN_RE.match(text) is not None
    via = message._parse_via(text)
    assert (via.transport, via.host, via.port, dict(via.params)) == (
        "TLS", "127.0.0.1", 5070, {"branch": "z9hG4bK-1-1-0", "rport": None})


def test_tokens_come_fresh_from_the_kernel_and_a_forked_child_draws_its_own():
    import os

    from wacall.sip.randomness import token_hex
    tokens = [token_hex(8) for _ in range(2000)]          # more than one 4 KiB block
    assert len(set(tokens)) == 2000 and all(len(t) == 16 and int(t, 16) >= 0 for t in tokens)
    assert len(token_hex(5000)) == 10000
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:                                          # the child: what it draws next, to the parent
        os.write(write, token_hex(8).encode())
        os._exit(0)
    os.close(write)
    child = os.read(read, 64).decode()
    os.close(read)
    os.waitpid(pid, 0)
    assert len(child) == 16 and child != token_hex(8)     # not the parent's next value from a copied block


def test_a_parsed_message_kept_for_64_t1_leaves_its_index_to_no_cyclic_collection():
    """An INVITE server transaction keeps its request (and 2xx) for 64*T1 in the Accepted state (RFC 6026);
    its header index holds tuples of str, which the cyclic collector stops tracking, not lists it walks."""
    import gc
    request = parse_message(b"INVITE sip:+447955500001@wa.meta.vc SIP/2.0\r\nVia: SIP/2.0/TLS a;branch=z9hG4bK1\r\n"
                            b"Via: SIP/2.0/TLS b;branch=z9hG4bK2\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
                            b"Call-ID: x\r\nCSeq: 1 INVITE\r\nContent-Length: 0\r\n\r\n")
    assert request.headers.get_all("Via") == ["SIP/2.0/TLS a;branch=z9hG4bK1", "SIP/2.0/TLS b;branch=z9hG4bK2"]
    gc.collect()
    index = request.headers._index
    assert index is not None and index["via"] == ("SIP/2.0/TLS a;branch=z9hG4bK1", "SIP/2.0/TLS b;branch=z9hG4bK2")
    assert not any(gc.is_tracked(values) for values in index.values())


@pytest.mark.parametrize("text", ["sip:+442071838750@127.0.0.1:5070;transport=tls", "SIPS:a@[::1]:05061;lr?x=y",
                                  "sip:wa.meta.vc", "tel:+1234", "sip:u:pw@h;a;b=c"])
def test_a_parsed_uri_keeps_its_rendering_and_a_built_one_renders_its_changes(text: str) -> None:
    """``str()`` of a parsed SipUri (shared through the memo, never changed) is kept after the first rendering:
    it is what rendering a SipUri with the same fields gives; a SipUri built by hand renders every time."""
    import dataclasses

    from wacall.sip.uri import SipUri, parse_uri
    parsed = parse_uri(text, any_scheme=True)
    built = SipUri(**{f.name: getattr(parsed, f.name) for f in dataclasses.fields(SipUri)})
    assert str(parsed) == str(parsed) == str(built) == built._render()
    assert "_rendered" not in built.__dict__
    built.port = 5999
    assert str(built) == built._render() and (parsed.opaque is not None or ":5999" in str(built))


def test_the_compiled_rendering_is_the_python_one() -> None:
    """``_sipscan.render`` (what ``to_bytes`` uses) gives the octets of ``_render_in_python`` (the reference), or
    declines, on the torture messages, mutations of them, and responses with odd Content-Length fields."""
    import random
    from pathlib import Path
    from wacall.sip import message
    if message._RENDER is None:
        pytest.skip("the compiled scanner is not built (WACALL_SIPSCAN=0)")
    torture = sorted(p.read_bytes() for p in (Path(__file__).parent / "data" / "sip_torture").glob("*.dat"))
    rng = random.Random(3261)
    messages = []
    for data in torture:
        try:
            messages.append(message._parse_in_python(data))
        except message.SipParseError as exc:
            if isinstance(exc.message, (message.Request, message.Response)):
                messages.append(exc.message)
    invite = message.Request("INVITE", "sip:a@b", message.Headers([("Via", "SIP/2.0/TLS h;branch=z9hG4bK1"),
                             ("From", "<sip:a@b>;tag=1"), ("To", "<sip:c@d>"), ("Call-ID", "x"), ("CSeq", "1 INVITE")]))
    for body in (b"", b"v=0\r\n", "é".encode()):
        for extra in ([], [("Content-Length", str(len(body)))], [("Content-Length", "7")], [("Content-Length", "0")],
                      [("Content-Length", str(len(body))), ("Content-Length", str(len(body)))],
                      [("Subject", "caf\udcc3\udca9")], [("X", "é")]):
            messages.append(message.response_to(invite, 200, "OK", to_tag="t", headers=extra, body=body))
    rendered = declined = 0
    for msg in messages * 3:
        if rng.random() < 0.5 and msg.headers._items:     # a field changed: another name, value or position
            items = list(msg.headers._items)
            i = rng.randrange(len(items))
            items[i] = rng.choice([("Content-Length", items[i][1]), (items[i][0], "é"), (items[i][0], ""),
                                   ("content-length", "3"), items[i]])
            msg.headers._items = items
        start = "SIP/2.0 200 OK" if isinstance(msg, message.Response) else f"{msg.method} {msg.uri} SIP/2.0"
        got = message._RENDER(start, msg.headers._items, msg.body)
        want = msg._render_in_python(start)
        if got is None:
            declined += 1
        else:
            rendered += 1
            assert got == want, (start, msg.headers._items, msg.body)
        assert msg._render_now(start) == want
    assert rendered > 50 and declined > 10


@pytest.mark.parametrize("fields", [
    [("Via", "SIP/2.0/TLS h:5070;branch=z9hG4bK1;rport")],
    [("Via", "  SIP/2.0/TLS h;branch=z9hG4bK1 ")],
    [("Via", "SIP/2.0/TLS a;branch=z9hG4bK1, SIP/2.0/TLS b;branch=z9hG4bK2")],
    [("Via", ""), ("Via", "SIP/2.0/TLS b;branch=z9hG4bK2")],
    [("Via", " , SIP/2.0/TLS c;branch=z9hG4bK3")],
    [("Via", "SIP/2.0/TLS d;branch=z9hG4bK4\t"), ("Via", "SIP/2.0/TLS e")],
])
def test_top_via_read_inline_is_the_general_reading(fields) -> None:
    """``top_via`` reads the usual first Via field inline; whatever it is, the Via is the first element
    ``_top_via_text`` (the general reading) finds, and ``server_key`` keys on its branch as ``Via.branch`` gives it."""
    from wacall.sip.message import parse_via
    from wacall.sip.transaction import TransactionLayer
    request = Request("OPTIONS", "sip:wa.meta.vc", Headers([*fields, ("From", "<sip:a@b>;tag=1"), ("To", "<sip:c@d>"),
                                                              ("Call-ID", "x"), ("CSeq", "1 OPTIONS")]))
    request.headers.get("Via")                        # the index built, as after a parse
    via = parse_via(request._top_via_text())
    assert request.top_via == via
    key = TransactionLayer.server_key(request)
    assert key[0] == (via.branch if (via.branch or "").startswith("z9hG4bK") else "2543")


def test_the_compiled_response_fields_are_the_python_ones() -> None:
    """``_sipscan.response_fields`` (what ``response_to`` uses) gives the fields of ``_response_fields_in_python``
    (the reference), or declines, for requests from the torture messages and mutations of them, with or without a
    To tag, extra fields (known, unknown, odd values) and a Content-Type; declined ones still get Python's fields."""
    import random
    from pathlib import Path
    from support.mutation import mutate, random_octet
    from wacall.sip import message
    if message._RESPONSE_FIELDS is None:
        pytest.skip("the compiled scanner is not built (WACALL_SIPSCAN=0)")
    torture = sorted(p.read_bytes() for p in (Path(__file__).parent / "data" / "sip_torture").glob("*.dat"))
    rng = random.Random(3262)
    invite = (b"INVITE sip:+447955500000@wa.meta.vc;transport=tls SIP/2.0\r\n"
              b"Via: SIP/2.0/TLS 127.0.0.1:41593;branch=z9hG4bK-1-1-0;rport=5070\r\nVia: SIP/2.0/TLS b;branch=z9hG4bK2\r\n"
              b"From: <sip:+447700900123@pbx.business.example>;tag=1SIPpTag001\r\nTo: <sip:+447955500000@wa.meta.vc>\r\n"
              b"Call-ID: 1-1@127.0.0.1\r\nCSeq: 1 INVITE\r\nTimestamp: 54\r\nContent-Length: 0\r\n\r\n")
    nasty = [b"tag", b";TaG=x", b"\xc3\xa9", b",", b"\r\nTo: <sip:x@y>", b"\r\nVia: SIP/2.0/UDP c", b"\r\nTimestamp: 1"]
    requests = []
    for data in [*torture, invite, *(mutate(rng, rng.choice([invite, *torture]), nasty, random_octet) for _ in range(300))]:
        try:
            msg = message._parse_in_python(data)
        except message.SipParseError as exc:
            msg = exc.message
        except Exception:            # a mutation no parser takes
            continue
        if isinstance(msg, message.Request):
            requests.append(msg)
    extras = [(), [("Record-Route", "<sip:wa.meta.vc;transport=tls;lr>"), ("X-FB-External-Domain", "wa.meta.vc")],
              (("supported", "timer"), ("l", "0")), [("Content-Type", "text/plain"), ("c", "x/y")], [("X-Odd-Name", "1")],
              [("Allow", "é")], [("Allow", "a\r\nb")], [("Bad Name", "1")]]
    compiled = declined = 0
    for request in requests:
        index = request.headers._index or request.headers._indexed()
        for to_tag in (None, "5cda9d6c5532dad4", "é", "a\nb"):
            for extra in extras:
                for content_type in (None, "application/sdp", "bad\r\n"):
                    for timestamp in (False, True):
                        try:
                            want = message._response_fields_in_python(index, to_tag, extra, content_type, timestamp)
                        except (ValueError, message.SipParseError) as exc:
                            want = type(exc)
                        got = message._RESPONSE_FIELDS(index, to_tag, extra, content_type, timestamp,
                                                       message._CANONICAL_OF)
                        if got is None:
                            declined += 1
                        else:
                            compiled += 1
                            assert got == want, (request, to_tag, extra, content_type, timestamp)
                        response = message.response_to(request, 100 if timestamp else 200, to_tag=to_tag,
                                                       headers=extra, content_type=content_type) \
                            if not isinstance(want, type) else None
                        assert response is None or response.headers._items == want
    assert compiled > 500 and declined > 500


def test_reads_of_whole_messages_are_cut_as_the_buffer_cuts_them() -> None:
    """``StreamFramer.feed`` cuts a read of whole messages (the usual ACK and INVITE in one read) without its
    buffer; any read of a stream, cut anywhere, gives what feeding it octet by octet (the buffer's steps) gives."""
    import random
    stream_parts = [BIC_INVITE, META_407, b"\r\n\r\n", META_200, b"\r\n", BYE, MINIMAL,
                    MINIMAL.replace(b"Content-Length: 0", b"l: 0"), BIC_INVITE]
    rng = random.Random(18)
    for _ in range(200):
        parts = rng.sample(stream_parts, rng.randint(1, len(stream_parts)))
        stream = b"".join(parts)
        slow = StreamFramer()
        want = [x for i in range(len(stream)) for x in slow.feed(stream[i:i + 1])]
        cuts = sorted(rng.sample(range(1, len(stream)), min(len(stream) - 1, rng.randint(0, 3))))
        framer = StreamFramer()
        got = [x for a, b in zip([0, *cuts], [*cuts, len(stream)]) for x in framer.feed(stream[a:b])]
        assert got == want and framer.pings == slow.pings and framer.pongs == slow.pongs
        whole = StreamFramer()
        assert whole.feed(stream) == want and whole.buffered == slow.buffered == framer.buffered


def test_a_read_of_many_small_messages_is_not_copied_once_per_message(monkeypatch) -> None:
    """``StreamFramer.feed`` cuts only the first few whole messages of a read itself (each cut copies the rest of
    the read); a peer's read of thousands of small ones goes through the buffer, in time linear in its length."""
    from wacall.sip import message
    if message._SCANNER is None:
        pytest.skip("the compiled scanner is not built (WACALL_SIPSCAN=0)")
    scanned = []

    class Counting:
        def frame_length(self, head: bytes, end: int) -> int:
            scanned.append(len(head))
            return message._SCANNER_REAL.frame_length(head, end)

    monkeypatch.setattr(message, "_SCANNER_REAL", message._SCANNER, raising=False)
    monkeypatch.setattr(message, "_SCANNER", Counting())
    data = b"A sip:x SIP/2.0\r\nl: 0\r\n\r\n" * 2000
    out = StreamFramer().feed(data)
    assert len(out) == 2000 and b"".join(out) == data
    assert sum(scanned) < 20 * len(data), sum(scanned) / len(data)
