"""SRTP protection profiles and a two-direction SRTP context on top of libsrtp (pylibsrtp).

The relay keys SRTP one of two ways:

- DTLS-SRTP (RFC 5764): the DTLS handshake negotiates a profile through the ``use_srtp``
  extension and both sides export the keys (see :mod:`wacall.media.dtls`);
- SDES (RFC 4568): each side sends its own master key||salt in an ``a=crypto`` line and uses it
  for what it sends; what it receives is protected with the peer's key.

Either way the result is an :class:`SrtpContext`: one outbound libsrtp session keyed with the
local key||salt, one inbound session keyed with the remote key||salt. The profile table covers
the AES-CM suites of RFC 3711/RFC 4568 and the AES-GCM ones of RFC 7714.
"""

from __future__ import annotations

import base64
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pylibsrtp
from pylibsrtp import Policy, Session

if TYPE_CHECKING:  # pragma: no cover
    from ..domain.sdp_syntax import CryptoAttribute

__all__ = [
    "AEAD_AES_128_GCM",
    "AEAD_AES_256_GCM",
    "AES_CM_128_HMAC_SHA1_32",
    "AES_CM_128_HMAC_SHA1_80",
    "PROFILES",
    "SrtpContext",
    "SrtpError",
    "SrtpProfile",
    "generate_key_salt",
    "get_profile",
    "is_rtcp",
    "sdes_crypto_line",
]

_Operation = Callable[[bytes], bytes]

try:   # pylibsrtp's cffi binding: the per-packet fast path below uses it directly
    from pylibsrtp._binding import ffi as _ffi, lib as _lib
    _MAX_TRAILER = pylibsrtp.SRTP_MAX_TRAILER_LEN
except (ImportError, AttributeError):  # pragma: no cover - other pylibsrtp layouts use the public API
    _ffi = _lib = None
    _MAX_TRAILER = 0


class _Direct:
    """``srtp_protect``/``srtp_unprotect`` on a pylibsrtp Session's own C context and buffer, without
    the cffi allocation pylibsrtp makes per packet (about half of its cost at 50 packets/s x 1000
    calls). Returns None when libsrtp reports an error, so the caller reruns the packet through the
    public API, which raises the precise exception (a failed check does not change libsrtp's state)."""

    __slots__ = ("_ctx", "_cdata", "_buffer", "_size", "_len")

    def __init__(self, session: Session) -> None:
        self._ctx = session._srtp[0]
        self._cdata = session._cdata
        self._buffer = session._buffer
        self._size = len(session._buffer)
        self._len = _ffi.new("int *")

    @classmethod
    def wrap(cls, session: Session) -> "_Direct | None":
        if _ffi is None:
            return None
        try:
            return cls(session)
        except (AttributeError, TypeError):  # pragma: no cover - a pylibsrtp without these internals
            return None

    def run(self, func, packet: bytes, trailer: int) -> bytes | None:
        n = len(packet)
        if n > self._size - trailer:
            return None
        self._buffer[0:n] = packet
        self._len[0] = n
        if func(self._ctx, self._cdata, self._len) != 0:
            return None
        return self._buffer[0:self._len[0]]

#: Replay window of the inbound session (libsrtp's minimum is 64; WebRTC stacks use 1024).
REPLAY_WINDOW = 1024


@dataclass(frozen=True)
class SrtpProfile:
    """One SRTP protection profile.

    ``name`` is the SDES crypto-suite name (RFC 4568 section 6.2, RFC 7714 section 14.2),
    ``dtls_name`` the RFC 5764/RFC 7714 DTLS-SRTP profile name, ``openssl_name`` what OpenSSL's
    ``use_srtp`` configuration calls it, ``libsrtp_profile`` the pylibsrtp policy constant.
    """

    name: str
    dtls_name: str
    openssl_name: bytes
    libsrtp_profile: int
    key_length: int
    salt_length: int
    #: Authentication tag appended to each SRTP packet (the AEAD tag for GCM).
    tag_length: int

    @property
    def key_salt_length(self) -> int:
        """Length of a master key||salt as libsrtp and ``a=crypto inline:`` carry it."""
        return self.key_length + self.salt_length

    def __str__(self) -> str:
        return self.name


