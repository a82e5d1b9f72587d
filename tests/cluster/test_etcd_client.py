"""cluster/etcd/client.py's helpers for a component on its own etcd connection: the client
is closed on every way out (``open_with_client``), and a stalled call fails within its
deadline as EtcdTimeout, an EtcdUnavailable (``within``)."""

from __future__ import annotations

import asyncio

import pytest

from cluster.etcd.client import EtcdTimeout, EtcdUnavailable, open_with_client, within


class Thing:
    def __init__(self, client) -> None:
        self.client = client
        self.closed = False

    async def close(self) -> None:
        self.closed = True


async def test_open_with_client_closes_the_thing_then_its_client(etcd_server, etcd_prefix):
    async def build(client):
        await client.put(f"{etcd_prefix}k".encode(), b"v")  # the client works inside build
        thing = Thing(client)
        return thing, thing.close

    thing, close = await open_with_client(etcd_server.endpoint, build)
    client = thing.client
    assert (await client.get(f"{etcd_prefix}k".encode())).value == b"v"
    await client.delete(f"{etcd_prefix}k".encode())
    await close()
    assert thing.closed and client.channel is None  # aetcd's channel is gone: closed


async def test_open_with_client_closes_the_client_when_build_fails(etcd_server):
    seen = []

    async def build(client):
        seen.append(client)
        raise ValueError("bad configuration")

    with pytest.raises(ValueError, match="bad configuration"):
        await open_with_client(etcd_server.endpoint, build)
    assert seen and seen[0].channel is None


async def test_the_client_is_closed_even_when_the_thing_fails_to_close(etcd_server):
    async def failing_close() -> None:
        raise RuntimeError("close failed")

    async def build(client):
        return client, failing_close

    client, close = await open_with_client(etcd_server.endpoint, build)
    with pytest.raises(RuntimeError, match="close failed"):
        await close()
    assert client.channel is None


async def test_open_with_client_reports_an_unreachable_etcd():
    from tests.peers.net import free_port

    async def build(client):  # pragma: no cover - never reached
        raise AssertionError("built without etcd")

    with pytest.raises(EtcdUnavailable, match="cannot reach etcd"):
        await open_with_client(f"127.0.0.1:{free_port()}", build, timeout=1.0)


async def test_within_gives_up_at_its_deadline_and_cancels_the_call():
    cancelled = asyncio.Event()

    async def stalled():
        try:
            await asyncio.sleep(60)
        finally:
            cancelled.set()

    with pytest.raises(EtcdTimeout, match="within 0.05 s") as e:
        await within(stalled(), 0.05)
    assert isinstance(e.value, EtcdUnavailable) and cancelled.is_set()
    assert await within(asyncio.sleep(0, "answer"), 0.05) == "answer"
