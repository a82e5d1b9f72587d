"""Properties of the ACD engine over random logs (hypothesis).

Three nodes publish interleaved events with skewed clocks (and the odd duplicate a retried
send leaves in the log); every replica applying the log, incrementally or all at once on a late
join, must reach the same state through the same decisions, and along the way: no agent is ever
offered two calls, nor offered a call while the node of a withdrawn offer may still have its
phone leg up (until that node reports, the call ends, the node leaves or the report is given
up on), no call waits while an agent that could take it is free, and calls are served best
first (queue priority, caller priority, arrival).
"""

from __future__ import annotations

import json
import zlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from node.acd.config import STRATEGIES, QueueConfig
from node.acd.engine import RINGING, AcdEngine
from node.acd.events import (
    AgentLoggedIn, AgentLoggedOut, AgentPaused, AgentReady, AgentUnpaused, CallEnded, CallJoined, CallLeft,
    CancelOffer, Connected, Envelope, NodeLeft, Offer, OfferAnswered, OfferDeclined, QueueConfigured, Tick,
)
from tests.unit.acd.logbuilder import check_invariants

AGENTS = ["101", "102", "103", "104"]
NODES = ["A", "B", "C"]
QUEUES = ["q0", "q1", "q2"]
TENANTS = [1, 2]

configs = st.builds(
    lambda strategy, prio, members, ring, max_wait, max_len, wrapup, retry: QueueConfig.from_dict({
        "strategy": strategy, "priority": prio, "members": members, "ring_timeout": ring, "max_wait": max_wait,
        "max_len": max_len, "wrapup": wrapup, "retry_delay": retry}),
    st.sampled_from(STRATEGIES), st.integers(0, 2),
    st.lists(st.sampled_from(AGENTS), unique=True, max_size=4),
    st.sampled_from([5, 15]), st.sampled_from([None, 30, 60]), st.sampled_from([None, 2, 4]),
    st.sampled_from([0, 0, 10]), st.sampled_from([1, 5]))


@st.composite
def logs(draw) -> list[Envelope]:
    seq = {n: 0 for n in NODES}
    skew = {n: draw(st.sampled_from([-1.5, 0.0, 0.7])) for n in NODES}
    now = 1000.0
    records: list[Envelope] = []
    calls: list[tuple[int, str]] = []

    def emit(node: str, event) -> None:
        seq[node] += 1
        records.append(Envelope(node, seq[node], now + skew[node], event))

    for tenant in TENANTS:
        for q in QUEUES:
            emit("A", QueueConfigured(tenant, q, draw(configs)))
    for _ in range(draw(st.integers(5, 70))):
        node = draw(st.sampled_from(NODES))
        tenant = draw(st.sampled_from(TENANTS))
        kind = draw(st.sampled_from(["join", "join", "join", "login", "login", "answer", "answer", "decline",
                                     "leave", "end", "end", "logout", "pause", "unpause", "ready", "tick",
                                     "tick", "node_left", "configure", "dup"]))
        agent = draw(st.sampled_from(AGENTS))
        call = draw(st.sampled_from(calls)) if calls else (tenant, "c0")
        if kind == "join":
            cid = f"c{len(calls)}"
            calls.append((tenant, cid))
            emit(node, CallJoined(tenant, draw(st.sampled_from(QUEUES)), cid, node, draw(st.integers(0, 1))))
        elif kind == "answer":
            emit(node, OfferAnswered(call[0], call[1], agent))
        elif kind == "decline":
            emit(node, OfferDeclined(call[0], call[1], agent))
        elif kind == "leave":
            emit(node, CallLeft(*call, legs=draw(st.booleans())))
        elif kind == "end":
            emit(node, CallEnded(*call))
        elif kind == "login":
            emit(node, AgentLoggedIn(tenant, agent))
        elif kind == "logout":
            emit(node, AgentLoggedOut(tenant, agent))
        elif kind == "pause":
            emit(node, AgentPaused(tenant, agent))
        elif kind == "unpause":
            emit(node, AgentUnpaused(tenant, agent))
        elif kind == "ready":
            emit(node, AgentReady(tenant, agent))
        elif kind == "tick":
            now += draw(st.sampled_from([0.5, 3.0, 6.0, 16.0, 35.0]))
            emit(node, Tick(tenant))
        elif kind == "node_left":
            emit(node, NodeLeft(draw(st.sampled_from(NODES))))
        elif kind == "configure":
            emit(node, QueueConfigured(tenant, draw(st.sampled_from(QUEUES)), draw(configs)))
        elif kind == "dup" and records:
            records.append(draw(st.sampled_from(records)))  # a retried send delivered twice
        now += draw(st.sampled_from([0.0, 0.1, 1.0]))
    return records


