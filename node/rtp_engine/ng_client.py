"""Client of rtpengine's control protocol "ng": bencoded dictionaries over UDP.

Each request is ``<cookie> <bencoded dict>`` and the reply echoes the cookie. UDP loses
datagrams, so a request is resent with the SAME cookie after ``timeout``: rtpengine caches
replies by cookie, so a resent offer is answered from the cache instead of being applied
twice. ``retries`` resends without a reply mean the instance is unreachable
(``NgTimeout``); an answer with ``result: error`` is ``NgError`` with rtpengine's reason.

The bencode codec is small and strict (the subset rtpengine speaks: dicts, lists, byte
strings, integers). Strings are encoded as UTF-8; decoded byte strings stay bytes except
where ``decode_text`` turns them to str, which ``NgClient`` does for replies (SDP and
reasons are text).
"""

from __future__ import annotations

import asyncio
import itertools
import os
import time
import zlib
from typing import Any

from node.rtp_engine.errors import RelayError

__all__ = ["bencode", "bdecode", "BencodeError", "NgClient", "NgError", "NgInstances", "NgTimeout", "decode_text"]


class BencodeError(ValueError):
    """Bytes that are not valid bencode (or a value bencode cannot carry)."""


def bencode(value: Any) -> bytes:
    out: list[bytes] = []
    _enc(value, out)
    return b"".join(out)


def _enc(v: Any, out: list[bytes]) -> None:
    if isinstance(v, bytes):
        out.append(b"%d:" % len(v))
        out.append(v)
    elif isinstance(v, str):
        b = v.encode()
        out.append(b"%d:" % len(b))
        out.append(b)
    elif isinstance(v, bool):
        raise BencodeError("bencode has no booleans (rtpengine flags are strings in a list)")
    elif isinstance(v, int):
        out.append(b"i%de" % v)
    elif isinstance(v, (list, tuple)):
        out.append(b"l")
        for x in v:
            _enc(x, out)
        out.append(b"e")
    elif isinstance(v, dict):
        out.append(b"d")
        items = [(k.encode() if isinstance(k, str) else k, x) for k, x in v.items()]
        for k, x in sorted(items):  # keys sorted as raw bytes (BEP 3)
            if not isinstance(k, bytes):
                raise BencodeError(f"dictionary key {k!r} is not a string")
            out.append(b"%d:" % len(k))
            out.append(k)
            _enc(x, out)
        out.append(b"e")
    else:
        raise BencodeError(f"cannot bencode {type(v).__name__}")


def bdecode(data: bytes) -> Any:
    """Decode exactly one value filling ``data``; BencodeError otherwise."""
    try:
        value, end = _dec(data, 0, 0)
    except (IndexError, ValueError) as e:
        if isinstance(e, BencodeError):
            raise
        raise BencodeError(f"truncated or malformed bencode: {e}") from None
    if end != len(data):
        raise BencodeError(f"{len(data) - end} trailing bytes after the bencoded value")
    return value


_MAX_DEPTH = 64


def _dec(d: bytes, i: int, depth: int) -> tuple[Any, int]:
    if depth > _MAX_DEPTH:
        raise BencodeError("bencode nested too deep")
    c = d[i]
    if c == 0x69:  # i
        end = d.index(b"e", i)
        text = d[i + 1 : end]
        if not text or text == b"-0" or (text[0] == 0x30 and len(text) > 1) or text.startswith(b"-0"):
            raise BencodeError(f"bad integer {text[:20]!r}")
        return int(text), end + 1
    if c == 0x6C:  # l
        i += 1
        items = []
        while d[i] != 0x65:
            v, i = _dec(d, i, depth + 1)
            items.append(v)
        return items, i + 1
    if c == 0x64:  # d
        i += 1
        out: dict[bytes, Any] = {}
        while d[i] != 0x65:
            k, i = _dec(d, i, depth + 1)
            if not isinstance(k, bytes):
                raise BencodeError("dictionary key is not a string")
            out[k], i = _dec(d, i, depth + 1)
        return out, i + 1
    if 0x30 <= c <= 0x39:
        colon = d.index(b":", i)
        n_text = d[i:colon]
        if not n_text.isdigit() or (len(n_text) > 1 and n_text[0] == 0x30):
            raise BencodeError(f"bad string length {n_text[:20]!r}")
        n = int(n_text)
        start = colon + 1
        if start + n > len(d):
            raise BencodeError("string runs past the end")
        return d[start : start + n], start + n
    raise BencodeError(f"unexpected byte {bytes([c])!r} at {i}")


