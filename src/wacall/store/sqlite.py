"""State in an embedded SQLite database (SQLAlchemy Core; a Postgres URL works the same way).

Three tables: ``records`` holds every domain object as a JSON document, ``outbox`` the webhook
deliveries that have not succeeded yet (and those that did, for the journal), ``attempts`` every
delivery attempt, and ``meta`` small values such as the virtual clock's offset. A domain operation's
records and the webhooks it caused are written in one transaction, so a crash never loses one
without the other.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Iterator

from sqlalchemy import (Column, Float, Index, Integer, LargeBinary, MetaData, String, Table, Text, create_engine,
                        delete, event, func, inspect, select, text, update)
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.pool import StaticPool

from .. import codec
from ..domain.model import Record

metadata = MetaData()

records = Table(
    "records", metadata,
    Column("kind", String(32), primary_key=True),
    Column("key", String(200), primary_key=True),
    Column("doc", Text, nullable=False),
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
)

attempts = Table(
    "attempts", metadata,
    Column("id", Integer, primary_key=True, autoincrement=True),
    Column("outbox_id", Integer, nullable=False, index=True),
    Column("at", Float, nullable=False),
    Column("status_code", Integer),
    Column("error", Text),
    Column("duration_ms", Float),
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


def database_url(path: str) -> str:
    if "://" in path:
        return path
    return "sqlite://" if path == ":memory:" else f"sqlite:///{path}"


class Store:
    def __init__(self, path: str = ":memory:") -> None:
        url = database_url(path)
        kwargs: dict = {}
        if url == "sqlite://":
            kwargs = {"poolclass": StaticPool, "connect_args": {"check_same_thread": False}}
        self.engine: Engine = create_engine(url, **kwargs)
        if url.startswith("sqlite"):
            event.listen(self.engine, "connect", self._sqlite_pragmas)
        metadata.create_all(self.engine)
        self._upgrade()

    def _upgrade(self) -> None:
        """Bring a database written by an older wacall up to this schema (columns and indexes added since)."""
        with self.engine.begin() as conn:
            if "fault" not in {c["name"] for c in inspect(conn).get_columns("outbox")}:
                conn.execute(text("ALTER TABLE outbox ADD COLUMN fault TEXT"))
            for index in OUTBOX_INDEXES:
                index.create(conn, checkfirst=True)

    @staticmethod
    def _sqlite_pragmas(dbapi_connection, _record) -> None:
        cursor = dbapi_connection.cursor()
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute("PRAGMA synchronous=NORMAL")
        cursor.close()

    def close(self) -> None:
        self.engine.dispose()

    # -- records ------------------------------------------------------------------------------
    def load_records(self) -> Iterator[tuple[str, dict]]:
        with self.engine.connect() as conn:
            for row in conn.execute(select(records.c.kind, records.c.doc)):
                yield row.kind, codec.loads(row.doc)

    def has_records(self) -> bool:
        with self.engine.connect() as conn:
            return conn.execute(select(records.c.key).limit(1)).first() is not None

    def commit(self, dirty: Iterable[Record], new_outbox: Iterable[dict]) -> list[int]:
        """Write changed records and enqueue webhooks atomically; return the new outbox ids."""
        ids: list[int] = []
        with self.engine.begin() as conn:
            self._save(conn, dirty)
            for row in new_outbox:
                ids.append(conn.execute(outbox.insert().values(**row)).inserted_primary_key[0])
        return ids

    @staticmethod
    def _save(conn: Connection, dirty: Iterable[Record]) -> None:
        rows = [{"kind": r.KIND, "key": r.key, "doc": codec.dumps(r.fields_view())} for r in dirty]
        if not rows:
            return
        stmt = sqlite_insert(records).values(rows)
        conn.execute(stmt.on_conflict_do_update(index_elements=["kind", "key"], set_={"doc": stmt.excluded.doc}))

    def wipe(self) -> None:
        with self.engine.begin() as conn:
            for table in (records, outbox, attempts, meta):
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

    def due_outbox(self, url: str, now: float, *, exclude: Iterable[int] = (), limit: int = 10) -> list[OutboxItem]:
        """Up to ``limit`` pending rows for ``url`` whose attempt is due, earliest first (index range scan)."""
        query = (select(outbox).where(outbox.c.status == "pending", outbox.c.url == url,
                                      outbox.c.next_attempt_at <= now)
                 .order_by(outbox.c.next_attempt_at, outbox.c.id).limit(limit))
        exclude = list(exclude)
        if exclude:
            query = query.where(outbox.c.id.not_in(exclude))
        with self.engine.connect() as conn:
            return [OutboxItem(**row._mapping) for row in conn.execute(query)]

    def oldest_pending(self, url: str) -> OutboxItem | None:
        """The head of ``url``'s queue, for the opt-in ordered delivery mode."""
        with self.engine.connect() as conn:
            row = conn.execute(select(outbox).where(outbox.c.status == "pending", outbox.c.url == url)
                               .order_by(outbox.c.id).limit(1)).first()
            return OutboxItem(**row._mapping) if row else None

    def next_attempt_after(self, now: float) -> float | None:
        """When the next pending attempt falls due (the dispatcher sleeps until then)."""
        with self.engine.connect() as conn:
            return conn.execute(select(func.min(outbox.c.next_attempt_at))
                                .where(outbox.c.status == "pending", outbox.c.next_attempt_at > now)).scalar()

    def record_attempt(self, item_id: int, *, at: float, status_code: int | None, error: str | None,
                       duration_ms: float, delivered: bool, next_attempt_at: float | None, expired: bool) -> None:
        with self.engine.begin() as conn:
            conn.execute(attempts.insert().values(outbox_id=item_id, at=at, status_code=status_code, error=error,
                                                  duration_ms=duration_ms))
            values: dict = {"attempts": outbox.c.attempts + 1, "last_error": error}
            if delivered:
                values.update(status="delivered", delivered_at=at)
            elif expired:
                values.update(status="expired")
            else:
                values.update(next_attempt_at=next_attempt_at)
            conn.execute(update(outbox).where(outbox.c.id == item_id).values(**values))

    def journal(self, *, call_id: str | None = None, limit: int = 200) -> list[dict]:
        with self.engine.connect() as conn:
            query = select(outbox).order_by(outbox.c.id.desc()).limit(limit)
            if call_id:
                query = query.where(outbox.c.call_id == call_id)
            items = [dict(row._mapping) for row in conn.execute(query)]
            ids = [i["id"] for i in items]
            tries: dict[int, list[dict]] = {}
            if ids:
                for row in conn.execute(select(attempts).where(attempts.c.outbox_id.in_(ids))
                                        .order_by(attempts.c.id)):
                    tries.setdefault(row.outbox_id, []).append(
                        {"at": row.at, "status_code": row.status_code, "error": row.error,
                         "duration_ms": row.duration_ms})
        for item in items:
            item["body"] = codec.loads(item["body"])
            item["fault"] = codec.loads(item["fault"]) if item["fault"] else None
            item["attempt_log"] = tries.get(item["id"], [])
        return list(reversed(items))
