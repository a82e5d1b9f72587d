"""The ``hivepbx`` CLI, driven through ``main([...])`` on a temporary data directory."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import types

import pytest

from node.cli import main
from node.embedded import DB_FILENAME, open_embedded
from node.model import Binding, Cdr


@pytest.fixture
def hp(tmp_path, capsys):
    """Run the CLI on ``tmp_path``; returns (exit code, stdout, stderr)."""

    def run(*argv: str) -> tuple[int, str, str]:
        code = main([*argv, "--data-dir", str(tmp_path)])
        out, err = capsys.readouterr()
        assert "Traceback" not in err
        return code, out, err

    return run


@pytest.fixture
def hpj(hp):
    """Like ``hp`` with --json; returns the parsed output (asserts success)."""

    def run(*argv: str):
        code, out, err = hp(*argv, "--json")
        assert code == 0, err
        return json.loads(out)

    return run


def _store(tmp_path):
    return open_embedded(tmp_path)


def _sync(coro):
    return asyncio.run(coro)


def test_tenant_add_list_del(hp, hpj):
    code, out, _ = hp("tenant", "add", "acme", "ACME.example.com", "--max-calls", "5", "--timezone", "Europe/Berlin")
    assert code == 0 and "acme" in out and "acme.example.com" in out
    [t] = hpj("tenant", "list")
    assert (t["name"], t["domain"], t["max_calls"], t["timezone"], t["extensions"]) == (
        "acme", "acme.example.com", 5, "Europe/Berlin", 0,
    )
    code, out, _ = hp("tenant", "list")
    header, row = out.splitlines()
    assert header.split()[:3] == ["id", "name", "domain"]
    assert row.split()[:3] == [str(t["id"]), "acme", "acme.example.com"]
    assert header.index("domain") == row.index("acme.example.com")  # aligned columns
    code, out, _ = hp("tenant", "del", "acme")
    assert code == 0 and "CDRs are kept" in out
    assert hpj("tenant", "list") == []


def test_errors_go_to_stderr_with_exit_2(hp):
    hp("tenant", "add", "acme", "acme.example.com")
    code, out, err = hp("tenant", "add", "other", "acme.example.com")
    assert (code, out) == (2, "")
    assert err == "error: domain acme.example.com is already used by another tenant\n"
    code, _, err = hp("tenant", "add", "bad", "not_a_domain")
    assert code == 2 and err.startswith("error: invalid domain")
    code, _, err = hp("ext", "add", "nosuch", "1001")
    assert code == 2 and "no tenant 'nosuch'" in err
    code, _, err = hp("ext", "add", "acme")  # argparse: missing argument
    assert code == 2 and "required" in err


def test_read_commands_on_a_missing_database(hp, tmp_path):
    code, out, err = hp("tenant", "list")
    assert code == 2 and "no hivepbx database" in err
    assert not (tmp_path / DB_FILENAME).exists()  # a typo in --data-dir does not create one


def test_corrupt_database_is_an_error_not_a_traceback(hp, tmp_path):
    (tmp_path / DB_FILENAME).write_bytes(b"garbage" * 1000)
    code, _, err = hp("tenant", "list")
    assert code == 2 and err.startswith("error: cannot use")


def test_tenant_resolved_by_name_domain_or_id(hp, hpj):
    t = hpj("tenant", "add", "acme", "acme.example.com")
    for ref in ("acme", "ACME", "acme.example.com", str(t["id"])):
        assert hp("ext", "list", ref)[0] == 0, ref


def test_ext_add_generates_and_prints_password(hp, tmp_path):
    hp("tenant", "add", "acme", "acme.example.com")
    code, out, _ = hp("ext", "add", "acme", "1001", "--name", "Alice", "--cid", "+4930111")
    assert code == 0
    printed = out.split("password: ")[1].strip()
    with _store(tmp_path) as b:
        t = _sync(b.config.tenant_by_domain("acme.example.com"))
        e = _sync(b.config.get_extension(t.id, "1001"))
    assert (e.password, e.display_name, e.callerid_number) == (printed, "Alice", "+4930111")
    assert len(printed) >= 16


def test_ext_list_hides_passwords_unless_asked(hp, hpj):
    hp("tenant", "add", "acme", "acme.example.com")
    hp("ext", "add", "acme", "1001", "--password", "topsecret1")
    assert "topsecret1" not in hp("ext", "list", "acme")[1]
    assert "password" not in hpj("ext", "list", "acme")[0]
    assert "topsecret1" in hp("ext", "list", "acme", "--show-passwords")[1]
    assert hpj("ext", "list", "acme", "--show-passwords")[0]["password"] == "topsecret1"


def test_ext_del(hp, hpj):
    hp("tenant", "add", "acme", "acme.example.com")
    hp("ext", "add", "acme", "1001", "--password", "secret1")
    assert hp("ext", "del", "acme", "1001")[0] == 0
    assert hpj("ext", "list", "acme") == []
    code, _, err = hp("ext", "del", "acme", "1001")
    assert code == 2 and "no extension 1001" in err


def test_ext_import_reports_bad_rows_and_keeps_good_ones(hp, hpj, tmp_path):
    hp("tenant", "add", "acme", "acme.example.com")
    hp("ext", "add", "acme", "1001", "--password", "existing1")
    csv_file = tmp_path / "exts.csv"
    csv_file.write_text(
        "number,password,name,cid\n"
        "2001,alicepw1,Alice,+4930111\n"  # row 2: ok
        "1001,whatever1,Dup,\n"  # row 3: duplicate
        "2002,,Bob,\n"  # row 4: ok, password generated
        "abc,secret12,Bad,\n"  # row 5: bad number
        "2003,short,Carol,\n"  # row 6: password too short
        "\n"  # blank line: skipped, still counted
        "2004,secret12,Dan,,extra\n"  # row 8: too many fields
        "2005,secret12\n",  # row 9: ok, missing trailing columns
        encoding="utf-8",
    )
    code, out, err = hp("ext", "import", "acme", str(csv_file))
    assert code == 1
    errors = err.splitlines()
    assert "error: row 3: extension 1001 already exists" in errors
    assert any(e.startswith("error: row 5: invalid extension number 'abc'") for e in errors)
    assert any(e.startswith("error: row 6: password too short") for e in errors)
    assert any(e.startswith("error: row 8: 5 fields") for e in errors)
    assert len(errors) == 4
    assert "imported 3 extension(s)" in out
    exts = {e["number"]: e for e in hpj("ext", "list", "acme", "--show-passwords")}
    assert sorted(exts) == ["1001", "2001", "2002", "2005"]
    assert exts["1001"]["password"] == "existing1"  # the duplicate row changed nothing
    assert (exts["2001"]["password"], exts["2001"]["display_name"], exts["2001"]["callerid_number"]) == (
        "alicepw1", "Alice", "+4930111",
    )
    assert exts["2002"]["password"] in out  # the generated one is shown once


def test_ext_import_json_and_all_good(hp, tmp_path):
    hp("tenant", "add", "acme", "acme.example.com")
    csv_file = tmp_path / "exts.csv"
    csv_file.write_text("\ufeffNumber,Name\n3001,Eve\n3002,Frank\n", encoding="utf-8")  # BOM, subset of columns
    code, out, err = hp("ext", "import", "acme", str(csv_file), "--json")
    assert (code, err) == (0, "")
    report = json.loads(out)
    assert [i["number"] for i in report["imported"]] == ["3001", "3002"]
    assert report["errors"] == []
    assert all(i["password"] for i in report["imported"])


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "is empty"),
        ("1001,secret12,Alice,\n", "header"),
        ("number,pin\n1001,1234\n", "header"),
        ("number,number\n1001,1001\n", "header"),
    ],
)
def test_ext_import_without_a_valid_header_imports_nothing(hp, hpj, tmp_path, content, message):
    hp("tenant", "add", "acme", "acme.example.com")
    csv_file = tmp_path / "exts.csv"
    csv_file.write_text(content, encoding="utf-8")
    code, _, err = hp("ext", "import", "acme", str(csv_file))
    assert code == 2 and err.startswith("error:") and message in err
    assert hpj("ext", "list", "acme") == []


def test_ext_import_unreadable_file(hp, tmp_path):
    hp("tenant", "add", "acme", "acme.example.com")
    code, _, err = hp("ext", "import", "acme", str(tmp_path / "missing.csv"))
    assert code == 2 and "cannot read" in err
    bad = tmp_path / "latin1.csv"
    bad.write_bytes("number,name\n1001,J\xf6rg\n".encode("latin-1"))
    code, _, err = hp("ext", "import", "acme", str(bad))
    assert code == 2 and "not UTF-8" in err


def test_did_add_list_del(hp, hpj):
    hp("tenant", "add", "acme", "acme.example.com")
    hp("ext", "add", "acme", "1001", "--password", "secret1")
    assert hp("did", "add", "acme", "+4930555", "--ext", "1001")[0] == 0
    [d] = hpj("did", "list", "acme")
    assert (d["number"], d["dest_type"], d["dest_value"]) == ("+4930555", "extension", "1001")
    code, _, err = hp("did", "add", "acme", "4930556", "--ext", "1099")
    assert code == 2 and "extension 1099 does not exist" in err
    assert hp("did", "del", "acme", "+4930555")[0] == 0
    assert hpj("did", "list", "acme") == []


def test_trunk_and_route_commands(hp, hpj):
    hp("tenant", "add", "acme", "acme.example.com")
    code, _, err = hp("trunk", "add", "acme", "carrier", "192.0.2.10", "--port", "5080", "--transport", "TCP",
                      "--username", "u1", "--password", "pw", "--register", "--from-domain", "sip.carrier.example")
    assert code == 0, err
    [tr] = hpj("trunk", "list", "acme")
    assert (tr["host"], tr["port"], tr["transport"], tr["username"], tr["register"], tr["from_domain"]) == (
        "192.0.2.10", 5080, "tcp", "u1", True, "sip.carrier.example",
    )
    assert "password" not in tr
    hp("route", "add", "acme", "default", "carrier", "--priority", "9")
    hp("route", "add", "acme", "00", "carrier", "--strip", "2", "--prepend", "+")
    routes = hpj("route", "list", "acme")
    assert [(r["prefix"], r["trunk"], r["strip"], r["prepend"], r["priority"]) for r in routes] == [
        ("00", "carrier", 2, "+", 0), ("", "carrier", 0, "", 9),
    ]
    code, out, _ = hp("route", "list", "acme")
    assert "(default)" in out
    code, _, err = hp("trunk", "del", "acme", "carrier")
    assert code == 2 and "used by routes" in err
    for r in routes:
        assert hp("route", "del", "acme", str(r["id"]))[0] == 0
    assert hp("trunk", "del", "acme", "carrier")[0] == 0
    assert hpj("trunk", "list", "acme") == []


def test_route_cannot_use_another_tenants_trunk(hp, hpj):
    hp("tenant", "add", "alpha", "alpha.example.com")
    hp("tenant", "add", "beta", "beta.example.com")
    hp("trunk", "add", "beta", "carrier", "192.0.2.10")
    code, _, err = hp("route", "add", "alpha", "0", "carrier")
    assert code == 2 and "no trunk 'carrier'" in err
    assert hpj("route", "list", "alpha") == []
    [r] = [hpj("route", "add", "beta", "0", "carrier")]
    code, _, err = hp("route", "del", "alpha", str(r["id"]))
    assert code == 2 and "no route" in err
    assert len(hpj("route", "list", "beta")) == 1


def test_reg_list(hp, hpj, tmp_path):
    hp("tenant", "add", "acme", "acme.example.com")
    hp("tenant", "add", "beta", "beta.example.com")
    with _store(tmp_path) as b:
        tenants = {t.name: t.id for t in _sync(b.config.list_tenants())}
        for name in ("acme", "beta"):
            _sync(b.locations.save(Binding(
                tenants[name], "1001", f"sip:1001@10.0.0.{tenants[name]}:5060", "203.0.113.9", 40000 + tenants[name],
                "udp", time.time() + 300, "call", 1, user_agent="baresip",
            )))
    assert {r["tenant_id"] for r in hpj("reg", "list")} == set(tenants.values())
    [r] = hpj("reg", "list", "acme")
    assert r["contact"] == f"sip:1001@10.0.0.{tenants['acme']}:5060" and 290 <= r["expires_in"] <= 300
    code, out, _ = hp("reg", "list", "acme")
    assert "udp:203.0.113.9:" in out and "baresip" in out


def test_cdr_list_newest_first_and_after_tenant_deletion(hp, hpj, tmp_path):
    t = hpj("tenant", "add", "acme", "acme.example.com")
    with _store(tmp_path) as b:
        for i, start in enumerate((1000.0, 3000.0, 2000.0)):
            _sync(b.cdrs.write(Cdr(f"id{i}", t["id"], f"c{i}", "1001", "0301", "outbound", start, start + 60,
                                   answer=start + 5, disposition="answered", sip_code=200)))
    assert [c["start"] for c in hpj("cdr", "list", "acme")] == [3000.0, 2000.0, 1000.0]
    assert [c["start"] for c in hpj("cdr", "list", "acme", "--limit", "1")] == [3000.0]
    code, out, _ = hp("cdr", "list", "acme")
    assert "1970-01-01 00:50:00Z" in out and "55s" in out  # start 3000, billsec 55
    hp("tenant", "del", "acme")
    assert len(hpj("cdr", "list", str(t["id"]))) == 3  # billing data outlives the tenant
    code, _, err = hp("cdr", "list", "acme")
    assert code == 2 and "no tenant" in err
    code, _, err = hp("cdr", "list", str(t["id"]), "--limit", "0")
    assert code == 2 and "limit" in err


def test_run_builds_node_config(tmp_path, monkeypatch, capsys):
    seen = []
    fake = types.ModuleType("node.runtime.app")
    fake.run = lambda cfg: seen.append(cfg) or 0
    monkeypatch.setitem(sys.modules, "node.runtime.app", fake)
    code = main([
        "run", "--data-dir", str(tmp_path), "--listen", "udp:127.0.0.1:5062", "--listen", "tcp:[::1]:5063",
        "--advertise-address", "192.0.2.1", "--http", "127.0.0.1:9090", "--rtp-ports", "30000-30100", "--demo",
        "--log-level", "debug",
    ])
    assert code == 0, capsys.readouterr().err
    [cfg] = seen
    assert [(l.transport, l.host, l.port) for l in cfg.listens] == [("udp", "127.0.0.1", 5062), ("tcp", "::1", 5063)]
    assert (cfg.data_dir, cfg.advertise_address, cfg.http_host, cfg.http_port) == (
        tmp_path, "192.0.2.1", "127.0.0.1", 9090,
    )
    assert (cfg.rtp_port_min, cfg.rtp_port_max, cfg.demo, cfg.log_level) == (30000, 30100, True, "DEBUG")


def test_run_default_listeners_follow_sip_port(tmp_path, monkeypatch):
    seen = []
    fake = types.ModuleType("node.runtime.app")
    fake.run = lambda cfg: seen.append(cfg) or 0
    monkeypatch.setitem(sys.modules, "node.runtime.app", fake)
    assert main(["run", "--data-dir", str(tmp_path), "--sip-port", "5070"]) == 0
    assert {(l.transport, l.host, l.port) for l in seen[0].listens} == {
        ("udp", "0.0.0.0", 5070), ("tcp", "0.0.0.0", 5070), ("udp", "::", 5070), ("tcp", "::", 5070),
    }
    assert seen[0].demo is False


@pytest.mark.parametrize(
    "args, message",
    [
        (["--listen", "sctp:127.0.0.1:5060"], "udp:HOST:PORT"),
        (["--listen", "udp:localhost:5060"], "not an IP address"),
        (["--listen", "udp:127.0.0.1:99999"], "port must be"),
        (["--http", "8080"], "HOST:PORT"),
        (["--rtp-ports", "30000"], "MIN-MAX"),
        (["--rtp-ports", "30000-20000"], "MIN < MAX"),
        (["--advertise-address", "my.host"], "IP address"),
    ],
)
def test_run_rejects_bad_flags_before_starting(tmp_path, monkeypatch, capsys, args, message):
    fake = types.ModuleType("node.runtime.app")
    fake.run = lambda cfg: pytest.fail("must not start")
    monkeypatch.setitem(sys.modules, "node.runtime.app", fake)
    assert main(["run", "--data-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err


def test_no_command_prints_help(capsys):
    assert main([]) == 2
    assert "tenant" in capsys.readouterr().err
