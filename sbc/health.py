"""Node liveness, sans-I/O: OPTIONS probe schedule and results, passive failures, membership.

A node is up until ``down_after`` probes in a row fail (no answer within the probe timeout,
or 503); a failed call attempt (timeout, 503) takes it down at once, since waiting for
the next probes would send more calls into the hole. It comes back after ``up_after``
good probes in a row. When a cluster membership view is given, a node missing from it is
down whatever its probes say (it left or its lease expired).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass


@dataclass(slots=True)
class NodeState:
    up: bool = True
    fails: int = 0
    goods: int = 0
    next_probe: float = 0.0
    in_flight: bool = False
    #: a 503 with Retry-After holds the node down until then, whatever probes say
    hold_until: float = 0.0
    changed_at: float = 0.0


class Health:
    def __init__(
        self,
        node_ids: Iterable[str],
        *,
        interval: float = 2.0,
        down_after: int = 2,
        up_after: int = 2,
        on_change: Callable[[str, bool], None] | None = None,
    ) -> None:
        self.interval = interval
        self.down_after = down_after
        self.up_after = up_after
        self.on_change = on_change or (lambda node_id, up: None)
        self.states: dict[str, NodeState] = {}
        self.members: set[str] | None = None
        self.set_nodes(node_ids)

    def set_nodes(self, node_ids: Iterable[str]) -> None:
        ids = list(node_ids)
        self.states = {i: self.states.get(i) or NodeState() for i in ids}

    def set_members(self, members: Iterable[str] | None) -> None:
        """The cluster's live node ids (None: no membership source, probes alone decide)."""
        before = {i: self.is_up(i) for i in self.states}
        self.members = None if members is None else set(members)
        for i, was in before.items():
            if self.is_up(i) != was:
                self.on_change(i, not was)

    def is_up(self, node_id: str) -> bool:
        st = self.states.get(node_id)
        if st is None:
            return False
        if self.members is not None and node_id not in self.members:
            return False
        return st.up

    # --- probing
    def due(self, now: float) -> list[str]:
        """Nodes whose probe should be sent now (the caller then calls ``probe_sent``)."""
        return [i for i, st in self.states.items() if not st.in_flight and now >= st.next_probe]

    def probe_sent(self, node_id: str, now: float) -> None:
        st = self.states[node_id]
        st.in_flight = True
        st.next_probe = now + self.interval

    def probe_result(self, node_id: str, ok: bool, now: float) -> None:
        st = self.states.get(node_id)
        if st is None:
            return
        st.in_flight = False
        if ok and now >= st.hold_until:
            st.fails = 0
            st.goods += 1
            if not st.up and st.goods >= self.up_after:
                self._set(node_id, st, True, now)
        elif not ok:
            st.goods = 0
            st.fails += 1
            if st.up and st.fails >= self.down_after:
                self._set(node_id, st, False, now)

    def next_deadline(self) -> float | None:
        pending = [st.next_probe for st in self.states.values() if not st.in_flight]
        return min(pending) if pending else None

    # --- passive
    def failed(self, node_id: str, now: float, retry_after: float = 0.0) -> None:
        """A request to the node timed out or got 503: down now, probes bring it back."""
        st = self.states.get(node_id)
        if st is None:
            return
        st.goods = 0
        st.fails = max(st.fails, self.down_after)
        st.hold_until = max(st.hold_until, now + retry_after)
        if st.up:
            self._set(node_id, st, False, now)

    def revive(self, now: float, after: float) -> list[str]:
        """Without probes, a node taken down passively is tried again ``after`` seconds later
        (and past its Retry-After): otherwise nothing would ever bring it back."""
        back = []
        for node_id, st in self.states.items():
            if not st.up and now >= st.changed_at + after and now >= st.hold_until:
                st.fails = 0
                self._set(node_id, st, True, now)
                back.append(node_id)
        return back

    def suspect(self, node_id: str, now: float) -> None:
        """A request went unanswered where a slow node is possible: counts as one failed probe."""
        st = self.states.get(node_id)
        if st is None:
            return
        st.goods = 0
        st.fails += 1
        if st.up and st.fails >= self.down_after:
            self._set(node_id, st, False, now)

    def _set(self, node_id: str, st: NodeState, up: bool, now: float) -> None:
        was = self.is_up(node_id)
        st.up = up
        st.changed_at = now
        if self.is_up(node_id) != was:
            self.on_change(node_id, up)
