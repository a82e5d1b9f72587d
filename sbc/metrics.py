"""Prometheus metrics of the SBC's signalling core (labels bounded as in observability/metrics.py).

``node`` labels come from the configured node list (a handful of ids), methods from the
fixed SIP method set, ``side`` is outside/inside. No tenant label (see observability/metrics.py).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

from observability.metrics import SIP_METHODS

REQUESTS = Counter("hivepbx_sbc_requests", "SIP requests received by the SBC", ["method", "side"])
RESPONSES = Counter("hivepbx_sbc_responses", "SIP responses forwarded by the SBC", ["class", "side"])
FORWARDED = Counter("hivepbx_sbc_forwarded", "Requests from outside forwarded to a node", ["node", "method"])
NODE_UP = Gauge("hivepbx_sbc_node_up", "1 when the SBC considers the node alive", ["node"])
FAILOVERS = Counter("hivepbx_sbc_failovers", "Requests moved to another node", ["reason"])
PROBES = Counter("hivepbx_sbc_probes", "OPTIONS probes of nodes by result", ["result"])
UNROUTABLE = Counter("hivepbx_sbc_unroutable", "Requests the SBC could not route", ["reason"])

_METHODS = frozenset(SIP_METHODS)
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other", "other", "other")
FAILOVER_REASONS = ("timeout", "503", "transport")


def request(method: str, side: str) -> None:
    REQUESTS.labels(method if method in _METHODS else "other", side).inc()


def response(status: int, side: str) -> None:
    RESPONSES.labels(_CLASSES[min(status // 100, 9)], side).inc()


def forwarded(node_id: str, method: str) -> None:
    FORWARDED.labels(node_id, method if method in _METHODS else "other").inc()


def node_up(node_id: str, up: bool) -> None:
    NODE_UP.labels(node_id).set(1 if up else 0)


def failover(reason: str) -> None:
    FAILOVERS.labels(reason if reason in FAILOVER_REASONS else "other").inc()


def probe(ok: bool) -> None:
    PROBES.labels("ok" if ok else "failed").inc()


def unroutable(reason: str) -> None:
    UNROUTABLE.labels(reason).inc()
