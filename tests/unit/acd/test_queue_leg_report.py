"""Call control reports an agent's leg as ended only once the phone can no longer answer it:
a CANCEL waits for a provisional response (RFC 3261 §9.1), a 2xx that crossed it is BYEd."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

from node.pbx import queue_calls
from node.pbx.app_call import AppContext
from node.pbx.call import Leg


def _ctx(*legs: Leg) -> AppContext:
    ctx = AppContext.__new__(AppContext)
    ctx.call = SimpleNamespace(id="x", legs=list(legs))
    return ctx


def _leg(**state) -> Leg:
    leg = Leg(None, None, None)  # type: ignore[arg-type]
    leg.invite = object()  # type: ignore[assignment]
    for k, v in state.items():
        setattr(leg, k, v)
    return leg


def test_a_leg_is_up_until_its_final_response_or_bye() -> None:
    assert not _ctx().legs_up()  # never rang anybody
    assert not _ctx(Leg(None, None, None)).legs_up()  # type: ignore[arg-type]  # INVITE never sent
    assert _ctx(_leg(cancelled=True, cancel_pending=True)).legs_up()  # CANCEL waits for a 1xx
    assert _ctx(_leg(provisional=True, cancelled=True)).legs_up()  # CANCEL sent, no 487 yet
    assert not _ctx(_leg(final=487)).legs_up()
    assert not _ctx(_leg(final=408)).legs_up()  # Timer B: the INVITE never got an answer
    assert _ctx(_leg(final=200)).legs_up()  # answered, not hung up
    assert not _ctx(_leg(final=200, bye_sent=True)).legs_up()
    assert not _ctx(_leg(bye_sent=True)).legs_up()  # a 2xx after the caller left: ACKed and BYEd
    assert _ctx(_leg(final=486), _leg()).legs_up()


class _Acd:
    def __init__(self) -> None:
        self.sent: list[tuple] = []

    async def left(self, tenant: int, call: str, *, legs: bool = False) -> None:
        self.sent.append(("left", call, legs))

    async def declined(self, tenant: int, call: str, agent: str) -> None:
        self.sent.append(("declined", call, agent))


async def test_caller_left_reports_the_agent_leg_once_it_is_down(monkeypatch) -> None:
    monkeypatch.setattr(queue_calls, "_LEG_POLL", 0.01)
    leg = _leg(cancelled=True, cancel_pending=True)
    acd = _Acd()
    task = asyncio.ensure_future(queue_calls._caller_left(_ctx(leg), acd, 1, "x", "2001"))  # type: ignore[arg-type]
    await asyncio.sleep(0.1)
    assert acd.sent == [("left", "x", True)]  # the phone has not even sent 180: the agent stays held
    leg.provisional = True
    await asyncio.sleep(0.05)
    assert not task.done()  # CANCEL out, 487 not in
    leg.final = 487
    await asyncio.wait_for(task, 2)
    assert acd.sent == [("left", "x", True), ("declined", "x", "2001")]


async def test_a_leg_that_never_ends_is_reported_after_the_wait(monkeypatch) -> None:
    monkeypatch.setattr(queue_calls, "_LEG_POLL", 0.01)
    monkeypatch.setattr(queue_calls, "_LEG_END_WAIT", 0.1)
    acd = _Acd()
    await asyncio.wait_for(queue_calls._caller_left(_ctx(_leg()), acd, 1, "x", "2001"), 2)  # type: ignore[arg-type]
    assert acd.sent == [("left", "x", True), ("declined", "x", "2001")]


async def test_a_withdrawn_offer_is_reported_beside_the_next_one(monkeypatch) -> None:
    """The caller's next offer does not wait for the withdrawn one's leg (a phone that never
    answers holds it until Timer B): only that agent stays held until its leg is down."""
    monkeypatch.setattr(queue_calls, "_LEG_POLL", 0.01)
    old = _leg(cancelled=True, cancel_pending=True)
    ctx = _ctx(old)
    acd = _Acd()
    task = asyncio.ensure_future(queue_calls._declined_once_down(ctx, acd, 1, "x", "2001", ctx.open_legs()))  # type: ignore[arg-type]
    ctx.call.legs.append(_leg())  # the next agent rings meanwhile, and stays ringing
    await asyncio.sleep(0.05)
    assert acd.sent == []
    old.final = 408
    await asyncio.wait_for(task, 2)  # the new leg still up does not hold the old agent's report
    assert acd.sent == [("declined", "x", "2001")]
