"""The Cassandra schema for CDRs, as CQL text built from a few choices, and a CLI to apply it.

Schema changes are an operator's step (run once per cluster, before the nodes), not
something a node does on start: many nodes racing to create tables give schema
disagreements. ``python -m cluster.cassandra.schema --help``.

Layout, for carrier volume:
* ``cdrs``: partition (tenant_id, bucket) with bucket = days since the epoch (UTC) of the
  call's start, so a partition is one tenant's day, bounded in size, and a tenant's recent
  CDRs are one partition read. Clustered by (start_ts DESC, id): newest first, and the id
  keeps two calls started in the same microsecond apart. The primary key is fully derived
  from the CDR, so writing the same CDR again is an upsert of the same row: idempotent.
  TimeWindowCompactionStrategy with one-day windows and a default TTL: whole SSTables expire
  and are dropped instead of being compacted over and over.
* ``cdr_buckets``: per tenant, the buckets that hold CDRs (newest first), so ``list`` walks
  only days that have data instead of probing every day back to the start of retention.
"""

from __future__ import annotations

import argparse
import re
import sys
from dataclasses import dataclass

BUCKET_SECONDS = 86_400
#: a day row outlives the CDRs of its day (written once per process and day; its TTL counts
#: from that write, the day's last CDR can come up to a day later)
BUCKET_ROW_EXTRA_TTL = 2 * BUCKET_SECONDS

_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,47}\Z")
_DC = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.\-]{0,63}\Z")


@dataclass(frozen=True, slots=True)
class Replication:
    """NetworkTopologyStrategy with replicas per data centre, or SimpleStrategy (one DC, labs)."""

    per_dc: tuple[tuple[str, int], ...] = ()
    simple: int = 0

    @classmethod
    def parse(cls, text: str) -> "Replication":
        """'dc1:3,dc2:3' (NetworkTopologyStrategy) or 'simple:1'. Raises ValueError."""
        parts = [p.strip() for p in text.split(",") if p.strip()]
        if not parts:
            raise ValueError("replication is empty: give 'dc1:3[,dc2:3...]' or 'simple:N'")
        pairs = []
        for p in parts:
            name, sep, n = p.rpartition(":")
            if not sep or not n.isdigit() or not 1 <= int(n) <= 32:
                raise ValueError(f"replication {p!r}: expected <datacenter>:<replicas 1-32>")
            pairs.append((name, int(n)))
        if pairs[0][0].lower() == "simple":
            if len(pairs) != 1:
                raise ValueError("'simple:N' cannot be combined with data centres")
            return cls(simple=pairs[0][1])
        seen = set()
        for name, _ in pairs:
            if not _DC.match(name):
                raise ValueError(f"data centre name {name!r}: letters, digits, '_', '.', '-' only")
            if name in seen:
                raise ValueError(f"data centre {name!r} given twice")
            seen.add(name)
        return cls(per_dc=tuple(pairs))

    def cql(self) -> str:
        if self.simple:
            return f"{{'class': 'SimpleStrategy', 'replication_factor': {self.simple}}}"
        dcs = ", ".join(f"'{name}': {n}" for name, n in self.per_dc)
        return f"{{'class': 'NetworkTopologyStrategy', {dcs}}}"


def check_keyspace(name: str) -> str:
    if not _IDENT.match(name):
        raise ValueError(f"keyspace {name!r}: a letter, then letters, digits or '_', at most 48")
    return name


def schema_statements(keyspace: str, replication: Replication, ttl_seconds: int) -> list[str]:
    """CQL to create the keyspace and tables (idempotent: IF NOT EXISTS). ``ttl_seconds`` 0 =
    keep CDRs for ever (then compaction is size-tiered: TWCS without TTL only piles up)."""
    ks = check_keyspace(keyspace)
    if isinstance(ttl_seconds, bool) or not isinstance(ttl_seconds, int) or not 0 <= ttl_seconds <= 630_720_000:
        raise ValueError(f"ttl must be 0 (none) to 630720000 seconds (20 years), not {ttl_seconds!r}")
    if ttl_seconds:
        compaction = ("{'class': 'TimeWindowCompactionStrategy', 'compaction_window_unit': 'DAYS', "
                      "'compaction_window_size': 1}")
        bucket_ttl = ttl_seconds + BUCKET_ROW_EXTRA_TTL
    else:
        compaction = "{'class': 'SizeTieredCompactionStrategy'}"
        bucket_ttl = 0
    return [
        f"CREATE KEYSPACE IF NOT EXISTS {ks} WITH replication = {replication.cql()} AND durable_writes = true",
        f"""CREATE TABLE IF NOT EXISTS {ks}.cdrs (
    tenant_id bigint,
    bucket int,
    start_ts double,
    id text,
    call_id text,
    caller text,
    callee text,
    direction text,
    end_ts double,
    answer_ts double,
    trunk text,
    disposition text,
    sip_code int,
    hangup_cause text,
    caller_name text,
    PRIMARY KEY ((tenant_id, bucket), start_ts, id)
) WITH CLUSTERING ORDER BY (start_ts DESC, id ASC)
  AND compaction = {compaction}
  AND default_time_to_live = {ttl_seconds}""",
        f"""CREATE TABLE IF NOT EXISTS {ks}.cdr_buckets (
    tenant_id bigint,
    bucket int,
    PRIMARY KEY (tenant_id, bucket)
) WITH CLUSTERING ORDER BY (bucket DESC)
  AND default_time_to_live = {bucket_ttl}""",
    ]


async def create_schema(session, keyspace: str, replication: Replication, ttl_seconds: int) -> None:
    """Apply ``schema_statements`` through a cassandra-driver session, waiting for schema agreement."""
    from cluster.cassandra.aio import execute

    for stmt in schema_statements(keyspace, replication, ttl_seconds):
        await execute(session, stmt)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cluster.cassandra.schema",
                                 description="Create (or print) the hivepbx CDR keyspace and tables.")
    ap.add_argument("--keyspace", default="hivepbx")
    ap.add_argument("--replication", default="dc1:3",
                    help="'dc1:3,dc2:3' (NetworkTopologyStrategy, replicas per DC) or 'simple:1'")
    ap.add_argument("--ttl-days", type=int, default=400, help="keep CDRs this many days (0 = for ever)")
    ap.add_argument("--contact-points", default="", help="host[,host...]; omitted: print the CQL only")
    ap.add_argument("--port", type=int, default=9042)
    ap.add_argument("--local-dc", default=None)
    ap.add_argument("--username", default=None)
    ap.add_argument("--password", default=None)
    args = ap.parse_args(argv)
    try:
        replication = Replication.parse(args.replication)
        stmts = schema_statements(args.keyspace, replication, args.ttl_days * BUCKET_SECONDS)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not args.contact_points:
        print(";\n\n".join(stmts) + ";")
        return 0
    import asyncio

    from cluster.cassandra.aio import connect

    async def apply() -> None:
        cluster, session = await connect(args.contact_points.split(","), port=args.port, local_dc=args.local_dc,
                                         username=args.username, password=args.password)
        try:
            await create_schema(session, args.keyspace, replication, args.ttl_days * BUCKET_SECONDS)
        finally:
            await asyncio.to_thread(cluster.shutdown)

    asyncio.run(apply())
    print(f"keyspace {args.keyspace} ready")
    return 0


if __name__ == "__main__":
    sys.exit(main())
