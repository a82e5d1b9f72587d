"""``hivepbx edge-policy``: a tenant's limits at the SBC, stored with the tenant's configuration.

    hivepbx edge-policy set acme --max-calls 10 --filter-by-ip --allow 203.0.113.0/24 --countries ES,PT
    hivepbx edge-policy set acme --max-daily-usage 7200 --timezone Europe/Madrid   # changes only these
    hivepbx edge-policy set acme --no-filter-by-ip --allow ''                        # '' empties a list
    hivepbx edge-policy show acme          hivepbx edge-policy clear acme
    hivepbx edge-policy show acme --etcd 10.0.0.5:2379   # + its live counts on every SBC host

The document is the tenant's ``sbc_policy`` feature object ``edge`` (node.ports.ConfigStore),
checked by the SBC's own rules (sbc/protection/tenants.py ``TenantPolicy.from_dict``) before
it is written. SBCs with ``[etcd]`` follow it within a second (sbc/policies.py); with
``--etcd`` (or $HIVEPBX_ETCD) it goes to the cluster, otherwise to the local node's database,
where no SBC reads it. ``show`` with ``--etcd`` also reads what the SBC hosts publish for the
tenant (sbc/protection/cluster_counts.py): per host its live calls, reserved slots and usage of
the tenant's day, the totals against the limits, and which host's key is missing or stale:
the only other way to see them is reading etcd keys. The node CLI registers these commands by module name (node/ never
imports sbc/); nothing here imports the node's stores.
"""

from __future__ import annotations

import argparse
import time

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
    counts = await _sbc_counts(backend, t, doc)
    if output.json:
        output.emit({"tenant": t.name, "domain": t.domain, "policy": doc, "sbc": counts})
    else:
        print(f"tenant {t.name} ({t.domain}): " + ("no edge policy (no limits)" if doc is None else _describe(doc)),
              file=output.out)
        if doc is not None:
            for key in sorted(doc):
                print(f"  {key}: {doc[key]}", file=output.out)
        if counts is not None:
            _print_counts(counts, output.out)
    return EXIT_OK


# ---------------------------------------------------------------------- the SBC hosts' counts

#: a calls key whose lease has run more than half its TTL (and at least this many seconds)
#: without a refresh is stale: a live host refreshes every TTL/3
STALE_AFTER = 2


def _etcd(backend):
    """(client, keys) of the cluster backend the CLI opened for --etcd; None for the local one."""
    stores = getattr(getattr(backend, "inner", backend), "stores", None)
    client, keys = getattr(stores, "client", None), getattr(stores, "keys", None)
    return (client, keys) if client is not None and keys is not None else None


def _zone_of(t, doc: dict | None) -> str:
    """The time zone of the tenant's day as the SBC counts it (the policy's, else the tenant's)."""
    from sbc.protection.tenants import PolicyError, TenantPolicy

    if doc:
        try:
            return TenantPolicy.from_dict(doc).timezone
        except PolicyError:
            pass
    return getattr(t, "timezone", "") or "UTC"


def _entry(value) -> tuple[int, int, bool] | None:
    """A host's [calls, reserved, want] for the tenant, None when it is not one."""
    if isinstance(value, list) and len(value) == 3 and all(
            isinstance(x, int) and not isinstance(x, bool) and x >= 0 for x in value):
        return value[0], value[1], bool(value[2])
    return None


