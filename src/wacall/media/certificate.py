"""The relay's DTLS certificate and its SDP fingerprint.

WebRTC endpoints authenticate DTLS with self-signed certificates whose hash travels in the SDP
``a=fingerprint`` attribute (RFC 8122 section 5, RFC 5763 section 5, RFC 8827 section 6.5). Meta's
media guidance asks for ECDSA certificates to keep the handshake unfragmented, so the relay uses
an ECDSA P-256 key (RFC 5480) and advertises a ``sha-256`` fingerprint: the SHA-256 digest of the
DER-encoded certificate as uppercase hex pairs joined by ``:``.

One certificate per server process is enough (browsers do the same per peer connection);
:meth:`DtlsCertificate.default` caches it.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import threading
from dataclasses import dataclass, field

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

COMMON_NAME = "wacall-relay"
VALIDITY = _dt.timedelta(days=30)
#: Start the validity window a little in the past so peers with a skewed clock still accept it.
_BACKDATE = _dt.timedelta(hours=1)


def fingerprint_sha256(der: bytes) -> str:
    """RFC 8122 fingerprint value: SHA-256 of ``der`` as uppercase hex pairs joined by ``:``."""
    digest = hashlib.sha256(der).hexdigest().upper()
    return ":".join(digest[i : i + 2] for i in range(0, len(digest), 2))


@dataclass(frozen=True)
class DtlsCertificate:
    """A self-signed ECDSA P-256 certificate with its private key and SDP fingerprint."""

    certificate: x509.Certificate = field(repr=False)
    private_key: ec.EllipticCurvePrivateKey = field(repr=False)
    fingerprint: str

    @classmethod
    def generate(cls, *, common_name: str = COMMON_NAME, validity: _dt.timedelta = VALIDITY) -> DtlsCertificate:
        """Create a fresh key pair and a self-signed certificate valid for ``validity``."""
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _dt.datetime.now(_dt.timezone.utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + validity)
            .sign(key, hashes.SHA256())
        )
        return cls(
            certificate=cert,
            private_key=key,
            fingerprint=fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER)),
        )

    @classmethod
    def from_pem(cls, cert_pem: bytes, key_pem: bytes) -> DtlsCertificate:
        """A certificate saved with :attr:`cert_pem` and :attr:`key_pem` (a restarted relay keeps the
        fingerprint its SDPs advertised)."""
        cert = x509.load_pem_x509_certificate(cert_pem)
        key = serialization.load_pem_private_key(key_pem, password=None)
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise ValueError("the relay's DTLS key must be ECDSA")
        return cls(certificate=cert, private_key=key,
                   fingerprint=fingerprint_sha256(cert.public_bytes(serialization.Encoding.DER)))

    @classmethod
    def default(cls) -> DtlsCertificate:
        """The process-wide certificate, generated on first use."""
        global _default
        with _lock:
            if _default is None:
                _default = cls.generate()
            return _default

    @property
    def cert_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        """The private key as unencrypted PKCS#8 PEM."""
        return self.private_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.DER)


_default: DtlsCertificate | None = None
_lock = threading.Lock()
