"""Hunt groups (feature object kind ``hunt_group``, named by the number that reaches it).

    {"strategy": "sequential", "ring": 15, "group_ring": 60,
     "members": ["1001", {"to": "1002", "ring": 10}, "tel:0301234567", "sip:desk@192.0.2.7"],
     "fallback": "1009"}

* simultaneous: every member rings at once for ``group_ring`` (else ``ring``) seconds;
* sequential: members one after the other, each for its own ring time, busy/unreachable
  members skipped at once;
* circular: sequential, starting after the member that answered the group's last call;
* least_used: sequential, the member who answered the fewest of the group's calls first.
``group_ring`` caps the whole hunt (0 = the sum of the member rings); then ``fallback`` (any
destination, see node/pbx/destinations.py) gets the call. Extension members ring their
phones only (their own forwarding does not apply; do-not-disturb skips them). Circular and
least-used statistics live in the node's memory (``HuntStats``): a restart resets them.
"""

from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from node.config_rules import ConfigError, extension_number
from node.pbx import destinations
from node.ports import ConfigStore

if TYPE_CHECKING:
    from node.pbx.dialplan import Ctx, Frag

KIND = "hunt_group"
STRATEGIES = ("simultaneous", "sequential", "circular", "least_used")
_KEYS = ("strategy", "ring", "group_ring", "members", "fallback", "name")
MAX_MEMBERS = 50


def _seconds(value: object, what: str, lo: int, hi: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise ConfigError(f"{what} must be a whole number of seconds between {lo} and {hi}, not {value!r}")
    return value


def validate(doc: object) -> dict:
    """The normalised document, or ConfigError saying what is wrong (no store access)."""
    if not isinstance(doc, dict):
        raise ConfigError("a hunt group must be a JSON object")
    extra = sorted(set(doc) - set(_KEYS))
    if extra:
        raise ConfigError(f"unknown hunt group field(s): {', '.join(extra)} (allowed: {', '.join(_KEYS)})")
    strategy = doc.get("strategy", "simultaneous")
    if strategy not in STRATEGIES:
        raise ConfigError(f"hunt group strategy {strategy!r}: use one of {', '.join(STRATEGIES)}")
    ring = _seconds(doc.get("ring", 20), "hunt group ring", 1, 600)
    group_ring = _seconds(doc.get("group_ring", 0), "hunt group group_ring", 0, 3600)
    members = doc.get("members")
    if not isinstance(members, list) or not members:
        raise ConfigError("a hunt group needs a non-empty list of members")
    if len(members) > MAX_MEMBERS:
        raise ConfigError(f"a hunt group has at most {MAX_MEMBERS} members, not {len(members)}")
    out_members: list[dict] = []
    seen: set[str] = set()
    for i, m in enumerate(members, 1):
        if isinstance(m, str):
            m = {"to": m}
        if not isinstance(m, dict) or set(m) - {"to", "ring"}:
            raise ConfigError(f"hunt group member {i}: use a destination text or {{\"to\": ..., \"ring\": seconds}}")
        dest = destinations.parse(m.get("to"), f"hunt group member {i}")
        key = str(dest)
        if key in seen:
            raise ConfigError(f"hunt group member {key} is listed twice")
        seen.add(key)
        entry = {"to": key}
        if "ring" in m:
            entry["ring"] = _seconds(m["ring"], f"ring of hunt group member {key}", 1, 600)
        out_members.append(entry)
    out = {"strategy": strategy, "ring": ring, "group_ring": group_ring, "members": out_members}
    if doc.get("fallback") not in (None, ""):
        out["fallback"] = str(destinations.parse(doc["fallback"], "hunt group fallback"))
    if doc.get("name"):
        name = doc["name"]
        if not isinstance(name, str) or len(name) > 64:
            raise ConfigError("hunt group name must be text of at most 64 characters")
        out["name"] = name
    return out


async def save(config: ConfigStore, tenant_id: int, number: str, doc: object) -> dict:
    """Validate against this tenant (members must be its own extensions) and store."""
    number = extension_number(number)
    out = validate(doc)
    for m in out["members"]:
        dest = destinations.parse(m["to"])
        if dest.kind == "internal" and await config.get_extension(tenant_id, dest.value) is None:
            raise ConfigError(
                f"hunt group member {dest.value} is not an extension of this tenant"
                f" (write tel:{dest.value} for an external number)", 404,
            )
    if "fallback" in out:
        if out["fallback"] == number:
            raise ConfigError("a hunt group cannot fall back to itself")
        await destinations.check(config, tenant_id, out["fallback"], "hunt group fallback")
    await config.put_object(tenant_id, KIND, number, out)
    return out


class HuntStats:
    """Who answered which group's calls, for circular and least-used hunting (per node)."""

    def __init__(self) -> None:
        self._last: dict[tuple[int, str], str] = {}
        self._answered: dict[tuple[int, str], Counter] = {}

    def answered(self, tenant_id: int, group: str, member: str) -> None:
        self._last[(tenant_id, group)] = member
        self._answered.setdefault((tenant_id, group), Counter())[member] += 1

    def order(self, tenant_id: int, group: str, strategy: str, members: list[dict]) -> list[dict]:
        if strategy == "circular":
            last = self._last.get((tenant_id, group))
            names = [m["to"] for m in members]
            if last in names:
                i = names.index(last) + 1
                return members[i:] + members[:i]
        elif strategy == "least_used":
            counts = self._answered.get((tenant_id, group), Counter())
            return sorted(members, key=lambda m: counts[m["to"]])  # stable: ties keep list order
        return list(members)


def member_tag(group: str, member: str) -> str:
    return f"hunt:{group}:{member}"


def on_answer(stats: HuntStats, tenant_id: int, tag: str) -> None:
    if tag.startswith("hunt:"):
        _, group, member = tag.split(":", 2)
        stats.answered(tenant_id, group, member)


async def compile_group(ctx: "Ctx", number: str, doc: dict) -> "Frag":
    """The attempts that hunt through the group, then its fallback."""
    from node.pbx.dialplan import Frag

    strategy = doc["strategy"]
    members = ctx.state.hunt.order(ctx.tenant.id, number, strategy, doc["members"])
    ring, cap = doc["ring"], doc["group_ring"]
    if strategy == "simultaneous":
        targets = []
        for m in members:
            targets += await ctx.member_targets(m["to"], member_tag(number, m["to"]))
        frag = ctx.add(targets, cap or ring) if targets else Frag(None, [], 480, "Temporarily Unavailable (no member available)")
    else:
        frags, used = [], 0
        for m in members:
            if cap and used >= cap:
                break
            targets = await ctx.member_targets(m["to"], member_tag(number, m["to"]))
            if not targets:
                continue  # unreachable members are skipped at once
            r = m.get("ring", ring)
            if cap:
                r = min(r, cap - used)
            used += r
            frags.append(ctx.add(targets, r))
        frag = ctx.seq(frags) if frags else Frag(None, [], 480, "Temporarily Unavailable (no member available)")
    if "fallback" in doc:
        frag = ctx.then(frag, await ctx.dest(doc["fallback"]))
    return frag
