"""``WorkQueue`` on its own (no server): dedup, one worker per key, delays, back-off, the token bucket, shutdown."""

from __future__ import annotations

import asyncio

import pytest

from skiff.cluster.client import ShutDown, TokenBucket, WorkQueue

pytestmark = pytest.mark.asyncio


async def test_a_waiting_key_is_queued_once() -> None:
    queue = WorkQueue()
    for key in ("a", "b", "a", "a"):
        queue.add(key)
    assert len(queue) == 2
    assert [await queue.get(), await queue.get()] == ["a", "b"]


async def test_a_key_is_never_given_to_two_workers() -> None:
    queue = WorkQueue()
    queue.add("a")
    first = await queue.get()
    queue.add("a")  # changed again while a worker has it: held back, not handed out
    assert len(queue) == 0
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0.01)
    assert not second.done()
    queue.done(first)
    assert await asyncio.wait_for(second, 1) == "a"


async def test_waiting_workers_are_woken_in_turn() -> None:
    queue = WorkQueue()
    workers = [asyncio.ensure_future(queue.get()) for _ in range(3)]
    await asyncio.sleep(0)
    for key in "xyz":
        queue.add(key)
    assert sorted(await asyncio.gather(*workers)) == ["x", "y", "z"]


async def test_add_after_keeps_the_earliest() -> None:
    queue = WorkQueue()
    queue.add_after("k", 10)
    queue.add_after("k", 0.02)
    queue.add_after("k", 5)  # later than the pending one: ignored
    assert len(queue) == 0
    assert await asyncio.wait_for(queue.get(), 1) == "k"
    queue.done("k")
    await asyncio.sleep(0.05)
    assert len(queue) == 0  # the superseded timers never fire


async def test_rate_limited_back_off_doubles_and_forget_resets() -> None:
    queue = WorkQueue(base_delay=0.01, max_delay=0.04, qps=1000, burst=1000)
    loop = asyncio.get_running_loop()
    delays = []
    for _ in range(4):
        start = loop.time()
        queue.add_rate_limited("k")
        key = await asyncio.wait_for(queue.get(), 1)
        queue.done(key)
        delays.append(loop.time() - start)
    assert queue.num_requeues("k") == 4
    assert delays[0] >= 0.009 and delays[1] >= 0.019 and delays[2] >= 0.039 and delays[3] < 0.2  # capped
    queue.forget("k")
    assert queue.num_requeues("k") == 0


async def test_token_bucket_spends_its_burst_then_paces() -> None:
    now = [100.0]
    bucket = TokenBucket(qps=10, burst=3, clock=lambda: now[0])
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.reserve() == pytest.approx(0.1)
    assert bucket.reserve() == pytest.approx(0.2)
    now[0] += 10  # refills, but never beyond the burst
    assert [bucket.reserve() for _ in range(3)] == [0.0, 0.0, 0.0] and bucket.reserve() == pytest.approx(0.1)


async def test_shutdown_wakes_workers_and_drops_adds() -> None:
    queue = WorkQueue()
    worker = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.add_after("later", 10)
    queue.shutdown()
    with pytest.raises(ShutDown):
        await asyncio.wait_for(worker, 1)
    queue.add("x")
    assert len(queue) == 0 and queue.shutting_down


async def test_a_cancelled_worker_passes_its_wakeup_on() -> None:
    queue = WorkQueue()
    first = asyncio.ensure_future(queue.get())
    second = asyncio.ensure_future(queue.get())
    await asyncio.sleep(0)
    queue.add("k")  # wakes `first`...
    first.cancel()  # ...which is cancelled before it runs
    assert await asyncio.wait_for(second, 1) == "k"
