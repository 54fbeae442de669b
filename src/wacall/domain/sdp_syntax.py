"""SDP syntax: a small typed model and parser of RFC 8866 session descriptions, and RFC 4568 ``a=crypto``.

Model: RFC 8866 (which obsoletes RFC 4566) session descriptions: ``v= o= s=`` first, the session
part, then ``m=`` sections; ``a=rtpmap``/``a=fmtp`` per RFC 8866 section 6.6/6.15; static payload
types per RFC 3551 section 6. Pure (no I/O); Meta's rules on top of it are in ``wacall.domain.sdp``.

Every problem raises :class:`SdpError`, whose ``details`` names the offending line (1-based) or
says what is missing; the Graph layer puts it into ``error_data.details`` of a code-100 error.
"""

from __future__ import annotations

import binascii
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import NamedTuple, TypeVar

_T = TypeVar("_T")

__all__ = [
    "SDES_SUITES",
    "STATIC_PAYLOAD_TYPES",
    "Connection",
    "CryptoAttribute",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "line_error",
    "made",
    "parse_crypto",
    "parse_sdp",
]


class SdpError(Exception):
    """Malformed or unacceptable SDP. ``details`` is the human-readable reason."""

    def __init__(self, details: str, *, line: int | None = None) -> None:
        super().__init__(details)
        self.details = details
        self.line = line


_MAX_QUOTED = 120


def _quote(raw: str) -> str:
    return raw if len(raw) <= _MAX_QUOTED else raw[: _MAX_QUOTED - 3] + "..."


def line_error(number: int, raw: str, reason: str) -> SdpError:
    return SdpError(f"SDP line {number} '{_quote(raw)}': {reason}", line=number)


def made(cls: type[_T], values: dict[str, object]) -> _T:
    """``cls(**values)`` for a frozen dataclass given every one of its fields, in order: the fields set at once
    (a frozen dataclass's ``__init__`` sets each field through ``object.__setattr__``, ~1.5 k instructions a
    field; SDP values made once or more per call). The same object: tests/test_sdp.py compares the two."""
    made_ = object.__new__(cls)
    vars(made_).update(values)
    return made_


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


