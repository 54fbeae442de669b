"""SIP messages: parse, serialise, frame on streams, and build responses (RFC 3261 section 7, 8, 18, 20).

* :func:`parse_message` turns one complete message (a datagram, or what :class:`StreamFramer`
  cut from a TLS/TCP stream) into a :class:`Request` or :class:`Response`, or raises
  :class:`SipParseError` whose ``status``/``reason`` are what to answer a request with.
  It is strict where RFC 3261 and RFC 4475 section 3.1.2 require rejecting (missing mandatory
  headers, CSeq problems, bad start line, bad Request-URI, Content-Length mismatches) and tolerant
  where RFC 4475 section 3.1.1 requires accepting (folding, odd whitespace and case, compact
  names, unknown headers and parameters, escapes, long values).
* :class:`Headers` keeps header fields in order with their values unfolded but otherwise verbatim;
  compact names (section 7.3.3) are expanded. :meth:`Headers.get_all` splits comma lists.
* ``to_bytes()`` renders with CRLF line ends and a Content-Length equal to the body length.
* :func:`response_to` builds a response per section 8.2.6.

Text is decoded as UTF-8 with ``surrogateescape``: arbitrary octets in header values survive a
parse/serialise round trip unchanged.
"""

from __future__ import annotations

import operator
import re
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from typing import Final

from .randomness import token_hex
from .uri import (
    FrozenParams,
    NameAddr,
    SipParseError,
    SipUri,
    _addr_memo,
    _load_compiled,
    has_param,
    is_digits,
    is_token,
    param,
    parse_name_addr,
    parse_params,
    parse_uri,
    remember,
    render_params,
    split_shared,
)

__all__ = [
    "PING",
    "REASONS",
    "Headers",
    "Request",
    "Response",
    "SipParseError",
    "StreamFramer",
    "Via",
    "new_branch",
    "new_call_id",
    "new_tag",
    "parse_message",
    "parse_via",
    "response_to",
]

#: RFC 3261 section 21 (and RFC 3262/3311/3326 where noted) reason phrases.
REASONS: Final[dict[int, str]] = {
    100: "Trying",
    180: "Ringing",
    181: "Call Is Being Forwarded",
    182: "Queued",
    183: "Session Progress",
    200: "OK",
    202: "Accepted",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    406: "Not Acceptable",
    407: "Proxy Authentication Required",
    408: "Request Timeout",
    413: "Request Entity Too Large",
    415: "Unsupported Media Type",
    416: "Unsupported URI Scheme",
    420: "Bad Extension",
    421: "Extension Required",
    480: "Temporarily Unavailable",
    481: "Call/Transaction Does Not Exist",
    482: "Loop Detected",
    483: "Too Many Hops",
    484: "Address Incomplete",
    486: "Busy Here",
    487: "Request Terminated",
    488: "Not Acceptable Here",
    491: "Request Pending",
    500: "Server Internal Error",
    501: "Not Implemented",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Server Time-out",
    505: "Version Not Supported",
    513: "Message Too Large",
    600: "Busy Everywhere",
    603: "Decline",
}

SIP_VERSION: Final = "SIP/2.0"
CRLF: Final = "\r\n"

# --- header names ------------------------------------------------------------------------------

#: Compact forms, RFC 3261 section 7.3.3 / 20 and the RFCs named in the brief (3265, 3515, 4028).
COMPACT: Final[dict[str, str]] = {
    "i": "Call-ID",
    "m": "Contact",
    "e": "Content-Encoding",
    "l": "Content-Length",
    "c": "Content-Type",
    "f": "From",
    "s": "Subject",
    "k": "Supported",
    "t": "To",
    "v": "Via",
    "o": "Event",
    "r": "Refer-To",
    "u": "Allow-Events",
    "x": "Session-Expires",
}

_KNOWN_NAMES = [
    "Accept", "Accept-Encoding", "Accept-Language", "Alert-Info", "Allow", "Allow-Events",
    "Authentication-Info", "Authorization", "Call-ID", "Call-Info", "Contact", "Content-Disposition",
    "Content-Encoding", "Content-Language", "Content-Length", "Content-Type", "CSeq", "Date",
    "Error-Info", "Event", "Expires", "From", "In-Reply-To", "Max-Forwards", "Min-Expires",
    "Min-SE", "MIME-Version", "Organization", "Path", "Priority", "Proxy-Authenticate",
    "Proxy-Authorization", "Proxy-Require", "RAck", "Reason", "Record-Route", "Refer-To",
    "Referred-By", "Reply-To", "Require", "Retry-After", "Route", "RSeq", "Server",
    "Service-Route", "Session-Expires", "Subject", "Subscription-State", "Supported",
    "Timestamp", "To", "Unsupported", "User-Agent", "Via", "Warning", "WWW-Authenticate",
    "P-Asserted-Identity", "P-Preferred-Identity", "Privacy",
]
_CANONICAL: Final[dict[str, str]] = {n.lower(): n for n in _KNOWN_NAMES} | COMPACT
_KNOWN_SPELLINGS: Final[frozenset[str]] = frozenset(_KNOWN_NAMES)     # tokens: no need to check them again

#: Headers whose grammar is a comma-separated list (section 7.3.1); others are never split
#: (WWW-Authenticate, Authorization, Date, unknown headers ... contain commas of their own).
LIST_HEADERS: Final[frozenset[str]] = frozenset({
    "accept", "accept-encoding", "accept-language", "alert-info", "allow", "allow-events",
    "call-info", "contact", "content-encoding", "content-language", "error-info", "in-reply-to",
    "path", "proxy-require", "reason", "record-route", "require", "route", "service-route",
    "supported", "unsupported", "via", "warning", "p-asserted-identity", "p-preferred-identity",
})


def _checked(name: str, value: str) -> tuple[str, str]:
    """Canonical name, after refusing what would corrupt the wire form (header injection)."""
    canonical = _CANONICAL_OF.get(name)
    if canonical is None:                 # a spelling not seen yet: check it once (the memo keeps tokens only)
        if name not in _KNOWN_SPELLINGS and not is_token(name):
            raise ValueError(f"invalid header name {name!r}")
        canonical = _CANONICAL_OF[name]
    if "\r" in value or "\n" in value:
        raise ValueError(f"CR/LF in the value of {name}")
    return canonical, value


class _Canonical(dict):
    """Header name as written -> canonical name (a memo over :func:`canonical_name`, bounded)."""

    def __missing__(self, name: str) -> str:
        canonical = _CANONICAL.get(name.lower(), name)
        if len(self) < 4096:
            self[name] = canonical
        return canonical


