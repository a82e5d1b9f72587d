"""Prometheus metrics of the edge's protection, with bounded labels (see observability/metrics.py).

``hivepbx_sbc_blocked{cause}`` counts every message or call the edge refused, by the fixed
set of causes in ``verdict.CAUSES``; ``hivepbx_sbc_bans{cause}`` counts bans started. The
table sizes are read at scrape time through callbacks, costing nothing per packet.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

from sbc.protection.verdict import CAUSES

BLOCKED = Counter("hivepbx_sbc_blocked", "Messages or calls the SBC refused, by cause", ["cause"])
BANS = Counter("hivepbx_sbc_bans", "Source addresses banned by the SBC, by cause", ["cause"])
BANNED_NOW = Gauge("hivepbx_sbc_banned_sources", "Source addresses in the SBC's ban table")
TRACKED = Gauge("hivepbx_sbc_tracked_sources", "Source addresses in the SBC's rate tables")

_BLOCKED = {c: BLOCKED.labels(c) for c in CAUSES}
_BANS = {c: BANS.labels(c) for c in CAUSES}


def blocked(cause: str) -> None:
    _BLOCKED[cause].inc()


def banned(cause: str) -> None:
    _BANS[cause].inc()


def track_tables(bans: Callable[[], int], sources: Callable[[], int]) -> None:
    """Read the table sizes at scrape time (the latest Guard built wins, as one SBC runs one)."""
    BANNED_NOW.set_function(bans)
    TRACKED.set_function(sources)


UNTRACKED = Counter(
    "hivepbx_sbc_tenant_calls_untracked",
    "Calls admitted without counting them against their tenant (the shared counter table was full)",
)
POLICY_LOADS = Counter("hivepbx_sbc_tenant_policy_loads", "Loads of the tenants' edge policies from the cluster, by result",
                       ["result"])
POLICIES = Gauge("hivepbx_sbc_tenant_policies", "Tenants with an edge policy in force at this SBC")


def untracked() -> None:
    UNTRACKED.inc()

DEFERRED = Counter(
    "hivepbx_sbc_tenant_calls_deferred",
    "Calls refused under a tenant's max_calls because this SBC host's share of the free slots awaited a publish",
)
CLUSTER_PUBLISHES = Counter("hivepbx_sbc_tenant_counts_publishes",
                            "Publishes of this SBC host's tenant counts to etcd, by what and result", ["what", "result"])
CLUSTER_ERRORS = Counter("hivepbx_sbc_tenant_counts_etcd_errors",
                         "Failed etcd operations of the cross-host tenant counts (enforcing on the last view meanwhile)",
                         ["op"])
CLUSTER_VIEW_AGE = Gauge("hivepbx_sbc_tenant_counts_view_age_seconds",
                         "Seconds since this SBC host last read the other hosts' tenant counts from etcd")
CLUSTER_HOSTS = Gauge("hivepbx_sbc_tenant_counts_hosts", "SBC hosts publishing tenant counts, as this host last saw")


def deferred() -> None:
    DEFERRED.inc()
