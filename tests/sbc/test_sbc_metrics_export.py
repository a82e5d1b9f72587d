"""The SBC's hot counters (plain numbers + a collector) export exactly what a
prometheus_client Counter of the same name and labels would."""

from __future__ import annotations

from prometheus_client import REGISTRY, CollectorRegistry, Counter, generate_latest

from sbc import metrics as M


def _shape(registry: CollectorRegistry) -> list[tuple[str, str, list[tuple[str, dict, float]]]]:
    """(name, type, samples without the _created timestamps' values) of every family."""
    out = []
    for fam in registry.collect():
        samples = [(s.name, s.labels, 0.0 if s.name.endswith("_created") else s.value) for s in fam.samples]
        out.append((fam.name, fam.type, samples))
    return out


def test_plain_counter_exports_as_a_counter() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    plain = M.PlainCounter("x_calls", "Calls", ["node", "method"], registry=ours)
    real = Counter("x_calls", "Calls", ["node", "method"], registry=theirs)
    for node, method, n in (("a", "INVITE", 3), ("b", "BYE", 1)):
        cell = plain.labels(node, method)
        child = real.labels(node, method)
        for _ in range(n):
            cell[0] += 1
            child.inc()
    real.labels("c", "ACK")
    plain.labels("c", "ACK")
    assert _shape(ours) == _shape(theirs)
    text = generate_latest(ours).decode()
    assert 'x_calls_total{method="INVITE",node="a"} 3.0' in text and "# TYPE x_calls_total counter" in text
    assert plain.value("a", "INVITE") == 3.0 and plain.value("z", "INVITE") == 0.0


def test_signalling_counters_count_into_the_registry() -> None:
    def sample(name: str, labels: dict) -> float:
        return REGISTRY.get_sample_value(name, labels) or 0.0

    inv = sample("hivepbx_sbc_requests_total", {"method": "INVITE", "side": "outside"})
    other = sample("hivepbx_sbc_requests_total", {"method": "other", "side": "inside"})
    ok = sample("hivepbx_sbc_responses_total", {"class": "2xx", "side": "inside"})
    odd = sample("hivepbx_sbc_responses_total", {"class": "other", "side": "outside"})
    fwd = sample("hivepbx_sbc_forwarded_total", {"node": "n-metrics", "method": "other"})
    M.request("INVITE", "outside")
    M.request("NOTAMETHOD", "inside")
    M.response(200, "inside")
    M.response(999, "outside")
    M.forwarded("n-metrics", "NOTAMETHOD")
    M.forwarded("n-metrics", "NOTAMETHOD")
    assert sample("hivepbx_sbc_requests_total", {"method": "INVITE", "side": "outside"}) == inv + 1
    assert sample("hivepbx_sbc_requests_total", {"method": "other", "side": "inside"}) == other + 1
    assert sample("hivepbx_sbc_responses_total", {"class": "2xx", "side": "inside"}) == ok + 1
    assert sample("hivepbx_sbc_responses_total", {"class": "other", "side": "outside"}) == odd + 1
    assert sample("hivepbx_sbc_forwarded_total", {"node": "n-metrics", "method": "other"}) == fwd + 2
    assert M.FORWARDED.value("n-metrics", "other") == fwd + 2
    assert REGISTRY.get_sample_value("hivepbx_sbc_forwarded_created", {"node": "n-metrics", "method": "other"})
