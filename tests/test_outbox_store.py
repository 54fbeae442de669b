"""The outbox queries the webhook dispatcher runs on every loop read only what is due, through indexes:
thousands of rows waiting for a retry are never scanned (SQLite's own query plans say so)."""

from __future__ import annotations

import sqlite3

import pytest
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
        conn.execute(text("ALTER TABLE attempts DROP COLUMN response"))   # and before answers were kept
    store.close()
    store = Store(str(path))
    [item_id] = store.commit([], [row("http://a", 1.0, fault='[{"kind": "delay", "rule": 0, "seconds": 1}]')])
    store.record_attempts([(item_id, dict(at=2.0, status_code=503, error="HTTP 503", duration_ms=1.5,
                                          response="busy, try later", delivered=False, next_attempt_at=3.0,
                                          expired=False))])
    [entry] = store.journal()
    assert entry["fault"] == [{"kind": "delay", "rule": 0, "seconds": 1}]
    assert entry["attempt_log"] == [{"at": 2.0, "status_code": 503, "error": "HTTP 503", "duration_ms": 1.5,
                                     "response": "busy, try later"}]
    assert "ix_outbox_due" in plan(store, "SELECT * FROM outbox WHERE status='pending' AND url='x' "
                                          "AND next_attempt_at <= 1")
    store.close()


def test_a_commit_is_all_or_nothing_and_readers_see_it(tmp_path):
    """commit() writes with fixed SQL on the store's own DB-API connection: records, the calls index,
    timeline entries and outbox rows land together, a failing row takes the whole commit back, and the
    store's other connections (the inspector's reads, a restart) see what was committed."""
    from wacall.domain.model import Call
    path = tmp_path / "w.db"
    store = Store(str(path))
    call = Call(id="wacid.1", phone_number_id="p", wa_id="u", direction="USER_INITIATED", state="RINGING",
                created_at=5.0)
    ids = store.commit([call], [row("http://a", 1.0, call_id=call.id)], [(call.id, {"t": 5.0, "kind": "user", "x": 1})])
    assert store.load_record("call", call.id)["state"] == "RINGING"
    assert store.timeline(call.id) == [{"t": 5.0, "kind": "user", "x": 1}]
    assert [c["state"] for c in store.call_list(limit=5)] == ["RINGING"]
    assert [i.id for i in store.due_outbox("http://a", now=1.0)] == ids

    call.state = "ENDED"
    broken = row("http://a", 2.0)
    del broken["url"]                                    # NOT NULL: the insert fails after the others ran
    with pytest.raises(sqlite3.IntegrityError):
        store.commit([call], [broken], [(call.id, {"t": 6.0, "kind": "user", "x": 2})])
    assert store.load_record("call", call.id)["state"] == "RINGING"          # rolled back with the failing row
    assert len(store.timeline(call.id)) == 1
    store.commit([call], [], [])                                             # and the connection still writes
    store.close()
    reopened = Store(str(path))
    assert reopened.load_record("call", call.id)["state"] == "ENDED"
    assert [c["state"] for c in reopened.call_list(limit=5)] == ["ENDED"]
    reopened.close()


def test_a_commits_entries_of_one_call_are_one_row_and_read_back_in_order(tmp_path):
    """Several timeline entries of one call in one commit are written as one row (kind ``*``, the entries as a
    JSON list); a call's single entry keeps a row of its own. Reading gives every entry in the order noted,
    whatever the rows, also after a reopen and beside rows of the one-entry form."""
    path = tmp_path / "t.db"
    store = Store(str(path))
    a = [{"t": 1.0, "kind": "sip_message", "direction": "in", "raw": "INVITE ...\r\n"},
         {"t": 1.0, "kind": "state", "state": "RINGING"}, {"t": 1.001, "kind": "sip_message", "direction": "out"}]
    store.commit([], [], [("c1", a[0]), ("c2", {"t": 1.0, "kind": "api"}), ("c1", a[1]), ("c1", a[2])])
    store.commit([], [], [("c1", {"t": 2.0, "kind": "user", "x": 1})])
    rows = store.engine.connect().execute(text("SELECT call_id, kind FROM timeline ORDER BY seq")).all()
    assert [tuple(r) for r in rows] == [("c1", "*"), ("c2", "api"), ("c1", "user")]
    assert store.timeline("c1") == [*a, {"t": 2.0, "kind": "user", "x": 1}]
    assert store.timeline("c2") == [{"t": 1.0, "kind": "api"}]
    store.close()
    reopened = Store(str(path))
    assert [e["kind"] for e in reopened.timeline("c1")] == ["sip_message", "state", "sip_message", "user"]
    reopened.close()


