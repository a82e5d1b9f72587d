"""Prometheus view of the media engine, read at scrape time (nothing counted per packet
beyond plain integers on the endpoints).

RTCP (node/media/rtcp.py) feeds histograms, not per-call series: a report arrives every few
seconds per call, and a call id or tenant label would make a series per call that lingers
after it. The per-call figures go to the structured log when the endpoint closes.
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Iterator

from prometheus_client import Counter, Histogram
from prometheus_client.core import REGISTRY, CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from node.media_engine.engine import MediaEngine

_engines: "weakref.WeakSet[MediaEngine]" = weakref.WeakSet()


def track(engine: "MediaEngine") -> None:
    _engines.add(engine)


class MediaEngineCollector(Collector):
    def collect(self) -> Iterator[Metric]:
        t = dict.fromkeys(("packets_in", "packets_out", "dropped", "digits"), 0)
        active = opened = overruns = skipped = 0
        late = 0.0
        for e in list(_engines):
            for k, v in e.totals().items():
                t[k] += v
            active += len(e.endpoints)
            opened += e.endpoints_opened
            overruns += e.overruns
            if e.clock is not None:
                skipped += e.clock.skipped
                late = max(late, e.clock.late_max)
        p = CounterMetricFamily("hivepbx_media_packets", "RTP packets of endpoints the node terminates", labels=["direction"])
        p.add_metric(["in"], t["packets_in"])
        p.add_metric(["out"], t["packets_out"])
        yield p
        yield CounterMetricFamily("hivepbx_media_dropped_packets", "Packets media endpoints dropped", value=t["dropped"])
        yield CounterMetricFamily("hivepbx_media_digits", "DTMF digits received by media endpoints", value=t["digits"])
        yield CounterMetricFamily("hivepbx_media_endpoints_opened", "Media endpoints opened", value=opened)
        yield GaugeMetricFamily("hivepbx_media_endpoints_active", "Media endpoints open now", value=active)
        yield CounterMetricFamily("hivepbx_media_clock_overruns", "Ticks whose work overran the 20 ms period", value=overruns)
        yield CounterMetricFamily("hivepbx_media_clock_skipped_frames", "Frames skipped after a clock stall", value=skipped)
        yield GaugeMetricFamily("hivepbx_media_clock_late_max_seconds", "Worst lateness of the media clock", value=late)


COLLECTOR = MediaEngineCollector()
REGISTRY.register(COLLECTOR)


# ------------------------------------------------------------------ RTCP
RTCP_PACKETS = Counter("hivepbx_media_rtcp_packets", "RTCP compound packets of endpoints the node terminates",
                       ["direction"])
_RTCP_IN, _RTCP_OUT = RTCP_PACKETS.labels("in"), RTCP_PACKETS.labels("out")
RTCP_ERRORS = Counter("hivepbx_media_rtcp_errors", "Malformed RTCP packets received (dropped)")
RTT = Histogram("hivepbx_media_rtcp_rtt_seconds", "Round-trip time from peers' reports (RFC 3550 LSR/DLSR)",
                buckets=(0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.0))
PEER_LOSS = Histogram("hivepbx_media_rtcp_peer_fraction_lost",
                      "Fraction of our RTP the peer reports lost, per report",
                      buckets=(0.0, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0))
PEER_JITTER = Histogram("hivepbx_media_rtcp_peer_jitter_seconds", "Interarrival jitter the peer reports, per report",
                        buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5))
RX_LOST = Counter("hivepbx_media_rtp_lost_packets",
                  "RTP packets lost on their way to the node's endpoints (sequence gaps, RFC 3550 A.3)")
RX_JITTER = Histogram("hivepbx_media_rtp_jitter_seconds", "Interarrival jitter of the RTP the node receives, per report",
                      buckets=(0.001, 0.005, 0.01, 0.02, 0.03, 0.05, 0.1, 0.2, 0.5))


def rtcp_sent() -> None:
    _RTCP_OUT.inc()


def rtcp_received(reports) -> None:
    """A valid compound packet from a peer; ``reports`` are its ``PeerReport``s about us."""
    _RTCP_IN.inc()
    for r in reports:
        PEER_LOSS.observe(r.fraction_lost)
        PEER_JITTER.observe(r.jitter_seconds)
        if r.rtt is not None:
            RTT.observe(r.rtt)


def rtcp_error() -> None:
    RTCP_ERRORS.inc()


def reception(lost_delta: int, jitter_seconds: float | None) -> None:
    """What our own receiver measured since the last report (new losses, current jitter)."""
    if lost_delta > 0:
        RX_LOST.inc(lost_delta)
    if jitter_seconds is not None:
        RX_JITTER.observe(jitter_seconds)