_CANONICAL_OF = _Canonical()


def canonical_name(name: str) -> str:
    """Expand a compact form and give well-known names their usual spelling; others stay as given."""
    return _CANONICAL.get(name.lower(), name)


_NAME_OF = operator.itemgetter(0)
class _Lowered(dict):
    """Header name as written -> its canonical name lower-cased (a memo, bounded): ``_LOWER[name]``."""

    def __missing__(self, name: str) -> str:
        low = canonical_name(name).lower()
        if len(self) < 4096:
            self[name] = low
        return low


_LOWER = _Lowered()
_NONE: tuple[str, ...] = ()
#: a Headers made without __init__ (~1 k instructions less), for the parser and response_to, which set its three
#: slots themselves (_items, _index, _version: see Headers.__init__)
_new_headers = object.__new__


def _lower(name: str) -> str:
    return _LOWER[name]


class Headers:
    """Ordered multi-map of header fields with case-insensitive names (RFC 3261 section 7.3).

    Iteration yields ``(name, value)`` in message order. :meth:`get` returns the first header
    field's whole value; :meth:`get_all` returns every value, with the list headers
    (:data:`LIST_HEADERS`: Via, Route, Record-Route, Contact, Allow, ...) split at top-level commas,
    so each element is one value. A field's name is kept canonical (:func:`canonical_name`) whichever way it
    came in (parsed, added, set): rendering and :func:`response_to` rely on it.
    """

    __slots__ = ("_items", "_index", "_version")

    def __init__(self, items: Iterable[tuple[str, str]] = ()) -> None:
        self._items: list[tuple[str, str]] = []
        # lower-case name -> its values, built on first lookup; tuples of str, which the cyclic collector stops
        # tracking: an INVITE kept by its transaction for 64*T1 (RFC 6026 Accepted) adds no lists to scan
        self._index: dict[str, tuple[str, ...]] | None = None
        self._version = 0                                  # counts changes (a message's rendering is kept per version)
        for name, value in items:
            self.add(name, value)

    def _values(self, name: str) -> tuple[str, ...]:
        """The values of ``name`` in order, from the index (rebuilt after any change): a lookup is a dict
        access, not a scan of every field (the gateway looks up ~100 header values per call)."""
        index = self._index
        if index is None:
            index = self._indexed()
        return index.get(_LOWER[name], _NONE)

    def _indexed(self) -> dict[str, tuple[str, ...]]:
        """The index: lower-case canonical name -> values (see :meth:`_values`), built now."""
        index = self._index = {}
        lowered = _LOWER
        several: dict[str, list[str]] = {}      # names with more than one field: collected in lists
        for n, v in self._items:
            low = lowered[n]
            values = index.get(low)
            if values is None:
                index[low] = (v,)
            elif low in several:
                several[low].append(v)
            else:
                several[low] = [*values, v]
        for low, collected in several.items():
            index[low] = tuple(collected)
        return index

    def get(self, name: str, default: str | None = None) -> str | None:
        """The value of the first header field called ``name``, or ``default``."""
        index = self._index                             # _values inline: the most frequent header access
        values = (self._indexed() if index is None else index).get(_LOWER[name])
        return values[0] if values else default

    def get_all(self, name: str) -> list[str]:
        """All values of ``name`` in order; list headers are split into one value per element."""
        values = self._values(name)
        if not values:                  # (Record-Route, Route: mostly absent) no list comprehension to run
            return []
        if _LOWER[name] in LIST_HEADERS:
            return [e for v in values for e in split_shared(v)]
        return list(values)

    def add(self, name: str, value: str) -> None:
        """Append a header field (after all others). CR/LF in ``value`` raises ValueError."""
        self._items.append(_checked(name, value))
        self._index = None
        self._version += 1

    def prepend(self, name: str, value: str) -> None:
        """Insert ``name`` before the first field of that name, or first of all (a proxy's Via)."""
        name, value = _checked(name, value)
        self._index = None
        self._version += 1
        low = name.lower()
        for i, (n, _) in enumerate(self._items):
            if n.lower() == low:
                self._items.insert(i, (name, value))
                return
        self._items.insert(0, (name, value))

    def set(self, name: str, value: str) -> None:
        """Replace every field called ``name`` by one, at the position of the first (else append)."""
        name, value = _checked(name, value)
        self._index = None
        self._version += 1
        low = name.lower()
        for i, (n, _) in enumerate(self._items):
            if n.lower() == low:
                self._items[i] = (name, value)
                self._items[i + 1:] = [(n2, v2) for n2, v2 in self._items[i + 1:] if n2.lower() != low]
                return
        self._items.append((name, value))

    def replace_first(self, name: str, value: str) -> None:
        """Replace the value of the first field called ``name`` in place, keeping its spelling and position
        (append one if there is none)."""
        checked_name, value = _checked(name, value)
        low = checked_name.lower()
        for i, (n, _) in enumerate(self._items):
            if _LOWER[n] == low:
                self._items[i] = (n, value)
                self._version += 1
                index = self._index
                if index is not None:      # the first value of that name changes: the index stays good
                    values = index[low]
                    index[low] = (value, *values[1:])
                return
        self.add(checked_name, value)

    def remove(self, name: str) -> None:
        """Remove every field called ``name`` (no error if there is none)."""
        low = canonical_name(name).lower()
        self._items = [(n, v) for n, v in self._items if n.lower() != low]
        self._index = None
        self._version += 1

    def copy(self) -> Headers:
        new = Headers()
        new._items = list(self._items)
        return new

    def __contains__(self, name: object) -> bool:
        return isinstance(name, str) and self.get(name) is not None

    def __iter__(self) -> Iterator[tuple[str, str]]:
        return iter(list(self._items))

    def __len__(self) -> int:
        return len(self._items)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Headers) and self._items == other._items

    def __repr__(self) -> str:
        return f"Headers({self._items!r})"


# --- Via ---------------------------------------------------------------------------------------

_VIA_RE = re.compile(
    r"[ \t]*(?P<proto>[A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/[ \t]*(?P<ver>[A-Za-z0-9\-.!%*_+`'~]+)[ \t]*/"
    r"[ \t]*(?P<transport>[A-Za-z0-9\-.!%*_+`'~]+)[ \t]+"
    r"(?P<host>\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?:[ \t]*:[ \t]*(?P<port>[0-9]{1,5}))?"
)