@pytest.mark.e2e                                 # sends to a loopback receiver: not in the fast tier
def test_a_wake_starts_the_committed_rows_without_the_dispatch_loop(tmp_path):
    """After a commit the server wakes the dispatcher: the due rows are attempted on the loop's next turns
    by wake() itself (Dispatcher.run is not running here), so a webhook does not wait for the loop's
    sleep to end, and the attempt is recorded."""
    import asyncio

    import aiohttp
    from aiohttp import web

    from wacall.config import WebhookDelivery
    from wacall.domain.clock import VirtualClock
    from wacall.webhooks.delivery import Dispatcher

    async def scenario() -> None:
        got: asyncio.Queue = asyncio.Queue()

        async def receive(request: web.Request) -> web.Response:
            got.put_nowait(await request.read())
            return web.Response()
        app = web.Application()
        app.router.add_post("/hook", receive)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        url = f"http://127.0.0.1:{site._server.sockets[0].getsockname()[1]}/hook"
        store = Store(str(tmp_path / "w.db"))
        async with aiohttp.ClientSession() as session:
            dispatcher = Dispatcher(store, VirtualClock(), session, WebhookDelivery(), lambda app_id: "secret")
            dispatcher.wake()                          # reads the (empty) set of pending URLs
            await asyncio.sleep(0)
            (item_id,) = store.commit([], [row(url, 0.0, body=b'{"n":1}')])
            dispatcher.wake([url])
            assert await asyncio.wait_for(got.get(), 10) == b'{"n":1}'
            for _ in range(100):                       # the attempt is recorded once the answer is read
                if store.journal()[0]["status"] == "delivered":
                    break
                await asyncio.sleep(0.01)
            assert store.journal()[0]["id"] == item_id and store.journal()[0]["status"] == "delivered"
            await dispatcher.stop()
        store.close()
        await runner.cleanup()
    asyncio.run(scenario())


def _call(call_id: str, created_at: float):
    from wacall.domain.model import Call
    return Call(id=call_id, phone_number_id="p", wa_id="u", direction="USER_INITIATED", state="RINGING",
                created_at=created_at)


def test_the_timeline_is_found_by_the_calls_number_not_by_its_random_id(tmp_path):
    """Calls are numbered in creation order (``calls.n``, also across a reopen) and their timeline rows carry
    that number: the timeline's index grows at its end instead of taking random call ids. Entries of a call
    id without a calls row keep working through a partial index of their own. No read scans the table."""
    path = tmp_path / "n.db"
    store = Store(str(path))
    first, second = _call("wacid.Zz", 1.0), _call("wacid.Aa", 2.0)
    store.commit([first], [], [(first.id, {"t": 1.0, "kind": "api"})])
    store.commit([second], [], [(second.id, {"t": 2.0, "kind": "api"}), (first.id, {"t": 2.0, "kind": "user"})])
    store.commit([], [], [("orphan", {"t": 3.0, "kind": "sip_message"}), (second.id, {"t": 3.0, "kind": "state"})])
    store.close()
    store = Store(str(path))
    third = _call("wacid.Mm", 4.0)
    store.commit([third], [], [(third.id, {"t": 4.0, "kind": "api"}), (first.id, {"t": 4.0, "kind": "media"})])
    with store.engine.connect() as conn:
        numbers = dict(conn.execute(text("SELECT call_id, n FROM calls")).all())
        by_row = conn.execute(text("SELECT call_id, call_n FROM timeline ORDER BY seq")).all()
    assert numbers["wacid.Zz"] < numbers["wacid.Aa"] < numbers["wacid.Mm"]
    assert all(n == numbers.get(call_id) for call_id, n in by_row)          # the orphan's: None
    assert [e["kind"] for e in store.timeline(first.id)] == ["api", "user", "media"]
    assert [e["kind"] for e in store.timeline(second.id)] == ["api", "state"]
    assert store.timeline("orphan") == [{"t": 3.0, "kind": "sip_message"}]
    assert store.timeline("wacid.unknown") == []
    query_plan = plan(store, str(Store._TIMELINE_SELECT).replace(":call_id", "'wacid.Zz'"))
    assert "ix_timeline_call_n" in query_plan and "ix_timeline_unnumbered" in query_plan, query_plan
    assert "SCAN timeline" not in query_plan and "SCAN calls" not in query_plan, query_plan
    store.close()


