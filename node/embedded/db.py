"""The node's one SQLite file: schema, connection settings, and noticing other writers.

The PBX and the ``hivepbx`` CLI open the same file from two processes. WAL lets the CLI
write while the PBX reads; ``PRAGMA data_version`` changes only when *another* connection
commits, so polling it tells the PBX, for the price of one cheap statement, that its
in-memory views are stale. Its own writes never trigger a reload.

The stores call sqlite3 synchronously from the event loop: the file is local, statements
touch a handful of rows by key and take microseconds, hot reads are served from memory,
and one connection on one thread keeps writes ordered. A thread hop would cost more than
the statement. The exception is a lock held by another process (a CLI write): waits are
bounded by ``busy_timeout``.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from collections.abc import Callable, Iterator
from pathlib import Path

DB_FILENAME = "hivepbx.db"
SCHEMA_VERSION = 2
#: how often hot reads look for changes made by another process, seconds
POLL_INTERVAL = 0.5
#: how long a write waits for another process's transaction, milliseconds
BUSY_TIMEOUT_MS = 5000

# Ids are AUTOINCREMENT so an id is never reused: CDRs outlive their tenant and must never
# become visible to a later tenant that happens to get the same id.
_SCHEMA = """
CREATE TABLE tenants (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    name          TEXT    NOT NULL UNIQUE COLLATE NOCASE,
    domain        TEXT    NOT NULL UNIQUE,
    max_calls     INTEGER NOT NULL DEFAULT 0,
    ring_timeout  INTEGER NOT NULL DEFAULT 30,
    timezone      TEXT    NOT NULL DEFAULT 'UTC',
    created_at    REAL    NOT NULL
);
CREATE TABLE extensions (
    id                 INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id          INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    number             TEXT    NOT NULL,
    password           TEXT    NOT NULL,
    display_name       TEXT    NOT NULL DEFAULT '',
    callerid_number    TEXT    NOT NULL DEFAULT '',
    voicemail_enabled  INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, number)
);
CREATE TABLE dids (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id   INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    number      TEXT    NOT NULL,
    -- the number without '+': a DID has one owner however it is written
    number_key  TEXT    NOT NULL UNIQUE,
    dest_type   TEXT    NOT NULL,
    dest_value  TEXT    NOT NULL
);
CREATE INDEX dids_tenant ON dids (tenant_id);
CREATE TABLE trunks (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id    INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         TEXT    NOT NULL,
    host         TEXT    NOT NULL,
    port         INTEGER NOT NULL,
    transport    TEXT    NOT NULL,
    username     TEXT    NOT NULL DEFAULT '',
    password     TEXT    NOT NULL DEFAULT '',
    register     INTEGER NOT NULL DEFAULT 0,
    from_domain  TEXT    NOT NULL DEFAULT '',
    UNIQUE (tenant_id, name),
    UNIQUE (tenant_id, id)
);
CREATE TABLE routes (
    id         INTEGER PRIMARY KEY AUTOINCREMENT,
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    prefix     TEXT    NOT NULL,
    trunk_id   INTEGER NOT NULL,
    strip      INTEGER NOT NULL DEFAULT 0,
    prepend    TEXT    NOT NULL DEFAULT '',
    priority   INTEGER NOT NULL DEFAULT 0,
    UNIQUE (tenant_id, prefix, trunk_id),
    -- the trunk must be the same tenant's: isolation enforced by the schema too
    FOREIGN KEY (tenant_id, trunk_id) REFERENCES trunks (tenant_id, id)
);
CREATE TABLE registrations (
    tenant_id    INTEGER NOT NULL,
    extension    TEXT    NOT NULL,
    contact      TEXT    NOT NULL,
    source_host  TEXT    NOT NULL,
    source_port  INTEGER NOT NULL,
    transport    TEXT    NOT NULL,
    expires_at   REAL    NOT NULL,
    call_id      TEXT    NOT NULL,
    cseq         INTEGER NOT NULL,
    user_agent   TEXT    NOT NULL DEFAULT '',
    q            REAL    NOT NULL DEFAULT 1.0,
    node_id      TEXT    NOT NULL DEFAULT 'local',
    PRIMARY KEY (tenant_id, extension, contact)
) WITHOUT ROWID;
CREATE INDEX registrations_expiry ON registrations (expires_at);
-- no foreign key: billing records outlive the tenant
CREATE TABLE cdrs (
    id            TEXT    PRIMARY KEY,
    tenant_id     INTEGER NOT NULL,
    call_id       TEXT    NOT NULL,
    caller        TEXT    NOT NULL,
    callee        TEXT    NOT NULL,
    direction     TEXT    NOT NULL,
    start_ts      REAL    NOT NULL,
    end_ts        REAL    NOT NULL,
    answer_ts     REAL,
    trunk         TEXT    NOT NULL DEFAULT '',
    disposition   TEXT    NOT NULL,
    sip_code      INTEGER NOT NULL DEFAULT 0,
    hangup_cause  TEXT    NOT NULL DEFAULT '',
    caller_name   TEXT    NOT NULL DEFAULT ''
);
CREATE INDEX cdrs_tenant_start ON cdrs (tenant_id, start_ts);
"""

# Each step takes the schema from version N-1 to N (index N-1); a new database runs _SCHEMA
# and then every step.
_MIGRATIONS = (
    # 2: feature objects (IVRs, voicemail boxes, hunt groups, ...) as JSON documents
    """
