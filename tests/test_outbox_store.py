"""The outbox queries the webhook dispatcher runs on every loop read only what is due, through indexes:
thousands of rows waiting for a retry are never scanned (SQLite's own query plans say so)."""

from __future__ import annotations

from sqlalchemy import text

from wacall.store.sqlite import Store


def row(url: str, at: float, **extra) -> dict:
    return {"app_id": "1", "url": url, "field": "calls", "waba_id": "w", "phone_number_id": "p", "call_id": None,
            "body": b"{}", "created_at": 0.0, "next_attempt_at": at, "attempts": 0, "status": "pending", **extra}


def plan(store: Store, sql: str) -> str:
    with store.engine.connect() as conn:
        return " ".join(r[-1] for r in conn.execute(text("EXPLAIN QUERY PLAN " + sql)))


def test_dispatcher_queries_use_indexes_and_return_only_due_rows(tmp_path):
    store = Store(str(tmp_path / "w.db"))
    waiting = [row("http://a", 1000.0 + n) for n in range(3000)]            # retries far in the future
    ids = store.commit([], [*waiting, row("http://a", 5.0), row("http://a", 6.0), row("http://b", 1.0),
                            row("http://a", 1.0, status="delivered")])
    due = store.due_outbox("http://a", now=10.0, limit=10)
    assert [i.id for i in due] == ids[3000:3002]
    assert [i.id for i in store.due_outbox("http://a", now=10.0, exclude=[ids[3000]], limit=10)] == [ids[3001]]
    assert store.next_attempt_after(10.0) == 1000.0
    assert store.oldest_pending("http://a").id == ids[0]
    assert store.pending_urls() == {"http://a", "http://b"}

    for sql in ("SELECT * FROM outbox WHERE status='pending' AND url='http://a' AND next_attempt_at <= 10 "
                "ORDER BY next_attempt_at, id LIMIT 10",
                "SELECT * FROM outbox WHERE status='pending' AND url='http://a' ORDER BY id LIMIT 1",
                "SELECT min(next_attempt_at) FROM outbox WHERE status='pending' AND next_attempt_at > 10"):
        query_plan = plan(store, sql)
        assert "USING" in query_plan and "INDEX" in query_plan and "SCAN" not in query_plan, query_plan
        assert "TEMP B-TREE" not in query_plan, query_plan
    store.close()


def test_an_older_database_gains_the_new_column_and_indexes(tmp_path):
    path = tmp_path / "old.db"
    store = Store(str(path))
    with store.engine.begin() as conn:                     # as written by a wacall before webhook faults
        for index in ("ix_outbox_due", "ix_outbox_next", "ix_outbox_head"):
            conn.execute(text(f"DROP INDEX {index}"))
        conn.execute(text("ALTER TABLE outbox DROP COLUMN fault"))
    store.close()
    store = Store(str(path))
    store.commit([], [row("http://a", 1.0, fault='[{"kind": "delay", "rule": 0, "seconds": 1}]')])
    assert store.journal()[0]["fault"] == [{"kind": "delay", "rule": 0, "seconds": 1}]
    assert "ix_outbox_due" in plan(store, "SELECT * FROM outbox WHERE status='pending' AND url='x' "
                                          "AND next_attempt_at <= 1")
    store.close()
