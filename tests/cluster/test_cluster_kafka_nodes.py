"""Two nodes on etcd and the Kafka-protocol broker (tansu): the busy lamp of an extension whose
call runs on node B is seen by a phone subscribed through node A, within a second, and a call
waiting in a queue on node B is offered to an agent whose phone registered through node A."""

from __future__ import annotations

import asyncio
import re

import pytest

from node.pbx import queue_calls
from tests.interop.conftest import RunningNode
from tests.peers.kafka import kafka_broker  # noqa: F401  (module fixture)
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "kafka.example"
PW = {"1001": "pw-1001-secret", "1002": "pw-1002-secret", "1003": "pw-1003-secret"}


@pytest.fixture
async def cluster(cluster_nodes, kafka_broker):  # noqa: F811
    return await cluster_nodes("kn", kafka_bootstrap=(kafka_broker,))


async def _tenant(a: RunningNode, b: RunningNode):
    t = await a.tenant("kafka", DOMAIN)
    for ext, pw in PW.items():
        await a.config.create_extension(t.id, ext, pw)
    for _ in range(100):
        if await b.config.get_extension(t.id, "1003") is not None:
            break
        await asyncio.sleep(0.01)
    return t


def _states(body: str) -> list[str]:
    return re.findall(r"<state>(\w+)</state>", body)


async def test_busy_lamp_across_nodes_within_a_second(cluster, tmp_path):
    a, b = cluster
    t = await _tenant(a, b)
    assert a.node.blf_sharing is not None and b.node.blf_sharing is not None
    lag: dict[str, float] = {}
    loop = asyncio.get_running_loop()
    seen_b: dict[str, float] = {}

    async def watch_lag() -> None:
        # when each state shows on B (where the call runs) and then on A (through Kafka)
        while True:
            for node, seen in ((b, seen_b), (a, lag)):
                for d in node.node.service.line_states.dialogs(t.id, "1002"):
                    seen.setdefault(d.state, loop.time())
            await asyncio.sleep(0.005)

    watcher_task = loop.create_task(watch_lag())
    callee = Sipp("uas_register_then_answer.xml", b.target, workdir=tmp_path / "phone-1002", user="1002",
                  domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], ooc_scenario="uas_answer.xml",
                  duration_ms=15000, timeout=40)
    await callee.start()
    watcher = Sipp("uac_subscribe_dialog.xml", a.target, workdir=tmp_path / "watcher", service="1002",
                   user="1003", domain=DOMAIN, auth_user="1003", auth_password=PW["1003"],
                   keys={"expires": 120}, timeout=30)
    try:
        assert await b.wait_registered(t.id, "1002"), "phone did not register through node B"
        await watcher.start()
        for _ in range(500):
            if a.node.service.subscriptions.count == 1:
                break
            await asyncio.sleep(0.01)
        caller = await Sipp("uac_call.xml", b.target, workdir=tmp_path / "caller", service="1002", user="1001",
                            domain=DOMAIN, auth_user="1001", auth_password=PW["1001"], duration_ms=1500).run()
        caller.assert_ok()
        wres = await watcher.wait()
    finally:
        watcher_task.cancel()
        await callee.stop()
        if watcher.running:
            await watcher.stop()
    wres.assert_ok()
    states = [_states(n.body) for n in wres.received("NOTIFY")]
    assert ["early"] in states and ["confirmed"] in states and ["terminated"] in states, states
    # (early lasts only as long as the SIPp phone takes to answer: too short to poll)
    assert "confirmed" in seen_b and "confirmed" in lag, (seen_b, lag)
    assert lag["confirmed"] - seen_b["confirmed"] < 1.0, f"reached node A {lag['confirmed'] - seen_b['confirmed']:.3f}s late"


async def test_one_queue_across_nodes_offers_the_agent_one_call_at_a_time(cluster, tmp_path):
    """Callers wait on node A and node B in one queue with one agent: the shared ACD log gives
    the agent the calls one after the other (two separate in-process ACDs would ring the agent
    with both at once)."""
    a, b = cluster
    t = await _tenant(a, b)
    await queue_calls.put(a.config, t.id, "600", {"members": ["1002"], "strategy": "longest-idle",
                                                  "static_members": True, "wrapup": 0})
    for _ in range(100):
        if await b.config.get_object(t.id, "queue", "600") is not None:
            break
        await asyncio.sleep(0.01)
    agent = Sipp("uas_register_then_answer.xml", a.target, workdir=tmp_path / "agent-1002", user="1002",
                 domain=DOMAIN, auth_user="1002", auth_password=PW["1002"], ooc_scenario="uas_answer.xml",
                 duration_ms=30000, timeout=60)
    await agent.start()
    try:
        assert await a.wait_registered(t.id, "1002"), "agent did not register through node A"
        assert await b.wait_registered(t.id, "1002", timeout=2.0)

        def caller(node: RunningNode, name: str, user: str) -> Sipp:
            return Sipp("uac_call.xml", node.target, workdir=tmp_path / name, service="600", user=user,
                        domain=DOMAIN, auth_user=user, auth_password=PW[user], duration_ms=2000, timeout=40)

        first = asyncio.ensure_future(caller(a, "caller-a", "1001").run())
        await asyncio.sleep(0.3)
        second = asyncio.ensure_future(caller(b, "caller-b", "1003").run())
        r1, r2 = await asyncio.gather(first, second)
        r1.assert_ok()
        r2.assert_ok()
    finally:
        ares = await agent.stop()
    invites = ares.received("INVITE")
    byes = ares.received("BYE")
    assert len(invites) == 2, [m.first_line for m in ares.messages] if hasattr(ares, "messages") else invites
    # the second offer only after the first call ended: never two at once
    assert invites[1].at >= byes[0].at, (invites[1].at, byes[0].at)
