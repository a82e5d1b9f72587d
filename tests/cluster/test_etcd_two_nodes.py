"""Two hivepbx nodes sharing one etcd (the ``cluster`` backend, opened through its entry point):
configuration made through one is in force on the other within a second, a phone registered
through node A is called by a SIPp caller through node B, tenants stay apart, and a node that
dies leaves the membership within a few seconds."""

from __future__ import annotations

import asyncio
import time

import pytest

from tests.interop.conftest import RunningNode
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"
PW1, PW2 = "pw-1001-secret", "pw-1002-secret"


@pytest.fixture
async def cluster(cluster_nodes):
    """Nodes 'node-a' and 'node-b' in this test's event loop, each with its own ports and data dir."""
    return await cluster_nodes("node")


async def _until(predicate, timeout: float) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not await predicate():
        assert loop.time() - start < timeout, f"not within {timeout}s"
        await asyncio.sleep(0.01)
    return loop.time() - start


async def _alpha(node: RunningNode):
    t = await node.tenant("alpha", DOMAIN)
    await node.config.create_extension(t.id, "1001", PW1, display_name="Alice Example")
    await node.config.create_extension(t.id, "1002", PW2, display_name="Bob")
    return t


async def test_change_through_node_a_is_in_force_on_node_b(cluster):
    a, b = cluster
    assert a.node.backend.config is not b.node.backend.config  # two views, one etcd
    t = await a.tenant("alpha", DOMAIN)

    async def b_knows_domain():
        return await b.config.tenant_by_domain(DOMAIN) == t

    assert await _until(b_knows_domain, 1.0) < 1.0
    e = await b.config.create_extension(t.id, "1001", PW1)

    async def a_knows_ext():
        return await a.config.get_extension(t.id, "1001") == e

    assert await _until(a_knows_ext, 1.0) < 1.0
    # both nodes are members of the cluster, as /health shows
    health = await b.node.health()
    assert health["cluster"] == {"node_id": "node-b", "members": ["node-a", "node-b"]}


async def test_phone_registered_through_a_is_called_through_b(cluster, tmp_path):
    a, b = cluster
    t = await _alpha(a)

    async def b_has_tenant():
        return await b.config.get_extension(t.id, "1002") is not None

    await _until(b_has_tenant, 1.0)
    phone = Sipp(
        "uas_register_then_answer.xml", a.target, workdir=tmp_path / "phone-1002",
        user="1002", domain=DOMAIN, auth_user="1002", auth_password=PW2,
        ooc_scenario="uas_answer.xml", duration_ms=15000, timeout=40,
    )
    await phone.start()
    try:
        assert await a.wait_registered(t.id, "1002"), "phone did not register through node A"
        assert await b.wait_registered(t.id, "1002", timeout=1.0), "node B does not see the registration"
        [binding] = await b.locations.lookup(t.id, "1002", time.time())
        assert binding.node_id == "node-a"
        caller = await Sipp(
            "uac_call.xml", b.target, workdir=tmp_path / "caller", service="1002", user="1001",
            domain=DOMAIN, auth_user="1001", auth_password=PW1, duration_ms=1000,
        ).run()
        caller.assert_ok()
        assert caller.received(407), "node B did not challenge the INVITE"
    finally:
        pres = await phone.stop()
    invite = pres.received("INVITE")[0]
    assert "sip:1001@alpha.example" in invite.header("From")
    # node B handled the call: its CDR (CDRs stay per node until the cluster CDR store lands)
    cdrs = await b.wait_cdrs(t.id, 1)
    assert [(c.caller, c.callee, c.disposition) for c in cdrs] == [("1001", "1002", "answered")]
    assert await a.cdrs.list(t.id) == []
    assert await b.wait_idle()


async def test_tenant_isolation_across_nodes(cluster, tmp_path):
    a, b = cluster
    alpha = await _alpha(a)
    beta = await b.tenant("beta", "beta.example")
    await b.config.create_extension(beta.id, "1002", PW2)
    await b.config.create_extension(beta.id, "2002", "pw-2002-secret")

    async def a_has_beta():
        return await a.config.get_extension(beta.id, "2002") is not None

    await _until(a_has_beta, 1.0)
    # beta's 1002 registers through node A
    phone_b = Sipp(
        "uas_register_then_answer.xml", a.target, workdir=tmp_path / "phone-b", user="1002",
        domain="beta.example", auth_user="1002", auth_password=PW2, ooc_scenario="uas_answer.xml",
        duration_ms=15000, timeout=40,
    )
    await phone_b.start()
    try:
        assert await b.wait_registered(beta.id, "1002")
        assert await b.locations.lookup(alpha.id, "1002", time.time()) == []
        # alpha's 1001, calling through node B, reaches neither beta's 1002 nor beta-only 2002
        c1 = await Sipp("uac_call_expect_error.xml", b.target, workdir=tmp_path / "c1", service="1002",
                        user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW1,
                        variables={"expected": 480}).run()
        c1.assert_ok()
        c2 = await Sipp("uac_call_expect_error.xml", b.target, workdir=tmp_path / "c2", service="2002",
                        user="1001", domain=DOMAIN, auth_user="1001", auth_password=PW1,
                        variables={"expected": 404}).run()
        c2.assert_ok()
        # beta's credentials do not open alpha's domain on either node
        cross = await Sipp("uac_register_auth.xml", b.target, workdir=tmp_path / "x", user="2002",
                           domain=DOMAIN, auth_user="2002", auth_password="pw-2002-secret").run()
        assert not cross.ok and cross.received(403)
    finally:
        bres = await phone_b.stop()
    assert not bres.received("INVITE")


async def test_a_dead_node_leaves_the_membership(cluster):
    a, b = cluster
    members_b = b.node.backend.membership

    async def both():
        return set(members_b.members()) == {"node-a", "node-b"}

    await _until(both, 2.0)
    # node A dies: its keep-alive stops, nothing is revoked (as with SIGKILL)
    ma = a.node.backend.membership
    ma._keepalive.cancel()
    ma._keepalive = None
    ma._lease_id = None

    async def only_b():
        return set(members_b.members()) == {"node-b"}

    took = await _until(only_b, 6.0)
    assert took < 6.0
