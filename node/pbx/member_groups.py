"""Groups whose document is just a list of the tenant's extensions (page groups, pickup
groups): one validation, so both name a bad member the same way."""

from __future__ import annotations

from node.config_rules import ConfigError, extension_number
from node.ports import ConfigStore


def validate(doc: object, what: str, most: int) -> dict:
    """``{"members": [...]}`` with each member an extension number, duplicates dropped (order
    kept); ``what`` ('page group') names the group in the messages."""
    if not isinstance(doc, dict) or set(doc) != {"members"}:
        raise ConfigError(f'a {what} is {{"members": ["1002", "1003", ...]}}')
    members = doc["members"]
    if not isinstance(members, list) or not members:
        raise ConfigError(f"{what} members must be a non-empty list of extension numbers")
    if len(members) > most:
        raise ConfigError(f"a {what} has at most {most} members")
    try:
        out = [extension_number(m) for m in members]
    except ConfigError as e:
        raise ConfigError(f"{what} member: {e}") from None
    return {"members": list(dict.fromkeys(out))}


async def check_members(config: ConfigStore, tenant_id: int, members: list[str], what: str) -> None:
    """Every member is an extension of this tenant (404 names the first that is not)."""
    for m in members:
        if await config.get_extension(tenant_id, m) is None:
            raise ConfigError(f"{what} member {m} is not an extension of this tenant", 404)