def decode_text(v: Any) -> Any:
    """bytes → str (UTF-8, replacing bad bytes) through dicts and lists: a reply as text."""
    if isinstance(v, bytes):
        return v.decode("utf-8", "replace")
    if isinstance(v, dict):
        return {decode_text(k): decode_text(x) for k, x in v.items()}
    if isinstance(v, list):
        return [decode_text(x) for x in v]
    return v


class NgError(RelayError):
    """rtpengine answered ``result: error`` (``reason`` is its error-reason)."""

    def __init__(self, command: str, reason: str) -> None:
        super().__init__(f"rtpengine {command} failed: {reason}")
        self.command = command
        self.reason = reason


class NgTimeout(RelayError):
    """No answer after every retry: the instance is down or unreachable."""


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self, client: "NgClient") -> None:
        self.client = client

    def datagram_received(self, data: bytes, addr) -> None:  # type: ignore[override]
        self.client._received(data)

    def error_received(self, exc: Exception) -> None:  # ICMP port unreachable: just wait/retry
        pass


class NgClient:
    """One rtpengine instance's ng control port.

    ``await client.offer(call_id, from_tag, sdp, flags=[...], **extra)`` and friends return
    the reply dict (str keys and values); ``command(name, **args)`` sends anything else.
    """

    def __init__(self, host: str, port: int, *, timeout: float = 0.5, retries: int = 3) -> None:
        self.host = host
        self.port = port
        self.timeout = timeout
        self.retries = retries
        self._transport: asyncio.DatagramTransport | None = None
        self._pending: dict[bytes, asyncio.Future] = {}
        self._prefix = os.urandom(4).hex().encode()
        self._seq = itertools.count(1)
        self._lock = asyncio.Lock()
        self.sent = 0
        self.resent = 0

    def __repr__(self) -> str:
        return f"<NgClient {self.host}:{self.port}>"

    async def _ensure(self) -> asyncio.DatagramTransport:
        if self._transport is None or self._transport.is_closing():
            async with self._lock:
                if self._transport is None or self._transport.is_closing():
                    loop = asyncio.get_running_loop()
                    self._transport, _ = await loop.create_datagram_endpoint(
                        lambda: _Protocol(self), remote_addr=(self.host, self.port)
                    )
        return self._transport

    def _received(self, data: bytes) -> None:
        cookie, sep, payload = data.partition(b" ")
        fut = self._pending.get(cookie)
        if fut is None or fut.done() or not sep:
            return  # a late duplicate, or noise
        try:
            fut.set_result(bdecode(payload))
        except BencodeError as e:
            fut.set_exception(NgError("reply", f"undecodable reply: {e}"))

    async def command(self, command: str, **args: Any) -> dict[str, Any]:
        """Send ``command`` with ``args`` (``_`` in names become ``-``); the reply as text."""
        msg = {"command": command}
        for k, v in args.items():
            if v is not None:
                msg[k.replace("_", "-")] = v
        payload = bencode(msg)
        transport = await self._ensure()
        cookie = b"%s_%d" % (self._prefix, next(self._seq))
        fut = asyncio.get_running_loop().create_future()
        self._pending[cookie] = fut
        datagram = cookie + b" " + payload
        try:
            for attempt in range(self.retries + 1):
                transport.sendto(datagram)
                if attempt:
                    self.resent += 1
                else:
                    self.sent += 1
                try:
                    raw = await asyncio.wait_for(asyncio.shield(fut), self.timeout)
                    break
                except asyncio.TimeoutError:
                    continue
            else:
                raise NgTimeout(f"rtpengine {self.host}:{self.port} did not answer {command} "
                                f"({self.retries + 1} tries, {self.timeout:g}s each)")
        finally:
            self._pending.pop(cookie, None)
            if not fut.done():
                fut.cancel()
        if not isinstance(raw, dict):
            raise NgError(command, "reply is not a dictionary")
        reply = decode_text(raw)
        result = reply.get("result")
        if result == "error":
            raise NgError(command, str(reply.get("error-reason", "no reason given")))
        if result not in ("ok", "pong"):
            raise NgError(command, f"unexpected result {result!r}")
        return reply

    async def ping(self) -> bool:
        """True when the instance answers pong; False when it does not answer at all."""
        try:
            return (await self.command("ping")).get("result") == "pong"
        except (NgTimeout, NgError):
            return False

    async def offer(self, call_id: str, from_tag: str, sdp: str, **args: Any) -> dict[str, Any]:
        return await self.command("offer", call_id=call_id, from_tag=from_tag, sdp=sdp, **args)

    async def answer(self, call_id: str, from_tag: str, to_tag: str, sdp: str, **args: Any) -> dict[str, Any]:
        return await self.command("answer", call_id=call_id, from_tag=from_tag, to_tag=to_tag, sdp=sdp, **args)

    async def delete(self, call_id: str, from_tag: str | None = None, to_tag: str | None = None, **args: Any) -> dict[str, Any]:
        return await self.command("delete", call_id=call_id, from_tag=from_tag, to_tag=to_tag, **args)

    async def query(self, call_id: str, **args: Any) -> dict[str, Any]:
        return await self.command("query", call_id=call_id, **args)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()
            self._transport = None
        for fut in self._pending.values():
            if not fut.done():
                fut.cancel()
        self._pending.clear()


