"""Bad configuration is refused with a message an operator can act on, and nothing is written."""

from __future__ import annotations

import pytest

from node.embedded import ConfigError, open_embedded


@pytest.fixture
def backend(tmp_path):
    b = open_embedded(tmp_path)
    yield b
    b.close()


@pytest.fixture
async def tenant(backend):
    return await backend.config.create_tenant("acme", "acme.example.com")


def test_config_error_is_a_value_error_with_status_hint():
    assert issubclass(ConfigError, ValueError)
    assert ConfigError("x").status_hint == 400
    assert ConfigError("x", 409).status_hint == 409


@pytest.mark.parametrize(
    "name, domain, opts, message",
    [
        ("", "a.example.com", {}, "invalid tenant name"),
        ("with space", "a.example.com", {}, "invalid tenant name"),
        ("1abc", "a.example.com", {}, "starting with a letter"),
        ("acme.com", "a.example.com", {}, "invalid tenant name"),
        ("acme", "localhost", {}, "invalid domain"),
        ("acme", "a..example.com", {}, "invalid domain"),
        ("acme", "-a.example.com", {}, "invalid domain"),
        ("acme", "a_b.example.com", {}, "invalid domain"),
        ("acme", "192.168.1.10", {}, "not an IP address"),
        ("acme", "x" * 64 + ".example.com", {}, "invalid domain"),
        ("acme", "a.example.com", {"max_calls": -1}, "max calls"),
        ("acme", "a.example.com", {"ring_timeout": 0}, "ring timeout"),
        ("acme", "a.example.com", {"ring_timeout": "30"}, "whole number"),
        ("acme", "a.example.com", {"timezone": "Mars/Olympus"}, "unknown timezone"),
    ],
)
async def test_bad_tenant(backend, name, domain, opts, message):
    with pytest.raises(ConfigError, match=message):
        await backend.config.create_tenant(name, domain, **opts)
    assert await backend.config.list_tenants() == []


async def test_tenant_values_are_normalised(backend):
    t = await backend.config.create_tenant(" acme ", "PBX.Acme.Example.", timezone="America/New_York")
    assert (t.name, t.domain, t.timezone) == ("acme", "pbx.acme.example", "America/New_York")


async def test_tenant_names_differ_in_more_than_case(backend):
    await backend.config.create_tenant("acme", "a.example.com")
    with pytest.raises(ConfigError, match="already exists") as e:
        await backend.config.create_tenant("ACME", "b.example.com")
    assert e.value.status_hint == 409


async def test_unknown_option_is_a_programming_error(backend):
    with pytest.raises(TypeError, match="colour"):
        await backend.config.create_tenant("acme", "a.example.com", colour="red")


@pytest.mark.parametrize(
    "number, password, opts, message",
    [
        ("1", "secret1", {}, "2 to 10 digits"),
        ("12345678901", "secret1", {}, "2 to 10 digits"),
        ("10a1", "secret1", {}, "invalid extension number"),
        ("+1001", "secret1", {}, "invalid extension number"),
        ("1001", "", {}, "too short"),
        ("1001", "abcde", {}, "at least 6"),
        ("1001", "abc\ndef", {}, "control characters"),
        ("1001", "x" * 129, {}, "too long"),
        ("1001", "secret1", {"display_name": 'Evil "Quote'}, "display name"),
        ("1001", "secret1", {"display_name": "x" * 65}, "display name too long"),
        ("1001", "secret1", {"callerid_number": "abc"}, "caller ID"),
    ],
)
async def test_bad_extension(backend, tenant, number, password, opts, message):
    with pytest.raises(ConfigError, match=message):
        await backend.config.create_extension(tenant.id, number, password, **opts)
    assert await backend.config.list_extensions(tenant.id) == []


async def test_extension_of_unknown_tenant(backend):
    with pytest.raises(ConfigError, match="no tenant") as e:
        await backend.config.create_extension(99, "1001", "secret1")
    assert e.value.status_hint == 404


@pytest.mark.parametrize(
    "number, dest_type, dest, message",
    [
        ("12a4", "extension", "1001", "invalid DID number"),
        ("++4930", "extension", "1001", "invalid DID number"),
        ("", "extension", "1001", "invalid DID number"),
        ("4930555", "pager", "1001", "unsupported DID destination"),
        ("4930555", "hunt_group", "600", "hunt group 600 does not exist"),
        ("4930555", "ivr", "800", "ivr 800 does not exist"),
        ("4930555", "extension", "x", "invalid extension number"),
        ("4930555", "extension", "1002", "extension 1002 does not exist"),
    ],
)
async def test_bad_did(backend, tenant, number, dest_type, dest, message):
    await backend.config.create_extension(tenant.id, "1001", "secret1")
    with pytest.raises(ConfigError, match=message):
        await backend.config.create_did(tenant.id, number, dest_type, dest)
    assert await backend.config.list_dids(tenant.id) == []


