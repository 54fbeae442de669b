"""The compiled SIP scanner (``sip/sipscan.c``) against the pure-Python parser, its reference.

:func:`wacall.sip.message.parse_message` cuts a well-formed message's header block in C and leaves the rest
(and every error) to Python; the stream framer asks C for a plain Content-Length. Both must give exactly what
the Python code alone gives: the same message (start line, header fields in order, body) or the same error
(status, reason, and the partly parsed message an error carries). Compared here on RFC 4475's torture
messages, on mutations of them, and on messages hypothesis builds from header-ish pieces.
"""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from support.mutation import mutate, random_octet, random_printable

from wacall.sip import message, uri
from wacall.sip.message import (
    PING,
    SipParseError,
    StreamFramer,
    _parse_in_python,
    parse_message,
)
from wacall.sip.transport import stamp_via

DATA = Path(__file__).parent / "data" / "sip_torture"
TORTURE = sorted(p.read_bytes() for p in DATA.glob("*.dat"))

pytestmark = pytest.mark.skipif(message._SCANNER is None, reason="the compiled scanner is not built")


def outcome(parse, data: bytes) -> tuple:
    """What a parser makes of ``data``, as a comparable value."""
    try:
        msg = parse(data)
    except SipParseError as exc:
        partial = exc.message
        return ("error", exc.status, exc.reason, None if partial is None else _shape(partial))
    return ("ok", _shape(msg))


def _shape(msg) -> tuple:
    start = (msg.method, msg.uri) if isinstance(msg, message.Request) else (msg.status, msg.reason)
    return type(msg).__name__, start, list(msg.headers), msg.body


def agree(data: bytes) -> tuple:
    python = outcome(_parse_in_python, data)
    assert outcome(parse_message, data) == python, data
    if python[0] == "ok":
        same_wire_form(data)
        same_index(data)
    return python


def same_index(data: bytes) -> None:
    """The lookup index the scanner hands over is the one ``Headers`` builds from the same fields."""
    scanned = message._scanned(data)
    if scanned is not None:
        fields, index = scanned[1], scanned[2]
        rebuilt = message.Headers()
        rebuilt._items = list(fields)
        assert index == rebuilt._indexed(), data
        assert all(type(values) is tuple for values in index.values())


def same_wire_form(data: bytes) -> None:
    """Where the scanner keeps the received octets as the wire form (and the transport's Via stamp splices
    into them), ``to_bytes`` is still exactly what rendering the Python parser's message gives."""
    kept, rendered = parse_message(data), _parse_in_python(data)
    assert kept.to_bytes() == rendered.to_bytes(), data
    for peer in (("127.0.0.1", 5070), ("192.0.2.7", 40000)):
        kept, rendered = parse_message(data), _parse_in_python(data)
        if not isinstance(kept, message.Request):
            return
        try:
            stamp_via(kept, peer)
        except SipParseError:
            continue
        stamp_via(rendered, peer)
        assert kept.to_bytes() == rendered.to_bytes(), data


INVITE = (b"INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0\r\n"
          b"Via: SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport\r\nMax-Forwards: 70\r\n"
          b"From: <sip:+442071838750@pbx.business.example>;tag=1SIPpTag001\r\n"
          b"To: <sip:+447955500001@wa.meta.vc>\r\nCall-ID: 1-abc@127.0.0.1\r\nCSeq: 2 INVITE\r\n"
          b"Contact: <sip:+442071838750@127.0.0.1:5070;transport=tls>\r\n"
          b"Content-Type: application/sdp\r\nContent-Length: 4\r\n\r\nv=0\n")


