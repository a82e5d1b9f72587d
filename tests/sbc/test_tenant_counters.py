"""The tenants' call counters and daily usage shared by an SBC host's workers
(sbc/protection/counters.py): one limit across processes, records that any process can end,
usage kept in the state dir across restarts, and the hash table's deletions."""

from __future__ import annotations

import multiprocessing
import os
import signal
import random
from datetime import datetime, timezone
from pathlib import Path

import pytest

from sbc.protection import Guard, GuardConfig
from sbc.protection.counters import FILENAME, CounterError, CounterTable
from sbc.protection.tenants import TenantLimits

PHONE = ("203.0.113.10", 5060)
T0 = 1_800_000_000.0


def _admit_many(table: CounterTable, worker: int, n: int, out) -> None:
    """A forked worker: its own Guard over the shared table, racing for the same tenant."""
    g = Guard(GuardConfig(tenants={"acme": {"max_calls": 5}}), wall_clock=lambda: T0)
    g.tenants.use_table(table)
    out.put(sum(g.admit_call("acme", f"w{worker}-{i}", PHONE, outbound=True).accepted for i in range(n)))


def test_two_processes_share_one_limit_and_end_each_others_calls() -> None:
    table = CounterTable.open(shared=True, tenants=64, calls=1024)
    ctx = multiprocessing.get_context("fork")
    out = ctx.Queue()
    procs = [ctx.Process(target=_admit_many, args=(table, w, 200, out)) for w in range(2)]
    for p in procs:
        p.start()
    admitted = [out.get(timeout=30) for _ in procs]
    for p in procs:
        p.join(30)
        assert p.exitcode == 0
    # per-process counters would have admitted 5 in each process
    assert sum(admitted) == 5, admitted
    limits = TenantLimits(table=table)
    assert limits.active_calls("acme") == 5
    # this process never admitted those calls, yet it can end them (a node's BYE may reach
    # any worker): the tenant's slots come back
    ended = [f"w{w}-{i}" for w in range(2) for i in range(200) if limits.admitted(f"w{w}-{i}")]
    assert len(ended) == 5
    for cid in ended:
        assert limits.end(cid, None, T0)
    assert limits.active_calls("acme") == 0 and table.live() == 0


def _guard_on(table: CounterTable, wall: list[float]) -> Guard:
    g = Guard(GuardConfig(tenants={"acme": {"max_daily_usage": 100, "max_calls": 3, "timezone": "Europe/Madrid"}}),
              wall_clock=lambda: wall[0])
    g.tenants.use_table(table)
    return g


def _answer(g: Guard, call_id: str) -> None:
    g.tenants.answered(call_id, g.wall_clock())


def _first_life(state_dir: Path, wall: list[float]) -> None:
    """An SBC worker that makes two calls' worth of usage and state, then is killed -9."""
    g = _guard_on(CounterTable.open(state_dir, tenants=64, calls=1024), wall)
    assert g.admit_call("acme", "done", PHONE, outbound=True).accepted
    _answer(g, "done")
    wall[0] += 60
    g.call_ended("done")
    assert g.admit_call("acme", "running", PHONE, outbound=True).accepted
    _answer(g, "running")
    assert g.admit_call("acme", "incoming", PHONE, outbound=False).accepted
    os.kill(os.getpid(), signal.SIGKILL)  # no close, no flush


def test_usage_and_live_calls_survive_a_killed_worker(tmp_path: Path) -> None:
    wall = [T0]
    child = multiprocessing.get_context("fork").Process(target=_first_life, args=(tmp_path, wall))
    child.start()
    child.join(30)
    assert child.exitcode == -signal.SIGKILL
    wall[0] += 60

    g2 = _guard_on(CounterTable.open(tmp_path, tenants=64, calls=1024), wall)
    assert g2.tenants.usage_today("acme", wall[0]) == 60.0
    assert g2.tenants.active_calls("acme") == 2  # recounted from the call records
    wall[0] += 50
    g2.call_ended("running")  # its BYE after the restart: 50 s more
    assert g2.tenants.usage_today("acme", wall[0]) == 110.0
    v = g2.admit_call("acme", "over", PHONE, outbound=True)
    assert v.rejected and v.cause == "daily_usage"
    # incoming calls do not count as usage; the counted call slots are still shared state
    assert g2.tenants.active_calls("acme") == 1
    g2.tenants.table.close()


