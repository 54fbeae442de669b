"""The bridge's log lines: text (``wacid=… sip=… what happened``, as every call's line starts) or, with
``wacall bridge --log-json``, one JSON object per line for a log shipper: ``ts`` (UTC, ISO 8601), ``level``,
``logger``, ``msg``, and ``wacid`` / ``sip_call_id`` (null where the line names none), ``exc`` with a traceback."""

from __future__ import annotations

import json
import logging
import re
import sys
from datetime import UTC, datetime

_IDS = re.compile(r"^wacid=(\S+) sip=(\S+) ?")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        msg = record.getMessage()
        wacid = getattr(record, "wacid", None)
        sip = getattr(record, "sip_call_id", None)
        found = _IDS.match(msg)
        if found:
            wacid, sip, msg = wacid or found[1], sip or found[2], msg[found.end():]
        line = {"ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
                "level": record.levelname, "logger": record.name, "msg": msg,
                "wacid": None if wacid in (None, "-") else wacid, "sip_call_id": None if sip in (None, "-") else sip}
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure(level: str, *, json_lines: bool = False) -> None:
    """The bridge's logging on stderr (``wacall bridge --log-level``, ``--log-json``)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter() if json_lines else
                         logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


__all__ = ["JsonFormatter", "configure"]
