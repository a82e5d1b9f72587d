"""ACD agents' feature codes: log in / out and pause from the phone, like a call-centre PBX.

Actions for tenant feature codes (node/pbx/feature_codes.py, kind ``feature_codes``)::

    "*45": {"action": "agent_login_toggle"}     "*46": {"action": "agent_pause_toggle"}
    "*451": {"action": "agent_login"}  "*450": {"action": "agent_logout"}
    "*461": {"action": "agent_pause"}  "*460": {"action": "agent_unpause"}

The caller's own extension is the agent (no other extension can be logged in or out from a
phone). The change goes into the tenant's ACD log like every other agent event, so every node
applies it in the same place of the order. The node answers: one beep when the agent is now
logged in / available, two when logged out / paused; a caller that is no extension of the
tenant, or a node without an ACD, gets the reorder tone instead.
"""

from __future__ import annotations

import asyncio
import logging

from node.pbx import feature_codes

log = logging.getLogger("hivepbx.acd.codes")

#: one beep = on (logged in, available), two = off (logged out, paused)
_GAP = 0.25


async def _beeps(ctx, n: int) -> None:
    for i in range(n):
        ctx.endpoint.tone("beep")
        await asyncio.sleep(feature_codes.BEEP_SECONDS / 2)
        ctx.endpoint.stop_output()
        if i + 1 < n:
            await asyncio.sleep(_GAP)


async def apply(acd, tenant_id: int, agent: str, action: str) -> bool:
    """Publish what ``action`` asks for agent ``agent``; True when the agent ends up on
    (logged in / not paused). Toggles read the state this node has applied so far."""
    status = acd.agent_status(tenant_id, agent)
    if action == "agent_login_toggle":
        action = "agent_logout" if status != "logged_out" else "agent_login"
    elif action == "agent_pause_toggle":
        action = "agent_unpause" if status == "paused" else "agent_pause"
    if action == "agent_login":
        await acd.login(tenant_id, agent)
        return True
    if action == "agent_logout":
        await acd.logout(tenant_id, agent)
        return False
    if action == "agent_pause":
        await acd.pause(tenant_id, agent, "feature code")
        return False
    if action == "agent_unpause":
        await acd.unpause(tenant_id, agent)
        return True
    raise ValueError(f"not an agent action: {action!r}")


async def agent_code(ctx, code: str, doc: dict) -> None:
    """The application a dialled agent code runs (feature_codes.register_application)."""
    acd = getattr(ctx.call.host, "acd", None)
    ext = ctx.caller.extension
    if acd is None or ext is None:
        ctx.endpoint.tone("busy")
        await asyncio.sleep(1.0)
        ctx.endpoint.stop_output()
        return
    on = await apply(acd, ctx.tenant.id, ext.number, doc["action"])
    log.info("agent %s of tenant %s: %s -> %s", ext.number, ctx.tenant.name, doc["action"], "on" if on else "off")
    await _beeps(ctx, 1 if on else 2)


for _action in ("agent_login", "agent_logout", "agent_login_toggle", "agent_pause", "agent_unpause",
                "agent_pause_toggle"):
    feature_codes.register_application(_action, agent_code)
