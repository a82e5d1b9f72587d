"""Membership and leader election of a single node: it is the only member and always leads.

Lets code that runs singleton jobs (``async with election.campaign(job)``) be written once
for both the embedded node and a cluster.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator, Callable

from node.ports import Leadership


class EmbeddedMembership:
    """node.ports.Membership and node.ports.LeaderElection for a node alone."""

    def __init__(self, node_id: str = "local") -> None:
        self.node_id = node_id
        self._info: dict | None = None
        self._callbacks: list[Callable[[str, str, dict | None], None]] = []
        self._leaderships: dict[str, Leadership] = {}

    async def join(self, info: dict | None = None) -> None:
        fresh = self._info is None
        self._info = {"node_id": self.node_id, "joined_at": time.time(), **(info or {})}
        if fresh:
            for cb in list(self._callbacks):
                cb("joined", self.node_id, dict(self._info))

    async def leave(self) -> None:
        if self._info is None:
            return
        self._info = None
        for lead in self._leaderships.values():
            lead.lost.set()
        for cb in list(self._callbacks):
            cb("left", self.node_id, None)

    def members(self) -> dict[str, dict]:
        return {} if self._info is None else {self.node_id: dict(self._info)}

    def watch(self, callback: Callable[[str, str, dict | None], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def is_leader(self, job: str) -> bool:
        lead = self._leaderships.get(job)
        return lead is not None and not lead.lost.is_set()

    @contextlib.asynccontextmanager
    async def campaign(self, job: str) -> AsyncIterator[Leadership]:
        if job in self._leaderships:
            raise RuntimeError(f"already campaigning for {job!r}")
        lead = self._leaderships[job] = Leadership(job)
        try:
            yield lead
        finally:
            self._leaderships.pop(job, None)
