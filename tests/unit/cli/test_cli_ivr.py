"""``hivepbx ivr`` and ``hivepbx prompts``: menus validated before storing, DIDs to IVRs,
prompts built and replaced per tenant, never across tenants."""

from __future__ import annotations

import io
import json
import subprocess

from node.cli import main


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_ivr_add_list_show_del(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _run("tenant", "add", "acme", "acme.example", *d)[0] == 0
    assert _run("ext", "add", "acme", "1002", "--password", "secret-1002", *d)[0] == 0
    menu = {"intro": "welcome", "options": {"1": "1002", "9": "tel:+4930123"}}
    rc, out, err = _run("ivr", "add", "acme", "800", "--menu", json.dumps(menu), "--did", "+4930555", *d)
    assert rc == 0, err
    assert "DID +4930555" in out
    menu["direct_dial"] = True  # replacing an IVR is allowed (it is no conflict with itself)
    rc, out, err = _run("ivr", "add", "acme", "800", "--menu", json.dumps(menu), *d)
    assert rc == 0, err
    rc, out, _ = _run("ivr", "show", "acme", "800", *d)
    shown = json.loads(out)
    assert shown["direct_dial"] is True
    assert shown["options"]["1"] == {"type": "extension", "value": "1002"}
    assert shown["options"]["9"] == {"type": "external", "value": "+4930123"}
    assert shown["intro"] == ["welcome"] and shown["prompt"] == ["menu"]
    rc, out, _ = _run("did", "list", "acme", *d)
    assert "ivr 800" in out
    rc, out, _ = _run("ivr", "list", "acme", "--json", *d)
    assert [m["number"] for m in json.loads(out)] == ["800"]

    # bad menus: a clear message, exit 2, nothing stored
    rc, _, err = _run("ivr", "add", "acme", "801", "--menu", '{"options": {"x": "1002"}}', *d)
    assert rc == 2 and "option key 'x'" in err
    rc, _, err = _run("ivr", "add", "acme", "1002", "--menu", '{"options": {"1": "1002"}}', *d)
    assert rc == 2 and "is an extension" in err
    rc, _, err = _run("ivr", "add", "acme", "802", "--menu", "{not json", *d)
    assert rc == 2 and "not valid JSON" in err
    assert _run("ivr", "show", "acme", "801", *d)[0] == 2

    # another tenant does not see acme's IVR
    assert _run("tenant", "add", "beta", "beta.example", *d)[0] == 0
    rc, out, _ = _run("ivr", "list", "beta", *d)
    assert "no IVRs" in out
    assert _run("ivr", "del", "beta", "800", *d)[0] == 2
    assert _run("ivr", "del", "acme", "800", *d)[0] == 0


def test_prompts_build_upload_per_tenant(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    _run("tenant", "add", "acme", "acme.example", *d)
    _run("tenant", "add", "beta", "beta.example", *d)
    rc, out, err = _run("prompts", "build", *d)
    assert rc == 0, err
    src = tmp_path / "greeting.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(src), "synth", "0.5", "sine", "500"], check=True)
    rc, out, err = _run("prompts", "upload", "acme", "welcome", str(src), *d)
    assert rc == 0, err
    import wave

    with wave.open(str(tmp_path / "prompts" / "tenant" / "1" / "welcome.wav")) as w:
        assert (w.getframerate(), w.getnchannels(), w.getsampwidth()) == (8000, 1, 2)
        assert abs(w.getnframes() - 4000) < 50
    acme = {p["name"]: p["source"] for p in json.loads(_run("prompts", "list", "acme", "--json", *d)[1])}
    beta = {p["name"]: p["source"] for p in json.loads(_run("prompts", "list", "beta", "--json", *d)[1])}
    assert acme["welcome"] == "tenant" and beta["welcome"] == "default" and acme["menu"] == "default"
    rc, _, err = _run("prompts", "upload", "acme", "../../x", str(src), *d)
    assert rc == 2 and "prompt name" in err
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    rc, _, err = _run("prompts", "upload", "acme", "menu", str(tmp_path / "junk.wav"), *d)
    assert rc == 2 and "cannot convert" in err
    assert _run("prompts", "del", "beta", "welcome", *d)[0] == 2  # beta has no own recording
    assert _run("prompts", "del", "acme", "welcome", *d)[0] == 0
