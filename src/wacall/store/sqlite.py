"""State in an embedded SQLite database (SQLAlchemy Core; a Postgres URL works the same way).

Tables: ``records`` holds every domain object as a JSON document (``live`` marks the working set the
platform loads at start: ended calls and done messages are not), ``outbox`` the webhook deliveries that
have not succeeded yet (and those that did, for the journal), ``attempts`` every delivery attempt,
``timeline`` every call's timeline entries (append-only), ``calls`` an index of every call's columns
the rules and the inspector count and list by, and ``meta`` small values such as the virtual clock's
offset. A domain operation's records, timeline entries and the webhooks it caused are written in one
transaction, so a crash never loses one without the other.

The store is also the platform's :class:`~wacall.domain.state.Archive`: it reads back records that
left memory and answers counts over every call from the ``calls`` index.
"""

from __future__ import annotations

import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import islice
from typing import Iterable, Iterator

from sqlalchemy import (Boolean, Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text,
                        and_, bindparam, cast, create_engine, delete, event, func, inspect, literal_column, select, text,
                        update)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Engine
from sqlalchemy.pool import StaticPool

from .. import codec
from ..domain.model import ACCEPTED, BUSINESS_INITIATED, PRE_ACCEPTED, RINGING, VOICEMAIL, Call, Record

metadata = MetaData()
CHECKPOINT_SECONDS = 1.0       # how often a database file's WAL is checkpointed (off the event loop)
LIVE_STATES = (RINGING, PRE_ACCEPTED, ACCEPTED, VOICEMAIL)
BATCH = "*"                    # a timeline row holding several entries of one commit (``data``: their JSON list)
# SQLite's page size for a new database. A commit copies every page it changes whole (into the rollback
# journal of an in-memory database, into the WAL of a file), and a SIP call's commits change a few rows on
# each of several B-trees (its document, its calls row and their indexes, the timeline's last page): with
# 2 KiB pages a flow's commits cost ~8 % fewer instructions than with SQLite's 4 KiB, measured, although a
# call's document (2-2.7 KiB) then keeps its tail in an overflow page (a 2 KiB leaf holds at most 2013
# bytes of a row); 8 KiB cost more, and 1 KiB more than 2 KiB.
PAGE_SIZE = 2048
NUMBERS_KEPT = 20_000          # call numbers (``calls.n``) the store remembers by call id (older ones: read back)

records = Table(
    "records", metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("doc", Text, nullable=False),
    Column("live", Boolean, nullable=False, default=True, server_default=text("1"), index=True),
)

# A call's rows are found by its number (``calls.n``, given in creation order), not by its id: call ids are
# random, and an index on random keys costs more per insert the larger the table (each insert lands on a
# page of its own); call numbers only grow, so their index is appended to at its end. Entries of a call
# without a row in ``calls`` (none in wacall's own use) have no number and are found by id through a
# partial index that holds only them.
timeline = Table(
    "timeline", metadata,
    Column("seq", Integer, primary_key=True, autoincrement=True),
    Column("call_id", String(200), nullable=False),
    Column("t", Float, nullable=False),
    Column("kind", String(64), nullable=False),
    Column("data", Text, nullable=False),            # the entry's other keys, as a JSON object (BATCH: the entries)
    Column("call_n", Integer),                       # the call's number in ``calls``; NULL: it has no row there
    Index("ix_timeline_call_n", "call_n"),
    Index("ix_timeline_unnumbered", "call_id", sqlite_where=text("call_n IS NULL")),
)

calls = Table(
    "calls", metadata,
    Column("call_id", String(200), primary_key=True),
    Column("phone_number_id", String(64), nullable=False),
    Column("wa_id", String(64), nullable=False),
    Column("direction", String(32), nullable=False),
    Column("state", String(32), nullable=False),
    Column("created_at", Float, nullable=False, index=True),
    Column("accepted_at", Float),
    Column("ended_at", Float),
    Column("duration", Integer),
    Column("pulses", Integer, nullable=False, default=0),
    Column("cost", Float, nullable=False, default=0.0),
    Column("n", Integer),                            # the call's number, in creation order: its timeline's key
    Index("calls_by_number", "phone_number_id", "direction", "created_at"),
    # No index on state: a call's state moves two or three times, and each move would delete and insert its entry
    # in such an index (~25 k instructions per SIP flow, measured). Lists by a live state find their calls through
    # the records' ``live`` index instead (call_list), which only a call's start and end touch.
)

