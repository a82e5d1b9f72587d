"""Call queues against real SIPp peers: two callers dial the queue, one agent (a SIPp phone)
takes them one after the other, first come first served."""

from __future__ import annotations

import asyncio
import time

import pytest

from node.config_rules import ConfigError
from node.pbx import queue_calls
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "alpha.example"


def pw(ext: str) -> str:
    return f"pw-{ext}-secret"


def caller(pbx, tmp_path, user: str, hold_ms: int) -> Sipp:
    return Sipp("uac_call.xml", pbx.target, workdir=tmp_path / f"caller-{user}", service="700", user=user,
                domain=DOMAIN, auth_user=user, auth_password=pw(user), duration_ms=hold_ms, timeout=40)


async def _logged_in_agent(pbx, t, tmp_path, calls_scenario: str, **kw) -> Sipp:
    """Agent 1002 logged in to the ACD, its SIPp phone (registers, then ``calls_scenario`` for
    each call it gets) built but not started."""
    await pbx.node.acd.login(t.id, "1002")
    return Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "agent", user="1002",
                domain=DOMAIN, auth_user="1002", auth_password=pw("1002"), ooc_scenario=calls_scenario, **kw)


async def test_two_callers_are_served_in_order_by_one_agent(pbx, tmp_path):
    t = await pbx.tenant("alpha", DOMAIN)
    for e in ("1001", "1002", "1003"):
        await pbx.config.create_extension(t.id, e, pw(e), display_name=f"Ext {e}")
    await queue_calls.put(pbx.config, t.id, "700", {"members": ["1002"], "strategy": "longest-idle",
                                                    "ring_timeout": 15})
    acd = pbx.node.acd
    agent = await _logged_in_agent(pbx, t, tmp_path, "uas_answer.xml", duration_ms=20000, timeout=45)
    await agent.start()
    try:
        assert await pbx.wait_registered(t.id, "1002")
        first = asyncio.create_task(caller(pbx, tmp_path, "1001", 2500).run())
        await asyncio.sleep(0.5)
        second = asyncio.create_task(caller(pbx, tmp_path, "1003", 5000).run())
        # while the agent talks to 1001, 1003 waits in the queue
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not (
                len(acd.queue_calls(t.id, "700")) == 1 and acd.agent_status(t.id, "1002") == "on_call"):
            await asyncio.sleep(0.1)
        waiting = acd.queue_calls(t.id, "700")
        assert len(waiting) == 1 and acd.agent_status(t.id, "1002") == "on_call"
        r1, r2 = await asyncio.gather(first, second)
        r1.assert_ok()
        r2.assert_ok()
    finally:
        res = await agent.stop()
    invites = res.received("INVITE")
    assert len(invites) == 2, res.describe()
    assert "sip:1001@" in invites[0].header("From") and "sip:1003@" in invites[1].header("From")
    byes = res.received("BYE")
    assert len(byes) == 2
    seen = [m.method for m in res.received() if m.method in ("INVITE", "BYE")]
    assert seen == ["INVITE", "BYE", "INVITE", "BYE"], seen  # never two calls at once
    rep = acd.queue_report(t.id, "700")
    assert (rep["offered"], rep["answered"], rep["abandoned"], rep["waiting"]) == (2, 2, 0, 0)
    assert rep["longest_wait"] >= 1.5  # 1003 waited for 1001's call to end
    assert acd.agent_report(t.id, "1002")["answered"] == 2
    assert await pbx.wait_idle()


async def test_queue_config_is_validated_and_tenant_scoped(pbx, tmp_path):
    t = await pbx.tenant("alpha", DOMAIN)
    other = await pbx.tenant("beta", "beta.example")
    await pbx.config.create_extension(t.id, "1002", pw("1002"))
    await pbx.config.create_extension(other.id, "1005", pw("1005"))
    with pytest.raises(ConfigError, match="strategy"):
        await queue_calls.put(pbx.config, t.id, "700", {"strategy": "loudest"})
    with pytest.raises(ConfigError, match="no extension"):
        await queue_calls.put(pbx.config, t.id, "700", {"members": ["1005"]})  # beta's agent
    with pytest.raises(ConfigError, match="is an extension"):
        await queue_calls.put(pbx.config, t.id, "1002", {"members": ["1002"]})
    await queue_calls.put(pbx.config, other.id, "700", {"members": ["1005"]})
    await pbx.config.create_extension(t.id, "1001", pw("1001"))
    # alpha has no queue 700: its caller gets the ordinary 404, never beta's queue
    res = await Sipp("uac_call_expect_error.xml", pbx.target, workdir=tmp_path / "c", service="700", user="1001",
                     domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), variables={"expected": 404}).run()
    res.assert_ok()
    assert pbx.node.acd.queue_calls(other.id, "700") == []


async def test_caller_hanging_up_while_waiting_is_abandoned(pbx, tmp_path):
    t = await pbx.tenant("alpha", DOMAIN)
    for e in ("1001", "1002"):
        await pbx.config.create_extension(t.id, e, pw(e))
    await queue_calls.put(pbx.config, t.id, "700", {"members": ["1002"]})  # 1002 never logs in
    res = await caller(pbx, tmp_path, "1001", 1500).run()
    res.assert_ok()  # the node answered; the caller waited 1.5 s and hung up
    acd = pbx.node.acd
    await acd.sync()
    rep = acd.queue_report(t.id, "700")
    assert (rep["offered"], rep["answered"], rep["abandoned"], rep["waiting"]) == (1, 0, 1, 0)
    assert rep["longest_wait"] >= 1.0
    assert await pbx.wait_idle()


async def test_caller_hanging_up_while_the_agent_rings_holds_the_agent_until_the_487(pbx, tmp_path):
    """The agent's phone answers the CANCEL at once but the INVITE only 1.5 s later (487): until
    then it may still answer, so the ACD must not hand the agent another call."""
    t = await pbx.tenant("alpha", DOMAIN)
    for e in ("1001", "1002"):
        await pbx.config.create_extension(t.id, e, pw(e))
    await queue_calls.put(pbx.config, t.id, "700", {"members": ["1002"], "ring_timeout": 15})
    acd = pbx.node.acd
    agent = await _logged_in_agent(pbx, t, tmp_path, "uas_cancel_or_answer.xml", duration_ms=12000, timeout=30)
    await agent.start()
    seen: list[str] = []

    async def watch() -> None:
        while True:
            s = acd.agent_status(t.id, "1002")
            if not seen or seen[-1] != s:
                seen.append(s)
            await asyncio.sleep(0.05)

    watcher = asyncio.create_task(watch())
    try:
        assert await pbx.wait_registered(t.id, "1002")
        (await caller(pbx, tmp_path, "1001", 1000).run()).assert_ok()  # hangs up while 1002 rings
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and acd.agent_status(t.id, "1002") != "available":
            await asyncio.sleep(0.1)
    finally:
        watcher.cancel()
        res = await agent.stop()
    assert [m.method for m in res.received() if m.method in ("INVITE", "CANCEL", "ACK")] == ["INVITE", "CANCEL", "ACK"]
    assert "releasing" in seen[seen.index("ringing"):], seen  # held from the hang-up to the 487
    assert acd.agent_status(t.id, "1002") == "available", seen  # the 487 reported: free
    rep = acd.queue_report(t.id, "700")
    assert (rep["offered"], rep["answered"], rep["abandoned"], rep["waiting"]) == (1, 0, 1, 0)
    assert acd.agent_report(t.id, "1002")["missed"] == 0
    assert await pbx.wait_idle()