def test_the_day_is_the_tenants_even_when_another_process_ends_the_call(tmp_path: Path) -> None:
    """The process that ends a call may not know the tenant's policy yet; the row keeps the zone."""
    madrid_evening = datetime.fromisoformat("2026-03-07T23:30:00+01:00").timestamp()  # 22:30 UTC
    table = CounterTable.open(None, tenants=64, calls=1024)
    wall = [madrid_evening]
    g = _guard_on(table, wall)
    assert g.admit_call("acme", "late", PHONE, outbound=True).accepted
    _answer(g, "late")
    wall[0] += 3600  # 00:30 in Madrid the next day, still 23:30 the first day in UTC
    stranger = TenantLimits(table=table)  # no policies at all
    assert stranger.end("late", None, wall[0])
    assert g.tenants.usage_today("acme", wall[0]) == 3600.0  # counted on Madrid's new day


def test_a_state_dir_is_one_sbcs(tmp_path: Path) -> None:
    table = CounterTable.open(tmp_path, tenants=64, calls=1024)
    with pytest.raises(CounterError, match="in use by another SBC"):
        CounterTable.open(tmp_path, tenants=64, calls=1024)
    table.close()
    CounterTable.open(tmp_path, tenants=64, calls=1024).close()


def test_a_foreign_file_is_moved_aside_not_misread(tmp_path: Path) -> None:
    (tmp_path / FILENAME).write_bytes(b"not a counter table" * 10)
    table = CounterTable.open(tmp_path, tenants=64, calls=1024)
    assert table.live() == 0
    table.close()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(FILENAME + ".unreadable")]


def test_call_table_matches_a_dict_under_random_inserts_and_deletes() -> None:
    """Linear probing with backward-shift deletion on a tiny table (long clusters, wrap-around)."""
    table = CounterTable.open(None, tenants=8, calls=64)
    tkey = table.key("t")
    model: set[int] = set()
    rng = random.Random(7)
    # keys chosen to collide: few home slots
    keys = [(rng.randrange(1, 1 << 62) & ~63) | rng.choice((0, 1, 62, 63)) for _ in range(200)]
    for step in range(5000):
        k = rng.choice(keys)
        if k in model:
            assert table.end(k, T0, 0.0, lambda z, n: 1)
            model.discard(k)
        elif table.live() < table.max_live:
            assert table.start(k, tkey, False, T0, "UTC", 1) == 0
            model.add(k)
        if step % 50 == 0:
            for kk in keys:
                assert table.has_call(kk) == (kk in model), step
            assert table.active(tkey) == len(model) == table.live()


def test_full_tables_fail_open_and_stale_tenant_rows_are_reused() -> None:
    table = CounterTable.open(None, tenants=4, calls=8)
    limited = {"max_calls": 1000, "max_daily_usage": 1e6}
    g = Guard(GuardConfig(tenants={t: limited for t in "abcde"}), wall_clock=lambda: T0)
    g.tenants.use_table(table)
    for i in range(table.max_live):
        assert g.admit_call("a", f"c{i}", PHONE, outbound=True).accepted
    # no room to count: admitted anyway (the edge fails open), not counted
    assert g.admit_call("a", "extra", PHONE, outbound=True).accepted
    assert not g.tenants.admitted("extra")
    for i in range(table.max_live):
        g.call_ended(f"c{i}", usage=1.0)
    # four tenant rows, each used on day 1; two days later a fifth tenant takes an idle row
    limits = g.tenants
    for t in ("b", "c", "d"):
        assert limits.start(f"{t}-1", t, True, True, T0) == ""
        limits.end(f"{t}-1", 1.0, T0)
    assert table.start(table.key("e-1"), table.key("e"), True, T0, "UTC", datetime.fromtimestamp(T0, timezone.utc).toordinal()) == 2
    later = T0 + 3 * 86400
    assert limits.start("e-1", "e", True, True, later) == ""
    assert limits.active_calls("e") == 1
