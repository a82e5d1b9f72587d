"""The chaos drill (chaos/drill.py), shortened: three real node processes on etcd and tansu, a
shared queue fed through every node, one node SIGKILLed mid-load. The drill's own verdict
must hold: no agent offered two calls at once, survivors answer in join order, the dead node
leaves the membership, and every call that ended has its CDR exactly once (the dead node's
after its spool replays)."""

from __future__ import annotations

import pytest

from chaos.drill import drill

pytestmark = pytest.mark.interop


async def test_node_killed_mid_load(tmp_path, peers):  # peers: SIPp is there (strict skips)
    rep = await drill(calls_per_node=6, rate=1.0, n_agents=3, hold_ms=3000, kill_after=4.0, work=tmp_path)
    print(rep.text())
    assert rep.agents_double_offered == 0, rep.text()
    assert rep.order_inversions == 0, rep.text()
    assert rep.survivor_calls_answered_by_agent > 0, rep.text()
    assert rep.left_membership_after_s is not None and rep.left_membership_after_s < 10, rep.text()
    assert rep.calls_ended_before_kill_or_on_survivors > 0, rep.text()
    assert rep.cdrs_found_for_them == rep.calls_ended_before_kill_or_on_survivors, rep.text()
    assert rep.cdrs_duplicated == 0, rep.text()
    assert rep.passed, rep.text()
