"""Background tasks that never end silently: a failure is logged with its traceback and the task restarts."""

import asyncio
import logging
from collections.abc import Callable, Coroutine

log = logging.getLogger(__name__)

RESTART_DELAY_S = 1.0


async def supervise(name: str, run: Callable[[], Coroutine], restart_delay_s: float = RESTART_DELAY_S) -> None:
    """Runs run() until cancelled, restarting it after any failure."""
    while True:
        try:
            await run()
            log.warning("background task %s returned; restarting it", name)
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("background task %s failed; restarting it in %.0f s", name, restart_delay_s)
        await asyncio.sleep(restart_delay_s)
