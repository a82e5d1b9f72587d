"""`hivepbx sbc` as the operator runs it: a process from flags and a TOML file, answering
SIP and /health, and stopping cleanly on SIGTERM."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import sys
import urllib.request
from pathlib import Path

import pytest

from tests.peers.net import free_port

pytestmark = pytest.mark.interop

HIVEPBX = Path(sys.executable).parent / "hivepbx"


async def test_hivepbx_sbc_process_serves_and_stops(tmp_path):
    port, http, node_port = free_port(), free_port(), free_port()
    cfg = tmp_path / "sbc.toml"
    cfg.write_text(
        "[sbc]\n"
        f'listen = ["udp:127.0.0.1:{port}"]\n'
        'secret = "process-test-secret"\n'
        "probe_interval = 0.2\nprobe_timeout = 0.2\ndown_after = 1\n"
        "[[nodes]]\n"
        f'id = "gone"\naddress = "127.0.0.1:{node_port}"\ndc = "dc1"\n'
    )
    proc = await asyncio.create_subprocess_exec(
        str(HIVEPBX), "sbc", "--config", str(cfg), "--http", f"127.0.0.1:{http}", "--log-level", "WARNING",
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True,
    )
    try:
        banner = await asyncio.wait_for(proc.stdout.readline(), 20)
        assert b"hivepbx SBC running" in banner
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.bind(("127.0.0.1", 0))
        sock.settimeout(5)
        sock.sendto((f"OPTIONS sip:127.0.0.1:{port} SIP/2.0\r\nVia: SIP/2.0/UDP 127.0.0.1:{sock.getsockname()[1]}"
                     ";branch=z9hG4bKproc1\r\nMax-Forwards: 70\r\nFrom: <sip:a@b>;tag=1\r\nTo: <sip:c@d>\r\n"
                     "Call-ID: proc1\r\nCSeq: 1 OPTIONS\r\nContent-Length: 0\r\n\r\n").encode(), ("127.0.0.1", port))
        data = await asyncio.get_running_loop().run_in_executor(None, sock.recv, 65535)
        sock.close()
        assert data.startswith(b"SIP/2.0 200 ")

        def health() -> dict:
            with urllib.request.urlopen(f"http://127.0.0.1:{http}/health", timeout=2) as r:
                return json.loads(r.read())

        loop = asyncio.get_running_loop()
        deadline = loop.time() + 10
        h = await loop.run_in_executor(None, health)
        while h["nodes"]["gone"]["up"] and loop.time() < deadline:  # nothing listens there: probes fail
            await asyncio.sleep(0.2)
            h = await loop.run_in_executor(None, health)
        assert h["nodes"]["gone"] == {"up": False, "dc": "dc1", "address": f"127.0.0.1:{node_port}"}
        assert h["status"] == "degraded"
    finally:
        if proc.returncode is None:
            proc.send_signal(signal.SIGTERM)
        rc = await asyncio.wait_for(proc.wait(), 15)
    assert rc == 0


async def test_bad_config_file_exits_2_with_the_reason(tmp_path):
    cfg = tmp_path / "bad.toml"
    cfg.write_text('[sbc]\nmode = "fastest"\n[[nodes]]\naddress = "127.0.0.1"\n')
    proc = await asyncio.create_subprocess_exec(
        str(HIVEPBX), "sbc", "--config", str(cfg), stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        env={**os.environ},
    )
    out, err = await asyncio.wait_for(proc.communicate(), 20)
    assert proc.returncode == 2
    assert b"error: sbc.mode: 'fastest' is not one of" in err
