"""Fixtures that run a real hivepbx node in the test's event loop, on loopback."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from node.runtime.app import Node
from node.runtime.config import NodeConfig
from node.transport.sockets import Listen
from tests.peers.net import free_port


class RunningNode:
    def __init__(self, node: Node, port: int) -> None:
        self.node = node
        self.port = port
        self.config = node.backend.config
        self.locations = node.backend.locations
        self.cdrs = node.backend.cdrs

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def tenant(self, name: str, domain: str, **opts):
        return await self.config.create_tenant(name, domain, **opts)

    async def wait_cdrs(self, tenant_id: int, count: int, timeout: float = 10.0):
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            cdrs = await self.cdrs.list(tenant_id)
            if len(cdrs) >= count or loop.time() > deadline:
                return cdrs
            await asyncio.sleep(0.05)

    async def wait_registered(self, tenant_id: int, ext: str, timeout: float = 10.0):
        import time

        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if await self.locations.lookup(tenant_id, ext, time.time()):
                return True
            await asyncio.sleep(0.05)
        return False

    async def wait_idle(self, timeout: float = 10.0) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            if not self.node.service.calls:
                return True
            await asyncio.sleep(0.05)
        return False


def node_config(tmp_path: Path, port: int, **kw) -> NodeConfig:
    rtp = free_port("127.0.0.1", span=16)  # 4 concurrent anchored calls: plenty for a test
    return NodeConfig(
        data_dir=tmp_path / "node",
        listens=(Listen("udp", "127.0.0.1", port), Listen("tcp", "127.0.0.1", port)),
        http_port=0,
        rtp_port_min=rtp,
        rtp_port_max=rtp + 15,
        rtp_bind="127.0.0.1",
        **kw,
    )


@pytest.fixture
async def pbx(tmp_path):
    port = free_port("127.0.0.1")
    async with Node(node_config(tmp_path, port, ring_timeout=8)) as node:
        yield RunningNode(node, port)
