"""The SBC's /metrics and /health, and its logs carrying call-id and tenant."""

from __future__ import annotations

import io
import json
import logging

import aiohttp
import pytest

from observability import logging as olog
from tests.peers.sipp import Sipp
from tests.sbc.conftest import DOMAIN, PASSWORDS, stack, wait_for

pytestmark = pytest.mark.interop


async def test_metrics_health_and_structured_logs(tmp_path):
    stream = io.StringIO()
    handler = olog.setup_logging("INFO", json=True, stream=stream)
    try:
        async with stack(tmp_path) as s:
            # the failover below logs a warning naming the call and the tenant
            reg = await Sipp("uac_register_auth.xml", s.target, workdir=tmp_path / "r", user="1001", domain=DOMAIN,
                             auth_user="1001", auth_password=PASSWORDS["1001"]).run()
            reg.assert_ok()
            home = [n for n in s.nodes if await s.nodes[n].wait_registered(s.tenants[n].id, "1001", 0.1)][0]
            await s.kill(home)
            again = await Sipp("uac_register_auth.xml", s.target, workdir=tmp_path / "r2", user="1001",
                               domain=DOMAIN, auth_user="1001", auth_password=PASSWORDS["1001"], timeout=10).run()
            again.assert_ok()
            assert await wait_for(lambda: not s.sbc.health.is_up(home), 5)
            base = f"http://127.0.0.1:{s.sbc.http_port}"
            async with aiohttp.ClientSession() as http:
                async with http.get(base + "/metrics") as r:
                    assert r.status == 200
                    text = await r.text()
                async with http.get(base + "/health") as r:
                    health = await r.json()
    finally:
        logging.getLogger().removeHandler(handler)
    assert 'hivepbx_sbc_requests_total{method="REGISTER",side="outside"}' in text
    assert f'hivepbx_sbc_node_up{{node="{home}"}} 0.0' in text
    assert 'hivepbx_sbc_forwarded_total{method="REGISTER",node="' in text
    assert "hivepbx_sbc_failovers_total" in text and "hivepbx_sbc_probes_total" in text
    assert health["nodes"][home]["up"] is False and health["status"] == "ok"
    records = [json.loads(line) for line in stream.getvalue().splitlines() if line.startswith("{")]
    call_id = again.sent("REGISTER")[0].header("Call-ID")
    tagged = [r for r in records if r.get("call_id") == call_id and r.get("tenant") == DOMAIN]
    assert tagged, records[-10:]
    assert any(r["msg"].startswith(f"node {home}") and r["level"] == "WARNING" for r in records)


async def test_spans_per_forwarded_request(tmp_path):
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    from observability import tracing as otrace

    exporter = InMemorySpanExporter()
    provider = otrace.setup_tracing("hivepbx-sbc-test", exporter, set_global=False)
    try:
        async with stack(tmp_path, names=("a",)) as s:
            reg = await Sipp("uac_register_auth.xml", s.target, workdir=tmp_path / "r", user="1001", domain=DOMAIN,
                             auth_user="1001", auth_password=PASSWORDS["1001"]).run()
            reg.assert_ok()
        provider.force_flush()
    finally:
        otrace.shutdown_tracing()
    spans = [sp for sp in exporter.get_finished_spans() if sp.name == "sbc.register"]
    assert sorted(sp.attributes["sip.status_code"] for sp in spans) == [200, 401]
    assert all(sp.attributes["hivepbx.tenant"] == DOMAIN and sp.attributes["hivepbx.node"] == "a" for sp in spans)