def test_the_scanner_takes_the_common_case() -> None:
    """A test of the C path, not only of the fallback: a plain INVITE is cut by C (and agrees)."""
    scanned = message._scanned(INVITE)
    assert scanned is not None
    start, fields, index, rest, length, verbatim = scanned
    assert start == "INVITE sip:+447955500001@wa.meta.vc;transport=tls SIP/2.0"
    assert fields[0] == ("Via", "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport")
    assert fields[-1] == ("Content-Length", "4") and (rest, length) == (b"v=0\n", 4)
    assert index["call-id"] == ("1-abc@127.0.0.1",) and index["via"] == (fields[0][1],)
    assert agree(INVITE)[0] == "ok"
    assert verbatim and parse_message(INVITE).to_bytes() is INVITE       # the received octets, not rendered again
    stamped = parse_message(INVITE)
    stamp_via(stamped, ("127.0.0.1", 40000))                              # the stamp is spliced into them
    assert stamped._wire[2] == stamped.headers._version
    assert stamped.to_bytes() == INVITE.replace(b";rport", b";rport=40000")
    compact = INVITE.replace(b"Via:", b"v :").replace(b"Content-Length:", b"l:\t")
    assert message._scanned(compact)[1][0] == ("Via", "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport")
    agree(compact)


@pytest.mark.parametrize("data", [
    INVITE.replace(b"Max-Forwards: 70", b"Max-Forwards: 70\r\n  ;folded"),    # folding
    INVITE.replace(b"1-abc", "\u00e9".encode()),                               # non-ASCII
    INVITE.replace(b"1-abc", b"1\x00abc"),                                     # NUL
    INVITE.replace(b"Call-ID: ", b"Call-ID: a\rb"),                           # bare CR
    INVITE.replace(b"Max-Forwards:", b"Max Forwards:"),                       # not a token
    INVITE.replace(b"\r\n\r\n", b"\r\n"),                                     # no empty line
])
def test_what_the_scanner_declines_python_parses(data: bytes) -> None:
    assert message._scanned(data) is None
    agree(data)


def test_torture_messages_agree() -> None:
    outcomes = {agree(data)[0] for data in TORTURE}
    assert outcomes == {"ok", "error"}


_NASTY_OCTETS = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"\x00", b"\xff", b"l:", b"Content-Length: 9",
                 b"\r\n\r\n", b"\n\n", b"\r\n "]


def _mutate(rng: random.Random, data: bytes) -> bytes:
    return mutate(rng, data, _NASTY_OCTETS, random_octet)


def test_mutated_torture_messages_agree() -> None:
    rng = random.Random(4475)
    seeds = TORTURE + [INVITE]
    for _ in range(3000):
        agree(_mutate(rng, rng.choice(seeds)))


def test_every_odd_octet_at_every_position_agrees() -> None:
    """The header-end search steps over eight octets at a time (sipscan.c skip_ordinary): a NUL, non-ASCII
    octet, bare CR, LF, CRLF or empty line at each position of the header block (each offset in a word, the word's first
    and last) gives what the octet-by-octet Python parser gives."""
    head_end = INVITE.index(b"\r\n\r\n")
    for octet in (b"\x00", b"\x80", b"\xff", b"\x7f", b"\r", b"\n", b"\r\n", b"\n\n", b"\n\r\n", b"\r\n\r\n",
                  b"\x0e", b"\x8d", b"\x8a"):
        for at in range(head_end + 2):
            agree(INVITE[:at] + octet + INVITE[at + 1:])


def fields_checked_agree(data: bytes) -> bool:
    """The mandatory fields' checks in C (``_sipscan.fields_checked``, then Python parses what its memos lack) give
    what the Python checks alone give, with the memos empty and with them warm; True if C took the message."""
    outcomes = []
    saved = message._FIELDS_CHECKED
    for compiled in (saved, None):
        message._FIELDS_CHECKED = compiled
        try:
            uri._addr_memo.clear()
            message._via_memo.clear()
            outcomes.append((outcome(parse_message, data), outcome(parse_message, data)))
        finally:
            message._FIELDS_CHECKED = saved
    assert outcomes[0] == outcomes[1], data
    scanned = message._scanned(data)
    if scanned is None:
        return False
    start = scanned[0]
    method = None if start.upper().startswith("SIP/") else start.split(" ")[0]
    return saved(scanned[2], method, {}, {}) is not None


