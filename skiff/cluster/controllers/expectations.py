"""Expectations: what a controller has asked for and not yet seen in its cache (kube's ControllerExpectations).

After a ReplicaSet's sync creates 3 pods, its informer may not have heard of them yet; a second sync then
would count too few pods and create 3 more. So a sync records "expect 3 additions" and the pod handlers count
them down as the pods arrive; until they have (or ``ttl`` passed, in case an event was lost), syncs of that
owner skip creating and deleting and only refresh its status.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

EXPECTATIONS_TTL = 300.0  # kube's ExpectationsTimeout


@dataclass
class _Expected:
    adds: int = 0
    deletes: set[str] = field(default_factory=set)  # keys of pods whose deletion is awaited
    since: float = field(default_factory=time.monotonic)


class Expectations:
    def __init__(self, ttl: float = EXPECTATIONS_TTL) -> None:
        self.ttl = ttl
        self._by_owner: dict[str, _Expected] = {}

    def satisfied(self, owner: str) -> bool:
        expected = self._by_owner.get(owner)
        if expected is None:
            return True
        met = expected.adds <= 0 and not expected.deletes
        return met or time.monotonic() - expected.since > self.ttl

    def expect_creations(self, owner: str, count: int) -> None:
        self._by_owner[owner] = _Expected(adds=count)

    def expect_deletions(self, owner: str, pod_keys: list[str]) -> None:
        self._by_owner[owner] = _Expected(deletes=set(pod_keys))

    def creation_observed(self, owner: str) -> None:
        expected = self._by_owner.get(owner)
        if expected is not None:
            expected.adds -= 1

    def deletion_observed(self, owner: str, pod_key: str) -> None:
        expected = self._by_owner.get(owner)
        if expected is not None:
            expected.deletes.discard(pod_key)

    def forget(self, owner: str) -> None:
        self._by_owner.pop(owner, None)
