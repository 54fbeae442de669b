"""A small typed SDP model, Meta's validation rules for a business's SDP, and Meta-side builders.

Model: RFC 8866 (which obsoletes RFC 4566) session descriptions: ``v= o= s=`` first, the session
part, then ``m=`` sections; ``a=rtpmap``/``a=fmtp`` per RFC 8866 section 6.6/6.15; static payload
types per RFC 3551 section 6.

Validation (:func:`validate_business_sdp`) follows what Meta's calling docs ask of the SDP a
business sends to ``POST /{phone_number_id}/calls``:

- CRLF line endings (RFC 8866 section 5) and a raw string, not JSON-in-JSON (FAQ);
- exactly one audio m-line with Opus ``opus/48000/2`` (RFC 7587), or only G.711 (PCMU/PCMA, RFC 3551)
  when the number enables them in ``audio.additional_codecs``; RFC 4733 ``telephone-event/8000``;
- DTLS-SRTP: ``UDP/TLS/RTP/SAVPF`` (RFC 5764), ICE credentials (RFC 8839), a sha-256
  ``a=fingerprint`` (RFC 8122) and ``a=setup`` (RFC 4145; in an answer ``active`` or ``passive``,
  RFC 5763 section 5);
- SDES: ``RTP/SAVP`` (RFC 3711) with ``a=crypto`` (RFC 4568) for an AES_CM_128 suite.

Builders produce Meta's own SDP (ICE-lite, RFC 8445 section 2.5) shaped like the samples in
Meta's docs: the offer Meta sends for a user-initiated call and its answer to a
business-initiated call's offer (offer/answer per RFC 3264).

Every problem raises :class:`SdpError`, whose ``details`` names the offending line (1-based) or
says what is missing; the Graph layer puts it into ``error_data.details`` of a code-100 error.
"""

from __future__ import annotations

import base64
import binascii
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, NamedTuple

if TYPE_CHECKING:  # pragma: no cover
    from .leg import MediaLeg

