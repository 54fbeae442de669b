"""SIP URIs (RFC 3261 section 19.1) and name-addr / addr-spec values (section 20.10, 25.1).

Also holds the small lexical helpers the message layer shares: ``token``, quoted strings,
``;name=value`` parameter lists and comma-separated header lists (RFC 3261 section 25.1,
section 7.3.1).

Representation choices, made so that a parsed value renders back the way it came in:

* Text stays *escaped* as received (``%41`` stays ``%41``). Compare users with :func:`unescape`
  when equivalence matters (RFC 3261 section 19.1.4).
* ``SipUri.host`` keeps IPv6 brackets (``[2001:db8::1]``), as the ``host`` production does.
* Parameter names keep their case; :func:`param` looks them up case-insensitively. A parameter
  without a value (``lr``) maps to ``None``; a quoted header-parameter value keeps its quotes.
* RFC 4904 user parameters (``sip:+1234567890;tgrp=wacall;trunk-context=example.com@host``) stay
  inside ``SipUri.user`` verbatim; :attr:`SipUri.user_number` and :attr:`SipUri.user_params` split it.
* URIs of other schemes (``tel:``, ``urn:``, ``http:``) are kept opaque (``SipUri.opaque``) when the
  caller allows them: RFC 3261 section 8.2.2.1 answers an unknown Request-URI scheme with 416,
  and To/From may carry any absolute URI (RFC 4475 section 3.3.4).
"""

from __future__ import annotations

import ipaddress
import os
import re
from dataclasses import dataclass, field
from typing import Callable, TypeVar
from urllib.parse import unquote

__all__ = [
    "NameAddr",
    "SipParseError",
    "SipUri",
    "parse_name_addr",
    "parse_uri",
    "unescape",
]


class SipParseError(ValueError):
    """A message (or part of one) that RFC 3261 says must be rejected.

    ``status`` is the response code to answer a *request* with (400 unless noted: 416 for an
    unsupported URI scheme, 505 for an unknown SIP version, 413/513 for size limits).
    ``reason`` is the full reason phrase for that response, e.g. ``"Bad Request - Missing Call-ID"``.
    ``message`` is the partly parsed :class:`~wacall.sip.message.Request`/``Response`` when the
    start line and header lines were readable but a field check failed, so a transport can still
    build the error response (RFC 3261 section 8.2.6); otherwise ``None``. Responses that fail to
    parse are simply dropped (RFC 3261 section 18.1.2).
    """

    def __init__(self, reason: str, *, status: int = 400) -> None:
        super().__init__(reason)
        self.status = status
        self.reason = reason
        self.message: object | None = None


def _bad(detail: str) -> SipParseError:
    return SipParseError(f"Bad Request - {detail}")


# --- RFC 3261 section 25.1 lexical pieces ------------------------------------------------------

#: token = 1*(alphanum / "-" / "." / "!" / "%" / "*" / "_" / "+" / "`" / "'" / "~")
TOKEN = r"[A-Za-z0-9\-.!%*_+`'~]+"
TOKEN_RE = re.compile(TOKEN)
_TOKEN_FULL = re.compile(TOKEN + r"\Z")
_WS = " \t"
#: gen-value = token / host / quoted-string; host may be "[v6]"; Via received= may be bare IPv6
_GEN_VALUE_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~:\[\]]+")
#: one ``;name`` or ``;name=value`` (gen-value, no quoted string) with the whitespace SEMI and EQUAL allow
_PARAM_RE = re.compile(r"[ \t]*;[ \t]*(" + TOKEN + r")[ \t]*(?:=[ \t]*([A-Za-z0-9\-.!%*_+`'~:\[\]]+))?")

