"""A real rtpengine (Debian rtpengine-daemon) in userspace mode for the SBC media tests.

No kernel module (``--table=-1``), foreground, logging to a file in the test's directory, ng
control on a loopback ``free_port()``. RTP ports come from 40000-40999, a range no other
test uses; tests starting several instances give each a slice of it. Under pytest-xdist each
worker has its own copy of that range (worker n: +1000*n), so tests name their slice in
40000-40999 terms and check ports with ``Rtpengine.ports`` / ``rtp_ports()``, never literals.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
from pathlib import Path

from node.rtp_engine.ng_client import NgClient
from tests.peers import procs
from tests.peers.net import LOOPBACK, free_port, xdist_worker

RTP_RANGE = (40000, 40999)


def rtp_ports(port_min: int = RTP_RANGE[0], port_max: int = RTP_RANGE[1]) -> range:
    """The ports this process's rtpengine really uses for the slice [port_min, port_max]."""
    if not (RTP_RANGE[0] <= port_min < port_max <= RTP_RANGE[1]):
        raise ValueError(f"rtpengine test ports must stay within {RTP_RANGE}")
    shift = 1000 * xdist_worker()[0]
    return range(port_min + shift, port_max + shift + 1)


class Rtpengine:
    def __init__(self, workdir: Path, *, port_min: int = RTP_RANGE[0], port_max: int = RTP_RANGE[1],
                 host: str = LOOPBACK) -> None:
        self.ports = rtp_ports(port_min, port_max)
        self.workdir = workdir
        self.host = host
        self.ng_port = free_port(host)
        self.port_min = self.ports[0]
        self.port_max = self.ports[-1]
        self._proc: asyncio.subprocess.Process | None = None
        self.log_path = workdir / f"rtpengine-{self.ng_port}.log"

    @property
    def address(self) -> tuple[str, int]:
        return self.host, self.ng_port

    @property
    def argv(self) -> list[str]:
        exe = shutil.which("rtpengine")
        if exe is None:
            raise RuntimeError("rtpengine not installed: scripts/install-deps --test installs rtpengine-daemon")
        return [
            exe, "--config-file=none", "--foreground", "--log-stderr", "--table=-1",
            f"--interface={self.host}", f"--listen-ng={self.host}:{self.ng_port}",
            f"--port-min={self.port_min}", f"--port-max={self.port_max}", "--log-level=6",
            "--delete-delay=0", "--timeout=60", "--num-threads=2",
        ]

    async def start(self, timeout: float = 10.0) -> "Rtpengine":
        self.workdir.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self._proc = await asyncio.create_subprocess_exec(
                *self.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log, stderr=log,
                cwd=self.workdir, start_new_session=True,
            )
        finally:
            log.close()
        procs.track(self._proc.pid)
        client = NgClient(self.host, self.ng_port, timeout=0.2, retries=0)
        try:
            loop = asyncio.get_running_loop()
            deadline = loop.time() + timeout
            while loop.time() < deadline:
                if self._proc.returncode is not None:
                    raise RuntimeError(f"rtpengine exited early:\n{self.log_tail()}")
                if await client.ping():
                    return self
                await asyncio.sleep(0.1)
        finally:
            client.close()
        await self.stop()
        raise TimeoutError(f"rtpengine did not answer ping within {timeout}s:\n{self.log_tail()}")

    def log_tail(self, lines: int = 30) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return ""

    async def stop(self) -> None:
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        try:
            procs.kill_group(proc.pid, signal.SIGCONT)  # a paused one must see the SIGTERM
            proc.send_signal(signal.SIGTERM)
            await asyncio.wait_for(proc.wait(), 5.0)
        except (ProcessLookupError, asyncio.TimeoutError):
            procs.kill_group(proc.pid)
            await proc.wait()
        procs.untrack(proc.pid)

    def pause(self) -> None:
        """Stop answering (SIGSTOP): a hung instance, for failover tests."""
        assert self._proc is not None
        procs.kill_group(self._proc.pid, signal.SIGSTOP)

    def resume(self) -> None:
        assert self._proc is not None
        procs.kill_group(self._proc.pid, signal.SIGCONT)
