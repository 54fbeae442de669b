"""Meta-side media legs: the seam between call signalling and the (later) media relay.

A :class:`MediaLeg` holds everything Meta's SDP advertises for one call: a UDP port that is really
bound, ICE credentials (RFC 8445 section 5.3, RFC 8839 section 5.4: ``ice-char`` set, ufrag of at
least 4 and password of at least 22 characters), the DTLS certificate fingerprint (RFC 8122), one
audio SSRC (RFC 3550) and an SDES master key (RFC 4568 section 6.1: base64 of the 16-byte
AES-CM key followed by the 14-byte salt). ``wacall.media.engine`` puts a ``RelayEndpoint``
(ICE-lite, DTLS-SRTP or SDES, Opus, RFC 4733) behind it on the engine's shared ports
(``wacall.media.ports``). The leg is persisted with its call (:meth:`MediaLeg.to_doc`), so a
restarted relay answers on the same address with the same credentials.
"""

from __future__ import annotations

import base64
import secrets
import uuid
from dataclasses import dataclass, field, fields


#: RFC 8839 ``ice-char = ALPHA / DIGIT / "+" / "/"``.
ICE_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
ICE_UFRAG_LENGTH = 16
ICE_PWD_LENGTH = 32
SDES_KEY_SALT_BYTES = 30  # AES_CM_128: 16-byte key + 14-byte salt


def ice_string(length: int) -> str:
    """``length`` characters of ice-char (RFC 8839: ALPHA / DIGIT / "+" / "/"), 6 random bits each: the 64
    characters are indexed by the low 6 bits of random bytes (uniform, one call to the OS per string)."""
    return "".join(ICE_CHARS[b & 63] for b in secrets.token_bytes(length))


@dataclass
class MediaLeg:
    """One call's Meta-side media endpoint, as advertised in Meta's SDP."""

    call_id: str
    host: str
    port: int
    ice_ufrag: str
    ice_pwd: str
    fingerprint: str
    ssrc: int
    sdes_key_b64: str
    #: o= session id (RFC 8866 section 5.2); fixed per leg so rebuilding the SDP is stable.
    session_id: int = field(default_factory=lambda: secrets.randbits(62))
    #: MediaStream id used in a=msid-semantic / a=ssrc msid lines (RFC 8830).
    stream_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    #: the IPv6 host candidate's address and port, where the host has IPv6 (None otherwise)
    host6: str | None = None
    port6: int | None = None
    packets_received: int = 0
    bytes_received: int = 0
    last_remote_addr: tuple[str, int] | None = None

    @classmethod
    def create(cls, call_id: str, *, host: str = "127.0.0.1", port: int, fingerprint: str) -> MediaLeg:
        """A leg with fresh random credentials (no socket; :class:`MediaEngine` binds one)."""
        return cls(
            call_id=call_id,
            host=host,
            port=port,
            ice_ufrag=ice_string(ICE_UFRAG_LENGTH),
            ice_pwd=ice_string(ICE_PWD_LENGTH),
            fingerprint=fingerprint,
            ssrc=secrets.randbits(32),
            sdes_key_b64=base64.b64encode(secrets.token_bytes(SDES_KEY_SALT_BYTES)).decode("ascii"),
        )

    def to_doc(self) -> dict:
        """What a restarted relay needs to answer as this leg again (no counters)."""
        return {name: getattr(self, name) for name in _PERSISTED}

    @classmethod
    def from_doc(cls, doc: dict) -> MediaLeg:
        return cls(**{name: doc[name] for name in _PERSISTED if name in doc})


_PERSISTED = [f.name for f in fields(MediaLeg) if f.name not in ("packets_received", "bytes_received",
                                                                  "last_remote_addr")]
