"""Node choice (sbc/dispatch.py) and node liveness (sbc/health.py), sans-I/O."""

from __future__ import annotations

from collections import Counter

from sbc.config import NodeTarget, TenantPolicy
from sbc.dispatch import Dispatcher
from sbc.health import Health

NODES = (
    NodeTarget("a1", "10.0.0.1", dc="dc1"),
    NodeTarget("a2", "10.0.0.2", dc="dc1"),
    NodeTarget("b1", "10.0.1.1", dc="dc2"),
    NodeTarget("b2", "10.0.1.2", dc="dc2"),
)
TENANTS = [f"tenant{i}.example" for i in range(400)]


def up_all(_):
    return True


def test_hash_is_sticky_per_tenant_and_spreads_tenants():
    d = Dispatcher(NODES)
    firsts = {t: d.candidates(t, up_all)[0].id for t in TENANTS}
    again = Dispatcher(list(reversed(NODES)))  # another SBC, nodes listed in another order
    assert firsts == {t: again.candidates(t, up_all)[0].id for t in TENANTS}
    assert firsts["tenant1.example"] == d.candidates("TENANT1.example", up_all)[0].id  # domains are case-blind
    spread = Counter(firsts.values())
    assert set(spread) == {"a1", "a2", "b1", "b2"} and min(spread.values()) > 60


def test_a_node_death_moves_only_its_tenants_and_stays_in_its_datacenter():
    d = Dispatcher(NODES)
    before = {t: d.candidates(t, up_all)[0] for t in TENANTS}
    down = {"a1"}
    after = {t: d.candidates(t, lambda i: i not in down)[0] for t in TENANTS}
    for t in TENANTS:
        if before[t].id != "a1":
            assert after[t].id == before[t].id
        else:
            assert after[t].id == "a2", "failover left the datacenter while a sibling was alive"
    # the whole datacenter gone: then the other one
    after_dc = {t: d.candidates(t, lambda i: not i.startswith("a"))[0] for t in TENANTS if before[t].dc == "dc1"}
    assert {n.dc for n in after_dc.values()} == {"dc2"}


def test_candidates_list_live_nodes_home_datacenter_first():
    d = Dispatcher(NODES)
    for t in TENANTS[:50]:
        c = d.candidates(t, up_all)
        assert sorted(n.id for n in c) == ["a1", "a2", "b1", "b2"]
        home = c[0].dc
        assert [n.dc for n in c] == [home, home] + [c[2].dc] * 2 and c[2].dc != home


def test_no_live_node_still_gives_every_node():
    d = Dispatcher(NODES)
    assert len(d.candidates("x.example", lambda i: False)) == 4


def test_candidates_are_the_callers_to_consume():
    # the proxy pops the nodes it tries: that must never eat into the cached order
    d = Dispatcher(NODES)
    for is_up in (up_all, lambda i: False, lambda i: i == "b1"):
        first = d.candidates("x.example", is_up)
        expected = list(first)
        first.clear()
        assert d.candidates("x.example", is_up) == expected


def test_weights_bias_the_hash():
    nodes = (NodeTarget("heavy", "10.0.0.1", weight=3), NodeTarget("light", "10.0.0.2", weight=1))
    d = Dispatcher(nodes)
    spread = Counter(d.candidates(t, up_all)[0].id for t in TENANTS)
    assert spread["heavy"] > 2 * spread["light"]


def test_round_robin_follows_weights_and_skips_dead_nodes():
    nodes = (NodeTarget("x", "h1", weight=2), NodeTarget("y", "h2", weight=1), NodeTarget("z", "h3", weight=1))
    d = Dispatcher(nodes, mode="round_robin")
    picks = [d.candidates("t", up_all)[0].id for _ in range(40)]
    assert Counter(picks) == {"x": 20, "y": 10, "z": 10}
    assert picks[:4] != ["x", "x", "y", "z"]  # smooth: no burst to the heavy node
    picks = [d.candidates("t", lambda i: i != "y")[0].id for _ in range(30)]
    assert "y" not in picks and Counter(picks) == {"x": 20, "z": 10}


def test_static_tenant_pins_then_falls_back():
    d = Dispatcher(NODES, tenants={"pinned.example": TenantPolicy("static", ("b2", "a1"))})
    assert [n.id for n in d.candidates("pinned.example", up_all)] == ["b2", "a1", "b1", "a2"]
    assert d.candidates("pinned.example", lambda i: i != "b2")[0].id == "a1"
    # all pinned nodes down: the others, same datacenter as the first pinned node first
    assert [n.id for n in d.candidates("pinned.example", lambda i: i in ("a2", "b1"))] == ["b1", "a2"]


def test_static_order_is_kept_within_the_home_datacenter():
    d = Dispatcher(NODES, tenants={"p.example": TenantPolicy("static", ("a2", "a1"))})
    assert [n.id for n in d.candidates("p.example", up_all)][:2] == ["a2", "a1"]


