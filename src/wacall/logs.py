"""What wacall logs, and how: readable lines for people, or one JSON object per line (``--log-format
json``) for machines.

At INFO there is one line per Graph or control request (``wacall.http``), per timeline entry of a call:
state changes, API actions, SIP messages, media facts (``wacall.calls``), and per webhook attempt
(``wacall.webhooks``). The default level is WARNING, and every INFO line on a hot path is guarded by
``isEnabledFor`` (the request middleware is not even installed below INFO), so nothing is formatted
unless it is shown.
"""

from __future__ import annotations

import json
import logging
import sys
import time
from typing import Iterable

from aiohttp import web

http = logging.getLogger("wacall.http")
calls = logging.getLogger("wacall.calls")

LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")
FORMATS = ("text", "json")


class JsonFormatter(logging.Formatter):
    """One JSON object per record: time (ISO 8601, UTC), level, logger, message, and the record's
    ``fields`` (e.g. ``call_id``, ``method``, ``status``) when it has them."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {"time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
               + f".{int(record.msecs):03d}Z", "level": record.levelname, "logger": record.name,
               "message": record.getMessage()}
        extra = getattr(record, "fields", None)
        if isinstance(extra, dict):
            doc.update(extra)
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, default=str)


def setup(level: str = "WARNING", fmt: str = "text") -> None:
    """Configure the root logger once, on stderr."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if fmt == "json" else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)


@web.middleware
async def request_middleware(request: web.Request, handler):
    """One INFO line per request: method, path, status and time taken (installed only at INFO or below)."""
    started = time.perf_counter()
    status = 500
    try:
        response = await handler(request)
        status = response.status
        return response
    except web.HTTPException as exc:
        status = exc.status
        raise
    finally:
        ms = (time.perf_counter() - started) * 1000
        http.info("%s %s -> %d (%.1f ms)", request.method, request.path, status, ms,
                  extra={"fields": {"method": request.method, "path": request.path, "status": status,
                                    "ms": round(ms, 2)}})


def describe(entry: dict) -> str:
    """A timeline entry as a short sentence: ``state RINGING -> ACCEPTED``, ``SIP in INVITE sip:...``."""
    kind = entry.get("kind")
    rest = {k: v for k, v in entry.items() if k not in ("t", "kind")}
    if kind == "state":
        head = f"state {rest.pop('previous', None) or '-'} -> {rest.pop('state', None)}"
    elif kind == "sip_message":
        head = f"SIP {rest.pop('direction', '')} {rest.pop('line', '')}"
        rest = {k: v for k, v in rest.items() if k in ("status", "reason")}
    elif kind in ("api", "user", "permission", "media", "sip"):
        head = f"{kind} {rest.pop('action', None) or rest.pop('event', None) or ''}".rstrip()
    else:
        head = str(kind)
    details = " ".join(f"{k}={_short(v)}" for k, v in rest.items())
    return f"{head} {details}" if details else head


def _short(value) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str, separators=(",", ":"))
    return text if len(text) <= 120 else text[:117] + "..."


def log_notes(notes: Iterable[tuple[str, dict]]) -> None:
    """One INFO line per committed timeline entry (the caller checked that INFO is enabled)."""
    for call_id, entry in notes:
        calls.info("call %s: %s", call_id, describe(entry),
                   extra={"fields": {"call_id": call_id, "kind": entry.get("kind")}})
