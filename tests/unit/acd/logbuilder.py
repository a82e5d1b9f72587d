"""Builds ACD logs for the engine tests: envelopes with increasing offsets and a settable clock."""

from __future__ import annotations

from node.acd.config import QueueConfig
from node.acd.engine import AcdEngine
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
