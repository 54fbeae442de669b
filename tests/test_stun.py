"""STUN codec: RFC 5769 test vectors, framing errors, and cross-encoding with aioice.stun."""

from __future__ import annotations

import struct

import pytest
from aioice import stun as aiostun
from hypothesis import given, settings
from hypothesis import strategies as st

from wacall.media.stun import (
    MAGIC_COOKIE,
    Attr,
    StunClass,
    StunError,
    StunMessage,
    StunMethod,
    binding_request,
    check_fingerprint,
    check_integrity,
    classify_datagram,
    is_stun,
    parse,
    peek_header,
)

# RFC 5769 section 2 (all three use space padding, on purpose).
PASSWORD = b"VOkJxbRl1RmTxUk/WvJxBt"
TXID = bytes.fromhex("b7e7a701bc34d686fa87dfae")
SAMPLE_REQUEST = bytes.fromhex(
    "00010058" "2112a442" "b7e7a701bc34d686fa87dfae"
    "80220010" "5354554e207465737420636c69656e74"
    "00240004" "6e0001ff"
    "80290008" "932ff9b151263b36"
    "00060009" "6576746a3a68367659202020"
    "00080014" "9aeaa70cbfd8cb56781ef2b5b2d3f249c1b571a2"
    "80280004" "e57a3bcf"
)
SAMPLE_IPV4_RESPONSE = bytes.fromhex(
    "0101003c" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"
    "00200008" "0001a147e112a643"
    "00080014" "2b91f599fd9e90c38c7489f92af9ba53f06be7d7"
    "80280004" "c07d4c96"
)
SAMPLE_IPV6_RESPONSE = bytes.fromhex(
    "01010048" "2112a442" "b7e7a701bc34d686fa87dfae"
    "8022000b" "7465737420766563746f7220"
    "00200014" "0002a1470113a9faa5d3f179bc25f4b5bed2b9d9"
    "00080014" "a382954e4be67bf11784c97c8292c275bfe3ed41"
    "80280004" "c8fb0b4c"
)


def test_vectors_have_rfc_lengths() -> None:
    assert (len(SAMPLE_REQUEST), len(SAMPLE_IPV4_RESPONSE), len(SAMPLE_IPV6_RESPONSE)) == (108, 80, 92)


# --- RFC 5769 ------------------------------------------------------------------------------------


def test_rfc5769_sample_request() -> None:
    m = parse(SAMPLE_REQUEST)
    assert (m.method, m.message_class, m.transaction_id) == (StunMethod.BINDING, StunClass.REQUEST, TXID)
    assert [t for t, _ in m.attributes] == [
        Attr.SOFTWARE, Attr.PRIORITY, Attr.ICE_CONTROLLED, Attr.USERNAME, Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT
    ]
    assert m.get(Attr.SOFTWARE) == "STUN test client"
    assert m.priority == 0x6E0001FF
    assert m.ice_controlled == 0x932FF9B151263B36
    assert m.ice_controlling is None
    assert m.username == "evtj:h6vY"
    assert not m.use_candidate
    assert check_integrity(SAMPLE_REQUEST, PASSWORD)
    assert not check_integrity(SAMPLE_REQUEST, b"wrong")
    assert check_fingerprint(SAMPLE_REQUEST)
    assert m.encode(PASSWORD, pad_byte=0x20) == SAMPLE_REQUEST


@pytest.mark.parametrize(
    ("data", "host"),
    [(SAMPLE_IPV4_RESPONSE, "192.0.2.1"), (SAMPLE_IPV6_RESPONSE, "2001:db8:1234:5678:11:2233:4455:6677")],
)
def test_rfc5769_sample_responses(data: bytes, host: str) -> None:
    m = parse(data)
    assert (m.method, m.message_class, m.transaction_id) == (StunMethod.BINDING, StunClass.SUCCESS, TXID)
    assert m.get(Attr.SOFTWARE) == "test vector"
    assert m.xor_mapped_address == (host, 32853)
    assert check_integrity(data, PASSWORD)
    assert check_fingerprint(data)
    assert m.encode(PASSWORD, pad_byte=0x20) == data
    # Built from scratch, too.
    built = StunMessage(StunMethod.BINDING, StunClass.SUCCESS, TXID)
    built.add(Attr.SOFTWARE, "test vector").add(Attr.XOR_MAPPED_ADDRESS, (host, 32853))
    assert built.encode(PASSWORD, pad_byte=0x20) == data