def test_the_compiled_field_checks_take_the_usual_message() -> None:
    index = message._scanned(INVITE)[2]
    # the plain forms (via() and name_addr() read them) are checked in C: nothing for Python to parse, no object made
    assert message._FIELDS_CHECKED(index, "INVITE", {}, {}) == 0
    odd = (INVITE.replace(b"From: <", b"From: Alice <").replace(b"To: <", b"To: Bob <")
           .replace(b"Via: SIP/2.0/TLS ", b"Via: SIP/2.0/TLS  ").replace(b"Contact: <", b"Contact: C <"))
    assert message._FIELDS_CHECKED(message._scanned(odd)[2], "INVITE", {}, {}) == 1 | 2 | 4 | 8   # all four to parse
    uri._addr_memo.clear()
    message._via_memo.clear()
    request = parse_message(INVITE)
    assert INVITE.decode().split("From: ")[1].split("\r\n")[0] not in uri._addr_memo    # made when first read
    assert str(request.from_) == "<sip:+442071838750@pbx.business.example>;tag=1SIPpTag001"
    parse_message(odd)
    assert message._FIELDS_CHECKED(message._scanned(odd)[2], "INVITE", uri._addr_memo, message._via_memo) == 0
    assert message._FIELDS_CHECKED(index, "INVITE", uri._addr_memo, message._via_memo) == 0
    assert message._FIELDS_CHECKED(index, "BYE", {}, {}) is None                  # the CSeq's method: Python says
    assert message._FIELDS_CHECKED(index, None, {}, {}) is not None               # a response has no method to match


@pytest.mark.parametrize("edit", [
    (b"CSeq: 2 INVITE", b"CSeq: 2147483648 INVITE"), (b"CSeq: 2 INVITE", b"CSeq: 2147483647 INVITE"),
    (b"CSeq: 2 INVITE", b"CSeq: 02 INVITE"), (b"CSeq: 2 INVITE", b"CSeq: 2\tINVITE"),
    (b"CSeq: 2 INVITE", b"CSeq: 2INVITE"), (b"CSeq: 2 INVITE", b"CSeq: INVITE"), (b"CSeq: 2 INVITE", b"CSeq: 2 "),
    (b"CSeq: 2 INVITE", b"CSeq: 2 INVITE x"), (b"CSeq: 2 INVITE", b"CSeq: 2 invite"),
    (b"Max-Forwards: 70", b"Max-Forwards: 256"), (b"Max-Forwards: 70", b"Max-Forwards: 255"),
    (b"Max-Forwards: 70", b"Max-Forwards: 070"), (b"Max-Forwards: 70", b"Max-Forwards: 0"),
    (b"Max-Forwards: 70", b"Max-Forwards: 7a"), (b"Max-Forwards: 70", b"Max-Forwards: 99999999999999999999"),
    (b"Max-Forwards: 70", b"Max-Forwards: 70\r\nMax-Forwards: 70"),
    (b"Max-Forwards: 70\r\n", b""), (b"Call-ID: 1-abc", b"Call-ID: 1 abc"), (b"Call-ID: 1-abc", b"Call-ID: "),
    (b"Contact: <", b"Contact: *\r\nX: <"), (b"Contact: <", b"Contact: <sip:a@b>, <"), (b"Contact: <", b"Contact: <<"),
    (b"Contact: <sip:+442071838750@127.0.0.1:5070;transport=tls>\r\n", b""), (b"Contact: <", b"Contact: x <"),
    (b"Via: SIP/2.0/TLS", b"Via: SIP/2.0/TLS 127.0.0.1, SIP/2.0/TLS"), (b"Via: SIP/2.0/TLS", b"Via: SIP/2.0/TLX"),
    (b"Via: SIP/2.0/TLS", b"Via: SIP/3.0/TLS"), (b"Via: SIP/2.0/TLS 127.0.0.1:5070", b"Via: SIP/2.0/TLS 127.0.0.1:99999"),
    (b"From: <", b"From: <<"), (b"From: <", b"From: x y <"), (b"To: <", b"To: <<"), (b"To: <", b"To: <sip:a@b>\r\nTo: <"),
    (b"From: <sip:+442071838750@pbx.business.example>;tag=1SIPpTag001\r\n", b""),
    (b"Call-ID: 1-abc@127.0.0.1\r\n", b""), (b"CSeq: 2 INVITE\r\n", b""), (b"INVITE sip", b"SIP/2.0 200 OK\r\nX: sip"),
    (b"Call-ID: 1-abc", b"Call-ID: 1-\xc3\xa9"), (b"To: <", b"To: \"\xc3\xa9\" <"),
])
def test_the_compiled_field_checks_are_the_python_ones(edit: tuple[bytes, bytes]) -> None:
    fields_checked_agree(INVITE.replace(*edit))


