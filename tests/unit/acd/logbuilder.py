"""Builds ACD logs for the engine tests: envelopes with increasing offsets and a settable clock."""

from __future__ import annotations

from node.acd.config import QueueConfig
from node.acd.engine import RINGING, WAITING, AcdEngine
from node.acd.events import (
    AgentLoggedIn, CallJoined, Decision, Envelope, Offer, QueueConfigured, Tick,
)


T = 1  # the tenant most tests use


class Log:
    """Feeds one or more engines the same records; ``decisions`` of the first engine per record."""

    def __init__(self, *engines: AcdEngine, origin: str = "n1") -> None:
        self.engines = list(engines) or [AcdEngine()]
        self.origin = origin
        self.offset = -1
        self.seq = 0
        self.ts = 1000.0
        self.records: list[tuple[int, Envelope]] = []

    @property
    def engine(self) -> AcdEngine:
        return self.engines[0]

    def at(self, ts: float) -> "Log":
        self.ts = ts
        return self

    def __call__(self, event, *, dt: float = 0.0) -> list[Decision]:
        self.ts += dt
        self.offset += 1
        self.seq += 1
        env = Envelope(self.origin, self.seq, self.ts, event)
        self.records.append((self.offset, env))
        outs = [e.apply(self.offset, env) for e in self.engines]
        for o in outs[1:]:
            assert o == outs[0]
        return outs[0]

    def tick(self, dt: float, tenant: int = T) -> list[Decision]:
        return self(Tick(tenant), dt=dt)

    def queue(self, name: str, tenant: int = T, **cfg) -> list[Decision]:
        return self(QueueConfigured(tenant, name, QueueConfig.from_dict(cfg)))

    def login(self, *agents: str, tenant: int = T) -> list[Decision]:
        out: list[Decision] = []
        for a in agents:
            out += self(AgentLoggedIn(tenant, a))
        return out

    def join(self, queue: str, call: str, node: str = "n1", priority: int = 0, tenant: int = T, dt: float = 0.0):
        return self(CallJoined(tenant, queue, call, node, priority), dt=dt)


def offers(decisions: list[Decision]) -> list[tuple[str, str]]:
    return [(d.call, d.agent) for d in decisions if isinstance(d, Offer)]


def of(decisions: list[Decision], kind: type) -> list:
    return [d for d in decisions if isinstance(d, kind)]


def _rank(t, c) -> tuple:
    return (-t.queues[c.queue].cfg.priority, -c.priority, c.seq)


def check_invariants(e: AcdEngine, offers_now: list[Offer]) -> None:
    """The engine's promises, checked on its state after a record (white box)."""
    for tid, t in e._tenants.items():
        ringing_for: dict[str, str] = {}
        for cid, c in t.calls.items():
            q = t.queues.get(c.queue)
            if c.state == WAITING:
                assert q is not None and cid in q.waiting
            else:
                assert not c.ringing and c.agent is not None and t.agents[c.agent].call == cid
            for a in c.ringing:
                assert a not in ringing_for, f"agent {a} offered {ringing_for.get(a)} and {cid}"
                ringing_for[a] = cid
        for name, a in t.agents.items():
            assert (a.activity == RINGING) == (name in ringing_for)
            if a.activity == RINGING:
                assert a.call == ringing_for[name]
        for q in t.queues.values():
            keys = [(-t.calls[c].priority, t.calls[c].seq) for c in q.waiting]
            assert keys == sorted(keys), "FIFO within priority"
            free = [m for m in q.cfg.members if t.agents[m].available]
            for cid in q.waiting:
                c = t.calls[cid]
                if not c.ringing or q.cfg.strategy == "ring-all":
                    assert not free, f"call {cid} waits while {free} are free"
        for off in offers_now:
            if off.tenant != tid or off.call not in t.calls:
                continue
            x = t.calls[off.call]
            if t.queues[x.queue].cfg.strategy != "ring-all":
                assert list(x.ringing) == [off.agent], f"{x.call} rings {sorted(x.ringing)}: one at a time"
            for y in t.calls.values():
                qy = t.queues.get(y.queue)
                if y.state == WAITING and not y.ringing and qy and off.agent in qy.cfg.members:
                    assert _rank(t, y) > _rank(t, x), f"{y.call} is ahead of {x.call} but {off.agent} took {x.call}"