class Origin(NamedTuple):
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``. (A named tuple, as
    RtpMap: read-only like a frozen dataclass, made at a third of its cost, once per SDP parsed.)"""

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


class Connection(NamedTuple):
    """``c=<nettype> <addrtype> <connection-address>`` (a named tuple, as Origin)."""

    nettype: str
    addrtype: str
    address: str


class RtpMap(NamedTuple):
    """``a=rtpmap:<pt> <encoding>/<clock>[/<channels>]``."""

    encoding: str
    clock_rate: int
    channels: int | None = None

    def matches(self, encoding: str, clock_rate: int, channels: int | None = None) -> bool:
        if self.encoding.lower() != encoding.lower() or self.clock_rate != clock_rate:
            return False
        return channels is None or (self.channels or 1) == channels

    def __str__(self) -> str:
        base = f"{self.encoding}/{self.clock_rate}"
        return base if self.channels is None else f"{base}/{self.channels}"


#: RFC 3551 section 6 static audio payload types (used when no a=rtpmap is given).
STATIC_PAYLOAD_TYPES: dict[int, RtpMap] = {
    0: RtpMap("PCMU", 8000),
    3: RtpMap("GSM", 8000),
    4: RtpMap("G723", 8000),
    8: RtpMap("PCMA", 8000),
    9: RtpMap("G722", 8000),
    13: RtpMap("CN", 8000),
    18: RtpMap("G729", 8000),
}


@dataclass
class _Attributes:
    """Ordered ``a=`` attributes with the 1-based line number of each."""

    attributes: list[tuple[str, str | None]] = field(default_factory=list)
    attribute_lines: list[int] = field(default_factory=list)

    def attributes_named(self, name: str) -> Iterator[tuple[int, str | None]]:
        """``(line number, value)`` of every attribute called ``name``, in order."""
        for (attr, value), line in zip(self.attributes, self.attribute_lines):
            if attr == name:
                yield line, value

    def has_attribute(self, name: str) -> bool:
        for attr, _ in self.attributes:         # (a loop, not any() over a generator: asked on every answer)
            if attr == name:
                return True
        return False

    def attribute(self, name: str) -> str | None:
        """Value of the first ``name`` attribute (``None`` if absent or a flag)."""
        for attr, value in self.attributes:
            if attr == name:
                return value
        return None


@dataclass
class MediaDescription(_Attributes):
    """One ``m=`` section."""

    kind: str = ""
    port: int = 0
    port_count: int | None = None
    proto: str = ""
    #: The m-line's ``<fmt>`` tokens; payload type numbers for RTP profiles.
    formats: list[str] = field(default_factory=list)
    connection: Connection | None = None
    rtpmap: dict[int, RtpMap] = field(default_factory=dict)
    fmtp: dict[int, str] = field(default_factory=dict)
    #: 1-based line number of the ``m=`` line.
    line: int = 0
    #: SDES: the ``a=crypto`` Meta chose of this section's SDP (value and parsed), kept by whoever chose it
    #: first (``wacall.domain.sdp``: the validation) so that the answer and the negotiation do not parse the
    #: key again; not part of the description (not compared, not shown)
    chosen_crypto: tuple[str, CryptoAttribute] | None = field(default=None, compare=False, repr=False)
    #: the payload types as the parser read them off the m-line (a section is not changed after parsing): the
    #: rules ask for them several times per SDP, and each asking would convert every format again
    parsed_payload_types: tuple[int, ...] | None = field(default=None, compare=False, repr=False)

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> list[int]:
        if self.parsed_payload_types is not None:
            return list(self.parsed_payload_types)
        return [int(f) for f in self.formats] if self.is_rtp else []

    def codec(self, pt: int) -> RtpMap | None:
        """The codec of payload type ``pt``: its a=rtpmap, else the RFC 3551 static assignment."""
        return self.rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)

    def find_codec(self, encoding: str, clock_rate: int, channels: int | None = None) -> int | None:
        """First payload type on the m-line carrying that codec."""
        rtpmap = self.rtpmap
        wanted = encoding.lower()
        for pt in self.parsed_payload_types if self.parsed_payload_types is not None else self.payload_types:
            codec = rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)      # self.codec(pt), inlined (a hot loop)
            if (codec is not None and codec.clock_rate == clock_rate and codec.encoding.lower() == wanted
                    and (channels is None or (codec.channels or 1) == channels)):    # codec.matches(), inlined
                return pt
        return None


_NO_ORIGIN = Origin("-", "0", "0", "IN", "IP4", "0.0.0.0")


@dataclass
class SessionDescription(_Attributes):
    """A parsed SDP session description."""

    version: int = 0
    origin: Origin = _NO_ORIGIN         # (read-only, so one instance serves every description)
    session_name: str = "-"
    connection: Connection | None = None
    timing: list[tuple[int, int]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    #: The raw lines without terminators (``lines[n - 1]`` is line ``n``).
    lines: list[str] = field(default_factory=list)

    @property
    def audio(self) -> MediaDescription | None:
        for media in self.media:
            if media.kind == "audio":
                return media
        return None

    def effective_attribute(self, media: MediaDescription, name: str) -> tuple[int, str | None] | None:
        """``(line, value)`` of ``name`` at media level, falling back to session level."""
        for (attr, value), line in zip(media.attributes, media.attribute_lines):
            if attr == name:
                return line, value
        for (attr, value), line in zip(self.attributes, self.attribute_lines):
            if attr == name:
                return line, value
        return None


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

_SESSION_TYPES = set("vosiuepcbtrzka")
#: a line's <type>: one lowercase ASCII letter (RFC 8866 section 5)
_LINE_TYPES = frozenset("abcdefghijklmnopqrstuvwxyz")
_MEDIA_TYPES = set("icbka")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 8866 token
#: attribute names every SDP here carries: tokens already, so not matched against _TOKEN_RE line by line
_COMMON_ATTRIBUTES = frozenset({"rtpmap", "fmtp", "crypto", "ptime", "maxptime", "sendrecv", "rtcp-mux", "mid",
                                "candidate", "ice-ufrag", "ice-pwd", "fingerprint", "setup", "ssrc", "rtcp"})
#: ``<proto>``: tokens joined by ``/`` (every part a _TOKEN_RE token, in one match)
#: the attributes a media section's codec tables are read from
_CODEC_ATTRIBUTES = frozenset({"rtpmap", "fmtp"})
_PROTO_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+(?:/[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+)*$")
_RTPMAP_RE = re.compile(r"^(\d{1,3}) ([^\s/]+)/(\d+)(?:/(\d+))?$")
_FMTP_RE = re.compile(r"^(\d{1,3}) (.+)$")


def _parse_connection(number: int, raw: str, value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or not all(parts):
        raise line_error(number, raw, "expected 'c=<nettype> <addrtype> <address>'")
    if parts[1] not in ("IP4", "IP6"):
        raise line_error(number, raw, f"unknown address type {parts[1]!r}")
    return Connection(*parts)


def _number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" or "³", which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def _parse_origin(number: int, raw: str, value: str) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise line_error(
            number, raw,
            "expected 'o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>'",
        )
    if not _number(parts[1]) or not _number(parts[2]):
        raise line_error(number, raw, "session id and version must be numeric")
    return Origin(*parts)


def _parse_media_line(number: int, raw: str, value: str) -> MediaDescription:
    kind, _, rest = value.partition(" ")
    port_text, _, tail = rest.partition(" ")
    known = _MEDIA_TAILS.get((kind, tail))
    if known is not None and port_text.isascii() and port_text.isdigit() and int(port_text) <= 65535:
        proto, formats, payload_types = known      # an m-line read before but for its port: the same checks passed
        return MediaDescription(kind=kind, port=int(port_text), proto=proto, formats=list(formats), line=number,
                                parsed_payload_types=payload_types)
    media = _read_media_line(number, raw, value)
    if media.port_count is None:
        _remember(_MEDIA_TAILS, (kind, tail), (media.proto, tuple(media.formats), media.parsed_payload_types))
    return media


def _read_media_line(number: int, raw: str, value: str) -> MediaDescription:
    """An m-line read and checked in full (``_parse_media_line`` skips this for the media type, protocol and
    formats of one read before)."""
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise line_error(number, raw, "expected 'm=<media> <port> <proto> <fmt> ...'")
    kind, port_text, proto, *formats = parts
    if not _TOKEN_RE.match(kind):
        raise line_error(number, raw, "invalid media type")
    port_part, _, count_part = port_text.partition("/")
    if not _number(port_part) or int(port_part) > 65535:
        raise line_error(number, raw, "invalid port")
    port_count: int | None = None
    if count_part:
        if not _number(count_part) or int(count_part) < 1:
            raise line_error(number, raw, "invalid port count")
        port_count = int(count_part)
    if not _PROTO_RE.match(proto):
        raise line_error(number, raw, "invalid transport protocol")
    payload_types: list[int] = []
    if "RTP/" in proto:                     # MediaDescription.is_rtp
        for fmt in formats:
            if not (fmt.isascii() and fmt.isdigit()) or int(fmt) > 127:     # (_number, inlined)
                raise line_error(number, raw, f"invalid RTP payload type {fmt!r}")
            payload_types.append(int(fmt))
    return MediaDescription(kind=kind, port=int(port_part), port_count=port_count, proto=proto, formats=formats,
                            line=number, parsed_payload_types=tuple(payload_types))


def _add_codec_attribute(media: MediaDescription, number: int, raw: str, name: str, value: str | None) -> None:
    """An ``a=rtpmap`` or ``a=fmtp`` of ``media`` (already in its attributes), read into its codec tables."""
    if name == "rtpmap":
        read = _RTPMAPS.get(value)
        if read is None:
            match = _RTPMAP_RE.match(value or "")
            if match is None or int(match.group(1)) > 127:
                raise line_error(number, raw, "expected 'a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]'")
            pt_text, encoding, clock_rate, channels = match.groups()      # (one call, not one per group)
            read = (int(pt_text), RtpMap(encoding, int(clock_rate), int(channels) if channels else None))
            _remember(_RTPMAPS, value, read)
        pt, codec = read
        if pt in media.rtpmap:
            raise line_error(number, raw, f"duplicate rtpmap for payload type {pt}")
        media.rtpmap[pt] = codec
    elif name == "fmtp":
        read = _FMTPS.get(value)
        if read is None:
            match = _FMTP_RE.match(value or "")
            if match is None:
                raise line_error(number, raw, "expected 'a=fmtp:<payload type> <parameters>'")
            pt_text, parameters = match.groups()
            read = (int(pt_text), parameters)
            _remember(_FMTPS, value, read)
        media.fmtp[read[0]] = read[1]


# What the parser read of the parts of lines that come back call after call from one SDP stack (its codecs'
# a=rtpmap and a=fmtp values, its m-line but for the port): kept, so each is checked and converted once. A
# value is kept only once read without error; ``tests/test_sdp.py`` compares parses with these memos full
# and empty (and with the reference parser).
_RTPMAPS: dict[str | None, tuple[int, RtpMap]] = {}
_FMTPS: dict[str | None, tuple[int, str]] = {}
_MEDIA_TAILS: dict[tuple[str, str], tuple[str, tuple[str, ...], tuple[int, ...]]] = {}
_MEMO_SIZE = 256        # per memo: a sender varying these without end empties it now and then


def _remember(memo: dict, key: object, value: object) -> None:
    if len(memo) >= _MEMO_SIZE:
        memo.clear()
    memo[key] = value


def forget_memos() -> None:
    """Empty the parser's memos (tests compare a parse with them and without)."""
    _RTPMAPS.clear()
    _FMTPS.clear()
    _MEDIA_TAILS.clear()