def test_an_older_database_numbers_its_calls_and_keeps_their_timelines(tmp_path):
    """A database from before call numbers (timeline indexed by call id): opening it numbers the calls in the
    order they were written, gives their timeline rows the numbers, drops the index on ids, and every
    timeline reads back as before, with new entries after the old ones."""
    path = tmp_path / "old.db"
    store = Store(str(path))
    with store.engine.begin() as conn:                     # the schema before call numbers
        conn.execute(text("DROP INDEX ix_timeline_call_n"))
        conn.execute(text("DROP INDEX ix_timeline_unnumbered"))
        conn.execute(text("ALTER TABLE timeline DROP COLUMN call_n"))
        conn.execute(text("ALTER TABLE calls DROP COLUMN n"))
        conn.execute(text("CREATE INDEX ix_timeline_call_id ON timeline (call_id)"))
        for i, call_id in enumerate(("wacid.B", "wacid.A")):
            conn.execute(text("INSERT INTO calls (call_id, phone_number_id, wa_id, direction, state, created_at, "
                              "pulses, cost) VALUES (:c, 'p', 'u', 'USER_INITIATED', 'ENDED', :t, 0, 0)"),
                         {"c": call_id, "t": float(i)})
        for call_id, kind in (("wacid.B", "api"), ("wacid.A", "api"), ("orphan", "x"), ("wacid.B", "state")):
            conn.execute(text("INSERT INTO timeline (call_id, t, kind, data) VALUES (:c, 1.0, :k, '{}')"),
                         {"c": call_id, "k": kind})
    store.close()
    store = Store(str(path))
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'ix_timeline_call_id'")).first() is None
        assert dict(conn.execute(text("SELECT call_id, n FROM calls")).all()) == {"wacid.B": 1, "wacid.A": 2}
    new = _call("wacid.C", 5.0)
    store.commit([new], [], [(new.id, {"t": 5.0, "kind": "api"}), ("wacid.B", {"t": 5.0, "kind": "user"})])
    assert [e["kind"] for e in store.timeline("wacid.B")] == ["api", "state", "user"]
    assert [e["kind"] for e in store.timeline("wacid.A")] == ["api"]
    assert [e["kind"] for e in store.timeline("orphan")] == ["x"]
    assert [e["kind"] for e in store.timeline("wacid.C")] == ["api"]
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT n FROM calls WHERE call_id = 'wacid.C'")).scalar_one() == 3
    store.close()


def test_a_records_live_flag_follows_it_while_its_document_alone_is_rewritten(tmp_path):
    """A live record of a kind that leaves the working set once (Record.LEAVES_ONCE: a call, a pair) is
    rewritten without touching the ``live`` flag (and its index); one that leaves (an ended call) or may come
    back (a message) is written with it. Either way the stored flag is the record's own, as a restart loads
    the working set by it, and the documents read back are the last ones committed."""
    from wacall.domain.model import Call, Message, Pair
    path = tmp_path / "live.db"
    store = Store(str(path))
    call = Call(id="wacid.1", phone_number_id="p", wa_id="u", direction="BUSINESS_INITIATED", state="RINGING")
    pair = Pair(phone_number_id="p", wa_id="u")
    message = Message(id="wamid.1", phone_number_id="p", wa_id="u", direction="inbound", type="text", kind="text",
                      created_at=1.0, deadline=3.0)
    assert Call.LEAVES_ONCE and Pair.LEAVES_ONCE and not Message.LEAVES_ONCE

    def stored() -> dict:
        with store.engine.connect() as conn:
            return {key: bool(live) for key, live in conn.execute(text("SELECT key, live FROM records"))}

    store.commit([call, pair, message], [])
    assert stored() == {"wacid.1": True, "p:u": True, "wamid.1": True}
    call.state, message.deadline = "ACCEPTED", None
    store.commit([call, pair, message], [])
    assert stored() == {"wacid.1": True, "p:u": True, "wamid.1": False}
    assert store.load_record("call", "wacid.1")["state"] == "ACCEPTED"
    call.state, message.deadline = "ENDED", 9.0
    store.commit([call, message], [])
    assert stored() == {"wacid.1": False, "p:u": True, "wamid.1": True}
    store.close()
    reopened = Store(str(path))
    assert sorted(kind for kind, _ in reopened.load_live_records()) == ["message", "pair"]
    assert reopened.load_record("call", "wacid.1")["state"] == "ENDED"
    reopened.close()


