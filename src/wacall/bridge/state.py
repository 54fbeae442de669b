"""The bridge's live calls kept on disk (``[bridge] state_dir``), so that a restart, even after ``kill -9``, picks
them up: one SQLite row per call, written at each change of its state (``setup``, the PBX dialog made,
``bridged``) and deleted when it ends. SQLite in WAL mode with ``synchronous=NORMAL``: a committed write survives
the process being killed (it is in the OS's cache); a power cut may lose the last few, which only matters for
calls that end with it anyway.

What a row holds is :func:`snapshot`'s JSON: the wacid, direction, user, state, SIP Call-ID, the PBX dialog
(tags, URIs, route, CSeq: enough to send and to recognise a BYE), the media path's own (``MediaPath.snapshot``,
e.g. RtpEngine's from-tag), for a business-initiated call still ringing, the PBX's INVITE as it came (so the
restarted bridge can still answer it), and for a user-initiated call whose INVITE to the PBX has no dialog yet,
that INVITE as sent (so the restarted bridge can CANCEL it). The dialog carries both SDPs (the bridge's and the
PBX's last), so a restored call still answers the PBX's re-INVITEs.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import sqlite3
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("wacall.bridge.state")

FILE_NAME = "bridge-calls.sqlite3"


class CallStore:
    def __init__(self, directory: str | Path) -> None:
        self.path = Path(directory).expanduser() / FILE_NAME
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")
        self.db.execute("CREATE TABLE IF NOT EXISTS calls (key TEXT PRIMARY KEY, record TEXT NOT NULL, "
                        "updated REAL NOT NULL)")

    def save(self, key: str, record: dict) -> None:
        self.db.execute("INSERT OR REPLACE INTO calls (key, record, updated) VALUES (?, ?, ?)",
                        (key, json.dumps(record, separators=(",", ":")), time.time()))

    def delete(self, key: str) -> None:
        self.db.execute("DELETE FROM calls WHERE key = ?", (key,))

    def load(self) -> list[tuple[str, dict]]:
        rows = []
        for key, text in self.db.execute("SELECT key, record FROM calls ORDER BY updated"):
            try:
                rows.append((key, json.loads(text)))
            except ValueError:
                log.warning("state: unreadable record %s dropped", key)
                self.delete(key)
        return rows

    def close(self) -> None:
        self.db.close()


def snapshot(call: Any, media: dict | None) -> dict:
    """A BridgedCall as JSON (see the module); ``media``: the media path's own snapshot of it."""
    record = {
        "call_id": call.call_id, "user": call.user, "state": call.state, "direction": call.direction,
        "sip_call_id": call.sip_call_id, "media_call": call.media_call, "pbx_tag": call.pbx_tag,
        "started_at": time.time() - (time.monotonic() - call.started),
        "dialog": dataclasses.asdict(call.dialog) if call.dialog is not None else None,
        "media": media,
    }
    if call.dialog is None and getattr(call, "sent_invite", None):   # our INVITE, still unanswered
        record["sent_invite"] = call.sent_invite
    incoming = call.incoming
    if incoming is not None and incoming.final is None:
        record["invite"] = incoming.request.to_bytes().decode("latin-1")
        record["reply_to"] = list(incoming.reply_to)
    return record


__all__ = ["CallStore", "snapshot"]
