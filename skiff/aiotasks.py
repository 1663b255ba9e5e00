"""Small asyncio helpers shared by the daemons."""

from __future__ import annotations

import asyncio


async def cancel_and_wait(*tasks: asyncio.Task | None) -> None:
    """Cancel every task given (``None`` stands for none) and wait until each has finished unwinding; their
    cancellation is not re-raised, any other failure is (after all of them have been waited for)."""
    running = [task for task in tasks if task is not None]
    for task in running:
        task.cancel()
    failure: BaseException | None = None
    for task in running:
        try:
            await task
        except asyncio.CancelledError:
            pass
        except Exception as exc:
            failure = failure or exc
    if failure is not None:
        raise failure
