"""Wires the SBC together and runs it: sockets, transaction layer, proxy, node probes,
keep-alives, /metrics and /health. ``async with Sbc(cfg) as sbc`` in tests, ``run(cfg)`` from
the CLI. The Guard (sbc.protection) and the media anchor (sbc.media) are loaded when
those modules exist, so the core runs without them.
"""

from __future__ import annotations

import asyncio
import contextlib
import importlib
import logging
import os
import socket
import struct
import time

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint
from node.transport.sockets import Listen
from node.runtime.process import settle_heap, until_signalled
from observability import logging as olog
from observability import tracing as otrace
from sbc import heap
from sbc import metrics as M
from sbc.config import NodeTarget, SbcConfig, SbcConfigError, parse_hostport
from sbc.dispatch import Dispatcher
from sbc.health import Health
from sbc.overload import SO_MEMINFO, CostMeter, backlog_seconds
from sbc.membership import MembershipFeed, open_etcd_membership
from sbc.policies import ClusterPolicies, open_etcd_config
from sbc.protection import counters
from sbc.protection.cluster_counts import ClusterCounts, open_cluster_counts
from sbc.proxy import Proxy, SideAddresses
from sbc.topology import Sealer
from sbc.transports import SbcTransports, server_tls_context
from sbc.workers import Relay, Worker, run_workers, set_conn_ids

log = logging.getLogger("hivepbx.sbc")

#: with probing off, seconds before a node taken down by a failed request is tried again
REVIVE_AFTER = 10.0


def load_guard(section: dict, transactions=None):
    """sbc.protection.Guard when that module exists (the seam is in /work/notes/sbc-seams.md
    and sbc/protection/__init__.py), configured from the ``[protection]`` table; else None."""
    try:
        mod = importlib.import_module("sbc.protection")
        guard_cls = getattr(mod, "Guard")
    except (ImportError, AttributeError):
        return None
    factory = getattr(guard_cls, "from_config", None)
    if factory is not None:
        return factory(section)
    kw: dict = {}
    config_cls = getattr(mod, "GuardConfig", None)
    if section and config_cls is not None:
        try:
            kw["config"] = config_cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in section.items()})
        except TypeError as e:
            raise SbcConfigError(f"protection: {e}") from None
    if transactions is not None:
        kw["transactions"] = transactions
    try:
        return guard_cls(**kw)
    except TypeError:
        return guard_cls()


def load_media(section: dict):
    """sbc.media.MediaAnchor when that module exists and ``[media]`` names rtpengines, else
    None (SDP passes untouched). ``rtpengine = ["host:port", ...]`` is the default relay set;
    ``sets = {name = ["host:port"]}`` names more."""
    if not section:
        return None
    try:
        mod = importlib.import_module("sbc.media")
        anchor_cls = getattr(mod, "MediaAnchor")
    except (ImportError, AttributeError):
        return None
    factory = getattr(anchor_cls, "from_config", None)
    if factory is not None:
        return factory(section)
    sets = dict(section.get("sets") or {})
    if "rtpengine" in section:
        sets["default"] = section["rtpengine"]
    if not sets:
        raise SbcConfigError("media: give rtpengine = [\"host:port\"] (or sets)")
    relay_sets = {
        name: [parse_hostport(a, f"media.sets.{name}", 2223) for a in addrs] for name, addrs in sets.items()
    }
    kw = {k: section[k] for k in ("timeout", "retries", "ping_interval", "down_time", "options") if k in section}
    return anchor_cls(relay_sets, **kw)


def _sides(requested: tuple[Listen, ...], bound: list[Listen]) -> dict[str, tuple[str, int]]:
    """transport → the bound (host, port) of the first requested listener of that transport."""
    out: dict[str, tuple[str, int]] = {}
    for want in requested:
        for b in bound:
            if b.transport == want.transport and b.host == want.host and (want.port in (0, b.port)):
                out.setdefault(b.transport, (b.host, b.port))
                break
    return out