_ESCAPED = r"%[0-9A-Fa-f]{2}"
_UNRESERVED = r"A-Za-z0-9\-_.!~*'()"
# user = 1*( unreserved / escaped / user-unreserved ), user-unreserved = & = + $ , ; ? /
# ('#' is not in the grammar but is common in dial strings; it is tolerated.)
_USER_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,;?/#]|{_ESCAPED})+\Z")
_PASSWORD_RE = re.compile(rf"(?:[{_UNRESERVED}&=+$,]|{_ESCAPED})*\Z")
# pname / pvalue = 1*paramchar; paramchar = param-unreserved / unreserved / escaped
_PCHAR_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/:&+$]|{_ESCAPED})+\Z")
# hname / hvalue = ( hnv-unreserved / unreserved / escaped )
_HCHAR_RE = re.compile(rf"(?:[{_UNRESERVED}\[\]/?:+$]|{_ESCAPED})*\Z")
_HOSTNAME_RE = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9_.\-]*[A-Za-z0-9.])?\Z")
_SCHEME_RE = re.compile(r"([A-Za-z][A-Za-z0-9+.\-]*):")
_OPAQUE_BAD = set(' \t\r\n<>"')


def is_token(text: str) -> bool:
    """True if ``text`` is an RFC 3261 ``token``."""
    return _TOKEN_FULL.match(text) is not None


def is_digits(text: str) -> bool:
    """True for ``1*DIGIT`` in ASCII (``str.isdigit`` also accepts ``²``, which ``int()`` refuses)."""
    return text.isascii() and text.isdigit()


def unescape(text: str) -> str:
    """Decode ``%HH`` escapes (RFC 3261 section 19.1.2, RFC 3986 section 2.1) for comparisons."""
    return unquote(text, errors="surrogateescape")


def skip_ws(text: str, i: int) -> int:
    """Index of the first non SP/HTAB character at or after ``i`` (headers are unfolded already)."""
    n = len(text)
    while i < n and text[i] in _WS:
        i += 1
    return i


def quoted_end(text: str, i: int) -> int:
    """``text[i]`` is ``"``; return the index just past the closing quote (section 25.1 quoted-string).

    A backslash escapes the next character (quoted-pair); an unterminated string raises.
    """
    n = len(text)
    j = i + 1
    while j < n:
        c = text[j]
        if c == "\\":
            j += 2
            continue
        if c == '"':
            return j + 1
        if c in "\r\n":
            break
        j += 1
    raise _bad("Unterminated quoted string")


def unquote_string(quoted: str) -> str:
    """The content of a quoted-string with quoted-pairs resolved (``"a \\"b\\""`` -> ``a "b"``)."""
    inner = quoted[1:-1]
    if "\\" not in inner:                      # no quoted-pair (nearly every value): nothing to resolve
        return inner
    return re.sub(r"\\(.)", r"\1", inner, flags=re.DOTALL)


def quote_string(text: str) -> str:
    """Render ``text`` as a quoted-string: ``"`` ``\\`` and control characters become quoted-pairs.

    CR and LF cannot appear even as quoted-pairs (section 25.1) and are replaced by a space.
    """
    out = ['"']
    for ch in text:
        if ch in "\r\n":
            out.append(" ")
        elif ch in '"\\' or (ord(ch) < 0x20 and ch != "\t") or ch == "\x7f":
            out.append("\\" + ch)
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def parse_params(text: str, *, what: str = "header") -> dict[str, str | None]:
    """Parse ``*( SEMI generic-param )`` (section 25.1): ``;name`` or ``;name = value``.

    SEMI and EQUAL allow whitespace around them. Values are ``token``/``host`` or a quoted string
    (kept with its quotes). Empty parameters (``;;``) are an error (RFC 4475 section 3.1.2.1).
    """
    if '"' not in text:            # no quoted string: one regular expression per parameter, in C
        params: dict[str, str | None] = {}
        end = 0
        for m in _PARAM_RE.finditer(text):
            if m.start() != end:
                break
            params[m[1]] = m[2]
            end = m.end()
        else:
            if text[end:].strip(_WS) == "":
                return params
        # not the plain form: the loop below gives the answer (or the error)
    return _parse_params_loop(text, what)


def _parse_params_loop(text: str, what: str = "header") -> dict[str, str | None]:
    """:func:`parse_params` one character class at a time: quoted strings, errors, and the reference."""
    params: dict[str, str | None] = {}
    i, n = 0, len(text)
    while True:
        i = skip_ws(text, i)
        if i >= n:
            return params
        if text[i] != ";":
            raise _bad(f"Malformed {what} parameters")
        i = skip_ws(text, i + 1)
        m = TOKEN_RE.match(text, i)
        if not m:
            raise _bad(f"Empty or malformed {what} parameter")
        name = m.group()
        i = skip_ws(text, m.end())
        value: str | None = None
        if i < n and text[i] == "=":
            i = skip_ws(text, i + 1)
            if i < n and text[i] == '"':
                end = quoted_end(text, i)
            else:
                vm = _GEN_VALUE_RE.match(text, i)
                if not vm:
                    raise _bad(f"Malformed {what} parameter value")
                end = vm.end()
            value = text[i:end]
            i = end
        params[name] = value
    # not reached


