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
TRANSACTIONS = Gauge("hivepbx_sbc_transactions", "Live SIP transactions in the SBC")
UNROUTABLE = Counter("hivepbx_sbc_unroutable", "Requests the SBC could not route", ["reason"])
RELAYED = Counter("hivepbx_sbc_relayed", "Messages handed to the sibling worker that owns their transaction")
SHED = Counter("hivepbx_sbc_shed", "New requests answered 503 because the SBC is past its capacity", ["cause"])

_METHODS = frozenset(SIP_METHODS)
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other", "other", "other")
FAILOVER_REASONS = ("timeout", "503", "408", "transport")
SIDES = ("outside", "inside")

# pre-bound children: counting a message is a dict lookup and an add, no labels() call
_REQ = {(m, side): REQUESTS.labels(m, side) for m in (*SIP_METHODS, "other") for side in SIDES}
_RESP = {side: [RESPONSES.labels(c, side) for c in _CLASSES] for side in SIDES}
_FWD: dict[tuple[str, str], object] = {}


def request(method: str, side: str) -> None:
    c = _REQ.get((method, side))
    if c is None:
        c = _REQ[("other", side)]
    c.inc()


def response(status: int, side: str) -> None:
    _RESP[side][min(status // 100, 9)].inc()


def forwarded(node_id: str, method: str) -> None:
    key = (node_id, method)
    c = _FWD.get(key)
    if c is None:
        c = _FWD[key] = FORWARDED.labels(node_id, method if method in _METHODS else "other")
    c.inc()


def node_up(node_id: str, up: bool) -> None:
    NODE_UP.labels(node_id).set(1 if up else 0)


def failover(reason: str) -> None:
    FAILOVERS.labels(reason if reason in FAILOVER_REASONS else "other").inc()


def probe(ok: bool) -> None:
    PROBES.labels("ok" if ok else "failed").inc()


def unroutable(reason: str) -> None:
    UNROUTABLE.labels(reason).inc()
