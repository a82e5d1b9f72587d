"""Opening the node's backend by name (``NodeConfig.backend``) through the entry point group
``hivepbx.backends``, so a cluster backend plugs in without node/ importing it.

A factory takes the NodeConfig and returns (or returns an awaitable of) an object with the
node.ports.Backend attributes. What it leaves out the runtime fills in from the embedded
backend: CDRs in the node's SQLite until a cluster CdrStore exists, and single-node
membership/election.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from importlib.metadata import entry_points

GROUP = "hivepbx.backends"


def open_embedded_backend(cfg):
    """The built-in backend: SQLite in ``cfg.data_dir``, alone in its cluster."""
    from node.embedded import open_embedded

    return open_embedded(cfg.data_dir)


def backend_factory(name: str):
    """The factory registered as ``name``; ValueError naming the installed ones if none is."""
    found = {ep.name: ep for ep in entry_points(group=GROUP)}
    if name in found:
        return found[name].load()
    if name == "embedded":  # also without the package installed (a bare checkout)
        return open_embedded_backend
    known = ", ".join(sorted(found | {"embedded": None}))
    raise ValueError(f"unknown backend {name!r}: installed backends are {known}")


@dataclass(slots=True)
class NodeBackend:
    """The node.ports.Backend the runtime works with, whatever opened it."""

    config: object
    locations: object
    cdrs: object
    membership: object
    election: object
    inner: object
    local: object = None  # the embedded backend lending its CdrStore, if any
    #: node.ports.EventBus shared by the nodes (Kafka), None when the backend has none: the
    #: runtime then runs ACD queues on an in-process bus and busy lamps stay on this node
    bus: object = None

    async def aclose(self) -> None:
        try:
            if hasattr(self.inner, "aclose"):
                await self.inner.aclose()
            else:
                self.inner.close()
        finally:
            if self.local is not None:
                self.local.close()

    def close(self) -> None:
        """For a backend without network connections (embedded) only."""
        if hasattr(self.inner, "aclose"):
            raise RuntimeError("this backend must be closed with aclose()")
        self.inner.close()


async def open_backend(cfg) -> NodeBackend:
    got = backend_factory(cfg.backend)(cfg)
    if inspect.isawaitable(got):
        got = await got
    local = None
    cdrs = getattr(got, "cdrs", None)
    try:
        if cdrs is None:
            from node.embedded import open_embedded

            local = open_embedded(cfg.data_dir)
            cdrs = local.cdrs
        membership = getattr(got, "membership", None)
        election = getattr(got, "election", None)
        if membership is None or election is None:
            from node.embedded.membership import EmbeddedMembership

            alone = EmbeddedMembership(cfg.node_id)
            membership = membership or alone
            election = election or alone
    except BaseException:
        if hasattr(got, "aclose"):
            await got.aclose()
        else:
            got.close()
        raise
    return NodeBackend(got.config, got.locations, cdrs, membership, election, got, local, getattr(got, "bus", None))