def render_params(params: dict[str, str | None]) -> str:
    """``{"tag": "x", "lr": None}`` -> ``;tag=x;lr``."""
    return "".join(f";{k}" if v is None else f";{k}={v}" for k, v in params.items())


def param(params: dict[str, str | None], name: str) -> str | None:
    """Case-insensitive parameter lookup (parameter names are case-insensitive, section 7.3.1)."""
    if name in params:
        return params[name]
    low = name.lower()
    for k, v in params.items():
        if k.lower() == low:
            return v
    return None


def has_param(params: dict[str, str | None], name: str) -> bool:
    """True if ``name`` is present (with or without a value), case-insensitively."""
    low = name.lower()
    return any(k.lower() == low for k in params)


# --- memos ---------------------------------------------------------------------------------------
# A SIP call repeats the same header values (From, To, Via, Contact, the Request-URI) in every message,
# and each layer looks at them again: the parsers below are pure functions of their text, so a parsed
# value is kept by its text (short texts only, at most _MEMO_SIZE of each, cleared when full) and handed
# out as it is, shared: its parameter dicts are FrozenParams (read-only), and a caller that wants a changed
# value builds a new one from a copy (``dict(value.params)``). Failures are not kept.


class FrozenParams(dict):
    """The parameters (or URI headers) of a parsed SIP value: a ``dict`` that cannot be changed in place,
    because the parsers hand the same value to every message that carries the same text. ``dict(params)``
    (or ``params.copy()``) is a changeable copy."""

    __slots__ = ()

    def _refuse(self, *args: object, **kwargs: object) -> None:
        raise TypeError("parsed SIP values are shared: change a copy (dict(params)) and build a new value")

    __setitem__ = __delitem__ = pop = popitem = setdefault = update = clear = __ior__ = _refuse  # type: ignore

    def copy(self) -> dict:  # type: ignore[override]
        return dict(self)

    def __reduce__(self) -> tuple:
        return (type(self), (dict(self),))


_NO_PARAMS = FrozenParams()
_MEMO_SIZE = 4096
_MEMO_TEXT = 512
_split_memo: dict[str, tuple[str, ...]] = {}
_uri_memo: dict[tuple[str, bool], "SipUri"] = {}
_addr_memo: dict[str, "NameAddr"] = {}
T = TypeVar("T")


def memoised(memo: dict, key, text: str, parse: Callable[[], T]) -> T:
    """``memo[key]``, or ``parse()`` kept there when ``text`` is short (a failure raises and is not kept)."""
    known = memo.get(key)
    if known is None:
        known = remember(memo, key, text, parse())
    return known


def remember(memo: dict, key, text: str, value: T) -> T:
    """Keep ``value`` as ``memo[key]`` when ``text`` is short (the memos' one bound: at most ``_MEMO_SIZE``
    entries, cleared when full); returns ``value``."""
    if len(text) <= _MEMO_TEXT:
        if len(memo) >= _MEMO_SIZE:
            memo.clear()
        memo[key] = value
    return value


def split_list(value: str) -> list[str]:
    """Split a comma-separated header value (section 7.3.1) into its elements.

    Commas inside quoted strings or ``<...>`` do not split. Elements are stripped; empty
    elements are dropped.
    """
    return list(split_shared(value))


def split_shared(value: str) -> tuple[str, ...]:
    """:func:`split_list` as the memo's own tuple (for callers that only read it)."""
    if "," not in value:            # one element (a Via, a Contact): nothing to split, nothing worth keeping
        element = value.strip(_WS)
        return (element,) if element else ()
    known = _split_memo.get(value)
    return known if known is not None else memoised(_split_memo, value, value, lambda: tuple(_split_list(value)))


