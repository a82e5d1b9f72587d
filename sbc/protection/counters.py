"""The tenants' live call counts and daily usage, in one fixed-size table every worker of an
SBC host shares (sbc/workers.py forks N processes on one port).

Why a shared table: with a counter per process a tenant's "max 10 calls" became 10 per
worker, and its day's usage was split N ways. Why this shape:

* **Shared memory, one lock.** The table is an ``mmap`` made before the fork (MAP_SHARED),
  so every worker reads and writes the same pages; a ``multiprocessing.Lock`` (a futex, no
  system call when uncontended) made before the fork serialises the updates. Each
  operation is a few ``struct`` reads/writes under the lock: microseconds per call (figure
  in sbc/README.md), no round trip to a coordinator.
* **The call records are shared too**, not just the counts: a call admitted by one worker
  may end in another (a node's BYE reaches the worker its address hashes to).
* **Daily usage is money**: with a state directory the mmap is a file
  (``tenant-counters.v1``), so every update is in the page cache the moment it is made; a
  killed worker or a restarted SBC loses nothing (a power loss may lose what the kernel had
  not written yet: ``flush`` is called every few seconds). The live calls are kept across a
  restart as well: the SBC keeps no dialog state, so those calls go on through the restarted
  SBC and their BYEs end them (and add their usage); a call whose BYE never comes is
  forgotten after ``max_call_age``. Active counts are recounted from the call records at
  open, so an update torn by a crash does not skew them.
* **Bounded**: ``TENANTS`` tenant rows (a row unused for two days is reused) and ``CALLS``
  call records (open addressing, linear probing, backward-shift deletion). A full table
  admits the call without counting it (``hivepbx_sbc_tenant_calls_untracked``): the edge
  fails open, the nodes' own limits still hold.

Keys are 64-bit BLAKE2b hashes of the tenant and the Call-ID, stable across restarts
(Python's ``hash()`` is salted per process).

**Several SBC hosts** (sbc/protection/cluster_counts.py): beside the table is the *cluster
view*, an anonymous shared mapping (not kept: etcd has it) that every worker reads under the
same lock. Per tenant row it holds this host's ``cap`` (its calls plus the free slots it
reserved, as etcd last confirmed), the other hosts' live calls and their usage of the
tenant's day, and a ``want`` flag (a call was refused for lack of reserved slots). In
``RESERVED`` mode a call of a tenant with ``limit`` is admitted only while ``local < cap``:
the caps of all hosts sum to at most the limit (etcd compare-and-swap), so the tenant's total
never passes it. When etcd has not confirmed this host's counts for a lease TTL
(``ETCD_LOST``), other hosts may have taken its slots: it admits on ``local + others' last
known calls < limit`` instead. With one host and no etcd (``LOCAL``) the view is unused.
"""

from __future__ import annotations

import fcntl
import hashlib
import logging
import mmap
import multiprocessing
import os
import struct
from pathlib import Path

import numpy as np

log = logging.getLogger("sbc.protection")

FILENAME = "tenant-counters.v1"
MAGIC = b"HIVECNT1"
#: tenant rows and call records (powers of two); 1.2 MB + 8 MB of shared memory
TENANTS = 16384
CALLS = 262144
#: the call table refuses new records above this share of its slots (probe lengths stay short)
MAX_LOAD = 0.75

_HEAD = struct.Struct("<8sIIIId16s")  # magic, version, tenant rows, call slots, live calls, last sweep, hash key
_HEAD_SIZE = 64
_LIVE, _SWEPT = 20, 24  # offsets in the header
_TROW = struct.Struct("<Qiid48s")  # key, active calls, day (ordinal), usage that day, time zone
_CALL = struct.Struct("<Qiidd")    # key, tenant row, flags, started, answered (-1: not yet)
_CALL_DTYPE = np.dtype([("key", "<u8"), ("trow", "<i4"), ("flags", "<i4"), ("started", "<f8"), ("answered", "<f8")])
_TROW_DTYPE = np.dtype([("key", "<u8"), ("active", "<i4"), ("day", "<i4"), ("usage", "<f8"), ("zone", "S48")])
_Q = struct.Struct("<Q")
_I = struct.Struct("<i")
_D = struct.Struct("<d")
_U = struct.Struct("<I")
_OUTBOUND = 1
#: CounterTable.start's answers (DEFERRED: under the limit, but this host's share of the free
#: slots is used up until its count is published)
STARTED, OVER_LIMIT, NO_ROOM, DEFERRED = 0, 1, 2, 3

