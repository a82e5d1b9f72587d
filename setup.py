"""Build hook: compiles the SIP hot path (parse, headers, URIs, digest auth, transactions,
registrar) with mypyc into C extensions next to their .py files; everything else stays pure
Python. The .py files remain the source of truth and run unchanged without the extensions.

An extension shadows its .py file, so the build also writes node/_compiled.json (the sha256 of
each source it compiled): node/compiled.py loads the whole group as Python, with a warning,
when a source no longer matches. Rebuild with ``make build``. ``HIVEPBX_PURE=1`` builds
nothing and removes an earlier in-place build. A failed compile is not fatal: the extensions are optional, and a module without
its extension is left out of the record, so the group then runs as Python.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import json
import os
import sys

from setuptools import setup
from setuptools.command.build_ext import build_ext

ROOT = os.path.dirname(os.path.abspath(__file__))


def _hot_path_module():
    # by path: importing the node package here would run its guard against a half-built tree
    spec = importlib.util.spec_from_file_location("_hivepbx_compiled", os.path.join(ROOT, "node", "compiled.py"))
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


hot = _hot_path_module()
#: sha256 of each source as mypyc read it (filled by _ext_modules)
compiled_from: dict[str, str] = {}


def _remove_extensions() -> None:
    """HIVEPBX_PURE=1: the earlier in-place build goes, rather than lingering as a stale one."""
    names = [os.path.join(ROOT, *m.split(".")) for m in hot.HOT_PATH]
    for base in names:
        for suffix in importlib.machinery.EXTENSION_SUFFIXES:
            if os.path.exists(base + suffix):
                os.remove(base + suffix)
    for name in os.listdir(ROOT):
        if "__mypyc." in name and name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)):
            os.remove(os.path.join(ROOT, name))
    if os.path.exists(os.path.join(ROOT, "node", hot.MANIFEST)):
        os.remove(os.path.join(ROOT, "node", hot.MANIFEST))


def _metadata_only() -> bool:
    """pip runs setup.py for metadata twice before the build: mypyc (some 15 s) only for the build."""
    args = set(sys.argv[1:])
    return bool(args & {"egg_info", "dist_info"}) and not args & {
        "build", "build_ext", "editable_wheel", "bdist_wheel", "install", "develop"}


def _ext_modules() -> list:
    if os.environ.get("HIVEPBX_PURE"):
        _remove_extensions()
        return []
    if _metadata_only():
        return []
    try:
        from mypyc.build import mypycify
    except ImportError:
        print("hivepbx: mypy not installed, SIP hot path stays pure Python", file=sys.stderr)
        return []
    paths = [m.replace(".", "/") + ".py" for m in hot.HOT_PATH]
    for m, p in zip(hot.HOT_PATH, paths):
        compiled_from[m] = hot.source_hash(os.path.join(ROOT, p))
    try:
        exts = mypycify(paths, opt_level="3", debug_level="0")
    except Exception as e:  # a type error mypyc refuses: build pure Python rather than fail
        print(f"hivepbx: mypyc failed ({e}), SIP hot path stays pure Python", file=sys.stderr)
        compiled_from.clear()
        return []
    for ext in exts:
        ext.optional = True  # no C compiler: warn and install pure Python
    return exts


class BuildExtWithRecord(build_ext):
    """build_ext that records which hot-path modules it built, and from which sources."""

    def run(self) -> None:
        self._built: set[str] = set()
        manifest = os.path.join(os.path.dirname(os.path.dirname(self.get_ext_fullpath("node.sip.parser"))),
                                hot.MANIFEST)
        if os.path.exists(manifest):  # a failed rebuild must not leave the old record standing
            os.remove(manifest)
        super().run()
        # after run() the paths are the in-place ones for an editable install, else build_lib's
        manifest = os.path.join(os.path.dirname(os.path.dirname(self.get_ext_fullpath("node.sip.parser"))),
                                hot.MANIFEST)
        group = [e.name for e in self.extensions if e.name not in hot.HOT_PATH]
        if not compiled_from or not all(n in self._built for n in [*hot.HOT_PATH, *group]):
            print("hivepbx: SIP hot path not (fully) compiled: it runs as Python", file=sys.stderr)
            return
        record = {
            "modules": compiled_from,
            # the shared library the modules call each other through, relative to the package's parent
            "group_lib": self.get_ext_filename(group[0]) if group else None,
            "python": sys.implementation.cache_tag,
        }
        os.makedirs(os.path.dirname(manifest), exist_ok=True)
        with open(manifest, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1, sort_keys=True)
            f.write("\n")

    def build_extension(self, ext) -> None:
        super().build_extension(ext)  # raises on failure; optional extensions are then skipped
        self._built.add(ext.name)


setup(ext_modules=_ext_modules(), cmdclass={"build_ext": BuildExtWithRecord})