def test_the_compiled_field_checks_agree_on_torture_and_mutations() -> None:
    rng = random.Random(3261)
    taken = sum(fields_checked_agree(data) for data in TORTURE)
    seeds = TORTURE + [INVITE]
    for _ in range(2000):
        taken += fields_checked_agree(_mutate(rng, rng.choice(seeds)))
    assert taken > 300                  # C took enough of them for the comparison to count


_NAMES = st.sampled_from(["Via", "v", "From", "f", "To", "t", "Call-ID", "i", "CSeq", "Contact", "m",
                          "Content-Length", "l", "content-LENGTH", "Max-Forwards", "X-Odd", "Route", "Bad Name",
                          "", "Allow"])
_VALUES = st.sampled_from([
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK1", "<sip:a@b>;tag=1", "sip:c@d", "x@y", "1 INVITE", "2 BYE",
    "0", "4", "04", " 4 ", "4, 4", "4,5", "-1", "99999999999999999999", "", "*", "70", "INVITE, ACK",
    '"A, B" <sip:a@b>', "a:b:c", "\t tabs \t",
])
_BREAKS = st.sampled_from(["\r\n", "\n"])


@st.composite
def messages(draw) -> bytes:
    start = draw(st.sampled_from(["INVITE sip:a@b SIP/2.0", "BYE sip:a@b SIP/2.0", "SIP/2.0 200 OK",
                                  "SIP/2.0 180", "OPTIONS sip:a@b SIP/3.0", "INVITE  sip:a@b SIP/2.0"]))
    lines = [f"{draw(_NAMES)}{draw(st.sampled_from([': ', ':', ' :', ':  ', '']))}{draw(_VALUES)}"
             for _ in range(draw(st.integers(0, 12)))]
    text = draw(st.sampled_from(["", "\r\n", "\n\n"])) + start
    for line in lines:
        text += draw(_BREAKS) + line
    text += draw(_BREAKS) + draw(_BREAKS)
    return text.encode() + draw(st.sampled_from([b"", b"v=0\r\n", b"abcd", b"abcdefgh"]))


@settings(max_examples=1500, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(messages())
def test_generated_messages_agree(data: bytes) -> None:
    agree(data)


def frames(stream: bytes, scanner, rng: random.Random) -> list:
    saved = message._SCANNER
    message._SCANNER = scanner
    try:
        framer = StreamFramer(max_header=4096, max_body=4096)
        out: list = []
        pos = 0
        while pos < len(stream) and not framer.closed:
            step = rng.randint(1, 300)
            for item in framer.feed(stream[pos:pos + step]):
                out.append(item if isinstance(item, bytes) or item is PING else ("error", item.status, item.reason))
            pos += step
        return out
    finally:
        message._SCANNER = saved


def test_framer_agrees_on_mutated_streams() -> None:
    rng = random.Random(5626)
    seeds = TORTURE + [INVITE]
    for i in range(400):
        stream = b"".join(_mutate(rng, rng.choice(seeds)) + rng.choice([b"", b"\r\n", b"\r\n\r\n"])
                          for _ in range(4))
        assert frames(stream, message._SCANNER, random.Random(i)) == frames(stream, None, random.Random(i))


@settings(max_examples=500, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=4), st.randoms(use_true_random=False))
def test_framer_agrees_on_generated_streams(parts: list[bytes], rng: random.Random) -> None:
    stream = b"".join(parts)
    seed = rng.randrange(1 << 30)
    assert frames(stream, message._SCANNER, random.Random(seed)) == frames(stream, None, random.Random(seed))