def test_a_timeline_entrys_time_is_rounded_exactly_as_round_does():
    """``round_ms`` (a timeline entry's ``t``) gives the very float ``round(x, 3)`` gives: for clock readings,
    for values on and beside every kind of half-thousandth (the near-ties it hands to round()), for values
    whose product by 1000 lands near a whole number, and outside the range it computes itself."""
    import math
    import random
    import time

    from wacall.domain.state import round_ms

    rng = random.Random(19)
    now = time.time()
    values = [now + rng.uniform(-1e6, 1e6) for _ in range(100_000)]
    values += [rng.uniform(0, 4e9) for _ in range(100_000)]
    for _ in range(20_000):
        k = rng.randrange(0, 4_000_000_000_000)
        for exact in ((k + 0.5) / 1000, k / 1000):          # a half-thousandth; a whole thousandth
            below = math.nextafter(exact, 0.0)
            values += [exact, below, math.nextafter(below, 0.0), math.nextafter(exact, math.inf),
                       math.nextafter(math.nextafter(exact, math.inf), math.inf)]
    values += [0.0, 0.0005, 0.0015, 0.0025, 1.0005, 2.675, 1e-300, 3.9999999e9, 4e9, 5e9, 1e16, -0.0, -1.0005,
               -2.675, math.inf, -math.inf]
    for x in values:
        assert repr(round_ms(x)) == repr(round(x, 3)), x
    assert math.isnan(round_ms(math.nan))


def test_a_new_database_has_small_pages_and_an_older_one_keeps_its_own(tmp_path):
    """A new database file is made with PAGE_SIZE pages (each commit copies the pages it changes whole); a file
    written with SQLite's default 4 KiB pages keeps them and is read and written as before."""
    from wacall.store.sqlite import PAGE_SIZE

    def page_size(store: Store) -> int:
        with store.engine.connect() as conn:
            return conn.execute(text("PRAGMA page_size")).scalar_one()

    old_path = tmp_path / "old.db"
    conn = sqlite3.connect(old_path)
    conn.execute("PRAGMA page_size=4096")
    conn.execute("PRAGMA journal_mode=WAL")
    conn.close()
    store = Store(str(old_path))
    call = _call("wacid.1", 1.0)
    store.commit([call], [], [(call.id, {"t": 1.0, "kind": "api"})])
    assert page_size(store) == 4096
    store.close()
    store = Store(str(old_path))
    assert store.load_record("call", "wacid.1")["id"] == "wacid.1" and store.timeline("wacid.1") == [{"t": 1.0, "kind": "api"}]
    store.close()
    store = Store(str(tmp_path / "new.db"))
    assert PAGE_SIZE == 2048 and page_size(store) == PAGE_SIZE
    store.close()
    memory = Store(":memory:")
    assert page_size(memory) == PAGE_SIZE
    memory.close()


def test_a_calls_times_are_null_until_set_and_documents_are_stored_as_text(tmp_path):
    """A call's row binds its missing times and duration as NO_VALUE, which its statement stores as NULL (the
    counts and the 24-hour lists read NULL, never ''), and its times once they are set; documents and timeline
    rows are bound as UTF-8 bytes and stored as the TEXT they are. All of it reads back after a reopen."""
    from wacall.store.sqlite import NO_VALUE

    path = tmp_path / "types.db"
    store = Store(str(path))
    call = _call("wacid.1", 1.0)
    assert call.accepted_at is None and call.ended_at is None and call.duration is None

    def calls_row() -> tuple:
        with store.engine.connect() as conn:
            return tuple(conn.execute(text("SELECT accepted_at, typeof(accepted_at), ended_at, typeof(ended_at), "
                                           "duration, typeof(duration) FROM calls")).one())

    store.commit([call], [], [(call.id, {"t": 1.0, "kind": "api", "text": "é\r\n"})])
    assert calls_row() == (None, "null", None, "null", None, "null")
    call.state, call.accepted_at = "ACCEPTED", 0.0          # a time that is a false value is a time
    store.commit([call], [])
    assert calls_row() == (0.0, "real", None, "null", None, "null")
    call.state, call.ended_at = "ENDED", 7.4
    store.commit([call], [], [(call.id, {"t": 8.0, "kind": "state"}), (call.id, {"t": 8.5, "kind": "sip", "x": "ü"})])
    assert calls_row() == (0.0, "real", 7.4, "real", 7, "integer")
    assert NO_VALUE not in calls_row()
    store.close()
    store = Store(str(path))
    with store.engine.connect() as conn:
        assert {t for (t,) in conn.execute(text("SELECT typeof(doc) FROM records"))} == {"text"}
        assert {t for (t,) in conn.execute(text("SELECT typeof(data) FROM timeline"))} == {"text"}
    assert calls_row() == (0.0, "real", 7.4, "real", 7, "integer")
    assert store.load_record("call", "wacid.1")["ended_at"] == 7.4
    assert store.timeline("wacid.1") == [{"t": 1.0, "kind": "api", "text": "é\r\n"}, {"t": 8.0, "kind": "state"},
                                         {"t": 8.5, "kind": "sip", "x": "ü"}]
    assert store.call_totals(["p"], "USER_INITIATED", 0.0, 10.0)["completed_count"] == 1
    store.close()