def _split_lines(text: str) -> list[str]:
    """Split on LF, dropping one CR before each LF; the final terminator yields no line."""
    if text.count("\n") == text.count("\r\n") and not text.endswith("\r"):   # every line ends in CRLF: one split
        pieces = text.split("\r\n")
        if pieces[-1] == "":
            pieces.pop()
        return pieces
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    return [p[:-1] if p.endswith("\r") else p for p in pieces]


def parse_sdp(text: str) -> SessionDescription:
    """Parse RFC 8866 SDP. Accepts CRLF or LF endings (the CRLF rule is Meta's, see validate).

    A well-formed ASCII text is read by the compiled scanner (``_sdpscan.scan``, sdpscan.c: the same checks in
    one pass, ~10x fewer instructions); everything else, every error included, by :func:`parse_sdp_in_python`,
    the reference (tests/test_sdp.py compares the two)."""
    if _SCAN is not None:
        sd = _SCAN(text)
        if sd is not None:
            return sd
    return parse_sdp_in_python(text)


def parse_sdp_in_python(text: str) -> SessionDescription:
    """:func:`parse_sdp` in Python: the reference, and the way of what the compiled scanner leaves (its errors)."""
    if not isinstance(text, str) or not text or text.isspace():       # (not text.strip(): no copy of the text)
        raise SdpError("SDP is empty")
    lines = text.split("\r\n")
    crlfs = len(lines) - 1
    if text.count("\n") == crlfs and not text.endswith("\r"):      # every LF ends a CRLF: the lines are split
        if lines[-1] == "":
            lines.pop()
        # a CR inside a line is an error; a text whose every CR ends a line (before its LF) has none in any line,
        # so the lines are then not searched one by one
        stray_cr = text.count("\r") != crlfs
    else:
        lines = _split_lines(text)
        stray_cr = text.count("\r") != text.count("\r\n")
    sd = SessionDescription(lines=lines)
    current: MediaDescription | None = None
    attributes, attribute_lines = sd.attributes, sd.attribute_lines      # where an a= line goes: this section's
    seen: set[str] = set()
    for number, raw in enumerate(lines, 1):
        kind = raw[:1]                         # (a slice: the empty line has no raw[0])
        if raw[1:2] != "=" or kind not in _LINE_TYPES:     # <type>=<value>: one lowercase ASCII letter
            if raw == "":
                raise line_error(number, raw, "empty line")
            if stray_cr and "\r" in raw:
                raise line_error(number, raw.replace("\r", "\\r"), "stray CR inside the line")
            raise line_error(number, raw, "expected '<type>=<value>' with a single lowercase letter type")
        if stray_cr and "\r" in raw:
            raise line_error(number, raw.replace("\r", "\\r"), "stray CR inside the line")
        if kind == "a" and number > 3:         # most lines (allowed in either part; never a duplicate)
            head, sep, attr_value = raw.partition(":")     # (no ':' in "a=": head[2:] is the name)
            name = head[2:]
            if name not in _COMMON_ATTRIBUTES and (not name or not _TOKEN_RE.match(name)):
                raise line_error(number, raw, "invalid attribute name")
            if not sep:
                attr_value = None
            attributes.append((name, attr_value))
            attribute_lines.append(number)
            if current is not None and name in _CODEC_ATTRIBUTES:
                _add_codec_attribute(current, number, raw, name, attr_value)
            continue
        # RFC 8866 section 5: v=, o=, s= come first and in this order.
        if number <= 3 and kind != "vos"[number - 1]:
            raise line_error(number, raw, f"expected a '{'vos'[number - 1]}=' line here")
        value = raw[2:]
        if kind == "v":
            if number != 1:
                raise line_error(number, raw, "v= must appear only as the first line")
            if value != "0":
                raise line_error(number, raw, "unsupported protocol version (must be v=0)")
            continue
        if current is None:
            if kind not in _SESSION_TYPES and kind != "m":
                raise line_error(number, raw, f"unknown line type '{kind}='")
            if kind in "os" and kind in seen:
                raise line_error(number, raw, f"duplicate {kind}= line")
            seen.add(kind)
        elif kind not in _MEDIA_TYPES and kind != "m":
            raise line_error(number, raw, f"'{kind}=' is not allowed inside a media section")
        if kind == "o":
            sd.origin = _parse_origin(number, raw, value)
        elif kind == "s":
            if value == "":
                raise line_error(number, raw, "session name must not be empty (use 's=-')")
            sd.session_name = value
        elif kind == "t":
            parts = value.split(" ")
            if len(parts) != 2 or not (_number(parts[0]) and _number(parts[1])):
                raise line_error(number, raw, "expected 't=<start-time> <stop-time>'")
            sd.timing.append((int(parts[0]), int(parts[1])))
        elif kind == "c":
            conn = _parse_connection(number, raw, value)
            if current is None:
                sd.connection = conn
            else:
                current.connection = conn
        elif kind == "m":
            if "t" not in seen:
                raise line_error(number, raw, "m= line before any t= line")
            current = _parse_media_line(number, raw, value)
            sd.media.append(current)
            attributes, attribute_lines = current.attributes, current.attribute_lines
        # i= u= e= p= b= r= z= k= are syntactically accepted and not modelled.
    for required in "ost":
        if required not in seen:
            raise SdpError(f"SDP has no {required}= line")
    for media in sd.media:
        if media.connection is None and sd.connection is None:
            raise line_error(media.line, lines[media.line - 1], "no c= line at session or media level")
    return sd


