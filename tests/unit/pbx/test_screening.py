"""Caller matching, the inbound block list, caller ID settings and classes of service."""

from __future__ import annotations

import pytest

from node.config_rules import ConfigError
from node.pbx import screening
from node.pbx.dialplan import FeatureState, plan_inbound, plan_outgoing
from tests.unit.pbx._fixtures import alpha_beta


async def _setup(store):
    c = store.config
    a, b = await alpha_beta(store, ("1001", "1002"))
    await c.create_trunk(a.id, "carrier", "127.0.0.3")
    await c.create_route(a.id, "", "carrier")
    await c.create_did(a.id, "+4930555", "extension", "1002")
    await c.create_did(b.id, "+4930777", "extension", "1002")
    return a, b


def test_e164_and_country():
    assert screening.e164("447700900123") == "+447700900123"
    assert screening.e164("00447700900123") == "+447700900123"
    assert screening.e164("030123456", "DE") == "+4930123456"
    assert screening.e164("anonymous") is None
    assert screening.country_of("+14155550100") == "US"
    assert screening.country_of("0041446681800") == "CH"


def test_caller_match_exact_prefix_country_anonymous():
    doc = screening.validate_caller_match({"numbers": ["+4930111"], "prefixes": ["+4990*"], "countries": ["GB"]})
    assert screening.caller_matches_doc(doc, "004930111")      # same number, other notation
    assert screening.caller_matches_doc(doc, "+4990012345")    # prefix
    assert screening.caller_matches_doc(doc, "447700900123")   # country
    assert not screening.caller_matches_doc(doc, "+4930112")
    assert not screening.caller_matches_doc(doc, "anonymous")
    assert screening.caller_matches_doc({"anonymous": True}, "anonymous")
    with pytest.raises(ConfigError, match="not an ISO 3166"):
        screening.validate_caller_match({"countries": ["ZZ"]})
    with pytest.raises(ConfigError, match="use digits"):
        screening.validate_caller_match({"numbers": ["12ab"]})


async def test_block_list_rejects_inbound_callers_per_tenant(store):
    a, b = await _setup(store)
    await screening.save_block_list(store.config, a.id, {"numbers": ["+447700900666"], "anonymous": True})
    trunks = await store.config.trunks_by_address("127.0.0.3")
    plan = await plan_inbound(trunks, "4930555", "447700900666", store.config, store.locations, FeatureState())
    assert (plan.fail_status, plan.fail_reason) == (603, "Decline (caller blocked)")
    plan = await plan_inbound(trunks, "4930555", "anonymous", store.config, store.locations, FeatureState())
    assert plan.fail_status == 603
    plan = await plan_inbound(trunks, "4930555", "447700900667", store.config, store.locations, FeatureState())
    assert plan.fail_status == 480  # not blocked: 1002 is just not registered
    assert await screening.blocked(store.config, b.id, "447700900666") is False


async def test_caller_id_settings(store):
    a, b = await _setup(store)
    with pytest.raises(ConfigError, match="not a DID of this tenant"):
        await screening.save_caller_id(store.config, a.id, "1001", {"number": "+4930777"})  # beta's DID
    await screening.save_caller_id(store.config, a.id, "1001", {"number": "+4930555", "hide": True})
    caller = await store.config.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, caller, "0301234", store.config, store.locations, FeatureState())
    assert plan.privacy and plan.caller_number == "+4930555"


async def test_class_of_service(store):
    a, _ = await _setup(store)
    c = store.config
    with pytest.raises(ConfigError, match="allow"):
        await screening.save_cos(c, a.id, "x", {"allow": ["everything"]})
    await screening.save_cos(c, a.id, "lobby", {
        "allow": ["internal", "local", "national"], "extensions": ["1001"],
        "deny_numbers": ["0800*"], "allow_numbers": ["+441135550100"]})
    with pytest.raises(ConfigError, match="already in class of service 'lobby'"):
        await screening.save_cos(c, a.id, "other", {"extensions": ["1001"]})
    check = screening.check_dial
    assert await check(c, a.id, "1001", "1002", True) is None
    assert await check(c, a.id, "1001", "030123456", False) is None
    assert "international calls are not allowed" in await check(c, a.id, "1001", "0044113496000", False)
    assert await check(c, a.id, "1001", "0044113496000", False) == await check(c, a.id, "1001", "+44113496000", False)
    assert await check(c, a.id, "1001", "00441135550100", False) is None  # allowed single number
    assert "premium" in await check(c, a.id, "1001", "09001234", False)
    assert "barred" in await check(c, a.id, "1001", "08001234", False)
    assert await check(c, a.id, "1001", "112", False) is None  # emergency always
    assert await check(c, a.id, "1002", "0044113496000", False) is None  # 1002 has no class
    caller = await c.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, caller, "0044113496000", c, store.locations, FeatureState())
    assert plan.fail_status == 403 and "class of service lobby" in plan.fail_reason