def _split_list(value: str) -> list[str]:
    if '"' not in value and "<" not in value:    # nothing can hide a comma (a Via, an Allow): split in C
        return [e for e in (part.strip(_WS) for part in value.split(",")) if e]
    out: list[str] = []
    start = 0
    depth = 0
    i, n = 0, len(value)
    while i < n:
        c = value[i]
        if c == '"':
            try:
                i = quoted_end(value, i)
            except SipParseError:
                i = n  # unbalanced quote: the rest is one element; its own parser will complain
            continue
        if c == "<":
            depth += 1
        elif c == ">" and depth:
            depth -= 1
        elif c == "," and depth == 0:
            out.append(value[start:i].strip(_WS))
            start = i + 1
        i += 1
    out.append(value[start:].strip(_WS))
    return [e for e in out if e]


# --- SIP URI -----------------------------------------------------------------------------------


@dataclass
class SipUri:
    """``sip:user:password@host:port;params?headers`` (RFC 3261 section 19.1.1).

    For a non-SIP absolute URI (only when parsed with ``any_scheme=True``) ``opaque`` holds
    everything after ``scheme:`` and the other fields are empty.
    """

    scheme: str = "sip"
    user: str | None = None
    password: str | None = None
    host: str = ""
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    headers: dict[str, str] = field(default_factory=dict)
    opaque: str | None = None

    @property
    def is_sip(self) -> bool:
        """True for ``sip:``/``sips:`` URIs (else the gateway answers 416, section 8.2.2.1)."""
        return self.opaque is None and self.scheme in ("sip", "sips")

    @property
    def user_number(self) -> str | None:
        """The user part before any RFC 4904 user parameters (``+1234567890``)."""
        return None if self.user is None else self.user.split(";", 1)[0]

    @property
    def user_params(self) -> dict[str, str | None]:
        """RFC 4904 parameters in the user part: ``{"tgrp": "wacall", "trunk-context": ...}``."""
        if not self.user or ";" not in self.user:
            return {}
        out: dict[str, str | None] = {}
        for item in self.user.split(";")[1:]:
            if item:
                k, eq, v = item.partition("=")
                out[k] = v if eq else None
        return out

    @property
    def is_ip_host(self) -> bool:
        """True if the host is an IPv4 address or a bracketed IPv6 reference."""
        if self.host.startswith("["):
            return True
        if not self.host[-1:].isdigit():     # a dotted quad ends in a digit: a host name (wa.meta.vc) is not one
            return False
        try:
            ipaddress.IPv4Address(self.host)
        except ValueError:
            return False
        return True

    @property
    def host_ip(self) -> str:
        """The host without IPv6 brackets (what a socket API wants)."""
        return self.host[1:-1] if self.host.startswith("[") else self.host

    @property
    def transport(self) -> str | None:
        """The ``transport`` URI parameter, lower-cased (``tls``), or None."""
        t = param(self.params, "transport")
        return t.lower() if t else None

    @property
    def lr(self) -> bool:
        """True if the URI carries the loose-routing ``lr`` parameter (section 16.12)."""
        return has_param(self.params, "lr")

    def __str__(self) -> str:
        known = self.__dict__.get("_rendered")         # a parsed URI (shared, never changed): rendered once
        if known is not None:
            return known
        text = self._render()
        if "_rendered" in self.__dict__:
            self._rendered = text
        return text

    def _render(self) -> str:
        if self.opaque is not None:
            return f"{self.scheme}:{self.opaque}"
        out = [self.scheme, ":"]
        if self.user is not None:
            out.append(self.user)
            if self.password is not None:
                out += [":", self.password]
            out.append("@")
        out.append(self.host)
        if self.port is not None:
            out += [":", str(self.port)]
        out.append(render_params(self.params))
        if self.headers:
            out.append("?" + "&".join(f"{k}={v}" for k, v in self.headers.items()))
        return "".join(out)


def _valid_host(host: str) -> bool:
    if host.startswith("["):
        if not host.endswith("]"):
            return False
        try:
            ipaddress.IPv6Address(host[1:-1])
        except ValueError:
            return False
        return True
    return _HOSTNAME_RE.match(host) is not None


def parse_uri(text: str, *, any_scheme: bool = False) -> SipUri:
    """Parse a SIP or SIPS URI (see :func:`_parse_uri`): a memoised parse, shared (read-only parameters)."""
    key = (text, any_scheme)
    known = _uri_memo.get(key)
    return known if known is not None else memoised(_uri_memo, key, text, lambda: _parse_uri(text, any_scheme=any_scheme))


