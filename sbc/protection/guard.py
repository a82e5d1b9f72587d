"""The edge's first look at every message from outside: flood, scanner and brute-force defence.

Sans-I/O: the SBC's pipeline calls ``check_request`` for every message it received (before
routing, parsing results included), ``observe_response`` for the final answer a node gave
to an INVITE/REGISTER, and ``admit_call``/``call_ended`` around each call once it knows the
tenant. Time comes from the injected clocks, so unit tests use a fake one.

Why the pieces look like this:

* Flood (Kamailio pike's idea): requests per source IP in a sampling window; a source above
  the density is banned for ``ban_time`` and everything it sends is dropped unanswered.
  State is one small list per source in a bounded LRU table, so a flood from many spoofed
  sources costs bounded memory and O(1) per packet; a flood that evicts entries can at
  worst forget a slow source's count, never grow memory.
* Overload: above ``max_transactions`` live transactions new work (out-of-dialog requests)
  gets 503 + Retry-After; in-dialog requests, ACK and CANCEL still pass so calls can end.
* Malformed budget: a source sending unparseable messages beyond its budget is banned
  (the transport still answers the first few with 400, as a broken phone deserves).
* Brute force: failures after credentials (401/407/403 answered to a request that carried
  Authorization) ban the source past ``auth_failures`` in ``auth_window``; so do many
  challenges without credentials (extension enumeration). Only the source is counted,
  never the username: a wrong password and an unknown user look the same at the edge, as
  they do on the node (one 403 for both), so the edge adds no oracle.
* Scanner signatures (User-Agent or From display name of sipvicious/friendly-scanner,
  sipcli, VaxSIPUserAgent, ...): dropped silently and the source banned, so the scanner
  sees a dead address.

Trusted sources (the nodes, the carriers) skip all of it except the overload cap.
"""

from __future__ import annotations

import dataclasses
import functools
import ipaddress
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from node.sip.errors import SipError
from node.sip.message import Message, Request, Response
from sbc.protection import metrics
from sbc.protection.geoip import GeoIp
from sbc.protection.table import LruTable
from sbc.protection.tenants import PolicyError, TenantLimits, TenantPolicy
from sbc.protection.verdict import ACCEPT, Verdict, drop, reject

log = logging.getLogger("sbc.protection")

#: where a message came from: a node.sip.flow.Flow (its ``remote``) or a (host, port) tuple
Address = object


def _ip(source: Address) -> str:
    remote = getattr(source, "remote", None)
    ip = (remote if remote is not None else source)[0]  # type: ignore[index]
    return ip if ":" not in ip else _v6_key(ip)


@functools.lru_cache(maxsize=8192)
def _v6_key(ip: str) -> str:
    """An IPv6 source is judged by its /64: one host owns a whole /64 and can send from a
    new address every packet, so per-address limits would mean nothing."""
    try:
        addr = ipaddress.IPv6Address(ip.split("%", 1)[0])
    except ValueError:
        return ip
    if addr.ipv4_mapped is not None:
        return str(addr.ipv4_mapped)
    return addr.exploded[:19] + "::/64"

#: User-Agent fragments of known SIP scanners and attack tools (lower case)
SCANNER_SIGNATURES: tuple[str, ...] = (
    "friendly-scanner", "sipvicious", "sipcli", "vaxsipuseragent", "sip-scan", "sipscan",
    "iwar", "sundayddr", "pplsip", "sip auditor", "siparmyknife", "voipbuster",
)
#: requests that never open new work: they always pass the overload cap
_DIALOG_WORK = frozenset(("ACK", "CANCEL", "BYE", "PRACK"))