#: the cluster view: mode, a publish is wanted now, changes since the last publish
_VHEAD = struct.Struct("<iiI")
_VHEAD_SIZE = 16
_VROW = struct.Struct("<iiiid")  # cap, others' calls, want, others' usage day, their usage
_VROW_DTYPE = np.dtype([("cap", "<i4"), ("remote", "<i4"), ("want", "<i4"), ("rday", "<i4"), ("rusage", "<f8")])
#: the cluster view's modes (module docstring)
LOCAL, RESERVED, ETCD_LOST = 0, 1, 2


class _NoLock:
    __slots__ = ()

    def acquire(self) -> bool:
        return True

    def release(self) -> None:
        pass


class CounterError(OSError):
    """The state directory cannot hold the counters (in use by another SBC, not writable)."""


class CounterTable:
    """Tenant rows and call records in one buffer. Every method takes the lock itself."""

    def __init__(self, buf, lock=None, path: Path | None = None, fd: int | None = None,
                 tenants: int = TENANTS, calls: int = CALLS) -> None:
        self.buf = buf
        self.lock = lock or _NoLock()
        self.path = path
        self._fd = fd
        self.tcap, self.ccap = tenants, calls
        self.tmask, self.cmask = tenants - 1, calls - 1
        self.toff = _HEAD_SIZE
        self.coff = _HEAD_SIZE + tenants * _TROW.size
        self.max_live = int(calls * MAX_LOAD)
        self.secret = b""
        self._hasher = None
        self._hashed_with = b""
        #: the cluster view (module docstring); shared with the workers forked after this
        self.view = mmap.mmap(-1, _VHEAD_SIZE + tenants * _VROW.size)
        _VHEAD.pack_into(self.view, 0, LOCAL, 0, 0)

    # ------------------------------------------------------------------ opening
    @staticmethod
    def size(tenants: int = TENANTS, calls: int = CALLS) -> int:
        return _HEAD_SIZE + tenants * _TROW.size + calls * _CALL.size

    @classmethod
    def open(cls, state_dir: str | os.PathLike | None = None, *, shared: bool = False,
             tenants: int = TENANTS, calls: int = CALLS) -> "CounterTable":
        """In memory (``state_dir`` None), or in ``state_dir``/tenant-counters.v1, created or
        reloaded. ``shared``: the table will be used by forked workers (a real lock).
        Raises CounterError when another SBC holds the file."""
        assert tenants & (tenants - 1) == 0 and calls & (calls - 1) == 0, "capacities are powers of two"
        size = cls.size(tenants, calls)
        lock = multiprocessing.Lock() if shared else None
        if state_dir is None or state_dir == "":
            table = cls(mmap.mmap(-1, size), lock, tenants=tenants, calls=calls)
            table._init_header()
            return table
        path = Path(state_dir) / FILENAME
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        except OSError as e:
            raise CounterError(f"state dir {state_dir}: {e.strerror or e}") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise CounterError(f"state dir {state_dir} is in use by another SBC (its {FILENAME} is locked)") from None
        try:
            have = os.fstat(fd).st_size
            fresh = have == 0
            if not fresh:
                head = os.pread(fd, _HEAD.size, 0)
                ok = len(head) == _HEAD.size and _HEAD.unpack(head)[:4] == (MAGIC, 1, tenants, calls) and have == size
                if not ok:
                    old = path.with_name(f"{FILENAME}.unreadable-{int(os.path.getmtime(path))}")
                    log.error("%s is not a counter table of this version/size: moved to %s, starting empty", path, old)
                    os.rename(path, old)
                    os.close(fd)
                    return cls.open(state_dir, shared=shared, tenants=tenants, calls=calls)
            os.ftruncate(fd, size)
            buf = mmap.mmap(fd, size, mmap.MAP_SHARED, mmap.PROT_READ | mmap.PROT_WRITE)
        except BaseException:
            os.close(fd)
            raise
        table = cls(buf, lock, path, fd, tenants, calls)
        if fresh:
            table._init_header()
        else:
            table._recount()
        return table

    def _init_header(self) -> None:
        self.secret = os.urandom(16)
        _HEAD.pack_into(self.buf, 0, MAGIC, 1, self.tcap, self.ccap, 0, 0.0, self.secret)

    def key(self, text: str) -> int:
        """The key of a tenant or Call-ID in this table."""
        h = self._hasher
        if h is None or self._hashed_with is not self.secret:
            # a keyed BLAKE2b state made once: copying it skips hashing the key block per call
            h = self._hasher = hashlib.blake2b(digest_size=8, key=self.secret)
            self._hashed_with = self.secret
        h = h.copy()
        h.update(text.encode())
        return _Q.unpack(h.digest())[0] or 1

    def _recount(self) -> None:
        """Active calls per tenant and the live count, from the call records (the truth)."""
        self.secret = _HEAD.unpack_from(self.buf, 0)[6]
        calls = np.frombuffer(self.buf, _CALL_DTYPE, self.ccap, self.coff)
        rows = np.frombuffer(self.buf, _TROW_DTYPE, self.tcap, self.toff)
        live = calls["key"] != 0
        counts = np.bincount(calls["trow"][live], minlength=self.tcap)[: self.tcap]
        rows["active"] = counts.astype("<i4")
        _U.pack_into(self.buf, _LIVE, int(live.sum()))
        del calls, rows, live

    def flush(self) -> None:
        """Ask the kernel to write the file now (the page cache already survives a crash)."""
        if self._fd is not None:
            self.buf.flush()

    def close(self) -> None:
        if self._fd is None:
            return
        try:
            self.buf.flush()
            self.buf.close()
        finally:
            os.close(self._fd)  # releases the flock
            self._fd = None

    # ------------------------------------------------------------------ tenant rows
    def _tenant_row(self, tkey: int, create: bool, today: int = 0) -> int:
        """The row of ``tkey`` (-1 if absent and not ``create``, or no room). Caller holds the lock."""
        buf, off, mask = self.buf, self.toff, self.tmask
        i = tkey & mask
        reusable = -1
        for _ in range(self.tcap):
            k, active, day, _u, _z = _TROW.unpack_from(buf, off + i * _TROW.size)
            if k == tkey:
                return i
            if k == 0:
                if not create:
                    return -1
                if reusable < 0:
                    reusable = i
                break
            if create and reusable < 0 and active == 0 and today and day < today - 1:
                reusable = i  # a tenant without calls since before yesterday: its row may go
            i = (i + 1) & mask
        if reusable < 0:
            return -1
        _TROW.pack_into(buf, off + reusable * _TROW.size, tkey, 0, 0, 0.0, b"")
        _VROW.pack_into(self.view, _VHEAD_SIZE + reusable * _VROW.size, 0, 0, 0, 0, 0.0)
        return reusable

    def active(self, tkey: int) -> int:
        self.lock.acquire()
        try:
            row = self._tenant_row(tkey, False)
            return 0 if row < 0 else _I.unpack_from(self.buf, self.toff + row * _TROW.size + 8)[0]
        finally:
            self.lock.release()

    def usage(self, tkey: int, day: int) -> float:
        """The tenant's usage on ``day``: this host's plus what the others last published."""
        self.lock.acquire()
        try:
            row = self._tenant_row(tkey, False)
            if row < 0:
                return 0.0
            _k, _a, d, used, _z = _TROW.unpack_from(self.buf, self.toff + row * _TROW.size)
            _c, _r, _w, rday, rused = _VROW.unpack_from(self.view, _VHEAD_SIZE + row * _VROW.size)
            return (used if d == day else 0.0) + (rused if rday == day else 0.0)
        finally:
            self.lock.release()

    # ------------------------------------------------------------------ call records
    def _find(self, ckey: int) -> int:
        buf, off, mask, size = self.buf, self.coff, self.cmask, _CALL.size
        i = ckey & mask
        while True:
            k = _Q.unpack_from(buf, off + i * size)[0]
            if k == ckey:
                return i
            if k == 0:
                return -1
            i = (i + 1) & mask

    def has_call(self, ckey: int) -> bool:
        self.lock.acquire()
        try:
            return self._find(ckey) >= 0
        finally:
            self.lock.release()

    def start(self, ckey: int, tkey: int, outbound: bool, now: float, zone: str, today: int, limit: int = 0) -> int:
        """Record a call and count it against its tenant, unless the tenant already has
        ``limit`` calls (checked under the lock: two workers cannot both take the last slot).
        Returns STARTED, OVER_LIMIT or NO_ROOM (the table is full: not counted)."""
        self.lock.acquire()
        try:
            buf = self.buf
            live = _U.unpack_from(buf, _LIVE)[0]
            row = self._tenant_row(tkey, True, today)
            if row < 0:
                return NO_ROOM
            toff = self.toff + row * _TROW.size
            k, active, day, used, _z = _TROW.unpack_from(buf, toff)
            if limit:
                view = self.view
                voff = _VHEAD_SIZE + row * _VROW.size
                cap, remote, _w, rday, rused = _VROW.unpack_from(view, voff)
                if active + remote >= limit:
                    return OVER_LIMIT
                mode, _urgent, gen = _VHEAD.unpack_from(view, 0)
                if mode == RESERVED:
                    if active >= cap:  # slots are free, but not reserved here: ask for them now
                        _VROW.pack_into(view, voff, cap, remote, 1, rday, rused)
                        _VHEAD.pack_into(view, 0, mode, 1, gen)
                        return DEFERRED
                    if active + 1 >= cap:
                        _VHEAD.pack_into(view, 0, mode, 1, gen)  # the last reserved slot: publish now
            if live >= self.max_live:
                return NO_ROOM
            i = ckey & self.cmask
            while True:
                k = _Q.unpack_from(buf, self.coff + i * _CALL.size)[0]
                if k == ckey:
                    return STARTED  # already counted
                if k == 0:
                    break
                i = (i + 1) & self.cmask
            _CALL.pack_into(buf, self.coff + i * _CALL.size, ckey, row, _OUTBOUND if outbound else 0, now, -1.0)
            _TROW.pack_into(buf, toff, tkey, active + 1, day, used, zone.encode()[:48])
            _U.pack_into(buf, _LIVE, live + 1)
            self._changed()
            return STARTED
        finally:
            self.lock.release()

    def answered(self, ckey: int, now: float) -> None:
        self.lock.acquire()
        try:
            i = self._find(ckey)
            if i >= 0:
                off = self.coff + i * _CALL.size + 24
                if _D.unpack_from(self.buf, off)[0] < 0:
                    _D.pack_into(self.buf, off, now)
        finally:
            self.lock.release()

    def end(self, ckey: int, now: float, usage: float | None, day_of) -> bool:
        """Release the call; an outbound call's usage (None: answered seconds) is added to its
        tenant's day, ``day_of(zone_name, now)`` (the tenant's date ordinal). False: unknown."""
        self.lock.acquire()
        try:
            i = self._find(ckey)
            if i < 0:
                return False
            buf = self.buf
            _k, row, flags, _started, answered = _CALL.unpack_from(buf, self.coff + i * _CALL.size)
            self._delete(i)
            toff = self.toff + row * _TROW.size
            k, active, day, used, zone = _TROW.unpack_from(buf, toff)
            active = max(0, active - 1)
            if usage is None:
                usage = max(0.0, now - answered) if answered >= 0 else 0.0
            if flags & _OUTBOUND and usage > 0:
                today = day_of(zone.rstrip(b"\0").decode() or "UTC", now)
                used = (used if day == today else 0.0) + usage
                day = today
            _TROW.pack_into(buf, toff, k, active, day, used, zone)
            self._changed()
            return True
        finally:
            self.lock.release()

    def _delete(self, i: int) -> None:
        """Empty slot ``i`` keeping every probe chain unbroken (backward shift). Lock held."""
        buf, off, mask, size = self.buf, self.coff, self.cmask, _CALL.size
        j = i
        while True:
            j = (j + 1) & mask
            k = _Q.unpack_from(buf, off + j * size)[0]
            if k == 0:
                break
            home = k & mask
            # the entry at j may move back to i unless its home lies cyclically in (i, j]
            if (i < j and (home <= i or home > j)) or (i > j and home <= i and home > j):
                buf[off + i * size: off + (i + 1) * size] = buf[off + j * size: off + (j + 1) * size]
                i = j
        buf[off + i * size: off + (i + 1) * size] = bytes(size)
        _U.pack_into(buf, _LIVE, max(0, _U.unpack_from(buf, _LIVE)[0] - 1))

    def sweep(self, older_than: float, now: float, every: float = 1.0) -> int:
        """Forget calls started before ``older_than`` (their end was never seen), at most once
        per ``every`` seconds host-wide; returns how many."""
        self.lock.acquire()
        try:
            buf = self.buf
            if 0 <= now - _D.unpack_from(buf, _SWEPT)[0] < every:
                return 0
            _D.pack_into(buf, _SWEPT, now)
            calls = np.frombuffer(buf, _CALL_DTYPE, self.ccap, self.coff)
            stale = calls["key"][(calls["key"] != 0) & (calls["started"] <= older_than)].tolist()
            del calls
            for ckey in stale:
                i = self._find(ckey)
                if i < 0:
                    continue
                row = _I.unpack_from(buf, self.coff + i * _CALL.size + 8)[0]
                self._delete(i)
                toff = self.toff + row * _TROW.size + 8
                _I.pack_into(buf, toff, max(0, _I.unpack_from(buf, toff)[0] - 1))
            return len(stale)
        finally:
            self.lock.release()

    def live(self) -> int:
        """Calls recorded on this host (all workers), read without the lock."""
        return _U.unpack_from(self.buf, _LIVE)[0]

    # ------------------------------------------------------------------ cluster view
    def _changed(self) -> None:
        off = 8  # the generation in the view header; lock held
        _U.pack_into(self.view, off, (_U.unpack_from(self.view, off)[0] + 1) & 0xFFFFFFFF)

    def changes(self) -> tuple[int, bool]:
        """(generation, urgent) without the lock: a cheap look whether a publish is due."""
        _h, urgent, gen = _VHEAD.unpack_from(self.view, 0)
        return gen, bool(urgent)

    def rows(self) -> list[tuple[int, int, int, float, str, bool]]:
        """(tenant key, active calls, day, usage that day, zone, want) of every tenant row in
        use, read under the lock; clears the urgent and want flags (the caller publishes)."""
        self.lock.acquire()
        try:
            rows = np.frombuffer(self.buf, _TROW_DTYPE, self.tcap, self.toff)
            view = np.frombuffer(self.view, _VROW_DTYPE, self.tcap, _VHEAD_SIZE)
            inuse = rows["key"] != 0
            used = rows[inuse].copy()
            want = view["want"][inuse].copy()
            view["want"] = 0
            mode, _u, gen = _VHEAD.unpack_from(self.view, 0)
            _VHEAD.pack_into(self.view, 0, mode, 0, gen)
            del rows, view, inuse
        finally:
            self.lock.release()
        return [(int(k), int(a), int(d), float(u), z.rstrip(b"\0").decode(errors="replace") or "UTC", bool(w))
                for k, a, d, u, z, w in zip(used["key"], used["active"], used["day"], used["usage"], used["zone"], want)]

    def set_view(self, mode: int, caps: dict[int, int] | None,
                 remote: dict[int, tuple[int, int, float, str]]) -> None:
        """Install the cluster's counts: ``caps`` tenant key -> this host's cap as etcd just
        confirmed it (None: keep the caps), ``remote`` tenant key -> (others' calls, day,
        others' usage that day, zone) for every tenant with a limit (absent: nothing elsewhere)."""
        self.lock.acquire()
        try:
            keys = np.frombuffer(self.buf, _TROW_DTYPE, self.tcap, self.toff)["key"]
            wanted = np.fromiter(set(remote) | set(caps or ()), np.uint64)
            for tkey in wanted[~np.isin(wanted, keys)].tolist():  # tenants this host has no call of yet
                got = remote.get(tkey)
                row = self._tenant_row(tkey, True, got[1] if got else 0)
                if row >= 0 and got:
                    toff = self.toff + row * _TROW.size
                    k, active, day, used, _z = _TROW.unpack_from(self.buf, toff)
                    _TROW.pack_into(self.buf, toff, k, active, day, used, got[3].encode()[:48])
            view = np.frombuffer(self.view, _VROW_DTYPE, self.tcap, _VHEAD_SIZE)
            if caps is not None:
                view["cap"] = _lookup(keys, caps, lambda v: v, np.int32)
            view["remote"] = _lookup(keys, remote, lambda v: v[0], np.int32)
            view["rday"] = _lookup(keys, remote, lambda v: v[1], np.int32)
            view["rusage"] = _lookup(keys, remote, lambda v: v[2], np.float64)
            del keys, view
            _m, urgent, gen = _VHEAD.unpack_from(self.view, 0)
            _VHEAD.pack_into(self.view, 0, mode, urgent, gen)
        finally:
            self.lock.release()

    def view_of(self, tkey: int) -> tuple[int, int, int, int, float]:
        """(cap, others' calls, want, others' usage day, their usage) of a tenant."""
        self.lock.acquire()
        try:
            row = self._tenant_row(tkey, False)
            return (0, 0, 0, 0, 0.0) if row < 0 else _VROW.unpack_from(self.view, _VHEAD_SIZE + row * _VROW.size)
        finally:
            self.lock.release()

    def mode(self) -> int:
        return _VHEAD.unpack_from(self.view, 0)[0]

    def raise_usage(self, tkey: int, zone: str, day: int, usage: float) -> bool:
        """Make this host's usage of ``day`` at least ``usage`` (what etcd says this host
        counted, after a restart without the state dir). True when it grew."""
        self.lock.acquire()
        try:
            row = self._tenant_row(tkey, True, day)
            if row < 0:
                return False
            toff = self.toff + row * _TROW.size
            k, active, d, used, z = _TROW.unpack_from(self.buf, toff)
            if d > day or (d == day and used >= usage):
                return False
            _TROW.pack_into(self.buf, toff, k, active, day, usage, z if z.rstrip(b"\0") else zone.encode()[:48])
            return True
        finally:
            self.lock.release()


