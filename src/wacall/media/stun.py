"""STUN messages (RFC 8489, formerly RFC 5389), sans-I/O, as far as ICE connectivity checks need.

A :class:`StunMessage` is a method, a class, a 96-bit transaction id and an ordered list of
``(type, value)`` attributes. Known attributes are decoded to Python values, unknown ones are kept
as raw bytes, so a parsed message re-encodes with the same attributes in the same order:

==========================  ======  ==========================================
attribute                   type    value
==========================  ======  ==========================================
USERNAME                    0x0006  ``str``
MESSAGE-INTEGRITY           0x0008  ``bytes`` (20, HMAC-SHA1)
ERROR-CODE                  0x0009  ``(code, reason)``
UNKNOWN-ATTRIBUTES          0x000A  ``tuple[int, ...]``
XOR-MAPPED-ADDRESS          0x0020  ``(host, port)``, IPv4 or IPv6
PRIORITY                    0x0024  ``int`` (32 bits, RFC 8445)
USE-CANDIDATE               0x0025  ``None`` (empty, RFC 8445)
SOFTWARE                    0x8022  ``str``
FINGERPRINT                 0x8028  ``int`` (CRC-32 xor 0x5354554E)
ICE-CONTROLLED              0x8029  ``int`` (64-bit tie-breaker, RFC 8445)
ICE-CONTROLLING             0x802A  ``int`` (64-bit tie-breaker, RFC 8445)
anything else               ...     ``bytes``
==========================  ======  ==========================================

:meth:`StunMessage.encode` never copies MESSAGE-INTEGRITY or FINGERPRINT from the attribute
list; it computes them from its arguments and appends them last, in that order (RFC 8489
sections 14.5 and 14.7). :func:`check_integrity` and :func:`check_fingerprint` verify them on the
wire bytes, since both are defined over the bytes that precede them.
"""

from __future__ import annotations

import binascii
import enum
import hmac
import ipaddress
import secrets
import struct
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Union

MAGIC_COOKIE = 0x2112A442
FINGERPRINT_XOR = 0x5354554E
HEADER_LENGTH = 20
_MI_LENGTH = 20  # HMAC-SHA1
_MI_ATTR_LENGTH = 4 + _MI_LENGTH
_FP_ATTR_LENGTH = 4 + 4
_COOKIE_BYTES = MAGIC_COOKIE.to_bytes(4, "big")


class StunError(ValueError):
    """A datagram is not a well-formed STUN message."""


class StunClass(enum.IntEnum):
    REQUEST = 0b00
    INDICATION = 0b01
    SUCCESS = 0b10
    ERROR = 0b11


class StunMethod(enum.IntEnum):
    BINDING = 0x001


class Attr(enum.IntEnum):
    USERNAME = 0x0006
    MESSAGE_INTEGRITY = 0x0008
    ERROR_CODE = 0x0009
    UNKNOWN_ATTRIBUTES = 0x000A
    XOR_MAPPED_ADDRESS = 0x0020
    PRIORITY = 0x0024
    USE_CANDIDATE = 0x0025
    SOFTWARE = 0x8022
    FINGERPRINT = 0x8028
    ICE_CONTROLLED = 0x8029
    ICE_CONTROLLING = 0x802A


#: Decoded attribute values; see the module docstring for which type carries which.
AttrValue = Union[str, int, bytes, None, tuple[str, int], tuple[int, str], tuple[int, ...]]

_KNOWN_TYPES = frozenset(int(a) for a in Attr)


def _norm_type(attr_type: int) -> int:
    """Known types as :class:`Attr` members (readable reprs), others as plain ints."""
    return Attr(attr_type) if attr_type in _KNOWN_TYPES else int(attr_type)


def is_comprehension_required(attr_type: int) -> bool:
    """Types 0x0000-0x7FFF must be understood by the receiver (RFC 8489 section 14)."""
    return attr_type < 0x8000


def is_stun(data: bytes) -> bool:
    """RFC 7983 demultiplexing: first byte 0..3, plus the magic cookie at bytes 4..8."""
    return len(data) >= HEADER_LENGTH and data[0] <= 3 and data[4:8] == _COOKIE_BYTES


