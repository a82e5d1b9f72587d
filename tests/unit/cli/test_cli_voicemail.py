"""``hivepbx vm``: mailboxes validated before storing, greetings converted with sox, never
across tenants."""

from __future__ import annotations

import io
import json
import subprocess

import numpy as np

from node.cli import main
from node.media.wav import read_wav
from node.pbx.voicemail_store import FileMailboxStore


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def test_mailbox_set_show_list_messages_greeting(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _run("tenant", "add", "acme", "acme.example", *d)[0] == 0
    assert _run("tenant", "add", "other", "other.example", *d)[0] == 0
    assert _run("ext", "add", "acme", "1001", "--password", "secret-1001", *d)[0] == 0
    rc, _, err = _run("vm", "set", "acme", "1001", *d)
    assert rc == 2 and "pin" in err  # a new mailbox needs a PIN
    rc, out, err = _run("vm", "set", "acme", "1001", "--pin", "4711", "--email", "a@acme.example", *d)
    assert rc == 0, err
    rc, _, err = _run("vm", "set", "acme", "1001", "--email", "nonsense", *d)
    assert rc == 2 and "e-mail" in err
    rc, _, err = _run("vm", "set", "other", "1001", "--pin", "4711", *d)
    assert rc == 2 and "does not exist" in err
    rc, out, _ = _run("vm", "show", "acme", "1001", *d)
    shown = json.loads(out)
    assert shown["email"] == "a@acme.example" and shown["new"] == 0 and "pin" not in shown

    # a greeting in another format (44.1 kHz stereo, made by sox) is converted to 8 kHz mono
    src = tmp_path / "hello.wav"
    subprocess.run(["sox", "-n", "-r", "44100", "-c", "2", str(src), "synth", "1.5", "sine", "500"], check=True)
    rc, out, err = _run("vm", "greeting", "upload", "acme", "1001", "busy", str(src), *d)
    assert rc == 0, err
    store = FileMailboxStore(tmp_path)
    g = read_wav(store.greeting(1, "1001", "busy"))
    assert abs(len(g) - 12000) < 100
    spec = np.abs(np.fft.rfft(g.astype(float)))
    assert abs(np.argmax(spec) * 8000 / len(g) - 500) < 10
    rc, _, err = _run("vm", "greeting", "upload", "other", "1001", "busy", str(src), *d)
    assert rc == 2 and "no mailbox" in err
    rc, _, err = _run("vm", "greeting", "upload", "acme", "1001", "busy", str(tmp_path / "missing.wav"), *d)
    assert rc == 2 and "no such file" in err
    (tmp_path / "junk.wav").write_bytes(b"not audio at all")
    rc, _, err = _run("vm", "greeting", "upload", "acme", "1001", "temporary", str(tmp_path / "junk.wav"), *d)
    assert rc == 2 and err.strip()

    store.save_message(1, "1001", (np.ones(9000) * 100).astype(np.int16), "1002", "Bob")
    rc, out, _ = _run("vm", "messages", "acme", "1001", "--json", *d)
    assert [m["caller"] for m in json.loads(out)] == ["1002"]
    rc, out, _ = _run("vm", "list", "acme", "--json", *d)
    assert json.loads(out) == [{"mailbox": "1001", "enabled": True, "email": "a@acme.example", "new": 1, "saved": 0}]
    assert _run("vm", "greeting", "del", "acme", "1001", "busy", *d)[0] == 0
    assert _run("vm", "greeting", "del", "acme", "1001", "busy", *d)[0] == 2
    assert _run("vm", "del", "acme", "1001", *d)[0] == 0
    assert _run("vm", "show", "acme", "1001", *d)[0] == 2