__all__ = [
    "Connection",
    "CryptoAttribute",
    "MediaDescription",
    "Origin",
    "RtpMap",
    "SdpError",
    "SessionDescription",
    "build_meta_answer",
    "build_meta_offer",
    "parse_crypto",
    "parse_sdp",
    "validate_business_sdp",
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


def _line_error(number: int, raw: str, reason: str) -> SdpError:
    return SdpError(f"SDP line {number} '{_quote(raw)}': {reason}", line=number)


# --------------------------------------------------------------------------------------------
# Model
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Origin:
    """``o=<username> <sess-id> <sess-version> <nettype> <addrtype> <unicast-address>``."""

    username: str
    session_id: str
    session_version: str
    nettype: str
    addrtype: str
    address: str


@dataclass(frozen=True)
class Connection:
    """``c=<nettype> <addrtype> <connection-address>``."""

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
        return any(attr == name for attr, _ in self.attributes)

    def attribute(self, name: str) -> str | None:
        """Value of the first ``name`` attribute (``None`` if absent or a flag)."""
        for _, value in self.attributes_named(name):
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

    @property
    def is_rtp(self) -> bool:
        return "RTP/" in self.proto

    @property
    def payload_types(self) -> list[int]:
        return [int(f) for f in self.formats] if self.is_rtp else []

    def codec(self, pt: int) -> RtpMap | None:
        """The codec of payload type ``pt``: its a=rtpmap, else the RFC 3551 static assignment."""
        return self.rtpmap.get(pt) or STATIC_PAYLOAD_TYPES.get(pt)

    def find_codec(self, encoding: str, clock_rate: int, channels: int | None = None) -> int | None:
        """First payload type on the m-line carrying that codec."""
        for pt in self.payload_types:
            codec = self.codec(pt)
            if codec is not None and codec.matches(encoding, clock_rate, channels):
                return pt
        return None


@dataclass
class SessionDescription(_Attributes):
    """A parsed SDP session description."""

    version: int = 0
    origin: Origin = field(default_factory=lambda: Origin("-", "0", "0", "IN", "IP4", "0.0.0.0"))
    session_name: str = "-"
    connection: Connection | None = None
    timing: list[tuple[int, int]] = field(default_factory=list)
    media: list[MediaDescription] = field(default_factory=list)
    #: The raw lines without terminators (``lines[n - 1]`` is line ``n``).
    lines: list[str] = field(default_factory=list)

    @property
    def audio(self) -> MediaDescription | None:
        return next((m for m in self.media if m.kind == "audio"), None)

    def effective_attribute(self, media: MediaDescription, name: str) -> tuple[int, str | None] | None:
        """``(line, value)`` of ``name`` at media level, falling back to session level."""
        for found in media.attributes_named(name):
            return found
        for found in self.attributes_named(name):
            return found
        return None


# --------------------------------------------------------------------------------------------
# Parser
# --------------------------------------------------------------------------------------------

_LINE_RE = re.compile(r"^([a-z])=(.*)$", re.DOTALL)
_SESSION_TYPES = set("vosiuepcbtrzka")
_MEDIA_TYPES = set("icbka")
_TOKEN_RE = re.compile(r"^[!#$%&'*+\-.0-9A-Z^_`a-z{|}~]+$")  # RFC 8866 token
_RTPMAP_RE = re.compile(r"^(\d{1,3}) ([^\s/]+)/(\d+)(?:/(\d+))?$")
_FMTP_RE = re.compile(r"^(\d{1,3}) (.+)$")


def _parse_connection(number: int, raw: str, value: str) -> Connection:
    parts = value.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _line_error(number, raw, "expected 'c=<nettype> <addrtype> <address>'")
    if parts[1] not in ("IP4", "IP6"):
        raise _line_error(number, raw, f"unknown address type {parts[1]!r}")
    return Connection(*parts)


def _number(text: str) -> bool:
    """ASCII digits only: ``str.isdigit`` also accepts "²" or "³", which ``int()`` then refuses."""
    return text.isascii() and text.isdigit()


def _parse_origin(number: int, raw: str, value: str) -> Origin:
    parts = value.split(" ")
    if len(parts) != 6 or not all(parts):
        raise _line_error(
            number, raw,
            "expected 'o=<username> <sess-id> <sess-version> <nettype> <addrtype> <address>'",
        )
    if not _number(parts[1]) or not _number(parts[2]):
        raise _line_error(number, raw, "session id and version must be numeric")
    return Origin(*parts)


def _parse_media_line(number: int, raw: str, value: str) -> MediaDescription:
    parts = value.split(" ")
    if len(parts) < 4 or not all(parts):
        raise _line_error(number, raw, "expected 'm=<media> <port> <proto> <fmt> ...'")
    kind, port_text, proto, *formats = parts
    if not _TOKEN_RE.match(kind):
        raise _line_error(number, raw, "invalid media type")
    port_part, _, count_part = port_text.partition("/")
    if not _number(port_part) or int(port_part) > 65535:
        raise _line_error(number, raw, "invalid port")
    port_count: int | None = None
    if count_part:
        if not _number(count_part) or int(count_part) < 1:
            raise _line_error(number, raw, "invalid port count")
        port_count = int(count_part)
    if not all(_TOKEN_RE.match(p) for p in proto.split("/")):
        raise _line_error(number, raw, "invalid transport protocol")
    media = MediaDescription(
        kind=kind, port=int(port_part), port_count=port_count, proto=proto, formats=formats, line=number
    )
    if media.is_rtp:
        for fmt in formats:
            if not _number(fmt) or int(fmt) > 127:
                raise _line_error(number, raw, f"invalid RTP payload type {fmt!r}")
    return media


def _parse_attribute(number: int, raw: str, value: str) -> tuple[str, str | None]:
    name, sep, attr_value = value.partition(":")
    if not name or not _TOKEN_RE.match(name):
        raise _line_error(number, raw, "invalid attribute name")
    return name, (attr_value if sep else None)


def _add_media_attribute(media: MediaDescription, number: int, raw: str, name: str, value: str | None) -> None:
    media.attributes.append((name, value))
    media.attribute_lines.append(number)
    if name == "rtpmap":
        match = _RTPMAP_RE.match(value or "")
        if match is None or int(match.group(1)) > 127:
            raise _line_error(number, raw, "expected 'a=rtpmap:<payload type> <encoding>/<clock rate>[/<channels>]'")
        pt = int(match.group(1))
        if pt in media.rtpmap:
            raise _line_error(number, raw, f"duplicate rtpmap for payload type {pt}")
        channels = int(match.group(4)) if match.group(4) else None
        media.rtpmap[pt] = RtpMap(match.group(2), int(match.group(3)), channels)
    elif name == "fmtp":
        match = _FMTP_RE.match(value or "")
        if match is None:
            raise _line_error(number, raw, "expected 'a=fmtp:<payload type> <parameters>'")
        media.fmtp[int(match.group(1))] = match.group(2)


def _split_lines(text: str) -> list[str]:
    """Split on LF, dropping one CR before each LF; the final terminator yields no line."""
    pieces = text.split("\n")
    if pieces and pieces[-1] == "":
        pieces.pop()
    return [p[:-1] if p.endswith("\r") else p for p in pieces]


def parse_sdp(text: str) -> SessionDescription:
    """Parse RFC 8866 SDP. Accepts CRLF or LF endings (the CRLF rule is Meta's, see validate)."""
    if not isinstance(text, str) or not text.strip():
        raise SdpError("SDP is empty")
    lines = _split_lines(text)
    sd = SessionDescription(lines=lines)
    current: MediaDescription | None = None
    seen: set[str] = set()
    for index, raw in enumerate(lines):
        number = index + 1
        if raw == "":
            raise _line_error(number, raw, "empty line")
        if "\r" in raw:
            raise _line_error(number, raw.replace("\r", "\\r"), "stray CR inside the line")
        match = _LINE_RE.match(raw)
        if match is None:
            raise _line_error(number, raw, "expected '<type>=<value>' with a single lowercase letter type")
        kind, value = match.group(1), match.group(2)
        # RFC 8866 section 5: v=, o=, s= come first and in this order.
        expected_first = {1: "v", 2: "o", 3: "s"}.get(number)
        if expected_first is not None and kind != expected_first:
            raise _line_error(number, raw, f"expected a '{expected_first}=' line here")
        if kind == "v":
            if number != 1:
                raise _line_error(number, raw, "v= must appear only as the first line")
            if value != "0":
                raise _line_error(number, raw, "unsupported protocol version (must be v=0)")
            continue
        if current is None:
            if kind not in _SESSION_TYPES and kind != "m":
                raise _line_error(number, raw, f"unknown line type '{kind}='")
            if kind in "os" and kind in seen:
                raise _line_error(number, raw, f"duplicate {kind}= line")
            seen.add(kind)
        elif kind not in _MEDIA_TYPES and kind != "m":
            raise _line_error(number, raw, f"'{kind}=' is not allowed inside a media section")
        if kind == "o":
            sd.origin = _parse_origin(number, raw, value)
        elif kind == "s":
            if value == "":
                raise _line_error(number, raw, "session name must not be empty (use 's=-')")
            sd.session_name = value
        elif kind == "t":
            parts = value.split(" ")
            if len(parts) != 2 or not all(_number(p) for p in parts):
                raise _line_error(number, raw, "expected 't=<start-time> <stop-time>'")
            sd.timing.append((int(parts[0]), int(parts[1])))
        elif kind == "c":
            conn = _parse_connection(number, raw, value)
            if current is None:
                sd.connection = conn
            else:
                current.connection = conn
        elif kind == "m":
            if "t" not in seen:
                raise _line_error(number, raw, "m= line before any t= line")
            current = _parse_media_line(number, raw, value)
            sd.media.append(current)
        elif kind == "a":
            name, attr_value = _parse_attribute(number, raw, value)
            if current is None:
                sd.attributes.append((name, attr_value))
                sd.attribute_lines.append(number)
            else:
                _add_media_attribute(current, number, raw, name, attr_value)
        # i= u= e= p= b= r= z= k= are syntactically accepted and not modelled.
    for required in "ost":
        if required not in seen:
            raise SdpError(f"SDP has no {required}= line")
    for media in sd.media:
        if media.connection is None and sd.connection is None:
            raise _line_error(media.line, lines[media.line - 1], "no c= line at session or media level")
    return sd


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
    """Parse an ``a=crypto`` value; ``ValueError`` with a reason if it is not acceptable."""
    match = _CRYPTO_RE.match(value)
    if match is None:
        raise ValueError("expected 'a=crypto:<tag> <crypto-suite> inline:<key||salt>'")
    tag, suite, key_params = int(match.group(1)), match.group(2), match.group(3)
    if suite not in SDES_SUITES:
        raise ValueError(f"unsupported crypto suite {suite} (use AES_CM_128_HMAC_SHA1_80 or AES_CM_128_HMAC_SHA1_32)")
    first = key_params.split(";")[0]  # RFC 4568 allows several keys; the first one is used
    if not first.startswith("inline:"):
        raise ValueError("key parameter must use the 'inline:' method")
    key_b64, *extras = first[len("inline:"):].split("|")
    try:
        key = base64.b64decode(key_b64, validate=True)
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
    params = tuple(match.group(4).split()) if match.group(4) else ()
    return CryptoAttribute(tag, suite, key_b64, key, lifetime, mki, params)


# --------------------------------------------------------------------------------------------
# Validation of a business's SDP
# --------------------------------------------------------------------------------------------

DTLS_PROTO = "UDP/TLS/RTP/SAVPF"
SDES_PROTO = "RTP/SAVP"
_FINGERPRINT_RE = re.compile(r"^([A-Za-z0-9-]+) ((?:[0-9A-Fa-f]{2}:){31}[0-9A-Fa-f]{2})$")
_ICE_RE = re.compile(r"^[A-Za-z0-9+/]+$")


def _normalise_key_exchange(key_exchange: str) -> str:
    kx = key_exchange.upper()
    if kx not in ("DTLS", "SDES"):
        raise ValueError(f"key_exchange must be 'DTLS' or 'SDES', not {key_exchange!r}")
    return kx


def _check_raw_text(text: str) -> None:
    if not isinstance(text, str) or not text.strip():
        raise SdpError("SDP is empty")
    first = text.lstrip().split("\n", 1)[0].rstrip("\r")
    if text.lstrip().startswith(("{", '"')):
        raise _line_error(
            1, first, "sdp must be the raw SDP text, not a JSON-encoded object (JSON-in-JSON)"
        )
    pieces = text.split("\n")
    for index, piece in enumerate(pieces[:-1]):
        if not piece.endswith("\r"):
            raise _line_error(index + 1, piece, "line ends in a bare LF; SDP lines must end in CRLF")
    if pieces[-1] != "":
        raise _line_error(len(pieces), pieces[-1], "line does not end in CRLF")


def _single_audio(sd: SessionDescription) -> MediaDescription:
    audio: MediaDescription | None = None
    for media in sd.media:
        raw = sd.lines[media.line - 1]
        if media.kind != "audio":
            raise _line_error(media.line, raw, f"only one audio m-line is supported ({media.kind} is not)")
        if audio is not None:
            raise _line_error(media.line, raw, "only one audio m-line is supported (second m=audio)")
        audio = media
    if audio is None:
        raise SdpError("No m=audio line found in SDP")
    if audio.port == 0:
        raise _line_error(audio.line, sd.lines[audio.line - 1], "audio m-line is rejected (port 0)")
    return audio


def _check_payload_types(sd: SessionDescription, audio: MediaDescription, extra: set[str]) -> None:
    """Every payload type has a codec, and one of them is Opus or a G.711 codec the number enabled.

    Meta offers PCMU/PCMA "for interoperability with legacy telephony systems or PSTN gateways" that
    do not support Opus (call settings, audio codec): with them enabled a G.711-only endpoint is fine.
    """
    raw = sd.lines[audio.line - 1]
    for pt in audio.payload_types:
        if audio.codec(pt) is None:
            raise _line_error(audio.line, raw, f"payload type {pt} has no a=rtpmap")
    if audio.find_codec("opus", 48000, 2) is not None:
        return
    if any(audio.find_codec(name, 8000) is not None for name in extra & {"PCMU", "PCMA"}):
        return
    reason = "Opus (a=rtpmap:<pt> opus/48000/2) is required on the audio m-line"
    offered_g711 = [name for name in ("PCMU", "PCMA") if audio.find_codec(name, 8000) is not None]
    if offered_g711:
        reason += (f"; without Opus, {'/'.join(offered_g711)} must be enabled in settings "
                   "calling.audio.additional_codecs")
    raise _line_error(audio.line, raw, reason)


def _check_dtls(sd: SessionDescription, audio: MediaDescription, role: str) -> None:
    if audio.proto != DTLS_PROTO:
        raise _line_error(
            audio.line, sd.lines[audio.line - 1],
            f"transport must be {DTLS_PROTO} for DTLS key exchange (got {audio.proto})",
        )
    for name, minimum in (("ice-ufrag", 4), ("ice-pwd", 22)):
        found = sd.effective_attribute(audio, name)
        if found is None:
            raise SdpError(f"No a={name} found in SDP")
        line, value = found
        if not value or not _ICE_RE.match(value) or not minimum <= len(value) <= 256:
            raise _line_error(line, sd.lines[line - 1], f"invalid {name} (need {minimum}-256 ICE characters)")
    fingerprints = list(audio.attributes_named("fingerprint")) or list(sd.attributes_named("fingerprint"))
    if not fingerprints:
        raise SdpError("No fingerprint found in SDP")
    sha256 = False
    for line, value in fingerprints:
        algo = (value or "").split(" ", 1)[0].lower()
        if algo != "sha-256":
            continue
        if not _FINGERPRINT_RE.match(value or ""):
            raise _line_error(line, sd.lines[line - 1], "invalid fingerprint (expected 'sha-256' and 32 hex pairs)")
        sha256 = True
    if not sha256:
        line = fingerprints[0][0]
        raise _line_error(line, sd.lines[line - 1], "fingerprint hash function must be sha-256")
    setup = sd.effective_attribute(audio, "setup")
    if setup is None:
        raise SdpError("No a=setup found in SDP")
    line, value = setup
    allowed = ("active", "passive") if role == "answer" else ("active", "passive", "actpass")
    if value not in allowed:
        raise _line_error(line, sd.lines[line - 1], f"a=setup in an {role} must be one of {', '.join(allowed)}")


def _check_sdes(sd: SessionDescription, audio: MediaDescription) -> None:
    if audio.proto != SDES_PROTO:
        raise _line_error(
            audio.line, sd.lines[audio.line - 1],
            f"transport must be {SDES_PROTO} for SDES key exchange (got {audio.proto})",
        )
    problems: list[tuple[int, str]] = []
    for line, value in audio.attributes_named("crypto"):
        try:
            parse_crypto(value or "")
        except ValueError as exc:
            problems.append((line, str(exc)))
        else:
            return  # at least one usable key is enough; other suites are simply not chosen
    if problems:
        # Prefer a malformed line of a supported suite over a merely unsupported suite.
        line, reason = min(problems, key=lambda p: (p[1].startswith("unsupported crypto suite"), p[0]))
        raise _line_error(line, sd.lines[line - 1], reason)
    raise SdpError("No a=crypto line found in SDP")


def _check_answer_codecs(sd: SessionDescription, audio: MediaDescription, extra: set[str]) -> None:
    for pt in audio.payload_types:
        codec = audio.codec(pt)
        assert codec is not None  # checked by _check_payload_types
        name = codec.encoding.upper()
        ok = (
            codec.matches("opus", 48000, 2)
            or codec.matches("telephone-event", 8000)
            or (name in ("PCMU", "PCMA") and codec.clock_rate == 8000 and name in extra)
        )
        if ok:
            continue
        rtpmap_lines = (ln for ln, v in audio.attributes_named("rtpmap") if (v or "").split(" ")[0] == str(pt))
        line = next(rtpmap_lines, audio.line)
        reason = f"codec {codec} (payload type {pt}) is not supported in an answer"
        if name in ("PCMU", "PCMA"):
            reason += "; enable it in settings calling.audio.additional_codecs"
        raise _line_error(line, sd.lines[line - 1], reason)


def validate_business_sdp(
    text: str,
    *,
    key_exchange: str = "DTLS",
    additional_codecs: Sequence[str] = (),
    role: str = "answer",
) -> SessionDescription:
    """Check a business's SDP as Meta does and return it parsed.

    ``role`` is ``"offer"`` for ``connect`` and ``"answer"`` for ``pre_accept``/``accept``;
    ``key_exchange`` is the number's ``srtp_key_exchange_protocol``; ``additional_codecs`` its
    ``audio.additional_codecs`` (``PCMA``/``PCMU``).
    """
    kx = _normalise_key_exchange(key_exchange)
    if role not in ("offer", "answer"):
        raise ValueError(f"role must be 'offer' or 'answer', not {role!r}")
    extra = {c.upper() for c in additional_codecs}
    _check_raw_text(text)
    sd = parse_sdp(text)
    audio = _single_audio(sd)
    if kx == "DTLS":
        _check_dtls(sd, audio, role)
    else:
        _check_sdes(sd, audio)
    _check_payload_types(sd, audio, extra)
    if role == "answer":
        _check_answer_codecs(sd, audio, extra)
    return sd


# --------------------------------------------------------------------------------------------
# Meta-side builders
# --------------------------------------------------------------------------------------------

OPUS_PT = 111
TELEPHONE_EVENT_PT = 126
_CANDIDATE_PRIORITY = 2122260223
_CANDIDATE_PRIORITY_V6 = _CANDIDATE_PRIORITY - 256   # RFC 8445 §5.1.2.1: local preference one below IPv4's
_EXTMAPS = (
    "urn:ietf:params:rtp-hdrext:ssrc-audio-level",
    "http://www.webrtc.org/experiments/rtp-hdrext/abs-send-time",
    "http://www.ietf.org/id/draft-holmer-rmcat-transport-wide-cc-extensions-01",
)
#: Opus fmtp in Meta's Graph (WebRTC) samples and in its SIP samples (used for SDES).
_OPUS_FMTP_GRAPH = "minptime=10;useinbandfec=1"
_OPUS_FMTP_SIP = "maxaveragebitrate=20000;maxplaybackrate=16000;minptime=20;sprop-maxcapturerate=16000;useinbandfec=1"
_G711 = (("PCMU", 0), ("PCMA", 8))
_SSRC_CNAME = "WhatsAppAudioStream1"
_TRACK_ID = "WhatsAppTrack1"


def _foundation(leg: MediaLeg, base: str | None = None) -> str:
    """RFC 8445 §5.1.1.3: candidates from different base addresses get different foundations."""
    return str(1_000_000_000 + ((leg.session_id + (1 if base else 0)) % 3_000_000_000))


def _session_header(leg: MediaLeg, mid: str, *, ice_lite: bool) -> list[str]:
    lines = [
        "v=0",
        f"o=- {leg.session_id} 2 IN IP4 127.0.0.1",
        "s=-",
        "t=0 0",
        f"a=group:BUNDLE {mid}",
        f"a=msid-semantic: WMS {leg.stream_id}",
    ]
    if ice_lite:
        lines.append("a=ice-lite")
    return lines


def _dtls_transport_lines(leg: MediaLeg, setup: str, *, trickle: bool = False) -> list[str]:
    lines = [
        f"a=candidate:{_foundation(leg)} 1 udp {_CANDIDATE_PRIORITY} {leg.host} {leg.port} typ host"
        f" generation 0 network-cost 50 ufrag {leg.ice_ufrag}",
    ]
    if leg.port6:       # Meta's relay offers an IPv6 host candidate too, at a lower priority
        lines.append(f"a=candidate:{_foundation(leg, leg.host6)} 1 udp {_CANDIDATE_PRIORITY_V6} {leg.host6} "
                     f"{leg.port6} typ host generation 0 network-cost 50 ufrag {leg.ice_ufrag}")
    lines += [
        f"a=ice-ufrag:{leg.ice_ufrag}",
        f"a=ice-pwd:{leg.ice_pwd}",
    ]
    if trickle:
        lines.append("a=ice-options:trickle")
    lines += [f"a=fingerprint:sha-256 {leg.fingerprint}", f"a=setup:{setup}"]
    return lines


def _ssrc_lines(leg: MediaLeg) -> list[str]:
    return [
        f"a=ssrc:{leg.ssrc} cname:{_SSRC_CNAME}",
        f"a=ssrc:{leg.ssrc} msid:{leg.stream_id} {_TRACK_ID}",
        f"a=ssrc:{leg.ssrc} mslabel:{leg.stream_id}",
        f"a=ssrc:{leg.ssrc} label:{_TRACK_ID}",
    ]


def _join(lines: list[str]) -> str:
    return "\r\n".join(lines) + "\r\n"


def _enabled_g711(additional_codecs: Sequence[str]) -> list[tuple[str, int]]:
    wanted = {c.upper() for c in additional_codecs}
    return [(name, pt) for name, pt in _G711 if name in wanted]


def build_meta_offer(
    leg: MediaLeg, *, key_exchange: str = "DTLS", additional_codecs: Sequence[str] = ()
) -> str:
    """Meta's SDP offer for a user-initiated call (connect webhook / SIP INVITE)."""
    kx = _normalise_key_exchange(key_exchange)
    g711 = _enabled_g711(additional_codecs)
    pts = [OPUS_PT, *(pt for _, pt in g711), TELEPHONE_EVENT_PT]
    proto = DTLS_PROTO if kx == "DTLS" else SDES_PROTO
    lines = _session_header(leg, "audio", ice_lite=kx == "DTLS")
    lines += [
        f"m=audio {leg.port} {proto} {' '.join(map(str, pts))}",
        f"c=IN IP4 {leg.host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
    ]
    if kx == "DTLS":
        lines += _dtls_transport_lines(leg, "actpass")
    lines.append("a=mid:audio")
    if kx == "DTLS":
        lines += [f"a=extmap:{i} {uri}" for i, uri in enumerate(_EXTMAPS, start=1)]
    lines += ["a=sendrecv", "a=rtcp-mux"]
    if kx == "SDES":
        lines.append(f"a=crypto:1 AES_CM_128_HMAC_SHA1_80 inline:{leg.sdes_key_b64}")
    lines.append(f"a=rtpmap:{OPUS_PT} opus/48000/2")
    if kx == "DTLS":
        lines.append(f"a=rtcp-fb:{OPUS_PT} transport-cc")
    lines.append(f"a=fmtp:{OPUS_PT} {_OPUS_FMTP_GRAPH if kx == 'DTLS' else _OPUS_FMTP_SIP}")
    lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in g711]
    lines += [f"a=rtpmap:{TELEPHONE_EVENT_PT} telephone-event/8000", "a=ptime:20", "a=maxptime:20"]
    lines += _ssrc_lines(leg)
    return _join(lines)


