"""A local certificate authority for wacall's SIP/TLS gateway and the business servers it calls.

Meta's SIP edge ``wa.meta.vc`` speaks TLS only and both sides verify hostnames (calling-wire-spec
section 8.1): the business checks that the gateway's certificate covers ``wa.meta.vc``, and Meta checks
that the business certificate covers the configured ``hostname``. Offline, wacall plays both the
public PKI and Meta, so it keeps a tiny CA in a directory (default ``~/.wacall/pki``)::

    ca.pem / ca.key              the CA (self-signed, basicConstraints CA:TRUE, pathlen 0)
    gateway.pem / gateway.key    wacall's server certificate for the SIP domain (wa.meta.vc)
    <name>.pem / <name>.key      leaf certificates issued for business hostnames

Profile (RFC 5280): ECDSA P-256 keys (RFC 5480), ecdsa-with-SHA256 signatures, leaves valid for
two years with ``extendedKeyUsage`` serverAuth + clientAuth (RFC 5280 section 4.2.1.12; SIP/TLS
endpoints act as both, RFC 5922 section 7.4) and the names in ``subjectAltName`` (RFC 5922 section
7.1: SIP domain identity is taken from the SAN, not the CN). Private keys are written ``0600``.

Everything is idempotent: an existing CA is reused, and an existing leaf whose key matches, which
this CA signed, whose names equal the requested ones and which is not close to expiry is kept.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import ipaddress
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

DEFAULT_DIR = Path("~/.wacall/pki")
DEFAULT_DOMAIN = "wa.meta.vc"
#: Addresses every leaf also covers, so a peer that connects by address still verifies.
LOOPBACK_IPS = ("127.0.0.1", "::1")
LEAF_VALIDITY = _dt.timedelta(days=730)
CA_VALIDITY = _dt.timedelta(days=3650)
#: A leaf expiring sooner than this is re-issued instead of reused.
RENEW_BEFORE = _dt.timedelta(days=30)
#: Backdate notBefore so peers with a slightly skewed clock accept fresh certificates.
_BACKDATE = _dt.timedelta(hours=1)

Paths = tuple[Path, Path]


class CertError(Exception):
    """The PKI directory is in a state wacall will not silently repair (e.g. a CA cert without key)."""


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.timezone.utc)


def _write_atomic(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` to ``path`` via a temporary file and rename, so readers never see half a PEM."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


@contextlib.contextmanager
def _locked(directory: Path) -> Iterator[None]:
    """Serialise CA creation and issuance between processes sharing ``directory`` (POSIX flock)."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - non-POSIX
        yield
        return
    with open(directory / ".lock", "a+b") as lock:
        fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock.fileno(), fcntl.LOCK_UN)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                             serialization.NoEncryption())


