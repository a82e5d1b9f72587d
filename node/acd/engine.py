"""The ACD state machine: an ordered log of events in, decisions out. Pure (no I/O, no clock).

Every node applies the same log and so makes the same decisions; only the node that runs a
call acts on that call's decisions. That is what keeps two nodes from offering one agent two
calls: an offer is not a node's choice but a consequence of the log. Hence the rules:

- time is the log's (the largest envelope ``ts`` seen), deadlines fire when the log reaches
  them (a node publishes a Tick when one of its deadlines is due);
- every choice is a function of the state only: ties break on names, ``random`` is seeded by
  the offset of the event that triggered it;
- dispatch is work-conserving: after every event no available agent is left idle while a call
  it could take waits, and calls are served best first (queue priority, call priority, arrival);
- an offer is a claim on the agent that only the node ringing the agent can end: when the log
  withdraws an offer (ring timeout, pause, logout, overflow, another agent answered) the agent
  stays *releasing* until that node reports what its phone leg did (OfferDeclined: gone;
  OfferAnswered: the phone took the call), the call ends, or the node leaves. The caller
  hanging up is such a withdrawal too (CallLeft with ``legs``): the node's CANCEL may wait for
  the phone's first provisional response, so the agent is held until OfferDeclined. Freeing the agent
  at the withdrawal itself would let another node ring it while the first node's CANCEL is
  still on its way, or after the phone answered it (two calls at once). A report that never
  comes is covered by ``ring_timeout`` (the node reports at once when it is alive).

One engine holds the state of one log partition (all tenants whose key maps to it); a tenant's
agents may serve several queues, so the tenant is the unit of ordering.
"""

from __future__ import annotations

import heapq
import random
from dataclasses import asdict, dataclass, field

from node.acd.config import QueueConfig
from node.acd.events import (
    AgentLoggedIn, AgentLoggedOut, AgentPaused, AgentReady, AgentUnpaused, CallEnded, CallJoined, CallLeft,
    CancelOffer, Connected, Decision, Envelope, Marker, NodeLeft, Offer, OfferAnswered, OfferDeclined, Overflow,
    Position, QueueConfigured, QueueRemoved, Tick,
)

__all__ = ["AcdEngine", "QueueStats", "AgentStats"]

# agent activity (orthogonal to logged in / paused)
IDLE, RINGING, ON_CALL, WRAP_UP, RELEASING = "idle", "ringing", "on_call", "wrap_up", "releasing"
# call states
WAITING, CONNECTED = "waiting", "connected"
# deadline kinds, in the order they fire when due at the same instant
_MAX_WAIT, _RING, _REST, _RELEASE = 0, 1, 2, 3
#: offers withdrawn for a reason the node running them reported itself (it stopped or lost its
#: phone legs before the record): the agent is free at once (caller_left only from a CallLeft
#: without ``legs``, which older nodes published)
_NODE_KNOWS = ("caller_left", "node_left")


@dataclass(slots=True)
class QueueStats:
    offered: int = 0
    answered: int = 0
    abandoned: int = 0
    overflowed: int = 0
    lost: int = 0  # the node running the call left
    answered_in_sl: int = 0
    wait_answered: float = 0.0
    longest_wait: float = 0.0
    talk_time: float = 0.0


@dataclass(slots=True)
class AgentStats:
    offered: int = 0
    answered: int = 0
    missed: int = 0
    talk_time: float = 0.0


@dataclass(slots=True)
class _Call:
    queue: str
    call: str
    node: str
    priority: int
    seq: int  # arrival order in the partition
    joined: float
    state: str = WAITING
    ringing: dict[str, float] = field(default_factory=dict)  # agent -> ring deadline
    agent: str | None = None
    answered: float = 0.0
    position: int = 0  # last announced


