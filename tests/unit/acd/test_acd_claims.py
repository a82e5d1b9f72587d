"""An offer is a claim on the agent that only the node ringing the agent can end.

Two survivors of a three-node cluster (drill-1, drill-2) apply the same log; drill-3 is the one
that dies. The tests follow the agents' phones: a node rings the agent when it gets the Offer
and takes its leg down only when it learns it should (a CancelOffer reaching it, its caller
hanging up), then reports (OfferDeclined; OfferAnswered when the phone answered first, which
call control puts through). A caller hanging up leaves the leg up too (CallLeft with ``legs``:
the CANCEL waits for the phone's first provisional response) until the node's OfferDeclined. Another node's Offer to an agent whose phone still has a leg up
is the double offer the chaos drill looks for. These interleavings are the ones a real
cluster produces: the node ringing the agent learns of a withdrawal only when it reads the
record, at the same moment the other nodes may hand the agent a new call.
"""

from __future__ import annotations

import pytest

from node.acd.engine import AcdEngine
from node.acd.events import (
    AgentPaused, AgentUnpaused, CallEnded, CallJoined, CallLeft, CancelOffer, Connected, Decision, Envelope, NodeLeft,
    Offer, OfferAnswered, OfferDeclined, decode, encode,
)
from tests.unit.acd.logbuilder import T, Log, of

AGENT = "2001"


class Phones:
    """The agents' phone legs, from the decisions and the nodes' reports."""

    def __init__(self) -> None:
        self.legs: dict[str, dict[str, str]] = {}  # agent -> {call: node ringing it}

    def decided(self, decisions: list[Decision]) -> list[Decision]:
        for d in decisions:
            if isinstance(d, Offer):
                up = self.legs.setdefault(d.agent, {})
                assert not up, f"{d.agent} offered {d.call} by {d.node} while its phone has {up} up"
                up[d.call] = d.node
        return decisions

    def reported(self, event) -> None:
        if isinstance(event, OfferDeclined):
            self.legs.get(event.agent, {}).pop(event.call, None)
        elif isinstance(event, CallEnded) or (isinstance(event, CallLeft) and not event.legs):
            for up in self.legs.values():
                up.pop(event.call, None)
        elif isinstance(event, NodeLeft):
            for up in self.legs.values():
                for call in [c for c, n in up.items() if n == event.node]:
                    del up[call]


class Cluster:
    """The survivors' replicas fed one log (Log checks they decide alike)."""

    def __init__(self) -> None:
        self.log = Log(AcdEngine(), AcdEngine())
        self.phones = Phones()

    def __call__(self, event, dt: float = 0.0) -> list[Decision]:
        self.phones.reported(event)
        return self.phones.decided(self.log(event, dt=dt))

    def tick(self, dt: float) -> list[Decision]:
        return self.phones.decided(self.log.tick(dt))

    def status(self) -> str:
        return self.log.engine.agent_status(T, AGENT)


def _queue(cluster: Cluster, **cfg) -> None:
    cluster.log.queue("600", members=[AGENT], static_members=True, **cfg)
    assert of(cluster(_join("x", "drill-1")), Offer) == [Offer(T, "600", "x", AGENT, "drill-1")]
    assert of(cluster(_join("y", "drill-2", priority=1)), Offer) == []  # y is next for the agent


def _join(call: str, node: str, priority: int = 0) -> CallJoined:
    return CallJoined(T, "600", call, node, priority)


