"""The node's HTTP endpoint: Prometheus scrapes ``/metrics``, load balancers and
orchestrators probe ``/health`` (200 when ok, 503 otherwise, so a draining or broken node
leaves rotation)."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import REGISTRY
from prometheus_client.exposition import choose_encoder

import observability.metrics  # noqa: F401  (registers the node's metrics before the first scrape)

__all__ = ["HealthFn", "make_app", "start_http", "stop_http"]

log = logging.getLogger("hivepbx.http")

#: returns {"status": "ok" | "degraded", ...anything JSON-able}
HealthFn = Callable[[], Awaitable[dict]]

_HEALTH = web.AppKey("health_fn", object)
_HEALTH_TIMEOUT = web.AppKey("health_timeout", float)


async def _metrics(request: web.Request) -> web.Response:
    # Prometheus asks for OpenMetrics in Accept; choose_encoder honours that
    encoder, content_type = choose_encoder(request.headers.get("Accept", ""))
    return web.Response(body=encoder(REGISTRY), headers={"Content-Type": content_type})


async def _health(request: web.Request) -> web.Response:
    health_fn = request.app[_HEALTH]
    try:
        result = await asyncio.wait_for(health_fn(), request.app[_HEALTH_TIMEOUT])
        if not isinstance(result, dict):
            raise TypeError(f"health function returned {type(result).__name__}, not dict")
    except asyncio.TimeoutError:
        result = {"status": "error", "error": "health check timed out"}
    except Exception as e:  # a broken probe must answer 503, not 500 with a traceback
        log.exception("health check failed")
        result = {"status": "error", "error": f"{type(e).__name__}: {e}"}
    status = 200 if result.get("status") == "ok" else 503
    return web.Response(
        status=status,
        text=json.dumps(result, default=str),
        content_type="application/json",
        headers={"Cache-Control": "no-store"},
    )


async def _always_ok() -> dict:
    return {"status": "ok"}


def make_app(health_fn: HealthFn | None = None, *, health_timeout: float = 5.0) -> web.Application:
    app = web.Application()
    app[_HEALTH] = health_fn or _always_ok
    app[_HEALTH_TIMEOUT] = health_timeout
    app.router.add_get("/metrics", _metrics)
    app.router.add_get("/health", _health)
    return app


async def start_http(
    host: str, port: int, health_fn: HealthFn | None = None, *, health_timeout: float = 5.0,
) -> tuple[web.AppRunner, int]:
    """Serve on host:port (0 = any free port); returns the runner and the port bound."""
    # no access log: a scrape every few seconds would drown the call logs
    runner = web.AppRunner(make_app(health_fn, health_timeout=health_timeout), access_log=None)
    await runner.setup()
    try:
        site = web.TCPSite(runner, host, port)
        await site.start()
        bound = runner.addresses[0][1]
    except BaseException:
        await runner.cleanup()
        raise
    return runner, bound


async def stop_http(runner: web.AppRunner) -> None:
    await runner.cleanup()
