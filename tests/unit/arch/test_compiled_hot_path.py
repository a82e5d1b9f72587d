"""The mypyc-compiled SIP hot path (setup.py, node/compiled.py): a stale extension never runs,
the group falls back as a whole, and CI runs the compiled build it ships."""

from __future__ import annotations

import importlib
import importlib.machinery
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from node import compiled
from node.compiled import HOT_PATH, MANIFEST, check, compiled_modules, source_hash, status

ROOT = Path(__file__).resolve().parents[3]
EXT = importlib.machinery.EXTENSION_SUFFIXES[0]
FAKE = ("hpfake.alpha", "hpfake.beta")


@pytest.fixture
def fake(tmp_path: Path) -> Path:
    """A package built like the hot path: .py files, an 'extension' next to each (garbage, so
    loading one fails loudly), a group library and the build record."""
    pkg = tmp_path / "hpfake"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "alpha.py").write_text("WHO = 'alpha.py'\n")
    (pkg / "beta.py").write_text("from hpfake.alpha import WHO\n")
    for name in ("alpha", "beta"):
        (pkg / f"{name}{EXT}").write_bytes(b"not an ELF file")
    (tmp_path / f"groupx__mypyc{EXT}").write_bytes(b"not an ELF file")
    record = {"modules": {m: source_hash(str(tmp_path / (m.replace(".", "/") + ".py"))) for m in FAKE},
              "group_lib": f"groupx__mypyc{EXT}"}
    (pkg / MANIFEST).write_text(json.dumps(record))
    return tmp_path


def test_matching_build_record_is_compiled(fake: Path) -> None:
    assert check(str(fake), FAKE).state == "compiled"


def test_an_edited_source_makes_the_build_stale(fake: Path) -> None:
    with open(fake / "hpfake" / "beta.py", "a") as f:
        f.write("# edited after the build\n")
    st = check(str(fake), FAKE)
    assert (st.state, st.stale) == ("stale", ("hpfake.beta",))


def test_extensions_without_a_build_record_are_stale(fake: Path) -> None:
    (fake / "hpfake" / MANIFEST).unlink()
    st = check(str(fake), FAKE)
    assert (st.state, st.stale) == ("stale", FAKE)
    (fake / "hpfake" / MANIFEST).write_text("{not json")
    assert check(str(fake), FAKE).state == "stale"


def test_a_missing_extension_or_group_library_is_stale(fake: Path) -> None:
    (fake / "hpfake" / f"alpha{EXT}").unlink()
    st = check(str(fake), FAKE)
    assert (st.state, st.stale) == ("stale", ("hpfake.alpha",))
    (fake / "hpfake" / f"alpha{EXT}").write_bytes(b"x")
    (fake / f"groupx__mypyc{EXT}").unlink()
    assert check(str(fake), FAKE).state == "stale"


def test_no_extensions_is_pure_python(fake: Path) -> None:
    for name in ("alpha", "beta"):
        (fake / "hpfake" / f"{name}{EXT}").unlink()
    assert check(str(fake), FAKE).state == "pure"


def _forget_fake() -> None:
    for name in [m for m in sys.modules if m == "hpfake" or m.startswith("hpfake.")]:
        del sys.modules[name]


def test_source_finder_loads_the_py_files_past_their_extensions(fake: Path) -> None:
    sys.path.insert(0, str(fake))
    finder = None
    try:
        _forget_fake()
        with pytest.raises(ImportError):  # the extension shadows the .py: what the guard prevents
            importlib.import_module("hpfake.alpha")
        _forget_fake()
        finder = compiled.install_source_finder(str(fake), FAKE)
        beta = importlib.import_module("hpfake.beta")
        assert beta.WHO == "alpha.py"
        assert beta.__file__ == str(fake / "hpfake" / "beta.py")
    finally:
        sys.path.remove(str(fake))
        if finder is not None:
            sys.meta_path.remove(finder)
        _forget_fake()


def _copy_node(dest: Path) -> None:
    shutil.copytree(ROOT / "node", dest / "node", ignore=shutil.ignore_patterns("__pycache__"))
    for lib in ROOT.glob(f"*__mypyc{EXT}"):
        shutil.copy2(lib, dest / lib.name)


_PROBE = "import node.compiled as c; print(c.compiled_modules()); print(c.status().state, c.status().stale)"


def _probe(tree: Path, **env: str) -> subprocess.CompletedProcess:
    full = {k: v for k, v in os.environ.items() if k != "HIVEPBX_PURE"}
    full.update(env, PYTHONPATH=str(tree))
    return subprocess.run([sys.executable, "-c", _PROBE], cwd=tree, env=full,
                          capture_output=True, text=True, timeout=60)


def test_editing_a_hot_path_module_runs_the_whole_group_as_python(tmp_path: Path) -> None:
    """End to end on a copy of this tree, compiled or not: after an edit, no module of the
    group loads compiled, and the node says which module is stale and how to rebuild."""
    _copy_node(tmp_path)
    with open(tmp_path / "node" / "sip" / "parser.py", "a") as f:
        f.write("# edited after the build\n")
    r = _probe(tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0] == "()"
    if status().state == "compiled":  # this tree has a current build: the copy's is now stale
        assert lines[1] == "stale ('node.sip.parser',)"
        assert "node.sip.parser" in r.stderr and compiled.REBUILD in r.stderr
    else:
        assert lines[1].split()[0] in ("pure", "stale")


def test_hivepbx_pure_loads_the_py_files_without_a_warning(tmp_path: Path) -> None:
    _copy_node(tmp_path)
    r = _probe(tmp_path, HIVEPBX_PURE="1")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["()", "pure ()"]
    assert "not compiled" not in r.stderr


def test_the_hot_path_is_all_compiled_or_all_python_and_ci_runs_it_compiled() -> None:
    """CI (a fresh clone, .ci/run) must test what ships: the compiled, current build. Elsewhere
    the build is optional, but never partial, and status() agrees with what loaded."""
    loaded = compiled_modules()
    assert loaded in ((), HOT_PATH)
    assert (status().state == "compiled") == (loaded == HOT_PATH)
    if os.environ.get("CI") == "true" and not os.environ.get("HIVEPBX_PURE"):
        assert loaded == HOT_PATH, (
            f"CI runs the SIP hot path as Python ({status()}): the build (setup.py, mypyc) failed "
            f"or is stale; see the pip install output of scripts/install-deps")


def test_version_says_whether_the_hot_path_is_compiled(capsys: pytest.CaptureFixture[str]) -> None:
    from node.cli import main

    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("hivepbx ")
    expected = "compiled (mypyc, 9 modules)" if compiled_modules() == HOT_PATH else "SIP hot path: Python"
    assert expected in out