async def _sbc_counts(backend, t, doc: dict | None, now: float | None = None) -> dict | None:
    """What every SBC host publishes for tenant ``t``, with totals against its limits; None
    without etcd (the local database has no SBC counts)."""
    etcd = _etcd(backend)
    if etcd is None:
        return None
    from datetime import date as ddate

    from cluster.etcd.tenant_usage import read_hosts
    from sbc.protection.tenants import _day

    zone = _zone_of(t, doc)
    day = ddate.fromordinal(_day(zone, time.time() if now is None else now)).isoformat()
    try:
        hosts = await read_hosts(*etcd, day)
    except Exception as e:  # etcd went away after the connect: an error line, not a traceback
        raise ConnectionError(f"etcd: cannot read the SBC hosts' counts: {e or type(e).__name__}") from None
    max_calls = int((doc or {}).get("max_calls") or 0)
    max_usage = float((doc or {}).get("max_daily_usage") or 0)
    rows = []
    total_calls = total_reserved = 0
    total_usage = 0.0
    for host in sorted(hosts):
        k = hosts[host]
        usage = float((k.usage or {}).get(t.domain, 0.0))
        total_usage += usage
        row = {"host": host, "calls": None, "reserved": None, "want": None, "usage": usage,
               "lease_left": k.lease_left, "lease_ttl": k.lease_ttl}
        if k.calls is None:
            row["state"] = "missing"
            row["note"] = "no calls key: host stopped or down (its usage still counts)"
        else:
            raw = k.calls.get(t.domain)
            got = _entry(raw)
            if got is not None:
                row["calls"], row["reserved"], row["want"] = got
                total_calls += got[0]
                total_reserved += got[1]
            since = (k.lease_ttl - k.lease_left) if k.lease_ttl is not None and k.lease_left is not None else 0
            if since >= STALE_AFTER and since > (k.lease_ttl or 0) / 2:
                row["state"] = "stale"
                row["note"] = (f"lease not refreshed for ~{since} s (host down or cut off from etcd); "
                               f"its calls drop out in {k.lease_left} s")
            elif raw is not None and got is None:
                row["state"] = "bad"
                row["note"] = f"unreadable entry {raw!r}"
            elif got is None and max_calls:
                row["state"] = "missing"
                row["note"] = "tenant not in its calls key (the host has not loaded this max_calls yet)"
            else:
                row["state"] = "live"
                row["note"] = ""
        rows.append(row)
    return {
        "date": day, "timezone": zone, "hosts": rows,
        "total": {"calls": total_calls, "reserved": total_reserved, "usage": round(total_usage, 3)},
        "limits": {"max_calls": max_calls, "max_daily_usage": max_usage},
    }


def _print_counts(c: dict, out) -> None:
    print(f"SBC hosts (etcd; day {c['date']} in {c['timezone']}):", file=out)
    if not c["hosts"]:
        print("  no SBC host publishes counts (none runs with [etcd], or all are stopped)", file=out)
    else:
        def dash(v):
            return "-" if v is None else str(v)

        cells = [["HOST", "CALLS", "RESERVED", "WANT", "USAGE_S", "STATE"]]
        for r in c["hosts"]:
            want = None if r["want"] is None else ("yes" if r["want"] else "no")
            state = r["state"] + (f": {r['note']}" if r["note"] else "")
            if r["state"] == "live" and r["lease_ttl"]:
                state += f" (lease {r['lease_left']}/{r['lease_ttl']} s)"
            cells.append([r["host"], dash(r["calls"]), dash(r["reserved"]), dash(want), f"{r['usage']:.1f}", state])
        tot = c["total"]
        cells.append(["total", str(tot["calls"]), str(tot["reserved"]), "", f"{tot['usage']:.1f}", ""])
        widths = [max(len(r[i]) for r in cells) for i in range(len(cells[0]))]
        for r in cells:
            print("  " + "  ".join(v.ljust(w) for v, w in zip(r, widths)).rstrip(), file=out)
    tot, lim = c["total"], c["limits"]
    if lim["max_calls"]:
        free = max(0, lim["max_calls"] - tot["calls"] - tot["reserved"])
        calls = f"calls {tot['calls']} of max {lim['max_calls']} ({tot['reserved']} reserved, {free} free)"
    else:
        calls = f"calls {tot['calls']} (no max_calls)"
    if lim["max_daily_usage"]:
        pct = 100.0 * tot["usage"] / lim["max_daily_usage"]
        usage = f"usage {tot['usage']:.1f} s of max {lim['max_daily_usage']:g} s today ({pct:.0f}%)"
    else:
        usage = f"usage {tot['usage']:.1f} s today (no max_daily_usage)"
    print(f"  {calls}; {usage}", file=out)


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
    q = leaf(g, "show", policy_show, "show a tenant's edge policy (with --etcd: its counts on every SBC host)")
    q.add_argument("tenant", metavar="TENANT")
    q = leaf(g, "clear", policy_clear, "remove a tenant's edge policy (no limits)")
    q.add_argument("tenant", metavar="TENANT")