CREATE TABLE tenant_objects (
    tenant_id  INTEGER NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind       TEXT    NOT NULL,
    name       TEXT    NOT NULL,
    data       TEXT    NOT NULL,
    PRIMARY KEY (tenant_id, kind, name)
) WITHOUT ROWID
""",
)
assert len(_MIGRATIONS) == SCHEMA_VERSION - 1


class DatabaseError(RuntimeError):
    """The database file cannot be used (newer schema, not a database, not writable)."""

    status_hint = 500


class Database:
    """One connection to ``<data_dir>/hivepbx.db`` and the views kept in memory from it.

    Stores ``subscribe`` a reload function; it runs when another process has committed
    (``refresh_if_changed``) or when a write in this process touched another store's table
    (``invalidate``).
    """

    def __init__(
        self, path: Path, *, poll_interval: float = POLL_INTERVAL, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = path
        self.poll_interval = poll_interval
        self._clock = clock
        self._reloads: dict[str, Callable[[], None]] = {}
        self.conn = _connect(path)
        self._data_version = self._read_data_version()
        self._last_poll = clock()

    @classmethod
    def open(cls, data_dir: str | os.PathLike[str], *, create: bool = True, **kw) -> "Database":
        data_dir = Path(data_dir)
        path = data_dir / DB_FILENAME
        if not path.exists():
            if not create:
                raise DatabaseError(f"no hivepbx database at {path}")
            data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
            # it holds SIP passwords: readable by the owner only (SQLite gives -wal/-shm the same mode)
            with contextlib.suppress(FileExistsError):
                os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))
        return cls(path, **kw)

    def close(self) -> None:
        self.conn.close()

    # --- change detection
    def subscribe(self, name: str, reload: Callable[[], None]) -> None:
        self._reloads[name] = reload

    def invalidate(self, *names: str) -> None:
        for name in names:
            reload = self._reloads.get(name)
            if reload is not None:
                reload()

    def poll(self) -> bool:
        """``refresh_if_changed`` at most every ``poll_interval`` seconds: for hot reads."""
        if self._clock() - self._last_poll < self.poll_interval:
            return False
        return self.refresh_if_changed()

    def refresh_if_changed(self) -> bool:
        """Reload every view if another connection committed since the last check."""
        self._last_poll = self._clock()
        version = self._read_data_version()
        if version == self._data_version:
            return False
        self._data_version = version
        for reload in list(self._reloads.values()):
            reload()
        return True

    def _read_data_version(self) -> int:
        return self.conn.execute("PRAGMA data_version").fetchone()[0]

    # --- writes
    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """A write transaction. IMMEDIATE takes the write lock up front, so checks made inside
        hold until commit and two processes never deadlock upgrading a read lock."""
        # another process may have committed: bring views up to date before changing them
        self.refresh_if_changed()
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
            self.conn.execute("COMMIT")
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise


def _connect(path: Path) -> sqlite3.Connection:
    try:
        # autocommit (isolation_level=None): transactions are explicit, see Database.write
        conn = sqlite3.connect(path, isolation_level=None, timeout=BUSY_TIMEOUT_MS / 1000)
    except sqlite3.Error as e:
        raise DatabaseError(f"cannot open {path}: {e}") from None
    try:
        mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
        if mode.lower() != "wal":
            raise DatabaseError(f"{path}: cannot use WAL journal mode (got {mode}); is it on a network filesystem?")
        # WAL + NORMAL: a commit survives a process crash; only an OS crash can lose the last ones
        conn.execute("PRAGMA synchronous=NORMAL")
        conn.execute("PRAGMA foreign_keys=ON")
        conn.execute(f"PRAGMA busy_timeout={BUSY_TIMEOUT_MS}")
        _migrate(conn, path)
    except sqlite3.DatabaseError as e:
        conn.close()
        raise DatabaseError(f"cannot use {path}: {e}") from None
    except BaseException:
        conn.close()
        raise
    return conn


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = conn.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise DatabaseError(
                f"{path} has schema version {version}, this hivepbx knows {SCHEMA_VERSION}: upgrade hivepbx"
            )
        if version == 0:
            # executescript() would commit first; run the statements inside this transaction
            # (the schema holds no ';' but the ones ending statements)
            for stmt in _SCHEMA.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            version = 1
        for step in _MIGRATIONS[version - 1 :]:
            for stmt in step.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
        if version != SCHEMA_VERSION:
            conn.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    conn.execute("COMMIT")
