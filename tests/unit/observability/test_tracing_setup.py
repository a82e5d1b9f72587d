"""Tracing: no-op until an exporter is configured; then spans reach it with the service name."""

from __future__ import annotations

import importlib.util

import pytest
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from observability import tracing


@pytest.fixture(autouse=True)
def _reset():
    yield
    tracing.shutdown_tracing()


def test_without_exporter_spans_do_not_record() -> None:
    assert tracing.setup_tracing("hivepbx-test") is None
    with tracing.tracer().start_as_current_span("INVITE") as span:
        assert not span.is_recording()


def test_spans_reach_the_exporter_with_the_service_name() -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("hivepbx-test", exporter, set_global=False)
    assert provider is not None
    with tracing.tracer().start_as_current_span("call") as parent:
        assert parent.is_recording()
        with tracing.tracer().start_as_current_span("leg"):
            pass
    provider.force_flush()
    spans = {s.name: s for s in exporter.get_finished_spans()}
    assert set(spans) == {"call", "leg"}
    assert spans["leg"].parent.span_id == spans["call"].context.span_id
    assert spans["call"].resource.attributes["service.name"] == "hivepbx-test"
    tracing.shutdown_tracing()
    with tracing.tracer().start_as_current_span("after") as span:
        assert not span.is_recording()


def test_sample_ratio_zero_records_nothing() -> None:
    exporter = InMemorySpanExporter()
    provider = tracing.setup_tracing("hivepbx-test", exporter, sample_ratio=0.0, set_global=False)
    with tracing.tracer().start_as_current_span("x") as span:
        assert not span.is_recording()
    provider.force_flush()
    assert exporter.get_finished_spans() == ()


def test_bad_exporter_names_are_refused() -> None:
    with pytest.raises(ValueError):
        tracing.setup_tracing("hivepbx-test", "jaeger", set_global=False)
    have_otlp = any(
        importlib.util.find_spec(m) is not None
        for m in ("opentelemetry.exporter.otlp.proto.http", "opentelemetry.exporter.otlp.proto.grpc")
    ) if importlib.util.find_spec("opentelemetry.exporter") else False
    if have_otlp:
        assert tracing.setup_tracing("hivepbx-test", "otlp", set_global=False) is not None
    else:
        with pytest.raises(ValueError, match="opentelemetry-exporter-otlp"):
            tracing.setup_tracing("hivepbx-test", "otlp", set_global=False)
