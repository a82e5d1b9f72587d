"""Agents' feature codes: the caller's own extension logs in/out and pauses in the tenant's
ACD, toggles follow the state, and the phone hears one beep for on, two for off."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest

from node.acd.service import AcdService
from node.embedded.bus import InMemoryBus
from node.pbx import agent_codes, feature_codes


class _Endpoint:
    def __init__(self) -> None:
        self.tones: list[str] = []

    def tone(self, name: str) -> None:
        self.tones.append(name)

    def stop_output(self) -> None:
        pass


@pytest.fixture
async def acd():
    bus = InMemoryBus()
    svc = AcdService(bus, "n1", partitions=2)
    await svc.start()
    await svc.configure_queue(7, "600", {"members": ["1002", "1003"]})
    yield svc
    await svc.close()
    await bus.close()


def _ctx(acd, ext: str | None, tenant_id: int = 7):
    ep = _Endpoint()
    caller = SimpleNamespace(extension=None if ext is None else SimpleNamespace(number=ext))
    call = SimpleNamespace(host=SimpleNamespace(acd=acd))
    return SimpleNamespace(call=call, caller=caller, tenant=SimpleNamespace(id=tenant_id, name="t"), endpoint=ep), ep


async def _settled(acd, agent: str, want: str, tenant_id: int = 7) -> str:
    for _ in range(200):
        status = acd.agent_status(tenant_id, agent)
        if status == want:
            return status
        await asyncio.sleep(0.005)
    return acd.agent_status(tenant_id, agent)


def test_agent_actions_are_feature_code_actions():
    for action in ("agent_login", "agent_logout", "agent_login_toggle", "agent_pause", "agent_unpause",
                   "agent_pause_toggle"):
        code, doc = feature_codes.validate("*45", {"action": action})
        assert doc["action"] == action and action in feature_codes.APPLICATIONS


async def test_login_toggle_pause_toggle_with_beeps(acd):
    ctx, ep = _ctx(acd, "1002")
    assert acd.agent_status(7, "1002") == "logged_out"
    await agent_codes.agent_code(ctx, "*45", {"action": "agent_login_toggle"})
    assert await _settled(acd, "1002", "available") == "available"
    assert ep.tones == ["beep"]
    await agent_codes.agent_code(ctx, "*46", {"action": "agent_pause_toggle"})
    assert await _settled(acd, "1002", "paused") == "paused"
    assert ep.tones == ["beep"] * 3  # two beeps: off
    await agent_codes.agent_code(ctx, "*46", {"action": "agent_pause_toggle"})
    assert await _settled(acd, "1002", "available") == "available"
    await agent_codes.agent_code(ctx, "*45", {"action": "agent_login_toggle"})
    assert await _settled(acd, "1002", "logged_out") == "logged_out"
    # only the caller's own agent changed, and only in its own tenant
    assert acd.agent_status(7, "1003") == "logged_out"
    assert acd.agent_status(8, "1002") == "logged_out"


async def test_explicit_actions(acd):
    ctx, _ = _ctx(acd, "1003")
    await agent_codes.agent_code(ctx, "*451", {"action": "agent_login"})
    await agent_codes.agent_code(ctx, "*451", {"action": "agent_login"})  # again: still in
    assert await _settled(acd, "1003", "available") == "available"
    await agent_codes.agent_code(ctx, "*461", {"action": "agent_pause"})
    assert await _settled(acd, "1003", "paused") == "paused"
    await agent_codes.agent_code(ctx, "*450", {"action": "agent_logout"})
    assert await _settled(acd, "1003", "logged_out") == "logged_out"


async def test_a_caller_that_is_no_extension_gets_the_busy_tone(acd):
    ctx, ep = _ctx(acd, None)
    await agent_codes.agent_code(ctx, "*45", {"action": "agent_login_toggle"})
    assert ep.tones == ["busy"]