@pytest.mark.parametrize("data", [SAMPLE_REQUEST, SAMPLE_IPV4_RESPONSE, SAMPLE_IPV6_RESPONSE])
def test_any_flipped_byte_breaks_the_checks(data: bytes) -> None:
    for i in (21, 30, len(data) - 30):  # an attribute value, before MESSAGE-INTEGRITY
        bad = bytearray(data)
        bad[i] ^= 0x01
        assert not check_integrity(bytes(bad), PASSWORD)
        assert not check_fingerprint(bytes(bad))
    bad = bytearray(data)
    bad[-1] ^= 0x01
    assert not check_fingerprint(bytes(bad))
    assert check_integrity(bytes(bad), PASSWORD)  # FINGERPRINT is outside the HMAC


# --- encoding ------------------------------------------------------------------------------------


def test_encode_integrity_and_fingerprint_options() -> None:
    m = binding_request("a:b", priority=1, controlling=2, use_candidate=True)
    both = m.encode(b"key")
    assert check_integrity(both, b"key") and check_fingerprint(both)
    assert [t for t, _ in parse(both).attributes][-2:] == [Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    only_mi = m.encode(b"key", fingerprint=False)
    assert check_integrity(only_mi, b"key") and not check_fingerprint(only_mi)
    only_fp = m.encode()
    assert not check_integrity(only_fp, b"key") and check_fingerprint(only_fp)
    bare = m.encode(fingerprint=False)
    assert len(bare) == 20 + 8 + 8 + 12 + 4  # USERNAME(3 → 4), PRIORITY, ICE-CONTROLLING, USE-CANDIDATE
    assert not check_integrity(bare, b"key") and not check_fingerprint(bare)


def test_encode_recomputes_integrity_and_fingerprint_from_arguments() -> None:
    m = parse(SAMPLE_REQUEST)  # carries MI and FINGERPRINT attributes
    out = m.encode(b"another key")
    assert check_integrity(out, b"another key") and not check_integrity(out, PASSWORD)
    assert check_fingerprint(out)
    assert [t for t, _ in parse(out).attributes].count(Attr.MESSAGE_INTEGRITY) == 1
    assert Attr.MESSAGE_INTEGRITY not in [t for t, _ in parse(m.encode(fingerprint=False)).attributes]


@pytest.mark.parametrize(
    ("message_class", "wire_type"),
    [(StunClass.REQUEST, 0x0001), (StunClass.INDICATION, 0x0011), (StunClass.SUCCESS, 0x0101), (StunClass.ERROR, 0x0111)],
)
def test_message_type_bits(message_class: StunClass, wire_type: int) -> None:
    data = StunMessage(StunMethod.BINDING, message_class).encode(fingerprint=False)
    assert struct.unpack("!H", data[:2])[0] == wire_type
    assert parse(data).message_class == message_class


@pytest.mark.parametrize("method", [0x001, 0x003, 0x00F, 0x010, 0x07F, 0x080, 0xABC, 0xFFF])
def test_methods_round_trip(method: int) -> None:
    for c in StunClass:
        m = parse(StunMessage(method, c).encode())
        assert (m.method, m.message_class) == (method, c)


def test_unknown_attributes_error_code_and_order_are_preserved() -> None:
    m = StunMessage(StunMethod.BINDING, StunClass.ERROR)
    m.add(0xC057, b"\x00\x01\x00\x02").add(Attr.ERROR_CODE, (487, "Role Conflict"))
    m.add(0x7777, b"abc").add(Attr.UNKNOWN_ATTRIBUTES, (0x7777, 0x0042, 0x0011))
    back = parse(m.encode(b"k"))
    assert back.attributes[:4] == m.attributes
    assert back.error_code == (487, "Role Conflict")
    assert back.unknown_required() == (0x7777,)
    assert m.unknown_required() == (0x7777,)
    assert back.get(0x1234, "dflt") == "dflt"


def test_xor_mapped_address_ipv6_with_scope_and_bounds() -> None:
    m = StunMessage(StunMethod.BINDING, StunClass.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, ("fe80::1%eth0", 65535))
    assert parse(m.encode()).xor_mapped_address == ("fe80::1", 65535)
    m = StunMessage(StunMethod.BINDING, StunClass.SUCCESS).add(Attr.XOR_MAPPED_ADDRESS, ("0.0.0.0", 0))
    assert parse(m.encode()).xor_mapped_address == ("0.0.0.0", 0)


@pytest.mark.parametrize(
    ("attr", "value"),
    [
        (Attr.USERNAME, 5),
        (Attr.SOFTWARE, b"x"),
        (Attr.PRIORITY, "1"),
        (Attr.PRIORITY, 1 << 32),
        (Attr.ICE_CONTROLLING, -1),
        (Attr.ICE_CONTROLLED, None),
        (Attr.XOR_MAPPED_ADDRESS, ("not an ip", 1)),
        (Attr.XOR_MAPPED_ADDRESS, ("1.2.3.4", 70000)),
        (Attr.XOR_MAPPED_ADDRESS, "1.2.3.4"),
        (Attr.ERROR_CODE, (200, "OK")),
        (Attr.ERROR_CODE, ("487", "x")),
        (Attr.ERROR_CODE, (487,)),
        (Attr.UNKNOWN_ATTRIBUTES, ("a",)),
        (Attr.UNKNOWN_ATTRIBUTES, (1 << 16,)),
        (0x7000, "not bytes"),
        (0x7000, bytes(0x10000)),
    ],
)
def test_encode_rejects_bad_values(attr: int, value: object) -> None:
    with pytest.raises(StunError):
        StunMessage(StunMethod.BINDING, StunClass.REQUEST).add(attr, value).encode()  # type: ignore[arg-type]


def test_encode_rejects_bad_method_and_transaction_id() -> None:
    with pytest.raises(StunError):
        StunMessage(0x1000, StunClass.REQUEST).encode()
    with pytest.raises(StunError):
        StunMessage(StunMethod.BINDING, StunClass.REQUEST, b"short")


# --- parsing errors ------------------------------------------------------------------------------


def _frame(body: bytes, *, type_: int = 0x0001, cookie: int = MAGIC_COOKIE, length: int | None = None) -> bytes:
    return struct.pack("!HHI", type_, len(body) if length is None else length, cookie) + TXID + body


def _attr(t: int, v: bytes) -> bytes:
    return struct.pack("!HH", t, len(v)) + v + bytes(-len(v) % 4)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        SAMPLE_REQUEST[:19],
        _frame(b"", type_=0x4001),  # leading bits
        _frame(b"", cookie=0x2112A443),
        _frame(b"", length=4),  # length > datagram
        _frame(b"\x00" * 4, length=0),  # datagram > length
        _frame(b"\x00" * 2, length=2),  # not a multiple of 4
        _frame(struct.pack("!HH", 0x0006, 8) + b"abcd"),  # value overruns
        _frame(_attr(Attr.PRIORITY, b"\x00\x00")),
        _frame(_attr(Attr.USE_CANDIDATE, b"\x00")),
        _frame(_attr(Attr.ICE_CONTROLLING, b"\x00" * 4)),
        _frame(_attr(Attr.MESSAGE_INTEGRITY, b"\x00" * 19)),
        _frame(_attr(Attr.FINGERPRINT, b"\x00" * 8)),
        _frame(_attr(Attr.XOR_MAPPED_ADDRESS, b"\x00\x01")),
        _frame(_attr(Attr.XOR_MAPPED_ADDRESS, b"\x00\x03\x00\x00" + b"\x00" * 4)),
        _frame(_attr(Attr.XOR_MAPPED_ADDRESS, b"\x00\x01\x00\x00" + b"\x00" * 16)),
        _frame(_attr(Attr.XOR_MAPPED_ADDRESS, b"\x00\x02\x00\x00" + b"\x00" * 4)),
        _frame(_attr(Attr.USERNAME, b"\xff\xfe")),
        _frame(_attr(Attr.ERROR_CODE, b"\x00\x00\x04")),
        _frame(_attr(Attr.ERROR_CODE, b"\x00\x00\x04\x57\xff")),
        _frame(_attr(Attr.UNKNOWN_ATTRIBUTES, b"\x00\x01\x00")),
        _frame(_attr(Attr.FINGERPRINT, b"\x00" * 4) + _attr(0x8022, b"late")),
    ],
)
def test_parse_rejects_malformed(data: bytes) -> None:
    with pytest.raises(StunError):
        parse(data)
    assert not check_integrity(data, b"k")
    assert not check_fingerprint(data)


