"""Paging: page group validation, and the plan of a page (auto-answer headers, straight to
the phones, pager and do-not-disturb members left out, tenant isolation)."""

from __future__ import annotations

import time

import pytest

from node.config_rules import ConfigError
from node.model import Binding
from node.pbx import feature_codes, feature_objects, forwarding, paging
from node.pbx.dialplan import FeatureState, plan_outgoing


@pytest.mark.parametrize("doc, msg", [
    ({}, "members"), ({"members": []}, "non-empty"), ({"members": ["x1"]}, "page group member"),
    ({"members": ["1002"], "volume": 3}, "members"),
])
def test_page_group_validation(doc, msg):
    with pytest.raises(ConfigError) as e:
        paging.validate(doc)
    assert msg in str(e.value)


async def _register(store, tenant, ext, port):
    b = Binding(tenant_id=tenant.id, extension=ext, contact=f"sip:{ext}@127.0.0.1:{port}", transport="udp",
                source_host="127.0.0.1", source_port=port, expires_at=time.time() + 300, call_id=f"c{port}", cseq=1)
    await store.locations.save(b)


async def test_page_plan(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    b = await c.create_tenant("beta", "beta.example")
    for n in ("1001", "1002", "1003", "1004"):
        await c.create_extension(a.id, n, "pw-secret-1")
    await c.create_extension(b.id, "1001", "pw-secret-1")
    for i, n in enumerate(("1001", "1002", "1003", "1004")):
        await _register(store, a, n, 6000 + i)
    await feature_codes.save(c, a.id, "*80", {"action": "page"})
    await feature_objects.save(c, a.id, "page_group", "850", {"members": ["1001", "1002", "1003", "1004"]})
    with pytest.raises(ConfigError, match="not an extension of this tenant"):
        await feature_objects.save(c, b.id, "page_group", "850", {"members": ["1002"]})
    await forwarding.update(c, a.id, "1004", dnd=True)
    # a forward on 1002 does not apply to a page
    await forwarding.update(c, a.id, "1002", unconditional="1003")
    pager = await c.get_extension(a.id, "1001")
    plan = await plan_outgoing(a, pager, "*80850", c, store.locations, FeatureState())
    assert sorted(t.port for t in plan.attempts[0]) == [6001, 6002]  # not the pager, not on DND
    assert ("Call-Info", "<sip:alpha.example>;answer-after=0") in plan.extra_headers
    plan = await plan_outgoing(a, pager, "*801002", c, store.locations, FeatureState())
    assert [t.port for t in plan.attempts[0]] == [6001] and plan.callee_ext.number == "1002"
    plan = await plan_outgoing(a, pager, "1002", c, store.locations, FeatureState())
    assert plan.extra_headers == []
    plan = await plan_outgoing(a, pager, "*80999", c, store.locations, FeatureState())
    assert plan.fail_status == 404