_DIRECTION_ANSWER = {"sendrecv": "sendrecv", "sendonly": "recvonly", "recvonly": "sendonly", "inactive": "inactive"}


def _answer_direction(offer: SessionDescription, audio: MediaDescription) -> str:
    for attr, _ in audio.attributes:
        if attr in _DIRECTION_ANSWER:
            return _DIRECTION_ANSWER[attr]
    for attr, _ in offer.attributes:
        if attr in _DIRECTION_ANSWER:
            return _DIRECTION_ANSWER[attr]
    return "sendrecv"


def _telephone_event_pt(audio: MediaDescription) -> int:
    pt = audio.find_codec("telephone-event", 8000)
    if pt is not None:
        return pt
    # Meta: "even if it is absent, the API still proceeds with 8000 clock rate against PT 126".
    used = set(audio.payload_types)
    if TELEPHONE_EVENT_PT not in used:
        return TELEPHONE_EVENT_PT
    return next(p for p in range(127, 95, -1) if p not in used)


def build_meta_answer(
    leg: MediaLeg,
    offer: SessionDescription,
    *,
    key_exchange: str = "DTLS",
    additional_codecs: Sequence[str] = (),
) -> str:
    """Meta's SDP answer to a business's offer (business-initiated call, connect webhook / 200 OK).

    ``offer`` should already have passed ``validate_business_sdp(role="offer")``.
    """
    kx = _normalise_key_exchange(key_exchange)
    audio = offer.audio
    if audio is None:
        raise SdpError("No m=audio line found in SDP")
    opus_pt = audio.find_codec("opus", 48000, 2)
    te_pt = _telephone_event_pt(audio)
    g711: list[tuple[str, int]] = []
    for name, _ in _enabled_g711(additional_codecs):
        offered_pt = audio.find_codec(name, 8000)
        if offered_pt is not None:
            g711.append((name, offered_pt))
    if opus_pt is None and not g711:
        raise SdpError("No opus/48000/2 rtpmap (nor an enabled PCMU/PCMA) found in the offer")
    # a G.711-only offer (a legacy endpoint without Opus) gets a G.711-only answer
    pts = [*([opus_pt] if opus_pt is not None else []), *(pt for _, pt in g711), te_pt]
    mid = audio.attribute("mid") or "audio"
    proto = DTLS_PROTO if kx == "DTLS" else SDES_PROTO
    lines = _session_header(leg, mid, ice_lite=kx == "DTLS")
    lines += [
        f"m=audio {leg.port} {proto} {' '.join(map(str, pts))}",
        f"c=IN IP4 {leg.host}",
        "a=rtcp:9 IN IP4 0.0.0.0",
    ]
    if kx == "DTLS":
        found = offer.effective_attribute(audio, "setup")
        offered_setup = found[1] if found else "actpass"
        setup = "passive" if offered_setup == "active" else "active"
        lines += _dtls_transport_lines(leg, setup, trickle=True)
    lines.append(f"a=mid:{mid}")
    if kx == "DTLS":
        for _, value in audio.attributes_named("extmap"):
            ext_id, _, uri = (value or "").partition(" ")
            if uri.split(" ")[0] in _EXTMAPS:
                lines.append(f"a=extmap:{ext_id} {uri.split(' ')[0]}")
    lines.append(f"a={_answer_direction(offer, audio)}")
    if audio.has_attribute("rtcp-mux") or kx == "SDES":
        lines.append("a=rtcp-mux")
    if kx == "SDES":
        crypto = _first_acceptable_crypto(audio)
        lines.append(f"a=crypto:{crypto.tag} {crypto.suite} inline:{leg.sdes_key_b64}")
    if opus_pt is not None:
        lines.append(f"a=rtpmap:{opus_pt} opus/48000/2")
        offered_fb = {v for _, v in audio.attributes_named("rtcp-fb")}
        if kx == "DTLS" and f"{opus_pt} transport-cc" in offered_fb:
            lines.append(f"a=rtcp-fb:{opus_pt} transport-cc")
        lines.append(f"a=fmtp:{opus_pt} {_OPUS_FMTP_GRAPH if kx == 'DTLS' else _OPUS_FMTP_SIP}")
    lines += [f"a=rtpmap:{pt} {name}/8000" for name, pt in g711]
    lines += [f"a=rtpmap:{te_pt} telephone-event/8000", "a=ptime:20", "a=maxptime:20"]
    lines += _ssrc_lines(leg)
    return _join(lines)


def _first_acceptable_crypto(audio: MediaDescription) -> CryptoAttribute:
    for _, value in audio.attributes_named("crypto"):
        try:
            return parse_crypto(value or "")
        except ValueError:
            continue
    raise SdpError("No acceptable a=crypto line found in the offer")
