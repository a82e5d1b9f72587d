"""Connecting to etcd and the key layout every hivepbx node shares.

Layout under the cluster's prefix (default ``/hivepbx/``)::

    cfg/tenant/<id>                   tenant (JSON)
    cfg/tname/<name, lower-cased>     uniqueness guard of tenant names -> id
    cfg/domain/<domain>               uniqueness guard of SIP domains -> id
    cfg/did/<number without +>        DID (JSON): one owner across all tenants
    cfg/t/<tenant id>/did/<number>    the tenant's copy of its DID, written in the same transaction
    cfg/t/<tenant id>/ext/<number>    extension (JSON)
    cfg/t/<tenant id>/trunk/<name>    trunk (JSON)
    cfg/t/<tenant id>/route/<id>      outbound route (JSON)
    cfg/t/<tenant id>/rkey/<trunk id>/<prefix>   uniqueness guard of (prefix, trunk)
    cfg/t/<tenant id>/obj/<kind>/<name>          feature object (canonical JSON)
    cfg/t/<tenant id>/gen             bumped by writes that reference a record (DID -> extension,
                                      route -> trunk) so a delete that checked for referrers
                                      fails its transaction when one appeared meanwhile
    seq/<kind>                        id counters: incremented in the creating transaction
    loc/<tenant id>/<ext>/<contact>   registration (JSON), on a lease that ends with it
    members/<node id>                 a live node (JSON), on the node's keep-alive lease
    leader/<job>                      the node that runs a singleton job, on the same lease

Everything of a tenant but its DIDs and name/domain guards lives under ``cfg/t/<id>/``, so
deleting a tenant is one range delete in the same transaction as the rest.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import TypeVar
from urllib.parse import quote, unquote

import aetcd

DEFAULT_PREFIX = "/hivepbx/"


T = TypeVar("T")


class EtcdUnavailable(ConnectionError):
    """No endpoint of the list answered."""


class EtcdTimeout(EtcdUnavailable):
    """etcd did not answer within the caller's deadline: a stalled etcd is treated as a down
    one (a caller with a fallback takes it now, not after the client's whole timeout)."""


async def within(aw: Awaitable[T], seconds: float) -> T:
    """``await aw``, or EtcdTimeout once ``seconds`` passed (``aw`` is cancelled). Why
    ``asyncio.timeout`` and not ``wait_for``: on Python 3.11 ``wait_for`` can swallow a cancel
    of the caller that arrives as ``aw`` completes, and a stopping task would then run on."""
    try:
        async with asyncio.timeout(seconds):
            return await aw
    except TimeoutError:
        raise EtcdTimeout(f"etcd did not answer within {seconds:g} s") from None


def prefix_end(prefix: bytes) -> bytes:
    """The range end that covers every key starting with ``prefix``."""
    b = bytearray(prefix)
    for i in range(len(b) - 1, -1, -1):
        if b[i] < 0xFF:
            b[i] += 1
            return bytes(b[: i + 1])
    return b"\0"


def parse_endpoints(value: str | list[str] | tuple[str, ...]) -> list[tuple[str, int]]:
    """'h1:2379,h2:2379' (or a list, or 'http://h:p') -> [(host, port)]; ValueError when bad."""
    items = value.split(",") if isinstance(value, str) else list(value)
    out = []
    for item in items:
        item = item.strip()
        for scheme in ("http://", "https://"):
            item = item.removeprefix(scheme)
        item = item.rstrip("/")
        if not item:
            continue
        if item.startswith("["):
            host, _, rest = item[1:].partition("]")
            port_s = rest.removeprefix(":")
        elif item.count(":") == 1:
            host, port_s = item.split(":")
        else:
            host, port_s = item, "2379"
        if not port_s.isdigit() or not 0 < int(port_s) < 65536 or not host:
            raise ValueError(f"invalid etcd endpoint {item!r}: expected HOST:PORT")
        out.append((host, int(port_s)))
    if not out:
        raise ValueError("no etcd endpoint given: expected HOST:PORT[,HOST:PORT...]")
    return out


async def connect(endpoints, *, timeout: float = 5.0) -> aetcd.Client:
    """A connected client to the first endpoint that answers. aetcd talks to one endpoint;
    trying the list in order at start is what a node can do without a load balancer."""
    errors = []
    for host, port in parse_endpoints(endpoints):
        client = aetcd.Client(host=host, port=port, timeout=timeout)
        try:
            await client.connect()
            await client.status()
            return client
        except Exception as e:
            errors.append(f"{host}:{port}: {e}")
            await client.close()
    raise EtcdUnavailable("cannot reach etcd (" + "; ".join(errors) + ")")


async def open_with_client(
    endpoints,
    build: Callable[[aetcd.Client], Awaitable[tuple[T, Callable[[], Awaitable[None]]]]],
    *,
    timeout: float = 5.0,
) -> tuple[T, Callable[[], Awaitable[None]]]:
    """Something that lives on its own etcd connection: ``build(client)`` returns (it, its
    close). Returns (it, close), where ``close()`` closes it, then the client (also when the
    first fails); when ``build`` fails the client is closed before the error propagates.
    Why here: every component with its own connection (the SBC's view of the configuration,
    its tenant counts) needs exactly this, and a leaked client keeps a gRPC channel open."""
    client = await connect(endpoints, timeout=timeout)
    try:
        built, close_built = await build(client)
    except BaseException:
        await client.close()
        raise

    async def close() -> None:
        try:
            await close_built()
        finally:
            await client.close()

    return built, close


class Keys:
    """Byte keys of the layout above, under one prefix."""

    def __init__(self, prefix: str = DEFAULT_PREFIX) -> None:
        if not prefix.endswith("/"):
            prefix += "/"
        p = prefix.encode()
        self.root = p
        self.cfg = p + b"cfg/"
        self.seq_root = p + b"seq/"
        self.loc_root = p + b"loc/"
        self.members_root = p + b"members/"
        self.leader_root = p + b"leader/"

    # --- config
    def tenant(self, tid: int) -> bytes:
        return b"%scfg/tenant/%d" % (self.root, tid)

    def tname(self, name: str) -> bytes:
        return self.root + b"cfg/tname/" + name.lower().encode()

    def domain(self, domain: str) -> bytes:
        return self.root + b"cfg/domain/" + domain.encode()

    def did(self, key: str) -> bytes:
        return self.root + b"cfg/did/" + key.encode()

    def did_ref(self, tid: int, key: str) -> bytes:
        """The tenant's copy of its DID: what a tenant or extension delete checks, without
        reading every tenant's DIDs."""
        return self.tprefix(tid) + b"did/" + key.encode()

    def did_refs(self, tid: int) -> bytes:
        return self.tprefix(tid) + b"did/"

    def tprefix(self, tid: int) -> bytes:
        return b"%scfg/t/%d/" % (self.root, tid)

    def ext(self, tid: int, number: str) -> bytes:
        return self.tprefix(tid) + b"ext/" + number.encode()

    def trunk(self, tid: int, name: str) -> bytes:
        return self.tprefix(tid) + b"trunk/" + name.encode()

    def route(self, tid: int, rid: int) -> bytes:
        return self.tprefix(tid) + b"route/%d" % rid

    def routes(self, tid: int) -> bytes:
        return self.tprefix(tid) + b"route/"

    def route_guard(self, tid: int, trunk_id: int, prefix: str) -> bytes:
        return self.tprefix(tid) + b"rkey/%d/%s" % (trunk_id, prefix.encode())

    def obj(self, tid: int, kind: str, name: str) -> bytes:
        return self.tprefix(tid) + b"obj/" + kind.encode() + b"/" + quote(name, safe="").encode()

    def gen(self, tid: int) -> bytes:
        return self.tprefix(tid) + b"gen"

    def seq(self, kind: str) -> bytes:
        return self.seq_root + kind.encode()

    # --- registrations
    def loc(self, tid: int, ext: str, contact: str) -> bytes:
        return b"%s%d/%s/%s" % (self.loc_root, tid, ext.encode(), quote(contact, safe="").encode())

    def loc_ext(self, tid: int, ext: str) -> bytes:
        return b"%s%d/%s/" % (self.loc_root, tid, ext.encode())

    def loc_tenant(self, tid: int) -> bytes:
        return b"%s%d/" % (self.loc_root, tid)

    # --- membership
    def member(self, node_id: str) -> bytes:
        return self.members_root + node_id.encode()

    def leader(self, job: str) -> bytes:
        return self.leader_root + job.encode()


def unquote_name(raw: bytes) -> str:
    return unquote(raw.decode())


def endpoints_from_env() -> str | None:
    return os.environ.get("HIVEPBX_ETCD") or None
