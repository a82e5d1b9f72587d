"""The small interfaces behind which backends sit (embedded now, cluster later).

``node`` defines them and never imports a backend: the runtime picks one by name from
config (``embedded`` is built in; cluster backends register through entry points).
Every method is scoped by tenant; the only unscoped lookups are the ones the network
forces on us (a SIP domain, an inbound DID, a trunk's source address), and each returns
the owning tenant so the caller scopes everything after it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import NamedTuple, Protocol

from node.model import Binding, Cdr, Did, Extension, OutboundRoute, Tenant, Trunk


class ConfigStore(Protocol):
    """Tenants and their PBX configuration. Reads are hot (every REGISTER/INVITE): a
    backend serves them from memory and keeps that view fresh (SQLite: data_version
    polling; etcd: watches)."""

    # --- unscoped lookups the network forces on us
    async def tenant_by_domain(self, domain: str) -> Tenant | None: ...
    async def did_by_number(self, number: str) -> Did | None: ...
    async def trunks_by_address(self, host: str) -> list[Trunk]: ...

    # --- tenants
    async def create_tenant(self, name: str, domain: str, **opts) -> Tenant: ...
    async def get_tenant(self, tenant_id: int) -> Tenant | None: ...
    async def list_tenants(self) -> list[Tenant]: ...
    async def delete_tenant(self, tenant_id: int) -> bool: ...

    # --- scoped by tenant
    async def create_extension(self, tenant_id: int, number: str, password: str, **opts) -> Extension: ...
    async def get_extension(self, tenant_id: int, number: str) -> Extension | None: ...
    async def list_extensions(self, tenant_id: int) -> list[Extension]: ...
    async def delete_extension(self, tenant_id: int, number: str) -> bool: ...

    async def create_did(self, tenant_id: int, number: str, dest_type: str, dest_value: str) -> Did: ...
    async def list_dids(self, tenant_id: int) -> list[Did]: ...
    async def delete_did(self, tenant_id: int, number: str) -> bool: ...

    async def create_trunk(self, tenant_id: int, name: str, host: str, **opts) -> Trunk: ...
    async def get_trunk(self, tenant_id: int, name: str) -> Trunk | None: ...
    async def list_trunks(self, tenant_id: int) -> list[Trunk]: ...
    async def delete_trunk(self, tenant_id: int, name: str) -> bool: ...

    async def create_route(self, tenant_id: int, prefix: str, trunk_name: str, **opts) -> OutboundRoute: ...
    async def list_routes(self, tenant_id: int) -> list[OutboundRoute]: ...
    async def delete_route(self, tenant_id: int, route_id: int) -> bool: ...
    async def match_routes(self, tenant_id: int, number: str) -> list[tuple[OutboundRoute, Trunk]]:
        """Routes whose prefix matches ``number``, longest prefix first, then priority."""
        ...

    # --- feature objects (IVRs, voicemail boxes, hunt groups, queues, time rules, ...):
    # JSON documents keyed by (tenant, kind, name). The feature that owns a kind validates its
    # documents (node.config_rules.feature_object); a backend stores and watches them like the
    # rest of the configuration, so a new feature needs no schema change in any backend.
    async def put_object(self, tenant_id: int, kind: str, name: str, data: dict) -> None:
        """Create or replace. Raises ValueError on a bad kind/name/document or unknown tenant."""
        ...
    async def get_object(self, tenant_id: int, kind: str, name: str) -> dict | None: ...
    def get_object_nowait(self, tenant_id: int, kind: str, name: str) -> dict | None:
        """``get_object`` answered at once from the in-memory view (both backends keep one),
        for a hot path that would otherwise need a task per call (recording's policy on every
        answered call). Optional: such a caller falls back to ``get_object`` without it."""
        ...
    async def list_objects(self, tenant_id: int, kind: str) -> dict[str, dict]:
        """name -> document, sorted by name."""
        ...
    async def delete_object(self, tenant_id: int, kind: str, name: str) -> bool: ...


class LocationStore(Protocol):
    """Registrations (RFC 3261 §10 location service)."""

    async def save(self, binding: Binding) -> None:
        """Insert or refresh the binding keyed by (tenant_id, extension, contact)."""
    async def remove(self, tenant_id: int, extension: str, contact: str) -> None: ...
    async def remove_all(self, tenant_id: int, extension: str) -> None: ...
    async def lookup(self, tenant_id: int, extension: str, now: float) -> list[Binding]:
        """Unexpired bindings, highest q first."""
        ...
    async def list(self, tenant_id: int | None, now: float) -> list[Binding]: ...
    async def expire(self, now: float) -> int:
        """Drop expired bindings; returns how many."""
        ...


class CdrStore(Protocol):
    """Call detail records. ``write`` is idempotent on ``Cdr.id``."""

    async def write(self, cdr: Cdr) -> None: ...
    async def write_many(self, cdrs: list[Cdr]) -> None:
        """Several at once (a batch): the hot path of a busy node. Idempotent like ``write``."""
        ...
    async def list(self, tenant_id: int, limit: int = 100, since: float | None = None) -> list[Cdr]: ...


class BusRecord(NamedTuple):
    """One event as read back from the log: where it sits (partition, offset) and what it is."""

    topic: str
    partition: int
    offset: int
    key: str
    value: bytes


class LogGap(Exception):
    """A reader needs a record that is no longer in the log (retention deleted it): reading on
    would skip records, so EventBus.subscribe raises this instead (Kafka's
    auto_offset_reset would jump ahead silently and a replica built from the log would diverge)."""

    def __init__(self, topic: str, partition: int, needed: int, first: int) -> None:
        super().__init__(f"{topic}/{partition}: offset {needed} is gone (the log starts at {first})")
        self.topic, self.partition, self.needed, self.first = topic, partition, needed, first


class EventBus(Protocol):
    """An ordered, replayable event log shared by the nodes (embedded: in memory; cluster: Kafka).

    Order is promised only within a partition, and a key always maps to the same partition, so
    a state that must be totally ordered (a tenant's ACD queues and agents) uses one key. Every
    subscriber reads every partition from an offset it chooses (no consumer groups): a node
    rebuilds shared state by replaying from the earliest offset. Delivery is at-least-once, so
    values carry their own ids and consumers drop duplicates. There is no "end offset" query:
    Kafka's is racy and brokers differ; a reader catches up by publishing a marker and reading
    until it sees the marker's offset.
    """

    async def ensure_topic(self, topic: str, partitions: int) -> int:
        """Create the topic if missing; returns its actual partition count (a topic that
        exists keeps its count: partitions can't change without remapping keys)."""
        ...
    async def partitions(self, topic: str) -> int:
        """Partition count of an existing topic; raises LookupError when there is none."""
        ...
    async def publish(self, topic: str, key: str, value: bytes, *, partition: int | None = None) -> tuple[int, int]:
        """Append durably (Kafka: acks=all) and return (partition, offset). ``partition`` overrides
        the key's partition (a broadcast to every partition); out of range raises ValueError."""
        ...
    def subscribe(self, topic: str, start: dict[int, int] | None = None) -> AsyncIterator[BusRecord]:
        """Every record of every partition of ``topic``, each partition in offset order,
        starting at ``start[partition]`` (missing: the earliest) and then live, until the
        iterator is closed (``aclose``) or its task cancelled. Never skips: when the next
        record a reader needs is gone (below the log start: retention), raises LogGap."""
        ...
    async def close(self) -> None: ...


@dataclass(slots=True)
class Leadership:
    """This node leads ``job`` until ``lost`` is set (its lease ran out) or the campaign ends."""

    job: str
    lost: asyncio.Event = field(default_factory=asyncio.Event)


class Membership(Protocol):
    """The live nodes of a cluster. A dead node disappears within a few seconds."""

    node_id: str

    async def join(self, info: dict | None = None) -> None:
        """Be listed (with ``info``: addresses, ...) until ``leave`` or death."""
        ...
    async def leave(self) -> None: ...
    def members(self) -> dict[str, dict]:
        """node id -> info, this node included once joined."""
        ...
    def watch(self, callback: Callable[[str, str, dict | None], None]) -> Callable[[], None]:
        """``callback(event, node_id, info)``, event 'joined' or 'left'; returns unsubscribe."""
        ...


class LeaderElection(Protocol):
    """One node of the cluster runs a singleton job (publish "node left", sweep CDR spools)."""

    def campaign(self, job: str) -> contextlib.AbstractAsyncContextManager[Leadership]:
        """``async with election.campaign("cdr-sweep") as lead:`` waits until this node leads;
        stop the job when ``lead.lost`` is set. Leaving the block resigns."""
        ...
    def is_leader(self, job: str) -> bool: ...


class Backend(Protocol):
    """What the runtime opens by name (entry point group ``hivepbx.backends``): the stores,
    membership and election of one node. ``cdrs`` may be None: the runtime then keeps CDRs
    in the node's embedded SQLite."""

    config: ConfigStore
    locations: LocationStore
    cdrs: CdrStore | None
    membership: Membership
    election: LeaderElection

    async def aclose(self) -> None: ...
