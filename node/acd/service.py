"""The ACD on a node: publishes what call control sees to the event bus and applies the log.

Call control never changes queue state directly; it publishes a fact (a caller joined, an
agent answered) and waits for the log to come back, because only the log's order is the same
on every node. Each node applies every record of every partition with one AcdEngine per
partition and acts only on decisions about its own calls (``Decision.node``).

On start a node loads the newest snapshot of each partition (``<topic>.snapshots``; every node
writes one every ``snapshot_every`` records), replays the log after it, then publishes
NodeLeft(itself) to every partition: that both ends whatever a previous incarnation of the node left in the queues and
serves as the catch-up barrier (the node is ready once it has applied its own marker).

Deadlines (ring timeout, max wait, wrap-up) fire when someone publishes a Tick: the node
running the call does so when it is due, any other node ``tick_grace`` seconds later (in case
the owner is stuck), anyone at once when the owner has left.

Publishing is serialised per node: the engine drops a record whose seq is not above the last
one from the same origin (a retried send), so one origin's records must reach the log in order.

A replica must apply every record: one that missed some (retention deleted them before this
node read them: it was down, paused or cut off too long) would decide differently from the
others. So a gap (the bus raises node.ports.LogGap, or the next record read is not the next
offset) is never read over: the partition restarts from the newest snapshot whose next record is
still in the log, and this node's calls are brought in line with it (offers it missed, offers
that ended meanwhile). Without such a snapshot the partition is *unhealthy*: it takes no
decisions (no offers, no ticks, no snapshots, its callers overflow), says so in the metrics,
the log and ``health()``, and retries as snapshots from healthy nodes appear.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter, Gauge

from node.acd.config import QueueConfig, queue_name
from node.acd.engine import AcdEngine
from node.acd.events import (
    AgentLoggedIn, AgentLoggedOut, AgentPaused, AgentReady, AgentUnpaused, CallEnded, CallJoined, CallLeft,
    CancelOffer, Connected, Decision, Envelope, Event, NodeLeft, Offer, OfferAnswered, OfferDeclined, Overflow,
    QueueConfigured, QueueRemoved, Tick, decode, encode,
)
from node.ports import BusRecord, EventBus, LogGap

__all__ = ["AcdService", "QueuedCall", "PartitionUnhealthy", "TOPIC", "DEFAULT_PARTITIONS"]

log = logging.getLogger(__name__)

TOPIC = "hivepbx.acd"
DEFAULT_PARTITIONS = 16

RECORDS = Counter("hivepbx_acd_records", "ACD log records applied by this node", ["result"])
DECISIONS = Counter("hivepbx_acd_decisions", "ACD decisions about this node's calls", ["kind"])
TICKS = Counter("hivepbx_acd_ticks", "Ticks this node published for due ACD deadlines")
SNAPSHOTS = Counter("hivepbx_acd_snapshots", "ACD state snapshots this node wrote")
GAPS = Counter("hivepbx_acd_log_gaps", "ACD log records this node missed (retention passed it), by outcome",
               ["outcome"])
UNHEALTHY = Gauge("hivepbx_acd_unhealthy_partitions",
                  "ACD partitions this node cannot rebuild (it missed records, no snapshot covers them)")

#: records of a partition between two snapshots (0: none; the log is replayed from its start)
SNAPSHOT_EVERY = 5000
#: seconds between looks for a snapshot that can rebuild an unhealthy partition
RESYNC_EVERY = 30.0


class PartitionUnhealthy(RuntimeError):
    """The partition's replica on this node missed records and cannot be rebuilt yet."""


def tenant_key(tenant: int) -> str:
    """All of a tenant's ACD events share a key, so one partition orders them totally (its
    queues share agents)."""
    return f"tenant:{tenant}"


