"""The node's metrics: each helper moves the right series, labels stay bounded, exposition lists them."""

from __future__ import annotations

import types

from prometheus_client import REGISTRY, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from observability import metrics as M


def value(name: str, **labels: str) -> float:
    v = REGISTRY.get_sample_value(name, labels)
    return 0.0 if v is None else v


def test_sip_requests_by_method_and_direction_unknown_methods_fold_into_other() -> None:
    before = value("hivepbx_sip_requests_total", method="INVITE", direction="in")
    out_before = value("hivepbx_sip_requests_total", method="INVITE", direction="out")
    other = value("hivepbx_sip_requests_total", method="other", direction="in")
    M.sip_request_in("INVITE")
    M.sip_request_in("INVITE")
    M.sip_request_out("INVITE")
    for i in range(50):
        M.sip_request_in(f"FOO{i}")  # extension methods from the wire must not create series
    assert value("hivepbx_sip_requests_total", method="INVITE", direction="in") == before + 2
    assert value("hivepbx_sip_requests_total", method="INVITE", direction="out") == out_before + 1
    assert value("hivepbx_sip_requests_total", method="other", direction="in") == other + 50
    assert REGISTRY.get_sample_value("hivepbx_sip_requests_total", {"method": "FOO1", "direction": "in"}) is None


def test_sip_responses_by_class() -> None:
    cases = {100: "1xx", 180: "1xx", 200: "2xx", 302: "3xx", 401: "4xx", 487: "4xx", 503: "5xx", 603: "6xx",
             700: "other", 99: "other"}
    before = {(c, d): value("hivepbx_sip_responses_total", **{"class": c, "direction": d})
              for c in set(cases.values()) for d in ("in", "out")}
    for status in cases:
        M.sip_response_in(status)
        M.sip_response_out(status)
    expected: dict[str, int] = {}
    for cls in cases.values():
        expected[cls] = expected.get(cls, 0) + 1
    for cls, n in expected.items():
        for d in ("in", "out"):
            assert value("hivepbx_sip_responses_total", **{"class": cls, "direction": d}) == before[(cls, d)] + n


def test_call_lifecycle_moves_gauges_and_counts_the_outcome() -> None:
    active, talking = value("hivepbx_active_calls"), value("hivepbx_answered_calls")
    answered = value("hivepbx_call_attempts_total", outcome="answered")
    no_answer = value("hivepbx_call_attempts_total", outcome="no_answer")
    rejected = value("hivepbx_call_attempts_total", outcome="rejected")
    M.call_started()
    M.call_started()
    assert value("hivepbx_active_calls") == active + 2
    M.call_answered()
    assert value("hivepbx_answered_calls") == talking + 1
    M.call_ended("answered")
    M.call_ended("no-answer")  # Cdr spelling
    M.call_attempt("rejected")  # refused before a call existed
    assert value("hivepbx_active_calls") == active
    assert value("hivepbx_answered_calls") == talking
    assert value("hivepbx_call_attempts_total", outcome="answered") == answered + 1
    assert value("hivepbx_call_attempts_total", outcome="no_answer") == no_answer + 1
    assert value("hivepbx_call_attempts_total", outcome="rejected") == rejected + 1
    assert REGISTRY.get_sample_value("hivepbx_call_attempts_total", {"outcome": "no-answer"}) is None


def test_parse_errors_by_transport_fit_the_endpoint_callback() -> None:
    tcp, other = value("hivepbx_sip_parse_errors_total", transport="tcp"), value(
        "hivepbx_sip_parse_errors_total", transport="other")
    M.parse_error(ValueError("bad"), types.SimpleNamespace(transport="tcp"))
    M.parse_error(transport="tcp")
    M.parse_error(ValueError("bad"), object())
    M.parse_error(transport="carrier-pigeon")
    assert value("hivepbx_sip_parse_errors_total", transport="tcp") == tcp + 2
    assert value("hivepbx_sip_parse_errors_total", transport="other") == other + 2


def test_auth_failures_and_registrations() -> None:
    bad = value("hivepbx_auth_failures_total", reason="bad_response")
    other = value("hivepbx_auth_failures_total", reason="other")
    M.auth_failure("bad_response")
    M.auth_failure("made-up reason")
    assert value("hivepbx_auth_failures_total", reason="bad_response") == bad + 1
    assert value("hivepbx_auth_failures_total", reason="other") == other + 1
    accepted = value("hivepbx_register_accepted_total")
    M.registrations_changed()
    assert value("hivepbx_register_accepted_total") == accepted + 1
    M.registrations_set(1234)
    assert value("hivepbx_registrations") == 1234
    M.registrations_set(0)
    assert value("hivepbx_registrations") == 0


def test_transactions_gauge_reads_the_count_at_scrape_time() -> None:
    live = {"n": 3}
    M.track_transactions(lambda: live["n"])
    assert value("hivepbx_sip_transactions") == 3
    live["n"] = 17
    assert value("hivepbx_sip_transactions") == 17


def test_exposition_lists_every_node_metric_with_its_type() -> None:
    M.sip_request_in("REGISTER")
    families = {f.name: f for f in text_string_to_metric_families(generate_latest(REGISTRY).decode())}
    expected = {
        "hivepbx_registrations": "gauge",
        "hivepbx_active_calls": "gauge",
        "hivepbx_answered_calls": "gauge",
        "hivepbx_call_attempts": "counter",
        "hivepbx_sip_requests": "counter",
        "hivepbx_sip_responses": "counter",
        "hivepbx_sip_parse_errors": "counter",
        "hivepbx_sip_transactions": "gauge",
        "hivepbx_auth_failures": "counter",
        "hivepbx_register_accepted": "counter",
    }
    for name, kind in expected.items():
        assert name in families, name
        assert families[name].type == kind
    # the pre-bound children are exposed even before anything happened (no gaps in rate())
    outcomes = {s.labels["outcome"] for s in families["hivepbx_call_attempts"].samples if s.name.endswith("_total")}
    assert outcomes == set(M.CALL_OUTCOMES) | {"other"}
