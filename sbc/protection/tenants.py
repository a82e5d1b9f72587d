"""Per-tenant limits at the edge: IP/country filter, concurrent calls, daily external usage.

Product rules (the Virtual PBX client settings):

* "Filter by IP address": outgoing calls are allowed only from the listed addresses/ranges
  or from the listed countries (GeoIP). With the filter on and both lists empty, no
  outgoing call is allowed at all: an empty allow-list means "nothing", never "anything".
* "Max calls": concurrent external calls, incoming and outgoing together; 0 = unlimited.
* "Max daily usage": external outgoing calls are refused once the day's usage reaches the
  limit; at midnight in the tenant's time zone the counter resets and calls work again.
  Usage is the answered seconds of external outgoing calls (the Guard sees the 2xx in
  ``observe_response``), or whatever the SBC reports in ``call_ended(usage=...)`` (money,
  once billing feeds it); 0 = unlimited.

All of it is sans-I/O: the caller passes the wall-clock time (``now``, epoch seconds).
Policies come from the SBC's config file or the cluster (sbc/policies.py; written by
``hivepbx edge-policy``, checked by ``TenantPolicy.from_dict``); the counters live in a
table the SBC host's workers share and its state dir keeps (sbc/protection/counters.py);
with several SBC hosts on one etcd the limits hold across them (sbc/protection/cluster_counts.py).
"""

from __future__ import annotations

import functools
import ipaddress
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from datetime import time as dtime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from sbc.protection import metrics
from sbc.protection.counters import DEFERRED, NO_ROOM, OVER_LIMIT, CounterTable

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the ConfigStore feature object holding a tenant's edge policy (``hivepbx edge-policy``)
POLICY_KIND = "sbc_policy"
POLICY_NAME = "edge"


class PolicyError(ValueError):
    """A tenant edge policy document is invalid; the message says what is wrong."""


@dataclass(frozen=True, slots=True)
class TenantPolicy:
    max_calls: int = 0
    filter_by_ip: bool = False
    allowed_sources: tuple[Network, ...] = ()
    allowed_countries: frozenset[str] = frozenset()
    max_daily_usage: float = 0.0
    timezone: str = "UTC"
    zone: ZoneInfo = field(default=ZoneInfo("UTC"), compare=False, repr=False)

    @classmethod
    def from_dict(cls, data: dict) -> "TenantPolicy":
        """Validate a policy document (as stored with ConfigStore.put_object)."""
        if not isinstance(data, dict):
            raise PolicyError("edge policy must be an object")
        unknown = set(data) - {
            "max_calls", "filter_by_ip", "allowed_sources", "allowed_countries", "max_daily_usage",
            "timezone",
        }
        if unknown:
            raise PolicyError(f"unknown edge policy field(s): {', '.join(sorted(unknown))}")
        max_calls = data.get("max_calls", 0)
        if not isinstance(max_calls, int) or isinstance(max_calls, bool) or max_calls < 0:
            raise PolicyError("max_calls must be a whole number >= 0 (0 = unlimited)")
        filt = data.get("filter_by_ip", False)
        if not isinstance(filt, bool):
            raise PolicyError("filter_by_ip must be true or false")
        sources = data.get("allowed_sources", [])
        if not isinstance(sources, list):
            raise PolicyError("allowed_sources must be a list of addresses or CIDR ranges")
        nets: list[Network] = []
        for s in sources:
            try:
                nets.append(ipaddress.ip_network(str(s), strict=False))
            except ValueError:
                raise PolicyError(f"allowed_sources: {s!r} is not an IP address or CIDR range") from None
        countries = data.get("allowed_countries", [])
        if not isinstance(countries, list):
            raise PolicyError("allowed_countries must be a list of ISO 3166 alpha-2 codes")
        for c in countries:
            if not (isinstance(c, str) and len(c) == 2 and c.isalpha() and c.isascii()):
                raise PolicyError(f"allowed_countries: {c!r} is not an ISO 3166 alpha-2 code like 'ES'")
        usage = data.get("max_daily_usage", 0)
        if not isinstance(usage, (int, float)) or isinstance(usage, bool) or usage < 0:
            raise PolicyError("max_daily_usage must be a number >= 0 (0 = unlimited)")
        tz = data.get("timezone", "UTC")
        try:
            zone = ZoneInfo(tz) if isinstance(tz, str) and tz else None
        except (ZoneInfoNotFoundError, ValueError):
            zone = None
        if zone is None:
            raise PolicyError(f"timezone {tz!r} is not an IANA time zone like 'Europe/Madrid'")
        return cls(
            max_calls=max_calls, filter_by_ip=filt, allowed_sources=tuple(nets),
            allowed_countries=frozenset(c.upper() for c in countries), max_daily_usage=float(usage),
            timezone=tz, zone=zone,
        )

    def source_allowed(self, ip: str, country: str | None) -> bool:
        """May an outgoing call come from ``ip`` (GeoIP ``country``)? Filter off: always."""
        if not self.filter_by_ip:
            return True
        try:
            addr = ipaddress.ip_address(ip)
        except ValueError:
            return False
        for net in self.allowed_sources:
            if addr.version == net.version and addr in net:
                return True
        return country is not None and country.upper() in self.allowed_countries


DEFAULT_POLICY = TenantPolicy()


