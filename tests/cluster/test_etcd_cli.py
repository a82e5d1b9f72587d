"""The CLI against a cluster: management commands write etcd when --etcd / HIVEPBX_ETCD is
given, and `hivepbx node` runs the PBX as a cluster node (flags, environment or --config TOML).
Two node processes share one etcd; one is killed and leaves the other's membership."""

from __future__ import annotations

import asyncio
import io
import json
import os
import signal
import sys
import urllib.request
from pathlib import Path

import pytest

from node.cli import main
from tests.peers.net import free_port
from tests.peers.sipp import Sipp

ROOT = Path(__file__).resolve().parents[2]


def hp(*argv: str) -> tuple[int, str, str]:
    """In-process: for commands that never reach etcd (argument and settings errors)."""
    out, err = io.StringIO(), io.StringIO()
    code = main(list(argv), stdout=out, stderr=err)
    return code, out.getvalue(), err.getvalue()


async def cli(*argv: str, env: dict | None = None) -> tuple[int, str, str]:
    """`hivepbx ...` as an operator runs it: its own process (and so its own gRPC runtime;
    grpc.aio does not take to one process running asyncio.run next to pytest's loops)."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("HIVEPBX_ETCD")}
    full_env |= {"PYTHONPATH": str(ROOT), **(env or {})}
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "node.cli", *argv, cwd=ROOT, env=full_env,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    return proc.returncode, out.decode(), err.decode()


async def _stored(endpoint: str, prefix: str):
    """What the cluster's etcd holds, through a fresh store."""
    from cluster.etcd import open_etcd

    stores = await open_etcd(endpoint, prefix)
    try:
        c = stores.config
        tenants = await c.list_tenants()
        exts = {t.name: [e.number for e in await c.list_extensions(t.id)] for t in tenants}
        dids = {t.name: [d.number for d in await c.list_dids(t.id)] for t in tenants}
        return exts, dids
    finally:
        await stores.aclose()


async def test_management_commands_write_etcd(etcd_server, etcd_prefix, tmp_path):
    ep = etcd_server.endpoint
    flags = ["--etcd", ep, "--etcd-prefix", etcd_prefix, "--data-dir", str(tmp_path)]
    code, out, err = await cli("tenant", "add", "acme", "acme.example", *flags)
    assert code == 0, err
    code, _, err = await cli("ext", "add", "acme", "1001", "--password", "secret-1001", *flags)
    assert code == 0, err
    assert (await cli("did", "add", "acme", "+4930555", "--ext", "1001", *flags))[0] == 0
    # the same errors as against SQLite
    code, _, err = await cli("tenant", "add", "other", "ACME.example", *flags)
    assert code == 2 and "already used" in err
    code, _, err = await cli("did", "add", "acme", "+4930556", "--ext", "1999", *flags)
    assert code == 2 and "does not exist" in err
    # HIVEPBX_ETCD alone selects etcd too
    code, out, err = await cli("ext", "list", "acme", "--json", "--data-dir", str(tmp_path),
                               env={"HIVEPBX_ETCD": ep, "HIVEPBX_ETCD_PREFIX": etcd_prefix})
    assert code == 0, err
    assert [e["number"] for e in json.loads(out)] == ["1001"]
    # nothing went to the local SQLite file
    code, out, _ = await cli("tenant", "list", "--json", "--data-dir", str(tmp_path))
    assert code == 2 or json.loads(out) == []
    assert await _stored(ep, etcd_prefix) == ({"acme": ["1001"]}, {"acme": ["+4930555"]})


async def test_unreachable_etcd_is_a_clear_error(tmp_path):
    port = free_port()
    code, _, err = await cli("tenant", "list", "--etcd", f"127.0.0.1:{port}", "--data-dir", str(tmp_path))
    assert code == 2 and "cannot reach etcd" in err
    code, _, err = await cli("tenant", "list", "--etcd", "127.0.0.1:notaport", "--data-dir", str(tmp_path))
    assert code == 2 and "invalid etcd endpoint" in err


def test_node_needs_etcd(tmp_path, monkeypatch):
    monkeypatch.delenv("HIVEPBX_ETCD", raising=False)
    code, _, err = hp("node", "--data-dir", str(tmp_path))
    assert code == 2 and "needs etcd" in err
    bad = tmp_path / "bad.toml"
    bad.write_text('etcd = "127.0.0.1:2379"\nzookeeper = "x"\n')
    code, _, err = hp("node", "--config", str(bad), "--data-dir", str(tmp_path))
    assert code == 2 and "unknown setting" in err and "zookeeper" in err


