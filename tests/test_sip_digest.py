"""Digest authentication: known-answer vectors, Meta's header shapes, client answers, NonceBook.

Vectors:
* RFC 2617 section 3.5 (MD5, qop=auth).
* RFC 7616 section 3.9.1 (SHA-256 and MD5, qop=auth).
* draft-smith-sipping-auth-examples-01 section 3.1-3.6 (SIP INVITE; MD5 and MD5-sess; no qop, auth,
  auth-int). The auth-int body is the draft's SDP; its MD5 is the draft's
  c1ed018b8ec4a3b170c0921f5b564e48.
"""

from __future__ import annotations

import hashlib

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from wacall.sip.digest import (
    Challenge,
    Credentials,
    NonceBook,
    Verdict,
    answer,
    compute_response,
    parse_challenge,
    parse_credentials,
)
from wacall.sip.message import SipParseError

# --- known answers -----------------------------------------------------------------------------


def test_rfc2617_section_3_5() -> None:
    assert compute_response(
        username="Mufasa", realm="testrealm@host.com", password="Circle Of Life", method="GET",
        uri="/dir/index.html", nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", qop="auth", nc=1,
        cnonce="0a4f113b",
    ) == "6629fae49393a05397450978507c4ef1"


RFC7616 = dict(
    username="Mufasa", realm="http-auth@example.org", password="Circle of Life", method="GET",
    uri="/dir/index.html", nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", qop="auth",
    nc="00000001", cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ",
)


def test_rfc7616_section_3_9_1_sha256() -> None:
    assert compute_response(**RFC7616, algorithm="SHA-256") == \
        "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


def test_rfc7616_section_3_9_1_md5() -> None:
    assert compute_response(**RFC7616, algorithm="MD5") == "8ca523f5e9506fed4657c9700eebdbec"


def test_rfc7616_header_parse() -> None:
    ch = parse_challenge(
        'Digest realm="http-auth@example.org", qop="auth, auth-int", algorithm=SHA-256, '
        'nonce="7ypf/xlj9XXwfDPEoM4URrv/xwf94BcCAzFZH4GiTo0v", '
        'opaque="FQhe/qaU925kfnzjCev0ciny7QMkPqMAFRtzCUYo5tdS"'
    )
    assert ch.algorithm == "SHA-256" and ch.qop_options == ["auth", "auth-int"]
    creds = answer(ch, username="Mufasa", password="Circle of Life", method="GET", uri="/dir/index.html",
                   cnonce="f2/wE4q74E6zIJEtWaHKaf5wv/H5QzzpXusqGemxURZJ")
    assert creds.qop == "auth" and creds.nc == "00000001"
    assert creds.response == "753927fa0e85d155564e2e272a28d1802ca10daf4496794697cf8db5856cb6c1"