def test_frame_length_reads_only_the_plain_case() -> None:
    frame_length = message._SCANNER.frame_length
    head = INVITE[:INVITE.index(b"\r\n\r\n")]
    assert frame_length(head, len(head)) == 4 and frame_length(INVITE, len(head)) == 4
    for odd in (b"Content-Length: 4, 4", b"Content-Length: x", b"Content-Length: 4\r\nl: 4", b"X: 1"):
        h = head.replace(b"Content-Length: 4", odd)
        assert frame_length(h, len(h)) == -1
    assert frame_length(head.replace(b"Content-Length:", b"l :"), len(head) - 12) == 4
    assert frame_length(head.replace(b"Content-Length:", b"CONTENT-length:"), len(head)) == 4


def test_the_scanner_knows_the_names_python_knows() -> None:
    """The C name table (canonical names, compact forms) is Python's ``_CANONICAL``: a name added to one
    and not the other would make the two parsers disagree on a message that carries it."""
    assert message._SCANNER.known_names() == message._CANONICAL
    for low, canonical in message._CANONICAL.items():
        spelled = low.upper() if len(low) > 1 else low
        data = INVITE.replace(b"Max-Forwards: 70", f"{spelled}: x".encode())
        fields, index = message._scanned(data)[1:3]
        assert ("Max-Forwards", "70") not in fields and (canonical, "x") in fields
        assert "x" in index[canonical.lower()]
        agree(data)


def whole_reads(parts: list[bytes], scanner) -> list:
    """What the framer makes of ``parts`` each arriving as one read (the usual case on a SIP connection)."""
    saved = message._SCANNER
    message._SCANNER = scanner
    try:
        framer = StreamFramer(max_header=4096, max_body=4096)
        out: list = []
        for part in parts:
            for item in framer.feed(part):
                out.append(item if isinstance(item, bytes) or item is PING else ("error", item.status, item.reason))
        return out
    finally:
        message._SCANNER = saved


def test_a_read_of_one_whole_message_is_the_message() -> None:
    """The framer hands a read that is exactly one message on as it is (no copy through its buffer), and a
    read of anything else goes through the buffer as before."""
    framer = StreamFramer()
    (item,) = framer.feed(INVITE)
    assert item is INVITE and not framer._buf
    assert framer.feed(INVITE[:10]) == [] and framer.feed(INVITE[10:]) == [INVITE]
    assert framer.feed(INVITE + INVITE[:5]) == [INVITE] and bytes(framer._buf) == INVITE[:5]


def test_framer_agrees_on_whole_reads_of_mutated_messages() -> None:
    rng = random.Random(3261)
    seeds = TORTURE + [INVITE]
    for _ in range(400):
        parts = [_mutate(rng, rng.choice(seeds)) + rng.choice([b"", b"", b"\r\n", b"\r\n\r\n"]) for _ in range(4)]
        assert whole_reads(parts, message._SCANNER) == whole_reads(parts, None)


@settings(max_examples=500, deadline=None)
@given(st.lists(messages(), min_size=1, max_size=4))
def test_framer_agrees_on_generated_whole_reads(parts: list[bytes]) -> None:
    assert whole_reads(parts, message._SCANNER) == whole_reads(parts, None)


# --- Via and name-addr values: the C pieces (sipscan.c via/name_addr) against the Python parsers ----------

from wacall.sip import uri as uri_module  # noqa: E402


def via_outcome(parse, text: str) -> tuple:
    """What a Via parser makes of ``text``: the Via (its params read-only, whether it is its text) or the error."""
    try:
        via = parse(text)
    except SipParseError as exc:
        return ("error", exc.status, exc.reason)
    return ("ok", via.transport, via.host, via.port, type(via.params), list(via.params.items()),
            message.is_canonical_via(text, via), str(via))


