"""Tenant feature codes: validation, what each action does, and tenant isolation."""

from __future__ import annotations

import pytest

from node.config_rules import ConfigError
from node.pbx import feature_codes, forwarding, time_switch
from tests.unit.pbx._fixtures import alpha_beta, dial


async def _setup(store):
    c = store.config
    a, b = await alpha_beta(store, ("1001", "1002"))
    await feature_codes.save(c, a.id, "*78", {"action": "dnd_on"})
    await feature_codes.save(c, a.id, "*79", {"action": "dnd_off"})
    await feature_codes.save(c, a.id, "*72", {"action": "forward_set", "type": "unconditional"})
    await feature_codes.save(c, a.id, "*73", {"action": "forward_clear", "type": "all"})
    await feature_codes.save(c, a.id, "*33", {"action": "daynight_toggle", "toggle": "main"})
    await feature_codes.save(c, a.id, "*67", {"action": "hide_callerid"})
    # beta uses *78 for something else entirely
    await feature_codes.save(c, b.id, "*78", {"action": "daynight_night", "toggle": "main"})
    return a, b


def test_validation_messages():
    with pytest.raises(ConfigError, match="'\\*' or '#' then"):
        feature_codes.validate("72", {"action": "dnd_on"})
    with pytest.raises(ConfigError, match="action must be one of"):
        feature_codes.validate("*72", {"action": "reboot"})
    with pytest.raises(ConfigError, match="type must be one of"):
        feature_codes.validate("*72", {"action": "forward_set"})
    with pytest.raises(ConfigError, match="unknown field"):
        feature_codes.validate("*78", {"action": "dnd_on", "type": "busy"})
    assert feature_codes.validate("#33", {"action": "daynight_day", "toggle": "shop"}) == (
        "#33", {"action": "daynight_day", "toggle": "shop"})


async def test_clashing_codes_are_refused(store):
    a, _ = await _setup(store)
    with pytest.raises(ConfigError, match="clashes with \\*72"):
        await feature_codes.save(store.config, a.id, "*721", {"action": "dnd_on"})


async def test_dnd_and_forward_codes_change_the_callers_settings(store):
    a, b = await _setup(store)
    plan = await dial(store, a, "*78")
    assert (plan.fail_status, plan.fail_reason) == (603, "Done: DND on")
    assert (await forwarding.load(store.config, a.id, "1001"))["dnd"] is True
    assert (await forwarding.load(store.config, a.id, "1002")) == {}  # only the caller's own
    await dial(store, a, "*79")
    assert (await forwarding.load(store.config, a.id, "1001"))["dnd"] is False
    plan = await dial(store, a, "*721002")
    assert plan.fail_reason == "Done: forward unconditional to 1002"
    assert (await forwarding.load(store.config, a.id, "1001"))["unconditional"] == "1002"
    plan = await dial(store, a, "*7201701234567")
    assert (await forwarding.load(store.config, a.id, "1001"))["unconditional"] == "tel:01701234567"
    assert (await dial(store, a, "*72")).fail_status == 484  # no number
    assert (await dial(store, a, "*7812")).fail_status == 404  # takes no number
    assert (await dial(store, a, "*99")).fail_status == 404  # unknown code
    plan = await dial(store, a, "*73")
    assert "unconditional" not in await forwarding.load(store.config, a.id, "1001")
    assert plan.fail_status == 603


async def test_same_code_means_different_things_per_tenant(store):
    a, b = await _setup(store)
    await dial(store, b, "*78")  # beta: night mode
    assert await time_switch.get_mode(store.config, b.id, "main") == "night"
    assert await forwarding.load(store.config, b.id, "1001") == {}
    assert await time_switch.get_mode(store.config, a.id, "main") == "day"
    assert (await dial(store, b, "*33")).fail_status == 404  # alpha's code does nothing in beta
    assert await time_switch.get_mode(store.config, a.id, "main") == "day"
    await dial(store, a, "*33")
    assert await time_switch.get_mode(store.config, a.id, "main") == "night"


async def test_hide_callerid_prefix_dials_on_anonymously(store):
    a, _ = await _setup(store)
    plan = await dial(store, a, "*671002")
    assert plan.privacy and plan.callee == "1002" and plan.fail_status == 480  # 1002 not registered
    plan = await dial(store, a, "1002")
    assert not plan.privacy


async def test_forward_by_code_obeys_the_class_of_service(store):
    from node.pbx import screening

    a, _ = await _setup(store)
    await screening.save_cos(store.config, a.id, "local", {"allow": ["internal", "local", "national"],
                                                           "extensions": ["1001"]})
    plan = await dial(store, a, "*720044113496000")
    assert plan.fail_status == 403 and "international calls are not allowed" in plan.fail_reason
    assert "unconditional" not in await forwarding.load(store.config, a.id, "1001")
    assert (await dial(store, a, "*72030123456")).fail_status == 603  # national is fine
