"""The ACD engine's rules, one scenario each (log time only: no clock, no I/O)."""

from __future__ import annotations

import pytest

from node.acd.config import QueueConfig
from node.acd.engine import AcdEngine
from node.acd.events import (
    AgentLoggedOut, AgentPaused, AgentReady, AgentUnpaused, CallEnded, CallLeft, CancelOffer, Connected,
    NodeLeft, Offer, OfferAnswered, OfferDeclined, Overflow, Position, QueueRemoved,
)
from node.config_rules import ConfigError
from tests.unit.acd.logbuilder import T, Log, of, offers


def test_fifo_then_longest_idle_agent() -> None:
    log = Log()
    log.queue("sales", members=["101", "102"])
    log.login("101")
    log.at(1010).login("102")  # 101 has been idle longer
    assert log.join("sales", "c1", dt=1) == [Offer(T, "sales", "c1", "101", "n1"),
                                             Position(T, "sales", "c1", "n1", 1, None)]
    out = log.join("sales", "c2", dt=1)
    assert offers(out) == [("c2", "102")]
    assert offers(log.join("sales", "c3", dt=1)) == []  # nobody free: c3 waits at position 3
    assert of(log(OfferAnswered(T, "c1", "101"), dt=4), Connected) == [Connected(T, "sales", "c1", "101", "n1")]
    assert log.engine.agent_status(T, "101") == "on_call"
    assert log.engine.queue_calls(T, "sales") == ["c2", "c3"]
    log(OfferAnswered(T, "c2", "102"))
    out = log(CallEnded(T, "c1"), dt=30)  # wrapup 0: 101 free again, takes the next caller
    assert offers(out) == [("c3", "101")]
    assert log.engine.queue_report(T, "sales")["talk_time"] == 30


def test_priorities_queue_then_caller() -> None:
    log = Log()
    log.queue("low", members=["101"], priority=0)
    log.queue("vip", members=["101"], priority=5)
    log.join("low", "l1", dt=1)
    log.join("vip", "v1", dt=1)
    log.join("low", "l2", dt=1, priority=3)  # caller priority overtakes l1 inside its queue
    assert log.engine.queue_calls(T, "low") == ["l2", "l1"]
    assert offers(log.login("101")) == [("v1", "101")]
    log(OfferDeclined(T, "v1", "101"))
    assert log.engine.agent_status(T, "101") == "wrap_up"  # retry_delay rest
    assert offers(log.tick(5)) == [("v1", "101")]  # v1 is still first
    log(OfferAnswered(T, "v1", "101"))
    assert offers(log(CallEnded(T, "v1"), dt=10)) == [("l2", "101")]


def test_ring_all_first_answer_wins() -> None:
    log = Log()
    log.queue("help", members=["101", "102", "103"], strategy="ring-all")
    log.login("101", "102")
    assert offers(log.join("help", "c1")) == [("c1", "101"), ("c1", "102")]
    assert offers(log.login("103")) == [("c1", "103")]  # a newcomer joins the ringing
    out = log(OfferAnswered(T, "c1", "102"))
    assert of(out, Connected) == [Connected(T, "help", "c1", "102", "n1")]
    assert sorted((d.agent, d.reason) for d in of(out, CancelOffer)) == [
        ("101", "answered_elsewhere"), ("103", "answered_elsewhere")]
    # the losers' phones may still ring (or have answered) until the node says their legs are gone
    assert log.engine.agent_status(T, "101") == "releasing"
    log(OfferDeclined(T, "c1", "103"))
    assert log.engine.agent_status(T, "103") == "available"
    late = log(OfferAnswered(T, "c1", "101"))  # lost the race: its leg is hung up
    assert late == [CancelOffer(T, "help", "c1", "101", "n1", "answered_elsewhere")]
    log.tick(60)
    assert log.engine.agent_status(T, "101") == "releasing"  # answered: busy until the node hangs up
    log(OfferDeclined(T, "c1", "101"))
    assert log.engine.agent_status(T, "101") == "available"


@pytest.mark.parametrize("strategy", ["round-robin", "fewest-calls", "longest-idle"])
def test_rotating_strategies_spread_calls(strategy: str) -> None:
    log = Log()
    log.queue("q", members=["101", "102", "103"], strategy=strategy)
    log.login("101", "102", "103")
    served = []
    for i in range(6):
        out = log.join("q", f"c{i}", dt=1)
        ((call, agent),) = offers(out)
        served.append(agent)
        log(OfferAnswered(T, call, agent), dt=1)
        log(CallEnded(T, call), dt=1)
    assert served == ["101", "102", "103", "101", "102", "103"]


def test_round_robin_resumes_after_last_offered() -> None:
    log = Log()
    log.queue("q", members=["101", "102", "103"], strategy="round-robin")
    log.login("101", "102", "103")
    assert offers(log.join("q", "c1")) == [("c1", "101")]
    assert offers(log.join("q", "c2")) == [("c2", "102")]
    log(OfferDeclined(T, "c1", "101"))  # 101 rests; c1 goes on to the next after 102
    assert log.engine.queue_calls(T, "q") == ["c1", "c2"]
    assert offers(log.tick(0)) == []
    assert log.engine.agent_status(T, "103") == "ringing"


