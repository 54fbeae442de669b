"""``--db :memory:`` is SQLite's private temporary database (``Store._memory_engine``): a database of its own per
store, its journal in memory and no syncs, a bounded page cache that spills to a file SQLite unlinks at once, and
so no size cap."""

from __future__ import annotations

import pytest
from sqlalchemy import text

from wacall.domain.model import Call
from wacall.store.sqlite import PAGE_SIZE, Store

pytestmark = pytest.mark.fast


def call(call_id: str) -> Call:
    return Call(id=call_id, phone_number_id="p", wa_id="u", direction="BUSINESS_INITIATED", state="RINGING",
                created_at=1.0)


def pragma(store: Store, name: str):
    with store.engine.connect() as conn:
        return conn.execute(text(f"PRAGMA {name}")).all()


def test_a_memory_store_is_a_temporary_database_of_its_own():
    first, second = Store(":memory:"), Store(":memory:")
    try:
        first.commit([call("wacid.one")], [])
        assert first.load_record("call", "wacid.one")["state"] == "RINGING"
        assert second.load_record("call", "wacid.one") is None         # not the same database
        assert pragma(first, "database_list")[0] == (0, "main", "")      # no file name: SQLite's temporary one
        assert pragma(first, "journal_mode") == [("memory",)] and pragma(first, "synchronous") == [(0,)]
        assert pragma(first, "page_size") == [(PAGE_SIZE,)]
    finally:
        first.close()
        second.close()


def test_a_memory_store_holds_more_than_its_page_cache():
    store = Store(":memory:")
    try:
        with store.engine.connect() as conn:
            conn.execute(text("PRAGMA cache_size=20"))                 # 20 pages: the rest spills to its file
        calls = [call(f"wacid.{n:05d}") for n in range(400)]
        for c in calls:
            c.business_sdp = "v=0\r\n" + "a=x\r\n" * 400                 # ~2.4 KB each, ~1 MB in all
            store.commit([c], [], [(c.id, {"t": 1.0, "kind": "api", "raw": "y" * 2000})])
        assert pragma(store, "page_count")[0][0] * PAGE_SIZE > 1_000_000
        assert store.load_record("call", "wacid.00007")["business_sdp"] == calls[7].business_sdp
        assert [entry["kind"] for entry in store.timeline("wacid.00399")] == ["api"]
    finally:
        store.close()
