"""wacall.logs: a call's timeline entries as one readable line each, and the JSON format for machines."""

from __future__ import annotations

import json
import logging

from wacall import logs


def test_timeline_entries_read_as_sentences():
    assert logs.describe({"t": 1.0, "kind": "state", "state": "ACCEPTED", "previous": "PRE_ACCEPTED"}) == \
        "state PRE_ACCEPTED -> ACCEPTED"
    sip = {"t": 1.0, "kind": "sip_message", "direction": "in", "line": "INVITE sip:+447700900123@wa.meta.vc SIP/2.0",
           "raw": "INVITE ...\r\nVia: ...\r\n\r\n"}
    assert logs.describe(sip) == "SIP in INVITE sip:+447700900123@wa.meta.vc SIP/2.0"      # no raw message
    assert logs.describe({"t": 1.0, "kind": "api", "action": "pre_accept", "app_id": "1"}) == "api pre_accept app_id=1"
    long = logs.describe({"t": 1.0, "kind": "media", "event": "final_stats", "media": {"x": "y" * 500}})
    assert long.startswith("media final_stats media=") and long.endswith("...") and len(long) < 160


def test_json_lines_carry_the_records_fields():
    record = logging.LogRecord("wacall.calls", logging.INFO, __file__, 1, "call %s: %s", ("wacid.X", "state"), None)
    record.fields = {"call_id": "wacid.X", "kind": "state"}
    doc = json.loads(logs.JsonFormatter().format(record))
    assert doc["message"] == "call wacid.X: state" and doc["level"] == "INFO" and doc["logger"] == "wacall.calls"
    assert doc["call_id"] == "wacid.X" and doc["time"].endswith("Z")
