"""``hivepbx ivr add/hours`` with open hours: stored normalised, shown in the list, bad values
refused with a message that says what is wrong, nothing stored then."""

from __future__ import annotations

import json

from tests.unit.cli.test_cli_ivr import _run


def test_ivr_hours_from_the_command_line(tmp_path):
    d = ["--data-dir", str(tmp_path)]
    assert _run("tenant", "add", "acme", "acme.example", *d)[0] == 0
    for n in ("1002", "1009"):
        assert _run("ext", "add", "acme", n, "--password", f"secret-{n}", *d)[0] == 0
    hours = '{"weekdays": "mon-fri", "time": "08:00-18:00"}'
    rc, out, err = _run("ivr", "add", "acme", "800", "--menu", '{"options": {"1": "1002"}}', "--active", hours,
                        "--out-of-hours", "1009", *d)
    assert rc == 0, err
    shown = json.loads(_run("ivr", "show", "acme", "800", *d)[1])
    assert shown["active"] == json.loads(hours) and shown["closed"] == ["closed"]
    assert shown["out_of_hours"] == {"type": "extension", "value": "1009"}
    assert "else closed then extension 1009" in _run("ivr", "list", "acme", *d)[1]

    rc, out, err = _run("ivr", "hours", "acme", "800", "--closed", "night", "--out-of-hours", "hangup", *d)
    assert rc == 0, err
    shown = json.loads(_run("ivr", "show", "acme", "800", *d)[1])
    assert shown["closed"] == ["night"] and "out_of_hours" not in shown and shown["options"]["1"]["value"] == "1002"

    # bad values: exit 2, a message naming the problem, the stored menu unchanged
    for argv, msg in [
        (["--active", '{"time": "8-18"}'], "not a time HH:MM"),
        (["--active", "{weekdays"], "--active is not valid JSON"),
        (["--out-of-hours", "1234"], "1234 is no extension"),
        (["--out-of-hours", "sip:x@example.com"], "must be an IP address"),
        (["--always", "--closed", "x"], "give it alone"),
        ([], "give --active JSON"),
    ]:
        rc, _, err = _run("ivr", "hours", "acme", "800", *argv, *d)
        assert rc == 2 and msg in err, (argv, err)
    assert json.loads(_run("ivr", "show", "acme", "800", *d)[1]) == shown
    rc, _, err = _run("ivr", "hours", "acme", "801", "--always", *d)
    assert rc == 2 and "no IVR 801" in err

    rc, out, err = _run("ivr", "hours", "acme", "800", "--always", *d)
    assert rc == 0 and "always open" in out, err
    shown = json.loads(_run("ivr", "show", "acme", "800", *d)[1])
    assert not {"active", "closed", "out_of_hours"} & set(shown)
