"""What the SBC remembers of an in-dialog request it forwards without transactions, sans-I/O.

A BYE needs no transaction pair at the SBC when its sender retransmits it end to end
(RFC 3261 §16.11: a stateless proxy relays each retransmission, the receiver's server
transaction absorbs them). What topology hiding still needs is the answer's way back:
the Via list the request arrived with and its flow, found by the branch the SBC gave the
forwarded copy. A retransmission finds the branch given the first copy, so the receiver
sees one transaction. Entries live between ``ttl`` and twice ``ttl`` (two generations
swapped wholesale: no timer, no per-entry expiry).
"""

from __future__ import annotations

from node.sip.flow import Flow

#: RFC 3261 Timer F (64*T1): a sender stops retransmitting a non-INVITE request by then
TTL = 32.0
#: entries per generation before it is swapped early (memory bound under a flood)
MAX_ENTRIES = 200_000


class Forwarded:
    """Where the answers to one statelessly forwarded request go."""

    __slots__ = ("vias", "source", "target", "call_id", "inbound", "node_id", "tenant", "answered")

    def __init__(self, vias: list[tuple[str, str]], source: Flow, target: Flow, call_id: str, inbound: bool,
                 node_id: str, tenant: str) -> None:
        #: the request's Via headers as the sender's answer must carry them (received/rport set)
        self.vias = vias
        self.source = source
        self.target = target
        self.call_id = call_id
        self.inbound = inbound
        self.node_id = node_id
        self.tenant = tenant
        #: the final status already passed back (its retransmissions are relayed, not counted)
        self.answered = 0


class StatelessTable:
    """Branch → ``Forwarded``, and the sender's (branch, address) → our branch."""

    def __init__(self, ttl: float = TTL, max_entries: int = MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._new: dict[str, Forwarded] = {}
        self._old: dict[str, Forwarded] = {}
        self._keys_new: dict[tuple, str] = {}
        self._keys_old: dict[tuple, str] = {}
        self._rotate_at: float | None = None

    def add(self, key: tuple, branch: str, entry: Forwarded, now: float) -> None:
        if self._rotate_at is None:
            self._rotate_at = now + self.ttl
        elif now >= self._rotate_at or len(self._new) >= self.max_entries:
            self._old, self._keys_old = self._new, self._keys_new
            self._new, self._keys_new = {}, {}
            self._rotate_at = now + self.ttl
        self._new[branch] = entry
        self._keys_new[key] = branch

    def branch_for(self, key: tuple) -> str | None:
        """The branch given to an earlier copy of this request (a retransmission), if any."""
        hit = self._keys_new.get(key)
        return hit if hit is not None else self._keys_old.get(key)

    def get(self, branch: str) -> Forwarded | None:
        hit = self._new.get(branch)
        return hit if hit is not None else self._old.get(branch)

    def __len__(self) -> int:
        return len(self._new) + len(self._old)
