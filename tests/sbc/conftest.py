"""An SBC in front of two real hivepbx nodes, all in the test's event loop, on loopback.

Each party has its own loopback address so a leak is unmistakable: phones and the SBC's
outside sockets on 127.0.0.1, the SBC's inside socket on 127.0.0.4, node A on 127.0.0.2 and
node B on 127.0.0.3. Embedded nodes share no registrations, so the tenant and its
extensions are provisioned on both.
"""

from __future__ import annotations

import asyncio
import contextlib
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from node.runtime.app import Node
from node.runtime.config import NodeConfig
from node.transport.sockets import Listen
from sbc.config import NodeTarget, SbcConfig
from sbc.runtime import Sbc
from tests.interop.conftest import RunningNode
from tests.peers.net import free_port

OUTSIDE_IP = "127.0.0.1"
INSIDE_IP = "127.0.0.4"
NODE_IPS = {"a": "127.0.0.2", "b": "127.0.0.3"}
DOMAIN = "alpha.example"
PASSWORDS = {"1001": "pw-1001-secret", "1002": "pw-1002-secret"}


def node_config(tmp_path: Path, name: str, **kw) -> tuple[NodeConfig, int]:
    ip = NODE_IPS[name]
    port = free_port(ip)
    rtp = free_port("127.0.0.1", span=16)
    cfg = NodeConfig(
        data_dir=tmp_path / f"node-{name}",
        listens=(Listen("udp", ip, port), Listen("tcp", ip, port)),
        http_port=0, rtp_port_min=rtp, rtp_port_max=rtp + 15, rtp_bind="127.0.0.1",
        node_id=name, ring_timeout=8, nat_ping_interval=0, **kw,
    )
    return cfg, port


async def provision(node: RunningNode, domain: str = DOMAIN):
    t = await node.tenant("alpha", domain)
    for ext, pw in PASSWORDS.items():
        await node.config.create_extension(t.id, ext, pw, display_name=f"Ext {ext}")
    return t


@dataclass
class Stack:
    sbc: Sbc
    nodes: dict[str, RunningNode]
    tenants: dict[str, object]
    node_ports: dict[str, int]
    workdir: Path | None = None
    dead: set = field(default_factory=set)

    @property
    def target(self) -> str:
        h, p = self.sbc.address("udp")
        return f"{h}:{p}"

    def node_addresses(self) -> list[str]:
        """Every string that would give a node away, for the leak checks."""
        out = [INSIDE_IP]
        for name, ip in NODE_IPS.items():
            out.append(ip)
        for port in self.node_ports.values():
            out.append(f":{port}")
        h, p = self.sbc.proxy.inside.bound["udp"]
        out.append(f":{p}")
        return out

    async def kill(self, name: str) -> None:
        """Stop a node abruptly (no draining): its sockets close, nothing answers there."""
        node = self.nodes[name].node
        if name not in self.dead:
            self.dead.add(name)
            await node.stop(0)

    def other(self, name: str) -> str:
        (o,) = [n for n in self.nodes if n != name]
        return o


def sbc_config(node_ports: dict[str, int], **kw) -> SbcConfig:
    sbc_port = free_port(OUTSIDE_IP)
    inside_port = free_port(INSIDE_IP)
    nodes = tuple(
        NodeTarget(name, NODE_IPS[name], port, "udp", dc=kw.pop(f"dc_{name}", "dc1"))
        for name, port in node_ports.items()
    )
    base = dict(
        listens=(Listen("udp", OUTSIDE_IP, sbc_port), Listen("tcp", OUTSIDE_IP, sbc_port)),
        internal_listens=(Listen("udp", INSIDE_IP, inside_port), Listen("tcp", INSIDE_IP, inside_port)),
        nodes=nodes, http_port=0, probe_interval=0.5, probe_timeout=0.5, node_timeout=1.0,
        down_after=2, up_after=2, secret=b"test-secret-test-secret", keepalive_interval=0,
        # the nodes share the test's event loop: their work would read as the SBC's overload
        max_loop_lag=0,
    )
    base.update(kw)
    return SbcConfig(**base)


@contextlib.asynccontextmanager
async def stack(tmp_path: Path, names=("a", "b"), node_kw: dict | None = None, **sbc_kw):
    nodes: dict[str, RunningNode] = {}
    ports: dict[str, int] = {}
    tenants = {}
    st: Stack | None = None
    try:
        for name in names:
            cfg, port = node_config(tmp_path, name, **(node_kw or {}))
            node = Node(cfg)
            try:
                await node.start()
            except BaseException:
                await node.stop(0)
                raise
            nodes[name] = RunningNode(node, port)
            ports[name] = port
            tenants[name] = await provision(nodes[name])
        async with Sbc(sbc_config(ports, **sbc_kw)) as sbc:
            st = Stack(sbc, nodes, tenants, ports, tmp_path)
            yield st
    finally:
        for name, rn in nodes.items():
            if st is None or name not in st.dead:
                await rn.node.stop(0)


@pytest.fixture
async def two_nodes(tmp_path):
    async with stack(tmp_path) as s:
        yield s


async def wait_for(pred, timeout: float = 10.0, step: float = 0.05) -> bool:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        r = pred()
        if asyncio.iscoroutine(r):
            r = await r
        if r:
            return True
        await asyncio.sleep(step)
    return False