@dataclass(frozen=True, slots=True)
class GuardConfig:
    # flood (pike): more than ``density`` requests from one IP within ``window`` s → ban
    window: float = 2.0
    density: int = 100
    ban_time: float = 300.0
    # malformed messages tolerated per source per ``malformed_window`` before a ban
    malformed_budget: int = 10
    malformed_window: float = 60.0
    # brute force: failures after credentials / challenges without, per ``auth_window`` s
    auth_failures: int = 10
    auth_challenges: int = 60
    auth_window: float = 300.0
    auth_ban_time: float = 900.0
    # scanners
    scanner_signatures: tuple[str, ...] = SCANNER_SIGNATURES
    scanner_ban_time: float = 3600.0
    # overload: live transactions above which new work gets 503 (0 = no cap)
    max_transactions: int = 0
    retry_after: int = 5
    # table capacities (memory bound under a flood from many sources)
    max_sources: int = 65536
    max_bans: int = 65536
    # addresses/CIDR ranges never rate-limited or banned (nodes, carriers, monitoring)
    trusted: tuple[str, ...] = ()
    # log lines per second about blocked traffic (the rest are counted, then summarised)
    log_rate: float = 20.0
    # a call whose end is never reported stops counting against its tenant after this (s)
    max_call_age: float = 4 * 3600.0
    # MaxMind-format country database for the tenants' country filters ("" = none)
    geoip_database: str = ""
    # per-tenant policies from the config file, tenant → policy document (TenantPolicy.from_dict);
    # the SBC may also install them at run time with Guard.set_tenant_policy
    tenants: dict = field(default_factory=dict, compare=False)

    def __post_init__(self) -> None:
        """Check (and normalise: list → tuple, int → float) every value, naming the key, so
        ``GuardConfig(**toml_table)`` is as safe as ``from_dict``."""
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            default = f.default
            if isinstance(default, tuple):
                if isinstance(value, list):
                    value = tuple(value)
                if not isinstance(value, tuple) or not all(isinstance(v, str) for v in value):
                    raise ValueError(f"{f.name}: expected a list of strings")
            elif isinstance(default, bool):
                pass
            elif isinstance(default, float):
                if isinstance(value, bool) or not isinstance(value, (int, float)):
                    raise ValueError(f"{f.name}: expected a number, not {value!r}")
                value = float(value)
            elif isinstance(default, int):
                if isinstance(value, bool) or not isinstance(value, int):
                    raise ValueError(f"{f.name}: expected a whole number, not {value!r}")
            elif isinstance(default, str):
                if not isinstance(value, str):
                    raise ValueError(f"{f.name}: expected a string, not {value!r}")
            elif f.name == "tenants":
                if not isinstance(value, dict):
                    raise ValueError("tenants: expected a table of tenant = policy")
            object.__setattr__(self, f.name, value)
        for name in ("window", "ban_time", "malformed_window", "auth_window", "auth_ban_time",
                     "scanner_ban_time", "log_rate", "max_call_age"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be > 0")
        for name in ("density", "max_sources", "max_bans", "malformed_budget", "auth_failures", "auth_challenges"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1")
        if self.max_transactions < 0 or self.retry_after < 0:
            raise ValueError("max_transactions and retry_after must be >= 0")
        for t in self.trusted:
            try:
                ipaddress.ip_network(t, strict=False)
            except ValueError:
                raise ValueError(f"trusted: {t!r} is not an IP address or CIDR range") from None
        for tenant, doc in self.tenants.items():
            try:
                TenantPolicy.from_dict(doc)
            except PolicyError as e:
                raise PolicyError(f"tenants.{tenant}: {e}") from None

    @classmethod
    def from_dict(cls, data: dict) -> "GuardConfig":
        """From the SBC config's ``[protection]`` table; unknown keys and wrong types are
        refused with a message naming the key (ValueError)."""
        if not isinstance(data, dict):
            raise ValueError("protection: expected a table")
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ValueError(f"protection.{unknown[0]}: unknown setting (known: {', '.join(sorted(known))})")
        try:
            return cls(**data)
        except ValueError as e:
            raise ValueError(f"protection.{e}") from None


# per-source state: one list, indexed by these (a list is the cheapest mutable record)
_WIN, _COUNT, _BAD_START, _BAD, _AUTH_START, _FAIL, _CHAL, _TRUSTED = range(8)


class _LogLimiter:
    """Token bucket for log lines: a flood must not turn into a log flood."""

    __slots__ = ("rate", "tokens", "last", "suppressed")

    def __init__(self, rate: float, now: float) -> None:
        self.rate = rate
        self.tokens = rate
        self.last = now
        self.suppressed = 0

    def allow(self, now: float) -> bool:
        self.tokens = min(self.rate, self.tokens + (now - self.last) * self.rate)
        self.last = now
        if self.tokens >= 1.0:
            self.tokens -= 1.0
            return True
        self.suppressed += 1
        return False


@dataclass
class Guard:
    """Protection of the SBC's public side. See the module docstring for the why.

    ``clock``: monotonic seconds (rates, bans). ``wall_clock``: epoch seconds (tenant days).
    ``transactions``: live transaction count for the overload cap (the SBC's transaction
    layer; None = no cap). ``geoip``: country lookups for the tenants' IP filters.
    """

    config: GuardConfig = field(default_factory=GuardConfig)
    clock: Callable[[], float] = time.monotonic
    wall_clock: Callable[[], float] = time.time
    transactions: Callable[[], int] | None = None
    geoip: GeoIp | None = None

    def __post_init__(self) -> None:
        c = self.config
        self._sources: LruTable[str, list] = LruTable(c.max_sources)
        self._bans: LruTable[str, float] = LruTable(c.max_bans)
        self._trusted_ips = frozenset(
            str(n.network_address) for n in map(lambda t: ipaddress.ip_network(t, strict=False), c.trusted)
            if n.num_addresses == 1 and n.version == 4
        )
        self._trusted_all = tuple(ipaddress.ip_network(t, strict=False) for t in c.trusted)
        sigs = "|".join(re.escape(s.lower()) for s in c.scanner_signatures)
        self._scanner = re.compile(sigs, re.IGNORECASE).search if sigs else None  # (text, pos, endpos)
        self._503 = reject(
            "overload", 503, "Service Unavailable", (("Retry-After", str(c.retry_after)),)
        )
        self._log = _LogLimiter(c.log_rate, self.clock())
        self.tenants = TenantLimits(c.max_call_age)
        if self.geoip is None and c.geoip_database:
            self.geoip = GeoIp(c.geoip_database)
        for tenant, doc in c.tenants.items():
            self.set_tenant_policy(tenant, doc)
        metrics.track_tables(lambda: len(self._bans), lambda: len(self._sources))

    # ------------------------------------------------------------------ per message
    def check_request(self, msg: Message | SipError | None, source: Address) -> Verdict:
        """Judge one message received from ``source`` (a Flow or ``(ip, port)``), before anything else.

        ``msg`` is the parsed Request or Response, or the parse error (a SipError, e.g.
        RemoteProtocolError) or None for bytes that did not parse, so malformed traffic
        counts against the source's budget. Accept on a malformed message means "handle it
        as usual" (answer 400 if it can be answered). Responses are only checked against
        bans: they answer our own requests.
        """
        ip = _ip(source)
        until = self._bans.peek(ip)
        if until is not None:
            if self.clock() < until:
                metrics.blocked("banned")
                return drop("banned")
            self._bans.pop(ip)
        if ip in self._trusted_ips:
            # a trusted address (a node, a carrier) needs no rate state: only the overload cap
            if self.transactions is not None and self.config.max_transactions and isinstance(msg, Request):
                return self._overload(msg, ip)
            return ACCEPT
        now = self.clock()
        e = self._sources.get(ip)
        if e is None:
            e = [now, 0, now, 0, now, 0, 0, self._is_trusted(ip)]
            self._sources.put(ip, e)
        trusted = e[_TRUSTED]
        if isinstance(msg, Request):
            if not trusted:
                if now - e[_WIN] >= self.config.window:
                    e[_WIN] = now
                    e[_COUNT] = 1
                else:
                    e[_COUNT] += 1
                    if e[_COUNT] > self.config.density:
                        return self._ban(ip, "flood", self.config.ban_time, now, f"{e[_COUNT]} requests in {self.config.window:g}s")
                if self._scanner is not None:
                    ua = msg.get("User-Agent")
                    if ua is not None and self._scanner(ua) is not None:
                        return self._ban(ip, "scanner", self.config.scanner_ban_time, now, f"User-Agent {ua[:80]!r}")
                    # svmap and friends also sign the From display name ("sipvicious" <sip:...>);
                    # only the display name is searched, never a domain that merely contains a word
                    frm = msg.get("From")
                    if frm is not None:
                        lt = frm.find("<")
                        if lt > 0 and self._scanner(frm, 0, lt) is not None:
                            return self._ban(ip, "scanner", self.config.scanner_ban_time, now, f"From {frm[:80]!r}")
            if self.transactions is not None and self.config.max_transactions:
                return self._overload(msg, ip)
            return ACCEPT
        if isinstance(msg, Response):
            return ACCEPT
        # malformed (a parse error, or bytes that were not SIP)
        if trusted:
            return ACCEPT
        if now - e[_BAD_START] >= self.config.malformed_window:
            e[_BAD_START] = now
            e[_BAD] = 1
        else:
            e[_BAD] += 1
        if e[_BAD] > self.config.malformed_budget:
            return self._ban(ip, "malformed", self.config.ban_time, now, f"{e[_BAD]} malformed messages")
        return ACCEPT

    def _overload(self, msg: Request, ip: str) -> Verdict:
        """503 for new work above the transaction cap; in-dialog requests go on."""
        if msg.method not in _DIALOG_WORK and self.transactions() >= self.config.max_transactions:  # type: ignore[misc]
            if not self._in_dialog(msg):
                metrics.blocked("overload")
                self._note(self.clock(), "overload", ip, "transaction cap reached: 503")
                return self._503
        return ACCEPT

    def unparseable(self, source: Address) -> Verdict:
        """Bytes from ``source`` that did not parse: same as ``check_request(None, source)``."""
        return self.check_request(None, source)

    def observe_response(self, request: Request, response: Response, source: Address) -> None:
        """Count an authentication failure: ``response`` is the final answer a node gave to
        ``request`` (INVITE or REGISTER) received from ``source``. The next request of a
        source that crossed a limit is dropped (the ban takes effect at once)."""
        status = response.status
        if status not in (401, 403, 407) or request.method not in ("INVITE", "REGISTER"):
            if 200 <= status < 300 and request.method == "INVITE" and self.tenants.table.live():
                self.tenants.answered(request.call_id, self.wall_clock())  # usage counts from here
            return
        ip = _ip(source)
        e = self._sources.get(ip)
        now = self.clock()
        if e is None:
            e = [now, 0, now, 0, now, 0, 0, self._is_trusted(ip)]
            self._sources.put(ip, e)
        if e[_TRUSTED]:
            return
        if now - e[_AUTH_START] >= self.config.auth_window:
            e[_AUTH_START] = now
            e[_FAIL] = 0
            e[_CHAL] = 0
        credentials = status == 403 or "Authorization" in request or "Proxy-Authorization" in request
        if credentials:
            e[_FAIL] += 1
            if e[_FAIL] >= self.config.auth_failures:
                self._ban(ip, "auth_failures", self.config.auth_ban_time, now, f"{e[_FAIL]} failed authentications", False)
        else:
            e[_CHAL] += 1
            if e[_CHAL] >= self.config.auth_challenges:
                self._ban(ip, "auth_failures", self.config.auth_ban_time, now, f"{e[_CHAL]} challenges without credentials", False)

    # ------------------------------------------------------------------ bans
    def banned(self, ip: str) -> bool:
        """Is ``ip`` (or, for IPv6, its /64) banned now?"""
        until = self._bans.peek(_ip((ip, 0)))
        return until is not None and self.clock() < until

    def ban(self, ip: str, seconds: float, cause: str = "banned") -> None:
        """Ban ``ip`` by hand (an operator, or another SBC sharing what it saw)."""
        ip = _ip((ip, 0))
        self._ban(ip, cause, seconds, self.clock(), "by request", False)

    def unban(self, ip: str) -> bool:
        return self._bans.pop(_ip((ip, 0))) is not None

    def _ban(self, ip: str, cause: str, seconds: float, now: float, why: str, blocking: bool = True) -> Verdict:
        if blocking:  # a message is refused now (not so when a ban follows an observed answer)
            metrics.blocked(cause)
        if not self.banned(ip):
            metrics.banned(cause)
            self._bans.put(ip, now + seconds)
            self._note(now, cause, ip, f"banned for {seconds:g}s: {why}", logging.WARNING)
        return drop(cause)

    # ------------------------------------------------------------------ calls per tenant
    def set_tenant_policy(self, tenant: str, policy: TenantPolicy | dict | None) -> None:
        """Install (dict: validated, PolicyError if wrong) or remove (None) a tenant's policy."""
        if policy is None:
            self.tenants.policies.pop(tenant, None)
            return
        if isinstance(policy, dict):
            policy = TenantPolicy.from_dict(policy)
        self.tenants.policies[tenant] = policy

    def admit_call(
        self, tenant: str, call_id: str, source: Address, *, outbound: bool, external: bool = True
    ) -> Verdict:
        """May this new call start? Call it for each initial INVITE once the tenant is known.

        ``outbound``: the tenant's user calls out (the IP filter and daily usage apply);
        False for calls coming in to the tenant (from a carrier). ``external``: the call
        leaves or comes from the platform (a trunk), counted against max calls and usage.
        A repeated call_id (retransmission, re-INVITE) is accepted again without counting.
        An accepted call must end with ``call_ended(call_id)`` (BYE, CANCEL, failure).
        A refusal is ``reject`` with 403 (IP filter, daily usage) or 503 (max calls).
        """
        p = self.tenants.policy(tenant)
        if not (outbound and p.filter_by_ip) and not (external and (p.max_calls or p.max_daily_usage)):
            # nothing can refuse this call and nothing counts it (TenantLimits.start): no
            # Call-ID hash, no look into the shared table; most tenants have no edge policy
            return ACCEPT
        if self.tenants.admitted(call_id):
            return ACCEPT
        remote = getattr(source, "remote", None)
        ip = (remote if remote is not None else source)[0]  # type: ignore[index]  # the address itself
        country = None
        if outbound and p.filter_by_ip and p.allowed_countries and self.geoip is not None:
            country = self.geoip.country(ip)
        now = self.wall_clock()
        # filters and usage first; max calls is checked by the count itself, under the lock
        # the workers share (two workers cannot both take a tenant's last slot)
        cause = self.tenants.check(tenant, outbound, external, ip, country, now) or \
            self.tenants.start(call_id, tenant, outbound, external, now)
        if cause:
            metrics.blocked(cause)
            self._note(self.clock(), cause, ip, f"call refused for tenant {tenant}", logging.INFO, tenant, call_id)
            if cause == "max_calls":
                return reject(cause, 503, "Service Unavailable", (("Retry-After", str(self.config.retry_after)),))
            return reject(cause, 403, "Forbidden")
        return ACCEPT

    def call_ended(self, call_id: str, usage: float | None = None) -> None:
        """The call admitted under ``call_id`` is over. ``usage`` adds to the tenant's day;
        None counts the seconds since the 2xx that ``observe_response`` saw (0 if none)."""
        if self.tenants.table.live():  # (no call counted on this host: nothing to end, no hash)
            self.tenants.end(call_id, usage, self.wall_clock())

    dialog_ended = call_ended

    # ------------------------------------------------------------------ helpers
    def _is_trusted(self, key: str) -> bool:
        """``key``: an IPv4 address or an IPv6 /64 (a trusted host inside it trusts it all:
        a /64 is one site)."""
        if key in self._trusted_ips:
            return True
        if not self._trusted_all:
            return False
        try:
            if "/" in key:
                net = ipaddress.IPv6Network(key)
                return any(n.version == 6 and (net.subnet_of(n) or n.subnet_of(net)) for n in self._trusted_all)
            addr = ipaddress.ip_address(key)
        except ValueError:
            return False
        return any(addr.version == n.version and addr in n for n in self._trusted_all)

    @staticmethod
    def _in_dialog(msg: Request) -> bool:
        try:
            return msg.to.tag is not None
        except SipError:
            return False

    def _note(
        self, now: float, cause: str, ip: str, text: str, level: int = logging.INFO,
        tenant: str | None = None, call_id: str | None = None,
    ) -> None:
        lim = self._log
        if not lim.allow(now):
            return
        extra = {"cause": cause, "source": ip}
        if lim.suppressed:
            extra["suppressed"] = lim.suppressed
            lim.suppressed = 0
        if tenant is not None:
            extra["blocked_tenant"] = tenant
        if call_id is not None:
            extra["blocked_call_id"] = call_id
        log.log(level, "sbc blocked %s from %s: %s", cause, ip, text, extra=extra)