def _lookup(keys, values: dict, pick, dtype):
    """``pick(values[key])`` for each of ``keys`` (0 where absent), vectorised: one sort."""
    if not values:
        return np.zeros(len(keys), dtype)
    k = np.fromiter(values.keys(), np.uint64, len(values))
    v = np.fromiter((pick(x) for x in values.values()), dtype, len(values))
    order = np.argsort(k)
    k, v = k[order], v[order]
    idx = np.minimum(np.searchsorted(k, keys), len(k) - 1)
    return np.where((k[idx] == keys) & (keys != 0), v[idx], 0).astype(dtype)


# ---------------------------------------------------------------- one table per SBC host
_prepared: tuple[str, CounterTable] | None = None


def prepare(state_dir: str, workers: int) -> CounterTable:
    """Open the host's table before the workers are forked, so they all map the same pages
    and share one lock; ``for_process`` hands it to each of them."""
    global _prepared
    table = CounterTable.open(state_dir or None, shared=workers > 1)
    _prepared = (state_dir, table)
    return table


def for_process(state_dir: str) -> tuple[CounterTable, bool]:
    """The table prepared before the fork (not to be closed by a worker: second item False),
    or a new one of this process's own (True: its owner closes it)."""
    if _prepared is not None and _prepared[0] == state_dir:
        return _prepared[1], False
    return CounterTable.open(state_dir or None), True
