"""Two opens of one file stand for the running node and the ``hivepbx`` CLI: a CLI change
reaches the node's in-memory view through ``PRAGMA data_version``, at most one poll
interval later, and the node's own writes never force a reload."""

from __future__ import annotations

import time

import pytest

from node.embedded import open_embedded
from node.embedded.db import POLL_INTERVAL
from node.model import Binding


class Clock:
    """A monotonic clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def node(tmp_path, clock):
    b = open_embedded(tmp_path, clock=clock)
    yield b
    b.close()


@pytest.fixture
def cli(tmp_path, node):
    b = open_embedded(tmp_path)
    yield b
    b.close()


def test_poll_interval_is_under_a_second():
    assert 0 < POLL_INTERVAL <= 0.5


async def test_cli_change_seen_after_poll_interval(node, cli, clock):
    t = await cli.config.create_tenant("acme", "acme.example.com")
    # served from memory: until the poll interval passes the node does not look
    assert await node.config.tenant_by_domain("acme.example.com") is None
    clock.now += POLL_INTERVAL
    assert await node.config.tenant_by_domain("acme.example.com") == t

    await cli.config.create_extension(t.id, "1001", "secret1")
    clock.now += POLL_INTERVAL / 2
    assert await node.config.get_extension(t.id, "1001") is None
    clock.now += POLL_INTERVAL / 2
    assert (await node.config.get_extension(t.id, "1001")).password == "secret1"


async def test_cli_object_change_seen_by_the_synchronous_read(node, cli, clock):
    """``get_object_nowait`` (recording's policy per answered call) polls like the awaited reads."""
    t = await cli.config.create_tenant("acme", "acme.example.com")
    await cli.config.create_extension(t.id, "1001", "secret1")
    clock.now += POLL_INTERVAL
    assert node.config.get_object_nowait(t.id, "recording", "1001") is None
    await cli.config.put_object(t.id, "recording", "1001", {"mode": "always"})
    assert node.config.get_object_nowait(t.id, "recording", "1001") is None  # not polled yet
    clock.now += POLL_INTERVAL
    assert node.config.get_object_nowait(t.id, "recording", "1001") == {"mode": "always"}
    await cli.config.delete_object(t.id, "recording", "1001")
    clock.now += POLL_INTERVAL
    assert node.config.get_object_nowait(t.id, "recording", "1001") is None


async def test_refresh_if_changed_reports_changes_once(node, cli):
    assert node.config.refresh_if_changed() is False
    await cli.config.create_tenant("acme", "acme.example.com")
    assert node.config.refresh_if_changed() is True
    assert node.config.refresh_if_changed() is False
    assert [t.name for t in await node.config.list_tenants()] == ["acme"]


async def test_own_writes_do_not_trigger_reload(node, cli):
    t = await node.config.create_tenant("acme", "acme.example.com")
    await node.config.create_extension(t.id, "1001", "secret1")
    await node.locations.save(
        Binding(t.id, "1001", "sip:1001@10.0.0.1", "10.0.0.1", 5060, "udp", time.time() + 60, "c", 1)
    )
    assert node.config.refresh_if_changed() is False
    # the writer's own view was updated in place
    assert (await node.config.get_extension(t.id, "1001")).number == "1001"
    # and the other process sees it after its refresh
    cli.config.refresh_if_changed()
    assert await cli.config.get_extension(t.id, "1001") is not None
    assert len(await cli.locations.list(t.id, time.time())) == 1


async def test_cli_deletions_reach_every_view_of_the_node(node, cli, clock):
    t = await cli.config.create_tenant("acme", "acme.example.com")
    await cli.config.create_extension(t.id, "1001", "secret1")
    await cli.config.create_extension(t.id, "1002", "secret2")
    await cli.config.create_trunk(t.id, "carrier", "192.0.2.10")
    await cli.config.create_route(t.id, "0", "carrier")
    node.config.refresh_if_changed()
    now = time.time()
    for ext in ("1001", "1002"):
        await node.locations.save(
            Binding(t.id, ext, f"sip:{ext}@10.0.0.1", "10.0.0.1", 5060, "udp", now + 600, "c" + ext, 1)
        )

    await cli.config.delete_extension(t.id, "1001")
    clock.now += POLL_INTERVAL
    assert await node.config.get_extension(t.id, "1001") is None
    assert await node.locations.lookup(t.id, "1001", now) == []  # its registration went with it
    assert len(await node.locations.lookup(t.id, "1002", now)) == 1

    await cli.config.delete_route(t.id, (await cli.config.list_routes(t.id))[0].id)
    await cli.config.delete_trunk(t.id, "carrier")
    clock.now += POLL_INTERVAL
    assert await node.config.match_routes(t.id, "0301") == []
    assert await node.config.trunks_by_address("192.0.2.10") == []

    await cli.config.delete_tenant(t.id)
    clock.now += POLL_INTERVAL
    assert await node.config.tenant_by_domain("acme.example.com") is None
    assert await node.locations.list(None, now) == []


async def test_write_sees_other_process_first(node, cli):
    """A write validates against the file, never against a stale view."""
    t = await cli.config.create_tenant("acme", "acme.example.com")
    await cli.config.create_extension(t.id, "1001", "secret1")
    # node has not polled yet; its write must still see the CLI's extension
    with pytest.raises(ValueError, match="already exists"):
        await node.config.create_extension(t.id, "1001", "other12")
    assert (await node.config.get_extension(t.id, "1001")).password == "secret1"


async def test_deleting_an_extension_drops_its_registrations_in_the_same_process(node):
    """The node's own deletes do not change data_version; the location view is told directly."""
    t = await node.config.create_tenant("acme", "acme.example.com")
    now = time.time()
    for ext in ("1001", "1002"):
        await node.config.create_extension(t.id, ext, "secret1")
        await node.locations.save(Binding(t.id, ext, f"sip:{ext}@10.0.0.1", "10.0.0.1", 5060, "udp", now + 60, "c", 1))
    assert await node.config.delete_extension(t.id, "1001")
    assert await node.locations.lookup(t.id, "1001", now) == []
    assert [b.extension for b in await node.locations.list(t.id, now)] == ["1002"]
