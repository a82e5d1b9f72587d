"""Speed dials (kind ``speed_dial``): short indexes that stand for numbers, one list shared
by the tenant (object ``tenant``) and one per extension (object named by the extension,
which wins over the shared entry of the same index).

    hivepbx object put alpha speed_dial tenant '{"01": "tel:0301234567", "02": "1003"}'
    hivepbx object put alpha speed_dial 1001 '{"01": "+4930999"}'

Dialled through a feature code with action ``speed_dial`` (e.g. ``*0`` then the index:
``*001``). The index is replaced by its number and the call goes on as if that number had
been dialled: the caller's class of service, the tenant's routes and features all apply to
the target, so a speed dial is no way around call barring.
"""

from __future__ import annotations

import re

from node.config_rules import ConfigError
from node.pbx import destinations
from node.ports import ConfigStore

KIND = "speed_dial"
SHARED = "tenant"
MAX_ENTRIES = 1000
_INDEX = re.compile(r"[0-9]{1,3}")


def validate(name: object, doc: object) -> dict:
    if not isinstance(name, str) or not (name == SHARED or re.fullmatch(r"[0-9]{2,10}", name)):
        raise ConfigError(f"a speed dial list is named {SHARED!r} (shared by the tenant) or by an extension number, not {name!r}")
    if not isinstance(doc, dict):
        raise ConfigError('a speed dial list maps indexes to numbers: {"01": "tel:0301234", "02": "1003"}')
    if len(doc) > MAX_ENTRIES:
        raise ConfigError(f"speed dial list {name}: at most {MAX_ENTRIES} entries")
    out = {}
    for idx, value in doc.items():
        if not isinstance(idx, str) or not _INDEX.fullmatch(idx):
            raise ConfigError(f"speed dial list {name}: index {idx!r} must be 1-3 digits")
        dest = destinations.parse(value, f"speed dial {idx}")
        if dest.kind == "uri":
            raise ConfigError(f"speed dial {idx}: a speed dial is a number (internal or tel:), not a SIP URI")
        out[idx] = str(dest)
    return out


async def save(config: ConfigStore, tenant_id: int, name: str, doc: object) -> dict:
    out = validate(name, doc)
    if name != SHARED and await config.get_extension(tenant_id, name) is None:
        raise ConfigError(f"speed dial list {name}: no such extension in this tenant", 404)
    for idx, value in out.items():
        await destinations.check(config, tenant_id, value, f"speed dial {idx}")
    await config.put_object(tenant_id, KIND, name, out)
    return out


def dial_string(value: str) -> str:
    """What to dial for a stored destination ("tel:0301234" → "0301234")."""
    return value[4:] if value.startswith("tel:") else value


async def lookup(config: ConfigStore, tenant_id: int, ext: str, index: str) -> str | None:
    """The number ``index`` stands for when extension ``ext`` dials it (own list first)."""
    for owner in (ext, SHARED):
        entries = await config.get_object(tenant_id, KIND, owner) or {}
        if isinstance(entries, dict) and isinstance(entries.get(index), str):
            return dial_string(entries[index])
    return None
