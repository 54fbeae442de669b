"""``--db :memory:`` as SQLite's ``memdb`` VFS: an in-memory database whose commits cost the same at any size.

SQLite's own ``:memory:`` database (3.40 here) keeps its pages in the page cache, and each commit that grows it
scans that cache (``pcache1TruncateUnsafe``, the one hot loop in a ``perf`` profile of a loaded wacall), so a
commit costs more the more the database holds. Measured (2.5 KB rows, one insert and its commit): 3 µs on an
empty database, 24 µs at 20 000 rows, 163 µs at 60 000; in a SIP flow benchmark a wacall with ``:memory:`` got
slower minute by minute. The ``memdb`` VFS (the one behind ``sqlite3_deserialize``) keeps the database in one
buffer instead; its commits stayed at ~5 µs from 0 to 60 000 rows.

A memdb database is capped at 1 GiB (SQLite's ``SQLITE_MEMDB_DEFAULT_MAXSIZE``), ~100 000 SIP calls' history:
``lift_limit`` raises the cap with ``SQLITE_FCNTL_SIZE_LIMIT``. Python's ``sqlite3`` has no ``file_control``
before 3.12's limits API (and none for this op), so it is called through ctypes on the library the ``sqlite3``
module uses, with the connection's ``sqlite3 *`` read from CPython's ``pysqlite_Connection`` (its first field
after the object header, in every CPython since 2.5) and checked by the database's name before use. Where that
is not possible (another Python, a statically linked module without the symbols) the store falls back to plain
``:memory:`` (``Store``).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import sys

LIMIT = 1 << 40                  # bytes: what the machine's memory allows, in effect
SQLITE_FCNTL_SIZE_LIMIT = 36
_names = itertools.count(1)


def new_url() -> tuple[str, str]:
    """A SQLAlchemy URL for a new memdb database of this process, and its name (``sqlite3_db_filename``'s)."""
    name = f"/wacall-{os.getpid()}-{next(_names)}"     # (a leading "/": one database for the process's connections)
    return f"sqlite:///file:{name}?vfs=memdb&uri=true", name


def lift_limit(connection, name: str) -> bool:
    """Raise the size cap of ``connection``'s (a ``sqlite3.Connection``) memdb database ``name`` to ``LIMIT``;
    False where that cannot be done safely."""
    return size_limit(connection, name, LIMIT) == LIMIT


def size_limit(connection, name: str, limit: int = -1) -> int | None:
    """Set the size cap of ``connection``'s memdb database ``name`` to ``limit`` bytes (-1: leave it) and return
    the cap; None where it cannot be reached safely."""
    if sys.implementation.name != "cpython":
        return None
    try:
        import _sqlite3
        library = ctypes.CDLL(_sqlite3.__file__)          # (dlsym then finds the libsqlite3 it links to)
        file_control, db_filename = library.sqlite3_file_control, library.sqlite3_db_filename
    except (ImportError, OSError, AttributeError):
        return None
    db_filename.restype, db_filename.argtypes = ctypes.c_char_p, [ctypes.c_void_p, ctypes.c_char_p]
    file_control.restype = ctypes.c_int
    file_control.argtypes = [ctypes.c_void_p, ctypes.c_char_p, ctypes.c_int, ctypes.c_void_p]
    db = ctypes.c_void_p.from_address(id(connection) + object.__basicsize__).value
    if not db or db_filename(db, b"main") != name.encode():
        return None
    value = ctypes.c_int64(limit)
    if file_control(db, b"main", SQLITE_FCNTL_SIZE_LIMIT, ctypes.byref(value)) != 0:
        return None
    return value.value
