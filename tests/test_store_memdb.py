"""``--db :memory:`` is SQLite's memdb VFS with its 1 GiB cap lifted (see ``wacall.store.memdb``): a database
of its own per store, a size cap that really is the one ``size_limit`` sets, and plain ``:memory:`` where the
cap cannot be reached."""

from __future__ import annotations

import sqlite3

import pytest
from sqlalchemy import text

from wacall.domain.model import Call
from wacall.store import memdb
from wacall.store.sqlite import Store

pytestmark = pytest.mark.fast


def call(call_id: str) -> Call:
    return Call(id=call_id, phone_number_id="p", wa_id="u", direction="BUSINESS_INITIATED", state="RINGING",
                created_at=1.0)


def memdb_name(store: Store) -> str:
    database = store.engine.url.database
    assert store.engine.url.query.get("vfs") == "memdb" and database.startswith("file:/wacall-")
    return database[len("file:"):]


def test_a_memory_store_is_a_memdb_database_of_its_own_with_the_cap_lifted():
    first, second = Store(":memory:"), Store(":memory:")
    try:
        assert memdb_name(first) != memdb_name(second)
        first.commit([call("wacid.one")], [])
        assert first.load_record("call", "wacid.one")["state"] == "RINGING"
        assert second.load_record("call", "wacid.one") is None         # not the same database
        with first.engine.connect() as conn:
            assert memdb.size_limit(conn.connection.dbapi_connection, memdb_name(first)) == memdb.LIMIT
    finally:
        first.close()
        second.close()


def test_the_cap_size_limit_sets_is_the_one_sqlite_enforces():
    url, name = memdb.new_url()
    conn = sqlite3.connect(url[len("sqlite:///"):url.index("&uri=true")], uri=True)
    try:
        conn.execute("CREATE TABLE t (doc BLOB)")
        assert memdb.size_limit(conn, name, 1 << 20) == 1 << 20         # 1 MiB
        with pytest.raises(sqlite3.OperationalError, match="full"):
            for _ in range(40):
                conn.execute("INSERT INTO t VALUES (?)", (b"x" * 60_000,))
                conn.commit()
        conn.rollback()
        assert memdb.lift_limit(conn, name)
        for _ in range(40):                                              # 2.4 MB: past the old cap
            conn.execute("INSERT INTO t VALUES (?)", (b"x" * 60_000,))
        conn.commit()
        assert memdb.size_limit(conn, "/not-this-database") is None       # checked by name before use
    finally:
        conn.close()


def test_where_the_cap_cannot_be_lifted_the_store_is_plain_memory(monkeypatch):
    monkeypatch.setattr(memdb, "lift_limit", lambda connection, name: False)
    store = Store(":memory:")
    try:
        assert str(store.engine.url) == "sqlite://"
        store.commit([call("wacid.two")], [])
        assert store.load_record("call", "wacid.two")["state"] == "RINGING"
        with store.engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM calls")).scalar_one() == 1
    finally:
        store.close()
