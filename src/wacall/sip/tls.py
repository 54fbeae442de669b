"""TLS contexts and a loopback-only resolver for SIP over TLS (RFC 3261 section 26.2.1, RFC 5922).

* :func:`server_context` -- what ``wa.meta.vc`` presents: TLS 1.2 or newer, and no client
  certificate requested (Meta does no mutual TLS, calling-wire-spec section 8.1).
* :func:`client_context` -- what wacall uses when it calls a business: the peer certificate must
  chain to ``cafile`` and cover the configured hostname (RFC 5922 section 7.2, RFC 6125).
* :class:`Resolver` -- maps configured business hostnames (``sip.business.example``) to loopback
  addresses. Connections go to the mapped address while TLS still verifies the hostname (the
  caller passes ``server_hostname=hostname``). wacall must never reach past loopback, so any name
  or address that does not end up on 127.0.0.0/8 or ::1 is refused with :class:`NotLoopbackError`.
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import socket
import ssl
from collections.abc import Mapping

__all__ = ["NotLoopbackError", "Resolver", "client_context", "is_loopback", "server_context"]


class NotLoopbackError(OSError):
    """A name or address that is not on loopback: wacall refuses to talk to it."""


def server_context(cert: str | os.PathLike[str], key: str | os.PathLike[str]) -> ssl.SSLContext:
    """A TLS server context: TLS >= 1.2, certificate ``cert``/``key``, no client certificate requested."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.verify_mode = ssl.CERT_NONE  # Meta does not ask for a client certificate (no mTLS)
    ctx.load_cert_chain(os.fspath(cert), os.fspath(key))
    return ctx


def client_context(cafile: str | os.PathLike[str] | None = None, *, cert: str | os.PathLike[str] | None = None,
                   key: str | os.PathLike[str] | None = None) -> ssl.SSLContext:
    """A TLS client context: verify the peer against ``cafile`` (system store if None) and its hostname.

    ``cert``/``key`` optionally present a client certificate (Meta shows ``client.sip.fbclientcerts.com``
    when a server asks; wacall's server never does).
    """
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # CERT_REQUIRED + check_hostname=True
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.check_hostname = True
    ctx.verify_mode = ssl.CERT_REQUIRED
    if cafile is not None:
        ctx.load_verify_locations(cafile=os.fspath(cafile))
    else:
        ctx.load_default_certs(ssl.Purpose.SERVER_AUTH)
    if cert is not None:
        ctx.load_cert_chain(os.fspath(cert), os.fspath(key) if key is not None else None)
    return ctx


def is_loopback(address: str) -> bool:
    """True for 127.0.0.0/8, ::1 and IPv4-mapped loopback (``::ffff:127.0.0.1``); False for names."""
    try:
        ip = ipaddress.ip_address(address.split("%", 1)[0])
    except ValueError:
        return False
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return ip.is_loopback


def _normalise(name: str) -> str:
    name = name.strip().lower().rstrip(".")
    if name.startswith("[") and name.endswith("]"):
        name = name[1:-1]
    return name


class Resolver:
    """Hostname to loopback address mapping used instead of DNS (RFC 3263 is deliberately not used).

    ``resolve(host)`` returns the addresses to connect to, in order:

    1. an IP literal: itself, if it is loopback;
    2. a configured name (case-insensitive, trailing dot ignored): its mapped address;
    3. any other name: the OS resolver, accepted only if **every** address it returns is loopback
       (``localhost``); a name with any non-loopback address is refused.
    """

    def __init__(self, hosts: Mapping[str, str] | None = None, *, use_os: bool = True) -> None:
        self._hosts: dict[str, str] = {}
        self.use_os = use_os
        for name, address in (hosts or {}).items():
            self.add(name, address)

    def add(self, name: str, address: str) -> None:
        """Map ``name`` to the loopback ``address``; raises :class:`NotLoopbackError` for anything else."""
        address = _normalise(address)
        if not is_loopback(address):
            raise NotLoopbackError(f"{name} -> {address}: not a loopback address")
        self._hosts[_normalise(name)] = address

    @property
    def hosts(self) -> dict[str, str]:
        return dict(self._hosts)

    async def resolve(self, host: str, port: int = 5061) -> list[str]:
        """Loopback addresses for ``host`` (see class docstring); raises :class:`NotLoopbackError`."""
        name = _normalise(host)
        if is_loopback(name):
            return [name]
        try:
            ipaddress.ip_address(name.split("%", 1)[0])
        except ValueError:
            pass
        else:
            raise NotLoopbackError(f"{host}: not a loopback address")
        if name in self._hosts:
            return [self._hosts[name]]
        if not self.use_os:
            raise NotLoopbackError(f"{host}: not in the hosts mapping")
        loop = asyncio.get_running_loop()
        try:
            infos = await loop.getaddrinfo(name, port, type=socket.SOCK_STREAM, proto=socket.IPPROTO_TCP)
        except socket.gaierror as exc:
            raise NotLoopbackError(f"{host}: does not resolve ({exc})") from exc
        addresses: list[str] = []
        for info in infos:
            address = str(info[4][0])
            if not is_loopback(address):
                raise NotLoopbackError(f"{host} resolves to {address}: not loopback")
            if address not in addresses:
                addresses.append(address)
        if not addresses:
            raise NotLoopbackError(f"{host}: no addresses")
        return addresses