outbox = Table(
    "outbox", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("app_id", String(64), nullable=False),
    Column("url", Text, nullable=False),
    Column("field", String(64), nullable=False),
    Column("waba_id", String(64), nullable=False),
    Column("phone_number_id", String(64)),
    Column("call_id", String(200)),
    Column("body", LargeBinary, nullable=False),
    Column("created_at", Float, nullable=False),
    Column("next_attempt_at", Float, nullable=False),
    Column("attempts", Integer, nullable=False, default=0),
    Column("status", String(16), nullable=False, default="pending"),   # pending | delivered | expired
    Column("last_error", Text),
    Column("delivered_at", Float),
    Column("fault", Text),                                              # injected faults (JSON list), if any
)
# The dispatcher reads only due rows, per URL, and the next due time: never every pending row.
OUTBOX_INDEXES = (
    Index("ix_outbox_due", outbox.c.status, outbox.c.url, outbox.c.next_attempt_at),
    Index("ix_outbox_next", outbox.c.status, outbox.c.next_attempt_at),
    Index("ix_outbox_head", outbox.c.status, outbox.c.url, outbox.c.id),
    Index("outbox_by_call", outbox.c.call_id),                  # a call's deliveries, for the call view
)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("outbox_id", Integer, nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_ms", Float),
    Column("response", Text),                       # the first KiB of the receiver's answer
)

meta = Table(
    "meta", metadata,
    Column("key", String(64), primary_key=True),
    Column("value", Text, nullable=False),
)


@dataclass
class OutboxItem:
    id: int
    app_id: str
    url: str
    field: str
    waba_id: str
    phone_number_id: str | None
    call_id: str | None
    body: bytes
    created_at: float
    next_attempt_at: float
    attempts: int
    status: str
    last_error: str | None
    delivered_at: float | None
    fault: str | None = None


OUTBOX_COLUMNS = ("app_id", "url", "field", "waba_id", "phone_number_id", "call_id", "body", "created_at",
                  "next_attempt_at", "attempts", "status", "last_error", "delivered_at", "fault")
OUTBOX_DEFAULTS = {"attempts": 0, "status": "pending"}
CALL_COLUMNS = ("call_id", "phone_number_id", "wa_id", "direction", "state", "created_at", "accepted_at", "ended_at",
                "duration", "pulses", "cost", "n")
CALL_UPDATED = ("state", "accepted_at", "ended_at", "duration", "pulses", "cost")
# A call's times and duration are NULL until it connects and ends. Its row binds them as NO_VALUE instead of None,
# and the statement turns that back into NULL (NULLIF(?, '')): the sqlite3 driver binds None only after a failed
# look-up in its adapter registry (~3 k instructions per value; ~5 such values per SIP flow), a str at once.
NO_VALUE = ""
CALL_NULLABLE = ("accepted_at", "ended_at", "duration")


def as_text(name: str):
    """A JSON column's parameter: bound as the UTF-8 bytes the codec writes (a ``bytearray``: the sqlite3 driver
    binds one at once, where ``bytes`` go through a failed adapter look-up first), stored as the TEXT it is."""
    return cast(bindparam(name), Text)