@dataclass(slots=True)
class _Agent:
    name: str
    logged_in: bool = False
    paused: bool = False
    activity: str = IDLE
    call: str | None = None
    idle_since: float = 0.0
    rest_until: float = 0.0
    owner: str | None = None  # node whose call the wrap-up follows / whose leg is releasing (who ticks it)
    release_by: float | None = None  # releasing: when to give up waiting for the report (None: never)
    resume_at: float = 0.0  # releasing: rest until then once released (a missed offer's retry_delay)
    stats: AgentStats = field(default_factory=AgentStats)

    @property
    def available(self) -> bool:
        return self.logged_in and not self.paused and self.activity == IDLE

    @property
    def status(self) -> str:
        if self.activity in (RINGING, ON_CALL):
            return self.activity
        if not self.logged_in:
            return "logged_out"
        if self.paused:
            return "paused"
        if self.activity == RELEASING:
            return RELEASING
        return "available" if self.activity == IDLE else WRAP_UP


@dataclass(slots=True)
class _Queue:
    name: str
    cfg: QueueConfig
    waiting: list[str] = field(default_factory=list)  # call ids, best first
    rr_last: str | None = None
    dirty: int | None = None  # first place whose caller may have moved since the last announce
    answered_by: dict[str, int] = field(default_factory=dict)
    stats: QueueStats = field(default_factory=QueueStats)


@dataclass(slots=True)
class _Tenant:
    queues: dict[str, _Queue] = field(default_factory=dict)
    calls: dict[str, _Call] = field(default_factory=dict)
    agents: dict[str, _Agent] = field(default_factory=dict)


