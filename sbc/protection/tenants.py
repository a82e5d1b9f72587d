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
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field
from datetime import date, datetime
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

#: the ConfigStore feature-object kind holding a tenant's edge policy (document ``"edge"``)
POLICY_KIND = "sbc_policy"


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


@dataclass(slots=True)
class _Call:
    tenant: str
    outbound: bool
    external: bool
    started: float
    answered: float | None = None


class TenantLimits:
    """Live per-tenant counters: admitted calls and the day's usage.

    A call whose end is never reported (a phone that died mid-call, a lost BYE) must not
    hold a tenant's call slot forever: calls older than ``max_call_age`` are forgotten,
    oldest first, whenever that tenant's counter is consulted (O(1) amortised: the calls
    are kept in admission order).
    """

    def __init__(self, max_call_age: float = 4 * 3600.0) -> None:
        self.policies: dict[str, TenantPolicy] = {}
        self.max_call_age = max_call_age
        self._calls: dict[str, _Call] = {}
        self._by_tenant: dict[str, OrderedDict[str, _Call]] = {}
        self._usage: dict[str, tuple[date, float]] = {}

    def policy(self, tenant: str) -> TenantPolicy:
        return self.policies.get(tenant, DEFAULT_POLICY)

    def active_calls(self, tenant: str, now: float | None = None) -> int:
        calls = self._by_tenant.get(tenant)
        if calls is None:
            return 0
        if now is not None:
            self._expire(calls, now)
        return len(calls)

    def usage_today(self, tenant: str, now: float) -> float:
        today = self._today(tenant, now)
        day, used = self._usage.get(tenant, (today, 0.0))
        return used if day == today else 0.0

    def _today(self, tenant: str, now: float) -> date:
        return datetime.fromtimestamp(now, self.policy(tenant).zone).date()

    def admitted(self, call_id: str) -> bool:
        return call_id in self._calls

    def _expire(self, calls: "OrderedDict[str, _Call]", now: float) -> None:
        limit = now - self.max_call_age
        while calls:
            call_id, call = next(iter(calls.items()))
            if call.started > limit:
                break
            self.end(call_id, 0.0, now)  # no usage: we do not know how long it really lasted

    def check(self, tenant: str, outbound: bool, external: bool, ip: str, country: str | None, now: float) -> str:
        """'' when the call may start, else the cause (ip_filter, daily_usage, max_calls)."""
        p = self.policy(tenant)
        if outbound and not p.source_allowed(ip, country):
            return "ip_filter"
        if external:
            if outbound and p.max_daily_usage and self.usage_today(tenant, now) >= p.max_daily_usage:
                return "daily_usage"
            if p.max_calls and self.active_calls(tenant, now) >= p.max_calls:
                return "max_calls"
        return ""

    def start(self, call_id: str, tenant: str, outbound: bool, external: bool, now: float) -> None:
        """Count a call. Only external calls take a slot; internal ones are not tracked."""
        if not external:
            return
        call = _Call(tenant, outbound, external, now)
        self._calls[call_id] = call
        self._by_tenant.setdefault(tenant, OrderedDict())[call_id] = call

    def answered(self, call_id: str, now: float) -> None:
        call = self._calls.get(call_id)
        if call is not None and call.answered is None:
            call.answered = now

    def end(self, call_id: str, usage: float | None, now: float) -> _Call | None:
        """Release the call; its usage (None: answered seconds, if it was answered) adds to
        the tenant's day when it was an external outgoing call."""
        call = self._calls.pop(call_id, None)
        if call is None:
            return None
        calls = self._by_tenant.get(call.tenant)
        if calls is not None:
            calls.pop(call_id, None)
            if not calls:
                del self._by_tenant[call.tenant]
        if usage is None:
            usage = max(0.0, now - call.answered) if call.answered is not None else 0.0
        if call.outbound and usage > 0:
            today = self._today(call.tenant, now)
            day, used = self._usage.get(call.tenant, (today, 0.0))
            self._usage[call.tenant] = (today, (used if day == today else 0.0) + usage)
        return call
