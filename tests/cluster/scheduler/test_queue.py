"""The scheduling queue: priority order, back-off, the unschedulable pool and what moves pods out of it."""

from __future__ import annotations

import asyncio

import pytest

from skiff.cluster.scheduler.podinfo import PodInfo
from skiff.cluster.scheduler.queue import ACTIVE, BACKOFF, UNSCHEDULABLE, SchedulingQueue
from tests.cluster.scheduler.objects import pod


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def info(name: str, priority: int = 0) -> PodInfo:
    return PodInfo.of(pod(name, priority=priority))


def test_highest_priority_first_then_oldest() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    for name, priority in (("low", 0), ("high", 10), ("low2", 0), ("mid", 5)):
        queue.add(info(name, priority))
        clock.now += 1
    assert [queue.pop_nowait().pod.name for _ in range(4)] == ["high", "mid", "low", "low2"]
    assert queue.pop_nowait() is None


def test_backoff_doubles_up_to_the_maximum() -> None:
    queue = SchedulingQueue(initial_backoff=1, max_backoff=10)
    assert [queue.backoff_duration(n) for n in range(1, 7)] == [1, 2, 4, 8, 10, 10]


def test_a_failed_bind_waits_out_its_backoff() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    queue.add(info("p"))
    qp = queue.pop_nowait()
    queue.requeue(qp, unschedulable=False)
    assert qp.where == BACKOFF
    assert queue.pop_nowait() is None
    clock.now += 1.0
    assert queue.pop_nowait() is qp and qp.attempts == 2


def test_unschedulable_pods_wait_for_a_cluster_event() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    queue.add(info("p"))
    qp = queue.pop_nowait()
    queue.requeue(qp, unschedulable=True)
    assert qp.where == UNSCHEDULABLE
    clock.now += 20
    assert queue.pop_nowait() is None  # back-off over, but nothing changed
    assert queue.move_all_to_active_or_backoff() == 1
    assert queue.pop_nowait() is qp


def test_an_event_during_the_attempt_sends_the_failure_to_backoff_not_the_pool() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    queue.add(info("p"))
    qp = queue.pop_nowait()
    queue.move_all_to_active_or_backoff()  # a node appeared while the pod was being tried
    queue.requeue(qp, unschedulable=True)
    assert qp.where == BACKOFF


def test_moved_pods_still_in_backoff_go_to_backoff() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    queue.add(info("p"))
    qp = queue.pop_nowait()
    queue.requeue(qp, unschedulable=True)
    queue.move_all_to_active_or_backoff()
    assert qp.where == BACKOFF
    clock.now += 1
    assert queue.pop_nowait() is qp


def test_unschedulable_pods_are_retried_after_the_timeout_anyway() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock, unschedulable_timeout=300)
    queue.add(info("p"))
    queue.requeue(queue.pop_nowait(), unschedulable=True)
    clock.now += 301
    assert queue.pop_nowait() is not None


def test_an_update_retries_an_unschedulable_pod_and_deletion_forgets_it() -> None:
    clock = Clock()
    queue = SchedulingQueue(clock=clock)
    queue.add(info("p"))
    queue.requeue(queue.pop_nowait(), unschedulable=True)
    clock.now += 5
    queue.add(info("p"))  # e.g. its tolerations changed
    assert queue.pods["default/p"].where == ACTIVE
    queue.delete("default/p")
    assert queue.pop_nowait() is None and len(queue) == 0


def test_requeue_of_a_deleted_pod_is_dropped() -> None:
    queue = SchedulingQueue()
    queue.add(info("p"))
    qp = queue.pop_nowait()
    queue.delete("default/p")
    queue.requeue(qp, unschedulable=False)
    assert len(queue) == 0


@pytest.mark.asyncio
async def test_pop_waits_for_a_pod_and_for_backoff_to_end() -> None:
    queue = SchedulingQueue(initial_backoff=0.05)
    waiter = asyncio.create_task(queue.pop())
    await asyncio.sleep(0.01)
    assert not waiter.done()
    queue.add(info("p"))
    qp = await asyncio.wait_for(waiter, 1)
    queue.requeue(qp, unschedulable=False)
    again = await asyncio.wait_for(queue.pop(), 1)
    assert again is qp
    closing = asyncio.create_task(queue.pop())
    queue.close()
    assert await asyncio.wait_for(closing, 1) is None