def test_a_live_calls_rows_updated_in_place_equal_those_the_upserts_write(tmp_path):
    """A live call whose rows this store wrote is rewritten by UPDATE (its document, and its calls row when its
    state, times or price moved); a store that remembers nothing (reopened before every commit) writes the same
    commits by INSERT ... ON CONFLICT. Both databases hold the same rows. A row gone behind the store's back is
    written whole again, not lost by an UPDATE that found nothing."""
    from wacall.domain.model import Pair

    def rows(store: Store) -> list:
        with store.engine.connect() as conn:
            return [conn.execute(text(f"SELECT * FROM {table} ORDER BY 1, 2")).all()
                    for table in ("records", "calls", "timeline")]

    call, pair = _call("wacid.1", 1.0), Pair(phone_number_id="p", wa_id="u")
    steps = [("RINGING", {}), ("RINGING", {"media": {"x": 1}}), ("ACCEPTED", {"accepted_at": 2.0}),
             ("ACCEPTED", {"pulses": 1, "cost": 0.5}), ("ENDED", {"ended_at": 9.5})]
    kept, reopened_path = Store(str(tmp_path / "kept.db")), tmp_path / "reopened.db"
    for i, (state, changes) in enumerate(steps):
        call.state = state
        for name, value in changes.items():
            setattr(call, name, value)
        commit = ([call, pair], [], [(call.id, {"t": float(i), "kind": "state", "state": state})])
        kept.commit(*commit)
        reopened = Store(str(reopened_path))
        reopened.commit(*commit)
        assert rows(kept) == rows(reopened), state
        reopened.close()
    assert kept.load_record("call", "wacid.1")["state"] == "ENDED"
    assert kept.call_totals(["p"], "USER_INITIATED", 0.0, 10.0)["completed_count"] == 1

    again = _call("wacid.2", 3.0)
    kept.commit([again], [])
    with kept.engine.begin() as conn:
        conn.execute(text("DELETE FROM records WHERE key = 'wacid.2'"))
        conn.execute(text("DELETE FROM calls WHERE call_id = 'wacid.2'"))
    again.state = "ACCEPTED"
    kept.commit([again], [])
    assert kept.load_record("call", "wacid.2")["state"] == "ACCEPTED"
    assert [row["state"] for row in kept.call_list(limit=5) if row["call_id"] == "wacid.2"] == ["ACCEPTED"]
    with kept.engine.begin() as conn:                 # and as it ends (its document with the live flag)
        conn.execute(text("DELETE FROM records WHERE key = 'wacid.2'"))
    again.state, again.ended_at = "ENDED", 4.0
    kept.commit([again], [])
    assert kept.load_record("call", "wacid.2")["state"] == "ENDED"
    assert "wacid.2" not in {doc["id"] for kind, doc in kept.load_live_records() if kind == "call"}
    kept.close()


