"""Ringing a RoutePlan's attempts in order: which attempt rings now, for how long, and which
one comes next when it ends busy, unanswered or failed.

One place for everything that rings a plan (a call's B legs, node/pbx/call.py; an
application call's transfer, node/pbx/app_call.py; a new party for a call that is up,
node/pbx/outgoing.py), so hunt groups, forwarding and follow-me behave the same whichever
of them reaches the destination. Sans-I/O: the owner starts a target and cancels a leg
through callbacks, and time comes from an injected ``call_later``; a leg is any object with
``final`` (0 while it rings, else its final status) and ``target``.

* Plans with rules (node/pbx/dialplan.py): each attempt rings for its rule's ``ring``
  (0 = the owner's default ring time); when every leg of the attempt has failed, or its
  time is up, the rule names the next attempt for the outcome ('busy', 'noanswer', 'fail').
  Rules only ever point forward, so a walk cannot loop.
* Plans without rules (an extension's phones, outbound routes): the next attempt only when
  ``failover`` says so (by default: every trunk of the call failed in a way another carrier
  may not, an LCR list); the owner's own overall ring timer ends the call.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from node.pbx.routing import RoutePlan, Target

#: trunk failures worth trying the next route for (RFC 3261 §16.7 flavoured)
RETRY_STATUSES = frozenset((408, 500, 502, 503, 504))


def best_failure(codes: Iterable[int]) -> int:
    """RFC 3261 §16.7 flavoured: 6xx wins, then busy, then the lowest 4xx, then 5xx; a
    callee that never answered (408) is presented as 480."""
    codes = [c for c in codes if c >= 300] or [480]
    six = [c for c in codes if c >= 600]
    if six:
        return min(six)
    if 486 in codes:
        return 486
    fours = sorted(c for c in codes if 400 <= c < 500 and c != 408)
    if fours:
        return fours[0]
    if all(c == 408 for c in codes):
        return 480
    return min(codes)


def outcome(codes: Iterable[int]) -> str:
    """How a failed attempt ended, for its rule: busy, no answer, or anything else."""
    codes = list(codes)
    if any(c in (486, 600, 603) for c in codes):
        return "busy"
    if all(c in (408, 480, 487) for c in codes):
        return "noanswer"
    return "fail"


def trunk_failover(legs: list) -> bool:
    """Plans without rules: next route only when every trunk tried failed retryably."""
    trunks = [l for l in legs if l.target.kind == "trunk"]
    return bool(trunks) and all(l.final in RETRY_STATUSES for l in trunks)


def always_failover(legs: list) -> bool:
    return True


class AttemptWalker:
    """The attempt state of one ringing plan.

    ``ring(target)`` starts a target and returns its leg (None: unreachable, skipped);
    ``cancel(leg)`` stops a ringing leg; ``on_no_answer()`` is called when an attempt's ring
    time ran out and no rule leads on; ``on_app(target) -> bool`` is called when an attempt
    reaches an application target (voicemail after no answer: the walk ends there; False:
    the owner cannot run it). Without ``on_app`` application targets are skipped."""

    __slots__ = ("plan", "attempt", "current", "legs", "held", "stopped", "_ring", "_cancel",
                 "_call_later", "_default_ring", "_on_no_answer", "_on_app", "_failover", "_timer")

    def __init__(self, plan: RoutePlan, *, ring: Callable[[Target], Any], cancel: Callable[[Any], None],
                 call_later: Callable[..., Any], default_ring: float, on_no_answer: Callable[[], None],
                 on_app: Callable[[Target], bool] | None = None,
                 failover: Callable[[list], bool] = trunk_failover) -> None:
        self.plan = plan
        #: index of the attempt ringing now (-1 before the first)
        self.attempt = -1
        #: legs of the current attempt
        self.current: list = []
        #: every leg started, in order
        self.legs: list = []
        #: an answer awaits confirmation (node/pbx/answer_confirm.py): the attempt's clock stops
        self.held = False
        #: answered, given up or the owner ended: nothing more happens
        self.stopped = False
        self._ring = ring
        self._cancel = cancel
        self._call_later = call_later
        self._default_ring = default_ring
        self._on_no_answer = on_no_answer
        self._on_app = on_app
        self._failover = failover
        self._timer = None

    # ------------------------------------------------------------------ driving
    def start(self) -> bool:
        """Ring the first attempt that can ring; False when none can (nothing rings)."""
        return self._next()

    def _next(self) -> bool:
        plan = self.plan
        rules = plan.rules
        while True:
            self.attempt += 1
            if self.attempt >= len(plan.attempts):
                return False
            self.current = current = []
            for target in plan.attempts[self.attempt]:
                if target.app is not None and self._on_app is not None:
                    self.stop()
                    return self._on_app(target)
                if target.app is not None:
                    continue
                leg = self._ring(target)
                if leg is not None:
                    current.append(leg)
                    self.legs.append(leg)
            if any(l.final == 0 for l in current):
                self._arm()
                return True
            if rules:
                return self._goto(rules[self.attempt].on_fail)
            # no rules: an attempt that could not ring gives way to the next one

    def _goto(self, idx: int | None) -> bool:
        if idx is None or idx <= self.attempt:
            return False
        self._stop_timer()
        self.attempt = idx - 1
        return self._next()

    def leg_failed(self, leg) -> int | None:
        """``leg`` got its final failure. None: nothing for the owner to do (other forks still
        ring, the next attempt started, or an answer is being confirmed); otherwise the walk
        is over and the status to end with."""
        if self.stopped or self.held:
            return None
        rules = self.plan.rules
        if rules:
            current = self.current
            if leg not in current or any(l.final == 0 for l in current):
                return None  # a cancelled fork of an earlier attempt, or forks still ringing
            codes = [l.final for l in current]
            if self._goto(rules[self.attempt].next_for(outcome(codes))):
                return None
            self.stop()
            return best_failure(codes)
        legs = self.legs
        if any(l.final == 0 for l in legs):
            return None  # other forks still ringing
        if self._failover(legs) and self._next():
            return None
        self.stop()
        return best_failure(l.final for l in legs)

    # ------------------------------------------------------------------ answer confirmation
    def hold(self) -> None:
        """An answer of this attempt waits to be confirmed: its ring time no longer runs."""
        self.held = True
        self._stop_timer()

    def resume(self, how: str) -> int | None:
        """The answer was not confirmed: go on as if the attempt had ended ``how`` ('noanswer',
        'busy', 'fail'). Returns like ``leg_failed``."""
        self.held = False
        if self.stopped:
            return None
        rules = self.plan.rules
        if rules and self._goto(rules[self.attempt].next_for(how)):
            return None
        if not rules and self._failover(self.legs) and self._next():
            return None
        self.stop()
        return 486 if how == "busy" else 480

    # ------------------------------------------------------------------ timers
    def _arm(self) -> None:
        if not self.plan.rules:
            return
        ring = self.plan.rules[self.attempt].ring or self._default_ring
        self._stop_timer()
        self._timer = self._call_later(ring, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        if self.stopped or self.held:
            return
        for leg in self.current:
            if leg.final == 0:
                self._cancel(leg)
        if self._goto(self.plan.rules[self.attempt].on_noanswer):
            return
        self._on_no_answer()

    def _stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def stop(self) -> None:
        """Answered, given up, or the owner ended: no timer, no further attempt."""
        self.stopped = True
        self._stop_timer()