def _san_entries(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS names and IP literals as RFC 5280 section 4.2.1.6 GeneralNames (IPs as iPAddress)."""
    out: list[x509.GeneralName] = []
    seen: set[str] = set()
    for name in names:
        name = name.strip().rstrip(".")
        if not name:
            continue
        try:
            ip = ipaddress.ip_address(name)
        except ValueError:
            name = name.lower()
            entry: x509.GeneralName = x509.DNSName(name)
            key = "dns:" + name
        else:
            entry = x509.IPAddress(ip)
            key = "ip:" + ip.compressed
        if key not in seen:
            seen.add(key)
            out.append(entry)
    return out


def _san_keys(entries: Iterable[x509.GeneralName]) -> set[str]:
    keys = set()
    for e in entries:
        if isinstance(e, x509.DNSName):
            keys.add("dns:" + e.value.lower())
        elif isinstance(e, x509.IPAddress):
            keys.add("ip:" + e.value.compressed)
    return keys


class LocalCA:
    """The CA in ``directory``: :meth:`load_or_create` it, then :meth:`issue` leaves."""

    def __init__(self, directory: Path, certificate: x509.Certificate, key: ec.EllipticCurvePrivateKey):
        self.directory = directory
        self.certificate = certificate
        self.key = key

    @property
    def cert_path(self) -> Path:
        """``ca.pem``: what a business server (or any client) must trust to verify wacall."""
        return self.directory / "ca.pem"

    @property
    def key_path(self) -> Path:
        return self.directory / "ca.key"

    @classmethod
    def load_or_create(cls, directory: str | os.PathLike[str] | None = None) -> LocalCA:
        """Load ``ca.pem``/``ca.key`` from ``directory`` (default ``~/.wacall/pki``), creating both if absent.

        Raises :class:`CertError` when only one of the two exists or they do not belong together:
        replacing a CA would invalidate every certificate peers were told to trust.
        """
        path = Path(directory if directory is not None else DEFAULT_DIR).expanduser().resolve()
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _locked(path):
            cert_file, key_file = path / "ca.pem", path / "ca.key"
            if cert_file.exists() or key_file.exists():
                if not (cert_file.exists() and key_file.exists()):
                    raise CertError(f"{path}: ca.pem and ca.key must both exist (or neither)")
                cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
                key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
                if not isinstance(key, ec.EllipticCurvePrivateKey) or key.public_key() != cert.public_key():
                    raise CertError(f"{path}: ca.key does not match ca.pem")
                return cls(path, cert, key)
            key = ec.generate_private_key(ec.SECP256R1())
            cert = cls._self_signed(key)
            _write_atomic(key_file, _key_pem(key), 0o600)
            _write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
            return cls(path, cert, key)

    @staticmethod
    def _self_signed(key: ec.EllipticCurvePrivateKey) -> x509.Certificate:
        serial = x509.random_serial_number()
        # A per-CA suffix keeps subjects distinct when several wacall CAs sit in one trust store.
        name = x509.Name([
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "wacall"),
            x509.NameAttribute(NameOID.COMMON_NAME, f"wacall local CA {serial:x}"[:64]),
        ])
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        return (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(serial)
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                         crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(ski, critical=False)
            .sign(key, hashes.SHA256())
        )

    def issue(self, hostnames: Iterable[str], *, out: str | os.PathLike[str] | None = None,
              ips: Iterable[str] = LOOPBACK_IPS) -> Paths:
        """Issue (or reuse) a leaf for ``hostnames`` plus ``ips``; return ``(cert_pem_path, key_pem_path)``.

        ``out`` is a path prefix (``PREFIX.pem``/``PREFIX.key``); relative prefixes live in the CA
        directory; the default is the first hostname. IP literals among ``hostnames`` become iPAddress
        SANs. The first DNS name is also the subject CN (informational only, RFC 6125 section 6.4.4).
        """
        names = [h for h in hostnames if h.strip().rstrip(".")]
        if not names:
            raise ValueError("issue() needs at least one hostname")
        entries = _san_entries([*names, *ips])
        prefix = Path(out) if out is not None else Path(names[0].strip().rstrip(".").lower())
        if not prefix.is_absolute():
            prefix = self.directory / prefix
        prefix.parent.mkdir(parents=True, exist_ok=True)
        cert_file = prefix.with_name(prefix.name + ".pem")
        key_file = prefix.with_name(prefix.name + ".key")
        with _locked(self.directory):
            if self._reusable(cert_file, key_file, entries):
                return cert_file, key_file
            key = ec.generate_private_key(ec.SECP256R1())
            cert = self._sign_leaf(key, entries)
            _write_atomic(key_file, _key_pem(key), 0o600)
            _write_atomic(cert_file, cert.public_bytes(serialization.Encoding.PEM), 0o644)
        return cert_file, key_file

    def gateway_paths(self, domain: str = DEFAULT_DOMAIN) -> Paths:
        """``gateway.pem``/``gateway.key`` for the SIP domain (SAN: domain, localhost, 127.0.0.1, ::1)."""
        return self.issue([domain, "localhost"], out="gateway")

    def _sign_leaf(self, key: ec.EllipticCurvePrivateKey, entries: list[x509.GeneralName]) -> x509.Certificate:
        dns = [e.value for e in entries if isinstance(e, x509.DNSName)]
        cn = dns[0] if dns else str(entries[0].value)
        now = _now()
        ca_ski = self.certificate.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, cn[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(min(now + LEAF_VALIDITY, self.certificate.not_valid_after_utc))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.KeyUsage(digital_signature=True, content_commitment=False, key_encipherment=False,
                                         data_encipherment=False, key_agreement=False, key_cert_sign=False,
                                         crl_sign=False, encipher_only=False, decipher_only=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]),
                           critical=False)
            .add_extension(x509.SubjectAlternativeName(entries), critical=False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ca_ski), critical=False)
            .sign(self.key, hashes.SHA256())
        )

    def _reusable(self, cert_file: Path, key_file: Path, entries: list[x509.GeneralName]) -> bool:
        """True when the existing pair was signed by this CA, matches, covers exactly ``entries`` and is fresh."""
        try:
            cert = x509.load_pem_x509_certificate(cert_file.read_bytes())
            key = serialization.load_pem_private_key(key_file.read_bytes(), password=None)
            cert.verify_directly_issued_by(self.certificate)
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        except (OSError, ValueError, TypeError, InvalidSignature, x509.ExtensionNotFound):
            return False
        return (key.public_key() == cert.public_key()
                and _san_keys(san) == _san_keys(entries)
                and cert.not_valid_after_utc - _now() > RENEW_BEFORE)
