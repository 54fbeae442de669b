"""SIP digest authentication (RFC 3261 section 22, RFC 2617, RFC 7616).

Both sides of what ``wa.meta.vc`` does:

* server: :class:`NonceBook` issues challenges shaped like Meta's 407
  (``Proxy-Authenticate: Digest realm="wa.meta.vc",nonce="<16 hex>",opaque="<16 hex>",
  algorithm=MD5,qop="auth"``, calling-wire-spec section 8.2) and verifies the credentials of the
  retried request;
* client: :func:`answer` computes the ``Authorization``/``Proxy-Authorization`` wacall sends when
  a business server challenges it with 401/407 (section 8.3).

Algorithms: ``MD5``, ``SHA-256`` and their ``-sess`` variants (RFC 7616 section 3.4.2);
qop ``auth`` and ``auth-int`` (section 3.4.3), or no qop (RFC 2069 compatibility, RFC 2617
section 3.2.2.1). No I/O; :class:`NonceBook` takes an injectable clock.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from enum import Enum
from typing import Any

from .randomness import token_hex
from .uri import SipParseError, _load_compiled, quoted_end, remember, unquote_string

__all__ = [
    "Challenge",
    "Credentials",
    "NonceBook",
    "Verdict",
    "answer",
    "compute_response",
    "parse_challenge",
    "parse_credentials",
]

try:        # CPython's own MD5 (hashlib's fallback): ~2 k instructions less per hash than OpenSSL's EVP calls
    from _md5 import md5 as _md5
except ImportError:  # pragma: no cover - a Python built without it
    _md5 = hashlib.md5

_HASHES: dict[str, Callable[[bytes], Any]] = {
    "MD5": _md5,
    "SHA-256": hashlib.sha256,
}


def _hash_for(algorithm: str) -> tuple[Callable[[bytes], Any], bool]:
    """``(hash constructor, is_session_variant)`` for an algorithm name (case-insensitive)."""
    name = algorithm.upper()
    sess = name.endswith("-SESS")
    base = name[:-5] if sess else name
    if base not in _HASHES:
        raise ValueError(f"unsupported digest algorithm {algorithm!r}")
    return _HASHES[base], sess


def _nc_text(nc: int | str | None) -> str | None:
    if nc is None or isinstance(nc, str):
        return nc
    return f"{nc:08x}"


def compute_response(
    *,
    username: str,
    realm: str,
    password: str,
    method: str,
    uri: str,
    nonce: str,
    algorithm: str = "MD5",
    qop: str | None = None,
    nc: int | str | None = None,
    cnonce: str | None = None,
    body: bytes = b"",
) -> str:
    """The ``response`` value (RFC 2617 section 3.2.2.1, RFC 7616 section 3.4.1), lower-case hex.

    ``A1 = username:realm:password`` (``-sess``: ``H(A1):nonce:cnonce``);
    ``A2 = method:uri`` (``auth-int``: ``method:uri:H(body)``);
    with qop: ``H(H(A1):nonce:nc:cnonce:qop:H(A2))``, without: ``H(H(A1):nonce:H(A2))``.
    ``nc`` may be an int (rendered as 8 hex digits) or the string as sent.
    Raises ValueError for an unsupported algorithm or qop.
    """
    new_hash, sess = _hash_for(algorithm)
    return _response(new_hash, sess, username, realm, password, method, uri, nonce, qop, nc, cnonce, body)


_ha1s: dict[tuple[Callable[[bytes], Any], str], str] = {}   # (hash, "username:realm:password") -> H(A1)


def _response(new_hash: Callable[[bytes], Any], sess: bool, username: str, realm: str, password: str, method: str,
              uri: str, nonce: str, qop: str | None, nc: int | str | None, cnonce: str | None, body: bytes) -> str:
    """:func:`compute_response` once the algorithm is known (what :meth:`NonceBook.verify` calls: its algorithm
    is looked up once, not per INVITE)."""
    # H(x): the hash's hex digest of x's UTF-8 octets (written out below: three per response, every INVITE).
    # H(A1) depends on the user's password only, the same on each of its calls: hashed once, then remembered
    a1 = f"{username}:{realm}:{password}"
    ha1 = _ha1s.get((new_hash, a1))
    if ha1 is None:
        ha1 = remember(_ha1s, (new_hash, a1), a1, new_hash(a1.encode()).hexdigest())
    if sess:
        ha1 = new_hash(f"{ha1}:{nonce}:{cnonce or ''}".encode()).hexdigest()
    if qop == "auth-int":
        ha2 = new_hash(f"{method}:{uri}:{new_hash(body).hexdigest()}".encode()).hexdigest()
    elif qop in (None, "auth"):
        ha2 = new_hash(f"{method}:{uri}".encode()).hexdigest()
    else:
        raise ValueError(f"unsupported qop {qop!r}")
    if qop is None:
        return new_hash(f"{ha1}:{nonce}:{ha2}".encode()).hexdigest()
    return new_hash(f"{ha1}:{nonce}:{_nc_text(nc)}:{cnonce or ''}:{qop}:{ha2}".encode()).hexdigest()


# --- header values -----------------------------------------------------------------------------

_NAME_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+")
_BARE_VALUE_RE = re.compile(r"[^\s,\"]+")


#: the usual ``Digest name=value, name="value", ...`` read in C (sipscan.c ``auth_params``): the same dict, or
#: None for anything else (then the loop below reads it); None when the compiled scanner is not there
_AUTH_PARAMS_C = _load_compiled("auth_params")


def _parse_auth_params(value: str) -> dict[str, str]:
    """``Digest a=b, c="d"`` -> ``{"a": "b", "c": "d"}`` (RFC 3261 section 25.1 digest-cln).

    Names are lower-cased; quoted values are unquoted; spaces around ``,`` and ``=`` are allowed;
    the scheme must be Digest. Raises :class:`SipParseError`.
    """
    if _AUTH_PARAMS_C is not None:
        params = _AUTH_PARAMS_C(value)
        if params is not None:
            return params
    text = value.strip()
    scheme, _, rest = text.partition(" ")
    if scheme.lower() != "digest":
        raise SipParseError("Bad Request - Unsupported authentication scheme")
    return _parse_auth_params_loop(rest)


def _parse_auth_params_loop(rest: str) -> dict[str, str]:
    """:func:`_parse_auth_params` after the scheme, one character class at a time: quoted-pairs, errors, and
    the reference the compiled reading is compared with (tests/test_sip_digest.py)."""
    params: dict[str, str] = {}
    i, n = 0, len(rest)
    while i < n:
        while i < n and rest[i] in " \t,":
            i += 1
        if i >= n:
            break
        m = _NAME_RE.match(rest, i)
        if not m:
            raise SipParseError("Bad Request - Malformed authentication parameters")
        name = m.group().lower()
        i = m.end()
        while i < n and rest[i] in " \t":
            i += 1
        if i >= n or rest[i] != "=":
            raise SipParseError("Bad Request - Malformed authentication parameters")
        i += 1
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] == '"':
            end = quoted_end(rest, i)
            params[name] = unquote_string(rest[i:end])
        else:
            vm = _BARE_VALUE_RE.match(rest, i)
            if not vm:
                raise SipParseError("Bad Request - Malformed authentication parameters")
            end = vm.end()
            params[name] = vm.group()
        i = end
        while i < n and rest[i] in " \t":
            i += 1
        if i < n and rest[i] != ",":
            raise SipParseError("Bad Request - Malformed authentication parameters")
    return params


def _q(text: str) -> str:
    if '"' in text or "\\" in text:      # rare: the usual value is quoted without two replace calls
        text = text.replace("\\", "\\\\").replace('"', '\\"')
    return f'"{text}"'


@dataclass
class Challenge:
    """A ``WWW-Authenticate``/``Proxy-Authenticate`` digest challenge (RFC 2617 section 3.2.1).

    ``qop`` is the qop-options string as sent (``"auth"`` or ``"auth,auth-int"``), None if absent.
    """

    realm: str
    nonce: str
    opaque: str | None = None
    algorithm: str = "MD5"
    qop: str | None = "auth"
    stale: bool = False

    @property
    def qop_options(self) -> list[str]:
        return [q.strip() for q in (self.qop or "").split(",") if q.strip()]

    def header_value(self) -> str:
        """Rendered like Meta's sample: ``Digest realm="wa.meta.vc",nonce="...",opaque="...",
        algorithm=MD5,qop="auth"`` (``stale=TRUE`` appended when set)."""
        realm, nonce, opaque, qop = self.realm, self.nonce, self.opaque, self.qop
        if opaque is not None and qop is not None and not self.stale:
            plain = f"{realm}{nonce}{opaque}{qop}"
            if '"' not in plain and "\\" not in plain:        # the usual challenge: nothing to escape, no _q calls
                return f'Digest realm="{realm}",nonce="{nonce}",opaque="{opaque}",algorithm={self.algorithm},qop="{qop}"'
        opaque = "" if self.opaque is None else f",opaque={_q(self.opaque)}"
        qop = "" if self.qop is None else f",qop={_q(self.qop)}"
        stale = ",stale=TRUE" if self.stale else ""
        return f"Digest realm={_q(self.realm)},nonce={_q(self.nonce)}{opaque},algorithm={self.algorithm}{qop}{stale}"


def parse_challenge(header_value: str) -> Challenge:
    """Parse a digest challenge; realm and nonce are required. Raises :class:`SipParseError`."""
    p = _parse_auth_params(header_value)
    if "realm" not in p or "nonce" not in p:
        raise SipParseError("Bad Request - Digest challenge without realm or nonce")
    return Challenge(
        realm=p["realm"],
        nonce=p["nonce"],
        opaque=p.get("opaque"),
        algorithm=p.get("algorithm", "MD5"),
        qop=p.get("qop"),
        stale=p.get("stale", "").lower() == "true",
    )


@dataclass
class Credentials:
    """An ``Authorization``/``Proxy-Authorization`` digest response (RFC 2617 section 3.2.2).

    Fields hold the values as sent; ``None`` means absent (``algorithm`` absent means MD5,
    RFC 2617 section 3.2.1). ``nc`` is the 8-hex-digit string.
    """

    username: str | None = None
    realm: str | None = None
    nonce: str | None = None
    uri: str | None = None
    response: str | None = None
    algorithm: str | None = None
    cnonce: str | None = None
    opaque: str | None = None
    qop: str | None = None
    nc: str | None = None

    def header_value(self) -> str:
        """Rendered like Meta's sample: ``Digest username="...", realm="...", nonce="...",
        uri="...", response="...", algorithm=MD5, cnonce="...", opaque="...", qop=auth, nc=00000001``.
        """
        parts: list[str] = []
        for name in ("username", "realm", "nonce", "uri", "response"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_q(value)}")
        if self.algorithm is not None:
            parts.append(f"algorithm={self.algorithm}")
        for name in ("cnonce", "opaque"):
            value = getattr(self, name)
            if value is not None:
                parts.append(f"{name}={_q(value)}")
        if self.qop is not None:
            parts.append(f"qop={self.qop}")
        if self.nc is not None:
            parts.append(f"nc={self.nc}")
        return "Digest " + ", ".join(parts)


def parse_credentials(value: str) -> Credentials:
    """Parse an Authorization/Proxy-Authorization digest value; unknown parameters are ignored.

    Missing parameters come back as None (:meth:`NonceBook.verify` reports them).
    Raises :class:`SipParseError` for a non-Digest scheme or unparseable syntax.
    """
    p = _parse_auth_params(value)
    get = p.get             # the fields in their order (a keyword call costs more, once per INVITE)
    return Credentials(get("username"), get("realm"), get("nonce"), get("uri"), get("response"), get("algorithm"),
                       get("cnonce"), get("opaque"), get("qop"), get("nc"))


def answer(
    challenge: Challenge,
    *,
    username: str,
    password: str,
    method: str,
    uri: str,
    nc: int = 1,
    cnonce: str | None = None,
    body: bytes = b"",
) -> Credentials:
    """Credentials answering ``challenge`` (RFC 3261 section 22.2/22.3; RFC 2617 section 3.2.2).

    Picks qop ``auth`` when offered, else ``auth-int`` (hashing ``body``), else none (then no
    cnonce/nc are sent). ``algorithm`` and ``opaque`` are echoed. ``uri`` is the Request-URI.
    """
    options = challenge.qop_options
    if not options:
        qop = None
    elif "auth" in options:
        qop = "auth"
    elif "auth-int" in options:
        qop = "auth-int"
    else:
        raise ValueError(f"no supported qop in {challenge.qop!r}")
    if qop is None:
        cnonce_v, nc_v = None, None
    else:
        cnonce_v, nc_v = cnonce or secrets.token_urlsafe(16), f"{nc:08x}"
    response = compute_response(
        username=username, realm=challenge.realm, password=password, method=method, uri=uri,
        nonce=challenge.nonce, algorithm=challenge.algorithm, qop=qop, nc=nc_v, cnonce=cnonce_v,
        body=body,
    )
    return Credentials(
        username=username, realm=challenge.realm, nonce=challenge.nonce, uri=uri, response=response,
        algorithm=challenge.algorithm, cnonce=cnonce_v, opaque=challenge.opaque, qop=qop, nc=nc_v,
    )


# --- server side -------------------------------------------------------------------------------


class Verdict(str, Enum):
    """Outcome of :meth:`NonceBook.verify`.

    The caller answers anything but OK with a fresh challenge (401/407); for STALE that challenge
    carries ``stale=TRUE`` (RFC 2617 section 3.2.1) so the client retries without asking the user.
    """

    OK = "ok"
    BAD_RESPONSE = "bad_response"  # wrong password, or a response computed over other values
    STALE = "stale"  # right password, nonce older than the lifetime
    UNKNOWN_NONCE = "unknown_nonce"  # never issued, or forgotten (memory bound)
    REPLAYED_NC = "replayed_nc"  # nonce-count not above the last one accepted for this nonce
    BAD_REALM = "bad_realm"
    BAD_OPAQUE = "bad_opaque"
    MISSING_PARAMS = "missing_params"  # required parameter absent or malformed


_NC_RE = re.compile(r"[0-9A-Fa-f]{8}")     # nonce-count: 8LHEX (RFC 2617 section 3.2.2)


@dataclass(slots=True)
class _Issued:
    issued_at: float
    opaque: str
    last_nc: int = 0


class NonceBook:
    """Server-side nonces: issue challenges, verify credentials, refuse replays.

    Nonces and opaques are 16 hex characters like Meta's sample. A nonce is valid for
    ``lifetime`` seconds; after that a correct response earns :attr:`Verdict.STALE`. With qop,
    each nonce-count must exceed the last accepted one (RFC 7616 section 3.4 / 5.4 replay
    protection). At most ``max_nonces`` nonces are remembered (oldest forgotten first), and
    expired ones are purged when new ones are issued.

    The caller still checks that ``username`` is the expected user and that ``uri`` matches the
    Request-URI (RFC 2617 section 3.2.2.5) before trusting an OK.
    """

    def __init__(
        self,
        realm: str,
        *,
        algorithm: str = "MD5",
        qop: str | None = "auth",
        lifetime: float = 300.0,
        max_nonces: int = 4096,
        now: Callable[[], float] = time.monotonic,
    ) -> None:
        self._hash, self._sess = _hash_for(algorithm)  # validated early, looked up once
        self.realm = realm
        self.algorithm = algorithm
        self.qop = qop
        self.lifetime = lifetime
        self.max_nonces = max_nonces
        self._now = now
        self._issued: dict[str, _Issued] = {}
        # the nonces in the order issued (the oldest first), for the bound and the purge: a dict's own order would
        # do, but finding its first key again after deleting from its front scans the deleted slots (an OrderedDict
        # costs ~2 k instructions more per issue than the dict and this queue)
        self._order: deque[str] = deque()
        self._qops = [q.strip() for q in (qop or "").split(",")]      # the qop values a response may use

    def __len__(self) -> int:
        return len(self._issued)

    def issue(self, *, stale: bool = False) -> Challenge:
        """A fresh challenge; ``stale=True`` after a :attr:`Verdict.STALE` verdict."""
        now = self._now()
        issued, order = self._issued, self._order
        if order and issued[order[0]].issued_at < now - 2 * self.lifetime:    # (_purge's first test, inline)
            self._purge(now)
        fresh = token_hex(16)            # nonce and opaque: 8 random octets each, drawn at once
        nonce, opaque = fresh[:16], fresh[16:]
        while nonce in issued:  # pragma: no cover - 64-bit collision
            nonce = token_hex(8)
        issued[nonce] = _Issued(now, opaque)
        order.append(nonce)
        while len(order) > self.max_nonces:
            del issued[order.popleft()]
        return Challenge(self.realm, nonce, opaque, self.algorithm, self.qop, stale)

    def _purge(self, now: float) -> None:
        # Keep expired nonces for one more lifetime so late retries get STALE, not UNKNOWN.
        horizon = now - 2 * self.lifetime
        issued, order = self._issued, self._order
        while order and issued[order[0]].issued_at < horizon:
            del issued[order.popleft()]

    def verify(
        self,
        creds: Credentials,
        *,
        method: str,
        password: str,
        expected_realm: str | None = None,
        body: bytes = b"",
    ) -> Verdict:
        """Check ``creds`` for a request with ``method`` (and ``body`` for auth-int)."""
        if None in (creds.username, creds.realm, creds.nonce, creds.uri, creds.response):
            return Verdict.MISSING_PARAMS
        nc_value = 0
        if self.qop is not None or creds.qop is not None:
            if creds.qop is None or creds.cnonce is None or creds.nc is None:
                return Verdict.MISSING_PARAMS
            if creds.qop not in self._qops:
                return Verdict.MISSING_PARAMS
            if not _NC_RE.fullmatch(creds.nc):
                return Verdict.MISSING_PARAMS
            nc_value = int(creds.nc, 16)
        if creds.realm != (expected_realm if expected_realm is not None else self.realm):
            return Verdict.BAD_REALM
        rec = self._issued.get(creds.nonce)  # type: ignore[arg-type]
        if rec is None:
            return Verdict.UNKNOWN_NONCE
        if creds.opaque != rec.opaque:
            return Verdict.BAD_OPAQUE
        algorithm = creds.algorithm
        if algorithm != self.algorithm and (algorithm or "MD5").upper() != self.algorithm.upper():
            return Verdict.BAD_RESPONSE
        try:
            expected = _response(self._hash, self._sess, creds.username, creds.realm,  # type: ignore[arg-type]
                                 password, method, creds.uri, creds.nonce, creds.qop,  # type: ignore[arg-type]
                                 creds.nc, creds.cnonce, body)
        except ValueError:
            return Verdict.BAD_RESPONSE
        if not hmac.compare_digest(expected, creds.response.lower()):  # type: ignore[union-attr]
            return Verdict.BAD_RESPONSE
        if self._now() - rec.issued_at > self.lifetime:
            return Verdict.STALE
        if creds.qop is not None:
            if nc_value <= rec.last_nc:
                return Verdict.REPLAYED_NC
            rec.last_nc = nc_value
        return Verdict.OK
