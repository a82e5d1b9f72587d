"""ConfigStore on etcd: every node serves reads from memory, kept fresh by a watch.

Writes are etcd transactions whose compares carry the checks (a domain or DID still free, the
tenant still there, the id counter unchanged), so two nodes racing for the same DID cannot
both win: the loser's transaction fails, it re-reads to find out why, and reports the same
error the embedded store would. Ids come from counters incremented in the creating
transaction: never reused, so a deleted tenant's CDRs never become a new tenant's.
"""

from __future__ import annotations

import json
import logging

import aetcd

from cluster.etcd import metrics as M
from cluster.etcd.client import Keys, prefix_end, unquote_name
from cluster.etcd.watched import WatchedPrefix
from node import config_rules as rules
from node.config_index import ConfigIndex
from node.config_rules import ConfigError
from node.model import Did, Extension, OutboundRoute, Tenant, Trunk

log = logging.getLogger("hivepbx.cluster.etcd")

#: a transaction that keeps losing to other writers gives up after this many tries
MAX_ATTEMPTS = 50


def _dump(record) -> bytes:
    return json.dumps({s: getattr(record, s) for s in record.__slots__}, separators=(",", ":")).encode()


def _revision(responses) -> int:
    """Revision a successful transaction was applied at (every one of ours writes something)."""
    for r in responses:
        for field in ("response_put", "response_delete_range", "response_txn"):
            if r.HasField(field):
                return getattr(r, field).header.revision
    return 0


class _View(ConfigIndex):
    """The configuration as lookups want it, kept current from the watch's PUT and DELETE events."""

    __slots__ = ("_k", "by_key")

    def __init__(self, keys: Keys) -> None:
        self._k = keys
        self.clear()

    def clear(self) -> None:
        super().clear()
        #: etcd key -> record, so a DELETE event (which carries no value) finds what to unindex
        self.by_key: dict[bytes, object] = {}

    def reset(self, kvs: list[tuple[bytes, bytes]]) -> None:
        self.clear()
        for key, value in kvs:
            self.put(key, value)

    def apply(self, kind: str, key: bytes, value: bytes) -> None:
        if kind == "PUT":
            self.put(key, value)
        else:
            self.drop(key)

    def put(self, key: bytes, value: bytes) -> None:
        rel = key[len(self._k.cfg):]
        try:
            record = self._decode(rel, value)
        except (ValueError, TypeError, KeyError) as e:
            log.error("ignoring undecodable etcd config key %r: %s", key, e)
            return
        if record is None:
            return
        if key in self.by_key:
            self.drop(key)
        self.by_key[key] = record
        if isinstance(record, Tenant):
            self.add_tenant(record)
        elif isinstance(record, Extension):
            self.add_ext(record)
        elif isinstance(record, Did):
            self.add_did(record)
        elif isinstance(record, Trunk):
            self.add_trunk(record)
        elif isinstance(record, OutboundRoute):
            self.add_route(record)
        elif isinstance(record, tuple):  # feature object: (tenant, kind, name, text)
            self.put_object(*record)

    def drop(self, key: bytes) -> None:
        record = self.by_key.pop(key, None)
        if record is None:
            return
        if isinstance(record, Tenant):
            self.drop_tenant(record)
        elif isinstance(record, Extension):
            self.drop_ext(record.tenant_id, record.number)
        elif isinstance(record, Did):
            self.drop_did(record)
        elif isinstance(record, Trunk):
            self.drop_trunk(record)
        elif isinstance(record, OutboundRoute):
            self.drop_route(record.tenant_id, record.id)
        elif isinstance(record, tuple):
            tid, kind, name, _ = record
            self.drop_object(tid, kind, name)

    @staticmethod
    def _decode(rel: bytes, value: bytes):
        parts = rel.split(b"/")
        if parts[0] == b"tenant":
            return Tenant(**json.loads(value))
        if parts[0] == b"did":
            return Did(**json.loads(value))
        if parts[0] != b"t" or len(parts) < 4:
            return None  # guards (tname, domain), gen
        what = parts[2]
        if what == b"ext":
            return Extension(**json.loads(value))
        if what == b"trunk":
            return Trunk(**json.loads(value))
        if what == b"route":
            return OutboundRoute(**json.loads(value))
        if what == b"obj" and len(parts) == 5:
            return (int(parts[1]), parts[3].decode(), unquote_name(parts[4]), value.decode())
        return None


