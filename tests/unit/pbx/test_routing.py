"""Routing decisions on the real embedded store: extension, outbound route, DID, isolation."""

from __future__ import annotations

import pytest

from node.pbx.call import _best_failure
from node.pbx.routing import plan_from_extension, plan_from_trunk
from tests.unit.pbx._fixtures import alpha_beta, binding


async def _two_tenants(store):
    return await alpha_beta(store, ("1001", "1002"))


async def test_extension_forks_to_every_binding(store):
    a, _ = await _two_tenants(store)
    await store.locations.save(binding(a.id, "1002", 6001))
    await store.locations.save(binding(a.id, "1002", 6002))
    plan = await plan_from_extension(a, "1002", store.config, store.locations)
    assert plan.direction == "internal" and not plan.external
    assert len(plan.attempts) == 1
    assert sorted(t.port for t in plan.attempts[0]) == [6001, 6002]
    assert all(t.to_value == "<sip:1002@alpha.example>" for t in plan.attempts[0])


async def test_unregistered_extension_is_480(store):
    a, _ = await _two_tenants(store)
    plan = await plan_from_extension(a, "1002", store.config, store.locations)
    assert plan.fail_status == 480 and plan.attempts == []


async def test_other_tenants_registration_is_invisible(store):
    a, b = await _two_tenants(store)
    await store.locations.save(binding(b.id, "1002", 6003))
    plan = await plan_from_extension(a, "1002", store.config, store.locations)
    assert plan.fail_status == 480


async def test_outbound_routes_longest_prefix_then_failover_order(store):
    a, _ = await _two_tenants(store)
    c = store.config
    await c.create_trunk(a.id, "cheap", "127.0.0.5", port=5080)
    await c.create_trunk(a.id, "intl", "127.0.0.6", transport="tcp")
    await c.create_route(a.id, "0", "cheap", strip=1, prepend="44")
    await c.create_route(a.id, "00", "intl", strip=2)
    plan = await plan_from_extension(a, "0049301234", store.config, store.locations)
    assert plan.direction == "outbound" and plan.external
    ruris = [group[0].ruri for group in plan.attempts]
    assert ruris == ["sip:49301234@127.0.0.6;transport=tcp", "sip:44049301234@127.0.0.5:5080"]


async def test_no_route_is_404(store):
    a, _ = await _two_tenants(store)
    plan = await plan_from_extension(a, "5551234", store.config, store.locations)
    assert plan.fail_status == 404


async def test_did_reaches_only_through_its_own_tenants_trunk(store):
    a, b = await _two_tenants(store)
    c = store.config
    await c.create_trunk(a.id, "carrier", "127.0.0.7")
    await c.create_trunk(b.id, "carrier", "127.0.0.8")
    await c.create_did(b.id, "+15550100", "extension", "1001")
    await store.locations.save(binding(b.id, "1001", 6004))
    trunks_a = await c.trunks_by_address("127.0.0.7")
    trunks_b = await c.trunks_by_address("127.0.0.8")
    assert await plan_from_trunk(trunks_a, "15550100", c, store.locations) is None
    plan = await plan_from_trunk(trunks_b, "15550100", c, store.locations)
    assert plan is not None and plan.tenant.id == b.id and plan.direction == "inbound"
    assert [t.port for t in plan.attempts[0]] == [6004]


@pytest.mark.parametrize(
    "codes, best",
    [([486, 480], 486), ([404, 480], 404), ([408, 408], 480), ([603, 486], 603), ([503, 500], 500), ([], 480)],
)
def test_best_failure(codes, best):
    assert _best_failure(codes) == best
