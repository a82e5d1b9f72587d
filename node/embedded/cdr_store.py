"""CdrStore on SQLite. CDRs are billing data: written once, never updated, never deleted
with their tenant (the table has no foreign key to tenants)."""

from __future__ import annotations

from node.embedded.db import Database
from node.config_rules import ConfigError
from node.model import Cdr

_COLS = (
    "id, tenant_id, call_id, caller, callee, direction, start_ts, end_ts, answer_ts, trunk,"
    " disposition, sip_code, hangup_cause, caller_name"
)
MAX_LIST = 10_000
_INSERT = (
    f"INSERT INTO cdrs ({_COLS}) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (id) DO NOTHING"
)


def _row(c: Cdr) -> tuple:
    return (
        c.id, c.tenant_id, c.call_id, c.caller, c.callee, c.direction, c.start, c.end, c.answer,
        c.trunk, c.disposition, c.sip_code, c.hangup_cause, c.caller_name,
    )


class EmbeddedCdrStore:
    """node.ports.CdrStore on the node's SQLite file. Not cached: CDR reads are rare."""

    def __init__(self, db: Database) -> None:
        self._db = db

    async def write(self, cdr: Cdr) -> None:
        """Idempotent on ``cdr.id``: a replayed write keeps the record first written."""
        await self.write_many([cdr])

    async def write_many(self, cdrs: list[Cdr]) -> None:
        """Several CDRs in one transaction (one commit, one fsync), idempotent on each id."""
        with self._db.write() as conn:
            conn.executemany(_INSERT, [_row(c) for c in cdrs])

    async def list(self, tenant_id: int, limit: int = 100, since: float | None = None) -> list[Cdr]:
        """The tenant's CDRs, newest first; ``since`` keeps those started at or after it."""
        if isinstance(limit, bool) or not isinstance(limit, int) or not 1 <= limit <= MAX_LIST:
            raise ConfigError(f"limit must be between 1 and {MAX_LIST}, not {limit!r}")
        sql = f"SELECT {_COLS} FROM cdrs WHERE tenant_id = ?"
        args: list = [tenant_id]
        if since is not None:
            sql += " AND start_ts >= ?"
            args.append(since)
        sql += " ORDER BY start_ts DESC, rowid DESC LIMIT ?"
        args.append(limit)
        return [_cdr(row) for row in self._db.conn.execute(sql, args)]


def _cdr(row: tuple) -> Cdr:
    (id_, tenant_id, call_id, caller, callee, direction, start, end, answer, trunk,
     disposition, sip_code, hangup_cause, caller_name) = row
    return Cdr(
        id=id_, tenant_id=tenant_id, call_id=call_id, caller=caller, callee=callee, direction=direction,
        start=start, end=end, answer=answer, trunk=trunk, disposition=disposition, sip_code=sip_code,
        hangup_cause=hangup_cause, caller_name=caller_name,
    )