def test_pause_and_unpause_while_ringing_waits_for_the_ringing_node() -> None:
    c = Cluster()
    _queue(c)
    assert of(c(AgentPaused(T, AGENT)), CancelOffer)[0].reason == "agent_paused"
    # back at once: drill-1 has not read the withdrawal yet, its INVITE may be answered now
    assert of(c(AgentUnpaused(T, AGENT)), Offer) == []
    assert c.status() == "releasing"
    out = c(OfferAnswered(T, "x", AGENT))  # it was: drill-1 put x through
    assert of(out, Connected) == [Connected(T, "600", "x", AGENT, "drill-1")]
    assert c.status() == "on_call"
    assert of(c(CallEnded(T, "x"), dt=30), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_ring_timeout_then_a_late_answer_is_the_agents_call() -> None:
    c = Cluster()
    _queue(c, ring_timeout=5, retry_delay=1)
    out = c.tick(5)
    assert of(out, CancelOffer) == [CancelOffer(T, "600", "x", AGENT, "drill-1", "timeout")]
    out = c(OfferAnswered(T, "x", AGENT), dt=0.01)  # the phone answered as the timeout was decided
    assert of(out, Connected) == [Connected(T, "600", "x", AGENT, "drill-1")]
    assert of(c.tick(2) + c.tick(10), Offer) == []  # talking: y waits
    assert of(c(CallEnded(T, "x")), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_ring_timeout_declined_by_the_node_rests_then_serves_the_next() -> None:
    c = Cluster()
    _queue(c, ring_timeout=5, retry_delay=2)
    c.tick(5)
    assert of(c.tick(3), Offer) == []  # past retry_delay, but drill-1 has not said its leg is down
    assert c.status() == "releasing"
    assert of(c(OfferDeclined(T, "x", AGENT)), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_the_node_that_rang_the_agent_died() -> None:
    c = Cluster()
    c.log.queue("600", members=[AGENT], static_members=True)
    c(_join("x", "drill-3"))
    c(_join("y", "drill-2", priority=1))
    c(AgentPaused(T, AGENT))
    c(AgentUnpaused(T, AGENT))
    assert c.status() == "releasing"  # drill-3's leg, until membership says drill-3 is gone
    assert of(c(NodeLeft("drill-3")), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_a_report_that_never_comes_is_given_up_after_ring_timeout() -> None:
    c = Cluster()
    _queue(c, ring_timeout=8)
    c(AgentPaused(T, AGENT))
    c(AgentUnpaused(T, AGENT))
    assert of(c.log.tick(7.9), Offer) == []
    assert of(c.log.tick(0.1), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_an_old_caller_left_record_frees_the_agent_at_once() -> None:
    """CallLeft without ``legs`` (older nodes) was the node's report that its legs were down."""
    c = Cluster()
    _queue(c)
    assert of(c(CallLeft(T, "x")), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_a_late_answer_to_a_call_gone_elsewhere_keeps_the_agent_until_the_node_hangs_up() -> None:
    c = Cluster()
    c.log.queue("600", members=[AGENT, "2002"], static_members=True, strategy="ring-all")
    c(_join("x", "drill-1"))  # rings both
    c(OfferAnswered(T, "x", "2002"))  # 2002 wins; 2001 is withdrawn
    c(_join("y", "drill-2"))
    assert of(c(OfferAnswered(T, "x", AGENT)), CancelOffer) == [
        CancelOffer(T, "600", "x", AGENT, "drill-1", "answered_elsewhere")]  # hang that leg up
    assert of(c.tick(600), Offer) == []  # its phone is in a call: no giving up on this one
    assert of(c(OfferDeclined(T, "x", AGENT)), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_a_releasing_agent_survives_a_snapshot() -> None:
    c = Cluster()
    _queue(c, ring_timeout=5, retry_delay=3)
    c.tick(5)
    resumed = AcdEngine.from_state(c.log.engine.export_state())
    assert resumed.snapshot() == c.log.engine.snapshot()
    assert resumed.next_deadline() == c.log.engine.next_deadline()
    c.log.engines.append(resumed)
    c(OfferDeclined(T, "x", AGENT))
    assert c.status() == "wrap_up"
    assert of(c.tick(3), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def _ringing_then_caller_left(c: Cluster, **cfg) -> None:
    _queue(c, **cfg)
    out = c(CallLeft(T, "x", legs=True))  # drill-1's CANCEL waits for the phone's 180
    assert of(out, CancelOffer) == [CancelOffer(T, "600", "x", AGENT, "drill-1", "caller_left")]
    assert of(out, Offer) == []  # drill-2's INVITE could reach the phone before that CANCEL
    assert c.status() == "releasing"


def test_caller_hangs_up_while_ringing_holds_the_agent_until_the_leg_is_down() -> None:
    c = Cluster()
    _ringing_then_caller_left(c)
    assert of(c.tick(5), Offer) == []
    # 180, CANCEL, 487: the node reports the leg's end
    assert of(c(OfferDeclined(T, "x", AGENT)), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]
    assert c.log.engine.agent_report(T, AGENT)["missed"] == 0  # the caller left: no miss


def test_caller_hangs_up_as_the_agent_answers_holds_the_agent_until_the_bye() -> None:
    c = Cluster()
    _ringing_then_caller_left(c)
    # the phone's 200 crossed the CANCEL: the node ACKs and BYEs that leg, then reports
    assert of(c(OfferDeclined(T, "x", AGENT), dt=0.2), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_hangs_up_after_the_answer_was_recorded_is_a_talk_that_ended() -> None:
    c = Cluster()
    _queue(c, wrapup=3)
    assert of(c(OfferAnswered(T, "x", AGENT)), Connected) == [Connected(T, "600", "x", AGENT, "drill-1")]
    c(CallLeft(T, "x", legs=True))  # the node hung both sides up
    c(OfferDeclined(T, "x", AGENT))  # its report of the (answered) leg: nothing left to release
    assert c.status() == "wrap_up"
    assert of(c.tick(3), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_hangs_up_after_a_ring_timeout_still_waits_for_the_report() -> None:
    c = Cluster()
    _queue(c, ring_timeout=5, retry_delay=1)
    assert of(c.tick(5), CancelOffer)[0].reason == "timeout"
    assert of(c(CallLeft(T, "x", legs=True), dt=0.1), Offer) == []  # before drill-1 said its leg is down
    assert c.status() == "releasing"
    assert of(c(OfferDeclined(T, "x", AGENT), dt=0.1), Offer) == []  # rests the missed offer's retry_delay
    assert of(c.tick(1), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_left_report_that_never_comes_is_given_up_after_ring_timeout() -> None:
    c = Cluster()
    _queue(c, ring_timeout=8)
    c.tick(2)
    c(CallLeft(T, "x", legs=True))
    assert of(c.log.tick(7.9), Offer) == []
    assert c.log.engine.next_deadline()[1] == "drill-1"  # the node holding the leg ticks it
    assert of(c.log.tick(0.1), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_left_then_the_ringing_node_died() -> None:
    c = Cluster()
    c.log.queue("600", members=[AGENT], static_members=True)
    c(_join("x", "drill-3"))
    c(_join("y", "drill-2", priority=1))
    c(CallLeft(T, "x", legs=True))
    assert c.status() == "releasing"
    assert of(c(NodeLeft("drill-3")), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_left_hold_survives_a_snapshot() -> None:
    c = Cluster()
    _ringing_then_caller_left(c, ring_timeout=6)
    resumed = AcdEngine.from_state(c.log.engine.export_state())
    assert resumed.snapshot() == c.log.engine.snapshot()
    assert resumed.next_deadline() == c.log.engine.next_deadline()
    c.log.engines.append(resumed)
    assert of(c(OfferDeclined(T, "x", AGENT)), Offer) == [Offer(T, "600", "y", AGENT, "drill-2")]


def test_caller_left_wire_form_is_backward_compatible() -> None:
    old = b'{"t":"CallLeft","o":"n1","s":3,"ts":1.0,"e":{"tenant":1,"call":"x"}}'
    assert decode(old).event == CallLeft(1, "x")
    env = Envelope("n1", 4, 2.0, CallLeft(1, "x", legs=True))
    assert decode(encode(env)) == env
    with pytest.raises(ValueError, match="legs"):
        decode(b'{"t":"CallLeft","o":"n1","s":3,"ts":1.0,"e":{"tenant":1,"call":"x","legs":1}}')
