"""Hunt groups: validation, and the plans they compile to (on the real embedded store)."""

from __future__ import annotations

import pytest

from node.config_rules import ConfigError
from node.pbx import hunt_groups
from node.pbx.dialplan import FeatureState, plan_inbound
from tests.unit.pbx._fixtures import alpha_beta, binding, dial


async def _setup(store, registered=("1001", "1002", "1003")):
    a, b = await alpha_beta(store, ("1000", "1001", "1002", "1003", "1009"), ("2001",))
    for i, n in enumerate(registered):
        await store.locations.save(binding(a.id, n, 6000 + i))
    await store.locations.save(binding(a.id, "1009", 6009))
    return a, b


async def _plan(store, tenant, dialled, state=None):
    return await dial(store, tenant, dialled, "1000", state)


def _ports(plan):
    return [[t.port for t in group] for group in plan.attempts]


def test_validation_messages():
    with pytest.raises(ConfigError, match="strategy 'random'"):
        hunt_groups.validate({"strategy": "random", "members": ["1001"]})
    with pytest.raises(ConfigError, match="non-empty list of members"):
        hunt_groups.validate({"members": []})
    with pytest.raises(ConfigError, match="listed twice"):
        hunt_groups.validate({"members": ["1001", {"to": "1001"}]})
    with pytest.raises(ConfigError, match="between 1 and 600"):
        hunt_groups.validate({"members": [{"to": "1001", "ring": 0}]})
    with pytest.raises(ConfigError, match="unknown hunt group field"):
        hunt_groups.validate({"members": ["1001"], "colour": "red"})
    with pytest.raises(ConfigError, match="host of a SIP URI must be an IP"):
        hunt_groups.validate({"members": ["sip:bob@example.com"]})
    doc = hunt_groups.validate({"members": ["1001", "+4930123", "sip:desk@192.0.2.7:5070", "tel:0301234"]})
    assert [m["to"] for m in doc["members"]] == ["1001", "+4930123", "sip:desk@192.0.2.7:5070", "tel:0301234"]
    assert doc["strategy"] == "simultaneous" and doc["ring"] == 20


async def test_member_must_be_own_extension(store):
    a, b = await _setup(store)
    with pytest.raises(ConfigError, match="2001 is not an extension of this tenant"):
        await hunt_groups.save(store.config, a.id, "600", {"members": ["1001", "2001"]})
    with pytest.raises(ConfigError, match="1001 is not an extension"):
        await hunt_groups.save(store.config, b.id, "600", {"members": ["1001"]})
    with pytest.raises(ConfigError, match="fall back to itself"):
        await hunt_groups.save(store.config, a.id, "600", {"members": ["1001"], "fallback": "600"})
    assert await store.config.list_objects(a.id, "hunt_group") == {}


async def test_simultaneous_rings_all_members_at_once(store):
    a, _ = await _setup(store)
    await hunt_groups.save(store.config, a.id, "600", {"members": ["1001", "1002", "1003"], "group_ring": 12})
    plan = await _plan(store, a, "600")
    assert _ports(plan) == [[6000, 6001, 6002]]
    assert plan.rules[0].ring == 12 and plan.rules[0].next_for("noanswer") is None
    assert {t.member for t in plan.attempts[0]} == {"hunt:600:1001", "hunt:600:1002", "hunt:600:1003"}


async def test_sequential_member_rings_and_fallback(store):
    a, _ = await _setup(store)
    await hunt_groups.save(store.config, a.id, "600", {
        "strategy": "sequential", "ring": 7,
        "members": ["1001", {"to": "1002", "ring": 3}, "1003"], "fallback": "1009"})
    plan = await _plan(store, a, "600")
    assert _ports(plan) == [[6000], [6001], [6002], [6009]]
    assert [r.ring for r in plan.rules[:3]] == [7, 3, 7]
    for i in range(3):  # busy, no answer or failure: the next member, then the fallback
        assert {plan.rules[i].next_for(o) for o in ("busy", "noanswer", "fail")} == {i + 1}
    assert plan.rules[3].next_for("busy") is None


async def test_group_ring_caps_the_hunt_and_unregistered_members_are_skipped(store):
    a, _ = await _setup(store, registered=("1001", "1003"))
    await hunt_groups.save(store.config, a.id, "600", {
        "strategy": "sequential", "ring": 10, "group_ring": 15, "members": ["1001", "1002", "1003"]})
    plan = await _plan(store, a, "600")
    assert _ports(plan) == [[6000], [6001]]  # 1002 not registered: skipped
    assert [r.ring for r in plan.rules] == [10, 5]