async def test_did_number_with_spaces_is_compacted(backend, tenant):
    await backend.config.create_extension(tenant.id, "1001", "secret1")
    d = await backend.config.create_did(tenant.id, " +49 30 555 ", "extension", "1001")
    assert d.number == "+4930555"


@pytest.mark.parametrize(
    "name, host, opts, message",
    [
        ("", "192.0.2.1", {}, "invalid trunk name"),
        ("my trunk", "192.0.2.1", {}, "invalid trunk name"),
        ("carrier", "", {}, "invalid trunk host"),
        ("carrier", "bad host", {}, "invalid trunk host"),
        ("carrier", "192.0.2.300", {}, "invalid trunk host"),
        ("carrier", "192.0.2.1", {"port": 0}, "port must be between 1 and 65535"),
        ("carrier", "192.0.2.1", {"port": 70000}, "port"),
        ("carrier", "192.0.2.1", {"transport": "tls"}, "use udp or tcp"),
        ("carrier", "192.0.2.1", {"from_domain": "not a domain"}, "invalid from domain"),
        ("carrier", "192.0.2.1", {"register": True}, "needs a username"),
        ("carrier", "192.0.2.1", {"password": "a\x00b"}, "trunk password"),
    ],
)
async def test_bad_trunk(backend, tenant, name, host, opts, message):
    with pytest.raises(ConfigError, match=message):
        await backend.config.create_trunk(tenant.id, name, host, **opts)
    assert await backend.config.list_trunks(tenant.id) == []


async def test_trunk_host_normalised(backend, tenant):
    t1 = await backend.config.create_trunk(tenant.id, "a", "SIP.Carrier.Example", transport="TCP")
    t2 = await backend.config.create_trunk(tenant.id, "b", "[2001:0DB8::0001]")
    assert (t1.host, t1.transport, t2.host) == ("sip.carrier.example", "tcp", "2001:db8::1")


async def test_duplicate_trunk_name(backend, tenant):
    await backend.config.create_trunk(tenant.id, "carrier", "192.0.2.1")
    with pytest.raises(ConfigError, match="trunk 'carrier' already exists"):
        await backend.config.create_trunk(tenant.id, "carrier", "192.0.2.2")
    assert [t.host for t in await backend.config.list_trunks(tenant.id)] == ["192.0.2.1"]


@pytest.mark.parametrize(
    "prefix, opts, message",
    [
        ("0a", {}, "invalid route prefix"),
        ("x", {}, "invalid route prefix"),
        ("0", {"strip": -1}, "strip"),
        ("0", {"strip": 21}, "strip"),
        ("0", {"prepend": "abc"}, "invalid prepend"),
        ("0", {"priority": -5}, "priority"),
    ],
)
async def test_bad_route(backend, tenant, prefix, opts, message):
    await backend.config.create_trunk(tenant.id, "carrier", "192.0.2.1")
    with pytest.raises(ConfigError, match=message):
        await backend.config.create_route(tenant.id, prefix, "carrier", **opts)
    assert await backend.config.list_routes(tenant.id) == []


async def test_duplicate_route(backend, tenant):
    await backend.config.create_trunk(tenant.id, "carrier", "192.0.2.1")
    await backend.config.create_route(tenant.id, "", "carrier")
    with pytest.raises(ConfigError, match=r"prefix \(default\) via trunk 'carrier' already exists"):
        await backend.config.create_route(tenant.id, "", "carrier", priority=3)
    assert len(await backend.config.list_routes(tenant.id)) == 1


async def test_trunk_in_use_cannot_be_deleted(backend, tenant):
    await backend.config.create_trunk(tenant.id, "carrier", "192.0.2.1")
    r = await backend.config.create_route(tenant.id, "0", "carrier")
    with pytest.raises(ConfigError, match=f"used by route {r.id}"):
        await backend.config.delete_trunk(tenant.id, "carrier")
    assert await backend.config.get_trunk(tenant.id, "carrier") is not None
    assert await backend.config.delete_route(tenant.id, r.id)
    assert await backend.config.delete_trunk(tenant.id, "carrier")


async def test_extension_behind_a_did_cannot_be_deleted(backend, tenant):
    await backend.config.create_extension(tenant.id, "1001", "secret1")
    await backend.config.create_did(tenant.id, "4930555", "extension", "1001")
    with pytest.raises(ConfigError, match="destination of DID 4930555"):
        await backend.config.delete_extension(tenant.id, "1001")
    assert await backend.config.get_extension(tenant.id, "1001") is not None
