"""A tenant's edge policy managed like the rest of its configuration: `hivepbx edge-policy`
writes it to the cluster's etcd (checked by the SBC's own rules), and a running SBC in front
of a cluster node enforces it within a second, no restart: a SIPp call from an address the
policy does not list is refused at the edge, and the same call reaches the node once the
policy lists it. Another tenant's policy never applies to this one."""

from __future__ import annotations

import asyncio
import os
import sys
import uuid
from pathlib import Path

import pytest

from node.runtime.app import Node
from sbc.config import SbcConfig
from sbc.protection import POLICY_KIND, POLICY_NAME
from sbc.runtime import Sbc
from tests.interop.conftest import RunningNode
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, node_config, provision, sbc_config, wait_for

pytestmark = pytest.mark.interop

ROOT = Path(__file__).resolve().parents[2]
PHONE_IP = "127.0.0.20"


async def cli(etcd: str, prefix: str, *argv: str) -> tuple[int, str, str]:
    """`hivepbx ...` in its own process, as an operator runs it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEPBX_ETCD")} | {"PYTHONPATH": str(ROOT)}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", *argv, "--etcd", etcd, "--etcd-prefix", prefix, cwd=ROOT, env=env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


def call(target: str, tmp_path: Path, name: str, expected: int) -> Sipp:
    return Sipp("uac_call_expect_error.xml", target, workdir=tmp_path / name, service="1002", user="1001",
                domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"], local_ip=PHONE_IP,
                variables={"expected": expected}, timeout=20)


async def test_policy_set_from_the_cli_reaches_a_running_sbc(tmp_path, etcd_server):
    prefix = f"/test-edge-{uuid.uuid4().hex}/"
    ep = etcd_server.endpoint
    cfg, port = node_config(tmp_path, "a")
    cfg = cfg.__class__(**{**{f: getattr(cfg, f) for f in cfg.__dataclass_fields__},
                          "backend": "cluster", "etcd_endpoints": (ep,), "etcd_prefix": prefix, "membership_ttl": 2})
    node = Node(cfg)
    try:
        await node.start()
        rn = RunningNode(node, port)
        await provision(rn)  # tenant "alpha" (alpha.example), 1001 and 1002, in etcd
        await rn.config.create_tenant("beta", "beta.example")
        base = sbc_config({"a": port})
        sbc_cfg = SbcConfig(**{**{f: getattr(base, f) for f in base.__dataclass_fields__},
                               "nodes": (), "etcd_endpoints": (ep,), "etcd_prefix": prefix})
        async with Sbc(sbc_cfg) as sbc:
            assert await wait_for(lambda: len(sbc.dispatcher.nodes) == 1, 5), "membership gave no node"
            guard = sbc.proxy.guard
            target = "%s:%d" % sbc.address("udp")
            assert not guard.tenants.policy(DOMAIN).filter_by_ip

            # a bad value is refused by the SBC's validator, with what is wrong, and nothing is stored
            rc, out, err = await cli(ep, prefix, "edge-policy", "set", "alpha", "--filter-by-ip",
                                     "--allow", "10.0.0.0/8,10.0.0.300")
            assert rc == 2 and "10.0.0.300" in err and "not an IP address" in err, (rc, out, err)
            assert await rn.config.get_object((await rn.config.list_tenants())[0].id, POLICY_KIND, POLICY_NAME) is None

            # the other tenant's policy lists the phone's address: it must not apply to alpha
            rc, out, err = await cli(ep, prefix, "edge-policy", "set", "beta", "--filter-by-ip", "--allow", PHONE_IP)
            assert rc == 0, err
            rc, out, err = await cli(ep, prefix, "edge-policy", "set", "alpha", "--filter-by-ip",
                                     "--allow", "10.0.0.0/8", "--max-calls", "5")
            assert rc == 0 and "max 5 concurrent" in out, (out, err)
            assert await wait_for(lambda: guard.tenants.policy(DOMAIN).filter_by_ip, 5), "the SBC never saw it"
            assert guard.tenants.policy("beta.example").filter_by_ip
            r = await call(target, tmp_path, "blocked", 403).run()
            r.assert_ok()
            assert not r.received(407), "refused at the edge, before the node's challenge"

            # the phone's range is added: the same call now reaches the node (which challenges
            # it and, 1002 not being registered, answers 480)
            rc, out, err = await cli(ep, prefix, "edge-policy", "set", "alpha", "--allow", "10.0.0.0/8,127.0.0.16/28")
            assert rc == 0, err
            assert await wait_for(lambda: guard.tenants.policy(DOMAIN).source_allowed(PHONE_IP, None), 5)
            assert guard.tenants.policy(DOMAIN).max_calls == 5  # `set` changes only what it is given
            r = await call(target, tmp_path, "allowed", 480).run()
            r.assert_ok()
            assert r.received(407), "the node challenged it: the edge let it through"

            rc, out, err = await cli(ep, prefix, "edge-policy", "show", "alpha.example", "--json")
            assert rc == 0 and '"127.0.0.16/28"' in out, out
            # cleared: the tenant is back to no limits at the edge
            rc, out, err = await cli(ep, prefix, "edge-policy", "clear", "alpha")
            assert rc == 0, err
            assert await wait_for(lambda: not guard.tenants.policy(DOMAIN).filter_by_ip, 5)
            assert guard.tenants.policy("beta.example").filter_by_ip
    finally:
        await node.stop(0)
