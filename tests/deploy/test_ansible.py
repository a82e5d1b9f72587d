"""The Ansible deployment (ansible/) is valid and renders configuration hivepbx accepts.

Runs the real ansible-playbook: a syntax check of site.yml, then every host's node.toml,
unit file and sbc.toml rendered from the example inventory with the roles' own defaults,
and each file read back by the code that reads it in production.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ANSIBLE = REPO / "ansible"
INVENTORY = ANSIBLE / "inventories" / "example" / "hosts.yml"


def _playbook() -> str:
    exe = Path(sys.executable).with_name("ansible-playbook")
    found = str(exe) if exe.exists() else shutil.which("ansible-playbook")
    assert found, "ansible-playbook missing: scripts/install-deps --test installs ansible-core"
    return found


def _run(*args: str, cwd: Path = ANSIBLE) -> subprocess.CompletedProcess:
    env = dict(os.environ, ANSIBLE_NOCOLOR="1", ANSIBLE_LOCALHOST_WARNING="0", PYTHONWARNINGS="ignore",
               ANSIBLE_ROLES_PATH=str(ANSIBLE / "roles"))
    return subprocess.run([_playbook(), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def test_site_playbook_syntax():
    r = _run("-i", str(INVENTORY), "--syntax-check", "site.yml")
    assert r.returncode == 0, r.stdout + r.stderr


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rendered")
    import yaml  # ansible-core's own dependency

    # role defaults under the inventory's group_vars, as ansible ranks them in site.yml
    merged: dict = {}
    for role in ("hivepbx", "hivepbx_node", "hivepbx_sbc"):
        merged.update(yaml.safe_load((ANSIBLE / "roles" / role / "defaults" / "main.yml").read_text()))
    merged.update(yaml.safe_load((INVENTORY.parent / "group_vars" / "all.yml").read_text()))
    merged_file = out / "vars.yml"
    merged_file.write_text(yaml.safe_dump(merged))
    r = _run("-i", str(INVENTORY), "-e", f"@{merged_file}", "-e", f"out={out}", "-e", f"ansible_python_interpreter={sys.executable}",
             str(REPO / "tests" / "deploy" / "render.yml"))
    assert r.returncode == 0, r.stdout + r.stderr
    return out


def test_node_config_is_accepted_by_hivepbx_node(rendered):
    from node import cli

    files = sorted(rendered.glob("*.node.toml"))
    assert [f.name.split(".")[0] for f in files] == ["pbx1", "pbx2", "pbx3", "pbx4"]
    for f in files:
        data = tomllib.loads(f.read_text())
        assert data["node_id"] == f.name.split(".")[0]
        assert data["etcd"] == ["10.0.1.11:2379", "10.0.2.11:2379", "10.0.1.12:2379"]
        assert data["kafka"] and data["cassandra"]
        # what `hivepbx node --config` does with it
        args = argparse.Namespace(config=str(f), etcd=None, etcd_prefix=None, kafka=None, cassandra=None,
                                  node_id=None, data_dir=None)
        settings = cli._cluster_settings(args)
        assert settings["etcd"] == data["etcd"] and args.data_dir == "/var/lib/hivepbx"


def test_node_unit_runs_the_cluster_node_on_its_own_address(rendered):
    unit = (rendered / "pbx3.node.service").read_text()
    assert "hivepbx node --config /etc/hivepbx/node.toml" in unit
    assert "--listen udp:10.0.2.21:5060" in unit and "--listen tcp:10.0.2.21:5060" in unit
    # the flags the unit passes exist
    exec_start = " ".join(line.strip().rstrip("\\") for line in unit.splitlines() if line.startswith(("ExecStart", " ")))
    from node import cli

    argv = exec_start.split("hivepbx ", 1)[1].split()
    ns = cli.build_parser().parse_args(argv)
    assert ns.command == "node" and ns.listen == ["udp:10.0.2.21:5060", "tcp:10.0.2.21:5060"]


def test_sbc_config_passes_the_sbcs_own_check(rendered):
    from sbc.config import load

    for name, dc, rtp in (("sbc1", "dc1", "10.0.1.31"), ("sbc2", "dc2", "10.0.2.31")):
        path = rendered / f"{name}.sbc.toml"
        cfg = load(path)  # raises SbcConfigError on anything wrong
        assert cfg.dc == dc
        assert sorted(n.id for n in cfg.nodes) == ["pbx1", "pbx2", "pbx3", "pbx4"]
        assert {n.dc for n in cfg.nodes} == {"dc1", "dc2"}
        assert cfg.media["rtpengine"] == [f"{rtp}:2223"]  # the relays of the SBC's own DC
        r = subprocess.run([sys.executable, "-m", "sbc.cli", "--config", str(path), "--check"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