class NgInstances:
    """Several rtpengine instances for one purpose, with failover.

    A call sticks to one instance (the first of ``candidates``: a hash of its id picks it); an
    instance that times out is marked down for ``down_time`` seconds and the
    next healthy one is tried (``candidates``). ``check`` pings them all (recovers the down).
    """

    def __init__(self, addresses: list[tuple[str, int]], *, timeout: float = 0.5, retries: int = 2,
                 down_time: float = 10.0, clock=None) -> None:
        if not addresses:
            raise ValueError("no rtpengine ng address")
        self.clients = [NgClient(h, p, timeout=timeout, retries=retries) for h, p in addresses]
        self.down_time = down_time
        self.clock = clock or time.monotonic
        self._down_until = [0.0] * len(self.clients)

    def candidates(self, key: str) -> list[NgClient]:
        """Every instance, the key's own first, healthy ones before those marked down."""
        n = len(self.clients)
        start = zlib.crc32(key.encode()) % n
        order = [(start + i) % n for i in range(n)]
        now = self.clock()
        return ([self.clients[i] for i in order if self._down_until[i] <= now]
                + [self.clients[i] for i in order if self._down_until[i] > now])

    def mark_down(self, client: NgClient) -> None:
        self._down_until[self.clients.index(client)] = self.clock() + self.down_time

    def mark_up(self, client: NgClient) -> None:
        self._down_until[self.clients.index(client)] = 0.0

    def is_up(self, client: NgClient) -> bool:
        return self._down_until[self.clients.index(client)] <= self.clock()

    async def check(self) -> int:
        """Ping every instance; the number answering."""
        oks = await asyncio.gather(*(c.ping() for c in self.clients))
        for c, ok in zip(self.clients, oks):
            self.mark_up(c) if ok else self.mark_down(c)
        return sum(oks)

    def close(self) -> None:
        for c in self.clients:
            c.close()
