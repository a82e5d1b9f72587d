"""OpenTelemetry tracing setup.

Without an exporter nothing is installed: ``tracer()`` then hands out the API's no-op tracer,
whose spans are non-recording singletons (no SDK, no attributes kept, no export thread), so
instrumented hot paths cost a context switch and nothing more until tracing is switched on.
"""

from __future__ import annotations

from opentelemetry import trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, ConsoleSpanExporter, SimpleSpanProcessor, SpanExporter
from opentelemetry.sdk.trace.sampling import ParentBased, TraceIdRatioBased

__all__ = ["setup_tracing", "tracer", "shutdown_tracing"]

_provider: TracerProvider | None = None


def _otlp_exporter() -> SpanExporter:
    try:
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    except ImportError:
        try:
            from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
        except ImportError:
            raise ValueError(
                "tracing exporter 'otlp' needs opentelemetry-exporter-otlp-proto-http (or -grpc) installed"
            ) from None
    return OTLPSpanExporter()  # endpoint etc. from the standard OTEL_EXPORTER_OTLP_* variables


def setup_tracing(
    service_name: str,
    exporter: str | SpanExporter | None = None,
    *,
    sample_ratio: float = 1.0,
    set_global: bool = True,
) -> TracerProvider | None:
    """Install an SDK tracer provider exporting to ``'console'``, ``'otlp'`` or a given exporter.

    ``exporter=None`` installs nothing (spans stay no-ops) and returns None. Root spans are
    sampled at ``sample_ratio``; children follow their parent. ``set_global=False`` keeps
    the OpenTelemetry global untouched (it can be set once per process), for tests.
    """
    global _provider
    if exporter is None:
        return None
    if exporter == "console":
        processor = SimpleSpanProcessor(ConsoleSpanExporter())
    elif exporter == "otlp":
        processor = BatchSpanProcessor(_otlp_exporter())
    elif isinstance(exporter, SpanExporter):
        processor = BatchSpanProcessor(exporter)
    else:
        raise ValueError(f"unknown tracing exporter {exporter!r} (use None, 'console' or 'otlp')")
    provider = TracerProvider(
        resource=Resource.create({"service.name": service_name}),
        sampler=ParentBased(TraceIdRatioBased(sample_ratio)),
    )
    provider.add_span_processor(processor)
    if set_global:
        trace.set_tracer_provider(provider)
    _provider = provider
    return provider


def enabled() -> bool:
    """True once ``setup_tracing`` installed an exporter: hot paths skip span work otherwise."""
    return _provider is not None


def tracer(name: str = "hivepbx") -> trace.Tracer:
    """A tracer from the provider ``setup_tracing`` installed, else the global (no-op) one.

    Prefer calling this at use time over caching at import: with ``set_global=False`` a
    tracer fetched before setup stays a no-op.
    """
    if _provider is not None:
        return _provider.get_tracer(name)
    return trace.get_tracer(name)


def shutdown_tracing() -> None:
    """Flush and stop the exporter (call at process shutdown)."""
    global _provider
    if _provider is not None:
        _provider.shutdown()
        _provider = None
