"""Architecture checks: layering contracts, no circular imports, and the import roots are ours.

PyPI has distributions named ``node``, ``cluster``, ``sbc`` and ``chaos``; a stray install of
one of them must never shadow the project's packages.
"""

from __future__ import annotations

import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
PACKAGES = ["node", "cluster", "sbc", "observability", "chaos"]


def _modules() -> list[str]:
    out = []
    for pkg in PACKAGES:
        out.append(pkg)
        for info in pkgutil.walk_packages([str(ROOT / pkg)], prefix=f"{pkg}."):
            out.append(info.name)
    return sorted(out)


def test_import_roots_are_this_repository():
    import chaos
    import cluster
    import node
    import observability
    import sbc

    for mod in (node, cluster, sbc, observability, chaos):
        assert Path(mod.__file__).resolve().is_relative_to(ROOT), mod.__file__


def test_layering_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    assert exe, "import-linter is a test dependency (pip install -e '.[test]')"
    proc = subprocess.run([exe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "broken" not in proc.stdout.lower() or " 0 broken" in proc.stdout.lower()


@pytest.mark.parametrize("module", _modules())
def test_module_imports_alone(module):
    """Each module imports in a fresh interpreter (catches circular imports, aiohttp style)."""
    proc = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", f"import {module}"],
        cwd=ROOT, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]


def test_protocol_core_never_touches_io():
    """node.sip, node.sdp and node.media are sans-I/O: no asyncio, no sockets, no clock."""
    banned = ("import asyncio", "import socket", "from asyncio", "from socket", "time.time(", "time.monotonic(",
              "loop.time(")
    offenders = []
    for pkg in ("sip", "sdp", "media"):
        for path in (ROOT / "node" / pkg).rglob("*.py"):
            text = path.read_text()
            offenders += [f"{path.relative_to(ROOT)}: {b}" for b in banned if b in text]
    assert offenders == []
