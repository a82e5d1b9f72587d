"""A real etcd (Debian etcd-server) for the tests: loopback free ports, a temp data dir, always
stopped and removed, also when the test run dies (its process group is tracked by procs)."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
import urllib.error
import urllib.request

from tests.peers import procs
from tests.peers.net import LOOPBACK, free_port

ETCD_BINARY = "etcd"


class EtcdServer:
    """One single-member etcd. ``endpoint`` is 'host:port' for the client (aetcd, HIVEPBX_ETCD)."""

    def __init__(self, base_dir: str | None = None) -> None:
        self.client_port = free_port()
        self.peer_port = free_port()
        self.dir = tempfile.mkdtemp(prefix="etcd-", dir=base_dir)
        self.proc: subprocess.Popen | None = None
        self.log_path = os.path.join(self.dir, "etcd.log")

    @property
    def endpoint(self) -> str:
        return f"{LOOPBACK}:{self.client_port}"

    def start(self, timeout: float = 20.0) -> "EtcdServer":
        if shutil.which(ETCD_BINARY) is None:
            raise RuntimeError("etcd not installed: run scripts/install-deps --test (Debian etcd-server)")
        client = f"http://{LOOPBACK}:{self.client_port}"
        peer = f"http://{LOOPBACK}:{self.peer_port}"
        cmd = [
            ETCD_BINARY,
            "--name", "test",
            "--data-dir", os.path.join(self.dir, "data"),
            "--listen-client-urls", client,
            "--advertise-client-urls", client,
            "--listen-peer-urls", peer,
            "--initial-advertise-peer-urls", peer,
            "--initial-cluster", f"test={peer}",
            # a restart finds its data dir and rejoins as the same member
            "--initial-cluster-state", "existing" if os.path.isdir(os.path.join(self.dir, "data")) else "new",
            "--log-level", "warn",
            # tests create and drop many leases; a short election keeps a single member quick
            "--heartbeat-interval", "50",
            "--election-timeout", "500",
        ]
        env = {k: v for k, v in os.environ.items() if not k.startswith("ETCD")}
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                cmd, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                start_new_session=True, env=env,
            )
        finally:
            log.close()
        procs.track(self.proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"etcd exited with {self.proc.returncode}: {self._log_tail()}")
            if self.healthy():
                return self
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"etcd not healthy after {timeout}s: {self._log_tail()}")

    def healthy(self) -> bool:
        try:
            with urllib.request.urlopen(f"http://{self.endpoint}/health", timeout=1) as r:
                return r.status == 200 and b'"true"' in r.read()
        except (urllib.error.URLError, OSError):
            return False

    def _log_tail(self) -> str:
        try:
            with open(self.log_path, "rb") as f:
                return f.read()[-2000:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self, *, keep_data: bool = False) -> None:
        """Stop etcd; ``keep_data`` keeps its directory (and ports) so ``start`` brings the same
        member back, as after a crash and restart."""
        if self.proc is not None:
            procs.kill_group(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                procs.kill_group(self.proc.pid)
                self.proc.wait(5)
            procs.untrack(self.proc.pid)
            self.proc = None
        if not keep_data:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> "EtcdServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
