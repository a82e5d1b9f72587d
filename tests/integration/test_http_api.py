"""The node's HTTP endpoint on a real loopback socket: /metrics for Prometheus, /health for probes."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from node.api.http import start_http, stop_http
from observability import metrics as M


async def _get(port: int, path: str, **headers: str) -> tuple[int, str, str]:
    async with aiohttp.ClientSession() as session:
        async with session.get(f"http://127.0.0.1:{port}{path}", headers=headers) as resp:
            return resp.status, resp.headers["Content-Type"], await resp.text()


def _sample(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()):
                return s.value
    raise AssertionError(f"{name}{labels} not exposed")


async def test_metrics_endpoint_exposes_the_node_metrics() -> None:
    runner, port = await start_http("127.0.0.1", 0, None)
    try:
        assert port > 0
        status, ctype, body = await _get(port, "/metrics")
        assert status == 200
        assert ctype.startswith("text/plain") and "version=" in ctype
        for name in ("hivepbx_registrations", "hivepbx_active_calls", "hivepbx_call_attempts_total",
                     "hivepbx_sip_requests_total", "hivepbx_sip_responses_total",
                     "hivepbx_sip_parse_errors_total", "hivepbx_sip_transactions", "hivepbx_auth_failures_total"):
            assert f"\n{name}" in body, name
        before = _sample(body, "hivepbx_sip_requests_total", method="OPTIONS", direction="in")
        M.sip_request_in("OPTIONS")
        _, _, body = await _get(port, "/metrics")
        assert _sample(body, "hivepbx_sip_requests_total", method="OPTIONS", direction="in") == before + 1

        # Prometheus negotiating OpenMetrics gets it
        status, ctype, body = await _get(port, "/metrics", Accept="application/openmetrics-text; version=1.0.0")
        assert status == 200 and ctype.startswith("application/openmetrics-text")
        assert body.rstrip().endswith("# EOF")
    finally:
        await stop_http(runner)


@pytest.mark.parametrize(("health", "code", "status"), [
    ({"status": "ok", "calls": 3}, 200, "ok"),
    ({"status": "degraded", "draining": True}, 503, "degraded"),
    ({"calls": 1}, 503, None),
])
async def test_health_reports_the_health_function(health: dict, code: int, status: str | None) -> None:
    async def health_fn() -> dict:
        return health

    runner, port = await start_http("127.0.0.1", 0, health_fn)
    try:
        got, ctype, body = await _get(port, "/health")
        assert got == code
        assert ctype.startswith("application/json")
        assert json.loads(body) == health
        assert json.loads(body).get("status") == status
    finally:
        await stop_http(runner)


async def test_a_failing_or_hanging_health_function_answers_503() -> None:
    async def broken() -> dict:
        raise RuntimeError("store down")

    never = asyncio.Event()

    async def hangs() -> dict:
        await never.wait()
        return {"status": "ok"}

    async def not_a_dict():
        return ["ok"]

    for fn, needle in ((broken, "store down"), (hangs, "timed out"), (not_a_dict, "not dict")):
        runner, port = await start_http("127.0.0.1", 0, fn, health_timeout=0.05)
        try:
            got, _, body = await _get(port, "/health")
            assert got == 503
            doc = json.loads(body)
            assert doc["status"] == "error" and needle in doc["error"]
        finally:
            await stop_http(runner)


async def test_stop_releases_the_port() -> None:
    runner, port = await start_http("127.0.0.1", 0)
    await stop_http(runner)
    with pytest.raises(aiohttp.ClientConnectionError):
        await _get(port, "/health")
