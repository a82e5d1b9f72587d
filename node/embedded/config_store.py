"""ConfigStore on SQLite, with every read served from an in-memory view.

Reads happen on every REGISTER and INVITE; writes come from an operator now and then. So
the whole configuration lives in dicts keyed the way the network asks (domain, DID,
source address, (tenant, number)); a write in this process updates them in place, and a
write by another process (the CLI) is noticed through ``Database.poll`` within
``POLL_INTERVAL`` and reloads them. Writes check and change inside one IMMEDIATE
transaction, so a check cannot be overtaken by another process's write.
"""

from __future__ import annotations

import time

from node import config_rules as rules
from node.config_index import ConfigIndex
from node.embedded.db import Database
from node.config_rules import ConfigError
from node.model import Did, Extension, OutboundRoute, Tenant, Trunk

_TENANT_COLS = "id, name, domain, max_calls, ring_timeout, timezone"
_EXT_COLS = "id, tenant_id, number, password, display_name, callerid_number, voicemail_enabled"
_DID_COLS = "id, tenant_id, number, dest_type, dest_value"
_TRUNK_COLS = "id, tenant_id, name, host, port, transport, username, password, register, from_domain"
_ROUTE_COLS = "id, tenant_id, prefix, trunk_id, strip, prepend, priority"


def _ext(row: tuple) -> Extension:
    return Extension(*row[:6], voicemail_enabled=bool(row[6]))


def _trunk(row: tuple) -> Trunk:
    return Trunk(*row[:8], register=bool(row[8]), from_domain=row[9])


class _View(ConfigIndex):
    """The configuration as lookups want it. Rebuilt whole on an outside change."""

    __slots__ = ()

    @classmethod
    def load(cls, db: Database) -> "_View":
        v = cls()
        c = db.conn
        for row in c.execute(f"SELECT {_TENANT_COLS} FROM tenants"):
            v.add_tenant(Tenant(*row))
        for row in c.execute(f"SELECT {_EXT_COLS} FROM extensions"):
            v.add_ext(_ext(row))
        for row in c.execute(f"SELECT {_DID_COLS} FROM dids"):
            v.add_did(Did(*row))
        for row in c.execute(f"SELECT {_TRUNK_COLS} FROM trunks"):
            v.add_trunk(_trunk(row))
        for row in c.execute(f"SELECT {_ROUTE_COLS} FROM routes"):
            v.add_route(OutboundRoute(*row))
        for tenant_id, kind, name, data in c.execute("SELECT tenant_id, kind, name, data FROM tenant_objects"):
            v.put_object(tenant_id, kind, name, data)
        return v


