"""Reading watches in tests: the next events within a deadline, or the certainty that none come."""

from __future__ import annotations

import asyncio

import pytest

from skiff.cluster.store import Event, Watch


async def take(watch: Watch, count: int, timeout: float = 10.0) -> list[Event]:
    """The next ``count`` events of ``watch`` (fails the test if they do not come in time)."""
    events: list[Event] = []
    if count == 0:
        return events
    async with asyncio.timeout(timeout):
        async for event in watch:
            events.append(event)
            if len(events) == count:
                break
    return events


async def nothing_more(watch: Watch, wait: float = 0.3) -> None:
    """Assert that no further event arrives within ``wait`` seconds."""
    try:
        async with asyncio.timeout(wait):
            event = await watch.__anext__()
    except TimeoutError:
        return
    pytest.fail(f"unexpected event {event}")
