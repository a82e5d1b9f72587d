"""LocationStore on SQLite (RFC 3261 §10): bindings persist so a restarted node keeps
routing calls to phones that registered before it, and lookups are served from memory.

Group commit: the writes of every REGISTER handled in one turn of the event loop go to the
file in one transaction, and each ``save``/``remove`` returns only once that transaction has
committed, so the registrar never answers 200 for a binding a restart would not load. Under
load a commit carries dozens of bindings; a lone REGISTER waits one loop turn. Reads are
served from the in-memory index, which is updated when the write is queued (the node's own
later lookups must see it; nothing else reads the index).
"""

from __future__ import annotations

import asyncio

from node.embedded.db import Database
from node.model import Binding

_COLS = (
    "tenant_id, extension, contact, source_host, source_port, transport, expires_at,"
    " call_id, cseq, user_agent, q, node_id"
)
_UPSERT = (
    "INSERT INTO registrations ({cols}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
    " ON CONFLICT (tenant_id, extension, contact) DO UPDATE SET"
    " source_host = excluded.source_host, source_port = excluded.source_port,"
    " transport = excluded.transport, expires_at = excluded.expires_at, call_id = excluded.call_id,"
    " cseq = excluded.cseq, user_agent = excluded.user_agent, q = excluded.q, node_id = excluded.node_id"
)
_UPSERT_SQL = _UPSERT.format(cols=_COLS)
_DELETE_ONE = "DELETE FROM registrations WHERE tenant_id = ? AND extension = ? AND contact = ?"
_DELETE_ALL = "DELETE FROM registrations WHERE tenant_id = ? AND extension = ?"



class EmbeddedLocationStore:
    """node.ports.LocationStore on the node's SQLite file."""

    def __init__(self, db: Database) -> None:
        self._db = db
        #: statements waiting for the next group commit, in order
        self._pending: list[tuple[str, tuple]] = []
        #: the batch being committed now (a reload meanwhile must keep it, like _pending)
        self._writing: list[tuple[str, tuple]] = []
        self._committed: asyncio.Future | None = None
        #: (tenant_id, extension) -> contact -> binding
        self._index: dict[tuple[int, str], dict[str, Binding]] = {}
        self._reload()
        # the CLI deleting a tenant or extension removes its rows: drop them here too
        db.subscribe("locations", self._reload)

    def _reload(self) -> None:
        index: dict[tuple[int, str], dict[str, Binding]] = {}
        for row in self._db.conn.execute(f"SELECT {_COLS} FROM registrations"):
            b = Binding(*row)
            index.setdefault((b.tenant_id, b.extension), {})[b.contact] = b
        # writes queued for the next group commit are not in the file yet
        for sql, p in (*getattr(self, "_writing", ()), *getattr(self, "_pending", ())):
            if sql is _UPSERT_SQL:
                b = Binding(*p)
                index.setdefault((b.tenant_id, b.extension), {})[b.contact] = b
            elif sql is _DELETE_ONE:
                contacts = index.get((p[0], p[1]))
                if contacts is not None:
                    contacts.pop(p[2], None)
                    if not contacts:
                        del index[(p[0], p[1])]
            else:
                index.pop((p[0], p[1]), None)
        self._index = index

    async def save(self, binding: Binding) -> None:
        """Insert or refresh the binding keyed by (tenant_id, extension, contact)."""
        b = binding
        self._db.poll()
        self._index.setdefault((b.tenant_id, b.extension), {})[b.contact] = b
        await self._write(
            _UPSERT_SQL,
            (
                b.tenant_id, b.extension, b.contact, b.source_host, b.source_port, b.transport,
                b.expires_at, b.call_id, b.cseq, b.user_agent, b.q, b.node_id,
            ),
        )

    async def remove(self, tenant_id: int, extension: str, contact: str) -> None:
        self._db.poll()
        contacts = self._index.get((tenant_id, extension))
        if contacts is not None:
            contacts.pop(contact, None)
            if not contacts:
                del self._index[(tenant_id, extension)]
        await self._write(_DELETE_ONE, (tenant_id, extension, contact))

    async def remove_all(self, tenant_id: int, extension: str) -> None:
        self._db.poll()
        self._index.pop((tenant_id, extension), None)
        await self._write(_DELETE_ALL, (tenant_id, extension))

    def _write(self, sql: str, params: tuple) -> asyncio.Future:
        self._pending.append((sql, params))
        fut = self._committed
        if fut is None:
            loop = asyncio.get_running_loop()
            fut = self._committed = loop.create_future()
            loop.call_soon(self._commit)
        return fut

    def _commit(self) -> None:
        pending, fut = self._pending, self._committed
        self._pending, self._committed = [], None
        if fut is None or not pending:
            return
        self._writing = pending
        try:
            with self._db.write() as c:
                sql = None
                batch: list[tuple] = []
                for s_, p in pending:
                    if s_ is not sql and batch:
                        c.executemany(sql, batch)
                        batch = []
                    sql = s_
                    batch.append(p)
                if batch:
                    c.executemany(sql, batch)
        except BaseException as e:
            # nothing was written: the index is ahead of the file, so bring it back
            self._writing = []
            self._reload()
            if not fut.done():
                fut.set_exception(e if isinstance(e, Exception) else RuntimeError(str(e)))
            if not isinstance(e, Exception):
                raise
            return
        self._writing = []
        if not fut.done():
            fut.set_result(None)

    def flush(self) -> None:
        """Commit what is queued now (before closing, and before a bulk read of the file)."""
        self._commit()

    async def lookup(self, tenant_id: int, extension: str, now: float) -> list[Binding]:
        """Unexpired bindings, highest q first."""
        self._db.poll()
        contacts = self._index.get((tenant_id, extension))
        if not contacts:
            return []
        live = [b for b in contacts.values() if b.expires_at > now]
        if len(live) > 1:
            live.sort(key=_by_q)
        return live

    async def list(self, tenant_id: int | None, now: float) -> list[Binding]:
        """Unexpired bindings of one tenant, or of all tenants when ``tenant_id`` is None."""
        self._db.poll()
        out = [
            b
            for (tid, _), contacts in self._index.items()
            if tenant_id is None or tid == tenant_id
            for b in contacts.values()
            if b.expires_at > now
        ]
        out.sort(key=lambda b: (b.tenant_id, len(b.extension), b.extension, -b.q, b.contact))
        return out

    async def expire(self, now: float) -> int:
        """Drop expired bindings; returns how many."""
        self._commit()
        self._db.poll()
        cur = self._db.conn.execute("DELETE FROM registrations WHERE expires_at <= ?", (now,))
        if cur.rowcount == 0:
            return 0  # the index mirrors the table: nothing to drop there either
        for key in list(self._index):
            contacts = self._index[key]
            for contact in [c for c, b in contacts.items() if b.expires_at <= now]:
                del contacts[contact]
            if not contacts:
                del self._index[key]
        return cur.rowcount


def _by_q(b: Binding) -> float:
    return -b.q