class AcdEngine:
    def __init__(self) -> None:
        self._tenants: dict[int, _Tenant] = {}
        self._now = 0.0
        self._offset = -1
        self._arrivals = 0
        self._seen: dict[str, int] = {}  # origin -> last seq applied
        self._deadlines: list[tuple[float, int, int, str, str]] = []  # (when, kind, tenant, a, b)
        self._out: list[Decision] = []
        self._touched: set[int] = set()
        self.ignored = 0  # events that did not apply (duplicates, unknown call/agent)

    # ---- public --------------------------------------------------------------------------------

    @property
    def now(self) -> float:
        return self._now

    @property
    def offset(self) -> int:
        """Offset of the last record applied (-1: none)."""
        return self._offset

    def apply(self, offset: int, env: Envelope) -> list[Decision]:
        """Apply the record at ``offset``; returns the decisions it causes, in order."""
        if offset <= self._offset:
            self.ignored += 1
            return []
        self._offset = offset
        last = self._seen.get(env.origin)
        if last is not None and env.seq <= last:
            self.ignored += 1
            return []
        self._seen[env.origin] = env.seq
        self._out = []
        self._touched = set()
        if env.ts > self._now:
            self._now = env.ts
            self._expire()
        self._event(env.event)
        for tenant in sorted(self._touched):
            self._dispatch(tenant)
        for tenant in sorted(self._touched):
            self._announce(tenant)
        out, self._out = self._out, []
        return out

    def next_deadline(self) -> tuple[float, str | None, int] | None:
        """(when, node that should tick it or None for anyone, tenant) of the earliest pending deadline."""
        heap = self._deadlines
        while heap:
            when, kind, tenant, a, b = heap[0]
            owner = self._deadline_owner(when, kind, tenant, a, b)
            if owner is not False:
                return when, owner, tenant  # type: ignore[return-value]
            heapq.heappop(heap)
        return None

    def agent_status(self, tenant: int, agent: str) -> str:
        a = self._tenants.get(tenant, _Tenant()).agents.get(agent)
        return a.status if a else "logged_out"

    def queue_calls(self, tenant: int, queue: str) -> list[str]:
        """Calls waiting in ``queue``, next first."""
        t = self._tenants.get(tenant)
        q = t.queues.get(queue) if t else None
        return list(q.waiting) if q else []

    def queues(self, tenant: int) -> list[str]:
        t = self._tenants.get(tenant)
        return sorted(t.queues) if t else []

    def queue_report(self, tenant: int, queue: str) -> dict | None:
        t = self._tenants.get(tenant)
        q = t.queues.get(queue) if t else None
        if q is None:
            return None
        s = q.stats
        closed = s.answered + s.abandoned
        waits = [self._now - t.calls[c].joined for c in q.waiting]
        return {
            "queue": queue, "strategy": q.cfg.strategy, "priority": q.cfg.priority,
            "waiting": len(q.waiting), "offered": s.offered, "answered": s.answered,
            "abandoned": s.abandoned, "overflowed": s.overflowed, "lost": s.lost,
            "avg_wait": s.wait_answered / s.answered if s.answered else None,
            "longest_wait": max([s.longest_wait, *waits]),
            "service_level": 100.0 * s.answered_in_sl / closed if closed else None,
            "service_level_seconds": q.cfg.service_level,
            "talk_time": s.talk_time,
            "avg_talk": s.talk_time / s.answered if s.answered else None,
            "agents": {m: self.agent_status(tenant, m) for m in q.cfg.members},
        }

    def agent_report(self, tenant: int, agent: str) -> dict:
        a = self._tenants.get(tenant, _Tenant()).agents.get(agent) or _Agent(agent)
        st = a.stats
        return {"agent": agent, "status": a.status, "call": a.call, "offered": st.offered,
                "answered": st.answered, "missed": st.missed, "talk_time": st.talk_time}

    def snapshot(self) -> tuple:
        """The whole decision-relevant state, canonically ordered (replicas compare equal)."""
        out = []
        for tid in sorted(self._tenants):
            t = self._tenants[tid]
            out.append((tid,
                        tuple((n, q.cfg, tuple(q.waiting), q.rr_last, tuple(sorted(q.answered_by.items())),
                               q.stats) for n, q in sorted(t.queues.items())),
                        tuple((c.call, c.queue, c.node, c.priority, c.seq, c.joined, c.state,
                               tuple(sorted(c.ringing.items())), c.agent, c.answered)
                              for _, c in sorted(t.calls.items())),
                        tuple((a.name, a.logged_in, a.paused, a.activity, a.call, a.idle_since, a.rest_until,
                               a.owner, a.release_by, a.resume_at, a.stats) for _, a in sorted(t.agents.items()))))
        return (self._now, self._offset, tuple(out))

    # ---- snapshots -----------------------------------------------------------------------------

    def export_state(self) -> dict:
        """The whole state as JSON-able data: a node starts from it and replays only the records
        after ``offset`` (the log need not be kept from the beginning)."""
        tenants = {}
        for tid, t in self._tenants.items():
            tenants[str(tid)] = {
                "queues": [{"name": q.name, "cfg": q.cfg.to_dict(), "waiting": q.waiting, "rr_last": q.rr_last,
                            "answered_by": q.answered_by, "stats": asdict(q.stats)} for q in t.queues.values()],
                "calls": [{"queue": c.queue, "call": c.call, "node": c.node, "priority": c.priority, "seq": c.seq,
                           "joined": c.joined, "state": c.state, "ringing": c.ringing, "agent": c.agent,
                           "answered": c.answered, "position": c.position} for c in t.calls.values()],
                "agents": [{"name": a.name, "logged_in": a.logged_in, "paused": a.paused, "activity": a.activity,
                            "call": a.call, "idle_since": a.idle_since, "rest_until": a.rest_until, "owner": a.owner,
                            "release_by": a.release_by, "resume_at": a.resume_at,
                            "stats": asdict(a.stats)} for a in t.agents.values()],
            }
        return {"version": 1, "now": self._now, "offset": self._offset, "arrivals": self._arrivals,
                "seen": self._seen, "ignored": self.ignored, "tenants": tenants}

    @classmethod
    def from_state(cls, doc: dict) -> "AcdEngine":
        """The engine ``export_state`` described; raises ValueError on a document it cannot use."""
        try:
            if doc.get("version") != 1:
                raise ValueError(f"unknown ACD snapshot version {doc.get('version')!r}")
            e = cls()
            e._now, e._offset, e._arrivals = float(doc["now"]), int(doc["offset"]), int(doc["arrivals"])
            e._seen = {str(k): int(v) for k, v in doc["seen"].items()}
            e.ignored = int(doc["ignored"])
            for tid, td in doc["tenants"].items():
                tenant = int(tid)
                t = e._tenants[tenant] = _Tenant()
                for qd in td["queues"]:
                    t.queues[qd["name"]] = _Queue(
                        qd["name"], QueueConfig.from_dict(qd["cfg"]), waiting=list(qd["waiting"]), rr_last=qd["rr_last"],
                        answered_by=dict(qd["answered_by"]), stats=QueueStats(**qd["stats"]))
                for cd in td["calls"]:
                    c = t.calls[cd["call"]] = _Call(**{**cd, "ringing": dict(cd["ringing"])})
                    q = t.queues.get(c.queue)
                    if c.state == WAITING and q is not None and q.cfg.max_wait is not None:
                        e._push(c.joined + q.cfg.max_wait, _MAX_WAIT, tenant, c.call, "")
                    for agent, when in c.ringing.items():
                        e._push(when, _RING, tenant, c.call, agent)
                for ad in td["agents"]:
                    a = t.agents[ad["name"]] = _Agent(**{**ad, "stats": AgentStats(**ad["stats"])})
                    if a.activity == WRAP_UP:
                        e._push(a.rest_until, _REST, tenant, a.name, "")
                    elif a.activity == RELEASING and a.release_by is not None:
                        e._push(a.release_by, _RELEASE, tenant, a.name, "")
            return e
        except (KeyError, TypeError, AttributeError) as err:
            raise ValueError(f"bad ACD snapshot: {err!r}") from None

    # ---- events --------------------------------------------------------------------------------

    def _event(self, ev: object) -> None:
        if isinstance(ev, (Tick, Marker)):
            return
        if isinstance(ev, NodeLeft):
            self._node_left(ev.node)
            return
        tenant: int = ev.tenant  # type: ignore[attr-defined]
        t = self._tenants.setdefault(tenant, _Tenant())
        self._touched.add(tenant)
        if isinstance(ev, CallJoined):
            self._join(tenant, t, ev)
        elif isinstance(ev, OfferAnswered):
            self._answered(tenant, t, ev.call, ev.agent)
        elif isinstance(ev, OfferDeclined):
            if self._releasing(t, ev.agent, ev.call):
                self._release(tenant, t.agents[ev.agent])  # the node's leg for a withdrawn offer is gone
                return
            c = t.calls.get(ev.call)
            if c is None or ev.agent not in c.ringing:
                self.ignored += 1
                return
            self._end_offer(tenant, t, c, ev.agent, None, rest=True)
        elif isinstance(ev, CallLeft):
            c = t.calls.get(ev.call)
            if ev.legs and (c is None or c.state == WAITING):
                released = self._hold_call(tenant, t, ev.call)  # its legs end by report (or deadline)
            else:
                released = self._release_call(tenant, t, ev.call)
            if c is None:
                self.ignored += not released
            elif c.state == CONNECTED:
                self._call_ended(tenant, t, c)
            else:
                q = t.queues.get(c.queue)
                if q:
                    q.stats.abandoned += 1
                self._leave(tenant, t, c, "caller_left", hold=ev.legs)
        elif isinstance(ev, CallEnded):
            released = self._release_call(tenant, t, ev.call)
            c = t.calls.get(ev.call)
            if c is None or c.state != CONNECTED:
                self.ignored += not released
                return
            self._call_ended(tenant, t, c)
        elif isinstance(ev, QueueConfigured):
            self._configure(tenant, t, ev.queue, ev.config)
        elif isinstance(ev, QueueRemoved):
            q = t.queues.get(ev.queue)
            if q is None:
                self.ignored += 1
                return
            for cid in list(q.waiting):
                self._overflow(tenant, t, t.calls[cid], "queue_removed")
            del t.queues[ev.queue]
        elif isinstance(ev, AgentLoggedIn):
            a = self._agent(t, ev.agent)
            if not a.logged_in:
                a.logged_in = True
                a.idle_since = self._now
        elif isinstance(ev, AgentLoggedOut):
            a = self._agent(t, ev.agent)
            a.logged_in = False
            self._drop_ring(tenant, t, a, "agent_logged_out")
        elif isinstance(ev, AgentPaused):
            a = self._agent(t, ev.agent)
            a.paused = True
            self._drop_ring(tenant, t, a, "agent_paused")
        elif isinstance(ev, AgentUnpaused):
            self._agent(t, ev.agent).paused = False
        elif isinstance(ev, AgentReady):
            a = self._agent(t, ev.agent)
            if a.activity == WRAP_UP:
                self._rested(a, self._now)
        else:  # pragma: no cover - every Event type is handled above
            raise TypeError(f"not an ACD event: {ev!r}")

    def _agent(self, t: _Tenant, name: str) -> _Agent:
        a = t.agents.get(name)
        if a is None:
            a = t.agents[name] = _Agent(name, idle_since=self._now)
        return a

    def _configure(self, tenant: int, t: _Tenant, name: str, cfg: QueueConfig) -> None:
        q = t.queues.get(name)
        if q is None:
            q = t.queues[name] = _Queue(name, cfg)
        elif q.cfg == cfg:
            return
        q.cfg = cfg
        for m in cfg.members:
            if m not in t.agents and cfg.static_members:
                self._agent(t, m).logged_in = True  # first seen here: starts logged in
            self._agent(t, m)
        if cfg.max_wait is not None:
            for cid in q.waiting:
                c = t.calls[cid]
                self._push(c.joined + cfg.max_wait, _MAX_WAIT, tenant, cid, "")

    def _join(self, tenant: int, t: _Tenant, ev: CallJoined) -> None:
        if ev.call in t.calls:
            self.ignored += 1
            return
        self._arrivals += 1
        c = _Call(ev.queue, ev.call, ev.node, ev.priority, self._arrivals, self._now)
        q = t.queues.get(ev.queue)
        if q is None:
            self._out.append(Overflow(tenant, ev.queue, ev.call, ev.node, None, "unknown_queue"))
            return
        q.stats.offered += 1
        cfg = q.cfg
        if cfg.max_len is not None and len(q.waiting) >= cfg.max_len:
            q.stats.overflowed += 1
            self._out.append(Overflow(tenant, ev.queue, ev.call, ev.node, cfg.overflow, "full"))
            return
        if not cfg.join_empty and not any(t.agents[m].logged_in for m in cfg.members):
            q.stats.overflowed += 1
            self._out.append(Overflow(tenant, ev.queue, ev.call, ev.node, cfg.overflow, "no_agents"))
            return
        t.calls[ev.call] = c
        key = (-c.priority, c.seq)
        i = len(q.waiting)
        while i > 0:  # usually appends; a high-priority caller moves ahead of lower ones
            prev = t.calls[q.waiting[i - 1]]
            if (-prev.priority, prev.seq) <= key:
                break
            i -= 1
        q.waiting.insert(i, ev.call)
        self._moved(q, i)
        if cfg.max_wait is not None:
            self._push(c.joined + cfg.max_wait, _MAX_WAIT, tenant, ev.call, "")

    def _answered(self, tenant: int, t: _Tenant, cid: str, agent: str) -> None:
        c = t.calls.get(cid)
        late = self._releasing(t, agent, cid)
        if late and c is not None and c.state == WAITING:
            # the phone answered as the offer was withdrawn (ring timeout, pause, logout): the
            # node has put it through, so the agent is on this call; other rings stop
            a = t.agents[agent]
            a.activity, a.release_by, a.resume_at = RINGING, None, 0.0
            c.ringing[agent] = self._now
        elif late:
            # the call is gone or taken: the node hangs up this leg and reports it (or the call
            # ends); the phone is busy until then, however long that takes
            t.agents[agent].release_by = None
            self.ignored += 1
            if c is not None:
                self._out.append(CancelOffer(tenant, c.queue, cid, agent, c.node, "answered_elsewhere"))
            return
        if c is None or agent not in c.ringing:
            self.ignored += 1
            if c is not None and c.agent != agent:
                # the answer lost a race (another agent's answer, a ring timeout, a logout):
                # the node hangs this leg up
                why = "answered_elsewhere" if c.state == CONNECTED else "stale"
                self._out.append(CancelOffer(tenant, c.queue, cid, agent, c.node, why))
            return
        del c.ringing[agent]
        for other in sorted(c.ringing):
            self._end_offer(tenant, t, c, other, "answered_elsewhere", rest=False)
        c.state, c.agent, c.answered = CONNECTED, agent, self._now
        a = t.agents[agent]
        a.activity, a.call = ON_CALL, cid
        a.stats.answered += 1
        q = t.queues.get(c.queue)
        if q is not None:
            self._remove(q, cid)
            wait = self._now - c.joined
            s = q.stats
            s.answered += 1
            s.wait_answered += wait
            s.longest_wait = max(s.longest_wait, wait)
            if wait <= q.cfg.service_level:
                s.answered_in_sl += 1
            q.answered_by[agent] = q.answered_by.get(agent, 0) + 1
        self._out.append(Connected(tenant, c.queue, cid, agent, c.node))

    def _call_ended(self, tenant: int, t: _Tenant, c: _Call) -> None:
        talk = self._now - c.answered
        q = t.queues.get(c.queue)
        if q is not None:
            q.stats.talk_time += talk
        del t.calls[c.call]
        a = t.agents[c.agent]  # type: ignore[index]
        a.stats.talk_time += talk
        a.call = None
        wrapup = q.cfg.wrapup if q is not None else 0.0
        self._rest(tenant, a, wrapup, c.node)

    def _node_left(self, node: str) -> None:
        for tenant in sorted(self._tenants):
            t = self._tenants[tenant]
            gone = sorted(cid for cid, c in t.calls.items() if c.node == node)
            for cid in gone:
                self._touched.add(tenant)
                c = t.calls[cid]
                if c.state == CONNECTED:
                    self._call_ended(tenant, t, c)
                    t.agents[c.agent].owner = None  # type: ignore[index]
                else:
                    q = t.queues.get(c.queue)
                    if q:
                        q.stats.lost += 1
                    self._leave(tenant, t, c, "node_left")
            for a in t.agents.values():  # wrap-ups it would have ticked: anyone ticks them now
                if a.owner == node:
                    if a.activity == RELEASING:  # its phone legs died with it
                        self._touched.add(tenant)
                        self._release(tenant, a)
                    a.owner = None

    # ---- transitions ---------------------------------------------------------------------------

    def _leave(self, tenant: int, t: _Tenant, c: _Call, reason: str, *, hold: bool = False) -> None:
        """The call leaves its queue unanswered: offers cancelled; agents free at once unless
        ``reason`` is news to the node or ``hold`` (its legs end by report)."""
        for agent in sorted(c.ringing):
            self._end_offer(tenant, t, c, agent, reason, rest=False, hold=hold)
        q = t.queues.get(c.queue)
        if q is not None:
            self._remove(q, c.call)
            q.stats.longest_wait = max(q.stats.longest_wait, self._now - c.joined)
        del t.calls[c.call]

    @staticmethod
    def _moved(q: _Queue, index: int) -> None:
        q.dirty = index if q.dirty is None else min(q.dirty, index)

    def _remove(self, q: _Queue, cid: str) -> None:
        i = q.waiting.index(cid)
        del q.waiting[i]
        self._moved(q, i)

    def _overflow(self, tenant: int, t: _Tenant, c: _Call, reason: str) -> None:
        q = t.queues[c.queue]
        q.stats.overflowed += 1
        self._leave(tenant, t, c, "overflow")
        self._out.append(Overflow(tenant, c.queue, c.call, c.node, q.cfg.overflow, reason))

    def _end_offer(self, tenant: int, t: _Tenant, c: _Call, agent: str, reason: str | None, *, rest: bool,
                   resume: float = 0.0, hold: bool = False) -> None:
        """Stop ringing ``agent`` for ``c``. ``reason`` None: the node already knows (it told us).
        A reason the node does not know yet leaves the agent releasing (see the module doc);
        ``resume``: then rest that long from now once released."""
        del c.ringing[agent]
        a = t.agents[agent]
        a.call = None
        if reason is not None:
            self._out.append(CancelOffer(tenant, c.queue, c.call, agent, c.node, reason))
        if rest:
            a.stats.missed += 1
            q = t.queues.get(c.queue)
            self._rest(tenant, a, q.cfg.retry_delay if q else 0.0, c.node)
        elif reason is not None and (hold or reason not in _NODE_KNOWS):
            q = t.queues.get(c.queue)
            a.activity, a.call, a.owner = RELEASING, c.call, c.node
            a.release_by = self._now + (q.cfg.ring_timeout if q else QueueConfig().ring_timeout)
            a.resume_at = self._now + resume
            self._push(a.release_by, _RELEASE, tenant, a.name, "")
        else:
            a.activity = IDLE

    @staticmethod
    def _releasing(t: _Tenant, agent: str, cid: str) -> bool:
        a = t.agents.get(agent)
        return a is not None and a.activity == RELEASING and a.call == cid

    def _release(self, tenant: int, a: _Agent, at: float | None = None) -> None:
        """The releasing agent's phone is free (since ``at``, default now): rest what is left of
        its retry delay, if any."""
        at = self._now if at is None else at
        a.call, a.release_by = None, None
        if a.resume_at > at:
            a.activity, a.rest_until = WRAP_UP, a.resume_at
            self._push(a.rest_until, _REST, tenant, a.name, "")
        else:
            self._rested(a, at)
        a.resume_at = 0.0

    def _release_call(self, tenant: int, t: _Tenant, cid: str) -> bool:
        """The node ended call ``cid`` and with it every phone leg of its offers."""
        held = [a for a in t.agents.values() if a.activity == RELEASING and a.call == cid]
        for a in held:
            self._release(tenant, a)
        return bool(held)

    def _hold_call(self, tenant: int, t: _Tenant, cid: str) -> bool:
        """The caller of ``cid`` left, its node reports each leg's end: agents releasing for it
        stay so, but no longer than ``ring_timeout`` from now (one held with no deadline, after
        a late answer, has its leg hung up by the node with the call)."""
        c = t.calls.get(cid)
        q = t.queues.get(c.queue) if c is not None else None
        by = self._now + (q.cfg.ring_timeout if q else QueueConfig().ring_timeout)
        held = False
        for a in t.agents.values():
            if a.activity == RELEASING and a.call == cid:
                held = True
                if a.release_by is None or a.release_by > by:
                    a.release_by = by
                    self._push(by, _RELEASE, tenant, a.name, "")
        return held

    def _drop_ring(self, tenant: int, t: _Tenant, a: _Agent, reason: str) -> None:
        if a.activity == RINGING and a.call is not None:
            c = t.calls[a.call]
            self._end_offer(tenant, t, c, a.name, reason, rest=False)

    def _rest(self, tenant: int, a: _Agent, seconds: float, owner: str | None) -> None:
        if seconds <= 0:
            self._rested(a, self._now)
            return
        a.activity, a.rest_until, a.owner = WRAP_UP, self._now + seconds, owner
        self._push(a.rest_until, _REST, tenant, a.name, "")

    def _rested(self, a: _Agent, when: float) -> None:
        a.activity, a.idle_since, a.owner = IDLE, when, None

    # ---- deadlines -----------------------------------------------------------------------------

    def _push(self, when: float, kind: int, tenant: int, a: str, b: str) -> None:
        heapq.heappush(self._deadlines, (when, kind, tenant, a, b))

    def _deadline_owner(self, when: float, kind: int, tenant: int, a: str, b: str) -> str | None | bool:
        """The node to tick a live deadline, None for anyone; False: the deadline is stale."""
        t = self._tenants.get(tenant)
        if t is None:
            return False
        if kind == _REST:
            ag = t.agents.get(a)
            return ag.owner if ag and ag.activity == WRAP_UP and ag.rest_until == when else False
        if kind == _RELEASE:
            ag = t.agents.get(a)
            return ag.owner if ag and ag.activity == RELEASING and ag.release_by == when else False
        c = t.calls.get(a)
        if c is None or c.state != WAITING:
            return False
        if kind == _RING:
            return c.node if c.ringing.get(b) == when else False
        q = t.queues.get(c.queue)
        return c.node if q and q.cfg.max_wait is not None and c.joined + q.cfg.max_wait == when else False

    def _expire(self) -> None:
        heap = self._deadlines
        while heap and heap[0][0] <= self._now:
            when, kind, tenant, a, b = heapq.heappop(heap)
            if self._deadline_owner(when, kind, tenant, a, b) is False:
                continue
            t = self._tenants[tenant]
            self._touched.add(tenant)
            if kind == _REST:
                self._rested(t.agents[a], when)
            elif kind == _RELEASE:
                self._release(tenant, t.agents[a], when)  # the node never said: give up waiting
            elif kind == _RING:
                c = t.calls[a]
                t.agents[b].stats.missed += 1
                q = t.queues.get(c.queue)
                self._end_offer(tenant, t, c, b, "timeout", rest=False, resume=q.cfg.retry_delay if q else 0.0)
            else:
                self._overflow(tenant, t, t.calls[a], "timeout")

    # ---- dispatch ------------------------------------------------------------------------------

    def _dispatch(self, tenant: int) -> None:
        t = self._tenants[tenant]
        free = {n for n, a in t.agents.items() if a.available}
        if not free:
            return
        # best first: queue priority, then each queue's own order (caller priority, arrival),
        # merged lazily so a long queue costs nothing once the free agents are taken
        streams = [self._ranked(t, q) for q in t.queues.values() if not free.isdisjoint(q.cfg.members)]
        for _, _, _, cid, q in heapq.merge(*streams):
            if not free:
                return
            if t.calls[cid].ringing and q.cfg.strategy != "ring-all":
                continue  # one agent at a time
            cands = [m for m in q.cfg.members if m in free]
            if not cands:
                continue
            c = t.calls[cid]
            picked = cands if q.cfg.strategy == "ring-all" else [self._pick(t, q, c, cands)]
            for agent in sorted(picked):
                free.discard(agent)
                a = t.agents[agent]
                a.activity, a.call = RINGING, cid
                a.stats.offered += 1
                deadline = self._now + q.cfg.ring_timeout
                c.ringing[agent] = deadline
                self._push(deadline, _RING, tenant, cid, agent)
                self._out.append(Offer(tenant, q.name, cid, agent, c.node))

    @staticmethod
    def _ranked(t: _Tenant, q: _Queue):
        prio = -q.cfg.priority
        for cid in q.waiting:
            c = t.calls[cid]
            yield prio, -c.priority, c.seq, cid, q

    def _pick(self, t: _Tenant, q: _Queue, c: _Call, cands: list[str]) -> str:
        strategy = q.cfg.strategy
        if strategy == "round-robin":
            members = q.cfg.members
            start = members.index(q.rr_last) + 1 if q.rr_last in members else 0
            rotated = members[start:] + members[:start]
            choice = next(m for m in rotated if m in cands)
            q.rr_last = choice
            return choice
        if strategy == "fewest-calls":
            return min(cands, key=lambda m: (q.answered_by.get(m, 0), t.agents[m].idle_since, m))
        if strategy == "random":
            return random.Random(f"{self._offset}:{c.call}").choice(sorted(cands))
        return min(cands, key=lambda m: (t.agents[m].idle_since, m))  # longest-idle

    def _announce(self, tenant: int) -> None:
        t = self._tenants[tenant]
        for q in t.queues.values():
            start, q.dirty = q.dirty, None
            if start is None or start >= len(q.waiting):
                continue  # only places from the first change on can have moved
            ewt_per_place = None
            if q.stats.answered:
                handle = q.stats.talk_time / q.stats.answered + q.cfg.wrapup
                staffed = sum(1 for m in q.cfg.members if t.agents[m].logged_in and not t.agents[m].paused)
                ewt_per_place = handle / max(1, staffed)
            for pos in range(start + 1, len(q.waiting) + 1):
                cid = q.waiting[pos - 1]
                c = t.calls[cid]
                if c.position != pos:
                    c.position = pos
                    ewt = round(pos * ewt_per_place, 1) if ewt_per_place is not None else None
                    self._out.append(Position(tenant, q.name, cid, c.node, pos, ewt))
