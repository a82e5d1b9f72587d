"""Call park lots: validation, slot numbering, no overlap with extensions or other lots."""

from __future__ import annotations

import pytest

from node.config_rules import ConfigError
from node.embedded import open_embedded
from node.pbx import feature_objects, park


@pytest.fixture
def store(tmp_path):
    b = open_embedded(tmp_path)
    yield b
    b.close()


@pytest.mark.parametrize("name, doc, msg", [
    ("x", {"first": "701"}, "named by the number"),
    ("700", {"count": 3}, '{"first"'),
    ("700", {"first": "701", "count": 0}, "count must be"),
    ("700", {"first": "701", "count": True}, "count must be"),
    ("700", {"first": "701", "timeout": 1}, "timeout must be"),
    ("700", {"first": "95", "count": 10}, "change length"),
    ("700", {"first": "695", "count": 10}, "must not be one of its slots"),
    ("700", {"first": "701", "colour": "red"}, '{"first"'),
])
def test_validation_says_what_is_wrong(name, doc, msg):
    with pytest.raises(ConfigError) as e:
        park.validate(name, doc)
    assert msg in str(e.value)


def test_slots_keep_their_width():
    assert park.slots({"first": "0701", "count": 3}) == ["0701", "0702", "0703"]
    assert park.validate("700", {"first": "701"}) == {"first": "701", "count": 10, "timeout": 60}


async def test_lots_are_per_tenant_and_do_not_overlap(store):
    c = store.config
    a = await c.create_tenant("alpha", "alpha.example")
    b = await c.create_tenant("beta", "beta.example")
    await c.create_extension(a.id, "1001", "pw-secret-1")
    await feature_objects.save(c, a.id, "park", "700", {"first": "701", "count": 5})
    with pytest.raises(ConfigError, match="overlaps park lot 700"):
        await feature_objects.save(c, a.id, "park", "800", {"first": "705", "count": 5})
    with pytest.raises(ConfigError, match="1001 is an extension"):
        await feature_objects.save(c, a.id, "park", "1000", {"first": "1001", "count": 2})
    await feature_objects.save(c, b.id, "park", "800", {"first": "705", "count": 5})  # another tenant: fine
    assert await park.find(c, a.id, "703") == ("700", {"first": "701", "count": 5, "timeout": 60}, "703")
    assert (await park.find(c, a.id, "700"))[2] is None
    assert await park.find(c, a.id, "706") is None
    assert (await park.find(c, b.id, "706"))[0] == "800"
