"""The local CA (wacall.certs), the ``wacall cert`` commands and the TLS contexts built on them."""

from __future__ import annotations

import asyncio
import datetime as dt
import os
import ssl
import stat
import subprocess

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from wacall.certs import CertError, LocalCA
from wacall.cli import cli
from wacall.sip.tls import NotLoopbackError, Resolver, client_context, is_loopback, server_context


def _load(path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _sans(cert: x509.Certificate) -> set[str]:
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    return {*san.get_values_for_type(x509.DNSName), *(str(ip) for ip in san.get_values_for_type(x509.IPAddress))}


def _openssl_verify(ca, cert) -> subprocess.CompletedProcess:
    return subprocess.run(["openssl", "verify", "-CAfile", str(ca), str(cert)], capture_output=True, text=True)


def test_init_creates_ca_and_gateway(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    cert, key = ca.gateway_paths()
    assert cert == tmp_path / "gateway.pem" and key == tmp_path / "gateway.key"
    assert (tmp_path / "ca.pem").exists() and (tmp_path / "ca.key").exists()
    assert stat.S_IMODE(os.stat(tmp_path / "ca.key").st_mode) == 0o600
    assert stat.S_IMODE(os.stat(key).st_mode) == 0o600

    leaf = _load(cert)
    assert _sans(leaf) == {"wa.meta.vc", "localhost", "127.0.0.1", "::1"}
    assert isinstance(leaf.public_key(), ec.EllipticCurvePublicKey)
    assert leaf.public_key().curve.name == "secp256r1"
    assert leaf.signature_hash_algorithm.name == "sha256"
    eku = leaf.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
    assert set(eku) == {ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH}
    assert leaf.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is False
    validity = leaf.not_valid_after_utc - leaf.not_valid_before_utc
    assert dt.timedelta(days=729) < validity < dt.timedelta(days=731)
    root = _load(tmp_path / "ca.pem")
    assert root.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True

    result = _openssl_verify(tmp_path / "ca.pem", cert)
    assert result.returncode == 0, result.stdout + result.stderr


def test_issue_business_cert_verifies_with_openssl(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    cert, key = ca.issue(["sip.business.example", "alt.business.example"])
    assert cert.name == "sip.business.example.pem" and key.name == "sip.business.example.key"
    assert _sans(_load(cert)) == {"sip.business.example", "alt.business.example", "127.0.0.1", "::1"}
    for purpose in ("sslserver", "sslclient"):
        result = subprocess.run(["openssl", "verify", "-purpose", purpose, "-CAfile", str(ca.cert_path), str(cert)],
                                capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr
    # A certificate from another CA does not verify against this one.
    other = LocalCA.load_or_create(tmp_path / "other")
    foreign, _ = other.issue(["sip.business.example"])
    assert _openssl_verify(ca.cert_path, foreign).returncode != 0


def test_idempotent(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    ca_pem = ca.cert_path.read_bytes()
    g1 = ca.gateway_paths()
    g1_pem = g1[0].read_bytes()
    b1 = ca.issue(["biz.example"])
    b1_pem = b1[0].read_bytes()

    again = LocalCA.load_or_create(tmp_path)
    assert again.cert_path.read_bytes() == ca_pem
    assert again.gateway_paths() == g1 and g1[0].read_bytes() == g1_pem
    assert again.issue(["BIZ.example."]) == b1 and b1[0].read_bytes() == b1_pem
    # Different names under the same prefix: re-issued.
    again.issue(["biz.example", "more.example"], out="biz.example")
    assert b1[0].read_bytes() != b1_pem
    assert _sans(_load(b1[0])) == {"biz.example", "more.example", "127.0.0.1", "::1"}
    # Another domain for the gateway: re-issued in place.
    again.gateway_paths("sip.test.example")
    assert "sip.test.example" in _sans(_load(g1[0]))


def test_half_a_ca_is_an_error(tmp_path):
    LocalCA.load_or_create(tmp_path)
    (tmp_path / "ca.key").unlink()
    with pytest.raises(CertError):
        LocalCA.load_or_create(tmp_path)


def test_cli(tmp_path):
    runner = CliRunner()
    d = str(tmp_path / "pki")
    r = runner.invoke(cli, ["cert", "init", "--dir", d, "--domain", "wa.meta.vc"])
    assert r.exit_code == 0, r.output
    assert "gateway.pem" in r.output
    r = runner.invoke(cli, ["cert", "issue", "sip.business.example", "b.example", "--dir", d,
                            "--out", str(tmp_path / "biz")])
    assert r.exit_code == 0, r.output
    assert (tmp_path / "biz.pem").exists() and (tmp_path / "biz.key").exists()
    assert _sans(_load(tmp_path / "biz.pem")) == {"sip.business.example", "b.example", "127.0.0.1", "::1"}
    r = runner.invoke(cli, ["cert", "ca", "--dir", d])
    assert r.exit_code == 0, r.output
    assert r.output.strip() == str(tmp_path / "pki" / "ca.pem")
    assert _openssl_verify(r.output.strip(), tmp_path / "biz.pem").returncode == 0


async def _handshake(tmp_path, cert, key, server_hostname: str) -> str:
    """TLS handshake on loopback with hostname checking; return the negotiated version."""
    sctx = server_context(cert, key)

    async def handle(reader, writer):
        with_data = await reader.read(1)
        writer.write(with_data)
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=sctx)
    port = server.sockets[0].getsockname()[1]
    try:
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=client_context(tmp_path / "ca.pem"), server_hostname=server_hostname)
        version = writer.get_extra_info("ssl_object").version()
        writer.write(b"x")
        assert await reader.read(1) == b"x"
        writer.close()
        return version
    finally:
        server.close()
        await server.wait_closed()


async def test_python_ssl_hostname_check(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    gw_cert, gw_key = ca.gateway_paths()
    biz_cert, biz_key = ca.issue(["sip.business.example"])
    assert await _handshake(tmp_path, gw_cert, gw_key, "wa.meta.vc") in ("TLSv1.2", "TLSv1.3")
    assert await _handshake(tmp_path, gw_cert, gw_key, "127.0.0.1")
    assert await _handshake(tmp_path, biz_cert, biz_key, "sip.business.example")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tmp_path, biz_cert, biz_key, "wa.meta.vc")
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tmp_path, gw_cert, gw_key, "evil.example")
    # Untrusted CA: fails even with the right name.
    other = LocalCA.load_or_create(tmp_path / "other")
    o_cert, o_key = other.issue(["sip.business.example"])
    with pytest.raises(ssl.SSLCertVerificationError):
        await _handshake(tmp_path, o_cert, o_key, "sip.business.example")


def test_server_context_requests_no_client_cert(tmp_path):
    ca = LocalCA.load_or_create(tmp_path)
    ctx = server_context(*ca.gateway_paths())
    assert ctx.verify_mode == ssl.CERT_NONE
    assert ctx.minimum_version == ssl.TLSVersion.TLSv1_2
    cctx = client_context(ca.cert_path)
    assert cctx.check_hostname and cctx.verify_mode == ssl.CERT_REQUIRED


async def test_resolver_loopback_only():
    r = Resolver({"sip.business.example": "127.0.0.1", "v6.business.example": "::1"})
    assert await r.resolve("SIP.Business.Example.") == ["127.0.0.1"]
    assert await r.resolve("v6.business.example") == ["::1"]
    assert await r.resolve("127.0.0.5") == ["127.0.0.5"]
    assert await r.resolve("[::1]") == ["::1"]
    assert set(await r.resolve("localhost")) <= {"127.0.0.1", "::1"}
    with pytest.raises(NotLoopbackError):
        await r.resolve("10.0.0.1")
    with pytest.raises(NotLoopbackError):
        await r.resolve("::ffff:8.8.8.8")
    with pytest.raises(NotLoopbackError):
        await r.resolve("does-not-exist.invalid")
    with pytest.raises(NotLoopbackError):
        Resolver({"x.example": "192.0.2.1"})
    with pytest.raises(NotLoopbackError):
        await Resolver(use_os=False).resolve("localhost")
    assert is_loopback("::ffff:127.0.0.1") and not is_loopback("localhost")
