"""LocationStore on SQLite (RFC 3261 §10): bindings persist so a restarted node keeps
routing calls to phones that registered before it, and lookups are served from memory.

Every save is written through to the file before the index changes, so the index is
never ahead of what a restart would load.
"""

from __future__ import annotations

from node.embedded.db import Database
from node.model import Binding

_COLS = (
    "tenant_id, extension, contact, source_host, source_port, transport, expires_at,"
    " call_id, cseq, user_agent, q, node_id"
)


class EmbeddedLocationStore:
    """node.ports.LocationStore on the node's SQLite file."""

    def __init__(self, db: Database) -> None:
        self._db = db
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
        self._index = index

    async def save(self, binding: Binding) -> None:
        """Insert or refresh the binding keyed by (tenant_id, extension, contact)."""
        b = binding
        self._db.poll()
        self._db.conn.execute(
            f"INSERT INTO registrations ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)"
            " ON CONFLICT (tenant_id, extension, contact) DO UPDATE SET"
            " source_host = excluded.source_host, source_port = excluded.source_port,"
            " transport = excluded.transport, expires_at = excluded.expires_at, call_id = excluded.call_id,"
            " cseq = excluded.cseq, user_agent = excluded.user_agent, q = excluded.q, node_id = excluded.node_id",
            (
                b.tenant_id, b.extension, b.contact, b.source_host, b.source_port, b.transport,
                b.expires_at, b.call_id, b.cseq, b.user_agent, b.q, b.node_id,
            ),
        )
        self._index.setdefault((b.tenant_id, b.extension), {})[b.contact] = b

    async def remove(self, tenant_id: int, extension: str, contact: str) -> None:
        self._db.poll()
        self._db.conn.execute(
            "DELETE FROM registrations WHERE tenant_id = ? AND extension = ? AND contact = ?",
            (tenant_id, extension, contact),
        )
        contacts = self._index.get((tenant_id, extension))
        if contacts is not None:
            contacts.pop(contact, None)
            if not contacts:
                del self._index[(tenant_id, extension)]

    async def remove_all(self, tenant_id: int, extension: str) -> None:
        self._db.poll()
        self._db.conn.execute(
            "DELETE FROM registrations WHERE tenant_id = ? AND extension = ?", (tenant_id, extension)
        )
        self._index.pop((tenant_id, extension), None)

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
