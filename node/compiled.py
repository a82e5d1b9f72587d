"""Which SIP hot-path modules run as mypyc extensions, and the guard that keeps stale ones out.

setup.py compiles HOT_PATH into C extensions next to their .py files and records in
node/_compiled.json the sha256 of each source it compiled. An extension shadows its .py file,
so after an edit the old compiled code would run silently. At import of ``node`` the guard
compares the hashes: if any source differs, an extension is missing or there is no record,
the WHOLE group loads from its .py files (the modules are one mypyc group that calls the
others' native code through a shared library, so one member cannot fall back alone), and it
warns once with the command that rebuilds. ``HIVEPBX_PURE=1`` loads the .py files, silently.

This module imports nothing from ``node``: setup.py loads it by path for HOT_PATH and the hash.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.machinery
import importlib.util
import json
import logging
import os
import sys
from typing import NamedTuple

#: compiled as one mypyc group (setup.py); calls between them are native C calls
HOT_PATH = (
    "node.sip.parser",
    "node.sip.headers",
    "node.sip.uri",
    "node.sip.message",
    "node.sip.auth",
    "node.sip.transaction",
    "node.sip.timers",
    "node.pbx.registrar",
    "node.pbx.authn",
)
MANIFEST = "_compiled.json"  # in the package directory (node/), written by setup.py
REBUILD = "make build"  # = .venv/bin/python -m pip install --no-deps -e .

log = logging.getLogger("hivepbx.compiled")


class HotPathStatus(NamedTuple):  # not a dataclass: this runs at every import of node, keep it cheap
    #: "compiled" (extensions current), "pure" (none built, or HIVEPBX_PURE), "stale" or
    #: "unknown" (the check itself failed: nothing is redirected)
    state: str
    #: the modules whose source differs from what was compiled (state "stale")
    stale: tuple[str, ...] = ()
    reason: str = ""


def source_hash(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def _source(root: str, module: str) -> str:
    return os.path.join(root, *module.split(".")) + ".py"


def _extension(root: str, module: str) -> str | None:
    base = os.path.join(root, *module.split("."))
    for suffix in importlib.machinery.EXTENSION_SUFFIXES:
        if os.path.exists(base + suffix):
            return base + suffix
    return None


def check(root: str, modules: tuple[str, ...] = HOT_PATH) -> HotPathStatus:
    """What would load for ``modules`` under ``root`` (the directory holding the package)."""
    built = [m for m in modules if _extension(root, m)]
    if not built:
        return HotPathStatus("pure", reason="no compiled extensions")
    manifest_path = os.path.join(root, modules[0].split(".")[0], MANIFEST)
    try:
        with open(manifest_path, encoding="utf-8") as f:
            manifest = json.load(f)
        recorded = manifest["modules"]
        group_lib = manifest.get("group_lib")
    except (OSError, ValueError, KeyError, TypeError) as e:
        return HotPathStatus("stale", tuple(built), f"no valid build record {manifest_path} ({e})")
    stale = tuple(m for m in modules if recorded.get(m) != source_hash(_source(root, m)))
    if stale:
        return HotPathStatus("stale", stale, "source changed since the build")
    unbuilt = tuple(m for m in modules if m not in built)
    if unbuilt:
        return HotPathStatus("stale", unbuilt, "extension missing (failed or partial build)")
    if group_lib and not os.path.exists(os.path.join(root, group_lib)):
        return HotPathStatus("stale", modules, f"shared group library {group_lib} missing")
    return HotPathStatus("compiled")


class SourceFinder:
    """Meta-path finder that loads the named modules from their .py files, never an extension."""

    def __init__(self, root: str, modules: tuple[str, ...]) -> None:
        self.sources = {m: _source(root, m) for m in modules}

    def find_spec(self, fullname: str, path: object = None, target: object = None):
        source = self.sources.get(fullname)
        if source is None:
            return None
        return importlib.util.spec_from_file_location(fullname, source)


def install_source_finder(root: str, modules: tuple[str, ...] = HOT_PATH) -> SourceFinder:
    finder = SourceFinder(root, modules)
    sys.meta_path.insert(0, finder)
    return finder


_status: HotPathStatus | None = None


def guard(root: str | None = None) -> HotPathStatus:
    """Run once at import of ``node``: keeps stale extensions out, warns once."""
    global _status
    if _status is not None:
        return _status
    root = root or os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if os.environ.get("HIVEPBX_PURE"):
        st = HotPathStatus("pure", reason="HIVEPBX_PURE is set")
        if any(_extension(root, m) for m in HOT_PATH):
            install_source_finder(root)
    else:
        try:
            st = check(root)
        except Exception as e:  # e.g. an install without the .py files: never fail the import
            st = HotPathStatus("unknown", reason=f"cannot check the build: {e!r}")
            log.warning("SIP hot path: %s", st.reason)
        if st.state == "stale":
            install_source_finder(root)
            log.warning(
                "SIP hot path runs as Python, not compiled: %s (%s); rebuild with `%s` in %s",
                ", ".join(st.stale), st.reason, REBUILD, root,
                extra={"stale_modules": list(st.stale), "rebuild": REBUILD},
            )
    _status = st
    return st


def status() -> HotPathStatus:
    return _status if _status is not None else guard()


def compiled_modules() -> tuple[str, ...]:
    """The hot-path modules running compiled in this process (imports them)."""
    out = []
    for name in HOT_PATH:
        mod = importlib.import_module(name)
        if isinstance(getattr(mod.__spec__, "loader", None), importlib.machinery.ExtensionFileLoader):
            out.append(name)
    return tuple(out)


def describe() -> str:
    """One line for --version, the benches and the logs."""
    n = len(compiled_modules())
    st = status()
    if n == len(HOT_PATH):
        return f"SIP hot path: compiled (mypyc, {n} modules)"
    if st.state == "stale":
        return f"SIP hot path: Python (stale build: {', '.join(st.stale)}; rebuild with `{REBUILD}`)"
    if n:
        return f"SIP hot path: partly compiled ({n} of {len(HOT_PATH)} modules)"
    return f"SIP hot path: Python ({st.reason})"