def addr_outcome(parse, text: str) -> tuple:
    """What a name-addr parser makes of ``text``: every field of the NameAddr and its SipUri, the read-only
    parameter types, the URI's rendering and its memo entry; or the error."""
    try:
        addr = parse(text)
    except SipParseError as exc:
        return ("error", exc.status, exc.reason)
    uri = addr.uri
    return ("ok", addr.display, type(addr.params), list(addr.params.items()), uri.scheme, uri.user, uri.password,
            uri.host, uri.port, type(uri.params), list(uri.params.items()), type(uri.headers),
            list(uri.headers.items()), uri.opaque, "_rendered" in uri.__dict__, str(uri), str(addr))


def agree_on_via(text: str) -> tuple:
    """The compiled path and the Python one (whose plain form tests/test_sip_message.py compares with the
    general parser) give the same Via, canonical mark included, or the same error."""
    python = via_outcome(message._parse_via_python, text)
    assert via_outcome(message._parse_via, text) == python, text
    return python


def agree_on_addr(text: str) -> tuple:
    """The compiled path and the general one give the same NameAddr (or error) and leave the same URI memo:
    from an empty memo, and when the memo already holds the URI (then both hand out that same SipUri)."""
    memo = uri_module._uri_memo
    saved = dict(memo)
    try:
        memo.clear()
        python = addr_outcome(uri_module._parse_name_addr_general, text)
        python_memo = memo_shape(memo)
        memo.clear()
        assert addr_outcome(uri_module._parse_name_addr, text) == python, text
        assert memo_shape(memo) == python_memo, text
        if python[0] == "ok":                           # the memo holds the URI now: both take that one
            assert uri_module._parse_name_addr(text).uri is uri_module._parse_name_addr_general(text).uri
    finally:
        memo.clear()
        memo.update(saved)
    return python


def memo_shape(memo: dict) -> dict:
    """The URI memo as comparable values: key -> the shape of a NameAddr around that SipUri."""
    return {key: addr_outcome(lambda _: uri_module.NameAddr(None, uri, {}), "") for key, uri in memo.items()}


def _torture_values(names: tuple[str, ...]) -> list[str]:
    values = []
    for data in TORTURE + [INVITE]:
        try:
            msg = _parse_in_python(data)
        except SipParseError:
            continue
        for name in names:
            for value in msg.headers.get_all(name):
                values += uri_module.split_list(value)
    return values


VIA_SEEDS = _torture_values(("Via",)) + [
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport", "SIP/2.0/TLS wa.meta.vc:05070;branch=a;branch=b",
    "SIP/2.0/TLS wa.meta.vc:99999;branch=z9hG4bK-1", "SIP/2.0/TLS wa.meta.vc:123456", "SIP/2.0/TLS a:0;x",
    "SIP/2.0/TCP [2001:db8::1]:5060;received=[2001:db8::1]", "SIP/2.0/UDP h;received=1.2.3.4;rport=5",
]
ADDR_SEEDS = _torture_values(("From", "To", "Contact", "Route", "Record-Route")) + [
    '"Alice" <sip:+15551234567@wa.meta.vc;transport=tls>;tag=1928301774', "<sip:+1@wa.meta.vc:5061>",
    '"" <sip:a@b>', '"A"<sip:a@b.>;tag=x;tag=y', "<sips:a;tgrp=x;trunk-context=y@10.0.0.1:65535;lr;lr=2>",
    "<sip:a@b:65536>", "<sip:a@b:007>", "<sip:a@-b>", "<sip:a@b->", "<sip:a@b;x=>", "<sip:a@b;=1>",
    "<sip:a@b>;x=", "<sip:a@b>;;x", "<sip:a@b> ;x", "<SIP:a@b>", "<sip:a:pw@b>", "<sip:%41@b>", "<sip:a@[::1]>",
    "<tel:+1555>", "Alice <sip:a@b>", "sip:a@b;tag=1", "<sip:a@b?x=y>", "<sip:@b>", "<sip:b>", "<sip:a@b>>",
    '"A\\"B" <sip:a@b>', '"A\tB" <sip:a@b>', " <sip:a@b>", "<sip:a@b> ", "<sip:a@b;p=[x]/:&+$>;r=[::1]:5",
]


