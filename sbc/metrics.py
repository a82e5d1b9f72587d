"""Prometheus metrics of the SBC's signalling core (labels bounded as in observability/metrics.py).

``node`` labels come from the configured node list (a handful of ids), methods from the
fixed SIP method set, ``side`` is outside/inside. No tenant label (see observability/metrics.py).

The three counters every message touches (requests, responses, forwarded: about nine adds a
call) are counted in plain numbers and exported by a collector at scrape time: a
prometheus_client ``Counter.inc`` takes a lock and checks its argument, ~0.4 µs each, a few
per cent of the SBC's CPU per call. Only the event loop's thread counts them (the SBC is one
asyncio thread per worker process); a scrape from the HTTP thread reads a copy.
"""

from __future__ import annotations

import time

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client import metrics as _pm
from prometheus_client.metrics_core import CounterMetricFamily

from observability.metrics import SIP_METHODS


class PlainCounter:
    """A labelled counter for a hot path: ``labels(...)`` gives a cell, ``cell[0] += 1``
    counts. Exported exactly as a prometheus_client Counter of the same name, labels and
    ``_created`` series."""

    __slots__ = ("name", "documentation", "labelnames", "_cells")

    def __init__(self, name: str, documentation: str, labelnames: tuple[str, ...] | list[str],
                 registry=REGISTRY) -> None:
        self.name = name
        self.documentation = documentation
        self.labelnames = tuple(labelnames)
        self._cells: dict[tuple[str, ...], list] = {}
        if registry is not None:
            registry.register(self)

    def labels(self, *values: str) -> list:
        """The cell of these label values: ``[count, created]``; created on first use."""
        key = tuple(str(v) for v in values)
        if len(key) != len(self.labelnames):
            raise ValueError(f"{self.name}: expected labels {self.labelnames}, got {values!r}")
        cell = self._cells.get(key)
        if cell is None:
            cell = self._cells[key] = [0, time.time()]
        return cell

    def value(self, *values: str) -> float:
        """The count of these label values (0 if never counted)."""
        cell = self._cells.get(tuple(values))
        return float(cell[0]) if cell is not None else 0.0

    def describe(self):
        return [CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)]

    def collect(self):
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labelnames)
        created = getattr(_pm, "_use_created", True)
        for key, (count, since) in list(self._cells.items()):
            family.add_metric(key, float(count), created=since if created else None)
        yield family


REQUESTS = PlainCounter("hivepbx_sbc_requests", "SIP requests received by the SBC", ["method", "side"])
RESPONSES = PlainCounter("hivepbx_sbc_responses", "SIP responses forwarded by the SBC", ["class", "side"])
FORWARDED = PlainCounter("hivepbx_sbc_forwarded", "Requests from outside forwarded to a node", ["node", "method"])
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

# pre-bound cells: counting a message is a dict lookup and an add, no labels() call
_REQ = {(m, side): REQUESTS.labels(m, side) for m in (*SIP_METHODS, "other") for side in SIDES}
_RESP = {side: [RESPONSES.labels(c, side) for c in _CLASSES] for side in SIDES}
_FWD: dict[tuple[str, str], list] = {}


def request(method: str, side: str) -> None:
    c = _REQ.get((method, side))
    if c is None:
        c = _REQ[("other", side)]
    c[0] += 1


def response(status: int, side: str) -> None:
    _RESP[side][min(status // 100, 9)][0] += 1


def forwarded(node_id: str, method: str) -> None:
    key = (node_id, method)
    c = _FWD.get(key)
    if c is None:
        c = _FWD[key] = FORWARDED.labels(node_id, method if method in _METHODS else "other")
    c[0] += 1


def node_up(node_id: str, up: bool) -> None:
    NODE_UP.labels(node_id).set(1 if up else 0)


def failover(reason: str) -> None:
    FAILOVERS.labels(reason if reason in FAILOVER_REASONS else "other").inc()


def probe(ok: bool) -> None:
    PROBES.labels("ok" if ok else "failed").inc()


def unroutable(reason: str) -> None:
    UNROUTABLE.labels(reason).inc()