# ------------------------------------------------------------------ health


def test_probes_take_a_node_down_and_back_up():
    changes = []
    h = Health(["n1"], interval=1.0, down_after=2, up_after=2, on_change=lambda i, up: changes.append((i, up)))
    assert h.due(0.0) == ["n1"]
    h.probe_sent("n1", 0.0)
    assert h.due(0.5) == []  # in flight
    h.probe_result("n1", False, 0.5)
    assert h.is_up("n1")  # one miss is not enough
    assert h.due(0.9) == [] and h.due(1.0) == ["n1"]
    h.probe_sent("n1", 1.0)
    h.probe_result("n1", False, 1.5)
    assert not h.is_up("n1") and changes == [("n1", False)]
    for t in (2.0, 3.0):
        h.probe_sent("n1", t)
        h.probe_result("n1", True, t + 0.1)
    assert h.is_up("n1") and changes[-1] == ("n1", True)


def test_a_failed_call_takes_a_node_down_at_once_and_503_holds_it():
    h = Health(["n1"], down_after=3, up_after=1)
    h.failed("n1", 10.0, retry_after=30)
    assert not h.is_up("n1")
    h.probe_result("n1", True, 20.0)  # good probe, but Retry-After is not over
    assert not h.is_up("n1")
    h.probe_result("n1", True, 41.0)
    assert h.is_up("n1")


def test_membership_overrides_probes():
    h = Health(["n1", "n2"])
    h.set_members(["n1"])
    assert h.is_up("n1") and not h.is_up("n2")
    h.set_members(None)
    assert h.is_up("n2")
    assert not h.is_up("unknown")


def test_a_preferred_live_node_comes_first_without_advancing_round_robin():
    nodes = (NodeTarget("x", "h1", dc="d1"), NodeTarget("y", "h2", dc="d2"), NodeTarget("z", "h3", dc="d1"))
    d = Dispatcher(nodes, mode="round_robin")
    first = d.candidates("t", up_all)[0].id
    c = d.candidates("t", up_all, prefer="y")
    assert c[0].id == "y" and sorted(n.id for n in c) == ["x", "y", "z"]
    assert d.candidates("t", up_all)[0].id != first  # the preferred pick did not count as a turn
    assert d.candidates("t", lambda i: i != "y", prefer="y")[0].id != "y"  # a dead preference is ignored


def test_a_suspect_node_goes_down_only_when_it_keeps_failing():
    h = Health(["n1"], down_after=2, up_after=1)
    h.suspect("n1", 1.0)
    assert h.is_up("n1")
    h.suspect("n1", 2.0)
    assert not h.is_up("n1")
    h.probe_result("n1", True, 3.0)
    assert h.is_up("n1")


# ------------------------------------------------------------------ membership


class FakeMembership:
    def __init__(self) -> None:
        self.live: dict[str, dict] = {}
        self.callbacks = []

    def members(self):
        return dict(self.live)

    def watch(self, cb):
        self.callbacks.append(cb)
        return lambda: self.callbacks.remove(cb)

    def change(self, event, node_id, info=None):
        if info is None:
            self.live.pop(node_id, None)
        else:
            self.live[node_id] = info
        for cb in list(self.callbacks):
            cb(event, node_id, info)


def test_membership_feeds_the_node_list_with_labels_from_the_config():
    from sbc.membership import MembershipFeed, node_from_member

    m = FakeMembership()
    m.live["pbx1"] = {"sip": ["tcp:10.0.0.11:5060", "udp:10.0.0.11:5060"]}
    seen = []
    feed = MembershipFeed(m, seen.append, {"pbx1": NodeTarget("pbx1", "x", dc="dc9", weight=4)})
    feed.start()
    assert seen[-1] == [NodeTarget("pbx1", "10.0.0.11", 5060, "udp", "dc9", 4)]
    m.change("joined", "pbx2", {"sip": ["udp:0.0.0.0:5070"], "advertise_address": "10.0.0.12"})
    assert [(n.id, n.host, n.port) for n in seen[-1]] == [("pbx1", "10.0.0.11", 5060), ("pbx2", "10.0.0.12", 5070)]
    m.change("left", "pbx1")
    assert [n.id for n in seen[-1]] == ["pbx2"]
    # a member naming no reachable address is left out, not guessed
    assert node_from_member("pbx3", {"sip": ["udp:0.0.0.0:5060"]}, {}) is None
    assert node_from_member("pbx3", {}, {}) is None
    feed.stop()
    assert m.callbacks == []


def test_without_probes_a_failed_node_is_tried_again_later():
    h = Health(["n1"], interval=0)
    h.failed("n1", 100.0, retry_after=30)
    assert h.revive(105.0, 10) == [] and not h.is_up("n1")
    assert h.revive(120.0, 10) == [] and not h.is_up("n1")  # Retry-After still running
    assert h.revive(131.0, 10) == ["n1"] and h.is_up("n1")