def _health(port: int) -> dict | None:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as r:
            return json.loads(r.read())
    except (OSError, ValueError):
        return None


async def _until(pred, timeout: float, what: str) -> float:
    loop = asyncio.get_running_loop()
    start = loop.time()
    while not pred():
        if loop.time() - start > timeout:
            pytest.fail(what)
        await asyncio.sleep(0.05)
    return loop.time() - start


@pytest.mark.interop
async def test_two_node_processes_share_etcd_and_a_killed_one_leaves(etcd_server, etcd_prefix, tmp_path):
    procs = []
    nodes = []
    try:
        for name in ("n1", "n2"):
            sip, http, rtp = free_port(), free_port(), free_port(span=8)
            argv = [sys.executable, "-m", "node.cli", "node", "--data-dir", str(tmp_path / name),
                    "--listen", f"udp:127.0.0.1:{sip}", "--listen", f"tcp:127.0.0.1:{sip}",
                    "--http", f"127.0.0.1:{http}", "--rtp-ports", f"{rtp}-{rtp + 7}", "--log-level", "WARNING"]
            env = {**os.environ, "PYTHONPATH": str(ROOT)}
            env.pop("HIVEPBX_ETCD", None)
            if name == "n1":  # settings from the environment
                env |= {"HIVEPBX_ETCD": etcd_server.endpoint, "HIVEPBX_ETCD_PREFIX": etcd_prefix,
                        "HIVEPBX_NODE_ID": "n1"}
            else:  # from a config file
                conf = tmp_path / "n2.toml"
                conf.write_text(f'etcd = ["{etcd_server.endpoint}"]\netcd_prefix = "{etcd_prefix}"\nnode_id = "n2"\n')
                argv += ["--config", str(conf)]
            out = open(tmp_path / f"{name}.out", "wb")
            proc = await asyncio.create_subprocess_exec(
                *argv, stdout=out, stderr=asyncio.subprocess.STDOUT, cwd=ROOT, env=env, start_new_session=True,
            )
            out.close()
            procs.append(proc)
            nodes.append((name, sip, http))
        for (name, _, http), proc in zip(nodes, procs):
            await _until(lambda: _health(http) is not None or proc.returncode is not None, 30,
                         f"{name} did not start")
            assert proc.returncode is None, (tmp_path / f"{name}.out").read_text()[-3000:]
        h1, h2 = nodes[0][2], nodes[1][2]
        await _until(lambda: (_health(h1) or {}).get("cluster", {}).get("members") == ["n1", "n2"], 5,
                     "n1 does not list both nodes")
        # configuration made with the CLI while both run; a phone registers through n2
        flags = ["--etcd", etcd_server.endpoint, "--etcd-prefix", etcd_prefix, "--data-dir", str(tmp_path / "cli")]
        assert (await cli("tenant", "add", "acme", "acme.example", *flags))[0] == 0
        assert (await cli("ext", "add", "acme", "1001", "--password", "pw-1001-secret", *flags))[0] == 0
        reg = await Sipp("uac_register_auth.xml", f"127.0.0.1:{nodes[1][1]}", workdir=tmp_path / "reg", user="1001",
                         domain="acme.example", auth_user="1001", auth_password="pw-1001-secret",
                         keys={"expires": 120}).run()
        reg.assert_ok()
        code, out, err = await cli("reg", "list", "acme", "--json", *flags)
        assert code == 0, err
        assert [(r["extension"], r["node_id"]) for r in json.loads(out)] == [("1001", "n2")]
        # n2 is killed: no goodbye, n1 stops listing it once its lease runs out (ttl 3 s)
        os.killpg(procs[1].pid, signal.SIGKILL)
        await procs[1].wait()
        took = await _until(lambda: (_health(h1) or {}).get("cluster", {}).get("members") == ["n1"], 8,
                            "n1 still lists the dead n2")
        print(f"dead node left the membership after {took:.1f}s")
        # its registration outlives it (phones are reached through any node until they expire)
        code, out, _ = await cli("reg", "list", "acme", "--json", *flags)
        assert [r["node_id"] for r in json.loads(out)] == ["n2"]
    finally:
        for proc in procs:
            if proc.returncode is None:
                proc.send_signal(signal.SIGTERM)
                try:
                    await asyncio.wait_for(proc.wait(), 10)
                except asyncio.TimeoutError:
                    os.killpg(proc.pid, signal.SIGKILL)
                    await proc.wait()
    assert procs[0].returncode == 0, (tmp_path / "n1.out").read_text()[-3000:]