def _write_sql(engine: Engine) -> dict[str, str]:
    """The hot write statements as SQL text for this engine's dialect, in positional form (compiled once)."""
    records_stmt = sqlite_insert(records)
    calls_stmt = sqlite_insert(calls)
    columns = {"records": ("kind", "key", "doc", "live"), "records_doc": ("kind", "key", "doc", "live"),
               "calls": CALL_COLUMNS, "calls_new": CALL_COLUMNS, "call_doc": ("doc", "key"),
               "call_ended": ("doc", "key"),
               "calls_update": CALL_UPDATED + ("call_id",),
               "timeline": ("call_id", "t", "kind", "data", "call_n"), "outbox": OUTBOX_COLUMNS}
    record_values = {c: as_text(c) if c == "doc" else None for c in columns["records"]}
    call_values = {c: func.nullif(bindparam(c), literal_column(repr(NO_VALUE))) if c in CALL_NULLABLE else None
                   for c in CALL_COLUMNS}
    calls_upsert = calls_stmt.values(call_values).on_conflict_do_update(
        index_elements=["call_id"], set_={name: calls_stmt.excluded[name] for name in CALL_UPDATED})
    statements = {
        "records": records_stmt.values(record_values).on_conflict_do_update(
            index_elements=["kind", "key"], set_={"doc": records_stmt.excluded.doc, "live": records_stmt.excluded.live}),
        # a record still live whose stored row (if any) is live too (Record.LEAVES_ONCE): its document only, so
        # the index on ``live`` is left alone (SQLite rewrites an index entry for every column in SET)
        "records_doc": records_stmt.values(record_values).on_conflict_do_update(
            index_elements=["kind", "key"], set_={"doc": records_stmt.excluded.doc}),
        "calls": calls_upsert,
        # a call this store has not numbered (as far as it remembers): its row with the next number, unless the
        # call has a row already (then that row and its number stay, and commit() upserts it: _renumbered)
        "calls_new": calls_stmt.values(call_values).on_conflict_do_nothing(index_elements=["call_id"]),
        # rows this store wrote and that are still there (a live call's, ``Store._indexed``): UPDATE, not INSERT
        # ON CONFLICT, which first builds and checks the whole row as an insert (~3 k instructions a row)
        "call_doc": update(records).where(and_(records.c.kind == literal_column(repr(Call.KIND)),
                                               records.c.key == bindparam("key"))).values(doc=as_text("doc")),
        # (a live call's rows, as above, as the call ends: its document and its live flag)
        "call_ended": update(records).where(and_(records.c.kind == literal_column(repr(Call.KIND)),
                                                 records.c.key == bindparam("key"))).values(doc=as_text("doc"),
                                                                                            live=literal_column("0")),
        "calls_update": update(calls).where(calls.c.call_id == bindparam("call_id")).values(
            {c: call_values[c] if c in CALL_NULLABLE else bindparam(c) for c in CALL_UPDATED}),
        "timeline": timeline.insert().values({c: as_text(c) if c == "data" else None for c in columns["timeline"]}),
        "outbox": outbox.insert().values({c: None for c in OUTBOX_COLUMNS}),
    }
    out = {}
    for name, stmt in statements.items():
        compiled = stmt.compile(dialect=engine.dialect)
        if list(compiled.positiontup or ()) != list(columns[name]):    # named parameters: not this store's driver
            raise RuntimeError(f"the store needs a positional-parameter DB-API driver, not {engine.dialect.name}")
        out[name] = compiled.string
    return out


def database_url(path: str) -> str:
    if "://" in path:
        return path
    return "sqlite://" if path == ":memory:" else f"sqlite:///{path}"



def _call_row(c: Call, n: int) -> tuple:
    """A call's row in the calls index (the columns of ``CALL_COLUMNS``, in order, NO_VALUE for NULL in those of
    ``CALL_NULLABLE``); ``n``: its number."""
    accepted_at, ended_at = c.accepted_at, c.ended_at
    duration = None if ended_at is None else c.duration          # (a call's duration is known once it ended)
    return (c.id, c.phone_number_id, c.wa_id, c.direction, c.state, c.created_at,
            NO_VALUE if accepted_at is None else accepted_at, NO_VALUE if ended_at is None else ended_at,
            NO_VALUE if duration is None else duration, c.pulses, c.cost, n)