def _parse_uri(text: str, *, any_scheme: bool = False) -> SipUri:
    """Parse a SIP or SIPS URI (RFC 3261 section 19.1.1, grammar in section 25.1).

    The user part extends to the first ``@`` (so it may hold ``;`` and ``?``, RFC 4475 section
    3.1.1.2 and 3.1.1.9). Whitespace anywhere is an error (RFC 4475 section 3.1.2.8, 3.1.2.14).
    Other schemes raise ``SipParseError(status=416)`` unless ``any_scheme`` is true, in which case
    they are returned opaque.
    """
    m = _SCHEME_RE.match(text)
    if not m:
        raise _bad("Malformed URI")
    scheme = m.group(1).lower()
    rest = text[m.end():]
    if scheme not in ("sip", "sips"):
        if not any_scheme:
            raise SipParseError(f"Unsupported URI Scheme - {scheme}", status=416)
        if not rest or any(c in _OPAQUE_BAD for c in rest):
            raise _bad("Malformed URI")
        return SipUri(scheme=scheme, params=_NO_PARAMS, headers=_NO_PARAMS, opaque=rest)
    if any(c in _OPAQUE_BAD for c in rest):
        raise _bad("Malformed URI")

    user: str | None = None
    password: str | None = None
    if "@" in rest:
        userinfo, _, rest = rest.partition("@")
        user, colon, pw = userinfo.partition(":")
        password = pw if colon else None
        if not user or not _USER_RE.match(user):
            raise _bad("Malformed URI user part")
        if password is not None and not _PASSWORD_RE.match(password):
            raise _bad("Malformed URI password")

    rest, qmark, header_text = rest.partition("?")
    hostport, *param_items = rest.split(";")
    if hostport.startswith("["):
        close = hostport.find("]")
        host, port_text = hostport[: close + 1], hostport[close + 1:]
        if close < 0 or (port_text and not port_text.startswith(":")):
            raise _bad("Malformed URI host")
        port_text = port_text[1:] if port_text else None
    else:
        host, colon, port_text = hostport.partition(":")
        port_text = port_text if colon else None
    if not _valid_host(host):
        raise _bad("Malformed URI host")
    port: int | None = None
    if port_text is not None:
        if not is_digits(port_text) or len(port_text) > 5 or int(port_text) > 65535:
            raise _bad("Malformed URI port")
        port = int(port_text)

    params: dict[str, str | None] = {}
    for item in param_items:
        name, eq, value = item.partition("=")
        if not _PCHAR_RE.match(name) or (eq and not _PCHAR_RE.match(value)):
            raise _bad("Malformed URI parameter")
        params[name] = value if eq else None

    headers: dict[str, str] = {}
    if qmark:
        for item in header_text.split("&"):
            name, eq, value = item.partition("=")
            if not name or not eq or not _HCHAR_RE.match(name) or not _HCHAR_RE.match(value):
                raise _bad("Malformed URI header")
            headers[name] = value

    uri = SipUri(scheme, user, password, host, port, FrozenParams(params) if params else _NO_PARAMS,
                 FrozenParams(headers) if headers else _NO_PARAMS)
    uri._rendered = None        # parsed, so shared and never changed: str() keeps its text (SipUri.__str__)
    return uri


# --- name-addr / addr-spec ---------------------------------------------------------------------


@dataclass
class NameAddr:
    """``"Display" <uri>;params`` (RFC 3261 section 20.10, 25.1: name-addr / addr-spec).

    ``display`` is the display name with quoting removed (None if absent). ``params`` are the
    header parameters (``tag``, ``expires``, ``q``, ...), quoted values keep their quotes.
    ``str()`` always renders the name-addr form with ``<...>``.
    """

    display: str | None
    uri: SipUri
    params: dict[str, str | None] = field(default_factory=dict)

    @property
    def tag(self) -> str | None:
        """The ``tag`` parameter (section 19.3), or None."""
        return param(self.params, "tag")

    def __str__(self) -> str:
        prefix = "" if self.display is None else quote_string(self.display) + " "
        return f"{prefix}<{self.uri}>{render_params(self.params)}"


