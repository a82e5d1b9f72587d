"""Speed dials: validation, personal before shared, and class of service on the target."""

from __future__ import annotations

import pytest

from node.config_rules import ConfigError
from node.pbx import feature_codes, feature_objects, screening, speed_dial
from tests.unit.pbx._fixtures import alpha_beta, dial


async def _setup(store):
    c = store.config
    a, b = await alpha_beta(store, ("1001", "1002", "1003"))
    await feature_codes.save(c, a.id, "*0", {"action": "speed_dial"})
    await feature_objects.save(c, a.id, "speed_dial", "tenant", {"01": "1002", "02": "tel:0301234567", "7": "1003"})
    await feature_objects.save(c, a.id, "speed_dial", "1001", {"01": "1003"})
    return a, b


@pytest.mark.parametrize("name, doc, msg", [
    ("tenant", {"1234": "1002"}, "1-3 digits"),
    ("tenant", {"01": "sip:bob@192.0.2.1"}, "not a SIP URI"),
    ("tenant", {"01": "bob"}, "internal number"),
    ("tenant", ["1002"], "maps indexes"),
    ("shared", {"01": "1002"}, "named 'tenant'"),
])
def test_validation_says_what_is_wrong(name, doc, msg):
    with pytest.raises(ConfigError) as e:
        speed_dial.validate(name, doc)
    assert msg in str(e.value)


async def test_save_checks_the_tenant(store):
    a, b = await _setup(store)
    with pytest.raises(ConfigError, match="no extension, hunt group"):
        await speed_dial.save(store.config, b.id, "tenant", {"01": "1999"})
    with pytest.raises(ConfigError, match="no such extension"):
        await speed_dial.save(store.config, a.id, "1999", {"01": "1002"})


async def test_personal_entry_wins_then_shared(store):
    a, _ = await _setup(store)
    assert await speed_dial.lookup(store.config, a.id, "1001", "01") == "1003"
    assert await speed_dial.lookup(store.config, a.id, "1002", "01") == "1002"
    assert await speed_dial.lookup(store.config, a.id, "1001", "02") == "0301234567"
    assert await speed_dial.lookup(store.config, a.id, "1001", "99") is None


async def test_dialled_speed_dial_routes_like_the_number(store):
    a, b = await _setup(store)
    plan = await dial(store, a, "*07", "1002")
    assert plan.callee == "1003" and plan.fail_status == 480  # 1003 exists, not registered
    plan = await dial(store, a, "*099")
    assert plan.fail_status == 404 and "no speed dial 99" in plan.fail_reason
    # beta has no *0 code: alpha's speed dials mean nothing there
    assert (await dial(store, b, "*001")).fail_status == 404


async def test_class_of_service_applies_to_the_target(store):
    a, _ = await _setup(store)
    await screening.save_cos(store.config, a.id, "internal", {"allow": ["internal"], "extensions": ["1001"]})
    plan = await dial(store, a, "*002")
    assert plan.fail_status == 403 and "not allowed for extension 1001" in plan.fail_reason
    assert (await dial(store, a, "*001")).fail_status == 480  # internal 1003: allowed


def test_cli_object_put_validates_the_office_feature_kinds(tmp_path):
    """``hivepbx object put`` writes pickup groups, park lots, page groups and speed dials
    through their modules' checks (node/pbx/feature_objects.py)."""
    import io
    import json

    from node.cli import main

    def run(*argv):
        out, err = io.StringIO(), io.StringIO()
        rc = main(list(argv) + ["--data-dir", str(tmp_path)], stdout=out, stderr=err)
        return rc, out.getvalue(), err.getvalue()

    assert run("tenant", "add", "acme", "acme.example")[0] == 0
    assert run("tenant", "add", "beta", "beta.example")[0] == 0
    for n in ("1001", "1002"):
        assert run("ext", "add", "acme", n, "--password", f"secret-{n}")[0] == 0
    ok = [("pickup_group", "sales", {"members": ["1001", "1002"]}),
          ("park", "700", {"first": "701", "count": 3, "timeout": 45}),
          ("page_group", "850", {"members": ["1001", "1002"]}),
          ("speed_dial", "tenant", {"01": "1002", "02": "tel:0301234"})]
    for kind, name, doc in ok:
        rc, _, err = run("object", "put", "acme", kind, name, json.dumps(doc))
        assert rc == 0, err
    assert json.loads(run("object", "get", "acme", "park", "700")[1]) == {"first": "701", "count": 3, "timeout": 45}
    rc, _, err = run("object", "put", "beta", "pickup_group", "sales", '{"members": ["1001"]}')
    assert rc == 2 and "1001 is not an extension of this tenant" in err
    rc, _, err = run("object", "put", "acme", "park", "800", '{"first": "1001", "count": 2}')
    assert rc == 2 and "1001 is an extension" in err
    rc, _, err = run("object", "put", "acme", "speed_dial", "tenant", '{"01": "sip:x@example.com"}')
    assert rc == 2 and "IP address" in err
