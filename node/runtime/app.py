"""Wires one node together and runs it: store, SIP sockets, transaction layer, PBX, RTP relay,
HTTP. Startup and shutdown follow aiohttp's order: stop taking new work, drain calls,
then close in reverse order of opening.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import socket
import time
from pathlib import Path

from node.api.http import start_http
from node.compiled import HOT_PATH, compiled_modules
from node.compiled import status as hot_path_status
from node.embedded import provision_demo
from node.pbx.authn import Authenticator
from node.pbx.cdr_spool import SPOOL_FILENAME, SpooledCdrStore
from node.pbx.keepalive import NatKeepalive
from node.pbx.media import MediaAnchors
from node.pbx.media_rtpengine import RtpengineAnchors, ng_addresses
from node.pbx.service import PbxService
from node.pbx.app_call import AppRuntime
from node.pbx import ivr as _ivr  # noqa: F401  (registers the 'ivr' application)
from node.pbx import voicemail  # registers the 'voicemail' application and the mailbox menu codes
from node.pbx import queue_calls as _queue_calls  # noqa: F401  (registers the 'queue' application)
from node.pbx import conference as _conference  # noqa: F401  (registers the 'conference' application)
from node.pbx import directory as _directory  # noqa: F401  (the dial-by-name directory)
from node.pbx import recording as _recording
from node.acd.service import SNAPSHOT_EVERY, AcdService
from node.pbx.blf_bus import LineStateSharing
from node.embedded.bus import InMemoryBus
from node.media_engine.engine import MediaEngine
from node.media_engine.prompts import PromptError, PromptLibrary
from node.pbx.trunks import TrunkRegistrations
from node.rtp_engine.relay import PortPool, RtpRelay
from node.runtime.backends import open_backend
from node.runtime.config import NodeConfig
from node.sip.transaction import TransactionLayer
from node.transport.endpoint import SipEndpoint
from node.transport.sockets import SipTransports
from node.runtime.process import settle_heap, until_signalled
from observability import logging as olog
from observability import tracing as otrace
from observability import metrics as M

log = logging.getLogger("hivepbx.node")


def _node_secret(data_dir: Path) -> bytes:
    """Digest nonce key, kept in the data dir so nonces survive a restart."""
    p = data_dir / "nonce.key"
    if p.exists():
        return p.read_bytes()
    key = secrets.token_bytes(32)
    fd = os.open(p, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key)
    return key


def _rtp_wildcard() -> str:
    """'::' (dual-stack: IPv4 and IPv6 phones) where the host has IPv6, else '0.0.0.0'."""
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            s.bind(("::", 0))
        return "::"
    except OSError:
        return "0.0.0.0"


class Node:
    """A running node; ``async with Node(cfg) as node`` in tests, ``run(cfg)`` from the CLI."""

    def __init__(self, cfg: NodeConfig) -> None:
        self.cfg = cfg
        self.backend = None
        self.transports: SipTransports | None = None
        self.endpoint: SipEndpoint | None = None
        self.service: PbxService | None = None
        self.relay: RtpRelay | None = None
        #: the node's own media (IVR prompts, ...): shares the relay's port pool
        self.media: MediaEngine | None = None
        self.http_runner = None
        self.http_port: int | None = None
        self.demo: dict | None = None
        self._tasks: list[asyncio.Task] = []
        self.keepalive: NatKeepalive | None = None
        self.trunks: TrunkRegistrations | None = None
        #: the CdrStore calls record into: the backend's, behind the spool when there is one
        self.cdrs = None
        self.cdr_spool: SpooledCdrStore | None = None
        #: ACD queues (node/acd), on the backend's event bus when it has one (Kafka)
        self.acd: AcdService | None = None
        self.blf_sharing: LineStateSharing | None = None
        #: media_relay = "rtpengine": the factory handing plain calls' media to rtpengine
        self.rtpengine: RtpengineAnchors | None = None

    async def start(self) -> None:
        cfg = self.cfg
        cfg.data_dir.mkdir(parents=True, exist_ok=True)
        self.backend = await open_backend(cfg)
        self.cdrs = self.backend.cdrs
        if cfg.cdr_spool if cfg.cdr_spool is not None else cfg.backend != "embedded":
            # a remote store can be down when a call ends: the CDR goes to local disk first
            self.cdr_spool = SpooledCdrStore(self.backend.cdrs, cfg.data_dir / SPOOL_FILENAME)
            await self.cdr_spool.start()
            self.cdrs = self.cdr_spool
        if cfg.demo:
            self.demo = await provision_demo(self.backend.config)
        M.COMPILED_HOT_PATH.set(1 if len(compiled_modules()) == len(HOT_PATH) else 0)
        layer = TransactionLayer()
        self.endpoint = SipEndpoint(layer, advertise_address=cfg.advertise_address, on_parse_error=M.parse_error)
        self.transports = SipTransports(self.endpoint.message_received, cfg.max_message_size)
        self.endpoint.transports = self.transports
        self.relay = RtpRelay(PortPool(cfg.rtp_port_min, cfg.rtp_port_max), cfg.rtp_bind or _rtp_wildcard())
        anchors = MediaAnchors(self.relay, cfg.advertise_address)
        media_factory = anchors.open
        if cfg.media_relay == "rtpengine":
            self.rtpengine = RtpengineAnchors(anchors, ng_addresses(cfg.rtpengine_ng), timeout=cfg.rtpengine_timeout)
            await self.rtpengine.start()
            media_factory = self.rtpengine.open
        elif cfg.media_relay != "local":
            raise ValueError(f'media_relay must be "local" or "rtpengine", not {cfg.media_relay!r}')
        self.service = PbxService(
            cfg, self.endpoint, self.backend.config, self.backend.locations, self.cdrs,
            Authenticator(_node_secret(cfg.data_dir), cfg.nonce_ttl, cfg.digest_algorithms), media_factory,
        )
        self.media = MediaEngine(self.relay.pool, self.relay.bind_host)
        prompts = PromptLibrary(cfg.data_dir)
        await self._build_prompts(prompts)
        self.service.apps = AppRuntime(self.media, prompts, cfg.advertise_address)
        await voicemail.attach(self.service, cfg, prompts)
        bus = getattr(self.backend, "bus", None)
        # alone, the node shares its queues with nobody: a bounded in-process log, no snapshots
        self.acd = AcdService(bus or InMemoryBus(max_records=50_000), cfg.node_id,
                              snapshot_every=SNAPSHOT_EVERY if bus is not None else 0)
        await self.acd.start()
        self.acd.follow(self.backend.membership)  # a dead node's callers leave the queues
        self.service.acd = self.acd  # read by node/pbx/queue_calls.py
        if bus is not None:
            # busy lamps of extensions whose calls run on other nodes
            self.blf_sharing = LineStateSharing(bus, self.service.line_states, cfg.node_id)
            await self.blf_sharing.start()
        self.endpoint.on_event = self.service.on_event
        M.track_transactions(lambda: layer.transaction_count)
        await self.transports.start(cfg.listens)
        self.http_runner, self.http_port = await start_http(cfg.http_host, cfg.http_port, self.health)
        loop = asyncio.get_running_loop()
        self._tasks.append(loop.create_task(self._expire_loop()))
        if cfg.nat_ping_interval > 0:
            self.keepalive = NatKeepalive(self.backend.locations, self.endpoint, cfg.nat_ping_interval)
            self._tasks.append(loop.create_task(self.keepalive.run()))
        # outbound registration to carriers: needs the sockets bound and the service dispatching
        self.trunks = TrunkRegistrations(self.backend.config, self.endpoint, self.service.auth)
        await self.trunks.start()
        M.registrations_set(len(await self.backend.locations.list(None, time.time())))
        # listed in the cluster only once it serves; a single node is its only member
        await self.backend.membership.join(self._member_info())

    def _member_info(self) -> dict:
        return {
            "sip": [f"{l.transport}:{l.host}:{l.port}" for l in self.transports.listens],
            "http_port": self.http_port,
            "advertise_address": self.cfg.advertise_address,
        }

    @staticmethod
    async def _build_prompts(prompts: PromptLibrary) -> None:
        """Default prompts on first start (normally made by ``hivepbx prompts build`` at
        install time). A node without espeak-ng still runs: its IVRs play tenant recordings."""
        if not prompts.missing_defaults():
            return
        try:
            made = await asyncio.get_running_loop().run_in_executor(None, prompts.build)
            log.info("built %d default prompts in %s", len(made), prompts.default_dir)
        except (PromptError, OSError) as e:
            log.warning("default prompts missing and cannot be built: %s", e)

    async def _expire_loop(self) -> None:
        while True:
            await asyncio.sleep(5)
            try:
                n = await self.backend.locations.expire(time.time())
                if n:
                    log.info("%d registrations expired", n)
                M.registrations_set(len(await self.backend.locations.list(None, time.time())))
            except Exception:
                log.exception("registration expiry failed")

    async def health(self) -> dict:
        svc = self.service
        out = {"status": "ok" if svc and not svc.draining else "degraded", **(svc.health() if svc else {})}
        if self.trunks is not None:
            states: dict[str, int] = {}
            for st in self.trunks.status():
                states[st["state"]] = states.get(st["state"], 0) + 1
            out["trunk_registrations"] = states
        if self.cdr_spool is not None:
            out["cdr_spool"] = self.cdr_spool.status()
        if self.acd is not None:
            # queue partitions this node cannot rebuild (missed records) are reported, not made a
            # 503: a log gap is usually the same on every node, and taking them all out of load
            # balancing would turn a queue outage into a total one (alert on the gauge
            # hivepbx_acd_unhealthy_partitions instead)
            out["acd"] = self.acd.health()
        if self.backend is not None:
            out["cluster"] = {"node_id": self.cfg.node_id, "members": sorted(self.backend.membership.members())}
        out["hot_path"] = hot_path_status().state
        return out

    @property
    def sip_port(self) -> int:
        assert self.transports is not None
        b = self.transports.bound("udp") or self.transports.bound("tcp")
        return b[1] if b else 0

    async def stop(self, drain_timeout: float = 2.0) -> None:
        if self.backend is not None:
            # other nodes stop counting on this one before it stops taking calls
            try:
                await self.backend.membership.leave()
            except Exception:
                log.exception("leaving the cluster failed")
        if self.service is not None:
            await self.service.drain(drain_timeout)
            if getattr(self.service, "voicemail", None) is not None:
                await self.service.voicemail.close()  # e-mails of the last messages
        if self.rtpengine is not None:
            await self.rtpengine.close()  # deletes the sessions of the calls just ended
            self.rtpengine = None
        if self.trunks is not None:
            # un-REGISTER while the sockets are still open (bounded by its stop_timeout)
            await self.trunks.stop()
        for task in self._tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        self._tasks.clear()
        if self.http_runner is not None:
            await self.http_runner.cleanup()
        if self.transports is not None:
            await self.transports.close()
        if self.endpoint is not None:
            self.endpoint.close()
        if self.blf_sharing is not None:
            await self.blf_sharing.close()
            self.blf_sharing = None
        if self.acd is not None:
            await self.acd.close()
        if self.media is not None:
            self.media.close()
        if self.relay is not None:
            self.relay.close()
        # call recordings of the calls just ended are still being written: none is lost
        await _recording.drain()
        if self.cdr_spool is not None:
            # after the drain flushed the recorder into it; what the store does not take in
            # time stays on disk for the next start
            await self.cdr_spool.close(drain_timeout + 1.0)
            self.cdr_spool = None
        if self.backend is not None:
            await self.backend.aclose()

    async def __aenter__(self) -> "Node":
        try:
            await self.start()
        except BaseException:
            await self.stop(0)
            raise
        return self

    async def __aexit__(self, *exc) -> None:
        await self.stop()


def _banner(node: Node) -> str:
    cfg = node.cfg
    lines = [
        "hivepbx node running",
        f"  data directory : {cfg.data_dir}",
        "  SIP            : " + ", ".join(
            f"{l.transport}:[{l.host}]:{l.port}" if ":" in l.host else f"{l.transport}:{l.host}:{l.port}"
            for l in node.transports.listens
        ),
        f"  RTP ports      : {cfg.rtp_port_min}-{cfg.rtp_port_max}",
        f"  media relay    : {cfg.media_relay}" + (f" ({', '.join(cfg.rtpengine_ng)})" if cfg.media_relay == "rtpengine" else ""),
        f"  HTTP           : http://{cfg.http_host}:{node.http_port}/metrics  /health",
    ]
    if cfg.backend != "embedded":
        lines.append(f"  cluster        : node {cfg.node_id}, backend {cfg.backend}, etcd {','.join(cfg.etcd_endpoints)}")
    if node.demo:
        d = node.demo
        lines.append(f"  demo tenant    : {d['tenant']}  SIP domain {d['domain']}")
        for ext in d["extensions"]:
            lines.append(f"    extension {ext['number']}  password {ext['password']}")
        lines.append(
            f"  register a softphone as <ext>@{d['domain']} with this host as outbound proxy / registrar"
        )
    return "\n".join(lines)


async def serve(cfg: NodeConfig) -> None:
    olog.setup_logging(cfg.log_level)
    otrace.setup_tracing("hivepbx-node", cfg.otel_exporter)
    node = Node(cfg)
    await node.start()
    settle_heap()
    print(_banner(node), flush=True)
    await until_signalled()
    log.info("shutting down")
    await node.stop(5.0)
    otrace.shutdown_tracing()


def run(cfg: NodeConfig) -> int:
    try:
        import uvloop
    except ImportError:  # pragma: no cover - uvloop is a dependency
        asyncio.run(serve(cfg))
    else:
        uvloop.run(serve(cfg))
    return 0
