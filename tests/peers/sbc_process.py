"""A real `hivepbx sbc` process for tests that need the SBC as operators run it (workers,
kill -9, a restart on the same state dir), configured from TOML the test supplies."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from pathlib import Path

from tests.peers.net import free_port

HIVEPBX = Path(sys.executable).parent / "hivepbx"


class SbcProcess:
    """``[sbc]`` on a free UDP port and HTTP ports (one per worker), no probing, no load
    shedding; ``sections`` is the rest of the config (nodes, etcd, tenants' policies)."""

    def __init__(self, tmp_path: Path, name: str, state_dir: Path, sections: str, workers: int = 1) -> None:
        self.name = name
        self.workers = workers
        self.port, self.http = free_port(), free_port(span=2)
        self.config = tmp_path / f"{name}.toml"
        self.config.write_text(f"""
[sbc]
listen = ["udp:127.0.0.1:{self.port}"]
http = "127.0.0.1:{self.http}"
secret = "sbc-process-test-secret"
workers = {workers}
probe_interval = 0
max_loop_lag = 0
log_level = "WARNING"
state_dir = "{state_dir}"
{sections}""")
        self.proc: asyncio.subprocess.Process | None = None

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    async def __aenter__(self) -> "SbcProcess":
        self.proc = await asyncio.create_subprocess_exec(
            str(HIVEPBX), "sbc", "--config", str(self.config),
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, start_new_session=True)
        seen = b""
        while seen.count(b"hivepbx SBC running") < self.workers:  # each worker's banner, once bound
            line = await asyncio.wait_for(self.proc.stdout.readline(), 45)
            assert line, (await self.proc.stderr.read()).decode()[-2000:]
            seen += line
        return self

    def worker_pids(self) -> list[int]:
        return [int(p) for p in Path(f"/proc/{self.proc.pid}/task/{self.proc.pid}/children").read_text().split()]

    def kill(self) -> None:
        """kill -9, the whole host (every worker): no lease revoke, no last publish."""
        os.killpg(self.proc.pid, signal.SIGKILL)

    async def __aexit__(self, *exc) -> None:
        if self.proc.returncode is None:
            self.proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(self.proc.wait(), 30)
        except asyncio.TimeoutError:
            self.kill()
            await self.proc.wait()