def classify_datagram(data: bytes) -> str:
    """RFC 7983 section 7 first-byte ranges: ``stun``, ``zrtp``, ``dtls``, ``turn``, ``rtp``
    (RTP and RTCP) or ``other``. ``stun`` also needs the magic cookie (see :func:`is_stun`)."""
    if not data:
        return "other"
    b = data[0]
    if b <= 3:
        return "stun" if is_stun(data) else "other"
    if 16 <= b <= 19:
        return "zrtp"
    if 20 <= b <= 63:
        return "dtls"
    if 64 <= b <= 79:
        return "turn"
    if 128 <= b <= 191:
        return "rtp"
    return "other"


# --- message type bits (RFC 8489 section 5: M11..M0 and C1 C0 interleaved) -----------------


def _pack_type(method: int, message_class: int) -> int:
    if not 0 <= method <= 0xFFF:
        raise StunError(f"STUN method {method:#x} does not fit 12 bits")
    return (
        (method & 0x000F)
        | ((method & 0x0070) << 1)
        | ((method & 0x0F80) << 2)
        | ((message_class & 1) << 4)
        | ((message_class & 2) << 7)
    )


def _unpack_type(message_type: int) -> tuple[int, StunClass]:
    method = (message_type & 0x000F) | ((message_type & 0x00E0) >> 1) | ((message_type & 0x3E00) >> 2)
    message_class = ((message_type >> 4) & 1) | ((message_type >> 7) & 2)
    known = method in StunMethod._value2member_map_
    return (StunMethod(method) if known else method), StunClass(message_class)


# --- attribute values --------------------------------------------------------------------------


def _xor_pad(transaction_id: bytes) -> bytes:
    return _COOKIE_BYTES + transaction_id


def _encode_xor_address(value: tuple[str, int], transaction_id: bytes) -> bytes:
    host, port = value[0], value[1]
    ip = ipaddress.ip_address(host.split("%", 1)[0])
    family = 0x01 if ip.version == 4 else 0x02
    pad = _xor_pad(transaction_id)
    addr = bytes(a ^ p for a, p in zip(ip.packed, pad))
    return struct.pack("!BBH", 0, family, port ^ (MAGIC_COOKIE >> 16)) + addr


def _decode_xor_address(data: bytes, transaction_id: bytes) -> tuple[str, int]:
    if len(data) < 4:
        raise StunError("XOR-MAPPED-ADDRESS shorter than 4 bytes")
    _, family, xport = struct.unpack("!BBH", data[:4])
    size = {0x01: 4, 0x02: 16}.get(family)
    if size is None:
        raise StunError(f"XOR-MAPPED-ADDRESS has unknown family {family:#x}")
    if len(data) != 4 + size:
        raise StunError("XOR-MAPPED-ADDRESS has the wrong length for its family")
    raw = bytes(a ^ p for a, p in zip(data[4:], _xor_pad(transaction_id)))
    return str(ipaddress.ip_address(raw)), xport ^ (MAGIC_COOKIE >> 16)


_FIXED_LENGTHS: dict[int, int] = {
    Attr.PRIORITY: 4,
    Attr.FINGERPRINT: 4,
    Attr.USE_CANDIDATE: 0,
    Attr.ICE_CONTROLLED: 8,
    Attr.ICE_CONTROLLING: 8,
    Attr.MESSAGE_INTEGRITY: _MI_LENGTH,
}