@functools.lru_cache(maxsize=1024)
def _zone(name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        return ZoneInfo("UTC")


#: zone name -> (start, end, ordinal) of the day last asked for: a call asks twice
_days: dict[str, tuple[float, float, int]] = {}


def _day(zone_name: str, now: float) -> int:
    """The date ordinal of ``now`` in the time zone ``zone_name`` (cached per zone for the
    day: a datetime per call would cost more than the counting itself)."""
    hit = _days.get(zone_name)
    if hit is not None and hit[0] <= now < hit[1]:
        return hit[2]
    zone = _zone(zone_name)
    d = datetime.fromtimestamp(now, zone).date()
    start = datetime.combine(d, dtime(0), zone).timestamp()
    end = datetime.combine(d + timedelta(days=1), dtime(0), zone).timestamp()
    if len(_days) > 4096:
        _days.clear()
    if start <= now < end:  # (a day that starts in a DST gap: no caching, still right)
        _days[zone_name] = (start, end, d.toordinal())
    return d.toordinal()


class TenantLimits:
    """Live per-tenant counters: admitted calls and the day's usage.

    The counters live in a CounterTable (sbc/protection/counters.py): in this process's
    memory by default, or shared by every worker of the SBC host and kept in its state
    directory (``use_table``), so a tenant's limits hold host-wide and its usage survives
    a restart. The policies are this process's (every worker loads the same ones).

    A call whose end is never reported (a phone that died mid-call, a lost BYE) must not
    hold a tenant's call slot forever: calls older than ``max_call_age`` are forgotten
    when a tenant at its limit asks for one more (at most once a second host-wide; one
    vectorised scan of the table).
    """

    def __init__(self, max_call_age: float = 4 * 3600.0, table: CounterTable | None = None) -> None:
        self.policies: dict[str, TenantPolicy] = {}
        self.max_call_age = max_call_age
        self.table = table if table is not None else CounterTable.open()
        self._keys: dict[str, int] = {}
        #: Call-ID -> key of the calls this process counted (a keyed hash costs more than
        #: the rest of the accounting); a call ended by a sibling leaves its entry until the
        #: next clear
        self._calls: dict[str, int] = {}
        self._last: tuple[str, int] = ("", 0)

    def use_table(self, table: CounterTable) -> None:
        """Count in ``table`` from now on (the SBC host's shared one)."""
        self.table = table
        self._keys.clear()
        self._calls.clear()
        self._last = ("", 0)

    def _key(self, tenant: str) -> int:
        k = self._keys.get(tenant)
        if k is None:
            if len(self._keys) > 65536:
                self._keys.clear()
            k = self._keys[tenant] = self.table.key(tenant)
        return k

    def _call_key(self, call_id: str) -> int:
        k = self._calls.get(call_id)
        if k is not None:
            return k
        last = self._last  # admit asks twice for the same Call-ID
        if last[0] == call_id:
            return last[1]
        k = self.table.key(call_id)
        self._last = (call_id, k)
        return k

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant, DEFAULT_POLICY)

    def active_calls(self, tenant: str, now: float | None = None) -> int:
        if now is not None:
            self.table.sweep(now - self.max_call_age, now)
        return self.table.active(self._key(tenant))

    def usage_today(self, tenant: str, now: float) -> float:
        """The tenant's usage today, on every SBC host (this one's plus the others' last published)."""
        return self.table.usage(self._key(tenant), self._today(tenant, now))

    def _today(self, tenant: str, now: float) -> int:
        return _day(self.policy(tenant).timezone, now)

    def admitted(self, call_id: str) -> bool:
        return self.table.has_call(self._call_key(call_id))

    def check(self, tenant: str, outbound: bool, external: bool, ip: str, country: str | None, now: float) -> str:
        """'' when the call may start, else the cause (ip_filter, daily_usage). Max calls is
        ``start``'s: counting and checking it must be one step when workers share the count."""
        p = self.policy(tenant)
        if outbound and not p.source_allowed(ip, country):
            return "ip_filter"
        if external and outbound and p.max_daily_usage and self.usage_today(tenant, now) >= p.max_daily_usage:
            return "daily_usage"
        return ""

    def start(self, call_id: str, tenant: str, outbound: bool, external: bool, now: float) -> str:
        """Count a call: '' done, or 'max_calls' when another worker took the tenant's last
        slot since ``check``. Only external calls of a tenant with a call or usage limit are
        counted (a limit set mid-day counts from then on)."""
        p = self.policy(tenant)
        if not external or not (p.max_calls or p.max_daily_usage):
            return ""  # nothing to enforce, nothing to count (nor table rows for made-up domains)
        ckey, tkey, day = self._call_key(call_id), self._key(tenant), _day(p.timezone, now)
        got = self.table.start(ckey, tkey, outbound, now, p.timezone, day, p.max_calls)
        if got in (OVER_LIMIT, DEFERRED) and self.table.sweep(now - self.max_call_age, now):
            # at the limit: calls whose end was never seen are forgotten first
            got = self.table.start(ckey, tkey, outbound, now, p.timezone, day, p.max_calls)
        if got == OVER_LIMIT:
            return "max_calls"
        if got == DEFERRED:
            metrics.deferred()  # this host's share of the free slots is taken until it publishes
            return "max_calls"
        if got == NO_ROOM:
            metrics.untracked()
            return ""
        if len(self._calls) > 100_000:
            self._calls.clear()
        self._calls[call_id] = ckey
        return ""

    def answered(self, call_id: str, now: float) -> None:
        k = self._calls.get(call_id)
        self.table.answered(k if k is not None else self.table.key(call_id), now)

    def end(self, call_id: str, usage: float | None, now: float) -> bool:
        """Release the call; its usage (None: answered seconds, if it was answered) adds to
        the tenant's day when it was an external outgoing call. False: not a counted call."""
        k = self._calls.pop(call_id, None)
        return self.table.end(k if k is not None else self.table.key(call_id), now, usage, _day)
