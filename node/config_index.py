"""The configuration in memory, keyed the way the network asks (domain, DID, source
address, (tenant, number)). Every ConfigStore backend serves its reads from one of these and
keeps it current its own way (SQLite reload, etcd watch), so all of them index alike."""

from __future__ import annotations

import bisect
import json

from node import config_rules as rules
from node.model import Did, Extension, OutboundRoute, Tenant, Trunk


def route_order(r: OutboundRoute) -> tuple[int, int, int]:
    # longest prefix first, then priority (lower first), then age for a stable order
    return (-len(r.prefix), r.priority, r.id)


def number_order(number: str) -> tuple[int, str]:
    return (len(number), number)


class ConfigIndex:
    """The indexes, how a record enters and leaves them, and the reads of node.ports.ConfigStore
    answered from them (synchronously: the backend adds its own freshness check)."""

    __slots__ = (
        "tenants", "tenants_by_domain", "exts", "dids", "dids_by_tenant",
        "trunks", "trunks_by_id", "trunks_by_host", "routes", "objects",
    )

    def __init__(self) -> None:
        self.clear()

    def clear(self) -> None:
        self.tenants: dict[int, Tenant] = {}
        self.tenants_by_domain: dict[str, Tenant] = {}
        self.exts: dict[int, dict[str, Extension]] = {}
        #: by DID key (number without '+')
        self.dids: dict[str, Did] = {}
        self.dids_by_tenant: dict[int, dict[str, Did]] = {}
        self.trunks: dict[int, dict[str, Trunk]] = {}
        self.trunks_by_id: dict[int, Trunk] = {}
        self.trunks_by_host: dict[str, list[Trunk]] = {}
        #: per tenant, in match order
        self.routes: dict[int, list[OutboundRoute]] = {}
        #: (tenant, kind) -> name -> JSON text (decoded on read: callers may mutate what they get)
        self.objects: dict[tuple[int, str], dict[str, str]] = {}

    def add_tenant(self, t: Tenant) -> None:
        self.tenants[t.id] = t
        self.tenants_by_domain[t.domain] = t

    def drop_tenant(self, t: Tenant) -> None:
        self.tenants.pop(t.id, None)
        if self.tenants_by_domain.get(t.domain) is t:
            del self.tenants_by_domain[t.domain]

    def add_ext(self, e: Extension) -> None:
        self.exts.setdefault(e.tenant_id, {})[e.number] = e

    def drop_ext(self, tenant_id: int, number: str) -> None:
        self.exts.get(tenant_id, {}).pop(number, None)

    def add_did(self, d: Did) -> None:
        self.dids[rules.did_key(d.number)] = d
        self.dids_by_tenant.setdefault(d.tenant_id, {})[d.number] = d

    def drop_did(self, d: Did) -> None:
        self.dids.pop(rules.did_key(d.number), None)
        self.dids_by_tenant.get(d.tenant_id, {}).pop(d.number, None)

    def add_trunk(self, t: Trunk) -> None:
        self.trunks.setdefault(t.tenant_id, {})[t.name] = t
        self.trunks_by_id[t.id] = t
        self.trunks_by_host.setdefault(t.host, []).append(t)

    def drop_trunk(self, t: Trunk) -> None:
        self.trunks.get(t.tenant_id, {}).pop(t.name, None)
        self.trunks_by_id.pop(t.id, None)
        same_host = [x for x in self.trunks_by_host.get(t.host, ()) if x.id != t.id]
        if same_host:
            self.trunks_by_host[t.host] = same_host
        else:
            self.trunks_by_host.pop(t.host, None)

    def add_route(self, r: OutboundRoute) -> None:
        bisect.insort(self.routes.setdefault(r.tenant_id, []), r, key=route_order)

    def drop_route(self, tenant_id: int, route_id: int) -> None:
        routes = self.routes.get(tenant_id)
        if routes:
            self.routes[tenant_id] = [r for r in routes if r.id != route_id]

    def put_object(self, tenant_id: int, kind: str, name: str, text: str) -> None:
        self.objects.setdefault((tenant_id, kind), {})[name] = text

    def drop_object(self, tenant_id: int, kind: str, name: str) -> None:
        self.objects.get((tenant_id, kind), {}).pop(name, None)

    # --- reads: what ConfigStore answers from memory
    def tenant_by_domain(self, domain: str) -> Tenant | None:
        t = self.tenants_by_domain.get(domain)
        # domains are case-insensitive (RFC 3261 §19.1.4); stored lower-cased
        return t if t is not None else self.tenants_by_domain.get(domain.lower().rstrip("."))

    def did_by_number(self, number: str) -> Did | None:
        return self.dids.get(rules.did_key(number))

    def trunks_by_address(self, host: str) -> list[Trunk]:
        found = self.trunks_by_host.get(host)
        if found is None:
            found = self.trunks_by_host.get(host.lower())
        return list(found) if found else []

    def list_tenants(self) -> list[Tenant]:
        return sorted(self.tenants.values(), key=lambda t: t.id)

    def get_extension(self, tenant_id: int, number: str) -> Extension | None:
        exts = self.exts.get(tenant_id)
        return exts.get(number) if exts else None

    def list_extensions(self, tenant_id: int) -> list[Extension]:
        return sorted(self.exts.get(tenant_id, {}).values(), key=lambda e: number_order(e.number))

    def list_dids(self, tenant_id: int) -> list[Did]:
        return sorted(self.dids_by_tenant.get(tenant_id, {}).values(), key=lambda d: number_order(d.number))

    def get_trunk(self, tenant_id: int, name: str) -> Trunk | None:
        return self.trunks.get(tenant_id, {}).get(name)

    def list_trunks(self, tenant_id: int) -> list[Trunk]:
        return sorted(self.trunks.get(tenant_id, {}).values(), key=lambda t: t.name)

    def match_routes(self, tenant_id: int, number: str) -> list[tuple[OutboundRoute, Trunk]]:
        """Routes whose prefix matches ``number``, longest prefix first, then priority (a route
        whose trunk this index has not seen yet is skipped)."""
        by_id = self.trunks_by_id
        return [(r, by_id[r.trunk_id]) for r in self.routes.get(tenant_id, ())
                if number.startswith(r.prefix) and r.trunk_id in by_id]

    def get_object(self, tenant_id: int, kind: str, name: str) -> dict | None:
        text = self.objects.get((tenant_id, kind), {}).get(name)
        return None if text is None else json.loads(text)

    def list_objects(self, tenant_id: int, kind: str) -> dict[str, dict]:
        found = self.objects.get((tenant_id, kind), {})
        return {name: json.loads(found[name]) for name in sorted(found)}
