"""The node's Prometheus metrics, on prometheus_client's default registry.

The SIP and PBX layers call the small functions below; each resolves to a pre-bound label
child (a dict or list lookup, no ``labels()`` call) so a counted message costs one lock and
one add.

Cardinality is bounded by construction: every label value comes from a fixed set and
anything else (an extension method, a stray status) is counted as ``other``. There is no
tenant label: a hosted PBX has thousands of tenants that come and go, and every per-tenant
series would multiply by the other labels and linger after the tenant leaves. Per-tenant
counts are a store query for the portal, not a time series.
"""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import Counter, Gauge

__all__ = [
    "REGISTRATIONS", "ACTIVE_CALLS", "ANSWERED_CALLS", "CALL_ATTEMPTS", "SIP_REQUESTS", "SIP_RESPONSES",
    "SIP_PARSE_ERRORS", "SIP_TRANSACTIONS", "AUTH_FAILURES", "REGISTER_ACCEPTED",
    "CALL_OUTCOMES", "SIP_METHODS", "TRANSPORTS", "AUTH_REASONS",
    "registrations_set", "registrations_changed", "call_started", "call_answered", "call_ended",
    "call_attempt", "sip_request_in", "sip_request_out", "sip_response_in", "sip_response_out",
    "parse_error", "track_transactions", "auth_failure",
]

OTHER = "other"
#: methods counted under their own name (RFC 3261 and the common extensions)
SIP_METHODS = (
    "INVITE", "ACK", "BYE", "CANCEL", "REGISTER", "OPTIONS", "PRACK", "UPDATE", "INFO",
    "SUBSCRIBE", "NOTIFY", "REFER", "MESSAGE", "PUBLISH",
)
#: final call outcomes, as in Cdr.disposition with '_' for '-'
CALL_OUTCOMES = ("answered", "busy", "no_answer", "cancelled", "failed", "rejected")
TRANSPORTS = ("udp", "tcp", "tls", "ws", "wss")
#: auth failure reasons: node.sip.auth.Verdict values other than ok, plus the registrar's own
AUTH_REASONS = (
    "stale", "malformed", "unsupported", "realm_mismatch", "username_mismatch", "uri_mismatch",
    "bad_nonce", "bad_response", "replayed", "unknown_user", "missing",
)

REGISTRATIONS = Gauge("hivepbx_registrations", "Registered contacts (bindings) on this node, all tenants")
REGISTER_ACCEPTED = Counter("hivepbx_register_accepted", "REGISTER requests answered 2xx")
ACTIVE_CALLS = Gauge("hivepbx_active_calls", "Calls in progress (routing, ringing or answered)")
ANSWERED_CALLS = Gauge("hivepbx_answered_calls", "Calls in progress that have been answered")
CALL_ATTEMPTS = Counter("hivepbx_call_attempts", "Finished call attempts by outcome", ["outcome"])
SIP_REQUESTS = Counter("hivepbx_sip_requests", "SIP requests", ["method", "direction"])
SIP_RESPONSES = Counter("hivepbx_sip_responses", "SIP responses by status class", ["class", "direction"])
SIP_PARSE_ERRORS = Counter("hivepbx_sip_parse_errors", "Unparseable SIP messages received", ["transport"])
SIP_TRANSACTIONS = Gauge("hivepbx_sip_transactions", "Live SIP transactions")
AUTH_FAILURES = Counter("hivepbx_auth_failures", "Refused digest authentications", ["reason"])
COMPILED_HOT_PATH = Gauge("hivepbx_compiled_hot_path",
                          "1 when the SIP hot path runs as mypyc extensions (setup.py), 0 when it runs as Python")


def _bind(metric, values: tuple[str, ...], *fixed: str) -> dict:
    children = {v: metric.labels(v, *fixed) for v in values}
    children[OTHER] = metric.labels(OTHER, *fixed)
    return children


_OUTCOME = _bind(CALL_ATTEMPTS, CALL_OUTCOMES)
_OUTCOME.update({o.replace("_", "-"): c for o, c in _OUTCOME.items()})  # Cdr spelling
_REQ_IN = _bind(SIP_REQUESTS, SIP_METHODS, "in")
_REQ_OUT = _bind(SIP_REQUESTS, SIP_METHODS, "out")
# index = status // 100: 0 and 7..9 are impossible from a parsed message, counted as other
_CLASSES = ("other", "1xx", "2xx", "3xx", "4xx", "5xx", "6xx", "other", "other", "other")
_RESP_IN = [SIP_RESPONSES.labels(c, "in") for c in _CLASSES]
_RESP_OUT = [SIP_RESPONSES.labels(c, "out") for c in _CLASSES]
_PARSE = _bind(SIP_PARSE_ERRORS, TRANSPORTS)
_AUTH = _bind(AUTH_FAILURES, AUTH_REASONS)
_REQ_IN_OTHER = _REQ_IN[OTHER]
_REQ_OUT_OTHER = _REQ_OUT[OTHER]
_RESP_OTHER_IN = _RESP_IN[0]
_RESP_OTHER_OUT = _RESP_OUT[0]


# ------------------------------------------------------------------ registrations
def registrations_set(count: int) -> None:
    """The location store's current binding count (the node recounts periodically)."""
    REGISTRATIONS.set(count)


def registrations_changed() -> None:
    """A REGISTER was accepted (adds, refreshes or removes bindings: the gauge is recounted)."""
    REGISTER_ACCEPTED.inc()


# ------------------------------------------------------------------ calls
def call_started() -> None:
    ACTIVE_CALLS.inc()


def call_answered() -> None:
    ANSWERED_CALLS.inc()


def call_ended(disposition: str) -> None:
    """A call that ``call_started`` counted has ended; ``disposition`` as in Cdr.disposition."""
    ACTIVE_CALLS.dec()
    if disposition == "answered":
        ANSWERED_CALLS.dec()
    call_attempt(disposition)


def call_attempt(outcome: str) -> None:
    """Count a finished attempt; calls that never started (refused early) come only here."""
    _OUTCOME.get(outcome, _OUTCOME[OTHER]).inc()


# ------------------------------------------------------------------ SIP traffic
def sip_request_in(method: str) -> None:
    _REQ_IN.get(method, _REQ_IN_OTHER).inc()


def sip_request_out(method: str) -> None:
    _REQ_OUT.get(method, _REQ_OUT_OTHER).inc()


def sip_response_in(status: int) -> None:
    (_RESP_IN[status // 100] if 100 <= status < 1000 else _RESP_OTHER_IN).inc()


def sip_response_out(status: int) -> None:
    (_RESP_OUT[status // 100] if 100 <= status < 1000 else _RESP_OTHER_OUT).inc()


def parse_error(_error: object = None, flow: object = None, *, transport: str | None = None) -> None:
    """Count an unparseable message. Fits the endpoint's ``on_parse_error(error, flow)``
    callback (the flow's ``transport`` names the label) or takes ``transport=`` directly."""
    if transport is None:
        transport = getattr(flow, "transport", OTHER)
    _PARSE.get(transport, _PARSE[OTHER]).inc()


def track_transactions(count: Callable[[], int]) -> None:
    """Read the live transaction count at scrape time: zero cost per transaction."""
    SIP_TRANSACTIONS.set_function(count)


# ------------------------------------------------------------------ auth
def auth_failure(reason: str) -> None:
    """Count a refused authentication; ``reason`` is a ``Verdict.value`` or an AUTH_REASONS entry."""
    _AUTH.get(reason, _AUTH[OTHER]).inc()
