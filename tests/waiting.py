"""Polling for a condition the test cannot await directly (a call's state, a counter): one
helper, so every test gives up the same way, with False, and the assert says what failed."""

from __future__ import annotations

import asyncio
from collections.abc import Callable


async def until(pred: Callable[[], object], timeout: float = 10.0, interval: float = 0.02) -> bool:
    """True as soon as ``pred()`` is true (checked at once, then every ``interval`` s);
    False once ``timeout`` seconds have passed without."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not pred():
        if loop.time() > deadline:
            return False
        await asyncio.sleep(interval)
    return True