class QueuedCall:
    """A caller in a queue, seen from the node that runs the call: decisions arrive in log order."""

    __slots__ = ("tenant", "queue", "call", "_decisions", "done", "partition", "offset", "offers")

    def __init__(self, tenant: int, queue: str, call: str) -> None:
        self.tenant, self.queue, self.call = tenant, queue, call
        self._decisions: asyncio.Queue[Decision] = asyncio.Queue()
        self.done = False  # connected or overflowed: no further offers
        self.partition: int | None = None  # where CallJoined is in the log, once it is
        self.offset = -1
        self.offers: set[str] = set()  # agents offered and not cancelled: to catch up after a gap

    def _put(self, d: Decision) -> None:
        self._decisions.put_nowait(d)

    async def next(self, timeout: float | None = None) -> Decision:
        """The next decision (Offer, CancelOffer, Connected, Overflow, Position)."""
        return await asyncio.wait_for(self._decisions.get(), timeout)

    async def next_of(self, *kinds: type, timeout: float | None = None) -> Decision:
        """The next decision of one of ``kinds``, skipping others (e.g. Position)."""
        while True:
            d = await self.next(timeout)
            if isinstance(d, kinds):
                return d

    def pending(self) -> list[Decision]:
        out = []
        while not self._decisions.empty():
            out.append(self._decisions.get_nowait())
        return out


