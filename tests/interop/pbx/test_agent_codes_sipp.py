"""An agent logs in to the queue from the phone with a feature code (*45), gets a queued call,
then logs out with the same code: the next caller is not offered to it."""

from __future__ import annotations

import asyncio

import pytest

from node.pbx import feature_codes, queue_calls
from tests.peers.sipp import Sipp

pytestmark = pytest.mark.interop

DOMAIN = "agents.example"


def pw(ext: str) -> str:
    return f"pw-{ext}-secret"


async def _dial_code(pbx, tmp_path, name: str) -> None:
    """1002 dials *45: the node answers, beeps and hangs up."""
    r = await Sipp("uac_call_remote_bye.xml", pbx.target, workdir=tmp_path / name, service="*45", user="1002",
                   domain=DOMAIN, auth_user="1002", auth_password=pw("1002"), timeout=20).run()
    r.assert_ok()


async def _status(acd, tenant_id: int, want: str) -> str:
    for _ in range(200):
        if acd.agent_status(tenant_id, "1002") == want:
            break
        await asyncio.sleep(0.02)
    return acd.agent_status(tenant_id, "1002")


async def test_agent_logs_in_and_out_by_feature_code(pbx, tmp_path):
    t = await pbx.tenant("agents", DOMAIN)
    for e in ("1001", "1002", "1003"):
        await pbx.config.create_extension(t.id, e, pw(e))
    await queue_calls.put(pbx.config, t.id, "700", {"members": ["1002"], "strategy": "longest-idle",
                                                    "ring_timeout": 10, "max_wait": 4})
    await feature_codes.save(pbx.config, t.id, "*45", {"action": "agent_login_toggle"})
    acd = pbx.node.acd
    agent = Sipp("uas_register_then_answer.xml", pbx.target, workdir=tmp_path / "agent", user="1002",
                 domain=DOMAIN, auth_user="1002", auth_password=pw("1002"), ooc_scenario="uas_answer.xml",
                 duration_ms=30000, timeout=60)
    await agent.start()
    try:
        assert await pbx.wait_registered(t.id, "1002")
        assert acd.agent_status(t.id, "1002") == "logged_out"
        await _dial_code(pbx, tmp_path, "login")
        assert await _status(acd, t.id, "available") == "available"
        r = await Sipp("uac_call.xml", pbx.target, workdir=tmp_path / "caller-1001", service="700", user="1001",
                       domain=DOMAIN, auth_user="1001", auth_password=pw("1001"), duration_ms=1500,
                       timeout=30).run()
        r.assert_ok()
        for _ in range(100):  # the agent's call ends, wrap-up runs out
            if acd.agent_status(t.id, "1002") == "available":
                break
            await asyncio.sleep(0.05)
        await _dial_code(pbx, tmp_path, "logout")
        assert await _status(acd, t.id, "logged_out") == "logged_out"
        # logged out: 1003 waits in vain (max_wait 4 s) and the agent's phone never rings
        await Sipp("uac_call.xml", pbx.target, workdir=tmp_path / "caller-1003", service="700", user="1003",
                   domain=DOMAIN, auth_user="1003", auth_password=pw("1003"), duration_ms=1000,
                   timeout=30).run()
    finally:
        res = await agent.stop()
    froms = [m.header("From") for m in res.received("INVITE")]
    assert len(froms) == 1 and "sip:1001@" in froms[0], froms
