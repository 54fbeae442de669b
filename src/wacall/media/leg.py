"""Meta-side media legs: the relay's own record of one call's endpoint.

A :class:`MediaLeg` holds everything Meta's SDP advertises for one call: a UDP port that is really
bound, ICE credentials (RFC 8445 section 5.3, RFC 8839 section 5.4: ``ice-char`` set, ufrag of at
least 4 and password of at least 22 characters), the DTLS certificate fingerprint (RFC 8122), one
audio SSRC (RFC 3550) and an SDES master key (RFC 4568 section 6.1: base64 of the 16-byte
AES-CM key followed by the 14-byte salt). ``wacall.media.engine`` puts a ``RelayEndpoint``
(ICE-lite, DTLS-SRTP or SDES, Opus, RFC 4733) behind it on the engine's shared ports
(``wacall.media.ports``). What the domain sees of it is :meth:`MediaLeg.local`, a frozen
:class:`~wacall.domain.sdp.LocalMedia` (no sockets, no counters) from which Meta's SDP is built and
which is persisted with its call, so a restarted relay answers on the same address with the same
credentials.
"""

from __future__ import annotations

import binascii
import os
import secrets
import struct
import uuid
from dataclasses import dataclass, field

from ..domain.sdp import LocalMedia
from ..domain.sdp_syntax import made


#: RFC 8839 ``ice-char = ALPHA / DIGIT / "+" / "/"``.
ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
_ICE_TABLE = bytes(ord(ICE_CHARS[b & 63]) for b in range(256))   # a random byte -> its ice-char (low 6 bits)
ICE_UFRAG_LENGTH = 16
ICE_PWD_LENGTH = 32
SDES_KEY_SALT_BYTES = 30  # AES_CM_128: 16-byte key + 14-byte salt
# where MediaLeg.create finds each value in its one random read: the ICE ufrag and password, the SDES key, then
# the SSRC (4 bytes), the o= session id (8), the a=msid UUID (16) and the RTP stream's random bases (6)
_UFRAG = ICE_UFRAG_LENGTH
_PWD = _UFRAG + ICE_PWD_LENGTH
_KEY = _PWD + SDES_KEY_SALT_BYTES
_RANDOM_BYTES = _KEY + 4 + 8 + 16 + 6
#: the numbers after the SDES key: the SSRC, the o= session id, (the UUID's 16 bytes), the 48-bit RTP bases as 16 + 32
_NUMBERS = struct.Struct("!IQ16xHI")


def ice_string(length: int) -> str:
    """``length`` characters of ice-char (RFC 8839: ALPHA / DIGIT / "+" / "/"), 6 random bits each: the 64
    characters are indexed by the low 6 bits of random bytes (uniform, one call to the OS per string)."""
    return "".join(ICE_CHARS[b & 63] for b in secrets.token_bytes(length))


_VARIANT = {c: "89ab"[int(c, 16) & 3] for c in "0123456789abcdef"}   # a hex digit -> 10xx (RFC 9562 variant)


def _uuid4(random16: bytes) -> str:
    """A UUID version 4 (RFC 9562 section 5.4) from 16 random bytes, as ``str(uuid.UUID(bytes=..., version=4))``
    writes it (the uuid module's object cost ~2 µs per call; this is the same bits and text): the version
    digit replaces the 13th hex digit, the variant's two bits the top of the 17th."""
    h = random16.hex()
    return f"{h[:8]}-{h[8:12]}-4{h[13:16]}-{_VARIANT[h[16]]}{h[17:20]}-{h[20:]}"


@dataclass(slots=True)
class MediaLeg:
    """One call's Meta-side media endpoint: what Meta's SDP advertises of it (``local``, frozen; its
    fields read through, ``leg.port`` is ``leg.local.port``, and cannot be set: replace ``local``) and
    what the relay counts on it."""

    local: LocalMedia
    packets_received: int = 0
    bytes_received: int = 0
    last_remote_addr: tuple[str, int] | None = None
    #: the random bases of the user's RTP sequence number (low 16 bits) and timestamp (the 32 above them),
    #: RFC 3550 section 5.1; drawn with the credentials by :meth:`create`
    rtp_start: int = field(default_factory=lambda: secrets.randbits(48))

    def __getattr__(self, name: str):
        if name == "local":                     # not set yet (copy, unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.local, name)

    @classmethod
    def create(cls, call_id: str, *, host: str = "127.0.0.1", port: int, fingerprint: str,
               host6: str | None = None, port6: int | None = None) -> MediaLeg:
        """A leg with fresh random credentials (no socket; :class:`MediaEngine` binds one), and an IPv6
        address if given. Its random values come from one read of the OS's generator (one per call)."""
        ufrag, pwd, key = _UFRAG, _PWD, _KEY
        raw = os.urandom(_RANDOM_BYTES)                            # (what secrets.token_bytes reads)
        ice = raw[:pwd].translate(_ICE_TABLE).decode("ascii")     # as ice_string: 6 bits a character
        ssrc, session_id, start_high, start_low = _NUMBERS.unpack_from(raw, key)   # (one unpack: ~2 k each by int.from_bytes)
        # the frozen LocalMedia with every field at once, from a dict literal (its keyword form costs ~3 k more)
        local = made(LocalMedia, {
            "call_id": call_id,
            "host": host,
            "port": port,
            "ice_ufrag": ice[:ufrag],
            "ice_pwd": ice[ufrag:],
            "fingerprint": fingerprint,
            "ssrc": ssrc,
            "sdes_key_b64": binascii.b2a_base64(raw[pwd:key], newline=False).decode("ascii"),
            "session_id": session_id >> 2,                      # 62 bits: o= session id (RFC 8866 §5.2)
            "stream_id": _uuid4(raw[key + 12:key + 28]),         # a=msid (RFC 8830), a UUID v4
            "host6": host6,
            "port6": port6,
        })
        return cls(local, rtp_start=start_high << 32 | start_low)

    def to_doc(self) -> dict:
        """What a restarted relay needs to answer as this leg again (no counters)."""
        return self.local.to_doc()

    @classmethod
    def from_doc(cls, doc: dict) -> MediaLeg:
        doc = {"session_id": secrets.randbits(62), "stream_id": str(uuid.uuid4()), **doc}
        return cls(LocalMedia.from_doc(doc))

