"""The SBC in front of an etcd cluster of two nodes (the ``cluster`` backend): the node list
comes from membership, registrations are shared, so with round robin a call handled by one
node reaches a phone that registered through the other, over the SBC; a node that dies
leaves the SBC's list with its lease and the calls go on on the survivor."""

from __future__ import annotations

import uuid

import pytest

from node.runtime.app import Node
from sbc.config import SbcConfig
from sbc.runtime import Sbc
from tests.interop.conftest import RunningNode
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, node_config, provision, sbc_config, wait_for
from tests.sbc.test_sbc_calls import assert_hidden

pytestmark = pytest.mark.interop


async def test_shared_registrations_round_robin_and_membership(tmp_path, etcd_server):
    prefix = f"/test-sbc-{uuid.uuid4().hex}/"
    nodes: dict[str, RunningNode] = {}
    ports: dict[str, int] = {}
    stopped: set[str] = set()
    try:
        for name in ("a", "b"):
            cfg, port = node_config(tmp_path, name)
            cfg = cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                                  "backend": "cluster", "etcd_endpoints": (etcd_server.endpoint,),
                                  "etcd_prefix": prefix, "membership_ttl": 2})
            node = Node(cfg)
            try:
                await node.start()
            except BaseException:
                await node.stop(0)
                raise
            nodes[name] = RunningNode(node, port)
            ports[name] = port
        tenant = await provision(nodes["a"])  # one etcd: in force on both nodes
        base = sbc_config(ports, mode="round_robin")
        cfg = SbcConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                           "nodes": (), "etcd_endpoints": (etcd_server.endpoint,), "etcd_prefix": prefix})
        async with Sbc(cfg) as sbc:
            assert await wait_for(lambda: len(sbc.dispatcher.nodes) == 2, 5), "membership gave no nodes"
            assert {n.host for n in sbc.dispatcher.nodes} == {"127.0.0.2", "127.0.0.3"}
            target = "%s:%d" % sbc.address("udp")
            callee = Sipp("uas_register_then_answer.xml", target, workdir=tmp_path / "p", user="1002", domain=DOMAIN,
                          auth_user="1002", auth_password=PASSWORDS["1002"], ooc_scenario="uas_answer.xml",
                          duration_ms=30000, timeout=50)
            await callee.start()
            try:
                assert await wait_for(lambda: nodes["b"].wait_registered(tenant.id, "1002", 0.1))
                caller = await Sipp("uac_call.xml", target, workdir=tmp_path / "c", service="1002", user="1001",
                                    domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"],
                                    calls=4, rate=4, duration_ms=200, timeout=30).run()
                caller.assert_ok()
                # round robin spread the calls over both nodes, each reached the phone via the SBC
                from sbc.metrics import FORWARDED

                per_node = {n: FORWARDED.value(n, "INVITE") for n in ("a", "b")}
                assert all(v >= 2 for v in per_node.values()), per_node
                # node b dies: its lease runs out, the SBC drops it, calls go on through node a
                await nodes["b"].node.stop(0)
                stopped.add("b")
                assert await wait_for(lambda: [n.id for n in sbc.dispatcher.nodes] == ["a"], 10)
                after = await Sipp("uac_call.xml", target, workdir=tmp_path / "c2", service="1002", user="1001",
                                   domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"],
                                   calls=2, rate=4, duration_ms=200, timeout=30).run()
                after.assert_ok()
            finally:
                cres = await callee.stop()
            assert len(cres.received("INVITE")) >= 6
            assert_hidden(_Secrets(ports, sbc), cres.received())
    finally:
        for name, rn in nodes.items():
            if name not in stopped:
                await rn.node.stop(0)


class _Secrets:
    """What assert_hidden needs from a stack."""

    def __init__(self, ports, sbc) -> None:
        self.ports = ports
        self.sbc = sbc

    def node_addresses(self) -> list[str]:
        return ["127.0.0.2", "127.0.0.3", "127.0.0.4"] + [f":{p}" for p in self.ports.values()] + \
            [":%d" % self.sbc.proxy.inside.bound["udp"][1]]