def test_parse_drops_attributes_after_message_integrity_except_fingerprint() -> None:
    body = _attr(Attr.USERNAME, b"a:b") + _attr(Attr.MESSAGE_INTEGRITY, bytes(20))
    body += _attr(Attr.USE_CANDIDATE, b"") + _attr(Attr.FINGERPRINT, bytes(4))
    m = parse(_frame(body))
    assert [t for t, _ in m.attributes] == [Attr.USERNAME, Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT]
    assert not m.use_candidate


def test_fingerprint_must_be_last_and_integrity_must_be_20_bytes() -> None:
    m = binding_request("a:b").encode(b"k", fingerprint=False)
    # A FINGERPRINT attribute that is not last does not count.
    no_fp_last = _frame(_attr(Attr.FINGERPRINT, bytes(4)) + _attr(Attr.USERNAME, b"a:b"))
    assert not check_fingerprint(no_fp_last)
    assert not check_fingerprint(m)
    assert not check_integrity(binding_request("a:b").encode(), b"k")


# --- demultiplexing ------------------------------------------------------------------------------


def test_is_stun_and_classify() -> None:
    assert is_stun(SAMPLE_REQUEST) and classify_datagram(SAMPLE_REQUEST) == "stun"
    assert not is_stun(SAMPLE_REQUEST[:19])
    assert not is_stun(b"\x04" + SAMPLE_REQUEST[1:])
    no_cookie = SAMPLE_REQUEST[:4] + b"\x00\x00\x00\x00" + SAMPLE_REQUEST[8:]
    assert not is_stun(no_cookie) and classify_datagram(no_cookie) == "other"
    assert classify_datagram(b"") == "other"
    assert classify_datagram(b"\x10abc") == "zrtp"
    assert classify_datagram(b"\x16\xfe\xfd") == "dtls"  # DTLS handshake
    assert classify_datagram(b"\x40\x00") == "turn"
    assert classify_datagram(b"\x80\x6f") == "rtp"
    assert classify_datagram(b"\xbf") == "rtp"
    assert classify_datagram(b"\xc0") == "other"
    assert classify_datagram(b"\x05") == "other"


