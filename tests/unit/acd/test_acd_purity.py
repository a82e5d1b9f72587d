"""The ACD engine is sans-I/O: it imports no asyncio, socket, time or project I/O layer, so the
same log gives the same decisions on every node and in every test."""

from __future__ import annotations

import ast
import pathlib

import node.acd

PURE = ["engine.py", "events.py", "config.py"]
ALLOWED = {"__future__", "heapq", "random", "dataclasses", "json", "math", "re", "typing",
           "node.acd.config", "node.acd.events", "node.config_rules"}


def test_engine_modules_import_nothing_with_io() -> None:
    root = pathlib.Path(node.acd.__file__).parent
    for name in PURE:
        tree = ast.parse((root / name).read_text())
        for n in ast.walk(tree):
            mods = [a.name for a in n.names] if isinstance(n, ast.Import) else \
                [n.module or ""] if isinstance(n, ast.ImportFrom) else []
            for m in mods:
                assert m in ALLOWED, f"{name} imports {m}"