class EmbeddedConfigStore:
    """node.ports.ConfigStore on the node's SQLite file. Raises ``ConfigError`` on bad input."""

    def __init__(self, db: Database) -> None:
        self._db = db
        self._v = _View.load(db)
        db.subscribe("config", self._reload)

    def _reload(self) -> None:
        self._v = _View.load(self._db)

    def refresh_if_changed(self) -> bool:
        """Reload now if another process changed the database (hot reads do this by
        themselves at most every ``POLL_INTERVAL`` seconds)."""
        return self._db.refresh_if_changed()

    # --- unscoped lookups the network forces on us
    async def tenant_by_domain(self, domain: str) -> Tenant | None:
        self._db.poll()
        return self._v.tenant_by_domain(domain)

    async def did_by_number(self, number: str) -> Did | None:
        self._db.poll()
        return self._v.did_by_number(number)

    async def trunks_by_address(self, host: str) -> list[Trunk]:
        self._db.poll()
        return self._v.trunks_by_address(host)

    # --- tenants
    async def create_tenant(self, name: str, domain: str, **opts) -> Tenant:
        name, domain, max_calls, ring_timeout, timezone = rules.new_tenant(name, domain, opts)
        with self._db.write() as c:
            if c.execute("SELECT 1 FROM tenants WHERE name = ?", (name,)).fetchone():
                raise ConfigError(f"tenant {name!r} already exists", 409)
            if c.execute("SELECT 1 FROM tenants WHERE domain = ?", (domain,)).fetchone():
                raise ConfigError(f"domain {domain} is already used by another tenant", 409)
            cur = c.execute(
                "INSERT INTO tenants (name, domain, max_calls, ring_timeout, timezone, created_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, domain, max_calls, ring_timeout, timezone, time.time()),
            )
            tenant = Tenant(cur.lastrowid, name, domain, max_calls, ring_timeout, timezone)
        self._v.add_tenant(tenant)
        return tenant

    async def get_tenant(self, tenant_id: int) -> Tenant | None:
        self._db.poll()
        return self._v.tenants.get(tenant_id)

    async def list_tenants(self) -> list[Tenant]:
        self._db.poll()
        return self._v.list_tenants()

    async def delete_tenant(self, tenant_id: int) -> bool:
        """Removes the tenant with its extensions, DIDs, trunks, routes and registrations.
        CDRs stay: billing data is never deleted with its tenant."""
        with self._db.write() as c:
            if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone():
                return False
            for table in ("registrations", "tenant_objects", "routes", "dids", "trunks", "extensions"):
                c.execute(f"DELETE FROM {table} WHERE tenant_id = ?", (tenant_id,))
            c.execute("DELETE FROM tenants WHERE id = ?", (tenant_id,))
        self._reload()
        self._db.invalidate("locations")
        return True

    def _require_tenant(self, c, tenant_id: int) -> None:
        if not c.execute("SELECT 1 FROM tenants WHERE id = ?", (tenant_id,)).fetchone():
            raise ConfigError(f"no tenant with id {tenant_id}", 404)

    # --- extensions
    async def create_extension(self, tenant_id: int, number: str, password: str, **opts) -> Extension:
        number, password, display_name, callerid, voicemail = rules.new_extension(number, password, opts)
        with self._db.write() as c:
            self._require_tenant(c, tenant_id)
            if c.execute(
                "SELECT 1 FROM extensions WHERE tenant_id = ? AND number = ?", (tenant_id, number)
            ).fetchone():
                raise ConfigError(f"extension {number} already exists", 409)
            cur = c.execute(
                "INSERT INTO extensions (tenant_id, number, password, display_name, callerid_number,"
                " voicemail_enabled) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, number, password, display_name, callerid, int(voicemail)),
            )
            ext = Extension(cur.lastrowid, tenant_id, number, password, display_name, callerid, voicemail)
        self._v.add_ext(ext)
        return ext

    async def get_extension(self, tenant_id: int, number: str) -> Extension | None:
        self._db.poll()
        return self._v.get_extension(tenant_id, number)

    async def list_extensions(self, tenant_id: int) -> list[Extension]:
        self._db.poll()
        return self._v.list_extensions(tenant_id)

    async def delete_extension(self, tenant_id: int, number: str) -> bool:
        """Also drops its registrations. Refused while a DID still points at it."""
        with self._db.write() as c:
            if not c.execute(
                "SELECT 1 FROM extensions WHERE tenant_id = ? AND number = ?", (tenant_id, number)
            ).fetchone():
                return False
            dids = [
                r[0]
                for r in c.execute(
                    "SELECT number FROM dids WHERE tenant_id = ? AND dest_type = 'extension' AND dest_value = ?"
                    " ORDER BY number",
                    (tenant_id, number),
                )
            ]
            if dids:
                raise ConfigError(
                    f"extension {number} is the destination of DID {', '.join(dids)}: delete the DID first", 409
                )
            c.execute("DELETE FROM registrations WHERE tenant_id = ? AND extension = ?", (tenant_id, number))
            c.execute("DELETE FROM extensions WHERE tenant_id = ? AND number = ?", (tenant_id, number))
        self._v.drop_ext(tenant_id, number)
        self._db.invalidate("locations")
        return True

    # --- DIDs
    async def create_did(self, tenant_id: int, number: str, dest_type: str, dest_value: str) -> Did:
        number, dest_type, dest_value = rules.new_did(number, dest_type, dest_value)
        with self._db.write() as c:
            self._require_tenant(c, tenant_id)
            if dest_type == "extension" and not c.execute(
                "SELECT 1 FROM extensions WHERE tenant_id = ? AND number = ?", (tenant_id, dest_value)
            ).fetchone():
                raise ConfigError(f"extension {dest_value} does not exist in this tenant", 404)
            if dest_type != "extension" and not c.execute(
                "SELECT 1 FROM tenant_objects WHERE tenant_id = ? AND kind = ? AND name = ?",
                (tenant_id, dest_type, dest_value),
            ).fetchone():
                raise ConfigError(f"{dest_type.replace('_', ' ')} {dest_value} does not exist in this tenant", 404)
            # DIDs are unique across tenants; say so without naming the owner
            if c.execute("SELECT 1 FROM dids WHERE number_key = ?", (rules.did_key(number),)).fetchone():
                raise ConfigError(f"DID {number} is already in use", 409)
            cur = c.execute(
                "INSERT INTO dids (tenant_id, number, number_key, dest_type, dest_value) VALUES (?, ?, ?, ?, ?)",
                (tenant_id, number, rules.did_key(number), dest_type, dest_value),
            )
            did = Did(cur.lastrowid, tenant_id, number, dest_type, dest_value)
        self._v.add_did(did)
        return did

    async def list_dids(self, tenant_id: int) -> list[Did]:
        self._db.poll()
        return self._v.list_dids(tenant_id)

    async def delete_did(self, tenant_id: int, number: str) -> bool:
        key = rules.did_key(number.strip())
        with self._db.write() as c:
            row = c.execute(
                f"SELECT {_DID_COLS} FROM dids WHERE tenant_id = ? AND number_key = ?", (tenant_id, key)
            ).fetchone()
            if row is None:
                return False
            c.execute("DELETE FROM dids WHERE id = ?", (row[0],))
        self._v.drop_did(Did(*row))
        return True

    # --- trunks
    async def create_trunk(self, tenant_id: int, name: str, host: str, **opts) -> Trunk:
        name, host, port, transport, username, password, register, from_domain = rules.new_trunk(name, host, opts)
        with self._db.write() as c:
            self._require_tenant(c, tenant_id)
            if c.execute("SELECT 1 FROM trunks WHERE tenant_id = ? AND name = ?", (tenant_id, name)).fetchone():
                raise ConfigError(f"trunk {name!r} already exists", 409)
            cur = c.execute(
                "INSERT INTO trunks (tenant_id, name, host, port, transport, username, password, register,"
                " from_domain) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (tenant_id, name, host, port, transport, username, password, int(register), from_domain),
            )
            trunk = Trunk(
                cur.lastrowid, tenant_id, name, host, port, transport, username, password, register, from_domain
            )
        self._v.add_trunk(trunk)
        return trunk

    async def get_trunk(self, tenant_id: int, name: str) -> Trunk | None:
        self._db.poll()
        return self._v.get_trunk(tenant_id, name)

    async def list_trunks(self, tenant_id: int) -> list[Trunk]:
        self._db.poll()
        return self._v.list_trunks(tenant_id)

    async def delete_trunk(self, tenant_id: int, name: str) -> bool:
        """Refused while a route still uses the trunk."""
        with self._db.write() as c:
            row = c.execute(
                f"SELECT {_TRUNK_COLS} FROM trunks WHERE tenant_id = ? AND name = ?", (tenant_id, name)
            ).fetchone()
            if row is None:
                return False
            used = [str(r[0]) for r in c.execute("SELECT id FROM routes WHERE trunk_id = ? ORDER BY id", (row[0],))]
            if used:
                what = f"route {used[0]}: delete it" if len(used) == 1 else f"routes {', '.join(used)}: delete them"
                raise ConfigError(f"trunk {name!r} is used by {what} first", 409)
            c.execute("DELETE FROM trunks WHERE id = ?", (row[0],))
        self._v.drop_trunk(_trunk(row))
        return True

    # --- outbound routes
    async def create_route(self, tenant_id: int, prefix: str, trunk_name: str, **opts) -> OutboundRoute:
        prefix, strip, prepend, priority = rules.new_route(prefix, opts)
        with self._db.write() as c:
            self._require_tenant(c, tenant_id)
            # the trunk is looked up inside the tenant: another tenant's trunk does not exist here
            row = c.execute(
                "SELECT id FROM trunks WHERE tenant_id = ? AND name = ?", (tenant_id, trunk_name)
            ).fetchone()
            if row is None:
                raise ConfigError(f"no trunk {trunk_name!r} in this tenant", 404)
            trunk_id = row[0]
            if c.execute(
                "SELECT 1 FROM routes WHERE tenant_id = ? AND prefix = ? AND trunk_id = ?",
                (tenant_id, prefix, trunk_id),
            ).fetchone():
                shown = repr(prefix) if prefix else "(default)"
                raise ConfigError(f"a route for prefix {shown} via trunk {trunk_name!r} already exists", 409)
            cur = c.execute(
                "INSERT INTO routes (tenant_id, prefix, trunk_id, strip, prepend, priority) VALUES (?, ?, ?, ?, ?, ?)",
                (tenant_id, prefix, trunk_id, strip, prepend, priority),
            )
            route = OutboundRoute(cur.lastrowid, tenant_id, prefix, trunk_id, strip, prepend, priority)
        self._v.add_route(route)
        return route

    async def list_routes(self, tenant_id: int) -> list[OutboundRoute]:
        """In the order they are tried."""
        self._db.poll()
        return list(self._v.routes.get(tenant_id, ()))

    async def delete_route(self, tenant_id: int, route_id: int) -> bool:
        with self._db.write() as c:
            cur = c.execute("DELETE FROM routes WHERE id = ? AND tenant_id = ?", (route_id, tenant_id))
        if cur.rowcount == 0:
            return False
        self._v.drop_route(tenant_id, route_id)
        return True

    async def match_routes(self, tenant_id: int, number: str) -> list[tuple[OutboundRoute, Trunk]]:
        """Routes whose prefix matches ``number``, longest prefix first, then priority."""
        self._db.poll()
        return self._v.match_routes(tenant_id, number)

    # --- feature objects
    async def put_object(self, tenant_id: int, kind: str, name: str, data: dict) -> None:
        kind, name, text = rules.object_kind(kind), rules.object_name(name), rules.object_document(data)
        with self._db.write() as c:
            self._require_tenant(c, tenant_id)
            c.execute(
                "INSERT INTO tenant_objects (tenant_id, kind, name, data) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (tenant_id, kind, name) DO UPDATE SET data = excluded.data",
                (tenant_id, kind, name, text),
            )
        self._v.put_object(tenant_id, kind, name, text)

    async def get_object(self, tenant_id: int, kind: str, name: str) -> dict | None:
        return self.get_object_nowait(tenant_id, kind, name)

    def get_object_nowait(self, tenant_id: int, kind: str, name: str) -> dict | None:
        self._db.poll()
        return self._v.get_object(tenant_id, kind, name)

    async def list_objects(self, tenant_id: int, kind: str) -> dict[str, dict]:
        self._db.poll()
        return self._v.list_objects(tenant_id, kind)

    async def delete_object(self, tenant_id: int, kind: str, name: str) -> bool:
        with self._db.write() as c:
            cur = c.execute(
                "DELETE FROM tenant_objects WHERE tenant_id = ? AND kind = ? AND name = ?", (tenant_id, kind, name)
            )
        if cur.rowcount == 0:
            return False
        self._v.drop_object(tenant_id, kind, name)
        return True
