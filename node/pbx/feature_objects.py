"""The call-routing feature kinds and the function that validates and stores each, so that
the CLI (``hivepbx object put``) and any API write every document through its owner's rules.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from node.config_rules import ConfigError
from node.pbx import (
    feature_codes, forwarding, hunt_groups, paging, park, pickup, screening, speed_dial, time_switch,
)
from node.ports import ConfigStore

Saver = Callable[[ConfigStore, int, str, dict], Awaitable[dict]]


async def _daynight(config: ConfigStore, tenant_id: int, name: str, doc: dict) -> dict:
    if not isinstance(doc, dict) or set(doc) != {"mode"}:
        raise ConfigError('a day/night toggle is {"mode": "day"} or {"mode": "night"}')
    return {"mode": await time_switch.set_mode(config, tenant_id, name, doc["mode"])}


def _single(name_required: str, save) -> Saver:
    async def saver(config: ConfigStore, tenant_id: int, name: str, doc: dict) -> dict:
        if name != name_required:
            raise ConfigError(f"this kind has one document per tenant, named {name_required!r}, not {name!r}")
        return await save(config, tenant_id, doc)
    return saver


SAVERS: dict[str, Saver] = {
    hunt_groups.KIND: hunt_groups.save,
    forwarding.KIND: forwarding.save,
    time_switch.KIND: time_switch.save,
    time_switch.HOLIDAYS: time_switch.save_holidays,
    time_switch.DAYNIGHT: _daynight,
    feature_codes.KIND: feature_codes.save,
    speed_dial.KIND: speed_dial.save,
    paging.KIND: paging.save,
    pickup.KIND: pickup.save,
    park.KIND: park.save,
    screening.CALLER_ID: screening.save_caller_id,
    screening.COS: screening.save_cos,
    screening.BLOCK_LIST: _single("inbound", screening.save_block_list),
    screening.NUMBERING: _single("default", screening.save_numbering),
}


async def save(config: ConfigStore, tenant_id: int, kind: str, name: str, doc: object) -> dict:
    saver = SAVERS.get(kind)
    if saver is None:
        raise ConfigError(f"unknown feature kind {kind!r}: use one of {', '.join(sorted(SAVERS))}")
    if not isinstance(doc, dict):
        raise ConfigError(f"a {kind} document must be a JSON object")
    return await saver(config, tenant_id, name, doc)