AES_CM_128_HMAC_SHA1_80 = SrtpProfile(
    "AES_CM_128_HMAC_SHA1_80",
    "SRTP_AES128_CM_HMAC_SHA1_80",
    b"SRTP_AES128_CM_SHA1_80",
    Policy.SRTP_PROFILE_AES128_CM_SHA1_80,
    key_length=16,
    salt_length=14,
    tag_length=10,
)
AES_CM_128_HMAC_SHA1_32 = SrtpProfile(
    "AES_CM_128_HMAC_SHA1_32",
    "SRTP_AES128_CM_HMAC_SHA1_32",
    b"SRTP_AES128_CM_SHA1_32",
    Policy.SRTP_PROFILE_AES128_CM_SHA1_32,
    key_length=16,
    salt_length=14,
    tag_length=4,
)
AEAD_AES_128_GCM = SrtpProfile(
    "AEAD_AES_128_GCM",
    "SRTP_AEAD_AES_128_GCM",
    b"SRTP_AEAD_AES_128_GCM",
    Policy.SRTP_PROFILE_AEAD_AES_128_GCM,
    key_length=16,
    salt_length=12,
    tag_length=16,
)
AEAD_AES_256_GCM = SrtpProfile(
    "AEAD_AES_256_GCM",
    "SRTP_AEAD_AES_256_GCM",
    b"SRTP_AEAD_AES_256_GCM",
    Policy.SRTP_PROFILE_AEAD_AES_256_GCM,
    key_length=32,
    salt_length=12,
    tag_length=16,
)

#: Every supported profile by its SDES name.
PROFILES: dict[str, SrtpProfile] = {
    p.name: p for p in (AES_CM_128_HMAC_SHA1_80, AES_CM_128_HMAC_SHA1_32, AEAD_AES_128_GCM, AEAD_AES_256_GCM)
}
_BY_ANY_NAME: dict[str, SrtpProfile] = {
    alias.upper(): p for p in PROFILES.values() for alias in (p.name, p.dtls_name, p.openssl_name.decode())
}


def get_profile(profile: SrtpProfile | str | bytes) -> SrtpProfile:
    """Look a profile up by its SDES, RFC 5764 or OpenSSL name (case-insensitive)."""
    if isinstance(profile, SrtpProfile):
        return profile
    name = profile.decode() if isinstance(profile, bytes) else profile
    try:
        return _BY_ANY_NAME[name.upper()]
    except KeyError:
        raise ValueError(f"unknown SRTP profile {name!r} (known: {', '.join(PROFILES)})") from None


def generate_key_salt(profile: SrtpProfile | str = AES_CM_128_HMAC_SHA1_80) -> bytes:
    """A fresh random master key||salt for ``profile`` (30 bytes for the AES-CM suites)."""
    return os.urandom(get_profile(profile).key_salt_length)


def sdes_crypto_line(tag: int, suite: SrtpProfile | str, key_salt: bytes) -> str:
    """The value of an ``a=crypto`` attribute: ``<tag> <suite> inline:<base64 key||salt>``."""
    profile = get_profile(suite)
    if not 0 <= tag <= 999_999_999:
        raise ValueError("crypto tag must be 0..999999999 (RFC 4568 section 9.1)")
    _check_key(profile, key_salt, "key_salt")
    return f"{tag} {profile.name} inline:{base64.b64encode(key_salt).decode('ascii')}"


def is_rtcp(packet: bytes) -> bool:
    """RTP/RTCP demultiplexing by payload type, RFC 5761 section 4 (RTCP packet types 192-223)."""
    return len(packet) >= 2 and 192 <= packet[1] <= 223


class SrtpError(Exception):
    """Protecting or unprotecting failed. ``kind`` is ``"auth"``, ``"replay"`` or ``"other"``."""

    def __init__(self, message: str, kind: str = "other") -> None:
        super().__init__(message)
        self.kind = kind


def _check_key(profile: SrtpProfile, key_salt: bytes, what: str) -> None:
    if len(key_salt) != profile.key_salt_length:
        raise ValueError(f"{what} is {len(key_salt)} bytes, {profile.name} needs {profile.key_salt_length} (key||salt)")


