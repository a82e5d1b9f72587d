"""Several SBC processes on the same ports (SO_REUSEPORT), so the edge scales with cores.

``hivepbx sbc --workers N`` forks N workers, each with its own event loop, sockets bound
with SO_REUSEPORT, transaction layer and Guard. The kernel spreads peers over them by
their address (UDP: the 4-tuple's hash; TCP: at accept), so a phone's requests, their
retransmissions and its CANCELs always meet the worker holding their transactions.

What a single process gets for free needs two rules here:

* **Tokens**: the secret is shared (forked from one config; a random one is drawn once,
  before the fork), so any worker opens any worker's Contact tokens and every in-dialog
  request is routed by whichever worker the kernel hands it to.
* **Responses and connections**: a response comes back to the port, not to the worker
  that sent the request, and a TCP/TLS/WebSocket connection is writable only by the worker
  that accepted it. So every branch a worker puts in its Via ends in ``.w<index>``, every
  connection id it hands out lies in its own range (``index * CONN_SPAN``), and a message
  that belongs to another worker (a response to its branch, a node's request for a phone
  on its connection) is relayed to it over a loopback datagram socket per worker, made
  before the fork. The relay carries the original flow, so the owner handles the message
  as if it had received it itself (the Guard already judged it: it is not judged twice).

Per-source protection state (flood windows, bans, auth failures) is per worker: a source
is hashed to one worker, so its flood limits hold as configured. The per-tenant call counts
and daily usage are shared by all workers (sbc/protection/counters.py, opened before the
fork). ``/metrics`` and ``/health`` of worker i are on ``http`` port + i.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import os
import signal
import socket
import sys
from dataclasses import dataclass

from node.sip.errors import RemoteProtocolError
from node.sip.flow import Flow
from node.sip.message import Message
from node.sip.parser import parse_datagram

log = logging.getLogger("hivepbx.sbc")

#: connection ids of worker i are i * CONN_SPAN + 1, + 2, ...
CONN_SPAN = 1 << 40
_TAG = ".w"


@dataclass
class Worker:
    index: int
    count: int
    #: this worker's relay socket (bound before the fork) and every worker's relay address
    sock: socket.socket
    peers: list[tuple[str, int]]

    @property
    def branch_tag(self) -> str:
        return f"{_TAG}{self.index}"

    def first_conn_id(self) -> int:
        return self.index * CONN_SPAN + 1


def branch_owner(branch: str | None) -> int | None:
    """The worker index a branch of ours names, or None (not one of ours)."""
    if not branch:
        return None
    i = branch.rfind(_TAG)
    if i < 0:
        return None
    k = branch[i + 2:]
    return int(k) if k.isdigit() and len(k) < 6 else None


def conn_owner(conn_id: int) -> int:
    return conn_id // CONN_SPAN


def encode(msg: Message, flow: Flow) -> bytes:
    head = f"{flow.transport}|{flow.remote[0]}|{flow.remote[1]}|{flow.local[0]}|{flow.local[1]}|{flow.conn_id}\n"
    return head.encode() + msg.to_bytes()


def decode(data: bytes, max_size: int) -> tuple[Message | RemoteProtocolError, Flow] | None:
    head, nl, rest = data.partition(b"\n")
    parts = head.decode("ascii", "replace").split("|")
    if not nl or len(parts) != 6:
        return None
    try:
        flow = Flow(parts[0], (parts[1], int(parts[2])), (parts[3], int(parts[4])), int(parts[5]))
    except ValueError:
        return None
    try:
        item: Message | RemoteProtocolError = parse_datagram(rest, max_size)
    except RemoteProtocolError as e:
        item = e
    return item, flow


class _RelayProtocol(asyncio.DatagramProtocol):
    def __init__(self, on_item, peers: list[tuple[str, int]], max_size: int) -> None:
        self.on_item = on_item
        self.peers = set(peers)
        self.max_size = max_size

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        if (addr[0], addr[1]) not in self.peers:
            return  # only our siblings write here
        got = decode(data, self.max_size)
        if got is not None:
            self.on_item(*got)


class Relay:
    """The sending and receiving end of one worker's relay socket."""

    def __init__(self, worker: Worker) -> None:
        self.worker = worker
        self.transport: asyncio.DatagramTransport | None = None
        self.relayed = 0

    async def start(self, on_item, max_size: int) -> None:
        loop = asyncio.get_running_loop()
        self.worker.sock.setblocking(False)
        self.transport, _ = await loop.create_datagram_endpoint(
            lambda: _RelayProtocol(on_item, self.worker.peers, max_size), sock=self.worker.sock)

    def send(self, index: int, msg: Message, flow: Flow) -> None:
        if self.transport is None:
            return
        self.relayed += 1
        self.transport.sendto(encode(msg, flow), self.worker.peers[index])

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()
            self.transport = None


def set_conn_ids(worker: Worker) -> None:
    """Give this worker's connections ids no sibling uses (they are in the flow tokens)."""
    from node.transport import sockets
    from sbc import transports

    sockets._conn_ids = itertools.count(worker.first_conn_id())
    transports._ids = itertools.count(worker.first_conn_id())


def run_workers(cfg, run_one) -> int:
    """Fork ``cfg.workers`` processes running ``run_one(cfg, worker)``; supervise them: a
    SIGTERM/SIGINT stops all; one that dies stops the rest (the supervisor above restarts)."""
    n = cfg.workers
    socks = []
    for _ in range(n):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("127.0.0.1", 0))
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 * 1024 * 1024)
        socks.append(s)
    peers = [s.getsockname() for s in socks]
    sys.stdout.flush()
    sys.stderr.flush()
    pids: list[int] = []
    for i in range(n):
        pid = os.fork()
        if pid == 0:  # the worker
            code = 1
            try:
                for j, s in enumerate(socks):
                    if j != i:
                        s.close()
                code = run_one(cfg, Worker(i, n, socks[i], peers))
            except KeyboardInterrupt:
                code = 0
            except BaseException:
                log.exception("SBC worker %d failed", i)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code if isinstance(code, int) else 1)
        pids.append(pid)
    for s in socks:
        s.close()
    stopping = False

    def stop(*_):
        nonlocal stopping
        stopping = True
        for p in pids:
            try:
                os.kill(p, signal.SIGTERM)
            except ProcessLookupError:
                pass

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    rc = 0
    live = set(pids)
    while live:
        try:
            pid, status = os.wait()
        except ChildProcessError:
            break
        except InterruptedError:
            continue
        live.discard(pid)
        code = os.waitstatus_to_exitcode(status)
        if not stopping:
            print(f"error: SBC worker {pids.index(pid)} exited ({code}): stopping the others", file=sys.stderr)
            rc = 1
            stop()
        elif code not in (0, -signal.SIGTERM):
            rc = rc or 1
    return rc
