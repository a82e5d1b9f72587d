"""Prometheus view of the relay: counters read at scrape time, never touched per packet.

The relay counts in plain integers on its sockets; this collector sums them (live sessions
plus the totals folded in when sessions close) whenever /metrics is scraped. Module-level
so that registering happens once per process, like ``prometheus_client`` metrics do.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Iterator

from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from node.rtp_engine.relay import RtpRelay

_FIELDS = ("packets_in", "bytes_in", "packets_out", "bytes_out", "dropped_source",
           "dropped_no_destination", "dropped_send", "relatches")
_relays: "weakref.WeakSet[RtpRelay]" = weakref.WeakSet()
#: what relays that are gone had counted: exported counters never go down
_retired: dict[str, int] = dict.fromkeys((*_FIELDS, "exhausted"), 0)
_opened = 0


def track(relay: "RtpRelay") -> None:
    """Include ``relay`` in the exported metrics for as long as it lives, and its counts after."""
    _relays.add(relay)
    weakref.finalize(relay, _retire, relay.closed_totals, relay.pool)


def _retire(closed_totals, pool) -> None:
    for k in _FIELDS:
        _retired[k] += getattr(closed_totals, k)
    _retired["exhausted"] += pool.exhausted


def session_opened() -> None:
    global _opened
    _opened += 1


class RelayCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        t = {k: _retired[k] for k in _FIELDS}
        active = ports_free = ports_used = idle = 0
        exhausted = _retired["exhausted"]
        opened = _opened
        for relay in list(_relays):
            totals = relay.totals()
            for k in _FIELDS:
                t[k] += getattr(totals, k)
            active += relay.session_count
            ports_free += relay.pool.available
            ports_used += relay.pool.in_use
            idle += relay.idle_pairs
            exhausted += relay.pool.exhausted

        packets = CounterMetricFamily("hivepbx_rtp_packets", "RTP/RTCP packets through the relay", labels=["direction"])
        packets.add_metric(["in"], t["packets_in"])
        packets.add_metric(["out"], t["packets_out"])
        yield packets
        octets = CounterMetricFamily("hivepbx_rtp_bytes", "RTP/RTCP bytes through the relay", labels=["direction"])
        octets.add_metric(["in"], t["bytes_in"])
        octets.add_metric(["out"], t["bytes_out"])
        yield octets
        dropped = CounterMetricFamily("hivepbx_rtp_dropped_packets", "Packets the relay dropped", labels=["reason"])
        dropped.add_metric(["foreign_source"], t["dropped_source"])
        dropped.add_metric(["no_destination"], t["dropped_no_destination"])
        dropped.add_metric(["send"], t["dropped_send"])
        yield dropped
        yield CounterMetricFamily("hivepbx_rtp_relatches", "Latched sources replaced by a new one", value=t["relatches"])
        yield CounterMetricFamily("hivepbx_rtp_sessions_opened", "Relay sessions opened", value=opened)
        yield GaugeMetricFamily("hivepbx_rtp_sessions_active", "Relay sessions open now", value=active)
        ports = GaugeMetricFamily("hivepbx_rtp_ports", "RTP port pairs of the pool", labels=["state"])
        ports.add_metric(["free"], ports_free)
        ports.add_metric(["in_use"], ports_used)
        yield ports
        yield GaugeMetricFamily(
            "hivepbx_rtp_idle_pairs", "Free port pairs kept bound for the next calls (counted as free)", value=idle
        )
        yield CounterMetricFamily(
            "hivepbx_rtp_port_exhaustion", "Sessions refused for want of an RTP port", value=exhausted
        )


COLLECTOR = RelayCollector()
REGISTRY.register(COLLECTOR)
