"""``hivepbx edge-policy``: a tenant's limits at the SBC, stored with the tenant's configuration.

    hivepbx edge-policy set acme --max-calls 10 --filter-by-ip --allow 203.0.113.0/24 --countries ES,PT
    hivepbx edge-policy set acme --max-daily-usage 7200 --timezone Europe/Madrid   # changes only these
    hivepbx edge-policy set acme --no-filter-by-ip --allow ''                        # '' empties a list
    hivepbx edge-policy show acme          hivepbx edge-policy clear acme

The document is the tenant's ``sbc_policy`` feature object ``edge`` (node.ports.ConfigStore),
checked by the SBC's own rules (sbc/protection/tenants.py ``TenantPolicy.from_dict``) before
it is written. SBCs with ``[etcd]`` follow it within a second (sbc/policies.py); with
``--etcd`` (or $HIVEPBX_ETCD) it goes to the cluster, otherwise to the local node's database,
where no SBC reads it. The node CLI registers these commands by module name (node/ never
imports sbc/); nothing here imports the node's stores.
"""

from __future__ import annotations

import argparse

from node.config_rules import ConfigError

EXIT_OK = 0


async def _tenant(config, ref: str):
    """A tenant by id, name (any case) or SIP domain (as every other ``hivepbx`` command)."""
    ref = ref.strip()
    if ref.isdigit():
        t = await config.get_tenant(int(ref))
        if t is not None:
            return t
    for t in await config.list_tenants():
        if t.name.lower() == ref.lower() or t.domain == ref.lower().rstrip("."):
            return t
    raise ConfigError(f"no tenant {ref!r}: give its name, domain or id (see `hivepbx tenant list`)")


def _list(value: str) -> list[str]:
    return [v.strip() for v in value.split(",") if v.strip()]


def _check(doc: dict) -> None:
    from sbc.protection.tenants import PolicyError, TenantPolicy

    try:
        TenantPolicy.from_dict(doc)
    except PolicyError as e:
        raise ConfigError(f"edge policy: {e}") from None


def _describe(doc: dict) -> str:
    if not doc:
        return "no limits"
    parts = []
    if doc.get("max_calls"):
        parts.append(f"max {doc['max_calls']} concurrent external calls")
    if doc.get("filter_by_ip"):
        allowed = list(doc.get("allowed_sources") or []) + list(doc.get("allowed_countries") or [])
        parts.append("outgoing calls only from " + (", ".join(allowed) if allowed else "nowhere (empty allow-list)"))
    if doc.get("max_daily_usage"):
        parts.append(f"max {doc['max_daily_usage']:g} s of external outgoing calls a day "
                     f"(day in {doc.get('timezone', 'UTC')})")
    return "; ".join(parts) or "no limits"


async def policy_set(args, backend, output) -> int:
    from sbc.protection.tenants import POLICY_KIND, POLICY_NAME

    config = backend.config
    t = await _tenant(config, args.tenant)
    doc = dict(await config.get_object(t.id, POLICY_KIND, POLICY_NAME) or {})
    if args.max_calls is not None:
        doc["max_calls"] = args.max_calls
    if args.filter_by_ip is not None:
        doc["filter_by_ip"] = args.filter_by_ip
    if args.allow is not None:
        doc["allowed_sources"] = _list(args.allow)
    if args.countries is not None:
        doc["allowed_countries"] = [c.upper() for c in _list(args.countries)]
    if args.max_daily_usage is not None:
        doc["max_daily_usage"] = args.max_daily_usage
    if args.timezone is not None:
        doc["timezone"] = args.timezone
    doc.setdefault("timezone", t.timezone or "UTC")  # the tenant's day, unless told otherwise
    _check(doc)
    await config.put_object(t.id, POLICY_KIND, POLICY_NAME, doc)
    output.done(f"edge policy of tenant {t.name}: {_describe(doc)}", {"tenant": t.name, "policy": doc})
    return EXIT_OK


async def policy_show(args, backend, output) -> int:
    from sbc.protection.tenants import POLICY_KIND, POLICY_NAME

    t = await _tenant(backend.config, args.tenant)
    doc = await backend.config.get_object(t.id, POLICY_KIND, POLICY_NAME)
    if output.json:
        output.emit({"tenant": t.name, "domain": t.domain, "policy": doc})
    else:
        print(f"tenant {t.name} ({t.domain}): " + ("no edge policy (no limits)" if doc is None else _describe(doc)),
              file=output.out)
        if doc is not None:
            for key in sorted(doc):
                print(f"  {key}: {doc[key]}", file=output.out)
    return EXIT_OK


async def policy_clear(args, backend, output) -> int:
    from sbc.protection.tenants import POLICY_KIND, POLICY_NAME

    t = await _tenant(backend.config, args.tenant)
    removed = await backend.config.delete_object(t.id, POLICY_KIND, POLICY_NAME)
    output.done(f"tenant {t.name}: " + ("edge policy removed (no limits)" if removed else "had no edge policy"),
                {"tenant": t.name, "removed": removed})
    return EXIT_OK


def _count(value: str) -> int:
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a whole number") from None


def _seconds(value: str) -> float:
    try:
        return float(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r} is not a number of seconds") from None


def add_commands(sub, group, leaf, common) -> None:
    """Called by node/cli.py's parser builder with its helpers."""
    g = group("edge-policy", "a tenant's limits at the SBC (IP/country filter, max calls, daily usage)")
    q = leaf(g, "set", policy_set, "set (change) a tenant's edge policy; only the given settings change")
    q.add_argument("tenant", metavar="TENANT")
    q.add_argument("--max-calls", type=_count, metavar="N", help="concurrent external calls, 0 = unlimited")
    q.add_argument("--filter-by-ip", action=argparse.BooleanOptionalAction, default=None,
                   help="outgoing calls only from --allow / --countries (both empty: none at all)")
    q.add_argument("--allow", metavar="CIDR[,CIDR...]", help="addresses/ranges outgoing calls may come from ('' = none)")
    q.add_argument("--countries", metavar="CC[,CC...]", help="ISO country codes outgoing calls may come from (GeoIP)")
    q.add_argument("--max-daily-usage", type=_seconds, metavar="SECONDS",
                   help="answered seconds of external outgoing calls a day, 0 = unlimited")
    q.add_argument("--timezone", metavar="TZ", help="when the tenant's day starts (default: the tenant's time zone)")
    q = leaf(g, "show", policy_show, "show a tenant's edge policy")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "clear", policy_clear, "remove a tenant's edge policy (no limits)")
    q.add_argument("tenant", metavar="TENANT")
