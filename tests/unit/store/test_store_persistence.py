"""What survives a restart of the node, and what the file itself guarantees."""

from __future__ import annotations

import os
import stat
import sqlite3

import pytest

from node.embedded import DB_FILENAME, DatabaseError, open_embedded, provision_demo
from node.embedded.db import SCHEMA_VERSION
from node.model import Binding, Cdr


def _binding(tenant_id: int, contact: str, expires_at: float) -> Binding:
    return Binding(
        tenant_id=tenant_id, extension="1001", contact=contact, source_host="203.0.113.5", source_port=40000,
        transport="tcp", expires_at=expires_at, call_id="call-1", cseq=7, user_agent="baresip", q=0.7,
        node_id="local",
    )


async def test_config_and_registrations_survive_restart(tmp_path):
    with open_embedded(tmp_path) as b:
        t = await b.config.create_tenant("acme", "acme.example.com")
        ext = await b.config.create_extension(t.id, "1001", "secret1", display_name="Alice")
        await b.config.create_trunk(t.id, "carrier", "192.0.2.10")
        route = await b.config.create_route(t.id, "0", "carrier", strip=1)
        saved = _binding(t.id, "sip:1001@10.0.0.1:5060", 5000.0)
        await b.locations.save(saved)
    with open_embedded(tmp_path) as b:
        assert await b.config.tenant_by_domain("acme.example.com") == t
        assert await b.config.get_extension(t.id, "1001") == ext
        assert [r for r, _ in await b.config.match_routes(t.id, "0301")] == [route]
        assert await b.locations.lookup(t.id, "1001", 4000.0) == [saved]


async def test_expired_registrations_are_not_served_after_restart(tmp_path):
    with open_embedded(tmp_path) as b:
        await b.locations.save(_binding(1, "sip:old@10.0.0.1", 1000.0))
        await b.locations.save(_binding(1, "sip:new@10.0.0.2", 3000.0))
    with open_embedded(tmp_path) as b:
        assert [x.contact for x in await b.locations.lookup(1, "1001", 2000.0)] == ["sip:new@10.0.0.2"]
        assert await b.locations.expire(2000.0) == 1
    with open_embedded(tmp_path) as b:
        assert [x.contact for x in await b.locations.list(None, 0.0)] == ["sip:new@10.0.0.2"]


async def test_cdr_replay_after_restart_is_ignored(tmp_path):
    cdr = Cdr("attempt-9", 1, "c9", "1001", "1002", "internal", 10.0, 40.0, answer=12.0, disposition="answered")
    with open_embedded(tmp_path) as b:
        await b.cdrs.write(cdr)
    with open_embedded(tmp_path) as b:
        await b.cdrs.write(cdr)
        got = await b.cdrs.list(1)
    assert got == [cdr]
    assert (got[0].duration, got[0].billsec) == (30.0, 28.0)


async def test_cdr_list_limit_is_checked(tmp_path):
    with open_embedded(tmp_path) as b:
        for bad in (0, -1, 10_001, True):
            with pytest.raises(ValueError, match="limit"):
                await b.cdrs.list(1, limit=bad)


def test_file_is_private_and_in_wal_mode(tmp_path):
    with open_embedded(tmp_path / "new" / "dir") as b:
        path = b.db.path
        assert b.db.conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert b.db.conn.execute("PRAGMA foreign_keys").fetchone()[0] == 1
    assert path == tmp_path / "new" / "dir" / DB_FILENAME
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # it holds SIP passwords


def test_open_without_create_needs_the_file(tmp_path):
    with pytest.raises(DatabaseError, match="no hivepbx database"):
        open_embedded(tmp_path, create=False)
    assert not (tmp_path / DB_FILENAME).exists()


def test_not_a_database(tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(DatabaseError, match="cannot use"):
        open_embedded(tmp_path)


def test_newer_schema_is_refused(tmp_path):
    open_embedded(tmp_path).close()
    conn = sqlite3.connect(tmp_path / DB_FILENAME)
    conn.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    conn.close()
    with pytest.raises(DatabaseError, match="upgrade hivepbx"):
        open_embedded(tmp_path)


async def test_provision_demo_creates_once_and_keeps_passwords(tmp_path):
    with open_embedded(tmp_path) as b:
        first = await provision_demo(b.config)
        assert first["created"] is True
        assert (first["tenant"], first["domain"]) == ("demo", "demo.hivepbx.local")
        assert [e["number"] for e in first["extensions"]] == ["1001", "1002"]
        passwords = [e["password"] for e in first["extensions"]]
        assert len(set(passwords)) == 2 and all(len(p) >= 16 for p in passwords)
        t = await b.config.tenant_by_domain("demo.hivepbx.local")
        assert (await b.config.get_extension(t.id, "1001")).password == passwords[0]
    with open_embedded(tmp_path) as b:
        again = await provision_demo(b.config)
        assert again["created"] is False
        assert [e["password"] for e in again["extensions"]] == passwords
        assert len(await b.config.list_tenants()) == 1


async def test_provision_demo_fills_in_a_missing_extension(tmp_path):
    with open_embedded(tmp_path) as b:
        await provision_demo(b.config)
        t = await b.config.tenant_by_domain("demo.hivepbx.local")
        await b.config.delete_extension(t.id, "1002")
        again = await provision_demo(b.config)
        assert again["created"] is True
        assert [e.number for e in await b.config.list_extensions(t.id)] == ["1001", "1002"]
