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
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import Callable

from prometheus_client import Counter

from node.acd.config import QueueConfig, queue_name
from node.acd.engine import AcdEngine
from node.acd.events import (
    AgentLoggedIn, AgentLoggedOut, AgentPaused, AgentReady, AgentUnpaused, CallEnded, CallJoined, CallLeft,
    Connected, Decision, Envelope, Event, NodeLeft, OfferAnswered, OfferDeclined, Overflow, QueueConfigured,
    QueueRemoved, Tick, decode, encode,
)
from node.ports import BusRecord, EventBus

__all__ = ["AcdService", "QueuedCall", "TOPIC", "DEFAULT_PARTITIONS"]

log = logging.getLogger(__name__)

TOPIC = "hivepbx.acd"
DEFAULT_PARTITIONS = 16

RECORDS = Counter("hivepbx_acd_records", "ACD log records applied by this node", ["result"])
DECISIONS = Counter("hivepbx_acd_decisions", "ACD decisions about this node's calls", ["kind"])
TICKS = Counter("hivepbx_acd_ticks", "Ticks this node published for due ACD deadlines")
SNAPSHOTS = Counter("hivepbx_acd_snapshots", "ACD state snapshots this node wrote")

#: records of a partition between two snapshots (0: none; the log is replayed from its start)
SNAPSHOT_EVERY = 5000


def tenant_key(tenant: int) -> str:
    """All of a tenant's ACD events share a key, so one partition orders them totally (its
    queues share agents)."""
    return f"tenant:{tenant}"


class QueuedCall:
    """A caller in a queue, seen from the node that runs the call: decisions arrive in log order."""

    __slots__ = ("tenant", "queue", "call", "_decisions", "done")

    def __init__(self, tenant: int, queue: str, call: str) -> None:
        self.tenant, self.queue, self.call = tenant, queue, call
        self._decisions: asyncio.Queue[Decision] = asyncio.Queue()
        self.done = False  # connected or overflowed: no further offers

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
                 snapshot_every: int = SNAPSHOT_EVERY) -> None:
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
        self.ready = False

    # ---- lifecycle -----------------------------------------------------------------------------

    async def start(self, timeout: float = 30.0) -> None:
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
            await asyncio.wait_for(self._wait_applied(marks), timeout)
        except BaseException:
            await self.close()
            raise
        self.ready = True
        self._tasks.append(asyncio.create_task(self._timer(), name=f"acd-timer-{self.node}"))
        log.info("acd ready on %s: %d partitions replayed to %s", self.node, n, self._applied)

    async def close(self) -> None:
        """Stop applying and ticking (the node's calls stay in the queues until NodeLeft)."""
        self.ready = False
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
        qc = self._calls[key] = QueuedCall(tenant, queue, call)
        try:
            await self._publish(CallJoined(tenant, queue, call, self.node, priority))
        except BaseException:
            del self._calls[key]
            raise
        return qc

    async def answered(self, tenant: int, call: str, agent: str) -> None:
        await self._publish(OfferAnswered(tenant, call, agent))

    async def declined(self, tenant: int, call: str, agent: str) -> None:
        await self._publish(OfferDeclined(tenant, call, agent))

    async def left(self, tenant: int, call: str) -> None:
        """The caller hung up (waiting or talking)."""
        self._calls.pop((tenant, call), None)
        await self._publish(CallLeft(tenant, call))

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

    # ---- internals -----------------------------------------------------------------------------

    def _check_ready(self) -> None:
        if not self.ready:
            raise RuntimeError("ACD service is not started (or still catching up)")

    async def _publish(self, event: Event, *, partition: int | None = None, ts: float | None = None) -> tuple[int, int]:
        tenant = getattr(event, "tenant", 0)
        async with self._publish_lock:
            self._seq += 1
            env = Envelope(self.origin, self._seq, ts if ts is not None else self._clock(), event)
            return await self._bus.publish(self._topic, tenant_key(tenant), encode(env), partition=partition)

    async def _wait_applied(self, marks: list[tuple[int, int]]) -> None:
        for p, off in marks:
            while self._applied[p] < off:
                waiter = self._progress
                await waiter.wait()

    def _progressed(self) -> None:
        self._progress.set()
        self._progress = asyncio.Event()

    async def _consume(self) -> None:
        """Apply the log; if reading fails (broker gone), read on from where we were."""
        while True:
            start = {p: off + 1 for p, off in enumerate(self._applied)}
            try:
                async for rec in self._bus.subscribe(self._topic, start):
                    self._apply(rec)
                return  # the bus was closed
            except asyncio.CancelledError:
                raise
            except Exception:
                RECORDS.labels("read_error").inc()
                log.exception("acd: reading %s failed; reading on in 1 s", self._topic)
                await asyncio.sleep(1.0)

    def _apply(self, rec: BusRecord) -> None:
        if rec.partition >= len(self._engines):
            RECORDS.labels("bad").inc()
            return
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
        for p, doc in best.items():
            try:
                engine = AcdEngine.from_state(doc["state"])
            except ValueError as e:
                log.warning("acd: snapshot of partition %d unusable (%s): replaying its log", p, e)
                continue
            self._engines[p] = engine
            self._applied[p] = self._snapped[p] = self.restored[p] = engine.offset

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
                nd = e.next_deadline()
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