class AcdService:
    def __init__(self, bus: EventBus, node: str, *, topic: str = TOPIC, partitions: int = DEFAULT_PARTITIONS,
                 clock: Callable[[], float] = time.time, tick_grace: float = 2.0,
                 snapshot_every: int = SNAPSHOT_EVERY, resync_every: float = RESYNC_EVERY) -> None:
        if not node:
            raise ValueError("node id is empty")
        self.node = node
        self.origin = f"{node}/{uuid.uuid4().hex[:12]}"
        self._bus = bus
        self._topic = topic
        self._want_partitions = partitions
        self._clock = clock
        self._grace = tick_grace
        self._seq = 0
        self._publish_lock = asyncio.Lock()
        self._engines: list[AcdEngine] = []
        self._applied: list[int] = []
        self._progress = asyncio.Event()
        self._calls: dict[tuple[int, str], QueuedCall] = {}
        self._ticked: dict[int, tuple[float, float]] = {}  # partition -> (deadline, when published)
        self._tasks: list[asyncio.Task] = []
        self._snap_topic = topic + ".snapshots"
        self._snap_every = snapshot_every
        self._snapped: list[int] = []  # per partition: offset of the last snapshot taken or loaded
        self._snap_queue: asyncio.Queue[tuple[int, bytes]] = asyncio.Queue()
        #: partition -> offset of the snapshot this node started from (tests, health)
        self.restored: dict[int, int] = {}
        #: partition -> why its replica cannot be rebuilt (it takes no decisions meanwhile)
        self.unhealthy: dict[int, str] = {}
        self._log_start: dict[int, int] = {}  # partition -> first offset known to be in the log (after a gap)
        self._tenant_part: dict[int, int] = {}  # tenant -> partition its key maps to (seen when publishing)
        self._restart = asyncio.Event()  # re-read the log from the engines' offsets (a snapshot to adopt)
        self._to_adopt: dict[int, dict] = {}  # partition -> snapshot that rebuilds it (found by _resync)
        self._resync_every = resync_every
        self._timeout = 30.0
        self.ready = False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
        self._timeout = timeout
        n = await self._bus.ensure_topic(self._topic, self._want_partitions)
        self._engines = [AcdEngine() for _ in range(n)]
        self._applied = [-1] * n
        self._snapped = [-1] * n
        if self._snap_every > 0:
            await self._load_snapshots(n, timeout)
            self._tasks.append(asyncio.create_task(self._write_snapshots(), name=f"acd-snapshots-{self.node}"))
        self._tasks.append(asyncio.create_task(self._consume(), name=f"acd-consume-{self.node}"))
        try:
            marks = [await self._publish(NodeLeft(self.node), partition=p) for p in range(n)]
            # a partition that cannot be rebuilt does not stop the others: health() reports it
            await asyncio.wait_for(self._wait_applied(marks, skip_unhealthy=True), timeout)
        except BaseException:
            await self.close()
            raise
        self.ready = True
        self._tasks.append(asyncio.create_task(self._timer(), name=f"acd-timer-{self.node}"))
        if self._snap_every > 0 and self._resync_every > 0:
            self._tasks.append(asyncio.create_task(self._resync(), name=f"acd-resync-{self.node}"))
        log.info("acd ready on %s: %d partitions replayed to %s%s", self.node, n, self._applied,
                 f"; unhealthy: {sorted(self.unhealthy)}" if self.unhealthy else "")

    async def close(self) -> None:
        """Stop applying and ticking (the node's calls stay in the queues until NodeLeft)."""
        self.ready = False
        UNHEALTHY.dec(len(self.unhealthy))
        self.unhealthy.clear()
        for t in self._tasks:
            t.cancel()
        if self._tasks:
            _, stuck = await asyncio.wait(self._tasks, timeout=5)
            for t in stuck:
                log.error("acd: task %s did not stop", t.get_name())
        self._tasks.clear()

    # ---- call control --------------------------------------------------------------------------

    async def join(self, tenant: int, queue: str, call: str, priority: int = 0) -> QueuedCall:
        """Queue ``call``; read what happens to it from the returned QueuedCall."""
        self._check_ready()
        queue_name(queue)
        if not call or len(call) > 256:
            raise ValueError("call id must be 1-256 characters")
        key = (tenant, call)
        if key in self._calls:
            raise ValueError(f"call {call!r} is already queued on this node")
        qc = QueuedCall(tenant, queue, call)
        if self._tenant_part.get(tenant) in self.unhealthy:
            self._give_up(qc, "unavailable")  # not even in the log: nothing to take back
            return qc
        self._calls[key] = qc
        try:
            qc.partition, qc.offset = await self._publish(CallJoined(tenant, queue, call, self.node, priority))
        except BaseException:
            self._calls.pop(key, None)
            raise
        if qc.partition in self.unhealthy and not qc.done:
            self._give_up(qc, "unavailable")
            await self._publish(CallLeft(tenant, call))
        return qc

    async def answered(self, tenant: int, call: str, agent: str) -> None:
        await self._publish(OfferAnswered(tenant, call, agent))

    async def declined(self, tenant: int, call: str, agent: str) -> None:
        await self._publish(OfferDeclined(tenant, call, agent))

    async def left(self, tenant: int, call: str, *, legs: bool = False) -> None:
        """The caller hung up (waiting or talking). ``legs``: a leg to an agent may still be up;
        this node reports its end (``declined``) once it is down."""
        self._calls.pop((tenant, call), None)
        await self._publish(CallLeft(tenant, call, legs))

    async def ended(self, tenant: int, call: str) -> None:
        """The talk with the agent ended."""
        self._calls.pop((tenant, call), None)
        await self._publish(CallEnded(tenant, call))

    # ---- agents and queues ---------------------------------------------------------------------

    async def login(self, tenant: int, agent: str) -> None:
        await self._publish(AgentLoggedIn(tenant, agent))

    async def logout(self, tenant: int, agent: str) -> None:
        await self._publish(AgentLoggedOut(tenant, agent))

    async def pause(self, tenant: int, agent: str, reason: str = "") -> None:
        await self._publish(AgentPaused(tenant, agent, reason))

    async def unpause(self, tenant: int, agent: str) -> None:
        await self._publish(AgentUnpaused(tenant, agent))

    async def ready_agent(self, tenant: int, agent: str) -> None:
        """End wrap-up early."""
        await self._publish(AgentReady(tenant, agent))

    async def configure_queue(self, tenant: int, name: str, doc: dict) -> QueueConfig:
        """Validate the queue document (ConfigError) and share it; the same document again is a no-op."""
        cfg = QueueConfig.from_dict(doc)
        await self._publish(QueueConfigured(tenant, queue_name(name), cfg))
        return cfg

    async def remove_queue(self, tenant: int, name: str) -> None:
        await self._publish(QueueRemoved(tenant, name))

    async def node_left(self, node: str) -> None:
        """Membership says ``node`` is gone: its calls leave every queue (every partition)."""
        for p in range(len(self._engines)):
            await self._publish(NodeLeft(node), partition=p)

    def follow(self, membership) -> Callable[[], None]:
        """Publish NodeLeft when ``membership`` (node.ports.Membership) says a node left; returns
        the unsubscribe. Every node does it: the repeats are no-ops in the engine."""

        def on_event(event: str, node: str, info: dict | None) -> None:
            if event == "left" and node != self.node and self.ready:
                task = asyncio.get_running_loop().create_task(self._node_left_logged(node))
                self._tasks.append(task)
                task.add_done_callback(lambda t: t in self._tasks and self._tasks.remove(t))

        return membership.watch(on_event)

    async def _node_left_logged(self, node: str) -> None:
        try:
            await self.node_left(node)
            log.info("acd: node %s left: its calls left the queues", node)
        except Exception:
            log.exception("acd: could not publish that node %s left", node)

    # ---- reads ---------------------------------------------------------------------------------

    async def sync(self, timeout: float = 10.0) -> list[tuple[int, int]]:
        """Wait until this node has applied everything published before the call (read your
        writes); returns the marks, for ``caught_up`` on other nodes."""
        marks = [await self._publish(Tick(0), partition=p) for p in range(len(self._engines))]
        await self.caught_up(marks, timeout)
        return marks

    async def caught_up(self, marks: list[tuple[int, int]], timeout: float = 10.0) -> None:
        """Wait until (partition, offset) ``marks`` are applied here."""
        await asyncio.wait_for(self._wait_applied(marks), timeout)

    def _engine(self, tenant: int) -> AcdEngine | None:
        for e in self._engines:
            if tenant in e._tenants:
                return e
        return None

    def agent_status(self, tenant: int, agent: str) -> str:
        e = self._engine(tenant)
        return e.agent_status(tenant, agent) if e else "logged_out"

    def queue_calls(self, tenant: int, queue: str) -> list[str]:
        e = self._engine(tenant)
        return e.queue_calls(tenant, queue) if e else []

    def queue_report(self, tenant: int, queue: str) -> dict | None:
        e = self._engine(tenant)
        return e.queue_report(tenant, queue) if e else None

    def agent_report(self, tenant: int, agent: str) -> dict:
        e = self._engine(tenant) or AcdEngine()
        return e.agent_report(tenant, agent)

    def snapshot(self) -> tuple:
        """Every partition's state (equal on replicas that applied the same records)."""
        return tuple(e.snapshot() for e in self._engines)

    @property
    def applied(self) -> list[int]:
        return list(self._applied)

    def health(self) -> dict:
        """For /health: a partition listed under ``unhealthy`` takes no decisions on this node."""
        return {"ready": self.ready, "partitions": len(self._engines),
                "unhealthy": {str(p): why for p, why in sorted(self.unhealthy.items())}}

    # ---- internals -----------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready:
            raise RuntimeError("ACD service is not started (or still catching up)")

    async def _publish(self, event: Event, *, partition: int | None = None, ts: float | None = None) -> tuple[int, int]:
        tenant = getattr(event, "tenant", 0)
        async with self._publish_lock:
            self._seq += 1
            env = Envelope(self.origin, self._seq, ts if ts is not None else self._clock(), event)
            placed = await self._bus.publish(self._topic, tenant_key(tenant), encode(env), partition=partition)
        if partition is None and tenant:
            self._tenant_part[tenant] = placed[0]
        return placed

    async def _wait_applied(self, marks: list[tuple[int, int]], *, skip_unhealthy: bool = False) -> None:
        for p, off in marks:
            while self._applied[p] < off:
                if p in self.unhealthy:
                    if skip_unhealthy:
                        break
                    raise PartitionUnhealthy(f"ACD partition {p}: {self.unhealthy[p]}")
                waiter = self._progress
                await waiter.wait()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _consume(self) -> None:
        """Apply the log; if reading fails (broker gone), read on from where we were; after a
        gap, from the snapshot that covers it."""
        while True:
            self._restart.clear()
            while self._to_adopt:
                p, doc = self._to_adopt.popitem()
                if p in self.unhealthy:
                    self._adopt(p, doc)
            # an unhealthy partition is read from wherever the log starts, and skipped
            start = {p: off + 1 for p, off in enumerate(self._applied) if p not in self.unhealthy}
            it = self._bus.subscribe(self._topic, start)
            reading = asyncio.ensure_future(self._read(it))
            restart = asyncio.ensure_future(self._restart.wait())
            try:
                await asyncio.wait({reading, restart}, return_when=asyncio.FIRST_COMPLETED)
            finally:
                for f in (reading, restart):
                    f.cancel()
                await asyncio.gather(reading, restart, return_exceptions=True)
                with contextlib.suppress(Exception):
                    await it.aclose()  # type: ignore[attr-defined]
            if reading.cancelled():
                continue  # a snapshot was adopted: read on from it
            try:
                reading.result()
                return  # the bus was closed
            except LogGap as gap:
                await self._on_gap(gap)
            except Exception:
                RECORDS.labels("read_error").inc()
                log.exception("acd: reading %s failed; reading on in 1 s", self._topic)
                await asyncio.sleep(1.0)

    async def _read(self, it) -> None:
        async for rec in it:
            self._apply(rec)

    def _apply(self, rec: BusRecord) -> None:
        p = rec.partition
        if p >= len(self._engines):
            RECORDS.labels("bad").inc()
            return
        if p in self.unhealthy:
            RECORDS.labels("unhealthy").inc()
            return
        if rec.offset > self._applied[p] + 1:
            # the ACD log is neither compacted nor transactional: its offsets have no holes, so
            # records are missing (a bus that skipped ahead, a log cut under the reader)
            raise LogGap(rec.topic, p, self._applied[p] + 1, rec.offset)
        try:
            env = decode(rec.value)
        except ValueError as e:
            RECORDS.labels("bad").inc()
            log.warning("acd: skipping bad record %s/%d@%d: %s", rec.topic, rec.partition, rec.offset, e)
            self._applied[rec.partition] = max(self._applied[rec.partition], rec.offset)
            self._progressed()
            return
        try:
            decisions = self._engines[rec.partition].apply(rec.offset, env)
        except Exception:  # an engine bug must not stop the node's ACD: log it loudly
            RECORDS.labels("failed").inc()
            log.exception("acd: record %d@%d failed to apply", rec.partition, rec.offset)
            decisions = []
        else:
            RECORDS.labels("applied").inc()
        self._applied[rec.partition] = max(self._applied[rec.partition], rec.offset)
        self._maybe_snapshot(rec.partition)
        for d in decisions:
            if d.node == self.node:
                self._route(d)
        self._progressed()

    # ---- snapshots: start from a recent state instead of the log's beginning ---------------------

    async def _load_snapshots(self, n: int, timeout: float) -> None:
        for p, doc in (await self._read_snapshots(n, timeout)).items():
            try:
                engine = AcdEngine.from_state(doc["state"])
            except ValueError as e:
                log.warning("acd: snapshot of partition %d unusable (%s): replaying its log", p, e)
                continue
            self._engines[p] = engine
            self._applied[p] = self._snapped[p] = self.restored[p] = engine.offset

    async def _read_snapshots(self, n: int, timeout: float) -> dict[int, dict]:
        """Latest snapshot per partition from the snapshot topic (compacted on a real cluster,
        key = partition), read up to a marker we publish ourselves."""
        await self._bus.ensure_topic(self._snap_topic, 1)
        _, mark = await self._bus.publish(self._snap_topic, "marker", b"{}", partition=0)
        best: dict[int, dict] = {}
        it = self._bus.subscribe(self._snap_topic)

        async def read() -> None:
            async for rec in it:
                if rec.key.startswith("partition:"):
                    try:
                        doc = json.loads(rec.value)
                        p, off = int(doc["partition"]), int(doc["offset"])
                    except (ValueError, KeyError, TypeError):
                        log.warning("acd: unreadable snapshot record at %d", rec.offset)
                    else:
                        if 0 <= p < n and off > best.get(p, {}).get("offset", -1):
                            best[p] = doc
                if rec.offset >= mark:
                    return

        try:
            await asyncio.wait_for(read(), timeout)
        finally:
            await it.aclose()  # type: ignore[attr-defined]
        return best

    def _maybe_snapshot(self, p: int) -> None:
        if self._snap_every > 0 and self._applied[p] - self._snapped[p] >= self._snap_every:
            self._snapped[p] = self._applied[p]
            doc = {"partition": p, "offset": self._applied[p], "node": self.node,
                   "state": self._engines[p].export_state()}
            self._snap_queue.put_nowait((p, json.dumps(doc, separators=(",", ":")).encode()))

    async def _write_snapshots(self) -> None:
        while True:
            p, raw = await self._snap_queue.get()
            try:
                await self._bus.publish(self._snap_topic, f"partition:{p}", raw, partition=0)
                SNAPSHOTS.inc()
            except Exception:
                log.exception("acd: writing the snapshot of partition %d failed", p)

    def _route(self, d: Decision) -> None:
        qc = self._calls.get((d.tenant, d.call))
        if qc is None:
            return
        DECISIONS.labels(type(d).__name__).inc()
        if isinstance(d, Offer):
            qc.offers.add(d.agent)
        elif isinstance(d, CancelOffer):
            qc.offers.discard(d.agent)
        if isinstance(d, (Connected, Overflow)):
            qc.done = True
        if isinstance(d, Overflow):
            del self._calls[(d.tenant, d.call)]
        qc._put(d)

    async def _timer(self) -> None:
        while True:
            waiter = self._progress
            now = self._clock()
            soonest: float | None = None
            for p, e in enumerate(self._engines):
                nd = e.next_deadline() if p not in self.unhealthy else None  # no decisions from a diverged state
                if nd is None:
                    continue
                when, owner, tenant = nd
                due = when if owner in (self.node, None) else when + self._grace
                if due > now:
                    soonest = due if soonest is None else min(soonest, due)
                    continue
                last = self._ticked.get(p)
                if last is not None and last[0] == when and now - last[1] < 1.0:
                    continue  # ticked already; give the log a moment
                self._ticked[p] = (when, now)
                TICKS.inc()
                try:
                    await self._publish(Tick(tenant), ts=max(now, when))
                except Exception:
                    log.exception("acd: tick for partition %d failed", p)
            delay = 1.0 if soonest is None else min(1.0, max(0.01, soonest - self._clock()))
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancel (close() would hang)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await waiter.wait()


    # ---- gaps: records this node missed ---------------------------------------------------------

    async def _on_gap(self, gap: LogGap) -> None:
        """Records of a partition are gone before this node applied them: restart the partition
        from a snapshot that covers them, or mark it unhealthy."""
        p = gap.partition
        if not 0 <= p < len(self._engines):
            return
        self._log_start[p] = max(self._log_start.get(p, 0), gap.first)
        if p in self.unhealthy:
            return  # read on from wherever the log starts now
        fields = {"acd_partition": p, "needed_offset": gap.needed, "log_start": gap.first}
        log.error("acd: partition %d: records %d..%d are gone from the log before this node applied them",
                  p, gap.needed, gap.first - 1, extra=fields)
        doc, why = await self._covering_snapshot(p)
        if doc is not None:
            GAPS.labels("resynced").inc()
            self._adopt(p, doc)
            log.warning("acd: partition %d restarted from the snapshot at offset %d", p, self._applied[p],
                        extra=fields | {"snapshot_offset": self._applied[p]})
            return
        GAPS.labels("unhealthy").inc()
        await self._mark_unhealthy(p, f"records {gap.needed}..{gap.first - 1} are gone and {why}", fields)

    async def _covering_snapshot(self, p: int) -> tuple[dict | None, str]:
        """The newest snapshot of ``p`` whose next record is still in the log, else why not."""
        if self._snap_every <= 0:
            return None, "snapshots are off"
        try:
            doc = (await self._read_snapshots(len(self._engines), self._timeout)).get(p)
        except Exception as e:
            log.exception("acd: reading the snapshots of partition %d failed", p)
            return None, f"the snapshots could not be read ({type(e).__name__})"
        if doc is None:
            return None, "there is no snapshot"
        off = int(doc["offset"])
        if off + 1 < self._log_start.get(p, 0) or off <= self._applied[p]:
            return None, f"the newest snapshot (offset {off}) is older"
        try:
            AcdEngine.from_state(doc["state"])
        except ValueError as e:
            return None, f"the newest snapshot is unusable ({e})"
        return doc, ""

    def _adopt(self, p: int, doc: dict) -> None:
        """Continue partition ``p`` from a snapshot past what this node applied, then bring this
        node's calls in line with it (their decisions in the records it skips never came)."""
        self._engines[p] = AcdEngine.from_state(doc["state"])
        self._applied[p] = self._snapped[p] = self._engines[p].offset
        self._ticked.pop(p, None)
        if self.unhealthy.pop(p, None) is not None:
            UNHEALTHY.dec()
            log.warning("acd: partition %d is healthy again", p, extra={"acd_partition": p})
        at, calls = self._applied[p], {}
        for tid, t in doc["state"]["tenants"].items():
            for c in t["calls"]:
                calls[(int(tid), c["call"])] = c
        for key, qc in list(self._calls.items()):
            if qc.partition != p or qc.done:
                continue
            c = calls.get(key)
            if c is None and qc.offset > at:
                continue  # joined after the snapshot: the records read next tell its fate
            if c is None or c["node"] != self.node:
                self._give_up(qc, "resync")  # it left the queue meanwhile: we cannot tell how
                continue
            if c["state"] == "connected" and c["agent"]:
                self._route(Connected(qc.tenant, c["queue"], qc.call, c["agent"], self.node))
                continue
            ringing = set(c["ringing"])
            for agent in sorted(qc.offers - ringing):
                self._route(CancelOffer(qc.tenant, c["queue"], qc.call, agent, self.node, "resync"))
            for agent in sorted(ringing - qc.offers):
                self._route(Offer(qc.tenant, c["queue"], qc.call, agent, self.node))
        self._progressed()

    async def _mark_unhealthy(self, p: int, why: str, fields: dict) -> None:
        self.unhealthy[p] = why
        UNHEALTHY.inc()
        log.error("acd: partition %d is unhealthy: %s; it takes no decisions on this node until a snapshot "
                  "covers the gap", p, why, extra=fields | {"acd_unhealthy": True})
        gone = [qc for qc in self._calls.values() if qc.partition == p and not qc.done]
        for qc in gone:
            self._give_up(qc, "unavailable")
        self._progressed()  # waiters on this partition get PartitionUnhealthy
        for qc in gone:  # healthy replicas drop them (their offers end at once: caller_left)
            try:
                await self._publish(CallLeft(qc.tenant, qc.call))
            except Exception:
                log.exception("acd: could not withdraw call %s from the log", qc.call)

    def _give_up(self, qc: QueuedCall, reason: str) -> None:
        """End a caller's wait here: call control sees an Overflow nowhere (it hangs up)."""
        self._calls.pop((qc.tenant, qc.call), None)
        qc.done = True
        DECISIONS.labels("Overflow").inc()
        qc._put(Overflow(qc.tenant, qc.queue, qc.call, self.node, None, reason))

    async def _resync(self) -> None:
        """Look for a snapshot that rebuilds an unhealthy partition (healthy nodes keep writing them)."""
        while True:
            await asyncio.sleep(self._resync_every)
            if not self.unhealthy:
                continue
            for p in sorted(self.unhealthy):
                try:
                    doc, _ = await self._covering_snapshot(p)
                except Exception:
                    log.exception("acd: looking for a snapshot of partition %d failed", p)
                    continue
                if doc is not None:
                    GAPS.labels("resynced").inc()
                    self._to_adopt[p] = doc
                    self._restart.set()  # the reader adopts it between two subscriptions
