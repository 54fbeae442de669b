"""The one JSON codec: compact, UTF-8, the way Graph writes it; webhook bodies escaped the way Meta signs them."""

from __future__ import annotations

import json
from typing import Any

try:                                   # a dependency (pyproject.toml); the standard library's encoder otherwise
    import orjson
except ImportError:                    # pragma: no cover
    orjson = None


def dumps(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


def dumps_stored(value: Any) -> bytes:
    """UTF-8 JSON for the store's own columns (records, timeline rows), read back only by :func:`loads`: the
    same value as :func:`dumps`, encoded by orjson (~6x faster on a call's document and SIP traces, which every
    commit encodes), as the bytes orjson writes (the store binds them without decoding them into a str). The
    text may differ from :func:`dumps` in form (``1e16`` for ``1e+16``), never in what :func:`loads` reads
    back; what orjson refuses (an int beyond 64 bits, a lone surrogate) goes through :func:`dump_bytes`. A dict
    key that is not a string is written as :func:`dumps` writes it, by orjson's non-string-key mode: a third
    more work per document, so only for a value that has one. Not for bytes anyone else reads or signs (Graph
    responses, webhook bodies). Stored documents hold no NaN or infinity (orjson would write ``null``)."""
    if orjson is not None:
        try:
            return orjson.dumps(value)
        except TypeError:              # (orjson.JSONEncodeError is one) a non-string key, or what orjson refuses
            pass
        try:
            return orjson.dumps(value, option=orjson.OPT_NON_STR_KEYS)
        except TypeError:
            pass
    return dump_bytes(value)


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