class EtcdConfigStore:
    """node.ports.ConfigStore on etcd. Raises ``ConfigError`` on bad input like the embedded one."""

    def __init__(self, client: aetcd.Client, keys: Keys) -> None:
        self._c = client
        self._k = keys
        self._t = client.transactions
        self._v = _View(keys)
        self._watched = WatchedPrefix(client, keys.cfg, self._v.reset, self._v.apply, name="config")
        #: deleting a tenant or extension deletes its registrations in the same transaction;
        #: the location store's view must have seen that before the delete returns
        self.locations = None

    async def start(self) -> None:
        await self._watched.start()

    async def close(self) -> None:
        await self._watched.close()

    @property
    def revision(self) -> int:
        """The etcd revision the in-memory view reflects."""
        return self._watched.revision

    # --- plumbing

    async def _txn(self, compare, success, failure=()) -> tuple[bool, int, list]:
        """(succeeded, revision, responses); returns once this node's view has the change."""
        ok, responses = await self._c.transaction(compare=list(compare), success=list(success), failure=list(failure))
        rev = _revision(responses) if ok else 0
        if ok:
            await self._watched.caught_up(rev)
        else:
            M.TXN_CONFLICTS.inc()  # or a refused change: the caller re-reads to tell which
        return ok, rev, responses

    async def _locations_caught_up(self, revision: int, responses: list) -> None:
        """After a transaction whose last operation deleted registrations."""
        deleted = responses[-1].response_delete_range.deleted if responses else 0
        # a range delete of nothing leaves no event in the locations prefix to wait for
        if self.locations is not None and deleted:
            await self.locations.caught_up(revision)

    async def _get(self, key: bytes):
        return await self._c.get(key)

    async def _counter(self, kind: str) -> tuple[int, list]:
        """The next id of ``kind`` and the compare+put that claim it inside a transaction."""
        key = self._k.seq(kind)
        cur = await self._c.get(key)
        n = int(cur.value) if cur is not None else 0
        mod = cur.mod_revision if cur is not None else 0
        return n + 1, [self._t.mod(key) == mod], [self._t.put(key, str(n + 1).encode())]

    def _tenant_exists(self, tenant_id: int):
        return self._t.version(self._k.tenant(tenant_id)) > 0

    async def _require_tenant(self, tenant_id: int) -> None:
        if await self._get(self._k.tenant(tenant_id)) is None:
            raise ConfigError(f"no tenant with id {tenant_id}", 404)

    @staticmethod
    def _busy(what: str) -> ConfigError:
        return ConfigError(f"{what}: too many concurrent changes, try again", 409)

    async def _mod(self, key: bytes) -> int:
        cur = await self._c.get(key)
        return cur.mod_revision if cur is not None else 0

    async def _records(self, prefix: bytes, cls):
        got = await self._c.get_prefix(prefix)
        return [cls(**json.loads(kv.value)) for kv in got]

    # --- unscoped lookups the network forces on us

    async def tenant_by_domain(self, domain: str) -> Tenant | None:
        return self._v.tenant_by_domain(domain)

    async def did_by_number(self, number: str) -> Did | None:
        return self._v.did_by_number(number)

    async def trunks_by_address(self, host: str) -> list[Trunk]:
        return self._v.trunks_by_address(host)

    # --- tenants

    async def create_tenant(self, name: str, domain: str, **opts) -> Tenant:
        name, domain, max_calls, ring_timeout, timezone = rules.new_tenant(name, domain, opts)
        k, t = self._k, self._t
        for _ in range(MAX_ATTEMPTS):
            tid, seq_cmp, seq_put = await self._counter("tenant")
            tenant = Tenant(tid, name, domain, max_calls, ring_timeout, timezone)
            ok, _, _ = await self._txn(
                [t.version(k.tname(name)) == 0, t.version(k.domain(domain)) == 0, *seq_cmp],
                [
                    t.put(k.tenant(tid), _dump(tenant)),
                    t.put(k.tname(name), str(tid).encode()),
                    t.put(k.domain(domain), str(tid).encode()),
                    *seq_put,
                ],
            )
            if ok:
                return tenant
            if await self._get(k.tname(name)) is not None:
                raise ConfigError(f"tenant {name!r} already exists", 409)
            if await self._get(k.domain(domain)) is not None:
                raise ConfigError(f"domain {domain} is already used by another tenant", 409)
        raise self._busy(f"tenant {name!r}")

    async def get_tenant(self, tenant_id: int) -> Tenant | None:
        return self._v.tenants.get(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        return self._v.list_tenants()

    async def delete_tenant(self, tenant_id: int) -> bool:
        """Removes the tenant with its extensions, DIDs, trunks, routes, feature objects and
        registrations in one transaction. CDRs stay: billing data outlives its tenant."""
        k, t = self._k, self._t
        for _ in range(MAX_ATTEMPTS):
            cur = await self._get(k.tenant(tenant_id))
            if cur is None:
                return False
            tenant = Tenant(**json.loads(cur.value))
            gen_mod = await self._mod(k.gen(tenant_id))
            dids = await self._records(k.did_refs(tenant_id), Did)
            tp, lp = k.tprefix(tenant_id), k.loc_tenant(tenant_id)
            ok, rev, responses = await self._txn(
                [t.mod(k.tenant(tenant_id)) == cur.mod_revision, t.mod(k.gen(tenant_id)) == gen_mod],
                [
                    t.delete(k.tenant(tenant_id)),
                    t.delete(k.tname(tenant.name)),
                    t.delete(k.domain(tenant.domain)),
                    *(t.delete(k.did(rules.did_key(d.number))) for d in dids),
                    t.delete(tp, prefix_end(tp)),
                    t.delete(lp, prefix_end(lp)),
                ],
            )
            if ok:
                await self._locations_caught_up(rev, responses)
                return True
        raise self._busy(f"deleting tenant {tenant_id}")

    # --- extensions

    async def create_extension(self, tenant_id: int, number: str, password: str, **opts) -> Extension:
        number, password, display_name, callerid, voicemail = rules.new_extension(number, password, opts)
        k, t = self._k, self._t
        key = k.ext(tenant_id, number)
        for _ in range(MAX_ATTEMPTS):
            eid, seq_cmp, seq_put = await self._counter("extension")
            ext = Extension(eid, tenant_id, number, password, display_name, callerid, voicemail)
            ok, _, _ = await self._txn(
                [self._tenant_exists(tenant_id), t.version(key) == 0, *seq_cmp],
                [t.put(key, _dump(ext)), *seq_put],
            )
            if ok:
                return ext
            await self._require_tenant(tenant_id)
            if await self._get(key) is not None:
                raise ConfigError(f"extension {number} already exists", 409)
        raise self._busy(f"extension {number}")

    async def get_extension(self, tenant_id: int, number: str) -> Extension | None:
        return self._v.get_extension(tenant_id, number)

    async def list_extensions(self, tenant_id: int) -> list[Extension]:
        return self._v.list_extensions(tenant_id)

    async def delete_extension(self, tenant_id: int, number: str) -> bool:
        """Also drops its registrations. Refused while a DID still points at it."""
        k, t = self._k, self._t
        key = k.ext(tenant_id, number)
        for _ in range(MAX_ATTEMPTS):
            cur = await self._get(key)
            if cur is None:
                return False
            gen_mod = await self._mod(k.gen(tenant_id))
            dids = sorted(
                d.number for d in await self._records(k.did_refs(tenant_id), Did)
                if d.dest_type == "extension" and d.dest_value == number
            )
            if dids:
                raise ConfigError(
                    f"extension {number} is the destination of DID {', '.join(dids)}: delete the DID first", 409
                )
            lp = k.loc_ext(tenant_id, number)
            ok, rev, responses = await self._txn(
                [t.mod(key) == cur.mod_revision, t.mod(k.gen(tenant_id)) == gen_mod],
                [t.delete(key), t.delete(lp, prefix_end(lp))],
            )
            if ok:
                await self._locations_caught_up(rev, responses)
                return True
        raise self._busy(f"deleting extension {number}")

    # --- DIDs

    async def create_did(self, tenant_id: int, number: str, dest_type: str, dest_value: str) -> Did:
        number, dest_type, dest_value = rules.new_did(number, dest_type, dest_value)
        k, t = self._k, self._t
        key = k.did(rules.did_key(number))
        # the destination: an extension, or the feature object of that kind named by the number
        ext_key = k.ext(tenant_id, dest_value) if dest_type == "extension" else k.obj(tenant_id, dest_type, dest_value)
        for _ in range(MAX_ATTEMPTS):
            did_id, seq_cmp, seq_put = await self._counter("did")
            did = Did(did_id, tenant_id, number, dest_type, dest_value)
            ok, _, _ = await self._txn(
                [self._tenant_exists(tenant_id), t.version(ext_key) > 0, t.version(key) == 0, *seq_cmp],
                # gen: an extension delete that checked for DIDs before this one must fail
                [t.put(key, _dump(did)), t.put(k.did_ref(tenant_id, rules.did_key(number)), _dump(did)),
                 t.put(k.gen(tenant_id), b""), *seq_put],
            )
            if ok:
                return did
            await self._require_tenant(tenant_id)
            if await self._get(ext_key) is None:
                what = "extension" if dest_type == "extension" else dest_type.replace("_", " ")
                raise ConfigError(f"{what} {dest_value} does not exist in this tenant", 404)
            # DIDs are unique across tenants; say so without naming the owner
            if await self._get(key) is not None:
                raise ConfigError(f"DID {number} is already in use", 409)
        raise self._busy(f"DID {number}")

    async def list_dids(self, tenant_id: int) -> list[Did]:
        return self._v.list_dids(tenant_id)

    async def delete_did(self, tenant_id: int, number: str) -> bool:
        k, t = self._k, self._t
        key = k.did(rules.did_key(number.strip()))
        for _ in range(MAX_ATTEMPTS):
            cur = await self._get(key)
            if cur is None or Did(**json.loads(cur.value)).tenant_id != tenant_id:
                return False  # another tenant's DID does not exist here
            ok, _, _ = await self._txn(
                [t.mod(key) == cur.mod_revision],
                [t.delete(key), t.delete(k.did_ref(tenant_id, rules.did_key(number.strip())))],
            )
            if ok:
                return True
        raise self._busy(f"deleting DID {number}")

    # --- trunks

    async def create_trunk(self, tenant_id: int, name: str, host: str, **opts) -> Trunk:
        name, host, port, transport, username, password, register, from_domain = rules.new_trunk(name, host, opts)
        k, t = self._k, self._t
        key = k.trunk(tenant_id, name)
        for _ in range(MAX_ATTEMPTS):
            trunk_id, seq_cmp, seq_put = await self._counter("trunk")
            trunk = Trunk(trunk_id, tenant_id, name, host, port, transport, username, password, register, from_domain)
            ok, _, _ = await self._txn(
                [self._tenant_exists(tenant_id), t.version(key) == 0, *seq_cmp],
                [t.put(key, _dump(trunk)), *seq_put],
            )
            if ok:
                return trunk
            await self._require_tenant(tenant_id)
            if await self._get(key) is not None:
                raise ConfigError(f"trunk {name!r} already exists", 409)
        raise self._busy(f"trunk {name!r}")

    async def get_trunk(self, tenant_id: int, name: str) -> Trunk | None:
        return self._v.get_trunk(tenant_id, name)

    async def list_trunks(self, tenant_id: int) -> list[Trunk]:
        return self._v.list_trunks(tenant_id)

    async def delete_trunk(self, tenant_id: int, name: str) -> bool:
        """Refused while a route still uses the trunk."""
        k, t = self._k, self._t
        key = k.trunk(tenant_id, name)
        for _ in range(MAX_ATTEMPTS):
            cur = await self._get(key)
            if cur is None:
                return False
            trunk = Trunk(**json.loads(cur.value))
            gen_mod = await self._mod(k.gen(tenant_id))
            used = sorted(r.id for r in await self._records(k.routes(tenant_id), OutboundRoute) if r.trunk_id == trunk.id)
            if used:
                ids = [str(i) for i in used]
                what = f"route {ids[0]}: delete it" if len(ids) == 1 else f"routes {', '.join(ids)}: delete them"
                raise ConfigError(f"trunk {name!r} is used by {what} first", 409)
            ok, _, _ = await self._txn(
                [t.mod(key) == cur.mod_revision, t.mod(k.gen(tenant_id)) == gen_mod], [t.delete(key)]
            )
            if ok:
                return True
        raise self._busy(f"deleting trunk {name!r}")

    # --- outbound routes

    async def create_route(self, tenant_id: int, prefix: str, trunk_name: str, **opts) -> OutboundRoute:
        prefix, strip, prepend, priority = rules.new_route(prefix, opts)
        k, t = self._k, self._t
        for _ in range(MAX_ATTEMPTS):
            await self._require_tenant(tenant_id)
            # the trunk is looked up inside the tenant: another tenant's trunk does not exist here
            tkey = k.trunk(tenant_id, trunk_name) if isinstance(trunk_name, str) else b""
            cur = await self._get(tkey) if tkey else None
            if cur is None:
                raise ConfigError(f"no trunk {trunk_name!r} in this tenant", 404)
            trunk_id = Trunk(**json.loads(cur.value)).id
            guard = k.route_guard(tenant_id, trunk_id, prefix)
            rid, seq_cmp, seq_put = await self._counter("route")
            route = OutboundRoute(rid, tenant_id, prefix, trunk_id, strip, prepend, priority)
            ok, _, _ = await self._txn(
                [self._tenant_exists(tenant_id), t.mod(tkey) == cur.mod_revision, t.version(guard) == 0, *seq_cmp],
                # gen: a trunk delete that checked for routes before this one must fail
                [t.put(k.route(tenant_id, rid), _dump(route)), t.put(guard, str(rid).encode()),
                 t.put(k.gen(tenant_id), b""), *seq_put],
            )
            if ok:
                return route
            if await self._get(guard) is not None:
                shown = repr(prefix) if prefix else "(default)"
                raise ConfigError(f"a route for prefix {shown} via trunk {trunk_name!r} already exists", 409)
        raise self._busy("route")

    async def list_routes(self, tenant_id: int) -> list[OutboundRoute]:
        """In the order they are tried."""
        return list(self._v.routes.get(tenant_id, ()))

    async def delete_route(self, tenant_id: int, route_id: int) -> bool:
        k, t = self._k, self._t
        if isinstance(route_id, bool) or not isinstance(route_id, int):
            return False
        key = k.route(tenant_id, route_id)
        for _ in range(MAX_ATTEMPTS):
            cur = await self._get(key)
            if cur is None:
                return False
            r = OutboundRoute(**json.loads(cur.value))
            ok, _, _ = await self._txn(
                [t.mod(key) == cur.mod_revision],
                [t.delete(key), t.delete(k.route_guard(tenant_id, r.trunk_id, r.prefix))],
            )
            if ok:
                return True
        raise self._busy(f"deleting route {route_id}")

    async def match_routes(self, tenant_id: int, number: str) -> list[tuple[OutboundRoute, Trunk]]:
        """Routes whose prefix matches ``number``, longest prefix first, then priority."""
        return self._v.match_routes(tenant_id, number)

    # --- feature objects

    async def put_object(self, tenant_id: int, kind: str, name: str, data: dict) -> None:
        kind, name, text = rules.object_kind(kind), rules.object_name(name), rules.object_document(data)
        t = self._t
        ok, _, _ = await self._txn(
            [self._tenant_exists(tenant_id)], [t.put(self._k.obj(tenant_id, kind, name), text.encode())]
        )
        if not ok:
            raise ConfigError(f"no tenant with id {tenant_id}", 404)

    async def get_object(self, tenant_id: int, kind: str, name: str) -> dict | None:
        return self._v.get_object(tenant_id, kind, name)

    def get_object_nowait(self, tenant_id: int, kind: str, name: str) -> dict | None:
        return self._v.get_object(tenant_id, kind, name)

    async def list_objects(self, tenant_id: int, kind: str) -> dict[str, dict]:
        return self._v.list_objects(tenant_id, kind)

    async def delete_object(self, tenant_id: int, kind: str, name: str) -> bool:
        if not isinstance(kind, str) or not isinstance(name, str) or "/" in kind:
            return False
        key = self._k.obj(tenant_id, kind, name)
        t = self._t
        ok, _, _ = await self._txn([t.version(key) > 0], [t.delete(key)])
        return ok
