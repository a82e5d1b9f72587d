"""What the ACD log holds (events, in an Envelope) and what the engine decides, with the wire
form of the log (JSON: readable in a Kafka console, and a bad record is a clear error).

Every event is a fact a node observed; the engine turns the ordered facts into decisions. Time
is the ``ts`` of the envelope (the publisher's clock), never the reader's, so replicas agree.
"""

from __future__ import annotations

import json
import math
from dataclasses import MISSING, dataclass, fields
from typing import Union

from node.acd.config import QueueConfig

__all__ = [
    "QueueConfigured", "QueueRemoved", "CallJoined", "CallLeft", "OfferAnswered", "OfferDeclined",
    "CallEnded", "AgentLoggedIn", "AgentLoggedOut", "AgentPaused", "AgentUnpaused", "AgentReady",
    "NodeLeft", "Tick", "Marker", "Event", "Envelope",
    "Offer", "CancelOffer", "Connected", "Overflow", "Position", "Decision",
    "encode", "decode", "EVENT_TYPES",
]


# ---- events (inputs) ---------------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class QueueConfigured:
    """Create or replace a queue. Published whenever a node loads the queue's document."""
    tenant: int
    queue: str
    config: QueueConfig


@dataclass(frozen=True, slots=True)
class QueueRemoved:
    tenant: int
    queue: str


@dataclass(frozen=True, slots=True)
class CallJoined:
    """``node`` runs the call (its B2BUA rings agents and gets the decisions)."""
    tenant: int
    queue: str
    call: str
    node: str
    priority: int = 0


@dataclass(frozen=True, slots=True)
class CallLeft:
    """The caller hung up (waiting: abandoned; talking: the call ended). ``legs``: the node's
    legs to agents it was ringing may still be up (a CANCEL waits for a provisional, RFC 3261
    §9.1); it reports each one's end with OfferDeclined. False (older records): they are down."""
    tenant: int
    call: str
    legs: bool = False


@dataclass(frozen=True, slots=True)
class OfferAnswered:
    """The agent's phone answered: also after a CancelOffer that came too late (the node has
    put the call through; the engine connects it if the caller still waits)."""
    tenant: int
    call: str
    agent: str


@dataclass(frozen=True, slots=True)
class OfferDeclined:
    """The agent's phones rejected, were busy or unreachable; after a CancelOffer: the node's
    leg to the agent is down (until this report the agent stays claimed)."""
    tenant: int
    call: str
    agent: str


@dataclass(frozen=True, slots=True)
class CallEnded:
    """The talk between caller and agent ended; the agent goes to wrap-up."""
    tenant: int
    call: str


@dataclass(frozen=True, slots=True)
class AgentLoggedIn:
    tenant: int
    agent: str


@dataclass(frozen=True, slots=True)
class AgentLoggedOut:
    tenant: int
    agent: str


@dataclass(frozen=True, slots=True)
class AgentPaused:
    tenant: int
    agent: str
    reason: str = ""


@dataclass(frozen=True, slots=True)
class AgentUnpaused:
    tenant: int
    agent: str


@dataclass(frozen=True, slots=True)
class AgentReady:
    """The agent ends wrap-up early."""
    tenant: int
    agent: str


@dataclass(frozen=True, slots=True)
class NodeLeft:
    """A node left the cluster (membership says so): its calls leave every queue. Broadcast to
    every partition; repeating it is harmless."""
    node: str


@dataclass(frozen=True, slots=True)
class Tick:
    """Time passed: lets deadlines (ring timeout, max wait, wrap-up) fire. ``tenant`` only routes
    it to the tenant's partition."""
    tenant: int = 0


@dataclass(frozen=True, slots=True)
class Marker:
    """No-op a node publishes to learn how far the log goes (catch-up barrier)."""
    token: str


Event = Union[QueueConfigured, QueueRemoved, CallJoined, CallLeft, OfferAnswered, OfferDeclined, CallEnded,
              AgentLoggedIn, AgentLoggedOut, AgentPaused, AgentUnpaused, AgentReady, NodeLeft, Tick, Marker]