def _load_scanner():  # type: ignore[no-untyped-def]
    """The compiled scanner's module (``wacall.domain._sdpscan``, sdpscan.c, built by setup.py), bound to this
    module's classes; None when WACALL_SDPSCAN=0 asks for the Python parser only, or the extension is missing
    (then Python parses everything)."""
    if os.environ.get("WACALL_SDPSCAN", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from . import _sdpscan
    except ImportError:  # pragma: no cover - built at install time; without a compiler Python parses
        return None
    _sdpscan.bind(SessionDescription, MediaDescription, Origin, Connection, RtpMap, _NO_ORIGIN)
    return _sdpscan


_SCANNER = _load_scanner()
_SCAN = _SCANNER.scan if _SCANNER is not None else None


# --------------------------------------------------------------------------------------------
# SDES (RFC 4568)
# --------------------------------------------------------------------------------------------

#: Suites Meta's SDES is assumed to accept (samples are masked); both take a 30-byte key||salt.
SDES_SUITES = {"AES_CM_128_HMAC_SHA1_80": 30, "AES_CM_128_HMAC_SHA1_32": 30}


@dataclass(frozen=True)
class CryptoAttribute:
    """``a=crypto:<tag> <suite> inline:<key||salt>[|lifetime][|MKI:len] [session params]``."""

    tag: int
    suite: str
    key_b64: str
    key: bytes
    lifetime: str | None = None
    mki: str | None = None
    session_params: tuple[str, ...] = ()


_CRYPTO_RE = re.compile(r"^(\d{1,9}) ([A-Za-z0-9_]+) (\S+)((?: \S+)*)$")


def parse_crypto(value: str) -> CryptoAttribute:
    """Parse an ``a=crypto`` value; ``ValueError`` with a reason if it is not acceptable.

    The usual value (an AES_CM_128 suite, an inline key of 40 base64 characters) is read by the compiled scanner
    (``_sdpscan.crypto``, ~5x fewer instructions); every other, every error included, by
    :func:`parse_crypto_in_python`, the reference (tests/test_sdp.py compares the two)."""
    if _CRYPTO is not None:
        crypto = _CRYPTO(value)
        if crypto is not None:
            return crypto
    return parse_crypto_in_python(value)


def parse_crypto_in_python(value: str) -> CryptoAttribute:
    """:func:`parse_crypto` in Python: the reference, and the way of what the compiled scanner leaves."""
    match = _CRYPTO_RE.match(value)
    if match is None:
        raise ValueError("expected 'a=crypto:<tag> <crypto-suite> inline:<key||salt>'")
    tag_text, suite, key_params, session_params = match.groups()     # (one call, not one per group)
    tag = int(tag_text)
    if suite not in SDES_SUITES:
        raise ValueError(f"unsupported crypto suite {suite} (use AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32)")
    first = key_params.split(";")[0]  # RFC 4568 allows several keys; the first one is used
    if not first.startswith("inline:"):
        raise ValueError("key parameter must use the 'inline:' method")
    key_b64, *extras = first[len("inline:"):].split("|")
    try:       # base64.b64decode(key_b64, validate=True) without its wrapper (a str of ASCII or a ValueError)
        key = binascii.a2b_base64(key_b64.encode("ascii"), strict_mode=True)
    except (binascii.Error, ValueError):
        raise ValueError("key material is not valid base64") from None
    if len(key) != SDES_SUITES[suite]:
        raise ValueError(f"key material decodes to {len(key)} bytes, {suite} needs {SDES_SUITES[suite]} (key||salt)")
    lifetime = mki = None
    for extra in extras:
        if ":" in extra:
            mki = extra
        else:
            lifetime = extra
    params = tuple(session_params.split()) if session_params else ()
    return made(CryptoAttribute, {"tag": tag, "suite": suite, "key_b64": key_b64, "key": key, "lifetime": lifetime,
                                  "mki": mki, "session_params": params})


if _SCANNER is not None:
    _SCANNER.bind_crypto(CryptoAttribute)
_CRYPTO = _SCANNER.crypto if _SCANNER is not None else None