def test_peek_header() -> None:
    broken = SAMPLE_REQUEST[:-1] + b"\x00" * 3  # wrong length field, but STUN-shaped
    assert peek_header(broken) == (StunMethod.BINDING, StunClass.REQUEST, TXID)
    assert peek_header(b"\x80" * 40) is None


# --- cross-encoding with aioice ------------------------------------------------------------------


@pytest.mark.parametrize("host", ["192.0.2.1", "2001:db8::7"])
def test_ours_parsed_by_aioice(host: str) -> None:
    m = binding_request("abcd:efgh", priority=0x6E0001FF, controlling=0x0123456789ABCDEF, use_candidate=True)
    m.add(Attr.XOR_MAPPED_ADDRESS, (host, 40000))
    data = m.encode(b"secret-password")
    theirs = aiostun.parse_message(data)  # raises if the FINGERPRINT is wrong
    assert theirs.check_message_integrity(b"secret-password")
    assert not theirs.check_message_integrity(b"other")
    assert theirs.transaction_id == m.transaction_id
    assert theirs.message_method == aiostun.Method.BINDING
    assert theirs.message_class == aiostun.Class.REQUEST
    assert theirs.attributes["USERNAME"] == "abcd:efgh"
    assert theirs.attributes["PRIORITY"] == 0x6E0001FF
    assert theirs.attributes["ICE-CONTROLLING"] == 0x0123456789ABCDEF
    assert "USE-CANDIDATE" in theirs.attributes
    assert theirs.attributes["XOR-MAPPED-ADDRESS"] == (host, 40000)


@pytest.mark.parametrize("host", ["198.51.100.9", "2001:db8:1234:5678:11:2233:4455:6677"])
def test_aioice_parsed_by_us_and_byte_identical(host: str) -> None:
    theirs = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.ERROR, transaction_id=TXID)
    theirs.attributes["XOR-MAPPED-ADDRESS"] = (host, 3478)
    theirs.attributes["ERROR-CODE"] = (487, "Role Conflict")
    theirs.attributes["ICE-CONTROLLED"] = 42
    theirs.add_message_integrity(b"pwd")
    data = bytes(theirs)
    assert check_integrity(data, b"pwd") and check_fingerprint(data)
    m = parse(data)
    assert m.message_class == StunClass.ERROR and m.transaction_id == TXID
    assert m.xor_mapped_address == (host, 3478)
    assert m.error_code == (487, "Role Conflict")
    assert m.ice_controlled == 42
    assert m.encode(b"pwd") == data

    ours = StunMessage(StunMethod.BINDING, StunClass.ERROR, TXID)
    ours.add(Attr.XOR_MAPPED_ADDRESS, (host, 3478)).add(Attr.ERROR_CODE, (487, "Role Conflict"))
    ours.add(Attr.ICE_CONTROLLED, 42)
    assert ours.encode(b"pwd") == data


def test_aioice_fingerprint_only_matches() -> None:
    theirs = aiostun.Message(aiostun.Method.BINDING, aiostun.Class.REQUEST, transaction_id=TXID)
    theirs.attributes["USERNAME"] = "x:y"
    theirs.add_fingerprint()
    assert StunMessage(StunMethod.BINDING, StunClass.REQUEST, TXID).add(Attr.USERNAME, "x:y").encode() == bytes(theirs)


# --- robustness ----------------------------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=120))
def test_parse_raises_only_stun_error(data: bytes) -> None:
    framed = _frame(data + bytes(-len(data) % 4))
    for candidate in (data, framed):
        try:
            parse(candidate)
        except StunError:
            pass
        check_integrity(candidate, b"k")
        check_fingerprint(candidate)
