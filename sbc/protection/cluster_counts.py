"""A tenant's max_calls and max_daily_usage across several SBC hosts (one etcd).

Carriers run several SBC hosts behind DNS or anycast; counted per host, a tenant with
max_calls = 10 could hold 10 calls on each, and its day's usage was split between hosts.
Here each host publishes its per-tenant counts to etcd (cluster/etcd/tenant_usage.py) and
reads the others'; the counter table (sbc/protection/counters.py) admits from shared memory.
Why this way:

* **No etcd on the call path.** A call is admitted from shared memory; this task (one per
  host: the first worker) publishes and reads in the background.
* **Reserved slots, so no overshoot.** For a tenant with max_calls a host publishes
  ``[calls, reserved, want]`` and admits only while its calls < calls + reserved as etcd
  confirmed them (its *cap*). A publish is a compare-and-swap over every host's key, and a
  host reserves only what the others' calls and reservations leave free (its fair share,
  ``max(1, free // hosts)``), so the caps never sum past the limit: the tenant's calls on
  all hosts together never exceed it, however the views lag (the one exception: a host
  cut off from etcd past its lease TTL, below). The price is a refusal
  while slots are reserved on another host: the host then publishes ``want`` at once (within
  ``tick``), hosts that do not want release their reservation when they see it, and the
  wanting host takes what is free. A call ending on a tenant another host is short of is
  published within ``tick`` too.
* **Watched, polled as a fallback.** Every host watches the calls keys: another host's
  change (a ``want``, a release, an ended call) reaches the view within milliseconds and
  runs a round at once, so slots move in tens of milliseconds, not a poll ``interval``
  or two. The watch applies each event only on top of a view at an older revision, so the
  view is always etcd's at ``_rev`` and the compare-and-swap keeps its meaning. The poll
  (every ``interval``) stays: a broken watch (counted, logged) is re-established with
  back-off meanwhile and costs only speed.
* **etcd unavailable** (down, or slower than ``[etcd] limits_timeout`` per call: every call
  has that deadline, so a stalled etcd does not hold a round for the client's 5 s per call):
  caps stay as they were; once etcd has not confirmed this host's counts for a lease TTL
  (its reservations may have gone with the lease) the host enforces ``local + others' last
  known calls < limit``; until it notices, the others may already reserve the slots it
  still uses, so the overshoot is at most that host's cap. Errors are counted and logged;
  it catches up when etcd is back.
* **Dead hosts**: live calls sit on the host's lease (gone within its TTL); usage keys
  do not (a dead host's usage stays counted: it is money). A host restarted under the same
  ``host_id`` without its state dir takes its own usage of the day back from etcd first.
* **Tenants without limits cost nothing**: they have no rows, nothing is published.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import time
from datetime import date as ddate
from hashlib import blake2b
from pathlib import Path

from observability import logging as olog
from sbc.protection import counters
from sbc.protection import metrics as PM
from sbc.protection.tenants import TenantLimits, _day

log = logging.getLogger("hivepbx.sbc")

#: days of usage keys kept in etcd before the range delete (the longest day is ~26 h wide)
KEEP_DAYS = 3
#: back-off before watching the calls keys again after a broken watch, seconds (doubles)
WATCH_RETRY_MIN, WATCH_RETRY_MAX = 0.1, 5.0


def default_host_id(state_dir: str = "") -> str:
    """With a state dir: the hostname plus a hash of the dir, stable across restarts (the
    table and the host's usage keys continue). Without one the table starts empty at each
    start, so each run is its own host (hostname-pid): the last run's usage key stays
    counted as another host's, never lost, never counted twice."""
    host = socket.gethostname() or "sbc"
    if not state_dir:
        return f"{host}-{os.getpid()}"
    return f"{host}-{blake2b(str(Path(state_dir).resolve()).encode(), digest_size=4).hexdigest()}"


def _iso(day: int) -> str:
    return ddate.fromordinal(day).isoformat()


class ClusterCounts:
    """Publishes this host's tenant counts and installs the cluster's in the table's view.
    ``store``: cluster.etcd.tenant_usage.EtcdTenantUsage (or a fake with its methods)."""

    def __init__(self, store, limits: TenantLimits, *, interval: float = 0.25, tick: float = 0.02,
                 usage_interval: float = 1.0, heartbeat: float | None = None, clock=time.time,
                 watch: bool = True) -> None:
        self.store = store
        self.limits = limits
        self.me = store.host_id
        self.ttl = float(getattr(store, "ttl", 10))
        self.interval = interval
        self.tick = tick
        #: the usage keys (every host's, up to three days each) are read this often
        self.usage_interval = usage_interval
        self.heartbeat = heartbeat if heartbeat is not None else min(5.0, self.ttl / 3)
        self.clock = clock
        #: watch the calls keys (when the store can): the poll every ``interval`` is then the fallback
        self.watch = watch and hasattr(store, "watch_calls")
        #: set by a watched change of another host: the loop runs a round now, not after ``tick``
        self._wake = asyncio.Event()
        #: watched changes are in ``_calls`` but not yet in the sums and the table's view
        self._dirty = False
        self._watch_task: asyncio.Task | None = None
        self._unwatch = None
        #: set while the current watch lives; its end (or stop()) sets it
        self._watch_ended = asyncio.Event()
        #: the tasks end at their next turn even if Python 3.11 lost their cancel (asyncio.wait_for
        #: in cluster.etcd.client.within can swallow one that races a reply)
        self._stopping = False
        #: tenants another host is short of (it wants slots, or their calls fill the limit)
        self._short: set[str] = set()
        #: tenant key -> domain, of every tenant that had a limit (its usage goes on being published)
        self._names: dict[int, str] = {}
        self._seeded = False
        self._gen: int | None = None
        #: the revision of etcd the view of every host's calls (``_calls``) is, and of the sums (``_agg``)
        self._rev: int | None = None
        self._agg_rev: int | None = None
        self._published_at = -1e9
        self._confirmed_at: float | None = None
        self._read_at = -1e9
        self._usage_at = -1e9
        self._read_ok_at: float | None = None
        self._cleaned_day = 0
        self._again = False
        #: domain -> [calls, reserved, want] as this host last published it
        self._mine: dict[str, list[int]] = {}
        #: domains with a call refused for want of reserved slots, not yet published
        self._want: set[str] = set()
        #: date -> tenant -> usage this host put there (only ever merged into: never loses one)
        self._usage_out: dict[str, dict[str, float]] = {}
        self._calls: dict[str, dict] = {}
        self._agg: dict[str, list] = {}
        self._usage: dict[str, dict[str, dict[str, float]]] = {}
        self._failing: set[str] = set()
        self._at_limit: set[str] = set()
        self._hosts_seen: set[str] = set()
        self._mode = counters.LOCAL
        self._shape: frozenset = frozenset()
        self._task: asyncio.Task | None = None
        PM.CLUSTER_VIEW_AGE.set_function(
            lambda: time.monotonic() - self._read_ok_at if self._read_ok_at is not None else -1.0)

    @property
    def table(self):
        return self.limits.table

    def _limited(self) -> dict[int, tuple[str, object]]:
        out = {}
        for domain, p in self.limits.policies.items():
            if p.max_calls or p.max_daily_usage:
                k = self.limits._key(domain)
                out[k] = (domain, p)
                if len(self._names) > 65536:
                    self._names.clear()
                self._names[k] = domain
        return out

    # ------------------------------------------------------------------ errors
    def _failed(self, op: str, e: BaseException) -> None:
        PM.CLUSTER_ERRORS.labels(op).inc()
        if op not in self._failing:
            self._failing.add(op)
            if op == "watch":
                log.warning("tenant counts: etcd watch of the hosts' calls broke (%s): polling every %g s until "
                            "it is back", e or type(e).__name__, self.interval)
                return
            log.warning("tenant counts: etcd %s failed (%s): enforcing on this host's counts and the last view",
                        op, e or type(e).__name__)

    def _ok(self, op: str) -> None:
        if op in self._failing:
            self._failing.discard(op)
            log.info("tenant counts: etcd %s works again", op)

    # ------------------------------------------------------------------ the loop
    async def start(self) -> None:
        await self.sync(force=True)
        loop = asyncio.get_running_loop()
        self._task = loop.create_task(self._run(), name="sbc-tenant-counts")
        if self.watch:
            self._watch_task = loop.create_task(self._watching(), name="sbc-tenant-counts-watch")

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while not self._stopping:
            timer = loop.call_later(self.tick, self._wake.set)
            try:
                await self._wake.wait()
            finally:
                timer.cancel()
            self._wake.clear()
            if self._stopping:
                return
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("tenant counts: sync failed; retrying")

    async def sync(self, force: bool = False) -> None:
        """One round: seed, publish what is due, read the others when due, install the view."""
        mono = time.monotonic()
        if not self._seeded:
            await self._seed()
        if self._dirty:
            self._dirty = False
            self._set_calls(self._calls)
            self._install(None)
            self._again = self._again or self._demand_changed()
        if mono - self._read_at >= self.interval:
            self._read_at = mono
            try:
                self._take(*await self.store.read_calls())
                if mono - self._usage_at >= self.usage_interval:
                    self._usage = await self.store.read_usage()
                    self._usage_at = mono
                self._read_ok_at = time.monotonic()
                self._ok("read")
                self._again = self._again or self._demand_changed()
            except Exception as e:
                self._failed("read", e)
            self._install(None)
            await self._clean()
        gen, urgent = self.table.changes()
        since = mono - self._published_at
        lost_lease = getattr(self.store, "_lease_id", 0) is None
        if (force or urgent or self._again or lost_lease or since >= self.heartbeat
                or ((gen != self._gen or self._mode == counters.ETCD_LOST) and since >= self.interval)
                or (gen != self._gen and "publish" not in self._failing and self._freed_for_others())):
            await self._publish(gen)
        if (self._mode == counters.RESERVED and self._confirmed_at is not None
                and time.monotonic() - self._confirmed_at > self.ttl):
            log.warning("tenant counts: etcd has not confirmed this host's counts for %.0f s: admitting on "
                        "local + the other hosts' last known calls", self.ttl)
            self._mode = counters.ETCD_LOST
            self._install(None)

    async def _seed(self) -> None:
        """This host's usage of the tenants' current days as etcd has it: a host restarted
        without its state dir (or with a lost one) must not publish less than it counted."""
        try:
            usage = await self.store.read_usage()
        except Exception as e:
            self._failed("read", e)
            return
        self._ok("read")
        now = self.clock()
        zones = {d: p.timezone for d, p in self._limited().values()}
        for date, hosts in usage.items():
            mine = hosts.get(self.me)
            if not mine:
                continue
            self._usage_out[date] = dict(mine)
            try:
                day = ddate.fromisoformat(date).toordinal()
            except ValueError:
                continue
            for domain, used in mine.items():
                zone = zones.get(domain, "UTC")
                if day == _day(zone, now) and self.table.raise_usage(self.table.key(domain), zone, day, used):
                    log.info("tenant %s: took this host's usage of %s back from etcd (%.1f)", domain, date, used,
                             extra={"tenant": domain})
        self._usage = usage
        self._seeded = True

    # ------------------------------------------------------------------ the watch
    @property
    def watching(self) -> bool:
        """A watch on the calls keys is in place (not broken since)."""
        return self._unwatch is not None and "watch" not in self._failing

    async def _watching(self) -> None:
        """Keep a watch on the calls keys, from a fresh read each time (so a compacted
        revision or a missed event cannot leave a gap); broken: count, log, back off, again."""
        delay = WATCH_RETRY_MIN
        while not self._stopping:
            ended = self._watch_ended = asyncio.Event()
            why: list[BaseException | None] = []
            try:
                self._take(*await self.store.read_calls())
                self._dirty = True
                self._unwatch = await self.store.watch_calls(
                    self._rev + 1, self._on_change, lambda e: (why.append(e), ended.set()))
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self._failed("watch", e)
            else:
                self._ok("watch")
                self._wake.set()  # the read above may have news
                since = time.monotonic()
                await ended.wait()
                unwatch, self._unwatch = self._unwatch, None
                await unwatch()
                if self._stopping:
                    return
                self._failed("watch", why[0] if why and why[0] is not None else ConnectionError("watch ended"))
                if time.monotonic() - since > WATCH_RETRY_MAX:
                    delay = WATCH_RETRY_MIN  # it had worked a while: not a flapping etcd
            await asyncio.sleep(delay)
            delay = min(delay * 2, WATCH_RETRY_MAX)

    def _on_change(self, host: str, value: dict | None, revision: int) -> None:
        """One watched change of a host's calls key (None: deleted). Applied only on top of
        a view at an older revision: events come in revision order from one before the
        view's, so the view stays etcd's at ``_rev`` (what the compare-and-swap expects)."""
        if self._rev is None or revision < self._rev:
            return  # the view already has it (a read or a publish overtook the watch)
        if value is None:
            self._calls.pop(host, None)
        else:
            self._calls[host] = value
        self._rev = revision
        self._dirty = True
        if host != self.me:
            self._wake.set()

    def _take(self, revision: int, calls: dict[str, dict]) -> None:
        """A read's (or a publish's) snapshot, unless the view is already newer (the watch
        delivered changes after it was taken)."""
        if self._rev is not None and revision < self._rev:
            return
        self._rev = revision
        self._set_calls(calls)

    def _freed_for_others(self) -> bool:
        """A call ended here on a tenant another host is short of: publish now."""
        for domain in self._short:
            mine = self._mine.get(domain)
            if mine and self.table.active(self.limits._key(domain)) < mine[0]:
                return True
        return False

    # ------------------------------------------------------------------ reservations
    def _set_calls(self, calls: dict[str, dict]) -> None:
        """Every host's published calls, and per tenant the other hosts' totals."""
        self._calls = calls
        self._agg_rev = self._rev
        agg: dict[str, list] = {}
        for host, m in calls.items():
            if host == self.me:
                continue
            for domain, v in m.items():
                c, r, w = _triple(v)
                a = agg.get(domain)
                if a is None:
                    agg[domain] = [c, c + r, w]
                else:
                    a[0] += c
                    a[1] += c + r
                    a[2] = a[2] or w
        self._agg = agg
        self._short_update()

    def _short_update(self) -> None:
        short = set()
        for domain, (c, _r, _w) in self._mine.items():
            a = self._agg.get(domain)
            limit = self.limits.policy(domain).max_calls
            if a is not None and limit and (a[2] or a[0] + c >= limit):
                short.add(domain)
        self._short = short

    def _others(self, domain: str) -> tuple[int, int, bool]:
        """(the other hosts' calls, their calls + reservations, whether one wants more)."""
        return self._agg.get(domain) or _NOTHING

    def _reserve(self, limited, active: dict[int, int]) -> tuple[dict[str, list[int]], dict[int, int]]:
        """What to publish for each tenant with max_calls, and the caps it gives this host."""
        hosts = len(set(self._calls) | {self.me})
        values: dict[str, list[int]] = {}
        caps: dict[int, int] = {}
        for tkey, (domain, p) in limited.items():
            if not p.max_calls:
                continue
            c = active.get(tkey, 0)
            _calls, held, others_want = self._others(domain)
            free = p.max_calls - c - held
            want = domain in self._want
            if free <= 0:
                r = 0
            elif want and not others_want:
                r = free  # only this host is short: it may take all that is free
            elif others_want and not want:
                r = 0     # another host is short: give back what is not in use
            else:
                r = max(1, free // hosts)
            values[domain] = [c, r, int(want)]
            caps[tkey] = c + r
        return values, caps

    def _demand_changed(self) -> bool:
        """After a read: publish again when the hosts changed, another host wants slots this
        one holds unused, or this one holds none (or wanted more) and some became free, or
        its own ``want`` is stale (no refusal since) while another host wants: two hosts that
        both say they want never give way, until the heartbeat clears the flag."""
        if set(self._calls) | {self.me} != self._hosts_seen:
            return True
        for domain, (c, r, w) in self._mine.items():
            _calls, held, others_want = self._others(domain)
            free = self.limits.policy(domain).max_calls - c - held
            if others_want and not w and r > 0:
                return True
            if others_want and w and not self.table.view_of(self.limits._key(domain))[2]:
                return True
            if (w or r == 0) and free > r and not (others_want and not w):
                return True
        return False

    async def _publish(self, gen: int) -> None:
        limited = self._limited()
        active: dict[int, int] = {}
        usage: dict[str, dict[str, float]] = {}
        for tkey, n, day, used, _zone, want in self.table.rows():
            domain = self._names.get(tkey)
            if domain is None:
                continue
            if n > 0:
                active[tkey] = n
            if want:
                self._want.add(domain)
            if used > 0 and day > 0:
                usage.setdefault(_iso(day), {})[domain] = round(used, 3)
        self._published_at = time.monotonic()
        self._again = False
        try:
            if self._rev is None:
                self._take(*await self.store.read_calls())
            for _attempt in range(5):
                if self._agg_rev != self._rev:  # watched changes not summed yet: reserve on what expect says
                    self._set_calls(self._calls)
                values, caps = self._reserve(limited, active)
                done, rev, calls = await self.store.publish_calls(values, self._rev)
                self._take(rev, calls)
                if done:
                    break
                PM.CLUSTER_PUBLISHES.labels("calls", "conflict").inc()
            else:
                self._again = True  # others kept writing: next tick
                return
        except Exception as e:
            self._failed("publish", e)
            PM.CLUSTER_PUBLISHES.labels("calls", "failed").inc()
            return
        self._ok("publish")
        PM.CLUSTER_PUBLISHES.labels("calls", "ok").inc()
        self._confirmed_at = time.monotonic()
        self._gen = gen
        self._mine = values
        self._short_update()
        self._want.clear()
        if self._mode != counters.RESERVED:
            if self._mode == counters.ETCD_LOST:
                log.info("tenant counts: etcd confirms this host's counts again: reserved slots in force")
            self._mode = counters.RESERVED
        self._install(caps, limited)
        if self._seeded:
            for date, m in usage.items():
                old = self._usage_out.get(date, {})
                merged = {**old, **m}
                if merged == old:
                    continue
                try:
                    await self.store.publish_usage(date, merged)
                except Exception as e:
                    self._failed("publish", e)
                    PM.CLUSTER_PUBLISHES.labels("usage", "failed").inc()
                    self._gen = None  # try again next round
                    continue
                PM.CLUSTER_PUBLISHES.labels("usage", "ok").inc()
                self._usage_out[date] = merged

    def _install(self, caps: dict[int, int] | None, limited=None) -> None:
        """The cluster's counts into the table's view, for every tenant with a limit."""
        now = self.clock()
        limited = limited if limited is not None else self._limited()
        hosts = set(self._calls) | {self.me}
        if hosts != self._hosts_seen:
            for h in sorted(hosts - self._hosts_seen - {self.me}):
                log.info("tenant counts: SBC host %s publishes its counts", h)
            for h in sorted(self._hosts_seen - hosts):
                log.info("tenant counts: SBC host %s is gone: its live calls no longer count", h)
            self._hosts_seen = hosts
        PM.CLUSTER_HOSTS.set(len(hosts))
        remote: dict[int, tuple[int, int, float, str]] = {}
        at_limit = set()
        usage_by_day: dict[int, list] = {}
        for tkey, (domain, p) in limited.items():
            today = _day(p.timezone, now)
            hosts_usage = usage_by_day.get(today)
            if hosts_usage is None:
                hosts_usage = usage_by_day[today] = [
                    m for h, m in self._usage.get(_iso(today), {}).items() if h != self.me]
            used = sum(m.get(domain, 0.0) for m in hosts_usage) if hosts_usage else 0.0
            calls = self._others(domain)[0]
            if calls or used:
                remote[tkey] = (calls, today, used, p.timezone)
            if p.max_calls and calls >= p.max_calls:
                at_limit.add(domain)
        self.table.set_view(self._mode, caps, remote)
        shape = frozenset((d, p.max_calls) for d, p in limited.values())
        if caps is None and shape != self._shape:
            self._again = True  # a limit set or changed: reserve for it now
        self._shape = shape
        for domain in at_limit - self._at_limit:
            token = olog.tenant_var.set(domain)
            try:
                log.info("tenant %s: its calls on other SBC hosts fill its max_calls", domain, extra={"tenant": domain})
            finally:
                olog.tenant_var.reset(token)
        self._at_limit = at_limit

    async def _clean(self) -> None:
        today = ddate.fromtimestamp(self.clock()).toordinal()
        if today == self._cleaned_day:
            return
        cutoff = _iso(today - KEEP_DAYS)
        try:
            gone = await self.store.forget_before(cutoff)
        except Exception as e:
            self._failed("cleanup", e)
            return
        self._cleaned_day = today
        for date in [d for d in self._usage_out if d < cutoff]:
            del self._usage_out[date]
        if gone:
            log.info("tenant counts: removed %d usage key(s) of days before %s", gone, cutoff)

    async def stop(self) -> None:
        self._stopping = True
        self._watch_ended.set()
        self._wake.set()
        for task in (self._watch_task, self._task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._watch_task = self._task = None
        if self._unwatch is not None:
            unwatch, self._unwatch = self._unwatch, None
            await unwatch()
        with contextlib.suppress(Exception):
            await self.sync(force=True)  # the last usage out before the lease goes


_NOTHING = (0, 0, False)


def _triple(v) -> tuple[int, int, bool]:
    """A host's published [calls, reserved, want] for a tenant (anything else: nothing)."""
    if isinstance(v, list) and len(v) == 3 and all(isinstance(x, int) and not isinstance(x, bool) for x in v):
        return max(0, v[0]), max(0, v[1]), bool(v[2])
    return 0, 0, False


async def open_cluster_counts(cfg, limits: TenantLimits) -> tuple[ClusterCounts, object]:
    """Connect to the cluster's etcd and start publishing; the caller closes with
    ``await close()`` (the host's live calls leave the sums at once, its usage stays)."""
    etcd = importlib.import_module("cluster.etcd.client")
    usage_mod = importlib.import_module("cluster.etcd.tenant_usage")

    async def build(client):
        store = usage_mod.EtcdTenantUsage(client, etcd.Keys(cfg.etcd_prefix),
                                          cfg.host_id or default_host_id(cfg.state_dir), ttl=cfg.limits_ttl,
                                          deadline=cfg.limits_timeout)
        counts = ClusterCounts(store, limits)

        async def close() -> None:
            try:
                await counts.stop()
            finally:
                await store.close()

        try:
            await counts.start()
        except BaseException:
            await store.close()  # its lease and keep-alive, if the first round took one
            raise
        return counts, close

    return await etcd.open_with_client(list(cfg.etcd_endpoints), build)