def _session(profile: SrtpProfile, key_salt: bytes, ssrc_type: int) -> Session:
    policy = Policy(key=key_salt, ssrc_type=ssrc_type, srtp_profile=profile.libsrtp_profile)
    # Retransmissions that reuse a sequence number (RTX-less resends, RTCP repeats) are allowed
    # on send; the receive side keeps its replay check regardless.
    policy.allow_repeat_tx = True
    policy.window_size = REPLAY_WINDOW
    return Session(policy)


_LAZY_SESSIONS = frozenset({"_tx", "_rx", "_fast_tx", "_fast_rx"})


class SrtpContext:
    """Both directions of one SRTP association.

    ``protect``/``protect_rtcp`` use the local key||salt, ``unprotect``/``unprotect_rtcp`` the
    remote one. Any SSRC is accepted in either direction. Failures raise :class:`SrtpError` and
    are counted in :attr:`auth_failures`, :attr:`replays` and :attr:`other_errors`.
    """

    # counters: class-level zeros until the first count (a context made for a call that ends before its first
    # packet sets none of them)
    auth_failures = 0
    replays = 0
    other_errors = 0
    packets_protected = 0
    packets_unprotected = 0

    def __init__(self, profile: SrtpProfile | str, local_key_salt: bytes, remote_key_salt: bytes) -> None:
        self.profile = profile = profile if type(profile) is SrtpProfile else get_profile(profile)
        size = profile.key_length + profile.salt_length
        if len(local_key_salt) != size or len(remote_key_salt) != size:
            _check_key(profile, local_key_salt, "local_key_salt")
            _check_key(profile, remote_key_salt, "remote_key_salt")
        self.local_key_salt = bytes(local_key_salt)
        self.remote_key_salt = bytes(remote_key_salt)
        # The two libsrtp sessions (``_tx``, ``_rx`` and their direct handles) are made on first use, by
        # __getattr__: their key derivation was ~4 % of a SIP flow's CPU (bench/README.md), and a call that
        # ends before its first packet (answered and hung up at once) never needs them.

    def __getattr__(self, name: str) -> Any:
        """``_tx``, ``_rx``, ``_fast_tx``, ``_fast_rx``: the sessions, made at the first look (then plain
        attributes, so this runs once per context)."""
        if name not in _LAZY_SESSIONS or "remote_key_salt" not in self.__dict__:
            raise AttributeError(name)
        self._tx = _session(self.profile, self.local_key_salt, Policy.SSRC_ANY_OUTBOUND)
        self._rx = _session(self.profile, self.remote_key_salt, Policy.SSRC_ANY_INBOUND)
        self._fast_tx = _Direct.wrap(self._tx)
        self._fast_rx = _Direct.wrap(self._rx)
        return self.__dict__[name]

    @classmethod
    def from_sdes(cls, local_key_salt: bytes, remote_crypto: CryptoAttribute) -> SrtpContext:
        """Context for an SDES exchange: our key from our ``a=crypto``, theirs from their line.

        The suite is the remote line's (in offer/answer both lines carry the same suite).
        """
        profile = PROFILES.get(remote_crypto.suite) or get_profile(remote_crypto.suite)   # (its SDES name, usually)
        if remote_crypto.mki is not None:
            raise ValueError("a=crypto with an MKI is not supported")
        return cls(profile, local_key_salt, remote_crypto.key)

    def protect(self, rtp: bytes) -> bytes:
        """SRTP-protect an outbound RTP packet."""
        if self._fast_tx is not None:
            result = self._fast_tx.run(_lib.srtp_protect, rtp, _MAX_TRAILER)
            if result is not None:
                self.packets_protected += 1
                return result
        return self._run(self._tx.protect, rtp, outbound=True)

    def protect_rtcp(self, rtcp: bytes) -> bytes:
        """SRTCP-protect an outbound (compound) RTCP packet."""
        return self._run(self._tx.protect_rtcp, rtcp, outbound=True)

    def unprotect(self, srtp: bytes) -> bytes:
        """Authenticate, replay-check and decrypt an inbound SRTP packet."""
        if self._fast_rx is not None:
            result = self._fast_rx.run(_lib.srtp_unprotect, srtp, 0)
            if result is not None:
                self.packets_unprotected += 1
                return result
        return self._run(self._rx.unprotect, srtp, outbound=False)   # failures: the exact error

    def try_unprotect(self, srtp: bytes) -> bytes | None:
        """The plain RTP if ``srtp`` authenticates with this context's key, else None, counting no
        failure: a shared port asks each waiting leg whether a packet from a new address is its own."""
        if self._fast_rx is not None:
            result = self._fast_rx.run(_lib.srtp_unprotect, srtp, 0)
        else:  # pragma: no cover - pylibsrtp without the internals the fast path uses
            try:
                result = self._rx.unprotect(srtp)
            except (pylibsrtp.Error, TypeError, ValueError):
                result = None
        if result is not None:
            self.packets_unprotected += 1
        return result

    def unprotect_rtcp(self, srtcp: bytes) -> bytes:
        """Authenticate, replay-check and decrypt an inbound SRTCP packet."""
        return self._run(self._rx.unprotect_rtcp, srtcp, outbound=False)

    def resume(self, *, tx_ssrc: int, tx_index: int, rtcp_sent: int = 0, rx_ssrc: int | None = None,
               rx_index: int | None = None) -> None:
        """Bring a new context to where a lost one was (a relay restarted mid-call with the same keys).

        libsrtp keeps each stream's rollover counter (RFC 3711 section 3.3.1) to itself and guesses
        it from sequence numbers that move by less than 2^15 at a time; a fresh context starts at
        ROC 0 and its first packet's sequence number. Protecting throw-away packets whose indices
        climb in steps of 30000 up to ``tx_index`` moves the outbound ROC where the peer expects it;
        the same walk, protected with the *peer's* key and unprotected here, does it for the
        inbound stream (``rx_index``: the highest index received before). The SRTCP index moves past
        the ``rtcp_sent`` compound packets sent before.
        """
        def walk(target: int) -> list[int]:
            start = target % 30000
            return list(range(start, target + 1, 30000))

        def packet(ssrc: int, index: int) -> bytes:
            return struct.pack("!BBHII", 0x80, 0, index & 0xFFFF, 0, ssrc) + bytes(4)

        for index in walk(max(0, tx_index)):
            self._tx.protect(packet(tx_ssrc, index))
        rtcp = struct.pack("!BBHI", 0x80, 200, 6, tx_ssrc) + bytes(20)
        for _ in range(max(0, rtcp_sent)):
            self._tx.protect_rtcp(rtcp)
        if rx_ssrc is not None and rx_index is not None:
            peer = _session(self.profile, self.remote_key_salt, Policy.SSRC_ANY_OUTBOUND)
            for index in walk(max(0, rx_index)):
                self._rx.unprotect(peer.protect(packet(rx_ssrc, index)))

    def unprotect_any(self, packet: bytes) -> bytes:
        """Unprotect an inbound packet as SRTCP or SRTP by its payload type (RFC 5761)."""
        return self.unprotect_rtcp(packet) if is_rtcp(packet) else self.unprotect(packet)

    def _run(self, operation: _Operation, packet: bytes, *, outbound: bool) -> bytes:
        try:
            result = operation(packet)
        except pylibsrtp.Error as exc:
            message = str(exc)
            if "authentication failure" in message:  # HMAC or GCM tag mismatch
                self.auth_failures += 1
                kind = "auth"
            elif "replay" in message or "too old" in message:
                self.replays += 1
                kind = "replay"
            else:
                self.other_errors += 1
                kind = "other"
            direction = "protect" if outbound else "unprotect"
            raise SrtpError(f"SRTP {direction} failed: {message}", kind) from exc
        except (TypeError, ValueError) as exc:  # e.g. a packet too short to be RTP
            self.other_errors += 1
            raise SrtpError(f"SRTP failed: {exc}") from exc
        if outbound:
            self.packets_protected += 1
        else:
            self.packets_unprotected += 1
        return result

    def __repr__(self) -> str:
        return (
            f"SrtpContext({self.profile.name}, protected={self.packets_protected}, "
            f"unprotected={self.packets_unprotected}, auth_failures={self.auth_failures}, replays={self.replays})"
        )