def _encode_value(attr_type: int, value: AttrValue, transaction_id: bytes) -> bytes:
    def bad() -> StunError:
        return StunError(f"cannot encode attribute {attr_type:#06x} = {value!r}")

    try:
        if attr_type in (Attr.USERNAME, Attr.SOFTWARE):
            if not isinstance(value, str):
                raise bad()
            return value.encode("utf-8")
        if attr_type == Attr.XOR_MAPPED_ADDRESS:
            if not (isinstance(value, tuple) and len(value) >= 2 and isinstance(value[0], str)):
                raise bad()
            return _encode_xor_address((value[0], int(value[1])), transaction_id)
        if attr_type in (Attr.PRIORITY, Attr.FINGERPRINT):
            if not isinstance(value, int):
                raise bad()
            return struct.pack("!I", value)
        if attr_type == Attr.USE_CANDIDATE:
            return b""
        if attr_type in (Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING):
            if not isinstance(value, int):
                raise bad()
            return struct.pack("!Q", value)
        if attr_type == Attr.ERROR_CODE:
            if not (isinstance(value, tuple) and len(value) == 2):
                raise bad()
            code, reason = value
            if not (isinstance(code, int) and isinstance(reason, str) and 300 <= code <= 699):
                raise bad()
            return struct.pack("!HBB", 0, code // 100, code % 100) + reason.encode("utf-8")
        if attr_type == Attr.UNKNOWN_ATTRIBUTES:
            if not (isinstance(value, tuple) and all(isinstance(t, int) for t in value)):
                raise bad()
            return b"".join(struct.pack("!H", t) for t in value)
        if not isinstance(value, bytes):
            raise bad()
        return value
    except (struct.error, ValueError) as exc:
        if isinstance(exc, StunError):
            raise
        raise bad() from exc


def _decode_value(attr_type: int, data: bytes, transaction_id: bytes) -> AttrValue:
    fixed = _FIXED_LENGTHS.get(attr_type)
    if fixed is not None and len(data) != fixed:
        raise StunError(f"attribute {attr_type:#06x} must be {fixed} bytes, not {len(data)}")
    try:
        if attr_type in (Attr.USERNAME, Attr.SOFTWARE):
            return data.decode("utf-8")
        if attr_type == Attr.XOR_MAPPED_ADDRESS:
            return _decode_xor_address(data, transaction_id)
        if attr_type in (Attr.PRIORITY, Attr.FINGERPRINT, Attr.ICE_CONTROLLED, Attr.ICE_CONTROLLING):
            return int.from_bytes(data, "big")
        if attr_type == Attr.USE_CANDIDATE:
            return None
        if attr_type == Attr.ERROR_CODE:
            if len(data) < 4:
                raise StunError("ERROR-CODE shorter than 4 bytes")
            return (data[2] & 0x07) * 100 + data[3], data[4:].decode("utf-8")
        if attr_type == Attr.UNKNOWN_ATTRIBUTES:
            if len(data) % 2:
                raise StunError("UNKNOWN-ATTRIBUTES has an odd length")
            return tuple(struct.unpack(f"!{len(data) // 2}H", data))
    except UnicodeDecodeError as exc:
        raise StunError(f"attribute {attr_type:#06x} is not UTF-8") from exc
    return bytes(data)  # MESSAGE-INTEGRITY and unknown attributes


def _padding(length: int) -> int:
    return -length % 4


# --- the message -------------------------------------------------------------------------------


@dataclass
class StunMessage:
    """One STUN message. ``method`` is a 12-bit method number (:class:`StunMethod` for known ones)."""

    method: int
    message_class: StunClass
    transaction_id: bytes = field(default_factory=lambda: secrets.token_bytes(12))
    attributes: list[tuple[int, AttrValue]] = field(default_factory=list)

    def __post_init__(self) -> None:
        if len(self.transaction_id) != 12:
            raise StunError("a STUN transaction id is 12 bytes")

    # -- attribute access

    def add(self, attr_type: int, value: AttrValue = None) -> StunMessage:
        """Append an attribute; returns ``self`` so calls chain."""
        self.attributes.append((_norm_type(attr_type), value))
        return self

    def get(self, attr_type: int, default: AttrValue = None) -> AttrValue:
        """The value of the first attribute of this type."""
        for t, v in self.attributes:
            if t == attr_type:
                return v
        return default

    def has(self, attr_type: int) -> bool:
        return any(t == attr_type for t, _ in self.attributes)

    def unknown_required(self) -> tuple[int, ...]:
        """Comprehension-required attribute types this module does not know (for a 420)."""
        return tuple(
            t for t, _ in self.attributes if is_comprehension_required(t) and t not in _KNOWN_TYPES
        )

    @property
    def username(self) -> str | None:
        v = self.get(Attr.USERNAME)
        return v if isinstance(v, str) else None

    @property
    def priority(self) -> int | None:
        v = self.get(Attr.PRIORITY)
        return v if isinstance(v, int) else None

    @property
    def use_candidate(self) -> bool:
        return self.has(Attr.USE_CANDIDATE)

    @property
    def ice_controlling(self) -> int | None:
        v = self.get(Attr.ICE_CONTROLLING)
        return v if isinstance(v, int) else None

    @property
    def ice_controlled(self) -> int | None:
        v = self.get(Attr.ICE_CONTROLLED)
        return v if isinstance(v, int) else None

    @property
    def xor_mapped_address(self) -> tuple[str, int] | None:
        v = self.get(Attr.XOR_MAPPED_ADDRESS)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int):
            return v[0], v[1]
        return None

    @property
    def error_code(self) -> tuple[int, str] | None:
        v = self.get(Attr.ERROR_CODE)
        if isinstance(v, tuple) and len(v) == 2 and isinstance(v[0], int) and isinstance(v[1], str):
            return v[0], v[1]
        return None

    # -- wire format

    def encode(self, integrity_key: bytes | None = None, fingerprint: bool = True, *, pad_byte: int = 0) -> bytes:
        """Serialise. With ``integrity_key``, MESSAGE-INTEGRITY (HMAC-SHA1 keyed with it, RFC 8489
        section 14.5) is appended; with ``fingerprint``, FINGERPRINT last (section 14.7).
        ``pad_byte`` fills attribute padding (any value is legal; RFC 5769 uses spaces)."""
        body = bytearray()
        for attr_type, value in self.attributes:
            if attr_type in (Attr.MESSAGE_INTEGRITY, Attr.FINGERPRINT):
                continue
            raw = _encode_value(attr_type, value, self.transaction_id)
            if len(raw) > 0xFFFF:
                raise StunError(f"attribute {attr_type:#06x} is too long")
            body += struct.pack("!HH", attr_type, len(raw)) + raw + bytes([pad_byte]) * _padding(len(raw))
        message_type = _pack_type(self.method, self.message_class)

        def header(length: int) -> bytes:
            return struct.pack("!HHI", message_type, length, MAGIC_COOKIE) + self.transaction_id

        out = header(len(body)) + bytes(body)
        if integrity_key is not None:
            covered = header(len(body) + _MI_ATTR_LENGTH) + bytes(body)
            mac = hmac.new(integrity_key, covered, "sha1").digest()
            body += struct.pack("!HH", Attr.MESSAGE_INTEGRITY, _MI_LENGTH) + mac
            out = header(len(body)) + bytes(body)
        if fingerprint:
            covered = header(len(body) + _FP_ATTR_LENGTH) + bytes(body)
            crc = (binascii.crc32(covered) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
            body += struct.pack("!HHI", Attr.FINGERPRINT, 4, crc)
            out = header(len(body)) + bytes(body)
        return out

    @classmethod
    def parse(cls, data: bytes) -> StunMessage:
        """Parse and validate framing; raises :class:`StunError`. Attributes after
        MESSAGE-INTEGRITY other than FINGERPRINT are dropped, being unauthenticated (RFC 8489
        section 14.5); anything after FINGERPRINT is an error. MESSAGE-INTEGRITY and FINGERPRINT
        are kept in ``attributes`` but not verified here."""
        method, message_class, transaction_id, attrs = _walk(data)
        message = cls(method=method, message_class=message_class, transaction_id=transaction_id)
        seen_integrity = False
        for attr_type, _, value in attrs:
            if seen_integrity and attr_type != Attr.FINGERPRINT:
                continue
            message.attributes.append((_norm_type(attr_type), _decode_value(attr_type, value, transaction_id)))
            if attr_type == Attr.MESSAGE_INTEGRITY:
                seen_integrity = True
        return message


def parse(data: bytes) -> StunMessage:
    """Module-level alias of :meth:`StunMessage.parse`."""
    return StunMessage.parse(data)


def peek_header(data: bytes) -> tuple[int, StunClass, bytes] | None:
    """Method, class and transaction id from a header that looks like STUN (:func:`is_stun`),
    even if the rest does not parse: enough to answer a broken request with a 400."""
    if not is_stun(data):
        return None
    method, message_class = _unpack_type(int.from_bytes(data[:2], "big") & 0x3FFF)
    return method, message_class, bytes(data[8:20])


def _walk(data: bytes) -> tuple[int, StunClass, bytes, list[tuple[int, int, bytes]]]:
    """Validate the framing; return method, class, transaction id and ``(type, offset, value)``."""
    if len(data) < HEADER_LENGTH:
        raise StunError("shorter than a STUN header")
    message_type, length = struct.unpack("!HH", data[:4])
    if message_type & 0xC000:
        raise StunError("the two leading bits of a STUN message are not zero")
    if data[4:8] != _COOKIE_BYTES:
        raise StunError("no STUN magic cookie")
    if length % 4 or len(data) != HEADER_LENGTH + length:
        raise StunError("STUN message length does not match the datagram")
    method, message_class = _unpack_type(message_type)
    attrs: list[tuple[int, int, bytes]] = []
    pos = HEADER_LENGTH
    while pos < len(data):
        if attrs and attrs[-1][0] == Attr.FINGERPRINT:
            raise StunError("attribute after FINGERPRINT")
        if pos + 4 > len(data):
            raise StunError("truncated attribute header")
        attr_type, attr_len = struct.unpack("!HH", data[pos : pos + 4])
        end = pos + 4 + attr_len
        if end + _padding(attr_len) > len(data):
            raise StunError(f"attribute {attr_type:#06x} overruns the message")
        attrs.append((attr_type, pos, bytes(data[pos + 4 : end])))
        pos = end + _padding(attr_len)
    return method, message_class, bytes(data[8:20]), attrs


def _find(data: bytes, attr_type: int) -> tuple[int, bytes] | None:
    try:
        attrs = _walk(data)[3]
    except StunError:
        return None
    for t, pos, value in attrs:
        if t == attr_type:
            return pos, value
    return None


def peek_username(data: bytes) -> str | None:
    """The USERNAME of a well-framed STUN message, without checking anything else (a shared port reads
    the ufrag to find the leg whose ICE agent then checks everything)."""
    found = _find(data, Attr.USERNAME)
    if found is None:
        return None
    try:
        return found[1].decode("utf-8")
    except UnicodeDecodeError:
        return None


def check_integrity(data: bytes, key: bytes) -> bool:
    """Whether ``data`` carries a MESSAGE-INTEGRITY that ``key`` produced. The HMAC covers the
    bytes before the attribute, with the header length set as if it ended the message."""
    found = _find(data, Attr.MESSAGE_INTEGRITY)
    if found is None or len(found[1]) != _MI_LENGTH:
        return False
    pos, mac = found
    covered = data[:2] + struct.pack("!H", pos - HEADER_LENGTH + _MI_ATTR_LENGTH) + data[4:pos]
    return hmac.compare_digest(mac, hmac.new(key, covered, "sha1").digest())


def check_fingerprint(data: bytes) -> bool:
    """Whether ``data`` ends with a correct FINGERPRINT (CRC-32 of the preceding bytes, xor
    0x5354554E). A message without one fails."""
    found = _find(data, Attr.FINGERPRINT)
    if found is None or len(found[1]) != 4 or found[0] != len(data) - _FP_ATTR_LENGTH:
        return False
    expected = (binascii.crc32(data[: found[0]]) ^ FINGERPRINT_XOR) & 0xFFFFFFFF
    return int.from_bytes(found[1], "big") == expected


def binding_request(
    username: str,
    *,
    priority: int | None = None,
    controlling: int | None = None,
    controlled: int | None = None,
    use_candidate: bool = False,
    transaction_id: bytes | None = None,
    extra: Iterable[tuple[int, AttrValue]] = (),
) -> StunMessage:
    """An ICE connectivity check as a full agent sends it (RFC 8445 section 7.1.1); not encoded."""
    message = StunMessage(StunMethod.BINDING, StunClass.REQUEST, transaction_id or secrets.token_bytes(12))
    message.add(Attr.USERNAME, username)
    if priority is not None:
        message.add(Attr.PRIORITY, priority)
    if controlling is not None:
        message.add(Attr.ICE_CONTROLLING, controlling)
    if controlled is not None:
        message.add(Attr.ICE_CONTROLLED, controlled)
    if use_candidate:
        message.add(Attr.USE_CANDIDATE)
    message.attributes.extend(extra)
    return message
