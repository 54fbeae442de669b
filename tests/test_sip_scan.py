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

from wacall.sip import message
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


def _mutate(rng: random.Random, data: bytes) -> bytes:
    nasty = [b"\r\n", b"\r", b"\n", b" ", b"\t", b":", b";", b",", b"\x00", b"\xff", b"l:", b"Content-Length: 9",
             b"\r\n\r\n", b"\n\n", b"\r\n "]
    for _ in range(rng.randint(1, 4)):
        i = rng.randrange(len(data) + 1)
        op = rng.randrange(3)
        if op == 0:
            data = data[:i] + rng.choice(nasty) + data[i:]
        elif op == 1:
            data = data[:i] + data[i + rng.randint(1, 8):]
        else:
            data = data[:i] + bytes([rng.randrange(256)]) + data[i + 1:]
    return data


def test_mutated_torture_messages_agree() -> None:
    rng = random.Random(4475)
    seeds = TORTURE + [INVITE]
    for _ in range(3000):
        agree(_mutate(rng, rng.choice(seeds)))


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
