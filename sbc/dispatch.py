"""Which node gets a new call or registration: the ordered list of candidates, sans-I/O.

* ``hash``: weighted rendezvous (highest-random-weight) hashing of the tenant over the
  nodes. Every SBC computes the same order with no shared state, a tenant's calls and
  registrations meet on one node while it lives, and a node's death moves only its own
  tenants (to their second choice), not everyone's.
* ``round_robin``: smooth weighted round robin (each node's share follows its weight,
  without bursts to one node).
* ``static``: the tenant's configured node list, in order (then the others, should all of
  them be down).

Whatever the mode, the first candidate decides the "home" datacenter and the failover
candidates are ordered same-datacenter first, so a node failure does not push a tenant's
traffic across datacenters while a sibling in its own one is alive.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Callable, Iterable

from sbc.config import NodeTarget, TenantPolicy

_SCALE = float(1 << 64)
ORDER_CACHE = 50_000


def hrw_score(key: str, node: NodeTarget) -> float:
    """Weighted rendezvous score: -w / ln(u), u uniform in (0, 1) from hash(key, node)."""
    h = hashlib.blake2b(f"{key}\x00{node.id}".encode(), digest_size=8).digest()
    u = (int.from_bytes(h, "big") + 1) / (_SCALE + 2)
    return -node.weight / math.log(u)


class Dispatcher:
    def __init__(
        self,
        nodes: Iterable[NodeTarget],
        mode: str = "hash",
        tenants: dict[str, TenantPolicy] | None = None,
    ) -> None:
        self.mode = mode
        self.tenants = tenants or {}
        self.set_nodes(nodes)

    def set_nodes(self, nodes: Iterable[NodeTarget]) -> None:
        """Replace the node list (configuration reload or cluster membership change)."""
        self.nodes: tuple[NodeTarget, ...] = tuple(nodes)
        self._by_id = {n.id: n for n in self.nodes}
        self._rr_current: dict[str, float] = {n.id: 0.0 for n in self.nodes}
        #: tenant → its rendezvous order: fixed until the node list changes, so computed once
        self._orders: dict[str, list[NodeTarget]] = {}
        #: tenant → (its rendezvous order, the same stably sorted home datacenter first)
        self._hash_candidates: dict[str, tuple[list[NodeTarget], list[NodeTarget]]] = {}

    def node(self, node_id: str) -> NodeTarget | None:
        return self._by_id.get(node_id)

    def candidates(self, tenant: str, is_up: Callable[[str], bool], prefer: str | None = None) -> list[NodeTarget]:
        """Nodes to try for a new request of ``tenant``, best first; only nodes that are up,
        unless none is, when all are returned (trying beats refusing outright). ``prefer``:
        a node that must come first if it is up (the node a Call-ID already went to); round
        robin does not advance for it."""
        policy = self.tenants.get(tenant.lower()) if tenant else None
        mode = policy.mode if policy else self.mode
        first = self._by_id.get(prefer) if prefer else None
        if first is not None and is_up(first.id):
            rest = [n for n in self._hash_order(tenant) if n.id != first.id and is_up(n.id)]
            return [first] + sorted(rest, key=lambda n: n.dc != first.dc)
        if mode == "static" and policy is not None:
            ranked = [self._by_id[i] for i in policy.nodes if i in self._by_id]
            # then everyone else, by hash: a pinned tenant survives losing all its nodes
            rest = [n for n in self._hash_order(tenant) if n.id not in policy.nodes]
            ranked += rest
        elif mode == "round_robin":
            ranked = self._round_robin(is_up)
        else:
            # the common case, once per call: filtering the cached datacenter-sorted order
            # gives what sorting the live nodes would (a stable sort on the same key)
            hit = self._hash_candidates.get(tenant)
            if hit is None:
                ranked = self._hash_order(tenant)
                home = ranked[0].dc if ranked else None
                hit = (ranked, sorted(ranked, key=lambda n: n.dc != home))
                if len(self._hash_candidates) >= ORDER_CACHE:
                    self._hash_candidates.clear()
                self._hash_candidates[tenant] = hit
            up = [n for n in hit[1] if is_up(n.id)]
            return up if up else list(hit[0])
        up = [n for n in ranked if is_up(n.id)]
        if not up:
            return list(ranked)  # a copy: the caller pops from it, ranked may be the cached order
        home = ranked[0].dc
        if mode == "static" and policy is not None:
            # the operator's list is tried in its order; the rest same datacenter first
            pinned = [n for n in up if n.id in policy.nodes]
            return pinned + sorted((n for n in up if n.id not in policy.nodes), key=lambda n: n.dc != home)
        # stable sort: same datacenter as the first choice first, rank kept within each group
        return sorted(up, key=lambda n: n.dc != home)

    def _hash_order(self, key: str) -> list[NodeTarget]:
        order = self._orders.get(key)
        if order is None:
            low = key.lower()
            order = sorted(self.nodes, key=lambda n: hrw_score(low, n), reverse=True)
            if len(self._orders) >= ORDER_CACHE:
                self._orders.clear()  # bounded: tenants are many, a recomputation is cheap
            self._orders[key] = order
        return order

    def _round_robin(self, is_up: Callable[[str], bool]) -> list[NodeTarget]:
        """Smooth weighted round robin among the nodes that are up (nginx's algorithm)."""
        live = [n for n in self.nodes if is_up(n.id)] or list(self.nodes)
        if not live:
            return []
        cur = self._rr_current
        total = 0
        best = None
        for n in live:
            cur[n.id] = cur.get(n.id, 0.0) + n.weight
            total += n.weight
            if best is None or cur[n.id] > cur[best.id]:
                best = n
        cur[best.id] -= total
        i = self.nodes.index(best)
        # the chosen one first, then the others in ring order after it
        return [best] + [self.nodes[(i + k) % len(self.nodes)] for k in range(1, len(self.nodes))]