@dataclass
class Via:
    """One via-parm: ``SIP/2.0/TLS host:port;branch=z9hG4bK...`` (RFC 3261 section 20.42, 18.2.1)."""

    transport: str
    host: str
    port: int | None = None
    params: dict[str, str | None] = field(default_factory=dict)
    #: the text ``str(self)`` renders, when parsed from exactly that (see :func:`is_canonical_via`), else None
    _canonical: str | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def branch(self) -> str | None:
        return param(self.params, "branch")

    @property
    def received(self) -> str | None:
        return param(self.params, "received")

    @property
    def rport(self) -> int | None:
        """The ``rport`` value filled in by the server (RFC 3581 section 4), or None."""
        value = param(self.params, "rport")
        return int(value) if value and is_digits(value) else None

    @property
    def wants_rport(self) -> bool:
        """True if the client asked for ``rport`` (valueless parameter present, RFC 3581 section 3)."""
        return has_param(self.params, "rport")

    def __str__(self) -> str:
        port = "" if self.port is None else f":{self.port}"
        return f"{SIP_VERSION}/{self.transport} {self.host}{port}{render_params(self.params)}"


_via_memo: dict[str, Via] = {}


def parse_via(text: str) -> Via:
    """Parse one via-parm; whitespace is allowed around ``/``, ``:`` and ``;`` (RFC 4475 3.1.1.1).
    Memoised by text like the URI parsers (``uri.memoised``), and shared like theirs: its ``params`` are
    read-only (``FrozenParams``); build a new :class:`Via` from ``dict(via.params)`` to change one."""
    known = _via_memo.get(text)
    return known if known is not None else remember(_via_memo, text, text, _parse_via(text))


#: the form every sender writes (``SIP/2.0/TLS host:port;branch=...;rport``: no whitespace, no quoted value):
#: read by one full match and a split, the same result as :func:`_parse_via_general` (the reference, which
#: takes everything else: whitespace, quoted values, errors; tests/test_sip_message.py compares the two)
_VIA_PLAIN_RE = re.compile(
    r"SIP/2\.0/([A-Za-z0-9\-.!%*_+`'~]+) (\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9_.\-]+)(?::([0-9]{1,5}))?"
    r"((?:;[A-Za-z0-9\-.!%*_+`'~]+(?:=[A-Za-z0-9\-.!%*_+`'~:\[\]]+)?)*)\Z"
)


def remember_via(text: str, via: Via) -> None:
    """Keep ``via`` (read-only ``params``) as what ``parse_via(text)`` returns: for a Via built here whose
    text the layers above will read again (the transport's ``received``/``rport``, RFC 3261 section 18.2.1)."""
    if text not in _via_memo:
        remember(_via_memo, text, text, via)


def is_canonical_via(text: str, via: Via) -> bool:
    """True if ``str(via)`` is ``text`` itself, for ``via = parse_via(text)`` (a stamp may then splice into the
    text instead of rendering the Via): known from the parse, see :func:`_parse_via`."""
    return via._canonical == text


#: the same plain form cut into its pieces in C (sipscan.c), or None (WACALL_SIPSCAN=0, not built)
_VIA_C = _load_compiled("via")
#: a plain Via's host, port, branch and canonical flag, read in C without a Via made (sipscan.c via_facts), or
#: None (the transaction layer's key and the transport's rport splice)
VIA_FACTS = _load_compiled("via_facts")


def _parse_via(text: str) -> Via:
    got = _VIA_C(text) if _VIA_C is not None else None
    if got is not None:
        transport, host, port, params, canonical = got
        via = Via(transport, host, port, FrozenParams(params))
        if canonical:
            via._canonical = text
        return via
    return _parse_via_python(text)


def _parse_via_python(text: str) -> Via:
    m = _VIA_PLAIN_RE.match(text)
    if m is None:
        return _parse_via_general(text)
    transport, host, port_text, param_text = m.groups()
    port = int(port_text) if port_text else None
    if port is not None and port > 65535:
        raise SipParseError("Bad Request - Malformed Via port")
    params: dict[str, str | None] = {}
    if param_text:
        items = param_text[1:].split(";")
        for item in items:
            name, eq, value = item.partition("=")
            params[name] = value if eq else None
    else:
        items = ()
    via = Via(transport, host, port, FrozenParams(params))
    if len(params) == len(items) and (port_text is None or port_text[0] != "0" or port_text == "0"):
        via._canonical = text         # the port in plain digits, no parameter twice: str(via) is the text
    return via


def _parse_via_general(text: str) -> Via:
    m = _VIA_RE.match(text)
    if not m:
        raise SipParseError("Bad Request - Malformed Via")
    if m["proto"].upper() != "SIP" or m["ver"] != "2.0":
        raise SipParseError("Bad Request - Unsupported Via protocol")
    port = int(m["port"]) if m["port"] else None
    if port is not None and port > 65535:
        raise SipParseError("Bad Request - Malformed Via port")
    return Via(m["transport"], m["host"], port, FrozenParams(parse_params(text[m.end():], what="Via")))


# --- messages ----------------------------------------------------------------------------------

#: Methods of RFC 3261 and its extensions (3262, 3265, 3311, 3428, 3515, 3903, 6086).
KNOWN_METHODS: Final[frozenset[str]] = frozenset({
    "INVITE", "ACK", "BYE", "CANCEL", "OPTIONS", "REGISTER", "PRACK", "SUBSCRIBE", "NOTIFY",
    "PUBLISH", "INFO", "REFER", "MESSAGE", "UPDATE",
})

_CSEQ_RE = re.compile(r"([0-9]+)[ \t]+([A-Za-z0-9\-.!%*_+`'~]+)\Z")
_MAX_CSEQ: Final = 2**31 - 1  # RFC 3261 section 8.1.1.5: "MUST be less than 2**31"


