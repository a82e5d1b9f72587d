"""Prometheus metrics of the etcd backend (prometheus_client's default registry, like
observability.metrics). Labels come from fixed sets: ``view`` is config, locations or members."""

from __future__ import annotations

from prometheus_client import Counter, Gauge

VIEWS = ("config", "locations", "members")

WATCH_RESYNCS = Counter(
    "hivepbx_etcd_watch_resyncs", "Full reloads of an etcd-backed view (start, broken or lagging watch)", ["view"]
)
VIEW_REVISION = Gauge("hivepbx_etcd_view_revision", "etcd revision an in-memory view reflects", ["view"])
TXN_CONFLICTS = Counter(
    "hivepbx_etcd_txn_conflicts", "Configuration transactions retried because another writer came first"
)
REGISTRATION_LEASES = Gauge("hivepbx_etcd_registration_leases", "Leases this node holds for registrations")
CLUSTER_MEMBERS = Gauge("hivepbx_cluster_members", "Live nodes of the cluster as this node sees them")

_RESYNC = {v: WATCH_RESYNCS.labels(v) for v in VIEWS}
_REVISION = {v: VIEW_REVISION.labels(v) for v in VIEWS}


def resynced(view: str) -> None:
    child = _RESYNC.get(view)
    if child is not None:
        child.inc()


def revision(view: str, rev: int) -> None:
    child = _REVISION.get(view)
    if child is not None:
        child.set(rev)