EVENT_TYPES: dict[str, type] = {t.__name__: t for t in Event.__args__}  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Envelope:
    """``origin``: the publishing node incarnation; ``seq`` increases per origin so a record
    delivered twice (a retried send) is recognised and dropped."""
    origin: str
    seq: int
    ts: float
    event: Event


# ---- decisions (outputs) -----------------------------------------------------------------------

@dataclass(frozen=True, slots=True)
class Offer:
    """Ring ``agent`` for ``call``: executed by ``node``."""
    tenant: int
    queue: str
    call: str
    agent: str
    node: str


@dataclass(frozen=True, slots=True)
class CancelOffer:
    """Stop ringing ``agent``. reason: timeout, answered_elsewhere, caller_left, overflow,
    agent_logged_out, agent_paused, node_left, queue_removed. Except for node_left and a
    caller_left whose CallLeft had no ``legs`` the node then reports the leg's end (OfferDeclined, or OfferAnswered if the phone
    answered first); the agent gets no other call before that."""
    tenant: int
    queue: str
    call: str
    agent: str
    node: str
    reason: str


@dataclass(frozen=True, slots=True)
class Connected:
    """``agent``'s answer won: bridge the caller to it."""
    tenant: int
    queue: str
    call: str
    agent: str
    node: str


@dataclass(frozen=True, slots=True)
class Overflow:
    """The call leaves the queue for ``destination`` (None: refuse it). reason: full, timeout,
    no_agents, queue_removed, unknown_queue."""
    tenant: int
    queue: str
    call: str
    node: str
    destination: str | None
    reason: str


@dataclass(frozen=True, slots=True)
class Position:
    """The caller's place (1 = next) and estimated wait in seconds (None: no history yet)."""
    tenant: int
    queue: str
    call: str
    node: str
    position: int
    ewt: float | None


Decision = Union[Offer, CancelOffer, Connected, Overflow, Position]


# ---- wire form ---------------------------------------------------------------------------------

def encode(env: Envelope) -> bytes:
    ev = env.event
    body: dict = {}
    for f in fields(ev):  # type: ignore[arg-type]
        v = getattr(ev, f.name)
        body[f.name] = v.to_dict() if isinstance(v, QueueConfig) else v
    return json.dumps({"t": type(ev).__name__, "o": env.origin, "s": env.seq, "ts": env.ts, "e": body},
                      separators=(",", ":")).encode()


def decode(raw: bytes) -> Envelope:
    """Raises ValueError saying what is wrong with a record."""
    try:
        doc = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"ACD record is not JSON: {e}") from None
    if not isinstance(doc, dict):
        raise ValueError("ACD record is not a JSON object")
    cls = EVENT_TYPES.get(doc.get("t"))  # type: ignore[arg-type]
    if cls is None:
        raise ValueError(f"unknown ACD event type {doc.get('t')!r}")
    origin, seq, ts, body = doc.get("o"), doc.get("s"), doc.get("ts"), doc.get("e")
    if not isinstance(origin, str) or not origin:
        raise ValueError("ACD record has no origin")
    if isinstance(seq, bool) or not isinstance(seq, int) or seq < 0:
        raise ValueError(f"ACD record has a bad seq {seq!r}")
    if isinstance(ts, bool) or not isinstance(ts, (int, float)) or not math.isfinite(ts):
        raise ValueError(f"ACD record has a bad ts {ts!r}")
    if not isinstance(body, dict):
        raise ValueError("ACD record has no event body")
    kwargs = {}
    for f in fields(cls):
        if f.name not in body:
            if f.default is not MISSING:
                continue
            raise ValueError(f"{cls.__name__} lacks {f.name}")
        v = body[f.name]
        if f.name == "config":
            v = QueueConfig.from_dict(v)
        elif f.type == "int" and (isinstance(v, bool) or not isinstance(v, int)):
            raise ValueError(f"{cls.__name__}.{f.name} must be an integer, not {v!r}")
        elif f.type == "bool" and not isinstance(v, bool):
            raise ValueError(f"{cls.__name__}.{f.name} must be true or false, not {v!r}")
        elif f.type == "str" and not isinstance(v, str):
            raise ValueError(f"{cls.__name__}.{f.name} must be a string, not {v!r}")
        kwargs[f.name] = v
    return Envelope(origin, seq, float(ts), cls(**kwargs))
