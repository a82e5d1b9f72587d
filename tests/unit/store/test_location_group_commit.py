"""The embedded location store's group commit: one transaction per loop turn, and a save
returns only once its binding is in the file (a restart would load it)."""

from __future__ import annotations

import asyncio
import sqlite3
import time

import pytest

from node.embedded import open_embedded
from node.embedded.db import DB_FILENAME
from node.model import Binding


def _b(ext: str, contact: str, expires_at: float) -> Binding:
    return Binding(
        tenant_id=1, extension=ext, contact=contact, source_host="127.0.0.1", source_port=5070,
        transport="udp", expires_at=expires_at, call_id="c-" + contact, cseq=1,
    )


def _rows(tmp_path) -> set[tuple[str, str]]:
    with sqlite3.connect(tmp_path / DB_FILENAME) as other:  # another process's view
        return set(other.execute("SELECT extension, contact FROM registrations"))


async def test_saves_in_one_turn_share_a_commit_and_are_durable_when_they_return(tmp_path):
    backend = open_embedded(tmp_path)
    loc = backend.locations
    commits = 0
    real_write = backend.db.write

    def counting_write():
        nonlocal commits
        commits += 1
        return real_write()

    backend.db.write = counting_write
    later = time.time() + 600
    saves = [loc.save(_b(str(1000 + i), f"sip:{i}@127.0.0.1:5070", later)) for i in range(50)]
    await asyncio.gather(*saves)
    assert commits == 1
    assert len(_rows(tmp_path)) == 50
    # visible to this node's lookups at once
    assert [b.contact for b in await loc.lookup(1, "1007", time.time())] == ["sip:7@127.0.0.1:5070"]
    # a removal and a save of the same key in one turn are applied in order
    await asyncio.gather(loc.remove(1, "1001", "sip:1@127.0.0.1:5070"), loc.save(_b("1001", "sip:1@127.0.0.1:5070", later)))
    assert ("1001", "sip:1@127.0.0.1:5070") in _rows(tmp_path)
    await loc.remove_all(1, "1002")
    assert not any(ext == "1002" for ext, _ in _rows(tmp_path))
    backend.close()


async def test_a_failed_commit_fails_the_saves_and_the_index_follows_the_file(tmp_path):
    backend = open_embedded(tmp_path)
    loc = backend.locations
    later = time.time() + 600
    await loc.save(_b("1001", "sip:a@127.0.0.1:5070", later))

    def broken_write():
        raise sqlite3.OperationalError("disk I/O error")

    backend.db.write = broken_write
    with pytest.raises(sqlite3.OperationalError):
        await loc.save(_b("1002", "sip:b@127.0.0.1:5070", later))
    # the registrar answered nothing for it, and the node does not route to it either
    assert await loc.lookup(1, "1002", time.time()) == []
    assert [b.contact for b in await loc.lookup(1, "1001", time.time())] == ["sip:a@127.0.0.1:5070"]
    backend.close()


async def test_reload_for_another_writer_keeps_queued_writes(tmp_path):
    backend = open_embedded(tmp_path)
    loc = backend.locations
    later = time.time() + 600
    pending = asyncio.ensure_future(loc.save(_b("1003", "sip:c@127.0.0.1:5070", later)))
    await asyncio.sleep(0)  # the save is queued; its commit runs on the next turn
    assert loc._pending
    # another process's commit makes every view reload before the group commit runs
    loc._reload()
    assert [b.contact for b in await loc.lookup(1, "1003", time.time())] == ["sip:c@127.0.0.1:5070"]
    await pending
    assert ("1003", "sip:c@127.0.0.1:5070") in _rows(tmp_path)
    backend.close()


def test_close_flushes_queued_writes(tmp_path):
    async def go():
        backend = open_embedded(tmp_path)
        # queued, not awaited: closing must still write it
        fut = backend.locations._write(
            "INSERT INTO registrations (tenant_id, extension, contact, source_host, source_port, transport,"
            " expires_at, call_id, cseq) VALUES (1, '1004', 'sip:d@x', 'h', 1, 'udp', 1e12, 'c', 1)", ()
        )
        backend.close()
        assert fut.done() and fut.exception() is None

    asyncio.run(go())
    assert ("1004", "sip:d@x") in _rows(tmp_path)


async def test_another_writers_commit_during_the_group_commit_keeps_the_batch(tmp_path):
    """db.write() reloads every view when another process committed: the batch being written
    must survive that reload (a CLI change must not drop the REGISTERs of that turn)."""
    backend = open_embedded(tmp_path)
    loc = backend.locations
    await backend.config.create_tenant("t", "t.example")
    with sqlite3.connect(tmp_path / DB_FILENAME) as other:  # the CLI, in another process
        other.execute("INSERT INTO tenants (name, domain, created_at) VALUES ('u', 'u.example', 0)")
    await loc.save(_b("1005", "sip:e@127.0.0.1:5070", time.time() + 600))
    assert [b.contact for b in await loc.lookup(1, "1005", time.time())] == ["sip:e@127.0.0.1:5070"]
    assert ("1005", "sip:e@127.0.0.1:5070") in _rows(tmp_path)
    backend.close()
