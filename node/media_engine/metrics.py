"""Prometheus view of the media engine, read at scrape time (nothing counted per packet
beyond plain integers on the endpoints)."""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING, Iterator

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
