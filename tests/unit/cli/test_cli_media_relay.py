"""`hivepbx run|node --media-relay/--rtpengine-ng` (and their environment and TOML forms)
reach NodeConfig; bad values are refused before the node starts."""

from __future__ import annotations

import sys
import types

import pytest

from node.cli import main


@pytest.fixture
def started(monkeypatch):
    seen = []
    fake = types.ModuleType("node.runtime.app")
    fake.run = lambda cfg: seen.append(cfg) or 0
    monkeypatch.setitem(sys.modules, "node.runtime.app", fake)
    monkeypatch.delenv("HIVEPBX_MEDIA_RELAY", raising=False)
    monkeypatch.delenv("HIVEPBX_RTPENGINE_NG", raising=False)
    return seen


def test_default_is_the_local_relay(tmp_path, started):
    assert main(["run", "--data-dir", str(tmp_path)]) == 0
    assert (started[0].media_relay, started[0].rtpengine_ng) == ("local", ())


def test_flags(tmp_path, started):
    assert main(["run", "--data-dir", str(tmp_path), "--media-relay", "rtpengine",
                 "--rtpengine-ng", "10.0.0.8:2223,10.0.0.9"]) == 0
    assert (started[0].media_relay, started[0].rtpengine_ng) == ("rtpengine", ("10.0.0.8:2223", "10.0.0.9"))


def test_environment(tmp_path, started, monkeypatch):
    monkeypatch.setenv("HIVEPBX_MEDIA_RELAY", "rtpengine")
    monkeypatch.setenv("HIVEPBX_RTPENGINE_NG", "127.0.0.1:2223")
    assert main(["run", "--data-dir", str(tmp_path)]) == 0
    assert (started[0].media_relay, started[0].rtpengine_ng) == ("rtpengine", ("127.0.0.1:2223",))


def test_node_toml(tmp_path, started):
    toml = tmp_path / "node.toml"
    toml.write_text('etcd = "127.0.0.1:2379"\nmedia_relay = "rtpengine"\nrtpengine_ng = ["127.0.0.1:2223", "[::1]:2224"]\n')
    assert main(["node", "--data-dir", str(tmp_path), "--config", str(toml)]) == 0
    assert (started[0].media_relay, started[0].rtpengine_ng) == ("rtpengine", ("127.0.0.1:2223", "[::1]:2224"))


@pytest.mark.parametrize("args, message", [
    (["--media-relay", "rtpengine"], "needs rtpengine_ng"),
    (["--media-relay", "rtpengine", "--rtpengine-ng", "host:99999"], "not host:port"),
])
def test_bad_settings_are_refused_before_starting(tmp_path, started, capsys, args, message):
    assert main(["run", "--data-dir", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and message in err and not started


def test_bad_relay_in_environment(tmp_path, started, capsys, monkeypatch):
    monkeypatch.setenv("HIVEPBX_MEDIA_RELAY", "kernel")
    assert main(["run", "--data-dir", str(tmp_path)]) == 2
    assert '"local" or "rtpengine"' in capsys.readouterr().err and not started