def _pragmas(journal_mode: str, synchronous: str):
    """A connection listener: a new database's pages are PAGE_SIZE bytes (an existing one keeps its own; set
    before WAL, which fixes it: see PAGE_SIZE), then its journal mode and syncs."""
    def listener(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        for pragma in (f"page_size={PAGE_SIZE}", f"journal_mode={journal_mode}", f"synchronous={synchronous}"):
            cursor.execute(f"PRAGMA {pragma}")
        cursor.close()
    return listener


class Store:
    def __init__(self, path: str = ":memory:") -> None:
        url = database_url(path)
        self._memory = url == "sqlite://"
        self.engine: Engine = self._memory_engine() if self._memory else self._engine(url)
        metadata.create_all(self.engine)
        self._sql = _write_sql(self.engine)
        self._writer = None           # the DB-API connection commit() writes with, taken from the pool once
        self._cursor = None           # commit()'s cursor on it, kept between commits
        self._indexed: dict[str, tuple] = {}   # live call id -> its row in the calls index, as committed
        self._numbers: dict[str, int] = {}     # call id -> its number (calls.n), the most recent NUMBERS_KEPT
        self._last_number = 0                  # the highest number given (read back at start)
        self._checkpointer: threading.Thread | None = None
        self._closing = threading.Event()
        self._upgrade()
        with self.engine.connect() as conn:
            self._last_number = conn.execute(select(func.coalesce(func.max(calls.c.n), 0))).scalar_one()
        self._migrate()

    @staticmethod
    def _engine(url: str) -> Engine:
        engine = create_engine(url)
        if url.startswith("sqlite"):
            event.listen(engine, "connect", _pragmas("WAL", "NORMAL"))
        return engine

    @staticmethod
    def _memory_engine() -> Engine:
        """``--db :memory:``: SQLite's private temporary database (an empty file name), not its ``:memory:`` one.

        A ``:memory:`` database keeps every page in its page cache, and each commit that grows it scans that
        cache (``pcache1TruncateUnsafe``, the one hot loop of libsqlite3 in ``perf`` on a loaded server), so a
        commit costs more the more it holds: measured with one 2.5 KB insert and its commit, 3 µs empty, 24 µs
        at 20 000 rows, 163 µs at 60 000. A temporary database keeps a bounded cache in memory and spills the
        rest to a file SQLite unlinks at once (nothing is left behind, even after a kill -9); with its journal
        in memory and no syncs (nothing of it outlives the process) its commits stayed at 7-8 µs from 0 to
        60 000 rows, with no size cap."""
        engine = create_engine("sqlite://", poolclass=StaticPool,
                               creator=lambda: sqlite3.connect("", check_same_thread=False))
        event.listen(engine, "connect", _pragmas("MEMORY", "OFF"))
        return engine

    def _upgrade(self) -> None:
        """Bring a database written by an older wacall up to this schema (columns and indexes added since)."""
        with self.engine.begin() as conn:
            for table, column in (("outbox", "fault"), ("attempts", "response")):
                if column not in {c["name"] for c in inspect(conn).get_columns(table)}:
                    conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {column} TEXT"))
            for index in OUTBOX_INDEXES:                         # databases from before the indexes
                index.create(conn, checkfirst=True)
            if "n" not in {c["name"] for c in inspect(conn).get_columns("calls")}:
                # calls numbered in the order their rows were written, and the timeline found by number
                conn.execute(text("ALTER TABLE calls ADD COLUMN n INTEGER"))
                conn.execute(text("UPDATE calls SET n = rowid"))
            if "call_n" not in {c["name"] for c in inspect(conn).get_columns("timeline")}:
                conn.execute(text("ALTER TABLE timeline ADD COLUMN call_n INTEGER"))
                conn.execute(text("UPDATE timeline SET call_n = (SELECT n FROM calls WHERE calls.call_id = "
                                  "timeline.call_id)"))
                conn.execute(text("DROP INDEX IF EXISTS ix_timeline_call_id"))
            for index in timeline.indexes:
                index.create(conn, checkfirst=True)
            conn.execute(text("DROP INDEX IF EXISTS calls_by_state"))   # (see calls: live lists go by records.live)

    def _migrate(self) -> None:
        """A database from before the working set and the timeline table: add ``live``, move every call's
        timeline out of its document into ``timeline``, and index the calls."""
        if "live" in {column["name"] for column in inspect(self.engine).get_columns("records")}:
            return
        with self.engine.begin() as conn:
            conn.execute(text("ALTER TABLE records ADD COLUMN live BOOLEAN NOT NULL DEFAULT 1"))
            conn.execute(text("CREATE INDEX IF NOT EXISTS ix_records_live ON records (live)"))
            for row in conn.execute(select(records.c.kind, records.c.key, records.c.doc)
                                    .where(records.c.kind.in_(["call", "message"]))).all():
                doc = codec.loads(row.doc)
                if row.kind == "message":
                    live = doc.get("deadline") is not None
                else:
                    entries = doc.pop("timeline", None) or []
                    call = Call.from_doc(doc)
                    live = call.live
                    cursor = conn.connection.dbapi_connection.cursor()
                    self._index_calls(cursor, [call])
                    self._append_notes(cursor, [(call.id, entry) for entry in entries if isinstance(entry, dict)])
                    cursor.close()
                conn.execute(update(records).where(and_(records.c.kind == row.kind, records.c.key == row.key))
                             .values(doc=codec.dumps(doc), live=live))

    def _open_writer(self):
        """The DB-API connection the hot paths write and read with. For a database file its WAL is
        checkpointed by a thread (``_checkpoints``) instead of inside a commit on the event loop: SQLite's
        automatic checkpoint copies pages into the database and syncs it, a stall every ~1000 pages."""
        writer = self._writer = self.engine.raw_connection()
        path = self.engine.url.database if self.engine.url.get_backend_name() == "sqlite" else None
        if path and not self._memory and self._checkpointer is None:
            cursor = writer.cursor()
            cursor.execute("PRAGMA wal_autocheckpoint=0")
            cursor.close()
            self._checkpointer = threading.Thread(target=self._checkpoints, args=(path,), name="wacall-wal-checkpoint",
                                                  daemon=True)
            self._checkpointer.start()
        return writer

    def _checkpoints(self, path: str) -> None:
        """Checkpoint the WAL (PASSIVE: never waits for the writer) once a second until the store closes."""
        conn = sqlite3.connect(path, check_same_thread=False)
        try:
            while not self._closing.wait(CHECKPOINT_SECONDS):
                try:
                    conn.execute("PRAGMA wal_checkpoint(PASSIVE)")
                except sqlite3.Error:
                    continue           # busy or locked: the next round does it
        finally:
            conn.close()

    def close(self) -> None:
        self._closing.set()
        if self._checkpointer is not None:
            self._checkpointer.join()
            self._checkpointer = None
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        if self._writer is not None:
            self._writer.close()
            self._writer = None
        self.engine.dispose()

    # -- records ------------------------------------------------------------------------------
    def has_records(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(records.c.key).limit(1)).first() is not None

    def load_live_records(self) -> Iterator[tuple[str, dict]]:
        """The working set: every record except ended calls and done messages."""
        with self.engine.connect() as conn:
            for row in conn.execute(select(records.c.kind, records.c.doc).where(records.c.live)):
                yield row.kind, codec.loads(row.doc)

    def commit(self, dirty: Iterable[Record], new_outbox: Iterable[dict],
               notes: Iterable[tuple[str, dict]] = ()) -> list[int]:
        """Write changed records and new timeline entries, and enqueue webhooks, atomically; return the
        new outbox ids.

        This runs once per state change (several times per SIP call), so it skips SQLAlchemy's statement
        building: the statements are fixed SQL strings (``_write_sql``, compiled once per store for its
        dialect) executed with ``executemany`` on a DB-API connection the store keeps for its writes
        (``_writer``), in one transaction: at most one statement per table. Each record is encoded once
        (its fields as they are, ``Record.fields_view``), in the one pass that also finds the calls whose
        row in the calls index moved."""
        ids: list[int] = []
        sql = self._sql
        writer = (self._writer or self._open_writer()).dbapi_connection   # the driver's own (no pool proxy)
        cursor = self._cursor or writer.cursor()    # kept for the next commit (not inside _transaction: once
        self._cursor = None                         # per state change, a generator context manager shows)
        indexed: list[tuple] = []
        try:
            docs, moved = [], []            # documents of records still live; of those whose ``live`` may change
            call_docs, upserted, updated = [], [], []   # a live call's document and calls rows (see below)
            ended = []                      # the document of a call this store wrote while it was live, now ended
            inserted = []                   # calls rows of calls not numbered yet (calls_new)
            dumps, known = codec.dumps_stored, self._indexed
            for r in dirty:
                # ``live`` as the int SQLite stores: a bool is not an exact int, and the driver then looks for an
                # adapter (its microprotocols registry) before binding it as one, ~3 k instructions per value
                live = 1 if r.live else 0
                doc = bytearray(dumps(r.fields_view()))
                if isinstance(r, Call):
                    stored = known.get(r.id)
                    if stored is not None:        # a live call whose rows this store wrote: UPDATE them
                        row = _call_row(r, stored[-1])
                        if row != stored:         # its state, times or price moved (not only its dialog/media)
                            indexed.append(row)
                            updated.append((row[4],) + row[6:11] + (row[0],))   # CALL_UPDATED, then call_id
                        (call_docs if live else ended).append((doc, r.key))
                        continue
                    else:
                        n = self._numbers.get(r.id)
                        if n is None:             # (a new call, most likely: no look-up before its insert)
                            n = self._last_number = self._last_number + 1
                            row = _call_row(r, n)
                            inserted.append(row)
                        else:
                            row = _call_row(r, n)
                            upserted.append(row)
                        indexed.append(row)
                (docs if live and r.LEAVES_ONCE else moved).append((r.KIND, r.key, doc, live))
            if call_docs:
                cursor.executemany(sql["call_doc"], call_docs)
                if cursor.rowcount != len(call_docs):    # a row gone behind the store's back: write them whole
                    docs.extend((Call.KIND, key, doc, 1) for doc, key in call_docs)
            if ended:
                cursor.executemany(sql["call_ended"], ended)
                if cursor.rowcount != len(ended):        # (as above)
                    moved.extend((Call.KIND, key, doc, 0) for doc, key in ended)
            if docs:
                cursor.executemany(sql["records_doc"], docs)
            if moved:
                cursor.executemany(sql["records"], moved)
            if updated:
                cursor.executemany(sql["calls_update"], updated)
                if cursor.rowcount != len(updated):      # (as above)
                    ids_updated = {u[-1] for u in updated}
                    upserted.extend(row for row in indexed if row[0] in ids_updated)
            if inserted:
                cursor.executemany(sql["calls_new"], inserted)
                if cursor.rowcount != len(inserted):     # some had a row already: theirs, with its number
                    upserted.extend(self._renumbered(cursor, inserted, indexed))
                for row in inserted:
                    self._remember(row[0], row[-1])
            if upserted:
                cursor.executemany(sql["calls"], upserted)
            if notes:
                self._append_notes(cursor, notes)
            for row in new_outbox:
                cursor.execute(sql["outbox"], self._outbox_params(row))
                ids.append(cursor.lastrowid)
            writer.commit()
        except BaseException:
            writer.rollback()
            cursor.close()
            raise
        self._cursor = cursor
        for row in indexed:                       # committed: what the calls index holds now
            if row[4] in LIVE_STATES:
                self._indexed[row[0]] = row
            else:
                self._indexed.pop(row[0], None)
        return ids

    def _number(self, cursor, call_id: str, *, new: bool = False) -> int | None:
        """``call_id``'s number (``calls.n``): remembered, else read from its row in ``calls``, else (``new``:
        its row is about to be written) the next one. None for a call with no row there (not ``new``)."""
        n = self._numbers.get(call_id)
        if n is not None:
            return n
        cursor.execute("SELECT n FROM calls WHERE call_id = ?", (call_id,))
        found = cursor.fetchone()
        if found is not None and found[0] is not None:
            n = found[0]
        elif new:
            n = self._last_number = self._last_number + 1
        else:
            return None
        self._remember(call_id, n)
        return n

    def _remember(self, call_id: str, n: int) -> None:
        if len(self._numbers) >= NUMBERS_KEPT:           # forget the oldest half (dicts keep insertion order)
            for old in list(islice(self._numbers, NUMBERS_KEPT // 2)):
                del self._numbers[old]
        self._numbers[call_id] = n

    def _renumbered(self, cursor, inserted: list[tuple], indexed: list[tuple]) -> list[tuple]:
        """After calls_new: the rows of ``inserted`` whose call had a row already (not inserted), given that row's
        number, to be upserted; ``inserted`` and ``indexed`` take the renumbered rows in their place."""
        again = []
        for i, row in enumerate(inserted):
            cursor.execute("SELECT n FROM calls WHERE call_id = ?", (row[0],))
            found = cursor.fetchone()[0]
            if found is not None and found != row[-1]:   # (None: a row from before numbers; it keeps the new one)
                renumbered = inserted[i] = row[:-1] + (found,)
                indexed[indexed.index(row)] = renumbered
                again.append(renumbered)
            elif found is None:
                again.append(row)
        return again

    @contextmanager
    def _transaction(self) -> Iterator:
        """A cursor on the writer connection; committed at the end, rolled back on any exception."""
        writer = self._writer or self._open_writer()
        cursor = writer.cursor()
        try:
            yield cursor
            writer.commit()
        except BaseException:
            writer.rollback()
            raise
        finally:
            cursor.close()

    @staticmethod
    def _outbox_params(row: dict) -> tuple:
        return tuple(row.get(name, OUTBOX_DEFAULTS.get(name)) for name in OUTBOX_COLUMNS)

    def _index_calls(self, cursor, changed: list[Call]) -> None:
        if changed:
            cursor.executemany(self._sql["calls"], [_call_row(c, self._number(cursor, c.id, new=True)) for c in changed])

    def _append_notes(self, cursor, notes: Iterable[tuple[str, dict]]) -> None:
        """A commit's timeline entries: a call's one entry as a row of its own; a call's several entries (a SIP
        message, the state change it caused and the answer to it) as one row of kind ``BATCH`` holding them
        as a JSON list, in order: one row, one index entry and one encoding instead of one per entry."""
        by_call: dict[str, list[dict]] = {}
        for call_id, entry in notes:
            entries = by_call.get(call_id)
            if entries is None:
                by_call[call_id] = [entry]
            else:
                entries.append(entry)
        rows = []
        dumps = codec.dumps_stored
        for call_id, entries in by_call.items():
            n = self._number(cursor, call_id)
            if len(entries) == 1:
                entry = entries[0]
                data = entry.copy()               # the entry's other keys: t and kind have columns
                del data["t"], data["kind"]
                rows.append((call_id, entry["t"], entry["kind"], bytearray(dumps(data)), n))
            else:
                rows.append((call_id, entries[0]["t"], BATCH, bytearray(dumps(entries)), n))
        cursor.executemany(self._sql["timeline"], rows)

    # -- what the platform reads back (wacall.domain.state.Archive) and the inspector lists --------------
    def load_record(self, kind: str, key: str) -> dict | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(records.c.doc).where(and_(records.c.kind == kind, records.c.key == key))).first()
        return codec.loads(row.doc) if row else None

    def call_totals(self, phone_number_ids: list[str], direction: str, start: float, end: float) -> dict:
        query = select(func.count(), func.count(calls.c.duration), func.coalesce(func.sum(calls.c.duration), 0),
                       func.coalesce(func.sum(calls.c.pulses), 0), func.coalesce(func.sum(calls.c.cost), 0.0)).where(
            calls.c.phone_number_id.in_(phone_number_ids), calls.c.direction == direction,
            calls.c.created_at >= start, calls.c.created_at < end)
        with self.engine.connect() as conn:
            count, completed, duration, pulses, cost = conn.execute(query).one()
        return {"count": count, "completed_count": completed, "total_duration": int(duration), "pulses": int(pulses),
                "cost": float(cost)}

    def bic_initiations_since(self, since: float) -> list[tuple[str, float]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(calls.c.phone_number_id, calls.c.created_at).where(
                calls.c.direction == BUSINESS_INITIATED, calls.c.created_at > since).order_by(calls.c.created_at))
            return [(row.phone_number_id, row.created_at) for row in rows]

    def bic_connected_since(self, since: float) -> list[tuple[str, str, float]]:
        with self.engine.connect() as conn:
            rows = conn.execute(select(calls.c.phone_number_id, calls.c.wa_id, calls.c.accepted_at).where(
                calls.c.direction == BUSINESS_INITIATED, calls.c.accepted_at > since).order_by(calls.c.accepted_at))
            return [(row.phone_number_id, row.wa_id, row.accepted_at) for row in rows]

    # a call's rows: by its number (the index on call_n), and any noted before it had one (the partial index)
    _TIMELINE_SELECT = text("SELECT seq, t, kind, data FROM timeline WHERE call_n = "
                            "(SELECT n FROM calls WHERE call_id = :call_id) "
                            "UNION ALL SELECT seq, t, kind, data FROM timeline WHERE call_n IS NULL AND call_id = :call_id "
                            "ORDER BY 1")

    def timeline(self, call_id: str) -> list[dict]:
        """A call's timeline entries in the order they were noted."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._TIMELINE_SELECT, {"call_id": call_id})
            out: list[dict] = []
            for _seq, t, kind, data in rows:
                if kind == BATCH:
                    out.extend(codec.loads(data))
                else:
                    out.append({"t": t, "kind": kind, **codec.loads(data)})
            return out

    def call_list(self, *, limit: int, before: float | None = None, state: str | None = None) -> list[dict]:
        """The most recent ``limit`` calls (created before ``before``), oldest first; ``state``: those in that
        state, or ``live``: in any of LIVE_STATES."""
        with self.engine.connect() as conn:
            rows = conn.execute(self._call_list_query(limit, before, state)).all()
        return [dict(row._mapping) for row in reversed(rows)]

    @staticmethod
    def _call_list_query(limit: int, before: float | None, state: str | None):
        """call_list's query. Calls in a live state are found among the live records (their index; every such
        call's record is live), not by a walk over every call (calls have no index on state: see ``calls``)."""
        query = select(calls.c.call_id, calls.c.state, calls.c.direction, calls.c.wa_id, calls.c.phone_number_id,
                       calls.c.created_at).order_by(calls.c.created_at.desc(), calls.c.call_id.desc()).limit(limit)
        if before is not None:
            query = query.where(calls.c.created_at < before)
        if state == "live" or state in LIVE_STATES:
            live_calls = select(records.c.key).where(records.c.live, records.c.kind == Call.KIND)
            query = query.where(calls.c.call_id.in_(live_calls),
                                calls.c.state.in_(LIVE_STATES) if state == "live" else calls.c.state == state)
        elif state is not None:
            # ENDED (most calls): SQLite's likelihood() says so, and the planner walks the calls newest first until
            # ``limit`` are found (without it, it would read every call and sort those that match)
            query = query.where(func.likelihood(calls.c.state == state, literal_column("0.9")))
        return query

    def wipe(self) -> None:
        self._indexed.clear()
        self._numbers.clear()
        with self.engine.begin() as conn:
            for table in (records, outbox, attempts, meta, timeline, calls):
                conn.execute(delete(table))

    # -- meta ---------------------------------------------------------------------------------
    def get_meta(self, key: str) -> str | None:
        with self.engine.connect() as conn:
            row = conn.execute(select(meta.c.value).where(meta.c.key == key)).first()
            return row.value if row else None

    def set_meta(self, key: str, value: str) -> None:
        with self.engine.begin() as conn:
            stmt = sqlite_insert(meta).values(key=key, value=value)
            conn.execute(stmt.on_conflict_do_update(index_elements=["key"], set_={"value": value}))

    # -- outbox -------------------------------------------------------------------------------
    def pending_urls(self) -> set[str]:
        """Every URL with something left to deliver (read once, when the dispatcher starts)."""
        with self.engine.connect() as conn:
            return set(conn.execute(select(outbox.c.url).where(outbox.c.status == "pending").distinct()).scalars())

    # The dispatcher asks these on every wake-up and after every attempt: fixed SQL on the writer connection
    # (see commit()), read back into OutboxItem by position.
    _OUTBOX_SELECT = "SELECT id, " + ", ".join(OUTBOX_COLUMNS) + " FROM outbox"

    def _rows(self, sql: str, params: tuple = ()) -> list[tuple]:
        writer = self._writer or self._open_writer()
        cursor = writer.cursor()
        try:
            cursor.execute(sql, params)
            return cursor.fetchall()
        finally:
            cursor.close()

    def due_outbox(self, url: str, now: float, *, exclude: Iterable[int] = (), limit: int = 10) -> list[OutboxItem]:
        """Up to ``limit`` pending rows for ``url`` whose attempt is due, earliest first (index range scan)."""
        exclude = set(exclude)
        rows = self._rows(self._OUTBOX_SELECT + " WHERE status = 'pending' AND url = ? AND next_attempt_at <= ? "
                          "ORDER BY next_attempt_at, id LIMIT ?", (url, now, limit + len(exclude)))
        return [OutboxItem(*row) for row in rows if row[0] not in exclude][:limit]

    def oldest_pending(self, url: str) -> OutboxItem | None:
        """The head of ``url``'s queue, for the opt-in ordered delivery mode."""
        rows = self._rows(self._OUTBOX_SELECT + " WHERE status = 'pending' AND url = ? ORDER BY id LIMIT 1", (url,))
        return OutboxItem(*rows[0]) if rows else None

    def next_attempt_after(self, now: float) -> float | None:
        """When the next pending attempt falls due (the dispatcher sleeps until then)."""
        return self._rows("SELECT min(next_attempt_at) FROM outbox WHERE status = 'pending' AND next_attempt_at > ?",
                          (now,))[0][0]

    def record_attempts(self, outcomes: list[tuple[int, dict]]) -> None:
        """Record delivery attempts, each (outbox id, {at, status_code, error, duration_ms, response, delivered,
        next_attempt_at, expired}), in one transaction: the dispatcher's attempts of one loop turn together."""
        with self._transaction() as cursor:
            cursor.executemany("INSERT INTO attempts (outbox_id, at, status_code, error, duration_ms, response) "
                               "VALUES (?, ?, ?, ?, ?, ?)",
                               [(item_id, o["at"], o["status_code"], o["error"], o["duration_ms"], o.get("response"))
                                for item_id, o in outcomes])
            delivered = [(o["error"], o["at"], item_id) for item_id, o in outcomes if o["delivered"]]
            expired = [(o["error"], item_id) for item_id, o in outcomes if not o["delivered"] and o["expired"]]
            retried = [(o["error"], o["next_attempt_at"], item_id) for item_id, o in outcomes
                       if not o["delivered"] and not o["expired"]]
            if delivered:
                cursor.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ?, status = 'delivered', "
                                   "delivered_at = ? WHERE id = ?", delivered)
            if expired:
                cursor.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ?, status = 'expired' "
                                   "WHERE id = ?", expired)
            if retried:
                cursor.executemany("UPDATE outbox SET attempts = attempts + 1, last_error = ?, next_attempt_at = ? "
                                   "WHERE id = ?", retried)

    def journal(self, *, call_id: str | None = None, limit: int = 200, outbox_id: int | None = None) -> list[dict]:
        with self.engine.connect() as conn:
            query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
            if call_id:
                query = query.where(outbox.c.call_id == call_id)
            if outbox_id is not None:
                query = query.where(outbox.c.id == outbox_id)
            items = [dict(row._mapping) for row in conn.execute(query)]
            ids = [i["id"] for i in items]
            tries: dict[int, list[dict]] = {}
            if ids:
                for row in conn.execute(select(attempts).where(attempts.c.outbox_id.in_(ids))
                                        .order_by(attempts.c.id)):
                    tries.setdefault(row.outbox_id, []).append(
                        {"at": row.at, "status_code": row.status_code, "error": row.error,
                         "duration_ms": row.duration_ms, "response": row.response})
        for item in items:
            item["body"] = codec.loads(item["body"])
            item["fault"] = codec.loads(item["fault"]) if item["fault"] else None
            item["attempt_log"] = tries.get(item["id"], [])
        return list(reversed(items))