class _Message:
    """Accessors shared by requests and responses (fields ``headers`` and ``body``)."""

    headers: Headers
    body: bytes

    def _single(self, key: str) -> str:
        """The first value of the field whose lower-case canonical name is ``key`` (read from the index inline, not
        through Headers._values: the layers above read Call-ID, CSeq, From and To ~20 times per call)."""
        headers = self.headers
        index = headers._index
        values = (headers._indexed() if index is None else index).get(key)
        if not values:
            raise SipParseError(f"Bad Request - Missing {canonical_name(key)}")
        return values[0]

    @property
    def call_id(self) -> str:
        return self._single("call-id")

    @property
    def cseq(self) -> tuple[int, str]:
        """``(sequence number, method)`` from CSeq (section 20.16)."""
        text = self._single("cseq")
        known = _cseq_memo.get(text)                    # _cseq's memo read inline
        number, method = _cseq(text) if known is None else known
        if number is None:
            raise SipParseError("Bad Request - Malformed CSeq")
        return number, method  # type: ignore[return-value]

    @property
    def from_(self) -> NameAddr:
        text = self._single("from")
        return _addr_memo.get(text) or parse_name_addr(text)

    @property
    def to(self) -> NameAddr:
        text = self._single("to")
        return _addr_memo.get(text) or parse_name_addr(text)

    @property
    def vias(self) -> list[Via]:
        """All Via elements, topmost first."""
        return [parse_via(v) for v in self.headers.get_all("Via")]

    def _top_via_text(self) -> str | None:
        """The first Via element, splitting only the fields up to the one that holds it."""
        for value in self.headers._values("Via"):
            if "," not in value:                    # split_shared's own shortcut, without the call
                value = value.strip(" \t")
                if value:
                    return value
                continue
            elements = split_shared(value)
            if elements:
                return elements[0]
        return None

    @property
    def top_via(self) -> Via:
        index = self.headers._index
        values = index.get("via") if index is not None else None
        if values:
            text = values[0]
            if "," not in text and text and text[0] not in " \t" and text[-1] not in " \t":
                # the usual first Via field: one element, as the parsers leave it (_top_via_text inline)
                return _via_memo.get(text) or parse_via(text)
        text = self._top_via_text()
        if text is None:
            raise SipParseError("Bad Request - Missing Via")
        return _via_memo.get(text) or parse_via(text)

    @property
    def branch(self) -> str | None:
        """The branch parameter of the top Via, or None (no Via, or no branch)."""
        text = self._top_via_text()
        return (_via_memo.get(text) or parse_via(text)).branch if text is not None else None

    @property
    def content_type(self) -> str | None:
        return self.headers.get("Content-Type")

    def name_addrs(self, name: str) -> list[NameAddr]:
        """Every element of a name-addr list header (Contact, Route, Record-Route) parsed.

        ``Contact: *`` (section 10.2.2) is not a name-addr: check ``headers.get("Contact")`` first.
        """
        return [parse_name_addr(v) for v in self.headers.get_all(name)]

    def replace_first(self, name: str, value: str) -> None:
        """``headers.replace_first`` that keeps the wire form already rendered (or received) by splicing the one
        field in: the transport stamps the top Via of every request it receives (RFC 3261 section 18.2.1),
        and the call's timeline shows that request with the stamp; rendering it whole again cost more."""
        headers = self.headers
        version = headers._version
        olds = headers._values(name)
        headers.replace_first(name, value)
        kept = self._wire
        if kept is None or not olds or kept[1] is not headers or kept[2] != version or kept[3] is not self.body:
            return
        # the kept octets are exactly the rendered fields: the first "\r\n<Name>: <old>\r\n" is the first field
        # of that name (a value holds no CR/LF, the header block comes before the body)
        canonical = _CANONICAL_OF[name]
        spliced = kept[4].replace(f"\r\n{canonical}: {olds[0]}\r\n".encode("utf-8", "surrogateescape"),
                                  f"\r\n{canonical}: {value}\r\n".encode("utf-8", "surrogateescape"), 1)
        self._wire = (kept[0], headers, headers._version, self.body, spliced)

    def _render(self, start_line: str) -> bytes:
        """The wire form, rendered once per content: a message is rendered for its transport and for the call's
        timeline (and a 2xx again for each retransmission), so the bytes are kept while the start line, the
        headers (their version) and the body stay the same."""
        headers, body = self.headers, self.body
        kept = self._wire
        if (kept is not None and kept[1] is headers and kept[2] == headers._version and kept[3] is body
                and kept[0] == start_line):
            return kept[4]
        data = self._render_now(start_line)
        self._wire = (start_line, headers, headers._version, body, data)
        return data

    def _render_now(self, start_line: str) -> bytes:
        items, body = self.headers._items, self.body
        if _RENDER is not None:
            data = _RENDER(start_line, items, body)      # the same octets, made in C (None: not all ASCII, ...)
            if data is not None:
                return data
        return self._render_in_python(start_line)

    def _render_in_python(self, start_line: str) -> bytes:
        """:meth:`_render_now` in Python: the reference of the compiled ``_sipscan.render``, and the way of text
        it declines (non-ASCII octets, Content-Length fields to fix); tests/test_sip_message.py compares them."""
        items, body = self.headers._items, self.body
        head = CRLF.join([start_line, *map(": ".join, items), ""])       # the joins in C: no Python step per field
        # no Content-Length field: the usual message, told by one search of the head. Every way of filling a
        # Headers gives a field its canonical name ("l", "content-length" -> "Content-Length") and no value holds
        # a CR or LF, so such a field shows as this exact text after the CRLF that ends the field before it
        if "\r\nContent-Length: " not in head:
            return f"{head}Content-Length: {len(body)}\r\n\r\n".encode("utf-8", "surrogateescape") + body
        names = list(map(_NAME_OF, items))
        if names.count("Content-Length") == 1 and items[names.index("Content-Length")][1] == str(len(body)):
            return (head + CRLF).encode("utf-8", "surrogateescape") + body
        return self._render_fixing_length(start_line)

    def _render_fixing_length(self, start_line: str) -> bytes:
        """:meth:`_render_now` where the Content-Length fields must change: one, equal to the body's length."""
        lines = [start_line]
        wrote_length = False
        for name, value in self.headers:
            if name.lower() == "content-length":
                if wrote_length:
                    continue
                value, wrote_length = str(len(self.body)), True
            lines.append(f"{name}: {value}")
        if not wrote_length:
            lines.append(f"Content-Length: {len(self.body)}")
        head = CRLF.join(lines) + CRLF + CRLF
        return head.encode("utf-8", "surrogateescape") + self.body


