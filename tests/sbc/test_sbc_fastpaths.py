"""The SBC's hot-path shortcuts give what the plain computations give (bench/sbc_inproc.py
measures them; these prove they changed nothing), and its GC policy does what it says."""

from __future__ import annotations

import gc
import itertools
import random

from sbc import heap
from sbc import topology as T
from sbc.config import NodeTarget
from sbc.dispatch import Dispatcher
from sbc.proxy import _digits


def _plain_candidates(d: Dispatcher, tenant: str, up: set[str]) -> list[NodeTarget]:
    ranked = d._hash_order(tenant)
    live = [n for n in ranked if n.id in up]
    if not live:
        return list(ranked)
    return sorted(live, key=lambda n: n.dc != ranked[0].dc)


def test_cached_hash_candidates_equal_sorting_the_live_nodes():
    rnd = random.Random(7)
    nodes = [NodeTarget(f"n{i}", f"10.0.0.{i}", 5060, dc=rnd.choice(("a", "b", "c")), weight=rnd.choice((1, 2)))
             for i in range(6)]
    d = Dispatcher(nodes)
    for tenant, k in itertools.product(("alpha.example", "beta.example", "t3"), range(40)):
        up = {n.id for n in nodes if rnd.random() < 0.6}
        got = d.candidates(tenant, lambda i: i in up)
        assert got == _plain_candidates(d, tenant, up), (tenant, up)
        got.clear()  # the caller consumes its list: the cache must not be that list
    assert d.candidates("alpha.example", lambda i: True) == _plain_candidates(d, "alpha.example", {n.id for n in nodes})


def test_token_of_reads_the_first_token_up_to_its_delimiter():
    assert T.token_of("sip:a@h;sbcn=abc", T.NODE_PARAM) == "abc"
    assert T.token_of("<sip:a@h;sbcn=x;lr>", T.NODE_PARAM) == "x"
    assert T.token_of("sip:a@h;sbcn=x?h=1", T.NODE_PARAM) == "x"
    assert T.token_of("sip:a@h;sbcn=x>;p=1", T.NODE_PARAM) == "x"
    assert T.token_of("sip:a@h;sbcn=", T.NODE_PARAM) is None
    assert T.token_of("sip:a@h;sbcnx=1;sbcn=2", T.NODE_PARAM) == "2"
    assert T.token_of("sip:a@h;sbcf=1", T.NODE_PARAM) is None
    assert T.token_of("sip:a@h", T.FLOW_PARAM) is None


def test_digit_count_matches_isdigit():
    for text in ("", "2000", "+1 (555) 777-0000", "abc", "x²3", "٣٤"):
        assert _digits(text) == sum(c.isdigit() for c in text)


def test_heap_keeper_freezes_and_collects_fully_only_when_due():
    before = gc.get_freeze_count()
    keeper = heap.HeapKeeper(0.0)
    try:
        keep = [[i] for i in range(100)]  # tracked objects that are alive at the tick
        keeper.tick(1.0, transactions=10**6)
        assert gc.get_freeze_count() >= before + 100
        assert keeper.full_collections == 0
        # quiet (few transactions) and FULL_QUIET s since the last one: a full collection
        keeper.tick(heap.FULL_QUIET + 1, transactions=0)
        assert keeper.full_collections == 1 and keeper.last_full == heap.FULL_QUIET + 1
        # busy: none until FULL_MAX, then one anyway
        keeper.tick(keeper.last_full + heap.FULL_QUIET + 1, transactions=10**6)
        assert keeper.full_collections == 1
        keeper.tick(keeper.last_full + heap.FULL_MAX, transactions=10**6)
        assert keeper.full_collections == 2
        del keep
    finally:
        gc.unfreeze()


def test_heap_settle_sets_the_young_threshold_only():
    old = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_threshold() == (heap.YOUNG_THRESHOLD, old[1], old[2])
    finally:
        gc.set_threshold(*old)
