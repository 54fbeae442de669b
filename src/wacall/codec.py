"""The one JSON codec: compact, UTF-8, the way Graph writes it; webhook bodies escaped the way Meta signs them."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


LONG = 256                      # strings at least this long are encoded once (see dumps_fields)
_long: dict[str, str] = {}      # a long string -> its JSON (bounded: cleared when full)
_LONG_KEPT = 2048


def dumps_fields(fields: dict[str, Any]) -> str:
    """``dumps`` of a record's fields (a fresh dict the caller gives away: it is changed; its keys are field
    names, identifiers with nothing to escape), with the JSON of each long string value remembered: a call
    is saved with each of its changes, and its SDPs (most of its bytes, and of the escaping) stay the same
    from its first save to its last. Same JSON value as ``dumps(fields)``; the long fields come last."""
    long = [(name, value) for name, value in fields.items() if type(value) is str and len(value) >= LONG]
    if not long:
        return dumps(fields)
    for name, _ in long:
        del fields[name]
    parts = [dumps(fields)[:-1]]
    sep = "," if len(parts[0]) > 1 else ""
    for name, value in long:
        encoded = _long.get(value)
        if encoded is None:
            if len(_long) >= _LONG_KEPT:
                _long.clear()
            encoded = _long[value] = dumps(value)
        parts.append(f'{sep}"{name}":{encoded}')      # a dataclass field's name: nothing to escape
        sep = ","
    parts.append("}")
    return "".join(parts)


def dump_bytes(value: Any) -> bytes:
    try:
        return dumps(value).encode("utf-8")
    except UnicodeEncodeError:   # a lone surrogate (a client's \ud800 echoed back): keep it escaped
        return dump_escaped(value)


def dump_escaped(value: Any) -> bytes:
    """Compact JSON with every non-ASCII character escaped as ``\\uXXXX`` in lowercase hex (astral
    characters as a surrogate pair), so the bytes are ASCII: the form Meta signs webhook payloads in
    ("an escaped unicode version of the payload, with lowercase hex digits")."""
    return json.dumps(value, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def loads(data: str | bytes) -> Any:
    return json.loads(data)


JSONDecodeError = json.JSONDecodeError