_NASTY_TEXT = [" ", "\t", ";", "=", ":", "@", "<", ">", '"', "\\", "%41", "[", "]", "?", ",", "é", "0", "99999",
               "sips:", "SIP/2.0/", "/", ".", "-", ";lr", ";tag=x"]


def _mutate_text(rng: random.Random, text: str) -> str:
    return mutate(rng, text, _NASTY_TEXT, random_printable, edits=3, cut=6)


def test_the_compiled_value_parsers_take_the_usual_forms() -> None:
    from wacall.sip import _sipscan
    assert _sipscan.via("SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport") == (
        "TLS", "127.0.0.1", 5070, {"branch": "z9hG4bK-1-1-0", "rport": None}, True)
    assert _sipscan.name_addr('"Alice" <sip:+1555@wa.meta.vc;transport=tls>;tag=x') == (
        "Alice", "sip:+1555@wa.meta.vc;transport=tls", "sip", "+1555", "wa.meta.vc", None, {"transport": "tls"},
        {"tag": "x"})
    for text in ["<sip:a@[::1]>", "Alice <sip:a@b>", "sip:a@b", '"A\\"B" <sip:a@b>', "<sip:a@b> ;x"]:
        assert _sipscan.name_addr(text) is None, text      # Python's: unusual forms
    assert _sipscan.via("SIP/2.0/TLS [::1]:5060") is None


def test_torture_values_agree() -> None:
    assert {agree_on_via(text)[0] for text in VIA_SEEDS} == {"ok", "error"}
    assert {agree_on_addr(text)[0] for text in ADDR_SEEDS} == {"ok", "error"}


def test_mutated_values_agree() -> None:
    rng = random.Random(3261)
    for _ in range(3000):
        agree_on_via(_mutate_text(rng, rng.choice(VIA_SEEDS)))
        agree_on_addr(_mutate_text(rng, rng.choice(ADDR_SEEDS)))


_PIECES = st.sampled_from(["a", "Z", "9", "0", "-", ".", "_", "!", "~", "*", "'", "(", ")", "%", "%41", "&", "=",
                           "+", "$", ",", ";", "?", "/", "#", ":", "@", "[", "]", "<", ">", '"', "\\", " ", "\t",
                           "sip:", "sips:", "tel:", "tag", "lr", "5061", "65535", "65536", "é", "\x00"])


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(['"A" <sip:', "<sip:", "<sips:", "", '"" ']), st.lists(_PIECES, max_size=10).map("".join),
       st.sampled_from(["@wa.meta.vc", "@1.2.3.4:5061", "@h", ""]), st.lists(_PIECES, max_size=6).map("".join),
       st.sampled_from([">", ">;tag=", ">;tag=x", ""]), st.lists(_PIECES, max_size=6).map("".join))
def test_generated_addresses_agree(head: str, user: str, host: str, uri_params: str, close: str, params: str) -> None:
    agree_on_addr(head + user + host + uri_params + close + params)


@settings(max_examples=1500, deadline=None)
@given(st.sampled_from(["SIP/2.0/", "SIP/2.0/TLS ", "SIP/2.0/TLS wa.meta.vc", "SIP/2.0/UDP 1.2.3.4:", "sip/2.0/"]),
       st.lists(_PIECES, max_size=12).map("".join))
def test_generated_vias_agree(head: str, tail: str) -> None:
    agree_on_via(head + tail)


# --- a Via's facts read in C without the Via made (sipscan.c via_facts): the transaction key and the rport splice ---

from wacall.sip import transport as transport_module  # noqa: E402
from wacall.sip.message import Headers, Request  # noqa: E402
from wacall.sip.transaction import TransactionLayer  # noqa: E402

