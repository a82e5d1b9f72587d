"""What every long-running hivepbx process (node, SBC) does around its event loop: settle the
heap once started, and wait for SIGINT/SIGTERM. A leaf: imports nothing of the project, so the
SBC uses it without pulling in the PBX."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import signal


def settle_heap() -> None:
    """After start-up: what start-up built is never collected again (``gc.freeze``), and the
    young generation is collected less often — calls and transactions are short-lived and
    numerous, so the default threshold (700) means a collection every few messages."""
    gc.collect()
    gc.freeze()
    gc.set_threshold(10_000, 10, 10)


async def until_signalled() -> None:
    """Return on the first SIGINT or SIGTERM."""
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    await stop.wait()