def test_random_is_a_function_of_the_log() -> None:
    picks = []
    for _ in range(2):
        log = Log()
        log.queue("q", members=[str(100 + i) for i in range(10)], strategy="random")
        log.login(*[str(100 + i) for i in range(10)])
        picks.append([offers(log.join("q", f"c{i}", dt=1))[0][1] for i in range(5)])
    assert picks[0] == picks[1]
    assert len(set(picks[0])) > 1


def test_ring_timeout_moves_on_and_rests_the_agent() -> None:
    log = Log()
    log.queue("q", members=["101", "102"], ring_timeout=15, retry_delay=5)
    log.login("101")
    log.at(1001).login("102")
    log.join("q", "c1")
    assert log.engine.next_deadline() == (1016.0, "n1", T)
    out = log.tick(15)
    assert of(out, CancelOffer) == [CancelOffer(T, "q", "c1", "101", "n1", "timeout")]
    assert offers(out) == [("c1", "102")]
    assert log.engine.agent_report(T, "101")["missed"] == 1
    assert log.engine.agent_status(T, "101") == "releasing"  # until n1 stopped ringing it
    log(OfferDeclined(T, "c1", "101"), dt=0.1)
    assert log.engine.agent_status(T, "101") == "wrap_up"  # the retry_delay from the timeout on
    log.tick(4.9)
    assert log.engine.agent_status(T, "101") == "available"


def test_max_wait_and_max_len_overflow() -> None:
    log = Log()
    log.queue("q", members=["101"], max_wait=30, max_len=2, overflow="ext:200")
    log.join("q", "c1")
    log.join("q", "c2", dt=10)
    assert of(log.join("q", "c3"), Overflow) == [Overflow(T, "q", "c3", "n1", "ext:200", "full")]
    out = log.tick(20)
    assert of(out, Overflow) == [Overflow(T, "q", "c1", "n1", "ext:200", "timeout")]
    assert of(out, Position) == [Position(T, "q", "c2", "n1", 1, None)]  # c2 moves up
    rep = log.engine.queue_report(T, "q")
    assert (rep["offered"], rep["overflowed"], rep["waiting"]) == (3, 2, 1)
    assert rep["longest_wait"] == 30


def test_join_empty_false_refuses_without_agents() -> None:
    log = Log()
    log.queue("q", members=["101"], join_empty=False)
    assert of(log.join("q", "c1"), Overflow)[0].reason == "no_agents"
    assert of(log.join("nope", "c2"), Overflow) == [Overflow(T, "nope", "c2", "n1", None, "unknown_queue")]


def test_agent_pause_logout_wrapup() -> None:
    log = Log()
    log.queue("q", members=["101"], wrapup=10)
    log.login("101")
    log(AgentPaused(T, "101", "lunch"))
    assert offers(log.join("q", "c1")) == []
    assert log.engine.agent_status(T, "101") == "paused"
    assert offers(log(AgentUnpaused(T, "101"))) == [("c1", "101")]
    out = log(AgentLoggedOut(T, "101"))
    assert of(out, CancelOffer)[0].reason == "agent_logged_out"
    assert log.engine.agent_status(T, "101") == "logged_out"
    assert offers(log.login("101")) == []  # back at once, but n1 has not yet stopped ringing it
    assert offers(log(OfferDeclined(T, "c1", "101"))) == [("c1", "101")]
    log(OfferAnswered(T, "c1", "101"))
    log.join("q", "c2")
    log(CallEnded(T, "c1"), dt=60)
    assert log.engine.agent_status(T, "101") == "wrap_up"
    assert offers(log(AgentReady(T, "101"))) == [("c2", "101")]  # wrap-up ended early


def test_abandon_and_report() -> None:
    log = Log()
    log.queue("q", members=["101"], service_level=20, ring_timeout=60)
    log.login("101")
    log.join("q", "c1")
    log(OfferAnswered(T, "c1", "101"), dt=10)
    log.join("q", "c2")
    log(CallLeft(T, "c2"), dt=40)
    log.join("q", "c3")
    log(CallEnded(T, "c1"), dt=60)
    log(OfferAnswered(T, "c3", "101"), dt=30)  # waited 90 s
    log(CallLeft(T, "c3"), dt=20)  # the caller hangs up: the call ended
    rep = log.engine.queue_report(T, "q")
    assert (rep["offered"], rep["answered"], rep["abandoned"], rep["waiting"]) == (3, 2, 1, 0)
    assert rep["avg_wait"] == 50 and rep["longest_wait"] == 90
    assert rep["service_level"] == pytest.approx(100 / 3)  # 1 of answered+abandoned within 20 s
    assert rep["talk_time"] == 120 and rep["avg_talk"] == 60
    a = log.engine.agent_report(T, "101")
    assert (a["offered"], a["answered"], a["talk_time"]) == (2, 2, 120)


