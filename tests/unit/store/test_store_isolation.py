"""Tenancy is a security boundary: no method lets tenant A read, change or point at tenant B's
records, even when both use the same numbers and names."""

from __future__ import annotations

import sqlite3
import time

import pytest

from node.embedded import ConfigError, open_embedded
from node.model import Binding, Cdr


@pytest.fixture
def backend(tmp_path):
    b = open_embedded(tmp_path)
    yield b
    b.close()


@pytest.fixture
async def two(backend):
    """Tenant A with only a tenant; tenant B with an extension, DID, trunk and route."""
    c = backend.config
    a = await c.create_tenant("alpha", "alpha.example.com")
    b = await c.create_tenant("beta", "beta.example.com")
    await c.create_extension(b.id, "1001", "beta-secret")
    await c.create_did(b.id, "4930555", "extension", "1001")
    await c.create_trunk(b.id, "carrier", "192.0.2.10")
    route = await c.create_route(b.id, "0", "carrier")
    return a, b, route


async def test_a_cannot_read_b(backend, two):
    a, b, route = two
    c = backend.config
    assert await c.get_extension(a.id, "1001") is None
    assert await c.list_extensions(a.id) == []
    assert await c.list_dids(a.id) == []
    assert await c.get_trunk(a.id, "carrier") is None
    assert await c.list_trunks(a.id) == []
    assert await c.list_routes(a.id) == []
    assert await c.match_routes(a.id, "0301234") == []
    # B's records are there for B
    assert (await c.get_extension(b.id, "1001")).password == "beta-secret"
    assert [r.id for r, _ in await c.match_routes(b.id, "0301234")] == [route.id]


async def test_a_cannot_delete_b(backend, two):
    a, b, route = two
    c = backend.config
    assert await c.delete_extension(a.id, "1001") is False
    assert await c.delete_did(a.id, "4930555") is False
    assert await c.delete_trunk(a.id, "carrier") is False
    assert await c.delete_route(a.id, route.id) is False
    assert await c.get_extension(b.id, "1001") is not None
    assert await c.did_by_number("4930555") is not None
    assert await c.get_trunk(b.id, "carrier") is not None
    assert [r.id for r in await c.list_routes(b.id)] == [route.id]


async def test_a_cannot_point_at_b(backend, two):
    a, b, _ = two
    c = backend.config
    with pytest.raises(ConfigError, match="no trunk 'carrier' in this tenant"):
        await c.create_route(a.id, "0", "carrier")
    with pytest.raises(ConfigError, match="extension 1001 does not exist in this tenant"):
        await c.create_did(a.id, "4930777", "extension", "1001")
    # nor take B's DID, and the error does not tell who owns it
    await c.create_extension(a.id, "1001", "alpha-secret")
    with pytest.raises(ConfigError, match="already in use") as e:
        await c.create_did(a.id, "+4930555", "extension", "1001")
    assert "beta" not in str(e.value)
    assert (await c.did_by_number("4930555")).tenant_id == b.id


async def test_same_numbers_in_two_tenants_stay_apart(backend, two):
    a, b, _ = two
    c = backend.config
    ea = await c.create_extension(a.id, "1001", "alpha-secret")
    await c.create_trunk(a.id, "carrier", "192.0.2.10")  # same carrier host as B
    assert (await c.get_extension(a.id, "1001")).password == "alpha-secret"
    assert (await c.get_extension(b.id, "1001")).password == "beta-secret"
    # the source address is shared; each trunk names its own tenant
    assert sorted(t.tenant_id for t in await c.trunks_by_address("192.0.2.10")) == sorted([a.id, b.id])
    assert await c.delete_extension(a.id, "1001") is True
    assert await c.get_extension(b.id, "1001") is not None
    assert ea.tenant_id == a.id


async def test_schema_refuses_a_cross_tenant_route(backend, two):
    """Defence in depth: even SQL that bypasses the store cannot link A's route to B's trunk."""
    a, b, _ = two
    trunk_id = (await backend.config.get_trunk(b.id, "carrier")).id
    with pytest.raises(sqlite3.IntegrityError):
        backend.db.conn.execute(
            "INSERT INTO routes (tenant_id, prefix, trunk_id) VALUES (?, '9', ?)", (a.id, trunk_id)
        )


async def test_deleting_a_leaves_b_untouched(backend, two):
    a, b, route = two
    c = backend.config
    await c.create_extension(a.id, "1001", "alpha-secret")
    now = time.time()
    for tid in (a.id, b.id):
        await backend.locations.save(
            Binding(tid, "1001", f"sip:1001@10.0.0.{tid}", "10.0.0.1", 5060, "udp", now + 60, "c", 1)
        )
    assert await c.delete_tenant(a.id)
    assert (await c.get_extension(b.id, "1001")).password == "beta-secret"
    assert [r.id for r, _ in await c.match_routes(b.id, "0301")] == [route.id]
    assert [bd.tenant_id for bd in await backend.locations.list(None, now)] == [b.id]


async def test_cdrs_are_scoped_and_ids_never_reused(backend, two):
    a, b, _ = two
    await backend.cdrs.write(Cdr("b-call", b.id, "c1", "1001", "0301", "outbound", 10.0, 20.0))
    assert await backend.cdrs.list(a.id) == []
    await backend.config.delete_tenant(b.id)
    c = await backend.config.create_tenant("gamma", "gamma.example.com")
    assert c.id != b.id
    assert await backend.cdrs.list(c.id) == []
    assert [x.id for x in await backend.cdrs.list(b.id)] == ["b-call"]
