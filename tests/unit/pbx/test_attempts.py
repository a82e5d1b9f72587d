"""AttemptWalker (node/pbx/attempts.py) with a fake clock: rules, timers, failover, holds."""

from __future__ import annotations

import pytest

from node.model import Tenant
from node.pbx.attempts import AttemptWalker, always_failover, best_failure, outcome
from node.pbx.routing import AppTarget, AttemptRule, RoutePlan, Target


class Clock:
    def __init__(self) -> None:
        self.now = 0.0
        self.timers: list = []

    def call_later(self, delay, fn):
        t = _Timer(self.now + delay, fn)
        self.timers.append(t)
        return t

    def advance(self, seconds: float) -> None:
        end = self.now + seconds
        while True:
            due = sorted((t for t in self.timers if not t.cancelled and t.when <= end), key=lambda t: t.when)
            if not due:
                break
            t = due[0]
            self.timers.remove(t)
            self.now = t.when
            t.fn()
        self.now = end


class _Timer:
    def __init__(self, when, fn) -> None:
        self.when, self.fn, self.cancelled = when, fn, False

    def cancel(self) -> None:
        self.cancelled = True


class FakeLeg:
    def __init__(self, target) -> None:
        self.target, self.final, self.cancelled = target, 0, False


def tgt(name: str, kind: str = "extension") -> Target:
    return Target(kind=kind, ruri=f"sip:{name}@x", transport="udp", host="127.0.0.1", port=5060, to_value=name)


def walker(plan, clock, unreachable=(), apps=None, **kw):
    rung, cancelled, no_answer = [], [], []

    def ring(target):
        if target.ruri in unreachable:
            return None
        leg = FakeLeg(target)
        rung.append(leg)
        return leg

    def cancel(leg):
        leg.cancelled = True
        cancelled.append(leg)

    w = AttemptWalker(plan, ring=ring, cancel=cancel, call_later=clock.call_later, default_ring=30,
                      on_no_answer=lambda: no_answer.append(clock.now), on_app=apps, **kw)
    return w, rung, cancelled, no_answer


def tenant() -> Tenant:
    return Tenant(id=1, name="t", domain="t.example")


def seq_plan(*rings: float) -> RoutePlan:
    plan = RoutePlan(tenant(), "internal", "600")
    for i, r in enumerate(rings):
        plan.attempts.append([tgt(f"m{i}")])
        nxt = i + 1 if i + 1 < len(rings) else None
        plan.rules.append(AttemptRule(ring=r, on_busy=nxt, on_noanswer=nxt, on_fail=nxt))
    return plan


def test_rules_ring_each_attempt_its_own_time_then_give_up():
    clock = Clock()
    w, rung, cancelled, no_answer = walker(seq_plan(2, 0), clock)
    assert w.start() and [l.target.ruri for l in rung] == ["sip:m0@x"]
    clock.advance(1.9)
    assert len(rung) == 1
    clock.advance(0.2)
    assert [l.target.ruri for l in rung] == ["sip:m0@x", "sip:m1@x"] and cancelled == [rung[0]]
    rung[0].final = 487
    assert w.leg_failed(rung[0]) is None  # a cancelled fork of an earlier attempt
    clock.advance(29)
    assert no_answer == []
    clock.advance(2)  # default ring time of the last attempt (30 s after it started at 2 s)
    assert no_answer == [pytest.approx(32.0)]


def test_rules_busy_goes_to_its_rule_and_the_last_failure_is_reported():
    clock = Clock()
    plan = seq_plan(10, 10)
    plan.rules[0].on_busy = None  # busy ends the walk, no answer would go on
    w, rung, _, _ = walker(plan, clock)
    w.start()
    rung[0].final = 486
    assert w.leg_failed(rung[0]) == 486 and w.stopped
    clock.advance(60)
    assert len(rung) == 1


def test_unreachable_attempt_takes_its_fail_rule_at_once():
    clock = Clock()
    w, rung, _, _ = walker(seq_plan(5, 5, 5), clock, unreachable={"sip:m0@x", "sip:m1@x"})
    assert w.start() and [l.target.ruri for l in rung] == ["sip:m2@x"] and w.attempt == 2


def test_without_rules_trunk_failover_only_on_retryable_status():
    clock = Clock()
    plan = RoutePlan(tenant(), "outbound", "0301234")
    plan.attempts = [[tgt("t1", "trunk")], [tgt("t2", "trunk")]]
    w, rung, _, _ = walker(plan, clock)
    w.start()
    rung[0].final = 503
    assert w.leg_failed(rung[0]) is None and len(rung) == 2
    rung[1].final = 404
    assert w.leg_failed(rung[1]) == 404
    # outgoing.py's policy: any failure tries the next attempt
    w2, rung2, _, _ = walker(plan, Clock(), failover=always_failover)
    w2.start()
    rung2[0].final = 486
    assert w2.leg_failed(rung2[0]) is None and len(rung2) == 2


def test_forks_wait_for_each_other():
    clock = Clock()
    plan = seq_plan(10, 10)
    plan.attempts[0].append(tgt("m0b"))
    w, rung, _, _ = walker(plan, clock)
    w.start()
    rung[0].final = 486
    assert w.leg_failed(rung[0]) is None and len(rung) == 2
    rung[1].final = 480
    assert w.leg_failed(rung[1]) is None and rung[-1].target.ruri == "sip:m1@x"  # busy rule → next


def test_application_target_ends_the_walk():
    clock = Clock()
    plan = seq_plan(2, 2)
    plan.attempts[1] = [Target(kind="app", ruri="", transport="", host="", port=0, to_value="",
                               app=AppTarget("voicemail", "1002"))]
    reached = []
    w, rung, _, no_answer = walker(plan, clock, apps=lambda t: reached.append(t.app.kind) or True)
    w.start()
    clock.advance(2.5)
    assert reached == ["voicemail"] and w.stopped and no_answer == []
    # without an application handler the target is skipped: nothing can ring, the fail rule ends it
    clock2 = Clock()
    w2, _, _, no_answer2 = walker(plan, clock2)
    w2.start()
    clock2.advance(2.5)
    assert no_answer2 == [pytest.approx(2.0)]


def test_hold_stops_the_clock_and_resume_goes_on_as_no_answer():
    clock = Clock()
    w, rung, _, no_answer = walker(seq_plan(2, 2), clock)
    w.start()
    clock.advance(1)
    w.hold()
    rung[0].final = 200
    clock.advance(10)
    assert len(rung) == 1 and no_answer == []
    assert w.resume("noanswer") is None and rung[-1].target.ruri == "sip:m1@x"
    clock.advance(2.5)
    assert no_answer
    w2, rung2, _, _ = walker(seq_plan(2), Clock())
    w2.start()
    w2.hold()
    assert w2.resume("noanswer") == 480 and w2.stopped


@pytest.mark.parametrize("codes,want", [([486, 480], "busy"), ([408, 487], "noanswer"), ([503], "fail")])
def test_outcome(codes, want):
    assert outcome(codes) == want


def test_best_failure_prefers_six_hundreds_then_busy():
    assert best_failure([486, 603]) == 603 and best_failure([480, 486]) == 486 and best_failure([]) == 480