FACT_SEEDS = VIA_SEEDS + [
    "SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1;rport", "SIP/2.0/TLS 127.0.0.1:5070;Branch=z9hG4bK-1;rport",
    "SIP/2.0/TLS h;branch=z9hG4bK-1;BRANCH=z9hG4bK-2", "SIP/2.0/TLS h;branch=z9hG4bK-1;branch=z9hG4bK-2;rport",
    "SIP/2.0/TLS h;branch;rport", "SIP/2.0/TLS h;rport;branch=1234", "SIP/2.0/TLS H.Example:0;branch=z9hG4bKx",
    "SIP/2.0/TLS h:05061;branch=z9hG4bKx;rport", "SIP/2.0/TLS h;branch=z9hG4bKx;rport;rport",
    "SIP/2.0/TLS h;branch=z9hG4bKx;RPORT", "SIP/2.0/TLS h" + ";p" * 20 + ";branch=z9hG4bKx;rport",
    "SIP/2.0/TLS 127.0.0.1;branch=z9hG4bK;rport=5;rport",
]


def _outcome(call) -> tuple:
    try:
        return ("ok", call())
    except Exception as exc:       # noqa: BLE001 - compared, not hidden
        return ("error", type(exc).__name__, str(exc))


def agree_on_via_facts(text: str) -> bool:
    """The transaction key and the splice check from the Via's text in C give what they give from the parsed Via;
    True when C read the Via (its facts were not left to Python)."""
    for method in ("INVITE", "ACK", "BYE"):
        request = Request(method, "sip:a@b", Headers([("Via", text), ("Call-ID", "c"), ("CSeq", f"1 {method}"),
                                                     ("From", "<sip:a@b>;tag=1"), ("To", "<sip:b@c>")]))
        request.headers._indexed()
        assert (_outcome(lambda: TransactionLayer.server_key(request))
                == _outcome(lambda: TransactionLayer._server_key_in_python(request))), (text, method)
    hosts = ["127.0.0.1", "h", "H", "wa.meta.vc", "[2001:db8::1]", "2001:db8::1"]
    facts = transport_module.VIA_FACTS(text)
    if facts is not None:
        hosts += [facts[0], facts[0].upper()]
    for host in hosts:
        assert (_outcome(lambda: transport_module._splices(text, host))
                == _outcome(lambda: transport_module._splice_form(text, host) is not None)), (text, host)
    return facts is not None


def test_via_facts_take_the_usual_via() -> None:
    from wacall.sip import _sipscan
    assert _sipscan.via_facts("SIP/2.0/TLS 127.0.0.1:5070;branch=z9hG4bK-1-1-0;rport=5") == (
        "127.0.0.1", 5070, "z9hG4bK-1-1-0", True)
    for text in ["SIP/2.0/TLS h;Branch=z9hG4bK1", "SIP/2.0/TLS h;branch=z9hG4bK1;branch=z9hG4bK2",
                 "SIP/2.0/TLS [::1]:5060;branch=z9hG4bK1", "SIP/2.0/TLS h ;branch=z9hG4bK1"]:
        assert _sipscan.via_facts(text) is None, text        # Python's Via answers those


def test_via_facts_agree_on_seeds_and_mutations() -> None:
    read_in_c = sum(agree_on_via_facts(text) for text in FACT_SEEDS)
    rng = random.Random(17023)
    read_in_c += sum(agree_on_via_facts(_mutate_text(rng, rng.choice(FACT_SEEDS))) for _ in range(3000))
    assert read_in_c >= 300          # the comparisons above were of C's facts, not of Python with itself


@settings(max_examples=800, deadline=None)
@given(st.sampled_from(["SIP/2.0/TLS h", "SIP/2.0/TLS 127.0.0.1:5070", "SIP/2.0/TLS h;branch=z9hG4bK"]),
       st.lists(st.sampled_from([";branch=z9hG4bK1", ";Branch=z9hG4bK2", ";branch", ";rport", ";rport=5", ";x=1",
                                 ";x", ":5", "0", " ", ",", "=", ";"]), max_size=6).map("".join))
def test_generated_via_facts_agree(head: str, tail: str) -> None:
    agree_on_via_facts(head + tail)