def test_node_left_frees_its_calls_and_agents() -> None:
    log = Log()
    log.queue("q", members=["101", "102", "103"], wrapup=30)
    log.login("101", "102", "103")
    log.join("q", "a1", node="A")
    log.join("q", "b1", node="B")
    log(OfferAnswered(T, "a1", "101"))
    log.join("q", "a2", node="A")  # rings 103
    log.join("q", "b2", node="B")
    log.join("q", "a3", node="A")
    assert log.engine.queue_calls(T, "q") == ["b1", "a2", "b2", "a3"]
    out = log(NodeLeft("A"))
    assert log.engine.queue_calls(T, "q") == ["b1", "b2"]
    assert Position(T, "q", "b2", "B", 2, 30.0 + 0.0) not in out
    assert [(d.call, d.position) for d in of(out, Position)] == [("b2", 2)]
    # 103 (ringing for a2) is free and takes b2 at once; 101 (on a1) is in wrap-up anyone may tick
    assert offers(out) == [("b2", "103")]
    assert log.engine.agent_status(T, "101") == "wrap_up"
    assert log.engine.next_deadline()[1:] in {(None, T), ("B", T)}
    assert log.engine.queue_report(T, "q")["lost"] == 2
    assert log(NodeLeft("A")) == []  # repeated: harmless


def test_duplicates_and_nonsense_are_ignored() -> None:
    e = AcdEngine()
    log = Log(e)
    log.queue("q", members=["101"])
    log.login("101")
    log.join("q", "c1")
    off, env = log.records[-1]
    assert e.apply(off + 1, env) == []  # the same envelope again (a retried send)
    assert log(OfferAnswered(T, "nope", "101")) == []
    assert log(CallEnded(T, "c1")) == []  # not connected
    assert log(QueueRemoved(T, "other")) == []
    assert e.ignored == 4
    assert e.queue_calls(T, "q") == ["c1"]


def test_queue_removed_overflows_waiting_calls() -> None:
    log = Log()
    log.queue("q", members=["101"], overflow="vm:101")
    log.login("101")
    log.join("q", "c1")
    out = log(QueueRemoved(T, "q"))
    assert of(out, CancelOffer)[0].reason == "overflow"
    assert of(out, Overflow) == [Overflow(T, "q", "c1", "n1", "vm:101", "queue_removed")]
    assert log.engine.agent_status(T, "101") == "releasing"
    log(OfferDeclined(T, "c1", "101"))  # the call is gone; the node's report still frees the agent
    assert log.engine.agent_status(T, "101") == "available"


def test_tenants_do_not_share_agents_or_queues() -> None:
    log = Log()
    log.queue("q", members=["101"], tenant=1)
    log.queue("q", members=["101"], tenant=2)
    log.login("101", tenant=2)
    assert offers(log.join("q", "c1", tenant=1)) == []  # tenant 1's 101 is not logged in
    assert offers(log.join("q", "c1", tenant=2)) == [("c1", "101")]
    assert log.engine.queue_calls(1, "q") == ["c1"]


def test_estimated_wait_from_history() -> None:
    log = Log()
    log.queue("q", members=["101"], wrapup=0)
    log.login("101")
    log.join("q", "c1")
    log(OfferAnswered(T, "c1", "101"))
    log.join("q", "c2")
    log.join("q", "c3")
    out = log(CallEnded(T, "c1"), dt=100)  # one call, 100 s talk, one agent
    pos = {d.call: (d.position, d.ewt) for d in of(out, Position)}
    assert pos == {}  # positions unchanged: c2 still first (ringing now)
    out = log.join("q", "c4")
    assert of(out, Position) == [Position(T, "q", "c4", "n1", 3, 300.0)]


def test_static_members_start_logged_in_once() -> None:
    log = Log()
    log.login("102")
    log(AgentLoggedOut(T, "102"))
    log.queue("q", members=["101", "102"], static_members=True)
    assert log.engine.agent_status(T, "101") == "available"
    assert log.engine.agent_status(T, "102") == "logged_out"  # known already: keeps its state
    log(AgentLoggedOut(T, "101"))
    log.queue("q", members=["101", "102"], static_members=True, priority=1)  # a config change
    assert log.engine.agent_status(T, "101") == "logged_out"


def test_config_rules() -> None:
    assert QueueConfig.from_dict({}).strategy == "longest-idle"
    for bad in ({"strategy": "fastest"}, {"members": ["1"]}, {"members": ["100", "100"]}, {"max_len": 0},
                {"ring_timeout": 0}, {"colour": "red"}, {"priority": "high"}, {"join_empty": 1}, {"static_members": "yes"},
                {"retry_delay": 0}, []):
        with pytest.raises(ConfigError):
            QueueConfig.from_dict(bad)
