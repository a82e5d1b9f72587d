"""Busy lamps across a cluster: every node publishes its own line state changes on the event
bus and applies the other nodes' to its ``LineStates``, so a phone on node A sees the lamp of
an extension whose call runs on node B.

Topic ``hivepbx.blf``, key ``<tenant_id>:<extension>``: one line's changes share a partition
and so stay in order. A node reads the topic from the start (the bus has no "latest" offset)
and so rebuilds the current remote state on start; records older than ``stale_after`` are
skipped (a node that died mid-call never publishes "terminated": its dialogs would light a
lamp for ever), as are its own records (after a restart its old calls are gone).
Lamps are soft state: a record that cannot be published is logged and dropped, the next
change of that line corrects every watcher.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from collections.abc import Callable

from node.pbx.subscriptions import LineStates
from node.ports import EventBus
from node.sip.events import DIALOG_STATES, DialogInfo

log = logging.getLogger("hivepbx.blf")

TOPIC = "hivepbx.blf"


def encode(node_id: str, tenant_id: int, ext: str, info: DialogInfo, at: float) -> bytes:
    return json.dumps({
        "node": node_id, "tenant": tenant_id, "ext": ext, "at": at, "id": info.id, "call_id": info.call_id,
        "direction": info.direction, "state": info.state, "remote": info.remote, "display": info.remote_display,
    }, separators=(",", ":")).encode()


def decode(value: bytes) -> tuple[str, int, str, DialogInfo, float]:
    """Raises ValueError on a record this version cannot read."""
    try:
        d = json.loads(value)
        info = DialogInfo(str(d["id"]), str(d["call_id"]), d["direction"], d["state"], str(d.get("remote", "")),
                          str(d.get("display", "")))
        node, tenant, ext, at = str(d["node"]), int(d["tenant"]), str(d["ext"]), float(d["at"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"bad BLF record: {e}") from None
    if info.state not in DIALOG_STATES or info.direction not in ("initiator", "recipient"):
        raise ValueError(f"bad BLF record: state {info.state!r} direction {info.direction!r}")
    return node, tenant, ext, info, at


class LineStateSharing:
    def __init__(self, bus: EventBus, lines: LineStates, node_id: str, *, partitions: int = 8,
                 stale_after: float = 6 * 3600, clock: Callable[[], float] = time.time, topic: str = TOPIC) -> None:
        self.bus = bus
        self.topic = topic
        self.lines = lines
        self.node_id = node_id
        self.partitions = partitions
        self.stale_after = stale_after
        self.clock = clock
        self._queue: asyncio.Queue[tuple[str, bytes]] = asyncio.Queue()
        self._tasks: list[asyncio.Task] = []
        self.published = 0
        self.applied = 0
        self.errors = 0

    async def start(self) -> None:
        await self.bus.ensure_topic(self.topic, self.partitions)
        self.lines.publish.append(self._on_local)
        loop = asyncio.get_running_loop()
        self._tasks = [loop.create_task(self._publisher(), name="blf-publish"),
                       loop.create_task(self._consumer(), name="blf-consume")]

    async def close(self) -> None:
        if self._on_local in self.lines.publish:
            self.lines.publish.remove(self._on_local)
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            try:
                await t
            except (asyncio.CancelledError, Exception):
                pass
        self._tasks = []

    def _on_local(self, tenant_id: int, ext: str, info: DialogInfo) -> None:
        # one publisher task keeps the order of a line's changes
        self._queue.put_nowait((f"{tenant_id}:{ext}", encode(self.node_id, tenant_id, ext, info, self.clock())))

    async def _publisher(self) -> None:
        while True:
            key, value = await self._queue.get()
            try:
                await self.bus.publish(self.topic, key, value)
                self.published += 1
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                log.warning("publishing busy lamp state of %s failed: %s", key, e)

    async def _consumer(self) -> None:
        while True:
            try:
                async for rec in self.bus.subscribe(self.topic):
                    self._apply(rec.key, rec.value)
                return
            except asyncio.CancelledError:
                raise
            except Exception as e:
                self.errors += 1
                log.warning("reading busy lamp states failed (%s); again in 5s", e)
                await asyncio.sleep(5)

    def _apply(self, key: str, value: bytes) -> None:
        try:
            node, tenant, ext, info, at = decode(value)
        except ValueError as e:
            self.errors += 1
            log.warning("skipping busy lamp record %s: %s", key, e)
            return
        if node == self.node_id or at < self.clock() - self.stale_after:
            return
        self.lines.update(tenant, ext, info, remote=True)
        self.applied += 1
