"""Peer processes still alive when the test run ends are killed: a failed or interrupted test
never leaves a SIPp or baresip behind.  Each peer runs in its own process group."""

from __future__ import annotations

import atexit
import os
import signal

_live: set[int] = set()


def track(pid: int) -> None:
    """``pid`` leads a process group (started with start_new_session=True)."""
    _live.add(pid)


def untrack(pid: int) -> None:
    _live.discard(pid)


def kill_group(pid: int, sig: int = signal.SIGKILL) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


@atexit.register
def _kill_all() -> None:
    for pid in list(_live):
        kill_group(pid)
    _live.clear()