def parse_name_addr(text: str) -> NameAddr:
    """Parse a From, To, Contact or Route value (see :func:`_parse_name_addr`): a memoised parse, shared
    (read-only parameters)."""
    known = _addr_memo.get(text)
    return known if known is not None else remember(_addr_memo, text, text, _parse_name_addr(text))


def _load_compiled(name: str | None = None):  # type: ignore[no-untyped-def]
    """The extension ``wacall.sip._sipscan`` (sipscan.c, built by setup.py), or its function ``name``; None when
    WACALL_SIPSCAN=0 asks for the pure-Python parsers, or the extension is missing or older (then Python
    parses). The one loader of the compiled SIP parsers (message.py's scanner too)."""
    if os.environ.get("WACALL_SIPSCAN", "1").strip().lower() in ("0", "false", "no", "off"):
        return None
    try:
        from . import _sipscan
    except ImportError:  # pragma: no cover - built at install time; without a compiler Python parses
        return None
    return _sipscan if name is None else getattr(_sipscan, name, None)


#: the usual ``["display"] <sip:user@host[:port];uri-params>;params`` cut into its pieces in C (sipscan.c), or
#: None for anything else; :func:`_parse_name_addr_general` is the reference (tests/test_sip_scan.py compares them)
_NAME_ADDR_C = _load_compiled("name_addr")


def _parse_name_addr(text: str) -> NameAddr:
    got = _NAME_ADDR_C(text) if _NAME_ADDR_C is not None else None
    if got is None:
        return _parse_name_addr_general(text)
    display, uri_text, scheme, user, host, port, uri_params, params = got
    key = (uri_text, True)                       # parse_uri's memo, as the general path fills it
    uri = _uri_memo.get(key)
    if uri is None:
        uri = SipUri(scheme, user, None, host, port, FrozenParams(uri_params) if uri_params else _NO_PARAMS,
                     _NO_PARAMS)
        uri._rendered = None    # parsed, so shared and never changed (as _parse_uri leaves it)
        remember(_uri_memo, key, uri_text, uri)
    return NameAddr(display, uri, FrozenParams(params) if params else _NO_PARAMS)


def _parse_name_addr_general(text: str) -> NameAddr:
    """Parse ``( name-addr / addr-spec ) *( SEMI param )`` as in From, To, Contact, Route.

    * ``"Name" <sip:..>;tag=x`` and ``Name <sip:..>`` (display-name = *(token LWS) / quoted-string);
    * bare ``sip:a@b;tag=x``: the parameters after a bare URI are header parameters, and such a
      URI may not contain ``,`` ``;`` or ``?`` (section 20.10; RFC 4475 section 3.1.2.13).

    The URI may use any scheme (RFC 4475 section 3.3.4); non-SIP ones are kept opaque.
    """
    s = text.strip(_WS)
    if not s:
        raise _bad("Empty address")
    display: str | None = None
    if s[0] == '"':
        end = quoted_end(s, 0)
        display = unquote_string(s[:end])
        i = skip_ws(s, end)
        if i >= len(s) or s[i] != "<":
            raise _bad("Display name without <URI>")
        uri_start = i + 1
    else:
        lt = s.find("<")
        if lt == 0:                         # no display name (the usual From and To)
            uri_start = 1
        elif lt > 0:
            words = s[:lt].split()
            if not all(is_token(w) for w in words):
                raise _bad("Malformed display name")
            display = " ".join(words) or None
            uri_start = lt + 1
        else:
            uri_start = -1
    if uri_start >= 0:
        gt = s.find(">", uri_start)
        if gt < 0:
            raise _bad("Missing '>' in address")
        uri = parse_uri(s[uri_start:gt], any_scheme=True)
        rest = s[gt + 1:]
    else:
        end = 0
        while end < len(s) and s[end] not in " \t;":
            end += 1
        uri_text = s[:end]
        if "," in uri_text or "?" in uri_text:
            raise _bad("Address with ',' or '?' must be enclosed in <>")
        uri = parse_uri(uri_text, any_scheme=True)
        rest = s[end:]
    params = parse_params(rest, what="address")
    return NameAddr(display, uri, FrozenParams(params) if params else _NO_PARAMS)