@dataclass
class Request(_Message):
    """A SIP request (RFC 3261 section 7.1). ``uri`` is the Request-URI text as received."""

    method: str
    uri: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    #: the wire form last rendered (or received): (start line, headers, their version, body, octets)
    _wire: tuple[str, Headers, int, bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def ruri(self) -> SipUri:
        """The parsed Request-URI. A non-SIP scheme comes back opaque (``is_sip`` False: answer 416)."""
        return parse_uri(self.uri, any_scheme=True)

    @property
    def max_forwards(self) -> int | None:
        value = self.headers.get("Max-Forwards")
        return int(value) if value is not None and is_digits(value.strip()) else None

    def to_bytes(self) -> bytes:
        """Wire form: CRLF line ends, full header names, Content-Length = len(body)."""
        return self._render(f"{self.method} {self.uri} {SIP_VERSION}")


@dataclass
class Response(_Message):
    """A SIP response (RFC 3261 section 7.2)."""

    status: int
    reason: str
    headers: Headers = field(default_factory=Headers)
    body: bytes = b""
    #: the wire form last rendered (or received): (start line, headers, their version, body, octets)
    _wire: tuple[str, Headers, int, bytes, bytes] | None = field(default=None, init=False, repr=False, compare=False)

    def to_bytes(self) -> bytes:
        """Wire form: CRLF line ends, full header names, Content-Length = len(body)."""
        return self._render(f"{SIP_VERSION} {self.status} {self.reason}")


# --- parsing -----------------------------------------------------------------------------------

_METHOD_RE = re.compile(r"[A-Za-z0-9\-.!%*_+`'~]+\Z")
_VERSION_RE = re.compile(r"SIP/([0-9]+)\.([0-9]+)\Z", re.IGNORECASE)
_HEADER_END_RE = re.compile(rb"\r?\n\r?\n")
_OPAQUE_URI_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*:[^\s<>\"]+\Z")


def _bad(detail: str, message: Request | Response | None = None) -> SipParseError:
    err = SipParseError(f"Bad Request - {detail}")
    err.message = message
    return err


def _split_head(data: bytes) -> tuple[bytes, bytes]:
    """Split at the empty line; leading CRLFs are ignored (section 7.5)."""
    data = data.lstrip(b"\r\n")
    m = _HEADER_END_RE.search(data)
    if not m:
        raise _bad("Missing empty line after headers")
    return data[: m.start()], data[m.end():]


_LINE_RE = re.compile(r"\r?\n")
_TOKEN_NAMES: set[str] = set()   # header names as written that are tokens (a memo: the same ~15 names every message)


def _header_lines(head: str) -> tuple[str, list[tuple[str, str]]]:
    """Start line plus unfolded ``(name, value)`` pairs (section 7.3.1: LWS folding)."""
    raw = _LINE_RE.split(head)
    start, rest = raw[0], raw[1:]
    fields: list[tuple[str, str]] = []
    tokens = _TOKEN_NAMES
    for line in rest:
        if "\r" in line:
            raise _bad("Bare CR in header line")
        if line[:1] in (" ", "\t"):
            if not fields:
                raise _bad("Continuation line before any header")
            name, value = fields[-1]
            folded = line.strip(" \t")
            fields[-1] = (name, f"{value} {folded}" if value else folded)
            continue
        name, colon, value = line.partition(":")
        name = name.rstrip(" \t")
        if name not in tokens:
            if not colon or not is_token(name):
                raise _bad("Malformed header line")
            if len(tokens) < 4096:
                tokens.add(name)
        elif not colon:
            raise _bad("Malformed header line")
        fields.append((name, value.strip(" \t")))
    return start, fields


def _content_length(headers: Headers) -> int | None:
    """The Content-Length, None if absent; several equal values are tolerated (RFC 4475 3.3.9)."""
    values = {v.strip() for raw in headers.get_all("Content-Length") for v in raw.split(",")}
    if not values:
        return None
    if len(values) > 1:
        raise _bad("Conflicting Content-Length")
    (text,) = values
    if not is_digits(text):
        raise _bad("Malformed Content-Length")
    return int(text)


_START_MEMO: dict[str, tuple[int, str] | tuple[str, str]] = {}   # start line -> its checked parts (a memo, bounded)


def _parse_start(start: str, headers: Headers) -> Request | Response:
    """The message the start line makes (a Request or a Response), after its checks; a start line already seen
    (every request of a call to the same user, every 200 OK) is not checked again."""
    known = _START_MEMO.get(start)
    if known is None:
        msg = _check_start(start, headers)
        if len(start) <= 512:
            if len(_START_MEMO) >= 4096:
                _START_MEMO.clear()
            _START_MEMO[start] = (msg.status, msg.reason) if isinstance(msg, Response) else (msg.method, msg.uri)
        return msg
    a, b = known
    return Response(a, b, headers) if type(a) is int else Request(a, b, headers)  # type: ignore[arg-type]


def _check_start(start: str, headers: Headers) -> Request | Response:
    if start.upper().startswith("SIP/"):
        parts = start.split(" ", 2)
        if len(parts) < 2:
            raise _bad("Malformed Status-Line")
        version, code = parts[0], parts[1]
        reason = parts[2] if len(parts) == 3 else ""
        _check_version(version)
        if len(code) != 3 or not is_digits(code) or not 100 <= int(code) <= 699:
            raise _bad("Malformed status code")
        return Response(int(code), reason, headers)
    parts = start.split(" ")
    if len(parts) != 3 or not all(parts):
        raise _bad("Malformed Request-Line")
    method, uri, version = parts
    if not _METHOD_RE.match(method):
        raise _bad("Malformed method")
    _check_version(version)
    scheme = uri.split(":", 1)[0].lower()
    if scheme in ("sip", "sips"):
        ruri = parse_uri(uri)
        if ruri.headers:  # RFC 3261 section 19.1.1 table; RFC 4475 section 3.1.2.11
            raise _bad("Headers not allowed in Request-URI")
    elif not _OPAQUE_URI_RE.match(uri):
        raise _bad("Malformed Request-URI")
    return Request(method, uri, headers)


def _check_version(version: str) -> None:
    m = _VERSION_RE.match(version)
    if not m:
        raise _bad("Malformed SIP version")
    if (int(m[1]), int(m[2])) != (2, 0):
        raise SipParseError("Version Not Supported", status=505)


def _check_fields(msg: Request | Response) -> None:
    """Mandatory headers and their syntax (sections 8.1.1, 8.2.2, 20; RFC 4475 section 3.1.2): the usual message's
    checked in C (``_sipscan.fields_checked``), which leaves Python only the From, To, Via or Contact values its
    memos have not seen to parse; :func:`_check_fields_in_python` is the reference and takes everything else."""
    h = msg.headers
    index = h._index
    if index is None:
        index = h._indexed()                            # the lookups below are dict accesses
    if _FIELDS_CHECKED is not None:
        missing = _FIELDS_CHECKED(index, msg.method if isinstance(msg, Request) else None, _addr_memo, _via_memo)
        if missing is not None:
            if missing:
                _parse_unseen(msg, index, missing)
            return
    _check_fields_in_python(msg, index)


def _parse_unseen(msg: Request | Response, index: dict[str, tuple[str, ...]], missing: int) -> None:
    """The values ``fields_checked`` found in no memo parsed, in the reference's order, with its errors (bits: 1
    From, 2 To, 4 Via, 8 Contact; each the one element of its one field)."""
    if missing & 1:
        _check_address(index["from"][0], "From", msg)
    if missing & 2:
        _check_address(index["to"][0], "To", msg)
    if missing & 4:
        try:
            parse_via(index["via"][0])
        except SipParseError:
            raise _bad("Malformed Via", msg) from None
    if missing & 8:
        try:
            parse_name_addr(index["contact"][0])
        except SipParseError:
            raise _bad("Malformed Contact", msg) from None


def _check_fields_in_python(msg: Request | Response, index: dict[str, tuple[str, ...]]) -> None:
    """:func:`_check_fields` in Python: the reference of ``_sipscan.fields_checked`` (tests/test_sip_scan.py compares
    them), and the way of every message it declines."""
    try:       # one field each (not list headers: their fields are their values); else the first problem
        (to,), (from_,), (call_id,), (cseq,) = index["to"], index["from"], index["call-id"], index["cseq"]
    except (KeyError, ValueError):
        for low, name in (("to", "To"), ("from", "From"), ("call-id", "Call-ID"), ("cseq", "CSeq")):
            count = len(index.get(low, _NONE))
            if count == 0:
                raise _bad(f"Missing {name}", msg) from None
            if count > 1:
                raise _bad(f"Multiple {name}", msg) from None
        raise
    vias = index.get("via", _NONE)
    via_texts = split_shared(vias[0]) if len(vias) == 1 else [e for v in vias for e in split_shared(v)]
    if not via_texts:
        raise _bad("Missing Via", msg)
    if not call_id or " " in call_id or "\t" in call_id:
        raise _bad("Malformed Call-ID", msg)
    method = _cseq(cseq)[1]
    if method is None:
        raise _bad("Malformed CSeq", msg)
    if isinstance(msg, Request) and method != msg.method:
        if msg.method not in KNOWN_METHODS:  # RFC 4475 section 3.1.2.18 prefers 501 here
            err = SipParseError("Not Implemented - CSeq method does not match Request-Line", status=501)
            err.message = msg
            raise err
        raise _bad("CSeq method does not match Request-Line", msg)
    addrs = _addr_memo                                  # a value seen before parsed (the memo keeps successes)
    if from_ not in addrs:
        _check_address(from_, "From", msg)
    if to not in addrs:
        _check_address(to, "To", msg)
    try:
        for text in via_texts:
            if text not in _via_memo:
                parse_via(text)
    except SipParseError:
        raise _bad("Malformed Via", msg) from None
    contact_fields = index.get("contact")
    if contact_fields is not None:
        contacts = (split_shared(contact_fields[0]) if len(contact_fields) == 1
                    else [e for v in contact_fields for e in split_shared(v)])
        if len(contacts) != 1 or contacts[0] != "*":
            try:
                for text in contacts:
                    if text not in addrs:
                        parse_name_addr(text)
            except SipParseError:
                raise _bad("Malformed Contact", msg) from None
    mf = index.get("max-forwards")  # optional in practice (the brief tolerates its absence)
    if mf is not None and (len(mf) > 1 or mf[0] not in _PLAIN_MAX_FORWARDS and (not is_digits(mf[0])
                                                                               or int(mf[0]) > 255)):
        raise _bad("Malformed Max-Forwards", msg)


#: Max-Forwards values 0-255 as senders write them (no leading zeros): accepted without is_digits and int()
_PLAIN_MAX_FORWARDS: Final[frozenset[str]] = frozenset(map(str, range(256)))


def _check_address(value: str, name: str, msg: Request | Response) -> None:
    """From or To parsed (and memoised), or the 400 that names it."""
    try:
        parse_name_addr(value)
    except SipParseError as exc:
        raise _bad(f"Malformed {name}: {exc.reason.removeprefix('Bad Request - ')}", msg) from None


_cseq_memo: dict[str, tuple[int, str] | tuple[None, None]] = {}


def _cseq(value: str) -> tuple[int, str] | tuple[None, None]:
    """``(sequence number, method)`` of a CSeq value (section 20.16), ``(None, None)`` if malformed; memoised by
    text (the same few values in every call), bounded like the URI memos (:func:`uri.remember`)."""
    known = _cseq_memo.get(value)
    if known is None:
        m = _CSEQ_RE.match(value.strip())
        known = remember(_cseq_memo, value, value,
                         (int(m[1]), m[2]) if m and int(m[1]) <= _MAX_CSEQ else (None, None))
    return known


# --- the compiled scanner ------------------------------------------------------------------------
# ``sipscan.c`` (the CPython extension ``_sipscan``, built by setup.py at install time, like the media fast path)
# cuts a well-formed message's header block into the fields and the lookup index Headers keeps, in one pass;
# whatever it declines (non-ASCII octets, folding, bare CR, a malformed line: see ``sipscan.c``) goes through the
# Python code below, which stays the reference (tests/test_sip_scan.py runs both on the torture messages and on
# generated ones and compares).


def _load_scanner():  # type: ignore[no-untyped-def]
    scanner = _load_compiled()
    # an older build (the cffi scanner of the same name) lacks these: Python parses
    return scanner if hasattr(scanner, "scan") and hasattr(scanner, "frame_length") else None


_SCANNER = _load_scanner()
#: :meth:`_Message._render_now` in C (sipscan.c), or None (WACALL_SIPSCAN=0, an older build)
_RENDER = _load_compiled("render")
#: the usual message's :func:`_check_fields` in C (sipscan.c), or None (WACALL_SIPSCAN=0, an older build)
_FIELDS_CHECKED = _load_compiled("fields_checked")


def _scanned(data: bytes) -> tuple[str, list[tuple[str, str]], dict[str, tuple[str, ...]], bytes, int, bool] | None:
    """``(start line, fields with canonical names, their index (see Headers._index), rest after the empty line,
    Content-Length, verbatim)`` by the compiled scanner (Content-Length -1: none, -2: ask
    :func:`_content_length`; verbatim: the octets up to the body's end are what :meth:`Request.to_bytes`
    renders), or None where Python must parse."""
    return _SCANNER.scan(data)  # type: ignore[union-attr]


def parse_message(data: bytes) -> Request | Response:
    """Parse one complete SIP message (RFC 3261 section 7).

    ``data`` is a datagram or one message cut by :class:`StreamFramer`. The body is
    Content-Length octets; octets after it are ignored (section 18.3, RFC 4475 section 3.1.1.8);
    without Content-Length the body is the rest of ``data``; a Content-Length larger than what
    is there is an error (RFC 4475 section 3.1.2.2).
    """
    scanned = _SCANNER.scan(data) if _SCANNER is not None else None
    if scanned is not None:
        start, fields, index, rest, length, verbatim = scanned
        headers = _new_headers(Headers)         # (Headers() without __init__'s frame: its slots set here)
        headers._items = fields
        headers._index = index                  # what Headers._indexed builds from these fields
        headers._version = 0
        msg = _parse_start(start, headers)
        if length == -1:
            length = None
        elif length == -2:
            length = _length_of(msg)
        _finish(msg, rest, length)
        if verbatim and length is not None:     # the received octets are the wire form: not rendered again
            end = len(data) - len(rest) + length
            msg._wire = (start, headers, headers._version, msg.body, data if end == len(data) else data[:end])
        return msg
    return _parse_in_python(data)


def _parse_in_python(data: bytes) -> Request | Response:
    """:func:`parse_message` in Python only: the reference, and the path of what the scanner declines."""
    head_bytes, rest = _split_head(data)
    start, fields = _header_lines(head_bytes.decode("utf-8", "surrogateescape"))
    headers = Headers()
    # _header_lines checked every name (a token) and a line holds no CR/LF: only the names to canonicalise
    headers._items = [(_CANONICAL.get(name.lower(), name), value) for name, value in fields]
    msg = _parse_start(start, headers)
    return _finish(msg, rest, _length_of(msg))


def _length_of(msg: Request | Response) -> int | None:
    """The message's Content-Length (None: none given); a bad one raises with the parsed message attached."""
    try:
        return _content_length(msg.headers)
    except SipParseError as exc:
        exc.message = msg
        raise


def _finish(msg: Request | Response, rest: bytes, length: int | None) -> Request | Response:
    if length is None:
        msg.body = rest
    elif length > len(rest):
        raise _bad("Content-Length larger than body", msg)
    else:
        msg.body = rest[:length]
    _check_fields(msg)
    return msg


# --- stream framing ----------------------------------------------------------------------------


# A header block without folded lines (every one a sender writes): its Content-Length fields by one search of
# the bytes, instead of decoding and splitting every line (the framer runs this on every message it cuts).
_LENGTH_FIELD_RE = re.compile(rb"\n[ \t]*(?:content-length|l)[ \t]*:([^\r\n]*)", re.IGNORECASE)
_FOLDED_RE = re.compile(rb"\n[ \t]")


def _length_headers(head: bytes) -> Headers:
    """Just the Content-Length fields of a header block, found leniently (for framing only)."""
    found = Headers()
    if _FOLDED_RE.search(head) is None:
        for value in _LENGTH_FIELD_RE.findall(head):
            found.add("Content-Length", " ".join(value.decode("utf-8", "surrogateescape").split()))
        return found
    text = head.decode("utf-8", "surrogateescape")
    for line in re.split(r"\r?\n(?![ \t])", text)[1:]:  # split on CRLF not followed by folding
        name, colon, value = line.partition(":")
        if colon and name.strip(" \t").lower() in ("content-length", "l"):
            found.add("Content-Length", " ".join(value.split()))
    return found


class _Ping:
    __slots__ = ()

    def __repr__(self) -> str:
        return "PING"


#: Yielded by :meth:`StreamFramer.feed` for a double-CRLF keep-alive (RFC 5626 section 3.5.1);
#: the transport answers with a single CRLF ("pong").
PING: Final = _Ping()


#: whole messages :meth:`StreamFramer.feed` cuts from one read before handing the rest to its buffer
_CUTS_PER_READ: Final = 8


class StreamFramer:
    """Cut a TLS/TCP byte stream into messages (RFC 3261 section 18.3).

    :meth:`feed` returns, in order, raw messages (``bytes``: header block, empty line and
    Content-Length octets of body), :data:`PING` for each ``CRLFCRLF`` keep-alive, and
    :class:`SipParseError` for framing problems:

    * missing Content-Length (mandatory on streams): the error is yielded, with ``message`` set
      when the header block parses, and framing resumes treating the body as empty;
    * a header block larger than ``max_header`` (status 400), or a Content-Length that is not a
      number, conflicting, or larger than ``max_body`` (status 413), cannot be resynchronised:
      the error is yielded, the framer stops (``closed`` becomes True) and the transport should
      answer if it can and close the connection.

    A lone CRLF between messages (a keep-alive "pong") is skipped and counted in ``pongs``.
    """

    def __init__(self, *, max_header: int = 64 * 1024, max_body: int = 1024 * 1024) -> None:
        self.max_header = max_header
        self.max_body = max_body
        self.pings = 0
        self.pongs = 0
        self.closed = False
        self._buf = bytearray()
        self._scan = 0  # where to resume searching for the end of the header block

    @property
    def buffered(self) -> int:
        """Octets held of an incomplete message (0 between messages: the transport's slowloris guard asks)."""
        return len(self._buf)

    def feed(self, data: bytes) -> list[bytes | SipParseError | _Ping]:
        out: list[bytes | SipParseError | _Ping] = []
        if self.closed:
            return out
        if not self._buf and type(data) is bytes and _SCANNER is not None:
            # the usual read: whole messages with one plain Content-Length each, nothing buffered before (one, or
            # an ACK and the INVITE after it): each is cut from the read, the last is the read itself, with no
            # copy through the buffer. Whatever is left (a partial message, anything odd, the messages after the
            # first few: each cut copies the rest of the read, so a read of many small ones would cost the square of
            # its length): the steps below
            for _ in range(_CUTS_PER_READ):
                end = data.find(b"\r\n\r\n")
                if not (0 < end and end + 4 <= self.max_header and data[0] not in b"\r\n"):
                    break
                length = _SCANNER.frame_length(data, end)
                if not 0 <= length <= self.max_body:
                    break
                whole = end + 4 + length
                if whole == len(data):
                    out.append(data)
                    return out
                if whole > len(data):
                    break
                out.append(data[:whole])
                data = data[whole:]
        self._buf += data
        while self._step(out):
            pass
        return out

    def _fatal(self, out: list[bytes | SipParseError | _Ping], err: SipParseError) -> bool:
        out.append(err)
        self.closed = True
        self._buf.clear()
        return False

    def _step(self, out: list[bytes | SipParseError | _Ping]) -> bool:
        buf = self._buf
        if buf[:1] in (b"\r", b"\n"):
            if buf[:4] == b"\r\n\r\n":
                del buf[:4]
                self.pings += 1
                out.append(PING)
            elif len(buf) < 4 and b"\r\n\r\n".startswith(bytes(buf)):
                return False  # wait: this may still become a ping
            elif buf[:2] == b"\r\n":
                del buf[:2]
                self.pongs += 1
            else:
                del buf[:1]  # bare LF or stray CR before a start line (section 7.5)
            return True
        end = buf.find(b"\r\n\r\n", max(0, self._scan - 3))
        if end < 0:
            if len(buf) > self.max_header:
                return self._fatal(out, SipParseError("Bad Request - Header block too large"))
            self._scan = len(buf)
            return False
        self._scan = 0
        head_len = end + 4
        if head_len > self.max_header:
            return self._fatal(out, SipParseError("Bad Request - Header block too large"))
        head = bytes(buf[:end])
        length = _SCANNER.frame_length(head, end) if _SCANNER is not None else -1
        if length < 0:             # not the one plain Content-Length the scanner reads: Python's lenient reading
            try:
                length = _content_length(_length_headers(head))
            except SipParseError as exc:
                return self._fatal(out, exc)
        if length is None:
            raw = bytes(buf[:head_len])
            del buf[:head_len]
            err = SipParseError("Bad Request - Missing Content-Length")
            try:
                err.message = parse_message(raw)
            except SipParseError as inner:
                err.message = inner.message
            out.append(err)
            return True
        if length > self.max_body:
            return self._fatal(out, SipParseError("Request Entity Too Large", status=413))
        if len(buf) < head_len + length:
            return False
        out.append(bytes(buf[: head_len + length]))
        del buf[: head_len + length]
        return True


# --- building ----------------------------------------------------------------------------------


def response_to(
    request: Request,
    status: int,
    reason: str | None = None,
    *,
    to_tag: str | None = None,
    headers: Iterable[tuple[str, str]] = (),
    body: bytes = b"",
    content_type: str | None = None,
) -> Response:
    """Build a response to ``request`` (RFC 3261 section 8.2.6.1 and 8.2.6.2).

    Copies every Via (in order), From, To, Call-ID and CSeq; adds ``;tag=to_tag`` to To when it has
    no tag; copies Timestamp into a 100 (section 8.2.6.1). ``reason`` defaults to :data:`REASONS`.
    Extra ``headers`` follow; Content-Type is set when ``content_type`` is given. Record-Route
    copying for dialog-creating responses (section 12.1.1) is the dialog layer's job.
    """
    index = request.headers._index
    if index is None:
        index = request.headers._indexed()
    # the request's fields were checked when they were added or parsed, and their names are canonical: the copies
    # come from its index (a dict access per name), not from a scan of every field; the usual response's in C
    timestamp = status == 100
    items = (_RESPONSE_FIELDS(index, to_tag, headers, content_type, timestamp, _CANONICAL_OF)
             if _RESPONSE_FIELDS is not None else None)
    if items is None:
        items = _response_fields_in_python(index, to_tag, headers, content_type, timestamp)
    # the new Headers filled directly (its index is built on first lookup): what add() does, one field at a time,
    # without its bookkeeping (nor __init__'s frame: its slots set here)
    h = _new_headers(Headers)
    h._items = items
    h._index = None
    h._version = 0
    return Response(status, reason if reason is not None else REASONS.get(status, ""), h, body)


#: :func:`_response_fields_in_python` in C (sipscan.c: the usual response's fields in one call), or None
_RESPONSE_FIELDS = _load_compiled("response_fields")


def _response_fields_in_python(index: dict[str, tuple[str, ...]], to_tag: str | None,
                               headers: Iterable[tuple[str, str]], content_type: str | None,
                               timestamp: bool) -> list[tuple[str, str]]:
    """The fields of :func:`response_to`'s response to the request with header index ``index``: the reference of
    the compiled ``_sipscan.response_fields`` (tests/test_sip_message.py compares them), and the way of whatever
    it declines (a To that may have a tag, an extra field name not seen before, non-ASCII or CR/LF values)."""
    items = [("Via", via) for via in index.get("via", _NONE)]
    value = index.get("from")
    if value:
        items.append(("From", value[0]))
    value = index.get("to")
    if value:
        to = value[0]
        # no "tag" anywhere in the To: no tag parameter, without parsing it (the usual INVITE); else parse it
        if to_tag is not None and ("tag" not in to.lower() or parse_name_addr(to).tag is None):
            if "\r" in to_tag or "\n" in to_tag:
                raise ValueError("CR/LF in the value of To")
            to = f"{to};tag={to_tag}"
        items.append(("To", to))
    value = index.get("call-id")
    if value:
        items.append(("Call-ID", value[0]))
    value = index.get("cseq")
    if value:
        items.append(("CSeq", value[0]))
    if timestamp:
        value = index.get("timestamp")
        if value:
            items.append(("Timestamp", value[0]))
    # the extra fields checked as add() checks them (a name seen before is a token: only its value to check)
    known = _CANONICAL_OF
    for name, value in headers:
        canonical = known.get(name)
        if canonical is None or "\r" in value or "\n" in value:
            canonical, value = _checked(name, value)
        items.append((canonical, value))
    if content_type is not None:
        # the request's fields copied above are never a Content-Type: set() only when the extra fields have one
        if "Content-Type" in map(_NAME_OF, items):
            h = Headers()
            h._items = items
            h.set("Content-Type", content_type)
        else:
            items.append(_checked("Content-Type", content_type))
    return items


def new_branch() -> str:
    """A fresh RFC 3261 branch: the magic cookie ``z9hG4bK`` plus 64 random bits (section 8.1.1.7)."""
    return "z9hG4bK" + token_hex(8)


def new_tag() -> str:
    """A fresh From/To tag with 64 random bits (section 19.3 asks for at least 32)."""
    return token_hex(8)


def new_call_id(host: str) -> str:
    """A globally unique Call-ID ``<uuid4>@host`` (section 8.1.1.4)."""
    return f"{uuid.uuid4()}@{host}"