BOB = dict(username="bob", realm="biloxi.com", password="zanzibar", method="INVITE", uri="sip:bob@biloxi.com",
           nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093")
BOB_SDP = (
    b"v=0\r\n"
    b"o=bob 2890844526 2890844526 IN IP4 media.biloxi.com\r\n"
    b"s=-\r\n"
    b"c=IN IP4 media.biloxi.com\r\n"
    b"t=0 0\r\n"
    b"m=audio 49170 RTP/AVP 0\r\n"
    b"a=rtpmap:0 PCMU/8000\r\n"
    b"m=video 51372 RTP/AVP 31\r\n"
    b"a=rtpmap:31 H261/90000\r\n"
    b"m=video 53000 RTP/AVP 32\r\n"
    b"a=rtpmap:32 MPV/90000\r\n"
)


@pytest.mark.parametrize(("section", "algorithm", "qop", "expected"), [
    ("3.1", "MD5", None, "bf57e4e0d0bffc0fbaedce64d59add5e"),
    ("3.2/3.3", "MD5", "auth", "89eb0059246c02b2f6ee02c7961d5ea3"),
    ("3.4", "MD5-sess", "auth", "e4e4ea61d186d07a92c9e1f6919902e9"),
    ("3.5", "MD5", "auth-int", "bdbeebb2da6adb6bca02599c2239e192"),
    ("3.6", "MD5-sess", "auth-int", "91984da2d8663716e91554859c22ca70"),
])
def test_sip_auth_examples_draft(section: str, algorithm: str, qop: str | None, expected: str) -> None:
    assert hashlib.md5(BOB_SDP).hexdigest() == "c1ed018b8ec4a3b170c0921f5b564e48"
    extra = {} if qop is None else {"qop": qop, "nc": 1, "cnonce": "0a4f113b"}
    assert compute_response(**BOB, algorithm=algorithm, body=BOB_SDP, **extra) == expected


def test_draft_via_answer() -> None:
    ch = parse_challenge('Digest realm="biloxi.com", qop="auth,auth-int", algorithm=MD5-sess, '
                         'nonce="dcd98b7102dd2f0e8b11d0f600bfb0c093", opaque="5ccc069c403ebaf9f0171e9517f40e41"')
    creds = answer(ch, username="bob", password="zanzibar", method="INVITE", uri="sip:bob@biloxi.com",
                   cnonce="0a4f113b")
    assert creds.response == "e4e4ea61d186d07a92c9e1f6919902e9"
    assert creds.opaque == "5ccc069c403ebaf9f0171e9517f40e41" and creds.algorithm == "MD5-sess"
    only_int = Challenge("biloxi.com", BOB["nonce"], algorithm="MD5", qop="auth-int")
    creds = answer(only_int, username="bob", password="zanzibar", method="INVITE", uri="sip:bob@biloxi.com",
                   cnonce="0a4f113b", body=BOB_SDP)
    assert creds.qop == "auth-int" and creds.response == "bdbeebb2da6adb6bca02599c2239e192"
    no_qop = Challenge("biloxi.com", BOB["nonce"], "5ccc069c403ebaf9f0171e9517f40e41", qop=None)
    creds = answer(no_qop, username="bob", password="zanzibar", method="INVITE", uri="sip:bob@biloxi.com")
    assert creds.response == "bf57e4e0d0bffc0fbaedce64d59add5e"
    assert creds.qop is None and creds.nc is None and creds.cnonce is None


def test_unsupported_algorithm_and_qop_raise_value_error() -> None:
    with pytest.raises(ValueError):
        compute_response(**BOB, algorithm="SHA-1")
    with pytest.raises(ValueError):
        compute_response(**BOB, qop="auth-conf", nc=1, cnonce="x")
    with pytest.raises(ValueError):
        answer(Challenge("r", "n", qop="auth-conf"), username="u", password="p", method="INVITE", uri="sip:x")


# --- Meta's header shapes (calling-wire-spec section 8.2) --------------------------------------

META_CHALLENGE = 'Digest realm="wa.meta.vc",nonce="419ac2415577f8e1",opaque="440badfc05072367",algorithm=MD5,qop="auth"'
META_CREDS = ('Digest username="17125550259", realm="wa.meta.vc", nonce="419ac2415577f8e1", '
              'uri="sip:+12195550714@wa.meta.vc;transport=tls", response="{response}", algorithm=MD5, '
              'cnonce="/mVZtYFCEj65YQJCrBEAAg", opaque="440badfc05072367", qop=auth, nc=00000001')


def test_challenge_renders_like_meta() -> None:
    ch = Challenge("wa.meta.vc", "419ac2415577f8e1", "440badfc05072367")
    assert ch.header_value() == META_CHALLENGE
    assert parse_challenge(META_CHALLENGE) == ch
    stale = Challenge("wa.meta.vc", "n", None, stale=True).header_value()
    assert stale == 'Digest realm="wa.meta.vc",nonce="n",algorithm=MD5,qop="auth",stale=TRUE'
    assert parse_challenge(stale).stale
    # a value to escape takes the general way (the usual one is written without _q calls)
    odd = Challenge('wa"meta', "n\\1", "o").header_value()
    assert odd == 'Digest realm="wa\\"meta",nonce="n\\\\1",opaque="o",algorithm=MD5,qop="auth"'
    assert parse_challenge(odd) == Challenge('wa"meta', "n\\1", "o")


def test_credentials_render_like_meta() -> None:
    ch = parse_challenge(META_CHALLENGE)
    creds = answer(ch, username="17125550259", password="s3cret", method="INVITE",
                   uri="sip:+12195550714@wa.meta.vc;transport=tls", cnonce="/mVZtYFCEj65YQJCrBEAAg")
    expected_response = compute_response(
        username="17125550259", realm="wa.meta.vc", password="s3cret", method="INVITE",
        uri="sip:+12195550714@wa.meta.vc;transport=tls", nonce="419ac2415577f8e1", qop="auth", nc=1,
        cnonce="/mVZtYFCEj65YQJCrBEAAg")
    assert creds.header_value() == META_CREDS.format(response=expected_response)
    assert parse_credentials(creds.header_value()) == creds


def test_parse_credentials_tolerant() -> None:
    creds = parse_credentials(
        'digest  username = "17125550259" ,realm="wa.meta.vc",nonce="abc",  uri="sip:+1@h", '
        'response="0123",cnonce=xyz,qop="auth",nc=00000002,userhash=false,  extension="a, b"  '
    )
    assert creds == Credentials(username="17125550259", realm="wa.meta.vc", nonce="abc", uri="sip:+1@h",
                                response="0123", cnonce="xyz", qop="auth", nc="00000002")
    assert creds.algorithm is None  # absent means MD5 (Meta's UIC retry omits it)
    escaped = parse_credentials(r'Digest username="a\"b", realm="r"')
    assert escaped.username == 'a"b'


@pytest.mark.parametrize("value", ["Basic dXNlcjpwYXNz", 'Digest realm="unterminated', "Digest realm",
                                   'Digest realm="a" nonce="b"', "Digest =x"])
def test_parse_rejects(value: str) -> None:
    with pytest.raises(SipParseError):
        parse_credentials(value)


def test_parse_challenge_requires_realm_and_nonce() -> None:
    with pytest.raises(SipParseError):
        parse_challenge('Digest realm="wa.meta.vc"')
    ch = parse_challenge('Digest realm="x", nonce="y"')
    assert ch.algorithm == "MD5" and ch.qop is None and ch.opaque is None


# --- NonceBook ---------------------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.t = 1000.0

    def __call__(self) -> float:
        return self.t


URI = "sip:+17015558857@meta-voip.example.com"


def creds_for(ch: Challenge, *, password: str = "pw", nc: int = 1, method: str = "INVITE") -> Credentials:
    return answer(ch, username="12195550714", password=password, method=method, uri=URI, nc=nc)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def book(clock: Clock) -> NonceBook:
    return NonceBook("wa.meta.vc", now=clock)


def test_issue_looks_like_meta(book: NonceBook) -> None:
    ch = book.issue()
    assert ch.realm == "wa.meta.vc" and ch.algorithm == "MD5" and ch.qop == "auth" and not ch.stale
    for value in (ch.nonce, ch.opaque):
        assert value is not None and len(value) == 16 and int(value, 16) >= 0
    assert book.issue().nonce != ch.nonce


def test_ok_and_nc_must_increase(book: NonceBook) -> None:
    ch = book.issue()
    assert book.verify(creds_for(ch), method="INVITE", password="pw") is Verdict.OK
    assert book.verify(creds_for(ch), method="INVITE", password="pw") is Verdict.REPLAYED_NC
    assert book.verify(creds_for(ch, nc=3), method="INVITE", password="pw") is Verdict.OK
    assert book.verify(creds_for(ch, nc=2), method="INVITE", password="pw") is Verdict.REPLAYED_NC
    assert book.verify(creds_for(ch, nc=4, method="BYE"), method="BYE", password="pw") is Verdict.OK


def test_wrong_password_and_tampering(book: NonceBook) -> None:
    ch = book.issue()
    assert book.verify(creds_for(ch, password="nope"), method="INVITE", password="pw") is Verdict.BAD_RESPONSE
    good = creds_for(ch)
    assert book.verify(good, method="BYE", password="pw") is Verdict.BAD_RESPONSE  # method is covered
    other_uri = Credentials(**{**good.__dict__, "uri": "sip:other@example.com"})
    assert book.verify(other_uri, method="INVITE", password="pw") is Verdict.BAD_RESPONSE
    sha = Credentials(**{**good.__dict__, "algorithm": "SHA-256"})
    assert book.verify(sha, method="INVITE", password="pw") is Verdict.BAD_RESPONSE
    # a failed attempt did not consume the nonce-count
    assert book.verify(good, method="INVITE", password="pw") is Verdict.OK


def test_stale_after_lifetime(book: NonceBook, clock: Clock) -> None:
    ch = book.issue()
    clock.t += 299
    assert book.verify(creds_for(ch), method="INVITE", password="pw") is Verdict.OK
    clock.t += 2
    assert book.verify(creds_for(ch, nc=2), method="INVITE", password="pw") is Verdict.STALE
    # only a correct response earns STALE (RFC 2617 section 3.2.1)
    assert book.verify(creds_for(ch, nc=3, password="x"), method="INVITE", password="pw") is Verdict.BAD_RESPONSE
    assert book.issue(stale=True).stale


def test_unknown_nonce_realm_opaque(book: NonceBook) -> None:
    foreign = Challenge("wa.meta.vc", "0123456789abcdef", "fedcba9876543210")
    assert book.verify(creds_for(foreign), method="INVITE", password="pw") is Verdict.UNKNOWN_NONCE
    ch = book.issue()
    bad_realm = Credentials(**{**creds_for(ch).__dict__, "realm": "other.example"})
    assert book.verify(bad_realm, method="INVITE", password="pw") is Verdict.BAD_REALM
    assert book.verify(creds_for(ch), method="INVITE", password="pw", expected_realm="other") is Verdict.BAD_REALM
    bad_opaque = Credentials(**{**creds_for(ch).__dict__, "opaque": "0000000000000000"})
    assert book.verify(bad_opaque, method="INVITE", password="pw") is Verdict.BAD_OPAQUE
    no_opaque = Credentials(**{**creds_for(ch).__dict__, "opaque": None})
    assert book.verify(no_opaque, method="INVITE", password="pw") is Verdict.BAD_OPAQUE


@pytest.mark.parametrize("field", ["username", "realm", "nonce", "uri", "response", "cnonce", "nc", "qop"])
def test_missing_params(book: NonceBook, field: str) -> None:
    creds = Credentials(**{**creds_for(book.issue()).__dict__, field: None})
    assert book.verify(creds, method="INVITE", password="pw") is Verdict.MISSING_PARAMS


@pytest.mark.parametrize(("field", "value"), [("nc", "1"), ("nc", "zzzzzzzz"), ("qop", "auth-conf")])
def test_malformed_params(book: NonceBook, field: str, value: str) -> None:
    creds = Credentials(**{**creds_for(book.issue()).__dict__, field: value})
    assert book.verify(creds, method="INVITE", password="pw") is Verdict.MISSING_PARAMS


def test_meta_style_retry_without_algorithm(book: NonceBook) -> None:
    ch = book.issue()
    creds = creds_for(ch)
    creds.algorithm = None  # calling-wire-spec 8.3: Meta's retry omits algorithm (MD5)
    value = creds.header_value()
    assert "algorithm" not in value
    assert book.verify(parse_credentials(value), method="INVITE", password="pw") is Verdict.OK


def test_auth_int_does_not_crash(clock: Clock) -> None:
    book = NonceBook("wa.meta.vc", qop="auth,auth-int", now=clock)
    ch = book.issue()
    only_int = Challenge(ch.realm, ch.nonce, ch.opaque, qop="auth-int")
    creds = answer(only_int, username="u", password="pw", method="INVITE", uri=URI, body=b"v=0\r\n")
    assert book.verify(creds, method="INVITE", password="pw", body=b"v=0\r\n") is Verdict.OK
    creds.nc = "00000002"
    assert book.verify(creds, method="INVITE", password="pw", body=b"tampered") is Verdict.BAD_RESPONSE
    strict = NonceBook("wa.meta.vc", now=clock)  # offers auth only
    ch2 = strict.issue()
    creds = answer(Challenge(ch2.realm, ch2.nonce, ch2.opaque, qop="auth-int"), username="u", password="pw",
                   method="INVITE", uri=URI)
    assert strict.verify(creds, method="INVITE", password="pw") is Verdict.MISSING_PARAMS


def test_sha256_book(clock: Clock) -> None:
    book = NonceBook("wa.meta.vc", algorithm="SHA-256", now=clock)
    ch = book.issue()
    assert "algorithm=SHA-256" in ch.header_value()
    creds = answer(parse_challenge(ch.header_value()), username="u", password="pw", method="INVITE", uri=URI)
    assert len(creds.response or "") == 64
    assert book.verify(creds, method="INVITE", password="pw") is Verdict.OK
    with pytest.raises(ValueError):
        NonceBook("r", algorithm="SHA-1")


def test_no_qop_book(clock: Clock) -> None:
    book = NonceBook("wa.meta.vc", qop=None, now=clock)
    ch = book.issue()
    assert "qop" not in ch.header_value()
    creds = answer(ch, username="u", password="pw", method="INVITE", uri=URI)
    assert book.verify(creds, method="INVITE", password="pw") is Verdict.OK


def test_memory_is_bounded(clock: Clock) -> None:
    book = NonceBook("wa.meta.vc", max_nonces=10, lifetime=300, now=clock)
    first = book.issue()
    for _ in range(50):
        book.issue()
    assert len(book) == 10
    assert book.verify(creds_for(first), method="INVITE", password="pw") is Verdict.UNKNOWN_NONCE
    # expired nonces are purged too (after a grace period that keeps STALE answerable)
    clock.t += 301
    late = book.verify(creds_for(book.issue()), method="INVITE", password="pw")
    assert late is Verdict.OK
    assert len(book) == 10
    clock.t += 1000
    book.issue()
    assert len(book) == 1


def test_verdict_is_a_str() -> None:
    assert Verdict.OK == "ok" and Verdict("stale") is Verdict.STALE


def _auth_outcome(parse, value):
    try:
        return list(parse(value).items())            # the order too: the same dict, filled the same way
    except SipParseError as exc:
        return exc.reason


def _read_by_the_loop(value: str) -> dict[str, str]:
    """:func:`_parse_auth_params` without the compiled reading: the scheme, then the character loop (the
    reference)."""
    from wacall.sip.digest import _parse_auth_params_loop
    scheme, _, rest = value.strip().partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError("Bad Request - Unsupported authentication scheme")
    return _parse_auth_params_loop(rest)


_USUAL_CREDENTIALS = [
    # SIPp's [authentication] (bench/sip_flows.py, tests/data/sipp)
    'Digest username="+15550001111",realm="wa.meta.vc",cnonce="6b8b4567",nc=00000001,qop=auth,'
    'uri="sip:+15550002222@wa.meta.vc;transport=tls",nonce="0123456789abcdef",response="00112233445566778899aabbcc'
    'ddeeff",algorithm=MD5,opaque="fedcba9876543210"',
    # Meta's sample (calling-wire-spec section 8.3) and what Credentials.header_value renders
    'Digest username="17125550259", realm="wa.meta.vc", nonce="419ac2415577f8e1", '
    'uri="sip:+12195550714@wa.meta.vc;transport=tls", response="d5ba0f87b2d5d4a1b9e4d3c8", algorithm=MD5, '
    'cnonce="/mVZtYFCEj65YQJCrBEAAg", opaque="5ea4a4b4e3a1b1c1", qop=auth, nc=00000001',
    # a challenge like Meta's 407
    'Digest realm="wa.meta.vc",nonce="0123456789abcdef",opaque="fedcba9876543210",algorithm=MD5,qop="auth"',
    'digest  username = "17125550259" ,realm="wa.meta.vc",nonce="abc",  uri="sip:+1@h", response="0123",'
    'cnonce=xyz,qop="auth",nc=00000002,userhash=false,  extension="a, b" , ,',
    "DIGEST Realm=x,REALM=y,a=b=c,Nonce=\"\",x.y-Z!%*_+`'~=1",
]


def test_the_compiled_reading_takes_the_usual_credentials() -> None:
    """SIPp's, baresip's and Meta's shapes are read in C (not handed to Python), into what the loop reads."""
    from wacall.sip import digest
    if digest._AUTH_PARAMS_C is None:
        pytest.skip("the compiled scanner is not built")
    for value in _USUAL_CREDENTIALS:
        assert digest._AUTH_PARAMS_C(value) is not None, value
        assert _auth_outcome(digest._AUTH_PARAMS_C, value) == _auth_outcome(_read_by_the_loop, value)
    assert digest._AUTH_PARAMS_C(_USUAL_CREDENTIALS[-1]) == {"realm": "y", "a": "b=c", "nonce": "", "x.y-z!%*_+`'~": "1"}


_HOSTILE_CREDENTIALS = [
    "", "Digest", "Digest ", " Digest a=b", "Digest a=b ", "Digest a=b\t", "Digest\ta=b", "Digestx a=b",
    "Basic dXNlcjpwYXNz", 'Digest realm="unterminated', "Digest realm", 'Digest realm="a" nonce="b"', "Digest =x",
    'Digest a="x\\"y"', 'Digest a="x\\\\"', 'Digest a="x"b=c', 'Digest a=b"c"', "Digest a=b c=d", "Digest a=,b=c",
    "Digest a=", "Digest a= ", "Digest ,", "Digest ,,, ,", "Digest a=b,,", 'Digest a="\r\n"', "Digest a=b\r\n",
    "Digest a=\x00", "Digest a=b\x7f", "Digest a=\x1cb", "Digest a=\x0bb", "Digest a=b\x1c", 'Digest a="é"',
    "Digest a=é", "Digest é=a", "Digest a\u00a0=b", "Digest a=b\u00a0", "Digest a=b;c=d", "Digest a:b",
    "Digest (a)=b", 'Digest a= "b" ,c =d', "Digest a = b , c", "Digest a=b, =c", 'Digest a=""""',
    "Digest " + "n" * 20 + "=v", "Digest " + "USERNAME" + "=v", "DiGeSt uri=sip:a@b;c=d",
]


@pytest.mark.parametrize("value", _HOSTILE_CREDENTIALS + _USUAL_CREDENTIALS)
def test_credentials_read_in_c_agree_with_the_loop(value: str) -> None:
    """Malformed, hostile and odd values: the compiled reading gives the loop's parameters or hands the value to
    it (the same parameters, or the same error, hence the same 4xx answer); parse_credentials agrees."""
    from wacall.sip.digest import _parse_auth_params
    assert _auth_outcome(_parse_auth_params, value) == _auth_outcome(_read_by_the_loop, value)


@settings(max_examples=3000, deadline=None)
@given(st.lists(st.sampled_from(["username", "realm", "nonce", "URI", "=", " = ", '"', '"a b"', '"x\\"y"', "abc",
                                 ",", " , ", ",,", " ", "\t", "é", '""', "a=b", "sip:+1@wa.meta.vc;transport=tls",
                                 "\r", "\x00", "\x1f", "\x7f", "\\", "'", "(", ";", "nc=00000001"]),
                max_size=12).map("".join),
       st.sampled_from(["Digest ", "digest ", "DIGEST  ", "Digest\t", "Basic ", " Digest ", ""]),
       st.sampled_from(["", " ", "\t", ",", "\r\n"]))
@example('username="+1",realm="wa.meta.vc",nonce="n",uri="sip:+2@wa.meta.vc;transport=tls",response="r",algorithm=MD5',
         "Digest ", "")
@example('username = "a" , , nc=00000001,qop=auth ,', "Digest ", "")
@example('username="a\\"b",realm=x', "Digest ", "")
@example('a="x"b=c', "Digest ", "")
@example('a=b"c"', "Digest ", "")
@example('a=b c=d', "Digest ", "")
@example('a="unterminated', "Digest ", "")
def test_auth_parameters_read_in_c_agree_with_the_loop(rest, scheme, tail):
    """The usual credentials are read in C (sipscan.c); the character loop is the reference (quoted-pairs, odd
    separators, errors): the same parameters in the same order, or the same error."""
    from wacall.sip.digest import _parse_auth_params
    value = scheme + rest + tail
    assert _auth_outcome(_parse_auth_params, value) == _auth_outcome(_read_by_the_loop, value)


def test_remembered_ha1_follows_the_password_and_the_algorithm() -> None:
    """H(A1) is hashed once per user, realm, password and algorithm and then remembered: each answer still
    equals the response written out from the RFC 2617 formula (a changed password or algorithm is not
    answered from the memo)."""
    def written_out(algorithm, password):
        h = {"MD5": hashlib.md5, "SHA-256": hashlib.sha256}[algorithm]
        hx = lambda text: h(text.encode()).hexdigest()      # noqa: E731
        ha1, ha2 = hx(f"+1555:wa.meta.vc:{password}"), hx("INVITE:sip:+1666@wa.meta.vc")
        return hx(f"{ha1}:n0nce:00000001:c:auth:{ha2}")
    for algorithm, password in [("MD5", "pw1"), ("MD5", "pw1"), ("MD5", "pw2"), ("SHA-256", "pw2"), ("MD5", "pw1")]:
        assert compute_response(username="+1555", realm="wa.meta.vc", password=password, method="INVITE",
                                uri="sip:+1666@wa.meta.vc", nonce="n0nce", algorithm=algorithm, qop="auth",
                                nc=1, cnonce="c") == written_out(algorithm, password)
