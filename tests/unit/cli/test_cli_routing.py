"""``hivepbx object|hunt|timeswitch|fwd|dnd|daynight``: validated writes, clear errors, tenancy."""

from __future__ import annotations

import io
import json

from node.cli import main


def _run(*argv: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    rc = main(list(argv), stdout=out, stderr=err)
    return rc, out.getvalue(), err.getvalue()


def _setup(tmp_path) -> list[str]:
    d = ["--data-dir", str(tmp_path)]
    for name in ("acme", "beta"):
        assert _run("tenant", "add", name, f"{name}.example", *d)[0] == 0
    for n in ("1001", "1002", "1009"):
        assert _run("ext", "add", "acme", n, "--password", f"secret-{n}", *d)[0] == 0
    assert _run("ext", "add", "beta", "2002", "--password", "secret-2002", *d)[0] == 0
    return d


def test_hunt_group_commands(tmp_path):
    d = _setup(tmp_path)
    rc, out, err = _run("hunt", "add", "acme", "600", "1001", "1002", "tel:+4930123", "--strategy", "circular",
                        "--ring", "15", "--fallback", "1009", "--did", "+4930555", *d)
    assert rc == 0, err
    assert "1001, 1002, +4930123" in out and "DID +4930555" in out
    rc, out, _ = _run("object", "get", "acme", "hunt_group", "600", *d)
    doc = json.loads(out)
    assert doc["strategy"] == "circular" and doc["ring"] == 15 and doc["fallback"] == "1009"
    assert "hunt_group 600" in _run("did", "list", "acme", *d)[1]
    # beta's extension cannot be a member; nothing stored
    rc, _, err = _run("hunt", "add", "acme", "601", "2002", *d)
    assert rc == 2 and "2002 is not an extension of this tenant" in err
    rc, out, _ = _run("hunt", "list", "acme", "--json", *d)
    assert [o["name"] for o in json.loads(out)] == ["600"]
    assert "no hunt_group" in _run("hunt", "list", "beta", *d)[1]
    rc, _, err = _run("hunt", "del", "acme", "600", *d)
    assert rc == 2 and "destination of DID +4930555" in err
    assert _run("did", "del", "acme", "+4930555", *d)[0] == 0
    assert _run("hunt", "del", "acme", "600", *d)[0] == 0
    assert _run("hunt", "del", "acme", "600", *d)[0] == 2


def test_object_put_validates_by_kind(tmp_path):
    d = _setup(tmp_path)
    rc, _, err = _run("object", "put", "acme", "hunt_group", "600", '{"strategy": "random", "members": ["1001"]}', *d)
    assert rc == 2 and "strategy 'random'" in err
    rc, _, err = _run("object", "put", "acme", "gizmo", "x", "{}", *d)
    assert rc == 2 and "unknown feature kind 'gizmo'" in err
    rc, _, err = _run("object", "put", "acme", "feature_codes", "*78", "{oops", *d)
    assert rc == 2 and "not valid JSON" in err
    rc, _, err = _run("object", "put", "acme", "block_list", "other", '{"anonymous": true}', *d)
    assert rc == 2 and "named 'inbound'" in err
    f = tmp_path / "codes.json"
    f.write_text('{"action": "dnd_on"}')
    assert _run("object", "put", "acme", "feature_codes", "*78", f"@{f}", *d)[0] == 0
    assert _run("object", "put", "beta", "feature_codes", "*78", '{"action": "daynight_night", "toggle": "main"}', *d)[0] == 0
    rc, out, _ = _run("object", "list", "acme", "feature_codes", "--json", *d)
    assert json.loads(out) == [{"name": "*78", "data": {"action": "dnd_on"}}]


def test_forwarding_dnd_timeswitch_and_daynight(tmp_path):
    d = _setup(tmp_path)
    rc, out, err = _run("fwd", "set", "acme", "1001", "--busy", "1009", "--no-answer", "tel:0170123", "--ring", "12", *d)
    assert rc == 0, err
    shown = json.loads(_run("fwd", "show", "acme", "1001", *d)[1])
    assert shown == {"dnd": False, "busy": "1009", "no_answer": "tel:0170123", "no_answer_ring": 12}
    rc, _, err = _run("fwd", "set", "acme", "1001", "--unconditional", "2002", *d)
    assert rc == 2 and "2002 is no extension" in err
    assert _run("fwd", "clear", "acme", "1001", "--type", "busy", *d)[0] == 0
    assert "busy" not in json.loads(_run("fwd", "show", "acme", "1001", *d)[1])
    assert _run("dnd", "acme", "1001", "on", *d)[0] == 0
    assert json.loads(_run("fwd", "show", "acme", "1001", *d)[1])["dnd"] is True
    assert _run("dnd", "beta", "1001", "on", *d)[0] == 2  # beta has no 1001

    switch = {"toggle": "main", "night": "1009", "rules": [{"when": {"weekdays": "mon-fri"}, "to": "1002"}]}
    rc, out, err = _run("timeswitch", "add", "acme", "500", json.dumps(switch), "--did", "+4930999", *d)
    assert rc == 0 and "1 rule(s); DID +4930999" in out, err
    rc, _, err = _run("timeswitch", "add", "acme", "501", '{"rules": [{"when": {"time": "9-5"}, "to": "1002"}]}', *d)
    assert rc == 2 and "not a time HH:MM" in err
    rc, out, _ = _run("daynight", "acme", "night", *d)
    assert rc == 0 and "main is now night" in out
    assert json.loads(_run("object", "get", "acme", "daynight", "main", *d)[1]) == {"mode": "night"}
    assert "main is now day" in _run("daynight", "acme", "toggle", *d)[1]
    assert _run("object", "get", "beta", "daynight", "main", *d)[0] == 2  # untouched in beta
