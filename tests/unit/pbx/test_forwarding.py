"""Call forwarding, do-not-disturb and follow-me: validation and compiled plans."""

from __future__ import annotations

import time

import pytest

from node.config_rules import ConfigError
from node.pbx import forwarding
from node.pbx.dialplan import FeatureState
from tests.unit.pbx._fixtures import alpha_beta, binding, dial


async def _setup(store, registered=("1002", "1003", "1009")):
    c = store.config
    a, b = await alpha_beta(store, ("1001", "1002", "1003", "1009"), ("2002",))
    for n in registered:
        await store.locations.save(binding(a.id, n, 6000 + int(n) % 100))
    await c.create_trunk(a.id, "carrier", "127.0.0.5", port=5080)
    await c.create_route(a.id, "0", "carrier")
    return a, b


async def _plan(store, tenant, dialled="1002"):
    return await dial(store, tenant, dialled)


def _ruris(plan):
    return [[t.ruri for t in g] for g in plan.attempts]


def test_validation_messages():
    with pytest.raises(ConfigError, match="dnd must be true or false"):
        forwarding.validate({"dnd": "yes"})
    with pytest.raises(ConfigError, match="unknown forwarding field"):
        forwarding.validate({"always": "1003"})
    with pytest.raises(ConfigError, match="forward busy destination"):
        forwarding.validate({"busy": "12x"})
    with pytest.raises(ConfigError, match="ordered or simultaneous"):
        forwarding.validate({"follow_me": {"mode": "random", "destinations": ["1003"]}})
    with pytest.raises(ConfigError, match="no_answer_ring"):
        forwarding.validate({"no_answer": "1003", "no_answer_ring": 0})
    assert forwarding.validate({"busy": "+4930123"}) == {"dnd": False, "busy": "+4930123"}


async def test_save_checks_destinations_inside_the_tenant(store):
    a, b = await _setup(store)
    with pytest.raises(ConfigError, match="2002 is no extension, hunt group, time switch or application of this tenant"):
        await forwarding.save(store.config, a.id, "1002", {"unconditional": "2002"})
    with pytest.raises(ConfigError, match="cannot forward"):
        await forwarding.save(store.config, a.id, "1002", {"busy": "1002"})
    with pytest.raises(ConfigError, match="does not exist"):
        await forwarding.save(store.config, b.id, "1002", {"dnd": True})
    assert await store.config.list_objects(a.id, "forwarding") == {}


async def test_plain_extension_keeps_the_plain_plan(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"dnd": False})
    plan = await _plan(store, a)
    assert plan.rules == [] and _ruris(plan) == [["sip:1002@127.0.0.1:6002"]]


async def test_dnd_is_busy_or_busy_forward(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"dnd": True})
    plan = await _plan(store, a)
    assert (plan.fail_status, plan.fail_reason) == (486, "Busy Here (do not disturb)")
    await forwarding.update(store.config, a.id, "1002", busy="1009")
    assert _ruris(await _plan(store, a)) == [["sip:1009@127.0.0.1:6009"]]


async def test_unconditional_forward_skips_the_phones(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"unconditional": "tel:0301234"})
    plan = await _plan(store, a)
    assert _ruris(plan) == [["sip:0301234@127.0.0.5:5080"]]
    assert plan.external and plan.direction == "internal" and plan.callee == "1002"


async def test_busy_and_no_answer_branches(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"busy": "1003", "no_answer": "1009", "no_answer_ring": 4})
    plan = await _plan(store, a)
    assert _ruris(plan) == [["sip:1002@127.0.0.1:6002"], ["sip:1003@127.0.0.1:6003"], ["sip:1009@127.0.0.1:6009"]]
    first = plan.rules[0]
    assert (first.ring, first.on_busy, first.on_noanswer, first.on_fail) == (4, 1, 2, None)


async def test_unreachable_forward(store):
    a, _ = await _setup(store, registered=("1003",))
    assert (await _plan(store, a)).fail_status == 480
    await forwarding.save(store.config, a.id, "1002", {"unreachable": "1003"})
    assert _ruris(await _plan(store, a)) == [["sip:1003@127.0.0.1:6003"]]


async def test_follow_me_ordered_and_simultaneous(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {
        "follow_me": {"mode": "ordered", "destinations": [{"to": "1002", "ring": 5}, {"to": "tel:0301234", "ring": 9}]},
        "no_answer": "1009"})
    plan = await _plan(store, a)
    assert _ruris(plan) == [["sip:1002@127.0.0.1:6002"], ["sip:0301234@127.0.0.5:5080"], ["sip:1009@127.0.0.1:6009"]]
    assert [r.ring for r in plan.rules[:2]] == [5, 9]
    assert plan.rules[0].next_for("busy") == 1 and plan.rules[1].next_for("noanswer") == 2
    await forwarding.update(store.config, a.id, "1002", follow_me={
        "mode": "simultaneous", "destinations": [{"to": "1002", "ring": 5}, {"to": "1003", "ring": 8}]})
    plan = await _plan(store, a)
    assert _ruris(plan)[0] == ["sip:1002@127.0.0.1:6002", "sip:1003@127.0.0.1:6003"]
    assert plan.rules[0].ring == 8


async def test_forward_loop_rings_the_phones_instead_of_looping(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"unconditional": "1003"})
    await forwarding.save(store.config, a.id, "1003", {"unconditional": "1002"})
    plan = await _plan(store, a)
    assert _ruris(plan) == [["sip:1002@127.0.0.1:6002"]]


async def test_active_periods_in_tenant_time(store):
    import datetime as dt

    from node.pbx.dialplan import Ctx
    a, _ = await _setup(store)
    with pytest.raises(ConfigError, match="active period: time: '9' is not a time HH:MM"):
        await forwarding.save(store.config, a.id, "1002", {"busy": "1009", "active": {"time": "9-5"}})
    await forwarding.save(store.config, a.id, "1002", {
        "unconditional": "1003", "active": {"weekdays": "mon-fri", "time": "08:00-18:00"}})
    doc = await forwarding.load(store.config, a.id, "1002")
    in_hours = dt.datetime(2026, 12, 1, 9, 0, tzinfo=dt.timezone.utc).timestamp()  # a Tuesday
    after_hours = dt.datetime(2026, 12, 1, 19, 0, tzinfo=dt.timezone.utc).timestamp()
    for now, expected in ((in_hours, "sip:1003@127.0.0.1:6003"), (after_hours, "sip:1002@127.0.0.1:6002")):
        ctx = Ctx(a, store.config, store.locations, FeatureState(), now=now)
        frag = await forwarding.compile_extension(ctx, "1002", doc, 0)
        assert ctx.attempts[frag.entry][0].ruri == expected


async def test_busy_destination_not_answering_is_not_forwarded_again(store):
    a, _ = await _setup(store)
    await forwarding.save(store.config, a.id, "1002", {"busy": "1003", "no_answer": "1009"})
    plan = await _plan(store, a)
    busy_branch = plan.rules[1]  # 1003, reached because 1002 was busy
    assert [g[0].ruri for g in plan.attempts][1] == "sip:1003@127.0.0.1:6003"
    assert busy_branch.next_for("noanswer") is None  # ends there, not at 1002's no-answer forward
    assert plan.rules[0].next_for("noanswer") == 2