def test_a_call_list_by_state_finds_live_calls_by_the_records_index_and_no_state_index_is_kept(tmp_path):
    """Calls have no index on their state (each state change would move its entry): lists of live calls (``live``
    or one live state) find them through the records' ``live`` index, ENDED walks the calls newest first. Every
    list is what filtering all calls by state gives, in the same order (limit, before, equal creation times),
    also in an older database made with the state index, which opening drops."""
    import random

    from wacall.control.routes import CALL_LIST_STATES
    from wacall.store.sqlite import LIVE_STATES

    rng = random.Random(25)
    path = tmp_path / "states.db"
    store = Store(str(path))
    with store.engine.begin() as conn:                      # the index an older wacall made
        conn.execute(text("CREATE INDEX calls_by_state ON calls (state, created_at)"))
    store.close()
    store = Store(str(path))
    with store.engine.connect() as conn:
        assert conn.execute(text("SELECT name FROM sqlite_master WHERE name = 'calls_by_state'")).first() is None
    states = ["RINGING", "PRE_ACCEPTED", "ACCEPTED", "VOICEMAIL", "ENDED"]
    everything = {}
    for i in range(300):
        call = _call(f"wacid.{i:03d}", float(rng.randrange(60)))    # equal creation times, ordered by id then
        for state in states[:rng.randrange(1, 6)]:           # through some states, each in a commit
            call.state = rng.choice([state, "ENDED"]) if state != "ENDED" else state
            store.commit([call], [])
            if call.state == "ENDED":
                break
        everything[call.id] = (call.created_at, call.state)
    assert {state for _, state in everything.values()} == set(states)

    def expected(limit, before, state):
        rows = sorted(((t, call_id) for call_id, (t, s) in everything.items()
                       if (before is None or t < before) and (state is None or s == state
                                                              or (state == "live" and s in LIVE_STATES))),
                      reverse=True)[:limit]
        return [call_id for _, call_id in reversed(rows)]

    for state in sorted(CALL_LIST_STATES) + [None]:
        for limit, before in ((1000, None), (7, None), (5, 30.0), (3, 0.5)):
            got = store.call_list(limit=limit, before=before, state=state)
            assert [row["call_id"] for row in got] == expected(limit, before, state), (state, limit, before)
            assert all(row["state"] == everything[row["call_id"]][1] for row in got)
    for state, uses in (("live", "ix_records_live"), ("RINGING", "ix_records_live"),
                        ("ENDED", "ix_calls_created_at"), (None, "ix_calls_created_at")):
        for before in (None, 30.0):         # never every call read (a plain SCAN), nor every match sorted
            query = store._call_list_query(5, before, state)
            steps = plan(store, str(query.compile(store.engine, compile_kwargs={"literal_binds": True})))
            assert uses in steps and "SCAN calls " not in steps.replace("SCAN calls USING", ""), (state, steps)
            assert state in ("live", "RINGING") or "TEMP B-TREE FOR ORDER BY" not in steps, (state, steps)
    store.close()


def test_a_call_the_store_does_not_remember_keeps_its_number_and_a_new_one_takes_the_next(tmp_path):
    """A call the store has not numbered (as far as it remembers) is inserted with the next number, without a
    look-up first; if it had a row already (written before a reopen, or its number forgotten), that row and its
    number stay, the row is brought up to date, and its timeline goes on under that number. New calls in the
    same commit keep the numbers they were given, after every number used before."""
    from wacall.store import sqlite as store_module

    path = tmp_path / "numbers.db"
    store = Store(str(path))
    old = _call("wacid.old", 1.0)
    store.commit([old], [], [(old.id, {"t": 1.0, "kind": "api"})])
    store.close()
    store = Store(str(path))                                  # remembers no number
    new, old.state = _call("wacid.new", 2.0), "ACCEPTED"
    store.commit([new, old], [], [(new.id, {"t": 2.0, "kind": "api"}), (old.id, {"t": 2.0, "kind": "state"})])
    with store.engine.connect() as conn:
        numbers = dict(conn.execute(text("SELECT call_id, n FROM calls")).all())
        assert conn.execute(text("SELECT state FROM calls WHERE call_id = 'wacid.old'")).scalar_one() == "ACCEPTED"
    assert numbers["wacid.old"] == 1 and numbers["wacid.new"] > 1
    assert [e["kind"] for e in store.timeline("wacid.old")] == ["api", "state"]
    assert [e["kind"] for e in store.timeline("wacid.new")] == ["api"]
    store._numbers.clear()                                    # (as when NUMBERS_KEPT newer calls pushed it out)
    store._indexed.clear()
    old.state, later = "ENDED", _call("wacid.later", 3.0)
    store.commit([old, later], [], [(old.id, {"t": 3.0, "kind": "state"}), (later.id, {"t": 3.0, "kind": "api"})])
    with store.engine.connect() as conn:
        after = dict(conn.execute(text("SELECT call_id, n FROM calls")).all())
    assert after["wacid.old"] == 1 and after["wacid.new"] == numbers["wacid.new"]
    assert after["wacid.later"] > max(numbers.values())
    assert [e["kind"] for e in store.timeline("wacid.old")] == ["api", "state", "state"]
    assert [e["kind"] for e in store.timeline("wacid.later")] == ["api"]
    assert store.load_record("call", "wacid.old")["state"] == "ENDED"
    assert store_module.NUMBERS_KEPT > 2
    store.close()
