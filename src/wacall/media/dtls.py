"""DTLS-SRTP (RFC 5764) key agreement as a sans-I/O state machine.

:class:`DtlsSrtpSession` runs a DTLS 1.2 handshake (RFC 6347) through OpenSSL (pyOpenSSL) over
memory BIOs: the caller hands in every received DTLS datagram (:meth:`~DtlsSrtpSession.feed`) and
sends the datagrams each call returns; it also drives retransmission with
:meth:`~DtlsSrtpSession.timeout` / :meth:`~DtlsSrtpSession.handle_timeout`. No sockets, no
threads, no event loop.

What the session checks and derives:

- the peer authenticates with a self-signed certificate whose hash must equal the ``a=fingerprint``
  from the peer's SDP (RFC 8122, RFC 5763 section 5); a mismatch aborts the handshake with an alert;
- the ``use_srtp`` extension (RFC 5764 section 4.1) negotiates the SRTP profile; the server's
  preference order wins, so ``profiles`` is ordered by preference;
- the SRTP master keys come from the TLS exporter with label ``EXTRACTOR-dtls_srtp``, laid out as
  client key | server key | client salt | server salt (RFC 5764 section 4.2); the client protects
  with the client half, the server with the server half.

Datagrams never exceed ``mtu`` (1200 by default): OpenSSL is told the MTU so that it fragments
handshake messages, and the records it writes are packed into datagrams up to that size (RFC 6347
section 4.1.1 allows several records per datagram). With the relay's ECDSA certificate a whole
flight fits in one datagram, which is why Meta asks for ECDSA.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from typing import Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from OpenSSL import SSL, crypto

from .certificate import DtlsCertificate
from .srtp import AEAD_AES_128_GCM, AEAD_AES_256_GCM, AES_CM_128_HMAC_SHA1_80, SrtpContext, SrtpProfile, get_profile

__all__ = [
    "DEFAULT_MTU",
    "DEFAULT_PROFILES",
    "DtlsError",
    "DtlsRole",
    "DtlsSrtpSession",
    "DtlsState",
    "is_dtls",
    "parse_fingerprint",
]

DtlsRole = Literal["client", "server"]
DtlsState = Literal["new", "connecting", "connected", "failed", "closed"]

#: Preference order when none is given: the suite every SRTP stack has first, then AES-GCM.
DEFAULT_PROFILES: tuple[SrtpProfile, ...] = (AES_CM_128_HMAC_SHA1_80, AEAD_AES_128_GCM, AEAD_AES_256_GCM)
#: Largest datagram the session emits (UDP payload). Well under 1280 (the IPv6 minimum MTU)
#: minus IP/UDP headers and TURN/ICE overhead.
DEFAULT_MTU = 1200

EXPORTER_LABEL = b"EXTRACTOR-dtls_srtp"
_DTLS1_2_VERSION = 0xFEFD  # pyOpenSSL has no constant for it
#: One OpenSSL context per (certificate, SRTP profiles), shared by every session made with them (most
#: recently used last): building a context per session (loading and checking the certificate and key) cost
#: ~10 % of a Graph call's CPU, ~20 KB and a third of the handshake. The peer's fingerprint check stays per
#: session: the shared verify callback finds the session through the connection's app data.
_CONTEXTS: OrderedDict = OrderedDict()
MAX_CONTEXTS = 32


def _verify_session(conn: SSL.Connection, cert: crypto.X509, errno: int, depth: int, ok: int) -> bool:
    session = conn.get_app_data()
    return bool(session is not None and session._verify(conn, cert, errno, depth, ok))

_RECORD_HEADER = 13  # type(1) version(2) epoch(2) sequence(6) length(2)
_CIPHERS = b":".join(
    [
        b"ECDHE-ECDSA-AES128-GCM-SHA256",
        b"ECDHE-ECDSA-AES256-GCM-SHA384",
        b"ECDHE-ECDSA-CHACHA20-POLY1305",
        b"ECDHE-ECDSA-AES128-SHA",
        b"ECDHE-ECDSA-AES256-SHA",
        # Only usable when the peer is the server and has an RSA certificate.
        b"ECDHE-RSA-AES128-GCM-SHA256",
        b"ECDHE-RSA-AES256-GCM-SHA384",
        b"ECDHE-RSA-AES128-SHA",
        b"ECDHE-RSA-AES256-SHA",
    ]
)
_HASHES = {"sha-256": "sha256", "sha-384": "sha384", "sha-512": "sha512"}


class DtlsError(Exception):
    """The session was used in a state that does not allow the operation."""


def is_dtls(datagram: bytes) -> bool:
    """RFC 7983 demultiplexing: a first byte of 20..63 is DTLS (0..3 STUN, 128..191 RTP/RTCP)."""
    return bool(datagram) and 20 <= datagram[0] <= 63


def parse_fingerprint(value: str) -> tuple[str, bytes]:
    """``"sha-256 AB:CD:.."`` or just ``"AB:CD:.."`` (sha-256) to ``(algorithm, digest)``.

    Hex is case-insensitive; ``ValueError`` if the value is malformed or the hash unsupported.
    """
    parts = value.strip().split()
    if len(parts) == 2:
        algorithm, hex_pairs = parts[0].lower(), parts[1]
    elif len(parts) == 1:
        algorithm, hex_pairs = "sha-256", parts[0]
    else:
        raise ValueError(f"malformed fingerprint {value!r}")
    if algorithm not in _HASHES:
        raise ValueError(f"unsupported fingerprint hash {algorithm!r} (use {', '.join(_HASHES)})")
    pairs = hex_pairs.split(":")
    if any(len(pair) != 2 for pair in pairs):
        raise ValueError(f"malformed fingerprint {value!r}: expected colon-separated hex pairs")
    try:
        digest = bytes.fromhex("".join(pairs))
    except ValueError:
        raise ValueError(f"malformed fingerprint {value!r}: not hex") from None
    if len(digest) != hashlib.new(_HASHES[algorithm]).digest_size:
        raise ValueError(f"fingerprint {value!r} has the wrong length for {algorithm}")
    return algorithm, digest


def _describe(exc: SSL.Error) -> str:
    """Readable text of an OpenSSL error (pyOpenSSL gives a list of (lib, func, reason))."""
    if isinstance(exc, SSL.ZeroReturnError):
        return "closed by peer"
    reasons = []
    if exc.args and isinstance(exc.args[0], list):
        reasons = [str(item[-1]) for item in exc.args[0] if isinstance(item, tuple) and item]
    return "; ".join(reasons) or str(exc) or type(exc).__name__


def _split_records(data: bytes) -> list[bytes]:
    records = []
    offset = 0
    while offset < len(data):
        if len(data) - offset < _RECORD_HEADER:  # cannot happen with OpenSSL's output
            records.append(data[offset:])
            break
        end = offset + _RECORD_HEADER + int.from_bytes(data[offset + 11 : offset + 13], "big")
        records.append(data[offset:end])
        offset = end
    return records


def _pack(records: Iterable[bytes], mtu: int) -> list[bytes]:
    """Greedily pack whole DTLS records into datagrams of at most ``mtu`` bytes."""
    datagrams: list[bytes] = []
    current = b""
    for record in records:
        if current and len(current) + len(record) > mtu:
            datagrams.append(current)
            current = b""
        current += record
    if current:
        datagrams.append(current)
    return datagrams


class DtlsSrtpSession:
    """One DTLS-SRTP association, sans-I/O.

    ``role`` is the DTLS role from the SDP ``a=setup`` exchange (``active`` is the client).
    ``remote_fingerprint`` is the peer's ``a=fingerprint`` value (with or without the
    ``sha-256`` prefix). ``profiles`` lists acceptable SRTP profiles, most preferred first.
    """

    def __init__(
        self,
        certificate: DtlsCertificate,
        *,
        role: DtlsRole,
        remote_fingerprint: str,
        profiles: Iterable[SrtpProfile | str] = DEFAULT_PROFILES,
        mtu: int = DEFAULT_MTU,
    ) -> None:
        if role not in ("client", "server"):
            raise ValueError(f"role must be 'client' or 'server', not {role!r}")
        self._profiles = tuple(dict.fromkeys(get_profile(p) for p in profiles))
        if not self._profiles:
            raise ValueError("at least one SRTP profile is needed")
        self._fingerprint_algorithm, self._fingerprint = parse_fingerprint(remote_fingerprint)
        self.certificate = certificate
        self.role: DtlsRole = role
        self.mtu = mtu
        self._state: DtlsState = "new"
        self._failure_reason: str | None = None
        self._fingerprint_failed = False
        self._profile: SrtpProfile | None = None
        self._local_key_salt: bytes | None = None
        self._remote_key_salt: bytes | None = None
        self._srtp: SrtpContext | None = None
        self._ssl: SSL.Connection | None = SSL.Connection(self._make_context(), None)  # None: memory BIOs
        self._ssl.set_app_data(self)                       # the shared context's verify callback finds us
        self._ssl.set_ciphertext_mtu(mtu)
        if role == "client":
            self._ssl.set_connect_state()
        else:
            self._ssl.set_accept_state()

    # -- public state ------------------------------------------------------------------------

    @property
    def state(self) -> DtlsState:
        return self._state

    @property
    def failure_reason(self) -> str | None:
        """Why the session failed: ``"fingerprint mismatch"``, ``"no SRTP profile negotiated"``,
        ``"handshake error: <OpenSSL reason>"``, ``"DTLS error: ..."`` or ``"retransmission ..."``."""
        return self._failure_reason

    @property
    def srtp_profile(self) -> SrtpProfile | None:
        """The negotiated profile once connected."""
        return self._profile

    @property
    def profiles(self) -> tuple[SrtpProfile, ...]:
        return self._profiles

    @property
    def local_fingerprint(self) -> str:
        """``a=fingerprint`` value for our SDP: ``sha-256 AB:CD:..``."""
        return f"sha-256 {self.certificate.fingerprint}"

    @property
    def local_key_salt(self) -> bytes | None:
        """Our SRTP master key||salt (what we protect with) once connected."""
        return self._local_key_salt

    @property
    def remote_key_salt(self) -> bytes | None:
        """The peer's SRTP master key||salt (what we unprotect with) once connected."""
        return self._remote_key_salt

    def srtp(self) -> SrtpContext:
        """The SRTP context keyed by this handshake (the same object on every call)."""
        if self._state != "connected" or self._profile is None:
            raise DtlsError(f"no SRTP keys: DTLS session is {self._state}")
        if self._srtp is None:
            assert self._local_key_salt is not None and self._remote_key_salt is not None
            self._srtp = SrtpContext(self._profile, self._local_key_salt, self._remote_key_salt)
        return self._srtp

    # -- driving the session -----------------------------------------------------------------

    def start(self) -> list[bytes]:
        """Begin the handshake: the client's first flight (ClientHello); nothing for a server."""
        if self._state != "new":
            return []
        self._state = "connecting"
        if self.role == "client":
            return self._handshake()
        return []

    def feed(self, datagram: bytes) -> list[bytes]:
        """Process one received datagram; returns the datagrams to send in response.

        Non-DTLS datagrams (RFC 7983 first byte outside 20..63) are ignored; so is everything
        after the session failed or closed. A server that has not been started starts here.
        """
        if self._state in ("failed", "closed") or not is_dtls(datagram) or self._ssl is None:
            return []
        out = self.start() if self._state == "new" else []
        self._ssl.bio_write(datagram)
        if self._state == "connecting":
            out += self._handshake()
        if self._state == "connected":
            out += self._read_records()
        return out

    def timeout(self) -> float | None:
        """Seconds until :meth:`handle_timeout` is due (0 if overdue), ``None`` if no timer runs.

        OpenSSL's DTLS timer: 1 s initially, doubling on each retransmission up to 60 s.
        """
        if self._state not in ("connecting", "connected") or self._ssl is None:
            return None
        return self._ssl.DTLSv1_get_timeout()

    def handle_timeout(self) -> list[bytes]:
        """Retransmit the last flight if the timer expired; returns the datagrams to send.

        Calling it early does nothing. When OpenSSL gives up (too many retransmissions) the
        session fails.
        """
        if self._state not in ("connecting", "connected") or self._ssl is None:
            return []
        try:
            self._ssl.DTLSv1_handle_timeout()
        except SSL.Error as exc:
            out = self._flush()
            self._fail(f"retransmission failed: {_describe(exc)}")
            return out
        return self._flush()

    def close(self) -> list[bytes]:
        """Close the session; returns the close_notify alert to send, if any."""
        out: list[bytes] = []
        if self._state in ("connecting", "connected") and self._ssl is not None:
            out = self._shutdown()
        self._state = "closed"
        return out

    def release(self) -> None:
        """Forget the OpenSSL connection once the peer has shown it holds the keys (its first
        authenticated SRTP packet, so it needs no retransmitted flight): about 90 KB per call. The
        state stays ``connected`` and the SRTP context stays; later DTLS records are ignored, and
        :meth:`close` sends no close_notify (RFC 5764 media ends with the call's signalling)."""
        if self._state == "connected" and self._srtp is not None:
            self._ssl = None

    @property
    def released(self) -> bool:
        return self._ssl is None

    # -- internals ---------------------------------------------------------------------------

    def _make_context(self) -> SSL.Context:
        """One OpenSSL context per certificate and profile list, shared by every session that uses them
        (a context per session cost ~20 KB and a third of the handshake's CPU); the peer check is per
        session, through the connection's app data."""
        key = (id(self.certificate), self._profiles)
        cached = _CONTEXTS.get(key)
        if cached is not None and cached[0] is self.certificate:
            _CONTEXTS.move_to_end(key)
            return cached[1]
        ctx = SSL.Context(SSL.DTLS_METHOD)
        ctx.set_min_proto_version(_DTLS1_2_VERSION)
        ctx.set_max_proto_version(_DTLS1_2_VERSION)
        # No tickets, no renegotiation (RFC 5764 keys must not change under us), and keep the
        # MTU we set: a memory BIO cannot answer OpenSSL's MTU query.
        ctx.set_options(SSL.OP_NO_TICKET | SSL.OP_NO_RENEGOTIATION | SSL.OP_NO_QUERY_MTU)
        ctx.use_certificate(self.certificate.certificate)
        ctx.use_privatekey(self.certificate.private_key)
        ctx.check_privatekey()
        ctx.set_cipher_list(_CIPHERS)
        ctx.set_tlsext_use_srtp(b":".join(p.openssl_name for p in self._profiles))
        # Self-signed peers: the chain check is replaced by the SDP fingerprint check.
        ctx.set_verify(SSL.VERIFY_PEER | SSL.VERIFY_FAIL_IF_NO_PEER_CERT, _verify_session)
        ctx.set_session_cache_mode(SSL.SESS_CACHE_OFF)    # a shared context must not keep every session
        ctx.set_mode(SSL.MODE_RELEASE_BUFFERS)
        _CONTEXTS[key] = (self.certificate, ctx)
        while len(_CONTEXTS) > MAX_CONTEXTS:
            _CONTEXTS.popitem(last=False)
        return ctx

    def _verify(self, _conn: SSL.Connection, cert: crypto.X509, _errno: int, depth: int, _ok: int) -> bool:
        if depth != 0:
            return True  # only the end-entity certificate's hash is pinned
        if self._matches_fingerprint(cert.to_cryptography()):
            return True
        self._fingerprint_failed = True
        return False

    def _matches_fingerprint(self, cert: x509.Certificate | None) -> bool:
        if cert is None:
            return False
        der = cert.public_bytes(serialization.Encoding.DER)
        return hashlib.new(_HASHES[self._fingerprint_algorithm], der).digest() == self._fingerprint

    def _handshake(self) -> list[bytes]:
        try:
            self._ssl.do_handshake()
        except SSL.WantReadError:
            return self._flush()
        except SSL.Error as exc:
            out = self._flush()  # the fatal alert OpenSSL queued, if any
            reason = "fingerprint mismatch" if self._fingerprint_failed else f"handshake error: {_describe(exc)}"
            self._fail(reason)
            return out
        out = self._flush()
        return out + self._handshake_done()

    def _handshake_done(self) -> list[bytes]:
        if not self._matches_fingerprint(self._ssl.get_peer_certificate(as_cryptography=True)):
            return self._fail_after_handshake("fingerprint mismatch")
        selected = self._ssl.get_selected_srtp_profile()
        profile = next((p for p in self._profiles if p.openssl_name == selected), None)
        if profile is None:
            return self._fail_after_handshake("no SRTP profile negotiated")
        key_len, salt_len = profile.key_length, profile.salt_length
        material = self._ssl.export_keying_material(EXPORTER_LABEL, 2 * (key_len + salt_len))
        client_key, server_key = material[:key_len], material[key_len : 2 * key_len]
        client_salt = material[2 * key_len : 2 * key_len + salt_len]
        server_salt = material[2 * key_len + salt_len :]
        client, server = client_key + client_salt, server_key + server_salt
        self._local_key_salt, self._remote_key_salt = (client, server) if self.role == "client" else (server, client)
        self._profile = profile
        self._state = "connected"
        return []

    def _read_records(self) -> list[bytes]:
        """After the handshake: let OpenSSL process alerts and retransmitted handshake records
        (answering a lost final flight); application data is not used by DTLS-SRTP and dropped."""
        while True:
            try:
                self._ssl.recv(65536)
            except SSL.WantReadError:
                break
            except SSL.ZeroReturnError:
                self._state = "closed"
                break
            except SSL.Error as exc:
                self._fail(f"DTLS error: {_describe(exc)}")
                break
        return self._flush()

    def _flush(self) -> list[bytes]:
        """Take what OpenSSL wrote to its memory BIO and cut it into datagrams."""
        data = b""
        while True:
            try:
                chunk = self._ssl.bio_read(65536)
            except SSL.Error:  # WantReadError: the BIO is empty
                break
            if not chunk:
                break
            data += chunk
        return _pack(_split_records(data), self.mtu) if data else []

    def _shutdown(self) -> list[bytes]:
        try:
            self._ssl.shutdown()
        except SSL.Error:
            pass
        return self._flush()

    def _fail_after_handshake(self, reason: str) -> list[bytes]:
        out = self._shutdown()
        self._fail(reason)
        return out

    def _fail(self, reason: str) -> None:
        self._state = "failed"
        self._failure_reason = reason

    def __repr__(self) -> str:
        profile = f" {self._profile.name}" if self._profile else ""
        reason = f" ({self._failure_reason})" if self._failure_reason else ""
        return f"<DtlsSrtpSession {self.role} {self._state}{profile}{reason}>"