async def test_nobody_reachable_goes_to_fallback_or_480(store):
    a, _ = await _setup(store, registered=())
    await hunt_groups.save(store.config, a.id, "600", {"members": ["1001", "1002"]})
    assert (await _plan(store, a, "600")).fail_status == 480
    await hunt_groups.save(store.config, a.id, "601", {"members": ["1001"], "fallback": "1009"})
    plan = await _plan(store, a, "601")
    assert _ports(plan) == [[6009]] and plan.fail_status == 0


async def test_circular_and_least_used_order(store):
    a, _ = await _setup(store)
    state = FeatureState()
    await hunt_groups.save(store.config, a.id, "600", {"strategy": "circular", "members": ["1001", "1002", "1003"]})
    await hunt_groups.save(store.config, a.id, "700", {"strategy": "least_used", "members": ["1001", "1002", "1003"]})
    plan = await _plan(store, a, "600", state)
    assert _ports(plan) == [[6000], [6001], [6002]]
    plan.on_answer(plan.attempts[1][0])  # 1002 took the call
    assert _ports(await _plan(store, a, "600", state)) == [[6002], [6000], [6001]]
    p7 = await _plan(store, a, "700", state)
    p7.on_answer(p7.attempts[0][0])  # 1001 answered once
    p7.on_answer(p7.attempts[1][0])  # 1002 answered once
    p7.on_answer(p7.attempts[1][0])  # and again
    assert _ports(await _plan(store, a, "700", state)) == [[6002], [6000], [6001]]
    # statistics are per tenant and group: another group starts fresh
    await hunt_groups.save(store.config, a.id, "800", {"strategy": "least_used", "members": ["1001", "1002", "1003"]})
    assert _ports(await _plan(store, a, "800", state)) == [[6000], [6001], [6002]]


async def test_extension_number_can_be_a_hunt_group_and_did_destination(store):
    a, _ = await _setup(store)
    await hunt_groups.save(store.config, a.id, "1003", {"members": ["1001", "1002"]})
    plan = await _plan(store, a, "1003")
    assert _ports(plan) == [[6000, 6001]]  # the hunt group wins over the extension 1003
    await store.config.create_trunk(a.id, "carrier", "127.0.0.3")
    await hunt_groups.save(store.config, a.id, "600", {"strategy": "sequential", "members": ["1002", "1001"]})
    await store.config.create_did(a.id, "+441135550100", "hunt_group", "600")
    trunks = await store.config.trunks_by_address("127.0.0.3")
    plan = await plan_inbound(trunks, "441135550100", "447700900123", store.config, store.locations, FeatureState())
    assert plan.direction == "inbound" and plan.external
    assert _ports(plan) == [[6001], [6000]]
    with pytest.raises(ConfigError, match="hunt group 601 does not exist"):
        await store.config.create_did(a.id, "+441135550101", "hunt_group", "601")


async def test_external_and_uri_members(store):
    a, _ = await _setup(store)
    await store.config.create_trunk(a.id, "carrier", "127.0.0.5", port=5080)
    await store.config.create_route(a.id, "0", "carrier")
    await hunt_groups.save(store.config, a.id, "600", {
        "strategy": "sequential", "members": ["1001", "tel:0301234", "sip:desk@127.0.0.7:5099"]})
    plan = await _plan(store, a, "600")
    kinds = [(g[0].kind, g[0].ruri) for g in plan.attempts]
    assert kinds == [("extension", "sip:1001@127.0.0.1:6000"), ("trunk", "sip:0301234@127.0.0.5:5080"),
                     ("uri", "sip:desk@127.0.0.7:5099")]
    assert plan.external  # a trunk may be used: counts against the tenant's call limit


async def test_plan_to_for_transfers_resolves_features(store):
    from node.pbx.dialplan import plan_to

    a, _ = await _setup(store)
    await hunt_groups.save(store.config, a.id, "600", {"strategy": "sequential", "members": ["1002", "1001"]})
    plan = await plan_to(a, "600", store.config, store.locations, FeatureState())
    assert _ports(plan) == [[6001], [6000]] and len(plan.rules) == 2
    plain = await plan_to(a, "1003", store.config, store.locations, FeatureState())
    assert _ports(plain) == [[6002]] and plain.rules == []


async def test_a_document_written_around_validation_is_refused_cleanly(store):
    a, _ = await _setup(store)
    await store.config.put_object(a.id, "hunt_group", "600", {"strategy": "sideways", "members": ["1001"]})
    await store.config.put_object(a.id, "feature_codes", "*78", {"action": "self_destruct"})
    plan = await _plan(store, a, "600")
    assert (plan.fail_status, plan.fail_reason) == (500, "Server Internal Error (hunt group 600 misconfigured)")
    plan = await _plan(store, a, "*78")
    assert plan.fail_status == 500 and "feature code *78 misconfigured" in plan.fail_reason