def _answers_from_offers(log: list[Envelope]) -> list[Envelope]:
    """Most random answers are nonsense; make the log also answer real offers."""
    e = AcdEngine()
    out: list[Envelope] = []
    seq = 10_000
    for env in log:
        out.append(env)
        decisions = e.apply(len(out) - 1, env)
        for d in decisions:
            if isinstance(d, Offer) and zlib.crc32(f"{d.call}{d.agent}{env.seq}".encode()) % 3 == 0:
                seq += 1
                ans = Envelope("X", seq, env.ts, OfferAnswered(d.tenant, d.call, d.agent))
                out.append(ans)
                e.apply(len(out) - 1, ans)
    return out


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs())
def test_replicas_agree_and_invariants_hold(raw: list[Envelope]) -> None:
    log = _answers_from_offers(raw)
    live, late = AcdEngine(), AcdEngine()
    live_decisions = []
    outstanding: dict[tuple[int, str], str] = {}  # (tenant, agent) -> call, from the decisions alone
    # (tenant, agent) -> (call, node, give up at) of a withdrawn offer whose node has not reported
    held: dict[tuple[int, str], tuple[str, str, float]] = {}
    for off, env in enumerate(log):
        ev = env.event
        ignored = live.ignored
        # a caller leaving a waiting call with ``legs``: its node reports the legs (or is given up on)
        left = live._tenants.get(ev.tenant, None) if isinstance(ev, CallLeft) and ev.legs else None
        before = left.calls.get(ev.call) if left is not None else None
        legs_held = left is not None and (before is None or before.state != "connected")
        ds = live.apply(off, env)
        live_decisions.append(ds)
        live.next_deadline()  # reading deadlines must not change anything
        check_invariants(live, [d for d in ds if isinstance(d, Offer)])
        # ``ds`` holds what the deadlines did, then what the event did, then the offers
        for d in ds:
            key = (d.tenant, getattr(d, "agent", ""))
            if isinstance(d, CancelOffer):
                if outstanding.get(key) == d.call:
                    del outstanding[key]
                    if d.reason != "node_left" and (d.reason != "caller_left" or legs_held):
                        a = live._tenants[d.tenant].agents[d.agent]
                        q = live._tenants[d.tenant].queues.get(d.queue)
                        give_up = a.release_by if a.activity == "releasing" and a.call == d.call else \
                            live.now + (q.cfg.ring_timeout if q else QueueConfig().ring_timeout)
                        assert give_up is not None and give_up > live.now, d
                        held[key] = (d.call, d.node, give_up)
                else:  # only a late answer's leg is cancelled without an outstanding offer
                    assert d.reason in ("answered_elsewhere", "stale"), d
            elif isinstance(d, Connected):
                if key in outstanding:
                    assert outstanding.pop(key) == d.call
                else:  # a late answer to a withdrawn offer: the phone took the call
                    assert isinstance(ev, OfferAnswered) and held.pop(key)[:2] == (d.call, d.node), d
        key = (getattr(ev, "tenant", 0), getattr(ev, "agent", ""))
        if isinstance(ev, OfferDeclined) and held.get(key, ("",))[0] == ev.call:
            del held[key]  # the node's leg for the withdrawn offer is gone
        elif isinstance(ev, OfferDeclined) and live.ignored == ignored:
            del outstanding[key]  # the node knows it (no decision says so)
        elif isinstance(ev, OfferAnswered) and held.get(key, ("",))[0] == ev.call:
            if live.now < held[key][2]:
                held[key] = (ev.call, held[key][1], float("inf"))  # answered: busy until the node says
            else:
                del held[key]  # given up on before the answer came (its record's time is past it)
        elif isinstance(ev, CallLeft) and legs_held:  # held no longer than the shortest ring_timeout from now
            held = {k: (v[0], v[1], min(v[2], live.now + 5.0)) if k[0] == ev.tenant and v[0] == ev.call else v
                    for k, v in held.items()}
        elif isinstance(ev, (CallLeft, CallEnded)):
            held = {k: v for k, v in held.items() if not (k[0] == ev.tenant and v[0] == ev.call)}
        elif isinstance(ev, NodeLeft):
            held = {k: v for k, v in held.items() if v[1] != ev.node}
        for d in ds:
            key = (d.tenant, getattr(d, "agent", ""))
            if isinstance(d, Offer):
                assert key not in outstanding, f"{d.agent} offered {d.call} while ringing for {outstanding[key]}"
                if key in held:  # without a report only giving up on it frees the agent
                    assert live.now >= held[key][2], f"{d.agent} offered {d.call} while {held[key]} may ring it"
                    del held[key]
                outstanding[key] = d.call
        ringing = {(tid, a): t_.agents[a].call for tid, t_ in live._tenants.items()
                   for a in t_.agents if t_.agents[a].activity == RINGING}
        assert ringing == outstanding
    late_decisions = [late.apply(off, env) for off, env in enumerate(log)]
    assert late_decisions == live_decisions
    assert late.snapshot() == live.snapshot()


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(logs(), st.floats(0, 1))
def test_a_replica_started_from_a_snapshot_continues_identically(raw: list[Envelope], cut: float) -> None:
    log = _answers_from_offers(raw)
    k = int(cut * len(log))
    whole = AcdEngine()
    decisions = [whole.apply(off, env) for off, env in enumerate(log)]
    head = AcdEngine()
    for off, env in enumerate(log[:k]):
        head.apply(off, env)
    doc = json.loads(json.dumps(head.export_state()))  # through the wire form
    resumed = AcdEngine.from_state(doc)
    assert resumed.snapshot() == head.snapshot()
    assert [resumed.apply(off, env) for off, env in enumerate(log) if off >= k] == decisions[k:]
    assert resumed.snapshot() == whole.snapshot()
    assert resumed.next_deadline() == whole.next_deadline()


def test_bad_snapshots_are_value_errors() -> None:
    import pytest

    good = AcdEngine().export_state()
    for bad in ({}, {**good, "version": 9}, {**good, "tenants": {"1": {"queues": [{"name": "q"}]}}},
                {**good, "tenants": {"x": {}}}):
        with pytest.raises(ValueError):
            AcdEngine.from_state(bad)