class Sbc:
    def __init__(self, cfg: SbcConfig, *, guard=None, media=None, membership=None, worker: Worker | None = None) -> None:
        self.cfg = cfg
        #: one of several processes sharing the ports (sbc/workers.py), or None
        self.worker = worker
        self.relay: Relay | None = None
        #: the process's GC is this SBC's to tune (serve(); not when tests share the loop)
        self._own_gc = False
        self.transports: SbcTransports | None = None
        self.endpoint: SipEndpoint | None = None
        self.proxy: Proxy | None = None
        self.health: Health | None = None
        self.dispatcher: Dispatcher | None = None
        self._guard = guard
        self._media = media
        self.http_runner: web.AppRunner | None = None
        self.http_port: int | None = None
        self._tasks: list[asyncio.Task] = []
        self.media = None
        #: node.ports.Membership-like view of the cluster (given, or opened from [etcd])
        self.membership = membership
        self._feed: MembershipFeed | None = None
        self._close_membership = None
        #: tenants' edge policies from the cluster ([etcd]) and the shared call counters
        self.policies: ClusterPolicies | None = None
        self._close_config = None
        self.counters: counters.CounterTable | None = None
        self._own_counters = False
        #: the tenants' counts shared with the other SBC hosts through etcd (first worker only)
        self.cluster_counts: ClusterCounts | None = None
        self._close_counts = None

    async def start(self) -> None:
        cfg = self.cfg
        loop = asyncio.get_running_loop()
        layer = TransactionLayer()
        self.endpoint = SipEndpoint(layer)
        tls = server_tls_context(cfg.tls_cert, cfg.tls_key) if cfg.tls_cert and cfg.tls_key else None
        self.transports = SbcTransports(self.endpoint.message_received, cfg.max_message_size, tls)
        self.endpoint.transports = self.transports
        if self.worker is not None:
            set_conn_ids(self.worker)
            self.transports.reuse_port = True
        await self.transports.start(cfg.listens + cfg.internal_listens)
        outside = SideAddresses(_sides(cfg.listens, self.transports.listens), cfg.advertise_address)
        if cfg.internal_listens:
            inside = SideAddresses(_sides(cfg.internal_listens, self.transports.listens), cfg.internal_advertise_address)
        else:
            inside = SideAddresses(outside.bound, cfg.internal_advertise_address or cfg.advertise_address)
        if not outside.bound or not inside.bound:
            raise OSError("the SBC could not bind its listening sockets")
        self.dispatcher = Dispatcher(cfg.nodes, cfg.mode, cfg.tenants)
        self.health = Health(
            [n.id for n in cfg.nodes], interval=cfg.probe_interval, down_after=cfg.down_after,
            up_after=cfg.up_after, on_change=self._node_changed,
        )
        for n in cfg.nodes:
            M.node_up(n.id, True)
        M.TRANSACTIONS.set_function(lambda: layer.transaction_count)
        guard = self._guard if self._guard is not None else load_guard(cfg.protection, lambda: layer.transaction_count)
        if guard is not None and hasattr(getattr(guard, "tenants", None), "use_table"):
            # one table for every worker of this host, kept in the state dir (sbc/protection/counters.py)
            self.counters, self._own_counters = counters.for_process(cfg.state_dir)
            guard.tenants.use_table(self.counters)
            if cfg.state_dir:
                self._tasks.append(loop.create_task(self._flush_loop()))
        if cfg.etcd_endpoints and guard is not None and hasattr(guard, "set_tenant_policy"):
            store, self._close_config = await open_etcd_config(cfg)
            self.policies = ClusterPolicies(store, guard, cfg.protection.get("tenants"))
            await self.policies.load()
            self.policies.start()
            if self.counters is not None and (self.worker is None or self.worker.index == 0):
                # one publisher per host: the workers share the table and its cluster view
                self.cluster_counts, self._close_counts = await open_cluster_counts(cfg, guard.tenants)
        media = self._media if self._media is not None else load_media(cfg.media)
        if media is not None and hasattr(media, "start"):
            await media.start()
        self.media = media
        self.proxy = Proxy(
            cfg, self.endpoint, self.dispatcher, self.health, Sealer(cfg.secret), outside, inside,
            guard=guard, media=media, call_later=loop.call_later,
        )
        self.endpoint.on_event = self.proxy.on_event
        self.transports.on_message = self.proxy.message_received
        if self.worker is not None:
            self.relay = Relay(self.worker)
            await self.relay.start(self.proxy.relayed_in, cfg.max_message_size)
            self.proxy.set_worker(self.worker.index, self.worker.count, self.relay.send)
        if self.membership is None and cfg.etcd_endpoints:
            self.membership, self._close_membership = await open_etcd_membership(cfg, f"sbc-{os.getpid()}")
        if self.membership is not None:
            self._feed = MembershipFeed(self.membership, self.set_nodes, {n.id: n for n in cfg.nodes})
            self._feed.start()
        if cfg.probe_interval > 0:
            self._tasks.append(loop.create_task(self._probe_loop()))
        else:
            self._tasks.append(loop.create_task(self._revive_loop()))
        if cfg.keepalive_interval > 0:
            self._tasks.append(loop.create_task(self._keepalive_loop()))
        if cfg.max_loop_lag > 0:
            self._tasks.append(loop.create_task(self._lag_loop()))
        if self._own_gc:
            self._tasks.append(loop.create_task(self._gc_loop()))
        self.http_runner, self.http_port = await self._start_http()

    def _node_changed(self, node_id: str, up: bool) -> None:
        M.node_up(node_id, up)
        if up:
            log.info("node %s is up", node_id, extra={"node": node_id})
        else:
            log.warning("node %s is down", node_id, extra={"node": node_id})

    async def _probe_loop(self) -> None:
        tick = min(self.cfg.probe_interval, 0.5)
        while True:
            try:
                self.proxy.probe_due()
            except Exception:
                log.exception("node probing failed")
            await asyncio.sleep(tick)

    async def _revive_loop(self) -> None:
        while True:
            await asyncio.sleep(1.0)
            self.health.revive(self.endpoint.now(), REVIVE_AFTER)

    def _queued_bytes(self) -> int:
        total = 0
        for t in self.transports._udp.values():
            sock = t.get_extra_info("socket")
            try:
                total += struct.unpack_from("I", sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 36))[0]
            except (OSError, AttributeError, struct.error):
                pass
        return total

    async def _lag_loop(self) -> None:
        """Feeds the load meter: how late a timer due every ``interval`` runs, plus what the
        datagrams waiting in the kernel will take (sbc/overload.py)."""
        loop = asyncio.get_running_loop()
        meter = self.proxy.load
        cost = CostMeter()
        was = False
        while True:
            t0 = loop.time()
            await asyncio.sleep(meter.interval)
            lag = loop.time() - t0 - meter.interval
            price = cost.update(time.process_time(), self.proxy.received)
            now = meter.observe(lag + backlog_seconds(self._queued_bytes(), price)) > 0
            if now != was:
                was = now
                if now:
                    log.warning("overloaded (messages wait %.0f ms): some new calls get 503", meter.smoothed * 1000)
                else:
                    log.warning("load back to normal: new calls accepted again")

    async def _flush_loop(self) -> None:
        """The counters are in the page cache at once (a crash loses nothing); this bounds
        what a power loss could lose."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(5.0)
            with contextlib.suppress(Exception):
                await loop.run_in_executor(None, self.counters.flush)

    async def _gc_loop(self) -> None:
        """Keeps the cyclic GC off the live transactions (sbc/heap.py)."""
        loop = asyncio.get_running_loop()
        keeper = heap.HeapKeeper(loop.time())
        layer = self.endpoint.layer
        while True:
            await asyncio.sleep(heap.FREEZE_EVERY)
            keeper.tick(loop.time(), layer.transaction_count)

    async def _keepalive_loop(self) -> None:
        while True:
            await asyncio.sleep(self.cfg.keepalive_interval)
            try:
                self.proxy.send_keepalives()
            except Exception:
                log.exception("keep-alives failed")

    async def _start_http(self) -> tuple[web.AppRunner, int]:
        async def metrics(_request: web.Request) -> web.Response:
            resp = web.Response(body=generate_latest())
            resp.content_type = CONTENT_TYPE_LATEST.split(";")[0]
            return resp

        async def health(_request: web.Request) -> web.Response:
            return web.json_response(self.status())

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/health", health)
        runner = web.AppRunner(app, access_log=None)
        await runner.setup()
        port = self.cfg.http_port
        if self.worker is not None and port:
            port += self.worker.index  # each worker's own /metrics and /health
        try:
            site = web.TCPSite(runner, self.cfg.http_host, port)
            await site.start()
        except BaseException:
            await runner.cleanup()
            raise
        return runner, runner.addresses[0][1]

    def status(self) -> dict:
        nodes = {n.id: {"up": self.health.is_up(n.id), "dc": n.dc, "address": f"{n.host}:{n.port}"}
                 for n in self.dispatcher.nodes}
        up = sum(1 for v in nodes.values() if v["up"])
        return {"status": "ok" if up else "degraded", "nodes": nodes, "mode": self.dispatcher.mode,
                "registered_udp_flows": len(self.proxy.registered_flows)}

    def set_nodes(self, nodes: list[NodeTarget]) -> None:
        """A new node list (cluster membership): routing and probing follow it at once."""
        known = {n.id for n in self.dispatcher.nodes}
        self.dispatcher.set_nodes(nodes)
        self.health.set_nodes([n.id for n in nodes])
        self.proxy.refresh_nodes()
        for n in nodes:
            if n.id not in known:
                M.node_up(n.id, self.health.is_up(n.id))
        for gone in known - {n.id for n in nodes}:
            M.node_up(gone, False)

    def address(self, transport: str = "udp") -> tuple[str, int]:
        return self.proxy.outside.bound[transport]

    async def stop(self) -> None:
        if self._close_counts is not None:
            with contextlib.suppress(Exception):
                await self._close_counts()
            self._close_counts = self.cluster_counts = None
        if self.policies is not None:
            await self.policies.stop()
            self.policies = None
        if self._close_config is not None:
            with contextlib.suppress(Exception):
                await self._close_config()
            self._close_config = None
        if self._feed is not None:
            self._feed.stop()
            self._feed = None
        if self._close_membership is not None:
            with contextlib.suppress(Exception):
                await self._close_membership()
            self._close_membership = None
        for t in self._tasks:
            t.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
            self.http_runner = None
        if self.relay is not None:
            self.relay.close()
            self.relay = None
        if self.transports is not None:
            await self.transports.close()
        if self.endpoint is not None:
            self.endpoint.close()
        if self.media is not None and hasattr(self.media, "close"):
            with contextlib.suppress(Exception):
                await self.media.close()
            self.media = None
        if self.counters is not None:
            if self._own_counters:
                self.counters.close()
            else:
                self.counters.flush()
            self.counters = None

    async def __aenter__(self) -> "Sbc":
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def _banner(sbc: Sbc) -> str:
    cfg = sbc.cfg
    lines = ["hivepbx SBC running" + (f" (worker {sbc.worker.index + 1} of {sbc.worker.count})" if sbc.worker else "")]
    lines.append("  outside : " + ", ".join(f"{t}:{h}:{p}" for t, (h, p) in sbc.proxy.outside.bound.items()))
    lines.append("  inside  : " + ", ".join(f"{t}:{h}:{p}" for t, (h, p) in sbc.proxy.inside.bound.items()))
    lines.append(f"  mode    : {cfg.mode}" + (f" (dc {cfg.dc})" if cfg.dc else ""))
    for n in cfg.nodes:
        lines.append(f"  node    : {n.id} {n.transport}:{n.host}:{n.port} dc={n.dc or '-'} weight={n.weight}")
    lines.append(f"  HTTP    : http://{cfg.http_host}:{sbc.http_port}/metrics  /health")
    return "\n".join(lines)


async def serve(cfg: SbcConfig, worker: Worker | None = None) -> None:
    olog.setup_logging(cfg.log_level)
    otrace.setup_tracing("hivepbx-sbc", cfg.otel_exporter)
    sbc = Sbc(cfg, worker=worker)
    sbc._own_gc = True
    await sbc.start()
    settle_heap()  # then _gc_loop keeps the live transactions frozen (sbc/heap.py)
    heap.settle()
    print(_banner(sbc) + "\n", end="", flush=True)  # one write: workers share the stdout pipe
    await until_signalled()
    log.info("shutting down")
    await sbc.stop()
    otrace.shutdown_tracing()


def run(cfg: SbcConfig, worker: Worker | None = None) -> int:
    if worker is None:
        counters.prepare(cfg.state_dir, cfg.workers)  # before the fork: every worker shares it
        if cfg.workers > 1:
            return run_workers(cfg, run)
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(cfg, worker))
    else:
        uvloop.run(serve(cfg, worker))
    return 0


__all__ = ["Sbc", "run", "serve", "load_guard", "load_media"]
