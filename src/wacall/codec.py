"""The one JSON codec: compact, UTF-8, the way Graph writes it; webhook bodies escaped the way Meta signs them."""

from __future__ import annotations

import json
from typing import Any


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


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
