"""The node list from cluster membership (node.ports.Membership, e.g. etcd).

Nodes join the membership with their SIP listeners (node/runtime/app.py ``_member_info``)
and vanish from it within the lease TTL when they die, so the SBC learns new nodes and
drops dead ones without configuration. ``[[nodes]]`` entries with the same id add the
labels membership does not carry (dc, weight, transport preference).

The etcd implementation lives in cluster/; it is opened by module name so the SBC does not
depend on the cluster package unless ``[etcd]`` is configured.
"""

from __future__ import annotations

import importlib
import logging
from collections.abc import Callable

from sbc.config import NodeTarget, SbcConfig

log = logging.getLogger("hivepbx.sbc")

_WILDCARDS = ("0.0.0.0", "::", "")


def node_from_member(node_id: str, info: dict, labels: dict[str, NodeTarget]) -> NodeTarget | None:
    """A NodeTarget from a member's info (``sip``: ["udp:host:port", ...]), or None when it
    names no address the SBC could reach."""
    base = labels.get(node_id)
    want = base.transport if base else "udp"
    entries = []
    for item in info.get("sip") or ():
        transport, _, rest = str(item).partition(":")
        host, _, port = rest.rpartition(":")
        host = host.strip("[]")
        if host in _WILDCARDS:
            host = info.get("advertise_address") or ""
        if transport in ("udp", "tcp") and host and port.isdigit():
            entries.append((transport, host, int(port)))
    if not entries:
        return None
    transport, host, port = next((e for e in entries if e[0] == want), entries[0])
    dc = base.dc if base else str(info.get("dc", ""))
    weight = base.weight if base else int(info.get("weight", 1) or 1)
    return NodeTarget(node_id, host, port, transport, dc, max(1, weight))


class MembershipFeed:
    """Keeps the SBC's node list equal to the membership's live nodes."""

    def __init__(self, membership, apply: Callable[[list[NodeTarget]], None], labels: dict[str, NodeTarget]) -> None:
        self.membership = membership
        self.apply = apply
        self.labels = labels
        self._unsubscribe: Callable[[], None] | None = None

    def start(self) -> None:
        self._unsubscribe = self.membership.watch(self._changed)
        self._changed("start", "", None)

    def _changed(self, event: str, node_id: str, info: dict | None) -> None:
        nodes = []
        for nid, minfo in sorted(self.membership.members().items()):
            n = node_from_member(nid, minfo or {}, self.labels)
            if n is not None:
                nodes.append(n)
        if event in ("joined", "left"):
            log.info("node %s %s the cluster", node_id, event, extra={"node": node_id})
        self.apply(nodes)

    def stop(self) -> None:
        if self._unsubscribe is not None:
            self._unsubscribe()
            self._unsubscribe = None


async def open_etcd_membership(cfg: SbcConfig, sbc_id: str):
    """A watching (never joining) etcd membership view on the nodes' key prefix, on its own
    client; the caller closes both with ``await close()``."""
    etcd = importlib.import_module("cluster.etcd.client")
    membership_mod = importlib.import_module("cluster.etcd.membership")

    async def build(client):
        m = membership_mod.EtcdMembership(client, etcd.Keys(cfg.etcd_prefix), sbc_id)
        await m.start()
        return m, m.close

    return await etcd.open_with_client(list(cfg.etcd_endpoints), build)
